//! The transport between node processes, over ractor_cluster.
//!
//! Per node: one `NodeServer` listening on `cluster.listen` (cookie authentication with
//! the cluster secret; TLS if [`ClusterTls`] is given, see below) and ONE remotable router actor,
//! member of the process group `waddle.node.<id>` (scope `waddle`). ractor_cluster
//! mirrors it on every connected node as a `RemoteActor` in that group, which is how a
//! node finds a peer's router once their session is ready. The router's messages are our
//! frames ([`RouterFrame`]: an encoded [`super::Batch`]), so every byte exchanged
//! between routers is our versioned envelope format; requests and responses are
//! correlated by `corr` in the shared engine, not with ractor's RPC.
//!
//! Node identity: the `NodeServer`'s name is `waddle-<id>`; a session's peer id is read
//! from the authenticated peer name. ractor_cluster's own `NodeId` is a per-process
//! session counter and is not used as a node id.
//!
//! Connections: for each peer given to [`Transport::set_peers`] a dialer task keeps one
//! session up (one end of each pair dials at once, the other after a grace period, so
//! that simultaneous connects are rare; ractor_cluster resolves them anyway), reconnecting
//! with exponential backoff. Sessions that do not authenticate within
//! [`RactorConfig::connect_timeout`] are stopped (ractor_cluster has no handshake
//! timeout). ractor_cluster notices only TCP loss, so the engine's pings declare a
//! silent peer down after `down_after` and the link stops its session, which the dialer
//! then re-establishes once the peer answers again.
//!
//! TLS: dialing uses ractor_cluster's `client_connect_enc`; accepting is done here (each
//! handshake in its own task, bounded by `connect_timeout`) because ractor_cluster's
//! listener performs TLS handshakes inline with no timeout, so a single silent TCP
//! connection would stop all later accepts. The `NodeServer`'s own listener then sits on
//! an ephemeral 127.0.0.1 port (plaintext, still cookie-authenticated): it cannot be
//! turned off. Certificates are the caller's: [`ClusterTls`] takes built rustls
//! configurations (client certificates are not required by this code; the cookie is
//! the authentication, TLS gives confidentiality and server authentication).
//!
//! Gotchas for the binary that uses this:
//! - This turns on ractor's `cluster` feature for the whole build: every ractor message
//!   type in the binary needs `impl ractor::Message for T {}` (or a ractor_cluster
//!   derive); there is no blanket impl any more.
//! - ractor_cluster depends on tokio-rustls with its default features, so rustls gets
//!   the aws-lc-rs provider next to the workspace's `ring`. With both compiled in, rustls
//!   cannot pick a process-wide default and `ServerConfig::builder()` /
//!   `ClientConfig::builder()` panic: the binary must call
//!   `rustls::crypto::ring::default_provider().install_default()` once at startup, before
//!   building any TLS config (or use the `builder_with_provider` constructors).
//! - ractor's process-group and actor registries are global to the process: two
//!   `RactorTransport`s in one process see each other's routers. One per process.
//! - ractor_cluster's internal queues (session writer, remote actor mailboxes) are
//!   unbounded; the bound is this transport's per-peer queue.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{
    BoxRead, BoxWrite, BytesConvertable, ClusterBidiStream, IncomingEncryptionMode, NodeEventSubscription, NodeServer,
    NodeServerMessage, NodeSessionMessage,
};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::AbortHandle;

use super::core::{lock, Core, Link};
use super::{Envelope, Inbound, NodeId, PeerEvent, Transport, TransportConfig, TransportError, TransportStats};

/// Process-group scope of the routers.
pub const PG_SCOPE: &str = "waddle";

/// The process group a node's router joins.
pub fn router_group(id: NodeId) -> String {
    format!("waddle.node.{id}")
}

fn node_name(id: NodeId) -> String {
    format!("waddle-{id}")
}

/// The node id in a ractor_cluster peer name (`waddle-<id>@host`).
fn parse_node_name(name: &str) -> Option<NodeId> {
    name.split('@').next()?.strip_prefix("waddle-")?.parse().ok()
}

/// TLS between nodes: given to ractor_cluster's listener and used when dialing. The
/// caller builds the rustls configurations (see the module docs about crypto providers).
#[derive(Clone)]
pub struct ClusterTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub connector: tokio_rustls::TlsConnector,
    /// The name peers' certificates are verified against.
    pub server_name: tokio_rustls::rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

/// Configuration of a [`RactorTransport`].
#[derive(Clone)]
pub struct RactorConfig {
    pub node_id: NodeId,
    /// Where the `NodeServer` listens (`cluster.listen`).
    pub listen: SocketAddr,
    /// The host this node is reachable at, announced to peers (defaults to the listen IP).
    pub advertise_host: String,
    /// The cluster secret: ractor_cluster's cookie. Never logged.
    pub secret: String,
    pub tls: Option<ClusterTls>,
    pub transport: TransportConfig,
    /// TCP connect plus authentication; a session not ready by then is stopped.
    pub connect_timeout: Duration,
    /// Before each dial, one end of a pair waits this long for the other to connect,
    /// so that both rarely dial at once (see `dials_first`).
    pub dial_grace: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl std::fmt::Debug for RactorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RactorConfig")
            .field("node_id", &self.node_id)
            .field("listen", &self.listen)
            .field("advertise_host", &self.advertise_host)
            .field("secret", &"<redacted>")
            .field("tls", &self.tls)
            .field("transport", &self.transport)
            .field("connect_timeout", &self.connect_timeout)
            .field("dial_grace", &self.dial_grace)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .finish()
    }
}

impl RactorConfig {
    pub fn new(node_id: NodeId, listen: SocketAddr, secret: impl Into<String>) -> RactorConfig {
        RactorConfig {
            node_id,
            listen,
            advertise_host: listen.ip().to_string(),
            secret: secret.into(),
            tls: None,
            transport: TransportConfig::default(),
            connect_timeout: Duration::from_secs(5),
            dial_grace: Duration::from_millis(500),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
        }
    }
}

/// The router actor's message: one frame.
#[derive(Debug)]
pub struct RouterFrame(pub Vec<u8>);

impl BytesConvertable for RouterFrame {
    fn into_bytes(self) -> Vec<u8> {
        self.0
    }
    fn from_bytes(bytes: Vec<u8>) -> Self {
        RouterFrame(bytes)
    }
}

/// Receives peers' frames, in the order each peer's session delivers them.
struct Router {
    core: Weak<Core>,
}

impl Actor for Router {
    type Msg = RouterFrame;
    type State = ();
    type Arguments = NodeId;

    async fn pre_start(&self, myself: ActorRef<RouterFrame>, id: NodeId) -> Result<(), ActorProcessingErr> {
        ractor::pg::join_scoped(PG_SCOPE.to_string(), router_group(id), vec![myself.get_cell()]);
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<RouterFrame>,
        msg: RouterFrame,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        if let Some(core) = self.core.upgrade() {
            core.receive_frame(Bytes::from(msg.0));
        }
        Ok(())
    }
}

enum SessionEvent {
    Opened(NodeServerSessionInformation),
    Ready(NodeServerSessionInformation),
    Disconnected(NodeServerSessionInformation),
}

struct Events(mpsc::UnboundedSender<SessionEvent>);

impl NodeEventSubscription for Events {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.send(SessionEvent::Opened(ses));
    }
    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.send(SessionEvent::Disconnected(ses));
    }
    fn node_session_authenticated(&self, _ses: NodeServerSessionInformation) {}
    fn node_session_ready(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.send(SessionEvent::Ready(ses));
    }
}

struct Session {
    actor: ActorRef<NodeSessionMessage>,
    /// ractor_cluster's session counter, the `node_id` of the peer's mirrored actors.
    session_node: u64,
    router: Option<ActorRef<RouterFrame>>,
}

#[derive(Default)]
struct LinkState {
    /// Ready sessions by peer id.
    sessions: HashMap<NodeId, Session>,
    by_actor: HashMap<ActorId, NodeId>,
    /// Peer ids by the addresses they were seen at (dialed address, announced address).
    addrs: HashMap<String, NodeId>,
    /// Sessions opened but not ready yet.
    handshaking: HashMap<ActorId, (ActorRef<NodeSessionMessage>, Instant)>,
    dialers: HashMap<NodeId, (String, AbortHandle)>,
    /// Addresses being dialed now (by a peer's dialer or `call_addr`): one connection
    /// attempt per address at a time. Two at once (a restarted member dialing its known
    /// peers while it joins through the same nodes as seeds) make ractor_cluster close one
    /// as a duplicate, and the end that dialed could be left without a ready session
    /// while the other end had one.
    dialing: std::collections::HashSet<String>,
}

/// An address marked as being dialed, unmarked (and waiters woken) when dropped.
struct Dialing<'a> {
    shared: &'a Shared,
    addr: String,
}

impl Drop for Dialing<'_> {
    fn drop(&mut self) {
        lock(&self.shared.state).dialing.remove(&self.addr);
        self.shared.bump();
    }
}

struct Shared {
    me: NodeId,
    server: ActorRef<NodeServerMessage>,
    tls: Option<ClusterTls>,
    connect_timeout: Duration,
    dial_grace: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
    state: Mutex<LinkState>,
    /// Bumped on every session change; dialers and `call_addr` wait on it.
    changed: watch::Sender<u64>,
    core: Weak<Core>,
    dials: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn bump(&self) {
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn has_session(&self, peer: NodeId) -> bool {
        lock(&self.state).sessions.contains_key(&peer)
    }

    /// Marks `addr` as being dialed; `None` if someone is dialing it already (wait for
    /// [`Shared::changed`] and look again).
    fn begin_dial(&self, addr: &str) -> Option<Dialing<'_>> {
        lock(&self.state).dialing.insert(addr.to_owned()).then(|| Dialing { shared: self, addr: addr.to_owned() })
    }

    fn find_router(peer: NodeId, session_node: Option<u64>) -> Option<ActorRef<RouterFrame>> {
        let members = ractor::pg::get_scoped_members(&PG_SCOPE.to_string(), &router_group(peer));
        let remote = members.into_iter().filter(|c| !c.get_id().is_local());
        let mut fallback = None;
        for cell in remote {
            match (cell.get_id(), session_node) {
                (ActorId::Remote { node_id, .. }, Some(s)) if node_id == s => return Some(cell.into()),
                _ => fallback = fallback.or(Some(cell)),
            }
        }
        fallback.map(Into::into)
    }

    async fn dial(&self, addr: &str) -> Result<(), String> {
        self.dials.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let connect = async {
            match &self.tls {
                None => ractor_cluster::client_connect(&self.server, addr).await,
                Some(tls) => {
                    ractor_cluster::client_connect_enc(
                        &self.server,
                        addr,
                        tls.connector.clone(),
                        tls.server_name.clone(),
                    )
                    .await
                }
            }
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("connect timed out".into()),
        }
    }

    fn on_event(&self, ev: SessionEvent) {
        match ev {
            SessionEvent::Opened(ses) => {
                lock(&self.state).handshaking.insert(ses.actor.get_id(), (ses.actor.clone(), Instant::now()));
            }
            SessionEvent::Ready(ses) => self.on_ready(ses),
            SessionEvent::Disconnected(ses) => {
                let actor = ses.actor.get_id();
                let lost = {
                    let mut st = lock(&self.state);
                    st.handshaking.remove(&actor);
                    match st.by_actor.remove(&actor) {
                        Some(peer) if st.sessions.get(&peer).is_some_and(|s| s.actor.get_id() == actor) => {
                            st.sessions.remove(&peer);
                            Some(peer)
                        }
                        _ => None,
                    }
                };
                if let Some(peer) = lost {
                    tracing::info!(node = self.me, peer, addr = %ses.peer_addr, "inter-node session closed");
                    if let Some(core) = self.core.upgrade() {
                        core.link_down(peer);
                    }
                    self.bump();
                }
            }
        }
    }

    fn on_ready(&self, ses: NodeServerSessionInformation) {
        let actor = ses.actor.get_id();
        lock(&self.state).handshaking.remove(&actor);
        let name = ses.peer_name.as_ref().map(|n| n.name.clone()).unwrap_or_default();
        let Some(peer) = parse_node_name(&name) else {
            tracing::warn!(node = self.me, peer_name = %name, addr = %ses.peer_addr, "authenticated peer is not a waddle node; closing its session");
            ses.actor.stop(Some("not a waddle node".into()));
            return;
        };
        if peer == self.me {
            tracing::warn!(node = self.me, addr = %ses.peer_addr, "connected to itself; closing the session");
            ses.actor.stop(Some("self connection".into()));
            return;
        }
        let router = Shared::find_router(peer, Some(ses.node_id));
        if router.is_none() {
            tracing::error!(node = self.me, peer, "peer's session is ready but its router is not in its process group");
        }
        {
            let mut st = lock(&self.state);
            st.by_actor.insert(actor, peer);
            st.addrs.insert(ses.peer_addr.clone(), peer);
            if let Some(n) = &ses.peer_name {
                if !n.connection_string.is_empty() {
                    st.addrs.insert(n.connection_string.clone(), peer);
                }
            }
            st.sessions.insert(peer, Session { actor: ses.actor.clone(), session_node: ses.node_id, router });
        }
        tracing::info!(node = self.me, peer, addr = %ses.peer_addr, inbound = ses.is_server, "inter-node session ready");
        if let Some(core) = self.core.upgrade() {
            core.link_up(peer);
        }
        self.bump();
    }

    /// Stops sessions that have not authenticated in time.
    fn sweep_handshakes(&self) {
        let now = Instant::now();
        let stale: Vec<ActorRef<NodeSessionMessage>> = {
            let mut st = lock(&self.state);
            let ids: Vec<ActorId> = st
                .handshaking
                .iter()
                .filter(|(_, (_, at))| now.duration_since(*at) > self.connect_timeout)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter().filter_map(|id| st.handshaking.remove(&id)).map(|(a, _)| a).collect()
        };
        for actor in stale {
            tracing::warn!(
                node = self.me,
                "inter-node session did not authenticate in time (wrong cluster secret?); closing it"
            );
            actor.stop(Some("handshake timeout".into()));
        }
    }

    fn id_for_addr(&self, keys: &[String]) -> Option<NodeId> {
        let st = lock(&self.state);
        keys.iter().find_map(|k| st.addrs.get(k).copied())
    }
}

impl Link for Shared {
    fn send_frame(&self, to: NodeId, frame: Bytes) -> Result<(), TransportError> {
        let router = {
            let st = lock(&self.state);
            match st.sessions.get(&to) {
                Some(s) => s.router.clone().or_else(|| Shared::find_router(to, Some(s.session_node))),
                // A peer whose session is not ready here yet (it may already be on its
                // side): its router may be mirrored already.
                None => Shared::find_router(to, None),
            }
        };
        let router = router.ok_or(TransportError::Unreachable(to))?;
        router.cast(RouterFrame(Vec::from(frame))).map_err(|_| TransportError::Unreachable(to))
    }

    fn reset(&self, peer: NodeId) {
        let st = lock(&self.state);
        if let Some(s) = st.sessions.get(&peer) {
            s.actor.stop(Some("waddle: peer silent".into()));
        }
    }
}

/// Keeps a session to `peer` at `addr` up.
async fn dialer(shared: Arc<Shared>, peer: NodeId, addr: String) {
    let mut changed = shared.changed.subscribe();
    let mut backoff = shared.reconnect_min;
    let mut failures = 0u32;
    loop {
        if shared.has_session(peer) {
            backoff = shared.reconnect_min;
            failures = 0;
            if changed.changed().await.is_err() {
                return;
            }
            continue;
        }
        if !dials_first(shared.me, peer) {
            tokio::time::sleep(shared.dial_grace).await;
            if shared.has_session(peer) {
                continue;
            }
        }
        changed.borrow_and_update();
        let Some(dialing) = shared.begin_dial(&addr) else {
            // Another attempt at this address is under way: its outcome wakes us.
            let _ = tokio::time::timeout(shared.connect_timeout, changed.changed()).await;
            continue;
        };
        let result = match shared.dial(&addr).await {
            Ok(()) => {
                let deadline = tokio::time::Instant::now() + shared.connect_timeout;
                loop {
                    if shared.has_session(peer) {
                        break Ok(());
                    }
                    match tokio::time::timeout_at(deadline, changed.changed()).await {
                        Ok(Ok(())) => continue,
                        Ok(Err(_)) => return,
                        Err(_) => {
                            break Err(
                                "connected but no authenticated session (wrong cluster secret or node id?)".to_string()
                            )
                        }
                    }
                }
            }
            Err(e) => Err(e),
        };
        drop(dialing);
        if let Err(reason) = result {
            failures += 1;
            if failures == 1 || failures.is_power_of_two() {
                tracing::warn!(node = shared.me, peer, %addr, failures, %reason, "cannot connect to peer; retrying");
            }
            tokio::time::sleep(jitter(backoff)).await;
            backoff = (backoff * 2).min(shared.reconnect_max);
        }
    }
}

/// Whether `me` dials `peer` at once (the other waits [`RactorConfig::dial_grace`]).
///
/// When both ends connect at once, ractor_cluster keeps the connection initiated by the
/// node whose full name (`waddle-<id>@host`) sorts last, as Erlang does. That node dials
/// first, so a duplicate connection loses its election before it is ever ready rather
/// than replacing a ready one. Comparing `waddle-<id>@` orders the full names whatever
/// the hosts: the names differ at or before the `@`.
fn dials_first(me: NodeId, peer: NodeId) -> bool {
    format!("{}@", node_name(me)) > format!("{}@", node_name(peer))
}

/// `d` plus up to a quarter of it, from the clock (no RNG dependency needed for this).
fn jitter(d: Duration) -> Duration {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|t| t.subsec_nanos()).unwrap_or(0);
    d + d.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

/// An accepted TLS connection, handed to the node server as an external stream.
struct TlsIncoming {
    stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    peer: SocketAddr,
    local: Option<SocketAddr>,
}

impl ClusterBidiStream for TlsIncoming {
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        let (r, w) = tokio::io::split(self.stream);
        (Box::new(r), Box::new(w))
    }
    fn peer_label(&self) -> Option<String> {
        Some(self.peer.to_string())
    }
    fn local_label(&self) -> Option<String> {
        self.local.map(|l| l.to_string())
    }
}

/// Accepts TLS connections, each handshake in its own task with a timeout.
async fn accept_tls(
    me: NodeId,
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    server: ActorRef<NodeServerMessage>,
    handshake_timeout: Duration,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(node = me, error = %e, "inter-node accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().ok();
        let acceptor = acceptor.clone();
        let server = server.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let stream = Box::new(TlsIncoming { stream, peer, local });
                    if server.cast(NodeServerMessage::ConnectionOpenedExternal { stream, is_server: true }).is_err() {
                        tracing::debug!(node = me, %peer, "node server stopped; dropping an accepted connection");
                    }
                }
                Ok(Err(e)) => tracing::warn!(node = me, %peer, error = %e, "inter-node TLS handshake failed"),
                Err(_) => tracing::warn!(node = me, %peer, "inter-node TLS handshake timed out"),
            }
        });
    }
}

/// The transport over ractor_cluster. Stops its actors and tasks when dropped.
pub struct RactorTransport {
    core: Arc<Core>,
    shared: Arc<Shared>,
    router: ActorRef<RouterFrame>,
    tasks: Vec<AbortHandle>,
    handles: Mutex<Vec<ractor::concurrency::JoinHandle<()>>>,
}

impl std::fmt::Debug for RactorTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RactorTransport").field("node_id", &self.core.me()).finish_non_exhaustive()
    }
}

impl RactorTransport {
    /// Starts the node server (listening on `cfg.listen`) and the router. Must run inside
    /// a tokio runtime. One per process (see the module docs).
    pub async fn start(cfg: RactorConfig, inbound: Arc<dyn Inbound>) -> Result<Arc<RactorTransport>, TransportError> {
        let me = cfg.node_id;
        let core = Core::new(me, cfg.transport.clone(), inbound);
        let (router, router_handle) = Actor::spawn(None, Router { core: Arc::downgrade(&core) }, me)
            .await
            .map_err(|e| TransportError::Closed(format!("cannot start the router: {e}")))?;
        // With TLS, this transport accepts connections itself: ractor_cluster's listener
        // runs each TLS handshake inline, without a timeout, so one connection that never
        // sends a ClientHello would stop every later accept. Handshakes here run as their
        // own tasks with `connect_timeout`, and ready streams are handed to the node
        // server. Its own (plaintext, cookie-authenticated) listener is then moved to an
        // ephemeral loopback port.
        let (server_listen, tls_listener) = match &cfg.tls {
            None => (cfg.listen, None),
            Some(tls) => match tokio::net::TcpListener::bind(cfg.listen).await {
                Ok(l) => (SocketAddr::from(([127, 0, 0, 1], 0)), Some((l, tls.acceptor.clone()))),
                Err(e) => {
                    router.stop(None);
                    return Err(TransportError::Closed(format!("cannot listen on {}: {e}", cfg.listen)));
                }
            },
        };
        let max_frame =
            (cfg.transport.max_batch_bytes.max(cfg.transport.max_envelope_bytes) as u64).saturating_add(64 * 1024);
        let server = NodeServer::new(
            server_listen.port(),
            cfg.secret.clone(),
            node_name(me),
            cfg.advertise_host.clone(),
            Some(IncomingEncryptionMode::Raw),
            Some(NodeConnectionMode::Isolated),
        )
        .with_listen_addr(server_listen.ip())
        .with_max_inbound_frame_size(max_frame.max(ractor_cluster::DEFAULT_MAX_INBOUND_FRAME_SIZE));
        let (server, server_handle) = match Actor::spawn(None, server, ()).await {
            Ok(s) => s,
            Err(e) => {
                router.stop(None);
                return Err(TransportError::Closed(format!("cannot listen on {}: {e}", cfg.listen)));
            }
        };
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
        if let Err(e) = server.cast(NodeServerMessage::SubscribeToEvents {
            id: "waddle.transport".into(),
            subscription: Box::new(Events(ev_tx)),
        }) {
            router.stop(None);
            server.stop(None);
            return Err(TransportError::Closed(format!("node server: {e}")));
        }
        let shared = Arc::new(Shared {
            me,
            server: server.clone(),
            tls: cfg.tls.clone(),
            connect_timeout: cfg.connect_timeout,
            dial_grace: cfg.dial_grace,
            reconnect_min: cfg.reconnect_min,
            reconnect_max: cfg.reconnect_max.max(cfg.reconnect_min),
            state: Mutex::new(LinkState::default()),
            changed: watch::channel(0).0,
            core: Arc::downgrade(&core),
            dials: std::sync::atomic::AtomicU64::new(0),
        });
        core.start(shared.clone());
        let weak = Arc::downgrade(&shared);
        let sweep_every = cfg.connect_timeout.min(Duration::from_millis(500)).max(Duration::from_millis(10));
        let manager = tokio::spawn(async move {
            let mut sweep = tokio::time::interval(sweep_every);
            loop {
                tokio::select! {
                    ev = ev_rx.recv() => {
                        let (Some(ev), Some(shared)) = (ev, weak.upgrade()) else { return };
                        shared.on_event(ev);
                    }
                    _ = sweep.tick() => {
                        let Some(shared) = weak.upgrade() else { return };
                        shared.sweep_handshakes();
                    }
                }
            }
        });
        let mut tasks = vec![manager.abort_handle()];
        if let Some((listener, acceptor)) = tls_listener {
            let accept = accept_tls(me, listener, acceptor, server.clone(), cfg.connect_timeout);
            tasks.push(tokio::spawn(accept).abort_handle());
        }
        tracing::info!(node = me, listen = %cfg.listen, tls = cfg.tls.is_some(), "inter-node transport listening");
        Ok(Arc::new(RactorTransport {
            core,
            shared,
            router,
            tasks,
            handles: Mutex::new(vec![router_handle, server_handle]),
        }))
    }

    /// Stops the node server (closing every session) and the router, and waits for them.
    pub async fn shutdown(&self) {
        self.stop_all();
        let handles: Vec<_> = std::mem::take(&mut *lock(&self.handles));
        for h in handles {
            let _ = h.await;
        }
    }

    fn stop_all(&self) {
        for t in &self.tasks {
            t.abort();
        }
        for (_, (_, d)) in lock(&self.shared.state).dialers.drain() {
            d.abort();
        }
        self.shared.server.stop(Some("transport stopped".into()));
        self.router.stop(Some("transport stopped".into()));
    }
}

impl Drop for RactorTransport {
    fn drop(&mut self) {
        self.stop_all();
    }
}

impl Transport for RactorTransport {
    fn local_id(&self) -> NodeId {
        self.core.me()
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
        let shared = self.shared.clone();
        let core = self.core.clone();
        let addr = addr.to_string();
        async move {
            let deadline = tokio::time::Instant::now() + timeout;
            let mut keys = vec![addr.clone()];
            if let Ok(resolved) = tokio::net::lookup_host(addr.as_str()).await {
                keys.extend(resolved.map(|a| a.to_string()));
            }
            let mut changed = shared.changed.subscribe();
            let mut dialed = false;
            let mut _marked = None;
            loop {
                changed.borrow_and_update();
                if let Some(id) = shared.id_for_addr(&keys).filter(|id| core.is_up(*id)) {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    return core.call(id, env, left).await;
                }
                if !dialed {
                    // A peer's own dialer may be connecting to this address already:
                    // then its session is waited for below rather than dialed twice
                    // (and if that attempt fails, this call dials itself). Ours stays
                    // marked until its session is ready (or we give up).
                    if let Some(dialing) = shared.begin_dial(&addr) {
                        dialed = true;
                        let dial = tokio::time::timeout_at(deadline, shared.dial(&addr));
                        match dial.await {
                            Ok(Ok(())) => {}
                            Ok(Err(reason)) => return Err(TransportError::Connect { addr, reason }),
                            Err(_) => return Err(TransportError::Timeout),
                        }
                        _marked = Some(dialing);
                        continue;
                    }
                }
                match tokio::time::timeout_at(deadline, changed.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(TransportError::Closed("transport stopped".into())),
                    Err(_) => {
                        return Err(TransportError::Connect {
                            addr,
                            reason: "no authenticated session in time (wrong cluster secret?)".into(),
                        })
                    }
                }
            }
        }
        .boxed()
    }

    fn set_peers(&self, peers: Vec<(NodeId, String)>) {
        let me = self.core.me();
        let removed = self.core.set_members(&peers);
        let mut st = lock(&self.shared.state);
        for id in &removed {
            if let Some(s) = st.sessions.get(id) {
                s.actor.stop(Some("removed from the cluster".into()));
            }
        }
        let wanted: HashMap<NodeId, String> = peers.into_iter().filter(|(id, _)| *id != me).collect();
        st.dialers.retain(|id, (addr, task)| {
            let keep = wanted.get(id) == Some(addr);
            if !keep {
                task.abort();
            }
            keep
        });
        for (id, addr) in wanted {
            if let std::collections::hash_map::Entry::Vacant(e) = st.dialers.entry(id) {
                let task = tokio::spawn(dialer(self.shared.clone(), id, addr.clone()));
                e.insert((addr, task.abort_handle()));
            }
        }
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
        TransportStats { dials: self.shared.dials.load(std::sync::atomic::Ordering::Relaxed), ..self.core.stats() }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn node_names_round_trip() {
        assert_eq!(parse_node_name(&format!("{}@127.0.0.1", node_name(42))), Some(42));
        assert_eq!(parse_node_name("waddle-7"), Some(7));
        assert_eq!(parse_node_name("other-7@host"), None);
        assert_eq!(parse_node_name("waddle-x@host"), None);
    }

    #[test]
    fn exactly_one_end_of_a_pair_dials_first() {
        for (a, b) in [(1, 2), (1, 10), (9, 10), (2, 10), (123, 45)] {
            assert_ne!(dials_first(a, b), dials_first(b, a), "{a} {b}");
        }
        // As ractor_cluster's election orders full names: "waddle-1@h" > "waddle-10@h".
        assert!(dials_first(1, 10));
        assert!(dials_first(2, 1));
    }

    #[test]
    fn router_frames_are_bytes_as_is() {
        let f = RouterFrame(vec![1, 2, 3]);
        assert_eq!(RouterFrame::from_bytes(f.into_bytes()).0, vec![1, 2, 3]);
    }

    #[test]
    fn the_secret_is_not_in_debug_output() {
        let cfg = RactorConfig::new(1, "127.0.0.1:1".parse().unwrap(), "hunter2-secret");
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }
}
