//! Records → wire messages.

use stylefarm_core::tiling::{Rect, TileTask};
use stylefarm_core::video::VideoTask;
use stylefarm_proto as pb;

use crate::model::{
    AttemptRecord, Availability, BatchPhase, BatchRecord, CancelOutcome, Counts, ImageSource, JobOutputs, JobRecord, JobState, Millis, NotifyOn, SpanRecord,
    StateKind, WorkerRecord,
};

pub fn image_ref(source: &ImageSource) -> pb::ImageRef {
    let source = match source {
        ImageSource::Blob(sha) => pb::image_ref::Source::Sha256(sha.clone()),
        ImageSource::Url(url) => pb::image_ref::Source::Url(url.clone()),
    };
    pb::ImageRef { source: Some(source) }
}

pub fn counts(c: &Counts) -> pb::JobCounts {
    pb::JobCounts { total: c.total, queued: c.queued, running: c.running, succeeded: c.succeeded, failed: c.failed, cancelled: c.cancelled }
}

pub fn batch_state(phase: BatchPhase) -> pb::BatchState {
    match phase {
        BatchPhase::Queued => pb::BatchState::Queued,
        BatchPhase::Running => pb::BatchState::Running,
        BatchPhase::Paused => pb::BatchState::Paused,
        BatchPhase::Succeeded => pb::BatchState::Succeeded,
        BatchPhase::Failed => pb::BatchState::Failed,
        BatchPhase::Cancelled => pb::BatchState::Cancelled,
    }
}

/// The phase a wire state names (None for UNSPECIFIED or an unknown value).
pub fn batch_phase(state: i32) -> Option<BatchPhase> {
    match pb::BatchState::try_from(state).ok()? {
        pb::BatchState::Queued => Some(BatchPhase::Queued),
        pb::BatchState::Running => Some(BatchPhase::Running),
        pb::BatchState::Paused => Some(BatchPhase::Paused),
        pb::BatchState::Succeeded => Some(BatchPhase::Succeeded),
        pb::BatchState::Failed => Some(BatchPhase::Failed),
        pb::BatchState::Cancelled => Some(BatchPhase::Cancelled),
        pb::BatchState::Unspecified => None,
    }
}

pub fn batch(b: &BatchRecord) -> pb::Batch {
    pb::Batch {
        id: b.id.to_string(),
        name: b.name.clone(),
        priority: b.priority,
        labels: b.labels.clone().into_iter().collect(),
        state: batch_state(b.phase()) as i32,
        counts: Some(counts(&b.counts)),
        created_at_ms: b.created_ms,
        finished_at_ms: b.finished_ms.unwrap_or(0),
        max_attempts: b.max_attempts,
        owner: b.owner.clone(),
        started_at_ms: b.started_ms.unwrap_or(0),
        requires: b.requires.iter().map(ToString::to_string).collect(),
        notify: b.notify.urls.clone(),
        notify_on: notify_on(b.notify.on) as i32,
    }
}

pub fn notify_on(on: NotifyOn) -> pb::NotifyOn {
    match on {
        NotifyOn::BatchEnd => pb::NotifyOn::BatchEnd,
        NotifyOn::Failures => pb::NotifyOn::Failures,
    }
}

pub fn outputs(o: &JobOutputs) -> pb::JobResult {
    pb::JobResult {
        prefix: o.prefix.clone(),
        outputs: o.files.iter().map(|f| pb::OutputFile { key: f.key.clone(), size_bytes: f.size_bytes, kind: f.kind.as_str().to_string() }).collect(),
        final_loss: o.final_loss,
        iterations: o.iterations,
        engine_ms: o.engine_ms,
        device: o.device.clone(),
        spans: o.spans.iter().map(span).collect(),
    }
}

pub fn span(s: &SpanRecord) -> pb::SpanTiming {
    pb::SpanTiming { name: s.name.clone(), offset_ms: s.offset_ms, duration_ms: s.duration_ms, depth: s.depth, detail: s.detail.clone() }
}

pub fn attempt(a: &AttemptRecord) -> pb::Attempt {
    pb::Attempt {
        attempt: a.attempt,
        worker_id: a.worker.map(|w| w.to_string()).unwrap_or_default(),
        leased_at_ms: a.leased_ms,
        ended_at_ms: a.ended_ms,
        outcome: a.outcome.label().into(),
        reason: a.reason.clone(),
        spans: a.spans.iter().map(span).collect(),
    }
}

/// A job for clients: never its lease secret.
pub fn job_state(kind: StateKind) -> pb::JobState {
    match kind {
        StateKind::Queued => pb::JobState::Queued,
        StateKind::Running => pb::JobState::Running,
        StateKind::Succeeded => pb::JobState::Succeeded,
        StateKind::Failed => pb::JobState::Failed,
        StateKind::Cancelled => pb::JobState::Cancelled,
    }
}

pub fn cancel_outcome(outcome: CancelOutcome) -> pb::CancelOutcome {
    match outcome {
        CancelOutcome::CancelledNow => pb::CancelOutcome::Cancelled,
        CancelOutcome::Signalled => pb::CancelOutcome::Signalled,
        CancelOutcome::AlreadyFinished => pb::CancelOutcome::AlreadyFinished,
    }
}

pub fn job(j: &JobRecord, progress: Option<&pb::JobProgress>, waiting: Option<&str>) -> pb::Job {
    let state = job_state(j.state.kind());
    let (worker, result, cancel_requested) = match &j.state {
        JobState::Queued { .. } | JobState::Cancelled => (None, None, false),
        JobState::Running { worker, cancel_requested, .. } => (Some(*worker), None, *cancel_requested),
        JobState::Succeeded { worker, outputs: o } => (Some(*worker), Some(outputs(o)), false),
        JobState::Failed { worker, .. } => (*worker, None, false),
    };
    let (error, error_retryable) = match (&j.state, &j.last_failure) {
        (JobState::Failed { reason, retryable, .. }, _) => (reason.clone(), *retryable),
        (_, Some(f)) => (f.reason.clone(), f.retryable),
        _ => (String::new(), false),
    };
    let worker = worker.or_else(|| j.last_failure.as_ref().and_then(|f| f.worker));
    let task = j.task.as_deref().and_then(|t| VideoTask::parse(t).ok());
    let tile = if task.is_none() { j.task.as_deref().and_then(|t| TileTask::parse(t).ok()) } else { None };
    let (step, frame) = video_step(task.as_ref());
    pb::Job {
        id: j.id.to_string(),
        batch_id: j.batch.to_string(),
        index: j.index,
        name: j.name.clone(),
        state: state as i32,
        attempt: j.attempt,
        max_attempts: j.max_attempts,
        worker_id: worker.map(|w| w.to_string()).unwrap_or_default(),
        content: Some(image_ref(&j.content)),
        styles: j.styles.iter().map(image_ref).collect(),
        params_json: j.params_json.clone(),
        estimate_bytes: j.estimate_bytes,
        error,
        error_retryable,
        result,
        progress: progress.cloned(),
        created_at_ms: j.created_ms,
        started_at_ms: j.started_ms.unwrap_or(0),
        finished_at_ms: j.finished_ms.unwrap_or(0),
        cancel_requested,
        priority: j.priority,
        waiting_reason: waiting.unwrap_or_default().to_string(),
        time_limit_ms: j.time_limit_ms,
        attempts_handed_back: j.handed_back,
        attempts: Vec::new(),
        depends_on: j.depends_on.iter().map(|d| d.to_string()).collect(),
        task: task.as_ref().map(VideoTask::label).or_else(|| tile.as_ref().map(TileTask::label)).unwrap_or_default(),
        step: step as i32,
        frame,
        requires: j.requires.iter().map(ToString::to_string).collect(),
        tile: tile.as_ref().map(tile_part),
    }
}

/// A tiled render's job on the wire: its tile's place, or its scale's assembly.
fn tile_part(task: &TileTask) -> pb::TilePart {
    let (kind, scale, width, height, rect) = match task {
        TileTask::Tile { scale, rect, width, height, .. } => (pb::TilePartKind::Tile, scale, width, height, *rect),
        TileTask::Assemble { scale, width, height, .. } => {
            (pb::TilePartKind::Assemble, scale, width, height, Rect { x: 0, y: 0, width: *width, height: *height })
        }
    };
    pb::TilePart {
        kind: kind as i32,
        scale: scale + 1,
        image_width: *width,
        image_height: *height,
        x: rect.x,
        y: rect.y,
        width: rect.width,
        height: rect.height,
    }
}

/// A video job's step and the frame (from 1) it makes or ends at.
fn video_step(task: Option<&VideoTask>) -> (pb::VideoStep, u32) {
    match task {
        None => (pb::VideoStep::Unspecified, 0),
        Some(VideoTask::Decode { .. }) => (pb::VideoStep::Decode, 0),
        Some(VideoTask::Flow { frame }) => (pb::VideoStep::Flow, frame + 1),
        Some(VideoTask::Frame { frame, .. }) => (pb::VideoStep::Frame, frame + 1),
        Some(VideoTask::Seam { frame, .. }) => (pb::VideoStep::Seam, frame + 1),
        Some(VideoTask::Assemble { .. }) => (pb::VideoStep::Assemble, 0),
    }
}

pub fn worker(w: &WorkerRecord, running: Vec<String>, now: Millis, heartbeat_ms: Millis) -> pb::Worker {
    pb::Worker {
        id: w.id.to_string(),
        name: w.name.clone(),
        devices: w.devices.iter().map(|d| pb::Device { name: d.name.clone(), memory_bytes: d.memory_bytes, description: d.description.clone() }).collect(),
        version: w.version.clone(),
        connected: now - w.last_seen_ms <= 3 * heartbeat_ms,
        registered_at_ms: w.registered_ms,
        last_seen_at_ms: w.last_seen_ms,
        running_jobs: running,
        succeeded: w.succeeded,
        failed: w.failed,
        memory: w.readings.memory.iter().map(|m| pb::DeviceMemory { device: m.device.clone(), used_bytes: m.used_bytes, total_bytes: m.total_bytes }).collect(),
        busy: w.readings.busy.iter().map(|b| pb::DeviceBusy { device: b.device.clone(), fraction: b.fraction, window_s: b.window_s }).collect(),
        availability: match w.availability {
            Availability::Enabled => pb::WorkerAvailability::Enabled,
            Availability::Disabled => pb::WorkerAvailability::Disabled,
        } as i32,
        labels: w.labels.clone().into_iter().collect(),
    }
}
