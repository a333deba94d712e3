//! Two nodes in one process, linked in memory: the routing seam forwards a stanza to the
//! node that owns its destination's partition, and that node reaches sessions wherever
//! they run. No sockets: sessions are mailboxes the test reads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use waddle::config::Config;
use waddle::ctx::Ctx;
use waddle::remote::{self, AccountAction, ClusterLink, LinkError, NodeCall, NodeOp, NodeReply};
use waddle::router::Origin;
use waddle_api::Accounts;
use waddle_cluster::{partition_of, SessionMailbox, SessionMsg, SessionRef, PARTITIONS};
use waddle_jid::FullJid;
use waddle_storage::TokenKind;
use waddle_xml::Element;

const DOMAIN: &str = "cluster.test";

/// One ordered queue per receiving node, like the real transport (order per pair).
#[derive(Default)]
struct Network {
    queues: Mutex<HashMap<u64, mpsc::UnboundedSender<(u64, NodeOp)>>>,
    nodes: Mutex<HashMap<u64, Weak<Ctx>>>,
    sent: Mutex<usize>,
}

struct Link {
    me: u64,
    net: Arc<Network>,
}

impl ClusterLink for Link {
    fn send(&self, node: u64, op: NodeOp) -> bool {
        // What crosses is the encoding, as on a real wire.
        let op = remote::wire::decode(&remote::wire::encode(&op)).unwrap();
        *self.net.sent.lock().unwrap() += 1;
        let queues = self.net.queues.lock().unwrap();
        queues.get(&node).is_some_and(|q| q.send((self.me, op)).is_ok())
    }

    fn call(&self, node: u64, call: NodeCall) -> BoxFuture<'static, Result<NodeReply, LinkError>> {
        let target = self.net.nodes.lock().unwrap().get(&node).and_then(Weak::upgrade);
        let call: NodeCall = serde_json::from_slice(&serde_json::to_vec(&call).unwrap()).unwrap();
        Box::pin(async move {
            let ctx = target.ok_or(LinkError::Unreachable(node))?;
            Ok(remote::answer(&ctx, call).await)
        })
    }
}

fn attach(net: &Arc<Network>, ctx: &Arc<Ctx>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, NodeOp)>();
    net.queues.lock().unwrap().insert(ctx.cluster.me(), tx);
    net.nodes.lock().unwrap().insert(ctx.cluster.me(), Arc::downgrade(ctx));
    ctx.set_link(Arc::new(Link { me: ctx.cluster.me(), net: Arc::clone(net) }));
    let weak: Weak<Ctx> = Arc::downgrade(ctx);
    tokio::spawn(async move {
        while let Some((from, op)) = rx.recv().await {
            let Some(ctx) = weak.upgrade() else { break };
            remote::handle(ctx, from, op).await;
        }
    });
}

async fn node(id: u64, dir: &std::path::Path) -> Arc<Ctx> {
    let mut config = Config::default();
    config.server.domain = DOMAIN.into();
    config.server.node_id = id;
    config.server.data_dir = dir.join(format!("node{id}"));
    waddle::open_node(config).await.unwrap()
}

/// Even partitions on node 1, odd ones on node 2, on both nodes.
fn split_ring(nodes: &[&Arc<Ctx>]) {
    let owners: Vec<u64> = (0..PARTITIONS).map(|p| if p.is_multiple_of(2) { 1 } else { 2 }).collect();
    for n in nodes {
        assert!(n.cluster.set_ring(2, owners.clone()));
    }
}

/// A username whose bare JID the given node owns under [`split_ring`].
fn user_owned_by(owner: u64, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|u| {
            let p = partition_of(&format!("{u}@{DOMAIN}"));
            p.is_multiple_of(2) == (owner == 1)
        })
        .unwrap()
}

async fn create_account(ctx: &Ctx, username: &str) {
    let scram = |hash: &str| waddle_storage::StoredScram {
        hash: hash.into(),
        salt: vec![1; 16],
        iterations: 4096,
        stored_key: vec![2; 20],
        server_key: vec![3; 20],
    };
    ctx.store
        .create_account(waddle_storage::AccountRecord {
            username: username.into(),
            scram_sha1: scram("SHA-1"),
            scram_sha256: scram("SHA-256"),
            created_at: 0,
        })
        .await
        .unwrap();
}

/// A session of `jid` running on `ctx`, bound at its user's owner.
async fn session(ctx: &Arc<Ctx>, jid: &str) -> (Origin, SessionMailbox) {
    let (handle, mailbox) = SessionRef::channel(64, usize::MAX);
    let conn_id = ctx.cluster.connect(handle).conn_id;
    let origin = Origin::session(FullJid::new(jid).unwrap(), conn_id);
    assert!(ctx.account_action(&origin, AccountAction::Bind).await);
    (origin, mailbox)
}

async fn next_stanza(mailbox: &mut SessionMailbox) -> Element {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), mailbox.recv())
            .await
            .expect("nothing delivered within 5 s")
            .expect("mailbox closed");
        match msg {
            SessionMsg::Deliver(el) => return (*el).clone(),
            SessionMsg::DeliverUnaddressed(shared) => {
                let mut bytes = Vec::new();
                shared.write_to("x@y/z", &mut bytes);
                return Element::from_bytes(&bytes, "jabber:client").unwrap();
            }
            SessionMsg::Tick => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn chat(from: &str, to: &str, body: &str) -> Element {
    Element::new("message", "jabber:client")
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("type", "chat")
        .with_attr("id", body)
        .with_child(Element::new("body", "jabber:client").with_text(body))
}

async fn until(mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached within 5 s");
}

/// Nodes 1 and 2 in `dir`, linked, with the ring of [`split_ring`].
async fn linked_pair(dir: &std::path::Path) -> (Arc<Ctx>, Arc<Ctx>, Arc<Network>) {
    let (n1, n2) = (node(1, dir).await, node(2, dir).await);
    let net = Arc::new(Network::default());
    attach(&net, &n1);
    attach(&net, &n2);
    split_ring(&[&n1, &n2]);
    (n1, n2, net)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stanzas_cross_nodes_through_the_owner_of_the_destination() {
    let dir = std::env::temp_dir().join(format!("waddle-two-nodes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (n1, n2, net) = linked_pair(&dir).await;

    // alice's account lives on node 2, her session runs on node 1; bob's the reverse.
    let alice = user_owned_by(2, "alice");
    let bob = user_owned_by(1, "bob");
    create_account(&n2, &alice).await;
    create_account(&n1, &bob).await;
    let alice_full = format!("{alice}@{DOMAIN}/laptop");
    let bob_full = format!("{bob}@{DOMAIN}/phone");
    let (alice_origin, mut alice_box) = session(&n1, &alice_full).await;
    let (bob_origin, mut bob_box) = session(&n2, &bob_full).await;
    until(|| n2.cluster.registered_sessions() == 1 && n1.cluster.registered_sessions() == 1).await;
    assert_eq!(n1.cluster.local_sessions(), 1);

    // A message to a full JID: node 2 (bob's session) → node 2 owns alice → node 1.
    n2.route(&bob_origin, chat(&bob_full, &alice_full, "m1")).await;
    let got = next_stanza(&mut alice_box).await;
    assert_eq!(got.attr("id"), Some("m1"));
    assert_eq!(got.attr("from"), Some(bob_full.as_str()));

    // Reverse: node 1 forwards to bob's owner (node 1 is it) and on to node 2.
    n1.route(&alice_origin, chat(&alice_full, &bob_full, "m2")).await;
    assert_eq!(next_stanza(&mut bob_box).await.attr("id"), Some("m2"));

    // A message to a bare JID reaches an available session: alice's presence is
    // recorded at her owner, node 2, although her session is on node 1.
    let presence = Element::new("presence", "jabber:client").with_attr("from", alice_full.as_str());
    assert!(
        n1.account_action(
            &alice_origin,
            AccountAction::Presence { available: true, priority: 0, presence: Some(presence.to_string()) }
        )
        .await
    );
    let bare_alice = format!("{alice}@{DOMAIN}");
    until(|| n2.sessions_of(&bare_alice).iter().any(|s| s.available)).await;
    n2.route(&bob_origin, chat(&bob_full, &bare_alice, "m3")).await;
    assert_eq!(next_stanza(&mut alice_box).await.attr("id"), Some("m3"));

    // An IQ to a resource that is not bound is answered by the owner, and the error
    // crosses back to the sender's node.
    let iq = Element::new("iq", "jabber:client")
        .with_attr("from", bob_full.as_str())
        .with_attr("to", format!("{alice}@{DOMAIN}/gone"))
        .with_attr("type", "get")
        .with_attr("id", "q1")
        .with_child(Element::new("query", "jabber:iq:version"));
    n2.route(&bob_origin, iq).await;
    let error = next_stanza(&mut bob_box).await;
    assert_eq!((error.attr("type"), error.attr("id")), (Some("error"), Some("q1")));

    // Offline storage happens at the owner: bob's session ends, a message to him is
    // stored in node 1's database, not node 2's.
    n2.cluster.disconnect(bob_origin.conn_id.unwrap());
    assert!(n2.account_action(&bob_origin, AccountAction::Unbind).await);
    let bare_bob = format!("{bob}@{DOMAIN}");
    until(|| n1.sessions_of(&bare_bob).is_empty()).await;
    n1.route(&alice_origin, chat(&alice_full, &bare_bob, "m4")).await;
    let mut stored = Vec::new();
    for _ in 0..500 {
        stored = n1.store.offline_take(&bob).await.unwrap();
        if !stored.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stored.len(), 1, "stored at bob's owner");
    assert!(stored[0].contains("m4"));
    assert!(n2.store.offline_take(&bob).await.unwrap().is_empty());

    // A second session of the same full JID on the other node replaces the first,
    // across nodes.
    let (_second, _second_box) = session(&n2, &alice_full).await;
    let replaced = tokio::time::timeout(Duration::from_secs(5), alice_box.recv()).await.unwrap();
    assert!(matches!(replaced, Some(SessionMsg::Replaced)), "{replaced:?}");

    assert!(*net.sent.lock().unwrap() > 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_and_tokens_live_at_the_owner_of_the_user() {
    let dir = std::env::temp_dir().join(format!("waddle-two-nodes-accounts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (n1, n2, net) = linked_pair(&dir).await;

    // Created through node 1 (as the HTTP API or in-band registration would), kept by
    // node 2, the owner; read from either.
    let carol = user_owned_by(2, "carol");
    waddle_api::create_account(&n1.accounts(), &carol, "correct horse", 4096).await.unwrap();
    assert!(n2.store.account_exists(&carol).await.unwrap(), "held by the owner");
    assert!(!n1.store.account_exists(&carol).await.unwrap(), "not by the node it was created through");
    assert!(n1.accounts().account(&carol).await.unwrap().is_some());
    assert_eq!(
        waddle_api::create_account(&n2.accounts(), &carol, "other", 4096).await.unwrap_err().code(),
        "account_exists"
    );

    // A token issued through node 1 names the partition, so node 1 finds it at node 2.
    let token = n1.accounts().issue_token(TokenKind::HttpSession, &carol, i64::MAX).await.unwrap();
    let found = n1.accounts().lookup_token(TokenKind::HttpSession, &token, 0).await.unwrap();
    assert_eq!(found.map(|t| t.username), Some(carol.clone()));
    assert!(n2.accounts().lookup_token(TokenKind::HttpSession, &token, 0).await.unwrap().is_some());
    assert!(n1.accounts().lookup_token(TokenKind::Xmpp, &token, 0).await.unwrap().is_none(), "another kind");

    // An unreachable owner is an error, not "no such account".
    net.nodes.lock().unwrap().remove(&2);
    assert!(n1.accounts().account(&carol).await.is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A partition's user data moves between nodes as one file: exactly the accounts that
/// hash to it (with what is keyed by them) leave one node's database and arrive in the
/// other's, and logins read them there once the ring says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitions_user_data_moves_as_one_file() {
    let dir = std::env::temp_dir().join(format!("waddle-two-nodes-move-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (n1, n2, _net) = linked_pair(&dir).await;
    let users: Vec<String> = (0..40).map(|i| user_owned_by(2, &format!("mover{i}x"))).collect();
    for u in &users {
        if !n2.store.account_exists(u).await.unwrap() {
            create_account(&n2, u).await;
        }
    }
    let partition = partition_of(&format!("{}@{DOMAIN}", users[0]));
    let expected: Vec<String> = {
        let mut v: Vec<String> =
            users.iter().filter(|u| partition_of(&format!("{u}@{DOMAIN}")) == partition).cloned().collect();
        v.sort();
        v.dedup();
        v
    };
    let file = dir.join("partition.db");
    let exported = waddle::partition_data::export(&n2, partition, &file).await.unwrap();
    assert_eq!(exported as usize, expected.len());
    assert_eq!(waddle::partition_data::import(&n1, &file).await.unwrap() as usize, expected.len());
    assert_eq!(n1.store.usernames().await.unwrap(), expected, "exactly the partition's users");
    waddle::partition_data::forget(&n2, partition).await.unwrap();
    assert!(waddle::partition_data::users_of(&n2, partition).await.unwrap().is_empty());

    // The ring gives the partition to node 1: accounts are read there, through either node.
    let owners: Vec<u64> = (0..PARTITIONS).map(|p| if p == partition || p.is_multiple_of(2) { 1 } else { 2 }).collect();
    for n in [&n1, &n2] {
        assert!(n.cluster.set_ring(3, owners.clone()));
    }
    assert!(n2.accounts().account(&expected[0]).await.unwrap().is_some());
    assert!(n1.accounts().account(&expected[0]).await.unwrap().is_some());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stanza whose destination's owner cannot be reached is answered with
/// `recipient-unavailable` of type `wait` (RFC 6120 §8.3.3.14), not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_owner_is_recipient_unavailable() {
    let dir = std::env::temp_dir().join(format!("waddle-two-nodes-unreachable-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (n1, _n2, net) = linked_pair(&dir).await;
    let sender = user_owned_by(1, "sender");
    create_account(&n1, &sender).await;
    let sender_full = format!("{sender}@{DOMAIN}/pc");
    let (origin, mut mailbox) = session(&n1, &sender_full).await;
    net.queues.lock().unwrap().remove(&2);
    let far = format!("{}@{DOMAIN}", user_owned_by(2, "far"));
    n1.route(&origin, chat(&sender_full, &far, "lost?")).await;
    let error = next_stanza(&mut mailbox).await;
    assert_eq!((error.attr("type"), error.attr("id")), (Some("error"), Some("lost?")));
    let condition = error.get_child("error", "jabber:client").unwrap();
    assert_eq!(condition.attr("type"), Some("wait"));
    assert!(condition.get_child("recipient-unavailable", "urn:ietf:params:xml:ns:xmpp-stanzas").is_some(), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A room whose partition moved hands on what was still queued for it, in order, to the
/// room on its new owner, which handles and archives it (XEP-0045 reflections reach the
/// sender from there); the old room archives nothing more and stops. Queued while the
/// old room served (it checks ownership per stanza), and queued while it still waited
/// for its occupants to come back (parked, handed on at its release).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_room_hands_what_was_queued_for_it_to_its_new_owner_in_order() {
    room_moves_with_queued_stanzas("served", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_room_hands_what_it_parked_to_its_new_owner_in_order() {
    room_moves_with_queued_stanzas("parked", false).await;
}

/// The ids of the next `n` messages from `from` (a room's own notices come from its bare
/// JID, and are skipped).
async fn reflections(from: &str, n: usize, mailbox: &mut SessionMailbox) -> Vec<String> {
    let mut ids = Vec::new();
    while ids.len() < n {
        let got = next_stanza(mailbox).await;
        if got.name() == "message" && got.attr("from") == Some(from) {
            ids.push(got.attr("id").unwrap_or_default().to_owned());
        }
    }
    ids
}

async fn room_moves_with_queued_stanzas(name: &str, settled: bool) {
    let dir = std::env::temp_dir().join(format!("waddle-two-nodes-moving-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (n1, n2, _net) = linked_pair(&dir).await;
    let alice = user_owned_by(1, "alice");
    create_account(&n1, &alice).await;
    let alice_full = format!("{alice}@{DOMAIN}/laptop");
    let (alice_origin, mut alice_box) = session(&n1, &alice_full).await;

    // A room node 1 owns under the split ring; alice joins it there.
    let mut room_node = String::new();
    for i in 0.. {
        room_node = format!("moving{i}");
        if waddle::muc::room_partition(&n1, &room_node).await.is_multiple_of(2) {
            break;
        }
    }
    let room = format!("{room_node}@{}", n1.muc.domain);
    let alice_in_room = format!("{room}/alice");
    let join = Element::new("presence", "jabber:client")
        .with_attr("from", alice_full.as_str())
        .with_attr("to", alice_in_room.as_str())
        .with_child(Element::new("x", "http://jabber.org/protocol/muc"));
    n1.route(&alice_origin, join.clone()).await;
    let joined = next_stanza(&mut alice_box).await;
    assert_eq!((joined.name(), joined.attr("from")), ("presence", Some(alice_in_room.as_str())));
    let old_room = n1.muc.running(&room).expect("the room runs on node 1");
    let groupchat = |body: &str| {
        Element::new("message", "jabber:client")
            .with_attr("from", alice_full.as_str())
            .with_attr("to", room.as_str())
            .with_attr("type", "groupchat")
            .with_attr("id", body)
            .with_child(Element::new("body", "jabber:client").with_text(body))
    };
    if settled {
        // A room that came to a node holds groupchat until its occupants settled; one
        // message reflected by node 1 shows the room serves.
        n1.route(&alice_origin, groupchat("before")).await;
        assert_eq!(reflections(&alice_in_room, 1, &mut alice_box).await, ["before"]);
    }

    // The ring moves the room to node 2; alice's session takes itself there (rejoin).
    let flipped: Vec<u64> = (0..PARTITIONS).map(|p| if p.is_multiple_of(2) { 2 } else { 1 }).collect();
    for n in [&n1, &n2] {
        assert!(n.cluster.set_ring(3, flipped.clone()));
    }
    waddle::muc::rejoin(&n1, join, alice_origin.conn_id.unwrap(), 0).await;
    until(|| n2.muc.running(&room).is_some()).await;

    // Two messages were still queued for the old room when the ring moved, then its
    // release.
    for body in ["queued1", "queued2"] {
        old_room.cast(waddle::muc::RoomMsg::Stanza(groupchat(body), alice_origin.conn_id)).unwrap();
    }
    old_room.cast(waddle::muc::RoomMsg::Release { forward: true }).unwrap();
    assert_eq!(reflections(&alice_in_room, 2, &mut alice_box).await, ["queued1", "queued2"]);
    until(|| n1.muc.running(&room).is_none()).await;
    let archived = |ctx: Arc<Ctx>| {
        let room = room.clone();
        async move {
            ctx.archive.flush().await.unwrap();
            let rows = ctx.archive.recent(waddle_mam::ArchiveLocation::AdHocRooms, &room, 10).await.unwrap();
            rows.into_iter().filter_map(|r| r.body).collect::<Vec<_>>()
        }
    };
    assert_eq!(archived(Arc::clone(&n2)).await, ["queued1", "queued2"], "archived by the new owner");
    let before: &[&str] = if settled { &["before"] } else { &[] };
    assert_eq!(archived(Arc::clone(&n1)).await, before, "nothing more archived by the old one");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stanza routed for a session on another node that waits for the outcome
/// (`NodeCall::Route`) and is refused at the owner is answered `Refused`, so that the
/// session's node bounces it before the session counts it handled (XEP-0198), instead of
/// an error travelling back on its own that could come after the acknowledgement, or not
/// at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_of_a_routed_stanza_comes_back_with_the_answer() {
    let dir = std::env::temp_dir().join(format!("waddle-two-nodes-refused-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (n1, n2, _net) = linked_pair(&dir).await;
    let alice = user_owned_by(1, "alice");
    create_account(&n1, &alice).await;
    let alice_full = format!("{alice}@{DOMAIN}/laptop");
    let (alice_origin, _alice_box) = session(&n1, &alice_full).await;
    // Node 2 believes bob's partition is node 3's, and node 3 is out of reach.
    let bob = user_owned_by(2, "bob");
    create_account(&n2, &bob).await;
    let bob_partition = partition_of(&format!("{bob}@{DOMAIN}"));
    let owners: Vec<u64> = (0..PARTITIONS)
        .map(|p| {
            if p == bob_partition {
                3
            } else if p.is_multiple_of(2) {
                1
            } else {
                2
            }
        })
        .collect();
    assert!(n2.cluster.set_ring(3, owners));
    let route = |body: &str| NodeCall::Route {
        from: alice_full.clone(),
        conn_id: alice_origin.conn_id,
        stanza: chat(&alice_full, &format!("{bob}@{DOMAIN}"), body).to_string(),
        hops: 1,
    };
    let reply = remote::answer(&n2, route("refused")).await;
    assert!(matches!(&reply, NodeReply::Refused(c) if c == "recipient-unavailable"), "{reply:?}");
    // Routed without a refusal: done.
    let owners: Vec<u64> = (0..PARTITIONS).map(|p| if p.is_multiple_of(2) { 1 } else { 2 }).collect();
    assert!(n2.cluster.set_ring(4, owners));
    let reply = remote::answer(&n2, route("delivered")).await;
    assert!(matches!(reply, NodeReply::Done), "{reply:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
