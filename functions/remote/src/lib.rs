//! The HTTP client of remote functions: StateFun's request-reply protocol over pooled
//! keep-alive HTTP/1.1 (http or https with rustls), one client per endpoint of the
//! module, with the reference runtime's retry rules:
//! - IO errors, timeouts and statuses 408, 409, 420, 429, 499 and ≥ 500 are retried
//!   with bounded exponential backoff until the endpoint's call timeout;
//! - other 4xx fail at once;
//! - a 2xx must carry `application/octet-stream` and a decodable `FromFunction` no
//!   larger than `payload_max_bytes`; otherwise the call is retried like an IO error.
//!   An empty body is an empty `FromFunction`: the Python SDK answers so when an
//!   invocation changes nothing, and the reference runtime reads it as no effects.
//!
//! When retries run out the call fails, and the host fails the batch's messages back to
//! its queue: nothing is lost, nothing applied twice (the effects commit only with a
//! response).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use statefun_core::module::{HttpEndpoint, Module};
use statefun_core::protocol::{FromFunction, ToFunction};
use statefun_core::remote::{RemoteError, RemoteFunctions};
use statefun_core::{RetryPolicy, TypeName};
use tracing::{debug, warn};

const CONTENT_TYPE: &str = "application/octet-stream";

/// Statuses the reference runtime retries.
fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 409 | 420 | 429 | 499) || status.is_server_error()
}

struct Endpoint {
    spec: HttpEndpoint,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// Remote functions of a module, reachable over HTTP.
pub struct HttpFunctions {
    module: Module,
    endpoints: Vec<Endpoint>,
    requests: AtomicU64,
    invocations: AtomicU64,
    largest_batch: AtomicU64,
}

/// Requests sent and invocations they carried, since start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallStats {
    pub requests: u64,
    pub invocations: u64,
    pub largest_batch: u64,
}

impl std::fmt::Debug for HttpFunctions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpFunctions")
            .field("endpoints", &self.module.endpoints)
            .finish()
    }
}

/// A failure to set up the clients (TLS roots).
#[derive(Debug, thiserror::Error)]
#[error("setting up the remote-function clients: {0}")]
pub struct SetupError(String);

enum Attempt {
    Done(FromFunction),
    Retry(String),
    Fail(String),
}

impl HttpFunctions {
    pub fn new(module: Module) -> Result<Self, SetupError> {
        let endpoints = module
            .endpoints
            .iter()
            .map(|spec| {
                let mut http = HttpConnector::new();
                http.enforce_http(false);
                http.set_connect_timeout(Some(spec.connect_timeout));
                http.set_nodelay(true);
                let https = HttpsConnectorBuilder::new()
                    .with_native_roots()
                    .map_err(|e| SetupError(e.to_string()))?
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(http);
                let client = Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(spec.pool_ttl)
                    .pool_max_idle_per_host(spec.pool_size)
                    .build(https);
                Ok(Endpoint {
                    spec: spec.clone(),
                    client,
                })
            })
            .collect::<Result<_, SetupError>>()?;
        Ok(HttpFunctions {
            module,
            endpoints,
            requests: AtomicU64::new(0),
            invocations: AtomicU64::new(0),
            largest_batch: AtomicU64::new(0),
        })
    }

    pub fn stats(&self) -> CallStats {
        CallStats {
            requests: self.requests.load(Ordering::Relaxed),
            invocations: self.invocations.load(Ordering::Relaxed),
            largest_batch: self.largest_batch.load(Ordering::Relaxed),
        }
    }

    pub fn module(&self) -> &Module {
        &self.module
    }

    fn endpoint(&self, t: &TypeName) -> Option<&Endpoint> {
        let spec = self.module.endpoint(t)?;
        self.endpoints.iter().find(|e| &e.spec == spec)
    }

    async fn attempt(endpoint: &Endpoint, url: &str, body: Bytes, timeout: Duration) -> Attempt {
        let request = match Request::builder()
            .method(Method::POST)
            .uri(url)
            .header("content-type", CONTENT_TYPE)
            .body(Full::new(body))
        {
            Ok(r) => r,
            Err(e) => return Attempt::Fail(format!("bad request for {url}: {e}")),
        };
        let call = async {
            let response = match endpoint.client.request(request).await {
                Ok(r) => r,
                // The client's error names only its kind ("client error (Connect)"):
                // its causes say what happened (refused, no such host, TLS).
                Err(e) => return Attempt::Retry(format!("{url}: {}", chain(&e))),
            };
            let status = response.status();
            if !status.is_success() {
                let reason = format!("{url} answered {status}");
                return if retryable(status) {
                    Attempt::Retry(reason)
                } else {
                    Attempt::Fail(reason)
                };
            }
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if !content_type.starts_with(CONTENT_TYPE) {
                return Attempt::Retry(format!(
                    "{url} answered Content-Type {content_type:?}, not {CONTENT_TYPE}"
                ));
            }
            let limit = endpoint.spec.payload_max_bytes;
            let bytes = match Limited::new(response.into_body(), limit).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return Attempt::Retry(format!(
                        "{url}: reading the response (limit {limit} bytes): {e}"
                    ));
                }
            };
            match FromFunction::decode(bytes) {
                Ok(r) => Attempt::Done(r),
                Err(e) => Attempt::Retry(format!(
                    "{url} answered a body that is not a FromFunction: {e}"
                )),
            }
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(a) => a,
            Err(_) => Attempt::Retry(format!(
                "{url}: no answer within the call timeout ({:?})",
                endpoint.spec.call_timeout
            )),
        }
    }
}

/// An error and its causes, as one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors repeat their cause in their own text.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl RemoteFunctions for HttpFunctions {
    fn serves(&self, function_type: &TypeName) -> bool {
        self.module.endpoint(function_type).is_some()
    }

    fn max_batch(&self, function_type: &TypeName) -> usize {
        self.module
            .endpoint(function_type)
            .map_or(usize::MAX, |e| e.max_num_batch_requests)
    }

    async fn call(
        &self,
        function_type: &TypeName,
        request: ToFunction,
    ) -> Result<FromFunction, RemoteError> {
        let endpoint = self
            .endpoint(function_type)
            .ok_or_else(|| RemoteError(format!("no endpoint serves {function_type}")))?;
        let url = endpoint.spec.url(function_type);
        if let Some(statefun_core::protocol::to_function::Request::Invocation(batch)) =
            &request.request
        {
            let n = batch.invocations.len() as u64;
            self.requests.fetch_add(1, Ordering::Relaxed);
            self.invocations.fetch_add(n, Ordering::Relaxed);
            self.largest_batch.fetch_max(n, Ordering::Relaxed);
        }
        let body = Bytes::from(request.encode_to_vec());
        // The call may be tried for a long time: only its encoded form stays.
        drop(request);
        if body.len() > endpoint.spec.payload_max_bytes {
            return Err(RemoteError(format!(
                "the request to {url} is {} bytes, over payload_max_bytes {}",
                body.len(),
                endpoint.spec.payload_max_bytes
            )));
        }
        let deadline = Instant::now() + endpoint.spec.call_timeout;
        // Tried until the call timeout, however many tries that takes.
        let policy = RetryPolicy {
            max_attempts: u32::MAX,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(2),
        };
        let mut attempts = 0;
        loop {
            attempts += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            match Self::attempt(endpoint, &url, body.clone(), remaining).await {
                Attempt::Done(r) => {
                    debug!(function_type = %function_type, attempts, "remote call answered");
                    return Ok(r);
                }
                Attempt::Fail(reason) => return Err(RemoteError(reason)),
                Attempt::Retry(reason) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if remaining.is_zero() {
                        return Err(RemoteError(format!(
                            "{reason} (gave up after {attempts} attempts within the call timeout)"
                        )));
                    }
                    // Said once per call; the engine says how the invocation ends.
                    if attempts == 1 {
                        warn!(function_type = %function_type, %reason, timeout = ?endpoint.spec.call_timeout, "remote call failed; retrying until the call timeout");
                    } else {
                        debug!(function_type = %function_type, attempts, %reason, "remote call failed again");
                    }
                    tokio::time::sleep(policy.backoff(attempts).min(remaining)).await;
                }
            }
        }
    }
}
