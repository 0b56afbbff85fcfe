//! A clip's knobs as command-line flags, shared by `stylefarm submit --video`
//! and `stylefarm-worker video`: unset flags keep [`VideoParams`]' defaults
//! (the first frame of a chain takes the render's `--iterations`).

use clap::Args;
use serde_json::{Map, Value};

use crate::error::Result;
use crate::video::VideoParams;

#[derive(Args, Debug, Default, Clone, PartialEq)]
pub struct VideoKnobArgs {
    /// Weight of the short-term temporal loss, relative to the frame's content, style and tv losses [default: 3].
    #[arg(long)]
    pub temporal_weight: Option<f64>,
    /// Iterations of each segment's first frame [default: --iterations].
    #[arg(long)]
    pub first_iterations: Option<u32>,
    /// Iterations of every warm-started frame [default: 20].
    #[arg(long)]
    pub frame_iterations: Option<u32>,
    /// Frames per segment; segments are chains that run side by side [default: 24].
    #[arg(long)]
    pub segment_frames: Option<u32>,
    /// Frames where consecutive segments overlap, cross-faded and re-optimised [default: 3].
    #[arg(long)]
    pub overlap: Option<u32>,
    /// Start this many seconds into the clip.
    #[arg(long)]
    pub start: Option<f64>,
    /// Take this many seconds of the clip (default: to the end).
    #[arg(long)]
    pub duration: Option<f64>,
}

impl VideoKnobArgs {
    /// The flags that were given, as VideoParams fields.
    pub fn overlay(&self) -> Map<String, Value> {
        let mut map = Map::new();
        let mut set = |key: &str, value: Option<Value>| {
            if let Some(v) = value {
                map.insert(key.to_string(), v);
            }
        };
        set("temporal_weight", self.temporal_weight.map(Value::from));
        set("first_iterations", self.first_iterations.map(Value::from));
        set("frame_iterations", self.frame_iterations.map(Value::from));
        set("segment_frames", self.segment_frames.map(Value::from));
        set("overlap", self.overlap.map(Value::from));
        set("start_s", self.start.map(Value::from));
        set("duration_s", self.duration.map(Value::from));
        map
    }

    /// The clip's parameters, checked; `iterations` is the render's.
    pub fn to_params(&self, iterations: u32) -> Result<VideoParams> {
        VideoParams::from_overlay(self.overlay(), iterations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_flags_keep_the_defaults_and_the_first_frame_takes_the_iterations() {
        let knobs = VideoKnobArgs { overlap: Some(2), duration: Some(1.5), ..Default::default() };
        let params = knobs.to_params(80).unwrap();
        assert_eq!((params.overlap, params.duration_s, params.first_iterations), (2, 1.5, 80));
        assert_eq!(params.frame_iterations, VideoParams::default().frame_iterations);
        let bad = VideoKnobArgs { segment_frames: Some(1), ..Default::default() };
        assert_eq!(bad.to_params(80).unwrap_err().field, "segment_frames");
    }
}
