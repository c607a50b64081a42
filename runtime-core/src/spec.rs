//! Declared state: a name, a type and an expiration policy.

use std::marker::PhantomData;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::typename::TypeName;
use crate::value::ValueType;

/// When a state value expires. Expired values read as absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Expiration {
    #[default]
    Never,
    /// `d` after the value was last written.
    AfterWrite(Duration),
    /// `d` after the instance was last invoked (StateFun's `expire_after_call`, the
    /// protocol's `AFTER_INVOKE`): every invocation keeps the value alive.
    AfterCall(Duration),
}

/// A declared state cell, untyped: what the runtime needs to load, check and expire it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSpec {
    pub name: String,
    pub typename: TypeName,
    pub expiration: Expiration,
}

/// A typed handle on a state cell, usable in `const` items:
///
/// ```
/// use std::time::Duration;
/// use statefun_core::ValueSpec;
/// const VISITS: ValueSpec<i32> = ValueSpec::new("visits");
/// const SEEN: ValueSpec<bool> = ValueSpec::new("seen").expire_after_write(Duration::from_secs(60));
/// ```
#[derive(Debug)]
pub struct ValueSpec<T> {
    name: &'static str,
    expiration: Expiration,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for ValueSpec<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for ValueSpec<T> {}

impl<T> ValueSpec<T> {
    pub const fn new(name: &'static str) -> Self {
        ValueSpec {
            name,
            expiration: Expiration::Never,
            _type: PhantomData,
        }
    }

    pub const fn expire_after_write(mut self, after: Duration) -> Self {
        self.expiration = Expiration::AfterWrite(after);
        self
    }

    pub const fn expire_after_call(mut self, after: Duration) -> Self {
        self.expiration = Expiration::AfterCall(after);
        self
    }

    pub const fn name(&self) -> &'static str {
        self.name
    }

    pub const fn expiration(&self) -> Expiration {
        self.expiration
    }
}

impl<T: ValueType> ValueSpec<T> {
    /// The untyped declaration, for registering a function.
    pub fn spec(&self) -> StateSpec {
        StateSpec {
            name: self.name.to_string(),
            typename: T::typename(),
            expiration: self.expiration,
        }
    }
}

impl<T: ValueType> From<ValueSpec<T>> for StateSpec {
    fn from(v: ValueSpec<T>) -> Self {
        v.spec()
    }
}
