//! The dedup rule: which deliveries an instance has already applied.
//!
//! Why two channels:
//! - Direct sends and ordered ingress reach a receiver in `(seq, index)` order per
//!   source, so a per-source high-water mark is exact: it catches a redelivered batch
//!   *and* a sender's late outbox re-send long after the receiver moved on (which
//!   "remember my last commit's ids" would miss). The indices applied at the mark's
//!   `seq` are kept so an outbox that arrives partly out of order within one commit is
//!   still exact.
//! - Delayed messages overtake a sender's later direct sends and reorder among
//!   themselves, so they must not move that mark: they (and keyed ingress) are
//!   remembered by exact id with the time they were applied.
//!
//! Both are forgotten by age only, once older than the retention window, which must
//! exceed the longest possible redelivery (queue retention + visibility timeout). Never
//! by count.
//!
//! Why the record stays bounded anyway: what the instance record keeps is a *hot set*
//! within a byte budget. When a commit would take it over the budget, the entries
//! touched longest ago are **spilled**: written outside the record, in the same atomic
//! commit, each with its own expiry (touched + retention). The record remembers until
//! when spilled entries may exist; until then a message the hot set does not know is
//! looked up outside ([`Dedup::lookups`]) and what is found is brought back into the hot
//! set ([`Dedup::absorb`]) before the batch runs. An address with little traffic never
//! spills and pays nothing; one with thousands of keyed or delayed messages, or
//! thousands of senders, pays one extra read per batch and one extra item per spilled
//! entry, and its record stays the same size.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::message::MessageId;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dedup {
    marks: BTreeMap<Arc<str>, Mark>,
    keyed: BTreeMap<String, u64>,
    pruned_at_ms: u64,
    /// Spilled entries may exist until then (the latest expiry of any spilled entry).
    spilled_until_ms: u64,
}

/// A source's high-water mark: every `(seq, index)` below `seq` was applied, and at
/// `seq` the `indices` listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub seq: u64,
    pub indices: Vec<u32>,
    pub touched_ms: u64,
}

/// Which dedup entry decides about a message: its source's mark, or its exact id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DedupKey {
    Source(Arc<str>),
    Id(String),
}

impl DedupKey {
    /// The key of `id`'s entry.
    pub fn of(id: &MessageId) -> Self {
        match id {
            MessageId::Ordered { source, .. } => DedupKey::Source(source.clone()),
            MessageId::Keyed(key) => DedupKey::Id(key.clone()),
        }
    }

    /// A string form for stores (`s:` + source, `k:` + id): distinct keys, distinct strings.
    pub fn to_key_string(&self) -> String {
        match self {
            DedupKey::Source(s) => format!("s:{s}"),
            DedupKey::Id(k) => format!("k:{k}"),
        }
    }
}

/// One dedup entry as kept outside the instance record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DedupEntry {
    Mark { source: Arc<str>, mark: Mark },
    Applied { id: String, at_ms: u64 },
}

impl DedupEntry {
    pub fn key(&self) -> DedupKey {
        match self {
            DedupEntry::Mark { source, .. } => DedupKey::Source(source.clone()),
            DedupEntry::Applied { id, .. } => DedupKey::Id(id.clone()),
        }
    }

    pub fn touched_ms(&self) -> u64 {
        match self {
            DedupEntry::Mark { mark, .. } => mark.touched_ms,
            DedupEntry::Applied { at_ms, .. } => *at_ms,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            DedupEntry::Mark { source, mark } => mark_bytes(source, mark),
            DedupEntry::Applied { id, .. } => applied_bytes(id),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        crate::format::Versioned::encode(self)
    }

    /// Reads an entry of `format` (a newer one is refused as newer).
    pub fn from_bytes(format: u32, bytes: &[u8]) -> Result<Self, crate::format::FormatError> {
        crate::format::Versioned::decode_format(format, bytes)
    }
}

impl crate::format::Versioned for DedupEntry {
    const WHAT: &'static str = "dedup entry";
    /// Format 1: the postcard enum (d40e810).
    const FORMAT: u32 = 1;

    fn encode(&self) -> Vec<u8> {
        // Serde-derived data into a Vec: no failure mode.
        postcard::to_stdvec(self).expect("dedup entry serializes")
    }

    fn decode_current(format: u32, bytes: &[u8]) -> Result<Self, crate::format::FormatError> {
        crate::format::postcard(Self::WHAT, format, bytes)
    }
}

/// A spilled entry and when it may be forgotten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spilled {
    pub entry: DedupEntry,
    pub expires_at_ms: u64,
    /// Whether the entry may be stored *ahead* of its commit, outside that commit's
    /// atomic write: an exact id applied by an earlier commit. Such an entry states a
    /// fact that holds whether or not this commit lands, and every copy of it is the
    /// same (an id is recorded once, with the time it was applied), so writing it
    /// first, even from a dispatcher whose commit then conflicts, can neither make an
    /// unapplied message look applied nor overwrite a newer entry. A mark moves on
    /// with its source (an older copy written late could replace a newer one), and an
    /// id applied by this very commit is not a fact until the commit lands: those
    /// are written with the commit.
    pub ahead: bool,
}

// Serialized sizes, close enough to keep the record within its budget (postcard
// varints are never longer than these).
fn mark_bytes(source: &str, mark: &Mark) -> usize {
    source.len() + 2 + 10 + 10 + 1 + 5 * mark.indices.len()
}

fn applied_bytes(id: &str) -> usize {
    id.len() + 2 + 10
}

impl Dedup {
    /// Whether `id` was applied already, as far as the hot set knows (after
    /// [`Dedup::absorb`] of what [`Dedup::lookups`] asked for, exactly).
    pub fn is_applied(&self, id: &MessageId) -> bool {
        match id {
            MessageId::Ordered { source, seq, index } => self
                .marks
                .get(source.as_ref())
                .is_some_and(|m| *seq < m.seq || (*seq == m.seq && m.indices.contains(index))),
            MessageId::Keyed(key) => self.keyed.contains_key(key),
        }
    }

    /// The entries to look up outside the record before deciding about `ids` at
    /// `now_ms`: none unless something was spilled that has not expired yet.
    pub fn lookups<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a MessageId>,
        now_ms: u64,
    ) -> Vec<DedupKey> {
        if now_ms >= self.spilled_until_ms {
            return Vec::new();
        }
        let mut keys: Vec<DedupKey> = ids
            .into_iter()
            .filter(|id| match id {
                MessageId::Ordered { source, .. } => !self.marks.contains_key(source.as_ref()),
                MessageId::Keyed(key) => !self.keyed.contains_key(key),
            })
            .map(DedupKey::of)
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Brings entries found outside the record back into the hot set.
    pub fn absorb(&mut self, entries: impl IntoIterator<Item = DedupEntry>) {
        for entry in entries {
            match entry {
                DedupEntry::Mark { source, mark } => match self.marks.get(&source) {
                    Some(hot) if hot.seq >= mark.seq => {}
                    _ => {
                        self.marks.insert(source, mark);
                    }
                },
                DedupEntry::Applied { id, at_ms } => {
                    self.keyed.entry(id).or_insert(at_ms);
                }
            }
        }
    }

    /// Records `id` as applied at `now_ms`.
    pub fn record(&mut self, id: &MessageId, now_ms: u64) {
        match id {
            MessageId::Ordered { source, seq, index } => {
                match self.marks.get_mut(source.as_ref()) {
                    Some(m) if *seq == m.seq => {
                        m.indices.push(*index);
                        m.touched_ms = now_ms;
                    }
                    Some(m) if *seq > m.seq => {
                        m.seq = *seq;
                        m.indices.clear();
                        m.indices.push(*index);
                        m.touched_ms = now_ms;
                    }
                    Some(_) => {}
                    None => {
                        self.marks.insert(
                            source.clone(),
                            Mark {
                                seq: *seq,
                                indices: vec![*index],
                                touched_ms: now_ms,
                            },
                        );
                    }
                }
            }
            MessageId::Keyed(key) => {
                self.keyed.insert(key.clone(), now_ms);
            }
        }
    }

    /// Forgets what is older than `retention_ms`. Runs at most a few times per window
    /// so a commit does not scan every entry.
    pub fn prune(&mut self, now_ms: u64, retention_ms: u64) {
        if now_ms >= self.spilled_until_ms {
            self.spilled_until_ms = 0;
        }
        if now_ms.saturating_sub(self.pruned_at_ms) < retention_ms / 16 {
            return;
        }
        let horizon = now_ms.saturating_sub(retention_ms);
        self.marks.retain(|_, m| m.touched_ms >= horizon);
        self.keyed.retain(|_, at| *at >= horizon);
        self.pruned_at_ms = now_ms;
    }

    /// Moves the entries touched longest ago out of the hot set until it fits in
    /// `budget_bytes`; they are to be stored outside the record, in the same commit,
    /// or before it where [`Spilled::ahead`] allows: every spilled exact id except
    /// those of `applied_now` (the ids the commit being made applies).
    pub fn spill_over(
        &mut self,
        budget_bytes: usize,
        retention_ms: u64,
        applied_now: &[MessageId],
    ) -> Vec<Spilled> {
        let mut size = self.bytes();
        if size <= budget_bytes {
            return Vec::new();
        }
        let mut by_age: Vec<(u64, DedupKey)> = self
            .marks
            .iter()
            .map(|(s, m)| (m.touched_ms, DedupKey::Source(s.clone())))
            .chain(
                self.keyed
                    .iter()
                    .map(|(k, at)| (*at, DedupKey::Id(k.clone()))),
            )
            .collect();
        by_age.sort();
        let mut spilled = Vec::new();
        for (_, key) in by_age {
            if size <= budget_bytes {
                break;
            }
            let entry = match key {
                DedupKey::Source(source) => self
                    .marks
                    .remove(&source)
                    .map(|mark| DedupEntry::Mark { source, mark }),
                DedupKey::Id(id) => self
                    .keyed
                    .remove(&id)
                    .map(|at_ms| DedupEntry::Applied { id, at_ms }),
            };
            let Some(entry) = entry else { continue };
            size -= entry.bytes();
            let expires_at_ms = entry.touched_ms().saturating_add(retention_ms);
            self.spilled_until_ms = self.spilled_until_ms.max(expires_at_ms);
            let ahead = match &entry {
                DedupEntry::Applied { id, .. } => !applied_now
                    .iter()
                    .any(|m| matches!(m, MessageId::Keyed(k) if k == id)),
                DedupEntry::Mark { .. } => false,
            };
            spilled.push(Spilled {
                entry,
                expires_at_ms,
                ahead,
            });
        }
        spilled
    }

    /// The hot set's size in bytes, as [`Dedup::spill_over`] counts it.
    pub fn bytes(&self) -> usize {
        self.marks
            .iter()
            .map(|(s, m)| mark_bytes(s, m))
            .chain(self.keyed.keys().map(|k| applied_bytes(k)))
            .sum()
    }

    /// Number of sources and keys in the hot set, for size accounting and tests.
    pub fn len(&self) -> usize {
        self.marks.len() + self.keyed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ordered(source: &str, seq: u64, index: u32) -> MessageId {
        MessageId::Ordered {
            source: source.into(),
            seq,
            index,
        }
    }

    #[test]
    fn high_water_mark_catches_late_resends() {
        let mut d = Dedup::default();
        d.record(&ordered("a", 3, 0), 0);
        d.record(&ordered("a", 5, 1), 0);
        assert!(d.is_applied(&ordered("a", 3, 0)));
        assert!(
            d.is_applied(&ordered("a", 4, 7)),
            "older seq must count as applied"
        );
        assert!(d.is_applied(&ordered("a", 5, 1)));
        assert!(
            !d.is_applied(&ordered("a", 5, 0)),
            "same seq, other index is new"
        );
        assert!(!d.is_applied(&ordered("a", 6, 0)));
        assert!(!d.is_applied(&ordered("b", 1, 0)), "marks are per source");
    }

    #[test]
    fn delayed_ids_do_not_move_the_direct_mark() {
        let mut d = Dedup::default();
        d.record(&ordered("s", 9, 0), 0);
        let delayed = MessageId::Keyed("s@2.0".into());
        assert!(
            !d.is_applied(&delayed),
            "a delayed message overtaken by later sends is new"
        );
        d.record(&delayed, 0);
        assert!(d.is_applied(&delayed));
    }

    #[test]
    fn pruning_is_by_age_only() {
        let mut d = Dedup::default();
        for i in 0..1000 {
            d.record(&MessageId::Keyed(format!("k{i}")), 1_000);
        }
        d.record(&ordered("s", 1, 0), 1_000);
        d.prune(1_000 + 500, 1_000);
        assert_eq!(
            d.len(),
            1001,
            "nothing is pruned inside the window, whatever the count"
        );
        d.record(&MessageId::Keyed("fresh".into()), 2_400);
        d.prune(2_500, 1_000);
        assert_eq!(d.len(), 1);
        assert!(d.is_applied(&MessageId::Keyed("fresh".into())));
    }

    #[test]
    fn the_hot_set_spills_the_oldest_entries_and_finds_them_again() {
        let retention = 10_000;
        let mut d = Dedup::default();
        let mut outside: BTreeMap<DedupKey, DedupEntry> = BTreeMap::new();
        for i in 0..500u64 {
            d.record(&MessageId::Keyed(format!("key-{i}")), i);
            d.record(&ordered(&format!("sender-{i}"), 7, 0), i);
            for s in d.spill_over(2_048, retention, &[]) {
                assert_eq!(s.expires_at_ms, s.entry.touched_ms() + retention);
                outside.insert(s.entry.key(), s.entry);
            }
            assert!(d.bytes() <= 2_048, "hot set over its budget");
        }
        assert!(outside.len() > 900, "old entries moved out, not forgotten");

        // Anything the hot set lost is asked for, and judged exactly once absorbed.
        let old = [MessageId::Keyed("key-3".into()), ordered("sender-3", 7, 0)];
        let new = [
            MessageId::Keyed("key-new".into()),
            ordered("sender-3", 8, 0),
        ];
        let keys = d.lookups(old.iter().chain(&new), 600);
        assert_eq!(keys.len(), 3, "one key per unknown id or source: {keys:?}");
        let mut fresh = d.clone();
        fresh.absorb(keys.iter().filter_map(|k| outside.get(k).cloned()));
        assert!(old.iter().all(|id| fresh.is_applied(id)));
        assert!(new.iter().all(|id| !fresh.is_applied(id)));

        // Past the latest spilled entry's expiry, nothing is looked up any more.
        assert!(d.lookups(old.iter(), 500 + retention).is_empty());
    }

    #[test]
    fn only_ids_applied_before_may_be_stored_ahead_of_the_commit() {
        let mut d = Dedup::default();
        let earlier: Vec<MessageId> = (0..40)
            .map(|i| MessageId::Keyed(format!("earlier-{i:02}")))
            .collect();
        for id in &earlier {
            d.record(id, 1);
        }
        d.record(&ordered("sender", 3, 0), 1);
        // This commit's ids, recorded at the same instant as the earlier ones (a clock
        // that stood still or went back): they must still be told apart.
        let now: Vec<MessageId> = (0..40)
            .map(|i| MessageId::Keyed(format!("now-{i:02}")))
            .collect();
        for id in &now {
            d.record(id, 1);
        }
        let spilled = d.spill_over(64, 10_000, &now);
        assert!(spilled.len() > 60, "most entries spill: {}", spilled.len());
        for s in &spilled {
            let expected = match &s.entry {
                DedupEntry::Applied { id, .. } => id.starts_with("earlier-"),
                DedupEntry::Mark { .. } => false,
            };
            assert_eq!(s.ahead, expected, "{:?}", s.entry);
        }
        assert!(spilled.iter().any(|s| s.ahead) && spilled.iter().any(|s| !s.ahead));
    }
}
