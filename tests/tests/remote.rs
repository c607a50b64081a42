//! Remote functions written with the official StateFun Python SDK (PyPI
//! `apache-flink-statefun`), served by aiohttp on loopback: in the embedded runtime and
//! through the AWS path on the emulator.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use statefun_core::module::Module;
use statefun_core::ports::{Clock, ManualClock, SystemClock};
use statefun_core::{Address, EgressRecord, Registry, TypeName, TypedValue};
use statefun_e2e::{Aws, Dynamo, PythonFunctions, free_port, python_module};
use statefun_embedded::{EgressSink, EmbeddedConfig, HttpFunctions, Runtime, RuntimeHandle};
use statefun_examples::greeter::GreetRequest;

type Records = Arc<Mutex<Vec<EgressRecord>>>;

struct Capture(Records);
impl EgressSink for Capture {
    fn emit(&mut self, record: &EgressRecord) -> std::io::Result<()> {
        self.0.lock().expect("records").push(record.clone());
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The examples plus `rs/echo`, which sends every message back to its caller.
fn registry() -> Registry {
    let mut r = statefun_examples::registry(Default::default()).expect("registry");
    r.register_fn("rs/echo", vec![], |ctx, msg| {
        if let Some(caller) = ctx.caller().cloned() {
            ctx.send_value(caller, msg.clone());
        }
        Ok(())
    })
    .expect("register");
    r
}

struct Embedded {
    runtime: Option<Runtime>,
    handle: RuntimeHandle,
    egress: Records,
    _dir: tempfile::TempDir,
}

impl Embedded {
    fn start(module_port: u16, clock: Arc<dyn Clock>) -> Embedded {
        let dir = tempfile::tempdir().expect("tempdir");
        let module = Module::parse("module.yaml", &python_module(module_port)).expect("module");
        let mut config = EmbeddedConfig::new(dir.path());
        config.remote = Some(Arc::new(HttpFunctions::new(module).expect("clients")));
        let egress: Records = Arc::default();
        let runtime =
            Runtime::start_with_clock(registry(), config, Box::new(Capture(egress.clone())), clock)
                .expect("start");
        let handle = runtime.handle();
        Embedded {
            runtime: Some(runtime),
            handle,
            egress,
            _dir: dir,
        }
    }

    async fn send(&self, to: Address, value: TypedValue) {
        self.handle.submit(to, value, None).await.expect("accepted");
    }

    fn state(&self, a: &Address) -> Json {
        self.handle.state_json(a).expect("state")
    }

    /// Waits until the state of `a` passes `check`, for as long as the runtime works.
    async fn until(&self, a: &Address, check: impl Fn(&Json) -> bool) -> Json {
        let reached = self
            .handle
            .settles(|| check(&self.state(a)))
            .await
            .expect("status");
        let s = self.state(a);
        assert!(reached, "state of {a} never got there: {s}");
        s
    }

    async fn settle(&self) {
        self.handle.settle().await.expect("status");
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        if let Some(r) = self.runtime.take() {
            let _ = r.shutdown();
        }
    }
}

/// The text of a Kafka egress record's value: not JSON, so it is base64 (the one rule).
fn text_value(record: &Json) -> String {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(record["value_base64"].as_str().expect("value_base64"))
        .expect("base64");
    String::from_utf8(bytes).expect("utf-8")
}

fn at(t: &'static str, id: &str) -> Address {
    Address::new(TypeName::from_static(t), id)
}

fn text(s: &str) -> TypedValue {
    TypedValue::of(&s.to_string())
}

fn greet(name: &str) -> TypedValue {
    TypedValue::of(&GreetRequest {
        name: name.into(),
        visits: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_playground_greeter_runs_in_the_embedded_runtime() {
    let py = PythonFunctions::start(free_port());
    let e = Embedded::start(py.port, Arc::new(SystemClock));
    let bob = at("example/person", "Bob");
    e.send(bob.clone(), greet("Bob")).await;
    e.send(bob.clone(), greet("Bob")).await;
    let s = e.until(&bob, |s| s["state"]["visits"]["value"] == 2).await;
    assert_eq!(s["state"]["visits"]["typename"], "io.statefun.types/int");
    let greeted = e
        .handle
        .settles(|| e.egress.lock().expect("records").len() >= 2)
        .await
        .expect("status");
    assert!(greeted, "no greetings");
    let records: Vec<Json> = e
        .egress
        .lock()
        .expect("records")
        .iter()
        .map(statefun_core::view::egress_json)
        .collect();
    assert_eq!(records[0]["egress"], "example/greets");
    assert_eq!(
        records[0]["typename"],
        "type.googleapis.com/io.statefun.sdk.egress.KafkaProducerRecord"
    );
    assert_eq!(
        records[0]["value"],
        serde_json::json!({"topic": "greetings", "key": "Bob", "value_base64": "SGkgQm9iLCBmaXJzdCB2aXNpdA=="})
    );
    assert_eq!(text_value(&records[1]["value"]), "Hi Bob, visit number 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiring_state_declared_in_python_expires_on_the_runtimes_clock() {
    let py = PythonFunctions::start(free_port());
    let clock = Arc::new(ManualClock::new(1_000_000));
    let e = Embedded::start(py.port, clock.clone());
    let a = at("py/expiring", "x");
    e.send(a.clone(), text("set")).await;
    let first = e.until(&a, |s| s["version"] != 0).await["version"]
        .as_u64()
        .expect("version");
    clock.advance(Duration::from_millis(1500));
    e.send(a.clone(), text("touch")).await;
    e.until(&a, |s| s["version"].as_u64().is_some_and(|v| v > first))
        .await;
    clock.advance(Duration::from_millis(1000));
    let s = e.state(&a);
    assert!(
        s["state"].get("written").is_none(),
        "after-write expired 2 s after the write: {s}"
    );
    assert_eq!(
        s["state"]["called"]["value"], 1,
        "after-call kept alive by the call at 1.5 s: {s}"
    );
    clock.advance(Duration::from_millis(1100));
    assert!(
        e.state(&a)["state"].get("called").is_none(),
        "2 s after the last call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_to_rust_to_python_keeps_every_type_including_zero_and_empty() {
    let py = PythonFunctions::start(free_port());
    let e = Embedded::start(py.port, Arc::new(SystemClock));
    let cases = [
        ("int:0", "int", Json::from(0)),
        ("long:0", "long", Json::from(0)),
        ("string:", "string", Json::from("")),
        ("bool:false", "bool", Json::from(false)),
        ("pair:x", "pair", serde_json::json!({"a": "x", "n": 0})),
        ("int:-7", "int", Json::from(-7)),
        (
            "long:9007199254740993",
            "long",
            Json::from(9007199254740993i64),
        ),
        ("string:hé 🙂", "string", Json::from("hé 🙂")),
        ("bool:true", "bool", Json::from(true)),
    ];
    for (i, (command, cell, expected)) in cases.iter().enumerate() {
        let a = at("py/pingpong", &format!("p{i}"));
        e.send(a.clone(), text(command)).await;
        let s = e.until(&a, |s| s["state"]["returns"]["value"] == 1).await;
        assert_eq!(&s["state"][*cell]["value"], expected, "{command}: {s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_after_cancel_and_egress_from_python() {
    let py = PythonFunctions::start(free_port());
    let e = Embedded::start(py.port, Arc::new(SystemClock));
    let t = at("py/timer", "t");
    let counter = at("example/counter", "t");
    let started = Instant::now();
    e.send(t.clone(), text("later:keep")).await;
    e.send(t.clone(), text("later:drop")).await;
    e.send(t.clone(), text("cancel:drop")).await;
    e.send(t.clone(), text("egress")).await;
    e.until(&counter, |s| s["state"]["count"]["value"] == 1)
        .await;
    assert!(started.elapsed() >= Duration::from_secs(1), "arrived early");
    e.settle().await;
    assert_eq!(
        e.state(&counter)["state"]["count"]["value"],
        1,
        "the cancelled one must not arrive"
    );
    let records = e.egress.lock().expect("records").clone();
    let out: Vec<_> = records
        .iter()
        .filter(|r| r.egress.as_str() == "py/out")
        .collect();
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].value.decode::<String>().as_deref(),
        Ok("from python")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_failures_are_retried_and_failed_back_without_loss() {
    let py = PythonFunctions::start(free_port());
    let e = Embedded::start(py.port, Arc::new(SystemClock));
    let c = at("faulty/counter", "x");
    let count = |n: i64| move |s: &Json| s["state"]["count"]["value"] == n;
    // Within one call: 500s, a garbage body and a wrong content type are retried.
    py.inject("500", 2);
    py.inject("garbage", 1);
    py.inject("ctype", 1);
    e.send(c.clone(), TypedValue::of(&1i64)).await;
    e.until(&c, count(1)).await;
    // A response slower than the 2 s call timeout is retried.
    py.inject("slow", 1);
    e.send(c.clone(), TypedValue::of(&10i64)).await;
    e.until(&c, count(11)).await;
    // More failures than one call timeout absorbs: the message fails back to the retry
    // path and is applied once the endpoint recovers.
    py.inject("500", 40);
    e.send(c.clone(), TypedValue::of(&100i64)).await;
    e.until(&c, count(111)).await;
    e.settle().await;
    assert_eq!(e.state(&c)["state"]["count"]["value"], 111, "applied once");
    assert!(e.handle.dead_letters().expect("dead letters").is_empty());
    // The metrics saw the calls, and the one that failed back.
    let metrics = e.handle.metrics().render();
    let sample = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{series}: {metrics}"))
    };
    assert!(sample(r#"statefun_remote_call_seconds_count{function_type="faulty/counter"}"#) >= 4.0);
    assert!(
        sample(r#"statefun_remote_call_failures_total{function_type="faulty/counter"}"#) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_fails_back_until_the_function_is_up() {
    let port = free_port();
    let e = Embedded::start(port, Arc::new(SystemClock));
    let c = at("faulty/counter", "y");
    e.send(c.clone(), TypedValue::of(&5i64)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        e.state(&c)["version"],
        0,
        "nothing applied while the endpoint is down"
    );
    assert!(
        e.handle.dead_letters().expect("dead letters").is_empty(),
        "not dead-lettered"
    );
    let _py = PythonFunctions::start(port);
    e.until(&c, |s| s["state"]["count"]["value"] == 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_mutation_of_the_wrong_type_is_a_clear_error() {
    let py = PythonFunctions::start(free_port());
    let e = Embedded::start(py.port, Arc::new(SystemClock));
    e.send(at("raw/badstate", "b"), text("x")).await;
    let dead = e
        .handle
        .settles(|| !e.handle.dead_letters().expect("dead letters").is_empty())
        .await
        .expect("status");
    assert!(dead, "never dead-lettered");
    let letters = e.handle.dead_letters().expect("dead letters");
    assert_eq!(
        letters[0].reason,
        "function failed: state \"n\" is declared as io.statefun.types/int but holds or was given a io.statefun.types/string"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_playground_greeter_runs_through_the_aws_path() {
    let py = PythonFunctions::start(free_port());
    let mut aws = Aws::start(
        Dynamo::Moto,
        registry(),
        &[("STATEFUN_EGRESS", "example/greets=sqs:{greets}")],
        &["greets"],
    )
    .await;
    let mut config = aws.config.clone();
    config.module = Module::parse("module.yaml", &python_module(py.port)).expect("module");
    let remote = statefun_aws::app::remote_functions(&config).expect("clients");
    aws.handlers = Arc::new(statefun_aws::app::Handlers::with_remote(
        &config,
        &aws.clients,
        Arc::new(registry()),
        Arc::new(SystemClock),
        remote,
    ));
    let ann = at("example/person", "Ann");
    aws.send(ann.clone(), greet("Ann"), "1").await;
    aws.send(ann.clone(), greet("Ann"), "2").await;
    aws.drain(Duration::from_millis(500)).await;
    assert_eq!(aws.state(&ann).await["state"]["visits"]["value"], 2);
    let greets: Vec<Json> = aws
        .take_all(&aws.url_of("greets"))
        .await
        .iter()
        .map(|(b, _)| serde_json::from_str(b).expect("json"))
        .collect();
    let values: Vec<String> = greets.iter().map(|g| text_value(&g["value"])).collect();
    assert_eq!(values, ["Hi Ann, first visit", "Hi Ann, visit number 2"]);
    assert_eq!(greets[0]["value"]["topic"], "greetings");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_remote_function_fails_back_at_the_invocations_deadline_and_the_rest_commits() {
    use statefun_aws::sqs_batch::SqsHandler;
    let py = PythonFunctions::start(free_port());
    let aws = Aws::start(Dynamo::Moto, registry(), &[], &[]).await;
    // A generous call timeout: without a deadline the slow call would answer (after 3 s).
    let module = format!(
        "kind: io.statefun.endpoints.v2/http\nspec:\n  functions: faulty/*\n  \
         urlPathTemplate: http://127.0.0.1:{}/fault\n  transport: {{ call: 30s }}\n",
        py.port
    );
    let mut config = aws.config.clone();
    config.module = Module::parse("module.yaml", &module).expect("module");
    let handlers = statefun_aws::app::Handlers::with_remote(
        &config,
        &aws.clients,
        Arc::new(registry()),
        Arc::new(SystemClock),
        statefun_aws::app::remote_functions(&config).expect("clients"),
    );
    let slow = at("faulty/counter", "slow");
    let local = Address::new(statefun_examples::counter::COUNTER, "local");
    let message = |to: &Address, key: &str, n: i64| statefun_core::Envelope {
        id: statefun_core::MessageId::Keyed(format!("test:{key}")),
        target: to.clone(),
        caller: None,
        value: TypedValue::of(&n),
    };
    let batch = [message(&slow, "s", 5), message(&local, "l", 1)];
    let event = statefun_e2e::sqs_event(&batch);
    py.inject("slow", 1);
    let response = handlers
        .dispatcher
        .handle_until(
            event.clone(),
            Some(Instant::now() + Duration::from_millis(500)),
        )
        .await;
    let failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(
        failed,
        ["test:s-0"],
        "only the slow function's message fails back"
    );
    let count = |state: Json| state["state"]["count"]["value"].as_i64().unwrap_or(0);
    assert_eq!(
        count(aws.state(&local).await),
        1,
        "the rest of the batch committed"
    );
    assert_eq!(
        count(aws.state(&slow).await),
        0,
        "nothing of the cut call applied"
    );
    // Redelivered with time to spare: applied, once; the other message is a duplicate.
    let response = handlers.dispatcher.handle(event).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(count(aws.state(&slow).await), 5);
    assert_eq!(count(aws.state(&local).await), 1);
}

/// A module whose `faulty/*` endpoint is slow but in time: a 30 s call timeout.
fn patient_module(port: u16) -> Module {
    let text = format!(
        "kind: io.statefun.endpoints.v2/http\nspec:\n  functions: faulty/*\n  \
         urlPathTemplate: http://127.0.0.1:{port}/fault\n  transport: {{ call: 30s }}\n"
    );
    Module::parse("module.yaml", &text).expect("module")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_holds_only_its_own_addresses_and_shutdown_does_not_wait_for_it() {
    let py = PythonFunctions::start(free_port());
    let dir = tempfile::tempdir().expect("tempdir");
    let start = || {
        let mut config = EmbeddedConfig::new(dir.path());
        config.remote = Some(Arc::new(
            HttpFunctions::new(patient_module(py.port)).expect("clients"),
        ));
        Runtime::start(registry(), config, Box::new(Capture(Arc::default()))).expect("start")
    };
    let count = |h: &RuntimeHandle, a: &Address| {
        h.state_json(a).expect("state")["state"]["count"]["value"]
            .as_i64()
            .unwrap_or(0)
    };
    let slow = at("faulty/counter", "slow");
    let local = Address::new(statefun_examples::counter::COUNTER, "local");

    // The endpoint takes 3 s to answer; meanwhile the engine goes on with other addresses.
    py.inject("slow", 1);
    let runtime = start();
    let h = runtime.handle();
    h.submit(slow.clone(), TypedValue::of(&5i64), None)
        .await
        .expect("accepted");
    h.submit(local.clone(), TypedValue::of(&1i64), None)
        .await
        .expect("accepted");
    let applied = h.settles(|| count(&h, &local) > 0).await.expect("status");
    assert!(applied, "the local address was never applied");
    assert_eq!(
        count(&h, &slow),
        0,
        "the local address was applied while the slow call was still running"
    );

    // Stopping does not wait for the call either; nothing is lost: the message runs
    // again after a restart, once.
    let stopping = Instant::now();
    drop(h);
    runtime.shutdown().expect("shutdown");
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "shutdown waited for the slow call ({:?})",
        stopping.elapsed()
    );
    let runtime = start();
    let h = runtime.handle();
    let applied = h.settles(|| count(&h, &slow) > 0).await.expect("status");
    assert!(applied, "the slow call was never applied after the restart");
    assert_eq!(count(&h, &slow), 5);
    assert_eq!(count(&h, &local), 1);
    runtime.shutdown().expect("shutdown");
}
