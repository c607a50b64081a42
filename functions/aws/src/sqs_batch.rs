//! The skeleton every SQS-fed role shares: read each record, hold a FIFO group behind a
//! record only a newer build can read, dead-letter poison with its reason, run what was
//! read, emit the batch's metrics line and answer the event source with the records
//! that failed. A role says only how it reads a record and how it runs what it read
//! ([`Role`]): the dispatcher, the timer forwarder and the SQS ingress.

use std::collections::HashSet;
use std::time::Instant;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use statefun_core::ports::Clock;
use tracing::warn;

use crate::dead_letter::DeadLetters;
use crate::metrics::Metrics;

/// A Lambda role fed by an SQS event source, as its Lambda runtime drives it: one
/// batch in, `batchItemFailures` out, answered by `deadline` where the role honours one
/// (the dispatcher's remote calls and conflict re-runs).
pub trait SqsHandler: Send + Sync + 'static {
    fn handle_until(
        &self,
        event: SqsEvent,
        deadline: Option<Instant>,
    ) -> impl std::future::Future<Output = SqsBatchResponse> + Send;
}

/// What a role made of a record.
pub(crate) enum Read<T> {
    Item(T),
    /// A newer build's body (a rolling deploy): left for a build that reads it, never
    /// dead-lettered; the later records of its FIFO group wait behind it, in order.
    Newer(String),
    /// Poison: dead-lettered with its reason, under `group` in the DLQ.
    Poison {
        reason: String,
        group: String,
    },
}

/// A record its role read.
pub(crate) struct Record<T> {
    pub id: String,
    pub body: String,
    pub first_received_ms: Option<u64>,
    pub item: T,
}

/// One SQS-fed Lambda role.
pub(crate) trait Role {
    type Item;
    /// Its name in logs, dead letters and metrics.
    const NAME: &'static str;

    fn read(&self, record: &SqsMessage, body: &str) -> Read<Self::Item>;

    /// Since when a record (read into `item`, or poison) has waited, for the batch's
    /// `MaxLag`: its enqueue, unless the role knows better.
    fn waiting_since(&self, record: &SqsMessage, _item: Option<&Self::Item>) -> Option<u64> {
        crate::sent_timestamp(record)
    }

    /// What the skeleton uses of the role's handler.
    fn shared(&self) -> Shared<'_>;

    /// Runs what was read; the ids of the records that failed.
    async fn run(&self, records: Vec<Record<Self::Item>>, deadline: Option<Instant>)
    -> Vec<String>;
}

/// What the skeleton uses of a role's handler.
pub(crate) struct Shared<'a> {
    dead_letters: &'a DeadLetters,
    metrics: &'a Metrics,
    clock: &'a dyn Clock,
}

impl<'a> Shared<'a> {
    pub(crate) fn new(
        dead_letters: &'a DeadLetters,
        metrics: &'a Metrics,
        clock: &'a dyn Clock,
    ) -> Self {
        Shared {
            dead_letters,
            metrics,
            clock,
        }
    }
}

/// One batch of `role`, run until `deadline` where the role honours one.
pub(crate) async fn handle<R: Role>(
    role: &R,
    event: SqsEvent,
    deadline: Option<Instant>,
) -> SqsBatchResponse {
    let shared = role.shared();
    let count = event.records.len();
    let (mut failed, mut read, mut since) = (Vec::new(), Vec::new(), Vec::new());
    let mut held: HashSet<String> = HashSet::new();
    for record in event.records {
        let id = record.message_id.clone().unwrap_or_default();
        let group = record.attributes.get("MessageGroupId").cloned();
        if group.as_ref().is_some_and(|g| held.contains(g)) {
            failed.push(id);
            continue;
        }
        let body = record.body.clone().unwrap_or_default();
        let first_received_ms = crate::first_received(&record);
        let item = match role.read(&record, &body) {
            Read::Item(item) => item,
            Read::Newer(reason) => {
                warn!(role = R::NAME, record = %id, %reason, "left for a newer build");
                held.extend(group);
                failed.push(id);
                continue;
            }
            Read::Poison { reason, group } => {
                since.extend(role.waiting_since(&record, None).map(|t| (id.clone(), t)));
                let sent = shared.dead_letters.send(
                    R::NAME,
                    &body,
                    &group,
                    &id,
                    &reason,
                    first_received_ms,
                );
                if sent.await.is_err() {
                    failed.push(id);
                }
                continue;
            }
        };
        since.extend(
            role.waiting_since(&record, Some(&item))
                .map(|t| (id.clone(), t)),
        );
        read.push(Record {
            id,
            body,
            first_received_ms,
            item,
        });
    }
    // Boxed: a role's run nests the whole pipeline; its layout is kept out of the
    // Lambda runtime's (rustc's query depth).
    failed.extend(Box::pin(role.run(read, deadline)).await);
    failed.sort_unstable();
    failed.dedup();
    let end = shared.clock.now_ms();
    shared.metrics.lag_of(&since, &failed, end);
    println!("{}", shared.metrics.take().emf(R::NAME, count, end));
    crate::batch_response(&failed)
}
