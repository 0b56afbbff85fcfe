//! The per-frame view of a video batch from its jobs as the API returns them
//! (`Job.step`, `Job.frame`, `Job.state`); the rule is
//! [`stylefarm_core::video::board`].

use stylefarm_core::video::board::{board, FrameCell, Maker, Phase};

use crate::v1::{Job, JobState, VideoStep};

fn maker(job: &Job) -> Option<Maker> {
    let seam = match VideoStep::try_from(job.step).ok()? {
        VideoStep::Frame => false,
        VideoStep::Seam => true,
        _ => return None,
    };
    let phase = match JobState::try_from(job.state).ok()? {
        JobState::Running => Phase::Running,
        JobState::Succeeded => Phase::Succeeded,
        JobState::Failed | JobState::Cancelled => Phase::Ended,
        _ => Phase::Waiting,
    };
    Some(Maker { frame: job.frame.checked_sub(1)?, seam, phase })
}

/// One cell per frame (from 0), each naming the index in `jobs` of the job
/// whose output is the frame's final picture; empty for a batch of images.
pub fn frame_board(jobs: &[Job]) -> Vec<FrameCell> {
    board(jobs.iter().enumerate().filter_map(|(i, j)| Some((i, maker(j)?))))
}

/// The batch's assembled clip: its ASSEMBLE job.
pub fn assemble_job(jobs: &[Job]) -> Option<&Job> {
    jobs.iter().find(|j| j.step == VideoStep::Assemble as i32)
}
