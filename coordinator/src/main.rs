//! `stylefarm-coordinator`: serves the stylefarm gRPC API.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use stylefarm_coordinator::{run, CoordinatorConfig};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(name = "stylefarm-coordinator", version, about = "stylefarm coordinator: batches in, leases out, results kept")]
struct Args {
    /// TOML file with any CoordinatorConfig fields (flags and STYLEFARM_* env override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to serve on [default: 127.0.0.1:50051].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// State directory: state.sqlite, and objects/ for the default file:// store [default: ./stylefarm-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Object store URL: file://, s3://, gs://, az://, memory:// [default: file://DATA_DIR/objects].
    #[arg(long)]
    store: Option<String>,
    /// Lease TTL; heartbeats extend it [default: 30000].
    #[arg(long)]
    lease_ttl_ms: Option<i64>,
    /// Heartbeat interval told to workers [default: 5000].
    #[arg(long)]
    heartbeat_interval_ms: Option<i64>,
    /// Default attempts per job [default: 3].
    #[arg(long)]
    max_attempts: Option<u32>,
    /// First retry delay, doubling per attempt [default: 2000].
    #[arg(long)]
    backoff_base_ms: Option<i64>,
    /// fsync every commit (survives power loss, slower).
    #[arg(long)]
    sync_full: bool,
    /// Log filter (RUST_LOG syntax).
    #[arg(long, env = "STYLEFARM_LOG", default_value = "info")]
    log: String,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

fn config(args: &Args) -> Result<CoordinatorConfig> {
    let mut config = match &args.config {
        Some(path) => CoordinatorConfig::from_file(path)?,
        None => CoordinatorConfig::default(),
    };
    config.apply_env()?;
    if let Some(v) = args.listen { config.listen = v; }
    if let Some(v) = &args.data_dir { config.data_dir = v.clone(); }
    if let Some(v) = &args.store { config.store = Some(v.clone()); }
    if let Some(v) = args.lease_ttl_ms { config.lease_ttl_ms = v; }
    if let Some(v) = args.heartbeat_interval_ms { config.heartbeat_interval_ms = v; }
    if let Some(v) = args.max_attempts { config.max_attempts = v; }
    if let Some(v) = args.backoff_base_ms { config.backoff_base_ms = v; }
    if args.sync_full { config.sync_full = true; }
    config.validate()?;
    Ok(config)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let filter = EnvFilter::try_new(&args.log).context("--log")?;
    if args.log_json {
        tracing_subscriber::fmt().with_env_filter(filter).json().with_writer(std::io::stderr).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    let config = config(&args)?;
    let listener = tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    // scripts read the bound address (useful with port 0) from this line
    println!("listening on {}", listener.local_addr()?);
    run(listener, config, shutdown_signal()).await?;
    Ok(())
}
