//! `statefun-lambda verify --prefix`: reads every record of a deployment's state table
//! and every body in its dead-letter queues (and, when asked, its live inbox and delay
//! queue) with this build's readers, and says which ones it cannot decode and why —
//! the check to run before a `sam deploy` of a new build, and after.
//!
//! Live queues are read only on request: SQS cannot peek, so each message read is
//! hidden for a moment ([`LIVE_HIDE`]) from the Lambdas that would run it.

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use statefun_aws::transport::Clients;
pub use statefun_core::format::{Found, Undecodable};

use crate::local::{LocalError, Names};
use crate::ops::{self, Dlq};

/// How long a live queue's message is hidden while `verify` reads it.
pub const LIVE_HIDE: Duration = Duration::from_secs(2);

/// Every item of the state table (strongly consistent scan pages); `progress` hears
/// each page's item count.
pub async fn table(
    clients: &Clients,
    table: &str,
    mut progress: impl FnMut(u64),
) -> Result<Found, LocalError> {
    let mut found = Found::new(format!("table {table}"));
    let mut start = None;
    loop {
        let page = clients
            .dynamodb
            .scan()
            .table_name(table)
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| LocalError::Aws {
                call: "Scan",
                reason: aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string(),
            })?;
        for item in page.items() {
            let key = match item.get("pk") {
                Some(AttributeValue::S(pk)) => pk.clone(),
                _ => "(no pk)".into(),
            };
            found.add(
                || key,
                statefun_aws::dynamo::check_item(item).map_err(|e| e.to_string()),
            );
        }
        progress(page.items().len() as u64);
        match page.last_evaluated_key() {
            Some(last) if !last.is_empty() => start = Some(last.clone()),
            _ => return Ok(found),
        }
    }
}

/// Every body of a queue: envelopes (`Dlq::Inbox` kind) or delayed messages
/// (`Dlq::Delay`), each hidden for `hide` and released at the end.
pub async fn queue(
    clients: &Clients,
    name: &str,
    kind: Dlq,
    hide: Duration,
    progress: impl FnMut(usize),
) -> Result<Found, LocalError> {
    let url = clients
        .sqs
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .map_err(|e| LocalError::Aws {
            call: "GetQueueUrl",
            reason: aws_sdk_sqs::error::DisplayErrorContext(e).to_string(),
        })?;
    let url = url.queue_url().unwrap_or_default();
    let letters = ops::receive_hidden_for(clients, url, kind, hide, progress).await?;
    let mut found = Found::new(format!("queue {name}"));
    for letter in &letters {
        let decoded = match kind {
            Dlq::Inbox => statefun_aws::envelope::decode(letter.body()).map(drop),
            Dlq::Delay => statefun_aws::envelope::decode_timer(letter.body()).map(drop),
        };
        found.add(|| letter.dlq_id.clone(), decoded.map_err(|e| e.to_string()));
    }
    // SQS cannot peek: what it did not hand out (hidden, or behind in-flight messages
    // of a FIFO group) is counted, not claimed as read.
    let depth = ops::depth(clients, url).await?;
    found.not_reached = depth.saturating_sub(letters.len() as u64);
    ops::release(clients, url, &letters).await?;
    Ok(found)
}

/// The queues `verify` reads for a prefix: always the two dead-letter queues, with
/// `live` also the inbox and delay queue.
pub fn queues(prefix: &str, live: bool) -> Vec<(String, Dlq, Duration)> {
    let names = Names::new(prefix);
    let mut queues = vec![
        (names.dlq, Dlq::Inbox, ops::SHOWN_FOR),
        (names.delay_dlq, Dlq::Delay, ops::SHOWN_FOR),
    ];
    if live {
        queues.push((names.inbox, Dlq::Inbox, LIVE_HIDE));
        queues.push((names.delay, Dlq::Delay, LIVE_HIDE));
    }
    queues
}
