//! A job's trace on the coordinator (when OTLP export is on): a `job` span
//! per job, a child of the SubmitBatch call (so of the client's submit when it
//! sent a `traceparent`), from the submit until the job ends; under it an
//! `attempt` span per lease, open until the attempt ends (success, failure,
//! hand-back, expiry, time-out, cancel), whose `queue.wait_ms` says how long
//! the job waited for that lease (the gap before it in the timeline) and
//! which is the parent the lease's `traceparent` names, so the worker's spans
//! hang under it. Retries are more attempts in the same trace. Two spans per
//! job: each costs the coordinator ~5 µs under perf, so a separate
//! `queue_wait` span per lease would add ~4 % to the bench's CPU per job.
//!
//! The `job` span is made at the job's first lease (or its end, if it never
//! ran) with the submit's time as its start, so queued jobs hold no open span.
//! Memory: the submit's span context per live job, one open span per started
//! job and per running attempt, all dropped when they end. After a coordinator
//! restart the open spans are lost; a job submitted before it gets a new `job`
//! span at its next lease, under its trace id but without the submit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use opentelemetry::global::{BoxedSpan, BoxedTracer};
use opentelemetry::trace::{Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _};
use opentelemetry::{Context, KeyValue};
use stylefarm_core::traces;

use crate::ids::{JobId, WorkerId};
use crate::model::{JobRecord, Millis, StateKind};
use crate::scheduler::{AttemptEnd, Observation};

/// Where a submitted job's trace hangs, and when it was submitted.
struct Submitted {
    parent: SpanContext,
    at: SystemTime,
}

impl Submitted {
    /// The `job` span's parent and start.
    fn start(&self) -> (Context, SystemTime) {
        (Context::new().with_remote_span_context(self.parent.clone()), self.at)
    }
}

pub struct JobTracer {
    tracer: BoxedTracer,
    submitted: Mutex<HashMap<JobId, Submitted>>,
    jobs: Mutex<HashMap<JobId, BoxedSpan>>,
    attempts: Mutex<HashMap<(JobId, u32), BoxedSpan>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl JobTracer {
    /// A tracer when OTLP export is on; None otherwise (nothing is recorded).
    pub fn from_env() -> Option<JobTracer> {
        traces::enabled().then(|| JobTracer {
            tracer: opentelemetry::global::tracer("stylefarm-coordinator"),
            submitted: Mutex::new(HashMap::new()),
            jobs: Mutex::new(HashMap::new()),
            attempts: Mutex::new(HashMap::new()),
        })
    }

    /// Remembers where each new job's trace hangs: under `parent` (the submit
    /// call, whose trace id the jobs took).
    pub fn submitted(&self, parent: &Context, jobs: &[JobId]) {
        let parent = parent.span().span_context().clone();
        let at = SystemTime::now();
        let mut map = lock(&self.submitted);
        for job in jobs {
            map.insert(*job, Submitted { parent: parent.clone(), at });
        }
    }

    /// The job's `job` span under `parent`, started `at` its submit.
    fn job_span(&self, job: JobId, (parent, at): (Context, SystemTime), record: Option<&JobRecord>) -> BoxedSpan {
        let mut attributes = vec![KeyValue::new("job.id", job.to_string())];
        if let Some(r) = record {
            attributes.push(KeyValue::new("batch.id", r.batch.to_string()));
            attributes.push(KeyValue::new("job.name", r.name.clone()));
        }
        self.tracer.span_builder("job").with_start_time(at).with_attributes(attributes).start_with_context(&self.tracer, &parent)
    }

    /// A lease: the attempt's span (open until it ends), under the job's span
    /// (made at its first lease); returns the `traceparent` the worker continues.
    pub fn leased(&self, job: &JobRecord, attempt: u32, worker: WorkerId, device: &str, queue_wait_ms: Millis) -> Option<String> {
        let job_span = {
            let mut jobs = lock(&self.jobs);
            let span = jobs.entry(job.id).or_insert_with(|| {
                // submitted before a restart: the job's own trace id and time
                let start = lock(&self.submitted).get(&job.id).map(Submitted::start).unwrap_or_else(|| restored_start(job));
                self.job_span(job.id, start, Some(job))
            });
            span.span_context().clone()
        };
        if !job_span.is_sampled() {
            // sampled out (OTEL_TRACES_SAMPLER): no spans recorded; the worker
            // continues the trace unsampled, so it records none either
            let unsampled = SpanContext::new(job_span.trace_id(), SpanId::from_bytes(rand::random()), TraceFlags::default(), true, TraceState::default());
            return job_span.is_valid().then(|| traces::traceparent(&unsampled));
        }
        let parent = Context::new().with_remote_span_context(job_span);
        let span = self
            .tracer
            .span_builder("attempt")
            .with_kind(SpanKind::Internal)
            .with_start_time(SystemTime::now())
            .with_attributes([
                KeyValue::new("job.attempt", i64::from(attempt)),
                KeyValue::new("worker.id", worker.to_string()),
                KeyValue::new("device", device.to_string()),
                KeyValue::new("queue.wait_ms", queue_wait_ms.max(0)),
            ])
            .start_with_context(&self.tracer, &parent);
        let sc = span.span_context().clone();
        lock(&self.attempts).insert((job.id, attempt), span);
        sc.is_valid().then(|| traces::traceparent(&sc))
    }

    /// Ends attempts, and the jobs that finished (a job that never ran gets
    /// its span now).
    pub fn observe(&self, observations: &[Observation]) {
        for o in observations {
            match *o {
                Observation::AttemptEnded { job, attempt, end, .. } => {
                    let Some(mut span) = lock(&self.attempts).remove(&(job, attempt)) else { continue };
                    span.set_attribute(KeyValue::new("outcome", end.label()));
                    if end != AttemptEnd::Succeeded {
                        span.set_status(Status::error(end.label()));
                    }
                    span.end();
                }
                Observation::Finished { job, state } if state.is_terminal() => {
                    let origin = lock(&self.submitted).remove(&job);
                    let open = lock(&self.jobs).remove(&job);
                    let Some(mut span) = open.or_else(|| origin.map(|s| self.job_span(job, s.start(), None))) else { continue };
                    span.set_attribute(KeyValue::new("outcome", state.label()));
                    if state != StateKind::Succeeded {
                        span.set_status(Status::error(state.label()));
                    }
                    span.end();
                }
                _ => {}
            }
        }
    }

    /// Sizes of the maps: submitted jobs (bounded by live jobs), open job
    /// spans (started jobs) and running attempts.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (lock(&self.submitted).len(), lock(&self.jobs).len(), lock(&self.attempts).len())
    }
}

/// A job submitted before a restart: its trace id, with a span id derived
/// from it standing in for the submit (which this process never saw), and its
/// submit time.
fn restored_start(job: &JobRecord) -> (Context, SystemTime) {
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(job.created_ms.max(0) as u64);
    let Ok(trace_id) = TraceId::from_hex(&job.trace_id) else { return (Context::new(), at) };
    let span_id = SpanId::from_bytes(trace_id.to_bytes()[..8].try_into().unwrap_or([1; 8]));
    (Context::new().with_remote_span_context(SpanContext::new(trace_id, span_id, TraceFlags::SAMPLED, true, TraceState::default())), at)
}
