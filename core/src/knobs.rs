//! The engine's knobs as command-line flags, and how configuration layers:
//! preset defaults → a params file (TOML or JSON) → `STYLEFARM_*` env → flags.
//! `stylefarm-worker render` and `stylefarm submit` flatten the same [`KnobArgs`].

use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::{Map, Value};

use crate::error::{ParamError, Result};
use crate::layers::{LayerId, Pooling};
use crate::params::{ContentLoss, Init, Optimizer, Preset, RenderParams, StyleLoss, StyleResize, StyleWeighting};
use crate::print::PrintFormat;
use crate::weights_spec::WeightsSpec;

#[derive(Args, Debug, Default, Clone, PartialEq)]
pub struct KnobArgs {
    /// Job parameters file (TOML or JSON, fields of RenderParams); flags override it.
    #[arg(long)]
    pub params: Option<PathBuf>,
    /// Preset: keras (the original recipe) or gatys (neural-style defaults).
    #[arg(long)]
    pub preset: Option<Preset>,
    /// Long side of the output in pixels (16..=8192).
    #[arg(long)]
    pub size: Option<u32>,
    /// Iterations at the finest scale (with automatic scales: at the coarsest, halving on each finer one, at least 50).
    #[arg(long)]
    pub iterations: Option<u32>,
    /// Snapshot (and animation frame) every N iterations; 0 = 20 frames per scale.
    #[arg(long)]
    pub snapshot_every: Option<u32>,

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
    /// Coarse-to-fine scales (1 = single scale; 0 = chosen from the size, the default).
    #[arg(long)]
    pub scales: Option<u32>,
    /// Longest tile side in pixels: a scale longer than this renders as
    /// overlapping tiles (on the farm, across workers). Default: only when a
    /// scale does not fit the farm's largest device.
    #[arg(long)]
    pub tile_size: Option<u32>,
    /// Pixels neighbouring tiles share (default: an eighth of the tile, at least 32).
    #[arg(long)]
    pub tile_overlap: Option<u32>,
    /// A print master beside output.png: png16, tiff8 or tiff16 (none = only output.png).
    #[arg(long)]
    pub print: Option<PrintFormat>,
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
    serde_json::from_value(Value::String(text.replace('-', "_"))).map_err(|_| ParamError::new(field, format!("`{text}` is not one of {allowed}")))
}

fn layers(field: &str, names: &[String]) -> Result<Vec<LayerId>> {
    names.iter().map(|n| LayerId::parse_field(n, field)).collect()
}

/// Reads a params file (TOML, or JSON by extension): a table of RenderParams fields.
pub fn params_file_overlay(path: &Path) -> Result<Map<String, Value>> {
    let field = "params";
    let text = std::fs::read_to_string(path).map_err(|e| ParamError::new(field, format!("reading {}: {e}", path.display())))?;
    let overlay: Value = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| ParamError::new(field, format!("parsing {}: {e}", path.display())))?
    } else {
        let table: toml::Value = toml::from_str(&text).map_err(|e| ParamError::new(field, format!("parsing {}: {e}", path.display())))?;
        serde_json::to_value(table).map_err(|e| ParamError::new(field, e.to_string()))?
    };
    let Value::Object(overlay) = overlay else {
        return Err(ParamError::new(field, format!("{}: expected a table of parameters", path.display())));
    };
    Ok(overlay)
}

impl KnobArgs {
    /// The job's parameters after every layer of configuration.
    pub fn to_params(&self) -> Result<RenderParams> {
        self.to_params_over(serde_json::Map::new())
    }

    /// Like [`KnobArgs::to_params`], with `overlay` (e.g. a batch manifest's
    /// params) between the preset and the params file.
    pub fn to_params_over(&self, overlay: serde_json::Map<String, Value>) -> Result<RenderParams> {
        let mut merged = overlay;
        if let Some(path) = &self.params {
            merged.extend(params_file_overlay(path)?);
        }
        self.apply(crate::params::params_from_overlay(self.preset, merged)?)
    }

    /// Applies the flags that were given to `p`.
    pub fn apply(&self, mut p: RenderParams) -> Result<RenderParams> {
        if let Some(v) = self.size {
            p.size = v;
        }
        if let Some(v) = self.iterations {
            p.iterations = v;
        }
        if let Some(v) = &self.content_layers {
            p.content_layers = layers("content_layers", v)?;
        }
        if let Some(v) = self.content_weight {
            p.content_weight = v;
        }
        if let Some(v) = &self.content_loss {
            p.content_loss = parse_enum::<ContentLoss>("content_loss", v, "sum, mse")?;
        }
        if let Some(v) = &self.style_layers {
            p.style_layers = layers("style_layers", v)?;
            if self.style_layer_weights.is_none() {
                p.style_layer_weights = vec![1.0; p.style_layers.len()];
            }
        }
        if let Some(v) = self.style_weight {
            p.style_weight = v;
        }
        if let Some(v) = &self.style_weighting {
            p.style_weighting = parse_enum::<StyleWeighting>("style_weighting", v, "split, per_layer")?;
        }
        if let Some(v) = &self.style_layer_weights {
            p.style_layer_weights = v.clone();
        }
        if let Some(v) = &self.style_loss {
            p.style_loss = parse_enum::<StyleLoss>("style_loss", v, "keras, mse")?;
        }
        if let Some(v) = &self.style_resize {
            p.style_resize = parse_enum::<StyleResize>("style_resize", v, "content_size, long_side")?;
        }
        if let Some(v) = self.style_scale {
            p.style_scale = v;
        }
        if let Some(v) = &self.style_blend_weights {
            p.style_blend_weights = v.clone();
        }
        if let Some(v) = self.tv_weight {
            p.tv_weight = v;
        }
        if let Some(v) = self.tv_exponent {
            p.tv_exponent = v;
        }
        if let Some(v) = &self.init {
            p.init = Init::parse(v);
        }
        if let Some(v) = self.seed {
            p.seed = v;
        }
        if let Some(v) = self.pooling {
            p.pooling = v;
        }
        if self.preserve_colors {
            p.preserve_colors = true;
        }
        if let Some(v) = self.scales {
            p.scales = v;
        }
        if let Some(v) = self.tile_size {
            p.tile_size = v;
        }
        if let Some(v) = self.tile_overlap {
            p.tile_overlap = v;
        }
        if let Some(v) = self.print {
            p.print = v;
        }
        if let Some(v) = &self.scale_iterations {
            p.scale_iterations = v.clone();
        }
        if let Some(v) = &self.optimizer {
            p.optimizer = match v.as_str() {
                "lbfgs" => Optimizer::lbfgs_default(),
                "adam" => Optimizer::adam_default(),
                other => return Err(ParamError::new("optimizer", format!("`{other}` is not one of lbfgs, adam"))),
            };
        }
        match &mut p.optimizer {
            Optimizer::Lbfgs { lr, history_size, tolerance_grad, tolerance_change, strong_wolfe, max_evaluations, first_step_levels } => {
                if let Some(v) = &self.first_step {
                    *first_step_levels = match v.as_str() {
                        "torch" => None,
                        n => Some(n.parse().map_err(|_| ParamError::new("first_step", format!("`{n}` is not a number of levels or `torch`")))?),
                    };
                }
                if let Some(v) = self.max_evaluations {
                    *max_evaluations = Some(v);
                }
                if let Some(v) = self.lr {
                    *lr = v;
                }
                if let Some(v) = self.history_size {
                    *history_size = v;
                }
                if let Some(v) = self.tolerance_grad {
                    *tolerance_grad = v;
                }
                if let Some(v) = self.tolerance_change {
                    *tolerance_change = v;
                }
                if let Some(v) = &self.line_search {
                    *strong_wolfe = match v.as_str() {
                        "strong_wolfe" | "strong-wolfe" => true,
                        "none" => false,
                        other => return Err(ParamError::new("line_search", format!("`{other}` is not one of none, strong_wolfe"))),
                    };
                }
            }
            Optimizer::Adam { lr, beta1, beta2, eps } => {
                if let Some(v) = self.lr {
                    *lr = v;
                }
                if let Some(v) = self.beta1 {
                    *beta1 = v;
                }
                if let Some(v) = self.beta2 {
                    *beta2 = v;
                }
                if let Some(v) = self.eps {
                    *eps = v;
                }
            }
        }
        if let Some(v) = self.snapshot_every {
            p.snapshot_every = v;
        }
        if let Some(v) = &self.weights {
            p.weights = WeightsSpec::parse(v);
        }
        if let Some(v) = &self.normalization {
            p.normalization = Some(v.clone());
        }
        Ok(p)
    }
}
