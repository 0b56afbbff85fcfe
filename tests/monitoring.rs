//! Monitoring: the coordinator's Prometheus metrics through real gRPC calls.

use std::time::Duration;

use stylefarm_core::telemetry::sample;
use stylefarm_proto as pb;
use stylefarm_tests::farm::{batch_request, test_config, Coordinator, TestWorker};
use stylefarm_tests::repo_root;
use tonic::Code;

const GIB: u64 = 1 << 30;

fn value(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_metrics_count_jobs_attempts_queue_and_calls() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    config.max_attempts = 2;
    let coordinator = Coordinator::start(config).await;
    let mut client = coordinator.client().await;
    client.submit_batch(batch_request("high", 3, 5)).await.unwrap();
    client.submit_batch(batch_request("low", 2, 0)).await.unwrap();
    let bad = client.submit_batch(batch_request("bad", 1, 5000)).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    let text = coordinator.scrape().await;
    assert_eq!(value(&text, r#"stylefarm_queue_depth{priority="5"}"#), 3.0);
    assert_eq!(value(&text, r#"stylefarm_queue_depth{priority="0"}"#), 2.0);
    assert_eq!(value(&text, r#"stylefarm_jobs{state="queued"}"#), 5.0);
    assert_eq!(value(&text, "stylefarm_batches_unfinished"), 2.0);
    assert_eq!(value(&text, r#"stylefarm_grpc_requests_total{service="stylefarm.v1.Coordinator",method="SubmitBatch",code="OK"}"#), 2.0);
    assert_eq!(value(&text, r#"stylefarm_grpc_requests_total{service="stylefarm.v1.Coordinator",method="SubmitBatch",code="InvalidArgument"}"#), 1.0);

    let mut worker = coordinator.worker("w-metrics", 16 * GIB).await;
    // one succeeds
    let first = worker.lease(0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    worker.complete(&first).await.unwrap();
    // one fails retryably (a retry), then for good
    let second = worker.lease(0).await.unwrap();
    assert!(worker.fail(&second, "out of memory", pb::AttemptStop::FailedRetryable).await.unwrap(), "retried");
    let mut again = None;
    for _ in 0..50 {
        match worker.lease(0).await {
            Some(l) if l.job_id == second.job_id => {
                again = Some(l);
                break;
            }
            Some(other) => worker.complete(&other).await.unwrap(),
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let again = again.expect("the failed job came back");
    assert!(!worker.fail(&again, "broken input", pb::AttemptStop::Failed).await.unwrap());
    let text = coordinator.scrape().await;
    let succeeded = value(&text, r#"stylefarm_jobs_finished_total{outcome="succeeded"}"#);
    assert!(succeeded >= 1.0, "{text}");
    assert_eq!(value(&text, r#"stylefarm_jobs_finished_total{outcome="failed"}"#), 1.0);
    assert_eq!(value(&text, "stylefarm_job_retries_total"), 1.0);
    assert_eq!(value(&text, r#"stylefarm_job_run_seconds_count{outcome="succeeded"}"#), succeeded);
    assert_eq!(value(&text, r#"stylefarm_job_run_seconds_count{outcome="failed"}"#), 2.0);
    assert!(value(&text, r#"stylefarm_job_run_seconds_sum{outcome="succeeded"}"#) >= 0.03, "the first job ran 30 ms: {text}");
    let leases = value(&text, "stylefarm_job_queue_wait_seconds_count");
    assert_eq!(leases, succeeded + 2.0, "one queue wait per lease");
    assert_eq!(value(&text, "stylefarm_lease_latency_seconds_count"), leases);
    assert_eq!(value(&text, "stylefarm_workers_connected"), 1.0);
    assert_eq!(value(&text, r#"stylefarm_devices{kind="cpu"}"#), 1.0);
    assert_eq!(value(&text, r#"stylefarm_devices{kind="cuda"}"#), 0.0);
    assert_eq!(value(&text, r#"stylefarm_jobs{state="queued"}"#) + value(&text, r#"stylefarm_jobs{state="running"}"#), 5.0 - succeeded - 1.0);
    assert!(value(&text, r#"stylefarm_grpc_requests_total{service="stylefarm.v1.WorkerApi",method="LeaseJob",code="OK"}"#) >= leases);
    assert!(value(&text, r#"stylefarm_grpc_request_duration_seconds_count{service="stylefarm.v1.WorkerApi",method="FailJob"}"#) == 2.0);
    // a stale completion is counted under its code
    let stale = worker.complete(&first).await.unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    let text = coordinator.scrape().await;
    assert_eq!(value(&text, r#"stylefarm_grpc_requests_total{service="stylefarm.v1.WorkerApi",method="CompleteJob",code="FailedPrecondition"}"#), 1.0);
    coordinator.stop().await.unwrap();
}

/// Every `stylefarm_…` series name in `text`, without histogram suffixes.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("stylefarm_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_count", "_sum"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        // alert names (StylefarmX) are not series; job labels are `stylefarm-…`
        if !base.ends_with('_') {
            names.insert(base.to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// A free local port (bound and released: the caller binds it again at once).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The Debian `prometheus` server (scripts/setup.sh installs it), scraping
/// `targets` every second, with its data in `dir`.
struct PrometheusServer {
    child: std::process::Child,
    url: String,
}

impl PrometheusServer {
    fn start(dir: &std::path::Path, targets: &[(&str, String)]) -> PrometheusServer {
        let mut config = String::from("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n");
        for (job, target) in targets {
            config.push_str(&format!("  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"));
        }
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (Debian package `prometheus`; `make setup` installs it)");
        PrometheusServer { child, url: format!("http://127.0.0.1:{port}") }
    }

    /// Whether an instant query evaluates, and how many series it returns.
    async fn evaluate(&self, promql: &str) -> (bool, usize) {
        let url = format!("{}/api/v1/query", self.url);
        let promql = promql.to_string();
        let body: Option<serde_json::Value> = tokio::task::spawn_blocking(move || {
            let text = match ureq::get(&url).query("query", &promql).call() {
                Ok(r) => r.into_string().ok()?,
                Err(ureq::Error::Status(_, r)) => r.into_string().ok()?,
                Err(_) => return None,
            };
            serde_json::from_str(&text).ok()
        })
        .await
        .unwrap();
        let Some(body) = body else { return (false, 0) };
        (body["status"] == "success", body["data"]["result"].as_array().map_or(0, Vec::len))
    }

    /// The single value of an instant PromQL query, if it has one.
    async fn query(&self, promql: &str) -> Option<f64> {
        let url = format!("{}/api/v1/query", self.url);
        let promql = promql.to_string();
        let body: serde_json::Value = tokio::task::spawn_blocking(move || {
            ureq::get(&url).query("query", &promql).call().ok()?.into_string().ok().and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        })
        .await
        .unwrap()?;
        assert_eq!(body["status"], "success", "{body}");
        body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_coordinator_and_a_worker_during_a_batch() {
    use stylefarm_tests::farm::{sha_ref, upload_file, wait_batch, InProcessWorker};
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let coordinator = Coordinator::start(config).await;
    let worker_metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let worker = InProcessWorker::start_args(stylefarm_worker::farm::FarmArgs {
        coordinator: Some(coordinator.url.clone()),
        devices: "cpu".into(),
        name: Some("scraped".into()),
        drain_timeout_s: 30,
        work_dir: Some(dir.path().join("w")),
        metrics_listen: Some(worker_metrics),
        ..Default::default()
    });
    let coordinator_target = coordinator.metrics_url.as_deref().unwrap().trim_start_matches("http://").trim_end_matches("/metrics").to_string();
    let prometheus = PrometheusServer::start(dir.path(), &[("coordinator", coordinator_target), ("worker", worker_metrics.to_string())]);

    let mut client = coordinator.client().await;
    let chelsea = upload_file(&mut client, &stylefarm_tests::sample("chelsea.png")).await;
    let wave = upload_file(&mut client, &stylefarm_tests::sample("retina.jpg")).await;
    let settings = pb::RenderSettings { size: Some(48), iterations: Some(6), ..Default::default() };
    let jobs = (0..2)
        .map(|i| pb::JobSpec {
            name: format!("scraped-{i}"),
            content: Some(sha_ref(&chelsea)),
            styles: vec![sha_ref(&wave)],
            settings: Some(settings.clone()),
            requires: Vec::new(),
        })
        .collect();
    let batch = client.submit_batch(pb::SubmitBatchRequest { name: "scraped".into(), jobs, ..Default::default() }).await.unwrap().into_inner();
    let (done, _) = wait_batch(&mut client, &batch.batch_id, Duration::from_secs(240)).await;
    assert_eq!(pb::BatchState::try_from(done.state).unwrap(), pb::BatchState::Succeeded);

    // Prometheus has both targets up and sees what happened, through PromQL
    let queries = [
        (r#"sum(up{job=~"coordinator|worker"})"#, 2.0),
        (r#"stylefarm_jobs_finished_total{job="coordinator",outcome="succeeded"}"#, 2.0),
        (r#"sum(stylefarm_job_run_seconds_count{job="coordinator",outcome="succeeded"})"#, 2.0),
        (r#"stylefarm_worker_jobs_total{job="worker",outcome="succeeded"}"#, 2.0),
        (r#"stylefarm_device_busy{job="worker",device="cpu"}"#, 0.0),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for (promql, want) in queries {
        let mut got = None;
        while std::time::Instant::now() < deadline {
            got = prometheus.query(promql).await;
            if got == Some(want) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(got, Some(want), "{promql} (log: {})", std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default());
    }
    let run_sum = prometheus.query(r#"sum(stylefarm_job_run_seconds_sum{job="coordinator"})"#).await.unwrap();
    assert!(run_sum > 0.0, "a non-zero run-time histogram: {run_sum}");
    let busy = prometheus.query(r#"stylefarm_device_busy_fraction{job="worker",device="cpu"}"#).await.unwrap();
    assert!(busy > 0.0 && busy <= 1.0, "the device's engine time over wall time: {busy}");
    let evaluations = prometheus.query(r#"stylefarm_engine_evaluation_seconds_count{job="worker",device="cpu"}"#).await.unwrap();
    assert!(evaluations >= 2.0, "the engine's evaluations were timed: {evaluations}");
    let downloaded = prometheus.query(r#"stylefarm_worker_download_bytes_total{job="worker"}"#).await.unwrap();
    let uploaded = prometheus.query(r#"stylefarm_worker_upload_bytes_total{job="worker"}"#).await.unwrap();
    let inputs = (std::fs::metadata(stylefarm_tests::sample("chelsea.png")).unwrap().len()
        + std::fs::metadata(stylefarm_tests::sample("retina.jpg")).unwrap().len()) as f64;
    assert_eq!(downloaded, inputs, "each input downloaded once (then cached)");
    assert!(uploaded > 0.0);

    // the shipped dashboard and alerts name only series the farm exports, and
    // every dashboard query evaluates on this Prometheus
    let exported = format!("{}\n{}", coordinator.scrape().await, stylefarm_tests::farm::http_get(&format!("http://{worker_metrics}/metrics")).await);
    let dashboard = std::fs::read_to_string(repo_root().join("deploy/observability/grafana/dashboards/stylefarm.json")).unwrap();
    let alerts = std::fs::read_to_string(repo_root().join("deploy/observability/alerts.yml")).unwrap();
    for name in metric_names(&format!("{dashboard}\n{alerts}")) {
        // GPU memory comes from nvidia-smi: absent on this CPU worker by design
        if name.starts_with("stylefarm_device_memory_") {
            continue;
        }
        assert!(exported.lines().any(|l| l.starts_with(&name)), "{name} is in the dashboard or alerts but not exported");
    }
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().replace("$__rate_interval", "1m"))
        .collect();
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    // rates need a few scrapes after the batch
    let enough = std::time::Instant::now() + Duration::from_secs(30);
    while prometheus.query(r#"min(count_over_time(up{job=~"coordinator|worker"}[1m]))"#).await.unwrap_or(0.0) < 8.0 && std::time::Instant::now() < enough {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut with_data = 0;
    for expr in &exprs {
        let (ok, points) = prometheus.evaluate(expr).await;
        assert!(ok, "the dashboard query {expr} does not evaluate");
        if points == 0 {
            eprintln!("no data yet: {expr}");
        }
        with_data += usize::from(points > 0);
    }
    assert!(with_data * 4 >= exprs.len() * 3, "most panels show data after a batch: {with_data} of {}", exprs.len());
    worker.stop().await;
    coordinator.stop().await.unwrap();
}

fn promtool(args: &[&str]) -> String {
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(repo_root().join("deploy/observability"))
        .output()
        .expect("promtool (Debian package `prometheus`; `make setup` installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_shipped_prometheus_config_and_alert_rules_pass_promtool() {
    let config = promtool(&["check", "config", "prometheus.yml"]);
    assert!(config.contains("SUCCESS: 1 rule files found"), "{config}");
    let rules = promtool(&["check", "rules", "alerts.yml"]);
    assert!(rules.contains("SUCCESS: 6 rules found"), "{rules}");
    // each alert fires on the series that should fire it and not on a healthy farm
    promtool(&["test", "rules", "alerts_test.yml"]);
}

#[test]
fn the_grafana_dashboard_is_provisioned_from_the_files_compose_mounts() {
    let compose: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(repo_root().join("deploy/compose.yaml")).unwrap()).unwrap();
    for service in ["prometheus", "grafana"] {
        for volume in compose["services"][service]["volumes"].as_sequence().unwrap() {
            let host = volume.as_str().unwrap().split(':').next().unwrap();
            if host.starts_with("./") {
                assert!(repo_root().join("deploy").join(host).exists(), "{service} mounts {host}, which is missing");
            }
        }
    }
    for service in ["coordinator", "worker"] {
        let listen = compose["services"][service]["environment"]["STYLEFARM_METRICS_LISTEN"].as_str().unwrap_or_default().to_string();
        let port = listen.rsplit(':').next().unwrap();
        let scrape = std::fs::read_to_string(repo_root().join("deploy/observability/prometheus.yml")).unwrap();
        assert!(scrape.contains(&format!("{service}:{port}")) || scrape.contains(&format!("port: {port}")), "Prometheus scrapes {service} on {port}");
    }
    let provider: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo_root().join("deploy/observability/grafana/provisioning/dashboards/stylefarm.yml")).unwrap())
            .unwrap();
    assert_eq!(provider["providers"][0]["options"]["path"], "/var/lib/grafana/dashboards");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("deploy/observability/grafana/dashboards/stylefarm.json")).unwrap()).unwrap();
    let datasource: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo_root().join("deploy/observability/grafana/provisioning/datasources/prometheus.yml")).unwrap())
            .unwrap();
    assert_eq!(dashboard["templating"]["list"][0]["current"]["value"].as_str(), datasource["datasources"][0]["uid"].as_str());
    let mut ids = std::collections::HashSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(ids.insert(panel["id"].as_i64().unwrap()), "panel ids are unique");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_memory_from_heartbeats_reaches_list_workers_and_the_workers_page() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.http_listen = Some("127.0.0.1:0".parse().unwrap());
    let coordinator = Coordinator::start(config).await;
    // a simulated worker with one GPU (no GPU here: the coordinator only records what workers say)
    let api = stylefarm_tests::farm::options(&coordinator.url, None).worker(coordinator.channel().await).unwrap();
    let mut gpu = TestWorker::register_device(api, "gpu-07", "cuda:0", 80 * GIB, None).await.unwrap();
    let reading = |device: &str, used: u64, total: u64| pb::DeviceMemory { device: device.into(), used_bytes: used, total_bytes: total };
    gpu.report_memory(vec![reading("cuda:0", 17 * GIB + GIB / 2, 80 * GIB)]).await.unwrap();

    let mut client = coordinator.client().await;
    let workers = client.list_workers(pb::ListWorkersRequest::default()).await.unwrap().into_inner().workers;
    assert_eq!(workers[0].memory, vec![reading("cuda:0", 17 * GIB + GIB / 2, 80 * GIB)]);
    let rows = stylefarm_tests::farm::http_get(&format!("{}/fragments/workers", coordinator.web_url.as_deref().unwrap())).await;
    assert!(rows.contains("17.5 GiB / 80.0 GiB"), "{rows}");

    // checked at the edge, naming the field; the last good reading stays
    let over = gpu.report_memory(vec![reading("cuda:0", 81 * GIB, 80 * GIB)]).await.unwrap_err();
    assert_eq!(over.code(), Code::InvalidArgument);
    assert!(over.message().contains("memory[0].used_bytes"), "{}", over.message());
    let foreign = gpu.report_memory(vec![reading("cuda:3", GIB, 80 * GIB)]).await.unwrap_err();
    assert!(foreign.message().contains("memory[0].device") && foreign.message().contains("cuda:3"), "{}", foreign.message());
    let many = gpu.report_memory((0..65).map(|_| reading("cuda:0", 0, GIB)).collect()).await.unwrap_err();
    assert!(many.message().contains("limit is 64"), "{}", many.message());
    let workers = client.list_workers(pb::ListWorkersRequest::default()).await.unwrap().into_inner().workers;
    assert_eq!(workers[0].memory[0].used_bytes, 17 * GIB + GIB / 2);
    // a worker that stops reporting (e.g. nvidia-smi gone) shows none, not a stale figure
    gpu.report_memory(Vec::new()).await.unwrap();
    let workers = client.list_workers(pb::ListWorkersRequest::default()).await.unwrap().into_inner().workers;
    assert!(workers[0].memory.is_empty());
}
