//! `stylefarm-worker --coordinator URL`: the farm's worker. Registers its
//! devices, runs one job per device at a time (leasing only when that device is
//! idle), streams progress in heartbeats, uploads outputs to the attempt's
//! prefix and reports. SIGTERM drains; a lost coordinator does not stop a job.

mod attempt;
mod busy;
pub mod control;
mod devices;
mod gpu_memory;
mod inputs;
pub mod metrics;
mod pack;
mod render;
mod runner;
mod task;
mod tile_task;
mod video_task;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use stylefarm_core::retry::Backoff;
use stylefarm_core::tasks::{Stopping, Tasks};
use stylefarm_core::telemetry::Registry;
use stylefarm_core::traces;
use stylefarm_proto as pb;
use stylefarm_proto::connect::{read_token, ConnectOptions};
use tonic::Code;

pub use attempt::Previews;
use attempt::{JobContext, RunningJob, StopCause};
use busy::BusyClock;
use devices::DeviceInfo;
use inputs::InputCache;
pub use runner::Pipeline;

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
    #[arg(long, env = "STYLEFARM_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// File holding the worker's API token (role worker); else STYLEFARM_TOKEN.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// PEM CA that signed the coordinator's certificate (https:// URLs).
    #[arg(long, env = "STYLEFARM_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with --tls-key).
    #[arg(long, env = "STYLEFARM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM key of --tls-cert.
    #[arg(long, env = "STYLEFARM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Where the worker keeps its id and secret, so a restart is the same worker
    /// [default: WORK_DIR/worker-NAME.json].
    #[arg(long, env = "STYLEFARM_WORKER_STATE")]
    pub state_file: Option<PathBuf>,
    /// Largest input image to download, in bytes [default: what the coordinator allows uploads to be].
    #[arg(long)]
    pub max_input_bytes: Option<u64>,
    /// Jobs rendered at once on each device, their evaluations stacked through
    /// one VGG-16 pass; each lease asks for jobs that fit 1/K of the device's memory.
    #[arg(long, env = "STYLEFARM_JOBS_PER_DEVICE", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub jobs_per_device: u32,
    /// Serve the gRPC health service (and Drain, to local callers) here, for
    /// container health checks and Kubernetes probes, e.g. 0.0.0.0:50052.
    #[arg(long, env = "STYLEFARM_HEALTH_LISTEN")]
    pub health_listen: Option<std::net::SocketAddr>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9465):
    /// per device busy, iteration rate, seconds per evaluation, GPU memory.
    #[arg(long, env = "STYLEFARM_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// A label batches can require (worker pools), e.g. `pool=studio-b` or
    /// `vram=80`; repeatable. STYLEFARM_LABELS takes a comma-separated list.
    #[arg(long = "label", env = "STYLEFARM_LABELS", value_delimiter = ',', value_parser = stylefarm_core::labels::parse_label)]
    pub labels: Vec<(String, String)>,
    /// `on`: lease, fetch and decode the next job while one renders, and write
    /// and upload outputs while the next renders; `off`: one step at a time.
    #[arg(long, env = "STYLEFARM_PIPELINE", value_enum, default_value_t = Pipeline::On)]
    pub pipeline: Pipeline,
    /// `on`: snapshots and the progress animation with every render; `off`:
    /// the image, loss trace and metadata only.
    #[arg(long, env = "STYLEFARM_PREVIEWS", value_enum, default_value_t = Previews::On)]
    pub previews: Previews,
}

/// The worker's identity on the coordinator, kept across restarts.
#[derive(serde::Serialize, serde::Deserialize, Default, Clone)]
struct Identity {
    worker_id: String,
    worker_secret: String,
    coordinator: String,
}

fn load_identity(path: &std::path::Path, coordinator: &str) -> Identity {
    let Ok(text) = std::fs::read_to_string(path) else { return Identity::default() };
    match serde_json::from_str::<Identity>(&text) {
        Ok(id) if id.coordinator == coordinator => id,
        Ok(_) => Identity::default(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "unreadable worker state file; registering as a new worker");
            Identity::default()
        }
    }
}

fn save_identity(path: &std::path::Path, identity: &Identity) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(identity).map_err(std::io::Error::other)?)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::rename(tmp, path)
}

/// What the latest registration settled, in one place: who this worker is and
/// the coordinator's terms.
struct Session {
    identity: Identity,
    /// Where inputs and outputs live.
    store_url: String,
    heartbeat: Duration,
    /// The coordinator's cap on one input image.
    max_input_bytes: u64,
}

struct Farm {
    api: stylefarm_proto::connect::Worker,
    name: String,
    /// Worker pools: what batches' requirements match.
    labels: stylefarm_core::labels::Labels,
    devices: Vec<DeviceInfo>,
    session: Mutex<Session>,
    state_file: PathBuf,
    running: Mutex<HashMap<(String, u32), Arc<RunningJob>>>,
    draining: AtomicBool,
    /// GPU memory from nvidia-smi, sent with every heartbeat.
    gpu: Arc<gpu_memory::GpuWatch>,
    /// Each device's engine time over wall time, sent with every heartbeat.
    busy: Vec<(String, Arc<BusyClock>)>,
}

impl Farm {
    fn worker_id(&self) -> String {
        self.session().identity.worker_id.clone()
    }

    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Each device's busy fraction now, for the heartbeat.
    fn busy_readings(&self) -> Vec<pb::DeviceBusy> {
        let now = std::time::Instant::now();
        let window_s = busy::WINDOW.as_secs() as u32;
        self.busy.iter().map(|(device, clock)| pb::DeviceBusy { device: device.clone(), fraction: clock.fraction(now), window_s }).collect()
    }

    fn api(&self) -> stylefarm_proto::connect::Worker {
        self.api.clone()
    }

    /// Registers (or re-registers, keeping the id), retrying with backoff.
    async fn register(&self) -> Result<()> {
        let mut backoff = Backoff::default();
        loop {
            let identity = self.session().identity.clone();
            let request = pb::RegisterWorkerRequest {
                name: self.name.clone(),
                devices: self
                    .devices
                    .iter()
                    .map(|d| pb::Device { name: d.name.clone(), memory_bytes: d.memory_bytes, description: d.description.clone() })
                    .collect(),
                version: env!("CARGO_PKG_VERSION").into(),
                worker_id: identity.worker_id.clone(),
                worker_secret: identity.worker_secret.clone(),
                labels: self.labels.clone().into_iter().collect(),
            };
            match self.api().register_worker(request).await {
                Ok(response) => {
                    let r = response.into_inner();
                    tracing::info!(worker_id = %r.worker_id, store = %r.store_url, heartbeat_ms = r.heartbeat_interval_ms, same_id = r.worker_id == identity.worker_id, "registered");
                    let mut session = self.session();
                    session.identity.worker_id = r.worker_id;
                    if !r.worker_secret.is_empty() {
                        session.identity.worker_secret = r.worker_secret;
                    }
                    if let Err(e) = save_identity(&self.state_file, &session.identity) {
                        tracing::warn!(path = %self.state_file.display(), error = %e, "cannot keep the worker's id; a restart registers anew");
                    }
                    if r.max_input_bytes > 0 {
                        session.max_input_bytes = r.max_input_bytes;
                    }
                    session.store_url = r.store_url;
                    session.heartbeat = Duration::from_millis(r.heartbeat_interval_ms.max(50) as u64);
                    return Ok(());
                }
                Err(status) if matches!(status.code(), Code::InvalidArgument | Code::Unauthenticated) => {
                    bail!("the coordinator refused the registration: {}", status.message())
                }
                Err(status) if status.code() == Code::PermissionDenied && !identity.worker_id.is_empty() => {
                    tracing::warn!(error = %status.message(), "the saved worker id is not ours to use; registering as a new worker");
                    self.session().identity = Identity { coordinator: identity.coordinator.clone(), ..Identity::default() };
                }
                Err(status) if status.code() == Code::PermissionDenied => bail!("the coordinator refused the registration: {}", status.message()),
                Err(status) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %status.message(), retry_in_ms = delay.as_millis() as u64, "coordinator unreachable; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// Runs until SIGTERM or Ctrl-C, then drains. Installs the process's logging
/// (`log`: a filter; `log_json`) and, when OTEL_EXPORTER_OTLP_ENDPOINT is set,
/// trace export.
pub fn run(args: &FarmArgs, log: &str, log_json: bool) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let traces = traces::init("stylefarm-worker", log, log_json)?;
        let served = serve(args, shutdown_signal()).await;
        traces.shutdown().await;
        served
    })
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
    let token = read_token(args.token_file.as_deref())?;
    let tls_identity = args.tls_cert.clone().zip(args.tls_key.clone());
    let options = ConnectOptions { url: url.clone(), token, tls_ca: args.tls_ca.clone(), tls_identity };
    let channel = options.endpoint().with_context(|| format!("--coordinator `{url}`"))?.connect_lazy();
    let name = args.name.clone().unwrap_or_else(default_name);
    let work_dir = args.work_dir.clone().unwrap_or_else(stylefarm_engine::weights::cache_dir);
    let state_file = args.state_file.clone().unwrap_or_else(|| work_dir.join(format!("worker-{}.json", sanitise(&name))));
    let mut identity = load_identity(&state_file, &url);
    identity.coordinator = url.clone();
    let labels: stylefarm_core::labels::Labels = args.labels.iter().cloned().collect();
    stylefarm_core::labels::check_labels(&labels).map_err(|e| anyhow::anyhow!("--label: {e}"))?;
    let farm = Arc::new(Farm {
        api: options.worker(channel)?,
        name,
        labels,
        devices: devices.clone(),
        session: Mutex::new(Session {
            identity,
            store_url: String::new(),
            heartbeat: Duration::from_secs(5),
            max_input_bytes: args.max_input_bytes.unwrap_or(stylefarm_core::policy::DEFAULT_MAX_INPUT_BYTES),
        }),
        state_file,
        running: Mutex::new(HashMap::new()),
        draining: AtomicBool::new(false),
        gpu: Arc::new(gpu_memory::GpuWatch::new(&devices.iter().map(|d| d.name.clone()).collect::<Vec<_>>(), gpu_memory::CudaOrder::from_env())),
        busy: devices.iter().map(|d| (d.name.clone(), BusyClock::new(std::time::Instant::now()))).collect(),
    });
    let control = Arc::new(control::Control {
        drain: tokio::sync::Notify::new(),
        running: {
            let farm = Arc::clone(&farm);
            Box::new(move || farm.running.lock().map(|r| r.len()).unwrap_or(0))
        },
    });
    // up before registering: the process is alive while it retries the coordinator
    // every task but the runners (awaited by the drain) stops on one signal and is awaited at the end
    let mut tasks = Tasks::new();
    let health = match args.health_listen {
        Some(addr) => Some(control::serve(control::bind(addr).await?, Arc::clone(&control), &mut tasks).await?),
        None => None,
    };
    let metrics = args.metrics_listen.map(|_| metrics::WorkerMetrics::new(Registry::new(), &farm.busy));
    if let (Some(addr), Some(m)) = (args.metrics_listen, &metrics) {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding --metrics-listen {addr}"))?;
        let router = stylefarm_core::telemetry::router(Arc::clone(m) as Arc<dyn stylefarm_core::telemetry::Scrape>);
        let stopping = tasks.stopping();
        tasks.spawn("metrics", async move {
            if let Err(e) = stylefarm_core::telemetry::serve(listener, router, stopping.wait()).await {
                tracing::warn!(error = %e, "the metrics listener failed");
            }
        });
    }
    let sink = metrics.clone().map(|m| Box::new(move |own: &[(String, gpu_memory::GpuMemory)]| m.set_gpu_memory(own)) as gpu_memory::ReadingsSink);
    if let Some(poller) = farm.gpu.poller(Duration::from_secs(5), sink, tasks.stopping()) {
        tasks.spawn("gpu-memory", poller);
    }
    farm.register().await?;
    let cap = args.max_input_bytes.unwrap_or(farm.session().max_input_bytes);
    let inputs = Arc::new(InputCache::new(work_dir.join("inputs"), cap, metrics.as_ref().map(|m| m.downloaded_bytes.clone())));
    tasks.spawn("heartbeat", heartbeat_loop(Arc::clone(&farm), tasks.stopping()));
    let per_device = args.jobs_per_device.max(1);
    let clocks: Vec<Arc<BusyClock>> = farm.busy.iter().map(|(_, clock)| Arc::clone(clock)).collect();
    let runners: Vec<_> = devices
        .into_iter()
        .zip(clocks)
        .flat_map(|(device, busy)| {
            let pack = (per_device > 1).then(|| Arc::new(pack::DevicePack::new(device.device)));
            let (farm, inputs, work_dir, metrics) = (Arc::clone(&farm), Arc::clone(&inputs), work_dir.clone(), metrics.clone());
            let device_metrics = metrics.as_ref().and_then(|m| m.device(&device.name));
            let (pipeline, previews) = (args.pipeline, args.previews);
            (0..per_device).map(move |slot| {
                // one lock at a time: a guard lives to the end of its statement
                let store_url = farm.session().store_url.clone();
                let ctx = JobContext {
                    device: device.device,
                    store_url,
                    work_dir: work_dir.join("work").join(std::process::id().to_string()),
                    inputs: Arc::clone(&inputs),
                    worker_id: farm.worker_id(),
                    pack: pack.clone(),
                    metrics: metrics.clone(),
                    device_metrics: device_metrics.clone(),
                    busy: Arc::clone(&busy),
                    previews,
                };
                tracing::info!(device = %device.name, slot, jobs_per_device = per_device, memory_bytes = device.memory_bytes, pipeline = ?pipeline, "runner started");
                tokio::spawn(runner::run(Arc::clone(&farm), device.clone(), per_device, ctx, pipeline))
            })
        })
        .collect();
    tokio::select! {
        _ = shutdown => {}
        _ = control.drain.notified() => {}
    }
    tracing::info!(running = farm.running.lock().expect("running lock").len(), "draining (no new leases)");
    farm.draining.store(true, Ordering::Relaxed);
    if let Some(health) = &health {
        health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    }
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
    tasks.join().await;
    tracing::info!("drained; exiting");
    Ok(())
}

/// A name as a file-name part.
fn sanitise(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Progress out, verdicts in, every heartbeat interval.
/// Heartbeats every interval while jobs run; ends once drained with none
/// left, or at the stop.
async fn heartbeat_loop(farm: Arc<Farm>, stopping: Stopping) {
    loop {
        let interval = farm.session().heartbeat;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stopping.clone().wait() => return,
        }
        let jobs: Vec<Arc<RunningJob>> = farm.running.lock().expect("running lock").values().cloned().collect();
        if jobs.is_empty() && farm.draining.load(Ordering::Relaxed) {
            return;
        }
        let beats = jobs
            .iter()
            .map(|j| pb::JobHeartbeat {
                job_id: j.lease.job_id.clone(),
                attempt: j.lease.attempt,
                progress: j.take_progress(),
                lease_secret: j.lease.lease_secret.clone(),
            })
            .collect();
        match farm
            .api()
            .heartbeat(pb::HeartbeatRequest { worker_id: farm.worker_id(), jobs: beats, memory: farm.gpu.heartbeat(), busy: farm.busy_readings() })
            .await
        {
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
            // registering retries while the coordinator is away: the stop must not wait for it
            Err(status) if status.code() == Code::NotFound => {
                tokio::select! {
                    _ = farm.register() => {}
                    _ = stopping.clone().wait() => return,
                }
            }
            Err(status) => tracing::warn!(error = %status.message(), running = jobs.len(), "heartbeat failed; jobs keep running"),
        }
    }
}
