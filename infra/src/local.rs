//! Local emulation: create the resources the deployment uses, play Lambda's SQS event
//! source against them, enqueue a message, read an instance's state. Works against moto
//! server, DynamoDB Local and LocalStack through an endpoint URL, and against AWS.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName, QueueAttributeName,
};
use serde_json::{Map, Value as Json, json};
use statefun_core::{Address, Envelope, view};

use statefun_aws::config::{AwsConfig, ConfigError};
use statefun_aws::keys::{group_id, message_dedup_id, partition_key};
use statefun_aws::transport::Clients;

/// Errors of the emulation commands, each saying which call failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{call}: {reason}")]
    Aws { call: &'static str, reason: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("corrupt state item: {0}")]
    Corrupt(String),
}

fn aws(call: &'static str) -> impl FnOnce(String) -> LocalError {
    move |reason| LocalError::Aws { call, reason }
}

fn sdk<E: std::error::Error>(e: E) -> String {
    aws_sdk_sqs::error::DisplayErrorContext(e).to_string()
}

/// The resource names of a deployment prefix (the template uses the same scheme).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub table: String,
    pub inbox: String,
    pub dlq: String,
    pub delay: String,
    pub delay_dlq: String,
}

impl Names {
    pub fn new(prefix: &str) -> Self {
        Names {
            table: format!("{prefix}-state"),
            inbox: format!("{prefix}-inbox.fifo"),
            dlq: format!("{prefix}-dlq.fifo"),
            delay: format!("{prefix}-delay"),
            delay_dlq: format!("{prefix}-delay-dlq"),
        }
    }
}

/// Queue settings of a provisioned deployment.
#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    /// How long a received message stays invisible (the template: 6 × function timeout).
    pub visibility_timeout: Duration,
    /// SQS's own redrive, a backstop behind the dispatcher's dead-lettering.
    pub max_receive_count: u32,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            // template.yaml: 6 x the functions' 30 s timeout.
            visibility_timeout: Duration::from_secs(180),
            max_receive_count: 100,
        }
    }
}

async fn create_queue(
    clients: &Clients,
    name: &str,
    attributes: Vec<(QueueAttributeName, String)>,
) -> Result<(String, String), LocalError> {
    let mut request = clients.sqs.create_queue().queue_name(name);
    for (k, v) in attributes {
        request = request.attributes(k, v);
    }
    let url = request
        .send()
        .await
        .map_err(|e| aws("CreateQueue")(format!("{name}: {}", sdk(e))))?
        .queue_url()
        .unwrap_or_default()
        .to_string();
    let arn = queue_arn(clients, &url).await?;
    Ok((url, arn))
}

/// The ARN of a queue.
pub async fn queue_arn(clients: &Clients, url: &str) -> Result<String, LocalError> {
    let out = clients
        .sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| aws("GetQueueAttributes")(sdk(e)))?;
    Ok(out
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .unwrap_or_default())
}

/// Creates (or finds) the table and queues of `prefix` and returns the configuration
/// the Lambdas would get. `base` supplies the optional variables (egress, routes, …).
pub async fn provision(
    clients: &Clients,
    prefix: &str,
    settings: QueueSettings,
    base: impl Fn(&str) -> Option<String>,
) -> Result<AwsConfig, LocalError> {
    let names = Names::new(prefix);
    let created = clients
        .dynamodb
        .create_table()
        .table_name(&names.table)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(|e| aws("CreateTable")(e.to_string()))?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .map_err(|e| aws("CreateTable")(e.to_string()))?,
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await;
    match created {
        Ok(_) => {
            clients
                .dynamodb
                .update_time_to_live()
                .table_name(&names.table)
                .time_to_live_specification(
                    TimeToLiveSpecification::builder()
                        .enabled(true)
                        .attribute_name("ttl")
                        .build()
                        .map_err(|e| aws("UpdateTimeToLive")(e.to_string()))?,
                )
                .send()
                .await
                .map_err(|e| aws("UpdateTimeToLive")(sdk(e)))?;
        }
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_in_use_exception()) => {}
        Err(e) => return Err(aws("CreateTable")(format!("{}: {}", names.table, sdk(e)))),
    }

    let visibility = settings.visibility_timeout.as_secs().to_string();
    let (dlq_url, dlq_arn) = create_queue(
        clients,
        &names.dlq,
        vec![
            (QueueAttributeName::FifoQueue, "true".into()),
            (QueueAttributeName::MessageRetentionPeriod, "1209600".into()),
        ],
    )
    .await?;
    let redrive = |arn: &str| {
        json!({"deadLetterTargetArn": arn, "maxReceiveCount": settings.max_receive_count})
            .to_string()
    };
    let (inbox_url, _) = create_queue(
        clients,
        &names.inbox,
        vec![
            (QueueAttributeName::FifoQueue, "true".into()),
            (
                QueueAttributeName::ContentBasedDeduplication,
                "false".into(),
            ),
            (
                QueueAttributeName::DeduplicationScope,
                "messageGroup".into(),
            ),
            (
                QueueAttributeName::FifoThroughputLimit,
                "perMessageGroupId".into(),
            ),
            (QueueAttributeName::VisibilityTimeout, visibility.clone()),
            (QueueAttributeName::MessageRetentionPeriod, "1209600".into()),
            (QueueAttributeName::RedrivePolicy, redrive(&dlq_arn)),
        ],
    )
    .await?;
    let (_, delay_dlq_arn) = create_queue(
        clients,
        &names.delay_dlq,
        vec![(QueueAttributeName::MessageRetentionPeriod, "1209600".into())],
    )
    .await?;
    let (delay_url, _) = create_queue(
        clients,
        &names.delay,
        vec![
            (QueueAttributeName::VisibilityTimeout, visibility),
            (QueueAttributeName::MessageRetentionPeriod, "1209600".into()),
            (QueueAttributeName::RedrivePolicy, redrive(&delay_dlq_arn)),
        ],
    )
    .await?;
    let resolved = HashMap::from([
        ("STATEFUN_STATE_TABLE", names.table),
        ("STATEFUN_INBOX_QUEUE_URL", inbox_url),
        ("STATEFUN_DELAY_QUEUE_URL", delay_url),
        ("STATEFUN_DLQ_URL", dlq_url),
    ]);
    Ok(AwsConfig::from_lookup(|name| {
        resolved.get(name).cloned().or_else(|| base(name))
    })?)
}

/// The configuration of an existing prefix, by queue names.
pub async fn resolve(
    clients: &Clients,
    prefix: &str,
    base: impl Fn(&str) -> Option<String>,
) -> Result<AwsConfig, LocalError> {
    let names = Names::new(prefix);
    let mut urls = HashMap::new();
    for (var, name) in [
        ("STATEFUN_INBOX_QUEUE_URL", &names.inbox),
        ("STATEFUN_DELAY_QUEUE_URL", &names.delay),
        ("STATEFUN_DLQ_URL", &names.dlq),
    ] {
        let out = clients
            .sqs
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .map_err(|e| {
                aws("GetQueueUrl")(format!("{name} (run provision first?): {}", sdk(e)))
            })?;
        urls.insert(var, out.queue_url().unwrap_or_default().to_string());
    }
    urls.insert("STATEFUN_STATE_TABLE", names.table);
    Ok(AwsConfig::from_lookup(|name| {
        urls.get(name).cloned().or_else(|| base(name))
    })?)
}

/// Lambda's SQS event source, played locally: long-poll a queue, hand the records to a
/// handler as the same event JSON Lambda sends, delete what succeeded, and leave the
/// reported failures to the visibility timeout and redrive.
#[derive(Debug, Clone)]
pub struct Poller {
    clients: Clients,
    wait: Duration,
    batch_size: i32,
    arns: HashMap<String, String>,
}

impl Poller {
    pub fn new(clients: Clients, wait: Duration) -> Self {
        Poller {
            clients,
            wait,
            batch_size: 10,
            arns: HashMap::new(),
        }
    }

    /// Receives at most `n` (1 to 10) records a poll, as an event source mapping's
    /// `BatchSize` would; 10 by default.
    pub fn set_batch_size(&mut self, n: i32) {
        self.batch_size = n.clamp(1, 10);
    }

    /// Receives up to the batch size of records from `queue_url`, runs `handler`, deletes successes.
    /// Returns how many records were handled.
    pub async fn poll_once<F, Fut>(
        &mut self,
        queue_url: &str,
        handler: F,
    ) -> Result<usize, LocalError>
    where
        F: FnOnce(SqsEvent) -> Fut,
        Fut: Future<Output = SqsBatchResponse>,
    {
        if !self.arns.contains_key(queue_url) {
            let arn = queue_arn(&self.clients, queue_url).await?;
            self.arns.insert(queue_url.to_string(), arn);
        }
        let arn = self.arns[queue_url].clone();
        let out = self
            .clients
            .sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(self.batch_size)
            .wait_time_seconds(self.wait.as_secs() as i32)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| aws("ReceiveMessage")(sdk(e)))?;
        let messages = out.messages();
        if messages.is_empty() {
            return Ok(0);
        }
        let records: Vec<Json> = messages
            .iter()
            .map(|m| {
                let attributes: Map<String, Json> = m
                    .attributes()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.as_str().to_string(), Json::from(v.as_str())))
                    .collect();
                let message_attributes: Map<String, Json> = m
                    .message_attributes()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            json!({"stringValue": v.string_value(), "dataType": v.data_type()}),
                        )
                    })
                    .collect();
                json!({
                    "messageId": m.message_id(),
                    "receiptHandle": m.receipt_handle(),
                    "body": m.body(),
                    "attributes": attributes,
                    "messageAttributes": message_attributes,
                    "md5OfBody": m.md5_of_body(),
                    "eventSource": "aws:sqs",
                    "eventSourceARN": arn,
                    "awsRegion": "us-east-1",
                })
            })
            .collect();
        let event: SqsEvent = serde_json::from_value(json!({ "Records": records }))
            .map_err(|e| aws("building the SQS event")(e.to_string()))?;
        let response = handler(event).await;
        let failed: Vec<&str> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        let mut delete = self.clients.sqs.delete_message_batch().queue_url(queue_url);
        let mut any = false;
        for (i, m) in messages.iter().enumerate() {
            if failed.contains(&m.message_id().unwrap_or_default()) {
                continue;
            }
            any = true;
            delete = delete.entries(
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .build()
                    .map_err(|e| aws("DeleteMessageBatch")(e.to_string()))?,
            );
        }
        if any {
            delete
                .send()
                .await
                .map_err(|e| aws("DeleteMessageBatch")(sdk(e)))?;
        }
        // Failed records are made visible again at once, in their order. Lambda's
        // event source leaves them to the visibility timeout; moto 5.2.5 then reorders
        // a FIFO group whose messages time out together (its ReceiveMessage skips the
        // head while later messages of the group are still pending), while a
        // visibility change to 0 releases them in order.
        let mut visible = self
            .clients
            .sqs
            .change_message_visibility_batch()
            .queue_url(queue_url);
        let mut failures = false;
        for (i, m) in messages.iter().enumerate() {
            if !failed.contains(&m.message_id().unwrap_or_default()) {
                continue;
            }
            failures = true;
            visible = visible.entries(
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .visibility_timeout(0)
                    .build()
                    .map_err(|e| aws("ChangeMessageVisibilityBatch")(e.to_string()))?,
            );
        }
        if failures {
            visible
                .send()
                .await
                .map_err(|e| aws("ChangeMessageVisibilityBatch")(sdk(e)))?;
        }
        Ok(messages.len())
    }
}

/// Enqueues a message for its target address.
pub async fn send(
    clients: &Clients,
    config: &AwsConfig,
    envelope: &Envelope,
) -> Result<(), LocalError> {
    clients
        .sqs
        .send_message()
        .queue_url(&config.inbox_url)
        .message_body(statefun_aws::envelope::encode(envelope))
        .message_group_id(group_id(&envelope.target))
        .message_deduplication_id(message_dedup_id(&envelope.id))
        .send()
        .await
        .map_err(|e| aws("SendMessage")(sdk(e)))?;
    Ok(())
}

/// An instance's state, in the embedded runtime's JSON shape.
pub async fn state(
    clients: &Clients,
    config: &AwsConfig,
    address: &Address,
    now_ms: u64,
) -> Result<Json, LocalError> {
    let out = clients
        .dynamodb
        .get_item()
        .table_name(&config.table)
        .key("pk", AttributeValue::S(partition_key(address)))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| aws("GetItem")(sdk(e)))?;
    let record = out
        .item()
        .map(statefun_aws::dynamo::instance_of_item)
        .transpose()
        .map_err(|e| LocalError::Corrupt(e.to_string()))?;
    Ok(view::state_json(address, record.as_ref(), now_ms))
}
