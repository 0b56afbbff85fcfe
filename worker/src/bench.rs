//! `stylefarm-worker bench`: one loss+gradient evaluation of the style objective,
//! timed for this engine and for the in-repo eager PyTorch reference
//! (`reference/style_reference.py`) on the same inputs, side by side, with ratios
//! against its two forms:
//!   * `recipe`: the Keras recipe as written, ported to eager PyTorch — every
//!     evaluation runs [content, style, combination] through the whole conv base;
//!   * `tuned`: eager PyTorch with the engine's algorithmic savings (truncated VGG,
//!     targets computed once, frozen weights), in NCHW.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use stylefarm_engine::device::{describe, parse_device};
use stylefarm_engine::image_io::{fit_long_side, load_rgb, resize, to_tensor};
use stylefarm_engine::loss::StyleObjective;
use stylefarm_engine::optim::Objective;
use stylefarm_engine::params::{Preset, RenderParams, StyleResize};
use stylefarm_engine::problem::write_problem;
use stylefarm_engine::render::load_weights;
use stylefarm_engine::vgg::Vgg16;
use tch::Kind;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Long sides to time, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "256,512")]
    pub sizes: Vec<u32>,
    #[arg(long, default_value = "keras")]
    pub preset: Preset,
    /// Timed evaluations per size and implementation (median reported).
    #[arg(long, default_value_t = 5)]
    pub repeats: u32,
    #[arg(long, default_value_t = 2)]
    pub warmup: u32,
    /// Rounds that alternate engine and reference runs, so that drift in the
    /// machine's speed hits both alike; the medians are over all rounds.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    #[arg(long, default_value = ".samples/chelsea.png")]
    pub content: PathBuf,
    #[arg(long, default_value = ".samples/hubble_deep_field.jpg")]
    pub style: PathBuf,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Python with torch 2.11 (the setup's venv).
    #[arg(long, default_value = ".venv/bin/python")]
    pub python: PathBuf,
    #[arg(long, default_value = "reference/style_reference.py")]
    pub reference: PathBuf,
    /// Reference forms to time: recipe, tuned (comma-separated; empty = none).
    #[arg(long, value_delimiter = ',', default_value = "recipe,tuned")]
    pub modes: Vec<String>,
    /// Skip the PyTorch reference (engine numbers only).
    #[arg(long)]
    pub no_reference: bool,
    /// Weights: default, a safetensors path, or a URL.
    #[arg(long, default_value = "default")]
    pub weights: String,
    /// Keep the problem files (inputs, params) under this folder, one per size.
    #[arg(long)]
    pub keep: Option<PathBuf>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if args.repeats == 0 || args.rounds == 0 {
        bail!("invalid parameter `repeats`/`rounds`: must be >= 1");
    }
    let device = parse_device(&args.device)?;
    let device_arg = match device {
        tch::Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".to_string(),
    };
    let content = load_rgb(&args.content, "content")?;
    let style = load_rgb(&args.style, "style[0]")?;
    let base = RenderParams { weights: stylefarm_engine::weights::WeightsSpec::parse(&args.weights), ..RenderParams::preset(args.preset) };
    let weights = load_weights(&base)?;
    let norm = weights.normalization.clone();
    let tmp = match &args.keep {
        Some(dir) => dir.clone(),
        None => tempdir()?,
    };
    println!(
        "stylefarm bench: one loss+gradient evaluation, preset {:?}, device {}, median of {} rounds x {} (engine and reference alternating, {} warm-up each)",
        args.preset,
        describe(device),
        args.rounds,
        args.repeats,
        args.warmup
    );
    let modes: Vec<&str> = if args.no_reference { Vec::new() } else { args.modes.iter().map(String::as_str).filter(|m| !m.is_empty()).collect() };
    for mode in &modes {
        if !matches!(*mode, "recipe" | "tuned") {
            bail!("invalid parameter `modes`: `{mode}` is not one of recipe, tuned");
        }
    }
    let mut header = format!("{:>6} {:>11} {:>11}", "size", "pixels", "engine ms");
    for mode in &modes {
        header += &format!(" {:>17} {:>8}", format!("eager-{mode} ms"), format!("ratio"));
    }
    println!("{header}");
    for &size in &args.sizes {
        let mut params = base.clone();
        params.size = size;
        params.validate(1)?;
        let (w, h) = fit_long_side(content.width(), content.height(), size);
        let (sw, sh) = match params.style_resize {
            StyleResize::ContentSize => (w, h),
            StyleResize::LongSide => fit_long_side(style.width(), style.height(), size),
        };
        let to_net = |img: &image::RgbImage, dev| norm.to_network(&to_tensor(img, Kind::Float, dev));
        let content_net = to_net(&resize(&content, w, h), device);
        let style_net = to_net(&resize(&style, sw, sh), device);
        let model = Vgg16::new(weights.tensors(params.depth()), params.pooling, device, Kind::Float);
        let mut objective = StyleObjective::new(model, &params, &content_net, &[style_net.shallow_clone()], &[1.0])?;
        let x = StyleObjective::flatten(&content_net)?;
        let dir = tmp.join(format!("size{size}"));
        let files = write_problem(&dir, &content_net, &[style_net], None, &params)?;
        let mut engine_times = Vec::new();
        let mut reference_times: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
        for _ in 0..args.rounds {
            for i in 0..args.warmup + args.repeats {
                let t0 = Instant::now();
                let eval = objective.evaluate(&x)?;
                let _ = eval.grad.sum(Kind::Float).double_value(&[]);
                if i >= args.warmup {
                    engine_times.push(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
            for (mode, times) in modes.iter().zip(&mut reference_times) {
                times.extend(run_reference(args, mode, &device_arg, &weights.path, &files.inputs, &files.params)?);
            }
        }
        let engine_ms = median(engine_times);
        let mut line = format!("{:>6} {:>11} {:>11.1}", size, format!("{w}x{h}"), engine_ms);
        for times in reference_times {
            let r = median(times);
            line += &format!(" {:>17.1} {:>8.3}", r, engine_ms / r);
        }
        println!("{line}");
    }
    println!(
        "ratio = engine / eager PyTorch (lower is faster); recipe = the Keras recipe as written, tuned = same savings as the engine in NCHW; {} CPU threads each",
        tch::get_num_threads()
    );
    if args.keep.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}

fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("stylefarm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Runs the reference's `bench` once; returns its timed evaluations (ms).
fn run_reference(
    args: &BenchArgs,
    mode: &str,
    device_arg: &str,
    weights: &std::path::Path,
    inputs: &std::path::Path,
    params: &std::path::Path,
) -> Result<Vec<f64>> {
    let output = Command::new(&args.python)
        .arg(&args.reference)
        .arg("bench")
        .arg("--mode")
        .arg(mode)
        .arg("--weights")
        .arg(weights)
        .arg("--inputs")
        .arg(inputs)
        .arg("--params")
        .arg(params)
        .arg("--repeats")
        .arg(args.repeats.to_string())
        .arg("--warmup")
        .arg(args.warmup.to_string())
        .arg("--device")
        .arg(device_arg)
        .output()
        .with_context(|| format!("running {} (run `make setup` first)", args.python.display()))?;
    if !output.status.success() {
        bail!("PyTorch reference failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().last().unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(line).with_context(|| format!("reference printed {line:?}"))?;
    let times = json.get("times_ms").and_then(|v| v.as_array()).context("reference JSON has no times_ms")?;
    times.iter().map(|t| t.as_f64().context("times_ms holds a non-number")).collect()
}
