//! The dashboard's controls: a POST per action on a batch (owner or admin) or
//! a worker (admin). Each needs the header `x-stylefarm-action: ACTION`, which a
//! cross-site form cannot send (the CSRF guard, on top of the SameSite=Strict
//! cookie), and the same rights as the gRPC call it stands for.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use stylefarm_proto as pb;

use super::{caller, Failure, Web};
use crate::auth::Api;
use crate::convert;
use crate::error::CoordError;
use crate::ids::{BatchId, JobId, WorkerId};
use crate::scheduler::{DeleteMode, PauseMode, RetryTarget, WorkerAction};

/// The CSRF guard: the action named in the path must be named in the header too.
fn check_header(headers: &HeaderMap, action: &str) -> Result<(), CoordError> {
    if headers.get("x-stylefarm-action").and_then(|v| v.to_str().ok()) != Some(action) {
        return Err(CoordError::PermissionDenied(format!("`{action}` needs the header `x-stylefarm-action: {action}`")));
    }
    Ok(())
}

/// `?priority=N` for `priority`, `?now` for `pause`, `?job=J` for `retry`.
#[derive(serde::Deserialize)]
pub(super) struct ActionArgs {
    priority: Option<i32>,
    now: Option<String>,
    job: Option<String>,
    force: Option<String>,
}

/// The batch page's buttons: cancel, pause (`?now` hands running jobs back),
/// resume, priority, retry (every failed job, or `?job=J`), delete (`?force`
/// takes running jobs back first). Each needs the header `x-stylefarm-action: ACTION`,
/// which a cross-site form cannot send (the CSRF guard), and the same rights
/// as the gRPC call.
pub(super) async fn batch_action(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Query(args): Query<ActionArgs>,
) -> Result<Response, Failure> {
    let who = caller(&web, &headers, Api::Client)?;
    check_header(&headers, &action)?;
    let batch = BatchId::parse(&id, "batch id")?;
    let body = match action.as_str() {
        "cancel" => {
            let (cancelled, signalled) = web.farm.cancel_batch(batch, &who).await?;
            serde_json::json!({ "cancelled_queued": cancelled, "signalled_running": signalled })
        }
        "pause" => {
            let mode = if args.now.is_some() { PauseMode::HandBackNow } else { PauseMode::FinishRunning };
            let (record, handed_back) = web.farm.pause_batch(batch, mode, &who).await?;
            serde_json::json!({ "state": batch_state_name(&record), "handed_back": handed_back })
        }
        "resume" => serde_json::json!({ "state": batch_state_name(&web.farm.resume_batch(batch, &who).await?) }),
        "priority" => {
            let priority = crate::validate::priority(args.priority.ok_or_else(|| CoordError::invalid("priority", "missing (?priority=N)"))?)?;
            serde_json::json!({ "priority": web.farm.set_priority(batch, priority, &who).await?.priority })
        }
        "retry" => {
            let target = match args.job.as_deref() {
                None | Some("") => RetryTarget::Failed,
                Some(job) => RetryTarget::Job(JobId::parse(job, "job")?),
            };
            let (record, requeued) = web.farm.retry(batch, target, &who).await?;
            serde_json::json!({ "state": batch_state_name(&record), "requeued": requeued })
        }
        "delete" => {
            let mode = if args.force.is_some() { DeleteMode::CancelRunning } else { DeleteMode::IfIdle };
            let done = web.farm.delete_batch(batch, mode, &who).await?;
            serde_json::json!({ "cancelled": done.cancelled, "jobs_removed": done.jobs_removed, "objects_removed": done.objects_removed })
        }
        other => return Err(CoordError::not_found("batch action", other).into()),
    };
    tracing::info!(principal = %who.name, batch_id = %batch, action = %action, "batch changed from the dashboard");
    Ok(axum::Json(body).into_response())
}

fn batch_state_name(record: &crate::model::BatchRecord) -> &'static str {
    pb::names::batch_state(convert::batch_state(record.phase()) as i32).unwrap_or("unknown")
}

/// The Workers page's buttons (admin): disable, enable, drain, forget.
pub(super) async fn worker_action(State(web): State<Arc<Web>>, headers: HeaderMap, Path((id, action)): Path<(String, String)>) -> Result<Response, Failure> {
    let who = caller(&web, &headers, Api::Admin)?;
    check_header(&headers, &action)?;
    let worker = WorkerId::parse(&id, "worker id")?;
    let control = match action.as_str() {
        "disable" => WorkerAction::Disable,
        "enable" => WorkerAction::Enable,
        "drain" => WorkerAction::Drain,
        "forget" => {
            web.farm.forget_worker(worker, &who).await?;
            return Ok(axum::Json(serde_json::json!({ "forgotten": worker.to_string() })).into_response());
        }
        other => return Err(CoordError::not_found("worker action", other).into()),
    };
    let (record, _, handed_back) = web.farm.control_worker(worker, control, &who).await?;
    let availability = if record.availability.takes_work() { "enabled" } else { "disabled" };
    Ok(axum::Json(serde_json::json!({ "availability": availability, "handed_back": handed_back })).into_response())
}
