//! Chaos, as an operator lives it: a 30-job batch on two real workers (CPU
//! renders) while, at random, either worker or the coordinator is SIGKILLed
//! and restarted, and the batch is paused (both modes) and resumed,
//! reprioritised, and has jobs cancelled and retried. Afterwards every job
//! has succeeded exactly once (one succeeded attempt, its result that
//! attempt's), with an output PNG in the store that decodes; nothing waits
//! for ever on a blocklist. `STYLEFARM_CHAOS_SEED` picks another run.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stylefarm_coordinator_tests::farm::{connect_retrying, options, sha_ref, sigkill, start_worker_process, upload_file, Client, CoordinatorProcess};
use stylefarm_coordinator_tests::sample;
use stylefarm_proto as pb;

const JOBS: usize = 30;
const EVENTS: usize = 18;
const LEASE_TTL_MS: u32 = 2_000;

/// The farm under test: the coordinator's data dir and address stay the same
/// across its restarts, and each worker keeps its name and work dir (so its id).
struct Chaos {
    dir: PathBuf,
    data: PathBuf,
    addr: String,
    coordinator: CoordinatorProcess,
    workers: [Child; 2],
    client: Client,
    started: Instant,
}

async fn client_for(addr: &str) -> Client {
    options("http://x", None).coordinator(connect_retrying(&format!("http://{addr}")).await).unwrap()
}

impl Chaos {
    async fn start(dir: &Path) -> Chaos {
        let data = dir.join("data");
        let coordinator = CoordinatorProcess::start(&data, "127.0.0.1:0", LEASE_TTL_MS);
        let addr = coordinator.addr.clone();
        let url = format!("http://{addr}");
        let workers = [0, 1].map(|i| start_worker_process(&url, &format!("chaos-{i}"), &dir.join(format!("w{i}"))));
        let client = client_for(&addr).await;
        Chaos { dir: dir.to_path_buf(), data, addr, coordinator, workers, client, started: Instant::now() }
    }

    fn say(&self, what: &str) {
        eprintln!("chaos {:>6.1}s: {what}", self.started.elapsed().as_secs_f64());
    }

    async fn kill_worker(&mut self, i: usize, down: Duration) {
        self.say(&format!("SIGKILL worker {i}, back in {down:?}"));
        sigkill(&mut self.workers[i]);
        tokio::time::sleep(down).await;
        self.workers[i] = start_worker_process(&format!("http://{}", self.addr), &format!("chaos-{i}"), &self.dir.join(format!("w{i}")));
    }

    async fn kill_coordinator(&mut self, down: Duration) {
        self.say(&format!("SIGKILL coordinator, back in {down:?}"));
        sigkill(&mut self.coordinator.child);
        tokio::time::sleep(down).await;
        // same data dir and address: the workers reconnect by themselves
        self.coordinator = CoordinatorProcess::start(&self.data, &self.addr, LEASE_TTL_MS);
        self.client = client_for(&self.addr).await;
    }

    async fn jobs(&mut self, batch: &str) -> (pb::Batch, Vec<pb::Job>) {
        let r = self.client.get_batch(pb::GetBatchRequest { batch_id: batch.into(), include_jobs: true }).await.expect("get batch").into_inner();
        (r.batch.unwrap(), r.jobs)
    }
}

impl Drop for Chaos {
    fn drop(&mut self) {
        for w in &mut self.workers {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// A control's answer: done, or refused for a reason the moment explains
/// (the job already ended, the batch is not paused...). Anything else fails.
fn allowed<T: std::fmt::Debug>(chaos: &Chaos, what: &str, answer: Result<tonic::Response<T>, tonic::Status>) {
    match answer {
        Ok(_) => chaos.say(&format!("{what}: ok")),
        Err(s) if s.code() == tonic::Code::FailedPrecondition => chaos.say(&format!("{what}: refused: {}", s.message())),
        Err(s) => panic!("{what}: {s:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_ends_once_with_its_output_through_kills_and_controls() {
    let seed: u64 = std::env::var("STYLEFARM_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut rng = StdRng::seed_from_u64(seed);
    eprintln!("chaos: seed {seed} (STYLEFARM_CHAOS_SEED)");
    let dir = tempfile::tempdir().unwrap();
    let mut chaos = Chaos::start(dir.path()).await;
    let chelsea = upload_file(&mut chaos.client, &sample("chelsea.png")).await;
    let retina = upload_file(&mut chaos.client, &sample("retina.jpg")).await;
    let request = pb::SubmitBatchRequest {
        name: "chaos".into(),
        jobs: (0..JOBS)
            .map(|i| pb::JobSpec {
                name: format!("job-{i}"),
                content: Some(sha_ref(&chelsea)),
                styles: vec![sha_ref(&retina)],
                settings: Some(pb::RenderSettings { size: Some(48), iterations: Some(20), seed: Some(i as u64), ..Default::default() }),
                requires: Vec::new(),
            })
            .collect(),
        // kills expire leases; expiries are not the job's fault, but they do use attempts
        max_attempts: 20,
        ..Default::default()
    };
    let batch = chaos.client.submit_batch(request).await.unwrap().into_inner().batch_id;
    let mut cancelled: Vec<String> = Vec::new();

    for _ in 0..EVENTS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(700..2_500))).await;
        let down = Duration::from_millis(rng.random_range(200..1_500));
        match rng.random_range(0..10) {
            0..=2 => chaos.kill_worker(rng.random_range(0..2), down).await,
            3 => chaos.kill_coordinator(down).await,
            4 => {
                let mode = if rng.random_bool(0.5) { pb::PauseMode::HandBackNow } else { pb::PauseMode::FinishRunning };
                let answer = chaos.client.pause_batch(pb::PauseBatchRequest { batch_id: batch.clone(), mode: mode as i32 }).await;
                allowed(&chaos, &format!("pause {mode:?}"), answer);
                tokio::time::sleep(down).await;
                let answer = chaos.client.resume_batch(pb::ResumeBatchRequest { batch_id: batch.clone() }).await;
                allowed(&chaos, "resume", answer);
            }
            5 | 6 => {
                let priority = rng.random_range(-100..=100);
                let answer = chaos.client.set_batch_priority(pb::SetBatchPriorityRequest { batch_id: batch.clone(), priority }).await;
                allowed(&chaos, &format!("priority {priority}"), answer);
            }
            7 | 8 => {
                let (_, jobs) = chaos.jobs(&batch).await;
                let open: Vec<&pb::Job> = jobs.iter().filter(|j| j.state == pb::JobState::Queued as i32 || j.state == pb::JobState::Running as i32).collect();
                if let Some(job) = open.get(rng.random_range(0..open.len().max(1))) {
                    let id = job.id.clone();
                    let answer = chaos.client.cancel_job(pb::CancelJobRequest { job_id: id.clone() }).await;
                    allowed(&chaos, &format!("cancel {id}"), answer);
                    cancelled.push(id);
                }
            }
            _ => {
                if let Some(id) = cancelled.first().cloned() {
                    let answer = chaos.client.retry(pb::RetryRequest { batch_id: batch.clone(), job_id: id.clone() }).await;
                    if answer.is_ok() {
                        cancelled.remove(0);
                    }
                    allowed(&chaos, &format!("retry {id}"), answer);
                }
            }
        }
    }

    // calm: resume if paused, run again what was cancelled, and wait for the end
    chaos.say("calm");
    let _ = chaos.client.resume_batch(pb::ResumeBatchRequest { batch_id: batch.clone() }).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    let jobs = loop {
        let (b, jobs) = chaos.jobs(&batch).await;
        for job in jobs.iter().filter(|j| j.state == pb::JobState::Cancelled as i32) {
            let answer = chaos.client.retry(pb::RetryRequest { batch_id: batch.clone(), job_id: job.id.clone() }).await;
            allowed(&chaos, &format!("retry {}", job.id), answer);
        }
        if b.finished_at_ms != 0 && jobs.iter().all(|j| j.state == pb::JobState::Succeeded as i32) {
            break jobs;
        }
        let stuck: Vec<(String, i32, String)> =
            jobs.iter().filter(|j| j.state != pb::JobState::Succeeded as i32).map(|j| (j.name.clone(), j.state, j.waiting_reason.clone())).collect();
        assert!(Instant::now() < deadline, "not every job ended: {b:?}\n{stuck:#?}");
        assert!(jobs.iter().all(|j| j.state != pb::JobState::Failed as i32), "a job failed: {jobs:#?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    chaos.say("every job succeeded");

    assert_eq!(jobs.len(), JOBS, "nothing lost");
    let mut attempts = 0;
    for job in &jobs {
        let full = chaos.client.get_job(pb::GetJobRequest { job_id: job.id.clone() }).await.unwrap().into_inner();
        let succeeded: Vec<&pb::Attempt> = full.attempts.iter().filter(|a| a.outcome == "succeeded").collect();
        assert_eq!(succeeded.len(), 1, "{} ended once: {:#?}", job.name, full.attempts);
        assert_eq!(succeeded[0].attempt, full.attempt, "the result is the last attempt's: {full:#?}");
        let result = full.result.as_ref().expect("a result");
        let committed = format!("attempt-{}/", full.attempt);
        assert!(result.prefix.ends_with(&committed), "{result:?}");
        let png = result.outputs.iter().find(|o| o.key.ends_with("output.png")).unwrap_or_else(|| panic!("no output.png: {result:?}"));
        assert!(png.key.contains(&committed), "{png:?}");
        let image = image::open(chaos.data.join("objects").join(&png.key)).unwrap_or_else(|e| panic!("{}: {e}", png.key));
        assert_eq!(image.width().max(image.height()), 48, "{}", png.key);
        attempts += full.attempts.len();
    }
    chaos.say(&format!("{JOBS} jobs, {attempts} attempts in all"));
}
