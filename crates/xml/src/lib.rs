//! XML for XMPP (RFC 6120 §4 and §11): incremental stream framing, the element tree and
//! serialization.
//!
//! This crate owns:
//! - [`StreamParser`]: an I/O-free, incremental parser that turns the raw bytes of an XMPP
//!   stream into [`StreamEvent`]s (stream header, one complete [`Element`] per top-level
//!   stanza, stream close), with full namespace resolution, the restrictions of RFC 6120
//!   §11 (no comments, processing instructions, DTDs or entity declarations) and hard
//!   limits on stanza size, header size and nesting depth.
//! - [`Element`]/[`Node`]/[`Attr`]: the in-memory element tree.
//! - Serialization ([`Element::write_to`], [`escape_text`], [`escape_attr`]).
//!
//! Besides its unit tests (`tests.rs`), randomized tests (`fuzz.rs`) check the parser on
//! random and mutated bytes in any split into reads, on generated valid streams and
//! limits, and serialization round trips: a few hundred seeded cases per property in
//! `cargo test`, longer with `WADDLE_FUZZ_SECS=N` (seconds per property) or
//! `WADDLE_FUZZ_CASES=N`; `WADDLE_FUZZ_SEED` replays a reported case (docs/fuzzing.md).
//!
//! It must never do I/O (callers feed it bytes and write the bytes it produces) and has
//! no knowledge of stanza semantics (JIDs, stanza types, routing, errors beyond the
//! XML-level stream error condition in [`XmlError::stream_condition`]).

mod element;
mod error;
mod escape;
mod parser;
mod text;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;

pub use element::{Attr, Element, Node, Unaddressed};
pub use error::XmlError;
pub use escape::{escape_attr, escape_text};
pub use parser::{Limits, StreamEvent, StreamHeader, StreamParser};

/// Default namespace of client-to-server streams.
pub const NS_CLIENT: &str = "jabber:client";
/// Default namespace of server-to-server streams.
pub const NS_SERVER: &str = "jabber:server";
/// Namespace of the `<stream:stream>` element and of `<stream:features>`/`<stream:error>`.
pub const NS_STREAM: &str = "http://etherx.jabber.org/streams";
/// Namespace bound to the predefined `xml:` prefix.
pub const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";
/// Namespace of `xmlns` declarations themselves (never bindable).
pub(crate) const NS_XMLNS: &str = "http://www.w3.org/2000/xmlns/";
