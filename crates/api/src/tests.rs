#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use waddle_sasl::{FailureLimiter, LoginLimiter};
use waddle_storage::{Store, TokenKind};

use crate::*;

mod permissions;
mod waddles;

const ADMIN: &str = "s3cret-admin-token";

fn config() -> ApiConfig {
    ApiConfig {
        domain: "example.test".into(),
        xmpp_host: "xmpp.example.test".into(),
        xmpp_port: 5222,
        websocket_url: "wss://example.test/xmpp-websocket".into(),
        session_ttl_secs: 3600,
        xmpp_token_ttl_secs: 300,
        scram_iterations: 16,
        open_registration: true,
        admin_token: Some(ADMIN.into()),
        min_password_len: 8,
        max_channels_per_waddle: DEFAULT_MAX_CHANNELS_PER_WADDLE,
    }
}

struct Server {
    addr: SocketAddr,
    state: ApiState,
    rooms: Arc<waddles::Recorder>,
}

async fn start_with(config: ApiConfig, connect_info: bool) -> Server {
    let store = Store::open(Path::new(":memory:")).await.unwrap();
    let rooms = Arc::new(waddles::Recorder::new(&config.domain));
    let state = ApiState {
        authz: Arc::new(Permissions::load(store.clone()).await.unwrap()),
        rooms: rooms.clone(),
        accounts: Arc::new(store.clone()),
        control: Arc::new(store.clone()),
        store,
        config: Arc::new(config),
        auth_limiter: Arc::new(Mutex::new(LoginLimiter::new(3, 6, Duration::from_secs(60), 1000))),
        registration_limiter: Arc::new(Mutex::new(FailureLimiter::new(REGISTRATIONS, Duration::from_secs(60), 1000))),
        ready: Arc::new(AtomicBool::new(true)),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(state.clone());
    if connect_info {
        tokio::spawn(
            async move { axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await },
        );
    } else {
        tokio::spawn(async move { axum::serve(listener, app.into_make_service()).await });
    }
    Server { addr, state, rooms }
}

async fn start(config: ApiConfig) -> Server {
    start_with(config, true).await
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts the error envelope and returns the code.
    fn error_code(&self) -> String {
        assert_eq!(self.header("content-type"), Some("application/json"), "{self:?}");
        let v = self.json();
        let err = v.get("error").unwrap_or_else(|| panic!("no error envelope: {v}"));
        assert!(err["message"].is_string(), "{v}");
        assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
        err["code"].as_str().unwrap().to_owned()
    }
}

/// Minimal HTTP/1.1 client: one request per connection, `Connection: close`.
async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Reply {
    request_from(addr, None, method, path, headers, body).await
}

/// [`request`] from a chosen loopback source address (Linux routes all of 127/8 to lo).
async fn request_from(
    addr: SocketAddr,
    source: Option<&str>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Reply {
    let mut stream = match source {
        Some(ip) => {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::new(ip.parse().unwrap(), 0)).unwrap();
            socket.connect(addr).await.unwrap()
        }
        None => TcpStream::connect(addr).await.unwrap(),
    };
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    if let Some(body) = body {
        // The server may answer (413) and close before reading everything.
        let _ = stream.write_all(body).await;
    }
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> Reply {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("no end of headers");
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked =
        headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Reply { status, headers, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&data[..eol]).unwrap().trim(), 16).unwrap();
        data = &data[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

async fn post_json(addr: SocketAddr, path: &str, body: &Value, auth: Option<&str>) -> Reply {
    let bearer = auth.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b.as_str()));
    }
    request(addr, "POST", path, &headers, Some(body.to_string().as_bytes())).await
}

async fn register(addr: SocketAddr, username: &str, password: &str) -> Reply {
    post_json(addr, "/v1/accounts", &json!({ "username": username, "password": password }), None).await
}

async fn login(addr: SocketAddr, username: &str, password: &str) -> Reply {
    post_json(addr, "/auth/session", &json!({ "username": username, "password": password }), None).await
}

async fn login_from(addr: SocketAddr, source: &str, username: &str, password: &str) -> Reply {
    let body = json!({ "username": username, "password": password }).to_string();
    let headers = [("Content-Type", "application/json")];
    request_from(addr, Some(source), "POST", "/auth/session", &headers, Some(body.as_bytes())).await
}

async fn register_from(addr: SocketAddr, source: &str, username: &str, auth: Option<&str>) -> Reply {
    let body = json!({ "username": username, "password": "correct horse" }).to_string();
    let bearer = auth.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b.as_str()));
    }
    request_from(addr, Some(source), "POST", "/v1/accounts", &headers, Some(body.as_bytes())).await
}

/// Registrations per address in the test servers (high: most tests create many).
const REGISTRATIONS: u32 = 1000;

// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn create_account_and_duplicate() {
    let s = start(config()).await;
    let r = register(s.addr, "Alice", "correct horse").await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json(), json!({ "username": "alice", "jid": "alice@example.test" }));

    let stored = s.state.store.account("alice").await.unwrap().unwrap();
    assert_eq!(stored.scram_sha1.hash, "SHA-1");
    assert_eq!(stored.scram_sha1.stored_key.len(), 20);
    assert_eq!(stored.scram_sha256.hash, "SHA-256");
    assert_eq!(stored.scram_sha256.stored_key.len(), 32);
    assert_eq!(stored.scram_sha256.iterations, 16);

    let r = register(s.addr, "alice", "another password").await;
    assert_eq!((r.status, r.error_code().as_str()), (409, "account_exists"));
    let r = register(s.addr, "ALICE", "another password").await;
    assert_eq!((r.status, r.error_code().as_str()), (409, "account_exists"));
}

#[tokio::test]
async fn bad_usernames_and_passwords() {
    let s = start(config()).await;
    for bad in ["", "-alice", "al ice", "alice@example.test", &"a".repeat(65), "é"] {
        let r = register(s.addr, bad, "correct horse").await;
        assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_username"), "{bad:?}");
    }
    let r = register(s.addr, "bob", "short").await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "weak_password"));
    let r = register(s.addr, "bob", &"x".repeat(1025)).await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "weak_password"));
    // SASLprep prohibits control characters.
    let r = register(s.addr, "bob", "correct\u{7}horse").await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "weak_password"));
    assert!(!s.state.store.account_exists("bob").await.unwrap());
    let r = register(s.addr, "bob", &"x".repeat(1024)).await;
    assert_eq!(r.status, 201);
}

#[tokio::test]
async fn closed_registration_needs_the_admin_token() {
    let s = start(ApiConfig { open_registration: false, ..config() }).await;
    let body = json!({ "username": "carol", "password": "correct horse" });
    let r = post_json(s.addr, "/v1/accounts", &body, None).await;
    assert_eq!((r.status, r.error_code().as_str()), (403, "forbidden"));
    let r = post_json(s.addr, "/v1/accounts", &body, Some("wrong-token")).await;
    assert_eq!((r.status, r.error_code().as_str()), (403, "forbidden"));
    let r = post_json(s.addr, "/v1/accounts", &body, Some(ADMIN)).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json()["jid"], "carol@example.test");
    // Authorization is checked before the body is even parsed.
    let r = request(s.addr, "POST", "/v1/accounts", &[("Content-Type", "application/json")], Some(b"{oops")).await;
    assert_eq!((r.status, r.error_code().as_str()), (403, "forbidden"));

    // Without an admin token configured, nothing gets in.
    let s = start(ApiConfig { open_registration: false, admin_token: None, ..config() }).await;
    let r = post_json(s.addr, "/v1/accounts", &body, Some(ADMIN)).await;
    assert_eq!((r.status, r.error_code().as_str()), (403, "forbidden"));
}

#[tokio::test]
async fn guessing_the_admin_token_is_rate_limited() {
    let s = start(ApiConfig { open_registration: false, ..config() }).await;
    let body = json!({ "username": "carol", "password": "correct horse" });
    for _ in 0..3 {
        let r = post_json(s.addr, "/v1/accounts", &body, Some("guess")).await;
        assert_eq!(r.status, 403);
    }
    let r = post_json(s.addr, "/v1/accounts", &body, Some(ADMIN)).await;
    assert_eq!((r.status, r.error_code().as_str()), (429, "rate_limited"));
    assert!(r.header("retry-after").is_some());
}

#[tokio::test]
async fn session_login() {
    let s = start(config()).await;
    assert_eq!(register(s.addr, "alice", "correct horse").await.status, 201);

    let r = login(s.addr, "Alice", "correct horse").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let v = r.json();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["jid"], "alice@example.test");
    let token = v["token"].as_str().unwrap();
    assert_eq!(token.len(), 43);
    let expires =
        time::OffsetDateTime::parse(v["expires_at"].as_str().unwrap(), &time::format_description::well_known::Rfc3339)
            .unwrap()
            .unix_timestamp();
    assert!((expires - unix_now() - 3600).abs() <= 5, "{v}");
    // Only the hash is stored.
    let rec = s.state.store.lookup_token(TokenKind::HttpSession, tokens::hash_token(token), unix_now()).await.unwrap();
    assert_eq!(rec.unwrap().username, "alice");

    let r = login(s.addr, "alice", "wrong password").await;
    assert_eq!((r.status, r.error_code().as_str()), (401, "invalid_credentials"));
    let unknown = login(s.addr, "nobody", "correct horse").await;
    assert_eq!((unknown.status, unknown.error_code()), (401, r.error_code()));
    assert_eq!(unknown.json(), r.json());
    let r = login(s.addr, "not a username!", "x").await;
    assert_eq!((r.status, r.error_code().as_str()), (401, "invalid_credentials"));
}

#[tokio::test]
async fn failures_block_the_address_not_the_owner() {
    let s = start(config()).await;
    assert_eq!(register(s.addr, "alice", "correct horse").await.status, 201);
    for _ in 0..3 {
        let r = login_from(s.addr, "127.0.0.2", "alice", "wrong password").await;
        assert_eq!(r.status, 401);
    }
    // The failing address is refused, even with the right password...
    let r = login_from(s.addr, "127.0.0.2", "alice", "correct horse").await;
    assert_eq!((r.status, r.error_code().as_str()), (429, "rate_limited"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // ... but the owner from another address gets in at once.
    let started = std::time::Instant::now();
    assert_eq!(login_from(s.addr, "127.0.0.3", "alice", "correct horse").await.status, 200);
    assert!(started.elapsed() < waddle_sasl::FIRST_ACCOUNT_DELAY, "{:?}", started.elapsed());
}

#[tokio::test]
async fn an_account_under_distributed_attack_slows_down_but_stays_open() {
    let s = start(config()).await;
    assert_eq!(register(s.addr, "alice", "correct horse").await.status, 201);
    // Six failures (the test ceiling) from two addresses, three each.
    for source in ["127.0.0.4", "127.0.0.5"] {
        for _ in 0..3 {
            assert_eq!(login_from(s.addr, source, "alice", "wrong password").await.status, 401);
        }
    }
    // A clean address is delayed, then verified: the right password gets in.
    let started = std::time::Instant::now();
    assert_eq!(login_from(s.addr, "127.0.0.6", "alice", "correct horse").await.status, 200);
    assert!(started.elapsed() >= waddle_sasl::FIRST_ACCOUNT_DELAY, "{:?}", started.elapsed());
    // ... and a wrong one from a clean address fails normally (and counts).
    assert_eq!(login_from(s.addr, "127.0.0.7", "alice", "wrong password").await.status, 401);
    // An address that failed for alice is refused while the account is over its ceiling,
    // though it has not reached its own limit (127.0.0.8: one failure).
    let s2 = start(config()).await;
    assert_eq!(register(s2.addr, "alice", "correct horse").await.status, 201);
    for source in ["127.0.0.4", "127.0.0.5"] {
        for _ in 0..2 {
            assert_eq!(login_from(s2.addr, source, "alice", "wrong password").await.status, 401);
        }
    }
    assert_eq!(login_from(s2.addr, "127.0.0.8", "alice", "wrong password").await.status, 401);
    assert_eq!(login_from(s2.addr, "127.0.0.9", "alice", "wrong password").await.status, 401);
    let r = login_from(s2.addr, "127.0.0.8", "alice", "correct horse").await;
    assert_eq!((r.status, r.error_code().as_str()), (429, "rate_limited"));
    // Other accounts are untouched.
    assert_eq!(register(s2.addr, "bob", "correct horse").await.status, 201);
    assert_eq!(login_from(s2.addr, "127.0.0.8", "bob", "correct horse").await.status, 200);
}

#[tokio::test]
async fn repeated_failures_are_rate_limited_per_ip() {
    let s = start(config()).await;
    assert_eq!(register(s.addr, "alice", "correct horse").await.status, 201);
    for user in ["u1", "u2", "u3"] {
        assert_eq!(login(s.addr, user, "wrong password").await.status, 401);
    }
    let r = login(s.addr, "alice", "correct horse").await;
    assert_eq!((r.status, r.error_code().as_str()), (429, "rate_limited"));
    assert!(s.state.auth_limiter.lock().unwrap().check_address("127.0.0.1", std::time::Instant::now()).is_err());
}

#[tokio::test]
async fn works_without_connect_info() {
    let s = start_with(config(), false).await;
    assert_eq!(register(s.addr, "alice", "correct horse").await.status, 201);
    assert_eq!(login(s.addr, "alice", "wrong password").await.status, 401);
    assert_eq!(login(s.addr, "alice", "correct horse").await.status, 200);
    // Without addresses only the account-wide ceiling (6 here) applies.
    for _ in 0..5 {
        assert_eq!(login(s.addr, "alice", "wrong password").await.status, 401);
    }
    assert_eq!(login(s.addr, "alice", "correct horse").await.status, 429);
}

#[tokio::test]
async fn account_creation_is_limited_per_address() {
    let s = start(config()).await;
    *s.state.registration_limiter.lock().unwrap() = FailureLimiter::new(2, Duration::from_secs(60), 100);
    assert_eq!(register_from(s.addr, "127.0.0.2", "reg1", None).await.status, 201);
    // Refused attempts do not count; creations do.
    assert_eq!(register_from(s.addr, "127.0.0.2", "reg1", None).await.status, 409);
    assert_eq!(register_from(s.addr, "127.0.0.2", "reg2", None).await.status, 201);
    let r = register_from(s.addr, "127.0.0.2", "reg3", None).await;
    assert_eq!((r.status, r.error_code().as_str()), (429, "rate_limited"));
    assert!(r.header("retry-after").is_some());
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("too many accounts"), "{r:?}");
    assert!(!s.state.store.account_exists("reg3").await.unwrap());
    // Other addresses, and the admin token, are not limited.
    assert_eq!(register_from(s.addr, "127.0.0.3", "reg3", None).await.status, 201);
    assert_eq!(register_from(s.addr, "127.0.0.2", "reg4", Some(ADMIN)).await.status, 201);
    // A wrong bearer on an open node is just not the admin.
    assert_eq!(register_from(s.addr, "127.0.0.2", "reg5", Some("guess")).await.status, 429);
}

#[tokio::test]
async fn did_derived_usernames_cannot_be_registered() {
    let s = start(config()).await;
    for name in ["ewvi7nxzyoun6zhxrhs64oiz", "EWVI7NXZYOUN6ZHXRHS64OIZ", "web-a-b", "web-example-com-8080"] {
        let r = register(s.addr, name, "correct horse").await;
        assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_username"), "{name}");
        assert!(r.json()["error"]["message"].as_str().unwrap().contains("reserved"), "{r:?}");
    }
    // Not even the admin may take one.
    let r =
        post_json(s.addr, "/v1/accounts", &json!({ "username": "web-a-b", "password": "correct horse" }), Some(ADMIN))
            .await;
    assert_eq!(r.status, 400);
    assert_eq!(register(s.addr, "webmaster", "correct horse").await.status, 201);
}

#[tokio::test]
async fn xmpp_token_exchange() {
    let s = start(config()).await;
    assert_eq!(register(s.addr, "alice", "correct horse").await.status, 201);
    let session = login(s.addr, "alice", "correct horse").await.json()["token"].as_str().unwrap().to_owned();

    let r = post_json(s.addr, "/auth/xmpp-token", &json!({}), Some(&session)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["jid"], "alice@example.test");
    assert_eq!(v["xmpp_host"], "xmpp.example.test");
    assert_eq!(v["xmpp_port"], 5222);
    assert_eq!(v["websocket_url"], "wss://example.test/xmpp-websocket");
    assert!(v["expires_at"].as_str().unwrap().ends_with('Z'));
    let xmpp = v["token"].as_str().unwrap();
    assert_ne!(xmpp, session);
    let rec = s.state.store.lookup_token(TokenKind::Xmpp, tokens::hash_token(xmpp), unix_now()).await.unwrap();
    assert_eq!(rec.unwrap().username, "alice");
    // A bodyless request works too; the XMPP token itself is not a session token.
    let r = request(s.addr, "POST", "/auth/xmpp-token", &[("Authorization", &format!("bearer {session}"))], None).await;
    assert_eq!(r.status, 200);
    let r = request(s.addr, "POST", "/auth/xmpp-token", &[("Authorization", &format!("Bearer {xmpp}"))], None).await;
    assert_eq!(r.status, 401);

    for auth in [None, Some("Bearer "), Some("Bearer nope"), Some("Basic YWxpY2U6eA=="), Some(session.as_str())] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let r = request(s.addr, "POST", "/auth/xmpp-token", &headers, None).await;
        assert_eq!((r.status, r.error_code().as_str()), (401, "unauthorized"), "{auth:?}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }

    // Deleting the account revokes its session.
    s.state.store.delete_account("alice").await.unwrap();
    let r = post_json(s.addr, "/auth/xmpp-token", &json!({}), Some(&session)).await;
    assert_eq!((r.status, r.error_code().as_str()), (401, "unauthorized"));
}

#[tokio::test]
async fn expired_session_tokens_are_refused() {
    for ttl in [0, -10] {
        let s = start(ApiConfig { session_ttl_secs: ttl, ..config() }).await;
        assert_eq!(register(s.addr, "alice", "correct horse").await.status, 201);
        let r = login(s.addr, "alice", "correct horse").await;
        assert_eq!(r.status, 200);
        let token = r.json()["token"].as_str().unwrap().to_owned();
        let r = post_json(s.addr, "/auth/xmpp-token", &json!({}), Some(&token)).await;
        assert_eq!((r.status, r.error_code().as_str()), (401, "unauthorized"), "ttl {ttl}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
}

#[tokio::test]
async fn health_and_ready() {
    let s = start(config()).await;
    let r = request(s.addr, "GET", "/health", &[], None).await;
    assert_eq!((r.status, r.json()), (200, json!({ "status": "ok" })));
    let r = request(s.addr, "GET", "/ready", &[], None).await;
    assert_eq!((r.status, r.json()), (200, json!({ "status": "ready" })));
    s.state.ready.store(false, Ordering::SeqCst);
    let r = request(s.addr, "GET", "/ready", &[], None).await;
    assert_eq!((r.status, r.error_code().as_str()), (503, "not_ready"));
    let r = request(s.addr, "GET", "/health", &[], None).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn malformed_requests_get_the_envelope() {
    let s = start(config()).await;
    let json_ct = [("Content-Type", "application/json")];
    let r = request(s.addr, "POST", "/v1/accounts", &json_ct, Some(b"{\"username\": ")).await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_json"));
    let r = request(s.addr, "POST", "/auth/session", &json_ct, Some(b"not json")).await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_json"));
    let r = request(s.addr, "POST", "/v1/accounts", &json_ct, Some(b"{\"username\":\"bob\"}")).await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_request"));
    let r = request(s.addr, "POST", "/auth/session", &json_ct, Some(b"{\"username\":1,\"password\":\"x\"}")).await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_request"));
    let r = request(s.addr, "POST", "/auth/session", &[("Content-Type", "text/plain")], Some(b"{}")).await;
    assert_eq!((r.status, r.error_code().as_str()), (415, "unsupported_media_type"));
    let r = request(s.addr, "POST", "/auth/session", &[], None).await;
    assert_eq!((r.status, r.error_code().as_str()), (415, "unsupported_media_type"));
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let s = start(config()).await;
    let r = request(s.addr, "GET", "/nope", &[], None).await;
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));
    let r = request(s.addr, "POST", "/v1/accounts/alice", &[], None).await;
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));
    let r = request(s.addr, "GET", "/v1/accounts", &[], None).await;
    assert_eq!((r.status, r.error_code().as_str()), (405, "method_not_allowed"));
    let r = request(s.addr, "DELETE", "/health", &[], None).await;
    assert_eq!((r.status, r.error_code().as_str()), (405, "method_not_allowed"));
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let s = start(config()).await;
    let big = format!("{{\"username\":\"bob\",\"password\":\"{}\"}}", "x".repeat(MAX_BODY_BYTES));
    let r =
        request(s.addr, "POST", "/v1/accounts", &[("Content-Type", "application/json")], Some(big.as_bytes())).await;
    assert_eq!((r.status, r.error_code().as_str()), (413, "payload_too_large"));

    // Chunked, without a Content-Length: caught by the extractor's limit.
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    let head = "POST /auth/session HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
                Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 16 * 1024];
    for _ in 0..5 {
        let _ = stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await;
        let _ = stream.write_all(&chunk).await;
        let _ = stream.write_all(b"\r\n").await;
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let r = parse_reply(&raw);
    assert_eq!((r.status, r.error_code().as_str()), (413, "payload_too_large"));
}

#[tokio::test]
async fn create_account_helper() {
    let store = Store::open(Path::new(":memory:")).await.unwrap();
    create_account(&store, "Dave", "pw", 16).await.unwrap();
    let rec = store.account("dave").await.unwrap().unwrap();
    let creds = waddle_sasl::ScramCredentials {
        hash: waddle_sasl::ScramHash::Sha1,
        salt: rec.scram_sha1.salt.clone(),
        iterations: rec.scram_sha1.iterations,
        stored_key: rec.scram_sha1.stored_key.clone(),
        server_key: rec.scram_sha1.server_key.clone(),
    };
    assert!(creds.verify_password("pw"));
    assert!(!creds.verify_password("pW"));
    assert_ne!(rec.scram_sha1.salt, rec.scram_sha256.salt);
    assert_eq!(create_account(&store, "dave", "pw", 16).await.unwrap_err().code(), "account_exists");
    assert_eq!(create_account(&store, "da ve", "pw", 16).await.unwrap_err().code(), "invalid_username");
    assert_eq!(create_account(&store, "eve", "", 16).await.unwrap_err().code(), "weak_password");
    assert_eq!(create_account(&store, "eve", &"p".repeat(1025), 16).await.unwrap_err().code(), "weak_password");
    let e = create_account(&store, "eve", "pw", 0).await.unwrap_err();
    assert_eq!((e.code(), e.status().as_u16()), ("internal_error", 500));
    assert!(!store.account_exists("eve").await.unwrap());
}

#[test]
fn config_debug_hides_the_admin_token() {
    let text = format!("{:?}", config());
    assert!(!text.contains(ADMIN));
    assert!(text.contains("<redacted>"));
}
