//! The node's shared context: configuration, storage, registry and the limits every
//! connection shares. One `Arc<Ctx>` per process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::{Mutex as AsyncMutex, MutexGuard};
use waddle_cluster::{partition_of, Registry};
use waddle_sasl::FailureLimiter;
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
    pub registry: Registry,
    /// Service domains hosted here (components such as the MUC service).
    pub services: Vec<String>,
    pub tls: Arc<rustls::ServerConfig>,
    pub auth_limiter: Arc<Mutex<FailureLimiter>>,
    pub metrics: Metrics,
    pub muc: crate::muc::MucService,
    pub archive: waddle_mam::Archive,
    pub permissions: Arc<waddle_api::Permissions>,
    /// Serialises read-modify-write of one user's roster (subscription handshakes from
    /// two sessions at once must not lose an update).
    roster_locks: Vec<AsyncMutex<()>>,
    next_conn_id: AtomicU64,
    next_stanza_id: AtomicU64,
}

const ROSTER_LOCKS: usize = 64;

impl Ctx {
    pub fn new(
        config: Config,
        store: Store,
        tls: Arc<rustls::ServerConfig>,
        archive: waddle_mam::Archive,
        permissions: Arc<waddle_api::Permissions>,
    ) -> Arc<Ctx> {
        let limiter = FailureLimiter::new(
            config.auth.max_auth_failures,
            Duration::from_secs(config.auth.auth_failure_window_secs),
            100_000,
        );
        let muc_domain = format!("muc.{}", config.server.domain);
        let ctx = Arc::new(Ctx {
            this: OnceLock::new(),
            domain: config.server.domain.clone(),
            config,
            store,
            registry: Registry::new(),
            services: vec![muc_domain.clone()],
            tls,
            auth_limiter: Arc::new(Mutex::new(limiter)),
            metrics: Metrics::default(),
            muc: crate::muc::MucService::new(muc_domain),
            archive,
            permissions,
            roster_locks: (0..ROSTER_LOCKS).map(|_| AsyncMutex::new(())).collect(),
            next_conn_id: AtomicU64::new(1),
            next_stanza_id: AtomicU64::new(1),
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

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
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

    pub fn bare_jid(&self, username: &str) -> String {
        format!("{username}@{}", self.domain)
    }

    /// Records an authentication failure for the client address and the account.
    pub fn auth_failed(&self, peer: &str, username: Option<&str>) {
        crate::metrics::inc(&self.metrics.auth_failures);
        let now = std::time::Instant::now();
        let mut limiter = self.auth_limiter.lock().unwrap_or_else(|e| e.into_inner());
        limiter.record_failure(&format!("ip:{peer}"), now);
        if let Some(u) = username {
            limiter.record_failure(&format!("user:{u}"), now);
        }
    }

    /// Whether a login attempt from `peer` for `username` may proceed.
    pub fn auth_allowed(&self, peer: &str, username: &str) -> bool {
        let now = std::time::Instant::now();
        let mut limiter = self.auth_limiter.lock().unwrap_or_else(|e| e.into_inner());
        limiter.check(&format!("ip:{peer}"), now).is_ok() && limiter.check(&format!("user:{username}"), now).is_ok()
    }

    pub fn auth_succeeded(&self, username: &str) {
        let mut limiter = self.auth_limiter.lock().unwrap_or_else(|e| e.into_inner());
        limiter.record_success(&format!("user:{username}"));
    }
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}
