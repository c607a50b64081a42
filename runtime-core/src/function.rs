//! The function trait, its errors, and the registry that maps type names to functions.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::context::Context;
use crate::spec::StateSpec;
use crate::typename::{Address, InvalidTypeName, TypeName};
use crate::value::{DecodeError, TypedValue};

/// Why an invocation failed. Retryable failures are retried through the queue (or the
/// embedded retry path); terminal ones dead-letter the message with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FunctionError {
    #[error("{message}")]
    Failed { message: String, retryable: bool },
    #[error("bad message payload: {0}")]
    Decode(#[from] DecodeError),
    #[error("state {name:?} is not declared by {function_type} (declare it in specs())")]
    UndeclaredState {
        function_type: TypeName,
        name: String,
    },
    #[error("state {name:?} is declared as {declared} but holds or was given a {actual}")]
    StateTypeMismatch {
        name: String,
        declared: TypeName,
        actual: TypeName,
    },
    /// A stored value the function cannot read as its declaration says.
    #[error(transparent)]
    StoredState(Box<StoredStateError>),
    #[error("a cancellation token must not be empty")]
    EmptyCancellationToken,
}

/// A stored state value a function cannot read: never read as something else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoredStateError {
    /// Of another type than the state's declaration (an older build of the function
    /// wrote it).
    #[error(
        "state {name:?} of {address} holds a {stored} value, but the function declares \
         {declared}: written by an older build of the function? Read it with \
         Context::get_value and write the new type (docs/DESIGN.md, \"Migrating user state\")"
    )]
    Type {
        address: Address,
        name: String,
        stored: TypeName,
        declared: TypeName,
    },
    /// Of the declared type, with bytes that do not decode as it.
    #[error("state {name:?} of {address} does not decode as its {typename}: {reason}")]
    Malformed {
        address: Address,
        name: String,
        typename: TypeName,
        reason: String,
    },
}

impl FunctionError {
    /// A failure worth retrying (a dependency was down, a timeout).
    pub fn retryable(message: impl fmt::Display) -> Self {
        FunctionError::Failed {
            message: message.to_string(),
            retryable: true,
        }
    }

    /// A failure retrying cannot fix: the message is dead-lettered.
    pub fn terminal(message: impl fmt::Display) -> Self {
        FunctionError::Failed {
            message: message.to_string(),
            retryable: false,
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            FunctionError::Failed {
                retryable: true,
                ..
            }
        )
    }
}

/// A stateful function: invoked once per message with a [`Context`] on its instance.
pub trait StatefulFunction: Send + Sync {
    /// The state it declares. Only declared state can be read or written.
    fn specs(&self) -> Vec<StateSpec>;

    fn invoke(&self, ctx: &mut Context<'_>, message: &TypedValue) -> Result<(), FunctionError>;
}

struct FnFunction<F> {
    specs: Vec<StateSpec>,
    f: F,
}

impl<F> StatefulFunction for FnFunction<F>
where
    F: Fn(&mut Context<'_>, &TypedValue) -> Result<(), FunctionError> + Send + Sync,
{
    fn specs(&self) -> Vec<StateSpec> {
        self.specs.clone()
    }
    fn invoke(&self, ctx: &mut Context<'_>, message: &TypedValue) -> Result<(), FunctionError> {
        (self.f)(ctx, message)
    }
}

/// A registered function with its declared state, resolved once.
#[derive(Clone)]
pub struct Registered {
    pub specs: Arc<[StateSpec]>,
    pub function: Arc<dyn StatefulFunction>,
}

impl fmt::Debug for Registered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registered")
            .field("specs", &self.specs)
            .finish_non_exhaustive()
    }
}

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    InvalidPattern(#[from] InvalidTypeName),
    #[error("function type pattern {0:?} is registered twice")]
    Duplicate(String),
    #[error("state {name:?} is declared twice by {pattern:?}")]
    DuplicateState { pattern: String, name: String },
}

/// Function types by exact type name (`ns/name`) or whole namespace (`ns/*`); an exact
/// registration wins over its namespace's.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    exact: HashMap<TypeName, Registered>,
    namespaces: HashMap<String, Registered>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `function` for `pattern`: a [`TypeName`] (`namespace/name`), or a
    /// string, which may also be a whole namespace, `namespace/*`.
    pub fn register(
        &mut self,
        pattern: impl AsRef<str>,
        function: impl StatefulFunction + 'static,
    ) -> Result<&mut Self, RegistryError> {
        let pattern = pattern.as_ref();
        let specs: Arc<[StateSpec]> = function.specs().into();
        for (i, s) in specs.iter().enumerate() {
            if specs[..i].iter().any(|o| o.name == s.name) {
                return Err(RegistryError::DuplicateState {
                    pattern: pattern.into(),
                    name: s.name.clone(),
                });
            }
        }
        let entry = Registered {
            specs,
            function: Arc::new(function),
        };
        let type_name = TypeName::parse(pattern)?;
        let fresh = if type_name.name() == "*" {
            self.namespaces
                .insert(type_name.namespace().to_string(), entry)
                .is_none()
        } else {
            self.exact.insert(type_name, entry).is_none()
        };
        if fresh {
            Ok(self)
        } else {
            Err(RegistryError::Duplicate(pattern.into()))
        }
    }

    /// Registers a closure with the given state declarations.
    pub fn register_fn<F>(
        &mut self,
        pattern: impl AsRef<str>,
        specs: Vec<StateSpec>,
        f: F,
    ) -> Result<&mut Self, RegistryError>
    where
        F: Fn(&mut Context<'_>, &TypedValue) -> Result<(), FunctionError> + Send + Sync + 'static,
    {
        self.register(pattern, FnFunction { specs, f })
    }

    pub fn get(&self, function_type: &TypeName) -> Option<&Registered> {
        self.exact
            .get(function_type)
            .or_else(|| self.namespaces.get(function_type.namespace()))
    }

    pub fn contains(&self, function_type: &TypeName) -> bool {
        self.get(function_type).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop(_: &mut Context<'_>, _: &TypedValue) -> Result<(), FunctionError> {
        Ok(())
    }

    #[test]
    fn exact_names_win_over_namespace_wildcards() {
        let mut r = Registry::new();
        r.register_fn("ns/*", vec![], noop).expect("ok");
        r.register_fn(
            "ns/special",
            vec![crate::ValueSpec::<i64>::new("n").spec()],
            noop,
        )
        .expect("ok");
        let special = TypeName::from_static("ns/special");
        let other = TypeName::from_static("ns/other");
        assert_eq!(r.get(&special).map(|e| e.specs.len()), Some(1));
        assert_eq!(r.get(&other).map(|e| e.specs.len()), Some(0));
        assert!(!r.contains(&TypeName::from_static("elsewhere/other")));
    }

    #[test]
    fn duplicates_are_refused() {
        let mut r = Registry::new();
        r.register_fn("ns/a", vec![], noop).expect("ok");
        assert_eq!(
            r.register_fn("ns/a", vec![], noop).err(),
            Some(RegistryError::Duplicate("ns/a".into()))
        );
        assert!(r.register_fn("bad", vec![], noop).is_err());
        let twice = vec![
            crate::ValueSpec::<i64>::new("n").spec(),
            crate::ValueSpec::<i32>::new("n").spec(),
        ];
        assert!(matches!(
            r.register_fn("ns/b", twice, noop),
            Err(RegistryError::DuplicateState { .. })
        ));
    }
}
