//! The seam between openraft and the cluster transport.
//!
//! The control plane only needs "send these bytes to that node and give me its answer";
//! the cluster crate fills [`RaftTransport`] with its real connections, tests use
//! [`MemoryTransport`]. Every transport failure and every unreadable reply becomes openraft's
//! `Unreachable`, which makes it back off before retrying instead of spinning.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;

use crate::plane::ControlPlane;
use crate::rpc::{decode_reply, encode_request, ControlReply, ControlRpc};
use crate::TypeConfig;

/// Carries control-plane frames between nodes: bytes in, bytes out.
///
/// `target` is the node id, or 0 when only the address is known (a node joining through a
/// seed address); a transport must then route by `target_addr`. The returned future must
/// not borrow `self` (clone what it needs).
pub trait RaftTransport: Send + Sync + 'static {
    fn call(
        &self,
        target: u64,
        target_addr: &str,
        request: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, TransportFailure>>;
}

/// Why a call got no answer. The distinction matters to a forwarded proposal: one that was
/// never delivered can be retried, one whose answer was lost might have been applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportFailure {
    /// Certainly not delivered (no connection, node unknown or isolated).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// Possibly delivered, but no answer came back (timeout, connection lost mid-call).
    #[error("no reply: {0}")]
    NoReply(String),
}

/// openraft's network factory over a [`RaftTransport`].
pub(crate) struct Network {
    pub(crate) transport: Arc<dyn RaftTransport>,
    /// openraft's backoff after `Unreachable`; a fraction of an election timeout so a node
    /// that comes back is noticed quickly.
    pub(crate) backoff: Duration,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Connection {
        Connection { target, addr: node.addr.clone(), transport: self.transport.clone(), backoff: self.backoff }
    }
}

/// One peer as openraft sees it.
pub(crate) struct Connection {
    target: u64,
    addr: String,
    transport: Arc<dyn RaftTransport>,
    backoff: Duration,
}

type RpcResult<T, E = RaftError<u64>> = Result<T, RPCError<u64, BasicNode, E>>;

fn unreachable<E: std::error::Error>(why: impl std::fmt::Display) -> RPCError<u64, BasicNode, E> {
    RPCError::Unreachable(Unreachable::from(openraft::AnyError::error(why)))
}

impl Connection {
    async fn call<E: std::error::Error>(&self, rpc: &ControlRpc) -> RpcResult<ControlReply, E> {
        let reply = self
            .transport
            .call(self.target, &self.addr, encode_request(rpc))
            .await
            .map_err(|e| unreachable(format!("node {} at {}: {e}", self.target, self.addr)))?;
        match decode_reply(&reply) {
            Ok(ControlReply::BadFrame(why)) => {
                tracing::error!(target = self.target, %why, "control plane: peer could not read our frame");
                Err(unreachable(format!("node {} rejected our frame: {why}", self.target)))
            }
            Ok(ControlReply::Failed(why)) => Err(unreachable(format!("node {}: {why}", self.target))),
            Ok(reply) => Ok(reply),
            Err(e) => {
                tracing::error!(target = self.target, error = %e, "control plane: unreadable reply");
                Err(unreachable(format!("node {}: {e}", self.target)))
            }
        }
    }

    fn unexpected<E: std::error::Error>(&self, reply: &ControlReply) -> RPCError<u64, BasicNode, E> {
        tracing::error!(target = self.target, ?reply, "control plane: reply does not match the request");
        unreachable(format!("node {}: mismatched reply", self.target))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        match self.call(&ControlRpc::AppendEntries(rpc)).await? {
            ControlReply::AppendEntries(Ok(r)) => Ok(r),
            ControlReply::AppendEntries(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(self.unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> {
        match self.call(&ControlRpc::InstallSnapshot(rpc)).await? {
            ControlReply::InstallSnapshot(Ok(r)) => Ok(r),
            ControlReply::InstallSnapshot(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(self.unexpected(&other)),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<u64>, _option: RPCOption) -> RpcResult<VoteResponse<u64>> {
        match self.call(&ControlRpc::Vote(rpc)).await? {
            ControlReply::Vote(Ok(r)) => Ok(r),
            ControlReply::Vote(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(self.unexpected(&other)),
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.backoff))
    }
}

/// An in-process transport for tests: a map of node id to [`ControlPlane`] handle, with
/// nodes that can be cut off.
#[derive(Default)]
pub struct MemoryTransport {
    inner: Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    nodes: HashMap<u64, ControlPlane>,
    isolated: HashSet<u64>,
}

impl MemoryTransport {
    pub fn new() -> Arc<MemoryTransport> {
        Arc::new(MemoryTransport::default())
    }

    /// The transport as seen from node `from`: its calls fail while `from` is isolated.
    pub fn endpoint(self: &Arc<Self>, from: u64) -> Arc<dyn RaftTransport> {
        Arc::new(Endpoint { from, net: self.clone() })
    }

    /// Makes `plane` reachable under its node id (replacing a previous handle, e.g. after a
    /// restart).
    pub fn register(&self, plane: &ControlPlane) {
        self.lock().nodes.insert(plane.id(), plane.clone());
    }

    /// Forgets a node: calls to it fail as unreachable.
    pub fn unregister(&self, id: u64) {
        self.lock().nodes.remove(&id);
    }

    /// Cuts a node off: calls to and from it fail as unreachable until [`Self::heal`].
    pub fn isolate(&self, id: u64) {
        self.lock().isolated.insert(id);
    }

    pub fn heal(&self, id: u64) {
        self.lock().isolated.remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn route(&self, from: Option<u64>, target: u64, addr: &str) -> Result<ControlPlane, TransportFailure> {
        let inner = self.lock();
        let plane = if target != 0 {
            inner.nodes.get(&target)
        } else {
            inner.nodes.values().find(|p| p.node().cluster_addr == addr)
        };
        let Some(plane) = plane else {
            return Err(TransportFailure::Unreachable(format!("no node {target} at {addr}")));
        };
        if inner.isolated.contains(&plane.id()) || from.is_some_and(|f| inner.isolated.contains(&f)) {
            return Err(TransportFailure::Unreachable("isolated".to_owned()));
        }
        Ok(plane.clone())
    }

    fn deliver(
        &self,
        from: Option<u64>,
        target: u64,
        addr: &str,
        request: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, TransportFailure>> {
        let routed = self.route(from, target, addr);
        Box::pin(async move {
            let plane = routed?;
            Ok(plane.handle_rpc(request).await)
        })
    }
}

impl RaftTransport for MemoryTransport {
    fn call(
        &self,
        target: u64,
        target_addr: &str,
        request: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, TransportFailure>> {
        self.deliver(None, target, target_addr, request)
    }
}

struct Endpoint {
    from: u64,
    net: Arc<MemoryTransport>,
}

impl RaftTransport for Endpoint {
    fn call(
        &self,
        target: u64,
        target_addr: &str,
        request: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, TransportFailure>> {
        self.net.deliver(Some(self.from), target, target_addr, request)
    }
}
