//! Client-to-server protocol logic, free of I/O.
//!
//! Owns stream negotiation (header checks, STARTTLS, SASL, in-band registration
//! requests, resource binding) as a sans-I/O state machine ([`Negotiator`]): the
//! connection shell feeds it parsed stream events and executes the [`Action`]s it
//! returns (send bytes, upgrade TLS, look up credentials, bind). Also owns the stanza
//! helpers every layer uses to build replies and errors ([`stanza`]).
//!
//! Must never: open sockets, touch storage, spawn tasks, or read the clock (callers pass
//! whatever time-dependent facts it needs).

pub mod csi;
pub mod negotiation;
pub mod ns;
pub mod rate;
pub mod sm;
pub mod stanza;
pub mod stream;
pub mod websocket;

pub use negotiation::{Action, AuthOutcome, CredentialsUnavailable, NegotiationConfig, Negotiator, RegisterOutcome};
