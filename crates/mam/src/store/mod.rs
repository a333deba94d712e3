//! Message archives in libSQL files.
//!
//! [`Archive`] is a cheap handle over one directory holding one file per waddle
//! (`waddle-<id>.db`, shared by all of that waddle's rooms), one for ad-hoc rooms
//! (`rooms.db`) and one for users' 1:1 archives (`users.db`). Files are created and
//! migrated on first use (versioned migrations, WAL, `synchronous=FULL`).
//!
//! Writes go through one writer thread that commits queued rows in batches (see
//! [`Archive::append`]); reads go through one reader thread with its own connections.
//! Both threads stop once every handle is dropped and their queues are drained.
//!
//! Ordering inside an archive is by `(stamp, insertion order)`; RSM cursors and the
//! `after-id`/`before-id` fields are positions in that order.

mod ops;
mod pool;
mod reader;
mod schema;
mod writer;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

pub use crate::model::{ArchiveEdge, ArchiveMetadata, ArchivedRow, Page};
pub use schema::SCHEMA_VERSION;
pub use writer::{WriteStats, BATCH_ROWS, QUEUE_DEPTH};

use crate::{MamError, MamQuery};
use ops::{EntryKey, NewMessage};
use reader::Reader;
use writer::{Counters, WriteCmd};

/// The shared libSQL helpers ([`waddle_storage::db`]), returning [`MamError`].
type Sql = waddle_storage::db::Sql<MamError>;

/// File of ad-hoc (not waddle-bound) rooms.
pub const ROOMS_FILE: &str = "rooms.db";
/// File of users' 1:1 archives.
pub const USERS_FILE: &str = "users.db";

/// Which file an archive lives in.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ArchiveLocation {
    /// The rooms of one waddle (the id must be 1 to 128 ASCII letters, digits, `-`, `_`
    /// or `.`, not starting with `.`).
    Waddle(String),
    /// Rooms not bound to a waddle.
    AdHocRooms,
    /// Users' 1:1 archives.
    Users,
}

impl ArchiveLocation {
    /// The file name inside the archive directory; [`MamError::Invalid`] for a waddle id
    /// that cannot safely name a file.
    pub fn file_name(&self) -> Result<String, MamError> {
        match self {
            ArchiveLocation::Waddle(id) => {
                let safe = !id.is_empty()
                    && id.len() <= 128
                    && !id.starts_with('.')
                    && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
                if safe {
                    Ok(format!("waddle-{id}.db"))
                } else {
                    Err(MamError::Invalid(format!("waddle id {id:?} cannot name an archive file")))
                }
            }
            ArchiveLocation::AdHocRooms => Ok(ROOMS_FILE.to_owned()),
            ArchiveLocation::Users => Ok(USERS_FILE.to_owned()),
        }
    }
}

/// Handle to the archives of one directory. Cloning is cheap; all clones share the same
/// writer and reader threads.
#[derive(Clone)]
pub struct Archive {
    writer: mpsc::Sender<WriteCmd>,
    reader: Reader,
    dir: PathBuf,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive").field("dir", &self.dir).finish_non_exhaustive()
    }
}

fn non_empty(what: &str, value: &str) -> Result<(), MamError> {
    if value.is_empty() {
        Err(MamError::Invalid(format!("empty {what}")))
    } else {
        Ok(())
    }
}

fn row_message(row: ArchivedRow) -> NewMessage {
    let ArchivedRow { stanza_id, archive, with_jid, from_nick, stamp_micros, payload, body, retracted: _ } = row;
    NewMessage {
        stanza_id,
        stamp: stamp_micros,
        payload,
        body,
        from_nick,
        entries: vec![EntryKey { archive, with_jid }],
    }
}

/// One stored copy of a 1:1 message, indexed in both parties' archives (once for a
/// message to oneself).
fn chat_message(
    from_bare: &str,
    to_bare: &str,
    stanza_id: &str,
    stamp_micros: i64,
    payload: String,
    body: Option<String>,
) -> NewMessage {
    let entry = |archive: &str, with: &str| EntryKey { archive: archive.to_owned(), with_jid: with.to_owned() };
    let mut entries = vec![entry(from_bare, to_bare)];
    if from_bare != to_bare {
        entries.push(entry(to_bare, from_bare));
    }
    NewMessage { stanza_id: stanza_id.to_owned(), stamp: stamp_micros, payload, body, from_nick: None, entries }
}

impl Archive {
    /// Creates `dir` if needed and starts the writer and reader threads. Archive files
    /// are opened lazily, on first use of their [`ArchiveLocation`].
    pub async fn open(dir: &Path) -> Result<Archive, MamError> {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| MamError::Database(format!("cannot create {}: {e}", dir.display())))?;
        let counters = Arc::new(Counters::default());
        let writer = writer::start(dir.to_path_buf(), Arc::clone(&counters)).await?;
        let reader = Reader::start(dir.to_path_buf(), writer.clone()).await?;
        Ok(Archive { writer, reader, dir: dir.to_path_buf(), counters })
    }

    /// Insert transactions and messages committed since [`Archive::open`] (for metrics).
    pub fn write_stats(&self) -> WriteStats {
        self.counters.snapshot()
    }

    /// The archive directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Queues `row` for writing and returns a future that resolves once it is committed.
    ///
    /// Rows are committed in batches on the writer thread: whatever is queued when the
    /// thread is free, up to [`BATCH_ROWS`] per transaction, so an idle archive commits
    /// a row at once and a busy one amortizes each fsync over many rows. The row is
    /// queued before this returns (the future may be dropped: fire-and-forget), unless
    /// the queue ([`QUEUE_DEPTH`] commands) is full: then the future waits for room
    /// (back-pressure), and if it is dropped first a task keeps waiting, so the row is
    /// never silently dropped. Errors: [`MamError::Duplicate`] if `row.archive` already
    /// holds `row.stanza_id`, [`MamError::Invalid`] for an unusable location or empty
    /// id. `row.retracted` is ignored (see [`Archive::retract`]).
    pub fn append(
        &self,
        location: ArchiveLocation,
        row: ArchivedRow,
    ) -> impl Future<Output = Result<(), MamError>> + Send + 'static {
        self.insert(location, row_message(row))
    }

    /// Archives a 1:1 chat message once for both parties: one stored copy of `payload`,
    /// indexed in `from_bare`'s archive (with `to_bare`) and in `to_bare`'s archive (with
    /// `from_bare`), both under `stanza_id` (a message to oneself is indexed once). Same
    /// queueing and durability contract as [`Archive::append`].
    pub fn append_chat(
        &self,
        from_bare: &str,
        to_bare: &str,
        stanza_id: &str,
        stamp_micros: i64,
        payload: String,
        body: Option<String>,
    ) -> impl Future<Output = Result<(), MamError>> + Send + 'static {
        self.insert(ArchiveLocation::Users, chat_message(from_bare, to_bare, stanza_id, stamp_micros, payload, body))
    }

    fn insert(
        &self,
        location: ArchiveLocation,
        msg: NewMessage,
    ) -> impl Future<Output = Result<(), MamError>> + Send + 'static {
        let (done, ack) = oneshot::channel();
        let queued = self.queue_insert(location, msg, done);
        async move {
            queued.await?;
            ack.await.map_err(|_| MamError::Closed)?
        }
    }

    /// Validates and queues an insert; the future resolves once it is in the queue.
    fn queue_insert(
        &self,
        location: ArchiveLocation,
        msg: NewMessage,
        done: writer::Ack,
    ) -> impl Future<Output = Result<(), MamError>> + Send + 'static {
        let checked = location.file_name().and_then(|file| {
            non_empty("stanza id", &msg.stanza_id)?;
            for e in &msg.entries {
                non_empty("archive", &e.archive)?;
            }
            Ok(file)
        });
        match checked {
            Ok(file) => writer::enqueue(&self.writer, WriteCmd::Insert { file, msg, done }),
            Err(e) => writer::Queued::failed(e),
        }
    }

    /// [`Archive::append_chat`] for the hot path: resolves as soon as the message is
    /// queued, waiting only while the queue is full. Awaiting it is what carries the
    /// archive's back-pressure to the sender; durability is not awaited, and a failed
    /// write is logged by the writer.
    pub fn append_chat_queued(
        &self,
        from_bare: &str,
        to_bare: &str,
        stanza_id: &str,
        stamp_micros: i64,
        payload: String,
        body: Option<String>,
    ) -> impl Future<Output = Result<(), MamError>> + Send + 'static {
        let msg = chat_message(from_bare, to_bare, stanza_id, stamp_micros, payload, body);
        let (done, _ack) = oneshot::channel();
        self.queue_insert(ArchiveLocation::Users, msg, done)
    }

    /// [`Archive::append_chat_queued`] indexed in `owner`'s archive only (with `with`):
    /// the copy a cluster node keeps for the one party of a conversation it owns, when
    /// the other party's node holds the conversation's other copy.
    pub fn append_chat_side_queued(
        &self,
        owner: &str,
        with: &str,
        stanza_id: &str,
        stamp_micros: i64,
        payload: String,
        body: Option<String>,
    ) -> impl Future<Output = Result<(), MamError>> + Send + 'static {
        let mut msg = chat_message(owner, with, stanza_id, stamp_micros, payload, body);
        msg.entries.truncate(1);
        let (done, _ack) = oneshot::channel();
        self.queue_insert(ArchiveLocation::Users, msg, done)
    }

    /// [`Archive::append_chat`] indexed in `owner`'s archive only (with `with`), with the
    /// same durability contract: the copy of a conversation for the one party a node
    /// keeps when the other party's copy is elsewhere.
    pub fn append_chat_side(
        &self,
        owner: &str,
        with: &str,
        stanza_id: &str,
        stamp_micros: i64,
        payload: String,
        body: Option<String>,
    ) -> impl Future<Output = Result<(), MamError>> + Send + 'static {
        let mut msg = chat_message(owner, with, stanza_id, stamp_micros, payload, body);
        msg.entries.truncate(1);
        self.insert(ArchiveLocation::Users, msg)
    }

    /// [`Archive::append`] for the hot path, as [`Archive::append_chat_queued`].
    pub fn append_queued(
        &self,
        location: ArchiveLocation,
        row: ArchivedRow,
    ) -> impl Future<Output = Result<(), MamError>> + Send + 'static {
        let (done, _ack) = oneshot::channel();
        self.queue_insert(location, row_message(row), done)
    }

    /// Runs `q` against `archive` and returns one page.
    ///
    /// The result set is the archive's non-retracted messages (retractions are
    /// tombstones) matching every filter: `with` (a bare JID matches the stored `with`
    /// JID case-insensitively; a full JID matches its bare JID, except that on a room
    /// archive `room@service/nick` matches the nickname), `start`/`end` (inclusive),
    /// `fulltext` (FTS5: every term must appear, as a word prefix), `ids`, and the
    /// `after-id`/`before-id` bounds. `count` is its size. The page is the next
    /// `max` rows after RSM `after`, or the `max` rows before RSM `before` (an empty
    /// `<before/>` is the last page); with both, the first `max` rows between them.
    /// `complete` tells whether the page reached the end of the result set in the paging
    /// direction; `flip` reverses the page's order. Any id named by the query that the
    /// archive does not hold gives [`MamError::ItemNotFound`]. The first read of a
    /// location creates its (empty) file.
    ///
    /// Reads its own writes: the query waits until every write queued before it is
    /// committed (the hot path only queues), so a message already delivered or
    /// reflected, whose stanza id a client holds, is in the page.
    pub async fn query(&self, location: ArchiveLocation, archive: &str, q: &MamQuery) -> Result<Page, MamError> {
        self.flush().await?;
        let users = location == ArchiveLocation::Users;
        let (archive, q) = (archive.to_owned(), q.clone());
        self.reader
            .call(location.file_name()?, move |conn| async move { ops::query(&conn, users, &archive, &q).await })
            .await
    }

    /// Retracts `target_stanza_id` from `archive`: the stored payload is replaced by an
    /// empty tombstone and the body leaves the full-text index; the entry keeps its id,
    /// stamp and `with` but no query returns it any more. For a 1:1 message the single
    /// stored copy is tombstoned, so it disappears from both parties' archives.
    /// Executed in order after every write queued before it. `Ok(false)` if the archive
    /// has no such id; retracting twice is harmless.
    pub async fn retract(
        &self,
        location: ArchiveLocation,
        archive: &str,
        target_stanza_id: &str,
    ) -> Result<bool, MamError> {
        let (done, ack) = oneshot::channel();
        let cmd = WriteCmd::Retract {
            file: location.file_name()?,
            archive: archive.to_owned(),
            target: target_stanza_id.to_owned(),
            done,
        };
        writer::enqueue(&self.writer, cmd).await?;
        ack.await.map_err(|_| MamError::Closed)?
    }

    /// The newest `limit` non-retracted rows of `archive`, oldest first (room history
    /// after a restart).
    pub async fn recent(
        &self,
        location: ArchiveLocation,
        archive: &str,
        limit: usize,
    ) -> Result<Vec<ArchivedRow>, MamError> {
        let archive = archive.to_owned();
        self.reader
            .call(location.file_name()?, move |conn| async move { ops::recent(&conn, &archive, limit).await })
            .await
    }

    /// The oldest and newest non-retracted messages of `archive` (XEP-0313 metadata).
    /// Reads its own writes, as [`Archive::query`].
    pub async fn metadata(&self, location: ArchiveLocation, archive: &str) -> Result<ArchiveMetadata, MamError> {
        self.flush().await?;
        let archive = archive.to_owned();
        self.reader.call(location.file_name()?, move |conn| async move { ops::metadata(&conn, &archive).await }).await
    }

    /// Resolves once everything queued before this call is committed.
    pub async fn flush(&self) -> Result<(), MamError> {
        let (done, ack) = oneshot::channel();
        writer::enqueue(&self.writer, WriteCmd::Flush { done }).await?;
        ack.await.map_err(|_| MamError::Closed)?
    }

    /// Deletes `archive` (after every write queued before this call): its entries, and
    /// the stored messages no other archive still indexes (a 1:1 message stays in the
    /// peer's archive).
    pub async fn delete_archive(&self, location: ArchiveLocation, archive: &str) -> Result<(), MamError> {
        let (done, ack) = oneshot::channel();
        let cmd = WriteCmd::Delete { file: location.file_name()?, archive: archive.to_owned(), done };
        writer::enqueue(&self.writer, cmd).await?;
        ack.await.map_err(|_| MamError::Closed)?
    }

    /// Number of stored message copies in a location's file (tests).
    #[cfg(test)]
    pub(crate) async fn stored_messages(&self, location: ArchiveLocation) -> Result<i64, MamError> {
        self.reader.call(location.file_name()?, |conn| async move { ops::message_count(&conn).await }).await
    }
}
