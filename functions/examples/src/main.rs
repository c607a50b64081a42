//! The examples' `statefun-lambda` binary: the embedded runtime, the operations CLI and
//! every Lambda role around the example functions, as a user's own crate would have it.

use std::process::ExitCode;
use std::time::Duration;

use statefun_examples::ExamplesConfig;

// The runtime allocates per message; mimalloc keeps that cheap and flat under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The examples' own option.
#[derive(Debug, clap::Args)]
struct ExamplesArgs {
    /// Idle time after which a shopping basket releases its reservations.
    #[arg(long, env = "STATEFUN_BASKET_IDLE_SECS", default_value_t = 900)]
    basket_idle_secs: u64,
}

fn main() -> ExitCode {
    statefun_lambda::App::with_args(|args: &ExamplesArgs| {
        statefun_examples::registry(ExamplesConfig {
            basket_idle: Duration::from_secs(args.basket_idle_secs),
        })
    })
    .module("module.yaml", include_str!("../../../module.yaml"))
    .main()
}
