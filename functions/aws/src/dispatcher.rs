//! The dispatcher Lambda: an SQS batch from the FIFO inbox in, `batchItemFailures` out.
//!
//! Group by address, load, invoke, commit, send — the core's pipeline over DynamoDB and
//! SQS. Then, per address, by its first failed message and the core's failure policy
//! ([`statefun_core::failure`]), the same for every host:
//! - version conflict: run the address again now (bounded), then report it;
//! - dead letter (undecodable, unknown type, terminal error, panic, too large, or a
//!   function that asked to be retried `STATEFUN_MAX_RECEIVES` times, counted in its
//!   record — the receives of messages blocked behind it do not count): move it to the
//!   DLQ with the reason and run the messages behind it;
//! - otherwise (store or transport unavailable, a function retry): report it and every
//!   later message of its address (= its FIFO group) as failed, so SQS redelivers them
//!   in order. Store and transport failures are never dead-lettered: the commit may have
//!   landed, and the redelivery is what re-sends its outbox.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use statefun_core::failure::Next;
use statefun_core::pipeline::{AddressReport, BatchReport, FailedMessage, Invoker, Pipeline};
use statefun_core::ports::Clock;
use statefun_core::protocol::{FromFunction, ToFunction};
use statefun_core::remote::{RemoteError, RemoteFunctions, SpecCache};
use statefun_core::{Address, BatchConfig, Envelope, MessageId, Registry, RetryPolicy, TypeName};
use statefun_remote::HttpFunctions;
use tracing::{info, warn};

use crate::dead_letter::DeadLetters;
use crate::dynamo::DynamoStore;
use crate::envelope;
use crate::metrics::{Metrics, Snapshot};
use crate::sqs_batch::{self, Read, Record, Role, Shared, SqsHandler};
use crate::transport::SqsTransport;

/// Remote functions whose calls end at a deadline: a call still running then fails as
/// unavailable (its messages come again), instead of holding the whole batch past the
/// Lambda's timeout.
struct Until<'a, R> {
    inner: &'a R,
    deadline: Option<Instant>,
    metrics: &'a Metrics,
}

impl<R: RemoteFunctions> RemoteFunctions for Until<'_, R> {
    fn serves(&self, function_type: &TypeName) -> bool {
        self.inner.serves(function_type)
    }

    fn max_batch(&self, function_type: &TypeName) -> usize {
        self.inner.max_batch(function_type)
    }

    async fn call(
        &self,
        function_type: &TypeName,
        request: ToFunction,
    ) -> Result<FromFunction, RemoteError> {
        let started = Instant::now();
        let call = self.inner.call(function_type, request);
        let answer = match self.deadline {
            None => call.await,
            Some(deadline) => tokio::time::timeout_at(deadline.into(), call)
                .await
                .unwrap_or_else(|_| {
                    Err(RemoteError(format!(
                        "{function_type} did not answer before the invocation's deadline"
                    )))
                }),
        };
        self.metrics.remote_call(started.elapsed());
        answer
    }
}

/// A record of the batch and its decoded envelope.
/// The records of a batch by message: ids are unique per target only, so a record
/// is known by both (a message delivered twice is two records).
struct Records<'a>(HashMap<(&'a Address, &'a MessageId), Vec<usize>>);

impl<'a> Records<'a> {
    fn of(received: &'a [Received]) -> Self {
        let mut map: HashMap<_, Vec<usize>> = HashMap::new();
        for (i, r) in received.iter().enumerate() {
            map.entry((&r.item.target, &r.item.id)).or_default().push(i);
        }
        Records(map)
    }

    /// The records of `failed`'s messages of `address`, in order.
    fn of_messages(&self, address: &Address, failed: &[FailedMessage]) -> Vec<usize> {
        let ids = failed.iter().filter_map(|f| self.0.get(&(address, &f.id)));
        ids.flatten().copied().collect()
    }
}

/// A record of the inbox, read.
type Received = Record<Envelope>;

#[derive(Debug, Clone, Copy)]
pub struct DispatcherSettings {
    pub batch: BatchConfig,
    pub conflict_retries: u32,
}

pub struct Dispatcher {
    registry: Arc<Registry>,
    store: DynamoStore,
    transport: SqsTransport,
    dead_letters: DeadLetters,
    settings: DispatcherSettings,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    remote: Option<Arc<HttpFunctions>>,
    specs: SpecCache,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    pub fn new(
        registry: Arc<Registry>,
        store: DynamoStore,
        transport: SqsTransport,
        dead_letters: DeadLetters,
        settings: DispatcherSettings,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Dispatcher {
            registry,
            store,
            transport,
            dead_letters,
            settings,
            clock,
            metrics,
            remote: None,
            specs: SpecCache::default(),
        }
    }

    /// Calls the module's remote functions too.
    pub fn with_remote(mut self, remote: Option<Arc<HttpFunctions>>) -> Self {
        self.remote = remote;
        self
    }

    /// Everything counted since start (for benchmarks).
    pub fn totals(&self) -> Snapshot {
        self.metrics.totals()
    }

    /// Handles one SQS event, with no deadline (the local poller, tests).
    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        self.handle_until(event, None).await
    }

    /// One pass of the core pipeline, with the module's remote functions if any.
    async fn dispatch(&self, batch: Vec<Envelope>, deadline: Option<Instant>) -> BatchReport {
        let remote = Until {
            inner: &self.remote,
            deadline,
            metrics: &self.metrics,
        };
        let invoker = Invoker {
            registry: &self.registry,
            remote: &remote,
            specs: &self.specs,
            config: &self.settings.batch,
            clock: self.clock.as_ref(),
        };
        let pipeline = Pipeline {
            invoker,
            store: &self.store,
            transport: &self.transport,
        };
        pipeline.dispatch(batch).await
    }

    /// Runs the decoded records; returns the record ids to report as failed. The
    /// core reports, per address, what to do with its unsettled messages
    /// ([`Dispatcher::after`] maps that onto SQS).
    async fn run_all(&self, received: &[Received], deadline: Option<Instant>) -> Vec<String> {
        let records = Records::of(received);
        let (mut failed, mut pending) = (Vec::new(), (0..received.len()).collect::<Vec<_>>());
        for round in 0..=self.settings.conflict_retries {
            if pending.is_empty() || round > 0 && deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            if round > 0 {
                // Let the racer that won finish before reloading.
                tokio::time::sleep(RetryPolicy::io().backoff(round)).await;
            }
            let batch = pending.iter().map(|&i| received[i].item.clone()).collect();
            let last_round = round == self.settings.conflict_retries;
            let mut next = Vec::new();
            for report in self.dispatch(batch, deadline).await.addresses {
                let (again, gave_up) = self.after(received, &records, &report, last_round).await;
                next.extend(again);
                failed.extend(gave_up);
            }
            next.sort_unstable();
            next.dedup();
            pending = next;
        }
        failed.extend(pending);
        let mut failed: Vec<String> = failed.iter().map(|&r| received[r].id.clone()).collect();
        failed.sort_unstable();
        failed.dedup();
        failed
    }

    /// What becomes of an address's records after a pass, as the core decided: the
    /// records to run again now, and those to report failed (SQS redelivers them).
    async fn after(
        &self,
        received: &[Received],
        records: &Records<'_>,
        report: &AddressReport,
        last_round: bool,
    ) -> (Vec<usize>, Vec<usize>) {
        let (address, unsettled) = (&report.address, &report.failed[..]);
        let (Some(next), Some((head, behind))) = (&report.next, unsettled.split_first()) else {
            return (Vec::new(), Vec::new());
        };
        match next {
            Next::RunAgain if !last_round => {
                info!(%address, "version conflict; running the address again");
                (records.of_messages(address, unsettled), Vec::new())
            }
            Next::DeadLetter { reason } => {
                let head = records.of_messages(address, std::slice::from_ref(head));
                if self.dead_letter(received, address, &head, reason).await {
                    (records.of_messages(address, behind), Vec::new())
                } else {
                    (Vec::new(), records.of_messages(address, unsettled))
                }
            }
            Next::RunAgain | Next::Retry { .. } => {
                warn!(%address, message_id = %head.id, reason = %head.reason, "failed; SQS will redeliver");
                (Vec::new(), records.of_messages(address, unsettled))
            }
        }
    }

    /// Moves the records of an address's failed head message to the DLQ with `reason`;
    /// whether every one of them got there.
    async fn dead_letter(
        &self,
        received: &[Received],
        address: &Address,
        head: &[usize],
        reason: &str,
    ) -> bool {
        let group = crate::keys::group_id(address);
        let mut moved = true;
        for &r in head {
            let rec = &received[r];
            moved &= self
                .dead_letters
                .send(
                    "dispatcher",
                    &rec.body,
                    &group,
                    &rec.id,
                    reason,
                    rec.first_received_ms,
                )
                .await
                .is_ok();
        }
        moved
    }
}

impl Role for Dispatcher {
    type Item = Envelope;
    const NAME: &'static str = "dispatcher";

    fn shared(&self) -> Shared<'_> {
        Shared::new(&self.dead_letters, &self.metrics, self.clock.as_ref())
    }

    fn read(&self, record: &SqsMessage, body: &str) -> Read<Envelope> {
        match envelope::decode(body) {
            Ok(envelope) => Read::Item(envelope),
            // A rolling deploy: a newer build reads it; never dead-lettered.
            Err(e) if e.is_newer() => Read::Newer(e.to_string()),
            Err(e) => Read::Poison {
                reason: e.to_string(),
                group: record
                    .attributes
                    .get("MessageGroupId")
                    .cloned()
                    .unwrap_or_else(|| "undecodable".into()),
            },
        }
    }

    async fn run(&self, received: Vec<Received>, deadline: Option<Instant>) -> Vec<String> {
        self.run_all(&received, deadline).await
    }
}

/// Answers by `deadline` (a Lambda invocation's, less a margin): remote calls still
/// running then fail back as unavailable and conflict re-runs stop, so what cannot
/// finish is reported in `batchItemFailures` — and the rest of the batch commits —
/// before Lambda's timeout would fail it all.
impl SqsHandler for Dispatcher {
    async fn handle_until(&self, event: SqsEvent, deadline: Option<Instant>) -> SqsBatchResponse {
        sqs_batch::handle(self, event, deadline).await
    }
}
