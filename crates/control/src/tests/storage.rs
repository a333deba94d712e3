//! The storage layer on its own: openraft's conformance suite, snapshots, restarts.

use std::collections::BTreeSet;
use std::sync::Arc;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    BasicNode, CommittedLeaderId, EntryPayload, LogId, Membership, RaftLogReader, RaftSnapshotBuilder, StorageError,
};

use super::util::TempDir;
use crate::log_store::LogStore;
use crate::sm_store::StateMachineStore;
use crate::state::tests::{sample_commands, sample_state};
use crate::{Command, CommandResult, Entry, LogEntry, TypeConfig};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = TempDir::new("suite");
        let log = LogStore::open(dir.path()).await.unwrap();
        let sm = StateMachineStore::open(dir.path()).await.unwrap();
        Ok((dir, log, sm))
    }
}

/// openraft's storage conformance suite, each case on a fresh directory.
#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn normal(term: u64, index: u64, entry: Entry) -> LogEntry {
    LogEntry { log_id: log_id(term, index), payload: EntryPayload::Normal(entry) }
}

fn membership(term: u64, index: u64, voters: &[u64]) -> LogEntry {
    let voters: BTreeSet<u64> = voters.iter().copied().collect();
    let nodes =
        voters.iter().map(|v| (*v, BasicNode::new(format!("node{v}")))).collect::<std::collections::BTreeMap<_, _>>();
    LogEntry { log_id: log_id(term, index), payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)) }
}

/// The sample state applied through the state machine store: a membership entry at 1, then
/// the sample commands at 2.. (so versions are one more than in `sample_state`).
async fn filled_store(dir: &TempDir) -> StateMachineStore {
    let mut sm = StateMachineStore::open(dir.path()).await.unwrap();
    let mut entries = vec![membership(1, 1, &[1, 2])];
    for (i, c) in sample_commands().into_iter().enumerate() {
        entries.push(normal(1, i as u64 + 2, Entry::new(c)));
    }
    let results = sm.apply(entries).await.unwrap();
    assert!(results.iter().all(CommandResult::is_applied), "{results:?}");
    sm
}

#[tokio::test]
async fn store_apply_matches_pure_apply() {
    let dir = TempDir::new("apply");
    let sm = filled_store(&dir).await;
    let state = sm.shared().state();
    // Same commands, shifted by the membership entry at index 1.
    let mut expected = crate::ControlState::default();
    expected.apply_marker(1);
    for (i, c) in sample_commands().into_iter().enumerate() {
        expected.apply(i as u64 + 2, &Entry::new(c));
    }
    assert_eq!(*state, expected);
    assert_eq!(state.tuple_count(), sample_state().tuple_count());
}

/// Build a snapshot, install it into a fresh state machine, compare; then reopen both
/// directories and compare again (the snapshot file is what a restart loads).
#[tokio::test]
async fn snapshot_round_trip_and_restart() {
    let dir_a = TempDir::new("snap-a");
    let mut sm_a = filled_store(&dir_a).await;
    let state_a = sm_a.shared().state();
    assert!(state_a.partition_map.is_some() && state_a.tuple_count() == 3 && state_a.records.len() == 2);
    let applied_a = sm_a.applied_state().await.unwrap();
    assert_eq!(applied_a.0, Some(log_id(1, 8)));

    let snapshot = sm_a.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 8)));
    assert_eq!(snapshot.meta.last_membership.log_id(), &Some(log_id(1, 1)));

    let dir_b = TempDir::new("snap-b");
    let mut sm_b = StateMachineStore::open(dir_b.path()).await.unwrap();
    let mut feed = sm_b.shared().subscribe();
    let mut receiving = sm_b.begin_receiving_snapshot().await.unwrap();
    *receiving = *snapshot.snapshot;
    sm_b.install_snapshot(&snapshot.meta, receiving).await.unwrap();
    assert_eq!(*sm_b.shared().state(), *state_a);
    assert_eq!(sm_b.applied_state().await.unwrap(), applied_a);
    let change = feed.try_recv().unwrap();
    assert_eq!((change.index, change.command.is_none()), (8, true), "an install tells subscribers to reload");
    assert_eq!(sm_b.get_current_snapshot().await.unwrap().map(|s| s.meta), Some(snapshot.meta.clone()));

    // Restart both from disk.
    drop((sm_a, sm_b));
    for dir in [&dir_a, &dir_b] {
        let mut sm = StateMachineStore::open(dir.path()).await.unwrap();
        assert_eq!(*sm.shared().state(), *state_a);
        assert_eq!(sm.applied_state().await.unwrap(), applied_a);
        assert_eq!(sm.get_current_snapshot().await.unwrap().map(|s| s.meta), Some(snapshot.meta.clone()));
        let snapshots = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("snapshot-"))
            .count();
        assert_eq!(snapshots, 1, "one snapshot file, no temp files");
    }
}

/// The log survives a reopen: entries, vote, committed, purge point.
#[tokio::test]
async fn log_store_survives_reopen() {
    let dir = TempDir::new("log");
    {
        let mut log = LogStore::open(dir.path()).await.unwrap();
        let entries: Vec<LogEntry> = (1..=5).map(|i| normal(2, i, Entry::new(Command::RemoveNode { id: i }))).collect();
        // Returns once openraft's flush callback fired (the entries are on disk).
        log.blocking_append(entries).await.unwrap();
        log.save_vote(&openraft::Vote::new_committed(2, 1)).await.unwrap();
        log.save_committed(Some(log_id(2, 4))).await.unwrap();
        log.purge(log_id(2, 2)).await.unwrap();
    }
    let mut log = LogStore::open(dir.path()).await.unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(2, 2)));
    assert_eq!(state.last_log_id, Some(log_id(2, 5)));
    assert_eq!(log.read_vote().await.unwrap(), Some(openraft::Vote::new_committed(2, 1)));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 4)));
    let entries = log.try_get_log_entries(0..100).await.unwrap();
    assert_eq!(entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![3, 4, 5]);
    assert_eq!(log.first_index().await.unwrap(), Some(3));
}

/// An entry of an unknown version reaching the state machine is refused with an error
/// result, changes nothing, and is still reported on the change feed.
#[tokio::test]
async fn unknown_entry_version_is_refused_by_the_store() {
    let dir = TempDir::new("version");
    let mut sm = filled_store(&dir).await;
    let before = sm.shared().state();
    let mut feed = sm.shared().subscribe();
    let future = Entry { v: 2, cmd: Command::RemoveUser { user: "alice".into() } };
    let results = sm.apply([normal(1, 9, future)]).await.unwrap();
    assert!(matches!(&results[..], [CommandResult::Refused(why)] if why.contains("version 2")), "{results:?}");
    let after = sm.shared().state();
    assert_eq!(after.applied, 9);
    super::util::assert_same(&before, &after, "after refusing");
    let change = feed.try_recv().unwrap();
    assert!(matches!(change.result, CommandResult::Refused(_)));
    assert!(Arc::ptr_eq(&after, &sm.shared().state()));
}
