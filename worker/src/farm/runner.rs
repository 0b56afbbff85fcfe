//! One runner per device slot, pipelined so that the device never waits for
//! the worker: while job N renders, job N+1 is leased and its inputs fetched
//! and decoded (one job ahead at most, its lease kept alive by the
//! heartbeat), and job N-1's outputs are written, uploaded and reported
//! (two jobs behind at most). A job is reported complete only once its
//! outputs are in the store; a drain hands back a job leased ahead that has
//! not started, without spending an attempt.
//!
//! `--pipeline off` runs the same steps one after the other (the reference
//! the pipeline is measured against).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use stylefarm_core::retry::Backoff;
use stylefarm_core::traces;
use stylefarm_proto as pb;
use tokio::task::{JoinHandle, JoinSet};
use tonic::Code;
use tracing::Instrument;

use super::attempt::{JobContext, Outcome, RunningJob, StopCause};
use super::devices::DeviceInfo;
use super::metrics::{self, Stage};
use super::render::{self, WeightsSlot};
use super::task::{self, Ready, Turn};
use super::Farm;

/// Whether a runner overlaps the worker's own work with the device's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Pipeline {
    /// Lease, fetch and decode the next job while one renders; write and
    /// upload its outputs while the next renders.
    #[default]
    On,
    /// One job at a time, every step in turn (the reference).
    Off,
}

/// Jobs per runner whose outputs are still being written or uploaded; a
/// finished render waits for one of them before the next starts.
const FINISHING: usize = 2;

/// The next job is leased once the current render's remaining time falls
/// under twice what the last lease-and-prepare took, and never under this
/// (sooner would hold a job another worker could start now).
const LEAD_MIN: Duration = Duration::from_secs(2);

/// How often a runner reads the render's pace to decide when to lease ahead.
const PACE_CHECK: Duration = Duration::from_millis(25);

/// A leased job, made ready (or not) for its turn.
struct Leased {
    job: Arc<RunningJob>,
    span: tracing::Span,
    ready: Result<Ready, Outcome>,
    /// From asking for the lease to ready.
    took: Duration,
}

/// What a runner works with.
struct Runner {
    farm: Arc<Farm>,
    ctx: Arc<JobContext>,
    device: DeviceInfo,
    /// The memory one job may use: the device's share per slot.
    memory_bytes: u64,
    pipeline: Pipeline,
}

/// One device slot: lease, prepare, render, finish, report, in a pipeline.
/// With K runners on a device, each asks for jobs that fit 1/K of its memory,
/// so the K jobs fit together.
pub async fn run(farm: Arc<Farm>, device: DeviceInfo, per_device: u32, ctx: JobContext, pipeline: Pipeline) {
    let runner = Arc::new(Runner { memory_bytes: device.memory_bytes / u64::from(per_device), farm, ctx: Arc::new(ctx), device, pipeline });
    let mut slot: Option<WeightsSlot> = None;
    let mut finishing = JoinSet::new();
    let mut ahead: Option<JoinHandle<Option<Leased>>> = None;
    // a drain ends the loop at its top, where a job leased ahead is handed back unstarted
    loop {
        let leased = match ahead.take() {
            Some(handle) => handle.await.ok().flatten(),
            None => Arc::clone(&runner).lease_and_prepare().await,
        };
        // none: draining
        let Some(Leased { job, span, ready, took }) = leased else { break };
        let lead = LEAD_MIN.max(took * 2);
        if runner.draining() {
            runner.hand_back(&job).instrument(span).await;
            break;
        }
        let ready = match ready {
            Ok(ready) => ready,
            Err(outcome) => {
                runner.conclude(&job, outcome).instrument(span).await;
                continue;
            }
        };
        if let Some(m) = &runner.ctx.device_metrics {
            m.job_delta(1);
        }
        let turn = {
            let turn = task::run(&runner.ctx, &job, &mut slot, ready).instrument(span.clone());
            tokio::pin!(turn);
            loop {
                tokio::select! {
                    turn = &mut turn => break turn,
                    _ = tokio::time::sleep(PACE_CHECK), if runner.pipeline == Pipeline::On && ahead.is_none() => {
                        let remaining = job.shared.lock().expect("progress lock").remaining();
                        if remaining.is_some_and(|left| left <= lead) && !runner.draining() {
                            ahead = Some(tokio::spawn(Arc::clone(&runner).lease_and_prepare()));
                        }
                    }
                }
            }
        };
        if let Some(m) = &runner.ctx.device_metrics {
            m.job_delta(-1);
        }
        match turn {
            Turn::Ended(outcome) => runner.conclude(&job, outcome).instrument(span).await,
            Turn::Rendered(engined) => {
                let finish = Arc::clone(&runner).finish(job, *engined).instrument(span);
                match runner.pipeline {
                    Pipeline::Off => finish.await,
                    Pipeline::On => {
                        while finishing.len() >= FINISHING {
                            finishing.join_next().await;
                        }
                        finishing.spawn(finish);
                    }
                }
            }
        }
    }
    // what rendered is finished
    while finishing.join_next().await.is_some() {}
}

impl Runner {
    fn draining(&self) -> bool {
        self.farm.draining.load(Ordering::Relaxed)
    }

    /// Leases a job (waiting for one), registers it with the heartbeat and
    /// makes it ready; `None` once draining.
    async fn lease_and_prepare(self: Arc<Self>) -> Option<Leased> {
        let asked = Instant::now();
        let job = self.lease().await?;
        let span = tracing::info_span!("job", job_id = %job.lease.job_id, batch_id = %job.lease.batch_id, attempt = job.lease.attempt, device = %self.device.name, traceparent = %job.lease.traceparent);
        // the job's trace: this attempt's span on the coordinator is the parent
        traces::set_parent(&span, traces::context_from_traceparent(&job.lease.traceparent));
        let key = (job.lease.job_id.clone(), job.lease.attempt);
        self.farm.running.lock().expect("running lock").insert(key, Arc::clone(&job));
        let ready = async {
            tracing::info!(name = %job.lease.name, "job leased");
            task::prepare(&self.ctx, &job).await
        }
        .instrument(span.clone())
        .await;
        Some(Leased { job, span, ready, took: asked.elapsed() })
    }

    async fn lease(&self) -> Option<Arc<RunningJob>> {
        let mut backoff = Backoff::default();
        loop {
            if self.draining() {
                return None;
            }
            let request = pb::LeaseJobRequest {
                worker_id: self.farm.worker_id(),
                device: self.device.name.clone(),
                device_memory_bytes: self.memory_bytes,
                wait_ms: 2_000,
            };
            match self.farm.api().lease_job(request).await {
                Ok(response) => {
                    backoff.reset();
                    if let Some(lease) = response.into_inner().lease {
                        return Some(Arc::new(RunningJob::new(lease)));
                    }
                }
                Err(status) if status.code() == Code::NotFound => {
                    let _ = self.farm.register().await;
                }
                Err(status) => {
                    tracing::warn!(device = %self.device.name, error = %status.message(), "lease failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// Writes and uploads a rendered job's outputs, then reports it.
    async fn finish(self: Arc<Self>, job: Arc<RunningJob>, engined: render::Engined) {
        let outcome = render::finish(&self.ctx, &job, engined).await;
        self.conclude(&job, outcome).await;
    }

    /// A job leased but not started goes back without spending an attempt.
    async fn hand_back(&self, job: &Arc<RunningJob>) {
        tracing::info!("draining: handing back a job that had not started");
        self.conclude(job, Outcome::Stopped(StopCause::Shutdown)).await;
    }

    /// Counts, reports and forgets a job that ended.
    async fn conclude(&self, job: &Arc<RunningJob>, outcome: Outcome) {
        if let Some(m) = &self.ctx.metrics {
            m.job_ended(match &outcome {
                Outcome::Done(_) => metrics::JobEnd::Succeeded,
                Outcome::Failed { .. } => metrics::JobEnd::Failed,
                Outcome::Stopped(StopCause::Cancelled) => metrics::JobEnd::Cancelled,
                Outcome::Stopped(StopCause::LeaseLost) => metrics::JobEnd::LeaseLost,
                Outcome::Stopped(StopCause::Shutdown) => metrics::JobEnd::HandedBack,
            });
        }
        let reporting = Instant::now();
        report(&self.farm, job, outcome).await;
        if let Some(m) = &self.ctx.metrics {
            m.stage(Stage::Report, reporting.elapsed());
        }
        self.farm.running.lock().expect("running lock").remove(&(job.lease.job_id.clone(), job.lease.attempt));
    }
}

/// Tells the coordinator how the job ended, retrying while it is unreachable.
async fn report(farm: &Farm, job: &RunningJob, outcome: Outcome) {
    let lease = &job.lease;
    let spans = job.take_spans();
    let mut backoff = Backoff::default();
    for _ in 0..600 {
        let worker_id = farm.worker_id();
        let result = match &outcome {
            Outcome::Done(result) => {
                let request = pb::CompleteJobRequest {
                    worker_id,
                    job_id: lease.job_id.clone(),
                    attempt: lease.attempt,
                    result: Some(result.clone()),
                    lease_secret: lease.lease_secret.clone(),
                };
                let mut request = tonic::Request::new(request);
                if traces::enabled() {
                    traces::inject(&tracing::Span::current(), request.metadata_mut());
                } else if let Ok(value) = lease.traceparent.parse() {
                    request.metadata_mut().insert("traceparent", value);
                }
                farm.api().complete_job(request).await.map(|_| ())
            }
            Outcome::Stopped(StopCause::LeaseLost) => {
                tracing::warn!("lease lost: this attempt's outputs are discarded by the coordinator");
                return;
            }
            Outcome::Failed { reason, retryable } => {
                let stop = if *retryable { pb::AttemptStop::FailedRetryable } else { pb::AttemptStop::Failed };
                let mut request = tonic::Request::new(fail_request(worker_id, lease, reason.clone(), stop, spans.clone()));
                traces::inject(&tracing::Span::current(), request.metadata_mut());
                farm.api().fail_job(request).await.map(|_| ())
            }
            Outcome::Stopped(cause) => {
                // a drain hands the job back: it does not use up an attempt
                let (reason, stop) = match cause {
                    StopCause::Cancelled => ("cancelled".to_string(), pb::AttemptStop::Cancelled),
                    _ => ("the worker shut down before finishing; handed back".to_string(), pb::AttemptStop::HandedBack),
                };
                farm.api().fail_job(fail_request(worker_id, lease, reason, stop, spans.clone())).await.map(|_| ())
            }
        };
        match result {
            Ok(()) => {
                match &outcome {
                    Outcome::Done(r) => tracing::info!(final_loss = r.final_loss, engine_ms = r.engine_ms, files = r.outputs.len(), "job done"),
                    Outcome::Failed { reason, retryable } => tracing::warn!(reason = %reason, retryable, "job failed"),
                    Outcome::Stopped(cause) => tracing::info!(cause = ?cause, "job stopped"),
                }
                return;
            }
            Err(status) if matches!(status.code(), Code::FailedPrecondition | Code::InvalidArgument) => {
                tracing::warn!(error = %status.message(), "report refused");
                return;
            }
            Err(status) if status.code() == Code::NotFound => {
                let _ = farm.register().await;
            }
            Err(status) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %status.message(), retry_in_ms = delay.as_millis() as u64, "coordinator unreachable; will report when it is back");
                tokio::time::sleep(delay).await;
            }
        }
    }
    tracing::error!("gave up reporting the job; its lease will expire and it will run again");
}

fn fail_request(worker_id: String, lease: &pb::Lease, reason: String, stop: pb::AttemptStop, spans: Vec<pb::SpanTiming>) -> pb::FailJobRequest {
    pb::FailJobRequest {
        worker_id,
        job_id: lease.job_id.clone(),
        attempt: lease.attempt,
        reason,
        stop: stop as i32,
        lease_secret: lease.lease_secret.clone(),
        spans,
    }
}
