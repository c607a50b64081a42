//! The Lambda roles: one binary, the role from `STATEFUN_ROLE` (set per function by
//! `template.yaml`). A cold start builds the configuration, the clients and only the
//! handler of its role; a bad configuration fails it with a message naming the variable.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::apigw::ApiGatewayV2httpRequest;
use aws_lambda_events::event::sqs::SqsEvent;
use clap::FromArgMatches;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde::Serialize;
use serde::de::DeserializeOwned;
use statefun_aws::app::{Parts, Role, clients, sdk_config};
use statefun_aws::config::{AwsConfig, ConfigError};
use statefun_aws::sqs_batch::SqsHandler;
use statefun_core::module::IngressHost;
use statefun_core::ports::SystemClock;

use crate::App;

/// The configuration with the application's compiled-in module, unless
/// `STATEFUN_MODULE` names another.
pub fn with_bundled_module<A: clap::Args + FromArgMatches + 'static>(
    app: &App<A>,
    config: AwsConfig,
) -> anyhow::Result<AwsConfig> {
    if std::env::var_os("STATEFUN_MODULE").is_some() {
        return Ok(config);
    }
    Ok(match app.bundled_module()? {
        Some(module) => config.with_module(module)?,
        None => config,
    })
}

/// The role this Lambda plays.
pub fn role_from_env() -> Result<Role, ConfigError> {
    let value = std::env::var("STATEFUN_ROLE").map_err(|_| ConfigError {
        variable: "STATEFUN_ROLE",
        reason: "not set: the template sets it on every function".into(),
    })?;
    value.parse().map_err(|reason| ConfigError {
        variable: "STATEFUN_ROLE",
        reason,
    })
}

/// Logs as Lambda wants them: no colour codes (CloudWatch shows them raw), no
/// timestamps (Lambda adds its own), JSON with `AWS_LAMBDA_LOG_FORMAT=JSON`, the level
/// from `AWS_LAMBDA_LOG_LEVEL` or `RUST_LOG` (default `info`).
fn init_lambda_logs() {
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(level.to_lowercase()))
        .with_ansi(false)
        .with_target(false)
        .without_time();
    if std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Serves Lambda invocations as the role of `STATEFUN_ROLE` until the runtime stops.
pub async fn serve<A: clap::Args + FromArgMatches + 'static>(app: &App<A>) -> Result<(), Error> {
    init_lambda_logs();
    let role = role_from_env()?;
    let config = with_bundled_module(app, AwsConfig::from_env()?)?;
    for ingress in &config.module.external_ingresses {
        tracing::warn!("{}", ingress.instead(IngressHost::Aws));
    }
    let registry = app.registry(&app.args_from_env()?)?;
    let sdk = sdk_config(None, false).await;
    let clients = clients(&sdk);
    let parts = Parts {
        config: &config,
        clients: &clients,
        registry: Arc::new(registry),
        clock: Arc::new(SystemClock),
        remote: statefun_aws::app::remote_functions(&config)?,
    };
    match role {
        Role::Dispatcher => answer_sqs(parts.dispatcher()).await,
        Role::TimerForwarder => answer_sqs(parts.forwarder()).await,
        Role::SqsIngress => answer_sqs(parts.sqs_ingress()).await,
        Role::HttpIngress => {
            let ingress = Arc::new(parts.http_ingress());
            answer(move |event: LambdaEvent<ApiGatewayV2httpRequest>| {
                let ingress = ingress.clone();
                async move { ingress.handle(event.payload).await }
            })
            .await
        }
    }
}

/// Runs the Lambda runtime loop for a role fed by an SQS event source, each batch
/// answered by the invocation's deadline less a margin ([`answer_by`]).
async fn answer_sqs<H: SqsHandler>(handler: H) -> Result<(), Error> {
    let handler = Arc::new(handler);
    answer(move |event: LambdaEvent<SqsEvent>| {
        let handler = handler.clone();
        async move {
            let deadline = answer_by(&event.context);
            handler.handle_until(event.payload, Some(deadline)).await
        }
    })
    .await
}

/// Runs the Lambda runtime loop with a handler that always answers (failures are in
/// its answer: `batchItemFailures`, a 4xx).
async fn answer<E, R, F, Fut>(handler: F) -> Result<(), Error>
where
    E: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    F: Fn(LambdaEvent<E>) -> Fut + Send + 'static,
    Fut: Future<Output = R> + Send + 'static,
{
    lambda_runtime::run(service_fn(move |event| {
        let answered = handler(event);
        async move { Ok::<R, Error>(answered.await) }
    }))
    .await
}

/// When a handler must have answered: the invocation's deadline less a margin (a
/// tenth of the time left, at least a second) for reporting what did not finish.
pub fn answer_by(context: &lambda_runtime::Context) -> Instant {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    answer_by_at(context.deadline, now_ms, Instant::now())
}

fn answer_by_at(deadline_ms: u64, now_ms: u64, now: Instant) -> Instant {
    let left = Duration::from_millis(deadline_ms.saturating_sub(now_ms));
    let margin = (left / 10).max(Duration::from_secs(1));
    now + left.saturating_sub(margin)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    #[test]
    fn a_handler_answers_before_the_deadline_with_a_margin() {
        let now = Instant::now();
        let at = |left_ms: u64| super::answer_by_at(1_000_000 + left_ms, 1_000_000, now) - now;
        assert_eq!(at(30_000), Duration::from_secs(27), "a tenth of 30 s");
        assert_eq!(at(5_000), Duration::from_secs(4), "at least a second");
        assert_eq!(at(500), Duration::ZERO, "no time left: answer at once");
    }

    #[test]
    fn roles_parse_by_their_template_names_and_others_are_refused_with_the_list() {
        use statefun_aws::app::Role;
        for role in Role::ALL {
            assert_eq!(role.name().parse::<Role>(), Ok(role));
        }
        assert_eq!(
            "dispatch".parse::<Role>(),
            Err("\"dispatch\" is not a role; one of dispatcher, timer-forwarder, sqs-ingress, http-ingress".into())
        );
    }
}
