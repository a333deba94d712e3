#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use waddle_storage::test_util::TempDir;

use super::writer::{self, WriteCmd};
use super::*;
use crate::MamQuery;

fn temp_dir() -> TempDir {
    TempDir::new("waddle-mam-test")
}

const ROOM: &str = "lobby@rooms.example.org";
const T0: i64 = 1_700_000_000_000_000;

fn waddle() -> ArchiveLocation {
    ArchiveLocation::Waddle("w1".into())
}

fn room_row(id: &str, stamp: i64, sender: &str, nick: &str, body: &str) -> ArchivedRow {
    ArchivedRow {
        stanza_id: id.into(),
        archive: ROOM.into(),
        with_jid: sender.into(),
        from_nick: Some(nick.into()),
        stamp_micros: stamp,
        payload: format!("<message from='{ROOM}/{nick}' type='groupchat'><body>{body}</body></message>"),
        body: Some(body.into()),
        retracted: false,
    }
}

fn ids(page: &Page) -> Vec<String> {
    page.rows.iter().map(|r| r.stanza_id.clone()).collect()
}

fn range(from: usize, to: usize) -> Vec<String> {
    (from..to).map(|i| format!("m{i:03}")).collect()
}

fn q() -> MamQuery {
    MamQuery::default()
}

async fn open(dir: &TempDir) -> Archive {
    Archive::open(dir.path()).await.unwrap()
}

/// A connection of the test's own to `file`, for what the archive API does not show. A
/// dropped archive's writer may still be closing (its final checkpoint locks the file),
/// hence the busy timeout.
async fn raw_connection(dir: &TempDir, file: &str) -> libsql::Connection {
    let conn = libsql::Builder::new_local(dir.join(file)).build().await.unwrap().connect().unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

/// 120 room messages `m000`..`m119`, one second apart.
async fn fill_120(archive: &Archive) {
    let writes: Vec<_> = (0..120)
        .map(|i| {
            let stamp = T0 + i64::from(i) * 1_000_000;
            archive.append(waddle(), room_row(&format!("m{i:03}"), stamp, "alice@example.org", "alice", "hi"))
        })
        .collect();
    for w in writes {
        w.await.unwrap();
    }
}

#[tokio::test]
async fn append_and_query_with_every_filter() {
    let dir = temp_dir();
    let archive = open(&dir).await;
    let rows = [
        room_row("a1", T0, "alice@example.org", "alice", "Where art thou, Romeo?"),
        room_row("b1", T0 + 10, "bob@example.org", "bobby", "Deny thy father"),
        room_row("a2", T0 + 20, "alice@example.org", "alice", "And refuse thy name"),
        room_row("b2", T0 + 30, "bob@example.org", "bob", "Shall I hear more?"),
        room_row("a3", T0 + 40, "Alice@Example.org", "alice", "'Tis but thy name that is my enemy"),
    ];
    for row in rows.clone() {
        archive.append(waddle(), row).await.unwrap();
    }

    let all = archive.query(waddle(), ROOM, &q()).await.unwrap();
    assert_eq!(all.rows, rows.to_vec());
    assert_eq!((all.count, all.complete, all.first_index), (5, true, Some(0)));

    let by = |with: &str| MamQuery { with: Some(with.into()), ..q() };
    let page = archive.query(waddle(), ROOM, &by("alice@example.org")).await.unwrap();
    assert_eq!(ids(&page), ["a1", "a2", "a3"], "bare JIDs match case-insensitively");
    assert_eq!(page.count, 3);
    let page = archive.query(waddle(), ROOM, &by("bob@example.org/phone")).await.unwrap();
    assert_eq!(ids(&page), ["b1", "b2"], "a full JID matches its bare JID");
    let page = archive.query(waddle(), ROOM, &by(&format!("{ROOM}/bobby"))).await.unwrap();
    assert_eq!(ids(&page), ["b1"], "room/nick matches the nickname");

    let page = archive.query(waddle(), ROOM, &MamQuery { start: Some(T0 + 10), end: Some(T0 + 30), ..q() }).await;
    assert_eq!(ids(&page.unwrap()), ["b1", "a2", "b2"], "start and end are inclusive");
    let page = archive.query(waddle(), ROOM, &MamQuery { start: Some(T0 + 31), ..q() }).await.unwrap();
    assert_eq!(ids(&page), ["a3"]);
    let page = archive.query(waddle(), ROOM, &MamQuery { end: Some(T0 - 1), ..q() }).await.unwrap();
    assert!(page.rows.is_empty() && page.complete && page.count == 0 && page.first_index.is_none());

    let search = |text: &str| MamQuery { fulltext: Some(text.into()), ..q() };
    assert_eq!(ids(&archive.query(waddle(), ROOM, &search("thy name")).await.unwrap()), ["a2", "a3"]);
    assert_eq!(ids(&archive.query(waddle(), ROOM, &search("ROMEO")).await.unwrap()), ["a1"]);
    assert_eq!(ids(&archive.query(waddle(), ROOM, &search("fath")).await.unwrap()), ["b1"], "word prefixes match");
    assert_eq!(ids(&archive.query(waddle(), ROOM, &search("\"tis")).await.unwrap()), ["a3"], "quotes are literal");
    assert!(archive.query(waddle(), ROOM, &search("juliet")).await.unwrap().rows.is_empty());
    assert!(archive.query(waddle(), ROOM, &search("?!")).await.unwrap().rows.is_empty());
    let both = MamQuery { fulltext: Some("thy".into()), with: Some("bob@example.org".into()), ..q() };
    assert_eq!(ids(&archive.query(waddle(), ROOM, &both).await.unwrap()), ["b1"], "filters combine");

    let wanted = MamQuery { ids: vec!["b2".into(), "a1".into()], ..q() };
    let page = archive.query(waddle(), ROOM, &wanted).await.unwrap();
    assert_eq!((ids(&page), page.count), (vec!["a1".to_owned(), "b2".to_owned()], 2));

    let between = MamQuery { after_id: Some("a1".into()), before_id: Some("a3".into()), ..q() };
    let page = archive.query(waddle(), ROOM, &between).await.unwrap();
    assert_eq!(ids(&page), ["b1", "a2", "b2"]);
    assert_eq!((page.count, page.first_index, page.complete), (3, Some(0), true), "after-id narrows the set");

    // Another archive key in the same file is invisible.
    assert!(archive.query(waddle(), "other@rooms.example.org", &q()).await.unwrap().rows.is_empty());
}

#[tokio::test]
async fn rsm_pages_forward() {
    let dir = temp_dir();
    let archive = open(&dir).await;
    fill_120(&archive).await;
    let mut query = MamQuery { max: 50, ..q() };
    let mut seen = Vec::new();
    let mut shape = Vec::new();
    loop {
        let page = archive.query(waddle(), ROOM, &query).await.unwrap();
        assert_eq!(page.count, 120);
        shape.push((page.rows.len(), page.complete, page.first_index));
        seen.extend(ids(&page));
        if page.complete {
            break;
        }
        query.after = Some(page.rows.last().unwrap().stanza_id.clone());
    }
    assert_eq!(shape, [(50, false, Some(0)), (50, false, Some(50)), (20, true, Some(100))]);
    assert_eq!(seen, range(0, 120));

    // Exactly at the end: a full page that reaches the last row is complete.
    let page = archive.query(waddle(), ROOM, &MamQuery { max: 20, after: Some("m099".into()), ..q() }).await;
    let page = page.unwrap();
    assert_eq!((page.rows.len(), page.complete), (20, true));
    let past = archive.query(waddle(), ROOM, &MamQuery { after: Some("m119".into()), ..q() }).await.unwrap();
    assert!(past.rows.is_empty() && past.complete && past.count == 120);
}

#[tokio::test]
async fn rsm_pages_backward_from_the_last_page() {
    let dir = temp_dir();
    let archive = open(&dir).await;
    fill_120(&archive).await;
    let mut query = MamQuery { max: 50, before: Some(None), ..q() };
    let mut pages = Vec::new();
    loop {
        let page = archive.query(waddle(), ROOM, &query).await.unwrap();
        assert_eq!(page.count, 120);
        pages.push((ids(&page), page.complete, page.first_index));
        if page.complete {
            break;
        }
        query.before = Some(Some(page.rows.first().unwrap().stanza_id.clone()));
    }
    assert_eq!(
        pages,
        [(range(70, 120), false, Some(70)), (range(20, 70), false, Some(20)), (range(0, 20), true, Some(0))]
    );

    // RSM after and before together: the first page of the range.
    let both = MamQuery { max: 3, after: Some("m010".into()), before: Some(Some("m020".into())), ..q() };
    let page = archive.query(waddle(), ROOM, &both).await.unwrap();
    assert_eq!((ids(&page), page.complete), (range(11, 14), false));
    let both = MamQuery { max: 9, ..both };
    assert!(archive.query(waddle(), ROOM, &both).await.unwrap().complete);

    // max = 0: the count only.
    let page = archive.query(waddle(), ROOM, &MamQuery { max: 0, ..q() }).await.unwrap();
    assert!(page.rows.is_empty() && !page.complete && page.count == 120);
}

#[tokio::test]
async fn flip_page_reverses_the_page_only() {
    let dir = temp_dir();
    let archive = open(&dir).await;
    fill_120(&archive).await;
    let flipped = MamQuery { max: 5, before: Some(None), flip: true, ..q() };
    let page = archive.query(waddle(), ROOM, &flipped).await.unwrap();
    assert_eq!(ids(&page), ["m119", "m118", "m117", "m116", "m115"]);
    assert!(page.flipped && !page.complete);
    assert_eq!(page.first_index, Some(115));
    let (first, last) = page.bounds().unwrap();
    assert_eq!((first.stanza_id.as_str(), last.stanza_id.as_str()), ("m115", "m119"));

    let forward = MamQuery { max: 3, after: Some("m010".into()), flip: true, ..q() };
    assert_eq!(ids(&archive.query(waddle(), ROOM, &forward).await.unwrap()), ["m013", "m012", "m011"]);
}

#[tokio::test]
async fn unknown_ids_are_item_not_found() {
    let dir = temp_dir();
    let archive = open(&dir).await;
    archive.append(waddle(), room_row("known", T0, "a@b", "a", "x")).await.unwrap();
    let cases = [
        MamQuery { after: Some("nope".into()), ..q() },
        MamQuery { before: Some(Some("nope".into())), ..q() },
        MamQuery { after_id: Some("nope".into()), ..q() },
        MamQuery { before_id: Some("nope".into()), ..q() },
        MamQuery { ids: vec!["known".into(), "nope".into()], ..q() },
    ];
    for query in cases {
        let err = archive.query(waddle(), ROOM, &query).await.unwrap_err();
        assert_eq!(err, MamError::ItemNotFound("nope".into()), "{query:?}");
        assert_eq!(err.condition(), "item-not-found");
    }
    // An id of another archive in the same file is unknown here too.
    archive
        .append(waddle(), ArchivedRow { archive: "x@rooms".into(), ..room_row("elsewhere", T0, "a@b", "a", "y") })
        .await
        .unwrap();
    let err = archive.query(waddle(), ROOM, &MamQuery { after: Some("elsewhere".into()), ..q() }).await;
    assert!(matches!(err, Err(MamError::ItemNotFound(_))));
    // Empty before is not an id.
    assert_eq!(archive.query(waddle(), ROOM, &MamQuery { before: Some(None), ..q() }).await.unwrap().count, 1);
}

#[tokio::test]
async fn retraction_hides_the_row() {
    let dir = temp_dir();
    let archive = open(&dir).await;
    for (i, body) in ["one apple", "two pears", "three plums"].iter().enumerate() {
        let stamp = T0 + i64::try_from(i).unwrap();
        archive.append(waddle(), room_row(&format!("r{i}"), stamp, "a@b", "a", body)).await.unwrap();
    }
    assert!(archive.retract(waddle(), ROOM, "r1").await.unwrap());
    assert!(archive.retract(waddle(), ROOM, "r1").await.unwrap(), "retracting twice is harmless");
    assert!(!archive.retract(waddle(), ROOM, "missing").await.unwrap());
    assert!(!archive.retract(waddle(), "other@rooms", "r0").await.unwrap(), "ids are per archive");

    let page = archive.query(waddle(), ROOM, &q()).await.unwrap();
    assert_eq!((ids(&page), page.count), (vec!["r0".to_owned(), "r2".to_owned()], 2));
    let search = MamQuery { fulltext: Some("pears".into()), ..q() };
    assert!(archive.query(waddle(), ROOM, &search).await.unwrap().rows.is_empty(), "gone from the index");
    assert_eq!(archive.recent(waddle(), ROOM, 10).await.unwrap().len(), 2);
    // A retracted id still works as a paging cursor.
    let page = archive.query(waddle(), ROOM, &MamQuery { after: Some("r1".into()), ..q() }).await.unwrap();
    assert_eq!(ids(&page), ["r2"]);
    let page = archive.query(waddle(), ROOM, &MamQuery { ids: vec!["r1".into()], ..q() }).await.unwrap();
    assert!(page.rows.is_empty());
}

#[tokio::test]
async fn chat_is_stored_once_and_visible_to_both() {
    let dir = temp_dir();
    let archive = open(&dir).await;
    let payload = |body: &str| format!("<message type='chat'><body>{body}</body></message>");
    archive.append_chat("romeo@m.lit", "juliet@c.lit", "c1", T0, payload("hello"), Some("hello".into())).await.unwrap();
    archive
        .append_chat("juliet@c.lit", "romeo@m.lit", "c2", T0 + 1, payload("hi back"), Some("hi back".into()))
        .await
        .unwrap();
    archive.append_chat("romeo@m.lit", "romeo@m.lit", "c3", T0 + 2, payload("note"), None).await.unwrap();
    archive.append_chat("nurse@c.lit", "juliet@c.lit", "c4", T0 + 3, payload("psst"), None).await.unwrap();
    assert_eq!(archive.stored_messages(ArchiveLocation::Users).await.unwrap(), 4, "one copy per message");

    let romeo = archive.query(ArchiveLocation::Users, "romeo@m.lit", &q()).await.unwrap();
    assert_eq!(ids(&romeo), ["c1", "c2", "c3"]);
    let withs: Vec<&str> = romeo.rows.iter().map(|r| r.with_jid.as_str()).collect();
    assert_eq!(withs, ["juliet@c.lit", "juliet@c.lit", "romeo@m.lit"]);
    let juliet = archive.query(ArchiveLocation::Users, "juliet@c.lit", &q()).await.unwrap();
    assert_eq!(ids(&juliet), ["c1", "c2", "c4"]);
    assert_eq!(juliet.rows[0].payload, romeo.rows[0].payload);

    let with_romeo = MamQuery { with: Some("romeo@m.lit/orchard".into()), ..q() };
    assert_eq!(ids(&archive.query(ArchiveLocation::Users, "juliet@c.lit", &with_romeo).await.unwrap()), ["c1", "c2"]);
    let to_self = MamQuery { with: Some("romeo@m.lit".into()), ..q() };
    assert_eq!(ids(&archive.query(ArchiveLocation::Users, "romeo@m.lit", &to_self).await.unwrap()), ["c3"]);

    // Duplicate ids are refused for either party.
    let dup = archive.append_chat("tybalt@c.lit", "juliet@c.lit", "c1", T0 + 4, payload("x"), None).await;
    assert_eq!(dup, Err(MamError::Duplicate("c1".into())));
    assert_eq!(archive.stored_messages(ArchiveLocation::Users).await.unwrap(), 4);

    // A retraction tombstones the shared copy in both archives.
    assert!(archive.retract(ArchiveLocation::Users, "romeo@m.lit", "c2").await.unwrap());
    assert_eq!(ids(&archive.query(ArchiveLocation::Users, "juliet@c.lit", &q()).await.unwrap()), ["c1", "c4"]);

    // Deleting one party's archive keeps the copies the other still indexes.
    archive.delete_archive(ArchiveLocation::Users, "romeo@m.lit").await.unwrap();
    assert!(archive.query(ArchiveLocation::Users, "romeo@m.lit", &q()).await.unwrap().rows.is_empty());
    assert_eq!(ids(&archive.query(ArchiveLocation::Users, "juliet@c.lit", &q()).await.unwrap()), ["c1", "c4"]);
    assert_eq!(archive.stored_messages(ArchiveLocation::Users).await.unwrap(), 3, "c3 was romeo's alone");
    archive.delete_archive(ArchiveLocation::Users, "juliet@c.lit").await.unwrap();
    assert_eq!(archive.stored_messages(ArchiveLocation::Users).await.unwrap(), 1, "c4 is still the nurse's");
    assert_eq!(ids(&archive.query(ArchiveLocation::Users, "nurse@c.lit", &q()).await.unwrap()), ["c4"]);
    archive.delete_archive(ArchiveLocation::Users, "nurse@c.lit").await.unwrap();
    assert_eq!(archive.stored_messages(ArchiveLocation::Users).await.unwrap(), 0);
}

#[tokio::test]
async fn one_file_per_waddle() {
    let dir = temp_dir();
    let archive = open(&dir).await;
    let a = ArchiveLocation::Waddle("alpha".into());
    let b = ArchiveLocation::Waddle("beta-2".into());
    archive.append(a.clone(), room_row("x", T0, "u@h", "u", "in alpha")).await.unwrap();
    archive.append(b.clone(), room_row("x", T0, "u@h", "u", "in beta")).await.unwrap();
    archive.append(ArchiveLocation::AdHocRooms, room_row("x", T0, "u@h", "u", "ad hoc")).await.unwrap();
    archive.append_chat("a@h", "b@h", "x", T0, "<message/>".into(), None).await.unwrap();
    for file in ["waddle-alpha.db", "waddle-beta-2.db", "rooms.db", "users.db"] {
        assert!(dir.join(file).is_file(), "{file}");
    }
    // The same room JID and id in two waddles are two archives.
    let body = |loc: ArchiveLocation| {
        let archive = archive.clone();
        async move { archive.query(loc, ROOM, &q()).await.unwrap().rows[0].body.clone().unwrap() }
    };
    assert_eq!(body(a).await, "in alpha");
    assert_eq!(body(b).await, "in beta");
    assert_eq!(body(ArchiveLocation::AdHocRooms).await, "ad hoc");

    for bad in ["", "../etc", ".hidden", "a/b", "sp ace", &"x".repeat(129)] {
        let loc = ArchiveLocation::Waddle(bad.into());
        assert!(matches!(loc.file_name(), Err(MamError::Invalid(_))), "{bad:?}");
        assert!(matches!(
            archive.append(loc.clone(), room_row("y", T0, "u@h", "u", "z")).await,
            Err(MamError::Invalid(_))
        ));
        assert!(matches!(archive.query(loc, ROOM, &q()).await, Err(MamError::Invalid(_))));
    }
    let empty_id = archive.append(ArchiveLocation::AdHocRooms, room_row("", T0, "u@h", "u", "z")).await;
    assert!(matches!(empty_id, Err(MamError::Invalid(_))));
}

#[tokio::test]
async fn durable_across_reopen() {
    let dir = temp_dir();
    {
        let archive = open(&dir).await;
        // Fire-and-forget appends, then a flush.
        for i in 0..10 {
            drop(archive.append(waddle(), room_row(&format!("d{i}"), T0 + i, "a@b", "a", "persisted")));
        }
        drop(archive.append_chat("a@h", "b@h", "chat1", T0, "<message/>".into(), Some("persisted".into())));
        archive.flush().await.unwrap();
    }
    let archive = open(&dir).await;
    let page = archive.query(waddle(), ROOM, &q()).await.unwrap();
    assert_eq!(page.count, 10);
    assert_eq!(ids(&page), (0..10).map(|i| format!("d{i}")).collect::<Vec<_>>());
    assert_eq!(archive.query(ArchiveLocation::Users, "b@h", &q()).await.unwrap().count, 1);
    // Ids stay unique across restarts.
    let dup = archive.append(waddle(), room_row("d3", T0, "a@b", "a", "again")).await;
    assert_eq!(dup, Err(MamError::Duplicate("d3".into())));
}

#[tokio::test]
async fn a_thousand_appends_are_batched() {
    let dir = temp_dir();
    let archive = open(&dir).await;
    let before = archive.write_stats();
    let started = std::time::Instant::now();
    let writes: Vec<_> = (0..1000)
        .map(|i| archive.append(waddle(), room_row(&format!("b{i:04}"), T0 + i, "a@b", "a", "bulk")))
        .collect();
    for w in writes {
        w.await.unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    let stats = archive.write_stats();
    assert_eq!(stats.rows - before.rows, 1000);
    let batches = stats.batches - before.batches;
    assert!((1..100).contains(&batches), "1000 rows in {batches} transactions");
    let page = archive.query(waddle(), ROOM, &MamQuery { max: 250, before: Some(None), ..q() }).await.unwrap();
    assert_eq!(page.count, 1000);
    assert_eq!(page.rows.last().unwrap().stanza_id, "b0999");

    // Duplicates inside a batch fail alone.
    let writes: Vec<_> = ["n1", "b0005", "n2"]
        .into_iter()
        .map(|id| archive.append(waddle(), room_row(id, T0 + 5000, "a@b", "a", "x")))
        .collect();
    let mut outcomes = Vec::new();
    for w in writes {
        outcomes.push(w.await);
    }
    assert_eq!(outcomes, [Ok(()), Err(MamError::Duplicate("b0005".into())), Ok(())]);
    assert_eq!(archive.query(waddle(), ROOM, &q()).await.unwrap().count, 1002);
}

#[tokio::test]
async fn ordering_is_stamp_then_insertion() {
    let dir = temp_dir();
    let archive = open(&dir).await;
    for (id, stamp) in [("late", T0 + 100), ("tie1", T0 + 50), ("early", T0), ("tie2", T0 + 50)] {
        archive.append(waddle(), room_row(id, stamp, "a@b", "a", id)).await.unwrap();
    }
    let page = archive.query(waddle(), ROOM, &q()).await.unwrap();
    assert_eq!(ids(&page), ["early", "tie1", "tie2", "late"]);
    let page = archive.query(waddle(), ROOM, &MamQuery { after: Some("tie1".into()), ..q() }).await.unwrap();
    assert_eq!(ids(&page), ["tie2", "late"]);
}

#[tokio::test]
async fn recent_returns_the_newest_in_order() {
    let dir = temp_dir();
    let archive = open(&dir).await;
    assert!(archive.recent(ArchiveLocation::AdHocRooms, ROOM, 5).await.unwrap().is_empty());
    for i in 0..8 {
        archive.append(ArchiveLocation::AdHocRooms, room_row(&format!("h{i}"), T0 + i, "a@b", "a", "x")).await.unwrap();
    }
    archive.retract(ArchiveLocation::AdHocRooms, ROOM, "h6").await.unwrap();
    let recent = archive.recent(ArchiveLocation::AdHocRooms, ROOM, 3).await.unwrap();
    let got: Vec<&str> = recent.iter().map(|r| r.stanza_id.as_str()).collect();
    assert_eq!(got, ["h4", "h5", "h7"]);
    assert_eq!(recent[0].from_nick.as_deref(), Some("a"));
    assert!(!recent[0].retracted);
    assert_eq!(archive.recent(ArchiveLocation::AdHocRooms, ROOM, 100).await.unwrap().len(), 7);
}

#[tokio::test]
async fn metadata_names_both_ends() {
    let dir = temp_dir();
    let archive = open(&dir).await;
    assert_eq!(archive.metadata(waddle(), ROOM).await.unwrap(), ArchiveMetadata::default());
    for i in 0..4 {
        archive.append(waddle(), room_row(&format!("e{i}"), T0 + i, "a@b", "a", "x")).await.unwrap();
    }
    archive.retract(waddle(), ROOM, "e0").await.unwrap();
    let meta = archive.metadata(waddle(), ROOM).await.unwrap();
    assert_eq!(meta.start, Some(ArchiveEdge { stanza_id: "e1".into(), stamp_micros: T0 + 1 }));
    assert_eq!(meta.end, Some(ArchiveEdge { stanza_id: "e3".into(), stamp_micros: T0 + 3 }));
}

#[tokio::test]
async fn delete_room_archive() {
    let dir = temp_dir();
    let archive = open(&dir).await;
    archive.append(waddle(), room_row("k1", T0, "a@b", "a", "keep")).await.unwrap();
    archive
        .append(waddle(), ArchivedRow { archive: "gone@rooms".into(), ..room_row("g1", T0, "a@b", "a", "bye") })
        .await
        .unwrap();
    archive.delete_archive(waddle(), "gone@rooms").await.unwrap();
    assert!(archive.query(waddle(), "gone@rooms", &q()).await.unwrap().rows.is_empty());
    assert_eq!(archive.query(waddle(), ROOM, &q()).await.unwrap().count, 1);
    assert_eq!(archive.stored_messages(waddle()).await.unwrap(), 1);
    let search = MamQuery { fulltext: Some("bye".into()), ..q() };
    assert!(archive.query(waddle(), "gone@rooms", &search).await.unwrap().rows.is_empty());
}

#[tokio::test]
async fn full_queue_waits_and_never_drops() {
    let (tx, mut rx) = mpsc::channel(1);
    let (first, _a) = oneshot::channel();
    drop(writer::enqueue(&tx, WriteCmd::Flush { done: first }));
    // The queue is full: the second command waits for room...
    let (second, mut second_ack) = oneshot::channel();
    let mut waiting = Box::pin(writer::enqueue(&tx, WriteCmd::Flush { done: second }));
    assert!(tokio::time::timeout(Duration::from_millis(50), &mut waiting).await.is_err());
    // ...and is not lost when its future is dropped before there is room.
    drop(waiting);
    assert!(matches!(rx.recv().await, Some(WriteCmd::Flush { .. })));
    match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
        Ok(Some(WriteCmd::Flush { done })) => done.send(Ok(())).unwrap(),
        _ => panic!("the waiting command was dropped"),
    }
    assert_eq!((&mut second_ack).await, Ok(Ok(())));
    drop(rx);
    let (third, _c) = oneshot::channel();
    assert_eq!(writer::enqueue(&tx, WriteCmd::Flush { done: third }).await, Err(MamError::Closed));
}

/// Every routed message's future holds one of these across its await: the queueing
/// future must stay a few words, with the full-queue state behind a pointer (inline, it
/// made each session's routing future 2.4 KiB larger).
#[tokio::test]
async fn the_hot_path_queueing_futures_are_small() {
    let dir = temp_dir();
    let archive = open(&dir).await;
    let chat = archive.append_chat_queued("a@localhost", "b@localhost", "id-1", 1, "<message/>".into(), None);
    let room = archive.append_queued(ArchiveLocation::AdHocRooms, room_row("id-2", 2, "a@localhost", "a", "hi"));
    assert!(std::mem::size_of_val(&chat) <= 64, "append_chat_queued: {} bytes", std::mem::size_of_val(&chat));
    assert!(std::mem::size_of_val(&room) <= 64, "append_queued: {} bytes", std::mem::size_of_val(&room));
    chat.await.unwrap();
    room.await.unwrap();
    archive.flush().await.unwrap();
    assert_eq!(archive.stored_messages(ArchiveLocation::Users).await.unwrap(), 1);
}

#[tokio::test]
async fn schema_version_is_recorded() {
    let dir = temp_dir();
    let archive = open(&dir).await;
    archive.flush().await.unwrap();
    archive.append(ArchiveLocation::AdHocRooms, room_row("v", T0, "a@b", "a", "x")).await.unwrap();
    let version =
        archive.reader.call(ROOMS_FILE.into(), |conn| async move { Sql::current_version(&conn).await }).await.unwrap();
    assert_eq!(version, SCHEMA_VERSION);
}

#[test]
fn shared_db_helper_errors_map_into_mam_errors() {
    use waddle_storage::db;
    assert_eq!(
        MamError::from(db::Error::SchemaTooNew { found: 9, supported: 1 }),
        MamError::SchemaTooNew { found: 9, supported: 1 }
    );
    assert_eq!(
        MamError::from(db::Error::NoRow { sql: "SELECT 1".into() }),
        MamError::Database("no row returned by: SELECT 1".into())
    );
}

#[tokio::test]
async fn newer_archive_schema_is_refused() {
    let dir = temp_dir();
    {
        let archive = open(&dir).await;
        archive.append(ArchiveLocation::AdHocRooms, room_row("v", T0, "a@b", "a", "x")).await.unwrap();
    }
    let conn = raw_connection(&dir, ROOMS_FILE).await;
    conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (999, 0)", ()).await.unwrap();
    drop(conn);
    let archive = open(&dir).await;
    let err = archive.append(ArchiveLocation::AdHocRooms, room_row("w", T0, "a@b", "a", "y")).await;
    assert_eq!(err, Err(MamError::SchemaTooNew { found: 999, supported: SCHEMA_VERSION }));
}

#[tokio::test]
async fn bodies_are_indexed_once_per_message() {
    let dir = temp_dir();
    let archive = open(&dir).await;
    let writes: Vec<_> = (0..50)
        .map(|i| archive.append(waddle(), room_row(&format!("f{i:02}"), T0 + i, "a@b", "a", "unique banana")))
        .collect();
    for w in writes {
        w.await.unwrap();
    }
    let search = MamQuery { fulltext: Some("banana".into()), ..q() };
    let page = archive.query(waddle(), ROOM, &search).await.unwrap();
    assert_eq!(page.count, 50);
    drop(archive);
    // The index holds each body exactly once (no trigger indexes it a second time).
    let conn = raw_connection(&dir, &waddle().file_name().unwrap()).await;
    let mut rows = conn.query("SELECT count(*) FROM messages_fts WHERE messages_fts MATCH 'banana'", ()).await.unwrap();
    let n: i64 = rows.next().await.unwrap().unwrap().get(0).unwrap();
    assert_eq!(n, 50);
    let mut rows = conn
        .query("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name = 'messages_fts_insert'", ())
        .await
        .unwrap();
    let triggers: i64 = rows.next().await.unwrap().unwrap().get(0).unwrap();
    assert_eq!(triggers, 0);
}

/// A file written by schema version 2 (rowid `entries` with the stanza id and nickname
/// on each entry) keeps every message, cursor, filter and retraction after the upgrade.
#[tokio::test]
async fn version_2_archives_are_carried_over() {
    let dir = temp_dir();
    for file in [USERS_FILE, ROOMS_FILE] {
        let conn = raw_connection(&dir, file).await;
        Sql::migrate(&conn, &schema::MIGRATIONS[..2], |_| {}).await.unwrap();
        // As version 2's writer stored them: messages, then one entry per archive, then
        // the bodies' full-text rows.
        let stored = [
            // (message id, stamp, body, [(seq, archive, stanza id, with, nick, retracted)])
            (
                1,
                T0,
                "hello juliet",
                vec![
                    (1, "romeo@m.lit", "c1", "juliet@c.lit", None, 0),
                    (2, "juliet@c.lit", "c1", "romeo@m.lit", None, 0),
                ],
            ),
            (
                2,
                T0 + 5,
                "second",
                vec![
                    (3, "juliet@c.lit", "c2", "romeo@m.lit", None, 1),
                    (4, "romeo@m.lit", "c2", "juliet@c.lit", None, 1),
                ],
            ),
            (
                3,
                T0 + 5,
                "same stamp",
                vec![
                    (5, "romeo@m.lit", "c3", "juliet@c.lit", None, 0),
                    (6, "juliet@c.lit", "c3", "romeo@m.lit", None, 0),
                ],
            ),
            (4, T0 + 9, "in the room", vec![(7, ROOM, "r1", "alice@example.org", Some("alice"), 0)]),
        ];
        for (id, stamp, body, entries) in stored {
            conn.execute(
                "INSERT INTO messages (id, stamp, payload, body) VALUES (?1, ?2, ?3, ?4)",
                (id, stamp, format!("<message><body>{body}</body></message>"), body),
            )
            .await
            .unwrap();
            conn.execute("INSERT INTO messages_fts (rowid, body) VALUES (?1, ?2)", (id, body)).await.unwrap();
            for (seq, archive, stanza_id, with, nick, retracted) in entries {
                conn.execute(
                    "INSERT INTO entries (seq, archive, stanza_id, with_jid, from_nick, stamp, message_id, retracted) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    (seq, archive, stanza_id, with, nick, stamp, id, retracted),
                )
                .await
                .unwrap();
            }
        }
    }
    let archive = open(&dir).await;
    let users = ArchiveLocation::Users;
    let romeo = archive.query(users.clone(), "romeo@m.lit", &q()).await.unwrap();
    assert_eq!(ids(&romeo), ["c1", "c3"], "the retracted c2 stays hidden");
    assert_eq!(romeo.rows[0].with_jid, "juliet@c.lit");
    let after_c1 = MamQuery { after: Some("c1".into()), ..q() };
    assert_eq!(ids(&archive.query(users.clone(), "juliet@c.lit", &after_c1).await.unwrap()), ["c3"]);
    let search = MamQuery { fulltext: Some("stamp".into()), ..q() };
    assert_eq!(ids(&archive.query(users.clone(), "juliet@c.lit", &search).await.unwrap()), ["c3"]);
    let dup = archive.append_chat("romeo@m.lit", "juliet@c.lit", "c1", T0 + 20, "<message/>".into(), None).await;
    assert_eq!(dup, Err(MamError::Duplicate("c1".into())));
    // New messages sort after the carried-over ones, ties by insertion order.
    archive.append_chat("juliet@c.lit", "romeo@m.lit", "c4", T0 + 5, "<message/>".into(), None).await.unwrap();
    assert_eq!(ids(&archive.query(users.clone(), "romeo@m.lit", &q()).await.unwrap()), ["c1", "c3", "c4"]);
    assert!(archive.retract(users.clone(), "juliet@c.lit", "c1").await.unwrap());
    assert_eq!(ids(&archive.query(users, "romeo@m.lit", &q()).await.unwrap()), ["c3", "c4"]);

    let rooms = ArchiveLocation::AdHocRooms;
    let by_nick = MamQuery { with: Some(format!("{ROOM}/alice")), ..q() };
    let page = archive.query(rooms.clone(), ROOM, &by_nick).await.unwrap();
    assert_eq!(ids(&page), ["r1"]);
    assert_eq!(page.rows[0].from_nick.as_deref(), Some("alice"));
    assert_eq!(archive.metadata(rooms, ROOM).await.unwrap().end.map(|e| e.stanza_id).as_deref(), Some("r1"));
}

/// A raw connection to the users' archive file once `from` has sent `to` one message
/// with stanza id `id` through the archive (which is closed again).
async fn users_file_holding_one_chat(dir: &TempDir, from: &str, to: &str, id: &str) -> libsql::Connection {
    let archive = open(dir).await;
    archive.append_chat(from, to, id, T0, "<message/>".into(), None).await.unwrap();
    drop(archive);
    raw_connection(dir, USERS_FILE).await
}

/// Every insert looks its stanza id up, and retractions and cursors look an archive's
/// entry up by stanza id: the plans must go through the stanza id index and the
/// entries' primary key, never scan an archive (that made inserts cost as much as the
/// archive was long).
#[tokio::test]
async fn stanza_id_lookups_use_the_indexes() {
    let dir = temp_dir();
    let conn = users_file_holding_one_chat(&dir, "a@b", "c@d", "x1").await;
    let plan_of = |sql: String, params: Vec<&'static str>| {
        let conn = conn.clone();
        async move {
            let mut rows = conn.query(&format!("EXPLAIN QUERY PLAN {sql}"), params).await.unwrap();
            let mut plan = Vec::new();
            while let Some(row) = rows.next().await.unwrap() {
                plan.push(row.get::<String>(3).unwrap());
            }
            plan
        }
    };
    // The insert's duplicate check: candidate messages by stanza id, many per statement.
    let plan = plan_of(ops::messages_by_stanza_ids(3), vec!["x1", "x2", "x3"]).await;
    assert!(plan.iter().any(|step| step.contains("USING INDEX messages_by_stanza_id (stanza_id=?)")), "{plan:?}");
    assert!(!plan.iter().any(|step| step.starts_with("SCAN")), "{plan:?}");
    // One archive's entry (retraction, cursors).
    let plan = plan_of(format!("SELECT 1 {}", ops::ENTRY_BY_STANZA_ID), vec!["a@b", "x1"]).await;
    assert_eq!(plan.len(), 2, "{plan:?}");
    assert!(plan[0].contains("USING INDEX messages_by_stanza_id"), "{plan:?}");
    assert!(plan[1].contains("USING PRIMARY KEY (archive=? AND stamp=? AND message_id=?)"), "{plan:?}");
}

fn chat(stanza_id: &str, stamp: i64, from: &str, to: &str) -> ops::NewMessage {
    chat_message(
        from,
        to,
        stanza_id,
        stamp,
        format!("<message><body>{stanza_id}</body></message>"),
        Some(format!("word{stamp}")),
    )
}

/// One transaction's messages go in through multi-row statements: more rows than one
/// statement takes, with a remainder, keep their order and ids, every body is indexed,
/// and each refused message (duplicate in the file or earlier in the batch, malformed)
/// is refused alone.
#[tokio::test]
async fn a_batch_spanning_several_statements_keeps_order_and_refuses_alone() {
    let dir = temp_dir();
    let conn = users_file_holding_one_chat(&dir, "a@x", "b@x", "stored").await;
    let mut batch: Vec<ops::NewMessage> =
        (0..150).map(|i| chat(&format!("s{i:03}"), T0 + 10 + i, "a@x", &format!("p{}@x", i % 7))).collect();
    batch.insert(40, chat("stored", T0 + 1, "b@x", "c@x"));
    batch.insert(70, chat("s005", T0 + 2, "p5@x", "q@x"));
    batch.insert(100, chat("stored", T0 + 3, "c@x", "d@x"));
    let mut malformed = chat("bad", T0 + 4, "a@x", "e@x");
    malformed.entries.clear();
    batch.insert(120, malformed);
    let refs: Vec<&ops::NewMessage> = batch.iter().collect();
    let outcomes = Sql::in_tx(&conn, waddle_storage::db::Tx::Write, ops::insert_batch(&conn, &refs)).await.unwrap();

    let refused: Vec<(usize, &Result<(), MamError>)> =
        outcomes.iter().enumerate().filter(|(_, o)| o.is_err()).collect();
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert_eq!(refused[0], (40, &Err(MamError::Duplicate("stored".into()))), "b@x already holds it");
    assert_eq!(refused[1], (70, &Err(MamError::Duplicate("s005".into()))), "p5@x got s005 earlier in the batch");
    assert!(matches!(refused[2], (120, Err(MamError::Invalid(_)))), "{:?}", refused[2]);
    let accepted: Vec<&str> =
        batch.iter().zip(&outcomes).filter(|(_, o)| o.is_ok()).map(|(m, _)| m.stanza_id.as_str()).collect();
    assert_eq!(accepted.len(), 151, "150 new ones and the stored id in two other archives");

    let mut rows = conn.query("SELECT stanza_id FROM messages WHERE id > 1 ORDER BY id", ()).await.unwrap();
    let mut in_id_order = Vec::new();
    while let Some(row) = rows.next().await.unwrap() {
        in_id_order.push(row.get::<String>(0).unwrap());
    }
    assert_eq!(in_id_order, accepted, "ids follow the batch order");
    let mut rows = conn.query("SELECT count(*) FROM entries", ()).await.unwrap();
    assert_eq!(rows.next().await.unwrap().unwrap().get::<i64>(0).unwrap(), 2 + 151 * 2);
    drop(rows);
    let mut rows = conn.query("SELECT count(*) FROM messages_fts WHERE messages_fts MATCH 'word*'", ()).await.unwrap();
    assert_eq!(rows.next().await.unwrap().unwrap().get::<i64>(0).unwrap(), 151, "every accepted body is indexed");
    drop(rows);
    drop(conn);

    let archive = open(&dir).await;
    let a = archive.query(ArchiveLocation::Users, "a@x", &MamQuery { max: 500, ..q() }).await.unwrap();
    assert_eq!(a.count, 151, "a@x: its stored message and its 150 new ones");
    assert_eq!(a.rows[1].stanza_id, "s000");
    assert_eq!(a.rows[150].stanza_id, "s149");
    let c = archive.query(ArchiveLocation::Users, "c@x", &q()).await.unwrap();
    assert_eq!(ids(&c), ["stored"], "the stored id, new to c@x and d@x");
}

/// A query right after the hot path queued a message (without waiting for its commit)
/// returns it: what a client was delivered, with its stanza id, is in the archive.
#[tokio::test]
async fn a_query_reads_what_was_only_queued_before_it() {
    let dir = temp_dir();
    let archive = open(&dir).await;
    for round in 0..20 {
        let id = format!("q{round:02}");
        let stamp = T0 + round;
        let payload = format!("<message type='chat'><body>{id}</body></message>");
        archive.append_chat_queued("romeo@m.lit", "juliet@c.lit", &id, stamp, payload, None).await.unwrap();
        let page = archive.query(ArchiveLocation::Users, "juliet@c.lit", &q()).await.unwrap();
        assert_eq!(page.rows.last().map(|r| r.stanza_id.as_str()), Some(id.as_str()), "round {round}");
        archive.append_queued(waddle(), room_row(&format!("r{round:02}"), stamp, "a@x", "a", "hi")).await.unwrap();
        let meta = archive.metadata(waddle(), ROOM).await.unwrap();
        assert_eq!(meta.end.map(|e| e.stanza_id), Some(format!("r{round:02}")), "round {round}");
    }
}

/// The copy a cluster node keeps for the party it owns is indexed in that archive only.
#[tokio::test]
async fn a_one_sided_chat_copy_is_in_its_owners_archive_only() {
    let dir = temp_dir();
    let archive = open(&dir).await;
    let payload = "<message type='chat'><body>hello</body></message>".to_owned();
    archive
        .append_chat_side_queued("romeo@m.lit", "juliet@c.lit", "s1", T0, payload, Some("hello".into()))
        .await
        .unwrap();
    let romeo = archive.query(ArchiveLocation::Users, "romeo@m.lit", &q()).await.unwrap();
    assert_eq!(ids(&romeo), ["s1"]);
    assert_eq!(romeo.rows[0].with_jid, "juliet@c.lit");
    assert!(archive.query(ArchiveLocation::Users, "juliet@c.lit", &q()).await.unwrap().rows.is_empty());
}
