#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::*;

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
     xmlns:stream='http://etherx.jabber.org/streams' to='example.org' version='1.0' \
     xml:lang='en'>";

type Outcome = (Vec<StreamEvent>, Option<XmlError>);

/// Feed `chunks` one after the other, pulling all events after each.
fn run_chunks<'a>(limits: Limits, chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut p = StreamParser::new(limits);
    let mut events = Vec::new();
    for chunk in chunks {
        if let Err(e) = p.feed(chunk) {
            return (events, Some(e));
        }
        loop {
            match p.next_event() {
                Ok(Some(ev)) => events.push(ev),
                Ok(None) => break,
                Err(e) => return (events, Some(e)),
            }
        }
    }
    (events, None)
}

fn run(doc: &[u8]) -> Outcome {
    run_chunks(Limits::default(), [doc])
}

fn run_bytewise(limits: Limits, doc: &[u8]) -> Outcome {
    run_chunks(limits, doc.chunks(1))
}

/// Tiny deterministic PRNG (xorshift64*) for random splits.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn random_splits(doc: &[u8], seed: u64, max: usize) -> Vec<&[u8]> {
    let mut rng = Rng(seed | 1);
    let mut out = Vec::new();
    let mut i = 0;
    while i < doc.len() {
        let n = 1 + (rng.next() as usize) % max;
        let j = (i + n).min(doc.len());
        out.push(&doc[i..j]);
        i = j;
    }
    out
}

/// Parse whole, byte by byte and in random splits; all must agree.
fn run_all_ways(limits: Limits, doc: &[u8]) -> Outcome {
    let whole = run_chunks(limits, [doc]);
    assert_eq!(run_bytewise(limits, doc), whole, "byte-wise differs for {:?}", String::from_utf8_lossy(doc));
    for seed in 1..20u64 {
        for max in [2, 3, 7, 64] {
            assert_eq!(
                run_chunks(limits, random_splits(doc, seed * 7919 + max as u64, max)),
                whole,
                "split (seed {seed}, max {max}) differs for {:?}",
                String::from_utf8_lossy(doc)
            );
        }
    }
    whole
}

fn doc(body: &str) -> Vec<u8> {
    format!("{HEADER}{body}").into_bytes()
}

fn stanzas(events: &[StreamEvent]) -> Vec<&Element> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Stanza(el) => Some(el),
            _ => None,
        })
        .collect()
}

fn only_stanza(body: &str) -> Element {
    let (events, err) = run_all_ways(Limits::default(), &doc(body));
    assert_eq!(err, None, "unexpected error for {body}");
    let s = stanzas(&events);
    assert_eq!(s.len(), 1, "expected one stanza in {body}");
    s[0].clone()
}

fn error_of(body: &str) -> XmlError {
    let (_, err) = run_all_ways(Limits::default(), &doc(body));
    err.unwrap_or_else(|| panic!("expected an error for {body:?}"))
}

fn parse_el(s: &str) -> Element {
    Element::from_bytes(s.as_bytes(), NS_CLIENT).unwrap()
}

// ---------------------------------------------------------------- header

#[test]
fn header_with_xml_decl() {
    let (events, err) = run_all_ways(Limits::default(), HEADER.as_bytes());
    assert_eq!(err, None);
    let [StreamEvent::Header(h)] = events.as_slice() else { panic!("{events:?}") };
    assert_eq!(h.attr("to"), Some("example.org"));
    assert_eq!(h.attr("version"), Some("1.0"));
    assert_eq!(h.attr("xml:lang"), Some("en"));
    assert_eq!(h.attr("xmlns"), None);
    assert_eq!(h.attrs.len(), 3);
    assert_eq!(h.default_ns, NS_CLIENT);
    assert!(h.stream_prefix_ok);
}

#[test]
fn header_without_decl_double_quotes_and_bom() {
    let d = b"\xEF\xBB\xBF\n<stream:stream xmlns=\"jabber:server\" \
              xmlns:stream=\"http://etherx.jabber.org/streams\" from=\"a.example\" \
              version=\"1.0\" >";
    let (events, err) = run_all_ways(Limits::default(), d);
    assert_eq!(err, None);
    let [StreamEvent::Header(h)] = events.as_slice() else { panic!("{events:?}") };
    assert_eq!(h.default_ns, NS_SERVER);
    assert_eq!(h.attr("from"), Some("a.example"));
    assert_eq!(h.attr("to"), None);
}

#[test]
fn header_full_xml_decl() {
    let d = "<?xml version=\"1.0\" encoding=\"utf-8\" standalone='yes' ?>\
             <stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";
    let (events, err) = run_all_ways(Limits::default(), d.as_bytes());
    assert_eq!(err, None);
    assert_eq!(events.len(), 1);
    let bad_enc = "<?xml version='1.0' encoding='ISO-8859-1'?><stream:stream/>";
    let (_, err) = run(bad_enc.as_bytes());
    assert_eq!(err.map(|e| e.stream_condition()), Some("unsupported-encoding"));
    for bad in [
        "<?xml?><a/>",
        "<?xml encoding='UTF-8'?><a/>",
        "<?xml version='2.0'?><a/>",
        "<?xml version='1.0' standalone='maybe'?><a/>",
        "<?xml version='1.0'encoding='UTF-8'?><a/>",
    ] {
        let (_, err) = run_all_ways(Limits::default(), bad.as_bytes());
        assert_eq!(err.as_ref().map(XmlError::stream_condition), Some("not-well-formed"), "{bad}");
    }
}

#[test]
fn header_custom_prefix_and_default_ns_form() {
    let d = "<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns='jabber:client' to='x'>\
             <message/><s:features/></s:stream>";
    let (events, err) = run_all_ways(Limits::default(), d.as_bytes());
    assert_eq!(err, None);
    let StreamEvent::Header(h) = &events[0] else { panic!() };
    assert!(!h.stream_prefix_ok);
    assert_eq!(h.default_ns, NS_CLIENT);
    let s = stanzas(&events);
    assert!(s[0].is("message", NS_CLIENT));
    assert!(s[1].is("features", NS_STREAM));
    assert_eq!(events.last(), Some(&StreamEvent::Close));

    let d = "<stream xmlns='http://etherx.jabber.org/streams'><features/></stream>";
    let (events, err) = run_all_ways(Limits::default(), d.as_bytes());
    assert_eq!(err, None);
    let StreamEvent::Header(h) = &events[0] else { panic!() };
    assert!(!h.stream_prefix_ok);
    assert_eq!(h.default_ns, NS_STREAM);
    assert!(stanzas(&events)[0].is("features", NS_STREAM));
    assert_eq!(events.len(), 3);
}

#[test]
fn header_bad_namespaces() {
    let (_, err) = run(b"<stream:stream xmlns:stream='urn:wrong' xmlns='jabber:client'>");
    assert!(matches!(err, Some(XmlError::InvalidNamespace(_))));
    assert_eq!(err.unwrap().stream_condition(), "invalid-namespace");
    let (_, err) = run(b"<foo xmlns='http://etherx.jabber.org/streams'>");
    assert_eq!(err.unwrap().stream_condition(), "invalid-namespace");
    let (_, err) = run(b"<stream:stream xmlns='jabber:client'>");
    assert_eq!(err, Some(XmlError::BadNamespacePrefix("stream".into())));
    assert_eq!(err.unwrap().stream_condition(), "bad-namespace-prefix");
}

#[test]
fn self_closing_header_is_header_then_close() {
    let (events, err) =
        run_all_ways(Limits::default(), b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'/>");
    assert_eq!(err, None);
    assert!(matches!(events.as_slice(), [StreamEvent::Header(_), StreamEvent::Close]));
}

#[test]
fn header_prolog_errors() {
    let (_, err) = run(b"hello<stream:stream>");
    assert_eq!(err.unwrap().stream_condition(), "not-well-formed");
    let (_, err) = run(b"<!-- hi --><stream:stream>");
    assert_eq!(err, Some(XmlError::Restricted("comments")));
    let (_, err) = run(b"<!DOCTYPE stream><stream:stream>");
    assert_eq!(err.unwrap().stream_condition(), "restricted-xml");
    let (_, err) = run(b"<?xml-stylesheet href='a'?><stream:stream>");
    assert_eq!(err.unwrap().stream_condition(), "restricted-xml");
    let (_, err) = run(b"<?xml version='1.0'?><?xml version='1.0'?><stream:stream>");
    assert_eq!(err.unwrap().stream_condition(), "restricted-xml");
}

// ---------------------------------------------------------------- stanzas

#[test]
fn stanza_with_nested_elements_and_namespaces() {
    let el = only_stanza(
        "<message to='juliet@example.com' type='chat' xml:lang='en'>\
           <body>Hi &amp; bye</body>\
           <x xmlns='jabber:x:data' type='form'><field var='a'><value>1</value></field></x>\
           <foo:bar xmlns:foo='urn:foo'><foo:baz/><qux/></foo:bar>\
           <stream:error/>\
         </message>",
    );
    assert!(el.is("message", NS_CLIENT));
    assert_eq!(el.attr("to"), Some("juliet@example.com"));
    assert_eq!(el.attr("type"), Some("chat"));
    assert_eq!(el.attr("xml:lang"), Some("en"));
    assert_eq!(el.get_child("body", NS_CLIENT).unwrap().text(), "Hi & bye");
    let x = el.get_child("x", "jabber:x:data").unwrap();
    assert_eq!(x.attrs(), &[Attr::new("type", "form")]);
    let field = x.get_child("field", "jabber:x:data").unwrap();
    assert_eq!(field.attr("var"), Some("a"));
    assert_eq!(field.get_child("value", "jabber:x:data").unwrap().text(), "1");
    let bar = el.get_child("bar", "urn:foo").unwrap();
    assert!(bar.attrs().is_empty(), "xmlns:foo must not be an attribute");
    assert!(bar.has_child("baz", "urn:foo"));
    // Unprefixed child of a prefixed element: default namespace still jabber:client.
    assert!(bar.has_child("qux", NS_CLIENT));
    // `stream:` prefix declared on the header.
    assert!(el.has_child("error", NS_STREAM));
    assert_eq!(el.children().count(), 4);
}

#[test]
fn prefixed_stanza_and_stream_features() {
    let (events, err) = run_all_ways(
        Limits::default(),
        &doc("<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>\
              </stream:features>\n \t<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGp1bGlldAByMG0zMG15cjBtMzA=</auth>\
              <c:message xmlns:c='jabber:client' c:unused='1'/></stream:stream>trailing garbage <<<"),
    );
    assert_eq!(err, None);
    let s = stanzas(&events);
    assert_eq!(s.len(), 3);
    assert!(s[0].is("features", NS_STREAM));
    let tls = s[0].get_child("starttls", "urn:ietf:params:xml:ns:xmpp-tls").unwrap();
    assert!(tls.has_child("required", "urn:ietf:params:xml:ns:xmpp-tls"));
    assert!(s[1].is("auth", "urn:ietf:params:xml:ns:xmpp-sasl"));
    assert_eq!(s[1].attr("mechanism"), Some("PLAIN"));
    assert_eq!(s[1].text(), "AGp1bGlldAByMG0zMG15cjBtMzA=");
    assert!(s[2].is("message", NS_CLIENT));
    assert_eq!(s[2].attr("{jabber:client}unused"), Some("1"));
    assert_eq!(events.last(), Some(&StreamEvent::Close));
}

#[test]
fn namespace_scoping_and_undeclaring() {
    let el = only_stanza(
        "<iq type='get' id='1'><query xmlns='jabber:iq:roster'><item xmlns=''/><item/></query>\
         <p:a xmlns:p='urn:one'><p:b xmlns:p='urn:two'/><p:c/></p:a></iq>",
    );
    let q = el.get_child("query", "jabber:iq:roster").unwrap();
    let items: Vec<_> = q.children().collect();
    assert_eq!(items[0].ns(), "");
    assert_eq!(items[1].ns(), "jabber:iq:roster");
    let a = el.get_child("a", "urn:one").unwrap();
    assert!(a.has_child("b", "urn:two"));
    assert!(a.has_child("c", "urn:one"));
    // Prefix declared on a sibling is out of scope afterwards.
    let err = error_of("<iq><a xmlns:p='urn:p'/><p:b/></iq>");
    assert_eq!(err, XmlError::BadNamespacePrefix("p".into()));
}

#[test]
fn namespaced_attributes() {
    let el = only_stanza("<message xmlns:p='urn:p' p:x='1' y='2' xml:lang='de'/>");
    assert_eq!(el.attrs(), &[Attr::new("{urn:p}x", "1"), Attr::new("y", "2"), Attr::new("xml:lang", "de")]);
    // Same expanded name through two prefixes is a duplicate.
    let err = error_of("<message xmlns:a='urn:p' xmlns:b='urn:p' a:x='1' b:x='2'/>");
    assert_eq!(err.stream_condition(), "not-well-formed");
}

#[test]
fn whitespace_keepalives_are_ignored() {
    let (events, err) = run_all_ways(Limits::default(), &doc(" \n\r\n\t <presence/>\n\n <presence/>   "));
    assert_eq!(err, None);
    assert_eq!(events.len(), 3);
    let err = error_of("<presence/> x <presence/>");
    assert_eq!(err.stream_condition(), "not-well-formed");
    let err = error_of("&amp;");
    assert_eq!(err.stream_condition(), "not-well-formed");
}

#[test]
fn text_preserves_whitespace_and_mixed_content() {
    let el = only_stanza("<message><body>  a\n b <b>bold</b> c\r\nd\re </body></message>");
    let body = el.get_child("body", NS_CLIENT).unwrap();
    assert_eq!(body.nodes().len(), 3);
    assert_eq!(body.nodes()[0], Node::Text("  a\n b ".into()));
    assert_eq!(body.text(), "  a\n b  c\nd\ne ");
}

// ---------------------------------------------------------------- entities, CDATA, UTF-8

#[test]
fn entities_and_char_refs() {
    let el = only_stanza(
        "<message a='&lt;&gt;&amp;&apos;&quot;&#65;&#x42;&#x1F600;&#10;'>\
         <body>&lt;&gt;&amp;&apos;&quot;&#65;&#x42;&#x1f600;&#0000067;&#xD;</body></message>",
    );
    assert_eq!(el.attr("a"), Some("<>&'\"AB\u{1F600}\n"));
    assert_eq!(el.get_child("body", NS_CLIENT).unwrap().text(), "<>&'\"AB\u{1F600}C\r");
    for bad in [
        "&#0;",
        "&#x0;",
        "&#xD800;",
        "&#x110000;",
        "&#xFFFE;",
        "&#1;",
        "&foo;",
        "&#;",
        "&#x;",
        "& ;",
        "&amp",
        "a & b",
        "&#-1;",
        "&#+1;",
        "&#x 41;",
        "&aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa;",
    ] {
        let err = error_of(&format!("<message><body>{bad}</body></message>"));
        assert_eq!(err.stream_condition(), "not-well-formed", "{bad}");
        let err = error_of(&format!("<message a='{bad}'/>"));
        assert_eq!(err.stream_condition(), "not-well-formed", "{bad}");
    }
    // An unterminated reference fails even without a following '<'.
    let (_, err) = run_bytewise(Limits::default(), &doc(&format!("<message><body>&{}", "a".repeat(200))));
    assert_eq!(err.unwrap().stream_condition(), "not-well-formed");
}

#[test]
fn attribute_value_normalization() {
    let el = only_stanza("<message a='x\ty\nz\r\nw' b=\"it's\"/>");
    assert_eq!(el.attr("a"), Some("x y z w"));
    assert_eq!(el.attr("b"), Some("it's"));
    let el = only_stanza("<message a='x>y' b=\"'/>'\"><body>1 > 0</body></message>");
    assert_eq!(el.attr("a"), Some("x>y"));
    assert_eq!(el.attr("b"), Some("'/>'"));
    assert_eq!(el.get_child("body", NS_CLIENT).unwrap().text(), "1 > 0");
}

#[test]
fn cdata_becomes_text() {
    let el = only_stanza("<message><body>a<![CDATA[<hi> & &amp; ]] ]>]]>b<![CDATA[]]></body></message>");
    let body = el.get_child("body", NS_CLIENT).unwrap();
    assert_eq!(body.nodes(), &[Node::Text("a<hi> & &amp; ]] ]>b".into())]);
    let err = error_of("<![CDATA[x]]>");
    assert_eq!(err.stream_condition(), "not-well-formed");
    let err = error_of("<message><![CDAT[x]]></message>");
    assert_eq!(err.stream_condition(), "not-well-formed");
}

#[test]
fn utf8_split_across_chunks() {
    let body = "héllo wörld ✓ 😀 日本語";
    let d = doc(&format!("<message to='rómeo@example.net' 名前='値'><body>{body}</body></message>"));
    let (events, err) = run_all_ways(Limits::default(), &d);
    assert_eq!(err, None);
    let s = stanzas(&events);
    assert_eq!(s[0].get_child("body", NS_CLIENT).unwrap().text(), body);
    assert_eq!(s[0].attr("to"), Some("rómeo@example.net"));
    assert_eq!(s[0].attr("名前"), Some("値"));
    // Split the 4-byte emoji at every position explicitly.
    let pos = d.windows(4).position(|w| w == "😀".as_bytes()).unwrap();
    for k in 1..4 {
        let (a, b) = d.split_at(pos + k);
        assert_eq!(run_chunks(Limits::default(), [a, b]), (events.clone(), None));
    }
}

#[test]
fn invalid_utf8_and_control_chars() {
    for bad in [
        &b"<message><body>\xFF</body></message>"[..],
        b"<message><body>\xC0\x80</body></message>",
        b"<message><body>\xE2\x9C</body></message>",
        b"<message><body>\xED\xA0\x80</body></message>",
        b"<message a='\xE2\x9C'/>",
        b"<message\xFF/>",
    ] {
        let mut d = HEADER.as_bytes().to_vec();
        d.extend_from_slice(bad);
        let (_, err) = run_all_ways(Limits::default(), &d);
        assert_eq!(err, Some(XmlError::InvalidUtf8), "{bad:?}");
    }
    for bad in [
        "<message><body>\u{1}</body></message>",
        "<message><body>\u{0}</body></message>",
        "<message a='\u{1b}'/>",
        "<message><body>\u{FFFE}</body></message>",
        "<message><body><![CDATA[\u{FFFF}]]></body></message>",
    ] {
        let err = error_of(bad);
        assert_eq!(err.stream_condition(), "not-well-formed", "{bad:?}");
    }
}

// ---------------------------------------------------------------- limits

fn stanza_limits(n: usize) -> Limits {
    Limits { max_stanza_bytes: n, ..Limits::default() }
}

#[test]
fn stanza_size_limit_exact() {
    let stanza = "<message to='a@b'><body>hello &amp; world</body></message>";
    let d = doc(&format!("{stanza}  {stanza}<presence/>"));
    let (events, err) = run_all_ways(stanza_limits(stanza.len()), &d);
    assert_eq!(err, None);
    assert_eq!(stanzas(&events).len(), 3);
    let (events, err) = run_all_ways(stanza_limits(stanza.len() - 1), &d);
    assert_eq!(err, Some(XmlError::StanzaTooLarge { limit: stanza.len() - 1 }));
    assert_eq!(events.len(), 1, "only the header");
    assert_eq!(err.unwrap().stream_condition(), "policy-violation");
}

#[test]
fn huge_body_fails_early_with_bounded_buffer() {
    let limits = Limits::default();
    let mut p = StreamParser::new(limits);
    p.feed(HEADER.as_bytes()).unwrap();
    assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Header(_)))));
    p.feed(b"<message><body>").unwrap();
    let chunk = vec![b'a'; 4096];
    let mut fed = 15;
    let mut failed = false;
    for _ in 0..256 {
        match p.feed(&chunk) {
            Ok(()) => {
                fed += chunk.len();
                assert!(p.buffered_len() <= limits.max_stanza_bytes + 1);
                assert_eq!(p.next_event(), Ok(None));
            }
            Err(e) => {
                assert_eq!(e, XmlError::StanzaTooLarge { limit: limits.max_stanza_bytes });
                failed = true;
                break;
            }
        }
    }
    assert!(failed);
    assert!(fed <= limits.max_stanza_bytes, "failed late: {fed}");
    assert!(p.buffered_len() <= limits.max_stanza_bytes + 1);
    // Sticky.
    assert!(p.feed(b"</body></message>").is_err());
    assert!(p.next_event().is_err());
}

#[test]
fn huge_attribute_and_single_feed_are_bounded() {
    let limits = stanza_limits(10_000);
    // A tag that never ends is buffered, but never much beyond the limit.
    let mut p = StreamParser::new(limits);
    p.feed(HEADER.as_bytes()).unwrap();
    p.next_event().unwrap();
    p.feed(b"<message a='").unwrap();
    let mut result = Ok(());
    for _ in 0..100 {
        result = p.feed(&[b'x'; 1000]);
        assert!(p.buffered_len() <= limits.max_stanza_bytes + 1);
        if result.is_err() {
            break;
        }
    }
    assert_eq!(result, Err(XmlError::StanzaTooLarge { limit: 10_000 }));

    // One giant feed: rejected without buffering it all.
    let mut p = StreamParser::new(limits);
    let mut d = doc("<message><body>");
    d.extend(std::iter::repeat_n(b'z', 1 << 20));
    assert_eq!(p.feed(&d), Ok(()));
    assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Header(_)))));
    assert_eq!(p.next_event(), Err(XmlError::StanzaTooLarge { limit: 10_000 }));
    // The header was pending, so the rest was buffered; but a fresh parser that is
    // already past the header buffers at most limit + 1 bytes.
    let mut p = StreamParser::new(limits);
    p.feed(HEADER.as_bytes()).unwrap();
    p.next_event().unwrap();
    let mut big = b"<message a='".to_vec();
    big.extend(std::iter::repeat_n(b'z', 1 << 20));
    assert_eq!(p.feed(&big), Err(XmlError::StanzaTooLarge { limit: 10_000 }));
    assert!(p.buffered_len() <= 10_001, "{}", p.buffered_len());
}

#[test]
fn header_size_limit() {
    let limits = Limits { max_header_bytes: HEADER.len(), ..Limits::default() };
    let (events, err) = run_all_ways(limits, HEADER.as_bytes());
    assert_eq!((events.len(), err), (1, None));
    let limits = Limits { max_header_bytes: HEADER.len() - 1, ..Limits::default() };
    let (_, err) = run_all_ways(limits, HEADER.as_bytes());
    assert_eq!(err, Some(XmlError::HeaderTooLarge { limit: HEADER.len() - 1 }));
    assert_eq!(err.unwrap().stream_condition(), "policy-violation");
    // A header that never ends fails early.
    let mut p = StreamParser::new(Limits::default());
    p.feed(b"<stream:stream ").unwrap();
    let mut result = Ok(());
    for _ in 0..100 {
        result = p.feed(&[b' '; 1000]);
        assert!(p.buffered_len() <= 8 * 1024 + 1);
        if result.is_err() {
            break;
        }
    }
    assert_eq!(result, Err(XmlError::HeaderTooLarge { limit: 8 * 1024 }));
}

#[test]
fn depth_limit() {
    let limits = Limits { max_depth: 5, ..Limits::default() };
    let nest = |n: usize| {
        let mut s = String::new();
        for _ in 0..n {
            s.push_str("<a>");
        }
        for _ in 0..n {
            s.push_str("</a>");
        }
        s
    };
    let (events, err) = run_all_ways(limits, &doc(&nest(5)));
    assert_eq!((stanzas(&events).len(), err), (1, None));
    let (_, err) = run_all_ways(limits, &doc(&nest(6)));
    assert_eq!(err, Some(XmlError::TooDeep { limit: 5 }));
    assert_eq!(err.unwrap().stream_condition(), "policy-violation");
    let (_, err) = run_all_ways(limits, &doc("<a><a><a><a><a><b/></a></a></a></a></a>"));
    assert_eq!(err, Some(XmlError::TooDeep { limit: 5 }));
    // Default limit: 64 levels are fine.
    let (events, err) = run_all_ways(Limits::default(), &doc(&nest(64)));
    assert_eq!((stanzas(&events).len(), err), (1, None));
}

#[test]
fn limits_default() {
    let l = Limits::default();
    assert_eq!((l.max_stanza_bytes, l.max_depth, l.max_header_bytes), (262_144, 64, 8192));
}

// ---------------------------------------------------------------- well-formedness

#[test]
fn restricted_xml() {
    for (bad, what) in [
        ("<message><!-- c --></message>", "comments"),
        ("<!-- c -->", "comments"),
        ("<message><?php x?></message>", "processing instructions"),
        ("<?xml version='1.0'?>", "processing instructions"),
        ("<!DOCTYPE foo>", "DTDs and markup declarations"),
        ("<message><!ENTITY x 'y'></message>", "DTDs and markup declarations"),
    ] {
        assert_eq!(error_of(bad), XmlError::Restricted(what), "{bad}");
        assert_eq!(error_of(bad).stream_condition(), "restricted-xml");
    }
}

#[test]
fn not_well_formed() {
    for bad in [
        "<message></presence>",
        "<message><body></message></body>",
        "<message a='1' a='2'/>",
        "<message xmlns='a' xmlns='b'/>",
        "<message a=1/>",
        "<message a/>",
        "<message a='<'/>",
        "<message a='1'b='2'/>",
        "<message / >",
        "<1message/>",
        "<-a/>",
        "<a:b:c xmlns:a='x'/>",
        "<message 1a='x'/>",
        "<>",
        "</>",
        "< message/>",
        "<message></message >x",
        "<message></message x>",
        "</stream:streamx>",
        "</stream>",
    ] {
        let (_, err) = run_all_ways(Limits::default(), &doc(bad));
        let err = err.unwrap_or_else(|| panic!("expected error for {bad}"));
        assert_eq!(err.stream_condition(), "not-well-formed", "{bad}: {err}");
    }
    // Trailing white space in end tags is fine.
    let el = only_stanza("<message><body>x</body  ></message\n>");
    assert_eq!(el.get_child("body", NS_CLIENT).unwrap().text(), "x");
}

#[test]
fn bad_namespace_prefix() {
    for (bad, prefix) in [
        ("<foo:message/>", "foo"),
        ("<message foo:a='1'/>", "foo"),
        ("<message xmlns:foo=''/>", "foo"),
        ("<message xmlns:xml='urn:x'/>", "xml"),
        ("<message xmlns:x='http://www.w3.org/XML/1998/namespace'/>", "x"),
        ("<message xmlns:xmlns='urn:x'/>", "xmlns"),
        ("<xmlns:message/>", "xmlns"),
    ] {
        assert_eq!(error_of(bad), XmlError::BadNamespacePrefix(prefix.into()), "{bad}");
        assert_eq!(error_of(bad).stream_condition(), "bad-namespace-prefix");
    }
    // Binding xml to its own namespace is allowed (and not an attribute).
    let el = only_stanza("<message xmlns:xml='http://www.w3.org/XML/1998/namespace' xml:lang='fr'/>");
    assert_eq!(el.attrs(), &[Attr::new("xml:lang", "fr")]);
}

#[test]
fn errors_are_sticky_and_close_ignores_rest() {
    let mut p = StreamParser::new(Limits::default());
    p.feed(&doc("<a></b>")).unwrap_or(());
    assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Header(_)))));
    let e1 = p.next_event();
    assert!(e1.is_err());
    assert_eq!(p.next_event(), e1);
    assert_eq!(p.feed(b"<c/>").map_err(|e| e.stream_condition()), Err("not-well-formed"));

    let mut p = StreamParser::new(Limits::default());
    p.feed(&doc("<a/></stream:stream><<garbage")).unwrap();
    assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Header(_)))));
    assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Stanza(_)))));
    assert_eq!(p.next_event(), Ok(Some(StreamEvent::Close)));
    assert_eq!(p.next_event(), Ok(None));
    assert_eq!(p.feed(b"more garbage <<<"), Ok(()));
    assert_eq!(p.next_event(), Ok(None));
    assert_eq!(p.buffered_len(), 0);
}

// ---------------------------------------------------------------- reset

const RESTART: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
     xmlns:stream='http://etherx.jabber.org/streams' to='example.org' version='1.0'>";

#[test]
fn reset_keeps_pipelined_bytes() {
    let mut d = doc("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AA==</auth>\n");
    d.extend_from_slice(RESTART.as_bytes());
    d.extend_from_slice(b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq><presence/>");
    for chunks in [vec![&d[..]], d.chunks(1).collect(), d.chunks(7).collect()] {
        let mut p = StreamParser::new(Limits::default());
        let mut events = Vec::new();
        for c in chunks {
            p.feed(c).unwrap();
            while let Some(ev) = p.next_event().unwrap() {
                let restart = matches!(&ev, StreamEvent::Stanza(e) if e.name() == "auth");
                events.push(ev);
                if restart {
                    p.reset();
                }
            }
        }
        let kinds: Vec<&str> = events
            .iter()
            .map(|e| match e {
                StreamEvent::Header(_) => "header",
                StreamEvent::Stanza(el) => el.name(),
                StreamEvent::Close => "close",
            })
            .collect();
        assert_eq!(kinds, ["header", "auth", "header", "iq", "presence"]);
        let StreamEvent::Stanza(iq) = &events[3] else { panic!() };
        assert!(iq.has_child("bind", "urn:ietf:params:xml:ns:xmpp-bind"));
    }
    // Without the reset, the second XML declaration is restricted.
    let mut p = StreamParser::new(Limits::default());
    p.feed(&d).unwrap();
    assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Header(_)))));
    assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Stanza(_)))));
    assert_eq!(p.next_event(), Err(XmlError::Restricted("processing instructions")));
}

#[test]
fn reset_discarding_drops_buffered_bytes() {
    let mut d = doc("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    d.extend_from_slice(b"<message>plaintext injection</message>");
    let mut p = StreamParser::new(Limits::default());
    p.feed(&d).unwrap();
    assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Header(_)))));
    assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Stanza(_)))));
    assert!(p.buffered_len() > 0);
    p.reset_discarding();
    assert_eq!(p.buffered_len(), 0);
    p.feed(RESTART.as_bytes()).unwrap();
    assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Header(_)))));
    assert_eq!(p.next_event(), Ok(None));
}

#[test]
fn reset_clears_namespace_scope_and_errors() {
    let mut p = StreamParser::new(Limits::default());
    p.feed(b"<x:stream xmlns:x='http://etherx.jabber.org/streams'>").unwrap();
    assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Header(_)))));
    p.reset();
    p.feed(b"<x:stream xmlns:stream='http://etherx.jabber.org/streams'>").unwrap_or(());
    assert_eq!(p.next_event(), Err(XmlError::BadNamespacePrefix("x".into())));
    p.reset_discarding();
    p.feed(HEADER.as_bytes()).unwrap();
    assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Header(_)))));
}

// ---------------------------------------------------------------- serialization

#[test]
fn serialization_escaping() {
    let el = Element::new("message", NS_CLIENT)
        .with_attr("to", "a'b\"c<d>&e\tf\ng\rh")
        .with_child(Element::new("body", NS_CLIENT).with_text("x < y && z > w ]]> \r"));
    assert_eq!(
        String::from_utf8(el.to_bytes(NS_CLIENT)).unwrap(),
        "<message to='a&apos;b&quot;c&lt;d&gt;&amp;e&#x9;f&#xA;g&#xD;h'>\
         <body>x &lt; y &amp;&amp; z &gt; w ]]&gt; &#xD;</body></message>"
    );
    let mut out = Vec::new();
    escape_text("a&<>'\"", &mut out);
    assert_eq!(out, b"a&amp;&lt;&gt;'\"");
    out.clear();
    escape_attr("a&<>'\"", &mut out);
    assert_eq!(out, b"a&amp;&lt;&gt;&apos;&quot;");
}

#[test]
fn write_to_omits_xmlns_equal_to_parent() {
    let el = Element::new("message", NS_CLIENT).with_attr("to", "a").with_child(
        Element::new("x", "jabber:x:data")
            .with_child(Element::new("field", "jabber:x:data"))
            .with_child(Element::new("plain", NS_CLIENT))
            .with_child(Element::new("none", "")),
    );
    let mut out = b"prefix".to_vec();
    el.write_to(&mut out, NS_CLIENT);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "prefix<message to='a'><x xmlns='jabber:x:data'><field/>\
         <plain xmlns='jabber:client'/><none xmlns=''/></x></message>"
    );
    assert_eq!(Element::new("message", NS_CLIENT).with_attr("to", "a").to_bytes(NS_CLIENT), b"<message to='a'/>");
    assert_eq!(Element::new("presence", NS_CLIENT).to_bytes(NS_SERVER), b"<presence xmlns='jabber:client'/>");
    assert_eq!(Element::new("presence", NS_CLIENT).to_string(), "<presence xmlns='jabber:client'/>");
}

#[test]
fn namespaced_attribute_serialization() {
    let el = Element::new("a", "urn:a")
        .with_attr("{urn:p}x", "1")
        .with_attr("y", "2")
        .with_attr("{urn:q}z", "3")
        .with_attr("{urn:p}w", "4")
        .with_attr("xml:lang", "en")
        .with_attr("xmlns", "ignored")
        .with_attr("xmlns:foo", "ignored");
    assert_eq!(
        el.to_string(),
        "<a xmlns='urn:a' xmlns:ns0='urn:p' ns0:x='1' y='2' xmlns:ns2='urn:q' ns2:z='3' \
         ns0:w='4' xml:lang='en'/>"
    );
}

fn samples() -> Vec<Element> {
    vec![
        Element::new("message", NS_CLIENT),
        Element::new("message", NS_CLIENT)
            .with_attr("to", "juliet@example.com/balcony")
            .with_attr("type", "chat")
            .with_attr("xml:lang", "en")
            .with_child(Element::new("body", NS_CLIENT).with_text("Wherefore art thou? <&> ' \""))
            .with_child(Element::new("active", "http://jabber.org/protocol/chatstates")),
        Element::new("iq", NS_CLIENT).with_attr("type", "result").with_child(
            Element::new("query", "jabber:iq:roster").with_child(
                Element::new("item", "jabber:iq:roster")
                    .with_attr("jid", "romeo@example.net")
                    .with_attr("name", "Romeo\tMontague\n")
                    .with_child(Element::new("group", "jabber:iq:roster").with_text("Friends")),
            ),
        ),
        Element::new("x", "")
            .with_child(Element::new("y", NS_CLIENT).with_child(Element::new("z", "")))
            .with_attr("{urn:p}a", "1")
            .with_attr("{urn:q}b", "2")
            .with_attr("{http://www.w3.org/XML/1998/namespace}space", "preserve"),
        Element::new("body", NS_CLIENT)
            .with_text("mixed ")
            .with_child(Element::new("b", "http://www.w3.org/1999/xhtml").with_text("bold"))
            .with_text(" \r\n and \r tail 😀 日本語 ]]>"),
        Element::new("wrap", "urn:w").with_child(
            Element::new("inner", "urn:w")
                .with_attr("{urn:p}k", "v")
                .with_child(Element::new("deeper", "urn:p").with_attr("{urn:p}k", "v2")),
        ),
    ]
}

#[test]
fn serialize_parse_round_trip() {
    for el in samples() {
        for parent in [NS_CLIENT, "", "urn:other"] {
            let bytes = el.to_bytes(parent);
            let back = Element::from_bytes(&bytes, parent)
                .unwrap_or_else(|e| panic!("{e} for {}", String::from_utf8_lossy(&bytes)));
            // `{XML namespace}space` is read back in its conventional `xml:` form.
            let mut expected = el.clone();
            if let Some(v) = expected.remove_attr("{http://www.w3.org/XML/1998/namespace}space") {
                expected.set_attr("xml:space", v);
            }
            assert_eq!(back, expected, "{}", String::from_utf8_lossy(&bytes));
        }
        // And through a stream.
        let mut d = HEADER.as_bytes().to_vec();
        el.write_to(&mut d, NS_CLIENT);
        let (events, err) = run_all_ways(Limits::default(), &d);
        assert_eq!(err, None);
        assert_eq!(stanzas(&events).len(), 1);
    }
}

#[test]
fn from_bytes_requires_exactly_one_element() {
    assert!(Element::from_bytes(b" <a/> \n", "").is_ok());
    assert!(Element::from_bytes(b"<a/><b/>", "").is_err());
    assert!(Element::from_bytes(b"<a/>x", "").is_err());
    assert!(Element::from_bytes(b"<a>", "").is_err());
    assert!(Element::from_bytes(b"<a/><", "").is_err());
    assert!(Element::from_bytes(b"", "").is_err());
    assert!(Element::from_bytes(b"</a>", "").is_err());
    assert_eq!(parse_el("<a/>").ns(), NS_CLIENT);
}

// ---------------------------------------------------------------- element API

#[test]
fn element_api() {
    let mut el = Element::new("iq", NS_CLIENT).with_attr("type", "get").with_attr("id", "1");
    el.set_attr("type", "set");
    assert_eq!(el.attrs().len(), 2);
    assert_eq!(el.attr("type"), Some("set"));
    assert_eq!(el.remove_attr("id"), Some("1".into()));
    assert_eq!(el.remove_attr("id"), None);
    let q = el.append_child(Element::new("query", "jabber:iq:version"));
    q.append_child(Element::new("name", "jabber:iq:version")).append_text("waddle");
    el.append_text("a");
    el.append_text("");
    el.append_text("b");
    assert_eq!(el.nodes().len(), 2);
    assert_eq!(el.text(), "ab");
    assert!(el.has_child("query", "jabber:iq:version"));
    assert!(!el.has_child("query", NS_CLIENT));
    el.get_child_mut("query", "jabber:iq:version").unwrap().set_attr("x", "y");
    assert_eq!(el.get_child("query", "jabber:iq:version").unwrap().attr("x"), Some("y"));
    assert_eq!(
        el.get_child("query", "jabber:iq:version").unwrap().get_child("name", "jabber:iq:version").unwrap().text(),
        "waddle"
    );
    let removed = el.remove_child("query", "jabber:iq:version").unwrap();
    assert_eq!(removed.name(), "query");
    assert_eq!(el.remove_child("query", "jabber:iq:version"), None);
    assert_eq!(el.children().count(), 0);
    el.nodes_mut().clear();
    assert!(el.nodes().is_empty());
}

// ---------------------------------------------------------------- scale

#[test]
fn many_small_stanzas_in_mtu_chunks_is_linear() {
    let mut d = HEADER.as_bytes().to_vec();
    for i in 0..10_000 {
        d.extend_from_slice(
            format!(
                "<message to='user{i}@example.org' from='me@example.org/res' type='chat' \
                 id='m{i}'><body>Message number {i} &amp; some text</body></message>\n"
            )
            .as_bytes(),
        );
    }
    d.extend_from_slice(b"</stream:stream>");
    let mut p = StreamParser::new(Limits::default());
    let mut count = 0;
    let mut max_buffered = 0;
    for chunk in d.chunks(1500) {
        p.feed(chunk).unwrap();
        while let Some(ev) = p.next_event().unwrap() {
            if let StreamEvent::Stanza(el) = ev {
                assert_eq!(el.attr("id"), Some(format!("m{count}").as_str()));
                count += 1;
            }
        }
        max_buffered = max_buffered.max(p.buffered_len());
    }
    assert_eq!(count, 10_000);
    assert!(max_buffered < 1500);
}

#[test]
fn big_text_in_tiny_chunks() {
    // 200 KiB of text fed 7 bytes at a time (with references and multibyte characters
    // straddling chunk boundaries) must parse to the same text.
    let unit = "abc&amp;dé😀\r\n";
    let text: String = unit.repeat(200 * 1024 / unit.len());
    let d = doc(&format!("<message><body>{text}</body></message>"));
    let (events, err) = run_chunks(Limits::default(), d.chunks(7));
    assert_eq!(err, None);
    let expected = text.replace("&amp;", "&").replace("\r\n", "\n");
    assert_eq!(stanzas(&events)[0].get_child("body", NS_CLIENT).unwrap().text(), expected);
}

#[test]
fn stream_header_inside_an_open_stream_is_an_error() {
    let mut p = StreamParser::new(Limits::default());
    let header = b"<stream:stream to='example.org' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";
    p.feed(header).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Header(_)))));
    let err = p.feed(header).and_then(|()| p.next_event().map(|_| ()));
    assert_eq!(err, Err(XmlError::UnexpectedRestart));
    assert_eq!(XmlError::UnexpectedRestart.stream_condition(), "invalid-xml");
}

/// A connection waiting for input holds no buffer and no stanza-building stacks, whatever
/// the size of the stanzas before; bytes not parsed yet survive the release.
#[test]
fn release_consumed_frees_the_buffer_but_keeps_unparsed_bytes() {
    let mut p = StreamParser::new(Limits::default());
    p.feed(HEADER.as_bytes()).unwrap();
    let big = format!("<message to='a@b'><body>{}</body></message>", "x".repeat(20_000));
    p.feed(big.as_bytes()).unwrap();
    p.feed(b"<message to='c@d'><bo").unwrap();
    let mut stanzas = 0;
    while let Some(ev) = p.next_event().unwrap() {
        stanzas += usize::from(matches!(ev, StreamEvent::Stanza(_)));
    }
    assert_eq!(stanzas, 1);
    p.release_consumed();
    assert!(p.buffer_capacity() < 20_000, "the parsed stanza's bytes are released");
    p.feed(b"dy>hi</body></message>").unwrap();
    match p.next_event().unwrap() {
        Some(StreamEvent::Stanza(el)) => {
            assert_eq!(el.get_child("body", "jabber:client").map(Element::text).as_deref(), Some("hi"))
        }
        other => panic!("expected the split stanza, got {other:?}"),
    }
    assert_eq!(p.next_event().unwrap(), None);
    p.release_consumed();
    assert_eq!(p.buffer_capacity(), 0, "idle with nothing unparsed: no buffer");
    assert_eq!(p.idle_stack_capacity(), 0, "idle: no stanza-building stacks");
    // A stanza after the release parses as before.
    p.feed(b"<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>").unwrap();
    assert!(matches!(p.next_event().unwrap(), Some(StreamEvent::Stanza(el)) if el.name() == "iq"));
}

/// A fan-out copy is the element with the recipient's `to`, byte for byte, whatever the
/// element holds (children in other namespaces, prefixed attributes, no children at all),
/// and a `to` the element already had is replaced.
#[test]
fn unaddressed_copies_are_the_element_with_each_recipients_to() {
    let docs = [
        "<message from='room@muc.example.org/alice' type='groupchat' id='m1'><body>hi &amp; &lt;bye&gt;</body>\
         <stanza-id xmlns='urn:xmpp:sid:0' id='s1' by='room@muc.example.org'/></message>",
        "<presence from='a@b/c' xmlns:x='urn:x' x:flag='1'/>",
        "<message from='a@b/c' to='old@b/c' type='chat'><body>x</body></message>",
    ];
    for doc in docs {
        let el = Element::from_bytes(doc.as_bytes(), crate::NS_CLIENT).unwrap();
        let shared = Unaddressed::new(&el, crate::NS_CLIENT);
        for to in ["juliet@capulet.lit/balcony", "o'brien@example.org/<desk>"] {
            let mut copy = el.clone();
            copy.remove_attr("to");
            copy.set_attr("to", to);
            let mut expected = Vec::new();
            copy.write_to(&mut expected, crate::NS_CLIENT);
            let mut written = Vec::new();
            shared.write_to(to, &mut written);
            assert_eq!(String::from_utf8(written.clone()).unwrap(), String::from_utf8(expected).unwrap());
            let parsed = Element::from_bytes(&written, crate::NS_CLIENT).unwrap();
            assert_eq!(parsed.attr("to"), Some(to));
        }
    }
}

// ---------------------------------------------------------------- fuzz findings

/// Found by `fuzz_mutated_streams`: a reference without its `;` in one read was reported
/// as "invalid entity reference", while in one read with what followed it was an invalid
/// character reference (the `;` of the next reference ends its name).
#[test]
fn reference_errors_do_not_depend_on_the_split() {
    let (_, err) = run_all_ways(Limits::default(), &doc("<m>x&#38&#97;y</m>"));
    assert_eq!(err, Some(XmlError::NotWellFormed("invalid character reference '&#38&#97;'".into())));
    let (_, err) = run_all_ways(Limits::default(), &doc("<m>&#b-c\nq='&quot;'</m>"));
    assert_eq!(err, Some(XmlError::NotWellFormed("invalid character reference '&#b-c\nq='&quot;'".into())));
    // Too long to be a reference, whatever follows.
    let long = format!("<m>&{}x;</m>", "a".repeat(40));
    let (_, err) = run_all_ways(Limits::default(), &doc(&long));
    assert_eq!(err, Some(XmlError::NotWellFormed("invalid entity reference".into())));
}

/// Found by `fuzz_random_bytes`: character data with a forbidden character and invalid
/// UTF-8 after it failed with the one or the other depending on the reads. The first bad
/// byte wins.
#[test]
fn character_data_errors_come_in_byte_order() {
    let nul = XmlError::NotWellFormed("illegal control character".into());
    let ffff = XmlError::NotWellFormed("illegal character U+FFFE/U+FFFF".into());
    let cases: [(&[u8], XmlError); 5] = [
        (b"<m>a\0b\xff</m>", nul.clone()),
        (b"<m>a\xffb\0</m>", XmlError::InvalidUtf8),
        (b"<m>\xef\xbf\xbf\0</m>", ffff.clone()),
        (b"<m>\0\xef\xbf\xbf</m>", nul),
        (b"<m>&bogus;\x01</m>", XmlError::NotWellFormed("unknown entity '&bogus;'".into())),
    ];
    for (body, want) in cases {
        let mut d = HEADER.as_bytes().to_vec();
        d.extend_from_slice(body);
        let (_, err) = run_all_ways(Limits::default(), &d);
        assert_eq!(err, Some(want), "{:?}", String::from_utf8_lossy(body));
    }
}

/// Found by `fuzz_mutated_streams`: a read that brought more than the stanza limit let
/// the parser look past the limit, so an error in the bytes beyond it (here a `<` in an
/// attribute value, or a forbidden character) was reported instead of
/// `StanzaTooLarge`, which smaller reads reported.
#[test]
fn bytes_past_the_stanza_limit_are_not_parsed() {
    let limits = stanza_limits(100);
    for stanza in [format!("<b x='{}<'/>", "y".repeat(200)), format!("<b>{}\u{1}</b>", "y".repeat(200))] {
        let (events, err) = run_all_ways(limits, &doc(&format!("<a/>{stanza}")));
        assert_eq!(stanzas(&events).len(), 1);
        assert_eq!(err, Some(XmlError::StanzaTooLarge { limit: 100 }), "{stanza}");
    }
}

/// Found by `fuzz_mutated_streams`: an attribute in a namespace whose URI contains `}`
/// (any string is a legal URI reference here) was split at that `}` when serialized,
/// which wrote a name that is not well-formed.
#[test]
fn attribute_namespace_uri_with_a_brace_round_trips() {
    let el = parse_el("<a xmlns='jabber:client' xmlns:p='urn:x}y' p:k='v'/>");
    assert_eq!(el.attr("{urn:x}y}k"), Some("v"));
    let bytes = el.to_bytes(NS_CLIENT);
    assert_eq!(Element::from_bytes(&bytes, NS_CLIENT), Ok(el));
    let el = Element::new("a", "urn:x").with_attr("{}}k", "v").with_attr("{u{r}n}j", "w");
    assert_eq!(Element::from_bytes(&el.to_bytes(""), ""), Ok(el));
}

/// Found by `fuzz_random_bytes` (long run 2): `<xml:lang/>` parses to an element in the
/// XML namespace, which was serialized by declaring that namespace as the default one,
/// which Namespaces in XML forbids and the parser rightly refuses.
#[test]
fn element_in_the_xml_namespace_round_trips() {
    let el = parse_el("<xml:a><b xml:lang='en'>t</b></xml:a>");
    assert!(el.is("a", NS_XML));
    assert!(el.children().next().is_some_and(|b| b.is("b", NS_CLIENT)));
    let bytes = el.to_bytes(NS_CLIENT);
    assert_eq!(String::from_utf8_lossy(&bytes), "<xml:a><b xml:lang='en'>t</b></xml:a>");
    assert_eq!(Element::from_bytes(&bytes, NS_CLIENT), Ok(el.clone()));
    let other = el.to_bytes("urn:x");
    assert_eq!(
        Element::from_bytes(&other, "urn:x").map(|e| e.children().next().map(|b| b.ns().to_owned())),
        Ok(Some(NS_CLIENT.to_owned()))
    );
}

/// A fan-out stanza crosses to another node as its shared bytes and splice point; a
/// splice point outside the start tag is refused.
#[test]
fn unaddressed_parts_rebuild_the_same_copies() {
    let el =
        Element::from_bytes(b"<message from='r@muc.x/a' type='groupchat'><body>hi</body></message>", crate::NS_CLIENT)
            .unwrap();
    let shared = Unaddressed::new(&el, crate::NS_CLIENT);
    let (bytes, end) = shared.parts();
    let rebuilt = Unaddressed::from_parts(bytes.to_vec(), end).unwrap();
    assert_eq!(rebuilt, shared);
    assert!(Unaddressed::from_parts(bytes.to_vec(), bytes.len()).is_none());
    assert!(Unaddressed::from_parts(bytes.to_vec(), bytes.len() + 5).is_none());
    assert!(Unaddressed::from_parts(b"message>".to_vec(), 3).is_none());
}
