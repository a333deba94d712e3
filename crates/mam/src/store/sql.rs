//! Small helpers over `libsql::Connection` that keep the "drain every `Rows`" rule in one
//! place: an unconsumed `Rows` holds a lock, so every result set is read to the end.

use std::future::Future;

use libsql::params::IntoParams;
use libsql::{Connection, Row};

use crate::MamError;

/// Runs `sql` and maps every row, draining the result set.
pub(crate) async fn query_all<T>(
    conn: &Connection,
    sql: &str,
    params: impl IntoParams,
    map: impl Fn(&Row) -> Result<T, MamError>,
) -> Result<Vec<T>, MamError> {
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
    map: impl Fn(&Row) -> Result<T, MamError>,
) -> Result<Option<T>, MamError> {
    Ok(query_all(conn, sql, params, map).await?.into_iter().next())
}

/// Runs `sql` expecting one row with one integer column (`COUNT(*)`, `MAX(..)`).
pub(crate) async fn query_i64(conn: &Connection, sql: &str, params: impl IntoParams) -> Result<i64, MamError> {
    query_opt(conn, sql, params, |r| Ok(r.get::<i64>(0)?))
        .await?
        .ok_or_else(|| MamError::Database(format!("no row returned by: {sql}")))
}

/// How a transaction is opened.
#[derive(Clone, Copy)]
pub(crate) enum Tx {
    /// `BEGIN` (deferred): one consistent snapshot for multi-statement reads.
    Read,
    /// `BEGIN IMMEDIATE`: takes the write lock up front.
    Write,
}

/// Runs `body` inside a transaction: committed when it returns `Ok`, rolled back when it
/// returns `Err` or when the commit fails. `body` is lazy, so it starts after `BEGIN`.
pub(crate) async fn in_tx<T>(
    conn: &Connection,
    kind: Tx,
    body: impl Future<Output = Result<T, MamError>>,
) -> Result<T, MamError> {
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
            tracing::error!(error = %e, "mam: rollback failed");
        }
    }
}

/// Converts a stored count to `u64`.
pub(crate) fn to_u64(v: i64) -> Result<u64, MamError> {
    u64::try_from(v).map_err(|_| MamError::Database(format!("negative count: {v}")))
}
