//! The web dashboard: real Chromium (headless) against a live farm of one
//! coordinator and two real workers, and the dashboard's access rules over
//! plain HTTP. Screenshots go to `out/dashboard/` (the README shows `make demo`'s, taken the same way).

use std::time::Duration;

use stylefarm_coordinator::auth::{Role, TokenStore};
use stylefarm_proto as pb;
use stylefarm_tests::browser::Browser;
use stylefarm_tests::farm::{batch_request, eventually, test_config, upload_file, wait_batch, Coordinator, InProcessWorker};
use stylefarm_tests::{repo_root, sample};

fn settings() -> Option<pb::RenderSettings> {
    Some(pb::RenderSettings {
        preset: "gatys".into(),
        size: Some(96),
        iterations: Some(40),
        snapshot_every: Some(10),
        params_json: r#"{"init":"content"}"#.into(),
        ..Default::default()
    })
}

fn save(name: &str, png: &[u8]) {
    let dir = repo_root().join("out/dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), png).unwrap();
}

/// Rows in a job's trace.jsonl, read through the dashboard's own file route.
async fn trace_rows(web: &str, job: &str) -> usize {
    stylefarm_tests::farm::http_get(&format!("{web}/files/{job}/trace.jsonl")).await.lines().filter(|l| !l.trim().is_empty()).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chromium_follows_a_live_farm_on_every_page() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.http_listen = Some("127.0.0.1:0".parse().unwrap());
    let coordinator = Coordinator::start(config).await;
    let web = coordinator.web_url.clone().unwrap();
    let mut client = coordinator.client().await;
    let photos = [upload_file(&mut client, &sample("chelsea.png")).await, upload_file(&mut client, &sample("coffee.png")).await];
    let style = upload_file(&mut client, &sample("ihc.png")).await;
    let sha = |s: &str| Some(pb::ImageRef { source: Some(pb::image_ref::Source::Sha256(s.into())) });
    let jobs = (0..4)
        .map(|i| pb::JobSpec {
            name: format!("frame-{i}"),
            content: sha(&photos[i % 2]),
            styles: vec![sha(&style).unwrap()],
            settings: settings(),
            requires: Vec::new(),
        })
        .collect();
    let mut request = pb::SubmitBatchRequest { name: "dashboard".into(), jobs, ..Default::default() };
    request.labels.insert("test".into(), "chromium".into());
    let batch = client.submit_batch(request).await.unwrap().into_inner().batch_id;

    // the page is open before any job has finished; the workers start after
    let mut browser = tokio::task::block_in_place(|| {
        let mut b = Browser::start(1280, 1000);
        b.open(&format!("{web}/batches/{batch}"));
        b
    });
    let states = |b: &mut Browser| b.eval("JSON.stringify([...document.querySelectorAll('article.job')].map(a => a.dataset.state))");
    let first: Vec<String> = serde_json::from_str(tokio::task::block_in_place(|| states(&mut browser)).as_str().unwrap()).unwrap();
    assert_eq!(first.len(), 4, "every job has a card: {first:?}");
    assert!(first.iter().all(|s| s != "succeeded"), "nothing finished before the workers started: {first:?}");
    tokio::task::block_in_place(|| browser.eval("window.__opened = 'once'; true"));
    let workers: Vec<_> = (1..=2).map(|i| InProcessWorker::start(&coordinator.url, &format!("w{i}"), &dir.path().join(format!("work{i}")))).collect();

    // a running job's live loss curve grows on the open page
    let running = tokio::task::block_in_place(|| {
        browser.wait_until("[...document.querySelectorAll('article.job svg.spark')].some(s => Number(s.dataset.points) >= 3 && s.closest('article').dataset.state === 'running')", Duration::from_secs(120))
    });
    assert!(running, "a running job's curve was drawn from live progress");
    let shot = tokio::task::block_in_place(|| browser.screenshot());
    save("batch-running.png", &shot);
    let all_done = tokio::task::block_in_place(|| {
        browser.wait_until("[...document.querySelectorAll('article.job')].every(a => a.dataset.state === 'succeeded')", Duration::from_secs(300))
    });
    assert!(all_done, "every job turned succeeded on the open page");
    assert_eq!(tokio::task::block_in_place(|| browser.eval("window.__opened")), "once", "without a reload");
    let (finished, final_jobs) = wait_batch(&mut client, &batch, Duration::from_secs(10)).await;
    assert_eq!(finished.state, pb::BatchState::Succeeded as i32);

    // thumbnails and full loss curves: as many points as each trace has rows
    for job in &final_jobs {
        let rows = trace_rows(&web, &job.id).await;
        assert!(rows > 10, "{} has a trace", job.id);
        let check = format!(
            "(() => {{ const a = document.getElementById('job-{id}'); const img = a.querySelector('.thumb img'); return !!img && img.complete && img.naturalWidth > 0 && Number(a.querySelector('svg.spark').dataset.points) === {rows}; }})()",
            id = job.id
        );
        assert!(tokio::task::block_in_place(|| browser.wait_until(&check, Duration::from_secs(20))), "{}: thumbnail and {rows} points", job.id);
    }
    assert!(tokio::task::block_in_place(|| browser.eval("document.querySelector('#summary').dataset.succeeded")) == "4");
    let shot = tokio::task::block_in_place(|| browser.screenshot());
    save("batch.png", &shot);

    // the job page: loss plot of every row, snapshots, timeline with the worker's steps, attempts
    let job = &final_jobs[0];
    let rows = trace_rows(&web, &job.id).await;
    tokio::task::block_in_place(|| browser.open(&format!("{web}/jobs/{}", job.id)));
    assert!(tokio::task::block_in_place(
        || browser.wait_until(&format!("Number(document.getElementById('loss').dataset.points) === {rows}"), Duration::from_secs(20))
    ));
    let steps = tokio::task::block_in_place(|| {
        browser.eval("JSON.stringify([...document.querySelectorAll('#timeline g text:first-of-type')].map(t => t.textContent))")
    });
    let steps: Vec<String> = serde_json::from_str(steps.as_str().unwrap()).unwrap();
    for step in ["queue wait", "fetch_inputs", "load_weights", "render", "optimise", "encode", "upload"] {
        assert!(steps.iter().any(|s| s == step), "timeline has {step}: {steps:?}");
    }
    assert!(steps.iter().any(|s| s.starts_with("attempt 1 · w")), "{steps:?}");
    let snapshots = tokio::task::block_in_place(|| browser.eval("document.querySelectorAll('#snapshots img').length"));
    assert!(snapshots.as_u64().unwrap() >= 4, "40 iterations, a snapshot every 10: {snapshots}");
    let attempts = tokio::task::block_in_place(|| browser.eval("document.querySelectorAll('table.attempts tbody tr').length"));
    assert_eq!(attempts, 1);
    let shot = tokio::task::block_in_place(|| browser.screenshot());
    save("job.png", &shot);

    // workers and batches pages
    tokio::task::block_in_place(|| browser.open(&format!("{web}/workers")));
    let rows = tokio::task::block_in_place(|| browser.eval("document.querySelectorAll('#workers tr').length"));
    assert_eq!(rows, 2, "both workers are listed");
    let succeeded = tokio::task::block_in_place(|| {
        browser.eval("[...document.querySelectorAll('#workers tr td.succeeded')].map(td => Number(td.textContent)).reduce((a, b) => a + b, 0)")
    });
    assert_eq!(succeeded, 4, "the workers' successes add up to the batch");
    // how busy each worker's device was, from its heartbeats
    let busy = "[...document.querySelectorAll('#workers .busy')].filter(b => Number(b.dataset.fraction) > 0 && /%$/.test(b.textContent)).length === 2";
    assert!(tokio::task::block_in_place(|| browser.wait_until(busy, Duration::from_secs(15))), "a busy fraction per device");
    let shot = tokio::task::block_in_place(|| browser.screenshot());
    save("workers.png", &shot);
    // an admin takes a worker out of rotation from the page, and puts it back
    tokio::task::block_in_place(|| browser.eval("document.querySelector('#workers button[data-action=disable]').click()"));
    let shown = tokio::task::block_in_place(|| browser.wait_until("document.querySelectorAll('#workers .s-disabled').length === 1", Duration::from_secs(10)));
    assert!(shown, "the disabled pill appears once the row refreshes");
    let listed = client.list_workers(pb::ListWorkersRequest::default()).await.unwrap().into_inner().workers;
    let disabled: Vec<_> = listed.iter().filter(|w| w.availability == pb::WorkerAvailability::Disabled as i32).collect();
    assert_eq!(disabled.len(), 1, "the button disabled one worker in the coordinator: {listed:?}");
    tokio::task::block_in_place(|| browser.eval("document.querySelector('#workers button[data-action=enable]').click()"));
    let back = tokio::task::block_in_place(|| browser.wait_until("document.querySelectorAll('#workers .s-disabled').length === 0", Duration::from_secs(10)));
    assert!(back, "enable puts it back");
    tokio::task::block_in_place(|| browser.open(&format!("{web}/")));
    let row = tokio::task::block_in_place(|| browser.eval(&format!("document.getElementById('batch-{batch}').dataset.state")));
    assert_eq!(row, "succeeded");
    // a batch submitted while the page is open appears on it, live (once the stream is subscribed)
    assert!(tokio::task::block_in_place(|| browser.wait_until("document.body.dataset.following === 'yes'", Duration::from_secs(10))));
    let late = client.submit_batch(batch_request("late", 1, 0)).await.unwrap().into_inner().batch_id;
    let appeared = tokio::task::block_in_place(|| browser.wait_until(&format!("!!document.getElementById('batch-{late}')"), Duration::from_secs(30)));
    assert!(appeared, "the new batch's first event added its row");
    let shot = tokio::task::block_in_place(|| browser.screenshot());
    save("batches.png", &shot);

    assert!(browser.errors.is_empty(), "the pages reported errors: {:#?}", browser.errors);
    drop(browser);
    for w in workers {
        w.stop().await;
    }
    coordinator.stop().await.unwrap();
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().redirects(0).timeout(Duration::from_secs(10)).build()
}

/// (status, a header, body) of a request, whatever its status.
fn call(request: ureq::Request) -> (u16, Option<String>, String) {
    answer(request.call())
}

fn answer(result: Result<ureq::Response, ureq::Error>) -> (u16, Option<String>, String) {
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let location = response.header("location").or(response.header("set-cookie")).map(str::to_string);
    (response.status(), location, response.into_string().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_uses_the_grpc_tokens_and_roles() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenStore::open(dir.path()).unwrap();
    let alice = tokens.create("alice", Role::Submit).unwrap();
    let bob = tokens.create("bob", Role::Submit).unwrap();
    let root = tokens.create("root", Role::Admin).unwrap();
    let gpu = tokens.create("gpu-1", Role::Worker).unwrap();
    let mut config = test_config(dir.path());
    config.http_listen = Some("127.0.0.1:0".parse().unwrap());
    let coordinator = Coordinator::start(config).await;
    let web = coordinator.web_url.clone().unwrap();
    let alices = coordinator.client_with(Some(&alice)).await.submit_batch(batch_request("alice-batch", 2, 0)).await.unwrap().into_inner();
    let bobs = coordinator.client_with(Some(&bob)).await.submit_batch(batch_request("bob-batch", 1, 0)).await.unwrap().into_inner();

    let (web2, alice2, root2, gpu2) = (web.clone(), alice.clone(), root.clone(), gpu.clone());
    let (a_batch, b_batch, b_job) = (alices.batch_id.clone(), bobs.batch_id.clone(), bobs.job_ids[0].clone());
    tokio::task::spawn_blocking(move || {
        let (web, alice, root, gpu) = (web2, alice2, root2, gpu2);
        let agent = agent();
        // no token: pages lead to the sign-in page, the API says 401
        let (status, location, _) = call(agent.get(&format!("{web}/batches/{a_batch}")));
        assert_eq!((status, location.as_deref()), (303, Some(format!("/login?next=/batches/{a_batch}").as_str())));
        let (status, _, body) = call(agent.get(&format!("{web}/api/events")));
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("unauthenticated"), "{body}");
        // a wrong token is refused at sign-in; a right one sets an HttpOnly, SameSite cookie
        let (status, _, body) =
            answer(agent.post(&format!("{web}/login")).set("content-type", "application/x-www-form-urlencoded").send_string("token=sf1_nope_nope&next=/"));
        assert_eq!(status, 401, "{body}");
        // login CSRF: a form on another site cannot sign this browser in, even with a good token
        let (status, cookie, body) = answer(
            agent
                .post(&format!("{web}/login"))
                .set("content-type", "application/x-www-form-urlencoded")
                .set("origin", "https://evil.example")
                .send_string(&format!("token={alice}&next=/")),
        );
        assert_eq!((status, cookie), (403, None), "{body}");
        let form = format!("token={alice}&next=//evil.example/");
        let response = agent.post(&format!("{web}/login")).set("content-type", "application/x-www-form-urlencoded").send_string(&form);
        let response = match response {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(response.status(), 303);
        assert_eq!(response.header("location"), Some("/"), "no redirect off the site");
        let cookie = response.header("set-cookie").unwrap().to_string();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
        let cookie = cookie.split(';').next().unwrap().to_string();
        // alice sees her batch, not bob's
        let (status, _, body) = call(agent.get(&format!("{web}/")).set("cookie", &cookie));
        assert_eq!(status, 200);
        assert!(body.contains(&format!("batch-{a_batch}")) && !body.contains(&format!("batch-{b_batch}")), "{body}");
        for path in [format!("/batches/{b_batch}"), format!("/jobs/{b_job}"), format!("/api/jobs/{b_job}/trace"), format!("/files/{b_job}/output.png")] {
            let (status, _, _) = call(agent.get(&format!("{web}{path}")).set("cookie", &cookie));
            assert_eq!(status, 404, "{path} is not alice's");
        }
        let (status, _, _) = call(agent.get(&format!("{web}/workers")).set("cookie", &cookie));
        assert_eq!(status, 403, "workers are for admins");
        let (status, _, _) = call(agent.post(&format!("{web}/api/workers/w1/disable")).set("cookie", &cookie).set("x-stylefarm-action", "disable"));
        assert_eq!(status, 403, "so are their controls");
        // cancelling needs the action header (a cross-site form cannot send it)
        let (status, _, _) = call(agent.post(&format!("{web}/api/batches/{a_batch}/cancel")).set("cookie", &cookie));
        assert_eq!(status, 403);
        let (status, _, _) = call(agent.post(&format!("{web}/api/batches/{b_batch}/cancel")).set("cookie", &cookie).set("x-stylefarm-action", "cancel"));
        assert_eq!(status, 404, "not bob's batch");
        let (status, _, body) = call(agent.post(&format!("{web}/api/batches/{a_batch}/cancel")).set("cookie", &cookie).set("x-stylefarm-action", "cancel"));
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"cancelled_queued\":2"), "{body}");
        // the admin (bearer header) sees everything; a worker token sees nothing
        let (status, _, body) = call(agent.get(&format!("{web}/workers")).set("authorization", &format!("Bearer {root}")));
        assert_eq!(status, 200, "{body}");
        let (status, _, body) = call(agent.get(&format!("{web}/")).set("authorization", &format!("Bearer {root}")));
        assert!(status == 200 && body.contains(&format!("batch-{b_batch}")));
        let (status, _, _) = call(agent.get(&format!("{web}/")).set("authorization", &format!("Bearer {gpu}")));
        assert_eq!(status, 403, "a worker token is not a dashboard login");
        // every answer carries the CSP; files are only committed outputs
        let response = agent.get(&format!("{web}/login")).call().unwrap();
        assert!(response.header("content-security-policy").unwrap().contains("script-src 'self'"));
        let (status, _, _) = call(agent.get(&format!("{web}/files/{b_job}/../../../state.sqlite")).set("authorization", &format!("Bearer {root}")));
        assert!(status == 404 || status == 400, "{status}");
    })
    .await
    .unwrap();
    let client = coordinator.client_with(Some(&alice)).await;
    assert!(
        eventually(Duration::from_secs(5), || {
            let mut c = client.clone();
            let id = alices.batch_id.clone();
            async move { stylefarm_tests::farm::get_batch(&mut c, &id).await.0.state == pb::BatchState::Cancelled as i32 }
        })
        .await,
        "the dashboard's cancel cancelled the batch"
    );
    coordinator.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_is_kept_with_its_worker_steps_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    let batch = client.submit_batch(batch_request("history", 1, 0)).await.unwrap().into_inner();
    let job = batch.job_ids[0].clone();
    let mut worker = coordinator.worker("w-history", 1 << 34).await;
    let first = worker.lease(0).await.unwrap();
    assert!(worker.fail(&first, "CUDA out of memory", pb::AttemptStop::FailedRetryable).await.unwrap());
    let mut second = None;
    for _ in 0..100 {
        if let Some(lease) = worker.lease(0).await {
            second = Some(lease);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = second.expect("the retry");
    // the retry continues the job's trace: same trace id, a new parent span
    let parts = |tp: &str| tp.split('-').map(str::to_string).collect::<Vec<_>>();
    let (a, b) = (parts(&first.traceparent), parts(&second.traceparent));
    assert_eq!(a.len(), 4, "{}", first.traceparent);
    assert_eq!(a[1], b[1], "both attempts in one trace: {} {}", first.traceparent, second.traceparent);
    assert_ne!(a[2], b[2], "each attempt its own span");
    let step =
        |name: &str, offset_ms: f64, duration_ms: f64, depth: u32| pb::SpanTiming { name: name.into(), offset_ms, duration_ms, depth, detail: String::new() };
    let prefix = second.output_prefix.split_once("/batches/").map(|(_, rest)| format!("batches/{rest}")).unwrap();
    let complete = |spans: Vec<pb::SpanTiming>| pb::CompleteJobRequest {
        worker_id: worker.id.clone(),
        job_id: second.job_id.clone(),
        attempt: second.attempt,
        result: Some(pb::JobResult {
            prefix: prefix.clone(),
            final_loss: 1.0,
            iterations: 10,
            engine_ms: 5.0,
            device: "cpu".into(),
            spans,
            ..Default::default()
        }),
        lease_secret: second.lease_secret.clone(),
    };
    // a bad step is refused by name and limit, and the attempt goes on
    let bad = worker.api.complete_job(complete(vec![step("render", f64::NAN, 1.0, 0)])).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("result.spans[0].offset_ms"), "{}", bad.message());
    let too_many = worker.api.complete_job(complete((0..65).map(|i| step("s", i as f64, 1.0, 0)).collect())).await.unwrap_err();
    assert!(too_many.message().contains("the limit is 64"), "{}", too_many.message());
    worker
        .api
        .complete_job(complete(vec![step("fetch_inputs", 0.0, 12.0, 0), step("render", 12.0, 300.0, 0), step("optimise", 20.0, 280.0, 1)]))
        .await
        .unwrap();
    coordinator.stop().await.unwrap();

    // after a restart, from the store
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut client = coordinator.client().await;
    let got = client.get_job(pb::GetJobRequest { job_id: job.clone() }).await.unwrap().into_inner();
    let outcomes: Vec<_> = got.attempts.iter().map(|a| (a.attempt, a.outcome.as_str(), a.reason.as_str(), a.worker_id.as_str())).collect();
    assert_eq!(outcomes, vec![(1, "failed", "CUDA out of memory", worker.id.as_str()), (2, "succeeded", "", worker.id.as_str())]);
    let steps: Vec<_> = got.attempts[1].spans.iter().map(|s| (s.name.as_str(), s.depth)).collect();
    assert_eq!(steps, vec![("fetch_inputs", 0), ("render", 0), ("optimise", 1)]);
    assert!(got.attempts.iter().all(|a| a.ended_at_ms >= a.leased_at_ms && a.leased_at_ms > 0));
    assert_eq!(got.result.unwrap().spans.len(), 3, "the committed result keeps its steps too");
    coordinator.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_certificate_the_dashboard_is_https_only_and_its_cookie_secure() {
    use rustls::pki_types::pem::PemObject;
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key, _, _) = stylefarm_tests::tls::certificates(dir.path());
    let admin = TokenStore::open(&dir.path().join("data")).unwrap().create("root", Role::Admin).unwrap();
    let mut config = test_config(&dir.path().join("data"));
    config.http_listen = Some("127.0.0.1:0".parse().unwrap());
    config.tls_cert = Some(cert);
    config.tls_key = Some(key);
    let coordinator = Coordinator::start(config).await;
    let port = coordinator.web_url.clone().unwrap().rsplit(':').next().unwrap().to_string();
    tokio::task::spawn_blocking(move || {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from_pem_file(&ca).unwrap()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let agent = ureq::AgentBuilder::new().tls_config(std::sync::Arc::new(tls)).redirects(0).timeout(Duration::from_secs(10)).build();
        let https = format!("https://localhost:{port}");
        let (status, _, body) = call(agent.get(&format!("{https}/workers")).set("authorization", &format!("Bearer {admin}")));
        assert_eq!(status, 200, "{body}");
        let response =
            agent.post(&format!("{https}/login")).set("content-type", "application/x-www-form-urlencoded").send_string(&format!("token={admin}&next=/"));
        let cookie = match response {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r.header("set-cookie").unwrap_or_default().to_string(),
            Err(e) => panic!("{e}"),
        };
        assert!(cookie.contains("; Secure"), "over HTTPS the cookie is Secure: {cookie}");
        // plain HTTP on the same port gets no page
        let plain = agent.get(&format!("http://127.0.0.1:{port}/login")).call();
        assert!(plain.is_err(), "plain HTTP answered: {:?}", plain.map(|r| r.status()));
    })
    .await
    .unwrap();
    coordinator.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_dashboard_answers_only_to_its_own_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.http_listen = Some("127.0.0.1:0".parse().unwrap());
    config.http_hosts = vec!["farm.test".into()];
    let coordinator = Coordinator::start(config).await;
    let web = coordinator.web_url.clone().unwrap();
    tokio::task::spawn_blocking(move || {
        let agent = agent();
        let (status, _, _) = call(agent.get(&format!("{web}/")));
        assert_eq!(status, 200, "its address");
        // DNS rebinding: a page of evil.example whose name now resolves here
        let (status, _, body) = call(agent.get(&format!("{web}/api/events")).set("host", "evil.example"));
        assert_eq!(status, 421, "{body}");
        assert!(body.contains("evil.example") && body.contains("http_hosts"), "{body}");
        let (status, _, _) = call(agent.post(&format!("{web}/api/batches/b1/cancel")).set("host", "evil.example:8080").set("x-stylefarm-action", "cancel"));
        assert_eq!(status, 421, "no action either");
        let (status, _, _) = call(agent.get(&format!("{web}/")).set("host", "farm.test"));
        assert_eq!(status, 200, "a name the operator listed");
    })
    .await
    .unwrap();
}
