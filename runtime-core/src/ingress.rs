//! The HTTP ingress contract, shared by the embedded runtime's server and the API
//! Gateway Lambda: `POST /{namespace}/{type}/{id}`, body = the message,
//! `Content-Type: application/vnd.{typename}` (default `io.statefun.types/string`; built-in
//! types as plain text), optional `Idempotency-Key`. A rejection is a 4xx status with a
//! message saying what is wrong.

use crate::builtin;
use crate::typename::{Address, TypeName};
use crate::value::TypedValue;

/// Longest accepted instance id, in bytes.
pub const MAX_ID_BYTES: usize = 1024;
/// Longest accepted `Idempotency-Key`.
pub const MAX_KEY_BYTES: usize = 256;

/// A request as it arrived.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub namespace: &'a str,
    pub function_type: &'a str,
    pub id: &'a str,
    pub content_type: Option<&'a str>,
    pub idempotency_key: Option<&'a str>,
    pub body: &'a [u8],
}

/// A message to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub target: Address,
    pub value: TypedValue,
    pub idempotency_key: Option<String>,
}

/// Why a request is refused: an HTTP status and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct Rejected {
    pub status: u16,
    pub message: String,
}

fn rejected(status: u16, message: impl Into<String>) -> Rejected {
    Rejected {
        status,
        message: message.into(),
    }
}

/// What the ingress may address.
pub trait Exposure {
    /// Whether any function serves `t`.
    fn knows(&self, t: &TypeName) -> bool;
    /// Whether the ingress may address `t`.
    fn exposed(&self, t: &TypeName) -> bool;
}

/// The address of `/{namespace}/{type}/{id}`, if the ingress may reach it.
pub fn address(
    namespace: &str,
    function_type: &str,
    id: &str,
    exposure: &impl Exposure,
) -> Result<Address, Rejected> {
    let t = TypeName::new(namespace, function_type).map_err(|e| rejected(400, e.to_string()))?;
    if !exposure.knows(&t) {
        return Err(rejected(
            404,
            format!("no function is registered for type {t}"),
        ));
    }
    if !exposure.exposed(&t) {
        return Err(rejected(
            404,
            format!(
                "function type {t} is not exposed by the HTTP ingress (module.yaml: io.statefun-lambda.ingress.v1/http)"
            ),
        ));
    }
    if id.is_empty() || id.len() > MAX_ID_BYTES || id.chars().any(char::is_control) {
        return Err(rejected(
            400,
            format!("bad id: must be 1 to {MAX_ID_BYTES} bytes without control characters"),
        ));
    }
    Ok(Address::new(t, id))
}

/// The message type named by a `Content-Type` header.
pub fn message_type(content_type: Option<&str>) -> Result<TypeName, Rejected> {
    let Some(value) = content_type else {
        return Ok(builtin::STRING);
    };
    let unsupported = |why: &str| {
        rejected(
            415,
            format!(
                "{why}: use Content-Type: application/vnd.<namespace>/<type>, e.g. application/vnd.io.statefun.types/long"
            ),
        )
    };
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

/// The value of a body: built-in types from their text form, others unchanged.
pub fn decode_body(typename: TypeName, body: &[u8]) -> Result<TypedValue, Rejected> {
    if !builtin::is_builtin(&typename) {
        return Ok(TypedValue::from_bytes(typename, body.to_vec()));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| rejected(400, format!("a {typename} body must be UTF-8 text")))?;
    builtin::from_text(&typename, text)
        .unwrap_or_else(|| Err(format!("{typename} has no text form")))
        .map_err(|e| rejected(400, e))
}

/// A valid `Idempotency-Key`, if given.
pub fn idempotency_key(key: Option<&str>) -> Result<Option<String>, Rejected> {
    match key {
        None => Ok(None),
        Some(k) if !k.is_empty() && k.len() <= MAX_KEY_BYTES && k.is_ascii() => {
            Ok(Some(k.to_string()))
        }
        Some(_) => Err(rejected(
            400,
            format!("Idempotency-Key must be 1 to {MAX_KEY_BYTES} ASCII characters"),
        )),
    }
}

/// Checks a whole request (the body size is the caller's to enforce while reading).
pub fn accept(request: &Request<'_>, exposure: &impl Exposure) -> Result<Accepted, Rejected> {
    let target = address(
        request.namespace,
        request.function_type,
        request.id,
        exposure,
    )?;
    let typename = message_type(request.content_type)?;
    let idempotency_key = idempotency_key(request.idempotency_key)?;
    let value = decode_body(typename, request.body)?;
    Ok(Accepted {
        target,
        value,
        idempotency_key,
    })
}

/// The rejection of a body over `limit` bytes.
pub fn too_large(limit: usize) -> Rejected {
    rejected(413, format!("body over the limit of {limit} bytes"))
}
