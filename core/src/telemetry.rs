//! Prometheus metrics for the coordinator and the workers: one [`Registry`]
//! per process (or per coordinator a test starts), handles registered once and
//! updated with an atomic add, and `/metrics` served over HTTP
//! (`--metrics-listen`).
//!
//! No global recorder: a component holds an `Option` of its metrics, so a
//! process started without `--metrics-listen` records nothing at all.
//! Names follow Prometheus conventions: `stylefarm_` prefix, base units
//! (`_seconds`, `_bytes`), counters end in `_total`. Every `_seconds` and
//! `_bytes` histogram gets the buckets below (not summaries).

use std::future::Future;
use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Seconds: a lease grant (milliseconds) up to a long render (an hour).
pub const SECONDS_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0];

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Where this process's metrics live.
#[derive(Clone)]
pub struct Registry {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

static METADATA: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, None);

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    Key::from_parts(name, labels.iter().map(|(k, v)| Label::new(*k, v.to_string())).collect::<Vec<_>>())
}

fn unit_of(name: &str) -> Option<Unit> {
    if name.ends_with("_seconds") {
        Some(Unit::Seconds)
    } else if name.ends_with("_bytes") || name.ends_with("_bytes_total") {
        Some(Unit::Bytes)
    } else {
        None
    }
}

impl Registry {
    pub fn new() -> Registry {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        Registry { recorder: Arc::new(recorder), handle }
    }

    fn describe(&self, name: &'static str, help: &'static str, describe: fn(&PrometheusRecorder, KeyName, Option<Unit>, SharedString)) {
        describe(&self.recorder, KeyName::from_const_str(name), unit_of(name), SharedString::const_str(help));
    }

    /// A counter (its name ends in `_total`) with these label values.
    pub fn counter(&self, name: &'static str, help: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        debug_assert!(name.ends_with("_total"), "{name}: counters end in _total");
        self.describe(name, help, |r, k, u, h| r.describe_counter(k, u, h));
        self.recorder.register_counter(&key(name, labels), &METADATA)
    }

    pub fn gauge(&self, name: &'static str, help: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.describe(name, help, |r, k, u, h| r.describe_gauge(k, u, h));
        self.recorder.register_gauge(&key(name, labels), &METADATA)
    }

    pub fn histogram(&self, name: &'static str, help: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        self.describe(name, help, |r, k, u, h| r.describe_histogram(k, u, h));
        self.recorder.register_histogram(&key(name, labels), &METADATA)
    }

    /// The text exposition of every metric registered so far.
    pub fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// What `/metrics` answers: a component refreshes its point-in-time gauges
/// (queue depth, workers, device memory) and renders its registry.
pub trait Scrape: Send + Sync + 'static {
    fn scrape(&self) -> String;
}

impl Scrape for Registry {
    fn scrape(&self) -> String {
        self.render()
    }
}

/// An HTTP router with `GET /metrics` (merge it into a larger one, or serve it alone).
pub fn router(scrape: Arc<dyn Scrape>) -> axum::Router {
    use axum::http::header;
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let scrape = Arc::clone(&scrape);
            async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], scrape.scrape()) }
        }),
    )
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(listener: tokio::net::TcpListener, router: axum::Router, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "serving /metrics over HTTP");
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

/// A metric's value in a text exposition (first sample whose name and labels
/// match exactly, e.g. `stylefarm_jobs{state="queued"}`): for tests and the
/// benchmarks.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_histograms_render_with_help_units_and_buckets() {
        let registry = Registry::new();
        let done = registry.counter("stylefarm_test_jobs_total", "Jobs finished.", &[("outcome", "succeeded")]);
        done.increment(3);
        registry.gauge("stylefarm_test_queue", "Queued jobs.", &[]).set(7.0);
        let wait = registry.histogram("stylefarm_test_wait_seconds", "Queue wait.", &[]);
        wait.record(0.003);
        wait.record(42.0);
        let text = registry.render();
        assert_eq!(sample(&text, r#"stylefarm_test_jobs_total{outcome="succeeded"}"#), Some(3.0), "{text}");
        assert_eq!(sample(&text, "stylefarm_test_queue"), Some(7.0));
        assert_eq!(sample(&text, "stylefarm_test_wait_seconds_count"), Some(2.0));
        assert_eq!(sample(&text, r#"stylefarm_test_wait_seconds_bucket{le="0.005"}"#), Some(1.0), "a histogram with our buckets, not a summary: {text}");
        assert_eq!(sample(&text, r#"stylefarm_test_wait_seconds_bucket{le="+Inf"}"#), Some(2.0));
        assert!(text.contains("# HELP stylefarm_test_jobs_total Jobs finished."), "{text}");
        assert!(text.contains("# TYPE stylefarm_test_wait_seconds histogram"), "{text}");
    }

    #[test]
    fn two_registries_do_not_share_values() {
        let (a, b) = (Registry::new(), Registry::new());
        a.counter("stylefarm_test_total", "x", &[]).increment(1);
        assert_eq!(sample(&a.render(), "stylefarm_test_total"), Some(1.0));
        assert_eq!(sample(&b.render(), "stylefarm_test_total"), None);
    }

    #[tokio::test]
    async fn metrics_are_served_over_http() {
        let registry = Registry::new();
        registry.counter("stylefarm_test_served_total", "x", &[]).increment(5);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, router(Arc::new(registry)), async move {
            let _ = stopped.await;
        }));
        let body = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
            let mut body = String::new();
            stream.read_to_string(&mut body).unwrap();
            body
        })
        .await
        .unwrap();
        assert!(body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("text/plain; version=0.0.4"), "{body}");
        assert!(body.contains("stylefarm_test_served_total 5"), "{body}");
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
