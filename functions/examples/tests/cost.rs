//! `statefun-lambda cost`, as a user runs it before deploying: a mix in, dollars out
//! with the dates behind them; a batch size that cannot be is refused by name.

use std::process::{Command, Output};

fn cost(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_statefun-lambda"))
        .arg("cost")
        .args(args)
        .output()
        .expect("statefun-lambda cost")
}

/// The USD per month on the line starting with `what`.
fn per_month(out: &str, what: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(what))
        .unwrap_or_else(|| panic!("no {what} line in\n{out}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    let at = if what == "total" { 1 } else { 3 };
    fields[at].parse().unwrap_or_else(|_| panic!("{line}"))
}

#[test]
fn a_mix_is_priced_per_kind_and_per_month_with_its_dates() {
    let out = cost(&["--direct", "100", "--http", "10", "--fill", "5"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "direct",
        "HTTP",
        "fixed",
        "units measured",
        "prices: AWS list prices",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    let (direct, http, total) = (
        per_month(&text, "direct"),
        per_month(&text, "HTTP"),
        per_month(&text, "total"),
    );
    assert!(direct > 0.0 && http > 0.0, "{text}");
    assert!(total > direct + http, "the fixed lines count too:\n{text}");

    // Twice the traffic, twice its lines; fuller batches, less per message.
    let double =
        String::from_utf8_lossy(&cost(&["--direct", "200", "--fill", "5"]).stdout).into_owned();
    assert!(
        (per_month(&double, "direct") - 2.0 * direct).abs() < 0.02,
        "{double}"
    );
    let full =
        String::from_utf8_lossy(&cost(&["--direct", "100", "--fill", "10"]).stdout).into_owned();
    assert!(per_month(&full, "direct") < direct, "{full}");
}

#[test]
fn a_batch_size_that_cannot_be_is_refused_by_name() {
    let out = cost(&["--direct", "1", "--fill", "11"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--fill 11 is not a batch size: 1 to 10 messages"),
        "{err}"
    );
    let out = cost(&["--direct", "-1"]);
    assert!(!out.status.success(), "a negative rate is refused");
}
