//! A libSQL connection owned by one dedicated thread.
//!
//! libSQL's local calls are `async fn`s that do blocking SQLite work (including the fsync of a
//! commit). Run on a tokio worker they would stall every task scheduled there, so each
//! database gets its own OS thread with a current-thread runtime that drives those futures,
//! and callers send it jobs over a channel. One thread also serializes every write, which is
//! exactly what openraft requires of log I/O ("all write-IO must be serialized").

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::mpsc;

use tokio::sync::oneshot;

/// Why a database call failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("libsql: {0}")]
    Sql(#[from] libsql::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the database thread has stopped")]
    Closed,
    #[error("could not start the database thread: {0}")]
    Spawn(std::io::Error),
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

type JobFuture = Pin<Box<dyn Future<Output = ()>>>;
type Job = Box<dyn FnOnce(libsql::Connection) -> JobFuture + Send>;

/// A handle to the database thread. Cloning shares the thread; it ends when the last handle
/// is dropped.
#[derive(Clone)]
pub(crate) struct Db {
    jobs: mpsc::Sender<Job>,
}

impl Db {
    /// Opens (creating if needed) the database at `path`, in WAL mode with `synchronous=FULL`
    /// so that a returned commit is on disk, and runs `schema` once.
    pub(crate) async fn open(path: &Path, schema: &'static str) -> Result<Db, DbError> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let path: PathBuf = path.to_owned();
        let name = format!("control-db:{}", path.file_name().and_then(|n| n.to_str()).unwrap_or("db"));
        std::thread::Builder::new()
            .name(name)
            .spawn(move || run(path, schema, rx, ready_tx))
            .map_err(DbError::Spawn)?;
        ready_rx.await.map_err(|_| DbError::Closed)??;
        Ok(Db { jobs })
    }

    /// Runs `f` on the database thread and returns its result. Jobs run one at a time in the
    /// order they were sent.
    pub(crate) async fn call<T, F, Fut>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(libsql::Connection) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, DbError>> + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.send(move |conn| async move {
            // The caller may have given up (dropped); nothing to do then.
            let _ = tx.send(f(conn).await);
        })?;
        rx.await.map_err(|_| DbError::Closed)?
    }

    /// Queues `f` without waiting for it. Later jobs (from any clone) run after it.
    pub(crate) fn send<F, Fut>(&self, f: F) -> Result<(), DbError>
    where
        F: FnOnce(libsql::Connection) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let job: Job = Box::new(move |conn| Box::pin(f(conn)));
        self.jobs.send(job).map_err(|_| DbError::Closed)
    }
}

fn run(path: PathBuf, schema: &'static str, jobs: mpsc::Receiver<Job>, ready: oneshot::Sender<Result<(), DbError>>) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(DbError::Spawn(e)));
            return;
        }
    };
    let opened = rt.block_on(async {
        let db = libsql::Builder::new_local(&path).build().await?;
        let conn = db.connect()?;
        // PRAGMAs answer with rows; an undrained `Rows` keeps a lock, so read them all.
        // A previous connection to this file (a node just shut down and reopened) may still
        // be closing, which checkpoints the WAL under an exclusive lock: wait for it rather
        // than fail with "database is locked".
        drain(&conn, "PRAGMA busy_timeout=10000").await?;
        drain(&conn, "PRAGMA journal_mode=WAL").await?;
        drain(&conn, "PRAGMA synchronous=FULL").await?;
        conn.execute_batch(schema).await?;
        Ok::<_, DbError>((db, conn))
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
    while let Ok(job) = jobs.recv() {
        rt.block_on(job(conn.clone()));
    }
}

async fn drain(conn: &libsql::Connection, sql: &str) -> Result<(), DbError> {
    let mut rows = conn.query(sql, ()).await?;
    while rows.next().await?.is_some() {}
    Ok(())
}

/// Runs `body` inside `BEGIN IMMEDIATE` / `COMMIT`, rolling back if it fails, so a failed job
/// never leaves the connection inside an open transaction.
pub(crate) async fn transaction<T, F, Fut>(conn: &libsql::Connection, body: F) -> Result<T, DbError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, DbError>>,
{
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
                tracing::error!(error = %re, "control plane: rollback failed");
            }
            Err(e)
        }
    }
}
