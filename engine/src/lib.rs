//! stylefarm's style-transfer engine: Gatys-style neural style transfer with
//! VGG-16 features and L-BFGS (or Adam) on libtorch.
//!
//! Entry points: [`render::render`] runs one job from files; [`params::RenderParams`]
//! holds every knob, with the `keras` and `gatys` presets.

pub mod alloc;
pub mod animation;
pub mod batch;
pub mod device;
pub mod error;
pub mod flow;
pub mod grams;
pub mod icc;
pub mod image_io;
pub mod loss;
pub mod optim;
pub mod problem;
pub mod render;
pub mod safetensors;
pub mod temporal;
pub mod tiled;
pub mod trace;
pub mod vgg;
pub mod video;
pub mod weights;

pub use error::{EngineError, Result};
/// Job parameters live in `stylefarm-core` (no libtorch) and are re-exported here.
pub use stylefarm_core::params;
