//! The replication rules as pure functions over in-memory state, so that every decision the
//! runtime makes can be tested without disks, clocks or networks.
//!
//! The log itself stays on disk; what the rules need of it is the epoch of any entry, which
//! [`EpochIndex`] answers from the seq at which each epoch starts (epochs never decrease
//! along a log, so that list is short: one item per leadership that wrote to it).

use crate::types::{Entry, Epoch, LogPos, NodeId, Seq};

/// The shape of one partition's local log: where each epoch starts and where the log ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochIndex {
    /// `(epoch, first seq)`, both strictly increasing.
    starts: Vec<(Epoch, Seq)>,
    last: Seq,
}

impl EpochIndex {
    /// Rebuilds the index from `(epoch, first seq)` pairs and the last seq, as read from disk.
    pub fn from_parts(mut starts: Vec<(Epoch, Seq)>, last: Seq) -> EpochIndex {
        starts.sort_unstable();
        starts.retain(|&(_, s)| s <= last && s > 0);
        EpochIndex { starts, last }
    }

    pub fn last_seq(&self) -> Seq {
        self.last
    }

    pub fn last_pos(&self) -> Option<LogPos> {
        let epoch = self.epoch_at(self.last)?;
        Some(LogPos { epoch, seq: self.last })
    }

    /// The epoch of the local entry at `seq`, if there is one.
    pub fn epoch_at(&self, seq: Seq) -> Option<Epoch> {
        if seq == 0 || seq > self.last {
            return None;
        }
        let i = self.starts.partition_point(|&(_, s)| s <= seq);
        i.checked_sub(1).and_then(|i| self.starts.get(i)).map(|&(e, _)| e)
    }

    /// The position at `seq` (None for 0, which is "before the log", or past the end).
    pub fn pos_at(&self, seq: Seq) -> Option<LogPos> {
        self.epoch_at(seq).map(|epoch| LogPos { epoch, seq })
    }

    /// The highest seq whose entry has an epoch not above `epoch` (0 if none).
    pub fn last_seq_with_epoch_at_most(&self, epoch: Epoch) -> Seq {
        let i = self.starts.partition_point(|&(e, _)| e <= epoch);
        match self.starts.get(i) {
            // The next epoch starts right after the last entry of an epoch <= `epoch`.
            Some(&(_, next_start)) => next_start.saturating_sub(1).min(self.last),
            None if i == 0 => 0,
            None => self.last,
        }
    }

    /// Whether `prev` is in this log (None, the start of the log, always is).
    pub fn matches(&self, prev: Option<LogPos>) -> bool {
        match prev {
            None => true,
            Some(p) => self.epoch_at(p.seq) == Some(p.epoch),
        }
    }

    /// Records entries appended right after the current last one.
    pub fn push(&mut self, seq: Seq, epoch: Epoch) {
        if self.starts.last().map(|&(e, _)| e) != Some(epoch) {
            self.starts.push((epoch, seq));
        }
        self.last = seq;
    }

    pub fn truncate_after(&mut self, seq: Seq) {
        if seq < self.last {
            self.last = seq;
            self.starts.retain(|&(_, s)| s <= seq);
        }
    }

    /// Whether appending `epoch` keeps epochs non-decreasing.
    pub fn accepts_epoch(&self, epoch: Epoch) -> bool {
        self.last_pos().is_none_or(|p| p.epoch <= epoch)
    }
}

/// How to merge `entries` (contiguous, starting right after a seq where the logs agree) into
/// a local log: keep what is already there, cut at the first conflicting entry, append the
/// rest. Re-delivery therefore changes nothing, and a stale message never cuts entries that
/// came after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Merge {
    /// Remove every local entry after this seq first.
    pub truncate_after: Option<Seq>,
    /// How many leading entries are already present and must not be written again.
    pub skip: usize,
}

pub fn plan_merge(index: &EpochIndex, entries: &[Entry]) -> Merge {
    for (i, e) in entries.iter().enumerate() {
        match index.epoch_at(e.seq) {
            Some(local) if local == e.epoch => continue,
            Some(_) => return Merge { truncate_after: Some(e.seq.saturating_sub(1)), skip: i },
            None => return Merge { truncate_after: None, skip: i },
        }
    }
    Merge { truncate_after: None, skip: entries.len() }
}

/// What a replica knows of one partition when a request arrives.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaView<'a> {
    pub promised: Epoch,
    pub index: &'a EpochIndex,
    pub commit: Seq,
}

/// A follower's decision on an Append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendDecision {
    Stale {
        promised: Epoch,
    },
    /// `prev` is not in the log. `promise` is Some when the request's epoch must still be
    /// promised (a higher epoch is always adopted, even when its first message misses).
    Mismatch {
        last: Option<LogPos>,
        promise: Option<Epoch>,
    },
    Accept {
        promise: Option<Epoch>,
        merge: Merge,
        /// The new commit index, when it moved.
        commit: Option<Seq>,
        /// The last entry known to match the leader's log (what the answer reports).
        matched: Seq,
    },
    Invalid(&'static str),
}

/// The follower rule for `Append`.
pub fn on_append(
    view: ReplicaView<'_>,
    epoch: Epoch,
    prev: Option<LogPos>,
    entries: &[Entry],
    leader_commit: Seq,
) -> AppendDecision {
    if epoch < view.promised {
        return AppendDecision::Stale { promised: view.promised };
    }
    let first = prev.map_or(1, |p| p.seq.saturating_add(1));
    let mut expected_epoch = prev.map_or(0, |p| p.epoch);
    for (i, e) in entries.iter().enumerate() {
        if e.seq != first.saturating_add(i as u64) {
            return AppendDecision::Invalid("entries are not contiguous after prev");
        }
        if e.epoch > epoch || e.epoch < expected_epoch {
            return AppendDecision::Invalid("entry epochs must not decrease nor exceed the leader's");
        }
        expected_epoch = e.epoch;
    }
    if prev.is_some_and(|p| p.epoch > epoch) {
        return AppendDecision::Invalid("prev is newer than the leader's epoch");
    }
    let promise = (epoch > view.promised).then_some(epoch);
    if !view.index.matches(prev) {
        return AppendDecision::Mismatch { last: view.index.last_pos(), promise };
    }
    let matched = first.saturating_sub(1).saturating_add(entries.len() as u64);
    let target = leader_commit.min(matched);
    let commit = (target > view.commit).then_some(target);
    AppendDecision::Accept { promise, merge: plan_merge(view.index, entries), commit, matched }
}

/// The replica's decision on a `Fence`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceDecision {
    Stale {
        promised: Epoch,
    },
    /// Promise (persist when `raise`), then answer with the tail and commit index.
    Fenced {
        raise: bool,
        last: Option<LogPos>,
        commit: Seq,
    },
}

pub fn on_fence(view: ReplicaView<'_>, epoch: Epoch) -> FenceDecision {
    if epoch < view.promised {
        return FenceDecision::Stale { promised: view.promised };
    }
    FenceDecision::Fenced { raise: epoch > view.promised, last: view.index.last_pos(), commit: view.commit }
}

/// The leader's commit index: the highest seq durable on a majority of `replicas`, taken only
/// when that entry is of the leader's own epoch (Raft's rule: an older entry on a majority
/// may still be overwritten by a leader that never saw it; once an entry of the current
/// epoch is on a majority, every entry before it is safe too).
pub fn leader_commit(
    epoch: Epoch,
    replicas: &[NodeId],
    matched: impl Fn(NodeId) -> Seq,
    index: &EpochIndex,
    current: Seq,
) -> Seq {
    if replicas.is_empty() {
        return current;
    }
    let mut seqs: Vec<Seq> = replicas.iter().map(|&n| matched(n).min(index.last_seq())).collect();
    seqs.sort_unstable_by(|a, b| b.cmp(a));
    let candidate = seqs.get(replicas.len() / 2).copied().unwrap_or(0);
    if candidate > current && index.epoch_at(candidate) == Some(epoch) {
        candidate
    } else {
        current
    }
}

/// The smallest number of `n` replicas that is a majority.
pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// Where the leader probes next after a follower said `Mismatch { last }` to an Append whose
/// prev was at `failed`. The answer is strictly below `failed`, so probing ends (at 0, the
/// start of the log, which always matches).
///
/// Since an `(epoch, seq)` pair names one entry everywhere, the follower's log and ours can
/// only agree where our epoch is not above the follower's last epoch, and not past its end.
pub fn next_probe(leader: &EpochIndex, failed: Seq, follower_last: Option<LogPos>) -> Seq {
    let Some(fl) = follower_last else { return 0 };
    fl.seq.min(failed.saturating_sub(1)).min(leader.last_seq_with_epoch_at_most(fl.epoch))
}

/// Where a leader should first probe a follower whose tail it learned from a `Fenced` answer.
pub fn first_probe(leader: &EpochIndex, follower_last: Option<LogPos>) -> Seq {
    match follower_last {
        None => 0,
        Some(fl) => fl.seq.min(leader.last_seq_with_epoch_at_most(fl.epoch)),
    }
}

/// One answer to a recovering leader's `Fence`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FenceAnswer {
    pub node: NodeId,
    pub last: Option<LogPos>,
}

/// Picks the recovery source: once answers from a majority of `previous` are in, the most
/// up-to-date tail by (last entry's epoch, seq) among all answers. Every committed entry is
/// on a majority of `previous`, so on at least one answering node, and a log whose tail is at
/// least as up-to-date as that node's contains it (Raft's election restriction). None while
/// no majority of `previous` has answered: recovery then waits rather than guess.
pub fn choose_source(previous: &[NodeId], answers: &[FenceAnswer]) -> Option<FenceAnswer> {
    choose_source_from(&[previous], answers)
}

/// [`choose_source`] once answers from a majority of *each* of `required` are in (the
/// previous replica set and the last serving one, when they differ).
pub fn choose_source_from(required: &[&[NodeId]], answers: &[FenceAnswer]) -> Option<FenceAnswer> {
    for set in required {
        let heard = set.iter().filter(|n| answers.iter().any(|a| a.node == **n)).count();
        if heard < majority(set.len()) {
            return None;
        }
    }
    answers.iter().copied().max_by(|a, b| a.last.map(|p| (p.epoch, p.seq)).cmp(&b.last.map(|p| (p.epoch, p.seq))))
}

/// Where a recovering leader's log and its source's agree, for a fetch that started at
/// `from` and returned `first` (the source's entry at `from`). Some(seq) when the logs agree
/// up to `seq` (then the fetched entries merge after it); otherwise the next `from` to try.
pub fn fetch_agreement(local: &EpochIndex, from: Seq, first: Option<&Entry>) -> Result<Seq, Seq> {
    match first {
        None => Ok(from.saturating_sub(1)),
        Some(_) if from <= 1 => Ok(0),
        Some(e) => {
            if local.epoch_at(e.seq) == Some(e.epoch) {
                Ok(e.seq)
            } else {
                // The source's epochs before `from` are at most e.epoch.
                let back = from.saturating_sub(1).min(local.last_seq_with_epoch_at_most(e.epoch));
                Err(back.max(1))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn log(epochs: &[Epoch]) -> EpochIndex {
        let mut ix = EpochIndex::default();
        for (i, &e) in epochs.iter().enumerate() {
            ix.push(i as u64 + 1, e);
        }
        ix
    }

    fn ents(first: Seq, epochs: &[Epoch]) -> Vec<Entry> {
        epochs.iter().enumerate().map(|(i, &e)| Entry { seq: first + i as u64, epoch: e, payload: vec![1] }).collect()
    }

    fn pos(epoch: Epoch, seq: Seq) -> Option<LogPos> {
        Some(LogPos { epoch, seq })
    }

    fn view(promised: Epoch, index: &EpochIndex, commit: Seq) -> ReplicaView<'_> {
        ReplicaView { promised, index, commit }
    }

    #[test]
    fn epoch_index_answers_epochs_and_bounds() {
        let ix = log(&[1, 1, 3, 3, 3, 4]);
        assert_eq!(ix.epoch_at(0), None);
        assert_eq!(ix.epoch_at(1), Some(1));
        assert_eq!(ix.epoch_at(2), Some(1));
        assert_eq!(ix.epoch_at(3), Some(3));
        assert_eq!(ix.epoch_at(6), Some(4));
        assert_eq!(ix.epoch_at(7), None);
        assert_eq!(ix.last_pos(), pos(4, 6));
        assert_eq!(ix.last_seq_with_epoch_at_most(0), 0);
        assert_eq!(ix.last_seq_with_epoch_at_most(1), 2);
        assert_eq!(ix.last_seq_with_epoch_at_most(2), 2);
        assert_eq!(ix.last_seq_with_epoch_at_most(3), 5);
        assert_eq!(ix.last_seq_with_epoch_at_most(9), 6);
        let mut t = ix.clone();
        t.truncate_after(3);
        assert_eq!(t, log(&[1, 1, 3]));
        t.truncate_after(0);
        assert_eq!(t.last_pos(), None);
        assert_eq!(EpochIndex::from_parts(vec![(3, 3), (1, 1), (4, 6)], 6), ix);
        assert!(ix.accepts_epoch(4) && !ix.accepts_epoch(3));
    }

    #[test]
    fn append_of_lower_epoch_is_stale() {
        let ix = log(&[1, 2]);
        assert_eq!(on_append(view(3, &ix, 0), 2, pos(2, 2), &ents(3, &[2]), 0), AppendDecision::Stale { promised: 3 });
    }

    #[test]
    fn append_raises_promise_and_appends() {
        let ix = log(&[1, 1]);
        let d = on_append(view(1, &ix, 1), 2, pos(1, 2), &ents(3, &[2, 2]), 4);
        assert_eq!(
            d,
            AppendDecision::Accept {
                promise: Some(2),
                merge: Merge { truncate_after: None, skip: 0 },
                commit: Some(4),
                matched: 4
            }
        );
    }

    #[test]
    fn append_with_missing_prev_is_a_mismatch_reporting_the_tail() {
        let ix = log(&[1, 1]);
        assert_eq!(
            on_append(view(2, &ix, 0), 2, pos(2, 5), &ents(6, &[2]), 0),
            AppendDecision::Mismatch { last: pos(1, 2), promise: None }
        );
        // Same seq, other epoch: also a mismatch; a higher epoch is still promised.
        assert_eq!(
            on_append(view(1, &ix, 0), 3, pos(2, 2), &[], 0),
            AppendDecision::Mismatch { last: pos(1, 2), promise: Some(3) }
        );
        assert_eq!(
            on_append(view(0, &EpochIndex::default(), 0), 1, pos(1, 1), &[], 0),
            AppendDecision::Mismatch { last: None, promise: Some(1) }
        );
    }

    #[test]
    fn conflicting_entry_truncates_from_there() {
        let ix = log(&[1, 1, 1, 1]);
        let d = on_append(view(2, &ix, 0), 2, pos(1, 2), &ents(3, &[2, 2, 2]), 0);
        match d {
            AppendDecision::Accept { merge, matched, .. } => {
                assert_eq!(merge, Merge { truncate_after: Some(2), skip: 0 });
                assert_eq!(matched, 5);
            }
            other => panic!("{other:?}"),
        }
        // The conflict may come after entries that are already present.
        let ix = log(&[1, 1, 2, 3]);
        let m = plan_merge(&ix, &ents(2, &[1, 2, 4, 4]));
        assert_eq!(m, Merge { truncate_after: Some(3), skip: 2 });
    }

    #[test]
    fn redelivery_is_idempotent_and_never_truncates_later_entries() {
        let ix = log(&[1, 1, 1, 1, 1]);
        let d = on_append(view(1, &ix, 3), 1, pos(1, 1), &ents(2, &[1, 1]), 2);
        assert_eq!(
            d,
            AppendDecision::Accept {
                promise: None,
                merge: Merge { truncate_after: None, skip: 2 },
                commit: None,
                matched: 3
            }
        );
    }

    #[test]
    fn commit_is_bounded_by_the_last_matching_entry() {
        // The follower has stale entries past the matched point: they must not be committed.
        let ix = log(&[1, 1, 1, 1]);
        match on_append(view(2, &ix, 0), 2, pos(1, 2), &[], 10) {
            AppendDecision::Accept { commit, matched, .. } => {
                assert_eq!(matched, 2);
                assert_eq!(commit, Some(2));
            }
            other => panic!("{other:?}"),
        }
        // And commit never moves back.
        match on_append(view(2, &ix, 3), 2, pos(1, 2), &[], 10) {
            AppendDecision::Accept { commit, .. } => assert_eq!(commit, None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_appends_are_rejected() {
        let ix = log(&[1]);
        let gap = vec![Entry { seq: 3, epoch: 1, payload: vec![] }];
        assert!(matches!(on_append(view(1, &ix, 0), 1, pos(1, 1), &gap, 0), AppendDecision::Invalid(_)));
        assert!(matches!(on_append(view(1, &ix, 0), 1, pos(1, 1), &ents(2, &[2]), 0), AppendDecision::Invalid(_)));
        assert!(matches!(on_append(view(1, &ix, 0), 3, pos(2, 1), &ents(2, &[1]), 0), AppendDecision::Invalid(_)));
    }

    #[test]
    fn fence_promises_and_reports_or_is_stale() {
        let ix = log(&[1, 2]);
        assert_eq!(on_fence(view(3, &ix, 1), 2), FenceDecision::Stale { promised: 3 });
        assert_eq!(on_fence(view(3, &ix, 1), 3), FenceDecision::Fenced { raise: false, last: pos(2, 2), commit: 1 });
        assert_eq!(on_fence(view(3, &ix, 1), 4), FenceDecision::Fenced { raise: true, last: pos(2, 2), commit: 1 });
    }

    #[test]
    fn leader_commit_needs_a_majority_and_its_own_epoch() {
        let ix = log(&[1, 1, 2, 2]);
        let m = |a: Seq, b: Seq, c: Seq| move |n: NodeId| [a, b, c][n as usize];
        let rs = [0, 1, 2];
        assert_eq!(leader_commit(2, &rs, m(4, 0, 0), &ix, 0), 0);
        assert_eq!(leader_commit(2, &rs, m(4, 3, 0), &ix, 0), 3);
        assert_eq!(leader_commit(2, &rs, m(4, 4, 1), &ix, 0), 4);
        // Entries of an older epoch on a majority do not commit by themselves...
        assert_eq!(leader_commit(2, &rs, m(4, 2, 2), &ix, 0), 0);
        // ...nor does the commit index move back.
        assert_eq!(leader_commit(2, &rs, m(4, 0, 0), &ix, 3), 3);
        // A replica set of one commits what the leader holds.
        assert_eq!(leader_commit(2, &[0], |_| 4, &ix, 0), 4);
        // Even replica sets need more than half.
        let rs4 = [0, 1, 2, 3];
        assert_eq!(leader_commit(2, &rs4, |n| [4, 4, 0, 0][n as usize], &ix, 0), 0);
        assert_eq!(leader_commit(2, &rs4, |n| [4, 4, 3, 0][n as usize], &ix, 0), 3);
        // A replica reporting more than the leader holds counts only up to the leader's log.
        assert_eq!(leader_commit(2, &rs, m(4, 9, 0), &ix, 0), 4);
    }

    #[test]
    fn probes_walk_back_to_the_agreement_point() {
        let leader = log(&[1, 1, 2, 2, 4]);
        // A follower behind but consistent: first probe at its tail.
        assert_eq!(first_probe(&leader, pos(1, 2)), 2);
        assert_eq!(first_probe(&leader, None), 0);
        // An old leader's divergent epoch-1 suffix: agree at the end of epoch 1 in ours.
        assert_eq!(first_probe(&leader, pos(1, 7)), 2);
        // Follower [1,1,3]: its epoch 3 is unknown to us; we only have <=3 up to 4.
        let follower = log(&[1, 1, 3]);
        let mut probe = first_probe(&leader, follower.last_pos());
        let mut steps = 0;
        while !follower.matches(leader.pos_at(probe)) {
            probe = next_probe(&leader, probe, follower.last_pos());
            steps += 1;
        }
        assert_eq!((probe, steps), (2, 1));
        assert_eq!(next_probe(&leader, 1, pos(1, 1)), 0);
        assert_eq!(next_probe(&leader, 5, None), 0);
    }

    #[test]
    fn probing_always_terminates_and_finds_the_longest_common_prefix() {
        // Exhaustive over small logs with non-decreasing epochs sharing a prefix.
        let logs: Vec<Vec<Epoch>> = {
            let mut all = vec![vec![]];
            for len in 1..=5 {
                let mut next = Vec::new();
                for l in all.iter().filter(|l| l.len() == len - 1) {
                    let from = l.last().copied().unwrap_or(1);
                    for e in from..=3 {
                        let mut x = l.clone();
                        x.push(e);
                        next.push(x);
                    }
                }
                all.extend(next);
            }
            all
        };
        for l in &logs {
            for f in &logs {
                // Two logs are realistic when an (epoch, seq) pair denotes the same entry in both,
                // which for these generated logs means: equal up to the longest common prefix.
                let common = l.iter().zip(f.iter()).take_while(|(a, b)| a == b).count();
                let realistic = (common..l.len().min(f.len())).all(|i| l[i] != f[i])
                    && l.iter().skip(common).all(|e| !f.iter().skip(common).any(|x| x == e));
                if !realistic {
                    continue;
                }
                let (li, fi) = (log(l), log(f));
                let mut probe = first_probe(&li, fi.last_pos());
                let mut guard = 0;
                while !fi.matches(li.pos_at(probe)) {
                    probe = next_probe(&li, probe, fi.last_pos());
                    guard += 1;
                    assert!(guard < 10);
                }
                assert!(probe as usize <= common, "{l:?} {f:?} -> {probe}");
                assert!(probe <= li.last_seq());
            }
        }
    }

    #[test]
    fn source_is_most_up_to_date_among_a_majority_of_previous() {
        let prev = [1, 2, 3];
        let a = |node, last| FenceAnswer { node, last };
        assert_eq!(choose_source(&prev, &[a(1, pos(1, 9))]), None);
        // Node 4 is not in previous: its answer does not make a majority but can be chosen.
        assert_eq!(choose_source(&prev, &[a(1, pos(1, 9)), a(4, pos(2, 1))]), None);
        assert_eq!(choose_source(&prev, &[a(1, pos(1, 9)), a(2, pos(2, 3)), a(4, None)]), Some(a(2, pos(2, 3))));
        assert_eq!(choose_source(&prev, &[a(1, pos(2, 9)), a(2, pos(2, 3))]), Some(a(1, pos(2, 9))));
        assert!(matches!(choose_source(&prev, &[a(1, None), a(3, None)]), Some(FenceAnswer { last: None, .. })));
        assert_eq!(choose_source(&[1], &[a(1, None)]), Some(a(1, None)));
        // Two sets: a majority of each.
        let serving = [1, 5, 6];
        let ans = [a(1, pos(1, 9)), a(2, pos(1, 3)), a(3, None)];
        assert_eq!(choose_source_from(&[&prev, &serving], &ans), None);
        let ans = [a(1, pos(1, 9)), a(2, pos(1, 3)), a(5, pos(1, 12))];
        assert_eq!(choose_source_from(&[&prev, &serving], &ans), Some(a(5, pos(1, 12))));
    }

    #[test]
    fn fetch_agreement_steps_back_until_the_logs_agree() {
        let local = log(&[1, 1, 1, 1]);
        // Source [1, 2]: its entry at 2 is (2, 2), not ours, so retry from 1.
        assert_eq!(fetch_agreement(&local, 2, Some(&ents(2, &[2])[0])), Err(1));
        assert_eq!(fetch_agreement(&local, 1, Some(&ents(1, &[1])[0])), Ok(0));
        assert_eq!(fetch_agreement(&local, 3, Some(&ents(3, &[1])[0])), Ok(3));
        assert_eq!(fetch_agreement(&local, 5, None), Ok(4));
    }
}
