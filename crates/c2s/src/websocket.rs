//! XMPP over WebSocket (RFC 7395) as a translation at the transport boundary, free of I/O.
//!
//! A WebSocket session runs the very same negotiator, parser and session task as a TCP
//! one: [`translate_inbound`] turns each text frame into the bytes of an RFC 6120 stream
//! (an `<open/>` becomes a `<stream:stream>` header, `<close/>` becomes
//! `</stream:stream>`, a stanza passes through untouched), and [`OutboundFramer`] cuts
//! the server's RFC 6120 byte stream back into frames, one top-level element each, with
//! the header and end tag turned into `<open/>` and `<close/>` and every frame's root
//! carrying the namespace declarations the stream header carried on TCP (RFC 7395
//! §3.3.3). Everything above the transport (SASL, bind, limits, stream management,
//! CSI) therefore behaves identically on both.
//!
//! The outbound side only ever sees what this server serialized, but stays correct for
//! any well-formed input that avoids comments and processing instructions inside
//! elements; the inbound side checks only the framing rule (exactly one element per
//! frame) and leaves well-formedness and limits to the stream parser downstream.

use waddle_xml::{escape_attr, Element};

/// Namespace of `<open/>` and `<close/>` (RFC 7395 §3.3.2).
pub const NS_FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";

/// The WebSocket subprotocol a client must offer (RFC 7395 §3.1).
pub const SUBPROTOCOL: &str = "xmpp";

/// `<close/>` as the server sends it.
pub const CLOSE_FRAME: &str = "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>";

/// Why a client's frame cannot be part of an XMPP stream. Each maps to the stream error
/// the client gets before the stream is closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("binary frames are not XMPP: RFC 7395 carries each XML element in a text frame")]
    Binary,
    #[error("a WebSocket frame must hold exactly one complete XML element (RFC 7395 §3.3.1)")]
    NotOneElement,
    #[error("frame larger than the {limit} bytes a stanza may have")]
    TooLarge { limit: usize },
    #[error("<{0}/> must be in the namespace urn:ietf:params:xml:ns:xmpp-framing (RFC 7395 §3.3.2)")]
    FramingNamespace(&'static str),
    #[error("the <open/> or <close/> frame is not well-formed XML")]
    BadOpen,
}

impl FrameError {
    /// The RFC 6120 §4.9.3 stream error condition to send.
    pub fn stream_condition(&self) -> &'static str {
        match self {
            FrameError::Binary | FrameError::NotOneElement | FrameError::BadOpen => "not-well-formed",
            FrameError::TooLarge { .. } => "policy-violation",
            FrameError::FramingNamespace(_) => "invalid-namespace",
        }
    }
}

/// What the parser gets for one text frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// The frame's own bytes (a stanza or nonza).
    PassThrough,
    /// These bytes instead of the frame: a synthesized stream header or end tag.
    Replace(Vec<u8>),
    /// Nothing: the frame held only white space.
    Nothing,
}

/// Translates one text frame from the client (see the module documentation).
pub fn translate_inbound(frame: &str) -> Result<Inbound, FrameError> {
    let bytes = frame.as_bytes();
    let start = bytes.iter().position(|b| !is_ws(*b));
    let Some(start) = start else {
        return Ok(Inbound::Nothing);
    };
    let end = bytes.iter().rposition(|b| !is_ws(*b)).map_or(bytes.len(), |i| i + 1);
    let element = &bytes[start..end];
    if element_len(element) != Ok(Some(element.len())) {
        return Err(FrameError::NotOneElement);
    }
    let name = match tag_name(element) {
        b"open" => "open",
        b"close" => "close",
        _ => return Ok(Inbound::PassThrough),
    };
    // Only these two frames are parsed here (twice per stream), to read their
    // namespace and attributes properly.
    let el = Element::from_bytes(element, "").map_err(|_| FrameError::BadOpen)?;
    if el.ns() != NS_FRAMING {
        return Err(FrameError::FramingNamespace(name));
    }
    if name == "close" {
        return Ok(Inbound::Replace(b"</stream:stream>".to_vec()));
    }
    Ok(Inbound::Replace(stream_header_for(&el)))
}

/// The RFC 6120 stream header an `<open/>` stands for: its attributes (`to`, `version`,
/// `xml:lang`, ...) on a `jabber:client` stream.
fn stream_header_for(open: &Element) -> Vec<u8> {
    let mut out = Vec::with_capacity(192);
    out.extend_from_slice(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'");
    for attr in open.attrs() {
        let name = attr.name.as_str();
        if name == "xmlns" || name.starts_with("xmlns:") {
            continue;
        }
        // Names in other namespaces (`{uri}local`) mean nothing on a stream header;
        // `xml:lang` is named as written.
        if name.starts_with('{') {
            continue;
        }
        out.push(b' ');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"='");
        escape_attr(&attr.value, &mut out);
        out.push(b'\'');
    }
    out.push(b'>');
    out
}

/// Why the server's own output could not be framed (a bug on our side, never input).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    #[error("text outside any element at stream level")]
    StrayText,
    #[error("unsupported markup in outbound XML")]
    Markup,
    #[error("outbound XML is not UTF-8")]
    Utf8,
}

/// Cuts the server's RFC 6120 byte stream into RFC 7395 frames. Bytes may arrive in any
/// pieces; an element split across pushes waits for its end.
#[derive(Debug, Default)]
pub struct OutboundFramer {
    /// The start of an element whose end has not arrived yet.
    partial: Vec<u8>,
}

impl OutboundFramer {
    pub fn new() -> OutboundFramer {
        OutboundFramer::default()
    }

    /// Appends the frames completed by `bytes` to `frames`, in order.
    pub fn push(&mut self, bytes: &[u8], frames: &mut impl Extend<String>) -> Result<(), OutboundError> {
        if self.partial.is_empty() {
            let used = frame_all(bytes, frames)?;
            self.partial.extend_from_slice(&bytes[used..]);
        } else {
            self.partial.extend_from_slice(bytes);
            let used = frame_all(&self.partial, frames)?;
            self.partial.drain(..used);
        }
        if self.partial.is_empty() {
            // Usually everything is framed: hold no buffer between writes.
            self.partial = Vec::new();
        }
        Ok(())
    }
}

/// Frames every complete top-level unit of `bytes`; how many bytes were used.
fn frame_all(bytes: &[u8], frames: &mut impl Extend<String>) -> Result<usize, OutboundError> {
    let mut pos = 0;
    loop {
        while pos < bytes.len() && is_ws(bytes[pos]) {
            pos += 1;
        }
        let rest = &bytes[pos..];
        if rest.is_empty() {
            return Ok(pos);
        }
        if rest[0] != b'<' {
            return Err(OutboundError::StrayText);
        }
        match rest.get(1) {
            None => return Ok(pos),
            // The XML declaration of a stream header has no place in a frame.
            Some(b'?') => match find(rest, b"?>") {
                Some(i) => pos += i + 2,
                None => return Ok(pos),
            },
            Some(b'/') => match find(rest, b">") {
                // The only end tag at stream level is the stream's own.
                Some(i) => {
                    frames.extend([CLOSE_FRAME.to_owned()]);
                    pos += i + 1;
                }
                None => return Ok(pos),
            },
            Some(_) => {
                let Some(tag_end) = start_tag_end(rest).map_err(|()| OutboundError::Markup)? else {
                    return Ok(pos);
                };
                let tag = &rest[..tag_end];
                if tag_name(tag) == b"stream:stream" && !tag.ends_with(b"/>") {
                    frames.extend([open_frame(tag)?]);
                    pos += tag_end;
                    continue;
                }
                let Some(len) = element_len(rest).map_err(|()| OutboundError::Markup)? else {
                    return Ok(pos);
                };
                frames.extend([element_frame(&rest[..len], tag_end)?]);
                pos += len;
            }
        }
    }
}

/// `<open/>` from a `<stream:stream ...>` start tag: its attributes but no namespace
/// declarations (RFC 7395 §3.3.2).
fn open_frame(tag: &[u8]) -> Result<String, OutboundError> {
    let mut out = Vec::with_capacity(tag.len() + 32);
    out.extend_from_slice(b"<open xmlns='");
    out.extend_from_slice(NS_FRAMING.as_bytes());
    out.push(b'\'');
    for (name, raw) in Attrs::new(tag) {
        if name == b"xmlns" || name.starts_with(b"xmlns:") {
            continue;
        }
        // The raw text keeps its quotes and escapes, so it stays well-formed.
        out.push(b' ');
        out.extend_from_slice(raw);
    }
    out.extend_from_slice(b"/>");
    String::from_utf8(out).map_err(|_| OutboundError::Utf8)
}

/// One element as a frame: its root declares the namespaces it relied on the stream
/// header for (`jabber:client` as default, the `stream` prefix).
fn element_frame(element: &[u8], tag_end: usize) -> Result<String, OutboundError> {
    let tag = &element[..tag_end];
    let name = tag_name(tag);
    let declaration: &[u8] = if name.starts_with(b"stream:") {
        if Attrs::new(tag).any(|(n, _)| n == b"xmlns:stream") {
            b""
        } else {
            b" xmlns:stream='http://etherx.jabber.org/streams'"
        }
    } else if Attrs::new(tag).any(|(n, _)| n == b"xmlns") {
        b""
    } else {
        b" xmlns='jabber:client'"
    };
    let mut out = Vec::with_capacity(element.len() + declaration.len());
    let name_end = 1 + name.len();
    out.extend_from_slice(&element[..name_end]);
    out.extend_from_slice(declaration);
    out.extend_from_slice(&element[name_end..]);
    String::from_utf8(out).map_err(|_| OutboundError::Utf8)
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The qualified name of the tag that starts `bytes` (after `<` or `</`).
fn tag_name(bytes: &[u8]) -> &[u8] {
    let from = if bytes.starts_with(b"</") { 2 } else { 1.min(bytes.len()) };
    let rest = &bytes[from..];
    let len = rest.iter().position(|b| is_ws(*b) || *b == b'/' || *b == b'>').unwrap_or(rest.len());
    &rest[..len]
}

/// Length of the start tag at the start of `bytes` (through its `>`), `Ok(None)` if it
/// has not ended yet. Quotes are honoured: attribute values may hold `>`.
fn start_tag_end(bytes: &[u8]) -> Result<Option<usize>, ()> {
    let mut quote = None;
    for (i, &b) in bytes.iter().enumerate().skip(1) {
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'\'' || b == b'"' => quote = Some(b),
            None if b == b'<' => return Err(()),
            None if b == b'>' => return Ok(Some(i + 1)),
            None => {}
        }
    }
    Ok(None)
}

/// Length of the element that starts `bytes` (which must start with `<` and a name),
/// `Ok(None)` if it has not ended yet, `Err` for anything that is not an element or for
/// comments and processing instructions. Only structure is checked: names of end tags
/// and everything else are the parser's business.
fn element_len(bytes: &[u8]) -> Result<Option<usize>, ()> {
    if bytes.len() < 2 || bytes[0] != b'<' || matches!(bytes[1], b'/' | b'!' | b'?') || is_ws(bytes[1]) {
        return Err(());
    }
    let mut depth = 0usize;
    let mut pos = 0;
    while pos < bytes.len() {
        if bytes[pos] != b'<' {
            match bytes[pos..].iter().position(|b| *b == b'<') {
                Some(i) => pos += i,
                None => return Ok(None),
            }
            continue;
        }
        let rest = &bytes[pos..];
        if rest.starts_with(b"</") {
            let Some(i) = rest.iter().position(|b| *b == b'>') else { return Ok(None) };
            depth = depth.checked_sub(1).ok_or(())?;
            pos += i + 1;
            if depth == 0 {
                return Ok(Some(pos));
            }
        } else if rest.starts_with(b"<![CDATA[") {
            let Some(i) = find(rest, b"]]>") else { return Ok(None) };
            pos += i + 3;
        } else if rest.len() < 9 && b"<![CDATA[".starts_with(rest) {
            return Ok(None);
        } else if matches!(rest.get(1), Some(b'!' | b'?')) {
            return Err(());
        } else {
            let Some(i) = start_tag_end(rest)? else { return Ok(None) };
            pos += i;
            if rest[i - 2] == b'/' {
                if depth == 0 {
                    return Ok(Some(pos));
                }
            } else {
                depth += 1;
            }
        }
    }
    Ok(None)
}

/// The attributes of a complete start tag: (name, raw `name='value'` text).
struct Attrs<'a> {
    tag: &'a [u8],
    pos: usize,
}

impl<'a> Attrs<'a> {
    fn new(tag: &'a [u8]) -> Attrs<'a> {
        Attrs { tag, pos: 1 + tag_name(tag).len() }
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let tag = self.tag;
        while self.pos < tag.len() && is_ws(tag[self.pos]) {
            self.pos += 1;
        }
        let start = self.pos;
        let eq = start + tag.get(start..)?.iter().position(|b| *b == b'=')?;
        let name_end = start + tag[start..eq].iter().position(|b| is_ws(*b)).unwrap_or(eq - start);
        let open = eq + 1 + tag.get(eq + 1..)?.iter().position(|b| *b == b'\'' || *b == b'"')?;
        let quote = tag[open];
        let close = open + 1 + tag.get(open + 1..)?.iter().position(|b| *b == quote)?;
        self.pos = close + 1;
        Some((&tag[start..name_end], &tag[start..=close]))
    }
}

#[cfg(test)]
mod tests;
