//! Remote functions over the request-reply protocol, without I/O: the port a host's
//! HTTP client implements, the state declarations learned from functions, and the
//! handshake that learns them.
//!
//! First contact with a function type sends no state; a function that declares state
//! answers `IncompleteInvocationContext` with its specs; they are registered and the
//! *same* invocations are sent again with one entry per registered state. Later requests
//! carry every registered state. A function that changes a registered state's type is
//! refused.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use crate::batch::{AddressOutcome, BatchConfig, ProcessError, RemoteBatch};
use crate::function::FunctionError;
use crate::ports::Clock;
use crate::protocol::{FromFunction, ToFunction, from_function, spec_from_wire};
use crate::spec::StateSpec;
use crate::typename::TypeName;

/// Why a request got no usable answer (after the transport's own retries).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RemoteError(pub String);

/// Calls remote functions: what an HTTP client implements.
pub trait RemoteFunctions: Send + Sync {
    /// Whether an endpoint serves `function_type`.
    fn serves(&self, function_type: &TypeName) -> bool;

    /// The most messages one request for `function_type` carries (`maxNumBatchRequests`).
    fn max_batch(&self, function_type: &TypeName) -> usize;

    /// Sends one request to the function's endpoint.
    fn call(
        &self,
        function_type: &TypeName,
        request: ToFunction,
    ) -> impl Future<Output = Result<FromFunction, RemoteError>> + Send;
}

/// Shared clients call through.
impl<R: RemoteFunctions> RemoteFunctions for std::sync::Arc<R> {
    fn serves(&self, function_type: &TypeName) -> bool {
        R::serves(self, function_type)
    }
    fn max_batch(&self, function_type: &TypeName) -> usize {
        R::max_batch(self, function_type)
    }
    fn call(
        &self,
        function_type: &TypeName,
        request: ToFunction,
    ) -> impl Future<Output = Result<FromFunction, RemoteError>> + Send {
        R::call(self, function_type, request)
    }
}

/// Optional remote functions: `None` serves nothing.
impl<R: RemoteFunctions> RemoteFunctions for Option<R> {
    fn serves(&self, function_type: &TypeName) -> bool {
        self.as_ref().is_some_and(|r| r.serves(function_type))
    }
    fn max_batch(&self, function_type: &TypeName) -> usize {
        self.as_ref()
            .map_or(usize::MAX, |r| r.max_batch(function_type))
    }
    async fn call(
        &self,
        function_type: &TypeName,
        request: ToFunction,
    ) -> Result<FromFunction, RemoteError> {
        match self {
            Some(r) => r.call(function_type, request).await,
            None => NoRemote.call(function_type, request).await,
        }
    }
}

/// No remote functions.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRemote;

impl RemoteFunctions for NoRemote {
    fn serves(&self, _: &TypeName) -> bool {
        false
    }
    fn max_batch(&self, _: &TypeName) -> usize {
        usize::MAX
    }
    async fn call(
        &self,
        function_type: &TypeName,
        _: ToFunction,
    ) -> Result<FromFunction, RemoteError> {
        Err(RemoteError(format!("no endpoint serves {function_type}")))
    }
}

/// State declarations learned from remote functions, per function type.
#[derive(Debug, Default)]
pub struct SpecCache(Mutex<HashMap<TypeName, Vec<StateSpec>>>);

impl SpecCache {
    pub fn get(&self, function_type: &TypeName) -> Vec<StateSpec> {
        let specs = self.0.lock().unwrap_or_else(|e| e.into_inner());
        specs.get(function_type).cloned().unwrap_or_default()
    }

    /// Registers specs a function declared; a new type for a known name is an error.
    pub fn register(
        &self,
        function_type: &TypeName,
        declared: Vec<StateSpec>,
    ) -> Result<(), FunctionError> {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let specs = all.entry(function_type.clone()).or_default();
        for spec in declared {
            match specs.iter_mut().find(|s| s.name == spec.name) {
                Some(known) if known.typename != spec.typename => {
                    return Err(FunctionError::StateTypeMismatch {
                        name: spec.name,
                        declared: known.typename.clone(),
                        actual: spec.typename,
                    });
                }
                Some(known) => known.expiration = spec.expiration,
                None => specs.push(spec),
            }
        }
        Ok(())
    }
}

/// Runs a remote batch to its outcome: the request, the handshake if the function asks
/// for state, and the response checked against the registered state.
pub async fn invoke<R: RemoteFunctions>(
    remote: &R,
    specs: &SpecCache,
    batch: RemoteBatch,
    config: &BatchConfig,
    clock: &dyn Clock,
) -> AddressOutcome {
    if batch.fresh().len() < 2 {
        return invoke_batch(remote, specs, batch, config, clock).await;
    }
    let outcome = invoke_batch(remote, specs, batch.clone(), config, clock).await;
    if !outcome
        .failure
        .as_ref()
        .is_some_and(|f| matches!(f.error, ProcessError::RecordTooLarge(_)))
    {
        return outcome;
    }
    // The batch's effects do not fit one record together: the first message alone,
    // the rest after its commit (each is refused only if it cannot fit alone).
    let (first, rest) = batch.split_first();
    let mut outcome = invoke_batch(remote, specs, first, config, clock).await;
    outcome.deferred.extend(rest);
    outcome
}

async fn invoke_batch<R: RemoteFunctions>(
    remote: &R,
    specs: &SpecCache,
    batch: RemoteBatch,
    config: &BatchConfig,
    clock: &dyn Clock,
) -> AddressOutcome {
    let function_type = batch.address().function_type.clone();
    if batch.fresh().is_empty() {
        return batch.complete(Ok(Default::default()), &[], config, clock.now_ms());
    }
    for _ in 0..4 {
        let known = specs.get(&function_type);
        let response = remote.call(&function_type, batch.request(&known)).await;
        let response = match response {
            Err(e) => {
                return batch.complete(
                    Err(ProcessError::Unavailable(e.0)),
                    &known,
                    config,
                    clock.now_ms(),
                );
            }
            // An empty FromFunction is an invocation with no effects (as the reference
            // runtime reads the default `invocation_result`).
            Ok(FromFunction { response: None }) => {
                return batch.complete(Ok(Default::default()), &known, config, clock.now_ms());
            }
            Ok(FromFunction { response: Some(r) }) => r,
        };
        match response {
            from_function::Response::InvocationResult(result) => {
                return batch.complete(Ok(result), &known, config, clock.now_ms());
            }
            from_function::Response::IncompleteInvocationContext(missing) => {
                let declared: Result<Vec<StateSpec>, ProcessError> = missing
                    .missing_values
                    .into_iter()
                    .map(|s| spec_from_wire(s).map_err(|e| FunctionError::terminal(e).into()))
                    .collect();
                if let Err(e) = declared.and_then(|d| Ok(specs.register(&function_type, d)?)) {
                    return batch.complete(Err(e), &known, config, clock.now_ms());
                }
            }
        }
    }
    let e = ProcessError::Function(FunctionError::terminal(
        "the function kept answering IncompleteInvocationContext after its state was registered",
    ));
    batch.complete(Err(e), &specs.get(&function_type), config, clock.now_ms())
}
