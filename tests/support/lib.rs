//! Helpers for the cross-crate tests: where the setup put things, and running the
//! in-repo PyTorch reference.

pub mod browser;
pub mod farm;

pub use stylefarm_coordinator_tests::{repo_root, sample, tls, workspace_bin};

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use stylefarm_engine::weights::{cache_dir, resolve_weights, WeightsSpec};

/// The setup's Python (torch 2.11).
pub fn python() -> PathBuf {
    repo_root().join(".venv/bin/python")
}

pub fn reference_script() -> PathBuf {
    repo_root().join("reference/style_reference.py")
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
