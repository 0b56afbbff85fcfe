//! Records for unit tests across the crate.

use super::*;
use crate::ids::{BatchId, JobId};

/// A queued job of `batch` with `max_attempts`.
pub fn job(batch: BatchId, max_attempts: u32) -> JobRecord {
    JobRecord {
        id: JobId(1),
        batch,
        index: 0,
        name: "j".into(),
        priority: 0,
        content: ImageSource::Blob("aa".into()),
        styles: vec![ImageSource::Url("file:///s.png".into())],
        params_json: "{}".into(),
        estimate_bytes: 1,
        work: 1,
        max_attempts,
        attempt: 0,
        handed_back: 0,
        forgiven: 0,
        time_limit_ms: 1_000_000,
        state: JobState::Queued { not_before_ms: 0 },
        last_failure: None,
        created_ms: 0,
        started_ms: None,
        finished_ms: None,
        trace_id: "0".repeat(32),
        depends_on: Vec::new(),
        task: None,
        requires: Vec::new(),
    }
}

/// An unfinished, empty batch that notifies `notify`.
pub fn batch(notify: Notify) -> BatchRecord {
    BatchRecord {
        id: BatchId(7),
        name: "nightly".into(),
        priority: 0,
        labels: Default::default(),
        max_attempts: 3,
        request_id: None,
        created_ms: 1,
        finished_ms: None,
        cancel_requested: false,
        counts: Counts::default(),
        started: false,
        started_ms: None,
        owner: "alice".into(),
        paused: false,
        deleted_ms: None,
        requires: Vec::new(),
        notify,
        unfinished_work: 0,
    }
}

/// A one-job batch to submit, reading `content` and `style`.
pub fn new_batch(content: ImageSource, style: ImageSource) -> NewBatch {
    let job = NewJob {
        name: "j".into(),
        content,
        styles: vec![style],
        params_json: "{}".into(),
        estimate_bytes: 1,
        work: 1,
        time_limit_ms: 10_000,
        depends_on: Vec::new(),
        task: None,
        requires: Vec::new(),
    };
    NewBatch {
        name: "b".into(),
        priority: 0,
        labels: Default::default(),
        max_attempts: 2,
        request_id: None,
        requires: Vec::new(),
        notify: Notify::default(),
        jobs: vec![job],
    }
}
