//! The state machine as openraft sees it: [`ControlState`] in memory, snapshots on disk.
//!
//! The state is not persisted per apply. Durability comes from the log: on start the latest
//! snapshot file is loaded and openraft re-applies the committed log after it (the log store
//! persists `committed` for exactly this). Snapshots are serde_json of the state plus the
//! snapshot's meta (last applied log id and last membership), written atomically as
//! `<dir>/snapshot-<index>-<term>-<nonce>.json` (temp file, fsync, rename, fsync dir).
//!
//! The applied state is published copy-on-write: readers get an `Arc<ControlState>`; apply
//! mutates it in place when no reader holds it and clones it otherwise.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch, Mutex};

use crate::command::{Command, CommandResult};
use crate::state::ControlState;
use crate::{LogEntry, TypeConfig};

/// The snapshot file format version.
const SNAPSHOT_VERSION: u16 = 1;

/// How many change notifications a slow subscriber may fall behind before it sees
/// `RecvError::Lagged` (and must re-read [`ControlState`] whole).
const FEED_CAPACITY: usize = 4096;

/// One applied entry, for the change feed.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The log index applied.
    pub index: u64,
    /// The command, or `None` when the whole state was replaced by an installed snapshot: a
    /// subscriber keeping a derived cache must then rebuild it from `ControlPlane::state()`.
    pub command: Option<Command>,
    /// What the command did (a `Conflict` or `Refused` command changed nothing).
    pub result: CommandResult,
}

/// What the state machine shares with the `ControlPlane` handle.
pub(crate) struct Shared {
    state: RwLock<Arc<ControlState>>,
    applied: watch::Sender<u64>,
    feed: broadcast::Sender<Applied>,
}

impl Shared {
    fn new(state: ControlState) -> Shared {
        let applied = state.applied;
        Shared {
            state: RwLock::new(Arc::new(state)),
            applied: watch::channel(applied).0,
            feed: broadcast::channel(FEED_CAPACITY).0,
        }
    }

    /// The latest applied state.
    pub(crate) fn state(&self) -> Arc<ControlState> {
        match self.state.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(crate) fn applied_rx(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Applied> {
        self.feed.subscribe()
    }

    fn publish(&self, index: u64, changes: Vec<Applied>) {
        for c in changes {
            // No subscribers is fine.
            let _ = self.feed.send(c);
        }
        self.applied.send_replace(index);
    }
}

/// The on-disk (and on-the-wire) snapshot: the meta openraft needs plus the state.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    v: u16,
    meta: SnapshotMeta<u64, BasicNode>,
    state: ControlState,
}

/// The snapshot that is current on disk.
#[derive(Clone)]
struct CurrentSnapshot {
    meta: SnapshotMeta<u64, BasicNode>,
    path: PathBuf,
}

/// openraft's state machine over [`ControlState`].
pub struct StateMachineStore {
    dir: PathBuf,
    shared: Arc<Shared>,
    last_applied: Option<LogId<u64>>,
    last_membership: StoredMembership<u64, BasicNode>,
    /// Shared with snapshot builders, which run in their own task; the lock also serializes
    /// snapshot file writes.
    current: Arc<Mutex<Option<CurrentSnapshot>>>,
}

/// Builds a snapshot from a view of the state taken when openraft asked for the builder, so
/// applies can go on meanwhile.
pub struct SnapshotBuilder {
    dir: PathBuf,
    state: Arc<ControlState>,
    last_applied: Option<LogId<u64>>,
    last_membership: StoredMembership<u64, BasicNode>,
    current: Arc<Mutex<Option<CurrentSnapshot>>>,
}

fn snapshot_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::write_snapshot(None, &e).into()
}

impl StateMachineStore {
    /// Loads the latest snapshot in `dir` (if any) as the starting state.
    pub async fn open(dir: &Path) -> Result<StateMachineStore, std::io::Error> {
        let owned = dir.to_owned();
        let loaded =
            tokio::task::spawn_blocking(move || load_latest(&owned)).await.map_err(std::io::Error::other)??;
        let (state, last_applied, last_membership, current) = match loaded {
            Some((file, path)) => {
                tracing::info!(path = %path.display(), last_log_id = ?file.meta.last_log_id, "control plane: loaded snapshot");
                let current = CurrentSnapshot { meta: file.meta.clone(), path };
                (file.state, file.meta.last_log_id, file.meta.last_membership, Some(current))
            }
            None => (ControlState::default(), None, StoredMembership::default(), None),
        };
        Ok(StateMachineStore {
            dir: dir.to_owned(),
            shared: Arc::new(Shared::new(state)),
            last_applied,
            last_membership,
            current: Arc::new(Mutex::new(current)),
        })
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let (index, term) = self.last_applied.map_or((0, 0), |l| (l.index, l.leader_id.term));
        let nonce: u32 = rand::random();
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_id: format!("{index}-{term}-{nonce:08x}"),
        };
        let state = self.state.clone();
        let meta2 = meta.clone();
        let bytes = tokio::task::spawn_blocking(move || {
            serde_json::to_vec(&SnapshotFileRef { v: SNAPSHOT_VERSION, meta: &meta2, state: &state })
        })
        .await
        .map_err(snapshot_err)?
        .map_err(snapshot_err)?;

        let mut current = self.current.lock().await;
        // A snapshot installed from the leader meanwhile may be newer; keep that one current.
        let newer_exists = current.as_ref().is_some_and(|c| c.meta.last_log_id > meta.last_log_id);
        if !newer_exists {
            let path = write_snapshot(&self.dir, &meta, bytes.clone()).await?;
            *current = Some(CurrentSnapshot { meta: meta.clone(), path });
        }
        tracing::info!(snapshot_id = %meta.snapshot_id, bytes = bytes.len(), "control plane: built snapshot");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }
}

/// Borrowing twin of [`SnapshotFile`] for writing without cloning the state.
#[derive(Serialize)]
struct SnapshotFileRef<'a> {
    v: u16,
    meta: &'a SnapshotMeta<u64, BasicNode>,
    state: &'a ControlState,
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), StorageError<u64>> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError<u64>>
    where
        I: IntoIterator<Item = LogEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        let mut changes = Vec::new();
        let mut last_index = None;
        {
            // Held only for this in-memory loop: readers wait instead of forcing a clone.
            let mut guard = match self.shared.state.write() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            let state = Arc::make_mut(&mut guard);
            for entry in entries {
                let index = entry.log_id.index;
                self.last_applied = Some(entry.log_id);
                last_index = Some(index);
                let result = match entry.payload {
                    EntryPayload::Blank => {
                        state.apply_marker(index);
                        CommandResult::Ok { index }
                    }
                    EntryPayload::Membership(m) => {
                        state.apply_marker(index);
                        self.last_membership = StoredMembership::new(Some(entry.log_id), m);
                        CommandResult::Ok { index }
                    }
                    EntryPayload::Normal(e) => {
                        let result = state.apply(index, &e);
                        changes.push(Applied { index, command: Some(e.cmd), result: result.clone() });
                        result
                    }
                };
                results.push(result);
            }
        }
        if let Some(index) = last_index {
            self.shared.publish(index, changes);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            dir: self.dir.clone(),
            state: self.shared.state(),
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            current: self.current.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let bytes = snapshot.into_inner();
        let read_err = |e: &dyn std::error::Error| -> StorageError<u64> {
            StorageIOError::read_snapshot(Some(meta.signature()), openraft::AnyError::error(e.to_string())).into()
        };
        let (file, bytes) =
            tokio::task::spawn_blocking(move || serde_json::from_slice::<SnapshotFile>(&bytes).map(|f| (f, bytes)))
                .await
                .map_err(|e| read_err(&e))?
                .map_err(|e| read_err(&e))?;
        if file.v != SNAPSHOT_VERSION {
            let msg = format!("snapshot format {} (this node reads {SNAPSHOT_VERSION})", file.v);
            tracing::error!(%msg, "control plane: refusing snapshot");
            return Err(StorageIOError::read_snapshot(Some(meta.signature()), openraft::AnyError::error(msg)).into());
        }
        // The meta openraft hands us is authoritative; rewrite the file if it differs.
        let bytes = if &file.meta == meta {
            bytes
        } else {
            serde_json::to_vec(&SnapshotFileRef { v: SNAPSHOT_VERSION, meta, state: &file.state })
                .map_err(snapshot_err)?
        };

        let mut current = self.current.lock().await;
        let path = write_snapshot(&self.dir, meta, bytes).await?;
        *current = Some(CurrentSnapshot { meta: meta.clone(), path });
        drop(current);

        let index = meta.last_log_id.map_or(0, |l| l.index);
        let mut state = file.state;
        state.applied = index;
        {
            let mut guard = match self.shared.state.write() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            *guard = Arc::new(state);
        }
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        tracing::info!(snapshot_id = %meta.snapshot_id, index, "control plane: installed snapshot");
        self.shared.publish(index, vec![Applied { index, command: None, result: CommandResult::Ok { index } }]);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let current = self.current.lock().await.clone();
        let Some(current) = current else { return Ok(None) };
        let path = current.path.clone();
        let bytes = tokio::task::spawn_blocking(move || std::fs::read(path))
            .await
            .map_err(snapshot_err)?
            .map_err(|e| StorageError::from(StorageIOError::read_snapshot(Some(current.meta.signature()), &e)))?;
        Ok(Some(Snapshot { meta: current.meta, snapshot: Box::new(Cursor::new(bytes)) }))
    }
}

fn is_snapshot_name(name: &str) -> bool {
    name.starts_with("snapshot-") && name.ends_with(".json")
}

/// Writes `bytes` as the snapshot for `meta` atomically and removes every other snapshot.
async fn write_snapshot(
    dir: &Path,
    meta: &SnapshotMeta<u64, BasicNode>,
    bytes: Vec<u8>,
) -> Result<PathBuf, StorageError<u64>> {
    let (index, term) = meta.last_log_id.map_or((0, 0), |l| (l.index, l.leader_id.term));
    let nonce = meta.snapshot_id.rsplit('-').next().unwrap_or("0").to_owned();
    let name = format!("snapshot-{index:020}-{term:020}-{nonce}.json");
    let dir = dir.to_owned();
    let signature = meta.signature();
    tokio::task::spawn_blocking(move || -> std::io::Result<PathBuf> {
        use std::io::Write;
        let path = dir.join(&name);
        let tmp = dir.join(format!("{name}.tmp"));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&dir)?.sync_all()?;
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let file_name = e.file_name();
            let Some(n) = file_name.to_str() else { continue };
            if n != name && (is_snapshot_name(n) || (n.starts_with("snapshot-") && n.ends_with(".tmp"))) {
                if let Err(err) = std::fs::remove_file(e.path()) {
                    tracing::warn!(file = n, error = %err, "control plane: could not remove an old snapshot");
                }
            }
        }
        Ok(path)
    })
    .await
    .map_err(snapshot_err)?
    .map_err(|e| StorageIOError::write_snapshot(Some(signature), &e).into())
}

/// Finds and parses the newest readable snapshot in `dir`. An unreadable one is logged and
/// skipped in favour of an older one (the log may then be short of entries; openraft will
/// say so loudly rather than serve a wrong state).
fn load_latest(dir: &Path) -> std::io::Result<Option<(SnapshotFile, PathBuf)>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| is_snapshot_name(n))
        .collect();
    // Zero-padded index then term: lexical order is snapshot order.
    names.sort();
    for name in names.iter().rev() {
        let path = dir.join(name);
        let parsed = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| serde_json::from_slice::<SnapshotFile>(&bytes).map_err(|e| e.to_string()));
        match parsed {
            Ok(file) if file.v == SNAPSHOT_VERSION => return Ok(Some((file, path))),
            Ok(file) => {
                tracing::error!(file = %name, version = file.v, "control plane: snapshot has an unknown format version")
            }
            Err(e) => tracing::error!(file = %name, error = %e, "control plane: unreadable snapshot"),
        }
    }
    Ok(None)
}
