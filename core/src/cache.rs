//! The stylefarm cache: `$STYLEFARM_CACHE`, else `$XDG_CACHE_HOME/stylefarm`,
//! else `~/.cache/stylefarm`. `make setup` fills it (torch's venv, weights,
//! samples, the static ffmpeg in `bin/`); the worker keeps weights in it.

use std::path::PathBuf;

pub fn cache_dir() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|d| !d.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("STYLEFARM_CACHE") {
        return dir;
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return dir.join("stylefarm");
    }
    var("HOME").unwrap_or_else(|| PathBuf::from(".")).join(".cache").join("stylefarm")
}
