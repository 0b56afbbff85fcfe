//! `stylefarm-worker bench-tiles`: a print rendered in tiles (the farm's plan,
//! job after job here) beside the same job rendered whole, in the same
//! command, on content × style pairs the tiling was not tuned on. It prints,
//! per preset and pair: the assembled image's total loss evaluated whole by
//! the engine over the untiled render's, the seam measure on the tile edges
//! (`stylefarm_core::tiling::seam_gradient`) over the untiled image's on the
//! same lines, and the wall-time ratio; `--crops DIR` writes a 100 % crop
//! across a tile corner, tiled beside untiled.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use image::RgbImage;
use stylefarm_core::tiling::{seam_gradient, seam_lines, Rect};
use stylefarm_engine::device::{describe, parse_device};
use stylefarm_engine::image_io::load_rgb;
use stylefarm_engine::params::{Preset, RenderParams};
use stylefarm_engine::render::{evaluate_output, load_weights, render_loaded, Silent, Start};
use stylefarm_engine::tiled::render_tiled;

#[derive(Args, Debug)]
pub struct BenchTilesArgs {
    /// Long side of the print.
    #[arg(long, default_value_t = 1024)]
    pub size: u32,
    /// Longest tile side (as a job's `tile_size`, or a device that fits no more).
    #[arg(long, default_value_t = 576)]
    pub tile: u32,
    /// Tile overlap (0: the default, an eighth of the tile, at least 32).
    #[arg(long, default_value_t = 0)]
    pub overlap: u32,
    /// The job's iterations (automatic scales: at the coarsest, halving on each finer one).
    #[arg(long, default_value_t = 60)]
    pub iterations: u32,
    #[arg(long, value_delimiter = ',', default_value = "keras,gatys")]
    pub presets: Vec<Preset>,
    /// CONTENT:STYLE pairs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = ".samples/coffee.png:.samples/retina.jpg,.samples/rocket.jpg:.samples/ihc.png")]
    pub pairs: Vec<String>,
    /// Write, per preset and pair, a 100 % crop across a tile corner: tiled | untiled.
    #[arg(long)]
    pub crops: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    pub device: String,
}

struct Row {
    preset: Preset,
    pair: String,
    tiles: Vec<u32>,
    loss: (f64, f64),
    seam: (f64, f64),
    seconds: (f64, f64),
}

pub fn run(args: &BenchTilesArgs) -> Result<()> {
    if args.pairs.is_empty() || args.presets.is_empty() {
        bail!("--pairs and --presets must not be empty");
    }
    let device = parse_device(&args.device)?;
    println!("bench-tiles: {} px, tiles of at most {} px, {} iterations, on {}", args.size, args.tile, args.iterations, describe(device));
    let mut rows = Vec::new();
    for &preset in &args.presets {
        for pair in &args.pairs {
            let (content, style) = pair.split_once(':').with_context(|| format!("--pairs `{pair}`: CONTENT:STYLE"))?;
            rows.push(compare(args, preset, Path::new(content), Path::new(style), device)?);
        }
    }
    println!();
    println!("| preset | content × style | tiles | loss tiled / untiled | seam tiled / untiled | time tiled / untiled |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {:?} | {} | {:?} | {:.3} ({:.3e} / {:.3e}) | {:.3} ({:.2} / {:.2} levels) | {:.2} ({:.0} s / {:.0} s) |",
            r.preset,
            r.pair,
            r.tiles,
            r.loss.0 / r.loss.1,
            r.loss.0,
            r.loss.1,
            r.seam.0 / r.seam.1,
            r.seam.0,
            r.seam.1,
            r.seconds.0 / r.seconds.1,
            r.seconds.0,
            r.seconds.1
        );
    }
    Ok(())
}

fn name(path: &Path) -> String {
    path.file_stem().map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned())
}

fn compare(args: &BenchTilesArgs, preset: Preset, content_path: &Path, style_path: &Path, device: tch::Device) -> Result<Row> {
    let params =
        RenderParams { size: args.size, iterations: args.iterations, tile_overlap: args.overlap, snapshot_every: 1_000_000, ..RenderParams::preset(preset) };
    params.validate(1)?;
    let params = params.resolved();
    let content = load_rgb(content_path, "content")?;
    let styles = vec![load_rgb(style_path, "style")?];
    let weights = load_weights(&params)?;
    let pair = format!("{} × {}", name(content_path), name(style_path));
    eprintln!("{preset:?} {pair}: untiled…");
    let began = Instant::now();
    let whole = render_loaded(&content, &styles, Start::Init(None), &weights, &params, device, &mut Silent)?.image;
    let whole_s = began.elapsed().as_secs_f64();
    eprintln!("{preset:?} {pair}: untiled in {whole_s:.0} s; tiled…");
    let began = Instant::now();
    let tiled = render_tiled(&content, &styles, &weights, &params, args.tile, device, &mut Silent)?;
    let tiled_s = began.elapsed().as_secs_f64();
    if tiled.tiles.is_empty() {
        bail!("{} px fits tiles of {} px: nothing was tiled", args.size, args.tile);
    }
    let last_scale = RenderParams { scales: 1, scale_iterations: Vec::new(), ..params.clone() };
    let loss = |image: &RgbImage| -> Result<f64> { Ok(evaluate_output(&content, &styles, image, &weights, &last_scale, device)?[0]) };
    let (w, h) = whole.dimensions();
    let lines = seam_lines(&tiled.last_tiles, w, h);
    let seam = |image: &RgbImage| seam_gradient(image.as_raw(), w, &lines);
    if let Some(dir) = &args.crops {
        std::fs::create_dir_all(dir)?;
        let file = dir.join(format!("tiles-{}-{}-{}.png", format!("{preset:?}").to_lowercase(), name(content_path), name(style_path)));
        corner_crop(&tiled.image, &whole, &tiled.last_tiles).save(&file)?;
        eprintln!("wrote {}", file.display());
    }
    Ok(Row {
        preset,
        pair,
        tiles: tiled.tiles,
        loss: (loss(&tiled.image)?, loss(&whole)?),
        seam: (seam(&tiled.image), seam(&whole)),
        seconds: (tiled_s, whole_s),
    })
}

/// A 256 px crop (at 100 %) centred where the first tile's right and bottom
/// edges meet its neighbours': tiled on the left, untiled on the right.
fn corner_crop(tiled: &RgbImage, whole: &RgbImage, tiles: &[Rect]) -> RgbImage {
    let side = 256.min(whole.width()).min(whole.height());
    let first = tiles.first().copied().unwrap_or(Rect { x: 0, y: 0, width: whole.width(), height: whole.height() });
    let centre = |edge: u32, whole: u32| edge.saturating_sub(side / 2).min(whole - side);
    let (x, y) = (centre(first.x + first.width, whole.width()), centre(first.y + first.height, whole.height()));
    let mut out = RgbImage::new(side * 2 + 8, side);
    for (offset, image) in [(0, tiled), (side + 8, whole)] {
        image::imageops::overlay(&mut out, &image::imageops::crop_imm(image, x, y, side, side).to_image(), i64::from(offset), 0);
    }
    out
}
