//! The traits the node plugs in, the configuration, and the errors callers see.

use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::store::StoreError;
use crate::types::{Entry, Epoch, LogPos, NodeId, PartitionId, ReplRequest, ReplResponse, Seq};

/// How replicas reach each other. The node's implementation delivers `req` to the
/// [`crate::Replicator::handle`] of node `to` and brings back its answer.
pub trait ReplTransport: Send + Sync + 'static {
    fn call(&self, to: NodeId, req: ReplRequest) -> BoxFuture<'static, Result<ReplResponse, ReplTransportError>>;
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplTransportError {
    #[error("node {0} is unreachable")]
    Unreachable(NodeId),
    #[error("the call timed out")]
    Timeout,
    #[error("transport: {0}")]
    Other(String),
}

/// Where committed entries go, in log order, barriers left out. Entries are delivered at least
/// once (a crash between applying and recording it re-applies the batch at restart), so
/// applying must be idempotent.
pub trait Applier: Send + Sync + 'static {
    fn apply(&self, partition: PartitionId, entries: Vec<Entry>) -> BoxFuture<'static, Result<(), ApplyError>>;
}

/// An apply that failed; the batch is retried until it succeeds.
#[derive(Debug, Clone, thiserror::Error)]
#[error("apply failed: {0}")]
pub struct ApplyError(pub String);

/// Why a proposal did not (or is not known to have) committed.
#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    /// This node does not lead the partition at its current epoch (None: no view yet).
    #[error("not the leader (epoch {epoch:?})")]
    NotLeader { epoch: Option<Epoch> },
    /// This node leads the partition but has not finished recovering it.
    #[error("the partition is recovering")]
    Recovering,
    /// A leader of a newer epoch has fenced this one: it will never commit again.
    #[error("fenced by epoch {promised}")]
    Fenced { promised: Epoch },
    /// No majority confirmed in time, or leadership ended before it did. The entry may still
    /// be committed later (by this leader or carried over by the next one).
    #[error("no majority in time")]
    Unavailable,
    /// An empty payload is the barrier marker and cannot be proposed.
    #[error("empty payload")]
    EmptyPayload,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone)]
pub struct ReplConfig {
    /// How long `propose` waits for the commit.
    pub commit_timeout: Duration,
    /// How soon after the commit index moves an idle leader tells the followers.
    pub idle_commit_interval: Duration,
    /// Bounds of one Append or Fetch batch.
    pub batch_entries: usize,
    pub batch_bytes: usize,
    /// How long one call to another node may take.
    pub request_timeout: Duration,
    /// How often a leader sends each learner an Append when there is nothing else to send,
    /// so that the learner knows it is caught up (see [`PartitionStatus::caught_up`]).
    pub learner_heartbeat: Duration,
    /// Backoff between retries to an unresponsive node.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl Default for ReplConfig {
    fn default() -> ReplConfig {
        ReplConfig {
            commit_timeout: Duration::from_secs(5),
            idle_commit_interval: Duration::from_millis(50),
            batch_entries: 256,
            batch_bytes: 1 << 20,
            request_timeout: Duration::from_secs(2),
            learner_heartbeat: Duration::from_millis(200),
            retry_min: Duration::from_millis(20),
            retry_max: Duration::from_secs(1),
        }
    }
}

/// This node's part in a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader {
        serving: bool,
    },
    Follower,
    /// Sent the log by the leader without being one of the replicas.
    Learner,
    None,
}

/// A partition's replication state, for `/metrics` and admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStatus {
    pub role: Role,
    /// The epoch of the latest view set on this node.
    pub epoch: Option<Epoch>,
    pub promised: Epoch,
    /// Set when this node led the current epoch and was fenced by a newer one.
    pub fenced_by: Option<Epoch>,
    pub last: Option<LogPos>,
    pub commit: Seq,
    pub applied: Seq,
    /// An Append accepted here lately (within a few learner heartbeats) found this log
    /// holding everything its leader had committed, and all of that is applied: a learner
    /// in this state can be made a replica (or the leader) without a long fetch. False on a
    /// leader, and on a follower of an idle partition (only learners get heartbeats).
    pub caught_up: bool,
}

/// Counters since open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplStats {
    /// Proposals handed to a leader.
    pub proposals: u64,
    /// Local durable appends made by leaders (each carries a group of proposals).
    pub leader_batches: u64,
    /// Append requests sent that carried entries.
    pub appends_with_entries: u64,
    /// Append requests sent only to move the follower's commit index or probe it.
    pub empty_appends: u64,
    /// Entries a recovering leader fetched from another replica before it could serve.
    pub recovery_fetched: u64,
}
