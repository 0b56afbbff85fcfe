//! Requests → validated domain values. Every error names the request field (with
//! its index) and the limit, and becomes INVALID_ARGUMENT.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::Value;
use stylefarm_core::estimate::{default_time_limit_ms, device_bytes, pixel_iterations};
use stylefarm_core::labels::{Labels, Requirement};
use stylefarm_core::outputs::OutputKind;
use stylefarm_core::params::{params_from_overlay, Init, Preset, RenderParams};
use stylefarm_core::policy::{InputPlace, InputPolicy};
use stylefarm_core::weights_spec::WeightsSpec;
use stylefarm_proto as pb;

use crate::error::{CoordError, Result};
use crate::model::{DeviceRecord, ImageSource, JobOutputs, OutputRecord, SpanRecord};
use crate::model::{NewBatch, NewJob, Notify, NotifyOn};
use crate::notify::{Webhooks, MAX_NOTIFY};

/// Default limit on jobs in one batch (`max_jobs_per_batch` in the config).
pub const MAX_JOBS_PER_BATCH: usize = 100_000;
/// Longest per-attempt time limit a submit may ask for (7 days).
pub const MAX_TIME_LIMIT_S: u32 = 7 * 24 * 3600;
pub const MAX_NAME_CHARS: usize = 200;
pub const PRIORITY_RANGE: (i32, i32) = (-1000, 1000);
pub const MAX_LABELS: usize = 32;
pub const MAX_LABEL_KEY: usize = 63;
pub const MAX_LABEL_VALUE: usize = 256;
pub const MAX_ATTEMPTS: u32 = 20;
pub const MAX_REQUEST_ID: usize = 128;
pub const MAX_URL_CHARS: usize = 2048;
pub const MAX_PARAMS_JSON: usize = 64 << 10;

/// The operator's rules for what a submit may contain.
#[derive(Debug, Clone)]
pub struct SubmitRules {
    pub max_jobs: usize,
    /// Which input URLs users may name (the store, plus an allowlist).
    pub inputs: InputPolicy,
    /// Weights URLs the operator allows jobs to name (beside `default`).
    pub weights: Vec<String>,
    /// Most frames one video batch may have.
    pub max_video_frames: u32,
    /// Device memory one tile may need (0: the largest connected device that may take the job).
    pub tile_memory_bytes: u64,
    /// Where webhooks may go, and with what keys (none allowed: nowhere).
    pub webhooks: Arc<Webhooks>,
}

impl SubmitRules {
    /// Rules for a coordinator whose store is `store_url`, allowing nothing extra.
    pub fn for_store(store_url: &str) -> SubmitRules {
        SubmitRules {
            max_jobs: MAX_JOBS_PER_BATCH,
            inputs: InputPolicy::new(store_url, &[]).expect("the store URL was opened, so it parses"),
            weights: Vec::new(),
            max_video_frames: stylefarm_core::video::MAX_FRAMES,
            tile_memory_bytes: 0,
            webhooks: Arc::default(),
        }
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> CoordError {
    CoordError::invalid(field, reason)
}

pub fn check_name(field: &str, name: &str) -> Result<()> {
    let chars = name.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(invalid(field, format!("{chars} characters; the limit is {MAX_NAME_CHARS}")));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid(field, "contains control characters"));
    }
    Ok(())
}

pub fn check_sha256(field: &str, sha: &str) -> Result<String> {
    let lower = sha.to_ascii_lowercase();
    if lower.len() != 64 || !lower.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(field, format!("`{sha}` is not a SHA-256 (64 hex digits)")));
    }
    Ok(lower)
}

/// What the caller may name as inputs, decided by the API for this caller:
/// uploads by hash (their own), and objects of the store by key (their own
/// uploads and batches' outputs). Refusals read the same either way.
pub struct InputAccess<'a> {
    pub upload: &'a dyn Fn(&str) -> bool,
    pub store_key: &'a dyn Fn(&str) -> bool,
}

/// An image reference; uploads and store objects the caller may use
/// ([`InputAccess`]), or URLs under the operator's allowlist.
pub fn image(field: &str, image: Option<&pb::ImageRef>, access: &InputAccess, rules: &SubmitRules) -> Result<ImageSource> {
    match image.and_then(|i| i.source.as_ref()) {
        None => Err(invalid(field, "missing: give a sha256 from UploadImage or an object-store url")),
        Some(pb::image_ref::Source::Sha256(sha)) => {
            let field = format!("{field}.sha256");
            let sha = check_sha256(&field, sha)?;
            if !(access.upload)(&sha) {
                return Err(invalid(field, format!("image {sha} has not been uploaded (UploadImage first)")));
            }
            Ok(ImageSource::Blob(sha))
        }
        Some(pb::image_ref::Source::Url(url)) => {
            let field = format!("{field}.url");
            if url.len() > MAX_URL_CHARS {
                return Err(invalid(field, format!("{} characters; the limit is {MAX_URL_CHARS}", url.len())));
            }
            match rules.inputs.classify(url).map_err(|reason| invalid(&field, reason))? {
                InputPlace::Allowlisted => {}
                InputPlace::Store { key } if (access.store_key)(&key) => {}
                InputPlace::Store { .. } => return Err(invalid(field, rules.inputs.refuse(url))),
            }
            Ok(ImageSource::Url(url.clone()))
        }
    }
}

/// Preset → params_json → typed fields → validation, plus the farm's own rules.
pub fn resolve_settings(field: &str, settings: Option<&pb::RenderSettings>, style_count: usize, rules: &SubmitRules) -> Result<RenderParams> {
    let default = pb::RenderSettings::default();
    let s = settings.unwrap_or(&default);
    let prefixed = |e: stylefarm_core::ParamError| invalid(format!("{field}.{}", e.field), e.reason);
    let preset = match s.preset.as_str() {
        "" => None,
        name => Some(name.parse::<Preset>().map_err(prefixed)?),
    };
    let overlay = if s.params_json.trim().is_empty() {
        serde_json::Map::new()
    } else {
        if s.params_json.len() > MAX_PARAMS_JSON {
            return Err(invalid(format!("{field}.params_json"), format!("{} bytes; the limit is {MAX_PARAMS_JSON}", s.params_json.len())));
        }
        match serde_json::from_str::<Value>(&s.params_json) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err(invalid(format!("{field}.params_json"), "must be a JSON object of RenderParams fields")),
            Err(e) => return Err(invalid(format!("{field}.params_json"), format!("not JSON: {e}"))),
        }
    };
    let mut p = params_from_overlay(preset, overlay).map_err(prefixed)?;
    if let Some(v) = s.size {
        p.size = v;
    }
    if let Some(v) = s.iterations {
        p.iterations = v;
    }
    if let Some(v) = s.content_weight {
        p.content_weight = v;
    }
    if let Some(v) = s.style_weight {
        p.style_weight = v;
    }
    if let Some(v) = s.tv_weight {
        p.tv_weight = v;
    }
    if let Some(v) = s.seed {
        p.seed = v;
    }
    if let Some(v) = s.preserve_colors {
        p.preserve_colors = v;
    }
    if let Some(v) = s.scales {
        p.scales = v;
    }
    if let Some(v) = s.snapshot_every {
        p.snapshot_every = v;
    }
    p.validate(style_count).map_err(prefixed)?;
    if let Init::Image(path) = &p.init {
        return Err(invalid(format!("{field}.init"), format!("`{}` is a path on one machine; farm jobs start from content or random", path.display())));
    }
    match &p.weights {
        WeightsSpec::Default => {}
        WeightsSpec::Url { url, .. } if rules.weights.iter().any(|allowed| allowed == url) => {}
        other => {
            let allowed =
                if rules.weights.is_empty() { "only `default` here".to_string() } else { format!("`default` or one of {}", rules.weights.join(", ")) };
            return Err(invalid(format!("{field}.weights"), format!("{other:?} is not weights the operator configured: {allowed}")));
        }
    }
    Ok(p)
}

fn labels(raw: &HashMap<String, String>) -> Result<BTreeMap<String, String>> {
    if raw.len() > MAX_LABELS {
        return Err(invalid("labels", format!("{} labels; the limit is {MAX_LABELS}", raw.len())));
    }
    for (key, value) in raw {
        let key_ok = !key.is_empty() && key.len() <= MAX_LABEL_KEY && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
        if !key_ok {
            return Err(invalid(format!("labels[{key}]"), format!("keys are 1..={MAX_LABEL_KEY} characters of a-z A-Z 0-9 - _ . /")));
        }
        if value.len() > MAX_LABEL_VALUE || value.chars().any(char::is_control) {
            return Err(invalid(format!("labels[{key}]"), format!("values are at most {MAX_LABEL_VALUE} bytes, no control characters")));
        }
    }
    Ok(raw.clone().into_iter().collect())
}

fn default_name(content: &ImageSource, style: &ImageSource) -> String {
    let short = |s: &ImageSource| match s {
        ImageSource::Blob(sha) => sha[..12].to_string(),
        ImageSource::Url(url) => url.rsplit('/').next().unwrap_or(url).to_string(),
    };
    format!("{}-x-{}", short(content), short(style))
}

fn new_job(name: String, content: ImageSource, styles: Vec<ImageSource>, params: &RenderParams, time_limit_s: u32) -> Result<NewJob> {
    let params_json = serde_json::to_string(params).map_err(|e| invalid("settings", format!("cannot be stored: {e}")))?;
    let time_limit_ms = if time_limit_s == 0 { default_time_limit_ms(params) } else { time_limit_s as u64 * 1000 };
    Ok(NewJob {
        name,
        content,
        styles,
        params_json,
        estimate_bytes: device_bytes(params),
        work: pixel_iterations(params),
        time_limit_ms,
        depends_on: Vec::new(),
        task: None,
        requires: Vec::new(),
    })
}

/// A batch's priority, at submit or changed later.
pub fn priority(value: i32) -> Result<i32> {
    let (lo, hi) = PRIORITY_RANGE;
    if !(lo..=hi).contains(&value) {
        return Err(invalid("priority", format!("{value} is outside {lo}..={hi}")));
    }
    Ok(value)
}

/// The webhooks a batch asks for, each allowed by the operator.
fn notify(req: &pb::SubmitBatchRequest, webhooks: &Webhooks) -> Result<Notify> {
    if req.notify.len() > MAX_NOTIFY {
        return Err(invalid("notify", format!("{} URLs; the limit is {MAX_NOTIFY}", req.notify.len())));
    }
    for (i, url) in req.notify.iter().enumerate() {
        webhooks.check(url).map_err(|reason| invalid(format!("notify[{i}]"), reason))?;
    }
    let on = match pb::NotifyOn::try_from(req.notify_on) {
        Ok(pb::NotifyOn::Unspecified | pb::NotifyOn::BatchEnd) => NotifyOn::BatchEnd,
        Ok(pb::NotifyOn::Failures) => NotifyOn::Failures,
        Err(_) => return Err(invalid("notify_on", format!("{} is not a NotifyOn value", req.notify_on))),
    };
    let mut urls: Vec<String> = Vec::with_capacity(req.notify.len());
    for url in &req.notify {
        if !urls.contains(url) {
            urls.push(url.clone());
        }
    }
    Ok(Notify { urls, on })
}

/// A SubmitBatch request as a batch the scheduler can take.
pub fn submit(req: &pb::SubmitBatchRequest, access: &InputAccess, rules: &SubmitRules) -> Result<NewBatch> {
    check_name("name", &req.name)?;
    priority(req.priority)?;
    if req.max_attempts > MAX_ATTEMPTS {
        return Err(invalid("max_attempts", format!("{} is outside 1..={MAX_ATTEMPTS} (0 = the default)", req.max_attempts)));
    }
    if req.request_id.len() > MAX_REQUEST_ID {
        return Err(invalid("request_id", format!("{} bytes; the limit is {MAX_REQUEST_ID}", req.request_id.len())));
    }
    if req.job_time_limit_s > MAX_TIME_LIMIT_S {
        return Err(invalid("job_time_limit_s", format!("{} is outside 1..={MAX_TIME_LIMIT_S} seconds (0 = derived from each job)", req.job_time_limit_s)));
    }
    let limit_s = req.job_time_limit_s;
    let labels = labels(&req.labels)?;
    let requires = requirements(&req.requires, "requires")?;
    let notify = notify(req, &rules.webhooks)?;
    let header = NewBatch {
        name: req.name.clone(),
        priority: req.priority,
        labels,
        max_attempts: req.max_attempts,
        request_id: (!req.request_id.is_empty()).then(|| req.request_id.clone()),
        requires,
        notify,
        jobs: Vec::new(),
    };
    if req.video.is_some() {
        if !req.jobs.is_empty() || req.cartesian.is_some() {
            return Err(invalid("video", "a video batch has no `jobs` or `cartesian`: its jobs come from the clip"));
        }
        // the clip's jobs are planned once it is probed (crate::video)
        return Ok(header);
    }
    let cartesian_count = req.cartesian.as_ref().map_or(0, |c| c.contents.len().saturating_mul(c.styles.len()).saturating_mul(c.settings.len().max(1)));
    let total = req.jobs.len().saturating_add(cartesian_count);
    if total == 0 {
        return Err(invalid("jobs", "the batch has no jobs: give `jobs` or a `cartesian` with contents and styles"));
    }
    if total > rules.max_jobs {
        return Err(invalid("jobs", format!("{total} jobs; the limit is {} per batch", rules.max_jobs)));
    }
    let mut jobs = Vec::with_capacity(total);
    for (i, spec) in req.jobs.iter().enumerate() {
        let field = format!("jobs[{i}]");
        check_name(&format!("{field}.name"), &spec.name)?;
        let content = image(&format!("{field}.content"), spec.content.as_ref(), access, rules)?;
        if spec.styles.is_empty() {
            return Err(invalid(format!("{field}.styles"), "at least one style image is required"));
        }
        let styles = spec.styles.iter().enumerate().map(|(k, s)| image(&format!("{field}.styles[{k}]"), Some(s), access, rules)).collect::<Result<Vec<_>>>()?;
        let params = resolve_settings(&format!("{field}.settings"), spec.settings.as_ref(), styles.len(), rules)?;
        let name = if spec.name.is_empty() { default_name(&content, &styles[0]) } else { spec.name.clone() };
        let requires = requirements(&spec.requires, &format!("{field}.requires"))?;
        jobs.push(NewJob { requires, ..new_job(name, content, styles, &params, limit_s)? });
    }
    if let Some(c) = &req.cartesian {
        let contents =
            c.contents.iter().enumerate().map(|(k, s)| image(&format!("cartesian.contents[{k}]"), Some(s), access, rules)).collect::<Result<Vec<_>>>()?;
        let styles = c.styles.iter().enumerate().map(|(k, s)| image(&format!("cartesian.styles[{k}]"), Some(s), access, rules)).collect::<Result<Vec<_>>>()?;
        let settings = if c.settings.is_empty() {
            vec![resolve_settings("cartesian.settings", None, 1, rules)?]
        } else {
            c.settings.iter().enumerate().map(|(k, s)| resolve_settings(&format!("cartesian.settings[{k}]"), Some(s), 1, rules)).collect::<Result<Vec<_>>>()?
        };
        for content in &contents {
            for style in &styles {
                for params in &settings {
                    jobs.push(new_job(default_name(content, style), content.clone(), vec![style.clone()], params, limit_s)?);
                }
            }
        }
    }
    Ok(NewBatch { jobs, ..header })
}

/// Worker-pool requirements (`pool=studio-b`, `vram>=48`), named by field.
fn requirements(texts: &[String], field: &str) -> Result<Vec<Requirement>> {
    stylefarm_core::labels::parse_requirements(texts, field).map_err(|(field, reason)| invalid(field, reason))
}

/// A worker's labels (worker pools).
pub fn worker_labels(raw: &std::collections::HashMap<String, String>) -> Result<Labels> {
    let labels: Labels = raw.clone().into_iter().collect();
    stylefarm_core::labels::check_labels(&labels).map_err(|reason| invalid("labels", reason))?;
    Ok(labels)
}

pub fn devices(raw: &[pb::Device]) -> Result<Vec<DeviceRecord>> {
    if raw.is_empty() || raw.len() > 64 {
        return Err(invalid("devices", format!("{} devices; a worker has 1..=64", raw.len())));
    }
    raw.iter()
        .enumerate()
        .map(|(i, d)| {
            if d.name.is_empty() || d.name.len() > 64 || d.name.chars().any(char::is_control) {
                return Err(invalid(format!("devices[{i}].name"), "1..=64 characters, no control characters"));
            }
            if d.memory_bytes > MAX_DEVICE_BYTES {
                return Err(invalid(format!("devices[{i}].memory_bytes"), format!("{} is above the limit {MAX_DEVICE_BYTES} (16 TiB)", d.memory_bytes)));
            }
            if d.description.len() > 256 {
                return Err(invalid(format!("devices[{i}].description"), "at most 256 bytes"));
            }
            Ok(DeviceRecord { name: d.name.clone(), memory_bytes: d.memory_bytes, description: d.description.clone() })
        })
        .collect()
}

/// Largest device memory a worker may announce (16 TiB).
pub const MAX_DEVICE_BYTES: u64 = 16 << 40;
/// Most output files one job may report.
pub const MAX_OUTPUT_FILES: usize = 1024;

/// A float from the network: finite, and (where `non_negative`) >= 0.
pub fn finite(field: &str, value: f64, non_negative: bool) -> Result<f64> {
    if !value.is_finite() {
        return Err(invalid(field, format!("{value} is not a finite number")));
    }
    if non_negative && value < 0.0 {
        return Err(invalid(field, format!("{value} is negative")));
    }
    Ok(value)
}

/// A heartbeat's progress: bounded rows of finite numbers.
pub fn progress(field: &str, p: &pb::JobProgress) -> Result<()> {
    if p.rows.len() > 10_000 {
        return Err(invalid(format!("{field}.rows"), format!("{} rows; the limit is 10000 per heartbeat", p.rows.len())));
    }
    for (i, row) in p.latest.iter().chain(p.rows.iter()).enumerate() {
        let f = if i == 0 && p.latest.is_some() { format!("{field}.latest") } else { format!("{field}.rows[{}]", i - p.latest.is_some() as usize) };
        for (name, v) in [("total", row.total), ("content", row.content), ("style", row.style), ("tv", row.tv), ("elapsed_ms", row.elapsed_ms)] {
            finite(&format!("{f}.{name}"), v, true)?;
        }
    }
    Ok(())
}

/// Most steps one attempt may report.
pub const MAX_SPANS: usize = 64;

/// An attempt's steps from a worker: bounded, named, finite.
pub fn spans(field: &str, raw: &[pb::SpanTiming]) -> Result<Vec<SpanRecord>> {
    if raw.len() > MAX_SPANS {
        return Err(invalid(field, format!("{} spans; the limit is {MAX_SPANS}", raw.len())));
    }
    raw.iter()
        .enumerate()
        .map(|(i, s)| {
            let f = format!("{field}[{i}]");
            if s.name.is_empty() || s.name.len() > 64 || s.detail.len() > 200 {
                return Err(invalid(format!("{f}.name"), "name 1..=64 bytes, detail at most 200"));
            }
            if s.depth > 8 {
                return Err(invalid(format!("{f}.depth"), format!("{}; the limit is 8", s.depth)));
            }
            Ok(SpanRecord {
                name: s.name.clone(),
                offset_ms: finite(&format!("{f}.offset_ms"), s.offset_ms, true)?,
                duration_ms: finite(&format!("{f}.duration_ms"), s.duration_ms, true)?,
                depth: s.depth,
                detail: s.detail.clone(),
            })
        })
        .collect()
}

/// A completion's outputs must all lie inside the attempt's own prefix, and
/// its numbers be finite (a diverged render is a failure, not a result).
pub fn outputs(result: Option<&pb::JobResult>, expected_prefix: &str) -> Result<JobOutputs> {
    let Some(r) = result else {
        return Ok(JobOutputs { prefix: expected_prefix.to_string(), ..Default::default() });
    };
    if !r.prefix.is_empty() && r.prefix != expected_prefix {
        return Err(invalid("result.prefix", format!("`{}` is not this attempt's prefix `{expected_prefix}`", r.prefix)));
    }
    if r.outputs.len() > MAX_OUTPUT_FILES {
        return Err(invalid("result.outputs", format!("{} files; the limit is {MAX_OUTPUT_FILES}", r.outputs.len())));
    }
    finite("result.final_loss", r.final_loss, true)?;
    finite("result.engine_ms", r.engine_ms, true)?;
    if r.device.len() > 64 {
        return Err(invalid("result.device", "at most 64 bytes"));
    }
    let mut files = Vec::with_capacity(r.outputs.len());
    for (i, f) in r.outputs.iter().enumerate() {
        if f.key.len() > MAX_URL_CHARS || f.kind.len() > 32 {
            return Err(invalid(format!("result.outputs[{i}]"), format!("key at most {MAX_URL_CHARS} bytes, kind at most 32")));
        }
        if !f.key.starts_with(expected_prefix) || f.key.contains("..") {
            return Err(invalid(format!("result.outputs[{i}].key"), format!("`{}` is outside `{expected_prefix}`", f.key)));
        }
        let kind = OutputKind::parse(&f.kind)
            .ok_or_else(|| invalid(format!("result.outputs[{i}].kind"), format!("`{}` is not one of {}", f.kind, OutputKind::names())))?;
        files.push(OutputRecord { key: f.key.clone(), size_bytes: f.size_bytes, kind });
    }
    Ok(JobOutputs {
        prefix: expected_prefix.to_string(),
        files,
        final_loss: r.final_loss,
        iterations: r.iterations,
        engine_ms: r.engine_ms,
        device: r.device.clone(),
        spans: spans("result.spans", &r.spans)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The caller's uploads: none, or every hash; every store key is theirs.
    const NO_UPLOADS: InputAccess = InputAccess { upload: &|_| false, store_key: &|_| true };
    const ALL_UPLOADS: InputAccess = InputAccess { upload: &|_| true, store_key: &|_| true };

    fn url(u: &str) -> pb::ImageRef {
        pb::ImageRef { source: Some(pb::image_ref::Source::Url(u.into())) }
    }

    #[test]
    fn cartesian_expands_and_limits_name_fields() {
        let req = pb::SubmitBatchRequest {
            cartesian: Some(pb::CartesianSpec {
                contents: vec![url("file:///a.png"), url("file:///b.png")],
                styles: vec![url("file:///s1.png"), url("file:///s2.png"), url("file:///s3.png")],
                settings: vec![pb::RenderSettings { size: Some(64), iterations: Some(3), ..Default::default() }],
            }),
            ..Default::default()
        };
        let rules = SubmitRules::for_store("file:///");
        let batch = submit(&req, &NO_UPLOADS, &rules).unwrap();
        assert_eq!(batch.jobs.len(), 6);
        assert_eq!(batch.jobs[0].name, "a.png-x-s1.png");
        let p: RenderParams = serde_json::from_str(&batch.jobs[5].params_json).unwrap();
        assert_eq!((p.size, p.iterations), (64, 3));

        let mut bad = req.clone();
        bad.cartesian.as_mut().unwrap().settings[0].size = Some(100_000);
        let e = submit(&bad, &NO_UPLOADS, &rules).unwrap_err().to_string();
        assert!(e.contains("cartesian.settings[0].size") && e.contains("16..=8192"), "{e}");

        let mut bad = req.clone();
        bad.jobs.push(pb::JobSpec {
            content: Some(pb::ImageRef { source: Some(pb::image_ref::Source::Sha256("ab".repeat(32))) }),
            styles: vec![url("ftp://x/y.png")],
            ..Default::default()
        });
        let e = submit(&bad, &NO_UPLOADS, &rules).unwrap_err().to_string();
        assert!(e.contains("jobs[0].content.sha256") && e.contains("not been uploaded"), "{e}");
        let e = submit(&bad, &ALL_UPLOADS, &rules).unwrap_err().to_string();
        assert!(e.contains("jobs[0].styles[0].url") && e.contains("ftp"), "{e}");

        let mut bad = req.clone();
        bad.cartesian.as_mut().unwrap().settings[0].params_json = r#"{"iteratons": 3}"#.into();
        let e = submit(&bad, &NO_UPLOADS, &rules).unwrap_err().to_string();
        assert!(e.contains("cartesian.settings[0].iteratons"), "{e}");

        let mut bad = req;
        bad.priority = 5000;
        assert!(submit(&bad, &NO_UPLOADS, &rules).unwrap_err().to_string().contains("priority"));
    }

    #[test]
    fn outputs_must_stay_in_their_attempt() {
        let prefix = "batches/b1/jobs/j1/attempt-2/";
        let r = pb::JobResult {
            outputs: vec![pb::OutputFile { key: "batches/b1/jobs/j1/attempt-1/output.png".into(), size_bytes: 1, kind: "image".into() }],
            ..Default::default()
        };
        let e = outputs(Some(&r), prefix).unwrap_err().to_string();
        assert!(e.contains("result.outputs[0].key"), "{e}");
        for (loss, ms) in [(f64::NAN, 1.0), (f64::INFINITY, 1.0), (-1.0, 1.0), (1.0, f64::NAN)] {
            let r = pb::JobResult { final_loss: loss, engine_ms: ms, ..Default::default() };
            let e = outputs(Some(&r), prefix).unwrap_err().to_string();
            assert!(e.contains("result.final_loss") || e.contains("result.engine_ms"), "{e}");
        }
    }

    #[test]
    fn inputs_outside_the_store_and_user_weights_are_refused() {
        let rules = SubmitRules::for_store("file:///data/objects");
        let job = |content: &str, params_json: &str| pb::SubmitBatchRequest {
            jobs: vec![pb::JobSpec {
                content: Some(url(content)),
                styles: vec![url("file:///data/objects/s.png")],
                settings: Some(pb::RenderSettings { params_json: params_json.into(), ..Default::default() }),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(submit(&job("file:///data/objects/c.png", ""), &NO_UPLOADS, &rules).is_ok());
        for bad in ["file:///etc/passwd", "https://example.com/c.png", "http://127.0.0.1:9/x.png"] {
            let e = submit(&job(bad, ""), &NO_UPLOADS, &rules).unwrap_err().to_string();
            assert!(e.contains("jobs[0].content.url") && e.contains("not an input you may use"), "{e}");
        }
        // inside the store, but not the caller's: the same refusal as outside it
        let not_theirs = InputAccess { upload: &|_| false, store_key: &|key| key != "c.png" };
        let e = submit(&job("file:///data/objects/c.png", ""), &not_theirs, &rules).unwrap_err().to_string();
        assert!(e.contains("jobs[0].content.url") && e.contains("not an input you may use") && !e.contains("/data/objects/`"), "{e}");
        let e = submit(&job("file:///data/objects/c.png", r#"{"weights": {"url": {"url": "https://evil/w.safetensors"}}}"#), &NO_UPLOADS, &rules)
            .unwrap_err()
            .to_string();
        assert!(e.contains("jobs[0].settings.weights"), "{e}");
        let e = submit(&job("file:///data/objects/c.png", r#"{"snapshot_every": 1, "iterations": 100000}"#), &NO_UPLOADS, &rules).unwrap_err().to_string();
        assert!(e.contains("snapshot_every") && e.contains("500"), "{e}");
        let mut many = job("file:///data/objects/c.png", "");
        many.jobs = vec![many.jobs[0].clone(); 3];
        let small = SubmitRules { max_jobs: 2, ..rules.clone() };
        let e = submit(&many, &NO_UPLOADS, &small).unwrap_err().to_string();
        assert!(e.contains("`jobs`") && e.contains("limit is 2"), "{e}");
        let mut limit = job("file:///data/objects/c.png", "");
        limit.job_time_limit_s = MAX_TIME_LIMIT_S + 1;
        assert!(submit(&limit, &NO_UPLOADS, &rules).unwrap_err().to_string().contains("job_time_limit_s"));
        limit.job_time_limit_s = 60;
        assert_eq!(submit(&limit, &NO_UPLOADS, &rules).unwrap().jobs[0].time_limit_ms, 60_000);
    }
}
