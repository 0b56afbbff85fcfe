//! stylefarm's shared vocabulary, free of libtorch: every knob of a render job
//! ([`params::RenderParams`]) with its presets and validation, VGG-16 layer names,
//! the weights a job asks for, and a job's device-memory estimate. The engine,
//! the coordinator and the client all speak it.

pub mod cache;
pub mod duration;
pub mod error;
pub mod estimate;
pub mod ffmpeg;
#[cfg(feature = "cli")]
pub mod knobs;
pub mod labels;
pub mod layers;
pub mod outputs;
pub mod params;
#[cfg(feature = "storage")]
pub mod policy;
pub mod print;
pub mod retry;
pub mod schemes;
#[cfg(feature = "storage")]
pub mod storage;
#[cfg(feature = "tasks")]
pub mod tasks;
#[cfg(feature = "telemetry")]
pub mod telemetry;
pub mod tiling;
#[cfg(feature = "traces")]
pub mod traces;
pub mod video;
#[cfg(feature = "cli")]
pub mod video_knobs;
pub mod weights_spec;

pub use error::{ParamError, Result, ToolError};
