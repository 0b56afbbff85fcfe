//! One attempt's plumbing, whatever the task: the running job the heartbeat
//! reads and stops, how it ended ([`Outcome`]), what a task runs with
//! ([`JobContext`]), and the upload of its outputs under the attempt's prefix.
//! The kinds of task ([`super::render`], [`super::video_task`]) build on it;
//! [`super::task`] dispatches a lease to one of them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use stylefarm_core::outputs::OutputKind;
use stylefarm_core::retry::Backoff;
use stylefarm_core::storage::Location;
use stylefarm_engine::trace::TraceRow;
use stylefarm_proto as pb;
use tch::Device;

use super::busy::BusyClock;
use super::inputs::InputCache;
use super::metrics::{DeviceMetrics, Stage, WorkerMetrics};

/// Progress the heartbeat has not sent yet, and the flag that stops the engine.
#[derive(Debug, Default)]
pub struct Shared {
    pub pending: Vec<pb::LossRow>,
    pub latest: Option<pb::LossRow>,
    pub iterations: Vec<u32>,
    /// `elapsed_ms` of the current scale's first row (its pace is read from it).
    pub scale_began_ms: f64,
}

impl Shared {
    /// The engine time this render still needs, read from its pace in its
    /// last scale; `None` before then (a finer scale costs more than the
    /// pace so far says) or before a second row.
    pub fn remaining(&self) -> Option<std::time::Duration> {
        let latest = self.latest?;
        let last = self.iterations.len().checked_sub(1)?;
        if latest.scale as usize != last || latest.iteration == 0 {
            return None;
        }
        let per_iteration = (latest.elapsed_ms - self.scale_began_ms) / f64::from(latest.iteration);
        let left = f64::from(self.iterations[last].saturating_sub(latest.iteration));
        let ms = per_iteration * left;
        (ms.is_finite() && ms >= 0.0).then(|| std::time::Duration::from_secs_f64(ms / 1e3))
    }
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
    /// Milliseconds per stage so far (the job's metadata).
    stages: Mutex<[f64; Stage::ALL.len()]>,
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
            stages: Mutex::new([0.0; Stage::ALL.len()]),
        }
    }

    /// Time spent in `stage` (added to what it had).
    pub fn add_stage(&self, stage: Stage, elapsed: std::time::Duration) {
        if let Some(i) = Stage::ALL.iter().position(|s| *s == stage) {
            self.stages.lock().expect("stages lock")[i] += elapsed.as_secs_f64() * 1e3;
        }
    }

    /// Milliseconds spent in each stage so far, by stage label, the stages
    /// not reached left out.
    pub fn stage_ms(&self) -> serde_json::Map<String, serde_json::Value> {
        let stages = self.stages.lock().expect("stages lock");
        Stage::ALL.iter().zip(stages.iter()).filter(|(_, ms)| **ms > 0.0).map(|(s, ms)| (s.label().to_string(), serde_json::json!(ms))).collect()
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

/// How a job ended on this worker.
#[derive(Debug)]
pub enum Outcome {
    Done(pb::JobResult),
    Failed { reason: String, retryable: bool },
    Stopped(StopCause),
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
    /// The device's engine time over wall time (shared by its runners).
    pub busy: Arc<BusyClock>,
    /// Whether renders make snapshots and the animation.
    pub previews: Previews,
}

/// Time `job` spent in `stage`: on `/metrics` and in the job's metadata
/// ([`JobContext::stage`], and the engine's thread, which has no context).
pub fn record_stage(metrics: Option<&WorkerMetrics>, job: &RunningJob, stage: Stage, elapsed: std::time::Duration) {
    if let Some(metrics) = metrics {
        metrics.stage(stage, elapsed);
    }
    job.add_stage(stage, elapsed);
}

/// Whether a render's previews (snapshots and the progress animation) are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Previews {
    /// Snapshots every `snapshot_every` iterations, and the animation of them.
    #[default]
    On,
    /// The image, trace and metadata only: nothing else is read off the
    /// device, encoded or uploaded.
    Off,
}

impl JobContext {
    /// A stage of `job` that began at `began` ends now: timed on `/metrics`,
    /// in the job's metadata, and (when `detail` is given) on its timeline.
    pub fn stage(&self, job: &RunningJob, stage: Stage, began: Instant, detail: Option<String>) {
        record_stage(self.metrics.as_deref(), job, stage, began.elapsed());
        if let Some(detail) = detail {
            job.time(stage.label(), began, 0, detail);
        }
    }
}

pub fn failed(reason: impl Into<String>, retryable: bool) -> Outcome {
    Outcome::Failed { reason: reason.into(), retryable }
}

pub struct Rendered {
    pub final_loss: f64,
    pub iterations: u32,
    pub engine_ms: f64,
    pub device: String,
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
        let mut backoff = Backoff::default();
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
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
        outputs.push(pb::OutputFile { key: format!("{key_prefix}{name}"), size_bytes: size, kind: OutputKind::of_file(&name).as_str().to_string() });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(scale: u32, iteration: u32, elapsed_ms: f64) -> pb::LossRow {
        pb::LossRow { scale, iteration, elapsed_ms, ..Default::default() }
    }

    #[test]
    fn the_time_left_is_read_from_the_last_scales_pace() {
        let mut shared = Shared { iterations: vec![10, 100], ..Shared::default() };
        assert_eq!(shared.remaining(), None, "no row yet");
        shared.latest = Some(row(0, 5, 500.0));
        assert_eq!(shared.remaining(), None, "a finer scale is still to come");
        shared.scale_began_ms = 1_000.0;
        shared.latest = Some(row(1, 0, 1_000.0));
        assert_eq!(shared.remaining(), None, "no pace from one row");
        // 40 iterations in 2 s: 50 ms each, 60 to go
        shared.latest = Some(row(1, 40, 3_000.0));
        assert_eq!(shared.remaining(), Some(std::time::Duration::from_secs(3)));
        shared.latest = Some(row(1, 100, 6_000.0));
        assert_eq!(shared.remaining(), Some(std::time::Duration::ZERO));
    }

    #[test]
    fn stages_add_up_and_only_those_reached_are_listed() {
        let job = RunningJob::new(pb::Lease::default());
        job.add_stage(Stage::Upload, std::time::Duration::from_millis(30));
        job.add_stage(Stage::Upload, std::time::Duration::from_millis(20));
        job.add_stage(Stage::Engine, std::time::Duration::from_millis(900));
        let stages = job.stage_ms();
        assert_eq!(stages.keys().collect::<Vec<_>>(), ["engine", "upload"]);
        assert_eq!(stages["upload"].as_f64(), Some(50.0));
    }
}
