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
/// The dedup hot set an instance item keeps on AWS: DynamoDB bills every KB of an item
/// on every write, and the hot set is rewritten with each commit, so it is kept to what
/// leaves a busy keyed address's item near 1 KB (its batch's ids are in it too). Ids
/// past it are written once each, ahead of the commit ([`statefun_core::dedup`]): at
/// 4 KiB the same traffic paid 4 write units a commit for the hot set alone.
pub const DEDUP_BUDGET_BYTES: usize = 512;

pub fn batch_config(config: &AwsConfig) -> BatchConfig {
    BatchConfig {
        dedup_budget_bytes: DEDUP_BUDGET_BYTES,
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

/// What one deployed Lambda is: `template.yaml` sets it in `STATEFUN_ROLE`, and the
/// Lambda builds only that handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Dispatcher,
    TimerForwarder,
    SqsIngress,
    HttpIngress,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::Dispatcher,
        Role::TimerForwarder,
        Role::SqsIngress,
        Role::HttpIngress,
    ];

    /// The name `STATEFUN_ROLE` takes (and the template's function names).
    pub fn name(self) -> &'static str {
        match self {
            Role::Dispatcher => "dispatcher",
            Role::TimerForwarder => "timer-forwarder",
            Role::SqsIngress => "sqs-ingress",
            Role::HttpIngress => "http-ingress",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s.trim())
            .ok_or_else(|| {
                let names: Vec<&str> = Role::ALL.iter().map(|r| r.name()).collect();
                format!("{s:?} is not a role; one of {}", names.join(", "))
            })
    }
}

/// What every handler is built from: configuration, clients, functions and clock.
#[derive(Clone)]
pub struct Parts<'a> {
    pub config: &'a AwsConfig,
    pub clients: &'a Clients,
    pub registry: Arc<Registry>,
    pub clock: Arc<dyn Clock>,
    pub remote: Option<Arc<HttpFunctions>>,
}

impl std::fmt::Debug for Parts<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parts").finish_non_exhaustive()
    }
}

impl Parts<'_> {
    fn transport(&self, metrics: &Arc<Metrics>) -> SqsTransport {
        SqsTransport::new(
            self.clients.clone(),
            self.config.inbox_url.clone(),
            self.config.delay_url.clone(),
            self.config.egress.clone(),
            self.config.max_delay_hop,
            self.clock.clone(),
            metrics.clone(),
        )
    }

    fn dead_letters(&self, metrics: &Arc<Metrics>) -> DeadLetters {
        DeadLetters::new(
            self.clients.sqs.clone(),
            self.config.dlq_url.clone(),
            metrics.clone(),
        )
    }

    fn store(&self, metrics: &Arc<Metrics>) -> DynamoStore {
        DynamoStore::new(
            self.clients.dynamodb.clone(),
            self.config.table.clone(),
            metrics.clone(),
            self.clock.clone(),
        )
        .writing_format(self.config.store_format)
    }

    /// The dispatcher, with its own request accounting (as every handler below).
    pub fn dispatcher(&self) -> Dispatcher {
        let metrics = Arc::new(Metrics::default());
        let settings = DispatcherSettings {
            batch: batch_config(self.config),
            conflict_retries: self.config.conflict_retries,
        };
        Dispatcher::new(
            self.registry.clone(),
            self.store(&metrics),
            self.transport(&metrics),
            self.dead_letters(&metrics),
            settings,
            self.clock.clone(),
            metrics,
        )
        .with_remote(self.remote.clone())
    }

    pub fn forwarder(&self) -> TimerForwarder {
        let metrics = Arc::new(Metrics::default());
        TimerForwarder::new(
            self.store(&metrics),
            self.transport(&metrics),
            self.dead_letters(&metrics),
            self.clock.clone(),
            metrics,
        )
    }

    pub fn sqs_ingress(&self) -> SqsIngress {
        let metrics = Arc::new(Metrics::default());
        SqsIngress::new(
            self.config.ingress_routes.clone(),
            self.registry.clone(),
            self.transport(&metrics),
            self.dead_letters(&metrics),
            self.clock.clone(),
            metrics,
        )
        .with_remote(self.remote.clone())
    }

    pub fn http_ingress(&self) -> HttpIngress {
        let metrics = Arc::new(Metrics::default());
        HttpIngress::new(
            self.registry.clone(),
            self.config.module.clone(),
            self.remote.clone(),
            self.transport(&metrics),
            MAX_PAYLOAD_BYTES,
            self.clock.clone(),
            metrics,
        )
    }
}

/// All four handlers (the local poller and the tests play every role at once).
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
        let parts = Parts {
            config,
            clients,
            registry,
            clock,
            remote,
        };
        Handlers {
            dispatcher: parts.dispatcher(),
            forwarder: parts.forwarder(),
            ingress: parts.sqs_ingress(),
            http_ingress: parts.http_ingress(),
        }
    }
}
