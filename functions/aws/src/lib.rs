//! The AWS path of statefun-lambda: the DynamoDB state store, the SQS/SNS transport, the
//! dispatcher, timer forwarder and SQS ingress handlers, and the local emulation
//! (provision, poll, send, state) that drives the same handlers against an emulator.

pub mod app;
pub mod config;
pub mod dead_letter;
pub mod dispatcher;
pub mod dynamo;
pub mod envelope;
pub mod forwarder;
pub mod http_ingress;
pub mod ingress;
pub mod keys;
pub mod metrics;
pub mod sqs_batch;
pub mod transport;

/// When SQS enqueued a record (its `SentTimestamp`, ms since the epoch).
pub(crate) fn sent_timestamp(record: &aws_lambda_events::event::sqs::SqsMessage) -> Option<u64> {
    record.attributes.get("SentTimestamp")?.parse().ok()
}

/// When SQS first handed a record to a consumer (its `ApproximateFirstReceiveTimestamp`):
/// for a record that fails every time, its first failure.
pub(crate) fn first_received(record: &aws_lambda_events::event::sqs::SqsMessage) -> Option<u64> {
    record
        .attributes
        .get("ApproximateFirstReceiveTimestamp")?
        .parse()
        .ok()
}

/// The partial batch response reporting `failed` record ids to the event source.
pub(crate) fn batch_response(failed: &[String]) -> aws_lambda_events::event::sqs::SqsBatchResponse {
    let mut response = aws_lambda_events::event::sqs::SqsBatchResponse::default();
    response.batch_item_failures = failed
        .iter()
        .map(|id| {
            let mut f = aws_lambda_events::event::sqs::BatchItemFailure::default();
            f.item_identifier = id.clone();
            f
        })
        .collect();
    response
}
