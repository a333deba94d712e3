//! The error type of every storage operation.

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The row being created already exists (duplicate username, duplicate token hash).
    #[error("already exists")]
    AlreadyExists,
    /// The account (or row) the operation needs does not exist.
    #[error("not found")]
    NotFound,
    /// The caller passed, or the database holds, a value this crate refuses (for example a
    /// roster subscription outside `none|to|from|both`, or an empty username).
    #[error("invalid data: {0}")]
    Invalid(String),
    /// libSQL reported an error (I/O, corruption, constraint, SQL).
    #[error("database error: {0}")]
    Database(String),
    /// The database was written by a newer build: refusing to run against it.
    #[error("database schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew {
        /// Highest migration recorded in the database.
        found: i64,
        /// Highest migration this build knows.
        supported: i64,
    },
    /// The storage thread is gone (the store was shut down or a job could not be delivered).
    #[error("the storage thread has stopped")]
    Closed,
    /// The data is not available here right now (a cluster partition still recovering,
    /// or a write that could not be made durable on a majority of its replicas); the
    /// caller may try again.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl From<libsql::Error> for StorageError {
    fn from(e: libsql::Error) -> Self {
        StorageError::Database(e.to_string())
    }
}

impl From<crate::db::Error> for StorageError {
    fn from(e: crate::db::Error) -> Self {
        match e {
            crate::db::Error::NoRow { .. } => StorageError::Database(e.to_string()),
            crate::db::Error::OutOfRange { .. } => StorageError::Invalid(e.to_string()),
            crate::db::Error::SchemaTooNew { found, supported } => StorageError::SchemaTooNew { found, supported },
        }
    }
}

impl crate::db::DbError for StorageError {
    fn rollback_failed(error: &libsql::Error) {
        tracing::error!(error = %error, "storage: rollback failed");
    }
}
