//! A bound client session: one task per connection (the thin shell) that reads and
//! parses the client's stream and handles its mailbox, one stanza or message at a time,
//! plus a writer task (outbox → batched socket writes). Protocol decisions are delegated
//! to the router, `im` and `waddle_c2s`.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use tokio::io::{AsyncRead as _, AsyncWriteExt as _, ReadHalf, WriteHalf};
use tokio::task::JoinHandle;
use waddle_c2s::csi::{self, HeldStanzas, Urgency};
use waddle_c2s::rate::{self, Limited, SessionRateLimiter};
use waddle_c2s::sm::{self, AckPolicy, SmError, StreamManagement};
use waddle_c2s::stanza::{self, error_reply, iq_payload, iq_result, StanzaKind};
use waddle_c2s::{ns, stream};
use waddle_cluster::{Place, SessionAddr, SessionMailbox, SessionMsg, SessionRef};
use waddle_jid::FullJid;
use waddle_xml::{Element, StreamEvent, StreamParser};

use crate::ctx::Ctx;
use crate::im;
use crate::io::ClientIo;
use crate::outbox::{Outbox, OutboxError, OutboxHandle};
use crate::remote::{AccountAction, NodeOp};
use crate::resume::{Attach, Migrate, MovedSession, Sent};
use crate::router::{Origin, RoutedFor};

/// Bytes read per poll, into a buffer on the poll's stack: a session waiting for input
/// holds no read buffer at all (idle memory is what bounds how many sessions a node holds).
const READ_CHUNK: usize = 8192;

/// Stanzas an inactive client's session holds back at most (XEP-0352); one more
/// delivers everything held.
const CSI_MAX_HELD: usize = 256;

/// How long an ending session lets its writer flush the closing bytes (and TLS'
/// close_notify) before it resets the connection.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How long a writer stopped at once (the client does not read) still tries to get the
/// stream error out before it lets go of the socket.
const LAST_WORDS_GRACE: Duration = Duration::from_millis(500);

/// How serving a connection ended.
enum End {
    /// The stream is over: closed by the client, or by the server with a stream error
    /// already written, or the session was ended (replaced, closed, overflowed).
    Closed,
    /// The connection was lost without a close: a resumable session waits for its client.
    LinkLost,
    /// The client stopped answering pings, or a write to it took longer than
    /// `c2s.write_timeout_secs`: as `LinkLost`, but a session that cannot be resumed says
    /// why (this text) before it closes.
    Unresponsive(&'static str),
    /// A new connection takes this session over (XEP-0198 resumption).
    Attach(Box<Attach>),
    /// The client resumed on another node: the session's state goes there.
    Migrate(Box<Migrate>),
}

/// How long a session that moved to another node forwards what still reaches it here,
/// while the registry and its rooms learn where it is now.
const MOVED_FORWARD_FOR: Duration = Duration::from_secs(5);

/// Stream Management on a session (XEP-0198).
struct Sm {
    state: StreamManagement<Sent>,
    /// The resumption id and how long the session waits for its client, if resumable.
    resume: Option<(String, u64)>,
    /// When the server last asked for an acknowledgement (ms on the activity clock).
    last_request_ms: u64,
}

/// The task writing a session's outbox to its socket.
struct Writer {
    task: JoinHandle<WriterEnd>,
    outbox: Arc<Outbox>,
}

/// What a writer task gives back: its half of the socket, so the session can reset the
/// connection, and whether the stream was shut down cleanly.
struct WriterEnd {
    io: WriteHalf<ClientIo>,
    clean: bool,
}

/// Time of the last bytes received from the client, for keepalive decisions.
struct Activity {
    epoch: Instant,
    last_rx_ms: u64,
}

impl Activity {
    /// Starts the clock, counting the connection itself as activity.
    fn new() -> Activity {
        Activity { epoch: Instant::now(), last_rx_ms: 0 }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&mut self) {
        self.last_rx_ms = self.now_ms();
    }

    fn last_rx_ms(&self) -> u64 {
        self.last_rx_ms
    }
}

pub struct SessionState {
    ctx: Arc<Ctx>,
    origin: Origin,
    jid: FullJid,
    bare: String,
    conn_id: u64,
    /// `None` once closed: nothing more is written to the client.
    outbox: Option<OutboxHandle>,
    writer: Option<Writer>,
    activity: Activity,
    available: bool,
    initial_presence_sent: bool,
    /// JIDs that received directed presence and must get our unavailable (RFC 6121 §4.6).
    directed: HashSet<String>,
    /// Outstanding server ping: id and when it was sent (ms on the activity clock).
    ping: Option<(String, u64)>,
    rate: Option<SessionRateLimiter>,
    /// XEP-0198, once the client enabled it.
    sm: Option<Box<Sm>>,
    /// XEP-0352: the stanzas held back while the client is inactive (`None`: active).
    held: Option<Box<HeldStanzas<Arc<Element>>>>,
    /// The connection is gone and the session waits to be resumed.
    detached: bool,
    /// The last available presence and its priority (to announce it again).
    presence: Option<(i8, Arc<Element>)>,
    /// What the client asked of its account that lives in the registry entry (roster
    /// pushes, XEP-0280 carbons), to announce it again.
    roster_interested: bool,
    carbons: bool,
    /// The rooms this session is in, by occupant JID, with the join presence it sent:
    /// what takes it back into a room that moved to another node.
    rooms: HashMap<String, Arc<Element>>,
}

impl SessionState {
    /// The node that owns this session's user, when it is not this one.
    fn owner_elsewhere(&self) -> Option<u64> {
        match self.ctx.cluster.user(&self.bare) {
            Place::Local(_) => None,
            Place::Remote(node) => Some(node),
        }
    }

    /// Sends account work to the user's owner `node`.
    fn to_owner(&self, node: u64, action: AccountAction) -> bool {
        let addr = SessionAddr { node: self.ctx.cluster.me(), conn_id: self.conn_id };
        self.ctx.to_node(node, NodeOp::Account { jid: self.jid.as_str().to_owned(), addr, action })
    }

    /// Remembers a roster request or a carbons switch on its way to the account's owner,
    /// whose registry entry records them, so that [`SessionState::reannounce`] can tell
    /// a new owner.
    fn note_account_interest(&mut self, iq: &Element) {
        let own = iq.attr("to").is_none_or(|to| to == self.ctx.domain || to == self.bare);
        let Some(payload) = iq_payload(iq).filter(|_| own) else { return };
        match iq.attr("type") {
            Some("get") if payload.is("query", ns::ROSTER) => self.roster_interested = true,
            Some("set") if payload.is("enable", crate::carbons::NS_CARBONS) => self.carbons = true,
            Some("set") if payload.is("disable", crate::carbons::NS_CARBONS) => self.carbons = false,
            _ => {}
        }
    }

    /// Remembers (or forgets) the room occupant JID `to` this session sent presence to.
    fn track_room(&mut self, to: &str, join: Option<&Element>) {
        let in_muc = to
            .split_once('@')
            .is_some_and(|(_, rest)| rest.split_once('/').is_some_and(|(domain, _)| domain == self.ctx.muc.domain));
        if !in_muc {
            return;
        }
        match join {
            Some(presence) => {
                self.rooms.insert(to.to_owned(), Arc::new(presence.clone()));
            }
            None => {
                self.rooms.remove(to);
            }
        }
    }

    /// A room said this session left it (kicked, banned, a nickname change, the room
    /// destroyed): it is not taken back there when the room moves.
    fn note_room_exit(&mut self, stanza: &Element) {
        if stanza.name() == "presence" && stanza.attr("type") == Some("unavailable") {
            if let Some(from) = stanza.attr("from") {
                self.rooms.remove(from);
            }
        }
    }

    /// Takes this session back into every room it is in, wherever each room runs now.
    fn rejoin_rooms(&self) {
        for presence in self.rooms.values() {
            let mut presence = (**presence).clone();
            presence.set_attr("from", self.jid.as_str());
            let (ctx, conn_id) = (Arc::clone(&self.ctx), self.conn_id);
            tokio::spawn(async move { crate::muc::rejoin(&ctx, presence, conn_id, 0).await });
        }
    }

    /// Registers this session with its user's owner again (the ring moved, or the owner
    /// was unreachable and forgot it), with its presence, roster interest and carbons,
    /// and takes it back into its rooms.
    fn reannounce(&self) {
        self.rejoin_rooms();
        self.claim_registry_entry(self.conn_id);
    }

    /// Registers this session with its user's owner in the place of the session
    /// `from_conn_id` (itself when it announces itself again; another node's when it
    /// moved here), with its presence, roster interest and carbons, unless a newer
    /// session of the same full JID holds that place.
    fn claim_registry_entry(&self, from_conn_id: u64) {
        let (available, priority, presence) = match &self.presence {
            Some((priority, presence)) if self.available => (true, *priority, Some(Arc::clone(presence))),
            _ => (false, 0, None),
        };
        let (roster_interested, carbons) = (self.roster_interested, self.carbons);
        match self.owner_elsewhere() {
            Some(node) => {
                let presence = presence.map(|p| p.to_string());
                let action = if from_conn_id == self.conn_id {
                    AccountAction::Rebind { available, priority, presence, roster_interested, carbons }
                } else {
                    AccountAction::Moved { from_conn_id, available, priority, presence, roster_interested, carbons }
                };
                self.to_owner(node, action);
            }
            None => {
                let Some(shard) = self.ctx.local_shard(&self.bare) else { return };
                let entry = waddle_cluster::SessionEntry {
                    resource: self.jid.resource().as_str().to_owned(),
                    addr: SessionAddr { node: self.ctx.cluster.me(), conn_id: self.conn_id },
                    priority,
                    available,
                    presence,
                    roster_interested,
                    carbons,
                };
                if crate::remote::take_entry(&shard, entry, from_conn_id) {
                    self.ctx.hint_carbons(&self.bare, &shard, true);
                }
            }
        }
    }

    /// Broadcasts this session's presence, where its user's roster is.
    async fn broadcast(&self, owner: Option<u64>, presence: &Element, directed: &HashSet<String>) {
        match owner {
            None => im::broadcast(&self.ctx, &self.origin, presence, directed).await,
            Some(node) => {
                let action = AccountAction::Broadcast {
                    presence: presence.to_string(),
                    directed: directed.iter().cloned().collect(),
                };
                self.to_owner(node, action);
            }
        }
    }

    /// Unbinds the session and tells everyone who had its presence that it is gone;
    /// whether the registry still held this connection.
    async fn announce_departure(&mut self) -> bool {
        let owner = self.owner_elsewhere();
        let still_bound = match owner {
            None => {
                self.ctx.local_shard(&self.bare).is_some_and(|s| s.unbind(self.jid.resource().as_str(), self.conn_id))
            }
            Some(node) => self.to_owner(node, AccountAction::Unbind),
        };
        // RFC 6121 §4.6: the server sends unavailable for a vanished session to everyone
        // who had its presence: subscribers (if it was available) and directed-presence
        // targets (even when it never sent initial presence; this is how it leaves rooms).
        let unavailable =
            Element::new("presence", ns::CLIENT).with_attr("from", self.jid.as_str()).with_attr("type", "unavailable");
        let directed = std::mem::take(&mut self.directed);
        if self.available {
            self.broadcast(owner, &unavailable, &directed).await;
        } else {
            for target in directed {
                let mut p = unavailable.clone();
                p.set_attr("to", target);
                self.ctx.route(&self.origin, p).await;
            }
        }
        still_bound
    }

    /// Queues what `serialize` writes for the client (it is given the outbox buffer and
    /// this session's full JID, for stanzas addressed on the way out); `false` if it was
    /// not queued (the outbox is closed, or full: then the client is too slow and the
    /// outbox is closed here).
    fn write(&mut self, serialize: impl FnOnce(&mut Vec<u8>, &str)) -> bool {
        let Some(outbox) = &self.outbox else { return false };
        let own_jid = self.jid.as_str();
        match outbox.push(|out| serialize(out, own_jid)) {
            Ok(()) => true,
            Err(OutboxError::Full) => {
                crate::metrics::inc(&self.ctx.metrics.stream_errors);
                self.abandon(stream::error("policy-violation", Some("too much waiting to be written")));
                false
            }
            Err(OutboxError::Closed) => false,
        }
    }

    /// Gives up on a client that does not read what is queued for it: drops what waits,
    /// stops the writer at once (it tries `last_words` for a moment) so that the socket
    /// can be reset and released, and writes nothing more.
    fn abandon(&mut self, last_words: Vec<u8>) {
        tracing::warn!(jid = %self.jid, "client does not read fast enough; disconnecting");
        if let Some(writer) = &self.writer {
            writer.outbox.abandon(last_words);
        }
        self.close_outbox();
    }

    /// Writes an element that is not a stanza (a nonza: SM and CSI answers).
    fn write_nonza(&mut self, el: &Element) -> bool {
        self.write(|out, _| el.write_to(out, ns::CLIENT))
    }

    /// Sends a stanza the session itself answers its client with (errors, results,
    /// pings): counted and kept like any other under SM.
    fn reply(&mut self, el: Element) -> bool {
        self.send(Sent::Stanza(Arc::new(el)))
    }

    /// Sends one stanza to the client: held back while the client is inactive if it can
    /// wait (XEP-0352), otherwise written after everything held; under SM counted and
    /// kept until acknowledged. `false` when the session must end.
    fn send(&mut self, stanza: Sent) -> bool {
        if let (Some(held), Sent::Stanza(el)) = (self.held.as_deref_mut(), &stanza) {
            if let Urgency::Hold(key) = csi::urgency(el) {
                if held.hold(key, Arc::clone(el)).is_ok() {
                    return true;
                }
            }
        }
        if !self.flush_held() {
            return false;
        }
        self.transmit(stanza)
    }

    /// Writes everything held back for an inactive client, oldest first.
    fn flush_held(&mut self) -> bool {
        let Some(mut held) = self.held.take() else { return true };
        let mut alive = true;
        for el in held.flush() {
            alive = alive && self.transmit(Sent::Stanza(el));
        }
        self.held = Some(held);
        alive
    }

    /// Writes a stanza (a shared fan-out copy addressed to this session on the way out).
    fn write_sent(&mut self, stanza: &Sent) -> bool {
        match stanza {
            Sent::Stanza(el) => self.write(|out, _| el.write_to(out, ns::CLIENT)),
            Sent::Shared(shared) => self.write(|out, own_jid| shared.write_to(own_jid, out)),
        }
    }

    fn transmit(&mut self, stanza: Sent) -> bool {
        let written = self.write_sent(&stanza);
        let Some(sm) = self.sm.as_deref_mut() else {
            return written || self.outbox.is_some();
        };
        // Kept whether or not it was written: a stanza a lost connection did not carry
        // goes out again on resumption.
        match sm.state.sent(stanza) {
            Ok(request) => {
                if request && written {
                    sm.last_request_ms = self.activity.now_ms();
                    self.write_nonza(&sm::request());
                }
                written || self.outbox.is_some() || self.detached
            }
            Err(e) => {
                tracing::warn!(jid = %self.jid, error = %e, "client does not acknowledge; disconnecting");
                self.close_with(Some("resource-constraint"), Some("too many unacknowledged stanzas"));
                false
            }
        }
    }

    /// Lets the writer flush what is queued and shut the socket down (dropping the
    /// handle closes the outbox).
    fn close_outbox(&mut self) {
        self.outbox = None;
    }

    /// Whether a lost connection leaves this session waiting for its client.
    fn resumable(&self) -> bool {
        self.sm.as_ref().is_some_and(|sm| sm.resume.is_some())
    }

    /// A nonza of Stream Management (XEP-0198) or Client State Indication (XEP-0352).
    fn on_nonza(&mut self, el: &Element) -> Result<(), &'static str> {
        match (el.ns(), el.name()) {
            (sm::NS, "enable") => self.enable_sm(el),
            (sm::NS, "r") if self.sm.is_some() => {
                let h = self.sm.as_ref().map_or(0, |sm| sm.state.handled_count());
                self.write_nonza(&sm::answer(h));
            }
            (sm::NS, "a") if self.sm.is_some() => {
                let Some(h) = sm::parse_h(el) else { return Err("bad-format") };
                if let Some(sm) = self.sm.as_deref_mut() {
                    if let Err(SmError::HandledCountTooHigh { h, sent }) = sm.state.ack(h) {
                        let bytes = sm::handled_count_too_high(h, sent);
                        crate::metrics::inc(&self.ctx.metrics.stream_errors);
                        self.write(|out, _| out.extend_from_slice(&bytes));
                        self.close_outbox();
                    }
                }
            }
            // Resuming inside a bound stream, or acknowledging before enabling: refused,
            // the stream goes on (as ejabberd answers them).
            (sm::NS, "resume" | "r" | "a") => {
                self.write_nonza(&sm::failed("unexpected-request", None));
            }
            (csi::NS, "inactive") => {
                if self.held.is_none() {
                    self.held = Some(Box::new(HeldStanzas::new(CSI_MAX_HELD)));
                }
            }
            (csi::NS, "active") => {
                self.flush_held();
                self.held = None;
            }
            _ => return Err("unsupported-stanza-type"),
        }
        Ok(())
    }

    fn enable_sm(&mut self, el: &Element) {
        let c2s = &self.ctx.config.c2s;
        if !c2s.stream_management {
            self.write_nonza(&sm::failed("feature-not-implemented", None));
            return;
        }
        if self.sm.is_some() {
            self.write_nonza(&sm::failed("unexpected-request", None));
            return;
        }
        let resume = matches!(el.attr("resume"), Some("true" | "1")).then(|| {
            let id = crate::resume::resumption_id(&sm::new_resume_token(), &self.jid);
            (id, sm::resume_timeout(el.attr("max"), c2s.sm_resume_timeout_secs))
        });
        let policy = AckPolicy { every_stanzas: c2s.sm_ack_every_stanzas, max_unacked: c2s.sm_max_unacked };
        let enabled = sm::enabled(resume.as_ref().map(|(id, secs)| (id.as_str(), *secs)));
        self.sm = Some(Box::new(Sm {
            state: StreamManagement::new(policy),
            resume,
            last_request_ms: self.activity.now_ms(),
        }));
        self.write_nonza(&enabled);
    }

    async fn on_client(&mut self, kind: StanzaKind, mut el: Element) -> Result<(), &'static str> {
        if let Some(sm) = self.sm.as_deref_mut() {
            sm.state.handled();
        }
        // RFC 6120 §8.1.2.1: the server stamps the sender's full JID.
        el.set_attr("from", self.jid.as_str());
        let ctx = Arc::clone(&self.ctx);
        let metrics = &ctx.metrics;
        crate::metrics::inc(match kind {
            StanzaKind::Message => &metrics.stanzas_in_message,
            StanzaKind::Presence => &metrics.stanzas_in_presence,
            StanzaKind::Iq => &metrics.stanzas_in_iq,
        });
        if let Some(limit) = self.rate_limit(kind, &el) {
            let (counter, text) = match limit {
                Limited::Message => (&metrics.rate_limited_message, "too many messages; slow down"),
                Limited::Presence => (&metrics.rate_limited_presence, "too many presence updates; slow down"),
                Limited::Join => (&metrics.rate_limited_join, "too many room joins; slow down"),
                Limited::Iq => (&metrics.rate_limited_iq, "too many requests; slow down"),
                Limited::Stanza => (&metrics.rate_limited_stanza, "too many stanzas; slow down"),
            };
            crate::metrics::inc(counter);
            // RFC 6120 §8.2.3: an IQ response is never answered with another one.
            let iq_response = kind == StanzaKind::Iq && el.attr("type") == Some("result");
            if let Some(err) = error_reply(&el, "policy-violation", Some(text)).filter(|_| !iq_response) {
                self.reply(err);
            }
            return Ok(());
        }
        match kind {
            StanzaKind::Message => {
                // XEP-0359 §5: only the server asserts stanza ids by itself, its users
                // and its rooms; whatever the client wrote there is removed before
                // anyone (a room, the archive, a recipient) sees the message.
                let ctx = &self.ctx;
                stanza::strip_stanza_ids_by(&mut el, |d| d == ctx.domain || ctx.services.iter().any(|s| s == d));
                if el.attr("to").is_none() {
                    // RFC 6120 §10.3.1: a message without 'to' is for the sender's bare JID.
                    el.set_attr("to", self.bare.as_str());
                }
                // A refusal (a 1:1 message that could not be made durable, an owner that
                // could not be reached) is written before the next stanza is handled, so
                // no `<a/>` covering this message reaches the client ahead of its error.
                let routing = self.ctx.route(&self.origin, el);
                if let Some(reply) = RoutedFor::collect(self.conn_id, routing).await.and_then(|r| r.reply) {
                    self.reply(reply);
                }
            }
            StanzaKind::Iq => self.on_iq(el).await,
            StanzaKind::Presence => self.on_presence(el).await,
        }
        Ok(())
    }

    /// The limit `el` exceeds, if any: the general budget, which every stanza counts
    /// against, then the seed's per-session table.
    fn rate_limit(&mut self, kind: StanzaKind, el: &Element) -> Option<Limited> {
        let limiter = self.rate.as_mut()?;
        let now = Instant::now();
        if !limiter.allow(Limited::Stanza, "", now) {
            return Some(Limited::Stanza);
        }
        let (limit, destination) = match kind {
            // A message without 'to' is for the sender's own bare JID (see on_client).
            StanzaKind::Message => {
                (Limited::Message, rate::destination_key(el.attr("to").unwrap_or(self.bare.as_str())))
            }
            StanzaKind::Iq if matches!(el.attr("type"), Some("get" | "set")) => (Limited::Iq, Cow::Borrowed("")),
            StanzaKind::Iq => return None,
            StanzaKind::Presence => match el.attr("type") {
                // Leaving and subscription management count against the general budget only.
                None if el.has_child("x", waddle_c2s::ns::MUC) => (Limited::Join, Cow::Borrowed("")),
                None => (Limited::Presence, Cow::Borrowed("")),
                Some(_) => return None,
            },
        };
        (!limiter.allow(limit, &destination, now)).then_some(limit)
    }

    async fn on_iq(&mut self, iq: Element) {
        let to_server = match iq.attr("to") {
            None => true,
            Some(to) => to == self.ctx.domain,
        };
        match iq.attr("type") {
            Some("result" | "error") if to_server => {
                if self.ping.as_ref().is_some_and(|(id, _)| Some(id.as_str()) == iq.attr("id")) {
                    self.ping = None;
                }
            }
            Some("set") if to_server && iq_payload(&iq).is_some_and(|p| p.is("session", ns::SESSION)) => {
                // RFC 3921 session establishment: a no-op kept for older clients.
                self.reply(iq_result(&iq));
            }
            Some("get" | "set" | "result" | "error") => {
                self.note_account_interest(&iq);
                self.ctx.route(&self.origin, iq).await
            }
            _ => {
                if let Some(err) = error_reply(&iq, "bad-request", Some("iq type must be get, set, result or error")) {
                    self.reply(err);
                }
            }
        }
    }

    async fn on_presence(&mut self, presence: Element) {
        let ptype = presence.attr("type").map(str::to_owned);
        let has_to = presence.attr("to").is_some();
        match (has_to, ptype.as_deref()) {
            (false, None) => self.available_presence(presence).await,
            (false, Some("unavailable")) => self.unavailable_presence(presence).await,
            (true, Some("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed")) => {
                // Boxed (rare, and a deep future): see `handle`.
                match self.owner_elsewhere() {
                    None => Box::pin(im::outbound_subscription(&self.ctx, &self.origin, presence)).await,
                    Some(node) => {
                        self.to_owner(node, AccountAction::OutboundSubscription { presence: presence.to_string() });
                    }
                }
            }
            (true, None | Some("unavailable")) => {
                if let Some(to) = presence.attr("to") {
                    if ptype.is_none() {
                        self.directed.insert(to.to_owned());
                    } else {
                        self.directed.remove(to);
                    }
                    self.track_room(to, ptype.is_none().then_some(&presence));
                }
                self.ctx.route(&self.origin, presence).await;
            }
            (true, Some("probe" | "error")) => self.ctx.route(&self.origin, presence).await,
            (false, Some("error")) => {}
            _ => {
                if let Some(err) = error_reply(&presence, "bad-request", Some("unexpected presence type")) {
                    self.reply(err);
                }
            }
        }
    }

    async fn available_presence(&mut self, presence: Element) {
        let priority_text = presence.get_child("priority", ns::CLIENT).map(Element::text);
        let priority = match waddle_im::parse_priority(priority_text.as_deref()) {
            Ok(p) => p,
            Err(_) => {
                if let Some(err) = error_reply(&presence, "bad-request", Some("priority must be -128..127")) {
                    self.reply(err);
                }
                return;
            }
        };
        let owner = self.owner_elsewhere();
        let shared = Arc::new(presence.clone());
        self.presence = Some((priority, Arc::clone(&shared)));
        match owner {
            None => {
                if let Some(shard) = self.ctx.local_shard(&self.bare) {
                    shard.update(self.jid.resource().as_str(), self.conn_id, |e| {
                        e.available = true;
                        e.priority = priority;
                        e.presence = Some(shared);
                    });
                }
            }
            Some(node) => {
                let presence = Some(presence.to_string());
                self.to_owner(node, AccountAction::Presence { available: true, priority, presence });
            }
        }
        self.available = true;
        self.broadcast(owner, &presence, &self.directed).await;
        if !self.initial_presence_sent {
            self.initial_presence_sent = true;
            if let Some(node) = owner {
                // The owner sends the offline queue as deliveries, in order.
                self.to_owner(node, AccountAction::InitialPresence { take_offline: priority >= 0 });
                return;
            }
            // XEP-0160: offline messages go to the first non-negative-priority session.
            // Boxed (once per session, and a deep future): see `handle`.
            let offline = Box::pin(im::after_initial_presence(&self.ctx, &self.origin, priority >= 0)).await;
            if !offline.is_empty() {
                Box::pin(self.deliver_offline(offline)).await;
            }
        }
    }

    /// Delivers the offline queue (XEP-0160) at the pace the client reads: whenever half
    /// the outbox's byte bound waits, the next message waits for the writer, so a queue
    /// larger than the bound reaches a client that reads, while one that does not is
    /// still cut off by the write deadline. What cannot be delivered (the session ends
    /// on the way) goes back into storage, in order.
    async fn deliver_offline(&mut self, stored: Vec<String>) {
        let mut queue = stored.into_iter();
        while let Some(xml) = queue.next() {
            let Some(mut message) = im::parse_stored_stanza(&xml) else {
                tracing::error!(jid = %self.jid, "dropping an unparsable offline message");
                continue;
            };
            message.set_attr("to", self.jid.as_str());
            let delivered = self.send(Sent::Stanza(Arc::new(message))) && self.outbox.is_some();
            if !delivered {
                // Under SM a stanza the outbox refused is among the unacknowledged,
                // which the session's ending reroutes; otherwise it goes back too.
                let current = self.sm.is_none().then_some(xml);
                return self.restore_offline(current.into_iter().chain(queue)).await;
            }
            let congested = self.outbox.as_ref().is_some_and(|outbox| outbox.congested());
            if congested && !self.wait_for_writer().await {
                return self.restore_offline(queue).await;
            }
        }
    }

    /// Waits until the outbox is under half its byte bound; `false` if the writer gave
    /// up (a write past the deadline) or the outbox is gone.
    async fn wait_for_writer(&self) -> bool {
        let (Some(outbox), Some(writer)) = (self.outbox.as_deref(), self.writer.as_ref()) else {
            return false;
        };
        tokio::select! {
            () = outbox.decongested() => true,
            () = writer.outbox.stalled() => false,
        }
    }

    async fn restore_offline(&self, rest: impl Iterator<Item = String>) {
        let rest: Vec<String> = rest.collect();
        if rest.is_empty() {
            return;
        }
        tracing::info!(jid = %self.jid, count = rest.len(), "offline messages not delivered; stored again");
        if let Some(node) = self.owner_elsewhere() {
            self.to_owner(node, AccountAction::RestoreOffline { stored: rest });
        } else if let Some(username) = self.jid.node() {
            im::restore_offline(&self.ctx, username.as_str(), rest).await;
        }
    }

    async fn unavailable_presence(&mut self, presence: Element) {
        let owner = self.owner_elsewhere();
        match owner {
            None => {
                if let Some(shard) = self.ctx.local_shard(&self.bare) {
                    shard.update(self.jid.resource().as_str(), self.conn_id, |e| {
                        e.available = false;
                        e.presence = None;
                    });
                }
            }
            Some(node) => {
                self.to_owner(node, AccountAction::Presence { available: false, priority: 0, presence: None });
            }
        }
        if self.available {
            self.broadcast(owner, &presence, &self.directed).await;
        }
        self.available = false;
        self.directed.clear();
    }

    /// Returns false when the connection must close for lack of an answer.
    fn on_tick(&mut self) -> bool {
        let now = self.activity.now_ms();
        let last_rx = self.activity.last_rx_ms();
        let ack_every_ms = self.ctx.config.c2s.sm_ack_every_secs * 1000;
        if let Some(sm) = self.sm.as_deref_mut() {
            if ack_every_ms > 0
                && now.saturating_sub(sm.last_request_ms) >= ack_every_ms
                && sm.state.request_if_waiting()
            {
                sm.last_request_ms = now;
                self.write_nonza(&sm::request());
            }
        }
        let c2s = &self.ctx.config.c2s;
        if let Some((_, sent_at)) = &self.ping {
            if last_rx >= *sent_at {
                self.ping = None;
            } else if now.saturating_sub(*sent_at) >= c2s.ping_timeout_secs * 1000 {
                return false;
            }
            return true;
        }
        if now.saturating_sub(last_rx) >= c2s.ping_interval_secs * 1000 {
            let id = self.ctx.next_id("ping");
            let ping = Element::new("iq", ns::CLIENT)
                .with_attr("type", "get")
                .with_attr("id", id.as_str())
                .with_attr("from", self.ctx.domain.as_str())
                .with_attr("to", self.jid.as_str())
                .with_child(Element::new("ping", ns::PING));
            self.ping = Some((id, now));
            self.reply(ping);
        }
        true
    }

    fn close_with(&mut self, condition: Option<&str>, text: Option<&str>) {
        let bytes = match condition {
            Some(c) => {
                crate::metrics::inc(&self.ctx.metrics.stream_errors);
                stream::error(c, text)
            }
            None => stream::CLOSE.to_vec(),
        };
        let full = self
            .outbox
            .as_ref()
            .is_some_and(|outbox| outbox.push(|out| out.extend_from_slice(&bytes)) == Err(OutboxError::Full));
        if full {
            self.abandon(bytes);
        }
        self.close_outbox();
    }
}

/// Resolves when the session's writer gave up on a write that took too long.
async fn writer_stalled(writer: Option<&Writer>) {
    match writer {
        Some(writer) => writer.outbox.stalled().await,
        None => std::future::pending().await,
    }
}

impl SessionState {
    /// Reads the client's stream and handles the mailbox until the connection ends (or
    /// every handle to the session is gone). Stanzas are handled one at a time, in
    /// order, and the socket is only read once everything parsed so far is handled: a
    /// client cannot queue more work than one read holds (back-pressure without a queue).
    async fn serve(
        &mut self,
        mailbox: &mut SessionMailbox,
        io: &mut ReadHalf<ClientIo>,
        parser: &mut StreamParser,
    ) -> End {
        loop {
            match parser.next_event() {
                Ok(Some(StreamEvent::Stanza(el))) => {
                    if !self.handle_stanza(el).await {
                        return End::Closed;
                    }
                    continue;
                }
                Ok(Some(StreamEvent::Close)) => {
                    self.close_with(None, None);
                    return End::Closed;
                }
                // No stream restart is allowed once a resource is bound.
                Ok(Some(StreamEvent::Header(_))) => {
                    self.close_with(Some("invalid-xml"), None);
                    return End::Closed;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "client stream error");
                    self.close_with(Some(e.stream_condition()), None);
                    return End::Closed;
                }
            }
            // Nothing is buffered across this wait but what the parser still holds.
            parser.release_consumed();
            // Unbiased: when both are ready the choice is random, so a flood of
            // deliveries cannot starve the client's own stanzas, nor the other way round.
            tokio::select! {
                msg = mailbox.recv() => {
                    let Some(msg) = msg else {
                        if mailbox.overflowed() {
                            tracing::warn!(jid = %self.jid, "session fell too far behind its mailbox; disconnecting");
                            // Let go at once, as for a full outbox: a clean close would
                            // leave what the client does not read queued in the kernel.
                            crate::metrics::inc(&self.ctx.metrics.stream_errors);
                            self.abandon(stream::error("resource-constraint", Some("too many stanzas waiting")));
                        }
                        return End::Closed;
                    };
                    if matches!(msg, SessionMsg::Close(_)) {
                        // What was queued for the client before the close is still written
                        // first: an error about one of its own stanzas (a message that could
                        // not be kept, whose XEP-0198 count the client may already hold) must
                        // not be lost to a close that merely came earlier.
                        while let Some(queued) = mailbox.try_recv() {
                            if !matches!(queued, SessionMsg::Deliver(_) | SessionMsg::DeliverUnaddressed(_)) {
                                continue;
                            }
                            if let Some(end) = self.handle(queued) {
                                return end;
                            }
                        }
                    }
                    if let Some(end) = self.handle(msg) {
                        return end;
                    }
                }
                // Cancel-safe: a read that is not ready has taken nothing.
                received = std::future::poll_fn(|cx| poll_read_into(io, parser, cx)) => match received {
                    Received::Closed => return End::LinkLost,
                    Received::Fed => self.activity.touch(),
                    Received::Invalid(e) => {
                        tracing::debug!(error = %e, "client stream error");
                        self.close_with(Some(e.stream_condition()), None);
                        return End::Closed;
                    }
                    Received::BadFrame(e) => {
                        tracing::debug!(error = %e, "client WebSocket frame refused");
                        self.close_with(Some(e.stream_condition()), Some(&e.to_string()));
                        return End::Closed;
                    }
                },
                () = writer_stalled(self.writer.as_ref()) => {
                    tracing::warn!(jid = %self.jid, "a write to the client timed out; disconnecting");
                    return End::Unresponsive("a write to the client timed out");
                }
            }
        }
    }

    /// Handles one stanza from the client; `false` when the session is over.
    async fn handle_stanza(&mut self, el: Element) -> bool {
        // Boxed: the routing future is over a KiB, and awaiting it inline would make
        // every idle session's task that big (see the idle RSS figures in
        // docs/benchmarks.md). One allocation per client stanza; none for a nonza
        // (SM acknowledgements come every few stanzas under load, and route nowhere).
        let handled = match stanza::kind(&el) {
            None => self.on_nonza(&el),
            Some(kind) => Box::pin(self.on_client(kind, el)).await,
        };
        match handled {
            Ok(()) => self.outbox.is_some(),
            Err(condition) => {
                self.close_with(Some(condition), None);
                false
            }
        }
    }

    /// Handles one message; `Some` when serving this connection is over.
    fn handle(&mut self, msg: SessionMsg) -> Option<End> {
        match msg {
            SessionMsg::Deliver(stanza) => {
                if !self.rooms.is_empty() {
                    self.note_room_exit(&stanza);
                }
                (!self.send(Sent::Stanza(stanza))).then_some(End::Closed)
            }
            SessionMsg::DeliverUnaddressed(stanza) => (!self.send(Sent::Shared(stanza))).then_some(End::Closed),
            SessionMsg::Replaced => {
                self.close_with(Some("conflict"), Some("Replaced by a new session with the same resource"));
                Some(End::Closed)
            }
            SessionMsg::Close(condition) => {
                self.close_with(condition, None);
                Some(End::Closed)
            }
            SessionMsg::Tick => (!self.detached && !self.on_tick()).then_some(End::Unresponsive("no answer to ping")),
            SessionMsg::Reannounce => {
                self.reannounce();
                None
            }
            SessionMsg::Attach(attach) => self.accept_attach(attach),
        }
    }

    /// A connection that asks to resume this session, here or on another node: taken
    /// if it names this session's resumption id (and, from another node, a possible
    /// count), otherwise given back to its shell.
    fn accept_attach(&mut self, attach: Box<dyn std::any::Any + Send>) -> Option<End> {
        let resume_id = self.sm.as_ref().and_then(|sm| sm.resume.as_ref()).map(|(id, _)| id.as_str());
        let attach = match attach.downcast::<Attach>() {
            Ok(attach) if resume_id == Some(attach.previd.as_str()) => return Some(End::Attach(attach)),
            Ok(attach) => {
                let Attach { io, parser, reply, .. } = *attach;
                let _ = reply.send(Err((io, parser)));
                return None;
            }
            Err(other) => other,
        };
        let migrate = attach.downcast::<Migrate>().ok()?;
        // A count the client cannot have is refused here, before anything changes: the
        // session stays as it was and the client gets `<failed/>` there.
        let possible = self
            .sm
            .as_ref()
            .is_some_and(|sm| migrate.h.wrapping_sub(sm.state.acked_count()) as usize <= sm.state.unacked_len());
        if resume_id == Some(migrate.previd.as_str()) && possible {
            return Some(End::Migrate(migrate));
        }
        let _ = migrate.reply.send(None);
        None
    }

    /// Waits, with no connection, for the client to resume: deliveries are kept as
    /// unacknowledged stanzas (bounded) to be sent on resumption. `None` when the
    /// session ends instead (timeout, replaced, closed, too much waiting).
    async fn wait_detached(&mut self, mailbox: &mut SessionMailbox) -> Option<End> {
        let secs = self.sm.as_ref().and_then(|sm| sm.resume.as_ref()).map_or(0, |(_, secs)| *secs);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        tracing::debug!(jid = %self.jid, secs, "connection lost; waiting for the client to resume");
        loop {
            tokio::select! {
                msg = mailbox.recv() => match self.handle(msg?) {
                    None => {}
                    Some(end @ (End::Attach(_) | End::Migrate(_))) => return Some(end),
                    Some(_) => return None,
                },
                () = tokio::time::sleep_until(deadline) => {
                    tracing::debug!(jid = %self.jid, "resumption timed out");
                    return None;
                }
            }
        }
    }

    /// The client resumed on another node: hands this session's state over (its
    /// connection here is already released), then forwards what still reaches it for
    /// [`MOVED_FORWARD_FOR`]. Nobody is told the session left: it did not. `false` when
    /// the asking node gave up waiting: nothing moved, and the session ends here as any
    /// other does.
    async fn move_away(&mut self, migrate: Migrate, mailbox: &mut SessionMailbox) -> bool {
        let Migrate { previd, h, to, reply } = migrate;
        // What an inactive client was spared is sent (and kept unacknowledged) like the rest.
        self.flush_held();
        self.held = None;
        let Some(sm) = self.sm.as_deref_mut() else { return false };
        // Checked in `accept_attach`.
        let _ = sm.state.ack(h);
        let own_jid = self.jid.as_str();
        let moved = MovedSession {
            jid: own_jid.to_owned(),
            previd,
            resume_secs: sm.resume.as_ref().map_or(0, |(_, secs)| *secs),
            handled_in: sm.state.handled_count(),
            acked_out: sm.state.acked_count(),
            unacked: sm.state.unacked().map(|sent| sent_xml(sent, own_jid)).collect(),
            available: self.available,
            initial_presence_sent: self.initial_presence_sent,
            presence: self.presence.as_ref().map(|(priority, p)| (*priority, p.to_string())),
            directed: self.directed.iter().cloned().collect(),
            roster_interested: self.roster_interested,
            carbons: self.carbons,
            rooms: self.rooms.iter().map(|(occupant, join)| (occupant.clone(), join.to_string())).collect(),
        };
        let unacked = moved.unacked.len();
        if reply.send(Some(moved)).is_err() {
            tracing::warn!(jid = %self.jid, "a move to another node was abandoned; ending the session here");
            return false;
        }
        // It lives on there now: nothing of it goes where an ended session's stanzas go.
        sm.state.take_unacked();
        tracing::info!(jid = %self.jid, node = to.node, unacked, "session moved to another node");
        let deadline = tokio::time::Instant::now() + MOVED_FORWARD_FOR;
        let mut forwarded = 0usize;
        loop {
            let msg = tokio::select! {
                msg = mailbox.recv() => msg,
                () = tokio::time::sleep_until(deadline) => None,
            };
            let Some(msg) = msg else { break };
            if !matches!(msg, SessionMsg::Deliver(_) | SessionMsg::DeliverUnaddressed(_)) {
                continue;
            }
            match self.ctx.cluster.deliver(to, msg) {
                Ok(()) => forwarded += 1,
                Err(SessionMsg::Deliver(stanza)) => {
                    crate::resume::reroute_unacked(&self.ctx, &self.bare, [Sent::Stanza(stanza)].into()).await;
                }
                Err(_) => {}
            }
        }
        tracing::debug!(jid = %self.jid, forwarded, "moved session stopped forwarding");
        true
    }

    /// Lets go of the lost connection (the socket is reset and released): the session
    /// stays bound and keeps what it sends.
    async fn detach(&mut self, read: Option<ReadHalf<ClientIo>>) {
        self.release(read, true).await;
        self.detached = true;
        self.ping = None;
    }

    /// Lets go of the socket: closes the outbox and waits for the writer to flush and
    /// shut the stream down (at most `CLOSE_GRACE`; at once if `at_once`, or if the
    /// outbox was abandoned). A writer that did not end with a clean shutdown leaves a
    /// client that does not read: its connection is reset, so the kernel drops the
    /// bytes the client never took instead of holding them while TCP retries.
    async fn release(&mut self, read: Option<ReadHalf<ClientIo>>, at_once: bool) {
        self.close_outbox();
        let Some(Writer { mut task, outbox }) = self.writer.take() else { return };
        if at_once {
            outbox.abandon(Vec::new());
        }
        let ended = match tokio::time::timeout(CLOSE_GRACE, &mut task).await {
            Ok(ended) => ended.ok(),
            Err(_) => {
                outbox.abandon(Vec::new());
                match tokio::time::timeout(LAST_WORDS_GRACE * 2, &mut task).await {
                    Ok(ended) => ended.ok(),
                    Err(_) => {
                        task.abort();
                        None
                    }
                }
            }
        };
        let (Some(read), Some(WriterEnd { io: write, clean })) = (read, ended) else { return };
        if !clean && read.is_pair_of(&write) {
            read.unsplit(write).reset_on_close();
        }
    }

    /// Takes over a resuming connection (XEP-0198 §5): acknowledges what the client
    /// says it handled, answers `<resumed/>` and sends every stanza still
    /// unacknowledged, in order. `None` when the client's count is impossible (the
    /// stream is closed with the error that says so).
    fn attach(&mut self, attach: Attach) -> Option<(ReadHalf<ClientIo>, StreamParser)> {
        let Attach { io, parser, previd, h, reply } = attach;
        let _ = reply.send(Ok(()));
        let (read_half, write_half) = tokio::io::split(io);
        let (outbox, writer) = spawn_writer(&self.ctx, write_half);
        self.writer = Some(writer);
        self.outbox = Some(outbox);
        self.detached = false;
        self.ping = None;
        self.activity.touch();
        // What an inactive client was spared goes out with the rest; the new stream
        // starts active.
        self.flush_held();
        self.held = None;
        let sm = self.sm.as_deref_mut()?;
        if let Err(SmError::HandledCountTooHigh { h, sent }) = sm.state.ack(h) {
            let bytes = sm::handled_count_too_high(h, sent);
            self.write(|out, _| out.extend_from_slice(&bytes));
            self.close_outbox();
            return None;
        }
        sm.state.resumed();
        let resumed = sm::resumed(&previd, sm.state.handled_count());
        let again: Vec<Sent> = sm.state.unacked().cloned().collect();
        self.write_nonza(&resumed);
        for sent in &again {
            self.write_sent(sent);
        }
        tracing::info!(jid = %self.jid, resent = again.len(), "session resumed");
        Some((read_half, parser))
    }

    /// What every ending runs, a panic included: unbind and announce the departure, let
    /// the writer flush the closing bytes and release the socket, and send what the
    /// client never acknowledged where undelivered stanzas go. A client that does not
    /// read loses its socket first, at once.
    async fn finish(&mut self, read: Option<ReadHalf<ClientIo>>) {
        let mut read = read;
        if self.writer.as_ref().is_some_and(|w| w.outbox.is_abandoned()) {
            self.release(read.take(), true).await;
        }
        // Boxed for the same reason as the routing future in `handle_stanza`.
        let still_bound = Box::pin(self.announce_departure()).await;
        self.ctx.cluster.disconnect(self.conn_id);
        tracing::debug!(jid = %self.jid, still_bound, "session ended");
        Box::pin(self.release(read, false)).await;
        if let Some(mut sm) = self.sm.take() {
            let unacked = sm.state.take_unacked();
            if !unacked.is_empty() {
                Box::pin(crate::resume::reroute_unacked(&self.ctx, &self.bare, unacked)).await;
            }
        }
    }
}

/// Everything a session's task owns.
struct SessionTask {
    state: SessionState,
    mailbox: SessionMailbox,
    /// `None` once the socket is released (while waiting for a resumption, and at the end).
    io: Option<ReadHalf<ClientIo>>,
    parser: StreamParser,
}

/// The session's task: serves the client and the mailbox, waits for a lost client to
/// resume if it may, then cleans up however the session ended. Takes its state boxed:
/// an `async fn` keeps its arguments and the locals they move into in separate slots,
/// so unboxed they made every session's task twice their size (2.4 KiB).
async fn run(mut session: Box<SessionTask>) {
    let SessionTask { state, mailbox, io, parser } = &mut *session;
    while let Some(read) = io.as_mut() {
        let served = AssertUnwindSafe(state.serve(mailbox, read, parser)).catch_unwind().await;
        let Ok(end) = served else {
            tracing::error!(jid = %state.jid, "session handler panicked; closing the session");
            state.close_with(Some("internal-server-error"), None);
            break;
        };
        // Boxed: rare, and it would otherwise widen every session's task.
        match Box::pin(after_serving(state, mailbox, io, parser, end)).await {
            Next::Serve => {}
            Next::End => break,
            Next::Moved => return,
        }
    }
    // Nothing queued after the end is handled; senders see the mailbox closed.
    mailbox.close();
    state.finish(io.take()).await;
}

/// What a session's task does once serving a connection ended.
enum Next {
    /// Serve the connection now in `io` (a resumption here).
    Serve,
    /// End the session: `finish` announces the departure.
    End,
    /// The session moved to another node: end without a word.
    Moved,
}

/// Handles the end of serving a connection: waits for a lost client to resume if it
/// may, takes a resuming connection over, or moves the session to another node.
async fn after_serving(
    state: &mut SessionState,
    mailbox: &mut SessionMailbox,
    io: &mut Option<ReadHalf<ClientIo>>,
    parser: &mut StreamParser,
    end: End,
) -> Next {
    let end = match end {
        End::LinkLost | End::Unresponsive(_) if state.resumable() => {
            state.detach(io.take()).await;
            state.wait_detached(mailbox).await.unwrap_or(End::Closed)
        }
        End::LinkLost => {
            state.close_with(None, None);
            End::Closed
        }
        End::Unresponsive(why) => {
            state.close_with(Some("connection-timeout"), Some(why));
            End::Closed
        }
        other => other,
    };
    match end {
        End::Attach(attach) => {
            // A session still connected (to a dead socket, presumably) lets go of it first.
            state.release(io.take(), true).await;
            match state.attach(*attach) {
                Some((read_half, resumed_parser)) => {
                    *io = Some(read_half);
                    *parser = resumed_parser;
                    Next::Serve
                }
                None => Next::End,
            }
        }
        End::Migrate(migrate) => {
            if move_away(state, mailbox, io.take(), *migrate).await {
                Next::Moved
            } else {
                Next::End
            }
        }
        _ => Next::End,
    }
}

/// The end of a session whose client resumed on another node: the connection here (a
/// dead one, presumably) is let go at once, the state moves, and the task ends without
/// the departure `finish` would announce. `false`: nothing moved, the session ends as
/// any other does.
async fn move_away(
    state: &mut SessionState,
    mailbox: &mut SessionMailbox,
    read: Option<ReadHalf<ClientIo>>,
    migrate: Migrate,
) -> bool {
    state.release(read, true).await;
    if !state.move_away(migrate, mailbox).await {
        return false;
    }
    mailbox.close();
    state.ctx.cluster.disconnect(state.conn_id);
    true
}

/// A stanza kept for the client, as XML addressed to it.
fn sent_xml(sent: &Sent, own_jid: &str) -> String {
    match sent {
        Sent::Stanza(el) => el.to_string(),
        Sent::Shared(shared) => {
            let mut out = Vec::new();
            shared.write_to(own_jid, &mut out);
            String::from_utf8_lossy(&out).into_owned()
        }
    }
}

/// How often every session checks its keepalive: half the ping timeout, so an unanswered
/// ping is noticed within 1.5 timeouts whatever the timer jitter.
fn tick_period(ctx: &Ctx) -> Duration {
    Duration::from_millis((ctx.config.c2s.ping_timeout_secs * 500).clamp(250, 15_000))
}

/// Ticks every bound session of this node, forever: one timer for the node instead of a
/// timer task per session (a task and a timer entry are memory every idle session held).
pub async fn tick_sessions(ctx: Arc<Ctx>) {
    let mut interval = tokio::time::interval(tick_period(&ctx));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        ctx.cluster.for_each_local(|session| {
            let _ = session.cast(SessionMsg::Tick);
        });
    }
}

/// Starts a bound session: writer task, registry entry, session task.
pub async fn start(ctx: Arc<Ctx>, io: ClientIo, parser: StreamParser, jid: FullJid) {
    let (read_half, write_half) = tokio::io::split(io);
    let (outbox, writer) = spawn_writer(&ctx, write_half);
    let activity = Activity::new();
    // Deliveries wait here until handled, then in the outbox until written: the same
    // limits apply to both.
    let c2s = &ctx.config.c2s;
    let (session, mailbox) = SessionRef::channel(c2s.max_outbound_queue, c2s.max_outbound_bytes);
    let bare = jid.to_bare().as_str().to_owned();
    let conn_id = ctx.cluster.connect(session).conn_id;
    // Registered at the user's owner (here, or sent there ahead of anything else this
    // session asks of it).
    ctx.account_action(&Origin::session(jid.clone(), conn_id), AccountAction::Bind).await;
    tracing::info!(jid = %jid, conn_id, "session bound");
    let rate_limits = &ctx.config.rate_limits;
    let state = SessionState {
        origin: Origin::session(jid.clone(), conn_id),
        rate: rate_limits.enabled.then(|| SessionRateLimiter::new(rate_limits.limits())),
        ctx,
        jid,
        bare,
        conn_id,
        outbox: Some(outbox),
        writer: Some(writer),
        activity,
        available: false,
        initial_presence_sent: false,
        directed: HashSet::new(),
        ping: None,
        sm: None,
        held: None,
        detached: false,
        presence: None,
        roster_interested: false,
        carbons: false,
        rooms: HashMap::new(),
    };
    tokio::spawn(run(Box::new(SessionTask { state, mailbox, io: Some(read_half), parser })));
}

/// Resumes, on this node, the session `previd` names that runs at `addr` on another
/// node (see [`crate::resume`]): its state comes here, and a session starts from it
/// with this connection. `Err` gives the connection back (`<failed/>`).
pub async fn resume_moved(
    ctx: Arc<Ctx>,
    addr: SessionAddr,
    previd: &str,
    h: u32,
    io: ClientIo,
    parser: StreamParser,
) -> Result<(), (ClientIo, StreamParser)> {
    let Some(link) = ctx.link().cloned() else { return Err((io, parser)) };
    let c2s = &ctx.config.c2s;
    // The mailbox exists before the old session is asked, so that what it forwards
    // waits here, in order, until the session runs.
    let (session, mailbox) = SessionRef::channel(c2s.max_outbound_queue, c2s.max_outbound_bytes);
    let here = ctx.cluster.connect(session);
    let call = crate::remote::NodeCall::TakeSession { conn_id: addr.conn_id, previd: previd.to_owned(), h, to: here };
    let moved = match link.call(addr.node, call).await {
        Ok(crate::remote::NodeReply::Session(Some(moved))) => *moved,
        other => {
            tracing::info!(node = addr.node, answer = ?other, "a session on another node was not handed over");
            ctx.cluster.disconnect(here.conn_id);
            return Err((io, parser));
        }
    };
    let Ok(jid) = FullJid::new(&moved.jid) else {
        ctx.cluster.disconnect(here.conn_id);
        return Err((io, parser));
    };
    let (read_half, write_half) = tokio::io::split(io);
    let (outbox, writer) = spawn_writer(&ctx, write_half);
    let activity = Activity::new();
    let policy = AckPolicy { every_stanzas: c2s.sm_ack_every_stanzas, max_unacked: c2s.sm_max_unacked };
    let parse = |xml: &String| crate::im::parse_stored_stanza(xml).map(Arc::new);
    let unacked = moved.unacked.iter().filter_map(parse).map(Sent::Stanza).collect();
    let sm = Sm {
        state: StreamManagement::restore(policy, moved.handled_in, moved.acked_out, unacked),
        resume: Some((moved.previd.clone(), moved.resume_secs)),
        last_request_ms: activity.now_ms(),
    };
    let rate_limits = &ctx.config.rate_limits;
    let presence = moved.presence.and_then(|(priority, xml)| Some((priority, parse(&xml)?)));
    let mut state = SessionState {
        origin: Origin::session(jid.clone(), here.conn_id),
        rate: rate_limits.enabled.then(|| SessionRateLimiter::new(rate_limits.limits())),
        bare: jid.to_bare().as_str().to_owned(),
        ctx: Arc::clone(&ctx),
        jid,
        conn_id: here.conn_id,
        outbox: Some(outbox),
        writer: Some(writer),
        activity,
        available: moved.available,
        initial_presence_sent: moved.initial_presence_sent,
        directed: moved.directed.into_iter().collect(),
        ping: None,
        sm: Some(Box::new(sm)),
        held: None,
        detached: false,
        presence,
        roster_interested: moved.roster_interested,
        carbons: moved.carbons,
        rooms: moved.rooms.iter().filter_map(|(occupant, join)| Some((occupant.clone(), parse(join)?))).collect(),
    };
    state.claim_registry_entry(addr.conn_id);
    state.rejoin_rooms();
    let resumed = sm::resumed(previd, moved.handled_in);
    state.write_nonza(&resumed);
    let again: Vec<Sent> = state.sm.as_ref().map(|sm| sm.state.unacked().cloned().collect()).unwrap_or_default();
    for sent in &again {
        state.write_sent(sent);
    }
    tracing::info!(jid = %state.jid, from = addr.node, resent = again.len(), "session resumed from another node");
    tokio::spawn(run(Box::new(SessionTask { state, mailbox, io: Some(read_half), parser })));
    Ok(())
}

/// What one read from the client gave.
enum Received {
    /// End of stream or a socket error.
    Closed,
    /// Bytes were fed to the parser.
    Fed,
    /// The bytes were not acceptable XML (or exceeded a limit).
    Invalid(waddle_xml::XmlError),
    /// A WebSocket frame that cannot be part of an XMPP stream.
    BadFrame(waddle_c2s::websocket::FrameError),
}

/// Reads what the socket has into a stack buffer and feeds it to the parser, all within
/// one poll, so that no buffer is held while the read is pending.
fn poll_read_into(
    io: &mut ReadHalf<ClientIo>,
    parser: &mut StreamParser,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<Received> {
    // Not zeroed: the socket (or TLS) fills it, and only what was filled is read.
    let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut buf = tokio::io::ReadBuf::uninit(&mut chunk);
    match std::pin::Pin::new(io).poll_read(cx, &mut buf) {
        std::task::Poll::Pending => std::task::Poll::Pending,
        std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(match crate::ws::frame_error(&e) {
            Some(refused) => Received::BadFrame(refused.clone()),
            None => Received::Closed,
        }),
        std::task::Poll::Ready(Ok(())) if buf.filled().is_empty() => std::task::Poll::Ready(Received::Closed),
        std::task::Poll::Ready(Ok(())) => std::task::Poll::Ready(match parser.feed(buf.filled()) {
            Ok(()) => Received::Fed,
            Err(e) => Received::Invalid(e),
        }),
    }
}

/// A session's outbox and the task that writes it to `io`.
fn spawn_writer(ctx: &Ctx, io: WriteHalf<ClientIo>) -> (OutboxHandle, Writer) {
    let c2s = &ctx.config.c2s;
    let (handle, outbox) = OutboxHandle::new(c2s.max_outbound_queue, c2s.max_outbound_bytes);
    let timeout = Duration::from_secs(c2s.write_timeout_secs);
    let task = tokio::spawn(writer(io, Arc::clone(&outbox), timeout));
    (handle, Writer { task, outbox })
}

/// Writes whatever the outbox holds, one write per wake-up: under load many stanzas
/// share a syscall (and a TLS record). The buffer is given back after each write, so an
/// idle session keeps none. Once the outbox is closed the last bytes are not flushed on
/// their own: the shutdown sends them together with TLS' close_notify.
///
/// Every write (and the shutdown) must finish within `timeout`, or the client counts as
/// not reading: the outbox is stalled, which ends the session. An abandoned outbox
/// stops the writer at once, even in the middle of a write.
async fn writer(mut io: WriteHalf<ClientIo>, outbox: Arc<Outbox>, timeout: Duration) -> WriterEnd {
    let mut chunk = Vec::new();
    while outbox.take(&mut chunk).await {
        let last = outbox.is_closed();
        let write = async {
            io.write_all(&chunk).await?;
            if !last {
                io.flush().await?;
            }
            Ok::<(), std::io::Error>(())
        };
        let written = tokio::select! {
            written = tokio::time::timeout(timeout, write) => written,
            () = outbox.abandoned() => break,
        };
        match written {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                // Nobody will read what is queued: refuse more instead of buffering it.
                outbox.close();
                return WriterEnd { io, clean: false };
            }
            Err(_) => {
                outbox.stall();
                return WriterEnd { io, clean: false };
            }
        }
        chunk = Vec::new();
    }
    drop(chunk);
    if let Some(last_words) = outbox.take_last_words() {
        if !last_words.is_empty() {
            let _ = tokio::time::timeout(LAST_WORDS_GRACE, async {
                io.write_all(&last_words).await?;
                io.flush().await
            })
            .await;
        }
        return WriterEnd { io, clean: false };
    }
    let clean = matches!(tokio::time::timeout(timeout, io.shutdown()).await, Ok(Ok(())));
    WriterEnd { io, clean }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    /// The size of the future an `async fn` taking one argument returns.
    fn future_size<A, F: Future>(_: impl FnOnce(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every connected session holds its task's future for as long as it is connected,
    /// so its size is memory per idle session (it was 2.4 KiB when `run` took its state
    /// unboxed, and about 9 KiB when the routing future was awaited inline).
    #[test]
    fn a_session_task_stays_small() {
        let size = future_size(super::run);
        assert!(size <= 512, "{size} bytes");
    }
}
