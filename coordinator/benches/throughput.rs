//! Coordinator throughput through real gRPC on loopback: N simulated workers
//! lease and complete trivial jobs; jobs dispatched+completed per second and
//! lease latency percentiles. Side by side, the reference run: the same
//! coordinator with group commit off (one SQLite transaction per request).
//!
//!   cargo bench -p stylefarm-coordinator --bench throughput -- --workers 100,1000 --jobs 20000
//!
//! Published anchors: OpenCue's stress test ~975 frames/s, Pixar Tractor ~500 tasks/s.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stylefarm_coordinator::CoordinatorConfig;
use stylefarm_proto as pb;
use tonic::transport::Channel;

struct Args {
    workers: Vec<usize>,
    jobs: usize,
    connections: usize,
    reference: bool,
}

fn parse_args() -> Args {
    let mut args = Args { workers: vec![100, 1000], jobs: 20_000, connections: 8, reference: true };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--workers" => args.workers = it.next().expect("--workers N,M").split(',').map(|n| n.parse().expect("number")).collect(),
            "--jobs" => args.jobs = it.next().expect("--jobs N").parse().expect("number"),
            "--connections" => args.connections = it.next().expect("--connections N").parse().expect("number"),
            "--no-reference" => args.reference = false,
            "--bench" => {}
            other => panic!("unknown argument {other}; use --workers N,M --jobs N --connections N --no-reference"),
        }
    }
    args
}

struct Run {
    jobs_per_s: f64,
    submit_jobs_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    complete_p99_ms: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn run(workers: usize, jobs: usize, connections: usize, group_commit: bool) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let config = CoordinatorConfig { data_dir: dir.path().to_path_buf(), group_commit, lease_ttl_ms: 60_000, ..CoordinatorConfig::default() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(stylefarm_coordinator::run(listener, config, async move {
        let _ = stopped.await;
    }));
    let mut channels = Vec::new();
    for _ in 0..connections {
        loop {
            if let Ok(c) = Channel::from_shared(url.clone()).unwrap().connect().await {
                channels.push(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // register the simulated workers
    let mut ids = Vec::with_capacity(workers);
    for i in 0..workers {
        let mut api = pb::worker_api_client::WorkerApiClient::new(channels[i % connections].clone());
        let r = api
            .register_worker(pb::RegisterWorkerRequest {
                name: format!("sim-{i}"),
                devices: vec![pb::Device { name: "cuda:0".into(), memory_bytes: 80 << 30, description: "simulated".into() }],
                version: "bench".into(),
                worker_id: String::new(),
            })
            .await
            .unwrap();
        ids.push(r.into_inner().worker_id);
    }
    // submit in batches of up to 10,000 jobs
    let mut client = pb::coordinator_client::CoordinatorClient::new(channels[0].clone()).max_encoding_message_size(64 << 20);
    let submit_started = Instant::now();
    let mut left = jobs;
    let mut b = 0;
    while left > 0 {
        let n = left.min(10_000);
        let request = pb::SubmitBatchRequest {
            name: format!("bench-{b}"),
            cartesian: Some(pb::CartesianSpec {
                contents: (0..n).map(|i| pb::ImageRef { source: Some(pb::image_ref::Source::Url(format!("s3://bench/c{i}.png"))) }).collect(),
                styles: vec![pb::ImageRef { source: Some(pb::image_ref::Source::Url("s3://bench/style.png".into())) }],
                settings: vec![pb::RenderSettings { size: Some(256), iterations: Some(1), ..Default::default() }],
            }),
            ..Default::default()
        };
        client.submit_batch(request).await.unwrap();
        left -= n;
        b += 1;
    }
    let submit_s = submit_started.elapsed().as_secs_f64();
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = ids
        .into_iter()
        .enumerate()
        .map(|(i, id)| {
            let mut api = pb::worker_api_client::WorkerApiClient::new(channels[i % connections].clone());
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                let mut lease_ms = Vec::new();
                let mut complete_ms = Vec::new();
                loop {
                    if done.load(Ordering::Relaxed) >= jobs {
                        return (lease_ms, complete_ms);
                    }
                    let t = Instant::now();
                    let request = pb::LeaseJobRequest { worker_id: id.clone(), device: "cuda:0".into(), device_memory_bytes: 80 << 30, wait_ms: 100 };
                    let Some(lease) = api.lease_job(request).await.unwrap().into_inner().lease else { continue };
                    lease_ms.push(t.elapsed().as_secs_f64() * 1e3);
                    let t = Instant::now();
                    let request = pb::CompleteJobRequest { worker_id: id.clone(), job_id: lease.job_id, attempt: lease.attempt, result: None };
                    api.complete_job(request).await.unwrap();
                    complete_ms.push(t.elapsed().as_secs_f64() * 1e3);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut lease_ms = Vec::new();
    let mut complete_ms = Vec::new();
    for task in tasks {
        let (l, c) = task.await.unwrap();
        lease_ms.extend(l);
        complete_ms.extend(c);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    lease_ms.sort_by(f64::total_cmp);
    complete_ms.sort_by(f64::total_cmp);
    Run {
        jobs_per_s: jobs as f64 / elapsed,
        submit_jobs_per_s: jobs as f64 / submit_s,
        p50_ms: percentile(&lease_ms, 0.5),
        p99_ms: percentile(&lease_ms, 0.99),
        complete_p99_ms: percentile(&complete_ms, 0.99),
    }
}

fn main() {
    let args = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    println!("coordinator throughput: {} jobs, {} HTTP/2 connections, {} CPU cores", args.jobs, args.connections, std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    println!("{:<8} {:<22} {:>10} {:>12} {:>10} {:>10} {:>12} {:>10}", "workers", "mode", "jobs/s", "submit j/s", "lease p50", "lease p99", "complete p99", "ratio");
    for &workers in &args.workers {
        let grouped = runtime.block_on(run(workers, args.jobs, args.connections, true));
        let print = |mode: &str, r: &Run, ratio: &str| {
            println!(
                "{:<8} {:<22} {:>10.0} {:>12.0} {:>8.2}ms {:>8.2}ms {:>10.2}ms {:>10}",
                workers, mode, r.jobs_per_s, r.submit_jobs_per_s, r.p50_ms, r.p99_ms, r.complete_p99_ms, ratio
            );
        };
        print("group commit", &grouped, "1.00");
        if args.reference {
            let single = runtime.block_on(run(workers, args.jobs, args.connections, false));
            print("reference: per-request", &single, &format!("{:.2}", grouped.jobs_per_s / single.jobs_per_s));
        }
        println!(
            "         vs anchors: {:.1}x OpenCue stress test (975 frames/s), {:.1}x Tractor (500 tasks/s); goal 5000 jobs/s: {}",
            grouped.jobs_per_s / 975.0,
            grouped.jobs_per_s / 500.0,
            if grouped.jobs_per_s >= 5000.0 { "met" } else { "NOT met" }
        );
    }
}
