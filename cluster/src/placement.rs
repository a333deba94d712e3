//! Key placement: a fixed number of partitions, each held by a replica set of nodes.
//!
//! Every key (a user's bare JID, a waddle, an ad-hoc room; see [`PlacementKey`]) hashes
//! to one of [`PARTITIONS`] partitions. A [`PartitionMap`] gives each partition an
//! ordered replica set of distinct nodes; the first is the owner (where the partition's
//! actors run), the others hold replicas. Every node computes the map for a membership
//! with [`assign`], a pure function of the previous map, the members and the replication
//! factor, so nodes that agree on those inputs agree on the map.
//!
//! # Why bounded-load placement, not pure rendezvous
//!
//! Pure rendezvous (highest random weight) hashing gives each partition to the node with
//! the highest weight. It moves only what it must, but 256 partitions are too few for it
//! to balance: each node's count is binomial, with a standard deviation of about
//! `sqrt(256 / N)` partitions. Measured over nodes `1..=N` with 100,000 user keys (the
//! `placement_balance` example prints these):
//!
//! | nodes | partitions per node, pure rendezvous | max/mean keys, pure | max/mean keys, bounded-load |
//! |------:|-------------------------------------:|--------------------:|----------------------------:|
//! |     3 | 83 – 88                              | 1.025               | 1.006                       |
//! |     5 | 47 – 57                              | 1.111               | 1.014                       |
//! |    10 | 21 – 30                              | 1.175               | 1.037                       |
//!
//! so with ten nodes one node would own 30 partitions where 25.6 is its share, and carry
//! 17.5 % more keys than the mean. [`assign`]
//! instead caps every node at `floor(256 / N)` or `ceil(256 / N)` owned partitions (and
//! `floor(256 r / N)` or `ceil(256 r / N)` replica slots, owner slots included, for
//! replication `r`), keeps partitions where they were as far as the caps allow, and uses
//! rendezvous weights only to decide which partitions move and where orphans go. Growing
//! from `N` to `N + 1` nodes then moves only the new node's share, and removing a node
//! moves only what it held (plus whatever the caps force off a node that held more than
//! its new share).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use serde::{Deserialize, Serialize};

/// Number of partitions keys are hashed into. Fixed for the life of a cluster: changing
/// it moves every key.
pub const PARTITIONS: u32 = 256;

pub type PartitionId = u32;

/// Stable identifier of a cluster node (a `u64` because openraft 0.9 wants a `Copy` id).
pub type NodeId = u64;

/// `PARTITIONS` as an index bound.
const PARTS: usize = PARTITIONS as usize;

/// A stable 64-bit hash (FNV-1a with a SplitMix64 finaliser). Stable across builds and
/// platforms, unlike `std`'s `DefaultHasher`, because placement must agree between nodes.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn partition_of_bytes(bytes: &[u8]) -> PartitionId {
    // PARTITIONS fits in u32 and the remainder is below it, so the cast cannot truncate.
    (stable_hash(bytes) % u64::from(PARTITIONS)) as PartitionId
}

/// Partition of a key. Keys must be normalised first (bare JIDs as the `jid` crate
/// prints them), otherwise two spellings of one JID land on different partitions.
///
/// This is the partition of a user's bare JID ([`PlacementKey::User`]); the session
/// registry shards by it too.
pub fn partition_of(key: &str) -> PartitionId {
    partition_of_bytes(key.as_bytes())
}

/// Tags hashed in front of non-user keys. Each starts with a NUL byte, which a
/// normalised JID never contains (RFC 7622 forbids control characters in every part),
/// so a tagged key never hashes the same bytes as a user's JID; and the two tags differ
/// in their second byte, so a waddle and a room never hash the same bytes either,
/// whatever their strings.
const WADDLE_TAG: &[u8] = b"\0waddle\0";
const ROOM_TAG: &[u8] = b"\0room\0";

fn tagged_partition(tag: &[u8], key: &str) -> PartitionId {
    let mut bytes = Vec::with_capacity(tag.len() + key.len());
    bytes.extend_from_slice(tag);
    bytes.extend_from_slice(key.as_bytes());
    partition_of_bytes(&bytes)
}

/// What a partition is computed from. The kinds hash apart by construction (see
/// [`PlacementKey::partition`]), so a user and a waddle with the same string are two
/// unrelated keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlacementKey<'a> {
    /// A user, by normalised bare JID: the account's sessions, roster and offline store.
    User(&'a str),
    /// A waddle, by waddle id. Everything of a waddle lives on its partition: its
    /// channel rooms and their archive are placed by `Waddle(waddle_id)`, not by the
    /// rooms' JIDs, so that one owner serves the whole waddle.
    Waddle(&'a str),
    /// An ad-hoc room (one that belongs to no waddle), by normalised bare room JID.
    Room(&'a str),
}

impl PlacementKey<'_> {
    /// The key's partition. A user hashes its bare JID as [`partition_of`] does (so the
    /// value is the one existing callers already use); a waddle and a room hash their
    /// string behind a tag starting with a NUL byte (`"\0waddle\0"`, `"\0room\0"`).
    pub fn partition(&self) -> PartitionId {
        match *self {
            PlacementKey::User(jid) => partition_of(jid),
            PlacementKey::Waddle(id) => tagged_partition(WADDLE_TAG, id),
            PlacementKey::Room(jid) => tagged_partition(ROOM_TAG, jid),
        }
    }
}

/// Rendezvous weight of a node for a partition: [`assign`] prefers high weights when it
/// has a choice, so that its choices depend on node ids and never on the members' order.
pub fn rendezvous_weight(partition: PartitionId, node: NodeId) -> u64 {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&partition.to_be_bytes());
    key[4..].copy_from_slice(&node.to_be_bytes());
    stable_hash(&key)
}

/// Maps partitions to the nodes that hold them. The first node of the replica set is the
/// owner (where the actor runs); the rest hold replicas.
pub trait Placement: Send + Sync {
    /// The version of the placement; a newer map has a larger epoch.
    fn epoch(&self) -> u64;

    fn replicas(&self, partition: PartitionId) -> &[NodeId];

    fn owner(&self, partition: PartitionId) -> Option<NodeId> {
        self.replicas(partition).first().copied()
    }
}

/// The placement of every partition at one epoch: `replicas[p]` is partition `p`'s replica
/// set, distinct nodes, owner first. Made by [`assign`] (or [`PartitionMap::single`]);
/// a map from elsewhere (deserialised) is read defensively: a partition it lacks has no
/// replicas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMap {
    pub epoch: u64,
    pub replicas: Vec<Vec<NodeId>>,
    /// `learners[p]`: nodes sent partition `p`'s log before they become its replicas (a
    /// node that joined, catching up). Not replicas: they own nothing, count towards no
    /// majority, and nothing but the replicated log looks at them. Empty: none anywhere.
    #[serde(default)]
    pub learners: Vec<Vec<NodeId>>,
}

impl PartitionMap {
    /// A cluster of one at epoch 1: `node` owns every partition.
    pub fn single(node: NodeId) -> PartitionMap {
        PartitionMap { epoch: 1, replicas: vec![vec![node]; PARTS], learners: Vec::new() }
    }

    /// The learners of a partition (none for most).
    pub fn learners(&self, partition: PartitionId) -> &[NodeId] {
        self.learners.get(partition as usize).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The nodes that hold a replica of some partition, ascending.
    pub fn replica_nodes(&self) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = self.replicas.iter().flatten().copied().collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// The nodes that learn some partition, ascending.
    pub fn learner_nodes(&self) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = self.learners.iter().flatten().copied().collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// This map with each partition's learners counted as holders (after its replicas): what
    /// the next [`assign`] starts from, so that a node that caught up as a learner is
    /// given the partitions whose logs it holds.
    fn with_learners_as_holders(&self) -> PartitionMap {
        let mut replicas = self.replicas.clone();
        for (p, set) in replicas.iter_mut().enumerate() {
            for &node in self.learners(p as PartitionId) {
                if !set.contains(&node) {
                    set.push(node);
                }
            }
        }
        PartitionMap { epoch: self.epoch, replicas, learners: Vec::new() }
    }

    /// The owner of a partition, `None` only for a map of no members.
    pub fn owner(&self, partition: PartitionId) -> Option<NodeId> {
        self.replicas(partition).first().copied()
    }

    /// The replica set of a partition, owner first.
    pub fn replicas(&self, partition: PartitionId) -> &[NodeId] {
        self.replicas.get(partition as usize).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The partitions `node` owns, ascending.
    pub fn partitions_of(&self, node: NodeId) -> Vec<PartitionId> {
        (0..PARTITIONS).filter(|&p| self.owner(p) == Some(node)).collect()
    }

    /// The partitions whose replica set includes `node` (owned ones too), ascending.
    pub fn replicated_on(&self, node: NodeId) -> Vec<PartitionId> {
        (0..PARTITIONS).filter(|&p| self.replicas(p).contains(&node)).collect()
    }

    /// How many partitions each node owns (nodes owning none are absent).
    pub fn owner_counts(&self) -> BTreeMap<NodeId, usize> {
        let mut counts = BTreeMap::new();
        for node in (0..PARTITIONS).filter_map(|p| self.owner(p)) {
            *counts.entry(node).or_insert(0) += 1;
        }
        counts
    }

    /// How many replica slots (owned partitions included) each node holds.
    pub fn replica_counts(&self) -> BTreeMap<NodeId, usize> {
        let mut counts = BTreeMap::new();
        for p in 0..PARTITIONS {
            for &node in self.replicas(p) {
                *counts.entry(node).or_insert(0) += 1;
            }
        }
        counts
    }
}

impl Placement for PartitionMap {
    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn replicas(&self, partition: PartitionId) -> &[NodeId] {
        PartitionMap::replicas(self, partition)
    }
}

/// Computes the placement for `members` with `replication` copies of each partition
/// (clamped to `1..=members`), starting from `previous` (the map in force, if any). Pure
/// and deterministic: the order of `members` and duplicates in it do not matter, and the
/// epoch is `previous.epoch + 1`, or 1. With no members every replica set is empty.
///
/// Bounded load: every node owns `floor(256 / N)` or `ceil(256 / N)` partitions and holds
/// `floor(256 r / N)` or `ceil(256 r / N)` replica slots (its owned partitions included);
/// the larger caps go to the nodes that held most before. Within those caps it moves as
/// little as possible, in two steps, each a minimum-cost assignment:
///
/// 1. Owners. Fewest owner changes first; among those, the most new owners taken from
///    the partition's previous replica set (they have the data); then the highest
///    rendezvous weights.
/// 2. Replicas (`r > 1`). The other `r - 1` slots of each partition: fewest nodes new to
///    the partition first, then the highest rendezvous weights.
///
/// So a membership that does not change moves nothing, a new node takes only its share,
/// and a removed node's partitions and slots are the only ones to move unless another
/// node held more than its new cap. (The rendezvous tie-break is exact for clusters of up
/// to 4096 nodes; beyond that it is approximate, which changes nothing else.)
pub fn assign(previous: Option<&PartitionMap>, members: &[NodeId], replication: usize) -> PartitionMap {
    let epoch = previous.map_or(1, |m| m.epoch.saturating_add(1));
    let mut nodes = members.to_vec();
    nodes.sort_unstable();
    nodes.dedup();
    if nodes.is_empty() {
        return PartitionMap { epoch, replicas: vec![Vec::new(); PARTS], learners: Vec::new() };
    }
    let n = nodes.len();
    let r = replication.clamp(1, n);
    let index_of = |id: NodeId| nodes.binary_search(&id).ok();

    // The previous map in terms of indices into `nodes`, members only.
    let mut prev_sets: Vec<Vec<usize>> = vec![Vec::new(); PARTS];
    let mut prev_owner: Vec<Option<usize>> = vec![None; PARTS];
    if let Some(map) = previous {
        for (p, set) in prev_sets.iter_mut().enumerate() {
            let p = p as PartitionId;
            prev_owner[p as usize] = map.owner(p).and_then(index_of);
            for i in map.replicas(p).iter().filter_map(|&id| index_of(id)) {
                if !set.contains(&i) {
                    set.push(i);
                }
            }
        }
    }
    // rank[p][i]: 0 for the node of highest rendezvous weight for partition p, and so on.
    let weights: Vec<Vec<u64>> =
        (0..PARTITIONS).map(|p| nodes.iter().map(|&id| rendezvous_weight(p, id)).collect()).collect();
    let rank: Vec<Vec<i64>> = weights
        .iter()
        .map(|w| {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by_key(|&i| (Reverse(w[i]), i));
            let mut rank = vec![0i64; n];
            for (k, &i) in order.iter().enumerate() {
                rank[i] = k as i64;
            }
            rank
        })
        .collect();

    // 1. Owners.
    let mut owned_before = vec![0usize; n];
    for &i in prev_owner.iter().flatten() {
        owned_before[i] += 1;
    }
    let owner_caps = bounded_caps(PARTS, &owned_before, &nodes);
    let owners = min_cost_assign(&[1; PARTS], &owner_caps, |p, i| {
        Some(if prev_owner[p] == Some(i) {
            0
        } else if prev_sets[p].contains(&i) {
            CHANGED + rank[p][i]
        } else {
            CHANGED + NEW + rank[p][i]
        })
    });
    let owner: Vec<Option<usize>> = owners.iter().map(|c| c.first().copied()).collect();

    // 2. The other replicas.
    let mut followers: Vec<Vec<usize>> = vec![Vec::new(); PARTS];
    if r > 1 {
        let mut held_before = vec![0usize; n];
        for &i in prev_sets.iter().flatten() {
            held_before[i] += 1;
        }
        let mut load = vec![0usize; n];
        for &i in owner.iter().flatten() {
            load[i] += 1;
        }
        let room: Vec<usize> = bounded_caps(PARTS * r, &held_before, &nodes)
            .iter()
            .zip(&load)
            .map(|(cap, owned)| cap.saturating_sub(*owned))
            .collect();
        followers = min_cost_assign(&vec![r - 1; PARTS], &room, |p, i| {
            (owner[p] != Some(i)).then(|| if prev_sets[p].contains(&i) { rank[p][i] } else { NEW + rank[p][i] })
        });
        // Only if the caps left no way to complete a replica set (not seen with r <= N):
        // the least-loaded other node, so that replica sets are always complete.
        for i in followers.iter().flatten() {
            load[*i] += 1;
        }
        for (p, set) in followers.iter_mut().enumerate() {
            while set.len() < r - 1 {
                let pick =
                    (0..n).filter(|&i| owner[p] != Some(i) && !set.contains(&i)).min_by_key(|&i| (load[i], rank[p][i]));
                let Some(i) = pick else { break };
                set.push(i);
                load[i] += 1;
            }
        }
    }

    let replicas = (0..PARTS)
        .map(|p| {
            let mut rest = std::mem::take(&mut followers[p]);
            // Previous members in their previous order (the next in line stays next),
            // then newcomers by weight.
            rest.sort_by_key(|&i| (prev_sets[p].iter().position(|&x| x == i).unwrap_or(usize::MAX), rank[p][i]));
            owner[p].into_iter().chain(rest).map(|i| nodes[i]).collect()
        })
        .collect();
    PartitionMap { epoch, replicas, learners: Vec::new() }
}

/// The ring while the `joining` nodes catch up: the ring of `members` (from `previous`,
/// its learners counted as holders), with each joining node a learner of the partitions
/// the ring of `members ∪ joining` would give it. The partitions keep serving on their
/// replicas while the learners are sent their logs; once a joining node is a member,
/// [`assign`] from this map (which this function does with no one joining) makes it a
/// replica, or the owner, of those partitions, whose logs it then holds.
pub fn assign_catching_up(
    previous: Option<&PartitionMap>,
    members: &[NodeId],
    joining: &[NodeId],
    replication: usize,
) -> PartitionMap {
    let holders = previous.map(PartitionMap::with_learners_as_holders);
    let mut map = assign(holders.as_ref(), members, replication);
    let joining: Vec<NodeId> = joining.iter().filter(|n| !members.contains(n)).copied().collect();
    if joining.is_empty() {
        return map;
    }
    let everyone: Vec<NodeId> = members.iter().chain(&joining).copied().collect();
    let target = assign(holders.as_ref(), &everyone, replication);
    map.learners =
        target.replicas.iter().map(|set| set.iter().filter(|n| joining.contains(n)).copied().collect()).collect();
    map
}

/// Cost of a pair that puts a node on a partition it was not on: more than any sum of
/// rendezvous ranks (at most 256 · r · N < 2^32 for N ≤ 4096).
const NEW: i64 = 1 << 32;
/// Cost of an owner change: more than any sum of the other owner costs (256 · (NEW + N)).
const CHANGED: i64 = 1 << 44;

/// Splits `total` slots over the nodes as evenly as possible: each gets `total / n`, and
/// the remainder goes one each to the nodes that held most before (then by a hash of the
/// node id, so ties do not depend on the members' order).
fn bounded_caps(total: usize, held_before: &[usize], nodes: &[NodeId]) -> Vec<usize> {
    let n = nodes.len();
    let mut caps = vec![total / n; n];
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (Reverse(held_before[i]), Reverse(stable_hash(&nodes[i].to_be_bytes())), nodes[i]));
    for &i in order.iter().take(total % n) {
        caps[i] += 1;
    }
    caps
}

/// Gives partition `p` up to `need[p]` distinct nodes, node `i` at most `room[i]`
/// partitions, the pair `(p, i)` only where `cost(p, i)` is `Some` (costs not negative):
/// as many pairs as possible, and of those assignments one of least total cost. A min-cost
/// flow (source → partition → node → sink) by successive shortest paths with Johnson
/// potentials; deterministic, since the graph is built and searched in index order.
fn min_cost_assign(need: &[usize], room: &[usize], cost: impl Fn(usize, usize) -> Option<i64>) -> Vec<Vec<usize>> {
    let (parts, n) = (need.len(), room.len());
    let partition = |p: usize| 1 + p;
    let node = |i: usize| 1 + parts + i;
    let (source, sink) = (0, 1 + parts + n);
    let mut flow = Flow { edges: vec![Vec::new(); sink + 1] };
    for (p, &k) in need.iter().enumerate() {
        flow.add(source, partition(p), k, 0);
        for i in 0..n {
            if let Some(c) = cost(p, i) {
                flow.add(partition(p), node(i), 1, c);
            }
        }
    }
    for (i, &k) in room.iter().enumerate() {
        flow.add(node(i), sink, k, 0);
    }
    flow.run(source, sink);
    (0..parts)
        .map(|p| {
            flow.edges[partition(p)]
                .iter()
                .filter(|e| e.to >= node(0) && e.to < sink && e.cap == 0)
                .map(|e| e.to - node(0))
                .collect()
        })
        .collect()
}

#[derive(Clone)]
struct Edge {
    to: usize,
    /// Residual capacity.
    cap: usize,
    cost: i64,
    /// Index of the reverse edge in `edges[to]`.
    rev: usize,
}

struct Flow {
    edges: Vec<Vec<Edge>>,
}

impl Flow {
    fn add(&mut self, from: usize, to: usize, cap: usize, cost: i64) {
        let (rev_from, rev_to) = (self.edges[to].len(), self.edges[from].len());
        self.edges[from].push(Edge { to, cap, cost, rev: rev_from });
        self.edges[to].push(Edge { to: from, cap: 0, cost: -cost, rev: rev_to });
    }

    /// Pushes as much flow as possible from `source` to `sink`, always along a cheapest
    /// path, so the result is a maximum flow of minimum cost. Costs start non-negative,
    /// so zero potentials are valid for the first search.
    fn run(&mut self, source: usize, sink: usize) {
        let v = self.edges.len();
        let mut potential = vec![0i64; v];
        loop {
            let mut dist = vec![i64::MAX; v];
            let mut via: Vec<Option<(usize, usize)>> = vec![None; v];
            let mut heap = BinaryHeap::new();
            dist[source] = 0;
            heap.push(Reverse((0i64, source)));
            while let Some(Reverse((d, u))) = heap.pop() {
                if d > dist[u] {
                    continue;
                }
                for (k, e) in self.edges[u].iter().enumerate() {
                    if e.cap == 0 {
                        continue;
                    }
                    let next = d + e.cost + potential[u] - potential[e.to];
                    if next < dist[e.to] {
                        dist[e.to] = next;
                        via[e.to] = Some((u, k));
                        heap.push(Reverse((next, e.to)));
                    }
                }
            }
            if dist[sink] == i64::MAX {
                return;
            }
            for (pot, d) in potential.iter_mut().zip(&dist) {
                if *d != i64::MAX {
                    *pot += d;
                }
            }
            let mut push = usize::MAX;
            let mut x = sink;
            while let Some((u, k)) = via[x] {
                push = push.min(self.edges[u][k].cap);
                x = u;
            }
            let mut x = sink;
            while let Some((u, k)) = via[x] {
                self.edges[u][k].cap -= push;
                let rev = self.edges[u][k].rev;
                self.edges[x][rev].cap += push;
                x = u;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn members(n: u64) -> Vec<NodeId> {
        (1..=n).collect()
    }

    /// Every partition has `r` distinct member nodes; owners and replica slots are within
    /// one of each other over the members.
    fn assert_valid(map: &PartitionMap, nodes: &[NodeId], r: usize) {
        assert_eq!(map.replicas.len(), PARTS);
        for p in 0..PARTITIONS {
            let set = map.replicas(p);
            assert_eq!(set.len(), r, "partition {p}: {set:?}");
            let distinct: BTreeSet<_> = set.iter().collect();
            assert_eq!(distinct.len(), r, "partition {p} repeats a node: {set:?}");
            assert!(set.iter().all(|x| nodes.contains(x)), "partition {p} has a non-member: {set:?}");
        }
        let n = nodes.len();
        for (what, counts, total) in
            [("owned", map.owner_counts(), PARTS), ("replica slots", map.replica_counts(), PARTS * r)]
        {
            let (lo, hi) = (total / n, total.div_ceil(n));
            for node in nodes {
                let c = counts.get(node).copied().unwrap_or(0);
                assert!((lo..=hi).contains(&c), "{what}: node {node} has {c}, not in {lo}..={hi}: {counts:?}");
            }
        }
    }

    /// Partitions whose owner differs between the maps.
    fn owners_moved(a: &PartitionMap, b: &PartitionMap) -> usize {
        (0..PARTITIONS).filter(|&p| a.owner(p) != b.owner(p)).count()
    }

    /// Replica slots of `b` that `a` did not have (a node newly holding a partition).
    fn slots_added(a: &PartitionMap, b: &PartitionMap) -> usize {
        (0..PARTITIONS).map(|p| b.replicas(p).iter().filter(|x| !a.replicas(p).contains(x)).count()).sum()
    }

    #[test]
    fn hash_values_are_pinned() {
        // If these change, nodes of different versions would disagree on placement.
        assert_eq!(stable_hash(b""), mix64(0xcbf2_9ce4_8422_2325));
        assert_eq!(stable_hash(b"alice@localhost"), PINNED_ALICE_HASH);
        assert_eq!(partition_of("alice@localhost"), PINNED_ALICE_PARTITION);
        assert_eq!(partition_of("bob@localhost"), PINNED_BOB_PARTITION);
        assert_eq!(PlacementKey::User("alice@localhost").partition(), PINNED_ALICE_PARTITION);
        assert_eq!(PlacementKey::Waddle("alice@localhost").partition(), PINNED_ALICE_AS_WADDLE);
        assert_eq!(PlacementKey::Room("alice@localhost").partition(), PINNED_ALICE_AS_ROOM);
        assert_eq!(rendezvous_weight(7, 3), PINNED_WEIGHT_7_3);
    }

    const PINNED_ALICE_HASH: u64 = 2_925_056_051_020_457_370;
    const PINNED_ALICE_PARTITION: PartitionId = 154;
    const PINNED_BOB_PARTITION: PartitionId = 94;
    const PINNED_ALICE_AS_WADDLE: PartitionId = 120;
    const PINNED_ALICE_AS_ROOM: PartitionId = 96;
    const PINNED_WEIGHT_7_3: u64 = 12_547_109_474_812_046_859;

    #[test]
    fn key_kinds_hash_apart() {
        // The same string as different kinds lands on unrelated partitions: over many
        // strings, the kinds agree about as often as chance (1/256) would have it.
        let same = (0..10_000)
            .filter(|i| {
                let s = format!("k{i}");
                PlacementKey::User(&s).partition() == PlacementKey::Waddle(&s).partition()
                    || PlacementKey::Waddle(&s).partition() == PlacementKey::Room(&s).partition()
            })
            .count();
        assert!(same < 150, "{same} of 10000 collide");
        // A user's partition is the registry's partition_of.
        for i in 0..1000 {
            let jid = format!("user{i}@example.org");
            assert_eq!(PlacementKey::User(&jid).partition(), partition_of(&jid));
        }
    }

    #[test]
    fn single_node_owns_every_partition() {
        let map = PartitionMap::single(42);
        assert_eq!(map.epoch(), 1);
        for p in 0..PARTITIONS {
            assert_eq!(Placement::owner(&map, p), Some(42));
            assert_eq!(map.replicas(p), &[42]);
        }
        assert_eq!(map.partitions_of(42).len(), PARTS);
        assert_eq!(map, assign(None, &[42], 3));
    }

    #[test]
    fn keys_spread_evenly_over_nodes() {
        let partitions: Vec<PartitionId> =
            (0..100_000).map(|i| PlacementKey::User(&format!("user{i}@example.org")).partition()).collect();
        // Measured max/mean: 1.006 (3 nodes), 1.014 (5), 1.037 (10).
        for n in [3, 5, 10] {
            let nodes = members(n);
            let map = assign(None, &nodes, 1);
            assert_valid(&map, &nodes, 1);
            let mut per_node: BTreeMap<NodeId, usize> = BTreeMap::new();
            for &p in &partitions {
                *per_node.entry(map.owner(p).unwrap_or(0)).or_insert(0) += 1;
            }
            assert_eq!(per_node.len(), n as usize);
            let max = per_node.values().copied().max().unwrap_or(0) as f64;
            let mean = partitions.len() as f64 / n as f64;
            assert!(max / mean <= 1.10, "{n} nodes: max/mean {:.3}: {per_node:?}", max / mean);
            let owned = map.owner_counts();
            let spread = owned.values().max().unwrap_or(&0) - owned.values().min().unwrap_or(&0);
            assert!(spread <= 1, "{n} nodes: partitions per node {owned:?}");
        }
    }

    #[test]
    fn growing_by_one_moves_only_the_new_nodes_share() {
        let mut map = assign(None, &members(1), 1);
        for n in 1..=10u64 {
            let next = assign(Some(&map), &members(n + 1), 1);
            assert_valid(&next, &members(n + 1), 1);
            let moved = owners_moved(&map, &next);
            // Every move is to the new node, and it gets exactly its share.
            let new_share = next.partitions_of(n + 1).len();
            assert_eq!(moved, new_share, "{n} -> {}", n + 1);
            let fraction = moved as f64 / PARTS as f64;
            assert!(fraction <= 1.2 / (n + 1) as f64, "{n} -> {}: {fraction:.3} moved", n + 1);
            map = next;
        }
    }

    #[test]
    fn growing_by_one_moves_few_replica_slots() {
        let mut map = assign(None, &members(1), 3);
        for n in 1..=10u64 {
            let next = assign(Some(&map), &members(n + 1), 3);
            let r = 3.min(n as usize + 1);
            assert_valid(&next, &members(n + 1), r);
            let owner_fraction = owners_moved(&map, &next) as f64 / PARTS as f64;
            assert!(owner_fraction <= 1.2 / (n + 1) as f64, "{n} -> {}: owners {owner_fraction:.3}", n + 1);
            // Only the new node gains slots: the others keep a subset of what they held.
            let added = slots_added(&map, &next);
            assert_eq!(added, next.replicated_on(n + 1).len(), "{n} -> {}", n + 1);
            let fraction = added as f64 / (PARTS * r) as f64;
            assert!(fraction <= 1.2 / (n + 1) as f64, "{n} -> {}: slots {fraction:.3}", n + 1);
            map = next;
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_partitions() {
        // Measured shares: 64 of 4 nodes; 51 or 52 of 5; 25 or 26 of 10. The survivors
        // are all under their new cap, so nothing else needs to move.
        for (n, shares) in [(4u64, [64, 64]), (5, [51, 52]), (10, [25, 26])] {
            let before = assign(None, &members(n), 1);
            for gone in members(n) {
                let rest: Vec<NodeId> = members(n).into_iter().filter(|&x| x != gone).collect();
                let after = assign(Some(&before), &rest, 1);
                assert_valid(&after, &rest, 1);
                for p in 0..PARTITIONS {
                    if before.owner(p) != Some(gone) {
                        assert_eq!(before.owner(p), after.owner(p), "partition {p} moved needlessly");
                    }
                }
                let share = before.partitions_of(gone).len();
                assert!(shares.contains(&share), "{n} nodes: node {gone} owned {share}");
                assert_eq!(owners_moved(&before, &after), share);
            }
        }
    }

    #[test]
    fn removing_a_node_from_a_skewed_map_moves_its_share_plus_the_rebalance() {
        // Node 1 owns 200, node 2 owns 40, node 3 owns 16; node 3 leaves. Node 1 must
        // shed 72 to reach 128, and node 3's 16 must go: 88 moves, all to node 2.
        let owner_of = |p: u32| {
            if p < 200 {
                1
            } else if p < 240 {
                2
            } else {
                3
            }
        };
        let before = PartitionMap {
            epoch: 9,
            replicas: (0..PARTITIONS).map(|p| vec![owner_of(p)]).collect(),
            learners: Vec::new(),
        };
        let after = assign(Some(&before), &[1, 2], 1);
        assert_eq!(after.epoch, 10);
        assert_valid(&after, &[1, 2], 1);
        assert_eq!(owners_moved(&before, &after), 16 + 72);
        assert!((200..240).all(|p| after.owner(p) == Some(2)), "node 2 kept its own");
        // And a node joining a cluster of one takes exactly its share.
        let grown = assign(Some(&PartitionMap::single(1)), &[1, 2, 3, 4], 1);
        assert_eq!(owners_moved(&PartitionMap::single(1), &grown), 256 - 64);
    }

    #[test]
    fn removing_a_node_moves_only_its_replica_slots() {
        // Measured: of 5 nodes with 3 replicas each node holds 153 or 154 slots; when one
        // leaves exactly those are re-homed, every other slot stays, and a partition the
        // leaver owned is taken over by one of its replicas.
        let before = assign(None, &members(5), 3);
        assert_valid(&before, &members(5), 3);
        for gone in members(5) {
            let rest: Vec<NodeId> = members(5).into_iter().filter(|&x| x != gone).collect();
            let after = assign(Some(&before), &rest, 3);
            assert_valid(&after, &rest, 3);
            let held = before.replicated_on(gone).len();
            assert!(held == 153 || held == 154, "node {gone} held {held}");
            assert_eq!(slots_added(&before, &after), held);
            for p in 0..PARTITIONS {
                for node in before.replicas(p).iter().filter(|&&x| x != gone) {
                    assert!(after.replicas(p).contains(node), "partition {p} dropped {node}");
                }
                if before.owner(p) == Some(gone) {
                    assert!(after.owner(p).is_some_and(|o| before.replicas(p).contains(&o)), "partition {p}");
                } else {
                    assert_eq!(before.owner(p), after.owner(p));
                }
            }
        }
    }

    #[test]
    fn member_order_and_duplicates_do_not_matter() {
        let prev = assign(None, &[10, 20, 30, 40], 2);
        let base = assign(Some(&prev), &[10, 20, 30, 40, 50], 3);
        for order in [vec![50, 40, 30, 20, 10], vec![30, 10, 50, 20, 40], vec![20, 20, 50, 10, 40, 30, 10]] {
            assert_eq!(assign(Some(&prev), &order, 3), base, "{order:?}");
        }
        assert_eq!(assign(None, &[3, 1, 2], 1), assign(None, &[1, 2, 3], 1));
    }

    #[test]
    fn same_input_same_map_and_epoch_increments() {
        let a = assign(None, &members(6), 2);
        assert_eq!(a.epoch, 1);
        assert_eq!(a, assign(None, &members(6), 2));
        let b = assign(Some(&a), &members(7), 2);
        assert_eq!(b.epoch, 2);
        assert_eq!(b, assign(Some(&a), &members(7), 2));
        assert_eq!(assign(Some(&b), &members(7), 2).epoch, 3);
    }

    #[test]
    fn unchanged_membership_moves_nothing() {
        for (n, r) in [(1, 1), (3, 1), (3, 3), (5, 2), (7, 3), (10, 3)] {
            let map = assign(None, &members(n), r);
            let again = assign(Some(&map), &members(n), r);
            assert_eq!(again.epoch, map.epoch + 1);
            assert_eq!(again.replicas, map.replicas, "{n} nodes, {r} replicas");
        }
    }

    #[test]
    fn replication_is_clamped_and_replica_sets_are_distinct() {
        assert_valid(&assign(None, &members(2), 5), &members(2), 2);
        assert_valid(&assign(None, &members(3), 0), &members(3), 1);
        for n in 1..=12 {
            for r in 1..=4 {
                let map = assign(None, &members(n), r);
                assert_valid(&map, &members(n), r.min(n as usize));
            }
        }
    }

    #[test]
    fn no_members_means_no_replicas() {
        let map = assign(Some(&PartitionMap::single(1)), &[], 3);
        assert_eq!(map.epoch, 2);
        assert!((0..PARTITIONS).all(|p| map.replicas(p).is_empty() && map.owner(p).is_none()));
    }

    #[test]
    fn partitions_of_and_counts_agree() {
        let map = assign(None, &members(5), 3);
        let owned = map.owner_counts();
        let held = map.replica_counts();
        for node in members(5) {
            assert_eq!(map.partitions_of(node).len(), owned.get(&node).copied().unwrap_or(0));
            assert_eq!(map.replicated_on(node).len(), held.get(&node).copied().unwrap_or(0));
            assert!(map.partitions_of(node).iter().all(|&p| map.owner(p) == Some(node)));
        }
        assert_eq!(owned.values().sum::<usize>(), PARTS);
        assert_eq!(held.values().sum::<usize>(), PARTS * 3);
        assert!(map.partitions_of(99).is_empty());
    }

    #[test]
    fn joining_nodes_learn_the_partitions_they_will_hold_and_hold_nothing_yet() {
        let start = assign(None, &members(3), 3);
        let catching_up = assign_catching_up(Some(&start), &members(3), &[4], 3);
        assert_eq!(catching_up.epoch, start.epoch + 1);
        // The replicas in force are untouched; node 4 only learns, where it will hold.
        assert_eq!(catching_up.replicas, start.replicas);
        let target = assign(Some(&start), &members(4), 3);
        for p in 0..PARTITIONS {
            assert_eq!(catching_up.learners(p).contains(&4), target.replicas(p).contains(&4), "partition {p}");
        }
        assert_eq!(catching_up.learner_nodes(), vec![4]);
        assert_eq!(catching_up.replica_nodes(), members(3));
        // Once it is a member, it holds its share, all of it where it learned.
        let promoted = assign_catching_up(Some(&catching_up), &members(4), &[], 3);
        assert_eq!(promoted.owner_counts()[&4], 64);
        assert!(promoted.learners.is_empty());
        assert_valid(&promoted, &members(4), 3);
        for p in 0..PARTITIONS {
            if promoted.replicas(p).contains(&4) {
                assert!(catching_up.learners(p).contains(&4), "node 4 holds partition {p}, whose log it was not sent");
            }
        }
        // Nothing joining: the ring of the members, which moves nothing.
        let settled = assign_catching_up(Some(&start), &members(3), &[], 3);
        assert_eq!(settled.replicas, start.replicas);
        assert!(settled.learners.is_empty());
        // A member listed as joining too is a member.
        assert!(assign_catching_up(Some(&start), &members(3), &[3], 3).learners.is_empty());
    }
}
