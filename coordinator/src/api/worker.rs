//! `stylefarm.v1.WorkerApi`: what workers call (role `worker` or `admin`; under
//! mutual TLS, with a client certificate). A worker acts only as a worker id
//! its principal registered, and every call about a job carries its attempt
//! number and lease secret: the scheduler rejects anything but the current
//! attempt's.

use std::sync::Arc;
use std::time::Duration;

use stylefarm_proto as pb;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::auth::Api;
use crate::error::CoordError;
use crate::farm::Farm;
use crate::identity::Principal;
use crate::ids::{JobId, WorkerId};
use crate::keys::{attempt_prefix, image_key};
use crate::model::{AttemptStop, BusyReading, DeviceReadings, HeartbeatVerdict, ImageSource, MemoryReading, WorkerProfile};
use crate::scheduler::{AttemptFailure, Grant};
use crate::secrets::LeaseClaim;
use crate::validate;

/// Longest long poll a worker may ask for.
pub const MAX_WAIT_MS: u32 = 30_000;

pub struct WorkerService {
    farm: Arc<Farm>,
}

impl WorkerService {
    pub fn new(farm: Arc<Farm>) -> WorkerService {
        WorkerService { farm }
    }

    fn caller<T>(&self, request: &Request<T>) -> Result<Principal, CoordError> {
        self.farm.auth.authenticate(request, Api::Worker)
    }

    fn source_url(&self, source: &ImageSource) -> (String, String) {
        match source {
            ImageSource::Blob(sha) => (self.farm.blobs.url_of(&image_key(sha)), sha.clone()),
            ImageSource::Url(url) => (url.clone(), String::new()),
        }
    }

    fn lease_message(&self, grant: &Grant, traceparent_of_attempt: Option<String>) -> pb::Lease {
        let job = &grant.job;
        let (content_url, content_sha256) = self.source_url(&job.content);
        let (style_urls, style_sha256) = job.styles.iter().map(|s| self.source_url(s)).unzip();
        pb::Lease {
            job_id: job.id.to_string(),
            batch_id: job.batch.to_string(),
            attempt: grant.attempt,
            name: job.name.clone(),
            content_url,
            style_urls,
            content_sha256,
            style_sha256,
            params_json: job.params_json.clone(),
            output_prefix: self.farm.blobs.url_of(&attempt_prefix(job.batch, job.id, grant.attempt)),
            lease_ttl_ms: self.farm.config.scheduler.lease_ttl_ms as u32,
            traceparent: traceparent_of_attempt.unwrap_or_else(|| traceparent(&job.trace_id)),
            lease_secret: grant.secret.expose().to_string(),
            time_limit_ms: job.time_limit_ms,
            task_json: job.task.clone().unwrap_or_default(),
            inputs: grant.inputs.iter().map(|i| pb::DependencyOutput { job_id: i.job.to_string(), name: i.name.clone(), prefix: i.prefix.clone() }).collect(),
        }
    }
}

/// W3C trace context: the job's trace, a fresh span for this attempt, sampled.
fn traceparent(trace_id: &str) -> String {
    format!("00-{trace_id}-{}-01", hex::encode(rand::random::<[u8; 8]>()))
}

fn verdict(v: HeartbeatVerdict) -> pb::Verdict {
    match v {
        HeartbeatVerdict::Continue => pb::Verdict::Continue,
        HeartbeatVerdict::Cancel => pb::Verdict::Cancel,
        HeartbeatVerdict::LeaseLost => pb::Verdict::LeaseLost,
    }
}

#[tonic::async_trait]
impl pb::worker_api_server::WorkerApi for WorkerService {
    #[tracing::instrument(skip_all, fields(principal, worker_id, name))]
    async fn register_worker(&self, request: Request<pb::RegisterWorkerRequest>) -> Result<Response<pb::RegisterWorkerResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        validate::check_name("name", &req.name)?;
        validate::check_name("version", &req.version)?;
        let devices = validate::devices(&req.devices)?;
        let labels = validate::worker_labels(&req.labels)?;
        let existing = if req.worker_id.is_empty() { None } else { Some((WorkerId::parse(&req.worker_id, "worker_id")?, req.worker_secret.clone())) };
        let profile = WorkerProfile { name: req.name.clone(), devices, version: req.version.clone(), labels };
        let principal = caller.clone();
        let registration = self.farm.apply(move |s, fx, now| s.register_worker(existing, &principal, profile, now, fx)).await?;
        let id = registration.id;
        tracing::Span::current().record("principal", caller.name.as_str()).record("worker_id", tracing::field::display(id)).record("name", &req.name);
        tracing::info!(devices = req.devices.len(), version = %req.version, new = registration.secret.is_some(), "worker registered");
        Ok(Response::new(pb::RegisterWorkerResponse {
            worker_id: id.to_string(),
            lease_ttl_ms: self.farm.config.scheduler.lease_ttl_ms as u32,
            heartbeat_interval_ms: self.farm.config.heartbeat_interval_ms as u32,
            store_url: self.farm.blobs.url.clone(),
            worker_secret: registration.secret.map(|s| s.expose().to_string()).unwrap_or_default(),
            max_input_bytes: self.farm.config.max_upload_bytes,
        }))
    }

    async fn lease_job(&self, request: Request<pb::LeaseJobRequest>) -> Result<Response<pb::LeaseJobResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        let worker = WorkerId::parse(&req.worker_id, "worker_id")?;
        if req.wait_ms > MAX_WAIT_MS {
            return Err(CoordError::invalid("wait_ms", format!("{} is above the limit {MAX_WAIT_MS}", req.wait_ms)).into());
        }
        let memory = req.device_memory_bytes;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(req.wait_ms as u64);
        let grant = loop {
            let notified = self.farm.work_notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let principal = caller.clone();
            let looked = std::time::Instant::now();
            if let Some(grant) = self.farm.apply(move |s, fx, now| s.lease(worker, &principal, memory, now, fx)).await? {
                if let Some(metrics) = self.farm.metrics() {
                    metrics.lease_latency.record(looked.elapsed().as_secs_f64());
                }
                break Some(grant);
            }
            if tokio::time::Instant::now() >= deadline || self.farm.is_stopping() {
                break None;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        };
        let Some(grant) = grant else {
            return Ok(Response::new(pb::LeaseJobResponse { lease: None }));
        };
        // the attempt's span (traces exported): the worker's spans continue it
        let attempt_span = self.farm.tracer().and_then(|t| t.leased(&grant.job, grant.attempt, worker, &req.device, grant.queue_wait_ms));
        let lease = self.lease_message(&grant, attempt_span);
        tracing::info!(
            job_id = %grant.job.id, batch_id = %grant.job.batch, worker_id = %worker, principal = %caller.name, attempt = grant.attempt,
            device = %req.device, traceparent = %lease.traceparent, "job leased"
        );
        let mut response = Response::new(pb::LeaseJobResponse { lease: Some(lease.clone()) });
        if let Ok(value) = MetadataValue::try_from(lease.traceparent.as_str()) {
            response.metadata_mut().insert("traceparent", value);
        }
        Ok(response)
    }

    async fn heartbeat(&self, request: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        let worker = WorkerId::parse(&req.worker_id, "worker_id")?;
        if req.jobs.len() > 1024 {
            return Err(CoordError::invalid("jobs", format!("{} jobs; the limit is 1024", req.jobs.len())).into());
        }
        let mut beats = Vec::with_capacity(req.jobs.len());
        for (i, beat) in req.jobs.into_iter().enumerate() {
            let job = JobId::parse(&beat.job_id, &format!("jobs[{i}].job_id"))?;
            if let Some(p) = &beat.progress {
                validate::progress(&format!("jobs[{i}].progress"), p)?;
            }
            beats.push((job, LeaseClaim::new(beat.attempt, beat.lease_secret), beat.progress));
        }
        let readings = DeviceReadings { memory: memory_readings(req.memory)?, busy: busy_readings(req.busy)? };
        let verdicts = self.farm.apply(move |s, fx, now| s.heartbeat(worker, &caller, beats, readings, now, fx)).await?;
        let ttl = self.farm.config.scheduler.lease_ttl_ms as u32;
        let jobs = verdicts
            .into_iter()
            .map(|(job, attempt, v)| {
                if v != HeartbeatVerdict::Continue {
                    tracing::info!(job_id = %job, worker_id = %worker, attempt, verdict = ?v, "heartbeat verdict");
                }
                pb::JobVerdict { job_id: job.to_string(), attempt, verdict: verdict(v) as i32, lease_ttl_ms: ttl }
            })
            .collect();
        Ok(Response::new(pb::HeartbeatResponse { jobs }))
    }

    async fn complete_job(&self, request: Request<pb::CompleteJobRequest>) -> Result<Response<pb::CompleteJobResponse>, Status> {
        let caller = self.caller(&request)?;
        let traceparent: String = request.metadata().get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or("").chars().take(128).collect();
        let req = request.into_inner();
        let worker = WorkerId::parse(&req.worker_id, "worker_id")?;
        let job = JobId::parse(&req.job_id, "job_id")?;
        let batch = self.farm.read(|s| s.job(job).map(|j| j.batch))?.ok_or_else(|| CoordError::StaleAttempt {
            job: job.to_string(),
            attempt: req.attempt,
            reason: "the job is finished or unknown".into(),
        })?;
        let outputs = validate::outputs(req.result.as_ref(), &attempt_prefix(batch, job, req.attempt))?;
        let attempt = req.attempt;
        let claim = LeaseClaim::new(attempt, req.lease_secret);
        let principal = caller.clone();
        let result = self.farm.apply(move |s, fx, now| s.complete(worker, &principal, job, &claim, outputs, now, fx)).await;
        match &result {
            Ok(()) => tracing::info!(job_id = %job, batch_id = %batch, worker_id = %worker, attempt, traceparent = %traceparent, "job completed"),
            Err(e) => tracing::warn!(job_id = %job, worker_id = %worker, principal = %caller.name, attempt, error = %e, "completion rejected"),
        }
        result?;
        Ok(Response::new(pb::CompleteJobResponse {}))
    }

    async fn fail_job(&self, request: Request<pb::FailJobRequest>) -> Result<Response<pb::FailJobResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        let worker = WorkerId::parse(&req.worker_id, "worker_id")?;
        let job = JobId::parse(&req.job_id, "job_id")?;
        let reason: String = req.reason.chars().filter(|c| !c.is_control() || *c == '\n').take(4096).collect();
        let attempt = req.attempt;
        let stop = match pb::AttemptStop::try_from(req.stop) {
            Ok(pb::AttemptStop::Failed) => AttemptStop::Failed { retryable: false },
            Ok(pb::AttemptStop::FailedRetryable) => AttemptStop::Failed { retryable: true },
            Ok(pb::AttemptStop::Cancelled) => AttemptStop::Cancelled,
            Ok(pb::AttemptStop::HandedBack) => AttemptStop::HandedBack,
            Ok(pb::AttemptStop::Unspecified) | Err(_) => {
                return Err(CoordError::invalid(
                    "stop",
                    format!("{} is not a way an attempt stops (FAILED, FAILED_RETRYABLE, CANCELLED, HANDED_BACK)", req.stop),
                )
                .into())
            }
        };
        let spans = validate::spans("spans", &req.spans)?;
        let failure = AttemptFailure { reason: reason.clone(), stop: stop.clone(), spans };
        let claim = LeaseClaim::new(attempt, req.lease_secret);
        let after = self.farm.apply(move |s, fx, now| s.fail(worker, &caller, job, &claim, failure, now, fx)).await?;
        tracing::warn!(job_id = %job, worker_id = %worker, attempt, stop = ?stop, outcome = ?after, reason = %reason, "job attempt failed");
        Ok(Response::new(pb::FailJobResponse { will_retry: matches!(after, crate::model::AfterFailure::Requeued { .. }) }))
    }
}

/// Most device readings one heartbeat may carry.
const MAX_DEVICE_READINGS: usize = 64;

/// A heartbeat's readings of one kind (`field`), at most
/// [`MAX_DEVICE_READINGS`], each checked at the edge by `check` (the
/// scheduler checks the devices are the worker's own).
fn device_readings<P, R>(field: &str, readings: Vec<P>, check: impl Fn(usize, P) -> Result<R, CoordError>) -> Result<Vec<R>, CoordError> {
    if readings.len() > MAX_DEVICE_READINGS {
        return Err(CoordError::invalid(field, format!("{} readings; the limit is {MAX_DEVICE_READINGS}", readings.len())));
    }
    readings.into_iter().enumerate().map(|(i, r)| check(i, r)).collect()
}

/// GPU memory readings: used within total.
fn memory_readings(readings: Vec<pb::DeviceMemory>) -> Result<Vec<MemoryReading>, CoordError> {
    device_readings("memory", readings, |i, m| {
        if m.used_bytes > m.total_bytes {
            return Err(CoordError::invalid(format!("memory[{i}].used_bytes"), format!("{} exceeds total_bytes {}", m.used_bytes, m.total_bytes)));
        }
        Ok(MemoryReading { device: m.device, used_bytes: m.used_bytes, total_bytes: m.total_bytes })
    })
}

/// Busy fractions: each within 0..1 (NaN is not).
fn busy_readings(readings: Vec<pb::DeviceBusy>) -> Result<Vec<BusyReading>, CoordError> {
    device_readings("busy", readings, |i, b| {
        if !(0.0..=1.0).contains(&b.fraction) {
            return Err(CoordError::invalid(format!("busy[{i}].fraction"), format!("{} is not between 0 and 1", b.fraction)));
        }
        Ok(BusyReading { device: b.device, fraction: b.fraction, window_s: b.window_s })
    })
}
