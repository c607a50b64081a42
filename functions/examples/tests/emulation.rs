//! The local-emulation subcommands against a real moto server: provision, send, poll,
//! state — as a user runs them.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use statefun_e2e::Moto;
use statefun_lambda::embedded::Settling;

fn cli(endpoint: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_statefun-lambda"))
        .args(args)
        .args(["--prefix", "cli", "--endpoint-url", endpoint])
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
        assert!(
            letter["dead_lettered_at_ms"]
                .as_u64()
                .is_some_and(|t| t > 0)
        );
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
