//! Object storage against a real S3-compatible server (s3s-fs 0.14.1, which
//! checks SigV4 signatures) started here on 127.0.0.1: the storage layer's
//! single and multipart writes, and a whole farm job whose inputs and outputs
//! live in the bucket.

use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use stylefarm_core::storage::{Location, StorageError, MULTIPART_THRESHOLD};
use stylefarm_proto as pb;
use stylefarm_tests::farm::{sha_ref, test_config, upload_file, wait_batch, Coordinator, InProcessWorker};
use stylefarm_tests::sample;

const ACCESS_KEY: &str = "stylefarm-test";
const SECRET_KEY: &str = "stylefarm-test-secret-key";

/// Serves `root` (one folder per bucket) as S3 on a free port; returns the endpoint.
async fn start_s3(root: &std::path::Path) -> String {
    let fs = s3s_fs::FileSystem::new(root).expect("s3s-fs root");
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let http = ConnBuilder::new(TokioExecutor::new());
        loop {
            let Ok((socket, _)) = listener.accept().await else { continue };
            let service = service.clone();
            let connection = http.serve_connection(TokioIo::new(socket), service).into_owned();
            tokio::spawn(async move {
                let _ = connection.await;
            });
        }
    });
    endpoint
}

/// object_store reads AWS_* from the environment (set once: one test binary, one server).
fn configure_env(endpoint: &str) {
    // SAFETY: set before any thread of this test binary reads the environment concurrently
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
        std::env::set_var("AWS_ENDPOINT", endpoint);
        std::env::set_var("AWS_ALLOW_HTTP", "true");
        std::env::set_var("AWS_REGION", "us-east-1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_round_trip_from_storage_layer_to_a_farm_job() {
    let s3_root = tempfile::tempdir().unwrap();
    std::fs::create_dir(s3_root.path().join("farm-bucket")).unwrap();
    let endpoint = start_s3(s3_root.path()).await;
    configure_env(&endpoint);

    // the storage layer: small and multipart writes, reads, missing objects
    let location = Location::open_root("s3://farm-bucket/layer").unwrap();
    location.put("small.txt", Bytes::from_static(b"hello s3")).await.unwrap();
    assert_eq!(location.get("small.txt").await.unwrap(), Bytes::from_static(b"hello s3"));
    let big: Bytes = (0..MULTIPART_THRESHOLD + 3 * 1024 * 1024).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
    location.put("big.bin", big.clone()).await.unwrap();
    assert_eq!(location.get("big.bin").await.unwrap(), big, "multipart upload round trip");
    assert_eq!(std::fs::metadata(s3_root.path().join("farm-bucket/layer/big.bin")).unwrap().len(), big.len() as u64, "on the server's disk");
    assert!(matches!(location.get("absent").await, Err(StorageError::NotFound { .. })));
    // the server checks signatures: a wrong secret is refused
    use object_store::ObjectStore;
    let forged = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_bucket_name("farm-bucket")
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key("not-the-secret")
        .build()
        .unwrap();
    let refused = forged.put(&object_store::path::Path::from("layer/forged.txt"), Bytes::from_static(b"x").into()).await;
    assert!(refused.is_err(), "SigV4 with a wrong secret must be refused");
    assert!(!s3_root.path().join("farm-bucket/layer/forged.txt").exists());

    // a whole farm job with the coordinator's store in the bucket
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.store = Some("s3://farm-bucket/farm".into());
    let coordinator = Coordinator::start(config).await;
    let mut client = coordinator.client().await;
    let chelsea = upload_file(&mut client, &sample("chelsea.png")).await;
    let retina = upload_file(&mut client, &sample("retina.jpg")).await;
    assert!(s3_root.path().join("farm-bucket/farm/images/sha256").join(&chelsea).is_file(), "uploads land in the bucket");
    let worker = InProcessWorker::start(&coordinator.url, "s3-worker", &dir.path().join("w"));
    let request = pb::SubmitBatchRequest {
        jobs: vec![pb::JobSpec {
            name: "in-s3".into(),
            content: Some(sha_ref(&chelsea)),
            styles: vec![sha_ref(&retina)],
            settings: Some(pb::RenderSettings { size: Some(32), iterations: Some(2), ..Default::default() }),
            requires: Vec::new(),
        }],
        ..Default::default()
    };
    let batch = client.submit_batch(request).await.unwrap().into_inner();
    let (done, jobs) = wait_batch(&mut client, &batch.batch_id, Duration::from_secs(120)).await;
    assert_eq!(pb::BatchState::try_from(done.state).unwrap(), pb::BatchState::Succeeded, "{jobs:?}");
    let result = jobs[0].result.clone().unwrap();
    for output in &result.outputs {
        let on_disk = s3_root.path().join("farm-bucket/farm").join(&output.key);
        assert_eq!(std::fs::metadata(&on_disk).unwrap().len(), output.size_bytes, "{}", on_disk.display());
    }
    // and back out through the coordinator
    let mut stream = client.download_outputs(pb::DownloadOutputsRequest { job_id: jobs[0].id.clone() }).await.unwrap().into_inner();
    let mut png = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        if chunk.name == "output.png" {
            png.extend_from_slice(&chunk.data);
        }
    }
    let image = image::load_from_memory(&png).unwrap();
    assert_eq!(image.width().max(image.height()), 32);
    worker.stop().await;
}
