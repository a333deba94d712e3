//! The Raft log, vote, committed and last-purged pointers, durable in `<dir>/raft.db` (libSQL).
//!
//! Each log entry is one row (`idx`, JSON of openraft's entry). Writes go through the
//! database thread in order; `append` only queues its write and returns, because any later
//! read is queued behind it (so the entries are readable, as openraft requires), and the
//! `LogFlushed` callback fires from that thread once the commit (WAL, `synchronous=FULL`) is
//! on disk.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};

use crate::db::{transaction, Db, DbError};
use crate::{LogEntry, TypeConfig};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, entry TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// The log store; clones share one database thread (and serve as the log reader too).
#[derive(Clone)]
pub struct LogStore {
    db: Db,
}

impl LogStore {
    /// Opens or creates `<dir>/raft.db`.
    pub async fn open(dir: &Path) -> Result<LogStore, DbError> {
        let db = Db::open(&dir.join("raft.db"), SCHEMA).await?;
        Ok(LogStore { db })
    }

    /// The lowest index still present in the log, if any (for observing compaction).
    pub async fn first_index(&self) -> Result<Option<u64>, DbError> {
        self.db
            .call(|conn| async move {
                let mut rows = conn.query("SELECT MIN(idx) FROM log", ()).await?;
                let first = match rows.next().await? {
                    Some(row) => row.get::<Option<i64>>(0)?,
                    None => None,
                };
                while rows.next().await?.is_some() {}
                Ok(first.map(|i| i as u64))
            })
            .await
    }

    async fn read_meta<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        key: &'static str,
    ) -> Result<Option<T>, DbError> {
        self.db.call(move |conn| async move { read_meta(&conn, key).await }).await
    }

    async fn write_meta<T: serde::Serialize>(&self, key: &'static str, value: &T) -> Result<(), DbError> {
        let text = serde_json::to_string(value)?;
        self.db
            .call(move |conn| async move {
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)", (key, text)).await?;
                Ok(())
            })
            .await
    }
}

async fn read_meta<T: serde::de::DeserializeOwned>(conn: &libsql::Connection, key: &str) -> Result<Option<T>, DbError> {
    let mut rows = conn.query("SELECT value FROM meta WHERE key = ?1", [key]).await?;
    let text = match rows.next().await? {
        Some(row) => Some(row.get::<String>(0)?),
        None => None,
    };
    while rows.next().await?.is_some() {}
    Ok(match text {
        Some(t) => Some(serde_json::from_str(&t)?),
        None => None,
    })
}

fn to_i64(index: u64) -> i64 {
    i64::try_from(index).unwrap_or(i64::MAX)
}

/// Turns a range over log indexes into `[start, end)` for SQL.
fn bounds<RB: RangeBounds<u64>>(range: &RB) -> (i64, i64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => to_i64(s),
        Bound::Excluded(&s) => to_i64(s.saturating_add(1)),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => to_i64(e.saturating_add(1)),
        Bound::Excluded(&e) => to_i64(e),
        Bound::Unbounded => i64::MAX,
    };
    (start, end)
}

fn read_err(e: &DbError) -> StorageError<u64> {
    StorageIOError::read_logs(e).into()
}

fn write_err(e: &DbError) -> StorageError<u64> {
    StorageIOError::write_logs(e).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<LogEntry>, StorageError<u64>> {
        let (start, end) = bounds(&range);
        self.db
            .call(move |conn| async move {
                let mut rows =
                    conn.query("SELECT entry FROM log WHERE idx >= ?1 AND idx < ?2 ORDER BY idx", (start, end)).await?;
                let mut out = Vec::new();
                while let Some(row) = rows.next().await? {
                    out.push(serde_json::from_str::<LogEntry>(&row.get::<String>(0)?)?);
                }
                Ok(out)
            })
            .await
            .map_err(|e| read_err(&e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        self.db
            .call(|conn| async move {
                let last_purged: Option<LogId<u64>> = read_meta(&conn, LAST_PURGED).await?;
                let mut rows = conn.query("SELECT entry FROM log ORDER BY idx DESC LIMIT 1", ()).await?;
                let last = match rows.next().await? {
                    Some(row) => Some(serde_json::from_str::<LogEntry>(&row.get::<String>(0)?)?.log_id),
                    None => None,
                };
                while rows.next().await?.is_some() {}
                Ok(LogState { last_log_id: last.or(last_purged), last_purged_log_id: last_purged })
            })
            .await
            .map_err(|e| read_err(&e))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        self.write_meta(VOTE, vote).await.map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        self.read_meta(VOTE).await.map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), StorageError<u64>> {
        self.write_meta(COMMITTED, &committed).await.map_err(|e| write_err(&e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        // Stored as JSON of an Option, so a saved `None` reads back as `Some(None)`.
        let v: Option<Option<LogId<u64>>> = self.read_meta(COMMITTED).await.map_err(|e| read_err(&e))?;
        Ok(v.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = LogEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        for entry in entries {
            let text = serde_json::to_string(&entry).map_err(|e| write_err(&DbError::Json(e)))?;
            rows.push((to_i64(entry.log_id.index), text));
        }
        self.db
            .send(move |conn| async move {
                let written = transaction(&conn, || async {
                    for (idx, text) in rows {
                        conn.execute("INSERT OR REPLACE INTO log (idx, entry) VALUES (?1, ?2)", (idx, text)).await?;
                    }
                    Ok(())
                })
                .await;
                callback.log_io_completed(written.map_err(|e| std::io::Error::other(e.to_string())));
            })
            .map_err(|e| write_err(&e))
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let from = to_i64(log_id.index);
        self.db
            .call(move |conn| async move {
                conn.execute("DELETE FROM log WHERE idx >= ?1", [from]).await?;
                Ok(())
            })
            .await
            .map_err(|e| write_err(&e))
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let upto = to_i64(log_id.index);
        let text = serde_json::to_string(&log_id).map_err(|e| write_err(&DbError::Json(e)))?;
        self.db
            .call(move |conn| async move {
                transaction(&conn, || async {
                    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)", (LAST_PURGED, text))
                        .await?;
                    conn.execute("DELETE FROM log WHERE idx <= ?1", [upto]).await?;
                    Ok(())
                })
                .await
            })
            .await
            .map_err(|e| write_err(&e))
    }
}
