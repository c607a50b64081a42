//! What every Lambda binary shares: configuration, clients and handlers, built once per
//! cold start. A bad configuration fails the cold start with a message naming the
//! variable.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use statefun_aws::app::{Handlers, clients, sdk_config};
use statefun_aws::config::AwsConfig;
use statefun_core::module::IngressHost;
use statefun_core::ports::SystemClock;

/// The module.yaml shipped inside the binaries (the repository root's), used unless
/// STATEFUN_MODULE names another.
pub const BUNDLED_MODULE: &str = include_str!("../../../module.yaml");

pub fn bundled_module() -> Result<statefun_core::module::Module, statefun_core::module::ModuleError>
{
    statefun_core::module::Module::parse("module.yaml (bundled)", BUNDLED_MODULE)
}

/// Builds the handlers from the environment, with the bundled example functions.
pub async fn cold_start() -> Result<Arc<Handlers>, lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let mut config = AwsConfig::from_env()?;
    if std::env::var_os("STATEFUN_MODULE").is_none() {
        config = config.with_module(bundled_module()?)?;
    }
    for ingress in &config.module.external_ingresses {
        tracing::warn!("{}", ingress.instead(IngressHost::Aws));
    }
    let registry = statefun_examples::registry(statefun_examples::ExamplesConfig::default())?;
    let sdk = sdk_config(None, false).await;
    let remote = statefun_aws::app::remote_functions(&config)?;
    Ok(Arc::new(Handlers::with_remote(
        &config,
        &clients(&sdk),
        Arc::new(registry),
        Arc::new(SystemClock),
        remote,
    )))
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
    fn the_bundled_module_parses_and_exposes_the_examples() {
        let m = super::bundled_module().expect("valid");
        assert!(m.http_exposes(&statefun_core::TypeName::from_static("example/person")));
        assert!(!m.http_exposes(&statefun_core::TypeName::from_static("example/greeter")));
    }
}
