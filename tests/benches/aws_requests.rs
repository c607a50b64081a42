//! Request accounting of the AWS path on the emulators, by kind of traffic and batch
//! fill (1, 5 and 10 messages per batch), through the real dispatcher and timer
//! forwarder (DynamoDB store, SQS transport) driven by the local poller:
//! - **direct**: chains of `bench/hop` messages, each hop sending one message to a new,
//!   distinct address;
//! - **hot**: messages from one source to one counter, as many per batch as the fill;
//! - **keyed**: messages with their own ids (as SQS ingress record ids or
//!   `Idempotency-Key`s are), all to one counter: its dedup hot set fills and spills;
//! - **delayed**: chains where each hop sends the next with `send_after`, through the
//!   delay queue and the timer forwarder.
//!
//! Prints, per message, AWS requests, read and write units, SQS requests as billed and
//! the instance items' sizes; writes them to `bench/measured/aws.json`, which
//! `statefun-lambda cost` carries; and prices them with that calculator
//! ([`statefun_lambda::cost`]). The table is on AWS's DynamoDB Local, the queues on
//! moto. Requests are what they would be on AWS; units are computed from the item
//! sizes as AWS bills them (strongly consistent reads 1 per 4 KB, writes 1 per KB, 2
//! per KB in a transaction, failed conditions included: the emulators under-report);
//! the times only say how the emulators behave.
//!
//! `cargo bench -p statefun-e2e --bench aws_requests` (needs .venv/bin/moto_server)

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use statefun_aws::metrics::Snapshot;
use statefun_core::ports::{Clock, SystemClock};
use statefun_core::{Address, Envelope, MessageId, Registry, TypeName, TypedValue, ValueSpec};
use statefun_e2e::{Aws, Dynamo};
use statefun_lambda::cost::{Model, PRICES_AS_OF, PRODUCER_SHARE, PerMessage, Units};

const HOP: TypeName = TypeName::from_static("bench/hop");
const LATER: TypeName = TypeName::from_static("bench/later");
const COUNTER: TypeName = TypeName::from_static("bench/counter");
const SEEN: ValueSpec<bool> = ValueSpec::new("seen");
const COUNT: ValueSpec<i64> = ValueSpec::new("count");
const CHAINS: u64 = 40;
const HOPS: i64 = 10;
const HOT: usize = 300;
const KEYED: usize = 1_000;
const SCALE: i64 = 10_000_000_000_000;
const FILLS: [i32; 3] = [1, 5, 10];

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

fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Row {
    kind: &'static str,
    fill: i32,
    messages: usize,
    /// Batches the dispatcher ran (inbox) and the forwarder ran (delay queue).
    inbox_batches: usize,
    delay_batches: usize,
    /// Whether a producer outside sent the messages (in batches of 10): the kinds
    /// whose messages no function of the bench sends.
    external: bool,
    totals: Snapshot,
    latencies: Vec<u64>,
}

impl Row {
    /// Units and billed requests per message, with what AWS bills around the
    /// handlers: the event source's `ReceiveMessage` and `DeleteMessageBatch` per
    /// batch on each queue, a producer's share of a `SendMessageBatch`.
    fn per_message(&self) -> PerMessage {
        let m = self.messages as f64;
        let producer = if self.external {
            PRODUCER_SHARE * m
        } else {
            0.0
        };
        PerMessage {
            read_units: self.totals.billed_read_units as f64 / m,
            write_units: self.totals.billed_write_units as f64 / m,
            sqs_fifo_requests: (self.totals.sqs_fifo_billed as f64
                + 2.0 * self.inbox_batches as f64
                + producer)
                / m,
            sqs_standard_requests: (self.totals.sqs_standard_billed as f64
                + 2.0 * self.delay_batches as f64)
                / m,
            invocations: [
                ("dispatcher", self.inbox_batches),
                ("forwarder", self.delay_batches),
            ]
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(role, n)| (role.to_string(), n as f64 / m))
            .collect(),
        }
    }

    fn print(&self) {
        let m = self.messages as f64;
        let p = self.per_message();
        let mut sizes = self.totals.item_bytes.clone();
        sizes.sort_unstable();
        println!(
            "  {:<8} fill {:>2}: {:>5} msgs, mean batch {:>4.1}; requests/msg {:.3}; RCU/msg {:.2}, WCU/msg {:.2}; SQS billed/msg FIFO {:.2} standard {:.2}; items p50 {} B, p90 {} B, max {} B, {:.0} % under 1 KB; conflicts {}; {:?}",
            self.kind,
            self.fill,
            self.messages,
            m / self.inbox_batches.max(1) as f64,
            self.totals.total_requests() as f64 / m,
            p.read_units,
            p.write_units,
            p.sqs_fifo_requests,
            p.sqs_standard_requests,
            percentile(&sizes, 0.5),
            percentile(&sizes, 0.9),
            sizes[sizes.len() - 1],
            100.0 * sizes.iter().filter(|b| **b <= 1024).count() as f64 / sizes.len() as f64,
            self.totals.conflicts,
            self.totals.requests,
        );
        if !self.latencies.is_empty() {
            println!(
                "  {:<17} hop latency ms (emulator) p50 {} p99 {}",
                "",
                percentile(&self.latencies, 0.5),
                percentile(&self.latencies, 0.99)
            );
        }
    }
}

/// Polls the inbox (and the delay queue) until `total` messages were handled;
/// returns the batches of each.
async fn run(aws: &mut Aws, total: usize) -> (usize, usize) {
    let (mut handled, mut inbox, mut delay, mut idle_polls) = (0, 0, 0, 0);
    while handled < total && idle_polls < 100 {
        let n = aws.poll_inbox().await;
        let d = aws.poll_delay().await;
        if d > 0 {
            delay += 1;
        }
        if n > 0 {
            handled += n;
            inbox += 1;
            idle_polls = 0;
        } else if d == 0 {
            idle_polls += 1;
        }
    }
    assert_eq!(handled, total, "every message processed once");
    (inbox, delay)
}

/// Chains of hops, direct or delayed.
async fn chains(kind: &'static str, t: TypeName, fill: i32) -> Row {
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut aws = Aws::start(Dynamo::DynamoDbLocal, registry(latencies.clone()), &[], &[]).await;
    aws.set_batch_size(fill);
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
    let messages = (CHAINS * HOPS as u64) as usize;
    let (inbox_batches, delay_batches) = run(&mut aws, messages).await;
    let mut totals = aws.handlers.dispatcher.totals();
    totals.add(&aws.handlers.forwarder.totals());
    let mut latencies = latencies.lock().unwrap_or_else(|e| e.into_inner()).clone();
    latencies.sort_unstable();
    Row {
        kind,
        fill,
        messages,
        inbox_batches,
        delay_batches,
        external: false,
        totals,
        latencies,
    }
}

/// Messages to one counter, from one source in order (`hot`) or each with an id of
/// its own (`keyed`), sent 100 at a time.
async fn one_address(kind: &'static str, messages: usize, fill: i32) -> Row {
    let mut aws = Aws::start(Dynamo::DynamoDbLocal, registry(Arc::default()), &[], &[]).await;
    aws.set_batch_size(fill);
    let hot = Address::new(COUNTER, kind);
    let (mut inbox_batches, mut delay_batches) = (0, 0);
    for round in 0..messages / 100 {
        for i in 0..100 {
            let id = if kind == "keyed" {
                MessageId::Keyed(format!("sqs:{round:03}-{i:03}-0f6e4d2c-8a1b"))
            } else {
                MessageId::Ordered {
                    source: "bench/producer/p".into(),
                    seq: (round * 100 + i) as u64 + 1,
                    index: 0,
                }
            };
            let envelope = Envelope {
                id,
                target: hot.clone(),
                caller: None,
                value: TypedValue::of(&1i64),
            };
            statefun_infra::local::send(&aws.clients, &aws.config, &envelope)
                .await
                .expect("send");
        }
        let (i, d) = run(&mut aws, 100).await;
        (inbox_batches, delay_batches) = (inbox_batches + i, delay_batches + d);
    }
    let state = aws.state(&hot).await;
    assert_eq!(state["state"]["count"]["value"], messages as i64, "{state}");
    Row {
        kind,
        fill,
        messages,
        inbox_batches,
        delay_batches,
        external: true,
        totals: aws.handlers.dispatcher.totals(),
        latencies: Vec::new(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let started = Instant::now();
    let mut rows = Vec::new();
    for fill in FILLS {
        rows.push(chains("direct", HOP, fill).await);
        rows.push(one_address("hot", HOT, fill).await);
        rows.push(one_address("keyed", KEYED, fill).await);
        rows.push(chains("delayed", LATER, fill).await);
    }
    println!(
        "AWS path on the emulators by batch fill (dispatcher and timer forwarder; RCU/WCU as AWS bills them):"
    );
    for row in &rows {
        row.print();
    }
    println!(
        "  ({:.0} s on the emulators; {CHAINS} chains x {HOPS} hops, {HOT} messages to one address from one source, {KEYED} keyed messages to one address)",
        started.elapsed().as_secs_f64()
    );

    let mut kinds: BTreeMap<String, BTreeMap<u32, PerMessage>> = BTreeMap::new();
    for row in &rows {
        kinds
            .entry(row.kind.to_string())
            .or_default()
            .insert(row.fill as u32, row.per_message());
    }
    let units = Units {
        measured: statefun_e2e::plot::today(),
        command: "cargo bench -p statefun-e2e --bench aws_requests".into(),
        notes: vec![
            "table on DynamoDB Local, queues on moto; units as AWS bills them from item sizes"
                .into(),
            format!(
                "payloads under 100 bytes; hot and keyed count a producer's share of a SendMessageBatch of 10 ({PRODUCER_SHARE} requests per message)"
            ),
        ],
        kinds,
    };
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/measured/aws.json");
    std::fs::write(
        path,
        serde_json::to_string_pretty(&units).expect("units serialize") + "\n",
    )
    .expect("write bench/measured/aws.json");
    println!("wrote {path}");

    let model = Model {
        units,
        ..Model::measured()
    };
    let at_ten: Vec<&Row> = rows.iter().filter(|r| r.fill == 10).collect();
    statefun_e2e::plot::bars(
        "aws_requests",
        "AWS path per message at 10 messages per batch, by traffic kind",
        "cargo bench -p statefun-e2e --bench aws_requests",
        "per message",
        &["AWS requests", "read units", "write units"],
        &at_ten
            .iter()
            .map(|r| {
                let m = r.messages as f64;
                let p = r.per_message();
                (
                    r.kind,
                    vec![
                        r.totals.total_requests() as f64 / m,
                        p.read_units,
                        p.write_units,
                    ],
                )
            })
            .collect::<Vec<_>>(),
    );
    println!("USD per million messages ({PRICES_AS_OF}):");
    let mut costs: Vec<(&str, Vec<f64>)> = Vec::new();
    let mut by_fill: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for row in &rows {
        let usd = model.price(&row.per_message(), 0.0);
        let parts = usd.parts().map(|(_, d)| d * 1e6);
        let total: f64 = parts.iter().sum();
        println!(
            "  {:<8} fill {:>2}: ${total:.3} ({})",
            row.kind,
            row.fill,
            usd.parts()
                .iter()
                .map(|(name, d)| format!("{name} ${:.3}", d * 1e6))
                .collect::<Vec<_>>()
                .join(", ")
        );
        by_fill.entry(row.kind).or_default().push(total);
        if row.fill == 10 {
            costs.push((
                row.kind,
                parts[..5].iter().copied().chain([parts[6]]).collect(),
            ));
        }
    }
    let per_million = |kind: &str| by_fill[kind][2];
    let one_read = model.prices.dynamodb_read_unit * 1e6;
    for (target, usd, limit) in [
        ("direct, 10 per batch", per_million("direct"), 0.95),
        ("hot address, 10 per batch", per_million("hot"), 0.30),
        ("delayed, 10 per batch", per_million("delayed"), 1.10),
        (
            "keyed, at most direct plus one read",
            per_million("keyed"),
            per_million("direct") + one_read,
        ),
    ] {
        println!(
            "  target {target}: ${usd:.3} per million, limit ${limit:.3}: {}",
            if usd <= limit { "met" } else { "MISSED" }
        );
    }
    statefun_e2e::plot::bars(
        "aws_cost",
        "USD per million messages at 10 per batch, by traffic kind (list prices of 2024-11)",
        "cargo bench -p statefun-e2e --bench aws_requests",
        "USD per million messages",
        &[
            "SQS",
            "DynamoDB reads",
            "DynamoDB writes",
            "Lambda requests",
            "Lambda duration",
            "CloudWatch Logs",
        ],
        &costs,
    );
    statefun_e2e::plot::bars(
        "aws_cost_by_fill",
        "USD per million messages by messages per batch",
        "cargo bench -p statefun-e2e --bench aws_requests",
        "USD per million messages",
        &["1 per batch", "5 per batch", "10 per batch"],
        &by_fill
            .iter()
            .map(|(kind, usd)| (*kind, usd.clone()))
            .collect::<Vec<_>>(),
    );
}
