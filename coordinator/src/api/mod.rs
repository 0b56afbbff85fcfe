//! The gRPC services: [`client::ClientApi`] for users, [`worker::WorkerService`]
//! for workers, [`scaler::ScalerService`] for KEDA.

pub mod client;
pub mod scaler;
pub mod worker;

/// Object keys of a job attempt's outputs.
pub fn attempt_prefix(batch: crate::ids::BatchId, job: crate::ids::JobId, attempt: u32) -> String {
    format!("batches/{batch}/jobs/{job}/attempt-{attempt}/")
}

/// Content-addressed key of an uploaded image.
pub fn image_key(sha256: &str) -> String {
    format!("images/sha256/{sha256}")
}
