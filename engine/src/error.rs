//! The engine's one error type. Every variant that comes from user input names
//! the field (or file, or tensor) and the limit, so a job's failure reason can be
//! shown to the user as is.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A job parameter is out of range or malformed.
    #[error("invalid parameter `{field}`: {reason}")]
    InvalidParam { field: String, reason: String },

    /// An input image could not be read or decoded.
    #[error("cannot read {role} image {path}: {reason}")]
    Image { role: String, path: PathBuf, reason: String },

    /// A weights file is missing a tensor, has a wrong shape, or is not readable.
    #[error("bad weights {source_name}: {reason}")]
    Weights { source_name: String, reason: String },

    /// Weights are not in the cache and could not be fetched.
    #[error("VGG-16 weights not available: {reason}\n{help}")]
    WeightsUnavailable { reason: String, help: String },

    /// A download or cache operation failed.
    #[error("fetching {what}: {reason}")]
    Fetch { what: String, reason: String },

    /// The requested device does not exist on this machine.
    #[error("device `{requested}` is not available: {reason}")]
    Device { requested: String, reason: String },

    /// The run was cancelled by its caller.
    #[error("cancelled")]
    Cancelled,

    /// Writing an output failed.
    #[error("writing {path}: {reason}")]
    Output { path: PathBuf, reason: String },

    /// A libtorch operation failed (out of memory, a kernel error).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl From<stylefarm_core::ParamError> for EngineError {
    fn from(e: stylefarm_core::ParamError) -> Self {
        EngineError::InvalidParam { field: e.field, reason: e.reason }
    }
}

impl EngineError {
    pub fn param(field: impl Into<String>, reason: impl Into<String>) -> Self {
        EngineError::InvalidParam { field: field.into(), reason: reason.into() }
    }

    pub fn weights(source_name: impl Into<String>, reason: impl Into<String>) -> Self {
        EngineError::Weights { source_name: source_name.into(), reason: reason.into() }
    }

    /// Whether retrying the same job elsewhere could succeed (the farm uses this
    /// to mark failures retryable or not).
    pub fn is_retryable(&self) -> bool {
        matches!(self, EngineError::Fetch { .. } | EngineError::Torch(_) | EngineError::Output { .. })
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
