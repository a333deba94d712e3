//! The workload: real XMPP clients (the bench's client code) spread over the nodes,
//! each in a few rooms, sending groupchat and 1:1 messages with unique ids, recording
//! what was acknowledged and what arrived, reconnecting elsewhere when its node fails,
//! and reading the archives at the end for the checker.
//!
//! A client declares its connection broken when the stream ends or when the server
//! leaves stanzas unacknowledged (XEP-0198) for [`ACK_DEADLINE`]: a paused or cut-off
//! node never closes the TCP connection, so silence is the only signal.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use waddle_bench::conn::{Auth, Connector, Credentials, SharedWriter};
use waddle_bench::sm::SmShared;
use waddle_xml::{Element, NS_CLIENT};

use crate::checker::{ArchiveRead, Entry, Sent, Target};
use crate::cluster::Directory;
use crate::prng::Prng;

const NS_MUC: &str = "http://jabber.org/protocol/muc";
const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const NS_MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
const NS_SID: &str = "urn:xmpp:sid:0";
const NS_MAM: &str = "urn:xmpp:mam:2";
const NS_RSM: &str = "http://jabber.org/protocol/rsm";
const NS_FORWARD: &str = "urn:xmpp:forward:0";
const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

pub const DOMAIN: &str = "localhost";
pub const MUC_DOMAIN: &str = "muc.localhost";

/// Unacknowledged this long: the connection is considered dead.
const ACK_DEADLINE: Duration = Duration::from_secs(6);
const LOGIN_TIMEOUT: Duration = Duration::from_secs(8);
const WRITE_TIMEOUT: Duration = Duration::from_secs(3);
const PAGE_TIMEOUT: Duration = Duration::from_secs(15);
/// Archive pages read at most per archive (of [`PAGE_SIZE`]): far above a run's volume.
const MAX_PAGES: usize = 500;
const PAGE_SIZE: usize = 100;

/// Where the run is; clients watch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Load,
    /// Stop sending; let acknowledgements settle.
    Drain,
    /// The cluster has healed and converged: read the archives.
    Check,
    /// Give up whatever is still going on.
    Done,
}

#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub password: String,
    pub rooms: Vec<String>,
    /// The node index it starts on.
    pub home: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Reconnect {
    pub user: String,
    pub from_node: u64,
    pub to_node: u64,
    pub reason: String,
    pub broke_ms: u64,
    pub ready_ms: u64,
    /// The XEP-0198 session was resumed (else: a fresh login).
    pub resumed: bool,
}

/// What every client records (one lock, taken briefly).
#[derive(Debug, Default)]
pub struct Record {
    pub sent: BTreeMap<String, Sent>,
    pub live: BTreeMap<String, BTreeSet<String>>,
    pub reconnects: Vec<Reconnect>,
    pub room_reads: BTreeMap<String, Vec<ArchiveRead>>,
    pub chat_reads: BTreeMap<String, ArchiveRead>,
    /// Stanza errors and other notable events, counted by kind.
    pub events: BTreeMap<String, u64>,
}

pub type Shared = Arc<Mutex<Record>>;

pub struct Clock(Instant);

impl Clock {
    pub fn new() -> Clock {
        Clock(Instant::now())
    }

    pub fn ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

fn with<T>(rec: &Shared, f: impl FnOnce(&mut Record) -> T) -> Option<T> {
    rec.lock().ok().map(|mut r| f(&mut r))
}

fn event(rec: &Shared, what: impl Into<String>) {
    with(rec, |r| *r.events.entry(what.into()).or_insert(0) += 1);
}

/// The workload's message id carried by a stanza: origin-id, else the body's.
fn msg_id(el: &Element) -> Option<String> {
    if let Some(id) = el.get_child("origin-id", NS_SID).and_then(|o| o.attr("id")) {
        return Some(id.to_owned());
    }
    el.get_child("body", NS_CLIENT).and_then(|b| b.text().strip_prefix("chaos ").map(str::to_owned))
}

fn stanza_id(el: &Element, by: &str) -> Option<String> {
    el.children()
        .filter(|c| c.is("stanza-id", NS_SID) && c.attr("by") == Some(by))
        .find_map(|c| c.attr("id").map(str::to_owned))
}

fn error_condition(el: &Element) -> String {
    el.get_child("error", NS_CLIENT)
        .and_then(|e| e.children().find(|c| c.ns() == NS_STANZAS))
        .map(|c| c.name().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('\'', "&apos;")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RoomState {
    Out { retry_at: Instant },
    Joining { since: Instant },
    In,
}

/// One connected session: the writer, the reader's output and its SM counters.
struct Conn {
    node: u64,
    resumed: bool,
    writer: SharedWriter,
    rx: mpsc::Receiver<Element>,
    sm: Arc<SmShared>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Conn {
    /// Sends one stanza; returns its XEP-0198 number (how many stanzas were sent on
    /// this stream up to and including it).
    async fn send(&self, stanza: String) -> anyhow::Result<u64> {
        let mut buf = stanza.into_bytes();
        let mut w =
            tokio::time::timeout(WRITE_TIMEOUT, self.writer.lock()).await.map_err(|_| anyhow!("writer busy"))?;
        tokio::time::timeout(WRITE_TIMEOUT, w.send_stanza(&mut buf)).await.map_err(|_| anyhow!("write stalled"))??;
        Ok(self.sm.stats().sent)
    }

    async fn request_ack(&self) -> anyhow::Result<()> {
        let mut w =
            tokio::time::timeout(WRITE_TIMEOUT, self.writer.lock()).await.map_err(|_| anyhow!("writer busy"))?;
        tokio::time::timeout(WRITE_TIMEOUT, w.request_ack()).await.map_err(|_| anyhow!("write stalled"))??;
        Ok(())
    }
}

pub struct Client {
    pub idx: usize,
    pub user: User,
    pub users: Vec<String>,
    pub connector: Connector,
    pub directory: Directory,
    pub rec: Shared,
    pub clock: Arc<Clock>,
    pub phase: watch::Receiver<Phase>,
    pub interval: Duration,
    pub seed: u64,
}

enum End {
    Broken(String),
    Finished,
}

impl Client {
    fn jid(&self) -> String {
        format!("{}@{DOMAIN}", self.user.name)
    }

    fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// The client's whole life: connect, load, reconnect as needed, read the
    /// archives, end. Bounded by the phases the harness sets.
    pub async fn run(mut self) {
        let mut rng = Prng::new(self.seed ^ (self.idx as u64).wrapping_mul(0x9e37_79b9));
        let mut seq = 0u64;
        let mut next_node = self.user.home;
        let mut broke: Option<(u64, u64, String)> = None;
        let mut salted = None;
        // The broken session's counters, to resume it, and its unacknowledged messages.
        let mut previous: Option<Arc<SmShared>> = None;
        let mut pending: VecDeque<(u64, String)> = VecDeque::new();
        let mut failed_rounds = 0u32;
        loop {
            if self.phase() == Phase::Done {
                return;
            }
            let Some((conn, at)) = self.connect(next_node, &mut salted, previous.as_deref()).await else {
                // Every node refused: back off (an account lost with its node is
                // refused for good, and a storm of logins is not a workload).
                failed_rounds = (failed_rounds + 1).min(4);
                tokio::time::sleep(Duration::from_millis(300 << failed_rounds)).await;
                continue;
            };
            failed_rounds = 0;
            // The next connection starts at a random node (healthy ones first), as a load
            // balancer spreads clients. Always `at + 1` sent every client of a failed node to
            // the same next one, and after a few faults all twelve sat on one node: its
            // pause then stopped every sender, which the failover figures took for a slow
            // failover.
            let nodes = self.directory.read().map_or(1, |d| d.len().max(1));
            next_node = at + 1 + rng.index(nodes);
            if let Some((from, broke_ms, reason)) = broke.take() {
                let r = Reconnect {
                    user: self.user.name.clone(),
                    from_node: from,
                    to_node: conn.node,
                    reason,
                    broke_ms,
                    ready_ms: self.clock.ms(),
                    resumed: conn.resumed,
                };
                with(&self.rec, |rec| rec.reconnects.push(r));
            }
            let node = conn.node;
            if !conn.resumed {
                // A new session: what the old one left unacknowledged stays so.
                pending.clear();
            }
            previous = Some(Arc::clone(&conn.sm));
            let mut conn = conn;
            let end = self.session(&mut conn, &mut rng, &mut seq, &mut pending).await;
            // The break is when the session gave up, not after the last words were read.
            let broke_ms = self.clock.ms();
            if matches!(end, End::Broken(_)) {
                self.read_what_arrived(&mut conn).await;
            }
            drop(conn);
            match end {
                End::Finished => return,
                End::Broken(reason) => {
                    event(&self.rec, format!("connection broken: {}", reason.split(':').next().unwrap_or_default()));
                    broke = Some((node, broke_ms, reason));
                }
            }
        }
    }

    /// Logs in on the first node that takes it, healthy nodes first, starting at
    /// `start`; returns the connection and the node's index in the directory.
    async fn connect(
        &self,
        start: usize,
        salted: &mut Option<waddle_sasl::SaltedPassword>,
        mut previous: Option<&SmShared>,
    ) -> Option<(Conn, usize)> {
        let endpoints = self.directory.read().ok()?.clone();
        if endpoints.is_empty() {
            return None;
        }
        let n = endpoints.len();
        let order: Vec<usize> = (0..n)
            .map(|k| (start + k) % n)
            .filter(|&i| endpoints[i].healthy)
            .chain((0..n).map(|k| (start + k) % n).filter(|&i| !endpoints[i].healthy))
            .collect();
        for i in order {
            let ep = &endpoints[i];
            let creds = Credentials {
                username: self.user.name.clone(),
                secret: self.user.password.clone(),
                auth: Auth::ScramSha256,
                salted: salted.clone(),
            };
            // Resumption first (XEP-0198), on the first node tried only: a session
            // lives on one node, and a second node will not have it either.
            if let Some(prev) = previous.take().filter(|p| p.resume_id().is_some()) {
                let resume = tokio::time::timeout(LOGIN_TIMEOUT, self.connector.resume(&ep.c2s, &creds, prev)).await;
                match resume {
                    Ok(Ok(Some(stream))) => {
                        event(&self.rec, "session resumed");
                        return Some((self.spawn_reader(stream, ep.id, true)?, i));
                    }
                    Ok(Ok(None)) => event(&self.rec, "resume refused (<failed/>)"),
                    Ok(Err(e)) => event(&self.rec, format!("resume failed: {}", first_words(&format!("{e:#}")))),
                    Err(_) => event(&self.rec, "resume timed out"),
                }
            }
            let resource = format!("chaos{}", self.clock.ms());
            let login = tokio::time::timeout(LOGIN_TIMEOUT, self.connector.login(&ep.c2s, &creds, &resource)).await;
            let session = match login {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    event(&self.rec, format!("login failed: {}", first_words(&format!("{e:#}"))));
                    continue;
                }
                Err(_) => {
                    event(&self.rec, "login timed out");
                    continue;
                }
            };
            if session.salted.is_some() {
                salted.clone_from(&session.salted);
            }
            match self.spawn_reader(session.stream, ep.id, false) {
                Some(conn) => return Some((conn, i)),
                None => event(&self.rec, "server did not enable stream management"),
            }
        }
        None
    }

    /// Splits a negotiated stream; its reader forwards stanzas to the session's
    /// channel from a task of its own. `None` without stream management.
    fn spawn_reader(&self, stream: waddle_bench::conn::XmppStream, node: u64, resumed: bool) -> Option<Conn> {
        let (mut reader, writer) = stream.into_split();
        let sm = reader.sm_shared()?;
        let (tx, rx) = mpsc::channel(1024);
        let task = tokio::spawn(async move {
            while let Ok(Some(el)) = reader.next().await {
                if tx.send(el).await.is_err() {
                    break;
                }
            }
        });
        Some(Conn { node, resumed, writer, rx, sm, reader: task })
    }

    /// What a broken connection had already delivered, or still delivers within 2 s (the
    /// reader runs until the server's end of the stream): a refusal among it counts. The
    /// session loop may have given up (a failed write, a missing acknowledgement) with
    /// stanzas read but not yet handled, and an error read before an `<a/>` must not be
    /// dropped while the `<a/>`, which the reader counts at once, is kept.
    async fn read_what_arrived(&self, conn: &mut Conn) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Some(el)) = tokio::time::timeout_at(deadline, conn.rx.recv()).await {
            if el.name() == "message" && el.attr("type") == Some("error") {
                self.note_refusal(&el);
            }
        }
    }

    /// A message error: the message it answers was refused.
    fn note_refusal(&self, el: &Element) {
        event(&self.rec, format!("message error: {}", error_condition(el)));
        if let Some(id) = el.attr("id") {
            with(&self.rec, |r| {
                if let Some(m) = r.sent.get_mut(id) {
                    m.refused = true;
                }
            });
        }
    }

    /// `pending`: the unacknowledged 1:1 messages, (XEP-0198 number, id); a resumed
    /// session goes on acknowledging those of the session it resumed.
    async fn session(
        &mut self,
        conn: &mut Conn,
        rng: &mut Prng,
        seq: &mut u64,
        pending: &mut VecDeque<(u64, String)>,
    ) -> End {
        let now = Instant::now();
        let mut rooms: BTreeMap<String, RoomState> =
            self.user.rooms.iter().map(|r| (r.clone(), RoomState::Out { retry_at: now })).collect();
        let mut oldest_unacked: Option<Instant> = None;
        let mut acked_seen = conn.sm.stats().acked;
        if let Err(e) = conn.send("<presence/>".to_owned()).await {
            return End::Broken(format!("initial presence: {e}"));
        }
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut next_send = Instant::now() + self.interval.mul_f64(rng.range(50, 150) as f64 / 100.0);
        let mut last_request = Instant::now();
        loop {
            tokio::select! {
                el = conn.rx.recv() => {
                    let Some(el) = el else { return End::Broken("stream ended".to_owned()) };
                    if let Err(e) = self.handle(conn, &el, &mut rooms).await {
                        return End::Broken(format!("write: {e}"));
                    }
                }
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            // Acknowledgements (XEP-0198): every 1:1 message covered is acknowledged.
            let acked = conn.sm.stats().acked;
            if acked > acked_seen {
                acked_seen = acked;
                oldest_unacked = None;
            }
            while pending.front().is_some_and(|(n, _)| *n <= acked) {
                if let Some((_, id)) = pending.pop_front() {
                    let t = self.clock.ms();
                    with(&self.rec, |r| {
                        if let Some(m) = r.sent.get_mut(&id) {
                            m.acked_ms = Some(t);
                        }
                    });
                }
            }
            let stats = conn.sm.stats();
            if stats.sent > stats.acked {
                let since = *oldest_unacked.get_or_insert(now);
                if now.duration_since(since) > ACK_DEADLINE {
                    return End::Broken(format!("nothing acknowledged for {ACK_DEADLINE:?}"));
                }
                if now.duration_since(last_request) > Duration::from_secs(1) {
                    last_request = now;
                    if let Err(e) = conn.request_ack().await {
                        return End::Broken(format!("write: {e}"));
                    }
                }
            }
            // Rooms: join what we are not in, again when a join goes unanswered.
            for (room, state) in rooms.iter_mut() {
                let due = match *state {
                    RoomState::Out { retry_at } => now >= retry_at,
                    RoomState::Joining { since } => now.duration_since(since) > Duration::from_secs(10),
                    RoomState::In => false,
                };
                if due && self.phase() <= Phase::Drain {
                    let join = format!(
                        "<presence to='{room}/{}'><x xmlns='{NS_MUC}'><history maxstanzas='0'/></x></presence>",
                        self.user.name
                    );
                    if let Err(e) = conn.send(join).await {
                        return End::Broken(format!("write: {e}"));
                    }
                    *state = RoomState::Joining { since: now };
                }
            }
            match self.phase() {
                Phase::Load if now >= next_send => {
                    next_send = now + self.interval.mul_f64(rng.range(50, 150) as f64 / 100.0);
                    if let Err(e) = self.send_one(conn, rng, seq, &rooms, pending).await {
                        return End::Broken(format!("write: {e}"));
                    }
                }
                Phase::Load | Phase::Drain => {}
                Phase::Check => {
                    if !pending.is_empty() && stats.sent > stats.acked {
                        continue;
                    }
                    return match self.read_archives(conn, &mut rooms).await {
                        Ok(()) => End::Finished,
                        Err(e) => End::Broken(format!("archive read: {e:#}")),
                    };
                }
                Phase::Done => return End::Finished,
            }
        }
    }

    async fn send_one(
        &self,
        conn: &Conn,
        rng: &mut Prng,
        seq: &mut u64,
        rooms: &BTreeMap<String, RoomState>,
        pending: &mut VecDeque<(u64, String)>,
    ) -> anyhow::Result<()> {
        let joined: Vec<&String> = rooms.iter().filter(|(_, s)| **s == RoomState::In).map(|(r, _)| r).collect();
        let others: Vec<&String> = self.users.iter().filter(|u| **u != self.user.name).collect();
        let to_room = ((*seq).is_multiple_of(2) || others.is_empty()) && !joined.is_empty();
        if !to_room && others.is_empty() {
            return Ok(());
        }
        let id = format!("{}-m{}", self.user.name, *seq);
        *seq += 1;
        let body = format!("<body>chaos {id}</body><origin-id xmlns='{NS_SID}' id='{id}'/>");
        let (target, stanza) = if to_room {
            let room = joined[rng.index(joined.len())].clone();
            let stanza = format!("<message type='groupchat' to='{room}' id='{id}'>{body}</message>");
            (Target::Room(room), stanza)
        } else {
            let to = others[rng.index(others.len())].clone();
            let stanza = format!("<message type='chat' to='{}@{DOMAIN}' id='{id}'>{body}</message>", escape(&to));
            (Target::Chat(to), stanza)
        };
        let sent = Sent {
            id: id.clone(),
            sender: self.user.name.clone(),
            target: target.clone(),
            sent_ms: self.clock.ms(),
            acked_ms: None,
            stanza_id: None,
            refused: false,
        };
        with(&self.rec, |r| r.sent.insert(id.clone(), sent));
        let number = conn.send(stanza).await?;
        if matches!(target, Target::Chat(_)) {
            pending.push_back((number, id));
        }
        Ok(())
    }

    async fn handle(&self, conn: &Conn, el: &Element, rooms: &mut BTreeMap<String, RoomState>) -> anyhow::Result<()> {
        let from = el.attr("from").unwrap_or_default();
        let (bare, resource) = from.split_once('/').unwrap_or((from, ""));
        match el.name() {
            "message" => {
                let kind = el.attr("type").unwrap_or("normal");
                if kind == "error" {
                    self.note_refusal(el);
                    // `wait` (the room is moving to another node): still an occupant, as
                    // the room rebuilds its occupants; sending goes on, as a person
                    // would. Anything else may mean we are out of the room: join again.
                    let temporary = el.get_child("error", NS_CLIENT).and_then(|e| e.attr("type")) == Some("wait");
                    if let Some(state) = rooms.get_mut(bare).filter(|_| !temporary) {
                        *state = RoomState::Out { retry_at: Instant::now() + Duration::from_secs(1) };
                    }
                    return Ok(());
                }
                let Some(id) = msg_id(el) else { return Ok(()) };
                let t = self.clock.ms();
                let me = self.user.name.clone();
                let reflected = kind == "groupchat" && resource == self.user.name && id.starts_with(&format!("{me}-"));
                let by = if kind == "groupchat" { bare.to_owned() } else { self.jid() };
                let sid = stanza_id(el, &by);
                with(&self.rec, |r| {
                    r.live.entry(me).or_default().insert(id.clone());
                    if reflected {
                        if let Some(m) = r.sent.get_mut(&id) {
                            m.acked_ms.get_or_insert(t);
                            m.stanza_id = sid;
                        }
                    }
                });
            }
            "presence" => {
                let Some(state) = rooms.get_mut(bare) else { return Ok(()) };
                if resource != self.user.name {
                    return Ok(());
                }
                match el.attr("type") {
                    Some("error") => {
                        event(&self.rec, format!("join refused: {}", error_condition(el)));
                        *state = RoomState::Out { retry_at: Instant::now() + Duration::from_secs(2) };
                    }
                    Some("unavailable") => {
                        event(&self.rec, "removed from a room");
                        *state = RoomState::Out { retry_at: Instant::now() + Duration::from_secs(1) };
                    }
                    _ => {
                        let codes: Vec<&str> = el
                            .get_child("x", NS_MUC_USER)
                            .map(|x| {
                                x.children().filter(|c| c.name() == "status").filter_map(|c| c.attr("code")).collect()
                            })
                            .unwrap_or_default();
                        if !codes.contains(&"110") {
                            return Ok(());
                        }
                        if codes.contains(&"201") {
                            let form = format!(
                                "<iq type='set' id='instant' to='{bare}'><query xmlns='{NS_MUC_OWNER}'>\
                                 <x xmlns='jabber:x:data' type='submit'/></query></iq>"
                            );
                            conn.send(form).await?;
                        }
                        *state = RoomState::In;
                    }
                }
            }
            "iq" if matches!(el.attr("type"), Some("get" | "set")) => {
                let id = escape(el.attr("id").unwrap_or_default());
                let answer = format!(
                    "<iq type='error' id='{id}' to='{}'><error type='cancel'><service-unavailable xmlns='{NS_STANZAS}'/></error></iq>",
                    escape(from)
                );
                let answer = if el.has_child("ping", "urn:xmpp:ping") {
                    format!("<iq type='result' id='{id}' to='{}'/>", escape(from))
                } else {
                    answer
                };
                conn.send(answer).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Reads every room of the user and its own archive, page by page, into the
    /// record. Stanzas that arrive meanwhile are still handled as live deliveries.
    async fn read_archives(&self, conn: &mut Conn, rooms: &mut BTreeMap<String, RoomState>) -> anyhow::Result<()> {
        let archives: Vec<Option<String>> =
            self.user.rooms.iter().map(|r| Some(r.clone())).chain(std::iter::once(None)).collect();
        let mut reads = Vec::new();
        for archive in archives {
            let entries = self.read_archive(conn, archive.as_deref(), rooms).await?;
            reads.push((archive, entries));
        }
        let me = self.user.name.clone();
        with(&self.rec, |r| {
            for (archive, (entries, complete)) in reads {
                let read = ArchiveRead { reader: me.clone(), node: conn.node, entries, complete, error: None };
                match archive {
                    Some(room) => r.room_reads.entry(room).or_default().push(read),
                    None => {
                        r.chat_reads.insert(me.clone(), read);
                    }
                }
            }
        });
        Ok(())
    }

    async fn read_archive(
        &self,
        conn: &mut Conn,
        archive: Option<&str>,
        rooms: &mut BTreeMap<String, RoomState>,
    ) -> anyhow::Result<(Vec<Entry>, bool)> {
        let mut entries = Vec::new();
        let mut after: Option<String> = None;
        let to = archive.map(|a| format!(" to='{a}'")).unwrap_or_default();
        for page in 0..MAX_PAGES {
            let qid = format!("mam{}-{page}", self.clock.ms());
            let rsm_after = after.as_deref().map(|a| format!("<after>{}</after>", escape(a))).unwrap_or_default();
            let query = format!(
                "<iq type='set' id='{qid}'{to}><query xmlns='{NS_MAM}' queryid='{qid}'>\
                 <set xmlns='{NS_RSM}'><max>{PAGE_SIZE}</max>{rsm_after}</set></query></iq>"
            );
            conn.send(query).await?;
            let deadline = Instant::now() + PAGE_TIMEOUT;
            let mut got = 0;
            let fin = loop {
                let el = tokio::time::timeout_at(deadline.into(), conn.rx.recv())
                    .await
                    .map_err(|_| anyhow!("no answer to a MAM page in {PAGE_TIMEOUT:?}"))?
                    .ok_or_else(|| anyhow!("stream ended during a MAM query"))?;
                if el.name() == "iq" && el.attr("id") == Some(qid.as_str()) {
                    if el.attr("type") != Some("result") {
                        bail!("MAM query of {} refused: {}", archive.unwrap_or("own archive"), error_condition(&el));
                    }
                    break el;
                }
                let result = el.get_child("result", NS_MAM).filter(|r| r.attr("queryid") == Some(qid.as_str()));
                let Some(result) = result else {
                    self.handle(conn, &el, rooms).await?;
                    continue;
                };
                got += 1;
                let inner = result.get_child("forwarded", NS_FORWARD).and_then(|f| f.get_child("message", NS_CLIENT));
                if let Some(msg_id) = inner.and_then(msg_id) {
                    entries.push(Entry { stanza_id: result.attr("id").unwrap_or_default().to_owned(), msg_id });
                }
            };
            let fin = fin.get_child("fin", NS_MAM);
            let complete = fin.is_some_and(|f| matches!(f.attr("complete"), Some("true" | "1")));
            let last = fin
                .and_then(|f| f.get_child("set", NS_RSM))
                .and_then(|s| s.get_child("last", NS_RSM))
                .map(Element::text);
            if complete || got == 0 || last.is_none() {
                return Ok((entries, true));
            }
            after = last;
        }
        Ok((entries, false))
    }
}

fn first_words(s: &str) -> String {
    s.split_whitespace().take(6).collect::<Vec<_>>().join(" ")
}
