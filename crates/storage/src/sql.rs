//! Small helpers over `libsql::Connection` that keep the "drain every `Rows`" rule in one
//! place: every query result is read to the end (or dropped) before the helper returns.

use std::future::Future;

use libsql::params::IntoParams;
use libsql::{Connection, Row};

use crate::StorageError;

/// Runs `sql` and maps every row, draining the result set.
pub(crate) async fn query_all<T>(
    conn: &Connection,
    sql: &str,
    params: impl IntoParams,
    map: impl Fn(&Row) -> Result<T, StorageError>,
) -> Result<Vec<T>, StorageError> {
    let mut rows = conn.query(sql, params).await?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().await? {
        out.push(map(&row)?);
    }
    Ok(out)
}

/// Runs `sql` and maps its first row, if any (the result set is still drained).
pub(crate) async fn query_opt<T>(
    conn: &Connection,
    sql: &str,
    params: impl IntoParams,
    map: impl Fn(&Row) -> Result<T, StorageError>,
) -> Result<Option<T>, StorageError> {
    Ok(query_all(conn, sql, params, map).await?.into_iter().next())
}

/// Runs `sql` expecting exactly one row with one integer column (`COUNT(*)`, `MAX(..)`).
pub(crate) async fn query_i64(conn: &Connection, sql: &str, params: impl IntoParams) -> Result<i64, StorageError> {
    query_opt(conn, sql, params, |r| Ok(r.get::<i64>(0)?))
        .await?
        .ok_or_else(|| StorageError::Database(format!("no row returned by: {sql}")))
}

/// How a transaction is opened.
#[derive(Clone, Copy)]
pub(crate) enum Tx {
    /// `BEGIN` (deferred): a consistent snapshot for multi-statement reads.
    Read,
    /// `BEGIN IMMEDIATE`: takes the write lock up front, so a read-then-write body cannot
    /// fail halfway with `SQLITE_BUSY` on lock upgrade.
    Write,
}

/// Runs `body` inside a transaction on `conn`: committed when it returns `Ok`, rolled back
/// when it returns `Err` (or when the commit itself fails).
///
/// `body` is a future borrowing `conn`; futures are lazy, so nothing in it runs before
/// `BEGIN` has been executed here.
pub(crate) async fn in_tx<T>(
    conn: &Connection,
    kind: Tx,
    body: impl Future<Output = Result<T, StorageError>>,
) -> Result<T, StorageError> {
    let begin = match kind {
        Tx::Read => "BEGIN",
        Tx::Write => "BEGIN IMMEDIATE",
    };
    conn.execute(begin, ()).await?;
    match body.await {
        Ok(value) => match conn.execute("COMMIT", ()).await {
            Ok(_) => Ok(value),
            Err(e) => {
                rollback(conn).await;
                Err(e.into())
            }
        },
        Err(e) => {
            rollback(conn).await;
            Err(e)
        }
    }
}

/// Rolls back an open transaction, if any; failures are logged (the original error wins).
pub(crate) async fn rollback(conn: &Connection) {
    if !conn.is_autocommit() {
        if let Err(e) = conn.execute("ROLLBACK", ()).await {
            tracing::error!(error = %e, "storage: rollback failed");
        }
    }
}

/// Converts a stored integer to `u32`, rejecting out-of-range values.
pub(crate) fn to_u32(v: i64, what: &str) -> Result<u32, StorageError> {
    u32::try_from(v).map_err(|_| StorageError::Invalid(format!("{what} out of range: {v}")))
}

/// Converts a stored integer to `u64`, rejecting negative values.
pub(crate) fn to_u64(v: i64, what: &str) -> Result<u64, StorageError> {
    u64::try_from(v).map_err(|_| StorageError::Invalid(format!("{what} out of range: {v}")))
}
