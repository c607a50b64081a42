//! What every Lambda binary shares: configuration, clients and handlers, built once per
//! cold start. A bad configuration fails the cold start with a message naming the
//! variable.

use std::sync::Arc;

use statefun_aws::app::{Handlers, clients, sdk_config};
use statefun_aws::config::AwsConfig;
use statefun_core::ports::SystemClock;

/// Builds the handlers from the environment, with the bundled example functions.
pub async fn cold_start() -> Result<Arc<Handlers>, lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let config = AwsConfig::from_env()?;
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
