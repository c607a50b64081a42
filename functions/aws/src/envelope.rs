//! The versioned wire form of messages on the AWS path (SQS bodies): one JSON object,
//! values base64-encoded. Version 1:
//!
//! ```json
//! {"v":1,
//!  "id":{"source":"example/person/Bob","seq":3,"index":0}   // or {"key":"…"}
//!  "target":{"type":"example/greeter","id":"Bob"},
//!  "caller":{"type":"example/person","id":"Bob"},            // or null (ingress)
//!  "typename":"example/GreetRequest",
//!  "value":"eyJuYW1lIjoiQm9iIn0="}                         // or null (no value)
//! ```
//!
//! A delayed message on its way to the timer forwarder wraps one:
//! `{"v":1,"due_at_ms":…,"token":"…"|null,"issued":{"version":…,"index":…},"message":{…}}`.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use statefun_core::{Address, Envelope, Issued, MessageId, TypeName, TypedValue};

pub const VERSION: u32 = 1;

/// A body this build cannot read; says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not an envelope of a version it claims (poison: dead-lettered).
    #[error("undecodable message envelope: {0}")]
    Malformed(String),
    /// Written by a newer build (a rolling deploy): left for a build that reads it,
    /// never dead-lettered.
    #[error(
        "message envelope in version {found}, newer than this build reads (up to {VERSION}): \
         left for a build that reads it"
    )]
    Newer { found: u32 },
}

impl EnvelopeError {
    pub fn is_newer(&self) -> bool {
        matches!(self, EnvelopeError::Newer { .. })
    }
}

/// Only the version of a body: read first, so a newer body of any shape is known as
/// newer, not as malformed.
#[derive(Deserialize)]
struct WireVersion {
    v: u32,
}

/// Checks a body's version before its shape.
fn check_version(body: &str) -> Result<(), EnvelopeError> {
    let WireVersion { v } =
        serde_json::from_str(body).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    match v {
        VERSION => Ok(()),
        v if v > VERSION => Err(EnvelopeError::Newer { found: v }),
        v => Err(EnvelopeError::Malformed(format!(
            "unsupported envelope version {v}"
        ))),
    }
}

#[derive(Serialize, Deserialize)]
struct WireAddress {
    #[serde(rename = "type")]
    function_type: String,
    id: String,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum WireId {
    Ordered {
        source: String,
        seq: u64,
        index: u32,
    },
    Keyed {
        key: String,
    },
}

#[derive(Serialize, Deserialize)]
struct WireEnvelope {
    v: u32,
    id: WireId,
    target: WireAddress,
    caller: Option<WireAddress>,
    typename: String,
    value: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct WireTimer {
    v: u32,
    due_at_ms: u64,
    token: Option<String>,
    issued: Issued,
    message: WireEnvelope,
}

/// A delayed message as it travels through the delay queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerMessage {
    pub due_at_ms: u64,
    pub token: Option<String>,
    /// Where the sender issued it, to compare with cancellations.
    pub issued: Issued,
    pub envelope: Envelope,
}

fn wire_address(a: &Address) -> WireAddress {
    WireAddress {
        function_type: a.function_type.as_str().to_string(),
        id: a.id.clone(),
    }
}

fn address(w: WireAddress, field: &str) -> Result<Address, EnvelopeError> {
    let t = TypeName::parse(w.function_type)
        .map_err(|e| EnvelopeError::Malformed(format!("{field}.type: {e}")))?;
    Ok(Address::new(t, w.id))
}

fn to_wire(e: &Envelope) -> WireEnvelope {
    WireEnvelope {
        v: VERSION,
        id: match &e.id {
            MessageId::Ordered { source, seq, index } => WireId::Ordered {
                source: source.to_string(),
                seq: *seq,
                index: *index,
            },
            MessageId::Keyed(key) => WireId::Keyed { key: key.clone() },
        },
        target: wire_address(&e.target),
        caller: e.caller.as_ref().map(wire_address),
        typename: e.value.typename.as_str().to_string(),
        value: e.value.value.as_ref().map(|v| STANDARD.encode(v)),
    }
}

fn from_wire(w: WireEnvelope) -> Result<Envelope, EnvelopeError> {
    if w.v != VERSION {
        return Err(EnvelopeError::Malformed(format!(
            "the message inside is in version {}",
            w.v
        )));
    }
    let id = match w.id {
        WireId::Ordered { source, seq, index } => MessageId::Ordered {
            source: Arc::from(source),
            seq,
            index,
        },
        WireId::Keyed { key } => MessageId::Keyed(key),
    };
    let typename = TypeName::parse(w.typename)
        .map_err(|e| EnvelopeError::Malformed(format!("typename: {e}")))?;
    let value = w
        .value
        .map(|v| STANDARD.decode(v))
        .transpose()
        .map_err(|e| EnvelopeError::Malformed(format!("value: not base64: {e}")))?;
    Ok(Envelope {
        id,
        target: address(w.target, "target")?,
        caller: w.caller.map(|c| address(c, "caller")).transpose()?,
        value: TypedValue { typename, value },
    })
}

/// Encodes a message as an envelope body.
pub fn encode(envelope: &Envelope) -> String {
    // Plain serde structs of strings and numbers: serialization cannot fail.
    serde_json::to_string(&to_wire(envelope)).expect("envelope serializes")
}

/// Decodes an envelope body.
pub fn decode(body: &str) -> Result<Envelope, EnvelopeError> {
    check_version(body)?;
    let wire: WireEnvelope =
        serde_json::from_str(body).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    from_wire(wire)
}

pub fn encode_timer(timer: &TimerMessage) -> String {
    let wire = WireTimer {
        v: VERSION,
        due_at_ms: timer.due_at_ms,
        token: timer.token.clone(),
        issued: timer.issued,
        message: to_wire(&timer.envelope),
    };
    serde_json::to_string(&wire).expect("timer serializes")
}

pub fn decode_timer(body: &str) -> Result<TimerMessage, EnvelopeError> {
    check_version(body)?;
    let wire: WireTimer =
        serde_json::from_str(body).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    Ok(TimerMessage {
        due_at_ms: wire.due_at_ms,
        token: wire.token,
        issued: wire.issued,
        envelope: from_wire(wire.message)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: MessageId, value: Option<Vec<u8>>) -> Envelope {
        Envelope {
            id,
            target: Address::new(TypeName::from_static("example/greeter"), "Bob/x"),
            caller: Some(Address::new(TypeName::from_static("example/person"), "Bob")),
            value: TypedValue {
                typename: TypeName::from_static("example/GreetRequest"),
                value,
            },
        }
    }

    #[test]
    fn envelopes_round_trip() {
        for e in [
            sample(
                MessageId::Ordered {
                    source: "example/person/Bob".into(),
                    seq: 3,
                    index: 1,
                },
                Some(b"{\"name\":\"Bob\"}".to_vec()),
            ),
            sample(MessageId::Keyed("sqs:abc".into()), None),
            sample(MessageId::Keyed("k".into()), Some(vec![])),
        ] {
            assert_eq!(decode(&encode(&e)), Ok(e.clone()));
            let t = TimerMessage {
                due_at_ms: 99,
                token: Some("t".into()),
                issued: Issued {
                    version: 4,
                    index: 2,
                },
                envelope: e,
            };
            assert_eq!(decode_timer(&encode_timer(&t)), Ok(t));
        }
    }

    #[test]
    fn bad_envelopes_say_what_is_wrong() {
        assert!(decode("not json").is_err());
        let e = sample(MessageId::Keyed("k".into()), Some(vec![1]));
        let body = encode(&e).replace("example/greeter", "nogreeter");
        assert!(
            decode(&body)
                .unwrap_err()
                .to_string()
                .contains("target.type")
        );
        let body = encode(&e).replace("\"AQ==\"", "\"@@\"");
        assert!(decode(&body).unwrap_err().to_string().contains("base64"));
        let body = encode(&e).replace("\"v\":1", "\"v\":0");
        assert!(!decode(&body).unwrap_err().is_newer());
    }

    /// A newer build's body, whatever its shape, is newer (retried), not malformed
    /// (dead-lettered).
    #[test]
    fn a_newer_body_is_known_as_newer() {
        let e = sample(MessageId::Keyed("k".into()), Some(vec![1]));
        let body = encode(&e).replace("\"v\":1", "\"v\":7");
        let err = decode(&body).unwrap_err();
        assert!(
            err.is_newer() && err.to_string().contains("version 7"),
            "{err}"
        );
        let reshaped = r#"{"v":2,"message":{"whatever":true}}"#;
        assert!(decode(reshaped).unwrap_err().is_newer());
        assert!(decode_timer(reshaped).unwrap_err().is_newer());
    }
}
