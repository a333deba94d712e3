//! This node's view of where things live, and the only way to reach them.
//!
//! The session registry and the table of this node's connections are private here:
//! code outside the crate reaches a user's registry shard only through
//! [`Locality::user`], which asks placement first and answers [`Place::Remote`] when
//! another node owns the shard, and reaches a session only through
//! [`Locality::deliver`], which writes to the local mailbox or hands the message to
//! [`Peers`] for the node the session runs on. A single node is a cluster of one: every
//! answer is `Local` and no peer is ever asked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use waddle_xml::Unaddressed;

use crate::placement::{partition_of, PartitionId, PartitionMap, PARTITIONS};
use crate::registry::{Registry, SessionAddr, SessionEntry, SessionMsg, SessionRef};

/// Where something lives: here (with what is needed to use it) or on another node.
#[derive(Debug)]
pub enum Place<T> {
    Local(T),
    Remote(u64),
}

/// What this node needs from the others to reach sessions that run there. Implemented
/// over the inter-node transport; a cluster of one has none.
pub trait Peers: Send + Sync + 'static {
    /// Hands `msg` to the sessions `conn_ids` on `node` (one inter-node message for all
    /// of them). Only deliveries, closes and replacements cross nodes; `false` when
    /// the message cannot be sent there.
    fn deliver(&self, node: u64, conn_ids: Vec<u64>, msg: &SessionMsg) -> bool;
}

/// The partition owners this node currently believes in, and the ring epoch they
/// belong to.
#[derive(Clone, Debug)]
struct Ring {
    epoch: u64,
    owners: Vec<u64>,
    /// Every partition is owned here.
    alone: bool,
}

/// Bits of a connection id below the node id: a node may hand out 2^40 ids per run.
const CONN_ID_BITS: u32 = 40;

pub struct Locality {
    me: u64,
    ring: RwLock<Arc<Ring>>,
    registry: Registry,
    connections: Connections,
    peers: OnceLock<Arc<dyn Peers>>,
    next_conn: AtomicU64,
    /// Until when (ms after `clock`) this node may act as the owner of what the ring
    /// gives it: renewed while it is in touch with a majority of the control plane's
    /// voters. `u64::MAX` on a node that is not a cluster member (nobody to be cut off
    /// from).
    lease_until: AtomicU64,
    clock: std::time::Instant,
}

impl std::fmt::Debug for Locality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locality").field("me", &self.me).field("epoch", &self.epoch()).finish_non_exhaustive()
    }
}

impl Locality {
    /// A cluster of one: `me` owns every partition. Its epoch is 0, below any committed
    /// ring, so a cluster member adopts the first ring the control plane commits.
    pub fn single(me: u64) -> Locality {
        Locality {
            me,
            ring: RwLock::new(Arc::new(Ring { epoch: 0, owners: vec![me; PARTITIONS as usize], alone: true })),
            registry: Registry::new(),
            connections: Connections::default(),
            peers: OnceLock::new(),
            next_conn: AtomicU64::new(1),
            lease_until: AtomicU64::new(u64::MAX),
            clock: std::time::Instant::now(),
        }
    }

    pub fn me(&self) -> u64 {
        self.me
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// This node may act as an owner for `valid_for` more (it just confirmed that it is
    /// in touch with a majority of the voters).
    pub fn renew_lease(&self, valid_for: std::time::Duration) {
        let until = self.now_ms().saturating_add(u64::try_from(valid_for.as_millis()).unwrap_or(u64::MAX));
        self.lease_until.store(until, Ordering::Release);
    }

    /// This node is cut off (or not a member yet): it owns nothing until it renews.
    pub fn revoke_lease(&self) {
        self.lease_until.store(0, Ordering::Release);
    }

    /// Whether this node may serve what it owns right now: false from the moment its
    /// lease ran out, which a process that was paused sees at once on waking (the clock
    /// kept going), before any task of it noticed anything.
    pub fn may_serve(&self) -> bool {
        self.now_ms() < self.lease_until.load(Ordering::Acquire)
    }

    /// Sets how this node reaches sessions on other nodes (once, at start).
    pub fn set_peers(&self, peers: Arc<dyn Peers>) {
        let _ = self.peers.set(peers);
    }

    pub fn epoch(&self) -> u64 {
        self.ring.read().unwrap_or_else(|e| e.into_inner()).epoch
    }

    /// Adopts the owners of a newer ring epoch (`owners[p]` owns partition `p`); an
    /// older or equal epoch, or a table of the wrong size, is ignored.
    pub fn set_ring(&self, epoch: u64, owners: Vec<u64>) -> bool {
        if owners.len() != PARTITIONS as usize {
            return false;
        }
        let mut ring = self.ring.write().unwrap_or_else(|e| e.into_inner());
        if epoch <= ring.epoch {
            return false;
        }
        let alone = owners.iter().all(|o| *o == self.me);
        *ring = Arc::new(Ring { epoch, owners, alone });
        true
    }

    /// The nodes that own partitions in the current ring, sorted.
    pub fn members(&self) -> Vec<u64> {
        let ring = self.ring.read().unwrap_or_else(|e| e.into_inner());
        let mut members = ring.owners.clone();
        members.sort_unstable();
        members.dedup();
        members
    }

    /// Whether this node owns every partition (a cluster of one): nothing needs placing.
    pub fn alone(&self) -> bool {
        self.ring.read().unwrap_or_else(|e| e.into_inner()).alone
    }

    /// Adopts a committed partition map (see [`Locality::set_ring`]).
    pub fn adopt(&self, map: &PartitionMap) -> bool {
        let owners = (0..PARTITIONS).map(|p| map.owner(p).unwrap_or(self.me)).collect();
        self.set_ring(map.epoch, owners)
    }

    /// The node that owns `partition` at the current epoch.
    pub fn owner(&self, partition: PartitionId) -> u64 {
        let ring = self.ring.read().unwrap_or_else(|e| e.into_inner());
        ring.owners.get(partition as usize).copied().unwrap_or(self.me)
    }

    /// Whether `partition` is owned here, or by which node.
    pub fn place(&self, partition: PartitionId) -> Place<()> {
        match self.owner(partition) {
            node if node == self.me => Place::Local(()),
            node => Place::Remote(node),
        }
    }

    /// The registry shard of the user `bare` (a normalized bare JID), if this node owns
    /// it; otherwise the node that does.
    pub fn user<'a>(&'a self, bare: &'a str) -> Place<UserShard<'a>> {
        let owner = {
            let ring = self.ring.read().unwrap_or_else(|e| e.into_inner());
            // A cluster of one asks on every stanza: no hashing for it.
            if ring.alone {
                self.me
            } else {
                ring.owners.get(partition_of(bare) as usize).copied().unwrap_or(self.me)
            }
        };
        if owner == self.me {
            Place::Local(UserShard { registry: &self.registry, bare })
        } else {
            Place::Remote(owner)
        }
    }

    /// Registers a session task of this node and gives it its cluster-wide address.
    pub fn connect(&self, handle: SessionRef) -> SessionAddr {
        let seq = self.next_conn.fetch_add(1, Ordering::Relaxed) & ((1 << CONN_ID_BITS) - 1);
        let addr = SessionAddr { node: self.me, conn_id: (self.me << CONN_ID_BITS) | seq };
        self.connections.insert(addr.conn_id, handle);
        addr
    }

    /// Forgets a session task of this node (it ended).
    pub fn disconnect(&self, conn_id: u64) {
        self.connections.remove(conn_id);
    }

    /// Queues `msg` for the session at `addr`, wherever it runs; gives it back when it
    /// cannot be delivered (the session ended, or its node is unreachable).
    pub fn deliver(&self, addr: SessionAddr, msg: SessionMsg) -> Result<(), SessionMsg> {
        if addr.node == self.me {
            return match self.connections.get(addr.conn_id) {
                Some(handle) => handle.cast(msg),
                None => Err(msg),
            };
        }
        match self.peers.get() {
            Some(peers) if peers.deliver(addr.node, vec![addr.conn_id], &msg) => Ok(()),
            _ => Err(msg),
        }
    }

    /// Delivers one stanza serialized once to many sessions: one mailbox push per local
    /// session and one inter-node message per other node.
    pub fn deliver_each(&self, addrs: impl IntoIterator<Item = SessionAddr>, shared: Arc<Unaddressed>) {
        let mut remote: HashMap<u64, Vec<u64>> = HashMap::new();
        for addr in addrs {
            if addr.node == self.me {
                if let Some(handle) = self.connections.get(addr.conn_id) {
                    let _ = handle.cast(SessionMsg::DeliverUnaddressed(Arc::clone(&shared)));
                }
            } else {
                remote.entry(addr.node).or_default().push(addr.conn_id);
            }
        }
        if remote.is_empty() {
            return;
        }
        let msg = SessionMsg::DeliverUnaddressed(shared);
        if let Some(peers) = self.peers.get() {
            for (node, conn_ids) in remote {
                peers.deliver(node, conn_ids, &msg);
            }
        }
    }

    /// Hands `msg` to the local sessions `conn_ids` (what a peer sent for them); how many
    /// took it.
    pub fn deliver_local(&self, conn_ids: &[u64], msg: impl Fn() -> SessionMsg) -> usize {
        conn_ids.iter().filter_map(|id| self.connections.get(*id)).filter(|handle| handle.cast(msg()).is_ok()).count()
    }

    /// Calls `f` with each session task of this node (keepalive ticks, shutdown).
    pub fn for_each_local(&self, f: impl FnMut(&SessionRef)) {
        self.connections.for_each(f);
    }

    /// Session tasks running on this node.
    pub fn local_sessions(&self) -> usize {
        self.connections.len()
    }

    /// Sessions the registry shards owned here hold entries for, on any node.
    pub fn registered_sessions(&self) -> usize {
        self.registry.session_count()
    }

    /// Forgets every session of `node` in the shards owned here (the node left or
    /// died); how many entries went.
    pub fn forget_node(&self, node: u64) -> usize {
        self.registry.remove_node(node)
    }

    /// Whether any session registered here may have carbons enabled.
    pub fn any_carbons(&self) -> bool {
        self.registry.any_carbons()
    }
}

/// One user's registry entries, on the node that owns the user's partition. Obtained
/// only from [`Locality::user`].
#[derive(Clone, Copy, Debug)]
pub struct UserShard<'a> {
    registry: &'a Registry,
    bare: &'a str,
}

impl UserShard<'_> {
    /// Binds a session; the entry it replaced (same full JID), whose task the caller
    /// must tell to close with `<conflict/>`.
    pub fn bind(&self, entry: SessionEntry) -> Option<SessionEntry> {
        self.registry.bind(self.bare, entry)
    }

    /// Removes the session if it is still the one with `conn_id`.
    pub fn unbind(&self, resource: &str, conn_id: u64) -> bool {
        self.registry.unbind(self.bare, resource, conn_id)
    }

    pub fn addr(&self, resource: &str) -> Option<SessionAddr> {
        self.registry.addr(self.bare, resource)
    }

    pub fn sessions(&self) -> Vec<SessionEntry> {
        self.registry.sessions(self.bare)
    }

    pub fn update(&self, resource: &str, conn_id: u64, f: impl FnOnce(&mut SessionEntry)) -> bool {
        self.registry.update(self.bare, resource, conn_id, f)
    }

    pub fn set_carbons(&self, resource: &str, conn_id: u64, enabled: bool) -> bool {
        self.registry.set_carbons(self.bare, resource, conn_id, enabled)
    }

    pub fn addr_and_carbons(&self, resource: &str) -> Option<(SessionAddr, bool)> {
        self.registry.addr_and_carbons(self.bare, resource)
    }

    pub fn carbons_resources(&self) -> Vec<String> {
        self.registry.carbons_resources(self.bare)
    }
}

const CONNECTION_SHARDS: usize = 64;

/// This node's session tasks by connection id.
struct Connections {
    shards: Vec<Mutex<HashMap<u64, SessionRef>>>,
}

impl Default for Connections {
    fn default() -> Self {
        Connections { shards: (0..CONNECTION_SHARDS).map(|_| Mutex::default()).collect() }
    }
}

impl Connections {
    fn shard(&self, conn_id: u64) -> &Mutex<HashMap<u64, SessionRef>> {
        // The modulus is below shards.len().
        &self.shards[(conn_id % CONNECTION_SHARDS as u64) as usize]
    }

    fn insert(&self, conn_id: u64, handle: SessionRef) {
        self.shard(conn_id).lock().unwrap_or_else(|e| e.into_inner()).insert(conn_id, handle);
    }

    fn remove(&self, conn_id: u64) {
        self.shard(conn_id).lock().unwrap_or_else(|e| e.into_inner()).remove(&conn_id);
    }

    fn get(&self, conn_id: u64) -> Option<SessionRef> {
        self.shard(conn_id).lock().unwrap_or_else(|e| e.into_inner()).get(&conn_id).cloned()
    }

    fn for_each(&self, mut f: impl FnMut(&SessionRef)) {
        for shard in &self.shards {
            shard.lock().unwrap_or_else(|e| e.into_inner()).values().for_each(&mut f);
        }
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len()).sum()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    struct Recorder(Mutex<Vec<(u64, Vec<u64>)>>);

    impl Peers for Recorder {
        fn deliver(&self, node: u64, conn_ids: Vec<u64>, _msg: &SessionMsg) -> bool {
            self.0.lock().unwrap().push((node, conn_ids));
            true
        }
    }

    fn remote_owner_of_everything(me: u64, other: u64) -> Locality {
        let l = Locality::single(me);
        assert!(l.set_ring(2, vec![other; PARTITIONS as usize]));
        l
    }

    #[test]
    fn a_cluster_of_one_owns_every_user() {
        let l = Locality::single(7);
        assert!(matches!(l.user("alice@x"), Place::Local(_)));
        assert!(matches!(l.place(200), Place::Local(())));
    }

    #[test]
    fn a_user_owned_elsewhere_cannot_be_looked_up_here() {
        let l = remote_owner_of_everything(1, 2);
        assert!(matches!(l.user("alice@x"), Place::Remote(2)));
        assert!(!l.set_ring(2, vec![1; PARTITIONS as usize]), "an epoch is never reused");
        assert!(Locality::single(1).set_ring(1, vec![2; PARTITIONS as usize]), "the first committed ring is adopted");
        assert!(!l.set_ring(1, vec![1; PARTITIONS as usize]), "an older epoch is ignored");
        assert!(!l.set_ring(3, vec![1; 3]), "a table of the wrong size is ignored");
        assert!(l.set_ring(3, vec![1; PARTITIONS as usize]));
        assert!(matches!(l.user("alice@x"), Place::Local(_)));
    }

    #[test]
    fn connection_ids_carry_the_node_and_route_back_to_the_mailbox() {
        let l = Locality::single(3);
        let (handle, mut mailbox) = SessionRef::channel(8, usize::MAX);
        let addr = l.connect(handle);
        assert_eq!(addr.node, 3);
        assert_eq!(addr.conn_id >> CONN_ID_BITS, 3);
        assert!(l.deliver(addr, SessionMsg::Tick).is_ok());
        assert!(matches!(mailbox.try_recv(), Some(SessionMsg::Tick)));
        assert_eq!(l.local_sessions(), 1);
        l.disconnect(addr.conn_id);
        assert!(l.deliver(addr, SessionMsg::Tick).is_err());
        assert_eq!(l.local_sessions(), 0);
    }

    #[test]
    fn fan_out_sends_one_message_per_other_node() {
        let l = Locality::single(1);
        let recorder = Arc::new(Recorder(Mutex::new(Vec::new())));
        l.set_peers(recorder.clone());
        let (handle, mut mailbox) = SessionRef::channel(8, usize::MAX);
        let local = l.connect(handle);
        let addrs = vec![
            local,
            SessionAddr { node: 2, conn_id: 10 },
            SessionAddr { node: 2, conn_id: 11 },
            SessionAddr { node: 3, conn_id: 12 },
        ];
        let el = waddle_xml::Element::new("message", "jabber:client");
        l.deliver_each(addrs, Arc::new(Unaddressed::new(&el, "jabber:client")));
        assert!(matches!(mailbox.try_recv(), Some(SessionMsg::DeliverUnaddressed(_))));
        let mut sent = recorder.0.lock().unwrap().clone();
        sent.sort();
        assert_eq!(sent, vec![(2, vec![10, 11]), (3, vec![12])]);
    }

    #[test]
    fn without_peers_a_remote_session_is_unreachable() {
        let l = Locality::single(1);
        assert!(l.deliver(SessionAddr { node: 2, conn_id: 5 }, SessionMsg::Tick).is_err());
    }
}

#[cfg(test)]
mod lease_tests {
    use super::*;

    #[test]
    fn a_node_that_is_no_member_always_serves_and_a_member_only_under_a_live_lease() {
        let l = Locality::single(1);
        assert!(l.may_serve());
        l.revoke_lease();
        assert!(!l.may_serve());
        l.renew_lease(std::time::Duration::from_secs(60));
        assert!(l.may_serve());
        l.renew_lease(std::time::Duration::ZERO);
        assert!(!l.may_serve(), "a lease of no time is over at once");
    }
}
