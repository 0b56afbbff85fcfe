//! SQLite store: one file under the data directory, WAL journal, one writer
//! thread that commits queued changes in groups, one reader connection.
//!
//! `synchronous=NORMAL` in WAL mode: a commit is in the OS before it is
//! acknowledged, so a killed process (SIGKILL) loses nothing acknowledged; a
//! power cut may lose the last moments (`--sync full` makes every group fsync).

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::thread;

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use super::{CommitTicket, ImageRecord, Snapshot, Store, StoreError, StoreOp, StoreResult};
use crate::ids::{BatchId, JobId, WorkerId};
use crate::model::{BatchRecord, Counts, DeviceRecord, Failure, ImageSource, JobRecord, JobState, WorkerRecord};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    priority INTEGER NOT NULL,
    labels TEXT NOT NULL,
    max_attempts INTEGER NOT NULL,
    request_id TEXT UNIQUE,
    created_ms INTEGER NOT NULL,
    finished_ms INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    started INTEGER NOT NULL DEFAULT 0,
    counts TEXT
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    batch_id INTEGER NOT NULL REFERENCES batches(id),
    idx INTEGER NOT NULL,
    name TEXT NOT NULL,
    priority INTEGER NOT NULL,
    content TEXT NOT NULL,
    styles TEXT NOT NULL,
    params TEXT NOT NULL,
    estimate_bytes INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    state TEXT NOT NULL,
    last_failure TEXT,
    created_ms INTEGER NOT NULL,
    started_ms INTEGER,
    finished_ms INTEGER,
    trace_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_batch ON jobs(batch_id, idx);
CREATE TABLE IF NOT EXISTS workers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    devices TEXT NOT NULL,
    version TEXT NOT NULL,
    registered_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    succeeded INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS images (
    sha256 TEXT PRIMARY KEY,
    size_bytes INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    format TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
";

/// Largest number of ops committed in one transaction.
const MAX_GROUP_OPS: usize = 8192;

struct Commit {
    ops: Vec<StoreOp>,
    done: oneshot::Sender<StoreResult<()>>,
}

pub struct SqliteStore {
    writer: mpsc::Sender<Commit>,
    /// The checkpoint thread stops when this is dropped.
    _alive: Arc<()>,
    reader: Mutex<Connection>,
    path: String,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("records serialise")
}

fn parse<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, format!("{what}: {e}").into())
    })
}

fn open(path: &Path, full_sync: bool) -> StoreResult<Connection> {
    let conn = Connection::open(path).map_err(err)?;
    let sync = if full_sync { "FULL" } else { "NORMAL" };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA busy_timeout=5000; PRAGMA foreign_keys=ON;"
    ))
    .map_err(err)?;
    Ok(conn)
}

impl SqliteStore {
    /// `group_commit = false` commits every request in its own transaction
    /// (the reference the benchmark compares group commit against).
    pub fn open(path: &Path, full_sync: bool, group_commit: bool) -> StoreResult<SqliteStore> {
        let conn = open(path, full_sync)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        // the writer never checkpoints (that would stall every waiting request
        // behind an fsync); a separate connection does, without blocking it
        conn.execute_batch("PRAGMA wal_autocheckpoint=0;").map_err(err)?;
        let reader = open(path, full_sync)?;
        let checkpointer = open(path, full_sync)?;
        let alive = Arc::new(());
        let token = Arc::downgrade(&alive);
        thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, token))
            .map_err(err)?;
        let (writer, commits) = mpsc::channel::<Commit>();
        thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || write_loop(conn, commits, if group_commit { MAX_GROUP_OPS } else { 0 }))
            .map_err(err)?;
        Ok(SqliteStore { writer, _alive: alive, reader: Mutex::new(reader), path: path.display().to_string() })
    }
}

/// Copies the WAL into the database every 500 ms (PASSIVE: never waits for the
/// writer), and truncates the WAL when it has grown past 64 MiB.
fn checkpoint_loop(conn: Connection, alive: Weak<()>) {
    loop {
        thread::sleep(std::time::Duration::from_millis(500));
        let done: rusqlite::Result<(i64, i64, i64)> =
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)));
        match done {
            Ok((_, wal_pages, _)) if wal_pages > 16_384 => {
                let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            }
            Ok(_) => {}
            Err(e) if e.to_string().contains("no such table") => {}
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
        }
        if alive.upgrade().is_none() {
            return;
        }
    }
}

fn write_loop(mut conn: Connection, commits: mpsc::Receiver<Commit>, max_group_ops: usize) {
    while let Ok(first) = commits.recv() {
        let mut group = vec![first];
        let mut op_count = group[0].ops.len();
        while op_count < max_group_ops {
            match commits.try_recv() {
                Ok(next) => {
                    op_count += next.ops.len();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        let result = apply_group(&mut conn, &group).map_err(err);
        if let Err(e) = &result {
            tracing::error!(error = %e, commits = group.len(), "state store commit failed");
        }
        for commit in group {
            let _ = commit.done.send(result.as_ref().map(|_| ()).map_err(|e| StoreError(e.0.clone())));
        }
    }
}

fn apply_group(conn: &mut Connection, group: &[Commit]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for op in group.iter().flat_map(|c| &c.ops) {
        apply(&tx, op)?;
    }
    tx.commit()
}

fn apply(tx: &rusqlite::Transaction<'_>, op: &StoreOp) -> rusqlite::Result<()> {
    match op {
        StoreOp::InsertBatch(b) => {
            tx.prepare_cached(
                "INSERT INTO batches (id, name, priority, labels, max_attempts, request_id, created_ms, cancel_requested, started)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![b.id.0, b.name, b.priority, json(&b.labels), b.max_attempts, b.request_id, b.created_ms, b.cancel_requested, b.started])?;
        }
        StoreOp::InsertJob(j) => {
            tx.prepare_cached(
                "INSERT INTO jobs (id, batch_id, idx, name, priority, content, styles, params, estimate_bytes, max_attempts,
                                   attempt, state, last_failure, created_ms, started_ms, finished_ms, trace_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            )?
            .execute(params![
                j.id.0,
                j.batch.0,
                j.index,
                j.name,
                j.priority,
                json(&j.content),
                json(&j.styles),
                j.params_json,
                j.estimate_bytes as i64,
                j.max_attempts,
                j.attempt,
                json(&j.state),
                j.last_failure.as_ref().map(json),
                j.created_ms,
                j.started_ms,
                j.finished_ms,
                j.trace_id,
            ])?;
        }
        StoreOp::UpdateJob(u) => {
            tx.prepare_cached(
                "UPDATE jobs SET attempt = ?2, state = ?3, last_failure = ?4, started_ms = ?5, finished_ms = ?6 WHERE id = ?1",
            )?
            .execute(params![u.id.0, u.attempt, json(&u.state), u.last_failure.as_ref().map(json), u.started_ms, u.finished_ms])?;
        }
        StoreOp::CancelBatch(id) => {
            tx.prepare_cached("UPDATE batches SET cancel_requested = 1 WHERE id = ?1")?.execute(params![id.0])?;
        }
        StoreOp::FinishBatch { id, finished_ms, counts, started } => {
            tx.prepare_cached("UPDATE batches SET finished_ms = ?2, counts = ?3, started = ?4 WHERE id = ?1")?
                .execute(params![id.0, finished_ms, json(counts), started])?;
        }
        StoreOp::UpsertWorker(w) => {
            tx.prepare_cached(
                "INSERT INTO workers (id, name, devices, version, registered_ms, last_seen_ms, succeeded, failed)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(id) DO UPDATE SET name = ?2, devices = ?3, version = ?4, last_seen_ms = ?6, succeeded = ?7, failed = ?8",
            )?
            .execute(params![w.id.0, w.name, json(&w.devices), w.version, w.registered_ms, w.last_seen_ms, w.succeeded as i64, w.failed as i64])?;
        }
        StoreOp::InsertImage(i) => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO images (sha256, size_bytes, width, height, format, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![i.sha256, i.size_bytes as i64, i.width, i.height, i.format, i.created_ms])?;
        }
    }
    Ok(())
}

const JOB_COLUMNS: &str = "id, batch_id, idx, name, priority, content, styles, params, estimate_bytes, max_attempts,
                           attempt, state, last_failure, created_ms, started_ms, finished_ms, trace_id";

fn job_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<JobRecord> {
    let content: String = row.get(5)?;
    let styles: String = row.get(6)?;
    let state: String = row.get(11)?;
    let last_failure: Option<String> = row.get(12)?;
    Ok(JobRecord {
        id: JobId(row.get(0)?),
        batch: BatchId(row.get(1)?),
        index: row.get(2)?,
        name: row.get(3)?,
        priority: row.get(4)?,
        content: parse::<ImageSource>(&content, "content")?,
        styles: parse(&styles, "styles")?,
        params_json: row.get(7)?,
        estimate_bytes: row.get::<_, i64>(8)? as u64,
        max_attempts: row.get(9)?,
        attempt: row.get(10)?,
        state: parse::<JobState>(&state, "state")?,
        last_failure: last_failure.map(|f| parse::<Failure>(&f, "last_failure")).transpose()?,
        created_ms: row.get(13)?,
        started_ms: row.get(14)?,
        finished_ms: row.get(15)?,
        trace_id: row.get(16)?,
    })
}

fn batch_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<BatchRecord> {
    let labels: String = row.get(3)?;
    let counts: Option<String> = row.get(10)?;
    Ok(BatchRecord {
        id: BatchId(row.get(0)?),
        name: row.get(1)?,
        priority: row.get(2)?,
        labels: parse(&labels, "labels")?,
        max_attempts: row.get(4)?,
        request_id: row.get(5)?,
        created_ms: row.get(6)?,
        finished_ms: row.get(7)?,
        cancel_requested: row.get(8)?,
        started: row.get(9)?,
        counts: counts.map(|c| parse::<Counts>(&c, "counts")).transpose()?.unwrap_or_default(),
    })
}

impl Store for SqliteStore {
    fn load(&self) -> StoreResult<Snapshot> {
        let conn = self.reader.lock().expect("reader lock");
        let mut snapshot = Snapshot::default();
        let mut stmt = conn
            .prepare("SELECT id, name, priority, labels, max_attempts, request_id, created_ms, finished_ms, cancel_requested, started, counts FROM batches ORDER BY id")
            .map_err(err)?;
        snapshot.batches = stmt.query_map([], batch_from_row).map_err(err)?.collect::<rusqlite::Result<_>>().map_err(err)?;
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE batch_id IN (SELECT id FROM batches WHERE finished_ms IS NULL) ORDER BY id"
            ))
            .map_err(err)?;
        snapshot.jobs = stmt.query_map([], job_from_row).map_err(err)?.collect::<rusqlite::Result<_>>().map_err(err)?;
        let mut stmt = conn
            .prepare("SELECT id, name, devices, version, registered_ms, last_seen_ms, succeeded, failed FROM workers ORDER BY id")
            .map_err(err)?;
        snapshot.workers = stmt
            .query_map([], |row| {
                let devices: String = row.get(2)?;
                Ok(WorkerRecord {
                    id: WorkerId(row.get(0)?),
                    name: row.get(1)?,
                    devices: parse::<Vec<DeviceRecord>>(&devices, "devices")?,
                    version: row.get(3)?,
                    registered_ms: row.get(4)?,
                    last_seen_ms: row.get(5)?,
                    succeeded: row.get::<_, i64>(6)? as u64,
                    failed: row.get::<_, i64>(7)? as u64,
                })
            })
            .map_err(err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(err)?;
        let mut stmt = conn.prepare("SELECT sha256 FROM images").map_err(err)?;
        snapshot.images = stmt.query_map([], |row| row.get(0)).map_err(err)?.collect::<rusqlite::Result<_>>().map_err(err)?;
        let max = |table: &str| -> StoreResult<i64> {
            conn.query_row(&format!("SELECT COALESCE(MAX(id), 0) FROM {table}"), [], |row| row.get(0)).map_err(err)
        };
        snapshot.next_batch = max("batches")? + 1;
        snapshot.next_job = max("jobs")? + 1;
        snapshot.next_worker = max("workers")? + 1;
        Ok(snapshot)
    }

    fn commit(&self, ops: Vec<StoreOp>) -> CommitTicket {
        let (done, ticket) = oneshot::channel();
        if ops.is_empty() {
            let _ = done.send(Ok(()));
            return ticket;
        }
        if let Err(mpsc::SendError(commit)) = self.writer.send(Commit { ops, done }) {
            let _ = commit.done.send(Err(StoreError("the writer thread has stopped".into())));
        }
        ticket
    }

    fn batch_jobs(&self, batch: BatchId) -> StoreResult<Vec<JobRecord>> {
        let conn = self.reader.lock().expect("reader lock");
        let mut stmt = conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE batch_id = ?1 ORDER BY idx")).map_err(err)?;
        let rows = stmt.query_map(params![batch.0], job_from_row).map_err(err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(err)
    }

    fn job(&self, id: JobId) -> StoreResult<Option<JobRecord>> {
        let conn = self.reader.lock().expect("reader lock");
        let mut stmt = conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1")).map_err(err)?;
        stmt.query_row(params![id.0], job_from_row).optional().map_err(err)
    }

    fn image(&self, sha256: &str) -> StoreResult<Option<ImageRecord>> {
        let conn = self.reader.lock().expect("reader lock");
        conn.query_row(
            "SELECT sha256, size_bytes, width, height, format, created_ms FROM images WHERE sha256 = ?1",
            params![sha256],
            |row| {
                Ok(ImageRecord {
                    sha256: row.get(0)?,
                    size_bytes: row.get::<_, i64>(1)? as u64,
                    width: row.get(2)?,
                    height: row.get(3)?,
                    format: row.get(4)?,
                    created_ms: row.get(5)?,
                })
            },
        )
        .optional()
        .map_err(err)
    }

    fn describe(&self) -> String {
        format!("sqlite:{}", self.path)
    }
}
