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

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableTable};
use statefun_core::ports::Clock;
use statefun_core::{Envelope, MessageId, TypedValue};
use tracing::{error, info};

use crate::admission::{self, Admission};
use crate::engine::{Command, HTTP_INGRESS, IngressRequest};
use crate::metrics::{ACCEPT_FILE, ENGINE_FILE, Metrics};
use crate::store::{self, INBOX, INGRESS_KEYS, InboxEntry, META, NEXT_SEQ};
use crate::{EmbeddedError, KeyReused};

/// The most requests one commit carries.
const MAX_GROUP: usize = 4_096;

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
    /// `accepted.redb`: this thread is its only writer. None after a failed write: the
    /// storage engine refuses every operation after an I/O error until the file is
    /// opened again (and repaired to its last commit).
    pub(crate) db: Option<Database>,
    pub(crate) path: std::path::PathBuf,
    pub(crate) seqs: Arc<AtomicU64>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) engine: Sender<Command>,
    pub(crate) metrics: Arc<Metrics>,
    /// How long a settled row's removal may stay in memory only.
    pub(crate) flush_within: Duration,
    /// How long an idempotency key is remembered.
    pub(crate) key_retention: Duration,
    /// Where a request's room in the queue goes back when it is not enqueued.
    pub(crate) admission: Arc<Admission>,
    /// The file's rows the engine has (or had) in hand: a reopened file's other rows
    /// are commits that landed although they reported a failure.
    pub(crate) outstanding: HashSet<u64>,
    /// Rows removed by commits that are not durable yet: a reopened file may have them
    /// back, and they are removed again, never handed to the engine.
    pub(crate) removed: HashSet<u64>,
    /// The free bytes a disk that failed must have again before accepting resumes.
    pub(crate) room: u64,
}

/// How often a file that cannot be written is tried again.
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// Whether the file system holding `path` has `bytes` free for us (where this can be
/// told: Linux's `statvfs`; elsewhere a probe's commit alone decides). A disk that
/// takes a small commit but not a message is still full.
fn has_room(path: &std::path::Path, bytes: u64) -> bool {
    #[cfg(target_os = "linux")]
    if let Ok(fs) = rustix::fs::statvfs(path) {
        return fs.f_bavail.saturating_mul(fs.f_frsize) >= bytes;
    }
    let _ = (path, bytes);
    true
}

impl Acceptor {
    fn db(&mut self) -> Result<&Database, EmbeddedError> {
        if self.db.is_none() {
            self.db = Some(crate::layout::reopen_db(&self.path)?);
        }
        self.db
            .as_ref()
            .ok_or_else(|| EmbeddedError::NotDurable("the accept file is closed".into()))
    }

    /// A write failed: the file is closed (to be opened again) and the fault shown.
    fn failed(&mut self, e: &EmbeddedError) {
        self.db = None;
        let reason = e.to_string();
        if self
            .metrics
            .storage_fault(ACCEPT_FILE, Some(reason.clone()))
        {
            error!(%reason, "the accept file cannot be written: POSTs are answered 507 until it can");
        }
    }

    /// Tries the file again: opens it (the storage engine repairs it to its last
    /// commit), commits durably, and hands the engine rows that landed unreported. The
    /// fault is over once that works and the disk has room for a few more messages.
    /// False while the disk has no room yet (the fault stands as it was).
    fn probe(&mut self, settled: &mut Vec<u64>) -> Result<bool, EmbeddedError> {
        if !has_room(&self.path, self.room) {
            return Ok(false);
        }
        let db = self.db()?;
        let txn = db.begin_write()?;
        let mut landed = Vec::new();
        {
            txn.open_table(META)?
                .insert(NEXT_SEQ, self.seqs.load(Ordering::SeqCst))?;
            for row in txn.open_table(INBOX)?.iter()? {
                let (seq, bytes) = row?;
                let seq_row = seq.value();
                if self.removed.contains(&seq_row) || settled.contains(&seq_row) {
                    // Settled by the engine; its removal was lost with the reopen.
                    if !settled.contains(&seq_row) {
                        settled.push(seq_row);
                    }
                } else if !self.outstanding.contains(&seq_row) {
                    let entry: InboxEntry =
                        store::read(&format!("inbox row {}", seq.value()), bytes.value())?;
                    landed.push((seq.value(), entry));
                }
            }
        }
        txn.commit()?;
        // What removals it held are in `settled` again.
        self.removed.clear();
        if self.metrics.storage_fault(ACCEPT_FILE, None) {
            info!(
                landed = landed.len(),
                "the accept file can be written again: accepting"
            );
        }
        for (row, entry) in &landed {
            self.outstanding.insert(*row);
            self.admission.add(
                &entry.envelope.target.function_type,
                admission::footprint(&entry.envelope.value),
            );
        }
        if !landed.is_empty() {
            let _ = self.engine.send(Command::Accepted(landed));
        }
        Ok(true)
    }

    /// Accepts until shut down (or every handle is gone). `settled` are rows to remove
    /// at once (found stale at start-up).
    pub(crate) fn run(mut self, rx: Receiver<Accept>, mut settled: Vec<u64>) {
        // Keys are forgotten by age while running, a sixteenth of the retention late at
        // most: the file stays bounded by the traffic of one retention, however long
        // the runtime runs.
        let prune_every = (self.key_retention / 16).max(Duration::from_millis(10));
        let mut next_prune_ms = 0;
        // Requests received and not yet accepted (more than one commit carries).
        let mut waiting: Vec<IngressRequest> = Vec::new();
        // Since when a commit's removals are in memory only.
        let mut unflushed: Option<Instant> = None;
        // While the file cannot be written: when it is tried next.
        let mut next_probe: Option<Instant> = None;
        let mut open = true;
        while open {
            if next_probe.is_some_and(|at| at <= Instant::now()) {
                match self.probe(&mut settled) {
                    Ok(true) => next_probe = None,
                    Ok(false) => next_probe = Some(Instant::now() + PROBE_EVERY),
                    Err(e) => {
                        self.failed(&e);
                        next_probe = Some(Instant::now() + PROBE_EVERY);
                    }
                }
            }
            let now = self.clock.now_ms();
            if next_probe.is_none() && now >= next_prune_ms {
                if let Err(e) = self.prune_keys() {
                    self.failed(&e);
                    next_probe = Some(Instant::now() + PROBE_EVERY);
                }
                next_prune_ms = now.saturating_add(prune_every.as_millis() as u64);
            }
            let wait = if let Some(at) = next_probe {
                Some(at.saturating_duration_since(Instant::now()))
            } else if !settled.is_empty() || !waiting.is_empty() {
                Some(Duration::ZERO)
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
            let group: Vec<IngressRequest> =
                waiting.drain(..waiting.len().min(MAX_GROUP)).collect();
            let group = if next_probe.is_some() || self.metrics.faulted(ENGINE_FILE) {
                // Answered at once with the fault; the file is tried again on its own.
                // While the engine cannot write, what is accepted cannot be applied, and
                // accepting would take the disk space it needs.
                self.refuse(group);
                if next_probe.is_some() {
                    continue;
                }
                // The rows the engine settles are still removed, as they come.
                Vec::new()
            } else {
                group
            };
            let flush = unflushed.is_some_and(|since| since.elapsed() >= self.flush_within)
                || (!open && unflushed.is_some());
            if group.is_empty() && settled.is_empty() && !flush {
                continue;
            }
            // Accepts are durable before their 202; removals when due, and at shutdown.
            let durable = !group.is_empty() || flush || !open;
            match self.commit(group, &settled, durable) {
                Ok(()) => {
                    if durable {
                        self.removed.clear();
                        unflushed = None;
                    } else {
                        self.removed.extend(settled.iter().copied());
                        unflushed = unflushed.or(Some(Instant::now()));
                    }
                    settled.clear();
                }
                // The group's requests were answered with the reason; the removals are
                // made with the next commit that works.
                Err(e) => {
                    self.failed(&e);
                    next_probe = Some(Instant::now() + PROBE_EVERY);
                }
            }
        }
    }

    /// Answers requests while the file cannot be written: 507 with the reason.
    fn refuse(&self, group: Vec<IngressRequest>) {
        let reason = self.metrics.faults().join("; ");
        for request in group {
            self.admission.release(
                &request.target.function_type,
                admission::footprint(&request.value),
            );
            let _ = request
                .reply
                .send(Err(EmbeddedError::NotDurable(reason.clone())));
        }
    }

    /// Forgets idempotency keys older than the retention (a removal lost to a crash is
    /// made again: no fsync of its own).
    fn prune_keys(&mut self) -> Result<(), EmbeddedError> {
        let horizon = self
            .clock
            .now_ms()
            .saturating_sub(self.key_retention.as_millis() as u64);
        let mut txn = self.db()?.begin_write()?;
        txn.set_durability(Durability::None)?;
        store::prune_ingress_keys(&txn, horizon)?;
        txn.commit()?;
        Ok(())
    }

    /// One commit for a group of requests (durable when there are any) and the rows
    /// the engine settled, then the requests' answers. When the commit fails, every
    /// request of the group is answered with the reason (nothing of it was accepted)
    /// and its room in the queue given back.
    fn commit(
        &mut self,
        group: Vec<IngressRequest>,
        settled: &[u64],
        durable: bool,
    ) -> Result<(), EmbeddedError> {
        let label = if group.is_empty() { "settle" } else { "accept" };
        let mut answers: Vec<Answer> = group
            .into_iter()
            .map(|request| Answer {
                room: (
                    request.target.function_type.clone(),
                    admission::footprint(&request.value),
                ),
                request: Some(request),
                result: None,
            })
            .collect();
        let started = Instant::now();
        let written = self.write(&mut answers, settled, durable);
        let result = match written {
            Ok(accepted) => {
                self.metrics.commit(label, started.elapsed());
                self.metrics.accepted.inc_by(accepted.len() as u64);
                self.outstanding.extend(accepted.iter().map(|(s, _)| *s));
                for row in settled {
                    self.outstanding.remove(row);
                }
                if !accepted.is_empty() {
                    // The engine may have stopped; the messages are in the inbox all the same.
                    let _ = self.engine.send(Command::Accepted(accepted));
                }
                Ok(())
            }
            Err(e) => Err(e),
        };
        let failure = result.as_ref().err().map(ToString::to_string);
        for answer in answers {
            let enqueued = failure.is_none() && answer.result.as_ref().is_some_and(|r| r.1);
            if !enqueued {
                self.admission.release(&answer.room.0, answer.room.1);
            }
            let reply = match answer.result.filter(|_| failure.is_none()) {
                Some((result, _)) => result.map_err(EmbeddedError::from),
                None => Err(EmbeddedError::NotDurable(
                    failure.clone().unwrap_or_default(),
                )),
            };
            if let Some(request) = answer.request {
                // The client may have gone away; the outcome stands all the same.
                let _ = request.reply.send(reply);
            }
        }
        result
    }

    /// The writes of one commit; the rows it accepts. Each answer gets its result and
    /// whether it enqueued a row.
    fn write(
        &mut self,
        answers: &mut [Answer],
        settled: &[u64],
        durable: bool,
    ) -> Result<Vec<(u64, InboxEntry)>, EmbeddedError> {
        let now = self.clock.now_ms();
        let seqs = self.seqs.clone();
        let mut txn = self.db()?.begin_write()?;
        if !durable {
            txn.set_durability(Durability::None)?;
        }
        let mut accepted: Vec<(u64, InboxEntry)> = Vec::new();
        {
            let mut inbox = txn.open_table(INBOX)?;
            for row in settled {
                inbox.remove(row)?;
            }
            let mut keys = txn.open_table(INGRESS_KEYS)?;
            for answer in answers.iter_mut() {
                let Some(req) = answer.request.as_mut() else {
                    continue;
                };
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
                answer.result = Some(match (existing, keyed) {
                    (Some((s, true)), _) => (Ok(id(s)), false),
                    (Some((_, false)), Some((key, _, _))) => (
                        Err(KeyReused {
                            key,
                            target: req.target.clone(),
                        }),
                        false,
                    ),
                    (_, keyed) => {
                        let s = seqs.fetch_add(1, Ordering::SeqCst);
                        let entry = InboxEntry {
                            envelope: Envelope {
                                id: id(s),
                                target: req.target.clone(),
                                caller: None,
                                // Moved, not copied: the answer needs only its reply now.
                                value: TypedValue {
                                    typename: req.value.typename.clone(),
                                    value: req.value.value.take(),
                                },
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
                        (Ok(id(s)), true)
                    }
                });
            }
            txn.open_table(META)?
                .insert(NEXT_SEQ, seqs.load(Ordering::SeqCst))?;
        }
        txn.commit()?;
        Ok(accepted)
    }
}

/// A request of a commit's group and what became of it: its result and whether it
/// enqueued a row.
struct Answer {
    request: Option<IngressRequest>,
    room: (statefun_core::TypeName, usize),
    result: Option<(Result<MessageId, KeyReused>, bool)>,
}
