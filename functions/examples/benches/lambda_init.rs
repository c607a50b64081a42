//! Lambda init time of the examples' binary: from process start to its first request for
//! an event on a local Lambda Runtime API (what Lambda bills as Init Duration, less the
//! sandbox's own start), per role, over 30 starts each; and the binary's size.
//!
//! `cargo bench -p statefun-examples --bench lambda_init` starts this bench's build of
//! the binary (with the `aws` feature); set `STATEFUN_LAMBDA_BINARY` to time another,
//! e.g. the deployed package `target/lambda/statefun-lambda/bootstrap`. The AWS endpoints are set but never called:
//! a cold start builds clients, it does not use them.

use std::time::{Duration, Instant};

use statefun_e2e::LambdaRuntimeApi;

/// The binary to start: `STATEFUN_LAMBDA_BINARY` (e.g. the package cargo lambda built,
/// `target/lambda/statefun-lambda/bootstrap`), else this bench's own build of it.
fn binary() -> String {
    std::env::var("STATEFUN_LAMBDA_BINARY")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_statefun-lambda").to_string())
}
const STARTS: usize = 30;

fn init_time(role: &str) -> Duration {
    let api = LambdaRuntimeApi::start();
    let env = [
        ("STATEFUN_ROLE", role),
        ("STATEFUN_STATE_TABLE", "bench-state"),
        (
            "STATEFUN_INBOX_QUEUE_URL",
            "http://127.0.0.1:9/q/bench-inbox.fifo",
        ),
        (
            "STATEFUN_DELAY_QUEUE_URL",
            "http://127.0.0.1:9/q/bench-delay",
        ),
        ("STATEFUN_DLQ_URL", "http://127.0.0.1:9/q/bench-dlq.fifo"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "bench"),
        ("AWS_SECRET_ACCESS_KEY", "bench"),
        ("RUST_LOG", "warn"),
    ];
    let started = Instant::now();
    let mut child = api.spawn(&binary(), role, &env);
    let ready = loop {
        if let Some(at) = api.first_next() {
            break at;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{role} exited during init: {status}");
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    let _ = child.kill();
    let _ = child.wait();
    ready.duration_since(started)
}

fn main() {
    let binary = binary();
    let size = std::fs::metadata(&binary).map_or(0, |m| m.len());
    println!(
        "binary {binary}: {:.2} MB ({size} bytes)",
        size as f64 / 1_000_000.0
    );
    println!("Lambda init, process start to first GET /runtime/invocation/next ({STARTS} starts):");
    let mut figure = Vec::new();
    for role in [
        "dispatcher",
        "timer-forwarder",
        "sqs-ingress",
        "http-ingress",
    ] {
        init_time(role); // warm the page cache
        let mut times: Vec<Duration> = (0..STARTS).map(|_| init_time(role)).collect();
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "  {role:16} min {:6.2} ms  median {:6.2} ms  max {:6.2} ms",
            ms(times[0]),
            ms(times[STARTS / 2]),
            ms(times[STARTS - 1])
        );
        figure.push((
            role,
            vec![ms(times[0]), ms(times[STARTS / 2]), ms(times[STARTS - 1])],
        ));
    }
    statefun_e2e::plot::bars(
        "lambda_init",
        &format!(
            "Lambda init per role, {STARTS} starts; package {:.2} MB",
            size as f64 / 1_000_000.0
        ),
        "cargo bench -p statefun-examples --features aws --bench lambda_init (bench/all.sh: on the package)",
        "ms from process start to the first /next",
        &["min", "median", "max"],
        &figure,
    );
}
