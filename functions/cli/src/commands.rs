//! The command line: `run` (the embedded runtime) and, with the `aws` feature,
//! `provision`, `poll`, `send` and `state` against a deployment or an emulator.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{FromArgMatches, Parser, Subcommand, ValueEnum};
use statefun_embedded::{EmbeddedConfig, Runtime, StdoutEgress};
use tracing::{info, warn};

use crate::App;

/// Said when an AWS command or role runs in a binary built without the `aws` feature.
#[cfg(not(feature = "aws"))]
pub(crate) const NO_AWS: &str = "this binary was built without the `aws` feature \
    (the AWS SDK); rebuild with `--features aws` (cargo lambda build turns it on from \
    [package.metadata.lambda.build])";

/// Options of an application that has none.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct NoArgs {}

#[derive(Debug, Parser)]
#[command(name = "statefun-lambda", version, about)]
pub(crate) struct Cli<A: clap::Args> {
    #[command(subcommand)]
    pub(crate) command: Command<A>,
    /// Log format on stderr (filter with RUST_LOG, default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command<A: clap::Args> {
    /// Run the embedded runtime with this binary's functions: durable state in
    /// --data-dir, HTTP ingress on 127.0.0.1:--port, egress as JSON lines on stdout.
    Run(RunArgs<A>),
    /// Create the state table and queues of a deployment prefix (as the template
    /// declares them) and print the Lambdas' environment.
    Provision(ProvisionArgs),
    /// Play Lambda's SQS event sources: long-poll the inbox, delay and ingress queues
    /// and run the same handlers in-process until Ctrl-C.
    Poll(PollArgs),
    /// Enqueue a message for an address.
    Send(SendArgs),
    /// Print an address's state as JSON (the embedded runtime's GET shape).
    State(StateArgs),
    /// Create a project of your own: Cargo.toml, src/main.rs with one function and its
    /// test, module.yaml, template.yaml, README.
    New(crate::scaffold::NewArgs),
    /// The dead letters of a deployment (its DLQ) or of an embedded data dir: list them,
    /// or replay them into the inbox.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Read every stored record and queued body with this build's readers and report
    /// what it cannot decode, and why: the check to run before and after an upgrade.
    /// One JSON line per table or queue; exits non-zero when anything does not read.
    Verify(VerifyArgs),
    /// What a deployment of the template costs for a traffic mix: USD per million
    /// messages and per month by kind, from the units the benchmarks measured and
    /// AWS's list prices (their date printed).
    Cost(CostArgs),
    /// SQS egress queues.
    Egress {
        #[command(subcommand)]
        command: EgressCommand,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// One JSON line per dead letter: address, message id, reason, handler, source group,
    /// when it first failed and when it was dead-lettered. On SQS each letter shown is
    /// hidden for 30 s, and a FIFO group shows its first 10 (the rest are counted).
    List(DlqArgs),
    /// Put dead letters back into the inbox under fresh ids (replay:<dlq id>), so that
    /// receivers apply them rather than drop them as seen (with --queue delay: back on
    /// the delay queue, unchanged); prints each replayed message.
    Replay(ReplayArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct DlqArgs {
    #[command(flatten)]
    aws: AwsArgs,
    /// An embedded runtime's data dir instead of the AWS deployment (while no runtime
    /// has it open; a replay runs at its next start).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Which of the deployment's DLQs: the inbox's (what the handlers dead-lettered),
    /// or the delay queue's (delayed messages SQS gave up forwarding; replayed into the
    /// delay queue unchanged).
    #[arg(long, value_enum, default_value_t = DlqQueue::Inbox, conflicts_with = "data_dir")]
    queue: DlqQueue,
}

#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    aws: AwsArgs,
    /// An embedded runtime's data dir instead of the AWS deployment (while no runtime
    /// has it open; an older layout is read as it is, not migrated).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Also read the live inbox and delay queue (each message hidden from the Lambdas
    /// for 2 s while it is read); without it, the table and the two DLQs.
    #[arg(long, conflicts_with = "data_dir")]
    live_queues: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum DlqQueue {
    Inbox,
    Delay,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ReplayArgs {
    #[command(flatten)]
    target: DlqArgs,
    /// Only the letters of this address, namespace/type/id.
    #[arg(long)]
    address: Option<String>,
    /// Only the letters whose reason contains this text.
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum EgressCommand {
    /// Print what arrives on an SQS egress queue, one body per line, until Ctrl-C (or
    /// --count). Each message printed is hidden from other consumers for --hide-secs,
    /// unless --delete consumes it.
    Tail(TailArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct TailArgs {
    #[command(flatten)]
    aws: AwsArgs,
    /// The queue: its URL, or its name.
    queue: String,
    /// Delete what is printed (consume the queue).
    #[arg(long)]
    delete: bool,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<usize>,
    /// Seconds a printed message stays hidden from the queue's other consumers.
    #[arg(long, default_value_t = 30)]
    hide_secs: u64,
}

/// `--address namespace/type/id`.
fn parse_address(text: &str) -> anyhow::Result<statefun_core::Address> {
    let mut parts = text.splitn(3, '/');
    let (Some(namespace), Some(kind), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
        anyhow::bail!("--address {text:?}: expected namespace/type/id");
    };
    let t = statefun_core::TypeName::parse(format!("{namespace}/{kind}"))?;
    anyhow::ensure!(
        !id.is_empty(),
        "--address {text:?}: the id must not be empty"
    );
    Ok(statefun_core::Address::new(t, id))
}

/// One line of `dlq replay`: a message put back, under its fresh id.
fn print_replayed(envelope: &statefun_core::Envelope) {
    println!(
        "{}",
        serde_json::json!({"address": envelope.target.to_string(), "message_id": envelope.id.to_string()})
    );
}

/// `dlq list|replay --data-dir`: the embedded runtime's dead letters.
fn embedded_dlq(dir: &std::path::Path, command: &DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List(_) => {
            for (row, letter) in statefun_embedded::dead_letters_at(dir)? {
                println!(
                    "{}",
                    serde_json::json!({
                        "address": letter.envelope.target.to_string(),
                        "message_id": letter.envelope.id.to_string(),
                        "reason": letter.reason,
                        "handler": "embedded",
                        "source_group": letter.envelope.target.to_string(),
                        "first_failure_ms": letter.first_failure_ms,
                        "dead_lettered_at_ms": letter.at_ms,
                        "dlq_id": row.to_string(),
                    })
                );
            }
        }
        DlqCommand::Replay(args) => {
            let address = args.address.as_deref().map(parse_address).transpose()?;
            let reason = args.reason.as_deref();
            let replayed = statefun_embedded::replay_at(dir, |letter| {
                address
                    .as_ref()
                    .is_none_or(|a| *a == letter.envelope.target)
                    && reason.is_none_or(|r| letter.reason.contains(r))
            })?;
            replayed.iter().for_each(print_replayed);
        }
    }
    Ok(())
}

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct AwsArgs {
    /// Resource name prefix: <prefix>-state, <prefix>-inbox.fifo, <prefix>-delay, …
    #[arg(long, env = "STATEFUN_PREFIX", default_value = "statefun")]
    prefix: String,
    /// Endpoint of an emulator (moto server, DynamoDB Local, LocalStack) for every
    /// service. Unset: the SDK's own resolution — AWS_ENDPOINT_URL,
    /// AWS_ENDPOINT_URL_DYNAMODB / _SQS / _SNS per service — else AWS.
    #[arg(long)]
    endpoint_url: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ProvisionArgs {
    #[command(flatten)]
    aws: AwsArgs,
    /// Visibility timeout of the inbox and delay queue, in seconds (template.yaml's).
    #[arg(long, default_value_t = 180)]
    visibility_timeout: u64,
}

#[derive(Debug, clap::Args)]
pub(crate) struct PollArgs {
    #[command(flatten)]
    aws: AwsArgs,
    /// Names of ingress queues to poll through the SQS ingress handler
    /// (routes: STATEFUN_INGRESS_ROUTES).
    #[arg(long = "ingress-queue")]
    ingress_queues: Vec<String>,
    /// Long-poll wait, in seconds.
    #[arg(long, default_value_t = 10)]
    wait: u64,
}

#[derive(Debug, clap::Args)]
pub(crate) struct SendArgs {
    #[command(flatten)]
    aws: AwsArgs,
    /// The function type, namespace/type.
    function_type: String,
    id: String,
    /// The value's type name; built-in types take their plain text form.
    #[arg(long = "type", default_value = "io.statefun.types/string")]
    typename: String,
    value: String,
    /// A key that makes the message id stable: sending twice applies once.
    #[arg(long)]
    key: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct StateArgs {
    #[command(flatten)]
    aws: AwsArgs,
    /// Read the embedded runtime's data dir instead of the AWS deployment (while no
    /// runtime has it open; a running one answers GET /{namespace}/{type}/{id}).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    function_type: String,
    id: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs<A: clap::Args> {
    /// Port of the HTTP ingress on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8090)]
    port: u16,
    /// Where state, inbox and timers are kept.
    #[arg(long, default_value = "statefun-data")]
    data_dir: PathBuf,
    /// Largest HTTP ingress body, in bytes.
    #[arg(long, default_value_t = 256 * 1024)]
    max_body_bytes: usize,
    /// Messages taken per processing round.
    #[arg(long, default_value_t = 4096)]
    max_batch_messages: usize,
    /// How long the engine's commits may stay in memory before one is made durable
    /// (fsync), in ms. Accepted messages are durable before their 202 regardless; a
    /// crash redoes at most this much processing from them. 0: every round is durable.
    #[arg(long, default_value_t = 10)]
    durable_interval_ms: u64,
    /// How many nice steps below the threads answering HTTP the engine thread runs
    /// (Linux). On a busy CPU a 202 goes first, and the engine catches up in bigger,
    /// cheaper rounds. 0: the same priority.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=39))]
    engine_nice: i32,
    /// Messages the engine may hold queued (all function types); past it a POST is
    /// answered 503 with Retry-After.
    #[arg(long, default_value_t = statefun_embedded::QueueLimits::default().max_messages)]
    max_queued_messages: usize,
    /// Bytes the queued messages may take (payloads plus 256 each): memory stays
    /// bounded whatever the payload size. Past it a POST is answered 503.
    #[arg(long, default_value_t = statefun_embedded::QueueLimits::default().max_bytes)]
    max_queued_bytes: usize,
    /// The percentage of both queue limits one function type may take; past it a POST
    /// to that type is answered 429, and the others keep being accepted.
    #[arg(long, default_value_t = statefun_embedded::QueueLimits::default().type_share_percent, value_parser = clap::value_parser!(u8).range(1..=100))]
    max_queued_share: u8,
    /// Longest wait for a request's headers; a client that never finishes them is closed.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    header_read_timeout: Duration,
    /// Longest wait for a request's body (then 408).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    body_read_timeout: Duration,
    /// How long a keep-alive connection may sit with no request before it is closed
    /// (the header-read timeout, if shorter, closes it first).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Connections served at once; one more is answered 503 with Retry-After. Default
    /// 1024, or fewer when the open-files limit leaves less room.
    #[arg(long)]
    max_connections: Option<usize>,
    /// How long SIGTERM or Ctrl-C waits for requests in progress before it abandons
    /// them; a second signal exits at once.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    shutdown_timeout: Duration,
    /// A host name the HTTP ingress answers to besides IP addresses and localhost
    /// (repeatable); requests naming any other Host are refused (DNS rebinding).
    #[arg(long = "allowed-host")]
    allowed_hosts: Vec<String>,
    /// A token every route but /healthz requires, as `Authorization: Bearer <token>`.
    #[arg(long, env = "STATEFUN_AUTH_TOKEN", hide_env_values = true)]
    auth_token: Option<String>,
    /// A module.yaml: remote function endpoints (StateFun's io.statefun.endpoints.v2/http),
    /// which function types the HTTP ingress exposes, egress declarations.
    #[arg(long)]
    module: Option<PathBuf>,
    /// Test fail point: abort right after the first state commit, from this many on,
    /// that has egress to send (before it is sent).
    #[arg(long, hide = true)]
    crash_after_commits: Option<u64>,
    /// Test knob: the dedup bytes an instance record keeps before it moves entries out
    /// (0: every commit moves all of them, so every redelivery is judged from outside).
    #[arg(long, hide = true)]
    dedup_budget_bytes: Option<usize>,
    /// The application's own options.
    #[command(flatten)]
    app: A,
}

/// A duration flag: a number with `ms`, `s`, `m` or `h` (`30s`, `500ms`, `2m`); a bare
/// number is seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: use e.g. 30s, 500ms, 2m"))?;
    let unit_ms = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use ms, s, m or h"
            ));
        }
    };
    Ok(Duration::from_millis(n.saturating_mul(unit_ms)))
}

pub(crate) fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        // Without a signal handler there is nothing to wait for; run until killed.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    info!("shutting down");
}

async fn run<A: clap::Args + FromArgMatches + 'static>(
    app: &App<A>,
    args: RunArgs<A>,
) -> anyhow::Result<()> {
    let registry = app
        .registry(&args.app)
        .context("registering the functions")?;
    let mut config = EmbeddedConfig::new(&args.data_dir);
    config.max_body_bytes = args.max_body_bytes;
    config.queue = statefun_embedded::QueueLimits {
        max_messages: args.max_queued_messages,
        max_bytes: args.max_queued_bytes,
        type_share_percent: args.max_queued_share,
    };
    config.max_batch_messages = args.max_batch_messages.max(1);
    config.durable_interval = std::time::Duration::from_millis(args.durable_interval_ms);
    config.engine_nice = args.engine_nice;
    config.crash_after_commits = args.crash_after_commits;
    if let Some(budget) = args.dedup_budget_bytes {
        config.batch.dedup_budget_bytes = budget;
    }
    if let Some(path) = &args.module {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let module = statefun_core::module::Module::parse(&path.display().to_string(), &text)?;
        for egress in &module.egresses {
            if egress.target != statefun_core::module::EgressTarget::Stdout {
                info!(egress = %egress.id, "egress records go to stdout in the embedded runtime");
            }
        }
        for ingress in &module.external_ingresses {
            warn!(
                "{}",
                ingress.instead(statefun_core::module::IngressHost::Embedded)
            );
        }
        info!(
            endpoints = module.endpoints.len(),
            "loaded {}",
            path.display()
        );
        config.remote = Some(std::sync::Arc::new(statefun_embedded::HttpFunctions::new(
            module,
        )?));
    }
    let mut runtime = Runtime::start(registry, config, Box::new(StdoutEgress))
        .with_context(|| format!("opening the data dir {}", args.data_dir.display()))?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the HTTP ingress to {addr}"))?;
    let local = listener.local_addr()?;
    info!(data_dir = %args.data_dir.display(), "listening on http://{local}");
    let engine_stopped = runtime.engine_stopped();
    let stop = async move {
        tokio::select! {
            () = shutdown_signal() => {},
            () = engine_stopped => tracing::error!("the engine stopped; shutting down"),
        }
        // A second signal does not wait: everything answered 202 is on disk already.
        tokio::spawn(async {
            shutdown_signal().await;
            tracing::error!("a second signal: exiting at once");
            std::process::exit(130);
        });
    };
    let http = http_config(&args);
    let served =
        statefun_embedded::ingress::serve_with(listener, runtime.handle(), &http, stop).await?;
    if served.abandoned > 0 {
        info!(
            connections = served.abandoned,
            "stopped with requests unanswered"
        );
    }
    runtime.shutdown().context("the engine failed")?;
    Ok(())
}

/// The HTTP server's bounds: the flags, with a connection cap that leaves room in the
/// open-files limit (raised to its hard limit first) for the store and remote calls.
fn http_config<A: clap::Args>(args: &RunArgs<A>) -> statefun_embedded::HttpConfig {
    /// Descriptors kept for everything but client connections.
    const RESERVE: u64 = 64;
    let open_files = statefun_embedded::raise_open_files_limit();
    let room = open_files.map(|n| n.saturating_sub(RESERVE).max(1) as usize);
    let max_connections = match (args.max_connections, room) {
        (Some(n), Some(room)) if n > room => {
            warn!(max_connections = n, open_files = ?open_files, "--max-connections is above what the open-files limit leaves room for: past it, connections are refused only when descriptors run out");
            n
        }
        (Some(n), _) => n,
        (None, room) => room.map_or(1024, |room| room.min(1024)),
    };
    statefun_embedded::HttpConfig {
        header_read_timeout: args.header_read_timeout,
        body_read_timeout: args.body_read_timeout,
        idle_timeout: args.idle_timeout,
        max_connections,
        shutdown_timeout: args.shutdown_timeout,
        allowed_hosts: args.allowed_hosts.clone(),
        auth_token: args.auth_token.clone(),
    }
}

/// The AWS commands: a deployment or an emulator, as the Lambdas see it.
#[cfg(feature = "aws")]
mod aws {
    use std::time::Duration;

    use anyhow::Context as _;
    use clap::FromArgMatches;
    use statefun_infra::ops::Dlq;
    use tracing::info;

    use super::{
        AwsArgs, DlqCommand, DlqQueue, PollArgs, ProvisionArgs, ReplayArgs, SendArgs, StateArgs,
        TailArgs, VerifyArgs, parse_address, print_found, print_replayed, shutdown_signal,
        verified,
    };

    /// `verify --prefix`: the state table, the DLQs and (asked) the live queues.
    pub(super) async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
        let clients = aws_clients(&args.aws).await;
        let names = statefun_infra::local::Names::new(&args.aws.prefix);
        let bar = super::progress_bar("reading the state table");
        let table = statefun_infra::verify::table(&clients, &names.table, |n| bar.inc(n)).await;
        bar.finish_and_clear();
        let mut undecodable = print_found(serde_json::to_value(table?)?);
        for (queue, kind, hide) in
            statefun_infra::verify::queues(&args.aws.prefix, args.live_queues)
        {
            let bar = spinner("reading a queue");
            let found = statefun_infra::verify::queue(&clients, &queue, kind, hide, |n| {
                bar.set_message(format!("{queue}: {n} bodies read"));
            })
            .await;
            bar.finish_and_clear();
            undecodable += print_found(serde_json::to_value(found?)?);
        }
        verified(undecodable)
    }

    /// A spinner on stderr for an operation that may take more than a moment (hidden when
    /// stderr is not a terminal).
    fn spinner(what: &'static str) -> indicatif::ProgressBar {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(what);
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }

    use crate::App;

    pub(super) async fn aws_clients(args: &AwsArgs) -> statefun_aws::transport::Clients {
        // Emulators accept any credentials; default them when none are configured.
        let emulator = (args.endpoint_url.is_some()
            || std::env::var_os("AWS_ENDPOINT_URL").is_some())
            && std::env::var_os("AWS_ACCESS_KEY_ID").is_none();
        let sdk = statefun_aws::app::sdk_config(args.endpoint_url.as_deref(), emulator).await;
        statefun_aws::app::clients(&sdk)
    }

    fn env_var(name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    pub(super) async fn provision(args: ProvisionArgs) -> anyhow::Result<()> {
        let clients = aws_clients(&args.aws).await;
        let settings = statefun_infra::local::QueueSettings {
            visibility_timeout: Duration::from_secs(args.visibility_timeout),
            ..Default::default()
        };
        let config =
            statefun_infra::local::provision(&clients, &args.aws.prefix, settings, env_var).await?;
        println!("export STATEFUN_STATE_TABLE={}", config.table);
        println!("export STATEFUN_INBOX_QUEUE_URL={}", config.inbox_url);
        println!("export STATEFUN_DELAY_QUEUE_URL={}", config.delay_url);
        println!("export STATEFUN_DLQ_URL={}", config.dlq_url);
        Ok(())
    }

    /// The deployment's configuration as the Lambdas see it: resolved queue URLs, and the
    /// module in STATEFUN_MODULE, else the bundled one (remote functions, SQS ingresses,
    /// egresses).
    async fn aws_config<A: clap::Args + FromArgMatches + 'static>(
        app: &App<A>,
        clients: &statefun_aws::transport::Clients,
        prefix: &str,
    ) -> anyhow::Result<statefun_aws::config::AwsConfig> {
        let config = statefun_infra::local::resolve(clients, prefix, env_var).await?;
        crate::lambda::with_bundled_module(app, config)
    }

    pub(super) async fn poll<A: clap::Args + FromArgMatches + 'static>(
        app: &App<A>,
        args: PollArgs,
    ) -> anyhow::Result<()> {
        let clients = aws_clients(&args.aws).await;
        let config = aws_config(app, &clients, &args.aws.prefix).await?;
        let registry = app.registry(&app.args_from_env()?)?;
        let remote = statefun_aws::app::remote_functions(&config)?;
        let handlers = std::sync::Arc::new(statefun_aws::app::Handlers::with_remote(
            &config,
            &clients,
            std::sync::Arc::new(registry),
            std::sync::Arc::new(statefun_core::ports::SystemClock),
            remote,
        ));
        let mut queues = vec![
            ("dispatcher", config.inbox_url.clone()),
            ("timer-forwarder", config.delay_url.clone()),
        ];
        for name in &args.ingress_queues {
            let url = clients.sqs.get_queue_url().queue_name(name).send().await?;
            queues.push((
                "sqs-ingress",
                url.queue_url().unwrap_or_default().to_string(),
            ));
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (handler, url) in queues {
            let mut poller =
                statefun_infra::local::Poller::new(clients.clone(), Duration::from_secs(args.wait));
            let handlers = handlers.clone();
            info!(handler, queue = %url, "polling");
            tasks.spawn(async move {
                loop {
                    let h = handlers.clone();
                    let polled = poller
                        .poll_once(&url, |event| async move {
                            match handler {
                                "dispatcher" => h.dispatcher.handle(event).await,
                                "timer-forwarder" => h.forwarder.handle(event).await,
                                _ => h.ingress.handle(event).await,
                            }
                        })
                        .await;
                    if let Err(e) = polled {
                        tracing::warn!(handler, error = %e, "poll failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            });
        }
        shutdown_signal().await;
        tasks.shutdown().await;
        Ok(())
    }

    fn address(function_type: &str, id: &str) -> anyhow::Result<statefun_core::Address> {
        let t = statefun_core::TypeName::parse(function_type)?;
        anyhow::ensure!(!id.is_empty(), "the id must not be empty");
        Ok(statefun_core::Address::new(t, id))
    }

    pub(super) async fn send<A: clap::Args + FromArgMatches + 'static>(
        app: &App<A>,
        args: SendArgs,
    ) -> anyhow::Result<()> {
        let clients = aws_clients(&args.aws).await;
        let config = aws_config(app, &clients, &args.aws.prefix).await?;
        let target = address(&args.function_type, &args.id)?;
        anyhow::ensure!(
            app.registry(&app.args_from_env()?)?
                .contains(&target.function_type)
                || config.module.endpoint(&target.function_type).is_some(),
            "no function is registered for type {} (neither compiled in nor a remote function \
             of the module: STATEFUN_MODULE or the bundled module.yaml)",
            target.function_type
        );
        let typename = statefun_core::TypeName::parse(args.typename)?;
        let value = match statefun_core::builtin::from_text(&typename, &args.value) {
            Some(parsed) => parsed.map_err(anyhow::Error::msg)?,
            None => statefun_core::TypedValue::from_bytes(typename, args.value.into_bytes()),
        };
        let key = args.key.unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            format!("{nanos:x}-{}", std::process::id())
        });
        let envelope = statefun_core::Envelope {
            id: statefun_core::MessageId::Keyed(format!("cli:{key}")),
            target,
            caller: None,
            value,
        };
        statefun_infra::local::send(&clients, &config, &envelope).await?;
        println!(
            "{}",
            serde_json::json!({ "message_id": envelope.id.to_string() })
        );
        Ok(())
    }

    pub(super) async fn dlq<A: clap::Args + FromArgMatches + 'static>(
        app: &App<A>,
        command: DlqCommand,
    ) -> anyhow::Result<()> {
        let (DlqCommand::List(target) | DlqCommand::Replay(ReplayArgs { target, .. })) = &command;
        let clients = aws_clients(&target.aws).await;
        let config = aws_config(app, &clients, &target.aws.prefix).await?;
        let (kind, url) = match target.queue {
            DlqQueue::Inbox => (Dlq::Inbox, config.dlq_url.clone()),
            DlqQueue::Delay => {
                let name = statefun_infra::local::Names::new(&target.aws.prefix).delay_dlq;
                let url = clients.sqs.get_queue_url().queue_name(&name).send().await;
                let url = url.with_context(|| format!("the delay queue's DLQ {name}"))?;
                (Dlq::Delay, url.queue_url().unwrap_or_default().to_string())
            }
        };
        match command {
            DlqCommand::List(_) => {
                let bar = spinner("reading the DLQ");
                let letters = statefun_infra::ops::receive(&clients, &url, kind, |n| {
                    bar.set_message(format!("{n} dead letters read"));
                })
                .await;
                bar.finish_and_clear();
                let letters = letters?;
                for letter in &letters {
                    println!("{}", letter.view());
                }
                let depth = statefun_infra::ops::depth(&clients, &url).await?;
                statefun_infra::ops::release(&clients, &url, &letters).await?;
                let unseen = depth.saturating_sub(letters.len() as u64);
                if unseen > 0 {
                    tracing::warn!(
                        unseen,
                        "about this many more letters were not shown: hidden by another \
                         reader, or (on the inbox's FIFO DLQ) behind the ones listed in \
                         their groups, which a replay reaches"
                    );
                }
            }
            DlqCommand::Replay(args) => {
                let selection = statefun_infra::ops::Selection {
                    address: args.address.as_deref().map(parse_address).transpose()?,
                    reason: args.reason,
                };
                let bar = spinner("replaying dead letters");
                let mut count = 0;
                let left = statefun_infra::ops::replay(
                    &clients,
                    &config,
                    (kind, &url),
                    &selection,
                    |sent| {
                        // Printed as sent: a run that fails later still says what went.
                        bar.suspend(|| sent.iter().for_each(print_replayed));
                        count += sent.len();
                        bar.set_message(format!("{count} replayed"));
                    },
                )
                .await;
                bar.finish_and_clear();
                let left = left?;
                let skipped = left.iter().filter(|l| l.envelope.is_none()).count();
                if skipped > 0 {
                    tracing::warn!(
                        skipped,
                        "letters whose body is not a message envelope stay on the DLQ"
                    );
                }
                let unseen = statefun_infra::ops::depth(&clients, &url)
                    .await?
                    .saturating_sub(left.len() as u64);
                if unseen > 0 && kind == Dlq::Inbox {
                    tracing::warn!(
                        unseen,
                        "about this many letters were not reached: they wait behind letters \
                         left on the DLQ in their FIFO groups (or arrived meanwhile)"
                    );
                }
            }
        }
        Ok(())
    }

    pub(super) async fn tail(args: TailArgs) -> anyhow::Result<()> {
        let clients = aws_clients(&args.aws).await;
        let url = if args.queue.contains("://") {
            args.queue.clone()
        } else {
            clients
                .sqs
                .get_queue_url()
                .queue_name(&args.queue)
                .send()
                .await?
                .queue_url()
                .unwrap_or_default()
                .to_string()
        };
        let mut seen = std::collections::HashSet::new();
        let mut printed = 0;
        loop {
            if args.count.is_some_and(|n| printed >= n) {
                return Ok(());
            }
            let polled = tokio::select! {
                polled = statefun_infra::ops::poll_egress(&clients, &url, Duration::from_secs(10), Duration::from_secs(args.hide_secs), args.delete) => polled?,
                () = shutdown_signal() => return Ok(()),
            };
            for (id, body) in polled {
                if seen.insert(id) && args.count.is_none_or(|n| printed < n) {
                    println!("{body}");
                    printed += 1;
                }
            }
        }
    }

    pub(super) async fn state<A: clap::Args + FromArgMatches + 'static>(
        app: &App<A>,
        args: StateArgs,
    ) -> anyhow::Result<()> {
        use statefun_core::ports::Clock;
        let clients = aws_clients(&args.aws).await;
        let config = aws_config(app, &clients, &args.aws.prefix).await?;
        let target = address(&args.function_type, &args.id)?;
        let now = statefun_core::ports::SystemClock.now_ms();
        println!(
            "{}",
            statefun_infra::local::state(&clients, &config, &target, now).await?
        );
        Ok(())
    }
}

fn dlq_data_dir(command: &DlqCommand) -> Option<PathBuf> {
    match command {
        DlqCommand::List(args) | DlqCommand::Replay(ReplayArgs { target: args, .. }) => {
            args.data_dir.clone()
        }
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
fn progress_bar(what: &'static str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {wide_bar} {pos}/{len}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(what);
    bar
}

/// Prints what `verify` found in one place and counts what did not read.
fn print_found(line: serde_json::Value) -> u64 {
    let undecodable = line["undecodable"].as_array().map_or(0, Vec::len) as u64;
    if let Some(n) = line["not_reached"].as_u64().filter(|n| *n > 0) {
        tracing::warn!(
            source = %line["source"],
            not_reached = n,
            "not every message was reached (hidden by another reader, or behind in-flight \
             ones of their FIFO group): run verify again for them"
        );
    }
    println!("{line}");
    undecodable
}

/// The end of `verify`: non-zero when anything does not read.
fn verified(undecodable: u64) -> anyhow::Result<()> {
    anyhow::ensure!(
        undecodable == 0,
        "{undecodable} records or bodies cannot be read by this build (see the lines above)"
    );
    tracing::info!("every record and body reads with this build");
    Ok(())
}

/// `verify --data-dir`.
fn embedded_verify(dir: &std::path::Path) -> anyhow::Result<()> {
    let bar = progress_bar("reading the data dir");
    let report = statefun_embedded::verify_at(dir, |n| bar.set_length(n), |n| bar.inc(n));
    bar.finish_and_clear();
    let report = report?;
    tracing::info!(
        layout = report.layout,
        this_build_writes = report.newest_layout,
        "data dir layout"
    );
    let mut undecodable = 0;
    for found in &report.tables {
        undecodable += print_found(serde_json::to_value(found)?);
    }
    verified(undecodable)
}

/// `state --data-dir`: the embedded runtime's state of one instance.
fn embedded_state(dir: &std::path::Path, function_type: &str, id: &str) -> anyhow::Result<()> {
    let t = statefun_core::TypeName::parse(function_type)?;
    anyhow::ensure!(!id.is_empty(), "the id must not be empty");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let address = statefun_core::Address::new(t, id);
    println!("{}", statefun_embedded::state_json_at(dir, &address, now)?);
    Ok(())
}

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CostArgs {
    /// Messages per second one function sends to another address.
    #[arg(long, default_value_t = 0.0)]
    direct: f64,
    /// Messages per second to one busy address (10 per batch when --fill is 10).
    #[arg(long, default_value_t = 0.0)]
    hot: f64,
    /// Ingress records per second with ids of their own (SQS ingress, Idempotency-Key).
    #[arg(long, default_value_t = 0.0)]
    keyed: f64,
    /// Delayed messages (`send_after`) per second.
    #[arg(long, default_value_t = 0.0)]
    delayed: f64,
    /// HTTP requests per second through API Gateway.
    #[arg(long, default_value_t = 0.0)]
    http: f64,
    /// Messages per batch, 1 to 10: a FIFO queue has no batching window, so a quiet
    /// one gives batches of 1.
    #[arg(long, default_value_t = 10.0)]
    fill: f64,
    /// How long delayed messages wait (`900s`, `1d`): each 900 s is a delay-queue hop.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    delay: Duration,
    /// Leave out the template's dashboard and alarms (`Monitoring=false`).
    #[arg(long)]
    no_monitoring: bool,
}

fn cost(args: &CostArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1.0..=10.0).contains(&args.fill),
        "--fill {} is not a batch size: 1 to 10 messages",
        args.fill
    );
    let rates = [args.direct, args.hot, args.keyed, args.delayed, args.http];
    anyhow::ensure!(
        rates.iter().all(|r| r.is_finite() && *r >= 0.0),
        "rates are messages per second, 0 or more"
    );
    let mut mix = crate::cost::Mix {
        direct: args.direct,
        hot: args.hot,
        keyed: args.keyed,
        delayed: args.delayed,
        http: args.http,
        fill: args.fill,
        delay_seconds: args.delay.as_secs_f64(),
        monitoring: !args.no_monitoring,
    };
    if rates.iter().all(|r| *r == 0.0) {
        // No mix given: a million of each, to compare them.
        let each = 1e6 / crate::cost::MONTH_SECONDS;
        (mix.direct, mix.hot, mix.keyed, mix.delayed, mix.http) = (each, each, each, each, each);
    }
    let model = crate::cost::Model::measured();
    print!("{}", crate::cost::render(&model, &mix, &model.bill(&mix)));
    Ok(())
}

/// Runs one command of the CLI.
pub(crate) async fn execute<A: clap::Args + FromArgMatches + 'static>(
    app: &App<A>,
    command: Command<A>,
) -> anyhow::Result<()> {
    match command {
        Command::Run(args) => run(app, args).await,
        Command::Verify(VerifyArgs {
            data_dir: Some(dir),
            ..
        }) => embedded_verify(&dir),
        #[cfg(feature = "aws")]
        Command::Verify(args) => aws::verify(args).await,
        Command::New(args) => crate::scaffold::create(&args),
        Command::Cost(args) => cost(&args),
        Command::Dlq { command } => match dlq_data_dir(&command) {
            Some(dir) => embedded_dlq(&dir, &command),
            #[cfg(feature = "aws")]
            None => aws::dlq(app, command).await,
            #[cfg(not(feature = "aws"))]
            None => anyhow::bail!(NO_AWS),
        },
        #[cfg(feature = "aws")]
        Command::Egress {
            command: EgressCommand::Tail(args),
        } => aws::tail(args).await,
        #[cfg(not(feature = "aws"))]
        Command::Egress { .. } => anyhow::bail!(NO_AWS),
        #[cfg(feature = "aws")]
        Command::Provision(args) => aws::provision(args).await,
        #[cfg(feature = "aws")]
        Command::Poll(args) => aws::poll(app, args).await,
        #[cfg(feature = "aws")]
        Command::Send(args) => aws::send(app, args).await,
        Command::State(StateArgs {
            data_dir: Some(dir),
            function_type,
            id,
            ..
        }) => embedded_state(&dir, &function_type, &id),
        #[cfg(feature = "aws")]
        Command::State(args) => aws::state(app, args).await,
        #[cfg(not(feature = "aws"))]
        Command::Provision(_)
        | Command::Poll(_)
        | Command::Send(_)
        | Command::State(_)
        | Command::Verify(_) => {
            anyhow::bail!(NO_AWS)
        }
    }
}
