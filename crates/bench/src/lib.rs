//! The load generator's client code as a library, so that other harnesses (the chaos
//! tests) drive the same XMPP client instead of a copy of it: [`conn`] (TCP, TLS, SASL,
//! bind, a split reader and writer), [`sm`] (XEP-0198 counting) and [`http`] (the few
//! waddle API calls). The `waddle-bench` binary is a thin `main` over the rest.

pub mod args;
pub mod conn;
pub mod http;
pub mod measure;
pub mod scenarios;
pub mod sm;
pub mod tally;
