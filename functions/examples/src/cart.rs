//! The shopping cart: `example/user-basket/<user>` and `example/inventory/<item>`
//! messaging each other.
//!
//! - `{"action":"add","item":"socks","quantity":2}` to a basket reserves stock at the
//!   item's inventory, which answers; reserved items go into the basket.
//! - `{"action":"remove","item":"socks"}` releases the item's reservation.
//! - `{"action":"checkout"}` emits the basket to `example/basket-events` and empties it.
//! - A basket left untouched for the idle time releases everything: every change
//!   re-arms a `send_after` to itself, cancelling the previous one; checkout cancels it.
//! - `{"action":"restock","quantity":10}` to an inventory adds stock.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use statefun_core::{
    Address, Context, FunctionError, Registry, RegistryError, TypeName, TypedValue, ValueSpec,
};

pub const BASKET: TypeName = TypeName::from_static("example/user-basket");
pub const INVENTORY: TypeName = TypeName::from_static("example/inventory");
pub const BASKET_EVENTS: TypeName = TypeName::from_static("example/basket-events");

pub const ITEMS: ValueSpec<BasketItems> = ValueSpec::new("items");
pub const GENERATION: ValueSpec<i64> = ValueSpec::new("generation");
pub const STOCK: ValueSpec<i64> = ValueSpec::new("stock");

/// Item → reserved quantity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BasketItems(pub BTreeMap<String, i64>);
statefun_core::json_type!(BasketItems, "example/BasketItems");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum BasketRequest {
    Add { item: String, quantity: i64 },
    Remove { item: String },
    Checkout,
}
statefun_core::json_type!(BasketRequest, "example/BasketRequest");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum InventoryRequest {
    Reserve { quantity: i64 },
    Release { quantity: i64 },
    Restock { quantity: i64 },
}
statefun_core::json_type!(InventoryRequest, "example/InventoryRequest");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InventoryReply {
    pub item: String,
    pub quantity: i64,
    pub reserved: bool,
}
statefun_core::json_type!(InventoryReply, "example/InventoryReply");

/// A basket's idle timer firing; stale if the basket changed since it was armed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BasketIdle {
    pub generation: i64,
}
statefun_core::json_type!(BasketIdle, "example/BasketIdle");

/// What a basket reports to the `example/basket-events` egress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum BasketEvent {
    OutOfStock {
        user: String,
        item: String,
        quantity: i64,
    },
    CheckedOut {
        user: String,
        items: BTreeMap<String, i64>,
    },
    Expired {
        user: String,
        released: BTreeMap<String, i64>,
    },
}
statefun_core::json_type!(BasketEvent, "example/BasketEvent");

fn token(generation: i64) -> String {
    format!("basket-idle-{generation}")
}

struct Basket<'c, 'a> {
    ctx: &'c mut Context<'a>,
    idle: Duration,
}

impl Basket<'_, '_> {
    fn user(&self) -> String {
        self.ctx.self_address().id.clone()
    }

    fn inventory(&mut self, item: &str, request: InventoryRequest) {
        self.ctx.send(Address::new(INVENTORY, item), &request);
    }

    /// Cancels the pending idle timer and arms a new one.
    fn touch(&mut self) -> Result<(), FunctionError> {
        let generation = self.ctx.get(&GENERATION)?.unwrap_or(0);
        if generation > 0 {
            self.ctx.cancel_delayed_message(token(generation))?;
        }
        let next = generation + 1;
        self.ctx.set(&GENERATION, &next)?;
        let me = self.ctx.self_address().clone();
        self.ctx
            .send_after_with_token(self.idle, me, &BasketIdle { generation: next }, token(next))
    }

    fn release_all(&mut self) -> Result<BTreeMap<String, i64>, FunctionError> {
        let items = self.ctx.get(&ITEMS)?.unwrap_or_default().0;
        for (item, quantity) in &items {
            self.inventory(
                item,
                InventoryRequest::Release {
                    quantity: *quantity,
                },
            );
        }
        self.ctx.remove(&ITEMS)?;
        Ok(items)
    }

    fn on_request(&mut self, request: BasketRequest) -> Result<(), FunctionError> {
        match request {
            BasketRequest::Add { item, quantity } => {
                if quantity <= 0 {
                    return Err(FunctionError::terminal(format!(
                        "quantity must be positive, got {quantity}"
                    )));
                }
                self.inventory(&item, InventoryRequest::Reserve { quantity });
                self.touch()
            }
            BasketRequest::Remove { item } => {
                let mut items = self.ctx.get(&ITEMS)?.unwrap_or_default();
                if let Some(quantity) = items.0.remove(&item) {
                    self.inventory(&item, InventoryRequest::Release { quantity });
                    self.ctx.set(&ITEMS, &items)?;
                }
                self.touch()
            }
            BasketRequest::Checkout => {
                let items = self.ctx.get(&ITEMS)?.unwrap_or_default().0;
                let generation = self.ctx.get(&GENERATION)?.unwrap_or(0);
                if generation > 0 {
                    self.ctx.cancel_delayed_message(token(generation))?;
                }
                self.ctx.remove(&ITEMS)?;
                let user = self.user();
                self.ctx
                    .send_egress(BASKET_EVENTS, &BasketEvent::CheckedOut { user, items });
                Ok(())
            }
        }
    }

    fn on_reply(&mut self, reply: InventoryReply) -> Result<(), FunctionError> {
        if !reply.reserved {
            let user = self.user();
            let event = BasketEvent::OutOfStock {
                user,
                item: reply.item,
                quantity: reply.quantity,
            };
            self.ctx.send_egress(BASKET_EVENTS, &event);
            return Ok(());
        }
        let mut items = self.ctx.get(&ITEMS)?.unwrap_or_default();
        *items.0.entry(reply.item).or_default() += reply.quantity;
        self.ctx.set(&ITEMS, &items)
    }

    fn on_idle(&mut self, idle: BasketIdle) -> Result<(), FunctionError> {
        if self.ctx.get(&GENERATION)?.unwrap_or(0) != idle.generation {
            return Ok(());
        }
        let released = self.release_all()?;
        if !released.is_empty() {
            let user = self.user();
            self.ctx
                .send_egress(BASKET_EVENTS, &BasketEvent::Expired { user, released });
        }
        Ok(())
    }
}

fn basket(ctx: &mut Context<'_>, msg: &TypedValue, idle: Duration) -> Result<(), FunctionError> {
    let mut basket = Basket { ctx, idle };
    if msg.is::<BasketRequest>() {
        basket.on_request(msg.decode()?)
    } else if msg.is::<InventoryReply>() {
        basket.on_reply(msg.decode()?)
    } else {
        basket.on_idle(msg.decode()?)
    }
}

fn inventory(ctx: &mut Context<'_>, msg: &TypedValue) -> Result<(), FunctionError> {
    let request: InventoryRequest = msg.decode()?;
    let stock = ctx.get(&STOCK)?.unwrap_or(0);
    match request {
        InventoryRequest::Restock { quantity } => ctx.set(&STOCK, &(stock + quantity)),
        InventoryRequest::Release { quantity } => ctx.set(&STOCK, &(stock + quantity)),
        InventoryRequest::Reserve { quantity } => {
            let reserved = quantity <= stock;
            if reserved {
                ctx.set(&STOCK, &(stock - quantity))?;
            }
            let reply = InventoryReply {
                item: ctx.self_address().id.clone(),
                quantity,
                reserved,
            };
            let caller = ctx.caller().cloned().ok_or_else(|| {
                FunctionError::terminal("reserve must come from a basket, not an ingress")
            })?;
            ctx.send(caller, &reply);
            Ok(())
        }
    }
}

pub fn register(registry: &mut Registry, idle: Duration) -> Result<(), RegistryError> {
    registry.register_fn(
        BASKET.as_str(),
        vec![ITEMS.spec(), GENERATION.spec()],
        move |ctx, msg| basket(ctx, msg, idle),
    )?;
    registry.register_fn(INVENTORY, vec![STOCK.spec()], inventory)?;
    Ok(())
}
