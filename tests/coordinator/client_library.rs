//! The Rust client library (`stylefarm_client::Client`, which the CLI is built
//! on) against a real coordinator with test workers: submit, the watch as a
//! `Stream`, wait's outcomes (succeeded, failed with reasons, cancelled, timed
//! out), and fetch writing nothing for jobs without outputs.

use std::time::Duration;

use futures::StreamExt;
use stylefarm_client::{Client, ClientError, Input, Watched};
use stylefarm_coordinator_tests::farm::{batch_request, test_config, Coordinator};
use stylefarm_proto as pb;

async fn farm() -> (tempfile::TempDir, Coordinator, Client) {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let client = Client::connect(&stylefarm_proto::connect::ConnectOptions { url: coordinator.url.clone(), ..Default::default() }).await.unwrap();
    (dir, coordinator, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_watch_and_wait_for_a_batch_that_succeeds() {
    let (_dir, coordinator, mut client) = farm().await;
    let submitted = client.submit(batch_request("lib", 2, 0)).await.unwrap();
    assert_eq!(submitted.job_ids.len(), 2);
    let watch = tokio::spawn(client.watch(&submitted.batch_id).collect::<Vec<_>>());
    let mut worker = coordinator.worker("lib-worker", 1 << 34).await;
    for _ in 0..2 {
        let lease = worker.lease(2_000).await.expect("a job");
        worker.complete(&lease).await.unwrap();
    }
    let batch = client.wait(&submitted.batch_id, Some(Duration::from_secs(20))).await.unwrap();
    assert_eq!(batch.state, pb::BatchState::Succeeded as i32);
    let items = watch.await.unwrap();
    let kinds: Vec<i32> = items
        .iter()
        .map(|item| match item {
            Ok(Watched::Event(event)) => event.kind,
            other => panic!("no outage here: {other:?}"),
        })
        .collect();
    assert_eq!(kinds.first(), Some(&(pb::EventKind::Snapshot as i32)));
    assert_eq!(kinds.last(), Some(&(pb::EventKind::BatchFinished as i32)), "the stream ends with the batch");
    assert_eq!(kinds.iter().filter(|k| **k == pb::EventKind::Succeeded as i32).count(), 2);
    // fetch: the test worker wrote no files; each job's folder is there, empty
    let out = tempfile::tempdir().unwrap();
    let fetched = client.fetch(&submitted.batch_id, out.path()).await.unwrap();
    assert_eq!((fetched.jobs, fetched.skipped, fetched.files.len()), (2, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_says_how_a_batch_ended() {
    let (_dir, coordinator, mut client) = farm().await;
    let mut worker = coordinator.worker("lib-worker", 1 << 34).await;

    let mut request = batch_request("fails", 1, 0);
    request.max_attempts = 1;
    let failing = client.submit(request).await.unwrap();
    let lease = worker.lease(2_000).await.unwrap();
    worker.fail(&lease, "the style image is corrupt", pb::AttemptStop::Failed).await.unwrap();
    match client.wait(&failing.batch_id, Some(Duration::from_secs(20))).await {
        Err(ClientError::BatchFailed { batch, failures }) => {
            assert_eq!(batch.id, failing.batch_id);
            assert_eq!(failures, vec![(lease.job_id.clone(), "the style image is corrupt".to_string())]);
        }
        other => panic!("expected BatchFailed, got {other:?}"),
    }

    let idle = client.submit(batch_request("idle", 1, 0)).await.unwrap();
    match client.wait(&idle.batch_id, Some(Duration::from_millis(300))).await {
        Err(ClientError::Timeout { batch, .. }) => assert_eq!(batch, idle.batch_id),
        other => panic!("expected Timeout, got {other:?}"),
    }
    client.coordinator().cancel_batch(pb::CancelBatchRequest { batch_id: idle.batch_id.clone() }).await.unwrap();
    assert!(matches!(client.wait(&idle.batch_id, None).await, Err(ClientError::BatchCancelled(b)) if b.id == idle.batch_id));

    match client.wait("b999", None).await {
        Err(e) => assert_eq!(e.status().map(|s| s.code()), Some(tonic::Code::NotFound), "{e}"),
        Ok(b) => panic!("no such batch, got {b:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_go_up_once_and_a_missing_file_is_refused_before_anything_is_sent() {
    let (_dir, _coordinator, mut client) = farm().await;
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("tiny.png");
    image::RgbImage::from_pixel(8, 8, image::Rgb([200, 40, 40])).save(&png).unwrap();
    let inputs = [Input::parse(png.to_str().unwrap()), Input::parse("s3://elsewhere/a.png")];
    let first = client.resolve_inputs(&inputs, &|_| false).await.unwrap();
    assert_eq!((first.uploaded.len(), first.already_present), (1, 0));
    assert_eq!(first.uploaded[0].1.width, 8);
    assert!(matches!(first.refs[&inputs[1]].source, Some(pb::image_ref::Source::Url(_))));
    let again = client.resolve_inputs(&inputs, &|_| false).await.unwrap();
    assert_eq!((again.uploaded.len(), again.already_present), (0, 1), "the same bytes are not sent twice");
    let missing = client.resolve_inputs(&[Input::parse("/nonexistent/photo.png")], &|_| false).await;
    assert!(matches!(missing, Err(ClientError::Input(ref m)) if m.contains("/nonexistent/photo.png")), "{missing:?}");
}
