//! `stylefarm-worker bench`: one loss+gradient evaluation of the style objective,
//! timed for this engine and for the in-repo eager PyTorch reference
//! (`reference/style_reference.py`) on the same inputs, side by side, with the ratio.

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
    /// Skip the PyTorch reference (engine numbers only).
    #[arg(long)]
    pub no_reference: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if args.repeats == 0 {
        bail!("invalid parameter `repeats`: must be >= 1");
    }
    let device = parse_device(&args.device)?;
    let content = load_rgb(&args.content, "content")?;
    let style = load_rgb(&args.style, "style[0]")?;
    let base = RenderParams::preset(args.preset);
    let weights = load_weights(&base)?;
    let norm = weights.normalization.clone();
    let tmp = tempdir()?;
    println!("stylefarm bench: one loss+gradient evaluation, preset {:?}, device {}, median of {} after {} warm-up", args.preset, describe(device), args.repeats, args.warmup);
    println!("{:>6} {:>11} {:>16} {:>18} {:>8}", "size", "pixels", "engine ms", "pytorch eager ms", "ratio");
    for &size in &args.sizes {
        let mut params = base.clone();
        params.size = size;
        params.validate(1)?;
        let (w, h) = fit_long_side(content.width(), content.height(), size);
        let (sw, sh) = match params.style_resize {
            StyleResize::ContentSize => (w, h),
            StyleResize::LongSide => fit_long_side(style.width(), style.height(), size),
        };
        let to_net = |img: &image::RgbImage, dev| {
            let rgb = to_tensor(img, Kind::Float, dev);
            let mean = norm.mean_tensor(Kind::Float, dev);
            let std = norm.std_tensor(Kind::Float, dev);
            (rgb * norm.scale - mean) / std
        };
        let content_net = to_net(&resize(&content, w, h), device);
        let style_net = to_net(&resize(&style, sw, sh), device);
        let model = Vgg16::new(weights.tensors(params.depth()), params.pooling, device, Kind::Float);
        let mut objective = StyleObjective::new(model, &params, &content_net, &[style_net.shallow_clone()], &[1.0])?;
        let x = StyleObjective::flatten(&content_net)?;
        let mut times = Vec::new();
        for i in 0..args.warmup + args.repeats {
            let t0 = Instant::now();
            let eval = objective.evaluate(&x)?;
            let _ = eval.grad.sum(Kind::Float).double_value(&[]);
            if i >= args.warmup {
                times.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        let engine_ms = median(times);
        let reference_ms = if args.no_reference {
            None
        } else {
            let dir = tmp.join(format!("size{size}"));
            let files = write_problem(&dir, &content_net, &[style_net], None, &params)?;
            Some(run_reference(args, &weights.path, &files.inputs, &files.params)?)
        };
        match reference_ms {
            Some(r) => println!("{:>6} {:>11} {:>16.1} {:>18.1} {:>8.3}", size, format!("{w}x{h}"), engine_ms, r, engine_ms / r),
            None => println!("{:>6} {:>11} {:>16.1} {:>18} {:>8}", size, format!("{w}x{h}"), engine_ms, "-", "-"),
        }
    }
    println!("ratio = engine / pytorch eager (lower is faster); both on {} libtorch threads", tch::get_num_threads());
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("stylefarm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn run_reference(args: &BenchArgs, weights: &std::path::Path, inputs: &std::path::Path, params: &std::path::Path) -> Result<f64> {
    let output = Command::new(&args.python)
        .arg(&args.reference)
        .arg("bench")
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
        .output()
        .with_context(|| format!("running {} (run `make setup` first)", args.python.display()))?;
    if !output.status.success() {
        bail!("PyTorch reference failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().last().unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(line).with_context(|| format!("reference printed {line:?}"))?;
    json.get("median_ms").and_then(|v| v.as_f64()).context("reference JSON has no median_ms")
}
