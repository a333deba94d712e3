//! Tests that need storage or several nodes.
