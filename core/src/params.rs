//! Every knob of a render job, the two presets, and validation at the edge.
//!
//! A job starts from a preset (`keras`, `gatys`) and overrides any field. Validation
//! names the field and its limit; the engine never sees an invalid job.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{ParamError, Result};
use crate::layers::{LayerId, Pooling};
use crate::print::PrintFormat;
use crate::weights_spec::{WeightsSpec, NORMALIZATIONS};

/// Long side in pixels: at least one pixel left after VGG's four poolings.
pub const MIN_SIZE: u32 = 16;
/// Long side in pixels: 8192² is 67 megapixels, ~40 GB of activations.
pub const MAX_SIZE: u32 = 8192;
pub const MAX_ITERATIONS: u32 = 100_000;
pub const MAX_HISTORY: usize = 1000;
pub const MAX_STYLES: usize = 16;
/// Entries of `content_layers` or `style_layers` (VGG-16 has 13 convolutions; a
/// list may not grow a job's cost or the coordinator's memory beyond that).
pub const MAX_LAYERS: usize = 13;
pub const STYLE_SCALE_RANGE: (f64, f64) = (0.05, 8.0);
pub const MAX_SCALES: u32 = 6;
/// Automatic coarse-to-fine (`scales: 0`): halve until the coarsest scale is at most this long.
pub const AUTO_COARSEST: u32 = 512;
/// Automatic coarse-to-fine: each finer scale runs half the iterations of the one before, never fewer than this.
pub const AUTO_MIN_ITERATIONS: u32 = 50;
/// Shortest tile side a job may ask for, in pixels: VGG-16's deepest style
/// layers see ~200 px around a pixel, and a tile much smaller than that is
/// all edge (measured: 144 px tiles of a 256 px gatys render raised the
/// assembled loss by 54 %, 272 px tiles of a 512 px one by 3 %).
pub const MIN_TILE_SIZE: u32 = 256;
/// Shortest overlap between neighbouring tiles, in pixels.
pub const MIN_OVERLAP: u32 = 8;
/// Most snapshots (and animation frames) one job may keep: each is a preview
/// held in the worker's memory until the job ends.
pub const MAX_SNAPSHOTS: u32 = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// The original Keras recipe this project comes from.
    Keras,
    /// The classic neural-style (Gatys et al., jcjohnson/neural-style) defaults.
    Gatys,
}

impl std::str::FromStr for Preset {
    type Err = ParamError;
    fn from_str(s: &str) -> Result<Preset> {
        match s {
            "keras" => Ok(Preset::Keras),
            "gatys" => Ok(Preset::Gatys),
            other => Err(ParamError::new("preset", format!("`{other}` is not one of keras, gatys"))),
        }
    }
}

/// How content features are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentLoss {
    /// Σ(F−P)² (Keras).
    Sum,
    /// mean((F−P)²) (neural-style).
    Mse,
}

/// How style Gram matrices are normalised and compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StyleLoss {
    /// Unnormalised Gram, Σ(G−A)² / (4·3²·(H·W)²) with H·W the image's pixel count (Keras).
    Keras,
    /// Gram / (C·H·W) of the layer, mean((G−A)²) (neural-style).
    Mse,
}

/// What `style_weight` means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StyleWeighting {
    /// The total, split equally between style layers (Keras).
    Split,
    /// Every style layer gets the full weight (neural-style).
    PerLayer,
}

/// How the style image is sized before its features are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StyleResize {
    /// Exactly the content's height × width, times `style_scale` (Keras).
    ContentSize,
    /// Aspect kept, long side = `size` × `style_scale` (neural-style).
    LongSide,
}

/// Where the optimisation starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    Content,
    /// Gaussian noise, std 0.001 in network units, from `seed`.
    Random,
    /// Another image, resized to the content's size.
    Image(PathBuf),
}

impl Init {
    pub fn parse(text: &str) -> Init {
        match text {
            "content" => Init::Content,
            "random" => Init::Random,
            path => Init::Image(PathBuf::from(path.strip_prefix("image:").unwrap_or(path))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Optimizer {
    /// `torch.optim.LBFGS` semantics; one iteration = one L-BFGS iteration.
    Lbfgs {
        lr: f64,
        history_size: usize,
        tolerance_grad: f64,
        tolerance_change: f64,
        strong_wolfe: bool,
        /// Function-evaluation budget; `None` = 1 + iterations × (1, or 10 with the
        /// line search), so that the iterations asked for run.
        #[serde(default)]
        max_evaluations: Option<u32>,
        /// First step: no pixel moves by more than this many 8-bit levels. `None` =
        /// PyTorch's `min(1, 1/|g|₁)·lr`, which is microscopic for a megapixel image
        /// and stalls a line search in the noise of GPU convolutions.
        #[serde(default)]
        first_step_levels: Option<f64>,
    },
    /// `torch.optim.Adam` semantics; one iteration = one step.
    Adam { lr: f64, beta1: f64, beta2: f64, eps: f64 },
}

impl Optimizer {
    pub fn lbfgs_default() -> Optimizer {
        // tolerances -1 as neural-style does: run the iterations asked for.
        Optimizer::Lbfgs {
            lr: 1.0,
            history_size: 100,
            tolerance_grad: -1.0,
            tolerance_change: -1.0,
            strong_wolfe: false,
            max_evaluations: None,
            first_step_levels: None,
        }
    }

    /// What the Keras recipe's `scipy.optimize.fmin_l_bfgs_b` amounts to: 10
    /// corrections, a line search (strong Wolfe here), and a first step of about
    /// 1/‖g‖₂ (here: no pixel moves by more than one 8-bit level).
    pub fn lbfgs_keras() -> Optimizer {
        Optimizer::Lbfgs {
            lr: 1.0,
            history_size: 10,
            tolerance_grad: -1.0,
            tolerance_change: 1e-9,
            strong_wolfe: true,
            max_evaluations: None,
            first_step_levels: Some(1.0),
        }
    }

    pub fn adam_default() -> Optimizer {
        Optimizer::Adam { lr: 10.0, beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }
}

/// A whole render job, as the engine runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenderParams {
    pub preset: Preset,
    /// Long side of the output in pixels.
    pub size: u32,
    /// Iterations at the finest scale (and at each coarser scale unless `scale_iterations`).
    pub iterations: u32,
    pub content_layers: Vec<LayerId>,
    pub content_weight: f64,
    pub content_loss: ContentLoss,
    pub style_layers: Vec<LayerId>,
    pub style_weight: f64,
    pub style_weighting: StyleWeighting,
    /// Relative per-layer multipliers (same length as `style_layers`), default all 1.
    pub style_layer_weights: Vec<f64>,
    pub style_loss: StyleLoss,
    pub style_resize: StyleResize,
    pub style_scale: f64,
    /// Blend weights for several style images (normalised to sum 1); empty = equal.
    pub style_blend_weights: Vec<f64>,
    pub tv_weight: f64,
    /// The TV term is Σ(Δx² + Δy²)^tv_exponent: 1.25 in Keras, 1 (squared TV) in neural-style.
    pub tv_exponent: f64,
    pub init: Init,
    pub seed: u64,
    pub pooling: Pooling,
    /// Luminance-only transfer: the output keeps the content's colours.
    pub preserve_colors: bool,
    /// Coarse-to-fine: number of scales (1 = single scale), each twice the
    /// last; 0 = chosen from `size` ([`RenderParams::resolved`]).
    pub scales: u32,
    /// Iterations per coarser scale (coarsest first); empty = `iterations` each.
    pub scale_iterations: Vec<u32>,
    /// Longest side of one tile in pixels: a scale longer than this is
    /// rendered as overlapping tiles across the farm. 0 = only when a scale
    /// does not fit the farm's largest device.
    #[serde(default)]
    pub tile_size: u32,
    /// Pixels two neighbouring tiles share (blended); 0 = an eighth of the tile, at least 32.
    #[serde(default)]
    pub tile_overlap: u32,
    /// A print master beside `output.png`: a 16-bit PNG or an 8/16-bit TIFF.
    #[serde(default)]
    pub print: PrintFormat,
    pub optimizer: Optimizer,
    /// Save a snapshot every N iterations (0 = 20 per scale); also frames of the animation.
    pub snapshot_every: u32,
    pub weights: WeightsSpec,
    /// Overrides the weights file's own normalisation metadata (`caffe`, `torchvision`).
    pub normalization: Option<String>,
}

fn layers(names: &[&str]) -> Vec<LayerId> {
    names.iter().map(|n| LayerId::parse(n).expect("preset layer names are valid")).collect()
}

impl RenderParams {
    pub fn preset(preset: Preset) -> RenderParams {
        let style_layers = layers(&["block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1"]);
        let base = RenderParams {
            preset,
            size: 512,
            iterations: 500,
            content_layers: layers(&["block5_conv2"]),
            content_weight: 0.025,
            content_loss: ContentLoss::Sum,
            style_layer_weights: vec![1.0; style_layers.len()],
            style_layers,
            style_weight: 1.0,
            style_weighting: StyleWeighting::Split,
            style_loss: StyleLoss::Keras,
            style_resize: StyleResize::ContentSize,
            style_scale: 1.0,
            style_blend_weights: Vec::new(),
            tv_weight: 1.0,
            tv_exponent: 1.25,
            init: Init::Content,
            seed: 0,
            pooling: Pooling::Max,
            preserve_colors: false,
            scales: 0,
            scale_iterations: Vec::new(),
            tile_size: 0,
            tile_overlap: 0,
            print: PrintFormat::None,
            optimizer: Optimizer::lbfgs_keras(),
            snapshot_every: 0,
            weights: WeightsSpec::Default,
            normalization: None,
        };
        match preset {
            Preset::Keras => base,
            Preset::Gatys => RenderParams {
                content_layers: layers(&["relu4_2"]),
                content_weight: 5.0,
                content_loss: ContentLoss::Mse,
                style_weight: 100.0,
                style_weighting: StyleWeighting::PerLayer,
                style_loss: StyleLoss::Mse,
                style_resize: StyleResize::LongSide,
                tv_weight: 1e-3,
                tv_exponent: 1.0,
                init: Init::Random,
                optimizer: Optimizer::lbfgs_default(),
                ..base
            },
        }
    }

    /// Effective weight of each style layer.
    pub fn style_layer_effective_weights(&self) -> Vec<f64> {
        let per_layer = match self.style_weighting {
            StyleWeighting::Split => self.style_weight / self.style_layers.len().max(1) as f64,
            StyleWeighting::PerLayer => self.style_weight,
        };
        self.style_layer_weights.iter().map(|w| w * per_layer).collect()
    }

    /// Blend weights normalised to sum 1 for `count` style images.
    pub fn blend_weights(&self, count: usize) -> Vec<f64> {
        if self.style_blend_weights.is_empty() {
            return vec![1.0 / count as f64; count];
        }
        let sum: f64 = self.style_blend_weights.iter().sum();
        self.style_blend_weights.iter().map(|w| w / sum).collect()
    }

    /// The same job with its scales explicit: automatic scales (`scales: 0`)
    /// halve `size` until the coarsest is at most [`AUTO_COARSEST`]; the
    /// coarsest runs `iterations`, each finer one, starting from the one
    /// before, half as many as the last (at least [`AUTO_MIN_ITERATIONS`]).
    /// A size up to 512 is one scale of `iterations`, as before.
    pub fn resolved(&self) -> RenderParams {
        if self.scales != 0 {
            return self.clone();
        }
        let mut count = 1;
        while (self.size >> (count - 1)) > AUTO_COARSEST && count < MAX_SCALES {
            count += 1;
        }
        let floor = self.iterations.min(AUTO_MIN_ITERATIONS);
        let mut per_scale = vec![self.iterations];
        for _ in 1..count {
            let last = *per_scale.last().expect("one at least");
            per_scale.push((last / 2).max(floor));
        }
        let finest = per_scale.pop().expect("one at least");
        RenderParams { scales: count, scale_iterations: per_scale, iterations: finest, ..self.clone() }
    }

    /// How many scales the job runs (automatic ones resolved).
    pub fn scale_count(&self) -> u32 {
        self.resolved().scales
    }

    /// The long side of every scale, coarsest first.
    pub fn scale_sizes(&self) -> Vec<u32> {
        let scales = self.scale_count();
        (0..scales).rev().map(|k| (self.size >> k).max(1)).collect()
    }

    pub fn iterations_at(&self, scale_index: usize) -> u32 {
        if self.scales == 0 {
            return self.resolved().iterations_at(scale_index);
        }
        let last = self.scales as usize - 1;
        if scale_index == last {
            return self.iterations;
        }
        self.scale_iterations.get(scale_index).copied().unwrap_or(self.iterations)
    }

    /// Deepest convolution any loss needs (the model is built up to it).
    pub fn depth(&self) -> usize {
        self.content_layers.iter().chain(&self.style_layers).map(|l| l.index() + 1).max().unwrap_or(1)
    }

    /// Checks every field against its limits; `style_count` images were given.
    pub fn validate(&self, style_count: usize) -> Result<()> {
        range_u32("size", self.size, MIN_SIZE, MAX_SIZE, "pixels on the long side")?;
        range_u32("iterations", self.iterations, 1, MAX_ITERATIONS, "")?;
        range_u32("scales", self.scales, 0, MAX_SCALES, "(0 = chosen from the size)")?;
        if self.scales == 0 && !self.scale_iterations.is_empty() {
            return Err(ParamError::new("scale_iterations", "needs an explicit `scales` (0 = automatic chooses the iterations too)"));
        }
        check_tile_knobs(self)?;
        let scales = self.scale_count();
        let coarsest = self.size >> (scales - 1);
        if coarsest < MIN_SIZE {
            return Err(ParamError::new(
                "scales",
                format!("{} scales from size {} make a coarsest scale of {coarsest} px, below the minimum {MIN_SIZE}", self.scales, self.size),
            ));
        }
        if self.scale_iterations.len() > scales as usize - 1 {
            return Err(ParamError::new("scale_iterations", format!("{} values given for {} coarser scales", self.scale_iterations.len(), scales - 1)));
        }
        for (i, &n) in self.scale_iterations.iter().enumerate() {
            range_u32(&format!("scale_iterations[{i}]"), n, 1, MAX_ITERATIONS, "")?;
        }
        if self.snapshot_every > 0 {
            let total: u64 = (0..scales as usize).map(|i| self.iterations_at(i) as u64).sum();
            let frames = total / self.snapshot_every as u64;
            if frames > MAX_SNAPSHOTS as u64 {
                let least = total.div_ceil(MAX_SNAPSHOTS as u64);
                return Err(ParamError::new(
                    "snapshot_every",
                    format!("{} makes {frames} snapshots over {total} iterations; the limit is {MAX_SNAPSHOTS} (use >= {least})", self.snapshot_every),
                ));
            }
        }
        if style_count == 0 {
            return Err(ParamError::new("style", "at least one style image is required"));
        }
        if style_count > MAX_STYLES {
            return Err(ParamError::new("style", format!("{style_count} style images given, the limit is {MAX_STYLES}")));
        }
        non_negative("content_weight", self.content_weight)?;
        non_negative("style_weight", self.style_weight)?;
        non_negative("tv_weight", self.tv_weight)?;
        if !(self.tv_exponent.is_finite() && (0.5..=4.0).contains(&self.tv_exponent)) {
            return Err(ParamError::new("tv_exponent", format!("{} is outside 0.5..=4", self.tv_exponent)));
        }
        if self.style_layers.is_empty() {
            return Err(ParamError::new("style_layers", "at least one style layer is required"));
        }
        for (field, layers) in [("content_layers", &self.content_layers), ("style_layers", &self.style_layers)] {
            if layers.len() > MAX_LAYERS {
                return Err(ParamError::new(field, format!("{} layers; the limit is {MAX_LAYERS}", layers.len())));
            }
            if let Some(twice) = layers.iter().enumerate().find_map(|(i, l)| layers[..i].contains(l).then_some(l)) {
                return Err(ParamError::new(field, format!("`{twice}` is listed twice")));
            }
        }
        if self.style_layer_weights.len() != self.style_layers.len() {
            return Err(ParamError::new(
                "style_layer_weights",
                format!("{} weights for {} style layers", self.style_layer_weights.len(), self.style_layers.len()),
            ));
        }
        for (i, &w) in self.style_layer_weights.iter().enumerate() {
            non_negative(&format!("style_layer_weights[{i}]"), w)?;
        }
        let (lo, hi) = STYLE_SCALE_RANGE;
        if !(self.style_scale.is_finite() && (lo..=hi).contains(&self.style_scale)) {
            return Err(ParamError::new("style_scale", format!("{} is outside {lo}..={hi}", self.style_scale)));
        }
        if !self.style_blend_weights.is_empty() {
            if self.style_blend_weights.len() != style_count {
                return Err(ParamError::new("style_blend_weights", format!("{} weights for {style_count} style images", self.style_blend_weights.len())));
            }
            for (i, &w) in self.style_blend_weights.iter().enumerate() {
                non_negative(&format!("style_blend_weights[{i}]"), w)?;
            }
            if self.style_blend_weights.iter().sum::<f64>() <= 0.0 {
                return Err(ParamError::new("style_blend_weights", "must not all be zero"));
            }
        }
        match &self.optimizer {
            Optimizer::Lbfgs { lr, history_size, tolerance_grad, tolerance_change, max_evaluations, first_step_levels, .. } => {
                positive("optimizer.lr", *lr)?;
                if let Some(levels) = first_step_levels {
                    positive("optimizer.first_step_levels", *levels)?;
                }
                if let Some(n) = max_evaluations {
                    range_u32("optimizer.max_evaluations", *n, 1, MAX_ITERATIONS.saturating_mul(30), "")?;
                }
                if *history_size == 0 || *history_size > MAX_HISTORY {
                    return Err(ParamError::new("optimizer.history_size", format!("{history_size} is outside 1..={MAX_HISTORY}")));
                }
                finite("optimizer.tolerance_grad", *tolerance_grad)?;
                finite("optimizer.tolerance_change", *tolerance_change)?;
            }
            Optimizer::Adam { lr, beta1, beta2, eps } => {
                positive("optimizer.lr", *lr)?;
                for (field, beta) in [("optimizer.beta1", beta1), ("optimizer.beta2", beta2)] {
                    if !(beta.is_finite() && (0.0..1.0).contains(beta)) {
                        return Err(ParamError::new(field, format!("{beta} is outside 0..1")));
                    }
                }
                positive("optimizer.eps", *eps)?;
            }
        }
        if let Some(name) = &self.normalization {
            if !NORMALIZATIONS.contains(&name.as_str()) {
                return Err(ParamError::new("normalization", format!("`{name}` is not one of {}", NORMALIZATIONS.join(", "))));
            }
        }
        Ok(())
    }
}

/// Overlays a table of RenderParams fields (from a file or the wire) on a preset:
/// the flag's preset, else the table's `preset`, else keras. Unknown keys are errors.
pub fn params_from_overlay(preset_flag: Option<Preset>, overlay: serde_json::Map<String, serde_json::Value>) -> Result<RenderParams> {
    let preset = match (preset_flag, overlay.get("preset")) {
        (Some(p), _) => p,
        (None, Some(v)) => serde_json::from_value(v.clone()).map_err(|_| ParamError::new("preset", format!("{v} is not one of keras, gatys")))?,
        (None, None) => Preset::Keras,
    };
    let mut base = serde_json::to_value(RenderParams::preset(preset)).map_err(|e| ParamError::new("params", e.to_string()))?;
    let serde_json::Value::Object(base_map) = &mut base else {
        return Err(ParamError::new("params", "parameters did not serialise to a table"));
    };
    let defaults = base_map.clone();
    for (key, value) in &overlay {
        if !base_map.contains_key(key) {
            return Err(ParamError::new(key.clone(), "unknown parameter"));
        }
        base_map.insert(key.clone(), value.clone());
    }
    serde_json::from_value(base).map_err(|whole| {
        // name the field: the first key that alone does not read
        let wrong = overlay.iter().find_map(|(key, value)| {
            let mut one = defaults.clone();
            one.insert(key.clone(), value.clone());
            serde_json::from_value::<RenderParams>(serde_json::Value::Object(one)).err().map(|e| (key.clone(), e))
        });
        match wrong {
            Some((key, e)) => ParamError::new(key, format!("invalid value: {e}")),
            None => ParamError::new("params", format!("invalid value: {whole}")),
        }
    })
}

/// The tile knobs' limits (part of [`RenderParams::validate`]).
fn check_tile_knobs(params: &RenderParams) -> Result<()> {
    if params.tile_size != 0 && !(MIN_TILE_SIZE..=MAX_SIZE).contains(&params.tile_size) {
        return Err(ParamError::new(
            "tile_size",
            format!("{} is outside {MIN_TILE_SIZE}..={MAX_SIZE} pixels (0 = only when a scale does not fit)", params.tile_size),
        ));
    }
    if params.tile_overlap != 0 {
        let most = params.tile_size.max(MIN_TILE_SIZE) / 4;
        if !(MIN_OVERLAP..=most).contains(&params.tile_overlap) {
            return Err(ParamError::new(
                "tile_overlap",
                format!("{} is outside {MIN_OVERLAP}..={most} pixels (a quarter of the tile; 0 = automatic)", params.tile_overlap),
            ));
        }
    }
    Ok(())
}

fn range_u32(field: &str, value: u32, min: u32, max: u32, unit: &str) -> Result<()> {
    if value < min || value > max {
        let unit = if unit.is_empty() { String::new() } else { format!(" {unit}") };
        return Err(ParamError::new(field, format!("{value} is outside the limits {min}..={max}{unit}")));
    }
    Ok(())
}

fn finite(field: &str, value: f64) -> Result<()> {
    if !value.is_finite() {
        return Err(ParamError::new(field, format!("{value} is not a finite number")));
    }
    Ok(())
}

fn non_negative(field: &str, value: f64) -> Result<()> {
    finite(field, value)?;
    if value < 0.0 {
        return Err(ParamError::new(field, format!("{value} is negative; the limit is >= 0")));
    }
    Ok(())
}

fn positive(field: &str, value: f64) -> Result<()> {
    finite(field, value)?;
    if value <= 0.0 {
        return Err(ParamError::new(field, format!("{value} must be > 0")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_that_does_not_read_names_its_field() {
        let overlay = |json: serde_json::Value| params_from_overlay(None, json.as_object().unwrap().clone());
        let e = overlay(serde_json::json!({"size": 4096, "print": "tiff32"})).unwrap_err();
        assert_eq!(e.field, "print");
        assert!(e.reason.contains("`none`, `png16`, `tiff8`, `tiff16`"), "{}", e.reason);
        assert_eq!(overlay(serde_json::json!({"iterations": "many", "seed": 3})).unwrap_err().field, "iterations");
        assert_eq!(overlay(serde_json::json!({"print": "tiff16"})).unwrap().print, PrintFormat::Tiff16);
    }

    #[test]
    fn layer_lists_are_bounded_and_without_repeats() {
        let mut p = RenderParams::preset(Preset::Gatys);
        let layer = p.style_layers[0];
        p.style_layers = vec![layer; 100_000];
        p.style_layer_weights = vec![1.0; 100_000];
        let e = p.validate(1).unwrap_err();
        assert_eq!((e.field.as_str(), e.reason.as_str()), ("style_layers", "100000 layers; the limit is 13"));
        let mut p = RenderParams::preset(Preset::Gatys);
        p.content_layers = vec![p.content_layers[0]; 2];
        let e = p.validate(1).unwrap_err();
        assert_eq!(e.field, "content_layers");
        assert!(e.reason.ends_with("is listed twice"), "{}", e.reason);
        assert!(RenderParams::preset(Preset::Gatys).validate(1).is_ok() && RenderParams::preset(Preset::Keras).validate(1).is_ok());
    }

    #[test]
    fn presets_follow_their_recipes() {
        let k = RenderParams::preset(Preset::Keras);
        assert_eq!(k.content_layers[0].to_string(), "block5_conv2");
        assert_eq!(k.style_layer_effective_weights(), vec![0.2; 5]);
        assert_eq!(k.depth(), 12);
        let g = RenderParams::preset(Preset::Gatys);
        assert_eq!(g.style_layer_effective_weights(), vec![100.0; 5]);
        assert_eq!(g.depth(), 11);
        assert!(k.validate(1).is_ok() && g.validate(2).is_ok());
    }

    #[test]
    fn limits_name_the_field() {
        let mut p = RenderParams::preset(Preset::Keras);
        p.size = 0;
        let e = p.validate(1).unwrap_err().to_string();
        assert!(e.contains("`size`") && e.contains("16..=8192"), "{e}");
        p.size = 100_000;
        assert!(p.validate(1).unwrap_err().to_string().contains("`size`"));
        p.size = 64;
        p.scales = 4;
        assert!(p.validate(1).unwrap_err().to_string().contains("`scales`"));
        p.scales = 0;
        p.scale_iterations = vec![10];
        assert!(p.validate(1).unwrap_err().to_string().contains("`scale_iterations`"));
        p.scale_iterations.clear();
        p.scales = 1;
        p.style_weight = f64::NAN;
        assert!(p.validate(1).unwrap_err().to_string().contains("`style_weight`"));
        p.style_weight = 1.0;
        p.style_blend_weights = vec![1.0];
        assert!(p.validate(2).unwrap_err().to_string().contains("`style_blend_weights`"));
        assert!(p.validate(0).is_err());
    }

    #[test]
    fn scales_go_coarse_to_fine() {
        let mut p = RenderParams::preset(Preset::Gatys);
        p.size = 1024;
        p.scales = 3;
        p.scale_iterations = vec![300, 200];
        assert_eq!(p.scale_sizes(), vec![256, 512, 1024]);
        assert_eq!((p.iterations_at(0), p.iterations_at(1), p.iterations_at(2)), (300, 200, 500));
    }

    #[test]
    fn automatic_scales_come_from_the_size() {
        let at = |size: u32, iterations: u32| {
            let p = RenderParams { size, iterations, ..RenderParams::preset(Preset::Keras) };
            let r = p.resolved();
            assert_eq!(r.scale_sizes(), p.scale_sizes(), "resolved and automatic agree");
            assert!(r.validate(1).is_ok() && p.validate(1).is_ok());
            (r.scale_sizes(), (0..r.scales as usize).map(|i| r.iterations_at(i)).collect::<Vec<_>>())
        };
        assert_eq!(at(512, 500), (vec![512], vec![500]), "up to 512 px: one scale, as before");
        assert_eq!(at(1024, 500), (vec![512, 1024], vec![500, 250]));
        assert_eq!(at(4096, 500), (vec![512, 1024, 2048, 4096], vec![500, 250, 125, 62]));
        assert_eq!(at(8192, 300), (vec![512, 1024, 2048, 4096, 8192], vec![300, 150, 75, 50, 50]));
        assert_eq!(at(2048, 20), (vec![512, 1024, 2048], vec![20, 20, 20]), "never below the asked iterations' floor");
        let explicit = RenderParams { size: 4096, scales: 2, ..RenderParams::preset(Preset::Gatys) };
        assert_eq!(explicit.resolved(), explicit, "explicit scales override");
    }
}
