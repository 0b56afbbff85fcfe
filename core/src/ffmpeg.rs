//! Running ffprobe and ffmpeg: probing a clip, decoding its frames to numbered
//! PNGs, and encoding stylised frames back into an MP4 with the source's audio.
//! Blocking calls (child processes): async callers run them on a blocking thread.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::error::{ParamError, ToolError};
use crate::video::{Probe, VideoParams};

/// Where the tools are: `STYLEFARM_FFMPEG` / `STYLEFARM_FFPROBE`, else the PATH.
#[derive(Debug, Clone)]
pub struct Tools {
    pub ffmpeg: PathBuf,
    pub ffprobe: PathBuf,
}

impl Default for Tools {
    fn default() -> Self {
        let var = |name: &str, default: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from).unwrap_or_else(|| default.into());
        Tools { ffmpeg: var("STYLEFARM_FFMPEG", "ffmpeg"), ffprobe: var("STYLEFARM_FFPROBE", "ffprobe") }
    }
}

/// The last lines of a tool's stderr, for an error message.
fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(4)..].join(" | ")
}

fn run(tool: &Path, args: &[&std::ffi::OsStr]) -> Result<Output, ToolError> {
    let name = tool.display().to_string();
    Command::new(tool).args(args).output().map_err(|e| ToolError::Missing { tool: name, reason: e.to_string() })
}

impl Tools {
    /// What the clip at `path` holds; a file that is not a video is refused as
    /// an error on `field`. Counts the frames when the container does not say.
    pub fn probe(&self, path: &Path, field: &str) -> Result<Probe, ToolError> {
        let args = |count: bool| {
            let mut a: Vec<&std::ffi::OsStr> =
                vec!["-v".as_ref(), "error".as_ref(), "-of".as_ref(), "json".as_ref(), "-show_streams".as_ref(), "-show_format".as_ref()];
            if count {
                a.push("-count_frames".as_ref());
            }
            a.push(path.as_os_str());
            a
        };
        let out = run(&self.ffprobe, &args(false))?;
        if !out.status.success() {
            return Err(ParamError::new(field, format!("not a readable video: {}", tail(&out.stderr))).into());
        }
        let probe = Probe::from_ffprobe_json(&String::from_utf8_lossy(&out.stdout), field)?;
        let json = String::from_utf8_lossy(&out.stdout).into_owned();
        if json.contains("\"nb_frames\"") {
            return Ok(probe);
        }
        // no frame count in the container (e.g. Matroska): decode and count
        let counted = run(&self.ffprobe, &args(true))?;
        if !counted.status.success() {
            return Err(ParamError::new(field, format!("not a readable video: {}", tail(&counted.stderr))).into());
        }
        Ok(Probe::from_ffprobe_json(&String::from_utf8_lossy(&counted.stdout), field)?)
    }

    /// Decodes the frames of `video`'s window into `dir` as `000001.png`, … at
    /// the clip's own size (every frame, none duplicated or dropped), or only
    /// `frames` of the window (0-based, named by their place in the window).
    /// Returns how many it wrote.
    pub fn decode(&self, input: &Path, video: &VideoParams, frames: Option<std::ops::Range<u32>>, dir: &Path) -> Result<u32, ToolError> {
        let failed = |detail: String| ToolError::Failed { tool: "ffmpeg".into(), detail };
        std::fs::create_dir_all(dir).map_err(|e| failed(format!("creating {}: {e}", dir.display())))?;
        let mut filters = Vec::new();
        if video.start_s > 0.0 || video.duration_s > 0.0 {
            let mut trim = format!("trim=start={}", video.start_s);
            if video.duration_s > 0.0 {
                trim.push_str(&format!(":duration={}", video.duration_s));
            }
            filters.push(trim);
        }
        let first = frames.as_ref().map_or(0, |r| r.start);
        if let Some(r) = &frames {
            filters.push(format!("select=between(n\\,{}\\,{})", r.start, r.end.saturating_sub(1)));
        }
        let mut args: Vec<std::ffi::OsString> = ["-v", "error", "-nostdin", "-y", "-i"].iter().map(Into::into).collect();
        args.push(input.as_os_str().to_owned());
        if !filters.is_empty() {
            args.extend(["-vf".into(), filters.join(",").into()]);
        }
        let start_number = (first + 1).to_string();
        args.extend(["-map", "0:v:0", "-fps_mode", "passthrough", "-start_number", &start_number].iter().map(Into::into));
        args.push(dir.join("%06d.png").into_os_string());
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let out = run(&self.ffmpeg, &refs)?;
        if !out.status.success() {
            return Err(failed(format!("decoding {}: {}", input.display(), tail(&out.stderr))));
        }
        let count = std::fs::read_dir(dir)
            .map_err(|e| failed(e.to_string()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "png"))
            .count();
        Ok(count as u32)
    }

    /// Encodes `dir/000001.png…` at `fps_num/fps_den` into an H.264 MP4 at
    /// `output`, with the audio of `audio_from` (its `video` window) when it has one.
    pub fn encode(&self, dir: &Path, fps_num: u32, fps_den: u32, audio_from: Option<(&Path, &VideoParams)>, output: &Path) -> Result<(), ToolError> {
        let rate = format!("{fps_num}/{fps_den}");
        let pattern = dir.join("%06d.png");
        let mut args: Vec<std::ffi::OsString> =
            ["-v", "error", "-nostdin", "-y", "-framerate", &rate, "-start_number", "1", "-i"].iter().map(Into::into).collect();
        args.push(pattern.into());
        if let Some((source, video)) = audio_from {
            if video.start_s > 0.0 {
                args.extend(["-ss".into(), format!("{}", video.start_s).into()]);
            }
            if video.duration_s > 0.0 {
                args.extend(["-t".into(), format!("{}", video.duration_s).into()]);
            }
            args.extend(["-i".into(), source.as_os_str().to_owned()]);
            args.extend(["-map", "0:v:0", "-map", "1:a:0?", "-c:a", "aac", "-shortest"].iter().map(Into::into));
        }
        // H.264 in yuv420p wants even sides: pad by one pixel where needed
        args.extend(
            ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18", "-movflags", "+faststart"].iter().map(Into::into),
        );
        args.push(output.as_os_str().to_owned());
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let out = run(&self.ffmpeg, &refs)?;
        if !out.status.success() {
            return Err(ToolError::Failed { tool: "ffmpeg".into(), detail: format!("encoding {}: {}", output.display(), tail(&out.stderr)) });
        }
        Ok(())
    }
}
