//! The real binaries as processes: the coordinator killed with SIGKILL mid-batch
//! and restarted on the same data dir loses nothing; the `stylefarm` CLI's
//! commands, JSON output and exit codes.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stylefarm_coordinator_tests::farm::{batch_request, connect_retrying, sigkill, CoordinatorProcess, TestWorker};
use stylefarm_coordinator_tests::{sample, workspace_bin};
use stylefarm_proto as pb;

/// A test worker that survives the coordinator's death: every step is retried
/// against whatever address `url` holds now.
async fn resilient_worker(name: String, url: Arc<Mutex<String>>, acked: Arc<Mutex<BTreeMap<String, u32>>>, total: usize) {
    let current = || url.lock().unwrap().clone();
    let mut worker = TestWorker::register(connect_retrying(&current()).await, &name, 1 << 34).await;
    let mut connected_to = current();
    loop {
        if acked.lock().unwrap().len() >= total {
            return;
        }
        if connected_to != current() {
            connected_to = current();
            worker.api = stylefarm_coordinator_tests::farm::options(&connected_to, None).worker(connect_retrying(&connected_to).await).unwrap();
        }
        let request = pb::LeaseJobRequest { worker_id: worker.id.clone(), device: "cpu".into(), device_memory_bytes: worker.memory_bytes, wait_ms: 200 };
        let lease = match worker.api.lease_job(request).await {
            Ok(r) => r.into_inner().lease,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(lease) = lease else { continue };
        tokio::time::sleep(Duration::from_millis(30)).await; // "render"
                                                             // complete, retrying across a restart; a stale answer after a retry means it was committed
        loop {
            if connected_to != current() {
                connected_to = current();
                worker.api = stylefarm_coordinator_tests::farm::options(&connected_to, None).worker(connect_retrying(&connected_to).await).unwrap();
            }
            match worker.complete(&lease).await {
                Ok(()) => {
                    let previous = acked.lock().unwrap().insert(lease.job_id.clone(), lease.attempt);
                    assert!(previous.is_none(), "{} acknowledged twice", lease.job_id);
                    break;
                }
                Err(status) if status.code() == tonic::Code::FailedPrecondition => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_coordinator_restarts_and_the_batch_completes_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut coordinator = CoordinatorProcess::start(dir.path(), "127.0.0.1:0", 3000);
    let mut client = pb::coordinator_client::CoordinatorClient::new(connect_retrying(&coordinator.url).await);
    let total = 60;
    let batch = client.submit_batch(batch_request("kill-me", total, 0)).await.unwrap().into_inner();
    let url = Arc::new(Mutex::new(coordinator.url.clone()));
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let workers: Vec<_> = (0..3).map(|i| tokio::spawn(resilient_worker(format!("w{i}"), Arc::clone(&url), Arc::clone(&acked), total))).collect();
    while acked.lock().unwrap().len() < 15 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sigkill(&mut coordinator.child);
    let acked_before_kill: BTreeMap<String, u32> = acked.lock().unwrap().clone();
    let mut coordinator = CoordinatorProcess::start(dir.path(), "127.0.0.1:0", 3000);
    *url.lock().unwrap() = coordinator.url.clone();
    for worker in workers {
        tokio::time::timeout(Duration::from_secs(60), worker).await.expect("batch finishes after the restart").unwrap();
    }
    let mut client = pb::coordinator_client::CoordinatorClient::new(connect_retrying(&coordinator.url).await);
    let response = client.get_batch(pb::GetBatchRequest { batch_id: batch.batch_id.clone(), include_jobs: true }).await.unwrap().into_inner();
    let state = response.batch.as_ref().unwrap().state;
    assert_eq!(pb::BatchState::try_from(state).unwrap(), pb::BatchState::Succeeded, "{:?}", response.batch);
    assert_eq!(response.jobs.len(), total, "every accepted job is still there");
    let acked = acked.lock().unwrap().clone();
    for job in &response.jobs {
        assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
        let result = job.result.as_ref().unwrap();
        if let Some(attempt) = acked.get(&job.id) {
            assert!(result.prefix.ends_with(&format!("attempt-{attempt}/")), "the acknowledged attempt is the result: {job:?}");
        }
    }
    for (job, attempt) in &acked_before_kill {
        let stored = response.jobs.iter().find(|j| &j.id == job).unwrap();
        assert_eq!(stored.attempt, *attempt, "{job} was acknowledged before the kill and did not run again");
    }
    let ids: BTreeSet<&String> = response.jobs.iter().map(|j| &j.id).collect();
    assert_eq!(ids.len(), total, "no duplicates");
    coordinator.child.kill().ok();
}

fn stylefarm(url: &str, args: &[&str]) -> std::process::Output {
    let bin = workspace_bin("stylefarm-client", "stylefarm");
    Command::new(bin).args(args).env("STYLEFARM_COORDINATOR", url).output().expect("run stylefarm")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_submits_lists_watches_and_exits_with_meaningful_codes() {
    let dir = tempfile::tempdir().unwrap();
    let mut coordinator = CoordinatorProcess::start(dir.path(), "127.0.0.1:0", 3000);
    let url = coordinator.url.clone();
    let (chelsea, coffee, retina) = (sample("chelsea.png"), sample("coffee.png"), sample("retina.jpg"));
    let (chelsea, coffee, retina) = (chelsea.to_str().unwrap(), coffee.to_str().unwrap(), retina.to_str().unwrap());
    let out = stylefarm(
        &url,
        &["--json", "submit", "--content", chelsea, coffee, "--style", retina, "--size", "64", "--iterations", "7", "--label", "team=qa", "--priority", "3"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let submitted: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(submitted["batch_id"], "b1");
    assert_eq!(submitted["job_ids"].as_array().unwrap().len(), 2);
    // the same images again: nothing is uploaded twice
    let again = stylefarm(&url, &["submit", "--content", chelsea, "--style", retina]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("2 image(s) already on the coordinator"), "{}", String::from_utf8_lossy(&again.stderr));

    let status = stylefarm(&url, &["--json", "status", "b1"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["batch"]["labels"]["team"], "qa");
    assert_eq!(status["jobs"][0]["name"], "chelsea-x-retina");
    assert_eq!(status["jobs"][0]["params"]["iterations"], 7);
    assert_eq!(status["jobs"][1]["params"]["size"], 64);

    let list = stylefarm(&url, &["--json", "list", "--state", "queued"]);
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);

    // a worker finishes b1 while `watch` follows it
    let mut worker = TestWorker::register(connect_retrying(&url).await, "cli-test", 1 << 34).await;
    let watcher = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || stylefarm(&url, &["--json", "watch", "b1"]))
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = worker.lease(0).await.unwrap();
    worker.complete(&first).await.unwrap();
    let second = worker.lease(0).await.unwrap();
    worker.fail(&second, "corrupt content image", pb::AttemptStop::Failed).await.unwrap();
    let watched = watcher.await.unwrap();
    assert_eq!(watched.status.code(), Some(1), "a batch with a failed job: {}", String::from_utf8_lossy(&watched.stderr));
    let final_batch: serde_json::Value = serde_json::from_slice(&watched.stdout).unwrap();
    assert_eq!(final_batch["state"], "failed");
    assert_eq!(final_batch["counts"]["succeeded"], 1);

    let cancel = stylefarm(&url, &["cancel", "b2"]);
    assert!(String::from_utf8_lossy(&cancel.stdout).contains("cancelled 1 queued"));
    let workers = stylefarm(&url, &["workers"]);
    assert!(String::from_utf8_lossy(&workers.stdout).contains("cli-test"));

    let invalid = stylefarm(&url, &["submit", "--content", chelsea, "--style", retina, "--size", "100000"]);
    assert_eq!(invalid.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&invalid.stderr).contains("size"), "{}", String::from_utf8_lossy(&invalid.stderr));
    let missing = stylefarm(&url, &["submit", "--content", "/no/such.png", "--style", retina]);
    assert_eq!(missing.status.code(), Some(2));
    assert_eq!(stylefarm(&url, &["status", "b99"]).status.code(), Some(4));
    coordinator.child.kill().ok();
    coordinator.child.wait().ok();
    let down = stylefarm(&url, &["list"]);
    assert_eq!(down.status.code(), Some(3), "{}", String::from_utf8_lossy(&down.stderr));
}

fn coordinator_cli(data_dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(workspace_bin("stylefarm-coordinator", "stylefarm-coordinator")).args(args).arg("--data-dir").arg(data_dir).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_made_beside_a_running_coordinator_apply_at_once_and_sigterm_ends_it_with_watchers_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut coordinator = CoordinatorProcess::start(dir.path(), "127.0.0.1:0", 3000);
    let url = coordinator.url.clone();
    // open until the first token exists
    assert!(stylefarm(&url, &["list"]).status.success());
    let created = coordinator_cli(dir.path(), &["token", "create", "--role", "submit", "--name", "alice"]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let token = String::from_utf8(created.stdout).unwrap();
    assert_eq!(token.lines().count(), 1, "only the token on stdout");
    assert!(token.starts_with("sf1_"));
    let token_file = dir.path().join("alice.token");
    std::fs::write(&token_file, &token).unwrap();
    let no_token = stylefarm(&url, &["list"]);
    assert_eq!(no_token.status.code(), Some(7), "{}", String::from_utf8_lossy(&no_token.stderr));
    let retina = sample("retina.jpg");
    let tf = token_file.to_str().unwrap();
    let out =
        stylefarm(&url, &["--token-file", tf, "--json", "submit", "--content", retina.to_str().unwrap(), "--style", retina.to_str().unwrap(), "--size", "32"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = coordinator_cli(dir.path(), &["token", "list", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed[0]["name"], "alice");
    assert!(!listed.to_string().contains(token.trim()), "the list never shows a token");
    let workers = stylefarm(&url, &["--token-file", tf, "workers"]);
    assert_eq!(workers.status.code(), Some(7), "workers are the admin's");
    // a watcher holds a stream open; SIGTERM still ends the coordinator quickly
    let watcher = {
        let (url, tf) = (url.clone(), tf.to_string());
        std::thread::spawn(move || stylefarm(&url, &["--token-file", &tf, "watch", "b1"]))
    };
    std::thread::sleep(Duration::from_millis(500));
    assert!(coordinator_cli(dir.path(), &["token", "revoke", "alice"]).status.success());
    assert_eq!(stylefarm(&url, &["--token-file", tf, "list"]).status.code(), Some(7), "revoked at once");
    let started = std::time::Instant::now();
    unsafe { libc::kill(coordinator.child.id() as i32, libc::SIGTERM) };
    let status = loop {
        if let Some(status) = coordinator.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "still running 10 s after SIGTERM with a watch open");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    // the watcher reconnects to the restarted coordinator, which refuses the revoked token
    let _restarted = CoordinatorProcess::start(dir.path(), &coordinator.addr, 3000);
    let watched = watcher.join().unwrap();
    let stderr = String::from_utf8_lossy(&watched.stderr);
    assert!(stderr.contains("reconnecting"), "{stderr}");
    assert_eq!(watched.status.code(), Some(7), "refused after the reconnect: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_and_a_worker_carry_on_across_a_coordinator_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut coordinator = CoordinatorProcess::start(dir.path(), "127.0.0.1:0", 3000);
    let url = coordinator.url.clone();
    let retina = sample("retina.jpg");
    let retina = retina.to_str().unwrap();
    let out = stylefarm(&url, &["submit", "--content", retina, "--style", retina, "--size", "32"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut worker = TestWorker::register(connect_retrying(&url).await, "restart-test", 1 << 34).await;
    let watcher = {
        let url = url.clone();
        std::thread::spawn(move || stylefarm(&url, &["--json", "watch", "b1"]))
    };
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(coordinator.child.id() as i32, libc::SIGTERM) };
    assert!(coordinator.child.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!watcher.is_finished(), "the watch waits for the coordinator to come back");
    let _restarted = CoordinatorProcess::start(dir.path(), &coordinator.addr, 3000);
    // the same worker (same channel, same id) leases and completes on the new process
    let started = std::time::Instant::now();
    let lease = loop {
        let request = pb::LeaseJobRequest { worker_id: worker.id.clone(), device: "cpu".into(), device_memory_bytes: 1 << 34, wait_ms: 500 };
        match worker.api.lease_job(request).await {
            Ok(r) if r.get_ref().lease.is_some() => break r.into_inner().lease.unwrap(),
            Ok(_) => {}
            // the old connection is gone: the channel reconnects on a later call
            Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no lease from the restarted coordinator");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    worker.complete(&lease).await.unwrap();
    let watched = watcher.join().unwrap();
    let stderr = String::from_utf8_lossy(&watched.stderr);
    assert_eq!(watched.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("reconnected"), "{stderr}");
    let batch: serde_json::Value = serde_json::from_slice(&watched.stdout).unwrap();
    assert_eq!(batch["state"], "succeeded");
}

/// `init` makes a CA, a certificate and tokens once; a coordinator given them
/// serves beyond loopback with TLS and tokens (no --insecure), and one whose
/// tokens cannot be read does not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_makes_a_closed_deployment_and_unreadable_tokens_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bootstrap");
    let init = Command::new(workspace_bin("stylefarm-coordinator", "stylefarm-coordinator"))
        .args(["init", "--hosts", "stylefarm-coordinator,localhost", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let path = |p: &str| out.join(p).to_str().unwrap().to_string();
    let data = dir.path().join("data");
    let flags = [
        "--auth",
        "required",
        "--tokens-from",
        &path("coordinator/tokens"),
        "--tls-cert",
        &path("coordinator/tls/server.crt"),
        "--tls-key",
        &path("coordinator/tls/server.key"),
    ];
    let coordinator = CoordinatorProcess::start_with(&data, "0.0.0.0:0", 3000, &flags);
    let port = coordinator.addr.rsplit(':').next().unwrap().to_string();
    let read = |p: &str| std::fs::read_to_string(out.join(p)).unwrap().trim().to_string();
    let connect = |token: Option<String>| stylefarm_proto::connect::ConnectOptions {
        url: format!("https://localhost:{port}"),
        token,
        tls_ca: Some(out.join("admin/ca.crt")),
        tls_identity: None,
    };
    let channel = connect(None).endpoint().unwrap().connect().await.expect("TLS with the CA init made");
    let mut admin = connect(Some(read("admin/token"))).coordinator(channel.clone()).unwrap();
    admin.list_workers(pb::ListWorkersRequest::default()).await.expect("the admin token init made is the coordinator's");
    let mut nobody = connect(None).coordinator(channel.clone()).unwrap();
    assert_eq!(nobody.list_batches(pb::ListBatchesRequest::default()).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    let api = connect(Some(read("worker/token"))).worker(channel).unwrap();
    TestWorker::try_register(api, "gpu-1", 1 << 30, None).await.expect("the worker token init made registers");
    drop(coordinator);
    // tokens the coordinator cannot read stop it: it never opens up instead
    let refused = |data: &std::path::Path, extra: &[&str]| {
        let run = Command::new(workspace_bin("stylefarm-coordinator", "stylefarm-coordinator"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .args(extra)
            .output()
            .unwrap();
        assert!(!run.status.success(), "it started");
        String::from_utf8_lossy(&run.stderr).to_string()
    };
    let stderr = refused(&data, &["--tokens-from", &path("nowhere")]);
    assert!(stderr.contains("nowhere"), "{stderr}");
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("auth.sqlite"), vec![0x5a; 8192]).unwrap();
    let stderr = refused(&broken, &[]);
    assert!(stderr.contains("token store"), "{stderr}");
}
