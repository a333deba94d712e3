//! Versioned schema migrations.
//!
//! `schema_version` records every migration applied (one row each). A migration is a
//! numbered SQL batch applied at most once, inside a transaction together with its
//! `schema_version` row, so a crash mid-migration leaves the database at the previous
//! version (the runner is [`crate::db::Sql::migrate`]). Migrations are append-only: never edit a
//! shipped one, add the next number.

use libsql::Connection;

use crate::db::Migration;
use crate::{Sql, StorageError};

/// Version 1: accounts, tokens, rosters, offline messages, vCards.
const V1: &str = "
CREATE TABLE accounts (
    username         TEXT    NOT NULL PRIMARY KEY,
    created_at       INTEGER NOT NULL,
    roster_version   INTEGER NOT NULL DEFAULT 0,
    sha1_hash        TEXT    NOT NULL,
    sha1_salt        BLOB    NOT NULL,
    sha1_iterations  INTEGER NOT NULL,
    sha1_stored_key  BLOB    NOT NULL,
    sha1_server_key  BLOB    NOT NULL,
    sha256_hash      TEXT    NOT NULL,
    sha256_salt      BLOB    NOT NULL,
    sha256_iterations INTEGER NOT NULL,
    sha256_stored_key BLOB   NOT NULL,
    sha256_server_key BLOB   NOT NULL
) WITHOUT ROWID;

CREATE TABLE tokens (
    kind        INTEGER NOT NULL,
    token_hash  BLOB    NOT NULL CHECK (length(token_hash) = 32),
    username    TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (kind, token_hash)
) WITHOUT ROWID;
CREATE INDEX tokens_by_username ON tokens (username);
CREATE INDEX tokens_by_expiry ON tokens (expires_at);

CREATE TABLE roster (
    username     TEXT    NOT NULL,
    contact      TEXT    NOT NULL,
    name         TEXT,
    groups       TEXT    NOT NULL DEFAULT '[]',
    subscription TEXT    NOT NULL CHECK (subscription IN ('none', 'to', 'from', 'both')),
    ask_out      INTEGER NOT NULL,
    pending_in   INTEGER NOT NULL,
    approved     INTEGER NOT NULL,
    in_roster    INTEGER NOT NULL,
    PRIMARY KEY (username, contact)
) WITHOUT ROWID;

CREATE TABLE offline (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT    NOT NULL,
    stanza   TEXT    NOT NULL
);
CREATE INDEX offline_by_username ON offline (username, id);

CREATE TABLE vcards (
    username TEXT NOT NULL PRIMARY KEY,
    xml      TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE counters (
    name  TEXT    NOT NULL PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO counters (name, value) VALUES ('roster_version', 0);
";

/// Version 2: waddles, channels, permission tuples, persistent MUC rooms.
const V2: &str = "
CREATE TABLE waddles (
    id          TEXT    NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL,
    description TEXT,
    owner       TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX waddles_by_owner ON waddles (owner);

CREATE TABLE channels (
    id          TEXT    NOT NULL PRIMARY KEY,
    waddle_id   TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('text', 'announcement')),
    topic       TEXT,
    created_at  INTEGER NOT NULL,
    UNIQUE (waddle_id, name)
) WITHOUT ROWID;

CREATE TABLE authz_tuples (
    tuple TEXT NOT NULL PRIMARY KEY
) WITHOUT ROWID;

CREATE TABLE rooms (
    jid  TEXT NOT NULL PRIMARY KEY,
    blob TEXT NOT NULL
) WITHOUT ROWID;
";

/// Version 3: tombstones of the rooms of deleted channels, so that their JIDs are never
/// reused (by an ad-hoc room that would inherit links, bookmarks and history readers);
/// the public name of listed rooms, for the MUC service's disco#items.
const V3: &str = "
ALTER TABLE rooms ADD COLUMN listed_name TEXT;

CREATE TABLE retired_rooms (
    jid        TEXT NOT NULL PRIMARY KEY,
    retired_at INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Version 4: an offline message may carry the id of the replicated operation that queued
/// it, so that applying that operation, or the one that delivered it, twice changes
/// nothing the second time.
const V4: &str = "
ALTER TABLE offline ADD COLUMN op_id TEXT;
CREATE UNIQUE INDEX offline_by_op ON offline (op_id);
";

/// Every migration, in order. Append only.
const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, sql: V1 },
    Migration { version: 2, sql: V2 },
    Migration { version: 3, sql: V3 },
    Migration { version: 4, sql: V4 },
];

/// The schema version this build creates and understands.
pub const SCHEMA_VERSION: u32 = 4;

const _: () = assert!(MIGRATIONS[MIGRATIONS.len() - 1].version == SCHEMA_VERSION as i64);

/// Brings the schema up to [`SCHEMA_VERSION`]; refuses databases from a newer build.
pub(crate) async fn migrate(conn: &Connection) -> Result<(), StorageError> {
    Sql::migrate(conn, MIGRATIONS, |version| tracing::info!(version, "storage: applied schema migration")).await
}
