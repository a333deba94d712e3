//! `waddle-storage`: the persistent state of a waddle node, in an embedded libSQL
//! (SQLite) database file.
//!
//! This crate owns:
//! - the database file and its schema, with numbered, transactional, append-only
//!   migrations recorded in a `schema_version` table;
//! - accounts and their SCRAM credentials ([`AccountRecord`], [`StoredScram`]);
//! - bearer tokens, stored only as SHA-256 digests ([`TokenKind`], [`TokenRecord`]);
//! - rosters with per-user version numbers (RFC 6121 §2.6, [`RosterRow`]);
//! - offline message queues (XEP-0160) and vCards (XEP-0054), as opaque XML strings;
//! - waddles and their channels ([`WaddleRecord`], [`ChannelRecord`]), permission tuples in
//!   their text form (the `waddle-authz` crate interprets them; this one does not depend on
//!   it), and persistent MUC room state as opaque blobs keyed by room JID.
//!
//! All database work runs on one dedicated OS thread that owns the only connection;
//! [`Store`] is a cheap handle whose `async` methods send jobs to it and await the answer,
//! so no tokio worker ever blocks on SQLite. Multi-statement changes (a roster write and
//! its version bump, an account and everything it owns) are single transactions.
//!
//! It also exposes [`db`], the libSQL helpers (draining queries, transactions, the
//! versioned migration runner) that `waddle-mam` shares for its archive files, and, with
//! the `test-util` feature, `test_util` (test scaffolding for those crates).
//!
//! It must never: hold clear-text passwords or clear-text tokens; interpret XML or XMPP
//! semantics (subscription rules, JID normalization, username policy are the callers'
//! job); read or write anything but its own database file; or run blocking database calls
//! on the async runtime.

pub mod db;
mod error;
mod inline;
mod model;
mod partition;
mod schema;
mod store;
mod store_waddles;
mod worker;

#[cfg(any(test, feature = "test-util"))]
pub mod test_util;

#[cfg(test)]
mod tests;

pub use error::StorageError;
pub use model::{
    AccountRecord, ChannelRecord, RosterRow, StoredScram, TokenKind, TokenRecord, WaddleRecord, CHANNEL_KINDS,
};
pub use schema::SCHEMA_VERSION;
pub use store::Store;

/// The [`db`] helpers, returning [`StorageError`].
type Sql = db::Sql<StorageError>;
