//! Example stateful functions, and the `statefun-lambda` binary around them (`src/main.rs`).
//!
//! - greeter: `example/person` counts visits and asks `example/greeter` to greet, which
//!   emits to the `example/greets` egress (the StateFun playground greeter);
//! - counter: `example/counter` adds `io.statefun.types/long` messages to `count`;
//! - shopping cart: `example/user-basket` and `example/inventory` reserve, release and
//!   check out items, the basket expiring after an idle time.

use std::time::Duration;

use statefun_core::{Registry, RegistryError};

pub mod cart;
pub mod counter;
pub mod greeter;

/// Settings of the bundled examples.
#[derive(Debug, Clone, Copy)]
pub struct ExamplesConfig {
    /// How long a basket may sit untouched before its reservations are released.
    pub basket_idle: Duration,
}

impl Default for ExamplesConfig {
    fn default() -> Self {
        ExamplesConfig {
            basket_idle: Duration::from_secs(15 * 60),
        }
    }
}

/// Registers every example function.
pub fn register_all(registry: &mut Registry, config: ExamplesConfig) -> Result<(), RegistryError> {
    greeter::register(registry)?;
    counter::register(registry)?;
    cart::register(registry, config.basket_idle)?;
    Ok(())
}

/// A registry with every example function.
pub fn registry(config: ExamplesConfig) -> Result<Registry, RegistryError> {
    let mut registry = Registry::new();
    register_all(&mut registry, config)?;
    Ok(registry)
}
