#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use crate::db::Tx;
use crate::test_util::TempDir;
use crate::*;

fn temp_dir() -> TempDir {
    TempDir::new("waddle-storage-test")
}

async fn memory() -> Store {
    Store::open(Path::new(":memory:")).await.unwrap()
}

fn scram(hash: &str, seed: u8) -> StoredScram {
    StoredScram {
        hash: hash.into(),
        salt: vec![seed; 16],
        iterations: 4096,
        stored_key: vec![seed.wrapping_add(1); 32],
        server_key: vec![seed.wrapping_add(2); 32],
    }
}

fn account(username: &str) -> AccountRecord {
    AccountRecord {
        username: username.into(),
        scram_sha1: scram("SHA-1", 1),
        scram_sha256: scram("SHA-256", 7),
        created_at: 1_700_000_000,
    }
}

fn row(contact: &str, subscription: &str) -> RosterRow {
    RosterRow {
        contact: contact.into(),
        name: Some("Friend".into()),
        groups: vec!["Friends".into(), "Work \"quoted\"".into()],
        subscription: subscription.into(),
        ask_out: true,
        pending_in: false,
        approved: true,
        in_roster: true,
    }
}

const H1: [u8; 32] = [1; 32];
const H2: [u8; 32] = [2; 32];

#[tokio::test]
async fn account_crud() {
    let store = memory().await;
    assert!(!store.account_exists("alice").await.unwrap());
    assert_eq!(store.account("alice").await.unwrap(), None);
    store.create_account(account("alice")).await.unwrap();
    assert!(store.account_exists("alice").await.unwrap());
    assert_eq!(store.account("alice").await.unwrap(), Some(account("alice")));
    assert!(matches!(store.create_account(account("alice")).await, Err(StorageError::AlreadyExists)));
    assert!(matches!(store.create_account(account("")).await, Err(StorageError::Invalid(_))));
    store.delete_account("alice").await.unwrap();
    assert!(!store.account_exists("alice").await.unwrap());
    assert!(matches!(store.delete_account("alice").await, Err(StorageError::NotFound)));
    // The name can be taken again after deletion.
    store.create_account(account("alice")).await.unwrap();
}

#[tokio::test]
async fn scram_debug_hides_keys() {
    let text = format!("{:?}", scram("SHA-256", 9));
    assert!(text.contains("SHA-256"));
    assert!(!text.contains("stored_key"));
    assert!(!text.contains("salt"));
}

#[tokio::test]
async fn tokens_lookup_expiry_and_purge() {
    let store = memory().await;
    store.create_account(account("alice")).await.unwrap();
    assert!(matches!(store.insert_token(TokenKind::HttpSession, H1, "nobody", 100).await, Err(StorageError::NotFound)));
    store.insert_token(TokenKind::HttpSession, H1, "alice", 100).await.unwrap();
    store.insert_token(TokenKind::Xmpp, H2, "alice", 200).await.unwrap();
    assert!(matches!(
        store.insert_token(TokenKind::HttpSession, H1, "alice", 500).await,
        Err(StorageError::AlreadyExists)
    ));

    let found = store.lookup_token(TokenKind::HttpSession, H1, 99).await.unwrap();
    assert_eq!(found, Some(TokenRecord { username: "alice".into(), expires_at: 100 }));
    // Kinds are separate namespaces.
    assert_eq!(store.lookup_token(TokenKind::Xmpp, H1, 99).await.unwrap(), None);
    assert!(store.lookup_token(TokenKind::Xmpp, H2, 99).await.unwrap().is_some());
    // Unknown hash.
    assert_eq!(store.lookup_token(TokenKind::HttpSession, [9; 32], 0).await.unwrap(), None);
    // Expired at exactly expires_at.
    assert_eq!(store.lookup_token(TokenKind::HttpSession, H1, 100).await.unwrap(), None);
    assert_eq!(store.lookup_token(TokenKind::HttpSession, H1, 1000).await.unwrap(), None);

    assert_eq!(store.purge_expired_tokens(150).await.unwrap(), 1);
    assert_eq!(store.purge_expired_tokens(150).await.unwrap(), 0);
    assert!(store.lookup_token(TokenKind::Xmpp, H2, 150).await.unwrap().is_some());
    assert_eq!(store.purge_expired_tokens(200).await.unwrap(), 1);
    assert_eq!(store.lookup_token(TokenKind::Xmpp, H2, 0).await.unwrap(), None);
}

#[tokio::test]
async fn roster_versions_strictly_increase() {
    let store = memory().await;
    assert_eq!(store.roster("alice").await.unwrap(), (0, vec![]));
    assert!(matches!(store.roster_upsert("alice", &row("bob@x", "none")).await, Err(StorageError::NotFound)));
    assert!(matches!(store.roster_remove("alice", "bob@x").await, Err(StorageError::NotFound)));
    store.create_account(account("alice")).await.unwrap();
    store.create_account(account("carol")).await.unwrap();

    let v1 = store.roster_upsert("alice", &row("bob@x", "none")).await.unwrap();
    assert!(v1 > 0);
    let mut updated = row("bob@x", "both");
    updated.name = None;
    updated.groups.clear();
    updated.ask_out = false;
    updated.pending_in = true;
    updated.approved = false;
    updated.in_roster = false;
    let v2 = store.roster_upsert("alice", &updated).await.unwrap();
    assert!(v2 > v1);
    assert_eq!(store.roster_item("alice", "bob@x").await.unwrap(), Some(updated.clone()));
    let v3 = store.roster_upsert("alice", &row("dave@x", "to")).await.unwrap();
    assert!(v3 > v2);
    // Another user's change does not disturb alice's version but still gets a fresh number.
    let c1 = store.roster_upsert("carol", &row("bob@x", "from")).await.unwrap();
    assert!(c1 > v3);

    let (version, rows) = store.roster("alice").await.unwrap();
    assert_eq!(version, v3);
    assert_eq!(rows, vec![updated, row("dave@x", "to")]);

    let v4 = store.roster_remove("alice", "bob@x").await.unwrap();
    assert!(v4 > v3);
    assert_eq!(store.roster_item("alice", "bob@x").await.unwrap(), None);
    // Removing an absent contact is not a change.
    assert_eq!(store.roster_remove("alice", "bob@x").await.unwrap(), v4);
    assert_eq!(store.roster("alice").await.unwrap().0, v4);
    assert_eq!(store.roster("carol").await.unwrap().0, c1);
}

#[tokio::test]
async fn roster_rejects_bad_rows() {
    let store = memory().await;
    store.create_account(account("alice")).await.unwrap();
    assert!(matches!(store.roster_upsert("alice", &row("bob@x", "maybe")).await, Err(StorageError::Invalid(_))));
    assert!(matches!(store.roster_upsert("alice", &row("", "none")).await, Err(StorageError::Invalid(_))));
    assert_eq!(store.roster("alice").await.unwrap(), (0, vec![]));
}

/// The operations of a replicated log may be applied twice (after a crash between
/// applying and recording it): queuing and delivering by operation id change nothing
/// the second time, and never touch another message.
#[tokio::test]
async fn offline_operations_applied_twice_change_nothing_more() {
    let store = memory().await;
    store.create_account(account("alice")).await.unwrap();
    assert!(store.offline_push("alice", "<message id='legacy'/>", 10).await.unwrap());
    for _ in 0..2 {
        assert!(store.offline_push_op("alice", "<message id='a'/>", 10, "op-a").await.unwrap());
    }
    assert!(store.offline_push_op("alice", "<message id='b'/>", 10, "op-b").await.unwrap());
    let peeked = store.offline_peek_ops("alice").await.unwrap();
    assert_eq!(
        peeked,
        vec![
            (None, "<message id='legacy'/>".to_owned()),
            (Some("op-a".to_owned()), "<message id='a'/>".to_owned()),
            (Some("op-b".to_owned()), "<message id='b'/>".to_owned()),
        ]
    );
    // Delivered: the legacy one and a; c arrives meanwhile; the drop is applied twice.
    assert!(store.offline_push_op("alice", "<message id='c'/>", 10, "op-c").await.unwrap());
    for _ in 0..2 {
        store.offline_drop_ops("alice", vec!["op-a".into()], 1).await.unwrap();
    }
    assert_eq!(store.offline_peek("alice").await.unwrap(), vec!["<message id='b'/>", "<message id='c'/>"]);
    // The quota counts what is queued; a repeated push of a queued message is no new one.
    assert!(!store.offline_push_op("alice", "<message id='d'/>", 2, "op-d").await.unwrap());
    assert!(store.offline_push_op("alice", "<message id='c'/>", 2, "op-c").await.unwrap());
    assert_eq!(store.offline_count("alice").await.unwrap(), 2);
    assert!(matches!(store.offline_push_op("nobody", "<message/>", 2, "op-x").await, Err(StorageError::NotFound)));
}

#[tokio::test]
async fn offline_fifo_and_quota() {
    let store = memory().await;
    assert!(matches!(store.offline_push("alice", "<message/>", 3).await, Err(StorageError::NotFound)));
    store.create_account(account("alice")).await.unwrap();
    store.create_account(account("bob")).await.unwrap();
    for i in 0..3 {
        assert!(store.offline_push("alice", &format!("<message id='{i}'/>"), 3).await.unwrap());
    }
    assert!(!store.offline_push("alice", "<message id='over'/>", 3).await.unwrap());
    assert!(!store.offline_push("bob", "<message/>", 0).await.unwrap());
    assert!(store.offline_push("bob", "<message from='é'/>", 3).await.unwrap());
    assert_eq!(store.offline_count("alice").await.unwrap(), 3);
    assert_eq!(store.offline_count("bob").await.unwrap(), 1);

    let taken = store.offline_take("alice").await.unwrap();
    assert_eq!(taken, vec!["<message id='0'/>", "<message id='1'/>", "<message id='2'/>"]);
    assert_eq!(store.offline_count("alice").await.unwrap(), 0);
    assert!(store.offline_take("alice").await.unwrap().is_empty());
    assert_eq!(store.offline_count("bob").await.unwrap(), 1);
    // Room again after the queue was drained; order still FIFO.
    assert!(store.offline_push("alice", "<message id='3'/>", 3).await.unwrap());
    assert!(store.offline_push("alice", "<message id='4'/>", 3).await.unwrap());
    assert_eq!(store.offline_take("alice").await.unwrap(), vec!["<message id='3'/>", "<message id='4'/>"]);
    assert_eq!(store.offline_take("bob").await.unwrap(), vec!["<message from='é'/>"]);
}

#[tokio::test]
async fn vcards() {
    let store = memory().await;
    assert!(matches!(store.vcard_set("alice", "<vCard/>").await, Err(StorageError::NotFound)));
    store.create_account(account("alice")).await.unwrap();
    assert_eq!(store.vcard_get("alice").await.unwrap(), None);
    store.vcard_set("alice", "<vCard xmlns='vcard-temp'><FN>A</FN></vCard>").await.unwrap();
    store.vcard_set("alice", "<vCard xmlns='vcard-temp'><FN>B</FN></vCard>").await.unwrap();
    assert_eq!(
        store.vcard_get("alice").await.unwrap().as_deref(),
        Some("<vCard xmlns='vcard-temp'><FN>B</FN></vCard>")
    );
}

#[tokio::test]
async fn delete_account_cascades() {
    let store = memory().await;
    for name in ["alice", "bob"] {
        store.create_account(account(name)).await.unwrap();
        store.roster_upsert(name, &row("x@y", "both")).await.unwrap();
        store.offline_push(name, "<message/>", 10).await.unwrap();
        store.vcard_set(name, "<vCard/>").await.unwrap();
    }
    store.insert_token(TokenKind::HttpSession, H1, "alice", i64::MAX).await.unwrap();
    store.insert_token(TokenKind::Xmpp, H2, "bob", i64::MAX).await.unwrap();

    store.delete_account("alice").await.unwrap();
    assert_eq!(store.account("alice").await.unwrap(), None);
    assert_eq!(store.roster("alice").await.unwrap(), (0, vec![]));
    assert_eq!(store.offline_count("alice").await.unwrap(), 0);
    assert_eq!(store.vcard_get("alice").await.unwrap(), None);
    assert_eq!(store.lookup_token(TokenKind::HttpSession, H1, 0).await.unwrap(), None);

    // Recreating the account starts empty; bob is untouched.
    store.create_account(account("alice")).await.unwrap();
    assert_eq!(store.roster("alice").await.unwrap().1, vec![]);
    assert_eq!(store.offline_count("alice").await.unwrap(), 0);
    assert_eq!(store.roster("bob").await.unwrap().1.len(), 1);
    assert_eq!(store.offline_count("bob").await.unwrap(), 1);
    assert!(store.vcard_get("bob").await.unwrap().is_some());
    assert!(store.lookup_token(TokenKind::Xmpp, H2, 0).await.unwrap().is_some());
}

#[tokio::test]
async fn ping_and_schema_version() {
    let store = memory().await;
    store.ping().await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
    // Clones share the same database.
    let other = store.clone();
    other.create_account(account("alice")).await.unwrap();
    assert!(store.account_exists("alice").await.unwrap());
}

#[tokio::test]
async fn writes_survive_reopen_and_migrations_are_idempotent() {
    let dir = temp_dir();
    let path = dir.join("waddle.db");
    let (mut version, before) = {
        let store = Store::open(&path).await.unwrap();
        store.create_account(account("alice")).await.unwrap();
        let v = store.roster_upsert("alice", &row("bob@x", "both")).await.unwrap();
        store.offline_push("alice", "<message id='a'/>", 5).await.unwrap();
        store.vcard_set("alice", "<vCard/>").await.unwrap();
        store.insert_token(TokenKind::Xmpp, H1, "alice", 1_000).await.unwrap();
        (v, store.account("alice").await.unwrap())
    };
    for _ in 0..2 {
        let store = Store::open(&path).await.unwrap();
        assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
        assert_eq!(store.account("alice").await.unwrap(), before);
        assert_eq!(store.roster("alice").await.unwrap(), (version, vec![row("bob@x", "both")]));
        assert_eq!(store.offline_count("alice").await.unwrap(), 1);
        assert_eq!(store.vcard_get("alice").await.unwrap().as_deref(), Some("<vCard/>"));
        assert!(store.lookup_token(TokenKind::Xmpp, H1, 10).await.unwrap().is_some());
        // The global version counter persisted too: the next version is still larger.
        assert!(store.roster_upsert("alice", &row("bob@x", "both")).await.unwrap() > version);
        let removed = store.roster_remove("alice", "bob@x").await.unwrap();
        version = store.roster_upsert("alice", &row("bob@x", "both")).await.unwrap();
        assert!(version > removed);
    }
    // Exactly one schema_version row per migration after several opens.
    let store = Store::open(&path).await.unwrap();
    let rows = store
        .worker
        .call(|conn| async move { Sql::query_i64(&conn, "SELECT COUNT(*) FROM schema_version", ()).await })
        .await
        .unwrap();
    assert_eq!(rows, i64::from(SCHEMA_VERSION));
    assert!(path.exists());
}

#[tokio::test]
async fn wal_mode_is_enabled_on_files() {
    let dir = temp_dir();
    let store = Store::open(&dir.join("waddle.db")).await.unwrap();
    let mode = store
        .worker
        .call(|conn| async move { Sql::query_opt(&conn, "PRAGMA journal_mode", (), |r| Ok(r.get::<String>(0)?)).await })
        .await
        .unwrap();
    assert_eq!(mode.as_deref(), Some("wal"));
}

#[tokio::test]
async fn newer_schema_is_refused() {
    let dir = temp_dir();
    let path = dir.join("waddle.db");
    {
        let store = Store::open(&path).await.unwrap();
        store
            .worker
            .call(|conn| async move {
                conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (999, 0)", ()).await?;
                Ok(())
            })
            .await
            .unwrap();
    }
    match Store::open(&path).await {
        Err(StorageError::SchemaTooNew { found: 999, supported }) => assert_eq!(supported, i64::from(SCHEMA_VERSION)),
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[tokio::test]
async fn open_fails_cleanly_on_a_bad_path() {
    let dir = temp_dir();
    let bad = dir.join("missing-dir").join("waddle.db");
    assert!(matches!(Store::open(&bad).await, Err(StorageError::Database(_))));
}

#[tokio::test]
async fn failed_transaction_rolls_back() {
    let store = memory().await;
    store.create_account(account("alice")).await.unwrap();
    let result: Result<(), StorageError> = store
        .worker
        .call(|conn| async move {
            Sql::in_tx(&conn, crate::db::Tx::Write, async {
                conn.execute("DELETE FROM accounts", ()).await?;
                Err(StorageError::Invalid("abort".into()))
            })
            .await
        })
        .await;
    assert!(result.is_err());
    assert!(store.account_exists("alice").await.unwrap());
}

#[tokio::test]
async fn panicking_job_does_not_kill_the_thread() {
    let store = memory().await;
    store.create_account(account("alice")).await.unwrap();
    let result: Result<(), StorageError> = store
        .worker
        .call(|conn| async move {
            conn.execute("BEGIN IMMEDIATE", ()).await?;
            conn.execute("DELETE FROM accounts", ()).await?;
            panic!("boom");
        })
        .await;
    assert!(matches!(result, Err(StorageError::Closed)));
    // The half-done transaction was rolled back and the thread is still serving.
    assert!(store.account_exists("alice").await.unwrap());
}

#[tokio::test]
async fn many_concurrent_callers() {
    let store = memory().await;
    store.create_account(account("alice")).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.roster_upsert("alice", &row(&format!("c{i}@x"), "none")).await.unwrap()
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap());
    }
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions.len(), 50);
    let (v, rows) = store.roster("alice").await.unwrap();
    assert_eq!(rows.len(), 50);
    assert_eq!(v, *versions.last().unwrap());
}

// ---------------------------------------------------------------------------------------
// Waddles, channels, tuples, rooms (schema version 2)

fn waddle(id: &str, owner: &str) -> WaddleRecord {
    WaddleRecord {
        id: id.into(),
        name: format!("Waddle {id}"),
        description: Some("about".into()),
        owner: owner.into(),
        created_at: 1_700_000_000,
    }
}

fn channel(id: &str, waddle_id: &str, name: &str) -> ChannelRecord {
    ChannelRecord {
        id: id.into(),
        waddle_id: waddle_id.into(),
        name: name.into(),
        kind: "text".into(),
        topic: None,
        created_at: 1_700_000_001,
    }
}

#[tokio::test]
async fn waddle_crud() {
    let store = memory().await;
    assert_eq!(store.waddle("w1").await.unwrap(), None);
    store.waddle_create(&waddle("w1", "alice")).await.unwrap();
    assert!(matches!(store.waddle_create(&waddle("w1", "bob")).await, Err(StorageError::AlreadyExists)));
    assert_eq!(store.waddle("w1").await.unwrap(), Some(waddle("w1", "alice")));

    let mut updated = WaddleRecord { name: "Renamed".into(), description: None, ..waddle("w1", "alice") };
    updated.created_at = 5; // ignored
    store.waddle_update(&updated).await.unwrap();
    let got = store.waddle("w1").await.unwrap().unwrap();
    assert_eq!((got.name.as_str(), got.description, got.created_at), ("Renamed", None, 1_700_000_000));
    assert!(matches!(store.waddle_update(&waddle("nope", "alice")).await, Err(StorageError::NotFound)));
    for bad in [waddle("", "a"), WaddleRecord { name: String::new(), ..waddle("w", "a") }, waddle("w", "")] {
        assert!(matches!(store.waddle_create(&bad).await, Err(StorageError::Invalid(_))), "{bad:?}");
    }
}

#[tokio::test]
async fn waddles_by_ids_in_creation_order() {
    let store = memory().await;
    for (i, id) in ["b", "a", "c"].iter().enumerate() {
        store.waddle_create(&WaddleRecord { created_at: i as i64, ..waddle(id, "alice") }).await.unwrap();
    }
    let ids = |v: Vec<WaddleRecord>| v.into_iter().map(|w| w.id).collect::<Vec<_>>();
    let all = ["a", "b", "c", "zz", "a"].map(String::from);
    assert_eq!(ids(store.waddles_by_ids(&all).await.unwrap()), ["b", "a", "c"]);
    assert_eq!(ids(store.waddles_by_ids(&["c".into()]).await.unwrap()), ["c"]);
    assert!(store.waddles_by_ids(&[]).await.unwrap().is_empty());
    // More ids than one IN (...) chunk.
    let many: Vec<String> = (0..1200).map(|i| format!("x{i}")).chain(["a".to_owned()]).collect();
    assert_eq!(ids(store.waddles_by_ids(&many).await.unwrap()), ["a"]);
}

#[tokio::test]
async fn channel_crud_and_uniqueness() {
    let store = memory().await;
    assert!(matches!(store.channel_create(&channel("c1", "w1", "general")).await, Err(StorageError::NotFound)));
    store.waddle_create(&waddle("w1", "alice")).await.unwrap();
    store.waddle_create(&waddle("w2", "alice")).await.unwrap();
    store.channel_create(&channel("c1", "w1", "general")).await.unwrap();
    let announcements = ChannelRecord {
        kind: "announcement".into(),
        topic: Some("news".into()),
        ..channel("c2", "w1", "announcements")
    };
    store.channel_create(&announcements).await.unwrap();
    // Same name in the same waddle, or the same id: taken. Same name elsewhere: fine.
    assert!(matches!(store.channel_create(&channel("c3", "w1", "general")).await, Err(StorageError::AlreadyExists)));
    assert!(matches!(store.channel_create(&channel("c1", "w2", "other")).await, Err(StorageError::AlreadyExists)));
    store.channel_create(&channel("c4", "w2", "general")).await.unwrap();
    let bad = ChannelRecord { kind: "voice".into(), ..channel("c5", "w1", "x") };
    assert!(matches!(store.channel_create(&bad).await, Err(StorageError::Invalid(_))));

    assert_eq!(store.channel("c2").await.unwrap(), Some(announcements.clone()));
    assert_eq!(store.channel("nope").await.unwrap(), None);
    let names: Vec<String> = store.channels("w1").await.unwrap().into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["announcements", "general"]);
    assert_eq!(store.channel_count("w1").await.unwrap(), 2);
    assert_eq!(store.channel_count("w9").await.unwrap(), 0);

    // Update: rename, clash, unknown; waddle and created_at are kept.
    let renamed = ChannelRecord {
        name: "random".into(),
        topic: Some("t".into()),
        waddle_id: "w2".into(),
        created_at: 0,
        ..channel("c1", "w1", "")
    };
    store.channel_update(&renamed).await.unwrap();
    let got = store.channel("c1").await.unwrap().unwrap();
    assert_eq!(
        (got.name.as_str(), got.topic.as_deref(), got.waddle_id.as_str(), got.created_at),
        ("random", Some("t"), "w1", 1_700_000_001)
    );
    let clash = ChannelRecord { name: "announcements".into(), ..channel("c1", "w1", "") };
    assert!(matches!(store.channel_update(&clash).await, Err(StorageError::AlreadyExists)));
    // Renaming to its own name is not a clash.
    store.channel_update(&ChannelRecord { name: "random".into(), ..channel("c1", "w1", "") }).await.unwrap();
    assert!(matches!(store.channel_update(&channel("nope", "w1", "x")).await, Err(StorageError::NotFound)));

    store.channel_delete("c1").await.unwrap();
    assert!(matches!(store.channel_delete("c1").await, Err(StorageError::NotFound)));
    assert_eq!(store.channel_count("w1").await.unwrap(), 1);
}

#[tokio::test]
async fn waddle_delete_returns_its_channels() {
    let store = memory().await;
    store.waddle_create(&waddle("w1", "alice")).await.unwrap();
    store.waddle_create(&waddle("w2", "alice")).await.unwrap();
    store.channel_create(&channel("c1", "w1", "general")).await.unwrap();
    store.channel_create(&channel("c2", "w1", "dev")).await.unwrap();
    store.channel_create(&channel("c3", "w2", "general")).await.unwrap();
    let deleted: Vec<String> = store.waddle_delete("w1").await.unwrap().into_iter().map(|c| c.id).collect();
    assert_eq!(deleted, ["c2", "c1"]);
    assert_eq!(store.waddle("w1").await.unwrap(), None);
    assert_eq!(store.channel("c1").await.unwrap(), None);
    assert!(store.channel("c3").await.unwrap().is_some());
    assert!(matches!(store.waddle_delete("w1").await, Err(StorageError::NotFound)));
}

#[tokio::test]
async fn tuples_and_rooms() {
    let store = memory().await;
    assert!(store.tuples_all().await.unwrap().is_empty());
    for t in ["waddle:w1#owner@user:alice", "waddle:w1#member@user:alice", "channel:c1#parent@waddle:w1"] {
        store.tuple_write(t).await.unwrap();
        store.tuple_write(t).await.unwrap();
    }
    assert_eq!(
        store.tuples_all().await.unwrap(),
        ["channel:c1#parent@waddle:w1", "waddle:w1#member@user:alice", "waddle:w1#owner@user:alice"]
    );
    store.tuple_delete("waddle:w1#owner@user:alice").await.unwrap();
    store.tuple_delete("waddle:w1#owner@user:alice").await.unwrap();
    store.tuples_delete_batch(&["channel:c1#parent@waddle:w1".into(), "not:there#x@user:y".into()]).await.unwrap();
    assert_eq!(store.tuples_all().await.unwrap(), ["waddle:w1#member@user:alice"]);
    assert!(matches!(store.tuple_write("").await, Err(StorageError::Invalid(_))));
    assert!(matches!(store.tuple_write(&"x".repeat(2000)).await, Err(StorageError::Invalid(_))));

    assert_eq!(store.room_get("c1@muc.example.test").await.unwrap(), None);
    store.room_put("c1@muc.example.test", "{\"v\":1}", Some("Lobby")).await.unwrap();
    assert_eq!(store.rooms_listed(10).await.unwrap(), [("c1@muc.example.test".to_owned(), "Lobby".to_owned())]);
    store.room_put("c1@muc.example.test", "{\"v\":2}", None).await.unwrap();
    assert!(store.rooms_listed(10).await.unwrap().is_empty(), "hidden now");
    assert_eq!(store.room_get("c1@muc.example.test").await.unwrap().as_deref(), Some("{\"v\":2}"));
    store.room_delete("c1@muc.example.test").await.unwrap();
    store.room_delete("c1@muc.example.test").await.unwrap();
    assert_eq!(store.room_get("c1@muc.example.test").await.unwrap(), None);
    assert!(matches!(store.room_put("", "x", None).await, Err(StorageError::Invalid(_))));

    // Retiring: the state goes, the JID stays taken, late writes are ignored.
    let jid = "c2@muc.example.test";
    store.room_put(jid, "{\"v\":1}", Some("c2")).await.unwrap();
    assert!(!store.room_is_retired(jid).await.unwrap());
    store.room_retire(jid).await.unwrap();
    store.room_retire(jid).await.unwrap();
    assert!(store.room_is_retired(jid).await.unwrap());
    assert_eq!(store.room_get(jid).await.unwrap(), None);
    store.room_put(jid, "{\"v\":2}", Some("c2")).await.unwrap();
    assert_eq!(store.room_get(jid).await.unwrap(), None, "a retired room is never stored again");
    assert!(store.rooms_listed(10).await.unwrap().is_empty());
    assert!(!store.room_is_retired("c1@muc.example.test").await.unwrap());
}

#[tokio::test]
async fn version_1_databases_are_migrated_to_the_latest() {
    let dir = temp_dir();
    let path = dir.join("waddle.db");
    {
        // Make a version-1 database: everything of versions 2 to 4 undone.
        let store = Store::open(&path).await.unwrap();
        store.create_account(account("alice")).await.unwrap();
        assert!(store.offline_push("alice", "<message id='old'/>", 10).await.unwrap());
        store
            .worker
            .call(|conn| async move {
                conn.execute_batch(
                    "DROP TABLE waddles; DROP TABLE channels; DROP TABLE authz_tuples; DROP TABLE rooms; \
                     DROP TABLE retired_rooms; DROP INDEX offline_by_op; ALTER TABLE offline DROP COLUMN op_id; \
                     DELETE FROM schema_version WHERE version >= 2;",
                )
                .await?;
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(store.schema_version().await.unwrap(), 1);
    }
    let store = Store::open(&path).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
    assert_eq!(SCHEMA_VERSION, 4);
    assert!(store.account_exists("alice").await.unwrap());
    assert!(store.offline_push_op("alice", "<message id='new'/>", 10, "op-new").await.unwrap());
    let queued = store.offline_peek_ops("alice").await.unwrap();
    assert_eq!(
        queued,
        vec![(None, "<message id='old'/>".into()), (Some("op-new".into()), "<message id='new'/>".into())]
    );
    store.room_retire("gone@muc.example.test").await.unwrap();
    store.waddle_create(&waddle("w1", "alice")).await.unwrap();
    store.tuple_write("waddle:w1#owner@user:alice").await.unwrap();
    drop(store);
    let store = Store::open(&path).await.unwrap();
    assert_eq!(store.waddle("w1").await.unwrap().unwrap().owner, "alice");
    assert_eq!(store.tuples_all().await.unwrap(), ["waddle:w1#owner@user:alice"]);
}

#[tokio::test]
async fn channel_limit_and_batched_tuple_writes() {
    let store = memory().await;
    store.waddle_create(&waddle("w1", "alice")).await.unwrap();
    assert!(store.channel_create_limited(&channel("c1", "w1", "a"), 2).await.unwrap());
    assert!(store.channel_create_limited(&channel("c2", "w1", "b"), 2).await.unwrap());
    assert!(!store.channel_create_limited(&channel("c3", "w1", "c"), 2).await.unwrap());
    assert_eq!(store.channel_count("w1").await.unwrap(), 2);
    assert!(matches!(store.channel_create_limited(&channel("c4", "w9", "a"), 2).await, Err(StorageError::NotFound)));
    assert!(matches!(
        store.channel_create_limited(&channel("c5", "w1", "a"), 5).await,
        Err(StorageError::AlreadyExists)
    ));

    let batch: Vec<String> = ["b#x@user:1", "a#x@user:1", "b#x@user:1"].map(String::from).to_vec();
    store.tuples_write_batch(&batch).await.unwrap();
    assert_eq!(store.tuples_all().await.unwrap(), ["a#x@user:1", "b#x@user:1"]);
    let bad: Vec<String> = vec!["c#x@user:1".into(), String::new()];
    assert!(matches!(store.tuples_write_batch(&bad).await, Err(StorageError::Invalid(_))));
    assert_eq!(store.tuples_all().await.unwrap().len(), 2);
    store.tuples_write_batch(&[]).await.unwrap();
}

#[tokio::test]
async fn shared_db_helper_errors_map_into_storage_errors() {
    assert!(matches!(Sql::to_u32(-1, "SCRAM iteration count"),
        Err(StorageError::Invalid(m)) if m == "SCRAM iteration count out of range: -1"));
    assert!(matches!(Sql::to_u64(-2, "roster version"),
        Err(StorageError::Invalid(m)) if m == "roster version out of range: -2"));
    assert_eq!(Sql::to_u64(7, "offline count").unwrap(), 7);
    let store = memory().await;
    let none = store.worker.call(|conn| async move { Sql::query_i64(&conn, "SELECT 1 WHERE 0", ()).await }).await;
    assert!(matches!(none, Err(StorageError::Database(m)) if m == "no row returned by: SELECT 1 WHERE 0"));
}

#[tokio::test]
async fn lookups_on_a_file_are_answered_inline_and_see_every_committed_write() {
    let dir = temp_dir();
    let store = Store::open(&dir.join("waddle.db")).await.unwrap();
    store.create_account(account("alice")).await.unwrap();
    store.insert_token(TokenKind::Xmpp, H1, "alice", 100).await.unwrap();
    assert_eq!(store.account("alice").await.unwrap(), Some(account("alice")));
    assert!(store.account_exists("alice").await.unwrap());
    assert_eq!(
        store.lookup_token(TokenKind::Xmpp, H1, 99).await.unwrap(),
        Some(TokenRecord { username: "alice".into(), expires_at: 100 })
    );
    // A write that has returned is visible to the very next inline read.
    store.delete_account("alice").await.unwrap();
    assert!(!store.account_exists("alice").await.unwrap());
    assert_eq!(store.lookup_token(TokenKind::Xmpp, H1, 99).await.unwrap(), None);
    assert_eq!(store.worker.inline_reads(), 5);
}

#[tokio::test]
async fn an_open_write_transaction_does_not_hold_up_inline_reads() {
    let dir = temp_dir();
    let store = Store::open(&dir.join("waddle.db")).await.unwrap();
    store.create_account(account("alice")).await.unwrap();
    let (locked_tx, locked_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = store.worker.clone();
    let writer = tokio::spawn(async move {
        worker
            .call(move |conn| async move {
                Sql::in_tx(&conn, Tx::Write, async {
                    conn.execute("UPDATE accounts SET created_at = 7 WHERE username = 'alice'", ()).await?;
                    let _ = locked_tx.send(());
                    let _ = release_rx.await;
                    Ok(())
                })
                .await
            })
            .await
    });
    locked_rx.await.unwrap();
    // The storage thread is parked inside its write transaction: only an inline read
    // can answer, and it sees the last committed state.
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), store.account("alice")).await;
    assert_eq!(read.expect("the read waited for the writer").unwrap().map(|a| a.created_at), Some(1_700_000_000));
    release_tx.send(()).unwrap();
    writer.await.unwrap().unwrap();
    assert_eq!(store.account("alice").await.unwrap().map(|a| a.created_at), Some(7));
}

#[tokio::test]
async fn a_read_failing_inline_is_retried_on_the_storage_thread() {
    let dir = temp_dir();
    let store = Store::open(&dir.join("waddle.db")).await.unwrap();
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = std::sync::Arc::clone(&attempts);
    let outcome = store
        .worker
        .read(move |conn| {
            let first = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            async move {
                if first {
                    return Err(StorageError::Database("database is locked".into()));
                }
                Sql::query_i64(&conn, "SELECT 41 + 1", ()).await
            }
        })
        .await;
    assert_eq!(outcome.unwrap(), 42);
    assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(store.worker.inline_reads(), 0);
}

#[tokio::test]
async fn in_memory_databases_read_on_the_storage_thread() {
    let store = memory().await;
    store.create_account(account("alice")).await.unwrap();
    assert!(store.account_exists("alice").await.unwrap());
    assert_eq!(store.account("alice").await.unwrap(), Some(account("alice")));
    assert_eq!(store.worker.inline_reads(), 0);
}

/// A set of users' data leaves one database as a file and arrives whole in another:
/// accounts, tokens, rosters (with their versions), offline messages in order, vCards;
/// users not named stay behind; the file's users replace what the target had of them.
#[tokio::test]
async fn users_move_between_databases_as_one_file() {
    let dir = temp_dir();
    let from = Store::open(&dir.join("from.db")).await.unwrap();
    let to = Store::open(&dir.join("to.db")).await.unwrap();
    for user in ["alice", "bob", "carol"] {
        from.create_account(account(user)).await.unwrap();
    }
    from.insert_token(TokenKind::Xmpp, H1, "alice", i64::MAX).await.unwrap();
    from.insert_token(TokenKind::Xmpp, H2, "bob", i64::MAX).await.unwrap();
    let alice_version = from.roster_upsert("alice", &row("bob@x", "both")).await.unwrap();
    from.roster_upsert("bob", &row("alice@x", "both")).await.unwrap();
    for n in 0..3 {
        assert!(from.offline_push("alice", &format!("<message id='m{n}'/>"), 100).await.unwrap());
    }
    from.vcard_set("alice", "<vCard xmlns='vcard-temp'/>").await.unwrap();
    // The target has its own users, and a stale copy of alice to be replaced.
    to.create_account(account("dave")).await.unwrap();
    to.create_account(account("alice")).await.unwrap();
    to.offline_push("alice", "<message id='stale'/>", 100).await.unwrap();

    let file = dir.join("partition-7.db");
    assert_eq!(from.export_users(vec!["alice".into(), "carol".into(), "nobody".into()], &file).await.unwrap(), 2);
    assert!(from.export_users(vec!["alice".into()], &file).await.is_err(), "never overwrites a file");
    assert_eq!(from.usernames().await.unwrap(), ["alice", "bob", "carol"], "exporting changes nothing");

    assert_eq!(to.import_users(&file).await.unwrap(), 2);
    assert_eq!(to.usernames().await.unwrap(), ["alice", "carol", "dave"]);
    assert_eq!(to.account("alice").await.unwrap(), Some(account("alice")));
    assert!(to.lookup_token(TokenKind::Xmpp, H1, 0).await.unwrap().is_some());
    assert!(to.lookup_token(TokenKind::Xmpp, H2, 0).await.unwrap().is_none(), "bob's token stayed behind");
    let (version, roster) = to.roster("alice").await.unwrap();
    assert_eq!((version, roster), (alice_version, vec![row("bob@x", "both")]));
    assert_eq!(
        to.offline_take("alice").await.unwrap(),
        ["<message id='m0'/>", "<message id='m1'/>", "<message id='m2'/>"],
        "in order, and the stale copy replaced"
    );
    assert_eq!(to.vcard_get("alice").await.unwrap().as_deref(), Some("<vCard xmlns='vcard-temp'/>"));
    // Later roster changes get versions above the imported ones.
    assert!(to.roster_upsert("alice", &row("carol@x", "none")).await.unwrap() > alice_version);

    from.delete_users(vec!["alice".into(), "carol".into()]).await.unwrap();
    assert_eq!(from.usernames().await.unwrap(), ["bob"]);
    assert!(from.lookup_token(TokenKind::Xmpp, H1, 0).await.unwrap().is_none());
    assert!(from.offline_take("alice").await.unwrap().is_empty());
    assert!(to.import_users(&dir.join("missing.db")).await.is_err());
}

#[tokio::test]
async fn offline_peek_leaves_and_drop_removes_the_oldest() {
    let dir = crate::test_util::TempDir::new("offline-drop");
    let store = Store::open(&dir.join("w.db")).await.unwrap();
    store.create_account(account("dora")).await.unwrap();
    for m in ["<m1/>", "<m2/>", "<m3/>"] {
        assert!(store.offline_push("dora", m, 10).await.unwrap());
    }
    assert_eq!(store.offline_peek("dora").await.unwrap(), vec!["<m1/>", "<m2/>", "<m3/>"]);
    store.offline_drop("dora", 2).await.unwrap();
    assert_eq!(store.offline_peek("dora").await.unwrap(), vec!["<m3/>"]);
    store.offline_drop("dora", 5).await.unwrap();
    assert!(store.offline_peek("dora").await.unwrap().is_empty());
}
