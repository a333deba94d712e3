//! Identifiers, log entries and the wire messages exchanged between replicas.

use serde::{Deserialize, Serialize};

/// One of the ring's partitions.
pub type PartitionId = u16;
/// A cluster node.
pub type NodeId = u64;
/// A ring epoch: the partition map's version, which is also the leader's term.
pub type Epoch = u64;
/// A position in a partition's log; the first entry is 1, so 0 means "before the log".
pub type Seq = u64;

/// The protocol version every message carries; a receiver answers any other with
/// [`ResponseBody::VersionMismatch`] instead of guessing at its meaning.
///
/// Version 2 added [`Append::serving`] and the `serving` of [`ResponseBody::Fenced`].
pub const REPL_VERSION: u16 = 2;

/// Where an entry sits and under which epoch it was written. Within one epoch a single
/// leader writes each seq once, so `(epoch, seq)` names the same entry on every replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LogPos {
    pub epoch: Epoch,
    pub seq: Seq,
}

/// One log entry. An empty payload is a barrier: the leader writes one when it starts an
/// epoch so that it has an entry of its own epoch to commit (older entries commit with it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: Seq,
    pub epoch: Epoch,
    pub payload: Vec<u8>,
}

impl Entry {
    pub fn is_barrier(&self) -> bool {
        self.payload.is_empty()
    }

    pub fn pos(&self) -> LogPos {
        LogPos { epoch: self.epoch, seq: self.seq }
    }
}

/// A partition's replica set at an epoch. What a node records of the last epoch whose leader
/// reached serving: recovery must hear from a majority of it (see the crate docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReplicaSet {
    pub epoch: Epoch,
    pub replicas: Vec<NodeId>,
}

/// A request from one replica to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplRequest {
    pub version: u16,
    pub body: RequestBody,
}

impl ReplRequest {
    pub fn new(body: RequestBody) -> ReplRequest {
        ReplRequest { version: REPL_VERSION, body }
    }

    pub fn partition(&self) -> PartitionId {
        match &self.body {
            RequestBody::Append(a) => a.partition,
            RequestBody::Fence(f) => f.partition,
            RequestBody::Fetch(f) => f.partition,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestBody {
    Append(Append),
    Fence(Fence),
    Fetch(Fetch),
}

/// The leader's replication message; with no entries it only carries the commit index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Append {
    pub partition: PartitionId,
    pub epoch: Epoch,
    pub leader: NodeId,
    /// The entry just before `entries` (None: they start the log).
    pub prev: Option<LogPos>,
    pub entries: Vec<Entry>,
    pub commit: Seq,
    /// Set once the leader's barrier is committed: its epoch and replica set, which the
    /// follower records durably (as the last serving set) before answering.
    #[serde(default)]
    pub serving: Option<ReplicaSet>,
}

/// A new leader asks a replica to promise never to accept an Append of a lower epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    pub partition: PartitionId,
    pub epoch: Epoch,
}

/// A recovering leader reads entries from the most up-to-date replica; `from` is inclusive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetch {
    pub partition: PartitionId,
    pub epoch: Epoch,
    pub from: Seq,
    pub max_entries: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplResponse {
    pub version: u16,
    pub body: ResponseBody,
}

impl ReplResponse {
    pub fn new(body: ResponseBody) -> ReplResponse {
        ReplResponse { version: REPL_VERSION, body }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseBody {
    /// The replica's log matches the leader's up to `last` (durably).
    Appended {
        last: Seq,
    },
    /// The request's epoch is below what the replica promised.
    Stale {
        promised: Epoch,
    },
    /// `prev` is not in the replica's log; `last` is the replica's tail, for the leader to
    /// find where the logs agree.
    Mismatch {
        last: Option<LogPos>,
    },
    Fenced {
        last: Option<LogPos>,
        commit: Seq,
        /// The last serving replica set this replica knows of.
        #[serde(default)]
        serving: Option<ReplicaSet>,
    },
    Entries(Vec<Entry>),
    /// The sender speaks another protocol version; nothing was done.
    VersionMismatch {
        ours: u16,
    },
    /// The request was malformed (e.g. non-contiguous entries); nothing was done.
    Invalid(String),
    /// The replica could not do its part (e.g. its disk failed); the sender may retry.
    Failed(String),
}
