//! The timer forwarder Lambda: consumes the standard delay queue. A timer that is due is
//! delivered into the inbox unless cancelled; one that is not due yet (delays over one
//! hop's 900 s, or a hop that ended early) goes back to the delay queue for another hop.
//!
//! It sends before its records are deleted: a crash in between delivers a message
//! twice, and the receiver drops the second copy by its exact id (delayed messages are
//! deduplicated by id, not by the sender's mark). Deleting first would lose it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::envelope::{self, TimerMessage};
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use statefun_core::ports::Clock;
use statefun_core::{Envelope, Issued};
use tracing::debug;

use crate::dead_letter::DeadLetters;
use crate::dynamo::DynamoStore;
use crate::keys::cancel_key;
use crate::metrics::Metrics;
use crate::transport::SqsTransport;

pub struct TimerForwarder {
    store: DynamoStore,
    transport: SqsTransport,
    dead_letters: DeadLetters,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for TimerForwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimerForwarder")
            .field("table", &self.store.table())
            .finish_non_exhaustive()
    }
}

/// The cancellations of a batch's timers: those read, and the keys of those that did
/// not read.
#[derive(Default)]
struct Cancellations {
    read: HashMap<String, Issued>,
    unread: BTreeSet<String>,
}

/// The cancellation key of a timer, if it has a token.
fn key(t: &TimerMessage) -> Option<String> {
    match (&t.token, &t.envelope.caller) {
        (Some(token), Some(sender)) => Some(cancel_key(sender, token)),
        _ => None,
    }
}

impl TimerForwarder {
    pub fn new(
        store: DynamoStore,
        transport: SqsTransport,
        dead_letters: DeadLetters,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Self {
        TimerForwarder {
            store,
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

    /// The latest cancellation of each key, in one strongly consistent read of the
    /// distinct keys (DynamoDB refuses a key twice in one request: timers sharing a
    /// token, or the same timer delivered twice). Keys still unprocessed after the
    /// store's retries with backoff are an error: the timers come again later, and
    /// are never taken as "not cancelled".
    async fn cancellations(&self, keys: BTreeSet<String>) -> Result<Cancellations, String> {
        let keys: Vec<String> = keys.into_iter().collect();
        let items = self
            .store
            .batch_get(&keys)
            .await
            .map_err(|e| e.to_string())?;
        // A cancellation that does not read (a newer build's, a damaged one) is never
        // "not cancelled": its timers come again; the others go on.
        let mut found = Cancellations::default();
        for (pk, item) in items {
            match crate::dynamo::cancel_of_item(&item) {
                Ok(issued) => {
                    found.read.insert(pk, issued);
                }
                Err(e) => {
                    tracing::warn!(key = %pk, reason = %e, "a cancellation does not read; its timers are retried");
                    found.unread.insert(pk);
                }
            }
        }
        Ok(found)
    }

    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let now = self.clock.now_ms();
        let records = event.records.len();
        let mut failed = Vec::new();
        let mut due: Vec<(String, TimerMessage)> = Vec::new();
        let mut due_at: Vec<(String, u64)> = Vec::new();
        let mut hop: Vec<(String, TimerMessage)> = Vec::new();
        for record in event.records {
            let first_received_ms = crate::first_received(&record);
            let id = record.message_id.unwrap_or_default();
            let body = record.body.unwrap_or_default();
            match envelope::decode_timer(&body) {
                Ok(t) if t.due_at_ms <= now => {
                    due_at.push((id.clone(), t.due_at_ms));
                    due.push((id, t));
                }
                Ok(t) => hop.push((id, t)),
                // A newer build's body (a rolling deploy): for a build that reads it.
                Err(e) if e.is_newer() => failed.push(id),
                Err(e) => {
                    if self
                        .dead_letters
                        .send(
                            "timer-forwarder",
                            &body,
                            "timers",
                            &id,
                            &e.to_string(),
                            first_received_ms,
                        )
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

        // One delivery per timer: a timer delivered twice in one batch (a re-send, a
        // standard-queue duplicate) is sent once and both records are acknowledged.
        let mut copies: HashMap<String, Vec<String>> = HashMap::new();
        let mut unique: Vec<TimerMessage> = Vec::new();
        for (record, t) in due {
            let id = format!("{}|{}", t.envelope.target, t.envelope.id);
            let seen = copies.entry(id).or_default();
            if seen.is_empty() {
                unique.push(t);
            }
            seen.push(record);
        }
        let records_of = |t: &TimerMessage| {
            copies
                .get(&format!("{}|{}", t.envelope.target, t.envelope.id))
                .cloned()
                .unwrap_or_default()
        };
        let keys: BTreeSet<String> = unique.iter().filter_map(key).collect();
        match self.cancellations(keys).await {
            Err(e) => {
                tracing::warn!(reason = %e, "reading cancellations failed; timers retried");
                failed.extend(unique.iter().flat_map(records_of));
            }
            Ok(cancelled) => {
                let (unsure, unique): (Vec<_>, Vec<_>) = unique
                    .into_iter()
                    .partition(|t| key(t).is_some_and(|k| cancelled.unread.contains(&k)));
                failed.extend(unsure.iter().flat_map(records_of));
                let (deliver, dropped): (Vec<_>, Vec<_>) = unique.into_iter().partition(|t| {
                    key(t)
                        .and_then(|k| cancelled.read.get(&k))
                        .is_none_or(|cancel| *cancel < t.issued)
                });
                self.metrics.timers_cancelled(dropped.len());
                for t in &dropped {
                    debug!(address = %t.envelope.target, message_id = %t.envelope.id, "cancelled delayed message dropped");
                }
                let envelopes: Vec<Envelope> = deliver.iter().map(|t| t.envelope.clone()).collect();
                for (t, error) in deliver
                    .iter()
                    .zip(self.transport.send_to_inbox(&envelopes).await)
                {
                    if error.is_some() {
                        failed.extend(records_of(t));
                    }
                }
            }
        }

        // A delayed message waits by design: its lag is how late past its due time
        // it is delivered.
        let end = self.clock.now_ms();
        self.metrics.lag_of(&due_at, &failed, end);
        println!(
            "{}",
            self.metrics.take().emf("timer-forwarder", records, end)
        );
        crate::batch_response(&failed)
    }
}
