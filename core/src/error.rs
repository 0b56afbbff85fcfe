//! The one error of this crate: a job parameter that is out of range or malformed.

/// Names the field and the limit, so it can be shown to the user as is (and
/// mapped to `INVALID_ARGUMENT` by the coordinator).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid parameter `{field}`: {reason}")]
pub struct ParamError {
    pub field: String,
    pub reason: String,
}

impl ParamError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> ParamError {
        ParamError { field: field.into(), reason: reason.into() }
    }
}

pub type Result<T, E = ParamError> = std::result::Result<T, E>;
