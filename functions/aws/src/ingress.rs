//! The SQS ingress Lambda: records of users' queues become messages to addresses.
//!
//! Each source queue has a route ([`IngressRoute`]): either a fixed function type with
//! the id taken from a JSON pointer into the body or from a message attribute, the body
//! delivered unchanged under the route's type name (like StateFun's Kafka ingress); or
//! `auto`, where the body is a routable envelope
//! `{"target": {"type": "ns/name", "id": "…"}, "typename": "ns/T", "value": …}` —
//! `value` is plain text or a number for built-in types, any JSON for JSON types — or
//! `"value_base64"` for raw bytes. The message id is `sqs:<record id>`: a redelivered
//! record is applied once. Unroutable records go to the DLQ with the reason.

use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use base64::Engine;
use serde::Deserialize;
use serde_json::Value as Json;
use statefun_core::ports::Clock;
use statefun_core::{Address, Envelope, MessageId, Registry, TypeName, TypedValue, builtin};

use crate::config::{IdSource, IngressRoute};
use crate::dead_letter::DeadLetters;
use crate::metrics::Metrics;
use crate::transport::SqsTransport;

pub struct SqsIngress {
    routes: Vec<IngressRoute>,
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

fn routed(
    route: &IngressRoute,
    record: &SqsMessage,
    body: &str,
) -> Result<(Address, TypedValue), String> {
    let function_type = TypeName::parse(route.target.as_str()).map_err(|e| e.to_string())?;
    let id = match &route.id {
        Some(IdSource::Pointer(pointer)) => {
            let json: Json =
                serde_json::from_str(body).map_err(|e| format!("body is not JSON: {e}"))?;
            match json.pointer(pointer) {
                Some(Json::String(s)) => s.clone(),
                Some(n @ Json::Number(_)) => n.to_string(),
                Some(other) => return Err(format!("{pointer} is {other}, not a string or number")),
                None => return Err(format!("the body has nothing at {pointer}")),
            }
        }
        Some(IdSource::Attribute(name)) => record
            .message_attributes
            .get(name)
            .and_then(|a| a.string_value.clone())
            .ok_or_else(|| format!("no string message attribute {name}"))?,
        None => return Err("the route has no id source".into()),
    };
    if id.is_empty() {
        return Err("the id is empty".into());
    }
    let typename =
        TypeName::parse(route.typename.clone().unwrap_or_default()).map_err(|e| e.to_string())?;
    Ok((
        Address::new(function_type, id),
        TypedValue::from_bytes(typename, body.as_bytes().to_vec()),
    ))
}

impl SqsIngress {
    pub fn new(
        routes: Vec<IngressRoute>,
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

    /// Routes to the module's remote functions too.
    pub fn with_remote(mut self, remote: Option<Arc<statefun_remote::HttpFunctions>>) -> Self {
        self.remote = remote;
        self
    }

    fn route(&self, record: &SqsMessage, body: &str) -> Result<(Address, TypedValue), String> {
        let arn = record.event_source_arn.clone().unwrap_or_default();
        let route = self
            .routes
            .iter()
            .find(|r| matches(&r.queue, &arn))
            .ok_or_else(|| format!("no ingress route for queue {arn}"))?;
        let (address, value) = if route.target == "auto" {
            routable(body)?
        } else {
            routed(route, record, body)?
        };
        let remote =
            statefun_core::remote::RemoteFunctions::serves(&self.remote, &address.function_type);
        if !remote && !self.registry.contains(&address.function_type) {
            return Err(format!(
                "no function is registered for type {}",
                address.function_type
            ));
        }
        Ok((address, value))
    }

    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let records = event.records.len();
        let mut failed = Vec::new();
        let mut routed_records = Vec::new();
        let mut envelopes = Vec::new();
        for record in &event.records {
            let id = record.message_id.clone().unwrap_or_default();
            let body = record.body.clone().unwrap_or_default();
            match self.route(record, &body) {
                Ok((target, value)) => {
                    routed_records.push(id.clone());
                    envelopes.push(Envelope {
                        id: MessageId::Keyed(format!("sqs:{id}")),
                        target,
                        caller: None,
                        value,
                    });
                }
                Err(reason) => {
                    let group = record
                        .event_source_arn
                        .clone()
                        .unwrap_or_else(|| "ingress".into());
                    if self
                        .dead_letters
                        .send("sqs-ingress", &body, &group, &id, &reason)
                        .await
                        .is_err()
                    {
                        failed.push(id);
                    }
                }
            }
        }
        for (id, error) in routed_records
            .iter()
            .zip(self.transport.send_to_inbox(&envelopes).await)
        {
            if error.is_some() {
                failed.push(id.clone());
            }
        }
        println!(
            "{}",
            self.metrics
                .take()
                .emf("sqs-ingress", records, self.clock.now_ms())
        );
        crate::batch_response(&failed)
    }
}
