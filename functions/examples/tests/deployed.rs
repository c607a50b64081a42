//! The real `template.yaml`, deployed to a local AWS (MiniStack, no Docker, IAM
//! enforced) with the examples' binary laid out as `sam build` leaves it, and driven
//! only through public interfaces: the HTTP API (signed and unsigned), the queues,
//! CloudWatch Logs and `statefun-lambda state` (see `statefun_e2e::stack` for the
//! emulator gaps worked around in the setup).
//!
//! The binary is this build's (debug, `aws` feature): the release package takes minutes
//! to build with its size profile and is built and checked in scripts/deploy-checks.sh;
//! here what is under test is the template and the binary's behaviour behind it.

use std::path::Path;
use std::time::Instant;

use serde_json::{Value as Json, json};
use statefun_e2e::stack::{Options, Stack, until};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_statefun-lambda"))
}

fn deploy(prefix: &str, env: &[(&str, &str)]) -> Stack {
    Stack::deploy(
        binary(),
        prefix,
        Options {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            iam: true,
        },
    )
}

fn count(stack: &Stack, id: &str) -> i64 {
    stack.state("example/counter", id)["state"]["count"]["value"]
        .as_i64()
        .unwrap_or(0)
}

#[test]
fn the_deployed_template_serves_every_flow_under_its_own_least_privilege_roles() {
    let stack = deploy("dep", &[("STATEFUN_BASKET_IDLE_SECS", "2")]);

    // The nested monitoring stack: the alarms and the dashboard.
    let alarms = json(&stack.aws(&[
        "cloudwatch",
        "describe-alarms",
        "--alarm-name-prefix",
        "dep-",
    ]));
    let mut names: Vec<&str> = alarms["MetricAlarms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["AlarmName"].as_str())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "dep-dead-letters",
            "dep-delay-dead-letters",
            "dep-dispatcher-errors",
            "dep-dispatcher-throttles",
            "dep-inbox-age"
        ]
    );
    let dashboard = json(&stack.aws(&[
        "cloudwatch",
        "get-dashboard",
        "--dashboard-name",
        "dep-statefun",
    ]));
    assert!(
        dashboard["DashboardBody"]
            .as_str()
            .is_some_and(|body| body.contains("dep-inbox.fifo")),
        "{dashboard}"
    );

    // The HTTP API: unsigned refused, signed accepted, the greeting on the egress queue.
    let greet = r#"{"name":"Ada"}"#;
    let ctype = "application/vnd.example/GreetRequest";
    let (status, _) = stack.post("example/person/Ada", ctype, greet, false);
    assert_eq!(status, 403, "an unsigned request is refused");
    let (status, body) = stack.post("example/person/Ada", ctype, greet, true);
    assert_eq!(status, 202, "{body}");
    until("Ada's visit in the deployed state", || {
        stack.state("example/person", "Ada")["state"]["visits"]["value"] == 1
    });
    let mut events = Vec::new();
    until("the greeting on the egress queue", || {
        events.extend(stack.receive_bodies(&stack.egress));
        !events.is_empty()
    });
    assert_eq!(events[0]["value"], "Hello Ada! 😎", "{events:?}");

    // A user's queue through the SQS ingress route: Bob is greeted too.
    stack.aws(&[
        "sqs",
        "send-message",
        "--queue-url",
        &stack.people,
        "--message-body",
        r#"{"name":"Bob"}"#,
    ]);
    until("Bob's visit, through the SQS ingress", || {
        stack.state("example/person", "Bob")["state"]["visits"]["value"] == 1
    });
    until("Bob's greeting on the egress queue", || {
        events.extend(stack.receive_bodies(&stack.egress));
        events.iter().any(|g| g["value"] == "Hello Bob! 😎")
    });

    // Poison straight into the inbox: dead-lettered with its reason, handler and group.
    stack.aws(&[
        "sqs",
        "send-message",
        "--queue-url",
        &stack.queue_url("dep-inbox.fifo"),
        "--message-group-id",
        "poison",
        "--message-deduplication-id",
        "poison-1",
        "--message-body",
        "not an envelope",
    ]);
    let mut letters = Vec::new();
    until("the poison on the DLQ", || {
        letters.extend(stack.receive(&stack.queue_url("dep-dlq.fifo")));
        !letters.is_empty()
    });
    let attribute = |name: &str| {
        letters[0]["MessageAttributes"][name]["StringValue"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(attribute("Reason").contains("envelope"), "{letters:?}");
    assert_eq!(attribute("Handler"), "dispatcher", "{letters:?}");
    assert_eq!(attribute("SourceGroup"), "poison", "{letters:?}");

    // Timers over the delay queue and the timer forwarder: an idle basket releases its
    // stock, a checked-out basket's timer is cancelled.
    let post = |path: &str, ctype: &str, body: &str| {
        let (status, text) = stack.post(path, ctype, body, true);
        assert_eq!(status, 202, "{path}: {text}");
    };
    let stock = || stack.state("example/inventory", "socks")["state"]["stock"]["value"].clone();
    let inventory = "application/vnd.example/InventoryRequest";
    let basket = "application/vnd.example/BasketRequest";
    post(
        "example/inventory/socks",
        inventory,
        r#"{"action":"restock","quantity":10}"#,
    );
    until("socks restocked", || stock() == 10);
    let armed = Instant::now();
    let add = |n| json!({"action": "add", "item": "socks", "quantity": n}).to_string();
    post("example/user-basket/idle", basket, &add(3));
    post("example/user-basket/buyer", basket, &add(2));
    until("both baskets reserved", || stock() == 5);
    post(
        "example/user-basket/buyer",
        basket,
        r#"{"action":"checkout"}"#,
    );
    events.clear();
    until("the idle basket expired", || {
        events.extend(stack.receive_bodies(&stack.egress));
        events.iter().any(|e| e["value"]["event"] == "expired")
    });
    assert!(armed.elapsed().as_secs() >= 2, "expired early");
    stack.settle();
    events.extend(stack.receive_bodies(&stack.egress));
    let kinds: Vec<(&Json, &Json)> = events
        .iter()
        .map(|e| (&e["value"]["user"], &e["value"]["event"]))
        .collect();
    assert_eq!(
        kinds,
        [
            (&json!("buyer"), &json!("checked_out")),
            (&json!("idle"), &json!("expired"))
        ],
        "{events:?}"
    );
    assert_eq!(
        stock(),
        8,
        "the idle basket's 3 released, the buyer's 2 sold"
    );
    until(
        "the forwarder's EMF lines count the cancelled timer",
        || stack.emf_sum("timer-forwarder", "TimersCancelled") >= 1,
    );
    assert_eq!(
        stack.emf_sum("timer-forwarder", "TimersCancelled"),
        1,
        "only the checked-out basket's timer was cancelled"
    );
    assert_eq!(
        stack.emf_sum("dispatcher", "DeadLettered"),
        1,
        "the poison, once"
    );
    let lags: Vec<u64> = stack
        .emf("dispatcher")
        .iter()
        .filter_map(|line| line["MaxLag"].as_u64())
        .collect();
    assert!(
        lags.iter().any(|lag| *lag > 0) && lags.iter().all(|lag| *lag < 600_000),
        "the wait from enqueue to commit, from SQS's SentTimestamp: {lags:?}"
    );
}

#[test]
fn a_dispatcher_killed_in_the_middle_of_batches_applies_every_message_once() {
    let stack = deploy("kil", &[]);
    // A killed batch comes back after the inbox's visibility timeout: 5 s here rather
    // than the template's 180 s (6 x the function timeout, AWS's advice).
    stack.aws(&[
        "sqs",
        "set-queue-attributes",
        "--queue-url",
        &stack.queue_url("kil-inbox.fifo"),
        "--attributes",
        "VisibilityTimeout=5",
    ]);
    const COUNTERS: usize = 10;
    const EACH: usize = 30;
    let requests: Vec<Json> = (0..COUNTERS * EACH)
        .map(|i| {
            json!({
                "path": format!("example/counter/k{}", i % COUNTERS),
                "type": "application/vnd.io.statefun.types/long",
                "body": "1",
                "pk": format!("15:example/counter/k{}", i % COUNTERS),
            })
        })
        .collect();
    let killed = std::thread::scope(|scope| {
        let sender = scope.spawn(|| stack.load(&requests, 15.0));
        // Kill the dispatcher while it holds a batch (inbox messages in flight), three
        // times; the emulator starts a new process for the next batch.
        let mut killed = 0;
        let inbox = stack.queue_url("kil-inbox.fifo");
        until("three kills in the middle of a batch", || {
            let in_flight = json(&stack.aws(&[
                "sqs",
                "get-queue-attributes",
                "--queue-url",
                &inbox,
                "--attribute-names",
                "ApproximateNumberOfMessagesNotVisible",
            ]))["Attributes"]["ApproximateNumberOfMessagesNotVisible"]
                != "0";
            let processes = stack.lambda_processes("dispatcher");
            if in_flight && !processes.is_empty() {
                for pid in processes {
                    let _ = std::process::Command::new("kill")
                        .args(["-9", &pid.to_string()])
                        .status();
                }
                killed += 1;
            }
            killed == 3 || sender.is_finished() && stack.queued("kil-inbox.fifo") == 0
        });
        let sent = sender.join().expect("sender");
        assert!(sent.iter().all(|r| r["status"] == 202), "{sent:?}");
        killed
    });
    assert_eq!(killed, 3, "the dispatcher was killed three times mid-batch");
    stack.settle();
    let counts: Vec<i64> = (0..COUNTERS)
        .map(|i| count(&stack, &format!("k{i}")))
        .collect();
    assert_eq!(
        counts,
        vec![EACH as i64; COUNTERS],
        "every message applied once"
    );
}

fn json(text: &str) -> Json {
    statefun_e2e::stack::json(text)
}

/// Build B: this build with the test-only instance-record format 2
/// (`statefun-core/test-format-2`), in a target dir of its own.
fn build_with_format_2() -> std::path::PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("format-2");
    let status = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
        .args([
            "build",
            "--locked",
            "-p",
            "statefun-examples",
            "--bin",
            "statefun-lambda",
            "--features",
            "aws,statefun-core/test-format-2",
            "--target-dir",
        ])
        .arg(&target)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .status()
        .expect("cargo build");
    assert!(status.success(), "building build B");
    target.join("debug/statefun-lambda")
}

/// Keyed counter increments (`+1` each), `each` per counter, retried by the client
/// until answered 202.
fn increments(phase: &str, counters: usize, each: usize) -> Vec<Json> {
    (0..counters * each)
        .map(|i| {
            json!({
                "path": format!("example/counter/r{}", i % counters),
                "type": "application/vnd.io.statefun.types/long",
                "body": "1",
                "key": format!("{phase}-{i}"),
                "pk": format!("15:example/counter/r{}", i % counters),
            })
        })
        .collect()
}

/// The item's format (`fv`) of a counter.
fn item_format(stack: &Stack, id: &str) -> String {
    let key = json!({"pk": {"S": format!("15:example/counter/{id}")}}).to_string();
    let item = json(&stack.aws(&[
        "dynamodb",
        "get-item",
        "--table-name",
        &format!("{}-state", stack.prefix),
        "--key",
        &key,
        "--consistent-read",
    ]));
    item["Item"]["fv"]["N"]
        .as_str()
        .unwrap_or("absent")
        .to_string()
}

/// A rolling upgrade and a rollback on the deployed stack: build A (this one), traffic,
/// `sam deploy` of build B (which reads a newer record format and, until told, writes
/// A's) while traffic flows, then back to A while traffic flows: every message applied
/// once and every address readable throughout. Then B told to write its format 2: B
/// reads and writes it, and A's `verify` names those records as newer, not damaged.
#[test]
fn a_rolling_upgrade_and_a_rollback_apply_every_message_once() {
    let a = binary().to_path_buf();
    let b = build_with_format_2();
    let mut stack = deploy("rol", &[]);
    const COUNTERS: usize = 8;
    let mut expected = 0;
    let mut phase = |stack: &mut Stack, name: &str, each: usize, to: Option<(&Path, &[&str])>| {
        let sending = stack.load_in_background(&increments(name, COUNTERS, each), 2.0);
        if let Some((binary, overrides)) = to {
            stack.redeploy(binary, overrides);
        }
        let sent = sending.results();
        assert!(sent.iter().all(|r| r["status"] == 202), "{name}: {sent:?}");
        expected += each as i64;
        stack.settle();
        let counts: Vec<i64> = (0..COUNTERS)
            .map(|i| count(stack, &format!("r{i}")))
            .collect();
        assert_eq!(
            counts,
            vec![expected; COUNTERS],
            "{name}: every message once"
        );
    };
    phase(&mut stack, "a", 3, None);
    phase(&mut stack, "upgrade", 4, Some((&b, &[])));
    assert_eq!(stack.binary(), b.as_path());
    assert_eq!(
        item_format(&stack, "r0"),
        "1",
        "B writes A's format until told"
    );
    phase(&mut stack, "rollback", 4, Some((&a, &[])));
    phase(
        &mut stack,
        "b-format-2",
        3,
        Some((&b, &["StoreWriteFormat=2"])),
    );
    phase(&mut stack, "b", 2, None);
    assert_eq!(
        item_format(&stack, "r0"),
        "2",
        "B writes its format when told"
    );
    // A cannot read format 2: its `verify` says which records, and why.
    let out = std::process::Command::new(&a)
        .args([
            "verify",
            "--prefix",
            "rol",
            "--endpoint-url",
            &stack.ministack.url,
        ])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .output()
        .expect("verify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    let table = json(stdout.lines().next().unwrap_or_default());
    let newer = table["undecodable"].as_array().map_or(0, |u| {
        u.iter()
            .filter(|r| r["reason"].as_str().is_some_and(|s| s.contains("newer")))
            .count()
    });
    assert_eq!(newer, COUNTERS, "{stdout}");
}
