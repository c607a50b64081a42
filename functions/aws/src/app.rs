//! Wiring: AWS clients and handlers, built once per cold start (or per local poller).

use std::sync::Arc;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sqs::config::Credentials;
use statefun_core::ports::Clock;
use statefun_core::{BatchConfig, Limits, Registry, RetryPolicy};

use crate::config::AwsConfig;
use crate::dead_letter::DeadLetters;
use crate::dispatcher::{Dispatcher, DispatcherSettings};
use crate::dynamo::DynamoStore;
use crate::forwarder::TimerForwarder;
use crate::http_ingress::HttpIngress;
use crate::ingress::SqsIngress;
use crate::metrics::Metrics;
use crate::transport::{Clients, SqsTransport};
use statefun_remote::HttpFunctions;

/// The largest message payload that still fits SQS's 256 KiB once base64-encoded in its
/// envelope: larger ones are refused by the function's invocation with a typed error.
pub const MAX_PAYLOAD_BYTES: usize = 190 * 1024;

/// The SDK configuration: `endpoint_url` for every service if given (else the SDK's own
/// resolution, including `AWS_ENDPOINT_URL` and per-service `AWS_ENDPOINT_URL_<SERVICE>`);
/// `emulator_defaults` sets region `us-east-1` and credentials `test`/`test`.
pub async fn sdk_config(endpoint_url: Option<&str>, emulator_defaults: bool) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if emulator_defaults {
        loader = loader
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "emulator"));
    }
    loader.load().await
}

pub fn clients(sdk: &SdkConfig) -> Clients {
    Clients {
        sqs: aws_sdk_sqs::Client::new(sdk),
        sns: aws_sdk_sns::Client::new(sdk),
        dynamodb: aws_sdk_dynamodb::Client::new(sdk),
    }
}

/// The batch settings of the AWS path: the core's defaults, with message payloads capped
/// to what fits an SQS message.
pub fn batch_config(config: &AwsConfig) -> BatchConfig {
    BatchConfig {
        limits: Limits {
            max_message_bytes: MAX_PAYLOAD_BYTES,
            ..Limits::default()
        },
        dedup_retention: config.dedup_retention,
        retry: RetryPolicy {
            max_attempts: config.max_receives,
            ..RetryPolicy::default()
        },
        ..BatchConfig::default()
    }
}

/// The HTTP client of the module's remote functions, if it declares endpoints.
pub fn remote_functions(
    config: &AwsConfig,
) -> Result<Option<Arc<HttpFunctions>>, statefun_remote::SetupError> {
    if config.module.endpoints.is_empty() {
        return Ok(None);
    }
    Ok(Some(Arc::new(HttpFunctions::new(config.module.clone())?)))
}

/// The three handlers, each with its own request accounting.
#[derive(Debug)]
pub struct Handlers {
    pub dispatcher: Dispatcher,
    pub forwarder: TimerForwarder,
    pub ingress: SqsIngress,
    pub http_ingress: HttpIngress,
}

impl Handlers {
    pub fn new(
        config: &AwsConfig,
        clients: &Clients,
        registry: Arc<Registry>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self::with_remote(config, clients, registry, clock, None)
    }

    /// Handlers that also call the remote functions of a module.
    pub fn with_remote(
        config: &AwsConfig,
        clients: &Clients,
        registry: Arc<Registry>,
        clock: Arc<dyn Clock>,
        remote: Option<Arc<HttpFunctions>>,
    ) -> Self {
        let transport = |metrics: &Arc<Metrics>| {
            SqsTransport::new(
                clients.clone(),
                config.inbox_url.clone(),
                config.delay_url.clone(),
                config.egress.clone(),
                config.max_delay_hop,
                clock.clone(),
                metrics.clone(),
            )
        };
        let dead_letters = |metrics: &Arc<Metrics>| {
            DeadLetters::new(clients.sqs.clone(), config.dlq_url.clone(), metrics.clone())
        };

        let metrics = Arc::new(Metrics::default());
        let store = DynamoStore::new(
            clients.dynamodb.clone(),
            config.table.clone(),
            metrics.clone(),
            clock.clone(),
        );
        let settings = DispatcherSettings {
            batch: batch_config(config),
            conflict_retries: config.conflict_retries,
        };
        let dispatcher = Dispatcher::new(
            registry.clone(),
            store,
            transport(&metrics),
            dead_letters(&metrics),
            settings,
            clock.clone(),
            metrics.clone(),
        )
        .with_remote(remote.clone());

        let metrics = Arc::new(Metrics::default());
        let forwarder = TimerForwarder::new(
            DynamoStore::new(
                clients.dynamodb.clone(),
                config.table.clone(),
                metrics.clone(),
                clock.clone(),
            ),
            transport(&metrics),
            dead_letters(&metrics),
            clock.clone(),
            metrics.clone(),
        );

        let metrics = Arc::new(Metrics::default());
        let ingress = SqsIngress::new(
            config.ingress_routes.clone(),
            registry.clone(),
            transport(&metrics),
            dead_letters(&metrics),
            clock.clone(),
            metrics,
        )
        .with_remote(remote.clone());
        let metrics = Arc::new(Metrics::default());
        let http_ingress = HttpIngress::new(
            registry,
            config.module.clone(),
            remote,
            transport(&metrics),
            MAX_PAYLOAD_BYTES,
            clock.clone(),
            metrics,
        );
        Handlers {
            dispatcher,
            forwarder,
            ingress,
            http_ingress,
        }
    }
}
