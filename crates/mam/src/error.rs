//! [`MamError`]: why a query could not be answered or an archive operation failed, and
//! the stanza error condition (RFC 6120 §8.3.3) each case produces.

/// Why parsing a MAM query or an archive operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MamError {
    /// The request is malformed: not a `set` with one `<query xmlns='urn:xmpp:mam:2'/>`,
    /// an invalid XEP-0082 date, a bad RSM `<max/>`, a form of the wrong type, a
    /// duplicated field, too many ids. Produces `bad-request`.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The request uses something this archive does not implement: a form field it does
    /// not recognise (XEP-0313 §4.1.7 requires this condition), RSM `<index/>`, pubsub
    /// `node` archives. Produces `feature-not-implemented`.
    #[error("not implemented: {0}")]
    FeatureNotImplemented(String),
    /// An id named by RSM `<after/>`/`<before/>` or by the `after-id`, `before-id` or
    /// `ids` form fields is not in the archive. Produces `item-not-found`.
    #[error("no archived message with id {0}")]
    ItemNotFound(String),
    /// The archive already holds a message with this stanza id (ids are unique per
    /// archive). Produces `conflict`.
    #[error("stanza id {0} already archived")]
    Duplicate(String),
    /// The caller passed a value the store refuses (for example a waddle id that cannot
    /// name a file). Produces `bad-request`.
    #[error("invalid: {0}")]
    Invalid(String),
    /// libSQL reported an error (I/O, corruption, SQL). Produces `internal-server-error`.
    #[error("archive database error: {0}")]
    Database(String),
    /// An archive file was written by a newer build. Produces `internal-server-error`.
    #[error("archive schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew {
        /// Highest migration recorded in the file.
        found: i64,
        /// Highest migration this build knows.
        supported: i64,
    },
    /// The archive threads have stopped. Produces `internal-server-error`.
    #[error("the archive has stopped")]
    Closed,
}

impl MamError {
    /// The defined stanza error condition (RFC 6120 §8.3.3) to answer the query with.
    pub fn condition(&self) -> &'static str {
        match self {
            MamError::BadRequest(_) | MamError::Invalid(_) => "bad-request",
            MamError::FeatureNotImplemented(_) => "feature-not-implemented",
            MamError::ItemNotFound(_) => "item-not-found",
            MamError::Duplicate(_) => "conflict",
            MamError::Database(_) | MamError::SchemaTooNew { .. } | MamError::Closed => "internal-server-error",
        }
    }
}

impl From<libsql::Error> for MamError {
    fn from(e: libsql::Error) -> Self {
        MamError::Database(e.to_string())
    }
}

impl From<waddle_storage::db::Error> for MamError {
    fn from(e: waddle_storage::db::Error) -> Self {
        match e {
            waddle_storage::db::Error::SchemaTooNew { found, supported } => MamError::SchemaTooNew { found, supported },
            other => MamError::Database(other.to_string()),
        }
    }
}

impl waddle_storage::db::DbError for MamError {
    fn rollback_failed(error: &libsql::Error) {
        tracing::error!(error = %error, "mam: rollback failed");
    }
}
