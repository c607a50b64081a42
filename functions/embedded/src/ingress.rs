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

use std::future::Future;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use statefun_core::TypeName;
use statefun_core::ingress as contract;
use tokio::net::TcpListener;
use tracing::debug;

use crate::{EmbeddedError, RuntimeHandle};

/// A rejected request: a status and a message saying what is wrong.
#[derive(Debug)]
pub struct Rejection {
    status: StatusCode,
    message: String,
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "error": self.message }))).into_response()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Rejection {
    Rejection {
        status,
        message: message.into(),
    }
}

/// The routes, over a running runtime.
pub fn router(handle: RuntimeHandle) -> Router {
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
        .route("/healthz", get(|| async { "ok" }))
        .route("/status", get(get_status))
        .route("/metrics", get(get_metrics))
        .route("/{namespace}/{type}/{id}", instance)
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such route: address an instance as /{namespace}/{type}/{id}",
            )
        })
        .with_state(handle)
}

/// Serves the ingress until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    handle: RuntimeHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(handle))
        .with_graceful_shutdown(shutdown)
        .await
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
    Ok(axum::Json(status).into_response())
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
    State(handle): State<RuntimeHandle>,
    Path((namespace, ty, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Rejection> {
    contract::address(&namespace, &ty, &id, &handle)?;
    let limit = handle.max_body_bytes();
    let bytes = to_bytes(body, limit)
        .await
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
        .map_err(|e| match e {
            EmbeddedError::KeyReused(_) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
            e => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        })?;
    debug!(address = %target, message_id = %id, "accepted");
    let body = axum::Json(json!({ "message_id": id.to_string() }));
    Ok((StatusCode::ACCEPTED, body).into_response())
}

async fn get_state(
    State(handle): State<RuntimeHandle>,
    Path((namespace, ty, id)): Path<(String, String, String)>,
) -> Result<Response, Rejection> {
    let address = contract::address(&namespace, &ty, &id, &handle)?;
    let state = handle
        .state_json(&address)
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(axum::Json(state).into_response())
}
