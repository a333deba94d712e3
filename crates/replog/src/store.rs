//! The durable log of every partition of one node, in one libSQL file.
//!
//! libSQL's local calls do blocking SQLite work (including a commit's fsync) inside `async
//! fn`s, so the connection lives on its own OS thread and callers send it jobs: that keeps
//! tokio workers free and serializes every write in the order it was sent.
//!
//! Entries are written with `synchronous=FULL` (WAL): when `append` returns, the entries are on
//! disk, which is what lets a replica acknowledge them. The commit and applied pointers are
//! written with `synchronous=NORMAL`: losing their last updates in a crash only means applying
//! again from an older point (apply is idempotent) or learning the commit again from the
//! leader, and the next FULL commit makes them durable anyway, so they cost no fsync of their own.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::mpsc;

use tokio::sync::oneshot;

use crate::engine::EpochIndex;
use crate::types::{Entry, Epoch, LogPos, NodeId, PartitionId, ReplicaSet, Seq};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("libsql: {0}")]
    Sql(#[from] libsql::Error),
    #[error("the log store thread has stopped")]
    Closed,
    #[error("could not start the log store thread: {0}")]
    Spawn(std::io::Error),
    #[error("log store directory: {0}")]
    Io(std::io::Error),
    #[error("corrupt log store: {0}")]
    Corrupt(String),
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS entries (
    partition INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (partition, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    partition INTEGER PRIMARY KEY,
    promised_epoch INTEGER NOT NULL DEFAULT 0,
    commit_seq INTEGER NOT NULL DEFAULT 0,
    applied_seq INTEGER NOT NULL DEFAULT 0
);
";

/// The schema version (`PRAGMA user_version`) this code writes; older files are migrated at
/// open, and a newer one is refused.
/// - 1: `entries`, `meta` (promised, commit, applied). Files from before versioning read 0.
/// - 2: `meta.serving_epoch`, `meta.serving_replicas` (the last serving replica set; the
///   replicas as big-endian u64s).
const SCHEMA_VERSION: i64 = 2;

const MIGRATE_TO_2: &str = "
ALTER TABLE meta ADD COLUMN serving_epoch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE meta ADD COLUMN serving_replicas BLOB;
";

/// What the store knows of one partition at open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionMeta {
    pub promised: Epoch,
    pub commit: Seq,
    pub applied: Seq,
    pub index: EpochIndex,
    /// The replica set of the last epoch whose leader reached serving, as far as this node
    /// has been told.
    pub serving: Option<ReplicaSet>,
}

/// Meta changes written in the same transaction as an append.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetaUpdate {
    pub promised: Option<Epoch>,
    pub commit: Option<Seq>,
}

/// What a job hands back: called once the transaction it ran in is over, with the error
/// that failed its commit if any (the caller's answer waits for durability).
type Reply = Box<dyn FnOnce(Option<String>) + Send>;
type JobFuture = Pin<Box<dyn Future<Output = Reply>>>;
type Job = Box<dyn FnOnce(libsql::Connection) -> JobFuture + Send>;

/// Most jobs the store's thread runs in one transaction (group commit).
const MAX_BATCH: usize = 512;

/// A handle to the store; clones share its thread, which ends with the last handle.
#[derive(Clone)]
pub struct LogStore {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogStore")
    }
}

pub(crate) fn to_sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_sql(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative {what}: {v}")))
}

fn partition_from_sql(v: i64) -> Result<PartitionId, StoreError> {
    PartitionId::try_from(v).map_err(|_| StoreError::Corrupt(format!("partition out of range: {v}")))
}

impl LogStore {
    /// Opens or creates the store at `path`.
    pub async fn open(path: &Path) -> Result<LogStore, StoreError> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let path: PathBuf = path.to_owned();
        std::thread::Builder::new()
            .name("replog-db".into())
            .spawn(move || run(path, rx, ready_tx))
            .map_err(StoreError::Spawn)?;
        ready_rx.await.map_err(|_| StoreError::Closed)??;
        Ok(LogStore { jobs })
    }

    async fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(libsql::Connection) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            Box::pin(async move {
                let result = f(conn).await;
                let reply: Reply = Box::new(move |commit_failed| {
                    // The caller may have given up; the write still happened, in order.
                    let _ = tx.send(match commit_failed {
                        Some(why) => Err(StoreError::Corrupt(format!("group commit failed: {why}"))),
                        None => result,
                    });
                });
                reply
            })
        });
        self.jobs.send(job).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Every partition's meta and log shape.
    pub async fn load(&self) -> Result<HashMap<PartitionId, PartitionMeta>, StoreError> {
        self.call(|conn| async move {
            let mut out: HashMap<PartitionId, PartitionMeta> = HashMap::new();
            let mut rows = conn
                .query(
                    "SELECT partition, promised_epoch, commit_seq, applied_seq, serving_epoch, serving_replicas \
                     FROM meta",
                    (),
                )
                .await?;
            while let Some(row) = rows.next().await? {
                let m = out.entry(partition_from_sql(row.get::<i64>(0)?)?).or_default();
                m.promised = from_sql(row.get::<i64>(1)?, "epoch")?;
                m.commit = from_sql(row.get::<i64>(2)?, "commit")?;
                m.applied = from_sql(row.get::<i64>(3)?, "applied")?;
                let serving_epoch = from_sql(row.get::<i64>(4)?, "serving epoch")?;
                if serving_epoch > 0 {
                    let blob = row.get::<Option<Vec<u8>>>(5)?.unwrap_or_default();
                    m.serving = Some(ReplicaSet { epoch: serving_epoch, replicas: replicas_from_blob(&blob)? });
                }
            }
            let mut shapes: HashMap<PartitionId, (Vec<(Epoch, Seq)>, Seq)> = HashMap::new();
            let mut rows = conn
                .query("SELECT partition, epoch, MIN(seq), MAX(seq) FROM entries GROUP BY partition, epoch", ())
                .await?;
            while let Some(row) = rows.next().await? {
                let shape = shapes.entry(partition_from_sql(row.get::<i64>(0)?)?).or_default();
                let epoch = from_sql(row.get::<i64>(1)?, "epoch")?;
                shape.0.push((epoch, from_sql(row.get::<i64>(2)?, "seq")?));
                shape.1 = shape.1.max(from_sql(row.get::<i64>(3)?, "seq")?);
            }
            for (p, (starts, last)) in shapes {
                out.entry(p).or_default().index = EpochIndex::from_parts(starts, last);
            }
            Ok(out)
        })
        .await
    }

    /// Removes every entry after `truncate_after` (if given), appends `entries` and applies
    /// `meta`, all in one durable transaction.
    pub async fn append(
        &self,
        partition: PartitionId,
        truncate_after: Option<Seq>,
        entries: Vec<Entry>,
        meta: MetaUpdate,
    ) -> Result<(), StoreError> {
        self.call(move |conn| async move {
            transaction(&conn, || async {
                let p = i64::from(partition);
                if let Some(after) = truncate_after {
                    conn.execute("DELETE FROM entries WHERE partition = ?1 AND seq > ?2", (p, to_sql(after))).await?;
                }
                for e in entries {
                    conn.execute(
                        "INSERT OR REPLACE INTO entries (partition, seq, epoch, payload) VALUES (?1, ?2, ?3, ?4)",
                        (p, to_sql(e.seq), to_sql(e.epoch), e.payload),
                    )
                    .await?;
                }
                if let Some(epoch) = meta.promised {
                    promise(&conn, p, epoch).await?;
                }
                if let Some(commit) = meta.commit {
                    set_pointer(&conn, p, "commit_seq", commit).await?;
                }
                Ok(())
            })
            .await
        })
        .await
    }

    pub async fn truncate_after(&self, partition: PartitionId, seq: Seq) -> Result<(), StoreError> {
        self.append(partition, Some(seq), Vec::new(), MetaUpdate::default()).await
    }

    /// Entries from `from` to `to` (inclusive) in order, at most `max_count` of them and no
    /// more than `max_bytes` of payload (but always at least one, so a large entry still moves).
    pub async fn read(
        &self,
        partition: PartitionId,
        from: Seq,
        to: Seq,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        if from > to || max_count == 0 {
            return Ok(Vec::new());
        }
        self.call(move |conn| async move {
            let mut rows = conn
                .query(
                    "SELECT seq, epoch, payload FROM entries WHERE partition = ?1 AND seq >= ?2 AND seq <= ?3 \
                     ORDER BY seq LIMIT ?4",
                    (i64::from(partition), to_sql(from), to_sql(to), to_sql(max_count as u64)),
                )
                .await?;
            let mut out = Vec::new();
            let mut bytes = 0usize;
            while let Some(row) = rows.next().await? {
                let payload = row.get::<Vec<u8>>(2)?;
                if !out.is_empty() && bytes.saturating_add(payload.len()) > max_bytes {
                    break;
                }
                bytes = bytes.saturating_add(payload.len());
                out.push(Entry {
                    seq: from_sql(row.get::<i64>(0)?, "seq")?,
                    epoch: from_sql(row.get::<i64>(1)?, "epoch")?,
                    payload,
                });
            }
            // An undrained statement would keep a read lock on the file.
            drop(rows);
            Ok(out)
        })
        .await
    }

    /// The last entry of a partition's log.
    pub async fn tail(&self, partition: PartitionId) -> Result<Option<LogPos>, StoreError> {
        self.call(move |conn| async move {
            let mut rows = conn
                .query(
                    "SELECT seq, epoch FROM entries WHERE partition = ?1 ORDER BY seq DESC LIMIT 1",
                    [i64::from(partition)],
                )
                .await?;
            let pos = match rows.next().await? {
                Some(row) => Some(LogPos {
                    seq: from_sql(row.get::<i64>(0)?, "seq")?,
                    epoch: from_sql(row.get::<i64>(1)?, "epoch")?,
                }),
                None => None,
            };
            drop(rows);
            Ok(pos)
        })
        .await
    }

    /// Promises `epoch` durably; a lower epoch than the one promised changes nothing.
    pub async fn promise(&self, partition: PartitionId, epoch: Epoch) -> Result<(), StoreError> {
        self.call(move |conn| async move {
            transaction(&conn, || async { promise(&conn, i64::from(partition), epoch).await }).await
        })
        .await
    }

    /// Records `set` as the last serving replica set, durably, unless one of a newer (or the
    /// same) epoch is recorded already.
    pub async fn set_serving(&self, partition: PartitionId, set: ReplicaSet) -> Result<(), StoreError> {
        self.call(move |conn| async move {
            let blob: Vec<u8> = set.replicas.iter().flat_map(|n| n.to_be_bytes()).collect();
            conn.execute(
                "INSERT INTO meta (partition, serving_epoch, serving_replicas) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (partition) DO UPDATE SET serving_epoch = excluded.serving_epoch, \
                 serving_replicas = excluded.serving_replicas WHERE excluded.serving_epoch > meta.serving_epoch",
                (i64::from(partition), to_sql(set.epoch), blob),
            )
            .await?;
            Ok(())
        })
        .await
    }

    pub async fn set_commit(&self, partition: PartitionId, seq: Seq) -> Result<(), StoreError> {
        self.set_lazy(partition, "commit_seq", seq).await
    }

    pub async fn set_applied(&self, partition: PartitionId, seq: Seq) -> Result<(), StoreError> {
        self.set_lazy(partition, "applied_seq", seq).await
    }

    async fn set_lazy(&self, partition: PartitionId, column: &'static str, seq: Seq) -> Result<(), StoreError> {
        self.call(move |conn| async move {
            if !conn.is_autocommit() {
                // In a group commit: it rides on the batch's one fsync anyway.
                return set_pointer(&conn, i64::from(partition), column, seq).await;
            }
            // See the module docs: these pointers ride on the next fsync instead of paying one.
            drain(&conn, "PRAGMA synchronous=NORMAL").await?;
            let r = set_pointer(&conn, i64::from(partition), column, seq).await;
            drain(&conn, "PRAGMA synchronous=FULL").await?;
            r
        })
        .await
    }
}

fn replicas_from_blob(blob: &[u8]) -> Result<Vec<NodeId>, StoreError> {
    if !blob.chunks_exact(8).remainder().is_empty() {
        return Err(StoreError::Corrupt(format!("serving replicas of {} bytes", blob.len())));
    }
    Ok(blob
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_be_bytes(b)
        })
        .collect())
}

/// Brings the schema to [`SCHEMA_VERSION`], one step per version, each in a transaction.
async fn migrate(conn: &libsql::Connection) -> Result<(), StoreError> {
    let mut rows = conn.query("PRAGMA user_version", ()).await?;
    let mut version = match rows.next().await? {
        Some(row) => row.get::<i64>(0)?,
        None => 0,
    };
    while rows.next().await?.is_some() {}
    drop(rows);
    if version > SCHEMA_VERSION {
        return Err(StoreError::Corrupt(format!("schema version {version} is newer than this code's")));
    }
    while version < SCHEMA_VERSION {
        let next = version.max(1) + 1;
        let step = match next {
            2 => MIGRATE_TO_2,
            _ => "",
        };
        transaction(conn, || async {
            conn.execute_batch(step).await?;
            conn.execute(&format!("PRAGMA user_version = {next}"), ()).await?;
            Ok(())
        })
        .await?;
        version = next;
    }
    Ok(())
}

async fn promise(conn: &libsql::Connection, p: i64, epoch: Epoch) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO meta (partition, promised_epoch) VALUES (?1, ?2) ON CONFLICT (partition) \
         DO UPDATE SET promised_epoch = MAX(promised_epoch, excluded.promised_epoch)",
        (p, to_sql(epoch)),
    )
    .await?;
    Ok(())
}

async fn set_pointer(conn: &libsql::Connection, p: i64, column: &str, seq: Seq) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO meta (partition, {column}) VALUES (?1, ?2) ON CONFLICT (partition) \
         DO UPDATE SET {column} = excluded.{column}"
    );
    conn.execute(&sql, (p, to_sql(seq))).await?;
    Ok(())
}

fn run(path: PathBuf, jobs: mpsc::Receiver<Job>, ready: oneshot::Sender<Result<(), StoreError>>) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(StoreError::Spawn(e)));
            return;
        }
    };
    let opened = rt.block_on(async {
        let db = libsql::Builder::new_local(&path).build().await?;
        let conn = db.connect()?;
        // A previous connection to this file (a restart) may still be checkpointing under an
        // exclusive lock: wait for it rather than fail.
        drain(&conn, "PRAGMA busy_timeout=10000").await?;
        drain(&conn, "PRAGMA journal_mode=WAL").await?;
        drain(&conn, "PRAGMA synchronous=FULL").await?;
        conn.execute_batch(SCHEMA).await?;
        migrate(&conn).await?;
        Ok::<_, StoreError>((db, conn))
    });
    let (_db, conn) = match opened {
        Ok(x) => {
            let _ = ready.send(Ok(()));
            x
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    // Group commit: whatever jobs queued while the last batch ran go together in one
    // transaction, one fsync for all of them (each job's own transaction becomes a
    // savepoint), and every caller hears back only after that commit. Under a ring change
    // hundreds of partitions promise, fence and append at once.
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        rt.block_on(async {
            if batch.len() == 1 {
                let reply = batch.pop().map(|job| job(conn.clone()));
                if let Some(reply) = reply {
                    reply.await(None);
                }
                return;
            }
            let began = conn.execute("BEGIN IMMEDIATE", ()).await;
            let mut replies = Vec::with_capacity(batch.len());
            for job in batch {
                replies.push(job(conn.clone()).await);
            }
            let committed = match began {
                Err(e) => Err(e.to_string()),
                Ok(_) => conn.execute("COMMIT", ()).await.map(|_| ()).map_err(|e| e.to_string()),
            };
            if committed.is_err() {
                let _ = conn.execute("ROLLBACK", ()).await;
            }
            let failed = committed.err();
            for reply in replies {
                reply(failed.clone());
            }
        });
    }
}

async fn drain(conn: &libsql::Connection, sql: &str) -> Result<(), StoreError> {
    // PRAGMAs answer with rows, and an undrained statement keeps a lock.
    let mut rows = conn.query(sql, ()).await?;
    while rows.next().await?.is_some() {}
    Ok(())
}

async fn transaction<T, F, Fut>(conn: &libsql::Connection, body: F) -> Result<T, StoreError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    if !conn.is_autocommit() {
        // Inside the store thread's group commit: a savepoint, so that this job's changes
        // are all or nothing while the batch commits together.
        conn.execute("SAVEPOINT replog_job", ()).await?;
        return match body().await {
            Ok(v) => {
                conn.execute("RELEASE replog_job", ()).await?;
                Ok(v)
            }
            Err(e) => {
                if let Err(re) = conn.execute("ROLLBACK TO replog_job", ()).await {
                    tracing::error!(error = %re, "replog: rollback to savepoint failed");
                }
                let _ = conn.execute("RELEASE replog_job", ()).await;
                Err(e)
            }
        };
    }
    conn.execute("BEGIN IMMEDIATE", ()).await?;
    match body().await {
        Ok(v) => {
            if let Err(e) = conn.execute("COMMIT", ()).await {
                let _ = conn.execute("ROLLBACK", ()).await;
                return Err(e.into());
            }
            Ok(v)
        }
        Err(e) => {
            if let Err(re) = conn.execute("ROLLBACK", ()).await {
                tracing::error!(error = %re, "replog: rollback failed");
            }
            Err(e)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    pub(crate) fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("replog-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn e(seq: Seq, epoch: Epoch, p: &[u8]) -> Entry {
        Entry { seq, epoch, payload: p.to_vec() }
    }

    #[tokio::test]
    async fn append_read_truncate_and_meta_survive_reopen() {
        let dir = temp_dir("store");
        let path = dir.join("log.db");
        {
            let s = LogStore::open(&path).await.unwrap();
            s.append(
                3,
                None,
                vec![e(1, 1, b""), e(2, 1, b"a"), e(3, 2, b"bb")],
                MetaUpdate { promised: Some(2), commit: Some(1) },
            )
            .await
            .unwrap();
            s.append(4, None, vec![e(1, 5, b"x")], MetaUpdate::default()).await.unwrap();
            assert_eq!(s.read(3, 1, 10, 10, 1 << 20).await.unwrap().len(), 3);
            assert_eq!(s.read(3, 2, 10, 1, 1 << 20).await.unwrap(), vec![e(2, 1, b"a")]);
            // The byte bound still returns at least one entry.
            assert_eq!(s.read(3, 2, 10, 10, 1).await.unwrap(), vec![e(2, 1, b"a")]);
            assert_eq!(s.tail(3).await.unwrap(), Some(LogPos { epoch: 2, seq: 3 }));
            s.promise(3, 1).await.unwrap();
            s.set_applied(3, 1).await.unwrap();
            s.set_commit(3, 2).await.unwrap();
            s.append(3, Some(1), vec![e(2, 3, b"c")], MetaUpdate { promised: Some(3), commit: None }).await.unwrap();
        }
        let s = LogStore::open(&path).await.unwrap();
        let meta = s.load().await.unwrap();
        let m = &meta[&3];
        assert_eq!((m.promised, m.commit, m.applied), (3, 2, 1));
        assert_eq!(m.index.last_pos(), Some(LogPos { epoch: 3, seq: 2 }));
        assert_eq!(m.index.epoch_at(1), Some(1));
        assert_eq!(meta[&4].index.last_pos(), Some(LogPos { epoch: 5, seq: 1 }));
        s.truncate_after(3, 0).await.unwrap();
        assert_eq!(s.tail(3).await.unwrap(), None);
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_unversioned_store_is_migrated_and_keeps_the_newest_serving_set() {
        let dir = temp_dir("migrate");
        let path = dir.join("log.db");
        {
            // A file as the first version wrote it: no user_version, no serving columns.
            let db = libsql::Builder::new_local(&path).build().await.unwrap();
            let conn = db.connect().unwrap();
            conn.execute_batch(SCHEMA).await.unwrap();
            conn.execute("INSERT INTO meta (partition, promised_epoch, commit_seq) VALUES (3, 4, 2)", ())
                .await
                .unwrap();
        }
        let s = LogStore::open(&path).await.unwrap();
        assert_eq!(s.load().await.unwrap()[&3].serving, None);
        s.set_serving(3, ReplicaSet { epoch: 2, replicas: vec![1, 2, 3] }).await.unwrap();
        s.set_serving(3, ReplicaSet { epoch: 1, replicas: vec![9] }).await.unwrap();
        s.set_serving(5, ReplicaSet { epoch: 7, replicas: vec![u64::MAX] }).await.unwrap();
        drop(s);
        let s = LogStore::open(&path).await.unwrap();
        let meta = s.load().await.unwrap();
        assert_eq!((meta[&3].promised, meta[&3].commit), (4, 2));
        assert_eq!(meta[&3].serving, Some(ReplicaSet { epoch: 2, replicas: vec![1, 2, 3] }));
        assert_eq!(meta[&5].serving, Some(ReplicaSet { epoch: 7, replicas: vec![u64::MAX] }));
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn concurrent_writes_commit_together_and_each_is_all_or_nothing() {
        let dir = temp_dir("group-commit");
        let s = LogStore::open(&dir.join("replog.db")).await.unwrap();
        let writes = (0u16..64).map(|p| {
            let s = s.clone();
            async move { s.append(p, None, vec![e(1, 1, b"x"), e(2, 1, b"y")], MetaUpdate::default()).await }
        });
        for r in futures_util::future::join_all(writes).await {
            r.unwrap();
        }
        // A promise lower than the one held changes nothing, inside a batch or not.
        let promises = (0u16..64).map(|p| {
            let s = s.clone();
            async move {
                s.promise(p, 5).await.unwrap();
                s.promise(p, 3).await
            }
        });
        for r in futures_util::future::join_all(promises).await {
            r.unwrap();
        }
        drop(s);
        let s = LogStore::open(&dir.join("replog.db")).await.unwrap();
        let metas = s.load().await.unwrap();
        for p in 0u16..64 {
            let m = &metas[&p];
            assert_eq!(m.promised, 5, "partition {p}");
            assert_eq!(s.tail(p).await.unwrap(), Some(LogPos { epoch: 1, seq: 2 }));
        }
    }
}
