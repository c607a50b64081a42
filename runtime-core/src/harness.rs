//! A test harness for users' functions: no runtime, no AWS, a clock that moves only
//! when told to. Messages run through the same batch processing, commit plan and dedup
//! as production, over the in-memory ports.
//!
//! ```
//! use statefun_core::{Address, Harness, Registry, TypeName, ValueSpec};
//!
//! const COUNTER: TypeName = TypeName::from_static("example/counter");
//! const COUNT: ValueSpec<i64> = ValueSpec::new("count");
//!
//! let mut registry = Registry::new();
//! registry
//!     .register_fn("example/counter", vec![COUNT.spec()], |ctx, msg| {
//!         let n = ctx.get(&COUNT)?.unwrap_or(0) + msg.decode::<i64>()?;
//!         ctx.set(&COUNT, &n)
//!     })
//!     .unwrap();
//!
//! let mut h = Harness::new(registry);
//! let a = Address::new(COUNTER, "a");
//! h.send(a.clone(), &2i64).send(a.clone(), &3i64);
//! assert_eq!(h.state(&a, &COUNT), Some(5));
//! ```

use std::collections::HashMap;
use std::time::Duration;

use crate::batch::BatchConfig;
use crate::failure::Next;
use crate::function::Registry;
use crate::message::{EgressRecord, Envelope, MessageId};
use crate::pipeline::{block_on, dispatch};
use crate::ports::{Clock, ManualClock, MemoryStore, MemoryTransport, Timer};
use crate::spec::ValueSpec;
use crate::typename::{Address, TypeName};
use crate::value::{TypedValue, ValueType};

/// A message that was given up on, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub envelope: Envelope,
    pub reason: String,
}

/// Drives functions in memory. See the module docs for an example.
#[derive(Debug)]
pub struct Harness {
    registry: Registry,
    config: BatchConfig,
    store: MemoryStore,
    transport: MemoryTransport,
    clock: ManualClock,
    ingress_seq: u64,
    delivered: Vec<Envelope>,
    captured: Vec<Envelope>,
    dead_letters: Vec<DeadLetter>,
    egress: Vec<EgressRecord>,
}

impl Harness {
    /// A harness whose clock starts at 0 ms.
    pub fn new(registry: Registry) -> Self {
        Harness {
            registry,
            config: BatchConfig::default(),
            store: MemoryStore::new(),
            transport: MemoryTransport::new(),
            clock: ManualClock::new(0),
            ingress_seq: 0,
            delivered: Vec::new(),
            captured: Vec::new(),
            dead_letters: Vec::new(),
            egress: Vec::new(),
        }
    }

    /// Deploys a new build of the functions over the same state, as an upgrade does:
    /// test a changed [`ValueSpec`] and its migration before it meets production data.
    pub fn upgrade(&mut self, registry: Registry) -> &mut Self {
        self.registry = registry;
        self
    }

    pub fn with_config(mut self, config: BatchConfig) -> Self {
        self.config = config;
        self
    }

    /// Sends `value` to `to` as an ingress would, then runs until nothing is deliverable.
    pub fn send<T: ValueType>(&mut self, to: Address, value: &T) -> &mut Self {
        self.send_value(to, TypedValue::of(value))
    }

    pub fn send_value(&mut self, to: Address, value: TypedValue) -> &mut Self {
        self.ingress_seq += 1;
        self.transport.enqueue(Envelope {
            id: MessageId::Ordered {
                source: "ingress/harness".into(),
                seq: self.ingress_seq,
                index: 0,
            },
            target: to,
            caller: None,
            value,
        });
        self.run();
        self
    }

    /// Moves the clock forward, delivering delayed messages as they fall due, in order.
    pub fn advance(&mut self, by: Duration) -> &mut Self {
        let until = self.clock.now_ms() + by.as_millis() as u64;
        while let Some(due) = self.transport.next_due_ms().filter(|d| *d <= until) {
            let now = self.clock.now_ms();
            self.clock
                .advance(Duration::from_millis(due.saturating_sub(now)));
            self.transport.fire_due(due, |t| self.store.is_cancelled(t));
            self.run();
        }
        let now = self.clock.now_ms();
        self.clock
            .advance(Duration::from_millis(until.saturating_sub(now)));
        self
    }

    /// Delivers every deliverable message. Messages to function types that are not
    /// registered are captured (see [`captured`](Self::captured)) so one function can be
    /// tested alone.
    pub fn run(&mut self) -> &mut Self {
        loop {
            let batch = self.transport.take_inbox(64);
            if batch.is_empty() {
                return self;
            }
            let (batch, foreign): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .partition(|e| self.registry.contains(&e.target.function_type));
            self.captured.extend(foreign);
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
            self.delivered
                .extend(report.settled().filter_map(|id| by_id.get(id).cloned()));
            // The core decided what becomes of each address's unsettled messages; the
            // harness retries at once (its clock moves only when told to).
            let mut retry = Vec::new();
            for address in report.addresses {
                let mut failed = address.failed.into_iter();
                if let Some(Next::DeadLetter { reason }) = address.next
                    && let Some(head) = failed.next()
                    && let Some(envelope) = by_id.get(&head.id).cloned()
                {
                    self.dead_letters.push(DeadLetter { envelope, reason });
                }
                retry.extend(failed.filter_map(|f| by_id.get(&f.id).cloned()));
            }
            self.transport.requeue_front(retry);
            self.egress.extend(self.transport.take_egress());
        }
    }

    /// A state value as the function would read it now (absent once expired).
    pub fn state<T: ValueType>(&self, address: &Address, spec: &ValueSpec<T>) -> Option<T> {
        let record = self.store.get(address)?;
        let cell = record.cells.get(spec.name())?;
        if !cell.is_live(self.clock.now_ms()) {
            return None;
        }
        cell.value.decode().ok()
    }

    /// The stored record of an instance, for assertions on versions and outboxes.
    pub fn record(&self, address: &Address) -> Option<crate::InstanceState> {
        self.store.get(address)
    }

    /// Every egress record emitted so far.
    pub fn egress(&self) -> &[EgressRecord] {
        &self.egress
    }

    /// The decoded values emitted to one egress.
    pub fn egress_values<T: ValueType>(&self, egress: &TypeName) -> Vec<T> {
        self.egress
            .iter()
            .filter(|r| &r.egress == egress)
            .filter_map(|r| r.value.decode().ok())
            .collect()
    }

    /// Every message delivered and applied, in delivery order.
    pub fn delivered(&self) -> &[Envelope] {
        &self.delivered
    }

    /// Messages to function types this harness has no function for.
    pub fn captured(&self) -> &[Envelope] {
        &self.captured
    }

    /// Delayed messages not yet due and not cancelled, earliest first.
    pub fn pending_delayed(&self) -> Vec<Timer> {
        let mut timers = self.transport.pending_timers();
        timers.retain(|t| !self.store.is_cancelled(t));
        timers
    }

    /// Messages given up on: terminal failures, and retryable ones after the failure
    /// policy's attempts ([`BatchConfig::retry`]).
    pub fn dead_letters(&self) -> &[DeadLetter] {
        &self.dead_letters
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
}
