//! The engine both transports share: per-peer bounded queues drained into batches,
//! correlation of requests and responses, liveness pings and up/down tracking.
//!
//! An implementation supplies a [`Link`] (how a frame reaches a peer) and tells the core
//! when a peer's connection comes and goes ([`Core::link_up`], [`Core::link_down`]) and
//! what arrived ([`Core::receive_frame`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::envelope::{Batch, Envelope, BATCH_HEADER_LEN, FLAG_REQUEST, FLAG_RESPONSE, KIND_PING};
use super::{Inbound, NodeId, PeerEvent, TransportConfig, TransportError, TransportStats};

/// How frames reach peers.
pub(crate) trait Link: Send + Sync + 'static {
    /// Hands one encoded frame to `to`'s connection without waiting. An error means the
    /// frame is lost (no connection).
    fn send_frame(&self, to: NodeId, frame: Bytes) -> Result<(), TransportError>;
    /// The heartbeat declared `peer` down while its connection looked alive: drop the
    /// connection so that it is established again.
    fn reset(&self, peer: NodeId);
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Peer {
    tx: mpsc::Sender<Envelope>,
    /// Listed by the last `set_peers`.
    member: bool,
    /// The link reports a connection.
    link_up: bool,
    /// Heard from within `down_after` (or just connected).
    alive: bool,
    last_heard: Instant,
}

impl Peer {
    fn up(&self) -> bool {
        self.link_up && self.alive
    }
}

struct Pending {
    to: NodeId,
    tx: oneshot::Sender<Result<Envelope, TransportError>>,
}

#[derive(Default)]
struct Stats {
    frames_sent: AtomicU64,
    envelopes_sent: AtomicU64,
    frames_received: AtomicU64,
    envelopes_received: AtomicU64,
    frames_dropped: AtomicU64,
    decode_errors: AtomicU64,
}

pub(crate) struct Core {
    me: NodeId,
    cfg: TransportConfig,
    inbound: Arc<dyn Inbound>,
    link: OnceLock<Arc<dyn Link>>,
    peers: Mutex<HashMap<NodeId, Peer>>,
    pending: Mutex<HashMap<u64, Pending>>,
    next_corr: AtomicU64,
    events: broadcast::Sender<PeerEvent>,
    stats: Stats,
    weak: Weak<Core>,
}

impl Core {
    pub(crate) fn new(me: NodeId, cfg: TransportConfig, inbound: Arc<dyn Inbound>) -> Arc<Core> {
        let (events, _) = broadcast::channel(1024);
        let core = Arc::new_cyclic(|weak| Core {
            me,
            cfg,
            inbound,
            link: OnceLock::new(),
            peers: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            next_corr: AtomicU64::new(1),
            events,
            stats: Stats::default(),
            weak: weak.clone(),
        });
        {
            // This node is its own peer, always up: a cast to itself takes the same path.
            let mut peers = lock(&core.peers);
            let me = core.new_peer(core.me);
            peers.insert(core.me, Peer { link_up: true, ..me });
        }
        core
    }

    /// Installs the link and starts the heartbeat. Must run inside a tokio runtime.
    pub(crate) fn start(&self, link: Arc<dyn Link>) {
        if self.link.set(link).is_err() {
            tracing::warn!("transport core started twice");
            return;
        }
        let weak = self.weak.clone();
        let interval = self.cfg.ping_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = Instant::now();
            loop {
                tick.tick().await;
                let Some(core) = weak.upgrade() else { return };
                let now = Instant::now();
                core.heartbeat(now.duration_since(last));
                last = now;
            }
        });
    }

    #[cfg_attr(not(feature = "ractor-transport"), allow(dead_code))]
    pub(crate) fn me(&self) -> NodeId {
        self.me
    }

    fn new_peer(&self, id: NodeId) -> Peer {
        let (tx, rx) = mpsc::channel(self.cfg.queue_capacity.max(1));
        tokio::spawn(drain(self.weak.clone(), id, rx));
        Peer { tx, member: false, link_up: false, alive: true, last_heard: Instant::now() }
    }

    fn emit(&self, ev: PeerEvent) {
        match ev {
            PeerEvent::Up(id) => tracing::info!(peer = id, node = self.me, "peer up"),
            PeerEvent::Down(id) => tracing::warn!(peer = id, node = self.me, "peer down"),
        }
        let _ = self.events.send(ev);
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<PeerEvent> {
        self.events.subscribe()
    }

    #[cfg_attr(not(feature = "ractor-transport"), allow(dead_code))]
    pub(crate) fn is_up(&self, id: NodeId) -> bool {
        lock(&self.peers).get(&id).is_some_and(Peer::up)
    }

    /// The peers heard from within `within` (a frame or a ping), sorted, whatever their
    /// link's state this instant: a connection that is being replaced (ractor_cluster
    /// drops and re-dials sessions when nodes reconnect) does not make a peer that spoke
    /// a moment ago silent. Unlike [`Core::connected`], it does not wait for the
    /// heartbeat task: a process that was stopped sees at once that it has heard nobody
    /// lately.
    pub(crate) fn heard_within(&self, within: Duration) -> Vec<NodeId> {
        let now = Instant::now();
        let mut v: Vec<NodeId> = lock(&self.peers)
            .iter()
            .filter(|(id, p)| **id != self.me && now.saturating_duration_since(p.last_heard) <= within)
            .map(|(id, _)| *id)
            .collect();
        v.sort_unstable();
        v
    }

    pub(crate) fn connected(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> =
            lock(&self.peers).iter().filter(|(id, p)| **id != self.me && p.up()).map(|(id, _)| *id).collect();
        v.sort_unstable();
        v
    }

    pub(crate) fn stats(&self) -> TransportStats {
        let s = &self.stats;
        TransportStats {
            frames_sent: s.frames_sent.load(Ordering::Relaxed),
            envelopes_sent: s.envelopes_sent.load(Ordering::Relaxed),
            frames_received: s.frames_received.load(Ordering::Relaxed),
            envelopes_received: s.envelopes_received.load(Ordering::Relaxed),
            frames_dropped: s.frames_dropped.load(Ordering::Relaxed),
            decode_errors: s.decode_errors.load(Ordering::Relaxed),
            dials: 0,
        }
    }

    /// Queues `env` for an up peer.
    fn enqueue(&self, to: NodeId, env: Envelope) -> Result<(), TransportError> {
        if env.encoded_len() > self.cfg.max_envelope_bytes {
            return Err(TransportError::TooLarge(env.encoded_len()));
        }
        let peers = lock(&self.peers);
        let peer = peers.get(&to).filter(|p| p.up()).ok_or(TransportError::Unreachable(to))?;
        peer.tx.try_send(env).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => TransportError::Backpressure(to),
            mpsc::error::TrySendError::Closed(_) => TransportError::Unreachable(to),
        })
    }

    pub(crate) fn cast(&self, to: NodeId, mut env: Envelope) -> Result<(), TransportError> {
        env.corr = 0;
        env.flags = 0;
        self.enqueue(to, env)
    }

    pub(crate) fn call(
        &self,
        to: NodeId,
        mut env: Envelope,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Envelope, TransportError>> {
        let corr = self.next_corr.fetch_add(1, Ordering::Relaxed);
        env.corr = corr;
        env.flags = FLAG_REQUEST;
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(corr, Pending { to, tx });
        if let Err(e) = self.enqueue(to, env) {
            lock(&self.pending).remove(&corr);
            return futures_util::future::ready(Err(e)).boxed();
        }
        let guard = PendingGuard { core: self.weak.clone(), corr };
        async move {
            let _guard = guard;
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(Ok(env))) if env.is_error() => Err(TransportError::Remote(env.error_reason())),
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(TransportError::Unreachable(to)),
                Err(_) => Err(TransportError::Timeout),
            }
        }
        .boxed()
    }

    fn fail_pending(&self, pred: impl Fn(u64, &Pending) -> bool, err: impl Fn(&Pending) -> TransportError) {
        let failed: Vec<Pending> = {
            let mut pending = lock(&self.pending);
            let corrs: Vec<u64> = pending.iter().filter(|(c, p)| pred(**c, p)).map(|(c, _)| *c).collect();
            corrs.into_iter().filter_map(|c| pending.remove(&c)).collect()
        };
        for p in failed {
            let e = err(&p);
            let _ = p.tx.send(Err(e));
        }
    }

    fn fail_peer(&self, peer: NodeId) {
        self.fail_pending(|_, p| p.to == peer, |p| TransportError::Unreachable(p.to));
    }

    /// The link has a (new) connection to `id`.
    pub(crate) fn link_up(&self, id: NodeId) {
        let became_up = {
            let mut peers = lock(&self.peers);
            let p = peers.entry(id).or_insert_with(|| self.new_peer(id));
            let was = p.up();
            p.link_up = true;
            p.alive = true;
            p.last_heard = Instant::now();
            !was
        };
        if became_up {
            self.emit(PeerEvent::Up(id));
        }
    }

    /// The link lost its connection to `id`.
    pub(crate) fn link_down(&self, id: NodeId) {
        let was_up = {
            let mut peers = lock(&self.peers);
            let Some(p) = peers.get_mut(&id) else { return };
            let was = p.up();
            p.link_up = false;
            was
        };
        if was_up {
            self.emit(PeerEvent::Down(id));
        }
        self.fail_peer(id);
    }

    /// Sets the member peers; returns the ids that are no longer members.
    pub(crate) fn set_members(&self, members: &[(NodeId, String)]) -> Vec<NodeId> {
        let (removed, downs) = {
            let mut peers = lock(&self.peers);
            for (id, _) in members {
                if *id == self.me {
                    continue;
                }
                peers.entry(*id).or_insert_with(|| self.new_peer(*id)).member = true;
            }
            let removed: Vec<NodeId> = peers
                .iter()
                .filter(|(id, p)| p.member && **id != self.me && !members.iter().any(|(m, _)| m == *id))
                .map(|(id, _)| *id)
                .collect();
            let mut downs = Vec::new();
            for id in &removed {
                if let Some(p) = peers.remove(id) {
                    if p.up() {
                        downs.push(*id);
                    }
                }
            }
            (removed, downs)
        };
        for id in downs {
            self.emit(PeerEvent::Down(id));
        }
        for id in &removed {
            self.fail_peer(*id);
        }
        removed
    }

    /// One tick: pings every connected peer and declares down those silent for too long.
    /// `since_last` is the time since the previous tick: if this node itself was not
    /// running for a while (stopped, starved), the silence is its own, so peers get a
    /// fresh `down_after` instead of being declared down.
    fn heartbeat(&self, since_last: Duration) {
        let now = Instant::now();
        let stalled = since_last > (self.cfg.down_after / 2).max(self.cfg.ping_interval * 3);
        if stalled {
            tracing::warn!(node = self.me, stalled_for = ?since_last, "this node was not running; not judging peers' silence this round");
        }
        let mut downs = Vec::new();
        {
            let mut peers = lock(&self.peers);
            for (id, p) in peers.iter_mut() {
                if *id == self.me || !p.link_up {
                    continue;
                }
                // A full queue is traffic already; the ping is not needed then.
                let _ = p.tx.try_send(Envelope::cast(KIND_PING, 0, Bytes::new()));
                if stalled {
                    p.last_heard = now;
                    continue;
                }
                if p.alive && now.duration_since(p.last_heard) > self.cfg.down_after {
                    p.alive = false;
                    downs.push(*id);
                }
            }
        }
        for id in downs {
            tracing::warn!(peer = id, node = self.me, silent_for = ?self.cfg.down_after, "peer silent; declaring it down and resetting its connection");
            self.emit(PeerEvent::Down(id));
            self.fail_peer(id);
            if let Some(link) = self.link.get() {
                link.reset(id);
            }
        }
    }

    /// Handles one frame received from the link.
    pub(crate) fn receive_frame(&self, frame: Bytes) {
        self.stats.frames_received.fetch_add(1, Ordering::Relaxed);
        let len = frame.len();
        let batch = match Batch::decode(frame) {
            Ok(b) => b,
            Err(e) => {
                self.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(node = self.me, bytes = len, error = %e, "cannot decode an inter-node frame; dropped whole");
                return;
            }
        };
        if batch.to != self.me {
            self.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                node = self.me,
                from = batch.from,
                to = batch.to,
                "inter-node frame for another node; dropped"
            );
            return;
        }
        let from = batch.from;
        self.stats.envelopes_received.fetch_add(batch.envelopes.len() as u64, Ordering::Relaxed);
        self.heard_from(from);
        for env in batch.envelopes {
            if env.is_response() {
                let pending = lock(&self.pending).remove(&env.corr);
                match pending {
                    Some(p) if p.to == from => {
                        let _ = p.tx.send(Ok(env));
                    }
                    Some(p) => {
                        tracing::error!(
                            node = self.me,
                            from,
                            expected = p.to,
                            corr = env.corr,
                            "response from the wrong peer; failing the call"
                        );
                        let _ = p.tx.send(Err(TransportError::Remote(format!("response came from node {from}"))));
                    }
                    // Timed out or cancelled already.
                    None => tracing::debug!(node = self.me, from, corr = env.corr, "late response dropped"),
                }
            } else if env.is_request() {
                let corr = env.corr;
                let reply = self.inbound.on_call(from, env);
                let weak = self.weak.clone();
                tokio::spawn(async move {
                    let mut resp = reply.await;
                    resp.corr = corr;
                    resp.flags = (resp.flags & !FLAG_REQUEST) | FLAG_RESPONSE;
                    if let Some(core) = weak.upgrade() {
                        core.respond(from, resp).await;
                    }
                });
            } else if env.kind == super::envelope::KIND_PING {
                // Liveness only: `heard_from` above.
            } else {
                self.inbound.on_cast(from, env);
            }
        }
    }

    fn heard_from(&self, from: NodeId) {
        let became_up = {
            let mut peers = lock(&self.peers);
            let p = peers.entry(from).or_insert_with(|| self.new_peer(from));
            p.last_heard = Instant::now();
            let was = p.up();
            p.alive = true;
            !was && p.up()
        };
        if became_up {
            self.emit(PeerEvent::Up(from));
        }
    }

    /// Queues a response, waiting for room rather than dropping it.
    async fn respond(&self, to: NodeId, resp: Envelope) {
        let resp = if resp.encoded_len() > self.cfg.max_envelope_bytes {
            tracing::error!(
                node = self.me,
                peer = to,
                bytes = resp.encoded_len(),
                "response too large; answering with an error"
            );
            Envelope { corr: resp.corr, ..Envelope::error("response too large") }
        } else {
            resp
        };
        let tx = lock(&self.peers).get(&to).map(|p| p.tx.clone());
        match tx {
            Some(tx) => {
                if tx.send(resp).await.is_err() {
                    tracing::debug!(node = self.me, peer = to, "peer removed before its response was sent");
                }
            }
            None => tracing::debug!(node = self.me, peer = to, "response to a peer that is gone; dropped"),
        }
    }

    fn send_batch(&self, to: NodeId, envelopes: Vec<Envelope>) -> bool {
        let batch = Batch { from: self.me, to, envelopes };
        let n = batch.envelopes.len() as u64;
        let frame = match batch.encode() {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(node = self.me, peer = to, error = %e, "cannot encode a frame; dropped");
                self.fail_requests(&batch, to);
                return false;
            }
        };
        let sent = if to == self.me {
            self.receive_frame(frame);
            Ok(())
        } else {
            match self.link.get() {
                Some(link) => link.send_frame(to, frame),
                None => Err(TransportError::Closed("not started".into())),
            }
        };
        match sent {
            Ok(()) => {
                self.stats.frames_sent.fetch_add(1, Ordering::Relaxed);
                self.stats.envelopes_sent.fetch_add(n, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
                self.fail_requests(&batch, to);
                false
            }
        }
    }

    fn fail_requests(&self, batch: &Batch, to: NodeId) {
        let corrs: Vec<u64> = batch.envelopes.iter().filter(|e| e.is_request()).map(|e| e.corr).collect();
        if !corrs.is_empty() {
            self.fail_pending(|c, p| p.to == to && corrs.contains(&c), |p| TransportError::Unreachable(p.to));
        }
    }
}

struct PendingGuard {
    core: Weak<Core>,
    corr: u64,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if let Some(core) = self.core.upgrade() {
            lock(&core.pending).remove(&self.corr);
        }
    }
}

/// A frame with fewer envelopes than this waits one scheduler turn for more.
const COALESCE_BELOW: usize = 16;

/// The one task per peer that drains its queue: everything queued when it wakes goes
/// into one frame (up to the batch limits), so frames grow with the load.
async fn drain(core: Weak<Core>, peer: NodeId, mut rx: mpsc::Receiver<Envelope>) {
    let (max_n, max_bytes) = match core.upgrade() {
        Some(c) => (c.cfg.max_batch_envelopes.max(1), c.cfg.max_batch_bytes),
        None => return,
    };
    let mut carry: Option<Envelope> = None;
    let mut dropping = false;
    loop {
        let first = match carry.take() {
            Some(env) => env,
            None => match rx.recv().await {
                Some(env) => env,
                None => return,
            },
        };
        let mut size = BATCH_HEADER_LEN + first.encoded_len();
        let mut envs = vec![first];
        // Once more after one turn of the scheduler when the queue ran dry early: the
        // tasks that run in that turn (sessions routing a burst) add to this frame
        // instead of each costing one (a frame is a write and a read on both sides).
        let mut yielded = false;
        while envs.len() < max_n {
            match rx.try_recv() {
                Ok(env) => {
                    if size + env.encoded_len() > max_bytes {
                        carry = Some(env);
                        break;
                    }
                    size += env.encoded_len();
                    envs.push(env);
                }
                Err(_) if !yielded && envs.len() < COALESCE_BELOW => {
                    yielded = true;
                    tokio::task::yield_now().await;
                }
                Err(_) => break,
            }
        }
        let Some(core) = core.upgrade() else { return };
        let n = envs.len();
        let ok = core.send_batch(peer, envs);
        if !ok && !dropping {
            tracing::warn!(
                node = core.me,
                peer,
                envelopes = n,
                "no connection to peer; dropping what is queued for it"
            );
        } else if ok && dropping {
            tracing::info!(node = core.me, peer, "sending to peer again");
        }
        dropping = !ok;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::transport::Dispatcher;

    struct NoLink(Mutex<Vec<NodeId>>);
    impl Link for NoLink {
        fn send_frame(&self, _to: NodeId, _frame: Bytes) -> Result<(), TransportError> {
            Ok(())
        }
        fn reset(&self, peer: NodeId) {
            lock(&self.0).push(peer);
        }
    }

    #[tokio::test]
    async fn silence_is_judged_only_when_this_node_itself_was_running() {
        let cfg = TransportConfig {
            ping_interval: Duration::from_millis(10),
            down_after: Duration::from_millis(50),
            ..TransportConfig::default()
        };
        let core = Core::new(1, cfg, Arc::new(Dispatcher::new()));
        let link = Arc::new(NoLink(Mutex::new(Vec::new())));
        // Not started: the heartbeat is driven by hand.
        let _ = core.link.set(link.clone());
        core.link_up(2);
        let mut events = core.subscribe();
        std::thread::sleep(Duration::from_millis(80));

        // This node was not scheduled for a while: its own pause, not the peer's silence.
        core.heartbeat(Duration::from_millis(500));
        assert_eq!(core.connected(), vec![2]);
        assert!(events.try_recv().is_err());

        std::thread::sleep(Duration::from_millis(80));
        core.heartbeat(Duration::from_millis(10));
        assert!(core.connected().is_empty());
        assert_eq!(events.try_recv().unwrap(), PeerEvent::Down(2));
        assert_eq!(*lock(&link.0), vec![2], "the link was asked to reset the peer's connection");
    }
}
