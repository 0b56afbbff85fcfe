//! The dashboard's HTML, rendered on the server. Each page carries what the
//! script needs in `data-` attributes; the script (`assets/dashboard.js`)
//! follows the page's event stream and changes the parts that move: states,
//! progress, loss curves, thumbnails. No inline script or style (the CSP
//! forbids them): bars and charts are SVG.

use std::fmt::Write;

use stylefarm_core::outputs::OutputKind;
use stylefarm_core::video::board::{summary, FrameState};
use stylefarm_proto as pb;
use stylefarm_proto::frames::{assemble_job, frame_board};

use super::view::{batch_state_name, files, state_name};
use crate::identity::Principal;

/// Escapes text for HTML content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS UTC` (the script shows them relative).
pub fn utc(ms: i64) -> String {
    if ms <= 0 {
        return "—".into();
    }
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn time(ms: i64, class: &str) -> String {
    format!(r#"<time class="{class}" data-ms="{ms}">{}</time>"#, utc(ms))
}

fn pill(state: &str) -> String {
    format!(r#"<span class="pill s-{state}">{state}</span>"#)
}

/// A whole page around `body`. `stream` is the event stream the script follows.
pub fn layout(title: &str, page: &str, stream: &str, who: &Principal, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · stylefarm</title><link rel="icon" href="data:,"><link rel="stylesheet" href="/assets/dashboard.css"><script src="/assets/dashboard.js" defer></script></head>
<body data-page="{page}" data-stream="{stream}" data-role="{role}">
<header><a class="brand" href="/">stylefarm</a><nav><a href="/">Batches</a><a href="/workers">Workers</a></nav><span class="who">{who} · {role}</span><span id="live" class="live" title="live updates">●</span></header>
<main>{body}</main></body></html>"#,
        title = esc(title),
        page = page,
        stream = esc(stream),
        role = who.role,
        who = esc(&who.name),
    )
}

/// The stacked progress bar (SVG: the CSP allows no inline styles).
fn bar(c: &pb::JobCounts) -> String {
    let total = c.total.max(1) as f64;
    let mut x = 0.0;
    let mut out = String::from(r#"<svg class="bar" viewBox="0 0 100 8" preserveAspectRatio="none">"#);
    for (class, n) in [("succeeded", c.succeeded), ("failed", c.failed), ("cancelled", c.cancelled), ("running", c.running)] {
        let w = n as f64 / total * 100.0;
        let _ = write!(out, r#"<rect class="b-{class}" x="{x:.3}" y="0" width="{w:.3}" height="8"/>"#);
        x += w;
    }
    out.push_str("</svg>");
    out
}

fn counts_text(c: &pb::JobCounts) -> String {
    let done = c.succeeded + c.failed + c.cancelled;
    let mut text = format!("{done}/{} done", c.total);
    for (n, what) in [(c.running, "running"), (c.queued, "queued"), (c.failed, "failed"), (c.cancelled, "cancelled")] {
        if n > 0 {
            let _ = write!(text, " · {n} {what}");
        }
    }
    text
}

fn counts_attrs(b: &pb::Batch) -> String {
    let c = b.counts.unwrap_or_default();
    format!(
        r#"data-total="{}" data-queued="{}" data-running="{}" data-succeeded="{}" data-failed="{}" data-cancelled="{}" data-created="{}" data-started="{}" data-finished="{}""#,
        c.total, c.queued, c.running, c.succeeded, c.failed, c.cancelled, b.created_at_ms, b.started_at_ms, b.finished_at_ms
    )
}

fn labels(b: &pb::Batch) -> String {
    let mut pairs: Vec<_> = b.labels.iter().collect();
    pairs.sort();
    pairs.iter().map(|(k, v)| format!(r#"<span class="label">{}={}</span>"#, esc(k), esc(v))).collect()
}

/// One row of the batches table (also served alone, for batches that appear live).
pub fn batch_row(b: &pb::Batch) -> String {
    let c = b.counts.unwrap_or_default();
    let state = batch_state_name(b.state);
    format!(
        r#"<tr id="batch-{id}" class="batch" data-batch="{id}" data-state="{state}" {attrs}><td><a href="/batches/{id}">{id}</a> <span class="name">{name}</span></td><td>{owner}</td><td>{labels}</td><td class="state">{pill}</td><td class="progress">{bar}<small class="counts">{counts}</small></td><td>{age}</td><td class="eta">—</td></tr>"#,
        id = esc(&b.id),
        attrs = counts_attrs(b),
        name = esc(&b.name),
        owner = esc(&b.owner),
        labels = labels(b),
        pill = pill(state),
        bar = bar(&c),
        counts = counts_text(&c),
        age = time(b.created_at_ms, "age"),
    )
}

/// The Batches page's filters: `all`, then every batch state by its one name.
pub fn filters() -> impl Iterator<Item = &'static str> {
    std::iter::once("all").chain(pb::names::BATCH_STATES.iter().map(|(_, name)| *name))
}

pub fn batches(batches: &[pb::Batch], filter: &str) -> String {
    let mut out = String::from("<h1>Batches</h1><p class=\"filters\">");
    for f in filters() {
        let class = if f == filter { " class=\"on\"" } else { "" };
        let _ = write!(out, r#"<a href="/?state={f}"{class}>{f}</a>"#);
    }
    let _ = write!(
        out,
        r#"</p><table class="batches"><thead><tr><th>Batch</th><th>Owner</th><th>Labels</th><th>State</th><th>Progress</th><th>Submitted</th><th>ETA</th></tr></thead><tbody id="batches" data-filter="{filter}">"#
    );
    for b in batches {
        out.push_str(&batch_row(b));
    }
    out.push_str("</tbody></table>");
    if batches.is_empty() {
        out.push_str(r#"<p class="empty" id="no-batches">No batches yet. Submit one with <code>stylefarm submit</code>.</p>"#);
    }
    out
}

fn file_links(job: &pb::Job) -> String {
    files(job)
        .iter()
        .filter(|f| f.kind != OutputKind::Snapshot.as_str())
        .map(|f| format!(r#"<a href="/files/{id}/{name}" download>{name}</a>"#, id = esc(&job.id), name = esc(&f.name)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn job_card(job: &pb::Job) -> String {
    let state = state_name(job.state);
    let thumb = if job.state == pb::JobState::Succeeded as i32 {
        format!(r#"<img src="/files/{}/output.png" alt="{}" loading="lazy">"#, esc(&job.id), esc(&job.name))
    } else {
        r#"<span class="placeholder"></span>"#.to_string()
    };
    let reason = if job.error.is_empty() { String::new() } else { format!(r#"<p class="error">{}</p>"#, esc(&job.error)) };
    format!(
        r#"<article class="job" id="job-{id}" data-job="{id}" data-state="{state}"><a class="thumb" href="/jobs/{id}">{thumb}</a><div class="meta"><a href="/jobs/{id}">{id}</a> <span class="name">{name}</span><br><span class="state">{pill}</span> <span class="iter"></span> <span class="loss"></span></div><svg class="spark" viewBox="0 0 200 48" preserveAspectRatio="none" data-points="0"></svg>{reason}<p class="links">{links}</p></article>"#,
        id = esc(&job.id),
        name = esc(&job.name),
        pill = pill(state),
        links = file_links(job),
    )
}

/// The batch page's body; `tiles` is its tiled renders' section ([`super::mosaic::tiles`]).
pub fn batch(b: &pb::Batch, jobs: &[pb::Job], tiles: &str) -> String {
    let c = b.counts.unwrap_or_default();
    let state = batch_state_name(b.state);
    // an unfinished batch's controls (the caller may see it, so may change it)
    let cancel = if b.finished_at_ms == 0 {
        let paused = b.state == pb::BatchState::Paused as i32;
        format!(
            r#"<span class="controls" data-batch="{id}"><button id="pause" data-action="{pause}">{pause_label}</button> <button id="priority">Priority…</button> <button id="cancel" class="danger" data-batch="{id}">Cancel batch</button></span>"#,
            id = esc(&b.id),
            pause = if paused { "resume" } else { "pause" },
            pause_label = if paused { "Resume" } else { "Pause" },
        )
    } else {
        String::new()
    };
    let retry = if c.failed > 0 { format!(r#" <button id="retry" data-batch="{}">Retry failed jobs</button>"#, esc(&b.id)) } else { String::new() };
    let delete = format!(r#" <button id="delete" class="danger" data-batch="{}">Delete…</button>"#, esc(&b.id));
    let retry = retry + &delete;
    let mut out = format!(
        r#"<h1>Batch {id} <span class="name">{name}</span></h1><section class="summary" id="summary" data-batch="{id}" data-state="{state}" {attrs}><p><span class="state">{pill}</span> owner <b>{owner}</b> · submitted {created} · priority <span class="priority">{priority}</span> {labels} {cancel}{retry}</p>{bar}<p><small class="counts">{counts}</small> · ETA <span class="eta">—</span></p></section>"#,
        id = esc(&b.id),
        name = esc(&b.name),
        attrs = counts_attrs(b),
        pill = pill(state),
        owner = esc(&b.owner),
        created = time(b.created_at_ms, "age"),
        priority = b.priority,
        labels = labels(b),
        bar = bar(&c),
        counts = counts_text(&c),
    );
    out.push_str(&frames(&b.id, jobs));
    out.push_str(tiles);
    out.push_str(r#"<section class="jobs" id="jobs">"#);
    for job in jobs {
        out.push_str(&job_card(job));
    }
    out.push_str("</section>");
    out
}

/// A video batch's frames: the assembled clip once it exists, then one tile
/// per frame (its final picture when done, its number and state before),
/// each linking to the job that makes it. Empty for a batch of images; the
/// page fetches it again (`/fragments/frames/ID`) when a frame's job changes.
pub fn frames(batch: &str, jobs: &[pb::Job]) -> String {
    let cells = frame_board(jobs);
    if cells.is_empty() {
        return String::new();
    }
    let clip = assemble_job(jobs)
        .filter(|j| j.state == pb::JobState::Succeeded as i32)
        .and_then(|j| files(j).into_iter().find(|f| f.name.ends_with(".mp4")).map(|f| (j, f.name)))
        .map(|(j, name)| {
            let src = format!("/files/{}/{}", esc(&j.id), esc(&name));
            format!(r#"<p class="clip"><video controls preload="metadata" src="{src}"></video><br><a href="{src}" download>{}</a></p>"#, esc(&name))
        })
        .unwrap_or_default();
    let mut out = format!(
        r#"<section class="frames" id="frames" data-batch="{id}"><h2>Frames <small>{summary}</small></h2>{clip}<div class="frame-grid">"#,
        id = esc(batch),
        summary = summary(&cells),
    );
    for cell in &cells {
        let job = &jobs[cell.job];
        let number = cell.frame + 1;
        let state = cell.state.as_str();
        let inner = if cell.state == FrameState::Done {
            format!(r#"<img src="/files/{}/output.png" alt="frame {number}" loading="lazy">"#, esc(&job.id))
        } else {
            format!("<span>{number}</span>")
        };
        out.push_str(&format!(r#"<a class="frame" data-state="{state}" href="/jobs/{id}" title="frame {number}: {state}">{inner}</a>"#, id = esc(&job.id)));
    }
    out.push_str("</div></section>");
    out
}

/// The job's attempts and their steps as an SVG timeline: queue wait, each
/// attempt, and inside each attempt the worker's steps (depth 1 indented).
pub fn timeline(job: &pb::Job, attempts: &[pb::Attempt], running_since: Option<i64>, now_ms: i64) -> String {
    struct Bar {
        label: String,
        start: f64,
        end: f64,
        class: &'static str,
        depth: u32,
        title: String,
    }
    let origin = job.created_at_ms as f64;
    let mut bars = Vec::new();
    let first_lease = attempts.first().map(|a| a.leased_at_ms).or(running_since);
    if let Some(lease) = first_lease {
        bars.push(Bar { label: "queue wait".into(), start: origin, end: lease as f64, class: "t-queue", depth: 0, title: String::new() });
    }
    let mut all: Vec<pb::Attempt> = attempts.to_vec();
    if let Some(leased) = running_since.filter(|_| !attempts.iter().any(|a| a.attempt == job.attempt)) {
        all.push(pb::Attempt {
            attempt: job.attempt,
            worker_id: job.worker_id.clone(),
            leased_at_ms: leased,
            ended_at_ms: now_ms,
            outcome: "running".into(),
            ..Default::default()
        });
    }
    for a in &all {
        let class = match a.outcome.as_str() {
            "succeeded" => "t-ok",
            "running" => "t-run",
            "handed_back" => "t-back",
            _ => "t-bad",
        };
        let title = format!("{} on {} · {}", a.outcome, a.worker_id, a.reason);
        bars.push(Bar {
            label: format!("attempt {} · {}", a.attempt, a.worker_id),
            start: a.leased_at_ms as f64,
            end: a.ended_at_ms as f64,
            class,
            depth: 0,
            title,
        });
        for s in &a.spans {
            let start = a.leased_at_ms as f64 + s.offset_ms;
            bars.push(Bar { label: s.name.clone(), start, end: start + s.duration_ms, class: "t-step", depth: s.depth + 1, title: s.detail.clone() });
        }
    }
    if bars.is_empty() {
        return r#"<p class="empty">Not started yet.</p>"#.into();
    }
    let end = bars.iter().map(|b| b.end).fold(origin + 1.0, f64::max);
    let span = (end - origin).max(1.0);
    let (label_w, width, row_h) = (180.0, 900.0, 20.0);
    let height = bars.len() as f64 * row_h + 24.0;
    let mut out = format!(r#"<svg id="timeline" class="timeline" viewBox="0 0 {} {height}" data-bars="{}">"#, label_w + width + 70.0, bars.len());
    for (i, b) in bars.iter().enumerate() {
        let y = i as f64 * row_h;
        let x = label_w + (b.start - origin) / span * width;
        let w = ((b.end - b.start) / span * width).max(1.0);
        let ms = b.end - b.start;
        let indent = b.depth as f64 * 12.0;
        let _ = write!(
            out,
            r#"<g class="{class}"><title>{title}</title><text x="{tx}" y="{ty}">{label}</text><rect x="{x:.2}" y="{ry}" width="{w:.2}" height="14" rx="2"/><text class="dur" x="{dx:.2}" y="{ty}">{dur}</text></g>"#,
            class = b.class,
            title = esc(&b.title),
            tx = 4.0 + indent,
            ty = y + 14.0,
            label = esc(&b.label),
            ry = y + 3.0,
            dx = x + w + 4.0,
            dur = if ms >= 1000.0 { format!("{:.2} s", ms / 1000.0) } else { format!("{ms:.0} ms") },
        );
    }
    let _ = write!(
        out,
        r#"<text class="axis" x="{label_w}" y="{}">0</text><text class="axis end" x="{}" y="{}">{:.1} s</text></svg>"#,
        height - 4.0,
        label_w + width,
        height - 4.0,
        span / 1000.0
    );
    out
}

fn attempts_table(job: &pb::Job, attempts: &[pb::Attempt]) -> String {
    let mut out = String::from("<table class=\"attempts\"><thead><tr><th>#</th><th>Worker</th><th>Leased</th><th>Ended</th><th>Ran</th><th>Outcome</th><th>Reason</th></tr></thead><tbody>");
    for a in attempts {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1} s</td><td>{}</td><td>{}</td></tr>",
            a.attempt,
            esc(&a.worker_id),
            time(a.leased_at_ms, "at"),
            time(a.ended_at_ms, "at"),
            (a.ended_at_ms - a.leased_at_ms) as f64 / 1000.0,
            pill(&a.outcome),
            esc(&a.reason)
        );
    }
    if job.state == pb::JobState::Running as i32 {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td colspan=\"3\">running now</td><td>{}</td><td></td></tr>",
            job.attempt,
            esc(&job.worker_id),
            pill("running")
        );
    }
    out.push_str("</tbody></table>");
    out
}

pub fn job(job: &pb::Job, attempts: &[pb::Attempt], running_since: Option<i64>, now_ms: i64) -> String {
    let state = state_name(job.state);
    let outputs = files(job);
    let image = if job.state == pb::JobState::Succeeded as i32 {
        format!(r#"<a href="/files/{id}/output.png"><img class="output" src="/files/{id}/output.png" alt="output"></a>"#, id = esc(&job.id))
    } else {
        r#"<p class="empty">No output yet.</p>"#.to_string()
    };
    let animation = outputs
        .iter()
        .find(|f| f.kind == OutputKind::Animation.as_str())
        .map(|f| {
            format!(
                r#"<figure><img class="animation" src="/files/{}/{}" alt="progress animation"><figcaption>progress animation</figcaption></figure>"#,
                esc(&job.id),
                esc(&f.name)
            )
        })
        .unwrap_or_default();
    let snapshots: String = outputs
        .iter()
        .filter(|f| f.kind == OutputKind::Snapshot.as_str())
        .map(|f| format!(r#"<img src="/files/{}/{}" alt="{}" title="{}" loading="lazy">"#, esc(&job.id), esc(&f.name), esc(&f.name), esc(&f.name)))
        .collect();
    let strip = if snapshots.is_empty() { String::new() } else { format!(r#"<h3>Snapshots</h3><div class="strip" id="snapshots">{snapshots}</div>"#) };
    let params =
        serde_json::from_str::<serde_json::Value>(&job.params_json).and_then(|v| serde_json::to_string_pretty(&v)).unwrap_or_else(|_| job.params_json.clone());
    let error = if job.error.is_empty() { String::new() } else { format!(r#"<p class="error">{}</p>"#, esc(&job.error)) };
    format!(
        r#"<h1>Job {id} <span class="name">{name}</span></h1><section class="summary" id="job" data-job="{id}" data-batch="{batch}" data-state="{state}"><p><span class="state">{pill}</span> in batch <a href="/batches/{batch}">{batch}</a> · attempt {attempt}/{max} · worker <span class="worker">{worker}</span> · <span class="iter"></span> <span class="loss"></span></p>{error}<p class="links">{links}</p></section>
<section><h2>Loss</h2><svg id="loss" class="plot" viewBox="0 0 900 320" data-points="0"></svg><p class="legend"><span class="k-total">total</span><span class="k-content">content</span><span class="k-style">style</span><span class="k-tv">TV</span> · log scale</p></section>
<section class="pictures"><h2>Output</h2><div class="row">{image}{animation}</div>{strip}</section>
<section><h2>Timeline</h2>{timeline}</section>
<section><h2>Attempts</h2>{attempts}</section>
<section><h2>Parameters</h2><pre>{params}</pre></section>"#,
        id = esc(&job.id),
        name = esc(&job.name),
        batch = esc(&job.batch_id),
        pill = pill(state),
        attempt = job.attempt,
        max = job.max_attempts,
        worker = esc(&job.worker_id),
        links = file_links(job),
        timeline = timeline(job, attempts, running_since, now_ms),
        attempts = attempts_table(job, attempts),
        params = esc(&params),
    )
}

/// A worker as the Workers page shows it, with its running jobs' progress.
pub struct WorkerRow {
    pub worker: pb::Worker,
    pub jobs: Vec<(String, Option<pb::JobProgress>)>,
}

fn bytes(n: u64) -> String {
    if n == 0 {
        return "—".into();
    }
    format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64)
}

pub fn worker_rows(rows: &[WorkerRow]) -> String {
    let mut out = String::new();
    for r in rows {
        let w = &r.worker;
        let devices: Vec<String> = w.devices.iter().map(|d| format!("{} <small>{}</small>", esc(&d.name), esc(&d.description))).collect();
        // in use from the latest heartbeat (nvidia-smi) where the worker reports it, else the registered total
        let memory: Vec<String> = w
            .devices
            .iter()
            .map(|d| match w.memory.iter().find(|m| m.device == d.name) {
                Some(m) => format!(
                    r#"<span class="mem" title="{name}: in use / total (nvidia-smi)">{} / {}</span>"#,
                    bytes(m.used_bytes),
                    bytes(m.total_bytes),
                    name = esc(&d.name)
                ),
                None => bytes(d.memory_bytes),
            })
            .collect();
        // engine time over wall time, from the latest heartbeat
        let busy: Vec<String> = w
            .devices
            .iter()
            .map(|d| match w.busy.iter().find(|b| b.device == d.name) {
                Some(b) => format!(
                    r#"<span class="busy" data-device="{name}" data-fraction="{fraction:.4}" title="{name}: engine time over wall time, last {window} s">{percent:.1} %</span>"#,
                    name = esc(&d.name),
                    fraction = b.fraction,
                    window = b.window_s,
                    percent = b.fraction * 100.0
                ),
                None => "—".into(),
            })
            .collect();
        let current: Vec<String> = r
            .jobs
            .iter()
            .map(|(id, p)| {
                let (iter, loss) = match p.as_ref().and_then(|p| p.latest.map(|l| (p, l))) {
                    Some((p, l)) => {
                        (format!("it {}/{} · scale {}/{}", p.iteration, p.total_iterations, p.scale + 1, p.scales.max(1)), format!("{:.3e}", l.total))
                    }
                    None => ("starting".into(), String::new()),
                };
                format!(
                    r#"<div class="cur" data-job="{id}"><a href="/jobs/{id}">{id}</a> <span class="iter">{iter}</span> <span class="loss">{loss}</span></div>"#,
                    id = esc(id)
                )
            })
            .collect();
        let state = if w.connected { "connected" } else { "lost" };
        let mut labels: Vec<String> = w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let labels = if labels.is_empty() { String::new() } else { format!(r#"<br><small class="labels">{}</small>"#, esc(&labels.join(" "))) };
        let enabled = w.availability != pb::WorkerAvailability::Disabled as i32;
        let disabled = if enabled { String::new() } else { pill("disabled") };
        // the admin's controls; forgetting is for a worker that is gone
        let mut buttons = vec![if enabled { ("disable", "Disable") } else { ("enable", "Enable") }, ("drain", "Drain")];
        if !w.connected {
            buttons.push(("forget", "Forget"));
        }
        let buttons: String = buttons
            .iter()
            .map(|(action, label)| format!(r#"<button class="worker-action" data-worker="{id}" data-action="{action}">{label}</button>"#, id = esc(&w.id)))
            .collect();
        let _ = write!(
            out,
            r#"<tr id="worker-{id}" data-worker="{id}"><td><b>{id}</b> {name} <small>{version}</small>{labels}</td><td>{state} {disabled}</td><td>{devices}</td><td>{memory}</td><td>{busy}</td><td class="current">{current}</td><td class="succeeded">{succeeded}</td><td class="failed">{failed}</td><td>{seen}</td><td class="controls">{buttons}</td></tr>"#,
            id = esc(&w.id),
            name = esc(&w.name),
            version = esc(&w.version),
            state = pill(state),
            devices = devices.join("<br>"),
            memory = memory.join("<br>"),
            busy = busy.join("<br>"),
            current = if current.is_empty() { "idle".to_string() } else { current.join("") },
            succeeded = w.succeeded,
            failed = w.failed,
            seen = time(w.last_seen_at_ms, "age"),
        );
    }
    out
}

pub fn workers(rows: &[WorkerRow]) -> String {
    format!(
        r#"<h1>Workers</h1><table class="workers"><thead><tr><th>Worker</th><th>State</th><th>Devices</th><th>Device memory</th><th>Busy</th><th>Current jobs</th><th>Succeeded</th><th>Failed</th><th>Last seen</th><th></th></tr></thead><tbody id="workers">{}</tbody></table>{}"#,
        worker_rows(rows),
        if rows.is_empty() { r#"<p class="empty">No worker has registered yet.</p>"# } else { "" }
    )
}

pub fn login(next: &str, error: Option<&str>) -> String {
    let error = error.map(|e| format!(r#"<p class="error">{}</p>"#, esc(e))).unwrap_or_default();
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign in · stylefarm</title><link rel="icon" href="data:,"><link rel="stylesheet" href="/assets/dashboard.css"></head><body class="login"><main><h1>stylefarm</h1>{error}<form method="post" action="/login"><label>Token <input type="password" name="token" autocomplete="off" required autofocus></label><input type="hidden" name="next" value="{next}"><button>Sign in</button></form><p><small>A token from <code>stylefarm-coordinator token create --role submit --name NAME</code> (or admin). It is kept in an HttpOnly cookie.</small></p></main></body></html>"#,
        next = esc(next)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_times_are_utc() {
        assert_eq!(esc(r#"<b a="x">&'"#), "&lt;b a=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(utc(0), "—");
        assert_eq!(utc(1_796_083_200_000), "2026-12-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000 + 3_723_000), "2000-02-29 01:02:03 UTC");
    }

    #[test]
    fn a_video_batch_shows_a_tile_per_frame_and_its_clip_once_assembled() {
        let job = |id: &str, step: pb::VideoStep, frame: u32, state: pb::JobState| pb::Job {
            id: id.into(),
            step: step as i32,
            frame,
            state: state as i32,
            result: (state == pb::JobState::Succeeded).then(|| pb::JobResult {
                prefix: format!("o/{id}/"),
                outputs: vec![pb::OutputFile { key: format!("o/{id}/clip-stylised.mp4"), kind: "video".into(), ..Default::default() }],
                ..Default::default()
            }),
            ..Default::default()
        };
        use pb::JobState::*;
        use pb::VideoStep::*;
        let mut jobs = vec![job("j1", Frame, 1, Succeeded), job("j2", Frame, 2, Running), job("j3", Assemble, 0, Queued)];
        let html = frames("b1", &jobs);
        assert!(html.contains(r#"<a class="frame" data-state="done" href="/jobs/j1" title="frame 1: done"><img src="/files/j1/output.png""#), "{html}");
        assert!(html.contains(r#"data-state="running" href="/jobs/j2" title="frame 2: running"><span>2</span>"#), "{html}");
        assert!(html.contains("2 frames: 1 done, 1 running"), "{html}");
        assert!(!html.contains("<video"), "no clip before the assembly: {html}");
        jobs[2] = job("j3", Assemble, 0, Succeeded);
        assert!(frames("b1", &jobs).contains(r#"<video controls preload="metadata" src="/files/j3/clip-stylised.mp4">"#));
        // a batch of images has no frames section
        assert_eq!(frames("b1", &[job("j9", pb::VideoStep::Unspecified, 0, Succeeded)]), "");
    }

    #[test]
    fn a_batch_row_shows_counts_and_escapes_names() {
        let b = pb::Batch {
            id: "b3".into(),
            name: "<script>".into(),
            state: pb::BatchState::Running as i32,
            counts: Some(pb::JobCounts { total: 4, succeeded: 1, running: 2, queued: 1, ..Default::default() }),
            ..Default::default()
        };
        let row = batch_row(&b);
        assert!(row.contains("&lt;script&gt;") && !row.contains("<script>"), "{row}");
        assert!(row.contains("1/4 done · 2 running · 1 queued"), "{row}");
        assert!(row.contains(r#"class="b-succeeded" x="0.000" y="0" width="25.000""#), "{row}");
    }

    #[test]
    fn the_timeline_has_queue_wait_attempts_and_worker_steps() {
        let job = pb::Job { id: "j1".into(), state: pb::JobState::Succeeded as i32, created_at_ms: 1_000, attempt: 2, ..Default::default() };
        let step = |name: &str, offset_ms, duration_ms| pb::SpanTiming { name: name.into(), offset_ms, duration_ms, ..Default::default() };
        let attempts = vec![
            pb::Attempt { attempt: 1, worker_id: "w1".into(), leased_at_ms: 2_000, ended_at_ms: 3_000, outcome: "expired".into(), ..Default::default() },
            pb::Attempt {
                attempt: 2,
                worker_id: "w2".into(),
                leased_at_ms: 4_000,
                ended_at_ms: 9_000,
                outcome: "succeeded".into(),
                spans: vec![step("fetch_inputs", 0.0, 100.0), step("render", 100.0, 4_500.0)],
                ..Default::default()
            },
        ];
        let svg = timeline(&job, &attempts, None, 10_000);
        assert!(svg.contains(r#"data-bars="5""#), "{svg}");
        assert!(svg.contains(">queue wait<") && svg.contains(">1.00 s<"), "queue wait 1 s: {svg}");
        assert!(svg.contains("attempt 2 · w2") && svg.contains(">4.50 s<"), "{svg}");
        assert!(svg.contains(r#"class="t-bad""#), "the expired attempt is drawn as one: {svg}");
    }
}
