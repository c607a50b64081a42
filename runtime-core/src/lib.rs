//! statefun-core: Apache Flink StateFun semantics as pure Rust. Values in, effects out:
//! no sockets, no clocks, no async runtime. Hosts (the embedded runtime, the AWS
//! Lambdas) load state, call [`process_address`] or [`pipeline::dispatch`], and execute
//! the resulting commits and outboxes.

pub mod batch;
pub mod builtin;
pub mod context;
pub mod dedup;
pub mod failure;
pub mod format;
pub mod function;
pub mod harness;
pub mod ingress;
pub mod message;
pub mod module;
pub mod pipeline;
pub mod ports;
pub mod protocol;
pub mod remote;
pub mod spec;
pub mod state;
pub mod typename;
pub mod value;
pub mod view;

pub use batch::{
    AddressOutcome, BatchConfig, Commit, Failure, LimitError, Limits, Precondition, ProcessError,
    process_address,
};
pub use context::{Context, Effect};
pub use failure::{FailureKind, RetryPolicy, Verdict};
pub use function::{FunctionError, Registry, RegistryError, StatefulFunction, StoredStateError};
pub use harness::Harness;
pub use message::{EgressRecord, Envelope, Issued, MessageId, OutboxEntry};
pub use spec::{Expiration, StateSpec, ValueSpec};
pub use state::{Cell, InstanceState};
pub use typename::{Address, TypeName};
pub use value::{DecodeError, TypedValue, ValueType};
