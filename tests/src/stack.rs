//! The real `template.yaml`, deployed to a local AWS (MiniStack, no Docker) the way a
//! user deploys it: a `statefun-lambda` binary laid out as `sam build` leaves it (each
//! function's code in its own directory), `sam deploy` with `AWS_ENDPOINT_URL`, then
//! `infra/ministack-fixups.sh` (the MiniStack gaps it names: event-source concurrency,
//! HTTP API routes, the batch-send action name under IAM). Then the public interfaces to drive it: the HTTP
//! API (SigV4-signed or not), the queues, CloudWatch Logs and `statefun-lambda state`.
//! Used by the deployed-stack suite and its benchmark.
//!
//! awscli v1's `sqs` commands ignore `AWS_ENDPOINT_URL`: `--endpoint-url` is passed.

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

/// The repository's root: the template, `infra/`, the tool venvs.
fn tools() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
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
    options: Options,
    /// `sam deploy --parameter-overrides` of the first deploy.
    parameters: Vec<String>,
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
            options: options.clone(),
            parameters: Vec::new(),
            prefix: prefix.to_string(),
            api: String::new(),
            egress: String::new(),
            people: String::new(),
        };
        stack.lay_out(&options);
        let (egress, egress_arn) = stack.create_queue(&format!("{prefix}-out"));
        let (people, people_arn) = stack.create_queue(&format!("{prefix}-people"));
        // A JSON value goes to `--parameter-overrides` quoted, its quotes escaped.
        let ingress_routes = format!(
            r#"IngressRoutes="{}""#,
            json!([{"queue": format!("{prefix}-people"), "target": "example/person",
                "id": {"pointer": "/name"}, "typename": "example/GreetRequest"}])
            .to_string()
            .replace('"', "\\\"")
        );
        stack.parameters = vec![
            format!("Prefix={prefix}"),
            "HttpAuth=IAM".into(),
            "Architecture=x86_64".into(),
            format!("EgressRoutes=example/greets=sqs:{egress},example/basket-events=sqs:{egress}"),
            format!("EgressQueueArn={egress_arn}"),
            format!("IngressQueueArn={people_arn}"),
            ingress_routes,
        ];
        stack.sam_deploy(&[], "CREATE_COMPLETE");
        stack.egress = egress;
        stack.people = people;
        stack.fix_up();
        stack
    }

    /// `sam deploy` of the laid-out template with the stack's parameters and
    /// `overrides`; the stack must reach `status`.
    fn sam_deploy(&self, overrides: &[&str], status: &str) {
        let mut args = vec![
            "deploy",
            "--template-file",
            "template.yaml",
            "--stack-name",
            &self.prefix,
            "--capabilities",
            "CAPABILITY_IAM",
            "CAPABILITY_AUTO_EXPAND",
            "--resolve-s3",
            "--no-confirm-changeset",
            "--no-fail-on-empty-changeset",
            "--parameter-overrides",
        ];
        args.extend(self.parameters.iter().map(String::as_str));
        args.extend(overrides);
        self.tool(&tools().join(".venv-deploy/bin/sam"), &args);
        let described = json(&self.aws(&[
            "cloudformation",
            "describe-stacks",
            "--stack-name",
            &self.prefix,
        ]));
        assert_eq!(described["Stacks"][0]["StackStatus"], status, "{described}");
    }

    /// `infra/ministack-fixups.sh` (idempotent), which also says the API's URL.
    fn fix_up(&mut self) {
        self.api = self
            .tool(
                Path::new("bash"),
                &[
                    tools()
                        .join("infra/ministack-fixups.sh")
                        .to_str()
                        .expect("path"),
                    &self.prefix,
                ],
            )
            .trim()
            .to_string();
    }

    /// `sam deploy` of another build over the running stack, as an upgrade or a
    /// rollback does: `binary` as every function's code, the first deploy's parameters
    /// with `overrides` (`Name=value`). The stack keeps serving while it updates.
    pub fn redeploy(&mut self, binary: &Path, overrides: &[&str]) {
        self.binary = binary.to_path_buf();
        let options = self.options.clone();
        self.lay_out(&options);
        self.sam_deploy(overrides, "UPDATE_COMPLETE");
        self.fix_up();
    }

    /// The build whose code the functions run now (and whose CLI `state` uses).
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Runs a command the way a user would against this MiniStack: `AWS_ENDPOINT_URL`
    /// and test credentials set, awscli on the `PATH`.
    fn tool(&self, program: &Path, args: &[&str]) -> String {
        let path = format!(
            "{}:{}",
            ministack_venv().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new(program)
            .current_dir(self.dir.path())
            .args(args)
            .env("PATH", path)
            .env("AWS_ENDPOINT_URL", &self.ministack.url)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("SAM_CLI_TELEMETRY", "0")
            .output()
            .expect("run a deploy tool");
        assert!(
            out.status.success(),
            "{program:?} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Runs `aws` (awscli from the MiniStack venv) against this MiniStack.
    pub fn aws(&self, args: &[&str]) -> String {
        let args: Vec<&str> = ["--endpoint-url", &self.ministack.url, "--output", "json"]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        self.tool(&ministack_venv().join("bin/aws"), &args)
    }

    /// A queue's URL from its name.
    pub fn queue_url(&self, name: &str) -> String {
        format!("{}/000000000000/{name}", self.ministack.url)
    }

    /// The template as `sam build` leaves it (each function's code in its directory),
    /// with `options.env` added.
    fn lay_out(&self, options: &Options) {
        let template = tools().join("template.yaml");
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
            if resource["Type"] == "AWS::Serverless::Function" {
                let r = resource.as_object_mut().expect("resource");
                r.remove("Metadata");
                r.get_mut("Properties").expect("properties")["CodeUri"] = Json::from("fn");
            }
        }
        let dir = self.dir.path();
        std::fs::create_dir_all(dir.join("fn")).expect("fn dir");
        std::fs::copy(&self.binary, dir.join("fn/bootstrap")).expect("copy the binary");
        // The nested monitoring template, where the template's Location points.
        std::fs::create_dir_all(dir.join("infra")).expect("infra dir");
        std::fs::copy(
            tools().join("infra/monitoring.yaml"),
            dir.join("infra/monitoring.yaml"),
        )
        .expect("copy infra/monitoring.yaml");
        std::fs::write(
            dir.join("template.yaml"),
            serde_norway::to_string(&template).expect("YAML"),
        )
        .expect("write the template");
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
        self.load_in_background(requests, per_second).results()
    }

    fn python(&self, command: &str, args: &[&str], input: &str) -> String {
        self.spawn_python(command, args, input).output()
    }

    fn spawn_python(&self, command: &str, args: &[&str], input: &str) -> Running {
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
        Running {
            child,
            command: command.to_string(),
        }
    }

    /// [`Stack::load`] in the background: the requests go on while the caller does
    /// something else to the stack (a redeploy); [`Running::results`] waits for them.
    pub fn load_in_background(&self, requests: &[Json], per_second: f64) -> Running {
        let input: String = requests.iter().map(|r| format!("{r}\n")).collect();
        self.spawn_python(
            "load",
            &[&format!("{}-state", self.prefix), &per_second.to_string()],
            &input,
        )
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

    /// The messages of a function's CloudWatch log group (`dispatcher`, …), oldest
    /// first.
    pub fn log_lines(&self, function: &str) -> Vec<String> {
        let events = json(&self.aws(&[
            "logs",
            "filter-log-events",
            "--log-group-name",
            &format!("/aws/lambda/{}-{function}", self.prefix),
        ]));
        let mut lines: Vec<(u64, String)> = events["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| Some((e["timestamp"].as_u64()?, e["message"].as_str()?.to_string())))
            .collect();
        lines.sort_by_key(|(timestamp, _)| *timestamp);
        lines.into_iter().map(|(_, line)| line).collect()
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

/// A `stack.py` run in the background.
#[derive(Debug)]
pub struct Running {
    child: std::process::Child,
    command: String,
}

impl Running {
    fn output(self) -> String {
        let out = self.child.wait_with_output().expect("python");
        assert!(out.status.success(), "stack.py {} failed", self.command);
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Waits for a `load`: one line per request, as [`Stack::load`] returns them.
    pub fn results(self) -> Vec<Json> {
        self.output().lines().map(json).collect()
    }
}
