//! The SQS/SNS transport: executes outboxes with as few requests as the limits allow.
//!
//! - messages → the FIFO inbox, `MessageGroupId` = the target address,
//!   `MessageDeduplicationId` = the message id, body = the versioned envelope;
//! - delayed messages → the standard delay queue with `DelaySeconds` = the remaining
//!   delay capped at the hop limit (the timer forwarder re-hops longer ones);
//! - cancellations → nothing: they were stored with their commit
//!   ([`crate::dynamo`]), in effect from then;
//! - egress → its SQS queue or SNS topic, the record as JSON with its stable id.
//!
//! Entries for one destination are sent together: `SendMessageBatch`/`PublishBatch`
//! of at most 10 entries and 256 KiB, at most one entry per FIFO group per request so
//! a failed entry never lets a later one of its group overtake it ([`Pending`]);
//! entries that fail are retried, and an outbox fails only if one of its entries
//! still fails.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::envelope::{self, TimerMessage};
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_sns::types::PublishBatchRequestEntry;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use statefun_core::ports::{Clock, Transport, TransportError};
use statefun_core::{EgressRecord, Envelope, OutboxEntry, RetryPolicy, TypeName, view};

use crate::keys::{dedup_id, group_id, message_dedup_id};
use crate::metrics::Metrics;
use statefun_core::module::Sink as EgressTarget;

/// SQS's limit for one message and for one batch request.
pub const MAX_SQS_BYTES: usize = 256 * 1024;
const MAX_ENTRIES: usize = 10;

/// AWS clients and where things go.
#[derive(Debug, Clone)]
pub struct Clients {
    pub sqs: aws_sdk_sqs::Client,
    pub sns: aws_sdk_sns::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
}

#[derive(Clone)]
pub struct SqsTransport {
    clients: Clients,
    inbox_url: String,
    delay_url: String,
    egress: BTreeMap<TypeName, EgressTarget>,
    max_hop: Duration,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for SqsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsTransport")
            .field("inbox_url", &self.inbox_url)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Destination {
    Queue(String),
    Topic(String),
}

/// One message to send, remembering which outbox it belongs to.
#[derive(Debug, Clone)]
struct Outgoing {
    outbox: usize,
    body: String,
    group: Option<String>,
    dedup: Option<String>,
    delay_seconds: Option<i32>,
}

fn is_fifo(destination: &str) -> bool {
    destination.ends_with(".fifo")
}

fn sdk_error(what: &str, e: impl std::error::Error) -> String {
    format!("{what}: {}", DisplayErrorContext(e))
}

impl SqsTransport {
    pub fn new(
        clients: Clients,
        inbox_url: String,
        delay_url: String,
        egress: BTreeMap<TypeName, EgressTarget>,
        max_hop: Duration,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Self {
        SqsTransport {
            clients,
            inbox_url,
            delay_url,
            egress,
            max_hop,
            clock,
            metrics,
        }
    }

    /// The delay of the next hop toward `due_at_ms`, in whole seconds, never early.
    pub fn hop_seconds(&self, due_at_ms: u64) -> i32 {
        let remaining_ms = due_at_ms.saturating_sub(self.clock.now_ms());
        let secs = remaining_ms.div_ceil(1000).min(self.max_hop.as_secs());
        secs as i32
    }

    /// A message for the inbox.
    fn inbox_message(outbox: usize, e: &Envelope) -> Outgoing {
        Outgoing {
            outbox,
            body: envelope::encode(e),
            group: Some(group_id(&e.target)),
            dedup: Some(message_dedup_id(&e.id)),
            delay_seconds: None,
        }
    }

    fn timer_message(&self, outbox: usize, timer: &TimerMessage) -> Outgoing {
        Outgoing {
            outbox,
            body: envelope::encode_timer(timer),
            group: None,
            dedup: None,
            delay_seconds: Some(self.hop_seconds(timer.due_at_ms)),
        }
    }

    fn egress_message(
        &self,
        outbox: usize,
        record: &EgressRecord,
    ) -> Result<(Destination, Outgoing), TransportError> {
        let target = self.egress.get(&record.egress).ok_or_else(|| {
            TransportError(format!(
                "no egress named {} is configured (STATEFUN_EGRESS)",
                record.egress
            ))
        })?;
        let destination = match target {
            EgressTarget::Sqs { queue_url } => Destination::Queue(queue_url.clone()),
            EgressTarget::Sns { topic_arn } => Destination::Topic(topic_arn.clone()),
        };
        let name = match &destination {
            Destination::Queue(d) | Destination::Topic(d) => d,
        };
        let fifo = is_fifo(name);
        Ok((
            destination,
            Outgoing {
                outbox,
                body: view::egress_json(record).to_string(),
                group: fifo.then(|| record.egress.to_string()),
                dedup: fifo.then(|| dedup_id(&record.id)),
                delay_seconds: None,
            },
        ))
    }

    /// Sends messages to the inbox (the timer forwarder and the ingress use this too);
    /// returns, per message, the error if it could not be sent.
    pub async fn send_to_inbox(&self, envelopes: &[Envelope]) -> Vec<Option<String>> {
        let messages = envelopes
            .iter()
            .enumerate()
            .map(|(i, e)| Self::inbox_message(i, e))
            .collect();
        let mut errors = vec![None; envelopes.len()];
        self.send_batches(
            &Destination::Queue(self.inbox_url.clone()),
            messages,
            &mut errors,
        )
        .await;
        errors
    }

    /// Sends a timer message to the delay queue (first hop or re-hop).
    pub async fn send_to_delay(&self, timers: &[TimerMessage]) -> Vec<Option<String>> {
        let messages = timers
            .iter()
            .enumerate()
            .map(|(i, t)| self.timer_message(i, t))
            .collect();
        let mut errors = vec![None; timers.len()];
        self.send_batches(
            &Destination::Queue(self.delay_url.clone()),
            messages,
            &mut errors,
        )
        .await;
        errors
    }

    /// Sends `messages` in as few requests as the limits and per-group order allow.
    async fn send_batches(
        &self,
        destination: &Destination,
        messages: Vec<Outgoing>,
        errors: &mut [Option<String>],
    ) {
        let mut pending = Pending::from(messages);
        while let Some(batch) = pending.next_request() {
            for (group, reason) in self.send_batch(destination, batch, errors).await {
                for m in pending.drop_group(&group) {
                    errors[m.outbox].get_or_insert_with(|| {
                        format!("not sent: an earlier message of group {group} failed ({reason})")
                    });
                }
            }
        }
    }

    /// One batch request, retrying the entries that failed; the entries that still fail
    /// mark their outbox failed. Returns the FIFO groups of those entries and why.
    async fn send_batch(
        &self,
        destination: &Destination,
        batch: Vec<Outgoing>,
        errors: &mut [Option<String>],
    ) -> Vec<(String, String)> {
        let mut remaining: Vec<(usize, Outgoing)> = batch.into_iter().enumerate().collect();
        let mut last_errors: HashMap<usize, String> = HashMap::new();
        let policy = RetryPolicy::io();
        for wait in std::iter::once(None).chain(policy.delays().map(Some)) {
            if remaining.is_empty() {
                break;
            }
            if let Some(wait) = wait {
                self.metrics.retry();
                tokio::time::sleep(wait).await;
            }
            let bytes: usize = remaining.iter().map(|(_, m)| m.body.len()).sum();
            self.metrics.bytes(bytes);
            let result = match destination {
                Destination::Queue(url) => self.sqs_batch(url, &remaining).await,
                Destination::Topic(arn) => self.sns_batch(arn, &remaining).await,
            };
            last_errors = match result {
                Ok(failed) => failed
                    .into_iter()
                    .filter_map(|(id, reason)| id.parse().ok().map(|i| (i, reason)))
                    .collect(),
                Err(e) => remaining.iter().map(|(i, _)| (*i, e.clone())).collect(),
            };
            remaining.retain(|(i, _)| last_errors.contains_key(i));
        }
        let mut failed_groups = Vec::new();
        for (i, m) in remaining {
            let reason = last_errors.remove(&i).unwrap_or_default();
            if let Some(group) = m.group {
                failed_groups.push((group, reason.clone()));
            }
            errors[m.outbox] = Some(reason);
        }
        failed_groups
    }

    async fn sqs_batch(
        &self,
        url: &str,
        entries: &[(usize, Outgoing)],
    ) -> Result<Vec<(String, String)>, String> {
        let mut request = self.clients.sqs.send_message_batch().queue_url(url);
        for (i, m) in entries {
            let entry = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(&m.body)
                .set_message_group_id(m.group.clone())
                .set_message_deduplication_id(m.dedup.clone())
                .set_delay_seconds(m.delay_seconds)
                .build()
                .map_err(|e| e.to_string())?;
            request = request.entries(entry);
        }
        self.metrics.request("SendMessageBatch");
        self.metrics.sqs_billed(
            url.ends_with(".fifo"),
            entries.iter().map(|(_, m)| m.body.len()).sum(),
        );
        let out = request
            .send()
            .await
            .map_err(|e| sdk_error("SendMessageBatch", e))?;
        Ok(out
            .failed()
            .iter()
            .map(|f| entry_failure(f.id(), f.code(), f.message()))
            .collect())
    }

    async fn sns_batch(
        &self,
        arn: &str,
        entries: &[(usize, Outgoing)],
    ) -> Result<Vec<(String, String)>, String> {
        let mut request = self.clients.sns.publish_batch().topic_arn(arn);
        for (i, m) in entries {
            let entry = PublishBatchRequestEntry::builder()
                .id(i.to_string())
                .message(&m.body)
                .set_message_group_id(m.group.clone())
                .set_message_deduplication_id(m.dedup.clone())
                .build()
                .map_err(|e| e.to_string())?;
            request = request.publish_batch_request_entries(entry);
        }
        self.metrics.request("PublishBatch");
        let out = request
            .send()
            .await
            .map_err(|e| sdk_error("PublishBatch", e))?;
        Ok(out
            .failed()
            .iter()
            .map(|f| entry_failure(f.id(), f.code(), f.message()))
            .collect())
    }
}

/// Messages waiting to be sent to one destination, planned into requests that keep
/// each FIFO group's order even when some entries of a request fail: a request holds
/// at most one entry per group, and a group's next entry goes out only once the one
/// before it was accepted. A request is a unit of neither success nor order (SQS
/// reports each entry apart), so two entries of one group in one request could land
/// reversed if the first failed and was retried.
#[derive(Debug, Default)]
struct Pending {
    messages: VecDeque<Outgoing>,
}

impl From<Vec<Outgoing>> for Pending {
    fn from(messages: Vec<Outgoing>) -> Self {
        Pending {
            messages: messages.into(),
        }
    }
}

impl Pending {
    /// The next request: up to 10 entries and 256 KiB, in order, at most one per group
    /// (a single entry over the byte limit goes alone and SQS judges it).
    fn next_request(&mut self) -> Option<Vec<Outgoing>> {
        if self.messages.is_empty() {
            return None;
        }
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut groups_seen = HashSet::new();
        let mut rest = VecDeque::with_capacity(self.messages.len());
        for m in self.messages.drain(..) {
            let group_first = m
                .group
                .as_ref()
                .is_none_or(|g| groups_seen.insert(g.clone()));
            let fits = batch.is_empty()
                || (batch.len() < MAX_ENTRIES && bytes + m.body.len() <= MAX_SQS_BYTES);
            if group_first && fits {
                bytes += m.body.len();
                batch.push(m);
            } else {
                rest.push_back(m);
            }
        }
        self.messages = rest;
        Some(batch)
    }

    /// Takes out every message of `group` that was not sent yet.
    fn drop_group(&mut self, group: &str) -> Vec<Outgoing> {
        let (dropped, kept): (VecDeque<_>, VecDeque<_>) = self
            .messages
            .drain(..)
            .partition(|m| m.group.as_deref() == Some(group));
        self.messages = kept;
        dropped.into()
    }
}

impl Transport for SqsTransport {
    fn check(&self, entry: &OutboxEntry) -> Result<(), TransportError> {
        let size = match entry {
            OutboxEntry::Send(e) => envelope::encode(e).len(),
            OutboxEntry::SendAfter {
                envelope,
                due_at_ms,
                cancellation_token,
                issued,
            } => envelope::encode_timer(&TimerMessage {
                due_at_ms: *due_at_ms,
                token: cancellation_token.clone(),
                issued: *issued,
                envelope: envelope.clone(),
            })
            .len(),
            OutboxEntry::Egress(record) => self.egress_message(0, record)?.1.body.len(),
            OutboxEntry::Cancel { .. } => 0,
        };
        if size > MAX_SQS_BYTES {
            return Err(TransportError(format!(
                "{entry_kind} is {size} bytes as an SQS message, over SQS's {MAX_SQS_BYTES}",
                entry_kind = match entry {
                    OutboxEntry::Egress(r) => format!("egress record {}", r.id),
                    OutboxEntry::Send(e) | OutboxEntry::SendAfter { envelope: e, .. } => {
                        format!("message {} to {}", e.id, e.target)
                    }
                    OutboxEntry::Cancel { .. } => "cancellation".into(),
                }
            )));
        }
        Ok(())
    }

    async fn send(&self, outboxes: &[&[OutboxEntry]]) -> Vec<Result<(), TransportError>> {
        let mut errors: Vec<Option<String>> = vec![None; outboxes.len()];
        let mut by_destination: BTreeMap<Destination, Vec<Outgoing>> = BTreeMap::new();
        for (o, outbox) in outboxes.iter().enumerate() {
            for entry in outbox.iter() {
                match entry {
                    OutboxEntry::Send(e) => by_destination
                        .entry(Destination::Queue(self.inbox_url.clone()))
                        .or_default()
                        .push(Self::inbox_message(o, e)),
                    OutboxEntry::SendAfter {
                        envelope,
                        due_at_ms,
                        cancellation_token,
                        issued,
                    } => {
                        let timer = TimerMessage {
                            due_at_ms: *due_at_ms,
                            token: cancellation_token.clone(),
                            issued: *issued,
                            envelope: envelope.clone(),
                        };
                        by_destination
                            .entry(Destination::Queue(self.delay_url.clone()))
                            .or_default()
                            .push(self.timer_message(o, &timer));
                    }
                    OutboxEntry::Cancel { .. } => {}
                    OutboxEntry::Egress(record) => match self.egress_message(o, record) {
                        Ok((d, m)) => by_destination.entry(d).or_default().push(m),
                        Err(e) => errors[o] = Some(e.0),
                    },
                }
            }
        }
        for (destination, messages) in by_destination {
            self.send_batches(&destination, messages, &mut errors).await;
        }
        errors
            .into_iter()
            .map(|e| e.map_or(Ok(()), |e| Err(TransportError(e))))
            .collect()
    }
}

/// A batch entry the service refused: its id and why (SQS and SNS answer alike).
fn entry_failure(id: &str, code: &str, message: Option<&str>) -> (String, String) {
    (
        id.to_string(),
        format!("entry {id}: {code} {}", message.unwrap_or("")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(outbox: usize, group: Option<&str>, body: &str) -> Outgoing {
        Outgoing {
            outbox,
            body: body.to_string(),
            group: group.map(str::to_string),
            dedup: None,
            delay_seconds: None,
        }
    }

    fn plan(pending: &mut Pending) -> Vec<Vec<(usize, Option<String>)>> {
        std::iter::from_fn(|| pending.next_request())
            .map(|batch| batch.into_iter().map(|m| (m.outbox, m.group)).collect())
            .collect()
    }

    #[test]
    fn a_request_holds_one_entry_per_group_in_send_order() {
        let mut pending = Pending::from(vec![
            message(0, Some("a"), "a1"),
            message(1, Some("a"), "a2"),
            message(2, Some("b"), "b1"),
            message(3, Some("a"), "a3"),
            message(4, Some("b"), "b2"),
        ]);
        let requests = plan(&mut pending);
        let g = |s: &str| Some(s.to_string());
        assert_eq!(
            requests,
            vec![
                vec![(0, g("a")), (2, g("b"))],
                vec![(1, g("a")), (4, g("b"))],
                vec![(3, g("a"))],
            ]
        );
    }

    #[test]
    fn ungrouped_entries_pack_up_to_the_entry_and_byte_limits() {
        let big = "x".repeat(MAX_SQS_BYTES / 2 + 1);
        let mut messages: Vec<Outgoing> = (0..12).map(|i| message(i, None, "t")).collect();
        messages.extend((12..15).map(|i| message(i, None, &big)));
        let sizes: Vec<usize> = plan(&mut Pending::from(messages))
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, vec![10, 3, 1, 1]);
    }

    #[test]
    fn a_failed_group_keeps_its_later_entries_back_and_others_go_on() {
        let mut pending = Pending::from(vec![
            message(0, Some("a"), "a1"),
            message(1, Some("b"), "b1"),
            message(2, Some("a"), "a2"),
            message(3, Some("b"), "b2"),
        ]);
        let first = pending.next_request().expect("a request");
        assert_eq!(first.len(), 2);
        let dropped: Vec<usize> = pending.drop_group("a").iter().map(|m| m.outbox).collect();
        assert_eq!(dropped, vec![2], "a2 must not overtake a failed a1");
        assert_eq!(plan(&mut pending), vec![vec![(3, Some("b".to_string()))]]);
    }
}
