//! The local-emulation subcommands against a real moto server: provision, send, poll,
//! state — as a user runs them.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use statefun_e2e::Moto;
use statefun_lambda::embedded::Settling;

fn cli(endpoint: &str, args: &[&str]) -> (bool, String, String) {
    cli_at(endpoint, "cli", args)
}

/// `statefun-lambda <args>` against the deployment `prefix` on the emulator.
fn cli_at(endpoint: &str, prefix: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_statefun-lambda"))
        .args(args)
        .args(["--prefix", prefix, "--endpoint-url", endpoint])
        .env_remove("AWS_ACCESS_KEY_ID")
        .output()
        .expect("run statefun-lambda");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn provision_send_poll_and_state_work_against_an_emulator() {
    let moto = Moto::start();
    let (ok, out, err) = cli(&moto.url, &["provision"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("export STATEFUN_INBOX_QUEUE_URL=") && out.contains("cli-inbox.fifo"),
        "{out}"
    );

    for (value, key) in [("40", "a"), ("2", "b"), ("2", "b")] {
        let (ok, out, err) = cli(
            &moto.url,
            &[
                "send",
                "example/counter",
                "x",
                "--type",
                "io.statefun.types/long",
                value,
                "--key",
                key,
            ],
        );
        assert!(ok, "{err}");
        assert!(
            out.contains(&format!("\"message_id\":\"cli:{key}\"")),
            "{out}"
        );
    }
    // A remote function declared in the module (not compiled in) is known to `send`.
    let dir = tempfile::tempdir().expect("tempdir");
    let module = dir.path().join("module.yaml");
    std::fs::write(
        &module,
        "kind: io.statefun.endpoints.v2/http\nspec:\n  functions: acme/*\n  \
         urlPathTemplate: http://127.0.0.1:9/statefun\n",
    )
    .expect("write module");
    let out = Command::new(env!("CARGO_BIN_EXE_statefun-lambda"))
        .args(["send", "acme/orders", "o-1", "{}", "--key", "remote"])
        .args(["--prefix", "cli", "--endpoint-url", &moto.url])
        .env("STATEFUN_MODULE", &module)
        .env_remove("AWS_ACCESS_KEY_ID")
        .output()
        .expect("run statefun-lambda");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"message_id\":\"cli:remote\""));
    let (ok, _, err) = cli(&moto.url, &["send", "acme/orders", "o-1", "{}"]);
    assert!(
        !ok && err.contains("no function is registered for type acme/orders"),
        "without the module it is unknown: {err}"
    );
    let (ok, _, err) = cli(&moto.url, &["send", "example/nope", "x", "hi"]);
    assert!(
        !ok && err.contains("no function is registered for type example/nope"),
        "{err}"
    );
    let (ok, _, err) = cli(
        &moto.url,
        &[
            "send",
            "example/counter",
            "x",
            "--type",
            "io.statefun.types/long",
            "many",
        ],
    );
    assert!(
        !ok && err.contains("not a valid io.statefun.types/long"),
        "{err}"
    );

    let mut poll = Command::new(env!("CARGO_BIN_EXE_statefun-lambda"))
        .args([
            "poll",
            "--prefix",
            "cli",
            "--wait",
            "1",
            "--endpoint-url",
            &moto.url,
        ])
        .env_remove("AWS_ACCESS_KEY_ID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("poll");
    // Until the count arrives; gives up only if the state stops changing for longer
    // than a hang would take (a guard, not a speed target).
    let mut state = String::new();
    let mut changed = Instant::now();
    loop {
        let (ok, out, err) = cli(&moto.url, &["state", "example/counter", "x"]);
        assert!(ok, "{err}");
        if out != state {
            state = out;
            changed = Instant::now();
        }
        if state.contains("\"value\":42") || changed.elapsed() > Settling::STALL {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = poll.kill();
    let _ = poll.wait();
    let state: serde_json::Value = serde_json::from_str(&state).expect("state JSON");
    assert_eq!(
        state["state"]["count"]["value"], 42,
        "the same key is applied once: {state}"
    );
    assert_eq!(state["function_type"], "example/counter");
}

/// The JSON lines a command printed.
fn lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("a JSON line: {l}")))
        .collect()
}

#[test]
fn dead_letters_are_listed_and_replayed_under_fresh_ids() {
    let moto = Moto::start();
    let (ok, _, err) = cli(&moto.url, &["provision"]);
    assert!(ok, "{err}");
    // Two messages the counter refuses (a string, not a long): dead-lettered.
    for id in ["b", "c"] {
        let (ok, _, err) = cli(&moto.url, &["send", "example/counter", id, "many"]);
        assert!(ok, "{err}");
    }
    let mut poll = Command::new(env!("CARGO_BIN_EXE_statefun-lambda"))
        .args(["poll", "--prefix", "cli", "--wait", "1"])
        .args(["--endpoint-url", &moto.url])
        .env_remove("AWS_ACCESS_KEY_ID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("poll");
    let list = || {
        let (ok, out, err) = cli(&moto.url, &["dlq", "list"]);
        assert!(ok, "{err}");
        lines(&out)
    };
    let started = Instant::now();
    let mut letters = list();
    while letters.len() < 2 {
        assert!(started.elapsed() < Settling::STALL, "never dead-lettered");
        std::thread::sleep(Duration::from_millis(200));
        letters = list();
    }
    let mut addresses: Vec<&str> = letters
        .iter()
        .filter_map(|l| l["address"].as_str())
        .collect();
    addresses.sort();
    assert_eq!(addresses, ["example/counter/b", "example/counter/c"]);
    for letter in &letters {
        assert!(
            letter["reason"]
                .as_str()
                .is_some_and(|r| r.contains("io.statefun.types/long")),
            "{letter}"
        );
        assert_eq!(letter["handler"], "dispatcher", "{letter}");
        let at = letter["dead_lettered_at_ms"].as_u64().unwrap_or(0);
        let first = letter["first_failure_ms"].as_u64().unwrap_or(0);
        assert!(at > 0 && first > 0 && first <= at, "{letter}");
    }
    assert_eq!(list().len(), 2, "listing leaves the letters on the DLQ");

    let (ok, out, err) = cli(
        &moto.url,
        &[
            "dlq",
            "replay",
            "--address",
            "example/counter/b",
            "--reason",
            "long",
        ],
    );
    assert!(ok, "{err}");
    let replayed = lines(&out);
    let b = letters
        .iter()
        .find(|l| l["address"] == "example/counter/b")
        .expect("b");
    assert_eq!(
        replayed,
        [serde_json::json!({
            "address": "example/counter/b",
            "message_id": format!("replay:{}", b["dlq_id"].as_str().expect("dlq id")),
        })],
        "only b's letter, under a fresh id"
    );
    // Still refused by the counter: back on the DLQ, as the replayed message.
    let started = Instant::now();
    loop {
        let now = list();
        if now
            .iter()
            .any(|l| l["message_id"] == replayed[0]["message_id"])
        {
            assert_eq!(now.len(), 2, "c stayed, b came back once: {now:?}");
            break;
        }
        assert!(started.elapsed() < Settling::STALL, "the replay never ran");
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = poll.kill();
    let _ = poll.wait();
    let (ok, _, err) = cli(&moto.url, &["dlq", "replay", "--address", "nonsense"]);
    assert!(!ok && err.contains("expected namespace/type/id"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn egress_tail_prints_what_arrives_and_consumes_only_with_delete() {
    let mut aws = statefun_e2e::Aws::start(
        statefun_e2e::Dynamo::Moto,
        statefun_examples::registry(statefun_examples::ExamplesConfig::default())
            .expect("registry"),
        &[("STATEFUN_EGRESS", "example/greets=sqs:{greets}")],
        &["greets"],
    )
    .await;
    for name in ["Ada", "Bob"] {
        aws.send(
            statefun_core::Address::new(statefun_examples::greeter::PERSON, name),
            statefun_core::TypedValue::of(&statefun_examples::greeter::GreetRequest {
                name: name.into(),
                visits: None,
            }),
            name,
        )
        .await;
    }
    aws.settle().await;
    let url = aws.url_of("greets");
    let tail = |extra: &[&str]| {
        let args: Vec<&str> = ["egress", "tail", url.as_str(), "--count", "2"]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        let (ok, out, err) = cli(&aws.moto.url, &args);
        assert!(ok, "{err}");
        let mut values: Vec<String> = lines(&out)
            .iter()
            .map(|record| record["value"].as_str().unwrap_or_default().to_string())
            .collect();
        values.sort();
        values
    };
    let greetings = ["Hello Ada! 😎", "Hello Bob! 😎"];
    let shown = tokio::task::block_in_place(|| tail(&["--hide-secs", "1"]));
    assert_eq!(shown, greetings);
    // Shown, not consumed: a second later they are there again; --delete consumes.
    let consumed = tokio::task::block_in_place(|| tail(&["--delete"]));
    assert_eq!(consumed, greetings);
    assert!(aws.take_all(&url).await.is_empty(), "consumed by --delete");
}

/// A deployment of the examples on moto, with an SDK client to it.
async fn examples_on_moto() -> statefun_e2e::Aws {
    let registry = statefun_examples::registry(statefun_examples::ExamplesConfig::default());
    statefun_e2e::Aws::start(
        statefun_e2e::Dynamo::Moto,
        registry.expect("registry"),
        &[],
        &[],
    )
    .await
}

/// `statefun-lambda <args>` against `aws`'s deployment: its JSON lines and its stderr.
fn run_on(aws: &statefun_e2e::Aws, args: &[&str]) -> (Vec<serde_json::Value>, String) {
    let (ok, out, err) = tokio::task::block_in_place(|| cli_at(&aws.moto.url, &aws.prefix, args));
    assert!(ok, "{err}");
    (lines(&out), err)
}

/// A dead letter as the dispatcher writes it: the message's body and our attributes.
async fn dead_letter(aws: &statefun_e2e::Aws, id: usize, group: &str) {
    let envelope = statefun_core::Envelope {
        id: statefun_core::MessageId::Keyed(format!("poison-{id}")),
        target: statefun_core::Address::new(statefun_examples::counter::COUNTER, "p"),
        caller: None,
        value: statefun_core::TypedValue::of(&"many".to_string()),
    };
    let attribute = |v: &str| {
        aws_sdk_sqs::types::MessageAttributeValue::builder()
            .data_type("String")
            .string_value(v)
            .build()
            .expect("attribute")
    };
    aws.clients
        .sqs
        .send_message()
        .queue_url(&aws.config.dlq_url)
        .message_body(statefun_aws::envelope::encode(&envelope))
        .message_group_id(group)
        .message_deduplication_id(format!("letter-{id}"))
        .message_attributes("Reason", attribute("refused"))
        .message_attributes("Handler", attribute("dispatcher"))
        .message_attributes("SourceGroup", attribute(group))
        .send()
        .await
        .expect("dead-letter");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_reaches_every_letter_of_a_fifo_group_and_a_listing_counts_the_rest() {
    let aws = examples_on_moto().await;
    // More letters in one FIFO group than one receive returns: SQS shows a group's
    // later messages only once its earlier ones are deleted.
    for id in 0..23 {
        dead_letter(&aws, id, "example/counter/p").await;
    }
    let run = |args: &[&str]| run_on(&aws, args);
    let (listed, err) = run(&["dlq", "list"]);
    let unseen: usize = err
        .split("unseen=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map_or(0, |n| n.parse().expect("a count"));
    assert_eq!(
        (listed.len(), unseen),
        (10, 13),
        "a group shows its first 10, the rest are counted: {err}"
    );

    let (replayed, err) = run(&["dlq", "replay", "--address", "example/counter/p"]);
    assert_eq!(replayed.len(), 23, "{err}");
    let (left, _) = run(&["dlq", "list"]);
    assert!(left.is_empty(), "{left:?}");
    let inbox = aws.take_all(&aws.config.inbox_url).await;
    assert_eq!(inbox.len(), 23, "every letter back in the inbox, once");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_delay_queues_dlq_is_listed_and_replayed_into_the_delay_queue_unchanged() {
    let aws = examples_on_moto().await;
    let timer = statefun_aws::envelope::TimerMessage {
        due_at_ms: 1,
        token: None,
        issued: statefun_core::Issued {
            version: 1,
            index: 0,
        },
        envelope: statefun_core::Envelope {
            id: statefun_core::MessageId::Keyed("example/counter/t@1.0".into()),
            target: statefun_core::Address::new(statefun_examples::counter::COUNTER, "t"),
            caller: None,
            value: statefun_core::TypedValue::of(&1_i64),
        },
    };
    let body = statefun_aws::envelope::encode_timer(&timer);
    aws.clients
        .sqs
        .send_message()
        .queue_url(aws.url_of("delay-dlq"))
        .message_body(&body)
        .send()
        .await
        .expect("send");
    let run = |args: &[&str]| run_on(&aws, args).0;
    let listed = run(&["dlq", "list", "--queue", "delay"]);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["address"], "example/counter/t");
    assert_eq!(listed[0]["message_id"], "example/counter/t@1.0");
    assert!(
        run(&["dlq", "list"]).is_empty(),
        "the inbox's DLQ is another queue"
    );

    let replayed = run(&["dlq", "replay", "--queue", "delay"]);
    assert_eq!(
        replayed,
        [
            serde_json::json!({"address": "example/counter/t", "message_id": "example/counter/t@1.0"})
        ],
        "a delayed message keeps its id: it is deduplicated by it, and was never delivered"
    );
    let delay = aws.take_all(&aws.config.delay_url).await;
    assert_eq!(delay.len(), 1);
    assert_eq!(delay[0].0, body, "the timer as it was");
    assert!(aws.take_all(&aws.url_of("delay-dlq")).await.is_empty());
    assert!(run(&["dlq", "list", "--queue", "delay"]).is_empty());
}
