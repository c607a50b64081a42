//! The real `template.yaml`, deployed to a local AWS (MiniStack, no Docker) with a
//! `statefun-lambda` binary laid out as `sam build` leaves it, and the public interfaces
//! to drive it: the HTTP API (SigV4-signed or not), the queues, CloudWatch Logs and
//! `statefun-lambda state`. Used by the deployed-stack suite and its benchmark.
//!
//! MiniStack 1.5.33 gaps, worked around in this setup only (never in the template):
//! - a `Number` parameter reaches `ScalingConfig.MaximumConcurrency` as a string and
//!   stops its SQS poller: the deployed copy has the literal default (10);
//! - it ignores the OpenAPI body SAM generates for an `HttpApi`: the integration and
//!   routes are created after deploy with `apigatewayv2`;
//! - `cloudformation package` (awscli v1) ignores the Globals `CodeUri`: every function
//!   of the copy names its code directory, as `sam build` output does;
//! - awscli v1's `sqs` commands ignore `AWS_ENDPOINT_URL`: `--endpoint-url` is passed;
//! - with `AUTH=true` it authorises `SendMessageBatch` as `sqs:SendMessageBatch`, which
//!   is not an IAM action on AWS (a batch is authorised by `sqs:SendMessage`, which the
//!   template grants): [`Stack::deploy`] adds that name beside each `sqs:SendMessage`
//!   of the deployed copy, and nothing else.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use statefun_infra::emulators::{MiniStack, ministack_venv};

/// How long a wait may see no progress before it is called a hang (not a speed target).
pub const STALL: Duration = Duration::from_secs(120);

/// Polls `check` every 200 ms; gives up after [`STALL`] without the condition.
pub fn until(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < STALL, "never: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn json(text: &str) -> Json {
    serde_json::from_str(text).unwrap_or(Json::Null)
}

/// What a deployment is given beyond the template's defaults.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Variables added to every function's environment (the functions' own settings,
    /// such as `STATEFUN_BASKET_IDLE_SECS`).
    pub env: Vec<(String, String)>,
    /// MiniStack enforces IAM (`AUTH=true`): every call needs the permission the
    /// template's roles grant.
    pub iam: bool,
}

/// A deployed stack on its own MiniStack; dropping it stops MiniStack and its Lambdas.
#[derive(Debug)]
pub struct Stack {
    pub ministack: MiniStack,
    dir: tempfile::TempDir,
    binary: PathBuf,
    pub prefix: String,
    /// `…/_aws/execute-api/<api>/$default`.
    pub api: String,
    /// The egress queue every egress is routed to.
    pub egress: String,
    /// The user's queue the SQS ingress routes.
    pub people: String,
}

impl Stack {
    /// Deploys `template.yaml` with `binary` as every function's code, `HttpAuth=IAM`,
    /// an egress queue (`<prefix>-out`, for `example/greets` and `example/basket-events`)
    /// and an ingress queue (`<prefix>-people`, routed to `example/person`).
    pub fn deploy(binary: &Path, prefix: &str, options: Options) -> Stack {
        let ministack = if options.iam {
            MiniStack::start_with_iam()
        } else {
            MiniStack::start()
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let mut stack = Stack {
            ministack,
            dir,
            binary: binary.to_path_buf(),
            prefix: prefix.to_string(),
            api: String::new(),
            egress: String::new(),
            people: String::new(),
        };
        stack.lay_out(&options);
        let (egress, egress_arn) = stack.create_queue(&format!("{prefix}-out"));
        let (people, people_arn) = stack.create_queue(&format!("{prefix}-people"));
        let bucket = format!("s3://{prefix}-artifacts");
        stack.aws(&["s3", "mb", &bucket]);
        stack.aws(&[
            "cloudformation",
            "package",
            "--template-file",
            "template.yaml",
            "--s3-bucket",
            &bucket[5..],
            "--output-template-file",
            "packaged.yaml",
        ]);
        let ingress_routes = format!(
            r#"IngressRoutes=[{{"queue":"{prefix}-people","target":"example/person","id":{{"pointer":"/name"}},"typename":"example/GreetRequest"}}]"#
        );
        stack.aws(&[
            "cloudformation",
            "deploy",
            "--template-file",
            "packaged.yaml",
            "--stack-name",
            prefix,
            "--capabilities",
            "CAPABILITY_IAM",
            "CAPABILITY_AUTO_EXPAND",
            "--parameter-overrides",
            &format!("Prefix={prefix}"),
            "HttpAuth=IAM",
            "Architecture=x86_64",
            &format!("EgressRoutes=example/greets=sqs:{egress},example/basket-events=sqs:{egress}"),
            &format!("EgressQueueArn={egress_arn}"),
            &format!("IngressQueueArn={people_arn}"),
            &ingress_routes,
        ]);
        let status =
            json(&stack.aws(&["cloudformation", "describe-stacks", "--stack-name", prefix]));
        assert_eq!(
            status["Stacks"][0]["StackStatus"], "CREATE_COMPLETE",
            "{status}"
        );
        stack.egress = egress;
        stack.people = people;
        stack.api = stack.route_http_api();
        stack
    }

    /// Runs `aws` (awscli from the MiniStack venv) against this MiniStack.
    pub fn aws(&self, args: &[&str]) -> String {
        let out = Command::new(ministack_venv().join("bin/aws"))
            .current_dir(self.dir.path())
            .args(["--endpoint-url", &self.ministack.url, "--output", "json"])
            .args(args)
            .env("AWS_ENDPOINT_URL", &self.ministack.url)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .output()
            .expect("run aws");
        assert!(
            out.status.success(),
            "aws {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// A queue's URL from its name.
    pub fn queue_url(&self, name: &str) -> String {
        format!("{}/000000000000/{name}", self.ministack.url)
    }

    /// The template as `sam build` leaves it (code per function), with the gaps above
    /// worked around and `options.env` added.
    fn lay_out(&self, options: &Options) {
        let template = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../template.yaml");
        let mut template: Json =
            serde_norway::from_str(&std::fs::read_to_string(template).expect("template.yaml"))
                .expect("YAML");
        if let Some(globals) = template["Globals"]["Function"].as_object_mut() {
            globals.remove("CodeUri");
        }
        for (name, value) in &options.env {
            template["Globals"]["Function"]["Environment"]["Variables"][name] =
                Json::from(value.as_str());
        }
        for resource in template["Resources"]
            .as_object_mut()
            .expect("resources")
            .values_mut()
        {
            match resource["Type"].as_str() {
                Some("AWS::Serverless::Function") => {
                    let r = resource.as_object_mut().expect("resource");
                    r.remove("Metadata");
                    r.get_mut("Properties").expect("properties")["CodeUri"] = Json::from("fn");
                    if let Some(events) = r["Properties"]["Events"].as_object_mut() {
                        for event in events.values_mut() {
                            if let Some(limit) = event
                                .pointer_mut("/Properties/ScalingConfig/MaximumConcurrency")
                                .filter(|limit| limit.is_object())
                            {
                                *limit = Json::from(10);
                            }
                        }
                    }
                }
                Some("AWS::IAM::Role") => {
                    for policy in resource["Properties"]["Policies"]
                        .as_array_mut()
                        .into_iter()
                        .flatten()
                    {
                        for statement in policy["PolicyDocument"]["Statement"]
                            .as_array_mut()
                            .into_iter()
                            .flatten()
                        {
                            grant_batch_name(statement);
                        }
                    }
                }
                _ => {}
            }
        }
        let dir = self.dir.path();
        std::fs::create_dir_all(dir.join("fn")).expect("fn dir");
        std::fs::copy(&self.binary, dir.join("fn/bootstrap")).expect("copy the binary");
        std::fs::write(
            dir.join("template.yaml"),
            serde_norway::to_string(&template).expect("YAML"),
        )
        .expect("write the template");
    }

    /// The HTTP API's integration and routes (the MiniStack gap above); its base URL.
    fn route_http_api(&self) -> String {
        let api = json(&self.aws(&[
            "cloudformation",
            "describe-stack-resource",
            "--stack-name",
            &self.prefix,
            "--logical-resource-id",
            "HttpApiIam",
        ]))["StackResourceDetail"]["PhysicalResourceId"]
            .as_str()
            .expect("api id")
            .to_string();
        let function = json(&self.aws(&[
            "lambda",
            "get-function",
            "--function-name",
            &format!("{}-http-ingress", self.prefix),
        ]))["Configuration"]["FunctionArn"]
            .as_str()
            .expect("function arn")
            .to_string();
        let integration = json(&self.aws(&[
            "apigatewayv2",
            "create-integration",
            "--api-id",
            &api,
            "--integration-type",
            "AWS_PROXY",
            "--integration-uri",
            &function,
            "--payload-format-version",
            "2.0",
        ]))["IntegrationId"]
            .as_str()
            .expect("integration")
            .to_string();
        for method in ["POST", "PUT"] {
            self.aws(&[
                "apigatewayv2",
                "create-route",
                "--api-id",
                &api,
                "--route-key",
                &format!("{method} /{{namespace}}/{{type}}/{{id}}"),
                "--target",
                &format!("integrations/{integration}"),
                "--authorization-type",
                "AWS_IAM",
            ]);
        }
        format!("{}/_aws/execute-api/{api}/$default", self.ministack.url)
    }

    /// A standard queue: its URL and ARN.
    fn create_queue(&self, name: &str) -> (String, String) {
        let url = json(&self.aws(&["sqs", "create-queue", "--queue-name", name]))["QueueUrl"]
            .as_str()
            .expect("queue url")
            .to_string();
        let attributes = self.aws(&[
            "sqs",
            "get-queue-attributes",
            "--queue-url",
            &url,
            "--attribute-names",
            "QueueArn",
        ]);
        let arn = json(&attributes)["Attributes"]["QueueArn"]
            .as_str()
            .expect("arn")
            .to_string();
        (url, arn)
    }

    /// A POST to the HTTP API (`path` under the API's base), SigV4-signed or not.
    pub fn post(&self, path: &str, content_type: &str, body: &str, signed: bool) -> (u16, String) {
        let line = json!({"path": path, "type": content_type, "body": body});
        let out = self.python(
            "post",
            &[if signed { "signed" } else { "unsigned" }],
            &format!("{line}\n"),
        );
        let answer = json(out.lines().next().unwrap_or_default());
        (
            answer["status"].as_u64().unwrap_or_else(|| panic!("{out}")) as u16,
            answer["body"].as_str().unwrap_or_default().to_string(),
        )
    }

    /// Signed POSTs, one after the other, paced at `per_second`; each request's send
    /// time (seconds since the epoch), status and the time its address's state
    /// (`table` item of `pk`) was first seen, as `stack.py load` reports them.
    pub fn load(&self, requests: &[Json], per_second: f64) -> Vec<Json> {
        let input: String = requests.iter().map(|r| format!("{r}\n")).collect();
        self.python(
            "load",
            &[&format!("{}-state", self.prefix), &per_second.to_string()],
            &input,
        )
        .lines()
        .map(json)
        .collect()
    }

    fn python(&self, command: &str, args: &[&str], input: &str) -> String {
        use std::io::Write;
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("stack.py");
        let mut child = Command::new(ministack_venv().join("bin/python"))
            .arg(script)
            .arg(command)
            .arg(&self.api)
            .arg(&self.ministack.url)
            .args(args)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write requests");
        let out = child.wait_with_output().expect("python");
        assert!(out.status.success(), "stack.py {command} failed");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// `statefun-lambda state` of one address of the deployed stack.
    pub fn state(&self, function_type: &str, id: &str) -> Json {
        let out = Command::new(&self.binary)
            .args([
                "state",
                "--prefix",
                &self.prefix,
                "--endpoint-url",
                &self.ministack.url,
                function_type,
                id,
            ])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .output()
            .expect("statefun-lambda state");
        json(&String::from_utf8_lossy(&out.stdout))
    }

    /// What a queue has now (up to 10 messages, with their attributes); received, so
    /// hidden from the stack's own consumers for the queue's visibility timeout.
    pub fn receive(&self, queue_url: &str) -> Vec<Json> {
        let got = json(&self.aws(&[
            "sqs",
            "receive-message",
            "--queue-url",
            queue_url,
            "--max-number-of-messages",
            "10",
            "--message-attribute-names",
            "All",
        ]));
        got["Messages"].as_array().cloned().unwrap_or_default()
    }

    /// The bodies of what a queue has now, as JSON.
    pub fn receive_bodies(&self, queue_url: &str) -> Vec<Json> {
        self.receive(queue_url)
            .iter()
            .map(|m| json(m["Body"].as_str().unwrap_or_default()))
            .collect()
    }

    /// Messages a queue (by name) holds: visible, in flight and delayed.
    pub fn queued(&self, name: &str) -> u64 {
        let attributes = json(&self.aws(&[
            "sqs",
            "get-queue-attributes",
            "--queue-url",
            &self.queue_url(name),
            "--attribute-names",
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ]))["Attributes"]
            .clone();
        ["", "NotVisible", "Delayed"]
            .iter()
            .map(|kind| {
                attributes[format!("ApproximateNumberOfMessages{kind}")]
                    .as_str()
                    .and_then(|n| n.parse::<u64>().ok())
                    .expect("a count")
            })
            .sum()
    }

    /// Waits until the inbox and the delay queue hold nothing.
    pub fn settle(&self) {
        let queues = [
            format!("{}-inbox.fifo", self.prefix),
            format!("{}-delay", self.prefix),
        ];
        until("the inbox and the delay queue empty", || {
            queues.iter().all(|queue| self.queued(queue) == 0)
        });
    }

    /// The messages of a function's CloudWatch log group (`dispatcher`, …), oldest first.
    pub fn log_lines(&self, function: &str) -> Vec<String> {
        let events = json(&self.aws(&[
            "logs",
            "filter-log-events",
            "--log-group-name",
            &format!("/aws/lambda/{}-{function}", self.prefix),
        ]));
        events["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["message"].as_str().map(str::to_string))
            .collect()
    }

    /// A function's EMF lines.
    pub fn emf(&self, function: &str) -> Vec<Json> {
        self.log_lines(function)
            .iter()
            .filter(|line| line.contains("CloudWatchMetrics"))
            .map(|line| json(line))
            .collect()
    }

    /// A metric summed over a function's EMF lines.
    pub fn emf_sum(&self, function: &str, metric: &str) -> u64 {
        self.emf(function)
            .iter()
            .filter_map(|line| line[metric].as_u64())
            .sum()
    }

    /// The processes serving one role of this stack (`dispatcher`, …).
    pub fn lambda_processes(&self, role: &str) -> Vec<u32> {
        let role = format!("STATEFUN_ROLE={role}");
        let table = format!("STATEFUN_STATE_TABLE={}-state", self.prefix);
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                    let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
                    vars.contains(&role.as_bytes()) && vars.contains(&table.as_bytes())
                })
            })
            .collect()
    }
}

/// Adds `sqs:SendMessageBatch` where a statement allows `sqs:SendMessage` (the
/// MiniStack gap above).
fn grant_batch_name(statement: &mut Json) {
    if let Some(Json::Array(branches)) = statement.get_mut("Fn::If") {
        branches.iter_mut().skip(1).for_each(grant_batch_name);
        return;
    }
    let Some(action) = statement.get_mut("Action") else {
        return;
    };
    let mut actions: Vec<Json> = match action {
        Json::String(one) => vec![Json::from(one.as_str())],
        Json::Array(many) => many.clone(),
        _ => return,
    };
    if actions.iter().any(|a| a == "sqs:SendMessage") {
        actions.push(Json::from("sqs:SendMessageBatch"));
        *action = Json::Array(actions);
    }
}
