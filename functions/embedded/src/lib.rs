//! The embedded statefun-lambda runtime: the core's semantics in one process, with a
//! durable redb store, in-process queues, a persistent timer queue and an HTTP ingress
//! on localhost. Same commit plan and dedup as the AWS path.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use statefun_embedded::{EmbeddedConfig, Runtime, StdoutEgress};
//! let registry = statefun_examples::registry(Default::default())?;
//! let runtime = Runtime::start(registry, EmbeddedConfig::new("./statefun-data"), Box::new(StdoutEgress))?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8090").await?;
//! statefun_embedded::ingress::serve(listener, runtime.handle(), std::future::pending()).await?;
//! runtime.shutdown()?;
//! # Ok(()) }
//! ```

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use statefun_core::ports::{Clock, SystemClock};
use statefun_core::{
    Address, BatchConfig, EgressRecord, Envelope, MessageId, Registry, TypeName, TypedValue,
};
pub use statefun_remote::HttpFunctions;
use tokio::sync::oneshot;
use tracing::warn;

mod accept;
mod admission;
mod engine;
pub mod ingress;
mod layout;
mod metrics;
mod server;
mod store;
mod verify;

pub use admission::{OVERHEAD, Overloaded, QueueLimits};
pub use engine::HTTP_INGRESS;
pub use metrics::Metrics;
pub use server::{HttpConfig, Served, raise_open_files_limit};
pub use store::DeadLetter;
pub use verify::{Report as VerifyReport, verify_at};

use accept::{Accept, Acceptor};
use admission::Admission;
use engine::{Command, Engine, IngressRequest};

/// Failures of the embedded runtime itself (not of functions, which are retried or
/// dead-lettered).
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("embedded store: {0}")]
    Database(#[from] redb::Error),
    #[error("corrupt record in the data dir: {0}")]
    Corrupt(String),
    /// The data dir cannot be used as it is: what, where and what to do.
    #[error("{path}: {why}")]
    Refused { path: String, why: String },
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("egress output failed: {0}")]
    Egress(#[from] std::io::Error),
    #[error("the engine thread stopped")]
    EngineGone,
    /// The engine's file is being opened again after a write failed: a read is asked
    /// again in a moment.
    #[error("the engine file is being opened again after a write failed; ask again shortly")]
    Reopening,
    /// A message could not be written to disk (disk full, an I/O error): nothing of it
    /// was accepted.
    #[error("the message could not be made durable: {0}")]
    NotDurable(String),
    #[error(transparent)]
    KeyReused(#[from] KeyReused),
    #[error(transparent)]
    Overloaded(#[from] Overloaded),
}

/// What the engine has in hand: for operators (`GET /status`) and for tests that wait
/// until the runtime has nothing left to do rather than for a fixed time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Status {
    /// Messages accepted and neither applied nor dead-lettered yet.
    pub queued: usize,
    /// Remote calls in flight.
    pub calling: usize,
    /// Addresses waiting out a retry backoff.
    pub backing_off: usize,
    /// Delayed messages not delivered yet.
    pub timers: usize,
    /// When the next of them is due, in ms since the epoch.
    pub next_timer_due_ms: Option<u64>,
    /// Rounds committed since the runtime started.
    pub commits: u64,
    /// The bytes the queued messages count for (payloads and their overhead), against
    /// `--max-queued-bytes`.
    #[serde(default)]
    pub queued_bytes: usize,
}

impl Status {
    /// Nothing queued, in flight or scheduled: no more work will happen on its own.
    pub fn idle(&self) -> bool {
        self.queued == 0 && self.calling == 0 && self.timers == 0
    }
}

/// Waiting for a runtime by its work, not by the clock: a test (or a script) polls
/// [`RuntimeHandle::status`] (or `GET /status`) while its condition does not hold yet,
/// and gives up only when the runtime is idle for a while (nothing left to do, so the
/// condition will never hold) or stalled (no progress and no timer to wait for).
#[derive(Debug, Clone)]
pub struct Settling {
    last: Option<Status>,
    progressed: std::time::Instant,
    idle_since: Option<std::time::Instant>,
}

/// What [`Settling::observe`] concludes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Work remains (or just finished): poll again.
    Working,
    /// Idle long enough for every effect of the last round to be observable.
    Idle,
    /// Work remains but nothing moved for [`Settling::STALL`] past the next due timer.
    Stalled,
}

impl Default for Settling {
    fn default() -> Self {
        Settling {
            last: None,
            progressed: std::time::Instant::now(),
            idle_since: None,
        }
    }
}

impl Settling {
    /// How long an idle runtime is watched before it counts as idle: covers the output
    /// of its last round reaching a reader (a pipe, a log), even on a loaded machine.
    pub const IDLE: Duration = Duration::from_secs(3);
    /// How long nothing may move while work remains: a hang, not a slow machine.
    pub const STALL: Duration = Duration::from_secs(120);

    /// Takes a status read at `now_ms` (the runtime's clock).
    pub fn observe(&mut self, status: Status, now_ms: u64) -> Settled {
        let now = std::time::Instant::now();
        if self.last != Some(status) {
            self.last = Some(status);
            self.progressed = now;
        }
        if !status.idle() {
            self.idle_since = None;
            let until_due = status
                .next_timer_due_ms
                .map_or(0, |due| due.saturating_sub(now_ms));
            let quiet = self
                .progressed
                .elapsed()
                .saturating_sub(Duration::from_millis(until_due));
            return if quiet > Self::STALL {
                Settled::Stalled
            } else {
                Settled::Working
            };
        }
        let since = *self.idle_since.get_or_insert(now);
        if since.elapsed() >= Self::IDLE {
            Settled::Idle
        } else {
            Settled::Working
        }
    }
}

/// An idempotency key sent again for the same target with another message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "Idempotency-Key {key:?} was already used for {target} with another message; \
     a new message needs a new key"
)]
pub struct KeyReused {
    pub key: String,
    pub target: Address,
}

macro_rules! redb_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for EmbeddedError {
            fn from(e: $t) -> Self {
                EmbeddedError::Database(e.into())
            }
        }
    )*};
}
redb_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Settings of the embedded runtime.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    pub data_dir: PathBuf,
    pub batch: BatchConfig,
    /// Messages taken per round (all addresses together).
    pub max_batch_messages: usize,
    /// Largest HTTP ingress body.
    pub max_body_bytes: usize,
    /// How much the engine may hold queued, in messages and bytes, and one function
    /// type's share of it.
    pub queue: QueueLimits,
    /// How long an `Idempotency-Key` is remembered.
    pub ingress_key_retention: Duration,
    /// Instance records kept in memory before the cache starts over.
    pub cache_capacity: usize,
    /// How long the engine's commits may stay in memory only: at least this often one
    /// is durable (and before any egress leaves, and at shutdown). A crash redoes at
    /// most this much processing, from inputs that are all durable. Zero: every round.
    pub durable_interval: Duration,
    /// How many nice steps below the accept path the engine thread runs (Linux, where
    /// a thread has its own nice value; elsewhere ignored). The engine's work can wait
    /// a moment and gets cheaper per message when it does (bigger rounds); a 202 can
    /// not. On a busy CPU the threads that answer requests go first. Zero: the same
    /// priority.
    pub engine_nice: i32,
    /// Test fail point: abort the process right after the first state commit, from
    /// this many on, that has egress to send (before it is sent).
    pub crash_after_commits: Option<u64>,
    /// Remote functions and the rest of a module.yaml.
    pub remote: Option<Arc<HttpFunctions>>,
}

impl EmbeddedConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let batch = BatchConfig::default();
        EmbeddedConfig {
            data_dir: data_dir.into(),
            batch,
            max_batch_messages: 4096,
            max_body_bytes: batch.limits.max_message_bytes,
            queue: QueueLimits::default(),
            ingress_key_retention: Duration::from_secs(24 * 3600),
            cache_capacity: 1_000_000,
            durable_interval: Duration::from_millis(10),
            engine_nice: 10,
            crash_after_commits: None,
            remote: None,
        }
    }
}

/// Where egress records go.
pub trait EgressSink: Send {
    fn emit(&mut self, record: &EgressRecord) -> std::io::Result<()>;
    fn flush(&mut self) -> std::io::Result<()>;
}

/// Egress as one JSON object per line on stdout: `{"egress", "id", "typename", "value"}`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdoutEgress;

impl EgressSink for StdoutEgress {
    fn emit(&mut self, record: &EgressRecord) -> std::io::Result<()> {
        let line = statefun_core::view::egress_json(record);
        writeln!(std::io::stdout().lock(), "{line}")
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().lock().flush()
    }
}

/// Egress dropped: for benchmarks and tests, or a runtime whose egress nobody reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiscardEgress;

impl EgressSink for DiscardEgress {
    fn emit(&mut self, _: &EgressRecord) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An instance's committed state as JSON, read from a data dir no runtime has open
/// (`statefun-lambda state --data-dir`); a running runtime answers `GET` instead.
pub fn state_json_at(
    data_dir: &std::path::Path,
    address: &Address,
    now_ms: u64,
) -> Result<serde_json::Value, EmbeddedError> {
    let db = store::open_existing(data_dir)?;
    let record = store::read_state(&db, address)?;
    Ok(statefun_core::view::state_json(
        address,
        record.as_ref(),
        now_ms,
    ))
}

/// The dead letters of a data dir no runtime has open, with their rows, oldest first.
pub fn dead_letters_at(
    data_dir: &std::path::Path,
) -> Result<Vec<(u64, DeadLetter)>, EmbeddedError> {
    store::dead_letters(&store::open_existing(data_dir)?)
}

/// Moves the dead letters `select` picks back into the inbox of a data dir no runtime
/// has open, each under the fresh id `replay:<row>`; the next start runs them. Returns
/// the replayed messages.
pub fn replay_at(
    data_dir: &std::path::Path,
    select: impl Fn(&DeadLetter) -> bool,
) -> Result<Vec<Envelope>, EmbeddedError> {
    store::replay(data_dir, select)
}

/// A running embedded runtime.
#[derive(Debug)]
pub struct Runtime {
    handle: RuntimeHandle,
    engine: JoinHandle<Result<(), EmbeddedError>>,
    acceptor: JoinHandle<()>,
    stopped: Option<oneshot::Receiver<()>>,
}

/// A cheap, cloneable way in: submit messages, read state.
#[derive(Clone)]
pub struct RuntimeHandle {
    tx: Sender<Command>,
    accept: Sender<Accept>,
    db: Arc<store::SharedDb>,
    registry: Arc<Registry>,
    remote: Option<Arc<HttpFunctions>>,
    clock: Arc<dyn Clock>,
    max_body_bytes: usize,
    metrics: Arc<Metrics>,
    admission: Arc<Admission>,
}

impl std::fmt::Debug for RuntimeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeHandle").finish_non_exhaustive()
    }
}

impl Runtime {
    /// Opens the data dir, recovers the inbox and timers, and starts the engine thread.
    pub fn start(
        registry: Registry,
        config: EmbeddedConfig,
        egress: Box<dyn EgressSink>,
    ) -> Result<Self, EmbeddedError> {
        Self::start_with_clock(registry, config, egress, Arc::new(SystemClock))
    }

    pub fn start_with_clock(
        registry: Registry,
        config: EmbeddedConfig,
        egress: Box<dyn EgressSink>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, EmbeddedError> {
        let (db, accepted) = store::open(&config.data_dir)?;
        let db = Arc::new(store::SharedDb::new(
            config.data_dir.join(layout::MAIN_FILE),
            db,
        ));
        let registry = Arc::new(registry);
        let (tx, rx) = mpsc::channel();
        let max_body_bytes = config.max_body_bytes;
        let remote = config.remote.clone();
        if remote.is_some() && tokio::runtime::Handle::try_current().is_err() {
            return Err(EmbeddedError::Io(
                "remote functions".into(),
                std::io::Error::other(
                    "start the runtime from within a tokio runtime to call remote functions",
                ),
            ));
        }
        let metrics = Arc::new(Metrics::default());
        let admission = Arc::new(Admission::new(config.queue));
        let mut recovered = store::recover(&*db.get()?, &accepted)?;
        let stale = std::mem::take(&mut recovered.stale);
        let outstanding = recovered.accepted.iter().copied().collect();
        let seqs = Arc::new(AtomicU64::new(recovered.next_seq));
        // Settled rows' removal is durable within a quarter of the dedup retention (and
        // within a second): a crash brings back only messages still recognised.
        let flush_within = Duration::from_secs(1).min(config.batch.dedup_retention / 4);
        let key_retention = config.ingress_key_retention;
        let engine_nice = config.engine_nice;
        let (accept, accept_rx) = mpsc::channel();
        let accept_path = config.data_dir.join(layout::ACCEPTED_FILE);
        let engine = Engine::new(
            db.clone(),
            registry.clone(),
            config,
            clock.clone(),
            egress,
            (tx.clone(), rx),
            engine::Start {
                recovered,
                seqs: seqs.clone(),
                metrics: metrics.clone(),
                acceptor: accept.clone(),
                admission: admission.clone(),
            },
        )?;
        let acceptor = Acceptor {
            db: Some(accepted),
            path: accept_path,
            outstanding,
            removed: HashSet::new(),
            room: (4 * max_body_bytes as u64).max(1 << 20),
            seqs,
            clock: clock.clone(),
            engine: tx.clone(),
            metrics: metrics.clone(),
            flush_within,
            key_retention,
            admission: admission.clone(),
        };
        let acceptor = std::thread::Builder::new()
            .name("statefun-accept".into())
            .spawn(move || acceptor.run(accept_rx, stale))
            .map_err(|e| EmbeddedError::Io("spawning the accept thread".into(), e))?;
        let (stopped_tx, stopped) = oneshot::channel();
        let engine = std::thread::Builder::new()
            .name("statefun-engine".into())
            .spawn(move || {
                if let Err(e) = engine::lower_priority(engine_nice) {
                    warn!(reason = %e, "the engine runs at the accept path's priority");
                }
                let result = engine.run();
                // Nobody may be waiting for the stop; the result is in the join handle.
                let _ = stopped_tx.send(());
                result
            })
            .map_err(|e| EmbeddedError::Io("spawning the engine thread".into(), e))?;
        Ok(Runtime {
            handle: RuntimeHandle {
                tx,
                accept,
                db,
                registry,
                remote,
                clock,
                max_body_bytes,
                metrics,
                admission,
            },
            engine,
            acceptor,
            stopped: Some(stopped),
        })
    }

    pub fn handle(&self) -> RuntimeHandle {
        self.handle.clone()
    }

    /// Completes when the engine thread stops on its own (a store failure): serve until
    /// this or a signal, then call [`shutdown`](Self::shutdown) to learn why.
    pub fn engine_stopped(&mut self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let stopped = self.stopped.take();
        async move {
            match stopped {
                // An error means the sender is gone: the engine stopped as well.
                Some(rx) => {
                    let _ = rx.await;
                }
                None => std::future::pending().await,
            }
        }
    }

    /// Finishes the current round and stops.
    pub fn shutdown(self) -> Result<(), EmbeddedError> {
        // The engine stops first, so the accept thread's last commit removes the rows
        // of the engine's last round; what it accepts meanwhile waits in its file for
        // the next start. If the engine already stopped, joining tells why.
        let _ = self.handle.tx.send(Command::Shutdown);
        let engine = self.engine.join();
        let _ = self.handle.accept.send(Accept::Shutdown);
        let _ = self.acceptor.join();
        engine.map_err(|_| EmbeddedError::EngineGone)?
    }
}

impl RuntimeHandle {
    /// Durably accepts a message for `target`; returns its id once it is on disk. The
    /// same `idempotency_key` for the same target within the retention window returns
    /// the first id and enqueues nothing; with another message it is refused
    /// ([`KeyReused`]). Keys are scoped to their target, as on AWS. Refused at once
    /// ([`Overloaded`]) when the queue, or the target's function type's share of it,
    /// is full.
    pub async fn submit(
        &self,
        target: Address,
        value: TypedValue,
        idempotency_key: Option<String>,
    ) -> Result<MessageId, EmbeddedError> {
        self.admission
            .admit(&target.function_type, admission::footprint(&value))?;
        let (reply, rx) = oneshot::channel();
        let request = IngressRequest {
            target,
            value,
            key: idempotency_key,
            reply,
        };
        // From here on the accept thread gives the room back for what it does not
        // enqueue (a key's repeat, a refusal, a failed commit).
        if let Err(mpsc::SendError(Accept::Request(request))) =
            self.accept.send(Accept::Request(request))
        {
            self.admission.release(
                &request.target.function_type,
                admission::footprint(&request.value),
            );
            return Err(EmbeddedError::EngineGone);
        }
        rx.await.map_err(|_| EmbeddedError::EngineGone)?
    }

    /// What the engine has in hand right now.
    pub async fn status(&self) -> Result<Status, EmbeddedError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Status(reply))
            .map_err(|_| EmbeddedError::EngineGone)?;
        rx.await.map_err(|_| EmbeddedError::EngineGone)
    }

    /// Waits until `check` holds, for as long as the runtime works toward it (see
    /// [`Settling`]); false if it went idle or stalled with `check` still false.
    pub async fn settles(&self, mut check: impl FnMut() -> bool) -> Result<bool, EmbeddedError> {
        let mut settling = Settling::default();
        loop {
            if check() {
                return Ok(true);
            }
            let status = self.status().await?;
            if settling.observe(status, self.clock.now_ms()) != Settled::Working {
                return Ok(check());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the runtime has nothing left to do (or stalled; see [`Settling`]).
    pub async fn settle(&self) -> Result<(), EmbeddedError> {
        self.settles(|| false).await.map(drop)
    }

    /// The instance's committed state as JSON (see [`statefun_core::view::state_json`]).
    pub fn state_json(&self, address: &Address) -> Result<serde_json::Value, EmbeddedError> {
        let record = store::read_state(&*self.db.get()?, address)?;
        Ok(statefun_core::view::state_json(
            address,
            record.as_ref(),
            self.clock.now_ms(),
        ))
    }

    /// Messages given up on, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, EmbeddedError> {
        Ok(store::dead_letters(&*self.db.get()?)?
            .into_iter()
            .map(|(_, letter)| letter)
            .collect())
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Whether a local or remote function serves `t`.
    pub fn knows(&self, t: &TypeName) -> bool {
        statefun_core::remote::RemoteFunctions::serves(&self.remote, t) || self.registry.contains(t)
    }

    /// Whether the HTTP ingress may address `t` (the module's declaration, if any).
    pub fn exposed(&self, t: &TypeName) -> bool {
        self.remote
            .as_ref()
            .is_none_or(|r| r.module().http_exposes(t))
    }

    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// What the runtime has done so far (`GET /metrics` renders it).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}
