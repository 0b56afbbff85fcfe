//! `stylefarm-coordinator`: serves the stylefarm gRPC API.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use stylefarm_coordinator::auth::{AuthMode, Role, TokenStore};
use stylefarm_coordinator::bootstrap::Init;
use stylefarm_coordinator::server::{run_with, Listeners};
use stylefarm_coordinator::store::Durability;
use stylefarm_coordinator::CoordinatorConfig;

/// mimalloc: the coordinator's work per job is mostly small allocations (gRPC
/// frames, messages, state rows); glibc malloc spent ~20 % of its CPU on them.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "stylefarm-coordinator", version, about = "stylefarm coordinator: batches in, leases out, results kept")]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML file with any CoordinatorConfig fields (flags and STYLEFARM_* env override it).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Address to serve on [default: 127.0.0.1:50051].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// State directory: state.sqlite, auth.sqlite, and objects/ for the default file:// store [default: ./stylefarm-data].
    #[arg(long, global = true)]
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
    /// auto: tokens are required once any exists; required: always.
    #[arg(long)]
    auth: Option<AuthMode>,
    /// Serve beyond loopback without TLS and authentication (logged as a warning).
    #[arg(long)]
    insecure: bool,
    /// Import the token files of this folder at start (ROLE.NAME, e.g. from
    /// `init` or a mounted Secret); the coordinator does not start if it cannot.
    #[arg(long)]
    tokens_from: Option<PathBuf>,
    /// PEM certificate chain: serve TLS (with --tls-key).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// PEM CA: workers must present a client certificate it signed (mutual TLS).
    #[arg(long)]
    tls_client_ca: Option<PathBuf>,
    /// A URL prefix users may name as inputs besides the store (repeatable).
    #[arg(long = "allow-input-prefix")]
    allow_input_prefix: Vec<String>,
    /// Most jobs in one batch [default: 100000].
    #[arg(long)]
    max_jobs_per_batch: Option<usize>,
    /// Most frames one video batch may have [default: 10000].
    #[arg(long)]
    max_video_frames: Option<u32>,
    /// Device memory one tile of a print may need, in bytes [default: 0 = the
    /// largest device among the connected workers that may take the job].
    #[arg(long)]
    tile_memory_bytes: Option<u64>,
    /// Do not serve KEDA's external scaler (queue depth, answered without a token).
    #[arg(long)]
    no_scaler: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// A worker pool, as the labels its workers carry (`pool=studio-b,vram=24`),
    /// whose demand `stylefarm_pool_demand` reports even with none of its
    /// workers known (scaled to zero); repeatable.
    #[arg(long = "metrics-pool", value_name = "LABELS")]
    metrics_pools: Vec<String>,
    /// Serve the web dashboard at http://ADDR/ (e.g. 127.0.0.1:8080); same
    /// tokens and roles as the gRPC API.
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Delete finished batches, rows and objects, this long after they
    /// finished (e.g. 30d, 12h) [default: keep for ever].
    #[arg(long)]
    retain_finished: Option<stylefarm_core::duration::HumanDuration>,
    /// End a call whose sender keeps the coordinator waiting this long for
    /// the next piece of its request (e.g. 30s) [default: 30s].
    #[arg(long)]
    stall_timeout: Option<stylefarm_core::duration::HumanDuration>,
    /// A URL prefix webhooks may be sent under (repeatable), e.g.
    /// https://hooks.example/farm/; nothing else is ever POSTed to.
    #[arg(long = "webhook-allow")]
    webhook_allow: Vec<String>,
    /// The HMAC-SHA256 signing key (a file, 16+ bytes) of the --webhook-allow prefixes.
    #[arg(long)]
    webhook_secret_file: Option<PathBuf>,
    /// A URL told about every batch (repeatable; under a --webhook-allow prefix).
    #[arg(long = "webhook")]
    webhook: Vec<String>,
    /// What --webhook URLs are told about: batch_end, or failures (each job
    /// that fails for good too) [default: batch_end].
    #[arg(long)]
    webhook_on: Option<stylefarm_coordinator::model::NotifyOn>,
    /// Give up a webhook delivery still failing this long after its event [default: 24h].
    #[arg(long)]
    webhook_give_up_after: Option<stylefarm_core::duration::HumanDuration>,
    /// Log filter (RUST_LOG syntax).
    #[arg(long, env = "STYLEFARM_LOG", default_value = "info")]
    log: String,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Exit 0 if the coordinator at --url says SERVING on the gRPC health service (container HEALTHCHECK).
    Health {
        /// [default: this machine's side of the listen address (--config, STYLEFARM_LISTEN, --listen)]
        #[arg(long, env = "STYLEFARM_HEALTH_URL")]
        url: Option<String>,
        /// PEM CA of the coordinator's certificate (https:// URLs).
        #[arg(long, env = "STYLEFARM_TLS_CA")]
        tls_ca: Option<PathBuf>,
    },
    /// Make what a closed deployment needs, once: a CA and the coordinator's
    /// certificate, an admin and a worker token (files under --out; kept if
    /// there already, so it can run on every start).
    Init {
        /// Where to write: ca/, coordinator/{tls,tokens}/, worker/, admin/.
        #[arg(long)]
        out: PathBuf,
        /// Write the workers' token and CA certificate here instead of OUT/worker.
        #[arg(long)]
        worker_out: Option<PathBuf>,
        /// Names and addresses the coordinator is reached by, comma-separated
        /// (localhost and 127.0.0.1 are always in the certificate).
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
        #[arg(long, default_value = "ops")]
        admin_name: String,
        #[arg(long, default_value = "workers")]
        worker_name: String,
    },
    /// API tokens (work on the data dir of a running or stopped coordinator).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
}

#[derive(Subcommand, Debug)]
enum TokenAction {
    /// Make a token; prints only the token on stdout (it is not stored, only its hash).
    Create {
        /// submit, worker or admin.
        #[arg(long)]
        role: Role,
        /// A unique name (logs and batch owners show it).
        #[arg(long)]
        name: String,
    },
    /// Every token's name, role, id and dates (never the token).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by name: refused from the next call on, no restart needed.
    Revoke { name: String },
}

fn token_command(data_dir: &std::path::Path, action: &TokenAction) -> Result<()> {
    let store = TokenStore::open(data_dir)?;
    match action {
        TokenAction::Create { role, name } => println!("{}", store.create(name, *role)?),
        TokenAction::List { json } => {
            let tokens = store.list()?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
            } else {
                for t in tokens {
                    let state = if t.revoked_ms.is_some() { "revoked" } else { "active" };
                    println!("{:<24} {:<7} {:<8} id {}", t.name, t.role, state, t.id);
                }
            }
        }
        TokenAction::Revoke { name } => {
            if store.revoke(name)? {
                eprintln!("revoked {name}");
            } else {
                eprintln!("{name} was already revoked");
            }
        }
    }
    Ok(())
}

fn config(args: &Args) -> Result<CoordinatorConfig> {
    let mut config = match &args.config {
        Some(path) => CoordinatorConfig::from_file(path)?,
        None => CoordinatorConfig::default(),
    };
    config.apply_env()?;
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = &args.data_dir {
        config.data_dir = v.clone();
    }
    if let Some(v) = &args.store {
        config.store = Some(v.clone());
    }
    if let Some(v) = args.lease_ttl_ms {
        config.lease_ttl_ms = v;
    }
    if let Some(v) = args.heartbeat_interval_ms {
        config.heartbeat_interval_ms = v;
    }
    if let Some(v) = args.max_attempts {
        config.max_attempts = v;
    }
    if let Some(v) = args.backoff_base_ms {
        config.backoff_base_ms = v;
    }
    if args.sync_full {
        config.durability = Durability::PowerLoss;
    }
    if let Some(v) = args.auth {
        config.auth = v;
    }
    if args.insecure {
        config.insecure = true;
    }
    if let Some(v) = &args.tokens_from {
        config.tokens_from = Some(v.clone());
    }
    if let Some(v) = &args.tls_cert {
        config.tls_cert = Some(v.clone());
    }
    if let Some(v) = &args.tls_key {
        config.tls_key = Some(v.clone());
    }
    if let Some(v) = &args.tls_client_ca {
        config.tls_client_ca = Some(v.clone());
    }
    config.allowed_input_prefixes.extend(args.allow_input_prefix.iter().cloned());
    if let Some(v) = args.max_jobs_per_batch {
        config.max_jobs_per_batch = v;
    }
    if let Some(v) = args.retain_finished {
        config.retain_finished = Some(v);
    }
    if let Some(v) = args.stall_timeout {
        config.stall_timeout = v;
    }
    if let Some(v) = args.max_video_frames {
        config.max_video_frames = v;
    }
    if let Some(v) = args.tile_memory_bytes {
        config.tile_memory_bytes = v;
    }
    if args.no_scaler {
        config.scaler = false;
    }
    let hooks = &mut config.webhooks;
    hooks.allow.extend(args.webhook_allow.iter().map(|prefix| stylefarm_coordinator::notify::AllowEntry { prefix: prefix.clone(), secret_file: None }));
    hooks.urls.extend(args.webhook.iter().cloned());
    if let Some(v) = &args.webhook_secret_file {
        hooks.secret_file = Some(v.clone());
    }
    if let Some(v) = args.webhook_on {
        hooks.on = v;
    }
    if let Some(v) = args.webhook_give_up_after {
        hooks.give_up_after = Some(v);
    }
    if let Some(v) = args.metrics_listen {
        config.metrics_listen = Some(v);
    }
    if let Some(v) = args.http_listen {
        config.http_listen = Some(v);
    }
    config.metrics_pools.extend(args.metrics_pools.iter().cloned());
    config.validate()?;
    Ok(config)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            },
            Err(e) => {
                tracing::warn!(error = %e, "no SIGTERM handler; stopping on Ctrl-C only");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    // logs to stderr; spans over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set (flushed at exit)
    let traces = stylefarm_core::traces::init("stylefarm-coordinator", &args.log, args.log_json)?;
    let config = config(&args)?;
    if let Some(Command::Health { url, tls_ca }) = &args.command {
        // by default, this machine's side of the address the server listens on (same config)
        let url = url.clone().unwrap_or_else(|| {
            let scheme = if tls_ca.is_some() || config.tls_cert.is_some() { "https" } else { "http" };
            format!("{scheme}://{}", stylefarm_proto::connect::local_dial_addr(config.listen))
        });
        let options = stylefarm_proto::connect::ConnectOptions { url, tls_ca: tls_ca.clone(), ..Default::default() };
        options.check_health(std::time::Duration::from_secs(3)).await?;
        return Ok(());
    }
    if let Some(Command::Token { action }) = &args.command {
        return token_command(&config.data_dir, action);
    }
    if let Some(Command::Init { out, worker_out, hosts, admin_name, worker_name }) = &args.command {
        let init =
            Init { out: out.clone(), worker_out: worker_out.clone(), hosts: hosts.clone(), admin_name: admin_name.clone(), worker_name: worker_name.clone() };
        for made in init.run()? {
            eprintln!("{} {}", if made.created { "made" } else { "kept" }, made.path.display());
        }
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    // scripts read the bound addresses (useful with port 0) from these lines
    println!("listening on {}", listener.local_addr()?);
    let http = match config.metrics_listen {
        Some(addr) => {
            let http = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding --metrics-listen {addr}"))?;
            println!("metrics on http://{}/metrics", http.local_addr()?);
            Some(http)
        }
        None => None,
    };
    let web = match config.http_listen {
        Some(addr) => {
            let web = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding --http-listen {addr}"))?;
            let scheme = if config.tls_cert.is_some() { "https" } else { "http" };
            println!("dashboard on {scheme}://{}/", web.local_addr()?);
            Some(web)
        }
        None => None,
    };
    let served = run_with(Listeners { grpc: listener, http, web }, config, shutdown_signal()).await;
    traces.shutdown().await;
    served?;
    Ok(())
}
