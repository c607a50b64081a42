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
use crate::function::{FunctionError, Registry};
use crate::message::{EgressRecord, Envelope, Issued, MessageId, OutboxEntry};
use crate::spec::Expiration;
use crate::state::{Cell, InstanceState};
use crate::typename::{Address, TypeName};

/// What can be stored and sent, mirroring the AWS limits by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// One state value (DynamoDB items are at most 400 KB in all).
    pub max_value_bytes: usize,
    /// One message or egress payload (SQS: 256 KiB).
    pub max_message_bytes: usize,
    /// An instance's values plus its outbox, stored in one write.
    pub max_record_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_value_bytes: 350 * 1024,
            max_message_bytes: 256 * 1024,
            max_record_bytes: 390 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    pub limits: Limits,
    /// How long dedup records are kept: longer than any redelivery can take (queue
    /// retention + visibility timeout). Default: 14 days + 12 hours, SQS's maxima.
    pub dedup_retention: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            limits: Limits::default(),
            dedup_retention: Duration::from_secs((14 * 24 + 12) * 3600),
        }
    }
}

/// A value or message too large to store or send; never truncated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{address}: {what} is {size} bytes, over the limit of {limit} bytes")]
pub struct LimitError {
    pub address: Address,
    pub what: String,
    pub size: usize,
    pub limit: usize,
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
}

impl ProcessError {
    /// Whether trying again later can succeed; otherwise the message is poison.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ProcessError::Function(e) if e.is_retryable())
    }
}

/// A failed message and every later message of the same address in the batch, which
/// must not overtake it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub error: ProcessError,
    pub messages: Vec<MessageId>,
}

/// The version an instance must have for a commit to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    DoesNotExist,
    MatchesVersion(u64),
}

/// A conditional write of one instance's new record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub address: Address,
    pub precondition: Precondition,
    pub state: InstanceState,
}

impl Commit {
    pub fn outbox(&self) -> &[OutboxEntry] {
        &self.state.outbox
    }
}

/// The plan for one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressOutcome {
    pub address: Address,
    /// The previous commit's outbox, to deliver before `commit` because one of that
    /// commit's inputs came again (its sends may not have happened).
    pub resend: Vec<OutboxEntry>,
    pub commit: Option<Commit>,
    /// Messages done once the above is executed: applied now, or applied before.
    pub settled: Vec<MessageId>,
    pub failure: Option<Failure>,
}

fn effect_size(effect: &Effect) -> usize {
    match effect {
        Effect::Send { value, .. }
        | Effect::SendAfter { value, .. }
        | Effect::Egress { value, .. } => value.size(),
        Effect::Cancel { token } => token.len(),
    }
}

/// Processes one address's messages, in order, against its loaded record.
pub fn process_address(
    registry: &Registry,
    address: &Address,
    loaded: Option<InstanceState>,
    messages: Vec<Envelope>,
    now_ms: u64,
    config: &BatchConfig,
) -> AddressOutcome {
    let precondition = match &loaded {
        None => Precondition::DoesNotExist,
        Some(s) => Precondition::MatchesVersion(s.version),
    };
    let mut state = loaded.unwrap_or_default();
    state.cells.retain(|_, c| c.is_live(now_ms));
    let registered = registry.get(&address.function_type);
    let limits = config.limits;

    let mut resend_needed = false;
    let mut settled = Vec::new();
    let mut applied = Vec::new();
    let mut effects: Vec<Effect> = Vec::new();
    let mut failure = None;
    let mut record_bytes: usize = state.cells.values().map(|c| c.value.size()).sum();

    for (i, message) in messages.iter().enumerate() {
        if state.dedup.is_applied(&message.id) {
            resend_needed |= state.last_inputs.contains(&message.id);
            settled.push(message.id.clone());
            continue;
        }
        let result = match registered {
            None => Err(ProcessError::UnknownFunctionType(
                address.function_type.clone(),
            )),
            Some(reg) => invoke_one(reg, address, message, &state, record_bytes, &limits).map(
                |(staged, new_effects, new_bytes)| {
                    (staged, new_effects, new_bytes, reg.specs.clone())
                },
            ),
        };
        match result {
            Ok((staged, new_effects, new_bytes, specs)) => {
                record_bytes = new_bytes;
                for (index, value) in staged {
                    let spec = &specs[index];
                    match value {
                        Some(value) => {
                            let expires_at_ms = expiry(spec.expiration, now_ms);
                            match state.cells.get_mut(&spec.name) {
                                Some(cell) => {
                                    cell.value = value;
                                    cell.expires_at_ms = expires_at_ms;
                                }
                                None => {
                                    state.cells.insert(
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
                            state.cells.remove(&spec.name);
                        }
                    }
                }
                for spec in specs.iter() {
                    if let Expiration::AfterCall(_) = spec.expiration
                        && let Some(cell) = state.cells.get_mut(&spec.name)
                    {
                        cell.expires_at_ms = expiry(spec.expiration, now_ms);
                    }
                }
                effects.extend(new_effects);
                state.dedup.record(&message.id, now_ms);
                settled.push(message.id.clone());
                applied.push(message.id.clone());
            }
            Err(error) => {
                failure = Some(Failure {
                    error,
                    messages: messages[i..].iter().map(|m| m.id.clone()).collect(),
                });
                break;
            }
        }
    }

    let resend = if resend_needed {
        state.outbox.clone()
    } else {
        Vec::new()
    };
    let commit = (!applied.is_empty()).then(|| {
        state.version += 1;
        state.outbox = assign_ids(address, state.version, effects, now_ms);
        state.last_inputs = applied;
        state
            .dedup
            .prune(now_ms, config.dedup_retention.as_millis() as u64);
        Commit {
            address: address.clone(),
            precondition,
            state,
        }
    });
    AddressOutcome {
        address: address.clone(),
        resend,
        commit,
        settled,
        failure,
    }
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
    reg.function.invoke(&mut ctx, &message.value)?;
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

/// Checks one invocation's writes and effects against the limits; returns the record
/// size after applying them.
fn check_limits(
    address: &Address,
    state: &InstanceState,
    specs: &[crate::StateSpec],
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
    if bytes > limits.max_record_bytes {
        return Err(too_large(
            "instance record (state + outbox)".to_string(),
            bytes,
            limits.max_record_bytes,
        ));
    }
    Ok(bytes)
}

/// Gives each effect its deterministic id: the sender, its new version, the index.
fn assign_ids(
    address: &Address,
    version: u64,
    effects: Vec<Effect>,
    now_ms: u64,
) -> Vec<OutboxEntry> {
    if effects.is_empty() {
        return Vec::new();
    }
    let source: Arc<str> = address.to_string().into();
    effects
        .into_iter()
        .enumerate()
        .map(|(index, effect)| {
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
