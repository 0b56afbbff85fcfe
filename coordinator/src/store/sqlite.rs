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

use super::outbox;
use super::rows::{batch_from_row, job_from_row, json, lenient, parse_or, worker_from_row, BATCH_COLUMNS, JOB_COLUMNS, WORKER_COLUMNS};
use super::{uploads, CommitTicket, ImageRecord, OutboxRow, Snapshot, Store, StoreError, StoreOp, StoreResult};
use crate::ids::{BatchId, JobId, WorkerId};
use crate::model::{AttemptEnd, AttemptRecord, Availability, BatchRecord, JobRecord, Millis};

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
CREATE TABLE IF NOT EXISTS worker_batch_failures (
    worker_id INTEGER NOT NULL,
    batch_id INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    PRIMARY KEY (worker_id, batch_id)
);
CREATE TABLE IF NOT EXISTS attempts (
    job_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    worker_id INTEGER,
    leased_ms INTEGER NOT NULL,
    ended_ms INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL,
    spans TEXT NOT NULL,
    PRIMARY KEY (job_id, attempt)
);
CREATE TABLE IF NOT EXISTS images (
    sha256 TEXT PRIMARY KEY,
    size_bytes INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    format TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS image_refs (
    sha256 TEXT NOT NULL,
    owner TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (sha256, owner)
);
-- the highest id each table ever gave out, kept when rows are deleted, so
-- a deleted batch's jobs or a forgotten worker never lend their ids to new ones
CREATE TABLE IF NOT EXISTS id_high_water (
    name TEXT PRIMARY KEY,
    high INTEGER NOT NULL
);
";

/// Columns added after the first release: (table, column, declaration).
const ADDED_COLUMNS: [(&str, &str, &str); 18] = [
    ("batches", "owner", "TEXT NOT NULL DEFAULT 'local'"),
    ("batches", "started_ms", "INTEGER"),
    ("jobs", "handed_back", "INTEGER NOT NULL DEFAULT 0"),
    ("jobs", "time_limit_ms", "INTEGER NOT NULL DEFAULT 86400000"),
    ("workers", "owner", "TEXT NOT NULL DEFAULT 'local'"),
    ("workers", "secret_sha256", "TEXT NOT NULL DEFAULT ''"),
    ("jobs", "depends_on", "TEXT NOT NULL DEFAULT '[]'"),
    ("jobs", "task", "TEXT"),
    ("batches", "paused", "INTEGER NOT NULL DEFAULT 0"),
    ("jobs", "forgiven", "INTEGER NOT NULL DEFAULT 0"),
    ("batches", "deleted_ms", "INTEGER"),
    ("workers", "disabled", "INTEGER NOT NULL DEFAULT 0"),
    ("jobs", "requires", "TEXT NOT NULL DEFAULT '[]'"),
    ("batches", "requires", "TEXT NOT NULL DEFAULT '[]'"),
    ("workers", "labels", "TEXT NOT NULL DEFAULT '{}'"),
    // a request id is its submitter's: unique per (owner, request_key); the
    // first column, `request_id`, was unique across everyone and is left empty
    ("batches", "request_key", "TEXT"),
    // pixels × iterations, for the `unfinished_mpx_iterations` quota (older rows: 0)
    ("jobs", "work", "INTEGER NOT NULL DEFAULT 0"),
    // webhooks told when the batch ends (model::Notify as JSON)
    ("batches", "notify", "TEXT NOT NULL DEFAULT '{\"urls\":[]}'"),
];

fn migrate(conn: &Connection) -> StoreResult<()> {
    for (table, column, decl) in ADDED_COLUMNS {
        let exists: bool =
            conn.prepare(&format!("SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1")).and_then(|mut st| st.exists(params![column])).map_err(err)?;
        if !exists {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}")).map_err(err)?;
        }
    }
    conn.execute_batch(
        "UPDATE batches SET request_key = request_id, request_id = NULL WHERE request_id IS NOT NULL AND request_key IS NULL;
         INSERT OR IGNORE INTO image_refs (sha256, owner, created_ms)
             SELECT sha256, '*', created_ms FROM images WHERE NOT EXISTS (SELECT 1 FROM image_refs r WHERE r.sha256 = images.sha256);
         CREATE UNIQUE INDEX IF NOT EXISTS batches_by_request ON batches(owner, request_key);
         CREATE INDEX IF NOT EXISTS batches_by_owner ON batches(owner, id); CREATE INDEX IF NOT EXISTS batches_unfinished ON batches(finished_ms);",
    )
    .map_err(err)
}

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

fn err(e: rusqlite::Error) -> StoreError {
    StoreError::from(e)
}

fn open(path: &Path, full_sync: bool) -> StoreResult<Connection> {
    let conn = Connection::open(path).map_err(err)?;
    let sync = if full_sync { "FULL" } else { "NORMAL" };
    conn.execute_batch(&format!("PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA busy_timeout=5000; PRAGMA foreign_keys=ON;")).map_err(err)?;
    Ok(conn)
}

/// What a commit survives (SQLite's `synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// NORMAL in WAL mode: the process dying loses nothing committed.
    #[default]
    ProcessCrash,
    /// FULL: an fsync per commit group, so power loss loses nothing either.
    PowerLoss,
}

/// How concurrent requests' changes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Commits {
    /// Many requests' changes in one transaction (the default).
    #[default]
    Grouped,
    /// One transaction per request (the benchmark's reference).
    PerRequest,
}

impl SqliteStore {
    /// [`Commits::PerRequest`] commits every request in its own transaction
    /// (the reference the benchmark compares group commit against).
    pub fn open(path: &Path, durability: Durability, commits: Commits) -> StoreResult<SqliteStore> {
        let full_sync = durability == Durability::PowerLoss;
        let conn = open(path, full_sync)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        conn.execute_batch(outbox::SCHEMA).map_err(err)?;
        migrate(&conn)?;
        uploads::create(&conn).map_err(err)?;
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
            .map_err(|e| StoreError::io("cannot start the checkpoint thread", e))?;
        let (writer, commits_rx) = mpsc::channel::<Commit>();
        thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || write_loop(conn, commits_rx, if commits == Commits::Grouped { MAX_GROUP_OPS } else { 0 }))
            .map_err(|e| StoreError::io("cannot start the writer thread", e))?;
        Ok(SqliteStore { writer, _alive: alive, reader: Mutex::new(reader), path: path.display().to_string() })
    }

    fn reader(&self) -> StoreResult<std::sync::MutexGuard<'_, Connection>> {
        self.reader.lock().map_err(|_| StoreError::Poisoned)
    }
}

/// Copies the WAL into the database every 500 ms (PASSIVE: never waits for the
/// writer), and truncates the WAL when it has grown past 64 MiB.
fn checkpoint_loop(conn: Connection, alive: Weak<()>) {
    loop {
        thread::sleep(std::time::Duration::from_millis(500));
        let done: rusqlite::Result<(i64, i64, i64)> = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)));
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
        let result = if op_count == 0 { Ok(()) } else { apply_group(&mut conn, &group).map_err(err) };
        if let Err(e) = &result {
            tracing::error!(error = %e, commits = group.len(), "state store commit failed");
        }
        for commit in group {
            let _ = commit.done.send(result.clone());
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
                "INSERT INTO batches (id, name, priority, labels, max_attempts, request_key, created_ms, cancel_requested, started, owner, requires, notify)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?
            .execute(params![
                b.id.0,
                b.name,
                b.priority,
                json(&b.labels),
                b.max_attempts,
                b.request_id,
                b.created_ms,
                b.cancel_requested,
                b.started,
                b.owner,
                json(&b.requires),
                json(&b.notify)
            ])?;
        }
        StoreOp::InsertJob(j) => {
            tx.prepare_cached(
                "INSERT INTO jobs (id, batch_id, idx, name, priority, content, styles, params, estimate_bytes, max_attempts,
                                   attempt, state, last_failure, created_ms, started_ms, finished_ms, trace_id, handed_back, time_limit_ms,
                                   depends_on, task, requires, work)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)",
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
                j.handed_back,
                j.time_limit_ms as i64,
                json(&j.depends_on.iter().map(|d| d.0).collect::<Vec<i64>>()),
                j.task,
                json(&j.requires),
                j.work.min(i64::MAX as u64) as i64,
            ])?;
            uploads::record(tx, j)?;
        }
        StoreOp::UpdateJob(u) => {
            tx.prepare_cached(
                "UPDATE jobs SET attempt = ?2, state = ?3, last_failure = ?4, started_ms = ?5, finished_ms = ?6, handed_back = ?7, forgiven = ?8 WHERE id = ?1",
            )?
            .execute(params![
                u.id.0,
                u.attempt,
                json(&u.state),
                u.last_failure.as_ref().map(json),
                u.started_ms,
                u.finished_ms,
                u.handed_back,
                u.forgiven
            ])?;
        }
        StoreOp::CancelBatch(id) => {
            tx.prepare_cached("UPDATE batches SET cancel_requested = 1 WHERE id = ?1")?.execute(params![id.0])?;
        }
        StoreOp::ReopenBatch(id) => {
            tx.prepare_cached("UPDATE batches SET finished_ms = NULL, counts = NULL, cancel_requested = 0 WHERE id = ?1")?.execute(params![id.0])?;
            tx.prepare_cached("DELETE FROM worker_batch_failures WHERE batch_id = ?1")?.execute(params![id.0])?;
        }
        StoreOp::SetPaused { batch, paused } => {
            tx.prepare_cached("UPDATE batches SET paused = ?2 WHERE id = ?1")?.execute(params![batch.0, paused])?;
        }
        StoreOp::SetPriority { batch, priority } => {
            tx.prepare_cached("UPDATE batches SET priority = ?2 WHERE id = ?1")?.execute(params![batch.0, priority])?;
            tx.prepare_cached("UPDATE jobs SET priority = ?2 WHERE batch_id = ?1")?.execute(params![batch.0, priority])?;
        }
        StoreOp::FinishBatch { id, finished_ms, counts, started } => {
            tx.prepare_cached("UPDATE batches SET finished_ms = ?2, counts = ?3, started = ?4 WHERE id = ?1")?.execute(params![
                id.0,
                finished_ms,
                json(counts),
                started
            ])?;
        }
        StoreOp::StartBatch { id, started_ms } => {
            tx.prepare_cached("UPDATE batches SET started = 1, started_ms = ?2 WHERE id = ?1")?.execute(params![id.0, started_ms])?;
        }
        StoreOp::UpsertWorker(w) => {
            tx.prepare_cached(
                "INSERT INTO workers (id, name, devices, version, registered_ms, last_seen_ms, succeeded, failed, owner, secret_sha256, labels)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT(id) DO UPDATE SET name = ?2, devices = ?3, version = ?4, last_seen_ms = ?6, succeeded = ?7, failed = ?8, labels = ?11",
            )?
            .execute(params![
                w.id.0,
                w.name,
                json(&w.devices),
                w.version,
                w.registered_ms,
                w.last_seen_ms,
                w.succeeded as i64,
                w.failed as i64,
                w.owner,
                w.secret.to_hex(),
                json(&w.labels)
            ])?;
        }
        StoreOp::WorkerCounters { id, succeeded, failed } => {
            tx.prepare_cached("UPDATE workers SET succeeded = ?2, failed = ?3 WHERE id = ?1")?.execute(params![id.0, *succeeded as i64, *failed as i64])?;
        }
        StoreOp::CountFailure { worker, batch, failures } => {
            tx.prepare_cached(
                "INSERT INTO worker_batch_failures (worker_id, batch_id, failures) VALUES (?1, ?2, ?3)
                 ON CONFLICT(worker_id, batch_id) DO UPDATE SET failures = ?3",
            )?
            .execute(params![worker.0, batch.0, failures])?;
        }
        StoreOp::InsertImage(i) => {
            tx.prepare_cached(
                "INSERT INTO images (sha256, size_bytes, width, height, format, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(sha256) DO UPDATE SET created_ms = MAX(created_ms, excluded.created_ms)",
            )?
            .execute(params![i.sha256, i.size_bytes as i64, i.width, i.height, i.format, i.created_ms])?;
        }
        StoreOp::InsertImageRef { sha256, owner, created_ms } => {
            tx.prepare_cached("INSERT OR IGNORE INTO image_refs (sha256, owner, created_ms) VALUES (?1, ?2, ?3)")?
                .execute(params![sha256, owner, created_ms])?;
        }
        StoreOp::InsertAttempt(a) => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO attempts (job_id, attempt, worker_id, leased_ms, ended_ms, outcome, reason, spans) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![a.job.0, a.attempt, a.worker.map(|w| w.0), a.leased_ms, a.ended_ms, a.outcome.label(), a.reason, json(&a.spans)])?;
        }
        StoreOp::DeleteBatch { id, deleted_ms } => {
            tx.prepare_cached("DELETE FROM attempts WHERE job_id IN (SELECT id FROM jobs WHERE batch_id = ?1)")?.execute(params![id.0])?;
            tx.prepare_cached(
                "INSERT INTO id_high_water (name, high) SELECT 'jobs', MAX(id) FROM jobs WHERE batch_id = ?1 AND id IS NOT NULL
                 ON CONFLICT(name) DO UPDATE SET high = MAX(high, excluded.high)",
            )?
            .execute(params![id.0])?;
            tx.prepare_cached("DELETE FROM jobs WHERE batch_id = ?1")?.execute(params![id.0])?;
            tx.prepare_cached("DELETE FROM worker_batch_failures WHERE batch_id = ?1")?.execute(params![id.0])?;
            uploads::forget_batch(tx, *id)?;
            tx.prepare_cached("UPDATE batches SET deleted_ms = ?2 WHERE id = ?1 AND deleted_ms IS NULL")?.execute(params![id.0, deleted_ms])?;
        }
        StoreOp::SetAvailability { worker, availability } => {
            tx.prepare_cached("UPDATE workers SET disabled = ?2 WHERE id = ?1")?.execute(params![worker.0, *availability == Availability::Disabled])?;
        }
        StoreOp::DeleteWorker(id) => {
            tx.prepare_cached("DELETE FROM worker_batch_failures WHERE worker_id = ?1")?.execute(params![id.0])?;
            tx.prepare_cached("INSERT INTO id_high_water (name, high) VALUES ('workers', ?1) ON CONFLICT(name) DO UPDATE SET high = MAX(high, excluded.high)")?
                .execute(params![id.0])?;
            tx.prepare_cached("DELETE FROM workers WHERE id = ?1")?.execute(params![id.0])?;
        }
        StoreOp::ForgetUpload(sha256) => uploads::forget(tx, sha256)?,
        StoreOp::Outbox(op) => outbox::apply(tx, op)?,
    }
    Ok(())
}

impl Store for SqliteStore {
    fn load(&self) -> StoreResult<Snapshot> {
        let conn = self.reader()?;
        let mut snapshot = Snapshot::default();
        let mut stmt = conn.prepare(&format!("SELECT {BATCH_COLUMNS} FROM batches WHERE finished_ms IS NULL ORDER BY id")).map_err(err)?;
        snapshot.batches = lenient(stmt.query_map([], batch_from_row).map_err(err)?, "batches");
        let mut stmt = conn
            .prepare(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE batch_id IN (SELECT id FROM batches WHERE finished_ms IS NULL) ORDER BY id"))
            .map_err(err)?;
        snapshot.jobs = lenient(stmt.query_map([], job_from_row).map_err(err)?, "jobs");
        let mut stmt = conn.prepare(&format!("SELECT {WORKER_COLUMNS} FROM workers ORDER BY id")).map_err(err)?;
        let workers = stmt.query_map([], worker_from_row).map_err(err)?;
        snapshot.workers = lenient(workers, "workers");
        let mut stmt = conn
            .prepare("SELECT worker_id, batch_id, failures FROM worker_batch_failures WHERE batch_id IN (SELECT id FROM batches WHERE finished_ms IS NULL)")
            .map_err(err)?;
        snapshot.failures =
            lenient(stmt.query_map([], |row| Ok((WorkerId(row.get(0)?), BatchId(row.get(1)?), row.get(2)?))).map_err(err)?, "worker_batch_failures");
        let mut stmt = conn.prepare("SELECT sha256 FROM images").map_err(err)?;
        snapshot.images = lenient(stmt.query_map([], |row| row.get(0)).map_err(err)?, "images");
        let mut stmt = conn.prepare("SELECT owner, sha256 FROM image_refs").map_err(err)?;
        snapshot.image_refs = lenient(stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?))).map_err(err)?, "image_refs");
        let max = |table: &str| -> StoreResult<i64> {
            conn.query_row(
                &format!("SELECT MAX((SELECT COALESCE(MAX(id), 0) FROM {table}), (SELECT COALESCE(MAX(high), 0) FROM id_high_water WHERE name = ?1))"),
                params![table],
                |row| row.get(0),
            )
            .map_err(err)
        };
        snapshot.next_batch = max("batches")? + 1;
        snapshot.next_job = max("jobs")? + 1;
        snapshot.next_worker = max("workers")? + 1;
        Ok(snapshot)
    }

    fn commit(&self, ops: Vec<StoreOp>) -> CommitTicket {
        let (done, ticket) = oneshot::channel();
        if let Err(mpsc::SendError(commit)) = self.writer.send(Commit { ops, done }) {
            let _ = commit.done.send(Err(StoreError::WriterStopped));
        }
        ticket
    }

    fn batch(&self, id: BatchId) -> StoreResult<Option<BatchRecord>> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached(&format!("SELECT {BATCH_COLUMNS} FROM batches WHERE id = ?1")).map_err(err)?;
        stmt.query_row(params![id.0], batch_from_row).optional().map_err(err)
    }

    fn batches_before(&self, before: BatchId, limit: usize, owner: Option<&str>) -> StoreResult<Vec<BatchRecord>> {
        let conn = self.reader()?;
        let rows = match owner {
            Some(owner) => {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {BATCH_COLUMNS} FROM batches WHERE id < ?1 AND owner = ?2 AND deleted_ms IS NULL ORDER BY id DESC LIMIT ?3"
                    ))
                    .map_err(err)?;
                let rows = stmt.query_map(params![before.0, owner, limit as i64], batch_from_row).map_err(err)?;
                lenient(rows, "batches")
            }
            None => {
                let mut stmt = conn
                    .prepare_cached(&format!("SELECT {BATCH_COLUMNS} FROM batches WHERE id < ?1 AND deleted_ms IS NULL ORDER BY id DESC LIMIT ?2"))
                    .map_err(err)?;
                let rows = stmt.query_map(params![before.0, limit as i64], batch_from_row).map_err(err)?;
                lenient(rows, "batches")
            }
        };
        Ok(rows)
    }

    fn finished_before(&self, cutoff: Millis, limit: usize) -> StoreResult<Vec<BatchId>> {
        let conn = self.reader()?;
        let mut stmt =
            conn.prepare_cached("SELECT id FROM batches WHERE finished_ms < ?1 AND deleted_ms IS NULL ORDER BY finished_ms, id LIMIT ?2").map_err(err)?;
        let rows = stmt.query_map(params![cutoff, limit as i64], |row| Ok(BatchId(row.get(0)?))).map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    fn batch_for_request(&self, owner: &str, request_id: &str) -> StoreResult<Option<BatchId>> {
        let conn = self.reader()?;
        conn.query_row("SELECT id FROM batches WHERE owner = ?1 AND request_key = ?2", params![owner, request_id], |row| Ok(BatchId(row.get(0)?)))
            .optional()
            .map_err(err)
    }

    fn batch_jobs(&self, batch: BatchId) -> StoreResult<Vec<JobRecord>> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE batch_id = ?1 ORDER BY idx")).map_err(err)?;
        let rows = stmt.query_map(params![batch.0], job_from_row).map_err(err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(err)
    }

    fn job(&self, id: JobId) -> StoreResult<Option<JobRecord>> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1")).map_err(err)?;
        stmt.query_row(params![id.0], job_from_row).optional().map_err(err)
    }

    fn image(&self, sha256: &str) -> StoreResult<Option<ImageRecord>> {
        let conn = self.reader()?;
        conn.query_row("SELECT sha256, size_bytes, width, height, format, created_ms FROM images WHERE sha256 = ?1", params![sha256], |row| {
            Ok(ImageRecord {
                sha256: row.get(0)?,
                size_bytes: row.get::<_, i64>(1)? as u64,
                width: row.get(2)?,
                height: row.get(3)?,
                format: row.get(4)?,
                created_ms: row.get(5)?,
            })
        })
        .optional()
        .map_err(err)
    }

    fn attempts(&self, job: JobId) -> StoreResult<Vec<AttemptRecord>> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare_cached("SELECT attempt, worker_id, leased_ms, ended_ms, outcome, reason, spans FROM attempts WHERE job_id = ?1 ORDER BY attempt")
            .map_err(err)?;
        let rows = stmt
            .query_map(params![job.0], |row| {
                let spans: String = row.get(6)?;
                Ok(AttemptRecord {
                    job,
                    attempt: row.get(0)?,
                    worker: row.get::<_, Option<i64>>(1)?.map(WorkerId),
                    leased_ms: row.get(2)?,
                    ended_ms: row.get(3)?,
                    outcome: {
                        let label: String = row.get(4)?;
                        AttemptEnd::from_label(&label).ok_or_else(|| {
                            rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, format!("unknown attempt outcome `{label}`").into())
                        })?
                    },
                    reason: row.get(5)?,
                    spans: parse_or(&spans, "attempt spans", job.0, |_| Vec::new()),
                })
            })
            .map_err(err)?;
        Ok(lenient(rows, "attempt"))
    }

    fn unused_uploads(&self, cutoff: Millis, limit: usize) -> StoreResult<Vec<String>> {
        uploads::unused(&*self.reader()?, cutoff, limit).map_err(err)
    }

    fn outbox_due(&self, now: Millis, limit: usize) -> StoreResult<Vec<OutboxRow>> {
        outbox::due(&*self.reader()?, now, limit).map_err(err)
    }

    fn outbox_pending(&self) -> StoreResult<u64> {
        outbox::pending(&*self.reader()?).map_err(err)
    }

    fn describe(&self) -> String {
        format!("sqlite:{}", self.path)
    }
}
