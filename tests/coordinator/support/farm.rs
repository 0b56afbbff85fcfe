//! An in-process coordinator on port 0 and scriptable test workers that speak
//! the worker protocol by hand (the real worker is tested elsewhere).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use stylefarm_coordinator::CoordinatorConfig;
use stylefarm_proto as pb;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub type Client = stylefarm_proto::connect::Coordinator;
pub type WorkerClient = stylefarm_proto::connect::Worker;

/// Where test batches' never-read input URLs point: allowlisted by [`test_config`].
pub const NOWHERE: &str = "file:///nowhere/";

/// Short TTLs and backoffs so expiry and retries happen within a test.
pub fn test_config(data_dir: &Path) -> CoordinatorConfig {
    CoordinatorConfig {
        data_dir: data_dir.to_path_buf(),
        lease_ttl_ms: 2_000,
        heartbeat_interval_ms: 200,
        backoff_base_ms: 50,
        backoff_max_ms: 200,
        tick_ms: 25,
        allowed_input_prefixes: vec![NOWHERE.into()],
        ..CoordinatorConfig::default()
    }
}

pub struct Coordinator {
    pub addr: SocketAddr,
    pub url: String,
    /// `http://ADDR/metrics` when the config asked for metrics (bound on port 0).
    pub metrics_url: Option<String>,
    /// `http://ADDR` of the dashboard when the config asked for one (port 0).
    pub web_url: Option<String>,
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), stylefarm_coordinator::server::ServeError>>>,
}

impl Coordinator {
    pub async fn start(config: CoordinatorConfig) -> Coordinator {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let data_dir = config.data_dir.clone();
        let http = match config.metrics_listen {
            Some(_) => Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind port 0")),
            None => None,
        };
        let metrics_url = http.as_ref().map(|l| format!("http://{}/metrics", l.local_addr().unwrap()));
        let web = match config.http_listen {
            Some(_) => Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind port 0")),
            None => None,
        };
        let web_url = web.as_ref().map(|l| format!("http://{}", l.local_addr().unwrap()));
        let listeners = stylefarm_coordinator::server::Listeners { grpc: listener, http, web };
        let handle = tokio::spawn(stylefarm_coordinator::server::run_with(listeners, config, async move {
            let _ = stopped.await;
        }));
        let url = format!("http://{addr}");
        // ready once it answers
        for _ in 0..100 {
            if Channel::from_shared(url.clone()).unwrap().connect().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Coordinator { addr, url, metrics_url, web_url, data_dir, stop: Some(stop), handle: Some(handle) }
    }

    /// What `/metrics` says now (the config must have asked for metrics).
    pub async fn scrape(&self) -> String {
        http_get(self.metrics_url.as_deref().expect("started with metrics_listen")).await
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url.clone()).unwrap().connect().await.expect("connect")
    }

    pub async fn client(&self) -> Client {
        self.client_with(None).await
    }

    /// A client that sends `token` with every call.
    pub async fn client_with(&self, token: Option<&str>) -> Client {
        options(&self.url, token).coordinator(self.channel().await).unwrap()
    }

    pub async fn worker(&self, name: &str, memory_bytes: u64) -> TestWorker {
        TestWorker::register(self.channel().await, name, memory_bytes).await
    }

    /// A test worker in a pool: it registers with `labels` (e.g. `[("pool", "studio-b")]`).
    pub async fn worker_labelled(&self, name: &str, memory_bytes: u64, labels: &[(&str, &str)]) -> TestWorker {
        let api = options("http://unused", None).worker(self.channel().await).unwrap();
        TestWorker::register_profile(api, name, "cpu", memory_bytes, None, labels).await.expect("register")
    }

    /// A test worker that registers with `token`.
    pub async fn worker_with(&self, name: &str, memory_bytes: u64, token: Option<&str>) -> Result<TestWorker, tonic::Status> {
        TestWorker::try_register(options(&self.url, token).worker(self.channel().await).unwrap(), name, memory_bytes, None).await
    }

    /// Graceful stop; returns what `run` returned.
    pub async fn stop(mut self) -> Result<(), stylefarm_coordinator::server::ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.handle.take().unwrap().await.expect("coordinator task")
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub struct TestWorker {
    pub id: String,
    /// The registration secret (to register again as `id`).
    pub secret: String,
    pub api: WorkerClient,
    pub memory_bytes: u64,
}

/// Connection options for tests: a plain URL and maybe a token.
pub fn options(url: &str, token: Option<&str>) -> stylefarm_proto::connect::ConnectOptions {
    stylefarm_proto::connect::ConnectOptions { url: url.into(), token: token.map(str::to_string), ..Default::default() }
}

impl TestWorker {
    pub async fn register(channel: Channel, name: &str, memory_bytes: u64) -> TestWorker {
        let api = options("http://unused", None).worker(channel).unwrap();
        TestWorker::try_register(api, name, memory_bytes, None).await.expect("register")
    }

    /// Registers (as `existing` = (id, secret) if given).
    pub async fn try_register(api: WorkerClient, name: &str, memory_bytes: u64, existing: Option<(&str, &str)>) -> Result<TestWorker, tonic::Status> {
        TestWorker::register_device(api, name, "cpu", memory_bytes, existing).await
    }

    /// Registers with one device named `device` (a `cuda:0` needs no GPU: the
    /// coordinator only records what a worker says it has).
    pub async fn register_device(
        api: WorkerClient,
        name: &str,
        device: &str,
        memory_bytes: u64,
        existing: Option<(&str, &str)>,
    ) -> Result<TestWorker, tonic::Status> {
        TestWorker::register_profile(api, name, device, memory_bytes, existing, &[]).await
    }

    /// Registers with one device and `labels` (worker pools).
    pub async fn register_profile(
        mut api: WorkerClient,
        name: &str,
        device: &str,
        memory_bytes: u64,
        existing: Option<(&str, &str)>,
        labels: &[(&str, &str)],
    ) -> Result<TestWorker, tonic::Status> {
        let (worker_id, worker_secret) = existing.map(|(i, s)| (i.to_string(), s.to_string())).unwrap_or_default();
        let response = api
            .register_worker(pb::RegisterWorkerRequest {
                name: name.into(),
                devices: vec![pb::Device { name: device.into(), memory_bytes, description: "test".into() }],
                version: "test".into(),
                worker_id,
                worker_secret,
                labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            })
            .await?
            .into_inner();
        Ok(TestWorker { id: response.worker_id, secret: response.worker_secret, api, memory_bytes })
    }

    /// The same worker registering again (its id and secret) over `channel`,
    /// as after a coordinator restart.
    pub async fn reconnect(self, channel: Channel) -> TestWorker {
        let api = options("http://unused", None).worker(channel).unwrap();
        TestWorker::try_register(api, "again", self.memory_bytes, Some((&self.id, &self.secret))).await.expect("register again")
    }

    pub async fn lease(&mut self, wait_ms: u32) -> Option<pb::Lease> {
        let request = pb::LeaseJobRequest { worker_id: self.id.clone(), device: "cpu".into(), device_memory_bytes: self.memory_bytes, wait_ms };
        self.api.lease_job(request).await.expect("lease").into_inner().lease
    }

    pub async fn heartbeat(&mut self, lease: &pb::Lease, iteration: u32) -> pb::Verdict {
        let progress = pb::JobProgress {
            iteration,
            total_iterations: 10,
            scale: 0,
            scales: 1,
            latest: Some(pb::LossRow { iteration, total: 1000.0 / (iteration + 1) as f64, ..Default::default() }),
            rows: vec![],
        };
        let request = pb::HeartbeatRequest {
            worker_id: self.id.clone(),
            jobs: vec![pb::JobHeartbeat {
                job_id: lease.job_id.clone(),
                attempt: lease.attempt,
                progress: Some(progress),
                lease_secret: lease.lease_secret.clone(),
            }],
            memory: Vec::new(),
            busy: Vec::new(),
        };
        let response = self.api.heartbeat(request).await.expect("heartbeat").into_inner();
        pb::Verdict::try_from(response.jobs[0].verdict).unwrap()
    }

    /// A heartbeat with no jobs that reports device memory (as nvidia-smi would).
    pub async fn report_memory(&mut self, memory: Vec<pb::DeviceMemory>) -> Result<(), tonic::Status> {
        self.report(memory, Vec::new()).await
    }

    /// A heartbeat with no jobs that reports devices' busy fractions.
    pub async fn report_busy(&mut self, busy: Vec<pb::DeviceBusy>) -> Result<(), tonic::Status> {
        self.report(Vec::new(), busy).await
    }

    async fn report(&mut self, memory: Vec<pb::DeviceMemory>, busy: Vec<pb::DeviceBusy>) -> Result<(), tonic::Status> {
        self.api.heartbeat(pb::HeartbeatRequest { worker_id: self.id.clone(), jobs: Vec::new(), memory, busy }).await.map(|_| ())
    }

    pub async fn complete(&mut self, lease: &pb::Lease) -> Result<(), tonic::Status> {
        let prefix = lease.output_prefix.split_once("/batches/").map(|(_, rest)| format!("batches/{rest}")).unwrap_or_default();
        let result =
            pb::JobResult { prefix: prefix.clone(), outputs: vec![], final_loss: 1.0, iterations: 10, engine_ms: 5.0, device: "cpu".into(), spans: vec![] };
        let request = pb::CompleteJobRequest {
            worker_id: self.id.clone(),
            job_id: lease.job_id.clone(),
            attempt: lease.attempt,
            result: Some(result),
            lease_secret: lease.lease_secret.clone(),
        };
        self.api.complete_job(request).await.map(|_| ())
    }

    pub async fn fail(&mut self, lease: &pb::Lease, reason: &str, stop: pb::AttemptStop) -> Result<bool, tonic::Status> {
        let request = pb::FailJobRequest {
            worker_id: self.id.clone(),
            job_id: lease.job_id.clone(),
            attempt: lease.attempt,
            reason: reason.into(),
            stop: stop as i32,
            lease_secret: lease.lease_secret.clone(),
            spans: vec![],
        };
        self.api.fail_job(request).await.map(|r| r.into_inner().will_retry)
    }
}

pub fn url_ref(url: &str) -> pb::ImageRef {
    pb::ImageRef { source: Some(pb::image_ref::Source::Url(url.into())) }
}

/// A batch of `n` tiny jobs whose inputs are URLs (never read: test workers fake the work).
pub fn batch_request(name: &str, n: usize, priority: i32) -> pb::SubmitBatchRequest {
    let jobs = (0..n)
        .map(|i| pb::JobSpec {
            name: format!("{name}-{i}"),
            content: Some(url_ref(&format!("{NOWHERE}content-{i}.png"))),
            styles: vec![url_ref(&format!("{NOWHERE}style.png"))],
            settings: Some(pb::RenderSettings { size: Some(64), iterations: Some(10), ..Default::default() }),
            requires: Vec::new(),
        })
        .collect();
    pb::SubmitBatchRequest { name: name.into(), priority, jobs, ..Default::default() }
}

pub async fn get_batch(client: &mut Client, id: &str) -> (pb::Batch, Vec<pb::Job>) {
    let r = client.get_batch(pb::GetBatchRequest { batch_id: id.into(), include_jobs: true }).await.expect("get batch").into_inner();
    (r.batch.unwrap(), r.jobs)
}

/// Polls until `check` holds or the timeout passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// Uploads a file through the client API; returns its SHA-256.
pub async fn upload_file(client: &mut Client, path: &Path) -> String {
    let data = std::fs::read(path).expect("read image");
    upload_bytes(client, path.file_name().unwrap().to_str().unwrap(), data).await.expect("upload")
}

pub async fn upload_bytes(client: &mut Client, filename: &str, data: Vec<u8>) -> Result<String, tonic::Status> {
    upload_as(client, filename, data, false).await
}

/// Uploads bytes as an image, or as a clip (`video`, probed by the coordinator).
pub async fn upload_as(client: &mut Client, filename: &str, data: Vec<u8>, video: bool) -> Result<String, tonic::Status> {
    let messages = vec![
        pb::UploadImageRequest {
            part: Some(pb::upload_image_request::Part::Header(pb::UploadHeader {
                filename: filename.into(),
                size_bytes: data.len() as u64,
                sha256: String::new(),
                video,
            })),
        },
        pb::UploadImageRequest { part: Some(pb::upload_image_request::Part::Chunk(data.into())) },
    ];
    Ok(client.upload_image(tokio_stream::iter(messages)).await?.into_inner().sha256)
}

pub fn sha_ref(sha: &str) -> pb::ImageRef {
    pb::ImageRef { source: Some(pb::image_ref::Source::Sha256(sha.into())) }
}

/// Follows WatchBatch to the end; returns the final jobs.
pub async fn wait_batch(client: &mut Client, batch: &str, timeout: Duration) -> (pb::Batch, Vec<pb::Job>) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (b, jobs) = get_batch(client, batch).await;
        if b.finished_at_ms != 0 {
            return (b, jobs);
        }
        assert!(tokio::time::Instant::now() < deadline, "batch {batch} not finished in {timeout:?}: {b:?} {jobs:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Connects, retrying for up to 5 s while the server comes up.
pub async fn connect_retrying(url: &str) -> Channel {
    for _ in 0..200 {
        if let Ok(channel) = Channel::from_shared(url.to_string()).unwrap().connect().await {
            return channel;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no coordinator at {url}");
}

/// The real `stylefarm-coordinator` binary as a child process.
pub struct CoordinatorProcess {
    pub child: std::process::Child,
    /// host:port it bound (read from its first stdout line).
    pub addr: String,
    pub url: String,
}

impl CoordinatorProcess {
    /// Starts it on `listen` (`127.0.0.1:0` for a free port) with a short lease TTL.
    pub fn start(data_dir: &Path, listen: &str, lease_ttl_ms: u32) -> CoordinatorProcess {
        CoordinatorProcess::start_with(data_dir, listen, lease_ttl_ms, &[])
    }

    /// [`CoordinatorProcess::start`] with more flags.
    pub fn start_with(data_dir: &Path, listen: &str, lease_ttl_ms: u32, flags: &[&str]) -> CoordinatorProcess {
        use std::io::BufRead;
        let mut child = std::process::Command::new(crate::workspace_bin("stylefarm-coordinator", "stylefarm-coordinator"))
            .args(["--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(["--lease-ttl-ms", &lease_ttl_ms.to_string(), "--heartbeat-interval-ms", "300", "--log", "warn", "--allow-input-prefix", NOWHERE])
            .args(flags)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start coordinator");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line {line:?}")).to_string();
        CoordinatorProcess { child, url: format!("http://{addr}"), addr }
    }
}

impl Drop for CoordinatorProcess {
    /// A test that ends (or fails) never leaves a coordinator running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The real `stylefarm-worker` on the CPU as a child process, named `name`
/// (its id survives a restart with the same `work_dir`).
pub fn start_worker_process(url: &str, name: &str, work_dir: &Path) -> std::process::Child {
    std::process::Command::new(crate::workspace_bin("stylefarm-worker", "stylefarm-worker"))
        .args(["--coordinator", url, "--devices", "cpu", "--name", name, "--work-dir"])
        .arg(work_dir)
        .env("STYLEFARM_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start worker")
}

/// The value of `series` (name and labels as written, e.g.
/// `stylefarm_webhook_outbox` or `x_total{outcome="given_up"}`) in a
/// Prometheus scrape, if it is there.
pub fn scraped(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// kill -9, then reaps it.
pub fn sigkill(child: &mut std::process::Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed: {status:?}");
}

/// GET `url` (plain HTTP) off the async runtime; panics unless it answers 200.
pub async fn http_get(url: &str) -> String {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || {
        let response = ureq::get(&url).timeout(Duration::from_secs(10)).call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
        response.into_string().expect("a text body")
    })
    .await
    .expect("the GET task")
}
