//! The SQL behind every archive operation. Each function runs on one connection of the
//! writer or reader thread; none of them knows which file it is working on.

use std::collections::HashSet;

use libsql::{Connection, Row, Value};

use waddle_storage::db::Tx;

use super::Sql;
use crate::{ArchiveEdge, ArchiveMetadata, ArchivedRow, MamError, MamQuery, Page};

/// What a retracted message's payload becomes: nothing is kept of the content.
const TOMBSTONE: &str = "";

/// One archive's entry for a message being inserted.
#[derive(Debug)]
pub(crate) struct EntryKey {
    pub archive: String,
    pub with_jid: String,
}

/// A message to store once, with the entries that index it.
#[derive(Debug)]
pub(crate) struct NewMessage {
    pub stanza_id: String,
    pub stamp: i64,
    pub payload: String,
    pub body: Option<String>,
    pub from_nick: Option<String>,
    pub entries: Vec<EntryKey>,
}

/// The entry in archive `?1` of the message with stanza id `?2`: the stanza id index
/// finds the candidate messages, the entry's primary key confirms the archive. `CROSS
/// JOIN` fixes that order: left to itself the planner may scan the archive's entries and
/// look each message up, which costs as much as the archive is long.
pub(crate) const ENTRY_BY_STANZA_ID: &str = "FROM messages m CROSS JOIN entries e \
     ON e.archive = ?1 AND e.stamp = m.stamp AND e.message_id = m.id WHERE m.stanza_id = ?2";

/// Rows per multi-row statement. Each statement execution has a fixed cost in libSQL
/// (binding, an error-message copy, mutexes around every call) that was a third of the
/// writer's CPU with one row per statement; 64 rows of messages (six parameters each)
/// stay far below SQLite's parameter limit.
const ROWS_PER_STATEMENT: usize = 64;

/// Inserts `msgs` inside the caller's write transaction and returns each message's own
/// outcome, in order: `Ok`, or [`MamError::Duplicate`] when one of its archives already
/// holds its stanza id (in the file, or earlier in `msgs`), or [`MamError::Invalid`];
/// nothing is written for a refused message. The outer error is a database failure
/// (the transaction must be abandoned).
///
/// Message ids are assigned here, in order, after the file's largest, so the rows of a
/// batch go in with a few multi-row statements instead of one per row, and the batch's
/// bodies are indexed for full-text search in one statement. The inserts are `OR FAIL`:
/// with the default `ABORT`, SQLite gives every multi-row statement a statement journal
/// (each page it touches copied to a temporary file first, so that the statement alone
/// can be undone), which took a quarter of the writer's time in a profile. Any failure
/// abandons the whole transaction here, so no statement needs its own undo.
pub(crate) async fn insert_batch(
    conn: &Connection,
    msgs: &[&NewMessage],
) -> Result<Vec<Result<(), MamError>>, MamError> {
    let mut outcomes: Vec<Result<(), MamError>> = msgs
        .iter()
        .map(|m| match m.entries.len() {
            1 | 2 => Ok(()),
            _ => Err(MamError::Invalid("a message is in one or two archives".into())),
        })
        .collect();
    let stored = stored_entries(conn, msgs).await?;
    let mut claimed: HashSet<(&str, &str)> = HashSet::new();
    for (msg, outcome) in msgs.iter().zip(outcomes.iter_mut()) {
        if outcome.is_err() {
            continue;
        }
        let keys = || msg.entries.iter().map(|e| (msg.stanza_id.as_str(), e.archive.as_str()));
        let held = |(id, archive): (&str, &str)| stored.contains(&(id.to_owned(), archive.to_owned()));
        if keys().any(|key| claimed.contains(&key) || (!stored.is_empty() && held(key))) {
            *outcome = Err(MamError::Duplicate(msg.stanza_id.clone()));
            continue;
        }
        claimed.extend(keys());
    }
    let accepted: Vec<&NewMessage> =
        msgs.iter().zip(&outcomes).filter(|(_, outcome)| outcome.is_ok()).map(|(msg, _)| *msg).collect();
    if accepted.is_empty() {
        return Ok(outcomes);
    }
    let first_id = Sql::query_i64(conn, "SELECT COALESCE(MAX(id), 0) + 1 FROM messages", ()).await?;
    let ids = (first_id..).zip(accepted.iter().copied());
    insert_rows(
        conn,
        "INSERT OR FAIL INTO messages (id, stanza_id, stamp, payload, body, from_nick) VALUES ",
        6,
        ids.clone().flat_map(|(id, m)| {
            [
                Value::Integer(id),
                text(&m.stanza_id),
                Value::Integer(m.stamp),
                text(&m.payload),
                m.body.as_deref().map_or(Value::Null, text),
                m.from_nick.as_deref().map_or(Value::Null, text),
            ]
        }),
    )
    .await?;
    insert_rows(
        conn,
        "INSERT OR FAIL INTO entries (archive, stamp, message_id, with_jid) VALUES ",
        4,
        ids.flat_map(|(id, m)| {
            m.entries
                .iter()
                .flat_map(move |e| [text(&e.archive), Value::Integer(m.stamp), Value::Integer(id), text(&e.with_jid)])
        }),
    )
    .await?;
    let last_id = first_id.saturating_add(i64::try_from(accepted.len()).unwrap_or(i64::MAX) - 1);
    index_bodies(conn, first_id, last_id).await?;
    Ok(outcomes)
}

/// Which of `msgs`' (stanza id, archive) pairs the file already holds. The stanza id
/// index finds candidate messages for up to [`ROWS_PER_STATEMENT`] ids per statement
/// (almost always none: stanza ids are ours and unique); each candidate's entries are
/// then looked up by primary key.
async fn stored_entries(conn: &Connection, msgs: &[&NewMessage]) -> Result<HashSet<(String, String)>, MamError> {
    let mut stored = HashSet::new();
    if msgs.is_empty() {
        return Ok(stored);
    }
    let candidates = conn.prepare(&messages_by_stanza_ids(ROWS_PER_STATEMENT.min(msgs.len()))).await?;
    let mut found: Vec<(String, i64, i64)> = Vec::new();
    for chunk in msgs.chunks(ROWS_PER_STATEMENT) {
        // A short last chunk repeats its last id: the statement has a fixed arity.
        let ids: Vec<Value> =
            (0..ROWS_PER_STATEMENT.min(msgs.len())).map(|i| text(&chunk[i.min(chunk.len() - 1)].stanza_id)).collect();
        candidates.reset();
        let mut rows = candidates.query(ids).await?;
        while let Some(row) = rows.next().await? {
            found.push((row.get(0)?, row.get(1)?, row.get(2)?));
        }
        drop(rows);
        candidates.reset();
    }
    for (stanza_id, stamp, message_id) in found {
        let archives = msgs.iter().filter(|m| m.stanza_id == stanza_id).flat_map(|m| m.entries.iter());
        for e in archives {
            let held = Sql::query_opt(
                conn,
                "SELECT 1 FROM entries WHERE archive = ?1 AND stamp = ?2 AND message_id = ?3",
                (e.archive.as_str(), stamp, message_id),
                |_| Ok(()),
            )
            .await?;
            if held.is_some() {
                stored.insert((stanza_id.clone(), e.archive.clone()));
            }
        }
    }
    Ok(stored)
}

/// The messages (stanza id, stamp, id) whose stanza id is one of `n` parameters.
pub(crate) fn messages_by_stanza_ids(n: usize) -> String {
    format!("SELECT stanza_id, stamp, id FROM messages WHERE stanza_id IN ({})", vec!["?"; n].join(", "))
}

/// Runs `insert_prefix` (`INSERT ... VALUES `) over `values`, `columns` per row, with
/// up to [`ROWS_PER_STATEMENT`] rows per statement. The full-size statement is prepared
/// once; a shorter remainder gets its own.
async fn insert_rows(
    conn: &Connection,
    insert_prefix: &str,
    columns: usize,
    values: impl Iterator<Item = Value>,
) -> Result<(), MamError> {
    let statement_for = |rows: usize| {
        let row = format!("({})", vec!["?"; columns].join(", "));
        format!("{insert_prefix}{}", vec![row; rows].join(", "))
    };
    let mut full: Option<libsql::Statement> = None;
    let mut values = values.peekable();
    while values.peek().is_some() {
        let chunk: Vec<Value> = values.by_ref().take(columns * ROWS_PER_STATEMENT).collect();
        let rows = chunk.len() / columns;
        if rows == ROWS_PER_STATEMENT {
            let stmt = match &full {
                Some(stmt) => stmt,
                None => full.insert(conn.prepare(&statement_for(rows)).await?),
            };
            stmt.reset();
            stmt.execute(chunk).await?;
            stmt.reset();
        } else {
            conn.execute(&statement_for(rows), chunk).await?;
        }
    }
    Ok(())
}

/// Indexes the bodies of messages `first..=last` for full-text search. Batched rather
/// than a per-row trigger: FTS5 flushes its pending index at every statement savepoint,
/// which made indexing one body at a time the most expensive part of an insert.
async fn index_bodies(conn: &Connection, first: i64, last: i64) -> Result<(), MamError> {
    conn.execute(
        "INSERT INTO messages_fts (rowid, body) SELECT id, body FROM messages \
         WHERE id BETWEEN ?1 AND ?2 AND body IS NOT NULL",
        (first, last),
    )
    .await?;
    Ok(())
}

/// Tombstones `target` in `archive`: the payload and body are dropped (and the message
/// leaves the full-text index), the entries keep id, stamp and `with`, and are marked
/// retracted in every archive that shares the message (the entry's own and, for a 1:1
/// message, the one its `with` JID names). `false` if there is no such id.
pub(crate) async fn retract(conn: &Connection, archive: &str, target: &str) -> Result<bool, MamError> {
    Sql::in_tx(conn, Tx::Write, async {
        let Some((stamp, message_id, with)) = Sql::query_opt(
            conn,
            &format!("SELECT e.stamp, e.message_id, e.with_jid {ENTRY_BY_STANZA_ID}"),
            (archive, target),
            |r| Ok((r.get::<i64>(0)?, r.get::<i64>(1)?, r.get::<String>(2)?)),
        )
        .await?
        else {
            return Ok(false);
        };
        conn.execute("UPDATE messages SET payload = ?2, body = NULL WHERE id = ?1", (message_id, TOMBSTONE)).await?;
        conn.execute(
            "UPDATE entries SET retracted = 1 WHERE archive IN (?1, ?2) AND stamp = ?3 AND message_id = ?4",
            (archive, with.as_str(), stamp, message_id),
        )
        .await?;
        Ok(true)
    })
    .await
}

/// Deletes every entry of `archive` and the messages no other archive still indexes.
pub(crate) async fn delete_archive(conn: &Connection, archive: &str) -> Result<(), MamError> {
    Sql::in_tx(conn, Tx::Write, async {
        // Messages this archive alone holds: the only other archive that can share one is
        // the one its `with` JID names (1:1 messages).
        conn.execute(
            "DELETE FROM messages WHERE id IN ( \
                 SELECT e.message_id FROM entries e WHERE e.archive = ?1 AND NOT EXISTS ( \
                     SELECT 1 FROM entries o WHERE o.archive = e.with_jid AND o.archive <> ?1 \
                         AND o.stamp = e.stamp AND o.message_id = e.message_id))",
            [archive],
        )
        .await?;
        conn.execute("DELETE FROM entries WHERE archive = ?1", [archive]).await?;
        Ok(())
    })
    .await
}

/// `(stamp, message id)` of `id` in `archive` (retracted or not), the ordering key
/// cursors use.
async fn position(conn: &Connection, archive: &str, id: &str) -> Result<Option<(i64, i64)>, MamError> {
    Sql::query_opt(conn, &format!("SELECT e.stamp, e.message_id {ENTRY_BY_STANZA_ID}"), (archive, id), |r| {
        Ok((r.get::<i64>(0)?, r.get::<i64>(1)?))
    })
    .await
}

async fn known_position(conn: &Connection, archive: &str, id: &str) -> Result<(i64, i64), MamError> {
    position(conn, archive, id).await?.ok_or_else(|| MamError::ItemNotFound(id.to_owned()))
}

const ROW_COLUMNS: &str =
    "m.stanza_id, e.archive, e.with_jid, m.from_nick, e.stamp, m.payload, m.body, e.retracted, e.message_id";

fn row_from(r: &Row) -> Result<(ArchivedRow, i64), MamError> {
    Ok((
        ArchivedRow {
            stanza_id: r.get(0)?,
            archive: r.get(1)?,
            with_jid: r.get(2)?,
            from_nick: r.get(3)?,
            stamp_micros: r.get(4)?,
            payload: r.get(5)?,
            body: r.get(6)?,
            retracted: r.get::<i64>(7)? != 0,
        },
        r.get(8)?,
    ))
}

/// A growing `WHERE` clause over `entries e` with its positional parameters.
#[derive(Clone)]
struct Filter {
    sql: String,
    params: Vec<Value>,
}

impl Filter {
    fn new(archive: &str) -> Filter {
        Filter { sql: "e.archive = ? AND e.retracted = 0".into(), params: vec![text(archive)] }
    }

    fn and(&mut self, clause: &str, params: impl IntoIterator<Item = Value>) {
        self.sql.push_str(" AND ");
        self.sql.push_str(clause);
        self.params.extend(params);
    }

    fn after(&mut self, (stamp, message_id): (i64, i64)) {
        self.and("(e.stamp, e.message_id) > (?, ?)", [Value::Integer(stamp), Value::Integer(message_id)]);
    }

    fn before(&mut self, (stamp, message_id): (i64, i64)) {
        self.and("(e.stamp, e.message_id) < (?, ?)", [Value::Integer(stamp), Value::Integer(message_id)]);
    }

    async fn count(&self, conn: &Connection) -> Result<u64, MamError> {
        let n =
            Sql::query_i64(conn, &format!("SELECT COUNT(*) FROM entries e WHERE {}", self.sql), self.params.clone())
                .await?;
        u64::try_from(n).map_err(|_| MamError::Database(format!("negative count: {n}")))
    }
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

/// An FTS5 query matching messages that contain every whitespace-separated term of
/// `search` (each term a quoted phrase, matched as a word prefix, so `hel` finds
/// `hello`). `None` when no term has a letter or digit (nothing can match).
pub(crate) fn fts_expression(search: &str) -> Option<String> {
    let terms: Vec<String> = search
        .split_whitespace()
        .filter(|t| t.chars().any(char::is_alphanumeric))
        .map(|t| format!("\"{}\"*", t.replace('"', "\"\"")))
        .collect();
    (!terms.is_empty()).then(|| terms.join(" "))
}

/// Runs `q` against `archive` (see [`crate::Archive::query`] for the semantics).
/// `users` selects user-archive `with` matching (a full JID matches its bare JID) over
/// room matching (`room/nick` matches the nickname).
pub(crate) async fn query(conn: &Connection, users: bool, archive: &str, q: &MamQuery) -> Result<Page, MamError> {
    Sql::in_tx(conn, Tx::Read, async {
        let mut set = Filter::new(archive);
        if let Some(with) = q.with.as_deref() {
            match with.split_once('/') {
                Some((bare, nick)) if !users && bare == archive => {
                    set.and("(SELECT from_nick FROM messages WHERE id = e.message_id) = ?", [text(nick)])
                }
                Some((bare, _)) => set.and("e.with_jid = ?", [text(bare)]),
                None => set.and("e.with_jid = ?", [text(with)]),
            }
        }
        if let Some(start) = q.start {
            set.and("e.stamp >= ?", [Value::Integer(start)]);
        }
        if let Some(end) = q.end {
            set.and("e.stamp <= ?", [Value::Integer(end)]);
        }
        if let Some(search) = q.fulltext.as_deref() {
            match fts_expression(search) {
                Some(expr) => set.and(
                    "e.message_id IN (SELECT rowid FROM messages_fts WHERE messages_fts MATCH ?)",
                    [Value::Text(expr)],
                ),
                None => set.and("0", []),
            }
        }
        if !q.ids.is_empty() {
            for id in &q.ids {
                known_position(conn, archive, id).await?;
            }
            let marks = vec!["?"; q.ids.len()].join(", ");
            set.and(
                &format!("e.message_id IN (SELECT id FROM messages WHERE stanza_id IN ({marks}))"),
                q.ids.iter().map(|id| text(id)),
            );
        }
        if let Some(id) = q.after_id.as_deref() {
            set.after(known_position(conn, archive, id).await?);
        }
        if let Some(id) = q.before_id.as_deref() {
            set.before(known_position(conn, archive, id).await?);
        }
        let count = set.count(conn).await?;

        // The RSM cursor narrows the page, not the result set.
        let mut window = set.clone();
        if let Some(id) = q.after.as_deref() {
            window.after(known_position(conn, archive, id).await?);
        }
        if let Some(Some(id)) = q.before.as_ref() {
            window.before(known_position(conn, archive, id).await?);
        }
        let backward = q.before.is_some() && q.after.is_none();
        let dir = if backward { "DESC" } else { "ASC" };
        let max = q.max.min(crate::query::MAX_PAGE);
        let limit = i64::try_from(max + 1).unwrap_or(i64::MAX);
        let mut params = window.params;
        params.push(Value::Integer(limit));
        let mut fetched = Sql::query_all(
            conn,
            &format!(
                "SELECT {ROW_COLUMNS} FROM entries e JOIN messages m ON m.id = e.message_id \
                 WHERE {} ORDER BY e.stamp {dir}, e.message_id {dir} LIMIT ?",
                window.sql
            ),
            params,
            row_from,
        )
        .await?;
        let complete = fetched.len() <= max;
        fetched.truncate(max);
        if backward {
            fetched.reverse();
        }
        let first_index = match fetched.first() {
            Some((first, message_id)) => {
                let mut before_first = set.clone();
                before_first.before((first.stamp_micros, *message_id));
                Some(before_first.count(conn).await?)
            }
            None => None,
        };
        let mut rows: Vec<ArchivedRow> = fetched.into_iter().map(|(row, _)| row).collect();
        if q.flip {
            rows.reverse();
        }
        Ok(Page { rows, complete, count, first_index, flipped: q.flip })
    })
    .await
}

/// The newest `limit` non-retracted rows of `archive`, oldest first.
pub(crate) async fn recent(conn: &Connection, archive: &str, limit: usize) -> Result<Vec<ArchivedRow>, MamError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut rows = Sql::query_all(
        conn,
        &format!(
            "SELECT {ROW_COLUMNS} FROM entries e JOIN messages m ON m.id = e.message_id \
             WHERE e.archive = ?1 AND e.retracted = 0 ORDER BY e.stamp DESC, e.message_id DESC LIMIT ?2"
        ),
        (archive, limit),
        |r| Ok(row_from(r)?.0),
    )
    .await?;
    rows.reverse();
    Ok(rows)
}

/// The oldest and newest non-retracted messages of `archive`.
pub(crate) async fn metadata(conn: &Connection, archive: &str) -> Result<ArchiveMetadata, MamError> {
    Sql::in_tx(conn, Tx::Read, async {
        let mut edges = [None, None];
        for (slot, dir) in edges.iter_mut().zip(["ASC", "DESC"]) {
            *slot = Sql::query_opt(
                conn,
                &format!(
                    "SELECT m.stanza_id, e.stamp FROM entries e JOIN messages m ON m.id = e.message_id \
                     WHERE e.archive = ?1 AND e.retracted = 0 ORDER BY e.stamp {dir}, e.message_id {dir} LIMIT 1"
                ),
                [archive],
                |r| Ok(ArchiveEdge { stanza_id: r.get(0)?, stamp_micros: r.get(1)? }),
            )
            .await?;
        }
        let [start, end] = edges;
        Ok(ArchiveMetadata { start, end })
    })
    .await
}

/// Number of stored message copies in the file (tests: one copy per 1:1 message).
#[cfg(test)]
pub(crate) async fn message_count(conn: &Connection) -> Result<i64, MamError> {
    Sql::query_i64(conn, "SELECT COUNT(*) FROM messages", ()).await
}
