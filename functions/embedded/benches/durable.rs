//! End-to-end throughput of the embedded durable runtime (no HTTP): many concurrent
//! clients submit `example/counter` messages, each acknowledged only once on disk; the
//! clock stops when every message has been applied. Over 1,000 addresses and on one
//! hot address.
//!
//! `cargo bench -p statefun-embedded --bench durable`

use std::sync::Arc;
use std::time::{Duration, Instant};

use statefun_core::{Address, EgressRecord, TypedValue};
use statefun_embedded::{EgressSink, EmbeddedConfig, Runtime, RuntimeHandle};
use statefun_examples::counter::COUNTER;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CLIENTS: usize = 2_048;

struct Discard;
impl EgressSink for Discard {
    fn emit(&mut self, _: &EgressRecord) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn applied(handle: &RuntimeHandle, addresses: &[Address]) -> i64 {
    addresses
        .iter()
        .map(|a| {
            let state = handle.state_json(a).expect("state");
            state["state"]["count"]["value"].as_i64().unwrap_or(0)
        })
        .sum()
}

async fn run(addresses: usize, total: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = statefun_examples::registry(Default::default()).expect("registry");
    let runtime = Runtime::start(registry, EmbeddedConfig::new(dir.path()), Box::new(Discard))
        .expect("start");
    let handle = runtime.handle();
    let targets: Arc<Vec<Address>> = Arc::new(
        (0..addresses)
            .map(|i| Address::new(COUNTER, i.to_string()))
            .collect(),
    );
    let start = Instant::now();
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let handle = handle.clone();
        let targets = targets.clone();
        clients.push(tokio::spawn(async move {
            let mut i = c;
            while i < total {
                let target = targets[i % targets.len()].clone();
                handle
                    .submit(target, TypedValue::of(&1i64), None)
                    .await
                    .expect("accepted");
                i += CLIENTS;
            }
        }));
    }
    for c in clients {
        c.await.expect("client");
    }
    let accepted = start.elapsed().as_secs_f64();
    while applied(&handle, &targets) < total as i64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let done = start.elapsed().as_secs_f64();
    runtime.shutdown().expect("shutdown");
    (total as f64 / accepted, total as f64 / done)
}

#[tokio::main]
async fn main() {
    println!(
        "embedded durable runtime, example/counter, {CLIENTS} concurrent clients, fsync per round"
    );
    println!(
        "{:>10}  {:>10}  {:>14}  {:>20}",
        "addresses", "messages", "accepted msg/s", "accepted+applied msg/s"
    );
    for (addresses, total) in [(1_000, 400_000), (1, 200_000)] {
        let (accepted, applied) = run(addresses, total).await;
        println!("{addresses:>10}  {total:>10}  {accepted:>14.0}  {applied:>20.0}");
    }
}
