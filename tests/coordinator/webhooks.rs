//! Webhooks against a real HTTP receiver (axum, in the test): what arrives,
//! signed how (checked here with the hmac crate, not the coordinator's
//! code), retried after a 500 with the same delivery id, given up when a
//! target stays down, refused at submit when not allowlisted, and delivered
//! after the coordinator is SIGKILLed while the receiver was down.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use stylefarm_coordinator::notify::AllowEntry;
use stylefarm_coordinator_tests::farm::*;
use stylefarm_proto as pb;

const KEY: &str = "webhook-test-key-0123456789";

/// One POST as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    event: String,
    delivery: String,
    signature: String,
    body: serde_json::Value,
    raw: Bytes,
}

/// Answers each POST to `/hooks/NAME` with the status `script(NAME, n)`
/// gives, n counting that name's earlier POSTs.
struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Received>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

type Script = fn(&str, usize) -> u16;

#[derive(Clone)]
struct Shared {
    seen: Arc<Mutex<Vec<Received>>>,
    script: Script,
}

impl Receiver {
    async fn start(addr: &str, script: Script) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind the receiver");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new().route("/hooks/{name}", axum::routing::post(receive)).with_state(Shared { seen: seen.clone(), script });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap()
        });
        Receiver { addr, seen, stop: Some(stop) }
    }

    fn url(&self, name: &str) -> String {
        format!("http://{}/hooks/{name}", self.addr)
    }

    fn seen(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `count` POSTs to `name` have arrived.
    async fn wait_for(&self, name: &str, count: usize, timeout: Duration) -> Vec<Received> {
        let path = format!("/hooks/{name}");
        let arrived = eventually(timeout, || async { self.seen().iter().filter(|r| r.path == path).count() >= count }).await;
        let seen: Vec<Received> = self.seen().into_iter().filter(|r| r.path == path).collect();
        assert!(arrived, "{count} POSTs to {name} expected within {timeout:?}; got {seen:#?}");
        seen
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn receive(State(shared): State<Shared>, UrlPath(name): UrlPath<String>, headers: HeaderMap, raw: Bytes) -> StatusCode {
    let header = |h: &str| headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let path = format!("/hooks/{name}");
    let mut seen = shared.seen.lock().unwrap();
    let n = seen.iter().filter(|r| r.path == path).count();
    seen.push(Received {
        path,
        event: header("stylefarm-event"),
        delivery: header("stylefarm-delivery"),
        signature: header("stylefarm-signature"),
        body: serde_json::from_slice(&raw).unwrap_or(serde_json::Value::Null),
        raw,
    });
    StatusCode::from_u16((shared.script)(&name, n)).unwrap()
}

/// Checks `t=SECS,v1=HEX` as a receiver would: HMAC-SHA256 with the key over
/// `SECS.BODY`, and a time within a minute of now.
fn assert_signed(r: &Received, key: &str) {
    let (t, v1) = r.signature.split(',').fold((None, None), |(t, v), part| match part.split_once('=') {
        Some(("t", x)) => (Some(x.to_string()), v),
        Some(("v1", x)) => (t, Some(x.to_string())),
        _ => (t, v),
    });
    let (t, v1) = (t.expect("a t= part"), v1.expect("a v1= part"));
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(&r.raw);
    assert_eq!(hex::encode(mac.finalize().into_bytes()), v1, "the signature of {r:?}");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((now - t.parse::<i64>().unwrap()).abs() < 60, "signed at {t}, now {now}");
    let mut wrong = Hmac::<Sha256>::new_from_slice(b"another-key-0123456789").unwrap();
    wrong.update(t.as_bytes());
    wrong.update(b".");
    wrong.update(&r.raw);
    assert_ne!(hex::encode(wrong.finalize().into_bytes()), v1);
}

fn key_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("webhook.key");
    std::fs::write(&path, format!("{KEY}\n")).unwrap();
    path
}

fn notified(name: &str, n: usize, notify: Vec<String>, on: pb::NotifyOn) -> pb::SubmitBatchRequest {
    pb::SubmitBatchRequest { notify, notify_on: on as i32, max_attempts: 1, ..batch_request(name, n, 0) }
}

fn metric(scrape: &str, series: &str) -> f64 {
    scraped(scrape, series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_ends_and_failures_are_posted_signed_retried_after_a_500_and_given_up_when_a_target_stays_down() {
    // `flaky` answers 500 once, then 200; `down` always 500
    let receiver = Receiver::start("127.0.0.1:0", |name, n| match (name, n) {
        ("flaky", 0) | ("down", _) => 500,
        _ => 200,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    config.webhooks.allow = vec![AllowEntry { prefix: format!("http://{}/hooks/", receiver.addr), secret_file: Some(key_file(dir.path())) }];
    config.webhooks.give_up_after = Some("3s".parse().unwrap());
    let coordinator = Coordinator::start(config).await;
    let mut client = coordinator.client().await;

    // refused at submit, naming the field; nothing queued
    for (url, why) in [
        ("http://127.0.0.1:9/hooks/x".to_string(), "under no allowed webhook prefix"),
        (format!("http://{}/elsewhere/x", receiver.addr), "under no allowed webhook prefix"),
        ("not a url".to_string(), "notify[0]"),
    ] {
        let refused = client.submit_batch(notified("refused", 1, vec![url.clone()], pb::NotifyOn::BatchEnd)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{url}: {refused:?}");
        assert!(refused.message().contains("notify[0]") && refused.message().contains(why), "{url}: {}", refused.message());
    }
    let list = client.list_batches(pb::ListBatchesRequest::default()).await.unwrap().into_inner();
    assert!(list.batches.is_empty(), "a refused submit queues nothing: {list:?}");

    // one failure then one success; the flaky target is told about both, the
    // down one about the end only
    let flaky = receiver.url("flaky");
    let down = receiver.url("down");
    let batch = client.submit_batch(notified("nightly", 2, vec![flaky.clone(), flaky.clone()], pb::NotifyOn::Failures)).await.unwrap().into_inner().batch_id;
    let quiet = client.submit_batch(notified("quiet", 1, vec![down.clone()], pb::NotifyOn::BatchEnd)).await.unwrap().into_inner().batch_id;
    let (shown, _) = get_batch(&mut client, &batch).await;
    assert_eq!((shown.notify.clone(), shown.notify_on), (vec![flaky.clone()], pb::NotifyOn::Failures as i32), "a URL named twice is told once");

    let mut worker = coordinator.worker("w", 8 << 30).await;
    let mut leases = Vec::new();
    while let Some(lease) = worker.lease(500).await {
        leases.push(lease);
    }
    assert_eq!(leases.len(), 3);
    let mut failed_one = false;
    for lease in &leases {
        if lease.batch_id == batch && !failed_one {
            failed_one = true;
            assert!(!worker.fail(lease, "the content is not an image", pb::AttemptStop::Failed).await.unwrap());
        } else {
            worker.complete(lease).await.unwrap();
        }
    }

    // job.failed: 500, then again with the same delivery id; batch.finished once
    let got = receiver.wait_for("flaky", 3, Duration::from_secs(20)).await;
    let failed: Vec<&Received> = got.iter().filter(|r| r.event == "job.failed").collect();
    let finished: Vec<&Received> = got.iter().filter(|r| r.event == "batch.finished").collect();
    assert!(failed.len() >= 2 && !finished.is_empty(), "{got:#?}");
    assert_eq!(failed[0].delivery, failed[1].delivery, "a retry is the same delivery");
    assert_ne!(failed[0].delivery, finished[0].delivery);
    for r in &got {
        assert_signed(r, KEY);
        assert_eq!(r.body["event"], r.event.as_str());
        assert_eq!(r.body["batch"]["id"], batch.as_str());
        assert_eq!(r.body["batch"]["name"], "nightly");
    }
    assert_eq!(failed[0].body["job"]["reason"], "the content is not an image", "{:#}", failed[0].body);
    assert_eq!(finished[0].body["batch"]["state"], "failed", "{:#}", finished[0].body);
    assert_eq!(finished[0].body["batch"]["counts"]["succeeded"], 1);
    assert_eq!(finished[0].body["batch"]["counts"]["failed"], 1);

    // the down target: tried until 3 s after the event, then given up
    let tries = receiver.wait_for("down", 2, Duration::from_secs(20)).await;
    assert!(tries.iter().all(|r| r.event == "batch.finished" && r.body["batch"]["id"] == quiet.as_str()), "{tries:#?}");
    let settled = eventually(Duration::from_secs(20), || async {
        let m = coordinator.scrape().await;
        metric(&m, "stylefarm_webhook_deliveries_total{outcome=\"given_up\"}") == 1.0 && metric(&m, "stylefarm_webhook_outbox") == 0.0
    })
    .await;
    let m = coordinator.scrape().await;
    assert!(settled, "the down target given up, the outbox empty:\n{m}");
    assert_eq!(metric(&m, "stylefarm_webhook_deliveries_total{outcome=\"delivered\"}"), 2.0, "{m}");
    let retried = metric(&m, "stylefarm_webhook_deliveries_total{outcome=\"retried\"}");
    let down_tries = receiver.seen().iter().filter(|r| r.path == "/hooks/down").count() as f64;
    // one retry of flaky, and every down try but the last (given up)
    assert_eq!(retried, 1.0 + (down_tries - 1.0), "{m}");
    // nothing more is sent once given up
    let before = receiver.seen().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.seen().len(), before);
    coordinator.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_owed_when_the_coordinator_is_killed_arrives_after_its_restart() {
    // a port with nobody on it yet: every try is refused
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let receiver_addr = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let data = dir.path().join("data");
    let allow = format!("http://{receiver_addr}/hooks/");
    let flags = ["--webhook-allow", allow.as_str(), "--webhook-secret-file", key.to_str().unwrap()];
    let mut first = CoordinatorProcess::start_with(&data, "127.0.0.1:0", 2_000, &flags);
    let mut client = options(&first.url, None).coordinator(connect_retrying(&first.url).await).unwrap();
    let hook = format!("http://{receiver_addr}/hooks/night");
    let batch = client.submit_batch(notified("night", 2, vec![hook], pb::NotifyOn::BatchEnd)).await.unwrap().into_inner().batch_id;
    let mut worker = TestWorker::register(connect_retrying(&first.url).await, "w", 8 << 30).await;
    for _ in 0..2 {
        let lease = worker.lease(2_000).await.expect("a job");
        worker.complete(&lease).await.unwrap();
    }
    let (b, _) = wait_batch(&mut client, &batch, Duration::from_secs(10)).await;
    assert_eq!(b.state, pb::BatchState::Succeeded as i32);
    // the end is committed (and the delivery it owes with it); the first try
    // is refused (nobody listens); then the coordinator dies
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    sigkill(&mut first.child);

    let receiver = Receiver::start(&receiver_addr, |_, _| 200).await;
    let second = CoordinatorProcess::start_with(&data, "127.0.0.1:0", 2_000, &flags);
    let got = receiver.wait_for("night", 1, Duration::from_secs(20)).await;
    assert_eq!(got[0].event, "batch.finished");
    assert_eq!(got[0].body["batch"]["id"], batch.as_str());
    assert_eq!(got[0].body["batch"]["state"], "succeeded");
    assert_eq!(got[0].body["batch"]["counts"]["succeeded"], 2);
    assert_signed(&got[0], KEY);
    // delivered: not sent again
    tokio::time::sleep(Duration::from_secs(3)).await;
    let all = receiver.seen();
    assert!(all.iter().all(|r| r.delivery == got[0].delivery), "{all:#?}");
    assert_eq!(all.len(), 1, "{all:#?}");
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_owed_is_given_up_once_no_url_is_allowed() {
    // nobody listens here: the first try fails and the delivery stays owed
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    config.webhooks.allow = vec![AllowEntry { prefix: format!("http://127.0.0.1:{port}/hooks/"), secret_file: Some(key_file(dir.path())) }];
    let coordinator = Coordinator::start(config).await;
    let mut client = coordinator.client().await;
    let hook = format!("http://127.0.0.1:{port}/hooks/x");
    let batch = client.submit_batch(notified("owed", 1, vec![hook], pb::NotifyOn::BatchEnd)).await.unwrap().into_inner().batch_id;
    let mut worker = coordinator.worker("w", 8 << 30).await;
    let lease = worker.lease(1_000).await.expect("a job");
    worker.complete(&lease).await.unwrap();
    wait_batch(&mut client, &batch, Duration::from_secs(10)).await;
    let tried = eventually(Duration::from_secs(10), || async {
        let m = coordinator.scrape().await;
        metric(&m, "stylefarm_webhook_deliveries_total{outcome=\"retried\"}") >= 1.0 && metric(&m, "stylefarm_webhook_outbox") == 1.0
    })
    .await;
    assert!(tried, "{}", coordinator.scrape().await);
    coordinator.stop().await.unwrap();

    // the operator turns webhooks off: the owed delivery is given up at start, counted
    let mut config = test_config(dir.path());
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let coordinator = Coordinator::start(config).await;
    let given_up = eventually(Duration::from_secs(10), || async {
        metric(&coordinator.scrape().await, "stylefarm_webhook_deliveries_total{outcome=\"given_up\"}") == 1.0
    })
    .await;
    assert!(given_up, "{}", coordinator.scrape().await);
    let owed: i64 =
        rusqlite::Connection::open(dir.path().join("state.sqlite")).unwrap().query_row("SELECT COUNT(*) FROM webhook_outbox", [], |row| row.get(0)).unwrap();
    assert_eq!(owed, 0);
    coordinator.stop().await.unwrap();
}
