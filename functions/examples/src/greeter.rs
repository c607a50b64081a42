//! The StateFun playground greeter, in Rust. `example/person/<name>` receives
//! `example/GreetRequest` (`{"name": "Bob"}`), counts the visits in `visits` and forwards
//! the request with the count to `example/greeter/<name>`, which emits a greeting to the
//! `example/greets` egress.

use serde::{Deserialize, Serialize};
use statefun_core::{
    Address, Context, FunctionError, Registry, RegistryError, TypeName, TypedValue, ValueSpec,
};

pub const PERSON: TypeName = TypeName::from_static("example/person");
pub const GREETER: TypeName = TypeName::from_static("example/greeter");
pub const GREETS: TypeName = TypeName::from_static("example/greets");
pub const VISITS: ValueSpec<i32> = ValueSpec::new("visits");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GreetRequest {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visits: Option<i32>,
}
statefun_core::json_type!(GreetRequest, "example/GreetRequest");

fn person(ctx: &mut Context<'_>, msg: &TypedValue) -> Result<(), FunctionError> {
    let mut request: GreetRequest = msg.decode()?;
    let visits = ctx.get(&VISITS)?.unwrap_or(0) + 1;
    ctx.set(&VISITS, &visits)?;
    request.visits = Some(visits);
    ctx.send(Address::new(GREETER, request.name.clone()), &request);
    Ok(())
}

/// The greeting for a visit count, as the playground phrases it.
pub fn greeting(name: &str, visits: i32) -> String {
    match visits {
        1 => format!("Hello {name}! 😎"),
        2 => format!("Hello again {name}! 🤗"),
        3 => format!("Third time is a charm {name}! 🥳"),
        n => format!("Hello {name}, nice to see you for the {n}th time! 🙌"),
    }
}

fn greeter(ctx: &mut Context<'_>, msg: &TypedValue) -> Result<(), FunctionError> {
    let request: GreetRequest = msg.decode()?;
    let visits = request.visits.unwrap_or(1);
    ctx.send_egress(GREETS, &greeting(&request.name, visits));
    Ok(())
}

/// Registers `example/person` alone (its sends to the greeter stay undelivered).
pub fn register_person(registry: &mut Registry) -> Result<(), RegistryError> {
    registry.register_fn(PERSON, vec![VISITS.spec()], person)?;
    Ok(())
}

pub fn register(registry: &mut Registry) -> Result<(), RegistryError> {
    register_person(registry)?;
    registry.register_fn(GREETER, vec![], greeter)?;
    Ok(())
}
