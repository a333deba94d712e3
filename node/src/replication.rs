//! Replicated partitions on a cluster member: what the node writes through
//! `waddle_replog` so that an acknowledged write survives the loss of a node.
//!
//! Every durable change of a partition's data is a [`DurableOp`], proposed to the
//! partition's replicated log on its owner (the log's leader at the ring's epoch) and
//! acknowledged once a majority of the partition's replica set has it on disk. The
//! databases (archives, accounts...) are built from the log behind that point, on every
//! replica alike, by [`NodeApplier`]: so the node that takes a partition over after a
//! failure already holds its data, and a new replica catches up by replaying the log.
//!
//! A node without replication (a single node, or `cluster.replicas = 1`) never comes
//! here: its writes go straight to its databases, as they always did.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use waddle_cluster::transport::{request, Message, NoResponse, Transport, TransportError, WireError};
use waddle_cluster::{PartitionId, PartitionMap, PARTITIONS};
use waddle_mam::{ArchiveLocation, ArchivedRow, MamError};
use waddle_replog::{
    Applier, ApplyError, Entry, ReplConfig, ReplError, ReplRequest, ReplResponse, ReplTransport, ReplTransportError,
    Replicator, Role,
};
use waddle_storage::{AccountRecord, RosterRow, StorageError, Store, TokenKind};

use crate::ctx::Ctx;

/// The replicated log of ring partition `p` (there are [`PARTITIONS`], far below
/// `u16::MAX`).
fn log_of(p: PartitionId) -> waddle_replog::PartitionId {
    waddle_replog::PartitionId::try_from(p).unwrap_or(waddle_replog::PartitionId::MAX)
}

/// The version byte in front of every [`DurableOp`] in the log.
pub const DURABLE_OP_VERSION: u8 = 1;

/// One durable change of a partition's data, as its log carries it. Everything that
/// applying needs is in it (ids, timestamps, payloads chosen by the proposer), so every
/// replica builds the same data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DurableOp {
    /// A message of a room, in the room's archive.
    RoomMessage {
        location: ArchiveLocation,
        row: ArchivedRow,
    },
    /// A room message retracted (XEP-0424) by its author: tombstone it.
    RoomRetract {
        location: ArchiveLocation,
        room: String,
        target: String,
    },
    /// A 1:1 message, in both parties' archives (a copy for each, written by the
    /// recipient's partition; the sender's partition carries its copy as `ChatSide`).
    Chat {
        from: String,
        to: String,
        stanza_id: String,
        micros: i64,
        payload: String,
        body: Option<String>,
    },
    /// The copy of a 1:1 message for `owner`'s archive only (with `with`).
    ChatSide {
        owner: String,
        with: String,
        stanza_id: String,
        micros: i64,
        payload: String,
        body: Option<String>,
    },
    /// A 1:1 message retracted by its author, in `archive`.
    ChatRetract {
        archive: String,
        target: String,
    },
    CreateAccount {
        record: AccountRecord,
    },
    /// The account and everything of it (roster, offline messages, tokens, vCard).
    DeleteAccount {
        username: String,
    },
    InsertToken {
        kind: TokenKind,
        hash: Vec<u8>,
        username: String,
        expires_at: i64,
    },
    RosterUpsert {
        username: String,
        row: RosterRow,
    },
    RosterRemove {
        username: String,
        contact: String,
    },
    /// An offline message queued; `op_id` names this operation, so that applying it
    /// again queues nothing more (None in entries written before there were ids).
    OfflinePush {
        username: String,
        stanza: String,
        max: u32,
        #[serde(default)]
        op_id: Option<String>,
    },
    /// Offline messages of `username` were delivered: those queued by `op_ids`, and the
    /// `count` oldest queued without an id (all of them, in entries written before
    /// there were ids). Applying it again drops nothing more of what has ids.
    OfflineDrop {
        username: String,
        count: u64,
        #[serde(default)]
        op_ids: Vec<String>,
    },
    VCardSet {
        username: String,
        xml: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum DurableOpError {
    #[error("durable operation of version {0}, this node knows {DURABLE_OP_VERSION}")]
    Version(u8),
    #[error("empty durable operation")]
    Empty,
    #[error("malformed durable operation: {0}")]
    Malformed(String),
}

impl DurableOp {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![DURABLE_OP_VERSION];
        // Plain data: serializing cannot fail (an empty body would be refused loudly).
        out.extend_from_slice(&serde_json::to_vec(self).unwrap_or_default());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<DurableOp, DurableOpError> {
        let (version, body) = bytes.split_first().ok_or(DurableOpError::Empty)?;
        if *version != DURABLE_OP_VERSION {
            return Err(DurableOpError::Version(*version));
        }
        serde_json::from_slice(body).map_err(|e| DurableOpError::Malformed(e.to_string()))
    }
}

/// Why a durable write was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    #[error("replication: {0}")]
    Replication(#[from] ReplError),
    #[error("the replication task ended")]
    Gone,
    /// The partition's owner could not make it durable, or could not be asked.
    #[error("at the partition's owner: {0}")]
    Remote(String),
}

/// The node's replicated logs.
pub struct Replication {
    replicator: Replicator,
    /// The ring whose views were last given to the replicator.
    last_ring: std::sync::Mutex<Option<PartitionMap>>,
    /// The newest adopted ring, for the task that gives the replicator its views (the
    /// node's ring-following loop never waits for a log).
    rings: tokio::sync::watch::Sender<Option<PartitionMap>>,
}

impl std::fmt::Debug for Replication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replication").finish_non_exhaustive()
    }
}

impl Replication {
    /// Opens the log store in `<data_dir>/replog` and resumes applying what it holds.
    pub async fn open(ctx: &Arc<Ctx>, transport: Arc<dyn Transport>) -> Result<Arc<Replication>, anyhow::Error> {
        let dir = ctx.config.server.data_dir.join("replog");
        let applier = NodeApplier { ctx: Arc::downgrade(ctx) };
        let replicator = Replicator::open(
            &dir,
            ctx.config.server.node_id,
            ReplOverTransport(transport),
            applier,
            ReplConfig::default(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("opening the replicated log in {}: {e}", dir.display()))?;
        let (rings, mut newest) = tokio::sync::watch::channel(None::<PartitionMap>);
        let replication = Arc::new(Replication { replicator, last_ring: std::sync::Mutex::new(None), rings });
        let weak = Arc::downgrade(&replication);
        tokio::spawn(async move {
            while newest.changed().await.is_ok() {
                let Some(map) = newest.borrow_and_update().clone() else { continue };
                let Some(replication) = weak.upgrade() else { return };
                replication.adopt(&map).await;
            }
        });
        Ok(replication)
    }

    /// Hands a newly adopted ring to the task that gives the replicator its views (in
    /// epoch order; a ring overtaken by a newer one before its turn is skipped, and the
    /// newer one then counts as a gap: every partition gets its view).
    pub fn offer(&self, map: &PartitionMap) {
        self.rings.send_if_modified(|newest| {
            if newest.as_ref().is_some_and(|n| n.epoch >= map.epoch) {
                return false;
            }
            *newest = Some(map.clone());
            true
        });
    }

    pub fn replicator(&self) -> &Replicator {
        &self.replicator
    }

    /// Gives the replicator the views of a newly adopted ring: for each partition its
    /// replica set at this epoch and the one before (whose majority a new leader must
    /// hear from before it serves).
    ///
    /// A partition whose replica set is the same as in the ring adopted just before
    /// (the previous epoch, with none missed in between) keeps its view: its leader goes
    /// on in the epoch it started in, so a ring change costs a recovery (a round of
    /// fencing and a barrier) only for the partitions that moved. After a gap (a node
    /// that was paused or cut off) every partition gets the new view.
    async fn adopt(&self, map: &PartitionMap) {
        let previous = {
            let mut last = self.last_ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.as_ref().is_some_and(|l| l.epoch >= map.epoch) {
                return;
            }
            last.replace(map.clone())
        };
        let consecutive = previous.as_ref().is_some_and(|m| m.epoch + 1 == map.epoch);
        let mut views = Vec::new();
        for p in 0..PARTITIONS {
            // Learners change without a new view: the leader goes on in its epoch.
            self.replicator.set_learners(log_of(p), map.learners(p).to_vec());
            let replicas = map.replicas.get(p as usize).cloned().unwrap_or_default();
            let before = previous.as_ref().and_then(|m| m.replicas.get(p as usize).cloned());
            if replicas.is_empty() || (consecutive && before.as_ref() == Some(&replicas)) {
                continue;
            }
            views.push((p, replicas, before));
        }
        let views = views.into_iter().map(|(p, replicas, before)| async move {
            let set = self.replicator.set_view(log_of(p), map.epoch, replicas, before);
            match tokio::time::timeout(READY_WAIT, set).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(partition = p, epoch = map.epoch, error = %e, "replication: cannot set the view")
                }
                Err(_) => tracing::error!(partition = p, epoch = map.epoch, "replication: setting the view timed out"),
            }
        });
        futures_util::future::join_all(views).await;
    }

    /// Proposes `op` to `partition`'s log; `Ok` once a majority of its replicas hold it.
    /// A partition this node was just given, and is still recovering (or has not been
    /// told of yet), is waited for (at most [`READY_WAIT`]) before the proposal is made.
    pub async fn write(&self, partition: PartitionId, op: &DurableOp) -> Result<(), DurableError> {
        propose_when_ready(self.replicator.clone(), partition, op.encode()).await
    }

    /// [`Replication::write`] handed to the log now (in the caller's order: the proposal
    /// is queued before this returns when the partition is served here), its commit
    /// awaited later: a room's messages go out in its order and travel together (group
    /// commit) while the room goes on. When the partition is not served here yet, the
    /// future returned does nothing until it is awaited: it then waits for the partition
    /// and proposes. (It used to start that wait at once, polled with a waker that wakes
    /// nobody: a wait for the partition's lock queued that way was handed the lock and
    /// then held it, unpolled, until its caller came to it, stalling the partition.)
    pub fn write_started(
        &self,
        partition: PartitionId,
        op: &DurableOp,
    ) -> BoxFuture<'static, Result<(), DurableError>> {
        match self.replicator.submit(log_of(partition), op.encode()) {
            Ok(committing) => Box::pin(async move { committing.await.map(|_| ()).map_err(DurableError::from) }),
            Err(ReplError::NotLeader { .. } | ReplError::Recovering) => {
                propose_when_ready(self.replicator.clone(), partition, op.encode())
            }
            Err(e) => Box::pin(std::future::ready(Err(e.into()))),
        }
    }

    /// Whether this node, as a learner or replica of `partition`, is caught up with its
    /// leader: it could lead it without a long fetch.
    pub async fn learned(&self, partition: PartitionId) -> bool {
        self.replicator.status(log_of(partition)).await.caught_up
    }

    /// Waits until everything committed in `partition` so far is applied here (a read of
    /// the databases then sees every acknowledged write).
    pub async fn caught_up(&self, partition: PartitionId) {
        let log = log_of(partition);
        let committed = self.replicator.committed(log).max(self.replicator.acknowledged(log));
        if committed > 0 {
            // Bounded: a leader that acknowledged an entry and then lost the partition before
            // its own copy was written gets it back only as a replica of the new leader.
            let applied = self.replicator.wait_applied(log, committed);
            if tokio::time::timeout(READY_WAIT, applied).await.is_err() {
                tracing::warn!(partition, committed, "replication: not applied here in time; reading anyway");
            }
        }
    }

    /// Waits (at most `within`) until this node serves `partition` as its log's leader
    /// with everything committed applied: what a room or a user's data needs before the
    /// new owner answers from its databases. `false` if it did not get there in time.
    pub async fn ready(&self, partition: PartitionId, within: Duration) -> bool {
        if !serving(&self.replicator, log_of(partition), within).await {
            return false;
        }
        self.caught_up(partition).await;
        true
    }
}

/// How long a write or a read waits for a partition this node was just given.
pub const READY_WAIT: Duration = Duration::from_secs(10);

/// Proposes `payload`; when this node does not serve the partition yet (its view of the
/// new ring has not come, or it is recovering), waits until it does and tries once more.
fn propose_when_ready(
    replicator: Replicator,
    partition: PartitionId,
    payload: Vec<u8>,
) -> BoxFuture<'static, Result<(), DurableError>> {
    Box::pin(async move {
        let log = log_of(partition);
        match replicator.propose(log, payload.clone()).await {
            Ok(_) => return Ok(()),
            Err(ReplError::NotLeader { .. } | ReplError::Recovering) => {}
            Err(e) => return Err(e.into()),
        }
        if !serving(&replicator, log, READY_WAIT).await {
            return Err(DurableError::Replication(ReplError::Recovering));
        }
        replicator.propose(log, payload).await.map(|_| ()).map_err(DurableError::from)
    })
}

/// Waits (at most `within`) until this node leads `log` and serves it.
async fn serving(replicator: &Replicator, log: waddle_replog::PartitionId, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if replicator.role(log) == (Role::Leader { serving: true }) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Applies committed operations to this node's databases, on every replica.
struct NodeApplier {
    ctx: Weak<Ctx>,
}

impl Applier for NodeApplier {
    fn apply(
        &self,
        partition: waddle_replog::PartitionId,
        entries: Vec<Entry>,
    ) -> BoxFuture<'static, Result<(), ApplyError>> {
        let ctx = self.ctx.upgrade();
        Box::pin(async move {
            let ctx = ctx.ok_or_else(|| ApplyError("the node is shutting down".into()))?;
            // Archive writes are queued in log order on the archive's writer and awaited
            // together (one transaction for the batch where the writer can); users' data
            // changes are applied one after the other, in log order.
            let mut writes: Vec<BoxFuture<'static, Result<(), MamError>>> = Vec::new();
            for entry in entries {
                let op = match DurableOp::decode(&entry.payload) {
                    Ok(op) => op,
                    Err(e) => {
                        // Retrying cannot help: a newer node wrote it. Loud, and skipped.
                        tracing::error!(partition, seq = entry.seq, error = %e, "replication: entry not applicable");
                        continue;
                    }
                };
                match archive_write(&ctx, op) {
                    Ok(write) => writes.push(write),
                    Err(op) => apply_user_data(&ctx.store, *op).await.map_err(|e| ApplyError(e.to_string()))?,
                }
            }
            for result in futures_util::future::join_all(writes).await {
                match result {
                    // Applied before (an apply is repeated after a crash): nothing to do.
                    Ok(()) | Err(MamError::Duplicate(_)) => {}
                    Err(e) => return Err(ApplyError(e.to_string())),
                }
            }
            Ok(())
        })
    }
}

/// The archive write of `op`, or `op` back when it is not an archive's.
fn archive_write(ctx: &Ctx, op: DurableOp) -> Result<BoxFuture<'static, Result<(), MamError>>, Box<DurableOp>> {
    let archive = ctx.archive.clone();
    Ok(match op {
        DurableOp::RoomMessage { location, row } => Box::pin(archive.append(location, row)),
        DurableOp::RoomRetract { location, room, target } => {
            Box::pin(async move { archive.retract(location, &room, &target).await.map(|_| ()) })
        }
        DurableOp::Chat { from, to, stanza_id, micros, payload, body } => {
            // One copy per archive, each on its own: the sender's copy may be here
            // already (its own partition's log carried it too, as `ChatSide`), and a
            // copy that is there must not keep the other archive's from being written.
            let recipients = archive.append_chat_side(&to, &from, &stanza_id, micros, payload.clone(), body.clone());
            let senders = archive.append_chat_side(&from, &to, &stanza_id, micros, payload, body);
            Box::pin(async move {
                let (a, b) = futures_util::future::join(recipients, senders).await;
                for result in [a, b] {
                    match result {
                        Ok(()) | Err(MamError::Duplicate(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            })
        }
        DurableOp::ChatSide { owner, with, stanza_id, micros, payload, body } => {
            Box::pin(archive.append_chat_side(&owner, &with, &stanza_id, micros, payload, body))
        }
        DurableOp::ChatRetract { archive: owner, target } => {
            Box::pin(async move { archive.retract(ArchiveLocation::Users, &owner, &target).await.map(|_| ()) })
        }
        other => return Err(Box::new(other)),
    })
}

/// Applies a change of users' data. The owner checked it before proposing it; what
/// still fails here (an account already there, or gone) was applied before, or
/// overtaken by a later change of the same log, and is skipped.
async fn apply_user_data(store: &Store, op: DurableOp) -> Result<(), StorageError> {
    let result = match op {
        DurableOp::CreateAccount { record } => store.create_account(record).await,
        DurableOp::DeleteAccount { username } => store.delete_account(&username).await,
        DurableOp::InsertToken { kind, hash, username, expires_at } => match <[u8; 32]>::try_from(hash.as_slice()) {
            Ok(hash) => store.insert_token(kind, hash, &username, expires_at).await,
            Err(_) => Err(StorageError::Invalid("token hash of the wrong length".into())),
        },
        DurableOp::RosterUpsert { username, row } => store.roster_upsert(&username, &row).await.map(|_| ()),
        DurableOp::RosterRemove { username, contact } => store.roster_remove(&username, &contact).await.map(|_| ()),
        DurableOp::OfflinePush { username, stanza, max, op_id: Some(op_id) } => {
            store.offline_push_op(&username, &stanza, max, &op_id).await.map(|_| ())
        }
        DurableOp::OfflinePush { username, stanza, max, op_id: None } => {
            store.offline_push(&username, &stanza, max).await.map(|_| ())
        }
        DurableOp::OfflineDrop { username, count, op_ids } => store.offline_drop_ops(&username, op_ids, count).await,
        DurableOp::VCardSet { username, xml } => store.vcard_set(&username, &xml).await,
        DurableOp::RoomMessage { .. }
        | DurableOp::RoomRetract { .. }
        | DurableOp::Chat { .. }
        | DurableOp::ChatSide { .. }
        | DurableOp::ChatRetract { .. } => Ok(()),
    };
    match result {
        Err(StorageError::AlreadyExists | StorageError::NotFound | StorageError::Invalid(_)) | Ok(()) => Ok(()),
        Err(e) => Err(e),
    }
}

const KIND_REPL: u16 = 21;
const KIND_REPL_REPLY: u16 = 22;

/// A replication request between nodes (the replog crate's own versioned message).
pub struct ReplFrame(pub ReplRequest);

impl Message for ReplFrame {
    const KIND: u16 = KIND_REPL;
    const VERSION: u16 = 1;
    type Response = ReplReplyFrame;
    fn encode(&self) -> Bytes {
        Bytes::from(waddle_replog::wire::encode_request(&self.0))
    }
    fn decode(version: u16, bytes: &[u8]) -> Result<Self, WireError> {
        if version != Self::VERSION {
            return Err(WireError::UnsupportedVersion { kind: Self::KIND, version });
        }
        waddle_replog::wire::decode_request(bytes)
            .map(ReplFrame)
            .map_err(|e| WireError::Malformed { kind: Self::KIND, reason: e.to_string() })
    }
}

pub struct ReplReplyFrame(pub ReplResponse);

impl Message for ReplReplyFrame {
    const KIND: u16 = KIND_REPL_REPLY;
    const VERSION: u16 = 1;
    type Response = NoResponse;
    fn encode(&self) -> Bytes {
        Bytes::from(waddle_replog::wire::encode_response(&self.0))
    }
    fn decode(version: u16, bytes: &[u8]) -> Result<Self, WireError> {
        if version != Self::VERSION {
            return Err(WireError::UnsupportedVersion { kind: Self::KIND, version });
        }
        waddle_replog::wire::decode_response(bytes)
            .map(ReplReplyFrame)
            .map_err(|e| WireError::Malformed { kind: Self::KIND, reason: e.to_string() })
    }
}

/// The replicator's calls over the inter-node transport.
struct ReplOverTransport(Arc<dyn Transport>);

/// A replication call that gets no answer in this long is retried by the replicator.
const REPL_CALL_TIMEOUT: Duration = Duration::from_secs(2);

impl ReplTransport for ReplOverTransport {
    fn call(&self, to: u64, req: ReplRequest) -> BoxFuture<'static, Result<ReplResponse, ReplTransportError>> {
        let answer = request(self.0.as_ref(), to, &ReplFrame(req), REPL_CALL_TIMEOUT);
        Box::pin(async move {
            match answer.await {
                Ok(ReplReplyFrame(response)) => Ok(response),
                Err(TransportError::Timeout) => Err(ReplTransportError::Timeout),
                Err(TransportError::Unreachable(_) | TransportError::Backpressure(_)) => {
                    Err(ReplTransportError::Unreachable(to))
                }
                Err(e) => Err(ReplTransportError::Other(e.to_string())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_round_trip_and_other_versions_are_refused() {
        let op = DurableOp::Chat {
            from: "a@x".into(),
            to: "b@x".into(),
            stanza_id: "id1".into(),
            micros: 7,
            payload: "<message/>".into(),
            body: Some("hi".into()),
        };
        let bytes = op.encode();
        assert_eq!(DurableOp::decode(&bytes).ok(), Some(op));
        let mut newer = bytes.clone();
        newer[0] = DURABLE_OP_VERSION + 1;
        assert!(matches!(DurableOp::decode(&newer), Err(DurableOpError::Version(_))));
        assert!(matches!(DurableOp::decode(&[]), Err(DurableOpError::Empty)));
        assert!(matches!(DurableOp::decode(&[DURABLE_OP_VERSION, b'{']), Err(DurableOpError::Malformed(_))));
    }
}
