//! A video batch's jobs on the worker ([`VideoTask`], dispatched by
//! [`super::task`]): decode a segment's
//! frames, the flow between two frames, the assembly into an MP4 with the
//! audio; and, for the frames and seams that render, where their content and
//! their start come from (their dependencies' committed outputs, which the
//! lease lists in `depends_on` order).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use stylefarm_core::ffmpeg::Tools;
use stylefarm_core::video::{frame_name, VideoTask};
use stylefarm_engine::image_io::decode_rgb;
use stylefarm_engine::params::RenderParams;
use stylefarm_engine::temporal::TemporalPrior;
use stylefarm_engine::video::{at_size, blend, pair_for, pair_from_bytes, pair_to_bytes};
use stylefarm_engine::EngineError;
use stylefarm_proto as pb;
use tch::Device;

use super::attempt::{failed, listing, upload_files, JobContext, Outcome, Rendered, RunningJob};
use super::inputs::InputError;

/// The `index`-th dependency's committed output `name`, as a URL in the store.
pub(super) fn input_url(ctx: &JobContext, lease: &pb::Lease, index: usize, name: &str) -> Result<String, Outcome> {
    let input = lease
        .inputs
        .get(index)
        .ok_or_else(|| failed(format!("the lease lists {} dependency outputs; this step needs at least {}", lease.inputs.len(), index + 1), false))?;
    Ok(format!("{}/{}{name}", ctx.store_url.trim_end_matches('/'), input.prefix.trim_start_matches('/')))
}

pub(super) async fn fetch(ctx: &JobContext, role: &str, url: &str) -> Result<Bytes, Outcome> {
    match ctx.inputs.fetch(role, url, "").await {
        Ok(data) => Ok(data),
        Err(InputError::Permanent(reason)) => Err(failed(reason, false)),
        Err(InputError::Transient(reason)) => Err(failed(reason, true)),
    }
}

/// What a rendering video job starts from, as fetched.
pub enum PriorBytes {
    /// The chain's previous frame and the flow back to it.
    Warm { previous: Bytes, flow: Bytes, weight: f64 },
    /// Two segments' copies of an overlap frame, cross-faded with `weight` on the later.
    Seam { earlier: Bytes, later: Bytes, weight: f64, temporal_weight: f64 },
}

impl PriorBytes {
    /// The prior for a frame rendered at `size`.
    pub fn decode(self, size: u32) -> Result<TemporalPrior, EngineError> {
        let image = |bytes: &Bytes, role: &str| decode_rgb(bytes).map_err(|reason| EngineError::param(role, reason));
        match self {
            PriorBytes::Warm { previous, flow, weight } => {
                let pair = pair_from_bytes(&flow, "flow")?;
                TemporalPrior::new(&image(&previous, "previous frame")?, &pair, weight)
            }
            PriorBytes::Seam { earlier, later, weight, temporal_weight } => {
                let (a, b) = (image(&earlier, "earlier copy")?, image(&later, "later copy")?);
                let faded = blend(&[(&a, 1.0 - weight), (&b, weight)])?;
                TemporalPrior::hold(&at_size(&faded, size), temporal_weight)
            }
        }
    }
}

/// A rendering video job's content (its decoded frame) and start.
pub async fn frame_inputs(ctx: &JobContext, lease: &pb::Lease, task: &VideoTask) -> Result<(String, Option<PriorBytes>), Outcome> {
    match task {
        VideoTask::Frame { frame, warm, video, .. } => {
            let content = input_url(ctx, lease, 0, &format!("frames/{}", frame_name(*frame)))?;
            if !warm {
                return Ok((content, None));
            }
            let flow = fetch(ctx, "flow", &input_url(ctx, lease, 1, "flow.safetensors")?).await?;
            let previous = fetch(ctx, "previous frame", &input_url(ctx, lease, 2, "output.png")?).await?;
            Ok((content, Some(PriorBytes::Warm { previous, flow, weight: video.temporal_weight })))
        }
        VideoTask::Seam { frame, weight, video } => {
            let content = input_url(ctx, lease, 0, &format!("frames/{}", frame_name(*frame)))?;
            let earlier = fetch(ctx, "earlier copy", &input_url(ctx, lease, 1, "output.png")?).await?;
            let later = fetch(ctx, "later copy", &input_url(ctx, lease, 2, "output.png")?).await?;
            Ok((content, Some(PriorBytes::Seam { earlier, later, weight: *weight, temporal_weight: video.temporal_weight })))
        }
        other => Err(failed(format!("{} does not render", other.label()), false)),
    }
}

/// Runs a step that does not render: decode, flow or assemble.
pub async fn execute_step(ctx: &JobContext, job: &Arc<RunningJob>, task: &VideoTask, params: &RenderParams) -> Outcome {
    let lease = &job.lease;
    let began = Instant::now();
    let dir = ctx.work_dir.join(format!("{}-attempt-{}", lease.job_id, lease.attempt));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return failed(format!("creating {}: {e}", dir.display()), true);
    }
    let result = match task {
        VideoTask::Decode { first, end, video } => decode(ctx, lease, *first..*end, video, &dir).await,
        VideoTask::Flow { frame } => flow(ctx, lease, *frame, params.size, ctx.device, &dir).await,
        VideoTask::Assemble { frames, fps_num, fps_den, has_audio, video, output } => {
            assemble(ctx, lease, *frames, (*fps_num, *fps_den), has_audio.then_some(video), output, &dir).await
        }
        other => Err(failed(format!("{} renders: it is not a step", other.label()), false)),
    };
    let outcome = match result {
        Ok(files) => {
            job.time(&task.label(), began, 0, format!("{} files", files.len()));
            let summary = Rendered { final_loss: 0.0, iterations: 0, engine_ms: began.elapsed().as_secs_f64() * 1e3, device: describe(ctx.device) };
            let mut outcome = upload_files(ctx, lease, &dir, files, summary).await;
            if let Outcome::Done(result) = &mut outcome {
                result.spans = job.take_spans();
            }
            outcome
        }
        Err(outcome) => outcome,
    };
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

fn describe(device: Device) -> String {
    stylefarm_engine::device::describe(device)
}

/// Writes the clip (the job's content) to `dir/input`.
async fn fetch_clip(ctx: &JobContext, lease: &pb::Lease, dir: &Path) -> Result<std::path::PathBuf, Outcome> {
    let data = match ctx.inputs.fetch("video", &lease.content_url, &lease.content_sha256).await {
        Ok(data) => data,
        Err(InputError::Permanent(reason)) => return Err(failed(reason, false)),
        Err(InputError::Transient(reason)) => return Err(failed(reason, true)),
    };
    let path = dir.join("input");
    std::fs::write(&path, &data).map_err(|e| failed(format!("writing {}: {e}", path.display()), true))?;
    Ok(path)
}

/// ffmpeg off the async runtime; its failure fails the job (a clip that
/// decoded at submit and fails now will fail again).
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T, stylefarm_core::ToolError> + Send + 'static) -> Result<T, Outcome> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e @ stylefarm_core::ToolError::Missing { .. })) => Err(failed(e.to_string(), true)),
        Ok(Err(e)) => Err(failed(e.to_string(), false)),
        Err(e) => Err(failed(format!("the ffmpeg task panicked: {e}"), true)),
    }
}

async fn decode(
    ctx: &JobContext,
    lease: &pb::Lease,
    frames: std::ops::Range<u32>,
    video: &stylefarm_core::video::VideoParams,
    dir: &Path,
) -> Result<Vec<String>, Outcome> {
    let input = fetch_clip(ctx, lease, dir).await?;
    let out = dir.join("frames");
    let (video, range) = (video.clone(), frames.clone());
    let count = blocking(move || Tools::default().decode(&input, &video, Some(range), &out)).await?;
    if count != frames.end - frames.start {
        return Err(failed(
            format!("decoded {count} frames of {}..{}; the clip has fewer frames than its probe reported", frames.start + 1, frames.end),
            false,
        ));
    }
    Ok(listing(dir, "frames"))
}

async fn flow(ctx: &JobContext, lease: &pb::Lease, frame: u32, size: u32, device: Device, dir: &Path) -> Result<Vec<String>, Outcome> {
    let previous = fetch(ctx, "previous frame", &input_url(ctx, lease, 0, &format!("frames/{}", frame_name(frame - 1)))?).await?;
    let current = fetch(ctx, "frame", &input_url(ctx, lease, 0, &format!("frames/{}", frame_name(frame)))?).await?;
    let path = dir.join("flow.safetensors");
    let computed = tokio::task::spawn_blocking(move || -> Result<(), EngineError> {
        let decode = |bytes: &Bytes, role: &str| decode_rgb(bytes).map_err(|reason| EngineError::param(role, reason));
        let pair = pair_for(&decode(&previous, "previous frame")?, &decode(&current, "frame")?, size, device)?;
        std::fs::write(&path, pair_to_bytes(&pair)?).map_err(|e| EngineError::Output { path: path.clone(), reason: e.to_string() })
    })
    .await;
    match computed {
        Ok(Ok(())) => Ok(vec!["flow.safetensors".into()]),
        Ok(Err(e)) => Err(failed(e.to_string(), e.is_retryable())),
        Err(e) => Err(failed(format!("the flow task panicked: {e}"), true)),
    }
}

async fn assemble(
    ctx: &JobContext,
    lease: &pb::Lease,
    frames: u32,
    (fps_num, fps_den): (u32, u32),
    audio: Option<&stylefarm_core::video::VideoParams>,
    output: &str,
    dir: &Path,
) -> Result<Vec<String>, Outcome> {
    if lease.inputs.len() != frames as usize {
        return Err(failed(format!("the assembly needs {frames} frames; the lease lists {}", lease.inputs.len()), false));
    }
    let stylised = dir.join("stylised");
    std::fs::create_dir_all(&stylised).map_err(|e| failed(format!("creating {}: {e}", stylised.display()), true))?;
    for t in 0..frames {
        let data = fetch(ctx, "stylised frame", &input_url(ctx, lease, t as usize, "output.png")?).await?;
        let path = stylised.join(frame_name(t));
        std::fs::write(&path, &data).map_err(|e| failed(format!("writing {}: {e}", path.display()), true))?;
    }
    let clip = match audio {
        Some(_) => Some(fetch_clip(ctx, lease, dir).await?),
        None => None,
    };
    let (video, out) = (audio.cloned(), dir.join(output));
    blocking(move || Tools::default().encode(&stylised, fps_num, fps_den, clip.as_deref().zip(video.as_ref()), &out)).await?;
    Ok(vec![output.to_string()])
}
