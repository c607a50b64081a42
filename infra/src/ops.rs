//! Operations on a deployment's queues: the dead letters (list, replay into the inbox)
//! and egress queues (tail). Against AWS or an emulator alike.
//!
//! SQS cannot peek: a dead letter is received to be shown, hidden from other consumers
//! meanwhile, and made visible again ([`release`]) once the listing is done. On a FIFO
//! DLQ, a source group shows its first 10 letters per listing (a group's later messages
//! stay behind its received ones; [`depth`] says how many were not reached). A replay
//! works a receive at a time, so deleting a group's replayed letters lets its next ones
//! through; what it leaves is released when it ends. A tailed egress message
//! stays hidden for a while (30 s by default, as the AWS console's "poll for messages"
//! does) unless deleted.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageSystemAttributeName, QueueAttributeName,
};
use serde_json::{Value as Json, json};
use statefun_core::ports::SystemClock;
use statefun_core::{Address, Envelope, MessageId};

use statefun_aws::config::AwsConfig;
use statefun_aws::metrics::Metrics;
use statefun_aws::transport::{Clients, SqsTransport};

use crate::local::LocalError;

/// How long a received dead letter stays hidden at most while it is shown or replayed.
pub const SHOWN_FOR: Duration = Duration::from_secs(30);

fn failed(call: &'static str) -> impl FnOnce(String) -> LocalError {
    move |reason| LocalError::Aws { call, reason }
}

fn sdk<E: std::error::Error>(e: E) -> String {
    aws_sdk_sqs::error::DisplayErrorContext(e).to_string()
}

/// Which DLQ: the inbox's (what the handlers dead-lettered, with their reason, and what
/// SQS redrove from the inbox), or the delay queue's (delayed messages SQS redrove after
/// too many failed forwards).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dlq {
    Inbox,
    Delay,
}

impl Dlq {
    /// The message a letter's body holds, if it is one.
    fn envelope(self, body: &str) -> Option<Envelope> {
        match self {
            Dlq::Inbox => statefun_aws::envelope::decode(body).ok(),
            Dlq::Delay => statefun_aws::envelope::decode_timer(body)
                .ok()
                .map(|t| t.envelope),
        }
    }
}

/// Which dead letters an operation applies to: all, or those of one address and/or
/// whose reason contains a text.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub address: Option<Address>,
    pub reason: Option<String>,
}

impl Selection {
    pub fn picks(&self, target: Option<&Address>, reason: &str) -> bool {
        self.address.as_ref().is_none_or(|a| Some(a) == target)
            && self
                .reason
                .as_ref()
                .is_none_or(|r| reason.contains(r.as_str()))
    }
}

/// A dead letter on the DLQ.
#[derive(Debug, Clone)]
pub struct Letter {
    /// The DLQ message's id: unique per dead-lettering.
    pub dlq_id: String,
    receipt: String,
    body: String,
    /// The message, if the body is an envelope (poison may not be).
    pub envelope: Option<Envelope>,
    pub reason: String,
    pub handler: String,
    pub source_group: String,
    /// When it reached the DLQ (ms since the epoch).
    pub dead_lettered_at_ms: u64,
    /// When its message first failed (ms since the epoch): the failing record's first
    /// receive. Unknown for what SQS redrove.
    pub first_failure_ms: Option<u64>,
}

impl Letter {
    fn from_message(m: &Message, dlq: Dlq) -> Letter {
        let attribute = |name: &str| {
            m.message_attributes()
                .and_then(|a| a.get(name))
                .and_then(|v| v.string_value())
                .map(str::to_string)
        };
        Letter {
            dlq_id: m.message_id().unwrap_or_default().to_string(),
            receipt: m.receipt_handle().unwrap_or_default().to_string(),
            body: m.body().unwrap_or_default().to_string(),
            envelope: dlq.envelope(m.body().unwrap_or_default()),
            // Redriven by SQS after too many receives: no attributes of ours.
            reason: attribute("Reason")
                .unwrap_or_else(|| "redriven by SQS after too many receives".into()),
            handler: attribute("Handler").unwrap_or_else(|| "-".into()),
            source_group: attribute("SourceGroup").unwrap_or_else(|| "-".into()),
            dead_lettered_at_ms: m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                .and_then(|t| t.parse().ok())
                .unwrap_or(0),
            first_failure_ms: attribute("FirstFailure").and_then(|t| t.parse().ok()),
        }
    }

    /// The body as it is queued.
    pub fn body(&self) -> &str {
        &self.body
    }

    /// One line of `dlq list`.
    pub fn view(&self) -> Json {
        json!({
            "address": self.envelope.as_ref().map(|e| e.target.to_string()),
            "message_id": self.envelope.as_ref().map(|e| e.id.to_string()),
            "reason": self.reason,
            "handler": self.handler,
            "source_group": self.source_group,
            "first_failure_ms": self.first_failure_ms,
            "dead_lettered_at_ms": self.dead_lettered_at_ms,
            "dlq_id": self.dlq_id,
        })
    }
}

/// One receive: up to 10 letters, each hidden for `hide` or until [`release`]d.
async fn receive_once(
    clients: &Clients,
    url: &str,
    dlq: Dlq,
    hide: Duration,
) -> Result<Vec<Letter>, LocalError> {
    let got = clients
        .sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .visibility_timeout(hide.as_secs().max(1) as i32)
        .wait_time_seconds(1)
        .message_attribute_names("All")
        .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
        .send()
        .await
        .map_err(|e| failed("ReceiveMessage")(sdk(e)))?;
    Ok(got
        .messages()
        .iter()
        .map(|m| Letter::from_message(m, dlq))
        .collect())
}

/// Receives every letter the DLQ shows now, each hidden for [`SHOWN_FOR`] or until
/// [`release`]d; `progress` hears the running count. Stops at a receive that brings
/// nothing new (on a long listing, the first letters come back after [`SHOWN_FOR`]).
pub async fn receive(
    clients: &Clients,
    url: &str,
    dlq: Dlq,
    progress: impl FnMut(usize),
) -> Result<Vec<Letter>, LocalError> {
    receive_hidden_for(clients, url, dlq, SHOWN_FOR, progress).await
}

/// [`receive`], each message hidden for `hide` (a live queue's messages for a moment).
pub async fn receive_hidden_for(
    clients: &Clients,
    url: &str,
    dlq: Dlq,
    hide: Duration,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Letter>, LocalError> {
    let mut letters: Vec<Letter> = Vec::new();
    loop {
        let mut new = false;
        for letter in receive_once(clients, url, dlq, hide).await? {
            // Seen before (a standard queue's second copy, or shown again): the newest
            // receipt is the one that releases it.
            match letters.iter_mut().find(|l| l.dlq_id == letter.dlq_id) {
                Some(seen) => seen.receipt = letter.receipt,
                None => {
                    new = true;
                    letters.push(letter);
                }
            }
        }
        if !new {
            return Ok(letters);
        }
        progress(letters.len());
    }
}

/// How many letters the DLQ holds (visible and hidden; SQS's approximate counts).
pub async fn depth(clients: &Clients, url: &str) -> Result<u64, LocalError> {
    let got = clients
        .sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .map_err(|e| failed("GetQueueAttributes")(sdk(e)))?;
    Ok(got
        .attributes()
        .into_iter()
        .flatten()
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum())
}

/// Makes received letters visible again at once.
pub async fn release(clients: &Clients, url: &str, letters: &[Letter]) -> Result<(), LocalError> {
    hide(clients, url, letters, Duration::ZERO).await
}

/// Sets how long received letters stay hidden from now on.
async fn hide(
    clients: &Clients,
    url: &str,
    letters: &[Letter],
    for_: Duration,
) -> Result<(), LocalError> {
    for chunk in letters.chunks(10) {
        let mut batch = clients.sqs.change_message_visibility_batch().queue_url(url);
        for (i, letter) in chunk.iter().enumerate() {
            batch = batch.entries(
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(&letter.receipt)
                    .visibility_timeout(for_.as_secs() as i32)
                    .build()
                    .map_err(|e| failed("ChangeMessageVisibilityBatch")(e.to_string()))?,
            );
        }
        batch
            .send()
            .await
            .map_err(|e| failed("ChangeMessageVisibilityBatch")(sdk(e)))?;
    }
    Ok(())
}

/// How long a letter a replay leaves on the DLQ stays hidden while the replay goes on
/// (so that it is not received again and taken for news); it is released at the end.
const LEFT_FOR: Duration = Duration::from_secs(15 * 60);

/// Puts the selected letters back and deletes them from the DLQ, a receive (10 letters)
/// at a time: three requests per 10 letters, and on a FIFO DLQ each group's later
/// letters come through once its earlier ones are deleted. Letters of the inbox's DLQ go
/// to the inbox under a fresh id `replay:<dlq id>` (docs/DESIGN.md, "Replaying dead
/// letters"); the delay queue's go back to the delay queue unchanged, to be forwarded
/// when due unless cancelled. `replayed` hears each batch as it is sent.
///
/// Letters not selected stay on the DLQ (made visible again at the end, also after an
/// error), and so does a letter of a message this run sent back (it failed again while
/// the run went on: replaying it again would chase it for ever). On a FIFO DLQ a letter
/// left holds back its group's later ones: [`depth`] after the run counts them. Returns
/// the letters left.
pub async fn replay(
    clients: &Clients,
    config: &AwsConfig,
    dlq: (Dlq, &str),
    selection: &Selection,
    replayed: impl FnMut(&[Envelope]),
) -> Result<Vec<Letter>, LocalError> {
    let mut left = Vec::new();
    let run = replay_passes(clients, config, dlq, selection, replayed, &mut left).await;
    let released = release(clients, dlq.1, &left).await;
    run.and(released).map(|()| left)
}

async fn replay_passes(
    clients: &Clients,
    config: &AwsConfig,
    (kind, url): (Dlq, &str),
    selection: &Selection,
    mut replayed: impl FnMut(&[Envelope]),
    left: &mut Vec<Letter>,
) -> Result<(), LocalError> {
    let transport = SqsTransport::new(
        clients.clone(),
        config.inbox_url.clone(),
        config.delay_url.clone(),
        config.egress.clone(),
        config.max_delay_hop,
        Arc::new(SystemClock),
        Arc::new(Metrics::default()),
    );
    // The DLQ ids replayed, and the messages sent back (id and target).
    let mut done: HashSet<String> = HashSet::new();
    let mut sent: HashSet<(MessageId, Address)> = HashSet::new();
    loop {
        let got = receive_once(clients, url, kind, SHOWN_FOR).await?;
        if got.is_empty() {
            return Ok(());
        }
        let (mut picked, mut copies, mut leave) = (Vec::new(), Vec::new(), Vec::new());
        for letter in got {
            if done.contains(&letter.dlq_id) {
                // A standard queue's second copy of a letter already replayed.
                copies.push(letter);
            } else if let Some(seen) = left.iter_mut().find(|l| l.dlq_id == letter.dlq_id) {
                seen.receipt = letter.receipt;
            } else if picked.iter().any(|l: &Letter| l.dlq_id == letter.dlq_id) {
                copies.push(letter);
            } else {
                let again = letter
                    .envelope
                    .as_ref()
                    .is_some_and(|e| sent.contains(&(e.id.clone(), e.target.clone())));
                let target = letter.envelope.as_ref().map(|e| &e.target);
                if target.is_some() && !again && selection.picks(target, &letter.reason) {
                    picked.push(letter);
                } else {
                    leave.push(letter);
                }
            }
        }
        if picked.is_empty() && copies.is_empty() && leave.is_empty() {
            // Only letters left before, shown again: everything was seen.
            return Ok(());
        }
        hide(clients, url, &leave, LEFT_FOR).await?;
        left.append(&mut leave);
        delete(clients, url, &copies).await?;
        let (ok, refused) = send_back(&transport, kind, &picked).await;
        // Only what was sent leaves the DLQ; the rest shows again after SHOWN_FOR.
        let gone: Vec<Letter> = picked
            .into_iter()
            .filter(|l| ok.iter().any(|(id, _)| *id == l.dlq_id))
            .collect();
        delete(clients, url, &gone).await?;
        done.extend(gone.into_iter().map(|l| l.dlq_id));
        sent.extend(ok.iter().map(|(_, e)| (e.id.clone(), e.target.clone())));
        replayed(&ok.into_iter().map(|(_, e)| e).collect::<Vec<_>>());
        if let Some(reason) = refused {
            return Err(failed("SendMessageBatch")(reason));
        }
    }
}

/// Sends the letters' messages back through the runtime's own transport (batched within
/// SQS's limits, refused entries retried; a timer's delay from its due time): the DLQ ids
/// and messages that went, and why any did not.
async fn send_back(
    transport: &SqsTransport,
    dlq: Dlq,
    letters: &[Letter],
) -> (Vec<(String, Envelope)>, Option<String>) {
    if letters.is_empty() {
        return (Vec::new(), None);
    }
    let mut messages = Vec::new();
    let errors = match dlq {
        Dlq::Inbox => {
            for letter in letters {
                if let Some(original) = &letter.envelope {
                    let envelope = Envelope {
                        id: MessageId::Keyed(format!("replay:{}", letter.dlq_id)),
                        ..original.clone()
                    };
                    messages.push((letter.dlq_id.clone(), envelope));
                }
            }
            let envelopes: Vec<Envelope> = messages.iter().map(|(_, e)| e.clone()).collect();
            transport.send_to_inbox(&envelopes).await
        }
        Dlq::Delay => {
            let mut timers = Vec::new();
            for letter in letters {
                if let Ok(timer) = statefun_aws::envelope::decode_timer(&letter.body) {
                    messages.push((letter.dlq_id.clone(), timer.envelope.clone()));
                    timers.push(timer);
                }
            }
            transport.send_to_delay(&timers).await
        }
    };
    let refused = errors.iter().flatten().next().cloned();
    let ok = messages
        .into_iter()
        .zip(errors)
        .filter_map(|(message, error)| error.is_none().then_some(message))
        .collect();
    (ok, refused)
}

/// Deletes letters from the DLQ in one batch (none: no request).
async fn delete(clients: &Clients, url: &str, letters: &[Letter]) -> Result<(), LocalError> {
    if letters.is_empty() {
        return Ok(());
    }
    let mut batch = clients.sqs.delete_message_batch().queue_url(url);
    for (i, letter) in letters.iter().enumerate() {
        batch = batch.entries(
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(&letter.receipt)
                .build()
                .map_err(|e| failed("DeleteMessageBatch")(e.to_string()))?,
        );
    }
    let out = batch
        .send()
        .await
        .map_err(|e| failed("DeleteMessageBatch")(sdk(e)))?;
    match out.failed().first() {
        // Sent and not deleted: a rerun sends it again, and it lands once.
        Some(refused) => Err(failed("DeleteMessageBatch")(format!(
            "entry {} refused: {}",
            refused.id(),
            refused.code()
        ))),
        None => Ok(()),
    }
}

/// One poll of an egress queue: the messages received (hidden for `hide`, or deleted
/// with `delete`), as `(message id, body)`.
pub async fn poll_egress(
    clients: &Clients,
    queue_url: &str,
    wait: Duration,
    hide: Duration,
    delete: bool,
) -> Result<Vec<(String, String)>, LocalError> {
    let got = clients
        .sqs
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(10)
        .visibility_timeout(hide.as_secs() as i32)
        .wait_time_seconds(wait.as_secs() as i32)
        .send()
        .await
        .map_err(|e| failed("ReceiveMessage")(sdk(e)))?;
    let messages = got.messages();
    if delete && !messages.is_empty() {
        let mut batch = clients.sqs.delete_message_batch().queue_url(queue_url);
        for (i, m) in messages.iter().enumerate() {
            batch = batch.entries(
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .build()
                    .map_err(|e| failed("DeleteMessageBatch")(e.to_string()))?,
            );
        }
        batch
            .send()
            .await
            .map_err(|e| failed("DeleteMessageBatch")(sdk(e)))?;
    }
    Ok(messages
        .iter()
        .map(|m| {
            (
                m.message_id().unwrap_or_default().to_string(),
                m.body().unwrap_or_default().to_string(),
            )
        })
        .collect())
}
