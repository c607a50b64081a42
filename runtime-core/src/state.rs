//! The persisted record of one virtual instance.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dedup::Dedup;
use crate::message::{MessageId, OutboxEntry};
use crate::value::TypedValue;

/// One state cell as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cell {
    pub value: TypedValue,
    pub expires_at_ms: Option<u64>,
}

impl Cell {
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_none_or(|at| now_ms < at)
    }
}

/// Everything one conditional write stores for an instance: its state, the dedup
/// record, and the last commit's inputs and outbox (re-sent if one of those inputs is
/// delivered again, because the commit may have landed without its sends).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceState {
    pub version: u64,
    pub cells: BTreeMap<String, Cell>,
    pub dedup: Dedup,
    pub last_inputs: Vec<MessageId>,
    pub outbox: Vec<OutboxEntry>,
}

/// Stored bytes that are not an instance record.
#[derive(Debug, thiserror::Error)]
#[error("corrupt instance record: {0}")]
pub struct CorruptState(String);

impl InstanceState {
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing owned, serde-derived data into a Vec has no failure mode.
        postcard::to_stdvec(self).expect("instance state serializes")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CorruptState> {
        postcard::from_bytes(bytes).map_err(|e| CorruptState(e.to_string()))
    }

    /// The earliest time a live cell expires, for TTL attributes and clean-up timers.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.cells.values().filter_map(|c| c.expires_at_ms).min()
    }
}
