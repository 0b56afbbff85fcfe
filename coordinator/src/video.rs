//! A video submit: the clip is probed with ffmpeg before any job runs (not a
//! video, no frames, too large, too many frames: INVALID_ARGUMENT naming the
//! field and the limit), then planned as jobs that wait on each other
//! ([`stylefarm_core::video::plan_jobs`]).

use std::sync::Arc;

use stylefarm_core::estimate::{default_time_limit_ms, device_bytes, pixel_iterations};
use stylefarm_core::ffmpeg::Tools;
use stylefarm_core::params::RenderParams;
use stylefarm_core::print::PrintFormat;
use stylefarm_core::video::{plan_jobs, Probe, VideoParams, VideoTask};
use stylefarm_core::ToolError;
use stylefarm_proto as pb;

use crate::error::{CoordError, Result};
use crate::farm::Farm;
use crate::model::ImageSource;
use crate::model::NewJob;
use crate::validate::{check_name, image, resolve_settings, InputAccess, SubmitRules};

/// What the flow of one frame may take on a device.
const FLOW_DEVICE_BYTES: u64 = 256 << 20;

/// A video spec with its fields checked, before the clip is probed.
#[derive(Debug)]
pub struct VideoRequest {
    pub source: ImageSource,
    pub styles: Vec<ImageSource>,
    pub params: RenderParams,
    pub video: VideoParams,
    pub stem: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> CoordError {
    CoordError::invalid(field, reason)
}

/// The spec's fields, checked as a job's are.
pub fn check(spec: &pb::VideoSpec, access: &InputAccess, rules: &SubmitRules) -> Result<VideoRequest> {
    let source = image("video.video", spec.video.as_ref(), access, rules)?;
    if spec.styles.is_empty() {
        return Err(invalid("video.styles", "at least one style image is required"));
    }
    let styles = spec.styles.iter().enumerate().map(|(k, s)| image(&format!("video.styles[{k}]"), Some(s), access, rules)).collect::<Result<Vec<_>>>()?;
    let params = resolve_settings("video.settings", spec.settings.as_ref(), styles.len(), rules)?;
    still_only(&params)?;
    let overlay = if spec.video_params_json.trim().is_empty() {
        serde_json::Map::new()
    } else {
        match serde_json::from_str(&spec.video_params_json) {
            Ok(serde_json::Value::Object(map)) => map,
            Ok(_) => return Err(invalid("video.video_params_json", "must be a JSON object of VideoParams fields")),
            Err(e) => return Err(invalid("video.video_params_json", format!("not JSON: {e}"))),
        }
    };
    let video = VideoParams::from_overlay(overlay, params.iterations).map_err(|e| invalid(format!("video.{}", e.field), e.reason))?;
    check_name("video.name", &spec.name)?;
    let stem: String = spec.name.chars().filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c)).take(80).collect();
    let stem = if stem.is_empty() { "video".to_string() } else { stem };
    Ok(VideoRequest { source, styles, params, video, stem })
}

/// Refuses what only a still render makes: a print master (a clip's frames
/// are encoded into the clip at 8 bits).
fn still_only(params: &RenderParams) -> Result<()> {
    if params.print != PrintFormat::None {
        return Err(invalid(
            "video.settings.print",
            format!("`{}`: a clip's frames are encoded into the clip, so there is no print master; print must be none for a video", params.print),
        ));
    }
    Ok(())
}

/// Probes the clip where the store (or an allowed URL) keeps it.
pub async fn probe(farm: &Arc<Farm>, source: &ImageSource) -> Result<Probe> {
    probe_bytes(farm.read_input(source, "video.video.url").await?).await
}

/// Probes at once at most; more wait their turn (each is an ffmpeg process
/// reading a whole clip, bounded in time by `ffmpeg::PROBE_LIMIT`).
const CONCURRENT_PROBES: usize = 2;

static PROBES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(CONCURRENT_PROBES);

/// Probes a clip held in memory (written to a temporary file for the probe, off the runtime).
pub async fn probe_bytes(data: bytes::Bytes) -> Result<Probe> {
    let _turn = PROBES.acquire().await.map_err(|_| CoordError::ShuttingDown)?;
    tokio::task::spawn_blocking(move || -> Result<Probe> {
        let file = tempfile::NamedTempFile::new().map_err(|e| CoordError::Unavailable(format!("temporary file for the probe: {e}")))?;
        std::fs::write(file.path(), &data).map_err(|e| CoordError::Unavailable(format!("temporary file for the probe: {e}")))?;
        Tools::default().probe(file.path(), "video.video").map_err(|e| match e {
            ToolError::Input(p) => invalid(p.field, p.reason),
            other => CoordError::Unavailable(other.to_string()),
        })
    })
    .await
    .map_err(|e| CoordError::Internal(format!("the probe task panicked: {e}")))?
}

/// The clip's jobs, once probed: refused if it has no frames in the window or more than the limit.
pub fn jobs(request: &VideoRequest, probe: &Probe, rules: &SubmitRules, time_limit_s: u32) -> Result<Vec<NewJob>> {
    let frames = probe.check("video.video", &request.video, rules.max_video_frames).map_err(|e| invalid(e.field, e.reason))?;
    let plan = plan_jobs(&request.stem, probe, frames, &request.video);
    if plan.len() > rules.max_jobs {
        return Err(invalid("video", format!("{frames} frames make {} jobs; the limit is {} per batch", plan.len(), rules.max_jobs)));
    }
    let mut jobs = Vec::with_capacity(plan.len());
    for planned in plan {
        let params = match &planned.task {
            VideoTask::Frame { warm: true, video, .. } | VideoTask::Seam { video, .. } => {
                RenderParams { iterations: video.frame_iterations, ..request.params.clone() }
            }
            VideoTask::Frame { warm: false, video, .. } => RenderParams { iterations: video.first_iterations, ..request.params.clone() },
            _ => request.params.clone(),
        };
        let (estimate_bytes, derived_limit_ms) = match &planned.task {
            t if t.renders() => (device_bytes(&params), default_time_limit_ms(&params)),
            VideoTask::Flow { .. } => (FLOW_DEVICE_BYTES, 600_000),
            VideoTask::Decode { first, end, .. } => (0, 600_000 + 2_000 * u64::from(end - first)),
            _ => (0, 600_000 + 2_000 * u64::from(frames)),
        };
        let styles = if planned.task.renders() { request.styles.clone() } else { Vec::new() };
        jobs.push(NewJob {
            name: planned.name,
            content: request.source.clone(),
            styles,
            params_json: serde_json::to_string(&params).map_err(|e| invalid("video.settings", format!("cannot be stored: {e}")))?,
            estimate_bytes,
            work: if planned.task.renders() { pixel_iterations(&params) } else { 0 },
            time_limit_ms: if time_limit_s == 0 { derived_limit_ms } else { time_limit_s as u64 * 1000 },
            depends_on: planned.depends_on,
            task: Some(planned.task.to_json()),
            requires: Vec::new(),
        });
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> SubmitRules {
        SubmitRules { max_video_frames: 20, ..SubmitRules::for_store("memory:///") }
    }

    fn request() -> VideoRequest {
        VideoRequest {
            source: ImageSource::Blob("a".repeat(64)),
            styles: vec![ImageSource::Blob("b".repeat(64))],
            params: RenderParams { iterations: 30, ..RenderParams::preset(stylefarm_core::params::Preset::Gatys) },
            video: VideoParams { segment_frames: 6, overlap: 2, first_iterations: 30, frame_iterations: 10, ..VideoParams::default() },
            stem: "clip".into(),
        }
    }

    fn probe(frames: u32) -> Probe {
        Probe { width: 64, height: 48, fps_num: 12, fps_den: 1, frames, duration_s: frames as f64 / 12.0, has_audio: false }
    }

    #[test]
    fn frame_jobs_get_the_styles_and_their_iterations_the_others_neither() {
        let jobs = jobs(&request(), &probe(12), &rules(), 0).unwrap();
        let params = |name: &str| -> RenderParams { serde_json::from_str(&jobs.iter().find(|j| j.name == name).unwrap().params_json).unwrap() };
        assert_eq!(params("frame-000001-s01").iterations, 30);
        assert_eq!(params("frame-000002-s01").iterations, 10);
        assert_eq!(params("seam-000005").iterations, 10);
        let decode = jobs.iter().find(|j| j.name == "decode-s01").unwrap();
        assert!(decode.styles.is_empty() && decode.estimate_bytes == 0 && decode.depends_on.is_empty());
        assert!(jobs.iter().filter(|j| j.name.starts_with("frame")).all(|j| j.styles.len() == 1 && j.estimate_bytes > 0));
    }

    #[test]
    fn a_video_asking_for_a_print_master_is_refused_naming_the_field() {
        let print = RenderParams { print: PrintFormat::Tiff16, ..request().params };
        let err = still_only(&print).unwrap_err();
        assert!(matches!(&err, CoordError::InvalidArgument { field, .. } if field == "video.settings.print"), "{err:?}");
        assert!(err.to_string().contains("`tiff16`"), "{err}");
        still_only(&request().params).expect("no print is fine");
    }

    #[test]
    fn a_clip_over_the_frame_limit_is_refused_naming_it() {
        let err = jobs(&request(), &probe(21), &rules(), 0).unwrap_err();
        assert!(err.to_string().contains("21 frames exceeds the limit of 20 frames"), "{err}");
        let err = jobs(&request(), &probe(0), &rules(), 0).unwrap_err();
        assert!(err.to_string().contains("no frames"), "{err}");
    }
}
