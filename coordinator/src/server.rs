//! Serving: `run(listener, config, shutdown)` so tests bind port 0 and stop the
//! coordinator when they like; the binary binds the configured address.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use stylefarm_core::storage::Location;
use stylefarm_proto as pb;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

use crate::api::client::ClientApi;
use crate::api::worker::WorkerService;
use crate::config::CoordinatorConfig;
use crate::farm::{Farm, FarmConfig};
use crate::store::SqliteStore;

/// Largest gRPC message (a 100,000-job submit is ~20 MB).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("opening state: {0}")]
    Open(String),
    #[error("object store: {0}")]
    Storage(#[from] stylefarm_core::storage::StorageError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("stopped: {0}")]
    Fatal(String),
}

/// Opens the state under the data dir and the object store.
pub fn open_farm(config: &CoordinatorConfig) -> Result<Arc<Farm>, ServeError> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir).map_err(|e| ServeError::Open(format!("{}: {e}", config.data_dir.display())))?;
    let store = SqliteStore::open(&config.data_dir.join("state.sqlite"), config.sync_full, config.group_commit).map_err(|e| ServeError::Open(e.0))?;
    let blobs = Location::open_root(&config.store_url()?)?;
    let farm_config = FarmConfig {
        scheduler: config.scheduler(),
        heartbeat_interval_ms: config.heartbeat_interval_ms,
        max_upload_bytes: config.max_upload_bytes,
    };
    Farm::open(Arc::new(store), blobs, farm_config).map_err(|e| ServeError::Open(e.to_string()))
}

/// Serves both services, gRPC health and reflection on `listener` until
/// `shutdown` resolves (or the state store fails).
pub async fn run(listener: TcpListener, config: CoordinatorConfig, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServeError> {
    let farm = open_farm(&config)?;
    let ticker = farm.spawn_ticker(Duration::from_millis(config.tick_ms));
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<pb::coordinator_server::CoordinatorServer<ClientApi>>().await;
    health_reporter.set_serving::<pb::worker_api_server::WorkerApiServer<WorkerService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let client_api = pb::coordinator_server::CoordinatorServer::new(ClientApi::new(Arc::clone(&farm)))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let worker_api = pb::worker_api_server::WorkerApiServer::new(WorkerService::new(Arc::clone(&farm)))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let mut fatal = farm.fatal_signal();
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "coordinator serving");
    let stop = async move {
        tokio::select! {
            _ = shutdown => {}
            _ = fatal.wait_for(|f| f.is_some()) => {}
        }
    };
    // the builder's tcp_nodelay only applies to listeners it binds itself: without
    // it, Nagle holds a response's trailers for the peer's delayed ACK (40 ms)
    let incoming = TcpListenerStream::new(listener).map(|stream| {
        let stream = stream?;
        stream.set_nodelay(true)?;
        Ok::<_, std::io::Error>(stream)
    });
    let served = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(client_api)
        .add_service(worker_api)
        .serve_with_incoming_shutdown(incoming, stop)
        .await;
    ticker.abort();
    served?;
    if let Some(reason) = farm.fatal_signal().borrow().clone() {
        return Err(ServeError::Fatal(reason));
    }
    tracing::info!("coordinator stopped");
    Ok(())
}
