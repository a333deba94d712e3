//! The runtime: one leader task per partition this node leads, one apply task per partition,
//! and [`Replicator::handle`] for the requests of other nodes.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::api::{Applier, PartitionStatus, ReplConfig, ReplError, ReplStats, ReplTransport, Role};
use crate::engine::{self, AppendDecision, EpochIndex, FenceAnswer, FenceDecision, ReplicaView};
use crate::store::{LogStore, MetaUpdate, PartitionMeta, StoreError};
use crate::types::*;

/// Entries a leader keeps in memory for followers that are keeping up; slower ones read the
/// store.
const CACHE_ENTRIES: usize = 4096;

/// A replica counts as caught up only if it was in step at an Append within this many
/// learner heartbeats.
const IN_STEP_HEARTBEATS: u32 = 5;

/// The replicated logs of one node. Clones share it; [`Replicator::shutdown`] stops its tasks.
#[derive(Clone)]
pub struct Replicator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Replicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicator").field("me", &self.inner.me).finish()
    }
}

struct Inner {
    me: NodeId,
    store: LogStore,
    transport: Box<dyn ReplTransport>,
    applier: Arc<dyn Applier>,
    config: ReplConfig,
    parts: Mutex<HashMap<PartitionId, Arc<Part>>>,
    apply_tasks: Mutex<Vec<AbortHandle>>,
    /// Bumped whenever a partition's state is created (for `wait_applied`).
    parts_created: watch::Sender<u64>,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    proposals: AtomicU64,
    leader_batches: AtomicU64,
    appends_with_entries: AtomicU64,
    empty_appends: AtomicU64,
    recovery_fetched: AtomicU64,
}

struct Part {
    id: PartitionId,
    /// The log's shape and the durable pointers; held across a store write so that memory and
    /// disk change together.
    core: tokio::sync::Mutex<Core>,
    /// Who took `core` last, and when: while it is held, its holder (named when a wait for
    /// it is long; see [`Part::core`]).
    core_taker: Mutex<(&'static str, Option<Instant>)>,
    ctl: Mutex<Ctl>,
    commit_tx: watch::Sender<Seq>,
    /// The highest seq a leader on this node told its proposers was committed. It can run
    /// ahead of `commit_tx` (which never passes this node's own durable log): a majority
    /// of followers may hold an entry before the leader's own write of it is done.
    acked_tx: watch::Sender<Seq>,
    applied_tx: watch::Sender<Seq>,
    /// Lets a leader task learn at once that this node promised a newer epoch.
    promised_tx: watch::Sender<Epoch>,
    /// The partition's learners: nodes its leader sends the log to without counting them
    /// towards any majority ([`Replicator::set_learners`]).
    learners_tx: watch::Sender<Vec<NodeId>>,
}

struct Core {
    promised: Epoch,
    index: EpochIndex,
    commit: Seq,
    /// The last serving replica set this node knows of (durable).
    serving: Option<ReplicaSet>,
    /// When the last Append accepted here found this log holding everything its leader
    /// had committed (None: it did not). In memory: a restarted replica is behind until a
    /// leader says otherwise, and one that heard nothing lately (paused, cut off) may be.
    in_step_at: Option<Instant>,
}

#[derive(Default)]
struct Ctl {
    view: Option<View>,
    leading: Option<Leading>,
}

struct View {
    epoch: Epoch,
    replicas: Vec<NodeId>,
}

struct Leading {
    epoch: Epoch,
    state: LeadState,
    proposals: mpsc::UnboundedSender<Proposal>,
    task: Option<AbortHandle>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeadState {
    Recovering,
    Serving,
    Fenced(Epoch),
    /// The local store failed; this node stops leading until the next view.
    Failed,
}

struct Proposal {
    payload: Vec<u8>,
    tx: oneshot::Sender<Result<Seq, ReplError>>,
}

impl Part {
    /// Takes the core lock for `by` (a name for the log line when someone waits long).
    async fn core(&self, by: &'static str) -> tokio::sync::MutexGuard<'_, Core> {
        let guard = self.core.lock().await;
        *lock(&self.core_taker) = (by, Some(Instant::now()));
        guard
    }
}

/// Node `me`'s role in a partition whose view and leadership `ctl` holds.
fn role_in(ctl: &Ctl, me: NodeId, learner: bool) -> Role {
    let epoch = ctl.view.as_ref().map(|v| v.epoch);
    match ctl.leading.as_ref().filter(|l| Some(l.epoch) == epoch) {
        Some(l) => Role::Leader { serving: l.state == LeadState::Serving },
        None if ctl.view.as_ref().is_some_and(|v| v.replicas.contains(&me)) => Role::Follower,
        None if learner => Role::Learner,
        None => Role::None,
    }
}

/// A wait for a partition's lock this long is logged (with who holds it): every holder
/// does one store write at most.
const SLOW_LOCK: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these short locks leaves plain data behind, still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn reply(body: ResponseBody) -> ReplResponse {
    ReplResponse::new(body)
}

impl Replicator {
    /// Opens (creating) `<dir>/replog.db` and resumes every partition found there: committed
    /// entries past `applied_seq` are applied again (at least once).
    pub async fn open<T: ReplTransport, A: Applier>(
        dir: &Path,
        me: NodeId,
        transport: T,
        applier: A,
        config: ReplConfig,
    ) -> Result<Replicator, StoreError> {
        std::fs::create_dir_all(dir).map_err(StoreError::Io)?;
        let store = LogStore::open(&dir.join("replog.db")).await?;
        let metas = store.load().await?;
        let inner = Arc::new(Inner {
            me,
            store,
            transport: Box::new(transport),
            applier: Arc::new(applier),
            config,
            parts: Mutex::new(HashMap::new()),
            apply_tasks: Mutex::new(Vec::new()),
            parts_created: watch::Sender::new(0),
            stats: Stats::default(),
        });
        for (id, meta) in metas {
            inner.part_with(id, meta);
        }
        Ok(Replicator { inner })
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.me
    }

    /// Stops every task of this replicator (leaders, appliers). In-flight proposals fail with
    /// `Unavailable`; the store closes once the last handle is gone.
    pub fn shutdown(&self) {
        for t in lock(&self.inner.apply_tasks).drain(..) {
            t.abort();
        }
        for part in lock(&self.inner.parts).values() {
            if let Some(l) = lock(&part.ctl).leading.take() {
                if let Some(t) = l.task {
                    t.abort();
                }
            }
        }
    }

    pub fn stats(&self) -> ReplStats {
        let s = &self.inner.stats;
        ReplStats {
            proposals: s.proposals.load(Ordering::Relaxed),
            leader_batches: s.leader_batches.load(Ordering::Relaxed),
            appends_with_entries: s.appends_with_entries.load(Ordering::Relaxed),
            empty_appends: s.empty_appends.load(Ordering::Relaxed),
            recovery_fetched: s.recovery_fetched.load(Ordering::Relaxed),
        }
    }

    /// Adopts the ring's view of `partition` at `epoch` (views arrive in epoch order; an older
    /// one is ignored). `replicas[0]` leads; `previous` is the replica set of the epoch before,
    /// None for a partition that had none.
    pub async fn set_view(
        &self,
        partition: PartitionId,
        epoch: Epoch,
        replicas: Vec<NodeId>,
        previous: Option<Vec<NodeId>>,
    ) -> Result<(), StoreError> {
        let inner = &self.inner;
        let part = inner.part(partition);
        {
            let mut ctl = lock(&part.ctl);
            if ctl.view.as_ref().is_some_and(|v| v.epoch > epoch) {
                return Ok(());
            }
            if let Some(old) = ctl.leading.take() {
                if let Some(t) = old.task {
                    t.abort();
                }
            }
            ctl.view = Some(View { epoch, replicas: replicas.clone() });
        }
        if replicas.first() != Some(&inner.me) {
            return Ok(());
        }
        // Nothing is awaited from here on: a caller that gives up on this future (a
        // timeout) must not leave a view that names this node leader without its leader
        // task. The task makes the promise itself, first.
        let (tx, rx) = mpsc::unbounded_channel();
        let mut ctl = lock(&part.ctl);
        if ctl.view.as_ref().map(|v| v.epoch) != Some(epoch) {
            return Ok(());
        }
        let previous = previous.unwrap_or_else(|| replicas.clone());
        let leader = LeaderTask::new(inner.clone(), part.clone(), epoch, replicas, previous);
        let task = Some(tokio::spawn(leader.run(rx)).abort_handle());
        ctl.leading = Some(Leading { epoch, state: LeadState::Recovering, proposals: tx, task });
        Ok(())
    }

    /// Sets the partition's learners: nodes outside its replica set that its leader keeps
    /// sending the log to, so that they hold it (and apply it) before they are made replicas,
    /// without ever counting towards a majority (a slow or lost learner stalls nothing). The
    /// list stays across views until it is set again; the leader's own epoch does not change.
    /// No proposal made after this returns is sent to a learner it removed.
    pub fn set_learners(&self, partition: PartitionId, learners: Vec<NodeId>) {
        let known = lock(&self.inner.parts).get(&partition).cloned();
        let part = match known {
            Some(part) => part,
            // No state for a partition this node has nothing to do with.
            None if learners.is_empty() => return,
            None => self.inner.part(partition),
        };
        part.learners_tx.send_if_modified(|current| {
            if *current == learners {
                return false;
            }
            *current = learners;
            true
        });
    }

    /// Appends `payload` to the partition's log; resolves with its seq once a majority of the
    /// replica set holds it durably.
    pub async fn propose(&self, partition: PartitionId, payload: Vec<u8>) -> Result<Seq, ReplError> {
        self.submit(partition, payload)?.await
    }

    /// [`Replicator::propose`] in two steps: the entry is queued now (so entries submitted
    /// one after the other are in the log in that order), and the future returned resolves
    /// with its seq once a majority holds it. That future holds nothing until it is polled:
    /// it may be kept and awaited later.
    pub fn submit(&self, partition: PartitionId, payload: Vec<u8>) -> Result<Committing, ReplError> {
        if payload.is_empty() {
            return Err(ReplError::EmptyPayload);
        }
        let part = lock(&self.inner.parts).get(&partition).cloned().ok_or(ReplError::NotLeader { epoch: None })?;
        let rx = {
            let ctl = lock(&part.ctl);
            let epoch = ctl.view.as_ref().map(|v| v.epoch);
            match &ctl.leading {
                Some(l) if Some(l.epoch) == epoch => match l.state {
                    LeadState::Fenced(promised) => return Err(ReplError::Fenced { promised }),
                    LeadState::Recovering => return Err(ReplError::Recovering),
                    LeadState::Failed => return Err(ReplError::Unavailable),
                    LeadState::Serving => {
                        let (tx, rx) = oneshot::channel();
                        l.proposals.send(Proposal { payload, tx }).map_err(|_| ReplError::Unavailable)?;
                        rx
                    }
                },
                _ => return Err(ReplError::NotLeader { epoch }),
            }
        };
        self.inner.stats.proposals.fetch_add(1, Ordering::Relaxed);
        let timeout = self.inner.config.commit_timeout;
        Ok(Box::pin(async move {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) | Err(_) => Err(ReplError::Unavailable),
            }
        }))
    }

    /// The partitions this node holds state for (seen in a view, a peer's request or its store).
    pub fn partitions(&self) -> Vec<PartitionId> {
        let mut ids: Vec<PartitionId> = lock(&self.inner.parts).keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The partition's commit index as known here (never past this node's own durable log:
    /// what it applies and records).
    pub fn committed(&self, partition: PartitionId) -> Seq {
        lock(&self.inner.parts).get(&partition).map_or(0, |p| *p.commit_tx.borrow())
    }

    /// The highest seq a leader on this node acknowledged to a proposer as committed. It
    /// can be ahead of [`Replicator::committed`]: a majority of followers may hold an entry
    /// before the leader's own write of it is done. A read that waits until this much is
    /// applied here ([`Replicator::wait_applied`]) sees every write acknowledged here.
    pub fn acknowledged(&self, partition: PartitionId) -> Seq {
        lock(&self.inner.parts).get(&partition).map_or(0, |p| *p.acked_tx.borrow())
    }

    /// Waits until every entry up to `seq` has been applied on this node.
    /// A partition this node has not seen yet is waited for without creating any state.
    pub async fn wait_applied(&self, partition: PartitionId, seq: Seq) {
        let part = loop {
            // Subscribed before looking, so that a partition created in between is not missed.
            let mut created = self.inner.parts_created.subscribe();
            if let Some(p) = lock(&self.inner.parts).get(&partition).cloned() {
                break p;
            }
            if seq == 0 || created.changed().await.is_err() {
                return;
            }
        };
        let mut rx = part.applied_tx.subscribe();
        // The sender lives as long as `part`, which this future holds.
        let _ = rx.wait_for(|&a| a >= seq).await;
    }

    /// A partition this node has not seen is reported empty, and no state is created for it.
    pub async fn status(&self, partition: PartitionId) -> PartitionStatus {
        let Some(part) = lock(&self.inner.parts).get(&partition).cloned() else {
            return PartitionStatus {
                role: Role::None,
                epoch: None,
                promised: 0,
                fenced_by: None,
                last: None,
                commit: 0,
                applied: 0,
                caught_up: false,
            };
        };
        let (promised, last, commit, in_step_at) = {
            let taking = part.core("status");
            tokio::pin!(taking);
            let core = match tokio::time::timeout(SLOW_LOCK, &mut taking).await {
                Ok(core) => core,
                Err(_) => {
                    // Held that long, the lock is probably never let go: say by whom.
                    let (holder, since) = *lock(&part.core_taker);
                    let held_for = since.map(|t| t.elapsed());
                    tracing::error!(partition, holder, ?held_for, "replog: a partition's lock is held for long");
                    taking.await
                }
            };
            (core.promised, core.index.last_pos(), core.commit, core.in_step_at)
        };
        let learner = part.learners_tx.borrow().contains(&self.inner.me);
        let ctl = lock(&part.ctl);
        let role = role_in(&ctl, self.inner.me, learner);
        let epoch = ctl.view.as_ref().map(|v| v.epoch);
        let leading = ctl.leading.as_ref().filter(|l| Some(l.epoch) == epoch);
        let fenced_by = leading.and_then(|l| match l.state {
            LeadState::Fenced(e) => Some(e),
            _ => None,
        });
        let applied = *part.applied_tx.borrow();
        // Leaders send learners an Append every `learner_heartbeat`, so a learner hears
        // whether it is in step even on an idle partition.
        let fresh = self.inner.config.learner_heartbeat.saturating_mul(IN_STEP_HEARTBEATS);
        let caught_up = in_step_at.is_some_and(|t| t.elapsed() < fresh) && applied >= commit;
        PartitionStatus { role, epoch, promised, fenced_by, last, commit, applied, caught_up }
    }

    /// This node's role in `partition`, without waiting for anything: unlike
    /// [`Replicator::status`] it never takes the partition's lock, which a write holds
    /// while the disk is busy, so a loop waiting for a role cannot stall the partition.
    pub fn role(&self, partition: PartitionId) -> Role {
        let Some(part) = lock(&self.inner.parts).get(&partition).cloned() else { return Role::None };
        let learner = part.learners_tx.borrow().contains(&self.inner.me);
        let ctl = lock(&part.ctl);
        role_in(&ctl, self.inner.me, learner)
    }

    /// Answers another node's request (the node's transport calls this).
    pub async fn handle(&self, req: ReplRequest) -> ReplResponse {
        if req.version != REPL_VERSION {
            return reply(ResponseBody::VersionMismatch { ours: REPL_VERSION });
        }
        let result = match req.body {
            RequestBody::Append(a) => self.inner.on_append(a).await,
            RequestBody::Fence(f) => self.inner.on_fence(f).await,
            RequestBody::Fetch(f) => self.inner.on_fetch(f).await,
        };
        match result {
            Ok(body) => reply(body),
            Err(e) => {
                tracing::warn!(error = %e, "replog: request failed");
                reply(ResponseBody::Failed(e.to_string()))
            }
        }
    }
}

impl Inner {
    fn part(self: &Arc<Self>, id: PartitionId) -> Arc<Part> {
        if let Some(p) = lock(&self.parts).get(&id) {
            return p.clone();
        }
        self.part_with(id, PartitionMeta::default())
    }

    fn part_with(self: &Arc<Self>, id: PartitionId, meta: PartitionMeta) -> Arc<Part> {
        let mut parts = lock(&self.parts);
        if let Some(p) = parts.get(&id) {
            return p.clone();
        }
        let commit = meta.commit.min(meta.index.last_seq());
        let part = Arc::new(Part {
            id,
            core: tokio::sync::Mutex::new(Core {
                promised: meta.promised,
                index: meta.index,
                commit,
                serving: meta.serving,
                in_step_at: None,
            }),
            core_taker: Mutex::new(("nobody", None)),
            ctl: Mutex::new(Ctl::default()),
            commit_tx: watch::Sender::new(commit),
            acked_tx: watch::Sender::new(commit),
            applied_tx: watch::Sender::new(meta.applied.min(commit)),
            promised_tx: watch::Sender::new(meta.promised),
            learners_tx: watch::Sender::new(Vec::new()),
        });
        parts.insert(id, part.clone());
        let task = tokio::spawn(run_apply(self.store.clone(), self.applier.clone(), part.clone(), self.config.clone()));
        lock(&self.apply_tasks).push(task.abort_handle());
        drop(parts);
        self.parts_created.send_modify(|n| *n = n.wrapping_add(1));
        part
    }

    /// Records the serving set a leader announced, if it is newer than the one known here.
    async fn record_serving(
        &self,
        core: &mut Core,
        partition: PartitionId,
        set: Option<ReplicaSet>,
    ) -> Result<(), StoreError> {
        let Some(set) = set else { return Ok(()) };
        if set.replicas.is_empty() || core.serving.as_ref().is_some_and(|s| s.epoch >= set.epoch) {
            return Ok(());
        }
        self.store.set_serving(partition, set.clone()).await?;
        core.serving = Some(set);
        Ok(())
    }

    async fn on_append(self: &Arc<Self>, mut a: Append) -> Result<ResponseBody, StoreError> {
        let part = self.part(a.partition);
        let mut core = part.core("append").await;
        // A leader announces only its own epoch's set.
        let announced = a.serving.take().filter(|s| s.epoch == a.epoch);
        let view = ReplicaView { promised: core.promised, index: &core.index, commit: core.commit };
        match engine::on_append(view, a.epoch, a.prev, &a.entries, a.commit) {
            AppendDecision::Stale { promised } => Ok(ResponseBody::Stale { promised }),
            AppendDecision::Invalid(why) => Ok(ResponseBody::Invalid(why.into())),
            AppendDecision::Mismatch { last, promise } => {
                core.in_step_at = None;
                if let Some(epoch) = promise {
                    self.store.promise(a.partition, epoch).await?;
                    core.promised = epoch;
                    part.promised_tx.send_replace(epoch);
                }
                self.record_serving(&mut core, a.partition, announced).await?;
                Ok(ResponseBody::Mismatch { last })
            }
            AppendDecision::Accept { promise, merge, commit, matched } => {
                if merge.truncate_after.is_some_and(|t| t < core.commit) {
                    // Only possible if two leaders disagree about a committed entry, i.e. the
                    // ring broke its promise of one owner per epoch: refuse rather than lose data.
                    tracing::error!(partition = a.partition, "replog: append would truncate committed entries");
                    return Ok(ResponseBody::Invalid("would truncate committed entries".into()));
                }
                let fresh: Vec<Entry> = a.entries.into_iter().skip(merge.skip).collect();
                let shape: Vec<(Seq, Epoch)> = fresh.iter().map(|e| (e.seq, e.epoch)).collect();
                if merge.truncate_after.is_some() || !fresh.is_empty() || promise.is_some() {
                    self.store
                        .append(a.partition, merge.truncate_after, fresh, MetaUpdate { promised: promise, commit })
                        .await?;
                } else if let Some(c) = commit {
                    self.store.set_commit(a.partition, c).await?;
                }
                if let Some(t) = merge.truncate_after {
                    core.index.truncate_after(t);
                }
                for (seq, epoch) in shape {
                    core.index.push(seq, epoch);
                }
                if let Some(epoch) = promise {
                    core.promised = epoch;
                    part.promised_tx.send_replace(epoch);
                }
                if let Some(c) = commit {
                    core.commit = c;
                    part.commit_tx.send_replace(c);
                }
                core.in_step_at = (matched >= a.commit).then(Instant::now);
                self.record_serving(&mut core, a.partition, announced).await?;
                Ok(ResponseBody::Appended { last: matched })
            }
        }
    }

    async fn on_fence(self: &Arc<Self>, f: Fence) -> Result<ResponseBody, StoreError> {
        let part = self.part(f.partition);
        let mut core = part.core("fence").await;
        let view = ReplicaView { promised: core.promised, index: &core.index, commit: core.commit };
        match engine::on_fence(view, f.epoch) {
            FenceDecision::Stale { promised } => Ok(ResponseBody::Stale { promised }),
            FenceDecision::Fenced { raise, last, commit } => {
                if raise {
                    self.store.promise(f.partition, f.epoch).await?;
                    core.promised = f.epoch;
                    part.promised_tx.send_replace(f.epoch);
                }
                Ok(ResponseBody::Fenced { last, commit, serving: core.serving.clone() })
            }
        }
    }

    async fn on_fetch(self: &Arc<Self>, f: Fetch) -> Result<ResponseBody, StoreError> {
        // A partition never seen here has promised nothing and holds nothing.
        let Some(part) = lock(&self.parts).get(&f.partition).cloned() else {
            return Ok(ResponseBody::Entries(Vec::new()));
        };
        // Held during the read so that a newer leader cannot change the log in between.
        let core = part.core("fetch (serving)").await;
        if f.epoch < core.promised {
            return Ok(ResponseBody::Stale { promised: core.promised });
        }
        let max = (f.max_entries as usize).min(self.config.batch_entries);
        let entries = self.store.read(f.partition, f.from, core.index.last_seq(), max, self.config.batch_bytes).await?;
        Ok(ResponseBody::Entries(entries))
    }

    /// One call to another node, bounded in time, with the version checked.
    async fn call(&self, to: NodeId, body: RequestBody) -> Option<ResponseBody> {
        let fut = self.transport.call(to, ReplRequest::new(body));
        match tokio::time::timeout(self.config.request_timeout, fut).await {
            Ok(Ok(resp)) if resp.version == REPL_VERSION => Some(resp.body),
            Ok(Ok(resp)) => {
                tracing::warn!(to, version = resp.version, "replog: peer speaks another version");
                None
            }
            Ok(Err(e)) => {
                tracing::debug!(to, error = %e, "replog: call failed");
                None
            }
            Err(_) => None,
        }
    }
}

async fn run_apply(store: LogStore, applier: Arc<dyn Applier>, part: Arc<Part>, config: ReplConfig) {
    let mut commit_rx = part.commit_tx.subscribe();
    let pause = Duration::from_millis(100);
    loop {
        let applied = *part.applied_tx.borrow();
        let commit = *commit_rx.borrow_and_update();
        if applied >= commit {
            if commit_rx.changed().await.is_err() {
                return;
            }
            continue;
        }
        let entries = match store.read(part.id, applied + 1, commit, config.batch_entries, config.batch_bytes).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(partition = part.id, error = %e, "replog: reading committed entries failed");
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        let Some(last) = entries.last().map(|e| e.seq) else {
            tracing::error!(partition = part.id, applied, commit, "replog: committed entries missing from the log");
            tokio::time::sleep(pause).await;
            continue;
        };
        let batch: Vec<Entry> = entries.into_iter().filter(|e| !e.is_barrier()).collect();
        if !batch.is_empty() {
            while let Err(e) = applier.apply(part.id, batch.clone()).await {
                tracing::warn!(partition = part.id, error = %e, "replog: apply failed; retrying");
                tokio::time::sleep(pause).await;
            }
        }
        if let Err(e) = store.set_applied(part.id, last).await {
            tracing::warn!(partition = part.id, error = %e, "replog: recording the applied seq failed");
        }
        part.applied_tx.send_replace(last);
    }
}

/// Why a leader stops.
enum Stop {
    Fenced(Epoch),
    Failed(StoreError),
    /// The replicator is gone.
    Closed,
}

struct Peer {
    id: NodeId,
    /// The seq after which the next Append's entries start (its `prev`).
    next_prev: Seq,
    matched: Seq,
    in_flight: bool,
    sent_commit: Seq,
    contacted: bool,
    not_before: Option<Instant>,
    commit_due: Option<Instant>,
    wake_at: Option<Instant>,
    retry: Duration,
    /// The peer acknowledged an Append that announced this epoch's serving set.
    knows_serving: bool,
    /// A learner: sent the log, never counted towards a majority.
    learner: bool,
    /// False for a learner no longer in the list; its slot stays (events name peers by
    /// position) but nothing is sent to it.
    active: bool,
    last_sent: Instant,
}

impl Peer {
    fn new(id: NodeId, next_prev: Seq, retry: Duration, learner: bool) -> Peer {
        Peer {
            id,
            next_prev,
            matched: 0,
            in_flight: false,
            sent_commit: 0,
            contacted: false,
            not_before: None,
            commit_due: None,
            wake_at: None,
            retry,
            knows_serving: false,
            learner,
            active: true,
            last_sent: Instant::now(),
        }
    }
}

enum Event {
    /// The leader's own write ended: durable up to this seq, or stopped.
    Local(Result<Seq, Stop>),
    Reply {
        peer: usize,
        prev: Seq,
        sent_last: Seq,
        commit: Seq,
        announced: bool,
        answer: Option<ResponseBody>,
    },
    /// This node recorded its own epoch's replica set as the last serving one.
    ServingRecorded(Result<(), StoreError>),
    Wake(usize),
    Done,
}

struct LeaderTask {
    inner: Arc<Inner>,
    part: Arc<Part>,
    epoch: Epoch,
    replicas: Vec<NodeId>,
    previous: Vec<NodeId>,
}

impl LeaderTask {
    fn new(inner: Arc<Inner>, part: Arc<Part>, epoch: Epoch, replicas: Vec<NodeId>, previous: Vec<NodeId>) -> Self {
        LeaderTask { inner, part, epoch, replicas, previous }
    }

    async fn run(self, mut rx: mpsc::UnboundedReceiver<Proposal>) {
        let stop = match self.promise().await {
            Ok(()) => match self.recover().await {
                Ok(hints) => self.serve(hints, &mut rx).await,
                Err(stop) => stop,
            },
            Err(stop) => stop,
        };
        let (state, error) = match stop {
            Stop::Fenced(promised) => {
                tracing::info!(partition = self.part.id, epoch = self.epoch, promised, "replog: fenced");
                (LeadState::Fenced(promised), ReplError::Fenced { promised })
            }
            Stop::Failed(e) => {
                tracing::error!(partition = self.part.id, error = %e, "replog: leader stopped on a store error");
                (LeadState::Failed, ReplError::Unavailable)
            }
            Stop::Closed => return,
        };
        self.set_state(state);
        rx.close();
        while let Ok(p) = rx.try_recv() {
            let _ = p.tx.send(Err(clone_err(&error)));
        }
    }

    /// Promises this epoch here (durably) before anything else, or finds that this node
    /// promised a newer one already.
    async fn promise(&self) -> Result<(), Stop> {
        let (inner, part, epoch) = (self.inner.clone(), self.part.clone(), self.epoch);
        // Spawned: the promise on disk and in memory change together even if this task is
        // aborted (a newer view) while the write is under way.
        let write = tokio::spawn(async move {
            let mut core = part.core("promise").await;
            if core.promised > epoch {
                return Err(Stop::Fenced(core.promised));
            }
            if core.promised < epoch {
                inner.store.promise(part.id, epoch).await.map_err(Stop::Failed)?;
                core.promised = epoch;
                part.promised_tx.send_replace(epoch);
            }
            Ok(())
        });
        write.await.unwrap_or(Err(Stop::Closed))
    }

    fn set_state(&self, state: LeadState) {
        let mut ctl = lock(&self.part.ctl);
        if let Some(l) = ctl.leading.as_mut().filter(|l| l.epoch == self.epoch) {
            l.state = state;
        }
    }

    fn check_promise(&self) -> Result<(), Stop> {
        let promised = *self.part.promised_tx.borrow();
        if promised > self.epoch {
            return Err(Stop::Fenced(promised));
        }
        Ok(())
    }

    async fn backoff(&self, attempt: &mut u32) {
        let c = &self.inner.config;
        let d = c.retry_min.saturating_mul(1u32 << (*attempt).min(16)).min(c.retry_max);
        *attempt = attempt.saturating_add(1);
        tokio::time::sleep(d).await;
    }

    /// Fences the replicas, brings this node's log up to the most up-to-date one among a
    /// majority of the previous replica set, and returns what it learned of every tail.
    async fn recover(&self) -> Result<HashMap<NodeId, Option<LogPos>>, Stop> {
        let me = self.inner.me;
        let pid = self.part.id;
        let (mine, mut newest) = {
            let core = self.part.core("recovery").await;
            (core.index.last_pos(), core.serving.clone())
        };
        let mut answers = vec![FenceAnswer { node: me, last: mine }];
        let mut targets: Vec<NodeId> = self
            .previous
            .iter()
            .chain(self.replicas.iter())
            .chain(newest.iter().flat_map(|s| s.replicas.iter()))
            .copied()
            .collect();
        targets.sort_unstable();
        targets.dedup();
        targets.retain(|&n| n != me);
        let mut calls: FuturesUnordered<BoxFuture<'static, (NodeId, Option<ResponseBody>)>> = FuturesUnordered::new();
        let fence = |to: NodeId, delay: Duration| {
            let inner = self.inner.clone();
            let epoch = self.epoch;
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                (to, inner.call(to, RequestBody::Fence(Fence { partition: pid, epoch })).await)
            }) as BoxFuture<'static, _>
        };
        for &to in &targets {
            calls.push(fence(to, Duration::ZERO));
        }
        let mut attempts: HashMap<NodeId, u32> = HashMap::new();
        let mut prev_sorted = self.previous.clone();
        prev_sorted.sort_unstable();
        let source = loop {
            self.check_promise()?;
            // A majority of `previous`, and of the last serving set known to this node or any
            // answer when it differs (see the crate docs).
            let serving_set = newest.as_ref().map(|s| {
                let mut v = s.replicas.clone();
                v.sort_unstable();
                v.dedup();
                v
            });
            let mut required: Vec<&[NodeId]> = vec![&self.previous];
            if let Some(set) = serving_set.as_deref().filter(|s| !s.is_empty() && *s != prev_sorted.as_slice()) {
                required.push(set);
            }
            if let Some(src) = engine::choose_source_from(&required, &answers) {
                break src;
            }
            let Some((from, answer)) = calls.next().await else {
                return Err(Stop::Closed);
            };
            match answer {
                Some(ResponseBody::Fenced { last, serving, .. }) => {
                    if answers.iter().all(|a| a.node != from) {
                        answers.push(FenceAnswer { node: from, last });
                    }
                    let newer = serving.filter(|s| newest.as_ref().is_none_or(|n| s.epoch > n.epoch));
                    if let Some(set) = newer {
                        tracing::debug!(
                            partition = pid,
                            epoch = self.epoch,
                            ?set,
                            "replog: learned a newer serving set"
                        );
                        for &n in &set.replicas {
                            if n != me && !targets.contains(&n) {
                                targets.push(n);
                                calls.push(fence(n, Duration::ZERO));
                            }
                        }
                        newest = Some(set);
                    }
                }
                Some(ResponseBody::Stale { promised }) if promised > self.epoch => return Err(Stop::Fenced(promised)),
                _ => {
                    let n = attempts.entry(from).or_insert(0);
                    let c = &self.inner.config;
                    let delay = c.retry_min.saturating_mul(1u32 << (*n).min(16)).min(c.retry_max);
                    *n += 1;
                    calls.push(fence(from, delay));
                }
            }
        };
        // Fences still under way are dropped before the fetch: none of them is awaited any
        // more, and one must not hold a place in a lock queue nobody polls.
        drop(calls);
        tracing::debug!(partition = pid, epoch = self.epoch, source = source.node, "replog: recovery source chosen");
        let mine = answers.first().and_then(|a| a.last);
        let key = |p: Option<LogPos>| p.map(|p| (p.epoch, p.seq));
        if source.node != me && key(source.last) > key(mine) {
            self.fetch_from(source).await?;
        }
        Ok(answers.into_iter().map(|a| (a.node, a.last)).collect())
    }

    async fn fetch_from(&self, source: FenceAnswer) -> Result<(), Stop> {
        let pid = self.part.id;
        let Some(target) = source.last else { return Ok(()) };
        let mut from = {
            let core = self.part.core("fetch (probe)").await;
            engine::first_probe(&core.index, source.last).max(1)
        };
        let mut attempt = 0u32;
        loop {
            self.check_promise()?;
            let req = Fetch {
                partition: pid,
                epoch: self.epoch,
                from,
                max_entries: u32::try_from(self.inner.config.batch_entries).unwrap_or(u32::MAX),
            };
            let entries = match self.inner.call(source.node, RequestBody::Fetch(req)).await {
                Some(ResponseBody::Entries(e)) if !e.is_empty() && e.first().map(|x| x.seq) == Some(from) => e,
                Some(ResponseBody::Stale { promised }) if promised > self.epoch => return Err(Stop::Fenced(promised)),
                other => {
                    tracing::debug!(partition = pid, ?other, "replog: fetch failed; retrying");
                    self.backoff(&mut attempt).await;
                    continue;
                }
            };
            attempt = 0;
            let core = self.part.core("fetch (merge)").await;
            if core.promised > self.epoch {
                return Err(Stop::Fenced(core.promised));
            }
            let agree = match engine::fetch_agreement(&core.index, from, entries.first()) {
                Ok(seq) => seq,
                Err(back) => {
                    from = back;
                    continue;
                }
            };
            let rest: Vec<Entry> = entries.into_iter().filter(|e| e.seq > agree && e.seq <= target.seq).collect();
            let fetched_last = rest.last().map_or(agree, |e| e.seq);
            let merge = engine::plan_merge(&core.index, &rest);
            let fresh: Vec<Entry> = rest.into_iter().skip(merge.skip).collect();
            self.inner.stats.recovery_fetched.fetch_add(fresh.len() as u64, Ordering::Relaxed);
            drop(core);
            let done = fetched_last >= target.seq;
            // Spawned: the log on disk and its index in memory change together even if
            // this task is aborted (a newer view) while the write is under way.
            let (inner, part, epoch) = (self.inner.clone(), self.part.clone(), self.epoch);
            let write = tokio::spawn(async move {
                let mut core = part.core("fetch (write)").await;
                if core.promised > epoch {
                    return Err(Stop::Fenced(core.promised));
                }
                if merge.truncate_after.is_some() || !fresh.is_empty() {
                    let shape: Vec<(Seq, Epoch)> = fresh.iter().map(|e| (e.seq, e.epoch)).collect();
                    inner
                        .store
                        .append(part.id, merge.truncate_after, fresh, MetaUpdate::default())
                        .await
                        .map_err(Stop::Failed)?;
                    if let Some(t) = merge.truncate_after {
                        core.index.truncate_after(t);
                    }
                    for (seq, epoch) in shape {
                        core.index.push(seq, epoch);
                    }
                }
                if done && core.index.last_seq() > target.seq {
                    // Cannot happen with well-formed logs (see engine::choose_source), but our
                    // log must end where the source's does.
                    inner.store.truncate_after(part.id, target.seq).await.map_err(Stop::Failed)?;
                    core.index.truncate_after(target.seq);
                }
                Ok(())
            });
            write.await.unwrap_or(Err(Stop::Closed))?;
            if done {
                return Ok(());
            }
            from = fetched_last + 1;
        }
    }

    async fn serve(&self, hints: HashMap<NodeId, Option<LogPos>>, rx: &mut mpsc::UnboundedReceiver<Proposal>) -> Stop {
        let (index, commit) = {
            let core = self.part.core("serve (start)").await;
            (core.index.clone(), core.commit)
        };
        let peers = self
            .replicas
            .iter()
            .filter(|&&n| n != self.inner.me)
            .map(|&id| {
                let next_prev = match hints.get(&id) {
                    Some(&last) => engine::first_probe(&index, last),
                    None => index.last_seq(),
                };
                Peer::new(id, next_prev, self.inner.config.retry_min, false)
            })
            .collect();
        let mut learners_rx = self.part.learners_tx.subscribe();
        let learners = learners_rx.borrow_and_update().clone();
        let mut s = Serving {
            t: self,
            index,
            commit,
            self_durable: 0,
            local_commit: commit,
            barrier: Seq::MAX,
            peers,
            cache: VecDeque::new(),
            waiters: VecDeque::new(),
            unwritten: Vec::new(),
            local_busy: false,
            announcing: false,
            self_knows_serving: false,
            serving: false,
            events: FuturesUnordered::new(),
            promised_rx: self.part.promised_tx.subscribe(),
            learners_rx,
        };
        s.set_learners(&learners);
        s.self_durable = s.index.last_seq();
        s.barrier = s.index.last_seq() + 1;
        s.assign(vec![Vec::new()], Vec::new());
        match s.run(rx).await {
            Ok(()) => Stop::Closed,
            Err(stop) => {
                let err = match &stop {
                    Stop::Fenced(p) => ReplError::Fenced { promised: *p },
                    _ => ReplError::Unavailable,
                };
                self.set_state(match &stop {
                    Stop::Fenced(p) => LeadState::Fenced(*p),
                    _ => LeadState::Failed,
                });
                for (_, tx) in s.waiters.drain(..) {
                    let _ = tx.send(Err(clone_err(&err)));
                }
                // Futures of `s.events` may be queued for the core lock: dropped first, or
                // the lock would be handed to a future nobody polls any more, and this
                // task (and every later taker: views, Appends, status) would wait forever.
                drop(s);
                if let Stop::Fenced(p) = stop {
                    // Remember the newer epoch so that this node refuses the older one too
                    // (spawned: disk and memory change together even if this task is aborted).
                    let (inner, part) = (self.inner.clone(), self.part.clone());
                    let _ = tokio::spawn(async move {
                        let mut core = part.core("fenced (promise)").await;
                        if core.promised < p && inner.store.promise(part.id, p).await.is_ok() {
                            core.promised = p;
                            part.promised_tx.send_replace(p);
                        }
                    })
                    .await;
                }
                stop
            }
        }
    }
}

fn clone_err(e: &ReplError) -> ReplError {
    match e {
        ReplError::Fenced { promised } => ReplError::Fenced { promised: *promised },
        _ => ReplError::Unavailable,
    }
}

type Waiter = oneshot::Sender<Result<Seq, ReplError>>;

/// A submitted entry on its way to a majority ([`Replicator::submit`]).
pub type Committing = BoxFuture<'static, Result<Seq, ReplError>>;

struct Serving<'a> {
    t: &'a LeaderTask,
    /// A copy of the local log's shape; only this task appends at this epoch, and anyone
    /// else changing the log first raises the promise, which stops this task.
    index: EpochIndex,
    commit: Seq,
    /// How far this node's own log is durable (its writes run alongside the Appends).
    self_durable: Seq,
    /// The commit index as published on this node: never past `self_durable`, since the
    /// applier reads committed entries from the local store.
    local_commit: Seq,
    /// The seq of this epoch's barrier; the partition serves once it commits.
    barrier: Seq,
    peers: Vec<Peer>,
    cache: VecDeque<Entry>,
    waiters: VecDeque<(Seq, Waiter)>,
    /// Entries given a seq (and sent to followers) that the local write has not taken yet.
    unwritten: Vec<Entry>,
    /// A local write is in flight; the next one takes everything assigned meanwhile.
    local_busy: bool,
    /// The barrier is committed: Appends now announce this epoch's set as the serving one,
    /// and the partition serves once a majority recorded it.
    announcing: bool,
    self_knows_serving: bool,
    serving: bool,
    events: FuturesUnordered<BoxFuture<'static, Event>>,
    promised_rx: watch::Receiver<Epoch>,
    learners_rx: watch::Receiver<Vec<NodeId>>,
}

impl Serving<'_> {
    async fn run(&mut self, rx: &mut mpsc::UnboundedReceiver<Proposal>) -> Result<(), Stop> {
        loop {
            if !self.local_busy && !self.unwritten.is_empty() {
                self.start_local();
            }
            // Before anything is sent, so that a proposal made after `set_learners` returned
            // never goes to a learner it removed (`select!` below picks ready branches at random).
            if self.learners_rx.has_changed().unwrap_or(false) {
                let learners = self.learners_rx.borrow_and_update().clone();
                self.set_learners(&learners);
            }
            for i in 0..self.peers.len() {
                self.maybe_send(i);
            }
            tokio::select! {
                p = rx.recv() => {
                    let Some(p) = p else { return Ok(()) };
                    let mut batch = vec![p];
                    while let Ok(p) = rx.try_recv() {
                        batch.push(p);
                    }
                    let (payloads, waiters) = batch.into_iter().map(|p| (p.payload, p.tx)).unzip();
                    self.assign(payloads, waiters);
                }
                Some(ev) = self.events.next() => self.on_event(ev).await?,
                changed = self.promised_rx.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let promised = *self.promised_rx.borrow_and_update();
                    if promised > self.t.epoch {
                        return Err(Stop::Fenced(promised));
                    }
                }
                changed = self.learners_rx.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let learners = self.learners_rx.borrow_and_update().clone();
                    self.set_learners(&learners);
                }
            }
        }
    }

    /// Starts sending the log to new learners (from this leader's tail: the first Append
    /// finds where their logs agree) and stops sending to those no longer listed. Replicas
    /// of this epoch are never learners.
    fn set_learners(&mut self, learners: &[NodeId]) {
        for p in self.peers.iter_mut().filter(|p| p.learner) {
            p.active = learners.contains(&p.id);
        }
        let me = self.t.inner.me;
        for &id in learners {
            if id == me || self.t.replicas.contains(&id) || self.peers.iter().any(|p| p.id == id) {
                continue;
            }
            self.peers.push(Peer::new(id, self.index.last_seq(), self.t.inner.config.retry_min, true));
        }
    }

    /// Gives proposals (or the barrier, one empty payload) their seqs. They go to the
    /// followers at once and to the local store with the next local write: the two run in
    /// parallel, and the leader counts itself towards a majority only for what its own write
    /// made durable (`self_durable`).
    fn assign(&mut self, payloads: Vec<Vec<u8>>, waiters: Vec<Waiter>) {
        let epoch = self.t.epoch;
        let first = self.index.last_seq() + 1;
        let entries: Vec<Entry> = payloads
            .into_iter()
            .enumerate()
            .map(|(i, payload)| Entry { seq: first + i as u64, epoch, payload })
            .collect();
        for e in &entries {
            self.index.push(e.seq, e.epoch);
        }
        for (e, tx) in entries.iter().filter(|e| !e.is_barrier()).zip(waiters) {
            self.waiters.push_back((e.seq, tx));
        }
        self.cache.extend(entries.iter().cloned());
        self.unwritten.extend(entries);
        self.trim_cache();
    }

    /// Appends everything assigned since the last local write durably, as one transaction.
    fn start_local(&mut self) {
        let entries = std::mem::take(&mut self.unwritten);
        let Some(last) = entries.last().map(|e| e.seq) else { return };
        self.local_busy = true;
        let inner = self.t.inner.clone();
        let part = self.t.part.clone();
        let epoch = self.t.epoch;
        let single = self.t.replicas.len() <= 1;
        inner.stats.leader_batches.fetch_add(1, Ordering::Relaxed);
        // Spawned, not just queued in `events`: it holds the core lock across the write, and
        // nothing this task awaits may wait behind it (see `publish_local_commit`).
        let write = tokio::spawn(async move {
            let mut core = part.core("local write").await;
            if core.promised > epoch {
                return Event::Local(Err(Stop::Fenced(core.promised)));
            }
            if entries.first().map(|e| e.seq) != Some(core.index.last_seq() + 1) {
                // Only this task appends at this epoch, and anyone else changing the log
                // first raises the promise (checked above).
                let why = format!("leader log moved under it (local last {})", core.index.last_seq());
                return Event::Local(Err(Stop::Failed(StoreError::Corrupt(why))));
            }
            let shape: Vec<(Seq, Epoch)> = entries.iter().map(|e| (e.seq, e.epoch)).collect();
            // With no one else to wait for, the entries commit with their own write.
            let commit = single.then_some(last);
            if let Err(e) = inner.store.append(part.id, None, entries, MetaUpdate { promised: None, commit }).await {
                return Event::Local(Err(Stop::Failed(e)));
            }
            for (seq, epoch) in shape {
                core.index.push(seq, epoch);
            }
            if let Some(c) = commit {
                core.commit = core.commit.max(c);
            }
            Event::Local(Ok(last))
        });
        self.events.push(Box::pin(async move { write.await.unwrap_or(Event::Local(Err(Stop::Closed))) }));
    }

    async fn on_event(&mut self, ev: Event) -> Result<(), Stop> {
        match ev {
            Event::Local(Err(stop)) => Err(stop),
            Event::Local(Ok(last)) => {
                self.local_busy = false;
                self.self_durable = self.self_durable.max(last);
                self.update_commit();
                Ok(())
            }
            Event::Reply { peer, prev, sent_last, commit, announced, answer } => {
                if announced && matches!(answer, Some(ResponseBody::Appended { .. })) {
                    if let Some(p) = self.peers.get_mut(peer) {
                        p.knows_serving = true;
                    }
                }
                self.on_reply(peer, prev, sent_last, commit, answer).await?;
                self.check_announced();
                Ok(())
            }
            Event::ServingRecorded(Err(e)) => Err(Stop::Failed(e)),
            Event::ServingRecorded(Ok(())) => {
                self.self_knows_serving = true;
                self.check_announced();
                Ok(())
            }
            Event::Wake(i) => {
                if let Some(p) = self.peers.get_mut(i) {
                    p.wake_at = None;
                }
                Ok(())
            }
            Event::Done => Ok(()),
        }
    }

    fn trim_cache(&mut self) {
        let slowest =
            self.peers.iter().filter(|p| p.active).map(|p| p.next_prev).min().unwrap_or(self.index.last_seq());
        while self.cache.front().is_some_and(|e| e.seq <= slowest) || self.cache.len() > CACHE_ENTRIES {
            self.cache.pop_front();
        }
    }

    async fn on_reply(
        &mut self,
        i: usize,
        prev: Seq,
        sent_last: Seq,
        commit: Seq,
        answer: Option<ResponseBody>,
    ) -> Result<(), Stop> {
        let epoch = self.t.epoch;
        let config = &self.t.inner.config;
        let Some(p) = self.peers.get_mut(i) else { return Ok(()) };
        p.in_flight = false;
        match answer {
            Some(ResponseBody::Appended { last }) => {
                p.contacted = true;
                p.retry = config.retry_min;
                let last = last.min(sent_last);
                p.matched = p.matched.max(last);
                p.next_prev = last;
                p.sent_commit = p.sent_commit.max(commit);
                self.trim_cache();
                self.update_commit();
            }
            Some(ResponseBody::Mismatch { last }) if prev > 0 => {
                p.contacted = true;
                p.next_prev = engine::next_probe(&self.index, prev, last);
            }
            Some(ResponseBody::Stale { promised }) if promised > epoch => return Err(Stop::Fenced(promised)),
            other => {
                if let Some(body) = other {
                    tracing::debug!(partition = self.t.part.id, peer = p.id, ?body, "replog: unexpected answer");
                }
                p.not_before = Some(Instant::now() + p.retry);
                p.retry = p.retry.saturating_mul(2).min(config.retry_max);
            }
        }
        Ok(())
    }

    fn update_commit(&mut self) {
        let me = self.t.inner.me;
        let peers = &self.peers;
        let durable = self.self_durable;
        let matched = |n: NodeId| {
            if n == me {
                durable
            } else {
                peers.iter().find(|p| p.id == n).map_or(0, |p| p.matched)
            }
        };
        let c = engine::leader_commit(self.t.epoch, &self.t.replicas, matched, &self.index, self.commit);
        if c > self.commit {
            self.commit = c;
            // Before any proposer hears of it: a read after the acknowledgement waits for it.
            self.t.part.acked_tx.send_if_modified(|v| {
                let moved = c > *v;
                *v = (*v).max(c);
                moved
            });
            self.publish_local_commit();
            while self.waiters.front().is_some_and(|(s, _)| *s <= c) {
                if let Some((s, tx)) = self.waiters.pop_front() {
                    let _ = tx.send(Ok(s));
                }
            }
            if c >= self.barrier && self.barrier != Seq::MAX {
                self.barrier = Seq::MAX;
                self.start_announcing();
            }
        } else {
            self.publish_local_commit();
        }
    }

    /// The barrier committed: record this epoch's set as the last serving one here and on a
    /// majority before serving (see the crate docs, "the recovery source set").
    fn start_announcing(&mut self) {
        self.announcing = true;
        let set = ReplicaSet { epoch: self.t.epoch, replicas: self.t.replicas.clone() };
        let store = self.t.inner.store.clone();
        let part = self.t.part.clone();
        // Spawned: disk and memory change together even if this task is aborted.
        let write = tokio::spawn(async move {
            let mut core = part.core("serving set").await;
            if core.serving.as_ref().is_some_and(|s| s.epoch >= set.epoch) {
                return Ok(());
            }
            let r = store.set_serving(part.id, set.clone()).await;
            if r.is_ok() {
                core.serving = Some(set);
            }
            r
        });
        self.events.push(Box::pin(async move {
            Event::ServingRecorded(write.await.unwrap_or_else(|e| Err(StoreError::Corrupt(e.to_string()))))
        }));
    }

    fn check_announced(&mut self) {
        if self.serving || !self.announcing {
            return;
        }
        let me = self.t.inner.me;
        let known = self
            .t
            .replicas
            .iter()
            .filter(|&&n| {
                if n == me {
                    self.self_knows_serving
                } else {
                    self.peers.iter().any(|p| p.id == n && p.knows_serving)
                }
            })
            .count();
        if known >= engine::majority(self.t.replicas.len()) {
            self.serving = true;
            self.t.set_state(LeadState::Serving);
            tracing::info!(partition = self.t.part.id, epoch = self.t.epoch, commit = self.commit, "replog: serving");
        }
    }

    /// Moves this node's own commit index (what it applies, reports and records) up to the
    /// commit index, but never past its own durable log. The core lock may be held by a local
    /// write in progress, so it is taken in a future of `events`, never awaited here.
    fn publish_local_commit(&mut self) {
        let local = self.commit.min(self.self_durable);
        if local <= self.local_commit {
            return;
        }
        self.local_commit = local;
        self.t.part.commit_tx.send_if_modified(|v| {
            let moved = local > *v;
            *v = (*v).max(local);
            moved
        });
        let single = self.t.replicas.len() <= 1;
        let store = self.t.inner.store.clone();
        let part = self.t.part.clone();
        self.events.push(Box::pin(async move {
            {
                let mut core = part.core("local commit").await;
                core.commit = core.commit.max(local.min(core.index.last_seq()));
            }
            // A single replica recorded it with the entries.
            if !single {
                if let Err(e) = store.set_commit(part.id, local).await {
                    tracing::warn!(partition = part.id, error = %e, "replog: recording the commit failed");
                }
            }
            Event::Done
        }));
    }

    fn schedule_wake(&mut self, i: usize, at: Instant) {
        let Some(p) = self.peers.get_mut(i) else { return };
        if p.wake_at.is_some_and(|w| w <= at) {
            return;
        }
        p.wake_at = Some(at);
        self.events.push(Box::pin(async move {
            tokio::time::sleep_until(at).await;
            Event::Wake(i)
        }));
    }

    fn maybe_send(&mut self, i: usize) {
        let now = Instant::now();
        let last = self.index.last_seq();
        let commit = self.commit;
        let idle = self.t.inner.config.idle_commit_interval;
        let heartbeat = self.t.inner.config.learner_heartbeat;
        let Some(p) = self.peers.get_mut(i) else { return };
        if p.in_flight || !p.active {
            return;
        }
        if let Some(t) = p.not_before {
            if now < t {
                self.schedule_wake(i, t);
                return;
            }
            p.not_before = None;
        }
        let has_entries = p.next_prev < last;
        let announce = self.announcing;
        // Nothing to send (but an announcement this peer has not acknowledged yet).
        if p.contacted && !has_entries && (!announce || p.knows_serving) {
            if p.sent_commit >= commit {
                p.commit_due = None;
                // A learner hears from its leader even when nothing happens: that is how it
                // knows it is (still) caught up.
                let beat = p.last_sent + heartbeat;
                if !p.learner {
                    return;
                }
                if now < beat {
                    self.schedule_wake(i, beat);
                    return;
                }
            } else {
                match p.commit_due {
                    None => {
                        let at = now + idle;
                        p.commit_due = Some(at);
                        self.schedule_wake(i, at);
                        return;
                    }
                    Some(at) if now < at => {
                        self.schedule_wake(i, at);
                        return;
                    }
                    Some(_) => {}
                }
            }
        }
        p.commit_due = None;
        p.in_flight = true;
        p.last_sent = now;
        let prev_seq = p.next_prev.min(last);
        let peer_id = p.id;
        let prev = self.index.pos_at(prev_seq);
        let config = &self.t.inner.config;
        let from = prev_seq + 1;
        let cached: Option<Vec<Entry>> = match self.cache.front() {
            _ if !has_entries => Some(Vec::new()),
            Some(f) if f.seq <= from => {
                let skip = usize::try_from(from - f.seq).unwrap_or(usize::MAX);
                let mut bytes = 0usize;
                let batch: Vec<Entry> = self
                    .cache
                    .iter()
                    .skip(skip)
                    .take(config.batch_entries)
                    .take_while(|e| {
                        bytes = bytes.saturating_add(e.payload.len());
                        bytes <= config.batch_bytes || bytes == e.payload.len()
                    })
                    .cloned()
                    .collect();
                Some(batch)
            }
            _ => None,
        };
        let stats = &self.t.inner.stats;
        if has_entries {
            stats.appends_with_entries.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.empty_appends.fetch_add(1, Ordering::Relaxed);
        }
        let inner = self.t.inner.clone();
        let (pid, epoch, me) = (self.t.part.id, self.t.epoch, inner.me);
        let serving = announce.then(|| ReplicaSet { epoch, replicas: self.t.replicas.clone() });
        self.events.push(Box::pin(async move {
            let entries = match cached {
                Some(e) => e,
                None => {
                    let c = &inner.config;
                    match inner.store.read(pid, from, last, c.batch_entries, c.batch_bytes).await {
                        Ok(e) => e,
                        Err(e) => {
                            tracing::warn!(partition = pid, error = %e, "replog: reading entries to send failed");
                            return Event::Reply {
                                peer: i,
                                prev: prev_seq,
                                sent_last: prev_seq,
                                commit: 0,
                                announced: false,
                                answer: None,
                            };
                        }
                    }
                }
            };
            let sent_last = entries.last().map_or(prev_seq, |e| e.seq);
            let announced = serving.is_some();
            let req = Append { partition: pid, epoch, leader: me, prev, entries, commit, serving };
            let answer = inner.call(peer_id, RequestBody::Append(req)).await;
            Event::Reply { peer: i, prev: prev_seq, sent_last, commit, announced, answer }
        }));
    }
}
