//! The per-frame view of a video batch: for every frame of the clip, how far
//! its final picture is (waiting, being stylised, rendered by a segment but
//! its seam not yet joined, done, failed) and which job makes it. The client's
//! `status` and the dashboard's Batch page both draw it from this one rule.

use std::collections::BTreeMap;

use serde::Serialize;

/// A job's state, as far as the board cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Waiting,
    Running,
    Succeeded,
    /// Failed or cancelled.
    Ended,
}

/// A job that makes a frame: a segment's FRAME job, or the SEAM that joins two.
#[derive(Debug, Clone, Copy)]
pub struct Maker {
    /// The frame, from 0.
    pub frame: u32,
    pub seam: bool,
    pub phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameState {
    Waiting,
    Running,
    /// A segment's copy is done; the seam that makes the final picture is not.
    Rendered,
    Done,
    Failed,
}

impl FrameState {
    pub fn as_str(self) -> &'static str {
        match self {
            FrameState::Waiting => "waiting",
            FrameState::Running => "running",
            FrameState::Rendered => "rendered",
            FrameState::Done => "done",
            FrameState::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameCell {
    /// The frame, from 0.
    pub frame: u32,
    pub state: FrameState,
    /// Index (into the makers given) of the job whose output is the final picture.
    pub job: usize,
}

#[derive(Default)]
struct Acc {
    seam: Option<usize>,
    copies: Vec<usize>,
}

/// One cell per frame that has a maker, in frame order. `makers` yields
/// `(index, maker)`: the index is handed back in [`FrameCell::job`].
pub fn board(makers: impl IntoIterator<Item = (usize, Maker)>) -> Vec<FrameCell> {
    let mut frames: BTreeMap<u32, Acc> = BTreeMap::new();
    let mut phases: BTreeMap<usize, Phase> = BTreeMap::new();
    for (index, maker) in makers {
        let acc = frames.entry(maker.frame).or_default();
        if maker.seam {
            acc.seam = Some(index);
        } else {
            acc.copies.push(index);
        }
        phases.insert(index, maker.phase);
    }
    let phase = |index: usize| phases.get(&index).copied().unwrap_or(Phase::Waiting);
    frames
        .into_iter()
        .filter_map(|(frame, acc)| {
            let last = acc.seam.or_else(|| acc.copies.first().copied())?;
            let copies = || acc.copies.iter().map(|&i| phase(i));
            let state = match phase(last) {
                Phase::Succeeded => FrameState::Done,
                Phase::Ended => FrameState::Failed,
                p if p == Phase::Running || copies().any(|c| c == Phase::Running) => FrameState::Running,
                _ if copies().any(|c| c == Phase::Succeeded) => FrameState::Rendered,
                _ => FrameState::Waiting,
            };
            Some(FrameCell { frame, state, job: last })
        })
        .collect()
}

/// How many frames are in each state, in [`FrameState`] order.
pub fn tally(cells: &[FrameCell]) -> [(FrameState, usize); 5] {
    let states = [FrameState::Done, FrameState::Running, FrameState::Rendered, FrameState::Waiting, FrameState::Failed];
    states.map(|s| (s, cells.iter().filter(|c| c.state == s).count()))
}

/// "24 frames: 18 done, 2 running, 1 rendered, 3 waiting" (states with none left out).
pub fn summary(cells: &[FrameCell]) -> String {
    let parts: Vec<String> = tally(cells).iter().filter(|(_, n)| *n > 0).map(|(s, n)| format!("{n} {}", s.as_str())).collect();
    format!("{} frames: {}", cells.len(), parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(frame: u32, seam: bool, phase: Phase) -> Maker {
        Maker { frame, seam, phase }
    }

    #[test]
    fn a_frame_is_done_when_its_final_job_is_and_a_seam_outranks_its_copies() {
        use Phase::*;
        // frames 0-1 in segment 1 only; frame 2 in both segments with a seam; frame 3 in segment 2
        let makers = [m(0, false, Succeeded), m(1, false, Running), m(2, false, Succeeded), m(2, false, Waiting), m(2, true, Waiting), m(3, false, Ended)];
        let cells = board(makers.iter().copied().enumerate());
        let states: Vec<_> = cells.iter().map(|c| c.state).collect();
        assert_eq!(states, [FrameState::Done, FrameState::Running, FrameState::Rendered, FrameState::Failed]);
        assert_eq!(cells[2].job, 4, "the seam makes frame 3's picture");
        // the later copy running shows the frame as running; the seam done makes it done
        let cells = board([m(2, false, Succeeded), m(2, false, Running), m(2, true, Waiting)].into_iter().enumerate());
        assert_eq!(cells[0].state, FrameState::Running);
        let cells = board([m(2, false, Succeeded), m(2, false, Succeeded), m(2, true, Succeeded)].into_iter().enumerate());
        assert_eq!(cells[0].state, FrameState::Done);
        // a failed seam fails the frame even though both copies were rendered
        let cells = board([m(2, false, Succeeded), m(2, false, Succeeded), m(2, true, Ended)].into_iter().enumerate());
        assert_eq!(cells[0].state, FrameState::Failed);
        let cells = board(makers.iter().copied().enumerate());
        assert_eq!(tally(&cells).map(|(_, n)| n), [1, 1, 1, 0, 1]);
        assert_eq!(summary(&cells), "4 frames: 1 done, 1 running, 1 rendered, 1 failed");
        assert!(board(std::iter::empty()).is_empty());
    }
}
