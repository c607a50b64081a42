//! Idempotency keys over weeks: the data dir and the process's memory stay bounded by
//! one retention's keys, because keys are forgotten by age while the runtime runs.
//! Three retention periods of 1,000,000 keyed messages each (to 1,000 counters), the
//! clock moved past the retention between them; after each, the data dir's size, the
//! process's RSS and whether the first period's keys are gone.
//!
//! `cargo bench -p statefun-embedded --bench keys` (KEYS=n for another count)

use std::sync::Arc;
use std::time::{Duration, Instant};

use statefun_core::ports::ManualClock;
use statefun_core::{Address, TypedValue};
use statefun_embedded::{DiscardEgress, EmbeddedConfig, EmbeddedError, Runtime, RuntimeHandle};
use statefun_examples::counter::COUNTER;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CLIENTS: usize = 512;
const RETENTION: Duration = Duration::from_secs(24 * 3600);

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// `keys` keyed messages of period `period`, `CLIENTS` at a time.
async fn submit(handle: &RuntimeHandle, period: usize, keys: usize) {
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let handle = handle.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while i < keys {
                let target = Address::new(COUNTER, (i % 1000).to_string());
                handle
                    .submit(
                        target,
                        TypedValue::of(&1_i64),
                        Some(format!("p{period}-{i}")),
                    )
                    .await
                    .expect("accepted");
                i += CLIENTS;
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
}

/// Whether the key of period 0's message `i` is still remembered (a reuse with another
/// message is refused while it is; once forgotten, the probe is a new message).
async fn remembered(handle: &RuntimeHandle, i: usize) -> bool {
    let target = Address::new(COUNTER, (i % 1000).to_string());
    matches!(
        handle
            .submit(target, TypedValue::of(&2_i64), Some(format!("p0-{i}")))
            .await,
        Err(EmbeddedError::KeyReused(_))
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let keys: usize = std::env::var("KEYS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_764_806_400_000));
    let registry = statefun_examples::registry(Default::default()).expect("registry");
    let mut config = EmbeddedConfig::new(dir.path());
    config.ingress_key_retention = RETENTION;
    let runtime =
        Runtime::start_with_clock(registry, config, Box::new(DiscardEgress), clock.clone())
            .expect("start");
    let handle = runtime.handle();
    println!("keys per retention period: {keys}, retention 24 h (simulated clock)");
    for period in 0..3 {
        let started = Instant::now();
        submit(&handle, period, keys).await;
        handle.settle().await.expect("settle");
        let took = started.elapsed();
        println!(
            "period {period}: {keys} keyed messages in {:.1} s; data dir {:.1} MiB, RSS {:.0} MiB; period 0's keys remembered: {}",
            took.as_secs_f64(),
            dir_bytes(dir.path()) as f64 / (1024.0 * 1024.0),
            rss_mib(),
            remembered(&handle, period + 1).await,
        );
        // A retention later: the accept thread forgets the period's keys on its own.
        clock.advance(RETENTION + Duration::from_secs(3600));
        if period == 0 {
            while remembered(&handle, 0).await {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    drop(handle);
    runtime.shutdown().expect("shutdown");
}
