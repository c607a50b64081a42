//! The deployed stack, measured: `template.yaml` deployed to MiniStack (as the
//! deployed-stack suite does, IAM enforced) with this bench's build of the binary, then
//! `MESSAGES` signed HTTP API requests to distinct `example/counter` addresses, paced,
//! each timed from its send to its state item being visible in DynamoDB. Then, from the
//! functions' CloudWatch logs: invocation durations (REPORT lines; MiniStack's have no
//! `Init Duration`, so the cold one is the function's first invocation, which includes
//! starting its process) and AWS requests per message (EMF lines).
//!
//! `cargo bench -p statefun-examples --features aws --bench deployed` (set
//! `STATEFUN_BENCH_MESSAGES`, default 300, and `STATEFUN_BENCH_RATE` per second,
//! default 20). The figures are an emulator's on this machine: MiniStack's Python HTTP
//! API, SQS and DynamoDB add their own time; use them to compare builds, not as AWS's.

use std::path::Path;

use serde_json::{Value as Json, json};
use statefun_e2e::stack::{Options, Stack};

fn setting(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `Duration: 12.34 ms` from a REPORT line.
fn report_duration(line: &str) -> Option<f64> {
    let rest = line.split("\tDuration: ").nth(1)?;
    rest.split(' ').next()?.parse().ok()
}

fn main() {
    let messages = setting("STATEFUN_BENCH_MESSAGES", 300.0) as usize;
    let rate = setting("STATEFUN_BENCH_RATE", 20.0);
    let stack = Stack::deploy(
        Path::new(env!("CARGO_BIN_EXE_statefun-lambda")),
        "bench",
        Options {
            env: vec![("RUST_LOG".into(), "warn".into())],
            iam: true,
        },
    );
    let requests: Vec<Json> = (0..messages)
        .map(|i| {
            json!({
                "path": format!("example/counter/b{i}"),
                "type": "application/vnd.io.statefun.types/long",
                "body": "1",
                "pk": format!("15:example/counter/b{i}"),
            })
        })
        .collect();
    let results = stack.load(&requests, rate);
    stack.settle();

    let accepted = results.iter().filter(|r| r["status"] == 202).count();
    let mut latency: Vec<f64> = results
        .iter()
        .filter_map(|r| Some((r["seen"].as_f64()? - r["sent"].as_f64()?) * 1000.0))
        .collect();
    latency.sort_by(f64::total_cmp);
    let sent: Vec<f64> = results.iter().filter_map(|r| r["sent"].as_f64()).collect();
    let span = sent.last().unwrap_or(&0.0) - sent.first().unwrap_or(&0.0);
    println!(
        "deployed stack on MiniStack: {messages} messages paced at {rate}/s (sent at {:.1}/s: one client, each request waits for its answer), {accepted} accepted (202), {} applied",
        (sent.len().max(2) - 1) as f64 / span.max(f64::EPSILON),
        latency.len()
    );
    assert!(!latency.is_empty(), "nothing applied");
    println!(
        "send -> state visible: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        percentile(&latency, 50.0),
        percentile(&latency, 99.0),
        latency[latency.len() - 1]
    );

    statefun_e2e::plot::lines(
        "deployed_latency",
        "Deployed stack on MiniStack: send -> state visible",
        "cargo bench -p statefun-examples --features aws --bench deployed",
        ("ms", "fraction of messages"),
        false,
        &[(
            "signed HTTP API request to DynamoDB item",
            statefun_e2e::plot::cdf(&latency),
        )],
    );

    let mut roles = std::collections::BTreeMap::new();
    let mut emf_metrics = 0;
    for function in ["http-ingress", "dispatcher"] {
        let lines = stack.log_lines(function);
        let durations: Vec<f64> = lines.iter().filter_map(|l| report_duration(l)).collect();
        let billed: Vec<f64> = lines.iter().filter_map(|l| billed_duration(l)).collect();
        let Some((cold, warm)) = durations.split_first() else {
            println!("{function}: no invocations");
            continue;
        };
        let mut warm = warm.to_vec();
        warm.sort_by(f64::total_cmp);
        let emf = stack.emf(function);
        let sum = |metric: &str| -> f64 { emf.iter().filter_map(|l| l[metric].as_f64()).sum() };
        let (handled, requests) = (sum("Messages"), sum("Requests"));
        let apis: std::collections::BTreeSet<&str> = emf
            .iter()
            .filter_map(Json::as_object)
            .flat_map(|line| line.keys())
            .filter_map(|key| key.strip_prefix("Requests."))
            .collect();
        let by_api: Vec<String> = apis
            .iter()
            .map(|api| format!("{api} {}", sum(&format!("Requests.{api}"))))
            .collect();
        // CloudWatch Logs bills each event's bytes plus 26 of its own.
        let log_bytes: usize = lines.iter().map(|l| l.len() + 26).sum();
        let invocations = durations.len() as f64;
        emf_metrics = emf
            .iter()
            .filter_map(|l| l["_aws"]["CloudWatchMetrics"][0]["Metrics"].as_array())
            .map(Vec::len)
            .max()
            .unwrap_or(0)
            .max(emf_metrics);
        println!(
            "{function}: {} invocations, {:.1} messages each; first (cold) {cold:.0} ms; the others p50 {:.0} ms, p99 {:.0} ms, billed {:.1} ms on average (the first included); {:.0} log bytes per invocation; {:.2} AWS requests per message ({requests} for {handled}: {})",
            durations.len(),
            handled / emf.len().max(1) as f64,
            percentile(&warm, 50.0),
            percentile(&warm, 99.0),
            mean(&billed),
            log_bytes as f64 / invocations,
            requests / handled.max(1.0),
            by_api.join(", "),
        );
        roles.insert(
            function.to_string(),
            json!({
                "billed_ms": mean(&billed),
                "log_bytes": log_bytes as f64 / invocations,
                "messages": handled / emf.len().max(1) as f64,
            }),
        );
    }
    // The stack's traffic never delays a message: the forwarder, which does less
    // than the dispatcher per batch (no state read or commit), is counted at its figures.
    if let Some(dispatcher) = roles.get("dispatcher").cloned() {
        roles.insert("forwarder".into(), dispatcher);
    }
    let lambda = json!({
        "measured": statefun_e2e::plot::today(),
        "command": "cargo bench -p statefun-examples --features aws --bench deployed",
        "notes": [
            format!("the deployed stack on MiniStack, {messages} HTTP requests at {rate}/s; an emulator's durations (its services are Python): an upper bound of AWS's"),
            "the forwarder is counted at the dispatcher's figures (the bench's traffic has no delayed messages)",
        ],
        "memory_mb": memory_mb(),
        "roles": roles,
        "emf_metrics": emf_metrics,
    });
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../bench/measured/lambda.json"
    );
    std::fs::write(
        path,
        serde_json::to_string_pretty(&lambda).expect("json") + "\n",
    )
    .expect("write bench/measured/lambda.json");
    println!("wrote {path}");
}

/// `Billed Duration: 13 ms` from a REPORT line (the duration rounded up to the next
/// millisecond where the line has none).
fn billed_duration(line: &str) -> Option<f64> {
    match line.split("\tBilled Duration: ").nth(1) {
        Some(rest) => rest.split(' ').next()?.parse().ok(),
        None => report_duration(line).map(f64::ceil),
    }
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// The Lambdas' `MemorySize` in the template.
fn memory_mb() -> f64 {
    let template = include_str!("../../../template.yaml");
    template
        .lines()
        .find_map(|l| l.trim().strip_prefix("MemorySize:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("template.yaml sets MemorySize")
}
