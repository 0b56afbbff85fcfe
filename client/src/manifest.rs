//! `--manifest batch.toml`: a batch described in a file.
//!
//! ```toml
//! name = "autumn"
//! priority = 10
//! labels = { project = "demo" }
//! requires = ["pool=studio-b"]                # worker pools: every job runs only where labels match
//! notify = ["https://hooks.example/farm"]     # webhooks (under the coordinator's --webhook-allow)
//! notify_on = "failures"                      # or "batch_end" (the default)
//! params = { size = 512, iterations = 300 }   # every job's RenderParams overlay
//!
//! contents = ["a.jpg", "b.jpg"]               # cartesian: contents × styles
//! styles = ["wave.jpg", "s3://bucket/scream.jpg"]
//!
//! [[jobs]]                                    # and/or explicit jobs
//! name = "blend"
//! content = "c.jpg"
//! styles = ["wave.jpg", "scream.jpg"]
//! params = { style_blend_weights = [0.7, 0.3], preset = "gatys" }
//! requires = ["vram>=48"]                     # this job's own, with the batch's
//! ```
//! Relative paths are relative to the manifest's folder.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use serde::Deserialize;
use stylefarm_client::{ClientError, Input};
use stylefarm_core::labels::Requirement;

use crate::cli::NotifyOn;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub priority: Option<i32>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub params: Option<toml::Table>,
    #[serde(default)]
    pub contents: Vec<String>,
    #[serde(default)]
    pub styles: Vec<String>,
    #[serde(default)]
    pub jobs: Vec<ManifestJob>,
    #[serde(default)]
    pub requires: Vec<Requirement>,
    #[serde(default)]
    pub notify: Vec<String>,
    #[serde(default)]
    pub notify_on: Option<NotifyOn>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestJob {
    #[serde(default)]
    pub name: String,
    pub content: String,
    pub styles: Vec<String>,
    #[serde(default)]
    pub params: Option<toml::Table>,
    #[serde(default)]
    pub requires: Vec<Requirement>,
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).map_err(|e| ClientError::Input(format!("reading {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| ClientError::Input(format!("{}: {e}", path.display())).into())
    }
}

/// A manifest entry as an input, relative to the manifest's folder.
pub fn input(base: &Path, text: &str) -> Input {
    match Input::parse(text) {
        Input::File(path) if path.is_relative() => Input::File(base.join(path)),
        other => other,
    }
}

/// Job params: the manifest's overlay, then the job's own, as JSON.
pub fn params_json(defaults: Option<&toml::Table>, own: Option<&toml::Table>) -> Result<String> {
    let mut merged = serde_json::Map::new();
    for table in [defaults, own].into_iter().flatten() {
        let value = serde_json::to_value(table)?;
        if let serde_json::Value::Object(map) = value {
            merged.extend(map);
        }
    }
    Ok(serde_json::Value::Object(merged).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_are_read_and_checked_with_the_file() {
        let m: Manifest = toml::from_str(
            r#"
            requires = ["pool=studio-b"]
            [[jobs]]
            content = "a.jpg"
            styles = ["b.jpg"]
            requires = ["vram>=48"]
            "#,
        )
        .unwrap();
        assert_eq!(m.requires[0].to_string(), "pool=studio-b");
        assert_eq!(m.jobs[0].requires[0].to_string(), "vram>=48");
        let e = toml::from_str::<Manifest>(r#"requires = ["vram>=lots"]"#).unwrap_err().to_string();
        assert!(e.contains("compares numbers"), "{e}");
    }

    #[test]
    fn notifications_are_read_and_an_unknown_event_is_refused() {
        let m: Manifest = toml::from_str(
            r#"
            notify = ["https://hooks.example/farm"]
            notify_on = "failures"
            "#,
        )
        .unwrap();
        assert_eq!((m.notify.as_slice(), m.notify_on), (&["https://hooks.example/farm".to_string()][..], Some(NotifyOn::Failures)));
        let dashed: Manifest = toml::from_str(r#"notify_on = "batch-end""#).unwrap();
        assert_eq!(dashed.notify_on, Some(NotifyOn::BatchEnd));
        let e = toml::from_str::<Manifest>(r#"notify_on = "sometimes""#).unwrap_err().to_string();
        assert!(e.contains("sometimes") && e.contains("failures"), "{e}");
    }
}
