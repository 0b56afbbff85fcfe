//! One render job end to end: inputs → weights → coarse-to-fine optimisation →
//! image, loss trace, snapshots, progress animation and metadata.

use std::path::{Path, PathBuf};
use std::time::Instant;

use image::RgbImage;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::batch::{BatchHandle, Member, Packing};
use crate::device::describe;
use crate::error::{EngineError, Result};
use crate::image_io::{self, fit_long_side, load_rgb, luminance_rgb, match_luminance, recolor, resize, to_tensor, Rgb16Image};
use crate::loss::{image_view, StyleObjective};
use crate::optim::{Adam, AdamConfig, AnyOptimizer, Lbfgs, LbfgsConfig, Objective, StopReason};
use crate::params::{Init, Optimizer, RenderParams, StyleResize};
use crate::temporal::{start_image, TemporalPrior, TemporalTerm};
use crate::trace::TraceRow;
use crate::vgg::Vgg16;
use crate::weights::{cache_dir, resolve_weights, Normalization, VggWeights};
use stylefarm_core::print::PrintFormat;
use stylefarm_core::tiling::Rect;

/// Long side of the snapshot previews kept for the animation: a big render's
/// snapshots are not all held at full size.
pub const PREVIEW_SIDE: u32 = crate::animation::MAX_FRAME_SIDE;

/// Input files of a job.
#[derive(Debug, Clone)]
pub struct RenderInputs {
    pub content: PathBuf,
    pub styles: Vec<PathBuf>,
}

/// Receives progress; asked between iterations whether to stop.
pub trait Progress {
    fn on_row(&mut self, row: &TraceRow);
    /// Whether snapshots are taken every `snapshot_every` iterations; if not,
    /// only the last iterate (the output) is read off the device.
    fn wants_snapshots(&self) -> bool {
        true
    }
    fn should_cancel(&self) -> bool {
        false
    }
}

/// Where a render starts.
#[derive(Clone, Copy)]
pub enum Start<'a> {
    /// As the params' `init` says, with the decoded image for `init: image`.
    Init(Option<&'a RgbImage>),
    /// A video frame: from the previous frame's output warped onto this one
    /// (the content where the flow is not trusted), held close to it by the
    /// temporal loss at every scale.
    Prior(&'a TemporalPrior),
    /// One tile of a print too large for one device: the job's one scale is
    /// its whole image, of which the render optimises `tile.rect` alone.
    Tile(&'a TileStart),
}

/// Where a tile sits and what it starts from.
pub struct TileStart {
    pub rect: Rect,
    /// The whole image at the tile's scale (the content must come out at this size).
    pub width: u32,
    pub height: u32,
    /// The scale before's whole image, upscaled and cropped as the start;
    /// None: the params' `init`, cropped.
    pub previous: Option<RgbImage>,
}

/// Ignores progress.
pub struct Silent;
impl Progress for Silent {
    fn on_row(&mut self, _row: &TraceRow) {}
}

/// Everything a finished job reports besides the image.
#[derive(Debug, Clone, Serialize)]
pub struct RenderMetadata {
    pub engine: String,
    pub params: RenderParams,
    pub content: PathBuf,
    pub styles: Vec<PathBuf>,
    pub weights_path: PathBuf,
    pub weights_sha256: String,
    pub normalization: Normalization,
    pub device: String,
    pub torch_threads: i32,
    pub output_width: u32,
    pub output_height: u32,
    pub iterations_run: u32,
    pub evaluations: u32,
    pub stop_reason: Option<StopReason>,
    /// How its evaluations were stacked with other jobs' (renders through a
    /// shared evaluator only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packing: Option<Packing>,
    pub initial_loss: f64,
    pub final_loss: f64,
    pub timings: Timings,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub load_ms: f64,
    pub optimise_ms: f64,
    pub total_ms: f64,
    pub ms_per_iteration: f64,
}

pub struct RenderOutput {
    pub image: RgbImage,
    /// The same picture at 16 bits per channel, when the job asks for a
    /// print master (`params.print`).
    pub print: Option<Rgb16Image>,
    pub trace: Vec<TraceRow>,
    /// Snapshot previews, long side at most [`PREVIEW_SIDE`] (iteration 0, every
    /// `snapshot_every`, and the last): the snapshots folder and the animation.
    /// Each is scaled down on the device and read off it once, as 8-bit.
    pub frames: Vec<(TraceRow, RgbImage)>,
    pub metadata: RenderMetadata,
}

/// Loads inputs and weights, then renders.
pub fn render(inputs: &RenderInputs, params: &RenderParams, device: Device, progress: &mut dyn Progress) -> Result<RenderOutput> {
    let started = Instant::now();
    params.validate(inputs.styles.len())?;
    let content = load_rgb(&inputs.content, "content")?;
    let styles = inputs.styles.iter().enumerate().map(|(i, p)| load_rgb(p, &format!("style[{i}]"))).collect::<Result<Vec<_>>>()?;
    let init = match &params.init {
        Init::Image(path) => Some(load_rgb(path, "init")?),
        _ => None,
    };
    let weights = load_weights(params)?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut out = render_loaded(&content, &styles, Start::Init(init.as_ref()), &weights, params, device, progress)?;
    out.metadata.content = inputs.content.clone();
    out.metadata.styles = inputs.styles.clone();
    out.metadata.timings.load_ms = load_ms;
    out.metadata.timings.total_ms = started.elapsed().as_secs_f64() * 1e3;
    Ok(out)
}

/// Resolves, verifies and loads the job's weights (up to the depth it needs).
pub fn load_weights(params: &RenderParams) -> Result<VggWeights> {
    let (path, expected_sha) = resolve_weights(&params.weights, &cache_dir())?;
    let normalization = params.normalization.as_deref().map(Normalization::parse).transpose()?;
    let weights = VggWeights::load(&path, params.depth(), normalization)?;
    if let Some(expected) = expected_sha {
        if weights.sha256 != expected {
            return Err(EngineError::weights(
                path.display().to_string(),
                format!("SHA-256 is {}, expected {expected}; delete the file to fetch it again", weights.sha256),
            ));
        }
    }
    Ok(weights)
}

/// Renders already-decoded images (float32, the job's own model).
#[allow(clippy::too_many_arguments)]
pub fn render_loaded(
    content: &RgbImage,
    styles: &[RgbImage],
    start: Start<'_>,
    weights: &VggWeights,
    params: &RenderParams,
    device: Device,
    progress: &mut dyn Progress,
) -> Result<RenderOutput> {
    render_via(Evaluator::Own(Kind::Float), content, styles, start, weights, params, device, progress)
}

/// Where a render's evaluations run.
pub enum Evaluator<'a> {
    /// The job's own model, in this floating-point kind (`Double` to check
    /// numerics: there, reduction order moves nothing visible).
    Own(Kind),
    /// Stacked with other jobs' in a shared evaluator (see [`crate::batch`]):
    /// the same result as alone, up to floating-point reduction order.
    Shared(&'a BatchHandle),
}

/// Renders already-decoded images with their evaluations where `evaluator` says.
#[allow(clippy::too_many_arguments)]
pub fn render_via(
    evaluator: Evaluator<'_>,
    content: &RgbImage,
    styles: &[RgbImage],
    start: Start<'_>,
    weights: &VggWeights,
    params: &RenderParams,
    device: Device,
    progress: &mut dyn Progress,
) -> Result<RenderOutput> {
    let (kind, shared) = match evaluator {
        Evaluator::Own(kind) => (kind, None),
        Evaluator::Shared(handle) => {
            handle.compatible(weights, params.pooling, device)?;
            (handle.kind(), Some(handle))
        }
    };
    params.validate(styles.len())?;
    let params = &params.resolved();
    let norm = &weights.normalization;
    let depth = params.depth();
    let blend = params.blend_weights(styles.len());
    let sizes = params.scale_sizes();
    let region = match start {
        Start::Tile(tile) => Some(tile),
        _ => None,
    };
    if let Some(tile) = region {
        let (w, h) = fit_long_side(content.width(), content.height(), params.size);
        let r = &tile.rect;
        if sizes.len() != 1 || (w, h) != (tile.width, tile.height) || r.width == 0 || r.height == 0 || r.x + r.width > w || r.y + r.height > h {
            return Err(EngineError::param(
                "tile",
                format!("{r:?} of a {}x{} image at {} scales does not fit the content at {w}x{h} in one scale", tile.width, tile.height, sizes.len()),
            ));
        }
    }
    // the noise of a random start, drawn at once from the seeded global
    // generator: renders running side by side (a shared evaluator) take turns
    let noise = match params.init {
        Init::Random => {
            let (w, h) = fit_long_side(content.width(), content.height(), sizes[0]);
            static GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());
            let _turn = GENERATOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            tch::manual_seed(params.seed as i64);
            Some(Tensor::randn([1, 3, h as i64, w as i64], (kind, Device::Cpu)))
        }
        _ => None,
    };
    // uploaded once, shared by every scale (or the shared evaluator's)
    let model = match shared {
        Some(s) => s.model(),
        None => Vgg16::new(weights.tensors(depth), params.pooling, device, kind),
    };

    let started = Instant::now();
    let mut trace = Vec::new();
    let mut frames = Vec::new();
    let mut final_image = None;
    let mut final_print = None;
    let mut previous: Option<Tensor> = None;
    let mut total_iterations = 0u32;
    let mut total_evals = 0u32;
    let mut stop_reason = None;
    let mut packing: Option<Packing> = None;

    for (scale_index, &scale_size) in sizes.iter().enumerate() {
        let (w, h) = fit_long_side(content.width(), content.height(), scale_size);
        let Scale { content_rgb, content_net, styles_net } = prepare_scale(content, styles, params, norm, scale_size, kind, device);

        // a video frame's prior at this scale, in network units
        let prior = match start {
            Start::Prior(p) => {
                let (warped, mask) = p.at(h as i64, w as i64, kind, device)?;
                let warped = if params.preserve_colors { luminance_rgb(&warped) } else { warped };
                Some((norm.to_network(&warped), mask, p.weight))
            }
            Start::Init(_) | Start::Tile(_) => None,
        };
        let init_image = match start {
            Start::Init(image) => image,
            Start::Prior(_) | Start::Tile(_) => None,
        };
        let from_previous = region.and_then(|tile| tile.previous.as_ref());
        let x0 = match (&previous, &prior, from_previous) {
            (Some(prev), _, _) => prev.upsample_bilinear2d([h as i64, w as i64], false, None, None),
            (None, _, Some(image)) => {
                let rgb = to_tensor(image, kind, device).f_upsample_bilinear2d([h as i64, w as i64], false, None, None)?;
                norm.to_network(&if params.preserve_colors { luminance_rgb(&rgb) } else { rgb })
            }
            (None, Some((warped, mask, _)), None) => start_image(warped, mask, &content_net)?,
            (None, None, None) => match &params.init {
                Init::Content => content_net.shallow_clone(),
                Init::Random => noise.as_ref().expect("drawn above").to_device(device) * 0.001,
                Init::Image(_) => {
                    let img = init_image.ok_or_else(|| EngineError::param("init", "init image was not loaded"))?;
                    let rgb = to_tensor(&resize(img, w, h), kind, device);
                    norm.to_network(&if params.preserve_colors { luminance_rgb(&rgb) } else { rgb })
                }
            },
        };
        // a tile: its part of the whole's content and start; the styles stay whole
        let whole_start = region.filter(|tile| tile.previous.is_some()).map(|_| x0.shallow_clone());
        let (content_rgb, content_net, x0) = match region {
            Some(tile) => (crop(&content_rgb, &tile.rect)?, crop(&content_net, &tile.rect)?, crop(&x0, &tile.rect)?),
            None => (content_rgb, content_net, x0),
        };

        let share = region.map_or(1.0, |tile| tile.rect.pixels() as f64 / (f64::from(w) * f64::from(h)));
        let mut own = StyleObjective::new(model.shallow_clone(), params, &content_net, &styles_net, &blend)?;
        if region.is_some() {
            own = own.with_share(share)?;
        }
        if let Some(whole) = &whole_start {
            own = own.with_local_style(whole, &x0)?;
        }
        if let Some((target, mask, weight)) = prior {
            // the weight is relative to what the frame's other losses are at its start
            let others = tch::no_grad(|| own.losses(&x0))?.f_double_value(&[0])?;
            own = own.with_temporal(TemporalTerm::relative(target, mask, weight, others, &content_net)?)?;
        }
        let (height, width) = (own.height(), own.width());
        let mut objective = match shared {
            Some(s) => Either::Shared(s.join(own.into_spec())?),
            None => Either::Own(own),
        };
        let x0 = StyleObjective::flatten(&x0)?;
        let iterations = params.iterations_at(scale_index);
        let mut optimizer = make_optimizer(&params.optimizer, iterations, &x0, norm, share);

        let snapshots = progress.wants_snapshots();
        let snapshot_every = match params.snapshot_every {
            0 => (iterations / 20).max(1),
            n => n,
        };
        let mut evals_in_scale = 0u32;
        let mut iteration = 0u32;
        let mut report = optimizer.start(&mut objective)?;
        loop {
            evals_in_scale += report.evaluations;
            let row = TraceRow {
                scale: scale_index as u32,
                size: scale_size,
                iteration,
                total: report.values[0],
                content: report.values.get(1).copied().unwrap_or(f64::NAN),
                style: report.values.get(2).copied().unwrap_or(f64::NAN),
                tv: report.values.get(3).copied().unwrap_or(f64::NAN),
                evaluations: evals_in_scale,
                elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
            };
            progress.on_row(&row);
            let last = iteration == iterations || report.stop.is_some();
            if last {
                let rgb = finish_rgb((height, width), optimizer.x(), norm, params.preserve_colors, &content_rgb, Fit::Full)?;
                let image = image_io::to_image(&rgb)?;
                frames.push((row.clone(), preview(&image)));
                final_image = Some(image);
                let finest = scale_index + 1 == sizes.len();
                if finest && params.print != PrintFormat::None {
                    final_print = Some(image_io::to_image16(&rgb)?);
                }
            } else if iteration % snapshot_every == 0 && snapshots {
                // only the preview leaves the device
                let rgb = finish_rgb((height, width), optimizer.x(), norm, params.preserve_colors, &content_rgb, Fit::Preview)?;
                frames.push((row.clone(), image_io::to_image(&rgb)?));
            }
            trace.push(row);
            if last {
                if report.stop.is_some() {
                    stop_reason = report.stop;
                }
                break;
            }
            if progress.should_cancel() {
                return Err(EngineError::Cancelled);
            }
            report = optimizer.iterate(&mut objective)?;
            iteration += 1;
        }
        if let Either::Shared(member) = &objective {
            packing.get_or_insert_with(Packing::default).merge(member.packing());
        }
        total_iterations += iteration;
        total_evals += evals_in_scale;
        // the next scale starts from this one's picture as it would be shown:
        // values out of the colour range would start it far off (a farm's
        // tile starts from the stored picture; so does the whole render)
        previous =
            Some(tch::no_grad(|| -> Result<Tensor> { Ok(norm.to_network(&norm.from_network(&image_view(optimizer.x(), height, width)?).clamp(0.0, 1.0))) })?);
        if stop_reason == Some(StopReason::NonFinite) {
            return Err(EngineError::param("loss", "the loss became NaN or infinite; lower the learning rate or the weights"));
        }
    }

    let image = final_image.expect("the last iteration always takes a snapshot");
    let optimise_ms = started.elapsed().as_secs_f64() * 1e3;
    let metadata = RenderMetadata {
        engine: format!("stylefarm-engine {}", env!("CARGO_PKG_VERSION")),
        params: params.clone(),
        content: PathBuf::new(),
        styles: Vec::new(),
        weights_path: weights.path.clone(),
        weights_sha256: weights.sha256.clone(),
        normalization: norm.clone(),
        device: describe(device),
        torch_threads: tch::get_num_threads(),
        output_width: image.width(),
        output_height: image.height(),
        iterations_run: total_iterations,
        evaluations: total_evals,
        stop_reason,
        packing,
        initial_loss: trace.first().map(|r| r.total).unwrap_or(f64::NAN),
        final_loss: trace.last().map(|r| r.total).unwrap_or(f64::NAN),
        timings: Timings { load_ms: 0.0, optimise_ms, total_ms: optimise_ms, ms_per_iteration: optimise_ms / total_iterations.max(1) as f64 },
    };
    Ok(RenderOutput { image, print: final_print, trace, frames, metadata })
}

/// `rect` of a `[1,C,H,W]` image, contiguous.
fn crop(image: &Tensor, rect: &Rect) -> Result<Tensor> {
    Ok(image.f_narrow(2, i64::from(rect.y), i64::from(rect.height))?.f_narrow(3, i64::from(rect.x), i64::from(rect.width))?.f_contiguous()?)
}

/// One scale's inputs: the content in RGB (for recolouring) and in network
/// units, and the styles resized as the params say, in network units.
struct Scale {
    content_rgb: Tensor,
    content_net: Tensor,
    styles_net: Vec<Tensor>,
}

fn prepare_scale(content: &RgbImage, styles: &[RgbImage], params: &RenderParams, norm: &Normalization, scale_size: u32, kind: Kind, device: Device) -> Scale {
    let (w, h) = fit_long_side(content.width(), content.height(), scale_size);
    let content_rgb = to_tensor(&resize(content, w, h), kind, device);
    let style_rgbs: Vec<Tensor> = styles
        .iter()
        .map(|s| {
            let (sw, sh) = match params.style_resize {
                StyleResize::ContentSize => (((w as f64 * params.style_scale).round() as u32).max(1), ((h as f64 * params.style_scale).round() as u32).max(1)),
                StyleResize::LongSide => {
                    let long = ((scale_size as f64 * params.style_scale).round() as u32).max(1);
                    fit_long_side(s.width(), s.height(), long)
                }
            };
            to_tensor(&resize(s, sw, sh), kind, device)
        })
        .collect();
    let (content_in, style_in) = if params.preserve_colors {
        let luma = luminance_rgb(&content_rgb);
        let styles_luma = style_rgbs.iter().map(|s| match_luminance(&luminance_rgb(s), &luma)).collect::<Vec<_>>();
        (luma, styles_luma)
    } else {
        (content_rgb.shallow_clone(), style_rgbs)
    };
    let content_net = norm.to_network(&content_in);
    let styles_net: Vec<Tensor> = style_in.iter().map(|s| norm.to_network(s)).collect();
    Scale { content_rgb, content_net, styles_net }
}

/// [total, content, style, tv] of `image` as a finished output of a job with
/// these inputs and params (its last scale, no temporal term): how good a frame
/// is, whatever way it was made.
pub fn evaluate_output(
    content: &RgbImage,
    styles: &[RgbImage],
    image: &RgbImage,
    weights: &VggWeights,
    params: &RenderParams,
    device: Device,
) -> Result<Vec<f64>> {
    params.validate(styles.len())?;
    let norm = &weights.normalization;
    let kind = Kind::Float;
    let size = params.size;
    let Scale { content_net, styles_net, .. } = prepare_scale(content, styles, params, norm, size, kind, device);
    let (h, w) = (content_net.size()[2], content_net.size()[3]);
    let model = Vgg16::new(weights.tensors(params.depth()), params.pooling, device, kind);
    let objective = StyleObjective::new(model, params, &content_net, &styles_net, &params.blend_weights(styles.len()))?;
    let out = to_tensor(&resize(image, w as u32, h as u32), kind, device);
    let out = if params.preserve_colors { luminance_rgb(&out) } else { out };
    let values = tch::no_grad(|| objective.losses(&crate::vgg::channels_last(&norm.to_network(&out))))?;
    Ok(Vec::<f64>::try_from(values.f_to_kind(Kind::Double)?.f_to_device(Device::Cpu)?)?)
}

/// A job's own objective, or its place in a shared evaluator.
enum Either {
    Own(StyleObjective),
    Shared(Member),
}

impl Objective for Either {
    fn evaluate(&mut self, x: &Tensor) -> Result<crate::optim::Evaluation> {
        match self {
            Either::Own(o) => o.evaluate(x),
            Either::Shared(m) => m.evaluate(x),
        }
    }
}

/// The job's optimiser for one scale; `share` is the optimised pixels' part of the whole image.
fn make_optimizer(optimizer: &Optimizer, iterations: u32, x0: &Tensor, norm: &Normalization, share: f64) -> AnyOptimizer {
    match *optimizer {
        Optimizer::Lbfgs { lr, history_size, tolerance_grad, tolerance_change, strong_wolfe, max_evaluations, first_step_levels } => {
            let mut cfg = LbfgsConfig::new(iterations);
            // 8-bit levels to network units: level/255 of the 0..1 range, times scale over std
            let min_std = norm.std.iter().copied().fold(f64::INFINITY, f64::min);
            cfg.first_step = first_step_levels.map(|levels| levels / 255.0 * norm.scale / min_std);
            // PyTorch's default budget (iterations × 5/4) would cut short a render of
            // few iterations, or one whose line searches take several evaluations.
            let per_iteration = if strong_wolfe { 10 } else { 1 };
            cfg.max_eval = max_evaluations.unwrap_or_else(|| iterations.saturating_mul(per_iteration).saturating_add(1));
            cfg.lr = lr;
            cfg.history_size = history_size;
            cfg.tolerance_grad = tolerance_grad;
            cfg.tolerance_change = tolerance_change;
            cfg.strong_wolfe = strong_wolfe;
            cfg.share = share;
            AnyOptimizer::Lbfgs(Lbfgs::new(cfg, x0))
        }
        Optimizer::Adam { lr, beta1, beta2, eps } => AnyOptimizer::Adam(Adam::new(AdamConfig { lr, beta1, beta2, eps }, x0)),
    }
}

fn preview(image: &RgbImage) -> RgbImage {
    if image.width().max(image.height()) <= PREVIEW_SIDE {
        return image.clone();
    }
    let (w, h) = fit_long_side(image.width(), image.height(), PREVIEW_SIDE);
    resize(image, w, h)
}

/// How large an iterate is read off the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fit {
    /// At its size: the output.
    Full,
    /// Long side at most [`PREVIEW_SIDE`] (scaled on the device, antialiased).
    Preview,
}

/// The current iterate as an 8-bit image (recoloured for luminance-only transfer).
#[cfg(test)]
fn finish_image((height, width): (i64, i64), x: &Tensor, norm: &Normalization, preserve_colors: bool, content_rgb: &Tensor, fit: Fit) -> Result<RgbImage> {
    image_io::to_image(&finish_rgb((height, width), x, norm, preserve_colors, content_rgb, fit)?)
}

/// The current iterate as shown, RGB in 0..1 (recoloured for luminance-only transfer).
fn finish_rgb((height, width): (i64, i64), x: &Tensor, norm: &Normalization, preserve_colors: bool, content_rgb: &Tensor, fit: Fit) -> Result<Tensor> {
    tch::no_grad(|| -> Result<Tensor> {
        let rgb = norm.from_network(&image_view(x, height, width)?).clamp(0.0, 1.0);
        let rgb = if preserve_colors { recolor(&rgb, content_rgb).clamp(0.0, 1.0) } else { rgb };
        let (w, h) = (width as u32, height as u32);
        Ok(match fit {
            Fit::Preview if w.max(h) > PREVIEW_SIDE => {
                let (pw, ph) = fit_long_side(w, h, PREVIEW_SIDE);
                rgb.internal_upsample_bilinear2d_aa([i64::from(ph), i64::from(pw)], false, None, None).clamp(0.0, 1.0)
            }
            _ => rgb,
        })
    })
}

/// Writes the outputs a job asked for.
pub struct OutputPaths<'a> {
    pub image: &'a Path,
    pub trace: Option<&'a Path>,
    pub snapshots: Option<&'a Path>,
    pub animation: Option<&'a Path>,
    pub metadata: Option<&'a Path>,
    /// The print master's path (written when the job asked for one).
    pub print: Option<&'a Path>,
}

pub fn write_outputs(out: &RenderOutput, paths: &OutputPaths) -> Result<()> {
    image_io::save_png(&out.image, paths.image)?;
    if let (Some(path), Some(print)) = (paths.print, &out.print) {
        image_io::save_print(print, out.metadata.params.print, path)?;
    }
    if let Some(path) = paths.trace {
        crate::trace::write_jsonl(&out.trace, path)?;
    }
    if let Some(dir) = paths.snapshots {
        for (row, frame) in &out.frames {
            let name = format!("scale{}-iter{:05}.png", row.scale, row.iteration);
            image_io::save_png(frame, &dir.join(name))?;
        }
    }
    if let Some(path) = paths.animation {
        crate::animation::write_gif(&out.frames, path)?;
    }
    if let Some(path) = paths.metadata {
        let json = serde_json::to_vec_pretty(&out.metadata).expect("metadata serialises");
        std::fs::write(path, json).map_err(|e| EngineError::Output { path: path.to_path_buf(), reason: e.to_string() })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A smooth 600 x 400 picture as the optimiser holds it: network
    /// colours, laid out [1, H, W, 3] and flattened.
    fn iterate() -> (RgbImage, Tensor, Normalization) {
        let image = RgbImage::from_fn(600, 400, |x, y| image::Rgb([(x * 255 / 599) as u8, (y * 255 / 399) as u8, ((x + y) * 255 / 999) as u8]));
        let norm = Normalization::torchvision();
        let x = norm.to_network(&image_io::to_tensor(&image, Kind::Float, Device::Cpu)).permute([0, 2, 3, 1]).contiguous().view([-1]);
        (image, x, norm)
    }

    #[test]
    fn the_output_is_read_whole_and_a_preview_at_preview_size() {
        let (image, x, norm) = iterate();
        let none = Tensor::zeros([1], (Kind::Float, Device::Cpu));
        let full = finish_image((400, 600), &x, &norm, false, &none, Fit::Full).unwrap();
        assert_eq!(full.dimensions(), (600, 400));
        let off_by = full.as_raw().iter().zip(image.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
        assert!(off_by <= 1, "the output round-trips: {off_by}");
        let small = finish_image((400, 600), &x, &norm, false, &none, Fit::Preview).unwrap();
        assert_eq!(small.dimensions(), fit_long_side(600, 400, PREVIEW_SIDE));
        // scaled on the device, it matches the host's Lanczos resize of the whole picture
        let host = preview(&full);
        let mean = small.as_raw().iter().zip(host.as_raw()).map(|(a, b)| f64::from(a.abs_diff(*b))).sum::<f64>() / small.as_raw().len() as f64;
        assert!(mean < 1.5, "mean difference {mean} levels");
    }
}
