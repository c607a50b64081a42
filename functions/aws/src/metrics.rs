//! Request accounting: AWS requests by API, consumed capacity and bytes, per batch, as
//! one CloudWatch embedded-metric-format (EMF) JSON line.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{Value as Json, json};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub requests: BTreeMap<&'static str, u64>,
    /// Capacity as DynamoDB reports it (`ReturnConsumedCapacity`).
    pub read_units: f64,
    pub write_units: f64,
    /// Capacity as AWS bills it, computed from the item sizes (emulators under-report:
    /// strongly consistent reads at 1 unit per 4 KB, a missing item 1; writes 1 per KB,
    /// in a transaction 2 per KB).
    pub billed_read_units: u64,
    pub billed_write_units: u64,
    pub bytes_sent: u64,
    pub conflicts: u64,
    pub retries: u64,
    /// Records moved to the dead-letter queue.
    pub dead_lettered: u64,
    /// Delayed messages dropped by the timer forwarder because they were cancelled.
    pub timers_cancelled: u64,
}

impl Snapshot {
    pub fn total_requests(&self) -> u64 {
        self.requests.values().sum()
    }

    pub fn add(&mut self, other: &Snapshot) {
        for (api, n) in &other.requests {
            *self.requests.entry(api).or_default() += n;
        }
        self.read_units += other.read_units;
        self.write_units += other.write_units;
        self.billed_read_units += other.billed_read_units;
        self.billed_write_units += other.billed_write_units;
        self.bytes_sent += other.bytes_sent;
        self.conflicts += other.conflicts;
        self.retries += other.retries;
        self.dead_lettered += other.dead_lettered;
        self.timers_cancelled += other.timers_cancelled;
    }

    /// One EMF line: CloudWatch turns it into metrics in namespace `statefun-lambda`.
    pub fn emf(&self, function: &str, messages: usize, timestamp_ms: u64) -> Json {
        let mut line = json!({
            "_aws": {
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": "statefun-lambda",
                    "Dimensions": [["Function"]],
                    "Metrics": [
                        {"Name": "Messages", "Unit": "Count"},
                        {"Name": "Requests", "Unit": "Count"},
                        {"Name": "ReadUnits", "Unit": "Count"},
                        {"Name": "WriteUnits", "Unit": "Count"},
                        {"Name": "BytesSent", "Unit": "Bytes"},
                        {"Name": "Conflicts", "Unit": "Count"},
                        {"Name": "Retries", "Unit": "Count"},
                        {"Name": "DeadLettered", "Unit": "Count"},
                        {"Name": "TimersCancelled", "Unit": "Count"},
                    ],
                }],
            },
            "Function": function,
            "Messages": messages,
            "Requests": self.total_requests(),
            "ReadUnits": self.read_units,
            "WriteUnits": self.write_units,
            "BytesSent": self.bytes_sent,
            "Conflicts": self.conflicts,
            "Retries": self.retries,
            "DeadLettered": self.dead_lettered,
            "TimersCancelled": self.timers_cancelled,
        });
        for (api, n) in &self.requests {
            line[format!("Requests.{api}")] = json!(n);
        }
        line
    }
}

/// Counters shared by the adapters of one handler: the current batch's, and the
/// totals since start.
#[derive(Debug, Default)]
pub struct Metrics(Mutex<(Snapshot, Snapshot)>);

impl Metrics {
    fn with(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()).0);
    }

    pub fn request(&self, api: &'static str) {
        self.with(|s| *s.requests.entry(api).or_default() += 1);
    }

    pub fn capacity(&self, read: f64, write: f64) {
        self.with(|s| {
            s.read_units += read;
            s.write_units += write;
        });
    }

    /// Capacity as AWS bills it (see [`Snapshot::billed_read_units`]).
    pub fn billed(&self, read: u64, write: u64) {
        self.with(|s| {
            s.billed_read_units += read;
            s.billed_write_units += write;
        });
    }

    pub fn bytes(&self, n: usize) {
        self.with(|s| s.bytes_sent += n as u64);
    }

    pub fn conflict(&self) {
        self.with(|s| s.conflicts += 1);
    }

    pub fn retry(&self) {
        self.with(|s| s.retries += 1);
    }

    pub fn dead_lettered(&self) {
        self.with(|s| s.dead_lettered += 1);
    }

    pub fn timers_cancelled(&self, n: usize) {
        self.with(|s| s.timers_cancelled += n as u64);
    }

    /// Returns the counts so far and starts again from zero (adding them to the totals).
    pub fn take(&self) -> Snapshot {
        let mut both = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let batch = std::mem::take(&mut both.0);
        both.1.add(&batch);
        batch
    }

    /// Everything taken since start (for benchmarks).
    pub fn totals(&self) -> Snapshot {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).1.clone()
    }
}
