//! Several replicators in one process over an in-memory transport that can cut nodes off.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::{join_all, BoxFuture};
use waddle_replog::*;

#[derive(Default)]
struct Net {
    nodes: Mutex<HashMap<NodeId, Replicator>>,
    cut: Mutex<HashSet<NodeId>>,
    appends_with_entries: AtomicU64,
    fetches: AtomicU64,
}

impl Net {
    fn is_cut(&self, a: NodeId, b: NodeId) -> bool {
        let cut = self.cut.lock().unwrap();
        cut.contains(&a) || cut.contains(&b)
    }
}

struct Mem {
    me: NodeId,
    net: Arc<Net>,
}

impl ReplTransport for Mem {
    fn call(&self, to: NodeId, req: ReplRequest) -> BoxFuture<'static, Result<ReplResponse, ReplTransportError>> {
        let (net, me) = (self.net.clone(), self.me);
        Box::pin(async move {
            if net.is_cut(me, to) {
                return Err(ReplTransportError::Unreachable(to));
            }
            if matches!(&req.body, RequestBody::Append(a) if !a.entries.is_empty()) {
                net.appends_with_entries.fetch_add(1, Ordering::Relaxed);
            }
            if matches!(&req.body, RequestBody::Fetch(_)) {
                net.fetches.fetch_add(1, Ordering::Relaxed);
            }
            let node = net.nodes.lock().unwrap().get(&to).cloned().ok_or(ReplTransportError::Unreachable(to))?;
            // The receiver handles the request on its own, as across a network: a caller
            // that gives up does not cancel it.
            let resp = tokio::spawn(async move { node.handle(req).await })
                .await
                .map_err(|e| ReplTransportError::Other(e.to_string()))?;
            // A node cut off while handling still did the work; only the answer is lost.
            if net.is_cut(me, to) {
                return Err(ReplTransportError::Unreachable(to));
            }
            Ok(resp)
        })
    }
}

type Applied = Vec<(Seq, Vec<u8>)>;

#[derive(Clone, Default)]
struct Rec(Arc<Mutex<Applied>>);

impl Rec {
    fn payloads(&self) -> Vec<Vec<u8>> {
        self.0.lock().unwrap().iter().map(|(_, p)| p.clone()).collect()
    }
}

impl Applier for Rec {
    fn apply(&self, _partition: PartitionId, entries: Vec<Entry>) -> BoxFuture<'static, Result<(), ApplyError>> {
        let log = self.0.clone();
        Box::pin(async move {
            let mut log = log.lock().unwrap();
            for e in entries {
                assert!(!e.is_barrier(), "barriers must not be applied");
                log.push((e.seq, e.payload));
            }
            Ok(())
        })
    }
}

struct Cluster {
    net: Arc<Net>,
    dir: PathBuf,
    config: ReplConfig,
    recs: HashMap<NodeId, Rec>,
}

const P: PartitionId = 7;

fn config() -> ReplConfig {
    ReplConfig {
        commit_timeout: Duration::from_millis(800),
        request_timeout: Duration::from_millis(500),
        retry_max: Duration::from_millis(100),
        ..ReplConfig::default()
    }
}

impl Cluster {
    async fn start(name: &str, ids: &[NodeId], config: ReplConfig) -> Cluster {
        let dir = std::env::temp_dir().join(format!("replog-it-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut c = Cluster { net: Arc::default(), dir, config, recs: HashMap::new() };
        for &id in ids {
            c.open(id).await;
        }
        c
    }

    async fn open(&mut self, id: NodeId) -> Replicator {
        let rec = Rec::default();
        let transport = Mem { me: id, net: self.net.clone() };
        let r = Replicator::open(&self.dir.join(id.to_string()), id, transport, rec.clone(), self.config.clone())
            .await
            .unwrap();
        self.net.nodes.lock().unwrap().insert(id, r.clone());
        self.recs.insert(id, rec);
        r
    }

    fn node(&self, id: NodeId) -> Replicator {
        self.net.nodes.lock().unwrap()[&id].clone()
    }

    fn cut(&self, id: NodeId) {
        self.net.cut.lock().unwrap().insert(id);
    }

    fn heal(&self, id: NodeId) {
        self.net.cut.lock().unwrap().remove(&id);
    }

    async fn view(&self, on: &[NodeId], epoch: Epoch, replicas: &[NodeId], previous: Option<&[NodeId]>) {
        for &n in on {
            self.node(n).set_view(P, epoch, replicas.to_vec(), previous.map(<[NodeId]>::to_vec)).await.unwrap();
        }
    }

    async fn serving(&self, id: NodeId) {
        eventually("serving", || async { self.node(id).status(P).await.role == Role::Leader { serving: true } }).await;
    }

    async fn applied_everywhere(&self, on: &[NodeId], seq: Seq) {
        for &n in on {
            tokio::time::timeout(Duration::from_secs(10), self.node(n).wait_applied(P, seq))
                .await
                .unwrap_or_else(|_| panic!("node {n} did not apply {seq}"));
        }
    }

    fn shutdown(&self) {
        for r in self.net.nodes.lock().unwrap().values() {
            r.shutdown();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn payload(i: usize) -> Vec<u8> {
    format!("m{i}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_needs_a_majority() {
    let c = Cluster::start("majority", &[1, 2, 3], config()).await;
    c.view(&[1, 2, 3], 1, &[1, 2, 3], None).await;
    c.serving(1).await;
    let leader = c.node(1);
    let s1 = leader.propose(P, payload(1)).await.unwrap();

    c.cut(2);
    c.cut(3);
    let r = leader.propose(P, payload(2)).await;
    assert!(matches!(r, Err(ReplError::Unavailable)), "{r:?}");
    assert_eq!(leader.committed(P), s1);
    // One follower back is a majority again: the stuck entry commits, and new ones too.
    c.heal(2);
    let s3 = leader.propose(P, payload(3)).await.unwrap();
    assert_eq!(s3, s1 + 2);
    c.heal(3);
    c.applied_everywhere(&[1, 2, 3], s3).await;
    for n in [1, 2, 3] {
        assert_eq!(c.recs[&n].payloads(), vec![payload(1), payload(2), payload(3)], "node {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_are_group_committed() {
    let c = Cluster::start("group", &[1, 2, 3], config()).await;
    c.view(&[1, 2, 3], 1, &[1, 2, 3], None).await;
    c.serving(1).await;
    let leader = c.node(1);
    let before = (leader.stats(), c.net.appends_with_entries.load(Ordering::Relaxed));
    let n = 400;
    let started = Instant::now();
    let results = join_all((0..n).map(|i| {
        let l = leader.clone();
        tokio::spawn(async move { l.propose(P, payload(i)).await })
    }))
    .await;
    let elapsed = started.elapsed();
    let mut seqs: Vec<Seq> = results.into_iter().map(|r| r.unwrap().unwrap()).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), n);
    let after = (leader.stats(), c.net.appends_with_entries.load(Ordering::Relaxed));
    let batches = after.0.leader_batches - before.0.leader_batches;
    let appends = after.1 - before.1;
    eprintln!("group commit: {n} proposals, {batches} local batches, {appends} appends, {elapsed:?}");
    assert!(batches * 4 <= n as u64, "{batches} batches for {n} proposals");
    assert!(appends * 2 <= n as u64, "{appends} appends for {n} proposals");
    c.applied_everywhere(&[1, 2, 3], *seqs.last().unwrap()).await;
}

/// `submit` queues at once: entries are in the log in the order they were submitted,
/// whatever order their futures are awaited in, and a future not awaited yet holds
/// nothing (the partition's status answers, later proposals commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitted_entries_keep_their_order_and_hold_nothing_until_awaited() {
    let c = Cluster::start("submit", &[1, 2, 3], config()).await;
    c.view(&[1, 2, 3], 1, &[1, 2, 3], None).await;
    c.serving(1).await;
    let leader = c.node(1);
    let first = leader.submit(P, b"first".to_vec()).unwrap();
    let second = leader.submit(P, b"second".to_vec()).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(1), leader.status(P)).await;
    assert!(status.is_ok(), "the status of a partition with pending submissions answers");
    let third = leader.propose(P, b"third".to_vec()).await.unwrap();
    let second = second.await.unwrap();
    let first = first.await.unwrap();
    assert!(first < second && second < third, "{first} {second} {third}");
    c.applied_everywhere(&[1, 2, 3], third).await;
    let payloads = c.recs[&2].payloads();
    assert_eq!(&payloads[payloads.len() - 3..], [b"first".to_vec(), b"second".to_vec(), b"third".to_vec()]);
    // Not served here: refused at once, nothing queued.
    assert!(matches!(c.node(2).submit(P, b"elsewhere".to_vec()), Err(ReplError::NotLeader { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_keeps_committed_entries_and_fences_the_old_leader() {
    let c = Cluster::start("failover", &[1, 2, 3], config()).await;
    c.view(&[1, 2, 3], 1, &[1, 2, 3], None).await;
    c.serving(1).await;
    let old = c.node(1);
    let mut committed = Vec::new();
    for i in 0..20 {
        old.propose(P, payload(i)).await.unwrap();
        committed.push(payload(i));
    }
    // The old leader, cut off, writes a suffix that no one else has.
    c.cut(1);
    let lost = join_all((100..105).map(|i| old.propose(P, payload(i)))).await;
    assert!(lost.iter().all(|r| matches!(r, Err(ReplError::Unavailable))), "{lost:?}");
    let old_tail = old.status(P).await.last.unwrap();

    c.view(&[2, 3], 2, &[2, 3, 1], Some(&[1, 2, 3])).await;
    c.serving(2).await;
    let new = c.node(2);
    assert!(new.status(P).await.last.unwrap().seq < old_tail.seq + 1);
    for i in 20..30 {
        new.propose(P, payload(i)).await.unwrap();
        committed.push(payload(i));
    }

    // Healed, the old leader learns it was fenced and can never commit at epoch 1 again.
    c.heal(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match old.propose(P, b"late".to_vec()).await {
            Err(ReplError::Fenced { promised }) => {
                assert_eq!(promised, 2);
                break;
            }
            Err(ReplError::Unavailable) => assert!(Instant::now() < deadline, "the old leader was never fenced"),
            other => panic!("the old leader must not commit: {other:?}"),
        }
    }
    assert!(old.status(P).await.fenced_by.is_some());

    c.view(&[1], 2, &[2, 3, 1], Some(&[1, 2, 3])).await;
    let last = new.propose(P, payload(30)).await.unwrap();
    committed.push(payload(30));
    c.applied_everywhere(&[1, 2, 3], last).await;
    let leader_last = new.status(P).await.last;
    assert_eq!(old.status(P).await.last, leader_last, "the divergent suffix is gone");
    for n in [1, 2, 3] {
        assert_eq!(c.recs[&n].payloads(), committed, "node {n} applied the committed entries in order");
    }
    assert!(!c.recs[&1].payloads().contains(&b"late".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_replica_catches_up_by_log() {
    // Small batches so that catching up takes many rounds.
    let c = Cluster::start("fresh", &[1, 2, 3, 4], ReplConfig { batch_entries: 16, ..config() }).await;
    c.view(&[1, 2, 3, 4], 1, &[1, 2, 3], None).await;
    c.serving(1).await;
    let leader = c.node(1);
    let mut expected = Vec::new();
    for chunk in 0..10 {
        let rs = join_all((0..30).map(|i| leader.propose(P, payload(chunk * 30 + i)))).await;
        let mut ok: Vec<(Seq, usize)> = rs.into_iter().enumerate().map(|(i, r)| (r.unwrap(), chunk * 30 + i)).collect();
        ok.sort_unstable();
        expected.extend(ok.into_iter().map(|(_, i)| payload(i)));
    }
    assert_eq!(c.node(4).status(P).await.last, None);

    c.view(&[1, 2, 3, 4], 2, &[1, 2, 4], Some(&[1, 2, 3])).await;
    c.serving(1).await;
    // Proposals keep working while node 4 catches up.
    let s = leader.propose(P, b"during".to_vec()).await.unwrap();
    expected.push(b"during".to_vec());
    c.applied_everywhere(&[4], s).await;
    assert_eq!(c.recs[&4].payloads(), expected);
    assert_eq!(c.node(4).status(P).await.last, leader.status(P).await.last);
}

/// A learner is sent the log (and applies it) while the partition serves, never counts
/// towards a majority, stops being sent to when it is no longer listed, and once caught up
/// takes the partition over without fetching anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_catches_up_without_counting_and_takes_over_without_a_fetch() {
    let c = Cluster::start("learner", &[1, 2, 3, 4], ReplConfig { batch_entries: 16, ..config() }).await;
    c.view(&[1, 2, 3, 4], 1, &[1, 2, 3], None).await;
    c.serving(1).await;
    let leader = c.node(1);
    let mut last = 0;
    for i in 0..200 {
        last = leader.propose(P, payload(i)).await.unwrap();
    }
    let learner = c.node(4);
    assert_eq!(learner.status(P).await.role, Role::None);
    for n in [1, 2, 3, 4] {
        c.node(n).set_learners(P, vec![4]);
    }
    assert_eq!(learner.status(P).await.role, Role::Learner);
    eventually("the learner catches up", || async { learner.status(P).await.caught_up }).await;
    assert_eq!(c.recs[&4].payloads(), c.recs[&1].payloads());
    assert!(c.recs[&4].payloads().len() >= 200);
    // An idle partition still tells its learner it is caught up; one that heard nothing
    // lately (paused, cut off) no longer counts as caught up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(learner.status(P).await.caught_up);
    c.cut(4);
    let _ = leader.propose(P, b"while 4 is away".to_vec()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(!learner.status(P).await.caught_up);
    c.heal(4);
    eventually("caught up after the cut", || async { learner.status(P).await.caught_up }).await;

    // With both followers cut off, the learner is no majority.
    c.cut(2);
    c.cut(3);
    let r = leader.propose(P, b"unsafe".to_vec()).await;
    assert!(matches!(r, Err(ReplError::Unavailable)), "{r:?}");
    c.heal(2);
    c.heal(3);
    last = last.max(leader.propose(P, b"after".to_vec()).await.unwrap());
    c.applied_everywhere(&[1, 2, 3, 4], last).await;

    // No longer listed: nothing more is sent to it.
    for n in [1, 2, 3, 4] {
        c.node(n).set_learners(P, Vec::new());
    }
    let unlisted = leader.propose(P, b"not for 4".to_vec()).await.unwrap();
    c.applied_everywhere(&[1, 2, 3], unlisted).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(learner.status(P).await.last.unwrap().seq < unlisted);

    // Listed again, caught up again, then made the leader: it recovers without a fetch.
    for n in [1, 2, 3, 4] {
        c.node(n).set_learners(P, vec![4]);
    }
    eventually("caught up again", || async {
        let s = learner.status(P).await;
        s.caught_up && s.applied >= unlisted
    })
    .await;
    let fetches = c.net.fetches.load(Ordering::Relaxed);
    for n in [1, 2, 3, 4] {
        c.node(n).set_learners(P, Vec::new());
    }
    c.view(&[1, 2, 3, 4], 2, &[4, 1, 2], Some(&[1, 2, 3])).await;
    c.serving(4).await;
    assert_eq!(c.net.fetches.load(Ordering::Relaxed), fetches, "a caught-up learner needs no fetch");
    assert_eq!(learner.stats().recovery_fetched, 0);
    let s = learner.propose(P, b"led by 4".to_vec()).await.unwrap();
    c.applied_everywhere(&[1, 2, 4], s).await;
    assert_eq!(c.recs[&4].payloads(), c.recs[&1].payloads());
    assert_eq!(c.recs[&4].payloads().last().unwrap(), b"led by 4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_disk_and_reapplies_only_past_applied() {
    let mut c = Cluster::start("restart", &[1, 2, 3], config()).await;
    c.view(&[1, 2, 3], 1, &[1, 2, 3], None).await;
    c.serving(1).await;
    let mut last = 0;
    for i in 0..10 {
        last = c.node(1).propose(P, payload(i)).await.unwrap();
    }
    c.applied_everywhere(&[1, 2, 3], last).await;
    let tails: Vec<_> = join_all([1, 2, 3].map(|n| {
        let r = c.node(n);
        async move { r.status(P).await.last }
    }))
    .await;
    c.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;

    // Pretend node 2 crashed after applying up to 5 but before recording more.
    {
        let store = LogStore::open(&c.dir.join("2").join("replog.db")).await.unwrap();
        store.set_applied(P, 5).await.unwrap();
    }
    for n in [1, 2, 3] {
        c.open(n).await;
    }
    for (i, n) in [1, 2, 3].into_iter().enumerate() {
        let st = c.node(n).status(P).await;
        assert_eq!(st.last, tails[i], "node {n} kept its log");
        assert_eq!(st.commit, last);
    }
    c.applied_everywhere(&[1, 2, 3], last).await;
    assert!(c.recs[&1].payloads().is_empty(), "nothing past applied on node 1");
    // Seq 1 is the barrier, so applied 5 means m0..m3: m4 onwards comes again.
    assert_eq!(c.recs[&2].payloads(), (4..10).map(payload).collect::<Vec<_>>());

    c.view(&[1, 2, 3], 2, &[1, 2, 3], Some(&[1, 2, 3])).await;
    c.serving(1).await;
    let s = c.node(1).propose(P, b"after".to_vec()).await.unwrap();
    assert!(s > last);
    c.applied_everywhere(&[1, 2, 3], s).await;
    assert_eq!(c.recs[&3].payloads(), vec![b"after".to_vec()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_replica_commits_on_its_own_write() {
    let c = Cluster::start("single", &[1], config()).await;
    c.view(&[1], 1, &[1], None).await;
    c.serving(1).await;
    let r = c.node(1);
    let n = 200;
    let started = Instant::now();
    let mut last = 0;
    for i in 0..n {
        last = r.propose(P, payload(i)).await.unwrap();
    }
    let sequential = started.elapsed();
    let started = Instant::now();
    let rs = join_all((0..n).map(|i| r.propose(P, payload(n + i)))).await;
    assert!(rs.iter().all(Result::is_ok));
    let concurrent = started.elapsed();
    eprintln!(
        "rf=1: {n} sequential proposals in {sequential:?} ({:?} each), {n} concurrent in {concurrent:?}",
        sequential / n as u32
    );
    assert_eq!(c.net.appends_with_entries.load(Ordering::Relaxed), 0);
    assert_eq!(r.committed(P), last + n as u64);
    c.applied_everywhere(&[1], last + n as u64).await;
    assert_eq!(c.recs[&1].payloads().len(), 2 * n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_versions_are_rejected_and_proposals_need_the_leader() {
    let c = Cluster::start("version", &[1, 2], config()).await;
    let r = c.node(2);
    let req = ReplRequest { version: REPL_VERSION + 1, body: RequestBody::Fence(Fence { partition: P, epoch: 9 }) };
    assert_eq!(r.handle(req).await.body, ResponseBody::VersionMismatch { ours: REPL_VERSION });
    // Nothing was promised.
    assert_eq!(r.status(P).await.promised, 0);
    let ok = ReplRequest::new(RequestBody::Fence(Fence { partition: P, epoch: 9 }));
    assert_eq!(r.handle(ok).await.body, ResponseBody::Fenced { last: None, commit: 0, serving: None });

    assert!(matches!(r.propose(P, b"x".to_vec()).await, Err(ReplError::NotLeader { .. })));
    c.view(&[1, 2], 10, &[1, 2], None).await;
    assert!(matches!(r.propose(P, b"x".to_vec()).await, Err(ReplError::NotLeader { epoch: Some(10) })));
    assert!(matches!(c.node(1).propose(P, Vec::new()).await, Err(ReplError::EmptyPayload)));
    c.serving(1).await;
    assert!(c.node(1).propose(P, b"x".to_vec()).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_waits_for_a_majority_of_the_previous_set_and_a_newer_view_replaces_it() {
    let c = Cluster::start("waits", &[1, 2, 3], config()).await;
    c.view(&[1, 2, 3], 1, &[1, 2, 3], None).await;
    c.serving(1).await;
    let s = c.node(1).propose(P, payload(0)).await.unwrap();
    c.applied_everywhere(&[1, 2, 3], s).await;

    // Node 2 alone cannot hear a majority of {1, 2, 3}: it does not guess.
    c.cut(1);
    c.cut(3);
    c.view(&[2], 2, &[2, 3, 1], Some(&[1, 2, 3])).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.node(2).status(P).await.role, Role::Leader { serving: false });
    assert!(matches!(c.node(2).propose(P, payload(1)).await, Err(ReplError::Recovering)));

    // A newer view (node 3 leads) replaces that recovery; with 3 back it completes.
    c.heal(3);
    c.view(&[2, 3], 3, &[3, 2, 1], Some(&[1, 2, 3])).await;
    assert_eq!(c.node(2).status(P).await.role, Role::Follower);
    c.serving(3).await;
    let s = c.node(3).propose(P, payload(2)).await.unwrap();
    c.heal(1);
    c.view(&[1], 3, &[3, 2, 1], Some(&[1, 2, 3])).await;
    c.applied_everywhere(&[1, 2, 3], s).await;
    for n in [1, 2, 3] {
        assert_eq!(c.recs[&n].payloads(), vec![payload(0), payload(2)], "node {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_wait_applied_create_nothing_for_unknown_partitions() {
    let c = Cluster::start("unknown", &[1, 2], config()).await;
    let r = c.node(2);
    let st = r.status(P).await;
    assert_eq!((st.role, st.epoch, st.last, st.commit, st.applied), (Role::None, None, None, 0, 0));
    r.wait_applied(P, 0).await;
    let waiting = tokio::spawn({
        let r = r.clone();
        async move { r.wait_applied(P, 2).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished());
    // A fetch for it is answered without creating it either.
    let fetch = ReplRequest::new(RequestBody::Fetch(Fetch { partition: P, epoch: 1, from: 1, max_entries: 10 }));
    assert_eq!(r.handle(fetch).await.body, ResponseBody::Entries(Vec::new()));
    assert!(r.partitions().is_empty(), "{:?}", r.partitions());

    // Once the partition exists and applies seq 2, the waiter wakes.
    c.view(&[1, 2], 1, &[1, 2], None).await;
    c.serving(1).await;
    let s = c.node(1).propose(P, payload(0)).await.unwrap();
    assert_eq!(s, 2);
    tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap();
    assert_eq!(r.partitions(), vec![P]);
}

/// Holds the write lock of a node's store from outside, so that its writes wait (the store
/// waits up to its busy timeout, 10 s) while its reads and the network go on.
async fn block_disk(c: &Cluster, id: NodeId) -> libsql::Connection {
    let db = libsql::Builder::new_local(c.dir.join(id.to_string()).join("replog.db")).build().await.unwrap();
    let conn = db.connect().unwrap();
    conn.execute("BEGIN IMMEDIATE", ()).await.unwrap();
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_writes_locally_in_parallel_and_counts_itself_only_once_durable() {
    let c = Cluster::start("parallel", &[1, 2, 3, 4, 5], config()).await;
    c.view(&[1, 2, 3, 4, 5], 1, &[1, 2, 3, 4, 5], None).await;
    c.serving(1).await;
    let leader = c.node(1);
    let s0 = leader.propose(P, payload(0)).await.unwrap();
    c.applied_everywhere(&[1, 2, 3, 4, 5], s0).await;

    let blocker = block_disk(&c, 1).await;
    // Two followers of four hold the entry, and the leader's own copy is not durable: 2 of 5
    // is no majority.
    c.cut(4);
    c.cut(5);
    let r = leader.propose(P, payload(1)).await;
    assert!(matches!(r, Err(ReplError::Unavailable)), "{r:?}");
    // Three followers are a majority of five without the leader: commits while its own write
    // still waits for the disk.
    c.heal(4);
    let s2 = leader.propose(P, payload(2)).await.unwrap();
    assert_eq!(s2, s0 + 2);
    assert!(leader.committed(P) < s2, "the leader publishes only what its own log holds");
    assert!(leader.acknowledged(P) >= s2, "but counts it as acknowledged");
    for n in [2, 3, 4] {
        tokio::time::timeout(Duration::from_secs(5), c.node(n).wait_applied(P, s2)).await.unwrap();
    }

    blocker.execute("ROLLBACK", ()).await.unwrap();
    drop(blocker);
    c.heal(5);
    let s3 = leader.propose(P, payload(3)).await.unwrap();
    c.applied_everywhere(&[1, 2, 3, 4, 5], s3).await;
    for n in [1, 2, 3, 4, 5] {
        assert_eq!(c.recs[&n].payloads(), (0..4).map(payload).collect::<Vec<_>>(), "node {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_reaches_the_last_serving_set_even_past_a_leader_that_never_recovered() {
    let c = Cluster::start("serving-set", &[1, 2, 3, 4, 5, 6], config()).await;
    c.view(&[1, 2, 3], 1, &[1, 2, 3], None).await;
    c.serving(1).await;
    let leader = c.node(1);
    let a = leader.propose(P, payload(0)).await.unwrap();
    c.applied_everywhere(&[1, 2, 3], a).await;
    // Committed on {1, 2} only.
    c.cut(3);
    leader.propose(P, payload(1)).await.unwrap();
    leader.propose(P, payload(2)).await.unwrap();

    // Epoch 2: node 2 should lead {2, 3, 4} but is cut off and never recovers. (Node 1 learns
    // the view first, so that it stops leading before node 3 is back: node 3 never gets m1, m2.)
    c.cut(2);
    c.view(&[1, 2, 3, 4], 2, &[2, 3, 4], Some(&[1, 2, 3])).await;
    c.heal(3);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(c.node(2).status(P).await.role, Role::Leader { serving: false });

    // Epoch 3: node 4 leads {4, 5, 6}, told only of {2, 3, 4}. A majority of that ({3, 4})
    // lacks m1 and m2; node 3 knows {1, 2, 3} served at epoch 1, so node 4 must also hear
    // from a majority of it, which with node 2 away means node 1.
    c.view(&[3, 4, 5, 6], 3, &[4, 5, 6], Some(&[2, 3, 4])).await;
    c.serving(4).await;
    let d = c.node(4).propose(P, payload(3)).await.unwrap();
    c.applied_everywhere(&[4, 5, 6], d).await;
    for n in [4, 5, 6] {
        assert_eq!(c.recs[&n].payloads(), (0..4).map(payload).collect::<Vec<_>>(), "node {n}");
    }
    // Node 1 was asked (fenced at epoch 3): it was the only source of m1 and m2.
    assert_eq!(leader.status(P).await.promised, 3);
}

/// `role` answers at once while a write holds the partition's lock (the disk is busy),
/// where `status` waits: a loop that waits for a role (the node waits for a partition to
/// be served before it proposes) then never queues for the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_is_known_while_a_write_holds_the_partition() {
    let c = Cluster::start("role", &[1, 2, 3], config()).await;
    c.view(&[1, 2, 3], 1, &[1, 2, 3], None).await;
    c.serving(1).await;
    let leader = c.node(1);
    let disk = block_disk(&c, 1).await;
    let pending = leader.submit(P, payload(1)).unwrap();
    // The leader's local write takes the lock and waits for the disk.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(tokio::time::timeout(Duration::from_millis(100), leader.status(P)).await.is_err());
    assert_eq!(leader.role(P), Role::Leader { serving: true });
    assert_eq!(c.node(2).role(P), Role::Follower);
    assert_eq!(c.node(2).role(P + 1), Role::None);
    disk.execute("ROLLBACK", ()).await.unwrap();
    let s = pending.await.unwrap();
    c.applied_everywhere(&[1, 2, 3], s).await;
}

/// An entry a majority of followers hold commits before the leader's own write of it is
/// done; `acknowledged` on the leader covers it, so a read that waits until that much is
/// applied here sees every acknowledged write (a room's archive read after its reflection,
/// which waited for `committed` only, missed the last message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_counts_as_committed_what_it_acknowledged_before_its_own_write() {
    let c = Cluster::start("acked", &[1, 2, 3], config()).await;
    c.view(&[1, 2, 3], 1, &[1, 2, 3], None).await;
    c.serving(1).await;
    let leader = c.node(1);
    let disk = block_disk(&c, 1).await;
    let seq = leader.propose(P, payload(1)).await.unwrap();
    assert!(leader.acknowledged(P) >= seq, "acknowledged {} < {seq}", leader.acknowledged(P));
    assert!(leader.committed(P) < seq, "the leader publishes only what its own log holds");
    // Its own write is still waiting for the disk: nothing of it applied here yet.
    assert!(tokio::time::timeout(Duration::from_millis(200), leader.wait_applied(P, seq)).await.is_err());
    disk.execute("ROLLBACK", ()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), leader.wait_applied(P, leader.acknowledged(P))).await.unwrap();
    assert_eq!(c.recs[&1].payloads().last().unwrap(), &payload(1));
}

/// A caller that gives up on `set_view` (the node bounds it with a timeout) while the disk
/// is slow must not leave the partition with a view naming this node leader and no leader:
/// once the disk answers, the leader recovers and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_given_up_on_while_the_disk_is_slow_still_gets_its_leader() {
    let c = Cluster::start("slow-view", &[1, 2, 3], config()).await;
    c.view(&[2, 3], 1, &[1, 2, 3], None).await;
    let disk = block_disk(&c, 1).await;
    let given_up = tokio::time::timeout(Duration::from_millis(50), c.node(1).set_view(P, 1, vec![1, 2, 3], None)).await;
    // Let the caller's timeout pass with the disk still busy, then free it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    disk.execute("ROLLBACK", ()).await.unwrap();
    drop(given_up);
    c.serving(1).await;
    let s = c.node(1).propose(P, payload(1)).await.unwrap();
    c.applied_everywhere(&[1, 2, 3], s).await;
}

/// A leader fenced while its own commit bookkeeping waits for the partition's lock (busy
/// with proposals, Appends and status reads) stops cleanly, and the lock stays usable:
/// a fenced leader used to wait for that lock while holding the future it had been
/// handed to, and every later view, Append and status read of the partition hung.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_fenced_under_load_lets_go_of_its_partition() {
    let c = Cluster::start("fenced-busy", &[1, 2, 3], config()).await;
    let all = [1, 2, 3];
    c.view(&all, 1, &[1, 2, 3], None).await;
    c.serving(1).await;
    let mut leader = 1;
    for epoch in 2..=16 {
        let old = c.node(leader);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut load = Vec::new();
        for k in 0..8 {
            let (node, stop) = (old.clone(), stop.clone());
            load.push(tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    if k % 2 == 0 {
                        if node.propose(P, payload(i)).await.is_err() {
                            // Refused at once once fenced: no busy loop.
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    } else {
                        let _ = node.status(P).await;
                        tokio::task::yield_now().await;
                    }
                    i += 1;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        let next = if leader == 3 { 1 } else { leader + 1 };
        let order: Vec<NodeId> = std::iter::once(next).chain(all.iter().copied().filter(|&n| n != next)).collect();
        // The new leader and a follower first: they fence the old leader mid-load.
        let others: Vec<NodeId> = all.iter().copied().filter(|&n| n != leader).collect();
        c.view(&others, epoch, &order, Some(&[1, 2, 3])).await;
        c.serving(next).await;
        let status = tokio::time::timeout(Duration::from_secs(5), old.status(P)).await;
        assert!(status.is_ok(), "epoch {epoch}: the fenced leader's partition lock is stuck");
        stop.store(true, Ordering::Relaxed);
        for t in load {
            tokio::time::timeout(Duration::from_secs(10), t).await.expect("load task stuck").unwrap();
        }
        c.view(&[leader], epoch, &order, Some(&[1, 2, 3])).await;
        leader = next;
    }
    let s = c.node(leader).propose(P, b"last".to_vec()).await.unwrap();
    c.applied_everywhere(&all, s).await;
}
