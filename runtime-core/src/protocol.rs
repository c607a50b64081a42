//! StateFun's request-reply protocol (`io.statefun.sdk.reqreply`, `request-reply.proto`):
//! the exact messages and field numbers, derived with prost (no protoc), and their
//! mapping to and from the core's values.

use std::time::Duration;

use crate::context::Effect;
use crate::spec::{Expiration, StateSpec};
use crate::typename::{Address as CoreAddress, InvalidTypeName, TypeName};
use crate::value::TypedValue as CoreValue;

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Address {
    #[prost(string, tag = "1")]
    pub namespace: String,
    #[prost(string, tag = "2")]
    pub r#type: String,
    #[prost(string, tag = "3")]
    pub id: String,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct TypedValue {
    #[prost(string, tag = "1")]
    pub typename: String,
    #[prost(bool, tag = "2")]
    pub has_value: bool,
    #[prost(bytes = "vec", tag = "3")]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ToFunction {
    #[prost(oneof = "to_function::Request", tags = "100")]
    pub request: Option<to_function::Request>,
}

pub mod to_function {
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct PersistedValue {
        #[prost(string, tag = "1")]
        pub state_name: String,
        #[prost(message, optional, tag = "2")]
        pub state_value: Option<super::TypedValue>,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct Invocation {
        #[prost(message, optional, tag = "1")]
        pub caller: Option<super::Address>,
        #[prost(message, optional, tag = "2")]
        pub argument: Option<super::TypedValue>,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct InvocationBatchRequest {
        #[prost(message, optional, tag = "1")]
        pub target: Option<super::Address>,
        #[prost(message, repeated, tag = "2")]
        pub state: Vec<PersistedValue>,
        #[prost(message, repeated, tag = "3")]
        pub invocations: Vec<Invocation>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Request {
        #[prost(message, tag = "100")]
        Invocation(InvocationBatchRequest),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct FromFunction {
    #[prost(oneof = "from_function::Response", tags = "100, 101")]
    pub response: Option<from_function::Response>,
}

pub mod from_function {
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum MutationType {
        Delete = 0,
        Modify = 1,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct PersistedValueMutation {
        #[prost(enumeration = "MutationType", tag = "1")]
        pub mutation_type: i32,
        #[prost(string, tag = "2")]
        pub state_name: String,
        #[prost(message, optional, tag = "3")]
        pub state_value: Option<super::TypedValue>,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct Invocation {
        #[prost(message, optional, tag = "1")]
        pub target: Option<super::Address>,
        #[prost(message, optional, tag = "2")]
        pub argument: Option<super::TypedValue>,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct DelayedInvocation {
        #[prost(int64, tag = "1")]
        pub delay_in_ms: i64,
        #[prost(message, optional, tag = "2")]
        pub target: Option<super::Address>,
        #[prost(message, optional, tag = "3")]
        pub argument: Option<super::TypedValue>,
        #[prost(bool, tag = "10")]
        pub is_cancellation_request: bool,
        #[prost(string, tag = "11")]
        pub cancellation_token: String,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct EgressMessage {
        #[prost(string, tag = "1")]
        pub egress_namespace: String,
        #[prost(string, tag = "2")]
        pub egress_type: String,
        #[prost(message, optional, tag = "3")]
        pub argument: Option<super::TypedValue>,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct InvocationResponse {
        #[prost(message, repeated, tag = "1")]
        pub state_mutations: Vec<PersistedValueMutation>,
        #[prost(message, repeated, tag = "2")]
        pub outgoing_messages: Vec<Invocation>,
        #[prost(message, repeated, tag = "3")]
        pub delayed_invocations: Vec<DelayedInvocation>,
        #[prost(message, repeated, tag = "4")]
        pub outgoing_egresses: Vec<EgressMessage>,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum ExpireMode {
        None = 0,
        AfterWrite = 1,
        AfterInvoke = 2,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct ExpirationSpec {
        #[prost(enumeration = "ExpireMode", tag = "1")]
        pub mode: i32,
        #[prost(int64, tag = "2")]
        pub expire_after_millis: i64,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct PersistedValueSpec {
        #[prost(string, tag = "1")]
        pub state_name: String,
        #[prost(message, optional, tag = "2")]
        pub expiration_spec: Option<ExpirationSpec>,
        #[prost(string, tag = "3")]
        pub type_typename: String,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct IncompleteInvocationContext {
        #[prost(message, repeated, tag = "1")]
        pub missing_values: Vec<PersistedValueSpec>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Response {
        #[prost(message, tag = "100")]
        InvocationResult(InvocationResponse),
        #[prost(message, tag = "101")]
        IncompleteInvocationContext(IncompleteInvocationContext),
    }
}

/// Egress payload records of the StateFun SDKs (`io.statefun.sdk.egress`).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct KafkaProducerRecord {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value_bytes: Vec<u8>,
    #[prost(string, tag = "3")]
    pub topic: String,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct KinesisEgressRecord {
    #[prost(string, tag = "1")]
    pub partition_key: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value_bytes: Vec<u8>,
    #[prost(string, tag = "3")]
    pub stream: String,
    #[prost(string, tag = "4")]
    pub explicit_hash_key: String,
}

pub const KAFKA_PRODUCER_RECORD: &str =
    "type.googleapis.com/io.statefun.sdk.egress.KafkaProducerRecord";
pub const KINESIS_EGRESS_RECORD: &str =
    "type.googleapis.com/io.statefun.sdk.egress.KinesisEgressRecord";

/// A response that breaks the protocol's rules; says what and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("protocol violation: {0}")]
pub struct ProtocolError(pub String);

impl From<InvalidTypeName> for ProtocolError {
    fn from(e: InvalidTypeName) -> Self {
        ProtocolError(e.to_string())
    }
}

pub fn address_to_wire(a: &CoreAddress) -> Address {
    Address {
        namespace: a.function_type.namespace().to_string(),
        r#type: a.function_type.name().to_string(),
        id: a.id.clone(),
    }
}

pub fn address_from_wire(a: Option<Address>, field: &str) -> Result<CoreAddress, ProtocolError> {
    let a = a.ok_or_else(|| ProtocolError(format!("{field}: missing address")))?;
    let t = TypeName::new(&a.namespace, &a.r#type)
        .map_err(|e| ProtocolError(format!("{field}: {e}")))?;
    Ok(CoreAddress::new(t, a.id))
}

pub fn value_to_wire(v: &CoreValue) -> TypedValue {
    TypedValue {
        typename: v.typename.as_str().to_string(),
        has_value: v.value.is_some(),
        value: v.value.clone().unwrap_or_default(),
    }
}

pub fn value_from_wire(v: Option<TypedValue>, field: &str) -> Result<CoreValue, ProtocolError> {
    let v = v.ok_or_else(|| ProtocolError(format!("{field}: missing value")))?;
    let typename =
        TypeName::parse(v.typename).map_err(|e| ProtocolError(format!("{field}.typename: {e}")))?;
    Ok(CoreValue {
        typename,
        value: v.has_value.then_some(v.value),
    })
}

/// The declared state a function answered with in an `IncompleteInvocationContext`.
pub fn spec_from_wire(s: from_function::PersistedValueSpec) -> Result<StateSpec, ProtocolError> {
    let typename = TypeName::parse(s.type_typename)
        .map_err(|e| ProtocolError(format!("state {:?}: type: {e}", s.state_name)))?;
    let expiration = match s.expiration_spec {
        None => Expiration::Never,
        Some(e) => {
            let after = Duration::from_millis(e.expire_after_millis.max(0) as u64);
            match from_function::ExpireMode::try_from(e.mode) {
                Ok(from_function::ExpireMode::None) => Expiration::Never,
                Ok(from_function::ExpireMode::AfterWrite) => Expiration::AfterWrite(after),
                Ok(from_function::ExpireMode::AfterInvoke) => Expiration::AfterCall(after),
                Err(_) => {
                    return Err(ProtocolError(format!(
                        "state {:?}: unknown expire mode {}",
                        s.state_name, e.mode
                    )));
                }
            }
        }
    };
    Ok(StateSpec {
        name: s.state_name,
        typename,
        expiration,
    })
}

/// The effects of an invocation response, in the reference runtime's order: outgoing
/// messages, delayed messages and cancellations, egress.
pub fn effects_from_wire(
    r: &from_function::InvocationResponse,
) -> Result<Vec<Effect>, ProtocolError> {
    let mut effects = Vec::new();
    for (i, m) in r.outgoing_messages.iter().enumerate() {
        effects.push(Effect::Send {
            target: address_from_wire(m.target.clone(), &format!("outgoing_messages[{i}].target"))?,
            value: value_from_wire(
                m.argument.clone(),
                &format!("outgoing_messages[{i}].argument"),
            )?,
        });
    }
    for (i, d) in r.delayed_invocations.iter().enumerate() {
        let field = format!("delayed_invocations[{i}]");
        if d.is_cancellation_request {
            if d.cancellation_token.is_empty() {
                return Err(ProtocolError(format!(
                    "{field}: a cancellation needs a token"
                )));
            }
            effects.push(Effect::Cancel {
                token: d.cancellation_token.clone(),
            });
            continue;
        }
        let delay = u64::try_from(d.delay_in_ms).map_err(|_| {
            ProtocolError(format!(
                "{field}.delay_in_ms is negative ({} ms): a delay must be zero or more",
                d.delay_in_ms
            ))
        })?;
        effects.push(Effect::SendAfter {
            delay: Duration::from_millis(delay),
            target: address_from_wire(d.target.clone(), &format!("{field}.target"))?,
            value: value_from_wire(d.argument.clone(), &format!("{field}.argument"))?,
            cancellation_token: (!d.cancellation_token.is_empty())
                .then(|| d.cancellation_token.clone()),
        });
    }
    for (i, e) in r.outgoing_egresses.iter().enumerate() {
        let field = format!("outgoing_egresses[{i}]");
        effects.push(Effect::Egress {
            egress: TypeName::new(&e.egress_namespace, &e.egress_type)
                .map_err(|err| ProtocolError(format!("{field}: {err}")))?,
            value: value_from_wire(e.argument.clone(), &format!("{field}.argument"))?,
        });
    }
    Ok(effects)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn field_numbers_match_request_reply_proto() {
        // ToFunction.invocation is field 100 (tag 0xa2 0x06), with target=1, state=2,
        // invocations=3; bytes as the Python SDK produces them.
        let req = ToFunction {
            request: Some(to_function::Request::Invocation(
                to_function::InvocationBatchRequest {
                    target: Some(Address {
                        namespace: "n".into(),
                        r#type: "t".into(),
                        id: "i".into(),
                    }),
                    state: vec![to_function::PersistedValue {
                        state_name: "s".into(),
                        state_value: None,
                    }],
                    invocations: vec![],
                },
            )),
        };
        let bytes = req.encode_to_vec();
        assert_eq!(&bytes[..2], &[0xa2, 0x06]);
        assert_eq!(
            &bytes[3..],
            &[
                0x0a, 0x09, 0x0a, 0x01, b'n', 0x12, 0x01, b't', 0x1a, 0x01, b'i', 0x12, 0x03, 0x0a,
                0x01, b's'
            ]
        );
        // FromFunction.incomplete_invocation_context is field 101 (0xaa 0x06).
        let resp = FromFunction {
            response: Some(from_function::Response::IncompleteInvocationContext(
                from_function::IncompleteInvocationContext {
                    missing_values: vec![],
                },
            )),
        };
        assert_eq!(resp.encode_to_vec(), vec![0xaa, 0x06, 0x00]);
        // DelayedInvocation's cancellation fields are 10 and 11.
        let d = from_function::DelayedInvocation {
            is_cancellation_request: true,
            cancellation_token: "x".into(),
            ..Default::default()
        };
        assert_eq!(d.encode_to_vec(), vec![0x50, 0x01, 0x5a, 0x01, b'x']);
    }

    #[test]
    fn has_value_separates_empty_from_absent() {
        let zero = value_to_wire(&CoreValue::of(&0i64));
        assert!(zero.has_value && zero.value.is_empty());
        let back = value_from_wire(Some(zero), "v").expect("valid");
        assert_eq!(back.decode::<i64>(), Ok(0));
        let absent = value_from_wire(
            Some(TypedValue {
                typename: "io.statefun.types/long".into(),
                has_value: false,
                value: vec![],
            }),
            "v",
        )
        .expect("valid");
        assert_eq!(absent.value, None);
    }

    #[test]
    fn a_negative_delay_is_refused_naming_the_field() {
        let response = from_function::InvocationResponse {
            delayed_invocations: vec![from_function::DelayedInvocation {
                delay_in_ms: -5,
                target: Some(Address {
                    namespace: "a".into(),
                    r#type: "b".into(),
                    id: "c".into(),
                }),
                argument: None,
                is_cancellation_request: false,
                cancellation_token: String::new(),
            }],
            ..Default::default()
        };
        let e = effects_from_wire(&response).expect_err("refused");
        assert_eq!(
            e.to_string(),
            "protocol violation: delayed_invocations[0].delay_in_ms is negative (-5 ms): \
             a delay must be zero or more"
        );
    }

    #[test]
    fn specs_map_expiration_modes() {
        let spec = |mode, ms| from_function::PersistedValueSpec {
            state_name: "s".into(),
            type_typename: "io.statefun.types/int".into(),
            expiration_spec: Some(from_function::ExpirationSpec {
                mode,
                expire_after_millis: ms,
            }),
        };
        assert_eq!(
            spec_from_wire(spec(1, 500)).expect("ok").expiration,
            Expiration::AfterWrite(Duration::from_millis(500))
        );
        assert_eq!(
            spec_from_wire(spec(2, 7)).expect("ok").expiration,
            Expiration::AfterCall(Duration::from_millis(7))
        );
        assert_eq!(
            spec_from_wire(spec(0, 0)).expect("ok").expiration,
            Expiration::Never
        );
        assert!(spec_from_wire(spec(9, 0)).is_err());
    }
}
