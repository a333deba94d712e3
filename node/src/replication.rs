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
    RoomMessage { location: ArchiveLocation, row: ArchivedRow },
    /// A room message retracted (XEP-0424) by its author: tombstone it.
    RoomRetract { location: ArchiveLocation, room: String, target: String },
    /// A 1:1 message, one copy indexed in both parties' archives (both owned here, or the
    /// recipient owned here and the sender's own copy kept by its owner).
    Chat { from: String, to: String, stanza_id: String, micros: i64, payload: String, body: Option<String> },
    /// The copy of a 1:1 message for `owner`'s archive only (with `with`).
    ChatSide { owner: String, with: String, stanza_id: String, micros: i64, payload: String, body: Option<String> },
    /// A 1:1 message retracted by its author, in `archive`.
    ChatRetract { archive: String, target: String },
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
        Ok(Arc::new(Replication { replicator, last_ring: std::sync::Mutex::new(None) }))
    }

    pub fn replicator(&self) -> &Replicator {
        &self.replicator
    }

    /// Gives the replicator the views of a newly adopted ring: for each partition its
    /// replica set at this epoch and the one before (whose majority a new leader must
    /// hear from before it serves).
    pub async fn adopt(&self, map: &PartitionMap) {
        let previous = {
            let mut last = self.last_ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.as_ref().is_some_and(|l| l.epoch >= map.epoch) {
                return;
            }
            last.replace(map.clone())
        };
        for p in 0..PARTITIONS {
            let replicas = map.replicas.get(p as usize).cloned().unwrap_or_default();
            let before = previous.as_ref().and_then(|m| m.replicas.get(p as usize).cloned());
            if replicas.is_empty() {
                continue;
            }
            if let Err(e) = self.replicator.set_view(log_of(p), map.epoch, replicas, before).await {
                tracing::error!(partition = p, epoch = map.epoch, error = %e, "replication: cannot set the view");
            }
        }
    }

    /// Proposes `op` to `partition`'s log; `Ok` once a majority of its replicas hold it.
    pub async fn write(&self, partition: PartitionId, op: &DurableOp) -> Result<(), DurableError> {
        self.replicator.propose(log_of(partition), op.encode()).await.map(|_| ()).map_err(DurableError::from)
    }

    /// [`Replication::write`] handed to the log now (in the caller's order: the proposal
    /// is queued before this returns), its commit awaited later: a room's messages go out
    /// in its order and travel together (group commit) while the room goes on.
    pub fn write_started(
        &self,
        partition: PartitionId,
        op: &DurableOp,
    ) -> BoxFuture<'static, Result<(), DurableError>> {
        let replicator = self.replicator.clone();
        let (partition, payload) = (log_of(partition), op.encode());
        let mut proposal: BoxFuture<'static, Result<(), DurableError>> =
            Box::pin(
                async move { replicator.propose(partition, payload).await.map(|_| ()).map_err(DurableError::from) },
            );
        // `propose` queues the entry before its first wait: one poll here fixes the
        // order. Whoever awaits it later polls it again with its own waker.
        let waker = futures_util::task::noop_waker();
        match proposal.as_mut().poll(&mut std::task::Context::from_waker(&waker)) {
            std::task::Poll::Ready(result) => Box::pin(std::future::ready(result)),
            std::task::Poll::Pending => proposal,
        }
    }

    /// Waits until everything committed in `partition` so far is applied here (a read of
    /// the databases then sees every acknowledged write).
    pub async fn caught_up(&self, partition: PartitionId) {
        let log = log_of(partition);
        let committed = self.replicator.committed(log);
        if committed > 0 {
            self.replicator.wait_applied(log, committed).await;
        }
    }

    /// Waits (at most `within`) until this node serves `partition` as its log's leader
    /// with everything committed applied: what a room or a user's data needs before the
    /// new owner answers from its databases. `false` if it did not get there in time.
    pub async fn ready(&self, partition: PartitionId, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.replicator.status(log_of(partition)).await.role == (Role::Leader { serving: true }) {
                self.caught_up(partition).await;
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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
            // Queued in log order on the archive's writer, then awaited together: one
            // transaction for the batch where the writer can.
            let mut writes: Vec<BoxFuture<'static, Result<(), MamError>>> = Vec::with_capacity(entries.len());
            for entry in entries {
                match DurableOp::decode(&entry.payload) {
                    Ok(op) => writes.push(apply_one(&ctx, op)),
                    Err(e) => {
                        // Retrying cannot help: a newer node wrote it. Loud, and skipped.
                        tracing::error!(partition, seq = entry.seq, error = %e, "replication: entry not applicable");
                    }
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

fn apply_one(ctx: &Ctx, op: DurableOp) -> BoxFuture<'static, Result<(), MamError>> {
    let archive = ctx.archive.clone();
    match op {
        DurableOp::RoomMessage { location, row } => Box::pin(archive.append(location, row)),
        DurableOp::RoomRetract { location, room, target } => {
            Box::pin(async move { archive.retract(location, &room, &target).await.map(|_| ()) })
        }
        DurableOp::Chat { from, to, stanza_id, micros, payload, body } => {
            Box::pin(archive.append_chat(&from, &to, &stanza_id, micros, payload, body))
        }
        DurableOp::ChatSide { owner, with, stanza_id, micros, payload, body } => {
            Box::pin(archive.append_chat_side(&owner, &with, &stanza_id, micros, payload, body))
        }
        DurableOp::ChatRetract { archive: owner, target } => {
            Box::pin(async move { archive.retract(ArchiveLocation::Users, &owner, &target).await.map(|_| ()) })
        }
    }
}

/// Until the replog crate's binary codec lands: JSON.
mod repl_wire {
    use waddle_replog::{ReplRequest, ReplResponse};

    pub fn encode_request(r: &ReplRequest) -> Vec<u8> {
        serde_json::to_vec(r).unwrap_or_default()
    }
    pub fn decode_request(b: &[u8]) -> Result<ReplRequest, serde_json::Error> {
        serde_json::from_slice(b)
    }
    pub fn encode_response(r: &ReplResponse) -> Vec<u8> {
        serde_json::to_vec(r).unwrap_or_default()
    }
    pub fn decode_response(b: &[u8]) -> Result<ReplResponse, serde_json::Error> {
        serde_json::from_slice(b)
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
        Bytes::from(repl_wire::encode_request(&self.0))
    }
    fn decode(version: u16, bytes: &[u8]) -> Result<Self, WireError> {
        if version != Self::VERSION {
            return Err(WireError::UnsupportedVersion { kind: Self::KIND, version });
        }
        repl_wire::decode_request(bytes)
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
        Bytes::from(repl_wire::encode_response(&self.0))
    }
    fn decode(version: u16, bytes: &[u8]) -> Result<Self, WireError> {
        if version != Self::VERSION {
            return Err(WireError::UnsupportedVersion { kind: Self::KIND, version });
        }
        repl_wire::decode_response(bytes)
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
