//! Lazily opened connections, one per archive file, owned by one thread.
//!
//! A deployment can have many waddles, hence many files: at most [`MAX_OPEN`] stay open
//! per thread and the least recently used one is closed to make room.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use libsql::{Connection, Database};

use super::{schema, Sql};
use crate::MamError;

/// Open files per thread.
const MAX_OPEN: usize = 64;

/// How long SQLite waits for a lock held by another connection before `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What the owning thread does with its connections.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Creates files, enables WAL, runs the migrations, writes with `synchronous=FULL`.
    Writer,
    /// Reads files the writer has already prepared (`query_only`).
    Reader,
}

struct Slot {
    // Keeps the database open as long as the connection is pooled.
    _db: Database,
    conn: Connection,
    used: u64,
}

pub(crate) struct Pool {
    dir: PathBuf,
    role: Role,
    open: HashMap<String, Slot>,
    tick: u64,
}

impl Pool {
    pub(crate) fn new(dir: PathBuf, role: Role) -> Pool {
        Pool { dir, role, open: HashMap::new(), tick: 0 }
    }

    /// The connection to `file` (a name inside the archive directory), opened on first use.
    pub(crate) async fn get(&mut self, file: &str) -> Result<Connection, MamError> {
        self.tick += 1;
        if let Some(slot) = self.open.get_mut(file) {
            slot.used = self.tick;
            return Ok(slot.conn.clone());
        }
        if self.open.len() >= MAX_OPEN {
            if let Some(oldest) = self.open.iter().min_by_key(|(_, s)| s.used).map(|(k, _)| k.clone()) {
                self.open.remove(&oldest);
            }
        }
        let (db, conn) = self.connect(file).await?;
        self.open.insert(file.to_owned(), Slot { _db: db, conn: conn.clone(), used: self.tick });
        Ok(conn)
    }

    async fn connect(&self, file: &str) -> Result<(Database, Connection), MamError> {
        let path = self.dir.join(file);
        let db = libsql::Builder::new_local(&path).build().await?;
        let conn = db.connect()?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        Sql::query_all(&conn, "PRAGMA foreign_keys = ON", (), |_| Ok(())).await?;
        match self.role {
            Role::Writer => {
                let mode = Sql::query_opt(&conn, "PRAGMA journal_mode = WAL", (), |r| Ok(r.get::<String>(0)?)).await?;
                if !mode.is_some_and(|m| m.eq_ignore_ascii_case("wal")) {
                    tracing::warn!(file, "mam: WAL mode is not available");
                }
                // FULL: a commit is on disk before the appender is told it is durable.
                Sql::query_all(&conn, "PRAGMA synchronous = FULL", (), |_| Ok(())).await?;
                // Batches touch many index pages: a page cache that holds them avoids
                // spilling mid-transaction, and rarer checkpoints copy each hot page back
                // once instead of many times (profiled: both were a third of the writer).
                Sql::query_all(&conn, "PRAGMA cache_size = -32768", (), |_| Ok(())).await?;
                Sql::query_all(&conn, "PRAGMA wal_autocheckpoint = 8192", (), |_| Ok(())).await?;
                schema::migrate(&conn).await?;
                tracing::debug!(file, "mam: opened archive file for writing");
            }
            Role::Reader => {
                let found = Sql::current_version(&conn).await?;
                if found > schema::SCHEMA_VERSION {
                    return Err(MamError::SchemaTooNew { found, supported: schema::SCHEMA_VERSION });
                }
                Sql::query_all(&conn, "PRAGMA query_only = ON", (), |_| Ok(())).await?;
            }
        }
        Ok((db, conn))
    }

    /// Rolls back whatever transaction a panicking job left open.
    pub(crate) async fn rollback_all(&self) {
        for slot in self.open.values() {
            Sql::rollback(&slot.conn).await;
        }
    }
}
