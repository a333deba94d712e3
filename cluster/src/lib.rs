//! Cluster layer: where things live and how a stanza gets there.
//!
//! Owns the partitioning of keys (users, waddles, rooms) onto nodes ([`placement`]),
//! the session registry with each session's mailbox ([`mailbox`]), reached only through
//! [`locality`] (which asks placement first), and the
//! routing decision for every stanza
//! ([`routing`]). A single node is a cluster of one: the same code paths run, with a
//! membership of one node that owns every partition.
//!
//! Must never: parse sockets, touch storage, or know XMPP semantics beyond addressing.

pub mod locality;
pub mod mailbox;
pub mod placement;
mod registry;
pub mod routing;
pub mod transport;

pub use locality::{Locality, Peers, Place, UserShard};
pub use placement::{
    assign, assign_catching_up, partition_of, NodeId, PartitionId, PartitionMap, Placement, PlacementKey, PARTITIONS,
};
pub use registry::{SessionAddr, SessionEntry, SessionMailbox, SessionMsg, SessionRef};
pub use routing::{classify, Destination};
