//! Test helpers: self-removing temp dirs, node records, a small in-process cluster.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{ControlConfig, ControlPlane, ControlState, MemoryTransport, NodeRecord, NodeState, Role};

/// A directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "waddle-control-{tag}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn node(id: u64) -> NodeRecord {
    NodeRecord {
        id,
        cluster_addr: format!("node{id}:7946"),
        http_addr: format!("node{id}:8080"),
        state: NodeState::Up,
        voter: false,
        version: 0,
    }
}

/// Short timeouts so elections and retries are quick in tests.
pub(crate) fn test_config() -> ControlConfig {
    ControlConfig {
        voters: 3,
        heartbeat_ms: 50,
        election_min_ms: 150,
        election_max_ms: 300,
        snapshot_after_logs: 1000,
        logs_to_keep: 100,
        request_timeout_ms: 15_000,
    }
}

/// Nodes in one process over a [`MemoryTransport`], each with its own directory.
pub(crate) struct Cluster {
    pub(crate) net: Arc<MemoryTransport>,
    pub(crate) config: ControlConfig,
    dirs: BTreeMap<u64, TempDir>,
    pub(crate) planes: BTreeMap<u64, ControlPlane>,
}

impl Cluster {
    pub(crate) fn new(config: ControlConfig) -> Cluster {
        Cluster { net: MemoryTransport::new(), config, dirs: BTreeMap::new(), planes: BTreeMap::new() }
    }

    /// Opens node `id` (from its existing directory if it ran before) and makes it reachable.
    pub(crate) async fn start(&mut self, id: u64) -> ControlPlane {
        self.start_as(node(id)).await
    }

    /// [`Cluster::start`] with the record the node joins with.
    pub(crate) async fn start_as(&mut self, record: NodeRecord) -> ControlPlane {
        let id = record.id;
        let dir = self.dirs.entry(id).or_insert_with(|| TempDir::new(&format!("n{id}")));
        let plane = ControlPlane::open(dir.path(), record, self.net.endpoint(id), self.config.clone()).await.unwrap();
        self.net.register(&plane);
        self.planes.insert(id, plane.clone());
        plane
    }

    /// Stops node `id` (its directory stays).
    pub(crate) async fn kill(&mut self, id: u64) {
        let plane = self.planes.remove(&id).unwrap();
        self.net.unregister(id);
        plane.shutdown().await.unwrap();
    }

    pub(crate) fn plane(&self, id: u64) -> &ControlPlane {
        &self.planes[&id]
    }

    /// Waits until every running node agrees on one leader, and returns it.
    pub(crate) async fn leader(&self) -> u64 {
        eventually("a leader all running nodes agree on", || {
            let leaders: Vec<Option<u64>> = self.planes.values().map(|p| p.status().leader).collect();
            let first = leaders.first().copied().flatten()?;
            let agreed = leaders.iter().all(|l| *l == Some(first));
            let leading = self.planes.get(&first).is_some_and(|p| p.status().role == Role::Leader);
            (agreed && leading).then_some(first)
        })
        .await
    }

    /// Waits until every running node has applied what `id` has applied, then checks they
    /// all hold the same state.
    pub(crate) async fn converged(&self, id: u64) -> Arc<ControlState> {
        let reference = self.plane(id).state();
        for p in self.planes.values() {
            p.wait_applied(reference.applied, Duration::from_secs(10)).await.unwrap();
        }
        let reference = self.plane(id).state();
        for (other, p) in &self.planes {
            p.wait_applied(reference.applied, Duration::from_secs(10)).await.unwrap();
            assert_same(&reference, &p.state(), &format!("node {other} vs node {id}"));
        }
        reference
    }
}

/// The replicated content of two states is equal (their `applied` may differ by entries that
/// carry no command).
pub(crate) fn assert_same(a: &ControlState, b: &ControlState, what: &str) {
    assert_eq!(a.nodes, b.nodes, "{what}: nodes");
    assert_eq!(a.partition_map, b.partition_map, "{what}: partition map");
    assert_eq!(a.records, b.records, "{what}: records");
    assert_eq!(a.tuples().collect::<Vec<_>>(), b.tuples().collect::<Vec<_>>(), "{what}: tuples");
}

/// Polls `check` until it returns `Some`, failing after 15 s.
pub(crate) async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
