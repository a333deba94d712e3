//! Moving users' data as a unit: everything keyed by a username (account, tokens,
//! roster, offline messages, vCard) is copied into a libSQL file of its own, and merged
//! from such a file, each in one transaction. In a cluster, a partition's user data is the
//! data of the users whose bare JIDs hash to it; this is how it leaves one node and
//! arrives at another.

use std::path::Path;

use libsql::Connection;

use crate::db::Tx;
use crate::{Sql, StorageError, Store};

/// Tables whose rows belong to a user, with the columns copied (in order). `offline`
/// leaves its id behind: the importing database numbers the rows anew, in their order.
const USER_TABLES: &[(&str, &str)] = &[
    (
        "accounts",
        "username, created_at, roster_version, sha1_hash, sha1_salt, sha1_iterations, sha1_stored_key, \
         sha1_server_key, sha256_hash, sha256_salt, sha256_iterations, sha256_stored_key, sha256_server_key",
    ),
    ("tokens", "kind, token_hash, username, expires_at"),
    ("roster", "username, contact, name, groups, subscription, ask_out, pending_in, approved, in_roster"),
    ("vcards", "username, xml"),
];

/// The schema of a transfer file (plain tables: the copy is data, not a live database).
const TRANSFER_SCHEMA: &str = "
CREATE TABLE part.transfer (version INTEGER NOT NULL);
CREATE TABLE part.users (username TEXT NOT NULL PRIMARY KEY);
CREATE TABLE part.accounts AS SELECT username, created_at, roster_version, sha1_hash, sha1_salt, sha1_iterations,
    sha1_stored_key, sha1_server_key, sha256_hash, sha256_salt, sha256_iterations, sha256_stored_key,
    sha256_server_key FROM main.accounts WHERE 0;
CREATE TABLE part.tokens AS SELECT kind, token_hash, username, expires_at FROM main.tokens WHERE 0;
CREATE TABLE part.roster AS SELECT username, contact, name, groups, subscription, ask_out, pending_in, approved,
    in_roster FROM main.roster WHERE 0;
CREATE TABLE part.vcards AS SELECT username, xml FROM main.vcards WHERE 0;
CREATE TABLE part.offline (seq INTEGER PRIMARY KEY, username TEXT NOT NULL, stanza TEXT NOT NULL);
";

/// The transfer file format this build writes and reads.
const TRANSFER_VERSION: i64 = 1;

async fn attach(conn: &Connection, path: &Path) -> Result<(), StorageError> {
    let path = path.to_str().ok_or_else(|| StorageError::Invalid("transfer file path is not UTF-8".into()))?;
    conn.execute("ATTACH DATABASE ?1 AS part", [path]).await?;
    Ok(())
}

async fn detach(conn: &Connection) {
    if let Err(e) = conn.execute("DETACH DATABASE part", ()).await {
        tracing::error!(error = %e, "storage: cannot detach a transfer file");
    }
}

impl Store {
    /// Every account's username.
    pub async fn usernames(&self) -> Result<Vec<String>, StorageError> {
        self.worker
            .call(|conn| async move {
                Sql::query_all(
                    &conn,
                    "SELECT username FROM accounts ORDER BY username",
                    (),
                    |r| Ok(r.get::<String>(0)?),
                )
                .await
            })
            .await
    }

    /// Writes the data of `usernames` (accounts, tokens, rosters, offline messages,
    /// vCards) into a new libSQL file at `path`; how many accounts it holds. Fails if the
    /// file exists. Nothing here changes.
    pub async fn export_users(&self, usernames: Vec<String>, path: &Path) -> Result<u64, StorageError> {
        if path.exists() {
            return Err(StorageError::Invalid(format!("{} exists already", path.display())));
        }
        let path = path.to_path_buf();
        self.worker
            .call(move |conn| async move {
                attach(&conn, &path).await?;
                let copied = Sql::in_tx(&conn, Tx::Write, async {
                    drop(conn.execute_batch(TRANSFER_SCHEMA).await?);
                    conn.execute("INSERT INTO part.transfer (version) VALUES (?1)", [TRANSFER_VERSION]).await?;
                    for username in &usernames {
                        conn.execute("INSERT OR IGNORE INTO part.users (username) VALUES (?1)", [username.as_str()])
                            .await?;
                    }
                    let mine = "username IN (SELECT username FROM part.users)";
                    for (table, columns) in USER_TABLES {
                        conn.execute(
                            &format!(
                                "INSERT INTO part.{table} ({columns}) SELECT {columns} FROM main.{table} WHERE {mine}"
                            ),
                            (),
                        )
                        .await?;
                    }
                    conn.execute(
                        &format!(
                            "INSERT INTO part.offline (username, stanza) SELECT username, stanza FROM main.offline \
                             WHERE {mine} ORDER BY id"
                        ),
                        (),
                    )
                    .await?;
                    Sql::to_u64(Sql::query_i64(&conn, "SELECT count(*) FROM part.accounts", ()).await?, "accounts")
                })
                .await;
                detach(&conn).await;
                copied
            })
            .await
    }

    /// Merges a file written by [`Store::export_users`] in one transaction: the users it
    /// names lose whatever rows they had here and get the file's; offline messages keep
    /// their order. Roster versions stay what they were (the database's version counter
    /// moves past them, so later changes get higher versions). How many accounts came in.
    pub async fn import_users(&self, path: &Path) -> Result<u64, StorageError> {
        if !path.is_file() {
            return Err(StorageError::Invalid(format!("no transfer file at {}", path.display())));
        }
        let path = path.to_path_buf();
        self.worker
            .call(move |conn| async move {
                attach(&conn, &path).await?;
                let imported = Sql::in_tx(&conn, Tx::Write, async {
                    let version = Sql::query_i64(&conn, "SELECT version FROM part.transfer", ()).await?;
                    if version != TRANSFER_VERSION {
                        return Err(StorageError::Invalid(format!("transfer file version {version} is not {TRANSFER_VERSION}")));
                    }
                    let theirs = "username IN (SELECT username FROM part.users)";
                    for table in ["roster", "offline", "tokens", "vcards", "accounts"] {
                        conn.execute(&format!("DELETE FROM main.{table} WHERE {theirs}"), ()).await?;
                    }
                    for (table, columns) in USER_TABLES {
                        conn.execute(
                            &format!("INSERT INTO main.{table} ({columns}) SELECT {columns} FROM part.{table}"),
                            (),
                        )
                        .await?;
                    }
                    conn.execute(
                        "INSERT INTO main.offline (username, stanza) SELECT username, stanza FROM part.offline ORDER BY seq",
                        (),
                    )
                    .await?;
                    conn.execute(
                        "UPDATE counters SET value = max(value, (SELECT coalesce(max(roster_version), 0) FROM part.accounts)) \
                         WHERE name = 'roster_version'",
                        (),
                    )
                    .await?;
                    Sql::to_u64(Sql::query_i64(&conn, "SELECT count(*) FROM part.accounts", ()).await?, "accounts")
                })
                .await;
                detach(&conn).await;
                imported
            })
            .await
    }

    /// Deletes every row of `usernames` (their data now lives elsewhere), in one
    /// transaction.
    pub async fn delete_users(&self, usernames: Vec<String>) -> Result<(), StorageError> {
        self.worker
            .call(move |conn| async move {
                Sql::in_tx(&conn, Tx::Write, async {
                    for username in &usernames {
                        for table in ["roster", "offline", "tokens", "vcards", "accounts"] {
                            conn.execute(&format!("DELETE FROM {table} WHERE username = ?1"), [username.as_str()])
                                .await?;
                        }
                    }
                    Ok(())
                })
                .await
            })
            .await
    }
}
