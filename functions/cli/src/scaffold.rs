//! `statefun-lambda new <dir>`: a project of the user's own, ready to test, run and
//! deploy: `Cargo.toml` (depending on this statefun-lambda by path), `src/main.rs` with
//! one function and its harness test, `module.yaml`, `template.yaml` (this repository's,
//! for the new binary), `Cargo.lock` and `rust-toolchain.toml` (the versions this
//! statefun-lambda is tested with) and a short README.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

const CARGO_TOML: &str = include_str!("scaffold/Cargo.toml.tmpl");
const MAIN_RS: &str = include_str!("scaffold/main.rs.tmpl");
const MODULE_YAML: &str = include_str!("scaffold/module.yaml.tmpl");
const README: &str = include_str!("scaffold/README.md.tmpl");
const TEMPLATE_YAML: &str = include_str!("../../../template.yaml");
const CARGO_LOCK: &str = include_str!("../../../Cargo.lock");
const TOOLCHAIN: &str = include_str!("../../../rust-toolchain.toml");

#[derive(Debug, clap::Args)]
pub(crate) struct NewArgs {
    /// The directory to create (it must not exist, or be empty).
    dir: PathBuf,
    /// The package and binary name (default: the directory's name).
    #[arg(long)]
    name: Option<String>,
    /// Where the statefun-lambda crate is, for the new project's dependency (default:
    /// the one this binary was built from).
    #[arg(long, default_value = env!("CARGO_MANIFEST_DIR"))]
    statefun_path: PathBuf,
}

/// A valid package name: lowercase ASCII letters, digits, `-` and `_`, from a letter.
fn package_name(args: &NewArgs) -> anyhow::Result<String> {
    let name = match &args.name {
        Some(name) => name.clone(),
        None => args
            .dir
            .file_name()
            .and_then(|n| n.to_str())
            .context("the directory has no usable name; pass --name")?
            .to_string(),
    };
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    anyhow::ensure!(
        valid,
        "{name:?} is not a package name: use lowercase letters, digits, - and _, from a letter \
         (or pass --name)"
    );
    Ok(name)
}

fn fill(template: &str, name: &str, statefun_path: &Path) -> String {
    template
        .replace("{{name}}", name)
        .replace("{{ns}}", &name.replace('-', "_"))
        .replace("{{statefun_path}}", &statefun_path.display().to_string())
}

pub(crate) fn create(args: &NewArgs) -> anyhow::Result<()> {
    let name = package_name(args)?;
    let dir = &args.dir;
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_none();
        anyhow::ensure!(empty, "{} exists and is not empty", dir.display());
    }
    let statefun_path = std::fs::canonicalize(&args.statefun_path).with_context(|| {
        format!(
            "--statefun-path {}: not found (point it at statefun-lambda's functions/cli)",
            args.statefun_path.display()
        )
    })?;
    let template = TEMPLATE_YAML.replace(
        "BuildProperties: {Binary: statefun-lambda}",
        &format!("BuildProperties: {{Binary: {name}}}"),
    );
    let files = [
        ("Cargo.toml", fill(CARGO_TOML, &name, &statefun_path)),
        ("Cargo.lock", CARGO_LOCK.to_string()),
        ("rust-toolchain.toml", TOOLCHAIN.to_string()),
        ("src/main.rs", fill(MAIN_RS, &name, &statefun_path)),
        ("module.yaml", fill(MODULE_YAML, &name, &statefun_path)),
        ("template.yaml", template),
        ("README.md", fill(README, &name, &statefun_path)),
        (
            ".gitignore",
            "/target\n/statefun-data\n/.aws-sam\n".to_string(),
        ),
    ];
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "created {name} in {}: cd there, then `cargo test` and `cargo run -- run`",
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &str, name: Option<&str>) -> NewArgs {
        NewArgs {
            dir: dir.into(),
            name: name.map(str::to_string),
            statefun_path: env!("CARGO_MANIFEST_DIR").into(),
        }
    }

    #[test]
    fn names_come_from_the_directory_and_must_be_package_names() {
        assert_eq!(
            package_name(&args("/tmp/hello-fns", None)).ok().as_deref(),
            Some("hello-fns")
        );
        let e = package_name(&args("/tmp/Hello World", None)).expect_err("invalid");
        assert!(e.to_string().contains("is not a package name"), "{e}");
        assert_eq!(
            package_name(&args("/tmp/x y", Some("orders")))
                .ok()
                .as_deref(),
            Some("orders")
        );
    }

    #[test]
    fn the_template_is_ours_for_the_new_binary() {
        assert!(TEMPLATE_YAML.contains("BuildProperties: {Binary: statefun-lambda}"));
        let filled = fill(MAIN_RS, "hello-fns", Path::new("/x"));
        assert!(filled.contains("\"hello_fns/greeter\"") && !filled.contains("{{"));
    }
}
