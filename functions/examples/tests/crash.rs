//! Killing the embedded runtime at any moment loses nothing and applies nothing twice.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Lines, Server, egress};

const GREET: Option<&str> = Some("application/vnd.example/GreetRequest");
const LONG: Option<&str> = Some("application/vnd.io.statefun.types/long");

/// A message the test sends until it gets a 202, retrying with the same key.
struct Outgoing {
    path: String,
    content_type: Option<&'static str>,
    body: String,
    key: String,
}

fn workload(n: usize) -> Vec<Outgoing> {
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                let name = format!("P{}", i % 7);
                Outgoing {
                    path: format!("/example/person/{name}"),
                    content_type: GREET,
                    body: format!(r#"{{"name":"{name}"}}"#),
                    key: format!("k{i}"),
                }
            } else {
                Outgoing {
                    path: format!("/example/counter/c{}", i % 5),
                    content_type: LONG,
                    body: "1".into(),
                    key: format!("k{i}"),
                }
            }
        })
        .collect()
}

fn expected(work: &[Outgoing]) -> BTreeMap<String, i64> {
    let mut counts = BTreeMap::new();
    for o in work {
        *counts.entry(o.path.clone()).or_default() += 1;
    }
    counts
}

fn count_at(s: &Server, path: &str) -> i64 {
    let state = s.get_json(path);
    let cell = if path.contains("person") {
        "visits"
    } else {
        "count"
    };
    state["state"][cell]["value"].as_i64().unwrap_or(0)
}

fn greeting_ids(all_stdout: &[Lines]) -> (usize, BTreeSet<String>) {
    let records: Vec<_> = all_stdout.iter().flat_map(egress).collect();
    let ids = records
        .iter()
        .filter_map(|r| r["id"].as_str().map(String::from))
        .collect();
    (records.len(), ids)
}

fn converge(s: &Server, expected: &BTreeMap<String, i64>) {
    let ok = s.settles(|| expected.iter().all(|(path, n)| count_at(s, path) >= *n));
    let actual: BTreeMap<_, _> = expected
        .keys()
        .map(|p| (p.clone(), count_at(s, p)))
        .collect();
    assert!(ok, "lost messages: expected {expected:?}, got {actual:?}");
    s.settle();
    let actual: BTreeMap<_, _> = expected
        .keys()
        .map(|p| (p.clone(), count_at(s, p)))
        .collect();
    assert_eq!(&actual, expected, "duplicated messages");
}

#[test]
fn killed_between_commit_and_send_the_runtime_converges_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = workload(6);
    let mut stdouts = Vec::new();

    // The second state commit aborts the process before its outbox is sent.
    let mut s = Server::start(dir.path(), &["--crash-after-commits", "2"]);
    let mut acked = 0;
    for o in &work {
        match s.post(&o.path, o.content_type, Some(&o.key), o.body.as_bytes()) {
            Ok((202, _)) => acked += 1,
            _ => break,
        }
    }
    let status = s.wait_exit(Duration::from_secs(20));
    assert!(!status.success(), "the fail point must abort the process");
    let (out, _) = s.kill9();
    stdouts.push(out);

    let s = Server::start(dir.path(), &[]);
    for o in &work[acked.min(work.len())..] {
        let (status, body) = s
            .post(&o.path, o.content_type, Some(&o.key), o.body.as_bytes())
            .expect("post");
        assert_eq!(status, 202, "{body}");
    }
    converge(&s, &expected(&work));
    let (out, err) = s.kill9();
    stdouts.push(out);
    assert!(
        err.lock()
            .expect("lines")
            .iter()
            .any(|l| l.contains("re-sending the outbox")),
        "the redelivered commit must re-send its outbox"
    );
    let (_, ids) = greeting_ids(&stdouts);
    assert_eq!(ids.len(), 3, "one greeting per person message: {ids:?}");
}

/// Killed right after its state was visible, likely inside the interval where the
/// engine's commits are in memory only: the restarted runtime redoes that work from the
/// accepted messages, once.
#[test]
fn killed_while_commits_are_in_memory_the_restart_redoes_them_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work: Vec<Outgoing> = workload(40)
        .into_iter()
        .filter(|o| o.path.contains("counter"))
        .collect();
    let s = Server::start(dir.path(), &["--durable-interval-ms", "1000"]);
    for o in &work {
        let (status, body) = s
            .post(&o.path, o.content_type, Some(&o.key), o.body.as_bytes())
            .expect("post");
        assert_eq!(status, 202, "{body}");
    }
    assert!(s.settles(|| expected(&work).iter().all(|(p, n)| count_at(&s, p) == *n)));
    s.kill9();
    let s = Server::start(dir.path(), &[]);
    converge(&s, &expected(&work));
}

#[test]
fn a_stop_and_start_brings_nothing_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = workload(6);
    let s = Server::start(dir.path(), &[]);
    for o in &work {
        let (status, body) = s
            .post(&o.path, o.content_type, Some(&o.key), o.body.as_bytes())
            .expect("post");
        assert_eq!(status, 202, "{body}");
    }
    converge(&s, &expected(&work));
    // Stopped right after its last round: what that round settled must not come again.
    let (out1, _) = s.stop();
    let s = Server::start(dir.path(), &[]);
    s.settle();
    assert_eq!(s.status().queued, 0);
    converge(&s, &expected(&work));
    let (out2, err2) = s.kill9();
    let restarted = err2.lock().expect("lines");
    assert!(
        !restarted
            .iter()
            .any(|l| l.contains("re-sending the outbox")),
        "a restart after a stop re-sent an outbox: {restarted:?}"
    );
    let (records, ids) = greeting_ids(&[out1, out2]);
    assert_eq!(
        (records, ids.len()),
        (3, 3),
        "one greeting per person message"
    );
}

/// A deterministic generator, so failures reproduce.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

#[test]
fn kill_9_at_random_moments_loses_nothing_and_duplicates_nothing_with_dedup_moved_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = workload(240);
    let mut rng = Lcg(0x5eed);
    let mut stdouts = Vec::new();
    let mut next = 0;
    let mut kills = 0;
    // No dedup budget: every commit moves all its dedup entries out of its record, so
    // every redelivery after a kill is judged through the entries moved out.
    let no_budget = ["--dedup-budget-bytes", "0"];
    while next < work.len() {
        let s = Server::start(dir.path(), &no_budget);
        // Kill from another thread after a random delay, mid-request or mid-round.
        let delay = Duration::from_millis(20 + rng.next(150));
        let pid = s.child.id();
        let killed = Arc::new(AtomicBool::new(false));
        let killer = {
            let killed = killed.clone();
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                killed.store(true, Ordering::SeqCst);
                // SIGKILL: no chance to flush or shut down.
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            })
        };
        while next < work.len() {
            let o = &work[next];
            match s.post(&o.path, o.content_type, Some(&o.key), o.body.as_bytes()) {
                Ok((202, _)) => next += 1,
                Ok((status, body)) => panic!("unexpected {status}: {body}"),
                Err(_) if killed.load(Ordering::SeqCst) => break,
                Err(e) => panic!("request failed while the server was up: {e}"),
            }
        }
        killer.join().expect("killer");
        if killed.load(Ordering::SeqCst) {
            kills += 1;
        }
        let (out, _) = s.kill9();
        stdouts.push(out);
    }
    assert!(
        kills >= 3,
        "the test must actually kill the runtime ({kills} kills)"
    );

    let s = Server::start(dir.path(), &no_budget);
    converge(&s, &expected(&work));
    let (out, _) = s.kill9();
    stdouts.push(out);
    let persons = work.iter().filter(|o| o.path.contains("person")).count();
    let (emitted, ids) = greeting_ids(&stdouts);
    assert_eq!(
        ids.len(),
        persons,
        "every greeting emitted, under one id each"
    );
    assert!(emitted >= persons);
}
