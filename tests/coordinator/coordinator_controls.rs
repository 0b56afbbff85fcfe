//! Operator controls through real gRPC, in-process on port 0, with test
//! workers: cancel one job, priority, pause/resume, retry, delete, and
//! disabling, draining and forgetting workers, retention.

use std::path::Path;
use std::time::Duration;

use stylefarm_coordinator_tests::farm::{batch_request, get_batch, test_config, Client, Coordinator};
use stylefarm_proto as pb;
use tonic::Code;

const GIB: u64 = 1 << 30;

fn state(job: &pb::Job) -> pb::JobState {
    job.state()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_cancels_alone_and_the_rest_of_its_batch_runs() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    let b = client.submit_batch(batch_request("three", 3, 0)).await.unwrap().into_inner();
    let mut worker = coordinator.worker("w", 16 * GIB).await;
    let running = worker.lease(0).await.unwrap();
    assert_eq!(running.job_id, b.job_ids[0]);
    let cancel = |id: &str| pb::CancelJobRequest { job_id: id.into() };
    // a queued job: cancelled now, and never leased
    let r = client.cancel_job(cancel(&b.job_ids[1])).await.unwrap().into_inner();
    assert_eq!((r.outcome(), r.state()), (pb::CancelOutcome::Cancelled, pb::JobState::Cancelled));
    // the running one: told at its heartbeat
    let r = client.cancel_job(cancel(&b.job_ids[0])).await.unwrap().into_inner();
    assert_eq!((r.outcome(), r.state()), (pb::CancelOutcome::Signalled, pb::JobState::Running));
    assert_eq!(worker.heartbeat(&running, 3).await, pb::Verdict::Cancel);
    worker.fail(&running, "cancelled", pb::AttemptStop::Cancelled).await.unwrap();
    // the third still runs and the batch ends with it
    let last = worker.lease(0).await.expect("the uncancelled job is still leased");
    assert_eq!(last.job_id, b.job_ids[2]);
    assert!(worker.lease(0).await.is_none());
    worker.complete(&last).await.unwrap();
    let (batch, jobs) = get_batch(&mut client, &b.batch_id).await;
    assert_eq!(jobs.iter().map(state).collect::<Vec<_>>(), [pb::JobState::Cancelled, pb::JobState::Cancelled, pb::JobState::Succeeded]);
    assert_eq!(batch.counts.unwrap().cancelled, 2);
    // a finished job (of a finished batch) says so and changes nothing
    let r = client.cancel_job(cancel(&b.job_ids[2])).await.unwrap().into_inner();
    assert_eq!((r.outcome(), r.state()), (pb::CancelOutcome::AlreadyFinished, pb::JobState::Succeeded));
    let e = client.cancel_job(cancel("j999")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = client.cancel_job(cancel("seven")).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("job_id"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_priority_changes_live_is_watched_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    let first = client.submit_batch(batch_request("first", 2, 0)).await.unwrap().into_inner();
    let late = client.submit_batch(batch_request("late", 2, 0)).await.unwrap().into_inner();
    let mut watch = client.watch_batch(pb::WatchBatchRequest { batch_id: late.batch_id.clone() }).await.unwrap().into_inner();
    let set = |batch: &str, priority| pb::SetBatchPriorityRequest { batch_id: batch.into(), priority };
    let batch = client.set_batch_priority(set(&late.batch_id, 50)).await.unwrap().into_inner();
    assert_eq!(batch.priority, 50);
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.unwrap().unwrap().unwrap();
        if event.kind() == pb::EventKind::BatchChanged {
            assert_eq!(event.batch.unwrap().priority, 50, "watchers see the new priority");
            break;
        }
    }
    // bad values name the field and change nothing
    let e = client.set_batch_priority(set(&late.batch_id, 5000)).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("priority"), "{e:?}");
    assert_eq!(client.set_batch_priority(set("b99", 1)).await.unwrap_err().code(), Code::NotFound);
    // the next lease takes the reprioritised batch first, in its order
    let mut worker = coordinator.worker("w", 16 * GIB).await;
    let lease = worker.lease(0).await.unwrap();
    assert_eq!(lease.job_id, late.job_ids[0]);
    worker.complete(&lease).await.unwrap();
    // lowered below the other one: the other goes next
    client.set_batch_priority(set(&late.batch_id, -1)).await.unwrap();
    let lease = worker.lease(0).await.unwrap();
    assert_eq!(lease.job_id, first.job_ids[0]);
    worker.complete(&lease).await.unwrap();
    // durable: after a restart the new priority still orders the queue
    coordinator.stop().await.unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    let (batch, _) = get_batch(&mut client, &late.batch_id).await;
    assert_eq!(batch.priority, -1);
    let mut worker = coordinator.worker("w2", 16 * GIB).await;
    let lease = worker.lease(0).await.unwrap();
    assert_eq!(lease.job_id, first.job_ids[1], "priority -1 still goes after 0");
    worker.complete(&lease).await.unwrap();
    let lease = worker.lease(0).await.unwrap();
    worker.complete(&lease).await.unwrap();
    // a finished batch has nothing left to prioritise
    let e = client.set_batch_priority(set(&first.batch_id, 3)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_batch_leases_nothing_hands_back_without_spending_attempts_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    let mut request = batch_request("pausable", 3, 0);
    request.max_attempts = 1;
    let b = client.submit_batch(request).await.unwrap().into_inner();
    let other = client.submit_batch(batch_request("other", 1, -1)).await.unwrap().into_inner();
    let mut worker = coordinator.worker("w", 16 * GIB).await;
    let first = worker.lease(0).await.unwrap();
    let pause = |mode: pb::PauseMode| pb::PauseBatchRequest { batch_id: b.batch_id.clone(), mode: mode as i32 };
    // paused: the running job finishes, nothing else of the batch is leased, other batches are
    let r = client.pause_batch(pause(pb::PauseMode::FinishRunning)).await.unwrap().into_inner();
    assert_eq!((r.batch.unwrap().state(), r.handed_back), (pb::BatchState::Paused, 0));
    let next = worker.lease(0).await.unwrap();
    assert_eq!(next.job_id, other.job_ids[0], "only the other batch's job is leased");
    worker.complete(&next).await.unwrap();
    assert!(worker.lease(0).await.is_none(), "a paused batch leases nothing");
    assert_eq!(worker.heartbeat(&first, 2).await, pb::Verdict::Continue, "its running job runs on");
    // the state is listed and filtered as paused
    let listed = client.list_batches(pb::ListBatchesRequest { states: vec![pb::BatchState::Paused as i32], ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(listed.batches.iter().map(|x| x.id.as_str()).collect::<Vec<_>>(), [b.batch_id.as_str()]);
    // resumed, then paused with running jobs handed back now: no attempt spent
    client.resume_batch(pb::ResumeBatchRequest { batch_id: b.batch_id.clone() }).await.unwrap();
    let second = worker.lease(0).await.unwrap();
    let r = client.pause_batch(pause(pb::PauseMode::HandBackNow)).await.unwrap().into_inner();
    assert_eq!(r.handed_back, 2, "both running jobs went back");
    assert_eq!(worker.heartbeat(&first, 3).await, pb::Verdict::LeaseLost, "the worker learns at its heartbeat");
    assert_eq!(worker.complete(&second).await.unwrap_err().code(), Code::FailedPrecondition, "a taken-back attempt cannot complete");
    let job = client.get_job(pb::GetJobRequest { job_id: first.job_id.clone() }).await.unwrap().into_inner();
    assert_eq!(state(&job), pb::JobState::Queued);
    assert_eq!(job.attempts.last().map(|a| a.outcome.as_str()), Some("handed_back"));
    assert!(worker.lease(0).await.is_none());
    // durable across a restart, then resumed: every job succeeds within max_attempts = 1
    coordinator.stop().await.unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    assert_eq!(get_batch(&mut client, &b.batch_id).await.0.state(), pb::BatchState::Paused);
    let mut worker = coordinator.worker("w2", 16 * GIB).await;
    assert!(worker.lease(0).await.is_none(), "still paused after a restart");
    let resumed = client.resume_batch(pb::ResumeBatchRequest { batch_id: b.batch_id.clone() }).await.unwrap().into_inner();
    assert_ne!(resumed.state(), pb::BatchState::Paused);
    while let Some(lease) = worker.lease(0).await {
        worker.complete(&lease).await.unwrap();
    }
    let (batch, jobs) = get_batch(&mut client, &b.batch_id).await;
    assert_eq!(batch.state(), pb::BatchState::Succeeded, "{jobs:?}");
    let e = client.pause_batch(pause(pb::PauseMode::FinishRunning)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "a finished batch cannot be paused: {e:?}");
    let e = client.pause_batch(pb::PauseBatchRequest { batch_id: b.batch_id.clone(), mode: 9 }).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("mode"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_batch_runs_again_keeps_its_history_and_its_watchers_see_it() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    let mut request = batch_request("flaky", 3, 0);
    request.max_attempts = 1;
    let b = client.submit_batch(request).await.unwrap().into_inner();
    let mut worker = coordinator.worker("w", 16 * GIB).await;
    let broken = worker.lease(0).await.unwrap();
    worker.fail(&broken, "CUDA out of memory", pb::AttemptStop::FailedRetryable).await.unwrap();
    let cancelled = b.job_ids[2].clone();
    client.cancel_job(pb::CancelJobRequest { job_id: cancelled.clone() }).await.unwrap();
    let ok = worker.lease(0).await.unwrap();
    worker.complete(&ok).await.unwrap();
    let (batch, _) = get_batch(&mut client, &b.batch_id).await;
    assert_eq!(batch.state(), pb::BatchState::Failed, "one failed (its one attempt spent), one cancelled");
    let retry = |job: &str| pb::RetryRequest { batch_id: b.batch_id.clone(), job_id: job.into() };
    // refused: a succeeded job, another batch's job, a malformed id; nothing changes
    assert_eq!(client.retry(retry(&ok.job_id)).await.unwrap_err().code(), Code::FailedPrecondition);
    let other = client.submit_batch(batch_request("other", 1, -1)).await.unwrap().into_inner();
    assert_eq!(client.retry(retry(&other.job_ids[0])).await.unwrap_err().code(), Code::NotFound);
    let e = client.retry(retry("nine")).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("job_id"), "{e:?}");
    assert_eq!(get_batch(&mut client, &b.batch_id).await.0.state(), pb::BatchState::Failed);
    // every failed job: the ended batch runs again with a fresh attempt budget
    let r = client.retry(retry("")).await.unwrap().into_inner();
    assert_eq!(r.requeued, 1);
    assert_eq!(r.batch.unwrap().state(), pb::BatchState::Running, "it had started: running again");
    let mut watch = client.watch_batch(pb::WatchBatchRequest { batch_id: b.batch_id.clone() }).await.unwrap().into_inner();
    // the cancelled one, by id
    assert_eq!(client.retry(retry(&cancelled)).await.unwrap().into_inner().requeued, 1);
    let mut leased = Vec::new();
    while let Some(lease) = worker.lease(0).await {
        if lease.job_id == other.job_ids[0] {
            worker.complete(&lease).await.unwrap();
            continue;
        }
        leased.push((lease.job_id.clone(), lease.attempt));
        worker.complete(&lease).await.unwrap();
    }
    leased.sort();
    assert_eq!(leased, [(broken.job_id.clone(), 2), (cancelled.clone(), 1)], "new attempt numbers; the cancelled one had never run");
    let mut finished = false;
    while let Ok(Ok(Some(event))) = tokio::time::timeout(Duration::from_secs(5), watch.message()).await {
        if event.kind() == pb::EventKind::BatchFinished {
            assert_eq!(event.batch.unwrap().state(), pb::BatchState::Succeeded);
            finished = true;
            break;
        }
    }
    assert!(finished, "the watcher saw the retried batch finish");
    let job = client.get_job(pb::GetJobRequest { job_id: broken.job_id.clone() }).await.unwrap().into_inner();
    let history: Vec<(u32, &str)> = job.attempts.iter().map(|a| (a.attempt, a.outcome.as_str())).collect();
    assert_eq!(history, [(1, "failed"), (2, "succeeded")], "the old attempt stays in the history");
    // durable: after a restart the batch is still the retried, succeeded one
    coordinator.stop().await.unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    let (batch, jobs) = get_batch(&mut client, &b.batch_id).await;
    assert_eq!(batch.state(), pb::BatchState::Succeeded, "{jobs:?}");
}

/// Writes an object where a worker would put an attempt's output.
fn put_output(data_dir: &Path, lease: &pb::Lease, name: &str) -> std::path::PathBuf {
    let dir = Path::new(lease.output_prefix.strip_prefix("file://").expect("a file:// store"));
    assert!(dir.starts_with(data_dir), "{} is under the data dir", dir.display());
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, b"png").unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_batch_loses_its_rows_and_objects_and_keeps_shared_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    let sha = stylefarm_coordinator_tests::farm::upload_bytes(&mut client, "in.png", sample_png()).await.unwrap();
    let kept = client.submit_batch(batch_request("kept", 1, 0)).await.unwrap().into_inner();
    let doomed = client.submit_batch(batch_request("doomed", 3, 10)).await.unwrap().into_inner();
    let mut worker = coordinator.worker("w", 16 * GIB).await;
    // one job of the doomed batch succeeds (with outputs), one runs, one is queued
    let done = worker.lease(0).await.unwrap();
    assert_eq!(done.job_id, doomed.job_ids[0]);
    let done_file = put_output(dir.path(), &done, "output.png");
    worker.complete(&done).await.unwrap();
    let running = worker.lease(0).await.unwrap();
    let running_file = put_output(dir.path(), &running, "snapshot-0001.png");
    let delete = |batch: &str, mode: pb::DeleteMode| pb::DeleteBatchRequest { batch_id: batch.into(), mode: mode as i32 };
    // refused while a job runs: nothing changes
    let e = client.delete_batch(delete(&doomed.batch_id, pb::DeleteMode::IfIdle)).await.unwrap_err();
    assert!(e.code() == Code::FailedPrecondition && e.message().contains("running") && e.message().contains("--force"), "{e:?}");
    assert!(done_file.exists());
    let (batch, _) = get_batch(&mut client, &doomed.batch_id).await;
    assert_eq!(batch.counts.unwrap().running, 1);
    // forced: the running job is taken back (no attempt spent), the rest cancelled, everything removed
    let r = client.delete_batch(delete(&doomed.batch_id, pb::DeleteMode::CancelRunning)).await.unwrap().into_inner();
    assert_eq!((r.cancelled, r.jobs_removed, r.objects_removed), (2, 3, 2), "{r:?}");
    assert!(!done_file.exists() && !running_file.exists());
    assert_eq!(worker.heartbeat(&running, 5).await, pb::Verdict::LeaseLost, "its worker learns at the next heartbeat");
    for id in [&doomed.batch_id] {
        assert_eq!(client.get_batch(pb::GetBatchRequest { batch_id: id.clone(), include_jobs: false }).await.unwrap_err().code(), Code::NotFound);
    }
    for job in &doomed.job_ids {
        assert_eq!(client.get_job(pb::GetJobRequest { job_id: job.clone() }).await.unwrap_err().code(), Code::NotFound, "job {job} is gone");
    }
    let listed = client.list_batches(pb::ListBatchesRequest::default()).await.unwrap().into_inner().batches;
    assert_eq!(listed.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(), [kept.batch_id.as_str()], "lists skip it");
    // the upload, shared and content-addressed, stays; so does the other batch
    let missing = client.stat_images(pb::StatImagesRequest { sha256: vec![sha.clone()] }).await.unwrap().into_inner().missing;
    assert!(missing.is_empty(), "the upload {sha} is kept");
    let (other, _) = get_batch(&mut client, &kept.batch_id).await;
    assert_eq!(other.counts.unwrap().queued, 1);
    // idempotent: again succeeds and removes what a late writer left
    let late = running_file.with_file_name("late.png");
    std::fs::create_dir_all(late.parent().unwrap()).unwrap();
    std::fs::write(&late, b"late").unwrap();
    let r = client.delete_batch(delete(&doomed.batch_id, pb::DeleteMode::IfIdle)).await.unwrap().into_inner();
    assert_eq!((r.cancelled, r.jobs_removed, r.objects_removed), (0, 0, 1), "{r:?}");
    assert!(!late.exists());
    assert_eq!(client.delete_batch(delete("b999", pb::DeleteMode::IfIdle)).await.unwrap_err().code(), Code::NotFound);
    let e = client.delete_batch(delete("nine", pb::DeleteMode::IfIdle)).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("batch_id"), "{e:?}");
    // a queued batch needs no force; after a restart the deletion holds
    let r = client.delete_batch(delete(&kept.batch_id, pb::DeleteMode::Unspecified)).await.unwrap().into_inner();
    assert_eq!((r.cancelled, r.jobs_removed), (1, 1));
    coordinator.stop().await.unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    assert!(client.list_batches(pb::ListBatchesRequest::default()).await.unwrap().into_inner().batches.is_empty());
    let mut worker = coordinator.worker("w2", 16 * GIB).await;
    assert!(worker.lease(0).await.is_none(), "nothing of a deleted batch is leased after a restart");
}

fn sample_png() -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(8, 8, image::Rgb([200, 40, 40])).write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_disable_drain_enable_and_forget_workers_and_it_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    let b = client.submit_batch(batch_request("two", 2, 0)).await.unwrap().into_inner();
    let mut flaky = coordinator.worker("flaky", 16 * GIB).await;
    let mut good = coordinator.worker("good", 16 * GIB).await;
    let control = |worker: &str, action: pb::WorkerAction| pb::ControlWorkerRequest { worker_id: worker.into(), action: action as i32 };
    let first = flaky.lease(0).await.unwrap();
    let w = client.control_worker(control(&flaky.id, pb::WorkerAction::Disable)).await.unwrap().into_inner();
    assert_eq!((w.availability(), w.running_jobs.len()), (pb::WorkerAvailability::Disabled, 1));
    assert!(flaky.lease(0).await.is_none(), "disabled: nothing new, though a job is queued");
    // drained: its running job goes back without spending the attempt, and another worker takes it
    let w = client.control_worker(control(&flaky.id, pb::WorkerAction::Drain)).await.unwrap().into_inner();
    assert!(w.running_jobs.is_empty());
    assert_eq!(flaky.heartbeat(&first, 2).await, pb::Verdict::LeaseLost);
    let again = good.lease(0).await.unwrap();
    assert_eq!((again.job_id.as_str(), again.attempt), (first.job_id.as_str(), first.attempt + 1), "the handed-back job goes first, under a new fencing token");
    let job = client.get_job(pb::GetJobRequest { job_id: first.job_id.clone() }).await.unwrap().into_inner();
    assert_eq!(job.attempts.first().map(|a| a.outcome.as_str()), Some("handed_back"), "not counted against max_attempts");
    good.complete(&again).await.unwrap();
    // kept across a restart
    coordinator.stop().await.unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    let workers = client.list_workers(pb::ListWorkersRequest {}).await.unwrap().into_inner().workers;
    let find = |id: &str| workers.iter().find(|w| w.id == id).cloned().unwrap();
    assert_eq!(find(&flaky.id).availability(), pb::WorkerAvailability::Disabled);
    assert_eq!(find(&good.id).availability(), pb::WorkerAvailability::Enabled);
    let mut flaky = flaky.reconnect(coordinator.channel().await).await;
    assert!(flaky.lease(0).await.is_none(), "still disabled after the restart");
    client.control_worker(control(&flaky.id, pb::WorkerAction::Enable)).await.unwrap();
    let last = flaky.lease(0).await.expect("enabled: it leases again");
    assert_eq!(last.job_id, b.job_ids[1]);
    flaky.complete(&last).await.unwrap();
    // bad requests name the field; forgetting a connected worker is refused
    let e = client.control_worker(control(&flaky.id, pb::WorkerAction::Unspecified)).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("action"), "{e:?}");
    assert_eq!(client.control_worker(control("w999", pb::WorkerAction::Disable)).await.unwrap_err().code(), Code::NotFound);
    let forget = |worker: &str| pb::ForgetWorkerRequest { worker_id: worker.into() };
    let e = client.forget_worker(forget(&flaky.id)).await.unwrap_err();
    assert!(e.code() == Code::FailedPrecondition && e.message().contains("connected"), "{e:?}");
    // gone for longer than a lease (2 s here): forgotten, in memory and in the store
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    client.forget_worker(forget(&good.id)).await.unwrap();
    coordinator.stop().await.unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    let workers = client.list_workers(pb::ListWorkersRequest {}).await.unwrap().into_inner().workers;
    assert!(workers.iter().all(|w| w.id != good.id), "forgotten for good: {workers:?}");
    assert_eq!(client.forget_worker(forget(&good.id)).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_finished_batches_once_they_are_old_enough_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut config = test_config(dir.path());
        config.retain_finished = Some("2s".parse().unwrap());
        config
    };
    let coordinator = Coordinator::start(config()).await;
    let mut client = coordinator.client().await;
    let old = client.submit_batch(batch_request("old", 1, 10)).await.unwrap().into_inner();
    let unfinished = client.submit_batch(batch_request("unfinished", 1, 0)).await.unwrap().into_inner();
    let mut worker = coordinator.worker("w", 16 * GIB).await;
    let lease = worker.lease(0).await.unwrap();
    assert_eq!(lease.job_id, old.job_ids[0]);
    let output = put_output(dir.path(), &lease, "output.png");
    worker.complete(&lease).await.unwrap();
    let finished_at = std::time::Instant::now();
    assert_eq!(get_batch(&mut client, &old.batch_id).await.0.state(), pb::BatchState::Succeeded, "kept while younger than 2 s");
    // what is due comes from the store: a restart loses nothing
    coordinator.stop().await.unwrap();
    let coordinator = Coordinator::start(config()).await;
    let mut client = coordinator.client().await;
    let gone = |client: &mut Client, id: &str| {
        let mut client = client.clone();
        let id = id.to_string();
        async move { client.get_batch(pb::GetBatchRequest { batch_id: id, include_jobs: false }).await.is_err_and(|e| e.code() == Code::NotFound) }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !gone(&mut client, &old.batch_id).await {
        assert!(std::time::Instant::now() < deadline, "retention deleted the finished batch within 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(finished_at.elapsed() >= Duration::from_secs(2), "not before it was 2 s old");
    assert!(!output.exists(), "its objects went with it");
    // an unfinished batch is never retention's, however old
    let (batch, _) = get_batch(&mut client, &unfinished.batch_id).await;
    assert_eq!(batch.counts.unwrap().queued, 1);
    // a retention of zero is refused by name
    let mut zero = config();
    zero.retain_finished = Some("0s".parse().unwrap());
    assert!(zero.validate().unwrap_err().to_string().contains("retain_finished"));
}

/// A small PNG of one colour (so each has its own SHA-256).
fn png(shade: u8) -> Vec<u8> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(8, 8, image::Rgb([shade, 0, 0])).write_to(&mut bytes, image::ImageFormat::Png).unwrap();
    bytes.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_an_upload_once_no_batch_uses_it_and_keeps_it_while_one_does() {
    use stylefarm_coordinator_tests::farm::{sha_ref, upload_bytes};
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.retain_finished = Some("2s".parse().unwrap());
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let coordinator = Coordinator::start(config).await;
    let mut client = coordinator.client().await;
    let [shared, own, never] = [1u8, 2, 3].map(png);
    let shared = upload_bytes(&mut client, "shared.png", shared).await.unwrap();
    let own = upload_bytes(&mut client, "own.png", own).await.unwrap();
    let never = upload_bytes(&mut client, "never.png", never).await.unwrap();
    let object = |sha: &str| dir.path().join("objects/images/sha256").join(sha);
    assert!(object(&shared).is_file() && object(&own).is_file() && object(&never).is_file());
    let reading = |name: &str, content: &str, style: &str| {
        let mut request = batch_request(name, 1, 0);
        request.jobs[0].content = Some(sha_ref(content));
        request.jobs[0].styles = vec![sha_ref(style)];
        request
    };
    let old = client.submit_batch(reading("old", &shared, &own)).await.unwrap().into_inner();
    let later = client.submit_batch(reading("later", &shared, &shared)).await.unwrap().into_inner();
    let mut worker = coordinator.worker("w", 16 * GIB).await;
    let lease = worker.lease(0).await.unwrap();
    assert_eq!(lease.job_id, old.job_ids[0]);
    worker.complete(&lease).await.unwrap();

    // `old` goes 2 s after it finished, and with it the upload only it read;
    // the one never used goes too; the one `later` reads stays
    let missing = |client: &mut Client, shas: Vec<String>| {
        let mut client = client.clone();
        async move { client.stat_images(pb::StatImagesRequest { sha256: shas }).await.unwrap().into_inner().missing }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while missing(&mut client, vec![own.clone(), never.clone()]).await.len() < 2 {
        assert!(std::time::Instant::now() < deadline, "the unused uploads went within 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!object(&own).exists() && !object(&never).exists(), "their bytes went with them");
    assert!(missing(&mut client, vec![shared.clone()]).await.is_empty() && object(&shared).is_file(), "`later` still reads it");
    assert_eq!(client.get_batch(pb::GetBatchRequest { batch_id: old.batch_id.clone(), include_jobs: false }).await.unwrap_err().code(), Code::NotFound);
    // naming a removed upload is refused by field, as one never uploaded
    let e = client.submit_batch(reading("again", &shared, &own)).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("jobs[0].styles[0]"), "{e:?}");

    // once `later` has finished and gone, its upload goes too
    let lease = worker.lease(0).await.unwrap();
    assert_eq!(lease.job_id, later.job_ids[0]);
    worker.complete(&lease).await.unwrap();
    while !missing(&mut client, vec![shared.clone()]).await.contains(&shared) {
        assert!(std::time::Instant::now() < deadline + Duration::from_secs(15), "the shared upload went once unused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!object(&shared).exists());
    let m = coordinator.scrape().await;
    assert!(m.lines().any(|l| l == "stylefarm_retention_uploads_deleted_total 3"), "{m}");
    assert!(m.lines().any(|l| l == "stylefarm_retention_batches_deleted_total 2"), "{m}");
}
