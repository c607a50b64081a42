//! Delayed messages in the embedded runtime: persistent across kill -9, never early,
//! never after a cancel. Driven through the shopping cart's idle timer.

mod common;

use std::time::{Duration, Instant};

use common::{Server, egress};

const INVENTORY: Option<&str> = Some("application/vnd.example/InventoryRequest");
const BASKET: Option<&str> = Some("application/vnd.example/BasketRequest");

fn stock(s: &Server) -> i64 {
    s.get_json("/example/inventory/socks")["state"]["stock"]["value"]
        .as_i64()
        .unwrap_or(0)
}

fn post(s: &Server, path: &str, ct: Option<&str>, body: &str) {
    let (status, reply) = s.post(path, ct, None, body.as_bytes()).expect("post");
    assert_eq!(status, 202, "{reply}");
}

#[test]
fn an_idle_timer_survives_kill_9_and_fires_on_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path(), &["--basket-idle-secs", "2"]);
    post(
        &s,
        "/example/inventory/socks",
        INVENTORY,
        r#"{"action":"restock","quantity":5}"#,
    );
    let added = Instant::now();
    post(
        &s,
        "/example/user-basket/alice",
        BASKET,
        r#"{"action":"add","item":"socks","quantity":3}"#,
    );
    assert!(s.settles(|| stock(&s) == 2), "reserved");
    let (out1, _) = s.kill9();

    let s = Server::start(dir.path(), &["--basket-idle-secs", "2"]);
    // A kill -9 may land between the engine's durable rounds: the restart first applies
    // again what it had accepted (restock, then the reservation; once each), so the
    // stock is read once that is done, not at the first answer.
    let reserved = s.settles(|| stock(&s) == 2);
    if added.elapsed() < Duration::from_millis(1500) {
        assert!(
            reserved,
            "the idle timer must not fire early: stock {}",
            stock(&s)
        );
    }
    assert!(s.settles(|| stock(&s) == 5), "released after restart");
    assert!(added.elapsed() >= Duration::from_secs(2), "fired early");
    let events: Vec<_> = [out1, s.stdout.clone()].iter().flat_map(egress).collect();
    assert!(
        events
            .iter()
            .any(|e| e["value"]["event"] == "expired" && e["value"]["user"] == "alice"),
        "{events:?}"
    );
}

#[test]
fn checkout_cancels_the_idle_timer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path(), &["--basket-idle-secs", "1"]);
    post(
        &s,
        "/example/inventory/socks",
        INVENTORY,
        r#"{"action":"restock","quantity":5}"#,
    );
    post(
        &s,
        "/example/user-basket/bob",
        BASKET,
        r#"{"action":"add","item":"socks","quantity":1}"#,
    );
    assert!(s.settles(|| stock(&s) == 4));
    post(
        &s,
        "/example/user-basket/bob",
        BASKET,
        r#"{"action":"checkout"}"#,
    );
    assert!(s.settles(|| {
        egress(&s.stdout)
            .iter()
            .any(|e| e["value"]["event"] == "checked_out")
    }));
    s.settle();
    assert_eq!(
        stock(&s),
        4,
        "a cancelled timer must not release sold stock"
    );
    assert!(
        !egress(&s.stdout)
            .iter()
            .any(|e| e["value"]["event"] == "expired")
    );
}
