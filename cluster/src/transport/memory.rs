//! An in-process network of transports, for tests of several nodes in one process.
//!
//! Same engine as the real transport (queues, batching, ordering, correlation, pings and
//! failure detection), with frames passed through channels instead of sockets. Frames are
//! encoded and decoded as on the wire. The network can isolate a node or cut a pair:
//! frames across a partition are silently lost, as on a real network, so calls time out
//! and the heartbeat declares the peer down after `down_after`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::{broadcast, mpsc};

use super::core::{lock, Core, Link};
use super::{Envelope, Inbound, NodeId, PeerEvent, Transport, TransportConfig, TransportError, TransportStats};

struct Slot {
    addr: String,
    inbox: mpsc::UnboundedSender<Bytes>,
    core: Weak<Core>,
}

#[derive(Default)]
struct Net {
    nodes: HashMap<NodeId, Slot>,
    /// Established connections, as (lower id, higher id).
    links: HashSet<(NodeId, NodeId)>,
    /// Peers each node asked for that have not joined yet.
    wanted: HashMap<NodeId, HashSet<NodeId>>,
    isolated: HashSet<NodeId>,
    cuts: HashSet<(NodeId, NodeId)>,
}

fn pair(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

impl Net {
    fn partitioned(&self, a: NodeId, b: NodeId) -> bool {
        self.isolated.contains(&a) || self.isolated.contains(&b) || self.cuts.contains(&pair(a, b))
    }

    fn core(&self, id: NodeId) -> Option<Arc<Core>> {
        self.nodes.get(&id).and_then(|s| s.core.upgrade())
    }
}

/// Link changes to apply to cores once the network lock is released.
#[derive(Default)]
struct Changes {
    up: Vec<(Arc<Core>, NodeId)>,
    down: Vec<(Arc<Core>, NodeId)>,
}

impl Changes {
    fn connect(&mut self, net: &mut Net, a: NodeId, b: NodeId) {
        if a == b || !net.links.insert(pair(a, b)) {
            return;
        }
        if let (Some(ca), Some(cb)) = (net.core(a), net.core(b)) {
            self.up.push((ca, b));
            self.up.push((cb, a));
        }
    }

    fn disconnect(&mut self, net: &mut Net, a: NodeId, b: NodeId) {
        if !net.links.remove(&pair(a, b)) {
            return;
        }
        if let Some(ca) = net.core(a) {
            self.down.push((ca, b));
        }
        if let Some(cb) = net.core(b) {
            self.down.push((cb, a));
        }
    }

    fn apply(self) {
        for (core, peer) in self.down {
            core.link_down(peer);
        }
        for (core, peer) in self.up {
            core.link_up(peer);
        }
    }
}

/// The in-process network. Cheap to clone; clones share the network.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    net: Arc<Mutex<Net>>,
}

impl std::fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let net = lock(&self.net);
        let mut nodes: Vec<_> = net.nodes.keys().collect();
        nodes.sort();
        f.debug_struct("MemoryNetwork").field("nodes", &nodes).field("isolated", &net.isolated).finish()
    }
}

impl MemoryNetwork {
    pub fn new() -> MemoryNetwork {
        MemoryNetwork::default()
    }

    /// Starts node `id`, reachable at `addr` (for [`Transport::call_addr`]). Must be
    /// called inside a tokio runtime. A node id already on the network is replaced (as a
    /// restarted node).
    pub fn join(
        &self,
        id: NodeId,
        addr: &str,
        cfg: TransportConfig,
        inbound: Arc<dyn Inbound>,
    ) -> Arc<MemoryTransport> {
        self.leave(id);
        let core = Core::new(id, cfg, inbound);
        let (inbox, mut rx) = mpsc::unbounded_channel::<Bytes>();
        let weak = Arc::downgrade(&core);
        tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                let Some(core) = weak.upgrade() else { return };
                core.receive_frame(frame);
            }
        });
        core.start(Arc::new(MemoryLink { me: id, net: Arc::downgrade(&self.net) }));
        let mut changes = Changes::default();
        {
            let mut net = lock(&self.net);
            net.nodes.insert(id, Slot { addr: addr.to_string(), inbox, core: Arc::downgrade(&core) });
            let waiting: Vec<NodeId> =
                net.wanted.iter().filter(|(_, w)| w.contains(&id)).map(|(node, _)| *node).collect();
            for node in waiting {
                if let Some(w) = net.wanted.get_mut(&node) {
                    w.remove(&id);
                }
                if net.nodes.contains_key(&node) {
                    changes.connect(&mut net, node, id);
                }
            }
        }
        changes.apply();
        Arc::new(MemoryTransport { id, core, net: self.clone() })
    }

    /// Node `id` stops (crashes): its connections drop, so its peers see it down at once.
    pub fn leave(&self, id: NodeId) {
        let mut changes = Changes::default();
        {
            let mut net = lock(&self.net);
            let linked: Vec<NodeId> = net
                .links
                .iter()
                .filter_map(|&(a, b)| {
                    if a == id {
                        Some(b)
                    } else if b == id {
                        Some(a)
                    } else {
                        None
                    }
                })
                .collect();
            for other in linked {
                changes.disconnect(&mut net, id, other);
            }
            net.nodes.remove(&id);
            net.wanted.remove(&id);
        }
        changes.apply();
    }

    /// Frames to and from `id` are lost until [`MemoryNetwork::heal`]; connections stay
    /// (as a network partition that TCP has not noticed).
    pub fn isolate(&self, id: NodeId) {
        lock(&self.net).isolated.insert(id);
    }

    pub fn heal(&self, id: NodeId) {
        lock(&self.net).isolated.remove(&id);
    }

    /// Frames between `a` and `b` are lost until [`MemoryNetwork::repair`].
    pub fn cut(&self, a: NodeId, b: NodeId) {
        lock(&self.net).cuts.insert(pair(a, b));
    }

    pub fn repair(&self, a: NodeId, b: NodeId) {
        lock(&self.net).cuts.remove(&pair(a, b));
    }

    fn set_peers(&self, me: NodeId, peers: &[(NodeId, String)]) {
        let mut changes = Changes::default();
        {
            let mut net = lock(&self.net);
            let mut wanted = HashSet::new();
            for (id, _) in peers {
                if *id == me {
                    continue;
                }
                if net.nodes.contains_key(id) {
                    changes.connect(&mut net, me, *id);
                } else {
                    wanted.insert(*id);
                }
            }
            net.wanted.insert(me, wanted);
        }
        changes.apply();
    }

    fn drop_peers(&self, me: NodeId, removed: &[NodeId]) {
        let mut changes = Changes::default();
        {
            let mut net = lock(&self.net);
            for id in removed {
                changes.disconnect(&mut net, me, *id);
            }
        }
        changes.apply();
    }

    /// Connects `me` to the node at `addr` (if it exists) and returns its id.
    fn dial(&self, me: NodeId, addr: &str) -> Option<NodeId> {
        let mut changes = Changes::default();
        let id = {
            let mut net = lock(&self.net);
            let id = net.nodes.iter().find(|(_, s)| s.addr == addr).map(|(id, _)| *id)?;
            changes.connect(&mut net, me, id);
            id
        };
        changes.apply();
        Some(id)
    }
}

struct MemoryLink {
    me: NodeId,
    net: Weak<Mutex<Net>>,
}

impl Link for MemoryLink {
    fn send_frame(&self, to: NodeId, frame: Bytes) -> Result<(), TransportError> {
        let net = self.net.upgrade().ok_or_else(|| TransportError::Closed("network gone".into()))?;
        let net = lock(&net);
        if !net.links.contains(&pair(self.me, to)) {
            return Err(TransportError::Unreachable(to));
        }
        if net.partitioned(self.me, to) {
            // Lost on the way; the sender cannot tell.
            return Ok(());
        }
        let slot = net.nodes.get(&to).ok_or(TransportError::Unreachable(to))?;
        slot.inbox.send(frame).map_err(|_| TransportError::Unreachable(to))
    }

    fn reset(&self, _peer: NodeId) {
        // The "connection" is the network's: once the partition heals, frames flow again
        // and the peer comes back up.
    }
}

/// One node's transport on a [`MemoryNetwork`]. Leaves the network when dropped.
pub struct MemoryTransport {
    id: NodeId,
    core: Arc<Core>,
    net: MemoryNetwork,
}

impl std::fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTransport").field("id", &self.id).finish()
    }
}

impl Drop for MemoryTransport {
    fn drop(&mut self) {
        let ours =
            lock(&self.net.net).nodes.get(&self.id).is_some_and(|s| Weak::ptr_eq(&s.core, &Arc::downgrade(&self.core)));
        if ours {
            self.net.leave(self.id);
        }
    }
}

impl Transport for MemoryTransport {
    fn local_id(&self) -> NodeId {
        self.id
    }

    fn cast(&self, to: NodeId, env: Envelope) -> Result<(), TransportError> {
        self.core.cast(to, env)
    }

    fn call(
        &self,
        to: NodeId,
        env: Envelope,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Envelope, TransportError>> {
        self.core.call(to, env, timeout)
    }

    fn call_addr(
        &self,
        addr: &str,
        env: Envelope,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Envelope, TransportError>> {
        match self.net.dial(self.id, addr) {
            Some(id) => self.core.call(id, env, timeout),
            None => futures_util::future::ready(Err(TransportError::Connect {
                addr: addr.to_string(),
                reason: "no node at this address".into(),
            }))
            .boxed(),
        }
    }

    fn set_peers(&self, peers: Vec<(NodeId, String)>) {
        let removed = self.core.set_members(&peers);
        self.net.drop_peers(self.id, &removed);
        self.net.set_peers(self.id, &peers);
    }

    fn connected(&self) -> Vec<NodeId> {
        self.core.connected()
    }

    fn heard_within(&self, within: Duration) -> Vec<NodeId> {
        self.core.heard_within(within)
    }

    fn peer_events(&self) -> broadcast::Receiver<PeerEvent> {
        self.core.subscribe()
    }

    fn stats(&self) -> TransportStats {
        self.core.stats()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::transport::message::tests::{echo_dispatcher, Echo, Echoed, Seq};
    use crate::transport::{cast_msg, request, Dispatcher, Message};
    use std::sync::Mutex;
    use std::time::Instant;

    type Seen = Arc<Mutex<Vec<(u64, u64)>>>;

    fn fast() -> TransportConfig {
        TransportConfig {
            ping_interval: Duration::from_millis(20),
            down_after: Duration::from_millis(150),
            ..TransportConfig::default()
        }
    }

    fn node(net: &MemoryNetwork, id: NodeId, cfg: TransportConfig) -> (Arc<MemoryTransport>, Seen) {
        let seen: Seen = Arc::default();
        let t = net.join(id, &format!("node{id}:7000"), cfg, Arc::new(echo_dispatcher(seen.clone())));
        (t, seen)
    }

    async fn wait_for(mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "condition not met in time");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn next_event(rx: &mut broadcast::Receiver<PeerEvent>) -> PeerEvent {
        tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("no peer event in time").unwrap()
    }

    fn mesh(ts: &[&Arc<MemoryTransport>]) {
        let peers: Vec<(NodeId, String)> =
            ts.iter().map(|t| (t.local_id(), format!("node{}:7000", t.local_id()))).collect();
        for t in ts {
            t.set_peers(peers.clone());
        }
    }

    #[tokio::test]
    async fn casts_arrive_in_order_and_calls_are_answered() {
        let net = MemoryNetwork::new();
        let (a, _) = node(&net, 1, TransportConfig::default());
        let (b, seen_b) = node(&net, 2, TransportConfig::default());
        mesh(&[&a, &b]);
        assert_eq!(a.connected(), vec![2]);
        assert_eq!(b.connected(), vec![1]);

        for i in 0..500 {
            cast_msg(&*a, 2, &Seq(i)).unwrap();
            if i % 7 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let resp = request(&*a, 2, &Echo("ping".into()), Duration::from_secs(5)).await.unwrap();
        assert_eq!(resp, Echoed("ping".into()));
        wait_for(|| seen_b.lock().unwrap().len() == 500).await;
        let got: Vec<u64> = seen_b
            .lock()
            .unwrap()
            .iter()
            .map(|(from, n)| {
                assert_eq!(*from, 1);
                *n
            })
            .collect();
        assert_eq!(got, (0..500).collect::<Vec<_>>());

        // Handler errors come back as Remote errors.
        let err = request(&*b, 1, &Echo("fail".into()), Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(err, TransportError::Remote("asked to fail".into()));
    }

    #[tokio::test]
    async fn a_burst_of_casts_travels_in_few_batches() {
        let net = MemoryNetwork::new();
        let (a, _) = node(&net, 1, TransportConfig::default());
        let (b, seen_b) = node(&net, 2, TransportConfig::default());
        mesh(&[&a, &b]);
        let before = a.stats();
        for i in 0..1000 {
            cast_msg(&*a, 2, &Seq(i)).unwrap();
        }
        wait_for(|| seen_b.lock().unwrap().len() == 1000).await;
        let after = a.stats();
        let frames = after.frames_sent - before.frames_sent;
        let envelopes = after.envelopes_sent - before.envelopes_sent;
        assert!(envelopes >= 1000);
        assert!(frames * 10 < 1000, "1000 casts took {frames} frames");
        let order: Vec<u64> = seen_b.lock().unwrap().iter().map(|(_, n)| *n).collect();
        assert_eq!(order, (0..1000).collect::<Vec<_>>());
        assert_eq!(b.stats().frames_received, after.frames_sent);
    }

    #[tokio::test]
    async fn a_full_queue_is_backpressure() {
        let net = MemoryNetwork::new();
        let cfg = TransportConfig { queue_capacity: 10, ..TransportConfig::default() };
        let (a, _) = node(&net, 1, cfg);
        let (b, _) = node(&net, 2, TransportConfig::default());
        mesh(&[&a, &b]);
        // The drainer cannot run between these (current-thread runtime, no await).
        let results: Vec<_> = (0..11).map(|i| cast_msg(&*a, 2, &Seq(i))).collect();
        assert!(results[..10].iter().all(Result::is_ok));
        assert_eq!(results[10], Err(TransportError::Backpressure(2)));
    }

    #[tokio::test]
    async fn casts_and_calls_to_self_take_the_same_path() {
        let net = MemoryNetwork::new();
        let (a, seen) = node(&net, 1, TransportConfig::default());
        cast_msg(&*a, 1, &Seq(5)).unwrap();
        let resp = request(&*a, 1, &Echo("me".into()), Duration::from_secs(5)).await.unwrap();
        assert_eq!(resp, Echoed("me".into()));
        assert_eq!(*seen.lock().unwrap(), vec![(1, 5)]);
        assert!(a.connected().is_empty());
    }

    #[tokio::test]
    async fn unknown_message_version_reaches_the_caller_as_an_error() {
        let net = MemoryNetwork::new();
        let (a, _) = node(&net, 1, TransportConfig::default());
        let (b, _) = node(&net, 2, TransportConfig::default());
        mesh(&[&a, &b]);
        let env = Envelope::request(Echo::KIND, 77, Bytes::from_static(b">x"));
        let started = Instant::now();
        let err = a.call(2, env, Duration::from_secs(5)).await.unwrap_err();
        match err {
            TransportError::Remote(reason) => assert!(reason.contains("version 77"), "{reason}"),
            other => panic!("expected a remote error, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(1), "answered, not timed out");
        drop(b);
    }

    #[tokio::test]
    async fn isolation_times_calls_out_then_marks_the_peer_down_and_heals() {
        let net = MemoryNetwork::new();
        let (a, _) = node(&net, 1, fast());
        let (b, _) = node(&net, 2, fast());
        mesh(&[&a, &b]);
        let mut events = a.peer_events();

        net.isolate(2);
        let err = request(&*a, 2, &Echo("x".into()), Duration::from_millis(50)).await.unwrap_err();
        assert!(matches!(err, TransportError::Timeout | TransportError::Unreachable(2)), "{err:?}");
        assert_eq!(next_event(&mut events).await, PeerEvent::Down(2));
        assert!(a.connected().is_empty());
        let err = request(&*a, 2, &Echo("x".into()), Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(err, TransportError::Unreachable(2));
        assert_eq!(cast_msg(&*a, 2, &Seq(1)), Err(TransportError::Unreachable(2)));

        net.heal(2);
        assert_eq!(next_event(&mut events).await, PeerEvent::Up(2));
        let resp = request(&*a, 2, &Echo("back".into()), Duration::from_secs(5)).await.unwrap();
        assert_eq!(resp, Echoed("back".into()));
        drop(b);
    }

    #[tokio::test]
    async fn a_pending_call_fails_when_the_peer_goes_down() {
        let net = MemoryNetwork::new();
        let (a, _) = node(&net, 1, fast());
        let slow: Arc<dyn Inbound> = Arc::new({
            let mut d = Dispatcher::new();
            d.handle_request(|_, _: Echo| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(Echoed(String::new()))
            });
            d
        });
        let b = net.join(2, "node2:7000", fast(), slow);
        mesh(&[&a, &b]);
        let call = request(&*a, 2, &Echo("x".into()), Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        net.leave(2);
        assert_eq!(call.await.unwrap_err(), TransportError::Unreachable(2));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn set_peers_connects_late_joiners_and_drops_removed_peers() {
        let net = MemoryNetwork::new();
        let (a, _) = node(&net, 1, TransportConfig::default());
        a.set_peers(vec![(1, "node1:7000".into()), (2, "node2:7000".into())]);
        assert!(a.connected().is_empty());
        let mut events = a.peer_events();
        let (b, _) = node(&net, 2, TransportConfig::default());
        assert_eq!(next_event(&mut events).await, PeerEvent::Up(2));
        assert_eq!(b.connected(), vec![1], "the accepted side sees the connection too");

        a.set_peers(vec![(1, "node1:7000".into())]);
        assert_eq!(next_event(&mut events).await, PeerEvent::Down(2));
        assert!(a.connected().is_empty());
        assert!(b.connected().is_empty());
    }

    #[tokio::test]
    async fn call_addr_reaches_a_node_known_only_by_address() {
        let net = MemoryNetwork::new();
        let (seed, _) = node(&net, 1, TransportConfig::default());
        let (joiner, _) = node(&net, 9, TransportConfig::default());
        let env = crate::transport::request_envelope(&Echo("join".into()));
        let resp = joiner.call_addr("node1:7000", env, Duration::from_secs(5)).await.unwrap();
        assert_eq!(Echoed::decode(resp.version, &resp.payload).unwrap(), Echoed("join".into()));
        assert_eq!(seed.connected(), vec![9]);
        let err = joiner.call_addr("nowhere:1", Envelope::request(1, 1, Bytes::new()), Duration::from_secs(1)).await;
        assert!(matches!(err, Err(TransportError::Connect { .. })));
    }
}
