//! The semantics the core guarantees, each shown by a test that would catch its loss.

use std::time::Duration;

use statefun_core::pipeline::{block_on, dispatch};
use statefun_core::ports::{Clock, ManualClock, MemoryStore, MemoryTransport};
use statefun_core::{
    Address, BatchConfig, Envelope, FunctionError, Harness, MessageId, OutboxEntry, Precondition,
    ProcessError, Registry, TypeName, TypedValue, ValueSpec, process_address,
};

const LOG: TypeName = TypeName::from_static("test/log");
const ECHO: TypeName = TypeName::from_static("test/echo");
const SINK: TypeName = TypeName::from_static("test/sink");
const ENTRIES: ValueSpec<String> = ValueSpec::new("entries");
const SEEN: ValueSpec<i64> = ValueSpec::new("seen");

/// `test/log` appends every string it receives; `test/echo` forwards to `test/log/<id>`;
/// a message "fail" fails terminally, "flaky" retryably.
fn registry() -> Registry {
    let mut r = Registry::new();
    r.register_fn("test/log", vec![ENTRIES.spec(), SEEN.spec()], |ctx, msg| {
        let s: String = msg.decode()?;
        match s.as_str() {
            "fail" => return Err(FunctionError::terminal("asked to fail")),
            "flaky" => return Err(FunctionError::retryable("asked to be flaky")),
            _ => {}
        }
        let mut entries = ctx.get(&ENTRIES)?.unwrap_or_default();
        entries.push_str(&s);
        entries.push(',');
        ctx.set(&ENTRIES, &entries)?;
        let seen = ctx.get(&SEEN)?.unwrap_or(0) + 1;
        ctx.set(&SEEN, &seen)
    })
    .expect("register");
    r.register_fn("test/echo", vec![], |ctx, msg| {
        let target = Address::new(LOG, ctx.self_address().id.clone());
        ctx.send_value(target, msg.clone());
        Ok(())
    })
    .expect("register");
    r
}

fn ingress(seq: u64, target: &Address, text: &str) -> Envelope {
    Envelope {
        id: MessageId::Ordered {
            source: "ingress/test".into(),
            seq,
            index: 0,
        },
        target: target.clone(),
        caller: None,
        value: TypedValue::of(&text.to_string()),
    }
}

#[test]
fn messages_to_one_address_apply_in_order() {
    let mut h = Harness::new(registry());
    let a = Address::new(LOG, "a");
    for s in ["1", "2", "3", "4"] {
        h.send(a.clone(), &s.to_string());
    }
    assert_eq!(h.state(&a, &ENTRIES).as_deref(), Some("1,2,3,4,"));
}

#[test]
fn a_batch_for_one_address_is_one_commit() {
    let a = Address::new(LOG, "a");
    let messages: Vec<_> = (1..=5).map(|i| ingress(i, &a, &i.to_string())).collect();
    let out = process_address(&registry(), &a, None, messages, &0, &BatchConfig::default());
    let commit = out.commit.expect("one commit");
    assert_eq!(commit.precondition, Precondition::DoesNotExist);
    assert_eq!(commit.state.version, 1, "five messages, one version step");
    assert_eq!(commit.state.last_inputs.len(), 5);
    assert_eq!(out.settled.len(), 5);
    let entries = &commit.state.cells["entries"].value;
    assert_eq!(entries.decode::<String>().as_deref(), Ok("1,2,3,4,5,"));
}

#[test]
fn a_failure_commits_what_came_before_and_fails_the_rest() {
    let a = Address::new(LOG, "a");
    let messages = vec![
        ingress(1, &a, "x"),
        ingress(2, &a, "fail"),
        ingress(3, &a, "y"),
    ];
    let out = process_address(&registry(), &a, None, messages, &0, &BatchConfig::default());
    let failure = out.failure.expect("failure");
    assert!(matches!(failure.error, ProcessError::Function(_)));
    assert!(!failure.error.is_retryable());
    assert_eq!(
        failure.messages.len(),
        2,
        "the failed message and the one behind it"
    );
    let commit = out.commit.expect("x committed");
    assert_eq!(
        commit.state.cells["entries"]
            .value
            .decode::<String>()
            .as_deref(),
        Ok("x,")
    );
}

#[test]
fn poison_is_dead_lettered_and_the_address_moves_on() {
    let mut h = Harness::new(registry());
    let a = Address::new(LOG, "a");
    h.send(a.clone(), &"x".to_string())
        .send(a.clone(), &"fail".to_string())
        .send(a.clone(), &"flaky".to_string())
        .send(a.clone(), &"y".to_string());
    assert_eq!(h.state(&a, &ENTRIES).as_deref(), Some("x,y,"));
    let reasons: Vec<_> = h.dead_letters().iter().map(|d| d.reason.clone()).collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("asked to fail"), "{reasons:?}");
    assert!(reasons[1].contains("asked to be flaky"), "{reasons:?}");
}

#[test]
fn unknown_function_types_are_poison_with_a_clear_reason() {
    let a = Address::new(TypeName::from_static("nobody/here"), "x");
    let out = process_address(
        &registry(),
        &a,
        None,
        vec![ingress(1, &a, "hi")],
        &0,
        &BatchConfig::default(),
    );
    let failure = out.failure.expect("fails");
    assert_eq!(
        failure.error.to_string(),
        "no function is registered for type nobody/here"
    );
    assert!(out.commit.is_none());
}

#[test]
fn a_redelivered_message_is_applied_once_and_its_outbox_resent() {
    let registry = registry();
    let config = BatchConfig::default();
    let echo = Address::new(ECHO, "e");
    let first = process_address(
        &registry,
        &echo,
        None,
        vec![ingress(1, &echo, "hello")],
        &0,
        &config,
    );
    let committed = first.commit.expect("commit").state;
    assert_eq!(committed.outbox.len(), 1);

    // The commit landed but the process died before sending or acknowledging: the same
    // message comes again, with a new one behind it.
    let again = process_address(
        &registry,
        &echo,
        Some(committed.clone()),
        vec![ingress(1, &echo, "hello"), ingress(2, &echo, "world")],
        &0,
        &config,
    );
    assert_eq!(again.resend, committed.outbox, "the lost sends are re-sent");
    let commit = again.commit.expect("only the new message commits");
    assert_eq!(commit.state.version, 2);
    assert_eq!(commit.state.outbox.len(), 1);
    assert_eq!(again.settled.len(), 2);

    // The receiver gets the re-sent message twice and applies it once.
    let log = Address::new(LOG, "e");
    let OutboxEntry::Send(resent) = &committed.outbox[0] else {
        panic!("expected a send")
    };
    let OutboxEntry::Send(next) = &commit.state.outbox[0] else {
        panic!("expected a send")
    };
    let store = MemoryStore::new();
    let transport = MemoryTransport::new();
    let batch = vec![resent.clone(), resent.clone(), next.clone(), resent.clone()];
    let report = block_on(dispatch(&registry, &store, &transport, &config, &0, batch));
    assert!(report.failed().next().is_none(), "{report:?}");
    let state = store.get(&log).expect("log state");
    assert_eq!(
        state.cells["entries"].value.decode::<String>().as_deref(),
        Ok("hello,world,")
    );
}

#[test]
fn an_old_duplicate_does_not_resend_a_newer_outbox() {
    let registry = registry();
    let config = BatchConfig::default();
    let echo = Address::new(ECHO, "e");
    let v1 = process_address(
        &registry,
        &echo,
        None,
        vec![ingress(1, &echo, "a")],
        &0,
        &config,
    )
    .commit
    .expect("v1")
    .state;
    let v2 = process_address(
        &registry,
        &echo,
        Some(v1),
        vec![ingress(2, &echo, "b")],
        &0,
        &config,
    )
    .commit
    .expect("v2")
    .state;
    let late = process_address(
        &registry,
        &echo,
        Some(v2),
        vec![ingress(1, &echo, "a")],
        &0,
        &config,
    );
    assert!(
        late.resend.is_empty(),
        "message 1 is not an input of the last commit"
    );
    assert!(late.commit.is_none());
    assert_eq!(late.settled.len(), 1);
}

const BOX: TypeName = TypeName::from_static("test/box");
const WRITTEN: ValueSpec<i64> =
    ValueSpec::new("written").expire_after_write(Duration::from_secs(10));
const CALLED: ValueSpec<i64> = ValueSpec::new("called").expire_after_call(Duration::from_secs(10));

fn expiring() -> Registry {
    let mut r = Registry::new();
    r.register_fn(
        "test/box",
        vec![WRITTEN.spec(), CALLED.spec()],
        |ctx, msg| {
            match msg.decode::<String>()?.as_str() {
                "set" => {
                    ctx.set(&WRITTEN, &1)?;
                    ctx.set(&CALLED, &1)
                }
                _ => Ok(()), // "touch": an invocation that writes nothing
            }
        },
    )
    .expect("register");
    r
}

#[test]
fn expire_after_write_ignores_reads_and_calls() {
    let mut h = Harness::new(expiring());
    let a = Address::new(BOX, "x");
    h.send(a.clone(), &"set".to_string());
    h.advance(Duration::from_secs(9));
    h.send(a.clone(), &"touch".to_string());
    assert_eq!(h.state(&a, &WRITTEN), Some(1), "not yet expired at 9 s");
    h.advance(Duration::from_secs(1));
    assert_eq!(h.state(&a, &WRITTEN), None, "expired 10 s after the write");
}

#[test]
fn expire_after_call_is_extended_by_every_invocation() {
    let mut h = Harness::new(expiring());
    let a = Address::new(BOX, "x");
    h.send(a.clone(), &"set".to_string());
    for _ in 0..3 {
        h.advance(Duration::from_secs(9));
        h.send(a.clone(), &"touch".to_string());
    }
    assert_eq!(
        h.state(&a, &CALLED),
        Some(1),
        "27 s after the write, kept alive by calls"
    );
    h.advance(Duration::from_millis(9_999));
    assert_eq!(h.state(&a, &CALLED), Some(1));
    h.advance(Duration::from_millis(1));
    assert_eq!(h.state(&a, &CALLED), None, "10 s after the last call");
}

#[test]
fn expired_state_reads_as_absent_inside_the_function() {
    let mut r = Registry::new();
    const FLAG: ValueSpec<bool> = ValueSpec::new("flag").expire_after_write(Duration::from_secs(5));
    const OBSERVED: ValueSpec<String> = ValueSpec::new("observed");
    r.register_fn("test/obs", vec![FLAG.spec(), OBSERVED.spec()], |ctx, _| {
        let seen = format!("{:?}", ctx.get(&FLAG)?);
        ctx.set(&FLAG, &true)?;
        ctx.set(&OBSERVED, &seen)
    })
    .expect("register");
    let mut h = Harness::new(r);
    let a = Address::new(TypeName::from_static("test/obs"), "o");
    h.send(a.clone(), &0i64);
    h.advance(Duration::from_secs(4)).send(a.clone(), &0i64);
    assert_eq!(h.state(&a, &OBSERVED).as_deref(), Some("Some(true)"));
    h.advance(Duration::from_secs(5)).send(a.clone(), &0i64);
    assert_eq!(h.state(&a, &OBSERVED).as_deref(), Some("None"));
}

const TIMER: TypeName = TypeName::from_static("test/timer");

/// `test/timer`: "later:<ms>:<token>" schedules "ping" to `test/log/<id>`;
/// "cancel:<token>" cancels it.
fn timers() -> Registry {
    let mut r = registry();
    r.register_fn("test/timer", vec![], |ctx, msg| {
        let cmd: String = msg.decode()?;
        let target = Address::new(LOG, ctx.self_address().id.clone());
        match cmd.split(':').collect::<Vec<_>>()[..] {
            ["later", ms, token] => {
                let ms: u64 = ms.parse().map_err(FunctionError::terminal)?;
                ctx.send_after_with_token(
                    Duration::from_millis(ms),
                    target,
                    &"ping".to_string(),
                    token,
                )
            }
            ["cancel", token] => ctx.cancel_delayed_message(token),
            _ => Err(FunctionError::terminal(format!("bad command {cmd}"))),
        }
    })
    .expect("register");
    r
}

#[test]
fn a_delayed_message_never_arrives_early() {
    let mut h = Harness::new(timers());
    let t = Address::new(TIMER, "t");
    let log = Address::new(LOG, "t");
    h.send(t.clone(), &"later:1500:x".to_string());
    assert_eq!(h.pending_delayed().len(), 1);
    h.advance(Duration::from_millis(1499));
    assert_eq!(h.state(&log, &ENTRIES), None, "arrived early");
    h.advance(Duration::from_millis(1));
    assert_eq!(h.state(&log, &ENTRIES).as_deref(), Some("ping,"));
    let delivered = h.delivered().last().expect("delivered");
    assert_eq!(
        delivered.caller.as_ref(),
        Some(&t),
        "the sender is the caller"
    );
}

#[test]
fn a_cancelled_delayed_message_never_arrives() {
    let mut h = Harness::new(timers());
    let t = Address::new(TIMER, "t");
    let log = Address::new(LOG, "t");
    h.send(t.clone(), &"later:1000:x".to_string())
        .send(t.clone(), &"later:1000:y".to_string());
    h.advance(Duration::from_millis(500));
    h.send(t.clone(), &"cancel:x".to_string());
    h.advance(Duration::from_secs(3600));
    assert_eq!(
        h.state(&log, &ENTRIES).as_deref(),
        Some("ping,"),
        "only y arrives"
    );
    h.send(t.clone(), &"cancel:y".to_string());
    assert_eq!(
        h.state(&log, &SEEN),
        Some(1),
        "cancel after delivery is a no-op"
    );
    assert!(
        h.send(t, &"cancel:".to_string()).dead_letters()[0]
            .reason
            .contains("must not be empty")
    );
}

#[test]
fn a_delayed_message_overtaken_by_later_sends_is_still_applied() {
    // The sender's later direct message raises the receiver's mark for that sender;
    // the delayed one must still count as new.
    let mut r = timers();
    r.register_fn("test/mixed", vec![], |ctx, msg| {
        let target = Address::new(LOG, "m");
        match msg.decode::<String>()?.as_str() {
            "later" => ctx.send_after(Duration::from_secs(1), target, &"late".to_string()),
            _ => ctx.send(target, &"now".to_string()),
        }
        Ok(())
    })
    .expect("register");
    let mut h = Harness::new(r);
    let m = Address::new(TypeName::from_static("test/mixed"), "m");
    h.send(m.clone(), &"later".to_string())
        .send(m.clone(), &"direct".to_string());
    h.advance(Duration::from_secs(2));
    assert_eq!(
        h.state(&Address::new(LOG, "m"), &ENTRIES).as_deref(),
        Some("now,late,")
    );
}

#[test]
fn oversized_state_is_refused_with_a_typed_error_naming_it() {
    let mut r = Registry::new();
    const BIG: ValueSpec<String> = ValueSpec::new("big");
    r.register_fn("test/big", vec![BIG.spec()], |ctx, msg| {
        let n: i64 = msg.decode()?;
        ctx.set(&BIG, &"x".repeat(n as usize))
    })
    .expect("register");
    let mut h = Harness::new(r);
    let a = Address::new(TypeName::from_static("test/big"), "b");
    h.send(a.clone(), &10i64).send(a.clone(), &400_000i64);
    assert_eq!(
        h.state(&a, &BIG).map(|s| s.len()),
        Some(10),
        "nothing truncated or lost"
    );
    let reason = &h.dead_letters()[0].reason;
    assert!(
        reason.contains("test/big/b: state \"big\" is 400028 bytes, over the limit"),
        "{reason}"
    );
}

#[test]
fn undeclared_state_and_type_mismatch_are_clear_errors() {
    let mut r = Registry::new();
    r.register_fn("test/sloppy", vec![ENTRIES.spec()], |ctx, msg| {
        match msg.decode::<String>()?.as_str() {
            "undeclared" => ctx.set(&SEEN, &1).map(|_| ()),
            _ => ctx.set_value("entries", TypedValue::of(&5i64)),
        }
    })
    .expect("register");
    let mut h = Harness::new(r);
    let a = Address::new(TypeName::from_static("test/sloppy"), "s");
    h.send(a.clone(), &"undeclared".to_string())
        .send(a, &"mismatch".to_string());
    let reasons: Vec<_> = h.dead_letters().iter().map(|d| d.reason.as_str()).collect();
    assert!(
        reasons[0].contains("state \"seen\" is not declared"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("declared as io.statefun.types/string")
            && reasons[1].contains("io.statefun.types/long"),
        "{reasons:?}"
    );
}

#[test]
fn egress_ids_are_stable_across_resends() {
    let mut r = Registry::new();
    r.register_fn("test/out", vec![], |ctx, msg| {
        ctx.send_egress_value(SINK, msg.clone());
        Ok(())
    })
    .expect("register");
    let a = Address::new(TypeName::from_static("test/out"), "o");
    let config = BatchConfig::default();
    let first = process_address(&r, &a, None, vec![ingress(1, &a, "e")], &0, &config);
    let state = first.commit.expect("commit").state;
    let again = process_address(
        &r,
        &a,
        Some(state.clone()),
        vec![ingress(1, &a, "e")],
        &0,
        &config,
    );
    assert_eq!(again.resend, state.outbox);
    let OutboxEntry::Egress(record) = &state.outbox[0] else {
        panic!("egress expected")
    };
    assert_eq!(record.id, "test/out/o@1.0");
}

/// `test/relay` forwards whatever it gets to `test/log/<id>` and to the egress `SINK`.
fn relays() -> Registry {
    let mut r = registry();
    r.register_fn("test/relay", vec![], |ctx, msg| {
        let target = Address::new(LOG, "all");
        ctx.send_value(target, msg.clone());
        ctx.send_egress_value(SINK, msg.clone());
        Ok(())
    })
    .expect("register");
    r
}

/// A relay, the log it forwards to, and the in-memory ports, on a realistic clock.
struct Relays {
    store: MemoryStore,
    transport: MemoryTransport,
    config: BatchConfig,
    clock: ManualClock,
    registry: Registry,
    relay: Address,
    log: Address,
}

impl Relays {
    fn new() -> Self {
        Relays {
            store: MemoryStore::new(),
            transport: MemoryTransport::new(),
            config: BatchConfig::default(),
            clock: ManualClock::new(1_767_225_600_000),
            registry: relays(),
            relay: Address::new(TypeName::from_static("test/relay"), "r"),
            log: Address::new(LOG, "all"),
        }
    }

    /// Dispatches `batch` through `transport`.
    fn dispatch(
        &self,
        transport: &impl statefun_core::ports::Transport,
        batch: Vec<Envelope>,
    ) -> statefun_core::pipeline::BatchReport {
        block_on(dispatch(
            &self.registry,
            &self.store,
            transport,
            &self.config,
            &self.clock,
            batch,
        ))
    }

    /// Sends `text` to the relay and delivers what it forwards.
    fn relay(&self, seq: u64, text: &str) {
        self.dispatch(&self.transport, vec![ingress(seq, &self.relay, text)]);
        let forwarded = self.transport.take_inbox(10);
        self.dispatch(&self.transport, forwarded);
    }

    fn entries(&self) -> Option<String> {
        self.store
            .get(&self.log)
            .and_then(|s| s.cells.get("entries").map(|c| c.value.decode::<String>()))
            .transpose()
            .expect("string")
    }
}

#[test]
fn a_sender_whose_record_was_deleted_is_still_heard_and_its_ids_never_repeat() {
    // A stateless relay's record goes (TTL, an operator); its next commits must not
    // reuse versions the receiver and egress consumers have seen.
    let w = Relays::new();
    let mut egress_ids = Vec::new();
    for (seq, text) in [(1, "before"), (2, "after")] {
        w.relay(seq, text);
        egress_ids.extend(w.transport.take_egress().into_iter().map(|r| r.id));
        w.store.delete(&w.relay);
        w.clock.advance(Duration::from_secs(1));
    }
    assert_eq!(
        w.entries().as_deref(),
        Some("before,after,"),
        "the recreated relay's message was dropped as already applied"
    );
    assert_ne!(egress_ids[0], egress_ids[1], "an egress id repeated");
}

#[test]
fn senders_whose_names_display_alike_keep_separate_marks() {
    // Type `a/b` with id `c/d` and type `a/b/c` with id `d` both display `a/b/c/d`.
    let mut r = Registry::new();
    for t in ["a/b", "a/b/c"] {
        r.register_fn(t, vec![], |ctx, msg| {
            ctx.send_value(Address::new(LOG, "x"), msg.clone());
            Ok(())
        })
        .expect("register");
    }
    r.register_fn("test/log", vec![ENTRIES.spec(), SEEN.spec()], |ctx, _| {
        let seen = ctx.get(&SEEN)?.unwrap_or(0) + 1;
        ctx.set(&SEEN, &seen)
    })
    .expect("register");
    let mut h = Harness::new(r);
    h.send(
        Address::new(TypeName::from_static("a/b"), "c/d"),
        &"1".to_string(),
    );
    h.send(
        Address::new(TypeName::from_static("a/b/c"), "d"),
        &"2".to_string(),
    );
    assert_eq!(h.state(&Address::new(LOG, "x"), &SEEN), Some(2));
}

#[test]
fn a_cancel_is_in_effect_from_its_commit_even_if_its_outbox_never_runs() {
    let store = MemoryStore::new();
    let transport = MemoryTransport::new();
    let config = BatchConfig::default();
    let clock = ManualClock::new(0);
    let registry = timers();
    let t = Address::new(TIMER, "t");
    block_on(dispatch(
        &registry,
        &store,
        &transport,
        &config,
        &clock,
        vec![ingress(1, &t, "later:1000:x")],
    ));
    assert_eq!(transport.pending_timers().len(), 1);
    // The cancel commits; its outbox is never sent (the transport is down for good).
    let report = block_on(dispatch(
        &registry,
        &store,
        &Down,
        &config,
        &clock,
        vec![ingress(2, &t, "cancel:x")],
    ));
    assert_eq!(report.commits, 1, "the cancel committed");
    assert!(report.settled().next().is_none(), "its sends failed");
    clock.advance(Duration::from_secs(5));
    let fired = transport.fire_due(clock.now_ms(), |timer| store.is_cancelled(timer));
    assert!(fired.is_empty(), "a timer fired after its cancel committed");
}

/// A transport that is down.
struct Down;

impl statefun_core::ports::Transport for Down {
    async fn send(
        &self,
        outboxes: &[&[OutboxEntry]],
    ) -> Vec<Result<(), statefun_core::ports::TransportError>> {
        outboxes
            .iter()
            .map(|_| Err(statefun_core::ports::TransportError("down".into())))
            .collect()
    }
}

/// A clock that moves 10 s each time it is read, as a slow batch would.
struct Slow(std::sync::atomic::AtomicU64);

impl Clock for Slow {
    fn now_ms(&self) -> u64 {
        self.0
            .fetch_add(10_000, std::sync::atomic::Ordering::SeqCst)
    }
}

#[test]
fn delays_count_from_the_invocation_not_the_batch() {
    let t = Address::new(TIMER, "t");
    let clock = Slow(std::sync::atomic::AtomicU64::new(1_000_000));
    let out = process_address(
        &timers(),
        &t,
        None,
        vec![
            ingress(1, &t, "later:60000:a"),
            ingress(2, &t, "later:60000:b"),
        ],
        &clock,
        &BatchConfig::default(),
    );
    let outbox = out.commit.expect("commit").state.outbox;
    let due: Vec<u64> = outbox
        .iter()
        .filter_map(|e| match e {
            OutboxEntry::SendAfter { due_at_ms, .. } => Some(*due_at_ms),
            _ => None,
        })
        .collect();
    // Readings: batch start 1,000,000; invocation a 1,010,000; invocation b 1,020,000.
    assert_eq!(due, vec![1_070_000, 1_080_000]);
}

#[test]
fn a_message_that_fits_alone_is_never_refused_for_its_batch_mates() {
    const PAYLOAD: usize = 150 * 1024;
    let mut r = Registry::new();
    r.register_fn("test/fan", vec![], |ctx, msg| {
        let copies: i64 = msg.decode()?;
        for _ in 0..copies {
            ctx.send_egress(SINK, &"x".repeat(PAYLOAD));
        }
        Ok(())
    })
    .expect("register");
    let a = Address::new(TypeName::from_static("test/fan"), "f");
    let store = MemoryStore::new();
    let transport = MemoryTransport::new();
    let config = BatchConfig::default();
    let messages: Vec<Envelope> = [1i64, 1, 1, 3]
        .iter()
        .enumerate()
        .map(|(i, n)| Envelope {
            value: TypedValue::of(n),
            ..ingress(i as u64 + 1, &a, "")
        })
        .collect();
    let ids: Vec<MessageId> = messages.iter().map(|m| m.id.clone()).collect();
    let report = block_on(dispatch(&r, &store, &transport, &config, &0, messages));
    assert_eq!(
        report.settled().cloned().collect::<Vec<_>>(),
        ids[..3].to_vec(),
        "three 150 KiB outboxes do not fit one record together; each fits alone"
    );
    assert_eq!(transport.take_egress().len(), 3);
    assert_eq!(report.failed().count(), 1);
    assert_eq!(report.failed().next().expect("a failure").id, ids[3]);
    assert!(
        report
            .failed()
            .next()
            .expect("a failure")
            .reason
            .contains("instance record (state + outbox) is"),
        "only the message that cannot fit alone is refused: {}",
        report.failed().next().expect("a failure").reason
    );
    assert!(!report.failed().next().expect("a failure").is_retryable());
}

#[test]
fn a_panicking_function_costs_only_its_message() {
    let mut r = registry();
    r.register_fn("test/panicky", vec![SEEN.spec()], |ctx, msg| {
        if msg.decode::<String>()? == "boom" {
            panic!("boom at {}", ctx.self_address());
        }
        let seen = ctx.get(&SEEN)?.unwrap_or(0) + 1;
        ctx.set(&SEEN, &seen)
    })
    .expect("register");
    let p = Address::new(TypeName::from_static("test/panicky"), "p");
    let other = Address::new(LOG, "other");
    let store = MemoryStore::new();
    let transport = MemoryTransport::new();
    let batch = vec![
        ingress(1, &p, "a"),
        ingress(2, &other, "x"),
        ingress(3, &p, "boom"),
        ingress(4, &p, "b"),
    ];
    let report = block_on(dispatch(
        &r,
        &store,
        &transport,
        &BatchConfig::default(),
        &0,
        batch,
    ));
    let failed: Vec<(&MessageId, bool)> =
        report.failed().map(|f| (&f.id, f.is_retryable())).collect();
    assert_eq!(
        report.settled().count(),
        2,
        "the message ahead and the other address"
    );
    assert!(
        report
            .failed()
            .next()
            .expect("a failure")
            .reason
            .contains("the function panicked: boom at test/panicky/p"),
        "{}",
        report.failed().next().expect("a failure").reason
    );
    assert!(!failed[0].1, "a panic is terminal: {failed:?}");
    let mut h = Harness::new(r);
    h.send(p.clone(), &"a".to_string())
        .send(p.clone(), &"boom".to_string())
        .send(p.clone(), &"b".to_string());
    assert_eq!(
        h.state(&p, &SEEN),
        Some(2),
        "the messages around it applied"
    );
    assert_eq!(h.dead_letters().len(), 1);
}

#[test]
fn a_delay_longer_than_a_year_is_refused_with_a_typed_error() {
    let t = Address::new(TIMER, "t");
    let mut h = Harness::new(timers());
    let year_and_a_day_ms = (366 * 24 * 3600 * 1000u64).to_string();
    h.send(t.clone(), &format!("later:{year_and_a_day_ms}:x"))
        .send(t.clone(), &"later:1000:y".to_string());
    let letters = h.dead_letters();
    assert_eq!(
        letters.len(),
        1,
        "only the message asking for too long a delay"
    );
    assert_eq!(
        letters[0].reason,
        "test/timer/t: the delay of a message to test/log/t is 31622400 seconds, \
         over the limit of 31536000 seconds"
    );
    assert_eq!(h.pending_delayed().len(), 1, "the next message ran");
}

#[test]
fn a_committed_outbox_whose_inputs_vanished_is_sent_before_the_next_commit_replaces_it() {
    let w = Relays::new();
    // Sent and acknowledged as usual; the next message a minute later re-sends nothing.
    w.relay(1, "first");
    w.clock.advance(Duration::from_secs(60));
    w.relay(2, "soon");
    assert_eq!(w.entries().as_deref(), Some("first,soon,"));
    // Now a commit lands, its sends fail, and its input is gone for good (a purge, a
    // queue's redrive): nothing will deliver it again.
    let report = w.dispatch(&Down, vec![ingress(3, &w.relay, "orphaned")]);
    assert_eq!((report.commits, report.settled().count()), (1, 0));
    // Once the outbox has settled, the next commit re-sends it before replacing it.
    w.clock.advance(Duration::from_secs(11 * 60));
    w.relay(4, "later");
    assert_eq!(
        w.entries().as_deref(),
        Some("first,soon,orphaned,later,"),
        "the orphaned outbox was lost"
    );
    let egress: Vec<String> = w
        .transport
        .take_egress()
        .iter()
        .map(|r| r.value.decode::<String>().expect("text"))
        .collect();
    assert_eq!(
        egress,
        ["first", "soon", "orphaned", "later"],
        "nothing twice"
    );
}
