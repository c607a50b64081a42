//! The host-independent dispatch of one batch through the ports: group by address,
//! load, process, re-send, commit, send, report. The AWS dispatcher and the harness run
//! this; the embedded runtime executes the same [`AddressOutcome`]s with group commit.

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::thread::Thread;

use crate::batch::{AddressOutcome, BatchConfig, RemoteBatch, process_address};
use crate::dedup::DedupKey;
use crate::failure::{Next, RetryPolicy, Verdict};
use crate::function::Registry;
use crate::message::{Envelope, MessageId};
use crate::ports::{Clock, CommitError, StateStore, Transport};
use crate::remote::{NoRemote, RemoteFunctions, SpecCache, invoke};
use crate::state::InstanceState;
use crate::typename::Address;

pub use crate::failure::FailureKind;

/// A message that was not settled, why, and what the failure policy says to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedMessage {
    pub address: Address,
    pub id: MessageId,
    pub reason: String,
    pub kind: FailureKind,
    /// Tries of it that count ([`crate::failure`]).
    pub attempts: u32,
    pub verdict: Verdict,
}

impl FailedMessage {
    pub fn is_retryable(&self) -> bool {
        self.kind != FailureKind::Poison
    }
}

/// What became of one address's messages, and what its host does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressReport {
    pub address: Address,
    /// Messages done (applied now, or before), in order.
    pub settled: Vec<MessageId>,
    /// Its messages not settled, in order: the first is the one that failed, the
    /// others wait behind it.
    pub failed: Vec<FailedMessage>,
    /// What to do with `failed`, decided from the first ([`RetryPolicy::next`]); none
    /// when everything settled.
    pub next: Option<Next>,
}

/// What became of each address of a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Per address, in the order addresses first appear in the batch.
    pub addresses: Vec<AddressReport>,
    pub commits: usize,
    pub conflicts: usize,
    index: HashMap<Address, usize>,
}

impl BatchReport {
    /// Every settled message, address by address.
    pub fn settled(&self) -> impl Iterator<Item = &MessageId> {
        self.addresses.iter().flat_map(|a| &a.settled)
    }

    /// Every message not settled, address by address.
    pub fn failed(&self) -> impl Iterator<Item = &FailedMessage> {
        self.addresses.iter().flat_map(|a| &a.failed)
    }

    fn entry(&mut self, address: &Address) -> &mut AddressReport {
        let i = *self.index.entry(address.clone()).or_insert_with(|| {
            self.addresses.push(AddressReport {
                address: address.clone(),
                settled: Vec::new(),
                failed: Vec::new(),
                next: None,
            });
            self.addresses.len() - 1
        });
        &mut self.addresses[i]
    }

    fn settle(&mut self, address: &Address, ids: &[MessageId]) {
        if !ids.is_empty() {
            self.entry(address).settled.extend(ids.iter().cloned());
        }
    }

    /// Records `failed` (the failed message first) and, if the address had no failure
    /// yet, what to do about it.
    fn fail(&mut self, policy: &RetryPolicy, address: &Address, failed: Vec<FailedMessage>) {
        let report = self.entry(address);
        if report.next.is_none()
            && let Some(head) = failed.first()
        {
            report.next = Some(policy.next(head.kind, head.attempts, &head.reason));
        }
        report.failed.extend(failed);
    }

    fn fail_all(
        &mut self,
        policy: &RetryPolicy,
        address: &Address,
        ids: impl IntoIterator<Item = MessageId>,
        reason: &str,
        kind: FailureKind,
    ) {
        let failed = ids
            .into_iter()
            .map(|id| FailedMessage {
                address: address.clone(),
                id,
                reason: reason.to_string(),
                kind,
                attempts: 0,
                verdict: policy.verdict(kind, 0),
            })
            .collect();
        self.fail(policy, address, failed);
    }

    fn add_failure(&mut self, policy: &RetryPolicy, address: &Address, outcome: &AddressOutcome) {
        let Some(failure) = &outcome.failure else {
            return;
        };
        let mut ids = failure.messages.iter();
        let Some(first) = ids.next() else {
            return;
        };
        let kind = failure.error.kind();
        let head = FailedMessage {
            address: address.clone(),
            id: first.clone(),
            reason: failure.reason(),
            kind,
            attempts: failure.attempts,
            verdict: policy.verdict(kind, failure.attempts),
        };
        let blocked = format!("blocked behind failed message {first}");
        let behind = ids.map(|id| FailedMessage {
            address: address.clone(),
            id: id.clone(),
            reason: blocked.clone(),
            kind: FailureKind::Blocked,
            attempts: 0,
            verdict: policy.verdict(FailureKind::Blocked, 0),
        });
        self.fail(
            policy,
            address,
            std::iter::once(head).chain(behind).collect(),
        );
    }
}

/// Groups messages by target address, keeping each address's order and the order in
/// which addresses first appear.
pub fn group_by_address(batch: Vec<Envelope>) -> Vec<(Address, Vec<Envelope>)> {
    let mut index: HashMap<Address, usize> = HashMap::new();
    let mut groups: Vec<(Address, Vec<Envelope>)> = Vec::new();
    for envelope in batch {
        match index.get(&envelope.target) {
            Some(&i) => groups[i].1.push(envelope),
            None => {
                index.insert(envelope.target.clone(), groups.len());
                groups.push((envelope.target.clone(), vec![envelope]));
            }
        }
    }
    groups
}

fn all_ids(outcome: &AddressOutcome) -> Vec<MessageId> {
    outcome.all_ids()
}

/// The dedup entries to look up outside the loaded records before `groups` run at
/// `now_ms` ([`crate::dedup`]): `(group index, address, keys)` for each address that
/// needs any.
pub fn dedup_lookups(
    groups: &[(Address, Vec<Envelope>)],
    loaded: &[Option<InstanceState>],
    now_ms: u64,
) -> Vec<(usize, Address, Vec<DedupKey>)> {
    groups
        .iter()
        .zip(loaded)
        .enumerate()
        .filter_map(|(i, ((address, messages), state))| {
            let keys = state
                .as_ref()?
                .dedup
                .lookups(messages.iter().map(|m| &m.id), now_ms);
            (!keys.is_empty()).then(|| (i, address.clone(), keys))
        })
        .collect()
}

/// What invokes functions: the local registry, remote functions and their learned
/// state, the batch settings and the clock each invocation reads.
pub struct Invoker<'a, R> {
    pub registry: &'a Registry,
    pub remote: &'a R,
    pub specs: &'a SpecCache,
    pub config: &'a BatchConfig,
    pub clock: &'a dyn Clock,
}

impl<R> std::fmt::Debug for Invoker<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invoker")
            .field("config", self.config)
            .finish_non_exhaustive()
    }
}

/// The ports one batch runs through.
#[derive(Debug)]
pub struct Pipeline<'a, S, T, R> {
    pub invoker: Invoker<'a, R>,
    pub store: &'a S,
    pub transport: &'a T,
}

/// Runs one batch of local functions through the ports.
pub async fn dispatch<S: StateStore, T: Transport>(
    registry: &Registry,
    store: &S,
    transport: &T,
    config: &BatchConfig,
    clock: &dyn Clock,
    batch: Vec<Envelope>,
) -> BatchReport {
    let specs = SpecCache::default();
    let pipeline = Pipeline {
        invoker: Invoker {
            registry,
            remote: &NoRemote,
            specs: &specs,
            config,
            clock,
        },
        store,
        transport,
    };
    pipeline.dispatch(batch).await
}

impl<R: RemoteFunctions> Invoker<'_, R> {
    /// Whether `function_type` is a remote function: a module's endpoints take
    /// precedence over functions compiled in.
    pub fn is_remote(&self, function_type: &crate::TypeName) -> bool {
        self.remote.serves(function_type)
    }

    /// Whether any function, local or remote, serves `function_type`.
    pub fn knows(&self, function_type: &crate::TypeName) -> bool {
        self.remote.serves(function_type) || self.registry.contains(function_type)
    }

    /// Processes each address's messages: local functions in place, remote ones with
    /// one request per address, all addresses' requests at once.
    pub async fn process(
        &self,
        groups: Vec<(Address, Vec<Envelope>)>,
        loaded: Vec<Option<crate::InstanceState>>,
    ) -> Vec<AddressOutcome> {
        let mut outcomes: Vec<Option<AddressOutcome>> = Vec::with_capacity(groups.len());
        let mut remote = Vec::new();
        for (i, ((address, messages), state)) in groups.into_iter().zip(loaded).enumerate() {
            if self.is_remote(&address.function_type) {
                let batch = RemoteBatch::prepare(address, state, messages, self.clock.now_ms());
                remote.push((
                    i,
                    invoke(self.remote, self.specs, batch, self.config, self.clock),
                ));
                outcomes.push(None);
            } else {
                outcomes.push(Some(process_address(
                    self.registry,
                    &address,
                    state,
                    messages,
                    self.clock,
                    self.config,
                )));
            }
        }
        let (slots, calls): (Vec<usize>, Vec<_>) = remote.into_iter().unzip();
        for (i, outcome) in slots.into_iter().zip(join_all(calls).await) {
            outcomes[i] = Some(outcome);
        }
        outcomes.into_iter().flatten().collect()
    }
}

impl<S: StateStore, T: Transport, R: RemoteFunctions> Pipeline<'_, S, T, R> {
    /// Runs one batch through the ports. Messages an address defers (its record could
    /// not take them beside earlier ones) run again after that address's commit and
    /// sends, in the same call.
    pub async fn dispatch(&self, batch: Vec<Envelope>) -> BatchReport {
        let mut report = BatchReport::default();
        let mut batch = batch;
        while !batch.is_empty() {
            batch = self.dispatch_once(batch, &mut report).await;
        }
        report
    }

    /// One pass: returns the deferred messages of addresses that committed and sent.
    async fn dispatch_once(&self, batch: Vec<Envelope>, report: &mut BatchReport) -> Vec<Envelope> {
        let (store, transport) = (self.store, self.transport);
        let groups = group_by_address(batch);
        let addresses: Vec<Address> = groups.iter().map(|(a, _)| a.clone()).collect();
        let policy = &self.invoker.config.retry;
        let unavailable = |report: &mut BatchReport,
                           groups: Vec<(Address, Vec<Envelope>)>,
                           e: &dyn std::fmt::Display| {
            for (address, messages) in groups {
                let ids = messages.into_iter().map(|m| m.id);
                report.fail_all(
                    policy,
                    &address,
                    ids,
                    &e.to_string(),
                    FailureKind::Unavailable,
                );
            }
        };
        let (groups, mut loaded) = match store.load(&addresses).await {
            Ok(loaded) => (groups, loaded),
            // One address's record may be what failed (a newer build's format during a
            // rolling deploy, a damaged item): each is loaded alone, so only its own
            // messages wait. Extra reads only on a failed load.
            Err(_) if groups.len() > 1 => {
                let (mut kept, mut loaded) = (Vec::new(), Vec::new());
                for (address, messages) in groups {
                    match store.load(std::slice::from_ref(&address)).await {
                        Ok(mut one) if one.len() == 1 => {
                            loaded.push(one.remove(0));
                            kept.push((address, messages));
                        }
                        Ok(_) => {
                            let e = "the store answered for another number of addresses";
                            unavailable(report, vec![(address, messages)], &e)
                        }
                        Err(e) => unavailable(report, vec![(address, messages)], &e),
                    }
                }
                if kept.is_empty() {
                    return Vec::new();
                }
                (kept, loaded)
            }
            Err(e) => {
                unavailable(report, groups, &e);
                return Vec::new();
            }
        };
        let lookups = dedup_lookups(&groups, &loaded, self.invoker.clock.now_ms());
        let mut unread: Vec<(usize, String)> = Vec::new();
        if !lookups.is_empty() {
            let requests: Vec<(Address, Vec<DedupKey>)> = lookups
                .iter()
                .map(|(_, a, keys)| (a.clone(), keys.clone()))
                .collect();
            let found = match store.load_dedup(&requests).await {
                Ok(found) => found.into_iter().map(Ok).collect(),
                // As for records: each address alone, so only its messages wait.
                Err(_) if requests.len() > 1 => {
                    let mut found = Vec::with_capacity(requests.len());
                    for request in &requests {
                        found.push(
                            match store.load_dedup(std::slice::from_ref(request)).await {
                                Ok(mut one) if one.len() == 1 => Ok(one.remove(0)),
                                Ok(_) => {
                                    Err("the store answered for another number of addresses".into())
                                }
                                Err(e) => Err(e.to_string()),
                            },
                        );
                    }
                    found
                }
                Err(e) => vec![Err(e.to_string())],
            };
            for ((i, _, _), entries) in lookups.iter().zip(found) {
                match entries {
                    Ok(entries) => {
                        if let Some(state) = loaded[*i].as_mut() {
                            state.dedup.absorb(entries);
                        }
                    }
                    Err(e) => unread.push((*i, e)),
                }
            }
        }
        let (groups, loaded) = if unread.is_empty() {
            (groups, loaded)
        } else {
            let mut kept = (Vec::new(), Vec::new());
            for (i, (group, record)) in groups.into_iter().zip(loaded).enumerate() {
                match unread.iter().find(|(u, _)| *u == i) {
                    Some((_, e)) => unavailable(report, vec![group], e),
                    None => {
                        kept.0.push(group);
                        kept.1.push(record);
                    }
                }
            }
            if kept.0.is_empty() {
                return Vec::new();
            }
            kept
        };
        let mut outcomes = self.invoker.process(groups, loaded).await;

        // Re-sends first: the commits below replace the outboxes they come from.
        let resending: Vec<usize> = (0..outcomes.len())
            .filter(|&i| !outcomes[i].resend.is_empty())
            .collect();
        let slices: Vec<&[_]> = resending.iter().map(|&i| &outcomes[i].resend[..]).collect();
        let results = transport.send(&slices).await;
        let mut ok = vec![true; outcomes.len()];
        for (&i, result) in resending.iter().zip(results) {
            if let Err(e) = result {
                report.fail_all(
                    policy,
                    &addresses[i],
                    all_ids(&outcomes[i]),
                    &e.to_string(),
                    FailureKind::Unavailable,
                );
                ok[i] = false;
            }
        }

        // An outbox the transport can never deliver (an unknown egress, a body over the
        // queue's limit) must fail before the commit, or it would block its address forever.
        for (i, outcome) in outcomes.iter().enumerate() {
            let Some(commit) = outcome.commit.as_ref().filter(|_| ok[i]) else {
                continue;
            };
            if let Some(e) = commit
                .outbox()
                .iter()
                .find_map(|e| transport.check(e).err())
            {
                report.fail_all(
                    policy,
                    &addresses[i],
                    all_ids(outcome),
                    &e.to_string(),
                    FailureKind::Poison,
                );
                ok[i] = false;
            }
        }

        let committing: Vec<usize> = (0..outcomes.len())
            .filter(|&i| ok[i] && outcomes[i].commit.is_some())
            .collect();
        let commits: Vec<_> = committing
            .iter()
            .filter_map(|&i| outcomes[i].commit.take())
            .collect();
        let results = store.commit(&commits).await;
        let mut sending = Vec::new();
        for ((&i, commit), result) in committing.iter().zip(&commits).zip(results) {
            match result {
                Ok(()) => {
                    report.commits += 1;
                    sending.push((i, commit));
                }
                Err(e) => {
                    let kind = match e {
                        CommitError::Conflict(_) => {
                            report.conflicts += 1;
                            FailureKind::Conflict
                        }
                        CommitError::TooLarge(_) => FailureKind::Poison,
                        CommitError::Store(_) => FailureKind::Unavailable,
                    };
                    report.fail_all(
                        policy,
                        &addresses[i],
                        all_ids(&outcomes[i]),
                        &e.to_string(),
                        kind,
                    );
                    ok[i] = false;
                }
            }
        }
        let slices: Vec<&[_]> = sending.iter().map(|(_, c)| c.outbox()).collect();
        let results = transport.send(&slices).await;
        for ((i, _), result) in sending.iter().zip(results) {
            if let Err(e) = result {
                report.fail_all(
                    policy,
                    &addresses[*i],
                    all_ids(&outcomes[*i]),
                    &e.to_string(),
                    FailureKind::Unavailable,
                );
                ok[*i] = false;
            }
        }

        let mut deferred = Vec::new();
        for (i, outcome) in outcomes.iter_mut().enumerate() {
            if ok[i] {
                report.settle(&addresses[i], &outcome.settled);
                report.add_failure(policy, &addresses[i], outcome);
                deferred.append(&mut outcome.deferred);
            }
        }
        deferred
    }
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls futures together until all are done; outputs in input order.
pub async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// Drives a future to completion on the current thread: enough for the in-memory ports
/// and for tests, without an async runtime in the core.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = TaskContext::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => return output,
            Poll::Pending => std::thread::park(),
        }
    }
}
