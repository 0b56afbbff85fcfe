//! Videos: the knobs of a stylised clip, the limits a clip must fit, what
//! ffmpeg finds in one ([`probe`]), and how its frames are split into segments that
//! run in parallel. Shared by the coordinator (which checks a clip before any
//! job runs), the worker and the client; no libtorch, no ffmpeg here (see
//! [`crate::ffmpeg`] for running it).

use serde::{Deserialize, Serialize};

use crate::error::{ParamError, Result};

pub mod board;
pub mod container;
pub mod probe;
pub use probe::Probe;

/// Most frames one video batch may have (a flag may lower it).
pub const MAX_FRAMES: u32 = 10_000;
/// Largest input frame side a clip may have, in pixels.
pub const MAX_INPUT_SIDE: u32 = 8192;
/// Most frames in one segment.
pub const MAX_SEGMENT_FRAMES: u32 = 1_000;
/// Most overlapping frames between segments.
pub const MAX_OVERLAP: u32 = 16;
/// Frame rates a clip may have (frames per second).
pub const FPS_RANGE: (f64, f64) = (0.1, 240.0);

/// How a clip is stylised, beyond the per-frame render knobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VideoParams {
    /// Weight of the short-term temporal loss, relative to the frame's other
    /// losses: straying from the warped previous frame everywhere by as much
    /// as the content's own spread costs this many times what content, style
    /// and tv cost at the frame's start (so it holds the same at every size,
    /// preset and style). 0 turns temporal consistency off (frames are still
    /// warm-started).
    pub temporal_weight: f64,
    /// Iterations of the first frame of every segment (cold start).
    pub first_iterations: u32,
    /// Iterations of every other frame (warm-started from the previous one).
    pub frame_iterations: u32,
    /// Frames per segment; segments run in parallel on different workers.
    pub segment_frames: u32,
    /// Frames a segment starts before its boundary; the previous segment's
    /// frames there are cross-faded into its own.
    pub overlap: u32,
    /// Seconds into the clip to start at.
    pub start_s: f64,
    /// Seconds of the clip to take (0: to the end).
    pub duration_s: f64,
}

impl Default for VideoParams {
    fn default() -> Self {
        VideoParams { temporal_weight: 3.0, first_iterations: 60, frame_iterations: 20, segment_frames: 24, overlap: 3, start_s: 0.0, duration_s: 0.0 }
    }
}

impl VideoParams {
    /// The defaults with `overlay`'s fields (VideoParams fields as JSON) on top,
    /// checked; the first frame of a chain takes the render's `iterations`
    /// unless the overlay says otherwise.
    pub fn from_overlay(mut overlay: serde_json::Map<String, serde_json::Value>, iterations: u32) -> Result<VideoParams> {
        overlay.entry("first_iterations").or_insert(iterations.into());
        let params: VideoParams =
            serde_json::from_value(serde_json::Value::Object(overlay)).map_err(|e| ParamError::new("video_params_json", e.to_string()))?;
        params.validate()?;
        Ok(params)
    }

    pub fn validate(&self) -> Result<()> {
        if !self.temporal_weight.is_finite() || self.temporal_weight < 0.0 || self.temporal_weight > 1e9 {
            return Err(ParamError::new("temporal_weight", format!("{} must be a finite number in 0..=1e9", self.temporal_weight)));
        }
        let its = crate::params::MAX_ITERATIONS;
        if !(1..=its).contains(&self.first_iterations) {
            return Err(ParamError::new("first_iterations", format!("{} must be in 1..={its}", self.first_iterations)));
        }
        if !(1..=its).contains(&self.frame_iterations) {
            return Err(ParamError::new("frame_iterations", format!("{} must be in 1..={its}", self.frame_iterations)));
        }
        if !(2..=MAX_SEGMENT_FRAMES).contains(&self.segment_frames) {
            return Err(ParamError::new("segment_frames", format!("{} must be in 2..={MAX_SEGMENT_FRAMES}", self.segment_frames)));
        }
        if self.overlap > MAX_OVERLAP || self.overlap >= self.segment_frames {
            return Err(ParamError::new(
                "overlap",
                format!("{} must be at most {MAX_OVERLAP} and less than segment_frames ({})", self.overlap, self.segment_frames),
            ));
        }
        for (field, value) in [("start_s", self.start_s), ("duration_s", self.duration_s)] {
            if !value.is_finite() || !(0.0..=86_400.0).contains(&value) {
                return Err(ParamError::new(field, format!("{value} must be in 0..=86400 seconds")));
            }
        }
        Ok(())
    }
}

/// One chain of frames stylised in order by one job after another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// First frame the chain renders (0-based; a cold start).
    pub first: u32,
    /// The first frame this segment owns outright (`first` + overlap, except the first segment).
    pub owns_from: u32,
    /// One past the last frame.
    pub end: u32,
}

impl Segment {
    pub fn frames(&self) -> std::ops::Range<u32> {
        self.first..self.end
    }
}

/// Splits `frames` frames into chains of about `segment_frames` each; every
/// chain after the first starts `overlap` frames before the frame it owns from.
pub fn plan_segments(frames: u32, segment_frames: u32, overlap: u32) -> Vec<Segment> {
    let segment_frames = segment_frames.max(2);
    let count = frames.div_ceil(segment_frames).max(1);
    // spread evenly: no runt segment at the end
    let base = frames / count;
    let extra = frames % count;
    let mut segments = Vec::with_capacity(count as usize);
    let mut start = 0;
    let mut previous_len: u32 = 0;
    for k in 0..count {
        let len = base + u32::from(k < extra);
        // the earlier segment keeps at least one frame of its own before the fade
        let first = if k == 0 { 0 } else { start - overlap.min(previous_len.saturating_sub(1)) };
        segments.push(Segment { first, owns_from: start, end: start + len });
        start += len;
        previous_len = len;
    }
    segments
}

/// Which rendered copies make frame `frame`, with their weights (summing to 1):
/// one segment's, or in an overlap a cross-fade from the earlier segment's
/// copy into the later one's.
pub fn blend_of(segments: &[Segment], frame: u32) -> Vec<(usize, f64)> {
    let Some(owner) = segments.iter().position(|s| (s.owns_from..s.end).contains(&frame)) else {
        return Vec::new();
    };
    let next = owner + 1;
    if let Some(later) = segments.get(next) {
        if frame >= later.first {
            // frame k of the overlap (0-based) of n frames: the later copy weighs (k+1)/(n+1)
            let n = (later.owns_from - later.first) as f64;
            let k = (frame - later.first) as f64;
            let w = (k + 1.0) / (n + 1.0);
            return vec![(owner, 1.0 - w), (next, w)];
        }
    }
    vec![(owner, 1.0)]
}

/// What one job of a video batch does. Its dependencies' committed outputs
/// reach the worker in `depends_on` order, as each variant says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum VideoTask {
    /// Decode frames `first..end` of the clip's window (the content) into
    /// `frames/NNNNNN.png` (frame numbers of the window, from 1). No inputs.
    Decode { first: u32, end: u32, video: VideoParams },
    /// The flow from `frame` back to `frame − 1` with its mask, at the render
    /// size, as `flow.safetensors`. Inputs: the decode job holding both frames.
    Flow { frame: u32 },
    /// One frame of a segment's chain as `frame.png` (+ trace): cold from the
    /// params' start, or warm from the previous frame of the chain. Inputs:
    /// the decode job holding it; when warm, then the flow of `frame` and the
    /// chain's previous frame.
    Frame { frame: u32, segment: u32, warm: bool, video: VideoParams },
    /// An overlap frame: the cross-fade of two segments' copies (`weight` on
    /// the later one), re-optimised. Inputs: the decode job, the earlier copy, the later copy.
    Seam { frame: u32, weight: f64, video: VideoParams },
    /// Encode the final frames at the clip's rate with its audio into
    /// `output`. Inputs: the job that made each frame, in frame order.
    Assemble { frames: u32, fps_num: u32, fps_den: u32, has_audio: bool, video: VideoParams, output: String },
}

impl VideoTask {
    pub fn parse(json: &str) -> Result<VideoTask> {
        serde_json::from_str(json).map_err(|e| ParamError::new("task", format!("not a video task: {e}")))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a task serialises")
    }

    /// A short label for lists ("frame 12", "flow 12", "assemble").
    pub fn label(&self) -> String {
        match self {
            VideoTask::Decode { first, end, .. } => format!("decode {}-{}", first + 1, end),
            VideoTask::Flow { frame } => format!("flow {}", frame + 1),
            VideoTask::Frame { frame, segment, warm, .. } => format!("frame {} (segment {}{})", frame + 1, segment + 1, if *warm { "" } else { ", cold" }),
            VideoTask::Seam { frame, .. } => format!("seam {}", frame + 1),
            VideoTask::Assemble { .. } => "assemble".into(),
        }
    }

    /// Whether it runs the network (and needs the device memory of a render).
    pub fn renders(&self) -> bool {
        matches!(self, VideoTask::Frame { .. } | VideoTask::Seam { .. })
    }
}

/// One job of a video batch's plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedJob {
    pub name: String,
    pub task: VideoTask,
    /// Indices of earlier jobs of the plan.
    pub depends_on: Vec<u32>,
}

/// Every job of a clip of `frames` frames: per segment a decode job, the flows
/// of its frames, its chain of frames; a seam job per overlap frame; and the
/// assembly, which waits on whichever job made each final frame. Flows and
/// segments are independent of each other, so a farm runs them side by side.
pub fn plan_jobs(stem: &str, probe: &Probe, frames: u32, video: &VideoParams) -> Vec<PlannedJob> {
    let segments = plan_segments(frames, video.segment_frames, video.overlap);
    let mut jobs: Vec<PlannedJob> = Vec::new();
    let push = |jobs: &mut Vec<PlannedJob>, name: String, task: VideoTask, depends_on: Vec<u32>| -> u32 {
        jobs.push(PlannedJob { name, task, depends_on });
        jobs.len() as u32 - 1
    };
    // decode: each segment's frames and the one before (its first flow needs it)
    let decodes: Vec<u32> = segments
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let first = s.first.saturating_sub(1);
            push(&mut jobs, format!("decode-s{:02}", k + 1), VideoTask::Decode { first, end: s.end, video: video.clone() }, vec![])
        })
        .collect();
    let owner = |frame: u32| segments.iter().position(|s| (s.owns_from..s.end).contains(&frame)).expect("every frame has an owner");
    let decode_of = |frame: u32| decodes[owner(frame)];
    let mut flows = vec![None; frames as usize];
    for (t, slot) in flows.iter_mut().enumerate().skip(1) {
        let t = t as u32;
        *slot = Some(push(&mut jobs, format!("flow-{:06}", t + 1), VideoTask::Flow { frame: t }, vec![decode_of(t)]));
    }
    let mut copies: Vec<std::collections::BTreeMap<u32, u32>> = Vec::new();
    for (k, s) in segments.iter().enumerate() {
        let mut chain = std::collections::BTreeMap::new();
        let mut previous: Option<u32> = None;
        for t in s.frames() {
            let warm = previous.is_some();
            let mut deps = vec![decodes[k]];
            if let (Some(p), Some(flow)) = (previous, flows[t as usize]) {
                deps.extend([flow, p]);
            }
            let task = VideoTask::Frame { frame: t, segment: k as u32, warm, video: video.clone() };
            let id = push(&mut jobs, format!("frame-{:06}-s{:02}", t + 1, k + 1), task, deps);
            chain.insert(t, id);
            previous = Some(id);
        }
        copies.push(chain);
    }
    let mut finals = Vec::with_capacity(frames as usize);
    for t in 0..frames {
        let blend = blend_of(&segments, t);
        let made_by = match blend[..] {
            [(k, _)] => copies[k][&t],
            [(a, _), (b, weight)] => {
                let task = VideoTask::Seam { frame: t, weight, video: video.clone() };
                push(&mut jobs, format!("seam-{:06}", t + 1), task, vec![decode_of(t), copies[a][&t], copies[b][&t]])
            }
            _ => unreachable!("a frame is made by one or two segments"),
        };
        finals.push(made_by);
    }
    let output = format!("{stem}-stylised.mp4");
    let task = VideoTask::Assemble { frames, fps_num: probe.fps_num, fps_den: probe.fps_den, has_audio: probe.has_audio, video: video.clone(), output };
    push(&mut jobs, "assemble".into(), task, finals);
    jobs
}

/// A frame's file name in a clip's folders: 1-based, zero-padded (ffmpeg's `%06d`).
pub fn frame_name(frame: u32) -> String {
    format!("{:06}.png", frame + 1)
}

#[cfg(test)]
mod tests;
