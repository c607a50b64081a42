//! Request accounting of the AWS path on the emulator: chains of `bench/hop` messages,
//! every hop sending one message to a new, distinct address, pushed through the real
//! dispatcher (DynamoDB store, SQS transport) by the local poller in batches of 10.
//! Prints AWS requests and write units per message, messages/s and hop latency.
//! Moto is not AWS: requests and units are what they would be on AWS; the times only
//! say how the emulator behaves.
//!
//! `cargo bench -p statefun-e2e --bench aws_requests` (needs .venv/bin/moto_server)

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use statefun_core::ports::{Clock, SystemClock};
use statefun_core::{Address, Registry, TypeName, TypedValue, ValueSpec};
use statefun_e2e::{Aws, Dynamo};

const HOP: TypeName = TypeName::from_static("bench/hop");
const SEEN: ValueSpec<bool> = ValueSpec::new("seen");
const CHAINS: u64 = 40;
const HOPS: i64 = 10;

fn registry(latencies: Arc<Mutex<Vec<u64>>>) -> Registry {
    let mut r = Registry::new();
    r.register_fn(HOP.as_str(), vec![SEEN.spec()], move |ctx, msg| {
        // value = remaining hops * 10^13 + the sender's clock in ms
        let v: i64 = msg.decode()?;
        let (remaining, sent_at) = (v / 10_000_000_000_000, (v % 10_000_000_000_000) as u64);
        let now = SystemClock.now_ms();
        if ctx.caller().is_some() {
            latencies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(now.saturating_sub(sent_at));
        }
        ctx.set(&SEEN, &true)?;
        if remaining > 0 {
            let next = Address::new(HOP, format!("{}.{remaining}", ctx.self_address().id));
            ctx.send(next, &((remaining - 1) * 10_000_000_000_000 + now as i64));
        }
        Ok(())
    })
    .expect("register");
    r
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut aws = Aws::start(Dynamo::Moto, registry(latencies.clone()), &[], &[]).await;
    let now = SystemClock.now_ms() as i64;
    for chain in 0..CHAINS {
        let value = TypedValue::of(&((HOPS - 1) * 10_000_000_000_000 + now));
        aws.send(
            Address::new(HOP, format!("c{chain}")),
            value,
            &format!("start-{chain}"),
        )
        .await;
    }
    let total = (CHAINS * HOPS as u64) as usize;
    let start = Instant::now();
    let mut batches = Vec::new();
    loop {
        let n = aws.poll_inbox().await;
        if n > 0 {
            batches.push(n);
        } else if latencies.lock().unwrap_or_else(|e| e.into_inner()).len() + CHAINS as usize
            >= total
        {
            break;
        } else {
            assert!(start.elapsed() < Duration::from_secs(300), "did not finish");
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let totals = aws.handlers.dispatcher.totals();
    let messages: usize = batches.iter().sum();
    assert_eq!(messages, total, "every hop processed once");
    let mut lat = latencies.lock().unwrap_or_else(|e| e.into_inner()).clone();
    lat.sort_unstable();
    println!(
        "AWS path on moto: {CHAINS} chains x {HOPS} hops, one outgoing message per input, distinct addresses"
    );
    println!(
        "  messages processed      {messages} in {} batches (mean batch {:.1})",
        batches.len(),
        messages as f64 / batches.len() as f64
    );
    println!(
        "  AWS requests / message  {:.3}  ({:?})",
        totals.total_requests() as f64 / messages as f64,
        totals.requests
    );
    println!(
        "  write units / message   {:.2}",
        totals.write_units / messages as f64
    );
    println!(
        "  conflicts, retries      {}, {}",
        totals.conflicts, totals.retries
    );
    println!("  messages/s (emulator)   {:.0}", messages as f64 / elapsed);
    println!(
        "  hop latency ms (emulator)  p50 {}  p99 {}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
}
