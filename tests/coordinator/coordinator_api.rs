//! The coordinator through real gRPC, in-process on port 0, with test workers.

use std::time::Duration;

use stylefarm_coordinator_tests::farm::{batch_request, eventually, get_batch, test_config, url_ref, Coordinator};
use stylefarm_proto as pb;
use tonic::Code;

const GIB: u64 = 1 << 30;

fn state(job: &pb::Job) -> pb::JobState {
    pb::JobState::try_from(job.state).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_lease_heartbeat_complete_and_watch() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    let submitted = client.submit_batch(batch_request("first", 2, 0)).await.unwrap().into_inner();
    assert_eq!(submitted.batch_id, "b1");
    assert_eq!(submitted.job_ids, vec!["j1", "j2"]);

    let mut watch = client.watch_batch(pb::WatchBatchRequest { batch_id: "b1".into() }).await.unwrap().into_inner();
    let mut worker = coordinator.worker("w-test", 16 * GIB).await;
    let mut traceparents = Vec::new();
    for _ in 0..2 {
        let lease = worker.lease(0).await.expect("a job");
        assert_eq!(lease.attempt, 1);
        assert!(lease.output_prefix.ends_with(&format!("batches/b1/jobs/{}/attempt-1/", lease.job_id)), "{}", lease.output_prefix);
        assert!(lease.content_url.starts_with("file:///nowhere/content-"));
        let params: serde_json::Value = serde_json::from_str(&lease.params_json).unwrap();
        assert_eq!(params["size"], 64);
        traceparents.push(lease.traceparent.clone());
        assert_eq!(worker.heartbeat(&lease, 3).await, pb::Verdict::Continue);
        let job = client.get_job(pb::GetJobRequest { job_id: lease.job_id.clone() }).await.unwrap().into_inner();
        assert_eq!(state(&job), pb::JobState::Running);
        assert_eq!(job.progress.as_ref().unwrap().iteration, 3, "heartbeat progress is visible");
        worker.complete(&lease).await.unwrap();
    }
    assert!(worker.lease(0).await.is_none(), "nothing left");
    // W3C traceparent: version-trace-span-flags, one trace per job
    for tp in &traceparents {
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!((parts.len(), parts[0], parts[1].len(), parts[2].len(), parts[3]), (4, "00", 32, 16, "01"), "{tp}");
    }
    assert_ne!(traceparents[0].split('-').nth(1), traceparents[1].split('-').nth(1));

    let mut kinds = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.expect("watch event in time").unwrap() {
        kinds.push(pb::EventKind::try_from(event.kind).unwrap());
    }
    assert_eq!(kinds.iter().filter(|k| **k == pb::EventKind::Snapshot).count(), 2, "{kinds:?}");
    for kind in [pb::EventKind::Started, pb::EventKind::Progress, pb::EventKind::Succeeded] {
        assert_eq!(kinds.iter().filter(|k| **k == kind).count(), 2, "{kind:?} in {kinds:?}");
    }
    assert_eq!(kinds.last(), Some(&pb::EventKind::BatchFinished));

    let (batch, jobs) = get_batch(&mut client, "b1").await;
    assert_eq!(pb::BatchState::try_from(batch.state).unwrap(), pb::BatchState::Succeeded);
    assert!(jobs.iter().all(|j| state(j) == pb::JobState::Succeeded && j.result.as_ref().unwrap().prefix.ends_with("/attempt-1/")));
    let workers = client.list_workers(pb::ListWorkersRequest {}).await.unwrap().into_inner().workers;
    assert_eq!((workers.len(), workers[0].succeeded, workers[0].connected), (1, 2, true));
    coordinator.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_lease_requeues_and_the_stale_attempt_is_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.lease_ttl_ms = 300;
    config.heartbeat_interval_ms = 100;
    let coordinator = Coordinator::start(config).await;
    let mut client = coordinator.client().await;
    client.submit_batch(batch_request("expiry", 1, 0)).await.unwrap();
    let mut slow = coordinator.worker("slow", 16 * GIB).await;
    let mut fast = coordinator.worker("fast", 16 * GIB).await;
    let first = slow.lease(0).await.unwrap();
    assert_eq!(first.attempt, 1);
    // slow stops heartbeating; the lease expires and the job goes back (with backoff)
    let second = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(lease) = fast.lease(500).await {
                return lease;
            }
        }
    })
    .await
    .expect("requeued after expiry");
    assert_eq!((second.job_id.as_str(), second.attempt), (first.job_id.as_str(), 2));
    assert!(second.output_prefix.ends_with("/attempt-2/"), "{}", second.output_prefix);
    // the first attempt comes back: every call of it is refused
    assert_eq!(slow.heartbeat(&first, 9).await, pb::Verdict::LeaseLost);
    let refused = slow.complete(&first).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("stale"), "{}", refused.message());
    assert_eq!(slow.fail(&first, "late", pb::AttemptStop::FailedRetryable).await.unwrap_err().code(), Code::FailedPrecondition);
    fast.complete(&second).await.unwrap();
    let job = client.get_job(pb::GetJobRequest { job_id: first.job_id.clone() }).await.unwrap().into_inner();
    assert_eq!(state(&job), pb::JobState::Succeeded);
    assert_eq!(job.attempt, 2);
    assert!(job.result.unwrap().prefix.ends_with("/attempt-2/"), "only the committed attempt's outputs are the result");
    assert!(job.error.contains("lease of attempt 1 expired"), "the first attempt's fate is kept: {}", job.error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_run_out_and_bad_input_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    let mut request = batch_request("retries", 2, 0);
    request.max_attempts = 2;
    client.submit_batch(request).await.unwrap();
    let mut worker = coordinator.worker("flaky", 16 * GIB).await;
    let a = worker.lease(0).await.unwrap();
    assert!(worker.fail(&a, "CUDA out of memory", pb::AttemptStop::FailedRetryable).await.unwrap(), "retryable: will retry");
    let b = worker.lease(0).await.unwrap();
    assert_ne!(b.job_id, a.job_id, "the failed job backs off; the next one goes first");
    assert!(!worker.fail(&b, "corrupt image: bad PNG signature", pb::AttemptStop::Failed).await.unwrap(), "bad input: no retry");
    let again = worker.lease(2000).await.expect("the first job after its backoff");
    assert_eq!((again.job_id.as_str(), again.attempt), (a.job_id.as_str(), 2));
    assert!(!worker.fail(&again, "CUDA out of memory", pb::AttemptStop::FailedRetryable).await.unwrap(), "attempts exhausted");
    let (batch, jobs) = get_batch(&mut client, "b1").await;
    assert_eq!(pb::BatchState::try_from(batch.state).unwrap(), pb::BatchState::Failed);
    let by_id = |id: &str| jobs.iter().find(|j| j.id == id).unwrap().clone();
    let exhausted = by_id(&a.job_id);
    assert_eq!(state(&exhausted), pb::JobState::Failed);
    assert!(exhausted.error.contains("gave up after 2 attempts") && exhausted.error.contains("out of memory"), "{}", exhausted.error);
    let bad = by_id(&b.job_id);
    assert_eq!((bad.attempt, bad.error_retryable), (1, false));
    assert!(bad.error.contains("corrupt image"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_keeps_failing_a_batch_stops_getting_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.worker_batch_failure_limit = 2;
    config.max_attempts = 5;
    let coordinator = Coordinator::start(config).await;
    let mut client = coordinator.client().await;
    client.submit_batch(batch_request("poisoned", 4, 0)).await.unwrap();
    let mut broken = coordinator.worker("broken", 16 * GIB).await;
    let mut healthy = coordinator.worker("healthy", 16 * GIB).await;
    for _ in 0..2 {
        let lease = broken.lease(0).await.unwrap();
        broken.fail(&lease, "driver error", pb::AttemptStop::FailedRetryable).await.unwrap();
    }
    assert!(broken.lease(300).await.is_none(), "blocked from this batch after 2 failures");
    let mut done = 0;
    while done < 4 {
        if let Some(lease) = healthy.lease(1000).await {
            healthy.complete(&lease).await.unwrap();
            done += 1;
        }
    }
    let (batch, _) = get_batch(&mut client, "b1").await;
    assert_eq!(pb::BatchState::try_from(batch.state).unwrap(), pb::BatchState::Succeeded);
    // another batch is still fine for the broken worker
    client.submit_batch(batch_request("other", 1, 0)).await.unwrap();
    assert!(broken.lease(0).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_queued_jobs_at_once_and_running_ones_at_their_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    client.submit_batch(batch_request("cancel-me", 3, 0)).await.unwrap();
    let mut worker = coordinator.worker("w", 16 * GIB).await;
    let running = worker.lease(0).await.unwrap();
    let response = client.cancel_batch(pb::CancelBatchRequest { batch_id: "b1".into() }).await.unwrap().into_inner();
    assert_eq!((response.cancelled_queued, response.signalled_running), (2, 1));
    assert!(worker.lease(0).await.is_none(), "cancelled jobs are not leased");
    assert_eq!(worker.heartbeat(&running, 5).await, pb::Verdict::Cancel);
    worker.fail(&running, "cancelled", pb::AttemptStop::Cancelled).await.unwrap();
    let (batch, jobs) = get_batch(&mut client, "b1").await;
    assert_eq!(pb::BatchState::try_from(batch.state).unwrap(), pb::BatchState::Cancelled);
    assert!(jobs.iter().all(|j| state(j) == pb::JobState::Cancelled), "{jobs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_first_then_fair_share_then_fifo_and_memory_fit() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    let a = client.submit_batch(batch_request("a", 3, 0)).await.unwrap().into_inner();
    let b = client.submit_batch(batch_request("b", 3, 0)).await.unwrap().into_inner();
    let urgent = client.submit_batch(batch_request("urgent", 2, 10)).await.unwrap().into_inner();
    let mut big = batch_request("big", 1, 100);
    big.jobs[0].settings = Some(pb::RenderSettings { size: Some(4096), iterations: Some(1), ..Default::default() });
    let big = client.submit_batch(big).await.unwrap().into_inner();
    let mut small_gpu = coordinator.worker("small", 4 * GIB).await;
    let mut order = Vec::new();
    while let Some(lease) = small_gpu.lease(0).await {
        order.push(lease.job_id);
    }
    let expected: Vec<String> = vec![
        urgent.job_ids[0].clone(),
        urgent.job_ids[1].clone(), // priority 10 first, FIFO
        a.job_ids[0].clone(),
        b.job_ids[0].clone(), // equal priority: alternate by running count
        a.job_ids[1].clone(),
        b.job_ids[1].clone(),
        a.job_ids[2].clone(),
        b.job_ids[2].clone(),
    ];
    assert_eq!(order, expected, "the 4096 px job does not fit 4 GiB and waits");
    let mut big_gpu = coordinator.worker("big", 80 * GIB).await;
    let lease = big_gpu.lease(0).await.expect("the big job fits 80 GiB");
    assert_eq!(lease.job_id, big.job_ids[0]);
    let job = client.get_job(pb::GetJobRequest { job_id: lease.job_id }).await.unwrap().into_inner();
    assert!(job.estimate_bytes > 4 * GIB && job.estimate_bytes < 80 * GIB, "{}", job.estimate_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_coordinator_resumes_every_batch() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    client.submit_batch(batch_request("persist", 3, 5)).await.unwrap();
    let mut request = batch_request("done-before", 1, 0);
    request.request_id = "req-42".into();
    client.submit_batch(request.clone()).await.unwrap();
    let mut worker = coordinator.worker("w", 16 * GIB).await;
    let first = worker.lease(0).await.unwrap();
    worker.complete(&first).await.unwrap();
    let running = worker.lease(0).await.unwrap();
    assert_eq!(worker.heartbeat(&running, 4).await, pb::Verdict::Continue);
    let (worker_id, worker_secret) = (worker.id.clone(), worker.secret.clone());
    coordinator.stop().await.unwrap();

    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    let (batch, jobs) = get_batch(&mut client, "b1").await;
    let c = batch.counts.unwrap();
    assert_eq!((c.total, c.succeeded, c.running, c.queued), (3, 1, 1, 1));
    assert_eq!(batch.priority, 5);
    assert_eq!(state(&jobs[0]), pb::JobState::Succeeded);
    // the same request id after the restart is still deduplicated
    let again = client.submit_batch(request).await.unwrap().into_inner();
    assert!(again.deduplicated && again.batch_id == "b2", "{again:?}");
    // the worker carries on with its running attempt on the new process
    let mut worker = stylefarm_coordinator_tests::farm::TestWorker {
        id: worker_id,
        secret: worker_secret,
        api: stylefarm_coordinator_tests::farm::options(&coordinator.url, None).worker(coordinator.channel().await).unwrap(),
        memory_bytes: 16 * GIB,
    };
    assert_eq!(worker.heartbeat(&running, 5).await, pb::Verdict::Continue);
    worker.complete(&running).await.unwrap();
    let mut leased = 0;
    while let Some(lease) = worker.lease(0).await {
        worker.complete(&lease).await.unwrap();
        leased += 1;
    }
    assert_eq!(leased, 2, "the queued job of b1 and the job of b2");
    let (batch, _) = get_batch(&mut client, "b1").await;
    assert_eq!(pb::BatchState::try_from(batch.state).unwrap(), pb::BatchState::Succeeded);
    let listed = client.list_batches(pb::ListBatchesRequest { page_size: 1, ..Default::default() }).await.unwrap().into_inner();
    assert_eq!((listed.batches[0].id.as_str(), listed.next_page_token.as_str()), ("b2", "b2"));
    let next = client.list_batches(pb::ListBatchesRequest { page_size: 1, page_token: "b2".into(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(next.batches[0].id, "b1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_name_the_field_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    let cases: Vec<(pb::SubmitBatchRequest, &str)> = vec![
        (pb::SubmitBatchRequest::default(), "`jobs`"),
        (
            {
                let mut r = batch_request("x", 1, 0);
                r.priority = 5000;
                r
            },
            "`priority`: 5000 is outside -1000..=1000",
        ),
        (
            {
                let mut r = batch_request("x", 1, 0);
                r.jobs[0].settings.as_mut().unwrap().size = Some(100_000);
                r
            },
            "`jobs[0].settings.size`: 100000 is outside the limits 16..=8192",
        ),
        (
            {
                let mut r = batch_request("x", 2, 0);
                r.jobs[1].styles.clear();
                r
            },
            "`jobs[1].styles`",
        ),
        (
            {
                let mut r = batch_request("x", 1, 0);
                r.jobs[0].content = Some(url_ref("ftp://h/a.png"));
                r
            },
            "`jobs[0].content.url`: scheme `ftp`",
        ),
        (
            {
                let mut r = batch_request("x", 1, 0);
                r.jobs[0].content = Some(pb::ImageRef { source: Some(pb::image_ref::Source::Sha256("ab".repeat(32))) });
                r
            },
            "has not been uploaded",
        ),
        (
            {
                let mut r = batch_request("x", 1, 0);
                r.jobs[0].settings.as_mut().unwrap().params_json = r#"{"style_scale": 99}"#.into();
                r
            },
            "`jobs[0].settings.style_scale`",
        ),
        (
            {
                let mut r = batch_request("x", 1, 0);
                r.max_attempts = 50;
                r
            },
            "`max_attempts`",
        ),
        (
            {
                let mut r = batch_request("x", 1, 0);
                r.labels.insert("bad key!".into(), "v".into());
                r
            },
            "labels[bad key!]",
        ),
    ];
    for (request, needle) in cases {
        let status = client.submit_batch(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{needle}: {status:?}");
        assert!(status.message().contains(needle), "expected {needle:?} in {:?}", status.message());
    }
    let status = client.get_batch(pb::GetBatchRequest { batch_id: "b404".into(), include_jobs: false }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client.get_job(pb::GetJobRequest { job_id: "b1".into() }).await.unwrap_err();
    assert!(status.code() == Code::InvalidArgument && status.message().contains("job_id"), "{status:?}");
    // uploads: not an image, a lying hash
    let upload = |data: Vec<u8>, sha: &str| {
        vec![
            pb::UploadImageRequest {
                part: Some(pb::upload_image_request::Part::Header(pb::UploadHeader {
                    filename: "x.png".into(),
                    size_bytes: data.len() as u64,
                    sha256: sha.into(),
                    video: false,
                })),
            },
            pb::UploadImageRequest { part: Some(pb::upload_image_request::Part::Chunk(data.into())) },
        ]
    };
    let status = client.upload_image(tokio_stream::iter(upload(b"not an image at all".to_vec(), ""))).await.unwrap_err();
    assert!(status.code() == Code::InvalidArgument && status.message().contains("x.png"), "{status:?}");
    let png = std::fs::read(stylefarm_coordinator_tests::sample("chelsea.png")).unwrap();
    let status = client.upload_image(tokio_stream::iter(upload(png.clone(), &"0".repeat(64)))).await.unwrap_err();
    assert!(status.message().contains("header.sha256"), "{status:?}");
    let first = client.upload_image(tokio_stream::iter(upload(png.clone(), ""))).await.unwrap().into_inner();
    assert_eq!((first.width, first.height, first.already_present), (451, 300, false));
    let second = client.upload_image(tokio_stream::iter(upload(png, ""))).await.unwrap().into_inner();
    assert!(second.already_present && second.sha256 == first.sha256);
    let stat = client.stat_images(pb::StatImagesRequest { sha256: vec![first.sha256.clone(), "cd".repeat(32)] }).await.unwrap().into_inner();
    assert_eq!(stat.missing, vec!["cd".repeat(32)]);
    assert!(dir.path().join("objects/images/sha256").join(&first.sha256).is_file(), "stored content-addressed under the data dir");
    // worker side
    let mut worker = coordinator.worker("w", GIB).await;
    let status = worker.api.lease_job(pb::LeaseJobRequest { worker_id: worker.id.clone(), wait_ms: 999_999, ..Default::default() }).await.unwrap_err();
    assert!(status.message().contains("wait_ms"), "{status:?}");
    let status = worker.api.lease_job(pb::LeaseJobRequest { worker_id: "w77".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    worker.memory_bytes = 0;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(coordinator.channel().await);
    for service in ["", "stylefarm.v1.Coordinator", "stylefarm.v1.WorkerApi"] {
        let response = health.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(response.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32, "{service}");
    }
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut reflection = ServerReflectionClient::new(coordinator.channel().await);
    let request = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let mut responses = reflection.server_reflection_info(tokio_stream::iter(vec![request])).await.unwrap().into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else { panic!("{response:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for wanted in ["stylefarm.v1.Coordinator", "stylefarm.v1.WorkerApi", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == wanted), "{wanted} in {names:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_wakes_when_work_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    let mut worker = coordinator.worker("waiter", 16 * GIB).await;
    let started = std::time::Instant::now();
    let waiting = tokio::spawn(async move { worker.lease(10_000).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.submit_batch(batch_request("late", 1, 0)).await.unwrap();
    let lease = waiting.await.unwrap().expect("woken by the submit");
    assert_eq!(lease.job_id, "j1");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(eventually(Duration::from_secs(2), || async { true }).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_pools_route_batches_by_labels_and_a_job_nobody_matches_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    let mut studio = coordinator.worker_labelled("studio", 16 * GIB, &[("pool", "studio-b"), ("vram", "80")]).await;
    let mut render = coordinator.worker_labelled("render", 16 * GIB, &[("pool", "render"), ("vram", "24")]).await;
    let pooled =
        client.submit_batch(pb::SubmitBatchRequest { requires: vec!["pool=studio-b".into()], ..batch_request("studio", 2, 0) }).await.unwrap().into_inner();
    let mut big = batch_request("big", 1, 0);
    big.jobs[0].requires = vec!["vram>=48".into()];
    let big = client.submit_batch(big).await.unwrap().into_inner();
    let lost = client.submit_batch(pb::SubmitBatchRequest { requires: vec!["pool=gone".into()], ..batch_request("lost", 1, 0) }).await.unwrap().into_inner();
    // the render pool gets none of it; the studio worker gets all it matches
    assert!(render.lease(0).await.is_none(), "nothing here is for the render pool");
    let mut leased = Vec::new();
    while let Some(lease) = studio.lease(0).await {
        leased.push(lease.job_id.clone());
        studio.complete(&lease).await.unwrap();
    }
    leased.sort();
    let mut expected: Vec<String> = pooled.job_ids.iter().chain(&big.job_ids).cloned().collect();
    expected.sort();
    assert_eq!(leased, expected);
    // the batch, its jobs and the workers say what they require and carry
    let (batch, jobs) = get_batch(&mut client, &pooled.batch_id).await;
    assert_eq!(batch.requires, ["pool=studio-b"]);
    assert!(jobs.iter().all(|j| j.requires == ["pool=studio-b"]));
    let (_, jobs) = get_batch(&mut client, &big.batch_id).await;
    assert_eq!(jobs[0].requires, ["vram>=48"]);
    let workers = client.list_workers(pb::ListWorkersRequest {}).await.unwrap().into_inner().workers;
    let studio_record = workers.iter().find(|w| w.id == studio.id).unwrap();
    assert_eq!(studio_record.labels.get("pool").map(String::as_str), Some("studio-b"));
    // the job nobody matches says why while both workers keep asking
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert!(studio.lease(0).await.is_none() && render.lease(0).await.is_none());
        let job = client.get_job(pb::GetJobRequest { job_id: lost.job_ids[0].clone() }).await.unwrap().into_inner();
        if job.waiting_reason.contains("pool=gone") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the unmatched job names the labels it needs: {job:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // bad requirements and labels name their field and change nothing
    let e = client.submit_batch(pb::SubmitBatchRequest { requires: vec!["vram>=lots".into()], ..batch_request("bad", 1, 0) }).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("requires[0]") && e.message().contains("numbers"), "{e:?}");
    let mut bad = batch_request("bad", 2, 0);
    bad.jobs[1].requires = vec!["Pool=x".into()];
    let e = client.submit_batch(bad).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("jobs[1].requires[0]"), "{e:?}");
    let api = stylefarm_coordinator_tests::farm::options("http://unused", None).worker(coordinator.channel().await).unwrap();
    let e = stylefarm_coordinator_tests::farm::TestWorker::register_profile(api, "bad", "cpu", GIB, None, &[("Pool", "x")]).await.err().unwrap();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("labels"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_fractions_from_heartbeats_reach_list_workers_and_the_workers_page() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.http_listen = Some("127.0.0.1:0".parse().unwrap());
    let coordinator = Coordinator::start(config).await;
    let mut worker = coordinator.worker("w-busy", 16 * GIB).await;
    let busy = |device: &str, fraction: f64| pb::DeviceBusy { device: device.into(), fraction, window_s: 60 };
    worker.report_busy(vec![busy("cpu", 0.987)]).await.unwrap();
    let mut client = coordinator.client().await;
    let workers = client.list_workers(pb::ListWorkersRequest::default()).await.unwrap().into_inner().workers;
    assert_eq!(workers[0].busy, vec![busy("cpu", 0.987)]);
    let rows = stylefarm_coordinator_tests::farm::http_get(&format!("{}/fragments/workers", coordinator.web_url.as_deref().unwrap())).await;
    assert!(rows.contains(r#"data-fraction="0.9870""#) && rows.contains("98.7 %"), "{rows}");
    // checked at the edge, naming the field; the last good reading stays
    for (bad, field) in [(busy("cpu", 1.5), "busy[0].fraction"), (busy("cpu", f64::NAN), "busy[0].fraction"), (busy("cuda:3", 0.5), "busy[0].device")] {
        let refused = worker.report_busy(vec![bad]).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(refused.message().contains(field), "{}", refused.message());
    }
    let many = worker.report_busy((0..65).map(|_| busy("cpu", 0.5)).collect()).await.unwrap_err();
    assert!(many.message().contains("limit is 64"), "{}", many.message());
    let workers = client.list_workers(pb::ListWorkersRequest::default()).await.unwrap().into_inner().workers;
    assert_eq!(workers[0].busy[0].fraction, 0.987);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_stream_down_in_pieces_of_a_mebibyte() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    let submitted = client.submit_batch(batch_request("big", 1, 0)).await.unwrap().into_inner();
    let mut worker = coordinator.worker("w", 16 * GIB).await;
    let lease = worker.lease(0).await.unwrap();
    // a 2.5 MiB output and an empty one, written to the store (file:// under the data dir) as a worker would
    let prefix = lease.output_prefix.split_once("/batches/").map(|(_, rest)| format!("batches/{rest}")).unwrap();
    let big: Vec<u8> = (0..(5usize << 19)).map(|i| (i % 253) as u8).collect();
    let objects = dir.path().join("objects").join(&prefix);
    std::fs::create_dir_all(&objects).unwrap();
    std::fs::write(objects.join("output.png"), &big).unwrap();
    std::fs::write(objects.join("trace.jsonl"), b"").unwrap();
    let file = |name: &str, size: usize, kind: &str| pb::OutputFile { key: format!("{prefix}{name}"), size_bytes: size as u64, kind: kind.into() };
    let result = pb::JobResult {
        prefix: prefix.clone(),
        outputs: vec![file("output.png", big.len(), "image"), file("trace.jsonl", 0, "trace")],
        final_loss: 1.0,
        iterations: 1,
        engine_ms: 1.0,
        device: "cpu".into(),
        spans: vec![],
    };
    let request = pb::CompleteJobRequest {
        worker_id: worker.id.clone(),
        job_id: lease.job_id.clone(),
        attempt: lease.attempt,
        result: Some(result),
        lease_secret: lease.lease_secret.clone(),
    };
    worker.api.complete_job(request).await.unwrap();
    let mut stream = client.download_outputs(pb::DownloadOutputsRequest { job_id: submitted.job_ids[0].clone() }).await.unwrap().into_inner();
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        chunks.push(chunk);
    }
    let shape: Vec<(&str, u64, usize, bool)> = chunks.iter().map(|c| (c.name.as_str(), c.offset, c.data.len(), c.last)).collect();
    let mib = 1usize << 20;
    assert_eq!(
        shape,
        [("output.png", 0, mib, false), ("output.png", mib as u64, mib, false), ("output.png", 2 * mib as u64, mib / 2, true), ("trace.jsonl", 0, 0, true)]
    );
    let joined: Vec<u8> = chunks.iter().filter(|c| c.name == "output.png").flat_map(|c| c.data.iter().copied()).collect();
    assert_eq!(joined, big);
}
