//! `stylefarm`: the stylefarm client.
//!
//! Exit codes: 0 done (a waited-for batch succeeded); 1 a batch finished with
//! failed jobs; 2 invalid input (ours or the coordinator's INVALID_ARGUMENT);
//! 3 the coordinator is unreachable or unavailable; 4 not found; 5 the batch was
//! cancelled; 6 any other error; 7 not authenticated or not allowed (a missing,
//! wrong or revoked token, or the wrong role).

mod frames;
mod manifest;
mod upload;
mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use stylefarm_core::knobs::KnobArgs;
use stylefarm_proto as pb;
use stylefarm_proto::connect::{read_token, ConnectOptions, Coordinator};
use upload::Input;

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    Input(String),
    #[error("batch {0} finished with failed jobs")]
    BatchFailed(String),
    #[error("batch {0} was cancelled")]
    BatchCancelled(String),
}

#[derive(Parser, Debug)]
#[command(name = "stylefarm", version, about = "stylefarm: submit style-transfer batches to a coordinator, watch them, fetch results")]
struct Cli {
    /// Coordinator URL.
    #[arg(long, global = true, env = "STYLEFARM_COORDINATOR", default_value = "http://127.0.0.1:50051")]
    coordinator: String,
    /// Machine-readable JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// File holding the API token (else STYLEFARM_TOKEN; none for an open local coordinator).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// PEM CA that signed the coordinator's certificate (https:// URLs; default: the system roots).
    #[arg(long, global = true, env = "STYLEFARM_TLS_CA")]
    tls_ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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
    /// Cancel a batch: queued jobs at once, running ones at their next heartbeat.
    Cancel { batch: String },
    /// Download every succeeded job's outputs (image, trace, metadata, snapshots, animation).
    Fetch {
        batch: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Registered workers, their devices and running jobs.
    Workers,
}

#[derive(Args, Debug)]
struct SubmitArgs {
    /// Content images: local files (uploaded once) or object-store URLs.
    #[arg(long, num_args = 1..)]
    content: Vec<String>,
    /// A clip to stylise (instead of --content): temporally consistent, split
    /// over the farm; `fetch` then yields NAME-stylised.mp4 with the audio.
    #[arg(long, conflicts_with_all = ["content", "manifest"])]
    video: Option<String>,
    #[command(flatten)]
    video_knobs: stylefarm_core::video_knobs::VideoKnobArgs,
    /// Style images: local files or object-store URLs.
    #[arg(long, num_args = 1..)]
    style: Vec<String>,
    /// A batch described in TOML (see the README); flags add to it.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Batch name.
    #[arg(long)]
    name: Option<String>,
    /// -1000..=1000, higher runs first.
    #[arg(long)]
    priority: Option<i32>,
    /// key=value, repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Attempts per job (default: the coordinator's).
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Idempotency key: resubmitting with the same id returns the first batch.
    #[arg(long)]
    request_id: Option<String>,
    /// Watch the batch until it finishes; the exit code tells how it ended.
    #[arg(long)]
    wait: bool,
    /// Per-attempt time limit in seconds (default: derived from each job's size and iterations).
    #[arg(long)]
    time_limit_s: Option<u32>,
    #[command(flatten)]
    knobs: KnobArgs,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("`{text}` is not key=value"))
}

async fn connect(cli: &Cli) -> Result<Coordinator> {
    let url = &cli.coordinator;
    let token = read_token(cli.token_file.as_deref()).map_err(|e| Failure::Input(e.to_string()))?;
    let options = ConnectOptions { url: url.clone(), token, tls_ca: cli.tls_ca.clone(), tls_identity: None };
    let endpoint = options.endpoint().map_err(|e| Failure::Input(format!("--coordinator: {e}")))?;
    let channel = endpoint.connect().await.with_context(|| format!("connecting to the coordinator at {url}"))?;
    Ok(options.coordinator(channel).map_err(|e| Failure::Input(e.to_string()))?)
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn submit(cli: &Cli, args: &SubmitArgs) -> Result<()> {
    let manifest = match &args.manifest {
        Some(path) => Some((manifest::Manifest::read(path)?, path.parent().map(PathBuf::from).unwrap_or_default())),
        None => None,
    };
    let mut contents: Vec<Input> = args.content.iter().map(|c| Input::parse(c)).collect();
    let mut styles: Vec<Input> = args.style.iter().map(|s| Input::parse(s)).collect();
    let mut job_inputs: Vec<(String, Input, Vec<Input>, String)> = Vec::new();
    let mut defaults_json = String::new();
    if let Some((m, base)) = &manifest {
        contents.extend(m.contents.iter().map(|c| manifest::input(base, c)));
        styles.extend(m.styles.iter().map(|s| manifest::input(base, s)));
        defaults_json = manifest::params_json(m.params.as_ref(), None)?;
        for job in &m.jobs {
            let params = manifest::params_json(m.params.as_ref(), job.params.as_ref())?;
            job_inputs.push((job.name.clone(), manifest::input(base, &job.content), job.styles.iter().map(|s| manifest::input(base, s)).collect(), params));
        }
    }
    if let Some(video) = &args.video {
        return submit_video(cli, args, Input::parse(video), styles).await;
    }
    if contents.is_empty() != styles.is_empty() {
        return Err(Failure::Input("give both --content and --style (every content is rendered with every style)".into()).into());
    }
    if contents.is_empty() && job_inputs.is_empty() {
        return Err(Failure::Input("nothing to submit: give --content and --style, or --manifest".into()).into());
    }
    // every job's params resolve here: preset → manifest params → job params → --params file → flags
    let resolve = |overlay: &str| -> Result<pb::RenderSettings> {
        let overlay = match serde_json::from_str::<serde_json::Value>(overlay) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        let params = args.knobs.to_params_over(overlay).map_err(|e| Failure::Input(e.to_string()))?;
        Ok(pb::RenderSettings { params_json: serde_json::to_string(&params)?, ..Default::default() })
    };
    let settings = resolve(&defaults_json)?;
    let mut client = connect(cli).await?;
    let all: Vec<Input> =
        contents.iter().chain(&styles).cloned().chain(job_inputs.iter().flat_map(|(_, c, s, _)| std::iter::once(c.clone()).chain(s.iter().cloned()))).collect();
    let refs = upload::resolve_inputs(&mut client, &all, &|_| false, cli.json).await?;
    let (m, _) = manifest.as_ref().map(|(m, b)| (Some(m), b)).unwrap_or((None, &PathBuf::new()));
    // contents × styles as explicit jobs, named after the files ("chelsea-x-retina")
    let mut jobs = Vec::with_capacity(contents.len() * styles.len() + job_inputs.len());
    for content in &contents {
        for style in &styles {
            jobs.push(pb::JobSpec {
                name: format!("{}-x-{}", stem(content), stem(style)),
                content: Some(refs[content].clone()),
                styles: vec![refs[style].clone()],
                settings: Some(settings.clone()),
            });
        }
    }
    let explicit = job_inputs
        .iter()
        .map(|(name, content, job_styles, params)| -> Result<pb::JobSpec> {
            Ok(pb::JobSpec {
                name: name.clone(),
                content: Some(refs[content].clone()),
                styles: job_styles.iter().map(|s| refs[s].clone()).collect(),
                settings: Some(resolve(params)?),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    jobs.extend(explicit);
    let mut labels: HashMap<String, String> = m.map(|m| m.labels.clone().into_iter().collect()).unwrap_or_default();
    labels.extend(args.labels.iter().cloned());
    let request = pb::SubmitBatchRequest {
        name: args.name.clone().or_else(|| m.and_then(|m| m.name.clone())).unwrap_or_default(),
        priority: args.priority.or_else(|| m.and_then(|m| m.priority)).unwrap_or(0),
        labels,
        jobs,
        cartesian: None,
        max_attempts: args.max_attempts.or_else(|| m.and_then(|m| m.max_attempts)).unwrap_or(0),
        request_id: args.request_id.clone().unwrap_or_default(),
        job_time_limit_s: args.time_limit_s.unwrap_or(0),
        video: None,
    };
    send(cli, args, client, request).await
}

/// A clip with its styles: the coordinator probes it and plans its jobs.
async fn submit_video(cli: &Cli, args: &SubmitArgs, video: Input, styles: Vec<Input>) -> Result<()> {
    if styles.is_empty() {
        return Err(Failure::Input("give --style with --video".into()).into());
    }
    let params = args.knobs.to_params().map_err(|e| Failure::Input(e.to_string()))?;
    // checked here too, so a typo fails before the upload
    args.video_knobs.to_params(params.iterations).map_err(|e| Failure::Input(e.to_string()))?;
    let mut client = connect(cli).await?;
    let all: Vec<Input> = std::iter::once(video.clone()).chain(styles.iter().cloned()).collect();
    let refs = upload::resolve_inputs(&mut client, &all, &|input| *input == video, cli.json).await?;
    let spec = pb::VideoSpec {
        video: Some(refs[&video].clone()),
        styles: styles.iter().map(|s| refs[s].clone()).collect(),
        settings: Some(pb::RenderSettings { params_json: serde_json::to_string(&params)?, ..Default::default() }),
        video_params_json: serde_json::Value::Object(args.video_knobs.overlay()).to_string(),
        name: stem(&video),
    };
    let request = pb::SubmitBatchRequest {
        name: args.name.clone().unwrap_or_else(|| stem(&video)),
        priority: args.priority.unwrap_or(0),
        labels: args.labels.iter().cloned().collect(),
        jobs: Vec::new(),
        cartesian: None,
        max_attempts: args.max_attempts.unwrap_or(0),
        request_id: args.request_id.clone().unwrap_or_default(),
        job_time_limit_s: args.time_limit_s.unwrap_or(0),
        video: Some(spec),
    };
    send(cli, args, client, request).await
}

/// Submits, prints the batch id, and with --wait follows it to the end.
async fn send(cli: &Cli, args: &SubmitArgs, mut client: Coordinator, request: pb::SubmitBatchRequest) -> Result<()> {
    let mut request = tonic::Request::new(request);
    stylefarm_core::traces::inject(&tracing::Span::current(), request.metadata_mut());
    let response = client.submit_batch(request).await?.into_inner();
    if cli.json && !args.wait {
        print_json(&serde_json::json!({"batch_id": response.batch_id, "job_ids": response.job_ids, "deduplicated": response.deduplicated}))?;
    } else {
        println!("{}", response.batch_id);
        eprintln!(
            "submitted batch {} with {} jobs{}",
            response.batch_id,
            response.job_ids.len(),
            if response.deduplicated { " (already submitted with this request id)" } else { "" }
        );
    }
    if args.wait {
        let batch = watch::watch(&mut client, &response.batch_id, cli.json).await?;
        return finish(cli, batch);
    }
    Ok(())
}

fn stem(input: &Input) -> String {
    let name = match input {
        Input::File(path) => path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        Input::Url(url) => url.rsplit('/').next().unwrap_or(url).split('.').next().unwrap_or_default().to_string(),
    };
    name.chars().take(60).collect()
}

fn finish(cli: &Cli, batch: pb::Batch) -> Result<()> {
    if cli.json {
        print_json(&batch_json(&batch))?;
    }
    match pb::BatchState::try_from(batch.state) {
        Ok(pb::BatchState::Succeeded) => Ok(()),
        Ok(pb::BatchState::Cancelled) => Err(Failure::BatchCancelled(batch.id).into()),
        _ => Err(Failure::BatchFailed(batch.id).into()),
    }
}

fn batch_json(b: &pb::Batch) -> serde_json::Value {
    let c = b.counts.unwrap_or_default();
    serde_json::json!({
        "id": b.id, "name": b.name, "state": watch::batch_state_name(b.state), "priority": b.priority, "labels": b.labels,
        "created_at_ms": b.created_at_ms, "started_at_ms": b.started_at_ms, "finished_at_ms": b.finished_at_ms, "owner": b.owner,
        "counts": {"total": c.total, "queued": c.queued, "running": c.running, "succeeded": c.succeeded, "failed": c.failed, "cancelled": c.cancelled},
    })
}

fn job_json(j: &pb::Job) -> serde_json::Value {
    let result = j.result.as_ref().map(|r| {
        serde_json::json!({
            "prefix": r.prefix, "final_loss": r.final_loss, "iterations": r.iterations, "engine_ms": r.engine_ms, "device": r.device,
            "outputs": r.outputs.iter().map(|o| serde_json::json!({"key": o.key, "size_bytes": o.size_bytes, "kind": o.kind})).collect::<Vec<_>>(),
        })
    });
    let progress = j.progress.as_ref().map(|p| {
        serde_json::json!({
            "iteration": p.iteration, "total_iterations": p.total_iterations, "scale": p.scale, "scales": p.scales,
            "loss": p.latest.as_ref().map(|r| r.total),
        })
    });
    serde_json::json!({
        "id": j.id, "batch_id": j.batch_id, "index": j.index, "name": j.name, "state": watch::job_state_name(j.state),
        "attempt": j.attempt, "max_attempts": j.max_attempts, "worker_id": j.worker_id, "error": j.error,
        "error_retryable": j.error_retryable, "estimate_bytes": j.estimate_bytes, "result": result, "progress": progress,
        "created_at_ms": j.created_at_ms, "started_at_ms": j.started_at_ms, "finished_at_ms": j.finished_at_ms,
        "waiting_reason": j.waiting_reason, "time_limit_ms": j.time_limit_ms, "attempts_handed_back": j.attempts_handed_back,
        "params": serde_json::from_str::<serde_json::Value>(&j.params_json).unwrap_or_default(),
        "depends_on": j.depends_on, "task": j.task, "frame": j.frame,
    })
}

async fn status(cli: &Cli, id: &str) -> Result<()> {
    let mut client = connect(cli).await?;
    if id.starts_with('j') {
        let job = client.get_job(pb::GetJobRequest { job_id: id.to_string() }).await?.into_inner();
        if cli.json {
            return print_json(&job_json(&job));
        }
        println!("{} {} [{}] attempt {}/{} worker {}", job.id, job.name, watch::job_state_name(job.state), job.attempt, job.max_attempts, job.worker_id);
        if !job.error.is_empty() {
            println!("  error: {}", job.error);
        }
        if !job.waiting_reason.is_empty() {
            println!("  waiting: {}", job.waiting_reason);
        }
        if let Some(r) = &job.result {
            println!("  final loss {:.4e} after {} iterations, {:.1} s on {}", r.final_loss, r.iterations, r.engine_ms / 1e3, r.device);
            for o in &r.outputs {
                println!("  {} ({} bytes)", o.key, o.size_bytes);
            }
        }
        return Ok(());
    }
    let response = client.get_batch(pb::GetBatchRequest { batch_id: id.to_string(), include_jobs: true }).await?.into_inner();
    let batch = response.batch.unwrap_or_default();
    if cli.json {
        let frames: Vec<serde_json::Value> = stylefarm_proto::frames::frame_board(&response.jobs)
            .iter()
            .map(|c| serde_json::json!({"frame": c.frame + 1, "state": c.state.as_str(), "job": response.jobs[c.job].id}))
            .collect();
        return print_json(&serde_json::json!({"batch": batch_json(&batch), "jobs": response.jobs.iter().map(job_json).collect::<Vec<_>>(), "frames": frames}));
    }
    let c = batch.counts.unwrap_or_default();
    println!(
        "batch {} {:?} [{}] priority {}: {} jobs ({} queued, {} running, {} succeeded, {} failed, {} cancelled)",
        batch.id,
        batch.name,
        watch::batch_state_name(batch.state),
        batch.priority,
        c.total,
        c.queued,
        c.running,
        c.succeeded,
        c.failed,
        c.cancelled
    );
    for job in &response.jobs {
        let detail = match (&job.progress, &job.result) {
            (_, Some(r)) => format!("loss {:.3e}", r.final_loss),
            (Some(p), None) => format!("{}/{} loss {:.3e}", p.iteration, p.total_iterations, p.latest.as_ref().map(|r| r.total).unwrap_or(f64::NAN)),
            _ => String::new(),
        };
        let error = match (job.error.is_empty(), job.waiting_reason.is_empty()) {
            (false, _) => format!(" ({})", job.error),
            (true, false) => format!(" (waiting: {})", job.waiting_reason),
            _ => String::new(),
        };
        println!("  {:<8} {:<36} {:<10} attempt {} {}{}", job.id, job.name, watch::job_state_name(job.state), job.attempt, detail, error);
    }
    if let Some(frames) = frames::view(&response.jobs) {
        println!("{frames}");
    }
    Ok(())
}

fn parse_state(text: &str) -> Result<i32> {
    let state = match text {
        "queued" => pb::BatchState::Queued,
        "running" => pb::BatchState::Running,
        "succeeded" => pb::BatchState::Succeeded,
        "failed" => pb::BatchState::Failed,
        "cancelled" => pb::BatchState::Cancelled,
        other => return Err(Failure::Input(format!("--state `{other}` is not one of queued, running, succeeded, failed, cancelled")).into()),
    };
    Ok(state as i32)
}

async fn list(cli: &Cli, states: &[String], limit: u32) -> Result<()> {
    let states = states.iter().map(|s| parse_state(s)).collect::<Result<Vec<_>>>()?;
    let mut client = connect(cli).await?;
    let mut batches = Vec::new();
    let mut token = String::new();
    while batches.len() < limit as usize {
        let page = client
            .list_batches(pb::ListBatchesRequest { page_size: (limit as usize - batches.len()).min(1000) as u32, page_token: token, states: states.clone() })
            .await?
            .into_inner();
        batches.extend(page.batches);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    if cli.json {
        return print_json(&batches.iter().map(batch_json).collect::<Vec<_>>());
    }
    for b in &batches {
        let c = b.counts.unwrap_or_default();
        println!("{:<8} {:<10} {:>6} jobs {:>6} done {:>4} failed  {}", b.id, watch::batch_state_name(b.state), c.total, c.succeeded, c.failed, b.name);
    }
    Ok(())
}

async fn fetch(cli: &Cli, batch: &str, out: &std::path::Path) -> Result<()> {
    let mut client = connect(cli).await?;
    let response = client.get_batch(pb::GetBatchRequest { batch_id: batch.to_string(), include_jobs: true }).await?.into_inner();
    let mut fetched = Vec::new();
    for job in response.jobs.iter().filter(|j| j.state == pb::JobState::Succeeded as i32) {
        let dir = out.join(format!("{}-{}", job.id, sanitize(&job.name)));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut stream = client.download_outputs(pb::DownloadOutputsRequest { job_id: job.id.clone() }).await?.into_inner();
        let mut files: HashMap<String, Vec<u8>> = HashMap::new();
        while let Some(chunk) = stream.message().await? {
            let name = sanitize_path(&chunk.name);
            let buffer = files.entry(name.clone()).or_default();
            buffer.extend_from_slice(&chunk.data);
            if chunk.last {
                let path = dir.join(&name);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let data = files.remove(&name).unwrap_or_default();
                std::fs::write(&path, &data).with_context(|| format!("writing {}", path.display()))?;
                // a video batch's clip also lands at the top: out/NAME-stylised.mp4
                if name.ends_with(".mp4") && !name.contains('/') {
                    let top = out.join(&name);
                    std::fs::write(&top, &data).with_context(|| format!("writing {}", top.display()))?;
                    fetched.push(top);
                }
                fetched.push(path);
            }
        }
    }
    if cli.json {
        return print_json(&fetched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>());
    }
    for path in &fetched {
        println!("{}", path.display());
    }
    let skipped = response.jobs.iter().filter(|j| j.state != pb::JobState::Succeeded as i32).count();
    eprintln!(
        "{} files from {} succeeded jobs{}",
        fetched.len(),
        response.jobs.len() - skipped,
        if skipped > 0 { format!("; {skipped} jobs have no outputs") } else { String::new() }
    );
    Ok(())
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect()
}

/// Keeps sub-folders (snapshots/) but never leaves the job's folder.
fn sanitize_path(name: &str) -> String {
    name.split('/').filter(|p| !p.is_empty() && *p != "." && *p != "..").map(sanitize).collect::<Vec<_>>().join("/")
}

async fn workers(cli: &Cli) -> Result<()> {
    let mut client = connect(cli).await?;
    let workers = client.list_workers(pb::ListWorkersRequest {}).await?.into_inner().workers;
    if cli.json {
        let rows: Vec<_> = workers.iter().map(|w| serde_json::json!({
            "id": w.id, "name": w.name, "version": w.version, "connected": w.connected, "running_jobs": w.running_jobs,
            "succeeded": w.succeeded, "failed": w.failed, "last_seen_at_ms": w.last_seen_at_ms,
            "devices": w.devices.iter().map(|d| serde_json::json!({"name": d.name, "memory_bytes": d.memory_bytes, "description": d.description})).collect::<Vec<_>>(),
        })).collect();
        return print_json(&rows);
    }
    for w in &workers {
        let devices: Vec<String> = w.devices.iter().map(|d| format!("{} ({:.1} GiB)", d.name, d.memory_bytes as f64 / (1u64 << 30) as f64)).collect();
        println!(
            "{:<6} {:<20} {:<12} {} running [{}], {} done, {} failed, devices: {}",
            w.id,
            w.name,
            if w.connected { "connected" } else { "lost" },
            w.running_jobs.len(),
            w.running_jobs.join(","),
            w.succeeded,
            w.failed,
            devices.join(", ")
        );
    }
    Ok(())
}

async fn run(cli: &Cli) -> Result<()> {
    match &cli.command {
        Command::Submit(args) => {
            use tracing::Instrument;
            submit(cli, args).instrument(tracing::info_span!("submit")).await
        }
        Command::Watch { batch } => {
            let mut client = connect(cli).await?;
            let batch = watch::watch(&mut client, batch, cli.json).await?;
            finish(cli, batch)
        }
        Command::Status { id } => status(cli, id).await,
        Command::List { state, limit } => list(cli, state, *limit).await,
        Command::Cancel { batch } => {
            let mut client = connect(cli).await?;
            let r = client.cancel_batch(pb::CancelBatchRequest { batch_id: batch.clone() }).await?.into_inner();
            if cli.json {
                return print_json(&serde_json::json!({"cancelled_queued": r.cancelled_queued, "signalled_running": r.signalled_running}));
            }
            println!("cancelled {} queued jobs; {} running jobs told to stop", r.cancelled_queued, r.signalled_running);
            Ok(())
        }
        Command::Fetch { batch, out } => fetch(cli, batch, out).await,
        Command::Workers => workers(cli).await,
    }
}

fn exit_code(error: &anyhow::Error) -> u8 {
    if let Some(f) = error.downcast_ref::<Failure>() {
        return match f {
            Failure::Input(_) => 2,
            Failure::BatchFailed(_) => 1,
            Failure::BatchCancelled(_) => 5,
        };
    }
    for cause in error.chain() {
        if let Some(status) = cause.downcast_ref::<tonic::Status>() {
            return match status.code() {
                tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => 2,
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => 3,
                tonic::Code::NotFound => 4,
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => 7,
                _ => 6,
            };
        }
        if cause.downcast_ref::<tonic::transport::Error>().is_some() {
            return 3;
        }
    }
    6
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // spans (the submit, continued by the coordinator and the workers) over OTLP
    // when OTEL_EXPORTER_OTLP_ENDPOINT is set; logs then go to stderr per STYLEFARM_LOG
    let traces = if stylefarm_core::traces::otlp_configured() {
        let log = std::env::var("STYLEFARM_LOG").unwrap_or_else(|_| "warn".into());
        match stylefarm_core::traces::init("stylefarm-client", &log, false) {
            Ok(guard) => Some(guard),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let result = run(&cli).await;
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let code = exit_code(&error);
            match error.chain().find_map(|c| c.downcast_ref::<tonic::Status>()) {
                Some(status) if error.downcast_ref::<tonic::Status>().is_some() => eprintln!("error: {}", status.message()),
                Some(status) => eprintln!("error: {error}: {}", status.message()),
                None => eprintln!("error: {error:#}"),
            }
            ExitCode::from(code)
        }
    }
}
