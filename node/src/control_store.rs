//! Waddles, channels and permission tuples in the Raft-replicated control plane:
//! [`RaftControlStore`] implements the HTTP API's [`ControlStore`] over a
//! [`ControlPlane`], [`load_permissions`] builds the node's permission index from the
//! replicated state and [`spawn_feed`] keeps it in step, in log order.
//!
//! Waddles and channels are records of kind `"waddle"` and `"channel"` whose body is the
//! storage record as JSON. Invariants the local database keeps with transactions (the
//! channel limit, channel names unique within a waddle, deleting a waddle with all its
//! channels) are kept with compare-and-set batches: every change that could break one also
//! rewrites its waddle's record at the version it read, so of two concurrent changes one
//! conflicts and is re-evaluated against the other's outcome.
//!
//! Reads come from this node's applied state: a change made through this node is visible
//! to its next read (proposals return once applied here); changes made through other nodes
//! appear when this node applies them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use waddle_api::{Commit, ControlFuture, ControlStore, Permissions};
use waddle_control::{Applied, Command, CommandResult, ControlError, ControlPlane, ControlState, Record, Tuple};
use waddle_storage::{ChannelRecord, StorageError, WaddleRecord};

/// The record kind of waddles.
pub const WADDLE_KIND: &str = "waddle";
/// The record kind of channels.
pub const CHANNEL_KIND: &str = "channel";

/// How often a compare-and-set change is re-evaluated after losing a race before giving up.
const MAX_ATTEMPTS: usize = 16;

/// [`ControlStore`] over the control plane. Tuple changes are [`Commit::Replicated`]: the
/// node's [`spawn_feed`] applies them to the permission index.
#[derive(Clone)]
pub struct RaftControlStore {
    plane: Arc<ControlPlane>,
}

impl RaftControlStore {
    pub fn new(plane: Arc<ControlPlane>) -> RaftControlStore {
        RaftControlStore { plane }
    }
}

/// What a compare-and-set attempt came to.
enum Attempt<T> {
    Done(T),
    /// Lost a race: read again and retry.
    Conflict,
}

fn control_error(e: ControlError) -> StorageError {
    match e {
        ControlError::Shutdown => StorageError::Closed,
        other => StorageError::Database(format!("control plane: {other}")),
    }
}

/// Proposes `cmd`; `Ok(Attempt::Conflict)` if a compare-and-set in it failed.
async fn propose(plane: &ControlPlane, cmd: Command) -> Result<Attempt<CommandResult>, StorageError> {
    match plane.propose(cmd).await.map_err(control_error)? {
        CommandResult::Conflict { .. } => Ok(Attempt::Conflict),
        CommandResult::Refused(why) => Err(StorageError::Database(format!("control plane refused the change: {why}"))),
        applied => Ok(Attempt::Done(applied)),
    }
}

/// Runs `attempt` until it is not [`Attempt::Conflict`], at most [`MAX_ATTEMPTS`] times.
async fn with_retries<T, F, Fut>(what: &str, mut attempt: F) -> Result<T, StorageError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Attempt<T>, StorageError>>,
{
    for _ in 0..MAX_ATTEMPTS {
        if let Attempt::Done(v) = attempt().await? {
            return Ok(v);
        }
    }
    Err(StorageError::Database(format!("control plane: {what}: gave up after {MAX_ATTEMPTS} conflicting attempts")))
}

fn decode<T: DeserializeOwned>(kind: &str, id: &str, record: &Record) -> Result<T, StorageError> {
    serde_json::from_value(record.body.clone())
        .map_err(|e| StorageError::Invalid(format!("control record {kind}/{id} does not decode: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<serde_json::Value, StorageError> {
    serde_json::to_value(value).map_err(|e| StorageError::Invalid(format!("cannot encode a control record: {e}")))
}

fn put(kind: &str, id: &str, body: serde_json::Value, expected_version: u64) -> Command {
    Command::PutRecord { kind: kind.to_owned(), id: id.to_owned(), body, expected_version: Some(expected_version) }
}

/// Rewrites `record` unchanged, at its current version: the batch holding this conflicts if
/// anything else rewrote the record since it was read.
fn touch(kind: &str, id: &str, record: &Record) -> Command {
    put(kind, id, record.body.clone(), record.version)
}

fn delete(kind: &str, id: &str) -> Command {
    Command::DeleteRecord { kind: kind.to_owned(), id: id.to_owned() }
}

/// The tuple text form (`object#relation@subject`) as the control plane's tuple, validated
/// by the permission model's parser.
fn to_control_tuple(text: &str) -> Result<Tuple, StorageError> {
    let t: waddle_authz::Tuple = text.parse().map_err(|e| StorageError::Invalid(format!("tuple {text:?}: {e}")))?;
    Ok(Tuple::new(t.object.to_string(), t.relation, t.subject.to_string()))
}

/// The control plane's tuple in text form.
pub fn tuple_text(t: &Tuple) -> String {
    format!("{}#{}@{}", t.object, t.relation, t.subject)
}

fn to_control_tuples(texts: &[String]) -> Result<Vec<Tuple>, StorageError> {
    texts.iter().map(|t| to_control_tuple(t)).collect()
}

fn waddle_of(state: &ControlState, id: &str) -> Result<Option<(WaddleRecord, Record)>, StorageError> {
    match state.record(WADDLE_KIND, id) {
        Some(r) => Ok(Some((decode(WADDLE_KIND, id, r)?, r.clone()))),
        None => Ok(None),
    }
}

fn channel_of(state: &ControlState, id: &str) -> Result<Option<(ChannelRecord, Record)>, StorageError> {
    match state.record(CHANNEL_KIND, id) {
        Some(r) => Ok(Some((decode(CHANNEL_KIND, id, r)?, r.clone()))),
        None => Ok(None),
    }
}

/// The channels of a waddle, by name then id (as the local store orders them).
fn channels_of(state: &ControlState, waddle_id: &str) -> Result<Vec<ChannelRecord>, StorageError> {
    let mut out = Vec::new();
    for (id, record) in state.records_of_kind(CHANNEL_KIND) {
        // Skip other waddles' channels without decoding them whole.
        if record.body.get("waddle_id").and_then(serde_json::Value::as_str) != Some(waddle_id) {
            continue;
        }
        let channel: ChannelRecord = decode(CHANNEL_KIND, id, record)?;
        if channel.waddle_id == waddle_id {
            out.push(channel);
        }
    }
    out.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    Ok(out)
}

/// The waddles among `ids` that exist, oldest first (ties by id), each once.
fn waddles_by_ids(state: &ControlState, ids: &[String]) -> Result<Vec<WaddleRecord>, StorageError> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids.iter().collect::<BTreeSet<_>>() {
        if let Some((w, _)) = waddle_of(state, id)? {
            out.push(w);
        }
    }
    out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(out)
}

impl RaftControlStore {
    /// Proposes a removal by pattern (`DeleteObject`, `RemoveUser`) and finds the log index
    /// it was applied at, and what it removed, in this node's change feed (the control
    /// plane's result of a removal names no index).
    async fn remove_by_pattern(&self, cmd: Command, known: Vec<String>) -> Result<(Commit, Vec<String>), StorageError> {
        let mut feed = self.plane.subscribe();
        let result = self.plane.propose(cmd.clone()).await.map_err(control_error)?;
        if let CommandResult::Refused(why) = result {
            return Err(StorageError::Database(format!("control plane refused the change: {why}")));
        }
        // `propose` returns once the entry is applied here, and the feed is sent before the
        // applied index moves: the entry's notification is already queued.
        let mut mine: Option<u64> = None;
        let mut removed: BTreeSet<Tuple> = BTreeSet::new();
        let mut last_seen = 0u64;
        loop {
            match feed.try_recv() {
                Ok(applied) => {
                    last_seen = last_seen.max(applied.index);
                    if applied.command.as_ref() == Some(&cmd) {
                        // An identical command proposed elsewhere may follow ours: waiting
                        // for the later one is safe, and the union is what both removed.
                        mine = Some(applied.index);
                        if let CommandResult::Removed(list) = applied.result {
                            removed.extend(list);
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
        match mine {
            Some(index) => Ok((Commit::Replicated(index), removed.iter().map(tuple_text).collect())),
            None => {
                // The notification was lost (the feed overflowed, or a snapshot replaced the
                // state): every later notification the node's feed also handles, so waiting
                // for the last one seen still covers this entry.
                let index = if last_seen > 0 { last_seen } else { self.plane.state().applied };
                tracing::warn!(
                    index,
                    "control store: removal not found in the change feed; reporting what memory knew"
                );
                let removed = match result {
                    CommandResult::Removed(list) => list.iter().map(tuple_text).collect(),
                    _ => known,
                };
                Ok((Commit::Replicated(index), removed))
            }
        }
    }
}

impl ControlStore for RaftControlStore {
    fn tuples_all(&self) -> ControlFuture<Vec<String>> {
        let state = self.plane.state();
        Box::pin(async move { Ok(state.tuples().map(tuple_text).collect()) })
    }

    fn change_tuples(&self, write: Vec<String>, delete: Vec<String>) -> ControlFuture<Commit> {
        let plane = self.plane.clone();
        Box::pin(async move {
            if write.is_empty() && delete.is_empty() {
                return Ok(Commit::Applied);
            }
            let cmd = Command::WriteTuples { write: to_control_tuples(&write)?, delete: to_control_tuples(&delete)? };
            match propose(&plane, cmd).await? {
                Attempt::Done(CommandResult::Ok { index }) => Ok(Commit::Replicated(index)),
                Attempt::Done(other) => {
                    Err(StorageError::Database(format!("control plane: unexpected result of a tuple write: {other:?}")))
                }
                Attempt::Conflict => Err(StorageError::Database("control plane: a tuple write conflicted".into())),
            }
        })
    }

    fn delete_object(&self, object: String, known: Vec<String>) -> ControlFuture<(Commit, Vec<String>)> {
        let this = self.clone();
        Box::pin(async move { this.remove_by_pattern(Command::DeleteObject { object }, known).await })
    }

    fn remove_user(&self, username: String, known: Vec<String>) -> ControlFuture<(Commit, Vec<String>)> {
        let this = self.clone();
        Box::pin(async move { this.remove_by_pattern(Command::RemoveUser { user: username }, known).await })
    }

    fn waddle(&self, id: &str) -> ControlFuture<Option<WaddleRecord>> {
        let found = waddle_of(&self.plane.state(), id).map(|w| w.map(|(w, _)| w));
        Box::pin(async move { found })
    }

    fn waddles_by_ids(&self, ids: &[String]) -> ControlFuture<Vec<WaddleRecord>> {
        let found = waddles_by_ids(&self.plane.state(), ids);
        Box::pin(async move { found })
    }

    fn waddle_create(&self, waddle: &WaddleRecord) -> ControlFuture<()> {
        let (plane, waddle) = (self.plane.clone(), waddle.clone());
        Box::pin(async move {
            waddle.validate()?;
            match propose(&plane, put(WADDLE_KIND, &waddle.id, encode(&waddle)?, 0)).await? {
                Attempt::Done(_) => Ok(()),
                Attempt::Conflict => Err(StorageError::AlreadyExists),
            }
        })
    }

    fn waddle_update(&self, waddle: &WaddleRecord) -> ControlFuture<()> {
        let (plane, waddle) = (self.plane.clone(), waddle.clone());
        Box::pin(async move {
            waddle.validate()?;
            with_retries("updating a waddle", || async {
                let Some((mut current, record)) = waddle_of(&plane.state(), &waddle.id)? else {
                    return Err(StorageError::NotFound);
                };
                current.name = waddle.name.clone();
                current.description = waddle.description.clone();
                current.owner = waddle.owner.clone();
                Ok(match propose(&plane, put(WADDLE_KIND, &waddle.id, encode(&current)?, record.version)).await? {
                    Attempt::Done(_) => Attempt::Done(()),
                    Attempt::Conflict => Attempt::Conflict,
                })
            })
            .await
        })
    }

    fn waddle_delete(&self, id: &str) -> ControlFuture<Vec<ChannelRecord>> {
        let (plane, id) = (self.plane.clone(), id.to_owned());
        Box::pin(async move {
            with_retries("deleting a waddle", || async {
                let state = plane.state();
                let Some((_, record)) = waddle_of(&state, &id)? else {
                    return Err(StorageError::NotFound);
                };
                let channels = channels_of(&state, &id)?;
                // Touching the waddle first: a channel created meanwhile (which touches it
                // too) makes this conflict, so no channel outlives its waddle.
                let mut batch = vec![touch(WADDLE_KIND, &id, &record), delete(WADDLE_KIND, &id)];
                batch.extend(channels.iter().map(|c| delete(CHANNEL_KIND, &c.id)));
                Ok(match propose(&plane, Command::Batch(batch)).await? {
                    Attempt::Done(_) => Attempt::Done(channels),
                    Attempt::Conflict => Attempt::Conflict,
                })
            })
            .await
        })
    }

    fn channel(&self, id: &str) -> ControlFuture<Option<ChannelRecord>> {
        let found = channel_of(&self.plane.state(), id).map(|c| c.map(|(c, _)| c));
        Box::pin(async move { found })
    }

    fn channels(&self, waddle_id: &str) -> ControlFuture<Vec<ChannelRecord>> {
        let found = channels_of(&self.plane.state(), waddle_id);
        Box::pin(async move { found })
    }

    fn channel_create_limited(&self, channel: &ChannelRecord, max: u64) -> ControlFuture<bool> {
        let (plane, channel) = (self.plane.clone(), channel.clone());
        Box::pin(async move {
            channel.validate()?;
            let body = encode(&channel)?;
            with_retries("creating a channel", || async {
                let state = plane.state();
                // Counted first, as the local store does (a limit of 0 answers `false` even
                // for an unknown waddle).
                let siblings = channels_of(&state, &channel.waddle_id)?;
                if u64::try_from(siblings.len()).unwrap_or(u64::MAX) >= max {
                    return Ok(Attempt::Done(false));
                }
                let Some((_, waddle)) = waddle_of(&state, &channel.waddle_id)? else {
                    return Err(StorageError::NotFound);
                };
                if state.record(CHANNEL_KIND, &channel.id).is_some() || siblings.iter().any(|c| c.name == channel.name)
                {
                    return Err(StorageError::AlreadyExists);
                }
                // The waddle is touched at the version read: of two concurrent creations
                // in one waddle, one conflicts and counts again.
                let batch = Command::Batch(vec![
                    touch(WADDLE_KIND, &channel.waddle_id, &waddle),
                    put(CHANNEL_KIND, &channel.id, body.clone(), 0),
                ]);
                Ok(match propose(&plane, batch).await? {
                    Attempt::Done(_) => Attempt::Done(true),
                    Attempt::Conflict => Attempt::Conflict,
                })
            })
            .await
        })
    }

    fn channel_update(&self, channel: &ChannelRecord) -> ControlFuture<()> {
        let (plane, channel) = (self.plane.clone(), channel.clone());
        Box::pin(async move {
            channel.validate()?;
            with_retries("updating a channel", || async {
                let state = plane.state();
                let Some((mut current, record)) = channel_of(&state, &channel.id)? else {
                    return Err(StorageError::NotFound);
                };
                let renamed = current.name != channel.name;
                let mut batch = Vec::with_capacity(2);
                if renamed {
                    if channels_of(&state, &current.waddle_id)?
                        .iter()
                        .any(|c| c.name == channel.name && c.id != channel.id)
                    {
                        return Err(StorageError::AlreadyExists);
                    }
                    // A rename touches the waddle, as creations do: names stay unique.
                    if let Some((_, waddle)) = waddle_of(&state, &current.waddle_id)? {
                        batch.push(touch(WADDLE_KIND, &current.waddle_id, &waddle));
                    }
                }
                current.name = channel.name.clone();
                current.kind = channel.kind.clone();
                current.topic = channel.topic.clone();
                batch.push(put(CHANNEL_KIND, &channel.id, encode(&current)?, record.version));
                Ok(match propose(&plane, Command::Batch(batch)).await? {
                    Attempt::Done(_) => Attempt::Done(()),
                    Attempt::Conflict => Attempt::Conflict,
                })
            })
            .await
        })
    }

    fn channel_delete(&self, id: &str) -> ControlFuture<()> {
        let (plane, id) = (self.plane.clone(), id.to_owned());
        Box::pin(async move {
            with_retries("deleting a channel", || async {
                let Some((_, record)) = channel_of(&plane.state(), &id)? else {
                    return Err(StorageError::NotFound);
                };
                // Touched first so that of two concurrent deletions one finds nothing.
                let batch = Command::Batch(vec![touch(CHANNEL_KIND, &id, &record), delete(CHANNEL_KIND, &id)]);
                Ok(match propose(&plane, batch).await? {
                    Attempt::Done(_) => Attempt::Done(()),
                    Attempt::Conflict => Attempt::Conflict,
                })
            })
            .await
        })
    }
}

// ---------------------------------------------------------------------------------------
// The permission index

/// The node's permission index as of the control plane's applied state, over a
/// [`RaftControlStore`]. Start [`spawn_feed`] right after, so it follows the log.
pub async fn load_permissions(plane: Arc<ControlPlane>) -> Permissions {
    let state = plane.state();
    let control: Arc<dyn ControlStore> = Arc::new(RaftControlStore::new(plane));
    Permissions::from_tuples(control, state.tuples().map(tuple_text), state.applied)
}

/// Rebuilds the index from the applied state.
fn resync(plane: &ControlPlane, permissions: &Permissions) {
    let state = plane.state();
    permissions.reset_replicated(state.applied, state.tuples().map(tuple_text));
    tracing::info!(applied = state.applied, "permissions: rebuilt from the control state");
}

/// What a command did to the tuples, as `(write, delete)` applied deletes first, or `None`
/// when that cannot be told from the command and its result (a batch mixing removals by
/// pattern with writes): then the index is rebuilt from the state.
fn tuple_changes(command: &Command, result: &CommandResult) -> Option<(Vec<String>, Vec<String>)> {
    fn flatten<'a>(cmd: &'a Command, out: &mut Vec<&'a Command>) {
        match cmd {
            Command::Batch(cmds) => cmds.iter().for_each(|c| flatten(c, out)),
            other => out.push(other),
        }
    }
    if !result.is_applied() {
        return Some((Vec::new(), Vec::new()));
    }
    let mut commands = Vec::new();
    flatten(command, &mut commands);
    let removes = commands.iter().any(|c| matches!(c, Command::DeleteObject { .. } | Command::RemoveUser { .. }));
    let writes = commands.iter().any(|c| matches!(c, Command::WriteTuples { .. }));
    if removes {
        if writes {
            return None;
        }
        let removed = match result {
            CommandResult::Removed(list) => list.iter().map(tuple_text).collect(),
            _ => Vec::new(),
        };
        return Some((Vec::new(), removed));
    }
    // Writes in order: the last one touching a tuple decides whether it exists.
    let mut present: BTreeMap<&Tuple, bool> = BTreeMap::new();
    for c in commands {
        if let Command::WriteTuples { write, delete } = c {
            for t in delete {
                present.insert(t, false);
            }
            for t in write {
                present.insert(t, true);
            }
        }
    }
    let (mut write, mut delete) = (Vec::new(), Vec::new());
    for (t, exists) in present {
        if exists {
            write.push(tuple_text(t));
        } else {
            delete.push(tuple_text(t));
        }
    }
    Some((write, delete))
}

fn apply(plane: &ControlPlane, permissions: &Permissions, applied: Applied) {
    let Some(command) = &applied.command else {
        // A snapshot replaced the whole state.
        resync(plane, permissions);
        return;
    };
    match tuple_changes(command, &applied.result) {
        Some((write, delete)) => permissions.apply_replicated(applied.index, &write, &delete),
        None => resync(plane, permissions),
    }
}

/// Keeps `permissions` in step with the control plane: every applied entry, in log order,
/// goes through [`Permissions::apply_replicated`] (entries that change no tuple just move
/// its applied index, which releases writers waiting for it). If the change feed
/// overflowed, or a snapshot replaced the state, the index is rebuilt from the state.
/// Anything applied between [`load_permissions`] and this call is caught up first. Runs
/// until the returned task is aborted (the task holds the plane, so the feed never closes
/// by itself while it runs).
pub fn spawn_feed(plane: Arc<ControlPlane>, permissions: Arc<Permissions>) -> tokio::task::JoinHandle<()> {
    let mut feed = plane.subscribe();
    // Subscribed first, then read: nothing falls between the two (notifications at or below
    // the rebuilt index are ignored).
    if permissions.applied_index() < plane.state().applied {
        resync(&plane, &permissions);
    }
    tokio::spawn(async move {
        loop {
            match feed.recv().await {
                Ok(applied) => apply(&plane, &permissions, applied),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "permissions: the control feed overflowed; rebuilding");
                    resync(&plane, &permissions);
                }
                Err(RecvError::Closed) => {
                    tracing::info!("permissions: the control feed ended");
                    return;
                }
            }
        }
    })
}

/// The node's [`ControlStore`]: its own database on a single node; on a cluster member the
/// control plane, once the node has opened it (until then every call fails, and nothing
/// serves clients before it is set).
pub struct NodeControl {
    local: waddle_storage::Store,
    clustered: bool,
    replicated: std::sync::OnceLock<RaftControlStore>,
}

impl NodeControl {
    pub fn new(local: waddle_storage::Store, clustered: bool) -> NodeControl {
        NodeControl { local, clustered, replicated: std::sync::OnceLock::new() }
    }

    pub fn set_replicated(&self, store: RaftControlStore) {
        let _ = self.replicated.set(store);
    }

    /// The control plane's store once set; `None` on a single node; an error on a cluster
    /// member that has not opened it yet.
    fn replicated(&self) -> Result<Option<&RaftControlStore>, StorageError> {
        match (self.replicated.get(), self.clustered) {
            (Some(replicated), _) => Ok(Some(replicated)),
            (None, false) => Ok(None),
            (None, true) => Err(StorageError::Database("this node has not joined its cluster yet".into())),
        }
    }

    fn target(&self) -> Result<&dyn ControlStore, StorageError> {
        Ok(match self.replicated()? {
            Some(replicated) => replicated,
            None => &self.local,
        })
    }
}

/// Record kinds of persistent MUC rooms on a cluster member.
pub const ROOM_KIND: &str = "room";
pub const RETIRED_ROOM_KIND: &str = "retired_room";

/// A persistent room's stored form in the control plane.
#[derive(Serialize, serde::Deserialize)]
struct RoomBody {
    snapshot: String,
    listed: Option<String>,
}

/// Persistent rooms (snapshots: configuration, affiliations, subject) and retired room
/// JIDs: the local database on a single node, control-plane records on a cluster member,
/// so a room's configuration survives the room moving to another node.
impl NodeControl {
    fn plane(&self) -> Result<Option<&Arc<ControlPlane>>, StorageError> {
        Ok(self.replicated()?.map(|replicated| &replicated.plane))
    }

    pub async fn room_get(&self, jid: &str) -> Result<Option<String>, StorageError> {
        let Some(plane) = self.plane()? else { return self.local.room_get(jid).await };
        match plane.state().record(ROOM_KIND, jid) {
            Some(record) => Ok(Some(decode::<RoomBody>(ROOM_KIND, jid, record)?.snapshot)),
            None => Ok(None),
        }
    }

    pub async fn room_put(&self, jid: &str, snapshot: &str, listed: Option<&str>) -> Result<(), StorageError> {
        let Some(plane) = self.plane()? else { return self.local.room_put(jid, snapshot, listed).await };
        if plane.state().record(RETIRED_ROOM_KIND, jid).is_some() {
            // A late write of a destroyed room's actor must not bring it back.
            return Ok(());
        }
        let body = encode(&RoomBody { snapshot: snapshot.to_owned(), listed: listed.map(str::to_owned) })?;
        let cmd = Command::PutRecord { kind: ROOM_KIND.into(), id: jid.to_owned(), body, expected_version: None };
        propose(plane, cmd).await.map(|_| ())
    }

    pub async fn room_delete(&self, jid: &str) -> Result<(), StorageError> {
        let Some(plane) = self.plane()? else { return self.local.room_delete(jid).await };
        propose(plane, delete(ROOM_KIND, jid)).await.map(|_| ())
    }

    /// Retires a room JID for good (its channel was deleted) and drops its snapshot.
    pub async fn room_retire(&self, jid: &str) -> Result<(), StorageError> {
        let Some(plane) = self.plane()? else { return self.local.room_retire(jid).await };
        let retire = Command::PutRecord {
            kind: RETIRED_ROOM_KIND.into(),
            id: jid.to_owned(),
            body: serde_json::json!({}),
            expected_version: None,
        };
        propose(plane, Command::Batch(vec![retire, delete(ROOM_KIND, jid)])).await.map(|_| ())
    }

    pub async fn room_is_retired(&self, jid: &str) -> Result<bool, StorageError> {
        let Some(plane) = self.plane()? else { return self.local.room_is_retired(jid).await };
        Ok(plane.state().record(RETIRED_ROOM_KIND, jid).is_some())
    }

    /// Listed persistent rooms: (JID, name), at most `limit`.
    pub async fn rooms_listed(&self, limit: u32) -> Result<Vec<(String, String)>, StorageError> {
        let Some(plane) = self.plane()? else { return self.local.rooms_listed(limit).await };
        let state = plane.state();
        let mut listed = Vec::new();
        for (jid, record) in state.records_of_kind(ROOM_KIND) {
            if listed.len() >= limit as usize {
                break;
            }
            if let Some(name) = decode::<RoomBody>(ROOM_KIND, jid, record)?.listed {
                listed.push((jid.to_owned(), name));
            }
        }
        Ok(listed)
    }
}

fn not_ready<T: Send + 'static>(e: StorageError) -> ControlFuture<T> {
    Box::pin(async move { Err(e) })
}

macro_rules! delegate {
    ($self:ident, $method:ident ( $($arg:expr),* )) => {
        match $self.target() {
            Ok(target) => target.$method($($arg),*),
            Err(e) => not_ready(e),
        }
    };
}

impl ControlStore for NodeControl {
    fn tuples_all(&self) -> ControlFuture<Vec<String>> {
        delegate!(self, tuples_all())
    }
    fn change_tuples(&self, write: Vec<String>, delete: Vec<String>) -> ControlFuture<Commit> {
        delegate!(self, change_tuples(write, delete))
    }
    fn delete_object(&self, object: String, known: Vec<String>) -> ControlFuture<(Commit, Vec<String>)> {
        delegate!(self, delete_object(object, known))
    }
    fn remove_user(&self, username: String, known: Vec<String>) -> ControlFuture<(Commit, Vec<String>)> {
        delegate!(self, remove_user(username, known))
    }
    fn waddle(&self, id: &str) -> ControlFuture<Option<WaddleRecord>> {
        delegate!(self, waddle(id))
    }
    fn waddles_by_ids(&self, ids: &[String]) -> ControlFuture<Vec<WaddleRecord>> {
        delegate!(self, waddles_by_ids(ids))
    }
    fn waddle_create(&self, waddle: &WaddleRecord) -> ControlFuture<()> {
        delegate!(self, waddle_create(waddle))
    }
    fn waddle_update(&self, waddle: &WaddleRecord) -> ControlFuture<()> {
        delegate!(self, waddle_update(waddle))
    }
    fn waddle_delete(&self, id: &str) -> ControlFuture<Vec<ChannelRecord>> {
        delegate!(self, waddle_delete(id))
    }
    fn channel(&self, id: &str) -> ControlFuture<Option<ChannelRecord>> {
        delegate!(self, channel(id))
    }
    fn channels(&self, waddle_id: &str) -> ControlFuture<Vec<ChannelRecord>> {
        delegate!(self, channels(waddle_id))
    }
    fn channel_create_limited(&self, channel: &ChannelRecord, max: u64) -> ControlFuture<bool> {
        delegate!(self, channel_create_limited(channel, max))
    }
    fn channel_update(&self, channel: &ChannelRecord) -> ControlFuture<()> {
        delegate!(self, channel_update(channel))
    }
    fn channel_delete(&self, id: &str) -> ControlFuture<()> {
        delegate!(self, channel_delete(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(object: &str, relation: &str, subject: &str) -> Tuple {
        Tuple::new(object, relation, subject)
    }

    fn write(write: Vec<Tuple>, delete: Vec<Tuple>) -> Command {
        Command::WriteTuples { write, delete }
    }

    fn texts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn tuple_changes_of_each_command() {
        let a = tuple("waddle:w1", "member", "user:a");
        let b = tuple("waddle:w1", "member", "user:b");
        let ok = CommandResult::Ok { index: 3 };

        let cmd = write(vec![a.clone()], vec![b.clone()]);
        assert_eq!(
            tuple_changes(&cmd, &ok),
            Some((texts(&["waddle:w1#member@user:a"]), texts(&["waddle:w1#member@user:b"])))
        );

        // A removal reports what the state machine removed.
        let removed = CommandResult::Removed(vec![a.clone()]);
        let cmd = Command::RemoveUser { user: "a".into() };
        assert_eq!(tuple_changes(&cmd, &removed), Some((vec![], texts(&["waddle:w1#member@user:a"]))));

        // Nothing happened: nothing to apply (the index still moves).
        let cmd = write(vec![a.clone()], vec![]);
        assert_eq!(tuple_changes(&cmd, &CommandResult::Conflict { current_version: 1 }), Some((vec![], vec![])));
        let cmd = Command::DeleteRecord { kind: "waddle".into(), id: "w1".into() };
        assert_eq!(tuple_changes(&cmd, &ok), Some((vec![], vec![])));

        // Writes in a batch apply in order: the last word on a tuple wins.
        let cmd = Command::Batch(vec![
            write(vec![a.clone(), b.clone()], vec![]),
            Command::Batch(vec![write(vec![], vec![a.clone()])]),
            Command::DeleteRecord { kind: "waddle".into(), id: "w1".into() },
        ]);
        assert_eq!(
            tuple_changes(&cmd, &ok),
            Some((texts(&["waddle:w1#member@user:b"]), texts(&["waddle:w1#member@user:a"])))
        );

        // Removals mixed with writes cannot be ordered from the result: rebuild.
        let cmd =
            Command::Batch(vec![write(vec![a.clone()], vec![]), Command::DeleteObject { object: "waddle:w1".into() }]);
        assert_eq!(tuple_changes(&cmd, &removed), None);
    }

    #[test]
    fn tuple_texts_round_trip_through_the_permission_model() {
        for text in ["waddle:w1#member@user:a", "channel:c1#parent@waddle:w1", "channel:c1#viewer@waddle:w1#member"] {
            assert_eq!(to_control_tuple(text).map(|t| tuple_text(&t)).ok().as_deref(), Some(text));
        }
        assert!(matches!(to_control_tuple("garbage"), Err(StorageError::Invalid(_))));
    }
}
