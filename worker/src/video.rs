//! Stylising video frames: one frame from the previous frame's output (or cold),
//! with the weights and styles loaded once. The farm's frame jobs and the local
//! `stylefarm-worker video` command both go through [`FrameRenderer`].

use image::RgbImage;
use stylefarm_core::video::VideoParams;
use stylefarm_engine::flow::FramePair;
use stylefarm_engine::params::RenderParams;
use stylefarm_engine::render::{evaluate_output, load_weights, render_loaded, Progress, RenderOutput, Start};
use stylefarm_engine::temporal::TemporalPrior;
use stylefarm_engine::weights::VggWeights;
use stylefarm_engine::Result;
use tch::Device;

/// Renders the frames of one clip: same styles, params and device throughout.
pub struct FrameRenderer {
    pub params: RenderParams,
    pub video: VideoParams,
    pub styles: Vec<RgbImage>,
    pub weights: VggWeights,
    pub device: Device,
}

impl FrameRenderer {
    pub fn new(params: RenderParams, video: VideoParams, styles: Vec<RgbImage>, device: Device) -> Result<FrameRenderer> {
        params.validate(styles.len())?;
        video.validate()?;
        let weights = load_weights(&params)?;
        Ok(FrameRenderer { params, video, styles, weights, device })
    }

    /// A chain's first frame: the params' start and `first_iterations`.
    pub fn cold(&self, frame: &RgbImage, progress: &mut dyn Progress) -> Result<RenderOutput> {
        let params = RenderParams { iterations: self.video.first_iterations, ..self.params.clone() };
        render_loaded(frame, &self.styles, Start::Init(None), &self.weights, &params, self.device, progress)
    }

    /// A later frame: from `previous` (the chain's output for the frame before)
    /// warped by `pair`, with the temporal loss and `frame_iterations`.
    pub fn warm(&self, frame: &RgbImage, previous: &RgbImage, pair: &FramePair, progress: &mut dyn Progress) -> Result<RenderOutput> {
        let prior = TemporalPrior::new(previous, pair, self.video.temporal_weight)?;
        let params = RenderParams { iterations: self.video.frame_iterations, ..self.params.clone() };
        render_loaded(frame, &self.styles, Start::Prior(&prior), &self.weights, &params, self.device, progress)
    }

    /// An overlap frame where two segments meet: from the cross-fade of their
    /// copies, held close to it (the temporal loss with the fade as its target,
    /// every pixel trusted) while the style statistics the averaging washed out
    /// come back, in `frame_iterations`.
    pub fn seam(&self, frame: &RgbImage, faded: &RgbImage, progress: &mut dyn Progress) -> Result<RenderOutput> {
        let prior = TemporalPrior::hold(faded, self.video.temporal_weight)?;
        let params = RenderParams { iterations: self.video.frame_iterations, ..self.params.clone() };
        render_loaded(frame, &self.styles, Start::Prior(&prior), &self.weights, &params, self.device, progress)
    }

    /// A frame with no predecessor at `iterations` (the independent baseline).
    pub fn independent(&self, frame: &RgbImage, iterations: u32, progress: &mut dyn Progress) -> Result<RenderOutput> {
        let params = RenderParams { iterations, ..self.params.clone() };
        render_loaded(frame, &self.styles, Start::Init(None), &self.weights, &params, self.device, progress)
    }

    /// [total, content, style, tv] of a finished frame (no temporal term).
    pub fn losses(&self, frame: &RgbImage, output: &RgbImage) -> Result<Vec<f64>> {
        evaluate_output(frame, &self.styles, output, &self.weights, &self.params, self.device)
    }
}
