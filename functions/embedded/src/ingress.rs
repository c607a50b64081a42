//! The HTTP ingress, after the StateFun playground's convention:
//!
//! - `POST /{namespace}/{type}/{id}` (or `PUT`, as the playground's curl examples use):
//!   the body is the message, `Content-Type: application/vnd.{typename}` names its type
//!   (default `io.statefun.types/string`). Built-in types are sent as plain text (`42`,
//!   `true`, `hello`) and encoded here into the SDK wire form; other types pass through
//!   unchanged. `202 {"message_id": …}` once the message is on disk. An
//!   `Idempotency-Key` header makes a retried request enqueue once.
//! - `GET /{namespace}/{type}/{id}`: the instance's state as JSON, for development.
//! - `GET /metrics`: Prometheus metrics (OpenMetrics text); `GET /status`: what the
//!   runtime still has to do, as JSON.
//! - Errors are 4xx with `{"error": "<what is wrong>"}`.
//!
//! Who may ask ([`Guard`]): a browser page of another origin (its `Origin`, or
//! `Sec-Fetch-Site: cross-site`) is refused `403`, and so is a `Host` that is neither an
//! IP address, `localhost`, nor a configured name (a DNS-rebinding page); with a token
//! set, every route but `/healthz` needs `Authorization: Bearer <token>` (`401`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{FromRef, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header as names};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use statefun_core::TypeName;
use statefun_core::ingress as contract;
use tokio::net::TcpListener;
use tracing::debug;

use crate::server::{self, HttpConfig, Served};
use crate::{EmbeddedError, Overloaded, RuntimeHandle};

/// A rejected request: a status and a message saying what is wrong.
#[derive(Debug)]
pub struct Rejection {
    status: StatusCode,
    message: String,
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let body = axum::Json(json!({ "error": self.message }));
        if matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            // Refused for now, not for good: when to come back.
            return (self.status, [(names::RETRY_AFTER, "1")], body).into_response();
        }
        (self.status, body).into_response()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Rejection {
    Rejection {
        status,
        message: message.into(),
    }
}

/// What a message that was not accepted is answered.
fn refused(handle: &RuntimeHandle, e: EmbeddedError) -> Rejection {
    let status = match &e {
        EmbeddedError::KeyReused(_) => StatusCode::UNPROCESSABLE_ENTITY,
        EmbeddedError::Overloaded(Overloaded::FunctionType { .. }) => StatusCode::TOO_MANY_REQUESTS,
        EmbeddedError::NotDurable(_) => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    if status != StatusCode::UNPROCESSABLE_ENTITY {
        handle.metrics().refused(status.as_u16());
    }
    error(status, e.to_string())
}

/// The routes' state: the runtime and the HTTP limits the handlers apply.
#[derive(Clone)]
struct Ingress {
    handle: RuntimeHandle,
    body_read_timeout: Duration,
}

impl FromRef<Ingress> for RuntimeHandle {
    fn from_ref(ingress: &Ingress) -> Self {
        ingress.handle.clone()
    }
}

/// The routes, over a running runtime, with the default [`HttpConfig`].
pub fn router(handle: RuntimeHandle) -> Router {
    router_with(handle, &HttpConfig::default())
}

/// The routes, over a running runtime, bounded as `config` says (the [`Guard`] is the
/// server's, in [`serve_with`]).
pub fn router_with(handle: RuntimeHandle, config: &HttpConfig) -> Router {
    let instance = get(get_state)
        .post(post_message)
        .put(post_message)
        .fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "use POST (or PUT) to send a message, GET to read state",
            )
        });
    Router::new()
        .route("/status", get(get_status))
        .route("/metrics", get(get_metrics))
        .route("/{namespace}/{type}/{id}", instance)
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such route: address an instance as /{namespace}/{type}/{id}",
            )
        })
        .route("/healthz", get(healthz))
        .with_state(Ingress {
            handle,
            body_read_timeout: config.body_read_timeout,
        })
}

/// Serves the ingress with the default [`HttpConfig`] until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    handle: RuntimeHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, handle, &HttpConfig::default(), shutdown)
        .await
        .map(drop)
}

/// Serves the ingress within `config`'s bounds until `shutdown` completes (see
/// [`crate::server`]): then stops accepting, and abandons requests still in progress
/// after `config.shutdown_timeout`.
pub async fn serve_with(
    listener: TcpListener,
    handle: RuntimeHandle,
    config: &HttpConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<Served> {
    let metrics = handle.metrics.clone();
    let guard = Arc::new(Guard::new(config));
    let app = router_with(handle, config);
    server::serve(listener, app, guard, metrics, config, shutdown).await
}

/// Who may ask: the browser and token rules of the module docs.
#[derive(Debug)]
pub struct Guard {
    allowed_hosts: Vec<String>,
    /// The token's digest: compared digest to digest, so the time a comparison takes
    /// tells nothing of the token.
    token: Option<[u8; 32]>,
}

fn digest(text: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(text).into()
}

impl Guard {
    pub fn new(config: &HttpConfig) -> Self {
        Guard {
            allowed_hosts: config
                .allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            token: config.auth_token.as_deref().map(|t| digest(t.as_bytes())),
        }
    }

    /// Why a request's `Host` or browser context is refused, if it is.
    pub fn foreign(&self, headers: &HeaderMap) -> Option<String> {
        let text = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
        let host = text("host");
        if let Some(host) = host {
            let name = host_name(host);
            let known = name.parse::<std::net::IpAddr>().is_ok()
                || name.eq_ignore_ascii_case("localhost")
                || self
                    .allowed_hosts
                    .iter()
                    .any(|h| h.eq_ignore_ascii_case(name));
            if !known {
                return Some(format!(
                    "Host {host:?} is not this runtime's: use an IP address or localhost, or \
                     start it with --allowed-host {name}"
                ));
            }
        }
        if let Some(origin) = text("origin") {
            let own = host.is_some_and(|host| {
                origin
                    .strip_prefix("http://")
                    .or_else(|| origin.strip_prefix("https://"))
                    .is_some_and(|o| o.eq_ignore_ascii_case(host))
            });
            if !own {
                return Some(format!(
                    "a page of another origin ({origin}) may not use this runtime"
                ));
            }
        }
        if text("sec-fetch-site") == Some("cross-site") {
            return Some("a page of another site may not use this runtime".into());
        }
        None
    }

    /// Whether the request carries the token, when one is required.
    pub fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        headers
            .get(names::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| digest(given.trim().as_bytes()) == *token)
    }
}

/// The host part of a `Host` header: `name`, `name:port`, `[v6]:port`.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

impl Guard {
    /// The answer to a request that may not be served, if it may not: a foreign page
    /// (`403`), or no token where one is required (`401`; `/healthz` needs none).
    pub fn refuse(&self, path: &str, headers: &HeaderMap) -> Option<Response> {
        if let Some(why) = self.foreign(headers) {
            return Some(error(StatusCode::FORBIDDEN, why).into_response());
        }
        if path == "/healthz" || self.authorized(headers) {
            return None;
        }
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "this runtime requires Authorization: Bearer <its token> (--auth-token)",
        )
        .into_response();
        response
            .headers_mut()
            .insert(names::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Some(response)
    }
}

/// `ok`, or `503` with the reason while a store file cannot be written.
async fn healthz(State(handle): State<RuntimeHandle>) -> Response {
    let faults = handle.metrics().faults();
    if faults.is_empty() {
        return "ok".into_response();
    }
    error(StatusCode::SERVICE_UNAVAILABLE, faults.join("; ")).into_response()
}

impl statefun_core::ingress::Exposure for RuntimeHandle {
    fn knows(&self, t: &TypeName) -> bool {
        RuntimeHandle::knows(self, t)
    }
    fn exposed(&self, t: &TypeName) -> bool {
        RuntimeHandle::exposed(self, t)
    }
}

impl From<contract::Rejected> for Rejection {
    fn from(r: contract::Rejected) -> Self {
        error(
            StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST),
            r.message,
        )
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, Rejection> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| error(StatusCode::BAD_REQUEST, format!("{name} is not ASCII")))
        })
        .transpose()
}

async fn get_status(State(handle): State<RuntimeHandle>) -> Result<Response, Rejection> {
    let status = handle
        .status()
        .await
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let mut json = serde_json::to_value(status)
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    json["faults"] = json!(handle.metrics().faults());
    Ok(axum::Json(json).into_response())
}

async fn get_metrics(State(handle): State<RuntimeHandle>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        handle.metrics().render(),
    )
        .into_response()
}

async fn post_message(
    State(Ingress {
        handle,
        body_read_timeout,
    }): State<Ingress>,
    Path((namespace, ty, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Rejection> {
    contract::address(&namespace, &ty, &id, &handle)?;
    let limit = handle.max_body_bytes();
    let bytes = tokio::time::timeout(body_read_timeout, to_bytes(body, limit))
        .await
        .map_err(|_| {
            error(
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {body_read_timeout:?}"),
            )
        })?
        .map_err(|_| contract::too_large(limit))?;
    let request = contract::Request {
        namespace: &namespace,
        function_type: &ty,
        id: &id,
        content_type: header(&headers, "content-type")?,
        idempotency_key: header(&headers, "idempotency-key")?,
        body: &bytes,
    };
    let accepted = contract::accept(&request, &handle)?;
    let target = accepted.target.clone();
    let id = handle
        .submit(accepted.target, accepted.value, accepted.idempotency_key)
        .await
        .map_err(|e| refused(&handle, e))?;
    debug!(address = %target, message_id = %id, "accepted");
    let body = axum::Json(json!({ "message_id": id.to_string() }));
    Ok((StatusCode::ACCEPTED, body).into_response())
}

async fn get_state(
    State(handle): State<RuntimeHandle>,
    Path((namespace, ty, id)): Path<(String, String, String)>,
) -> Result<Response, Rejection> {
    let address = contract::address(&namespace, &ty, &id, &handle)?;
    let state = handle.state_json(&address).map_err(|e| match e {
        // A moment while the engine opens its file again: ask again shortly.
        EmbeddedError::Reopening => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        e => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    })?;
    Ok(axum::Json(state).into_response())
}
