//! What the client prints for `--json`: serde types mirroring the wire
//! messages, with states by their one name ([`stylefarm_proto::names`]).

use std::collections::HashMap;

use anyhow::Result;
use serde::Serialize;
use stylefarm_client::ClientError;
use stylefarm_proto as pb;

use crate::cli::Cli;

/// A job state's name for people (`?` for one this build does not know).
pub fn job_state_name(state: i32) -> &'static str {
    pb::names::job_state(state).unwrap_or("?")
}

/// A batch state's name for people (`?` for one this build does not know).
pub fn batch_state_name(state: i32) -> &'static str {
    pb::names::batch_state(state).unwrap_or("?")
}

/// A batch's job counts as the status and watch lines show them.
pub fn counts_text(batch: &pb::Batch) -> String {
    let c = batch.counts.unwrap_or_default();
    format!("{} jobs: {} queued, {} running, {} succeeded, {} failed, {} cancelled", c.total, c.queued, c.running, c.succeeded, c.failed, c.cancelled)
}

pub fn print_json(value: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints a finished batch (with `--json`); its state decides how the client exits.
pub fn finish(cli: &Cli, batch: pb::Batch) -> Result<()> {
    if cli.json {
        print_json(&BatchJson::of(&batch))?;
    }
    match pb::BatchState::try_from(batch.state) {
        Ok(pb::BatchState::Succeeded) => Ok(()),
        Ok(pb::BatchState::Cancelled) => Err(ClientError::BatchCancelled(Box::new(batch)).into()),
        // the jobs' reasons were printed as they failed
        _ => Err(ClientError::BatchFailed { batch: Box::new(batch), failures: Vec::new() }.into()),
    }
}

#[derive(Serialize)]
pub struct CountsJson {
    total: u32,
    queued: u32,
    running: u32,
    succeeded: u32,
    failed: u32,
    cancelled: u32,
}

#[derive(Serialize)]
pub struct BatchJson<'a> {
    id: &'a str,
    name: &'a str,
    state: &'static str,
    priority: i32,
    labels: &'a HashMap<String, String>,
    requires: &'a [String],
    /// Webhook URLs told about this batch, and what they are told.
    notify: &'a [String],
    notify_on: &'static str,
    created_at_ms: i64,
    started_at_ms: i64,
    finished_at_ms: i64,
    owner: &'a str,
    counts: CountsJson,
}

impl<'a> BatchJson<'a> {
    pub fn of(b: &'a pb::Batch) -> BatchJson<'a> {
        let c = b.counts.unwrap_or_default();
        BatchJson {
            id: &b.id,
            name: &b.name,
            state: batch_state_name(b.state),
            priority: b.priority,
            labels: &b.labels,
            requires: &b.requires,
            notify: &b.notify,
            notify_on: notify_on_name(b.notify_on),
            created_at_ms: b.created_at_ms,
            started_at_ms: b.started_at_ms,
            finished_at_ms: b.finished_at_ms,
            owner: &b.owner,
            counts: CountsJson { total: c.total, queued: c.queued, running: c.running, succeeded: c.succeeded, failed: c.failed, cancelled: c.cancelled },
        }
    }
}

/// `batch_end` or `failures`, as a manifest and the coordinator's config spell it.
pub fn notify_on_name(wire: i32) -> &'static str {
    match pb::NotifyOn::try_from(wire) {
        Ok(pb::NotifyOn::Failures) => "failures",
        _ => "batch_end",
    }
}

#[derive(Serialize)]
pub struct OutputJson<'a> {
    key: &'a str,
    size_bytes: u64,
    kind: &'a str,
}

#[derive(Serialize)]
pub struct ResultJson<'a> {
    prefix: &'a str,
    final_loss: f64,
    iterations: u32,
    engine_ms: f64,
    device: &'a str,
    outputs: Vec<OutputJson<'a>>,
}

#[derive(Serialize)]
pub struct ProgressJson {
    iteration: u32,
    total_iterations: u32,
    scale: u32,
    scales: u32,
    loss: Option<f64>,
}

#[derive(Serialize)]
pub struct JobJson<'a> {
    id: &'a str,
    batch_id: &'a str,
    index: u32,
    name: &'a str,
    state: &'static str,
    attempt: u32,
    max_attempts: u32,
    worker_id: &'a str,
    error: &'a str,
    error_retryable: bool,
    estimate_bytes: u64,
    result: Option<ResultJson<'a>>,
    progress: Option<ProgressJson>,
    created_at_ms: i64,
    started_at_ms: i64,
    finished_at_ms: i64,
    waiting_reason: &'a str,
    time_limit_ms: u64,
    attempts_handed_back: u32,
    params: serde_json::Value,
    depends_on: &'a [String],
    task: &'a str,
    frame: u32,
}

impl<'a> JobJson<'a> {
    pub fn of(j: &'a pb::Job) -> JobJson<'a> {
        JobJson {
            id: &j.id,
            batch_id: &j.batch_id,
            index: j.index,
            name: &j.name,
            state: job_state_name(j.state),
            attempt: j.attempt,
            max_attempts: j.max_attempts,
            worker_id: &j.worker_id,
            error: &j.error,
            error_retryable: j.error_retryable,
            estimate_bytes: j.estimate_bytes,
            result: j.result.as_ref().map(|r| ResultJson {
                prefix: &r.prefix,
                final_loss: r.final_loss,
                iterations: r.iterations,
                engine_ms: r.engine_ms,
                device: &r.device,
                outputs: r.outputs.iter().map(|o| OutputJson { key: &o.key, size_bytes: o.size_bytes, kind: &o.kind }).collect(),
            }),
            progress: j.progress.as_ref().map(|p| ProgressJson {
                iteration: p.iteration,
                total_iterations: p.total_iterations,
                scale: p.scale,
                scales: p.scales,
                loss: p.latest.as_ref().map(|r| r.total),
            }),
            created_at_ms: j.created_at_ms,
            started_at_ms: j.started_at_ms,
            finished_at_ms: j.finished_at_ms,
            waiting_reason: &j.waiting_reason,
            time_limit_ms: j.time_limit_ms,
            attempts_handed_back: j.attempts_handed_back,
            params: serde_json::from_str(&j.params_json).unwrap_or_default(),
            depends_on: &j.depends_on,
            task: &j.task,
            frame: j.frame,
        }
    }
}

#[derive(Serialize)]
pub struct DeviceJson<'a> {
    name: &'a str,
    memory_bytes: u64,
    description: &'a str,
    /// Engine time over wall time in the worker's window (absent before its first heartbeat).
    busy_fraction: Option<f64>,
}

#[derive(Serialize)]
pub struct WorkerJson<'a> {
    id: &'a str,
    name: &'a str,
    version: &'a str,
    connected: bool,
    availability: &'static str,
    running_jobs: &'a [String],
    succeeded: u64,
    failed: u64,
    last_seen_at_ms: i64,
    devices: Vec<DeviceJson<'a>>,
    labels: std::collections::BTreeMap<&'a str, &'a str>,
}

impl<'a> WorkerJson<'a> {
    pub fn of(w: &'a pb::Worker) -> WorkerJson<'a> {
        WorkerJson {
            id: &w.id,
            name: &w.name,
            version: &w.version,
            connected: w.connected,
            availability: availability_name(w.availability),
            running_jobs: &w.running_jobs,
            succeeded: w.succeeded,
            failed: w.failed,
            last_seen_at_ms: w.last_seen_at_ms,
            devices: w
                .devices
                .iter()
                .map(|d| DeviceJson {
                    name: &d.name,
                    memory_bytes: d.memory_bytes,
                    description: &d.description,
                    busy_fraction: w.busy.iter().find(|b| b.device == d.name).map(|b| b.fraction),
                })
                .collect(),
            labels: w.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
        }
    }
}

/// A worker's availability as the CLI prints it.
pub fn availability_name(value: i32) -> &'static str {
    match pb::WorkerAvailability::try_from(value) {
        Ok(pb::WorkerAvailability::Disabled) => "disabled",
        _ => "enabled",
    }
}

/// What `submit` prints with `--json` (without `--wait`).
#[derive(Serialize)]
pub struct SubmittedJson<'a> {
    pub batch_id: &'a str,
    pub job_ids: &'a [String],
    pub deduplicated: bool,
}

/// What `cancel` prints with `--json`.
#[derive(Serialize)]
pub struct CancelledJson {
    pub cancelled_queued: u32,
    pub signalled_running: u32,
}

/// `pause --json`.
#[derive(Serialize)]
pub struct PausedJson<'a> {
    pub batch: BatchJson<'a>,
    pub handed_back: u32,
}

/// `retry --json`.
#[derive(Serialize)]
pub struct RetriedJson<'a> {
    pub batch: BatchJson<'a>,
    pub requeued: u32,
}

/// `cancel --job J --json`.
#[derive(Serialize)]
pub struct CancelledJobJson {
    pub job_id: String,
    /// cancelled, signalled or already_finished
    pub outcome: &'static str,
    /// The job's state after the call.
    pub state: &'static str,
}

/// One frame of a video batch in `status --json`.
#[derive(Serialize)]
pub struct FrameJson<'a> {
    pub frame: u32,
    pub state: &'static str,
    pub job: &'a str,
}
