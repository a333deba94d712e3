//! How evenly placement spreads keys, and how much moves when a node joins.
//!
//! `cargo run -p waddle-cluster --example placement_balance --release`
//!
//! Prints, for 3, 5 and 10 nodes, the keys per node for 100,000 user JIDs under
//! bounded-load placement ([`assign`]) and, for comparison, under pure rendezvous hashing
//! (each partition to the node of highest [`rendezvous_weight`]); then, for N -> N+1
//! with N = 1..=10, the fraction of owners and of replica slots (replication 3) that move.

use std::collections::BTreeMap;

use waddle_cluster::placement::{assign, rendezvous_weight, NodeId, PartitionId, PartitionMap, PlacementKey};
use waddle_cluster::PARTITIONS;

const KEYS: usize = 100_000;

fn members(n: u64) -> Vec<NodeId> {
    (1..=n).collect()
}

/// Each partition to its highest-weight node, no load bound.
fn pure_rendezvous(nodes: &[NodeId]) -> PartitionMap {
    let replicas = (0..PARTITIONS)
        .map(|p| nodes.iter().copied().max_by_key(|&node| (rendezvous_weight(p, node), node)).into_iter().collect())
        .collect();
    PartitionMap { epoch: 1, replicas, learners: Vec::new() }
}

fn report(label: &str, map: &PartitionMap, nodes: &[NodeId], keys: &[PartitionId]) {
    let mut per_node: BTreeMap<NodeId, usize> = nodes.iter().map(|&n| (n, 0)).collect();
    for &p in keys {
        if let Some(count) = map.owner(p).and_then(|o| per_node.get_mut(&o)) {
            *count += 1;
        }
    }
    let min = per_node.values().copied().min().unwrap_or(0);
    let max = per_node.values().copied().max().unwrap_or(0);
    let mean = keys.len() as f64 / nodes.len() as f64;
    let owned: Vec<usize> = nodes.iter().map(|n| map.partitions_of(*n).len()).collect();
    let (pmin, pmax) = (owned.iter().min().unwrap_or(&0), owned.iter().max().unwrap_or(&0));
    println!(
        "  {label:<16} keys/node min {min:>6} max {max:>6} mean {mean:>8.1} max/mean {:.3}   partitions/node {pmin}-{pmax}",
        max as f64 / mean
    );
}

fn changed_owners(a: &PartitionMap, b: &PartitionMap) -> usize {
    (0..PARTITIONS).filter(|&p| a.owner(p) != b.owner(p)).count()
}

fn added_slots(a: &PartitionMap, b: &PartitionMap) -> usize {
    (0..PARTITIONS).map(|p| b.replicas(p).iter().filter(|x| !a.replicas(p).contains(x)).count()).sum()
}

fn main() {
    let keys: Vec<PartitionId> =
        (0..KEYS).map(|i| PlacementKey::User(&format!("user{i}@example.org")).partition()).collect();
    println!("{KEYS} user keys over {PARTITIONS} partitions");
    for n in [3, 5, 10] {
        let nodes = members(n);
        println!("{n} nodes:");
        report("bounded-load", &assign(None, &nodes, 1), &nodes, &keys);
        report("pure rendezvous", &pure_rendezvous(&nodes), &nodes, &keys);
    }

    println!();
    println!("N -> N+1, each map computed from the previous one (bound 1.2/(N+1)):");
    println!("  {:>7}  {:>22}  {:>26}  {:>8}", "N->N+1", "owners moved (r=1)", "replica slots added (r=3)", "bound");
    let mut single = assign(None, &members(1), 1);
    let mut triple = assign(None, &members(1), 3);
    for n in 1..=10u64 {
        let next_single = assign(Some(&single), &members(n + 1), 1);
        let next_triple = assign(Some(&triple), &members(n + 1), 3);
        let moved = changed_owners(&single, &next_single);
        let slots = PARTITIONS as usize * 3.min(n as usize + 1);
        let added = added_slots(&triple, &next_triple);
        println!(
            "  {:>7}  {:>3}/256 = {:>10.4}  {:>4}/{:<4} = {:>13.4}  {:>8.4}",
            format!("{n}->{}", n + 1),
            moved,
            moved as f64 / f64::from(PARTITIONS),
            added,
            slots,
            added as f64 / slots as f64,
            1.2 / (n + 1) as f64
        );
        single = next_single;
        triple = next_triple;
    }
}
