//! `stylefarm-worker render`: one job from local files, progress on stderr.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use stylefarm_core::print::PrintFormat;
use stylefarm_engine::device::{describe, parse_device};
use stylefarm_engine::image_io::{load_rgb, save_png, save_print};
use stylefarm_engine::params::RenderParams;
use stylefarm_engine::render::{load_weights, render, write_outputs, OutputPaths, Progress, RenderInputs};
use stylefarm_engine::tiled::render_tiled;
use stylefarm_engine::trace::TraceRow;

use crate::cli::RenderArgs;

/// Prints a line every `every` iterations (and the first and last of each scale).
struct StderrProgress {
    every: u32,
    iterations: Vec<u32>,
    scales: usize,
    started: Instant,
    last_scale: Option<u32>,
    scale_started_ms: f64,
}

impl Progress for StderrProgress {
    fn on_row(&mut self, row: &TraceRow) {
        if self.last_scale != Some(row.scale) {
            self.last_scale = Some(row.scale);
            self.scale_started_ms = row.elapsed_ms;
        }
        // a tiled render's tiles report as one-scale renders of their own size
        let total = self.iterations.get(row.scale as usize).copied().unwrap_or(row.iteration).max(row.iteration);
        let show = row.iteration == 0 || row.iteration == total || (self.every > 0 && row.iteration % self.every == 0);
        if !show {
            return;
        }
        let per_iter = if row.iteration > 0 { (row.elapsed_ms - self.scale_started_ms) / row.iteration as f64 } else { 0.0 };
        let eta_s = per_iter * (total - row.iteration) as f64 / 1e3;
        eprintln!(
            "[scale {}/{} {}px] iter {:>5}/{} loss {:.4e} (content {:.3e} style {:.3e} tv {:.3e}) {:.0} ms/iter, ETA {:.0}s, {:.1}s elapsed",
            row.scale + 1,
            self.scales,
            row.size,
            row.iteration,
            total,
            row.total,
            row.content,
            row.style,
            row.tv,
            per_iter,
            eta_s,
            self.started.elapsed().as_secs_f64()
        );
    }
}

pub fn run(args: &RenderArgs) -> Result<()> {
    let params = args.knobs.to_params()?.resolved();
    if let Some(threads) = args.threads {
        if threads < 1 {
            anyhow::bail!("invalid parameter `threads`: {threads} must be >= 1");
        }
        tch::set_num_threads(threads);
    }
    let device = parse_device(&args.device)?;
    tracing::info!(device = %describe(device), preset = ?params.preset, size = params.size, iterations = params.iterations, "render");
    let inputs = RenderInputs { content: args.content.clone(), styles: args.style.clone() };
    let mut progress = StderrProgress {
        every: args.progress_every,
        iterations: (0..params.scales as usize).map(|i| params.iterations_at(i)).collect(),
        scales: params.scales as usize,
        started: Instant::now(),
        last_scale: None,
        scale_started_ms: 0.0,
    };
    if params.tile_size > 0 {
        return run_tiled(args, &params, device, &mut progress);
    }
    let out = render(&inputs, &params, device, &mut progress)?;
    let print = print_path(&args.output, params.print);
    write_outputs(
        &out,
        &OutputPaths {
            image: &args.output,
            trace: args.trace.as_deref(),
            snapshots: args.snapshots.as_deref(),
            animation: args.animation.as_deref(),
            metadata: args.metadata.as_deref(),
            print: print.as_deref(),
        },
    )?;
    announce_print(print.as_deref());
    let m = &out.metadata;
    eprintln!(
        "done: {} ({}x{}) loss {:.4e} -> {:.4e} in {} iterations, {:.1}s ({:.1} ms/iter) on {}",
        args.output.display(),
        m.output_width,
        m.output_height,
        m.initial_loss,
        m.final_loss,
        m.iterations_run,
        m.timings.total_ms / 1e3,
        m.timings.ms_per_iteration,
        m.device
    );
    Ok(())
}

/// Where a local render writes its print master: beside the output,
/// `NAME-print.png` (16-bit) or `NAME-print.tiff`.
fn print_path(output: &Path, format: PrintFormat) -> Option<PathBuf> {
    let name = format.file_name()?;
    let extension = Path::new(name).extension().and_then(|e| e.to_str()).unwrap_or("png");
    let stem = output.file_stem().and_then(|s| s.to_str()).unwrap_or("output");
    Some(output.with_file_name(format!("{stem}-print.{extension}")))
}

fn announce_print(path: Option<&Path>) {
    if let Some(path) = path {
        eprintln!("print master: {}", path.display());
    }
}

/// `--tile-size`: the farm's tiled plan, job after job on this machine; only the image is written.
fn run_tiled(args: &RenderArgs, params: &RenderParams, device: tch::Device, progress: &mut StderrProgress) -> Result<()> {
    for (flag, given) in [
        ("--trace", args.trace.is_some()),
        ("--snapshots", args.snapshots.is_some()),
        ("--animation", args.animation.is_some()),
        ("--metadata", args.metadata.is_some()),
    ] {
        if given {
            anyhow::bail!("invalid `{flag}`: a tiled render here (--tile-size) writes only its image; the farm's writes the trace and metadata too");
        }
    }
    params.validate(args.style.len())?;
    let content = load_rgb(&args.content, "content")?;
    let styles = args.style.iter().enumerate().map(|(i, p)| load_rgb(p, &format!("style[{i}]"))).collect::<Result<Vec<_>, _>>()?;
    let weights = load_weights(params)?;
    let started = Instant::now();
    let tiled = render_tiled(&content, &styles, &weights, params, params.tile_size, device, progress)?;
    save_png(&tiled.image, &args.output)?;
    let print = print_path(&args.output, params.print);
    if let (Some(path), Some(image)) = (&print, &tiled.print) {
        save_print(image, params.print, path)?;
    }
    announce_print(print.as_deref());
    eprintln!(
        "done: {} ({}x{}) in {:.1}s, tiles per tiled scale {:?}",
        args.output.display(),
        tiled.image.width(),
        tiled.image.height(),
        started.elapsed().as_secs_f64(),
        tiled.tiles
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_print_master_sits_beside_the_output() {
        assert_eq!(print_path(Path::new("out/cat.png"), PrintFormat::Tiff16), Some(PathBuf::from("out/cat-print.tiff")));
        assert_eq!(print_path(Path::new("cat.png"), PrintFormat::Png16), Some(PathBuf::from("cat-print.png")));
        assert_eq!(print_path(Path::new("cat.png"), PrintFormat::None), None);
    }
}
