//! Small helpers over `libsql::Connection`, shared by every crate that keeps a libSQL
//! database (this one and `waddle-mam`'s archive files). All of them are associated
//! functions of [`Sql<E>`](Sql):
//!
//! - row helpers ([`Sql::query_all`], [`Sql::query_opt`], [`Sql::query_i64`]) keep the
//!   "drain every `Rows`" rule in one place: an unconsumed `Rows` holds a lock, so every
//!   result set is read to the end (or dropped) before the helper returns;
//! - [`Sql::in_tx`] runs a body inside a transaction, committed on `Ok` and rolled back on
//!   `Err`; [`Sql::rollback`] cleans up after a job that failed or panicked mid-transaction;
//! - value helpers ([`Sql::to_u32`], [`Sql::to_u64`]) convert stored integers, refusing
//!   values out of range;
//! - [`Sql::migrate`] applies numbered, append-only [`Migration`]s, each at most once and
//!   in a transaction together with its row in the `schema_version` table, so a crash
//!   mid-migration leaves the database at the previous version.
//!
//! `E` is the caller's error type (see [`DbError`]): the helpers return errors of the
//! crate that calls them, built with `From<libsql::Error>` and `From<`[`Error`]`>`. A
//! crate names its instantiation once (`type Sql = waddle_storage::db::Sql<MyError>;`)
//! and calls `Sql::query_all(..)`, `Sql::in_tx(..)`, ..., so `?` never needs a type
//! annotation.

use std::future::Future;
use std::marker::PhantomData;

use libsql::params::IntoParams;
use libsql::{Connection, Row};

/// Failures the helpers detect themselves (libSQL's own errors are passed through
/// `From<libsql::Error>`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// [`Sql::query_i64`] got no row.
    #[error("no row returned by: {sql}")]
    NoRow {
        /// The statement that returned nothing.
        sql: String,
    },
    /// [`Sql::to_u32`] or [`Sql::to_u64`] got a value the target type cannot hold.
    #[error("{what} out of range: {value}")]
    OutOfRange {
        /// What the value is (for the message).
        what: &'static str,
        /// The stored value.
        value: i64,
    },
    /// [`Sql::migrate`] found a database written by a newer build.
    #[error("database schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew {
        /// Highest migration recorded in the database.
        found: i64,
        /// Highest migration this build knows.
        supported: i64,
    },
}

/// An error type the helpers can return: built from libSQL errors and from [`Error`].
pub trait DbError: From<libsql::Error> + From<Error> {
    /// Reports a `ROLLBACK` that failed (the helpers never return that error: the one that
    /// caused the rollback wins). Implementations log it.
    fn rollback_failed(error: &libsql::Error);
}

/// How a transaction is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tx {
    /// `BEGIN` (deferred): a consistent snapshot for multi-statement reads.
    Read,
    /// `BEGIN IMMEDIATE`: takes the write lock up front, so a read-then-write body cannot
    /// fail halfway with `SQLITE_BUSY` on lock upgrade.
    Write,
}

/// One numbered schema migration: an SQL batch applied at most once.
///
/// Migrations are append-only: never edit a shipped one, add the next number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Migration {
    /// The schema version this migration brings the database to (1, 2, ...).
    pub version: i64,
    /// The statements to run (`execute_batch`).
    pub sql: &'static str,
}

/// The helpers, returning errors of type `E`. Never constructed: it only carries `E`.
pub struct Sql<E>(PhantomData<fn() -> E>);

impl<E: DbError> Sql<E> {
    /// `Ok` if a statement changed at least one row, `none_changed` otherwise (an
    /// `INSERT ... ON CONFLICT DO NOTHING` that hit a conflict, an update or delete of a
    /// missing row).
    pub fn changed(rows: u64, none_changed: E) -> Result<(), E> {
        if rows == 0 {
            Err(none_changed)
        } else {
            Ok(())
        }
    }

    /// Runs `sql` and maps every row, draining the result set.
    pub async fn query_all<T>(
        conn: &Connection,
        sql: &str,
        params: impl IntoParams,
        map: impl Fn(&Row) -> Result<T, E>,
    ) -> Result<Vec<T>, E> {
        let mut rows = conn.query(sql, params).await?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await? {
            out.push(map(&row)?);
        }
        Ok(out)
    }

    /// Runs `sql` and maps its first row, if any (the result set is still drained).
    pub async fn query_opt<T>(
        conn: &Connection,
        sql: &str,
        params: impl IntoParams,
        map: impl Fn(&Row) -> Result<T, E>,
    ) -> Result<Option<T>, E> {
        Ok(Self::query_all(conn, sql, params, map).await?.into_iter().next())
    }

    /// Runs `sql` expecting one row with one integer column (`COUNT(*)`, `MAX(..)`);
    /// [`Error::NoRow`] if it returns none.
    pub async fn query_i64(conn: &Connection, sql: &str, params: impl IntoParams) -> Result<i64, E> {
        Self::query_opt(conn, sql, params, |r| Ok(r.get::<i64>(0)?))
            .await?
            .ok_or_else(|| Error::NoRow { sql: sql.to_owned() }.into())
    }

    /// Runs `body` inside a transaction on `conn`: committed when it returns `Ok`, rolled
    /// back when it returns `Err` (or when the commit itself fails).
    ///
    /// `body` is a future borrowing `conn`; futures are lazy, so nothing in it runs before
    /// `BEGIN` has been executed here.
    pub async fn in_tx<T>(conn: &Connection, kind: Tx, body: impl Future<Output = Result<T, E>>) -> Result<T, E> {
        let begin = match kind {
            Tx::Read => "BEGIN",
            Tx::Write => "BEGIN IMMEDIATE",
        };
        conn.execute(begin, ()).await?;
        match body.await {
            Ok(value) => match conn.execute("COMMIT", ()).await {
                Ok(_) => Ok(value),
                Err(e) => {
                    Self::rollback(conn).await;
                    Err(e.into())
                }
            },
            Err(e) => {
                Self::rollback(conn).await;
                Err(e)
            }
        }
    }

    /// Rolls back an open transaction, if any; a failure goes to
    /// [`DbError::rollback_failed`] (the original error wins).
    pub async fn rollback(conn: &Connection) {
        if !conn.is_autocommit() {
            if let Err(e) = conn.execute("ROLLBACK", ()).await {
                E::rollback_failed(&e);
            }
        }
    }

    /// Converts a stored integer to `u32`; [`Error::OutOfRange`] if it does not fit.
    pub fn to_u32(value: i64, what: &'static str) -> Result<u32, E> {
        u32::try_from(value).map_err(|_| Error::OutOfRange { what, value }.into())
    }

    /// Converts a stored integer to `u64`; [`Error::OutOfRange`] if it is negative.
    pub fn to_u64(value: i64, what: &'static str) -> Result<u64, E> {
        u64::try_from(value).map_err(|_| Error::OutOfRange { what, value }.into())
    }

    /// Highest migration recorded in `schema_version` (0 for a fresh database). The table
    /// must exist (it does once [`Sql::migrate`] has run).
    pub async fn current_version(conn: &Connection) -> Result<i64, E> {
        Self::query_i64(conn, "SELECT COALESCE(MAX(version), 0) FROM schema_version", ()).await
    }

    /// Brings the schema of `conn` up to the last of `migrations` (which must be in
    /// ascending `version` order), creating the `schema_version` table if needed.
    ///
    /// Each pending migration runs in its own `BEGIN IMMEDIATE` transaction together with
    /// its `schema_version (version, applied_at)` row, after re-reading the version under
    /// the write lock (another process may have migrated meanwhile); `on_applied` is
    /// called with the version of each migration this call applied, once it is committed.
    /// A database recording a version newer than the last migration is refused with
    /// [`Error::SchemaTooNew`] before anything is applied.
    pub async fn migrate(
        conn: &Connection,
        migrations: &[Migration],
        mut on_applied: impl FnMut(i64),
    ) -> Result<(), E> {
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (
            version    INTEGER NOT NULL PRIMARY KEY,
            applied_at INTEGER NOT NULL
        )",
            (),
        )
        .await?;
        let found = Self::current_version(conn).await?;
        let supported = migrations.last().map_or(0, |m| m.version);
        if found > supported {
            return Err(Error::SchemaTooNew { found, supported }.into());
        }
        for &Migration { version, sql: batch } in migrations.iter().filter(|m| m.version > found) {
            let applied = Self::in_tx(conn, Tx::Write, async {
                // Re-read under the write lock: another process may have migrated meanwhile.
                if Self::current_version(conn).await? >= version {
                    return Ok(false);
                }
                drop(conn.execute_batch(batch).await?);
                conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (?1, ?2)", (version, unix_now()))
                    .await?;
                Ok(true)
            })
            .await?;
            if applied {
                on_applied(version);
            }
        }
        Ok(())
    }
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
