//! One leased job: inputs from storage, the engine off the async runtime,
//! outputs up to the attempt's own prefix.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use stylefarm_core::storage::Location;
use stylefarm_engine::image_io::decode_rgb;
use stylefarm_engine::params::RenderParams;
use stylefarm_engine::render::{load_weights, render_via, write_outputs, Evaluator, OutputPaths, Progress, Start};
use stylefarm_engine::trace::TraceRow;
use stylefarm_engine::weights::VggWeights;
use stylefarm_engine::EngineError;
use stylefarm_proto as pb;
use tch::{Device, Kind};

use stylefarm_core::traces;
use tracing::Instrument;

use super::inputs::{InputCache, InputError};
use super::metrics::{DeviceMetrics, Stage, WorkerMetrics};

/// Progress the heartbeat has not sent yet, and the flag that stops the engine.
#[derive(Debug, Default)]
pub struct Shared {
    pub pending: Vec<pb::LossRow>,
    pub latest: Option<pb::LossRow>,
    pub iterations: Vec<u32>,
}

pub struct RunningJob {
    pub lease: pb::Lease,
    pub shared: Mutex<Shared>,
    /// Set by a CANCEL or LEASE_LOST verdict, or a drain timeout; the engine
    /// checks it between iterations.
    pub stop: AtomicBool,
    /// Why it was stopped (reported, or not, accordingly).
    pub stop_reason: Mutex<Option<StopCause>>,
    /// When this worker took the lease; its steps are timed from here.
    started: Instant,
    /// The steps so far (sent with the completion or failure).
    spans: Mutex<Vec<pb::SpanTiming>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    Cancelled,
    LeaseLost,
    Shutdown,
}

impl RunningJob {
    pub fn new(lease: pb::Lease) -> RunningJob {
        RunningJob {
            lease,
            shared: Mutex::new(Shared::default()),
            stop: AtomicBool::new(false),
            stop_reason: Mutex::new(None),
            started: Instant::now(),
            spans: Mutex::new(Vec::new()),
        }
    }

    /// Records a step that began at `began` and ends now (at most 64 are kept,
    /// the coordinator's limit).
    pub fn time(&self, name: &str, began: Instant, depth: u32, detail: String) {
        let mut spans = self.spans.lock().expect("spans lock");
        if spans.len() < 64 {
            let offset = began.saturating_duration_since(self.started).as_secs_f64() * 1e3;
            spans.push(pb::SpanTiming { name: name.into(), offset_ms: offset, duration_ms: began.elapsed().as_secs_f64() * 1e3, depth, detail });
        }
    }

    /// The steps recorded so far, in the order they began.
    pub fn take_spans(&self) -> Vec<pb::SpanTiming> {
        let mut spans = std::mem::take(&mut *self.spans.lock().expect("spans lock"));
        spans.sort_by(|a, b| a.offset_ms.total_cmp(&b.offset_ms));
        spans
    }

    pub fn request_stop(&self, cause: StopCause) {
        let mut reason = self.stop_reason.lock().expect("stop lock");
        if reason.is_none() {
            *reason = Some(cause);
        }
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn stop_cause(&self) -> Option<StopCause> {
        *self.stop_reason.lock().expect("stop lock")
    }

    /// The heartbeat's view: rows since the last one, the latest row.
    pub fn take_progress(&self) -> Option<pb::JobProgress> {
        let mut shared = self.shared.lock().expect("progress lock");
        let latest = shared.latest?;
        let rows = std::mem::take(&mut shared.pending);
        Some(pb::JobProgress {
            iteration: latest.iteration,
            total_iterations: shared.iterations.get(latest.scale as usize).copied().unwrap_or(0),
            scale: latest.scale,
            scales: shared.iterations.len() as u32,
            latest: Some(latest),
            rows,
        })
    }
}

pub fn loss_row(row: &TraceRow) -> pb::LossRow {
    pb::LossRow {
        scale: row.scale,
        size: row.size,
        iteration: row.iteration,
        total: row.total,
        content: row.content,
        style: row.style,
        tv: row.tv,
        elapsed_ms: row.elapsed_ms,
        evaluations: row.evaluations,
    }
}

struct FarmProgress {
    job: Arc<RunningJob>,
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
    fn new(job: Arc<RunningJob>, metrics: Option<Arc<DeviceMetrics>>) -> FarmProgress {
        FarmProgress { job, metrics, previous: None, scale_span: None, traced: traces::enabled(), scale_timing: None, began: Instant::now() }
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
        let row = loss_row(row);
        shared.latest = Some(row);
        shared.pending.push(row);
    }

    fn should_cancel(&self) -> bool {
        self.job.stop.load(Ordering::Relaxed)
    }
}

/// How a job ended on this worker.
#[derive(Debug)]
pub enum Outcome {
    Done(pb::JobResult),
    Failed { reason: String, retryable: bool },
    Stopped(StopCause),
}

/// Weights kept loaded between jobs on one device.
pub struct WeightsSlot {
    key: String,
    weights: VggWeights,
}

fn weights_key(params: &RenderParams) -> String {
    format!("{:?}|{:?}|{}", params.weights, params.normalization, params.depth())
}

pub struct JobContext {
    pub device: Device,
    pub store_url: String,
    pub work_dir: PathBuf,
    pub inputs: Arc<InputCache>,
    pub worker_id: String,
    /// The device's shared evaluators when it renders several jobs at once.
    pub pack: Option<Arc<super::pack::DevicePack>>,
    /// Prometheus metrics (`--metrics-listen`), and this device's.
    pub metrics: Option<Arc<WorkerMetrics>>,
    pub device_metrics: Option<Arc<DeviceMetrics>>,
}

impl JobContext {
    pub fn stage(&self, stage: Stage, started: Instant) {
        if let Some(metrics) = &self.metrics {
            metrics.stage(stage, started.elapsed());
        }
    }
}

pub fn failed(reason: impl Into<String>, retryable: bool) -> Outcome {
    Outcome::Failed { reason: reason.into(), retryable }
}

/// Runs the job; `slot` carries loaded weights from one job to the next.
pub async fn execute(ctx: &JobContext, job: &Arc<RunningJob>, slot: &mut Option<WeightsSlot>) -> Outcome {
    let lease = &job.lease;
    let params: RenderParams = match serde_json::from_str(&lease.params_json) {
        Ok(p) => p,
        Err(e) => return failed(format!("invalid params_json: {e}"), false),
    };
    let task = match super::video_task::parse(lease) {
        Ok(task) => task,
        Err(reason) => return failed(reason, false),
    };
    if let Some(step) = task.as_ref().filter(|t| !t.renders()) {
        // decode, flow, assemble: no network to run
        return super::video_task::execute_step(ctx, job, step, &params).await;
    }
    job.shared.lock().expect("progress lock").iterations = (0..params.scales as usize).map(|i| params.iterations_at(i)).collect();
    let mut sources = vec![("content".to_string(), lease.content_url.clone(), lease.content_sha256.clone())];
    // a video frame's content is its decoded frame; its start comes from earlier jobs' outputs
    let mut prior = None;
    if let Some(task) = &task {
        match super::video_task::frame_inputs(ctx, lease, task).await {
            Ok((content_url, bytes)) => {
                sources[0] = ("content".to_string(), content_url, String::new());
                prior = bytes;
            }
            Err(outcome) => return outcome,
        }
    }
    for (i, url) in lease.style_urls.iter().enumerate() {
        sources.push((format!("style[{i}]"), url.clone(), lease.style_sha256.get(i).cloned().unwrap_or_default()));
    }
    let fetching = Instant::now();
    let fetched = async {
        let mut images: Vec<(String, Bytes)> = Vec::with_capacity(sources.len());
        for (role, url, sha) in sources {
            match ctx.inputs.fetch(&role, &url, &sha).await {
                Ok(data) => images.push((role, data)),
                Err(InputError::Permanent(reason)) => return Err(failed(reason, false)),
                Err(InputError::Transient(reason)) => return Err(failed(reason, true)),
            }
        }
        Ok(images)
    }
    .instrument(tracing::info_span!("fetch_inputs", inputs = 1 + lease.style_urls.len()))
    .await;
    let images = match fetched {
        Ok(images) => images,
        Err(outcome) => return outcome,
    };
    ctx.stage(Stage::FetchInputs, fetching);
    job.time("fetch_inputs", fetching, 0, format!("{} images, {} bytes", images.len(), images.iter().map(|(_, b)| b.len()).sum::<usize>()));
    let dir = ctx.work_dir.join(format!("{}-attempt-{}", lease.job_id, lease.attempt));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(dir.join("snapshots")) {
        return failed(format!("creating {}: {e}", dir.display()), true);
    }
    // the engine runs on a blocking thread; the loaded weights go with it and come back
    let taken = slot.take();
    let (device, dir_for_engine, pack) = (ctx.device, dir.clone(), ctx.pack.clone());
    let progress = FarmProgress::new(Arc::clone(job), ctx.device_metrics.clone());
    let rendering = Instant::now();
    let span = tracing::Span::current();
    let rendered = tokio::task::spawn_blocking(move || {
        let _job = span.enter();
        render_job(images, prior, params, taken, device, pack, progress, &dir_for_engine)
    })
    .await;
    ctx.stage(Stage::Render, rendering);
    job.time("render", rendering, 0, String::new());
    let (result, returned) = match rendered {
        Ok(pair) => pair,
        Err(e) => return failed(format!("the engine thread panicked: {e}"), true),
    };
    *slot = returned;
    let outcome = match result {
        // a diverged render is this job's failure, not a result to store
        Ok(render) if !render.final_loss.is_finite() || !render.engine_ms.is_finite() => {
            failed(format!("the render diverged: final loss {} (try a smaller style weight or learning rate)", render.final_loss), false)
        }
        Ok(render) => {
            let uploading = Instant::now();
            let mut outcome = upload(ctx, lease, &dir, render).instrument(tracing::info_span!("upload")).await;
            ctx.stage(Stage::Upload, uploading);
            if let Outcome::Done(result) = &mut outcome {
                let bytes: u64 = result.outputs.iter().map(|o| o.size_bytes).sum();
                job.time("upload", uploading, 0, format!("{} files, {bytes} bytes", result.outputs.len()));
                result.spans = job.take_spans();
            }
            outcome
        }
        Err(EngineError::Cancelled) => Outcome::Stopped(job.stop_cause().unwrap_or(StopCause::Cancelled)),
        Err(e) => failed(e.to_string(), e.is_retryable()),
    };
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

pub struct Rendered {
    pub final_loss: f64,
    pub iterations: u32,
    pub engine_ms: f64,
    pub device: String,
}

#[allow(clippy::too_many_arguments)]
fn render_job(
    images: Vec<(String, Bytes)>,
    prior: Option<super::video_task::PriorBytes>,
    params: RenderParams,
    slot: Option<WeightsSlot>,
    device: Device,
    pack: Option<Arc<super::pack::DevicePack>>,
    mut progress: FarmProgress,
    dir: &Path,
) -> (Result<Rendered, EngineError>, Option<WeightsSlot>) {
    let job = Arc::clone(&progress.job);
    let mut decoded = Vec::with_capacity(images.len());
    for (role, bytes) in &images {
        match decode_rgb(bytes) {
            Ok(image) => decoded.push(image),
            Err(reason) => {
                let url =
                    if role == "content" { job.lease.content_url.clone() } else { job.lease.style_urls.get(role_index(role)).cloned().unwrap_or_default() };
                let error = EngineError::Image { role: role.clone(), path: PathBuf::from(url), reason };
                return (Err(error), slot);
            }
        }
    }
    let key = weights_key(&params);
    let slot = match slot {
        Some(s) if s.key == key => s,
        _ => {
            let loading = Instant::now();
            let loaded = tracing::info_span!("load_weights").in_scope(|| load_weights(&params));
            job.time("load_weights", loading, 1, String::new());
            match loaded {
                Ok(weights) => WeightsSlot { key, weights },
                Err(e) => return (Err(e), None),
            }
        }
    };
    let (content, styles) = decoded.split_first().expect("content is first");
    let shared = pack.map(|pack| pack.handle(&slot.key, &slot.weights, params.depth(), params.pooling));
    let evaluator = shared.as_ref().map_or(Evaluator::Own(Kind::Float), Evaluator::Shared);
    let render_span = tracing::info_span!("render", size = params.size, scales = params.scales, device = %stylefarm_engine::device::describe(device));
    progress.began = Instant::now();
    let prior = match prior.map(|p| p.decode(params.size)).transpose() {
        Ok(prior) => prior,
        Err(e) => return (Err(e), Some(slot)),
    };
    let start = prior.as_ref().map_or(Start::Init(None), Start::Prior);
    let rendered = render_span.in_scope(|| render_via(evaluator, content, styles, start, &slot.weights, &params, device, &mut progress));
    progress.end_scale();
    drop(render_span);
    let out = match rendered {
        Ok(out) => out,
        Err(e) => return (Err(e), Some(slot)),
    };
    let (image, trace, snapshots, animation) = (dir.join("output.png"), dir.join("trace.jsonl"), dir.join("snapshots"), dir.join("animation.gif"));
    let paths = OutputPaths {
        image: &image,
        trace: Some(&trace),
        snapshots: Some(&snapshots),
        animation: (!out.frames.is_empty()).then_some(animation.as_path()),
        metadata: None,
    };
    let encoding = Instant::now();
    let encode = tracing::info_span!("encode", snapshots = out.frames.len()).entered();
    if let Err(e) = write_outputs(&out, &paths) {
        return (Err(e), Some(slot));
    }
    let mut metadata = serde_json::to_value(&out.metadata).expect("metadata serialises");
    metadata["farm"] = serde_json::json!({
        "job_id": job.lease.job_id, "batch_id": job.lease.batch_id, "attempt": job.lease.attempt, "name": job.lease.name,
        "content_url": job.lease.content_url, "style_urls": job.lease.style_urls, "traceparent": job.lease.traceparent,
    });
    let metadata_path = dir.join("metadata.json");
    if let Err(e) = std::fs::write(&metadata_path, serde_json::to_vec_pretty(&metadata).expect("json")) {
        return (Err(EngineError::Output { path: metadata_path, reason: e.to_string() }), Some(slot));
    }
    drop(encode);
    job.time("encode", encoding, 1, format!("{} snapshots", out.frames.len()));
    let m = &out.metadata;
    let rendered = Rendered { final_loss: m.final_loss, iterations: m.iterations_run, engine_ms: m.timings.total_ms, device: m.device.clone() };
    (Ok(rendered), Some(slot))
}

fn role_index(role: &str) -> usize {
    role.trim_start_matches("style[").trim_end_matches(']').parse().unwrap_or(0)
}

fn kind_of(name: &str) -> &'static str {
    match name {
        "output.png" => "image",
        "trace.jsonl" => "trace",
        "metadata.json" => "metadata",
        "animation.gif" => "animation",
        "flow.safetensors" => "flow",
        n if n.starts_with("frames/") => "frame",
        n if n.ends_with(".mp4") => "video",
        _ => "snapshot",
    }
}

/// Uploads every output file under the attempt's prefix, retrying transient errors.
async fn upload(ctx: &JobContext, lease: &pb::Lease, dir: &Path, rendered: Rendered) -> Outcome {
    let mut files = Vec::new();
    for name in ["output.png", "trace.jsonl", "metadata.json", "animation.gif"] {
        if dir.join(name).is_file() {
            files.push(name.to_string());
        }
    }
    files.extend(listing(dir, "snapshots"));
    upload_files(ctx, lease, dir, files, rendered).await
}

/// The files of `dir/sub`, as `sub/NAME`, sorted.
pub fn listing(dir: &Path, sub: &str) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir.join(sub)) {
        Ok(entries) => entries.filter_map(|e| e.ok()).map(|e| format!("{sub}/{}", e.file_name().to_string_lossy())).collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// Uploads `files` (relative to `dir`) under the attempt's prefix, retrying transient errors.
pub async fn upload_files(ctx: &JobContext, lease: &pb::Lease, dir: &Path, files: Vec<String>, rendered: Rendered) -> Outcome {
    let Some(relative) = lease.output_prefix.strip_prefix(&ctx.store_url) else {
        return failed(format!("output prefix {} is not under the store {}", lease.output_prefix, ctx.store_url), false);
    };
    let key_prefix = format!("{}/", relative.trim_matches('/'));
    let location = match Location::parse(&lease.output_prefix) {
        Ok(l) => l,
        Err(e) => return failed(e.to_string(), false),
    };
    let mut outputs = Vec::with_capacity(files.len());
    for name in files {
        let data = match std::fs::read(dir.join(&name)) {
            Ok(d) => Bytes::from(d),
            Err(e) => return failed(format!("reading {name}: {e}"), true),
        };
        let size = data.len() as u64;
        let mut delay = Duration::from_millis(200);
        let mut tries = 0;
        loop {
            tries += 1;
            match location.put(&name, data.clone()).await {
                Ok(()) => {
                    if let Some(metrics) = &ctx.metrics {
                        metrics.uploaded_bytes.increment(size);
                    }
                    break;
                }
                Err(e) if !e.is_retryable() || tries >= 5 => return failed(format!("uploading {name}: {e}"), e.is_retryable()),
                Err(e) => {
                    tracing::warn!(job_id = %lease.job_id, file = %name, error = %e, "upload failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        outputs.push(pb::OutputFile { key: format!("{key_prefix}{name}"), size_bytes: size, kind: kind_of(&name).to_string() });
    }
    tracing::debug!(worker_id = %ctx.worker_id, job_id = %lease.job_id, files = outputs.len(), "outputs uploaded");
    Outcome::Done(pb::JobResult {
        prefix: key_prefix,
        outputs,
        final_loss: rendered.final_loss,
        iterations: rendered.iterations,
        engine_ms: rendered.engine_ms,
        device: rendered.device,
        spans: Vec::new(),
    })
}
