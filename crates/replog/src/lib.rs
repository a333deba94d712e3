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
//! - **Recovery** (a new leader, [`Replicator::set_view`]): fence `previous ∪ replicas` (and
//!   the last serving set, below), wait for answers from a majority of `previous` and of the
//!   last serving set, take the most up-to-date tail among the
//!   answers by (last entry's epoch, seq), fetch what is missing from that node (cutting a
//!   divergent local suffix first), append the barrier, and serve once the barrier is
//!   committed on a majority of the new replica set and a majority has recorded that set as
//!   the last serving one (below). Followers are then brought in line by
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
//! - **Learners.** [`Replicator::set_learners`] names nodes outside the replica set that the
//!   leader sends the log to as to any follower, without counting them towards a majority,
//!   recording them in a serving set or fencing them; the list changes without a new epoch.
//!   A node is made a learner of a partition before it joins the replica set, so that it
//!   holds the log when it does (its recovery as a new leader then fetches nothing). A
//!   learner may hold uncommitted entries of an old leader; like any replica's, they are
//!   cut by the consistency check, and a learner made leader still hears from a majority
//!   of the previous set before choosing its source. Leaders send each learner an Append
//!   at least every [`ReplConfig::learner_heartbeat`], so that a learner of an idle
//!   partition can tell it is caught up ([`PartitionStatus::caught_up`]).
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
//! # The recovery source set
//!
//! The argument above needs the new leader to hear from a majority of the replica set of the
//! last epoch whose leader reached serving, `S*`: nothing is committed later than that
//! epoch, and everything committed up to it is on a majority of `S*` (its leader's barrier,
//! which follows every entry it recovered, committed there). The caller's `previous` is the
//! set of the epoch just before, which is `S*` only if that epoch's leader served. So the
//! crate tracks `S*` itself:
//!
//! - once its barrier commits, a leader records `(epoch, replicas)` as the last serving set
//!   durably, and its Appends carry it ([`Append::serving`]); a follower records it durably
//!   (keeping the newest epoch) before answering. The leader serves, i.e. takes proposals,
//!   only once a majority of its replica set (itself included) has recorded it. Hence any
//!   entry a client was told is committed at epoch `E` implies that a majority of `S(E)`
//!   records `S(E)` or a newer serving set.
//! - a replica answers a Fence with the serving set it knows ([`ResponseBody::Fenced`]);
//!   the recovering leader starts from the set in its own store, adopts any newer one an
//!   answer reports (fencing its members too), and needs answers from a majority of
//!   `previous` *and* a majority of that set when the two differ.
//!
//! This repairs the case of a leader that never finished recovering: epoch 1 serves on
//! {1,2,3}, epoch 2's leader of {2,3,4} never recovers, epoch 3's leader of {4,5,6} is told
//! `previous = {2,3,4}`; the answers of {3,4} report {1,2,3}, so it must also hear from a
//! majority of {1,2,3} before choosing a source. The remaining gap: the new leader learns
//! `S*` only through its own store or the answers of a majority of `previous`; if none of
//! them recorded it (e.g. two successive epochs whose replica sets share no node with `S*`
//! and whose leaders never recovered), it falls back to `previous` alone, as before. The
//! caller passing the last serving set as `previous` ([`PartitionStatus::role`]) still covers
//! that.
//!
//! # Concurrency
//!
//! Each partition's log shape and durable pointers sit behind one async lock, held across
//! the store write that changes them, so that memory and disk change together. Two rules
//! keep it live and consistent:
//!
//! - A task never waits for that lock while it holds futures that may be queued for it and
//!   that it no longer polls (tokio hands a released lock to the first waiter, polled or
//!   not): a fenced leader drops its event set first, a recovery drops its outstanding
//!   fences before it fetches. The same holds for callers: a future that may wait for the
//!   lock ([`Replicator::status`]) is polled to its end or dropped, never polled once and
//!   kept. [`Replicator::submit`] queues an entry without waiting for anything, and
//!   [`Replicator::role`] answers without the lock, for loops that wait to be served.
//! - A write that pairs disk and memory runs in a spawned task, so aborting a leader (a
//!   newer view) cannot stop it half-way; [`Replicator::set_view`] awaits nothing, so a
//!   caller that gives up on it cannot leave a view without its leader.
//!
//! # Known limits
//!
//! - **Double faults.** Recovery needs answers from a majority of the previous replica set. If
//!   it cannot reach one, it waits (retrying) rather than guess, and the partition stays
//!   unavailable. See "the recovery source set" above for the case of a leader that never
//!   finished recovering.
//! - Starting an epoch costs one more round after the barrier commits (recording the serving
//!   set on a majority) before proposals are taken.
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
pub use replicator::{Committing, Replicator};
pub use store::{LogStore, MetaUpdate, PartitionMeta, StoreError};
pub use types::*;
pub use wire::{decode_request, decode_response, encode_request, encode_response, WireDecodeError};
