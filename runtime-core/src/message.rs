//! Messages in flight and the outbox a commit produces.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::typename::{Address, TypeName};
use crate::value::TypedValue;

/// A deterministic message id. Its shape says how receivers deduplicate it (see
/// [`crate::dedup`]).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MessageId {
    /// From a source whose messages reach every receiver in `(seq, index)` order: a
    /// function's direct sends (`source` = sender address, `seq` = the sender's committed
    /// version, `index` = position in that commit's outbox), or an ordered ingress
    /// (`seq` = its durable sequence number).
    Ordered {
        source: Arc<str>,
        seq: u64,
        index: u32,
    },
    /// From a source without per-receiver order: delayed messages (they overtake and
    /// are overtaken) and ingresses keyed by a record id or client key.
    Keyed(String),
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageId::Ordered { source, seq, index } => write!(f, "{source}@{seq}.{index}"),
            MessageId::Keyed(key) => f.write_str(key),
        }
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// A message to one address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: MessageId,
    pub target: Address,
    /// The sending function; `None` for ingress.
    pub caller: Option<Address>,
    pub value: TypedValue,
}

/// A record for a named egress, with an id stable across re-sends so downstream
/// consumers can deduplicate (egress is at-least-once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressRecord {
    pub id: String,
    pub egress: TypeName,
    pub value: TypedValue,
}

/// Where in its sender's history an effect was issued: the commit version and the
/// index in that commit's outbox. Orders a cancellation against the delayed sends it
/// may cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Issued {
    pub version: u64,
    pub index: u32,
}

/// One effect of a commit, to be executed by the host after the commit is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutboxEntry {
    Send(Envelope),
    /// Deliver `envelope` no earlier than `due_at_ms`, unless cancelled first.
    SendAfter {
        envelope: Envelope,
        due_at_ms: u64,
        cancellation_token: Option<String>,
        issued: Issued,
    },
    /// Cancel the delayed messages `sender` scheduled under `token` before `issued`
    /// that are still pending.
    Cancel {
        sender: Address,
        token: String,
        issued: Issued,
    },
    Egress(EgressRecord),
}
