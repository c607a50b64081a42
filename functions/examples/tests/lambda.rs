//! The examples' binary as Lambda runs it: under a local Lambda Runtime API, one role per
//! process from `STATEFUN_ROLE`, against the emulator (moto).

use std::sync::{Arc, Mutex};

use aws_lambda_events::event::sqs::SqsBatchResponse;
use statefun_core::{Address, TypeName};
use statefun_e2e::{Aws, Dynamo, LambdaRuntimeApi, api_gateway_request};

const BINARY: &str = env!("CARGO_BIN_EXE_statefun-lambda");

/// The environment the template gives every function, pointed at the emulator.
fn environment(aws: &Aws, role: &str) -> Vec<(String, String)> {
    vec![
        ("STATEFUN_ROLE".into(), role.into()),
        ("STATEFUN_STATE_TABLE".into(), aws.config.table.clone()),
        (
            "STATEFUN_INBOX_QUEUE_URL".into(),
            aws.config.inbox_url.clone(),
        ),
        (
            "STATEFUN_DELAY_QUEUE_URL".into(),
            aws.config.delay_url.clone(),
        ),
        ("STATEFUN_DLQ_URL".into(), aws.config.dlq_url.clone()),
        ("AWS_ENDPOINT_URL".into(), aws.moto.url.clone()),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
    ]
}

fn start(api: &LambdaRuntimeApi, aws: &Aws, role: &str) -> Arc<Mutex<std::process::Child>> {
    let env = environment(aws, role);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Arc::new(Mutex::new(api.spawn(BINARY, role, &env)))
}

fn alive(child: Arc<Mutex<std::process::Child>>) -> impl FnMut() -> bool + Send + 'static {
    move || matches!(child.lock().expect("child").try_wait(), Ok(None))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_binary_plays_the_http_ingress_and_the_dispatcher_by_statefun_role() {
    let mut aws = Aws::start(Dynamo::Moto, statefun_core::Registry::new(), &[], &[]).await;

    let http_api = LambdaRuntimeApi::start();
    let http = start(&http_api, &aws, "http-ingress");
    let request = api_gateway_request(
        "POST",
        ("example", "counter", "lambda"),
        &[("content-type", "application/vnd.io.statefun.types/long")],
        "5",
        false,
    );
    let answer = http_api
        .invoke(&request.to_string(), alive(http.clone()))
        .expect("an answer");
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
    assert_eq!(answer["statusCode"], 202, "{answer}");

    let dispatch_api = LambdaRuntimeApi::start();
    let dispatcher = start(&dispatch_api, &aws, "dispatcher");
    let inbox = aws.config.inbox_url.clone();
    let api = dispatch_api.clone();
    let is_alive = Arc::new(Mutex::new(alive(dispatcher.clone())));
    let handled = aws
        .poller
        .poll_once(&inbox, |event| async move {
            let event = serde_json::to_string(&event).expect("event JSON");
            let answer = tokio::task::spawn_blocking(move || {
                let mut alive = is_alive.lock().expect("alive");
                api.invoke(&event, &mut *alive)
            })
            .await
            .expect("invoke")
            .expect("an answer");
            serde_json::from_str::<SqsBatchResponse>(&answer).expect("a batch response")
        })
        .await
        .expect("poll");
    assert_eq!(handled, 1);
    let counter = Address::new(TypeName::from_static("example/counter"), "lambda");
    assert_eq!(aws.state(&counter).await["state"]["count"]["value"], 5);
    assert!(
        dispatch_api.first_next().is_some() && http_api.first_next().is_some(),
        "both asked the Runtime API for work"
    );
    for child in [http, dispatcher] {
        let _ = child.lock().expect("child").kill();
    }
}

#[test]
fn an_unknown_role_fails_the_cold_start_naming_the_variable() {
    let api = LambdaRuntimeApi::start();
    let child = api.spawn(BINARY, "bogus", &[("STATEFUN_ROLE", "dispatch")]);
    let out = child.wait_with_output().expect("exit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("STATEFUN_ROLE") && stderr.contains("one of dispatcher, timer-forwarder"),
        "{stderr}"
    );
}
