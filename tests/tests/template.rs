//! Checks of template.yaml that `sam validate --lint` and cfn-lint do not make: least
//! privilege, the Lambda settings this project relies on, and that `provision` creates
//! exactly the queues and table the template declares.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value as Json;
use statefun_e2e::Moto;
use statefun_infra::local::{Names, QueueSettings, provision};

fn template() -> Json {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../template.yaml");
    let text = std::fs::read_to_string(&path).expect("template.yaml");
    serde_norway::from_str(&text).expect("template.yaml is plain YAML (long-form intrinsics)")
}

fn resources(t: &Json, kind: &str) -> Vec<(String, Json)> {
    t["Resources"]
        .as_object()
        .expect("Resources")
        .iter()
        .filter(|(_, r)| r["Type"] == kind)
        .map(|(k, r)| (k.clone(), r.clone()))
        .collect()
}

/// Policy statements, including both branches of `Fn::If`.
fn statements(v: &Json, out: &mut Vec<Json>) {
    match v {
        Json::Array(items) => items.iter().for_each(|i| statements(i, out)),
        Json::Object(o) if o.contains_key("Fn::If") => {
            if let Some(Json::Array(branches)) = o.get("Fn::If") {
                branches[1..].iter().for_each(|b| statements(b, out));
            }
        }
        Json::Object(o) if o.contains_key("Effect") => out.push(v.clone()),
        _ => {}
    }
}

fn strings(v: &Json) -> Vec<String> {
    match v {
        Json::String(s) => vec![s.clone()],
        Json::Array(items) => items.iter().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}

#[test]
fn every_role_names_only_the_actions_and_resources_it_needs() {
    let t = template();
    let roles = resources(&t, "AWS::IAM::Role");
    assert_eq!(roles.len(), 4, "one role per role of the binary");
    for (name, role) in &roles {
        let mut all = Vec::new();
        for policy in role["Properties"]["Policies"]
            .as_array()
            .expect("inline policies")
        {
            statements(&policy["PolicyDocument"]["Statement"], &mut all);
        }
        assert!(!all.is_empty(), "{name} has no statements");
        for s in &all {
            assert_eq!(s["Effect"], "Allow", "{name}: {s}");
            for action in strings(&s["Action"]) {
                assert!(!action.contains('*'), "{name}: wildcard action {action}");
            }
            assert!(
                !s["Resource"].is_null(),
                "{name}: statement without resource: {s}"
            );
            for resource in strings(&s["Resource"]) {
                assert!(
                    !resource.contains('*'),
                    "{name}: wildcard resource {resource}"
                );
            }
        }
        assert!(
            role["Properties"]["ManagedPolicyArns"].is_null(),
            "{name}: managed policies are not scoped"
        );
    }
    for (name, f) in resources(&t, "AWS::Serverless::Function") {
        assert!(
            f["Properties"]["Role"].is_object(),
            "{name} must use its own role (SAM's default adds wildcard policies)"
        );
        assert!(
            f["Properties"]["Policies"].is_null(),
            "{name}: SAM policy templates are not checked here"
        );
    }
}

/// The dispatcher's role allows every DynamoDB call its store makes: an action the code
/// calls and the role lacks is an `AccessDeniedException` on AWS, found only under
/// load (the store names each call it makes, for its metrics, as a string).
#[test]
fn the_dispatcher_may_make_every_dynamodb_call_its_store_makes() {
    let source = include_str!("../../functions/aws/src/dynamo.rs");
    let t = template();
    let mut allowed = Vec::new();
    for policy in t["Resources"]["DispatcherRole"]["Properties"]["Policies"]
        .as_array()
        .expect("inline policies")
    {
        let mut all = Vec::new();
        statements(&policy["PolicyDocument"]["Statement"], &mut all);
        allowed.extend(all.iter().flat_map(|s| strings(&s["Action"])));
    }
    let apis = [
        "BatchGetItem",
        "BatchWriteItem",
        "DeleteItem",
        "GetItem",
        "PutItem",
        "Query",
        "Scan",
        "TransactWriteItems",
        "UpdateItem",
    ];
    let called: Vec<&str> = apis
        .into_iter()
        .filter(|api| source.contains(&format!("\"{api}\"")))
        .collect();
    assert!(
        called.contains(&"PutItem"),
        "the store's calls are named: {called:?}"
    );
    for api in called {
        // A transaction of Put items is authorized as PutItem.
        let action = match api {
            "TransactWriteItems" => "dynamodb:PutItem".to_string(),
            api => format!("dynamodb:{api}"),
        };
        assert!(
            allowed.contains(&action),
            "the dispatcher calls {api} but its role lacks {action}"
        );
    }
}

#[test]
fn functions_build_with_cargo_lambda_and_report_partial_batch_failures() {
    let t = template();
    assert_eq!(t["Globals"]["Function"]["Runtime"], "provided.al2023");
    assert_eq!(t["Parameters"]["Architecture"]["Default"], "arm64");
    let app = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../functions/examples/Cargo.toml"),
    )
    .expect("examples manifest");
    let timeout = t["Globals"]["Function"]["Timeout"]
        .as_u64()
        .expect("timeout");
    let queues: BTreeMap<String, Json> = resources(&t, "AWS::SQS::Queue").into_iter().collect();
    let functions = resources(&t, "AWS::Serverless::Function");
    // The HTTP ingress twice (behind the IAM or the JWT API, one of them deployed).
    assert_eq!(functions.len(), 5);
    for (name, f) in functions {
        assert_eq!(f["Metadata"]["BuildMethod"], "rust-cargolambda", "{name}");
        let binary = f["Metadata"]["BuildProperties"]["Binary"]
            .as_str()
            .expect("binary");
        assert!(
            app.contains(&format!("name = \"{binary}\"")),
            "{name}: no binary {binary} in functions/examples"
        );
        let role = f["Properties"]["Environment"]["Variables"]["STATEFUN_ROLE"]
            .as_str()
            .expect("STATEFUN_ROLE");
        let role: statefun_aws::app::Role = role.parse().expect("a role");
        assert_eq!(
            f["Properties"]["FunctionName"]["Fn::Sub"],
            format!("${{Prefix}}-{}", role.name()),
            "{name}: the function is named after its role"
        );
        for (event, e) in f["Properties"]["Events"].as_object().expect("events") {
            if e["Type"] != "SQS" {
                continue;
            }
            let p = &e["Properties"];
            assert_eq!(
                p["FunctionResponseTypes"],
                serde_json::json!(["ReportBatchItemFailures"]),
                "{name}.{event}"
            );
            assert!(
                p["ScalingConfig"]["MaximumConcurrency"].is_object(),
                "{name}.{event}: MaximumConcurrency"
            );
            if let Some(queue) = p["Queue"]["Fn::GetAtt"][0].as_str() {
                let visibility = queues[queue]["Properties"]["VisibilityTimeout"]
                    .as_u64()
                    .expect("visibility");
                assert!(
                    visibility >= 6 * timeout,
                    "{queue}: visibility {visibility} s < 6 x {timeout} s"
                );
            }
        }
    }
}

fn attributes(resource: &Json) -> BTreeMap<String, String> {
    let p = &resource["Properties"];
    let mut out = BTreeMap::new();
    for key in [
        "FifoQueue",
        "ContentBasedDeduplication",
        "DeduplicationScope",
        "FifoThroughputLimit",
        "VisibilityTimeout",
        "MessageRetentionPeriod",
    ] {
        if let Some(v) = p.get(key) {
            out.insert(key.to_string(), v.to_string().trim_matches('"').to_string());
        }
    }
    if let Some(r) = p.get("RedrivePolicy") {
        out.insert("maxReceiveCount".into(), r["maxReceiveCount"].to_string());
        let dlq = r["deadLetterTargetArn"]["Fn::GetAtt"][0]
            .as_str()
            .expect("dlq")
            .to_string();
        out.insert("deadLetterTarget".into(), dlq);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_creates_what_the_template_declares() {
    let t = template();
    let moto = Moto::start();
    let sdk = statefun_aws::app::sdk_config(Some(&moto.url), true).await;
    let clients = statefun_aws::app::clients(&sdk);
    let prefix = "tpl";
    provision(&clients, prefix, QueueSettings::default(), |_| None)
        .await
        .expect("provision");
    let names = Names::new(prefix);
    let logical = [
        ("Inbox", &names.inbox),
        ("DeadLetterQueue", &names.dlq),
        ("DelayQueue", &names.delay),
        ("DelayDeadLetterQueue", &names.delay_dlq),
    ];
    let by_name: BTreeMap<&str, &str> = logical.iter().map(|(l, n)| (n.as_str(), *l)).collect();
    for (resource, name) in logical {
        let declared = &t["Resources"][resource];
        assert_eq!(
            declared["Properties"]["QueueName"]["Fn::Sub"],
            format!("${{Prefix}}{}", name.trim_start_matches(prefix))
        );
        let url = clients
            .sqs
            .get_queue_url()
            .queue_name(name.as_str())
            .send()
            .await
            .expect("queue")
            .queue_url()
            .expect("url")
            .to_string();
        let got = clients
            .sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
            .send()
            .await
            .expect("attributes");
        let got: BTreeMap<String, String> = got
            .attributes()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str().to_string(), v.clone()))
            .collect();
        for (key, want) in attributes(declared) {
            match key.as_str() {
                "maxReceiveCount" | "deadLetterTarget" => {
                    let redrive: Json =
                        serde_json::from_str(&got["RedrivePolicy"]).expect("redrive");
                    if key == "maxReceiveCount" {
                        assert_eq!(
                            redrive["maxReceiveCount"].to_string().trim_matches('"'),
                            want,
                            "{resource}"
                        );
                    } else {
                        let target = redrive["deadLetterTargetArn"]
                            .as_str()
                            .expect("arn")
                            .rsplit(':')
                            .next()
                            .expect("name")
                            .to_string();
                        assert_eq!(
                            by_name[target.as_str()],
                            want,
                            "{resource}: dead-letter target"
                        );
                    }
                }
                _ => assert_eq!(
                    got.get(&key).map(String::as_str),
                    Some(want.as_str()),
                    "{resource}.{key}"
                ),
            }
        }
    }
    let table = clients
        .dynamodb
        .describe_table()
        .table_name(&names.table)
        .send()
        .await
        .expect("table");
    let table = table.table().expect("table");
    let declared = &t["Resources"]["StateTable"]["Properties"];
    assert_eq!(declared["TableName"]["Fn::Sub"], "${Prefix}-state");
    let keys: Vec<(String, String)> = table
        .key_schema()
        .iter()
        .map(|k| {
            (
                k.attribute_name().to_string(),
                k.key_type().as_str().to_string(),
            )
        })
        .collect();
    assert_eq!(keys, vec![("pk".to_string(), "HASH".to_string())]);
    assert_eq!(
        declared["KeySchema"],
        serde_json::json!([{"AttributeName": "pk", "KeyType": "HASH"}])
    );
    assert_eq!(
        table
            .billing_mode_summary()
            .and_then(|b| b.billing_mode())
            .map(|m| m.as_str()),
        Some(declared["BillingMode"].as_str().expect("billing"))
    );
    let ttl = clients
        .dynamodb
        .describe_time_to_live()
        .table_name(&names.table)
        .send()
        .await
        .expect("ttl");
    assert_eq!(
        ttl.time_to_live_description()
            .and_then(|d| d.attribute_name()),
        declared["TimeToLiveSpecification"]["AttributeName"].as_str()
    );
}

/// A `{"Fn::Sub": "…"}` with the prefix `p`.
fn sub(v: &Json) -> String {
    v["Fn::Sub"]
        .as_str()
        .unwrap_or_default()
        .replace("${Prefix}", "p")
}

/// An alarm's metric, as `namespace/metric/dimension value` with the prefix `p`.
fn alarm_metric(alarm: &Json) -> String {
    let p = &alarm["Properties"];
    let dimension = sub(&p["Dimensions"][0]["Value"]);
    format!(
        "{}/{}/{}",
        p["Namespace"].as_str().unwrap_or_default(),
        p["MetricName"].as_str().unwrap_or_default(),
        dimension
    )
}

#[test]
fn monitoring_alarms_on_dead_letters_inbox_age_errors_and_throttles() {
    let t: Json = serde_norway::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/monitoring.yaml"),
        )
        .expect("infra/monitoring.yaml"),
    )
    .expect("YAML");
    let mut alarms: Vec<String> = resources(&t, "AWS::CloudWatch::Alarm")
        .iter()
        .map(|(_, alarm)| {
            let p = &alarm["Properties"];
            assert_eq!(p["TreatMissingData"], "notBreaching", "{alarm}");
            assert!(
                p["AlarmActions"].to_string().contains("AlarmTopicArn"),
                "notifies the topic: {alarm}"
            );
            alarm_metric(alarm)
        })
        .collect();
    alarms.sort();
    assert_eq!(
        alarms,
        [
            "AWS/Lambda/Errors/p-dispatcher",
            "AWS/Lambda/Throttles/p-dispatcher",
            "AWS/SQS/ApproximateAgeOfOldestMessage/p-inbox.fifo",
            "AWS/SQS/ApproximateNumberOfMessagesVisible/p-delay-dlq",
            "AWS/SQS/ApproximateNumberOfMessagesVisible/p-dlq.fifo",
        ]
    );
    // The queue names are the ones the deployment creates.
    let deployment = template();
    for queue in ["DeadLetterQueue", "Inbox", "DelayDeadLetterQueue"] {
        let name = sub(&deployment["Resources"][queue]["Properties"]["QueueName"]);
        assert!(
            alarms.iter().any(|a| a.ends_with(&format!("/{name}"))),
            "{name} has an alarm"
        );
    }
    let dashboard = resources(&t, "AWS::CloudWatch::Dashboard");
    let body = sub(&dashboard[0].1["Properties"]["DashboardBody"]);
    let body: Json = serde_json::from_str(&body).expect("the dashboard body is JSON");
    assert!(body["widgets"].as_array().is_some_and(|w| w.len() >= 6));
    let monitor = &deployment["Resources"]["Monitor"];
    assert_eq!(monitor["Properties"]["Location"], "infra/monitoring.yaml");
    // Every parameter of the nested stack is the deployment's to set.
    for (name, _) in t["Parameters"].as_object().expect("parameters") {
        assert_eq!(
            monitor["Properties"]["Parameters"][name]["Ref"],
            name.as_str(),
            "template.yaml passes {name} to the monitoring stack"
        );
        assert!(
            deployment["Parameters"][name].is_object(),
            "template.yaml has a {name} parameter"
        );
    }
}
