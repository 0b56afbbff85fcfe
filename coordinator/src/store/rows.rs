//! Rows to records and back: the column lists, JSON columns, and lenient
//! reading (one unreadable row is logged and repaired or skipped, never a
//! failed load).

use crate::ids::{BatchId, JobId, WorkerId};
use crate::model::{Availability, BatchRecord, Counts, DeviceRecord, Failure, ImageSource, JobRecord, JobState, WorkerRecord};
use crate::secrets::SecretHash;

/// Records as JSON. Every record type serialises (no maps with non-string
/// keys); a failure would be a bug, and becomes `null` rather than a panic.
pub(super) fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| {
        tracing::error!(error = %e, "a record did not serialise");
        "null".into()
    })
}

/// A JSON column, or `fallback` (logged) when the row holds something this
/// version cannot read: one bad row never stops the coordinator from loading.
pub(super) fn parse_or<T: serde::de::DeserializeOwned>(text: &str, what: &str, id: i64, fallback: impl FnOnce(String) -> T) -> T {
    serde_json::from_str(text).unwrap_or_else(|e| {
        let reason = format!("{what} of row {id} is unreadable ({e}): `{}`", text.chars().take(200).collect::<String>());
        tracing::error!(reason = %reason, "state row repaired on load");
        fallback(reason)
    })
}

/// Collects rows, skipping (and logging) any that cannot be read at all.
pub(super) fn lenient<T>(rows: impl Iterator<Item = rusqlite::Result<T>>, what: &str) -> Vec<T> {
    rows.filter_map(|row| match row {
        Ok(value) => Some(value),
        Err(e) => {
            tracing::error!(table = what, error = %e, "unreadable state row skipped");
            None
        }
    })
    .collect()
}

pub(super) const JOB_COLUMNS: &str = "id, batch_id, idx, name, priority, content, styles, params, estimate_bytes, max_attempts,
                           attempt, state, last_failure, created_ms, started_ms, finished_ms, trace_id, handed_back, time_limit_ms,
                           depends_on, task, forgiven, requires, work";

pub(super) fn job_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<JobRecord> {
    let id: i64 = row.get(0)?;
    let content: String = row.get(5)?;
    let styles: String = row.get(6)?;
    let state: String = row.get(11)?;
    let last_failure: Option<String> = row.get(12)?;
    let depends_on: String = row.get(19)?;
    let requires: String = row.get(22)?;
    let unreadable_input = |_| ImageSource::Url(String::new());
    Ok(JobRecord {
        id: JobId(id),
        batch: BatchId(row.get(1)?),
        index: row.get(2)?,
        name: row.get(3)?,
        priority: row.get(4)?,
        content: parse_or(&content, "content", id, unreadable_input),
        styles: parse_or(&styles, "styles", id, |_| Vec::new()),
        params_json: row.get(7)?,
        estimate_bytes: row.get::<_, i64>(8)?.max(0) as u64,
        max_attempts: row.get(9)?,
        attempt: row.get(10)?,
        state: parse_or(&state, "state", id, |reason| JobState::Failed { worker: None, reason, retryable: false, failed_dependency: None }),
        last_failure: last_failure.and_then(|f| parse_or::<Option<Failure>>(&f, "last_failure", id, |_| None)),
        created_ms: row.get(13)?,
        started_ms: row.get(14)?,
        finished_ms: row.get(15)?,
        trace_id: row.get(16)?,
        handed_back: row.get(17)?,
        time_limit_ms: row.get::<_, i64>(18)?.max(0) as u64,
        depends_on: parse_or::<Vec<i64>>(&depends_on, "depends_on", id, |_| Vec::new()).into_iter().map(JobId).collect(),
        task: row.get(20)?,
        forgiven: row.get(21)?,
        requires: parse_or(&requires, "requires", id, |_| Vec::new()),
        work: row.get::<_, i64>(23)?.max(0) as u64,
    })
}

pub(super) const BATCH_COLUMNS: &str =
    "id, name, priority, labels, max_attempts, request_key, created_ms, finished_ms, cancel_requested, started, counts, started_ms, owner, paused, deleted_ms, requires, notify";

pub(super) fn batch_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<BatchRecord> {
    let id: i64 = row.get(0)?;
    let labels: String = row.get(3)?;
    let counts: Option<String> = row.get(10)?;
    let requires: String = row.get(15)?;
    let notify: String = row.get(16)?;
    Ok(BatchRecord {
        id: BatchId(id),
        name: row.get(1)?,
        priority: row.get(2)?,
        labels: parse_or(&labels, "labels", id, |_| Default::default()),
        max_attempts: row.get(4)?,
        request_id: row.get(5)?,
        created_ms: row.get(6)?,
        finished_ms: row.get(7)?,
        cancel_requested: row.get(8)?,
        started: row.get(9)?,
        counts: counts.map(|c| parse_or::<Counts>(&c, "counts", id, |_| Counts::default())).unwrap_or_default(),
        started_ms: row.get(11)?,
        owner: row.get(12)?,
        paused: row.get(13)?,
        deleted_ms: row.get(14)?,
        requires: parse_or(&requires, "requires", id, |_| Vec::new()),
        notify: parse_or(&notify, "notify", id, |_| Default::default()),
        unfinished_work: 0,
    })
}

pub(super) const WORKER_COLUMNS: &str = "id, name, devices, version, registered_ms, last_seen_ms, succeeded, failed, owner, secret_sha256, disabled, labels";

pub(super) fn worker_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<WorkerRecord> {
    let id: i64 = row.get(0)?;
    let devices: String = row.get(2)?;
    let secret: String = row.get(9)?;
    let labels: String = row.get(11)?;
    Ok(WorkerRecord {
        id: WorkerId(id),
        name: row.get(1)?,
        devices: parse_or::<Vec<DeviceRecord>>(&devices, "devices", id, |_| Vec::new()),
        version: row.get(3)?,
        registered_ms: row.get(4)?,
        last_seen_ms: row.get(5)?,
        succeeded: row.get::<_, i64>(6)?.max(0) as u64,
        failed: row.get::<_, i64>(7)?.max(0) as u64,
        owner: row.get(8)?,
        secret: SecretHash::from_hex(&secret),
        readings: Default::default(),
        availability: if row.get::<_, bool>(10)? { Availability::Disabled } else { Availability::Enabled },
        labels: parse_or(&labels, "labels", id, |_| Default::default()),
    })
}
