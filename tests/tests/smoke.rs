//! A StateFun-style smoke test of the commit pipeline: a command-interpreter function
//! runs random command trees (increment, send, send_after, cancel, egress) while the
//! store and transport fail at random points: before a commit, after a commit whose
//! answer is lost, before, during or after a send. Messages are also delivered twice at
//! random. A tracker computes what each instance must count; the run must match it
//! exactly (over-count = duplicate, under-count = loss) and every egress must appear.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use statefun_core::pipeline::{block_on, dispatch};
use statefun_core::ports::{
    CommitError, MemoryStore, MemoryTransport, StateStore, StoreError, Transport, TransportError,
};
use statefun_core::{
    Address, BatchConfig, Commit, Envelope, InstanceState, MessageId, OutboxEntry, Registry,
    TypeName, TypedValue, ValueSpec,
};

const SMOKE: TypeName = TypeName::from_static("smoke/interpreter");
const EGRESS: TypeName = TypeName::from_static("smoke/verification");
const COUNT: ValueSpec<i64> = ValueSpec::new("count");
const INSTANCES: u64 = 8;

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Command {
    Increment,
    Send {
        target: u64,
        commands: Vec<Command>,
    },
    SendAfter {
        target: u64,
        delay_ms: u64,
        token: Option<String>,
        commands: Vec<Command>,
    },
    Cancel {
        token: String,
    },
    Egress {
        tag: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Commands(Vec<Command>);
statefun_core::json_type!(Commands, "smoke/Commands");

fn target(id: u64) -> Address {
    Address::new(SMOKE, id.to_string())
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register_fn(SMOKE.as_str(), vec![COUNT.spec()], |ctx, msg| {
        let Commands(commands) = msg.decode()?;
        for command in commands {
            match command {
                Command::Increment => {
                    let n = ctx.get(&COUNT)?.unwrap_or(0) + 1;
                    ctx.set(&COUNT, &n)?;
                }
                Command::Send {
                    target: t,
                    commands,
                } => ctx.send(target(t), &Commands(commands)),
                Command::SendAfter {
                    target: t,
                    delay_ms,
                    token,
                    commands,
                } => ctx.send_after_value(
                    Duration::from_millis(delay_ms),
                    target(t),
                    TypedValue::of(&Commands(commands)),
                    token,
                )?,
                Command::Cancel { token } => ctx.cancel_delayed_message(token)?,
                Command::Egress { tag } => ctx.send_egress(EGRESS, &tag),
            }
        }
        Ok(())
    })
    .expect("register");
    r
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What the run must produce.
#[derive(Default)]
struct Tracker {
    counts: BTreeMap<String, i64>,
    egress: BTreeSet<String>,
    tokens: u64,
}

impl Tracker {
    /// Generates commands for instance `at`, recording their expected effects unless
    /// `counted` is false (inside a message that will be cancelled).
    fn generate(&mut self, rng: &mut Rng, at: u64, depth: u32, counted: bool) -> Vec<Command> {
        let mut out = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let choice = if depth >= 4 { 0 } else { rng.below(6) };
            match choice {
                0 | 1 => {
                    if counted {
                        *self.counts.entry(at.to_string()).or_default() += 1;
                    }
                    out.push(Command::Increment);
                }
                2 => {
                    let t = rng.below(INSTANCES);
                    let commands = self.generate(rng, t, depth + 1, counted);
                    out.push(Command::Send {
                        target: t,
                        commands,
                    });
                }
                3 | 4 => {
                    let t = rng.below(INSTANCES);
                    let cancel = rng.chance(30);
                    self.tokens += 1;
                    let token = format!("t{}", self.tokens);
                    let commands = self.generate(rng, t, depth + 1, counted && !cancel);
                    out.push(Command::SendAfter {
                        target: t,
                        delay_ms: rng.below(5_000),
                        token: Some(token.clone()),
                        commands,
                    });
                    if cancel {
                        out.push(Command::Cancel { token });
                    }
                }
                _ => {
                    let tag = format!(
                        "e{}-{}",
                        at,
                        self.egress.len() + rng.below(1 << 30) as usize
                    );
                    if counted {
                        self.egress.insert(tag.clone());
                    }
                    out.push(Command::Egress { tag });
                }
            }
        }
        out
    }
}

/// A store that fails before a commit, or commits and loses the answer.
struct FaultyStore<'a> {
    inner: MemoryStore,
    rng: &'a Mutex<Rng>,
}

impl StateStore for FaultyStore<'_> {
    async fn load(&self, addresses: &[Address]) -> Result<Vec<Option<InstanceState>>, StoreError> {
        if self.rng.lock().expect("rng").chance(3) {
            return Err(StoreError("injected: load timed out".into()));
        }
        self.inner.load(addresses).await
    }

    async fn commit(&self, commits: &[Commit]) -> Vec<Result<(), CommitError>> {
        let mut rng = self.rng.lock().expect("rng");
        commits
            .iter()
            .map(|c| match rng.below(100) {
                0..5 => Err(StoreError("injected: commit refused".into()).into()),
                5..10 => self.inner.apply(c).and(Err(StoreError(
                    "injected: commit landed, answer lost".into(),
                )
                .into())),
                _ => self.inner.apply(c),
            })
            .collect()
    }
}

/// A transport that fails before, during (a prefix sent) or after a send.
struct FaultyTransport<'a> {
    inner: MemoryTransport,
    rng: &'a Mutex<Rng>,
}

impl Transport for FaultyTransport<'_> {
    async fn send(&self, outboxes: &[&[OutboxEntry]]) -> Vec<Result<(), TransportError>> {
        let mut results = Vec::new();
        for outbox in outboxes {
            let (roll, cut) = {
                let mut rng = self.rng.lock().expect("rng");
                (rng.below(100), rng.below(outbox.len() as u64 + 1) as usize)
            };
            let injected = |what: &str| Err(TransportError(format!("injected: {what}")));
            results.push(match roll {
                0..5 => injected("send refused"),
                5..10 => {
                    self.inner.send(&[&outbox[..cut]]).await;
                    injected("send failed part way")
                }
                10..15 => {
                    self.inner.send(&[outbox]).await;
                    injected("sent, answer lost")
                }
                _ => self.inner.send(&[outbox]).await.remove(0),
            });
        }
        results
    }
}

fn run_seed(seed: u64) {
    let mut gen_rng = Rng(seed);
    let faults = Mutex::new(Rng(seed ^ 0xfa17));
    let mut tracker = Tracker::default();
    let registry = registry();
    let config = BatchConfig::default();
    let store = FaultyStore {
        inner: MemoryStore::new(),
        rng: &faults,
    };
    let transport = FaultyTransport {
        inner: MemoryTransport::new(),
        rng: &faults,
    };

    for seq in 1..=40 {
        let at = gen_rng.below(INSTANCES);
        let commands = tracker.generate(&mut gen_rng, at, 0, true);
        transport.inner.enqueue(Envelope {
            id: MessageId::Ordered {
                source: "ingress/smoke".into(),
                seq,
                index: 0,
            },
            target: target(at),
            caller: None,
            value: TypedValue::of(&Commands(commands)),
        });
    }

    let mut now = 0;
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 100_000, "seed {seed}: no convergence");
        let batch = transport.inner.take_inbox(1 + gen_rng.below(10) as usize);
        if batch.is_empty() {
            match transport.inner.next_due_ms() {
                Some(due) => {
                    now = now.max(due);
                    transport.inner.fire_due(now);
                    continue;
                }
                None => break,
            }
        }
        let by_id: BTreeMap<String, Envelope> = batch
            .iter()
            .map(|e| (e.id.to_string(), e.clone()))
            .collect();
        let report = block_on(dispatch(&registry, &store, &transport, &config, now, batch));
        for failed in &report.failed {
            assert!(
                failed.is_retryable(),
                "seed {seed}: unexpected poison: {}",
                failed.reason
            );
        }
        let retry: Vec<Envelope> = report
            .failed
            .iter()
            .filter_map(|f| by_id.get(&f.id.to_string()).cloned())
            .collect();
        transport.inner.requeue_front(retry);
        // At-least-once delivery: now and then a settled message comes again later.
        for id in &report.settled {
            if faults.lock().expect("rng").chance(5) {
                if let Some(e) = by_id.get(&id.to_string()) {
                    transport.inner.enqueue(e.clone());
                }
            }
        }
        now += gen_rng.below(50);
    }

    for id in 0..INSTANCES {
        let actual = store
            .inner
            .get(&target(id))
            .and_then(|s| {
                s.cells
                    .get("count")
                    .map(|c| c.value.decode::<i64>().expect("long"))
            })
            .unwrap_or(0);
        let expected = tracker.counts.get(&id.to_string()).copied().unwrap_or(0);
        assert_eq!(
            actual, expected,
            "seed {seed}: instance {id} (over = duplicate, under = loss)"
        );
    }
    let egress = transport.inner.take_egress();
    let tags: BTreeSet<String> = egress
        .iter()
        .map(|r| r.value.decode::<String>().expect("tag"))
        .collect();
    assert_eq!(tags, tracker.egress, "seed {seed}: egress lost or invented");
    let ids: BTreeSet<&str> = egress.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids.len(),
        tracker.egress.len(),
        "seed {seed}: one stable id per egress record"
    );
}

#[test]
fn random_command_trees_under_injected_faults_apply_every_effect_exactly_once() {
    for seed in 0..300 {
        run_seed(seed);
    }
}
