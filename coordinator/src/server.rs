//! Serving: `run(listener, config, shutdown)` so tests bind port 0 and stop the
//! coordinator when they like; the binary binds the configured address.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use stylefarm_core::storage::Location;
use stylefarm_core::tasks::Tasks;
use stylefarm_core::telemetry::Registry;
use stylefarm_proto as pb;
use stylefarm_proto::externalscaler as ks;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

use crate::api::client::ClientApi;
use crate::api::scaler::ScalerService;
use crate::api::worker::WorkerService;
use crate::auth::{Authenticator, TokenStore, WorkerCerts};
use crate::config::CoordinatorConfig;
use crate::farm::{Farm, FarmConfig};
use crate::gate::{Gate, GateLayer};
use crate::metrics::{CoordMetrics, GrpcMetricsLayer};
use crate::store::SqliteStore;

/// Largest gRPC message (a 100,000-job submit is ~20 MB).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Calls open at once on one HTTP/2 connection (more are refused with
/// REFUSED_STREAM, which clients retry).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("opening state: {0}")]
    Open(String),
    #[error("opening the state store: {0}")]
    State(#[from] crate::store::StoreError),
    #[error("object store: {0}")]
    Storage(#[from] stylefarm_core::storage::StorageError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("stopped: {0}")]
    Fatal(String),
    #[error("{0}")]
    Refused(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// Opens the state under the data dir and the object store (with metrics
/// when `metrics` is given).
pub fn open_farm(config: &CoordinatorConfig, metrics: Option<Arc<CoordMetrics>>) -> Result<Arc<Farm>, ServeError> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir).map_err(|e| ServeError::Open(format!("{}: {e}", config.data_dir.display())))?;
    let store = SqliteStore::open(&config.data_dir.join("state.sqlite"), config.durability, config.commits)?;
    let store_url = config.store_url()?;
    let blobs = Location::open_root(&store_url)?;
    let farm_config = FarmConfig {
        scheduler: config.scheduler(),
        heartbeat_interval_ms: config.heartbeat_interval_ms,
        max_upload_bytes: config.max_upload_bytes,
        submit: config.submit_rules(&blobs.url)?,
        quotas: config.quotas.clone(),
        metrics,
        tracer: crate::traces::JobTracer::from_env().map(Arc::new),
    };
    // tokens it cannot read (or was given and cannot import) stop the start: never open up instead
    let tokens = TokenStore::open(&config.data_dir).map_err(|e| ServeError::Open(format!("the token store in {}: {e}", config.data_dir.display())))?;
    if let Some(dir) = &config.tokens_from {
        for (name, imported) in tokens.import_dir(dir).map_err(|e| ServeError::Open(e.to_string()))? {
            tracing::info!(token = %name, ?imported, from = %dir.display(), "token imported");
        }
    }
    let auth = Authenticator::new(tokens, config.auth, if config.tls_client_ca.is_some() { WorkerCerts::Required } else { WorkerCerts::NotRequired });
    Farm::open(Arc::new(store), blobs, farm_config, auth).map_err(|e| ServeError::Open(e.to_string()))
}

fn read_pem(path: &std::path::Path, what: &str) -> Result<Vec<u8>, ServeError> {
    std::fs::read(path).map_err(|e| ServeError::Tls(format!("reading the {what} {}: {e}", path.display())))
}

/// The server's TLS settings, if `--tls-cert/--tls-key` are given.
fn tls_config(config: &CoordinatorConfig) -> Result<Option<tonic::transport::ServerTlsConfig>, ServeError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else { return Ok(None) };
    let identity = tonic::transport::Identity::from_pem(read_pem(cert, "certificate")?, read_pem(key, "key")?);
    let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &config.tls_client_ca {
        // clients (submitters) connect without a certificate; the WorkerApi
        // refuses calls that did not present one
        tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read_pem(ca, "client CA")?)).client_auth_optional(true);
    }
    Ok(Some(tls))
}

/// Refuses to serve beyond loopback without TLS and authentication, unless
/// the operator said `--insecure` (logged as a warning).
fn check_exposure(addr: Option<std::net::SocketAddr>, config: &CoordinatorConfig, auth_enforced: bool) -> Result<(), ServeError> {
    let loopback = addr.is_some_and(|a| a.ip().is_loopback());
    let tls = config.tls_cert.is_some();
    if loopback || (tls && auth_enforced) {
        return Ok(());
    }
    let missing = match (tls, auth_enforced) {
        (false, false) => "TLS (--tls-cert/--tls-key) and authentication (a token: `stylefarm-coordinator token create`, or --auth required)",
        (false, true) => "TLS (--tls-cert/--tls-key)",
        _ => "authentication (a token: `stylefarm-coordinator token create`, or --auth required)",
    };
    if config.insecure {
        tracing::warn!(addr = ?addr, missing, "--insecure: serving beyond loopback without {missing}; anyone who reaches the port may be able to act on the farm");
        return Ok(());
    }
    Err(ServeError::Refused(format!(
        "refusing to serve on {} without {missing}; add them, listen on 127.0.0.1, or pass --insecure",
        addr.map(|a| a.to_string()).unwrap_or_default()
    )))
}

/// Where the coordinator serves: gRPC, HTTP `/metrics` if any, and the web
/// dashboard if any.
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: Option<TcpListener>,
    pub web: Option<TcpListener>,
}

async fn bind(addr: Option<std::net::SocketAddr>, what: &str) -> Result<Option<TcpListener>, ServeError> {
    match addr {
        Some(addr) => Ok(Some(TcpListener::bind(addr).await.map_err(|e| ServeError::Open(format!("binding {what} {addr}: {e}")))?)),
        None => Ok(None),
    }
}

/// Serves on `listener`, and on `config.metrics_listen` and
/// `config.http_listen` if set (see [`run_with`]).
pub async fn run(listener: TcpListener, config: CoordinatorConfig, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServeError> {
    let http = bind(config.metrics_listen, "metrics_listen").await?;
    let web = bind(config.http_listen, "http_listen").await?;
    run_with(Listeners { grpc: listener, http, web }, config, shutdown).await
}

/// Serves both services, gRPC health and reflection on `listeners.grpc`, and
/// `/metrics` on `listeners.http`, until `shutdown` resolves (or the state
/// store fails).
pub async fn run_with(listeners: Listeners, config: CoordinatorConfig, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServeError> {
    let Listeners { grpc: listener, http, web } = listeners;
    let pools = config.pools().map_err(|reason| ServeError::Config(crate::config::ConfigError::Invalid { field: "metrics_pools", reason }))?;
    let metrics = http.is_some().then(|| CoordMetrics::with_pools(Registry::new(), pools));
    let farm = open_farm(&config, metrics.clone())?;
    let addr = listener.local_addr().ok();
    let auth_enforced = farm.auth.enforced().map_err(|e| ServeError::Open(e.to_string()))?;
    check_exposure(addr, &config, auth_enforced)?;
    // the dashboard is HTTPS with the same certificate, under the same rule
    let web_tls = match (&web, &config.tls_cert, &config.tls_key) {
        (Some(_), Some(cert), Some(key)) => Some(crate::web::tls::acceptor(cert, key).map_err(ServeError::Tls)?),
        _ => None,
    };
    if let Some(web) = &web {
        check_exposure(web.local_addr().ok(), &config, auth_enforced)?;
    }
    let tls = tls_config(&config)?;
    // every task of the coordinator stops on one signal and is awaited at the end
    let mut tasks = Tasks::new();
    tasks.spawn("ticker", farm.ticker(Duration::from_millis(config.tick_ms), tasks.stopping()));
    if let Some(retain) = config.retain_finished {
        tracing::info!(retain_finished = %retain, "finished batches are deleted this long after they finish");
        tasks.spawn("retention", farm.retention(retain.as_millis_i64(), tasks.stopping()));
    }
    // without an allowlist it only gives up what an earlier run still owed, and ends
    tasks.spawn("webhooks", farm.deliveries(tasks.stopping()));
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<pb::coordinator_server::CoordinatorServer<ClientApi>>().await;
    health_reporter.set_serving::<pb::worker_api_server::WorkerApiServer<WorkerService>>().await;
    // a broken invariant: say NOT_SERVING rather than SERVING while every call fails
    let mut broken = farm.broken_signal();
    let reporter = health_reporter.clone();
    let stopping = tasks.stopping();
    tasks.spawn("health", async move {
        let is_broken = tokio::select! {
            b = broken.wait_for(|b| b.is_some()) => b.is_ok(),
            _ = stopping.wait() => false,
        };
        if is_broken {
            reporter.set_not_serving::<pb::coordinator_server::CoordinatorServer<ClientApi>>().await;
            reporter.set_not_serving::<pb::worker_api_server::WorkerApiServer<WorkerService>>().await;
            reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        }
    });
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let client_api = pb::coordinator_server::CoordinatorServer::new(ClientApi::new(Arc::clone(&farm)))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let worker_api = pb::worker_api_server::WorkerApiServer::new(WorkerService::new(Arc::clone(&farm))).max_decoding_message_size(MAX_MESSAGE_BYTES);
    // KEDA's external scaler: queue depth for autoscaling workers (no token: KEDA cannot send one)
    let scaler = config.scaler.then(|| ks::external_scaler_server::ExternalScalerServer::new(ScalerService::new(Arc::clone(&farm))));
    let mut fatal = farm.fatal_signal();
    if let (Some(http), Some(metrics)) = (http, &metrics) {
        let endpoint = crate::farm::MetricsEndpoint::new(Arc::clone(&farm), Arc::clone(metrics));
        let router = stylefarm_core::telemetry::router(Arc::new(endpoint) as Arc<dyn stylefarm_core::telemetry::Scrape>);
        let served = stylefarm_core::telemetry::serve(http, router, tasks.stopping().wait());
        tasks.spawn("metrics", log_listener_end(served, "metrics"));
    }
    if let Some(web) = web {
        let served = crate::web::serve(web, Arc::clone(&farm), web_tls, config.http_hosts.clone(), tasks.stopping().wait());
        tasks.spawn("dashboard", log_listener_end(served, "dashboard"));
    }
    tracing::info!(addr = ?addr, tls = tls.is_some(), mutual_tls = config.tls_client_ca.is_some(), auth = auth_enforced, scaler = config.scaler, "coordinator serving");
    let stopping = Arc::clone(&farm);
    let stop = async move {
        tokio::select! {
            _ = shutdown => {}
            _ = fatal.wait_for(|f| f.is_some()) => {}
        }
        // open watch streams and long polls would hold the graceful stop for ever
        stopping.begin_shutdown();
    };
    // the builder's tcp_nodelay only applies to listeners it binds itself: without
    // it, Nagle holds a response's trailers for the peer's delayed ACK (40 ms)
    let incoming = TcpListenerStream::new(listener).map(|stream| {
        let stream = stream?;
        stream.set_nodelay(true)?;
        Ok::<_, std::io::Error>(stream)
    });
    // callers are known before their messages are read (crate::gate)
    let gate = Gate::new(Arc::clone(&farm.auth), config.quotas.clone(), config.stall_timeout.0);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).map_err(|e| ServeError::Tls(e.to_string()))?;
    }
    let served = builder
        .tcp_nodelay(true)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .layer(GrpcMetricsLayer::new(metrics))
        .layer(GateLayer::new(gate))
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(client_api)
        .add_service(worker_api)
        .add_optional_service(scaler)
        .serve_with_incoming_shutdown(incoming, stop)
        .await;
    tasks.join().await;
    // statistics the tick writes once a second: the last second's too
    if farm.fatal_signal().borrow().is_none() {
        if let Err(e) = farm
            .apply(|s, fx, _| {
                s.flush_counters(fx);
                Ok(())
            })
            .await
        {
            tracing::warn!(error = %e, "could not write the worker counters at shutdown");
        }
    }
    served?;
    if let Some(reason) = farm.fatal_signal().borrow().clone() {
        return Err(ServeError::Fatal(reason));
    }
    tracing::info!("coordinator stopped");
    Ok(())
}

/// An HTTP listener's task: it serves until the stop signal, and says if it failed.
async fn log_listener_end(served: impl Future<Output = std::io::Result<()>>, listener: &'static str) {
    if let Err(e) = served.await {
        tracing::warn!(error = %e, listener, "an HTTP listener failed");
    }
}
