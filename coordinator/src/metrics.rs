//! The coordinator's Prometheus metrics. The scheduler stays pure: it
//! describes what happened as [`Observation`]s in its effects, and the farm
//! hands them here once they are committed. Point-in-time gauges (jobs by
//! state, queue depth by priority, workers, devices) are set from the
//! scheduler by [`CoordMetrics::refresh`] when `/metrics` is scraped
//! (`farm::MetricsEndpoint`: this module knows nothing of the farm); gRPC calls are counted by
//! [`GrpcMetricsLayer`] around every service.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use metrics::{Counter, Gauge, Histogram};
use stylefarm_core::telemetry::Registry;

use stylefarm_core::labels::Labels;

use crate::clock::now_ms;
use crate::model::{Millis, StateKind};
use crate::notify::Delivery;
use crate::scheduler::{AttemptEnd, Observation, Scheduler};

fn device_kind(name: &str) -> &'static str {
    match name.split(':').next().unwrap_or("") {
        "cuda" => "cuda",
        "cpu" => "cpu",
        "mps" => "mps",
        _ => "other",
    }
}

const QUEUE_DEPTH_HELP: &str = "Queued jobs by batch priority.";

/// Device kinds as labels (anything else is `other`, so a worker cannot add series).
const DEVICE_KINDS: [&str; 4] = ["cuda", "cpu", "mps", "other"];

type MethodNames = HashMap<String, (&'static str, &'static str)>;

/// The gRPC methods this coordinator serves, path → `(service, method)`;
/// any other path is counted as `unknown` so callers cannot add series.
/// Decoded once per process (the labels are leaked once, not per start).
fn known_methods() -> &'static MethodNames {
    static METHODS: std::sync::OnceLock<MethodNames> = std::sync::OnceLock::new();
    METHODS.get_or_init(decode_methods)
}

fn decode_methods() -> MethodNames {
    use prost::Message;
    let sets: [&[u8]; 2] = [stylefarm_proto::FILE_DESCRIPTOR_SET, tonic_health::pb::FILE_DESCRIPTOR_SET];
    let mut out = HashMap::new();
    for bytes in sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(bytes) else { continue };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let full = if package.is_empty() { service.name().to_string() } else { format!("{package}.{}", service.name()) };
                let service_label: &'static str = Box::leak(full.clone().into_boxed_str());
                for method in service.method {
                    let name: &'static str = Box::leak(method.name().to_string().into_boxed_str());
                    out.insert(format!("/{full}/{name}"), (service_label, name));
                }
            }
        }
    }
    out.insert("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo".into(), ("grpc.reflection.v1.ServerReflection", "ServerReflectionInfo"));
    out
}

struct MethodMetrics {
    duration: Histogram,
    codes: Mutex<HashMap<i32, Counter>>,
    registry: Registry,
    service: &'static str,
    method: &'static str,
}

/// Most `stylefarm_pool_demand` series: the declared pools first, then the
/// label sets of known workers in the order they are met.
pub const MAX_POOL_SERIES: usize = 64;
const POOL_DEMAND_HELP: &str = "Autoscaling demand of a worker pool, named by its workers' labels: what KEDA's scaler answers for them (queued jobs they match, not waiting on a dependency or paused, plus running ones).";

pub struct CoordMetrics {
    registry: Registry,
    finished: [Counter; 3],
    retries: Counter,
    blocks: Counter,
    queue_wait: Histogram,
    run: [Histogram; 6],
    pub lease_latency: Histogram,
    pub uploaded_bytes: Counter,
    pub downloaded_bytes: Counter,
    pub retention_batches: Counter,
    pub retention_objects: Counter,
    pub retention_uploads: Counter,
    webhook_deliveries: [Counter; 3],
    /// Webhook deliveries owed (set by the delivery task).
    pub webhook_outbox: Gauge,
    methods: HashMap<String, Arc<MethodMetrics>>,
    unknown_method: Arc<MethodMetrics>,
    jobs: [Gauge; 3],
    queue_depth: Mutex<BTreeMap<i32, Gauge>>,
    /// Pools reported even with no worker known (`--metrics-pool`).
    pools: Vec<Labels>,
    pool_demand: Mutex<BTreeMap<String, Gauge>>,
    workers: Gauge,
    devices: [Gauge; 4],
    batches: Gauge,
}

impl CoordMetrics {
    pub fn new(registry: Registry) -> Arc<CoordMetrics> {
        CoordMetrics::with_pools(registry, Vec::new())
    }

    /// Also reports the demand of `pools` (see [`CoordinatorConfig::metrics_pools`](crate::config::CoordinatorConfig::metrics_pools)).
    pub fn with_pools(registry: Registry, pools: Vec<Labels>) -> Arc<CoordMetrics> {
        let r = &registry;
        let finished =
            StateKind::FINAL.map(|k| r.counter("stylefarm_jobs_finished_total", "Jobs that reached a final state, by outcome.", &[("outcome", k.label())]));
        let run = AttemptEnd::ALL.map(|end| {
            r.histogram("stylefarm_job_run_seconds", "How long each attempt ran, from lease to its end, by how it ended.", &[("outcome", end.label())])
        });
        let method = |service: &'static str, method: &'static str| {
            Arc::new(MethodMetrics {
                duration: r.histogram(
                    "stylefarm_grpc_request_duration_seconds",
                    "gRPC calls served: time to the response headers (the whole call for unary methods).",
                    &[("service", service), ("method", method)],
                ),
                codes: Mutex::new(HashMap::new()),
                registry: r.clone(),
                service,
                method,
            })
        };
        let methods = known_methods().iter().map(|(path, &(s, m))| (path.clone(), method(s, m))).collect();
        let unknown_method = method("unknown", "unknown");
        let jobs = ["queued", "running", "waiting_for_device"].map(|s| {
            r.gauge("stylefarm_jobs", "Jobs of unfinished batches by state (waiting_for_device: queued jobs no connected device fits).", &[("state", s)])
        });
        let devices = DEVICE_KINDS.map(|k| r.gauge("stylefarm_devices", "Devices of connected workers, by kind.", &[("kind", k)]));
        Arc::new(CoordMetrics {
            finished,
            retries: r.counter("stylefarm_job_retries_total", "Failed, expired or timed-out attempts whose job was queued again.", &[]),
            blocks: r.counter("stylefarm_worker_blocks_total", "Times a worker reached the failure limit on a batch (blocklisted from it).", &[]),
            queue_wait: r.histogram("stylefarm_job_queue_wait_seconds", "How long a job waited in the queue before each lease.", &[]),
            run,
            lease_latency: r.histogram("stylefarm_lease_latency_seconds", "Time to pick, record and commit a lease once work is there.", &[]),
            uploaded_bytes: r.counter("stylefarm_upload_bytes_total", "Image bytes clients uploaded through the coordinator.", &[]),
            downloaded_bytes: r.counter("stylefarm_download_bytes_total", "Output bytes clients downloaded through the coordinator.", &[]),
            retention_batches: r.counter("stylefarm_retention_batches_deleted_total", "Finished batches retention (--retain-finished) deleted.", &[]),
            retention_objects: r.counter("stylefarm_retention_objects_deleted_total", "Objects retention deleted with those batches.", &[]),
            retention_uploads: r.counter(
                "stylefarm_retention_uploads_deleted_total",
                "Uploads retention deleted: no batch used them and they were last uploaded longer ago than the retention.",
                &[],
            ),
            webhook_deliveries: Delivery::ALL.map(|d| {
                r.counter(
                    "stylefarm_webhook_deliveries_total",
                    "Webhook tries, by how they ended (given_up: the target kept failing, or is no longer allowed).",
                    &[("outcome", d.label())],
                )
            }),
            webhook_outbox: r.gauge("stylefarm_webhook_outbox", "Webhook deliveries owed (due, or waiting to be tried again).", &[]),
            methods,
            unknown_method,
            jobs,
            // the default priority's series exists from the start (others appear with their first batch)
            queue_depth: Mutex::new(BTreeMap::from([(0, r.gauge("stylefarm_queue_depth", QUEUE_DEPTH_HELP, &[("priority", "0")]))])),
            pools,
            pool_demand: Mutex::new(BTreeMap::new()),
            workers: r.gauge("stylefarm_workers_connected", "Workers seen within the lease TTL.", &[]),
            devices,
            batches: r.gauge("stylefarm_batches_unfinished", "Batches with jobs still queued or running.", &[]),
            registry,
        })
    }

    /// Every series in Prometheus' text format (call [`CoordMetrics::refresh`]
    /// first for the point-in-time gauges).
    pub fn render(&self) -> String {
        self.registry.render()
    }

    pub fn observe(&self, observations: &[Observation]) {
        for o in observations {
            match *o {
                Observation::Leased { queue_wait_ms } => self.queue_wait.record(seconds(queue_wait_ms)),
                Observation::AttemptEnded { end, run_ms, .. } => {
                    let i = AttemptEnd::ALL.iter().position(|e| *e == end).unwrap_or(0);
                    self.run[i].record(seconds(run_ms));
                }
                Observation::Retried => self.retries.increment(1),
                Observation::Finished { state, .. } => {
                    if let Some(i) = StateKind::FINAL.iter().position(|k| *k == state) {
                        self.finished[i].increment(1);
                    }
                }
                Observation::WorkerBlocked => self.blocks.increment(1),
            }
        }
    }

    pub fn webhook_delivery(&self, outcome: Delivery) {
        if let Some(i) = Delivery::ALL.iter().position(|d| *d == outcome) {
            self.webhook_deliveries[i].increment(1);
        }
    }

    fn method(&self, path: &str) -> Arc<MethodMetrics> {
        Arc::clone(self.methods.get(path).unwrap_or(&self.unknown_method))
    }

    /// Sets the point-in-time gauges (jobs by state, queue depth, workers,
    /// devices) from the scheduler: the `/metrics` endpoint calls it per scrape.
    pub fn refresh(&self, s: &Scheduler) {
        let now = now_ms();
        let demand = s.demand();
        self.jobs[0].set(demand.queued as f64);
        self.jobs[1].set(demand.running as f64);
        self.jobs[2].set(demand.unfit as f64);
        let mut depth: BTreeMap<i32, u64> = BTreeMap::new();
        let mut batches = 0;
        for b in s.live_batches() {
            batches += 1;
            *depth.entry(b.priority).or_default() += b.counts.queued as u64;
        }
        self.batches.set(batches as f64);
        {
            // priorities are bounded by the submit check, so the series are too
            let mut gauges = self.queue_depth.lock().unwrap_or_else(|p| p.into_inner());
            for gauge in gauges.values() {
                gauge.set(0.0);
            }
            for (priority, queued) in depth {
                gauges
                    .entry(priority)
                    .or_insert_with(|| self.registry.gauge("stylefarm_queue_depth", QUEUE_DEPTH_HELP, &[("priority", &priority.to_string())]))
                    .set(queued as f64);
            }
        }
        self.refresh_pools(s);
        let live_since = now - s.config().lease_ttl_ms;
        let mut devices = [0u64; 4];
        let mut workers = 0;
        for w in s.workers().filter(|w| w.last_seen_ms >= live_since) {
            workers += 1;
            for d in &w.devices {
                let kind = device_kind(&d.name);
                devices[DEVICE_KINDS.iter().position(|k| *k == kind).unwrap_or(3)] += 1;
            }
        }
        self.workers.set(workers as f64);
        for (gauge, n) in self.devices.iter().zip(devices) {
            gauge.set(n as f64);
        }
    }
}

impl CoordMetrics {
    /// `stylefarm_pool_demand{labels}` for the declared pools and the label
    /// sets of known workers (at most [`MAX_POOL_SERIES`]); a pool no longer
    /// met reads 0.
    fn refresh_pools(&self, s: &Scheduler) {
        let mut pools: Vec<&Labels> = self.pools.iter().collect();
        for w in s.workers() {
            if pools.len() == MAX_POOL_SERIES {
                break;
            }
            if !pools.contains(&&w.labels) {
                pools.push(&w.labels);
            }
        }
        let mut gauges = self.pool_demand.lock().unwrap_or_else(|p| p.into_inner());
        for gauge in gauges.values() {
            gauge.set(0.0);
        }
        for labels in pools {
            let name = pool_name(labels);
            if !gauges.contains_key(&name) && gauges.len() >= MAX_POOL_SERIES {
                continue;
            }
            let demand = s.pool_demand(labels);
            gauges
                .entry(name)
                .or_insert_with_key(|name| self.registry.gauge("stylefarm_pool_demand", POOL_DEMAND_HELP, &[("labels", name)]))
                .set(demand as f64);
        }
    }
}

/// A pool's series label: its labels as `k=v,k=v` (sorted), as KEDA's trigger takes them.
fn pool_name(labels: &Labels) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

fn seconds(ms: Millis) -> f64 {
    ms.max(0) as f64 / 1000.0
}

/// A tower layer around every gRPC call: counts it by service, method and
/// status code and times it to the response headers (with metrics on), and
/// runs it in a server span whose parent is the caller's `traceparent` (with
/// traces exported).
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: Option<Arc<CoordMetrics>>,
    traced: bool,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: Option<Arc<CoordMetrics>>) -> GrpcMetricsLayer {
        GrpcMetricsLayer { metrics, traced: stylefarm_core::traces::enabled() }
    }
}

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner, metrics: self.metrics.clone(), traced: self.traced }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    metrics: Option<Arc<CoordMetrics>>,
    traced: bool,
}

impl<S> GrpcMetrics<S> {
    /// The server span of a call whose caller sent a `traceparent` (traces
    /// exported): calls outside any trace (a worker's lease polls and
    /// heartbeats, status reads) would each start a trace of one span.
    fn span<B>(&self, request: &http::Request<B>) -> Option<tracing::Span> {
        if !self.traced || !request.headers().contains_key("traceparent") {
            return None;
        }
        let parent = stylefarm_core::traces::extract(request.headers());
        if !opentelemetry::trace::TraceContextExt::span(&parent).span_context().is_valid() {
            return None;
        }
        let (service, method) = known_methods().get(request.uri().path()).copied().unwrap_or(("unknown", "unknown"));
        let span = tracing::info_span!("grpc", otel.name = %format_args!("{service}/{method}"), otel.kind = "server", rpc.system = "grpc", rpc.service = service, rpc.method = method);
        stylefarm_core::traces::set_parent(&span, parent);
        Some(span)
    }
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        use tracing::Instrument;
        let method = self.metrics.as_ref().map(|m| m.method(request.uri().path()));
        let span = self.span(&request);
        let future = match span {
            Some(span) => {
                let _entered = span.enter();
                let future = self.inner.call(request);
                drop(_entered);
                futures::future::Either::Left(future.instrument(span))
            }
            None => futures::future::Either::Right(self.inner.call(request)),
        };
        let Some(method) = method else { return Box::pin(future) };
        let started = Instant::now();
        Box::pin(async move {
            let response = future.await;
            method.duration.record(started.elapsed().as_secs_f64());
            // errors come as trailers-only responses (grpc-status in the
            // headers); a unary success sends its status in the trailers
            let code = match &response {
                Ok(r) => r.headers().get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok()).unwrap_or(0),
                Err(_) => tonic::Code::Unknown as i32,
            };
            method.count(code);
            response
        })
    }
}

impl MethodMetrics {
    fn count(&self, code: i32) {
        let code = if (0..=16).contains(&code) { code } else { tonic::Code::Unknown as i32 };
        let counter = {
            let mut codes = self.codes.lock().unwrap_or_else(|p| p.into_inner());
            codes.entry(code).or_insert_with(|| self.counter(code)).clone()
        };
        counter.increment(1);
    }

    fn counter(&self, code: i32) -> Counter {
        self.registry.counter(
            "stylefarm_grpc_requests_total",
            "gRPC calls served, by service, method and status code.",
            &[("service", self.service), ("method", self.method), ("code", code_name(code))],
        )
    }
}

/// gRPC status codes as grpc-go's Prometheus middleware names them.
fn code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    usize::try_from(code).ok().and_then(|i| NAMES.get(i)).copied().unwrap_or("Unknown")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::JobId;

    #[test]
    fn every_served_method_has_its_own_series_and_anything_else_is_unknown() {
        let metrics = CoordMetrics::new(Registry::new());
        for path in [
            "/stylefarm.v1.Coordinator/SubmitBatch",
            "/stylefarm.v1.WorkerApi/LeaseJob",
            "/grpc.health.v1.Health/Check",
            "/externalscaler.ExternalScaler/GetMetrics",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            let m = metrics.method(path);
            assert_eq!(format!("/{}/{}", m.service, m.method), path);
        }
        for path in ["/stylefarm.v1.Coordinator/Nope", "/made.up/Anything", "/", ""] {
            assert_eq!((metrics.method(path).service, metrics.method(path).method), ("unknown", "unknown"), "{path}");
        }
    }

    #[test]
    fn status_codes_are_named_and_out_of_range_ones_are_unknown() {
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(3), "InvalidArgument");
        assert_eq!(code_name(16), "Unauthenticated");
        assert_eq!(code_name(17), "Unknown");
        assert_eq!(code_name(-1), "Unknown");
        let metrics = CoordMetrics::new(Registry::new());
        let m = metrics.method("/stylefarm.v1.Coordinator/GetJob");
        m.count(5);
        m.count(99);
        let text = metrics.registry.render();
        let series = |code: &str| format!(r#"stylefarm_grpc_requests_total{{service="stylefarm.v1.Coordinator",method="GetJob",code="{code}"}}"#);
        assert_eq!(stylefarm_core::telemetry::sample(&text, &series("NotFound")), Some(1.0), "{text}");
        assert_eq!(stylefarm_core::telemetry::sample(&text, &series("Unknown")), Some(1.0), "{text}");
    }

    #[test]
    fn observations_land_in_their_series() {
        let metrics = CoordMetrics::new(Registry::new());
        metrics.observe(&[
            Observation::Leased { queue_wait_ms: 1500 },
            Observation::AttemptEnded { job: JobId(1), attempt: 1, end: AttemptEnd::Expired, run_ms: 2000 },
            Observation::Retried,
            Observation::AttemptEnded { job: JobId(1), attempt: 2, end: AttemptEnd::Succeeded, run_ms: 500 },
            Observation::Finished { job: JobId(1), state: StateKind::Succeeded },
            Observation::Finished { job: JobId(2), state: StateKind::Cancelled },
            Observation::WorkerBlocked,
        ]);
        let text = metrics.registry.render();
        let v = |s: &str| stylefarm_core::telemetry::sample(&text, s).unwrap_or_else(|| panic!("{s} in {text}"));
        assert_eq!(v("stylefarm_job_queue_wait_seconds_sum"), 1.5);
        assert_eq!(v(r#"stylefarm_job_run_seconds_sum{outcome="expired"}"#), 2.0);
        assert_eq!(v(r#"stylefarm_job_run_seconds_count{outcome="succeeded"}"#), 1.0);
        assert_eq!(v(r#"stylefarm_job_run_seconds_count{outcome="failed"}"#), 0.0);
        assert_eq!(v("stylefarm_job_retries_total"), 1.0);
        assert_eq!(v(r#"stylefarm_jobs_finished_total{outcome="succeeded"}"#), 1.0);
        assert_eq!(v(r#"stylefarm_jobs_finished_total{outcome="cancelled"}"#), 1.0);
        assert_eq!(v(r#"stylefarm_jobs_finished_total{outcome="failed"}"#), 0.0);
        assert_eq!(v("stylefarm_worker_blocks_total"), 1.0);
    }
}
