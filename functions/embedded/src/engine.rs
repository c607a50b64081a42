//! The engine thread: takes what is due from the inbox, runs the core's batch
//! processing, and executes the outcomes with group commit. One round:
//!
//! 1. pick up to `max_batch_messages` pending messages in inbox order, skipping
//!    addresses that wait for a retry, grouped by address (one invocation batch each);
//! 2. transaction A, durable: re-sends, then every address's new record with its
//!    spilled dedup entries and its outbox (new inbox rows, timers, cancellations:
//!    a cancel is in effect from its commit) — group commit;
//! 3. egress records of those outboxes are written out (at-least-once, stable ids);
//! 4. transaction B, durable: acknowledgements, retries and dead letters, and timers
//!    that fell due move to the inbox.
//!
//! A round without egress has nothing to send between A and B: it commits them as one,
//! in memory only unless `durable_interval` has passed since the last durable commit.
//! Every input is durable already, so a crash redoes such rounds; settled accepted rows
//! are handed back only once durable, egress leaves only after a durable commit.
//!
//! HTTP ingress messages are written to the accept thread's file ([`crate::accept`])
//! and reach the engine once committed (`Command::Accepted`); their rows are settled
//! in transaction B like the engine's own, and then removed there by that thread.
//!
//! A crash between A and B is the "commit landed, sends did not" case: the inputs are
//! still in the inbox, come again, are recognised as applied and bring their outbox
//! with them. The AWS dispatcher has the same window and the same remedy.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use redb::{
    Durability, MultimapTable, ReadableDatabase, ReadableMultimapTable, ReadableTable, Table,
    WriteTransaction,
};
use statefun_core::batch::RemoteBatch;
use statefun_core::dedup::DedupKey;
use statefun_core::failure::Next;
use statefun_core::pipeline::{Invoker, block_on, dedup_lookups};
use statefun_core::ports::Clock;
use statefun_core::remote::{RemoteFunctions, SpecCache};
use statefun_core::{
    Address, AddressOutcome, EgressRecord, Envelope, InstanceState, MessageId, OutboxEntry,
    Registry, TypedValue,
};
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use crate::accept::Accept;
use crate::admission::{Admission, footprint};
use crate::metrics::{ENGINE_FILE, Metrics};
use crate::store::{
    self, DEAD_LETTERS, DEDUP, DeadLetter, INBOX, InboxEntry, META, NEXT_SEQ, STATE, SharedDb,
    TIMER_TOKENS, TIMERS, TimerEntry,
};
use crate::{EgressSink, EmbeddedConfig, EmbeddedError, Status};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

/// The payload bytes one round takes at most (past its first message): a round copies
/// what it invokes, so its memory is bounded in bytes as the queue is.
const ROUND_BYTES: usize = 16 << 20;

/// The payload bytes in calls to remote functions at once (past the first call): a
/// call holds copies of its messages for as long as it is tried, and an endpoint that
/// is down is tried until its timeout, so the calls' memory is bounded apart from the
/// queue's. Addresses past it wait in the queue for a call to end.
const REMOTE_BYTES: usize = 32 << 20;

/// Whether a message of `size` may join calls already carrying `in_flight` bytes.
fn within_remote_budget(in_flight: usize, size: usize) -> bool {
    in_flight == 0 || in_flight + size <= REMOTE_BYTES
}

/// The source name of messages accepted by the HTTP ingress.
pub const HTTP_INGRESS: &str = "ingress/http";

pub(crate) struct IngressRequest {
    pub(crate) target: Address,
    pub(crate) value: TypedValue,
    pub(crate) key: Option<String>,
    pub(crate) reply: oneshot::Sender<Result<MessageId, EmbeddedError>>,
}

pub(crate) enum Command {
    /// Messages the acceptor committed to the inbox.
    Accepted(Vec<(u64, InboxEntry)>),
    /// A remote call finished: its outcome is ready to commit.
    RemoteDone,
    Status(oneshot::Sender<Status>),
    Shutdown,
}

/// An address's batch as selected for a round: its messages, its loaded record, and
/// its inbox rows.
type Selected = (
    ((Address, Vec<Envelope>), Option<InstanceState>),
    (Address, Vec<u64>),
);

/// A remote function's batch in flight: its inbox rows and the call.
struct InFlight {
    seqs: Vec<u64>,
    /// What its messages count for (see `REMOTE_BYTES`).
    bytes: usize,
    call: tokio::task::JoinHandle<AddressOutcome>,
}

/// What a transaction changes in the engine's in-memory mirrors, applied only once it
/// has committed.
#[derive(Default)]
struct Delta {
    new_inbox: Vec<(u64, InboxEntry)>,
    timers_added: Vec<(u64, String)>,
    timers_removed: Vec<(u64, String)>,
}

struct Tables<'t> {
    inbox: Table<'t, u64, &'static [u8]>,
    timers: Table<'t, (u64, &'static str), &'static [u8]>,
    tokens: MultimapTable<'t, &'static [u8], (u64, &'static str)>,
}

impl Tables<'_> {
    fn enqueue(
        &mut self,
        seqs: &AtomicU64,
        envelope: Envelope,
        delta: &mut Delta,
    ) -> Result<u64, EmbeddedError> {
        let s = seqs.fetch_add(1, Ordering::SeqCst);
        let entry = InboxEntry {
            envelope,
            attempts: 0,
            first_failed_ms: None,
        };
        self.inbox.insert(s, store::record(&entry).as_slice())?;
        delta.new_inbox.push((s, entry));
        Ok(s)
    }

    /// Executes one outbox entry inside the transaction.
    fn apply(
        &mut self,
        entry: &OutboxEntry,
        seq: &AtomicU64,
        delta: &mut Delta,
    ) -> Result<(), EmbeddedError> {
        match entry {
            OutboxEntry::Send(envelope) => {
                self.enqueue(seq, envelope.clone(), delta)?;
            }
            OutboxEntry::SendAfter {
                envelope,
                due_at_ms,
                cancellation_token,
                ..
            } => {
                let id = store::timer_id(&envelope.id);
                let key = (*due_at_ms, id.as_str());
                // The same message scheduled again (a re-send) keeps one timer.
                if self.timers.get(key)?.is_none() {
                    let timer = TimerEntry {
                        envelope: envelope.clone(),
                        token: cancellation_token.clone(),
                    };
                    self.timers.insert(key, store::record(&timer).as_slice())?;
                    if let (Some(token), Some(sender)) = (cancellation_token, &envelope.caller) {
                        self.tokens
                            .insert(store::token_key(sender, token).as_slice(), key)?;
                    }
                    delta.timers_added.push((*due_at_ms, id));
                }
            }
            OutboxEntry::Cancel { sender, token, .. } => {
                let tk = store::token_key(sender, token);
                let keys: Vec<(u64, String)> = self
                    .tokens
                    .get(tk.as_slice())?
                    .map(|k| k.map(|k| (k.value().0, k.value().1.to_string())))
                    .collect::<Result<_, _>>()?;
                for (due, id) in keys {
                    self.timers.remove((due, id.as_str()))?;
                    delta.timers_removed.push((due, id));
                }
                self.tokens.remove_all(tk.as_slice())?;
            }
            // Written out by the round once the records' commit is durable.
            OutboxEntry::Egress(_) => {}
        }
        Ok(())
    }

    /// Moves a due timer into the inbox.
    fn fire(
        &mut self,
        key: &(u64, String),
        seq: &AtomicU64,
        delta: &mut Delta,
    ) -> Result<(), EmbeddedError> {
        let removed = self
            .timers
            .remove((key.0, key.1.as_str()))?
            .map(|bytes| store::read::<TimerEntry>(&"timer", bytes.value()))
            .transpose()?;
        if let Some(timer) = removed {
            if let (Some(token), Some(sender)) = (&timer.token, &timer.envelope.caller) {
                self.tokens.remove(
                    store::token_key(sender, token).as_slice(),
                    (key.0, key.1.as_str()),
                )?;
            }
            debug!(address = %timer.envelope.target, message_id = %timer.envelope.id, "delayed message due");
            self.enqueue(seq, timer.envelope, delta)?;
        }
        delta.timers_removed.push(key.clone());
        Ok(())
    }
}

pub(crate) struct Engine {
    store: Arc<SharedDb>,
    registry: Arc<Registry>,
    config: EmbeddedConfig,
    clock: Arc<dyn Clock>,
    egress: Box<dyn EgressSink>,
    rx: Receiver<Command>,
    pending: BTreeMap<u64, InboxEntry>,
    timers: BTreeSet<(u64, String)>,
    cache: HashMap<Address, Option<InstanceState>>,
    /// When an address that failed may run again (monotonic time: operational backoff,
    /// not the functions' clock).
    retry_at: HashMap<Address, Instant>,
    /// The next inbox row's sequence number, shared with the acceptor.
    seqs: Arc<AtomicU64>,
    commits: u64,
    /// When expired spilled dedup entries are next cleared out.
    next_dedup_prune_ms: u64,
    specs: Arc<SpecCache>,
    tokio: Option<tokio::runtime::Handle>,
    /// Remote calls run as tasks across rounds, so a slow endpoint holds only its own
    /// addresses: an address with a call in flight is skipped until it answers.
    inflight: HashMap<Address, InFlight>,
    /// Where a finished call wakes the engine.
    wake: Sender<Command>,
    metrics: Arc<Metrics>,
    /// Each function type's invocation metrics, looked up once.
    invocation_metrics: HashMap<statefun_core::TypeName, (Counter, Histogram)>,
    /// The pending rows that live in the accept thread's file.
    accepted: HashSet<u64>,
    /// Where settled accepted rows go to be removed.
    acceptor: Sender<Accept>,
    /// Since when commits are in memory only (none: all durable).
    undurable_since: Option<Instant>,
    /// Accepted rows settled by those commits: handed over once they are durable.
    awaiting_durable: Vec<u64>,
    /// The same rows, for a rebuild after the file was opened again (which drops the
    /// commits that were not durable): those still pending (moved for a retry) ...
    undurable_rows: HashSet<u64>,
    /// ... and the entries of those applied or dead-lettered.
    undurable_entries: Vec<(u64, InboxEntry)>,
    /// Rounds failed in a row on the store (0: it works).
    faults: u32,
    /// The file was opened again and the memory not yet rebuilt from it.
    needs_rebuild: bool,
    /// The queue's room: the engine counts its own messages in, and every settled one
    /// out.
    admission: Arc<Admission>,
}

/// What the engine starts from: the recovered inbox and timers, the sequence counter it
/// shares with the acceptor, the metrics.
pub(crate) struct Start {
    pub(crate) recovered: store::Recovered,
    pub(crate) seqs: Arc<AtomicU64>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) acceptor: Sender<Accept>,
    pub(crate) admission: Arc<Admission>,
}

/// Lowers the calling thread's CPU priority by `steps` nice values (see
/// `EmbeddedConfig::engine_nice`). Linux keeps a nice value per thread; elsewhere the
/// priority stays as it is.
pub(crate) fn lower_priority(steps: i32) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    if steps != 0 {
        use rustix::{process, thread};
        let tid = Some(thread::gettid());
        let nice = process::getpriority_process(tid)?;
        process::setpriority_process(tid, nice.saturating_add(steps).clamp(-20, 19))?;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = steps;
    Ok(())
}

impl Engine {
    pub(crate) fn new(
        store: Arc<SharedDb>,
        registry: Arc<Registry>,
        config: EmbeddedConfig,
        clock: Arc<dyn Clock>,
        egress: Box<dyn EgressSink>,
        channel: (Sender<Command>, Receiver<Command>),
        start: Start,
    ) -> Result<Self, EmbeddedError> {
        let Start {
            recovered,
            seqs,
            metrics,
            acceptor,
            admission,
        } = start;
        for (_, entry) in &recovered.inbox {
            admission.add(
                &entry.envelope.target.function_type,
                footprint(&entry.envelope.value),
            );
        }
        let txn = store.get()?.begin_write()?;
        store::prune_dedup(&txn, clock.now_ms())?;
        txn.commit()?;
        info!(
            pending = recovered.inbox.len(),
            timers = recovered.timers.len(),
            "recovered the inbox and timers"
        );
        Ok(Engine {
            store,
            registry,
            config,
            clock,
            egress,
            rx: channel.1,
            pending: recovered.inbox.into_iter().collect(),
            timers: recovered.timers.into_iter().collect(),
            cache: HashMap::new(),
            retry_at: HashMap::new(),
            seqs,
            commits: 0,
            next_dedup_prune_ms: 0,
            specs: Arc::default(),
            inflight: HashMap::new(),
            wake: channel.0,
            tokio: tokio::runtime::Handle::try_current().ok(),
            metrics,
            invocation_metrics: HashMap::new(),
            accepted: recovered.accepted.into_iter().collect(),
            acceptor,
            undurable_since: None,
            awaiting_durable: Vec::new(),
            undurable_rows: HashSet::new(),
            undurable_entries: Vec::new(),
            faults: 0,
            needs_rebuild: false,
            admission,
        })
    }

    fn deliverable(&self, now: u64) -> bool {
        let instant = Instant::now();
        let remote_bytes: usize = self.inflight.values().map(|f| f.bytes).sum();
        self.timers.first().is_some_and(|(due, _)| *due <= now)
            || self.inflight.values().any(|f| f.call.is_finished())
            || self.pending.values().any(|e| {
                let target = &e.envelope.target;
                !self.inflight.contains_key(target)
                    && self.retry_at.get(target).is_none_or(|t| *t <= instant)
                    // Held back by the calls' budget: a call's end wakes the engine.
                    && (!self.config.remote.serves(&target.function_type)
                        || within_remote_budget(remote_bytes, footprint(&e.envelope.value)))
            })
    }

    fn idle_wait(&self, now: u64) -> Duration {
        let instant = Instant::now();
        let next_timer = self.timers.first().map(|(due, _)| due.saturating_sub(now));
        let next_retry = self
            .retry_at
            .values()
            .filter(|t| **t > instant)
            .map(|t| t.duration_since(instant).as_millis() as u64)
            .min();
        let next_durable = self.undurable_since.map(|since| {
            let interval = self.config.durable_interval;
            interval.saturating_sub(since.elapsed()).as_millis() as u64
        });
        let wait = [next_timer, next_retry, next_durable]
            .into_iter()
            .flatten()
            .min();
        Duration::from_millis(wait.map_or(1_000, |ms| ms.clamp(1, 1_000)))
    }

    fn status(&self) -> Status {
        Status {
            queued: self.pending.len(),
            calling: self.inflight.len(),
            backing_off: self.retry_at.len(),
            timers: self.timers.len(),
            next_timer_due_ms: self.timers.first().map(|(due, _)| *due),
            commits: self.commits,
            queued_bytes: self.admission.queued_bytes(),
        }
    }

    /// Runs rounds until shut down. A round that fails on the store (disk full, an I/O
    /// error) or on egress output is retried with the failure policy's backoff after
    /// the file is opened again and the engine's memory rebuilt from it: the recovery
    /// of a restart, without the restart.
    pub(crate) fn run(mut self) -> Result<(), EmbeddedError> {
        let mut shutting_down = false;
        while !shutting_down {
            let now = self.clock.now_ms();
            if !self.deliverable(now) {
                match self.rx.recv_timeout(self.idle_wait(now)) {
                    Ok(command) => shutting_down |= self.obey(command),
                    Err(RecvTimeoutError::Disconnected) => shutting_down = true,
                    Err(RecvTimeoutError::Timeout) => {}
                }
            }
            while let Ok(command) = self.rx.try_recv() {
                shutting_down |= self.obey(command);
            }
            let round = if self.needs_rebuild {
                Err(EmbeddedError::Reopening)
            } else {
                self.round()
            };
            match round {
                Ok(()) => self.recovered(),
                Err(e) => shutting_down |= self.fault(&e),
            }
        }
        self.make_durable()?;
        info!("engine stopped");
        Ok(())
    }

    /// A round that worked (durably: see `durable_due`) after failures: the fault is
    /// over.
    fn recovered(&mut self) {
        if self.faults > 0 && self.undurable_since.is_none() {
            self.faults = 0;
            if self.metrics.storage_fault(ENGINE_FILE, None) {
                info!("the engine file can be written again: applying messages");
            }
        }
    }

    /// A round failed: shows the fault, waits out the backoff (answering commands
    /// meanwhile), opens the file again and rebuilds from it. True if a shutdown came.
    fn fault(&mut self, e: &EmbeddedError) -> bool {
        self.faults = self.faults.saturating_add(1);
        let reason = e.to_string();
        if self
            .metrics
            .storage_fault(ENGINE_FILE, Some(reason.clone()))
        {
            error!(%reason, "a round failed on the store: retrying with backoff, nothing is lost");
        } else {
            debug!(%reason, attempt = self.faults, "the round failed again");
        }
        let until = Instant::now() + self.config.batch.retry.backoff(self.faults);
        while let Some(wait) = until.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(wait) {
                Ok(command) => {
                    if self.obey(command) {
                        return true;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return true,
            }
        }
        // Until a rebuild works, no round runs: the memory may hold what the reopened
        // file dropped, and a durable round would hand such rows on as settled.
        self.needs_rebuild = true;
        match self.store.reopen().and_then(|()| self.rebuild()) {
            Ok(()) => self.needs_rebuild = false,
            Err(e) => debug!(reason = %e, "opening the engine file again failed; retrying"),
        }
        false
    }

    /// After the file was opened again: the engine's memory as a restart would read it
    /// (its inbox and timers, no cache, no call in flight), plus the accept file's
    /// rows it holds, and those settled only by commits that were not durable.
    fn rebuild(&mut self) -> Result<(), EmbeddedError> {
        let db = self.store.get()?;
        let (own, timers) = store::engine_rows(&db)?;
        for entry in self.pending.values() {
            let envelope = &entry.envelope;
            self.admission
                .release(&envelope.target.function_type, footprint(&envelope.value));
        }
        let mut accepted: BTreeMap<u64, InboxEntry> = std::mem::take(&mut self.pending)
            .into_iter()
            .filter(|(row, _)| self.accepted.contains(row) || self.undurable_rows.contains(row))
            .collect();
        accepted.extend(std::mem::take(&mut self.undurable_entries));
        self.undurable_rows.clear();
        self.awaiting_durable.clear();
        self.pending = own.into_iter().collect();
        self.accepted.clear();
        let mut stale = Vec::new();
        let letters = store::dead_lettered(&db, accepted.keys().copied())?;
        for (row, entry) in accepted {
            if self.pending.contains_key(&row) || letters.contains(&row) {
                // Moved into the engine's file for a retry, or dead-lettered, durably
                // after all.
                stale.push(row);
            } else {
                self.accepted.insert(row);
                self.pending.insert(row, entry);
            }
        }
        for entry in self.pending.values() {
            let envelope = &entry.envelope;
            self.admission
                .add(&envelope.target.function_type, footprint(&envelope.value));
        }
        if !stale.is_empty() {
            let _ = self.acceptor.send(Accept::Settled(stale));
        }
        self.timers = timers.into_iter().collect();
        self.cache.clear();
        // A call's outcome was computed on state the reopened file may not have: its
        // messages run again.
        for (_, call) in self.inflight.drain() {
            call.call.abort();
        }
        self.undurable_since = None;
        self.metrics.inbox_depth.set(self.pending.len() as i64);
        self.metrics.timers_pending.set(self.timers.len() as i64);
        debug!(
            pending = self.pending.len(),
            timers = self.timers.len(),
            "opened the engine file again and rebuilt from it"
        );
        Ok(())
    }

    /// Whether this round's commit is durable: at least every `durable_interval` (see
    /// docs/DESIGN.md, "The embedded runtime").
    fn durable_due(&self) -> bool {
        let interval = self.config.durable_interval;
        // After a fault only a durable commit tells that the disk takes writes again.
        interval.is_zero()
            || self.faults > 0
            || self
                .undurable_since
                .is_some_and(|since| since.elapsed() >= interval)
    }

    /// After a durable commit: the accepted rows settled so far go to the accept thread.
    fn durable(&mut self) {
        self.undurable_since = None;
        self.undurable_rows.clear();
        self.undurable_entries.clear();
        if !self.awaiting_durable.is_empty() {
            // The accept thread may have stopped: the rows come again and are recognised.
            let rows = std::mem::take(&mut self.awaiting_durable);
            let _ = self.acceptor.send(Accept::Settled(rows));
        }
    }

    /// Makes every commit so far durable (an empty durable commit).
    fn make_durable(&mut self) -> Result<(), EmbeddedError> {
        if self.undurable_since.is_some() {
            let db = self.store.get()?;
            let txn = db.begin_write()?;
            txn.open_table(META)?
                .insert(NEXT_SEQ, self.seqs.load(Ordering::SeqCst))?;
            txn.commit()?;
            self.durable();
        }
        Ok(())
    }

    /// Takes one command in; true if it asks the engine to stop.
    fn obey(&mut self, command: Command) -> bool {
        match command {
            Command::Accepted(entries) => {
                self.accepted.extend(entries.iter().map(|(s, _)| *s));
                self.pending.extend(entries);
                self.metrics.inbox_depth.set(self.pending.len() as i64);
            }
            Command::RemoteDone => {}
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Shutdown => return true,
        }
        false
    }

    /// The most messages one invocation batch of `t` may carry: a remote endpoint's
    /// `maxNumBatchRequests`; the rest wait for the next round (backpressure).
    fn max_batch(&self, t: &statefun_core::TypeName) -> usize {
        self.config.remote.max_batch(t)
    }

    fn select(&self) -> Vec<(Address, Vec<u64>)> {
        let instant = Instant::now();
        let mut index: HashMap<&Address, usize> = HashMap::new();
        let mut groups: Vec<(Address, Vec<u64>)> = Vec::new();
        let (mut taken, mut bytes) = (0, 0);
        let mut remote_bytes: usize = self.inflight.values().map(|f| f.bytes).sum();
        let mut held: HashSet<&Address> = HashSet::new();
        for (&seq, entry) in &self.pending {
            if taken == self.config.max_batch_messages || bytes >= ROUND_BYTES {
                break;
            }
            let target = &entry.envelope.target;
            if self.inflight.contains_key(target)
                || self.retry_at.get(target).is_some_and(|t| *t > instant)
            {
                continue;
            }
            let group = index.get(target).copied();
            if group.is_some_and(|i| groups[i].1.len() >= self.max_batch(&target.function_type)) {
                continue;
            }
            let size = footprint(&entry.envelope.value);
            if self.config.remote.serves(&target.function_type) {
                // An address's messages go in order: once one waits, the rest do.
                if held.contains(target) || !within_remote_budget(remote_bytes, size) {
                    held.insert(target);
                    continue;
                }
                remote_bytes += size;
            }
            match group {
                Some(i) => groups[i].1.push(seq),
                None => {
                    index.insert(target, groups.len());
                    groups.push((target.clone(), vec![seq]));
                }
            }
            taken += 1;
            bytes += size;
        }
        groups
    }

    fn load(
        &mut self,
        addresses: &[&Address],
    ) -> Result<Vec<Option<InstanceState>>, EmbeddedError> {
        let misses: Vec<&Address> = addresses
            .iter()
            .copied()
            .filter(|a| !self.cache.contains_key(*a))
            .collect();
        if !misses.is_empty() {
            if self.cache.len() + misses.len() > self.config.cache_capacity {
                self.cache.clear();
            }
            let db = self.store.get()?;
            let txn = db.begin_read()?;
            let table = txn.open_table(STATE)?;
            for address in misses {
                let state = match table.get(store::address_key(address).as_slice())? {
                    Some(bytes) => Some(store::read::<InstanceState>(address, bytes.value())?),
                    None => None,
                };
                self.cache.insert(address.clone(), state);
            }
        }
        // Taken out, not cloned: the commit puts the new record back; an address
        // without a commit is read again next time.
        Ok(addresses
            .iter()
            .map(|a| self.cache.remove(*a).flatten())
            .collect())
    }

    fn round(&mut self) -> Result<(), EmbeddedError> {
        let now = self.clock.now_ms();
        let mut groups = self.select();
        let addresses: Vec<&Address> = groups.iter().map(|(a, _)| a).collect();
        let mut loaded = self.load(&addresses)?;
        let batches: Vec<(Address, Vec<Envelope>)> = groups
            .iter()
            .map(|(address, seqs)| {
                let messages = seqs
                    .iter()
                    .map(|s| self.pending[s].envelope.clone())
                    .collect();
                (address.clone(), messages)
            })
            .collect();
        let lookups = dedup_lookups(&batches, &loaded, now);
        if !lookups.is_empty() {
            let requests: Vec<(Address, Vec<DedupKey>)> = lookups
                .iter()
                .map(|(_, a, keys)| (a.clone(), keys.clone()))
                .collect();
            let found = store::read_dedup(&*self.store.get()?, &requests)?;
            for ((i, _, _), entries) in lookups.iter().zip(found) {
                if let Some(state) = loaded[*i].as_mut() {
                    state.dedup.absorb(entries);
                }
            }
        }
        let (local, remote): (Vec<_>, Vec<_>) = batches
            .into_iter()
            .zip(loaded)
            .zip(std::mem::take(&mut groups))
            .partition(|(((address, _), _), _)| !self.config.remote.serves(&address.function_type));
        self.start_remote(remote);
        let (local, local_groups): (Vec<_>, Vec<_>) = local.into_iter().unzip();
        let (batches, loaded): (Vec<_>, Vec<_>) = local.into_iter().unzip();
        groups = local_groups;
        let mut outcomes = self.invoke(batches, loaded);
        for (address, seqs, outcome) in self.finished_remote() {
            groups.push((address, seqs));
            outcomes.push(outcome);
        }

        let seqs = self.seqs.clone();
        let mut delta = Delta::default();
        // Resent egress first, then the new commits' (the order of the outboxes).
        let egress: Vec<&EgressRecord> = outcomes
            .iter()
            .flat_map(|o| o.resend.iter())
            .chain(
                outcomes
                    .iter()
                    .filter_map(|o| o.commit.as_ref())
                    .flat_map(|c| c.outbox()),
            )
            .filter_map(|e| match e {
                OutboxEntry::Egress(record) => Some(record),
                _ => None,
            })
            .collect();
        let splits: Vec<(Vec<u64>, Option<u64>)> = groups
            .iter()
            .zip(&outcomes)
            .map(|((_, seqs), outcome)| self.split(seqs, outcome))
            .collect();
        let db = self.store.get()?;
        let mut txn = db.begin_write()?;
        let states = outcomes
            .iter()
            .any(|o| !o.resend.is_empty() || o.commit.is_some());
        if states {
            self.write_states(&txn, &groups, &outcomes, &seqs, &mut delta)?;
        }
        let split = !egress.is_empty();
        if split {
            // Transaction A ends here: egress leaves the process only after its commit;
            // a crash in between re-emits (same ids) rather than loses.
            let started = Instant::now();
            txn.commit()?;
            self.metrics.commit("state", started.elapsed());
            self.durable();
            self.committed_states(&outcomes);
            if self
                .config
                .crash_after_commits
                .is_some_and(|n| self.commits >= n)
            {
                error!(
                    commits = self.commits,
                    "fail point: aborting between commit and send"
                );
                std::process::abort();
            }
            for record in egress {
                self.egress.emit(record)?;
            }
            self.egress.flush()?;
            txn = db.begin_write()?;
        }
        let mut dead = Vec::new();
        // Accepted rows this commit settles: removed from the accept thread's file after.
        let mut settled = Vec::new();

        {
            let mut tables = Tables {
                inbox: txn.open_table(INBOX)?,
                timers: txn.open_table(TIMERS)?,
                tokens: txn.open_multimap_table(TIMER_TOKENS)?,
            };
            for ((address, (done, culprit)), outcome) in
                groups.iter().map(|(a, _)| a).zip(&splits).zip(&outcomes)
            {
                for s in done {
                    if self.accepted.contains(s) {
                        settled.push(*s);
                    } else {
                        tables.inbox.remove(s)?;
                    }
                }
                if let (Some(failure), Some(culprit)) = (&outcome.failure, *culprit) {
                    // The failure policy decides, on the tries the record counted; the
                    // entry's own count (every try) only lengthens the wait.
                    let mut entry = self.pending[&culprit].clone();
                    entry.attempts += 1;
                    let first_failed = *entry.first_failed_ms.get_or_insert(now);
                    let policy = &self.config.batch.retry;
                    let after = match failure.next(policy) {
                        Next::Retry { after } => Ok(after),
                        // One writer: no other commit can race this one.
                        Next::RunAgain => Ok(Duration::ZERO),
                        Next::DeadLetter { reason } => Err(reason),
                    };
                    match after {
                        Ok(after) => {
                            let reason = failure.reason();
                            warn!(%address, message_id = %entry.envelope.id, attempts = failure.attempts, %reason, "invocation failed; will retry");
                            // An accepted row moves into the engine's inbox with its count.
                            tables
                                .inbox
                                .insert(culprit, store::record(&entry).as_slice())?;
                            if self.accepted.contains(&culprit) {
                                settled.push(culprit);
                            }
                            let backoff = after.max(policy.backoff(entry.attempts));
                            self.retry_at
                                .insert(address.clone(), Instant::now() + backoff);
                            self.pending.insert(culprit, entry);
                        }
                        Err(reason) => {
                            error!(%address, message_id = %entry.envelope.id, %reason, "dead-lettering message");
                            self.metrics.dead_letter(failure.error.kind());
                            if self.accepted.contains(&culprit) {
                                settled.push(culprit);
                            } else {
                                tables.inbox.remove(culprit)?;
                            }
                            dead.push((culprit, entry.envelope, reason, first_failed));
                        }
                    }
                }
            }
            let due: Vec<(u64, String)> = self
                .timers
                .range(..(now + 1, String::new()))
                .cloned()
                .collect();
            for key in &due {
                tables.fire(key, &seqs, &mut delta)?;
            }
            let mut letters = txn.open_table(DEAD_LETTERS)?;
            for (culprit, envelope, reason, first_failed) in &dead {
                let letter = DeadLetter {
                    envelope: envelope.clone(),
                    reason: reason.clone(),
                    at_ms: now,
                    first_failure_ms: Some(*first_failed),
                };
                letters.insert(culprit, store::record(&letter).as_slice())?;
            }
            txn.open_table(META)?
                .insert(NEXT_SEQ, seqs.load(Ordering::SeqCst))?;
        }
        if now >= self.next_dedup_prune_ms {
            store::prune_dedup(&txn, now)?;
            self.next_dedup_prune_ms = now + self.config.batch.retention_ms() / 16;
        }
        // Transaction B after egress is durable: a lost acknowledgement would send the
        // egress again. A round without egress is durable every `durable_interval`.
        let durable = split || self.durable_due();
        if !durable {
            txn.set_durability(Durability::None)?;
        }
        let started = Instant::now();
        txn.commit()?;
        for s in &settled {
            self.accepted.remove(s);
        }
        if !durable {
            self.undurable_rows.extend(settled.iter().copied());
        }
        self.awaiting_durable.extend(settled);
        if durable {
            self.durable();
        } else {
            self.undurable_since.get_or_insert_with(Instant::now);
        }
        if split {
            self.metrics.commit("inbox", started.elapsed());
        } else {
            self.metrics.commit("round", started.elapsed());
            if states {
                self.committed_states(&outcomes);
            }
        }
        for ((address, seqs), (done, _)) in groups.iter().zip(&splits) {
            let metrics = &self.metrics;
            let (count, sizes) = self
                .invocation_metrics
                .entry(address.function_type.clone())
                .or_insert_with(|| metrics.invocations_of(&address.function_type));
            count.inc();
            sizes.observe(seqs.len() as f64);
            self.metrics.applied.inc_by(done.len() as u64);
        }

        for ((address, _), (done, culprit)) in groups.iter().zip(&splits) {
            for s in done {
                self.settle(*s);
            }
            if culprit.is_none() {
                self.retry_at.remove(address);
            }
        }
        for (culprit, ..) in dead {
            self.settle(culprit);
        }
        for (_, entry) in &delta.new_inbox {
            let envelope = &entry.envelope;
            self.admission
                .add(&envelope.target.function_type, footprint(&envelope.value));
        }
        self.pending.extend(delta.new_inbox);
        for key in delta.timers_removed {
            self.timers.remove(&key);
        }
        self.timers.extend(delta.timers_added);
        self.metrics.inbox_depth.set(self.pending.len() as i64);
        self.metrics
            .queued_bytes
            .set(self.admission.queued_bytes() as i64);
        self.metrics.timers_pending.set(self.timers.len() as i64);
        Ok(())
    }

    /// A pending message is done with (applied or dead-lettered): its room goes back.
    fn settle(&mut self, row: u64) {
        if let Some(entry) = self.pending.remove(&row) {
            let envelope = &entry.envelope;
            self.admission
                .release(&envelope.target.function_type, footprint(&envelope.value));
            if self.undurable_rows.remove(&row) {
                self.undurable_entries.push((row, entry));
            }
        }
    }

    /// Starts the remote functions' batches as tasks: each answers in a later round
    /// ([`Engine::finished_remote`]), and wakes the engine when it does.
    fn start_remote(&mut self, batches: Vec<Selected>) {
        let (Some(tokio), Some(remote)) = (&self.tokio, &self.config.remote) else {
            return;
        };
        for (((address, messages), state), (_, seqs)) in batches {
            let batch = RemoteBatch::prepare(address.clone(), state, messages, self.clock.now_ms());
            let (remote, specs, config) = (remote.clone(), self.specs.clone(), self.config.batch);
            let (clock, wake) = (self.clock.clone(), self.wake.clone());
            let (metrics, function_type) = (self.metrics.clone(), address.function_type.clone());
            let call = tokio.spawn(async move {
                let started = Instant::now();
                let outcome =
                    statefun_core::remote::invoke(&remote, &specs, batch, &config, clock.as_ref())
                        .await;
                metrics.remote_call(&function_type, started.elapsed(), outcome.failure.is_some());
                // The engine may have stopped; the messages are in the inbox all the same.
                let _ = wake.send(Command::RemoteDone);
                outcome
            });
            let bytes = seqs
                .iter()
                .filter_map(|s| self.pending.get(s))
                .map(|e| footprint(&e.envelope.value))
                .sum();
            self.inflight
                .insert(address, InFlight { seqs, bytes, call });
        }
    }

    /// The remote calls that answered since the last round, with their inbox rows.
    fn finished_remote(&mut self) -> Vec<(Address, Vec<u64>, AddressOutcome)> {
        let done: Vec<Address> = self
            .inflight
            .iter()
            .filter(|(_, f)| f.call.is_finished())
            .map(|(a, _)| a.clone())
            .collect();
        let mut out = Vec::new();
        for address in done {
            let Some(InFlight { seqs, call, .. }) = self.inflight.remove(&address) else {
                continue;
            };
            let Some(tokio) = &self.tokio else { continue };
            match tokio.block_on(call) {
                Ok(outcome) => out.push((address, seqs, outcome)),
                // A call that panicked: its messages stay in the inbox and run again.
                Err(e) => error!(%address, reason = %e, "remote call task failed"),
            }
        }
        out
    }

    /// Runs the round's local invocation batches in place.
    fn invoke(
        &self,
        batches: Vec<(Address, Vec<Envelope>)>,
        loaded: Vec<Option<InstanceState>>,
    ) -> Vec<AddressOutcome> {
        let invoker = Invoker {
            registry: &self.registry,
            remote: &self.config.remote,
            specs: &self.specs,
            config: &self.config.batch,
            clock: self.clock.as_ref(),
        };
        // Local functions only: every future here is ready at once.
        block_on(invoker.process(batches, loaded))
    }

    /// Which of a group's inbox rows an outcome settles, and the row of its failed
    /// message (matched by id, occurrence by occurrence: a message may be in the inbox
    /// twice after a re-send).
    fn split(&self, seqs: &[u64], outcome: &AddressOutcome) -> (Vec<u64>, Option<u64>) {
        let mut settled: HashMap<&MessageId, usize> = HashMap::new();
        for id in &outcome.settled {
            *settled.entry(id).or_default() += 1;
        }
        let (mut done, mut unsettled) = (Vec::new(), Vec::new());
        for s in seqs {
            match settled.get_mut(&self.pending[s].envelope.id) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    done.push(*s);
                }
                _ => unsettled.push(*s),
            }
        }
        let culprit = outcome
            .failure
            .as_ref()
            .and_then(|f| f.messages.first())
            .and_then(|id| {
                unsettled
                    .into_iter()
                    .find(|s| &self.pending[s].envelope.id == id)
            });
        (done, culprit)
    }

    /// Transaction A's writes: re-sends, then the new instance records with their
    /// spilled dedup entries and outboxes (egress aside: it is written out after A
    /// commits). Executing the outbox here puts a cancel in effect with its commit.
    fn write_states(
        &mut self,
        txn: &WriteTransaction,
        groups: &[(Address, Vec<u64>)],
        outcomes: &[AddressOutcome],
        seq: &AtomicU64,
        delta: &mut Delta,
    ) -> Result<(), EmbeddedError> {
        {
            let mut tables = Tables {
                inbox: txn.open_table(INBOX)?,
                timers: txn.open_table(TIMERS)?,
                tokens: txn.open_multimap_table(TIMER_TOKENS)?,
            };
            let mut states = txn.open_table(STATE)?;
            let mut dedup = txn.open_table(DEDUP)?;
            for ((address, _), outcome) in groups.iter().zip(outcomes) {
                if !outcome.resend.is_empty() {
                    info!(%address, entries = outcome.resend.len(), "re-sending the outbox of a redelivered commit");
                }
                for entry in &outcome.resend {
                    tables.apply(entry, seq, delta)?;
                }
                if let Some(commit) = &outcome.commit {
                    let key = store::address_key(&commit.address);
                    let record = store::record(&commit.state);
                    self.metrics.record_bytes.observe(record.len() as f64);
                    states.insert(key.as_slice(), record.as_slice())?;
                    for spilled in &commit.spill {
                        dedup.insert(
                            (key.as_slice(), spilled.entry.key().to_key_string().as_str()),
                            (
                                store::record(&spilled.entry).as_slice(),
                                spilled.expires_at_ms,
                            ),
                        )?;
                    }
                    for entry in commit.outbox() {
                        tables.apply(entry, seq, delta)?;
                    }
                }
            }
            txn.open_table(META)?
                .insert(NEXT_SEQ, seq.load(Ordering::SeqCst))?;
        }
        Ok(())
    }

    /// After the commit that holds the new records: they are what the cache holds.
    fn committed_states(&mut self, outcomes: &[AddressOutcome]) {
        for outcome in outcomes {
            if let Some(commit) = &outcome.commit {
                debug!(address = %commit.address, version = commit.state.version, "committed");
                self.cache
                    .insert(commit.address.clone(), Some(commit.state.clone()));
            }
        }
        self.commits += 1;
    }
}
