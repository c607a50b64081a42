//! The bill of a deployment of the template, before it is deployed: dollars per million
//! messages and per month for a traffic mix, from what the benchmarks measured (units
//! and requests per message, Lambda duration and log bytes per invocation) and AWS's
//! list prices. `statefun-lambda cost` prints it; `cargo bench -p statefun-e2e --bench
//! aws_requests` draws its figure from the same arithmetic.
//!
//! What it counts, per message of each kind: DynamoDB read and write units as AWS bills
//! them (from item sizes; failed conditional writes included), SQS requests by 64 KB
//! chunk on every queue the message crosses (FIFO and standard priced apart; the event
//! source's `ReceiveMessage` and `DeleteMessageBatch` per batch included), Lambda
//! requests and duration per invocation at the template's memory on arm64, API Gateway
//! HTTP API requests for HTTP ingress, CloudWatch Logs ingestion of each invocation's
//! lines (Lambda's own START/END/REPORT and the EMF metrics line). Per month on top:
//! the event sources' idle long polls and the EMF lines' custom metrics.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Prices per unit, in USD.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prices {
    pub sqs_fifo_request: f64,
    pub sqs_standard_request: f64,
    pub dynamodb_read_unit: f64,
    pub dynamodb_write_unit: f64,
    pub lambda_request: f64,
    pub lambda_arm64_gb_second: f64,
    pub http_api_request: f64,
    pub logs_ingested_gib: f64,
    pub custom_metric_month: f64,
    pub alarm_month: f64,
    pub dashboard_month: f64,
}

/// AWS's list prices for us-east-1 (see [`PRICES_AS_OF`]).
pub const PRICES: Prices = Prices {
    sqs_fifo_request: 0.50e-6,
    sqs_standard_request: 0.40e-6,
    dynamodb_read_unit: 0.125e-6,
    dynamodb_write_unit: 0.625e-6,
    lambda_request: 0.20e-6,
    lambda_arm64_gb_second: 0.000_013_333_4,
    http_api_request: 1.00e-6,
    logs_ingested_gib: 0.50,
    custom_metric_month: 0.30,
    alarm_month: 0.10,
    dashboard_month: 3.00,
};

/// Where [`PRICES`] come from.
pub const PRICES_AS_OF: &str = "AWS list prices for us-east-1 as published in 2024-11 (DynamoDB on-demand after its 2024-11-01 cut): SQS $0.50 (FIFO) / $0.40 (standard) per million requests of 64 KB, DynamoDB $0.125 per million read and $0.625 per million write request units, Lambda $0.20 per million requests and $0.0000133334 per GB-second on arm64, API Gateway HTTP API $1.00 per million requests, CloudWatch Logs $0.50 per GB ingested, $0.30 per custom metric-month, $0.10 per standard alarm-month, $3.00 per dashboard-month (past an account's first 3); written down 2026-12-08 (AWS's price pages are not reachable from where this was built: check them); free tiers left out";

/// Seconds in the month the monthly figures use (30 days).
pub const MONTH_SECONDS: f64 = 30.0 * 24.0 * 3600.0;

/// A delayed message waits at most this long in the delay queue per hop (SQS's
/// `DelaySeconds` maximum); a longer delay crosses it again.
pub const DELAY_HOP_SECONDS: f64 = 900.0;

/// What one message of a kind costs in units and requests, at one batch fill.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PerMessage {
    pub read_units: f64,
    pub write_units: f64,
    /// Billed requests (64 KB chunks) on FIFO queues: sends and the event source's
    /// receive and delete.
    pub sqs_fifo_requests: f64,
    /// The same on standard queues (the delay queue).
    pub sqs_standard_requests: f64,
    /// Lambda invocations per message, by role.
    pub invocations: BTreeMap<String, f64>,
}

impl PerMessage {
    fn scaled_sum(pairs: &[(&PerMessage, f64)]) -> PerMessage {
        let mut out = PerMessage::default();
        for (p, w) in pairs {
            out.read_units += p.read_units * w;
            out.write_units += p.write_units * w;
            out.sqs_fifo_requests += p.sqs_fifo_requests * w;
            out.sqs_standard_requests += p.sqs_standard_requests * w;
            for (role, n) in &p.invocations {
                *out.invocations.entry(role.clone()).or_default() += n * w;
            }
        }
        out
    }
}

/// The AWS path's units per message by traffic kind and batch fill, as
/// `cargo bench -p statefun-e2e --bench aws_requests` measured them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Units {
    pub measured: String,
    pub command: String,
    pub notes: Vec<String>,
    /// kind → batch fill → per message.
    pub kinds: BTreeMap<String, BTreeMap<u32, PerMessage>>,
}

/// One Lambda role's invocation, as the deployed stack's logs show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invocation {
    /// Mean `Billed Duration` of its REPORT lines, in ms.
    pub billed_ms: f64,
    /// Mean bytes its log stream takes per invocation (every line, plus CloudWatch's
    /// 26 bytes of each event).
    pub log_bytes: f64,
    /// Mean messages handled per invocation.
    pub messages: f64,
}

/// Lambda duration and logs per invocation, as
/// `cargo bench -p statefun-examples --features aws --bench deployed` measured them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lambda {
    pub measured: String,
    pub command: String,
    pub notes: Vec<String>,
    /// The template's `MemorySize`.
    pub memory_mb: f64,
    pub roles: BTreeMap<String, Invocation>,
    /// The most metrics a role's EMF line declared on the deployed stack (CloudWatch
    /// bills each a month; see [`EMF_METRICS_PER_ROLE`]).
    pub emf_metrics: u32,
}

/// The measurements this build carries (`bench/measured/`).
pub fn measured() -> (Units, Lambda) {
    let units = serde_json::from_str(include_str!("../../../bench/measured/aws.json"))
        .expect("bench/measured/aws.json is the aws_requests bench's output");
    let lambda = serde_json::from_str(include_str!("../../../bench/measured/lambda.json"))
        .expect("bench/measured/lambda.json is the deployed bench's output");
    (units, lambda)
}

/// A traffic mix: messages per second by kind, and how full batches are.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix {
    /// A function's message to another address.
    pub direct: f64,
    /// Messages to one busy address (many per batch), sent in batches of 10.
    pub hot: f64,
    /// Ingress records with ids of their own (SQS ingress, `Idempotency-Key`), to an
    /// address that has moved ids out of its record.
    pub keyed: f64,
    /// `send_after` messages.
    pub delayed: f64,
    /// HTTP requests through API Gateway and the http-ingress Lambda (each one keyed
    /// message).
    pub http: f64,
    /// Messages per batch, 1 to 10 (FIFO event sources have no batching window: a
    /// quiet queue gives batches of 1).
    pub fill: f64,
    /// How long delayed messages wait (each 900 s is one more delay-queue hop).
    pub delay_seconds: f64,
    /// Whether the template's `Monitoring` (dashboard and alarms) is deployed.
    pub monitoring: bool,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            direct: 0.0,
            hot: 0.0,
            keyed: 0.0,
            delayed: 0.0,
            http: 0.0,
            fill: 10.0,
            delay_seconds: 60.0,
            monitoring: true,
        }
    }
}

/// One line of a bill: USD per million messages of its kind, and per month.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub what: String,
    pub per_second: f64,
    pub per_million: Breakdown,
    pub per_month: f64,
}

/// USD by service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Breakdown {
    pub sqs: f64,
    pub dynamodb_reads: f64,
    pub dynamodb_writes: f64,
    pub lambda_requests: f64,
    pub lambda_duration: f64,
    pub api_gateway: f64,
    pub logs: f64,
}

impl Breakdown {
    pub fn total(&self) -> f64 {
        self.sqs
            + self.dynamodb_reads
            + self.dynamodb_writes
            + self.lambda_requests
            + self.lambda_duration
            + self.api_gateway
            + self.logs
    }

    /// The parts in a fixed order, with their names (for tables and figures).
    pub fn parts(&self) -> [(&'static str, f64); 7] {
        [
            ("SQS", self.sqs),
            ("DynamoDB reads", self.dynamodb_reads),
            ("DynamoDB writes", self.dynamodb_writes),
            ("Lambda requests", self.lambda_requests),
            ("Lambda duration", self.lambda_duration),
            ("API Gateway", self.api_gateway),
            ("CloudWatch Logs", self.logs),
        ]
    }
}

/// The whole bill of a mix.
#[derive(Debug, Clone, PartialEq)]
pub struct Bill {
    pub lines: Vec<Line>,
    /// Monthly costs that do not depend on traffic, with what they are.
    pub fixed: Vec<(String, f64)>,
}

impl Bill {
    pub fn per_month(&self) -> f64 {
        self.lines.iter().map(|l| l.per_month).sum::<f64>()
            + self.fixed.iter().map(|(_, usd)| usd).sum::<f64>()
    }
}

/// The calculator: measurements and prices.
#[derive(Debug, Clone)]
pub struct Model {
    pub units: Units,
    pub lambda: Lambda,
    pub prices: Prices,
}

impl Model {
    /// The measurements this build carries, at [`PRICES`].
    pub fn measured() -> Self {
        let (units, lambda) = measured();
        Model {
            units,
            lambda,
            prices: PRICES,
        }
    }

    /// A kind's units per message at `fill` messages per batch: measured where the
    /// bench measured that fill, else between the two nearest fills, linear in
    /// 1/fill (per-batch costs spread over the batch, per-message costs do not).
    pub fn per_message(&self, kind: &str, fill: f64) -> Option<PerMessage> {
        let fills = self.units.kinds.get(kind)?;
        let fill = fill.clamp(1.0, 10.0);
        let below = fills.range(..=fill.floor() as u32).next_back();
        let above = fills.range(fill.ceil() as u32..).next();
        match (below, above) {
            (Some((&lo, a)), Some((&hi, b))) if lo != hi => {
                let t = (1.0 / lo as f64 - 1.0 / fill) / (1.0 / lo as f64 - 1.0 / hi as f64);
                Some(PerMessage::scaled_sum(&[(a, 1.0 - t), (b, t)]))
            }
            (Some((_, p)), _) | (None, Some((_, p))) => Some(p.clone()),
            (None, None) => None,
        }
    }

    /// USD per message of what `p` counts, plus API Gateway requests.
    pub fn price(&self, p: &PerMessage, api_requests: f64) -> Breakdown {
        let prices = &self.prices;
        let gb = self.lambda.memory_mb / 1024.0;
        let (mut duration, mut logs) = (0.0, 0.0);
        for (role, n) in &p.invocations {
            if let Some(inv) = self.lambda.roles.get(role) {
                duration += n * inv.billed_ms / 1000.0 * gb * prices.lambda_arm64_gb_second;
                logs += n * inv.log_bytes / f64::from(1u32 << 30) * prices.logs_ingested_gib;
            }
        }
        Breakdown {
            sqs: p.sqs_fifo_requests * prices.sqs_fifo_request
                + p.sqs_standard_requests * prices.sqs_standard_request,
            dynamodb_reads: p.read_units * prices.dynamodb_read_unit,
            dynamodb_writes: p.write_units * prices.dynamodb_write_unit,
            lambda_requests: p.invocations.values().sum::<f64>() * prices.lambda_request,
            lambda_duration: duration,
            api_gateway: api_requests * prices.http_api_request,
            logs,
        }
    }

    /// One delayed message's units, its delay included: every 900 s past the first
    /// is one more pass through the delay queue and the timer forwarder.
    fn delayed(&self, fill: f64, delay_seconds: f64) -> Option<PerMessage> {
        let one = self.per_message("delayed", fill)?;
        let extra = (delay_seconds / DELAY_HOP_SECONDS).ceil().max(1.0) - 1.0;
        let hop = PerMessage {
            sqs_standard_requests: one.sqs_standard_requests,
            invocations: one
                .invocations
                .iter()
                .filter(|(role, _)| role.as_str() == "forwarder")
                .map(|(r, n)| (r.clone(), *n))
                .collect(),
            ..PerMessage::default()
        };
        Some(PerMessage::scaled_sum(&[(&one, 1.0), (&hop, extra)]))
    }

    /// An HTTP request: API Gateway, the http-ingress Lambda and its one-message
    /// `SendMessageBatch`, then a keyed message (whose producer share it replaces).
    fn http(&self, fill: f64) -> Option<PerMessage> {
        let keyed = self.per_message("keyed", fill)?;
        let mut p = PerMessage::scaled_sum(&[(&keyed, 1.0)]);
        p.sqs_fifo_requests += 1.0 - PRODUCER_SHARE;
        *p.invocations.entry("http-ingress".into()).or_default() += 1.0;
        Some(p)
    }

    /// The bill of `mix`.
    pub fn bill(&self, mix: &Mix) -> Bill {
        let mut lines = Vec::new();
        let mut push = |what: &str, per_second: f64, p: Option<PerMessage>, api: f64| {
            if per_second <= 0.0 {
                return;
            }
            let Some(p) = p else { return };
            let usd = self.price(&p, api);
            let per_month = usd.total() * per_second * MONTH_SECONDS;
            let per_million = Breakdown {
                sqs: usd.sqs * 1e6,
                dynamodb_reads: usd.dynamodb_reads * 1e6,
                dynamodb_writes: usd.dynamodb_writes * 1e6,
                lambda_requests: usd.lambda_requests * 1e6,
                lambda_duration: usd.lambda_duration * 1e6,
                api_gateway: usd.api_gateway * 1e6,
                logs: usd.logs * 1e6,
            };
            lines.push(Line {
                what: what.to_string(),
                per_second,
                per_million,
                per_month,
            });
        };
        push(
            "direct",
            mix.direct,
            self.per_message("direct", mix.fill),
            0.0,
        );
        push(
            "hot address",
            mix.hot,
            self.per_message("hot", mix.fill),
            0.0,
        );
        push("keyed", mix.keyed, self.per_message("keyed", mix.fill), 0.0);
        push(
            "delayed",
            mix.delayed,
            self.delayed(mix.fill, mix.delay_seconds),
            0.0,
        );
        push("HTTP", mix.http, self.http(mix.fill), 1.0);
        Bill {
            lines,
            fixed: self.fixed(mix),
        }
    }

    /// What a deployment pays each month whatever its traffic: Lambda's pollers
    /// long-poll each queue with an event source (at least 5 pollers, a 20 s
    /// `ReceiveMessage` each: 648,000 requests a month while the queue is idle; fewer
    /// empty ones when it is not), the custom metrics the EMF lines declare, per role
    /// that runs (CloudWatch bills a metric for the hours it receives data), and the
    /// alarms and dashboard of `infra/monitoring.yaml` when `Monitoring` is on.
    pub fn fixed(&self, mix: &Mix) -> Vec<(String, f64)> {
        let idle_polls = 5.0 * MONTH_SECONDS / 20.0;
        let mut roles = vec!["dispatcher", "forwarder"];
        if mix.http > 0.0 {
            roles.push("http-ingress");
        }
        let per_role = self.lambda.emf_metrics.max(EMF_METRICS_PER_ROLE);
        let metrics = f64::from(per_role) * roles.len() as f64;
        let mut fixed = vec![
            (
                format!(
                    "idle long polls of the inbox (FIFO) and the delay queue, {idle_polls:.0} each at most"
                ),
                idle_polls * (self.prices.sqs_fifo_request + self.prices.sqs_standard_request),
            ),
            (
                format!(
                    "{metrics:.0} custom metrics ({per_role} per role from its EMF line: {})",
                    roles.join(", ")
                ),
                metrics * self.prices.custom_metric_month,
            ),
        ];
        if mix.monitoring {
            let monitoring = include_str!("../../../infra/monitoring.yaml");
            let alarms = monitoring.matches("AWS::CloudWatch::Alarm").count();
            let dashboards = monitoring.matches("AWS::CloudWatch::Dashboard").count();
            fixed.push((
                format!("Monitoring: {alarms} alarms and {dashboards} dashboard (free if the account has fewer than 3 others)"),
                alarms as f64 * self.prices.alarm_month
                    + dashboards as f64 * self.prices.dashboard_month,
            ));
        }
        fixed
    }
}

/// The metrics a role's EMF line carries in every batch on AWS (`Messages`,
/// `Requests`, `ReadUnits`, `WriteUnits`, `BytesSent`, `MaxLag`: `statefun_aws`'s
/// `Snapshot::emf`). The deployed bench sees fewer: MiniStack reports no consumed
/// capacity, and a zero metric is left out of the line.
pub const EMF_METRICS_PER_ROLE: u32 = 6;

/// The share of one SQS request a producer pays per message it sends in batches of
/// 10 (`SendMessageBatch`): what the `hot` and `keyed` kinds count for their sends.
pub const PRODUCER_SHARE: f64 = 0.1;

/// The bill as a table.
pub fn render(model: &Model, mix: &Mix, bill: &Bill) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "statefun-lambda on AWS: {:.1} messages per batch, delayed messages wait {:.0} s",
        mix.fill, mix.delay_seconds
    );
    let _ = writeln!(
        out,
        "{:<12} {:>9} {:>12} {:>12}   per million: SQS, DynamoDB reads, writes, Lambda requests, duration, API Gateway, logs",
        "traffic", "msg/s", "$/million", "$/month"
    );
    for line in &bill.lines {
        let parts: Vec<String> = line
            .per_million
            .parts()
            .iter()
            .map(|(_, usd)| format!("{usd:.3}"))
            .collect();
        let _ = writeln!(
            out,
            "{:<12} {:>9.2} {:>12.3} {:>12.2}   {}",
            line.what,
            line.per_second,
            line.per_million.total(),
            line.per_month,
            parts.join(" ")
        );
    }
    for (what, usd) in &bill.fixed {
        let _ = writeln!(
            out,
            "{:<12} {:>9} {:>12} {usd:>12.2}   {what}",
            "fixed", "", ""
        );
    }
    let _ = writeln!(
        out,
        "{:<12} {:>9} {:>12} {:>12.2}",
        "total",
        "",
        "",
        bill.per_month()
    );
    let _ = writeln!(
        out,
        "units measured {} ({}); Lambda duration and logs measured {} ({}) at {} MB",
        model.units.measured,
        model.units.command,
        model.lambda.measured,
        model.lambda.command,
        model.lambda.memory_mb
    );
    let _ = writeln!(out, "prices: {PRICES_AS_OF}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        let flat = |fifo: f64| PerMessage {
            read_units: 1.0,
            write_units: 1.0,
            sqs_fifo_requests: fifo,
            sqs_standard_requests: 0.0,
            invocations: BTreeMap::from([("dispatcher".to_string(), fifo / 2.0)]),
        };
        let kinds = BTreeMap::from([(
            "direct".to_string(),
            BTreeMap::from([(1, flat(2.0)), (10, flat(0.2))]),
        )]);
        Model {
            units: Units {
                measured: "test".into(),
                command: "test".into(),
                notes: Vec::new(),
                kinds,
            },
            lambda: Lambda {
                measured: "test".into(),
                command: "test".into(),
                notes: Vec::new(),
                memory_mb: 1024.0,
                roles: BTreeMap::from([(
                    "dispatcher".to_string(),
                    Invocation {
                        billed_ms: 1000.0,
                        log_bytes: f64::from(1u32 << 30),
                        messages: 1.0,
                    },
                )]),
                emf_metrics: 10,
            },
            prices: PRICES,
        }
    }

    #[test]
    fn a_bill_is_units_times_prices() {
        let m = model();
        let bill = m.bill(&Mix {
            direct: 1.0,
            fill: 10.0,
            ..Mix::default()
        });
        let line = &bill.lines[0];
        let p = &line.per_million;
        // 0.2 FIFO requests, 1 read, 1 write, 0.1 invocations of 1 GB for 1 s with 1 GiB of logs.
        assert!((p.sqs - 0.2 * 0.50).abs() < 1e-9, "{p:?}");
        assert!((p.dynamodb_reads - 0.125).abs() < 1e-9);
        assert!((p.dynamodb_writes - 0.625).abs() < 1e-9);
        assert!((p.lambda_requests - 0.1 * 0.20).abs() < 1e-9);
        assert!((p.lambda_duration - 0.1 * 1e6 * 0.000_013_333_4).abs() < 1e-6);
        assert!((p.logs - 0.1 * 1e6 * 0.50).abs() < 1e-6);
        assert!((line.per_month - p.total() / 1e6 * MONTH_SECONDS).abs() < 1e-6);
        assert!(bill.per_month() > line.per_month, "the fixed lines count");
    }

    #[test]
    fn a_fill_between_two_measured_ones_is_linear_in_its_inverse() {
        let m = model();
        // At fill 2, per-batch requests are half of fill 1's: 1.0 of the 2.0.
        let p = m.per_message("direct", 2.0).expect("measured");
        assert!((p.sqs_fifo_requests - 1.0).abs() < 1e-9, "{p:?}");
        assert_eq!(p.read_units, 1.0);
        assert_eq!(
            m.per_message("direct", 10.0)
                .expect("measured")
                .sqs_fifo_requests,
            0.2
        );
        assert!(m.per_message("hot", 10.0).is_none());
    }

    #[test]
    fn the_measurements_this_build_carries_cover_every_kind_and_fill() {
        let m = Model::measured();
        for kind in ["direct", "hot", "keyed", "delayed"] {
            for fill in [1.0, 5.0, 10.0] {
                let p = m.per_message(kind, fill).expect(kind);
                assert!(m.price(&p, 0.0).total() > 0.0, "{kind} at {fill}");
            }
        }
        for role in ["dispatcher", "forwarder", "http-ingress"] {
            assert!(m.lambda.roles.contains_key(role), "{role}");
        }
        let bill = m.bill(&Mix {
            http: 1.0,
            delayed: 1.0,
            delay_seconds: 86_400.0,
            ..Mix::default()
        });
        let [delayed, http] = &bill.lines[..] else {
            panic!("{bill:?}")
        };
        assert_eq!(delayed.what, "delayed");
        assert!(http.per_million.api_gateway > 0.0);
        let minute = m.bill(&Mix {
            delayed: 1.0,
            ..Mix::default()
        });
        assert!(
            delayed.per_million.total() > 2.0 * minute.lines[0].per_million.total(),
            "a day's delay crosses the delay queue 96 times"
        );
        let text = render(&m, &Mix::default(), &bill);
        assert!(text.contains(PRICES_AS_OF), "{text}");
    }
}
