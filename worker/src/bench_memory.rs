//! `stylefarm-worker bench-memory`: the coordinator's memory estimate
//! (`stylefarm_core::estimate::device_bytes`, what it matches jobs to devices
//! and picks tile sizes with) against the measured peak of real renders.
//! Each render runs as its own `stylefarm-worker render` process; its peak
//! resident memory is the kernel's (`wait4`'s `ru_maxrss`). A render of
//! `--base-size` pixels first measures what every process holds whatever
//! the size (libtorch, the weights, the allocator), so the per-pixel part of
//! the estimate is compared on its own as well as the whole.
//!
//! L-BFGS's history grows by one pair an iteration, so the renders run more
//! iterations than `--history` entries: the peak then holds a full history,
//! as the estimate assumes.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;
use stylefarm_core::estimate::{device_bytes, tile_bytes, BASE_BYTES};
use stylefarm_core::tiling::{plan, TileTask};
use stylefarm_engine::params::{Optimizer, Preset, RenderParams};

#[derive(Args, Debug)]
pub struct BenchMemoryArgs {
    /// Long sides to measure (a square content makes the estimate's pixels exact).
    #[arg(long, value_delimiter = ',', default_value = "512,1024,2048")]
    pub sizes: Vec<u32>,
    #[arg(long, value_delimiter = ',', default_value = "keras,gatys")]
    pub presets: Vec<Preset>,
    /// L-BFGS history entries (each render runs `history + 2` iterations, so it fills).
    #[arg(long, default_value_t = 4)]
    pub history: usize,
    /// The size whose peak stands for what every render holds regardless of size.
    #[arg(long, default_value_t = 64)]
    pub base_size: u32,
    /// Tiled renders to measure, SIZE:TILE (one scale in tiles of at most TILE px:
    /// each tile's own render, its whole scale's images, and its style targets
    /// forwarded chunk by chunk).
    #[arg(long, value_delimiter = ',', default_value = "2048:512")]
    pub tiled: Vec<String>,
    /// A square content image.
    #[arg(long, default_value = ".samples/astronaut.png")]
    pub content: PathBuf,
    #[arg(long, default_value = ".samples/gravel.png")]
    pub style: PathBuf,
    /// libtorch CPU threads of each render.
    #[arg(long, default_value_t = 2)]
    pub threads: i32,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// The params the estimate sees for one measured render.
fn params(preset: Preset, size: u32, history: usize) -> RenderParams {
    let mut params = RenderParams { size, scales: 1, iterations: history as u32 + 2, ..RenderParams::preset(preset) };
    if let Optimizer::Lbfgs { history_size, .. } = &mut params.optimizer {
        *history_size = history;
    }
    params
}

pub fn run(args: &BenchMemoryArgs) -> Result<()> {
    if args.sizes.is_empty() || args.presets.is_empty() {
        bail!("--sizes and --presets must not be empty");
    }
    if args.history == 0 {
        bail!("invalid `--history`: must be at least 1");
    }
    let dir = std::env::temp_dir().join(format!("stylefarm-bench-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let measured = measure(args, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    measured
}

fn measure(args: &BenchMemoryArgs, dir: &Path) -> Result<()> {
    println!(
        "bench-memory: peak resident memory of `render` processes on {}, {} threads, L-BFGS history {} (full), content {}",
        args.device,
        args.threads,
        args.history,
        args.content.display()
    );
    println!(
        "{:<6} {:>5} | {:>10} {:>10} {:>6} | {:>12} {:>12} {:>6}",
        "preset", "size", "estimate", "measured", "ratio", "est. pixels", "meas. pixels", "ratio"
    );
    for &preset in &args.presets {
        let base = peak_bytes(args, preset, args.base_size, None, dir)?;
        let gib = |b: f64| b / f64::from(1u32 << 30);
        println!("{:<6} {:>5} | {:>10} {:>9.2}G {:>6} |", preset_name(preset), args.base_size, "", gib(base as f64), "");
        let estimate_small = device_bytes(&params(preset, args.base_size, args.history));
        let mut runs: Vec<(String, u32, Option<u32>)> = args.sizes.iter().map(|&s| (s.to_string(), s, None)).collect();
        for spec in &args.tiled {
            let (size, tile) = spec.split_once(':').with_context(|| format!("--tiled `{spec}` is not SIZE:TILE"))?;
            let (size, tile): (u32, u32) = (size.parse().context("--tiled SIZE")?, tile.parse().context("--tiled TILE")?);
            runs.push((format!("{size}/{tile}t"), size, Some(tile)));
        }
        for (label, size, tile) in runs {
            let measured = peak_bytes(args, preset, size, tile, dir)?;
            let estimate = match tile {
                None => device_bytes(&params(preset, size, args.history)),
                Some(tile) => tiled_estimate(&params(preset, size, args.history), &args.content, tile)?,
            };
            // the parts that grow with the pixels: above the base render's
            let (est_pixels, meas_pixels) = (estimate.saturating_sub(estimate_small) as f64, measured.saturating_sub(base) as f64);
            println!(
                "{:<6} {:>5} | {:>9.2}G {:>9.2}G {:>6.3} | {:>11.2}G {:>11.2}G {:>6.3}",
                preset_name(preset),
                label,
                gib(estimate as f64),
                gib(measured as f64),
                estimate as f64 / measured as f64,
                gib(est_pixels),
                gib(meas_pixels),
                est_pixels / meas_pixels.max(1.0),
            );
        }
    }
    println!("estimate = {:.2} GiB fixed (BASE_BYTES, a GPU's) + bytes per pixel; ratio = estimate / measured", BASE_BYTES as f64 / f64::from(1u32 << 30));
    Ok(())
}

fn preset_name(preset: Preset) -> &'static str {
    match preset {
        Preset::Keras => "keras",
        Preset::Gatys => "gatys",
    }
}

/// The estimate of a render in tiles of at most `tile` px: its largest tile's.
fn tiled_estimate(params: &RenderParams, content: &Path, tile: u32) -> Result<u64> {
    let (w, h) = image::image_dimensions(content).with_context(|| format!("reading {}", content.display()))?;
    let jobs = plan(params, (w, h), tile).map_err(|e| anyhow::anyhow!("{e}"))?.context("the render fits one tile")?;
    let side = jobs.iter().filter(|j| matches!(j.task, Some(TileTask::Tile { .. }))).map(|j| j.device_side).max().unwrap_or(0);
    Ok(tile_bytes(params, side))
}

/// Runs one render as a child process and returns its peak resident bytes.
fn peak_bytes(args: &BenchMemoryArgs, preset: Preset, size: u32, tile: Option<u32>, dir: &Path) -> Result<u64> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let output = dir.join(format!("{}-{size}.png", preset_name(preset)));
    let iterations = (args.history + 2).to_string();
    let mut command = Command::new(exe);
    command.args(["render", "--preset", preset_name(preset), "--scales", "1", "--progress-every", "0"]);
    if let Some(tile) = tile {
        command.args(["--tile-size", &tile.to_string()]);
    }
    let child = command
        .args(["--size", &size.to_string(), "--iterations", &iterations, "--history-size", &args.history.to_string()])
        .args(["--threads", &args.threads.to_string(), "--device", &args.device])
        .arg("--content")
        .arg(&args.content)
        .arg("--style")
        .arg(&args.style)
        .arg("--output")
        .arg(&output)
        .spawn()
        .context("starting a render")?;
    let (status, max_rss_kib) = wait_with_peak(child)?;
    if !status.success() {
        bail!("the {} {size} px render failed ({status})", preset_name(preset));
    }
    Ok(max_rss_kib * 1024)
}

/// Waits for `child` and reads its own resource use (not the sum of every
/// child waited for, as `RUSAGE_CHILDREN` would give).
fn wait_with_peak(child: std::process::Child) -> Result<(std::process::ExitStatus, u64)> {
    use std::os::unix::process::ExitStatusExt;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data; wait4 fills it for the child we started.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our own child, not yet reaped; the pointers are valid for the call.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).context("waiting for the render");
        }
    }
    // the child is reaped: `Child` must not wait for it again
    std::mem::forget(child);
    Ok((std::process::ExitStatus::from_raw(status), usage.ru_maxrss.max(0) as u64))
}
