//! [`Store`]: the async face of the database.

use std::path::Path;

use libsql::{Connection, Row};

use crate::db::Tx;
use crate::model::SUBSCRIPTIONS;
use crate::worker::Worker;
use crate::Sql;
use crate::{AccountRecord, RosterRow, StorageError, StoredScram, TokenKind, TokenRecord};

/// Handle to the database. Cloning is cheap; every clone talks to the same storage thread,
/// which closes the database once the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    pub(crate) worker: Worker,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

const ACCOUNT_COLUMNS: &str = "username, created_at, \
    sha1_hash, sha1_salt, sha1_iterations, sha1_stored_key, sha1_server_key, \
    sha256_hash, sha256_salt, sha256_iterations, sha256_stored_key, sha256_server_key";

const ROSTER_COLUMNS: &str = "contact, name, groups, subscription, ask_out, pending_in, approved, in_roster";

impl Store {
    /// Opens (creating) the libSQL database file at `path` (`":memory:"` gives a private
    /// in-memory database, for tests), enables WAL and runs the versioned schema
    /// migrations (a `schema_version` table; each migration numbered and applied once, in
    /// a transaction). Fails with [`StorageError::SchemaTooNew`] on a database written by
    /// a newer build.
    pub async fn open(path: &Path) -> Result<Store, StorageError> {
        Ok(Store { worker: Worker::start(path).await? })
    }

    /// The schema version of the open database (see [`crate::SCHEMA_VERSION`]).
    pub async fn schema_version(&self) -> Result<u32, StorageError> {
        self.worker.call(|conn| async move { Sql::to_u32(Sql::current_version(&conn).await?, "schema version") }).await
    }

    /// Creates an account; [`StorageError::AlreadyExists`] on a duplicate username.
    pub async fn create_account(&self, rec: AccountRecord) -> Result<(), StorageError> {
        if rec.username.is_empty() {
            return Err(StorageError::Invalid("empty username".into()));
        }
        self.worker
            .call(move |conn| async move {
                let AccountRecord { username, scram_sha1: a, scram_sha256: b, created_at } = rec;
                let inserted = conn
                    .execute(
                        &format!(
                            "INSERT INTO accounts ({ACCOUNT_COLUMNS}) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
                             ON CONFLICT (username) DO NOTHING"
                        ),
                        (
                            username,
                            created_at,
                            a.hash,
                            a.salt,
                            a.iterations,
                            a.stored_key,
                            a.server_key,
                            b.hash,
                            b.salt,
                            b.iterations,
                            b.stored_key,
                            b.server_key,
                        ),
                    )
                    .await?;
                Sql::changed(inserted, StorageError::AlreadyExists)
            })
            .await
    }

    /// The account named `username`, if any.
    pub async fn account(&self, username: &str) -> Result<Option<AccountRecord>, StorageError> {
        let username = username.to_owned();
        self.worker
            .read(move |conn| {
                let username = username.clone();
                async move {
                    Sql::query_opt(
                        &conn,
                        &format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE username = ?1"),
                        [username],
                        account_from_row,
                    )
                    .await
                }
            })
            .await
    }

    /// Whether an account named `username` exists.
    pub async fn account_exists(&self, username: &str) -> Result<bool, StorageError> {
        let username = username.to_owned();
        self.worker
            .read(move |conn| {
                let username = username.clone();
                async move { exists(&conn, &username).await }
            })
            .await
    }

    /// Deletes the account and everything it owns (roster, offline messages, tokens,
    /// vCard) in one transaction. [`StorageError::NotFound`] if there was no such
    /// account (leftover rows under that name are still removed).
    pub async fn delete_account(&self, username: &str) -> Result<(), StorageError> {
        let username = username.to_owned();
        self.worker
            .call(move |conn| async move {
                let existed = Sql::in_tx(&conn, Tx::Write, async {
                    for table in ["roster", "offline", "tokens", "vcards"] {
                        conn.execute(&format!("DELETE FROM {table} WHERE username = ?1"), [username.as_str()]).await?;
                    }
                    Ok(conn.execute("DELETE FROM accounts WHERE username = ?1", [username.as_str()]).await? > 0)
                })
                .await?;
                if existed {
                    Ok(())
                } else {
                    Err(StorageError::NotFound)
                }
            })
            .await
    }

    /// Stores a token for `username`. Tokens are stored ONLY as SHA-256(token) (32 bytes);
    /// the clear token never touches the database. [`StorageError::NotFound`] if the
    /// account does not exist, [`StorageError::AlreadyExists`] on a duplicate hash.
    pub async fn insert_token(
        &self,
        kind: TokenKind,
        token_hash: [u8; 32],
        username: &str,
        expires_at: i64,
    ) -> Result<(), StorageError> {
        let username = username.to_owned();
        self.worker
            .call(move |conn| async move {
                Sql::in_tx(&conn, Tx::Write, async {
                    if !exists(&conn, &username).await? {
                        return Err(StorageError::NotFound);
                    }
                    let inserted = conn
                        .execute(
                            "INSERT INTO tokens (kind, token_hash, username, expires_at) VALUES (?1, ?2, ?3, ?4) \
                             ON CONFLICT (kind, token_hash) DO NOTHING",
                            (kind.code(), token_hash.to_vec(), username.as_str(), expires_at),
                        )
                        .await?;
                    Sql::changed(inserted, StorageError::AlreadyExists)
                })
                .await
            })
            .await
    }

    /// The owner of a token, if the hash is known for `kind` and the token has not expired
    /// (`now < expires_at`); an expired token gives `None`.
    pub async fn lookup_token(
        &self,
        kind: TokenKind,
        token_hash: [u8; 32],
        now: i64,
    ) -> Result<Option<TokenRecord>, StorageError> {
        self.worker
            .read(move |conn| async move {
                Sql::query_opt(
                    &conn,
                    "SELECT username, expires_at FROM tokens \
                     WHERE kind = ?1 AND token_hash = ?2 AND expires_at > ?3",
                    (kind.code(), token_hash.to_vec(), now),
                    |r| Ok(TokenRecord { username: r.get(0)?, expires_at: r.get(1)? }),
                )
                .await
            })
            .await
    }

    /// Deletes every token with `expires_at <= now`; returns how many were deleted.
    pub async fn purge_expired_tokens(&self, now: i64) -> Result<u64, StorageError> {
        self.worker
            .call(
                move |conn| async move { Ok(conn.execute("DELETE FROM tokens WHERE expires_at <= ?1", [now]).await?) },
            )
            .await
    }

    /// The roster version and every row of the user's roster (including rows with
    /// `in_roster == false`), ordered by contact. Each user has a monotonically increasing
    /// roster version bumped by every change (RFC 6121 §2.6); versions come from a
    /// database-wide counter, so they are never reused, even across account re-creation.
    /// An unknown user has version 0 and no rows.
    pub async fn roster(&self, username: &str) -> Result<(u64, Vec<RosterRow>), StorageError> {
        let username = username.to_owned();
        self.worker
            .call(move |conn| async move {
                Sql::in_tx(&conn, Tx::Read, async {
                    let version = Sql::query_opt(
                        &conn,
                        "SELECT roster_version FROM accounts WHERE username = ?1",
                        [username.as_str()],
                        |r| Ok(r.get::<i64>(0)?),
                    )
                    .await?
                    .unwrap_or(0);
                    let rows = Sql::query_all(
                        &conn,
                        &format!("SELECT {ROSTER_COLUMNS} FROM roster WHERE username = ?1 ORDER BY contact"),
                        [username.as_str()],
                        roster_from_row,
                    )
                    .await?;
                    Ok((Sql::to_u64(version, "roster version")?, rows))
                })
                .await
            })
            .await
    }

    /// One roster row, if present.
    pub async fn roster_item(&self, username: &str, contact: &str) -> Result<Option<RosterRow>, StorageError> {
        let (username, contact) = (username.to_owned(), contact.to_owned());
        self.worker
            .call(move |conn| async move {
                Sql::query_opt(
                    &conn,
                    &format!("SELECT {ROSTER_COLUMNS} FROM roster WHERE username = ?1 AND contact = ?2"),
                    [username, contact],
                    roster_from_row,
                )
                .await
            })
            .await
    }

    /// Inserts or replaces the row for `row.contact` and bumps the roster version, in one
    /// transaction; returns the new version. [`StorageError::NotFound`] if the account does
    /// not exist, [`StorageError::Invalid`] for an unknown subscription value.
    pub async fn roster_upsert(&self, username: &str, row: &RosterRow) -> Result<u64, StorageError> {
        if !SUBSCRIPTIONS.contains(&row.subscription.as_str()) {
            return Err(StorageError::Invalid(format!("roster subscription {:?}", row.subscription)));
        }
        if row.contact.is_empty() {
            return Err(StorageError::Invalid("empty roster contact".into()));
        }
        let groups = serde_json::to_string(&row.groups).map_err(|e| StorageError::Invalid(e.to_string()))?;
        let username = username.to_owned();
        let row = row.clone();
        self.worker
            .call(move |conn| async move {
                Sql::in_tx(&conn, Tx::Write, async {
                    let version = bump_roster_version(&conn, &username).await?;
                    conn.execute(
                        &format!(
                            "INSERT INTO roster (username, {ROSTER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
                             ON CONFLICT (username, contact) DO UPDATE SET \
                             name = excluded.name, groups = excluded.groups, subscription = excluded.subscription, \
                             ask_out = excluded.ask_out, pending_in = excluded.pending_in, \
                             approved = excluded.approved, in_roster = excluded.in_roster"
                        ),
                        (
                            username.as_str(),
                            row.contact,
                            row.name,
                            groups,
                            row.subscription,
                            row.ask_out,
                            row.pending_in,
                            row.approved,
                            row.in_roster,
                        ),
                    )
                    .await?;
                    Ok(version)
                })
                .await
            })
            .await
    }

    /// Deletes the row for `contact`; returns the roster version after the call. Removing a
    /// contact that is not in the roster changes nothing and returns the current version
    /// unchanged. [`StorageError::NotFound`] if the account does not exist.
    pub async fn roster_remove(&self, username: &str, contact: &str) -> Result<u64, StorageError> {
        let (username, contact) = (username.to_owned(), contact.to_owned());
        self.worker
            .call(move |conn| async move {
                Sql::in_tx(&conn, Tx::Write, async {
                    let Some(current) = Sql::query_opt(
                        &conn,
                        "SELECT roster_version FROM accounts WHERE username = ?1",
                        [username.as_str()],
                        |r| Ok(r.get::<i64>(0)?),
                    )
                    .await?
                    else {
                        return Err(StorageError::NotFound);
                    };
                    let deleted = conn
                        .execute(
                            "DELETE FROM roster WHERE username = ?1 AND contact = ?2",
                            [username.as_str(), &contact],
                        )
                        .await?;
                    if deleted == 0 {
                        return Sql::to_u64(current, "roster version");
                    }
                    bump_roster_version(&conn, &username).await
                })
                .await
            })
            .await
    }

    /// Queues an offline message (XEP-0160) for `username`: a serialized stanza, kept in
    /// FIFO order. Returns `false` (and stores nothing) when the user already has
    /// `max_per_user` messages waiting. [`StorageError::NotFound`] if the account does
    /// not exist.
    pub async fn offline_push(
        &self,
        username: &str,
        stanza_xml: &str,
        max_per_user: u32,
    ) -> Result<bool, StorageError> {
        self.push_offline(username, stanza_xml, max_per_user, None).await
    }

    /// [`Store::offline_push`] of the message a replicated operation `op_id` queues: a
    /// message of that operation already here (the operation is applied again) is left
    /// as it is and counts as queued.
    pub async fn offline_push_op(
        &self,
        username: &str,
        stanza_xml: &str,
        max_per_user: u32,
        op_id: &str,
    ) -> Result<bool, StorageError> {
        self.push_offline(username, stanza_xml, max_per_user, Some(op_id.to_owned())).await
    }

    async fn push_offline(
        &self,
        username: &str,
        stanza_xml: &str,
        max_per_user: u32,
        op_id: Option<String>,
    ) -> Result<bool, StorageError> {
        let (username, stanza) = (username.to_owned(), stanza_xml.to_owned());
        self.worker
            .call(move |conn| async move {
                Sql::in_tx(&conn, Tx::Write, async {
                    if !exists(&conn, &username).await? {
                        return Err(StorageError::NotFound);
                    }
                    if let Some(op_id) = &op_id {
                        let there =
                            Sql::query_i64(&conn, "SELECT COUNT(*) FROM offline WHERE op_id = ?1", [op_id.as_str()])
                                .await?;
                        if there > 0 {
                            return Ok(true);
                        }
                    }
                    let count =
                        Sql::query_i64(&conn, "SELECT COUNT(*) FROM offline WHERE username = ?1", [username.as_str()])
                            .await?;
                    if count >= i64::from(max_per_user) {
                        return Ok(false);
                    }
                    conn.execute(
                        "INSERT INTO offline (username, stanza, op_id) VALUES (?1, ?2, ?3)",
                        libsql::params![username, stanza, op_id],
                    )
                    .await?;
                    Ok(true)
                })
                .await
            })
            .await
    }

    /// `username`'s offline messages, oldest first, each with the id of the operation
    /// that queued it (None for one queued without).
    pub async fn offline_peek_ops(&self, username: &str) -> Result<Vec<(Option<String>, String)>, StorageError> {
        let username = username.to_owned();
        self.worker
            .call(move |conn| async move {
                Sql::query_all(
                    &conn,
                    "SELECT op_id, stanza FROM offline WHERE username = ?1 ORDER BY id",
                    [username.as_str()],
                    |r| Ok((r.get::<Option<String>>(0)?, r.get::<String>(1)?)),
                )
                .await
            })
            .await
    }

    /// Deletes the offline messages of `username` queued by the operations `op_ids` (those
    /// already gone are no matter), and the `without_id` oldest of those queued without
    /// an operation id, in one transaction.
    pub async fn offline_drop_ops(
        &self,
        username: &str,
        op_ids: Vec<String>,
        without_id: u64,
    ) -> Result<(), StorageError> {
        let username = username.to_owned();
        let without_id = i64::try_from(without_id).unwrap_or(i64::MAX);
        self.worker
            .call(move |conn| async move {
                Sql::in_tx(&conn, Tx::Write, async {
                    for op_id in &op_ids {
                        conn.execute(
                            "DELETE FROM offline WHERE username = ?1 AND op_id = ?2",
                            [username.as_str(), op_id.as_str()],
                        )
                        .await?;
                    }
                    if without_id > 0 {
                        conn.execute(
                            "DELETE FROM offline WHERE id IN (SELECT id FROM offline WHERE username = ?1 \
                             AND op_id IS NULL ORDER BY id LIMIT ?2)",
                            (username.as_str(), without_id),
                        )
                        .await?;
                    }
                    Ok(())
                })
                .await
            })
            .await
    }

    /// Returns and deletes every offline message of `username`, oldest first.
    pub async fn offline_take(&self, username: &str) -> Result<Vec<String>, StorageError> {
        let username = username.to_owned();
        self.worker
            .call(move |conn| async move {
                Sql::in_tx(&conn, Tx::Write, async {
                    let messages = Sql::query_all(
                        &conn,
                        "SELECT stanza FROM offline WHERE username = ?1 ORDER BY id",
                        [username.as_str()],
                        |r| Ok(r.get::<String>(0)?),
                    )
                    .await?;
                    if !messages.is_empty() {
                        conn.execute("DELETE FROM offline WHERE username = ?1", [username.as_str()]).await?;
                    }
                    Ok(messages)
                })
                .await
            })
            .await
    }

    /// `username`'s offline messages, oldest first, without removing them.
    pub async fn offline_peek(&self, username: &str) -> Result<Vec<String>, StorageError> {
        Ok(self.offline_peek_ops(username).await?.into_iter().map(|(_, stanza)| stanza).collect())
    }

    /// Deletes the `count` oldest offline messages of `username` (what a
    /// [`Store::offline_peek`] returned and was delivered).
    pub async fn offline_drop(&self, username: &str, count: u64) -> Result<(), StorageError> {
        let username = username.to_owned();
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        self.worker
            .call(move |conn| async move {
                conn.execute(
                    "DELETE FROM offline WHERE id IN \
                     (SELECT id FROM offline WHERE username = ?1 ORDER BY id LIMIT ?2)",
                    (username.as_str(), count),
                )
                .await?;
                Ok(())
            })
            .await
    }

    /// How many offline messages wait for `username`.
    pub async fn offline_count(&self, username: &str) -> Result<u64, StorageError> {
        let username = username.to_owned();
        self.worker
            .call(move |conn| async move {
                let n = Sql::query_i64(&conn, "SELECT COUNT(*) FROM offline WHERE username = ?1", [username]).await?;
                Sql::to_u64(n, "offline count")
            })
            .await
    }

    /// The stored vCard (XEP-0054) XML of `username`, if any.
    pub async fn vcard_get(&self, username: &str) -> Result<Option<String>, StorageError> {
        let username = username.to_owned();
        self.worker
            .call(move |conn| async move {
                Sql::query_opt(&conn, "SELECT xml FROM vcards WHERE username = ?1", [username], |r| {
                    Ok(r.get::<String>(0)?)
                })
                .await
            })
            .await
    }

    /// Stores (replacing) the vCard XML of `username`. [`StorageError::NotFound`] if the
    /// account does not exist.
    pub async fn vcard_set(&self, username: &str, xml: &str) -> Result<(), StorageError> {
        let (username, xml) = (username.to_owned(), xml.to_owned());
        self.worker
            .call(move |conn| async move {
                Sql::in_tx(&conn, Tx::Write, async {
                    if !exists(&conn, &username).await? {
                        return Err(StorageError::NotFound);
                    }
                    conn.execute(
                        "INSERT INTO vcards (username, xml) VALUES (?1, ?2) \
                         ON CONFLICT (username) DO UPDATE SET xml = excluded.xml",
                        [username, xml],
                    )
                    .await?;
                    Ok(())
                })
                .await
            })
            .await
    }

    /// Round-trips a trivial query through the storage thread (for `/ready`).
    pub async fn ping(&self) -> Result<(), StorageError> {
        self.worker
            .call(|conn| async move {
                match Sql::query_i64(&conn, "SELECT 1", ()).await? {
                    1 => Ok(()),
                    other => Err(StorageError::Database(format!("SELECT 1 returned {other}"))),
                }
            })
            .await
    }
}

async fn exists(conn: &Connection, username: &str) -> Result<bool, StorageError> {
    Ok(Sql::query_opt(conn, "SELECT 1 FROM accounts WHERE username = ?1", [username], |_| Ok(())).await?.is_some())
}

/// Takes the next value of the database-wide roster version counter and makes it the
/// user's roster version. Must run inside a write transaction.
async fn bump_roster_version(conn: &Connection, username: &str) -> Result<u64, StorageError> {
    if !exists(conn, username).await? {
        return Err(StorageError::NotFound);
    }
    conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'roster_version'", ()).await?;
    let version = Sql::query_i64(conn, "SELECT value FROM counters WHERE name = 'roster_version'", ()).await?;
    conn.execute("UPDATE accounts SET roster_version = ?2 WHERE username = ?1", (username, version)).await?;
    Sql::to_u64(version, "roster version")
}

fn account_from_row(r: &Row) -> Result<AccountRecord, StorageError> {
    let scram = |first: i32| -> Result<StoredScram, StorageError> {
        Ok(StoredScram {
            hash: r.get(first)?,
            salt: r.get(first + 1)?,
            iterations: Sql::to_u32(r.get(first + 2)?, "SCRAM iteration count")?,
            stored_key: r.get(first + 3)?,
            server_key: r.get(first + 4)?,
        })
    };
    Ok(AccountRecord { username: r.get(0)?, created_at: r.get(1)?, scram_sha1: scram(2)?, scram_sha256: scram(7)? })
}

fn roster_from_row(r: &Row) -> Result<RosterRow, StorageError> {
    let groups: String = r.get(2)?;
    Ok(RosterRow {
        contact: r.get(0)?,
        name: r.get(1)?,
        groups: serde_json::from_str(&groups).map_err(|e| StorageError::Invalid(format!("roster groups: {e}")))?,
        subscription: r.get(3)?,
        ask_out: r.get(4)?,
        pending_in: r.get(5)?,
        approved: r.get(6)?,
        in_roster: r.get(7)?,
    })
}
