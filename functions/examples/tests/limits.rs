//! The embedded runtime at the machine's limits, against the real binary: slow and
//! half-sent clients, idle sockets, too many connections, file descriptors running
//! out, signals, browsers. Each case asserts the answer, the recovery and that what
//! was answered 202 is applied once.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{Server, http};
use statefun_lambda::embedded::Settling;

const LONG: Option<&str> = Some("application/vnd.io.statefun.types/long");

/// A client that connects and sends `bytes`, then nothing more.
fn half_sent(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.write_all(bytes).expect("send");
    // Long enough for any bound under test; a hang fails instead of blocking forever.
    stream
        .set_read_timeout(Some(Settling::STALL))
        .expect("read timeout");
    stream
}

/// Reads until the server closes the connection; what it answered, if anything.
fn until_closed(mut stream: TcpStream) -> String {
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => String::from_utf8_lossy(&answer).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            String::from_utf8_lossy(&answer).into_owned()
        }
        Err(e) => panic!("the server kept the connection open: {e}"),
    }
}

/// The last `n` lines a child logged.
fn tail(lines: &common::Lines, n: usize) -> Vec<String> {
    let lines = lines.lock().expect("lines");
    lines[lines.len().saturating_sub(n)..].to_vec()
}

fn count(lines: &common::Lines, needle: &str) -> usize {
    lines
        .lock()
        .expect("lines")
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

/// Waits until a new client is answered 503 (the server counts connections as it
/// accepts them); the answer.
fn refused_503(s: &Server) -> String {
    let mut answer = String::new();
    assert!(s.settles(|| {
        answer = until_closed(half_sent(
            s.addr,
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        ));
        answer.starts_with("HTTP/1.1 503")
    }));
    answer
}

/// Waits until a POST of `value` to counter `id` is accepted again.
fn accepted_again(s: &Server, id: &str, value: &[u8]) {
    assert!(s.settles(|| {
        s.post(&format!("/example/counter/{id}"), LONG, None, value)
            .is_ok_and(|(status, _)| status == 202)
    }));
}

/// Waits until a line with `needle` is logged (the guard catches a hang).
fn wait_for_log(lines: &common::Lines, needle: &str) {
    let deadline = std::time::Instant::now() + Settling::STALL;
    while count(lines, needle) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "never logged {needle:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the server is reading `n` held requests (besides the one asking).
fn wait_held(s: &Server, n: usize) {
    let needle = format!("statefun_http_requests_in_progress {}\n", n + 1);
    assert!(s.settles(|| {
        http(s.addr, "GET", "/metrics", &[], b"").is_ok_and(|(_, body)| body.contains(&needle))
    }));
}

fn counter(s: &Server, id: &str) -> serde_json::Value {
    s.get_json(&format!("/example/counter/{id}"))["state"]["count"]["value"].clone()
}

#[test]
fn headers_that_never_finish_are_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path(), &["--header-read-timeout", "1s"]);
    let stream = half_sent(
        s.addr,
        b"POST /example/counter/a HTTP/1.1\r\nHost: 127.0.0.1\r\n",
    );
    until_closed(stream);
    // The server still answers everyone else.
    let (status, body) = s
        .post("/example/counter/a", LONG, None, b"1")
        .expect("post");
    assert_eq!(status, 202, "{body}");
}

#[test]
fn a_body_that_never_finishes_is_answered_408() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path(), &["--body-read-timeout", "1s"]);
    let stream = half_sent(
        s.addr,
        b"POST /example/counter/a HTTP/1.1\r\nHost: 127.0.0.1\r\n\
          Content-Type: application/vnd.io.statefun.types/long\r\nContent-Length: 100\r\n\r\n12",
    );
    let answer = until_closed(stream);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive"), "{answer}");
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path(), &["--idle-timeout", "1s"]);
    // One request answered on a keep-alive connection, then silence.
    let stream = half_sent(s.addr, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let answer = until_closed(stream);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A connection that never sends a byte is closed as well.
    until_closed(half_sent(s.addr, b""));
}

#[test]
fn past_the_connection_cap_a_client_is_answered_503_with_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path(), &["--max-connections", "4"]);
    let idle: Vec<TcpStream> = (0..4).map(|_| half_sent(s.addr, b"")).collect();
    // The cap is counted as the server accepts: wait until the four are in.
    let answer = refused_503(&s);
    assert!(answer.contains("Retry-After: 1"), "{answer}");
    assert!(answer.contains("too many connections"), "{answer}");
    drop(idle);
    accepted_again(&s, "cap", b"7");
    assert!(s.settles(|| counter(&s, "cap") == 7));
}

#[test]
fn out_of_file_descriptors_clients_are_answered_and_accepting_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A cap above what 96 descriptors hold: the process runs out before the cap.
    let s = Server::start_with_open_files(dir.path(), &["--max-connections", "1000"], 96);
    let (status, body) = s
        .post("/example/counter/fd", LONG, None, b"1")
        .expect("post");
    assert_eq!(status, 202, "{body}");
    let idle: Vec<TcpStream> = (0..150).map(|_| half_sent(s.addr, b"")).collect();
    // Once the descriptors are gone, a new client is still answered: 503, not silence.
    let answer = refused_503(&s);
    assert!(answer.contains("out of file descriptors"), "{answer}");
    drop(idle);
    accepted_again(&s, "fd", b"2");
    // The clients' closed sockets drain from the backlog meanwhile: a read may still be
    // answered 503 for a moment.
    assert!(s.settles(|| {
        http(s.addr, "GET", "/example/counter/fd", &[], b"").is_ok_and(|(status, body)| {
            status == 200
                && body.contains(r#""count":{"typename":"io.statefun.types/long","value":3}"#)
        })
    }));
    // Logged when an episode starts and when it ends, not for every failed accept (a
    // backlog draining through the last descriptors may make a second, short one).
    let (failed, again) = (
        count(&s.stderr, "accepting a connection failed"),
        count(&s.stderr, "accepting connections again"),
    );
    assert!(
        failed >= 1 && failed == again && failed <= 3,
        "{failed} / {again}"
    );
}

#[test]
fn sigterm_stops_within_the_shutdown_timeout_whatever_a_client_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path(), &["--shutdown-timeout", "1s"]);
    let (status, body) = s
        .post("/example/counter/t", LONG, None, b"5")
        .expect("post");
    assert_eq!(status, 202, "{body}");
    let _held = half_sent(
        s.addr,
        b"POST /example/counter/t HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\n1",
    );
    assert!(s.settles(|| counter(&s, "t") == 5));
    wait_held(&s, 1);
    let (_, stderr) = s.stop();
    assert_eq!(count(&stderr, "closing them unanswered"), 1);
    let again = Server::start(dir.path(), &[]);
    assert_eq!(counter(&again, "t"), 5, "applied once across the stop");
}

#[test]
fn a_second_signal_exits_at_once_and_loses_nothing_answered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Server::start(dir.path(), &["--shutdown-timeout", "1h"]);
    let (status, body) = s
        .post("/example/counter/u", LONG, None, b"4")
        .expect("post");
    assert_eq!(status, 202, "{body}");
    let _held = half_sent(
        s.addr,
        b"POST /example/counter/u HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\n1",
    );
    wait_held(&s, 1);
    s.signal("INT");
    // The first signal is waiting for the held request (an hour); the second does not.
    wait_for_log(&s.stderr, "shutting down");
    s.signal("INT");
    let status = s.wait_exit(Settling::STALL);
    assert_eq!(
        status.code(),
        Some(130),
        "{:?}",
        s.stderr.lock().expect("lines")
    );
    drop(s);
    let again = Server::start(dir.path(), &[]);
    assert!(again.settles(|| counter(&again, "u") == 4));
}

#[test]
fn browser_pages_of_other_origins_and_rebound_names_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path(), &["--allowed-host", "statefun.internal"]);
    let path = "/example/counter/b";
    let post = |headers: &[(&str, &str)]| {
        let mut all = vec![("Content-Type", "text/plain")];
        all.extend_from_slice(headers);
        http(s.addr, "POST", path, &all, b"1").expect("post")
    };
    // A cross-site form or fetch from a page on the web.
    let (status, body) = post(&[("Origin", "http://evil.example")]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("another origin"), "{body}");
    let (status, body) = post(&[("Origin", "null")]);
    assert_eq!(status, 403, "{body}");
    let (status, body) = post(&[("Sec-Fetch-Site", "cross-site")]);
    assert_eq!(status, 403, "{body}");
    // DNS rebinding: a page whose own name now points here reads state.
    let (status, body) =
        http(s.addr, "GET", path, &[("Host", "evil.example:8090")], b"").expect("get");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--allowed-host evil.example"), "{body}");
    // The runtime's own origin, IP addresses, localhost and configured names pass.
    let own = format!("http://{}", s.addr);
    for headers in [
        vec![("Origin", own.as_str())],
        vec![("Host", "localhost:8090")],
        vec![("Host", "statefun.internal")],
        vec![("Sec-Fetch-Site", "same-origin")],
    ] {
        let mut all = vec![("Content-Type", "application/vnd.io.statefun.types/long")];
        all.extend(headers.iter().copied());
        let (status, body) = http(s.addr, "POST", path, &all, b"1").expect("post");
        assert_eq!(status, 202, "{headers:?}: {body}");
    }
    assert!(s.settles(|| counter(&s, "b") == 4));
}

#[test]
fn a_token_is_required_on_every_route_but_healthz() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path(), &["--auth-token", "s3cret"]);
    for (method, path) in [
        ("POST", "/example/counter/k"),
        ("GET", "/example/counter/k"),
        ("GET", "/status"),
        ("GET", "/metrics"),
        ("GET", "/no/such/route"),
    ] {
        for auth in [None, Some("Bearer wrong"), Some("s3cret")] {
            let headers: Vec<(&str, &str)> =
                auth.map(|a| ("Authorization", a)).into_iter().collect();
            let (status, body) = http(s.addr, method, path, &headers, b"1").expect("request");
            assert_eq!(status, 401, "{method} {path} {auth:?}: {body}");
            assert!(body.contains("Bearer"), "{body}");
        }
    }
    let (status, body) = http(s.addr, "GET", "/healthz", &[], b"").expect("healthz");
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, body) = http(
        s.addr,
        "POST",
        "/example/counter/k",
        &[
            ("Authorization", "Bearer s3cret"),
            ("Content-Type", "application/vnd.io.statefun.types/long"),
        ],
        b"9",
    )
    .expect("post");
    assert_eq!(status, 202, "{body}");
}

/// A module whose `slow/*` functions live at an endpoint that refuses every
/// connection: their messages are retried with backoff and never applied.
fn down_endpoint_module(dir: &std::path::Path) -> String {
    let path = dir.join("module.yaml");
    std::fs::write(&path, include_str!("fixtures/down_endpoint.yaml")).expect("module.yaml");
    path.display().to_string()
}

#[test]
fn a_function_type_that_cannot_keep_up_fills_only_its_share_and_is_answered_429() {
    let dir = tempfile::tempdir().expect("tempdir");
    let module = down_endpoint_module(dir.path());
    let data = dir.path().join("data");
    let s = Server::start(
        &data,
        &[
            "--module",
            &module,
            "--max-queued-messages",
            "40",
            "--max-queued-share",
            "50",
        ],
    );
    let string = Some("application/vnd.io.statefun.types/string");
    let mut accepted = 0;
    let refusal = loop {
        let (status, body) = s
            .post(&format!("/slow/echo/{accepted}"), string, None, b"hello")
            .expect("every POST is answered");
        if status != 202 {
            break (status, body);
        }
        accepted += 1;
        assert!(accepted <= 20, "past its share of 40 x 50 %: {body}");
    };
    assert_eq!(accepted, 20);
    assert_eq!(refusal.0, 429, "{}", refusal.1);
    assert!(
        refusal.1.contains("slow/echo has its share"),
        "{}",
        refusal.1
    );
    let answer = until_closed(half_sent(
        s.addr,
        b"POST /slow/echo/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx",
    ));
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    // Another function type is accepted and applied meanwhile.
    for _ in 0..10 {
        let (status, body) = s
            .post("/example/counter/ok", LONG, None, b"1")
            .expect("post");
        assert_eq!(status, 202, "{body}");
    }
    assert!(s.settles(|| counter(&s, "ok") == 10));
    let metrics = http(s.addr, "GET", "/metrics", &[], b"")
        .expect("metrics")
        .1;
    assert!(
        metrics.contains("statefun_requests_refused_total{status=\"429\"} 2"),
        "{metrics}"
    );
}

#[test]
fn the_queue_is_bounded_in_bytes_whatever_the_message_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let module = down_endpoint_module(dir.path());
    let limit = 4 << 20;
    let s = Server::start(
        &dir.path().join("data"),
        &[
            "--module",
            &module,
            "--max-queued-bytes",
            &limit.to_string(),
            "--max-queued-share",
            "100",
        ],
    );
    let payload = vec![b'x'; 128 << 10];
    let string = Some("application/vnd.io.statefun.types/string");
    let mut accepted = 0;
    let (status, body) = loop {
        let (status, body) = s
            .post(&format!("/slow/echo/{accepted}"), string, None, &payload)
            .expect("every POST is answered");
        if status != 202 {
            break (status, body);
        }
        accepted += 1;
        assert!(accepted <= 32, "4 MiB hold 31 of 128 KiB: {body}");
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("--max-queued-bytes"), "{body}");
    assert_eq!(accepted, 31);
    let queued = s.status().queued_bytes;
    assert!(queued <= limit && queued > limit - (128 << 10), "{queued}");
}

/// A small tmpfs mounted for one test, unmounted when dropped; `None` (and why) where
/// mounting is not allowed.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mounting a tmpfs needs root (CI runs as root): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Fills what is left of it (again: the store may give space back as it repairs a
    /// file); the filler file goes when the space should return.
    fn fill(&self) -> std::path::PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("filler");
        let chunk = vec![0u8; 64 << 10];
        while file.write_all(&chunk).is_ok() {}
        // What a 64 KiB write did not fit.
        while file.write_all(&[0]).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// An instance's visits; a read that meets the engine opening its file again (503,
/// for a moment) is asked again.
fn visits(s: &Server, id: &str) -> serde_json::Value {
    let path = format!("/example/person/{id}");
    let mut state = serde_json::Value::Null;
    assert!(s.settles(|| {
        let (status, body) = http(s.addr, "GET", &path, &[], b"").expect("GET");
        assert!(status == 200 || status == 503, "{status}: {body}");
        if status == 200 {
            state = serde_json::from_str(&body).expect("state JSON");
        }
        status == 200
    }));
    state["state"]["visits"]["value"].clone()
}

#[test]
fn disk_full_answers_507_and_the_runtime_resumes_when_space_returns() {
    let disk = match Tmpfs::mount("64m") {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let mut s = Server::start(&disk.path().join("data"), &[]);
    let greet = Some("application/vnd.example/GreetRequest");
    let name = "n".repeat(16 << 10);
    let body = format!(r#"{{"name": "{name}"}}"#);
    let (status, answer) = s
        .post("/example/person/p0", greet, None, body.as_bytes())
        .expect("post");
    assert_eq!(status, 202, "{answer}");
    let filler = disk.fill();
    // Each POST needs room on disk; soon there is none.
    let mut accepted = 1;
    let refusal = loop {
        let (status, answer) = s
            .post(
                &format!("/example/person/p{}", accepted % 4),
                greet,
                None,
                body.as_bytes(),
            )
            .expect("every POST is answered");
        match status {
            202 => accepted += 1,
            _ => break (status, answer),
        }
        assert!(accepted < 2_000, "the disk never filled");
    };
    assert_eq!(refusal.0, 507, "{}", refusal.1);
    assert!(
        refusal.1.contains("could not be made durable"),
        "{}",
        refusal.1
    );
    assert!(
        refusal.1.contains("No space left on device"),
        "{}",
        refusal.1
    );
    let mut health = String::new();
    assert!(s.settles(|| {
        disk.fill();
        let (status, body) = http(s.addr, "GET", "/healthz", &[], b"").expect("healthz");
        health = body;
        status == 503
    }));
    assert!(health.contains("No space left on device"), "{health}");
    // Reads keep answering meanwhile (503 only while the engine reopens its file).
    visits(&s, "p0");
    let status_json: serde_json::Value =
        serde_json::from_str(&http(s.addr, "GET", "/status", &[], b"").expect("status").1)
            .expect("status JSON");
    assert!(
        !status_json["faults"].as_array().expect("faults").is_empty(),
        "{status_json}"
    );
    let metrics = http(s.addr, "GET", "/metrics", &[], b"")
        .expect("metrics")
        .1;
    assert!(
        metrics.contains("statefun_storage_fault{file=\""),
        "{metrics}"
    );
    // Space returns: the runtime takes messages again by itself, no restart.
    std::fs::remove_file(filler).expect("free the space");
    assert!(s.settles(|| {
        s.post("/example/person/p0", greet, None, body.as_bytes())
            .is_ok_and(|(status, _)| status == 202)
    }));
    accepted += 1;
    assert!(s.settles(|| {
        http(s.addr, "GET", "/healthz", &[], b"").is_ok_and(|(status, _)| status == 200)
    }));
    // Every message answered 202 applied once, none of those answered 507.
    let total = || {
        (0..4)
            .map(|i| visits(&s, &format!("p{i}")).as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    assert!(
        s.settles(|| total() == accepted),
        "{} of {accepted}",
        total()
    );
    s.settle();
    assert_eq!(total(), accepted);
    assert_eq!(
        s.child.try_wait().ok().flatten(),
        None,
        "the process runs on"
    );
}

#[test]
fn http2_is_not_served_only_http_1_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path(), &[]);
    // An h2c client with prior knowledge opens with the HTTP/2 preface.
    let answer = until_closed(half_sent(s.addr, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 "),
        "an HTTP/2 answer: {answer:?}"
    );
    // An upgrade request is answered over HTTP/1.1, not switched.
    let answer = until_closed(half_sent(
        s.addr,
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    ));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn disk_full_again_and_again_under_traffic_applies_every_202_once() {
    let disk = match Tmpfs::mount("64m") {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let s = Server::start(&disk.path().join("data"), &[]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // 202s and 507s the client saw.
    let seen = std::sync::Arc::new(std::sync::Mutex::new((0u64, 0u64)));
    let client = {
        let (stop, seen, addr) = (stop.clone(), seen.clone(), s.addr);
        std::thread::spawn(move || {
            let body = format!(r#"{{"name": "{}"}}"#, "n".repeat(8 << 10));
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, answer) = http(
                    addr,
                    "POST",
                    &format!("/example/person/q{}", i % 8),
                    &[("Content-Type", "application/vnd.example/GreetRequest")],
                    body.as_bytes(),
                )
                .expect("every POST is answered");
                let mut seen = seen.lock().expect("seen");
                match status {
                    202 => seen.0 += 1,
                    507 => seen.1 += 1,
                    other => panic!("{other}: {answer}"),
                }
                i += 1;
            }
        })
    };
    let refused = || seen.lock().expect("seen").1;
    let accepted = || seen.lock().expect("seen").0;
    for _ in 0..4 {
        let before = refused();
        // Full until the client is refused (the store may give space back: fill again).
        assert!(s.settles(|| {
            disk.fill();
            refused() > before
        }));
        std::fs::remove_file(disk.path().join("filler")).expect("free the space");
        let ok = accepted();
        assert!(s.settles(|| accepted() > ok));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    client.join().expect("client");
    let total = || {
        (0..8)
            .map(|i| visits(&s, &format!("q{i}")).as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    let accepted = accepted();
    assert!(
        s.settles(|| total() == accepted),
        "{} of {accepted}; status {}; log tail {:#?}",
        total(),
        http(s.addr, "GET", "/status", &[], b"").expect("status").1,
        tail(&s.stderr, 40)
    );
    s.settle();
    assert_eq!(total(), accepted, "every 202 applied once, no 507 applied");
}
