//! The accept path: the HTTP ingress's messages are written into the inbox by a thread
//! of their own, many requests per durable commit (group commit), and each answered
//! once its commit is on disk; the engine learns of them after that commit. A 202 so
//! waits for one write of its own, never for the engine's round (its invocations and
//! commits). Sequence numbers come from one counter shared with the engine, so an
//! accepted message's inbox row and its message id (`ingress/http@<seq>.0`) never
//! collide with the engine's own rows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::Instant;

use redb::{Database, ReadableTable};
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
    pub(crate) db: Arc<Database>,
    pub(crate) seqs: Arc<AtomicU64>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) engine: Sender<Command>,
    pub(crate) metrics: Arc<Metrics>,
}

type Replies = Vec<(
    tokio::sync::oneshot::Sender<Result<MessageId, KeyReused>>,
    Result<MessageId, KeyReused>,
)>;

impl Acceptor {
    /// Accepts until shut down (or every handle is gone).
    pub(crate) fn run(self, rx: Receiver<Accept>) {
        let mut open = true;
        while open {
            while self.metrics.inbox_depth.get() > MAX_QUEUED {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let mut group = Vec::new();
            match rx.recv() {
                Ok(Accept::Request(r)) => group.push(r),
                Ok(Accept::Shutdown) | Err(_) => break,
            }
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(Accept::Request(r)) => group.push(r),
                    Ok(Accept::Shutdown) => {
                        open = false;
                        break;
                    }
                    Err(_) => break,
                }
            }
            if let Err(e) = self.commit(group) {
                // The requests of the group are answered with the error (their senders
                // see the engine as gone, a 503); nothing of the group was accepted.
                error!(reason = %e, "accepting messages failed");
            }
        }
    }

    /// One durable commit for a group of requests, then their answers.
    fn commit(&self, group: Vec<IngressRequest>) -> Result<(), EmbeddedError> {
        let now = self.clock.now_ms();
        let txn = self.db.begin_write()?;
        let mut accepted: Vec<(u64, InboxEntry)> = Vec::new();
        let mut replies: Replies = Vec::new();
        {
            let mut inbox = txn.open_table(INBOX)?;
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
                        };
                        inbox.insert(s, store::encode(&entry).as_slice())?;
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
        self.metrics.commit("accept", started.elapsed());
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
