//! A job's trace on the coordinator (when OTLP export is on): at submit a
//! `job` span per job, a child of the SubmitBatch call (so of the client's
//! submit when it sent a `traceparent`); per lease a `queue_wait` span and an
//! `attempt` span that stays open until the attempt ends (success, failure,
//! hand-back, expiry, time-out, cancel) and is the parent the lease's
//! `traceparent` names, so the worker's spans hang under it. Retries are more
//! attempts in the same trace.
//!
//! Memory: one span context per live job and one open span per running
//! attempt, both dropped when they end. After a coordinator restart the open
//! attempts' spans are lost, and new attempts of jobs submitted before it
//! parent to the job's trace id without the `job` span.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use opentelemetry::global::{BoxedSpan, BoxedTracer};
use opentelemetry::trace::{Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _};
use opentelemetry::{Context, KeyValue};
use stylefarm_core::traces;

use crate::ids::{JobId, WorkerId};
use crate::metrics::{AttemptEnd, Observation};
use crate::model::{JobRecord, Millis};

pub struct JobTracer {
    tracer: BoxedTracer,
    jobs: Mutex<HashMap<JobId, SpanContext>>,
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
            jobs: Mutex::new(HashMap::new()),
            attempts: Mutex::new(HashMap::new()),
        })
    }

    /// Starts and ends the `job` span of each new job under `parent` (the
    /// submit call, whose trace id the jobs took), and remembers them.
    pub fn submitted(&self, parent: &Context, jobs: &[JobId]) {
        let contexts: Vec<SpanContext> = jobs
            .iter()
            .map(|_| {
                let mut span = self.tracer.span_builder("job").start_with_context(&self.tracer, parent);
                let sc = span.span_context().clone();
                span.end();
                sc
            })
            .collect();
        let mut map = lock(&self.jobs);
        for (job, sc) in jobs.iter().zip(contexts) {
            map.insert(*job, sc);
        }
    }

    fn job_context(&self, job: &JobRecord) -> Context {
        if let Some(sc) = lock(&self.jobs).get(&job.id) {
            return Context::new().with_remote_span_context(sc.clone());
        }
        // submitted before a restart: the job's trace, without its `job` span
        let Ok(trace_id) = TraceId::from_hex(&job.trace_id) else { return Context::new() };
        let span_id = SpanId::from_bytes(trace_id.to_bytes()[..8].try_into().unwrap_or([1; 8]));
        Context::new().with_remote_span_context(SpanContext::new(trace_id, span_id, TraceFlags::SAMPLED, true, TraceState::default()))
    }

    /// A lease: its queue wait, and the attempt's span (open until it ends);
    /// returns the `traceparent` the worker continues.
    pub fn leased(&self, job: &JobRecord, attempt: u32, worker: WorkerId, device: &str, queue_wait_ms: Millis) -> Option<String> {
        let parent = self.job_context(job);
        let job_span = parent.span().span_context().clone();
        if !job_span.is_sampled() {
            // sampled out (OTEL_TRACES_SAMPLER): no spans, nothing kept; the
            // worker continues the trace unsampled, so it records none either
            let unsampled = SpanContext::new(job_span.trace_id(), SpanId::from_bytes(rand::random()), TraceFlags::default(), true, TraceState::default());
            return job_span.is_valid().then(|| traces::traceparent(&unsampled));
        }
        let now = SystemTime::now();
        let waited = now - Duration::from_millis(queue_wait_ms.max(0) as u64);
        let mut wait = self.tracer.span_builder("queue_wait").with_start_time(waited).start_with_context(&self.tracer, &parent);
        wait.end_with_timestamp(now);
        let span = self
            .tracer
            .span_builder("attempt")
            .with_kind(SpanKind::Internal)
            .with_start_time(now)
            .with_attributes([
                KeyValue::new("job.id", job.id.to_string()),
                KeyValue::new("job.attempt", i64::from(attempt)),
                KeyValue::new("worker.id", worker.to_string()),
                KeyValue::new("device", device.to_string()),
            ])
            .start_with_context(&self.tracer, &parent);
        let sc = span.span_context().clone();
        lock(&self.attempts).insert((job.id, attempt), span);
        sc.is_valid().then(|| traces::traceparent(&sc))
    }

    /// Ends attempts and forgets finished jobs.
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
                    lock(&self.jobs).remove(&job);
                }
                _ => {}
            }
        }
    }

    /// Sizes of the maps (bounded by live jobs and running attempts).
    pub fn sizes(&self) -> (usize, usize) {
        (lock(&self.jobs).len(), lock(&self.attempts).len())
    }
}
