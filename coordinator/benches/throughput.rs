//! Coordinator throughput through real gRPC on loopback: N simulated workers
//! lease and complete trivial jobs; jobs dispatched+completed per second and
//! lease latency percentiles. Side by side, the reference run: the same
//! coordinator with group commit off (one SQLite transaction per request).
//!
//!   cargo bench -p stylefarm-coordinator --bench throughput -- --workers 100,1000 --jobs 20000
//!
//! With authentication on (tokens for the client and every worker) and with TLS
//! on loopback as well, beside auth off, in the same run; and with Prometheus
//! metrics on (`--metrics-listen`, scraped every second during the run); and
//! with every span exported over OTLP (to a collector in this process, which
//! counts what it receives: the receiving cost is charged to the coordinator);
//! and with the web dashboard's farm-wide event stream followed (`--modes
//! ...,dashboard`: every job event rendered and sent as a server-sent event);
//! and with the workers split over 4 pools (`pools`: each worker labelled with
//! one, each batch requiring one, so every lease matches labels); and while
//! retention sweeps 10,000 finished batches (`retention`: each with a job and
//! an output object, all due when the coordinator starts; the run's own
//! batches are never due).
//!
//!   ... -- --soak 1000000
//!
//! runs a million trivial jobs through 100 simulated workers while watchers come
//! and go (and watch made-up ids), printing the coordinator's RSS as it goes.
//!
//! Published anchors: OpenCue's stress test ~975 frames/s, Pixar Tractor ~500 tasks/s.

/// The coordinator binary's allocator (`src/main.rs`), so the bench measures
/// what it ships; `--no-default-features` measures the system allocator.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stylefarm_coordinator::auth::{Role, TokenStore};
use stylefarm_coordinator::store::Commits;
use stylefarm_coordinator::CoordinatorConfig;
use stylefarm_proto as pb;
use stylefarm_proto::connect::ConnectOptions;

struct Args {
    workers: Vec<usize>,
    jobs: usize,
    connections: usize,
    reference: bool,
    soak: usize,
    rounds: usize,
    /// Which of open, auth, tls, metrics, traces, dashboard, pools, retention to run (all by default).
    modes: Vec<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        workers: vec![100, 1000],
        jobs: 20_000,
        connections: 8,
        reference: true,
        soak: 0,
        rounds: 3,
        modes: ["open", "auth", "tls", "metrics", "traces", "dashboard", "pools", "retention"].map(String::from).to_vec(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--workers" => args.workers = it.next().expect("--workers N,M").split(',').map(|n| n.parse().expect("number")).collect(),
            "--jobs" => args.jobs = it.next().expect("--jobs N").parse().expect("number"),
            "--connections" => args.connections = it.next().expect("--connections N").parse().expect("number"),
            "--no-reference" => args.reference = false,
            "--soak" => args.soak = it.next().expect("--soak N").parse().expect("number"),
            "--rounds" => args.rounds = it.next().expect("--rounds N").parse().expect("number"),
            "--modes" => args.modes = it.next().expect("--modes open,auth,tls,metrics,traces,dashboard,pools,retention").split(',').map(String::from).collect(),
            "--bench" => {}
            other => panic!("unknown argument {other}; use --workers N,M --jobs N --connections N --no-reference"),
        }
    }
    args
}

struct Run {
    jobs_per_s: f64,
    /// CPU time (user + system, every thread of this process: coordinator,
    /// simulated workers and, in traces mode, the collector) per job done.
    cpu_us_per_job: f64,
    submit_jobs_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    complete_p99_ms: f64,
    /// Finished batches retention deleted by the end of the run (retention mode).
    retired: f64,
}

/// CPU seconds this process has used so far (all threads, user + system).
fn process_cpu_s() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass; RUSAGE_SELF covers every thread.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return f64::NAN;
    }
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    s(usage.ru_utime) + s(usage.ru_stime)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Security {
    Open,
    Auth,
    AuthTls,
    /// Open, with /metrics served and scraped every second.
    OpenMetrics,
    /// Open, every span exported over OTLP.
    OpenTraces,
    /// Open, with the web dashboard's farm-wide event stream followed.
    OpenDashboard,
    /// Open, while retention deletes [`RETAINED`] finished batches.
    OpenRetention,
}

/// Finished batches the `retention` mode starts with, all due.
const RETAINED: usize = 10_000;

/// Writes `n` batches that finished two hours ago, one succeeded job and
/// one output object each, into a new data dir (as an older farm would
/// have them), before the coordinator opens it.
fn prefill_finished(data_dir: &std::path::Path, n: usize) {
    use stylefarm_coordinator::ids::{BatchId, JobId};
    use stylefarm_coordinator::store::{Durability, SqliteStore};
    let path = data_dir.join("state.sqlite");
    drop(SqliteStore::open(&path, Durability::ProcessCrash, Commits::Grouped).unwrap());
    let mut conn = rusqlite::Connection::open(&path).unwrap();
    let tx = conn.transaction().unwrap();
    let finished = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64 - 2 * 3_600_000;
    for i in 1..=n as i64 {
        let prefix = stylefarm_coordinator::keys::attempt_prefix(BatchId(i), JobId(i), 1);
        tx.execute(
            "INSERT INTO batches (id, name, priority, labels, max_attempts, created_ms, finished_ms, started, started_ms, counts, owner)
             VALUES (?1, 'old', 0, '{}', 3, ?2, ?2, 1, ?2, '{\"total\":1,\"queued\":0,\"running\":0,\"succeeded\":1,\"failed\":0,\"cancelled\":0}', 'local')",
            rusqlite::params![i, finished],
        )
        .unwrap();
        let state = format!("{{\"state\":\"succeeded\",\"worker\":1,\"outputs\":{{\"prefix\":\"{prefix}\",\"files\":[],\"final_loss\":1.0,\"iterations\":1,\"engine_ms\":1.0,\"device\":\"cuda:0\"}}}}");
        tx.execute(
            "INSERT INTO jobs (id, batch_id, idx, name, priority, content, styles, params, estimate_bytes, max_attempts, attempt, state, created_ms, finished_ms, trace_id)
             VALUES (?1, ?1, 0, 'j', 0, '{\"url\":\"s3://bench/c.png\"}', '[]', '{}', 1, 3, 1, ?2, ?3, ?3, '')",
            rusqlite::params![i, state, finished],
        )
        .unwrap();
        let dir = data_dir.join("objects").join(&prefix);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("output.png"), b"png").unwrap();
    }
    tx.commit().unwrap();
}

/// How many batches retention has deleted in the data dir.
fn deleted_batches(data_dir: &std::path::Path) -> usize {
    let conn = rusqlite::Connection::open(data_dir.join("state.sqlite")).unwrap();
    conn.query_row("SELECT COUNT(*) FROM batches WHERE deleted_ms IS NOT NULL", [], |row| row.get::<_, i64>(0)).unwrap() as usize
}

/// What the counting collector decodes of an OTLP export request: the span
/// messages' boundaries and nothing inside them.
mod counting {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Skipped>,
    }
    /// A span, its fields skipped over (no allocation).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Skipped {}
}

type ExportResponse = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;

/// An OTLP/gRPC trace collector (the `TraceService/Export` method) that counts
/// the spans it receives. It walks each request down to the span messages and
/// skips over their contents: a tracing backend's decoding and storing is its
/// own cost, on its own machine, not the coordinator's (`tests/tracing_otlp.rs`
/// decodes and checks every span). It still shares this VM's two cores.
#[derive(Default, Clone)]
struct Collector {
    spans: Arc<AtomicUsize>,
}

impl tonic::server::NamedService for Collector {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl tonic::server::UnaryService<counting::ExportRequest> for Collector {
    type Response = ExportResponse;
    type Future = std::future::Ready<Result<tonic::Response<ExportResponse>, tonic::Status>>;
    fn call(&mut self, request: tonic::Request<counting::ExportRequest>) -> Self::Future {
        let n: usize = request.into_inner().resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        self.spans.fetch_add(n, Ordering::Relaxed);
        std::future::ready(Ok(tonic::Response::new(ExportResponse::default())))
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for Collector {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;
    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let collector = self.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<ExportResponse, counting::ExportRequest>::default());
            Ok(grpc.unary(collector, request).await)
        })
    }
}

/// Serves a collector and installs this process's OTLP export to it (paused
/// until a traces-mode run resumes it).
async fn start_collector() -> (Collector, stylefarm_core::traces::TracingGuard) {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder().add_service(collector.clone()).serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    // SAFETY: set before any thread reads the environment for OTLP (the exporter reads it at init, here)
    unsafe { std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint) };
    let guard = stylefarm_core::traces::init("stylefarm-coordinator-bench", "warn", false).expect("OTLP export");
    stylefarm_core::traces::set_exporting(false);
    (collector, guard)
}

/// A coordinator on loopback, and how to reach it.
struct Server {
    _dir: tempfile::TempDir,
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<Result<(), stylefarm_coordinator::server::ServeError>>,
    client: ConnectOptions,
    worker: ConnectOptions,
    /// Scrapes /metrics every second (metrics mode); answers how many scrapes it made.
    scraper: Option<tokio::task::JoinHandle<usize>>,
    scraping: Arc<std::sync::atomic::AtomicBool>,
}

/// GET /metrics every second until `scraping` turns false, as Prometheus would
/// (every 15 s by default: this is 15 times harsher); the number of scrapes.
async fn scrape_every_second(addr: std::net::SocketAddr, scraping: Arc<std::sync::atomic::AtomicBool>) -> usize {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut scrapes = 0;
    while scraping.load(Ordering::Relaxed) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n").await.unwrap();
        let mut body = String::new();
        stream.read_to_string(&mut body).await.unwrap();
        assert!(body.contains("stylefarm_jobs_finished_total"), "{body}");
        scrapes += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    scrapes
}

/// Follows the dashboard's farm-wide event stream (`/api/events`, server-sent
/// events) as an open Batches page does, until `scraping` turns false; the
/// number of events read.
async fn follow_dashboard(addr: std::net::SocketAddr, scraping: Arc<std::sync::atomic::AtomicBool>) -> usize {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /api/events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n").await.unwrap();
    let (mut events, mut buf) = (0, vec![0u8; 1 << 16]);
    while scraping.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => events += buf[..n].windows(7).filter(|w| w == b"event: ").count(),
            Err(_) => {}
        }
    }
    events
}

async fn start(commits: Commits, security: Security) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut config = CoordinatorConfig {
        data_dir: dir.path().to_path_buf(),
        commits,
        lease_ttl_ms: 60_000,
        allowed_input_prefixes: vec!["s3://bench/".into()],
        ..CoordinatorConfig::default()
    };
    if security == Security::OpenRetention {
        prefill_finished(dir.path(), RETAINED);
        config.retain_finished = Some("1h".parse().unwrap());
    }
    // throughput, not quotas, is measured: the bench's one client may queue it all
    config.quotas.submit = stylefarm_coordinator::quota::Quota::unlimited();
    let (mut client_token, mut worker_token) = (None, None);
    if matches!(security, Security::Auth | Security::AuthTls) {
        let tokens = TokenStore::open(dir.path()).unwrap();
        client_token = Some(tokens.create("bench-client", Role::Submit).unwrap());
        worker_token = Some(tokens.create("bench-workers", Role::Worker).unwrap());
    }
    let mut tls_ca = None;
    if security == Security::AuthTls {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
        config.tls_cert = Some(cert_path.clone());
        config.tls_key = Some(key_path);
        tls_ca = Some(cert_path);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = if tls_ca.is_some() { format!("https://localhost:{port}") } else { format!("http://127.0.0.1:{port}") };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // traces: the coordinator reads whether to make spans when it starts
    stylefarm_core::traces::set_exporting(security == Security::OpenTraces);
    let http = match security {
        Security::OpenMetrics => Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()),
        _ => None,
    };
    let metrics_addr = http.as_ref().map(|l| l.local_addr().unwrap());
    let web = match security {
        Security::OpenDashboard => Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()),
        _ => None,
    };
    let web_addr = web.as_ref().map(|l| l.local_addr().unwrap());
    let listeners = stylefarm_coordinator::server::Listeners { grpc: listener, http, web };
    let handle = tokio::spawn(stylefarm_coordinator::server::run_with(listeners, config, async move {
        let _ = stopped.await;
    }));
    let scraping = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let scraper = match (metrics_addr, web_addr) {
        (Some(addr), _) => Some(tokio::spawn(scrape_every_second(addr, Arc::clone(&scraping)))),
        (_, Some(addr)) => Some(tokio::spawn(follow_dashboard(addr, Arc::clone(&scraping)))),
        _ => None,
    };
    let client = ConnectOptions { url: url.clone(), token: client_token, tls_ca: tls_ca.clone(), tls_identity: None };
    let worker = ConnectOptions { url, token: worker_token, tls_ca, tls_identity: None };
    Server { _dir: dir, stop, handle, client, worker, scraper, scraping }
}

async fn channels(options: &ConnectOptions, n: usize) -> Vec<tonic::transport::Channel> {
    let mut out = Vec::new();
    for _ in 0..n {
        loop {
            if let Ok(c) = options.endpoint().unwrap().connect().await {
                out.push(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    out
}

/// Worker pools in the `pools` mode.
const POOLS: usize = 4;

/// Registers `workers` simulated workers; with `pools` > 0, worker i carries `pool=p{i % pools}`.
async fn register(
    options: &ConnectOptions,
    channels: &[tonic::transport::Channel],
    workers: usize,
    pools: usize,
) -> Vec<(String, stylefarm_proto::connect::Worker)> {
    let mut out = Vec::with_capacity(workers);
    for i in 0..workers {
        let mut api = options.worker(channels[i % channels.len()].clone()).unwrap();
        let r = api
            .register_worker(pb::RegisterWorkerRequest {
                name: format!("sim-{i}"),
                devices: vec![pb::Device { name: "cuda:0".into(), memory_bytes: 80 << 30, description: "simulated".into() }],
                version: "bench".into(),
                labels: if pools > 0 { [("pool".to_string(), format!("p{}", i % pools))].into() } else { Default::default() },
                ..Default::default()
            })
            .await
            .unwrap();
        out.push((r.into_inner().worker_id, api));
    }
    out
}

fn batch(b: usize, n: usize) -> pb::SubmitBatchRequest {
    pb::SubmitBatchRequest {
        name: format!("bench-{b}"),
        cartesian: Some(pb::CartesianSpec {
            contents: (0..n).map(|i| pb::ImageRef { source: Some(pb::image_ref::Source::Url(format!("s3://bench/c{i}.png"))) }).collect(),
            styles: vec![pb::ImageRef { source: Some(pb::image_ref::Source::Url("s3://bench/style.png".into())) }],
            settings: vec![pb::RenderSettings { size: Some(256), iterations: Some(1), ..Default::default() }],
        }),
        ..Default::default()
    }
}

/// Leases and completes until `done` reaches `jobs`; returns latencies if
/// `record` (the soak does not keep them: its RSS is the coordinator's).
async fn work(id: String, mut api: stylefarm_proto::connect::Worker, done: Arc<AtomicUsize>, jobs: usize, record: bool) -> (Vec<f64>, Vec<f64>) {
    let mut lease_ms = Vec::new();
    let mut complete_ms = Vec::new();
    loop {
        if done.load(Ordering::Relaxed) >= jobs {
            return (lease_ms, complete_ms);
        }
        let t = Instant::now();
        let request = pb::LeaseJobRequest { worker_id: id.clone(), device: "cuda:0".into(), device_memory_bytes: 80 << 30, wait_ms: 100 };
        let Some(lease) = api.lease_job(request).await.unwrap().into_inner().lease else { continue };
        if record {
            lease_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let t = Instant::now();
        let request =
            pb::CompleteJobRequest { worker_id: id.clone(), job_id: lease.job_id, attempt: lease.attempt, result: None, lease_secret: lease.lease_secret };
        api.complete_job(request).await.unwrap();
        if record {
            complete_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
}

async fn run(workers: usize, jobs: usize, connections: usize, commits: Commits, security: Security, pools: usize) -> Run {
    let server = start(commits, security).await;
    let worker_channels = channels(&server.worker, connections).await;
    let ids = register(&server.worker, &worker_channels, workers, pools).await;
    // submit in batches of up to 10,000 jobs (with pools, at least one batch per pool, batch b for pool b % pools)
    let mut client = server.client.coordinator(channels(&server.client, 1).await.remove(0)).unwrap();
    let submit_started = Instant::now();
    let mut left = jobs;
    let mut b = 0;
    while left > 0 {
        let n = if pools > 0 { left.min(10_000).min(jobs.div_ceil(pools)) } else { left.min(10_000) };
        let mut request = batch(b, n);
        if pools > 0 {
            request.requires = vec![format!("pool=p{}", b % pools)];
        }
        client.submit_batch(request).await.unwrap();
        left -= n;
        b += 1;
    }
    let submit_s = submit_started.elapsed().as_secs_f64();
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let cpu_started = process_cpu_s();
    let tasks: Vec<_> = ids.into_iter().map(|(id, api)| tokio::spawn(work(id, api, Arc::clone(&done), jobs, true))).collect();
    let mut lease_ms = Vec::new();
    let mut complete_ms = Vec::new();
    for task in tasks {
        let (l, c) = task.await.unwrap();
        lease_ms.extend(l);
        complete_ms.extend(c);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_s = process_cpu_s() - cpu_started;
    server.scraping.store(false, Ordering::Relaxed);
    if let Some(scraper) = server.scraper {
        assert!(scraper.await.unwrap() >= 1, "metrics were scraped (or dashboard events read) during the run");
    }
    let retired = if security == Security::OpenRetention { deleted_batches(server._dir.path()) as f64 } else { 0.0 };
    let _ = server.stop.send(());
    server.handle.await.unwrap().unwrap();
    lease_ms.sort_by(f64::total_cmp);
    complete_ms.sort_by(f64::total_cmp);
    Run {
        jobs_per_s: jobs as f64 / elapsed,
        cpu_us_per_job: cpu_s * 1e6 / jobs as f64,
        submit_jobs_per_s: jobs as f64 / submit_s,
        p50_ms: percentile(&lease_ms, 0.5),
        p99_ms: percentile(&lease_ms, 0.99),
        complete_p99_ms: percentile(&complete_ms, 0.99),
        retired,
    }
}

/// glibc's `struct mallinfo2` (all arenas), to tell live heap from RSS the
/// allocator keeps.
#[cfg(all(not(feature = "mimalloc"), target_os = "linux", target_env = "gnu"))]
#[repr(C)]
struct MallInfo2 {
    arena: usize,
    ordblks: usize,
    smblks: usize,
    hblks: usize,
    hblkhd: usize,
    usmblks: usize,
    fsmblks: usize,
    uordblks: usize,
    fordblks: usize,
    keepcost: usize,
}

/// (live, held) heap in MiB. mimalloc keeps no live-byte count in release
/// builds, so live is NaN there and held is what it has committed.
#[cfg(feature = "mimalloc")]
fn heap_mib() -> (f64, f64) {
    let (mut elapsed, mut user, mut system, mut rss, mut peak_rss, mut commit, mut peak_commit, mut faults) = (0, 0, 0, 0, 0, 0, 0, 0);
    // SAFETY: mi_process_info only writes the counters it is given pointers to.
    unsafe {
        libmimalloc_sys::mi_process_info(&mut elapsed, &mut user, &mut system, &mut rss, &mut peak_rss, &mut commit, &mut peak_commit, &mut faults);
    }
    (f64::NAN, commit as f64 / (1 << 20) as f64)
}

#[cfg(all(not(feature = "mimalloc"), target_os = "linux", target_env = "gnu"))]
fn heap_mib() -> (f64, f64) {
    extern "C" {
        fn mallinfo2() -> MallInfo2;
    }
    // SAFETY: mallinfo2 takes no arguments and returns a plain struct by value.
    let m = unsafe { mallinfo2() };
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    // live = allocated chunks + mmapped chunks; held = what the arenas hold (live + free)
    (mib(m.uordblks + m.hblkhd), mib(m.arena + m.hblkhd))
}

#[cfg(all(not(feature = "mimalloc"), not(all(target_os = "linux", target_env = "gnu"))))]
fn heap_mib() -> (f64, f64) {
    (f64::NAN, f64::NAN)
}

/// Bytes SQLite has allocated (page caches, statements), all connections.
fn sqlite_mib() -> f64 {
    // SAFETY: sqlite3_memory_used reads a counter; it is thread-safe.
    (unsafe { rusqlite::ffi::sqlite3_memory_used() }) as f64 / (1 << 20) as f64
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok()).unwrap_or(0.0) / 1024.0
}

/// A million jobs (or `total`) through 100 simulated workers, 10,000-job
/// batches submitted as the queue drains, a watcher on every batch that leaves
/// early, and 100 watches of made-up ids per batch; RSS as it goes.
async fn soak(total: usize) {
    // the coordinator logs the sizes of its in-memory indexes every 10 s
    let filter = tracing_subscriber::EnvFilter::new("stylefarm_coordinator::sizes=debug");
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let server = start(Commits::Grouped, Security::Open).await;
    let worker_channels = channels(&server.worker, 8).await;
    let ids = register(&server.worker, &worker_channels, 100, 0).await;
    let mut client = server.client.coordinator(channels(&server.client, 1).await.remove(0)).unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = ids.into_iter().map(|(id, api)| tokio::spawn(work(id, api, Arc::clone(&done), total, false))).collect();
    let started = Instant::now();
    let (mut submitted, mut b, mut next_report) = (0, 0, 100_000);
    println!("soak: {total} jobs, 100 simulated workers; coordinator and clients share this process");
    let held = if cfg!(feature = "mimalloc") { "mi committed" } else { "heap held" };
    println!("{:>10} {:>10} {:>12} {:>12} {:>10} {:>10} {:>10}", "jobs done", "RSS MiB", "heap live", held, "SQLite MiB", "seconds", "jobs/s");
    while done.load(Ordering::Relaxed) < total {
        if submitted < total && submitted - done.load(Ordering::Relaxed).min(submitted) < 20_000 {
            let n = (total - submitted).min(10_000);
            let id = client.submit_batch(batch(b, n)).await.unwrap().into_inner().batch_id;
            submitted += n;
            b += 1;
            // a watcher that leaves after a few events, and watches of ids that do not exist
            let mut watcher = client.clone();
            tokio::spawn(async move {
                if let Ok(stream) = watcher.watch_batch(pb::WatchBatchRequest { batch_id: id }).await {
                    let mut stream = stream.into_inner();
                    for _ in 0..50 {
                        if stream.message().await.ok().flatten().is_none() {
                            break;
                        }
                    }
                }
            });
            for k in 0..100 {
                let missing = format!("b{}", 1_000_000_000 + b * 100 + k);
                assert_eq!(client.watch_batch(pb::WatchBatchRequest { batch_id: missing }).await.err().map(|s| s.code()), Some(tonic::Code::NotFound));
            }
        }
        let d = done.load(Ordering::Relaxed);
        if d >= next_report {
            let s = started.elapsed().as_secs_f64();
            let (live, held) = heap_mib();
            println!("{:>10} {:>10.1} {:>12.1} {:>12.1} {:>10.1} {:>10.1} {:>10.0}", d, rss_mib(), live, held, sqlite_mib(), s, d as f64 / s);
            next_report += if next_report < 500_000 { 100_000 } else { 250_000 };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for task in tasks {
        task.await.unwrap();
    }
    let s = started.elapsed().as_secs_f64();
    let (live, held) = heap_mib();
    println!(
        "{:>10} {:>10.1} {:>12.1} {:>12.1} {:>10.1} {:>10.1} {:>10.0}   (end)",
        done.load(Ordering::Relaxed),
        rss_mib(),
        live,
        held,
        sqlite_mib(),
        s,
        total as f64 / s
    );
    let _ = server.stop.send(());
    server.handle.await.unwrap().unwrap();
}

fn main() {
    let args = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    if args.soak > 0 {
        runtime.block_on(soak(args.soak));
        return;
    }
    println!(
        "coordinator throughput: {} jobs, {} HTTP/2 connections, {} CPU cores",
        args.jobs,
        args.connections,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!(
        "{:<8} {:<22} {:>10} {:>12} {:>10} {:>10} {:>12} {:>10} {:>12} {:>10}",
        "workers", "mode", "jobs/s", "submit j/s", "lease p50", "lease p99", "complete p99", "ratio", "CPU us/job", "CPU ratio"
    );
    println!("(CPU us/job: user + system time of this whole process per job done; CPU ratio: the first mode's over this one's, so below 1 costs more)");
    println!("(medians of {} rounds; each round runs every mode once, in turn, so the VM's drift hits them alike)", args.rounds);
    let collector = args.modes.iter().any(|m| m == "traces").then(|| runtime.block_on(start_collector()));
    for &workers in &args.workers {
        let mut modes: Vec<(&str, Commits, Security, usize, Vec<Run>)> = [
            ("open", "group commit", Security::Open, 0),
            ("auth", "+ auth (tokens)", Security::Auth, 0),
            ("tls", "+ auth + TLS", Security::AuthTls, 0),
            ("metrics", "+ metrics, scraped 1/s", Security::OpenMetrics, 0),
            ("traces", "+ traces, all exported", Security::OpenTraces, 0),
            ("dashboard", "+ dashboard followed", Security::OpenDashboard, 0),
            ("pools", "+ 4 worker pools", Security::Open, POOLS),
            ("retention", "+ retention sweeping", Security::OpenRetention, 0),
        ]
        .into_iter()
        .filter(|(key, _, _, _)| args.modes.iter().any(|m| m == key))
        .map(|(_, name, security, pools)| (name, Commits::Grouped, security, pools, Vec::new()))
        .collect();
        if args.reference {
            modes.push(("reference: per-request", Commits::PerRequest, Security::Open, 0, Vec::new()));
        }
        for _ in 0..args.rounds {
            for (_, commits, security, pools, runs) in modes.iter_mut() {
                runs.push(runtime.block_on(run(workers, args.jobs, args.connections, *commits, *security, *pools)));
            }
        }
        let median = |runs: &[Run], f: fn(&Run) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let summary: Vec<(&str, Run)> = modes
            .iter()
            .map(|(name, _, _, _, runs)| {
                let r = Run {
                    jobs_per_s: median(runs, |r| r.jobs_per_s),
                    cpu_us_per_job: median(runs, |r| r.cpu_us_per_job),
                    submit_jobs_per_s: median(runs, |r| r.submit_jobs_per_s),
                    p50_ms: median(runs, |r| r.p50_ms),
                    p99_ms: median(runs, |r| r.p99_ms),
                    complete_p99_ms: median(runs, |r| r.complete_p99_ms),
                    retired: median(runs, |r| r.retired),
                };
                (*name, r)
            })
            .collect();
        let (base, base_cpu) = (summary[0].1.jobs_per_s, summary[0].1.cpu_us_per_job);
        for (name, r) in &summary {
            let (ratio, cpu_ratio) = if name.starts_with("reference") {
                (base / r.jobs_per_s, r.cpu_us_per_job / base_cpu)
            } else {
                (r.jobs_per_s / base, base_cpu / r.cpu_us_per_job)
            };
            println!(
                "{:<8} {:<22} {:>10.0} {:>12.0} {:>8.2}ms {:>8.2}ms {:>10.2}ms {:>10.2} {:>12.1} {:>10.2}",
                workers, name, r.jobs_per_s, r.submit_jobs_per_s, r.p50_ms, r.p99_ms, r.complete_p99_ms, ratio, r.cpu_us_per_job, cpu_ratio
            );
        }
        let all: Vec<String> = modes
            .iter()
            .map(|(name, _, _, _, runs)| {
                let rounds = |f: fn(&Run) -> f64| runs.iter().map(|r| format!("{:.0}", f(r))).collect::<Vec<_>>().join("/");
                format!("{name}: {} jobs/s, {} us/job", rounds(|r| r.jobs_per_s), rounds(|r| r.cpu_us_per_job))
            })
            .collect();
        println!("         rounds: {}", all.join("; "));
        if let Some((_, r)) = summary.iter().find(|(name, _)| name.starts_with("+ retention")) {
            println!("         retention deleted {:.0} of {RETAINED} finished batches (with their objects) by the end of each run (median)", r.retired);
        }
        println!(
            "         vs anchors: {:.1}x OpenCue stress test (975 frames/s), {:.1}x Tractor (500 tasks/s); goal 5000 jobs/s: {}",
            base / 975.0,
            base / 500.0,
            if base >= 5000.0 { "met" } else { "NOT met" }
        );
    }
    if let Some((collector, guard)) = collector {
        runtime.block_on(guard.shutdown());
        println!("         spans the collector received in traces mode: {}", collector.spans.load(Ordering::Relaxed));
    }
}
