//! A function's own state across its upgrades: a `ValueSpec` that changes type, and a
//! JSON type that gains a field.

use serde::{Deserialize, Serialize};
use statefun_core::{Address, Harness, Registry, TypeName, ValueSpec};

const COUNTER: TypeName = TypeName::from_static("example/counter");
const COUNT_V1: ValueSpec<i32> = ValueSpec::new("count");
const COUNT_V2: ValueSpec<i64> = ValueSpec::new("count");

fn v1() -> Registry {
    let mut r = Registry::new();
    r.register_fn("example/counter", vec![COUNT_V1.spec()], |ctx, msg| {
        let n = ctx.get(&COUNT_V1)?.unwrap_or(0) + msg.decode::<i32>()?;
        ctx.set(&COUNT_V1, &n)
    })
    .expect("register");
    r
}

/// The new build, without a migration: reads `count` as i64.
fn v2() -> Registry {
    let mut r = Registry::new();
    r.register_fn("example/counter", vec![COUNT_V2.spec()], |ctx, msg| {
        let n = ctx.get(&COUNT_V2)?.unwrap_or(0) + msg.decode::<i64>()?;
        ctx.set(&COUNT_V2, &n)
    })
    .expect("register");
    r
}

/// The new build with its migration: an `int` written by v1 is read under its old
/// type name and written back as the new `long`.
fn v2_migrating() -> Registry {
    let mut r = Registry::new();
    r.register_fn("example/counter", vec![COUNT_V2.spec()], |ctx, msg| {
        let old = match ctx.get_value("count")? {
            Some(v) if v.is::<i32>() => Some(i64::from(v.decode::<i32>()?)),
            _ => None,
        };
        let n = match old {
            Some(n) => n,
            None => ctx.get(&COUNT_V2)?.unwrap_or(0),
        } + msg.decode::<i64>()?;
        ctx.set(&COUNT_V2, &n)
    })
    .expect("register");
    r
}

#[test]
fn a_state_whose_type_changed_is_a_typed_error_naming_address_and_state_never_a_misread() {
    let a = Address::new(COUNTER, "a");
    let mut h = Harness::new(v1());
    h.send(a.clone(), &5_i32);
    assert_eq!(h.state(&a, &COUNT_V1), Some(5));
    h.upgrade(v2()).send(a.clone(), &1_i64);
    let letters = h.dead_letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let reason = &letters[0].reason;
    for part in [
        "\"count\"",
        "example/counter/a",
        "io.statefun.types/int",
        "io.statefun.types/long",
    ] {
        assert!(reason.contains(part), "{part} in {reason}");
    }
    // Nothing was written over the old value.
    assert_eq!(h.state(&a, &COUNT_V1), Some(5));
}

#[test]
fn a_migration_reads_the_old_type_under_its_old_name_and_writes_the_new() {
    let a = Address::new(COUNTER, "a");
    let mut h = Harness::new(v1());
    h.send(a.clone(), &5_i32);
    h.upgrade(v2_migrating())
        .send(a.clone(), &1_i64)
        .send(a.clone(), &1_i64);
    assert!(h.dead_letters().is_empty(), "{:?}", h.dead_letters());
    assert_eq!(h.state(&a, &COUNT_V2), Some(7));
}

const PROFILE: TypeName = TypeName::from_static("example/profile");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ProfileV1 {
    name: String,
}
statefun_core::json_type!(ProfileV1, "example/Profile");

/// The same JSON type with a field added: serde reads a value written without it, as
/// long as the field has a default (an `Option`, or `#[serde(default)]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ProfileV2 {
    name: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    visits: u32,
}
statefun_core::json_type!(ProfileV2, "example/Profile");

const P1: ValueSpec<ProfileV1> = ValueSpec::new("profile");
const P2: ValueSpec<ProfileV2> = ValueSpec::new("profile");

#[test]
fn a_json_state_that_gained_optional_fields_reads_by_serdes_rules() {
    let mut r1 = Registry::new();
    r1.register_fn("example/profile", vec![P1.spec()], |ctx, msg| {
        ctx.set(
            &P1,
            &ProfileV1 {
                name: msg.decode::<String>()?,
            },
        )
    })
    .expect("register");
    let mut r2 = Registry::new();
    r2.register_fn("example/profile", vec![P2.spec()], |ctx, _msg| {
        let mut p = ctx.get(&P2)?.expect("the old profile reads");
        p.visits += 1;
        ctx.set(&P2, &p)
    })
    .expect("register");
    let a = Address::new(PROFILE, "bob");
    let mut h = Harness::new(r1);
    h.send(a.clone(), &"Bob".to_string());
    h.upgrade(r2).send(a.clone(), &String::new());
    assert!(h.dead_letters().is_empty(), "{:?}", h.dead_letters());
    assert_eq!(
        h.state(&a, &P2),
        Some(ProfileV2 {
            name: "Bob".into(),
            email: None,
            visits: 1
        })
    );
}
