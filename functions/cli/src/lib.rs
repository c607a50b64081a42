//! The statefun-lambda entry point: one `main` around your functions is the embedded
//! runtime (`run`), the operations CLI (`provision`, `poll`, `send`, `state`) and every
//! Lambda role.
//!
//! ```no_run
//! use statefun_lambda::prelude::*;
//!
//! fn registry() -> Result<Registry, RegistryError> {
//!     let mut registry = Registry::new();
//!     registry.register_fn("acme/hello", vec![], |ctx, _msg| {
//!         ctx.send_egress(TypeName::from_static("acme/out"), &"hello".to_string());
//!         Ok(())
//!     })?;
//!     Ok(registry)
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     statefun_lambda::main(registry)
//! }
//! ```
//!
//! Run locally with `cargo run -- run`. Deployed, the same binary serves whichever role
//! `STATEFUN_ROLE` names (`dispatcher`, `timer-forwarder`, `sqs-ingress`,
//! `http-ingress`) once Lambda starts it; the AWS path needs the `aws` feature, which
//! `cargo lambda build` turns on from `[package.metadata.lambda.build]`, so local builds
//! stay free of the AWS SDK.

use std::marker::PhantomData;
use std::process::ExitCode;

use clap::{FromArgMatches, Parser};
use statefun_core::Registry;
use statefun_core::module::{Module, ModuleError};

mod commands;
pub mod cost;
#[cfg(feature = "aws")]
pub mod lambda;
mod scaffold;

pub use commands::NoArgs;
/// The pure core: functions, messages, the module file, the test harness.
pub use statefun_core as core;
/// The embedded runtime, for tests that start it in-process (and [`embedded::Settling`]).
pub use statefun_embedded as embedded;

/// What a function author needs, in one import.
pub mod prelude {
    pub use statefun_core::harness::Harness;
    pub use statefun_core::{
        Address, Context, FunctionError, Registry, RegistryError, TypeName, TypedValue, ValueSpec,
        json_type,
    };
}

/// How an application builds its functions from its options.
type BuildRegistry<A> = Box<dyn Fn(&A) -> anyhow::Result<Registry>>;

/// Your application: how to build its functions (from options of your own, `A`, which
/// `run` takes as flags and every command reads from the environment too), and the
/// module.yaml compiled into it.
pub struct App<A = NoArgs> {
    registry: BuildRegistry<A>,
    module: Option<(&'static str, &'static str)>,
    args: PhantomData<fn() -> A>,
}

impl<A> std::fmt::Debug for App<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("module", &self.module.map(|(name, _)| name))
            .finish_non_exhaustive()
    }
}

impl App<NoArgs> {
    /// An application whose functions need no options.
    pub fn new<E: Into<anyhow::Error>>(
        registry: impl Fn() -> Result<Registry, E> + 'static,
    ) -> Self {
        App::with_args(move |_: &NoArgs| registry())
    }
}

impl<A: clap::Args + FromArgMatches + 'static> App<A> {
    /// An application whose functions take options `A` (a `clap::Args`): flags of `run`
    /// and, through their `env` names, settings of every command and Lambda.
    pub fn with_args<E: Into<anyhow::Error>>(
        registry: impl Fn(&A) -> Result<Registry, E> + 'static,
    ) -> Self {
        App {
            registry: Box::new(move |args| registry(args).map_err(Into::into)),
            module: None,
            args: PhantomData,
        }
    }

    /// The module.yaml compiled in (e.g. `include_str!("../module.yaml")`), used unless
    /// `run --module` or `STATEFUN_MODULE` names another.
    pub fn module(mut self, name: &'static str, text: &'static str) -> Self {
        self.module = Some((name, text));
        self
    }

    /// Builds the functions.
    pub fn registry(&self, args: &A) -> anyhow::Result<Registry> {
        (self.registry)(args)
    }

    /// The compiled-in module, parsed (errors name it, its document and field).
    pub fn bundled_module(&self) -> Result<Option<Module>, ModuleError> {
        self.module
            .map(|(name, text)| Module::parse(&format!("{name} (compiled in)"), text))
            .transpose()
    }

    /// `A` from the environment alone (its flags' `env` names and defaults).
    pub fn args_from_env(&self) -> anyhow::Result<A> {
        let command = A::augment_args(clap::Command::new("statefun-lambda"));
        let matches = command.try_get_matches_from(["statefun-lambda"])?;
        Ok(A::from_arg_matches(&matches)?)
    }

    /// Runs what the process was started as: a Lambda role under Lambda, else the CLI.
    pub fn main(self) -> ExitCode {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build();
        let result = match runtime {
            Ok(runtime) => runtime.block_on(self.dispatch()),
            Err(e) => Err(anyhow::Error::new(e).context("starting the tokio runtime")),
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        }
    }

    async fn dispatch(self) -> anyhow::Result<()> {
        if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
            // Boxed: the Lambda roles' futures nest deep (runtime, batch, pipeline,
            // remote calls), and their layout would otherwise be computed inside this
            // one, in the user's crate, past rustc's query depth.
            #[cfg(feature = "aws")]
            return Box::pin(lambda::serve(&self))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"));
            #[cfg(not(feature = "aws"))]
            anyhow::bail!(commands::NO_AWS);
        }
        let cli = commands::Cli::<A>::parse();
        commands::init_logs(cli.log_format);
        commands::execute(&self, cli.command).await
    }
}

/// Runs an application whose functions need no options: see the crate docs.
pub fn main<E: Into<anyhow::Error>>(
    registry: impl Fn() -> Result<Registry, E> + 'static,
) -> ExitCode {
    App::new(registry).main()
}
