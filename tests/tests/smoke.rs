//! StateFun-style model tests of the commit pipeline, through the core's ports and its
//! real dedup and commit code. A command-interpreter function runs random command trees
//! (increment, send, send_after with shared and re-armed tokens, cancel in the same or
//! a later commit, egress); stateless relays forward them. A tracker computes what each
//! interpreter must count and which egress records must appear; the run must match it
//! exactly (over-count = duplicate, under-count = loss), with one id per egress record.
//!
//! - `random_command_trees_under_injected_faults_apply_every_effect_exactly_once`: 300
//!   short runs while the store and transport fail at random points (before a commit,
//!   after a commit whose answer is lost, before, during or after a send) and messages
//!   are delivered twice.
//! - `sixty_days_of_traffic_apply_every_effect_exactly_once`: the same faults over a
//!   simulated clock of 62 days with idle gaps longer than the dedup retention, records
//!   deleted when their TTL falls due (with DynamoDB's lag of up to 48 h), hundreds of
//!   relays that are deleted and come back, thousands of keyed-ingress sources,
//!   redeliveries within the retention window, duplicate timer deliveries, racing
//!   dispatchers (stale reads) and throttled reads. It prints the largest instance
//!   record and fails if any record outgrows a bound.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use statefun_core::dedup::{DedupEntry, DedupKey};
use statefun_core::pipeline::{block_on, dispatch};
use statefun_core::ports::{
    Clock, CommitError, ManualClock, MemoryStore, MemoryTransport, StateStore, StoreError,
    Transport, TransportError,
};
use statefun_core::{
    Address, BatchConfig, Commit, Context, Envelope, FunctionError, InstanceState, MessageId,
    OutboxEntry, Registry, TypeName, TypedValue, ValueSpec,
};

const SMOKE: TypeName = TypeName::from_static("smoke/interpreter");
const RELAY: TypeName = TypeName::from_static("smoke/relay");
const EGRESS: TypeName = TypeName::from_static("smoke/verification");
const COUNT: ValueSpec<i64> = ValueSpec::new("count");

/// An instance of the model: a counting interpreter or a stateless relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Node {
    relay: bool,
    id: u64,
}

impl Node {
    fn address(self) -> Address {
        if self.relay {
            Address::new(RELAY, format!("relay-with-a-longer-id-{:05}", self.id))
        } else {
            Address::new(SMOKE, self.id.to_string())
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Command {
    Increment,
    Send {
        to: Node,
        commands: Vec<Command>,
    },
    SendAfter {
        to: Node,
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

fn execute(ctx: &mut Context<'_>, msg: &TypedValue) -> Result<(), FunctionError> {
    let Commands(commands) = msg.decode()?;
    for command in commands {
        match command {
            Command::Increment => {
                let n = ctx.get(&COUNT)?.unwrap_or(0) + 1;
                ctx.set(&COUNT, &n)?;
            }
            Command::Send { to, commands } => ctx.send(to.address(), &Commands(commands)),
            Command::SendAfter {
                to,
                delay_ms,
                token,
                commands,
            } => ctx.send_after_value(
                Duration::from_millis(delay_ms),
                to.address(),
                TypedValue::of(&Commands(commands)),
                token,
            )?,
            Command::Cancel { token } => ctx.cancel_delayed_message(token)?,
            Command::Egress { tag } => ctx.send_egress(EGRESS, &tag),
        }
    }
    Ok(())
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register_fn(SMOKE, vec![COUNT.spec()], execute)
        .expect("register interpreter");
    r.register_fn(RELAY, vec![], execute)
        .expect("register relay");
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

/// The model's size and timing.
struct Shape {
    interpreters: u64,
    relays: u64,
    /// Short delays are below this; some timers wait up to `long_delay_ms`.
    short_delay_ms: u64,
    long_delay_ms: u64,
}

/// What the run must produce.
#[derive(Default)]
struct Tracker {
    counts: BTreeMap<u64, i64>,
    egress: BTreeSet<String>,
    tokens: u64,
    tags: u64,
}

impl Tracker {
    fn node(&self, rng: &mut Rng, shape: &Shape) -> Node {
        if shape.relays > 0 && rng.chance(40) {
            Node {
                relay: true,
                id: rng.below(shape.relays),
            }
        } else {
            Node {
                relay: false,
                id: rng.below(shape.interpreters),
            }
        }
    }

    fn token(&mut self) -> String {
        self.tokens += 1;
        format!("t{}", self.tokens)
    }

    /// Generates commands for `at`, recording their expected effects unless `counted`
    /// is false (inside a message that will be cancelled).
    fn generate(
        &mut self,
        rng: &mut Rng,
        shape: &Shape,
        at: Node,
        depth: u32,
        counted: bool,
    ) -> Vec<Command> {
        let mut out = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let choice = if depth >= 3 { 0 } else { rng.below(9) };
            match choice {
                0 | 1 if at.relay => out.push(self.egress(rng, counted)),
                0 | 1 => {
                    if counted {
                        *self.counts.entry(at.id).or_default() += 1;
                    }
                    out.push(Command::Increment);
                }
                2 | 3 => {
                    let to = self.node(rng, shape);
                    let commands = self.generate(rng, shape, to, depth + 1, counted);
                    out.push(Command::Send { to, commands });
                }
                4 => {
                    // A timer, cancelled in the same invocation or not.
                    let to = self.node(rng, shape);
                    let cancel = rng.chance(30);
                    let token = self.token();
                    let delay_ms = self.delay(rng, shape);
                    let commands = self.generate(rng, shape, to, depth + 1, counted && !cancel);
                    out.push(Command::SendAfter {
                        to,
                        delay_ms,
                        token: Some(token.clone()),
                        commands,
                    });
                    if cancel {
                        out.push(Command::Cancel { token });
                    }
                }
                5 => {
                    // Two timers sharing a token, both cancelled, and the token re-armed.
                    let token = self.token();
                    for _ in 0..2 {
                        let to = self.node(rng, shape);
                        let delay_ms = self.delay(rng, shape);
                        let commands = self.generate(rng, shape, to, depth + 1, false);
                        out.push(Command::SendAfter {
                            to,
                            delay_ms,
                            token: Some(token.clone()),
                            commands,
                        });
                    }
                    out.push(Command::Cancel {
                        token: token.clone(),
                    });
                    let to = self.node(rng, shape);
                    let delay_ms = self.delay(rng, shape);
                    let commands = self.generate(rng, shape, to, depth + 1, counted);
                    out.push(Command::SendAfter {
                        to,
                        delay_ms,
                        token: Some(token),
                        commands,
                    });
                }
                6 => {
                    // A timer cancelled by a later commit of the same sender (a message
                    // to itself), long before it is due.
                    let to = self.node(rng, shape);
                    let token = self.token();
                    let commands = self.generate(rng, shape, to, depth + 1, false);
                    out.push(Command::SendAfter {
                        to,
                        delay_ms: 7 * 24 * 3600 * 1000,
                        token: Some(token.clone()),
                        commands,
                    });
                    out.push(Command::Send {
                        to: at,
                        commands: vec![Command::Cancel { token }],
                    });
                }
                _ => out.push(self.egress(rng, counted)),
            }
        }
        out
    }

    fn delay(&self, rng: &mut Rng, shape: &Shape) -> u64 {
        if rng.chance(10) {
            rng.below(shape.long_delay_ms)
        } else {
            rng.below(shape.short_delay_ms)
        }
    }

    fn egress(&mut self, rng: &mut Rng, counted: bool) -> Command {
        self.tags += 1;
        let tag = format!("e{}-{}", self.tags, rng.below(1 << 20));
        if counted {
            self.egress.insert(tag.clone());
        }
        Command::Egress { tag }
    }
}

/// Figures of a run, printed by the long one.
#[derive(Debug, Default)]
struct Figures {
    max_record_bytes: usize,
    max_record: Option<Address>,
    commits: u64,
    spilled: usize,
    stale_reads: u64,
}

/// A store that fails before a read or a commit, commits and loses the answer, or
/// answers a read with the record as it was before its last commit (a second
/// dispatcher that read before the first one committed).
struct FaultyStore<'a> {
    inner: MemoryStore,
    rng: &'a Mutex<Rng>,
    stale_reads: bool,
    previous: Mutex<HashMap<Address, InstanceState>>,
    figures: Mutex<Figures>,
}

impl<'a> FaultyStore<'a> {
    fn new(rng: &'a Mutex<Rng>, stale_reads: bool) -> Self {
        FaultyStore {
            inner: MemoryStore::new(),
            rng,
            stale_reads,
            previous: Mutex::new(HashMap::new()),
            figures: Mutex::new(Figures::default()),
        }
    }

    fn apply(&self, commit: &Commit) -> Result<(), CommitError> {
        let before = self.inner.get(&commit.address);
        self.inner.apply(commit)?;
        if let Some(before) = before {
            self.previous
                .lock()
                .expect("previous")
                .insert(commit.address.clone(), before);
        }
        let bytes = commit.state.to_bytes().len();
        let mut figures = self.figures.lock().expect("figures");
        figures.commits += 1;
        figures.spilled += commit.spill.len();
        if bytes > figures.max_record_bytes {
            figures.max_record_bytes = bytes;
            figures.max_record = Some(commit.address.clone());
        }
        Ok(())
    }
}

impl StateStore for FaultyStore<'_> {
    async fn load(&self, addresses: &[Address]) -> Result<Vec<Option<InstanceState>>, StoreError> {
        let roll = self.rng.lock().expect("rng").below(100);
        if roll < 3 {
            return Err(StoreError("injected: read throttled".into()));
        }
        let mut loaded = self.inner.load(addresses).await?;
        if self.stale_reads && roll < 6 {
            self.figures.lock().expect("figures").stale_reads += 1;
            let previous = self.previous.lock().expect("previous");
            for (state, address) in loaded.iter_mut().zip(addresses) {
                if let Some(old) = previous.get(address) {
                    *state = Some(old.clone());
                }
            }
        }
        Ok(loaded)
    }

    async fn load_dedup(
        &self,
        lookups: &[(Address, Vec<DedupKey>)],
    ) -> Result<Vec<Vec<DedupEntry>>, StoreError> {
        if self.rng.lock().expect("rng").chance(3) {
            return Err(StoreError("injected: dedup read throttled".into()));
        }
        self.inner.load_dedup(lookups).await
    }

    async fn commit(&self, commits: &[Commit]) -> Vec<Result<(), CommitError>> {
        let rolls: Vec<u64> = {
            let mut rng = self.rng.lock().expect("rng");
            commits.iter().map(|_| rng.below(100)).collect()
        };
        commits
            .iter()
            .zip(rolls)
            .map(|(c, roll)| match roll {
                0..5 => Err(StoreError("injected: commit refused".into()).into()),
                5..10 => self.apply(c).and(Err(StoreError(
                    "injected: commit landed, answer lost".into(),
                )
                .into())),
                _ => self.apply(c),
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

/// One model run: its ports, its clock, the redeliveries it has planned.
struct Run<'a> {
    registry: Registry,
    config: BatchConfig,
    store: FaultyStore<'a>,
    transport: FaultyTransport<'a>,
    clock: ManualClock,
    faults: &'a Mutex<Rng>,
    /// Messages to deliver again at a time: (due, seq) → message.
    redeliveries: BTreeMap<(u64, u64), Envelope>,
    /// When each message was first enqueued: no redelivery comes later than the
    /// retention after that (SQS drops it).
    first_seen: HashMap<MessageId, u64>,
    planned: u64,
}

impl<'a> Run<'a> {
    fn new(faults: &'a Mutex<Rng>, start_ms: u64, stale_reads: bool) -> Self {
        Run {
            registry: registry(),
            config: BatchConfig::default(),
            store: FaultyStore::new(faults, stale_reads),
            transport: FaultyTransport {
                inner: MemoryTransport::new(),
                rng: faults,
            },
            clock: ManualClock::new(start_ms),
            faults,
            redeliveries: BTreeMap::new(),
            first_seen: HashMap::new(),
            planned: 0,
        }
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    fn enqueue(&mut self, envelope: Envelope) {
        let now = self.now();
        self.first_seen.entry(envelope.id.clone()).or_insert(now);
        self.transport.inner.enqueue(envelope);
    }

    /// Plans another delivery of `envelope` within `within_ms`, as long as SQS could
    /// still hold it.
    fn redeliver(&mut self, envelope: Envelope, within_ms: u64) {
        let now = self.now();
        let first = *self.first_seen.entry(envelope.id.clone()).or_insert(now);
        let last = first + self.config.retention_ms() - 3_600_000;
        if now >= last {
            return;
        }
        let at = now
            + 1
            + self
                .faults
                .lock()
                .expect("rng")
                .below(within_ms.min(last - now));
        self.planned += 1;
        self.redeliveries.insert((at, self.planned), envelope);
    }

    /// Moves due redeliveries and timers into the inbox; some fired timers are
    /// delivered twice (the delay queue is a standard queue).
    fn release_due(&mut self, duplicate_within_ms: u64) {
        let now = self.now();
        let due: Vec<(u64, u64)> = self
            .redeliveries
            .range(..(now + 1, 0))
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            if let Some(e) = self.redeliveries.remove(&key) {
                self.transport.inner.enqueue(e);
            }
        }
        let store = &self.store.inner;
        let fired = self
            .transport
            .inner
            .fire_due(now, |t| store.is_cancelled(t));
        for e in fired {
            self.first_seen.entry(e.id.clone()).or_insert(now);
            if self.faults.lock().expect("rng").chance(5) {
                self.redeliver(e, duplicate_within_ms);
            }
        }
    }

    /// Dispatches one batch of up to `max` messages; failed ones go back to the head of
    /// the queue, some settled ones are planned for another delivery.
    fn dispatch(&mut self, max: usize, duplicate_within_ms: u64) {
        let batch = self.transport.inner.take_inbox(max);
        let by_id: HashMap<MessageId, Envelope> =
            batch.iter().map(|e| (e.id.clone(), e.clone())).collect();
        let report = block_on(dispatch(
            &self.registry,
            &self.store,
            &self.transport,
            &self.config,
            &self.clock,
            batch,
        ));
        for failed in report.failed() {
            assert!(
                failed.is_retryable(),
                "unexpected poison: {}",
                failed.reason
            );
        }
        let retry: Vec<Envelope> = report
            .failed()
            .filter_map(|f| by_id.get(&f.id).cloned())
            .collect();
        self.transport.inner.requeue_front(retry);
        for id in report.settled() {
            if self.faults.lock().expect("rng").chance(5)
                && let Some(e) = by_id.get(id)
            {
                self.redeliver(e.clone(), duplicate_within_ms);
            }
        }
    }

    fn idle(&self) -> bool {
        self.transport.inner.inbox_len() == 0
    }

    /// Runs until nothing is left: no message, no timer, no planned redelivery. Time
    /// moves by up to `step_ms` between batches, and jumps to the next event when idle.
    fn drain(&mut self, rng: &mut Rng, duplicate_within_ms: u64, step_ms: u64) {
        for _ in 0..1_000_000 {
            self.release_due(duplicate_within_ms);
            if self.idle() {
                let next = [
                    self.transport.inner.next_due_ms(),
                    self.redeliveries.keys().next().map(|k| k.0),
                ]
                .into_iter()
                .flatten()
                .min();
                match next {
                    Some(at) => self
                        .clock
                        .advance(Duration::from_millis(at.saturating_sub(self.now()).max(1))),
                    None => return,
                }
                continue;
            }
            self.dispatch(1 + rng.below(10) as usize, duplicate_within_ms);
            self.clock
                .advance(Duration::from_millis(rng.below(step_ms)));
        }
        panic!("no convergence");
    }

    /// Checks the counts, the egress records and their ids against the tracker.
    fn verify(&self, tracker: &Tracker, label: &str) {
        for (id, expected) in &tracker.counts {
            let node = Node {
                relay: false,
                id: *id,
            };
            let actual = self
                .store
                .inner
                .get(&node.address())
                .and_then(|s| {
                    s.cells
                        .get("count")
                        .map(|c| c.value.decode::<i64>().expect("long"))
                })
                .unwrap_or(0);
            assert_eq!(
                actual, *expected,
                "{label}: interpreter {id} (over = duplicate, under = loss)"
            );
        }
        let egress = self.transport.inner.take_egress();
        let tags: BTreeSet<String> = egress
            .iter()
            .map(|r| r.value.decode::<String>().expect("tag"))
            .collect();
        let missing: Vec<&String> = tracker.egress.difference(&tags).take(5).collect();
        let invented: Vec<&String> = tags.difference(&tracker.egress).take(5).collect();
        assert!(
            missing.is_empty() && invented.is_empty(),
            "{label}: egress lost {missing:?} or invented {invented:?}"
        );
        // Re-sends repeat a record with its id; two different records never share one.
        let mut by_id: HashMap<&str, &TypedValue> = HashMap::new();
        for r in &egress {
            if let Some(previous) = by_id.insert(r.id.as_str(), &r.value) {
                assert_eq!(
                    previous, &r.value,
                    "{label}: egress id {} used for two different records",
                    r.id
                );
            }
        }
        assert_eq!(
            by_id.len(),
            tracker.egress.len(),
            "{label}: one stable id per egress record"
        );
    }
}

fn run_seed(seed: u64) {
    let mut gen_rng = Rng(seed);
    let faults = Mutex::new(Rng(seed ^ 0xfa17));
    let mut tracker = Tracker::default();
    let shape = Shape {
        interpreters: 8,
        relays: 4,
        short_delay_ms: 5_000,
        long_delay_ms: 20_000,
    };
    let mut run = Run::new(&faults, 0, false);
    for seq in 1..=40 {
        let at = Node {
            relay: false,
            id: gen_rng.below(shape.interpreters),
        };
        let commands = tracker.generate(&mut gen_rng, &shape, at, 0, true);
        run.enqueue(Envelope {
            id: MessageId::Ordered {
                source: "ingress/smoke".into(),
                seq,
                index: 0,
            },
            target: at.address(),
            caller: None,
            value: TypedValue::of(&Commands(commands)),
        });
    }
    run.drain(&mut gen_rng, 1_000, 50);
    run.verify(&tracker, &format!("seed {seed}"));
}

#[test]
fn random_command_trees_under_injected_faults_apply_every_effect_exactly_once() {
    for seed in 0..300 {
        run_seed(seed);
    }
}

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;

/// A record larger than this means the dedup record grows with traffic.
const RECORD_BOUND_BYTES: usize = 24 * 1024;

#[test]
fn sixty_days_of_traffic_apply_every_effect_exactly_once() {
    let faults = Mutex::new(Rng(0x5eed));
    let mut rng = Rng(42);
    let mut tracker = Tracker::default();
    let shape = Shape {
        interpreters: 16,
        relays: 600,
        short_delay_ms: 10 * 60_000,
        long_delay_ms: 20 * DAY_MS,
    };
    // 2026-01-01: versions and TTLs look as they would in production.
    let start = 1_767_225_600_000;
    let mut run = Run::new(&faults, start, true);
    let retention = run.config.retention_ms();
    // Active for 10 days, idle for 16 (longer than the 14.5-day retention), and so on.
    let phases = [
        (true, 10 * DAY_MS),
        (false, 16 * DAY_MS),
        (true, 10 * DAY_MS),
        (false, 16 * DAY_MS),
        (true, 10 * DAY_MS),
    ];
    let (mut ordered_seq, mut keyed, mut ingress) = (0u64, 0u64, 0u64);
    let mut deleted: BTreeSet<Address> = BTreeSet::new();
    let mut deletions = 0;
    let mut next_ttl_sweep = start;
    let mut phase_end = start;
    for (active, length) in phases {
        phase_end += length;
        while run.now() < phase_end {
            if run.now() >= next_ttl_sweep {
                let lag = &mut || faults.lock().expect("rng").below(48 * HOUR_MS);
                let gone = run.store.inner.delete_expired(run.now(), lag);
                deletions += gone.len();
                deleted.extend(gone);
                next_ttl_sweep = run.now() + HOUR_MS;
            }
            run.release_due(6 * HOUR_MS);
            if active && rng.chance(20) {
                // Ingress: ordered (a durable sequence) or keyed by a source's record id;
                // keyed ones come again now and then, as an SQS ingress redelivers.
                // Half of it to one hot address.
                let at = if rng.chance(50) {
                    Node {
                        relay: false,
                        id: 0,
                    }
                } else {
                    tracker.node(&mut rng, &shape)
                };
                let commands = tracker.generate(&mut rng, &shape, at, 0, true);
                ingress += 1;
                let id = if rng.chance(60) {
                    keyed += 1;
                    MessageId::Keyed(format!("sqs:{:08x}-{keyed}", rng.below(1 << 32)))
                } else {
                    ordered_seq += 1;
                    MessageId::Ordered {
                        source: "ingress/http".into(),
                        seq: ordered_seq,
                        index: 0,
                    }
                };
                let envelope = Envelope {
                    id,
                    target: at.address(),
                    caller: None,
                    value: TypedValue::of(&Commands(commands)),
                };
                run.enqueue(envelope);
            }
            if run.idle() {
                // Nothing to do: jump to the next event.
                let next = [
                    run.transport.inner.next_due_ms(),
                    run.redeliveries.keys().next().map(|k| k.0),
                    Some(next_ttl_sweep),
                    Some(phase_end),
                ]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(phase_end);
                let step = if active {
                    next.min(run.now() + 60_000)
                } else {
                    next
                };
                run.clock
                    .advance(Duration::from_millis(step.saturating_sub(run.now()).max(1)));
                continue;
            }
            run.dispatch(1 + rng.below(10) as usize, 6 * HOUR_MS);
            run.clock
                .advance(Duration::from_millis(rng.below(if active {
                    60_000
                } else {
                    1_000
                })));
        }
    }
    // Drain: everything due and every planned redelivery.
    run.drain(&mut rng, HOUR_MS, 1_000);

    run.verify(&tracker, "60 days");
    let figures = run.store.figures.lock().expect("figures");
    let revived = deleted
        .iter()
        .filter(|a| run.store.inner.get(a).is_some())
        .count();
    println!(
        "simulated {:.1} days; {ingress} ingress messages ({keyed} keyed), {} commits, \
         {} planned redeliveries, {} stale reads; {deletions} records deleted by TTL, {revived} of \
         them written again later; {} dedup entries spilled out of records; largest instance record \
         {} bytes ({:?}); retention {:.1} days",
        (run.now() - start) as f64 / DAY_MS as f64,
        figures.commits,
        run.planned,
        figures.stale_reads,
        figures.spilled,
        figures.max_record_bytes,
        figures.max_record,
        retention as f64 / DAY_MS as f64,
    );
    assert!(
        run.now() - start >= 60 * DAY_MS,
        "the model must cover 60 days"
    );
    assert!(
        revived > 0,
        "the model must write records again after TTL deleted them"
    );
    assert!(keyed >= 2_000, "thousands of keyed sources: {keyed}");
    assert!(
        figures.max_record_bytes <= RECORD_BOUND_BYTES,
        "an instance record reached {} bytes ({:?}): dedup grows with traffic",
        figures.max_record_bytes,
        figures.max_record
    );
    assert!(figures.spilled > 0, "the model must spill dedup entries");
}
