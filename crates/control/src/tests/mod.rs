//! Tests that need storage or several nodes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster;
mod storage;
mod util;
