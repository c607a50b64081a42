//! Request accounting of the AWS path on the emulator, by kind of traffic, through the
//! real dispatcher and timer forwarder (DynamoDB store, SQS transport) driven by the
//! local poller in batches of 10:
//! - **direct**: chains of `bench/hop` messages, each hop sending one message to a new,
//!   distinct address;
//! - **keyed ingress**: messages with their own ids (as SQS ingress record ids or
//!   `Idempotency-Key`s are), all to one counter: its dedup hot set fills and spills;
//! - **delayed**: chains where each hop sends the next with `send_after`, through the
//!   delay queue and the timer forwarder.
//!
//! Prints AWS requests, read and write units per message for each, the table on AWS's
//! DynamoDB Local, the queues on moto. Requests are what they would be on AWS; units
//! are computed from the item sizes as AWS bills them (strongly consistent reads 1 per
//! 4 KB, writes 1 per KB, 2 per KB in a transaction: the emulators under-report); the
//! times only say how the emulators behave.
//!
//! `cargo bench -p statefun-e2e --bench aws_requests` (needs .venv/bin/moto_server)

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use statefun_aws::metrics::Snapshot;
use statefun_core::ports::{Clock, SystemClock};
use statefun_core::{Address, Registry, TypeName, TypedValue, ValueSpec};
use statefun_e2e::{Aws, Dynamo};

const HOP: TypeName = TypeName::from_static("bench/hop");
const LATER: TypeName = TypeName::from_static("bench/later");
const COUNTER: TypeName = TypeName::from_static("bench/counter");
const SEEN: ValueSpec<bool> = ValueSpec::new("seen");
const COUNT: ValueSpec<i64> = ValueSpec::new("count");
const CHAINS: u64 = 40;
const HOPS: i64 = 10;
const KEYED: usize = 1_000;
const SCALE: i64 = 10_000_000_000_000;

fn registry(latencies: Arc<Mutex<Vec<u64>>>) -> Registry {
    let mut r = Registry::new();
    for (t, delayed) in [(HOP, false), (LATER, true)] {
        let latencies = latencies.clone();
        r.register_fn(t, vec![SEEN.spec()], move |ctx, msg| {
            // value = remaining hops * 10^13 + the sender's clock in ms
            let v: i64 = msg.decode()?;
            let (remaining, sent_at) = (v / SCALE, (v % SCALE) as u64);
            let now = SystemClock.now_ms();
            if ctx.caller().is_some() {
                latencies
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(now.saturating_sub(sent_at));
            }
            ctx.set(&SEEN, &true)?;
            if remaining > 0 {
                let next = Address::new(
                    ctx.self_address().function_type.clone(),
                    format!("{}.{remaining}", ctx.self_address().id),
                );
                let value = (remaining - 1) * SCALE + now as i64;
                if delayed {
                    ctx.send_after(Duration::ZERO, next, &value);
                } else {
                    ctx.send(next, &value);
                }
            }
            Ok(())
        })
        .expect("register");
    }
    r.register_fn(COUNTER, vec![COUNT.spec()], |ctx, msg| {
        let n = ctx.get(&COUNT)?.unwrap_or(0) + msg.decode::<i64>()?;
        ctx.set(&COUNT, &n)
    })
    .expect("register");
    r
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Row {
    kind: &'static str,
    messages: usize,
    batches: usize,
    totals: Snapshot,
    latencies: Vec<u64>,
}

impl Row {
    /// USD per million messages: SQS (the handlers' requests, plus the event source's
    /// receive and delete per batch), DynamoDB reads, DynamoDB writes, Lambda requests.
    fn cost_per_million(&self) -> Vec<f64> {
        let m = self.messages as f64;
        let batches = self.batches.max(1) as f64;
        let sqs_requests = self
            .totals
            .requests
            .iter()
            .filter(|(api, _)| api.contains("Message"))
            .map(|(_, n)| *n as f64)
            .sum::<f64>()
            + 2.0 * batches;
        vec![
            1e6 * sqs_requests / m * SQS_PER_REQUEST,
            1e6 * self.totals.billed_read_units as f64 / m * DYNAMODB_PER_READ_UNIT,
            1e6 * self.totals.billed_write_units as f64 / m * DYNAMODB_PER_WRITE_UNIT,
            1e6 * batches / m * LAMBDA_PER_REQUEST,
        ]
    }

    fn print(&self) {
        let m = self.messages as f64;
        println!(
            "  {:<14} {:>6} msgs  mean batch {:>4.1}  requests/msg {:.3}  RCU/msg {:.2}  WCU/msg {:.2}  {:?}",
            self.kind,
            self.messages,
            m / self.batches.max(1) as f64,
            self.totals.total_requests() as f64 / m,
            self.totals.billed_read_units as f64 / m,
            self.totals.billed_write_units as f64 / m,
            self.totals.requests,
        );
        if !self.latencies.is_empty() {
            println!(
                "  {:<14} hop latency ms (emulator) p50 {} p99 {}",
                "",
                percentile(&self.latencies, 0.5),
                percentile(&self.latencies, 0.99)
            );
        }
    }
}

/// Chains of hops, direct or delayed.
async fn chains(kind: &'static str, t: TypeName) -> Row {
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut aws = Aws::start(Dynamo::DynamoDbLocal, registry(latencies.clone()), &[], &[]).await;
    let now = SystemClock.now_ms() as i64;
    for chain in 0..CHAINS {
        let value = TypedValue::of(&((HOPS - 1) * SCALE + now));
        aws.send(
            Address::new(t.clone(), format!("c{chain}")),
            value,
            &format!("start-{chain}"),
        )
        .await;
    }
    let total = (CHAINS * HOPS as u64) as usize;
    let mut batches = Vec::new();
    let mut idle_polls = 0;
    while batches.iter().sum::<usize>() < total && idle_polls < 100 {
        let n = aws.poll_inbox().await;
        aws.poll_delay().await;
        if n > 0 {
            batches.push(n);
            idle_polls = 0;
        } else {
            idle_polls += 1;
        }
    }
    let messages: usize = batches.iter().sum();
    assert_eq!(messages, total, "{kind}: every hop processed once");
    let mut totals = aws.handlers.dispatcher.totals();
    totals.add(&aws.handlers.forwarder.totals());
    let mut latencies = latencies.lock().unwrap_or_else(|e| e.into_inner()).clone();
    latencies.sort_unstable();
    Row {
        kind,
        messages,
        batches: batches.len(),
        totals,
        latencies,
    }
}

/// Keyed messages, all to one address.
async fn keyed() -> Row {
    let mut aws = Aws::start(Dynamo::DynamoDbLocal, registry(Arc::default()), &[], &[]).await;
    let hot = Address::new(COUNTER, "hot");
    let mut batches = Vec::new();
    for round in 0..KEYED / 100 {
        for i in 0..100 {
            let key = format!("sqs:{round:03}-{i:03}-0f6e4d2c-8a1b");
            aws.send(hot.clone(), TypedValue::of(&1i64), &key).await;
        }
        let (mut handled, mut idle_polls) = (0, 0);
        while handled < 100 && idle_polls < 100 {
            let n = aws.poll_inbox().await;
            if n > 0 {
                batches.push(n);
                idle_polls = 0;
            } else {
                idle_polls += 1;
            }
            handled += n;
        }
    }
    let state = aws.state(&hot).await;
    assert_eq!(state["state"]["count"]["value"], KEYED as i64, "{state}");
    Row {
        kind: "keyed ingress",
        messages: KEYED,
        batches: batches.len(),
        totals: aws.handlers.dispatcher.totals(),
        latencies: Vec::new(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let started = Instant::now();
    let rows = [
        chains("direct", HOP).await,
        keyed().await,
        chains("delayed", LATER).await,
    ];
    println!(
        "AWS path on the emulators, batches of 10 (dispatcher and timer forwarder requests; RCU/WCU as AWS bills them):"
    );
    for row in &rows {
        row.print();
    }
    println!(
        "  ({:.0} s on the emulator; {CHAINS} chains x {HOPS} hops, {KEYED} keyed messages to one address)",
        started.elapsed().as_secs_f64()
    );
    statefun_e2e::plot::bars(
        "aws_requests",
        "AWS path per message, by traffic kind",
        "cargo bench -p statefun-e2e --bench aws_requests",
        "per message",
        &["AWS requests", "read units", "write units"],
        &rows
            .iter()
            .map(|r| {
                let m = r.messages as f64;
                (
                    r.kind,
                    vec![
                        r.totals.total_requests() as f64 / m,
                        r.totals.billed_read_units as f64 / m,
                        r.totals.billed_write_units as f64 / m,
                    ],
                )
            })
            .collect::<Vec<_>>(),
    );
    println!("cost per million messages (AWS list prices, us-east-1, {PRICES_AS_OF}):");
    let costs: Vec<(&str, Vec<f64>)> = rows
        .iter()
        .map(|r| {
            let cost = r.cost_per_million();
            println!(
                "  {:<14} ${:.2} (SQS ${:.2}, DynamoDB reads ${:.2}, writes ${:.2}, Lambda requests ${:.2})",
                r.kind,
                cost.iter().sum::<f64>(),
                cost[0],
                cost[1],
                cost[2],
                cost[3]
            );
            (r.kind, cost)
        })
        .collect();
    statefun_e2e::plot::bars(
        "aws_cost",
        "USD per million messages by traffic kind, AWS list prices of 2024-11",
        "cargo bench -p statefun-e2e --bench aws_requests",
        "USD per million messages",
        &[
            "SQS",
            "DynamoDB reads",
            "DynamoDB writes",
            "Lambda requests",
        ],
        &costs,
    );
}

/// The prices the cost figures use: AWS's public list prices for us-east-1 as published
/// on these dates (SQS FIFO requests, also used for the standard delay queue as an upper
/// bound; DynamoDB on-demand after its 2024-11-01 price cut; Lambda requests). Lambda
/// duration is left out: it is not measured here.
const PRICES_AS_OF: &str = "SQS FIFO $0.50/M requests, DynamoDB on-demand $0.125/M reads, $0.625/M writes, Lambda $0.20/M requests; prices of 2024-11, read 2026-11-26";
const SQS_PER_REQUEST: f64 = 0.50e-6;
const DYNAMODB_PER_READ_UNIT: f64 = 0.125e-6;
const DYNAMODB_PER_WRITE_UNIT: f64 = 0.625e-6;
const LAMBDA_PER_REQUEST: f64 = 0.20e-6;
