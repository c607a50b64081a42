//! The invocation context: what a function sees of its instance and what it may do.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::function::FunctionError;
use crate::spec::{StateSpec, ValueSpec};
use crate::state::Cell;
use crate::typename::{Address, TypeName};
use crate::value::{TypedValue, ValueType};

/// An effect requested by one invocation, before the commit gives it an id.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Send {
        target: Address,
        value: TypedValue,
    },
    SendAfter {
        delay: Duration,
        target: Address,
        value: TypedValue,
        cancellation_token: Option<String>,
    },
    Cancel {
        token: String,
    },
    Egress {
        egress: TypeName,
        value: TypedValue,
    },
}

/// One invocation's view of its instance. State writes and effects are staged here and
/// applied only if the invocation returns `Ok`.
#[derive(Debug)]
pub struct Context<'a> {
    address: &'a Address,
    caller: Option<&'a Address>,
    specs: &'a [StateSpec],
    cells: &'a BTreeMap<String, Cell>,
    pub(crate) staged: BTreeMap<String, Option<TypedValue>>,
    pub(crate) effects: Vec<Effect>,
}

impl<'a> Context<'a> {
    pub(crate) fn new(
        address: &'a Address,
        caller: Option<&'a Address>,
        specs: &'a [StateSpec],
        cells: &'a BTreeMap<String, Cell>,
    ) -> Self {
        Context {
            address,
            caller,
            specs,
            cells,
            staged: BTreeMap::new(),
            effects: Vec::new(),
        }
    }

    /// This instance's address.
    pub fn self_address(&self) -> &Address {
        self.address
    }

    /// The sending function's address; `None` for messages from an ingress.
    pub fn caller(&self) -> Option<&Address> {
        self.caller
    }

    fn declared(&self, name: &str, typename: &TypeName) -> Result<&StateSpec, FunctionError> {
        let spec = self.specs.iter().find(|s| s.name == name).ok_or_else(|| {
            FunctionError::UndeclaredState {
                function_type: self.address.function_type.clone(),
                name: name.to_string(),
            }
        })?;
        if &spec.typename != typename {
            return Err(FunctionError::StateTypeMismatch {
                name: name.to_string(),
                declared: spec.typename.clone(),
                actual: typename.clone(),
            });
        }
        Ok(spec)
    }

    /// The raw current value of a declared state cell (absent if never set, removed or
    /// expired).
    pub fn get_value(&self, name: &str) -> Result<Option<&TypedValue>, FunctionError> {
        if !self.specs.iter().any(|s| s.name == name) {
            return Err(FunctionError::UndeclaredState {
                function_type: self.address.function_type.clone(),
                name: name.to_string(),
            });
        }
        Ok(match self.staged.get(name) {
            Some(staged) => staged.as_ref(),
            None => self.cells.get(name).map(|c| &c.value),
        })
    }

    /// Sets a declared state cell to a raw value of its declared type.
    pub fn set_value(&mut self, name: &str, value: TypedValue) -> Result<(), FunctionError> {
        self.declared(name, &value.typename)?;
        self.staged.insert(name.to_string(), Some(value));
        Ok(())
    }

    /// Reads a typed state cell.
    pub fn get<T: ValueType>(&self, spec: &ValueSpec<T>) -> Result<Option<T>, FunctionError> {
        self.declared(spec.name(), &T::typename())?;
        match self.get_value(spec.name())? {
            None => Ok(None),
            Some(v) => Ok(Some(v.decode::<T>().map_err(|_| {
                FunctionError::StateTypeMismatch {
                    name: spec.name().to_string(),
                    declared: T::typename(),
                    actual: v.typename.clone(),
                }
            })?)),
        }
    }

    /// Writes a typed state cell.
    pub fn set<T: ValueType>(
        &mut self,
        spec: &ValueSpec<T>,
        value: &T,
    ) -> Result<(), FunctionError> {
        self.set_value(spec.name(), TypedValue::of(value))
    }

    /// Removes a typed state cell.
    pub fn remove<T: ValueType>(&mut self, spec: &ValueSpec<T>) -> Result<(), FunctionError> {
        self.declared(spec.name(), &T::typename())?;
        self.staged.insert(spec.name().to_string(), None);
        Ok(())
    }

    /// Sends a message to another (or this) instance.
    pub fn send<T: ValueType>(&mut self, target: Address, value: &T) {
        self.send_value(target, TypedValue::of(value));
    }

    pub fn send_value(&mut self, target: Address, value: TypedValue) {
        self.effects.push(Effect::Send { target, value });
    }

    /// Sends a message that arrives no earlier than `delay` from now.
    pub fn send_after<T: ValueType>(&mut self, delay: Duration, target: Address, value: &T) {
        self.effects.push(Effect::SendAfter {
            delay,
            target,
            value: TypedValue::of(value),
            cancellation_token: None,
        });
    }

    /// Like [`send_after`](Self::send_after), cancellable with `token` (unique per sender)
    /// until it is delivered.
    pub fn send_after_with_token<T: ValueType>(
        &mut self,
        delay: Duration,
        target: Address,
        value: &T,
        token: impl Into<String>,
    ) -> Result<(), FunctionError> {
        self.send_after_value(delay, target, TypedValue::of(value), Some(token.into()))
    }

    pub fn send_after_value(
        &mut self,
        delay: Duration,
        target: Address,
        value: TypedValue,
        cancellation_token: Option<String>,
    ) -> Result<(), FunctionError> {
        if cancellation_token.as_deref() == Some("") {
            return Err(FunctionError::EmptyCancellationToken);
        }
        self.effects.push(Effect::SendAfter {
            delay,
            target,
            value,
            cancellation_token,
        });
        Ok(())
    }

    /// Cancels this instance's pending delayed messages sent with `token`. Cancelling a
    /// message already delivered is a no-op.
    pub fn cancel_delayed_message(
        &mut self,
        token: impl Into<String>,
    ) -> Result<(), FunctionError> {
        let token = token.into();
        if token.is_empty() {
            return Err(FunctionError::EmptyCancellationToken);
        }
        self.effects.push(Effect::Cancel { token });
        Ok(())
    }

    /// Emits a record to the named egress.
    pub fn send_egress<T: ValueType>(&mut self, egress: TypeName, value: &T) {
        self.send_egress_value(egress, TypedValue::of(value));
    }

    pub fn send_egress_value(&mut self, egress: TypeName, value: TypedValue) {
        self.effects.push(Effect::Egress { egress, value });
    }
}
