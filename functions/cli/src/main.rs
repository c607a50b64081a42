//! `statefun-lambda`: the command-line entry point. `run` starts the embedded runtime
//! with the bundled example functions.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use statefun_embedded::{EmbeddedConfig, Runtime, StdoutEgress};
use statefun_examples::ExamplesConfig;
use tracing::info;

// The runtime allocates per message; mimalloc keeps that cheap and flat under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "statefun-lambda", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr (filter with RUST_LOG, default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the embedded runtime with the bundled examples: durable state in --data-dir,
    /// HTTP ingress on 127.0.0.1:--port, egress as JSON lines on stdout.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Port of the HTTP ingress on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8090)]
    port: u16,
    /// Where state, inbox and timers are kept.
    #[arg(long, default_value = "statefun-data")]
    data_dir: PathBuf,
    /// Idle time after which a shopping basket releases its reservations.
    #[arg(long, default_value_t = 900)]
    basket_idle_secs: u64,
    /// Largest HTTP ingress body, in bytes.
    #[arg(long, default_value_t = 256 * 1024)]
    max_body_bytes: usize,
    /// Messages taken per processing round.
    #[arg(long, default_value_t = 4096)]
    max_batch_messages: usize,
    /// Test fail point: abort right after this many state commits, before their sends.
    #[arg(long, hide = true)]
    crash_after_commits: Option<u64>,
}

fn init_logs(format: LogFormat) {
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

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let examples = ExamplesConfig {
        basket_idle: Duration::from_secs(args.basket_idle_secs),
    };
    let registry = statefun_examples::registry(examples).context("registering the examples")?;
    let mut config = EmbeddedConfig::new(&args.data_dir);
    config.max_body_bytes = args.max_body_bytes;
    config.max_batch_messages = args.max_batch_messages.max(1);
    config.crash_after_commits = args.crash_after_commits;
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
    };
    statefun_embedded::ingress::serve(listener, runtime.handle(), stop).await?;
    runtime.shutdown().context("the engine failed")?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match cli.command {
        Command::Run(args) => run(args).await,
    }
}
