use super::*;
use crate::{stream, Action, AuthOutcome, NegotiationConfig, Negotiator};
use base64::Engine as _;
use waddle_xml::{Limits, StreamEvent, StreamParser, Unaddressed, NS_STREAM};

fn parse_stream(bytes: &[u8]) -> Vec<StreamEvent> {
    let mut p = StreamParser::new(Limits::default());
    p.feed(bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)));
    let mut events = Vec::new();
    while let Ok(Some(ev)) = p.next_event() {
        events.push(ev);
    }
    events
}

fn replaced(frame: &str) -> Vec<u8> {
    match translate_inbound(frame) {
        Ok(Inbound::Replace(bytes)) => bytes,
        other => panic!("{frame}: {other:?}"),
    }
}

fn frames_of(bytes: &[u8]) -> Vec<String> {
    let mut framer = OutboundFramer::new();
    let mut frames = Vec::new();
    framer.push(bytes, &mut frames).unwrap_or_else(|e| panic!("{e}"));
    assert!(framer.partial.is_empty(), "left over: {:?}", String::from_utf8_lossy(&framer.partial));
    frames
}

/// A frame read as the standalone XML document RFC 7395 makes it.
fn standalone(frame: &str) -> Element {
    Element::from_bytes(frame.as_bytes(), "").unwrap_or_else(|e| panic!("{e}: {frame}"))
}

#[test]
fn open_becomes_a_client_stream_header_with_its_attributes() {
    let header =
        replaced("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.org' version='1.0' xml:lang='de'/>");
    let events = parse_stream(&header);
    let [StreamEvent::Header(h)] = events.as_slice() else { panic!("{events:?}") };
    assert_eq!(h.default_ns, "jabber:client");
    assert!(h.stream_prefix_ok);
    assert_eq!(h.attr("to"), Some("example.org"));
    assert_eq!(h.attr("version"), Some("1.0"));
    assert_eq!(h.attr("xml:lang"), Some("de"));
}

#[test]
fn open_attribute_values_are_escaped_into_the_header() {
    // Decoded from the frame, then escaped again: a quote or markup in a value cannot
    // end the attribute or add one to the synthesized header.
    let header = replaced(
        r#"<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" to="a'b&amp;c&lt;d" version='1.0' evil="x' xmlns:stream='y"/>"#,
    );
    let events = parse_stream(&header);
    let [StreamEvent::Header(h)] = events.as_slice() else { panic!("{events:?}") };
    assert_eq!(h.attr("to"), Some("a'b&c<d"));
    assert_eq!(h.attr("evil"), Some("x' xmlns:stream='y"));
    assert!(h.stream_prefix_ok);
}

#[test]
fn close_becomes_the_stream_end_tag() {
    let mut bytes = replaced("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.org' version='1.0'/>");
    bytes.extend(replaced("<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>"));
    let events = parse_stream(&bytes);
    assert!(matches!(events.as_slice(), [StreamEvent::Header(_), StreamEvent::Close]), "{events:?}");
}

#[test]
fn stanzas_pass_through_and_white_space_frames_are_ignored() {
    assert_eq!(
        translate_inbound("<message xmlns='jabber:client' to='a@b'><body>hi</body></message>"),
        Ok(Inbound::PassThrough)
    );
    assert_eq!(translate_inbound("  <presence/>\n"), Ok(Inbound::PassThrough));
    assert_eq!(translate_inbound("<a x='>'><![CDATA[</a>]]></a>"), Ok(Inbound::PassThrough));
    assert_eq!(translate_inbound(""), Ok(Inbound::Nothing));
    assert_eq!(translate_inbound(" \r\n\t"), Ok(Inbound::Nothing));
}

#[test]
fn frames_that_are_not_one_element_are_refused() {
    for frame in [
        "hello",
        "<a/><b/>",
        "<a/>text",
        "<a>",
        "<a><b></a>",
        "</a>",
        "<?xml version='1.0'?><a/>",
        "<!-- c --><a/>",
        "<a><!-- c --></a>",
        "< a/>",
        "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='x'>",
        "</stream:stream>",
        "<a x='unterminated/>",
    ] {
        assert_eq!(translate_inbound(frame), Err(FrameError::NotOneElement), "{frame}");
    }
    assert_eq!(FrameError::NotOneElement.stream_condition(), "not-well-formed");
    assert_eq!(FrameError::Binary.stream_condition(), "not-well-formed");
    assert_eq!(FrameError::TooLarge { limit: 10 }.stream_condition(), "policy-violation");
}

#[test]
fn open_and_close_outside_the_framing_namespace_are_refused() {
    let err = translate_inbound("<open to='example.org' version='1.0'/>");
    assert_eq!(err, Err(FrameError::FramingNamespace("open")));
    assert_eq!(FrameError::FramingNamespace("open").stream_condition(), "invalid-namespace");
    assert_eq!(translate_inbound("<close xmlns='jabber:client'/>"), Err(FrameError::FramingNamespace("close")));
    assert_eq!(
        translate_inbound("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' a='1' a='2'/>"),
        Err(FrameError::BadOpen)
    );
}

#[test]
fn server_stream_becomes_one_frame_per_element() {
    let mut bytes = stream::header("example.org", "s1d", Some("en"));
    bytes.extend(stream::features(&[Element::new("bind", crate::ns::BIND)]));
    let iq = Element::new("iq", crate::ns::CLIENT).with_attr("type", "result").with_attr("id", "b1");
    iq.write_to(&mut bytes, crate::ns::CLIENT);
    bytes.extend(stream::error("policy-violation", Some("too big")));
    let frames = frames_of(&bytes);
    assert_eq!(frames.len(), 5, "{frames:?}");

    let open = standalone(&frames[0]);
    assert!(open.is("open", NS_FRAMING), "{}", frames[0]);
    assert_eq!(open.attr("from"), Some("example.org"));
    assert_eq!(open.attr("id"), Some("s1d"));
    assert_eq!(open.attr("version"), Some("1.0"));
    assert_eq!(open.attr("xml:lang"), Some("en"));
    assert!(!frames[0].contains("xmlns:stream") && !frames[0].contains("jabber:client"), "{}", frames[0]);

    let features = standalone(&frames[1]);
    assert!(features.is("features", NS_STREAM));
    assert!(features.has_child("bind", crate::ns::BIND));
    assert_eq!(standalone(&frames[2]), iq);
    let error = standalone(&frames[3]);
    assert!(error.is("error", NS_STREAM));
    assert!(error.has_child("policy-violation", crate::ns::STREAM_ERRORS));
    assert_eq!(frames[4], CLOSE_FRAME);
    assert!(standalone(&frames[4]).is("close", NS_FRAMING));
}

#[test]
fn elements_declaring_their_namespace_are_not_given_another() {
    let frames = frames_of(
        b"<enabled xmlns='urn:xmpp:sm:3' id='x'/><a h='3' xmlns='urn:xmpp:sm:3'/><r xmlns=\"urn:xmpp:sm:3\"/>",
    );
    assert_eq!(
        frames,
        ["<enabled xmlns='urn:xmpp:sm:3' id='x'/>", "<a h='3' xmlns='urn:xmpp:sm:3'/>", "<r xmlns=\"urn:xmpp:sm:3\"/>"]
    );
}

fn tricky_stanza() -> Element {
    Element::new("message", crate::ns::CLIENT)
        .with_attr("from", "a@example.org/r")
        .with_attr("id", "q'\"<>&x")
        .with_child(Element::new("body", crate::ns::CLIENT).with_text("a <b> & </message> \"'>"))
        .with_child(
            Element::new("message", "urn:example:nested")
                .with_child(Element::new("message", "urn:example:nested").with_attr("k", "/>")),
        )
        .with_child(Element::new("x", "urn:example:attrs").with_attr("{urn:example:other}y", "1"))
}

#[test]
fn stanzas_split_anywhere_come_out_as_the_same_frames() {
    let stanza = tricky_stanza();
    let mut bytes = stream::header("example.org", "id", None);
    for _ in 0..3 {
        stanza.write_to(&mut bytes, crate::ns::CLIENT);
    }
    bytes.extend_from_slice(stream::CLOSE);
    let whole = frames_of(&bytes);
    assert_eq!(whole.len(), 5, "{whole:?}");
    for frame in &whole[1..4] {
        assert_eq!(standalone(frame), stanza, "{frame}");
    }
    for step in [1, 2, 7, 64] {
        let mut framer = OutboundFramer::new();
        let mut frames = Vec::new();
        for piece in bytes.chunks(step) {
            framer.push(piece, &mut frames).unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(frames, whole, "pieces of {step}");
        assert!(framer.partial.is_empty() && framer.partial.capacity() == 0);
    }
}

#[test]
fn fanned_out_stanzas_get_their_namespace_too() {
    let stanza = tricky_stanza().with_attr("type", "groupchat");
    let shared = Unaddressed::new(&stanza, crate::ns::CLIENT);
    let mut bytes = Vec::new();
    shared.write_to("b@example.org/x", &mut bytes);
    let frames = frames_of(&bytes);
    let [frame] = frames.as_slice() else { panic!("{frames:?}") };
    let mut expected = stanza;
    expected.set_attr("to", "b@example.org/x");
    let got = standalone(frame);
    assert!(got.is("message", crate::ns::CLIENT));
    assert_eq!(got.attr("to"), Some("b@example.org/x"));
    assert_eq!(got.children().count(), expected.children().count());
}

#[test]
fn unframeable_output_is_an_error_not_a_bad_frame() {
    let mut frames = Vec::new();
    assert_eq!(OutboundFramer::new().push(b"text", &mut frames), Err(OutboundError::StrayText));
    assert_eq!(OutboundFramer::new().push(b"<a><!-- c --></a>", &mut frames), Err(OutboundError::Markup));
    assert!(frames.is_empty());
}

/// The negotiator runs unchanged behind the translation: a whole login (PLAIN, bind)
/// with frames in and frames out.
#[test]
fn a_login_through_the_translation() {
    let config = NegotiationConfig {
        domain: "example.org".into(),
        require_tls: true,
        starttls_available: false,
        in_band_registration: false,
        stream_management: true,
        max_auth_attempts: 3,
    };
    let mut negotiator = Negotiator::new(config, true);
    let mut parser = StreamParser::new(Limits::default());
    let mut framer = OutboundFramer::new();
    let open = "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.org' version='1.0'/>";
    let plain = base64::engine::general_purpose::STANDARD.encode(b"\0alice\0secret");
    let client_frames = [
        open.to_owned(),
        format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain}</auth>"),
        open.to_owned(),
        "<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>web</resource></bind></iq>".to_owned(),
    ];
    let mut server_frames = Vec::new();
    for frame in &client_frames {
        match translate_inbound(frame).unwrap_or_else(|e| panic!("{e}")) {
            Inbound::PassThrough => parser.feed(frame.as_bytes()),
            Inbound::Replace(bytes) => parser.feed(&bytes),
            Inbound::Nothing => Ok(()),
        }
        .unwrap_or_else(|e| panic!("{e}"));
        while let Ok(Some(event)) = parser.next_event() {
            let mut actions = std::collections::VecDeque::from(negotiator.on_event(event));
            while let Some(action) = actions.pop_front() {
                match action {
                    Action::Send(bytes) => framer.push(&bytes, &mut server_frames).unwrap_or_else(|e| panic!("{e}")),
                    Action::VerifyPlain { username, secret } => {
                        assert_eq!((username.as_str(), secret.as_str()), ("alice", "secret"));
                        actions.extend(negotiator.plain_verdict(AuthOutcome::Success));
                    }
                    Action::ResetParser => parser.reset(),
                    Action::Bind { username, resource } => {
                        actions.extend(negotiator.bound(&format!("{username}@example.org/{resource}")));
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    }
    assert!(negotiator.is_established());
    let names: Vec<String> = server_frames.iter().map(|f| standalone(f).name().to_owned()).collect();
    assert_eq!(names, ["open", "features", "success", "open", "features", "iq"], "{server_frames:?}");
    let mechanisms = standalone(&server_frames[1]);
    let offered: Vec<String> = mechanisms
        .get_child("mechanisms", crate::ns::SASL)
        .map(|m| m.children().map(Element::text).collect())
        .unwrap_or_default();
    assert!(offered.iter().any(|m| m == "PLAIN"), "{offered:?}");
    assert!(!server_frames[1].contains("starttls"), "no STARTTLS over WebSocket: {}", server_frames[1]);
    let bound = standalone(&server_frames[5]);
    assert!(bound.is("iq", crate::ns::CLIENT));
    let jid =
        bound.get_child("bind", crate::ns::BIND).and_then(|b| b.get_child("jid", crate::ns::BIND)).map(Element::text);
    assert_eq!(jid.as_deref(), Some("alice@example.org/web"));
}
