//! In-process throughput of `example/counter` over 1, 1,000 and 1,000,000 distinct
//! addresses, on one thread, in batches of 1,000 messages:
//! - `core`: the batch processing a host runs (group by address, take the record,
//!   `process_address`, keep the new record), as the embedded engine does with its cache;
//! - `dispatch`: the full port pipeline over the in-memory twins (which clone records
//!   on load and commit, as a test double must).
//!
//! `cargo bench -p statefun-examples --bench in_process`

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use statefun_core::pipeline::{block_on, dispatch, group_by_address};
use statefun_core::ports::{MemoryStore, MemoryTransport};
use statefun_core::{
    Address, BatchConfig, Envelope, InstanceState, MessageId, Registry, TypedValue, process_address,
};
use statefun_examples::counter::{COUNT, COUNTER};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 1_000;
const TOTAL: u64 = 2_000_000;

/// Messages `first_seq..first_seq + total`, round robin over the addresses.
fn batches(addresses: u64, first_seq: u64, total: u64) -> (Vec<Address>, Vec<Vec<Envelope>>) {
    let one = TypedValue::of(&1i64);
    let source: Arc<str> = "ingress/bench".into();
    let ids: Vec<Address> = (0..addresses)
        .map(|i| Address::new(COUNTER, i.to_string()))
        .collect();
    let mut out = Vec::new();
    let mut seq = first_seq - 1;
    while seq < first_seq - 1 + total {
        out.push(
            (0..BATCH)
                .map(|_| {
                    seq += 1;
                    Envelope {
                        id: MessageId::Ordered {
                            source: source.clone(),
                            seq,
                            index: 0,
                        },
                        // Round robin: every address gets TOTAL / addresses messages.
                        target: ids[(seq % addresses) as usize].clone(),
                        caller: None,
                        value: one.clone(),
                    }
                })
                .collect(),
        );
    }
    (ids, out)
}

fn count(record: &InstanceState) -> u64 {
    record.cells[COUNT.name()]
        .value
        .decode::<i64>()
        .expect("long") as u64
}

fn core_round(
    registry: &Registry,
    records: &mut HashMap<Address, InstanceState>,
    batches: Vec<Vec<Envelope>>,
) {
    let config = BatchConfig::default();
    for batch in batches {
        for (address, messages) in group_by_address(batch) {
            let loaded = records.remove(&address);
            let outcome = process_address(registry, &address, loaded, messages, &0, &config);
            let commit = outcome.commit.expect("commit");
            records.insert(commit.address, commit.state);
        }
    }
}

/// Every address is created by a first, untimed pass; then TOTAL messages are timed.
fn core(registry: &Registry, addresses: u64) -> f64 {
    let mut records = HashMap::new();
    core_round(registry, &mut records, batches(addresses, 1, addresses).1);
    let (ids, timed) = batches(addresses, addresses + 1, TOTAL);
    let start = Instant::now();
    core_round(registry, &mut records, timed);
    let rate = TOTAL as f64 / start.elapsed().as_secs_f64();
    assert_eq!(
        count(&records[&ids[0]]),
        1 + TOTAL / addresses,
        "counted once each"
    );
    rate
}

fn ports_round(registry: &Registry, store: &MemoryStore, batches: Vec<Vec<Envelope>>) {
    let config = BatchConfig::default();
    let transport = MemoryTransport::new();
    for batch in batches {
        let report = block_on(dispatch(registry, store, &transport, &config, &0, batch));
        assert!(report.failed().next().is_none());
    }
}

fn ports(registry: &Registry, addresses: u64) -> f64 {
    let store = MemoryStore::new();
    ports_round(registry, &store, batches(addresses, 1, addresses).1);
    let (ids, timed) = batches(addresses, addresses + 1, TOTAL);
    let start = Instant::now();
    ports_round(registry, &store, timed);
    let rate = TOTAL as f64 / start.elapsed().as_secs_f64();
    assert_eq!(
        count(&store.get(&ids[0]).expect("state")),
        1 + TOTAL / addresses
    );
    rate
}

fn main() {
    let registry = statefun_examples::registry(Default::default()).expect("registry");
    println!(
        "example/counter, {TOTAL} messages in batches of {BATCH}, one thread, addresses created beforehand"
    );
    println!(
        "{:>10}  {:>14}  {:>14}",
        "addresses", "core msg/s", "dispatch msg/s"
    );
    let (mut cores, mut dispatches) = (Vec::new(), Vec::new());
    for addresses in [1, 100, 1_000, 100_000, 1_000_000] {
        let c = core(&registry, addresses);
        let p = ports(&registry, addresses);
        println!("{addresses:>10}  {c:>14.0}  {p:>14.0}");
        cores.push((addresses as f64, c / 1e6));
        dispatches.push((addresses as f64, p / 1e6));
    }
    statefun_e2e::plot::lines(
        "in_process",
        "In-process example/counter, one thread, batches of 1,000",
        "cargo bench -p statefun-examples --bench in_process",
        ("addresses", "million msg/s"),
        true,
        &[
            ("core processing", cores),
            ("through the in-memory ports", dispatches),
        ],
    );
}
