//! `waddle-api`: the HTTP API of a waddle node (axum 0.8) and the identity mapping rules.
//!
//! This crate owns:
//! - the JSON HTTP routes ([`router`]): account creation (`POST /v1/accounts`), password
//!   login issuing session bearer tokens (`POST /auth/session`), exchange of a session
//!   token for a short-lived XMPP token (`POST /auth/xmpp-token`), the `/health` and
//!   `/ready` probes, and the OpenAPI 3.1 description of all of it (`GET /openapi.json`).
//!   Every error, including malformed JSON, wrong content type, oversized bodies and
//!   unknown routes, is a JSON envelope `{"error":{"code","message"}}` ([`ApiError`]);
//! - the community routes, all behind a session bearer token: waddles
//!   (`/v1/waddles[/{id}]`), their members and roles (`/v1/waddles/{id}/members[/{user}]`),
//!   their channels (`/v1/waddles/{id}/channels`, `/v1/channels/{id}`) and permission
//!   checks (`POST /v1/permissions/check`). Every decision is a check against the
//!   Zanzibar schema of `waddle-authz` through [`Permissions`]; an object the caller may
//!   not `view` answers `404 not_found` exactly like an unknown id, a visible object the
//!   caller may not change answers `403 forbidden`. Channel lifecycle events reach the
//!   MUC side through the [`RoomControl`] trait the node implements;
//! - [`Permissions`]: the in-memory permission index, loaded from the [`ControlStore`] at
//!   start and kept behind it (every change is made durable first, then applied; there is
//!   no cache); waddles and channels also live in the [`ControlStore`] (the node's
//!   database, or in a cluster the replicated control plane);
//! - the account creation rules shared with in-band registration on the XMPP side
//!   ([`create_account`]): username policy, password bounds, SCRAM-SHA-1 and
//!   SCRAM-SHA-256 credential derivation;
//! - token minting and hashing ([`tokens`]), DID/username → JID localpart mapping
//!   ([`identity`]) and waddle/channel ids ([`new_id`]: 12 characters of `a-z2-7`).
//!
//! Validation failures are `400 invalid_request` with a precise message (names, lengths,
//! ids in paths, unknown JSON fields); conflicts are `409` (`account_exists`,
//! `channel_exists`, `channel_limit`, `owner_cannot_leave`).
//!
//! It must never: store or log a clear-text password or token (only SCRAM keys and
//! SHA-256 token digests reach storage); tell an unknown user from a wrong password;
//! reveal whether an object the caller may not view exists; apply a permission change in
//! memory before it is durable; run PBKDF2 on the async workers; bind sockets or read
//! configuration files itself (the node serves [`router`], fills in [`ApiConfig`] and
//! provides the [`RoomControl`]).

pub mod accounts;
pub mod control;
pub mod identity;
pub mod tokens;

mod error;
mod openapi;
mod permissions;
mod rooms;
mod routes;
mod waddles;

#[cfg(test)]
mod tests;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use waddle_sasl::{FailureLimiter, LoginLimiter, SaslError, ScramCredentials, ScramHash};
use waddle_storage::{AccountRecord, Store, StoredScram};

pub use accounts::Accounts;
pub use control::{Commit, ControlFuture, ControlStore};
pub use error::ApiError;
pub use identity::IdentityError;
pub use permissions::{Permissions, DEFAULT_REPLICATION_TIMEOUT};
pub use rooms::{BoxFuture, NoRooms, RoomControl};
pub use waddles::{is_valid_id, new_id};

/// Largest request body accepted, in bytes (larger ones get `413 payload_too_large`).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Longest password accepted, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// At most this many PBKDF2 computations (login checks, credential derivations) run at
/// once, process-wide; further requests wait their turn instead of piling up threads.
const KDF_CONCURRENCY: usize = 4;
static KDF_SLOTS: Semaphore = Semaphore::const_new(KDF_CONCURRENCY);

/// Settings of the HTTP API.
#[derive(Clone)]
pub struct ApiConfig {
    /// XMPP domain of local accounts (the part after `@` in returned JIDs).
    pub domain: String,
    /// Host name clients should connect to for XMPP (returned by `/auth/xmpp-token`).
    pub xmpp_host: String,
    /// XMPP client port (returned by `/auth/xmpp-token`).
    pub xmpp_port: u16,
    /// WebSocket endpoint URL (returned by `/auth/xmpp-token`).
    pub websocket_url: String,
    /// Lifetime of session tokens from `/auth/session`, seconds.
    pub session_ttl_secs: i64,
    /// Lifetime of XMPP tokens from `/auth/xmpp-token`, seconds.
    pub xmpp_token_ttl_secs: i64,
    /// PBKDF2 iteration count for new credentials.
    pub scram_iterations: u32,
    /// Whether anyone may create an account with `POST /v1/accounts`.
    pub open_registration: bool,
    /// Bearer token that may always create accounts (`None`: no admin access).
    pub admin_token: Option<String>,
    /// Shortest password accepted for new accounts, in characters.
    pub min_password_len: usize,
    /// Most channels a waddle may have (`409 channel_limit` beyond); 500 by default.
    pub max_channels_per_waddle: usize,
}

/// Default of [`ApiConfig::max_channels_per_waddle`].
pub const DEFAULT_MAX_CHANNELS_PER_WADDLE: usize = 500;

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("domain", &self.domain)
            .field("xmpp_host", &self.xmpp_host)
            .field("xmpp_port", &self.xmpp_port)
            .field("websocket_url", &self.websocket_url)
            .field("session_ttl_secs", &self.session_ttl_secs)
            .field("xmpp_token_ttl_secs", &self.xmpp_token_ttl_secs)
            .field("scram_iterations", &self.scram_iterations)
            .field("open_registration", &self.open_registration)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<redacted>"))
            .field("min_password_len", &self.min_password_len)
            .field("max_channels_per_waddle", &self.max_channels_per_waddle)
            .finish()
    }
}

/// Everything the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The node's database.
    pub store: Store,
    /// Waddles, channels and permission tuples: the node's database, or in a cluster the
    /// replicated control plane.
    pub control: Arc<dyn ControlStore>,
    /// Accounts and tokens: the node's database, or in a cluster their owners'.
    pub accounts: Arc<dyn Accounts>,
    /// API settings.
    pub config: Arc<ApiConfig>,
    /// Login limiter, shared with the XMPP side (addresses as `IpAddr` strings).
    pub auth_limiter: Arc<Mutex<LoginLimiter>>,
    /// Accounts created per client address, shared with in-band registration (each
    /// creation is one event of the window; the admin token is exempt).
    pub registration_limiter: Arc<Mutex<FailureLimiter>>,
    /// Whether the node has finished starting (and is not shutting down).
    pub ready: Arc<AtomicBool>,
    /// The permission checker (Zanzibar tuples in memory, persisted in `control`).
    pub authz: Arc<Permissions>,
    /// The MUC side of channel lifecycle events.
    pub rooms: Arc<dyn RoomControl>,
}

/// The HTTP API router, with its state applied. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()` so failed logins are also rate
/// limited per client address.
pub fn router(state: ApiState) -> axum::Router {
    routes::router(state)
}

/// Creates an account with SCRAM-SHA-1 and SCRAM-SHA-256 credentials derived from
/// `password` (which is never stored). Shared with in-band registration on the XMPP side.
///
/// The username is validated and normalized with [`identity::validate_new_username`]
/// (`invalid_username`, including the forms reserved for DID users). The password must
/// be non-empty, at most [`MAX_PASSWORD_BYTES`] bytes and acceptable to SASLprep
/// (`weak_password`); a minimum length policy is the caller's (the HTTP route applies `min_password_len`). A taken
/// username gives `account_exists`.
pub async fn create_account(
    store: &dyn Accounts,
    username: &str,
    password: &str,
    iterations: u32,
) -> Result<(), ApiError> {
    let username = identity::validate_new_username(username)?;
    if password.is_empty() {
        return Err(ApiError::WeakPassword("password must not be empty".into()));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::WeakPassword(format!("password must be at most {MAX_PASSWORD_BYTES} bytes")));
    }
    // Cheap early answer before the expensive derivation; the insert below still catches
    // a concurrent creation.
    if store.account_exists(&username).await? {
        return Err(ApiError::AccountExists);
    }
    let password = password.to_owned();
    let (sha1, sha256) = run_kdf(move || {
        Ok::<_, SaslError>((
            ScramCredentials::generate(ScramHash::Sha1, &password, iterations)?,
            ScramCredentials::generate(ScramHash::Sha256, &password, iterations)?,
        ))
    })
    .await?
    .map_err(|e| match e {
        SaslError::InvalidPassword(why) => ApiError::WeakPassword(format!("password not acceptable: {why}")),
        other => ApiError::Internal(format!("credential derivation failed: {other}")),
    })?;
    store
        .create_account(AccountRecord {
            username,
            scram_sha1: to_stored(sha1),
            scram_sha256: to_stored(sha256),
            created_at: unix_now(),
        })
        .await?;
    Ok(())
}

fn to_stored(c: ScramCredentials) -> StoredScram {
    StoredScram {
        hash: hash_name(c.hash).to_owned(),
        salt: c.salt,
        iterations: c.iterations,
        stored_key: c.stored_key,
        server_key: c.server_key,
    }
}

/// The hash names used in [`StoredScram::hash`].
pub(crate) fn hash_name(hash: ScramHash) -> &'static str {
    match hash {
        ScramHash::Sha1 => "SHA-1",
        ScramHash::Sha256 => "SHA-256",
    }
}

/// Runs a PBKDF2-heavy closure on the blocking pool, at most [`KDF_CONCURRENCY`] at once.
/// The permit travels with the closure, so a cancelled request does not free its slot
/// before the computation really ends.
pub(crate) async fn run_kdf<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    let permit = KDF_SLOTS.acquire().await.map_err(|_| ApiError::Internal("KDF limiter closed".into()))?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f()
    })
    .await
    .map_err(|e| ApiError::Internal(format!("KDF task failed: {e}")))
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
