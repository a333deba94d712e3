//! Serialisation of stream-level elements: headers, features, stream errors. These are
//! written with the conventional `stream:` prefix because some clients match it
//! literally.

use waddle_xml::{escape_attr, Element};

use crate::ns;

/// `<?xml?><stream:stream ...>` response header.
pub fn header(domain: &str, stream_id: &str, lang: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='");
    escape_attr(stream_id, &mut out);
    out.extend_from_slice(b"' from='");
    escape_attr(domain, &mut out);
    out.extend_from_slice(b"' version='1.0' xml:lang='");
    escape_attr(lang.unwrap_or("en"), &mut out);
    out.extend_from_slice(b"'>");
    out
}

/// `<stream:features>` with the given children.
pub fn features(children: &[Element]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"<stream:features>");
    for c in children {
        c.write_to(&mut out, ns::CLIENT);
    }
    out.extend_from_slice(b"</stream:features>");
    out
}

/// A stream error followed by the closing tag (RFC 6120 §4.9). `condition` is one of the
/// defined conditions (e.g. `policy-violation`).
pub fn error(condition: &str, text: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(192);
    out.extend_from_slice(b"<stream:error>");
    Element::new(condition, ns::STREAM_ERRORS).write_to(&mut out, ns::CLIENT);
    if let Some(text) = text {
        Element::new("text", ns::STREAM_ERRORS).with_text(text).write_to(&mut out, ns::CLIENT);
    }
    out.extend_from_slice(b"</stream:error></stream:stream>");
    out
}

pub const CLOSE: &[u8] = b"</stream:stream>";

#[cfg(test)]
mod tests {
    use super::*;
    use waddle_xml::{Limits, StreamEvent, StreamParser};

    #[test]
    fn header_and_error_parse_back() {
        let mut bytes = header("example.org", "abc", None);
        bytes.extend(error("policy-violation", Some("stanza too large")));
        let mut p = StreamParser::new(Limits::default());
        p.feed(&bytes).unwrap_or_else(|e| panic!("{e}"));
        let Ok(Some(StreamEvent::Header(h))) = p.next_event() else { panic!("no header") };
        assert_eq!(h.attr("from"), Some("example.org"));
        let Ok(Some(StreamEvent::Stanza(err))) = p.next_event() else { panic!("no error") };
        assert!(err.is("error", ns::STREAM));
        assert!(err.has_child("policy-violation", ns::STREAM_ERRORS));
        assert_eq!(p.next_event(), Ok(Some(StreamEvent::Close)));
    }
}
