//! Helpers for the cross-crate tests: where the setup put things, and running the
//! in-repo PyTorch reference.

pub mod browser;
pub mod farm;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use stylefarm_engine::weights::{cache_dir, resolve_weights, WeightsSpec};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the repo").to_path_buf()
}

/// The setup's Python (torch 2.11).
pub fn python() -> PathBuf {
    repo_root().join(".venv/bin/python")
}

pub fn reference_script() -> PathBuf {
    repo_root().join("reference/style_reference.py")
}

pub fn sample(name: &str) -> PathBuf {
    let path = repo_root().join(".samples").join(name);
    assert!(path.is_file(), "{} is missing: run `make setup`", path.display());
    path
}

/// The default weights, fetched into the cache when missing.
pub fn default_weights() -> PathBuf {
    let (path, _) = resolve_weights(&WeightsSpec::Default, &cache_dir()).expect("default weights (run `make setup`)");
    path
}

/// Runs `reference/style_reference.py ARGS...`, failing with its stderr.
pub fn run_reference(args: &[&str]) -> Result<String> {
    let out = Command::new(python()).arg(reference_script()).args(args).output().with_context(|| format!("running {}", python().display()))?;
    if !out.status.success() {
        bail!("reference {:?} failed:\n{}", args, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `CMD --weights W --inputs I --params P` for the reference script.
pub fn problem_args(command: &str, weights: &Path, files: &stylefarm_engine::problem::ProblemFiles) -> Vec<String> {
    [command, "--weights"]
        .iter()
        .map(|s| s.to_string())
        .chain([weights.display().to_string(), "--inputs".into(), files.inputs.display().to_string()])
        .chain(["--params".into(), files.params.display().to_string()])
        .collect()
}

/// |a - b| / max(|b|, floor).
pub fn rel_err(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-30)
}

/// Builds (if needed) and returns a workspace binary, so process tests never run
/// a stale one: `cargo test` does not build other packages' binaries. The build
/// is the same as the setup's (`--workspace --all-targets`), so features unify
/// as in `cargo test --workspace` and nothing is rebuilt twice.
pub fn workspace_bin(_package: &str, bin: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status =
            Command::new(cargo).args(["build", "--quiet", "--workspace", "--all-targets"]).current_dir(repo_root()).status().expect("running cargo build");
        assert!(status.success(), "cargo build --workspace --all-targets failed");
    });
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
    target.join("debug").join(bin)
}
