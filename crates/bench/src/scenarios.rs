//! The scenarios. Each sets up its sessions (not measured), runs a bounded load
//! (measured) and drains what is still in flight (bounded too).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use waddle_xml::{Element, NS_CLIENT};

use crate::args::Args;
use crate::conn::{Auth, Connector, Credentials, Session, SharedWriter, StanzaReader};
use crate::measure::{rss_kib, CpuWindow, Latencies, Report};
use crate::sm::{SmShared, SmStats};
use crate::tally::{tally, Addressee, Inbox, Outbox, Receipt};

const NS_REGISTER: &str = "jabber:iq:register";
const NS_MUC: &str = "http://jabber.org/protocol/muc";
const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const NS_MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
/// How long in-flight messages may take to arrive after the load stops.
const DRAIN: Duration = Duration::from_secs(5);
/// How long the server may take to finish deferred work after the load.
const SETTLE: Duration = Duration::from_secs(60);
/// Body prefix of generated messages; anything else received is ignored.
const TAG: &str = "wb";

pub struct Bench {
    pub args: Args,
    pub connector: Connector,
    epoch: Instant,
}

impl Bench {
    pub fn new(args: Args) -> anyhow::Result<Bench> {
        let connector = Connector::new(&args.domain, args.tls, args.sm)?;
        Ok(Bench { args, connector, epoch: Instant::now() })
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn report(&self, scenario: &str) -> Report {
        Report {
            scenario: scenario.to_owned(),
            label: self.args.label.clone(),
            users: self.args.users,
            ..Report::default()
        }
    }

    /// Credentials for every user; tokens are fetched first for `--auth token`.
    async fn credentials(&self) -> anyhow::Result<Vec<Credentials>> {
        let mut creds = Vec::with_capacity(self.args.users);
        for i in 0..self.args.users {
            let username = self.args.username(i);
            let secret = match self.args.auth {
                Auth::Token => crate::http::xmpp_token(&self.args.api, &username, &self.args.password).await?,
                _ => self.args.password.clone(),
            };
            creds.push(Credentials { username, secret, auth: self.args.auth, salted: None });
        }
        Ok(creds)
    }

    /// Logs every user in (at most `--concurrency` at a time), in user order.
    async fn login_all(&self, creds: &[Credentials]) -> anyhow::Result<Vec<Session>> {
        let gate = Arc::new(Semaphore::new(self.args.concurrency));
        let mut tasks = JoinSet::new();
        for (i, c) in creds.iter().enumerate() {
            let (gate, connector, addr, c) =
                (Arc::clone(&gate), self.connector.clone(), self.args.target(i).to_owned(), c.clone());
            tasks.spawn(async move {
                let _permit = gate.acquire_owned().await?;
                let session = connector.login(&addr, &c, "bench").await;
                // Context, not a new error: main tells SmNotOffered apart by its type.
                session.map(|s| (i, s)).with_context(|| format!("login of {}", c.username))
            });
        }
        let mut sessions: Vec<Option<Session>> = (0..creds.len()).map(|_| None).collect();
        while let Some(joined) = tasks.join_next().await {
            let (i, s) = joined??;
            sessions[i] = Some(s);
        }
        Ok(sessions.into_iter().flatten().collect())
    }

    // ----- register -----

    pub async fn register(&self) -> anyhow::Result<Report> {
        let mut report = self.report("register");
        let gate = Arc::new(Semaphore::new(self.args.concurrency));
        let mut tasks = JoinSet::new();
        let cpu = CpuWindow::start(&self.args.server_pids);
        for i in 0..self.args.users {
            let (gate, connector, addr) = (Arc::clone(&gate), self.connector.clone(), self.args.target(i).to_owned());
            let (user, password) = (self.args.username(i), self.args.password.clone());
            tasks.spawn(async move {
                let _permit = gate.acquire_owned().await?;
                register_one(&connector, &addr, &user, &password).await
            });
        }
        let (mut created, mut existing) = (0u64, 0u64);
        while let Some(joined) = tasks.join_next().await {
            match joined? {
                Ok(true) => created += 1,
                Ok(false) => existing += 1,
                Err(e) => {
                    report.errors += 1;
                    if report.notes.len() < 5 {
                        report.notes.push(format!("{e:#}"));
                    }
                }
            }
        }
        report.cpu = cpu.stop();
        report.duration_s = report.cpu.wall.as_secs_f64();
        report.sent = self.args.users as u64;
        report.expected = report.sent;
        report.delivered = created + existing;
        report.lost = report.expected.saturating_sub(report.delivered);
        report.notes.push(format!("{created} created, {existing} already registered"));
        Ok(report)
    }

    // ----- login -----

    pub async fn login(&self) -> anyhow::Result<Report> {
        let mut report = self.report("login");
        let mut creds = self.credentials().await?;
        // One unmeasured login per user, as a real client's first: it caches the SCRAM
        // SaltedPassword (RFC 5802 §5.1), so the measured logins cost the client what a
        // returning client pays, and the generator is not the bottleneck.
        for s in self.login_all(&creds).await?.into_iter().enumerate() {
            let (i, session) = s;
            creds[i].salted = session.salted.clone();
            session.stream.close().await;
        }
        let creds = Arc::new(creds);
        let next = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + self.args.duration;
        let cpu = CpuWindow::start(&self.args.server_pids);
        let mut tasks = JoinSet::new();
        for _ in 0..self.args.concurrency {
            let (creds, next, connector) = (Arc::clone(&creds), Arc::clone(&next), self.connector.clone());
            let targets = self.args.targets.clone();
            tasks.spawn(async move {
                let mut lat = Latencies::default();
                let (mut ok, mut failed, mut first_error) = (0u64, 0u64, None);
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let c = &creds[i % creds.len()];
                    // A resource per attempt: with --users below --concurrency two logins
                    // of one account are in flight at once, and with the same resource the
                    // later bind would end the earlier session (a conflict that --sm, which
                    // reads after bind, would see as a failed login).
                    let resource = format!("bench{i}");
                    let t0 = Instant::now();
                    match connector.login(&targets[i % targets.len()], c, &resource).await {
                        Ok(session) => {
                            lat.record(u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX));
                            ok += 1;
                            session.stream.close().await;
                        }
                        Err(e) => {
                            failed += 1;
                            first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                }
                (lat, ok, failed, first_error)
            });
        }
        let mut lat = Latencies::default();
        while let Some(joined) = tasks.join_next().await {
            let (l, ok, failed, first_error) = joined?;
            lat.merge(l);
            report.sent += ok;
            report.errors += failed;
            if let Some(e) = first_error.filter(|_| report.notes.is_empty()) {
                report.notes.push(format!("first failed login: {e}"));
            }
        }
        report.cpu = cpu.stop();
        report.duration_s = report.cpu.wall.as_secs_f64();
        report.delivered = report.sent;
        report.expected = report.sent;
        report.latency = lat.percentiles();
        report.logins_per_s = Some(report.sent as f64 / report.duration_s);
        if self.args.sm.is_some() {
            // Every measured login enabled it (a login whose <enable/> failed is an error).
            report.sm = Some(SmStats { sessions: report.sent, ..SmStats::default() });
        }
        Ok(report)
    }

    // ----- idle -----

    pub async fn idle(&self) -> anyhow::Result<Report> {
        let mut report = self.report("idle");
        let Some(&pid) = self.args.server_pids.first() else {
            bail!("idle needs --server-pid to read the server's memory");
        };
        let creds = self.credentials().await?;
        let before = rss_kib(pid).ok_or_else(|| anyhow!("cannot read /proc/{pid}/status"))?;
        let cpu = CpuWindow::start(&self.args.server_pids);
        let mut sessions = self.login_all(&creds).await?;
        for s in &mut sessions {
            s.stream.send_stanza(b"<presence/>").await?;
        }
        let n = sessions.len();
        // With stream management the sessions are read (a server <r/> must be answered),
        // each by a task of its own; without it nothing reads them, as before.
        let (live, sessions) =
            if self.args.sm.is_some() { (Some(Live::start(sessions, None)), Vec::new()) } else { (None, sessions) };
        // Let the server settle (presence handling, buffers returned) before reading.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = rss_kib(pid).ok_or_else(|| anyhow!("cannot read /proc/{pid}/status"))?;
        report.cpu = cpu.stop();
        report.duration_s = report.cpu.wall.as_secs_f64();
        report.sent = n as u64;
        report.delivered = report.sent;
        report.expected = self.args.users as u64;
        report.lost = report.expected.saturating_sub(report.delivered);
        report.idle_rss_kib_per_session = Some((after - before) / n.max(1) as f64);
        report.notes.push(format!("server RSS {before:.0} KiB before, {after:.0} KiB with the sessions"));
        if let Some(live) = &live {
            self.record_sm(&mut report, live.final_acks().await);
        }
        tokio::time::sleep(self.args.hold).await;
        if let Some(live) = live {
            let (_, errors, _) = live.stop().await?;
            report.errors += errors;
        }
        for s in sessions {
            s.stream.close().await;
        }
        Ok(report)
    }

    // ----- chat and muc -----

    pub async fn chat(&self) -> anyhow::Result<Report> {
        let creds = self.credentials().await?;
        let mut sessions = self.login_all(&creds).await?;
        for s in &mut sessions {
            s.stream.send_stanza(b"<presence/>").await?;
        }
        let jids: Arc<Vec<String>> = Arc::new(sessions.iter().map(|s| s.full_jid.clone()).collect());
        self.run_load("chat", sessions, Destination::Chat(jids)).await
    }

    pub async fn muc(&self) -> anyhow::Result<Report> {
        let creds = self.credentials().await?;
        let sessions = self.login_all(&creds).await?;
        let room = match &self.args.room {
            Some(r) => format!("{r}@{}", self.args.muc_domain),
            None => format!("bench{}@{}", std::process::id() ^ (self.now_us() as u32), self.args.muc_domain),
        };
        // The first occupant creates the room (and accepts the instant room if it is
        // locked), then everyone else joins, at most --concurrency at a time.
        let mut numbered = sessions.into_iter().enumerate();
        let (_, mut first) = numbered.next().ok_or_else(|| anyhow!("no sessions"))?;
        join_room(&mut first, &room, &self.args.username(0), true).await?;
        let gate = Arc::new(Semaphore::new(self.args.concurrency));
        let mut joins = JoinSet::new();
        for (i, mut s) in numbered {
            let (gate, room, nick) = (Arc::clone(&gate), room.clone(), self.args.username(i));
            joins.spawn(async move {
                let _permit = gate.acquire_owned().await?;
                join_room(&mut s, &room, &nick, false).await.map(|()| (i, s))
            });
        }
        let mut joined: Vec<Option<Session>> = Vec::new();
        joined.resize_with(self.args.users, || None);
        joined[0] = Some(first);
        while let Some(r) = joins.join_next().await {
            let (i, s) = r??;
            joined[i] = Some(s);
        }
        let all: Vec<Session> = joined.into_iter().flatten().collect();
        if all.len() != self.args.users {
            bail!("only {} of {} occupants joined", all.len(), self.args.users);
        }
        self.run_load("muc", all, Destination::Room(Arc::new(room))).await
    }

    /// Runs the message load over logged-in sessions: one reader and one writer task per
    /// session. In a room every session is an occupant (all joined before the load and
    /// none leaves), so every message is expected by every session, the sender too
    /// (XEP-0045 §7.4 reflects it).
    async fn run_load(&self, scenario: &str, sessions: Vec<Session>, dest: Destination) -> anyhow::Result<Report> {
        let mut report = self.report(scenario);
        let n = sessions.len();
        let window = self.args.window;
        let permits: Arc<Vec<Semaphore>> = Arc::new((0..n).map(|_| Semaphore::new(window)).collect());
        let delivered = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(AtomicU64::new(0));
        let in_room = matches!(dest, Destination::Room(_));
        let fanout = if in_room { n as u64 } else { 1 };
        let live = Live::start(
            sessions,
            Some(ReaderCtx {
                me: 0,
                senders: n,
                permits: Arc::clone(&permits),
                delivered: Arc::clone(&delivered),
                epoch: self.epoch,
                in_room,
            }),
        );
        // Let presence echoes and join floods pass before measuring.
        tokio::time::sleep(Duration::from_millis(500)).await;
        delivered.store(0, Ordering::Relaxed);

        let cpu = CpuWindow::start(&self.args.server_pids);
        let start = Instant::now();
        let deadline = start + self.args.duration;
        let mut tasks = JoinSet::new();
        let per_sender_rate = if self.args.rate > 0.0 { Some(self.args.rate / n as f64) } else { None };
        for (i, writer) in live.writers.iter().enumerate() {
            let w = WriterCtx {
                me: i,
                n,
                dest: dest.clone(),
                permits: Arc::clone(&permits),
                sent: Arc::clone(&sent),
                epoch: self.epoch,
                start,
                deadline,
                rate: per_sender_rate,
            };
            tasks.spawn(write_messages(Arc::clone(writer), w));
        }
        let mut write_errors = 0u64;
        let mut outboxes = Vec::with_capacity(n);
        while let Some(r) = tasks.join_next().await {
            let (outbox, result) = r?;
            if let Err(e) = result {
                write_errors += 1;
                if write_errors == 1 {
                    report.notes.push(format!("first failed write: {e:#}"));
                }
            }
            outboxes.push(outbox);
        }
        let total_sent = sent.load(Ordering::Relaxed);
        let drain_until = Instant::now() + DRAIN;
        while delivered.load(Ordering::Relaxed) < total_sent * fanout && Instant::now() < drain_until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let wall = start.elapsed();
        let settled = cpu.settle(SETTLE).await;
        report.cpu = cpu.stop_with_wall(wall);
        if settled > Duration::from_millis(300) {
            report
                .notes
                .push(format!("server busy {:.1} s after the load; that CPU is included", settled.as_secs_f64()));
        }
        // After the measured window: the last <r/> and its <a/> cost nothing measured.
        if self.args.sm.is_some() {
            self.record_sm(&mut report, live.final_acks().await);
        }
        let (mut lat, errors, inboxes) = live.stop().await?;
        report.errors += errors + write_errors;
        report.duration_s = report.cpu.wall.as_secs_f64();
        report.sent = outboxes.iter().map(Outbox::total).sum();
        let room: Vec<u32> = if in_room { (0..n as u32).collect() } else { Vec::new() };
        let t = tally(&outboxes, &inboxes, &room);
        report.expected = t.expected;
        report.delivered = t.delivered;
        report.lost = t.lost;
        report.duplicated = t.duplicated;
        report.misrouted = t.misrouted;
        report.latency = lat.percentiles();
        if let Some(rate) = per_sender_rate {
            report.notes.push(format!("open loop, {:.0} msg/s offered", rate * n as f64));
        } else {
            report.notes.push(format!("closed loop, window {window} per sender"));
        }
        Ok(report)
    }

    /// Puts a run's stream management totals in the report; protocol errors (and
    /// sessions whose last request went unanswered) count as errors too.
    fn record_sm(&self, report: &mut Report, (stats, first_error): (SmStats, Option<String>)) {
        report.errors += stats.errors;
        if let Some(e) = first_error {
            report.notes.push(format!("stream management: {e}"));
        }
        if let Some(config) = self.args.sm {
            let every = match config.request_every {
                0 => "only at the end".to_owned(),
                n => format!("every {n} stanzas"),
            };
            report.notes.push(format!(
                "stream management: client <r/> {every}{}",
                if config.resume { ", resumable sessions" } else { "" }
            ));
        }
        report.sm = Some(stats);
    }
}

/// Sessions being read, each by a task of its own, with their shared writers.
struct Live {
    readers: JoinSet<(Latencies, u64, Option<Inbox>)>,
    writers: Vec<SharedWriter>,
    sm: Vec<Arc<SmShared>>,
    stop: watch::Sender<bool>,
}

impl Live {
    /// Splits the sessions and starts their readers; `ctx` (with `me` set per session)
    /// for the load's readers, `None` for readers that only keep the session answered.
    fn start(sessions: Vec<Session>, ctx: Option<ReaderCtx>) -> Live {
        let (stop, stop_rx) = watch::channel(false);
        let mut live =
            Live { readers: JoinSet::new(), writers: Vec::with_capacity(sessions.len()), sm: Vec::new(), stop };
        for (i, session) in sessions.into_iter().enumerate() {
            let (reader, writer) = session.stream.into_split();
            live.sm.extend(reader.sm_shared());
            let ctx = ctx.as_ref().map(|c| ReaderCtx {
                me: i,
                senders: c.senders,
                permits: Arc::clone(&c.permits),
                delivered: Arc::clone(&c.delivered),
                epoch: c.epoch,
                in_room: c.in_room,
            });
            live.readers.spawn(read_loop(reader, ctx, stop_rx.clone()));
            live.writers.push(writer);
        }
        live
    }

    /// With stream management: every session asks for a last acknowledgement, then waits
    /// (at most [`DRAIN`]) until the server has acknowledged everything every session
    /// sent and answered every `<r/>`. A session left short counts as a protocol error.
    /// Returns the totals and the first error seen.
    async fn final_acks(&self) -> (SmStats, Option<String>) {
        for (w, sm) in self.writers.iter().zip(&self.sm) {
            if let Err(e) = w.lock().await.request_ack().await {
                sm.error(format!("last <r/> not sent: {e}"));
            }
        }
        let until = Instant::now() + DRAIN;
        while !self.sm.iter().all(|s| s.settled()) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut stats = SmStats::default();
        let mut first_error = None;
        for sm in &self.sm {
            let s = sm.stats();
            if !sm.all_acked() {
                sm.error(format!(
                    "{} of {} stanzas still unacknowledged {} s after the last <r/>",
                    s.unacked(),
                    s.sent,
                    DRAIN.as_secs()
                ));
            } else if !sm.settled() {
                sm.error(format!(
                    "{} <a/> for {} <r/> {} s after the last <r/>",
                    s.acks_received,
                    s.requests_sent,
                    DRAIN.as_secs()
                ));
            }
            stats.add(sm.stats());
            first_error = first_error.or_else(|| sm.first_error());
        }
        (stats, first_error)
    }

    /// Stops the readers (each sends a last `<a/>` with stream management) and closes
    /// every stream. Returns the merged latencies, the readers' errors and their inboxes
    /// (load readers only).
    async fn stop(mut self) -> anyhow::Result<(Latencies, u64, Vec<Inbox>)> {
        let _ = self.stop.send(true);
        let mut lat = Latencies::default();
        let mut errors = 0;
        let mut inboxes = Vec::new();
        while let Some(r) = self.readers.join_next().await {
            let (l, e, inbox) = r?;
            lat.merge(l);
            errors += e;
            inboxes.extend(inbox);
        }
        for w in &self.writers {
            w.lock().await.close().await;
        }
        Ok((lat, errors, inboxes))
    }
}

#[derive(Clone)]
enum Destination {
    /// 1:1 chat to another user's full JID, chosen at random.
    Chat(Arc<Vec<String>>),
    /// Groupchat to one room.
    Room(Arc<String>),
}

struct ReaderCtx {
    me: usize,
    /// Sessions in the run (every one of them sends).
    senders: usize,
    permits: Arc<Vec<Semaphore>>,
    /// First copies to intended recipients, all sessions (for the drain to wait on).
    delivered: Arc<AtomicU64>,
    epoch: Instant,
    /// MUC: every session expects the room's messages, and the sender's own echo is its
    /// acknowledgement and frees its window.
    in_room: bool,
}

/// One generated message, as its body carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tagged {
    sender: u32,
    to: Addressee,
    /// Sequence number in the lane from `sender` to `to`.
    seq: u64,
    /// Send time, µs since the run's epoch.
    sent_at: u64,
}

/// `wb <sender> <recipient index | room> <seq> <sent at>`: the message id (sender, lane,
/// sequence), its intended recipient and its send time travel in the body, which
/// servers pass on untouched (ids and addresses they may rewrite).
fn parse_body(el: &Element) -> Option<Tagged> {
    let body = el.get_child("body", NS_CLIENT)?.text();
    let mut parts = body.split(' ');
    if parts.next()? != TAG {
        return None;
    }
    let sender = parts.next()?.parse().ok()?;
    let to = match parts.next()? {
        "room" => Addressee::Room,
        user => Addressee::User(user.parse().ok()?),
    };
    let seq = parts.next()?.parse().ok()?;
    let sent_at = parts.next()?.parse().ok()?;
    Some(Tagged { sender, to, seq, sent_at })
}

/// Reads one session until told to stop. With `ctx`, counts the load's deliveries and
/// their latency; without, only keeps the session answered (stream management).
async fn read_loop(
    mut reader: StanzaReader,
    ctx: Option<ReaderCtx>,
    mut stop: watch::Receiver<bool>,
) -> (Latencies, u64, Option<Inbox>) {
    let mut lat = Latencies::default();
    let mut errors = 0u64;
    let mut inbox = ctx.as_ref().map(|c| {
        let lane = if c.in_room { Addressee::Room } else { Addressee::User(c.me as u32) };
        Inbox::new(c.me as u32, lane, c.senders)
    });
    loop {
        let next = tokio::select! {
            next = reader.next() => next,
            _ = stop.changed() => break,
        };
        let el = match next {
            Ok(Some(el)) => el,
            Ok(None) => break,
            Err(_) => {
                errors += 1;
                break;
            }
        };
        let (Some(ctx), Some(inbox)) = (&ctx, inbox.as_mut()) else { continue };
        if el.name() != "message" {
            continue;
        }
        if el.attr("type") == Some("error") {
            errors += 1;
            continue;
        }
        let Some(m) = parse_body(&el) else { continue };
        // Only a first copy to an intended recipient is a delivery: it alone has a
        // latency and frees a window slot (a duplicate would widen the window).
        if inbox.receive(m.sender, m.to, m.seq) != Receipt::Delivered {
            continue;
        }
        let now = u64::try_from(ctx.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        lat.record(now.saturating_sub(m.sent_at));
        ctx.delivered.fetch_add(1, Ordering::Relaxed);
        let sender = m.sender as usize;
        if ctx.in_room {
            if sender == ctx.me {
                ctx.permits[ctx.me].add_permits(1);
            }
        } else if let Some(p) = ctx.permits.get(sender) {
            p.add_permits(1);
        }
    }
    reader.final_ack().await;
    (lat, errors, inbox)
}

struct WriterCtx {
    me: usize,
    n: usize,
    dest: Destination,
    permits: Arc<Vec<Semaphore>>,
    sent: Arc<AtomicU64>,
    epoch: Instant,
    start: Instant,
    deadline: Instant,
    /// Open loop: this sender's messages per second.
    rate: Option<f64>,
}

/// Sends until the deadline; returns what it sent, and the error that stopped it early.
async fn write_messages(writer: SharedWriter, w: WriterCtx) -> (Outbox, anyhow::Result<()>) {
    let mut outbox = Outbox::new(w.me as u32, w.n);
    let result = send_until_deadline(&writer, &w, &mut outbox).await;
    (outbox, result)
}

async fn send_until_deadline(writer: &SharedWriter, w: &WriterCtx, outbox: &mut Outbox) -> anyhow::Result<()> {
    use rand::{Rng as _, SeedableRng as _};
    let mut rng = rand::rngs::StdRng::seed_from_u64(w.me as u64 + 1);
    let mut buf = Vec::with_capacity(256);
    // Open-loop senders start spread over one period so the load is smooth.
    let period = w.rate.map(|r| Duration::from_secs_f64(1.0 / r.max(1e-3)));
    let offset = period.map(|p| p.mul_f64(w.me as f64 / w.n as f64)).unwrap_or_default();
    for k in 0u64.. {
        let sent_at = match period {
            Some(period) => {
                // Sends follow the schedule (a late sender catches up, the offered rate
                // holds); latency counts from the actual send, because tokio's timer
                // wakes up to a millisecond late and that is the generator, not the server.
                let at = w.start + offset + period.mul_f64(k as f64);
                if at >= w.deadline {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                Instant::now()
            }
            None => {
                let now = Instant::now();
                if now >= w.deadline {
                    break;
                }
                match tokio::time::timeout(w.deadline - now, w.permits[w.me].acquire()).await {
                    Ok(Ok(permit)) => permit.forget(),
                    _ => break,
                }
                Instant::now()
            }
        };
        let t = u64::try_from(sent_at.duration_since(w.epoch).as_micros()).unwrap_or(u64::MAX);
        buf.clear();
        let to = match &w.dest {
            Destination::Chat(jids) => {
                let mut to = rng.gen_range(0..w.n - 1);
                if to >= w.me {
                    to += 1;
                }
                let lane = Addressee::User(to as u32);
                write_message(&mut buf, &jids[to], "chat", w.me, lane, outbox.next_seq(lane), t);
                lane
            }
            Destination::Room(room) => {
                write_message(&mut buf, room, "groupchat", w.me, Addressee::Room, outbox.next_seq(Addressee::Room), t);
                Addressee::Room
            }
        };
        if let Err(e) = writer.lock().await.send_stanza(&mut buf).await {
            // It may have left before the error: expected only if it arrives (the
            // failed write is an error of the run either way).
            outbox.failed(to);
            return Err(e.into());
        }
        outbox.sent(to);
        w.sent.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

fn write_message(buf: &mut Vec<u8>, to: &str, kind: &str, me: usize, lane: Addressee, seq: u64, t: u64) {
    use std::io::Write as _;
    let _ = match lane {
        Addressee::User(u) => write!(
            buf,
            "<message to='{to}' type='{kind}' id='{me}-{u}-{seq}'><body>{TAG} {me} {u} {seq} {t}</body></message>"
        ),
        Addressee::Room => write!(
            buf,
            "<message to='{to}' type='{kind}' id='{me}-room-{seq}'><body>{TAG} {me} room {seq} {t}</body></message>"
        ),
    };
}

/// Registers one account in-band (XEP-0077): `Ok(true)` created, `Ok(false)` it exists.
async fn register_one(connector: &Connector, addr: &str, user: &str, password: &str) -> anyhow::Result<bool> {
    let (mut stream, _features) = connector.connect(addr).await?;
    let iq = format!(
        "<iq type='set' id='reg'><query xmlns='{NS_REGISTER}'><username>{user}</username>\
         <password>{password}</password></query></iq>"
    );
    stream.send(iq.as_bytes()).await?;
    let answer = stream.iq_answer("reg").await?;
    let outcome = match answer.attr("type") {
        Some("result") => Ok(true),
        _ if answer.get_child("error", NS_CLIENT).is_some_and(|e| e.children().any(|c| c.name() == "conflict")) => {
            Ok(false)
        }
        _ => Err(anyhow!("registration of {user} refused: {}", String::from_utf8_lossy(&answer.to_bytes(NS_CLIENT)))),
    };
    stream.close().await;
    outcome
}

/// Joins `room` as `nick` without history and waits for the self-presence. The creator
/// of a new (locked) room accepts the instant room.
async fn join_room(s: &mut Session, room: &str, nick: &str, may_create: bool) -> anyhow::Result<()> {
    let occupant = format!("{room}/{nick}");
    let join = format!("<presence to='{occupant}'><x xmlns='{NS_MUC}'><history maxstanzas='0'/></x></presence>");
    s.stream.send_stanza(join.as_bytes()).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let el = tokio::time::timeout_at(deadline.into(), s.stream.next_stanza())
            .await
            .map_err(|_| anyhow!("no self-presence from {occupant} in 30 s"))??;
        if el.name() != "presence" || el.attr("from") != Some(occupant.as_str()) {
            continue;
        }
        if el.attr("type") == Some("error") {
            bail!("join of {occupant} refused: {}", String::from_utf8_lossy(&el.to_bytes(NS_CLIENT)));
        }
        let statuses: Vec<String> = el
            .get_child("x", NS_MUC_USER)
            .map(|x| {
                x.children()
                    .filter(|c| c.name() == "status")
                    .filter_map(|c| c.attr("code"))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if !statuses.iter().any(|c| c == "110") {
            continue;
        }
        if statuses.iter().any(|c| c == "201") {
            if !may_create {
                bail!("{occupant} created the room instead of joining it");
            }
            let form = format!(
                "<iq type='set' id='instant' to='{room}'><query xmlns='{NS_MUC_OWNER}'>\
                 <x xmlns='jabber:x:data' type='submit'/></query></iq>"
            );
            s.stream.send_stanza(form.as_bytes()).await?;
            let answer = s.stream.iq_answer("instant").await?;
            if answer.attr("type") != Some("result") {
                bail!("instant room refused for {room}");
            }
        }
        return Ok(());
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt as _;

    use super::*;
    use crate::tally::Tally;

    /// The stanza sender `me` writes to user `to` (as the server hands it on).
    fn chat_message(me: usize, to: u32, seq: u64) -> Vec<u8> {
        let mut buf = Vec::new();
        write_message(&mut buf, "u@x/r", "chat", me, Addressee::User(to), seq, 0);
        buf
    }

    #[test]
    fn body_round_trips() {
        for (lane, kind) in [(Addressee::User(7), "chat"), (Addressee::Room, "groupchat")] {
            let mut buf = Vec::new();
            write_message(&mut buf, "r@muc.x", kind, 3, lane, 41, 12345);
            let el = Element::from_bytes(&buf, NS_CLIENT).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(parse_body(&el), Some(Tagged { sender: 3, to: lane, seq: 41, sent_at: 12345 }));
        }
        let other = Element::from_bytes(b"<message><body>wb 1 2</body></message>", NS_CLIENT);
        assert_eq!(other.ok().and_then(|el| parse_body(&el)), None);
    }

    /// Session 1 of 3 in a chat run, read through the real reader: sender 0 sent it
    /// messages 0 and 1 and sent message 0 to user 2. The server delivers message 0
    /// twice, loses message 1 and hands user 2's message to session 1.
    #[tokio::test]
    async fn reader_reports_a_duplicate_a_loss_and_a_misroute() {
        let (reader, _writer, mut server) = crate::conn::split_pipe();
        let permits: Arc<Vec<Semaphore>> = Arc::new((0..3).map(|_| Semaphore::new(0)).collect());
        let delivered = Arc::new(AtomicU64::new(0));
        let ctx = ReaderCtx {
            me: 1,
            senders: 3,
            permits: Arc::clone(&permits),
            delivered: Arc::clone(&delivered),
            epoch: Instant::now(),
            in_room: false,
        };
        let (_stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(read_loop(reader, Some(ctx), stop_rx));
        let mut bytes = chat_message(0, 1, 0);
        bytes.extend(chat_message(0, 1, 0));
        bytes.extend(chat_message(0, 2, 0));
        bytes.extend_from_slice(b"<message><body>not from the bench</body></message>");
        server.write_all(&bytes).await.unwrap_or_else(|e| panic!("{e}"));
        // End of stream: the reader stops on its own, having read everything.
        drop(server);
        let (lat, errors, inbox) = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap_or_else(|_| panic!("reader did not stop"))
            .unwrap_or_else(|e| panic!("{e}"));
        let inbox = inbox.unwrap_or_else(|| panic!("a load reader has an inbox"));
        assert_eq!(errors, 0);
        assert_eq!(delivered.load(Ordering::Relaxed), 1, "only the first copy is a delivery");
        assert_eq!(permits[0].available_permits(), 1, "the duplicate must not widen sender 0's window");
        assert_eq!(lat.samples(), 1, "one latency, of the delivery");

        let mut out0 = Outbox::new(0, 3);
        for to in [1, 1, 2] {
            out0.sent(Addressee::User(to));
        }
        let outboxes = [out0, Outbox::new(1, 3), Outbox::new(2, 3)];
        let inboxes = [Inbox::new(0, Addressee::User(0), 3), inbox, Inbox::new(2, Addressee::User(2), 3)];
        // Counted by totals, 3 sent and 3 received would have balanced.
        let t = tally(&outboxes, &inboxes, &[]);
        assert_eq!(t, Tally { expected: 3, delivered: 1, lost: 2, duplicated: 1, misrouted: 1 });
    }
}
