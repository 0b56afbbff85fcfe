//! Which batches use which uploads. Uploads (`images/sha256/…`) are stored
//! once and shared between batches and principals, so a batch's deletion
//! never removes them; this table says when none uses one any more, and
//! retention then removes the ones uploaded longer ago than it keeps
//! batches (`farm::retention`). A use is recorded with each job's insert and
//! dropped with its batch's delete, in the same transactions.

use rusqlite::{params, Connection, Transaction};

use crate::ids::BatchId;
use crate::model::{ImageSource, JobRecord, Millis};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS upload_uses (
    sha256 TEXT NOT NULL,
    batch_id INTEGER NOT NULL,
    PRIMARY KEY (sha256, batch_id)
);
CREATE INDEX IF NOT EXISTS upload_uses_by_batch ON upload_uses(batch_id);
CREATE INDEX IF NOT EXISTS images_by_age ON images(created_ms);
";

/// Creates the table; a store from before it learns its uses from its jobs
/// (the inputs are JSON, `{\"blob\": SHA}` for an upload).
pub(super) fn create(conn: &Connection) -> rusqlite::Result<()> {
    let existed: bool = conn.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'upload_uses'")?.exists([])?;
    conn.execute_batch(SCHEMA)?;
    if !existed {
        conn.execute_batch(
            "INSERT OR IGNORE INTO upload_uses (sha256, batch_id)
                 SELECT json_extract(content, '$.blob'), batch_id FROM jobs WHERE json_extract(content, '$.blob') IS NOT NULL;
             INSERT OR IGNORE INTO upload_uses (sha256, batch_id)
                 SELECT json_extract(s.value, '$.blob'), jobs.batch_id FROM jobs, json_each(jobs.styles) AS s
                 WHERE json_extract(s.value, '$.blob') IS NOT NULL;",
        )?;
    }
    Ok(())
}

/// The uploads `job` reads, recorded as its batch's.
pub(super) fn record(tx: &Transaction<'_>, job: &JobRecord) -> rusqlite::Result<()> {
    for source in std::iter::once(&job.content).chain(&job.styles) {
        if let ImageSource::Blob(sha256) = source {
            tx.prepare_cached("INSERT OR IGNORE INTO upload_uses (sha256, batch_id) VALUES (?1, ?2)")?.execute(params![sha256, job.batch.0])?;
        }
    }
    Ok(())
}

pub(super) fn forget_batch(tx: &Transaction<'_>, batch: BatchId) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM upload_uses WHERE batch_id = ?1")?.execute(params![batch.0])?;
    Ok(())
}

/// Drops an upload's rows (its bytes and every principal's reference), unless
/// a batch uses it.
pub(super) fn forget(tx: &Transaction<'_>, sha256: &str) -> rusqlite::Result<()> {
    for table in ["image_refs", "images"] {
        tx.prepare_cached(&format!("DELETE FROM {table} WHERE sha256 = ?1 AND NOT EXISTS (SELECT 1 FROM upload_uses WHERE sha256 = ?1)"))?
            .execute(params![sha256])?;
    }
    Ok(())
}

/// Uploads no batch uses, last uploaded before `cutoff`, the oldest first.
pub(super) fn unused(conn: &Connection, cutoff: Millis, limit: usize) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT sha256 FROM images i WHERE created_ms < ?1 AND NOT EXISTS (SELECT 1 FROM upload_uses u WHERE u.sha256 = i.sha256)
         ORDER BY created_ms, sha256 LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![cutoff, limit as i64], |row| row.get(0))?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use crate::ids::BatchId;
    use crate::model::fixtures;
    use crate::store::{Commits, Durability, ImageRecord, SqliteStore, Store, StoreOp};

    fn image(sha: &str, created_ms: i64) -> StoreOp {
        StoreOp::InsertImage(ImageRecord { sha256: sha.into(), size_bytes: 1, width: 1, height: 1, format: "png".into(), created_ms })
    }

    fn commit(store: &SqliteStore, ops: Vec<StoreOp>) {
        store.commit(ops).blocking_recv().unwrap().unwrap();
    }

    #[test]
    fn an_upload_is_unused_once_no_batch_reads_it_and_old_enough_and_older_stores_learn_their_uses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite");
        let store = SqliteStore::open(&path, Durability::ProcessCrash, Commits::Grouped).unwrap();
        // fixtures' job reads the upload "aa" (and a URL)
        let (mut first, mut second) = (fixtures::batch(Default::default()), fixtures::batch(Default::default()));
        (first.id, second.id) = (BatchId(1), BatchId(2));
        let (mut job1, mut job2) = (fixtures::job(BatchId(1), 1), fixtures::job(BatchId(2), 1));
        job2.id = crate::ids::JobId(2);
        job1.id = crate::ids::JobId(1);
        commit(&store, vec![image("aa", 0), image("bb", 0), StoreOp::InsertBatch(first), StoreOp::InsertJob(Box::new(job1))]);
        assert_eq!(store.unused_uploads(10, 10).unwrap(), vec!["bb".to_string()]);
        assert!(store.unused_uploads(0, 10).unwrap().is_empty(), "nothing uploaded before 0");
        commit(&store, vec![StoreOp::InsertBatch(second), StoreOp::InsertJob(Box::new(job2))]);
        commit(&store, vec![StoreOp::DeleteBatch { id: BatchId(1), deleted_ms: 5 }]);
        assert_eq!(store.unused_uploads(10, 10).unwrap(), vec!["bb".to_string()], "batch 2 still reads aa");
        commit(&store, vec![StoreOp::DeleteBatch { id: BatchId(2), deleted_ms: 6 }]);
        assert_eq!(store.unused_uploads(10, 10).unwrap(), vec!["aa".to_string(), "bb".to_string()]);
        assert_eq!(store.unused_uploads(10, 1).unwrap(), vec!["aa".to_string()], "bounded");
        // uploaded again: young again
        commit(&store, vec![image("bb", 100)]);
        assert_eq!(store.unused_uploads(10, 10).unwrap(), vec!["aa".to_string()]);
        commit(&store, vec![StoreOp::ForgetUpload("aa".into())]);
        assert!(store.image("aa").unwrap().is_none());
        assert!(store.unused_uploads(10, 10).unwrap().is_empty());
        drop(store);

        // a store from before the table: its uses come from its jobs
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "DROP TABLE upload_uses;
             INSERT INTO batches (id, name, priority, labels, max_attempts, created_ms) VALUES (3, 'old', 0, '{}', 1, 0);
             INSERT INTO jobs (id, batch_id, idx, name, priority, content, styles, params, estimate_bytes, max_attempts, attempt, state, created_ms, trace_id)
                 VALUES (3, 3, 0, 'j', 0, '{\"url\":\"file:///c.png\"}', '[{\"blob\":\"bb\"},{\"url\":\"file:///s.png\"}]', '{}', 1, 1, 0, '\"succeeded\"', 0, '');",
        )
        .unwrap();
        drop(conn);
        let store = SqliteStore::open(&path, Durability::ProcessCrash, Commits::Grouped).unwrap();
        assert!(store.unused_uploads(1_000, 10).unwrap().is_empty(), "bb is batch 3's style");
        commit(&store, vec![StoreOp::DeleteBatch { id: BatchId(3), deleted_ms: 7 }]);
        assert_eq!(store.unused_uploads(1_000, 10).unwrap(), vec!["bb".to_string()]);
    }
}
