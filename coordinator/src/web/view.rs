//! What the dashboard's script receives: compact JSON views of the wire
//! messages (prost types do not serialise), shared by the JSON API and the
//! server-sent events.

use serde::Serialize;
use stylefarm_proto as pb;

/// A loss-trace row as `[iteration, total, content, style, tv, scale, elapsed_ms]`.
pub type Row = [f64; 7];

pub fn row(r: &pb::LossRow) -> Row {
    [r.iteration as f64, r.total, r.content, r.style, r.tv, r.scale as f64, r.elapsed_ms]
}

pub fn state_name(state: i32) -> &'static str {
    pb::names::job_state(state).unwrap_or("unknown")
}

pub fn batch_state_name(state: i32) -> &'static str {
    pb::names::batch_state(state).unwrap_or("unknown")
}

pub fn event_name(kind: i32) -> &'static str {
    match pb::EventKind::try_from(kind).unwrap_or(pb::EventKind::Unspecified) {
        pb::EventKind::Snapshot => "snapshot",
        pb::EventKind::Queued => "queued",
        pb::EventKind::Started => "started",
        pb::EventKind::Progress => "progress",
        pb::EventKind::Succeeded => "succeeded",
        pb::EventKind::Failed => "failed",
        pb::EventKind::Cancelled => "cancelled",
        pb::EventKind::BatchFinished => "batch_finished",
        pb::EventKind::Waiting => "waiting",
        pb::EventKind::BatchChanged => "batch_changed",
        pb::EventKind::BatchDeleted => "batch_deleted",
        pb::EventKind::Unspecified => "unknown",
    }
}

#[derive(Debug, Serialize)]
pub struct BatchView {
    pub id: String,
    pub name: String,
    pub state: &'static str,
    pub owner: String,
    pub priority: i32,
    pub total: u32,
    pub queued: u32,
    pub running: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub cancelled: u32,
    pub created_ms: i64,
    pub started_ms: i64,
    pub finished_ms: i64,
}

impl BatchView {
    pub fn of(b: &pb::Batch) -> BatchView {
        let c = b.counts.unwrap_or_default();
        BatchView {
            id: b.id.clone(),
            name: b.name.clone(),
            state: batch_state_name(b.state),
            owner: b.owner.clone(),
            priority: b.priority,
            total: c.total,
            queued: c.queued,
            running: c.running,
            succeeded: c.succeeded,
            failed: c.failed,
            cancelled: c.cancelled,
            created_ms: b.created_at_ms,
            started_ms: b.started_at_ms,
            finished_ms: b.finished_at_ms,
        }
    }
}

/// An output file by its name inside the attempt's prefix.
#[derive(Debug, Serialize)]
pub struct FileView {
    pub name: String,
    pub kind: String,
    pub size: u64,
}

pub fn files(job: &pb::Job) -> Vec<FileView> {
    let Some(result) = &job.result else { return Vec::new() };
    result
        .outputs
        .iter()
        .map(|o| FileView { name: o.key.strip_prefix(&result.prefix).unwrap_or(&o.key).to_string(), kind: o.kind.clone(), size: o.size_bytes })
        .collect()
}

#[derive(Debug, Serialize)]
pub struct JobView {
    pub id: String,
    pub batch_id: String,
    pub index: u32,
    pub name: String,
    pub state: &'static str,
    pub attempt: u32,
    pub worker_id: String,
    pub iteration: u32,
    pub total_iterations: u32,
    pub scale: u32,
    pub scales: u32,
    /// The latest row, if any.
    pub latest: Option<Row>,
    /// Rows since the previous event (progress events only).
    pub rows: Vec<Row>,
    pub error: String,
    pub waiting_reason: String,
    pub files: Vec<FileView>,
    pub final_loss: Option<f64>,
    pub started_ms: i64,
    pub finished_ms: i64,
    /// A video job's step makes or joins a frame (the page redraws its frames).
    pub video: bool,
    /// A tiled render's tile or assembly (the page redraws its mosaic).
    pub tile: bool,
}

impl JobView {
    pub fn of(j: &pb::Job) -> JobView {
        let progress = j.progress.clone().unwrap_or_default();
        JobView {
            id: j.id.clone(),
            batch_id: j.batch_id.clone(),
            index: j.index,
            name: j.name.clone(),
            state: state_name(j.state),
            attempt: j.attempt,
            worker_id: j.worker_id.clone(),
            iteration: progress.iteration,
            total_iterations: progress.total_iterations,
            scale: progress.scale,
            scales: progress.scales,
            latest: progress.latest.as_ref().map(row),
            rows: progress.rows.iter().map(row).collect(),
            error: j.error.clone(),
            waiting_reason: j.waiting_reason.clone(),
            files: files(j),
            final_loss: j.result.as_ref().map(|r| r.final_loss).filter(|l| l.is_finite()),
            started_ms: j.started_at_ms,
            finished_ms: j.finished_at_ms,
            video: j.step != pb::VideoStep::Unspecified as i32,
            tile: j.tile.is_some(),
        }
    }
}

/// One server-sent event's data.
#[derive(Debug, Serialize)]
pub struct EventView {
    pub kind: &'static str,
    pub batch: Option<BatchView>,
    pub job: Option<JobView>,
    pub at_ms: i64,
}

impl EventView {
    pub fn of(e: &pb::WatchEvent) -> EventView {
        EventView { kind: event_name(e.kind), batch: e.batch.as_ref().map(BatchView::of), job: e.job.as_ref().map(JobView::of), at_ms: e.at_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_view_names_its_files_inside_the_attempt() {
        let job = pb::Job {
            id: "j7".into(),
            state: pb::JobState::Succeeded as i32,
            result: Some(pb::JobResult {
                prefix: "batches/b1/jobs/j7/attempt-2/".into(),
                outputs: vec![pb::OutputFile { key: "batches/b1/jobs/j7/attempt-2/output.png".into(), size_bytes: 10, kind: "image".into() }],
                final_loss: f64::NAN,
                ..Default::default()
            }),
            ..Default::default()
        };
        let view = JobView::of(&job);
        assert_eq!(view.state, "succeeded");
        assert_eq!(view.files[0].name, "output.png");
        assert_eq!(view.final_loss, None, "a NaN loss is absent, not invalid JSON");
        let json = serde_json::to_string(&view).unwrap();
        assert!(json.contains("\"final_loss\":null"), "{json}");
    }
}
