//! Cluster layer: where things live and how a stanza gets there.
//!
//! Owns the partitioning of keys (bare JIDs, room JIDs) onto nodes ([`placement`]),
//! the session registry ([`registry`]) with each session's mailbox ([`mailbox`]), and the
//! routing decision for every stanza
//! ([`routing`]). A single node is a cluster of one: the same code paths run, with a
//! membership of one node that owns every partition.
//!
//! Must never: parse sockets, touch storage, or know XMPP semantics beyond addressing.

pub mod mailbox;
pub mod placement;
pub mod registry;
pub mod routing;
pub mod transport;

pub use placement::{partition_of, NodeId, PartitionId, Placement, RendezvousPlacement, PARTITIONS};
pub use registry::{Registry, SessionEntry, SessionMailbox, SessionMsg, SessionRef};
pub use routing::{classify, Destination};
