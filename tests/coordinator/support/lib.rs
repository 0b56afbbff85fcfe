//! Helpers for the tests that need no libtorch: a coordinator in-process or as
//! a process, simulated workers over gRPC, test certificates, where the setup
//! put things. This package does not link libtorch; `stylefarm-tests` (the
//! engine and the real worker) builds on it.

pub mod farm;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The variables cargo sets for a test process about its own package. A build
/// started from a test must not pass them on: build scripts watch some of them
/// (ring's reruns on `CARGO_PKG_NAME` and `CARGO_MANIFEST_DIR`), and a change
/// rebuilt ring and everything above it (TLS, HTTP, object_store, the
/// workspace) once per test package, and again at the next plain build.
fn set_for_the_test(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_BIN_EXE_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "CARGO_RUSTC_CURRENT_DIR"
        )
}

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
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "--workspace", "--all-targets"]).current_dir(repo_root());
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(set_for_the_test) {
                build.env_remove(&name);
            }
        }
        let status = build.status().expect("running cargo build");
        assert!(status.success(), "cargo build --workspace --all-targets failed");
    });
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
    target.join("debug").join(bin)
}
