//! Session registry: which sessions are bound for each bare JID, with the soft state
//! routing needs (priority, availability, last presence, roster interest, XEP-0280
//! carbons).
//!
//! Sharded by the same partition function as placement, so that in a cluster a shard is
//! the unit that moves between nodes. Locks are per shard and never held across an
//! `.await` (only plain `std` locks are used, and only inside non-async methods).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use waddle_xml::{Element, Unaddressed};

use crate::mailbox;
use crate::placement::{partition_of, PARTITIONS};

/// Messages a session's task accepts. Defined here because the registry (and so the
/// routing seam) hands out session references.
#[derive(Debug)]
pub enum SessionMsg {
    /// Close the client's stream: cleanly with `None`, otherwise with this stream error
    /// condition (the node shutting down, the account deleted).
    Close(Option<&'static str>),
    /// A stanza to write to the client. Shared so fan-out does not deep-copy it.
    Deliver(Arc<Element>),
    /// A stanza serialized once for many recipients, written with this session's full
    /// JID as its `to` (a groupchat message reaching every occupant).
    DeliverUnaddressed(Arc<Unaddressed>),
    /// Another session bound the same full JID: close with `<conflict/>`.
    Replaced,
    /// Periodic keepalive check (XEP-0199 server-to-client ping).
    Tick,
    /// The ring changed or a peer came back: tell the user's owner about this session
    /// again (registry shards are soft state, rebuilt by the sessions they name).
    Reannounce,
    /// A new connection that resumes this session (XEP-0198), from the node's
    /// connection shell. Opaque here: the registry routes it and never looks inside.
    Attach(Box<dyn std::any::Any + Send>),
}

/// The mailbox of a bound session's task, which handles its messages one at a time.
///
/// A session is a plain task, not an actor: a ractor actor's four channels and its own
/// task were about 5 KiB of every idle session (ractor preallocates each channel's first
/// block, the supervision one for 32 large events), and a session needs neither
/// supervision nor remote addressing. The mailbox ([`crate::mailbox`]) is bounded: a
/// session that falls that far behind overflows it and is ended.
#[derive(Clone, Debug)]
pub struct SessionRef(mailbox::Sender<SessionMsg>);

/// The receiving end of a [`SessionRef`], owned by the session's task.
pub type SessionMailbox = mailbox::Receiver<SessionMsg>;

impl SessionRef {
    /// A session's handle and mailbox; more than `limit` waiting messages, or fan-out
    /// stanzas of more than `byte_limit` bytes, overflow it.
    pub fn channel(limit: usize, byte_limit: usize) -> (SessionRef, SessionMailbox) {
        let (tx, rx) = mailbox::mailbox(limit, byte_limit);
        (SessionRef(tx), rx)
    }

    /// Queues `msg` for the session; gives it back if the session has ended.
    pub fn cast(&self, msg: SessionMsg) -> Result<(), SessionMsg> {
        // A shared stanza's bytes are counted against every mailbox it waits in: each
        // waiting copy alone keeps them alive.
        let bytes = match &msg {
            SessionMsg::DeliverUnaddressed(shared) => shared.len(),
            _ => 0,
        };
        self.0.send_sized(msg, bytes)
    }
}

/// Where a bound session's task runs. Plain data, so a registry shard can name sessions
/// on other nodes; the node-local mailbox behind it is in [`crate::Locality`]'s
/// connection table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct SessionAddr {
    pub node: u64,
    /// Unique in the cluster: the node id is in its upper bits.
    pub conn_id: u64,
}

/// A bound session as the registry holds it; lookups hand out clones (cheap: the
/// presence is reference-counted).
#[derive(Clone, Debug)]
pub struct SessionEntry {
    pub resource: String,
    /// Where the session's task runs: its node and its connection id there (unique in
    /// the cluster). Reaching it goes through [`crate::Locality::deliver`].
    pub addr: SessionAddr,
    pub priority: i8,
    pub available: bool,
    /// Last available presence broadcast by this session (answers probes).
    pub presence: Option<Arc<Element>>,
    /// Whether the session requested the roster (RFC 6121 §2.1.6: only those get pushes).
    pub roster_interested: bool,
    /// Whether the session enabled XEP-0280 carbons. Per session, so a new session of
    /// the same resource starts without them. Change it with [`Registry::set_carbons`]
    /// or [`Registry::update`] (both keep the registry's count of such sessions).
    pub carbons: bool,
}

type Shard = RwLock<HashMap<String, Vec<SessionEntry>>>;

#[derive(Debug)]
pub struct Registry {
    shards: Vec<Shard>,
    /// How many bound sessions have carbons enabled, changed under the shard lock that
    /// changes a session's flag: while it is zero (a node whose clients never enable
    /// carbons), the carbons lookups of the message path return without taking a lock.
    carbons_sessions: AtomicUsize,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry { shards: (0..PARTITIONS).map(|_| RwLock::default()).collect(), carbons_sessions: AtomicUsize::new(0) }
    }

    fn shard(&self, bare: &str) -> &Shard {
        // partition_of is always < PARTITIONS == shards.len().
        &self.shards[partition_of(bare) as usize]
    }

    /// Binds a session. Returns the entry it replaced (same full JID), whose actor the
    /// caller must tell to close with `<conflict/>`.
    pub fn bind(&self, bare: &str, entry: SessionEntry) -> Option<SessionEntry> {
        let mut shard = self.shard(bare).write().unwrap_or_else(|e| e.into_inner());
        let sessions = shard.entry(bare.to_owned()).or_default();
        let replaced = sessions.iter().position(|s| s.resource == entry.resource).map(|i| sessions.swap_remove(i));
        self.count_carbons(replaced.as_ref().is_some_and(|r| r.carbons), entry.carbons);
        sessions.push(entry);
        replaced
    }

    /// Removes a session if it is still the one with `conn_id` (a replaced session must
    /// not unbind its successor).
    pub fn unbind(&self, bare: &str, resource: &str, conn_id: u64) -> bool {
        let mut shard = self.shard(bare).write().unwrap_or_else(|e| e.into_inner());
        let Some(sessions) = shard.get_mut(bare) else {
            return false;
        };
        let Some(i) = sessions.iter().position(|s| s.resource == resource && s.addr.conn_id == conn_id) else {
            return false;
        };
        let removed = sessions.swap_remove(i);
        self.count_carbons(removed.carbons, false);
        if sessions.is_empty() {
            shard.remove(bare);
        }
        true
    }

    /// Where this session runs, if bound (no copy of the rest of its entry).
    pub fn addr(&self, bare: &str, resource: &str) -> Option<SessionAddr> {
        let shard = self.shard(bare).read().unwrap_or_else(|e| e.into_inner());
        shard.get(bare)?.iter().find(|s| s.resource == resource).map(|s| s.addr)
    }

    pub fn sessions(&self, bare: &str) -> Vec<SessionEntry> {
        let shard = self.shard(bare).read().unwrap_or_else(|e| e.into_inner());
        shard.get(bare).map(|v| v.to_vec()).unwrap_or_default()
    }

    /// Applies `f` to the entry of this exact session, if it is still bound.
    pub fn update(&self, bare: &str, resource: &str, conn_id: u64, f: impl FnOnce(&mut SessionEntry)) -> bool {
        let mut shard = self.shard(bare).write().unwrap_or_else(|e| e.into_inner());
        match shard
            .get_mut(bare)
            .and_then(|v| v.iter_mut().find(|s| s.resource == resource && s.addr.conn_id == conn_id))
        {
            Some(entry) => {
                let had_carbons = entry.carbons;
                f(entry);
                self.count_carbons(had_carbons, entry.carbons);
                true
            }
            None => false,
        }
    }

    /// Enables or disables XEP-0280 carbons for this exact session; `false` if it is no
    /// longer bound.
    pub fn set_carbons(&self, bare: &str, resource: &str, conn_id: u64, enabled: bool) -> bool {
        self.update(bare, resource, conn_id, |e| e.carbons = enabled)
    }

    /// Where this session runs and whether another session of `bare` has carbons
    /// enabled: one lookup for the delivery of a message to a full JID, which must send
    /// `received` carbons to those other sessions.
    pub fn addr_and_carbons(&self, bare: &str, resource: &str) -> Option<(SessionAddr, bool)> {
        let shard = self.shard(bare).read().unwrap_or_else(|e| e.into_inner());
        let sessions = shard.get(bare)?;
        let handle = sessions.iter().find(|s| s.resource == resource)?.addr;
        let others = self.any_carbons() && sessions.iter().any(|s| s.carbons && s.resource != resource);
        Some((handle, others))
    }

    /// The resources of `bare`'s sessions that have carbons enabled, in no particular
    /// order. Empty, without allocating, when there are none.
    pub fn carbons_resources(&self, bare: &str) -> Vec<String> {
        if !self.any_carbons() {
            return Vec::new();
        }
        let shard = self.shard(bare).read().unwrap_or_else(|e| e.into_inner());
        shard
            .get(bare)
            .map(|v| v.iter().filter(|s| s.carbons).map(|s| s.resource.clone()).collect())
            .unwrap_or_default()
    }

    /// Whether any session may have carbons enabled (false: none has).
    pub fn any_carbons(&self) -> bool {
        self.carbons_sessions.load(Ordering::Relaxed) > 0
    }

    /// Keeps the count of carbons-enabled sessions; called under the shard's write lock
    /// with a session's flag before and after a change.
    fn count_carbons(&self, before: bool, after: bool) {
        match (before, after) {
            (false, true) => {
                self.carbons_sessions.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.carbons_sessions.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// Drops every entry of sessions on `node` (it left or died); how many there were.
    pub fn remove_node(&self, node: u64) -> usize {
        let mut removed = 0;
        for shard in &self.shards {
            let mut shard = shard.write().unwrap_or_else(|e| e.into_inner());
            shard.retain(|_, sessions| {
                sessions.retain(|s| {
                    let gone = s.addr.node == node;
                    if gone {
                        removed += 1;
                        self.count_carbons(s.carbons, false);
                    }
                    !gone
                });
                !sessions.is_empty()
            });
        }
        removed
    }

    /// How many sessions this registry holds entries for (of any node).
    pub fn session_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).values().map(Vec::len).sum::<usize>())
            .sum()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// A queued message costs this much (the mailbox holds one per delivery in flight).
    #[test]
    fn session_messages_stay_small() {
        assert!(std::mem::size_of::<SessionMsg>() <= 24, "{} bytes", std::mem::size_of::<SessionMsg>());
    }

    #[test]
    fn fan_out_stanzas_count_their_bytes_against_the_mailbox() {
        let el = Element::new("message", "jabber:client")
            .with_child(Element::new("body", "jabber:client").with_text("x".repeat(600)));
        let shared = Arc::new(Unaddressed::new(&el, "jabber:client"));
        let (session, mut mailbox) = SessionRef::channel(8, 1000);
        session.cast(SessionMsg::DeliverUnaddressed(Arc::clone(&shared))).unwrap();
        session.cast(SessionMsg::Tick).unwrap();
        assert!(session.cast(SessionMsg::DeliverUnaddressed(Arc::clone(&shared))).is_err(), "over 1,000 bytes");
        assert!(mailbox.try_recv().is_none(), "the mailbox overflowed and dropped what it held");
        assert_eq!(Arc::strong_count(&shared), 1);
    }

    #[test]
    fn a_message_to_an_ended_session_comes_back() {
        let (session, mut mailbox) = SessionRef::channel(8, usize::MAX);
        session.cast(SessionMsg::Tick).unwrap();
        assert!(matches!(mailbox.try_recv(), Some(SessionMsg::Tick)));
        drop(mailbox);
        assert!(matches!(session.cast(SessionMsg::Replaced), Err(SessionMsg::Replaced)));
    }

    #[test]
    fn binding_the_same_resource_hands_back_the_replaced_session() {
        let registry = Registry::default();
        let entry = |conn_id| SessionEntry {
            resource: "phone".into(),
            addr: SessionAddr { node: 1, conn_id },
            priority: 0,
            available: false,
            presence: None,
            roster_interested: false,
            carbons: false,
        };
        assert!(registry.bind("a@x", entry(1)).is_none());
        assert_eq!(registry.bind("a@x", entry(2)).map(|old| old.addr.conn_id), Some(1));
        assert!(!registry.unbind("a@x", "phone", 1), "the replaced session must not unbind its successor");
        assert!(registry.addr("a@x", "phone").is_some());
        assert!(registry.unbind("a@x", "phone", 2));
        assert_eq!(registry.session_count(), 0);
    }

    fn entry(resource: &str, conn_id: u64) -> SessionEntry {
        SessionEntry {
            resource: resource.into(),
            addr: SessionAddr { node: 1, conn_id },
            priority: 0,
            available: true,
            presence: None,
            roster_interested: false,
            carbons: false,
        }
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    #[test]
    fn carbons_are_per_session_and_listed_per_account() {
        let registry = Registry::default();
        for (i, r) in ["a1", "a2", "a3"].into_iter().enumerate() {
            registry.bind("alice@x", entry(r, i as u64 + 1));
        }
        registry.bind("bob@x", entry("b1", 10));
        assert!(!registry.any_carbons());
        assert!(registry.carbons_resources("alice@x").is_empty());
        assert!(registry.set_carbons("alice@x", "a1", 1, true));
        assert!(registry.set_carbons("alice@x", "a2", 2, true));
        assert!(!registry.set_carbons("alice@x", "a3", 99, true), "another connection's session");
        assert_eq!(sorted(registry.carbons_resources("alice@x")), ["a1", "a2"]);
        assert!(registry.carbons_resources("bob@x").is_empty());
        assert!(registry.carbons_resources("carol@x").is_empty());

        let (_, others) = registry.addr_and_carbons("alice@x", "a1").unwrap();
        assert!(others, "a2 has carbons");
        let (_, others) = registry.addr_and_carbons("alice@x", "a3").unwrap();
        assert!(others);
        let (_, others) = registry.addr_and_carbons("bob@x", "b1").unwrap();
        assert!(!others);
        assert!(registry.addr_and_carbons("alice@x", "a4").is_none());

        assert!(registry.set_carbons("alice@x", "a2", 2, false));
        let (_, others) = registry.addr_and_carbons("alice@x", "a1").unwrap();
        assert!(!others, "only a1 itself has carbons now");
        assert_eq!(registry.carbons_resources("alice@x"), ["a1"]);
    }

    #[test]
    fn the_carbons_count_follows_enable_disable_replace_and_unbind() {
        let registry = Registry::default();
        let count = |r: &Registry| r.carbons_sessions.load(Ordering::Relaxed);
        registry.bind("alice@x", entry("a1", 1));
        registry.bind("alice@x", entry("a2", 2));
        registry.set_carbons("alice@x", "a1", 1, true);
        registry.set_carbons("alice@x", "a1", 1, true);
        assert_eq!(count(&registry), 1, "enabling twice counts once");
        registry.update("alice@x", "a2", 2, |e| e.carbons = true);
        assert_eq!(count(&registry), 2);
        // A new session of a1 replaces the old one and starts without carbons.
        let replaced = registry.bind("alice@x", entry("a1", 3));
        assert!(replaced.is_some_and(|r| r.carbons));
        assert_eq!(count(&registry), 1);
        assert_eq!(registry.carbons_resources("alice@x"), ["a2"]);
        assert!(!registry.unbind("alice@x", "a1", 1), "the replaced session is gone already");
        assert!(registry.unbind("alice@x", "a2", 2));
        assert_eq!(count(&registry), 0);
        assert!(!registry.any_carbons());
        assert!(registry.unbind("alice@x", "a1", 3));
        assert_eq!(registry.session_count(), 0);
    }
}
