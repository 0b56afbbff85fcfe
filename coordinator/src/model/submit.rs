//! Submit commands: a batch as the edge validated it, before it has ids.

use std::collections::BTreeMap;

use stylefarm_core::labels::Requirement;

use super::ImageSource;
use crate::ids::{BatchId, JobId};

#[derive(Debug)]
pub struct NewJob {
    pub name: String,
    pub content: ImageSource,
    pub styles: Vec<ImageSource>,
    pub params_json: String,
    pub estimate_bytes: u64,
    /// Pixels × iterations it renders (0 for a job that does not render).
    pub work: u64,
    pub time_limit_ms: u64,
    /// Indices of earlier jobs of the same batch that must succeed first.
    pub depends_on: Vec<u32>,
    /// What the worker does (JSON), for jobs other than a plain render.
    pub task: Option<String>,
    /// Worker labels this job needs besides its batch's.
    pub requires: Vec<Requirement>,
}

#[derive(Debug)]
pub struct NewBatch {
    pub name: String,
    pub priority: i32,
    pub labels: BTreeMap<String, String>,
    pub max_attempts: u32,
    pub request_id: Option<String>,
    /// Worker labels every job needs (worker pools).
    pub requires: Vec<Requirement>,
    /// Webhooks told when it ends.
    pub notify: super::Notify,
    pub jobs: Vec<NewJob>,
}

#[derive(Debug)]
pub struct Submitted {
    pub batch: BatchId,
    pub jobs: Vec<JobId>,
    pub deduplicated: bool,
}
