//! Where things live in the object store: the one layout of keys, for the
//! API (uploads, outputs) and the video planner (clips) alike. A leaf.

use crate::ids::{BatchId, JobId};

/// Every object a batch's jobs wrote lives under this prefix.
pub fn batch_prefix(batch: BatchId) -> String {
    format!("batches/{batch}/")
}

/// Object keys of a job attempt's outputs.
pub fn attempt_prefix(batch: BatchId, job: JobId, attempt: u32) -> String {
    format!("{}jobs/{job}/attempt-{attempt}/", batch_prefix(batch))
}

/// Content-addressed key of an uploaded image.
pub fn image_key(sha256: &str) -> String {
    format!("images/sha256/{sha256}")
}
