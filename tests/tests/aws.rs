//! The AWS path end to end against a real emulator (moto server): the real DynamoDB
//! store, SQS/SNS transport and Lambda handlers, driven by the local poller.

mod support;

use std::time::Duration;

use statefun_core::{Address, TypedValue};
use statefun_examples::greeter::{GreetRequest, PERSON};
use support::Aws;

fn examples() -> statefun_core::Registry {
    statefun_examples::registry(Default::default()).expect("registry")
}

fn greet(name: &str) -> TypedValue {
    TypedValue::of(&GreetRequest {
        name: name.into(),
        visits: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greeter_end_to_end_with_sqs_egress() {
    let mut aws = Aws::start(
        examples(),
        &[("STATEFUN_EGRESS", "example/greets=sqs:{greets}")],
        &["greets"],
    )
    .await;
    let bob = Address::new(PERSON, "Bob");
    aws.send(bob.clone(), greet("Bob"), "1").await;
    aws.send(bob.clone(), greet("Bob"), "2").await;
    aws.drain(Duration::from_millis(300)).await;
    let state = aws.state(&bob).await;
    assert_eq!(state["state"]["visits"]["value"], 2, "{state}");
    let greets = aws.take_all(&aws.url_of("greets")).await;
    let values: Vec<String> = greets
        .iter()
        .map(|(b, _)| {
            serde_json::from_str::<serde_json::Value>(b).expect("json")["value"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(values, vec!["Hello Bob! 😎", "Hello again Bob! 🤗"]);
}
