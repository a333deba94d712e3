//! The node as a cluster member: the inter-node transport (ractor_cluster), the
//! control plane (openraft) over it, and the tasks that keep this node's view of the
//! ring and its peers in step with what the control plane committed.
//!
//! Started only when `cluster.listen` or `cluster.seeds` is set; a node without them is
//! a cluster of one and never touches any of this.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use waddle_cluster::transport::ractor::{RactorConfig, RactorTransport};
use waddle_cluster::transport::{
    cast_msg, request, Dispatcher, Message, NoResponse, PeerEvent, Transport, TransportError, WireError,
};
use waddle_cluster::{assign_catching_up, PartitionMap};
use waddle_control::{
    Command, ControlConfig, ControlPlane, NodeRecord, NodeState, PartitionTable, RaftTransport, TransportFailure,
};

use crate::ctx::Ctx;
use crate::remote::{self, ClusterLink, LinkError, NodeCall, NodeOp, NodeReply, NODE_OP_VERSION};

/// Message kinds on the inter-node transport (16 and up are the application's).
const KIND_NODE_OP: u16 = 16;
const KIND_NODE_CALL: u16 = 17;
const KIND_NODE_REPLY: u16 = 18;
const KIND_RAFT: u16 = 19;
const KIND_RAFT_REPLY: u16 = 20;

/// How long a call to another node may take (a storage read there, or a Raft RPC).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

fn json<T: Serialize>(value: &T) -> Bytes {
    // Serializing these plain enums cannot fail; an empty frame would be refused loudly
    // by the receiver if it ever did.
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

fn from_json<T: for<'de> Deserialize<'de>>(
    kind: u16,
    version: u16,
    expected: u16,
    bytes: &[u8],
) -> Result<T, WireError> {
    if version != expected {
        return Err(WireError::UnsupportedVersion { kind, version });
    }
    serde_json::from_slice(bytes).map_err(|e| WireError::Malformed { kind, reason: e.to_string() })
}

/// A [`NodeOp`] on the wire (one-way), with the ring epoch its sender decided under: the
/// receiver handles it only once it has that epoch too, so an operation sent to a new
/// owner is never judged against the ring the new owner is about to leave.
pub struct OpFrame {
    pub epoch: u64,
    pub op: NodeOp,
}

impl Message for OpFrame {
    const KIND: u16 = KIND_NODE_OP;
    const VERSION: u16 = NODE_OP_VERSION;
    type Response = NoResponse;
    fn encode(&self) -> Bytes {
        let mut out = self.epoch.to_be_bytes().to_vec();
        out.extend_from_slice(&remote::wire::encode(&self.op));
        Bytes::from(out)
    }
    fn decode(version: u16, bytes: &[u8]) -> Result<Self, WireError> {
        if version != Self::VERSION {
            return Err(WireError::UnsupportedVersion { kind: Self::KIND, version });
        }
        let malformed = |reason: String| WireError::Malformed { kind: Self::KIND, reason };
        let (epoch, op) = bytes.split_first_chunk::<8>().ok_or_else(|| malformed("no epoch".into()))?;
        let op = remote::wire::decode(op).map_err(|e| malformed(e.to_string()))?;
        Ok(OpFrame { epoch: u64::from_be_bytes(*epoch), op })
    }
}

/// A [`NodeCall`] on the wire, answered with a [`ReplyFrame`].
pub struct CallFrame(pub NodeCall);

impl Message for CallFrame {
    const KIND: u16 = KIND_NODE_CALL;
    const VERSION: u16 = NODE_OP_VERSION;
    type Response = ReplyFrame;
    fn encode(&self) -> Bytes {
        json(&self.0)
    }
    fn decode(version: u16, bytes: &[u8]) -> Result<Self, WireError> {
        from_json(Self::KIND, version, Self::VERSION, bytes).map(CallFrame)
    }
}

pub struct ReplyFrame(pub NodeReply);

impl Message for ReplyFrame {
    const KIND: u16 = KIND_NODE_REPLY;
    const VERSION: u16 = NODE_OP_VERSION;
    type Response = NoResponse;
    fn encode(&self) -> Bytes {
        json(&self.0)
    }
    fn decode(version: u16, bytes: &[u8]) -> Result<Self, WireError> {
        from_json(Self::KIND, version, Self::VERSION, bytes).map(ReplyFrame)
    }
}

/// A control-plane RPC: the control crate's own versioned frame, carried as it is.
pub struct RaftFrame(pub Vec<u8>);

impl Message for RaftFrame {
    const KIND: u16 = KIND_RAFT;
    const VERSION: u16 = 1;
    type Response = RaftReplyFrame;
    fn encode(&self) -> Bytes {
        Bytes::copy_from_slice(&self.0)
    }
    fn decode(version: u16, bytes: &[u8]) -> Result<Self, WireError> {
        if version != Self::VERSION {
            return Err(WireError::UnsupportedVersion { kind: Self::KIND, version });
        }
        Ok(RaftFrame(bytes.to_vec()))
    }
}

pub struct RaftReplyFrame(pub Vec<u8>);

impl Message for RaftReplyFrame {
    const KIND: u16 = KIND_RAFT_REPLY;
    const VERSION: u16 = 1;
    type Response = NoResponse;
    fn encode(&self) -> Bytes {
        Bytes::copy_from_slice(&self.0)
    }
    fn decode(version: u16, bytes: &[u8]) -> Result<Self, WireError> {
        if version != Self::VERSION {
            return Err(WireError::UnsupportedVersion { kind: Self::KIND, version });
        }
        Ok(RaftReplyFrame(bytes.to_vec()))
    }
}

/// [`ClusterLink`] over the transport; `epoch` reads this node's ring epoch.
pub struct TransportLink {
    pub transport: Arc<dyn Transport>,
    pub epoch: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl ClusterLink for TransportLink {
    fn transport_stats(&self) -> Option<waddle_cluster::transport::TransportStats> {
        Some(self.transport.stats())
    }

    fn send(&self, node: u64, op: NodeOp) -> bool {
        match cast_msg(self.transport.as_ref(), node, &OpFrame { epoch: (self.epoch)(), op }) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(node, error = %e, "cluster: cannot send to node");
                false
            }
        }
    }

    fn call(&self, node: u64, call: NodeCall) -> BoxFuture<'static, Result<NodeReply, LinkError>> {
        let answer = request(self.transport.as_ref(), node, &CallFrame(call), CALL_TIMEOUT);
        Box::pin(async move {
            match answer.await {
                Ok(ReplyFrame(reply)) => Ok(reply),
                Err(TransportError::Timeout) => Err(LinkError::Timeout(node)),
                Err(TransportError::Unreachable(_) | TransportError::Backpressure(_)) => {
                    Err(LinkError::Unreachable(node))
                }
                Err(e) => Err(LinkError::Remote { node, why: e.to_string() }),
            }
        })
    }
}

/// The control plane's RPCs over the transport; node 0 means "by address" (a seed whose
/// id is not known yet).
struct RaftOverTransport(Arc<dyn Transport>);

impl RaftTransport for RaftOverTransport {
    fn call(
        &self,
        target: u64,
        target_addr: &str,
        req: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, TransportFailure>> {
        let frame = RaftFrame(req);
        let answer: BoxFuture<'static, Result<RaftReplyFrame, TransportError>> = if target == 0 {
            Box::pin(waddle_cluster::transport::request_addr(self.0.as_ref(), target_addr, &frame, CALL_TIMEOUT))
        } else {
            Box::pin(request(self.0.as_ref(), target, &frame, CALL_TIMEOUT))
        };
        Box::pin(async move {
            match answer.await {
                Ok(RaftReplyFrame(bytes)) => Ok(bytes),
                // Never delivered: safe to retry.
                Err(
                    e @ (TransportError::Unreachable(_)
                    | TransportError::Connect { .. }
                    | TransportError::Backpressure(_)),
                ) => Err(TransportFailure::Unreachable(e.to_string())),
                Err(e) => Err(TransportFailure::NoReply(e.to_string())),
            }
        })
    }
}

/// The cluster side of a running node.
pub struct Clustering {
    pub transport: Arc<RactorTransport>,
    pub control: Arc<ControlPlane>,
}

impl std::fmt::Debug for Clustering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clustering").field("node", &self.control.id()).finish_non_exhaustive()
    }
}

/// Starts the transport and the control plane, joins (or bootstraps) the cluster and
/// the tasks that follow it. Returns once this node is a member.
pub async fn start(ctx: &Arc<Ctx>) -> Result<Arc<Clustering>> {
    let config = &ctx.config;
    let me = config.server.node_id;
    let listen: SocketAddr = config.cluster.listen.parse().context("cluster.listen")?;

    // The handlers need the context and the control plane, which need the transport:
    // they find them through these once everything is built.
    let control_slot: Arc<OnceLock<Arc<ControlPlane>>> = Arc::new(OnceLock::new());
    let mut dispatcher = Dispatcher::new();
    let ops = op_queues(Arc::downgrade(ctx));
    dispatcher.handle_cast::<OpFrame, _>(move |from, frame: OpFrame| {
        if ops.send((from, frame)).is_err() {
            tracing::error!(from, "cluster: the operation queue is gone; dropped");
        }
    });
    let weak = Arc::downgrade(ctx);
    dispatcher.handle_request::<CallFrame, _, _>(move |_from, CallFrame(call)| {
        let ctx = weak.upgrade();
        async move {
            let ctx = ctx.ok_or_else(|| "node shutting down".to_owned())?;
            Ok(ReplyFrame(remote::answer(&ctx, call).await))
        }
    });
    let slot = Arc::clone(&control_slot);
    dispatcher.handle_request::<RaftFrame, _, _>(move |_from, RaftFrame(req)| {
        let control = slot.get().cloned();
        async move {
            let control = control.ok_or_else(|| "control plane not started".to_owned())?;
            Ok(RaftReplyFrame(control.handle_rpc(req).await))
        }
    });

    let weak = Arc::downgrade(ctx);
    dispatcher.handle_request::<crate::replication::ReplFrame, _, _>(
        move |_from, crate::replication::ReplFrame(req)| {
            let replication = weak.upgrade().and_then(|ctx| ctx.replication().cloned());
            async move {
                let replication = replication.ok_or_else(|| "this node does not replicate partitions".to_owned())?;
                Ok(crate::replication::ReplReplyFrame(replication.replicator().handle(req).await))
            }
        },
    );

    let mut transport_config = RactorConfig::new(me, listen, config.cluster.secret.clone());
    transport_config.advertise_host = listen.ip().to_string();
    transport_config.transport.ping_interval = Duration::from_millis(config.cluster.heartbeat_ms);
    transport_config.transport.down_after = Duration::from_millis(config.cluster.down_after_ms);
    if config.cluster.tls {
        transport_config.tls = Some(crate::tls::cluster_tls(config).context("cluster.tls")?);
    }
    let transport = RactorTransport::start(transport_config, Arc::new(dispatcher))
        .await
        .map_err(|e| anyhow::anyhow!("cluster.listen: cannot start the inter-node transport on {listen}: {e}"))?;
    let dyn_transport: Arc<dyn Transport> = transport.clone();
    let weak = Arc::downgrade(ctx);
    let epoch = Box::new(move || weak.upgrade().map_or(0, |ctx| ctx.cluster.epoch()));
    ctx.set_link(Arc::new(TransportLink { transport: Arc::clone(&dyn_transport), epoch }));

    if config.cluster.replicas > 1 {
        let replication = crate::replication::Replication::open(ctx, Arc::clone(&dyn_transport)).await?;
        ctx.set_replication(replication);
    }

    let http_addr = format!("{}:{}", config.server.bind_address, config.http.port);
    let record = NodeRecord {
        id: me,
        cluster_addr: config.cluster.listen.clone(),
        http_addr,
        // With replicated partitions a new node first learns the partitions it will hold,
        // and takes them once it has their logs (`announce_when_caught_up`).
        state: if config.cluster.replicas > 1 { NodeState::Joining } else { NodeState::Up },
        voter: false,
        version: 0,
    };
    let control_config = ControlConfig { voters: config.cluster.voters, ..ControlConfig::default() };
    let dir = config.server.data_dir.join("control");
    let control = ControlPlane::open(&dir, record, Arc::new(RaftOverTransport(dyn_transport)), control_config)
        .await
        .with_context(|| format!("opening the control plane in {}", dir.display()))?;
    let control = Arc::new(control);
    let _ = control_slot.set(Arc::clone(&control));
    // Waddles, channels and permissions are the control plane's from now on.
    ctx.control.set_replicated(crate::control_store::RaftControlStore::new(Arc::clone(&control)));
    crate::control_store::spawn_feed(Arc::clone(&control), Arc::clone(&ctx.permissions));

    // A member owns nothing until it knows it is in touch with the others.
    ctx.cluster.revoke_lease();
    let ownership_path = config.server.data_dir.join("ownership.jsonl");
    match crate::muc::OwnershipLog::open(&ownership_path, me) {
        Ok(log) => ctx.muc.set_ownership_log(log),
        Err(e) => tracing::warn!(path = %ownership_path.display(), error = %e, "cannot open the ownership log"),
    }
    // Follow what is committed before joining, so that the first ring is adopted at once.
    tokio::spawn(follow(Arc::downgrade(ctx), Arc::clone(&control), Arc::clone(&transport)));
    tokio::spawn(watch_peers(Arc::downgrade(ctx), Arc::clone(&transport)));
    let timing = Liveness::from_config(&config.cluster);
    tokio::spawn(watch_liveness(Arc::downgrade(ctx), Arc::clone(&control), Arc::clone(&transport), timing));
    tokio::spawn(announce_when_caught_up(Arc::downgrade(ctx), Arc::clone(&control)));

    if config.cluster.seeds.is_empty() {
        control.bootstrap().await.context("bootstrapping the cluster")?;
        tracing::info!(node = me, "cluster: bootstrapped a new cluster");
    } else {
        // A member restarting on its data dir knows the others from its own log: any of
        // them will do when the configured seeds have left the cluster since.
        let mut seeds = config.cluster.seeds.clone();
        for node in control.state().nodes.values() {
            if node.id != me && !seeds.contains(&node.cluster_addr) {
                seeds.push(node.cluster_addr.clone());
            }
        }
        join(&control, &seeds).await?;
    }
    // Serve only once a committed ring is known (the leader proposes one as soon as this
    // node is a member).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while ctx.cluster.epoch() == 0 || !ctx.cluster.may_serve() {
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "cluster: no ring committed, or no majority of the voters heard from, within 30 s of joining"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Arc::new(Clustering { transport, control }))
}

/// Joins through the seeds, asking all of them at once each round (a seed that is gone
/// costs a whole attempt's timeout) until one answers.
async fn join(control: &ControlPlane, seeds: &[String]) -> Result<()> {
    let mut last = None;
    for round in 0..30u32 {
        let attempts = seeds.iter().map(|seed| Box::pin(async move { control.join_via(seed).await.map(|()| seed) }));
        match futures_util::future::select_ok(attempts).await {
            Ok((seed, _)) => {
                tracing::info!(node = control.id(), seed = %seed, "cluster: joined");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(?seeds, round, error = %e, "cluster: join attempt failed");
                last = Some(e);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(anyhow::anyhow!("cluster.seeds: could not join through {seeds:?}: {last:?}"))
}

/// One queue per sending node, handled in order by one task each, so that what a node
/// sent arrives in the order it sent it (a bind before the presence that follows it).
fn op_queues(ctx: Weak<Ctx>) -> mpsc::UnboundedSender<(u64, OpFrame)> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, OpFrame)>();
    tokio::spawn(async move {
        let mut per_node: std::collections::HashMap<u64, mpsc::UnboundedSender<OpFrame>> = Default::default();
        while let Some((from, frame)) = rx.recv().await {
            let queue = per_node.entry(from).or_insert_with(|| {
                let (tx, mut rx) = mpsc::unbounded_channel::<OpFrame>();
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    while let Some(frame) = rx.recv().await {
                        let Some(ctx) = ctx.upgrade() else { break };
                        wait_for_epoch(&ctx, frame.epoch).await;
                        remote::handle(ctx, from, frame.op).await;
                    }
                });
                tx
            });
            let _ = queue.send(frame);
        }
    });
    tx
}

/// Waits (at most 2 s) until this node has adopted ring `epoch`; a sender ahead of us
/// decided under a ring we are about to adopt.
async fn wait_for_epoch(ctx: &Ctx, epoch: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while ctx.cluster.epoch() < epoch {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(epoch, mine = ctx.cluster.epoch(), "cluster: a peer's ring is ahead of ours; going on");
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Applies what the control plane commits to this node: the peers to connect to, the
/// ring, and (on the leader) a new ring whenever the members change.
async fn follow(ctx: Weak<Ctx>, control: Arc<ControlPlane>, transport: Arc<RactorTransport>) {
    let mut feed = control.subscribe();
    loop {
        let Some(ctx) = ctx.upgrade() else { return };
        let state = control.state();
        // Down members too: a member declared down is dialled until it is removed, or
        // two members that each think the other down would never hear of each other
        // again (and so never declare each other up).
        let peers: Vec<(u64, String)> =
            state.nodes.values().filter(|n| n.id != control.id()).map(|n| (n.id, n.cluster_addr.clone())).collect();
        transport.set_peers(peers);
        if let Some(table) = &state.partition_map {
            let map = map_of(table);
            if ctx.cluster.adopt(&map) {
                tracing::info!(
                    epoch = map.epoch,
                    owned = map.partitions_of(control.id()).len(),
                    "cluster: ring adopted"
                );
                // At once: rooms that moved are rebuilt from these (see `muc::rejoin`).
                ctx.cluster.for_each_local(|s| {
                    let _ = s.cast(waddle_cluster::SessionMsg::Reannounce);
                });
                let released = Arc::clone(&ctx);
                tokio::spawn(async move { crate::muc::release_unowned(&released).await });
            }
            if let Some(replication) = ctx.replication() {
                // After the ring: what is routed here from now on waits (`Replication::
                // ready`) until the partitions this node now leads are recovered; nothing
                // is served from a log this node no longer leads.
                replication.offer(&map);
            }
        }
        if control.status().leader == Some(control.id()) {
            propose_ring(&control, &state, ctx.config.cluster.replicas).await;
        }
        drop(ctx);
        // Woken by the next commit; a periodic look covers a leadership change, which
        // commits nothing by itself.
        let next = tokio::time::timeout(Duration::from_secs(1), feed.recv()).await;
        if let Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) = next {
            return;
        }
    }
}

fn map_of(table: &PartitionTable) -> PartitionMap {
    PartitionMap { epoch: table.epoch, replicas: table.replicas.clone(), learners: table.learners.clone() }
}

/// On the leader: a new ring when the nodes that serve, or those catching up, have
/// changed. A node catching up (`Joining`) is only a learner of the partitions it will
/// hold ([`assign_catching_up`]); once it says it is up, the next ring makes it their
/// replica or owner.
async fn propose_ring(control: &ControlPlane, state: &waddle_control::ControlState, replicas: usize) {
    let with_state =
        |wanted: NodeState| -> Vec<u64> { state.nodes.values().filter(|n| n.state == wanted).map(|n| n.id).collect() };
    let (members, joining) = (with_state(NodeState::Up), with_state(NodeState::Joining));
    if members.is_empty() {
        return;
    }
    let previous = state.partition_map.as_ref().map(map_of);
    if previous.as_ref().is_some_and(|ring| !ring_outdated(ring, &members, &joining)) {
        return;
    }
    let next = assign_catching_up(previous.as_ref(), &members, &joining, replicas);
    let table = PartitionTable { epoch: next.epoch, replicas: next.replicas, learners: next.learners };
    match control.propose(Command::SetPartitionMap(table)).await {
        Ok(result) => tracing::info!(epoch = next.epoch, ?members, ?joining, ?result, "cluster: new ring proposed"),
        Err(e) => tracing::warn!(error = %e, "cluster: proposing the ring failed"),
    }
}

/// Whether the ring in force is not the one for these members and nodes catching up:
/// its replicas are not exactly on the members, or its learners not exactly the nodes
/// catching up (each of which [`assign_catching_up`] gives at least one partition to
/// learn while there are at most 256 · replicas nodes).
fn ring_outdated(ring: &PartitionMap, members: &[u64], joining: &[u64]) -> bool {
    let sorted = |nodes: &[u64]| {
        let mut nodes = nodes.to_vec();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    };
    ring.replica_nodes() != sorted(members) || ring.learner_nodes() != sorted(joining)
}

/// The longest a node catches up before it takes its partitions anyway: a log that cannot
/// be fetched, or a leader that does not answer, must not keep it out of its share for
/// long (its recovery as an owner then fetches what it lacks).
const CATCH_UP_MAX: Duration = Duration::from_secs(30);

/// On every member, for its whole life: while the control plane says this node is
/// catching up (`Joining`: it joined, or came back after it was declared down), it waits
/// until it is caught up in every partition the ring has it learn, then says it is up,
/// and the leader's next ring gives it those partitions. Until then they are served by
/// their replicas as before: nothing stops while it fetches.
async fn announce_when_caught_up(ctx: Weak<Ctx>, control: Arc<ControlPlane>) {
    let me = control.id();
    let mut joining_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(ctx) = ctx.upgrade() else { return };
        let state = control.state();
        if state.nodes.get(&me).map(|n| n.state) != Some(NodeState::Joining) {
            joining_since = None;
            continue;
        }
        let since = *joining_since.get_or_insert_with(tokio::time::Instant::now);
        let ring = state.partition_map.as_ref().map(map_of);
        // Bounded: a partition whose status does not come (its lock held for long, which
        // the replicator logs) must not keep this node from ever taking its share.
        let lagging = match (ctx.replication(), ring) {
            (None, _) => Some(Vec::new()),
            (Some(replication), Some(ring)) => {
                tokio::time::timeout(Duration::from_secs(2), not_learned(replication, &ring, me)).await.unwrap_or(None)
            }
            (Some(_), None) => None,
        };
        let caught_up = lagging.as_ref().is_some_and(Vec::is_empty);
        let overdue = since.elapsed() >= CATCH_UP_MAX;
        if !caught_up && !overdue {
            continue;
        }
        match control.propose(Command::SetNodeState { id: me, state: NodeState::Up }).await {
            Ok(_) if caught_up => {
                tracing::info!(node = me, after = ?since.elapsed(), "cluster: caught up as a learner; up")
            }
            Ok(_) => tracing::warn!(
                node = me,
                lagging = ?lagging.map(|l| l.into_iter().take(8).collect::<Vec<_>>()),
                "cluster: not caught up after {CATCH_UP_MAX:?}; up anyway (new owners fetch what they lack)"
            ),
            Err(e) => tracing::warn!(node = me, error = %e, "cluster: cannot say this node is up; retrying"),
        }
    }
}

/// The partitions `ring` has this node learn that it is not caught up in yet (its log
/// holds what the leader had committed at its last Append, all of it applied); `None`
/// when the ring has it learn none (it is not caught up in anything either).
async fn not_learned(
    replication: &crate::replication::Replication,
    ring: &PartitionMap,
    me: u64,
) -> Option<Vec<waddle_cluster::PartitionId>> {
    let mut learning = 0;
    let mut lagging = Vec::new();
    for partition in 0..waddle_cluster::PARTITIONS {
        if !ring.learners(partition).contains(&me) {
            continue;
        }
        learning += 1;
        if !replication.learned(partition).await {
            lagging.push(partition);
        }
    }
    (learning > 0).then_some(lagging)
}

/// A peer that goes down takes its sessions with it: their registry entries here go.
async fn watch_peers(ctx: Weak<Ctx>, transport: Arc<RactorTransport>) {
    let mut events = transport.peer_events();
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let Some(ctx) = ctx.upgrade() else { return };
        match event {
            PeerEvent::Down(node) => {
                let forgotten = ctx.cluster.forget_node(node);
                tracing::warn!(node, forgotten, "cluster: peer down; its sessions forgotten");
            }
            PeerEvent::Up(node) => {
                tracing::info!(node, "cluster: peer up");
                // Its shards may have forgotten our sessions while it was unreachable.
                ctx.cluster.for_each_local(|s| {
                    let _ = s.cast(waddle_cluster::SessionMsg::Reannounce);
                });
            }
        }
    }
}

/// The timing of failure detection, from `cluster.heartbeat_ms` and `cluster.down_after_ms`.
#[derive(Clone, Copy, Debug)]
pub struct Liveness {
    /// How often the watch looks.
    pub tick: Duration,
    /// Silence after which a peer counts as gone.
    pub down_after: Duration,
    /// A node keeps its lease only while it heard from a majority within this, and a
    /// lease lasts `lease` beyond the look that renewed it: a node cut off stops serving
    /// within `fresh + lease`, before the others declare it down (`down_after`) and
    /// give what it owned to someone else.
    pub fresh: Duration,
    pub lease: Duration,
    /// A node declared down must be heard from this long before it counts as up again.
    pub settle: Duration,
}

impl Liveness {
    pub fn from_config(cluster: &crate::config::ClusterConfig) -> Liveness {
        let down_after = Duration::from_millis(cluster.down_after_ms);
        let lease = down_after / 4;
        Liveness {
            // A quarter heartbeat: a silence is judged within that of `down_after`.
            tick: (Duration::from_millis(cluster.heartbeat_ms) / 4).max(Duration::from_millis(20)).min(lease),
            down_after,
            fresh: down_after / 2,
            lease,
            settle: Duration::from_millis(cluster.heartbeat_ms * 2),
        }
    }
}

/// Whether this node and the voters it heard from are a majority of the voters (a node
/// that knows of no voters yet is not cut off from anyone).
pub fn in_touch_with_majority(voters: &[u64], me: u64, heard: &[u64]) -> bool {
    if voters.is_empty() {
        return true;
    }
    let reachable = voters.iter().filter(|v| **v == me || heard.contains(v)).count();
    reachable * 2 > voters.len()
}

/// On the leader: which members change state, from whom it heard lately. A serving or
/// catching-up member it has not heard from is down; a down member heard from for
/// `settle` comes back as `back_as` (`Joining` where partitions are replicated: it
/// missed what was written meanwhile and catches up first). `back_since` remembers
/// since when, across looks.
pub fn liveness_changes(
    nodes: &[(u64, NodeState)],
    me: u64,
    heard: &[u64],
    back_since: &mut std::collections::HashMap<u64, tokio::time::Instant>,
    now: tokio::time::Instant,
    settle: Duration,
    back_as: NodeState,
) -> Vec<(u64, NodeState)> {
    let mut changes = Vec::new();
    for (id, state) in nodes {
        if *id == me {
            continue;
        }
        let is_heard = heard.contains(id);
        match state {
            NodeState::Up | NodeState::Joining if !is_heard => changes.push((*id, NodeState::Down)),
            NodeState::Down if is_heard => {
                let since = *back_since.entry(*id).or_insert(now);
                if now.saturating_duration_since(since) >= settle {
                    changes.push((*id, back_as));
                }
            }
            _ => {}
        }
        if !is_heard || *state != NodeState::Down {
            back_since.remove(id);
        }
    }
    changes
}

/// Failure detection and the ownership lease. Every look: this node renews its lease
/// while it hears from a majority of the voters, and when it has not for `down_after`
/// it is on the minority side: it closes its clients' streams (they reconnect to a
/// node that can serve them) and stops its rooms. On the control plane's leader, a
/// member not heard from within `down_after` is marked down (the next ring leaves it
/// out, so its partitions go to the survivors) and a down member heard from again is
/// marked up.
async fn watch_liveness(ctx: Weak<Ctx>, control: Arc<ControlPlane>, transport: Arc<RactorTransport>, timing: Liveness) {
    let mut back_since = std::collections::HashMap::new();
    let mut last_touch = tokio::time::Instant::now();
    let mut cut_off = false;
    let proposing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Every node hears every peer (the transport's heartbeats), leader or not, so a new
    // leader already knows who went silent: it judges only once this process has
    // listened for `down_after` (a node that just started has heard nobody yet), and
    // after `settle` as leader (links dropped in an election's turmoil re-dial). Waiting
    // `down_after` again after every election made the failover of a node that was
    // also the control plane's leader take twice the detection time.
    let watching_since = tokio::time::Instant::now();
    let mut leader_since: Option<tokio::time::Instant> = None;
    let mut ticker = tokio::time::interval(timing.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(ctx) = ctx.upgrade() else { return };
        let now = tokio::time::Instant::now();
        let state = control.state();
        let me = control.id();
        let voters: Vec<u64> = state.nodes.values().filter(|n| n.voter).map(|n| n.id).collect();
        let fresh = transport.heard_within(timing.fresh);
        if in_touch_with_majority(&voters, me, &fresh) {
            ctx.cluster.renew_lease(timing.lease);
            last_touch = now;
            if cut_off {
                cut_off = false;
                tracing::warn!(node = me, "cluster: in touch with a majority again; serving");
                // Our sessions' registry entries may have been dropped by the others.
                ctx.cluster.for_each_local(|s| {
                    let _ = s.cast(waddle_cluster::SessionMsg::Reannounce);
                });
            }
        } else if !cut_off && now.saturating_duration_since(last_touch) >= timing.down_after {
            cut_off = true;
            ctx.cluster.revoke_lease();
            tracing::error!(node = me, heard = ?fresh, "cluster: cut off from the majority; closing client streams and rooms");
            ctx.cluster.for_each_local(|s| {
                let _ = s.cast(waddle_cluster::SessionMsg::Close(Some("system-shutdown")));
            });
            for (_, room) in ctx.muc.running_rooms() {
                let _ = room.cast(crate::muc::RoomMsg::Release { forward: false });
            }
        }
        // Only a leader that holds the lease judges. A leader woken from a pause still
        // believes it leads and has heard nobody for the length of the pause: judged
        // then, everyone would be down, and its proposals, forwarded to the leader
        // elected meanwhile as soon as it learns of it, would be committed there.
        if control.status().leader != Some(me) || !ctx.cluster.may_serve() {
            leader_since = None;
            continue;
        }
        let since = *leader_since.get_or_insert(now);
        if now.saturating_duration_since(watching_since) < timing.down_after
            || now.saturating_duration_since(since) < timing.settle
            || proposing.load(std::sync::atomic::Ordering::Acquire)
        {
            continue;
        }
        let nodes: Vec<(u64, NodeState)> = state.nodes.values().map(|n| (n.id, n.state)).collect();
        let alive = transport.heard_within(timing.down_after);
        let back_as = if ctx.replication().is_some() { NodeState::Joining } else { NodeState::Up };
        let mut changes = liveness_changes(&nodes, me, &alive, &mut back_since, now, timing.settle, back_as);
        if state.nodes.get(&me).is_some_and(|n| n.state == NodeState::Down) {
            // Declared down by an earlier leader while it could not hear this node (a
            // partition), and leading now: it is the one to say it is back.
            changes.push((me, NodeState::Up));
        }
        if changes.is_empty() {
            continue;
        }
        proposing.store(true, std::sync::atomic::Ordering::Release);
        let (control, proposing) = (Arc::clone(&control), Arc::clone(&proposing));
        tokio::spawn(async move {
            for (id, state) in changes {
                match control.propose(Command::SetNodeState { id, state }).await {
                    Ok(_) => tracing::warn!(node = id, ?state, "cluster: member state changed by failure detection"),
                    Err(e) => tracing::warn!(node = id, error = %e, "cluster: cannot change a member's state"),
                }
            }
            proposing.store(false, std::sync::atomic::Ordering::Release);
        });
    }
}

/// How long a drain waits for the ring that leaves this node out.
const DRAIN_WAIT: Duration = Duration::from_secs(60);

/// The rest of a `leave` once this node is marked leaving: waits for a ring in which it
/// owns no partition and holds no replica, and for the new owners to serve what it
/// owned, then closes its clients' streams (`system-shutdown`: they reconnect to another
/// node) and its rooms, and leaves the control plane's membership. Returns the epoch
/// of the ring it left in.
pub async fn drain(ctx: &Arc<Ctx>, clustering: &Clustering) -> anyhow::Result<u64> {
    let me = ctx.cluster.me();
    let deadline = tokio::time::Instant::now() + DRAIN_WAIT;
    let epoch = loop {
        let state = clustering.control.state();
        let out_of_ring = state
            .partition_map
            .as_ref()
            .is_some_and(|t| t.replicas.iter().all(|set| !set.contains(&me)) && t.epoch <= ctx.cluster.epoch());
        if out_of_ring {
            break ctx.cluster.epoch();
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("no ring without this node within {DRAIN_WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The new leaders fence this node's logs and take them over while it still answers;
    // wait until no partition is led here any more.
    if let Some(replication) = ctx.replication() {
        let replicator = replication.replicator();
        for partition in replicator.partitions() {
            while matches!(replicator.role(partition), waddle_replog::Role::Leader { .. }) {
                if tokio::time::Instant::now() >= deadline {
                    anyhow::bail!("partition {partition} still led here after {DRAIN_WAIT:?}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::warn!(node = me, epoch, "cluster: drained; closing client streams and leaving");
    ctx.cluster.for_each_local(|s| {
        let _ = s.cast(waddle_cluster::SessionMsg::Close(Some("system-shutdown")));
    });
    for (_, room) in ctx.muc.running_rooms() {
        let _ = room.cast(crate::muc::RoomMsg::Release { forward: true });
    }
    clustering.control.remove_node(me).await.context("leaving the control plane")?;
    Ok(epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_majority_of_voters_counts_this_node_too() {
        assert!(in_touch_with_majority(&[1, 2, 3], 1, &[2]));
        assert!(!in_touch_with_majority(&[1, 2, 3], 1, &[]));
        assert!(!in_touch_with_majority(&[1, 2, 3, 4], 1, &[2]), "half is not a majority");
        assert!(in_touch_with_majority(&[1], 1, &[]));
        assert!(!in_touch_with_majority(&[1, 2, 3], 4, &[1]), "a learner needs a majority of voters");
        assert!(in_touch_with_majority(&[], 4, &[]));
    }

    #[test]
    fn the_leader_marks_silent_members_down_and_returning_ones_up_after_settling() {
        let t0 = tokio::time::Instant::now();
        let settle = Duration::from_millis(1000);
        let mut back = std::collections::HashMap::new();
        let nodes = [(1, NodeState::Up), (2, NodeState::Up), (3, NodeState::Down), (4, NodeState::Joining)];
        let up = NodeState::Up;
        let changes = liveness_changes(&nodes, 1, &[3], &mut back, t0, settle, up);
        assert_eq!(
            changes,
            vec![(2, NodeState::Down), (4, NodeState::Down)],
            "nodes 2 and 4 are silent; node 3 has not settled"
        );
        let later = t0 + Duration::from_millis(999);
        assert!(liveness_changes(&nodes, 1, &[2, 3, 4], &mut back, later, settle, up).is_empty());
        let settled = t0 + settle;
        assert_eq!(liveness_changes(&nodes, 1, &[2, 3, 4], &mut back, settled, settle, up), vec![(3, NodeState::Up)]);
        // With replicated partitions it comes back catching up.
        let mut back = std::collections::HashMap::new();
        liveness_changes(&nodes, 1, &[2, 3, 4], &mut back, t0, settle, NodeState::Joining);
        let changes = liveness_changes(&nodes, 1, &[2, 3, 4], &mut back, settled, settle, NodeState::Joining);
        assert_eq!(changes, vec![(3, NodeState::Joining)]);
        // Silent again before settling: the clock starts over.
        let mut back = std::collections::HashMap::new();
        liveness_changes(&nodes, 1, &[2, 3, 4], &mut back, t0, settle, up);
        liveness_changes(&nodes, 1, &[2, 4], &mut back, t0 + Duration::from_millis(500), settle, up);
        assert!(liveness_changes(&nodes, 1, &[2, 3, 4], &mut back, t0 + settle, settle, up).is_empty());
        let changes = liveness_changes(&nodes, 1, &[], &mut back, t0, settle, up);
        assert!(changes.iter().all(|(id, _)| *id != 1), "never itself");
    }

    #[test]
    fn a_ring_is_redrawn_for_newcomers_and_once_they_caught_up() {
        use waddle_cluster::assign_catching_up;
        let (members, replicas) = (vec![1, 2, 3], 3);
        let settled = assign_catching_up(None, &members, &[], replicas);
        assert!(!ring_outdated(&settled, &members, &[]));
        // Node 4 joins: a ring where it learns, which stays while it catches up.
        assert!(ring_outdated(&settled, &members, &[4]));
        let catching_up = assign_catching_up(Some(&settled), &members, &[4], replicas);
        assert!(!ring_outdated(&catching_up, &members, &[4]));
        // It is up: the ring that gives it partitions, which then stays.
        let all = vec![1, 2, 3, 4];
        assert!(ring_outdated(&catching_up, &all, &[]));
        let promoted = assign_catching_up(Some(&catching_up), &all, &[], replicas);
        assert!(!ring_outdated(&promoted, &all, &[]));
        // A member gone, or one back and catching up.
        assert!(ring_outdated(&promoted, &[1, 2, 4], &[]));
        assert!(ring_outdated(&promoted, &[1, 2, 4], &[3]));
        // A node catching up that went silent (marked down) is no longer learning.
        assert!(ring_outdated(&catching_up, &members, &[]));
    }
}
