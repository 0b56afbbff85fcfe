//! A render task: fetch the inputs, run the engine off the async runtime with
//! the device's loaded weights, encode the outputs, upload them.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use stylefarm_core::print::{PRINT_PNG, PRINT_TIFF};
use stylefarm_core::tiling::Rect;
use stylefarm_core::traces;
use stylefarm_engine::image_io::decode_rgb;
use stylefarm_engine::params::RenderParams;
use stylefarm_engine::render::{load_weights, render_via, write_outputs, Evaluator, OutputPaths, Progress, RenderOutput, Start, TileStart};
use stylefarm_engine::temporal::TemporalPrior;
use stylefarm_engine::trace::TraceRow;
use stylefarm_engine::weights::VggWeights;
use stylefarm_engine::EngineError;
use stylefarm_proto as pb;
use tch::{Device, Kind};
use tracing::Instrument;

use super::attempt::{failed, listing, loss_row, record_stage, upload_files, JobContext, Outcome, Previews, Rendered, RunningJob, StopCause};
use super::busy::BusyClock;
use super::inputs::InputError;
use super::metrics::{DeviceMetrics, Stage};
use super::video_task::PriorBytes;
use image::RgbImage;

/// Which input of a render an image is (named so in errors: `content`, `style[1]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InputRole {
    Content,
    Style(usize),
}

impl std::fmt::Display for InputRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InputRole::Content => f.write_str("content"),
            InputRole::Style(i) => write!(f, "style[{i}]"),
        }
    }
}

/// A video frame's content URL and start, in place of the lease's content.
pub struct FrameInputs {
    pub content_url: String,
    pub prior: Option<PriorBytes>,
}

/// A tile's place and the bytes of the image it starts from.
pub struct TileInputs {
    pub rect: Rect,
    pub width: u32,
    pub height: u32,
    pub previous: Option<Bytes>,
}

/// Where a render starts, as fetched (decoded with the inputs).
pub enum StartInputs {
    /// As the params' `init` says.
    Init,
    /// A video frame or seam: its own content and start.
    Frame(FrameInputs),
    /// A tile of a print: its place, and the scale before's image.
    Tile(TileInputs),
}

/// Where a render starts, decoded.
enum Begin {
    Init,
    Prior(TemporalPrior),
    Tile(TileStart),
}

struct FarmProgress {
    job: Arc<RunningJob>,
    previews: Previews,
    metrics: Option<Arc<DeviceMetrics>>,
    previous: Option<TraceRow>,
    /// One span per scale's optimisation (when traces are exported).
    scale_span: Option<(tracing::Span, TraceRow)>,
    traced: bool,
    /// The current scale's first row time and its latest row (the job's timeline).
    scale_timing: Option<(Instant, TraceRow)>,
    began: Instant,
}

impl FarmProgress {
    fn new(job: Arc<RunningJob>, metrics: Option<Arc<DeviceMetrics>>, previews: Previews) -> FarmProgress {
        FarmProgress { job, previews, metrics, previous: None, scale_span: None, traced: traces::enabled(), scale_timing: None, began: Instant::now() }
    }

    /// Closes the current scale's step on the job's timeline.
    fn end_scale_timing(&mut self) {
        if let Some((began, last)) = self.scale_timing.take() {
            let detail = format!("scale {} · {} px · {} it · {} evals · loss {:.3e}", last.scale, last.size, last.iteration, last.evaluations, last.total);
            self.job.time("optimise", began, 1, detail);
        }
    }

    /// Ends the current scale's span with its totals.
    fn end_scale(&mut self) {
        self.end_scale_timing();
        if let Some((span, last)) = self.scale_span.take() {
            span.record("iterations", last.iteration).record("evaluations", last.evaluations).record("final_loss", last.total);
        }
    }

    fn trace_row(&mut self, row: &TraceRow) {
        if self.scale_span.as_ref().is_some_and(|(_, last)| last.scale != row.scale) {
            self.end_scale();
        }
        match &mut self.scale_span {
            Some((_, last)) => *last = row.clone(),
            None => {
                let span = tracing::info_span!(
                    "optimise",
                    scale = row.scale,
                    size = row.size,
                    iterations = tracing::field::Empty,
                    evaluations = tracing::field::Empty,
                    final_loss = tracing::field::Empty
                );
                self.scale_span = Some((span, row.clone()));
            }
        }
    }
}

impl Progress for FarmProgress {
    fn on_row(&mut self, row: &TraceRow) {
        if let Some(metrics) = &self.metrics {
            metrics.row(self.previous.as_ref(), row);
            self.previous = Some(row.clone());
        }
        if self.traced {
            self.trace_row(row);
        }
        if self.scale_timing.as_ref().is_some_and(|(_, last)| last.scale != row.scale) {
            self.end_scale_timing();
            self.began = Instant::now();
        }
        match &mut self.scale_timing {
            Some((_, last)) => *last = row.clone(),
            None => self.scale_timing = Some((self.began, row.clone())),
        }
        let mut shared = self.job.shared.lock().expect("progress lock");
        if shared.latest.is_none_or(|l| l.scale != row.scale) {
            shared.scale_began_ms = row.elapsed_ms;
        }
        let row = loss_row(row);
        shared.latest = Some(row);
        shared.pending.push(row);
    }

    fn should_cancel(&self) -> bool {
        self.job.stop.load(Ordering::Relaxed)
    }

    fn wants_snapshots(&self) -> bool {
        self.previews == Previews::On
    }
}

/// Weights kept loaded between jobs on one device.
pub struct WeightsSlot {
    key: String,
    weights: VggWeights,
}

fn weights_key(params: &RenderParams) -> String {
    format!("{:?}|{:?}|{}", params.weights, params.normalization, params.depth())
}

/// A render's inputs, fetched and decoded: what the device needs and nothing
/// it has to wait for.
pub struct Prepared {
    params: RenderParams,
    content: RgbImage,
    styles: Vec<RgbImage>,
    begin: Begin,
    /// When it became ready (the wait for the device is timed from here).
    ready_at: Instant,
}

/// A render the engine has finished, its outputs not yet written.
pub struct Engined {
    out: RenderOutput,
    /// The device's busy fraction when the engine finished (the metadata's).
    busy_fraction: f64,
}

/// Fetches and decodes the lease's inputs (a video frame or seam brings its
/// own content, by URL, and start), off the device's thread.
pub async fn prepare(ctx: &JobContext, job: &Arc<RunningJob>, params: RenderParams, start: StartInputs) -> Result<Prepared, Outcome> {
    let lease = &job.lease;
    job.shared.lock().expect("progress lock").iterations = (0..params.scale_count() as usize).map(|i| params.iterations_at(i)).collect();
    let mut sources = vec![(InputRole::Content, lease.content_url.clone(), lease.content_sha256.clone())];
    let start = match start {
        StartInputs::Frame(FrameInputs { content_url, prior }) => {
            sources[0] = (InputRole::Content, content_url, String::new());
            prior.map_or(Fetched::Init, Fetched::Prior)
        }
        StartInputs::Tile(tile) => Fetched::Tile(tile),
        StartInputs::Init => Fetched::Init,
    };
    for (i, url) in lease.style_urls.iter().enumerate() {
        sources.push((InputRole::Style(i), url.clone(), lease.style_sha256.get(i).cloned().unwrap_or_default()));
    }
    let fetching = Instant::now();
    let fetched = async {
        let mut images: Vec<(InputRole, String, Bytes)> = Vec::with_capacity(sources.len());
        for (role, url, sha) in sources {
            match ctx.inputs.fetch(&role.to_string(), &url, &sha).await {
                Ok(data) => images.push((role, url, data)),
                Err(InputError::Permanent(reason)) => return Err(failed(reason, false)),
                Err(InputError::Transient(reason)) => return Err(failed(reason, true)),
            }
        }
        Ok(images)
    }
    .instrument(tracing::info_span!("fetch_inputs", inputs = 1 + lease.style_urls.len()))
    .await?;
    let bytes: usize = fetched.iter().map(|(_, _, b)| b.len()).sum();
    ctx.stage(job, Stage::FetchInputs, fetching, Some(format!("{} images, {bytes} bytes", fetched.len())));
    let decoding = Instant::now();
    let size = params.size;
    let span = tracing::info_span!("decode");
    let decoded = tokio::task::spawn_blocking(move || span.in_scope(|| decode(fetched, start, size))).await;
    let (mut images, begin) = match decoded {
        Ok(Ok(decoded)) => decoded,
        Ok(Err(e)) => return Err(failed(e.to_string(), e.is_retryable())),
        Err(e) => return Err(failed(format!("the decoding thread panicked: {e}"), true)),
    };
    ctx.stage(job, Stage::Decode, decoding, Some(format!("{} images", images.len())));
    let content = images.remove(0);
    Ok(Prepared { params, content, styles: images, begin, ready_at: Instant::now() })
}

/// A start as fetched, before decoding.
enum Fetched {
    Init,
    Prior(PriorBytes),
    Tile(TileInputs),
}

/// The inputs as images, content first, and the start decoded at `size`.
fn decode(images: Vec<(InputRole, String, Bytes)>, start: Fetched, size: u32) -> Result<(Vec<RgbImage>, Begin), EngineError> {
    let images = images
        .into_iter()
        .map(|(role, url, bytes)| decode_rgb(&bytes).map_err(|reason| EngineError::Image { role: role.to_string(), path: PathBuf::from(url), reason }))
        .collect::<Result<Vec<_>, _>>()?;
    let begin = match start {
        Fetched::Init => Begin::Init,
        Fetched::Prior(p) => Begin::Prior(p.decode(size)?),
        Fetched::Tile(TileInputs { rect, width, height, previous }) => {
            let previous = previous.map(|bytes| decode_rgb(&bytes).map_err(|reason| EngineError::param("previous scale", reason))).transpose()?;
            Begin::Tile(TileStart { rect, width, height, previous })
        }
    };
    Ok((images, begin))
}

/// Runs the engine on the device's blocking thread with its loaded weights
/// (`slot` carries them from one job to the next): the device's busy part.
pub async fn render(ctx: &JobContext, job: &Arc<RunningJob>, slot: &mut Option<WeightsSlot>, prepared: Prepared) -> Result<Engined, Outcome> {
    ctx.stage(job, Stage::WaitDevice, prepared.ready_at, Some(String::new()));
    if job.stop.load(Ordering::Relaxed) {
        return Err(Outcome::Stopped(job.stop_cause().unwrap_or(StopCause::Cancelled)));
    }
    let taken = slot.take();
    let (device, pack, busy) = (ctx.device, ctx.pack.clone(), Arc::clone(&ctx.busy));
    let progress = FarmProgress::new(Arc::clone(job), ctx.device_metrics.clone(), ctx.previews);
    let rendering = Instant::now();
    let span = tracing::Span::current();
    let (job_for_engine, ctx_metrics) = (Arc::clone(job), ctx.metrics.clone());
    let rendered = tokio::task::spawn_blocking(move || {
        let _job = span.enter();
        let stage = |stage: Stage, began: Instant| record_stage(ctx_metrics.as_deref(), &job_for_engine, stage, began.elapsed());
        run_engine(prepared, taken, device, pack, progress, &busy, stage)
    })
    .await;
    job.time("render", rendering, 0, String::new());
    let (result, returned) = match rendered {
        Ok(pair) => pair,
        Err(e) => return Err(failed(format!("the engine thread panicked: {e}"), true)),
    };
    *slot = returned;
    match result {
        // a diverged render is this job's failure, not a result to store
        Ok(done) if !done.out.metadata.final_loss.is_finite() || !done.out.metadata.timings.total_ms.is_finite() => {
            Err(failed(format!("the render diverged: final loss {} (try a smaller style weight or learning rate)", done.out.metadata.final_loss), false))
        }
        Ok(done) => Ok(done),
        Err(EngineError::Cancelled) => Err(Outcome::Stopped(job.stop_cause().unwrap_or(StopCause::Cancelled))),
        Err(e) => Err(failed(e.to_string(), e.is_retryable())),
    }
}

/// Writes the outputs (image, trace, snapshots, animation, metadata) on a
/// blocking thread of their own and uploads them: the part that runs while
/// the device renders the next job.
pub async fn finish(ctx: &JobContext, job: &Arc<RunningJob>, done: Engined) -> Outcome {
    let lease = &job.lease;
    let dir = ctx.work_dir.join(format!("{}-attempt-{}", lease.job_id, lease.attempt));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(dir.join("snapshots")) {
        return failed(format!("creating {}: {e}", dir.display()), true);
    }
    let encoding = Instant::now();
    let farm = farm_metadata(lease, &ctx.store_url);
    let (dir_for_encoder, job_for_encoder, span) = (dir.clone(), Arc::clone(job), tracing::info_span!("encode", snapshots = done.out.frames.len()));
    let previews = ctx.previews;
    let snapshots = if previews == Previews::On { done.out.frames.len() } else { 0 };
    let encoded = tokio::task::spawn_blocking(move || span.in_scope(|| encode(&done, previews, farm, &job_for_encoder, encoding, &dir_for_encoder))).await;
    let outcome = match encoded {
        Ok(Ok(rendered)) => {
            ctx.stage(job, Stage::Encode, encoding, Some(format!("{snapshots} snapshots")));
            let uploading = Instant::now();
            let mut outcome = upload(ctx, lease, &dir, rendered).instrument(tracing::info_span!("upload")).await;
            if let Outcome::Done(result) = &mut outcome {
                let bytes: u64 = result.outputs.iter().map(|o| o.size_bytes).sum();
                ctx.stage(job, Stage::Upload, uploading, Some(format!("{} files, {bytes} bytes", result.outputs.len())));
                result.spans = job.take_spans();
            }
            outcome
        }
        Ok(Err(e)) => failed(e.to_string(), e.is_retryable()),
        Err(e) => failed(format!("the encoding thread panicked: {e}"), true),
    };
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

/// The `farm` part of a job's metadata: which job and attempt, and its
/// inputs named as the submitter knows them ([`input_name`]).
pub(super) fn farm_metadata(lease: &pb::Lease, store_url: &str) -> serde_json::Value {
    let styles: Vec<String> =
        lease.style_urls.iter().enumerate().map(|(i, url)| input_name(url, lease.style_sha256.get(i).map_or("", String::as_str), store_url)).collect();
    serde_json::json!({
        "job_id": lease.job_id, "batch_id": lease.batch_id, "attempt": lease.attempt, "name": lease.name,
        "content": input_name(&lease.content_url, &lease.content_sha256, store_url), "styles": styles,
        "traceparent": lease.traceparent,
    })
}

/// How metadata names an input: an upload by its hash, an object of the
/// store by its key, an allowlisted URL as the submitter gave it; never the
/// store's own URL (an internal address).
fn input_name(url: &str, sha256: &str, store_url: &str) -> String {
    if !sha256.is_empty() {
        return format!("sha256:{sha256}");
    }
    match url.strip_prefix(store_url.trim_end_matches('/')).and_then(|rest| rest.strip_prefix('/')) {
        Some(key) => key.to_string(),
        None => url.to_string(),
    }
}

/// The device's part: weights (kept loaded between jobs of one model), then
/// the optimiser, timed on the device's busy clock. `stage` times a stage.
fn run_engine(
    prepared: Prepared,
    slot: Option<WeightsSlot>,
    device: Device,
    pack: Option<Arc<super::pack::DevicePack>>,
    mut progress: FarmProgress,
    busy: &Arc<BusyClock>,
    stage: impl Fn(Stage, Instant),
) -> (Result<Engined, EngineError>, Option<WeightsSlot>) {
    let job = Arc::clone(&progress.job);
    let Prepared { params, content, styles, begin, .. } = prepared;
    let key = weights_key(&params);
    let slot = match slot {
        Some(s) if s.key == key => s,
        _ => {
            let loading = Instant::now();
            let loaded = tracing::info_span!("load_weights").in_scope(|| load_weights(&params));
            job.time("load_weights", loading, 1, String::new());
            stage(Stage::LoadWeights, loading);
            match loaded {
                Ok(weights) => WeightsSlot { key, weights },
                Err(e) => return (Err(e), None),
            }
        }
    };
    let shared = pack.map(|pack| pack.handle(&slot.key, &slot.weights, params.depth(), params.pooling));
    let evaluator = shared.as_ref().map_or(Evaluator::Own(Kind::Float), Evaluator::Shared);
    let render_span = tracing::info_span!("render", size = params.size, scales = params.scale_count(), device = %stylefarm_engine::device::describe(device));
    progress.began = Instant::now();
    let start = match &begin {
        Begin::Init => Start::Init(None),
        Begin::Prior(prior) => Start::Prior(prior),
        Begin::Tile(tile) => Start::Tile(tile),
    };
    let engine = Instant::now();
    let guard = busy.enter();
    let rendered = render_span.in_scope(|| render_via(evaluator, &content, &styles, start, &slot.weights, &params, device, &mut progress));
    drop(guard);
    stage(Stage::Engine, engine);
    progress.end_scale();
    drop(render_span);
    match rendered {
        Ok(out) => (Ok(Engined { out, busy_fraction: busy.fraction(Instant::now()) }), Some(slot)),
        Err(e) => (Err(e), Some(slot)),
    }
}

/// Writes the outputs and the metadata (the job's `farm` part, and the
/// worker's: time per stage so far and the device's busy fraction) to `dir`.
fn encode(done: &Engined, previews: Previews, farm: serde_json::Value, job: &RunningJob, encoding: Instant, dir: &Path) -> Result<Rendered, EngineError> {
    let out = &done.out;
    let (image, trace, snapshots, animation) = (dir.join("output.png"), dir.join("trace.jsonl"), dir.join("snapshots"), dir.join("animation.gif"));
    let previews = previews == Previews::On && !out.frames.is_empty();
    let print = out.metadata.params.print.file_name().map(|name| dir.join(name));
    let paths = OutputPaths {
        image: &image,
        trace: Some(&trace),
        snapshots: previews.then_some(snapshots.as_path()),
        animation: previews.then_some(animation.as_path()),
        metadata: None,
        print: print.as_deref(),
    };
    write_outputs(out, &paths)?;
    let mut metadata = serde_json::to_value(&out.metadata).expect("metadata serialises");
    metadata["farm"] = farm;
    let mut stages = job.stage_ms();
    stages.insert("encode".into(), serde_json::json!(encoding.elapsed().as_secs_f64() * 1e3));
    metadata["worker"] = serde_json::json!({ "stage_ms": stages, "device_busy_fraction": done.busy_fraction, "busy_window_s": super::busy::WINDOW.as_secs() });
    // the worker's own paths are not the submitter's business (the weights' hash stays)
    if let Some(fields) = metadata.as_object_mut() {
        fields.remove("weights_path");
    }
    let metadata_path = dir.join("metadata.json");
    std::fs::write(&metadata_path, serde_json::to_vec_pretty(&metadata).expect("json"))
        .map_err(|e| EngineError::Output { path: metadata_path, reason: e.to_string() })?;
    let m = &out.metadata;
    Ok(Rendered { final_loss: m.final_loss, iterations: m.iterations_run, engine_ms: m.timings.total_ms, device: m.device.clone() })
}

/// Uploads every output file under the attempt's prefix, retrying transient errors.
async fn upload(ctx: &JobContext, lease: &pb::Lease, dir: &Path, rendered: Rendered) -> Outcome {
    let mut files = Vec::new();
    for name in ["output.png", PRINT_PNG, PRINT_TIFF, "trace.jsonl", "metadata.json", "animation.gif"] {
        if dir.join(name).is_file() {
            files.push(name.to_string());
        }
    }
    files.extend(listing(dir, "snapshots"));
    upload_files(ctx, lease, dir, files, rendered).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_names_inputs_without_the_stores_url() {
        let store = "s3://farm-internal/prod/";
        assert_eq!(input_name("s3://farm-internal/prod/images/sha256/ab12", "ab12", store), "sha256:ab12");
        assert_eq!(input_name("s3://farm-internal/prod/batches/b7/jobs/j1/attempt-1/output.png", "", store), "batches/b7/jobs/j1/attempt-1/output.png");
        assert_eq!(input_name("s3://photos/in/cat.jpg", "", store), "s3://photos/in/cat.jpg", "an allowlisted URL is the submitter's own words");
        let lease = pb::Lease {
            job_id: "j1".into(),
            content_url: "s3://farm-internal/prod/images/sha256/aa".into(),
            content_sha256: "aa".into(),
            style_urls: vec!["s3://farm-internal/prod/images/sha256/bb".into()],
            style_sha256: vec!["bb".into()],
            ..Default::default()
        };
        let farm = farm_metadata(&lease, store);
        assert_eq!((farm["content"].as_str(), farm["styles"][0].as_str()), (Some("sha256:aa"), Some("sha256:bb")));
        assert!(!farm.to_string().contains("farm-internal"), "{farm}");
    }
}
