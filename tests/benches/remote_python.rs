//! Throughput of the embedded runtime calling the Python playground greeter (official
//! StateFun SDK on aiohttp, one process): many concurrent clients send GreetRequests to
//! `example/person` over few or many people; each message makes two remote invocations
//! (person, then greeter) and one egress record. Prints messages/s end to end and the
//! invocation batch sizes the per-address batching reached.
//!
//! `cargo bench -p statefun-e2e --bench remote_python` (needs .venv-sdk)

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use statefun_core::module::Module;
use statefun_core::{Address, EgressRecord, TypeName, TypedValue};
use statefun_e2e::{PythonFunctions, free_port, python_module};
use statefun_embedded::{EgressSink, EmbeddedConfig, HttpFunctions, Runtime};
use statefun_examples::greeter::GreetRequest;

const CLIENTS: usize = 256;

struct Count(Arc<AtomicUsize>);
impl EgressSink for Count {
    fn emit(&mut self, _: &EgressRecord) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn run(people: usize, total: usize) {
    let py = PythonFunctions::start(free_port());
    let dir = tempfile::tempdir().expect("tempdir");
    let module = Module::parse("module.yaml", &python_module(py.port)).expect("module");
    let remote = Arc::new(HttpFunctions::new(module).expect("clients"));
    let mut config = EmbeddedConfig::new(dir.path());
    config.remote = Some(remote.clone());
    let greetings = Arc::new(AtomicUsize::new(0));
    let registry = statefun_examples::registry(Default::default()).expect("registry");
    let runtime =
        Runtime::start(registry, config, Box::new(Count(greetings.clone()))).expect("start");
    let handle = runtime.handle();
    let person = TypeName::from_static("example/person");
    let start = Instant::now();
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let handle = handle.clone();
        let person = person.clone();
        clients.push(tokio::spawn(async move {
            let mut i = c;
            while i < total {
                let name = format!("p{}", i % people);
                let value = TypedValue::of(&GreetRequest {
                    name: name.clone(),
                    visits: None,
                });
                handle
                    .submit(Address::new(person.clone(), name), value, None)
                    .await
                    .expect("accepted");
                i += CLIENTS;
            }
        }));
    }
    for c in clients {
        c.await.expect("client");
    }
    while greetings.load(Ordering::Relaxed) < total {
        assert!(start.elapsed() < Duration::from_secs(600), "did not finish");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let stats = remote.stats();
    println!(
        "{people:>7} people  {total:>6} messages  {:>7.0} msg/s  ({:>7.0} remote invocations/s)  requests {:>6}  mean batch {:>5.1}  largest {:>4}",
        total as f64 / secs,
        stats.invocations as f64 / secs,
        stats.requests,
        stats.invocations as f64 / stats.requests as f64,
        stats.largest_batch,
    );
    runtime.shutdown().expect("shutdown");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!(
        "embedded runtime -> Python greeter (person + greeter per message), {CLIENTS} clients, one Python process"
    );
    run(1_000, 20_000).await;
    run(10, 20_000).await;
}
