//! `statefun-lambda new`: the project it creates tests green and serves its function on
//! the HTTP contract, as a user would try it (`sam validate --lint` and `cargo lambda
//! build --release` of it run in scripts/deploy-checks.sh, where those tools are).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{Server, http};

/// The target dir of this build, shared with the new project (its dependencies are ours).
fn target_dir() -> PathBuf {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_statefun-lambda"));
    binary
        .ancestors()
        .nth(2)
        .expect("target/<profile>/statefun-lambda")
        .to_path_buf()
}

fn cargo(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .current_dir(dir)
        .args(args)
        // Keeps RUSTUP_TOOLCHAIN (this build's, the new project's too): without it,
        // rustc for a registry crate resolves the crate's own toolchain file (redb pins
        // one) when run from its directory.
        .env("CARGO_TARGET_DIR", target_dir());
    command
}

#[test]
fn a_new_project_tests_green_and_serves_its_function() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("hello-fns");
    let out = Command::new(env!("CARGO_BIN_EXE_statefun-lambda"))
        .arg("new")
        .arg(&dir)
        .output()
        .expect("statefun-lambda new");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in [
        "Cargo.toml",
        "src/main.rs",
        "module.yaml",
        "template.yaml",
        "README.md",
    ] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
    let again = Command::new(env!("CARGO_BIN_EXE_statefun-lambda"))
        .arg("new")
        .arg(&dir)
        .output()
        .expect("statefun-lambda new");
    assert!(
        !again.status.success()
            && String::from_utf8_lossy(&again.stderr).contains("exists and is not empty"),
        "a second new into the same directory is refused"
    );

    let test = cargo(&dir, &["test", "--quiet"])
        .output()
        .expect("cargo test");
    assert!(
        test.status.success(),
        "cargo test in the new project: {}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    assert!(
        String::from_utf8_lossy(&test.stdout).contains("1 passed"),
        "{}",
        String::from_utf8_lossy(&test.stdout)
    );

    let build = cargo(&dir, &["build", "--quiet"])
        .stderr(Stdio::inherit())
        .status()
        .expect("cargo build");
    assert!(build.success(), "cargo build in the new project");
    let binary = target_dir().join("debug").join("hello-fns");
    let s = Server::start_binary(
        binary.to_str().expect("utf-8 path"),
        &root.path().join("data"),
        &[],
    );
    let (status, body) = http(
        s.addr,
        "POST",
        "/hello_fns/greeter/ada",
        &[("Content-Type", "text/plain")],
        b"Ada",
    )
    .expect("post");
    assert_eq!(status, 202, "{body}");
    assert!(
        s.settles(|| { s.get_json("/hello_fns/greeter/ada")["state"]["visits"]["value"] == 1 })
    );
    assert!(s.settles(|| {
        common::egress(&s.stdout)
            .iter()
            .any(|e| e["value"] == "Hello Ada, visit 1")
    }));
}
