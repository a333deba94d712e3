//! `waddle-mam`: XEP-0313 Message Archive Management, in two layers.
//!
//! - [`query`] is I/O-free: it parses archive query IQs (data form fields `with`,
//!   `start`, `end`, the extended `before-id`/`after-id`/`ids`, XEP-0431 full-text
//!   search, RSM paging, `<flip-page/>`) into a [`MamQuery`] and builds the stanzas that
//!   answer them (the query form, result messages, `<fin/>`, archive metadata).
//! - [`store`] keeps the archives in libSQL files under one directory: one file per
//!   waddle (`waddle-<id>.db`, all of its channels' rooms), one for ad-hoc rooms
//!   (`rooms.db`) and one for users' 1:1 archives (`users.db`), where a chat message is
//!   stored once and indexed in both parties' archives. Appends are queued and committed
//!   in batches on a dedicated writer thread; queries run on a dedicated reader thread.
//!   No tokio worker ever blocks on SQLite.
//!
//! The crate owns: the archive schema and its migrations, paging semantics (RSM over
//! `(stamp, insertion order)`), retraction tombstones, full-text indexing.
//!
//! It must never: decide who may read or write an archive, generate stanza ids or
//! message stamps (callers pass both), route or deliver stanzas, or interpret the
//! archived payloads (they are opaque strings to the store).

mod error;
mod model;
pub mod query;
pub mod store;

pub use error::MamError;
pub use model::{ArchiveEdge, ArchiveMetadata, ArchivedRow, Page};
pub use query::MamQuery;
pub use store::{Archive, ArchiveLocation};
