//! Helpers for the tests that need no libtorch: a coordinator in-process or as
//! a process, simulated workers over gRPC, test certificates, where the setup
//! put things. This package does not link libtorch; `stylefarm-tests` (the
//! engine and the real worker) builds on it.

pub mod farm;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).expect("tests/coordinator/ is inside the repo").to_path_buf()
}

pub fn sample(name: &str) -> PathBuf {
    let path = repo_root().join(".samples").join(name);
    assert!(path.is_file(), "{} is missing: run `make setup`", path.display());
    path
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
