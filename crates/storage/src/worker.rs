//! The dedicated database thread.
//!
//! libSQL's local calls are `async fn`s that block on SQLite. They must not run on tokio
//! worker threads, so one OS thread owns the only `libsql::Connection` and executes jobs
//! sent over a bounded channel, one at a time, each driven to completion on a private
//! current-thread runtime. Callers await the answer on a oneshot channel. Serializing all
//! work on one connection also means no two jobs ever contend for SQLite locks.
//!
//! The exception is [`Worker::read`]: point lookups on the login and routing paths run
//! on the caller's thread (see [`crate::inline`] for why that cannot block), falling back
//! to the storage thread.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use libsql::{Connection, Database};
use tokio::sync::{mpsc, oneshot};

use crate::inline::InlineReads;
use crate::{schema, Sql, StorageError};

/// A job's future: it runs on the storage thread only, so it need not be `Send`.
type LocalFuture = Pin<Box<dyn Future<Output = ()>>>;
type Job = Box<dyn FnOnce(Connection) -> LocalFuture + Send>;

/// Jobs waiting beyond this make callers wait (back-pressure instead of unbounded memory).
const QUEUE_DEPTH: usize = 1024;

/// How long SQLite waits for a lock held by another connection (another process, a backup
/// tool) before failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Cheap, cloneable handle to the storage thread. The thread exits (closing the database)
/// once every handle is dropped and the queued jobs are done.
#[derive(Clone)]
pub(crate) struct Worker {
    jobs: mpsc::Sender<Job>,
    inline: Arc<InlineReads>,
}

impl Worker {
    /// Starts the thread, opens the database and runs the migrations; returns once the
    /// database is ready (or with the error that prevented it).
    pub(crate) async fn start(path: &Path) -> Result<Worker, StorageError> {
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        let (ready_tx, ready_rx) = oneshot::channel();
        let thread_path = path.to_path_buf();
        std::thread::Builder::new()
            .name("waddle-storage".into())
            .spawn(move || run(thread_path, queue, ready_tx))
            .map_err(|e| StorageError::Database(format!("cannot start the storage thread: {e}")))?;
        ready_rx.await.map_err(|_| StorageError::Closed)??;
        let inline = Arc::new(InlineReads::new(path).await?);
        Ok(Worker { jobs, inline })
    }

    /// Runs the read-only `f` on the caller's thread when it can (see
    /// [`crate::inline`]), on the storage thread otherwise. `f` must not write: its
    /// inline connection is `query_only`.
    pub(crate) async fn read<T, F, Fut>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: Fn(Connection) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StorageError>> + Send + 'static,
    {
        if let Some(outcome) = self.inline.run(&f).await {
            return outcome;
        }
        self.call(f).await
    }

    /// Reads [`Worker::read`] answered on the caller's thread.
    #[cfg(test)]
    pub(crate) fn inline_reads(&self) -> u64 {
        self.inline.served()
    }

    /// Runs `f` with the connection on the storage thread and returns its result.
    pub(crate) async fn call<T, F, Fut>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(Connection) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StorageError>> + 'static,
    {
        let (reply_tx, reply_rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            Box::pin(async move {
                // The caller may have gone away (cancelled request): nothing to do then.
                let _ = reply_tx.send(f(conn).await);
            })
        });
        self.jobs.send(job).await.map_err(|_| StorageError::Closed)?;
        reply_rx.await.map_err(|_| StorageError::Closed)?
    }
}

/// Body of the storage thread.
fn run(path: PathBuf, mut queue: mpsc::Receiver<Job>, ready: oneshot::Sender<Result<(), StorageError>>) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(StorageError::Database(format!("cannot start the storage runtime: {e}"))));
            return;
        }
    };
    let (db, conn) = match rt.block_on(open(&path)) {
        Ok(opened) => opened,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    if ready.send(Ok(())).is_err() {
        return;
    }
    while let Some(job) = queue.blocking_recv() {
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| rt.block_on(job(conn.clone()))));
        if outcome.is_err() {
            // The caller sees `Closed` (its reply sender was dropped). Never leave a
            // half-done transaction open for the next job.
            tracing::error!("storage: a database job panicked");
            rt.block_on(Sql::rollback(&conn));
        }
    }
    drop(conn);
    drop(db);
    tracing::debug!("storage: thread stopped");
}

/// Opens the database, sets the connection up and migrates the schema.
async fn open(path: &Path) -> Result<(Database, Connection), StorageError> {
    let db = libsql::Builder::new_local(path).build().await?;
    let conn = db.connect()?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode = Sql::query_opt(&conn, "PRAGMA journal_mode=WAL", (), |r| Ok(r.get::<String>(0)?)).await?;
    let mode = mode.unwrap_or_default();
    if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
        tracing::warn!(journal_mode = %mode, "storage: WAL mode is not available");
    }
    // FULL: a commit is on disk before the caller is told it succeeded.
    Sql::query_all(&conn, "PRAGMA synchronous=FULL", (), |_| Ok(())).await?;
    schema::migrate(&conn).await?;
    Ok((db, conn))
}
