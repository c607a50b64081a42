//! Configuration from the environment into a typed config. A missing or bad variable is
//! a [`ConfigError`] naming it, at cold start; never a panic.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `STATEFUN_STATE_TABLE` | DynamoDB table of instance records | required |
//! | `STATEFUN_INBOX_QUEUE_URL` | the FIFO inbox | required |
//! | `STATEFUN_DELAY_QUEUE_URL` | the standard delay queue | required |
//! | `STATEFUN_DLQ_URL` | the FIFO dead-letter queue poison goes to, with its reason | required |
//! | `STATEFUN_EGRESS` | `typename=sqs:<queue url>` or `typename=sns:<topic arn>`, comma-separated | none |
//! | `STATEFUN_INGRESS_ROUTES` | JSON list of SQS ingress routes (each becomes a module [`SqsIngress`]) | none |
//! | `STATEFUN_MAX_RECEIVES` | receives of a failing message before it is dead-lettered | 5 |
//! | `STATEFUN_CONFLICT_RETRIES` | re-runs of an address after a version conflict, per batch | 3 |
//! | `STATEFUN_MAX_DELAY_HOP_SECONDS` | longest delay of one hop through the delay queue (SQS: ≤ 900) | 900 |
//! | `STATEFUN_DEDUP_RETENTION_SECONDS` | how long dedup records are kept | 1,252,800 (14 d + 12 h) |
//! | `STATEFUN_STORE_FORMAT` | the instance-record format this build writes (template: `StoreWriteFormat`); during a rolling deploy the previous release's, until every running build reads the newer ([`statefun_core::format`]) | 1 |
//! | `STATEFUN_MODULE` | path of a module.yaml: remote endpoints, SQS ingresses, egresses | none |

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use statefun_core::TypeName;
use statefun_core::module::{self, IdFrom, Module, Sink, SqsIngress, SqsRouting};

/// `STATEFUN_STORE_FORMAT`: a format this build writes.
fn store_format(lookup: &impl Fn(&str) -> Option<String>) -> Result<u32, ConfigError> {
    use statefun_core::format::Versioned;
    let newest = statefun_core::InstanceState::FORMAT;
    let format = number(lookup, "STATEFUN_STORE_FORMAT", 1)?;
    if format == 0 || format > u64::from(newest) {
        return Err(ConfigError {
            variable: "STATEFUN_STORE_FORMAT",
            reason: format!(
                "format {format}: this build writes instance-record formats 1 to {newest}"
            ),
        });
    }
    Ok(format as u32)
}

/// A variable that is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration variable {variable}: {reason}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub reason: String,
}

/// One route of `STATEFUN_INGRESS_ROUTES` as written (JSON); it becomes the module's
/// [`SqsIngress`], the one vocabulary of ingress routes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteJson {
    /// The source queue: its ARN (as in Lambda events) or its name.
    queue: String,
    /// `auto`: the body is a routable envelope `{"target": {"type", "id"}, "typename",
    /// "value" | "value_base64"}`; otherwise the function type every record goes to.
    target: String,
    /// Where the id is: `{"pointer": "/json/pointer"}` into the JSON body, or
    /// `{"attribute": "Name"}`, a message attribute. Not used with `auto`.
    #[serde(default)]
    id: Option<IdJson>,
    /// The type name the body is delivered under (bytes unchanged). Not used with `auto`.
    #[serde(default)]
    typename: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
enum IdJson {
    Pointer(String),
    Attribute(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsConfig {
    pub table: String,
    pub inbox_url: String,
    pub delay_url: String,
    pub dlq_url: String,
    /// Where each egress goes (`STATEFUN_EGRESS` and the module's SQS/SNS egresses).
    pub egress: BTreeMap<TypeName, Sink>,
    /// SQS ingress queues (`STATEFUN_INGRESS_ROUTES` and the module's), as the module
    /// declares them.
    pub ingress_routes: Vec<SqsIngress>,
    pub max_receives: u32,
    pub conflict_retries: u32,
    pub max_delay_hop: Duration,
    pub dedup_retention: Duration,
    /// The instance-record format written (one this build writes).
    pub store_format: u32,
    /// The module file's contents (its egresses and ingresses are merged above).
    pub module: Module,
}

fn required(
    lookup: &impl Fn(&str) -> Option<String>,
    variable: &'static str,
) -> Result<String, ConfigError> {
    lookup(variable)
        .filter(|v| !v.trim().is_empty())
        .ok_or(ConfigError {
            variable,
            reason: "is not set".into(),
        })
}

fn number(
    lookup: &impl Fn(&str) -> Option<String>,
    variable: &'static str,
    default: u64,
) -> Result<u64, ConfigError> {
    match lookup(variable) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|e| ConfigError {
            variable,
            reason: format!("{v:?} is not a whole number: {e}"),
        }),
    }
}

fn egress(spec: &str) -> Result<BTreeMap<TypeName, Sink>, ConfigError> {
    let bad = |reason: String| ConfigError {
        variable: "STATEFUN_EGRESS",
        reason,
    };
    let mut out = BTreeMap::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, target) = entry.split_once('=').ok_or_else(|| {
            bad(format!(
                "{entry:?}: expected typename=sqs:<url> or typename=sns:<arn>"
            ))
        })?;
        let name = TypeName::parse(name.trim()).map_err(|e| bad(e.to_string()))?;
        let target = match target.trim().split_once(':') {
            Some(("sqs", url)) if !url.is_empty() => Sink::Sqs {
                queue_url: url.into(),
            },
            Some(("sns", arn)) if !arn.is_empty() => Sink::Sns {
                topic_arn: arn.into(),
            },
            _ => {
                return Err(bad(format!(
                    "{entry:?}: the target must start with sqs: or sns:"
                )));
            }
        };
        if out.insert(name.clone(), target).is_some() {
            return Err(bad(format!("egress {name} is declared twice")));
        }
    }
    Ok(out)
}

/// `STATEFUN_INGRESS_ROUTES` (a JSON list) as the module's SQS ingresses.
pub fn ingress_routes(spec: &str) -> Result<Vec<SqsIngress>, ConfigError> {
    let bad = |reason: String| ConfigError {
        variable: "STATEFUN_INGRESS_ROUTES",
        reason,
    };
    let routes: Vec<RouteJson> = serde_json::from_str(spec).map_err(|e| bad(e.to_string()))?;
    routes
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            if r.target == "auto" {
                return Ok(SqsIngress {
                    queue: r.queue,
                    routing: SqsRouting::Routable,
                });
            }
            let target = TypeName::parse(r.target.as_str())
                .map_err(|e| bad(format!("route {i}: target: {e}")))?;
            let id = match r.id {
                Some(IdJson::Pointer(p)) => IdFrom::Pointer(p),
                Some(IdJson::Attribute(a)) => IdFrom::Attribute(a),
                None => {
                    return Err(bad(format!(
                        "route {i}: `id` is required unless target is \"auto\""
                    )));
                }
            };
            let typename = r.typename.as_deref().ok_or_else(|| {
                bad(format!(
                    "route {i}: `typename` is required unless target is \"auto\""
                ))
            })?;
            let value_type =
                TypeName::parse(typename).map_err(|e| bad(format!("route {i}: typename: {e}")))?;
            Ok(SqsIngress {
                queue: r.queue,
                routing: SqsRouting::Targets {
                    value_type,
                    targets: vec![target],
                    id,
                },
            })
        })
        .collect()
}

impl AwsConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads variables through `lookup` (tests pass a map; nothing mutates the process
    /// environment).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let max_delay_hop = number(&lookup, "STATEFUN_MAX_DELAY_HOP_SECONDS", 900)?;
        if !(1..=900).contains(&max_delay_hop) {
            return Err(ConfigError {
                variable: "STATEFUN_MAX_DELAY_HOP_SECONDS",
                reason: format!("{max_delay_hop} is outside SQS's 1 to 900 seconds"),
            });
        }
        let module = match lookup("STATEFUN_MODULE").filter(|p| !p.trim().is_empty()) {
            None => Module::default(),
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|e| ConfigError {
                    variable: "STATEFUN_MODULE",
                    reason: format!("reading {path}: {e}"),
                })?;
                Module::parse(&path, &text).map_err(|e| ConfigError {
                    variable: "STATEFUN_MODULE",
                    reason: e.to_string(),
                })?
            }
        };
        let egress = egress(&lookup("STATEFUN_EGRESS").unwrap_or_default())?;
        let ingress_routes = match lookup("STATEFUN_INGRESS_ROUTES") {
            Some(spec) if !spec.trim().is_empty() => ingress_routes(&spec)?,
            _ => Vec::new(),
        };
        AwsConfig {
            table: required(&lookup, "STATEFUN_STATE_TABLE")?,
            inbox_url: required(&lookup, "STATEFUN_INBOX_QUEUE_URL")?,
            delay_url: required(&lookup, "STATEFUN_DELAY_QUEUE_URL")?,
            dlq_url: required(&lookup, "STATEFUN_DLQ_URL")?,
            egress,
            ingress_routes,
            max_receives: number(&lookup, "STATEFUN_MAX_RECEIVES", 5)?.clamp(1, 1000) as u32,
            conflict_retries: number(&lookup, "STATEFUN_CONFLICT_RETRIES", 3)?.min(100) as u32,
            max_delay_hop: Duration::from_secs(max_delay_hop),
            dedup_retention: Duration::from_secs(number(
                &lookup,
                "STATEFUN_DEDUP_RETENTION_SECONDS",
                1_252_800,
            )?),
            store_format: store_format(&lookup)?,
            module: Module::default(),
        }
        .with_module(module)
    }

    /// Adds a module: its egresses and SQS ingresses join the configured ones. A Flink
    /// Kafka or Kinesis egress must be given its SQS queue or SNS topic in
    /// `STATEFUN_EGRESS` (the one place egress targets are set on AWS).
    pub fn with_module(mut self, module: Module) -> Result<Self, ConfigError> {
        for e in &module.egresses {
            match &e.target {
                module::EgressTarget::Sink(sink) => {
                    self.egress.insert(e.id.clone(), sink.clone());
                }
                module::EgressTarget::Stdout => {}
                module::EgressTarget::External { kind } => {
                    if !self.egress.contains_key(&e.id) {
                        return Err(ConfigError {
                            variable: "STATEFUN_EGRESS",
                            reason: format!(
                                "the module declares egress {id} ({kind}), which has no sink here: \
                                 add {id}=sqs:<queue url> or {id}=sns:<topic arn>",
                                id = e.id
                            ),
                        });
                    }
                }
            }
        }
        self.ingress_routes
            .extend(module.sqs_ingresses.iter().cloned());
        self.module = module;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(extra: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let mut map: HashMap<String, String> = [
            ("STATEFUN_STATE_TABLE", "t"),
            ("STATEFUN_INBOX_QUEUE_URL", "http://q/inbox.fifo"),
            ("STATEFUN_DELAY_QUEUE_URL", "http://q/delay"),
            ("STATEFUN_DLQ_URL", "http://q/dlq.fifo"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in extra {
            map.insert(k.to_string(), v.to_string());
        }
        move |name| map.get(name).cloned()
    }

    #[test]
    fn a_flink_egress_takes_its_sink_from_statefun_egress_or_fails_the_start() {
        let dir = std::env::temp_dir().join(format!("statefun-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("module.yaml");
        std::fs::write(
            &path,
            "kind: io.statefun.kafka.v1/egress\nspec:\n  id: tasks/out\n  address: kafka:9092\n",
        )
        .expect("write");
        let module = path.to_str().expect("utf-8 path");
        let e = AwsConfig::from_lookup(vars(&[("STATEFUN_MODULE", module)])).expect_err("no sink");
        assert!(
            e.to_string().contains(
                "STATEFUN_EGRESS: the module declares egress tasks/out (io.statefun.kafka.v1/egress)"
            ),
            "{e}"
        );
        let c = AwsConfig::from_lookup(vars(&[
            ("STATEFUN_MODULE", module),
            ("STATEFUN_EGRESS", "tasks/out=sqs:http://q/out"),
        ]))
        .expect("configured");
        assert_eq!(
            c.egress[&TypeName::from_static("tasks/out")],
            Sink::Sqs {
                queue_url: "http://q/out".into()
            }
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn defaults_and_egress_parse() {
        let c = AwsConfig::from_lookup(vars(&[(
            "STATEFUN_EGRESS",
            "example/greets=sqs:http://q/greets, example/alerts=sns:arn:aws:sns:us-east-1:1:alerts",
        )]))
        .expect("valid");
        assert_eq!(c.max_receives, 5);
        assert_eq!(c.max_delay_hop, Duration::from_secs(900));
        assert_eq!(
            c.egress[&TypeName::from_static("example/alerts")],
            Sink::Sns {
                topic_arn: "arn:aws:sns:us-east-1:1:alerts".into()
            }
        );
    }

    #[test]
    fn env_routes_and_module_routes_are_one_vocabulary() {
        let dir = std::env::temp_dir().join(format!("statefun-routes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("module.yaml");
        std::fs::write(
            &path,
            "kind: io.statefun-lambda.ingress.v1/sqs\nspec:\n  queues:\n    - queue: people\n      \
             valueType: example/GreetRequest\n      targets: [example/person, example/audit]\n      \
             id: { pointer: /name }\n",
        )
        .expect("write");
        let c = AwsConfig::from_lookup(vars(&[
            ("STATEFUN_MODULE", path.to_str().expect("utf-8 path")),
            (
                "STATEFUN_INGRESS_ROUTES",
                r#"[{"queue":"cmds","target":"auto"},{"queue":"people2","target":"example/person","typename":"example/GreetRequest","id":{"pointer":"/name"}}]"#,
            ),
        ]))
        .expect("valid");
        let module =
            Module::parse("m", &std::fs::read_to_string(&path).expect("read")).expect("module");
        assert_eq!(
            c.ingress_routes,
            vec![
                SqsIngress {
                    queue: "cmds".into(),
                    routing: SqsRouting::Routable
                },
                SqsIngress {
                    queue: "people2".into(),
                    routing: SqsRouting::Targets {
                        value_type: TypeName::from_static("example/GreetRequest"),
                        targets: vec![TypeName::from_static("example/person")],
                        id: IdFrom::Pointer("/name".into()),
                    }
                },
                module.sqs_ingresses[0].clone(),
            ]
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn errors_name_the_variable() {
        let base = vars(&[]);
        let missing =
            AwsConfig::from_lookup(|n: &str| base(n).filter(|_| n != "STATEFUN_STATE_TABLE"));
        assert_eq!(missing.unwrap_err().variable, "STATEFUN_STATE_TABLE");
        let bad = AwsConfig::from_lookup(vars(&[("STATEFUN_MAX_RECEIVES", "five")])).unwrap_err();
        assert_eq!(bad.variable, "STATEFUN_MAX_RECEIVES");
        let hop =
            AwsConfig::from_lookup(vars(&[("STATEFUN_MAX_DELAY_HOP_SECONDS", "901")])).unwrap_err();
        assert!(hop.reason.contains("900"), "{hop}");
        let egress =
            AwsConfig::from_lookup(vars(&[("STATEFUN_EGRESS", "example/x=ftp:y")])).unwrap_err();
        assert!(egress.to_string().contains("STATEFUN_EGRESS"), "{egress}");
        let route = AwsConfig::from_lookup(vars(&[(
            "STATEFUN_INGRESS_ROUTES",
            r#"[{"queue":"q","target":"example/person","typename":"example/GreetRequest"}]"#,
        )]))
        .unwrap_err();
        assert!(
            route.reason.contains("route 0: `id` is required"),
            "{route}"
        );
    }
}
