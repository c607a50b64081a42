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
