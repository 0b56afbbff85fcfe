//! `stylefarm-worker video`: a clip stylised on this machine, the way the farm
//! splits it (decode → flows → segments of warm-started frames → cross-fade →
//! encode with the audio), and with `--compare` the same clip stylised frame by
//! frame on its own at the same total iterations, measured side by side.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use image::RgbImage;
use serde::Serialize;
use stylefarm_core::ffmpeg::Tools;
use stylefarm_core::video::{blend_of, frame_name, plan_segments, VideoParams};
use stylefarm_engine::device::{describe, parse_device};
use stylefarm_engine::flow::FramePair;
use stylefarm_engine::image_io::{load_rgb, save_png};
use stylefarm_engine::render::{RenderOutput, Silent};
use stylefarm_engine::video::{at_size, blend, output_error, pair_for, save_pair};
use stylefarm_worker::video::FrameRenderer;

use crate::cli::VideoArgs;

/// One output frame's figures.
#[derive(Debug, Clone, Serialize)]
struct FrameFigures {
    frame: u32,
    /// Against the previous output frame (none for the first).
    warping_error: Option<f64>,
    content: f64,
    style: f64,
    iterations: u32,
    /// For a warm frame: the first iteration whose content+style+tv loss was at
    /// or below the chain's first frame's final loss.
    reached_first_level_at: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
struct RunFigures {
    method: &'static str,
    seconds: f64,
    iterations: u32,
    frames_per_hour: f64,
    mean_warping_error: f64,
    mean_content: f64,
    mean_style: f64,
    warm_frames: u32,
    warm_reaching_first_level: u32,
    frames: Vec<FrameFigures>,
}

#[derive(Debug, Serialize)]
struct Report {
    input: PathBuf,
    frames: u32,
    fps: String,
    size: u32,
    device: String,
    video: VideoParams,
    segments: usize,
    runs: Vec<RunFigures>,
}

pub fn run(args: &VideoArgs) -> Result<()> {
    let params = args.knobs.to_params()?;
    let video = args.video.to_params(params.iterations)?;
    if let Some(threads) = args.threads {
        anyhow::ensure!(threads >= 1, "invalid parameter `threads`: {threads} must be >= 1");
        tch::set_num_threads(threads);
    }
    let device = parse_device(&args.device)?;
    let tools = Tools::default();
    let probe = tools.probe(&args.input, "input")?;
    let frames = probe.check("input", &video, args.max_frames)?;
    let work = args.work.clone().unwrap_or_else(|| args.output.with_extension("").with_file_name(format!("{}-work", stem(&args.output))));
    let decoded = work.join("frames");
    let _ = std::fs::remove_dir_all(&decoded);
    let count = tools.decode(&args.input, &video, None, &decoded)?;
    eprintln!(
        "video: {} {}x{} at {}/{} fps, {count} frames decoded (probe: {frames}), audio: {}",
        args.input.display(),
        probe.width,
        probe.height,
        probe.fps_num,
        probe.fps_den,
        if probe.has_audio { "yes" } else { "no" }
    );
    anyhow::ensure!(count > 0, "invalid parameter `input`: no frames decoded");
    let inputs: Vec<RgbImage> = (0..count).map(|i| load_rgb(&decoded.join(frame_name(i)), &format!("frame {}", i + 1))).collect::<Result<_, _>>()?;
    let styles: Vec<RgbImage> = args.style.iter().enumerate().map(|(i, p)| load_rgb(p, &format!("style[{i}]"))).collect::<Result<_, _>>()?;
    let renderer = FrameRenderer::new(params.clone(), video.clone(), styles, device)?;

    // flows: independent of each other (separate jobs on the farm)
    let started = Instant::now();
    let flow_dir = work.join("flow");
    std::fs::create_dir_all(&flow_dir)?;
    let mut pairs: Vec<Option<FramePair>> = vec![None];
    for t in 1..count as usize {
        let pair = pair_for(&inputs[t - 1], &inputs[t], params.size, device)?;
        save_pair(&pair, &flow_dir.join(frame_name(t as u32).replace(".png", ".safetensors")))?;
        pairs.push(Some(pair));
    }
    let flow_s = started.elapsed().as_secs_f64();
    eprintln!("flows: {} pairs in {flow_s:.1}s (forward, backward, masks)", count.saturating_sub(1));

    let segments = plan_segments(count, video.segment_frames, video.overlap);
    let mut chain = stylise_segments(&renderer, &inputs, &pairs, &segments, &work)?;
    let chain_out = work.join("stylised");
    let mut outputs = Vec::with_capacity(count as usize);
    let seams_started = Instant::now();
    for frame in 0..count {
        let copies: Vec<(&RgbImage, f64)> = blend_of(&segments, frame).into_iter().map(|(k, w)| (&chain.copies[k][&frame].0, w)).collect();
        let mut image = blend(&copies)?;
        if copies.len() > 1 && !args.no_seam_pass {
            let out = renderer.seam(&inputs[frame as usize], &image, &mut Silent)?;
            chain.iterations += out.metadata.iterations_run;
            chain.per_frame[frame as usize].iterations += out.metadata.iterations_run;
            image = out.image;
        }
        save_png(&image, &chain_out.join(frame_name(frame)))?;
        outputs.push(image);
    }
    chain.seconds += seams_started.elapsed().as_secs_f64();
    let audio = probe.has_audio.then_some((args.input.as_path(), &video));
    tools.encode(&chain_out, probe.fps_num, probe.fps_den, audio, &args.output)?;
    let chain_iterations = chain.iterations;
    let mut runs = vec![figures(&renderer, "temporal", &inputs, &outputs, &pairs, chain.seconds + flow_s, chain.per_frame.clone())?];
    // every iteration the chains ran, their overlaps included
    runs[0].iterations = chain_iterations;
    eprintln!("wrote {} ({count} frames, {} segments)", args.output.display(), segments.len());

    if args.compare {
        // the same total iterations, spread evenly over frames rendered on their own (or as asked)
        let per_frame = args.independent_iterations.unwrap_or_else(|| (chain_iterations as f64 / count as f64).round().max(1.0) as u32);
        anyhow::ensure!(per_frame >= 1, "invalid parameter `independent_iterations`: must be >= 1");
        let dir = work.join("independent");
        let started = Instant::now();
        let mut independent = Vec::with_capacity(count as usize);
        let mut rows = Vec::new();
        for (t, frame) in inputs.iter().enumerate() {
            let out = renderer.independent(frame, per_frame, &mut Silent)?;
            save_png(&out.image, &dir.join(frame_name(t as u32)))?;
            rows.push(FrameRun { iterations: out.metadata.iterations_run, warm: false, reached: None });
            independent.push(out.image);
            eprintln!("independent frame {}/{count}", t + 1);
        }
        let seconds = started.elapsed().as_secs_f64();
        let other = args.output.with_file_name(format!("{}-independent.mp4", stem(&args.output)));
        tools.encode(&dir, probe.fps_num, probe.fps_den, audio, &other)?;
        runs.push(figures(&renderer, "independent", &inputs, &independent, &pairs, seconds, rows)?);
        eprintln!("wrote {}", other.display());
    }
    print_table(&runs);
    let report = Report {
        input: args.input.clone(),
        frames: count,
        fps: format!("{}/{}", probe.fps_num, probe.fps_den),
        size: params.size,
        device: describe(device),
        video,
        segments: segments.len(),
        runs,
    };
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "video".into())
}

/// How one frame was rendered.
#[derive(Debug, Clone, Copy, Default)]
struct FrameRun {
    iterations: u32,
    warm: bool,
    /// A warm frame: the first iteration at or below its chain's first frame's final loss.
    reached: Option<u32>,
}

/// Every segment's chain: its copies of frames, iterations and timings.
struct Chains {
    /// Per segment: frame → (output, its trace's final row).
    copies: Vec<std::collections::BTreeMap<u32, (RgbImage, f64)>>,
    /// Per output frame, its owner's copy.
    per_frame: Vec<FrameRun>,
    iterations: u32,
    seconds: f64,
}

fn stylise_segments(
    renderer: &FrameRenderer,
    inputs: &[RgbImage],
    pairs: &[Option<FramePair>],
    segments: &[stylefarm_core::video::Segment],
    work: &Path,
) -> Result<Chains> {
    let started = Instant::now();
    let mut copies = Vec::new();
    let mut per_frame = vec![FrameRun::default(); inputs.len()];
    let mut iterations = 0;
    for (k, segment) in segments.iter().enumerate() {
        let dir = work.join(format!("segment{k:03}"));
        let mut chain = std::collections::BTreeMap::new();
        let mut first_level = f64::INFINITY;
        let mut previous: Option<RgbImage> = None;
        for frame in segment.frames() {
            let t = frame as usize;
            let out: RenderOutput = match (&previous, &pairs[t]) {
                (Some(prev), Some(pair)) => renderer.warm(&inputs[t], prev, pair, &mut Silent)?,
                _ => renderer.cold(&inputs[t], &mut Silent)?,
            };
            let last = out.trace.last().map(|r| r.content + r.style + r.tv).unwrap_or(f64::NAN);
            let reached = if previous.is_none() {
                first_level = last;
                None
            } else {
                out.trace.iter().find(|r| r.content + r.style + r.tv <= first_level).map(|r| r.iteration)
            };
            iterations += out.metadata.iterations_run;
            if frame >= segment.owns_from {
                per_frame[t] = FrameRun { iterations: out.metadata.iterations_run, warm: previous.is_some(), reached };
            }
            save_png(&out.image, &dir.join(frame_name(frame)))?;
            eprintln!(
                "segment {}/{} frame {}: {} iterations, loss {:.4e}{}",
                k + 1,
                segments.len(),
                frame + 1,
                out.metadata.iterations_run,
                last,
                if previous.is_none() { " (cold start)" } else { "" }
            );
            previous = Some(out.image.clone());
            chain.insert(frame, (out.image, last));
        }
        copies.push(chain);
    }
    Ok(Chains { copies, per_frame, iterations, seconds: started.elapsed().as_secs_f64() })
}

fn figures(
    renderer: &FrameRenderer,
    method: &'static str,
    inputs: &[RgbImage],
    outputs: &[RgbImage],
    pairs: &[Option<FramePair>],
    seconds: f64,
    rows: Vec<FrameRun>,
) -> Result<RunFigures> {
    let size = renderer.params.size;
    let mut frames = Vec::new();
    for (t, out) in outputs.iter().enumerate() {
        let warping_error = match (&pairs[t], t.checked_sub(1)) {
            (Some(pair), Some(p)) => Some(output_error(&outputs[p], out, pair)?),
            _ => None,
        };
        let losses = renderer.losses(&at_size(&inputs[t], size), out)?;
        frames.push(FrameFigures {
            frame: t as u32,
            warping_error,
            content: losses[1],
            style: losses[2],
            iterations: rows[t].iterations,
            reached_first_level_at: rows[t].reached,
        });
    }
    let mean = |f: &dyn Fn(&FrameFigures) -> Option<f64>| {
        let v: Vec<f64> = frames.iter().filter_map(f).collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let warm: Vec<&FrameFigures> = frames.iter().zip(&rows).filter(|(_, r)| r.warm).map(|(f, _)| f).collect();
    Ok(RunFigures {
        method,
        seconds,
        iterations: frames.iter().map(|f| f.iterations).sum(),
        frames_per_hour: outputs.len() as f64 * 3600.0 / seconds.max(1e-9),
        mean_warping_error: mean(&|f| f.warping_error),
        mean_content: mean(&|f| Some(f.content)),
        mean_style: mean(&|f| Some(f.style)),
        warm_frames: warm.len() as u32,
        warm_reaching_first_level: warm.iter().filter(|f| f.reached_first_level_at.is_some()).count() as u32,
        frames,
    })
}

fn print_table(runs: &[RunFigures]) {
    println!("{:<12} {:>10} {:>10} {:>14} {:>12} {:>12} {:>11}", "method", "iterations", "seconds", "warping error", "content", "style", "frames/h");
    for r in runs {
        println!(
            "{:<12} {:>10} {:>10.1} {:>14.3e} {:>12.4e} {:>12.4e} {:>11.1}",
            r.method, r.iterations, r.seconds, r.mean_warping_error, r.mean_content, r.mean_style, r.frames_per_hour
        );
    }
    if let [t, i] = runs {
        println!(
            "ratios temporal/independent: warping error {:.3}, content {:.3}, style {:.3}; warm frames reaching the first frame's loss: {}/{}",
            t.mean_warping_error / i.mean_warping_error,
            t.mean_content / i.mean_content,
            t.mean_style / i.mean_style,
            t.warm_reaching_first_level,
            t.warm_frames
        );
    }
}
