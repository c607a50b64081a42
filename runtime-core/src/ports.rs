//! Ports the hosts implement (state store, message transport, clock) and their
//! in-memory twins, which keep the same precondition behaviour so a whole pipeline runs
//! deterministically in tests.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::batch::{Commit, Precondition};
use crate::dedup::{DedupEntry, DedupKey};
use crate::message::{EgressRecord, Envelope, Issued, OutboxEntry};
use crate::state::InstanceState;
use crate::typename::Address;

/// A store failure that says nothing about the data (timeouts, throttling): retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state store unavailable: {0}")]
pub struct StoreError(pub String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// Someone else committed first; reload and run again.
    #[error("version conflict on {0}")]
    Conflict(Address),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The record cannot be stored at all (over the item limit): never retried.
    #[error(transparent)]
    TooLarge(#[from] crate::batch::LimitError),
}

/// Loads instance records and applies conditional commits.
pub trait StateStore: Send + Sync {
    /// One record (or `None`) per address, in order.
    fn load(
        &self,
        addresses: &[Address],
    ) -> impl Future<Output = Result<Vec<Option<InstanceState>>, StoreError>> + Send;

    /// The dedup entries found outside the records ([`crate::dedup`]) among the keys
    /// asked for each address; one list per request. Found entries that expired may be
    /// returned or not (TTL deletion lags): they no longer matter.
    fn load_dedup(
        &self,
        lookups: &[(Address, Vec<DedupKey>)],
    ) -> impl Future<Output = Result<Vec<Vec<DedupEntry>>, StoreError>> + Send;

    /// Applies each commit if its precondition holds, atomically with its spilled
    /// dedup entries and its cancellations; one result per commit.
    fn commit(
        &self,
        commits: &[Commit],
    ) -> impl Future<Output = Vec<Result<(), CommitError>>> + Send;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("transport failed: {0}")]
pub struct TransportError(pub String);

/// Executes outboxes: delivers messages, schedules and cancels delayed ones, emits egress.
pub trait Transport: Send + Sync {
    /// Whether `entry` can ever be delivered (checked before the commit that makes it).
    fn check(&self, entry: &OutboxEntry) -> Result<(), TransportError> {
        let _ = entry;
        Ok(())
    }

    /// Sends several outboxes (one per address); one result per outbox.
    fn send(
        &self,
        outboxes: &[&[OutboxEntry]],
    ) -> impl Future<Output = Vec<Result<(), TransportError>>> + Send;
}

/// Milliseconds since the Unix epoch, injected so expiration and delays are testable.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(start_ms: u64) -> Self {
        ManualClock(AtomicU64::new(start_ms))
    }
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Default)]
struct Tables {
    /// Records with their deletion time (TTL), if any.
    records: HashMap<Address, (InstanceState, Option<u64>)>,
    /// Spilled dedup entries with their expiry.
    dedup: HashMap<(Address, DedupKey), (DedupEntry, u64)>,
    /// The latest cancellation of each `(sender, token)`.
    cancels: HashMap<(Address, String), Issued>,
}

/// In-memory [`StateStore`] with the same precondition semantics as the real ones, the
/// same atomic commit (record, spilled dedup entries, cancellations) and TTLs that are
/// only acted on when [`MemoryStore::delete_expired`] says so, as DynamoDB's lag.
#[derive(Debug, Default)]
pub struct MemoryStore {
    tables: Mutex<Tables>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, address: &Address) -> Option<InstanceState> {
        lock(&self.tables)
            .records
            .get(address)
            .map(|(s, _)| s.clone())
    }

    pub fn len(&self) -> usize {
        lock(&self.tables).records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Addresses with a record.
    pub fn addresses(&self) -> Vec<Address> {
        lock(&self.tables).records.keys().cloned().collect()
    }

    /// Whether a timer is cancelled: its sender committed a cancellation of its token
    /// after issuing it.
    pub fn is_cancelled(&self, timer: &Timer) -> bool {
        let (Some(token), Some(sender)) = (&timer.cancellation_token, &timer.envelope.caller)
        else {
            return false;
        };
        lock(&self.tables)
            .cancels
            .get(&(sender.clone(), token.clone()))
            .is_some_and(|cancel| timer.issued < *cancel)
    }

    /// Deletes what a TTL process would: every record and spilled entry whose deletion
    /// time plus `lag()` (asked per item: DynamoDB deletes within about 48 h) has come
    /// at `now_ms`. Returns the addresses whose records went.
    pub fn delete_expired(&self, now_ms: u64, lag: &mut dyn FnMut() -> u64) -> Vec<Address> {
        let mut tables = lock(&self.tables);
        let mut gone = Vec::new();
        tables.records.retain(|address, (_, ttl)| {
            let keep = ttl.is_none_or(|at| at.saturating_add(lag()) > now_ms);
            if !keep {
                gone.push(address.clone());
            }
            keep
        });
        tables
            .dedup
            .retain(|_, (_, at)| at.saturating_add(lag()) > now_ms);
        gone
    }

    /// Deletes one record, as an operator might.
    pub fn delete(&self, address: &Address) {
        lock(&self.tables).records.remove(address);
    }

    /// Applies one commit synchronously (the async port wraps this).
    pub fn apply(&self, commit: &Commit) -> Result<(), CommitError> {
        let mut tables = lock(&self.tables);
        let current = tables.records.get(&commit.address).map(|(s, _)| s.version);
        let holds = match commit.precondition {
            Precondition::DoesNotExist => current.is_none(),
            Precondition::MatchesVersion(v) => current == Some(v),
        };
        if !holds {
            return Err(CommitError::Conflict(commit.address.clone()));
        }
        for spilled in &commit.spill {
            tables.dedup.insert(
                (commit.address.clone(), spilled.entry.key()),
                (spilled.entry.clone(), spilled.expires_at_ms),
            );
        }
        for (token, issued) in commit.cancels() {
            tables
                .cancels
                .insert((commit.address.clone(), token.to_string()), issued);
        }
        tables.records.insert(
            commit.address.clone(),
            (commit.state.clone(), commit.delete_after_ms),
        );
        Ok(())
    }
}

impl StateStore for MemoryStore {
    async fn load(&self, addresses: &[Address]) -> Result<Vec<Option<InstanceState>>, StoreError> {
        let tables = lock(&self.tables);
        Ok(addresses
            .iter()
            .map(|a| tables.records.get(a).map(|(s, _)| s.clone()))
            .collect())
    }

    async fn load_dedup(
        &self,
        lookups: &[(Address, Vec<DedupKey>)],
    ) -> Result<Vec<Vec<DedupEntry>>, StoreError> {
        let tables = lock(&self.tables);
        Ok(lookups
            .iter()
            .map(|(address, keys)| {
                keys.iter()
                    .filter_map(|k| tables.dedup.get(&(address.clone(), k.clone())))
                    .map(|(entry, _)| entry.clone())
                    .collect()
            })
            .collect())
    }

    async fn commit(&self, commits: &[Commit]) -> Vec<Result<(), CommitError>> {
        commits.iter().map(|c| self.apply(c)).collect()
    }
}

/// A scheduled delayed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    pub due_at_ms: u64,
    pub envelope: Envelope,
    pub cancellation_token: Option<String>,
    /// Where in its sender's history it was issued, to order it against cancels.
    pub issued: Issued,
}

#[derive(Debug, Default)]
struct Queues {
    inbox: VecDeque<Envelope>,
    timers: Vec<Timer>,
    egress: Vec<EgressRecord>,
}

/// In-memory [`Transport`]: a FIFO inbox, a timer list and an egress log.
#[derive(Debug, Default)]
pub struct MemoryTransport {
    queues: Mutex<Queues>,
}

impl MemoryTransport {
    pub fn new() -> Self {
        Self::default()
    }

    /// Enqueues a message as an ingress would.
    pub fn enqueue(&self, envelope: Envelope) {
        lock(&self.queues).inbox.push_back(envelope);
    }

    /// Takes up to `max` messages from the head of the inbox.
    pub fn take_inbox(&self, max: usize) -> Vec<Envelope> {
        let mut q = lock(&self.queues);
        let n = max.min(q.inbox.len());
        q.inbox.drain(..n).collect()
    }

    /// Puts messages back at the head of the inbox, in order (a failed delivery).
    pub fn requeue_front(&self, envelopes: Vec<Envelope>) {
        let mut q = lock(&self.queues);
        for e in envelopes.into_iter().rev() {
            q.inbox.push_front(e);
        }
    }

    pub fn inbox_len(&self) -> usize {
        lock(&self.queues).inbox.len()
    }

    /// Moves the timers due at `now_ms` into the inbox, earliest first, unless
    /// `cancelled` (cancellations are stored with their commit:
    /// [`MemoryStore::is_cancelled`]); returns the envelopes delivered.
    pub fn fire_due(&self, now_ms: u64, cancelled: impl Fn(&Timer) -> bool) -> Vec<Envelope> {
        let mut q = lock(&self.queues);
        let (mut due, later): (Vec<Timer>, Vec<Timer>) =
            q.timers.drain(..).partition(|t| t.due_at_ms <= now_ms);
        q.timers = later;
        due.sort_by_key(|t| t.due_at_ms);
        let fired: Vec<Envelope> = due
            .into_iter()
            .filter(|t| !cancelled(t))
            .map(|t| t.envelope)
            .collect();
        q.inbox.extend(fired.iter().cloned());
        fired
    }

    pub fn pending_timers(&self) -> Vec<Timer> {
        let mut timers = lock(&self.queues).timers.clone();
        timers.sort_by_key(|t| t.due_at_ms);
        timers
    }

    pub fn next_due_ms(&self) -> Option<u64> {
        lock(&self.queues).timers.iter().map(|t| t.due_at_ms).min()
    }

    pub fn take_egress(&self) -> Vec<EgressRecord> {
        std::mem::take(&mut lock(&self.queues).egress)
    }

    fn apply(q: &mut Queues, entry: &OutboxEntry) {
        match entry {
            OutboxEntry::Send(envelope) => q.inbox.push_back(envelope.clone()),
            OutboxEntry::SendAfter {
                envelope,
                due_at_ms,
                cancellation_token,
                issued,
            } => {
                // Re-sends carry the same id: scheduling twice is scheduling once.
                if !q.timers.iter().any(|t| t.envelope.id == envelope.id) {
                    q.timers.push(Timer {
                        due_at_ms: *due_at_ms,
                        envelope: envelope.clone(),
                        cancellation_token: cancellation_token.clone(),
                        issued: *issued,
                    });
                }
            }
            // In effect from its commit (the store holds it); nothing to do here.
            OutboxEntry::Cancel { .. } => {}
            OutboxEntry::Egress(record) => q.egress.push(record.clone()),
        }
    }
}

impl Transport for MemoryTransport {
    async fn send(&self, outboxes: &[&[OutboxEntry]]) -> Vec<Result<(), TransportError>> {
        let mut q = lock(&self.queues);
        outboxes
            .iter()
            .map(|outbox| {
                outbox.iter().for_each(|e| Self::apply(&mut q, e));
                Ok(())
            })
            .collect()
    }
}

/// A clock stopped at that instant (milliseconds since the Unix epoch).
impl Clock for u64 {
    fn now_ms(&self) -> u64 {
        *self
    }
}
