//! The reader thread: queries run here, on their own connections, so they neither wait
//! behind write batches nor block tokio workers. WAL lets them read committed data while
//! the writer commits.
//!
//! Before its first read of a file, the reader asks the writer to create and migrate it
//! ([`WriteCmd::Ensure`]), so it never sees a file without its schema.

use std::collections::HashSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::pin::Pin;

use libsql::Connection;
use tokio::sync::{mpsc, oneshot};

use super::pool::{Pool, Role};
use super::writer::{self, WriteCmd};
use super::Sql;
use crate::MamError;

/// A job's future runs on the reader thread only, so it need not be `Send`.
type LocalFuture = Pin<Box<dyn Future<Output = ()>>>;
type Job = Box<dyn FnOnce(Result<Connection, MamError>) -> LocalFuture + Send>;

/// Read requests waiting beyond this make callers wait.
const QUEUE_DEPTH: usize = 1024;

struct ReadJob {
    file: String,
    job: Job,
}

/// Handle to the reader thread.
#[derive(Clone)]
pub(crate) struct Reader {
    jobs: mpsc::Sender<ReadJob>,
}

impl Reader {
    /// Starts the reader thread; `writer` prepares files on its behalf.
    pub(crate) async fn start(dir: PathBuf, writer: mpsc::Sender<WriteCmd>) -> Result<Reader, MamError> {
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        let (ready_tx, ready_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("waddle-mam-reader".into())
            .spawn(move || run(dir, writer, queue, ready_tx))
            .map_err(|e| MamError::Database(format!("cannot start the archive reader thread: {e}")))?;
        ready_rx.await.map_err(|_| MamError::Closed)??;
        Ok(Reader { jobs })
    }

    /// Runs `f` with a connection to `file` on the reader thread.
    pub(crate) async fn call<T, F, Fut>(&self, file: String, f: F) -> Result<T, MamError>
    where
        T: Send + 'static,
        F: FnOnce(Connection) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, MamError>> + 'static,
    {
        let (reply_tx, reply_rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            Box::pin(async move {
                let outcome = match conn {
                    Ok(conn) => f(conn).await,
                    Err(e) => Err(e),
                };
                // The caller may have gone away: nothing to do then.
                let _ = reply_tx.send(outcome);
            })
        });
        self.jobs.send(ReadJob { file, job }).await.map_err(|_| MamError::Closed)?;
        reply_rx.await.map_err(|_| MamError::Closed)?
    }
}

fn run(
    dir: PathBuf,
    writer: mpsc::Sender<WriteCmd>,
    mut queue: mpsc::Receiver<ReadJob>,
    ready: oneshot::Sender<Result<(), MamError>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(MamError::Database(format!("cannot start the archive reader runtime: {e}"))));
            return;
        }
    };
    if ready.send(Ok(())).is_err() {
        return;
    }
    let mut pool = Pool::new(dir, Role::Reader);
    let mut prepared: HashSet<String> = HashSet::new();
    while let Some(ReadJob { file, job }) = queue.blocking_recv() {
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            rt.block_on(async {
                let conn = connect(&mut pool, &mut prepared, &writer, &file).await;
                job(conn).await;
            })
        }));
        if outcome.is_err() {
            tracing::error!("mam: an archive read panicked");
            rt.block_on(pool.rollback_all());
        }
    }
    tracing::debug!("mam: reader thread stopped");
}

async fn connect(
    pool: &mut Pool,
    prepared: &mut HashSet<String>,
    writer: &mpsc::Sender<WriteCmd>,
    file: &str,
) -> Result<Connection, MamError> {
    if !prepared.contains(file) {
        let (done, ack) = oneshot::channel();
        writer::enqueue(writer, WriteCmd::Ensure { file: file.to_owned(), done }).await?;
        ack.await.map_err(|_| MamError::Closed)??;
        prepared.insert(file.to_owned());
    }
    let conn = pool.get(file).await?;
    // A job that failed mid-transaction must not leave the next one inside it.
    Sql::rollback(&conn).await;
    Ok(conn)
}
