//! The timer forwarder Lambda: consumes the standard delay queue. A timer that is due is
//! delivered into the inbox unless cancelled; one that is not due yet (delays over one
//! hop's 900 s, or a hop that ended early) goes back to the delay queue for another hop.
//!
//! It sends before its records are deleted: a crash in between delivers a message
//! twice, and the receiver drops the second copy by its exact id (delayed messages are
//! deduplicated by id, not by the sender's mark). Deleting first would lose it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use crate::envelope::{self, TimerMessage};
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use statefun_core::ports::Clock;
use statefun_core::{Envelope, Issued};
use tracing::debug;

use crate::dead_letter::DeadLetters;
use crate::dynamo::DynamoStore;
use crate::keys::cancel_key;
use crate::metrics::Metrics;
use crate::sqs_batch::{self, Read, Record, Role, Shared, SqsHandler};
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
        self.handle_until(event, None).await
    }

    /// Sends the timers that are not due back to the delay queue for another hop; the
    /// records that failed.
    async fn hop(&self, hop: Vec<Record<Timer>>) -> Vec<String> {
        let timers: Vec<TimerMessage> = hop.iter().map(|r| r.item.message.clone()).collect();
        let results = self.transport.send_to_delay(&timers).await;
        hop.into_iter()
            .zip(results)
            .filter(|(_, error)| error.is_some())
            .map(|(r, _)| r.id)
            .collect()
    }

    /// Delivers the due timers that were not cancelled, once each (a timer delivered
    /// twice in one batch — a re-send, a standard-queue duplicate — is sent once and
    /// both records are acknowledged); the records that failed.
    async fn deliver(&self, due: Vec<Record<Timer>>) -> Vec<String> {
        let mut copies: HashMap<String, Vec<String>> = HashMap::new();
        let mut unique: Vec<TimerMessage> = Vec::new();
        for r in due {
            let t = r.item.message;
            let seen = copies.entry(timer_id(&t)).or_default();
            if seen.is_empty() {
                unique.push(t);
            }
            seen.push(r.id);
        }
        let records_of = |t: &TimerMessage| copies.get(&timer_id(t)).cloned().unwrap_or_default();
        let keys: BTreeSet<String> = unique.iter().filter_map(key).collect();
        let cancelled = match self.cancellations(keys).await {
            Ok(cancelled) => cancelled,
            Err(e) => {
                tracing::warn!(reason = %e, "reading cancellations failed; timers retried");
                return unique.iter().flat_map(records_of).collect();
            }
        };
        let (unsure, unique): (Vec<_>, Vec<_>) = unique
            .into_iter()
            .partition(|t| key(t).is_some_and(|k| cancelled.unread.contains(&k)));
        let mut failed: Vec<String> = unsure.iter().flat_map(records_of).collect();
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
        let results = self.transport.send_to_inbox(&envelopes).await;
        for (t, error) in deliver.iter().zip(results) {
            if error.is_some() {
                failed.extend(records_of(t));
            }
        }
        failed
    }
}

/// A delayed message read from the delay queue, and whether it was due when read.
pub(crate) struct Timer {
    message: TimerMessage,
    due: bool,
}

/// One delivery of a timer: its target and id.
fn timer_id(t: &TimerMessage) -> String {
    format!("{}|{}", t.envelope.target, t.envelope.id)
}

impl Role for TimerForwarder {
    type Item = Timer;
    const NAME: &'static str = "timer-forwarder";

    fn shared(&self) -> Shared<'_> {
        Shared::new(&self.dead_letters, &self.metrics, self.clock.as_ref())
    }

    fn read(&self, _record: &SqsMessage, body: &str) -> Read<Timer> {
        match envelope::decode_timer(body) {
            Ok(message) => Read::Item(Timer {
                due: message.due_at_ms <= self.clock.now_ms(),
                message,
            }),
            // A newer build's body (a rolling deploy): for a build that reads it.
            Err(e) if e.is_newer() => Read::Newer(e.to_string()),
            Err(e) => Read::Poison {
                reason: e.to_string(),
                group: "timers".into(),
            },
        }
    }

    /// A delayed message waits by design: its lag is how late past its due time it
    /// is delivered (a timer not due yet, or poison, has none).
    fn waiting_since(&self, _record: &SqsMessage, item: Option<&Timer>) -> Option<u64> {
        item.filter(|t| t.due).map(|t| t.message.due_at_ms)
    }

    async fn run(&self, records: Vec<Record<Timer>>, _deadline: Option<Instant>) -> Vec<String> {
        let (due, hop): (Vec<_>, Vec<_>) = records.into_iter().partition(|r| r.item.due);
        let mut failed = self.hop(hop).await;
        failed.extend(self.deliver(due).await);
        failed
    }
}

impl SqsHandler for TimerForwarder {
    async fn handle_until(&self, event: SqsEvent, deadline: Option<Instant>) -> SqsBatchResponse {
        sqs_batch::handle(self, event, deadline).await
    }
}
