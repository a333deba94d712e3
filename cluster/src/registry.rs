//! Session registry: which sessions are bound for each bare JID, with the soft state
//! routing needs (priority, availability, last presence, roster interest).
//!
//! Sharded by the same partition function as placement, so that in a cluster a shard is
//! the unit that moves between nodes. Locks are per shard and never held across an
//! `.await` (only plain `std` locks are used, and only inside non-async methods).

use std::collections::HashMap;
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
    /// A session's handle and mailbox; more than `limit` waiting messages overflow it.
    pub fn channel(limit: usize) -> (SessionRef, SessionMailbox) {
        let (tx, rx) = mailbox::mailbox(limit);
        (SessionRef(tx), rx)
    }

    /// Queues `msg` for the session; gives it back if the session has ended.
    pub fn cast(&self, msg: SessionMsg) -> Result<(), SessionMsg> {
        self.0.send(msg)
    }
}

/// A bound session as the registry holds it; lookups hand out clones (cheap: the
/// handle and the presence are reference-counted).
#[derive(Clone, Debug)]
pub struct SessionEntry {
    pub resource: String,
    /// Distinguishes a replaced session from its successor with the same resource.
    pub conn_id: u64,
    pub handle: SessionRef,
    pub priority: i8,
    pub available: bool,
    /// Last available presence broadcast by this session (answers probes).
    pub presence: Option<Arc<Element>>,
    /// Whether the session requested the roster (RFC 6121 §2.1.6: only those get pushes).
    pub roster_interested: bool,
}

type Shard = RwLock<HashMap<String, Vec<SessionEntry>>>;

pub struct Registry {
    shards: Vec<Shard>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry { shards: (0..PARTITIONS).map(|_| RwLock::default()).collect() }
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
        let before = sessions.len();
        sessions.retain(|s| !(s.resource == resource && s.conn_id == conn_id));
        let removed = sessions.len() != before;
        if sessions.is_empty() {
            shard.remove(bare);
        }
        removed
    }

    /// The handle of this session, if bound (no copy of the rest of its entry).
    pub fn handle(&self, bare: &str, resource: &str) -> Option<SessionRef> {
        let shard = self.shard(bare).read().unwrap_or_else(|e| e.into_inner());
        shard.get(bare)?.iter().find(|s| s.resource == resource).map(|s| s.handle.clone())
    }

    pub fn sessions(&self, bare: &str) -> Vec<SessionEntry> {
        let shard = self.shard(bare).read().unwrap_or_else(|e| e.into_inner());
        shard.get(bare).map(|v| v.to_vec()).unwrap_or_default()
    }

    /// Applies `f` to the entry of this exact session, if it is still bound.
    pub fn update(&self, bare: &str, resource: &str, conn_id: u64, f: impl FnOnce(&mut SessionEntry)) -> bool {
        let mut shard = self.shard(bare).write().unwrap_or_else(|e| e.into_inner());
        match shard.get_mut(bare).and_then(|v| v.iter_mut().find(|s| s.resource == resource && s.conn_id == conn_id)) {
            Some(entry) => {
                f(entry);
                true
            }
            None => false,
        }
    }

    /// Every bound session (for shutdown).
    pub fn all_sessions(&self) -> Vec<SessionEntry> {
        self.shards
            .iter()
            .flat_map(|s| {
                let shard = s.read().unwrap_or_else(|e| e.into_inner());
                shard.values().flatten().cloned().collect::<Vec<_>>()
            })
            .collect()
    }

    /// Calls `f` with every bound session, one shard lock at a time (the node's ticker
    /// uses it to tick every session without copying the entries).
    pub fn for_each_session(&self, mut f: impl FnMut(&SessionEntry)) {
        for shard in &self.shards {
            let shard = shard.read().unwrap_or_else(|e| e.into_inner());
            shard.values().flatten().for_each(&mut f);
        }
    }

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
    fn a_message_to_an_ended_session_comes_back() {
        let (session, mut mailbox) = SessionRef::channel(8);
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
            conn_id,
            handle: SessionRef::channel(8).0,
            priority: 0,
            available: false,
            presence: None,
            roster_interested: false,
        };
        assert!(registry.bind("a@x", entry(1)).is_none());
        assert_eq!(registry.bind("a@x", entry(2)).map(|old| old.conn_id), Some(1));
        assert!(!registry.unbind("a@x", "phone", 1), "the replaced session must not unbind its successor");
        assert!(registry.handle("a@x", "phone").is_some());
        assert!(registry.unbind("a@x", "phone", 2));
        assert_eq!(registry.session_count(), 0);
    }
}
