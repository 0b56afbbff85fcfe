//! How the client ends: the exit code each outcome gives (documented in
//! `stylefarm --help`'s crate doc).

use std::process::ExitCode;

use stylefarm_client::ClientError;

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
        if let Some(e) = error.downcast_ref::<ClientError>() {
            match e {
                ClientError::Input(_) | ClientError::Connect(_) => return Exit::Invalid,
                ClientError::Transport { .. } | ClientError::Unreachable { .. } => return Exit::Unreachable,
                ClientError::BatchFailed { .. } => return Exit::BatchFailed,
                ClientError::BatchCancelled(_) => return Exit::Cancelled,
                ClientError::Status(status) => return Exit::of_status(status),
                ClientError::Write { .. } | ClientError::Timeout { .. } => return Exit::Other,
            }
        }
        for cause in error.chain() {
            if let Some(status) = cause.downcast_ref::<tonic::Status>() {
                return Exit::of_status(status);
            }
            if let Some(ClientError::Status(status)) = cause.downcast_ref::<ClientError>() {
                return Exit::of_status(status);
            }
            if cause.downcast_ref::<tonic::transport::Error>().is_some() {
                return Exit::Unreachable;
            }
        }
        Exit::Other
    }
}

impl Exit {
    fn of_status(status: &tonic::Status) -> Exit {
        match status.code() {
            tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => Exit::Invalid,
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => Exit::Unreachable,
            tonic::Code::NotFound => Exit::NotFound,
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => Exit::Denied,
            _ => Exit::Other,
        }
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
        let batch = || Box::new(stylefarm_proto::Batch { id: "b1".into(), ..Default::default() });
        assert_eq!(Exit::of(&ClientError::Input("x".into()).into()), Exit::Invalid);
        assert_eq!(Exit::of(&ClientError::BatchFailed { batch: batch(), failures: vec![] }.into()), Exit::BatchFailed);
        assert_eq!(Exit::of(&ClientError::BatchCancelled(batch()).into()), Exit::Cancelled);
        assert_eq!(Exit::of(&ClientError::Status(tonic::Status::not_found("b1")).into()), Exit::NotFound);
        assert_eq!(Exit::of(&anyhow::Error::new(ClientError::Status(tonic::Status::unavailable("down"))).context("watching")), Exit::Unreachable);
        assert_eq!(Exit::of(&status(tonic::Code::Unavailable)), Exit::Unreachable);
        assert_eq!(Exit::of(&status(tonic::Code::NotFound).context("getting the batch")), Exit::NotFound);
        assert_eq!(Exit::of(&status(tonic::Code::PermissionDenied)), Exit::Denied);
        assert_eq!(Exit::of(&anyhow::anyhow!("disk full")), Exit::Other);
        assert_eq!(Exit::Denied as u8, 7);
    }
}
