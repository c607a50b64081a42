//! The SQS ingress Lambda: records of users' queues become messages to addresses.
//!
//! Each source queue has a route (the module's `SqsIngress`, also from `STATEFUN_INGRESS_ROUTES`): either a fixed function type with
//! the id taken from a JSON pointer into the body or from a message attribute, the body
//! delivered unchanged under the route's type name (like StateFun's Kafka ingress); or
//! `auto`, where the body is a routable envelope
//! `{"target": {"type": "ns/name", "id": "…"}, "typename": "ns/T", "value": …}` —
//! `value` is plain text or a number for built-in types, any JSON for JSON types — or
//! `"value_base64"` for raw bytes. The message id is `sqs:<record id>`: a redelivered
//! record is applied once. Unroutable records go to the DLQ with the reason.

use std::sync::Arc;
use std::time::Instant;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use base64::Engine;
use serde::Deserialize;
use serde_json::Value as Json;
use statefun_core::ports::Clock;
use statefun_core::{Address, Envelope, MessageId, Registry, TypeName, TypedValue, builtin};

use crate::dead_letter::DeadLetters;
use crate::metrics::Metrics;
use crate::sqs_batch::{self, Read, Record, Role, Shared, SqsHandler};
use crate::transport::SqsTransport;
use statefun_core::module::{IdFrom, SqsIngress as Route, SqsRouting};

pub struct SqsIngress {
    routes: Vec<Route>,
    registry: Arc<Registry>,
    transport: SqsTransport,
    dead_letters: DeadLetters,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    remote: Option<Arc<statefun_remote::HttpFunctions>>,
}

impl std::fmt::Debug for SqsIngress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsIngress")
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Routable {
    target: RoutableTarget,
    typename: String,
    #[serde(default)]
    value: Option<Json>,
    #[serde(default)]
    value_base64: Option<String>,
}

#[derive(Deserialize)]
struct RoutableTarget {
    #[serde(rename = "type")]
    function_type: String,
    id: String,
}

fn text_of(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Whether a record from `arn` belongs to a route naming `queue` (an ARN or a name).
fn matches(queue: &str, arn: &str) -> bool {
    queue == arn || arn.rsplit(':').next() == Some(queue)
}

fn routable(body: &str) -> Result<(Address, TypedValue), String> {
    let r: Routable =
        serde_json::from_str(body).map_err(|e| format!("not a routable envelope: {e}"))?;
    let function_type =
        TypeName::parse(r.target.function_type).map_err(|e| format!("target.type: {e}"))?;
    let typename = TypeName::parse(r.typename).map_err(|e| format!("typename: {e}"))?;
    let value = match (r.value, r.value_base64) {
        (Some(_), Some(_)) => return Err("give either value or value_base64, not both".into()),
        (None, Some(b64)) => TypedValue::from_bytes(
            typename,
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("value_base64: {e}"))?,
        ),
        (Some(v), None) => match builtin::from_text(&typename, &text_of(&v)) {
            Some(parsed) => parsed.map_err(|e| format!("value: {e}"))?,
            None => TypedValue::from_bytes(typename, v.to_string().into_bytes()),
        },
        (None, None) => TypedValue {
            typename,
            value: None,
        },
    };
    Ok((Address::new(function_type, r.target.id), value))
}

/// A record of a queue with fixed targets: the same message for each of them.
fn routed(
    value_type: &TypeName,
    targets: &[TypeName],
    id: &IdFrom,
    record: &SqsMessage,
    body: &str,
) -> Result<Vec<(Address, TypedValue)>, String> {
    let id = match id {
        IdFrom::Pointer(pointer) => {
            let json: Json =
                serde_json::from_str(body).map_err(|e| format!("body is not JSON: {e}"))?;
            match json.pointer(pointer) {
                Some(Json::String(s)) => s.clone(),
                Some(n @ Json::Number(_)) => n.to_string(),
                Some(other) => return Err(format!("{pointer} is {other}, not a string or number")),
                None => return Err(format!("the body has nothing at {pointer}")),
            }
        }
        IdFrom::Attribute(name) => record
            .message_attributes
            .get(name)
            .and_then(|a| a.string_value.clone())
            .ok_or_else(|| format!("no string message attribute {name}"))?,
    };
    if id.is_empty() {
        return Err("the id is empty".into());
    }
    let value = TypedValue::from_bytes(value_type.clone(), body.as_bytes().to_vec());
    Ok(targets
        .iter()
        .map(|t| (Address::new(t.clone(), id.clone()), value.clone()))
        .collect())
}

impl SqsIngress {
    pub fn new(
        routes: Vec<Route>,
        registry: Arc<Registry>,
        transport: SqsTransport,
        dead_letters: DeadLetters,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Self {
        SqsIngress {
            routes,
            registry,
            transport,
            dead_letters,
            clock,
            metrics,
            remote: None,
        }
    }

    /// Everything counted since start (for tests and benchmarks).
    pub fn totals(&self) -> crate::metrics::Snapshot {
        self.metrics.totals()
    }

    /// Routes to the module's remote functions too.
    pub fn with_remote(mut self, remote: Option<Arc<statefun_remote::HttpFunctions>>) -> Self {
        self.remote = remote;
        self
    }

    fn route(&self, record: &SqsMessage, body: &str) -> Result<Vec<(Address, TypedValue)>, String> {
        let arn = record.event_source_arn.clone().unwrap_or_default();
        let route = self
            .routes
            .iter()
            .find(|r| matches(&r.queue, &arn))
            .ok_or_else(|| format!("no ingress route for queue {arn}"))?;
        let messages = match &route.routing {
            SqsRouting::Routable => vec![routable(body)?],
            SqsRouting::Targets {
                value_type,
                targets,
                id,
            } => routed(value_type, targets, id, record, body)?,
        };
        for (address, _) in &messages {
            let remote = statefun_core::remote::RemoteFunctions::serves(
                &self.remote,
                &address.function_type,
            );
            if !remote && !self.registry.contains(&address.function_type) {
                return Err(format!(
                    "no function is registered for type {}",
                    address.function_type
                ));
            }
        }
        Ok(messages)
    }

    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        self.handle_until(event, None).await
    }
}

impl Role for SqsIngress {
    /// The messages a record routes to: one per target.
    type Item = Vec<(Address, TypedValue)>;
    const NAME: &'static str = "sqs-ingress";

    fn shared(&self) -> Shared<'_> {
        Shared::new(&self.dead_letters, &self.metrics, self.clock.as_ref())
    }

    fn read(&self, record: &SqsMessage, body: &str) -> Read<Self::Item> {
        match self.route(record, body) {
            Ok(messages) => Read::Item(messages),
            Err(reason) => Read::Poison {
                reason,
                group: record
                    .event_source_arn
                    .clone()
                    .unwrap_or_else(|| "ingress".into()),
            },
        }
    }

    async fn run(
        &self,
        records: Vec<Record<Self::Item>>,
        _deadline: Option<Instant>,
    ) -> Vec<String> {
        // One message per target, all under the record's id (ids are unique per
        // target): a redelivered record is applied once by each.
        let (ids, envelopes): (Vec<String>, Vec<Envelope>) = records
            .into_iter()
            .flat_map(|r| {
                let id = r.id;
                r.item.into_iter().map(move |(target, value)| {
                    let envelope = Envelope {
                        id: MessageId::Keyed(format!("sqs:{id}")),
                        target,
                        caller: None,
                        value,
                    };
                    (id.clone(), envelope)
                })
            })
            .unzip();
        let results = self.transport.send_to_inbox(&envelopes).await;
        ids.into_iter()
            .zip(results)
            .filter(|(_, error)| error.is_some())
            .map(|(id, _)| id)
            .collect()
    }
}

impl SqsHandler for SqsIngress {
    async fn handle_until(&self, event: SqsEvent, deadline: Option<Instant>) -> SqsBatchResponse {
        sqs_batch::handle(self, event, deadline).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_of_a_queue_with_several_targets_goes_to_each_of_them() {
        let targets = [
            TypeName::from_static("example/person"),
            TypeName::from_static("example/audit"),
        ];
        let messages = routed(
            &TypeName::from_static("example/GreetRequest"),
            &targets,
            &IdFrom::Pointer("/name".into()),
            &SqsMessage::default(),
            r#"{"name":"Bob"}"#,
        )
        .expect("routed");
        let addresses: Vec<String> = messages.iter().map(|(a, _)| a.to_string()).collect();
        assert_eq!(addresses, vec!["example/person/Bob", "example/audit/Bob"]);
        assert!(
            messages
                .iter()
                .all(|(_, v)| v.value.as_deref() == Some(br#"{"name":"Bob"}"#.as_slice()))
        );
    }
}
