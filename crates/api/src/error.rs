//! [`ApiError`]: every failure of the HTTP API and of [`crate::create_account`], with its
//! stable snake_case code and HTTP status.

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use waddle_authz::AuthzError;
use waddle_storage::StorageError;

use crate::identity::IdentityError;

/// An API failure. Rendered as `{"error":{"code":"<code>","message":"..."}}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The username is not acceptable (`invalid_username`, 400).
    #[error("invalid username: {0}")]
    InvalidUsername(#[from] IdentityError),
    /// The password is too short, too long or contains forbidden characters
    /// (`weak_password`, 400).
    #[error("{0}")]
    WeakPassword(String),
    /// The username is taken (`account_exists`, 409).
    #[error("an account with this username already exists")]
    AccountExists,
    /// Wrong username or password (`invalid_credentials`, 401).
    #[error("invalid username or password")]
    InvalidCredentials,
    /// Too many failed attempts (`rate_limited`, 429, with `Retry-After`).
    #[error("too many failed attempts, retry in {} s", retry_after_secs(*retry_after))]
    RateLimited {
        /// How long until the next attempt may succeed.
        retry_after: Duration,
    },
    /// Too many accounts created from this address lately (`rate_limited`, 429, with
    /// `Retry-After`).
    #[error("too many accounts created from this address, retry in {} s", retry_after_secs(*retry_after))]
    TooManyAccounts {
        /// How long until the next creation may succeed.
        retry_after: Duration,
    },
    /// Missing, invalid or expired bearer token (`unauthorized`, 401, with
    /// `WWW-Authenticate: Bearer`).
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// The caller may not do this (`forbidden`, 403).
    #[error("{0}")]
    Forbidden(&'static str),
    /// Unknown route (`not_found`, 404).
    #[error("no such resource")]
    NotFound,
    /// Known route, wrong method (`method_not_allowed`, 405).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The body is not syntactically valid JSON (`invalid_json`, 400).
    #[error("{0}")]
    InvalidJson(String),
    /// The JSON does not have the expected shape, or a value in the request (body field or
    /// path segment) breaks a validation rule (`invalid_request`, 400).
    #[error("{0}")]
    InvalidRequest(String),
    /// A channel of that name already exists in the waddle (`channel_exists`, 409).
    #[error("a channel with this name already exists in the waddle")]
    ChannelExists,
    /// The waddle already has the maximum number of channels (`channel_limit`, 409).
    #[error("a waddle can have at most {0} channels")]
    ChannelLimit(usize),
    /// The owner of a waddle cannot leave it or be removed from it
    /// (`owner_cannot_leave`, 409).
    #[error("the owner cannot leave the waddle (delete it instead)")]
    OwnerCannotLeave,
    /// A permission tuple or check the schema refuses (`invalid_request`, 400), or a check
    /// that exceeded the depth limit (`internal_error`, 500).
    #[error("permission model: {0}")]
    Authz(#[from] AuthzError),
    /// The body is not declared as JSON (`unsupported_media_type`, 415).
    #[error("expected a JSON body (Content-Type: application/json)")]
    UnsupportedMediaType,
    /// The body is larger than allowed (`payload_too_large`, 413).
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The node is starting, stopping or its database is unreachable (`not_ready`, 503).
    #[error("not ready")]
    NotReady,
    /// A storage failure (`internal_error`, 500; details are logged, never sent).
    #[error("storage error: {0}")]
    Storage(StorageError),
    /// Any other server-side failure (`internal_error`, 500; details are logged only).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::AlreadyExists => ApiError::AccountExists,
            // A cluster partition recovering, or a write not durable: try again (503).
            StorageError::Unavailable(_) => ApiError::NotReady,
            other => ApiError::Storage(other),
        }
    }
}

fn retry_after_secs(d: Duration) -> u64 {
    // Round up, and never tell a client to retry "in 0 seconds".
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

impl ApiError {
    /// The stable machine-readable code sent in the error body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidUsername(_) => "invalid_username",
            ApiError::WeakPassword(_) => "weak_password",
            ApiError::AccountExists => "account_exists",
            ApiError::InvalidCredentials => "invalid_credentials",
            ApiError::RateLimited { .. } | ApiError::TooManyAccounts { .. } => "rate_limited",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::ChannelExists => "channel_exists",
            ApiError::ChannelLimit(_) => "channel_limit",
            ApiError::OwnerCannotLeave => "owner_cannot_leave",
            ApiError::Authz(AuthzError::DepthExceeded(_)) => "internal_error",
            ApiError::Authz(_) => "invalid_request",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::NotReady => "not_ready",
            ApiError::Storage(_) | ApiError::Internal(_) => "internal_error",
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidUsername(_)
            | ApiError::WeakPassword(_)
            | ApiError::InvalidJson(_)
            | ApiError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Authz(AuthzError::DepthExceeded(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Authz(_) => StatusCode::BAD_REQUEST,
            ApiError::AccountExists
            | ApiError::ChannelExists
            | ApiError::ChannelLimit(_)
            | ApiError::OwnerCannotLeave => StatusCode::CONFLICT,
            ApiError::InvalidCredentials | ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::RateLimited { .. } | ApiError::TooManyAccounts { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Storage(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The human-readable message sent to the client (server-side details withheld).
    fn public_message(&self) -> String {
        match self {
            ApiError::Storage(_) | ApiError::Internal(_) | ApiError::Authz(AuthzError::DepthExceeded(_)) => {
                "internal server error".to_owned()
            }
            other => other.to_string(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonSyntaxError(e) => ApiError::InvalidJson(format!("malformed JSON: {}", e.body_text())),
            JsonRejection::JsonDataError(e) => ApiError::InvalidRequest(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge(crate::MAX_BODY_BYTES)
            }
            other => ApiError::InvalidJson(other.body_text()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() && !matches!(self, ApiError::NotReady) {
            tracing::error!(error = %self, "HTTP API request failed");
        }
        let body = serde_json::json!({ "error": { "code": self.code(), "message": self.public_message() } });
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::RateLimited { retry_after } | ApiError::TooManyAccounts { retry_after } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs(*retry_after)));
            }
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(10)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(30)), 30);
    }

    #[test]
    fn storage_errors_map() {
        assert_eq!(ApiError::from(StorageError::AlreadyExists).code(), "account_exists");
        let e = ApiError::from(StorageError::Database("disk on fire".into()));
        assert_eq!(e.code(), "internal_error");
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.public_message().contains("disk"));
    }
}
