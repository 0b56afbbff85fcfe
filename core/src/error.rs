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

/// An external tool (ffmpeg) that is missing or failed, or an input it
/// refused.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{tool} is not available ({reason}); `make setup` installs it (the static ffmpeg of the PyPI wheel imageio-ffmpeg, in <cache>/bin), or set STYLEFARM_FFMPEG")]
    Missing { tool: String, reason: String },
    #[error("{tool} failed: {detail}")]
    Failed { tool: String, detail: String },
    #[error(transparent)]
    Input(#[from] ParamError),
}
