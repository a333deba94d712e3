//! Route handlers, extractors and the router.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, MethodRouter};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use waddle_sasl::{LoginDecision, ScramCredentials, ScramHash};
use waddle_storage::{StoredScram, TokenKind};

use crate::{identity, openapi, unix_now, waddles, ApiError, ApiState, MAX_BODY_BYTES, MAX_PASSWORD_BYTES};

/// Every route: (method, path, handler). The router is built from this table, and the
/// OpenAPI document is tested against it.
pub(crate) fn route_table() -> Vec<(&'static str, &'static str, MethodRouter<ApiState>)> {
    vec![
        ("POST", "/v1/accounts", post(create_account)),
        ("POST", "/auth/session", post(session)),
        ("POST", "/auth/xmpp-token", post(xmpp_token)),
        ("GET", "/health", get(health)),
        ("GET", "/ready", get(ready)),
        ("GET", "/openapi.json", get(openapi)),
        ("POST", "/v1/waddles", post(waddles::create_waddle)),
        ("GET", "/v1/waddles", get(waddles::list_waddles)),
        ("GET", "/v1/waddles/{id}", get(waddles::get_waddle)),
        ("PATCH", "/v1/waddles/{id}", patch(waddles::patch_waddle)),
        ("DELETE", "/v1/waddles/{id}", delete(waddles::delete_waddle)),
        ("GET", "/v1/waddles/{id}/members", get(waddles::list_members)),
        ("POST", "/v1/waddles/{id}/members", post(waddles::add_member)),
        ("DELETE", "/v1/waddles/{id}/members/{user}", delete(waddles::remove_member)),
        ("POST", "/v1/waddles/{id}/channels", post(waddles::create_channel_route)),
        ("GET", "/v1/waddles/{id}/channels", get(waddles::list_channels)),
        ("GET", "/v1/channels/{id}", get(waddles::get_channel)),
        ("PATCH", "/v1/channels/{id}", patch(waddles::patch_channel)),
        ("DELETE", "/v1/channels/{id}", delete(waddles::delete_channel)),
        ("POST", "/v1/permissions/check", post(waddles::check_permission)),
    ]
}

pub(crate) fn router(state: ApiState) -> Router {
    route_table()
        .into_iter()
        .fold(Router::new(), |router, (_, path, handler)| router.route(path, handler))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(reject_oversized))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

// ---------------------------------------------------------------------------------------
// Extractors

/// `axum::Json`, with rejections turned into the JSON error envelope.
pub(crate) struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(rejection.into()),
        }
    }
}

/// The peer address, when the server was started with connect info. Proxy headers
/// (`X-Forwarded-For`) are deliberately not trusted.
pub(crate) struct ClientIp(Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip())))
    }
}

/// The token of an `Authorization: Bearer <token>` header, if well formed.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Constant-time comparison of two secrets; hashing first hides their lengths too.
fn secrets_equal(a: &str, b: &str) -> bool {
    bool::from(Sha256::digest(a.as_bytes()).ct_eq(&Sha256::digest(b.as_bytes())))
}

// ---------------------------------------------------------------------------------------
// Middleware and fallbacks

/// Refuses a declared `Content-Length` above the limit before any handler runs (bodies
/// without a length are cut off by `DefaultBodyLimit` in the JSON extractor).
async fn reject_oversized(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return ApiError::PayloadTooLarge(MAX_BODY_BYTES).into_response();
    }
    next.run(req).await
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

// ---------------------------------------------------------------------------------------
// Probes

async fn openapi() -> Response {
    let mut response = Json(openapi::document()).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    response
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn ready(State(state): State<ApiState>) -> Result<Json<serde_json::Value>, ApiError> {
    if !state.ready.load(Ordering::SeqCst) {
        return Err(ApiError::NotReady);
    }
    if let Err(e) = state.store.ping().await {
        tracing::warn!(error = %e, "readiness probe: database unavailable");
        return Err(ApiError::NotReady);
    }
    Ok(Json(serde_json::json!({ "status": "ready" })))
}

// ---------------------------------------------------------------------------------------
// Accounts

/// `{"username","password"}`. No `Debug`: it carries a password.
#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

#[derive(Serialize)]
struct AccountCreated {
    username: String,
    jid: String,
}

async fn create_account(
    State(state): State<ApiState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Result<ApiJson<Credentials>, ApiError>,
) -> Result<(StatusCode, Json<AccountCreated>), ApiError> {
    let admin = authorize_registration(&state, ip, &headers)?;
    let ApiJson(creds) = body?;
    let config = &state.config;
    let username = identity::validate_new_username(&creds.username)?;
    if creds.password.chars().count() < config.min_password_len {
        return Err(ApiError::WeakPassword(format!(
            "password must be at least {} characters",
            config.min_password_len
        )));
    }
    if creds.password.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::WeakPassword(format!("password must be at most {MAX_PASSWORD_BYTES} bytes")));
    }
    // The admin token is how operators (and provisioning scripts) create accounts in
    // bulk; everyone else gets a few per address and window, shared with in-band
    // registration.
    let limited_ip = ip.filter(|_| !admin).map(|ip| ip.to_string());
    if let Some(ip) = &limited_ip {
        let mut limiter = state.registration_limiter.lock().unwrap_or_else(|e| e.into_inner());
        limiter.check(ip, Instant::now()).map_err(|retry_after| ApiError::TooManyAccounts { retry_after })?;
    }
    crate::create_account(state.accounts.as_ref(), &username, &creds.password, config.scram_iterations).await?;
    if let Some(ip) = &limited_ip {
        state.registration_limiter.lock().unwrap_or_else(|e| e.into_inner()).record_failure(ip, Instant::now());
    }
    tracing::info!(user = %username, "account created over HTTP");
    let jid = format!("{username}@{}", config.domain);
    Ok((StatusCode::CREATED, Json(AccountCreated { username, jid })))
}

/// Open registration lets anyone in; otherwise the admin bearer token is required.
/// Returns whether the admin token was presented (and right). Wrong admin tokens on a
/// closed node count as authentication failures of the client address.
fn authorize_registration(state: &ApiState, ip: Option<IpAddr>, headers: &HeaderMap) -> Result<bool, ApiError> {
    let admin = state.config.admin_token.as_deref();
    let presented = bearer(headers);
    if state.config.open_registration {
        return Ok(matches!((admin, presented), (Some(a), Some(p)) if secrets_equal(a, p)));
    }
    let (Some(admin), Some(presented)) = (admin, presented) else {
        return Err(ApiError::Forbidden("registration is closed"));
    };
    let ip_key = ip.map(|ip| ip.to_string());
    let now = Instant::now();
    let mut limiter = state.auth_limiter.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(key) = &ip_key {
        limiter.check_address(key, now).map_err(|retry_after| ApiError::RateLimited { retry_after })?;
    }
    if secrets_equal(admin, presented) {
        return Ok(true);
    }
    if let Some(key) = &ip_key {
        limiter.record_address_failure(key, now);
    }
    Err(ApiError::Forbidden("registration is closed"))
}

// ---------------------------------------------------------------------------------------
// Sessions and tokens

#[derive(Serialize)]
struct SessionIssued {
    token: String,
    token_type: &'static str,
    expires_at: String,
    jid: String,
}

#[derive(Serialize)]
struct XmppTokenIssued {
    jid: String,
    token: String,
    expires_at: String,
    xmpp_host: String,
    xmpp_port: u16,
    websocket_url: String,
}

/// Adds `Cache-Control: no-store`: responses carrying secrets must not be cached.
fn no_store<T: IntoResponse>(body: T) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub(crate) fn rfc3339(unix: i64) -> Result<String, ApiError> {
    OffsetDateTime::from_unix_timestamp(unix)
        .map_err(|e| ApiError::Internal(format!("expiry out of range: {e}")))?
        .format(&Rfc3339)
        .map_err(|e| ApiError::Internal(format!("cannot format expiry: {e}")))
}

fn to_credentials(s: StoredScram) -> Option<ScramCredentials> {
    let hash = match s.hash.as_str() {
        "SHA-256" => ScramHash::Sha256,
        "SHA-1" => ScramHash::Sha1,
        _ => return None,
    };
    Some(ScramCredentials {
        hash,
        salt: s.salt,
        iterations: s.iterations,
        stored_key: s.stored_key,
        server_key: s.server_key,
    })
}

async fn session(
    State(state): State<ApiState>,
    ClientIp(ip): ClientIp,
    ApiJson(creds): ApiJson<Credentials>,
) -> Result<Response, ApiError> {
    let username = identity::validate_username(&creds.username).ok();
    let address = ip.map(|ip| ip.to_string());
    let decision = state.auth_limiter.lock().unwrap_or_else(|e| e.into_inner()).check(
        username.as_deref(),
        address.as_deref(),
        Instant::now(),
    );
    match decision {
        LoginDecision::Allow => {}
        // The account is under attack from elsewhere: slow down, but still check, so the
        // owner's right password from a clean address gets in.
        LoginDecision::Delay(d) => tokio::time::sleep(d).await,
        LoginDecision::Block(retry_after) => return Err(ApiError::RateLimited { retry_after }),
    }

    let account = match &username {
        Some(u) => state.accounts.account(u).await?,
        None => None,
    };
    let verified = match (account, creds.password.len() <= MAX_PASSWORD_BYTES) {
        (Some(account), true) => match to_credentials(account.scram_sha256) {
            Some(stored) => {
                let password = creds.password;
                crate::run_kdf(move || stored.verify_password(&password)).await?
            }
            None => {
                tracing::error!(user = %account.username, "stored SCRAM-SHA-256 credential has an unknown hash name");
                false
            }
        },
        (None, true) => {
            // Same work as a real check, so response time does not reveal whether the
            // account exists.
            let (password, iterations) = (creds.password, state.config.scram_iterations);
            crate::run_kdf(move || ScramCredentials::generate(ScramHash::Sha256, &password, iterations).is_err())
                .await?;
            false
        }
        (_, false) => false,
    };

    let Some(username) = username.as_ref().filter(|_| verified) else {
        state.auth_limiter.lock().unwrap_or_else(|e| e.into_inner()).record_failure(
            username.as_deref(),
            address.as_deref(),
            Instant::now(),
        );
        return Err(ApiError::InvalidCredentials);
    };
    state.auth_limiter.lock().unwrap_or_else(|e| e.into_inner()).record_success(username, address.as_deref());

    let expires_at = unix_now().saturating_add(state.config.session_ttl_secs);
    let token = state.accounts.issue_token(TokenKind::HttpSession, username, expires_at).await?;
    tracing::info!(user = %username, "HTTP session opened");
    Ok(no_store(Json(SessionIssued {
        token,
        token_type: "Bearer",
        expires_at: rfc3339(expires_at)?,
        jid: format!("{username}@{}", state.config.domain),
    })))
}

async fn xmpp_token(State(state): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let presented = bearer(&headers).ok_or(ApiError::Unauthorized)?;
    let now = unix_now();
    let session =
        state.accounts.lookup_token(TokenKind::HttpSession, presented, now).await?.ok_or(ApiError::Unauthorized)?;
    let expires_at = now.saturating_add(state.config.xmpp_token_ttl_secs);
    let token =
        state.accounts.issue_token(TokenKind::Xmpp, &session.username, expires_at).await.map_err(|e| match e {
            // The account was deleted between the lookup and now.
            waddle_storage::StorageError::NotFound => ApiError::Unauthorized,
            other => other.into(),
        })?;
    let config = &state.config;
    Ok(no_store(Json(XmppTokenIssued {
        jid: format!("{}@{}", session.username, config.domain),
        token,
        expires_at: rfc3339(expires_at)?,
        xmpp_host: config.xmpp_host.clone(),
        xmpp_port: config.xmpp_port,
        websocket_url: config.websocket_url.clone(),
    })))
}
