//! The routing seam: every stanza a session emits, and every stanza the server
//! originates on behalf of an account, goes through [`Ctx::route`]. The decision of where
//! an address lives is `waddle_cluster::classify`; this module dispatches on it.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use waddle_c2s::ns;
use waddle_c2s::stanza::{self, error_reply, StanzaKind};
use waddle_cluster::{classify, Destination, Place, SessionAddr, SessionMsg};
use waddle_im::{MessageDelivery, MessageType, SessionView};
use waddle_jid::{BareJid, FullJid, Jid};
use waddle_xml::{Element, Unaddressed};

use crate::ctx::Ctx;
use crate::remote::NodeOp;
use crate::{im, server};

/// Who sent a stanza: a bound session (with its connection id, so the server can update
/// that exact session's registry entry), or an account/the server itself.
#[derive(Clone, Debug)]
pub struct Origin {
    pub jid: Jid,
    pub conn_id: Option<u64>,
}

impl Origin {
    pub fn session(jid: FullJid, conn_id: u64) -> Origin {
        Origin { jid: Jid::from(jid), conn_id: Some(conn_id) }
    }

    pub fn full(&self) -> Option<&FullJid> {
        self.jid.try_as_full().ok()
    }

    pub fn bare(&self) -> BareJid {
        self.jid.to_bare()
    }
}

tokio::task_local! {
    static ROUTED_FOR: RoutedFor;
}

/// Set while a stanza of a session that waits for the outcome is routed: by the session
/// itself around its own 1:1 message, and by this node around a stanza a session on
/// another node sent it (`NodeCall::Route`). A refusal of that stanza bounced to that
/// session is collected here instead of travelling on its own (through the session's
/// mailbox, or back from another node), so that the session writes it before it handles
/// the client's next stanza: an `<a/>` (XEP-0198) that covers the stanza can then never
/// reach the client ahead of its error. A task-local and not a parameter because the
/// refusal comes from deep in the routing (a durable write that failed, a forward that
/// found no node), through [`Ctx::bounce_to`].
pub struct RoutedFor {
    conn_id: u64,
    refused: std::sync::Mutex<Option<Refusal>>,
}

/// What [`RoutedFor::collect`] found: the refusal's condition, and the error reply to
/// write (none when the refused stanza was itself an error).
pub struct Refusal {
    pub condition: String,
    pub reply: Option<Element>,
}

impl RoutedFor {
    /// Runs `routing` for the session `conn_id` and returns its refusal, if it was refused.
    pub async fn collect(conn_id: u64, routing: impl std::future::Future<Output = ()>) -> Option<Refusal> {
        let slot = RoutedFor { conn_id, refused: std::sync::Mutex::new(None) };
        ROUTED_FOR
            .scope(slot, async {
                routing.await;
                ROUTED_FOR.with(|s| s.refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take())
            })
            .await
    }

    /// Takes a refusal for `conn_id` while its routing is being collected; `false` when no
    /// one collects it (the bounce is sent as usual). The first refusal is the one kept.
    fn report(conn_id: u64, condition: &str, reply: impl FnOnce() -> Option<Element>) -> bool {
        ROUTED_FOR
            .try_with(|s| {
                if s.conn_id != conn_id {
                    return false;
                }
                let mut refused = s.refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if refused.is_none() {
                    *refused = Some(Refusal { condition: condition.to_owned(), reply: reply() });
                }
                true
            })
            .unwrap_or(false)
    }
}

impl Ctx {
    /// Routes `stanza` (whose `from` is already stamped) to its destination.
    pub async fn route(&self, origin: &Origin, stanza: Element) {
        self.route_hop(origin, stanza, 0).await;
    }

    /// [`Ctx::route`] for a stanza that has been forwarded `hops` times already. A
    /// stanza for a user owned by another node is forwarded there, and so is a
    /// session's stanza for the server (its IQs work on the sender's account data).
    pub async fn route_hop(&self, origin: &Origin, stanza: Element, hops: u8) {
        let Some(kind) = stanza::kind(&stanza) else {
            return;
        };
        let to = match stanza.attr("to").map(Jid::new) {
            None => None,
            Some(Ok(jid)) => Some(jid),
            Some(Err(_)) => {
                self.bounce(&stanza, "jid-malformed").await;
                return;
            }
        };
        let destination = classify(to.as_ref(), &self.domain, &self.services);
        let owned_by = |bare: &str| match self.cluster.user(bare) {
            Place::Local(_) => None,
            Place::Remote(node) => Some(node),
        };
        let elsewhere = match &destination {
            Destination::Account(bare) => owned_by(bare.as_str()),
            Destination::Session(full) => owned_by(full.to_bare().as_str()),
            Destination::Server if origin.conn_id.is_some() => owned_by(origin.bare().as_str()),
            Destination::Service { domain, jid } if *domain == self.muc.domain && !self.cluster.alone() => {
                match jid.node() {
                    Some(room) => match self.cluster.place(crate::muc::room_partition(self, room.as_str()).await) {
                        Place::Local(()) => None,
                        Place::Remote(node) => Some(node),
                    },
                    None => None,
                }
            }
            _ => None,
        };
        // Sent carbons are made once, on the node the message entered.
        if kind == StanzaKind::Message && hops == 0 {
            self.send_sent_carbons(origin, to.as_ref(), &stanza);
        }
        if let Some(node) = elsewhere {
            if kind == StanzaKind::Message
                && self.replication().is_some()
                && crate::mam::needs_durable_ack(self, origin, &stanza)
            {
                // Boxed: rare outside replicated clusters, and a call's future is large.
                Box::pin(self.forward_and_wait(node, origin, stanza, hops)).await;
                return;
            }
            if !self.forward(node, origin, &stanza, hops) {
                // The node that owns the destination is unreachable (RFC 6120 §8.3.3.14).
                self.bounce_to(origin, &stanza, "recipient-unavailable").await;
            }
            return;
        }
        match destination {
            // Boxed, like the other rarely taken branches with deep futures (the server's
            // own IQ handlers, offline storage, starting a room): each routed stanza's
            // future is as large as the largest branch it awaits inline, and every
            // session's stanza handling holds one (see docs/ARCHITECTURE.md, idle memory).
            Destination::Server => Box::pin(server::handle(self, origin, kind, stanza)).await,
            Destination::Account(bare) => self.to_account(origin, kind, &bare, stanza).await,
            Destination::Session(full) => self.to_session(origin, kind, &full, stanza).await,
            Destination::Service { domain, jid } if domain == self.muc.domain => match self.arc() {
                Some(ctx) => crate::muc::route(&ctx, origin, stanza, jid.node().map(|n| n.as_str().to_owned())).await,
                None => self.bounce(&stanza, "service-unavailable").await,
            },
            Destination::Service { .. } => self.bounce(&stanza, "service-unavailable").await,
            Destination::Remote(_) => {
                // No server-to-server federation: say so instead of silently dropping.
                if kind != StanzaKind::Presence {
                    self.bounce(&stanza, "remote-server-not-found").await;
                }
            }
        }
    }

    /// Routes a stanza the server originates on its own (IQ replies, errors, archive
    /// results, stanzas a room emits) exactly as a client's stanza to the same address
    /// would go: a full JID reaches that session (or the RFC 6121 rules for a missing
    /// resource), a bare JID reaches the account's resources or offline storage. The
    /// origin is the stanza's `from` (the server when there is none), never a session,
    /// so nothing routed here is archived as a user's chat.
    ///
    /// Returns a boxed future: the seam leads back here (replies are emitted from inside
    /// routing), so the cycle needs one named, `Send` type, and each caller's future
    /// would otherwise hold a whole routing future inline.
    pub fn emit(&self, stanza: Element) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let from = stanza.attr("from").and_then(|f| Jid::new(f).ok()).or_else(|| Jid::new(&self.domain).ok());
            // The configured domain is a valid JID (checked at start), so this never drops.
            let Some(jid) = from else { return };
            let origin = Origin { jid, conn_id: None };
            self.route(&origin, stanza).await;
        })
    }

    /// [`Ctx::bounce`] straight to the session `origin` when the stanza came from one:
    /// the error must reach the client whose stanza failed even when the node that owns
    /// its user (where [`Ctx::emit`] would route it) is the one that cannot be reached,
    /// or the client, whose XEP-0198 count covered the stanza, would take it as kept.
    pub async fn bounce_to(&self, origin: &Origin, original: &Element, condition: &str) {
        if let Some(conn_id) = origin.conn_id {
            if RoutedFor::report(conn_id, condition, || error_reply(original, condition, None)) {
                return;
            }
            if let Some(reply) = error_reply(original, condition, None) {
                let addr = waddle_cluster::SessionAddr { node: crate::remote::conn_node(conn_id), conn_id };
                match self.cluster.deliver(addr, SessionMsg::Deliver(Arc::new(reply))) {
                    Ok(()) => return,
                    Err(_) => tracing::debug!(conn_id, "the session of a bounced stanza is gone"),
                }
            }
            return;
        }
        self.bounce(original, condition).await;
    }

    /// Sends the error reply to `original` back to its sender through [`Ctx::emit`]
    /// (nothing for an error: errors are never answered with errors), with carbons of
    /// it when the original was a message eligible for them.
    pub async fn bounce(&self, original: &Element, condition: &str) {
        if let Some(reply) = error_reply(original, condition, None) {
            let carbons = self.bounce_carbons(original, &reply);
            self.emit(reply).await;
            if let Some((carbon, targets)) = carbons {
                self.deliver_to_each(&carbon, &targets);
            }
        }
    }

    /// Delivers a copy of `stanza` to each connected session in `recipients` (full
    /// JIDs), with that JID as its `to`: serialized once, written by each session with
    /// its own address spliced in.
    pub fn deliver_to_each(&self, stanza: &Element, recipients: &[String]) {
        let shared = Arc::new(Unaddressed::new(stanza, ns::CLIENT));
        self.deliver_shared_to_jids(recipients, shared, 0);
    }

    /// Fan-out to full JIDs: the sessions of users owned here are written to directly
    /// (one inter-node message per node they run on); the JIDs of users owned elsewhere
    /// go to their owners, one message per owner, which resolve them the same way.
    pub fn deliver_shared_to_jids(&self, recipients: &[String], shared: Arc<Unaddressed>, hops: u8) {
        let mut addrs: Vec<SessionAddr> = Vec::with_capacity(recipients.len());
        let mut elsewhere: Vec<(u64, Vec<String>)> = Vec::new();
        for full in recipients {
            // Room occupants' JIDs are the normalized ones their sessions stamped, which
            // is how the registry keys them; anything else goes through the parser.
            let Some((bare, resource)) = full.split_once('/') else { continue };
            let place = match self.cluster.user(bare) {
                Place::Local(shard) => match shard.addr(resource) {
                    Some(addr) => Place::Local(Some(addr)),
                    None => FullJid::new(full).map_or(Place::Local(None), |jid| {
                        match self.cluster.user(jid.to_bare().as_str()) {
                            Place::Local(shard) => Place::Local(shard.addr(jid.resource().as_str())),
                            Place::Remote(node) => Place::Remote(node),
                        }
                    }),
                },
                Place::Remote(node) => Place::Remote(node),
            };
            match place {
                Place::Local(addr) => addrs.extend(addr),
                // A forwarded fan-out is resolved by its owner, never passed on again.
                Place::Remote(_) if hops > 0 => {}
                Place::Remote(node) => match elsewhere.iter_mut().find(|(n, _)| *n == node) {
                    Some((_, jids)) => jids.push(full.clone()),
                    None => elsewhere.push((node, vec![full.clone()])),
                },
            }
        }
        for (node, jids) in elsewhere {
            let (bytes, attrs_end) = shared.parts();
            self.to_node(node, NodeOp::DeliverToJids { jids, bytes: bytes.to_vec(), attrs_end });
        }
        self.cluster.deliver_each(addrs, shared);
    }

    /// Delivers one shared stanza to several sessions of `bare`.
    pub fn deliver_to_resources(&self, bare: &str, resources: &[String], stanza: Element) {
        self.deliver_shared_to_resources(bare, resources, Arc::new(stanza));
    }

    fn deliver_shared_to_resources(&self, bare: &str, resources: &[String], stanza: Arc<Element>) {
        for s in self.sessions_of(bare) {
            if resources.contains(&s.resource) {
                let _ = self.cluster.deliver(s.addr, SessionMsg::Deliver(Arc::clone(&stanza)));
            }
        }
    }

    /// Delivers to every available session of `bare`; returns how many got it.
    pub fn deliver_to_available(&self, bare: &str, stanza: Element) -> usize {
        let stanza = Arc::new(stanza);
        let mut n = 0;
        for s in self.sessions_of(bare).into_iter().filter(|s| s.available) {
            if self.cluster.deliver(s.addr, SessionMsg::Deliver(Arc::clone(&stanza))).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// The bound sessions of `bare`, a user owned here (none if it is not).
    pub fn sessions_of(&self, bare: &str) -> Vec<waddle_cluster::SessionEntry> {
        self.local_shard(bare).map(|shard| shard.sessions()).unwrap_or_default()
    }

    /// What the delivery rules need of `bare`'s sessions, and whether any of them has
    /// carbons enabled (read in the same registry lookup).
    fn session_views(&self, bare: &str) -> (Vec<SessionView>, bool) {
        let mut carbons = false;
        let views = self
            .sessions_of(bare)
            .into_iter()
            .map(|s| {
                carbons |= s.carbons;
                SessionView { resource: s.resource, priority: s.priority, available: s.available }
            })
            .collect();
        (views, carbons)
    }

    /// Whether `bare`'s account exists; `None` (after bouncing `stanza` with
    /// `recipient-unavailable`, type `wait`) when that cannot be known now, such as a
    /// partition this node was just given and has not recovered yet: an unknown answer
    /// is never taken for "no such account", which would drop the stanza silently.
    async fn account_exists_or_bounce(&self, origin: &Origin, bare: &BareJid, stanza: &Element) -> Option<bool> {
        let Some(node) = bare.node() else { return Some(false) };
        match self.users().account_exists(node.as_str()).await {
            Ok(exists) => Some(exists),
            Err(e) => {
                tracing::warn!(error = %e, "account lookup failed; the stanza is bounced");
                self.bounce_to(origin, stanza, "recipient-unavailable").await;
                None
            }
        }
    }

    async fn to_account(&self, origin: &Origin, kind: StanzaKind, to: &BareJid, mut stanza: Element) {
        match kind {
            StanzaKind::Message => {
                let msg_type = MessageType::parse(stanza.attr("type"));
                let (sessions, carbons) = self.session_views(to.as_str());
                // A bound session proves the account: the storage round trip is only
                // needed for an account with nobody online.
                let exists = if sessions.is_empty() {
                    let Some(exists) = self.account_exists_or_bounce(origin, to, &stanza).await else { return };
                    exists
                } else {
                    true
                };
                if exists && !self.archive_if_chat(origin, to, &mut stanza).await {
                    return;
                }
                let decision = waddle_im::deliver_to_bare(msg_type, exists, &sessions);
                self.apply_message_delivery(origin, to, decision, stanza, carbons).await;
            }
            StanzaKind::Presence => im::presence_to_account(self, origin, to, stanza).await,
            StanzaKind::Iq => {
                if origin.bare() == *to {
                    // An IQ to one's own bare JID is handled by the server for the account.
                    Box::pin(server::handle(self, origin, kind, stanza)).await;
                } else {
                    match self.account_exists_or_bounce(origin, to, &stanza).await {
                        Some(true) => server::iq_on_behalf_of(self, origin, to, stanza).await,
                        Some(false) => self.bounce(&stanza, "service-unavailable").await,
                        None => {}
                    }
                }
            }
        }
    }

    async fn to_session(&self, origin: &Origin, kind: StanzaKind, to: &FullJid, mut stanza: Element) {
        let bare = to.to_bare();
        // Whether the account's other sessions want carbons comes with the lookup.
        let found = self.local_shard(bare.as_str()).and_then(|shard| shard.addr_and_carbons(to.resource().as_str()));
        let (session, carbons) = match found {
            Some((session, carbons)) => (Some(session), carbons),
            None => (None, false),
        };
        // Only a message needs to know whether the account exists: a bound session
        // proves it, otherwise storage is asked (never archive for a missing account,
        // or whoever registers the name later would find the message in their archive).
        let message_to_existing_account = if kind != StanzaKind::Message {
            false
        } else if session.is_some() {
            true
        } else {
            let Some(exists) = self.account_exists_or_bounce(origin, &bare, &stanza).await else { return };
            exists
        };
        if message_to_existing_account && !self.archive_if_chat(origin, &bare, &mut stanza).await {
            return;
        }
        match (kind, session) {
            (StanzaKind::Presence, _) if im::is_subscription(&stanza) => {
                // Subscription states belong to the account, not a resource (RFC 6121 §3).
                im::presence_to_account(self, origin, &bare, stanza).await;
            }
            (StanzaKind::Presence, _) if stanza.attr("type") == Some("probe") => {
                im::presence_to_account(self, origin, &bare, stanza).await;
            }
            (StanzaKind::Message, Some(session)) if carbons => {
                let stanza = Arc::new(stanza);
                let _ = self.cluster.deliver(session, SessionMsg::Deliver(Arc::clone(&stanza)));
                self.send_received_carbons(origin, &bare, &[to.resource().as_str()], &stanza);
            }
            (_, Some(session)) => {
                let _ = self.cluster.deliver(session, SessionMsg::Deliver(Arc::new(stanza)));
            }
            (StanzaKind::Message, None) => {
                let msg_type = MessageType::parse(stanza.attr("type"));
                let (sessions, carbons) = self.session_views(bare.as_str());
                let decision = waddle_im::deliver_to_missing_full(msg_type, message_to_existing_account, &sessions);
                self.apply_message_delivery(origin, &bare, decision, stanza, carbons).await;
            }
            (StanzaKind::Iq, None) => self.bounce(&stanza, "service-unavailable").await,
            // Presence to a resource that is gone is silently dropped (RFC 6121 §4.6.3).
            (StanzaKind::Presence, None) => {}
        }
    }

    /// 1:1 messages sent by a local session are archived for both parties (XEP-0313).
    /// `false` when the message is refused (a retraction of someone else's message,
    /// see [`crate::mam::archive_chat`]): it has been bounced with `forbidden` and must
    /// not be delivered.
    async fn archive_if_chat(&self, origin: &Origin, to: &BareJid, stanza: &mut Element) -> bool {
        if origin.conn_id.is_none() || origin.bare() == *to {
            return true;
        }
        match crate::mam::archive_chat(self, stanza, origin.bare().as_str(), to.as_str()).await {
            crate::mam::ChatVerdict::Deliver => true,
            crate::mam::ChatVerdict::NotAuthor => {
                self.bounce(stanza, "forbidden").await;
                false
            }
            crate::mam::ChatVerdict::NotDurable => {
                self.bounce_to(origin, stanza, "recipient-unavailable").await;
                false
            }
        }
    }

    /// Carries out the delivery decision for a message to the local account `to`;
    /// `carbons` says whether a session of `to` has carbons enabled. Only a delivered
    /// message is copied: one stored offline reaches the account's next available
    /// resource later, and a copy now would give a resource both.
    async fn apply_message_delivery(
        &self,
        origin: &Origin,
        to: &BareJid,
        decision: MessageDelivery,
        stanza: Element,
        carbons: bool,
    ) {
        match decision {
            MessageDelivery::Resources(resources) if carbons => {
                let stanza = Arc::new(stanza);
                self.deliver_shared_to_resources(to.as_str(), &resources, Arc::clone(&stanza));
                self.send_received_carbons(origin, to, &resources, &stanza);
            }
            MessageDelivery::Resources(resources) => self.deliver_to_resources(to.as_str(), &resources, stanza),
            MessageDelivery::StoreOffline => Box::pin(im::store_offline(self, to, stanza)).await,
            MessageDelivery::ErrorServiceUnavailable => self.bounce(&stanza, "service-unavailable").await,
            MessageDelivery::Drop => {}
        }
    }
}
