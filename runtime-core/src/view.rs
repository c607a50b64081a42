//! The JSON view of an instance's state, shared by every host's "show me the state"
//! command: built-in types decoded, JSON values inline, anything else base64.

use base64::Engine;
use serde_json::{Map, Value as Json, json};

use crate::state::InstanceState;
use crate::typename::Address;
use crate::value::TypedValue;
use crate::{builtin, protocol};

/// Bytes as JSON if they are JSON, else as a UTF-8 string, else base64.
fn bytes_json(bytes: &[u8]) -> Json {
    if let Ok(v) = serde_json::from_slice::<Json>(bytes) {
        return v;
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => Json::from(s),
        Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) }),
    }
}

/// The SDKs' Kafka and Kinesis egress records, decoded.
fn egress_record_json(typename: &str, bytes: &[u8]) -> Option<Json> {
    use prost::Message;
    match typename {
        protocol::KAFKA_PRODUCER_RECORD => {
            let r = protocol::KafkaProducerRecord::decode(bytes).ok()?;
            Some(json!({"topic": r.topic, "key": r.key, "value": bytes_json(&r.value_bytes)}))
        }
        protocol::KINESIS_EGRESS_RECORD => {
            let r = protocol::KinesisEgressRecord::decode(bytes).ok()?;
            Some(
                json!({"stream": r.stream, "partition_key": r.partition_key, "value": bytes_json(&r.value_bytes)}),
            )
        }
        _ => None,
    }
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
        None => egress_record_json(value.typename.as_str(), bytes)
            .or_else(|| serde_json::from_slice::<Json>(bytes).ok()),
    };
    match decoded {
        Some(v) => out.insert("value".into(), v),
        None => out.insert(
            "value_base64".into(),
            Json::from(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    };
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
