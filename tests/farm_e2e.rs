//! The whole farm in one process: coordinator + real workers running the engine
//! on tiny images; outputs, traces and metadata checked in the store.

use std::time::{Duration, Instant};

use stylefarm_proto as pb;
use stylefarm_tests::farm::{get_batch, sha_ref, test_config, upload_bytes, upload_file, url_ref, wait_batch, Client, Coordinator, InProcessWorker};
use stylefarm_tests::sample;
use tonic::Code;

/// Snapshots every 2 iterations for short jobs; long ones stay within the limit of 500 snapshots.
fn settings(size: u32, iterations: u32) -> Option<pb::RenderSettings> {
    let every = 2.max(iterations.div_ceil(stylefarm_core::params::MAX_SNAPSHOTS));
    Some(pb::RenderSettings { size: Some(size), iterations: Some(iterations), snapshot_every: Some(every), ..Default::default() })
}

fn job(name: &str, content: pb::ImageRef, style: pb::ImageRef, size: u32, iterations: u32) -> pb::JobSpec {
    pb::JobSpec { name: name.into(), content: Some(content), styles: vec![style], settings: settings(size, iterations), requires: Vec::new() }
}

/// Uploads two photos and two styles; a batch of the four pairings at 48 px
/// with `iterations`, and the retina style's SHA-256.
async fn two_by_two(client: &mut Client, name: &str, iterations: u32) -> (pb::SubmitBatchRequest, String) {
    let chelsea = upload_file(client, &sample("chelsea.png")).await;
    let coffee = upload_file(client, &sample("coffee.png")).await;
    let retina = upload_file(client, &sample("retina.jpg")).await;
    let gravel = upload_file(client, &sample("gravel.png")).await;
    let request = pb::SubmitBatchRequest {
        name: name.into(),
        cartesian: Some(pb::CartesianSpec {
            contents: vec![sha_ref(&chelsea), sha_ref(&coffee)],
            styles: vec![sha_ref(&retina), sha_ref(&gravel)],
            settings: vec![settings(48, iterations).unwrap()],
        }),
        ..Default::default()
    };
    (request, retina)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_render_a_batch_into_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    let (request, retina) = two_by_two(&mut client, "e2e", 4).await;
    let a = InProcessWorker::start(&coordinator.url, "a", &dir.path().join("wa"));
    let b = InProcessWorker::start(&coordinator.url, "b", &dir.path().join("wb"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let batch = client.submit_batch(request).await.unwrap().into_inner();
    let (done, jobs) = wait_batch(&mut client, &batch.batch_id, Duration::from_secs(240)).await;
    assert_eq!(pb::BatchState::try_from(done.state).unwrap(), pb::BatchState::Succeeded, "{jobs:?}");
    let objects = dir.path().join("objects");
    for job in &jobs {
        let result = job.result.as_ref().unwrap();
        assert_eq!(result.prefix, format!("batches/{}/jobs/{}/attempt-1/", batch.batch_id, job.id));
        assert_eq!(result.iterations, 4);
        assert!(result.final_loss.is_finite() && result.final_loss > 0.0);
        let kinds: Vec<&str> = result.outputs.iter().map(|o| o.kind.as_str()).collect();
        for kind in ["image", "trace", "metadata", "animation", "snapshot"] {
            assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
        }
        for output in &result.outputs {
            let path = objects.join(&output.key);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), output.size_bytes, "{}", path.display());
        }
        let image = image::open(objects.join(&result.prefix).join("output.png")).unwrap();
        assert_eq!(image.width().max(image.height()), 48);
        let trace = std::fs::read_to_string(objects.join(&result.prefix).join("trace.jsonl")).unwrap();
        let rows: Vec<serde_json::Value> = trace.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows.len(), 5, "iterations 0..=4");
        assert!(rows[4]["total"].as_f64().unwrap() < rows[0]["total"].as_f64().unwrap(), "the loss falls");
        let metadata: serde_json::Value = serde_json::from_slice(&std::fs::read(objects.join(&result.prefix).join("metadata.json")).unwrap()).unwrap();
        assert_eq!(metadata["farm"]["job_id"], job.id.as_str());
        assert_eq!(metadata["params"]["size"], 48);
        // where the worker's time went, and how busy the device was
        let stages = &metadata["worker"]["stage_ms"];
        for stage in ["fetch_inputs", "decode", "wait_device", "engine", "encode"] {
            assert!(stages[stage].as_f64().is_some_and(|ms| ms >= 0.0), "{stage} in {stages}");
        }
        let engine = stages["engine"].as_f64().unwrap();
        assert!(engine >= result.engine_ms && engine < result.engine_ms + 1_000.0, "the engine stage wraps the render: {engine} vs {}", result.engine_ms);
        let busy = metadata["worker"]["device_busy_fraction"].as_f64().unwrap();
        assert!(busy > 0.0 && busy <= 1.0, "{busy}");
    }
    // each device's busy fraction reaches the coordinator with the heartbeats
    let deadline = Instant::now() + Duration::from_secs(20);
    let workers = loop {
        let workers = client.list_workers(pb::ListWorkersRequest {}).await.unwrap().into_inner().workers;
        if workers.iter().all(|w| w.busy.iter().any(|b| b.device == "cpu" && b.fraction > 0.0)) {
            break workers;
        }
        assert!(Instant::now() < deadline, "no busy fraction: {workers:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(workers.iter().flat_map(|w| &w.busy).all(|b| b.fraction <= 1.0 && b.window_s == 60), "{workers:?}");
    let done_by: Vec<u64> = workers.iter().map(|w| w.succeeded).collect();
    assert_eq!(done_by.iter().sum::<u64>(), 4, "{workers:?}");
    assert!(done_by.iter().all(|&n| n >= 1), "both workers took jobs: {done_by:?}");
    // inputs are cached by SHA-256 across jobs
    assert!(dir.path().join("wa/inputs/sha256").join(&retina).is_file() || dir.path().join("wb/inputs/sha256").join(&retina).is_file());
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_packs_several_jobs_on_one_device() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    let (request, _) = two_by_two(&mut client, "packed", 6).await;
    let worker = InProcessWorker::start_args(stylefarm_worker::farm::FarmArgs {
        coordinator: Some(coordinator.url.clone()),
        devices: "cpu".into(),
        name: Some("packed".into()),
        drain_timeout_s: 30,
        work_dir: Some(dir.path().join("w")),
        jobs_per_device: 3,
        ..Default::default()
    });
    let batch = client.submit_batch(request).await.unwrap().into_inner();
    let (done, jobs) = wait_batch(&mut client, &batch.batch_id, Duration::from_secs(240)).await;
    assert_eq!(pb::BatchState::try_from(done.state).unwrap(), pb::BatchState::Succeeded, "{jobs:?}");
    let objects = dir.path().join("objects");
    let mut stacked = 0;
    for job in &jobs {
        let result = job.result.as_ref().unwrap();
        assert_eq!(result.iterations, 6);
        let metadata: serde_json::Value = serde_json::from_slice(&std::fs::read(objects.join(&result.prefix).join("metadata.json")).unwrap()).unwrap();
        let packing = &metadata["packing"];
        assert!(packing["evaluations"].as_u64().unwrap() >= 7, "every evaluation through the device's shared evaluator: {packing}");
        stacked += u64::from(packing["max_width"].as_u64().unwrap() >= 2);
    }
    // three runners on one device: the first three jobs run together
    assert!(stacked >= 2, "jobs stacked in one pass: {stacked} of 4");
    let workers = client.list_workers(pb::ListWorkersRequest {}).await.unwrap().into_inner().workers;
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].succeeded, 4);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_fail_their_jobs_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    let chelsea = upload_file(&mut client, &sample("chelsea.png")).await;
    let retina = upload_file(&mut client, &sample("retina.jpg")).await;
    // a PNG whose header is fine (the upload check passes) and whose data is not
    let mut corrupt = std::fs::read(sample("chelsea.png")).unwrap();
    let n = corrupt.len();
    corrupt[n / 2..n / 2 + 4000].fill(0xAB);
    let corrupt = upload_bytes(&mut client, "corrupt.png", corrupt).await.unwrap();
    // inside the coordinator's store (anything else is refused at submit), but absent
    let missing = format!("file://{}/objects/nowhere/missing.png", std::fs::canonicalize(dir.path()).unwrap().display());
    let worker = InProcessWorker::start(&coordinator.url, "w", &dir.path().join("w"));
    let request = pb::SubmitBatchRequest {
        name: "mixed".into(),
        jobs: vec![
            job("good", sha_ref(&chelsea), sha_ref(&retina), 32, 2),
            job("corrupt", sha_ref(&corrupt), sha_ref(&retina), 32, 2),
            job("missing", url_ref(&missing), sha_ref(&retina), 32, 2),
            job("good-2", sha_ref(&chelsea), sha_ref(&retina), 32, 2),
        ],
        ..Default::default()
    };
    let batch = client.submit_batch(request).await.unwrap().into_inner();
    let (done, jobs) = wait_batch(&mut client, &batch.batch_id, Duration::from_secs(180)).await;
    assert_eq!(pb::BatchState::try_from(done.state).unwrap(), pb::BatchState::Failed);
    let by_name = |n: &str| jobs.iter().find(|j| j.name == n).unwrap();
    for good in ["good", "good-2"] {
        assert_eq!(by_name(good).state, pb::JobState::Succeeded as i32, "{:?}", by_name(good));
    }
    let corrupt_job = by_name("corrupt");
    assert_eq!((corrupt_job.state, corrupt_job.attempt, corrupt_job.error_retryable), (pb::JobState::Failed as i32, 1, false), "{corrupt_job:?}");
    assert!(corrupt_job.error.contains("content") && corrupt_job.error.contains("corrupt"), "{}", corrupt_job.error);
    let missing_job = by_name("missing");
    assert_eq!((missing_job.state, missing_job.attempt), (pb::JobState::Failed as i32, 1), "{missing_job:?}");
    assert!(missing_job.error.contains("not found") && missing_job.error.contains("missing.png"), "{}", missing_job.error);
    // a 100,000 px job is refused at the edge, naming the field; nothing was queued
    let mut huge = job("huge", sha_ref(&chelsea), sha_ref(&retina), 32, 2);
    huge.settings.as_mut().unwrap().size = Some(100_000);
    let status = client.submit_batch(pb::SubmitBatchRequest { jobs: vec![huge], ..Default::default() }).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("jobs[0].settings.size") && status.message().contains("8192"), "{}", status.message());
    // the worker is alive and takes the next batch
    let next = client
        .submit_batch(pb::SubmitBatchRequest { jobs: vec![job("after", sha_ref(&chelsea), sha_ref(&retina), 32, 2)], ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let (after, _) = wait_batch(&mut client, &next.batch_id, Duration::from_secs(120)).await;
    assert_eq!(pb::BatchState::try_from(after.state).unwrap(), pb::BatchState::Succeeded);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_running_job_stops_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    let chelsea = upload_file(&mut client, &sample("chelsea.png")).await;
    let retina = upload_file(&mut client, &sample("retina.jpg")).await;
    let worker = InProcessWorker::start(&coordinator.url, "w", &dir.path().join("w"));
    let request = pb::SubmitBatchRequest { jobs: vec![job("long", sha_ref(&chelsea), sha_ref(&retina), 64, 5000)], ..Default::default() };
    let batch = client.submit_batch(request).await.unwrap().into_inner();
    // wait until it is really iterating
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let job = client.get_job(pb::GetJobRequest { job_id: batch.job_ids[0].clone() }).await.unwrap().into_inner();
        if job.progress.as_ref().is_some_and(|p| p.iteration >= 3) {
            break;
        }
        assert!(Instant::now() < deadline, "no progress: {job:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cancelled_at = Instant::now();
    client.cancel_batch(pb::CancelBatchRequest { batch_id: batch.batch_id.clone() }).await.unwrap();
    let (done, jobs) = wait_batch(&mut client, &batch.batch_id, Duration::from_secs(30)).await;
    let took = cancelled_at.elapsed();
    assert_eq!(pb::BatchState::try_from(done.state).unwrap(), pb::BatchState::Cancelled, "{jobs:?}");
    assert!(took < Duration::from_secs(5), "stopped {took:?} after the cancel");
    let (_, jobs) = get_batch(&mut client, &batch.batch_id).await;
    assert!(jobs[0].progress.is_none() || jobs[0].state == pb::JobState::Cancelled as i32);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_worker_finishes_its_running_job_and_takes_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    let chelsea = upload_file(&mut client, &sample("chelsea.png")).await;
    let retina = upload_file(&mut client, &sample("retina.jpg")).await;
    // one job at a time: nothing is leased ahead
    let worker = InProcessWorker::start_args(stylefarm_worker::farm::FarmArgs {
        coordinator: Some(coordinator.url.clone()),
        devices: "cpu".into(),
        name: Some("drainer".into()),
        drain_timeout_s: 30,
        work_dir: Some(dir.path().join("w")),
        pipeline: stylefarm_worker::farm::Pipeline::Off,
        previews: stylefarm_worker::farm::Previews::Off,
        ..Default::default()
    });
    let request = pb::SubmitBatchRequest {
        jobs: vec![job("first", sha_ref(&chelsea), sha_ref(&retina), 48, 40), job("second", sha_ref(&chelsea), sha_ref(&retina), 48, 40)],
        ..Default::default()
    };
    let batch = client.submit_batch(request).await.unwrap().into_inner();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let job = client.get_job(pb::GetJobRequest { job_id: batch.job_ids[0].clone() }).await.unwrap().into_inner();
        if job.progress.as_ref().is_some_and(|p| p.iteration >= 2) {
            break;
        }
        assert!(Instant::now() < deadline, "no progress: {job:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SIGTERM: the running job finishes and is reported, the queued one stays queued
    worker.stop().await;
    let (_, jobs) = get_batch(&mut client, &batch.batch_id).await;
    assert_eq!(jobs[0].state, pb::JobState::Succeeded as i32, "{:?}", jobs[0]);
    assert_eq!(jobs[0].attempt, 1);
    assert_eq!(jobs[1].state, pb::JobState::Queued as i32, "{:?}", jobs[1]);
    assert_eq!(jobs[1].attempt, 0, "never leased by the draining worker");
    // --previews off: the image, its trace and metadata, nothing else
    let mut kinds: Vec<&str> = jobs[0].result.as_ref().unwrap().outputs.iter().map(|o| o.kind.as_str()).collect();
    kinds.sort();
    assert_eq!(kinds, ["image", "metadata", "trace"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_leased_ahead_goes_back_unstarted_on_drain_and_costs_no_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.max_attempts = 1;
    let coordinator = Coordinator::start(config).await;
    let mut client = coordinator.client().await;
    let chelsea = upload_file(&mut client, &sample("chelsea.png")).await;
    let retina = upload_file(&mut client, &sample("retina.jpg")).await;
    let worker = InProcessWorker::start(&coordinator.url, "ahead", &dir.path().join("w"));
    let request = pb::SubmitBatchRequest {
        jobs: vec![job("first", sha_ref(&chelsea), sha_ref(&retina), 48, 400), job("second", sha_ref(&chelsea), sha_ref(&retina), 48, 40)],
        ..Default::default()
    };
    let batch = client.submit_batch(request).await.unwrap().into_inner();
    // the second is leased while the first still renders (near its end)
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, jobs) = get_batch(&mut client, &batch.batch_id).await;
        if jobs[1].attempt == 1 {
            assert_eq!(jobs[0].state, pb::JobState::Running as i32, "leased ahead, not after: {:?}", jobs[0]);
            assert!(jobs[1].progress.is_none(), "not started: {:?}", jobs[1]);
            break;
        }
        assert!(Instant::now() < deadline && jobs[0].state != pb::JobState::Succeeded as i32, "never leased ahead: {jobs:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // drain: the first finishes, the second goes back unstarted
    worker.stop().await;
    let (_, jobs) = get_batch(&mut client, &batch.batch_id).await;
    assert_eq!(jobs[0].state, pb::JobState::Succeeded as i32, "{:?}", jobs[0]);
    let second = client.get_job(pb::GetJobRequest { job_id: jobs[1].id.clone() }).await.unwrap().into_inner();
    assert_eq!((second.state, second.attempt, second.attempts_handed_back), (pb::JobState::Queued as i32, 1, 1), "{second:?}");
    let workers = client.list_workers(pb::ListWorkersRequest {}).await.unwrap().into_inner().workers;
    assert_eq!((workers[0].succeeded, workers[0].failed), (1, 0), "a hand-back is not the worker's failure");
    // max_attempts 1 still lets it run: the hand-back spent nothing
    let worker = InProcessWorker::start(&coordinator.url, "ahead", &dir.path().join("w"));
    let (done, jobs) = wait_batch(&mut client, &batch.batch_id, Duration::from_secs(240)).await;
    assert_eq!(pb::BatchState::try_from(done.state).unwrap(), pb::BatchState::Succeeded, "{jobs:?}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_back_job_costs_no_attempt_and_a_restarted_worker_keeps_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.max_attempts = 1;
    let coordinator = Coordinator::start(config).await;
    let mut client = coordinator.client().await;
    let chelsea = upload_file(&mut client, &sample("chelsea.png")).await;
    let retina = upload_file(&mut client, &sample("retina.jpg")).await;
    let worker = InProcessWorker::start_with(&coordinator.url, "keeper", &dir.path().join("w"), 0);
    let request = pb::SubmitBatchRequest { jobs: vec![job("long", sha_ref(&chelsea), sha_ref(&retina), 48, 300)], ..Default::default() };
    let batch = client.submit_batch(request).await.unwrap().into_inner();
    let job_id = batch.job_ids[0].clone();
    let deadline = Instant::now() + Duration::from_secs(120);
    while client.get_job(pb::GetJobRequest { job_id: job_id.clone() }).await.unwrap().into_inner().progress.is_none_or(|p| p.iteration < 1) {
        assert!(Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // drain timeout 0: the running job is handed back, not failed
    worker.stop().await;
    let job = client.get_job(pb::GetJobRequest { job_id: job_id.clone() }).await.unwrap().into_inner();
    assert_eq!((job.state, job.attempt, job.attempts_handed_back), (pb::JobState::Queued as i32, 1, 1), "{job:?}");
    let first = client.list_workers(pb::ListWorkersRequest {}).await.unwrap().into_inner().workers;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].failed, 0, "a hand-back is not the worker's failure");
    // the same worker again (its state file): the same id, and max_attempts 1 still lets the job run
    let worker = InProcessWorker::start(&coordinator.url, "keeper", &dir.path().join("w"));
    let (_, jobs) = wait_batch(&mut client, &batch.batch_id, Duration::from_secs(300)).await;
    assert_eq!((jobs[0].state, jobs[0].attempt), (pb::JobState::Succeeded as i32, 2), "{:?}", jobs[0]);
    let workers = client.list_workers(pb::ListWorkersRequest {}).await.unwrap().into_inner().workers;
    assert_eq!(workers.len(), 1, "a restart adds no worker record: {workers:?}");
    assert_eq!(workers[0].id, first[0].id);
    assert_eq!(jobs[0].worker_id, first[0].id);
    worker.stop().await;
}
