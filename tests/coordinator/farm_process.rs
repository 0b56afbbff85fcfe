//! The farm as processes: kill -9 a worker mid-job, kill -9 the coordinator
//! mid-batch; every job completes once and only committed attempts count.

use std::time::{Duration, Instant};

use stylefarm_coordinator_tests::farm::{
    connect_retrying, sha_ref, sigkill, start_worker_process, test_config, upload_file, wait_batch, Client, Coordinator, CoordinatorProcess,
};
use stylefarm_coordinator_tests::sample;
use stylefarm_proto as pb;

fn batch(chelsea: &str, retina: &str, jobs: usize, iterations: u32) -> pb::SubmitBatchRequest {
    pb::SubmitBatchRequest {
        name: "processes".into(),
        jobs: (0..jobs)
            .map(|i| pb::JobSpec {
                name: format!("job-{i}"),
                content: Some(sha_ref(chelsea)),
                styles: vec![sha_ref(retina)],
                settings: Some(pb::RenderSettings { size: Some(48), iterations: Some(iterations), seed: Some(i as u64), ..Default::default() }),
                requires: Vec::new(),
            })
            .collect(),
        ..Default::default()
    }
}

async fn running_job_with_progress(client: &mut Client, batch: &str, timeout: Duration) -> pb::Job {
    let deadline = Instant::now() + timeout;
    loop {
        let jobs = client.get_batch(pb::GetBatchRequest { batch_id: batch.into(), include_jobs: true }).await.unwrap().into_inner().jobs;
        if let Some(job) = jobs.into_iter().find(|j| j.state == pb::JobState::Running as i32 && j.progress.as_ref().is_some_and(|p| p.iteration >= 2)) {
            return job;
        }
        assert!(Instant::now() < deadline, "no job made progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_job_runs_again_elsewhere_and_only_that_attempt_counts() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    let chelsea = upload_file(&mut client, &sample("chelsea.png")).await;
    let retina = upload_file(&mut client, &sample("retina.jpg")).await;
    let submitted = client.submit_batch(batch(&chelsea, &retina, 3, 40)).await.unwrap().into_inner();
    let mut doomed = start_worker_process(&coordinator.url, "doomed", &dir.path().join("w1"));
    let victim = running_job_with_progress(&mut client, &submitted.batch_id, Duration::from_secs(120)).await;
    sigkill(&mut doomed);
    let mut rescuer = start_worker_process(&coordinator.url, "rescuer", &dir.path().join("w2"));
    let (done, jobs) = wait_batch(&mut client, &submitted.batch_id, Duration::from_secs(240)).await;
    rescuer.kill().ok();
    rescuer.wait().ok();
    assert_eq!(pb::BatchState::try_from(done.state).unwrap(), pb::BatchState::Succeeded, "{jobs:?}");
    assert_eq!(done.counts.unwrap().succeeded, 3, "every job completes once");
    let rerun = jobs.iter().find(|j| j.id == victim.id).unwrap();
    assert_eq!(rerun.attempt, victim.attempt + 1, "{rerun:?}");
    let result = rerun.result.as_ref().unwrap();
    let committed = format!("attempt-{}/", rerun.attempt);
    assert!(result.prefix.ends_with(&committed));
    assert!(result.outputs.iter().all(|o| o.key.contains(&committed)), "the dead attempt's outputs are never the result: {result:?}");
    assert!(rerun.error.contains("expired"), "the dead attempt's fate is recorded: {}", rerun.error);
}

async fn client_for(addr: &str) -> Client {
    stylefarm_coordinator_tests::farm::options("http://x", None).coordinator(connect_retrying(&format!("http://{addr}")).await).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_coordinator_restarts_and_the_batch_completes_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut coordinator = CoordinatorProcess::start(&data, "127.0.0.1:0", 4000);
    let addr = coordinator.addr.clone();
    let mut client = client_for(&addr).await;
    let chelsea = upload_file(&mut client, &sample("chelsea.png")).await;
    let retina = upload_file(&mut client, &sample("retina.jpg")).await;
    let submitted = client.submit_batch(batch(&chelsea, &retina, 4, 30)).await.unwrap().into_inner();
    let mut worker = start_worker_process(&format!("http://{addr}"), "survivor", &dir.path().join("w"));
    running_job_with_progress(&mut client, &submitted.batch_id, Duration::from_secs(120)).await;
    sigkill(&mut coordinator.child);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // same data dir, same address: the worker reconnects by itself
    let mut coordinator = CoordinatorProcess::start(&data, &addr, 4000);
    let mut client = client_for(&addr).await;
    let (done, jobs) = wait_batch(&mut client, &submitted.batch_id, Duration::from_secs(240)).await;
    worker.kill().ok();
    worker.wait().ok();
    coordinator.child.kill().ok();
    coordinator.child.wait().ok();
    assert_eq!(pb::BatchState::try_from(done.state).unwrap(), pb::BatchState::Succeeded, "{jobs:?}");
    assert_eq!(jobs.len(), 4, "nothing lost");
    for job in &jobs {
        assert_eq!(job.attempt, 1, "nothing ran twice: {job:?}");
        let result = job.result.as_ref().unwrap();
        for output in &result.outputs {
            assert!(data.join("objects").join(&output.key).is_file(), "{}", output.key);
        }
    }
}
