//! Running ffmpeg (and nothing else: no ffprobe): probing a clip, decoding its
//! frames to numbered PNGs, and encoding stylised frames back into an MP4 with
//! the source's audio. Blocking calls (child processes): async callers run
//! them on a blocking thread.
//!
//! A user's clip is read only as the container its first bytes say it is
//! (`-f`, [`Container`]), through the `file` protocol alone (no network, no
//! playlists or scripts leading elsewhere), and every run has a time limit.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::{ParamError, ToolError};
use crate::video::container::{Container, SNIFF_BYTES};
use crate::video::probe::{FramecrcScan, FRAMECRC_ARGS};
use crate::video::{Probe, VideoParams};

/// Where ffmpeg is: `STYLEFARM_FFMPEG`; else beside the running binary (the
/// release bundle's `install.sh` puts it there); else the static build `make
/// setup` puts in the cache (`<cache>/bin/ffmpeg`, from the PyPI wheel
/// `imageio-ffmpeg`, no root needed); else `ffmpeg` on the PATH (the images
/// put the same static build in `/usr/local/bin`).
#[derive(Debug, Clone)]
pub struct Tools {
    pub ffmpeg: PathBuf,
}

impl Default for Tools {
    fn default() -> Self {
        let configured = std::env::var_os("STYLEFARM_FFMPEG").filter(|v| !v.is_empty()).map(PathBuf::from);
        let beside = || std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.join("ffmpeg"))).filter(|p| p.is_file());
        let cached = || Some(crate::cache::cache_dir().join("bin").join("ffmpeg")).filter(|p| p.is_file());
        Tools { ffmpeg: configured.or_else(beside).or_else(cached).unwrap_or_else(|| "ffmpeg".into()) }
    }
}

/// The last lines of a tool's stderr, for an error message.
fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(4)..].join(" | ")
}

fn missing(tool: &Path, e: std::io::Error) -> ToolError {
    ToolError::Missing { tool: tool.display().to_string(), reason: e.to_string() }
}

/// How long a probe may take (it reads packets without decoding them).
pub const PROBE_LIMIT: Duration = Duration::from_secs(120);

/// How long decoding a segment or encoding the clip may take.
pub const RUN_LIMIT: Duration = Duration::from_secs(3600);

/// Waits for `child`, killing it once `limit` has passed since `started`.
fn wait_until(child: &mut Child, started: Instant, limit: Duration) -> Result<ExitStatus, ToolError> {
    let failed = |detail: String| ToolError::Failed { tool: "ffmpeg".into(), detail };
    loop {
        if let Some(status) = child.try_wait().map_err(|e| failed(format!("waiting for ffmpeg: {e}")))? {
            return Ok(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(failed(format!("ffmpeg ran longer than {} s and was stopped", limit.as_secs())));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `tool` with `args` to its end (at most `limit`): its status and its stderr's tail.
fn run(tool: &Path, args: &[&std::ffi::OsStr], limit: Duration) -> Result<(ExitStatus, Vec<u8>), ToolError> {
    let started = Instant::now();
    let mut child = Command::new(tool).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).args(args).spawn().map_err(|e| missing(tool, e))?;
    let stderr = child.stderr.take().map(|s| std::thread::spawn(move || read_bounded(s)));
    let status = wait_until(&mut child, started, limit);
    let (_, last) = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
    Ok((status?, last))
}

/// The arguments that open a user's clip at `path`: its container, sniffed
/// from its first bytes, and the `file` protocol alone; a file that is no
/// known container is refused as an error on `field`.
pub fn input_args(path: &Path, field: &str) -> Result<Vec<std::ffi::OsString>, ToolError> {
    let mut head = Vec::with_capacity(SNIFF_BYTES);
    std::fs::File::open(path)
        .and_then(|f| f.take(SNIFF_BYTES as u64).read_to_end(&mut head))
        .map_err(|e| ToolError::Failed { tool: "ffmpeg".into(), detail: format!("reading {}: {e}", path.display()) })?;
    let container = Container::sniff(&head).map_err(|reason| ParamError::new(field, reason))?;
    let mut input = std::ffi::OsString::from("file:");
    input.push(path.as_os_str());
    Ok(["-protocol_whitelist", "file", "-f", container.demuxer(), "-i"].iter().map(Into::into).chain([input]).collect())
}

/// How much of a probe's stderr is kept: its head (the input's description)
/// and its tail (the error, if any); a corrupt clip can print without end.
const STDERR_HEAD: usize = 64 << 10;
const STDERR_TAIL: usize = 8 << 10;

fn read_bounded(mut from: impl Read) -> (Vec<u8>, Vec<u8>) {
    let (mut head, mut tail) = (Vec::new(), Vec::new());
    let mut buf = [0u8; 8192];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        let room = STDERR_HEAD.saturating_sub(head.len()).min(n);
        head.extend_from_slice(&buf[..room]);
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > 2 * STDERR_TAIL {
            tail.drain(..tail.len() - STDERR_TAIL);
        }
    }
    (head, tail)
}

/// The `NNNNNN.png` frames in `dir`.
fn count_frames(dir: &Path) -> std::io::Result<usize> {
    Ok(std::fs::read_dir(dir)?.filter_map(|e| e.ok()).filter(|e| e.path().extension().is_some_and(|x| x == "png")).count())
}

impl Tools {
    /// What the clip at `path` holds (see [`crate::video::probe`]); a file
    /// that is not a video is refused as an error on `field`. Reads every
    /// packet without decoding, in constant memory.
    pub fn probe(&self, path: &Path, field: &str) -> Result<Probe, ToolError> {
        let input = input_args(path, field)?;
        let started = Instant::now();
        let mut child = Command::new(&self.ffmpeg)
            .args(["-hide_banner", "-nostats", "-nostdin"])
            .args(input)
            .args(FRAMECRC_ARGS)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| missing(&self.ffmpeg, e))?;
        let stderr = child.stderr.take().map(|s| std::thread::spawn(move || read_bounded(s)));
        let mut scan = FramecrcScan::default();
        if let Some(stdout) = child.stdout.take() {
            for line in BufReader::new(stdout).split(b'\n') {
                let Ok(line) = line else { break };
                scan.line(&String::from_utf8_lossy(&line));
            }
        }
        // stdout has ended: the probe is done, or it stalls and the limit stops it
        let status = wait_until(&mut child, started, PROBE_LIMIT);
        let (head, last) = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
        let status = status?;
        if !status.success() {
            return Err(ParamError::new(field, format!("not a readable video: {}", tail(&last))).into());
        }
        Ok(scan.finish(&String::from_utf8_lossy(&head), field)?)
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
        let mut args: Vec<std::ffi::OsString> = ["-v", "error", "-nostdin", "-y"].iter().map(Into::into).collect();
        args.extend(input_args(input, "video")?);
        if !filters.is_empty() {
            args.extend(["-vf".into(), filters.join(",").into()]);
        }
        let start_number = (first + 1).to_string();
        args.extend(["-map", "0:v:0", "-fps_mode", "passthrough", "-start_number", &start_number].iter().map(Into::into));
        args.push(dir.join("%06d.png").into_os_string());
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let (status, stderr) = run(&self.ffmpeg, &refs, RUN_LIMIT)?;
        if !status.success() {
            return Err(failed(format!("decoding {}: {}", input.display(), tail(&stderr))));
        }
        Ok(count_frames(dir).map_err(|e| failed(e.to_string()))? as u32)
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
            args.extend(input_args(source, "video")?);
            args.extend(["-map", "0:v:0", "-map", "1:a:0?", "-c:a", "aac"].iter().map(Into::into));
        }
        // every frame, and the audio cut where the last frame ends (`-shortest`
        // would drop the last frame when the audio ends a little before it)
        let frames = count_frames(dir).map_err(|e| ToolError::Failed { tool: "ffmpeg".into(), detail: format!("reading {}: {e}", dir.display()) })?;
        let seconds = frames as f64 * fps_den as f64 / fps_num.max(1) as f64;
        args.extend(["-frames:v".into(), frames.to_string().into(), "-t".into(), format!("{seconds:.6}").into()]);
        // H.264 in yuv420p wants even sides: pad by one pixel where needed
        args.extend(
            ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18", "-movflags", "+faststart"].iter().map(Into::into),
        );
        args.push(output.as_os_str().to_owned());
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let (status, stderr) = run(&self.ffmpeg, &refs, RUN_LIMIT)?;
        if !status.success() {
            return Err(ToolError::Failed { tool: "ffmpeg".into(), detail: format!("encoding {}: {}", output.display(), tail(&stderr)) });
        }
        Ok(())
    }
}
