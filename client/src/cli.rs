//! The command line: global flags, the commands and their arguments, and the
//! connection every command opens with them.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use stylefarm_client::{Client, ClientError};
use stylefarm_core::knobs::KnobArgs;
use stylefarm_proto as pb;
use stylefarm_proto::connect::{read_token, ConnectOptions, Coordinator};

#[derive(Parser, Debug)]
#[command(name = "stylefarm", version, about = "stylefarm: submit style-transfer batches to a coordinator, watch them, fetch results")]
pub struct Cli {
    /// Coordinator URL.
    #[arg(long, global = true, env = "STYLEFARM_COORDINATOR", default_value = "http://127.0.0.1:50051")]
    pub coordinator: String,
    /// Machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// File holding the API token (else STYLEFARM_TOKEN; none for an open local coordinator).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// PEM CA that signed the coordinator's certificate (https:// URLs; default: the system roots).
    #[arg(long, global = true, env = "STYLEFARM_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Submit a batch: every content × every style (and/or a manifest); prints the batch id.
    Submit(Box<SubmitArgs>),
    /// Follow a batch to its end: a progress bar per running job, ETA, current loss.
    Watch { batch: String },
    /// A batch (with its jobs) or a job.
    Status { id: String },
    /// Batches, newest first.
    List {
        /// Only these states: queued, running, succeeded, failed, cancelled.
        #[arg(long, value_delimiter = ',')]
        state: Vec<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Cancel a batch, or one job with --job: queued jobs at once, running ones at their next heartbeat.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["batch", "job"])))]
    Cancel {
        batch: Option<String>,
        /// Only this job (its dependents, such as a video's later steps, follow).
        #[arg(long)]
        job: Option<String>,
    },
    /// Stop leasing a batch's jobs until `resume`; running jobs finish (or, with --now, go back to the queue without spending an attempt).
    Pause {
        batch: String,
        /// Hand running jobs back now instead of letting them finish.
        #[arg(long)]
        now: bool,
    },
    /// Run failed jobs again with a fresh attempt budget: every failed job of the batch, or one failed or cancelled job with --job.
    Retry {
        batch: String,
        /// Only this job (and the jobs that ended because of it).
        #[arg(long, conflicts_with = "failed")]
        job: Option<String>,
        /// Every failed job of the batch (the default).
        #[arg(long)]
        failed: bool,
    },
    /// Admin: let a worker take a batch's jobs again after the batch's blocklist shut it out.
    Unblock {
        worker: String,
        #[arg(long)]
        batch: String,
    },
    /// Lease a paused batch's jobs again.
    Resume { batch: String },
    /// Change a queued or running batch's priority (-1000..=1000, higher first), effective at the next lease.
    Priority {
        batch: String,
        #[arg(allow_negative_numbers = true)]
        priority: i32,
    },
    /// Download every succeeded job's outputs (image, trace, metadata, snapshots, animation).
    Fetch {
        batch: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Delete a batch: its jobs, their history and every output in the store
    /// (uploads stay). Refused while jobs run, unless --force.
    Delete {
        batch: String,
        /// Take running jobs back and cancel them first.
        #[arg(long)]
        force: bool,
    },
    /// Registered workers, their devices and running jobs; with an action
    /// (admin), take one out of rotation or back.
    Workers {
        #[command(subcommand)]
        action: Option<WorkersAction>,
    },
}

#[derive(Subcommand, Debug)]
pub enum WorkersAction {
    /// No new leases for the worker (kept across coordinator restarts); what it runs finishes.
    Disable { worker: String },
    /// Lease to the worker again.
    Enable { worker: String },
    /// Disable the worker and hand its running jobs back now, without spending an attempt.
    Drain { worker: String },
    /// Drop a worker that is gone (not connected, running nothing).
    Forget { worker: String },
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// Content images: local files (uploaded once) or object-store URLs.
    #[arg(long, num_args = 1..)]
    pub content: Vec<String>,
    /// A clip to stylise (instead of --content): temporally consistent, split
    /// over the farm; `fetch` then yields NAME-stylised.mp4 with the audio.
    #[arg(long, conflicts_with_all = ["content", "manifest"])]
    pub video: Option<String>,
    #[command(flatten)]
    pub video_knobs: stylefarm_core::video_knobs::VideoKnobArgs,
    /// Style images: local files or object-store URLs.
    #[arg(long, num_args = 1..)]
    pub style: Vec<String>,
    /// A batch described in TOML (see the README); flags add to it.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Batch name.
    #[arg(long)]
    pub name: Option<String>,
    /// -1000..=1000, higher runs first.
    #[arg(long)]
    pub priority: Option<i32>,
    /// key=value, repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Worker pools: run every job only on workers whose labels meet this,
    /// e.g. `pool=studio-b` or `vram>=48` (=, !=, >=, >, <=, <); repeatable.
    #[arg(long = "require")]
    pub requires: Vec<stylefarm_core::labels::Requirement>,
    /// POST a signed JSON summary here when the batch ends; repeatable (at
    /// most 4). The coordinator only posts under its --webhook-allow prefixes.
    #[arg(long = "notify", value_name = "URL")]
    pub notify: Vec<String>,
    /// What --notify URLs are told: the batch's end, or also each job that fails for good.
    #[arg(long, value_enum)]
    pub notify_on: Option<NotifyOn>,
    /// Attempts per job (default: the coordinator's).
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Idempotency key: resubmitting with the same id returns the first batch.
    #[arg(long)]
    pub request_id: Option<String>,
    /// Watch the batch until it finishes; the exit code tells how it ended.
    #[arg(long)]
    pub wait: bool,
    /// Per-attempt time limit in seconds (default: derived from each job's size and iterations).
    #[arg(long)]
    pub time_limit_s: Option<u32>,
    #[command(flatten)]
    pub knobs: KnobArgs,
}

/// What a batch's `notify` URLs are told about.
#[derive(clap::ValueEnum, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NotifyOn {
    /// The batch ended (succeeded, failed or cancelled).
    #[serde(alias = "batch-end")]
    BatchEnd,
    /// The batch ended, and each job that failed for good.
    Failures,
}

impl NotifyOn {
    pub fn wire(self) -> pb::NotifyOn {
        match self {
            NotifyOn::BatchEnd => pb::NotifyOn::BatchEnd,
            NotifyOn::Failures => pb::NotifyOn::Failures,
        }
    }
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("`{text}` is not key=value"))
}

/// The client library's [`Client`] (submit, watch, wait, fetch) over [`connect`]'s stub.
pub async fn connect_client(cli: &Cli) -> Result<Client> {
    Ok(Client::from_coordinator(connect(cli).await?))
}

pub async fn connect(cli: &Cli) -> Result<Coordinator> {
    let url = &cli.coordinator;
    let token = read_token(cli.token_file.as_deref()).map_err(|e| ClientError::Input(e.to_string()))?;
    let options = ConnectOptions { url: url.clone(), token, tls_ca: cli.tls_ca.clone(), tls_identity: None };
    let endpoint = options.endpoint().map_err(|e| ClientError::Input(format!("--coordinator: {e}")))?;
    let channel = endpoint.connect().await.with_context(|| format!("connecting to the coordinator at {url}"))?;
    Ok(options.coordinator(channel).map_err(|e| ClientError::Input(e.to_string()))?)
}
