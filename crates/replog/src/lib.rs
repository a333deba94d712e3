//! waddle's per-partition replicated log: what makes a partition's durable data (archives,
//! accounts, rosters...) survive the loss of a node.
//!
//! # Design
//!
//! Each of the ring's partitions has its own log, replicated over the partition's replica set.
//! It is Raft's log replication with the leader chosen by the control plane instead of an
//! election:
//!
//! - **Leader = ring owner.** The leader at epoch `E` is the first replica of the partition at
//!   ring epoch `E`; the ring epoch plays the part of Raft's term. Every entry records the
//!   epoch it was written in ([`Entry::epoch`]), and within an epoch only its leader writes,
//!   so `(epoch, seq)` names one entry on every replica.
//! - **Commit = durable on a majority.** Replicas write entries with `synchronous=FULL`
//!   before acknowledging. The leader commits the highest seq held by a majority of the
//!   replica set once that entry is of its own epoch (older entries commit with it, as in
//!   Raft); that is why each leader starts its epoch with a barrier entry (empty payload).
//! - **Fencing by epoch.** A replica promises an epoch (durably) when a new leader sends
//!   [`Fence`] or an [`Append`] of a higher epoch, and then answers [`ResponseBody::Stale`] to
//!   anything older. A leader that hears `Stale` stops at once, and its pending and future
//!   proposals fail with [`ReplError::Fenced`].
//! - **Recovery** (a new leader, [`Replicator::set_view`]): fence `previous ∪ replicas`, wait
//!   for answers from a majority of `previous`, take the most up-to-date tail among the
//!   answers by (last entry's epoch, seq), fetch what is missing from that node (cutting a
//!   divergent local suffix first), append the barrier, and serve once the barrier is
//!   committed on a majority of the new replica set. Followers are then brought in line by
//!   Raft's consistency check: an Append carries `prev`, a follower that lacks it answers
//!   `Mismatch` with its tail, and the leader probes further back using its epoch boundaries
//!   (KIP-101's lesson: logs are truncated by epoch, never to a high watermark). A conflicting
//!   entry (same seq, other epoch) is cut on the follower together with all that follows.
//! - **The leader's own write runs in parallel with the Appends** (Raft allows it). A
//!   proposal gets its seq at once and goes to the followers while the leader appends it to
//!   its own store; the leader counts itself towards a majority only for what its own write
//!   made durable. So an entry commits on a majority of durable copies either way: with 3
//!   replicas, the leader's write and one follower's, or both followers'; with 5, the leader
//!   and two followers, or three followers while the leader's disk is still busy. The
//!   leader's *local* commit index ([`Replicator::committed`], what it applies) never passes
//!   its own durable log; the proposer is answered as soon as the entry is committed.
//! - **Cost.** Proposals that arrive while a leader's write or a follower's Append is in
//!   flight go out together in the next one of each (group commit, one Append in flight per
//!   follower). An idle partition sends nothing, except one empty Append after the commit
//!   index moved (within [`ReplConfig::idle_commit_interval`]) so followers apply promptly.
//!   With one replica an entry commits with its own write.
//! - **Applying.** Committed entries go to the [`Applier`] in order on every replica, barriers
//!   left out; `applied_seq` is recorded after each batch and applying resumes from it after a
//!   restart, so a batch may be applied twice: **apply must be idempotent.**
//!
//! # Why it is safe
//!
//! An entry committed at epoch `E` is on a majority of `E`'s replica set. A leader of a later
//! epoch hears from a majority of that set before doing anything, so at least one answer
//! contains the entry, and the most up-to-date answer contains it too (Raft's election
//! restriction: the epochs along a log never decrease, and an entry of epoch `e` at seq `s`
//! implies the whole prefix of leader `e`'s log). Each node that answered has promised the new
//! epoch first, so the old leader can no longer gather a majority: it cannot commit anything
//! the new leader did not see.
//!
//! # Known limits
//!
//! - **Double faults.** Recovery needs answers from a majority of the previous replica set. If
//!   it cannot reach one, it waits (retrying) rather than guess, and the partition stays
//!   unavailable. `previous` must be the replica set that last held the committed data: if a
//!   leader never finished recovering and the ring moved on again, the caller should pass the
//!   replica set of the last epoch whose leader reached serving (see
//!   [`PartitionStatus::role`]), which this crate does not track.
//! - **No compaction.** Logs are kept whole, and a fresh replica catches up by replaying the
//!   log in bounded batches; snapshots and log truncation are a later step. Opening the store
//!   scans the log once to rebuild each partition's epoch boundaries.

pub mod api;
pub mod engine;
mod replicator;
pub mod store;
pub mod types;
pub mod wire;

pub use api::*;
pub use replicator::Replicator;
pub use store::{LogStore, MetaUpdate, PartitionMeta, StoreError};
pub use types::*;
pub use wire::{decode_request, decode_response, encode_request, encode_response, WireDecodeError};
