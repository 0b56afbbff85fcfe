//! `stylefarm submit`: contents × styles (and/or a manifest), or a clip;
//! local files are uploaded once (by hash), then the batch is submitted.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Result;
use stylefarm_client::{Client, ClientError, Input, Resolved};
use stylefarm_proto as pb;

use crate::cli::{connect_client, Cli, NotifyOn, SubmitArgs};
use crate::output::{finish, print_json, SubmittedJson};
use crate::{manifest, watch};

pub async fn submit(cli: &Cli, args: &SubmitArgs) -> Result<()> {
    let manifest = match &args.manifest {
        Some(path) => Some((manifest::Manifest::read(path)?, path.parent().map(PathBuf::from).unwrap_or_default())),
        None => None,
    };
    let mut contents: Vec<Input> = args.content.iter().map(|c| Input::parse(c)).collect();
    let mut styles: Vec<Input> = args.style.iter().map(|s| Input::parse(s)).collect();
    let mut job_inputs: Vec<ExplicitJob> = Vec::new();
    let mut defaults_json = String::new();
    if let Some((m, base)) = &manifest {
        contents.extend(m.contents.iter().map(|c| manifest::input(base, c)));
        styles.extend(m.styles.iter().map(|s| manifest::input(base, s)));
        defaults_json = manifest::params_json(m.params.as_ref(), None)?;
        for job in &m.jobs {
            let params = manifest::params_json(m.params.as_ref(), job.params.as_ref())?;
            job_inputs.push(ExplicitJob {
                name: job.name.clone(),
                content: manifest::input(base, &job.content),
                styles: job.styles.iter().map(|s| manifest::input(base, s)).collect(),
                params,
                requires: job.requires.iter().map(ToString::to_string).collect(),
            });
        }
    }
    if let Some(video) = &args.video {
        return submit_video(cli, args, Input::parse(video), styles).await;
    }
    if contents.is_empty() != styles.is_empty() {
        return Err(ClientError::Input("give both --content and --style (every content is rendered with every style)".into()).into());
    }
    if contents.is_empty() && job_inputs.is_empty() {
        return Err(ClientError::Input("nothing to submit: give --content and --style, or --manifest".into()).into());
    }
    // every job's params resolve here: preset → manifest params → job params → --params file → flags
    let resolve = |overlay: &str| -> Result<pb::RenderSettings> {
        let overlay = match serde_json::from_str::<serde_json::Value>(overlay) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        let params = args.knobs.to_params_over(overlay).map_err(|e| ClientError::Input(e.to_string()))?;
        Ok(pb::RenderSettings { params_json: serde_json::to_string(&params)?, ..Default::default() })
    };
    let settings = resolve(&defaults_json)?;
    let mut client = connect_client(cli).await?;
    let all: Vec<Input> = contents
        .iter()
        .chain(&styles)
        .cloned()
        .chain(job_inputs.iter().flat_map(|j| std::iter::once(j.content.clone()).chain(j.styles.iter().cloned())))
        .collect();
    let refs = uploaded(client.resolve_inputs(&all, &|_| false).await?, cli.json);
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
                requires: Vec::new(),
            });
        }
    }
    let explicit = job_inputs
        .iter()
        .map(|job| -> Result<pb::JobSpec> {
            Ok(pb::JobSpec {
                name: job.name.clone(),
                content: Some(refs[&job.content].clone()),
                styles: job.styles.iter().map(|s| refs[s].clone()).collect(),
                settings: Some(resolve(&job.params)?),
                requires: job.requires.clone(),
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
        requires: requirements(m, args),
        notify: m.into_iter().flat_map(|m| &m.notify).chain(&args.notify).cloned().collect(),
        notify_on: notify_on(m, args),
    };
    send(cli, args, client, request).await
}

/// A manifest's explicit job, its inputs not yet uploaded.
struct ExplicitJob {
    name: String,
    content: Input,
    styles: Vec<Input>,
    params: String,
    requires: Vec<String>,
}

/// The batch's worker-pool requirements: the manifest's, then `--require`.
fn requirements(manifest: Option<&manifest::Manifest>, args: &SubmitArgs) -> Vec<String> {
    manifest.into_iter().flat_map(|m| &m.requires).chain(&args.requires).map(ToString::to_string).collect()
}

/// What the batch's `notify` URLs are told: `--notify-on`, then the manifest's.
fn notify_on(manifest: Option<&manifest::Manifest>, args: &SubmitArgs) -> i32 {
    let on = args.notify_on.or_else(|| manifest.and_then(|m| m.notify_on));
    on.map_or(pb::NotifyOn::Unspecified, NotifyOn::wire) as i32
}

/// A clip with its styles: the coordinator probes it and plans its jobs.
async fn submit_video(cli: &Cli, args: &SubmitArgs, video: Input, styles: Vec<Input>) -> Result<()> {
    if styles.is_empty() {
        return Err(ClientError::Input("give --style with --video".into()).into());
    }
    let params = args.knobs.to_params().map_err(|e| ClientError::Input(e.to_string()))?;
    // checked here too, so a typo fails before the upload
    args.video_knobs.to_params(params.iterations).map_err(|e| ClientError::Input(e.to_string()))?;
    let mut client = connect_client(cli).await?;
    let all: Vec<Input> = std::iter::once(video.clone()).chain(styles.iter().cloned()).collect();
    let refs = uploaded(client.resolve_inputs(&all, &|input| *input == video).await?, cli.json);
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
        requires: requirements(None, args),
        notify: args.notify.clone(),
        notify_on: notify_on(None, args),
    };
    send(cli, args, client, request).await
}

/// Submits, prints the batch id, and with --wait follows it to the end.
async fn send(cli: &Cli, args: &SubmitArgs, mut client: Client, request: pb::SubmitBatchRequest) -> Result<()> {
    let response = client.submit(request).await?;
    if cli.json && !args.wait {
        print_json(&SubmittedJson { batch_id: &response.batch_id, job_ids: &response.job_ids, deduplicated: response.deduplicated })?;
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

/// Says what was uploaded (on stderr, unless --json); returns the inputs' references.
fn uploaded(resolved: Resolved, quiet: bool) -> std::collections::BTreeMap<Input, pb::ImageRef> {
    if !quiet {
        for (path, r) in &resolved.uploaded {
            eprintln!("uploaded {} ({}x{} {}, {} bytes)", path.display(), r.width, r.height, r.format, r.size_bytes);
        }
        if resolved.already_present > 0 {
            eprintln!("{} image(s) already on the coordinator", resolved.already_present);
        }
    }
    resolved.refs
}

fn stem(input: &Input) -> String {
    let name = match input {
        Input::File(path) => path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        Input::Url(url) => url.rsplit('/').next().unwrap_or(url).split('.').next().unwrap_or_default().to_string(),
    };
    name.chars().take(60).collect()
}
