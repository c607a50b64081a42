//! What the embedded runtime does, in Prometheus form (`GET /metrics`, OpenMetrics text):
//! messages accepted and applied, invocations and their batch sizes by function type,
//! commit latency, inbox depth and pending timers, dead letters by reason, remote calls
//! by function type (latency, failures), and the size of committed records.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use statefun_core::failure::FailureKind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FunctionType {
    pub(crate) function_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Reason {
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct File {
    pub(crate) file: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Status {
    pub(crate) status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Transaction {
    pub(crate) transaction: &'static str,
}

fn by_function_type() -> Family<FunctionType, Histogram> {
    Family::new_with_constructor(|| Histogram::new(exponential_buckets(1.0, 2.0, 12)))
}

/// The runtime's metrics; shared by the engine thread, the remote calls and the HTTP
/// ingress (every metric is atomic).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub(crate) accepted: Counter,
    pub(crate) applied: Counter,
    pub(crate) invocations: Family<FunctionType, Counter>,
    pub(crate) batch_size: Family<FunctionType, Histogram>,
    pub(crate) commit_seconds: Family<Transaction, Histogram>,
    pub(crate) inbox_depth: Gauge,
    pub(crate) timers_pending: Gauge,
    pub(crate) dead_letters: Family<Reason, Counter>,
    pub(crate) remote_call_seconds: Family<FunctionType, Histogram>,
    pub(crate) remote_call_failures: Family<FunctionType, Counter>,
    pub(crate) record_bytes: Histogram,
    pub(crate) queued_bytes: Gauge,
    pub(crate) refused: Family<Status, Counter>,
    pub(crate) storage_faults: Family<File, Gauge>,
    pub(crate) http_connections: Gauge,
    pub(crate) http_requests_in_progress: Gauge,
    /// Why each file cannot be written right now, if it cannot.
    faults: std::sync::Mutex<std::collections::BTreeMap<&'static str, String>>,
}

/// The store files, as faults name them.
pub(crate) const ACCEPT_FILE: &str = "accepted";
pub(crate) const ENGINE_FILE: &str = "engine";

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("statefun");
        let metrics = Metrics {
            accepted: Counter::default(),
            applied: Counter::default(),
            invocations: Family::default(),
            batch_size: by_function_type(),
            commit_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
            }),
            inbox_depth: Gauge::default(),
            timers_pending: Gauge::default(),
            dead_letters: Family::default(),
            remote_call_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
            }),
            remote_call_failures: Family::default(),
            record_bytes: Histogram::new(exponential_buckets(64.0, 4.0, 10)),
            queued_bytes: Gauge::default(),
            refused: Family::default(),
            storage_faults: Family::default(),
            http_connections: Gauge::default(),
            http_requests_in_progress: Gauge::default(),
            faults: std::sync::Mutex::default(),
            registry: Registry::default(),
        };
        registry.register(
            "messages_accepted",
            "Messages accepted by the HTTP ingress (each answered 202)",
            metrics.accepted.clone(),
        );
        registry.register(
            "messages_applied",
            "Messages whose effects are committed",
            metrics.applied.clone(),
        );
        registry.register(
            "invocations",
            "Function invocations (one per address batch)",
            metrics.invocations.clone(),
        );
        registry.register(
            "batch_size",
            "Messages per invocation",
            metrics.batch_size.clone(),
        );
        registry.register(
            "commit_seconds",
            "Durable commits: accepted messages (accept), instance records (state), the inbox round (inbox)",
            metrics.commit_seconds.clone(),
        );
        registry.register(
            "inbox_depth",
            "Messages waiting in the inbox, in flight included",
            metrics.inbox_depth.clone(),
        );
        registry.register(
            "timers_pending",
            "Delayed messages not yet due",
            metrics.timers_pending.clone(),
        );
        registry.register(
            "dead_letters",
            "Messages dead-lettered: poison, or retries exhausted",
            metrics.dead_letters.clone(),
        );
        registry.register(
            "remote_call_seconds",
            "Remote function batch calls, retries included",
            metrics.remote_call_seconds.clone(),
        );
        registry.register(
            "remote_call_failures",
            "Remote function batch calls that ended in a failure",
            metrics.remote_call_failures.clone(),
        );
        registry.register(
            "record_bytes",
            "Size of committed instance records",
            metrics.record_bytes.clone(),
        );
        registry.register(
            "queued_bytes",
            "Bytes the queued messages count for (payloads and overhead), against --max-queued-bytes",
            metrics.queued_bytes.clone(),
        );
        registry.register(
            "requests_refused",
            "Requests refused at once: 429 (a function type's share full), 503 (the queue full), 507 (not durable)",
            metrics.refused.clone(),
        );
        registry.register(
            "storage_fault",
            "1 while a store file cannot be written (disk full, I/O error), by file",
            metrics.storage_faults.clone(),
        );
        registry.register(
            "http_connections",
            "HTTP connections open (served, not those refused at the cap)",
            metrics.http_connections.clone(),
        );
        registry.register(
            "http_requests_in_progress",
            "HTTP requests read or answered right now",
            metrics.http_requests_in_progress.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// The OpenMetrics text exposition (what Prometheus scrapes).
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    /// A function type's invocation counter and batch-size histogram, for the engine to
    /// keep (a label lookup per invocation would be work on the hot path).
    pub(crate) fn invocations_of(
        &self,
        function_type: &statefun_core::TypeName,
    ) -> (Counter, Histogram) {
        let label = FunctionType {
            function_type: function_type.to_string(),
        };
        (
            self.invocations.get_or_create(&label).clone(),
            self.batch_size.get_or_create(&label).clone(),
        )
    }

    pub(crate) fn remote_call(
        &self,
        function_type: &statefun_core::TypeName,
        took: Duration,
        failed: bool,
    ) {
        let label = FunctionType {
            function_type: function_type.to_string(),
        };
        self.remote_call_seconds
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        if failed {
            self.remote_call_failures.get_or_create(&label).inc();
        }
    }

    pub(crate) fn commit(&self, transaction: &'static str, took: Duration) {
        self.commit_seconds
            .get_or_create(&Transaction { transaction })
            .observe(took.as_secs_f64());
    }

    /// A store file cannot be written (`Some(reason)`) or can again (`None`). True when
    /// this changes what was known: a fault is logged once when it starts and once
    /// when it ends.
    pub(crate) fn storage_fault(&self, file: &'static str, reason: Option<String>) -> bool {
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        let changed = match &reason {
            Some(_) => !faults.contains_key(file),
            None => faults.contains_key(file),
        };
        self.storage_faults
            .get_or_create(&File { file })
            .set(i64::from(reason.is_some()));
        match reason {
            Some(reason) => faults.insert(file, reason),
            None => faults.remove(file),
        };
        changed
    }

    /// Whether `file` cannot be written right now.
    pub(crate) fn faulted(&self, file: &'static str) -> bool {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(file)
    }

    /// The store faults now, as `file: reason`.
    pub fn faults(&self) -> Vec<String> {
        let faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        faults
            .iter()
            .map(|(file, reason)| format!("{file}: {reason}"))
            .collect()
    }

    pub(crate) fn refused(&self, status: u16) {
        self.refused.get_or_create(&Status { status }).inc();
    }

    pub(crate) fn dead_letter(&self, kind: FailureKind) {
        let reason = match kind {
            FailureKind::Poison => "poison",
            FailureKind::Retryable => "retries_exhausted",
            _ => "other",
        };
        self.dead_letters.get_or_create(&Reason { reason }).inc();
    }
}
