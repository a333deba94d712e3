//! SASL for waddle (RFC 4422 as profiled by RFC 6120 §6).
//!
//! This crate owns:
//! - the SCRAM-SHA-1 and SCRAM-SHA-256 mechanisms (RFC 5802, RFC 7677) without channel
//!   binding: the server side ([`ScramServer`]) and a client side ([`ScramClient`], for
//!   tests and the load generator);
//! - PLAIN message parsing (RFC 4616, [`parse_plain`]);
//! - credential derivation and password checking ([`ScramCredentials`]), including a
//!   minimal SASLprep ([`saslprep()`]; no NFKC, see its module docs);
//! - the authentication failure limiters ([`FailureLimiter`], and [`LoginLimiter`] built
//!   on it: per address, per account and address, and an account-wide backoff);
//! - the mapping of every error to its RFC 6120 §6.5 failure condition
//!   ([`SaslError::condition`]).
//!
//! It never does I/O or storage: callers pass in decoded message bytes, looked-up
//! credentials and the current time, and send or store what they get back. Passwords
//! are never kept in clear: the server side only ever sees salted StoredKey/ServerKey
//! ([`ScramCredentials`]); a clear password passes through only transiently (a parsed
//! PLAIN message, [`ScramCredentials::derive`], [`ScramCredentials::verify_password`],
//! and the client side of SCRAM).

mod attrs;
mod client;
mod credentials;
mod error;
mod hash;
mod limiter;
mod plain;
pub mod saslprep;
mod server;

pub use client::{SaltedPassword, ScramClient};
pub use credentials::{ScramCredentials, DEFAULT_ITERATIONS, SALT_LEN};
pub use error::SaslError;
pub use hash::ScramHash;
pub use limiter::{FailureLimiter, LoginDecision, LoginLimiter, FIRST_ACCOUNT_DELAY, MAX_ACCOUNT_DELAY};
pub use plain::{parse_plain, PlainCredentials};
pub use saslprep::saslprep;
pub use server::{ClientFirst, ScramServer};
