//! Two tenants against the real server: every call the second user (bob) can
//! make on the first user's (alice's) batch and jobs answers exactly as for
//! ids that never existed, and alice's work is untouched. The other ways
//! across (uploads, store URLs as inputs, request ids, quotas, hostile
//! connections) have their own tests in `coordinator_security.rs` and
//! `hostile_clients.rs`.

use stylefarm_coordinator::auth::{Role, TokenStore};
use stylefarm_coordinator_tests::farm::{batch_request, get_batch, test_config, Client, Coordinator};
use stylefarm_proto as pb;
use tonic::Code;

/// Every call bob could make naming a batch and a job, as (name, status code, message).
async fn every_call(c: &mut Client, batch: &str, job: &str) -> Vec<(&'static str, Code, String)> {
    let b = || batch.to_string();
    let j = || job.to_string();
    let mut out = Vec::new();
    let mut record = |name: &'static str, r: Result<(), tonic::Status>| {
        let (code, message) = match r {
            Ok(()) => (Code::Ok, String::new()),
            Err(s) => (s.code(), s.message().replace(batch, "BATCH").replace(job, "JOB")),
        };
        out.push((name, code, message));
    };
    record("GetBatch", c.get_batch(pb::GetBatchRequest { batch_id: b(), include_jobs: true }).await.map(drop));
    record("GetJob", c.get_job(pb::GetJobRequest { job_id: j() }).await.map(drop));
    let watch = match c.watch_batch(pb::WatchBatchRequest { batch_id: b() }).await {
        Ok(mut stream) => stream.get_mut().message().await.map(drop),
        Err(e) => Err(e),
    };
    record("WatchBatch", watch);
    let download = match c.download_outputs(pb::DownloadOutputsRequest { job_id: j() }).await {
        Ok(mut stream) => stream.get_mut().message().await.map(drop),
        Err(e) => Err(e),
    };
    record("DownloadOutputs", download);
    record("SetBatchPriority", c.set_batch_priority(pb::SetBatchPriorityRequest { batch_id: b(), priority: 50 }).await.map(drop));
    record("PauseBatch", c.pause_batch(pb::PauseBatchRequest { batch_id: b(), mode: pb::PauseMode::HandBackNow as i32 }).await.map(drop));
    record("ResumeBatch", c.resume_batch(pb::ResumeBatchRequest { batch_id: b() }).await.map(drop));
    record("Retry", c.retry(pb::RetryRequest { batch_id: b(), job_id: j() }).await.map(drop));
    record("CancelJob", c.cancel_job(pb::CancelJobRequest { job_id: j() }).await.map(drop));
    record("CancelBatch", c.cancel_batch(pb::CancelBatchRequest { batch_id: b() }).await.map(drop));
    record("DeleteBatch", c.delete_batch(pb::DeleteBatchRequest { batch_id: b(), mode: pb::DeleteMode::CancelRunning as i32 }).await.map(drop));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_batch_answers_as_one_that_never_was_and_stays_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenStore::open(dir.path()).unwrap();
    let alice = tokens.create("alice", Role::Submit).unwrap();
    let bob = tokens.create("bob", Role::Submit).unwrap();
    let gpu = tokens.create("gpu", Role::Worker).unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let (mut a, mut b) = (coordinator.client_with(Some(&alice)).await, coordinator.client_with(Some(&bob)).await);
    let hers = a.submit_batch(batch_request("hers", 3, 10)).await.unwrap().into_inner();
    // one of her jobs done, one running, one queued
    let mut worker = coordinator.worker_with("w", 1 << 30, Some(&gpu)).await.unwrap();
    let done = worker.lease(0).await.unwrap();
    worker.complete(&done).await.unwrap();
    let running = worker.lease(0).await.unwrap();
    let (before, jobs_before) = get_batch(&mut a, &hers.batch_id).await;
    b.submit_batch(batch_request("his", 1, 0)).await.unwrap();

    let tried = every_call(&mut b, &hers.batch_id, &running.job_id).await;
    let never = every_call(&mut b, "b999999", "j999999").await;
    for ((name, code, message), (_, never_code, never_message)) in tried.iter().zip(&never) {
        assert_eq!(*code, Code::NotFound, "{name} on alice's batch: {code:?} {message}");
        assert_eq!((code, message), (never_code, never_message), "{name}: the answer tells bob nothing a made-up id would not");
    }
    // nor does anything list it, or show her name
    let listed = b.list_batches(pb::ListBatchesRequest::default()).await.unwrap().into_inner().batches;
    assert!(listed.iter().all(|batch| batch.id != hers.batch_id && batch.owner == "bob"), "{listed:?}");
    assert!(!format!("{listed:?}").contains("alice"));
    // admin-only calls are refused to a submitter
    let workers = b.list_workers(pb::ListWorkersRequest::default()).await.unwrap_err();
    assert_eq!(workers.code(), Code::PermissionDenied);

    // alice's batch is exactly as it was: not paused, not cancelled, same priority, her lease alive
    let (after, jobs_after) = get_batch(&mut a, &hers.batch_id).await;
    assert_eq!((after.state, after.priority, after.counts), (before.state, before.priority, before.counts));
    let states = |jobs: &[pb::Job]| jobs.iter().map(|j| (j.id.clone(), j.state, j.attempt)).collect::<Vec<_>>();
    assert_eq!(states(&jobs_after), states(&jobs_before));
    assert_eq!(worker.heartbeat(&running, 1).await, pb::Verdict::Continue, "her running job was not taken back");
    worker.complete(&running).await.unwrap();
    let mut downloads = a.download_outputs(pb::DownloadOutputsRequest { job_id: done.job_id.clone() }).await.unwrap().into_inner();
    downloads.message().await.expect("her outputs are hers to fetch");
    coordinator.stop().await.unwrap();
}
