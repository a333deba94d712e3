//! The inter-node transport: versioned envelopes between cluster nodes, batched per peer.
//!
//! - [`envelope`]: the wire format ([`Envelope`], [`Batch`]), pure and versioned.
//! - [`message`]: typed messages ([`Message`]: kind, version, response type) and a
//!   [`Dispatcher`] routing received envelopes to typed handlers.
//! - [`Transport`]: what the rest of the cluster uses: casts (queued, batched, ordered per
//!   pair of nodes), calls (correlated request/response with a timeout), peer membership
//!   and liveness events. Two implementations share one engine (`core`), so they batch,
//!   order and detect failures the same way:
//!   - [`memory::MemoryTransport`]: in-process, for tests of several nodes in one process,
//!     with partitions;
//!   - `ractor::RactorTransport` (feature `ractor-transport`): over ractor_cluster.
//!
//! Delivery is at most once. Per (sender, receiver) pair, casts are delivered in the order
//! they were cast, as long as the pair stays connected; a reconnection may lose what was in
//! flight, never reorders it. Failures are reported, not hidden: a full queue is
//! [`TransportError::Backpressure`], a peer that is not up is
//! [`TransportError::Unreachable`], a request the remote side could not decode or handle
//! is [`TransportError::Remote`].

pub(crate) mod core;
pub mod envelope;
pub mod memory;
pub mod message;
#[cfg(feature = "ractor-transport")]
pub mod ractor;

use std::future::Future;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::broadcast;

pub use envelope::{Batch, Envelope, WireError, WIRE_VERSION};
pub use memory::{MemoryNetwork, MemoryTransport};
pub use message::{cast_envelope, request_envelope, response_envelope, Dispatcher, Message, NoResponse};

/// Identifier of a cluster node on the wire.
pub type NodeId = u64;

/// Why a send or a call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// No live connection to this node (not a peer, not connected, or declared down).
    #[error("node {0} is unreachable")]
    Unreachable(NodeId),
    /// Nothing answered the address given to [`Transport::call_addr`].
    #[error("cannot reach {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The peer's outbound queue is full: it is not keeping up.
    #[error("outbound queue to node {0} is full")]
    Backpressure(NodeId),
    /// No response within the call's timeout.
    #[error("timed out")]
    Timeout,
    /// The remote side answered with an error (it could not decode or handle the request).
    #[error("remote error: {0}")]
    Remote(String),
    /// The response could not be decoded here.
    #[error("cannot decode the response: {0}")]
    Decode(WireError),
    /// The response is of another message kind than the request's response type.
    #[error("expected a response of kind {expected}, got kind {got}")]
    UnexpectedResponse { expected: u16, got: u16 },
    /// The envelope is larger than [`TransportConfig::max_envelope_bytes`].
    #[error("envelope of {0} bytes is too large")]
    TooLarge(usize),
    /// The transport could not start or has shut down.
    #[error("transport: {0}")]
    Closed(String),
}

/// A change in a peer's liveness, as seen from this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerEvent {
    /// Connected (and authenticated) and heard from.
    Up(NodeId),
    /// Connection lost, or silent for [`TransportConfig::down_after`].
    Down(NodeId),
}

/// Tuning shared by every transport implementation.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Envelopes waiting per peer before [`Transport::cast`] returns
    /// [`TransportError::Backpressure`].
    pub queue_capacity: usize,
    /// Most envelopes packed into one frame.
    pub max_batch_envelopes: usize,
    /// Most bytes packed into one frame (an envelope larger than this travels alone).
    pub max_batch_bytes: usize,
    /// Largest envelope accepted (ractor_cluster refuses frames over 16 MiB).
    pub max_envelope_bytes: usize,
    /// Interval of the transport's liveness pings to every connected peer.
    pub ping_interval: Duration,
    /// A peer silent for this long is declared down (and its connection reset).
    pub down_after: Duration,
}

impl Default for TransportConfig {
    fn default() -> TransportConfig {
        TransportConfig {
            queue_capacity: 16 * 1024,
            max_batch_envelopes: 1024,
            max_batch_bytes: 1024 * 1024,
            max_envelope_bytes: 8 * 1024 * 1024,
            ping_interval: Duration::from_secs(1),
            down_after: Duration::from_secs(5),
        }
    }
}

/// Counters since the transport started (pings included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    pub frames_sent: u64,
    pub envelopes_sent: u64,
    pub frames_received: u64,
    pub envelopes_received: u64,
    /// Frames that could not be handed to their peer's connection (lost).
    pub frames_dropped: u64,
    /// Received frames that did not decode (logged at `error!`).
    pub decode_errors: u64,
    /// Connections this node opened to other nodes (attempts, successful or not).
    pub dials: u64,
}

/// Receives what peers send. Given to a transport when it starts.
pub trait Inbound: Send + Sync + 'static {
    /// A cast from `from`. Called on the transport's receive path in the sender's order:
    /// must not block.
    fn on_cast(&self, from: NodeId, env: Envelope);
    /// A request from `from`; the envelope it resolves to is sent back as the response
    /// (the transport sets its `corr` and response flag). Runs as its own task.
    fn on_call(&self, from: NodeId, env: Envelope) -> BoxFuture<'static, Envelope>;
}

/// Envelopes to and from the other nodes of the cluster.
pub trait Transport: Send + Sync + 'static {
    /// This node's id.
    fn local_id(&self) -> NodeId;
    /// Queues `env` for `to` without waiting; sent with whatever else is queued for `to`.
    /// `to` may be this node (delivered locally, through the same path).
    fn cast(&self, to: NodeId, env: Envelope) -> Result<(), TransportError>;
    /// Sends `env` as a request and resolves to the response envelope. An error response
    /// resolves to [`TransportError::Remote`].
    fn call(
        &self,
        to: NodeId,
        env: Envelope,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Envelope, TransportError>>;
    /// As [`Transport::call`], to a node known only by its address (`host:port`), e.g. a
    /// seed when joining: connects if needed and learns the node's id.
    fn call_addr(
        &self,
        addr: &str,
        env: Envelope,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Envelope, TransportError>>;
    /// The membership changed: connect to new peers (`(id, "host:port")`), drop the
    /// connections to removed ones. Connections from nodes not listed are still accepted
    /// (a joining node calls before it is a member).
    fn set_peers(&self, peers: Vec<(NodeId, String)>);
    /// The peers currently up, sorted.
    fn connected(&self) -> Vec<NodeId>;
    /// The peers heard from within `within`, sorted: what a node that may have been
    /// paused uses to know whether it is still in touch with the others, and what failure
    /// detection judges by (a link being replaced is not silence).
    fn heard_within(&self, within: Duration) -> Vec<NodeId>;
    /// Liveness changes from now on.
    fn peer_events(&self) -> broadcast::Receiver<PeerEvent>;
    fn stats(&self) -> TransportStats;
}

/// Decodes a response envelope as `M::Response`.
pub fn decode_response<M: Message>(env: Envelope) -> Result<M::Response, TransportError> {
    if env.is_error() {
        return Err(TransportError::Remote(env.error_reason()));
    }
    if env.kind != <M::Response as Message>::KIND {
        return Err(TransportError::UnexpectedResponse { expected: <M::Response as Message>::KIND, got: env.kind });
    }
    <M::Response as Message>::decode(env.version, &env.payload).map_err(TransportError::Decode)
}

/// [`decode_response`], logging what this node could not decode.
fn decode_response_from<M: Message>(
    peer: &dyn std::fmt::Display,
    env: Envelope,
) -> Result<M::Response, TransportError> {
    let (kind, version) = (env.kind, env.version);
    let r = decode_response::<M>(env);
    if let Err(e @ (TransportError::Decode(_) | TransportError::UnexpectedResponse { .. })) = &r {
        tracing::error!(%peer, kind, version, request_kind = M::KIND, error = %e, "cannot decode an inter-node response");
    }
    r
}

/// Sends `msg` to `to` as a request and decodes the typed response.
///
/// The request is queued when this is called; the returned future only waits.
pub fn request<M: Message>(
    t: &dyn Transport,
    to: NodeId,
    msg: &M,
    timeout: Duration,
) -> impl Future<Output = Result<M::Response, TransportError>> + Send + 'static {
    let call = t.call(to, request_envelope(msg), timeout);
    async move {
        let env = call.await?;
        decode_response_from::<M>(&to, env)
    }
}

/// As [`request`], to a node known only by its address.
pub fn request_addr<M: Message>(
    t: &dyn Transport,
    addr: &str,
    msg: &M,
    timeout: Duration,
) -> impl Future<Output = Result<M::Response, TransportError>> + Send + 'static {
    let call = t.call_addr(addr, request_envelope(msg), timeout);
    let addr = addr.to_string();
    async move {
        let env = call.await?;
        decode_response_from::<M>(&addr, env)
    }
}

/// Casts `msg` to `to`.
pub fn cast_msg<M: Message>(t: &dyn Transport, to: NodeId, msg: &M) -> Result<(), TransportError> {
    t.cast(to, cast_envelope(msg))
}
