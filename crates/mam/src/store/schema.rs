//! Versioned schema migrations, applied per archive file.
//!
//! `schema_version` records every migration applied. A migration is a numbered SQL batch
//! applied at most once, in a transaction together with its `schema_version` row (the
//! runner is [`waddle_storage::db::Sql::migrate`], shared with the node database).
//! Migrations are append-only: never edit a shipped one, add the next number.
//!
//! Every archive file (per waddle, ad-hoc rooms, users) has the same schema:
//! - `messages`: one row per stored stanza (payload, body, stamp);
//! - `entries`: one row per (archive, message): the archive key, the stanza id, the
//!   `with` JID, the nickname, the stamp again (for ordering without a join) and the
//!   retraction flag. A room message has one entry; a 1:1 chat message has one entry in
//!   each party's archive pointing to the same `messages` row. `seq` is the insertion
//!   order that breaks ties between equal stamps.
//! - `messages_fts`: an FTS5 index over `messages.body`, kept in step by triggers.

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

/// Every migration, in order. Append only.
const MIGRATIONS: &[Migration] = &[Migration { version: 1, sql: V1 }, Migration { version: 2, sql: V2 }];

/// The schema version this build creates and understands.
pub const SCHEMA_VERSION: i64 = 2;

const _: () = assert!(MIGRATIONS[MIGRATIONS.len() - 1].version == SCHEMA_VERSION);

/// Brings the schema up to [`SCHEMA_VERSION`]; refuses files from a newer build.
pub(crate) async fn migrate(conn: &Connection) -> Result<(), MamError> {
    Sql::migrate(conn, MIGRATIONS, |version| tracing::info!(version, "mam: applied archive schema migration")).await
}
