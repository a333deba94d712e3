//! The fault schedule: a list drawn from a seed, run one fault at a time. Each fault
//! starts `gap_secs` after the previous one has healed and the cluster has converged
//! again (so that one fault's effects are not blamed on the next), and its target is
//! chosen when it starts, from `pick`, among the nodes that are members then.

use serde::Serialize;

use crate::prng::Prng;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL, then a restart on the same data dir after `hold_secs`.
    Kill,
    /// SIGSTOP for `hold_secs`, then SIGCONT.
    Stop,
    /// One node cut off from the others for `hold_secs` (netns mode only).
    Partition,
    /// Packet loss and delay on one node's link for `hold_secs` (netns mode with netem).
    Netem,
    /// Every node restarted in turn, waiting for convergence after each.
    RollingRestart,
    /// A new node joins.
    Join,
    /// A node leaves through its admin API (or is killed and removed by a survivor).
    Leave,
    /// SIGKILL, data dir wiped, node removed and never restarted: the loss that
    /// `--expect-loss` must detect (never in a normal schedule).
    KillWipe,
    /// Not a fault: the timeline's mark of the mid-run permission revocation.
    Revoke,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Fault {
    pub gap_secs: u64,
    pub kind: FaultKind,
    pub pick: u64,
    pub hold_secs: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    Ci,
    Soak,
    /// No faults: the baseline.
    None,
    /// One unrecoverable kill (`--expect-loss`).
    ExpectLoss,
}

/// The faults of a run. `duration_secs` bounds the soak profile (the others have a
/// fixed list); `nodes` is the starting cluster size, which joins and leaves keep
/// between `nodes - 1` and `nodes + 1`.
pub fn schedule(profile: Profile, seed: u64, nodes: usize, duration_secs: u64) -> Vec<Fault> {
    let mut rng = Prng::new(seed);
    match profile {
        Profile::None => Vec::new(),
        Profile::ExpectLoss => {
            vec![Fault { gap_secs: 12, kind: FaultKind::KillWipe, pick: rng.next_u64(), hold_secs: 0 }]
        }
        Profile::Ci => [
            (FaultKind::Kill, 6),
            (FaultKind::Stop, 8),
            (FaultKind::Partition, 10),
            (FaultKind::Join, 0),
            (FaultKind::Leave, 0),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (kind, hold))| Fault {
            gap_secs: if i == 0 { 12 } else { rng.range(6, 10) },
            kind,
            pick: rng.next_u64(),
            hold_secs: hold,
        })
        .collect(),
        Profile::Soak => {
            let mut faults = Vec::new();
            let mut size = nodes;
            // A rough cost per fault (gap + hold + convergence) bounds the list, three
            // times over: faults often take less than that, and the runner stops
            // starting faults once the duration is over, so the soak lasts its duration.
            let mut budget = duration_secs.saturating_mul(3);
            while budget > 0 {
                let gap = rng.range(2, 6);
                let hold = rng.range(3, 10);
                let kind = match rng.range(0, 99) {
                    0..=24 => FaultKind::Kill,
                    25..=44 => FaultKind::Stop,
                    45..=64 => FaultKind::Partition,
                    65..=79 => FaultKind::Netem,
                    80..=84 => FaultKind::RollingRestart,
                    85..=92 if size < nodes + 1 => FaultKind::Join,
                    85..=92 => FaultKind::Leave,
                    _ if size > nodes.saturating_sub(1).max(3) => FaultKind::Leave,
                    _ => FaultKind::Join,
                };
                match kind {
                    FaultKind::Join => size += 1,
                    FaultKind::Leave => size -= 1,
                    _ => {}
                }
                let cost = gap + hold + 5 + if kind == FaultKind::RollingRestart { 10 * size as u64 } else { 0 };
                faults.push(Fault { gap_secs: gap, kind, pick: rng.next_u64(), hold_secs: hold });
                budget = budget.saturating_sub(cost);
            }
            faults
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_reproduces_its_schedule() {
        for profile in [Profile::Ci, Profile::Soak, Profile::ExpectLoss] {
            assert_eq!(schedule(profile, 7, 5, 600), schedule(profile, 7, 5, 600));
        }
        assert_ne!(schedule(Profile::Soak, 7, 5, 600), schedule(Profile::Soak, 8, 5, 600));
        assert!(schedule(Profile::None, 7, 3, 600).is_empty());
    }

    #[test]
    fn ci_has_one_of_each_required_fault() {
        let kinds: Vec<FaultKind> = schedule(Profile::Ci, 1, 3, 0).iter().map(|f| f.kind).collect();
        assert_eq!(kinds, [FaultKind::Kill, FaultKind::Stop, FaultKind::Partition, FaultKind::Join, FaultKind::Leave]);
    }

    #[test]
    fn soak_keeps_the_cluster_size_near_the_start() {
        for seed in 0..50 {
            let mut size = 5i64;
            for f in schedule(Profile::Soak, seed, 5, 600) {
                match f.kind {
                    FaultKind::Join => size += 1,
                    FaultKind::Leave => size -= 1,
                    _ => {}
                }
                assert!((4..=6).contains(&size), "seed {seed}: size {size}");
                assert!(!matches!(f.kind, FaultKind::KillWipe | FaultKind::Revoke));
            }
        }
    }
}
