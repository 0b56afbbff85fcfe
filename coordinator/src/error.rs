//! The coordinator's errors, and the one place that maps them to gRPC codes.

use std::sync::Arc;

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// A request field is missing, malformed or beyond its limit.
    #[error("invalid `{field}`: {reason}")]
    InvalidArgument { field: String, reason: String },

    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },

    /// A heartbeat, completion or failure from an attempt that no longer holds
    /// the job's lease (it expired and the job moved on).
    #[error("stale lease: job {job} attempt {attempt} is not the current attempt ({reason})")]
    StaleAttempt { job: String, attempt: u32, reason: String },

    /// The request is valid but the object is in the wrong state for it.
    #[error("{0}")]
    FailedPrecondition(String),

    /// The state store failed; the coordinator stops (fail-stop) so that a
    /// restart reloads the durable truth.
    #[error("state store: {0}")]
    Store(#[from] StoreError),

    /// Object storage failed (retry may succeed).
    #[error("object storage: {0}")]
    Blob(String),

    #[error("shutting down")]
    ShuttingDown,

    /// A tool the coordinator runs (ffmpeg) is missing or failed: an operator's problem, not the request's.
    #[error("unavailable: {0}")]
    Unavailable(String),

    /// No credentials, or credentials that are not (or no longer) valid.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),

    /// Valid credentials without the right to this call or object.
    #[error("permission denied: {0}")]
    PermissionDenied(String),

    /// The caller is over one of its quotas (`crate::quota`).
    #[error("quota `{quota}` ({limit}) exceeded: {detail}")]
    QuotaExceeded { quota: &'static str, limit: String, detail: String },

    /// A broken internal invariant: the coordinator reports NOT_SERVING.
    #[error("internal error: {0}")]
    Internal(String),
}

impl CoordError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> CoordError {
        CoordError::InvalidArgument { field: field.into(), reason: reason.into() }
    }

    pub fn not_found(what: &'static str, id: impl ToString) -> CoordError {
        CoordError::NotFound { what, id: id.to_string() }
    }

    pub fn code(&self) -> Code {
        match self {
            CoordError::InvalidArgument { .. } => Code::InvalidArgument,
            CoordError::NotFound { .. } => Code::NotFound,
            CoordError::StaleAttempt { .. } | CoordError::FailedPrecondition(_) => Code::FailedPrecondition,
            CoordError::Store(_) | CoordError::Internal(_) => Code::Internal,
            CoordError::Unauthenticated(_) => Code::Unauthenticated,
            CoordError::PermissionDenied(_) => Code::PermissionDenied,
            CoordError::QuotaExceeded { .. } => Code::ResourceExhausted,
            CoordError::Blob(_) | CoordError::ShuttingDown | CoordError::Unavailable(_) => Code::Unavailable,
        }
    }

    /// The HTTP status for the dashboard, from the same map.
    pub fn http_status(&self) -> u16 {
        match self.code() {
            Code::InvalidArgument => 400,
            Code::Unauthenticated => 401,
            Code::PermissionDenied => 403,
            Code::NotFound => 404,
            Code::FailedPrecondition => 409,
            Code::ResourceExhausted => 429,
            Code::Unavailable => 503,
            _ => 500,
        }
    }
}

/// The trailer that names the refused field of an INVALID_ARGUMENT, so that
/// clients (the Python package's `InvalidArgument.field`) need not parse the message.
pub const FIELD_TRAILER: &str = "stylefarm-field";

impl From<CoordError> for Status {
    fn from(e: CoordError) -> Status {
        let mut status = Status::new(e.code(), e.to_string());
        if let CoordError::InvalidArgument { field, .. } = &e {
            // a field name that is not valid metadata (never ours) is left to the message
            if let Ok(value) = field.parse() {
                status.metadata_mut().insert(FIELD_TRAILER, value);
            }
        }
        status
    }
}

impl From<stylefarm_core::ParamError> for CoordError {
    fn from(e: stylefarm_core::ParamError) -> CoordError {
        CoordError::InvalidArgument { field: e.field, reason: e.reason }
    }
}

/// Why the state store failed (here, beside `CoordError`, so that the
/// store and this module do not import each other). `Clone` because one failed group commit
/// answers every request in the group; the sources are shared, not flattened
/// into text.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused the database file or a statement.
    #[error("sqlite: {0}")]
    Sqlite(#[source] Arc<rusqlite::Error>),
    /// The token table (`auth.sqlite`) failed.
    #[error("auth.sqlite: {0}")]
    Tokens(#[source] Arc<rusqlite::Error>),
    /// The data directory or a store thread could not be made.
    #[error("{what}: {source}")]
    Io { what: &'static str, source: Arc<std::io::Error> },
    /// A reader panicked while it held the reader connection.
    #[error("the reader connection's lock is poisoned")]
    Poisoned,
    /// The writer thread is gone, so nothing more can be committed.
    #[error("the writer thread has stopped")]
    WriterStopped,
    /// A blocking store call panicked or was cancelled.
    #[error("a blocking store call did not finish: {0}")]
    Task(#[source] Arc<tokio::task::JoinError>),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Sqlite(Arc::new(e))
    }
}

impl StoreError {
    pub fn io(what: &'static str, e: std::io::Error) -> StoreError {
        StoreError::Io { what, source: Arc::new(e) }
    }
}

pub type Result<T, E = CoordError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_argument_names_its_field_in_a_trailer_and_the_message() {
        let status = Status::from(CoordError::invalid("jobs[3].settings.size", "9000 is outside the limits 16..=8192 px"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.metadata().get(FIELD_TRAILER).unwrap(), "jobs[3].settings.size");
        assert_eq!(status.message(), "invalid `jobs[3].settings.size`: 9000 is outside the limits 16..=8192 px");
        let other = Status::from(CoordError::not_found("batch", "b7"));
        assert!(other.metadata().get(FIELD_TRAILER).is_none());
    }
}
