//! End-to-end throughput of the embedded durable runtime (no HTTP): concurrent clients
//! submit `example/counter` messages, each acknowledged only once on disk; the clock
//! stops when every message has been applied. Over 1,000 addresses by the number of
//! clients (with each accept's latency), and on one hot address.
//!
//! `cargo bench -p statefun-embedded --bench durable`

use std::sync::Arc;
use std::time::{Duration, Instant};

use statefun_core::{Address, TypedValue};
use statefun_embedded::{DiscardEgress, EmbeddedConfig, Runtime, RuntimeHandle};
use statefun_examples::counter::COUNTER;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CLIENTS: usize = 2_048;

fn applied(handle: &RuntimeHandle, addresses: &[Address]) -> i64 {
    addresses
        .iter()
        .map(|a| {
            let state = handle.state_json(a).expect("state");
            state["state"]["count"]["value"].as_i64().unwrap_or(0)
        })
        .sum()
}

/// Accepted and applied msg/s with `clients` concurrent clients, and every accept's
/// latency (ms).
async fn run(addresses: usize, total: usize, clients: usize) -> (f64, f64, Vec<f64>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = statefun_examples::registry(Default::default()).expect("registry");
    let runtime = Runtime::start(
        registry,
        EmbeddedConfig::new(dir.path()),
        Box::new(DiscardEgress),
    )
    .expect("start");
    let handle = runtime.handle();
    let targets: Arc<Vec<Address>> = Arc::new(
        (0..addresses)
            .map(|i| Address::new(COUNTER, i.to_string()))
            .collect(),
    );
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let handle = handle.clone();
        let targets = targets.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = c;
            while i < total {
                let target = targets[i % targets.len()].clone();
                let sent = Instant::now();
                handle
                    .submit(target, TypedValue::of(&1i64), None)
                    .await
                    .expect("accepted");
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                i += clients;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("client"));
    }
    let accepted = start.elapsed().as_secs_f64();
    while applied(&handle, &targets) < total as i64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let done = start.elapsed().as_secs_f64();
    runtime.shutdown().expect("shutdown");
    latencies.sort_by(f64::total_cmp);
    (total as f64 / accepted, total as f64 / done, latencies)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() {
    println!(
        "embedded durable runtime, example/counter, durable every 10 ms, by concurrent clients"
    );
    println!(
        "{:>10}  {:>8}  {:>10}  {:>14}  {:>22}  {:>9}  {:>9}",
        "addresses",
        "clients",
        "messages",
        "accepted msg/s",
        "accepted+applied msg/s",
        "p50 ms",
        "p99 ms"
    );
    let (mut accepted_series, mut applied_series, mut cdfs) = (Vec::new(), Vec::new(), Vec::new());
    for (clients, total) in [
        (1, 2_000),
        (8, 16_000),
        (32, 50_000),
        (128, 100_000),
        (512, 200_000),
        (CLIENTS, 400_000),
    ] {
        let (accepted, applied, latencies) = run(1_000, total, clients).await;
        println!(
            "{:>10}  {clients:>8}  {total:>10}  {accepted:>14.0}  {applied:>22.0}  {:>9.2}  {:>9.2}",
            1_000,
            percentile(&latencies, 50.0),
            percentile(&latencies, 99.0)
        );
        accepted_series.push((clients as f64, accepted / 1000.0));
        applied_series.push((clients as f64, applied / 1000.0));
        if [32, CLIENTS].contains(&clients) {
            cdfs.push((
                format!("{clients} clients"),
                statefun_e2e::plot::cdf(&latencies),
            ));
        }
    }
    let (accepted, applied, latencies) = run(1, 200_000, CLIENTS).await;
    println!(
        "{:>10}  {CLIENTS:>8}  {:>10}  {accepted:>14.0}  {applied:>22.0}  {:>9.2}  {:>9.2}",
        1,
        200_000,
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0)
    );
    statefun_e2e::plot::lines(
        "embedded_throughput",
        "Embedded runtime, 1,000 counters, accepted and applied",
        "cargo bench -p statefun-embedded --bench durable",
        ("concurrent clients", "thousand msg/s"),
        true,
        &[
            ("accepted", accepted_series),
            ("accepted and applied", applied_series),
        ],
    );
    let cdfs: Vec<(&str, Vec<(f64, f64)>)> = cdfs
        .iter()
        .map(|(label, points)| (label.as_str(), points.clone()))
        .collect();
    statefun_e2e::plot::lines(
        "embedded_accept_latency",
        "Embedded accept latency CDF, 1,000 counters",
        "cargo bench -p statefun-embedded --bench durable",
        ("accept latency (ms, log scale)", "fraction of messages"),
        true,
        &cdfs,
    );
}
