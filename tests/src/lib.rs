//! Shared setup of the cross-crate suites and benchmarks: a moto server on a free
//! loopback port (started here, stopped on drop), resources provisioned under a unique
//! prefix, and the handlers driven by the same poller `statefun-lambda poll` uses.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use statefun_aws::app::{Handlers, clients, sdk_config};
use statefun_aws::config::AwsConfig;
use statefun_aws::transport::Clients;
use statefun_core::ports::{Clock, SystemClock};
use statefun_core::{Address, Envelope, MessageId, Registry, TypedValue};
use statefun_infra::local::{Poller, QueueSettings, provision};

mod lambda_api;
pub mod plot;
pub mod stack;
pub use lambda_api::LambdaRuntimeApi;

pub use statefun_infra::emulators::{DynamoDbLocal, Moto};

/// Where the state table lives in a test: moto (with everything else), or AWS's own
/// DynamoDB Local (with SQS and SNS still on moto), for fidelity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dynamo {
    Moto,
    DynamoDbLocal,
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A provisioned deployment on its own moto server.
#[derive(Debug)]
pub struct Aws {
    pub moto: Moto,
    pub dynamodb_local: Option<DynamoDbLocal>,
    pub clients: Clients,
    pub config: AwsConfig,
    pub handlers: Arc<Handlers>,
    pub poller: Poller,
    pub prefix: String,
}

impl Aws {
    /// Provisions with `vars` for the optional settings; `extra_queues` are created
    /// first and their URLs are available as `{name}` placeholders in `vars`.
    pub async fn start(
        dynamo: Dynamo,
        registry: Registry,
        vars: &[(&str, &str)],
        extra_queues: &[&str],
    ) -> Aws {
        Self::start_with(
            dynamo,
            registry,
            vars,
            extra_queues,
            Arc::new(SystemClock),
            QueueSettings {
                visibility_timeout: Duration::from_secs(2),
                max_receive_count: 100,
            },
        )
        .await
    }

    pub async fn start_with(
        dynamo: Dynamo,
        registry: Registry,
        vars: &[(&str, &str)],
        extra_queues: &[&str],
        clock: Arc<dyn Clock>,
        settings: QueueSettings,
    ) -> Aws {
        let moto = Moto::start();
        let sdk = sdk_config(Some(&moto.url), true).await;
        let mut clients = clients(&sdk);
        let dynamodb_local = (dynamo == Dynamo::DynamoDbLocal).then(DynamoDbLocal::start);
        if let Some(local) = &dynamodb_local {
            clients.dynamodb =
                aws_sdk_dynamodb::Client::new(&sdk_config(Some(&local.url), true).await);
        }
        let prefix = format!(
            "t{}-{}",
            std::process::id(),
            UNIQUE.fetch_add(1, Ordering::SeqCst)
        );
        let mut placeholders = HashMap::new();
        for name in extra_queues {
            let url = clients
                .sqs
                .create_queue()
                .queue_name(format!("{prefix}-{name}"))
                .send()
                .await
                .expect("create queue")
                .queue_url()
                .expect("url")
                .to_string();
            placeholders.insert(format!("{{{name}}}"), url);
        }
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| {
                let mut v = v.to_string();
                for (p, url) in &placeholders {
                    v = v.replace(p, url);
                }
                (k.to_string(), v)
            })
            .collect();
        let config = provision(&clients, &prefix, settings, |name| vars.get(name).cloned())
            .await
            .expect("provision");
        let handlers = Arc::new(Handlers::new(&config, &clients, Arc::new(registry), clock));
        let poller = Poller::new(clients.clone(), Duration::ZERO);
        Aws {
            moto,
            dynamodb_local,
            clients,
            config,
            handlers,
            poller,
            prefix,
        }
    }

    pub fn url_of(&self, queue: &str) -> String {
        format!("{}/123456789012/{}-{queue}", self.moto.url, self.prefix)
    }

    /// Enqueues an ingress message.
    pub async fn send(&self, target: Address, value: TypedValue, key: &str) {
        let envelope = Envelope {
            id: MessageId::Keyed(format!("test:{key}")),
            target,
            caller: None,
            value,
        };
        statefun_infra::local::send(&self.clients, &self.config, &envelope)
            .await
            .expect("send");
    }

    /// Polls receive at most `n` records (1 to 10), as an event source's `BatchSize`.
    pub fn set_batch_size(&mut self, n: i32) {
        self.poller.set_batch_size(n);
    }

    /// One poll of the inbox through the dispatcher; returns records handled.
    pub async fn poll_inbox(&mut self) -> usize {
        let handlers = self.handlers.clone();
        let url = self.config.inbox_url.clone();
        self.poller
            .poll_once(&url, |e| async move { handlers.dispatcher.handle(e).await })
            .await
            .expect("poll inbox")
    }

    /// One poll of the delay queue through the timer forwarder.
    pub async fn poll_delay(&mut self) -> usize {
        let handlers = self.handlers.clone();
        let url = self.config.delay_url.clone();
        self.poller
            .poll_once(&url, |e| async move { handlers.forwarder.handle(e).await })
            .await
            .expect("poll delay")
    }

    /// Polls inbox and delay queue until both stay empty for `quiet`. Bounded by what
    /// it waits for, not by a wall-clock deadline (a busy machine is slow, not wrong):
    /// it gives up only after a million records, which no test sends.
    pub async fn drain(&mut self, quiet: Duration) {
        let mut idle_since = Instant::now();
        let mut handled = 0;
        while idle_since.elapsed() < quiet {
            assert!(
                handled < 1_000_000,
                "queues did not drain: a delivery loop?"
            );
            let n = self.poll_inbox().await + self.poll_delay().await;
            handled += n;
            if n > 0 {
                idle_since = Instant::now();
            } else {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Drains until inbox and delay queue hold nothing at all: no message visible, in
    /// flight or delayed, so every timer has fired. Bounded by the work, like `drain`.
    pub async fn settle(&mut self) {
        loop {
            self.drain(Duration::from_millis(200)).await;
            let inbox = self.config.inbox_url.clone();
            let delay = self.config.delay_url.clone();
            if self.held(&inbox).await + self.held(&delay).await == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Messages a queue holds: visible, in flight and delayed.
    async fn held(&self, url: &str) -> u64 {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let out = self
            .clients
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(A::All)
            .send()
            .await
            .expect("queue attributes");
        let attributes = out.attributes().cloned().unwrap_or_default();
        [
            A::ApproximateNumberOfMessages,
            A::ApproximateNumberOfMessagesNotVisible,
            A::ApproximateNumberOfMessagesDelayed,
        ]
        .iter()
        .filter_map(|a| attributes.get(a).and_then(|v| v.parse::<u64>().ok()))
        .sum()
    }

    pub async fn state(&self, address: &Address) -> serde_json::Value {
        statefun_infra::local::state(&self.clients, &self.config, address, SystemClock.now_ms())
            .await
            .expect("state")
    }

    /// Receives everything currently in a queue (deleting it): bodies and attributes.
    pub async fn take_all(&self, url: &str) -> Vec<(String, HashMap<String, String>)> {
        let mut out = Vec::new();
        for _ in 0..20 {
            let r = self
                .clients
                .sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .message_attribute_names("All")
                .send()
                .await
                .expect("receive");
            if r.messages().is_empty() {
                break;
            }
            for m in r.messages() {
                let attrs = m
                    .message_attributes()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.string_value().unwrap_or_default().to_string()))
                    .collect();
                out.push((m.body().unwrap_or_default().to_string(), attrs));
                self.clients
                    .sqs
                    .delete_message()
                    .queue_url(url)
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .send()
                    .await
                    .expect("delete");
            }
        }
        out
    }
}

/// The Python remote functions (`tests/python/functions.py`, official StateFun SDK)
/// served by aiohttp on a loopback port; stopped on drop.
#[derive(Debug)]
pub struct PythonFunctions {
    child: Child,
    pub port: u16,
}

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("STATEFUN_PYTHON") {
        return p.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv-sdk/bin/python");
    assert!(
        venv.exists(),
        "the StateFun Python SDK venv is missing at {}: run `python3 -m venv .venv-sdk && \
         .venv-sdk/bin/pip install -r tests/python/requirements.txt` (scripts/test.sh does)",
        venv.display()
    );
    venv
}

/// An SQS event as Lambda would deliver it, for handlers called without a queue.
pub fn sqs_event(envelopes: &[Envelope]) -> aws_lambda_events::event::sqs::SqsEvent {
    let records: Vec<serde_json::Value> = envelopes
        .iter()
        .enumerate()
        .map(|(i, e)| {
            serde_json::json!({
                "messageId": format!("{}-{i}", e.id),
                "receiptHandle": "-",
                "body": statefun_aws::envelope::encode(e),
                "attributes": {"ApproximateReceiveCount": "1"},
                "eventSource": "aws:sqs",
            })
        })
        .collect();
    serde_json::from_value(serde_json::json!({ "Records": records })).expect("event")
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port()
}

impl PythonFunctions {
    pub fn start(port: u16) -> PythonFunctions {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/functions.py");
        let mut child = Command::new(python())
            .arg(script)
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the Python functions");
        let mut stdout = child.stdout.take().expect("stdout");
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !String::from_utf8_lossy(&seen).contains("ready") {
            match stdout.read(&mut byte) {
                Ok(1) => seen.push(byte[0]),
                _ => panic!(
                    "the Python functions did not start: {}",
                    String::from_utf8_lossy(&seen)
                ),
            }
        }
        // Keep reading: aiohttp prints its banner more than once, and a closed pipe
        // kills the server with BrokenPipeError on the next print.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        PythonFunctions { child, port }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Queues `count` faults of `kind` (500, garbage, ctype, slow) on the /fault route.
    pub fn inject(&self, kind: &str, count: u32) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        let req = format!(
            "POST /control?fault={kind}&count={count} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
}

impl Drop for PythonFunctions {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A module for the Python functions on `port` (`example/person`, `example/greeter`,
/// `py/*` on the SDK route, `faulty/*` behind the fault route with short timeouts,
/// `raw/*` on hand-written endpoints).
pub fn python_module(port: u16) -> String {
    format!(
        r#"kind: io.statefun.endpoints.v2/http
spec:
  functions: example/person
  urlPathTemplate: http://127.0.0.1:{port}/statefun
---
kind: io.statefun.endpoints.v2/http
spec:
  functions: example/greeter
  urlPathTemplate: http://127.0.0.1:{port}/statefun
---
kind: io.statefun.endpoints.v2/http
spec:
  functions: py/*
  urlPathTemplate: http://127.0.0.1:{port}/statefun
  maxNumBatchRequests: 50
---
kind: io.statefun.endpoints.v2/http
spec:
  functions: faulty/*
  urlPathTemplate: http://127.0.0.1:{port}/fault
  transport:
    call: 2s
    connect: 1s
---
kind: io.statefun.endpoints.v2/http
spec:
  functions: raw/*
  urlPathTemplate: http://127.0.0.1:{port}/raw/{{function.name}}
"#
    )
}

/// An API Gateway HTTP API (payload 2.0) request as JSON, as Lambda hands it to the HTTP
/// ingress.
pub fn api_gateway_request(
    method: &str,
    path: (&str, &str, &str),
    headers: &[(&str, &str)],
    body: &str,
    base64: bool,
) -> serde_json::Value {
    let headers: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
        .collect();
    serde_json::json!({
        "version": "2.0",
        "routeKey": "POST /{namespace}/{type}/{id}",
        "rawPath": format!("/{}/{}/{}", path.0, path.1, path.2),
        "headers": headers,
        "pathParameters": {"namespace": path.0, "type": path.1, "id": path.2},
        "requestContext": {"requestId": format!("req-{}-{}", path.2, body.len()), "http": {"method": method, "path": "/", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "test"}},
        "body": body,
        "isBase64Encoded": base64,
    })
}
