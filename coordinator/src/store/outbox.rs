//! The webhook outbox: deliveries owed, committed in the same transaction as
//! the change that caused them (a batch's end), so a notification is never
//! lost to a crash between the change and its delivery, and deleted only
//! once delivered or given up (at least once).

use rusqlite::params;

use super::{OutboxEntry, OutboxOp, OutboxRow};
use crate::ids::BatchId;
use crate::model::Millis;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS webhook_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    event TEXT NOT NULL,
    batch_id INTEGER NOT NULL,
    body TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    next_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS webhook_outbox_due ON webhook_outbox(next_ms);
";

pub(super) fn apply(tx: &rusqlite::Transaction<'_>, op: &OutboxOp) -> rusqlite::Result<()> {
    match op {
        OutboxOp::Enqueue(e) => {
            tx.prepare_cached("INSERT INTO webhook_outbox (target, event, batch_id, body, created_ms, next_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?5)")?
                .execute(params![e.target, e.event, e.batch.0, e.body, e.created_ms])?;
        }
        OutboxOp::Done(id) => {
            tx.prepare_cached("DELETE FROM webhook_outbox WHERE id = ?1")?.execute(params![id])?;
        }
        OutboxOp::Retry { id, next_ms, attempts, error } => {
            tx.prepare_cached("UPDATE webhook_outbox SET next_ms = ?2, attempts = ?3, last_error = ?4 WHERE id = ?1")?
                .execute(params![id, next_ms, attempts, error])?;
        }
    }
    Ok(())
}

/// Deliveries due at `now`, the longest due first, at most `limit`.
pub(super) fn due(conn: &rusqlite::Connection, now: Millis, limit: usize) -> rusqlite::Result<Vec<OutboxRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, target, event, batch_id, body, created_ms, attempts FROM webhook_outbox WHERE next_ms <= ?1 ORDER BY next_ms, id LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![now, limit as i64], |row| {
        Ok(OutboxRow {
            id: row.get(0)?,
            entry: OutboxEntry { target: row.get(1)?, event: row.get(2)?, batch: BatchId(row.get(3)?), body: row.get(4)?, created_ms: row.get(5)? },
            attempts: row.get(6)?,
        })
    })?;
    rows.collect()
}

/// How many deliveries are owed (due or waiting for their retry).
pub(super) fn pending(conn: &rusqlite::Connection) -> rusqlite::Result<u64> {
    conn.query_row("SELECT COUNT(*) FROM webhook_outbox", [], |row| row.get::<_, i64>(0)).map(|n| n.max(0) as u64)
}
