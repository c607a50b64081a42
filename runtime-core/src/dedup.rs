//! The dedup rule: which deliveries an instance has already applied.
//!
//! Why two channels:
//! - Direct sends and ordered ingress reach a receiver in `(seq, index)` order per
//!   source, so a per-source high-water mark is exact and bounded: it catches a
//!   redelivered batch *and* a sender's late outbox re-send long after the receiver
//!   moved on (which "remember my last commit's ids" would miss). The indices applied
//!   at the mark's `seq` are kept so an outbox that arrives partly out of order within
//!   one commit is still exact.
//! - Delayed messages overtake a sender's later direct sends and reorder among
//!   themselves, so they must not move that mark: they (and keyed ingress) are
//!   remembered by exact id with the time they were applied.
//!
//! Both are pruned by age only, once older than the retention window, which must exceed
//! the longest possible redelivery (queue retention + visibility timeout). Never by count.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::message::MessageId;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dedup {
    marks: BTreeMap<Arc<str>, Mark>,
    keyed: BTreeMap<String, u64>,
    pruned_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Mark {
    seq: u64,
    indices: Vec<u32>,
    touched_ms: u64,
}

impl Dedup {
    /// Whether `id` was applied already.
    pub fn is_applied(&self, id: &MessageId) -> bool {
        match id {
            MessageId::Ordered { source, seq, index } => self
                .marks
                .get(source.as_ref())
                .is_some_and(|m| *seq < m.seq || (*seq == m.seq && m.indices.contains(index))),
            MessageId::Keyed(key) => self.keyed.contains_key(key),
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
    /// so a commit does not scan every mark.
    pub fn prune(&mut self, now_ms: u64, retention_ms: u64) {
        if now_ms.saturating_sub(self.pruned_at_ms) < retention_ms / 16 {
            return;
        }
        let horizon = now_ms.saturating_sub(retention_ms);
        self.marks.retain(|_, m| m.touched_ms >= horizon);
        self.keyed.retain(|_, at| *at >= horizon);
        self.pruned_at_ms = now_ms;
    }

    /// Number of remembered sources and keys, for size accounting and tests.
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
}
