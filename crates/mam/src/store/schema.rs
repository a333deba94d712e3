//! Versioned schema migrations, applied per archive file.
//!
//! `schema_version` records every migration applied. A migration is a numbered SQL batch
//! applied at most once, in a transaction together with its `schema_version` row (the
//! runner is [`waddle_storage::db::Sql::migrate`], shared with the node database).
//! Migrations are append-only: never edit a shipped one, add the next number.
//!
//! Every archive file (per waddle, ad-hoc rooms, users) has the same schema (version 3):
//! - `messages`: one row per stored stanza: its XEP-0359 stanza id, stamp, payload, body
//!   and, for rooms, the sender's nickname. A 1:1 chat message is stored once for both
//!   parties. `id` is the insertion order, which breaks ties between equal stamps.
//! - `entries`: which archives hold which messages, clustered by `(archive, stamp,
//!   message id)`: one narrow row per (archive, message) with the `with` JID and the
//!   retraction flag. A room message has one entry; a 1:1 message has one in each party's
//!   archive, and each entry's `with_jid` names the archive holding the other one.
//! - `messages_fts`: an FTS5 index over `messages.body`, filled once per write
//!   transaction by the writer and kept in step on update and delete by triggers.
//!
//! Why this layout (version 3 replaced version 2's rowid `entries` table with three
//! secondary indexes): an insert touches each archive's newest leaf page, the end of the
//! `messages` table and the end of the stanza id index, so a batch of a thousand
//! messages dirties a few hundred pages. Version 2 also kept an index by
//! `(archive, with_jid)`, whose inserts landed on a different page for every
//! conversation; profiled under 1:1 load that was most of the archive's CPU and WAL
//! volume. A `with` query now scans the archive's own entries, which are narrow and
//! contiguous.

use libsql::Connection;
use waddle_storage::db::Migration;

use super::Sql;
use crate::MamError;

/// Version 1: messages, entries, full-text index.
const V1: &str = "
CREATE TABLE messages (
    id      INTEGER PRIMARY KEY,
    stamp   INTEGER NOT NULL,
    payload TEXT    NOT NULL,
    body    TEXT
);

CREATE TABLE entries (
    seq        INTEGER PRIMARY KEY,
    archive    TEXT    NOT NULL,
    stanza_id  TEXT    NOT NULL,
    with_jid   TEXT    NOT NULL COLLATE NOCASE,
    from_nick  TEXT,
    stamp      INTEGER NOT NULL,
    message_id INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    retracted  INTEGER NOT NULL DEFAULT 0,
    UNIQUE (archive, stanza_id)
);
CREATE INDEX entries_by_time ON entries (archive, stamp, seq) WHERE retracted = 0;
CREATE INDEX entries_by_with ON entries (archive, with_jid, stamp, seq) WHERE retracted = 0;
CREATE INDEX entries_by_message ON entries (message_id);

CREATE VIRTUAL TABLE messages_fts USING fts5 (
    body,
    content = 'messages',
    content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages WHEN new.body IS NOT NULL BEGIN
    INSERT INTO messages_fts (rowid, body) VALUES (new.id, new.body);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages WHEN old.body IS NOT NULL BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.id, old.body);
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF body ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body) SELECT 'delete', old.id, old.body WHERE old.body IS NOT NULL;
    INSERT INTO messages_fts (rowid, body) SELECT new.id, new.body WHERE new.body IS NOT NULL;
END;
";

/// Version 2: bodies are indexed for full-text search once per write transaction by the
/// writer (`ops::index_bodies`), not by a per-row trigger.
const V2: &str = "DROP TRIGGER messages_fts_insert;";

/// Version 3: the stanza id and nickname move to `messages`; `entries` becomes a
/// `WITHOUT ROWID` table clustered by `(archive, stamp, message_id)` with no secondary
/// index (see the module documentation). Existing rows are carried over; the insertion
/// order that broke ties (`seq`) is the message id's order too.
const V3: &str = "
ALTER TABLE messages ADD COLUMN stanza_id TEXT NOT NULL DEFAULT '';
ALTER TABLE messages ADD COLUMN from_nick TEXT;
UPDATE messages SET
    stanza_id = COALESCE((SELECT e.stanza_id FROM entries e WHERE e.message_id = messages.id ORDER BY e.seq LIMIT 1), ''),
    from_nick = (SELECT e.from_nick FROM entries e WHERE e.message_id = messages.id ORDER BY e.seq LIMIT 1);
CREATE TABLE entries_v3 (
    archive    TEXT    NOT NULL,
    stamp      INTEGER NOT NULL,
    message_id INTEGER NOT NULL,
    with_jid   TEXT    NOT NULL COLLATE NOCASE,
    retracted  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (archive, stamp, message_id)
) WITHOUT ROWID;
INSERT OR IGNORE INTO entries_v3 (archive, stamp, message_id, with_jid, retracted)
    SELECT archive, stamp, message_id, with_jid, retracted FROM entries ORDER BY archive, stamp, seq;
DROP TABLE entries;
ALTER TABLE entries_v3 RENAME TO entries;
CREATE INDEX messages_by_stanza_id ON messages (stanza_id);
";

/// Every migration, in order. Append only.
pub(super) const MIGRATIONS: &[Migration] =
    &[Migration { version: 1, sql: V1 }, Migration { version: 2, sql: V2 }, Migration { version: 3, sql: V3 }];

/// The schema version this build creates and understands.
pub const SCHEMA_VERSION: i64 = 3;

const _: () = assert!(MIGRATIONS[MIGRATIONS.len() - 1].version == SCHEMA_VERSION);

/// Brings the schema up to [`SCHEMA_VERSION`]; refuses files from a newer build.
pub(crate) async fn migrate(conn: &Connection) -> Result<(), MamError> {
    Sql::migrate(conn, MIGRATIONS, |version| tracing::info!(version, "mam: applied archive schema migration")).await
}
