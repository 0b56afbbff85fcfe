//! KEDA's external scaler as the coordinator serves it: the metric follows the
//! work a worker could take (queued jobs some device fits, plus running ones),
//! IsActive is false on an empty queue (scale to zero), StreamIsActive pushes
//! the changes, and it answers without a token while the farm's own APIs
//! require one. `scaler = false` leaves it out. With `labels` in the trigger,
//! the metric is one worker pool's demand.

use std::collections::HashMap;
use std::time::Duration;

use stylefarm_coordinator::auth::{Role, TokenStore};
use stylefarm_coordinator_tests::farm::{batch_request, scraped, test_config, Coordinator};
use stylefarm_proto as pb;
use stylefarm_proto::externalscaler as ks;

type Scaler = ks::external_scaler_client::ExternalScalerClient<tonic::transport::Channel>;

fn object(jobs_per_worker: Option<&str>) -> ks::ScaledObjectRef {
    let mut metadata = HashMap::from([("scalerAddress".to_string(), "stylefarm-coordinator:50051".to_string())]);
    if let Some(n) = jobs_per_worker {
        metadata.insert("jobsPerWorker".into(), n.into());
    }
    ks::ScaledObjectRef { name: "stylefarm-worker".into(), namespace: "stylefarm".into(), scaler_metadata: metadata }
}

async fn metric(scaler: &mut Scaler) -> i64 {
    // KEDA asks with its own prefix on the name (s0-…)
    let request = ks::GetMetricsRequest { scaled_object_ref: Some(object(None)), metric_name: "s0-stylefarm-jobs".into() };
    let values = scaler.get_metrics(request).await.unwrap().into_inner().metric_values;
    assert_eq!(values.len(), 1);
    assert_eq!(values[0].metric_value as f64, values[0].metric_value_float);
    values[0].metric_value
}

async fn active(scaler: &mut Scaler) -> bool {
    scaler.is_active(object(None)).await.unwrap().into_inner().result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scaler_follows_the_queue_and_answers_keda_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    // tokens exist, so every farm API needs one; the scaler does not
    let tokens = TokenStore::open(dir.path()).unwrap();
    let submit = tokens.create("alice", Role::Submit).unwrap();
    let worker_token = tokens.create("gpu-1", Role::Worker).unwrap();
    let coordinator = Coordinator::start(test_config(dir.path())).await;
    let mut scaler = Scaler::new(coordinator.channel().await);
    let mut client = coordinator.client_with(Some(&submit)).await;

    assert!(!active(&mut scaler).await, "empty queue: scale to zero");
    assert_eq!(metric(&mut scaler).await, 0);
    let spec = scaler.get_metric_spec(object(Some("2"))).await.unwrap().into_inner().metric_specs;
    assert_eq!((spec[0].metric_name.as_str(), spec[0].target_size), ("stylefarm-jobs", 2));
    let bad = scaler.get_metric_spec(object(Some("zero"))).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("jobsPerWorker"), "{}", bad.message());

    let mut pushed = scaler.stream_is_active(object(None)).await.unwrap().into_inner();
    assert!(!pushed.message().await.unwrap().unwrap().result, "the stream starts with the current state");

    let batch = client.submit_batch(batch_request("scale", 3, 0)).await.unwrap().into_inner().batch_id;
    assert_eq!(metric(&mut scaler).await, 3);
    assert!(active(&mut scaler).await);
    let change = tokio::time::timeout(Duration::from_secs(5), pushed.message()).await.expect("pushed within 5 s").unwrap().unwrap();
    assert!(change.result, "StreamIsActive pushes the change");

    // running jobs still count; finished ones do not
    let mut worker = coordinator.worker_with("w", 1 << 34, Some(&worker_token)).await.unwrap();
    let lease = worker.lease(0).await.unwrap();
    assert_eq!(metric(&mut scaler).await, 3);
    worker.complete(&lease).await.unwrap();
    assert_eq!(metric(&mut scaler).await, 2);

    client.cancel_batch(pb::CancelBatchRequest { batch_id: batch }).await.unwrap();
    assert_eq!(metric(&mut scaler).await, 0);
    assert!(!active(&mut scaler).await);
    let change = tokio::time::timeout(Duration::from_secs(5), pushed.message()).await.expect("pushed within 5 s").unwrap().unwrap();
    assert!(!change.result);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scaler_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(stylefarm_coordinator::CoordinatorConfig { scaler: false, ..test_config(dir.path()) }).await;
    let mut scaler = Scaler::new(coordinator.channel().await);
    assert_eq!(scaler.is_active(object(None)).await.unwrap_err().code(), tonic::Code::Unimplemented);
}

/// The metric for one pool: the trigger names the labels its workers carry.
async fn pool_metric(scaler: &mut Scaler, labels: &str) -> i64 {
    let mut object = object(None);
    object.scaler_metadata.insert("labels".into(), labels.into());
    let request = ks::GetMetricsRequest { scaled_object_ref: Some(object), metric_name: "s0-stylefarm-jobs".into() };
    scaler.get_metrics(request).await.unwrap().into_inner().metric_values[0].metric_value
}

/// `stylefarm_pool_demand{labels="…"}` in a scrape, if the series is there.
fn gauge(scrape: &str, labels: &str) -> Option<f64> {
    scraped(scrape, &format!("stylefarm_pool_demand{{labels=\"{labels}\"}}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_pool_scales_on_its_own_queue_from_zero() {
    let dir = tempfile::tempdir().unwrap();
    let config = stylefarm_coordinator::CoordinatorConfig {
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        metrics_pools: vec!["pool=studio-b,vram=24".into()],
        ..test_config(dir.path())
    };
    let coordinator = Coordinator::start(config).await;
    let mut scaler = Scaler::new(coordinator.channel().await);
    let mut client = coordinator.client().await;
    // no worker of either pool is connected: their jobs wait, and their pools must still grow
    client.submit_batch(pb::SubmitBatchRequest { requires: vec!["pool=studio-b".into()], ..batch_request("studio", 3, 0) }).await.unwrap();
    client.submit_batch(pb::SubmitBatchRequest { requires: vec!["pool=render".into(), "vram>=48".into()], ..batch_request("render", 2, 0) }).await.unwrap();
    client.submit_batch(batch_request("anywhere", 1, 0)).await.unwrap();
    assert_eq!(pool_metric(&mut scaler, "pool=studio-b,vram=24").await, 3 + 1, "its own three, and the one any worker may take");
    assert_eq!(pool_metric(&mut scaler, "pool=render,vram=80").await, 2 + 1);
    assert_eq!(pool_metric(&mut scaler, "pool=render,vram=24").await, 1, "too little vram for the render batch");
    // Prometheus: the declared pool from the start, a worker's own label set once it is known
    let m = coordinator.scrape().await;
    assert_eq!(gauge(&m, "pool=studio-b,vram=24"), Some(4.0), "{m}");
    assert_eq!(gauge(&m, "pool=render,vram=80"), None, "{m}");
    let _render = coordinator.worker_labelled("r", 1 << 34, &[("pool", "render"), ("vram", "80")]).await;
    assert_eq!(gauge(&coordinator.scrape().await, "pool=render,vram=80"), Some(3.0));
    // a studio worker takes one: it still counts while it runs
    let mut studio = coordinator.worker_labelled("s", 1 << 34, &[("pool", "studio-b"), ("vram", "24")]).await;
    let lease = studio.lease(0).await.unwrap();
    assert_eq!(pool_metric(&mut scaler, "pool=studio-b,vram=24").await, 4);
    assert_eq!(gauge(&coordinator.scrape().await, "pool=studio-b,vram=24"), Some(4.0), "a running job counts");
    studio.complete(&lease).await.unwrap();
    assert_eq!(pool_metric(&mut scaler, "pool=studio-b,vram=24").await, 3);
    assert_eq!(gauge(&coordinator.scrape().await, "pool=studio-b,vram=24"), Some(3.0));
    let bad = scaler.is_active(ks::ScaledObjectRef { scaler_metadata: HashMap::from([("labels".into(), "pool".into())]), ..object(None) }).await.unwrap_err();
    assert!(bad.code() == tonic::Code::InvalidArgument && bad.message().contains("labels"), "{bad:?}");
}
