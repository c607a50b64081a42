//! The persisted record of one virtual instance.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dedup::Dedup;
use crate::format::FormatError;
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
    /// The message at the head of this address that keeps asking to be retried, and
    /// how often it was tried ([`crate::failure`]).
    pub failing: Option<Failing>,
}

/// Tries of the message that blocks an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failing {
    pub id: MessageId,
    pub attempts: u32,
}

/// The marker of the test-only format 2 (`test-format-2`): format 1's bytes behind it,
/// which a format-1 reader cannot take for a record.
#[cfg(feature = "test-format-2")]
const FORMAT_2_MARKER: &[u8] = b"\xF2statefun-format-2";

impl crate::format::Versioned for InstanceState {
    const WHAT: &'static str = "instance record";
    /// Format 1: the postcard struct as written since the record gained `failing`
    /// (d40e810 and every build before this version tag existed).
    #[cfg(not(feature = "test-format-2"))]
    const FORMAT: u32 = 1;
    #[cfg(feature = "test-format-2")]
    const FORMAT: u32 = 2;

    fn encode(&self) -> Vec<u8> {
        // Serializing owned, serde-derived data into a Vec has no failure mode.
        let bytes = postcard::to_stdvec(self).expect("instance state serializes");
        #[cfg(feature = "test-format-2")]
        let bytes = [FORMAT_2_MARKER, &bytes].concat();
        bytes
    }

    #[cfg(feature = "test-format-2")]
    fn encode_as(&self, format: u32) -> Option<Vec<u8>> {
        match format {
            1 => postcard::to_stdvec(self).ok(),
            2 => Some(self.encode()),
            _ => None,
        }
    }

    fn decode_current(format: u32, bytes: &[u8]) -> Result<Self, FormatError> {
        #[cfg(feature = "test-format-2")]
        if format == 2 {
            let body = bytes
                .strip_prefix(FORMAT_2_MARKER)
                .ok_or_else(|| FormatError::Corrupt {
                    what: Self::WHAT,
                    format,
                    reason: "no format-2 marker".into(),
                })?;
            return crate::format::postcard(Self::WHAT, format, body);
        }
        crate::format::postcard(Self::WHAT, format, bytes)
    }
}

impl InstanceState {
    /// The record in today's format ([`InstanceState::FORMAT`](crate::format::Versioned::FORMAT)).
    pub fn to_bytes(&self) -> Vec<u8> {
        crate::format::Versioned::encode(self)
    }

    /// Reads a record of `format` (an older one is migrated; a newer one is refused
    /// as [`FormatError::Newer`]).
    pub fn from_bytes(format: u32, bytes: &[u8]) -> Result<Self, FormatError> {
        crate::format::Versioned::decode_format(format, bytes)
    }

    /// The earliest time a live cell expires, for TTL attributes and clean-up timers.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.cells.values().filter_map(|c| c.expires_at_ms).min()
    }

    /// When a record written at `now_ms` may be deleted (a DynamoDB TTL): once every
    /// cell has expired and not before its dedup record may be forgotten; `None` while
    /// a cell never expires. Deleting it is safe because versions never restart
    /// ([`next_version`]) and nothing it remembers can still be needed.
    pub fn delete_after_ms(&self, now_ms: u64, retention_ms: u64) -> Option<u64> {
        if self.cells.values().any(|c| c.expires_at_ms.is_none()) {
            return None;
        }
        let last_cell = self
            .cells
            .values()
            .filter_map(|c| c.expires_at_ms)
            .max()
            .unwrap_or(0);
        Some(last_cell.max(now_ms.saturating_add(retention_ms)))
    }
}

/// Commit stamps per millisecond of wall clock in a version.
pub const VERSIONS_PER_MS: u64 = 1_000;

/// The version of the commit after `previous` at `now_ms`: a hybrid logical clock,
/// `max(previous + 1, now_ms × 1000)`.
///
/// Versions are what message, egress and cancellation ids derive from, so they must
/// never repeat for an address *for the life of a deployment*, even when its record
/// disappears (TTL, deletion) or goes back in time (a restore) and `previous` starts
/// again from 0 or from an old value. A plain counter would restart at 1, and receivers
/// would drop the sender's next messages as already applied. With the wall clock in the
/// version, a record recreated later starts above every version it had before, as long
/// as the gap between the old record's last commit and the new one's first (14.5 days
/// for a TTL deletion; minutes for a restore; seconds for a hand deletion) exceeds the
/// skew between the hosts' clocks (milliseconds on AWS) — and the counter part keeps
/// the order strict within a millisecond and if a clock steps back.
pub fn next_version(previous: u64, now_ms: u64) -> u64 {
    previous
        .saturating_add(1)
        .max(now_ms.saturating_mul(VERSIONS_PER_MS))
}
