//! The per-iteration loss trace (one JSON object per line).

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// One row: the losses at an iterate. Iteration 0 is before the first step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceRow {
    /// Index of the scale (0 = coarsest; always 0 for single-scale jobs).
    pub scale: u32,
    /// Long side of this scale in pixels.
    pub size: u32,
    pub iteration: u32,
    pub total: f64,
    pub content: f64,
    pub style: f64,
    pub tv: f64,
    /// Function evaluations so far in this scale.
    pub evaluations: u32,
    /// Milliseconds since the job's optimisation started.
    pub elapsed_ms: f64,
}

/// Writes rows as JSON lines.
pub fn write_jsonl(rows: &[TraceRow], path: &Path) -> Result<()> {
    let out_err = |e: std::io::Error| EngineError::Output { path: path.to_path_buf(), reason: e.to_string() };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(out_err)?;
    }
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(out_err)?);
    for row in rows {
        serde_json::to_writer(&mut file, row).map_err(|e| EngineError::Output { path: path.to_path_buf(), reason: e.to_string() })?;
        file.write_all(b"\n").map_err(out_err)?;
    }
    file.flush().map_err(out_err)
}

pub fn read_jsonl(path: &Path) -> std::result::Result<Vec<TraceRow>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines().enumerate().map(|(i, line)| serde_json::from_str(line).map_err(|e| format!("{} line {}: {e}", path.display(), i + 1))).collect()
}
