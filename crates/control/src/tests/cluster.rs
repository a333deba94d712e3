//! Several nodes in one process over the in-memory transport.

use std::time::Duration;

use serde_json::json;

use super::util::{assert_same, eventually, test_config, Cluster};
use crate::rpc::{decode_reply, encode_request, ControlReply, ControlRpc};
use crate::{Command, CommandResult, ControlConfig, Entry, NodeRecord, NodeState, PartitionTable, Role, Tuple};

fn put(kind: &str, id: &str, body: serde_json::Value, expected_version: Option<u64>) -> Command {
    Command::PutRecord { kind: kind.into(), id: id.into(), body, expected_version }
}

fn index_of(r: &CommandResult) -> u64 {
    match r {
        CommandResult::Ok { index } => *index,
        other => panic!("not applied: {other:?}"),
    }
}

/// Bootstrap, joins, a write through a follower, leader failure, restart of the dead node,
/// a fourth node that stays a learner, and removing a voter (the learner is promoted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_fail_over_and_recover() {
    let mut c = Cluster::new(test_config());
    let n1 = c.start(1).await;
    n1.bootstrap().await.unwrap();
    n1.bootstrap().await.unwrap(); // no-op the second time
    for id in [2, 3] {
        c.start(id).await.join_via("node1:7946").await.unwrap();
    }
    let leader = c.leader().await;
    assert_eq!(leader, 1);
    let status = c.plane(1).status();
    assert_eq!(status.voters, vec![1, 2, 3]);
    assert!(status.learners.is_empty());
    let state = c.converged(1).await;
    for id in [1, 2, 3] {
        let n = &state.nodes[&id];
        assert_eq!((n.state, n.voter), (NodeState::Up, true), "node {id}");
    }

    // A write through a follower is applied on all three.
    let r = c.plane(2).propose(put("waddle", "w1", json!({"name": "one"}), Some(0))).await.unwrap();
    let index = index_of(&r);
    assert_eq!(c.plane(2).state().record("waddle", "w1").map(|r| r.version), Some(index), "read-your-write");
    for id in [1, 2, 3] {
        c.plane(id).wait_applied(index, Duration::from_secs(5)).await.unwrap();
        assert_eq!(c.plane(id).state().record("waddle", "w1").map(|r| r.body.clone()), Some(json!({"name": "one"})));
    }

    // Kill the leader: another is elected and takes writes.
    c.kill(1).await;
    let new_leader = c.leader().await;
    assert_ne!(new_leader, 1);
    let follower = if new_leader == 2 { 3 } else { 2 };
    let r = c.plane(follower).propose(put("waddle", "w2", json!({"name": "two"}), Some(0))).await.unwrap();
    index_of(&r);
    let r = c.plane(new_leader).propose(Command::SetPartitionMap(PartitionTable {
        epoch: 1,
        replicas: vec![vec![2, 3]],
        learners: vec![],
    }));
    index_of(&r.await.unwrap());

    // The dead node comes back from its directory and gets everything it missed.
    let n1 = c.start(1).await;
    // It re-applied its own committed log on open, before hearing from anyone.
    assert!(n1.state().record("waddle", "w1").is_some(), "restarted from its own log");
    n1.join_via("node2:7946").await.unwrap(); // re-joining is harmless
    let state = c.converged(new_leader).await;
    assert!(state.record("waddle", "w2").is_some());
    assert_eq!(state.partition_map.as_ref().map(|m| m.epoch), Some(1));
    assert_eq!(c.plane(1).status().voters, vec![1, 2, 3]);

    // A fourth node with voters = 3 stays a learner but receives state.
    let n4 = c.start(4).await;
    n4.join_via("node3:7946").await.unwrap();
    let leader = c.leader().await;
    let status = c.plane(leader).status();
    assert_eq!(status.voters, vec![1, 2, 3]);
    assert_eq!(status.learners, vec![4]);
    assert_eq!(n4.status().role, Role::Learner);
    let r = c.plane(leader).propose(put("channel", "c1", json!({}), None)).await.unwrap();
    n4.wait_applied(index_of(&r), Duration::from_secs(5)).await.unwrap();
    let state = c.converged(leader).await;
    assert_eq!((state.nodes[&4].state, state.nodes[&4].voter), (NodeState::Up, false));
    // A learner's proposals are forwarded too.
    index_of(&n4.propose(put("channel", "c2", json!({}), None)).await.unwrap());

    // Removing a voter promotes the caught-up learner.
    let victim = if leader == 3 { 2 } else { 3 };
    c.plane(4).remove_node(victim).await.unwrap();
    c.kill(victim).await;
    let leader = c.leader().await;
    let status = c.plane(leader).status();
    let mut expected: Vec<u64> = vec![1, 2, 3, 4].into_iter().filter(|id| *id != victim).collect();
    expected.sort();
    assert_eq!(status.voters, expected);
    assert!(status.learners.is_empty());
    let state = c.converged(leader).await;
    assert!(!state.nodes.contains_key(&victim));
    assert!(state.nodes[&4].voter);
}

/// The leader removes itself (a drain of the node that leads): its record goes, the
/// learner is promoted so the voters stay three, and the others elect a leader that
/// takes writes. Once out of the membership the old leader hears from nobody, so all
/// of that must be done before it leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_removes_itself_and_a_learner_takes_its_vote() {
    let mut c = Cluster::new(test_config());
    c.start(1).await.bootstrap().await.unwrap();
    for id in [2, 3, 4] {
        c.start(id).await.join_via("node1:7946").await.unwrap();
    }
    let leader = c.leader().await;
    assert_eq!(c.plane(leader).status().learners, vec![4]);
    c.plane(leader).remove_node(leader).await.unwrap();
    c.kill(leader).await;
    let new_leader = c.leader().await;
    assert_ne!(new_leader, leader);
    let status = c.plane(new_leader).status();
    let expected: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|id| *id != leader).collect();
    assert_eq!(status.voters, expected);
    assert!(status.learners.is_empty());
    let state = c.converged(new_leader).await;
    assert!(!state.nodes.contains_key(&leader), "{:?}", state.nodes.keys());
    assert!(state.nodes[&4].voter);
    index_of(&c.plane(4).propose(put("channel", "after", json!({}), None)).await.unwrap());
}

/// A node that joins asking to catch up first stays `Joining` (a re-join while it still
/// catches up changes nothing) until it says it is up; a member that comes back is up,
/// unless it was declared down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_may_join_to_catch_up_first() {
    let mut c = Cluster::new(test_config());
    c.start(1).await.bootstrap().await.unwrap();
    let record = NodeRecord { state: NodeState::Joining, ..super::util::node(2) };
    let n2 = c.start_as(record.clone()).await;
    n2.join_via("node1:7946").await.unwrap();
    assert_eq!(c.converged(1).await.nodes[&2].state, NodeState::Joining);
    n2.join_via("node1:7946").await.unwrap();
    assert_eq!(c.converged(1).await.nodes[&2].state, NodeState::Joining);
    index_of(&n2.propose(Command::SetNodeState { id: 2, state: NodeState::Up }).await.unwrap());
    assert_eq!(c.converged(1).await.nodes[&2].state, NodeState::Up);
    // Once up, joining again (a restart) keeps it up whatever it asks.
    n2.join_via("node1:7946").await.unwrap();
    assert_eq!(c.converged(1).await.nodes[&2].state, NodeState::Up);
    // Declared down meanwhile, it missed writes: it catches up first again.
    index_of(&n2.propose(Command::SetNodeState { id: 2, state: NodeState::Down }).await.unwrap());
    n2.join_via("node1:7946").await.unwrap();
    assert_eq!(c.converged(1).await.nodes[&2].state, NodeState::Joining);
}

/// Intent commands, CAS and batches through a follower (results cross the wire), and the
/// change feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_through_a_follower() {
    let mut c = Cluster::new(test_config());
    c.start(1).await.bootstrap().await.unwrap();
    let n2 = c.start(2).await;
    n2.join_via("node1:7946").await.unwrap();
    let mut feed = n2.subscribe();

    let t = |o: &str, r: &str, s: &str| Tuple::new(o, r, s);
    let write = Command::WriteTuples {
        write: vec![
            t("waddle:w1", "member", "user:alice"),
            t("waddle:w1", "member", "user:bob"),
            t("room:r1", "viewer", "waddle:w1#member"),
            t("room:r1", "owner", "user:alice"),
        ],
        delete: vec![],
    };
    let written_at = index_of(&n2.propose(write.clone()).await.unwrap());
    let applied = feed.recv().await.unwrap();
    assert_eq!((applied.index, applied.command.as_ref()), (written_at, Some(&write)));

    // CAS.
    let v1 = index_of(&n2.propose(put("room", "r1", json!({"subject": "a"}), Some(0))).await.unwrap());
    assert_eq!(
        n2.propose(put("room", "r1", json!({"subject": "b"}), Some(0))).await.unwrap(),
        CommandResult::Conflict { current_version: v1 }
    );
    assert_eq!(
        n2.propose(put("room", "r1", json!({"subject": "b"}), Some(v1 + 100))).await.unwrap(),
        CommandResult::Conflict { current_version: v1 }
    );
    let v2 = index_of(&n2.propose(put("room", "r1", json!({"subject": "b"}), Some(v1))).await.unwrap());
    assert_eq!(
        n2.state().record("room", "r1").map(|r| (r.version, r.body.clone())),
        Some((v2, json!({"subject": "b"})))
    );

    // A batch with one stale CAS changes nothing.
    let batch = Command::Batch(vec![
        put("channel", "c1", json!(1), Some(0)),
        Command::DeleteObject { object: "waddle:w1".into() },
        put("room", "r1", json!("stale"), Some(v1)),
    ]);
    assert_eq!(n2.propose(batch).await.unwrap(), CommandResult::Conflict { current_version: v2 });
    let s = n2.state();
    assert!(s.record("channel", "c1").is_none());
    assert_eq!(s.tuple_count(), 4);

    // RemoveUser and DeleteObject report exactly what they removed.
    assert_eq!(
        n2.propose(Command::RemoveUser { user: "alice".into() }).await.unwrap(),
        CommandResult::Removed(vec![t("room:r1", "owner", "user:alice"), t("waddle:w1", "member", "user:alice")])
    );
    assert_eq!(
        n2.propose(Command::DeleteObject { object: "waddle:w1".into() }).await.unwrap(),
        CommandResult::Removed(vec![t("room:r1", "viewer", "waddle:w1#member"), t("waddle:w1", "member", "user:bob")])
    );
    assert_eq!(n2.state().tuple_count(), 0);

    // Stale partition maps are refused.
    let map = |epoch| Command::SetPartitionMap(PartitionTable { epoch, replicas: vec![vec![1, 2]], learners: vec![] });
    index_of(&n2.propose(map(4)).await.unwrap());
    assert!(matches!(n2.propose(map(4)).await.unwrap(), CommandResult::Refused(_)));
    c.converged(1).await;
}

/// Frames a node cannot read are answered (with an error), never dropped; an entry of an
/// unknown version is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_and_unknown_entry_versions_are_answered_with_errors() {
    let mut c = Cluster::new(test_config());
    let n1 = c.start(1).await;
    n1.bootstrap().await.unwrap();
    let before = n1.state();

    for garbage in [
        b"\x00\xffnot json".to_vec(),
        br#"{"v":2,"rpc":{"Remove":{"id":1,"forwarded":false}}}"#.to_vec(),
        br#"{"v":1,"rpc":{"Shout":{}}}"#.to_vec(),
        Vec::new(),
    ] {
        let reply = decode_reply(&n1.handle_rpc(garbage.clone()).await).unwrap();
        assert!(matches!(reply, ControlReply::BadFrame(_)), "{reply:?} for {:?}", String::from_utf8_lossy(&garbage));
    }

    let future = Entry { v: 9, cmd: Command::RemoveNode { id: 1 } };
    let reply = decode_reply(&n1.handle_rpc(encode_request(&ControlRpc::ClientWrite(future))).await).unwrap();
    assert!(matches!(&reply, ControlReply::Failed(why) if why.contains("version 9")), "{reply:?}");
    // A newer node's command (current version, unknown variant) is refused the same way.
    let frame = br#"{"v":1,"rpc":{"ClientWrite":{"v":1,"cmd":{"Teleport":{"to":"moon"}}}}}"#.to_vec();
    let reply = decode_reply(&n1.handle_rpc(frame).await).unwrap();
    assert!(matches!(&reply, ControlReply::Failed(why) if why.contains("undecodable")), "{reply:?}");
    // And it cannot be proposed locally, not even inside a batch (it could not be logged).
    let nested = Command::Batch(vec![Command::Undecodable(serde_json::json!({"Teleport": {}}))]);
    assert!(matches!(n1.propose(nested).await, Err(crate::ControlError::InvalidCommand(_))));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(n1.state().nodes, before.nodes);
    assert_eq!(n1.state().applied, before.applied, "nothing was written");

    // A shut-down node answers too.
    n1.shutdown().await.unwrap();
    let reply =
        decode_reply(&n1.handle_rpc(encode_request(&ControlRpc::Remove { id: 1, forwarded: false })).await).unwrap();
    assert!(matches!(reply, ControlReply::Failed(_)), "{reply:?}");
    c.planes.clear();
}

/// Past the snapshot threshold the log is purged; a node joining later catches up from the
/// snapshot; a restart restores the state from snapshot plus log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_compaction_and_catch_up_by_snapshot() {
    let config = ControlConfig { snapshot_after_logs: 20, logs_to_keep: 5, ..test_config() };
    let mut c = Cluster::new(config);
    let n1 = c.start(1).await;
    n1.bootstrap().await.unwrap();
    assert_eq!(n1.log_first_index().await.unwrap(), Some(0), "initialize writes the membership at 0");

    for batch in 0..6 {
        let writes = (0..10).map(|i| {
            let n1 = n1.clone();
            let id = format!("w{}", batch * 10 + i);
            async move { n1.propose(put("waddle", &id, json!({ "n": id }), Some(0))).await }
        });
        for r in futures_util::future::join_all(writes).await {
            index_of(&r.unwrap());
        }
    }
    let purged = eventually("the log to be purged", || n1.status().purged.filter(|p| *p > 20)).await;
    let first = n1.log_first_index().await.unwrap().unwrap();
    assert!(first > purged, "first index {first} after purge point {purged}");
    assert!(n1.status().snapshot.is_some());

    // A new node cannot get the purged entries from the log: it needs the snapshot.
    let n2 = c.start(2).await;
    let mut feed = n2.subscribe();
    n2.join_via("node1:7946").await.unwrap();
    let state = c.converged(1).await;
    assert_eq!(state.records_of_kind("waddle").count(), 60);
    let mut installed = None;
    while let Ok(applied) = feed.try_recv() {
        if applied.command.is_none() {
            installed = Some(applied.index);
        }
    }
    let installed = installed.expect("node 2 installed a snapshot (announced with no command)");
    assert!(installed > purged, "the snapshot covers the purged entries ({installed} vs {purged})");
    assert!(n2.status().snapshot.is_some());
    assert!(n2.log_first_index().await.unwrap().is_none_or(|f| f > 1), "node 2's log starts after the snapshot");

    // Restart node 1 from disk: snapshot + log give back the same state.
    let applied = n1.state().applied;
    c.kill(1).await;
    c.kill(2).await;
    let n1 = c.start(1).await;
    let n2 = c.start(2).await;
    n1.wait_applied(applied, Duration::from_secs(10)).await.unwrap();
    n2.wait_applied(applied, Duration::from_secs(10)).await.unwrap();
    assert_same(&state, &n1.state(), "node 1 after restart");
    assert_same(&state, &n2.state(), "node 2 after restart");
    index_of(&n2.propose(put("waddle", "after", json!({}), Some(0))).await.unwrap());
}

/// A leader cut off from the others: they elect another and go on; the cut-off one cannot
/// commit (its proposal times out instead of hanging); once healed it follows and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_is_replaced_and_catches_up_after_healing() {
    // Proposals give up after 1.5 s here, so the cut-off one fails quickly.
    let mut c = Cluster::new(ControlConfig { request_timeout_ms: 1500, ..test_config() });
    c.start(1).await.bootstrap().await.unwrap();
    for id in [2, 3] {
        c.start(id).await.join_via("node1:7946").await.unwrap();
    }
    let old = c.leader().await;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != old).collect();
    c.net.isolate(old);

    let new = eventually("a new leader among the others", || {
        let l = c.plane(others[0]).status().leader.filter(|l| *l != old)?;
        (c.plane(others[1]).status().leader == Some(l) && c.plane(l).status().role == Role::Leader).then_some(l)
    })
    .await;
    let r = c.plane(others[0]).propose(put("waddle", "majority", json!({}), Some(0))).await.unwrap();
    let majority_index = index_of(&r);
    assert_ne!(new, old);

    // The cut-off node cannot get anything committed.
    let started = std::time::Instant::now();
    let stuck = tokio::time::timeout(
        Duration::from_secs(20),
        c.plane(old).propose(put("waddle", "minority", json!({}), Some(0))),
    )
    .await
    .expect("propose gives up by itself");
    assert!(matches!(stuck, Err(crate::ControlError::Timeout(_))), "{stuck:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "gave up after request_timeout_ms");

    c.net.heal(old);
    c.plane(old).wait_applied(majority_index, Duration::from_secs(10)).await.unwrap();
    let state = c.converged(new).await;
    assert!(state.record("waddle", "majority").is_some());
    assert!(state.record("waddle", "minority").is_none(), "the cut-off proposal never committed");
}
