//! Waddles, channels, permission tuples and persistent MUC room blobs.

use libsql::{Connection, Row};

use crate::db::{unix_now, Tx};
use crate::Sql;
use crate::{ChannelRecord, StorageError, Store, WaddleRecord};

const WADDLE_COLUMNS: &str = "id, name, description, owner, created_at";
const CHANNEL_COLUMNS: &str = "id, waddle_id, name, kind, topic, created_at";

/// Longest stored tuple text, in bytes (far above anything valid: names are at most 64
/// bytes and ids 128).
const MAX_TUPLE_BYTES: usize = 1024;

/// `?n` placeholders per `IN (...)` query (well under SQLite's variable limit).
const IN_CHUNK: usize = 500;

impl Store {
    /// Creates a waddle. [`StorageError::AlreadyExists`] if the id is taken,
    /// [`StorageError::Invalid`] for an empty id, name or owner.
    pub async fn waddle_create(&self, w: &WaddleRecord) -> Result<(), StorageError> {
        w.validate()?;
        let w = w.clone();
        self.worker
            .call(move |conn| async move {
                let inserted = conn
                    .execute(
                        &format!(
                            "INSERT INTO waddles ({WADDLE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING"
                        ),
                        (w.id, w.name, w.description, w.owner, w.created_at),
                    )
                    .await?;
                Sql::changed(inserted, StorageError::AlreadyExists)
            })
            .await
    }

    /// The waddle with this id, if any.
    pub async fn waddle(&self, id: &str) -> Result<Option<WaddleRecord>, StorageError> {
        let id = id.to_owned();
        self.worker
            .call(move |conn| async move {
                Sql::query_opt(
                    &conn,
                    &format!("SELECT {WADDLE_COLUMNS} FROM waddles WHERE id = ?1"),
                    [id],
                    waddle_from_row,
                )
                .await
            })
            .await
    }

    /// The waddles among `ids` that exist, oldest first (ties by id); unknown ids are
    /// skipped.
    pub async fn waddles_by_ids(&self, ids: &[String]) -> Result<Vec<WaddleRecord>, StorageError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = ids.to_vec();
        self.worker
            .call(move |conn| async move {
                Sql::in_tx(&conn, Tx::Read, async {
                    let mut out = Vec::with_capacity(ids.len());
                    for chunk in ids.chunks(IN_CHUNK) {
                        let placeholders = (1..=chunk.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
                        out.extend(
                            Sql::query_all(
                                &conn,
                                &format!("SELECT {WADDLE_COLUMNS} FROM waddles WHERE id IN ({placeholders})"),
                                chunk.to_vec(),
                                waddle_from_row,
                            )
                            .await?,
                        );
                    }
                    out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
                    out.dedup_by(|a, b| a.id == b.id);
                    Ok(out)
                })
                .await
            })
            .await
    }

    /// Replaces the name, description and owner of the waddle `w.id` (`created_at` is
    /// kept). [`StorageError::NotFound`] if there is no such waddle.
    pub async fn waddle_update(&self, w: &WaddleRecord) -> Result<(), StorageError> {
        w.validate()?;
        let w = w.clone();
        self.worker
            .call(move |conn| async move {
                let updated = conn
                    .execute(
                        "UPDATE waddles SET name = ?2, description = ?3, owner = ?4 WHERE id = ?1",
                        (w.id, w.name, w.description, w.owner),
                    )
                    .await?;
                Sql::changed(updated, StorageError::NotFound)
            })
            .await
    }

    /// Deletes the waddle and its channels in one transaction; returns the deleted
    /// channels (their MUC rooms and permission tuples are the caller's to remove).
    /// [`StorageError::NotFound`] if there is no such waddle (nothing is changed).
    pub async fn waddle_delete(&self, id: &str) -> Result<Vec<ChannelRecord>, StorageError> {
        let id = id.to_owned();
        self.worker
            .call(move |conn| async move {
                Sql::in_tx(&conn, Tx::Write, async {
                    if conn.execute("DELETE FROM waddles WHERE id = ?1", [id.as_str()]).await? == 0 {
                        return Err(StorageError::NotFound);
                    }
                    let channels = channels_of(&conn, &id).await?;
                    conn.execute("DELETE FROM channels WHERE waddle_id = ?1", [id.as_str()]).await?;
                    Ok(channels)
                })
                .await
            })
            .await
    }

    /// Creates a channel. [`StorageError::NotFound`] if its waddle does not exist,
    /// [`StorageError::AlreadyExists`] if the id or the name within the waddle is taken,
    /// [`StorageError::Invalid`] for an empty id or name or a kind other than `text` and
    /// `announcement`.
    pub async fn channel_create(&self, c: &ChannelRecord) -> Result<(), StorageError> {
        c.validate()?;
        let c = c.clone();
        self.worker.call(move |conn| async move { Sql::in_tx(&conn, Tx::Write, insert_channel(&conn, c)).await }).await
    }

    /// [`Store::channel_create`], unless the waddle already has `max` channels: then
    /// nothing is created and the answer is `Ok(false)`. The count and the insert are one
    /// transaction, so concurrent creations cannot exceed the limit.
    pub async fn channel_create_limited(&self, c: &ChannelRecord, max: u64) -> Result<bool, StorageError> {
        c.validate()?;
        let c = c.clone();
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        self.worker
            .call(move |conn| async move {
                Sql::in_tx(&conn, Tx::Write, async {
                    let count = Sql::query_i64(
                        &conn,
                        "SELECT COUNT(*) FROM channels WHERE waddle_id = ?1",
                        [c.waddle_id.as_str()],
                    )
                    .await?;
                    if count >= max {
                        return Ok(false);
                    }
                    insert_channel(&conn, c).await.map(|()| true)
                })
                .await
            })
            .await
    }

    /// The channel with this id, if any.
    pub async fn channel(&self, id: &str) -> Result<Option<ChannelRecord>, StorageError> {
        let id = id.to_owned();
        self.worker
            .call(move |conn| async move {
                Sql::query_opt(
                    &conn,
                    &format!("SELECT {CHANNEL_COLUMNS} FROM channels WHERE id = ?1"),
                    [id],
                    channel_from_row,
                )
                .await
            })
            .await
    }

    /// The channels of a waddle, by name (empty for an unknown waddle).
    pub async fn channels(&self, waddle_id: &str) -> Result<Vec<ChannelRecord>, StorageError> {
        let waddle_id = waddle_id.to_owned();
        self.worker.call(move |conn| async move { channels_of(&conn, &waddle_id).await }).await
    }

    /// How many channels a waddle has.
    pub async fn channel_count(&self, waddle_id: &str) -> Result<u64, StorageError> {
        let waddle_id = waddle_id.to_owned();
        self.worker
            .call(move |conn| async move {
                let n =
                    Sql::query_i64(&conn, "SELECT COUNT(*) FROM channels WHERE waddle_id = ?1", [waddle_id]).await?;
                Sql::to_u64(n, "channel count")
            })
            .await
    }

    /// Replaces the name, kind and topic of the channel `c.id` (its waddle and creation
    /// time are kept). [`StorageError::NotFound`] if there is no such channel,
    /// [`StorageError::AlreadyExists`] if another channel of the waddle has that name.
    pub async fn channel_update(&self, c: &ChannelRecord) -> Result<(), StorageError> {
        c.validate()?;
        let c = c.clone();
        self.worker
            .call(move |conn| async move {
                Sql::in_tx(&conn, Tx::Write, async {
                    let Some(waddle_id) =
                        Sql::query_opt(&conn, "SELECT waddle_id FROM channels WHERE id = ?1", [c.id.as_str()], |r| {
                            Ok(r.get::<String>(0)?)
                        })
                        .await?
                    else {
                        return Err(StorageError::NotFound);
                    };
                    let clash = Sql::query_opt(
                        &conn,
                        "SELECT 1 FROM channels WHERE waddle_id = ?1 AND name = ?2 AND id <> ?3",
                        [waddle_id.as_str(), c.name.as_str(), c.id.as_str()],
                        |_| Ok(()),
                    )
                    .await?;
                    if clash.is_some() {
                        return Err(StorageError::AlreadyExists);
                    }
                    conn.execute(
                        "UPDATE channels SET name = ?2, kind = ?3, topic = ?4 WHERE id = ?1",
                        (c.id, c.name, c.kind, c.topic),
                    )
                    .await?;
                    Ok(())
                })
                .await
            })
            .await
    }

    /// Deletes a channel. [`StorageError::NotFound`] if there is no such channel.
    pub async fn channel_delete(&self, id: &str) -> Result<(), StorageError> {
        let id = id.to_owned();
        self.worker
            .call(move |conn| async move {
                Sql::changed(conn.execute("DELETE FROM channels WHERE id = ?1", [id]).await?, StorageError::NotFound)
            })
            .await
    }

    /// Every stored permission tuple, in text form, sorted.
    pub async fn tuples_all(&self) -> Result<Vec<String>, StorageError> {
        self.worker
            .call(|conn| async move {
                Sql::query_all(&conn, "SELECT tuple FROM authz_tuples ORDER BY tuple", (), |r| Ok(r.get::<String>(0)?))
                    .await
            })
            .await
    }

    /// Stores a tuple (text form); storing it again changes nothing.
    /// [`StorageError::Invalid`] for an empty or oversized text.
    pub async fn tuple_write(&self, tuple: &str) -> Result<(), StorageError> {
        validate_tuple(tuple)?;
        let tuple = tuple.to_owned();
        self.worker
            .call(move |conn| async move {
                conn.execute("INSERT INTO authz_tuples (tuple) VALUES (?1) ON CONFLICT DO NOTHING", [tuple]).await?;
                Ok(())
            })
            .await
    }

    /// Stores several tuples in one transaction (already stored ones are fine).
    /// [`StorageError::Invalid`] (and nothing stored) if one text is empty or oversized.
    pub async fn tuples_write_batch(&self, tuples: &[String]) -> Result<(), StorageError> {
        for tuple in tuples {
            validate_tuple(tuple)?;
        }
        if tuples.is_empty() {
            return Ok(());
        }
        let tuples = tuples.to_vec();
        self.worker
            .call(move |conn| async move {
                Sql::in_tx(&conn, Tx::Write, async {
                    for tuple in &tuples {
                        conn.execute(
                            "INSERT INTO authz_tuples (tuple) VALUES (?1) ON CONFLICT DO NOTHING",
                            [tuple.as_str()],
                        )
                        .await?;
                    }
                    Ok(())
                })
                .await
            })
            .await
    }

    /// Removes a tuple (absent tuples are fine).
    pub async fn tuple_delete(&self, tuple: &str) -> Result<(), StorageError> {
        let tuple = tuple.to_owned();
        self.worker
            .call(move |conn| async move {
                conn.execute("DELETE FROM authz_tuples WHERE tuple = ?1", [tuple]).await?;
                Ok(())
            })
            .await
    }

    /// Removes every listed tuple in one transaction (absent tuples are fine).
    pub async fn tuples_delete_batch(&self, tuples: &[String]) -> Result<(), StorageError> {
        if tuples.is_empty() {
            return Ok(());
        }
        let tuples = tuples.to_vec();
        self.worker
            .call(move |conn| async move {
                Sql::in_tx(&conn, Tx::Write, async {
                    for tuple in &tuples {
                        conn.execute("DELETE FROM authz_tuples WHERE tuple = ?1", [tuple.as_str()]).await?;
                    }
                    Ok(())
                })
                .await
            })
            .await
    }

    /// The stored state of a persistent MUC room (an opaque blob), if any.
    pub async fn room_get(&self, room_jid: &str) -> Result<Option<String>, StorageError> {
        let room_jid = room_jid.to_owned();
        self.worker
            .call(move |conn| async move {
                Sql::query_opt(&conn, "SELECT blob FROM rooms WHERE jid = ?1", [room_jid], |r| Ok(r.get::<String>(0)?))
                    .await
            })
            .await
    }

    /// Stores (replacing) the state of a persistent MUC room; `listed_name` is the name
    /// under which a public room is listed (`None`: hidden). A retired room (see
    /// [`Store::room_retire`]) is not stored again: a late write from its stopping actor
    /// must not bring it back.
    pub async fn room_put(&self, room_jid: &str, blob: &str, listed_name: Option<&str>) -> Result<(), StorageError> {
        if room_jid.is_empty() {
            return Err(StorageError::Invalid("empty room JID".into()));
        }
        let (room_jid, blob, listed_name) = (room_jid.to_owned(), blob.to_owned(), listed_name.map(str::to_owned));
        self.worker
            .call(move |conn| async move {
                conn.execute(
                    "INSERT INTO rooms (jid, blob, listed_name) SELECT ?1, ?2, ?3 WHERE NOT EXISTS \
                     (SELECT 1 FROM retired_rooms WHERE jid = ?1) \
                     ON CONFLICT (jid) DO UPDATE SET blob = excluded.blob, listed_name = excluded.listed_name",
                    (room_jid, blob, listed_name),
                )
                .await?;
                Ok(())
            })
            .await
    }

    /// The stored rooms that are listed publicly, as `(jid, name)` sorted by JID, at most
    /// `limit`.
    pub async fn rooms_listed(&self, limit: u32) -> Result<Vec<(String, String)>, StorageError> {
        self.worker
            .call(move |conn| async move {
                Sql::query_all(
                    &conn,
                    "SELECT jid, listed_name FROM rooms WHERE listed_name IS NOT NULL ORDER BY jid LIMIT ?1",
                    [limit],
                    |r| Ok((r.get::<String>(0)?, r.get::<String>(1)?)),
                )
                .await
            })
            .await
    }

    /// Forgets the room of a deleted channel for good: its state goes and its JID is
    /// marked retired, so it can neither be stored nor created again.
    pub async fn room_retire(&self, room_jid: &str) -> Result<(), StorageError> {
        if room_jid.is_empty() {
            return Err(StorageError::Invalid("empty room JID".into()));
        }
        let room_jid = room_jid.to_owned();
        let now = unix_now();
        self.worker
            .call(move |conn| async move {
                Sql::in_tx(&conn, Tx::Write, async {
                    conn.execute("DELETE FROM rooms WHERE jid = ?1", [room_jid.as_str()]).await?;
                    conn.execute(
                        "INSERT INTO retired_rooms (jid, retired_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                        (room_jid.as_str(), now),
                    )
                    .await?;
                    Ok(())
                })
                .await
            })
            .await
    }

    /// Whether [`Store::room_retire`] retired this room JID.
    pub async fn room_is_retired(&self, room_jid: &str) -> Result<bool, StorageError> {
        let room_jid = room_jid.to_owned();
        self.worker
            .call(move |conn| async move {
                Ok(Sql::query_opt(&conn, "SELECT 1 FROM retired_rooms WHERE jid = ?1", [room_jid], |_| Ok(()))
                    .await?
                    .is_some())
            })
            .await
    }

    /// Forgets a persistent MUC room (absent rooms are fine).
    pub async fn room_delete(&self, room_jid: &str) -> Result<(), StorageError> {
        let room_jid = room_jid.to_owned();
        self.worker
            .call(move |conn| async move {
                conn.execute("DELETE FROM rooms WHERE jid = ?1", [room_jid]).await?;
                Ok(())
            })
            .await
    }
}

/// Inserts a channel of an existing waddle (inside a write transaction).
async fn insert_channel(conn: &Connection, c: ChannelRecord) -> Result<(), StorageError> {
    if Sql::query_opt(conn, "SELECT 1 FROM waddles WHERE id = ?1", [c.waddle_id.as_str()], |_| Ok(())).await?.is_none()
    {
        return Err(StorageError::NotFound);
    }
    let inserted = conn
        .execute(
            &format!("INSERT INTO channels ({CHANNEL_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING"),
            (c.id, c.waddle_id, c.name, c.kind, c.topic, c.created_at),
        )
        .await?;
    Sql::changed(inserted, StorageError::AlreadyExists)
}

async fn channels_of(conn: &Connection, waddle_id: &str) -> Result<Vec<ChannelRecord>, StorageError> {
    Sql::query_all(
        conn,
        &format!("SELECT {CHANNEL_COLUMNS} FROM channels WHERE waddle_id = ?1 ORDER BY name, id"),
        [waddle_id],
        channel_from_row,
    )
    .await
}

fn validate_tuple(tuple: &str) -> Result<(), StorageError> {
    if tuple.is_empty() || tuple.len() > MAX_TUPLE_BYTES {
        return Err(StorageError::Invalid(format!("tuple text must be 1 to {MAX_TUPLE_BYTES} bytes")));
    }
    Ok(())
}

fn waddle_from_row(r: &Row) -> Result<WaddleRecord, StorageError> {
    Ok(WaddleRecord { id: r.get(0)?, name: r.get(1)?, description: r.get(2)?, owner: r.get(3)?, created_at: r.get(4)? })
}

fn channel_from_row(r: &Row) -> Result<ChannelRecord, StorageError> {
    Ok(ChannelRecord {
        id: r.get(0)?,
        waddle_id: r.get(1)?,
        name: r.get(2)?,
        kind: r.get(3)?,
        topic: r.get(4)?,
        created_at: r.get(5)?,
    })
}
