//! What a lease asks this worker to do, as one enum, and the dispatch to the
//! kind of task that does it: a render ([`super::render`]), or a step of a
//! video batch ([`super::video_task`]: decode, flow, assemble; its frames and
//! seams render with their own content and start). A job goes through it in
//! two parts: [`prepare`] (off the device, while another job renders) and
//! [`run`] (its turn on the device).

use std::sync::Arc;

use stylefarm_core::tiling::TileTask;
use stylefarm_core::video::VideoTask;
use stylefarm_engine::params::RenderParams;
use stylefarm_proto as pb;

use super::attempt::{failed, JobContext, Outcome, RunningJob};
use super::render::{self, FrameInputs, StartInputs, WeightsSlot};
use super::{tile_task, video_task};

/// A lease's task.
#[derive(Debug)]
pub enum Task {
    /// Content × styles → one image (the lease's plain job).
    Render,
    /// A video batch's job: a step, or a frame or seam that renders.
    Video(VideoTask),
    /// A tiled print's job: a tile that renders, or a scale's assembly.
    Tile(TileTask),
}

impl Task {
    /// The lease's task (a bad `task_json` is the job's own permanent failure).
    pub fn of(lease: &pb::Lease) -> Result<Task, String> {
        if lease.task_json.is_empty() {
            return Ok(Task::Render);
        }
        if let Ok(video) = VideoTask::parse(&lease.task_json) {
            return Ok(Task::Video(video));
        }
        TileTask::parse(&lease.task_json).map(Task::Tile).map_err(|e| format!("invalid task_json: neither a video nor a tile task: {e}"))
    }
}

/// A leased job made ready for its device.
pub enum Ready {
    /// A render (a plain job, or a video frame or seam) with its inputs decoded.
    Render(Box<render::Prepared>),
    /// A video step (decode, flow, assemble): it runs whole in its turn.
    Step(Box<(VideoTask, RenderParams)>),
    /// A tiled scale's assembly: it runs whole in its turn.
    Assemble(Box<(TileTask, RenderParams)>),
}

/// What a job's turn on the device left.
pub enum Turn {
    /// The engine finished: the outputs are still to be written and uploaded.
    Rendered(Box<render::Engined>),
    /// The job ended there (a step, a failure, a stop).
    Ended(Outcome),
}

/// Reads the lease's task and gets everything ready that does not need the
/// device: a render's inputs fetched and decoded, a frame's start too.
pub async fn prepare(ctx: &JobContext, job: &Arc<RunningJob>) -> Result<Ready, Outcome> {
    let lease = &job.lease;
    let params: RenderParams = serde_json::from_str(&lease.params_json).map_err(|e| failed(format!("invalid params_json: {e}"), false))?;
    let start = match Task::of(lease).map_err(|reason| failed(reason, false))? {
        Task::Render => StartInputs::Init,
        // decode, flow, assemble: no network to run
        Task::Video(step) if !step.renders() => return Ok(Ready::Step(Box::new((step, params)))),
        // a frame's content is its decoded frame; its start comes from earlier jobs' outputs
        Task::Video(frame) => {
            let (content_url, prior) = video_task::frame_inputs(ctx, lease, &frame).await?;
            StartInputs::Frame(FrameInputs { content_url, prior })
        }
        Task::Tile(task @ TileTask::Assemble { .. }) => return Ok(Ready::Assemble(Box::new((task, params)))),
        // a tile: the lease's content and styles, its place, the scale before's image
        Task::Tile(tile) => StartInputs::Tile(tile_task::tile_inputs(ctx, lease, &tile).await?),
    };
    render::prepare(ctx, job, params, start).await.map(|p| Ready::Render(Box::new(p)))
}

/// The job's turn on the device; `slot` carries loaded weights from one job to the next.
pub async fn run(ctx: &JobContext, job: &Arc<RunningJob>, slot: &mut Option<WeightsSlot>, ready: Ready) -> Turn {
    match ready {
        Ready::Render(prepared) => match render::render(ctx, job, slot, *prepared).await {
            Ok(engined) => Turn::Rendered(Box::new(engined)),
            Err(outcome) => Turn::Ended(outcome),
        },
        Ready::Step(step) => Turn::Ended(video_task::execute_step(ctx, job, &step.0, &step.1).await),
        Ready::Assemble(work) => Turn::Ended(tile_task::assemble(ctx, job, &work.0, &work.1).await),
    }
}
