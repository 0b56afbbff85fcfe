//! What a clip holds, read with ffmpeg alone (no ffprobe, so the static ffmpeg
//! of the PyPI wheel `imageio-ffmpeg` is all a machine needs):
//!
//! ```text
//! ffmpeg -hide_banner -nostats -i CLIP -map 0:v:0? -map 0:a:0? -c copy -f framecrc -
//! ```
//!
//! copies the packets of the first video and audio streams without decoding
//! them and lists one line per packet, after `#` headers with each stream's
//! time base, media type, codec and frame size. The frame count is the number
//! of video packets; the rate is exact when every packet lasts the same and
//! they tile the clip (MP4, most containers), else it is ffmpeg's own guess printed on stderr (`tbr`,
//! which ffprobe calls `r_frame_rate`), snapped to the integer or NTSC
//! (×1000/1001) rate it rounds from. [`FramecrcScan`] reads the lines one at a
//! time in constant memory, however long the clip.

use serde::{Deserialize, Serialize};

use super::{VideoParams, FPS_RANGE, MAX_INPUT_SIDE};
use crate::error::{ParamError, Result};

/// A clip's first video stream (and whether it has audio).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub width: u32,
    pub height: u32,
    /// The frame rate as a fraction, e.g. 30000/1001.
    pub fps_num: u32,
    pub fps_den: u32,
    /// Frames in the clip (its video packets).
    pub frames: u32,
    pub duration_s: f64,
    pub has_audio: bool,
}

impl Probe {
    pub fn fps(&self) -> f64 {
        self.fps_num as f64 / self.fps_den.max(1) as f64
    }

    /// Frames of `[start_s, start_s + duration_s)` (0 duration: to the end).
    pub fn frames_in(&self, video: &VideoParams) -> u32 {
        let fps = self.fps();
        let skip = (video.start_s * fps).round() as u64;
        let left = (self.frames as u64).saturating_sub(skip);
        let take = if video.duration_s > 0.0 { ((video.duration_s * fps).round() as u64).min(left) } else { left };
        take as u32
    }

    /// Refuses what the farm cannot take, naming the field and the limit.
    pub fn check(&self, field: &str, video: &VideoParams, max_frames: u32) -> Result<u32> {
        let bad = |reason: String| ParamError::new(field, reason);
        if self.width == 0 || self.height == 0 {
            return Err(bad("not a video: its video stream has no frame size".into()));
        }
        if self.width > MAX_INPUT_SIDE || self.height > MAX_INPUT_SIDE {
            return Err(bad(format!("{}×{} exceeds the limit of {MAX_INPUT_SIDE} pixels per side", self.width, self.height)));
        }
        let fps = self.fps();
        if !(FPS_RANGE.0..=FPS_RANGE.1).contains(&fps) {
            return Err(bad(format!("frame rate {fps:.3} is outside {}..={} fps", FPS_RANGE.0, FPS_RANGE.1)));
        }
        let frames = self.frames_in(video);
        if frames == 0 {
            return Err(bad(format!("no frames to stylise (the clip has {} frames, {:.2} s; start_s {})", self.frames, self.duration_s, video.start_s)));
        }
        if frames > max_frames {
            return Err(bad(format!("{frames} frames exceeds the limit of {max_frames} frames per video (use duration_s, or a shorter clip)")));
        }
        Ok(frames)
    }
}

/// ffmpeg's arguments after `-i CLIP` for [`FramecrcScan`].
pub const FRAMECRC_ARGS: [&str; 9] = ["-map", "0:v:0?", "-map", "0:a:0?", "-c", "copy", "-f", "framecrc", "-"];

/// Streams framecrc may list (two are mapped; more are ignored).
const MAX_STREAMS: usize = 4;

#[derive(Debug, Default, Clone)]
struct Stream {
    index: u32,
    kind: String,
    codec: String,
    /// Time base numerator and denominator.
    tb: (u64, u64),
    size: (u32, u32),
}

/// The video packets seen so far, in the video stream's time base.
#[derive(Debug, Default, Clone)]
struct Packets {
    count: u32,
    first_pts: i64,
    /// Latest `pts + duration`.
    end: i64,
    /// The duration every packet had, while they all agree.
    duration: Option<i64>,
    uniform: bool,
}

/// Reads `ffmpeg … -f framecrc -` output a line at a time; see the module docs.
#[derive(Debug, Default)]
pub struct FramecrcScan {
    streams: Vec<Stream>,
    video: Packets,
}

impl FramecrcScan {
    /// Takes one line of ffmpeg's stdout (lines it does not know are ignored).
    pub fn line(&mut self, line: &str) {
        match line.strip_prefix('#') {
            Some(header) => self.header(header),
            None => self.packet(line),
        }
    }

    fn header(&mut self, header: &str) {
        let Some((key, value)) = header.split_once(':') else { return };
        let Some((key, index)) = key.split_once(' ') else { return };
        let Ok(index) = index.trim().parse::<u32>() else { return };
        let value = value.trim();
        let stream = match self.streams.iter().position(|s| s.index == index) {
            Some(i) => &mut self.streams[i],
            None if self.streams.len() < MAX_STREAMS => {
                self.streams.push(Stream { index, ..Stream::default() });
                self.streams.last_mut().expect("just pushed")
            }
            None => return,
        };
        match key {
            "tb" => {
                if let Some((n, d)) = value.split_once('/') {
                    stream.tb = (n.trim().parse().unwrap_or(0), d.trim().parse().unwrap_or(0));
                }
            }
            "media_type" => stream.kind = value.to_string(),
            "codec_id" => stream.codec = value.to_string(),
            "dimensions" => {
                if let Some((w, h)) = value.split_once('x') {
                    stream.size = (w.trim().parse().unwrap_or(0), h.trim().parse().unwrap_or(0));
                }
            }
            _ => {}
        }
    }

    fn video_index(&self) -> Option<u32> {
        self.streams.iter().find(|s| s.kind == "video").map(|s| s.index)
    }

    fn packet(&mut self, line: &str) {
        // stream, dts, pts, duration, size, crc[, flags…]
        let mut fields = line.split(',').map(str::trim);
        let Some(Ok(stream)) = fields.next().map(str::parse::<u32>) else { return };
        if Some(stream) != self.video_index() {
            return;
        }
        let number = |f: Option<&str>| f.and_then(|v| v.parse::<i64>().ok()).filter(|v| *v > i64::MIN / 2);
        let dts = number(fields.next());
        let Some(pts) = number(fields.next()).or(dts) else { return };
        let duration = number(fields.next()).unwrap_or(0).max(0);
        let v = &mut self.video;
        if v.count == 0 {
            (v.first_pts, v.end, v.duration, v.uniform) = (pts, pts + duration, Some(duration), true);
        } else {
            v.first_pts = v.first_pts.min(pts);
            v.end = v.end.max(pts.saturating_add(duration));
            v.uniform &= v.duration == Some(duration);
        }
        v.count = v.count.saturating_add(1);
    }

    /// What the clip holds, with ffmpeg's `stderr` for the input's format and
    /// rate guess; `field` names the input in errors.
    pub fn finish(self, stderr: &str, field: &str) -> Result<Probe> {
        let bad = |reason: String| ParamError::new(field, reason);
        let has_audio = self.streams.iter().any(|s| s.kind == "audio");
        let video = self.streams.iter().find(|s| s.kind == "video").ok_or_else(|| bad("not a video: no video stream".into()))?;
        let format = input_format(stderr).unwrap_or_default();
        let packets = &self.video;
        if format == "image2" || format.ends_with("_pipe") || packets.count == 1 {
            return Err(bad(format!("not a video: a still image ({}, {} frame)", video.codec, packets.count)));
        }
        if packets.count == 0 {
            return Err(bad("not a video: its video stream has no frames".into()));
        }
        let (tb_num, tb_den) = video.tb;
        let seconds = |ticks: i64| ticks as f64 * tb_num as f64 / tb_den.max(1) as f64;
        let span = packets.end - packets.first_pts;
        // every packet lasting the same is exact only if they also tile the
        // span (a coarse time base, e.g. Matroska's ms, rounds 33.367 to 33)
        let exact = match packets.duration {
            Some(d) if packets.uniform && d > 0 && tb_num > 0 && tb_den > 0 && (packets.count as i64 * d - span).abs() <= 1 => {
                reduce(tb_den, tb_num * d as u64)
            }
            _ => None,
        };
        let measured = (span > 0).then(|| packets.count as f64 / seconds(span));
        let (fps_num, fps_den) = exact
            .or_else(|| stream_rate(stderr).and_then(snap_rate))
            .or_else(|| measured.and_then(snap_rate))
            .ok_or_else(|| bad("not a video: its frame rate is unknown (no timestamps)".into()))?;
        let duration_s = if span > 0 { seconds(span) } else { packets.count as f64 * fps_den as f64 / fps_num as f64 };
        Ok(Probe { width: video.size.0, height: video.size.1, fps_num, fps_den, frames: packets.count, duration_s, has_audio })
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// `num/den` in lowest terms, when both fit a u32.
fn reduce(num: u64, den: u64) -> Option<(u32, u32)> {
    let g = gcd(num, den).max(1);
    Some((u32::try_from(num / g).ok()?, u32::try_from(den / g).ok()?)).filter(|(n, d)| *n > 0 && *d > 0)
}

/// A rate printed or measured to about two decimals, as the integer or NTSC
/// (k·1000/1001) rate it rounds from, else in hundredths.
pub fn snap_rate(fps: f64) -> Option<(u32, u32)> {
    if !fps.is_finite() || fps <= 0.0 || fps > 1e6 {
        return None;
    }
    let whole = fps.round();
    if whole >= 1.0 && (fps - whole).abs() <= 0.005 {
        return Some((whole as u32, 1));
    }
    let ntsc = (fps * 1.001).round();
    if ntsc >= 1.0 && (fps - ntsc / 1.001).abs() <= 0.005 {
        return Some((ntsc as u32 * 1000, 1001));
    }
    reduce((fps * 100.0).round() as u64, 100)
}

/// The input's format from `Input #0, FORMAT, from '…':`.
fn input_format(stderr: &str) -> Option<&str> {
    let line = stderr.lines().find_map(|l| l.trim_start().strip_prefix("Input #0, "))?;
    Some(line.rsplit_once(", from ").map_or(line, |(format, _)| format))
}

/// The `tbr` of the input's first video stream line (`…, 29.97 fps, 29.97 tbr, 30k tbn`).
fn stream_rate(stderr: &str) -> Option<f64> {
    let input = stderr.split("Output #0").next()?;
    let line = input.lines().find(|l| l.trim_start().starts_with("Stream #0:") && l.contains(": Video:"))?;
    let value = line.split(", ").find_map(|part| part.trim().strip_suffix(" tbr"))?.trim();
    match value.strip_suffix('k') {
        Some(thousands) => thousands.parse::<f64>().ok().map(|k| k * 1000.0),
        None => value.parse().ok(),
    }
}

#[cfg(test)]
mod tests;
