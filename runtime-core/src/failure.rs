//! The failure policy: one place that decides, for every host (the harness, the
//! embedded engine, the AWS dispatcher), whether a failed message is tried again or
//! dead-lettered, and after how long. Hosts ask it; they never re-decide.
//!
//! Attempts are counted in the instance record ([`crate::state::Failing`]), by the same
//! commit machinery as everything else: only the message that failed counts a try.
//! Messages blocked behind it, a conflict, an unavailable remote function or store do
//! not — so a message is never dead-lettered for tries that were not its own, and the
//! count survives restarts and does not depend on how a queue counts receives.

use std::borrow::Cow;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The longest failure reason a host writes into a log line or a dead letter. A reason
/// can carry what a function or an endpoint put in it (payload fragments included), and
/// logs and dead-letter queues are read more widely than the payloads themselves.
pub const REASON_MAX: usize = 512;

/// `reason` cut to at most `max` bytes (at a character boundary), saying how long it
/// was when cut.
///
/// ```
/// use statefun_core::failure::excerpt;
/// assert_eq!(excerpt("short", 512), "short");
/// assert_eq!(excerpt(&"x".repeat(600), 4), "xxxx… (600 bytes in all)");
/// ```
pub fn excerpt(reason: &str, max: usize) -> Cow<'_, str> {
    if reason.len() <= max {
        return Cow::Borrowed(reason);
    }
    let mut end = max;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!(
        "{}… ({} bytes in all)",
        &reason[..end],
        reason.len()
    ))
}

/// Why a message was not settled, which says what a host does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// Another host committed to the address first: run it again now.
    Conflict,
    /// The function failed and asked to be retried: tried again with backoff, up to
    /// the policy's attempts, then dead-lettered.
    Retryable,
    /// The store, the transport or a remote function was unavailable (the commit may
    /// have landed): tried again with backoff, never dead-lettered (the redelivery's
    /// re-send is what completes a commit).
    Unavailable,
    /// Behind a failed message of the same address: runs once that one is resolved.
    Blocked,
    /// Retrying cannot help (terminal function error, panic, unknown type, too large):
    /// dead-lettered at once.
    Poison,
}

/// What a host does with a failed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver it again, no earlier than after this long.
    Retry { after: Duration },
    /// Move it to the dead letters with its reason; the messages behind it run.
    DeadLetter,
}

/// What a host does with an address's unsettled messages: the failure policy's
/// decision ([`RetryPolicy::next`]), made once in the core for every host, which only
/// maps it onto its own queue (an SQS batch response, the embedded inbox and its
/// timers, the harness's queue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Another writer committed the address first: load it and run its messages again.
    RunAgain,
    /// Deliver them again, the first no earlier than after `after`.
    Retry { after: Duration },
    /// Move the first to the dead letters with `reason`; the ones behind it run again.
    DeadLetter { reason: String },
}

/// How often and how fast failed messages are tried again, and how the hosts' own
/// I/O retries back off. Exponential: `initial_backoff × 2^(attempt-1)`, capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Tries of a message whose function keeps asking to be retried (the first
    /// included) before it is dead-lettered.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The policy of a host's own I/O retries (a throttled read, a batch entry that
    /// failed): a few quick tries.
    pub fn io() -> Self {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
        }
    }

    /// The wait before try `attempt + 1`, after `attempt` tries failed.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(20);
        self.initial_backoff
            .saturating_mul(1 << exp)
            .min(self.max_backoff)
    }

    /// The waits between the tries of an I/O retry loop: `max_attempts - 1` of them.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + '_ {
        (1..self.max_attempts).map(|a| self.backoff(a))
    }

    /// The verdict on a message that failed with `kind`, `attempts` being the tries
    /// of it that count (see the module docs).
    /// What to do with an address's unsettled messages when the first failed with
    /// `kind` and `reason` after `attempts` tries that count.
    pub fn next(&self, kind: FailureKind, attempts: u32, reason: &str) -> Next {
        match (kind, self.verdict(kind, attempts)) {
            (FailureKind::Conflict, _) => Next::RunAgain,
            (FailureKind::Retryable, Verdict::DeadLetter) => Next::DeadLetter {
                reason: format!("gave up after {attempts} tries: {reason}"),
            },
            (_, Verdict::DeadLetter) => Next::DeadLetter {
                reason: reason.to_string(),
            },
            (_, Verdict::Retry { after }) => Next::Retry { after },
        }
    }

    pub fn verdict(&self, kind: FailureKind, attempts: u32) -> Verdict {
        match kind {
            FailureKind::Poison => Verdict::DeadLetter,
            FailureKind::Retryable if attempts >= self.max_attempts => Verdict::DeadLetter,
            FailureKind::Retryable | FailureKind::Unavailable => Verdict::Retry {
                after: self.backoff(attempts.max(1)),
            },
            FailureKind::Conflict | FailureKind::Blocked => Verdict::Retry {
                after: Duration::ZERO,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_step_is_decided_once_for_every_host() {
        let p = RetryPolicy::default();
        assert_eq!(p.next(FailureKind::Conflict, 9, "raced"), Next::RunAgain);
        assert_eq!(
            p.next(FailureKind::Retryable, p.max_attempts, "flaky"),
            Next::DeadLetter {
                reason: format!("gave up after {} tries: flaky", p.max_attempts)
            }
        );
        assert_eq!(
            p.next(FailureKind::Poison, 1, "undecodable"),
            Next::DeadLetter {
                reason: "undecodable".into()
            }
        );
        assert_eq!(
            p.next(FailureKind::Unavailable, 0, "store down"),
            Next::Retry {
                after: p.backoff(1)
            }
        );
        assert_eq!(
            p.next(FailureKind::Blocked, 0, "behind"),
            Next::Retry {
                after: Duration::ZERO
            }
        );
    }

    #[test]
    fn only_poison_and_exhausted_retries_are_dead_lettered() {
        let p = RetryPolicy::default();
        assert_eq!(p.verdict(FailureKind::Poison, 1), Verdict::DeadLetter);
        assert_eq!(
            p.verdict(FailureKind::Retryable, 4),
            Verdict::Retry {
                after: Duration::from_millis(800)
            }
        );
        assert_eq!(p.verdict(FailureKind::Retryable, 5), Verdict::DeadLetter);
        for kind in [
            FailureKind::Unavailable,
            FailureKind::Blocked,
            FailureKind::Conflict,
        ] {
            assert!(
                matches!(p.verdict(kind, 1_000), Verdict::Retry { .. }),
                "{kind:?} is never dead-lettered"
            );
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy::default();
        let waits: Vec<u64> = (1..=9).map(|a| p.backoff(a).as_millis() as u64).collect();
        assert_eq!(
            waits,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]
        );
        assert_eq!(RetryPolicy::io().delays().count(), 3);
    }
}
