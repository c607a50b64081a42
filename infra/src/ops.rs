//! Operations on a deployment's queues: the dead letters (list, replay into the inbox)
//! and egress queues (tail). Against AWS or an emulator alike.
//!
//! SQS cannot peek: a dead letter is received to be shown, hidden from other consumers
//! meanwhile, and made visible again ([`release`]) once the listing is done. On a FIFO
//! DLQ, a source group shows its first 10 letters per listing (a group's later messages
//! stay behind its received ones). A tailed egress message stays hidden for a while
//! (30 s by default, as the AWS console's "poll for messages" does) unless deleted.

use std::time::Duration;

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageSystemAttributeName,
};
use serde_json::{Value as Json, json};
use statefun_core::{Address, Envelope, MessageId};

use statefun_aws::config::AwsConfig;
use statefun_aws::keys::{group_id, message_dedup_id};
use statefun_aws::transport::Clients;

use crate::local::LocalError;

/// How long a received dead letter stays hidden at most while it is shown or replayed.
pub const SHOWN_FOR: Duration = Duration::from_secs(30);

fn failed(call: &'static str) -> impl FnOnce(String) -> LocalError {
    move |reason| LocalError::Aws { call, reason }
}

fn sdk<E: std::error::Error>(e: E) -> String {
    aws_sdk_sqs::error::DisplayErrorContext(e).to_string()
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
    /// The message, if the body is an envelope (poison may not be).
    pub envelope: Option<Envelope>,
    pub reason: String,
    pub handler: String,
    pub source_group: String,
    /// When it reached the DLQ (ms since the epoch).
    pub dead_lettered_at_ms: u64,
}

impl Letter {
    fn from_message(m: &Message) -> Letter {
        let attribute = |name: &str| {
            m.message_attributes()
                .and_then(|a| a.get(name))
                .and_then(|v| v.string_value())
                .map(str::to_string)
        };
        Letter {
            dlq_id: m.message_id().unwrap_or_default().to_string(),
            receipt: m.receipt_handle().unwrap_or_default().to_string(),
            envelope: statefun_aws::envelope::decode(m.body().unwrap_or_default()).ok(),
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
        }
    }

    /// One line of `dlq list`.
    pub fn view(&self) -> Json {
        json!({
            "address": self.envelope.as_ref().map(|e| e.target.to_string()),
            "message_id": self.envelope.as_ref().map(|e| e.id.to_string()),
            "reason": self.reason,
            "handler": self.handler,
            "source_group": self.source_group,
            "dead_lettered_at_ms": self.dead_lettered_at_ms,
            "dlq_id": self.dlq_id,
        })
    }
}

/// Receives every letter the DLQ shows now, each hidden for [`SHOWN_FOR`] or until
/// [`release`]d; `progress` hears the running count.
pub async fn receive(
    clients: &Clients,
    dlq_url: &str,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Letter>, LocalError> {
    let mut letters: Vec<Letter> = Vec::new();
    loop {
        let got = clients
            .sqs
            .receive_message()
            .queue_url(dlq_url)
            .max_number_of_messages(10)
            .visibility_timeout(SHOWN_FOR.as_secs() as i32)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .map_err(|e| failed("ReceiveMessage")(sdk(e)))?;
        let messages = got.messages();
        if messages.is_empty() {
            return Ok(letters);
        }
        for m in messages {
            // A standard DLQ may deliver a message twice.
            if !letters
                .iter()
                .any(|l| Some(l.dlq_id.as_str()) == m.message_id())
            {
                letters.push(Letter::from_message(m));
            }
        }
        progress(letters.len());
    }
}

/// Makes received letters visible again at once.
pub async fn release(
    clients: &Clients,
    dlq_url: &str,
    letters: &[Letter],
) -> Result<(), LocalError> {
    for chunk in letters.chunks(10) {
        let mut batch = clients
            .sqs
            .change_message_visibility_batch()
            .queue_url(dlq_url);
        for (i, letter) in chunk.iter().enumerate() {
            batch = batch.entries(
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(&letter.receipt)
                    .visibility_timeout(0)
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

/// Puts the selected letters back into the inbox, each under a fresh id
/// `replay:<dlq id>` (docs/DESIGN.md, "Replaying dead letters"), and deletes them from
/// the DLQ. Letters whose body is not an envelope cannot be replayed: they are skipped.
pub async fn replay(
    clients: &Clients,
    config: &AwsConfig,
    letters: &[Letter],
    mut progress: impl FnMut(usize),
) -> Result<Vec<Envelope>, LocalError> {
    let mut replayed = Vec::new();
    for letter in letters {
        let Some(original) = &letter.envelope else {
            continue;
        };
        let envelope = Envelope {
            id: MessageId::Keyed(format!("replay:{}", letter.dlq_id)),
            ..original.clone()
        };
        clients
            .sqs
            .send_message()
            .queue_url(&config.inbox_url)
            .message_body(statefun_aws::envelope::encode(&envelope))
            .message_group_id(group_id(&envelope.target))
            .message_deduplication_id(message_dedup_id(&envelope.id))
            .send()
            .await
            .map_err(|e| failed("SendMessage")(sdk(e)))?;
        clients
            .sqs
            .delete_message()
            .queue_url(&config.dlq_url)
            .receipt_handle(&letter.receipt)
            .send()
            .await
            .map_err(|e| failed("DeleteMessage")(sdk(e)))?;
        replayed.push(envelope);
        progress(replayed.len());
    }
    Ok(replayed)
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
