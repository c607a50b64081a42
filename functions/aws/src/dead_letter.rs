//! The dead-letter queue: poison leaves the inbox for it, body unchanged, with the
//! reason and the handler as message attributes.

use std::sync::Arc;

use aws_sdk_sqs::types::MessageAttributeValue;
use statefun_core::failure::{REASON_MAX, excerpt};
use statefun_core::ports::TransportError;
use tracing::{error, warn};

use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct DeadLetters {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    metrics: Arc<Metrics>,
}

fn attribute(value: &str) -> MessageAttributeValue {
    // Attribute values must not be empty; the builder only fails without a data type.
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(if value.is_empty() { "-" } else { value })
        .build()
        .expect("data type is set")
}

impl DeadLetters {
    pub fn new(sqs: aws_sdk_sqs::Client, queue_url: String, metrics: Arc<Metrics>) -> Self {
        DeadLetters {
            sqs,
            queue_url,
            metrics,
        }
    }

    /// Moves one record to the DLQ. `group` keeps the DLQ's order per source group;
    /// `record_id` (the SQS message id) makes a repeated move land once;
    /// `first_failure_ms`, when known, is when the record first failed.
    pub async fn send(
        &self,
        handler: &str,
        body: &str,
        group: &str,
        record_id: &str,
        reason: &str,
        first_failure_ms: Option<u64>,
    ) -> Result<(), TransportError> {
        let reason = excerpt(reason, REASON_MAX);
        error!(handler, record_id, group, %reason, "dead-lettering");
        let fifo = self.queue_url.ends_with(".fifo");
        self.metrics.request("SendMessage");
        self.metrics.sqs_billed(fifo, body.len());
        let mut request = self
            .sqs
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(if body.is_empty() { "-" } else { body })
            .set_message_group_id(fifo.then(|| crate::keys::dedup_id(group)))
            .set_message_deduplication_id(fifo.then(|| crate::keys::dedup_id(record_id)))
            .message_attributes("Reason", attribute(&reason))
            .message_attributes("Handler", attribute(handler))
            .message_attributes("SourceGroup", attribute(group));
        if let Some(at) = first_failure_ms {
            request = request.message_attributes("FirstFailure", attribute(&at.to_string()));
        }
        request.send().await.map_err(|e| {
            let e = TransportError(format!(
                "DLQ SendMessage: {}",
                aws_sdk_sqs::error::DisplayErrorContext(e)
            ));
            warn!(handler, record_id, reason = %e, "dead-lettering failed; the record is retried");
            e
        })?;
        self.metrics.dead_lettered();
        Ok(())
    }
}
