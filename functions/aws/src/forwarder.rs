//! The timer forwarder Lambda: consumes the standard delay queue. A timer that is due is
//! delivered into the inbox unless cancelled; one that is not due yet (delays over one
//! hop's 900 s, or a hop that ended early) goes back to the delay queue for another hop.
//!
//! It sends before its records are deleted: a crash in between delivers a message
//! twice, and the receiver drops the second copy by its exact id (delayed messages are
//! deduplicated by id, not by the sender's mark). Deleting first would lose it.

use std::collections::HashMap;
use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};
use statefun_core::envelope::{self, TimerMessage};
use statefun_core::ports::Clock;
use statefun_core::{Envelope, Issued};
use tracing::debug;

use crate::dead_letter::DeadLetters;
use crate::keys::cancel_key;
use crate::metrics::Metrics;
use crate::transport::SqsTransport;

pub struct TimerForwarder {
    dynamodb: aws_sdk_dynamodb::Client,
    table: String,
    transport: SqsTransport,
    dead_letters: DeadLetters,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for TimerForwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimerForwarder")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

fn number(item: &HashMap<String, AttributeValue>, name: &str) -> Option<u64> {
    match item.get(name) {
        Some(AttributeValue::N(n)) => n.parse().ok(),
        _ => None,
    }
}

impl TimerForwarder {
    pub fn new(
        dynamodb: aws_sdk_dynamodb::Client,
        table: String,
        transport: SqsTransport,
        dead_letters: DeadLetters,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Self {
        TimerForwarder {
            dynamodb,
            table,
            transport,
            dead_letters,
            clock,
            metrics,
        }
    }

    /// Everything counted since start (for benchmarks).
    pub fn totals(&self) -> crate::metrics::Snapshot {
        self.metrics.totals()
    }

    /// The latest cancellation of each `cancel key`, in one read.
    async fn cancellations(&self, keys: Vec<String>) -> Result<HashMap<String, Issued>, String> {
        let mut found = HashMap::new();
        if keys.is_empty() {
            return Ok(found);
        }
        let mut request = KeysAndAttributes::builder().consistent_read(true);
        for k in keys {
            request = request.keys(HashMap::from([("pk".to_string(), AttributeValue::S(k))]));
        }
        let mut pending = Some(HashMap::from([(
            self.table.clone(),
            request.build().map_err(|e| e.to_string())?,
        )]));
        for _ in 0..8 {
            let Some(items) = pending.take().filter(|p| !p.is_empty()) else {
                break;
            };
            self.metrics.request("BatchGetItem");
            let out = self
                .dynamodb
                .batch_get_item()
                .set_request_items(Some(items))
                .send()
                .await
                .map_err(|e| {
                    format!(
                        "BatchGetItem: {}",
                        aws_sdk_dynamodb::error::DisplayErrorContext(e)
                    )
                })?;
            for item in out
                .responses()
                .and_then(|r| r.get(&self.table))
                .into_iter()
                .flatten()
            {
                if let (Some(AttributeValue::S(pk)), Some(version), Some(index)) =
                    (item.get("pk"), number(item, "cv"), number(item, "ci"))
                {
                    found.insert(
                        pk.clone(),
                        Issued {
                            version,
                            index: index as u32,
                        },
                    );
                }
            }
            pending = out.unprocessed_keys().cloned();
        }
        Ok(found)
    }

    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let now = self.clock.now_ms();
        let records = event.records.len();
        let mut failed = Vec::new();
        let mut due: Vec<(String, TimerMessage)> = Vec::new();
        let mut hop: Vec<(String, TimerMessage)> = Vec::new();
        for record in event.records {
            let id = record.message_id.unwrap_or_default();
            let body = record.body.unwrap_or_default();
            match envelope::decode_timer(&body) {
                Ok(t) if t.due_at_ms <= now => due.push((id, t)),
                Ok(t) => hop.push((id, t)),
                Err(e) => {
                    if self
                        .dead_letters
                        .send("timer-forwarder", &body, "timers", &id, &e.to_string())
                        .await
                        .is_err()
                    {
                        failed.push(id);
                    }
                }
            }
        }

        let timers: Vec<TimerMessage> = hop.iter().map(|(_, t)| t.clone()).collect();
        for ((id, _), error) in hop.iter().zip(self.transport.send_to_delay(&timers).await) {
            if error.is_some() {
                failed.push(id.clone());
            }
        }

        let key = |t: &TimerMessage| match (&t.token, &t.envelope.caller) {
            (Some(token), Some(sender)) => Some(cancel_key(sender, token)),
            _ => None,
        };
        let keys: Vec<String> = due.iter().filter_map(|(_, t)| key(t)).collect();
        match self.cancellations(keys).await {
            Err(e) => {
                tracing::warn!(reason = %e, "reading cancellations failed; timers retried");
                failed.extend(due.iter().map(|(id, _)| id.clone()));
            }
            Ok(cancelled) => {
                let (deliver, dropped): (Vec<_>, Vec<_>) = due.into_iter().partition(|(_, t)| {
                    key(t)
                        .and_then(|k| cancelled.get(&k))
                        .is_none_or(|cancel| *cancel < t.issued)
                });
                for (_, t) in &dropped {
                    debug!(address = %t.envelope.target, message_id = %t.envelope.id, "cancelled delayed message dropped");
                }
                let envelopes: Vec<Envelope> =
                    deliver.iter().map(|(_, t)| t.envelope.clone()).collect();
                for ((id, _), error) in deliver
                    .iter()
                    .zip(self.transport.send_to_inbox(&envelopes).await)
                {
                    if error.is_some() {
                        failed.push(id.clone());
                    }
                }
            }
        }

        println!(
            "{}",
            self.metrics.take().emf("timer-forwarder", records, now)
        );
        crate::batch_response(&failed)
    }
}
