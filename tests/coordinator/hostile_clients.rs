//! Hostile clients against the real coordinator process: connections that
//! send most of a near-limit message and then stall, with no token or with
//! one, must leave its memory bounded and its service to others unaffected.

use std::time::{Duration, Instant};

use bytes::Bytes;
use stylefarm_coordinator_tests::farm::{connect_retrying, options, Client, CoordinatorProcess};
use stylefarm_coordinator_tests::workspace_bin;
use stylefarm_proto as pb;
use tonic::Code;

/// The coordinator's resident memory, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc/PID/status");
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// A `SubmitBatch` sent over its own raw HTTP/2 connection whose gRPC frame
/// declares `declared` bytes, of which `sent` are sent before it stalls.
struct Stalled {
    _send: h2::SendStream<Bytes>,
    response: h2::client::ResponseFuture,
}

impl Stalled {
    async fn start(addr: &str, token: Option<&str>, declared: u32, sent: usize) -> Stalled {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut client = client.ready().await.unwrap();
        let mut request = http::Request::post(format!("http://{addr}/stylefarm.v1.Coordinator/SubmitBatch"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let (response, mut send) = client.send_request(request.body(()).unwrap(), false).unwrap();
        let mut frame = Vec::with_capacity(5 + sent);
        frame.push(0u8);
        frame.extend_from_slice(&declared.to_be_bytes());
        frame.resize(5 + sent, 0x0a);
        send.reserve_capacity(frame.len());
        let _ = send.send_data(Bytes::from(frame), false);
        Stalled { _send: send, response }
    }

    /// The call's gRPC status code if the server answered within `wait`
    /// (from the headers of a trailers-only answer, or the trailers).
    async fn answer(self, wait: Duration) -> Option<String> {
        let Stalled { _send, response } = self;
        let response = tokio::time::timeout(wait, response).await.ok()?.ok()?;
        if let Some(code) = response.headers().get("grpc-status") {
            return Some(code.to_str().unwrap().to_string());
        }
        let mut body = response.into_body();
        while body.data().await.is_some_and(|d| d.is_ok()) {}
        let trailers = tokio::time::timeout(wait, body.trailers()).await.ok()?.ok()??;
        trailers.get("grpc-status").map(|v| v.to_str().unwrap().to_string())
    }
}

fn create_token(data_dir: &std::path::Path, name: &str, role: &str) -> String {
    let out = std::process::Command::new(workspace_bin("stylefarm-coordinator", "stylefarm-coordinator"))
        .args(["token", "create", "--role", role, "--name", name, "--data-dir"])
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn client(url: &str, token: &str) -> Client {
    options(url, Some(token)).coordinator(connect_retrying(url).await).unwrap()
}

async fn list(client: &mut Client) -> Result<(), Code> {
    match tokio::time::timeout(Duration::from_secs(5), client.list_batches(pb::ListBatchesRequest::default())).await {
        Ok(r) => r.map(drop).map_err(|s| s.code()),
        Err(_) => panic!("no answer within 5 s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_stalled_senders_leave_memory_bounded_and_the_farm_serving() {
    let dir = tempfile::tempdir().unwrap();
    let alice = create_token(dir.path(), "alice", "submit");
    let coordinator = CoordinatorProcess::start(dir.path(), "127.0.0.1:0", 3000);
    let pid = coordinator.child.id();
    let mut client = client(&coordinator.url, &alice).await;
    list(&mut client).await.expect("alice is served");
    let before = rss_bytes(pid);
    // each declares a 60 MB submit (under the 64 MiB message limit), sends
    // 1 MiB of it (what HTTP/2 flow control lets through unread) and stalls
    const CLIENTS: usize = 200;
    const SENT: usize = (1 << 20) - 64;
    let started = Instant::now();
    let stalled = futures::future::join_all((0..CLIENTS).map(|_| Stalled::start(&coordinator.addr, None, 60_000_000, SENT))).await;
    let answers = futures::future::join_all(stalled.into_iter().map(|s| s.answer(Duration::from_secs(5)))).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = rss_bytes(pid);
    let growth = during.saturating_sub(before);
    let refused = answers.iter().filter(|a| a.as_deref() == Some("16")).count();
    println!(
        "{CLIENTS} unauthenticated clients, {} MiB sent and stalled: coordinator RSS {:.1} MiB -> {:.1} MiB (+{:.1} MiB); {refused} answered UNAUTHENTICATED at once; {:.1} s",
        (CLIENTS * SENT) >> 20,
        before as f64 / 1048576.0,
        during as f64 / 1048576.0,
        growth as f64 / 1048576.0,
        started.elapsed().as_secs_f64()
    );
    // the farm still serves its users while they hang on
    let t = Instant::now();
    list(&mut client).await.expect("alice is served while hostile clients stall");
    println!("an authenticated call meanwhile: {:.0} ms", t.elapsed().as_secs_f64() * 1000.0);
    assert_eq!(refused, CLIENTS, "every unauthenticated call is refused from its headers, before its message is read: {answers:?}");
    assert!(growth < 48 << 20, "the coordinator grew by {} MiB under {CLIENTS} stalled clients", growth >> 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_stalls_holds_only_their_own_calls_and_only_until_the_stall_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let alice = create_token(dir.path(), "alice", "submit");
    let bob = create_token(dir.path(), "bob", "submit");
    let coordinator = CoordinatorProcess::start_with(dir.path(), "127.0.0.1:0", 3000, &["--stall-timeout", "3s"]);
    let (mut as_alice, mut as_bob) = (client(&coordinator.url, &alice).await, client(&coordinator.url, &bob).await);
    // alice opens as many calls as her role's `concurrent_calls` quota (64) and stalls in each
    let started = Instant::now();
    let stalled = futures::future::join_all((0..64).map(|_| Stalled::start(&coordinator.addr, Some(&alice), 1_000_000, 1000))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(list(&mut as_alice).await, Err(Code::ResourceExhausted), "a 65th call of alice's is refused at once");
    list(&mut as_bob).await.expect("bob is unaffected");
    // each stalled call ends at the stall timeout, and alice is served again
    let answers = futures::future::join_all(stalled.into_iter().map(|s| s.answer(Duration::from_secs(15)))).await;
    let ended = started.elapsed();
    println!("64 stalled calls ended after {:.1} s with {:?}", ended.as_secs_f64(), answers.iter().collect::<std::collections::BTreeSet<_>>());
    assert!(answers.iter().all(|a| a.as_deref() == Some("4")), "DEADLINE_EXCEEDED for each: {answers:?}");
    assert!(ended >= Duration::from_secs(3) && ended < Duration::from_secs(12), "{ended:?}");
    list(&mut as_alice).await.expect("alice's permits came back when her calls ended");
}

/// The coordinator's memory growth while `alice` sends 8 submits of 24 MiB
/// each (declared 60 MB) and stalls, under a `request_mib_in_flight` quota of
/// `mib`; and how many of the 8 were ended RESOURCE_EXHAUSTED.
async fn authenticated_senders(mib: u64) -> (u64, usize) {
    let dir = tempfile::tempdir().unwrap();
    let alice = create_token(dir.path(), "alice", "submit");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, format!("[quotas.submit]\nrequest_mib_in_flight = {mib}\n")).unwrap();
    let coordinator = CoordinatorProcess::start_with(dir.path(), "127.0.0.1:0", 3000, &["--config", config.to_str().unwrap()]);
    let mut client = client(&coordinator.url, &alice).await;
    list(&mut client).await.expect("alice is served");
    let pid = coordinator.child.id();
    let before = rss_bytes(pid);
    let stalled = futures::future::join_all((0..8).map(|_| Stalled::start(&coordinator.addr, Some(&alice), 60_000_000, 24 << 20))).await;
    let answers = futures::future::join_all(stalled.into_iter().map(|s| s.answer(Duration::from_secs(8)))).await;
    let growth = rss_bytes(pid).saturating_sub(before);
    (growth, answers.iter().filter(|a| a.as_deref() == Some("8")).count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_half_sent_messages_hold_at_most_their_quota_of_memory() {
    let (unbounded, none_refused) = authenticated_senders(100_000).await;
    let (bounded, refused) = authenticated_senders(64).await;
    println!(
        "8 authenticated submits of 24 MiB, stalled: coordinator RSS +{:.0} MiB with request_mib_in_flight = 64 ({refused} of 8 ended RESOURCE_EXHAUSTED) vs +{:.0} MiB with no such bound ({none_refused} ended); ratio {:.2}",
        bounded as f64 / 1048576.0,
        unbounded as f64 / 1048576.0,
        bounded as f64 / unbounded.max(1) as f64
    );
    assert_eq!(none_refused, 0);
    assert!(refused >= 5, "at most two 24 MiB calls fit in 64 MiB: {refused} refused");
    // what was accepted (2 × 24 MiB) plus the growth of its buffers and what the
    // allocator keeps of the refused calls' bytes: well under the unbounded run
    assert!(
        bounded < 192 << 20 && (bounded as f64) < 0.75 * unbounded as f64,
        "the quota bounds what alice's calls hold: +{} MiB vs +{} MiB",
        bounded >> 20,
        unbounded >> 20
    );
}
