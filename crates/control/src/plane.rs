//! [`ControlPlane`]: the handle the node uses — open, bootstrap or join, propose, read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Raft, RaftMetrics, ServerState, SnapshotPolicy};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::command::{Command, CommandResult, Entry, NodeRecord, NodeState, ENTRY_VERSION};
use crate::error::ControlError;
use crate::log_store::LogStore;
use crate::network::{Network, RaftTransport};
use crate::rpc::{decode_reply, decode_request, encode_reply, encode_request, ControlReply, ControlRpc};
use crate::sm_store::{Applied, Shared, StateMachineStore};
use crate::state::ControlState;
use crate::TypeConfig;

/// The most voters the control plane keeps: more only slows commits down.
pub const MAX_VOTERS: usize = 5;

/// Tuning for one control-plane node.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// How many voters the leader keeps (1..=5); further nodes stay learners.
    pub voters: usize,
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for a random time in `[election_min_ms,
    /// election_max_ms)` starts an election. Must exceed `heartbeat_ms`.
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot once this many entries were applied since the last one.
    pub snapshot_after_logs: u64,
    /// Entries already in a snapshot that are kept in the log anyway (so a follower slightly
    /// behind catches up from the log rather than by a whole snapshot). The rest are purged.
    pub logs_to_keep: u64,
    /// How long `propose`, `join_via` and `remove_node` keep trying (through elections).
    pub request_timeout_ms: u64,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            voters: 3,
            heartbeat_ms: 100,
            election_min_ms: 500,
            election_max_ms: 1000,
            snapshot_after_logs: 1000,
            logs_to_keep: 200,
            request_timeout_ms: 10_000,
        }
    }
}

/// This node's part in the Raft group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    /// A non-voting member (or a node not yet in any cluster).
    Learner,
    Candidate,
    Shutdown,
}

/// A point-in-time view of this node's Raft state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlStatus {
    pub id: u64,
    pub role: Role,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_applied: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// The last log index included in this node's latest snapshot.
    pub snapshot: Option<u64>,
    /// The last log index purged from this node's log (compaction).
    pub purged: Option<u64>,
}

/// A handle to one node's control plane. Cheap to clone.
#[derive(Clone)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

struct Inner {
    node: NodeRecord,
    raft: Raft<TypeConfig>,
    shared: Arc<Shared>,
    transport: Arc<dyn RaftTransport>,
    config: ControlConfig,
    /// A clone of the log store for diagnostics; dropped at shutdown so the database thread
    /// ends with the Raft core.
    log: std::sync::Mutex<Option<LogStore>>,
    /// Serializes membership changes made by this node as leader (openraft refuses a change
    /// while another is in progress).
    membership_lock: tokio::sync::Mutex<()>,
    shut_down: AtomicBool,
}

type WriteError = RaftError<u64, ClientWriteError<u64, BasicNode>>;

fn write_error(e: WriteError) -> ControlError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ControlError::NotLeader { leader: f.leader_id },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => ControlError::Raft(c.to_string()),
        RaftError::Fatal(f) => f.into(),
    }
}

impl ControlPlane {
    /// Opens (or creates) the control plane stored in `dir` for `node`. Reopening a directory
    /// resumes with its log, vote and latest snapshot. `node.id` must not be 0 (0 means "id
    /// unknown" on the transport).
    pub async fn open(
        dir: &Path,
        node: NodeRecord,
        transport: Arc<dyn RaftTransport>,
        config: ControlConfig,
    ) -> Result<ControlPlane, ControlError> {
        if node.id == 0 {
            return Err(ControlError::Config("node id 0 is reserved".to_owned()));
        }
        if config.voters == 0 || config.voters > MAX_VOTERS {
            return Err(ControlError::Config(format!("voters must be 1..={MAX_VOTERS}, not {}", config.voters)));
        }
        tokio::fs::create_dir_all(dir).await?;
        let raft_config = openraft::Config {
            cluster_name: "waddle-control".to_owned(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_min_ms,
            election_timeout_max: config.election_max_ms,
            // A whole snapshot goes in one chunk per call; give it time beyond a heartbeat.
            install_snapshot_timeout: config.election_max_ms.saturating_mul(4).max(1000),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_after_logs.max(1)),
            max_in_snapshot_log_to_keep: config.logs_to_keep,
            // Snapshot chunks travel as JSON arrays of numbers (about 3.5 bytes per byte):
            // keep each frame well below a megabyte on the wire.
            snapshot_max_chunk_size: 256 * 1024,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ControlError::Config(e.to_string()))?;

        let log = LogStore::open(dir).await?;
        let sm = StateMachineStore::open(dir).await?;
        let shared = sm.shared();
        let network = Network { transport: transport.clone(), backoff: Duration::from_millis(config.election_min_ms) };
        let raft = Raft::new(node.id, Arc::new(raft_config), network, log.clone(), sm).await?;
        tracing::info!(id = node.id, dir = %dir.display(), "control plane: opened");
        Ok(ControlPlane {
            inner: Arc::new(Inner {
                node,
                raft,
                shared,
                transport,
                config,
                log: std::sync::Mutex::new(Some(log)),
                membership_lock: tokio::sync::Mutex::new(()),
                shut_down: AtomicBool::new(false),
            }),
        })
    }

    pub fn id(&self) -> u64 {
        self.inner.node.id
    }

    /// This node's record as given to `open`.
    pub fn node(&self) -> &NodeRecord {
        &self.inner.node
    }

    /// The applied state, as of now. Cheap (an `Arc` clone); holding it does not block
    /// applies (the next apply copies instead).
    pub fn state(&self) -> Arc<ControlState> {
        self.inner.shared.state()
    }

    /// Every applied command, in log order, from now on. To keep a derived cache, subscribe
    /// first, then read [`Self::state`], then skip notifications with `index <=
    /// state.applied`. A receiver that lags too far gets `RecvError::Lagged`, and an
    /// `Applied` with no command means a snapshot replaced the state: in both cases rebuild
    /// from [`Self::state`].
    pub fn subscribe(&self) -> broadcast::Receiver<Applied> {
        self.inner.shared.subscribe()
    }

    /// Waits until this node has applied the entry at `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), ControlError> {
        let mut rx = self.inner.shared.applied_rx();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|applied| *applied >= index)).await.map(|r| r.is_ok());
        match waited {
            Ok(true) => Ok(()),
            Ok(false) => Err(ControlError::Shutdown),
            Err(_) => Err(ControlError::Timeout(format!(
                "node {} applied {} of {index} after {timeout:?}",
                self.id(),
                *rx.borrow()
            ))),
        }
    }

    /// Makes this node a one-node cluster with itself as voter and commits its `Up` record.
    /// Does nothing if this node was already initialized (bootstrapped or joined).
    pub async fn bootstrap(&self) -> Result<(), ControlError> {
        if self.inner.raft.is_initialized().await? {
            return Ok(());
        }
        let members = BTreeMap::from([(self.id(), BasicNode::new(&self.inner.node.cluster_addr))]);
        match self.inner.raft.initialize(members).await {
            Ok(()) => {}
            Err(RaftError::APIError(e)) => {
                tracing::info!(error = %e, "control plane: already initialized");
                return Ok(());
            }
            Err(RaftError::Fatal(f)) => return Err(f.into()),
        }
        let mut me = self.inner.node.clone();
        me.state = NodeState::Up;
        me.voter = true;
        self.propose(Command::AddNode(me)).await?;
        Ok(())
    }

    /// Joins the cluster through any member at `seed_addr` (which relays to the leader). The
    /// leader adds this node as a learner, waits for it to catch up, promotes it to voter if
    /// the cluster has fewer than `voters`, and commits its `Up` record; this returns once
    /// that record is applied here. Safe to repeat (a restarted node re-joining).
    pub async fn join_via(&self, seed_addr: &str) -> Result<(), ControlError> {
        let deadline = self.deadline();
        let seed = (0u64, seed_addr.to_owned());
        let mut target = seed.clone();
        let mut last_error = String::from("no answer yet");
        loop {
            if Instant::now() >= deadline {
                return Err(ControlError::Timeout(format!("joining via {seed_addr}: {last_error}")));
            }
            let rpc = ControlRpc::Join { node: self.inner.node.clone(), forwarded: false };
            let answer = self.inner.transport.call(target.0, &target.1, encode_request(&rpc)).await;
            match answer.map(|bytes| decode_reply(&bytes)) {
                Ok(Ok(ControlReply::Joined { index, voter })) => {
                    tracing::info!(id = self.id(), index, voter, "control plane: joined");
                    return self.wait_applied(index, deadline.saturating_duration_since(Instant::now())).await;
                }
                Ok(Ok(ControlReply::NotLeader { leader: Some(l), leader_addr: Some(a) })) if target.0 != l => {
                    target = (l, a);
                    continue;
                }
                Ok(Ok(ControlReply::NotLeader { .. })) => {
                    last_error = format!("{} knows no leader", target.1);
                    target = seed.clone();
                }
                Ok(Ok(ControlReply::Failed(why))) => {
                    last_error = why;
                    target = seed.clone();
                }
                Ok(Ok(ControlReply::BadFrame(why))) => return Err(ControlError::Protocol(why)),
                Ok(Ok(other)) => return Err(ControlError::Protocol(format!("unexpected answer to Join: {other:?}"))),
                Ok(Err(e)) => return Err(ControlError::Protocol(e.to_string())),
                // Join is idempotent: retrying after a lost answer is fine.
                Err(e) => {
                    last_error = e.to_string();
                    target = seed.clone();
                }
            }
            tokio::time::sleep(self.retry_pause()).await;
        }
    }

    /// Commits `cmd` and returns its result once it is applied on this node too, so a read
    /// of [`Self::state`] right after sees it. On a follower the entry is forwarded to the
    /// leader; during an election it retries until `request_timeout_ms`.
    pub async fn propose(&self, cmd: Command) -> Result<CommandResult, ControlError> {
        if cmd.has_undecodable() {
            return Err(ControlError::InvalidCommand("an undecodable command cannot be proposed".to_owned()));
        }
        let deadline = self.deadline();
        let (index, result) = self.write(Entry::new(cmd), deadline).await?;
        self.wait_applied(index, deadline.saturating_duration_since(Instant::now())).await?;
        Ok(result)
    }

    /// Takes node `id` out of the cluster: marks it `Leaving`, removes it from the Raft
    /// membership (voter or learner), commits `RemoveNode`, and promotes a learner if voters
    /// fell below `voters`.
    pub async fn remove_node(&self, id: u64) -> Result<(), ControlError> {
        let deadline = self.deadline();
        loop {
            let m = self.metrics();
            let outcome = match m.current_leader {
                Some(l) if l == self.id() => match self.leader_remove(id, deadline).await {
                    Ok(index) => Some(Ok(index)),
                    Err(ControlError::NotLeader { .. }) => None,
                    Err(e) => Some(Err(e)),
                },
                Some(l) => match self.call_leader(&m, l, &ControlRpc::Remove { id, forwarded: false }).await {
                    Ok(Some(ControlReply::Removed { index })) => Some(Ok(index)),
                    Ok(Some(ControlReply::NotLeader { .. })) | Ok(None) => None,
                    Ok(Some(ControlReply::Failed(why))) => Some(Err(ControlError::Remote(why))),
                    Ok(Some(other)) => {
                        Some(Err(ControlError::Protocol(format!("unexpected answer to Remove: {other:?}"))))
                    }
                    Err(e) => Some(Err(e)),
                },
                None => None,
            };
            match outcome {
                Some(Ok(index)) => {
                    // A node removing itself stops receiving entries: don't wait for them.
                    if id == self.id() {
                        return Ok(());
                    }
                    return self.wait_applied(index, deadline.saturating_duration_since(Instant::now())).await;
                }
                Some(Err(e)) => return Err(self.removal_failed(id, e)),
                None if Instant::now() >= deadline => {
                    let e = ControlError::Timeout(format!("removing node {id}: no leader"));
                    return Err(self.removal_failed(id, e));
                }
                None => tokio::time::sleep(self.retry_pause()).await,
            }
        }
    }

    /// A failed removal of this node gives it back its part in elections (it may have
    /// stepped down to leave).
    fn removal_failed(&self, id: u64, e: ControlError) -> ControlError {
        if id == self.id() {
            let runtime = self.inner.raft.runtime_config();
            runtime.heartbeat(true);
            runtime.elect(true);
        }
        e
    }

    /// This node's Raft role, leader, term, applied index and membership.
    pub fn status(&self) -> ControlStatus {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        ControlStatus {
            id: self.id(),
            role: match m.state {
                ServerState::Leader => Role::Leader,
                ServerState::Follower => Role::Follower,
                ServerState::Learner => Role::Learner,
                ServerState::Candidate => Role::Candidate,
                ServerState::Shutdown => Role::Shutdown,
            },
            leader: m.current_leader,
            term: m.current_term,
            last_applied: m.last_applied.map_or(0, |l| l.index),
            voters: membership.voter_ids().collect::<BTreeSet<_>>().into_iter().collect(),
            learners: membership.learner_ids().collect(),
            snapshot: m.snapshot.map(|l| l.index),
            purged: m.purged.map(|l| l.index),
        }
    }

    /// The lowest log index still stored on this node (compaction moves it forward).
    pub async fn log_first_index(&self) -> Result<Option<u64>, ControlError> {
        let log = match self.inner.log.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        match log {
            Some(log) => Ok(log.first_index().await?),
            None => Err(ControlError::Shutdown),
        }
    }

    /// Stops this node's Raft tasks. Its directory can be reopened later. Calls arriving
    /// afterwards are answered with an error (the sender treats the node as unreachable).
    pub async fn shutdown(&self) -> Result<(), ControlError> {
        self.inner.shut_down.store(true, Ordering::SeqCst);
        self.inner.raft.shutdown().await.map_err(|e| ControlError::Raft(e.to_string()))?;
        match self.inner.log.lock() {
            Ok(mut g) => g.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        tracing::info!(id = self.id(), "control plane: shut down");
        Ok(())
    }

    /// Serves one frame from another node (the transport calls this). Always answers: an
    /// unreadable frame gets a `BadFrame` reply and an error log line.
    pub async fn handle_rpc(&self, request: Vec<u8>) -> Vec<u8> {
        let reply = match decode_request(&request) {
            Err(e) => {
                tracing::error!(node = self.id(), error = %e, bytes = request.len(), "control plane: unreadable request frame");
                ControlReply::BadFrame(e.to_string())
            }
            Ok(_) if self.inner.shut_down.load(Ordering::SeqCst) => ControlReply::Failed("shut down".to_owned()),
            Ok(rpc) => self.serve(rpc).await,
        };
        encode_reply(&reply)
    }

    async fn serve(&self, rpc: ControlRpc) -> ControlReply {
        let raft = &self.inner.raft;
        match rpc {
            ControlRpc::AppendEntries(r) => ControlReply::AppendEntries(raft.append_entries(r).await),
            ControlRpc::Vote(r) => ControlReply::Vote(raft.vote(r).await),
            ControlRpc::InstallSnapshot(r) => ControlReply::InstallSnapshot(raft.install_snapshot(r).await),
            ControlRpc::ClientWrite(entry) => {
                if entry.v != ENTRY_VERSION {
                    tracing::error!(
                        version = entry.v,
                        "control plane: forwarded entry has an unknown version; refused"
                    );
                    return ControlReply::Failed(format!(
                        "unknown entry version {} (leader writes {ENTRY_VERSION})",
                        entry.v
                    ));
                }
                if entry.cmd.has_undecodable() {
                    tracing::error!("control plane: forwarded entry holds a command this node cannot decode; refused");
                    return ControlReply::Failed("undecodable command".to_owned());
                }
                match self.local_write(entry, self.deadline()).await {
                    Ok((index, result)) => ControlReply::Written { index, result },
                    Err(ControlError::NotLeader { leader }) => self.not_leader(leader),
                    Err(e) => ControlReply::Failed(e.to_string()),
                }
            }
            ControlRpc::Join { node, forwarded } => {
                let deadline = self.deadline();
                match self.leader_join(node.clone(), deadline).await {
                    Ok((index, voter)) => ControlReply::Joined { index, voter },
                    Err(ControlError::NotLeader { leader }) => {
                        self.relay(leader, forwarded, ControlRpc::Join { node, forwarded: true }).await
                    }
                    Err(e) => ControlReply::Failed(e.to_string()),
                }
            }
            ControlRpc::Remove { id, forwarded } => {
                let deadline = self.deadline();
                match self.leader_remove(id, deadline).await {
                    Ok(index) => ControlReply::Removed { index },
                    Err(ControlError::NotLeader { leader }) => {
                        self.relay(leader, forwarded, ControlRpc::Remove { id, forwarded: true }).await
                    }
                    Err(e) => ControlReply::Failed(e.to_string()),
                }
            }
        }
    }

    /// Passes a request this node cannot serve to the leader, once.
    async fn relay(&self, leader: Option<u64>, forwarded: bool, rpc: ControlRpc) -> ControlReply {
        let m = self.metrics();
        let leader = leader.or(m.current_leader).filter(|l| *l != self.id());
        match leader {
            Some(l) if !forwarded => match self.call_leader(&m, l, &rpc).await {
                Ok(Some(reply)) => reply,
                Ok(None) | Err(_) => self.not_leader(Some(l)),
            },
            _ => self.not_leader(leader),
        }
    }

    fn not_leader(&self, leader: Option<u64>) -> ControlReply {
        let m = self.metrics();
        let leader = leader.or(m.current_leader);
        let leader_addr = leader.and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.addr.clone()));
        ControlReply::NotLeader { leader, leader_addr }
    }

    /// Sends `rpc` to `leader`. `Ok(None)`: certainly not delivered (retry is safe).
    async fn call_leader(
        &self,
        m: &RaftMetrics<u64, BasicNode>,
        leader: u64,
        rpc: &ControlRpc,
    ) -> Result<Option<ControlReply>, ControlError> {
        let Some(addr) = m.membership_config.membership().get_node(&leader).map(|n| n.addr.clone()) else {
            return Ok(None);
        };
        match self.inner.transport.call(leader, &addr, encode_request(rpc)).await {
            Ok(bytes) => match decode_reply(&bytes) {
                Ok(ControlReply::BadFrame(why)) => Err(ControlError::Protocol(why)),
                Ok(reply) => Ok(Some(reply)),
                Err(e) => Err(ControlError::Protocol(e.to_string())),
            },
            Err(crate::TransportFailure::Unreachable(why)) => {
                tracing::debug!(leader, %why, "control plane: leader unreachable; will retry");
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Commits `entry` through whichever node leads, retrying while there is none or the
    /// leader moved. Returns the index it was committed at and its result on the leader.
    async fn write(&self, entry: Entry, deadline: Instant) -> Result<(u64, CommandResult), ControlError> {
        loop {
            let m = self.metrics();
            match m.current_leader {
                Some(l) if l == self.id() => match self.local_write(entry.clone(), deadline).await {
                    Ok(written) => return Ok(written),
                    Err(ControlError::NotLeader { .. }) => {}
                    Err(e) => return Err(e),
                },
                Some(l) => match self.call_leader(&m, l, &ControlRpc::ClientWrite(entry.clone())).await? {
                    Some(ControlReply::Written { index, result }) => return Ok((index, result)),
                    Some(ControlReply::NotLeader { .. }) | None => {}
                    Some(ControlReply::Failed(why)) => return Err(ControlError::Remote(why)),
                    Some(other) => {
                        return Err(ControlError::Protocol(format!("unexpected answer to ClientWrite: {other:?}")))
                    }
                },
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(ControlError::Timeout("no leader accepted the proposal".to_owned()));
            }
            tokio::time::sleep(self.retry_pause()).await;
        }
    }

    /// Proposes `entry` to this node's Raft (which refuses if it is not the leader). Gives up
    /// at `deadline`: a leader cut off from its followers would otherwise wait forever for a
    /// commit (the outcome is then unknown: the entry may still commit later).
    async fn local_write(&self, entry: Entry, deadline: Instant) -> Result<(u64, CommandResult), ControlError> {
        match tokio::time::timeout_at(deadline, self.inner.raft.client_write(entry)).await {
            Ok(Ok(resp)) => Ok((resp.log_id.index, resp.data)),
            Ok(Err(e)) => Err(write_error(e)),
            Err(_) => Err(ControlError::Timeout("the entry was not committed in time (no quorum?)".to_owned())),
        }
    }

    /// As leader: make `node` a member (see [`Self::join_via`]).
    async fn leader_join(&self, node: NodeRecord, deadline: Instant) -> Result<(u64, bool), ControlError> {
        let _serial = self.inner.membership_lock.lock().await;
        let m = self.metrics();
        if m.current_leader != Some(self.id()) {
            return Err(ControlError::NotLeader { leader: m.current_leader });
        }
        let id = node.id;
        let addr = BasicNode::new(&node.cluster_addr);
        // A new node enters in the state it asks for (`Joining`: it catches up before it
        // takes partitions; `Up`: at once), and so does one that has not finished
        // catching up or was declared down (it missed what was written meanwhile); a
        // member that comes back otherwise is up.
        let state = match self.state().nodes.get(&id).map(|n| n.state) {
            None | Some(NodeState::Joining | NodeState::Down) => node.state,
            Some(NodeState::Up | NodeState::Leaving) => NodeState::Up,
        };
        match m.membership_config.membership().get_node(&id).cloned() {
            None => {
                let mut joining = node.clone();
                joining.state = NodeState::Joining;
                joining.voter = false;
                self.write(Entry::new(Command::AddNode(joining)), deadline).await?;
                self.change_members(ChangeMembers::AddNodes(BTreeMap::from([(id, addr)])), deadline).await?;
            }
            Some(known) if known != addr => {
                // Same node, new address (restarted elsewhere).
                self.change_members(ChangeMembers::SetNodes(BTreeMap::from([(id, addr)])), deadline).await?;
            }
            Some(_) => {}
        }

        // Wait until the new node has everything up to now.
        let target = self.metrics().last_log_index;
        let wait = self.inner.raft.wait(Some(deadline.saturating_duration_since(Instant::now())));
        wait.metrics(
            |m| {
                let matched = m.replication.as_ref().map(|r| r.get(&id).cloned().flatten().map(|l| l.index));
                match matched {
                    None => true, // no longer leader: the next step says so
                    Some(matched) => matched >= target,
                }
            },
            format!("node {id} catching up"),
        )
        .await
        .map_err(|e| ControlError::Timeout(e.to_string()))?;

        let m = self.metrics();
        if m.current_leader != Some(self.id()) {
            return Err(ControlError::NotLeader { leader: m.current_leader });
        }
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let voter = if voters.contains(&id) {
            true
        } else if voters.len() < self.inner.config.voters {
            self.change_members(ChangeMembers::AddVoterIds(BTreeSet::from([id])), deadline).await?;
            true
        } else {
            false
        };
        let joined = NodeRecord { state, voter, version: 0, ..node };
        let (index, _) = self.write(Entry::new(Command::AddNode(joined)), deadline).await?;
        Ok((index, voter))
    }

    /// As leader: take node `id` out (see [`Self::remove_node`]).
    async fn leader_remove(&self, id: u64, deadline: Instant) -> Result<u64, ControlError> {
        let _serial = self.inner.membership_lock.lock().await;
        let m = self.metrics();
        if m.current_leader != Some(self.id()) {
            return Err(ControlError::NotLeader { leader: m.current_leader });
        }
        if id == self.id() {
            // Nothing more is written here: every entry would keep the others from
            // electing the next leader.
            return self.leader_step_down();
        }
        if self.state().nodes.contains_key(&id) {
            self.write(Entry::new(Command::SetNodeState { id, state: NodeState::Leaving }), deadline).await?;
        }
        let membership = m.membership_config.membership().clone();
        if membership.voter_ids().any(|v| v == id) {
            self.change_members(ChangeMembers::RemoveVoters(BTreeSet::from([id])), deadline).await?;
        } else if membership.get_node(&id).is_some() {
            self.change_members(ChangeMembers::RemoveNodes(BTreeSet::from([id])), deadline).await?;
        }
        // If this node removed itself it is no longer leader; `write` forwards then.
        let (index, _) = self.write(Entry::new(Command::RemoveNode { id }), deadline).await?;

        // Keep the configured number of voters if a caught-up learner can fill the gap.
        let m = self.metrics();
        if m.current_leader == Some(self.id()) {
            let membership = m.membership_config.membership();
            let voters = membership.voter_ids().count();
            let state = self.state();
            let candidate = membership
                .learner_ids()
                .find(|l| state.nodes.get(l).is_some_and(|n| n.state == NodeState::Up && *l != id));
            if let (true, Some(l)) = (voters < self.inner.config.voters, candidate) {
                self.change_members(ChangeMembers::AddVoterIds(BTreeSet::from([l])), deadline).await?;
                if let Some(record) = state.nodes.get(&l) {
                    let promoted = NodeRecord { voter: true, ..record.clone() };
                    self.write(Entry::new(Command::AddNode(promoted)), deadline).await?;
                }
            }
        }
        Ok(index)
    }

    /// The leader removing itself (`waddle cluster leave` on the leader) first hands the
    /// leadership on, and its removal is then the new leader's, as for any other node
    /// (the caller retries on `NotLeader`, which forwards there). openraft 0.9 has no
    /// leadership transfer, so it stops sending heartbeats and will not stand for
    /// election: the others elect a leader once its lease runs out, and this node, still
    /// a voter, hears of it. Leaving the membership while leading left it hearing from
    /// nobody, not even who leads next, and removing its record first made the others
    /// drop its connections before it could commit the rest.
    fn leader_step_down(&self) -> Result<u64, ControlError> {
        let runtime = self.inner.raft.runtime_config();
        runtime.heartbeat(false);
        runtime.elect(false);
        tracing::info!(id = self.id(), "control plane: the leader steps down to leave");
        Err(ControlError::NotLeader { leader: None })
    }

    /// Proposes a membership change, waiting out one already in progress.
    async fn change_members(
        &self,
        changes: ChangeMembers<u64, BasicNode>,
        deadline: Instant,
    ) -> Result<u64, ControlError> {
        loop {
            let change = self.inner.raft.change_membership(changes.clone(), false);
            let Ok(outcome) = tokio::time::timeout_at(deadline, change).await else {
                return Err(ControlError::Timeout(format!("membership change {changes:?} not committed in time")));
            };
            match outcome {
                Ok(resp) => return Ok(resp.log_id.index),
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(p),
                ))) if Instant::now() < deadline => {
                    tracing::debug!(?p, "control plane: membership change in progress; retrying");
                    tokio::time::sleep(self.retry_pause()).await;
                }
                Err(e) => return Err(write_error(e)),
            }
        }
    }

    fn metrics(&self) -> RaftMetrics<u64, BasicNode> {
        self.inner.raft.metrics().borrow().clone()
    }

    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.inner.config.request_timeout_ms)
    }

    fn retry_pause(&self) -> Duration {
        Duration::from_millis(self.inner.config.heartbeat_ms.max(10))
    }
}
