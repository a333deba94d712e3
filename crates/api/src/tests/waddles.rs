//! Waddles, members, channels, permission checks and the OpenAPI document, over a real
//! listener.

use std::sync::atomic::AtomicBool;

use waddle_authz::{ObjectRef, TupleFilter};
use waddle_storage::{ChannelRecord, WaddleRecord};

use super::*;
use crate::rooms::BoxFuture;

/// A [`RoomControl`] that records every call (and can be told to fail room creation).
pub(crate) struct Recorder {
    inner: NoRooms,
    pub(crate) created: Mutex<Vec<String>>,
    pub(crate) deleted: Mutex<Vec<(String, String)>>,
    pub(crate) updated: Mutex<Vec<ChannelRecord>>,
    pub(crate) access: Mutex<Vec<(String, usize)>>,
    pub(crate) fail_creation: AtomicBool,
}

impl Recorder {
    pub(crate) fn new(domain: &str) -> Recorder {
        Recorder {
            inner: NoRooms::new(domain),
            created: Mutex::default(),
            deleted: Mutex::default(),
            updated: Mutex::default(),
            access: Mutex::default(),
            fail_creation: AtomicBool::new(false),
        }
    }
}

impl RoomControl for Recorder {
    fn channel_created(&self, waddle: &WaddleRecord, channel: &ChannelRecord) -> BoxFuture<'_, Result<String, String>> {
        assert_eq!(waddle.id, channel.waddle_id);
        if self.fail_creation.load(Ordering::SeqCst) {
            return Box::pin(async { Err("the MUC service is on fire".to_owned()) });
        }
        self.created.lock().unwrap().push(channel.id.clone());
        self.inner.channel_created(waddle, channel)
    }

    fn channel_deleted(&self, channel: &ChannelRecord, reason: &str) -> BoxFuture<'_, ()> {
        self.deleted.lock().unwrap().push((channel.id.clone(), reason.to_owned()));
        Box::pin(async {})
    }

    fn room_jid(&self, channel: &ChannelRecord) -> String {
        self.inner.room_jid(channel)
    }

    fn channel_updated(&self, channel: &ChannelRecord) -> BoxFuture<'_, ()> {
        self.updated.lock().unwrap().push(channel.clone());
        Box::pin(async {})
    }

    fn access_changed(&self, waddle: &WaddleRecord, channels: &[ChannelRecord]) -> BoxFuture<'_, ()> {
        self.access.lock().unwrap().push((waddle.id.clone(), channels.len()));
        Box::pin(async {})
    }
}

/// Registers `name` and returns a session token.
async fn user(addr: SocketAddr, name: &str) -> String {
    assert_eq!(register(addr, name, "correct horse").await.status, 201);
    let r = login(addr, name, "correct horse").await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["token"].as_str().unwrap().to_owned()
}

/// One authenticated JSON request (the future owns its arguments).
fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> impl std::future::Future<Output = Reply> + 'static {
    let (method, path, auth) = (method.to_owned(), path.to_owned(), format!("Bearer {token}"));
    async move {
        let mut headers = vec![("Authorization", auth.as_str())];
        let body = body.map(|b| b.to_string());
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        request(addr, &method, &path, &headers, body.as_deref().map(str::as_bytes)).await
    }
}

fn ok(r: &Reply, status: u16) -> Value {
    assert_eq!(r.status, status, "{r:?} {}", String::from_utf8_lossy(&r.body));
    if r.body.is_empty() {
        Value::Null
    } else {
        r.json()
    }
}

fn err(r: &Reply) -> (u16, String) {
    (r.status, r.error_code())
}

fn channel_named<'a>(waddle: &'a Value, name: &str) -> &'a Value {
    waddle["channels"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap()
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array().unwrap().iter().map(|v| v["id"].as_str().unwrap().to_owned()).collect()
}

async fn create_waddle(addr: SocketAddr, token: &str, name: &str) -> Value {
    ok(&call(addr, "POST", "/v1/waddles", token, Some(json!({ "name": name }))).await, 201)
}

#[tokio::test]
async fn the_whole_walk() {
    let s = start(config()).await;
    let a = s.addr;
    let alice = user(a, "alice").await;
    let bob = user(a, "bob").await;
    let carol = user(a, "carol").await;

    // Create: general + announcements, with rooms; alice is owner and member.
    let w = create_waddle(a, &alice, "Penguins").await;
    let wid = w["id"].as_str().unwrap().to_owned();
    assert!(is_valid_id(&wid), "{w}");
    assert_eq!(
        (w["name"].as_str(), w["owner"].as_str(), &w["description"]),
        (Some("Penguins"), Some("alice"), &Value::Null)
    );
    assert!(w["created_at"].as_str().unwrap().ends_with('Z'));
    let names: Vec<&str> = w["channels"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["announcements", "general"]);
    let general = channel_named(&w, "general").clone();
    let gid = general["id"].as_str().unwrap().to_owned();
    assert_eq!(general["type"], "text");
    assert_eq!(general["waddle_id"], wid.as_str());
    assert_eq!(general["room_jid"], format!("{gid}@muc.example.test"));
    assert_eq!(channel_named(&w, "announcements")["type"], "announcement");
    assert_eq!(s.rooms.created.lock().unwrap().len(), 2);
    let members = ok(&call(a, "GET", &format!("/v1/waddles/{wid}/members"), &alice, None).await, 200);
    assert_eq!(members, json!([{ "user": "alice", "roles": ["owner", "member"] }]));
    assert_eq!(ids(&ok(&call(a, "GET", "/v1/waddles", &alice, None).await, 200)), [wid.as_str()]);

    // A non-member sees nothing: 404, exactly like an unknown id.
    for path in [format!("/v1/waddles/{wid}"), format!("/v1/waddles/{wid}/channels"), format!("/v1/channels/{gid}")] {
        assert_eq!(err(&call(a, "GET", &path, &bob, None).await), (404, "not_found".into()), "{path}");
    }
    let unknown = call(a, "GET", "/v1/waddles/aaaaaaaaaaaa", &bob, None).await;
    let hidden = call(a, "GET", &format!("/v1/waddles/{wid}"), &bob, None).await;
    assert_eq!(unknown.json(), hidden.json());
    assert_eq!(ok(&call(a, "GET", "/v1/waddles", &bob, None).await, 200), json!([]));

    // Add bob as a member: he lists and views the channels, but cannot create one.
    let r = call(
        a,
        "POST",
        &format!("/v1/waddles/{wid}/members"),
        &alice,
        Some(json!({ "user": "bob", "role": "member" })),
    );
    assert_eq!(ok(&r.await, 201), json!({ "user": "bob", "roles": ["member"] }));
    assert_eq!(s.rooms.access.lock().unwrap().last(), Some(&(wid.clone(), 2)));
    assert_eq!(ids(&ok(&call(a, "GET", "/v1/waddles", &bob, None).await, 200)), [wid.as_str()]);
    let channels = ok(&call(a, "GET", &format!("/v1/waddles/{wid}/channels"), &bob, None).await, 200);
    assert_eq!(channels.as_array().unwrap().len(), 2);
    assert_eq!(ok(&call(a, "GET", &format!("/v1/channels/{gid}"), &bob, None).await, 200), general);
    let dev = json!({ "name": "dev", "type": "text" });
    let r = call(a, "POST", &format!("/v1/waddles/{wid}/channels"), &bob, Some(dev.clone())).await;
    assert_eq!(err(&r), (403, "forbidden".into()));
    let check = json!({ "object": format!("channel:{gid}"), "permission": "send_message" });
    assert_eq!(
        ok(&call(a, "POST", "/v1/permissions/check", &bob, Some(check.clone())).await, 200),
        json!({ "allowed": true })
    );

    // Carol becomes admin (and thereby member) and creates a channel.
    let r = call(
        a,
        "POST",
        &format!("/v1/waddles/{wid}/members"),
        &alice,
        Some(json!({ "user": "Carol", "role": "admin" })),
    );
    assert_eq!(ok(&r.await, 201), json!({ "user": "carol", "roles": ["admin", "member"] }));
    let c = ok(&call(a, "POST", &format!("/v1/waddles/{wid}/channels"), &carol, Some(dev)).await, 201);
    assert_eq!((c["name"].as_str(), c["type"].as_str(), &c["topic"]), (Some("dev"), Some("text"), &Value::Null));
    let did = c["id"].as_str().unwrap().to_owned();
    assert_eq!(c["room_jid"], format!("{did}@muc.example.test"));
    assert!(s.rooms.created.lock().unwrap().contains(&did));
    assert_eq!(
        ok(&call(a, "GET", &format!("/v1/waddles/{wid}/channels"), &bob, None).await, 200).as_array().unwrap().len(),
        3
    );
    let members = ok(&call(a, "GET", &format!("/v1/waddles/{wid}/members"), &bob, None).await, 200);
    assert_eq!(
        members,
        json!([
            { "user": "alice", "roles": ["owner", "member"] },
            { "user": "bob", "roles": ["member"] },
            { "user": "carol", "roles": ["admin", "member"] },
        ])
    );

    // Revoke bob: the very next check is false, and everything is 404 again.
    assert_eq!(ok(&call(a, "DELETE", &format!("/v1/waddles/{wid}/members/bob"), &carol, None).await, 204), Value::Null);
    assert_eq!(
        ok(&call(a, "POST", "/v1/permissions/check", &bob, Some(check)).await, 200),
        json!({ "allowed": false })
    );
    assert_eq!(err(&call(a, "GET", &format!("/v1/waddles/{wid}"), &bob, None).await), (404, "not_found".into()));
    assert_eq!(err(&call(a, "GET", &format!("/v1/channels/{gid}"), &bob, None).await), (404, "not_found".into()));
    assert_eq!(ok(&call(a, "GET", "/v1/waddles", &bob, None).await, 200), json!([]));
    assert!(!s.state.authz.check(&ObjectRef::new("channel", &gid), "view", "bob"));

    // Everything is durable: a fresh checker loaded from storage agrees.
    let reloaded = Permissions::load(s.state.store.clone()).await.unwrap();
    for (user, expected) in [("alice", true), ("carol", true), ("bob", false)] {
        assert_eq!(reloaded.check(&ObjectRef::new("channel", &did), "send_message", user), expected, "{user}");
    }
    assert_eq!(reloaded.list(&TupleFilter::default()), s.state.authz.list(&TupleFilter::default()));
}

#[tokio::test]
async fn permission_check_endpoint() {
    let s = start(config()).await;
    let a = s.addr;
    let alice = user(a, "alice").await;
    let bob = user(a, "bob").await;
    let w = create_waddle(a, &alice, "W").await;
    let wid = w["id"].as_str().unwrap();
    let gid = channel_named(&w, "general")["id"].as_str().unwrap();
    let check = |token: &str, body: Value| call(a, "POST", "/v1/permissions/check", token, Some(body));

    let allowed = |r: &Reply| ok(r, 200)["allowed"].as_bool().unwrap();
    assert!(allowed(&check(&alice, json!({ "object": format!("waddle:{wid}"), "permission": "delete" })).await));
    assert!(allowed(&check(&alice, json!({ "object": format!("waddle:{wid}"), "permission": "owner" })).await));
    assert!(!allowed(&check(&bob, json!({ "object": format!("channel:{gid}"), "permission": "view" })).await));
    // The owner (administer on the waddle) may check others, on the waddle and its channels.
    let about_bob = json!({ "object": format!("channel:{gid}"), "permission": "view", "user": "bob" });
    assert!(!allowed(&check(&alice, about_bob.clone()).await));
    let about_alice = json!({ "object": format!("channel:{gid}"), "permission": "manage", "user": "alice" });
    assert!(allowed(&check(&alice, about_alice.clone()).await));
    // Checking yourself by name is fine; others need administer.
    assert!(!allowed(
        &check(&bob, json!({ "object": format!("waddle:{wid}"), "permission": "view", "user": "bob" })).await
    ));
    assert_eq!(err(&check(&bob, about_alice).await), (403, "forbidden".into()));
    let unknown_waddle = json!({ "object": "waddle:aaaaaaaaaaaa", "permission": "view", "user": "alice" });
    assert_eq!(err(&check(&bob, unknown_waddle).await), (403, "forbidden".into()));
    let dm = json!({ "object": "dm:d1", "permission": "view", "user": "bob" });
    assert_eq!(err(&check(&alice, dm).await), (403, "forbidden".into()));
    // Malformed requests.
    for body in [
        json!({ "object": "channel", "permission": "view" }),
        json!({ "object": "folder:x", "permission": "view" }),
        json!({ "object": format!("channel:{gid}"), "permission": "fly" }),
        json!({ "object": format!("channel:{gid}") }),
        json!({ "object": format!("channel:{gid}"), "permission": "view", "extra": 1 }),
    ] {
        assert_eq!(err(&check(&alice, body.clone()).await), (400, "invalid_request".into()), "{body}");
    }
    let bad_user = json!({ "object": format!("channel:{gid}"), "permission": "view", "user": "not valid" });
    assert_eq!(err(&check(&alice, bad_user).await), (400, "invalid_username".into()));
    // Admins of the waddle may check others too.
    let r =
        call(a, "POST", &format!("/v1/waddles/{wid}/members"), &alice, Some(json!({ "user": "bob", "role": "admin" })));
    ok(&r.await, 201);
    assert!(allowed(
        &check(&bob, json!({ "object": format!("waddle:{wid}"), "permission": "delete", "user": "alice" })).await
    ));
}

#[tokio::test]
async fn validation_errors() {
    let s = start(config()).await;
    let a = s.addr;
    let alice = user(a, "alice").await;
    let invalid = |r: &Reply| assert_eq!(err(r), (400, "invalid_request".into()), "{r:?}");

    for body in [
        json!({ "name": "" }),
        json!({ "name": "   " }),
        json!({ "name": "x".repeat(65) }),
        json!({ "name": "bad\u{0}name" }),
        json!({ "name": "ok", "description": "d".repeat(1025) }),
        json!({ "name": "ok", "colour": "red" }),
        json!({ "description": "no name" }),
        json!({ "name": 5 }),
    ] {
        invalid(&call(a, "POST", "/v1/waddles", &alice, Some(body)).await);
    }
    let r = call(
        a,
        "POST",
        "/v1/waddles",
        &alice,
        Some(json!({ "name": "é".repeat(64), "description": "d".repeat(1024) })),
    );
    ok(&r.await, 201);
    let w = create_waddle(a, &alice, "W").await;
    let wid = w["id"].as_str().unwrap();
    let gid = channel_named(&w, "general")["id"].as_str().unwrap();
    let channels = format!("/v1/waddles/{wid}/channels");
    for body in [
        json!({ "name": "", "type": "text" }),
        json!({ "name": "Dev", "type": "text" }),
        json!({ "name": "dev ops", "type": "text" }),
        json!({ "name": "a".repeat(33), "type": "text" }),
        json!({ "name": "dev", "type": "voice" }),
        json!({ "name": "dev", "type": "Text" }),
        json!({ "name": "dev" }),
        json!({ "name": "dev", "type": "text", "topic": "t".repeat(513) }),
        json!({ "name": "dev", "type": "text", "topic": "two\nlines" }),
    ] {
        invalid(&call(a, "POST", &channels, &alice, Some(body)).await);
    }
    let body = json!({ "name": "a".repeat(32), "type": "announcement", "topic": "t".repeat(512) });
    let c = ok(&call(a, "POST", &channels, &alice, Some(body)).await, 201);
    assert_eq!(c["topic"], "t".repeat(512));
    // Unique per waddle.
    let r = call(a, "POST", &channels, &alice, Some(json!({ "name": "general", "type": "text" }))).await;
    assert_eq!(err(&r), (409, "channel_exists".into()));
    let r = call(a, "PATCH", &format!("/v1/channels/{gid}"), &alice, Some(json!({ "name": "announcements" }))).await;
    assert_eq!(err(&r), (409, "channel_exists".into()));
    // Ids in paths.
    for path in
        ["/v1/waddles/short", "/v1/waddles/UPPERCASEIDS", "/v1/waddles/abcdefghijk1", "/v1/channels/abc%20defghijk"]
    {
        invalid(&call(a, "GET", path, &alice, None).await);
    }
    invalid(&call(a, "DELETE", "/v1/waddles/nope/members/bob", &alice, None).await);
    let r = call(a, "DELETE", &format!("/v1/waddles/{wid}/members/not%20valid"), &alice, None).await;
    assert_eq!(err(&r), (400, "invalid_username".into()));
    // Members: role and account.
    let members = format!("/v1/waddles/{wid}/members");
    for body in [
        json!({ "user": "alice", "role": "owner" }),
        json!({ "user": "alice", "role": "king" }),
        json!({ "user": "alice" }),
    ] {
        invalid(&call(a, "POST", &members, &alice, Some(body)).await);
    }
    let r = call(a, "POST", &members, &alice, Some(json!({ "user": "ghost", "role": "member" }))).await;
    assert_eq!(err(&r), (404, "not_found".into()));
    let r = call(a, "POST", &members, &alice, Some(json!({ "user": "not valid", "role": "member" }))).await;
    assert_eq!(err(&r), (400, "invalid_username".into()));
    // PATCH bodies.
    invalid(&call(a, "PATCH", &format!("/v1/waddles/{wid}"), &alice, Some(json!({ "name": null }))).await);
    invalid(&call(a, "PATCH", &format!("/v1/waddles/{wid}"), &alice, Some(json!({ "name": "" }))).await);
    invalid(&call(a, "PATCH", &format!("/v1/channels/{gid}"), &alice, Some(json!({ "name": "Bad" }))).await);
    invalid(&call(a, "PATCH", &format!("/v1/channels/{gid}"), &alice, Some(json!({ "topic": "x".repeat(513) }))).await);
    // Malformed JSON and content type keep their own codes.
    let r = request(
        a,
        "POST",
        "/v1/waddles",
        &[("Authorization", &format!("Bearer {alice}")), ("Content-Type", "application/json")],
        Some(b"{"),
    )
    .await;
    assert_eq!(err(&r), (400, "invalid_json".into()));
    let r = request(a, "POST", "/v1/waddles", &[("Authorization", &format!("Bearer {alice}"))], Some(b"{}")).await;
    assert_eq!(err(&r), (415, "unsupported_media_type".into()));
}

#[tokio::test]
async fn channel_limit() {
    let s = start(ApiConfig { max_channels_per_waddle: 3, ..config() }).await;
    let a = s.addr;
    let alice = user(a, "alice").await;
    let w = create_waddle(a, &alice, "W").await;
    let channels = format!("/v1/waddles/{}/channels", w["id"].as_str().unwrap());
    ok(&call(a, "POST", &channels, &alice, Some(json!({ "name": "third", "type": "text" }))).await, 201);
    let r = call(a, "POST", &channels, &alice, Some(json!({ "name": "fourth", "type": "text" }))).await;
    assert_eq!(err(&r), (409, "channel_limit".into()));
    assert_eq!(s.state.store.channel_count(w["id"].as_str().unwrap()).await.unwrap(), 3);
    // A waddle cannot even be created below the two default channels.
    let s = start(ApiConfig { max_channels_per_waddle: 1, ..config() }).await;
    let alice = user(s.addr, "alice").await;
    let r = call(s.addr, "POST", "/v1/waddles", &alice, Some(json!({ "name": "W" }))).await;
    assert_eq!(err(&r), (409, "channel_limit".into()));
    assert!(s.state.authz.list(&TupleFilter::default()).is_empty());
    assert_eq!(s.rooms.deleted.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn edit_and_delete_channels() {
    let s = start(config()).await;
    let a = s.addr;
    let alice = user(a, "alice").await;
    let bob = user(a, "bob").await;
    let w = create_waddle(a, &alice, "W").await;
    let wid = w["id"].as_str().unwrap();
    let gid = channel_named(&w, "general")["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/channels/{gid}");
    ok(
        &call(
            a,
            "POST",
            &format!("/v1/waddles/{wid}/members"),
            &alice,
            Some(json!({ "user": "bob", "role": "moderator" })),
        )
        .await,
        201,
    );

    // Moderators moderate but do not manage.
    let r = call(a, "PATCH", &path, &bob, Some(json!({ "topic": "hi" }))).await;
    assert_eq!(err(&r), (403, "forbidden".into()));
    assert_eq!(err(&call(a, "DELETE", &path, &bob, None).await), (403, "forbidden".into()));

    let c = ok(&call(a, "PATCH", &path, &alice, Some(json!({ "name": "lobby", "topic": "Welcome" }))).await, 200);
    assert_eq!(
        (c["name"].as_str(), c["topic"].as_str(), c["id"].as_str()),
        (Some("lobby"), Some("Welcome"), Some(gid.as_str()))
    );
    assert_eq!(s.rooms.updated.lock().unwrap().last().unwrap().topic.as_deref(), Some("Welcome"));
    let c = ok(&call(a, "PATCH", &path, &alice, Some(json!({ "topic": null }))).await, 200);
    assert_eq!((c["name"].as_str(), &c["topic"]), (Some("lobby"), &Value::Null));
    assert_eq!(ok(&call(a, "PATCH", &path, &alice, Some(json!({}))).await, 200), c);

    // Delete: the room is destroyed through RoomControl and the tuples are gone.
    assert_eq!(ok(&call(a, "DELETE", &path, &alice, None).await, 204), Value::Null);
    assert_eq!(*s.rooms.deleted.lock().unwrap(), [(gid.clone(), "The channel was deleted".to_owned())]);
    assert_eq!(err(&call(a, "GET", &path, &alice, None).await), (404, "not_found".into()));
    assert_eq!(err(&call(a, "DELETE", &path, &alice, None).await), (404, "not_found".into()));
    assert!(s
        .state
        .authz
        .list(&TupleFilter { object: Some(ObjectRef::new("channel", &gid)), ..Default::default() })
        .is_empty());
    let names: Vec<String> = ok(&call(a, "GET", &format!("/v1/waddles/{wid}/channels"), &alice, None).await, 200)
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["announcements"]);
}

#[tokio::test]
async fn edit_and_delete_waddles() {
    let s = start(config()).await;
    let a = s.addr;
    let alice = user(a, "alice").await;
    let bob = user(a, "bob").await;
    let carol = user(a, "carol").await;
    let w = create_waddle(a, &alice, "W").await;
    let wid = w["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/waddles/{wid}");
    let members = format!("{path}/members");
    ok(&call(a, "POST", &members, &alice, Some(json!({ "user": "bob", "role": "admin" }))).await, 201);
    ok(&call(a, "POST", &members, &alice, Some(json!({ "user": "carol", "role": "member" }))).await, 201);

    let r = call(a, "PATCH", &path, &carol, Some(json!({ "name": "Mine" }))).await;
    assert_eq!(err(&r), (403, "forbidden".into()));
    let v = ok(&call(a, "PATCH", &path, &bob, Some(json!({ "name": "Renamed", "description": "About" }))).await, 200);
    assert_eq!(
        (v["name"].as_str(), v["description"].as_str(), v["owner"].as_str()),
        (Some("Renamed"), Some("About"), Some("alice"))
    );
    assert_eq!(v["channels"].as_array().unwrap().len(), 2);
    let v = ok(&call(a, "PATCH", &path, &bob, Some(json!({ "description": null }))).await, 200);
    assert_eq!((v["name"].as_str(), &v["description"]), (Some("Renamed"), &Value::Null));

    // Only the owner deletes.
    assert_eq!(err(&call(a, "DELETE", &path, &bob, None).await), (403, "forbidden".into()));
    assert_eq!(err(&call(a, "DELETE", &path, &carol, None).await), (403, "forbidden".into()));
    assert_eq!(ok(&call(a, "DELETE", &path, &alice, None).await, 204), Value::Null);
    let mut deleted: Vec<String> = s.rooms.deleted.lock().unwrap().iter().map(|(id, _)| id.clone()).collect();
    deleted.sort();
    let mut expected = ids(&w["channels"]);
    expected.sort();
    assert_eq!(deleted, expected);
    assert!(s.rooms.deleted.lock().unwrap().iter().all(|(_, why)| why == "The waddle was deleted"));
    assert_eq!(err(&call(a, "GET", &path, &alice, None).await), (404, "not_found".into()));
    assert_eq!(ok(&call(a, "GET", "/v1/waddles", &alice, None).await, 200), json!([]));
    assert!(s.state.authz.list(&TupleFilter::default()).is_empty());
    assert!(s.state.store.tuples_all().await.unwrap().is_empty());
    assert!(s.state.store.channels(&wid).await.unwrap().is_empty());
}

#[tokio::test]
async fn leaving_and_removing_members() {
    let s = start(config()).await;
    let a = s.addr;
    let alice = user(a, "alice").await;
    let bob = user(a, "bob").await;
    let carol = user(a, "carol").await;
    let w = create_waddle(a, &alice, "W").await;
    let wid = w["id"].as_str().unwrap();
    let gid = channel_named(&w, "general")["id"].as_str().unwrap();
    let members = format!("/v1/waddles/{wid}/members");
    ok(&call(a, "POST", &members, &alice, Some(json!({ "user": "bob", "role": "moderator" }))).await, 201);
    ok(&call(a, "POST", &members, &alice, Some(json!({ "user": "carol", "role": "member" }))).await, 201);
    // A channel-level grant is dropped with the membership.
    let tuple: waddle_authz::Tuple = format!("channel:{gid}#manager@user:carol").parse().unwrap();
    s.state.authz.write(tuple).await.unwrap();

    // Members cannot remove others; nobody removes the owner.
    let r = call(a, "DELETE", &format!("{members}/bob"), &carol, None).await;
    assert_eq!(err(&r), (403, "forbidden".into()));
    assert_eq!(
        err(&call(a, "DELETE", &format!("{members}/alice"), &alice, None).await),
        (409, "owner_cannot_leave".into())
    );
    assert_eq!(err(&call(a, "DELETE", &format!("{members}/dave"), &alice, None).await), (404, "not_found".into()));
    // Carol leaves by herself.
    ok(&call(a, "DELETE", &format!("{members}/carol"), &carol, None).await, 204);
    assert!(!s.state.authz.check(&ObjectRef::new("channel", gid), "view", "carol"));
    assert!(s
        .state
        .authz
        .list(&TupleFilter { subject: Some(waddle_authz::Subject::user("carol")), ..Default::default() })
        .is_empty());
    assert_eq!(err(&call(a, "GET", &members, &carol, None).await), (404, "not_found".into()));
    // Moderators are not member managers either.
    let r = call(a, "POST", &members, &bob, Some(json!({ "user": "carol", "role": "member" }))).await;
    assert_eq!(err(&r), (403, "forbidden".into()));
    let list = ok(&call(a, "GET", &members, &bob, None).await, 200);
    assert_eq!(
        list,
        json!([{ "user": "alice", "roles": ["owner", "member"] }, { "user": "bob", "roles": ["moderator", "member"] }])
    );
    assert_eq!(s.rooms.access.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn failed_room_creation_rolls_back() {
    let s = start(config()).await;
    let a = s.addr;
    let alice = user(a, "alice").await;
    let w = create_waddle(a, &alice, "W").await;
    s.rooms.fail_creation.store(true, Ordering::SeqCst);
    let r = call(
        a,
        "POST",
        &format!("/v1/waddles/{}/channels", w["id"].as_str().unwrap()),
        &alice,
        Some(json!({ "name": "dev", "type": "text" })),
    )
    .await;
    assert_eq!(err(&r), (500, "internal_error".into()));
    assert_eq!(s.state.store.channels(w["id"].as_str().unwrap()).await.unwrap().len(), 2);
    let tuples_before = s.state.store.tuples_all().await.unwrap();
    let r = call(a, "POST", "/v1/waddles", &alice, Some(json!({ "name": "Doomed" }))).await;
    assert_eq!(err(&r), (500, "internal_error".into()));
    assert_eq!(ids(&ok(&call(a, "GET", "/v1/waddles", &alice, None).await, 200)), [w["id"].as_str().unwrap()]);
    assert_eq!(s.state.store.tuples_all().await.unwrap(), tuples_before);
    assert_eq!(s.state.authz.list(&TupleFilter::default()).len(), tuples_before.len());
}

/// `/v1/...` paths of the table with placeholders filled in.
fn concrete(path: &str) -> String {
    path.replace("{id}", "abcdefghijkl").replace("{user}", "bob")
}

#[tokio::test]
async fn every_new_route_requires_a_session() {
    let s = start(config()).await;
    let public = ["/v1/accounts", "/auth/session", "/health", "/ready", "/openapi.json"];
    let mut checked = 0;
    for (method, path, _) in crate::routes::route_table() {
        if public.contains(&path) {
            continue;
        }
        let body = Some(&b"{}"[..]);
        for auth in [None, Some("Bearer not-a-session"), Some("Basic YWxpY2U6eA==")] {
            let mut headers = vec![("Content-Type", "application/json")];
            if let Some(a) = auth {
                headers.push(("Authorization", a));
            }
            let r = request(s.addr, method, &concrete(path), &headers, body).await;
            assert_eq!(err(&r), (401, "unauthorized".into()), "{method} {path} {auth:?}");
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        }
        checked += 1;
    }
    assert_eq!(checked, 15);
}

#[tokio::test]
async fn openapi_lists_every_route() {
    let s = start(config()).await;
    let r = request(s.addr, "GET", "/openapi.json", &[], None).await;
    let doc = ok(&r, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let table = crate::routes::route_table();
    let mut documented = 0;
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            documented += 1;
            assert!(
                table.iter().any(|(m, p, _)| p == path && m.eq_ignore_ascii_case(method)),
                "documented but not routed: {method} {path}"
            );
        }
    }
    assert_eq!(documented, table.len());
    for (method, path, _) in &table {
        let op = &paths.get(*path).unwrap_or_else(|| panic!("{path} missing"))[method.to_lowercase()];
        assert!(op.is_object(), "{method} {path} missing");
        assert!(op["responses"].is_object() && op["summary"].is_string(), "{method} {path}");
        // The table's method is the one the router really serves.
        let r = request(s.addr, method, &concrete(path), &[], None).await;
        assert_ne!(r.status, 405, "{method} {path}");
        assert!(r.status != 404 || r.error_code() != "not_found", "{method} {path}");
    }
    // Every $ref resolves.
    let text = doc.to_string();
    for piece in text.split("\"$ref\":\"#/").skip(1) {
        let target = &piece[..piece.find('"').unwrap()];
        let mut node = &doc;
        for key in target.split('/') {
            node = node.get(key).unwrap_or_else(|| panic!("dangling $ref {target}"));
        }
    }
    let codes: Vec<&str> = doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for code in ["forbidden", "not_found", "channel_exists", "channel_limit", "owner_cannot_leave", "invalid_request"] {
        assert!(codes.contains(&code), "{code}");
    }
}

#[tokio::test]
async fn permissions_persist_and_forget_deleted_users() {
    let store = Store::open(Path::new(":memory:")).await.unwrap();
    let p = Permissions::load(store.clone()).await.unwrap();
    let t = |s: &str| -> waddle_authz::Tuple { s.parse().unwrap() };
    p.write_all(vec![
        t("waddle:w1#owner@user:alice"),
        t("waddle:w1#member@user:bob"),
        t("channel:c1#parent@waddle:w1"),
    ])
    .await
    .unwrap();
    p.write(t("channel:c1#viewer@user:bob")).await.unwrap();
    // Schema violations are refused before anything is stored.
    let e = p.write_all(vec![t("waddle:w1#member@user:carol"), t("waddle:w1#view@user:carol")]).await.unwrap_err();
    assert_eq!((e.status().as_u16(), e.code()), (400, "invalid_request"));
    assert_eq!(store.tuples_all().await.unwrap().len(), 4);
    let c1 = ObjectRef::new("channel", "c1");
    assert!(p.check(&c1, "view", "bob") && p.check(&c1, "manage", "alice"));
    // Errors deny.
    assert!(!p.check(&c1, "fly", "alice"));
    assert!(p.try_check(&c1, "fly", "alice").is_err());
    assert_eq!(p.lookup_objects("channel", "view", "bob"), ["c1"]);
    assert!(p.lookup_objects("folder", "view", "bob").is_empty());

    let removed = p.remove_user("bob").await.unwrap();
    assert_eq!(removed, [t("channel:c1#viewer@user:bob"), t("waddle:w1#member@user:bob")]);
    assert!(!p.check(&c1, "view", "bob"));
    assert!(p.remove_user("bob").await.unwrap().is_empty());
    // Storage agrees with memory.
    let reloaded = Permissions::load(store.clone()).await.unwrap();
    assert_eq!(reloaded.list(&TupleFilter::default()), p.list(&TupleFilter::default()));
    assert!(reloaded.check(&c1, "delete", "alice") && !reloaded.check(&c1, "view", "bob"));
    // A corrupt stored tuple is skipped, not fatal.
    store.tuple_write("garbage").await.unwrap();
    store.tuple_write("waddle:w1#view@user:mallory").await.unwrap();
    let reloaded = Permissions::load(store).await.unwrap();
    assert_eq!(reloaded.list(&TupleFilter::default()).len(), 2);
    p.delete_object(&ObjectRef::new("waddle", "w1")).await.unwrap();
    assert!(p.list(&TupleFilter::default()).is_empty());
}
