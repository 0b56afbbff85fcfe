//! The client library's errors: what the caller gave, reaching the
//! coordinator, what it refused (its `tonic::Status`, code and message as
//! sent), local files, and how a waited-for batch ended.

use std::path::PathBuf;
use std::time::Duration;

use stylefarm_proto as pb;
use stylefarm_proto::connect::ConnectError;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad input on this side (a missing file, conflicting options), before anything is sent.
    #[error("{0}")]
    Input(String),
    /// The URL, token file or CA is unusable.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The coordinator could not be reached.
    #[error("connecting to the coordinator at {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The coordinator refused or failed the call (shown as its message).
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
    /// The coordinator stayed away longer than a watch keeps reconnecting.
    #[error("the coordinator has been unreachable for {} s: {}", .for_s, .last.message())]
    Unreachable { for_s: u64, last: tonic::Status },
    /// Writing a fetched output failed.
    #[error("writing {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A waited-for batch finished with failed jobs (each failed job's id and reason).
    #[error("batch {} finished with failed jobs", .batch.id)]
    BatchFailed { batch: Box<pb::Batch>, failures: Vec<(String, String)> },
    /// A waited-for batch was cancelled.
    #[error("batch {} was cancelled", .0.id)]
    BatchCancelled(Box<pb::Batch>),
    /// A wait's time ran out first.
    #[error("batch {batch} did not finish within {} s", .timeout.as_secs_f64())]
    Timeout { batch: String, timeout: Duration },
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

impl ClientError {
    /// The coordinator's status, if the coordinator answered with one.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            ClientError::Status(status) | ClientError::Unreachable { last: status, .. } => Some(status),
            _ => None,
        }
    }
}
