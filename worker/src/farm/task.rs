//! What a lease asks this worker to do, as one enum, and the dispatch to the
//! kind of task that does it: a render ([`super::render`]), or a step of a
//! video batch ([`super::video_task`]: decode, flow, assemble; its frames and
//! seams render with their own content and start).

use std::sync::Arc;

use stylefarm_core::video::VideoTask;
use stylefarm_engine::params::RenderParams;
use stylefarm_proto as pb;

use super::attempt::{failed, JobContext, Outcome, RunningJob};
use super::render::{self, FrameInputs, WeightsSlot};
use super::video_task;

/// A lease's task.
#[derive(Debug)]
pub enum Task {
    /// Content × styles → one image (the lease's plain job).
    Render,
    /// A video batch's job: a step, or a frame or seam that renders.
    Video(VideoTask),
}

impl Task {
    /// The lease's task (a bad `task_json` is the job's own permanent failure).
    pub fn of(lease: &pb::Lease) -> Result<Task, String> {
        if lease.task_json.is_empty() {
            return Ok(Task::Render);
        }
        VideoTask::parse(&lease.task_json).map(Task::Video).map_err(|e| format!("invalid task_json: {e}"))
    }
}

/// Runs the lease's task; `slot` carries loaded weights from one job to the next.
pub async fn execute(ctx: &JobContext, job: &Arc<RunningJob>, slot: &mut Option<WeightsSlot>) -> Outcome {
    let lease = &job.lease;
    let params: RenderParams = match serde_json::from_str(&lease.params_json) {
        Ok(p) => p,
        Err(e) => return failed(format!("invalid params_json: {e}"), false),
    };
    let task = match Task::of(lease) {
        Ok(task) => task,
        Err(reason) => return failed(reason, false),
    };
    match task {
        Task::Render => render::execute(ctx, job, slot, params, None).await,
        // decode, flow, assemble: no network to run
        Task::Video(step) if !step.renders() => video_task::execute_step(ctx, job, &step, &params).await,
        // a frame's content is its decoded frame; its start comes from earlier jobs' outputs
        Task::Video(frame) => match video_task::frame_inputs(ctx, lease, &frame).await {
            Ok((content_url, prior)) => render::execute(ctx, job, slot, params, Some(FrameInputs { content_url, prior })).await,
            Err(outcome) => outcome,
        },
    }
}
