//! The HTTP ingress, after the StateFun playground's convention:
//!
//! - `POST /{namespace}/{type}/{id}` (or `PUT`, as the playground's curl examples use):
//!   the body is the message, `Content-Type: application/vnd.{typename}` names its type
//!   (default `io.statefun.types/string`). Built-in types are sent as plain text (`42`,
//!   `true`, `hello`) and encoded here into the SDK wire form; other types pass through
//!   unchanged. `202 {"message_id": …}` once the message is on disk. An
//!   `Idempotency-Key` header makes a retried request enqueue once.
//! - `GET /{namespace}/{type}/{id}`: the instance's state as JSON, for development.
//! - Errors are 4xx with `{"error": "<what is wrong>"}`.

use std::future::Future;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use statefun_core::{Address, TypeName, TypedValue, builtin};
use tokio::net::TcpListener;
use tracing::debug;

use crate::RuntimeHandle;

/// Longest accepted instance id, in bytes.
pub const MAX_ID_BYTES: usize = 1024;
/// Longest accepted `Idempotency-Key`.
pub const MAX_KEY_BYTES: usize = 256;

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

fn address(
    handle: &RuntimeHandle,
    namespace: &str,
    ty: &str,
    id: String,
) -> Result<Address, Rejection> {
    let function_type =
        TypeName::new(namespace, ty).map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
    if !handle.knows(&function_type) {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("no function is registered for type {function_type}"),
        ));
    }
    if !handle.exposed(&function_type) {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!(
                "function type {function_type} is not exposed by the HTTP ingress \
                 (module.yaml: io.statefun-lambda.ingress.v1/http)"
            ),
        ));
    }
    if id.is_empty() || id.len() > MAX_ID_BYTES || id.chars().any(char::is_control) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("bad id: must be 1 to {MAX_ID_BYTES} bytes without control characters"),
        ));
    }
    Ok(Address::new(function_type, id))
}

fn message_type(headers: &HeaderMap) -> Result<TypeName, Rejection> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(builtin::STRING);
    };
    let unsupported = |why: &str| {
        error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "{why}: use Content-Type: application/vnd.<namespace>/<type>, \
                 e.g. application/vnd.io.statefun.types/long"
            ),
        )
    };
    let value = value
        .to_str()
        .map_err(|_| unsupported("Content-Type is not ASCII"))?;
    let media = value.split(';').next().unwrap_or_default().trim();
    if media.eq_ignore_ascii_case("text/plain") {
        return Ok(builtin::STRING);
    }
    let Some(typename) = media.strip_prefix("application/vnd.") else {
        return Err(unsupported(&format!("unsupported Content-Type {media:?}")));
    };
    TypeName::parse(typename)
        .map_err(|e| unsupported(&format!("bad type name in Content-Type: {e}")))
}

fn decode_body(typename: TypeName, bytes: &[u8]) -> Result<TypedValue, Rejection> {
    if !builtin::is_builtin(&typename) {
        return Ok(TypedValue::from_bytes(typename, bytes.to_vec()));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            format!("a {typename} body must be UTF-8 text"),
        )
    })?;
    builtin::from_text(&typename, text)
        .unwrap_or_else(|| Err(format!("{typename} has no text form")))
        .map_err(|e| error(StatusCode::BAD_REQUEST, e))
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Rejection> {
    match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => Ok(None),
        Some(Ok(k)) if !k.is_empty() && k.len() <= MAX_KEY_BYTES => Ok(Some(k.to_string())),
        Some(_) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("Idempotency-Key must be 1 to {MAX_KEY_BYTES} ASCII characters"),
        )),
    }
}

async fn post_message(
    State(handle): State<RuntimeHandle>,
    Path((namespace, ty, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Rejection> {
    let target = address(&handle, &namespace, &ty, id)?;
    let typename = message_type(&headers)?;
    let key = idempotency_key(&headers)?;
    let limit = handle.max_body_bytes();
    let bytes = to_bytes(body, limit).await.map_err(|_| {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body over the limit of {limit} bytes"),
        )
    })?;
    let value = decode_body(typename, &bytes)?;
    let id = handle
        .submit(target.clone(), value, key)
        .await
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    debug!(address = %target, message_id = %id, "accepted");
    let body = axum::Json(json!({ "message_id": id.to_string() }));
    Ok((StatusCode::ACCEPTED, body).into_response())
}

async fn get_state(
    State(handle): State<RuntimeHandle>,
    Path((namespace, ty, id)): Path<(String, String, String)>,
) -> Result<Response, Rejection> {
    let address = address(&handle, &namespace, &ty, id)?;
    let state = handle
        .state_json(&address)
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(axum::Json(state).into_response())
}
