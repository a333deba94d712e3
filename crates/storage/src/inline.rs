//! Point reads on the caller's thread.
//!
//! Sending a job to the storage thread costs two cross-thread wake-ups and two context
//! switches; for a lookup by primary key that is several times the query itself (token
//! logins: about 50 of some 220 us of server CPU per login went to one token lookup, the
//! query a fifth of it). The lookups on the login and routing paths therefore run where
//! they are called, on a connection of their own, and finish without yielding.
//!
//! This is safe to do on an async worker only because it cannot wait:
//! - the database is in WAL mode, where a reader never waits for the writer and the
//!   writer never waits for readers;
//! - the connections have no busy timeout, so the rare lock a reader does meet (WAL
//!   recovery after a crash, a checkpoint resetting the log) fails at once, and the read
//!   is then retried on the storage thread, which waits it out;
//! - they are `query_only`, so nothing written can ever go around the storage thread's
//!   serialization of writes.
//!
//! A private in-memory database (`:memory:`) exists only inside the storage thread's own
//! connection, so there every read goes to the storage thread.

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use libsql::{Connection, Database};

use crate::{Sql, StorageError};

/// Most connections kept for inline reads: one per thread that can read at once is
/// enough, since each read finishes before its thread does anything else.
fn max_connections() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 16)
}

pub(crate) struct InlineReads {
    /// `None` for an in-memory database.
    db: Option<Database>,
    idle: Mutex<Vec<Connection>>,
    opened: AtomicUsize,
    /// Reads answered inline (tests and metrics).
    served: AtomicU64,
}

impl InlineReads {
    /// Prepares inline reads of the database at `path`, which the storage thread has
    /// already created and migrated. Connections are opened on first use.
    pub(crate) async fn new(path: &Path) -> Result<InlineReads, StorageError> {
        let db =
            if path == Path::new(":memory:") { None } else { Some(libsql::Builder::new_local(path).build().await?) };
        Ok(InlineReads { db, idle: Mutex::new(Vec::new()), opened: AtomicUsize::new(0), served: AtomicU64::new(0) })
    }

    #[cfg(test)]
    pub(crate) fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Runs `read` on an inline connection. `None` when there is none to use (in-memory
    /// database, every connection in use, opening one failed) or the read failed in the
    /// database (a lock, most likely): the caller then sends it to the storage thread.
    pub(crate) async fn run<T, Fut>(&self, read: impl FnOnce(Connection) -> Fut) -> Option<Result<T, StorageError>>
    where
        Fut: std::future::Future<Output = Result<T, StorageError>>,
    {
        let lease = Lease { conn: Some(self.take().await?), reads: self };
        let outcome = read(lease.connection()?).await;
        drop(lease);
        match outcome {
            Err(StorageError::Database(e)) => {
                tracing::debug!(error = %e, "storage: inline read failed, retrying on the storage thread");
                None
            }
            outcome => {
                self.served.fetch_add(1, Ordering::Relaxed);
                Some(outcome)
            }
        }
    }

    async fn take(&self) -> Option<Connection> {
        let db = self.db.as_ref()?;
        if let Some(conn) = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop() {
            return Some(conn);
        }
        if self.opened.fetch_add(1, Ordering::Relaxed) >= max_connections() {
            self.opened.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        match connect(db).await {
            Ok(conn) => Some(conn),
            Err(e) => {
                self.opened.fetch_sub(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "storage: cannot open a connection for inline reads");
                None
            }
        }
    }
}

/// Gives the connection back however the read ends (a panic included).
struct Lease<'a> {
    conn: Option<Connection>,
    reads: &'a InlineReads,
}

impl Lease<'_> {
    fn connection(&self) -> Option<Connection> {
        self.conn.clone()
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.reads.idle.lock().unwrap_or_else(PoisonError::into_inner).push(conn);
        }
    }
}

async fn connect(db: &Database) -> Result<Connection, StorageError> {
    let conn = db.connect()?;
    conn.busy_timeout(std::time::Duration::ZERO)?;
    Sql::query_all(&conn, "PRAGMA query_only = ON", (), |_| Ok(())).await?;
    Ok(conn)
}
