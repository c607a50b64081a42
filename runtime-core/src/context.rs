//! The invocation context: what a function sees of its instance and what it may do.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::function::{FunctionError, StoredStateError};
use crate::spec::{StateSpec, ValueSpec};
use crate::state::Cell;
use crate::typename::{Address, TypeName};
use crate::value::{DecodeError, TypedValue, ValueType};

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
    /// Writes of this invocation by spec index; `None` removes.
    pub(crate) staged: Vec<(usize, Option<TypedValue>)>,
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
            staged: Vec::new(),
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

    fn index_of(&self, name: &str) -> Result<usize, FunctionError> {
        self.specs
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| FunctionError::UndeclaredState {
                function_type: self.address.function_type.clone(),
                name: name.to_string(),
            })
    }

    fn declared(&self, name: &str, typename: &TypeName) -> Result<usize, FunctionError> {
        let index = self.index_of(name)?;
        let declared = &self.specs[index].typename;
        if declared != typename {
            return Err(FunctionError::StateTypeMismatch {
                name: name.to_string(),
                declared: declared.clone(),
                actual: typename.clone(),
            });
        }
        Ok(index)
    }

    fn stage(&mut self, index: usize, value: Option<TypedValue>) {
        match self.staged.iter_mut().find(|(i, _)| *i == index) {
            Some(slot) => slot.1 = value,
            None => self.staged.push((index, value)),
        }
    }

    /// The raw current value of a declared state cell (absent if never set, removed or
    /// expired).
    pub fn get_value(&self, name: &str) -> Result<Option<&TypedValue>, FunctionError> {
        let index = self.index_of(name)?;
        Ok(match self.staged.iter().find(|(i, _)| *i == index) {
            Some((_, staged)) => staged.as_ref(),
            None => self.cells.get(name).map(|c| &c.value),
        })
    }

    /// Sets a declared state cell to a raw value of its declared type.
    pub fn set_value(&mut self, name: &str, value: TypedValue) -> Result<(), FunctionError> {
        let index = self.declared(name, &value.typename)?;
        self.stage(index, Some(value));
        Ok(())
    }

    /// Reads a typed state cell.
    pub fn get<T: ValueType>(&self, spec: &ValueSpec<T>) -> Result<Option<T>, FunctionError> {
        self.declared(spec.name(), &T::typename())?;
        match self.get_value(spec.name())? {
            None => Ok(None),
            Some(v) => match v.decode::<T>() {
                Ok(value) => Ok(Some(value)),
                Err(DecodeError::WrongType { expected, actual }) => Err(
                    FunctionError::StoredState(Box::new(StoredStateError::Type {
                        address: self.address.clone(),
                        name: spec.name().to_string(),
                        stored: actual,
                        declared: expected,
                    })),
                ),
                Err(e) => Err(FunctionError::StoredState(Box::new(
                    StoredStateError::Malformed {
                        address: self.address.clone(),
                        name: spec.name().to_string(),
                        typename: v.typename.clone(),
                        reason: e.to_string(),
                    },
                ))),
            },
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
        let index = self.declared(spec.name(), &T::typename())?;
        self.stage(index, None);
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
