//! `stylefarm-worker --coordinator URL`: the farm's worker. Registers its
//! devices, runs one job per device at a time (leasing only when that device is
//! idle), streams progress in heartbeats, uploads outputs to the attempt's
//! prefix and reports. SIGTERM drains; a lost coordinator does not stop a job.

mod devices;
mod inputs;
mod job;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use stylefarm_proto as pb;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;
use tracing::Instrument;

use devices::DeviceInfo;
use inputs::InputCache;
use job::{JobContext, Outcome, RunningJob, StopCause};

#[derive(Args, Debug, Clone, Default)]
pub struct FarmArgs {
    /// Coordinator URL (runs the farm worker when no subcommand is given).
    #[arg(long, env = "STYLEFARM_COORDINATOR")]
    pub coordinator: Option<String>,
    /// auto (every CUDA device, else the CPU), cpu, or cuda:0,cuda:1,...
    #[arg(long, env = "STYLEFARM_DEVICES", default_value = "auto")]
    pub devices: String,
    /// Worker name shown in `stylefarm workers` [default: HOSTNAME-PID].
    #[arg(long, env = "STYLEFARM_WORKER_NAME")]
    pub name: Option<String>,
    /// libtorch CPU threads per process.
    #[arg(long, env = "STYLEFARM_TORCH_THREADS")]
    pub torch_threads: Option<i32>,
    /// On SIGTERM, wait this long for running jobs before handing them back.
    #[arg(long, default_value_t = 120)]
    pub drain_timeout_s: u64,
    /// Scratch space for outputs before upload, and the input cache [default: the model cache dir].
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

struct Farm {
    api: pb::worker_api_client::WorkerApiClient<Channel>,
    name: String,
    devices: Vec<DeviceInfo>,
    worker_id: Mutex<String>,
    store_url: Mutex<String>,
    heartbeat: Mutex<Duration>,
    running: Mutex<HashMap<(String, u32), Arc<RunningJob>>>,
    draining: AtomicBool,
}

impl Farm {
    fn worker_id(&self) -> String {
        self.worker_id.lock().expect("id lock").clone()
    }

    fn api(&self) -> pb::worker_api_client::WorkerApiClient<Channel> {
        self.api.clone()
    }

    /// Registers (or re-registers, keeping the id), retrying with backoff.
    async fn register(&self) -> Result<()> {
        let mut delay = Duration::from_millis(200);
        loop {
            let request = pb::RegisterWorkerRequest {
                name: self.name.clone(),
                devices: self.devices.iter().map(|d| pb::Device { name: d.name.clone(), memory_bytes: d.memory_bytes, description: d.description.clone() }).collect(),
                version: env!("CARGO_PKG_VERSION").into(),
                worker_id: self.worker_id(),
            };
            match self.api().register_worker(request).await {
                Ok(response) => {
                    let r = response.into_inner();
                    tracing::info!(worker_id = %r.worker_id, store = %r.store_url, heartbeat_ms = r.heartbeat_interval_ms, "registered");
                    *self.worker_id.lock().expect("id lock") = r.worker_id;
                    *self.store_url.lock().expect("store lock") = r.store_url;
                    *self.heartbeat.lock().expect("heartbeat lock") = Duration::from_millis(r.heartbeat_interval_ms.max(50) as u64);
                    return Ok(());
                }
                Err(status) if status.code() == Code::InvalidArgument => bail!("the coordinator refused the registration: {}", status.message()),
                Err(status) => {
                    tracing::warn!(error = %status.message(), retry_in_ms = delay.as_millis() as u64, "coordinator unreachable; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Runs until SIGTERM or Ctrl-C, then drains.
pub fn run(args: &FarmArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(serve(args, shutdown_signal()))
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "worker".into());
    format!("{host}-{}", std::process::id())
}

/// Works for the coordinator until `shutdown` resolves, then drains: no new
/// leases, running jobs finish (or, after the drain timeout, are handed back).
pub async fn serve(args: &FarmArgs, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let url = args.coordinator.clone().context("--coordinator URL (or STYLEFARM_COORDINATOR) is required")?;
    let devices = devices::detect(&args.devices)?;
    if let Some(threads) = args.torch_threads {
        if threads < 1 {
            bail!("invalid `--torch-threads`: {threads} must be >= 1");
        }
        tch::set_num_threads(threads);
    }
    let channel = Endpoint::from_shared(url.clone())
        .with_context(|| format!("invalid --coordinator `{url}`"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect_lazy();
    let farm = Arc::new(Farm {
        api: pb::worker_api_client::WorkerApiClient::new(channel).max_decoding_message_size(64 << 20),
        name: args.name.clone().unwrap_or_else(default_name),
        devices: devices.clone(),
        worker_id: Mutex::new(String::new()),
        store_url: Mutex::new(String::new()),
        heartbeat: Mutex::new(Duration::from_secs(5)),
        running: Mutex::new(HashMap::new()),
        draining: AtomicBool::new(false),
    });
    farm.register().await?;
    let work_dir = args.work_dir.clone().unwrap_or_else(stylefarm_engine::weights::cache_dir);
    let inputs = Arc::new(InputCache::new(work_dir.join("inputs")));
    tokio::spawn(heartbeat_loop(Arc::clone(&farm)));
    let runners: Vec<_> = devices
        .into_iter()
        .map(|device| {
            let ctx = JobContext {
                device: device.device,
                store_url: farm.store_url.lock().expect("store lock").clone(),
                work_dir: work_dir.join("work").join(std::process::id().to_string()),
                inputs: Arc::clone(&inputs),
                worker_id: farm.worker_id(),
            };
            tracing::info!(device = %device.name, memory_bytes = device.memory_bytes, "runner started");
            tokio::spawn(runner(Arc::clone(&farm), device, ctx))
        })
        .collect();
    shutdown.await;
    tracing::info!(running = farm.running.lock().expect("running lock").len(), "SIGTERM: draining (no new leases)");
    farm.draining.store(true, Ordering::Relaxed);
    let drain = async {
        for runner in runners {
            let _ = runner.await;
        }
    };
    tokio::pin!(drain);
    if tokio::time::timeout(Duration::from_secs(args.drain_timeout_s), &mut drain).await.is_err() {
        tracing::warn!("drain timeout: handing the running jobs back");
        for job in farm.running.lock().expect("running lock").values() {
            job.request_stop(StopCause::Shutdown);
        }
        drain.await;
    }
    tracing::info!("drained; exiting");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// One device: lease when idle, run, report.
async fn runner(farm: Arc<Farm>, device: DeviceInfo, ctx: JobContext) {
    let mut slot = None;
    let mut delay = Duration::from_millis(200);
    loop {
        if farm.draining.load(Ordering::Relaxed) {
            return;
        }
        let request = pb::LeaseJobRequest { worker_id: farm.worker_id(), device: device.name.clone(), device_memory_bytes: device.memory_bytes, wait_ms: 2_000 };
        let lease = match farm.api().lease_job(request).await {
            Ok(r) => {
                delay = Duration::from_millis(200);
                r.into_inner().lease
            }
            Err(status) => {
                if status.code() == Code::NotFound {
                    let _ = farm.register().await;
                } else {
                    tracing::warn!(device = %device.name, error = %status.message(), "lease failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                continue;
            }
        };
        let Some(lease) = lease else { continue };
        let job = Arc::new(RunningJob::new(lease));
        let key = (job.lease.job_id.clone(), job.lease.attempt);
        let span = tracing::info_span!("job", job_id = %job.lease.job_id, batch_id = %job.lease.batch_id, attempt = job.lease.attempt, device = %device.name, traceparent = %job.lease.traceparent);
        if farm.draining.load(Ordering::Relaxed) {
            report(&farm, &job, Outcome::Stopped(StopCause::Shutdown)).instrument(span).await;
            return;
        }
        farm.running.lock().expect("running lock").insert(key.clone(), Arc::clone(&job));
        async {
            tracing::info!(name = %job.lease.name, "job started");
            let outcome = job::execute(&ctx, &job, &mut slot).await;
            report(&farm, &job, outcome).await;
        }
        .instrument(span)
        .await;
        farm.running.lock().expect("running lock").remove(&key);
    }
}

/// Tells the coordinator how the job ended, retrying while it is unreachable.
async fn report(farm: &Farm, job: &RunningJob, outcome: Outcome) {
    let lease = &job.lease;
    let mut delay = Duration::from_millis(200);
    for _ in 0..600 {
        let worker_id = farm.worker_id();
        let result = match &outcome {
            Outcome::Done(result) => {
                let request = pb::CompleteJobRequest { worker_id, job_id: lease.job_id.clone(), attempt: lease.attempt, result: Some(result.clone()) };
                let mut request = tonic::Request::new(request);
                if let Ok(value) = lease.traceparent.parse() {
                    request.metadata_mut().insert("traceparent", value);
                }
                farm.api().complete_job(request).await.map(|_| ())
            }
            Outcome::Stopped(StopCause::LeaseLost) => {
                tracing::warn!("lease lost: this attempt's outputs are discarded by the coordinator");
                return;
            }
            Outcome::Failed { reason, retryable } => {
                let request = pb::FailJobRequest { worker_id, job_id: lease.job_id.clone(), attempt: lease.attempt, reason: reason.clone(), retryable: *retryable, cancelled: false };
                farm.api().fail_job(request).await.map(|_| ())
            }
            Outcome::Stopped(cause) => {
                let (reason, cancelled) = match cause {
                    StopCause::Cancelled => ("cancelled".to_string(), true),
                    _ => ("the worker shut down before finishing; handed back".to_string(), false),
                };
                let request = pb::FailJobRequest { worker_id, job_id: lease.job_id.clone(), attempt: lease.attempt, reason, retryable: true, cancelled };
                farm.api().fail_job(request).await.map(|_| ())
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
                tracing::warn!(error = %status.message(), retry_in_ms = delay.as_millis() as u64, "coordinator unreachable; will report when it is back");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    tracing::error!("gave up reporting the job; its lease will expire and it will run again");
}

/// Progress out, verdicts in, every heartbeat interval.
async fn heartbeat_loop(farm: Arc<Farm>) {
    loop {
        let interval = *farm.heartbeat.lock().expect("heartbeat lock");
        tokio::time::sleep(interval).await;
        let jobs: Vec<Arc<RunningJob>> = farm.running.lock().expect("running lock").values().cloned().collect();
        if jobs.is_empty() && farm.draining.load(Ordering::Relaxed) {
            return;
        }
        let beats = jobs
            .iter()
            .map(|j| pb::JobHeartbeat { job_id: j.lease.job_id.clone(), attempt: j.lease.attempt, progress: j.take_progress() })
            .collect();
        match farm.api().heartbeat(pb::HeartbeatRequest { worker_id: farm.worker_id(), jobs: beats }).await {
            Ok(response) => {
                for verdict in response.into_inner().jobs {
                    let Some(job) = jobs.iter().find(|j| j.lease.job_id == verdict.job_id && j.lease.attempt == verdict.attempt) else { continue };
                    match pb::Verdict::try_from(verdict.verdict) {
                        Ok(pb::Verdict::Cancel) => {
                            tracing::info!(job_id = %verdict.job_id, "cancelled by the coordinator; stopping");
                            job.request_stop(StopCause::Cancelled);
                        }
                        Ok(pb::Verdict::LeaseLost) => {
                            tracing::warn!(job_id = %verdict.job_id, attempt = verdict.attempt, "lease lost; stopping");
                            job.request_stop(StopCause::LeaseLost);
                        }
                        _ => {}
                    }
                }
            }
            Err(status) if status.code() == Code::NotFound => {
                let _ = farm.register().await;
            }
            Err(status) => tracing::warn!(error = %status.message(), running = jobs.len(), "heartbeat failed; jobs keep running"),
        }
    }
}
