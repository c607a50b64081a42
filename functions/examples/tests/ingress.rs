//! The HTTP ingress contract of `statefun-lambda run`, against the real binary.

mod common;

use common::{Server, egress, http};

fn server() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]);
    (dir, server)
}

const LONG: Option<&str> = Some("application/vnd.io.statefun.types/long");

#[test]
fn accepted_messages_get_202_and_a_message_id() {
    let before_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let (_dir, s) = server();
    let (status, body) = s
        .post("/example/counter/a", LONG, None, b"40")
        .expect("post");
    assert_eq!(status, 202, "{body}");
    let id: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(
        id["message_id"]
            .as_str()
            .is_some_and(|m| m.starts_with("ingress/http@")),
        "{body}"
    );
    s.post("/example/counter/a", LONG, None, b" 2\n")
        .expect("post");
    assert!(s.settles(|| { s.get_json("/example/counter/a")["state"]["count"]["value"] == 42 }));
    let state = s.get_json("/example/counter/a");
    assert_eq!(
        state["state"]["count"]["typename"],
        "io.statefun.types/long"
    );
    // The version is the commit's stamp (wall-clock ms x 1000 + a counter): it never
    // repeats, even if the record goes.
    let version = state["version"].as_u64().expect("version");
    assert!(version >= before_ms * 1000, "{state}");
}

#[test]
fn the_playground_greeter_curl_works() {
    let (_dir, s) = server();
    let (status, body) = http(
        s.addr,
        "PUT",
        "/example/person/Bob",
        &[("Content-Type", "application/vnd.example/GreetRequest")],
        br#"{"name": "Bob"}"#,
    )
    .expect("put");
    assert_eq!(status, 202, "{body}");
    assert!(s.settles(|| !egress(&s.stdout).is_empty()));
    let records = egress(&s.stdout);
    assert_eq!(records[0]["egress"], "example/greets");
    assert_eq!(records[0]["value"], "Hello Bob! 😎");
    assert_eq!(records[0]["typename"], "io.statefun.types/string");
    assert_eq!(
        s.get_json("/example/person/Bob")["state"]["visits"]["value"],
        1
    );
}

#[test]
fn a_string_is_the_default_type() {
    let (_dir, s) = server();
    let (status, body) = s
        .post("/example/counter/a", None, None, b"5")
        .expect("post");
    assert_eq!(status, 202, "{body}");
    // The counter wants a long: the message is accepted, then dead-lettered with the reason.
    let (status, _) = s
        .post("/example/counter/a", LONG, None, b"5")
        .expect("post");
    assert_eq!(status, 202);
    assert!(s.settles(|| { s.get_json("/example/counter/a")["state"]["count"]["value"] == 5 }));
    assert!(
        s.stderr
            .lock()
            .expect("lines")
            .iter()
            .any(|l| l.contains("dead-lettering")
                && l.contains("expected a value of type io.statefun.types/long"))
    );
}

fn assert_error(result: std::io::Result<(u16, String)>, status: u16, needle: &str) {
    let (got, body) = result.expect("request");
    assert_eq!(got, status, "{body}");
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("JSON error body: {body}"));
    let message = v["error"].as_str().expect("error field");
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
}

#[test]
fn every_ingress_error_is_a_4xx_saying_what_is_wrong() {
    let (_dir, s) = server();
    assert_error(
        s.post("/nope/thing/a", LONG, None, b"1"),
        404,
        "no function is registered for type nope/thing",
    );
    assert_error(
        http(s.addr, "GET", "/nope/thing/a", &[], b""),
        404,
        "nope/thing",
    );
    assert_error(
        s.post("/example/counter", LONG, None, b"1"),
        404,
        "/{namespace}/{type}/{id}",
    );
    assert_error(
        s.post("/example/counter/a%01b", LONG, None, b"1"),
        400,
        "bad id",
    );
    let long_id = format!("/example/counter/{}", "x".repeat(1025));
    assert_error(s.post(&long_id, LONG, None, b"1"), 400, "bad id");
    assert_error(
        s.post("/example/counter/a", LONG, None, b"forty-two"),
        400,
        "not a valid io.statefun.types/long",
    );
    assert_error(
        s.post(
            "/example/counter/a",
            Some("application/vnd.io.statefun.types/int"),
            None,
            b"99999999999",
        ),
        400,
        "io.statefun.types/int",
    );
    assert_error(
        s.post(
            "/example/counter/a",
            Some("application/vnd.io.statefun.types/bool"),
            None,
            b"yes",
        ),
        400,
        "io.statefun.types/bool",
    );
    assert_error(
        s.post(
            "/example/counter/a",
            Some("application/vnd.io.statefun.types/string"),
            None,
            &[0xff, 0xfe],
        ),
        400,
        "UTF-8",
    );
    assert_error(
        s.post(
            "/example/counter/a",
            Some("application/x-www-form-urlencoded"),
            None,
            b"1",
        ),
        415,
        "application/vnd.",
    );
    assert_error(
        s.post(
            "/example/counter/a",
            Some("application/vnd.notype"),
            None,
            b"1",
        ),
        415,
        "bad type name",
    );
    let big = vec![b'x'; 256 * 1024 + 1];
    assert_error(
        s.post(
            "/example/counter/a",
            Some("application/vnd.example/Blob"),
            None,
            &big,
        ),
        413,
        "over the limit of 262144 bytes",
    );
    assert_error(
        http(s.addr, "DELETE", "/example/counter/a", &[], b""),
        405,
        "use POST",
    );
    assert_error(
        http(s.addr, "PATCH", "/example/counter/a", &[], b""),
        405,
        "use POST",
    );
    assert_error(
        s.post("/example/counter/a", LONG, Some(&"k".repeat(300)), b"1"),
        400,
        "Idempotency-Key",
    );
    // Nothing rejected was enqueued.
    s.settle();
    assert_eq!(s.get_json("/example/counter/a")["version"], 0);
}

#[test]
fn an_idempotency_key_enqueues_once() {
    let (_dir, s) = server();
    let first = s
        .post("/example/counter/k", LONG, Some("order-1"), b"7")
        .expect("post");
    let again = s
        .post("/example/counter/k", LONG, Some("order-1"), b"7")
        .expect("post");
    assert_eq!(first, again, "same key, same message id");
    s.post("/example/counter/k", LONG, Some("order-2"), b"1")
        .expect("post");
    assert!(s.settles(|| { s.get_json("/example/counter/k")["state"]["count"]["value"] == 8 }));
    s.settle();
    assert_eq!(
        s.get_json("/example/counter/k")["state"]["count"]["value"],
        8
    );
}

#[test]
fn an_idempotency_key_is_scoped_to_its_target_and_refuses_another_message() {
    let (_dir, s) = server();
    let (status, k1) = s
        .post("/example/counter/k1", LONG, Some("order-9"), b"5")
        .expect("post");
    assert_eq!(status, 202, "{k1}");
    // The same key to another target is another message, and is applied.
    let (status, k2) = s
        .post("/example/counter/k2", LONG, Some("order-9"), b"5")
        .expect("post");
    assert_eq!(status, 202, "{k2}");
    assert_ne!(k1, k2, "another target, another message id");
    // The same key for the same target with another body is refused, saying so.
    let (status, body) = s
        .post("/example/counter/k1", LONG, Some("order-9"), b"6")
        .expect("post");
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("order-9") && body.contains("another message"),
        "{body}"
    );
    for counter in ["/example/counter/k1", "/example/counter/k2"] {
        assert!(
            s.settles(|| { s.get_json(counter)["state"]["count"]["value"] == 5 }),
            "{counter}: {}",
            s.get_json(counter)
        );
    }
}

#[test]
fn status_tells_waiters_when_nothing_is_left_to_do() {
    let (_dir, s) = server();
    let before = s.status();
    assert!(before.idle(), "{before:?}");
    s.post("/example/counter/st", LONG, None, b"3")
        .expect("post");
    assert!(s.settles(|| { s.get_json("/example/counter/st")["state"]["count"]["value"] == 3 }));
    // A condition that can never hold is given up once the runtime is idle, not at a
    // wall-clock deadline.
    assert!(!s.settles(|| { s.get_json("/example/counter/st")["state"]["count"]["value"] == 4 }));
    let after = s.status();
    assert!(after.idle() && after.commits > before.commits, "{after:?}");
}

#[test]
fn a_flink_module_with_kafka_and_kinesis_kinds_starts_and_says_what_serves_its_ingress() {
    let dir = tempfile::tempdir().expect("tempdir");
    let module = dir.path().join("module.yaml");
    std::fs::write(
        &module,
        "kind: io.statefun.kafka.v1/ingress\nspec:\n  id: tasks/in\n  address: kafka:9092\n  \
         topics:\n    - topic: requests\n      valueType: io.statefun.types/long\n      \
         targets: [example/counter]\n---\nkind: io.statefun.kafka.v1/egress\nspec:\n  \
         id: example/greets\n  address: kafka:9092\n",
    )
    .expect("write module");
    let module = module.to_str().expect("utf-8 path");
    let s = Server::start(&dir.path().join("data"), &["--module", module]);
    let said = s.stderr.lock().expect("lines").join("\n");
    assert!(
        said.contains("io.statefun.kafka.v1/ingress tasks/in is not read here")
            && said.contains("POST each record to the HTTP ingress"),
        "{said}"
    );
    let (status, body) = s
        .post("/example/counter/kafka", LONG, None, b"2")
        .expect("post");
    assert_eq!(status, 202, "{body}");
    assert!(s.settles(|| { s.get_json("/example/counter/kafka")["state"]["count"]["value"] == 2 }));
}

#[test]
fn state_reads_a_data_dir_no_runtime_holds_and_points_at_the_running_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path(), &[]);
    s.post("/example/counter/dd", LONG, None, b"7")
        .expect("post");
    assert!(s.settles(|| { s.get_json("/example/counter/dd")["state"]["count"]["value"] == 7 }));
    let state = |dir: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_statefun-lambda"))
            .args(["state", "--data-dir"])
            .arg(dir)
            .args(["example/counter", "dd"])
            .output()
            .expect("statefun-lambda state")
    };
    let busy = state(dir.path());
    assert!(
        !busy.status.success()
            && String::from_utf8_lossy(&busy.stderr).contains("a running runtime has it open"),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );
    s.stop();
    let out = state(dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("state JSON");
    assert_eq!(json["state"]["count"]["value"], 7, "{json}");
}

/// `verify --data-dir` through the binary, as an operator runs it before an upgrade:
/// one JSON line per table, exit 0 when everything reads; a data dir that lost its
/// engine file fails, saying so.
#[test]
fn verify_reads_a_data_dir_and_fails_on_a_damaged_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path(), &[]);
    s.post("/example/counter/v", LONG, None, b"7")
        .expect("post");
    assert!(s.settles(|| s.get_json("/example/counter/v")["state"]["count"]["value"] == 7));
    s.stop();
    let verify = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_statefun-lambda"))
            .args(["verify", "--data-dir"])
            .arg(dir.path())
            .output()
            .expect("statefun-lambda verify")
    };
    let out = verify();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let state = lines
        .iter()
        .find(|l| l["source"] == "statefun.redb state")
        .expect("the state table's line");
    assert_eq!(state["read"], 1, "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l["undecodable"] == serde_json::json!([]))
    );
    std::fs::remove_file(dir.path().join("statefun.redb")).expect("rm");
    let out = verify();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("statefun.redb"),
        "{err}"
    );
}

/// A sample's value from an OpenMetrics text (`name{labels} value`).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_count_what_the_runtime_did() {
    let (_dir, s) = server();
    for _ in 0..3 {
        let (status, body) = s
            .post("/example/counter/a", LONG, None, b"2")
            .expect("post");
        assert_eq!(status, 202, "{body}");
    }
    // Not a long: accepted, then dead-lettered as poison.
    let (status, _) = s
        .post("/example/counter/b", None, None, b"x")
        .expect("post");
    assert_eq!(status, 202);
    assert!(s.settles(|| s.get_json("/example/counter/a")["state"]["count"]["value"] == 6));
    s.settle();
    let (status, text) = http(s.addr, "GET", "/metrics", &[], b"").expect("GET /metrics");
    assert_eq!(status, 200, "{text}");
    let value = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series}: {text}"));
    assert_eq!(value("statefun_messages_accepted_total"), 4.0);
    assert_eq!(value("statefun_messages_applied_total"), 3.0);
    assert_eq!(
        value(r#"statefun_dead_letters_total{reason="poison"}"#),
        1.0
    );
    assert_eq!(value("statefun_inbox_depth"), 0.0);
    assert_eq!(value("statefun_timers_pending"), 0.0);
    let invocations = value(r#"statefun_invocations_total{function_type="example/counter"}"#);
    assert!((2.0..=4.0).contains(&invocations), "{text}");
    assert_eq!(
        value(r#"statefun_batch_size_sum{function_type="example/counter"}"#),
        4.0,
        "every message was in one invocation batch"
    );
    // Counters send no egress: each round is one commit, never split around sends.
    assert!(value(r#"statefun_commit_seconds_count{transaction="accept"}"#) >= 1.0);
    assert!(value(r#"statefun_commit_seconds_count{transaction="round"}"#) >= 1.0);
    assert!(
        sample(
            &text,
            r#"statefun_commit_seconds_count{transaction="state"}"#
        )
        .is_none()
    );
    assert!(value("statefun_record_bytes_count") >= 1.0);
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[test]
fn an_embedded_data_dirs_dead_letters_are_listed_and_replayed() {
    let (dir, s) = server();
    let (status, _) = s
        .post("/example/counter/b", None, None, b"x")
        .expect("post");
    assert_eq!(status, 202);
    s.settle();
    s.stop();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_statefun-lambda"))
            .args(args)
            .args(["--data-dir", dir.path().to_str().expect("utf-8 path")])
            .output()
            .expect("run statefun-lambda");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
            .collect::<Vec<_>>()
    };
    let letters = cli(&["dlq", "list"]);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["address"], "example/counter/b");
    assert!(
        letters[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("long"))
    );
    // Refused for good at its first try: it first failed when it was dead-lettered.
    let first = letters[0]["first_failure_ms"].as_u64();
    assert!(first.is_some_and(|t| t > 0), "{letters:?}");
    assert_eq!(first, letters[0]["dead_lettered_at_ms"].as_u64());
    assert!(cli(&["dlq", "replay", "--address", "example/counter/a"]).is_empty());
    let replayed = cli(&["dlq", "replay", "--reason", "long"]);
    let fresh = format!("replay:{}", letters[0]["dlq_id"].as_str().expect("row"));
    assert_eq!(replayed[0]["message_id"], fresh.as_str());
    assert!(cli(&["dlq", "list"]).is_empty(), "moved to the inbox");

    // The next start runs it: refused again, dead-lettered under the replay id.
    let s = Server::start(dir.path(), &[]);
    s.settle();
    s.stop();
    let again = cli(&["dlq", "list"]);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0]["message_id"], fresh.as_str());
}

/// The nice value of each of a process's threads, by thread name (Linux's /proc).
#[cfg(target_os = "linux")]
fn thread_nice(pid: u32) -> Vec<(String, i32)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc tasks");
    tasks
        .filter_map(|task| {
            let dir = task.ok()?.path();
            let name = std::fs::read_to_string(dir.join("comm")).ok()?;
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            // Fields after the name in parentheses: state is field 3, nice field 19.
            let nice = stat.rsplit_once(')')?.1.split_whitespace().nth(16)?;
            Some((name.trim().to_owned(), nice.parse().ok()?))
        })
        .collect()
}

#[cfg(target_os = "linux")]
#[test]
fn the_engine_thread_runs_below_the_threads_answering_requests() {
    for (flags, steps) in [(&[][..], 10), (&["--engine-nice", "0"][..], 0)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Server::start(dir.path(), flags);
        // A thread takes its name when it first runs: wait for both to have run.
        let mut threads = thread_nice(s.child.id());
        assert!(s.settles(|| {
            threads = thread_nice(s.child.id());
            ["statefun-accept", "statefun-engine"]
                .iter()
                .all(|name| threads.iter().any(|(n, _)| n == name))
        }));
        let nice_of = |name: &str| {
            threads
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, nice)| *nice)
                .unwrap_or_else(|| panic!("no {name} thread in {threads:?}"))
        };
        let base = nice_of("statefun-accept");
        assert_eq!(
            nice_of("statefun-engine"),
            (base + steps).min(19),
            "{flags:?}: {threads:?}"
        );
        assert!(
            threads
                .iter()
                .filter(|(n, _)| n == "tokio-rt-worker")
                .all(|(_, nice)| *nice == base),
            "the HTTP workers keep the process's priority: {threads:?}"
        );
        s.stop();
    }
}
