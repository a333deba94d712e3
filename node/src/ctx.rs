//! The node's shared context: configuration, storage, registry and the limits every
//! connection shares. One `Arc<Ctx>` per process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::{Mutex as AsyncMutex, MutexGuard};
use waddle_cluster::{partition_of, Locality, UserShard};
use waddle_sasl::{FailureLimiter, LoginDecision, LoginLimiter};
use waddle_storage::Store;
use waddle_xml::Limits;

use crate::config::Config;
use crate::metrics::Metrics;

pub struct Ctx {
    /// Set once right after construction, so `&Ctx` callers can spawn tasks and actors
    /// that keep the context alive.
    this: OnceLock<Weak<Ctx>>,
    pub config: Config,
    pub domain: String,
    pub store: Store,
    /// Where users, sessions and partitions live; the only way to reach a session.
    pub cluster: Locality,
    /// How this node reaches the others (none in a cluster of one).
    link: OnceLock<Arc<dyn crate::remote::ClusterLink>>,
    /// Service domains hosted here (components such as the MUC service).
    pub services: Vec<String>,
    pub tls: Arc<rustls::ServerConfig>,
    pub auth_limiter: Arc<Mutex<LoginLimiter>>,
    /// Accounts created per client address (in-band and `POST /v1/accounts`), shared
    /// with the HTTP API.
    pub registration_limiter: Arc<Mutex<FailureLimiter>>,
    pub metrics: Metrics,
    pub muc: crate::muc::MucService,
    pub archive: waddle_mam::Archive,
    pub permissions: Arc<waddle_api::Permissions>,
    /// Waddles, channels and permission tuples: the local database on a single node, the
    /// control plane on a cluster member.
    pub control: Arc<crate::control_store::NodeControl>,
    /// Serialises read-modify-write of one user's roster (subscription handshakes from
    /// two sessions at once must not lose an update).
    roster_locks: Vec<AsyncMutex<()>>,
    /// Serialises a user's check-then-write of replicated data (`crate::user_data`).
    user_locks: Vec<AsyncMutex<()>>,
    /// Users owned elsewhere with a carbons-enabled session, as their owners hinted.
    carbons_hints: Mutex<std::collections::HashSet<String>>,
    next_stanza_id: AtomicU64,
    /// The replicated logs of the partitions (cluster members with `cluster.replicas`
    /// above 1); without them, writes go straight to the databases.
    replication: OnceLock<Arc<crate::replication::Replication>>,
    /// Told when the node is to stop on its own (a drained node leaving the cluster).
    pub stop: tokio::sync::Notify,
}

const ROSTER_LOCKS: usize = 64;

impl Ctx {
    pub fn new(
        config: Config,
        store: Store,
        tls: Arc<rustls::ServerConfig>,
        archive: waddle_mam::Archive,
        permissions: Arc<waddle_api::Permissions>,
        control: Arc<crate::control_store::NodeControl>,
        node_id: u64,
    ) -> Arc<Ctx> {
        let limiter = LoginLimiter::new(
            config.auth.max_auth_failures,
            config.auth.account_failure_ceiling,
            Duration::from_secs(config.auth.auth_failure_window_secs),
            100_000,
        );
        let registration_limiter = FailureLimiter::new(
            config.auth.max_registrations_per_address,
            Duration::from_secs(config.auth.registration_window_secs),
            100_000,
        );
        let muc_domain = format!("muc.{}", config.server.domain);
        let ctx = Arc::new(Ctx {
            this: OnceLock::new(),
            domain: config.server.domain.clone(),
            config,
            store,
            cluster: Locality::single(node_id),
            link: OnceLock::new(),
            services: vec![muc_domain.clone()],
            tls,
            auth_limiter: Arc::new(Mutex::new(limiter)),
            registration_limiter: Arc::new(Mutex::new(registration_limiter)),
            metrics: Metrics::default(),
            muc: crate::muc::MucService::new(muc_domain),
            archive,
            permissions,
            control,
            roster_locks: (0..ROSTER_LOCKS).map(|_| AsyncMutex::new(())).collect(),
            user_locks: (0..ROSTER_LOCKS).map(|_| AsyncMutex::new(())).collect(),
            carbons_hints: Mutex::default(),
            next_stanza_id: AtomicU64::new(1),
            replication: OnceLock::new(),
            stop: tokio::sync::Notify::new(),
        });
        let _ = ctx.this.set(Arc::downgrade(&ctx));
        ctx
    }

    /// An owning handle to this context.
    pub fn arc(&self) -> Option<Arc<Ctx>> {
        self.this.get().and_then(Weak::upgrade)
    }

    pub fn xml_limits(&self) -> Limits {
        Limits {
            max_stanza_bytes: self.config.c2s.max_stanza_bytes,
            max_depth: self.config.c2s.max_depth,
            ..Limits::default()
        }
    }

    /// Connects this node to the others: sessions elsewhere become reachable.
    pub fn set_link(&self, link: Arc<dyn crate::remote::ClusterLink>) {
        self.cluster.set_peers(Arc::new(crate::remote::LinkPeers(Arc::clone(&link))));
        let _ = self.link.set(link);
    }

    pub fn set_replication(&self, replication: Arc<crate::replication::Replication>) {
        let _ = self.replication.set(replication);
    }

    /// Makes `op` durable in `partition`'s log: proposed here when this node owns the
    /// partition, else by its owner (`NodeCall::Durable`). Proposed before this returns
    /// when local, so writes made in order are logged in that order.
    pub fn durable_write(
        &self,
        partition: waddle_cluster::PartitionId,
        op: crate::replication::DurableOp,
    ) -> futures_util::future::BoxFuture<'static, Result<(), crate::replication::DurableError>> {
        use crate::replication::DurableError;
        let Some(replication) = self.replication() else {
            return Box::pin(std::future::ready(Err(DurableError::Gone)));
        };
        match self.cluster.place(partition) {
            waddle_cluster::Place::Local(()) => replication.write_started(partition, &op),
            waddle_cluster::Place::Remote(node) => {
                let Some(link) = self.link() else {
                    return Box::pin(std::future::ready(Err(DurableError::Gone)));
                };
                let answer = link.call(node, crate::remote::NodeCall::Durable { partition, op });
                Box::pin(async move {
                    match answer.await {
                        Ok(crate::remote::NodeReply::Done) => Ok(()),
                        Ok(other) => Err(DurableError::Remote(format!("{other:?}"))),
                        Err(e) => Err(DurableError::Remote(e.to_string())),
                    }
                })
            }
        }
    }

    /// The replicated logs, when this node replicates its partitions.
    pub fn replication(&self) -> Option<&Arc<crate::replication::Replication>> {
        self.replication.get()
    }

    pub fn link(&self) -> Option<&Arc<dyn crate::remote::ClusterLink>> {
        self.link.get()
    }

    pub fn set_carbons_hint(&self, bare: &str, enabled: bool) {
        let mut hints = self.carbons_hints.lock().unwrap_or_else(|e| e.into_inner());
        if enabled {
            hints.insert(bare.to_owned());
        } else {
            hints.remove(bare);
        }
    }

    /// Whether `bare`'s owner said one of its sessions has carbons enabled.
    pub fn carbons_hinted(&self, bare: &str) -> bool {
        let hints = self.carbons_hints.lock().unwrap_or_else(|e| e.into_inner());
        !hints.is_empty() && hints.contains(bare)
    }

    /// Accounts and tokens, wherever their user's partition is owned.
    pub fn accounts(&self) -> crate::remote::ClusterAccounts {
        crate::remote::ClusterAccounts { ctx: self.this.get().cloned().unwrap_or_default() }
    }

    /// The registry shard of `bare`, on the node that owns it. Callers run where the
    /// user's partition is owned (the routing seam forwarded the work here); `None`
    /// (logged) if the ring moved meanwhile, which reads as "no sessions".
    pub fn local_shard<'a>(&'a self, bare: &'a str) -> Option<UserShard<'a>> {
        match self.cluster.user(bare) {
            waddle_cluster::Place::Local(shard) => Some(shard),
            waddle_cluster::Place::Remote(node) => {
                tracing::debug!(bare, node, "cluster: user owned elsewhere");
                None
            }
        }
    }

    /// An id for stanzas the server originates (roster pushes, pings).
    pub fn next_id(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.next_stanza_id.fetch_add(1, Ordering::Relaxed))
    }

    pub async fn lock_roster(&self, username: &str) -> MutexGuard<'_, ()> {
        let idx = partition_of(username) as usize % ROSTER_LOCKS;
        // idx < ROSTER_LOCKS == roster_locks.len()
        self.roster_locks[idx].lock().await
    }

    pub async fn user_lock(&self, username: &str) -> MutexGuard<'_, ()> {
        let idx = partition_of(username) as usize % ROSTER_LOCKS;
        // idx < ROSTER_LOCKS == user_locks.len()
        self.user_locks[idx].lock().await
    }

    pub fn bare_jid(&self, username: &str) -> String {
        format!("{username}@{}", self.domain)
    }

    /// Records an authentication failure for the client address and the account.
    pub fn auth_failed(&self, peer: &str, username: Option<&str>) {
        crate::metrics::inc(&self.metrics.auth_failures);
        let mut limiter = self.auth_limiter.lock().unwrap_or_else(|e| e.into_inner());
        limiter.record_failure(username, Some(peer), std::time::Instant::now());
    }

    /// Whether and how a login attempt from `peer` for `username` may proceed.
    pub fn auth_check(&self, peer: &str, username: &str) -> LoginDecision {
        let mut limiter = self.auth_limiter.lock().unwrap_or_else(|e| e.into_inner());
        limiter.check(Some(username), Some(peer), std::time::Instant::now())
    }

    pub fn auth_succeeded(&self, peer: &str, username: &str) {
        let mut limiter = self.auth_limiter.lock().unwrap_or_else(|e| e.into_inner());
        limiter.record_success(username, Some(peer));
    }
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}
