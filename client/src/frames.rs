//! The per-frame view of a video batch in the terminal: `status` prints every
//! frame as one character in rows of 60 with a legend, `watch` keeps a
//! one-line strip in its header. The rule that decides a frame's state is
//! shared with the dashboard ([`stylefarm_proto::frames::frame_board`]).

use std::collections::HashMap;

use stylefarm_core::video::board::{summary, FrameCell, FrameState};
use stylefarm_proto as pb;
use stylefarm_proto::frames::frame_board;

const ROW: usize = 60;
/// The widest strip `watch` draws; longer clips share a character between frames.
const STRIP: usize = 60;

fn glyph(state: FrameState) -> char {
    match state {
        FrameState::Done => '█',
        FrameState::Rendered => '▒',
        FrameState::Running => '▸',
        FrameState::Waiting => '·',
        FrameState::Failed => '✗',
    }
}

/// How far along a state is, for a character standing for several frames
/// (it shows the least advanced; a failure shows over everything).
fn rank(state: FrameState) -> u8 {
    match state {
        FrameState::Failed => 0,
        FrameState::Waiting => 1,
        FrameState::Running => 2,
        FrameState::Rendered => 3,
        FrameState::Done => 4,
    }
}

/// At most `width` characters: one per frame, or per run of frames.
pub fn strip(cells: &[FrameCell], width: usize) -> String {
    let per = cells.len().div_ceil(width.max(1)).max(1);
    cells.chunks(per).map(|chunk| glyph(chunk.iter().map(|c| c.state).min_by_key(|s| rank(*s)).unwrap_or(FrameState::Waiting))).collect()
}

/// `status`'s view: the summary, a legend, and every frame in rows of 60; the
/// assembled clip's job. `None` for a batch of images.
pub fn view(jobs: &[pb::Job]) -> Option<String> {
    let cells = frame_board(jobs);
    if cells.is_empty() {
        return None;
    }
    let mut out = format!("{}\n  legend: █ done  ▒ rendered (seam to join)  ▸ running  · waiting  ✗ failed\n", summary(&cells));
    for row in cells.chunks(ROW) {
        out.push_str(&format!("  {:>6} {}\n", row[0].frame + 1, strip(row, ROW)));
    }
    let failed: Vec<String> = cells.iter().filter(|c| c.state == FrameState::Failed).take(5).map(|c| format!("{} ({})", c.frame + 1, jobs[c.job].id)).collect();
    if !failed.is_empty() {
        out.push_str(&format!("  failed frames: {}\n", failed.join(", ")));
    }
    if let Some(assemble) = stylefarm_proto::frames::assemble_job(jobs) {
        out.push_str(&format!("  clip: {} {}", assemble.id, crate::output::job_state_name(assemble.state)));
    }
    Some(out.trim_end().to_string())
}

/// `watch`'s header strip, kept from the jobs' events (a video batch's frame
/// and seam jobs only; bounded by the batch's size).
#[derive(Default)]
pub struct Follow {
    jobs: HashMap<String, pb::Job>,
}

impl Follow {
    /// Takes a job's event; the new strip when a frame's job changed state.
    pub fn update(&mut self, job: &pb::Job) -> Option<String> {
        let makes_frame = job.step == pb::VideoStep::Frame as i32 || job.step == pb::VideoStep::Seam as i32;
        if !makes_frame || self.jobs.get(&job.id).is_some_and(|known| known.state == job.state) {
            return None;
        }
        let lite = pb::Job { id: job.id.clone(), state: job.state, step: job.step, frame: job.frame, ..Default::default() };
        self.jobs.insert(job.id.clone(), lite);
        let jobs: Vec<pb::Job> = self.jobs.values().cloned().collect();
        let cells = frame_board(&jobs);
        Some(format!("{} {}", strip(&cells, STRIP), summary(&cells)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, step: pb::VideoStep, frame: u32, state: pb::JobState) -> pb::Job {
        pb::Job { id: id.into(), step: step as i32, frame, state: state as i32, ..Default::default() }
    }

    #[test]
    fn status_shows_each_frame_and_the_clip() {
        use pb::JobState::*;
        use pb::VideoStep::*;
        let jobs = vec![
            job("j1", Decode, 0, Succeeded),
            job("j2", Frame, 1, Succeeded),
            job("j3", Frame, 2, Running),
            job("j4", Frame, 3, Succeeded),
            job("j5", Frame, 3, Queued),
            job("j6", Seam, 3, Queued),
            job("j7", Frame, 4, Failed),
            job("j8", Assemble, 0, Queued),
        ];
        let text = view(&jobs).unwrap();
        assert!(text.starts_with("4 frames: 1 done, 1 running, 1 rendered, 1 failed"), "{text}");
        assert!(text.contains("      1 █▸▒✗"), "{text}");
        assert!(text.contains("failed frames: 4 (j7)"), "{text}");
        assert!(text.ends_with("clip: j8 queued"), "{text}");
        assert!(view(&[job("j1", pb::VideoStep::Unspecified, 0, Succeeded)]).is_none(), "a batch of images has no frames");
    }

    #[test]
    fn a_long_clip_shares_characters_showing_the_least_advanced_frame() {
        use pb::JobState::*;
        let jobs: Vec<pb::Job> = (1..=120).map(|f| job(&format!("j{f}"), pb::VideoStep::Frame, f, if f <= 100 { Succeeded } else { Queued })).collect();
        let cells = frame_board(&jobs);
        assert_eq!(strip(&cells, 60), format!("{}{}", "█".repeat(50), "·".repeat(10)));
        assert_eq!(strip(&cells, 7).chars().count(), 7);
        // watch: only state changes of frame jobs redraw
        let mut follow = Follow::default();
        assert!(follow.update(&jobs[0]).unwrap().ends_with("1 frames: 1 done"));
        assert!(follow.update(&jobs[0]).is_none(), "no change, no redraw");
        assert!(follow.update(&job("d", pb::VideoStep::Decode, 0, Running)).is_none());
    }
}
