//! One failure policy, three hosts: the same failure scenarios through the test harness,
//! the embedded runtime and the AWS path on moto must apply the same messages and
//! dead-letter the same ones, for the same reasons.
//!
//! Per address, in order: `ok:1`, the failing message, `flaky:2` (fails once, then
//! succeeds), `ok:3`. The failing message is one of: a function that always asks to be
//! retried (dead-lettered after the policy's tries — only its own tries count, so
//! `flaky:2`, which waited behind it all along, is not dead-lettered on its first
//! failure), a terminal error, a panic. Another address receives only good messages
//! in the same batches and must not notice.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use statefun_core::ports::SystemClock;
use statefun_core::{
    Address, BatchConfig, FunctionError, Harness, Registry, RetryPolicy, TypeName, TypedValue,
    ValueSpec,
};
use statefun_e2e::{Aws, Dynamo};
use statefun_embedded::{EmbeddedConfig, Runtime};
use statefun_infra::local::QueueSettings;

const LOG: TypeName = TypeName::from_static("fail/log");
const ENTRIES: ValueSpec<String> = ValueSpec::new("entries");
const MAX_ATTEMPTS: u32 = 3;

/// What the functions saw: tries of the always-retrying message, flaky messages that
/// already failed once.
#[derive(Default)]
struct Seen {
    retries: AtomicU32,
    flaky: Mutex<HashSet<String>>,
}

fn registry(seen: Arc<Seen>) -> Registry {
    let mut r = Registry::new();
    r.register_fn(LOG, vec![ENTRIES.spec()], move |ctx, msg| {
        let text: String = msg.decode()?;
        let (verb, arg) = text.split_once(':').unwrap_or((text.as_str(), ""));
        match verb {
            "retry" => {
                seen.retries.fetch_add(1, Ordering::SeqCst);
                return Err(FunctionError::retryable("asked to be retried"));
            }
            "term" => return Err(FunctionError::terminal("asked to fail")),
            "panic" => panic!("asked to panic"),
            "flaky" => {
                let key = format!("{}/{arg}", ctx.self_address());
                if seen.flaky.lock().expect("flaky").insert(key) {
                    return Err(FunctionError::retryable("flaky once"));
                }
            }
            _ => {}
        }
        let mut entries = ctx.get(&ENTRIES)?.unwrap_or_default();
        entries.push_str(arg);
        entries.push(',');
        ctx.set(&ENTRIES, &entries)
    })
    .expect("register");
    r
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: MAX_ATTEMPTS,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
    }
}

/// The scenario: (address, message) in sending order.
fn messages() -> Vec<(Address, String)> {
    let mut out = Vec::new();
    for bad in ["retry", "term", "panic"] {
        let a = Address::new(LOG, bad);
        for m in [
            "ok:1".to_string(),
            bad.to_string(),
            "flaky:2".into(),
            "ok:3".into(),
        ] {
            out.push((a.clone(), m));
            out.push((Address::new(LOG, "innocent"), format!("ok:{}", out.len())));
        }
    }
    out
}

/// What a host ended with: each address's log, and the dead letters as (address,
/// message, reason).
#[derive(Debug)]
struct Outcome {
    logs: BTreeMap<String, String>,
    dead: BTreeSet<(String, String)>,
    reasons: Vec<String>,
    retries: u32,
}

fn expected_logs() -> BTreeMap<String, String> {
    let mut logs = BTreeMap::new();
    for (address, m) in messages() {
        if let Some(("ok" | "flaky", n)) = m.split_once(':') {
            let log: &mut String = logs.entry(address.id.clone()).or_default();
            log.push_str(n);
            log.push(',');
        }
    }
    logs
}

fn check(host: &str, outcome: &Outcome) {
    assert_eq!(outcome.logs, expected_logs(), "{host}: applied messages");
    let dead: BTreeSet<(String, String)> = ["retry", "term", "panic"]
        .iter()
        .map(|b| (b.to_string(), b.to_string()))
        .collect();
    assert_eq!(outcome.dead, dead, "{host}: dead letters");
    for needle in [
        "asked to be retried",
        "asked to fail",
        "panicked: asked to panic",
    ] {
        assert!(
            outcome.reasons.iter().any(|r| r.contains(needle)),
            "{host}: no dead letter says {needle:?}: {:?}",
            outcome.reasons
        );
    }
    assert_eq!(
        outcome.retries, MAX_ATTEMPTS,
        "{host}: the retrying message is tried exactly the policy's attempts"
    );
}

fn log_of(state: &serde_json::Value) -> String {
    state["state"]["entries"]["value"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn text_of(value: &TypedValue) -> String {
    value.decode::<String>().unwrap_or_default()
}

#[test]
fn the_harness_applies_the_policy() {
    let seen = Arc::new(Seen::default());
    let config = BatchConfig {
        retry: policy(),
        ..BatchConfig::default()
    };
    let mut h = Harness::new(registry(seen.clone())).with_config(config);
    for (address, m) in messages() {
        h.send(address, &m);
    }
    let logs = ["retry", "term", "panic", "innocent"]
        .iter()
        .map(|id| {
            let log = h
                .state(&Address::new(LOG, *id), &ENTRIES)
                .unwrap_or_default();
            (id.to_string(), log)
        })
        .collect();
    let outcome = Outcome {
        logs,
        dead: h
            .dead_letters()
            .iter()
            .map(|d| (d.envelope.target.id.clone(), text_of(&d.envelope.value)))
            .collect(),
        reasons: h.dead_letters().iter().map(|d| d.reason.clone()).collect(),
        retries: seen.retries.load(Ordering::SeqCst),
    };
    check("harness", &outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_runtime_applies_the_policy() {
    let seen = Arc::new(Seen::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = EmbeddedConfig::new(dir.path());
    config.batch.retry = policy();
    let runtime = Runtime::start(
        registry(seen.clone()),
        config,
        Box::new(statefun_embedded::DiscardEgress),
    )
    .expect("start");
    let handle = runtime.handle();
    for (address, m) in messages() {
        handle
            .submit(address, TypedValue::of(&m), None)
            .await
            .expect("accepted");
    }
    let logs = || -> BTreeMap<String, String> {
        ["retry", "term", "panic", "innocent"]
            .iter()
            .map(|id| {
                let state = handle.state_json(&Address::new(LOG, *id)).expect("state");
                (id.to_string(), log_of(&state))
            })
            .collect()
    };
    let letters = || handle.dead_letters().expect("dead letters");
    // Until the outcome is complete, or the runtime has nothing left to do.
    handle
        .settles(|| logs() == expected_logs() && letters().len() >= 3)
        .await
        .expect("status");
    let letters = letters();
    let outcome = Outcome {
        logs: logs(),
        dead: letters
            .iter()
            .map(|d| (d.envelope.target.id.clone(), text_of(&d.envelope.value)))
            .collect(),
        reasons: letters.iter().map(|d| d.reason.clone()).collect(),
        retries: seen.retries.load(Ordering::SeqCst),
    };
    runtime.shutdown().expect("shutdown");
    check("embedded", &outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_path_applies_the_policy() {
    let seen = Arc::new(Seen::default());
    let max = MAX_ATTEMPTS.to_string();
    let mut aws = Aws::start_with(
        Dynamo::Moto,
        registry(seen.clone()),
        &[("STATEFUN_MAX_RECEIVES", max.as_str())],
        &[],
        Arc::new(SystemClock),
        QueueSettings {
            visibility_timeout: Duration::from_secs(1),
            max_receive_count: 100,
        },
    )
    .await;
    for (i, (address, m)) in messages().into_iter().enumerate() {
        aws.send(address, TypedValue::of(&m), &i.to_string()).await;
    }
    // Failed messages come back after the visibility timeout: drain past it.
    aws.drain(Duration::from_millis(2_500)).await;
    let mut logs = BTreeMap::new();
    for id in ["retry", "term", "panic", "innocent"] {
        let state = aws.state(&Address::new(LOG, id)).await;
        logs.insert(id.to_string(), log_of(&state));
    }
    let letters = aws.take_all(&aws.config.dlq_url).await;
    let mut dead = BTreeSet::new();
    let mut reasons = Vec::new();
    for (body, attributes) in &letters {
        let envelope = statefun_aws::envelope::decode(body).expect("an envelope");
        dead.insert((envelope.target.id.clone(), text_of(&envelope.value)));
        reasons.push(attributes.get("Reason").cloned().unwrap_or_default());
        assert_eq!(
            attributes.get("Handler").map(String::as_str),
            Some("dispatcher")
        );
        assert!(attributes.contains_key("SourceGroup"), "{attributes:?}");
    }
    let outcome = Outcome {
        logs,
        dead,
        reasons,
        retries: seen.retries.load(Ordering::SeqCst),
    };
    check("aws", &outcome);
}
