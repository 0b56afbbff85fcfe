//! `stylefarm-worker bench-pack`: images per hour with K jobs packed on one
//! device (their evaluations stacked through one VGG-16 pass, as
//! `--jobs-per-device K` does) beside the reference, the same jobs rendered
//! one at a time, in the same command; and each packed job's final loss
//! against its solo render.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use image::RgbImage;
use stylefarm_engine::batch::BatchEvaluator;
use stylefarm_engine::device::{describe, parse_device};
use stylefarm_engine::image_io::load_rgb;
use stylefarm_engine::params::{Init, Preset, RenderParams};
use stylefarm_engine::render::{load_weights, render_loaded, render_via, Evaluator, Silent, Start};

#[derive(Args, Debug)]
pub struct BenchPackArgs {
    /// Jobs packed per device, comma-separated (1 = one at a time, always run as the reference).
    #[arg(long, value_delimiter = ',', default_value = "2,4")]
    pub k: Vec<u32>,
    /// Jobs rendered for each K.
    #[arg(long, default_value_t = 8)]
    pub jobs: usize,
    #[arg(long, default_value_t = 256)]
    pub size: u32,
    #[arg(long, default_value_t = 30)]
    pub iterations: u32,
    #[arg(long, default_value = "keras")]
    pub preset: Preset,
    /// Content images, cycled over the jobs. Only jobs of the same output size
    /// stack (the default: one photo in several styles, as a batch of photo ×
    /// styles is); others take a pass each.
    #[arg(long, value_delimiter = ',', default_value = ".samples/chelsea.png")]
    pub contents: Vec<PathBuf>,
    /// Style images, cycled over the jobs.
    #[arg(long, value_delimiter = ',', default_value = ".samples/ihc.png,.samples/retina.jpg,.samples/hubble_deep_field.jpg,.samples/gravel.png")]
    pub styles: Vec<PathBuf>,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Also render the jobs alone again with one torch CPU thread instead of
    /// several: the spread float32 reduction order alone gives the final losses.
    #[arg(long)]
    pub noise: bool,
    /// Weights: default, a safetensors path, or a URL.
    #[arg(long, default_value = "default")]
    pub weights: String,
}

/// Jobs not started yet, with their index.
type Queue = VecDeque<(usize, Arc<Job>)>;

struct Job {
    content: RgbImage,
    style: RgbImage,
}

pub fn run(args: &BenchPackArgs) -> Result<()> {
    if args.jobs == 0 || args.contents.is_empty() || args.styles.is_empty() {
        bail!("--jobs, --contents and --styles must not be empty");
    }
    if let Some(k) = args.k.iter().find(|&&k| k == 0 || k > 16) {
        bail!("--k {k}: each K must be 1..=16");
    }
    let device = parse_device(&args.device)?;
    // from the content, so the outputs are pictures worth looking at
    let params = RenderParams {
        size: args.size,
        iterations: args.iterations,
        init: Init::Content,
        snapshot_every: 1_000_000,
        weights: stylefarm_engine::weights::WeightsSpec::parse(&args.weights),
        ..RenderParams::preset(args.preset)
    };
    let weights = load_weights(&params)?;
    let contents = args.contents.iter().map(|p| load_rgb(p, "content")).collect::<Result<Vec<_>, _>>()?;
    let styles = args.styles.iter().map(|p| load_rgb(p, "style")).collect::<Result<Vec<_>, _>>()?;
    let jobs: Vec<Arc<Job>> = (0..args.jobs)
        .map(|i| Arc::new(Job { content: contents[i % contents.len()].clone(), style: styles[(i / contents.len() + i) % styles.len()].clone() }))
        .collect();
    println!(
        "{} jobs, {} px, {} iterations, {:?} preset, on {} ({} torch threads)",
        args.jobs,
        args.size,
        args.iterations,
        args.preset,
        describe(device),
        tch::get_num_threads()
    );

    // the reference: one job at a time, as a worker with --jobs-per-device 1 renders
    let started = Instant::now();
    let alone = |job: &Job| -> Result<f64> {
        let out =
            render_loaded(&job.content, std::slice::from_ref(&job.style), Start::Init(None), &weights, &params, device, &mut Silent).context("solo render")?;
        Ok(out.metadata.final_loss)
    };
    let solo = jobs.iter().map(|job| alone(job)).collect::<Result<Vec<f64>>>()?;
    let reference = started.elapsed();
    if args.noise {
        let threads = tch::get_num_threads();
        tch::set_num_threads(if threads > 1 { 1 } else { 2 });
        let mut worst = 0f64;
        for (job, first) in jobs.iter().zip(&solo) {
            worst = worst.max(((alone(job)? - first) / first).abs() * 100.0);
        }
        println!("noise: the same jobs alone with {} torch threads instead of {threads}: final losses up to {worst:.3} % apart", tch::get_num_threads());
        tch::set_num_threads(threads);
    }
    let per_hour = |d: Duration| jobs.len() as f64 / d.as_secs_f64() * 3600.0;
    println!("{:>3}  {:>12}  {:>8}  {:>14}  {:>10}", "K", "images/hour", "vs K=1", "max Δ loss %", "mean width");
    println!("{:>3}  {:>12.0}  {:>8}  {:>14}  {:>10}", 1, per_hour(reference), "1.00", "-", "1.00");

    for &k in args.k.iter().filter(|&&k| k > 1) {
        let evaluator = BatchEvaluator::new(&weights, params.depth(), params.pooling, device, Duration::from_millis(20));
        let queue: Arc<Mutex<Queue>> = Arc::new(Mutex::new(jobs.iter().cloned().enumerate().collect()));
        let losses = Arc::new(Mutex::new(vec![f64::NAN; jobs.len()]));
        let started = Instant::now();
        std::thread::scope(|scope| -> Result<()> {
            let threads: Vec<_> = (0..k)
                .map(|_| {
                    let (queue, losses, shared, params, weights) = (Arc::clone(&queue), Arc::clone(&losses), evaluator.handle(), &params, &weights);
                    scope.spawn(move || -> Result<()> {
                        loop {
                            let Some((i, job)) = queue.lock().expect("queue").pop_front() else { return Ok(()) };
                            let style = std::slice::from_ref(&job.style);
                            let out = render_via(Evaluator::Shared(&shared), &job.content, style, Start::Init(None), weights, params, device, &mut Silent)?;
                            losses.lock().expect("losses")[i] = out.metadata.final_loss;
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().map_err(|_| anyhow::anyhow!("a render thread panicked"))??;
            }
            Ok(())
        })?;
        let elapsed = started.elapsed();
        let stats = evaluator.finish();
        let losses = losses.lock().expect("losses");
        let worst = losses.iter().zip(&solo).map(|(p, s)| ((p - s) / s).abs() * 100.0).fold(0.0, f64::max);
        let mean_width = stats.evaluations as f64 / stats.passes.max(1) as f64;
        println!("{:>3}  {:>12.0}  {:>8.2}  {:>14.3}  {:>10.2}", k, per_hour(elapsed), reference.as_secs_f64() / elapsed.as_secs_f64(), worst, mean_width);
    }
    Ok(())
}
