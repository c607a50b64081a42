//! The accept path: the HTTP ingress's messages are written by a thread of their own
//! into a file of their own (`accepted.redb`), many requests per durable commit (group
//! commit), and each is answered once its commit is on disk; the engine learns of them
//! after that commit. A 202 so waits for one write of its own, never for the engine's
//! round nor for the engine's write lock. Sequence numbers come from one counter shared
//! with the engine, so an accepted message's row and its message id
//! (`ingress/http@<seq>.0`) never collide with the engine's own rows.
//!
//! The engine settles a row (applied, moved into its own inbox for a retry, or
//! dead-lettered) in its own commit and then hands the row number back here; the row
//! goes with this thread's next commit. That removal needs no fsync of its own: one
//! lost to a crash brings the message again, and the receiver's dedup recognises it as
//! applied — the "commit landed, acknowledgement did not" case every path handles. It
//! is made durable with the next accept, and at the latest after `flush_within`
//! (shorter than the dedup retention), and at shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableTable};
use statefun_core::ports::Clock;
use statefun_core::{Envelope, MessageId, TypedValue};
use tracing::error;

use crate::engine::{Command, HTTP_INGRESS, IngressRequest};
use crate::metrics::Metrics;
use crate::store::{self, INBOX, INGRESS_KEYS, InboxEntry, META, NEXT_SEQ};
use crate::{EmbeddedError, KeyReused};

/// The most requests one commit carries.
const MAX_GROUP: usize = 4_096;
/// Accepting waits while the engine has this many messages queued (backpressure: the
/// inbox is on disk, but the engine keeps its queue in memory).
const MAX_QUEUED: i64 = 200_000;

pub(crate) enum Accept {
    Request(IngressRequest),
    /// Rows the engine settled in a commit of its own.
    Settled(Vec<u64>),
    Shutdown,
}

/// What identifies a message's content for an idempotency key: its type and bytes.
fn message_digest(value: &TypedValue) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(value.typename.as_str().as_bytes());
    h.update([0]);
    h.update(value.value.as_deref().unwrap_or_default());
    h.finalize().into()
}

pub(crate) struct Acceptor {
    /// `accepted.redb`: this thread is its only writer.
    pub(crate) db: Database,
    pub(crate) seqs: Arc<AtomicU64>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) engine: Sender<Command>,
    pub(crate) metrics: Arc<Metrics>,
    /// How long a settled row's removal may stay in memory only.
    pub(crate) flush_within: Duration,
    /// How long an idempotency key is remembered.
    pub(crate) key_retention: Duration,
}

type Replies = Vec<(
    tokio::sync::oneshot::Sender<Result<MessageId, KeyReused>>,
    Result<MessageId, KeyReused>,
)>;

impl Acceptor {
    /// Accepts until shut down (or every handle is gone). `settled` are rows to remove
    /// at once (found stale at start-up).
    pub(crate) fn run(self, rx: Receiver<Accept>, mut settled: Vec<u64>) {
        // Keys are forgotten by age while running, a sixteenth of the retention late at
        // most: the file stays bounded by the traffic of one retention, however long
        // the runtime runs.
        let prune_every = (self.key_retention / 16).max(Duration::from_millis(10));
        let mut next_prune_ms = 0;
        // Requests received and not yet accepted (held back while the engine is full).
        let mut waiting: Vec<IngressRequest> = Vec::new();
        // Since when a commit's removals are in memory only.
        let mut unflushed: Option<Instant> = None;
        let mut open = true;
        while open {
            let now = self.clock.now_ms();
            if now >= next_prune_ms {
                if let Err(e) = self.prune_keys() {
                    error!(reason = %e, "forgetting expired idempotency keys failed");
                }
                next_prune_ms = now.saturating_add(prune_every.as_millis() as u64);
            }
            let full = self.metrics.inbox_depth.get() > MAX_QUEUED;
            let wait = if !settled.is_empty() {
                Some(Duration::ZERO)
            } else if full && !waiting.is_empty() {
                Some(Duration::from_millis(1))
            } else {
                unflushed.map(|since| self.flush_within.saturating_sub(since.elapsed()))
            };
            // Wakes for the next prune even when nothing arrives.
            let first = rx.recv_timeout(wait.map_or(prune_every, |w| w.min(prune_every)));
            // Every handle gone counts as a shutdown.
            let first = match first {
                Ok(message) => Some(message),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => Some(Accept::Shutdown),
            };
            for message in first
                .into_iter()
                .chain(std::iter::from_fn(|| rx.try_recv().ok()))
            {
                match message {
                    Accept::Request(r) => waiting.push(r),
                    Accept::Settled(rows) => settled.extend(rows),
                    Accept::Shutdown => open = false,
                }
            }
            let group: Vec<IngressRequest> = if full {
                Vec::new()
            } else {
                waiting.drain(..waiting.len().min(MAX_GROUP)).collect()
            };
            let flush = unflushed.is_some_and(|since| since.elapsed() >= self.flush_within)
                || (!open && unflushed.is_some());
            if group.is_empty() && settled.is_empty() && !flush {
                continue;
            }
            // Accepts are durable before their 202; removals when due, and at shutdown.
            let durable = !group.is_empty() || flush || !open;
            match self.commit(group, std::mem::take(&mut settled), durable) {
                Ok(()) if durable => unflushed = None,
                Ok(()) => unflushed = unflushed.or(Some(Instant::now())),
                // The requests of the group are answered with the error (their senders
                // see the engine as gone, a 503); nothing of the group was accepted.
                // Removals that failed come again after a restart, as applied.
                Err(e) => error!(reason = %e, "accepting messages failed"),
            }
        }
    }

    /// Forgets idempotency keys older than the retention (a removal lost to a crash is
    /// made again: no fsync of its own).
    fn prune_keys(&self) -> Result<(), EmbeddedError> {
        let horizon = self
            .clock
            .now_ms()
            .saturating_sub(self.key_retention.as_millis() as u64);
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        store::prune_ingress_keys(&txn, horizon)?;
        txn.commit()?;
        Ok(())
    }

    /// One commit for a group of requests (durable when there are any) and the rows
    /// the engine settled, then the requests' answers.
    fn commit(
        &self,
        group: Vec<IngressRequest>,
        settled: Vec<u64>,
        durable: bool,
    ) -> Result<(), EmbeddedError> {
        let now = self.clock.now_ms();
        let label = if group.is_empty() { "settle" } else { "accept" };
        let mut txn = self.db.begin_write()?;
        if !durable {
            txn.set_durability(Durability::None)?;
        }
        let mut accepted: Vec<(u64, InboxEntry)> = Vec::new();
        let mut replies: Replies = Vec::new();
        {
            let mut inbox = txn.open_table(INBOX)?;
            for row in settled {
                inbox.remove(row)?;
            }
            let mut keys = txn.open_table(INGRESS_KEYS)?;
            for req in group {
                let id = |seq| MessageId::Ordered {
                    source: HTTP_INGRESS.into(),
                    seq,
                    index: 0,
                };
                // A keyed request: the key is scoped to its target, and the message it
                // was first used for is remembered by digest.
                let keyed = req.key.as_ref().map(|key| {
                    (
                        key.clone(),
                        store::address_key(&req.target),
                        message_digest(&req.value),
                    )
                });
                let existing = match &keyed {
                    Some((key, target, digest)) => keys
                        .get((target.as_slice(), key.as_str()))?
                        .map(|v| (v.value().0, v.value().2 == digest.as_slice())),
                    None => None,
                };
                // A key already used in this group counts as well (its row is above).
                let result = match (existing, keyed) {
                    (Some((s, true)), _) => Ok(id(s)),
                    (Some((_, false)), Some((key, _, _))) => Err(KeyReused {
                        key,
                        target: req.target,
                    }),
                    (_, keyed) => {
                        let s = self.seqs.fetch_add(1, Ordering::SeqCst);
                        let entry = InboxEntry {
                            envelope: Envelope {
                                id: id(s),
                                target: req.target,
                                caller: None,
                                value: req.value,
                            },
                            attempts: 0,
                            first_failed_ms: None,
                        };
                        inbox.insert(s, store::record(&entry).as_slice())?;
                        if let Some((key, target, digest)) = keyed {
                            keys.insert(
                                (target.as_slice(), key.as_str()),
                                (s, now, digest.as_slice()),
                            )?;
                        }
                        accepted.push((s, entry));
                        Ok(id(s))
                    }
                };
                replies.push((req.reply, result));
            }
            txn.open_table(META)?
                .insert(NEXT_SEQ, self.seqs.load(Ordering::SeqCst))?;
        }
        let started = Instant::now();
        txn.commit()?;
        self.metrics.commit(label, started.elapsed());
        self.metrics.accepted.inc_by(accepted.len() as u64);
        if !accepted.is_empty() {
            // The engine may have stopped; the messages are in the inbox all the same.
            let _ = self.engine.send(Command::Accepted(accepted));
        }
        for (reply, result) in replies {
            // The client may have gone away; the message is accepted all the same.
            let _ = reply.send(result);
        }
        Ok(())
    }
}
