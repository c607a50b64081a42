//! Request accounting: AWS requests by API, consumed capacity and bytes, per batch, as
//! one CloudWatch embedded-metric-format (EMF) JSON line.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{Value as Json, json};

/// SQS bills each 64 KB chunk of a request's payload as one request.
pub const SQS_CHUNK_BYTES: usize = 64 * 1024;

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
    /// SQS requests as AWS bills them, by queue kind: each 64 KB of a request's
    /// payload is one request (FIFO and standard queues have different prices).
    pub sqs_fifo_billed: u64,
    pub sqs_standard_billed: u64,
    /// The size of every instance item written, as DynamoDB counts it (bytes).
    pub item_bytes: Vec<u32>,
    pub conflicts: u64,
    pub retries: u64,
    /// Records moved to the dead-letter queue.
    pub dead_lettered: u64,
    /// Delayed messages dropped by the timer forwarder because they were cancelled.
    pub timers_cancelled: u64,
    /// The longest a handled record waited, from its enqueue (SQS `SentTimestamp`) to
    /// the end of its batch (its commit and sends), in ms.
    pub max_lag_ms: u64,
    /// Remote function calls, each one's latency in ms (retries included).
    pub remote_call_ms: Vec<f64>,
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
        self.sqs_fifo_billed += other.sqs_fifo_billed;
        self.sqs_standard_billed += other.sqs_standard_billed;
        self.item_bytes.extend(&other.item_bytes);
        self.conflicts += other.conflicts;
        self.retries += other.retries;
        self.dead_lettered += other.dead_lettered;
        self.timers_cancelled += other.timers_cancelled;
        self.max_lag_ms = self.max_lag_ms.max(other.max_lag_ms);
        self.remote_call_ms.extend(&other.remote_call_ms);
    }

    /// One EMF line: CloudWatch turns it into metrics in namespace `statefun-lambda`.
    /// A metric that is zero in this batch is left out of the line (but `Messages` and
    /// `Requests`): a line's bytes are billed as log ingestion, and a metric only for
    /// the hours it has data, so the rare ones (conflicts, retries, dead letters,
    /// cancelled timers) cost nothing while nothing happens.
    pub fn emf(&self, function: &str, messages: usize, timestamp_ms: u64) -> Json {
        let values = [
            ("Messages", "Count", json!(messages)),
            ("Requests", "Count", json!(self.total_requests())),
            ("ReadUnits", "Count", json!(self.read_units)),
            ("WriteUnits", "Count", json!(self.write_units)),
            ("BytesSent", "Bytes", json!(self.bytes_sent)),
            ("Conflicts", "Count", json!(self.conflicts)),
            ("Retries", "Count", json!(self.retries)),
            ("DeadLettered", "Count", json!(self.dead_lettered)),
            ("TimersCancelled", "Count", json!(self.timers_cancelled)),
            ("MaxLag", "Milliseconds", json!(self.max_lag_ms)),
        ];
        let mut line = json!({
            "_aws": {
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": "statefun-lambda",
                    "Dimensions": [["Function"]],
                    "Metrics": [],
                }],
            },
            "Function": function,
        });
        let always = ["Messages", "Requests"];
        let said = |(name, _, value): &(&str, &str, Json)| {
            always.contains(name) || value.as_f64().is_some_and(|v| v != 0.0)
        };
        for (name, unit, value) in values.into_iter().filter(said) {
            line["_aws"]["CloudWatchMetrics"][0]["Metrics"]
                .as_array_mut()
                .expect("declared above")
                .push(json!({"Name": name, "Unit": unit}));
            line[name] = value;
        }
        if !self.remote_call_ms.is_empty() {
            // A metric must have a value where it is declared; EMF takes up to 100 values
            // of one metric in a line (CloudWatch computes their statistics).
            line["_aws"]["CloudWatchMetrics"][0]["Metrics"]
                .as_array_mut()
                .expect("declared above")
                .push(json!({"Name": "RemoteCallLatency", "Unit": "Milliseconds"}));
            line["RemoteCallLatency"] =
                json!(self.remote_call_ms.iter().take(100).collect::<Vec<_>>());
        }
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

    /// An SQS request carrying `payload_bytes` to a FIFO or a standard queue: billed
    /// as one request per 64 KB (at least one).
    pub fn sqs_billed(&self, fifo: bool, payload_bytes: usize) {
        let units = payload_bytes.div_ceil(SQS_CHUNK_BYTES).max(1) as u64;
        self.with(|s| {
            if fifo {
                s.sqs_fifo_billed += units;
            } else {
                s.sqs_standard_billed += units;
            }
        });
    }

    /// An instance item written (its size as DynamoDB counts it).
    pub fn item(&self, bytes: usize) {
        self.with(|s| s.item_bytes.push(u32::try_from(bytes).unwrap_or(u32::MAX)));
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

    pub fn lag(&self, ms: u64) {
        self.with(|s| s.max_lag_ms = s.max_lag_ms.max(ms));
    }

    /// A batch's `MaxLag`: how long its oldest handled record waited, from `since_ms`
    /// (by record id) to `now_ms`. Failed records are left out: they come again and
    /// count then.
    pub fn lag_of(&self, since_ms: &[(String, u64)], failed: &[String], now_ms: u64) {
        let failed: std::collections::HashSet<&str> = failed.iter().map(String::as_str).collect();
        if let Some(oldest) = since_ms
            .iter()
            .filter(|(id, _)| !failed.contains(id.as_str()))
            .map(|(_, at)| *at)
            .min()
        {
            self.lag(now_ms.saturating_sub(oldest));
        }
    }

    pub fn remote_call(&self, took: std::time::Duration) {
        self.with(|s| s.remote_call_ms.push(took.as_secs_f64() * 1000.0));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(line: &Json) -> Vec<String> {
        line["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["Name"].as_str().map(str::to_string))
            .collect()
    }

    #[test]
    fn every_declared_metric_has_its_value_and_remote_latency_only_when_called() {
        let metrics = Metrics::default();
        metrics.lag(40);
        metrics.lag(25);
        metrics.dead_lettered();
        let quiet = metrics.take().emf("dispatcher", 3, 0);
        assert_eq!(quiet["MaxLag"], 40, "the longest wait of the batch");
        assert_eq!(quiet["DeadLettered"], 1);
        assert!(!declared(&quiet).contains(&"RemoteCallLatency".to_string()));
        assert!(
            !declared(&quiet).contains(&"Conflicts".to_string()) && quiet["Conflicts"].is_null(),
            "a metric that is zero is left out: {quiet}"
        );
        for name in declared(&quiet) {
            assert!(!quiet[&name].is_null(), "{name} declared without a value");
        }

        for ms in [5, 7] {
            metrics.remote_call(std::time::Duration::from_millis(ms));
        }
        let called = metrics.take().emf("dispatcher", 1, 0);
        assert_eq!(called["RemoteCallLatency"], json!([5.0, 7.0]));
        assert!(called["MaxLag"].is_null(), "a new batch starts from zero");
        assert_eq!(called["Messages"], 1, "always there");
        assert_eq!(called["Requests"], 0, "always there");
        assert!(declared(&called).contains(&"RemoteCallLatency".to_string()));
        assert_eq!(metrics.totals().max_lag_ms, 40);
    }

    #[test]
    fn a_batch_lag_is_its_oldest_handled_record_failed_ones_left_out() {
        let metrics = Metrics::default();
        let since = [
            ("a".to_string(), 1_000),
            ("b".to_string(), 400),
            ("c".to_string(), 900),
        ];
        metrics.lag_of(&since, &["b".to_string()], 1_500);
        assert_eq!(
            metrics.take().max_lag_ms,
            600,
            "a's wait; b failed and comes again"
        );
        metrics.lag_of(&since, &[], 300);
        assert_eq!(
            metrics.take().max_lag_ms,
            0,
            "a clock behind the enqueue is no lag"
        );
    }
}
