//! waddle's cluster control plane: one small Raft group (openraft 0.9) replicating what
//! every node must agree on — membership, the partition map, permission tuples and small
//! records (waddles, channels, room configuration).
//!
//! - [`state`]: the state machine itself, pure and deterministic.
//! - [`log_store`] / [`sm_store`]: openraft's storage, the log durable in libSQL, the state in
//!   memory with snapshots on disk.
//! - [`network`] / [`rpc`]: the transport seam and the versioned frames carried over it.
//! - [`plane`]: [`ControlPlane`], the handle the node uses.

use std::io::Cursor;

pub mod command;
mod db;
pub mod error;
pub mod log_store;
pub mod network;
pub mod plane;
pub mod rpc;
pub mod sm_store;
pub mod state;

#[cfg(test)]
mod tests;

pub use command::{Command, CommandResult, Entry, NodeRecord, NodeState, PartitionTable, Record, Tuple, ENTRY_VERSION};
pub use db::DbError;
pub use error::ControlError;
pub use network::{MemoryTransport, RaftTransport, TransportFailure};
pub use plane::{ControlConfig, ControlPlane, ControlStatus, Role, MAX_VOTERS};
pub use sm_store::Applied;
pub use state::ControlState;

openraft::declare_raft_types!(
    /// openraft's type configuration for the control plane: entries carry an [`Entry`],
    /// applying one yields a [`CommandResult`]; nodes are addressed by `u64` id and their
    /// cluster address.
    pub TypeConfig:
        D = Entry,
        R = CommandResult,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A Raft log entry of the control plane.
pub type LogEntry = openraft::Entry<TypeConfig>;
