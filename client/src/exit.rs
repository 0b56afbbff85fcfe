//! How the client ends: its errors that are not the coordinator's, and the
//! exit code each outcome gives (documented in `stylefarm --help`'s crate doc).

use std::process::ExitCode;

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    Input(String),
    #[error("batch {0} finished with failed jobs")]
    BatchFailed(String),
    #[error("batch {0} was cancelled")]
    BatchCancelled(String),
}

/// The client's exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Done (a waited-for batch succeeded).
    Done = 0,
    /// A batch finished with failed jobs.
    BatchFailed = 1,
    /// Invalid input: ours, or the coordinator's INVALID_ARGUMENT / FAILED_PRECONDITION.
    Invalid = 2,
    /// The coordinator is unreachable or unavailable.
    Unreachable = 3,
    NotFound = 4,
    /// The batch was cancelled.
    Cancelled = 5,
    /// Any other error.
    Other = 6,
    /// Not authenticated or not allowed (a missing, wrong or revoked token, or the wrong role).
    Denied = 7,
}

impl Exit {
    /// The code an error ends the client with.
    pub fn of(error: &anyhow::Error) -> Exit {
        if let Some(f) = error.downcast_ref::<Failure>() {
            return match f {
                Failure::Input(_) => Exit::Invalid,
                Failure::BatchFailed(_) => Exit::BatchFailed,
                Failure::BatchCancelled(_) => Exit::Cancelled,
            };
        }
        for cause in error.chain() {
            if let Some(status) = cause.downcast_ref::<tonic::Status>() {
                return match status.code() {
                    tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => Exit::Invalid,
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => Exit::Unreachable,
                    tonic::Code::NotFound => Exit::NotFound,
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => Exit::Denied,
                    _ => Exit::Other,
                };
            }
            if cause.downcast_ref::<tonic::transport::Error>().is_some() {
                return Exit::Unreachable;
            }
        }
        Exit::Other
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_has_its_code() {
        let status = |code| anyhow::Error::new(tonic::Status::new(code, "x"));
        assert_eq!(Exit::of(&Failure::Input("x".into()).into()), Exit::Invalid);
        assert_eq!(Exit::of(&Failure::BatchFailed("b1".into()).into()), Exit::BatchFailed);
        assert_eq!(Exit::of(&Failure::BatchCancelled("b1".into()).into()), Exit::Cancelled);
        assert_eq!(Exit::of(&status(tonic::Code::Unavailable)), Exit::Unreachable);
        assert_eq!(Exit::of(&status(tonic::Code::NotFound).context("getting the batch")), Exit::NotFound);
        assert_eq!(Exit::of(&status(tonic::Code::PermissionDenied)), Exit::Denied);
        assert_eq!(Exit::of(&anyhow::anyhow!("disk full")), Exit::Other);
        assert_eq!(Exit::Denied as u8, 7);
    }
}
