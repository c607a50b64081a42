//! Across builds: the golden fixtures of every stored and queued format, read forever,
//! and the data dirs of older builds started by this one.
//!
//! `tests/fixtures/formats/<build>/` holds real bytes written by that build (how each
//! was made: its README). They are committed once and never regenerated: the day one
//! stops decoding to the value asserted here, CI fails (docs/DEVELOPING.md, "Changing
//! a stored format").

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use base64::Engine as _;
use statefun_aws::envelope;
use statefun_core::dedup::DedupEntry;
use statefun_core::ports::ManualClock;
use statefun_core::{
    Address, EgressRecord, InstanceState, Issued, MessageId, OutboxEntry, TypeName, TypedValue,
};
use statefun_embedded::{DiscardEgress, EmbeddedConfig, EmbeddedError, Runtime};

/// When the fixtures' builds ran (their clock).
const T0: u64 = 1_764_806_400_000;

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/formats")
        .join(path)
}

fn bytes(path: &str) -> Vec<u8> {
    std::fs::read(fixture(path)).expect("fixture")
}

fn json(path: &str) -> serde_json::Value {
    serde_json::from_slice(&bytes(path)).expect("fixture json")
}

fn address(t: &'static str, id: &str) -> Address {
    Address::new(TypeName::from_static(t), id)
}

fn ordered(source: &str, seq: u64, index: u32) -> MessageId {
    MessageId::Ordered {
        source: source.into(),
        seq,
        index,
    }
}

#[test]
fn d40e810_instance_records_read_as_they_were_written() {
    let bytes = bytes("d40e810/instance_state.bin");
    let state = InstanceState::from_bytes(1, &bytes).expect("format 1 reads");
    let version = T0 * 1000 + 7;
    assert_eq!(state.version, version);
    assert_eq!(state.cells["count"].value.decode::<i64>(), Ok(42));
    assert_eq!(state.cells["count"].expires_at_ms, None);
    assert_eq!(
        state.cells["seen"].value.decode::<String>().as_deref(),
        Ok("Bob")
    );
    assert_eq!(state.cells["seen"].expires_at_ms, Some(T0 + 3_600_000));
    let http = "ingress/http";
    assert!(state.dedup.is_applied(&ordered(http, 41, 0)));
    assert!(state.dedup.is_applied(&ordered(http, 40, 3)));
    assert!(!state.dedup.is_applied(&ordered(http, 41, 1)));
    assert!(state.dedup.is_applied(&MessageId::Keyed(
        "timer:example/user-basket/alice@7.1".into()
    )));
    // Spilled out of the record (d40e810/dedup_entry_*.bin): looked up outside until
    // the retention ends.
    let bob = "example/person/Bob";
    let spilled = [
        MessageId::Keyed("sqs:0f3c-old".into()),
        ordered(bob, T0 * 1000 + 1, 2),
    ];
    assert!(!spilled.iter().any(|id| state.dedup.is_applied(id)));
    assert_eq!(state.dedup.lookups(&spilled, T0).len(), 2);
    let mut absorbed = state.dedup.clone();
    absorbed.absorb([
        DedupEntry::from_bytes(1, &self::bytes("d40e810/dedup_entry_0.bin")).expect("entry"),
        DedupEntry::from_bytes(1, &self::bytes("d40e810/dedup_entry_1.bin")).expect("entry"),
    ]);
    assert!(spilled.iter().all(|id| absorbed.is_applied(id)));
    assert!(!absorbed.is_applied(&ordered(bob, T0 * 1000 + 1, 1)));
    assert_eq!(
        state.last_inputs,
        [
            ordered(bob, T0 * 1000 + 1, 2),
            MessageId::Keyed("ingress/http:key-9".into())
        ]
    );
    let greeter = address("example/greeter", "Bob");
    match &state.outbox[..] {
        [
            OutboxEntry::Send(direct),
            OutboxEntry::SendAfter {
                envelope: delayed,
                due_at_ms,
                cancellation_token,
                issued,
            },
            OutboxEntry::Cancel {
                sender,
                token,
                issued: cancel_issued,
            },
            OutboxEntry::Egress(EgressRecord { id, egress, value }),
        ] => {
            assert_eq!(direct.target, address("example/person", "Bob"));
            assert_eq!(direct.caller.as_ref(), Some(&greeter));
            assert_eq!(direct.value.decode::<i32>(), Ok(7));
            assert_eq!(delayed.value.value, None);
            assert_eq!(*due_at_ms, T0 + 900_000);
            assert_eq!(cancellation_token.as_deref(), Some("idle-3"));
            assert_eq!(*issued, Issued { version, index: 1 });
            assert_eq!((sender, token.as_str()), (&greeter, "idle-2"));
            assert_eq!(cancel_issued.index, 2);
            assert_eq!(id, &format!("example/greeter/Bob@{version}.3"));
            assert_eq!(egress.as_str(), "example/greets");
            assert_eq!(value.decode::<String>().as_deref(), Ok("Hello Bob"));
        }
        other => panic!("outbox: {other:?}"),
    }
    let failing = state.failing.as_ref().expect("failing");
    assert_eq!(failing.attempts, 3);
    // Format 1 is still what this build writes: the same bytes.
    assert_eq!(state.to_bytes(), bytes);
    let empty = InstanceState::from_bytes(1, &self::bytes("d40e810/instance_state_empty.bin"));
    assert_eq!(empty.expect("reads"), InstanceState::default());
}

#[test]
fn d40e810_dedup_entries_read_as_they_were_written() {
    let first = DedupEntry::from_bytes(1, &bytes("d40e810/dedup_entry_0.bin")).expect("reads");
    assert_eq!(
        first,
        DedupEntry::Applied {
            id: "sqs:0f3c-old".into(),
            at_ms: T0 - 5_000
        }
    );
    let second = DedupEntry::from_bytes(1, &bytes("d40e810/dedup_entry_1.bin")).expect("reads");
    assert_eq!(second.touched_ms(), T0);
    assert!(matches!(second, DedupEntry::Mark { .. }), "{second:?}");
}

#[test]
fn a_newer_format_is_refused_as_newer_never_misread() {
    let bytes = bytes("d40e810/instance_state.bin");
    let e = InstanceState::from_bytes(2, &bytes).expect_err("format 2 is not this build's");
    assert!(e.is_newer(), "{e}");
    assert!(
        !InstanceState::from_bytes(1, &bytes[..100])
            .expect_err("cut")
            .is_newer()
    );
}

#[test]
fn d40e810_sqs_bodies_read_as_they_were_written() {
    let bodies = json("d40e810/sqs_bodies.json");
    let body = |name: &str| bodies[name].as_str().expect("body").to_string();
    let direct = envelope::decode(&body("direct")).expect("direct");
    assert_eq!(direct.target, address("example/person", "Bob"));
    assert_eq!(
        direct.caller.as_ref(),
        Some(&address("example/greeter", "Bob"))
    );
    assert_eq!(direct.id, ordered("example/greeter/Bob", T0 * 1000 + 7, 0));
    assert_eq!(direct.value.decode::<i32>(), Ok(7));
    let ingress = envelope::decode(&body("ingress")).expect("ingress");
    assert_eq!(ingress.target, address("example/counter", "a/b c"));
    assert_eq!(ingress.caller, None);
    assert_eq!(ingress.value.decode::<i64>(), Ok(5));
    let no_value = envelope::decode(&body("no_value")).expect("no value");
    assert_eq!(no_value.value.value, None);
    let empty = envelope::decode(&body("empty_value")).expect("empty value");
    assert_eq!(empty.value.value, Some(vec![]));
    let timer = envelope::decode_timer(&body("timer")).expect("timer");
    assert_eq!(timer.due_at_ms, T0 + 900_000);
    assert_eq!(timer.token.as_deref(), Some("idle-3"));
    assert_eq!(timer.issued.index, 1);
    assert_eq!(timer.envelope, no_value);
    let untokened = envelope::decode_timer(&body("timer_without_token")).expect("timer");
    assert_eq!((untokened.token, untokened.envelope), (None, ingress));
}

/// DynamoDB JSON (as the fixture and `aws dynamodb scan` print it) to an item.
fn item(json: &serde_json::Value) -> HashMap<String, AttributeValue> {
    let object = json.as_object().expect("item");
    object
        .iter()
        .map(|(name, v)| {
            let (kind, value) = v.as_object().and_then(|o| o.iter().next()).expect("typed");
            let value = value.as_str().expect("string").to_string();
            let v = match kind.as_str() {
                "S" => AttributeValue::S(value),
                "N" => AttributeValue::N(value),
                "B" => AttributeValue::B(Blob::new(
                    base64::engine::general_purpose::STANDARD
                        .decode(value)
                        .expect("base64"),
                )),
                other => panic!("attribute type {other}"),
            };
            (name.clone(), v)
        })
        .collect()
}

#[test]
fn d40e810_dynamodb_items_read_as_they_were_written() {
    let items = json("d40e810/dynamodb_items.json");
    let instance = item(&items["instance"]);
    assert!(!instance.contains_key("fv"), "d40e810 wrote no format");
    let state = statefun_aws::dynamo::instance_of_item(&instance).expect("reads as format 1");
    let from_bin = InstanceState::from_bytes(1, &bytes("d40e810/instance_state.bin"));
    assert_eq!(Ok(state), from_bin);
    let side: Vec<_> = items["side"]
        .as_array()
        .expect("side")
        .iter()
        .map(item)
        .collect();
    let cancels: Vec<Issued> = side
        .iter()
        .filter(|i| i.contains_key("cv"))
        .map(|i| statefun_aws::dynamo::cancel_of_item(i).expect("cancel reads"))
        .collect();
    assert_eq!(
        cancels,
        [Issued {
            version: T0 * 1000 + 7,
            index: 2
        }]
    );
    let spilled: Vec<DedupEntry> = side
        .iter()
        .filter(|i| i.contains_key("d"))
        .map(|i| statefun_aws::dynamo::dedup_of_item(i).expect("dedup reads"))
        .collect();
    assert_eq!(spilled.len(), 2);
    // A newer build's item (a rolling deploy) is newer, not damaged.
    let mut newer = instance.clone();
    newer.insert("fv".into(), AttributeValue::N("2".into()));
    let e = statefun_aws::dynamo::instance_of_item(&newer).expect_err("newer");
    assert!(e.is_newer(), "{e}");
}

/// A copy of a fixture data dir to start (the fixture itself stays as it was).
fn copy_of(fixture_dir: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(fixture(fixture_dir)).expect("fixture dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).expect("copy");
    }
    dir
}

fn start(dir: &Path, clock: &Arc<ManualClock>) -> Result<Runtime, EmbeddedError> {
    let registry = statefun_examples::registry(Default::default()).expect("registry");
    Runtime::start_with_clock(
        registry,
        EmbeddedConfig::new(dir),
        Box::new(DiscardEgress),
        clock.clone(),
    )
}

fn count(runtime: &Runtime, id: &str) -> serde_json::Value {
    let state = runtime
        .handle()
        .state_json(&address("example/counter", id))
        .expect("state");
    state["state"]["count"]["value"].clone()
}

fn copies(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pre-layout-"))
        .collect();
    names.sort();
    names
}

/// d40e810's data dir, started by this build: migrated with a copy left beside it,
/// every state, key, accepted row, timer and dead letter kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_d40e810_data_dir_is_migrated_and_nothing_is_lost_or_doubled() {
    let dir = copy_of("d40e810/data-dir");
    let clock = Arc::new(ManualClock::new(T0 + 2_000));
    let runtime = start(dir.path(), &clock).expect("a d40e810 data dir starts");
    let h = runtime.handle();
    // 5 + 7 applied before, and the accepted row (100) a crash had left unapplied. (The
    // baskets' timers are pending: waited for by condition, not until idle.)
    let applied = h
        .settles(|| count(&runtime, "a") == 112)
        .await
        .expect("settles");
    assert!(applied, "count {}", count(&runtime, "a"));
    assert_eq!(count(&runtime, "b"), 3);
    // Idempotency keys of the old build are still honoured, the accepted row's too; a
    // last message without a key shows that nothing ran before it.
    let a = address("example/counter", "a");
    for (key, value) in [("k-1", 5_i64), ("k-2", 7), ("k-3", 100)] {
        h.submit(a.clone(), TypedValue::of(&value), Some(key.into()))
            .await
            .expect("a repeat is answered");
    }
    h.submit(a.clone(), TypedValue::of(&1_i64), None)
        .await
        .expect("accepted");
    h.settles(|| count(&runtime, "a") != 112)
        .await
        .expect("settles");
    assert_eq!(count(&runtime, "a"), 113, "no key retry applied twice");
    let letters = h.dead_letters().expect("letters");
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].envelope.target,
        address("example/counter", "poison")
    );
    let inventory = address("example/inventory", "socks");
    let stock = |r: &Runtime| {
        r.handle().state_json(&inventory).expect("state")["state"]["stock"]["value"].clone()
    };
    assert_eq!(stock(&runtime), 1000 - 300);
    // The 150 baskets' idle timers, with their tokens, fire after the idle time.
    clock.advance(Duration::from_secs(16 * 60));
    assert!(
        h.settles(|| stock(&runtime) == 1000)
            .await
            .expect("settles"),
        "every basket's timer released its socks: stock {}",
        stock(&runtime)
    );
    drop(h);
    runtime.shutdown().expect("shutdown");
    assert_eq!(copies(dir.path()).len(), 1, "one copy of the old files");
    let copy = dir.path().join(&copies(dir.path())[0]);
    assert!(copy.join("statefun.redb").exists() && copy.join("accepted.redb").exists());
    // A second start is of this build's layout: nothing migrated, nothing copied again.
    let runtime = start(dir.path(), &clock).expect("restart");
    assert_eq!(count(&runtime, "a"), 113);
    runtime.shutdown().expect("shutdown");
    assert_eq!(copies(dir.path()).len(), 1);
}

/// The data dir of the build before the accept file was split off (idempotency keys in
/// the engine's file): the keys move with the migration, and client retries are not
/// applied twice (today's main forgot them: 20 of 20 applied twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_split_data_dir_keeps_its_idempotency_keys() {
    let dir = copy_of("pre-5c6aa7b/data-dir");
    assert!(!dir.path().join("accepted.redb").exists());
    let clock = Arc::new(ManualClock::new(T0 + 2_000));
    let runtime = start(dir.path(), &clock).expect("a layout-0 data dir starts");
    let h = runtime.handle();
    for i in 0..20_i64 {
        let id = format!("c{i:02}");
        assert_eq!(count(&runtime, &id), i + 1);
        h.submit(
            address("example/counter", &id),
            TypedValue::of(&(i + 1)),
            Some(format!("retry-{i:02}")),
        )
        .await
        .expect("a retry is answered");
    }
    h.settle().await.expect("settle");
    for i in 0..20_i64 {
        assert_eq!(count(&runtime, &format!("c{i:02}")), i + 1, "c{i:02}");
    }
    assert_eq!(h.dead_letters().expect("letters").len(), 1);
    drop(h);
    runtime.shutdown().expect("shutdown");
}

fn refusal(dir: &Path) -> String {
    let clock = Arc::new(ManualClock::new(T0));
    match start(dir, &clock) {
        Ok(runtime) => {
            runtime.shutdown().expect("shutdown");
            panic!("started on a damaged data dir")
        }
        Err(e) => e.to_string(),
    }
}

/// A data dir that has had data never starts empty: a missing, empty or foreign file is
/// refused with its path and what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_empty_or_foreign_store_files_are_refused_loudly() {
    let make = || {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::new(T0));
        start(dir.path(), &clock)
            .expect("a fresh data dir starts")
            .shutdown()
            .expect("shutdown");
        dir
    };
    let fresh = make();
    assert!(fresh.path().join("statefun-data.json").exists());

    let dir = make();
    std::fs::remove_file(dir.path().join("statefun.redb")).expect("rm");
    let e = refusal(dir.path());
    assert!(e.contains("statefun.redb") && e.contains("missing"), "{e}");

    let dir = make();
    std::fs::write(dir.path().join("statefun.redb"), b"").expect("truncate");
    let e = refusal(dir.path());
    assert!(e.contains("statefun.redb") && e.contains("empty"), "{e}");

    let dir = make();
    std::fs::remove_file(dir.path().join("accepted.redb")).expect("rm");
    let e = refusal(dir.path());
    assert!(e.contains("accepted.redb") && e.contains("missing"), "{e}");

    let dir = make();
    let other = make();
    std::fs::copy(
        other.path().join("accepted.redb"),
        dir.path().join("accepted.redb"),
    )
    .expect("swap");
    let e = refusal(dir.path());
    assert!(e.contains("another data dir"), "{e}");

    let dir = make();
    let len = std::fs::metadata(dir.path().join("statefun.redb"))
        .expect("len")
        .len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("statefun.redb"))
        .expect("open");
    file.set_len(len / 3).expect("cut");
    drop(file);
    let e = refusal(dir.path());
    assert!(e.contains("statefun.redb"), "{e}");

    // A layout-1 data dir that lost its accept file is not a layout-0 one: refused.
    let dir = copy_of("d40e810/data-dir");
    std::fs::remove_file(dir.path().join("accepted.redb")).expect("rm");
    let e = refusal(dir.path());
    assert!(e.contains("accepted.redb") && e.contains("missing"), "{e}");

    // A legacy data dir whose engine file is gone is not a new one either.
    let dir = copy_of("d40e810/data-dir");
    std::fs::remove_file(dir.path().join("statefun.redb")).expect("rm");
    let e = refusal(dir.path());
    assert!(e.contains("statefun.redb") && e.contains("missing"), "{e}");
}

/// `verify` reads an older data dir as it is (the pre-flight check before a start
/// migrates it): every record of both golden data dirs reads.
#[test]
fn verify_reads_every_record_of_the_older_data_dirs() {
    for (fixture_dir, layout) in [("d40e810/data-dir", 1), ("pre-5c6aa7b/data-dir", 0)] {
        let dir = copy_of(fixture_dir);
        let mut total = 0;
        let report =
            statefun_embedded::verify_at(dir.path(), |n| total = n, |_| {}).expect("verify");
        assert_eq!(report.layout, layout, "{fixture_dir}");
        assert_eq!(report.undecodable(), 0, "{report:?}");
        let read: u64 = report.tables.iter().map(|t| t.read).sum();
        assert_eq!(read, total);
        assert!(read > 20, "{fixture_dir}: {report:?}");
        assert!(copies(dir.path()).is_empty(), "verify never migrates");
    }
}

/// Idempotency keys are forgotten by age while the runtime runs, not only at its next
/// start: a key past its retention is free again (a new message under it is accepted),
/// one within it still answers with its first message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_forgotten_by_age_while_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(T0));
    let registry = statefun_examples::registry(Default::default()).expect("registry");
    let mut config = EmbeddedConfig::new(dir.path());
    config.ingress_key_retention = Duration::from_secs(3600);
    let runtime =
        Runtime::start_with_clock(registry, config, Box::new(DiscardEgress), clock.clone())
            .expect("start");
    let h = runtime.handle();
    let a = address("example/counter", "keys");
    let old = h
        .submit(a.clone(), TypedValue::of(&1_i64), Some("old".into()))
        .await
        .expect("accepted");
    clock.advance(Duration::from_secs(1800));
    let young = h
        .submit(a.clone(), TypedValue::of(&2_i64), Some("young".into()))
        .await
        .expect("accepted");
    clock.advance(Duration::from_secs(1900));
    // The accept thread prunes on its own schedule: wait for the key to go by its
    // effect, as long as the old key is still refused for another message.
    let mut reused = h
        .submit(a.clone(), TypedValue::of(&5_i64), Some("old".into()))
        .await;
    let mut tries = 0;
    while matches!(reused, Err(EmbeddedError::KeyReused(_))) {
        tries += 1;
        assert!(tries < 10_000, "the old key is never forgotten");
        tokio::time::sleep(Duration::from_millis(5)).await;
        reused = h
            .submit(a.clone(), TypedValue::of(&5_i64), Some("old".into()))
            .await;
    }
    let fresh = reused.expect("a forgotten key takes a new message");
    assert_ne!(fresh, old);
    let again = h
        .submit(a.clone(), TypedValue::of(&2_i64), Some("young".into()))
        .await
        .expect("answered");
    assert_eq!(again, young, "a key within its retention is still honoured");
    drop(h);
    runtime.shutdown().expect("shutdown");
}

/// A flipped byte anywhere in a store file's header (a damaged disk, a bad copy) is
/// refused with the file named, or does not matter: never a silent rollback of what
/// was committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_header_is_refused_never_a_silent_rollback() {
    let a = address("example/counter", "a");
    let mut refused = 0;
    for offset in (0..512).step_by(20) {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::new(T0));
        let runtime = start(dir.path(), &clock).expect("start");
        let h = runtime.handle();
        for _ in 0..5 {
            h.submit(a.clone(), TypedValue::of(&1_i64), None)
                .await
                .expect("accepted");
        }
        assert!(
            h.settles(|| count(&runtime, "a") == 5)
                .await
                .expect("settles")
        );
        drop(h);
        runtime.shutdown().expect("shutdown");
        for file in ["statefun.redb", "accepted.redb"] {
            let path = dir.path().join(file);
            let mut bytes = std::fs::read(&path).expect("read");
            bytes[offset] ^= 0xff;
            std::fs::write(&path, bytes).expect("write");
        }
        match start(dir.path(), &clock) {
            Ok(runtime) => {
                assert_eq!(
                    count(&runtime, "a"),
                    5,
                    "offset {offset}: a silent rollback"
                );
                runtime.shutdown().expect("shutdown");
            }
            Err(e) => {
                let e = e.to_string();
                assert!(
                    e.contains(".redb") && e.contains("backup"),
                    "offset {offset}: {e}"
                );
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "some header bytes matter");
}
