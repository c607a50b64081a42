//! What every Lambda binary shares: configuration, clients and handlers, built once per
//! cold start. A bad configuration fails the cold start with a message naming the
//! variable.

use std::sync::Arc;

use statefun_aws::app::{Handlers, clients, sdk_config};
use statefun_aws::config::AwsConfig;
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
        config = config.with_module(bundled_module()?);
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_bundled_module_parses_and_exposes_the_examples() {
        let m = super::bundled_module().expect("valid");
        assert!(m.http_exposes(&statefun_core::TypeName::from_static("example/person")));
        assert!(!m.http_exposes(&statefun_core::TypeName::from_static("example/greeter")));
    }
}
