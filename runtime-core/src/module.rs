//! `module.yaml`: the multi-document module file. StateFun's remote endpoint kind is
//! accepted verbatim; our own kinds, in the same style, declare SQS ingresses, which
//! function types the HTTP ingress exposes, and egresses.
//!
//! ```yaml
//! kind: io.statefun.endpoints.v2/http
//! spec:
//!   functions: example/*
//!   urlPathTemplate: http://localhost:8000/statefun
//!   maxNumBatchRequests: 500
//!   transport:
//!     call: 30s
//!     connect: 5s
//! ---
//! kind: io.statefun-lambda.ingress.v1/sqs
//! spec:
//!   queues:
//!     - queue: people
//!       valueType: example/GreetRequest
//!       targets: [example/person]
//!       id: { pointer: /name }        # or { attribute: Name }
//!     - queue: commands
//!       routable: true                # bodies are routable envelopes
//! ---
//! kind: io.statefun-lambda.ingress.v1/http
//! spec:
//!   functions: [example/person, example/counter]   # what the HTTP ingress may address
//! ---
//! kind: io.statefun-lambda.egress.v1/sqs       # or /sns (topicArn), /stdout
//! spec:
//!   id: example/greets
//!   queueUrl: https://sqs.us-east-1.amazonaws.com/123456789012/greets
//! ```
//!
//! Flink StateFun's own I/O kinds are accepted as they are and validated as StateFun
//! does: `io.statefun.kafka.v1/ingress` and `/egress`, `io.statefun.kinesis.v1/ingress`
//! and `/egress`. There is no Kafka or Kinesis here: such an egress is a sink of the
//! host's (stdout in the embedded runtime; on AWS the SQS queue or SNS topic that
//! `STATEFUN_EGRESS` gives its id), and such an ingress is reported at start-up with the
//! ingress of ours that serves its functions instead ([`ExternalIngress::instead`]).
//!
//! Every error names the file, the document (from 1) and the field.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value as Json;

use crate::typename::TypeName;

pub const ENDPOINT_KIND: &str = "io.statefun.endpoints.v2/http";
pub const SQS_INGRESS_KIND: &str = "io.statefun-lambda.ingress.v1/sqs";
pub const HTTP_INGRESS_KIND: &str = "io.statefun-lambda.ingress.v1/http";
pub const SQS_EGRESS_KIND: &str = "io.statefun-lambda.egress.v1/sqs";
pub const SNS_EGRESS_KIND: &str = "io.statefun-lambda.egress.v1/sns";
pub const STDOUT_EGRESS_KIND: &str = "io.statefun-lambda.egress.v1/stdout";
pub const KAFKA_INGRESS_KIND: &str = "io.statefun.kafka.v1/ingress";
pub const KAFKA_EGRESS_KIND: &str = "io.statefun.kafka.v1/egress";
pub const KINESIS_INGRESS_KIND: &str = "io.statefun.kinesis.v1/ingress";
pub const KINESIS_EGRESS_KIND: &str = "io.statefun.kinesis.v1/egress";

/// A module file that cannot be used, and exactly where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: document {document}: {field}: {reason}")]
pub struct ModuleError {
    pub file: String,
    /// 1-based; 0 when the file as a whole is unreadable.
    pub document: usize,
    pub field: String,
    pub reason: String,
}

/// `ns/name` or every type of a namespace, `ns/*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FunctionPattern {
    Exact(TypeName),
    Namespace(String),
}

impl FunctionPattern {
    pub fn matches(&self, t: &TypeName) -> bool {
        match self {
            FunctionPattern::Exact(e) => e == t,
            FunctionPattern::Namespace(ns) => t.namespace() == ns,
        }
    }
}

/// A remote endpoint (`io.statefun.endpoints.v2/http`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpEndpoint {
    pub functions: FunctionPattern,
    /// The URL, where `{function.name}` stands for the type's name.
    pub url_path_template: String,
    pub max_num_batch_requests: usize,
    pub call_timeout: Duration,
    pub connect_timeout: Duration,
    pub payload_max_bytes: usize,
    pub pool_ttl: Duration,
    pub pool_size: usize,
}

impl HttpEndpoint {
    /// The URL for one function type.
    pub fn url(&self, t: &TypeName) -> String {
        self.url_path_template.replace("{function.name}", t.name())
    }
}

/// Where an SQS ingress queue's records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqsRouting {
    /// The body, unchanged, under `value_type`, to each target; the id from `id`.
    Targets {
        value_type: TypeName,
        targets: Vec<TypeName>,
        id: IdFrom,
    },
    /// The body is a routable envelope naming target and type.
    Routable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdFrom {
    Pointer(String),
    Attribute(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqsIngress {
    /// A queue name or ARN.
    pub queue: String,
    pub routing: SqsRouting,
}

/// An SQS queue or SNS topic egress records go to: from the module
/// (`io.statefun-lambda.egress.v1/sqs|sns`) or, on AWS, from `STATEFUN_EGRESS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    Sqs { queue_url: String },
    Sns { topic_arn: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressTarget {
    Sink(Sink),
    Stdout,
    /// A Flink Kafka or Kinesis egress (its kind): the host gives it a sink of its own.
    External {
        kind: &'static str,
    },
}

/// A Flink Kafka or Kinesis ingress: validated, not read (there is no Kafka or Kinesis
/// here). Its records reach their functions through one of our ingresses instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalIngress {
    pub kind: &'static str,
    pub id: TypeName,
    /// Topics or streams, each with the type of its records and the functions they go to.
    pub sources: Vec<ExternalSource>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalSource {
    /// The topic or stream name.
    pub name: String,
    pub value_type: TypeName,
    pub targets: Vec<TypeName>,
}

impl ExternalIngress {
    /// What to say at start-up: which of our ingresses serves these functions instead.
    pub fn instead(&self, host: IngressHost) -> String {
        let routes: Vec<String> = self
            .sources
            .iter()
            .map(|s| {
                let targets: Vec<&str> = s.targets.iter().map(TypeName::as_str).collect();
                format!("{} ({}) -> {}", s.name, s.value_type, targets.join(", "))
            })
            .collect();
        let instead = match host {
            IngressHost::Embedded => {
                "POST each record to the HTTP ingress, /{namespace}/{type}/{id} with \
                 Content-Type: application/vnd.<valueType>"
            }
            IngressHost::Aws => {
                "route these records through an SQS queue declared with kind \
                 io.statefun-lambda.ingress.v1/sqs (same valueType and targets), or the \
                 HTTP ingress Lambda"
            }
        };
        format!(
            "{} {} is not read here ({}); {instead}",
            self.kind,
            self.id,
            routes.join("; ")
        )
    }
}

/// Which host is reading the module, for [`ExternalIngress::instead`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngressHost {
    Embedded,
    Aws,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Egress {
    pub id: TypeName,
    pub target: EgressTarget,
}

/// A parsed module.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Module {
    pub endpoints: Vec<HttpEndpoint>,
    pub sqs_ingresses: Vec<SqsIngress>,
    /// Function types the HTTP ingress exposes; `None`: no declaration.
    pub http_ingress: Option<Vec<FunctionPattern>>,
    pub egresses: Vec<Egress>,
    /// Flink Kafka and Kinesis ingresses, validated and reported, not read.
    pub external_ingresses: Vec<ExternalIngress>,
}

impl Module {
    /// The endpoint serving `t`: the first whose pattern matches an exact name, else the
    /// first namespace match (as StateFun resolves them).
    pub fn endpoint(&self, t: &TypeName) -> Option<&HttpEndpoint> {
        let exact = self
            .endpoints
            .iter()
            .find(|e| matches!(&e.functions, FunctionPattern::Exact(x) if x == t));
        exact.or_else(|| self.endpoints.iter().find(|e| e.functions.matches(t)))
    }

    /// Whether the HTTP ingress may address `t` (everything when undeclared).
    pub fn http_exposes(&self, t: &TypeName) -> bool {
        self.http_ingress
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| p.matches(t)))
    }

    /// Parses module text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Module, ModuleError> {
        let mut module = Module::default();
        for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
            let at = Doc {
                file,
                document: i + 1,
            };
            let value = Json::deserialize(doc)
                .map_err(|e| at.error("(document)", format!("not YAML: {e}")))?;
            if value.is_null() {
                continue;
            }
            let kind = at.string(&value, "kind")?;
            let spec = value
                .get("spec")
                .ok_or_else(|| at.error("spec", "missing"))?;
            match kind.as_str() {
                ENDPOINT_KIND => module.endpoints.push(at.endpoint(spec)?),
                SQS_INGRESS_KIND => module.sqs_ingresses.extend(at.sqs_ingresses(spec)?),
                HTTP_INGRESS_KIND => {
                    let patterns = at.patterns(spec, "spec.functions")?;
                    module
                        .http_ingress
                        .get_or_insert_with(Vec::new)
                        .extend(patterns);
                }
                SQS_EGRESS_KIND | SNS_EGRESS_KIND | STDOUT_EGRESS_KIND => {
                    module.egresses.push(at.egress(&kind, spec)?)
                }
                KAFKA_INGRESS_KIND => module
                    .external_ingresses
                    .push(at.external_ingress(KAFKA_INGRESS_KIND, spec)?),
                KINESIS_INGRESS_KIND => module
                    .external_ingresses
                    .push(at.external_ingress(KINESIS_INGRESS_KIND, spec)?),
                KAFKA_EGRESS_KIND => module
                    .egresses
                    .push(at.external_egress(KAFKA_EGRESS_KIND, spec)?),
                KINESIS_EGRESS_KIND => module
                    .egresses
                    .push(at.external_egress(KINESIS_EGRESS_KIND, spec)?),
                other => {
                    return Err(at.error(
                        "kind",
                        format!(
                            "unknown kind {other:?}; known: {ENDPOINT_KIND}, {SQS_INGRESS_KIND}, {HTTP_INGRESS_KIND}, \
                             {SQS_EGRESS_KIND}, {SNS_EGRESS_KIND}, {STDOUT_EGRESS_KIND}, {KAFKA_INGRESS_KIND}, \
                             {KAFKA_EGRESS_KIND}, {KINESIS_INGRESS_KIND}, {KINESIS_EGRESS_KIND}"
                        ),
                    ));
                }
            }
        }
        Ok(module)
    }
}

struct Doc<'a> {
    file: &'a str,
    document: usize,
}

fn field<'v>(v: &'v Json, path: &str) -> Option<&'v Json> {
    path.split('.').skip(1).try_fold(v, |v, k| v.get(k))
}

impl Doc<'_> {
    fn error(&self, field: &str, reason: impl Into<String>) -> ModuleError {
        ModuleError {
            file: self.file.to_string(),
            document: self.document,
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    fn string(&self, v: &Json, name: &str) -> Result<String, ModuleError> {
        match v.get(name) {
            Some(Json::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(other) => Err(self.error(name, format!("expected a string, got {other}"))),
            None => Err(self.error(name, "missing")),
        }
    }

    fn typename(&self, v: &Json, path: &str) -> Result<TypeName, ModuleError> {
        match v {
            Json::String(s) => {
                TypeName::parse(s.as_str()).map_err(|e| self.error(path, e.to_string()))
            }
            other => Err(self.error(path, format!("expected namespace/name, got {other}"))),
        }
    }

    fn pattern(&self, v: &Json, path: &str) -> Result<FunctionPattern, ModuleError> {
        let t = self.typename(v, path)?;
        Ok(if t.name() == "*" {
            FunctionPattern::Namespace(t.namespace().to_string())
        } else {
            FunctionPattern::Exact(t)
        })
    }

    fn patterns(&self, spec: &Json, path: &str) -> Result<Vec<FunctionPattern>, ModuleError> {
        match field(spec, path) {
            Some(Json::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| self.pattern(v, &format!("{path}[{i}]")))
                .collect(),
            Some(one @ Json::String(_)) => Ok(vec![self.pattern(one, path)?]),
            Some(other) => Err(self.error(
                path,
                format!("expected a list of function types, got {other}"),
            )),
            None => Err(self.error(path, "missing")),
        }
    }

    fn duration(
        &self,
        spec: &Json,
        path: &str,
        default: Duration,
    ) -> Result<Duration, ModuleError> {
        match field(spec, path) {
            None | Some(Json::Null) => Ok(default),
            Some(Json::Number(n)) => n.as_u64().map(Duration::from_millis).ok_or_else(|| {
                self.error(path, format!("{n} is not a whole number of milliseconds"))
            }),
            Some(Json::String(s)) => parse_duration(s).ok_or_else(|| {
                self.error(
                    path,
                    format!("{s:?} is not a duration (e.g. 500ms, 10s, 2m, 1h)"),
                )
            }),
            Some(other) => Err(self.error(path, format!("expected a duration, got {other}"))),
        }
    }

    fn size(&self, spec: &Json, path: &str, default: usize) -> Result<usize, ModuleError> {
        match field(spec, path) {
            None | Some(Json::Null) => Ok(default),
            Some(Json::Number(n)) => n
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| self.error(path, format!("{n} is not a whole number"))),
            Some(Json::String(s)) => parse_size(s).ok_or_else(|| {
                self.error(path, format!("{s:?} is not a size (e.g. 1024, 64kb, 32mb)"))
            }),
            Some(other) => Err(self.error(path, format!("expected a number, got {other}"))),
        }
    }

    fn endpoint(&self, spec: &Json) -> Result<HttpEndpoint, ModuleError> {
        let functions = match field(spec, "spec.functions") {
            Some(v) => self.pattern(v, "spec.functions")?,
            None => return Err(self.error("spec.functions", "missing")),
        };
        let url_path_template = self
            .string(spec, "urlPathTemplate")
            .map_err(|e| ModuleError {
                field: format!("spec.{}", e.field),
                ..e
            })?;
        if !(url_path_template.starts_with("http://") || url_path_template.starts_with("https://"))
        {
            return Err(self.error(
                "spec.urlPathTemplate",
                format!("{url_path_template:?} must be an http:// or https:// URL"),
            ));
        }
        let rest = url_path_template.replace("{function.name}", "");
        if rest.contains('{') || rest.contains('}') {
            return Err(self.error(
                "spec.urlPathTemplate",
                "the only placeholder is {function.name}",
            ));
        }
        let max_num_batch_requests = match field(spec, "spec.maxNumBatchRequests") {
            None => 1000,
            Some(v) => v.as_u64().filter(|n| *n > 0).ok_or_else(|| {
                self.error(
                    "spec.maxNumBatchRequests",
                    format!("expected a positive number, got {v}"),
                )
            })? as usize,
        };
        let transport_type = match field(spec, "spec.transport.type") {
            None => "io.statefun.transports.v1/async".to_string(),
            Some(Json::String(s)) => s.clone(),
            Some(other) => {
                return Err(self.error(
                    "spec.transport.type",
                    format!("expected a string, got {other}"),
                ));
            }
        };
        let (call, connect) = match transport_type.as_str() {
            "io.statefun.transports.v1/async" => {
                (Duration::from_secs(120), Duration::from_secs(20))
            }
            "io.statefun.transports.v1/okhttp" => {
                (Duration::from_secs(60), Duration::from_secs(10))
            }
            other => {
                return Err(self.error(
                    "spec.transport.type",
                    format!("unknown transport {other:?}; known: io.statefun.transports.v1/async, io.statefun.transports.v1/okhttp"),
                ));
            }
        };
        // `timeouts: {call, connect}` is the legacy (and okhttp) form of the same settings.
        let call = self.duration(spec, "spec.transport.timeouts.call", call)?;
        let connect = self.duration(spec, "spec.transport.timeouts.connect", connect)?;
        Ok(HttpEndpoint {
            functions,
            url_path_template,
            max_num_batch_requests,
            call_timeout: self.duration(spec, "spec.transport.call", call)?,
            connect_timeout: self.duration(spec, "spec.transport.connect", connect)?,
            payload_max_bytes: self.size(
                spec,
                "spec.transport.payload_max_bytes",
                32 * 1024 * 1024,
            )?,
            pool_ttl: self.duration(spec, "spec.transport.pool_ttl", Duration::from_secs(15))?,
            pool_size: self.size(spec, "spec.transport.pool_size", 1024)?,
        })
    }

    /// `{path}.targets`: a non-empty list of function types.
    fn targets(&self, item: &Json, path: &str) -> Result<Vec<TypeName>, ModuleError> {
        match item.get("targets") {
            Some(Json::Array(ts)) if !ts.is_empty() => ts
                .iter()
                .enumerate()
                .map(|(j, t)| self.typename(t, &format!("{path}.targets[{j}]")))
                .collect(),
            _ => Err(self.error(
                &format!("{path}.targets"),
                "expected a non-empty list of function types",
            )),
        }
    }

    fn sqs_ingresses(&self, spec: &Json) -> Result<Vec<SqsIngress>, ModuleError> {
        let Some(Json::Array(queues)) = field(spec, "spec.queues") else {
            return Err(self.error("spec.queues", "expected a list of queues"));
        };
        queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let path = format!("spec.queues[{i}]");
                let queue = self.string(q, "queue").map_err(|e| ModuleError {
                    field: format!("{path}.queue"),
                    ..e
                })?;
                if q.get("routable").and_then(Json::as_bool) == Some(true) {
                    return Ok(SqsIngress {
                        queue,
                        routing: SqsRouting::Routable,
                    });
                }
                let value_type = match q.get("valueType") {
                    Some(v) => self.typename(v, &format!("{path}.valueType"))?,
                    None => {
                        return Err(self.error(
                            &format!("{path}.valueType"),
                            "missing (or set routable: true)",
                        ));
                    }
                };
                let targets = self.targets(q, &path)?;
                let id = match (
                    q.get("id").and_then(|i| i.get("pointer")),
                    q.get("id").and_then(|i| i.get("attribute")),
                ) {
                    (Some(Json::String(p)), None) if p.starts_with('/') => {
                        IdFrom::Pointer(p.clone())
                    }
                    (None, Some(Json::String(a))) if !a.is_empty() => IdFrom::Attribute(a.clone()),
                    _ => {
                        return Err(self.error(
                            &format!("{path}.id"),
                            "expected { pointer: /json/pointer } or { attribute: Name }",
                        ));
                    }
                };
                Ok(SqsIngress {
                    queue,
                    routing: SqsRouting::Targets {
                        value_type,
                        targets,
                        id,
                    },
                })
            })
            .collect()
    }

    fn spec_string(&self, spec: &Json, path: &str) -> Result<String, ModuleError> {
        match field(spec, path) {
            Some(Json::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
            Some(other) => Err(self.error(path, format!("expected a string, got {other}"))),
            None => Err(self.error(path, "missing")),
        }
    }

    fn spec_id(&self, spec: &Json) -> Result<TypeName, ModuleError> {
        match spec.get("id") {
            Some(v) => self.typename(v, "spec.id"),
            None => Err(self.error("spec.id", "missing")),
        }
    }

    /// An optional `{type: …}` object whose type is one of `known`.
    fn one_of(&self, spec: &Json, path: &str, known: &[&str]) -> Result<(), ModuleError> {
        match field(spec, path) {
            None => Ok(()),
            Some(Json::String(t)) if known.contains(&t.as_str()) => Ok(()),
            Some(other) => {
                Err(self.error(path, format!("{other} is not one of {}", known.join(", "))))
            }
        }
    }

    /// `io.statefun.kafka.v1/ingress` (`address`, `topics`) or
    /// `io.statefun.kinesis.v1/ingress` (`streams`), as StateFun validates them.
    fn external_ingress(
        &self,
        kind: &'static str,
        spec: &Json,
    ) -> Result<ExternalIngress, ModuleError> {
        let id = self.spec_id(spec)?;
        let (list, name) = if kind == KAFKA_INGRESS_KIND {
            self.spec_string(spec, "spec.address")?;
            self.one_of(
                spec,
                "spec.startupPosition.type",
                &[
                    "earliest",
                    "latest",
                    "group-offsets",
                    "specific-offsets",
                    "date",
                ],
            )?;
            ("topics", "topic")
        } else {
            self.one_of(
                spec,
                "spec.awsRegion.type",
                &["default", "specific", "custom-endpoint"],
            )?;
            self.one_of(
                spec,
                "spec.startupPosition.type",
                &["earliest", "latest", "date"],
            )?;
            ("streams", "stream")
        };
        let path = format!("spec.{list}");
        let Some(Json::Array(items)) = field(spec, &path) else {
            return Err(self.error(&path, format!("expected a non-empty list of {list}")));
        };
        if items.is_empty() {
            return Err(self.error(&path, format!("expected a non-empty list of {list}")));
        }
        let sources = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let at = format!("{path}[{i}]");
                let name = match item.get(name) {
                    Some(Json::String(n)) if !n.is_empty() => n.clone(),
                    _ => return Err(self.error(&format!("{at}.{name}"), "missing")),
                };
                let value_type = match item.get("valueType") {
                    Some(v) => self.typename(v, &format!("{at}.valueType"))?,
                    None => return Err(self.error(&format!("{at}.valueType"), "missing")),
                };
                let targets = self.targets(item, &at)?;
                Ok(ExternalSource {
                    name,
                    value_type,
                    targets,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ExternalIngress { kind, id, sources })
    }

    /// `io.statefun.kafka.v1/egress` (`address`, `deliverySemantic`) or
    /// `io.statefun.kinesis.v1/egress`, as StateFun validates them.
    fn external_egress(&self, kind: &'static str, spec: &Json) -> Result<Egress, ModuleError> {
        let id = self.spec_id(spec)?;
        if kind == KAFKA_EGRESS_KIND {
            self.spec_string(spec, "spec.address")?;
            self.one_of(
                spec,
                "spec.deliverySemantic.type",
                &["at-least-once", "exactly-once", "none"],
            )?;
        } else {
            self.one_of(
                spec,
                "spec.awsRegion.type",
                &["default", "specific", "custom-endpoint"],
            )?;
            if let Some(n) = field(spec, "spec.maxOutstandingRecords")
                && n.as_u64().is_none_or(|n| n == 0)
            {
                return Err(self.error(
                    "spec.maxOutstandingRecords",
                    format!("expected a positive number, got {n}"),
                ));
            }
        }
        Ok(Egress {
            id,
            target: EgressTarget::External { kind },
        })
    }

    fn egress(&self, kind: &str, spec: &Json) -> Result<Egress, ModuleError> {
        let id = match spec.get("id") {
            Some(v) => self.typename(v, "spec.id")?,
            None => return Err(self.error("spec.id", "missing")),
        };
        let prefixed = |e: ModuleError| ModuleError {
            field: format!("spec.{}", e.field),
            ..e
        };
        let target = match kind {
            SQS_EGRESS_KIND => EgressTarget::Sink(Sink::Sqs {
                queue_url: self.string(spec, "queueUrl").map_err(prefixed)?,
            }),
            SNS_EGRESS_KIND => EgressTarget::Sink(Sink::Sns {
                topic_arn: self.string(spec, "topicArn").map_err(prefixed)?,
            }),
            _ => EgressTarget::Stdout,
        };
        Ok(Egress { id, target })
    }
}

/// `500ms`, `10s`, `10 s`, `2m`, `2min`, `1h`; a bare number is milliseconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..split].parse().ok()?;
    let ms = match s[split..].trim().to_ascii_lowercase().as_str() {
        "" | "ms" | "milli" | "millis" | "milliseconds" => 1,
        "s" | "sec" | "secs" | "second" | "seconds" => 1000,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
        "h" | "hour" | "hours" => 3_600_000,
        _ => return None,
    };
    Some(Duration::from_millis(n.checked_mul(ms)?))
}

/// `1024`, `64kb`, `32mb`, `1gb` (binary units).
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: usize = s[..split].parse().ok()?;
    let unit = match s[split..].trim().to_ascii_lowercase().as_str() {
        "" | "b" | "bytes" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAYGROUND: &str = r#"
kind: io.statefun.endpoints.v2/http
spec:
  functions: example/*
  urlPathTemplate: http://functions:8000/statefun
  transport:
    type: io.statefun.transports.v1/async
---
kind: io.statefun.endpoints.v2/http
spec:
  functions: example/special
  urlPathTemplate: https://fn.example.com/{function.name}
  maxNumBatchRequests: 10
  transport:
    timeouts:
      call: 1 min
      connect: 5s
    payload_max_bytes: 64kb
---
kind: io.statefun-lambda.ingress.v1/sqs
spec:
  queues:
    - queue: people
      valueType: example/GreetRequest
      targets: [example/person]
      id: { pointer: /name }
    - queue: commands
      routable: true
---
kind: io.statefun-lambda.ingress.v1/http
spec:
  functions: [example/person]
---
kind: io.statefun-lambda.egress.v1/sns
spec:
  id: example/greets
  topicArn: arn:aws:sns:us-east-1:1:greets
"#;

    #[test]
    fn the_statefun_endpoint_kind_is_accepted_verbatim_with_our_kinds() {
        let m = Module::parse("module.yaml", PLAYGROUND).expect("valid");
        let person = TypeName::from_static("example/person");
        let special = TypeName::from_static("example/special");
        let any = m.endpoint(&person).expect("namespace match");
        assert_eq!(any.url(&person), "http://functions:8000/statefun");
        assert_eq!(
            (
                any.call_timeout,
                any.connect_timeout,
                any.max_num_batch_requests
            ),
            (Duration::from_secs(120), Duration::from_secs(20), 1000)
        );
        let exact = m.endpoint(&special).expect("exact match wins");
        assert_eq!(exact.url(&special), "https://fn.example.com/special");
        assert_eq!(
            (
                exact.call_timeout,
                exact.connect_timeout,
                exact.payload_max_bytes
            ),
            (Duration::from_secs(60), Duration::from_secs(5), 65536)
        );
        assert!(m.endpoint(&TypeName::from_static("other/x")).is_none());
        assert_eq!(m.sqs_ingresses.len(), 2);
        assert_eq!(m.sqs_ingresses[1].routing, SqsRouting::Routable);
        assert!(m.http_exposes(&person) && !m.http_exposes(&special));
        assert_eq!(
            m.egresses[0].target,
            EgressTarget::Sink(Sink::Sns {
                topic_arn: "arn:aws:sns:us-east-1:1:greets".into()
            })
        );
    }

    fn error(text: &str) -> String {
        Module::parse("m.yaml", text)
            .expect_err("invalid")
            .to_string()
    }

    #[test]
    fn errors_name_file_document_and_field() {
        assert_eq!(
            error("kind: io.statefun.endpoints.v2/http\nspec:\n  functions: example/*\n"),
            "m.yaml: document 1: spec.urlPathTemplate: missing"
        );
        let two = "kind: io.statefun-lambda.ingress.v1/http\nspec:\n  functions: [a/b]\n---\nkind: nope/kind\nspec: {}\n";
        assert!(
            error(two).starts_with("m.yaml: document 2: kind: unknown kind \"nope/kind\""),
            "{}",
            error(two)
        );
        let e = error(
            "kind: io.statefun.endpoints.v2/http\nspec:\n  functions: example/*\n  urlPathTemplate: http://x/{function.namespace}\n",
        );
        assert!(
            e.contains("spec.urlPathTemplate: the only placeholder is {function.name}"),
            "{e}"
        );
        let e = error(
            "kind: io.statefun.endpoints.v2/http\nspec:\n  functions: nons\n  urlPathTemplate: http://x\n",
        );
        assert!(
            e.contains("document 1: spec.functions: invalid type name"),
            "{e}"
        );
        let e = error(
            "kind: io.statefun.endpoints.v2/http\nspec:\n  functions: a/*\n  urlPathTemplate: http://x\n  transport:\n    call: soon\n",
        );
        assert!(
            e.contains("spec.transport.call: \"soon\" is not a duration"),
            "{e}"
        );
        let e = error(
            "kind: io.statefun-lambda.ingress.v1/sqs\nspec:\n  queues:\n    - queue: q\n      valueType: a/b\n      targets: [a/c]\n",
        );
        assert!(e.contains("spec.queues[0].id: expected"), "{e}");
        assert!(
            error("kind: [unclosed").contains("document 1"),
            "{}",
            error("kind: [unclosed")
        );
    }

    /// A StateFun application's module as Flink runs it (the shape statefun-tasks and the
    /// StateFun docs use): endpoint, Kafka ingress and egress, Kinesis ingress and egress.
    const FLINK_IO: &str = r#"
kind: io.statefun.endpoints.v2/http
spec:
  functions: tasks/*
  urlPathTemplate: http://worker:8085/statefun
---
kind: io.statefun.kafka.v1/ingress
spec:
  id: tasks/ingress
  address: kafka:9092
  consumerGroupId: tasks
  startupPosition:
    type: earliest
  topics:
    - topic: statefun.tasks.requests
      valueType: io.statefun_tasks.types/statefun_tasks.TaskRequest
      targets:
        - tasks/worker
---
kind: io.statefun.kafka.v1/egress
spec:
  id: tasks/kafka-generic-egress
  address: kafka:9092
  deliverySemantic:
    type: exactly-once
    transactionTimeout: 15min
---
kind: io.statefun.kinesis.v1/ingress
spec:
  id: tasks/events
  awsRegion:
    type: specific
    id: us-west-1
  streams:
    - stream: events
      valueType: tasks/Event
      targets: [tasks/worker, tasks/audit]
---
kind: io.statefun.kinesis.v1/egress
spec:
  id: tasks/kinesis-out
  maxOutstandingRecords: 9999
"#;

    #[test]
    fn flink_kafka_and_kinesis_kinds_are_accepted_and_reported() {
        let m = Module::parse("module.yaml", FLINK_IO).expect("valid");
        assert_eq!(m.external_ingresses.len(), 2);
        let kafka = &m.external_ingresses[0];
        assert_eq!(kafka.id.as_str(), "tasks/ingress");
        assert_eq!(kafka.sources[0].name, "statefun.tasks.requests");
        assert_eq!(
            kafka.sources[0].targets,
            vec![TypeName::from_static("tasks/worker")]
        );
        let said = kafka.instead(IngressHost::Embedded);
        assert!(
            said.contains("io.statefun.kafka.v1/ingress tasks/ingress is not read here")
                && said.contains("HTTP ingress"),
            "{said}"
        );
        assert!(
            m.external_ingresses[1]
                .instead(IngressHost::Aws)
                .contains("io.statefun-lambda.ingress.v1/sqs")
        );
        assert_eq!(
            m.egresses
                .iter()
                .map(|e| (e.id.as_str(), e.target.clone()))
                .collect::<Vec<_>>(),
            vec![
                (
                    "tasks/kafka-generic-egress",
                    EgressTarget::External {
                        kind: KAFKA_EGRESS_KIND
                    }
                ),
                (
                    "tasks/kinesis-out",
                    EgressTarget::External {
                        kind: KINESIS_EGRESS_KIND
                    }
                ),
            ]
        );
    }

    #[test]
    fn flink_io_kinds_are_validated_with_file_document_and_field() {
        let cases = [
            (
                "kind: io.statefun.kafka.v1/ingress\nspec:\n  id: a/b\n  topics: []\n",
                "m.yaml: document 1: spec.address: missing",
            ),
            (
                "kind: io.statefun.kafka.v1/ingress\nspec:\n  id: a/b\n  address: k:9092\n  topics: []\n",
                "m.yaml: document 1: spec.topics: expected a non-empty list of topics",
            ),
            (
                "kind: io.statefun.kafka.v1/ingress\nspec:\n  id: a/b\n  address: k:9092\n  topics:\n    - topic: t\n      valueType: a/T\n",
                "m.yaml: document 1: spec.topics[0].targets: expected a non-empty list of function types",
            ),
            (
                "kind: io.statefun.kafka.v1/ingress\nspec:\n  id: nons\n  address: k:9092\n",
                "m.yaml: document 1: spec.id: invalid type name",
            ),
            (
                "kind: io.statefun.kafka.v1/egress\nspec:\n  id: a/b\n  address: k:9092\n  deliverySemantic:\n    type: twice\n",
                "m.yaml: document 1: spec.deliverySemantic.type: \"twice\" is not one of at-least-once, exactly-once, none",
            ),
            (
                "kind: io.statefun.kinesis.v1/ingress\nspec:\n  id: a/b\n  streams:\n    - valueType: a/T\n      targets: [a/f]\n",
                "m.yaml: document 1: spec.streams[0].stream: missing",
            ),
            (
                "kind: io.statefun.kinesis.v1/egress\nspec:\n  id: a/b\n  maxOutstandingRecords: 0\n",
                "m.yaml: document 1: spec.maxOutstandingRecords: expected a positive number, got 0",
            ),
        ];
        for (text, expected) in cases {
            let e = error(text);
            assert!(e.starts_with(expected), "{text}\n  gave: {e}");
        }
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1 min"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("250"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2 fortnights"), None);
        assert_eq!(parse_size("32MB"), Some(32 << 20));
    }
}
