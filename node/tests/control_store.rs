//! [`RaftControlStore`], [`load_permissions`] and [`spawn_feed`] over a real one-node control
//! plane (in-memory transport, log and snapshots in a temp dir).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use waddle::control_store::{load_permissions, spawn_feed, RaftControlStore};
use waddle_api::{ControlStore, Permissions};
use waddle_authz::{ObjectRef, Tuple, TupleFilter};
use waddle_control::{Command, ControlConfig, ControlPlane, MemoryTransport, NodeRecord, NodeState};
use waddle_storage::{ChannelRecord, StorageError, WaddleRecord};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "waddle-ctlstore-{tag}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A bootstrapped one-node control plane.
async fn one_node(dir: &Path) -> Arc<ControlPlane> {
    let net = MemoryTransport::new();
    let node = NodeRecord {
        id: 1,
        cluster_addr: "node1:7946".into(),
        http_addr: "node1:8080".into(),
        state: NodeState::Joining,
        voter: false,
        version: 0,
    };
    let config = ControlConfig {
        voters: 1,
        heartbeat_ms: 50,
        election_min_ms: 150,
        election_max_ms: 300,
        request_timeout_ms: 10_000,
        ..ControlConfig::default()
    };
    let plane = ControlPlane::open(dir, node, net.endpoint(1), config).await.unwrap();
    net.register(&plane);
    plane.bootstrap().await.unwrap();
    Arc::new(plane)
}

fn waddle(id: &str, created_at: i64) -> WaddleRecord {
    WaddleRecord { id: id.into(), name: format!("Waddle {id}"), description: None, owner: "alice".into(), created_at }
}

fn channel(id: &str, waddle_id: &str, name: &str) -> ChannelRecord {
    ChannelRecord {
        id: id.into(),
        waddle_id: waddle_id.into(),
        name: name.into(),
        kind: "text".into(),
        topic: None,
        created_at: 7,
    }
}

fn names(channels: &[ChannelRecord]) -> Vec<&str> {
    channels.iter().map(|c| c.name.as_str()).collect()
}

fn t(s: &str) -> Tuple {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waddles_and_channels_live_in_the_control_plane() {
    let dir = TempDir::new("records");
    let plane = one_node(&dir.0).await;
    let store = RaftControlStore::new(plane.clone());

    store.waddle_create(&waddle("w1", 20)).await.unwrap();
    store.waddle_create(&waddle("w2", 10)).await.unwrap();
    assert!(matches!(store.waddle_create(&waddle("w1", 30)).await, Err(StorageError::AlreadyExists)));
    assert!(matches!(
        store.waddle_create(&WaddleRecord { name: String::new(), ..waddle("w3", 1) }).await,
        Err(StorageError::Invalid(_))
    ));
    assert_eq!(store.waddle("w1").await.unwrap(), Some(waddle("w1", 20)));
    assert_eq!(store.waddle("nope").await.unwrap(), None);
    let ids = ["w1", "nope", "w2", "w1"].map(String::from);
    let found: Vec<String> = store.waddles_by_ids(&ids).await.unwrap().into_iter().map(|w| w.id).collect();
    assert_eq!(found, ["w2", "w1"], "oldest first, unknown skipped, each once");

    // Update keeps the creation time.
    let mut renamed = waddle("w1", 999);
    renamed.name = "Renamed".into();
    renamed.description = Some("about".into());
    store.waddle_update(&renamed).await.unwrap();
    let back = store.waddle("w1").await.unwrap().unwrap();
    assert_eq!((back.name.as_str(), back.description.as_deref(), back.created_at), ("Renamed", Some("about"), 20));
    assert!(matches!(store.waddle_update(&waddle("nope", 1)).await, Err(StorageError::NotFound)));

    // Channels, within the limit.
    assert!(store.channel_create_limited(&channel("c1", "w1", "general"), 3).await.unwrap());
    assert!(store.channel_create_limited(&channel("c2", "w1", "announcements"), 3).await.unwrap());
    assert!(store.channel_create_limited(&channel("c9", "w2", "general"), 3).await.unwrap(), "names are per waddle");
    assert!(matches!(
        store.channel_create_limited(&channel("c3", "w1", "general"), 3).await,
        Err(StorageError::AlreadyExists)
    ));
    assert!(matches!(
        store.channel_create_limited(&channel("c9", "w1", "other"), 3).await,
        Err(StorageError::AlreadyExists)
    ));
    assert!(matches!(
        store.channel_create_limited(&channel("c4", "nope", "general"), 3).await,
        Err(StorageError::NotFound)
    ));
    assert!(store.channel_create_limited(&channel("c3", "w1", "dev"), 3).await.unwrap());
    assert!(!store.channel_create_limited(&channel("c4", "w1", "more"), 3).await.unwrap(), "the limit holds");
    assert!(store.channel("c4").await.unwrap().is_none());
    assert_eq!(names(&store.channels("w1").await.unwrap()), ["announcements", "dev", "general"]);
    assert_eq!(store.channel("c1").await.unwrap(), Some(channel("c1", "w1", "general")));

    // Channel updates: names stay unique within the waddle; the waddle and creation time stay.
    assert!(matches!(store.channel_update(&channel("c3", "w1", "general")).await, Err(StorageError::AlreadyExists)));
    let mut update = channel("c3", "w2", "ops");
    update.topic = Some("on call".into());
    update.created_at = 1;
    store.channel_update(&update).await.unwrap();
    let c3 = store.channel("c3").await.unwrap().unwrap();
    assert_eq!(
        (c3.waddle_id.as_str(), c3.name.as_str(), c3.topic.as_deref(), c3.created_at),
        ("w1", "ops", Some("on call"), 7)
    );
    store.channel_update(&ChannelRecord { topic: None, ..c3.clone() }).await.unwrap();
    assert!(matches!(store.channel_update(&channel("nope", "w1", "x")).await, Err(StorageError::NotFound)));

    store.channel_delete("c2").await.unwrap();
    assert!(matches!(store.channel_delete("c2").await, Err(StorageError::NotFound)));
    assert_eq!(names(&store.channels("w1").await.unwrap()), ["general", "ops"]);

    // Deleting a waddle deletes its channels, and returns them.
    let deleted = store.waddle_delete("w1").await.unwrap();
    assert_eq!(deleted.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["c1", "c3"]);
    assert!(store.waddle("w1").await.unwrap().is_none());
    assert!(store.channels("w1").await.unwrap().is_empty());
    assert!(store.channel("c1").await.unwrap().is_none());
    assert!(matches!(store.waddle_delete("w1").await, Err(StorageError::NotFound)));
    assert_eq!(names(&store.channels("w2").await.unwrap()), ["general"], "other waddles keep theirs");
    assert!(plane.state().records_of_kind("channel").all(|(_, r)| r.body["waddle_id"] == "w2"));

    plane.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_channel_creations_cannot_exceed_the_limit() {
    let dir = TempDir::new("limit");
    let plane = one_node(&dir.0).await;
    let store = Arc::new(RaftControlStore::new(plane.clone()));
    store.waddle_create(&waddle("w1", 1)).await.unwrap();

    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.channel_create_limited(&channel(&format!("c{i}"), "w1", &format!("n{i}")), 3).await
        }));
    }
    let mut created = 0;
    for task in tasks {
        if task.await.unwrap().unwrap() {
            created += 1;
        }
    }
    assert_eq!(created, 3);
    assert_eq!(store.channels("w1").await.unwrap().len(), 3);

    // A waddle deleted while a channel is being created takes every channel with it.
    let creating = {
        let store = store.clone();
        tokio::spawn(async move { store.channel_create_limited(&channel("late", "w1", "late"), 100).await })
    };
    let deleted = store.waddle_delete("w1").await.unwrap();
    match creating.await.unwrap() {
        Ok(true) => assert!(deleted.iter().any(|c| c.id == "late"), "created first, so deleted with the waddle"),
        Err(StorageError::NotFound) => assert!(!deleted.iter().any(|c| c.id == "late")),
        other => panic!("{other:?}"),
    }
    assert_eq!(plane.state().records_of_kind("channel").count(), 0);

    plane.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_follow_the_control_plane() {
    let dir = TempDir::new("perms");
    let plane = one_node(&dir.0).await;
    // Written before the node loads its index.
    plane
        .propose(Command::WriteTuples {
            write: vec![waddle_control::Tuple::new("waddle:w1", "owner", "user:alice")],
            delete: vec![],
        })
        .await
        .unwrap();
    let permissions = Arc::new(load_permissions(plane.clone()).await);
    let w1 = ObjectRef::new("waddle", "w1");
    assert!(permissions.check(&w1, "delete", "alice"));

    // Written after loading but before the feed starts: caught up when it starts.
    plane
        .propose(Command::WriteTuples {
            write: vec![waddle_control::Tuple::new("waddle:w1", "member", "user:alice")],
            delete: vec![],
        })
        .await
        .unwrap();
    let feed = spawn_feed(plane.clone(), permissions.clone());
    assert!(permissions.check(&w1, "view", "alice"));
    assert_eq!(permissions.applied_index(), plane.state().applied);

    // Through this node: visible to the very next check, both ways.
    permissions.write(t("waddle:w1#member@user:bob")).await.unwrap();
    assert!(permissions.check(&w1, "view", "bob"));
    assert!(plane.state().has_tuple(&waddle_control::Tuple::new("waddle:w1", "member", "user:bob")));
    permissions.delete(&t("waddle:w1#member@user:bob")).await.unwrap();
    assert!(!permissions.check(&w1, "view", "bob"), "a revocation is visible to the next check");

    // Entries that change no tuple move the index along (and release nobody wrongly).
    let store = RaftControlStore::new(plane.clone());
    store.waddle_create(&waddle("w1", 1)).await.unwrap();
    assert!(store.channel_create_limited(&channel("c1", "w1", "general"), 10).await.unwrap());
    permissions.write(t("channel:c1#parent@waddle:w1")).await.unwrap();
    assert!(permissions.check(&ObjectRef::new("channel", "c1"), "view", "alice"));

    // A change made through another node (proposed directly) reaches memory through the feed.
    let index = match plane
        .propose(Command::WriteTuples {
            write: vec![waddle_control::Tuple::new("waddle:w1", "member", "user:carol")],
            delete: vec![],
        })
        .await
        .unwrap()
    {
        waddle_control::CommandResult::Ok { index } => index,
        other => panic!("{other:?}"),
    };
    for _ in 0..200 {
        if permissions.applied_index() >= index {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(permissions.check(&w1, "view", "carol"));

    // Removals by pattern: applied by the state machine, reported and mirrored in memory.
    let removed = permissions.remove_user("carol").await.unwrap();
    assert_eq!(removed, [t("waddle:w1#member@user:carol")]);
    assert!(!permissions.check(&w1, "view", "carol"));
    assert!(permissions.remove_user("carol").await.unwrap().is_empty());
    permissions.delete_object(&w1).await.unwrap();
    assert!(!permissions.check(&w1, "view", "alice"));
    assert!(permissions.list(&TupleFilter::default()).is_empty(), "the channel's parent link went too");
    assert_eq!(plane.state().tuple_count(), 0);

    // A fresh index over the same state agrees.
    permissions.write_all(vec![t("waddle:w2#owner@user:dave"), t("waddle:w2#member@user:dave")]).await.unwrap();
    let reloaded: Permissions = load_permissions(plane.clone()).await;
    assert_eq!(reloaded.list(&TupleFilter::default()), permissions.list(&TupleFilter::default()));

    feed.abort();
    assert!(feed.await.unwrap_err().is_cancelled());
    plane.shutdown().await.unwrap();
}

/// On a cluster member, persistent rooms and retired room JIDs are control-plane records:
/// any node can load a room's snapshot, and a retired JID stays retired (a late write of
/// the destroyed room's actor does not bring its snapshot back).
#[tokio::test]
async fn rooms_and_retirements_live_in_the_control_plane() {
    use waddle::control_store::{NodeControl, ROOM_KIND};
    let dir = TempDir::new("rooms");
    let plane = one_node(&dir.0).await;
    let local = waddle_storage::Store::open(&dir.0.join("local.db")).await.unwrap();
    let control = NodeControl::new(local.clone(), true);
    assert!(control.room_get("r@muc.x").await.is_err(), "a member that has not joined has no rooms to read");
    control.set_replicated(RaftControlStore::new(Arc::clone(&plane)));

    control.room_put("r@muc.x", "{\"snapshot\":1}", Some("Room R")).await.unwrap();
    control.room_put("q@muc.x", "{\"snapshot\":2}", None).await.unwrap();
    assert_eq!(control.room_get("r@muc.x").await.unwrap().as_deref(), Some("{\"snapshot\":1}"));
    assert!(plane.state().record(ROOM_KIND, "r@muc.x").is_some(), "in the replicated state");
    assert!(local.room_get("r@muc.x").await.unwrap().is_none(), "not in the node's own database");
    assert_eq!(control.rooms_listed(10).await.unwrap(), vec![("r@muc.x".to_owned(), "Room R".to_owned())]);

    control.room_retire("r@muc.x").await.unwrap();
    assert!(control.room_is_retired("r@muc.x").await.unwrap());
    assert!(control.room_get("r@muc.x").await.unwrap().is_none());
    control.room_put("r@muc.x", "{\"late\":true}", None).await.unwrap();
    assert!(control.room_get("r@muc.x").await.unwrap().is_none(), "a retired room is never written again");
    assert!(!control.room_is_retired("q@muc.x").await.unwrap());
    control.room_delete("q@muc.x").await.unwrap();
    assert!(control.room_get("q@muc.x").await.unwrap().is_none());
    plane.shutdown().await.unwrap();
}
