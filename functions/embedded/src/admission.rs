//! Admission: what the engine may hold in memory, in messages and in bytes, and how
//! much of it one function type may take.
//!
//! Every pending message lives in the engine's memory until it is applied, so the
//! queue is bounded where memory is spent: by its messages *and* their bytes. A new
//! message from the HTTP ingress is admitted only while the whole queue is under both
//! limits (else `503`) and its function type under its share of them (else `429`),
//! both answered at once with `Retry-After`, never by holding the request. A function
//! type whose messages cannot be applied (its endpoint down, retrying) so fills only
//! its own share: the others keep being accepted and applied. Messages the functions
//! send each other are counted but never refused (they are committed already); while
//! they hold the queue above its limits, the ingress waits for them to drain.

use std::collections::HashMap;
use std::sync::Mutex;

use statefun_core::{TypeName, TypedValue};

/// The queue's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Messages queued at most (all function types together).
    pub max_messages: usize,
    /// Bytes queued at most: payloads plus [`OVERHEAD`] each.
    pub max_bytes: usize,
    /// The percentage of each limit one function type may take.
    pub type_share_percent: u8,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            max_messages: 200_000,
            max_bytes: 128 << 20,
            type_share_percent: 50,
        }
    }
}

/// What a queued message costs beyond its payload (its ids, address and bookkeeping),
/// so that a flood of empty messages is bounded as well.
pub const OVERHEAD: usize = 256;

/// The bytes a queued message with this payload counts for.
pub(crate) fn footprint(value: &TypedValue) -> usize {
    OVERHEAD + value.typename.as_str().len() + value.value.as_deref().map_or(0, <[u8]>::len)
}

/// Why a message was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Overloaded {
    #[error(
        "the runtime's queue is full ({messages} messages, {bytes} bytes queued; limits \
         --max-queued-messages {max_messages}, --max-queued-bytes {max_bytes}): retry later"
    )]
    Queue {
        messages: usize,
        bytes: usize,
        max_messages: usize,
        max_bytes: usize,
    },
    #[error(
        "{function_type} has its share of the queue ({messages} messages, {bytes} bytes \
         queued; --max-queued-share {share} %): its messages are not being applied as fast \
         as they come; retry later"
    )]
    FunctionType {
        function_type: TypeName,
        messages: usize,
        bytes: usize,
        share: u8,
    },
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Load {
    messages: usize,
    bytes: usize,
}

impl Load {
    fn add(&mut self, bytes: usize) {
        self.messages += 1;
        self.bytes += bytes;
    }
    fn remove(&mut self, bytes: usize) {
        self.messages = self.messages.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes);
    }
}

#[derive(Debug, Default)]
struct Usage {
    total: Load,
    by_type: HashMap<TypeName, Load>,
}

/// The queue's usage against its limits, shared by the ingress (admits), the accept
/// thread (releases what it did not enqueue) and the engine (adds its own messages,
/// releases what it settles).
#[derive(Debug)]
pub(crate) struct Admission {
    limits: QueueLimits,
    usage: Mutex<Usage>,
}

impl Admission {
    pub(crate) fn new(limits: QueueLimits) -> Self {
        Admission {
            limits,
            usage: Mutex::default(),
        }
    }

    fn usage(&self) -> std::sync::MutexGuard<'_, Usage> {
        // The counts stay consistent whatever a panicking holder did: each update is
        // one step.
        self.usage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves room for a message of `bytes` to `t`, or says why there is none. A
    /// function type with nothing queued is always admitted one message, so a message
    /// over its share alone is not refused for ever.
    pub(crate) fn admit(&self, t: &TypeName, bytes: usize) -> Result<(), Overloaded> {
        let limits = self.limits;
        let mut usage = self.usage();
        let total = usage.total;
        if total.messages >= limits.max_messages
            || (total.messages > 0 && total.bytes + bytes > limits.max_bytes)
        {
            return Err(Overloaded::Queue {
                messages: total.messages,
                bytes: total.bytes,
                max_messages: limits.max_messages,
                max_bytes: limits.max_bytes,
            });
        }
        let share =
            |limit: usize| (limit as u128 * u128::from(limits.type_share_percent) / 100) as usize;
        let own = usage.by_type.get(t).copied().unwrap_or_default();
        if own.messages > 0
            && (own.messages >= share(limits.max_messages).max(1)
                || own.bytes + bytes > share(limits.max_bytes))
        {
            return Err(Overloaded::FunctionType {
                function_type: t.clone(),
                messages: own.messages,
                bytes: own.bytes,
                share: limits.type_share_percent,
            });
        }
        usage.total.add(bytes);
        usage.by_type.entry(t.clone()).or_default().add(bytes);
        Ok(())
    }

    /// Counts a message the functions sent (never refused).
    pub(crate) fn add(&self, t: &TypeName, bytes: usize) {
        let mut usage = self.usage();
        usage.total.add(bytes);
        usage.by_type.entry(t.clone()).or_default().add(bytes);
    }

    /// Gives back a message's room: applied, dead-lettered, or not enqueued after all.
    pub(crate) fn release(&self, t: &TypeName, bytes: usize) {
        let mut usage = self.usage();
        usage.total.remove(bytes);
        if let Some(load) = usage.by_type.get_mut(t) {
            load.remove(bytes);
            if load.messages == 0 {
                usage.by_type.remove(t);
            }
        }
    }

    /// Bytes queued now.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.usage().total.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> TypeName {
        TypeName::parse(name).expect("type name")
    }

    #[test]
    fn a_type_fills_its_share_and_the_others_keep_being_admitted() {
        let admission = Admission::new(QueueLimits {
            max_messages: 10,
            max_bytes: 10_000,
            type_share_percent: 50,
        });
        let (slow, fast) = (t("a/slow"), t("a/fast"));
        for _ in 0..5 {
            admission.admit(&slow, 100).expect("within its share");
        }
        let refused = admission.admit(&slow, 100).expect_err("over its share");
        assert!(matches!(
            refused,
            Overloaded::FunctionType { messages: 5, .. }
        ));
        for _ in 0..5 {
            admission.admit(&fast, 100).expect("another type");
        }
        assert!(matches!(
            admission.admit(&t("a/third"), 100),
            Err(Overloaded::Queue { messages: 10, .. })
        ));
        admission.release(&slow, 100);
        admission.admit(&slow, 100).expect("room again");
    }

    #[test]
    fn bytes_bound_the_queue_whatever_the_message_count() {
        let admission = Admission::new(QueueLimits {
            max_messages: 1_000,
            max_bytes: 1_000,
            type_share_percent: 100,
        });
        let big = t("a/big");
        admission.admit(&big, 600).expect("first");
        assert!(admission.admit(&big, 600).is_err());
        admission.admit(&big, 400).expect("fits");
        assert_eq!(admission.queued_bytes(), 1_000);
        // Alone, a message over the limit is still admitted: nothing refuses it for ever.
        admission.release(&big, 600);
        admission.release(&big, 400);
        admission.admit(&big, 5_000).expect("alone");
    }

    #[test]
    fn messages_the_functions_send_count_but_are_never_refused() {
        let admission = Admission::new(QueueLimits {
            max_messages: 2,
            max_bytes: 1_000,
            type_share_percent: 100,
        });
        let a = t("a/a");
        for _ in 0..5 {
            admission.add(&a, 10);
        }
        assert!(admission.admit(&a, 10).is_err());
        for _ in 0..4 {
            admission.release(&a, 10);
        }
        admission.admit(&a, 10).expect("drained");
    }
}
