//! The examples, tested through the harness: no runtime, no AWS.

use std::time::Duration;

use statefun_core::{Address, Harness};
use statefun_examples::cart::{
    BASKET, BASKET_EVENTS, BasketEvent, BasketRequest, INVENTORY, ITEMS, InventoryRequest, STOCK,
};
use statefun_examples::counter::{COUNT, COUNTER};
use statefun_examples::greeter::{GREETER, GREETS, GreetRequest, PERSON, VISITS};
use statefun_examples::{ExamplesConfig, registry};

fn harness() -> Harness {
    let config = ExamplesConfig {
        basket_idle: Duration::from_secs(60),
    };
    Harness::new(registry(config).expect("registry"))
}

fn greet(name: &str) -> GreetRequest {
    GreetRequest {
        name: name.into(),
        visits: None,
    }
}

#[test]
fn greeter_counts_visits_and_greets_by_name() {
    let mut h = harness();
    let bob = Address::new(PERSON, "Bob");
    h.send(bob.clone(), &greet("Bob"))
        .send(bob.clone(), &greet("Bob"))
        .send(Address::new(PERSON, "Alice"), &greet("Alice"));
    assert_eq!(h.state(&bob, &VISITS), Some(2));
    assert_eq!(
        h.egress_values::<String>(&GREETS),
        vec!["Hello Bob! 😎", "Hello again Bob! 🤗", "Hello Alice! 😎"]
    );
}

#[test]
fn person_alone_sends_the_count_to_the_greeter() {
    // Only `example/person` registered: what it sends is captured, not delivered.
    let mut only_person = statefun_core::Registry::new();
    statefun_examples::greeter::register_person(&mut only_person).expect("register");
    let mut h = Harness::new(only_person);
    h.send(Address::new(PERSON, "Bob"), &greet("Bob"))
        .send(Address::new(PERSON, "Bob"), &greet("Bob"));
    let sent: Vec<GreetRequest> = h
        .captured()
        .iter()
        .map(|e| e.value.decode().expect("GreetRequest"))
        .collect();
    assert_eq!(sent[1].visits, Some(2));
    assert_eq!(h.captured()[1].target, Address::new(GREETER, "Bob"));
}

#[test]
fn counter_adds_longs() {
    let mut h = harness();
    let a = Address::new(COUNTER, "a");
    h.send(a.clone(), &40i64).send(a.clone(), &2i64);
    assert_eq!(h.state(&a, &COUNT), Some(42));
    h.send(a.clone(), &"not a long".to_string());
    assert!(
        h.dead_letters()[0]
            .reason
            .contains("expected a value of type io.statefun.types/long")
    );
    assert_eq!(h.state(&a, &COUNT), Some(42));
}

fn add(item: &str, quantity: i64) -> BasketRequest {
    BasketRequest::Add {
        item: item.into(),
        quantity,
    }
}

#[test]
fn basket_reserves_stock_and_checks_out() {
    let mut h = harness();
    let socks = Address::new(INVENTORY, "socks");
    let alice = Address::new(BASKET, "alice");
    h.send(socks.clone(), &InventoryRequest::Restock { quantity: 5 });
    h.send(alice.clone(), &add("socks", 2))
        .send(alice.clone(), &add("socks", 1))
        .send(alice.clone(), &add("socks", 9));
    assert_eq!(h.state(&socks, &STOCK), Some(2));
    assert_eq!(h.state(&alice, &ITEMS).map(|i| i.0["socks"]), Some(3));
    h.send(alice.clone(), &BasketRequest::Checkout);
    let events = h.egress_values::<BasketEvent>(&BASKET_EVENTS);
    assert!(
        matches!(&events[0], BasketEvent::OutOfStock { quantity: 9, .. }),
        "{events:?}"
    );
    assert!(
        matches!(&events[1], BasketEvent::CheckedOut { items, .. } if items["socks"] == 3),
        "{events:?}"
    );
    assert_eq!(h.state(&alice, &ITEMS), None);
    assert!(
        h.pending_delayed().is_empty(),
        "checkout cancels the idle timer"
    );
    h.advance(Duration::from_secs(3600));
    assert_eq!(
        h.state(&socks, &STOCK),
        Some(2),
        "sold stock is not released"
    );
}

#[test]
fn an_idle_basket_releases_its_reservations() {
    let mut h = harness();
    let socks = Address::new(INVENTORY, "socks");
    let bob = Address::new(BASKET, "bob");
    h.send(socks.clone(), &InventoryRequest::Restock { quantity: 5 });
    h.send(bob.clone(), &add("socks", 4));
    h.advance(Duration::from_secs(50));
    h.send(
        bob.clone(),
        &BasketRequest::Remove {
            item: "hats".into(),
        },
    );
    assert_eq!(
        h.pending_delayed().len(),
        1,
        "the earlier timer was cancelled"
    );
    h.advance(Duration::from_secs(59));
    assert_eq!(
        h.state(&socks, &STOCK),
        Some(1),
        "still reserved before the idle time"
    );
    h.advance(Duration::from_secs(1));
    assert_eq!(h.state(&socks, &STOCK), Some(5), "released after 60 s idle");
    assert!(matches!(
        h.egress_values::<BasketEvent>(&BASKET_EVENTS)[..],
        [BasketEvent::Expired { .. }]
    ));
}

#[test]
fn the_compiled_in_module_parses_and_exposes_what_the_http_api_may_address() {
    let m =
        statefun_core::module::Module::parse("module.yaml", include_str!("../../../module.yaml"))
            .expect("valid");
    assert!(m.http_exposes(&statefun_core::TypeName::from_static("example/person")));
    assert!(!m.http_exposes(&statefun_core::TypeName::from_static("example/greeter")));
}
