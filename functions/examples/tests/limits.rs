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

fn count(lines: &common::Lines, needle: &str) -> usize {
    lines
        .lock()
        .expect("lines")
        .iter()
        .filter(|l| l.contains(needle))
        .count()
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
    let mut answer = String::new();
    assert!(s.settles(|| {
        answer = until_closed(half_sent(
            s.addr,
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        ));
        answer.starts_with("HTTP/1.1 503")
    }));
    assert!(answer.contains("Retry-After: 1"), "{answer}");
    assert!(answer.contains("too many connections"), "{answer}");
    drop(idle);
    assert!(s.settles(|| {
        s.post("/example/counter/cap", LONG, None, b"7")
            .is_ok_and(|(status, _)| status == 202)
    }));
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
    let mut answer = String::new();
    assert!(s.settles(|| {
        answer = until_closed(half_sent(
            s.addr,
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        ));
        answer.starts_with("HTTP/1.1 503")
    }));
    assert!(answer.contains("out of file descriptors"), "{answer}");
    drop(idle);
    assert!(s.settles(|| {
        s.post("/example/counter/fd", LONG, None, b"2")
            .is_ok_and(|(status, _)| status == 202)
    }));
    assert!(s.settles(|| counter(&s, "fd") == 3));
    assert_eq!(
        count(&s.stderr, "accepting a connection failed"),
        1,
        "logged once per episode"
    );
    assert_eq!(count(&s.stderr, "accepting connections again"), 1);
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
