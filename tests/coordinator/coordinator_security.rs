//! The trust boundary against the real server on port 0: every RPC × {no
//! token, wrong role, revoked token, another submitter's batch, valid}; TLS and
//! mutual TLS with certificates made here; a hostile client; random
//! well-formed messages; and a coordinator that loads its state after all of it.

use std::time::Duration;

use stylefarm_coordinator::auth::{Role, TokenStore};
use stylefarm_coordinator::quota::QuotaFields;
use stylefarm_coordinator_tests::farm::{batch_request, get_batch, options, test_config, url_ref, Client, Coordinator, TestWorker, WorkerClient};
use stylefarm_coordinator_tests::tls::certificates;
use stylefarm_proto as pb;
use tonic::Code;

fn code<T>(r: Result<T, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

fn tiny_png() -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(4, 4, image::Rgb([9, 8, 7])).write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

async fn upload(client: &mut Client, data: Vec<u8>) -> Result<String, tonic::Status> {
    stylefarm_coordinator_tests::farm::upload_bytes(client, "t.png", data).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rpc {
    Submit,
    GetBatch,
    ListBatches,
    Watch,
    Cancel,
    CancelJob,
    Priority,
    Pause,
    Resume,
    Retry,
    Unblock,
    Delete,
    ControlWorker,
    ForgetWorker,
    GetJob,
    Upload,
    StatImages,
    ListWorkers,
    Download,
    Register,
    Lease,
    Heartbeat,
    Complete,
    Fail,
}

const CLIENT_RPCS: [Rpc; 19] = [
    Rpc::Submit,
    Rpc::GetBatch,
    Rpc::ListBatches,
    Rpc::Watch,
    Rpc::Cancel,
    Rpc::CancelJob,
    Rpc::Priority,
    Rpc::Pause,
    Rpc::Resume,
    Rpc::Retry,
    Rpc::Unblock,
    Rpc::Delete,
    Rpc::ControlWorker,
    Rpc::ForgetWorker,
    Rpc::GetJob,
    Rpc::Upload,
    Rpc::StatImages,
    Rpc::ListWorkers,
    Rpc::Download,
];
const WORKER_RPCS: [Rpc; 5] = [Rpc::Register, Rpc::Lease, Rpc::Heartbeat, Rpc::Complete, Rpc::Fail];

/// Ids the calls name: alice's batches and jobs, a real worker and lease.
struct Fixture {
    batch: String,
    cancel_batch: String,
    /// A queued job of alice's for CancelJob, and a batch of hers for SetBatchPriority.
    cancel_job: String,
    priority_batch: String,
    /// A queued batch of alice's for DeleteBatch (deleting it again is harmless).
    delete_batch: String,
    job: String,
    done_job: String,
    worker: TestWorker,
    lease: pb::Lease,
    fail_lease: pb::Lease,
}

async fn call(rpc: Rpc, client: &mut Client, api: &mut WorkerClient, f: &Fixture) -> Code {
    match rpc {
        Rpc::Submit => code(client.submit_batch(batch_request("m", 1, 0)).await),
        Rpc::GetBatch => code(client.get_batch(pb::GetBatchRequest { batch_id: f.batch.clone(), include_jobs: true }).await),
        Rpc::ListBatches => code(client.list_batches(pb::ListBatchesRequest::default()).await),
        Rpc::Watch => code(client.watch_batch(pb::WatchBatchRequest { batch_id: f.batch.clone() }).await),
        Rpc::Cancel => code(client.cancel_batch(pb::CancelBatchRequest { batch_id: f.cancel_batch.clone() }).await),
        Rpc::CancelJob => code(client.cancel_job(pb::CancelJobRequest { job_id: f.cancel_job.clone() }).await),
        Rpc::Priority => code(client.set_batch_priority(pb::SetBatchPriorityRequest { batch_id: f.priority_batch.clone(), priority: -10 }).await),
        Rpc::Pause => code(client.pause_batch(pb::PauseBatchRequest { batch_id: f.priority_batch.clone(), mode: pb::PauseMode::FinishRunning as i32 }).await),
        Rpc::Resume => code(client.resume_batch(pb::ResumeBatchRequest { batch_id: f.priority_batch.clone() }).await),
        Rpc::Retry => code(client.retry(pb::RetryRequest { batch_id: f.priority_batch.clone(), job_id: String::new() }).await),
        Rpc::Unblock => code(client.unblock_worker(pb::UnblockWorkerRequest { worker_id: f.worker.id.clone(), batch_id: f.priority_batch.clone() }).await),
        Rpc::Delete => code(client.delete_batch(pb::DeleteBatchRequest { batch_id: f.delete_batch.clone(), mode: pb::DeleteMode::IfIdle as i32 }).await),
        Rpc::ControlWorker => {
            code(client.control_worker(pb::ControlWorkerRequest { worker_id: f.worker.id.clone(), action: pb::WorkerAction::Enable as i32 }).await)
        }
        // the fixture's worker is connected: an allowed caller is refused by its state, not its rights
        Rpc::ForgetWorker => match client.forget_worker(pb::ForgetWorkerRequest { worker_id: f.worker.id.clone() }).await {
            Err(status) if status.code() == Code::FailedPrecondition => Code::Ok,
            other => code(other),
        },
        Rpc::GetJob => code(client.get_job(pb::GetJobRequest { job_id: f.job.clone() }).await),
        Rpc::Upload => code(upload(client, tiny_png()).await),
        Rpc::StatImages => code(client.stat_images(pb::StatImagesRequest { sha256: vec!["ab".repeat(32)] }).await),
        Rpc::ListWorkers => code(client.list_workers(pb::ListWorkersRequest {}).await),
        Rpc::Download => code(client.download_outputs(pb::DownloadOutputsRequest { job_id: f.done_job.clone() }).await),
        Rpc::Register => code(
            api.register_worker(pb::RegisterWorkerRequest {
                name: "m".into(),
                devices: vec![pb::Device { name: "cpu".into(), memory_bytes: 1 << 30, description: String::new() }],
                ..Default::default()
            })
            .await,
        ),
        Rpc::Lease => code(api.lease_job(pb::LeaseJobRequest { worker_id: f.worker.id.clone(), wait_ms: 0, ..Default::default() }).await),
        Rpc::Heartbeat => code(
            api.heartbeat(pb::HeartbeatRequest {
                worker_id: f.worker.id.clone(),
                jobs: vec![pb::JobHeartbeat {
                    job_id: f.lease.job_id.clone(),
                    attempt: f.lease.attempt,
                    progress: None,
                    lease_secret: f.lease.lease_secret.clone(),
                }],
                memory: Vec::new(),
                busy: Vec::new(),
            })
            .await,
        ),
        Rpc::Complete => code(
            api.complete_job(pb::CompleteJobRequest {
                worker_id: f.worker.id.clone(),
                job_id: f.lease.job_id.clone(),
                attempt: f.lease.attempt,
                result: None,
                lease_secret: f.lease.lease_secret.clone(),
            })
            .await,
        ),
        Rpc::Fail => code(
            api.fail_job(pb::FailJobRequest {
                worker_id: f.worker.id.clone(),
                job_id: f.fail_lease.job_id.clone(),
                attempt: f.fail_lease.attempt,
                reason: "x".into(),
                stop: pb::AttemptStop::Failed as i32,
                lease_secret: f.fail_lease.lease_secret.clone(),
                ..Default::default()
            })
            .await,
        ),
    }
}

#[tokio::test]
async fn every_rpc_refuses_the_wrong_callers_and_serves_the_right_ones() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenStore::open(dir.path()).unwrap();
    let alice = tokens.create("alice", Role::Submit).unwrap();
    let bob = tokens.create("bob", Role::Submit).unwrap();
    let admin = tokens.create("root", Role::Admin).unwrap();
    let gpu = tokens.create("gpu-07", Role::Worker).unwrap();
    let gone = tokens.create("old", Role::Submit).unwrap();
    let gone_worker = tokens.create("old-gpu", Role::Worker).unwrap();
    tokens.revoke("old").unwrap();
    tokens.revoke("old-gpu").unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut a = coordinator.client_with(Some(&alice)).await;
    let batch = a.submit_batch(batch_request("a", 3, 0)).await.unwrap().into_inner();
    let cancel_batch = a.submit_batch(batch_request("c", 1, -5)).await.unwrap().into_inner().batch_id;
    let priority_batch = a.submit_batch(batch_request("p", 1, -10)).await.unwrap().into_inner().batch_id;
    let cancel_job = a.submit_batch(batch_request("j", 1, -20)).await.unwrap().into_inner().job_ids[0].clone();
    let delete_batch = a.submit_batch(batch_request("d", 1, -30)).await.unwrap().into_inner().batch_id;
    let mut worker = coordinator.worker_with("w", 1 << 30, Some(&gpu)).await.unwrap();
    let done = worker.lease(0).await.unwrap();
    worker.complete(&done).await.unwrap();
    let lease = worker.lease(0).await.unwrap();
    let fail_lease = worker.lease(0).await.unwrap();
    let fixture = Fixture {
        batch: batch.batch_id.clone(),
        cancel_batch,
        cancel_job,
        priority_batch,
        delete_batch,
        job: batch.job_ids[2].clone(),
        done_job: done.job_id.clone(),
        worker,
        lease,
        fail_lease,
    };

    let client = |t: Option<&str>| {
        let t = t.map(str::to_string);
        let c = &coordinator;
        async move { c.client_with(t.as_deref()).await }
    };
    let worker_api =
        |t: Option<&str>| options(&coordinator.url, t).worker(tonic::transport::Channel::from_shared(coordinator.url.clone()).unwrap().connect_lazy()).unwrap();

    // no token, a revoked token: UNAUTHENTICATED everywhere
    for token in [None, Some(gone.as_str()), Some(gone_worker.as_str()), Some("sf1_0000000000000000_ffff")] {
        let (mut c, mut w) = (client(token).await, worker_api(token));
        for rpc in CLIENT_RPCS.iter().chain(WORKER_RPCS.iter()) {
            assert_eq!(call(*rpc, &mut c, &mut w, &fixture).await, Code::Unauthenticated, "{rpc:?} with {token:?}");
        }
    }
    // the wrong role: PERMISSION_DENIED
    let (mut as_worker, mut as_submitter) = (client(Some(&gpu)).await, worker_api(Some(&alice)));
    for rpc in CLIENT_RPCS {
        assert_eq!(call(rpc, &mut as_worker, &mut worker_api(Some(&gpu)), &fixture).await, Code::PermissionDenied, "{rpc:?} as a worker");
    }
    for rpc in WORKER_RPCS {
        assert_eq!(call(rpc, &mut a, &mut as_submitter, &fixture).await, Code::PermissionDenied, "{rpc:?} as a submitter");
    }
    for rpc in [Rpc::ListWorkers, Rpc::Unblock, Rpc::ControlWorker, Rpc::ForgetWorker] {
        assert_eq!(call(rpc, &mut a, &mut as_submitter, &fixture).await, Code::PermissionDenied, "{rpc:?}: workers are the admin's");
    }
    // another submitter's batch and jobs: NOT_FOUND, and not listed
    let mut b = client(Some(&bob)).await;
    for rpc in
        [Rpc::GetBatch, Rpc::Watch, Rpc::Cancel, Rpc::CancelJob, Rpc::Priority, Rpc::Pause, Rpc::Resume, Rpc::Retry, Rpc::Delete, Rpc::GetJob, Rpc::Download]
    {
        assert_eq!(call(rpc, &mut b, &mut as_submitter, &fixture).await, Code::NotFound, "{rpc:?} by bob on alice's");
    }
    let listed = b.list_batches(pb::ListBatchesRequest::default()).await.unwrap().into_inner().batches;
    assert!(listed.is_empty(), "bob sees none of alice's batches: {listed:?}");
    // another worker principal may not act as gpu-07's worker
    let other_worker = tokens.create("gpu-08", Role::Worker).unwrap();
    let mut w8 = worker_api(Some(&other_worker));
    for rpc in [Rpc::Lease, Rpc::Heartbeat, Rpc::Complete, Rpc::Fail] {
        assert_eq!(call(rpc, &mut a, &mut w8, &fixture).await, Code::PermissionDenied, "{rpc:?} as another worker principal");
    }
    // valid callers
    let mut gw = worker_api(Some(&gpu));
    for rpc in CLIENT_RPCS.iter().filter(|r| !matches!(r, Rpc::ListWorkers | Rpc::Unblock | Rpc::ControlWorker | Rpc::ForgetWorker)) {
        assert_eq!(call(*rpc, &mut a, &mut gw, &fixture).await, Code::Ok, "{rpc:?} by alice");
    }
    for rpc in WORKER_RPCS {
        assert_eq!(call(rpc, &mut a, &mut gw, &fixture).await, Code::Ok, "{rpc:?} by gpu-07");
    }
    let mut root = client(Some(&admin)).await;
    for rpc in [
        Rpc::ListWorkers,
        Rpc::GetBatch,
        Rpc::GetJob,
        Rpc::ListBatches,
        Rpc::CancelJob,
        Rpc::Priority,
        Rpc::Pause,
        Rpc::Resume,
        Rpc::Retry,
        Rpc::Unblock,
        Rpc::Delete,
        Rpc::ControlWorker,
        Rpc::ForgetWorker,
    ] {
        assert_eq!(call(rpc, &mut root, &mut gw, &fixture).await, Code::Ok, "{rpc:?} by the admin");
    }
    let mine = a.list_batches(pb::ListBatchesRequest::default()).await.unwrap().into_inner().batches;
    assert!(mine.len() >= 3 && mine.iter().all(|b| b.owner == "alice"), "{mine:?}");
    // revocation takes effect at once, without a restart
    tokens.revoke("alice").unwrap();
    assert_eq!(call(Rpc::GetBatch, &mut a, &mut gw, &fixture).await, Code::Unauthenticated);
    coordinator.stop().await.unwrap();
}

#[tokio::test]
async fn tls_and_mutual_tls_for_workers() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key, client_cert, client_key) = certificates(dir.path());
    let mut config = test_config(&dir.path().join("data"));
    config.tls_cert = Some(cert);
    config.tls_key = Some(key);
    config.tls_client_ca = Some(ca.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://localhost:{}", listener.local_addr().unwrap().port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(stylefarm_coordinator::run(listener, config, async move {
        let _ = stopped.await;
    }));
    let tls = |identity: Option<(std::path::PathBuf, std::path::PathBuf)>| stylefarm_proto::connect::ConnectOptions {
        url: url.clone(),
        token: None,
        tls_ca: Some(ca.clone()),
        tls_identity: identity,
    };
    let mut connected = None;
    for _ in 0..100 {
        if let Ok(c) = tls(None).endpoint().unwrap().connect().await {
            connected = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let channel = connected.expect("a TLS client connects with the CA");
    // a client without a certificate may submit (mTLS is for workers)
    let mut client = tls(None).coordinator(channel.clone()).unwrap();
    client.submit_batch(batch_request("tls", 1, 0)).await.expect("submit over TLS");
    // a worker without a client certificate is refused
    let mut bare = tls(None).worker(channel).unwrap();
    let e = bare.register_worker(pb::RegisterWorkerRequest { name: "x".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("client certificate"), "{e:?}");
    // with one, it works
    let with_cert = tls(Some((client_cert, client_key)));
    let channel = with_cert.endpoint().unwrap().connect().await.expect("mutual TLS handshake");
    let worker = TestWorker::try_register(with_cert.worker(channel).unwrap(), "mtls", 1 << 30, None).await.expect("registered under mTLS");
    assert!(worker.id.starts_with('w'));
    // a client that does not trust the CA gets nothing
    let untrusted = stylefarm_proto::connect::ConnectOptions { url: url.clone(), ..Default::default() };
    let refused = match untrusted.endpoint().unwrap().connect().await {
        Err(_) => true,
        Ok(c) => untrusted.coordinator(c).unwrap().list_batches(pb::ListBatchesRequest::default()).await.is_err(),
    };
    assert!(refused, "a client that does not trust the CA gets nothing");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_public_address_without_tls_and_auth_is_refused_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let e = stylefarm_coordinator::run(listener, test_config(dir.path()), async {}).await.unwrap_err().to_string();
    assert!(e.contains("refusing to serve") && e.contains("TLS") && e.contains("--insecure"), "{e}");
    let mut config = test_config(dir.path());
    config.insecure = true;
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    stylefarm_coordinator::run(listener, config, async {}).await.expect("--insecure serves");
}

async fn healthy(coordinator: &Coordinator) -> bool {
    let mut health = tonic_health::pb::health_client::HealthClient::new(coordinator.channel().await);
    let r = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    r.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
}

#[tokio::test]
async fn a_hostile_client_changes_nothing_it_may_not() {
    let dir = tempfile::tempdir().unwrap();
    // a lease that outlives the 10,000 watches below on a loaded machine
    let config = stylefarm_coordinator::CoordinatorConfig { lease_ttl_ms: 120_000, ..test_config(dir.path()) };
    let coordinator = Coordinator::start(config.clone()).await;
    let mut client = coordinator.client().await;
    let batch = client.submit_batch(batch_request("victim", 2, 0)).await.unwrap().into_inner();
    let mut honest = coordinator.worker("honest", 1 << 30).await;
    let lease = honest.lease(0).await.unwrap();
    // GetJob shows the worker and attempt, never the lease secret
    let job = client.get_job(pb::GetJobRequest { job_id: lease.job_id.clone() }).await.unwrap().into_inner();
    assert!(!format!("{job:?}").contains(&lease.lease_secret));
    let mut mallory = coordinator.worker("mallory", 1 << 30).await;
    // forge a completion and a failure of the honest worker's job, as itself and as the honest worker
    for worker_id in [mallory.id.clone(), honest.id.clone()] {
        let forged = pb::CompleteJobRequest {
            worker_id: worker_id.clone(),
            job_id: lease.job_id.clone(),
            attempt: lease.attempt,
            result: None,
            lease_secret: "0".repeat(32),
        };
        let c = mallory.api.complete_job(forged).await.unwrap_err().code();
        assert!(matches!(c, Code::FailedPrecondition | Code::PermissionDenied), "{c:?}");
        let fail = pb::FailJobRequest {
            worker_id,
            job_id: lease.job_id.clone(),
            attempt: lease.attempt,
            reason: "x".into(),
            stop: pb::AttemptStop::Failed as i32,
            lease_secret: String::new(),
            ..Default::default()
        };
        let c = mallory.api.fail_job(fail).await.unwrap_err().code();
        assert!(matches!(c, Code::FailedPrecondition | Code::PermissionDenied), "{c:?}");
    }
    // take over the honest worker's id without its secret
    let takeover = TestWorker::try_register(mallory.api.clone(), "evil", 1 << 30, Some((&honest.id, "guess"))).await;
    assert_eq!(takeover.err().map(|s| s.code()), Some(Code::PermissionDenied));
    // with its secret, the honest worker re-registers as itself
    let again = TestWorker::try_register(honest.api.clone(), "honest", 1 << 30, Some((&honest.id, &honest.secret))).await.unwrap();
    assert_eq!(again.id, honest.id);
    // inputs a worker would read on the user's behalf
    for url in ["file:///etc/passwd", "http://169.254.169.254/latest/meta-data", "https://example.com/x.png", "s3://other-bucket/x.png"] {
        let mut r = batch_request("ssrf", 1, 0);
        r.jobs[0].content = Some(url_ref(url));
        let e = client.submit_batch(r).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{url}");
        assert!(e.message().contains("jobs[0].content.url"), "{}", e.message());
    }
    // non-finite and negative numbers
    for (loss, ms) in [(f64::NAN, 1.0), (f64::INFINITY, 1.0), (-5.0, 1.0), (1.0, f64::NEG_INFINITY)] {
        let result = pb::JobResult { final_loss: loss, engine_ms: ms, ..Default::default() };
        let r = pb::CompleteJobRequest {
            worker_id: honest.id.clone(),
            job_id: lease.job_id.clone(),
            attempt: lease.attempt,
            result: Some(result),
            lease_secret: lease.lease_secret.clone(),
        };
        let e = honest.api.complete_job(r).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{loss} {ms}: {e:?}");
    }
    let row = pb::LossRow { total: f64::NAN, ..Default::default() };
    let beat = pb::HeartbeatRequest {
        worker_id: honest.id.clone(),
        jobs: vec![pb::JobHeartbeat {
            job_id: lease.job_id.clone(),
            attempt: lease.attempt,
            lease_secret: lease.lease_secret.clone(),
            progress: Some(pb::JobProgress { rows: vec![row], ..Default::default() }),
        }],
        memory: Vec::new(),
        busy: Vec::new(),
    };
    assert_eq!(honest.api.heartbeat(beat).await.unwrap_err().code(), Code::InvalidArgument);
    let mut r = batch_request("snap", 1, 0);
    r.jobs[0].settings = Some(pb::RenderSettings { iterations: Some(100_000), snapshot_every: Some(1), ..Default::default() });
    assert!(client.submit_batch(r).await.unwrap_err().message().contains("snapshot_every"));
    // an oversized message
    let mut huge = batch_request("huge", 1, 0);
    huge.name = "x".repeat(65 << 20);
    assert!(client.submit_batch(huge).await.is_err());
    // 10,000 watches of made-up ids: NOT_FOUND, nothing kept
    for i in 0..10_000 {
        let e = client.watch_batch(pb::WatchBatchRequest { batch_id: format!("b{}", 1_000_000 + i) }).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
    }
    // the honest work goes on, and the real result is the honest one
    honest.complete(&lease).await.unwrap();
    let job = client.get_job(pb::GetJobRequest { job_id: lease.job_id.clone() }).await.unwrap().into_inner();
    assert_eq!((job.state, job.worker_id.as_str()), (pb::JobState::Succeeded as i32, honest.id.as_str()));
    assert!(healthy(&coordinator).await);
    coordinator.stop().await.unwrap();
    let coordinator = Coordinator::start(config).await;
    assert!(healthy(&coordinator).await, "healthy after a restart");
    let mut client = coordinator.client().await;
    let (b, _) = stylefarm_coordinator_tests::farm::get_batch(&mut client, &batch.batch_id).await;
    assert_eq!(b.counts.unwrap().succeeded, 1);
    coordinator.stop().await.unwrap();
}

#[tokio::test]
async fn one_unreadable_row_never_stops_the_state_from_loading() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    let batch = client.submit_batch(batch_request("rows", 3, 0)).await.unwrap().into_inner();
    coordinator.stop().await.unwrap();
    // what an older build wrote for a NaN loss, and plain garbage
    let db = rusqlite::Connection::open(dir.path().join("state.sqlite")).unwrap();
    let nan_result =
        r#"{"state":"succeeded","worker":1,"outputs":{"prefix":"p/","files":[],"final_loss":null,"iterations":1,"engine_ms":null,"device":"cpu"}}"#;
    db.execute("UPDATE jobs SET state = ?1 WHERE id = ?2", rusqlite::params![nan_result, batch.job_ids[0].trim_start_matches('j').parse::<i64>().unwrap()])
        .unwrap();
    db.execute(
        "UPDATE jobs SET state = 'garbage', styles = '[{' WHERE id = ?1",
        rusqlite::params![batch.job_ids[1].trim_start_matches('j').parse::<i64>().unwrap()],
    )
    .unwrap();
    db.execute("UPDATE workers SET devices = 'nope'", []).unwrap();
    drop(db);
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    assert!(healthy(&coordinator).await);
    let mut client = coordinator.client().await;
    let (_, jobs) = stylefarm_coordinator_tests::farm::get_batch(&mut client, &batch.batch_id).await;
    assert_eq!(jobs[0].state, pb::JobState::Succeeded as i32);
    assert!(jobs[0].result.as_ref().unwrap().final_loss.is_nan());
    assert_eq!(jobs[1].state, pb::JobState::Failed as i32);
    assert!(jobs[1].error.contains("unreadable"), "{}", jobs[1].error);
    assert_eq!(jobs[2].state, pb::JobState::Queued as i32, "the good row is untouched");
    coordinator.stop().await.unwrap();
}

#[tokio::test]
async fn blocklist_counters_and_start_times_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.max_attempts = 10;
    let coordinator = Coordinator::start(config.clone()).await;
    let mut client = coordinator.client().await;
    let batch = client.submit_batch(batch_request("bl", 5, 0)).await.unwrap().into_inner();
    let mut w = coordinator.worker("flaky", 1 << 30).await;
    for _ in 0..3 {
        let lease = w.lease(0).await.unwrap();
        w.fail(&lease, "CUDA error", pb::AttemptStop::FailedRetryable).await.unwrap();
    }
    let started = stylefarm_coordinator_tests::farm::get_batch(&mut client, &batch.batch_id).await.0.started_at_ms;
    assert!(started > 0);
    coordinator.stop().await.unwrap();
    let coordinator = Coordinator::start(config).await;
    let mut client = coordinator.client().await;
    assert_eq!(stylefarm_coordinator_tests::farm::get_batch(&mut client, &batch.batch_id).await.0.started_at_ms, started);
    let workers = client.list_workers(pb::ListWorkersRequest {}).await.unwrap().into_inner().workers;
    assert_eq!(workers.iter().find(|x| x.id == w.id).unwrap().failed, 3);
    // re-registered with its secret: still blocked from the batch it failed 3 times
    let mut again =
        TestWorker::try_register(options(&coordinator.url, None).worker(coordinator.channel().await).unwrap(), "flaky", 1 << 30, Some((&w.id, &w.secret)))
            .await
            .unwrap();
    assert_eq!(again.id, w.id);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(again.lease(200).await.is_none(), "the blocklist survived the restart");
    coordinator.stop().await.unwrap();
}

#[tokio::test]
async fn random_well_formed_messages_break_nothing() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    let mut w = coordinator.worker("fuzz", 1 << 30).await;
    client.submit_batch(batch_request("seed", 5, 0)).await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let floats = [0.0, -1.0, 1e308, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, f64::MIN_POSITIVE, 3.5];
    let texts = ["", "b1", "j1", "w1", "b-1", "j999999999999", "w0", "\u{0}\u{7}", "file:///etc/passwd", "sf1_x_y", "💥"];
    let pick = |rng: &mut rand::rngs::StdRng, t: &[&str]| t[rng.random_range(0..t.len())].to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    let mut calls = 0;
    while tokio::time::Instant::now() < deadline {
        calls += 1;
        let f = floats[rng.random_range(0..floats.len())];
        let s = pick(&mut rng, &texts);
        let n: u32 = rng.random_range(0..u32::MAX);
        let _ = match rng.random_range(0..20) {
            0 => {
                let mut r = batch_request(&s, rng.random_range(0..3), rng.random_range(-5000..5000));
                if let Some(j) = r.jobs.first_mut() {
                    j.settings = Some(pb::RenderSettings {
                        size: Some(n % 20_000),
                        iterations: Some(n % 300_000),
                        content_weight: Some(f),
                        style_weight: Some(-f),
                        snapshot_every: Some(n % 7),
                        scales: Some(n % 9),
                        params_json: pick(&mut rng, &["", "{}", "[]", "{\"seed\": -1}", "{\"size\": 1e99}"]),
                        ..Default::default()
                    });
                }
                r.max_attempts = n % 40;
                r.request_id = s.clone();
                r.job_time_limit_s = n;
                client.submit_batch(r).await.map(|_| ())
            }
            1 => client.get_batch(pb::GetBatchRequest { batch_id: s, include_jobs: n.is_multiple_of(2) }).await.map(|_| ()),
            2 => client.list_batches(pb::ListBatchesRequest { page_size: n % 3000, page_token: s, states: vec![(n % 9) as i32] }).await.map(|_| ()),
            3 => client.cancel_batch(pb::CancelBatchRequest { batch_id: s }).await.map(|_| ()),
            4 => client.get_job(pb::GetJobRequest { job_id: s }).await.map(|_| ()),
            5 => client.stat_images(pb::StatImagesRequest { sha256: vec![s; (n % 5) as usize] }).await.map(|_| ()),
            6 => w
                .api
                .lease_job(pb::LeaseJobRequest {
                    worker_id: w.id.clone(),
                    device: s,
                    device_memory_bytes: n as u64,
                    wait_ms: [0, 20, 40_000][(n % 3) as usize],
                })
                .await
                .map(|_| ()),
            7 => w
                .api
                .heartbeat(pb::HeartbeatRequest {
                    worker_id: pick(&mut rng, &[&w.id, "w1", "x"]),
                    jobs: vec![pb::JobHeartbeat {
                        job_id: pick(&mut rng, &["j1", "j2", "j3", "jx"]),
                        attempt: n % 4,
                        lease_secret: s,
                        progress: Some(pb::JobProgress { iteration: n, latest: Some(pb::LossRow { total: f, ..Default::default() }), ..Default::default() }),
                    }],
                    memory: Vec::new(),
                    busy: Vec::new(),
                })
                .await
                .map(|_| ()),
            8 => w
                .api
                .complete_job(pb::CompleteJobRequest {
                    worker_id: w.id.clone(),
                    job_id: pick(&mut rng, &["j1", "j2", "j3"]),
                    attempt: n % 4,
                    result: Some(pb::JobResult { final_loss: f, engine_ms: f, prefix: s, ..Default::default() }),
                    lease_secret: String::new(),
                })
                .await
                .map(|_| ()),
            9 => w
                .api
                .fail_job(pb::FailJobRequest {
                    worker_id: w.id.clone(),
                    job_id: s,
                    attempt: n,
                    reason: "r".repeat((n % 10_000) as usize),
                    // valid and invalid ways to stop alike
                    stop: (n % 6) as i32,
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            10 => w
                .api
                .register_worker(pb::RegisterWorkerRequest {
                    name: s.clone(),
                    devices: vec![pb::Device { name: s, memory_bytes: n as u64 * 1_000_000_000, description: String::new() }; (n % 3) as usize],
                    worker_id: pick(&mut rng, &["", "w1", "w2", "w999"]),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            11 => client.cancel_job(pb::CancelJobRequest { job_id: pick(&mut rng, &["j1", "j2", "j3", &s]) }).await.map(|_| ()),
            12 => client
                .set_batch_priority(pb::SetBatchPriorityRequest { batch_id: pick(&mut rng, &["b1", &s]), priority: rng.random_range(-5000..5000) })
                .await
                .map(|_| ()),
            13 => client.pause_batch(pb::PauseBatchRequest { batch_id: pick(&mut rng, &["b1", &s]), mode: (n % 4) as i32 }).await.map(|_| ()),
            14 => client.resume_batch(pb::ResumeBatchRequest { batch_id: pick(&mut rng, &["b1", &s]) }).await.map(|_| ()),
            15 => client.retry(pb::RetryRequest { batch_id: pick(&mut rng, &["b1", &s]), job_id: pick(&mut rng, &["", "j1", "j2", &s]) }).await.map(|_| ()),
            16 => client.delete_batch(pb::DeleteBatchRequest { batch_id: pick(&mut rng, &["b1", "b2", &s]), mode: (n % 4) as i32 }).await.map(|_| ()),
            17 => client.control_worker(pb::ControlWorkerRequest { worker_id: pick(&mut rng, &[&w.id, "w999", &s]), action: (n % 5) as i32 }).await.map(|_| ()),
            18 => client.forget_worker(pb::ForgetWorkerRequest { worker_id: pick(&mut rng, &[&w.id, "w999", &s]) }).await.map(|_| ()),
            _ => upload(&mut client, (0..(n % 64)).map(|i| i as u8).collect()).await.map(|_| ()),
        };
    }
    assert!(calls > 100, "{calls} calls");
    assert!(healthy(&coordinator).await);
    let data_dir = coordinator.data_dir.clone();
    coordinator.stop().await.unwrap();
    let coordinator = Coordinator::start(test_config(&data_dir)).await;
    assert!(healthy(&coordinator).await, "the state loads again");
    let mut client = coordinator.client().await;
    client.list_batches(pb::ListBatchesRequest::default()).await.unwrap();
    coordinator.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_its_submitters_own() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenStore::open(dir.path()).unwrap();
    let alice = tokens.create("alice", Role::Submit).unwrap();
    let bob = tokens.create("bob", Role::Submit).unwrap();
    let submit = |name: &str| {
        let mut r = batch_request(name, 2, 0);
        r.request_id = "nightly-2026-12-06".into();
        r
    };
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let (mut a, mut b) = (coordinator.client_with(Some(&alice)).await, coordinator.client_with(Some(&bob)).await);
    let hers = a.submit_batch(submit("alice's")).await.unwrap().into_inner();
    // bob guessing (or sharing) her id gets his own batch: never hers, never nothing
    let his = b.submit_batch(submit("bob's")).await.unwrap().into_inner();
    assert!(!his.deduplicated && his.batch_id != hers.batch_id, "{his:?}");
    assert!(his.job_ids.iter().all(|j| !hers.job_ids.contains(j)));
    let (batch, _) = get_batch(&mut b, &his.batch_id).await;
    assert_eq!((batch.name.as_str(), batch.owner.as_str()), ("bob's", "bob"));
    // each of them retrying is deduplicated to their own
    let again = a.submit_batch(submit("alice's")).await.unwrap().into_inner();
    assert!(again.deduplicated && again.batch_id == hers.batch_id);
    coordinator.stop().await.unwrap();

    // past the in-memory window the store answers, scoped the same way
    let mut config = test_config(dir.path());
    config.request_id_window_ms = 0;
    let coordinator = Coordinator::start(config).await;
    let (mut a, mut b) = (coordinator.client_with(Some(&alice)).await, coordinator.client_with(Some(&bob)).await);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let theirs = (a.submit_batch(submit("x")).await.unwrap().into_inner(), b.submit_batch(submit("y")).await.unwrap().into_inner());
    assert!(theirs.0.deduplicated && theirs.0.batch_id == hers.batch_id, "{:?}", theirs.0);
    assert!(theirs.1.deduplicated && theirs.1.batch_id == his.batch_id, "{:?}", theirs.1);
    let carol = TokenStore::open(dir.path()).unwrap().create("carol", Role::Submit).unwrap();
    let mut c = coordinator.client_with(Some(&carol)).await;
    let hers_too = c.submit_batch(submit("carol's")).await.unwrap().into_inner();
    assert!(!hers_too.deduplicated && ![&hers.batch_id, &his.batch_id].contains(&&hers_too.batch_id));
    coordinator.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_an_older_build_stored_stay_their_owners() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    let mut request = batch_request("before", 1, 0);
    request.request_id = "req-7".into();
    let first = client.submit_batch(request.clone()).await.unwrap().into_inner();
    coordinator.stop().await.unwrap();
    // as an older build wrote it: the id in the first column, unique across everyone
    let db = rusqlite::Connection::open(dir.path().join("state.sqlite")).unwrap();
    db.execute("UPDATE batches SET request_id = request_key, request_key = NULL", []).unwrap();
    drop(db);
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    let again = client.submit_batch(request).await.unwrap().into_inner();
    assert!(again.deduplicated && again.batch_id == first.batch_id, "{again:?}");
    coordinator.stop().await.unwrap();
}

/// UploadImage returning the whole answer (the helper returns only the hash).
async fn upload_answer(client: &mut Client, data: Vec<u8>) -> pb::UploadImageResponse {
    let header = pb::UploadHeader { filename: "t.png".into(), size_bytes: data.len() as u64, sha256: String::new(), video: false };
    let messages = vec![
        pb::UploadImageRequest { part: Some(pb::upload_image_request::Part::Header(header)) },
        pb::UploadImageRequest { part: Some(pb::upload_image_request::Part::Chunk(data.into())) },
    ];
    client.upload_image(tokio_stream::iter(messages)).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_is_its_uploaders_and_tells_nobody_else_the_bytes_exist() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenStore::open(dir.path()).unwrap();
    let alice = tokens.create("alice", Role::Submit).unwrap();
    let bob = tokens.create("bob", Role::Submit).unwrap();
    let carol = tokens.create("carol", Role::Submit).unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let (mut a, mut b) = (coordinator.client_with(Some(&alice)).await, coordinator.client_with(Some(&bob)).await);
    let uploaded = upload_answer(&mut a, tiny_png()).await;
    assert!(!uploaded.already_present);
    let sha = uploaded.sha256.clone();
    let never = "ab".repeat(32);
    let submit = |sha: &str| {
        let mut r = batch_request("uses-an-upload", 1, 0);
        r.jobs[0].content = Some(stylefarm_coordinator_tests::farm::sha_ref(sha));
        r
    };
    // to bob, alice's upload looks exactly like bytes nobody uploaded
    let stat = b.stat_images(pb::StatImagesRequest { sha256: vec![sha.clone(), never.clone()] }).await.unwrap().into_inner();
    assert_eq!(stat.missing, vec![sha.clone(), never.clone()]);
    let hers = b.submit_batch(submit(&sha)).await.unwrap_err();
    let nobodys = b.submit_batch(submit(&never)).await.unwrap_err();
    assert_eq!(hers.code(), Code::InvalidArgument);
    assert_eq!(hers.message().replace(&sha, "SHA"), nobodys.message().replace(&never, "SHA"), "no existence oracle");
    // bob uploading the same bytes makes them his too, and is told nothing of hers
    let his = upload_answer(&mut b, tiny_png()).await;
    assert_eq!((his.sha256.as_str(), his.already_present), (sha.as_str(), false));
    assert!(upload_answer(&mut b, tiny_png()).await.already_present, "his second upload is his repeat");
    b.submit_batch(submit(&sha)).await.unwrap();
    let stat = a.stat_images(pb::StatImagesRequest { sha256: vec![sha.clone()] }).await.unwrap().into_inner();
    assert!(stat.missing.is_empty());
    a.submit_batch(submit(&sha)).await.unwrap();
    coordinator.stop().await.unwrap();

    // the references survive a restart; carol still has none
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let (mut b, mut c) = (coordinator.client_with(Some(&bob)).await, coordinator.client_with(Some(&carol)).await);
    b.submit_batch(submit(&sha)).await.unwrap();
    assert_eq!(c.submit_batch(submit(&sha)).await.unwrap_err().code(), Code::InvalidArgument);
    coordinator.stop().await.unwrap();

    // an image an older build stored (no references) stays usable by everyone, as it was
    let db = rusqlite::Connection::open(dir.path().join("state.sqlite")).unwrap();
    db.execute("DELETE FROM image_refs", []).unwrap();
    drop(db);
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut c = coordinator.client_with(Some(&carol)).await;
    c.submit_batch(submit(&sha)).await.unwrap();
    coordinator.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_urls_are_inputs_only_to_their_owners() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenStore::open(dir.path()).unwrap();
    let alice = tokens.create("alice", Role::Submit).unwrap();
    let bob = tokens.create("bob", Role::Submit).unwrap();
    let root = tokens.create("root", Role::Admin).unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let store = format!("file://{}/objects", std::fs::canonicalize(dir.path()).unwrap().display());
    let (mut a, mut b) = (coordinator.client_with(Some(&alice)).await, coordinator.client_with(Some(&bob)).await);
    let mut admin = coordinator.client_with(Some(&root)).await;
    let hers = a.submit_batch(batch_request("hers", 1, 0)).await.unwrap().into_inner();
    let sha = upload(&mut a, tiny_png()).await.unwrap();
    let using = |url: &str| {
        let mut r = batch_request("chained", 1, 0);
        r.jobs[0].content = Some(url_ref(url));
        r
    };
    let output = format!("{store}/batches/{}/jobs/{}/attempt-1/output.png", hers.batch_id, hers.job_ids[0]);
    let upload_url = format!("{store}/images/sha256/{sha}");
    let elsewhere = format!("{store}/state-backup/secrets.png");
    // her output and her upload feed her next batch
    a.submit_batch(using(&output)).await.unwrap();
    a.submit_batch(using(&upload_url)).await.unwrap();
    // to bob they are as unusable as a batch that never was, and the refusal shows no store URL of its own
    let never = format!("{store}/batches/b999999/jobs/j1/attempt-1/output.png");
    let refused = |url: &str| {
        let url = url.to_string();
        let mut b = b.clone();
        async move { b.submit_batch(using(&url)).await.unwrap_err() }
    };
    let (e_output, e_never) = (refused(&output).await, refused(&never).await);
    assert_eq!(e_output.code(), Code::InvalidArgument);
    assert_eq!(e_output.message().replace(&output, "URL"), e_never.message().replace(&never, "URL"), "no existence oracle");
    assert!(!e_output.message().replace(&output, "URL").contains(&store), "the store's URL is not shown: {}", e_output.message());
    for url in [&upload_url, &elsewhere] {
        assert_eq!(refused(url).await.code(), Code::InvalidArgument, "{url}");
    }
    // an admin may read anything in the store
    for url in [&output, &upload_url, &elsewhere] {
        admin.submit_batch(using(url)).await.unwrap();
    }
    b.submit_batch(batch_request("his own inputs still work", 1, 0)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_per_principal_refuse_with_their_name_and_value_and_leave_others_alone() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenStore::open(dir.path()).unwrap();
    let alice = tokens.create("alice", Role::Submit).unwrap();
    let bob = tokens.create("bob", Role::Submit).unwrap();
    let admin = tokens.create("ops", Role::Admin).unwrap();
    let mut config = test_config(dir.path());
    config.quotas.submit.unfinished_jobs = 3;
    config.quotas.submit.jobs_per_batch = 2;
    config.quotas.submit.submits_per_minute = 5;
    let coordinator = Coordinator::start(config).await;
    let (mut a, mut b, mut ops) =
        (coordinator.client_with(Some(&alice)).await, coordinator.client_with(Some(&bob)).await, coordinator.client_with(Some(&admin)).await);
    let refused = |status: tonic::Status, quota: &str| {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains(&format!("quota `{quota}`")), "{}", status.message());
        status.message().to_string()
    };
    // 1: two jobs fit
    let first = a.submit_batch(batch_request("a1", 2, 0)).await.unwrap().into_inner();
    // 2: two more would make four queued
    let message = refused(a.submit_batch(batch_request("a2", 2, 0)).await.unwrap_err(), "unfinished_jobs");
    assert!(message.contains("(3)") && message.contains("2 queued or running, 2 more"), "{message}");
    // 3: three jobs in one batch
    assert!(refused(a.submit_batch(batch_request("a3", 3, 0)).await.unwrap_err(), "jobs_per_batch").contains("(2)"));
    // 4: a priority outside the submit role's range; nor may it be set later
    assert!(refused(a.submit_batch(batch_request("a4", 1, 101)).await.unwrap_err(), "priority").contains("..=100)"));
    let set = a.set_batch_priority(pb::SetBatchPriorityRequest { batch_id: first.batch_id.clone(), priority: 500 }).await.unwrap_err();
    refused(set, "priority");
    // 5: one more job fits; 6: the sixth submit in a minute does not, whatever it asks
    a.submit_batch(batch_request("a5", 1, 100)).await.unwrap();
    refused(a.submit_batch(batch_request("a6", 1, 0)).await.unwrap_err(), "submits_per_minute");
    // others are untouched: bob has his own counts, an admin has no limit
    b.submit_batch(batch_request("b1", 2, 0)).await.unwrap();
    ops.submit_batch(batch_request("ops", 5, 1_000)).await.unwrap();
    ops.set_batch_priority(pb::SetBatchPriorityRequest { batch_id: first.batch_id.clone(), priority: 500 }).await.unwrap();
    // refused submits leave nothing behind
    let listed = a.list_batches(pb::ListBatchesRequest::default()).await.unwrap().into_inner().batches;
    assert_eq!(listed.len(), 2, "{listed:?}");
    coordinator.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_counts_toward_the_owners_unfinished_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenStore::open(dir.path()).unwrap();
    let carol = tokens.create("carol", Role::Submit).unwrap();
    let gpu = tokens.create("gpu", Role::Worker).unwrap();
    let mut config = test_config(dir.path());
    config.quotas.submit.unfinished_jobs = 3;
    let coordinator = Coordinator::start(config).await;
    let mut c = coordinator.client_with(Some(&carol)).await;
    let first = c.submit_batch(batch_request("c1", 2, 10)).await.unwrap().into_inner();
    c.submit_batch(batch_request("c2", 1, 0)).await.unwrap();
    // both of the first batch's jobs fail for good: one job left unfinished
    let mut worker = coordinator.worker_with("w", 1 << 30, Some(&gpu)).await.unwrap();
    for _ in 0..2 {
        let lease = worker.lease(0).await.unwrap();
        assert!(first.job_ids.contains(&lease.job_id));
        worker.fail(&lease, "bad input", pb::AttemptStop::Failed).await.unwrap();
    }
    let third = c.submit_batch(batch_request("c3", 2, 0)).await.unwrap().into_inner();
    // running the two again would make five
    let retry = || pb::RetryRequest { batch_id: first.batch_id.clone(), job_id: String::new() };
    let refused = c.retry(retry()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("quota `unfinished_jobs` (3)") && refused.message().contains("2 more"), "{}", refused.message());
    let (batch, _) = get_batch(&mut c, &first.batch_id).await;
    assert_eq!(batch.counts.unwrap().failed, 2, "nothing changed");
    // room again once her third batch is cancelled
    c.cancel_batch(pb::CancelBatchRequest { batch_id: third.batch_id }).await.unwrap();
    assert_eq!(c.retry(retry()).await.unwrap().into_inner().requeued, 2);
    coordinator.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_queued_counts_pixels_times_iterations_and_a_token_may_have_its_own_quotas() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenStore::open(dir.path()).unwrap();
    let erin = tokens.create("erin", Role::Submit).unwrap();
    let night = tokens.create("render-night", Role::Submit).unwrap();
    let mut config = test_config(dir.path());
    config.quotas.submit.unfinished_mpx_iterations = 250;
    config.quotas.tokens.insert("render-night".into(), QuotaFields { unfinished_mpx_iterations: Some(1_000), concurrent_calls: Some(4), ..Default::default() });
    let coordinator = Coordinator::start(config).await;
    let (mut e, mut n) = (coordinator.client_with(Some(&erin)).await, coordinator.client_with(Some(&night)).await);
    // one 1024 px job of 100 iterations at one scale: 1024² × 100 = 104.9 Mpx·iterations
    let big = |name: &str, jobs: usize| {
        let mut request = batch_request(name, jobs, 0);
        for job in &mut request.jobs {
            job.settings = Some(pb::RenderSettings { size: Some(1024), iterations: Some(100), scales: Some(1), ..Default::default() });
        }
        request
    };
    e.submit_batch(big("e1", 2)).await.expect("209.7 of 250 fit");
    let refused = e.submit_batch(big("e2", 1)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    let message = refused.message();
    assert!(message.contains("quota `unfinished_mpx_iterations` (250)") && message.contains("210 Mpx·iterations queued or running, 105 more"), "{message}");
    e.submit_batch(batch_request("small", 2, 0)).await.expect("64 px jobs still fit beside them");
    // a token's own quota, over its role's
    n.submit_batch(big("n1", 9)).await.expect("944 of render-night's 1000 fit");
    let refused = n.submit_batch(big("n2", 1)).await.unwrap_err();
    assert!(refused.message().contains("quota `unfinished_mpx_iterations` (1000)"), "{}", refused.message());
    coordinator.stop().await.unwrap();
}
