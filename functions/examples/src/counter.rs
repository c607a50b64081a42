//! `example/counter`: the smallest useful function. Adds every `io.statefun.types/long`
//! it receives to its `count`.

use statefun_core::{Registry, RegistryError, TypeName, ValueSpec};

pub const COUNTER: TypeName = TypeName::from_static("example/counter");
pub const COUNT: ValueSpec<i64> = ValueSpec::new("count");

pub fn register(registry: &mut Registry) -> Result<(), RegistryError> {
    registry.register_fn(COUNTER, vec![COUNT.spec()], |ctx, msg| {
        let add: i64 = msg.decode()?;
        let count = ctx.get(&COUNT)?.unwrap_or(0).wrapping_add(add);
        ctx.set(&COUNT, &count)
    })?;
    Ok(())
}
