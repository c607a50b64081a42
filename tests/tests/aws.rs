//! The AWS path end to end against a real emulator (moto server): the real DynamoDB
//! store, SQS/SNS transport and Lambda handlers, driven by the local poller.

use std::time::Duration;

use statefun_core::{Address, TypedValue};
use statefun_e2e::{Aws, Dynamo};
use statefun_examples::greeter::{GreetRequest, PERSON};

fn examples() -> statefun_core::Registry {
    statefun_examples::registry(Default::default()).expect("registry")
}

fn greet(name: &str) -> TypedValue {
    TypedValue::of(&GreetRequest {
        name: name.into(),
        visits: None,
    })
}

/// The examples with the greeter's egress on an SQS queue, `greets`.
async fn with_greets_queue(dynamo: Dynamo) -> Aws {
    Aws::start(
        dynamo,
        examples(),
        &[("STATEFUN_EGRESS", "example/greets=sqs:{greets}")],
        &["greets"],
    )
    .await
}

async fn greeter_end_to_end_with_sqs_egress(dynamo: Dynamo) {
    let mut aws = with_greets_queue(dynamo).await;
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

use std::collections::BTreeSet;
use std::sync::Arc;

use statefun_aws::dynamo::DynamoStore;
use statefun_aws::envelope;
use statefun_aws::metrics::Metrics;
use statefun_core::pipeline::{FailureKind, dispatch};
use statefun_core::ports::{SystemClock, Transport, TransportError};
use statefun_core::{
    Envelope, FunctionError, MessageId, OutboxEntry, Registry, TypeName, ValueSpec,
};
use statefun_examples::cart::{BASKET, BASKET_EVENTS, BasketRequest, INVENTORY, InventoryRequest};
use statefun_examples::counter::COUNTER;

const N: ValueSpec<i64> = ValueSpec::new("n");
const BIG: ValueSpec<String> = ValueSpec::new("big");

/// The examples plus functions that misbehave on purpose:
/// `test/flaky`: "fail" asks to be retried, anything else counts in `n`;
/// `test/terminal`: always fails terminally; `test/big`: stores a string of the given
/// length; `test/timer`: "later:<ms>:<token>" sends +1 to `example/counter/<id>` after
/// the delay, "twice:<token>" sends two such at once under one token, "cancel:<token>"
/// cancels them.
fn registry() -> Registry {
    let mut r = examples();
    r.register_fn("test/flaky", vec![N.spec()], |ctx, msg| {
        if msg.decode::<String>()? == "fail" {
            return Err(FunctionError::retryable("flaky on purpose"));
        }
        let n = ctx.get(&N)?.unwrap_or(0) + 1;
        ctx.set(&N, &n)
    })
    .expect("register");
    r.register_fn("test/terminal", vec![], |_, _| {
        Err(FunctionError::terminal("terminal on purpose"))
    })
    .expect("register");
    r.register_fn("test/big", vec![BIG.spec()], |ctx, msg| {
        let len: i64 = msg.decode()?;
        ctx.set(&BIG, &"x".repeat(len as usize))
    })
    .expect("register");
    r.register_fn("test/timer", vec![], |ctx, msg| {
        let cmd: String = msg.decode()?;
        let counter = Address::new(COUNTER, ctx.self_address().id.clone());
        match cmd.split(':').collect::<Vec<_>>()[..] {
            ["later", ms, token] => ctx.send_after_with_token(
                Duration::from_millis(ms.parse().map_err(FunctionError::terminal)?),
                counter,
                &1i64,
                token,
            ),
            ["twice", token] => {
                for _ in 0..2 {
                    ctx.send_after_with_token(Duration::ZERO, counter.clone(), &1i64, token)?;
                }
                Ok(())
            }
            ["cancel", token] => ctx.cancel_delayed_message(token),
            _ => Err(FunctionError::terminal(format!("bad command {cmd}"))),
        }
    })
    .expect("register");
    r
}

fn at(t: &'static str, id: &str) -> Address {
    Address::new(TypeName::from_static(t), id)
}

fn text(s: &str) -> TypedValue {
    TypedValue::of(&s.to_string())
}

fn ingress(key: &str, target: Address, value: TypedValue) -> Envelope {
    Envelope {
        id: MessageId::Keyed(format!("test:{key}")),
        target,
        caller: None,
        value,
    }
}

async fn count(aws: &Aws, address: &Address, cell: &str) -> i64 {
    aws.state(address).await["state"][cell]["value"]
        .as_i64()
        .unwrap_or(0)
}

async fn egress_to_an_sns_topic(dynamo: Dynamo) {
    let moto_topic =
        |aws: &Aws| format!("arn:aws:sns:us-east-1:123456789012:{}-greets", aws.prefix);
    // The topic's ARN is known before provisioning; create topic and subscriber after.
    let mut aws = Aws::start(dynamo, examples(), &[], &["fanout"]).await;
    let topic = aws
        .clients
        .sns
        .create_topic()
        .name(format!("{}-greets", aws.prefix))
        .send()
        .await
        .expect("topic");
    assert_eq!(topic.topic_arn(), Some(moto_topic(&aws).as_str()));
    let fanout = aws.url_of("fanout");
    let fanout_arn = statefun_infra::local::queue_arn(&aws.clients, &fanout)
        .await
        .expect("arn");
    aws.clients
        .sns
        .subscribe()
        .topic_arn(moto_topic(&aws))
        .protocol("sqs")
        .endpoint(fanout_arn)
        .attributes("RawMessageDelivery", "true")
        .send()
        .await
        .expect("subscribe");
    let mut config = aws.config.clone();
    config.egress = [(
        TypeName::from_static("example/greets"),
        statefun_core::module::Sink::Sns {
            topic_arn: moto_topic(&aws),
        },
    )]
    .into();
    aws.handlers = Arc::new(statefun_aws::app::Handlers::new(
        &config,
        &aws.clients,
        Arc::new(examples()),
        Arc::new(SystemClock),
    ));
    aws.send(Address::new(PERSON, "Ann"), greet("Ann"), "1")
        .await;
    aws.drain(Duration::from_millis(300)).await;
    let got = aws.take_all(&fanout).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let record: serde_json::Value = serde_json::from_str(&got[0].0).expect("json");
    assert_eq!(record["value"], "Hello Ann! 😎");
    let greeter = aws
        .state(&Address::new(statefun_examples::greeter::GREETER, "Ann"))
        .await;
    assert_eq!(
        record["id"].as_str(),
        Some(format!("example/greeter/Ann@{}.0", greeter["version"]).as_str()),
        "a stable id to dedup on: the sender, its commit version, the index"
    );
}

async fn shopping_cart_with_delays_over_several_hops_and_cancel(dynamo: Dynamo) {
    let examples = statefun_examples::registry(statefun_examples::ExamplesConfig {
        basket_idle: Duration::from_millis(2500),
    })
    .expect("registry");
    let mut aws = Aws::start(
        dynamo,
        examples,
        &[
            ("STATEFUN_EGRESS", "example/basket-events=sqs:{events}"),
            ("STATEFUN_MAX_DELAY_HOP_SECONDS", "1"),
        ],
        &["events"],
    )
    .await;
    let socks = Address::new(INVENTORY, "socks");
    let json = |v: &dyn Fn() -> TypedValue| v();
    aws.send(
        socks.clone(),
        json(&|| TypedValue::of(&InventoryRequest::Restock { quantity: 10 })),
        "r",
    )
    .await;
    let add = |q| {
        TypedValue::of(&BasketRequest::Add {
            item: "socks".into(),
            quantity: q,
        })
    };
    let started = std::time::Instant::now();
    aws.send(Address::new(BASKET, "idle"), add(3), "a1").await;
    aws.send(Address::new(BASKET, "buyer"), add(2), "a2").await;
    aws.send(
        Address::new(BASKET, "buyer"),
        TypedValue::of(&BasketRequest::Checkout),
        "c",
    )
    .await;
    aws.drain(Duration::from_millis(300)).await;
    assert_eq!(
        count(&aws, &socks, "stock").await,
        5,
        "both baskets reserved"
    );
    if started.elapsed() < Duration::from_millis(2400) {
        // Nothing may have fired yet.
        assert_eq!(count(&aws, &socks, "stock").await, 5);
    }
    // Until every timer has fired (or was dropped as cancelled).
    aws.settle().await;
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "expired early"
    );
    assert_eq!(
        count(&aws, &socks, "stock").await,
        8,
        "the idle basket expired, the checked-out basket's timer was cancelled"
    );
    let events: Vec<serde_json::Value> = aws
        .take_all(&aws.url_of("events"))
        .await
        .iter()
        .map(|(b, _)| serde_json::from_str(b).expect("json"))
        .collect();
    let kinds: BTreeSet<String> = events
        .iter()
        .map(|e| e["value"]["event"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        kinds,
        ["checked_out", "expired"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    assert!(events.iter().all(|e| e["egress"] == BASKET_EVENTS.as_str()));
}

async fn racing_dispatchers_on_one_address_count_exactly(dynamo: Dynamo) {
    let aws = Aws::start(dynamo, registry(), &[], &[]).await;
    let hot = Address::new(COUNTER, "race");
    let mut racers = tokio::task::JoinSet::new();
    for lambda in 0..6 {
        // Each racer is a separate Lambda instance with its own clients and handlers.
        let handlers = Arc::new(statefun_aws::app::Handlers::new(
            &aws.config,
            &aws.clients,
            Arc::new(registry()),
            Arc::new(SystemClock),
        ));
        let batch: Vec<Envelope> = (0..3)
            .map(|i| ingress(&format!("{lambda}-{i}"), hot.clone(), TypedValue::of(&1i64)))
            .collect();
        racers.spawn(async move {
            // Whatever a racer reports failed, SQS would redeliver: hand it back.
            let mut pending = batch;
            let mut rounds = 0;
            while !pending.is_empty() {
                rounds += 1;
                assert!(rounds < 20, "a racer never got through");
                let sqs_event = statefun_e2e::sqs_event(&pending);
                let response = handlers.dispatcher.handle(sqs_event.clone()).await;
                let failed: Vec<String> = response
                    .batch_item_failures
                    .iter()
                    .map(|f| f.item_identifier.clone())
                    .collect();
                pending = sqs_event
                    .records
                    .iter()
                    .zip(pending)
                    .filter(|(r, _)| failed.contains(&r.message_id.clone().unwrap_or_default()))
                    .map(|(_, e)| e)
                    .collect();
            }
            handlers.dispatcher.totals().conflicts
        });
    }
    let mut conflicts = 0;
    while let Some(r) = racers.join_next().await {
        conflicts += r.expect("racer");
    }
    assert!(conflicts > 0, "the racers must actually have conflicted");
    assert_eq!(count(&aws, &hot, "count").await, 18);
}

/// A transport that fails every send: the commit lands, the sends do not.
struct Down;
impl Transport for Down {
    async fn send(&self, outboxes: &[&[OutboxEntry]]) -> Vec<Result<(), TransportError>> {
        outboxes
            .iter()
            .map(|_| Err(TransportError("injected: crashed before sending".into())))
            .collect()
    }
}

async fn crash_between_commit_and_send_resends_on_redelivery_and_the_receiver_drops_duplicates(
    dynamo: Dynamo,
) {
    let mut aws = with_greets_queue(dynamo).await;
    let bob = Address::new(PERSON, "Bob");
    let message = ingress("1", bob.clone(), greet("Bob"));
    // First delivery: the real store commits, then the process "dies" before sending.
    let store = DynamoStore::new(
        aws.clients.dynamodb.clone(),
        aws.config.table.clone(),
        Arc::new(Metrics::default()),
        Arc::new(SystemClock),
    );
    let config = statefun_aws::app::batch_config(&aws.config);
    let report = dispatch(
        &examples(),
        &store,
        &Down,
        &config,
        &SystemClock,
        vec![message.clone()],
    )
    .await;
    assert_eq!(report.commits, 1);
    assert_eq!(
        report.failed().next().expect("a failure").kind,
        FailureKind::Unavailable
    );
    assert_eq!(count(&aws, &bob, "visits").await, 1, "the commit landed");
    // SQS redelivers the message (twice, even: once past the FIFO dedup window).
    for dedup in ["redelivery-1", "redelivery-2"] {
        aws.clients
            .sqs
            .send_message()
            .queue_url(&aws.config.inbox_url)
            .message_body(envelope::encode(&message))
            .message_group_id(statefun_aws::keys::group_id(&bob))
            .message_deduplication_id(dedup)
            .send()
            .await
            .expect("send");
    }
    aws.drain(Duration::from_millis(300)).await;
    assert_eq!(count(&aws, &bob, "visits").await, 1, "applied once");
    let ids: BTreeSet<String> = egress_ids(&aws, "greets").await.into_iter().collect();
    assert_eq!(
        ids.len(),
        1,
        "the greeter got the re-sent message and applied it once: {ids:?}"
    );
    let greeter = aws
        .state(&Address::new(statefun_examples::greeter::GREETER, "Bob"))
        .await;
    assert_eq!(
        ids.first().cloned(),
        Some(format!("example/greeter/Bob@{}.0", greeter["version"])),
        "the greeter committed once: {greeter}"
    );
}

async fn a_duplicate_delivery_is_applied_once(dynamo: Dynamo) {
    let mut aws = Aws::start(dynamo, examples(), &[], &[]).await;
    let a = Address::new(COUNTER, "dup");
    let once = ingress("once", a.clone(), TypedValue::of(&5i64));
    let sqs = aws.clients.sqs.clone();
    let inbox = aws.config.inbox_url.clone();
    let send_raw = |e: Envelope, dedup: &'static str| {
        let (sqs, inbox) = (sqs.clone(), inbox.clone());
        async move {
            sqs.send_message()
                .queue_url(inbox)
                .message_body(envelope::encode(&e))
                .message_group_id(statefun_aws::keys::group_id(&e.target))
                .message_deduplication_id(dedup)
                .send()
                .await
                .expect("send");
        }
    };
    send_raw(once.clone(), "a").await;
    send_raw(ingress("other", a.clone(), TypedValue::of(&1i64)), "b").await;
    send_raw(once.clone(), "c").await;
    aws.drain(Duration::from_millis(300)).await;
    send_raw(once, "d").await;
    aws.drain(Duration::from_millis(300)).await;
    assert_eq!(count(&aws, &a, "count").await, 6);
}

async fn poison_goes_to_the_dlq_with_its_reason_and_blocks_nothing_else(dynamo: Dynamo) {
    let mut aws = Aws::start_with(
        dynamo,
        registry(),
        &[("STATEFUN_MAX_RECEIVES", "2")],
        &[],
        Arc::new(SystemClock),
        statefun_infra::local::QueueSettings {
            visibility_timeout: Duration::from_secs(1),
            max_receive_count: 100,
        },
    )
    .await;
    let flaky = at("test/flaky", "bad");
    aws.send(flaky.clone(), text("fail"), "f1").await;
    aws.send(flaky.clone(), text("ok"), "f2").await;
    aws.send(at("test/terminal", "t"), text("x"), "t").await;
    aws.send(at("nobody/home", "n"), text("x"), "u").await;
    aws.send(Address::new(COUNTER, "fine"), TypedValue::of(&1i64), "c")
        .await;
    aws.clients
        .sqs
        .send_message()
        .queue_url(&aws.config.inbox_url)
        .message_body("{not an envelope")
        .message_group_id("garbage")
        .message_deduplication_id("garbage")
        .send()
        .await
        .expect("send");
    aws.poll_inbox().await;
    assert_eq!(
        count(&aws, &Address::new(COUNTER, "fine"), "count").await,
        1,
        "the healthy group went on"
    );
    assert_eq!(
        count(&aws, &flaky, "n").await,
        0,
        "the message behind the failing one waits"
    );
    aws.drain(Duration::from_millis(2500)).await;
    assert_eq!(
        count(&aws, &flaky, "n").await,
        1,
        "it ran once the failing one was dead-lettered"
    );
    let letters = aws.take_all(&aws.config.dlq_url).await;
    let reasons: Vec<String> = letters.iter().map(|(_, a)| a["Reason"].clone()).collect();
    let has = |needle: &str| reasons.iter().any(|r| r.contains(needle));
    assert_eq!(letters.len(), 4, "{reasons:?}");
    assert!(has("undecodable message envelope"), "{reasons:?}");
    assert!(
        has("no function is registered for type nobody/home"),
        "{reasons:?}"
    );
    assert!(has("terminal on purpose"), "{reasons:?}");
    assert!(
        has("gave up after 2 tries: function failed: flaky on purpose"),
        "{reasons:?}"
    );
    assert!(letters.iter().all(|(_, a)| a["Handler"] == "dispatcher"));
}

async fn an_oversized_state_is_refused_with_a_typed_error_and_nothing_else_is_lost(dynamo: Dynamo) {
    let mut aws = Aws::start(dynamo, registry(), &[], &[]).await;
    let big = at("test/big", "b");
    aws.send(big.clone(), TypedValue::of(&10i64), "1").await;
    aws.send(big.clone(), TypedValue::of(&400_000i64), "2")
        .await;
    aws.send(big.clone(), TypedValue::of(&20i64), "3").await;
    aws.send(
        Address::new(COUNTER, "bystander"),
        TypedValue::of(&1i64),
        "4",
    )
    .await;
    aws.drain(Duration::from_millis(300)).await;
    let state = aws.state(&big).await;
    assert_eq!(
        state["state"]["big"]["value"].as_str().map(str::len),
        Some(20),
        "later messages applied"
    );
    assert_eq!(
        count(&aws, &Address::new(COUNTER, "bystander"), "count").await,
        1
    );
    let letters = aws.take_all(&aws.config.dlq_url).await;
    assert_eq!(letters.len(), 1);
    let reason = &letters[0].1["Reason"];
    assert!(
        reason
            .contains("test/big/b: state \"big\" is 400028 bytes, over the limit of 358400 bytes"),
        "{reason}"
    );
}

async fn a_delay_longer_than_one_hop_arrives_on_time_and_a_cancel_is_honoured(dynamo: Dynamo) {
    let mut aws = Aws::start(
        dynamo,
        registry(),
        &[("STATEFUN_MAX_DELAY_HOP_SECONDS", "1")],
        &[],
    )
    .await;
    let timer = at("test/timer", "x");
    let counter = Address::new(COUNTER, "x");
    let started = std::time::Instant::now();
    aws.send(timer.clone(), text("later:2500:keep"), "1").await;
    aws.send(timer.clone(), text("later:2500:drop"), "2").await;
    aws.send(timer.clone(), text("cancel:drop"), "3").await;
    aws.settle().await;
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "arrived early"
    );
    assert_eq!(
        count(&aws, &counter, "count").await,
        1,
        "the kept one arrived, the cancelled one must not"
    );
}

async fn timers_sharing_a_token_and_a_timer_delivered_twice_in_one_batch_go_through(
    dynamo: Dynamo,
) {
    let mut aws = Aws::start(dynamo, registry(), &[], &[]).await;
    let timer = at("test/timer", "shared");
    let counter = Address::new(COUNTER, "shared");
    aws.send(timer.clone(), text("twice:same"), "1").await;
    aws.poll_inbox().await;
    // A copy of one more timer, twice on the delay queue (a re-send, or the standard
    // queue's own duplicate): both copies land in the forwarder's next batch with the
    // two timers above, four records sharing one cancellation key.
    let copy = envelope::TimerMessage {
        due_at_ms: 0,
        token: Some("same".into()),
        issued: statefun_core::Issued {
            version: u64::MAX / 2,
            index: 0,
        },
        envelope: Envelope {
            id: MessageId::Keyed("test/timer/shared@copy.0".into()),
            target: counter.clone(),
            caller: Some(timer.clone()),
            value: TypedValue::of(&1i64),
        },
    };
    for _ in 0..2 {
        aws.clients
            .sqs
            .send_message()
            .queue_url(&aws.config.delay_url)
            .message_body(envelope::encode_timer(&copy))
            .send()
            .await
            .expect("send");
    }
    let forwarded = aws.poll_delay().await;
    assert_eq!(forwarded, 4, "one forwarder batch with all four records");
    // The copy was due at 0: a delayed message's lag counts from its due time (not from
    // its enqueue, which would include the delay it asked for).
    let lag = aws.handlers.forwarder.totals().max_lag_ms;
    assert!(lag > 365 * 24 * 3600 * 1000, "MaxLag {lag} ms");
    aws.drain(Duration::from_millis(300)).await;
    assert_eq!(
        count(&aws, &counter, "count").await,
        3,
        "both timers under one token, and the copied timer once"
    );
    assert!(
        aws.take_all(&aws.url_of("delay-dlq")).await.is_empty()
            && aws.take_all(&aws.config.dlq_url).await.is_empty(),
        "nothing dead-lettered"
    );
}

async fn sqs_ingress_routes_by_pointer_attribute_and_envelope(dynamo: Dynamo) {
    let routes = r#"[
        {"queue": "PREFIX-people", "target": "example/person", "id": {"pointer": "/name"}, "typename": "example/GreetRequest"},
        {"queue": "PREFIX-counts", "target": "example/counter", "id": {"attribute": "Counter"}, "typename": "io.statefun.types/long"},
        {"queue": "PREFIX-commands", "target": "auto"}
    ]"#;
    let mut aws = Aws::start(dynamo, examples(), &[], &["people", "counts", "commands"]).await;
    let mut config = aws.config.clone();
    config.ingress_routes =
        statefun_aws::config::ingress_routes(&routes.replace("PREFIX", &aws.prefix))
            .expect("routes");
    aws.handlers = Arc::new(statefun_aws::app::Handlers::new(
        &config,
        &aws.clients,
        Arc::new(examples()),
        Arc::new(SystemClock),
    ));
    let put = |queue: String, body: &'static str, attribute: Option<&'static str>| {
        let sqs = aws.clients.sqs.clone();
        async move {
            let mut r = sqs.send_message().queue_url(queue).message_body(body);
            if let Some(v) = attribute {
                r = r.message_attributes(
                    "Counter",
                    aws_sdk_sqs::types::MessageAttributeValue::builder()
                        .data_type("String")
                        .string_value(v)
                        .build()
                        .expect("attr"),
                );
            }
            r.send().await.expect("send");
        }
    };
    put(aws.url_of("people"), r#"{"name":"Zoe"}"#, None).await;
    put(aws.url_of("people"), r#"{"nom":"Zoe"}"#, None).await;
    put(aws.url_of("counts"), "\u{9}\u{7}", Some("c1")).await;
    put(aws.url_of("commands"), r#"{"target":{"type":"example/counter","id":"c2"},"typename":"io.statefun.types/long","value":7}"#, None).await;
    put(aws.url_of("commands"), r#"{"target":{"type":"example/nope","id":"x"},"typename":"io.statefun.types/long","value":7}"#, None).await;
    // Every record waits at least this long from its enqueue: MaxLag must show it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    for queue in ["people", "counts", "commands"] {
        let url = aws.url_of(queue);
        loop {
            let handlers = aws.handlers.clone();
            let polled = aws
                .poller
                .poll_once(&url, |e| async move { handlers.ingress.handle(e).await });
            if polled.await.expect("poll") == 0 {
                break;
            }
        }
    }
    let lag = aws.handlers.ingress.totals().max_lag_ms;
    assert!(lag >= 50, "MaxLag counts from SentTimestamp: {lag} ms");
    aws.drain(Duration::from_millis(300)).await;
    assert_eq!(count(&aws, &Address::new(PERSON, "Zoe"), "visits").await, 1);
    assert_eq!(count(&aws, &Address::new(COUNTER, "c2"), "count").await, 7);
    let letters = aws.take_all(&aws.config.dlq_url).await;
    let reasons: Vec<String> = letters.iter().map(|(_, a)| a["Reason"].clone()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("the body has nothing at /name")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("no function is registered for type example/nope")),
        "{reasons:?}"
    );
    // The raw bytes of `counts` pass through unchanged: 0x09 0x07 is not a valid long
    // encoding, so the counter dead-letters it with a decode error, naming the type.
    assert!(
        reasons.iter().any(|r| r.contains("io.statefun.types/long")),
        "{reasons:?}"
    );
}

/// An API Gateway HTTP API (payload 2.0) request, as the HTTP ingress Lambda receives it.
fn api_request(
    method: &str,
    path: (&str, &str, &str),
    headers: &[(&str, &str)],
    body: &str,
    base64: bool,
) -> aws_lambda_events::event::apigw::ApiGatewayV2httpRequest {
    serde_json::from_value(statefun_e2e::api_gateway_request(
        method, path, headers, body, base64,
    ))
    .expect("API Gateway event")
}

async fn http_ingress_lambda_contract(dynamo: Dynamo) {
    let mut aws = Aws::start(dynamo, examples(), &[], &[]).await;
    let module = statefun_core::module::Module::parse("module.yaml", "kind: io.statefun-lambda.ingress.v1/http\nspec:\n  functions: [example/counter, example/person]\n").expect("module");
    let config = aws.config.clone().with_module(module).expect("config");
    aws.handlers = Arc::new(statefun_aws::app::Handlers::new(
        &config,
        &aws.clients,
        Arc::new(examples()),
        Arc::new(SystemClock),
    ));
    let long = [("content-type", "application/vnd.io.statefun.types/long")];
    let call = |method: &'static str,
                path: (&'static str, &'static str, &'static str),
                headers: Vec<(&'static str, &'static str)>,
                body: &'static str,
                b64: bool| {
        let handlers = aws.handlers.clone();
        async move {
            let r = handlers
                .http_ingress
                .handle(api_request(method, path, &headers, body, b64))
                .await;
            let body = match r.body {
                Some(aws_lambda_events::encodings::Body::Text(t)) => t,
                other => panic!("unexpected body {other:?}"),
            };
            (
                r.status_code,
                serde_json::from_str::<serde_json::Value>(&body).expect("JSON body"),
            )
        }
    };
    let (status, body) = call(
        "POST",
        ("example", "counter", "a"),
        long.to_vec(),
        "40",
        false,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert!(
        body["message_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("http:")),
        "{body}"
    );
    let keyed: Vec<(&str, &str)> = vec![long[0], ("idempotency-key", "order-7")];
    let first = call(
        "PUT",
        ("example", "counter", "a"),
        keyed.clone(),
        "1",
        false,
    )
    .await;
    let again = call("POST", ("example", "counter", "a"), keyed, "1", false).await;
    assert_eq!(first, again, "same key, same message id");
    assert_eq!(first.1["message_id"], "http:order-7");
    let (status, _) = call(
        "POST",
        ("example", "counter", "a"),
        long.to_vec(),
        "MQ==",
        true,
    )
    .await;
    assert_eq!(status, 202, "base64 bodies are decoded");
    let rejected = [
        (
            call("POST", ("example", "greeter", "a"), vec![], "x", false).await,
            404,
            "not exposed by the HTTP ingress",
        ),
        (
            call("POST", ("nope", "thing", "a"), vec![], "x", false).await,
            404,
            "no function is registered for type nope/thing",
        ),
        (
            call(
                "POST",
                ("example", "counter", "a"),
                long.to_vec(),
                "many",
                false,
            )
            .await,
            400,
            "not a valid io.statefun.types/long",
        ),
        (
            call(
                "POST",
                ("example", "counter", "a"),
                vec![("content-type", "application/x-www-form-urlencoded")],
                "1",
                false,
            )
            .await,
            415,
            "application/vnd.",
        ),
        (
            call("GET", ("example", "counter", "a"), vec![], "", false).await,
            405,
            "use POST",
        ),
    ];
    for ((status, body), want_status, want) in rejected {
        assert_eq!(status, want_status, "{body}");
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains(want)),
            "{body} lacks {want:?}"
        );
    }
    let big = "x".repeat(statefun_aws::app::MAX_PAYLOAD_BYTES + 1);
    let r = aws
        .handlers
        .http_ingress
        .handle(api_request(
            "POST",
            ("example", "counter", "a"),
            &[("content-type", "application/vnd.example/Blob")],
            &big,
            false,
        ))
        .await;
    assert_eq!(r.status_code, 413);
    aws.drain(Duration::from_millis(300)).await;
    assert_eq!(
        count(&aws, &Address::new(COUNTER, "a"), "count").await,
        42,
        "40 + 1 (once, by key) + 1 (base64)"
    );
}

/// The body's `id` of each egress record in a queue.
async fn egress_ids(aws: &Aws, queue: &str) -> Vec<String> {
    aws.take_all(&aws.url_of(queue))
        .await
        .iter()
        .map(|(b, _)| {
            serde_json::from_str::<serde_json::Value>(b).expect("json")["id"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

async fn an_instance_deleted_as_ttl_would_keeps_its_messages_and_egress_ids_unique(dynamo: Dynamo) {
    let mut aws = with_greets_queue(dynamo).await;
    let bob = Address::new(PERSON, "Bob");
    let greeter = Address::new(statefun_examples::greeter::GREETER, "Bob");
    let (dynamodb, table) = (aws.clients.dynamodb.clone(), aws.config.table.clone());
    let delete = |address: Address| {
        let (dynamodb, table) = (dynamodb.clone(), table.clone());
        async move {
            dynamodb
                .delete_item()
                .table_name(table)
                .key(
                    "pk",
                    aws_sdk_dynamodb::types::AttributeValue::S(statefun_aws::keys::partition_key(
                        &address,
                    )),
                )
                .send()
                .await
                .expect("delete item");
        }
    };
    aws.send(bob.clone(), greet("Bob"), "1").await;
    aws.drain(Duration::from_millis(300)).await;
    // The sender's record goes (a TTL, an operator), then the receiver's too.
    delete(bob.clone()).await;
    aws.send(bob.clone(), greet("Bob"), "2").await;
    aws.drain(Duration::from_millis(300)).await;
    delete(greeter).await;
    aws.send(bob.clone(), greet("Bob"), "3").await;
    aws.drain(Duration::from_millis(300)).await;
    let ids = egress_ids(&aws, "greets").await;
    assert_eq!(ids.len(), 3, "a greeting was lost: {ids:?}");
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 3, "an egress id repeated: {ids:?}");
}

async fn thousands_of_keyed_messages_to_one_address_apply_once_and_its_item_stays_bounded(
    dynamo: Dynamo,
) {
    let mut aws = Aws::start(dynamo, examples(), &[], &[]).await;
    let a = Address::new(COUNTER, "hot");
    const MESSAGES: usize = 1_500;
    for round in 0..MESSAGES / 100 {
        for i in 0..100 {
            let key = format!("source-record-{round:02}-{i:03}");
            aws.send(a.clone(), TypedValue::of(&1i64), &key).await;
        }
        aws.drain(Duration::from_millis(200)).await;
    }
    // Late redeliveries of the first keys (past SQS's 5-minute dedup window, as a
    // new MessageDeduplicationId): by now they live only in spilled dedup items.
    for i in 0..20 {
        let e = ingress(
            &format!("source-record-00-{i:03}"),
            a.clone(),
            TypedValue::of(&1i64),
        );
        aws.clients
            .sqs
            .send_message()
            .queue_url(&aws.config.inbox_url)
            .message_body(envelope::encode(&e))
            .message_group_id(statefun_aws::keys::group_id(&a))
            .message_deduplication_id(format!("late-{i}"))
            .send()
            .await
            .expect("send");
    }
    aws.drain(Duration::from_millis(300)).await;
    assert_eq!(count(&aws, &a, "count").await, MESSAGES as i64);
    let item = aws
        .clients
        .dynamodb
        .get_item()
        .table_name(&aws.config.table)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(statefun_aws::keys::partition_key(&a)),
        )
        .consistent_read(true)
        .send()
        .await
        .expect("get item");
    let st = item
        .item()
        .and_then(|i| i.get("st"))
        .and_then(|v| v.as_b().ok())
        .expect("instance item")
        .as_ref()
        .len();
    println!("instance item after {MESSAGES} keyed messages: {st} bytes");
    assert!(
        st <= 12 * 1024,
        "the instance item grows with keyed traffic: {st} bytes"
    );
}

/// A rolling deploy: a newer build's record (`fv` 2) or body (`v` 2) is left for a
/// retry — never dead-lettered, never overwritten — its group's later messages wait
/// with it, every other address goes on, and `verify` names it.
async fn a_newer_builds_record_or_body_is_left_for_a_retry(dynamo: Dynamo) {
    use aws_sdk_dynamodb::types::AttributeValue;
    let mut aws = Aws::start_with(
        dynamo,
        examples(),
        &[],
        &[],
        Arc::new(SystemClock),
        statefun_infra::local::QueueSettings {
            visibility_timeout: Duration::from_secs(1),
            max_receive_count: 100,
        },
    )
    .await;
    let (newer, held, other) = (
        Address::new(COUNTER, "newer"),
        Address::new(COUNTER, "held"),
        Address::new(COUNTER, "other"),
    );
    aws.send(newer.clone(), TypedValue::of(&1i64), "one").await;
    aws.drain(Duration::from_millis(300)).await;
    assert_eq!(count(&aws, &newer, "count").await, 1);
    // The newer build rewrote the item in its format 2.
    let key = statefun_aws::keys::partition_key(&newer);
    let (dynamodb, table) = (aws.clients.dynamodb.clone(), aws.config.table.clone());
    let get = || async {
        dynamodb
            .get_item()
            .table_name(&table)
            .key("pk", AttributeValue::S(key.clone()))
            .consistent_read(true)
            .send()
            .await
            .expect("get")
            .item
            .expect("item")
    };
    let mut item = get().await;
    assert_eq!(item.get("fv"), Some(&AttributeValue::N("1".into())));
    item.insert("fv".into(), AttributeValue::N("2".into()));
    aws.clients
        .dynamodb
        .put_item()
        .table_name(&aws.config.table)
        .set_item(Some(item.clone()))
        .send()
        .await
        .expect("put");
    aws.send(newer.clone(), TypedValue::of(&1i64), "two").await;
    let body = envelope::encode(&ingress("v2", held.clone(), TypedValue::of(&1i64)))
        .replace("\"v\":1", "\"v\":2");
    aws.clients
        .sqs
        .send_message()
        .queue_url(&aws.config.inbox_url)
        .message_body(body)
        .message_group_id(statefun_aws::keys::group_id(&held))
        .message_deduplication_id("v2")
        .send()
        .await
        .expect("send");
    aws.send(held.clone(), TypedValue::of(&1i64), "behind")
        .await;
    aws.send(other.clone(), TypedValue::of(&1i64), "other")
        .await;
    // A few receives (each after the 1 s visibility timeout), far below SQS's own
    // redrive, which is the backstop behind a rollout that never completes.
    for _ in 0..4 {
        aws.poll_inbox().await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert_eq!(count(&aws, &other, "count").await, 1, "the rest goes on");
    assert_eq!(get().await, item, "the newer record is not overwritten");
    assert_eq!(
        count(&aws, &held, "count").await,
        0,
        "held behind the newer body"
    );
    let letters = aws.take_all(&aws.config.dlq_url).await;
    assert!(letters.is_empty(), "nothing dead-lettered: {letters:?}");
    let found = statefun_infra::verify::table(&aws.clients, &aws.config.table, |_| {})
        .await
        .expect("verify");
    assert_eq!(found.undecodable.len(), 1, "{found:?}");
    assert_eq!(found.undecodable[0].key, key);
    assert!(found.undecodable[0].reason.contains("newer"), "{found:?}");
    // The rollout goes back to format 1 (what this build reads): the message applies.
    item.insert("fv".into(), AttributeValue::N("1".into()));
    aws.clients
        .dynamodb
        .put_item()
        .table_name(&aws.config.table)
        .set_item(Some(item))
        .send()
        .await
        .expect("put");
    aws.drain(Duration::from_millis(1500)).await;
    assert_eq!(
        count(&aws, &newer, "count").await,
        2,
        "applied once it reads"
    );
}

/// A commit that moves exact ids out of its record writes the ids applied by earlier
/// commits *ahead* of itself, outside its transaction; the ids it applies itself go
/// only with it. A dispatcher that lost the race (its condition fails) must leave
/// nothing that makes one of its own messages look applied.
async fn a_conflicting_commit_leaves_only_facts_ahead_of_it(dynamo: Dynamo) {
    use statefun_core::dedup::{DedupEntry, DedupKey, Spilled};
    use statefun_core::ports::{CommitError, StateStore};
    use statefun_core::{Commit, InstanceState, Precondition};
    let aws = Aws::start(dynamo, registry(), &[], &[]).await;
    let store = DynamoStore::new(
        aws.clients.dynamodb.clone(),
        aws.config.table.clone(),
        Arc::new(Metrics::default()),
        Arc::new(SystemClock),
    );
    let a = Address::new(COUNTER, "lost-race");
    let spilled = |id: &str, ahead| Spilled {
        entry: DedupEntry::Applied {
            id: id.into(),
            at_ms: 1,
        },
        expires_at_ms: u64::MAX / 2,
        ahead,
    };
    for (case, spill) in [
        (
            "with a transaction",
            vec![spilled("before-1", true), spilled("now-1", false)],
        ),
        ("alone", vec![spilled("before-2", true)]),
    ] {
        let commit = Commit {
            address: a.clone(),
            // Another dispatcher committed first: no item has this version.
            precondition: Precondition::MatchesVersion(7),
            state: InstanceState::default(),
            spill,
            delete_after_ms: None,
            applied: true,
        };
        let result = store.commit(std::slice::from_ref(&commit)).await;
        assert!(
            matches!(result[..], [Err(CommitError::Conflict(_))]),
            "{case}: {result:?}"
        );
    }
    let keys = ["before-1", "now-1", "before-2"].map(|k| DedupKey::Id(k.into()));
    let found = store
        .load_dedup(&[(a.clone(), keys.to_vec())])
        .await
        .expect("dedup lookup");
    let found: BTreeSet<DedupKey> = found[0].iter().map(DedupEntry::key).collect();
    assert_eq!(
        found,
        BTreeSet::from([keys[0].clone(), keys[2].clone()]),
        "the earlier ids are written ahead, the commit's own id went with its transaction"
    );
}

/// Every scenario runs twice: all on moto, and with the state table on AWS's DynamoDB
/// Local (SQS and SNS on moto).
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod moto {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Dynamo::Moto).await
                }
            )*
        }
        mod dynamodb_local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Dynamo::DynamoDbLocal).await
                }
            )*
        }
    };
}

on_both!(
    http_ingress_lambda_contract,
    greeter_end_to_end_with_sqs_egress,
    egress_to_an_sns_topic,
    shopping_cart_with_delays_over_several_hops_and_cancel,
    racing_dispatchers_on_one_address_count_exactly,
    crash_between_commit_and_send_resends_on_redelivery_and_the_receiver_drops_duplicates,
    a_duplicate_delivery_is_applied_once,
    poison_goes_to_the_dlq_with_its_reason_and_blocks_nothing_else,
    an_oversized_state_is_refused_with_a_typed_error_and_nothing_else_is_lost,
    a_delay_longer_than_one_hop_arrives_on_time_and_a_cancel_is_honoured,
    sqs_ingress_routes_by_pointer_attribute_and_envelope,
    timers_sharing_a_token_and_a_timer_delivered_twice_in_one_batch_go_through,
    an_instance_deleted_as_ttl_would_keeps_its_messages_and_egress_ids_unique,
    thousands_of_keyed_messages_to_one_address_apply_once_and_its_item_stays_bounded,
    a_newer_builds_record_or_body_is_left_for_a_retry,
    a_conflicting_commit_leaves_only_facts_ahead_of_it,
);
