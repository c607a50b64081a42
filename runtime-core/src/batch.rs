//! Per-address batch processing: messages in, one commit plan out.
//!
//! All messages for one address in a batch run in order against the same state and are
//! committed once. The result is data: what to re-send, what to commit (under which
//! version precondition) and which messages are settled or failed. Hosts execute it in
//! this order: `resend`, then `commit`, then the commit's outbox, then acknowledge
//! `settled`. That order is what makes every effect happen exactly once:
//! - the commit stores state, dedup record and outbox together, so a crash after it
//!   loses nothing: the unacknowledged inputs come back, are recognised as applied,
//!   and bring their commit's outbox with them (`resend`);
//! - the re-send runs before the next commit, because that commit replaces the outbox;
//! - receivers drop what they applied before ([`crate::dedup`]), so re-sends are safe.

use std::sync::Arc;
use std::time::Duration;

use crate::context::{Context, Effect};
use crate::dedup::Spilled;
use crate::failure::RetryPolicy;
use crate::function::{FunctionError, Registry};
use crate::message::{EgressRecord, Envelope, Issued, MessageId, OutboxEntry};
use crate::ports::Clock;
use crate::spec::{Expiration, StateSpec};
use crate::state::{Cell, Failing, InstanceState, VERSIONS_PER_MS, next_version};
use crate::typename::{Address, TypeName};

/// What can be stored and sent, mirroring the AWS limits by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// One state value (DynamoDB items are at most 400 KB in all).
    pub max_value_bytes: usize,
    /// One message or egress payload (SQS: 256 KiB).
    pub max_message_bytes: usize,
    /// An instance's values plus its outbox, stored in one write. With the dedup
    /// budget and the last inputs it stays under DynamoDB's 400 KB item.
    pub max_record_bytes: usize,
    /// The longest delay of a delayed message: cancellations are kept this long.
    pub max_delay: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_value_bytes: 350 * 1024,
            max_message_bytes: 256 * 1024,
            max_record_bytes: 360 * 1024,
            max_delay: Duration::from_secs(365 * 24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    pub limits: Limits,
    /// How long dedup records are kept: longer than any redelivery can take (queue
    /// retention + visibility timeout). Default: 14 days + 12 hours, SQS's maxima.
    pub dedup_retention: Duration,
    /// The most bytes of dedup entries an instance record keeps; older entries spill
    /// outside it ([`crate::dedup`]).
    pub dedup_budget_bytes: usize,
    /// Retry vs dead letter for failed messages, on every host.
    pub retry: RetryPolicy,
    /// How long after its commit a stored outbox whose inputs did not come back is
    /// taken as possibly unsent, and re-sent before the next commit replaces it: the
    /// inputs may have gone (a queue's redrive, its retention, a purge) and must not
    /// take their outputs with them. Longer than a send takes; shorter than a queue's
    /// redrive (`maxReceiveCount` × visibility timeout).
    pub outbox_settle: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            limits: Limits::default(),
            dedup_retention: Duration::from_secs((14 * 24 + 12) * 3600),
            dedup_budget_bytes: 4 * 1024,
            retry: RetryPolicy::default(),
            outbox_settle: Duration::from_secs(600),
        }
    }
}

impl BatchConfig {
    pub fn retention_ms(&self) -> u64 {
        self.dedup_retention.as_millis() as u64
    }
}

/// A value or message too large to store or send; never truncated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{address}: {what} is {size} {unit}, over the limit of {limit} {unit}")]
pub struct LimitError {
    pub address: Address,
    pub what: String,
    pub size: usize,
    pub limit: usize,
    /// What `size` and `limit` count: bytes, or seconds for a delay.
    pub unit: &'static str,
}

/// Why a message could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessError {
    #[error("no function is registered for type {0}")]
    UnknownFunctionType(TypeName),
    #[error("function failed: {0}")]
    Function(#[from] FunctionError),
    #[error(transparent)]
    TooLarge(#[from] LimitError),
    /// The instance record cannot take the effects (alone, or beside its batch-mates':
    /// then the batch is split and only a message that cannot fit alone fails).
    #[error(transparent)]
    RecordTooLarge(LimitError),
    /// A remote function could not be reached or answered garbage after the transport's
    /// retries: try again later, never dead-letter.
    #[error("remote function unavailable: {0}")]
    Unavailable(String),
}

impl ProcessError {
    /// Whether trying again later can succeed; otherwise the message is poison.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProcessError::Function(e) => e.is_retryable(),
            ProcessError::Unavailable(_) => true,
            _ => false,
        }
    }

    /// Whether the failure is of the infrastructure, not of the message.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ProcessError::Unavailable(_))
    }

    /// How a host treats it ([`crate::failure`]).
    pub fn kind(&self) -> crate::failure::FailureKind {
        use crate::failure::FailureKind;
        if self.is_unavailable() {
            FailureKind::Unavailable
        } else if self.is_retryable() {
            FailureKind::Retryable
        } else {
            FailureKind::Poison
        }
    }
}

/// A failed message and every later message of the same address in the batch, which
/// must not overtake it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub error: ProcessError,
    pub messages: Vec<MessageId>,
    /// Tries of the failed (first) message that count, this one included: kept in the
    /// record for a function that asks to be retried, 1 otherwise.
    pub attempts: u32,
}

impl Failure {
    /// Why, as every host reports and stores it (bounded: [`crate::failure::REASON_MAX`]).
    pub fn reason(&self) -> String {
        crate::failure::excerpt(&self.error.to_string(), crate::failure::REASON_MAX).into_owned()
    }

    /// What the failure policy says to do with the address's unsettled messages.
    pub fn next(&self, policy: &crate::RetryPolicy) -> crate::failure::Next {
        policy.next(self.error.kind(), self.attempts, &self.reason())
    }
}

/// The version an instance must have for a commit to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    DoesNotExist,
    MatchesVersion(u64),
}

/// A conditional write of one instance's new record, with what must be written
/// atomically beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub address: Address,
    pub precondition: Precondition,
    pub state: InstanceState,
    /// Dedup entries moved out of the record: stored in the same atomic write, each
    /// until its expiry.
    pub spill: Vec<Spilled>,
    /// When the record may be deleted (TTL), if ever.
    pub delete_after_ms: Option<u64>,
    /// Whether this commit applied messages (and so carries a new outbox), or only
    /// counted a failed try ([`crate::failure`]) and keeps the previous outbox stored.
    pub applied: bool,
}

impl Commit {
    /// The effects this commit makes: what hosts execute after it.
    pub fn outbox(&self) -> &[OutboxEntry] {
        if self.applied {
            &self.state.outbox
        } else {
            &[]
        }
    }

    /// The cancellations of this commit: stored with it (not when its outbox runs), so
    /// a cancel is in effect from its commit even if the outbox is delayed.
    pub fn cancels(&self) -> impl Iterator<Item = (&str, Issued)> {
        self.outbox().iter().filter_map(|e| match e {
            OutboxEntry::Cancel { token, issued, .. } => Some((token.as_str(), *issued)),
            _ => None,
        })
    }
}

/// The plan for one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressOutcome {
    /// The previous commit's outbox, to deliver before `commit` because one of that
    /// commit's inputs came again (its sends may not have happened).
    pub resend: Vec<OutboxEntry>,
    pub commit: Option<Commit>,
    /// Messages done once the above is executed: applied now, or applied before.
    pub settled: Vec<MessageId>,
    pub failure: Option<Failure>,
    /// Messages not run because the record could not take their effects beside the
    /// earlier messages': they run after this commit and its outbox, against the
    /// committed record (a message is refused for size only if it cannot fit alone).
    pub deferred: Vec<Envelope>,
}

impl AddressOutcome {
    /// Every message of the outcome, settled or not.
    pub fn all_ids(&self) -> Vec<MessageId> {
        let mut ids = self.settled.clone();
        if let Some(f) = &self.failure {
            ids.extend(f.messages.iter().cloned());
        }
        ids.extend(self.deferred.iter().map(|m| m.id.clone()));
        ids
    }
}

fn effect_size(effect: &Effect) -> usize {
    match effect {
        Effect::Send { value, .. }
        | Effect::SendAfter { value, .. }
        | Effect::Egress { value, .. } => value.size(),
        Effect::Cancel { token } => token.len(),
    }
}

/// One address's batch in progress: the record being built and what became of each
/// message so far. Shared by local functions (one invocation per message) and remote
/// ones (one request per batch).
struct Working<'a> {
    address: &'a Address,
    precondition: Precondition,
    state: InstanceState,
    resend_needed: bool,
    settled: Vec<MessageId>,
    applied: Vec<MessageId>,
    /// Effects with the clock reading of the invocation that made them.
    effects: Vec<(Effect, u64)>,
    record_bytes: usize,
}

impl<'a> Working<'a> {
    /// Starts from the loaded record as live at `now_ms` (the batch's start).
    fn begin(address: &'a Address, loaded: Option<InstanceState>, now_ms: u64) -> Self {
        let precondition = match &loaded {
            None => Precondition::DoesNotExist,
            Some(s) => Precondition::MatchesVersion(s.version),
        };
        let mut state = loaded.unwrap_or_default();
        state.cells.retain(|_, c| c.is_live(now_ms));
        let record_bytes = state.cells.values().map(|c| c.value.size()).sum();
        Working {
            address,
            precondition,
            state,
            resend_needed: false,
            settled: Vec::new(),
            applied: Vec::new(),
            effects: Vec::new(),
            record_bytes,
        }
    }

    /// Settles `id` if it was applied before; a message of the last commit brings that
    /// commit's outbox back.
    fn settle_if_applied(&mut self, id: &MessageId) -> bool {
        if !self.state.dedup.is_applied(id) {
            return false;
        }
        self.resend_needed |= self.state.last_inputs.contains(id);
        self.settled.push(id.clone());
        true
    }

    /// Applies checked writes and effects of the messages `ids`, invoked at `now_ms`
    /// (expiry and delays count from there).
    fn apply(
        &mut self,
        specs: &[StateSpec],
        staged: Staged,
        effects: Vec<Effect>,
        record_bytes: usize,
        ids: &[MessageId],
        now_ms: u64,
    ) {
        self.record_bytes = record_bytes;
        for (index, value) in staged {
            let spec = &specs[index];
            match value {
                Some(value) => {
                    let expires_at_ms = expiry(spec.expiration, now_ms);
                    match self.state.cells.get_mut(&spec.name) {
                        Some(cell) => {
                            cell.value = value;
                            cell.expires_at_ms = expires_at_ms;
                        }
                        None => {
                            self.state.cells.insert(
                                spec.name.clone(),
                                Cell {
                                    value,
                                    expires_at_ms,
                                },
                            );
                        }
                    }
                }
                None => {
                    self.state.cells.remove(&spec.name);
                }
            }
        }
        for spec in specs {
            if let Expiration::AfterCall(_) = spec.expiration
                && let Some(cell) = self.state.cells.get_mut(&spec.name)
            {
                cell.expires_at_ms = expiry(spec.expiration, now_ms);
            }
        }
        self.effects
            .extend(effects.into_iter().map(|e| (e, now_ms)));
        for id in ids {
            self.state.dedup.record(id, now_ms);
            self.settled.push(id.clone());
            self.applied.push(id.clone());
        }
    }

    /// The plan; `commit_ms` is the clock reading the commit is stamped with.
    fn finish(
        self,
        mut failure: Option<Failure>,
        deferred: Vec<Envelope>,
        commit_ms: u64,
        config: &BatchConfig,
    ) -> AddressOutcome {
        let Working {
            address,
            precondition,
            mut state,
            resend_needed,
            settled,
            applied,
            effects,
            ..
        } = self;
        // The stored outbox goes out again before a commit replaces it if its inputs
        // came again, or if it is old enough that they may have gone without it (within
        // half the retention, while every receiver still remembers what it applied).
        let applied_any = !applied.is_empty();
        let outbox_age = commit_ms.saturating_sub(state.version / VERSIONS_PER_MS);
        let orphaned = applied_any
            && !state.outbox.is_empty()
            && outbox_age >= config.outbox_settle.as_millis() as u64
            && outbox_age < config.retention_ms() / 2;
        let resend = if resend_needed || orphaned {
            state.outbox.clone()
        } else {
            Vec::new()
        };
        // A function that asks to be retried spends one of its tries, counted in the
        // record (and committed even if nothing else is): messages behind it never do.
        let failing = failure.as_mut().and_then(|f| {
            let id = f.messages.first()?.clone();
            if f.error.kind() != crate::failure::FailureKind::Retryable {
                return None;
            }
            f.attempts = match &state.failing {
                Some(prev) if prev.id == id => prev.attempts + 1,
                _ => 1,
            };
            Some(Failing {
                id,
                attempts: f.attempts,
            })
        });
        let changed = applied_any || state.failing != failing;
        state.failing = failing;
        let commit = changed.then(|| {
            let retention_ms = config.retention_ms();
            state.version = next_version(state.version, commit_ms);
            state.dedup.prune(commit_ms, retention_ms);
            let spill = state
                .dedup
                .spill_over(config.dedup_budget_bytes, retention_ms, &applied);
            if applied_any {
                state.outbox = assign_ids(address, state.version, effects);
                state.last_inputs = applied;
            }
            let delete_after_ms = state.delete_after_ms(commit_ms, retention_ms);
            Commit {
                address: address.clone(),
                precondition,
                state,
                spill,
                delete_after_ms,
                applied: applied_any,
            }
        });
        AddressOutcome {
            resend,
            commit,
            settled,
            failure,
            deferred,
        }
    }
}

/// Processes one address's messages, in order, against its loaded record, with the
/// function registered for its type. The clock is read for each invocation: delays
/// and expiry count from the moment the function ran.
pub fn process_address(
    registry: &Registry,
    address: &Address,
    loaded: Option<InstanceState>,
    messages: Vec<Envelope>,
    clock: &dyn Clock,
    config: &BatchConfig,
) -> AddressOutcome {
    let mut w = Working::begin(address, loaded, clock.now_ms());
    let registered = registry.get(&address.function_type);
    let mut failure = None;
    let mut deferred = Vec::new();
    let mut messages = messages.into_iter();
    while let Some(message) = messages.next() {
        if w.settle_if_applied(&message.id) {
            continue;
        }
        let invoked_at = clock.now_ms();
        let result = match registered {
            None => Err(ProcessError::UnknownFunctionType(
                address.function_type.clone(),
            )),
            Some(reg) => invoke_one(
                reg,
                address,
                &message,
                &w.state,
                w.record_bytes,
                &config.limits,
            ),
        };
        // The record cannot take this message's effects beside the earlier ones':
        // commit those first, then run this one against the committed record.
        let result = match result {
            Ok((_, _, bytes)) if bytes > config.limits.max_record_bytes => {
                if !w.applied.is_empty() {
                    deferred.push(message);
                    deferred.extend(messages.by_ref());
                    break;
                }
                Err(ProcessError::RecordTooLarge(record_too_large(
                    address,
                    bytes,
                    &config.limits,
                )))
            }
            other => other,
        };
        match result {
            Ok((staged, effects, bytes)) => {
                let specs: &[StateSpec] = registered.map_or(&[], |r| &r.specs);
                w.apply(
                    specs,
                    staged,
                    effects,
                    bytes,
                    std::slice::from_ref(&message.id),
                    invoked_at,
                );
            }
            Err(error) => {
                failure = Some(Failure {
                    error,
                    messages: std::iter::once(message.id)
                        .chain(messages.by_ref().map(|m| m.id))
                        .collect(),
                    attempts: 1,
                });
            }
        }
    }
    w.finish(failure, deferred, clock.now_ms(), config)
}

fn record_too_large(address: &Address, bytes: usize, limits: &Limits) -> LimitError {
    LimitError {
        address: address.clone(),
        what: "instance record (state + outbox)".to_string(),
        size: bytes,
        limit: limits.max_record_bytes,
        unit: "bytes",
    }
}

/// A batch for a remote function: the messages not applied before, to be sent in one
/// request with the instance's state, and completed with the function's response.
#[derive(Debug, Clone)]
pub struct RemoteBatch {
    address: Address,
    loaded: Option<InstanceState>,
    messages: Vec<Envelope>,
    fresh: Vec<Envelope>,
    now_ms: u64,
}

impl RemoteBatch {
    /// Splits off the messages applied before (they are settled without a call).
    pub fn prepare(
        address: Address,
        loaded: Option<InstanceState>,
        messages: Vec<Envelope>,
        now_ms: u64,
    ) -> Self {
        let mut w = Working::begin(&address, loaded.clone(), now_ms);
        let mut seen = std::collections::HashSet::new();
        let fresh = messages
            .iter()
            .filter(|m| !w.settle_if_applied(&m.id) && seen.insert(m.id.clone()))
            .cloned()
            .collect();
        RemoteBatch {
            address,
            loaded,
            messages,
            fresh,
            now_ms,
        }
    }

    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The messages the function must see, in order.
    pub fn fresh(&self) -> &[Envelope] {
        &self.fresh
    }

    /// The batch up to its first fresh message, and the messages after it (to run
    /// after this one's commit): for a batch whose effects do not fit one record.
    pub fn split_first(mut self) -> (RemoteBatch, Vec<Envelope>) {
        let Some(first) = self.fresh.first().map(|m| m.id.clone()) else {
            return (self, Vec::new());
        };
        let at = self
            .messages
            .iter()
            .position(|m| m.id == first)
            .map_or(self.messages.len(), |i| i + 1);
        let rest = self.messages.split_off(at);
        self.fresh.truncate(1);
        (self, rest)
    }

    /// The request: every message not applied before, and one entry per registered
    /// state (unset when absent or expired).
    pub fn request(&self, specs: &[StateSpec]) -> crate::protocol::ToFunction {
        use crate::protocol::{self as p, to_function as t};
        let live = |name: &str| {
            self.loaded
                .as_ref()
                .and_then(|s| s.cells.get(name))
                .filter(|c| c.is_live(self.now_ms))
                .map(|c| p::value_to_wire(&c.value))
        };
        p::ToFunction {
            request: Some(t::Request::Invocation(t::InvocationBatchRequest {
                target: Some(p::address_to_wire(&self.address)),
                state: specs
                    .iter()
                    .map(|s| t::PersistedValue {
                        state_name: s.name.clone(),
                        state_value: live(&s.name),
                    })
                    .collect(),
                invocations: self
                    .fresh
                    .iter()
                    .map(|m| t::Invocation {
                        caller: m.caller.as_ref().map(p::address_to_wire),
                        argument: Some(p::value_to_wire(&m.value)),
                    })
                    .collect(),
            })),
        }
    }

    /// Completes the batch with the function's merged response (or the reason there is
    /// none), read at `now_ms` (delays and expiry count from there): mutations are
    /// checked against the registered `specs`.
    pub fn complete(
        self,
        response: Result<crate::protocol::from_function::InvocationResponse, ProcessError>,
        specs: &[StateSpec],
        config: &BatchConfig,
        now_ms: u64,
    ) -> AddressOutcome {
        let RemoteBatch {
            address,
            loaded,
            messages,
            fresh,
            now_ms: started_ms,
        } = self;
        let mut w = Working::begin(&address, loaded, started_ms);
        // Messages applied before are settled; the rest (a message delivered twice in
        // one batch included) stand or fall with the response.
        let pending: Vec<MessageId> = messages
            .iter()
            .filter(|m| !w.settle_if_applied(&m.id))
            .map(|m| m.id.clone())
            .collect();
        if pending.is_empty() {
            return w.finish(None, Vec::new(), now_ms, config);
        }
        let ids: Vec<MessageId> = fresh.iter().map(|m| m.id.clone()).collect();
        let checked = response.and_then(|r| {
            let staged = mutations(&address, &r, specs)?;
            let effects = crate::protocol::effects_from_wire(&r)
                .map_err(|e| ProcessError::Function(FunctionError::terminal(e)))?;
            let bytes = check_limits(
                &address,
                &w.state,
                specs,
                &staged,
                &effects,
                w.record_bytes,
                &config.limits,
            )?;
            if bytes > config.limits.max_record_bytes {
                return Err(ProcessError::RecordTooLarge(record_too_large(
                    &address,
                    bytes,
                    &config.limits,
                )));
            }
            Ok((staged, effects, bytes))
        });
        match checked {
            Ok((staged, effects, bytes)) => {
                w.apply(specs, staged, effects, bytes, &ids, now_ms);
                // A repeat of a message in this batch is settled with it.
                let mut repeats = pending;
                for id in &ids {
                    if let Some(i) = repeats.iter().position(|r| r == id) {
                        repeats.remove(i);
                    }
                }
                w.settled.extend(repeats);
                w.finish(None, Vec::new(), now_ms, config)
            }
            Err(error) => w.finish(
                Some(Failure {
                    error,
                    messages: pending,
                    attempts: 1,
                }),
                Vec::new(),
                now_ms,
                config,
            ),
        }
    }
}

/// A remote function's state mutations as staged writes, by the rules of the reference
/// runtime: only registered state, of its registered type.
fn mutations(
    address: &Address,
    r: &crate::protocol::from_function::InvocationResponse,
    specs: &[StateSpec],
) -> Result<Staged, ProcessError> {
    use crate::protocol::from_function::MutationType;
    let mut staged: Staged = Vec::new();
    for m in &r.state_mutations {
        let index = specs
            .iter()
            .position(|s| s.name == m.state_name)
            .ok_or_else(|| FunctionError::UndeclaredState {
                function_type: address.function_type.clone(),
                name: m.state_name.clone(),
            })?;
        let value = match MutationType::try_from(m.mutation_type) {
            Ok(MutationType::Delete) => None,
            Ok(MutationType::Modify) => {
                let v = crate::protocol::value_from_wire(
                    m.state_value.clone(),
                    &format!("state {:?}", m.state_name),
                )
                .map_err(FunctionError::terminal)?;
                if v.typename != specs[index].typename {
                    return Err(FunctionError::StateTypeMismatch {
                        name: m.state_name.clone(),
                        declared: specs[index].typename.clone(),
                        actual: v.typename,
                    }
                    .into());
                }
                Some(v)
            }
            Err(_) => {
                return Err(FunctionError::terminal(format!(
                    "unknown mutation type {}",
                    m.mutation_type
                ))
                .into());
            }
        };
        match staged.iter_mut().find(|(i, _)| *i == index) {
            Some(slot) => slot.1 = value,
            None => staged.push((index, value)),
        }
    }
    Ok(staged)
}

fn expiry(expiration: Expiration, now_ms: u64) -> Option<u64> {
    match expiration {
        Expiration::Never => None,
        Expiration::AfterWrite(d) | Expiration::AfterCall(d) => {
            Some(now_ms.saturating_add(d.as_millis() as u64))
        }
    }
}

type Staged = Vec<(usize, Option<crate::TypedValue>)>;

/// Runs one invocation; its writes and effects come back staged, checked against the
/// limits, with the record size they would bring.
fn invoke_one(
    reg: &crate::function::Registered,
    address: &Address,
    message: &Envelope,
    state: &InstanceState,
    record_bytes: usize,
    limits: &Limits,
) -> Result<(Staged, Vec<Effect>, usize), ProcessError> {
    let mut ctx = Context::new(address, message.caller.as_ref(), &reg.specs, &state.cells);
    // A panic costs only its message: caught here, on every host, and turned into a
    // terminal failure with its text (the context and its staged writes are dropped).
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        reg.function.invoke(&mut ctx, &message.value)
    }))
    .map_err(|panic| {
        FunctionError::terminal(format!("the function panicked: {}", panic_text(&*panic)))
    })??;
    let Context {
        staged, effects, ..
    } = ctx;
    let bytes = check_limits(
        address,
        state,
        &reg.specs,
        &staged,
        &effects,
        record_bytes,
        limits,
    )?;
    Ok((staged, effects, bytes))
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Checks one invocation's writes and effects against the value and message limits;
/// returns the record size after applying them (the caller judges it, so a message
/// is never refused for what its batch-mates added).
fn check_limits(
    address: &Address,
    state: &InstanceState,
    specs: &[StateSpec],
    staged: &Staged,
    effects: &[Effect],
    record_bytes: usize,
    limits: &Limits,
) -> Result<usize, LimitError> {
    let too_large = |what: String, size: usize, limit: usize| LimitError {
        address: address.clone(),
        what,
        size,
        limit,
        unit: "bytes",
    };
    let mut bytes = record_bytes;
    for (index, value) in staged {
        let name = &specs[*index].name;
        let new = value.as_ref().map_or(0, |v| v.size());
        if new > limits.max_value_bytes {
            return Err(too_large(
                format!("state {name:?}"),
                new,
                limits.max_value_bytes,
            ));
        }
        let old = state.cells.get(name).map_or(0, |c| c.value.size());
        bytes = (bytes + new).saturating_sub(old);
    }
    for effect in effects {
        if let Effect::SendAfter { delay, target, .. } = effect
            && *delay > limits.max_delay
        {
            return Err(LimitError {
                address: address.clone(),
                what: format!("the delay of a message to {target}"),
                size: delay.as_secs() as usize,
                limit: limits.max_delay.as_secs() as usize,
                unit: "seconds",
            });
        }
        let size = effect_size(effect);
        if size > limits.max_message_bytes {
            let what = match effect {
                Effect::Send { target, .. } | Effect::SendAfter { target, .. } => {
                    format!("message to {target}")
                }
                Effect::Egress { egress, .. } => format!("egress record to {egress}"),
                Effect::Cancel { .. } => "cancellation".to_string(),
            };
            return Err(too_large(what, size, limits.max_message_bytes));
        }
        bytes += size;
    }
    Ok(bytes)
}

/// Gives each effect its deterministic id: the sender (its unambiguous source name),
/// its new version, the index. Delays count from the invocation that asked for them.
fn assign_ids(address: &Address, version: u64, effects: Vec<(Effect, u64)>) -> Vec<OutboxEntry> {
    if effects.is_empty() {
        return Vec::new();
    }
    let source: Arc<str> = address.source_name().into();
    effects
        .into_iter()
        .enumerate()
        .map(|(index, (effect, now_ms))| {
            let index = index as u32;
            let issued = Issued { version, index };
            let keyed = || format!("{source}@{version}.{index}");
            match effect {
                Effect::Send { target, value } => OutboxEntry::Send(Envelope {
                    id: MessageId::Ordered {
                        source: source.clone(),
                        seq: version,
                        index,
                    },
                    target,
                    caller: Some(address.clone()),
                    value,
                }),
                Effect::SendAfter {
                    delay,
                    target,
                    value,
                    cancellation_token,
                } => OutboxEntry::SendAfter {
                    envelope: Envelope {
                        id: MessageId::Keyed(keyed()),
                        target,
                        caller: Some(address.clone()),
                        value,
                    },
                    due_at_ms: now_ms.saturating_add(delay.as_millis() as u64),
                    cancellation_token,
                    issued,
                },
                Effect::Cancel { token } => OutboxEntry::Cancel {
                    sender: address.clone(),
                    token,
                    issued,
                },
                Effect::Egress { egress, value } => OutboxEntry::Egress(EgressRecord {
                    id: keyed(),
                    egress,
                    value,
                }),
            }
        })
        .collect()
}
