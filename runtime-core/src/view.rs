//! The JSON view of an instance's state, shared by every host's "show me the state"
//! command: built-in types decoded, JSON values inline, anything else base64
//! ([`put_bytes`] is the one rule).

use base64::Engine;
use serde_json::{Map, Value as Json, json};

use crate::state::InstanceState;
use crate::typename::Address;
use crate::value::TypedValue;
use crate::{builtin, protocol};

/// The one rule for bytes of no built-in type, at every level: JSON text inline as
/// `value`, anything else (text that is not JSON, protobuf, binary) as `value_base64`.
/// So the bytes are always recoverable, and a consumer never has to guess.
fn put_bytes(out: &mut Map<String, Json>, bytes: &[u8]) {
    match serde_json::from_slice::<Json>(bytes) {
        Ok(v) => out.insert("value".into(), v),
        Err(_) => out.insert(
            "value_base64".into(),
            Json::from(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    };
}

/// The SDKs' Kafka and Kinesis egress records, decoded; their values by [`put_bytes`].
fn egress_record_json(typename: &str, bytes: &[u8]) -> Option<Json> {
    use prost::Message;
    let mut out = Map::new();
    let value = match typename {
        protocol::KAFKA_PRODUCER_RECORD => {
            let r = protocol::KafkaProducerRecord::decode(bytes).ok()?;
            out.insert("topic".into(), Json::from(r.topic));
            out.insert("key".into(), Json::from(r.key));
            r.value_bytes
        }
        protocol::KINESIS_EGRESS_RECORD => {
            let r = protocol::KinesisEgressRecord::decode(bytes).ok()?;
            out.insert("stream".into(), Json::from(r.stream));
            out.insert("partition_key".into(), Json::from(r.partition_key));
            r.value_bytes
        }
        _ => return None,
    };
    put_bytes(&mut out, &value);
    Some(Json::Object(out))
}

fn value_json(value: &TypedValue) -> Map<String, Json> {
    let mut out = Map::new();
    out.insert("typename".into(), Json::from(value.typename.as_str()));
    let Some(bytes) = &value.value else {
        out.insert("value".into(), Json::Null);
        return out;
    };
    let decoded = match builtin::to_json(&value.typename, bytes) {
        Some(r) => r.ok(),
        None => egress_record_json(value.typename.as_str(), bytes),
    };
    match decoded {
        Some(v) => {
            out.insert("value".into(), v);
        }
        None => put_bytes(&mut out, bytes),
    }
    out
}

/// `{"function_type", "id", "version", "state": {name: {"typename", "value" |
/// "value_base64", ["expires_at_ms"]}}}`; expired cells are left out.
pub fn state_json(address: &Address, record: Option<&InstanceState>, now_ms: u64) -> Json {
    let mut state = Map::new();
    if let Some(record) = record {
        for (name, cell) in record.cells.iter().filter(|(_, c)| c.is_live(now_ms)) {
            let mut v = value_json(&cell.value);
            if let Some(at) = cell.expires_at_ms {
                v.insert("expires_at_ms".into(), Json::from(at));
            }
            state.insert(name.clone(), Json::Object(v));
        }
    }
    json!({
        "function_type": address.function_type.as_str(),
        "id": address.id,
        "version": record.map_or(0, |r| r.version),
        "state": state,
    })
}

/// An egress record as one JSON object (for stdout egress and logs).
pub fn egress_json(record: &crate::EgressRecord) -> Json {
    let mut v = value_json(&record.value);
    v.insert("egress".into(), Json::from(record.egress.as_str()));
    v.insert("id".into(), Json::from(record.id.as_str()));
    Json::Object(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::typename::TypeName;
    use prost::Message;

    fn kafka(value: &[u8]) -> Json {
        let record = protocol::KafkaProducerRecord {
            key: "Bob".into(),
            value_bytes: value.to_vec(),
            topic: "greetings".into(),
        };
        let typed = TypedValue {
            typename: TypeName::parse(protocol::KAFKA_PRODUCER_RECORD).expect("type name"),
            value: Some(record.encode_to_vec()),
        };
        Json::Object(value_json(&typed))["value"].clone()
    }

    fn decoded(b64: &Json) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("a string"))
            .expect("base64")
    }

    #[test]
    fn egress_bytes_follow_one_rule_json_inline_else_base64_at_every_level() {
        let json = kafka(br#"{"greeting":"Hi"}"#);
        assert_eq!(json["value"], json!({"greeting": "Hi"}));
        assert_eq!(
            (json["topic"].clone(), json["key"].clone()),
            (json!("greetings"), json!("Bob"))
        );
        // Text that is not JSON, and a protobuf that happens to be valid UTF-8 (control
        // characters and all), are base64: the exact bytes come back.
        for bytes in [&b"Hi Bob, first visit"[..], &b"\x0a\x03Bob\x12\x01\x7f"[..]] {
            let v = kafka(bytes);
            assert!(v.get("value").is_none(), "{v}");
            assert_eq!(decoded(&v["value_base64"]), bytes);
        }
        let top = value_json(&TypedValue {
            typename: TypeName::from_static("app/Proto"),
            value: Some(b"\x0a\x03Bob".to_vec()),
        });
        assert_eq!(decoded(&top["value_base64"]), b"\x0a\x03Bob");
    }
}
