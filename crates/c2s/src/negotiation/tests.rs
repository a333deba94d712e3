use super::*;
use waddle_sasl::ScramClient;
use waddle_xml::{Limits, StreamParser};

const DOMAIN: &str = "example.org";
const CLIENT_HEADER: &str = "<?xml version='1.0'?><stream:stream to='example.org' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

fn config(require_tls: bool) -> NegotiationConfig {
    NegotiationConfig {
        domain: DOMAIN.into(),
        require_tls,
        starttls_available: true,
        in_band_registration: true,
        stream_management: true,
        max_auth_attempts: 3,
    }
}

/// A client-side view: parses what the server sent.
struct Peer {
    parser: StreamParser,
}

impl Peer {
    fn new() -> Peer {
        Peer { parser: StreamParser::new(Limits::default()) }
    }

    /// Feeds server output and returns the parsed events.
    fn read(&mut self, actions: &[Action]) -> Vec<StreamEvent> {
        for a in actions {
            if let Action::Send(bytes) = a {
                self.parser.feed(bytes).unwrap_or_else(|e| panic!("server sent bad XML: {e}"));
            }
        }
        let mut events = Vec::new();
        while let Ok(Some(ev)) = self.parser.next_event() {
            events.push(ev);
        }
        events
    }
}

fn events_of(xml: &str) -> Vec<StreamEvent> {
    let mut p = StreamParser::new(Limits::default());
    p.feed(CLIENT_HEADER.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    p.feed(xml.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    while let Ok(Some(ev)) = p.next_event() {
        out.push(ev);
    }
    out
}

fn header_event() -> StreamEvent {
    events_of("").remove(0)
}

fn stanza(xml: &str) -> StreamEvent {
    events_of(xml).remove(1)
}

fn features(events: &[StreamEvent]) -> Element {
    events
        .iter()
        .find_map(|e| match e {
            StreamEvent::Stanza(el) if el.is("features", ns::STREAM) => Some(el.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no features in {events:?}"))
}

fn stanzas(events: Vec<StreamEvent>) -> Vec<Element> {
    events
        .into_iter()
        .filter_map(|e| match e {
            StreamEvent::Stanza(el) => Some(el),
            _ => None,
        })
        .collect()
}

fn mechanisms(features: &Element) -> Vec<String> {
    features.get_child("mechanisms", ns::SASL).map(|m| m.children().map(Element::text).collect()).unwrap_or_default()
}

#[test]
fn plaintext_stream_requires_starttls_and_hides_mechanisms() {
    let mut n = Negotiator::new(config(true), false);
    let mut peer = Peer::new();
    let f = features(&peer.read(&n.on_event(header_event())));
    let starttls = f.get_child("starttls", ns::TLS).unwrap_or_else(|| panic!("no starttls"));
    assert!(starttls.has_child("required", ns::TLS));
    assert!(mechanisms(&f).is_empty(), "mechanisms offered before TLS");

    // auth before TLS is refused with encryption-required
    let out = n.on_event(stanza("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>"));
    let replies = stanzas(peer.read(&out));
    assert!(replies[0].has_child("encryption-required", ns::SASL));
}

#[test]
fn starttls_then_restart_offers_mechanisms_with_plain() {
    let mut n = Negotiator::new(config(true), false);
    n.on_event(header_event());
    let out = n.on_event(stanza("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"));
    assert_eq!(out.last(), Some(&Action::StartTls));
    n.tls_established();
    let mut peer = Peer::new();
    let f = features(&peer.read(&n.on_event(header_event())));
    assert!(f.get_child("starttls", ns::TLS).is_none());
    assert_eq!(mechanisms(&f), vec!["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]);
    assert!(f.has_child("register", ns::REGISTER_FEATURE));
}

#[test]
fn wrong_host_gives_host_unknown() {
    let mut n = Negotiator::new(config(true), false);
    let mut p = StreamParser::new(Limits::default());
    p.feed(b"<stream:stream to='other.org' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")
        .unwrap_or_else(|e| panic!("{e}"));
    let Ok(Some(h)) = p.next_event() else { panic!() };
    let out = n.on_event(h);
    assert_eq!(out.last(), Some(&Action::Close));
    let errs = stanzas(Peer::new().read(&out));
    assert!(errs[0].has_child("host-unknown", ns::STREAM_ERRORS));
}

fn secure_negotiator() -> (Negotiator, Peer) {
    let mut n = Negotiator::new(config(true), true);
    let mut peer = Peer::new();
    peer.read(&n.on_event(header_event()));
    (n, peer)
}

fn scram_login(hash: ScramHash, password_on_server: &str, password_on_client: &str) -> (Negotiator, Vec<Element>) {
    let (mut n, mut peer) = secure_negotiator();
    let mut client = ScramClient::new(hash, "alice", password_on_client);
    let first = B64.encode(client.client_first());
    let out = n.on_event(stanza(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{}'>{first}</auth>",
        hash.mechanism_name()
    )));
    assert_eq!(out, vec![Action::LookupScram { username: "alice".into(), hash }]);
    let creds =
        ScramCredentials::derive(hash, password_on_server, b"saltsaltsalt", 4096).unwrap_or_else(|e| panic!("{e}"));
    let challenge = stanzas(peer.read(&n.scram_credentials(Ok(Some(creds)))));
    let server_first = B64.decode(challenge[0].text()).unwrap_or_else(|e| panic!("{e}"));
    let client_final = client.handle_server_first(&server_first).unwrap_or_else(|e| panic!("{e}"));
    let out = n.on_event(stanza(&format!(
        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
        B64.encode(client_final)
    )));
    let replies = stanzas(peer.read(&out));
    if replies[0].is("success", ns::SASL) {
        assert_eq!(out.last(), Some(&Action::ResetParser));
        let server_final = B64.decode(replies[0].text()).unwrap_or_else(|e| panic!("{e}"));
        client.verify_server_final(&server_final).unwrap_or_else(|e| panic!("server signature: {e}"));
    }
    (n, replies)
}

#[test]
fn scram_sha256_and_sha1_succeed_with_right_password() {
    for hash in [ScramHash::Sha256, ScramHash::Sha1] {
        let (n, replies) = scram_login(hash, "pencil", "pencil");
        assert!(replies[0].is("success", ns::SASL), "{hash:?}: {replies:?}");
        assert_eq!(n.username(), Some("alice"));
    }
}

#[test]
fn scram_wrong_password_is_not_authorized() {
    let (n, replies) = scram_login(ScramHash::Sha256, "pencil", "crayon");
    assert!(replies[0].is("failure", ns::SASL));
    assert!(replies[0].has_child("not-authorized", ns::SASL));
    assert_eq!(n.username(), None);
}

#[test]
fn plain_goes_to_the_shell_and_repeated_failures_close_the_stream() {
    let (mut n, mut peer) = secure_negotiator();
    let auth = format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
        B64.encode(b"\0alice@example.org\0tok")
    );
    for attempt in 1..=3 {
        let out = n.on_event(stanza(&auth));
        assert_eq!(out, vec![Action::VerifyPlain { username: "alice".into(), secret: "tok".into() }]);
        let out = n.plain_verdict(AuthOutcome::Failure);
        let replies = stanzas(peer.read(&out));
        assert!(replies[0].has_child("not-authorized", ns::SASL));
        assert_eq!(out.last() == Some(&Action::Close), attempt == 3, "attempt {attempt}");
    }
}

#[test]
fn plain_for_another_domain_is_refused() {
    let (mut n, mut peer) = secure_negotiator();
    let out = n.on_event(stanza(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
        B64.encode(b"\0alice@evil.org\0tok")
    )));
    assert!(stanzas(peer.read(&out))[0].has_child("not-authorized", ns::SASL));
}

#[test]
fn blocked_authentication_closes_with_policy_violation() {
    let (mut n, mut peer) = secure_negotiator();
    n.on_event(stanza(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
        B64.encode(b"\0alice\0pw")
    )));
    let out = n.plain_verdict(AuthOutcome::Blocked);
    let replies = stanzas(peer.read(&out));
    assert!(replies[0].has_child("not-authorized", ns::SASL));
    assert!(replies[1].has_child("policy-violation", ns::STREAM_ERRORS));
    assert_eq!(out.last(), Some(&Action::Close));
}

fn authenticated() -> (Negotiator, Peer) {
    let (mut n, _) = secure_negotiator();
    n.on_event(stanza(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
        B64.encode(b"\0alice\0pw")
    )));
    n.plain_verdict(AuthOutcome::Success);
    // A restarted stream: the client parses it with a fresh parser.
    let mut peer = Peer::new();
    let f = features(&peer.read(&n.on_event(header_event())));
    assert!(f.has_child("bind", ns::BIND));
    (n, peer)
}

#[test]
fn bind_with_client_resource_and_generated_resource() {
    let (mut n, mut peer) = authenticated();
    let out = n.on_event(stanza(
        "<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>phone</resource></bind></iq>",
    ));
    assert_eq!(out, vec![Action::Bind { username: "alice".into(), resource: "phone".into() }]);
    let replies = stanzas(peer.read(&n.bound("alice@example.org/phone")));
    let jid = replies[0].get_child("bind", ns::BIND).and_then(|b| b.get_child("jid", ns::BIND)).map(Element::text);
    assert_eq!(jid.as_deref(), Some("alice@example.org/phone"));
    assert!(n.is_established());

    let (mut n, _) = authenticated();
    let out = n.on_event(stanza("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>"));
    let Some(Action::Bind { resource, .. }) = out.first() else { panic!("{out:?}") };
    assert!(resource.starts_with("waddle-") && resource.len() > 10);
}

#[test]
fn stream_management_and_csi_are_offered_after_authentication() {
    let (mut n, _) = secure_negotiator();
    n.on_event(stanza(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
        B64.encode(b"\0alice\0pw")
    )));
    n.plain_verdict(AuthOutcome::Success);
    let f = features(&Peer::new().read(&n.on_event(header_event())));
    assert!(f.has_child("sm", crate::sm::NS), "{f}");
    assert!(f.has_child("csi", crate::csi::NS), "{f}");
}

#[test]
fn resume_goes_to_the_shell_and_a_refusal_lets_the_client_bind() {
    let (mut n, mut peer) = authenticated();
    let out = n.on_event(stanza("<resume xmlns='urn:xmpp:sm:3' previd='abc' h='7'/>"));
    assert_eq!(out, vec![Action::Resume { username: "alice".into(), previd: "abc".into(), h: 7 }]);
    let replies = stanzas(peer.read(&n.resume_failed()));
    assert!(replies[0].is("failed", crate::sm::NS) && replies[0].has_child("item-not-found", ns::STANZA_ERRORS));
    assert!(!n.is_established());
    let out = n.on_event(stanza("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>"));
    assert!(matches!(out.first(), Some(Action::Bind { .. })), "{out:?}");

    let (mut n, _) = authenticated();
    n.on_event(stanza("<resume xmlns='urn:xmpp:sm:3' previd='abc' h='0'/>"));
    n.resume_accepted();
    assert!(n.is_established());
}

#[test]
fn malformed_resume_and_early_enable_fail_without_closing() {
    let (mut n, mut peer) = authenticated();
    for bad in ["<resume xmlns='urn:xmpp:sm:3' previd='abc'/>", "<resume xmlns='urn:xmpp:sm:3' h='1'/>"] {
        let replies = stanzas(peer.read(&n.on_event(stanza(bad))));
        assert!(replies[0].has_child("bad-request", ns::STANZA_ERRORS), "{bad}: {replies:?}");
    }
    let replies = stanzas(peer.read(&n.on_event(stanza("<enable xmlns='urn:xmpp:sm:3'/>"))));
    assert!(replies[0].has_child("unexpected-request", ns::STANZA_ERRORS));
    let out = n.on_event(stanza("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>"));
    assert!(matches!(out.first(), Some(Action::Bind { .. })), "{out:?}");
}

#[test]
fn stanza_before_bind_is_not_authorized() {
    let (mut n, mut peer) = authenticated();
    let out = n.on_event(stanza("<message to='bob@example.org'><body>hi</body></message>"));
    let replies = stanzas(peer.read(&out));
    assert!(replies[0].has_child("not-authorized", ns::STREAM_ERRORS));
}

#[test]
fn in_band_registration_form_and_submit() {
    let (mut n, mut peer) = secure_negotiator();
    let out = n.on_event(stanza("<iq type='get' id='r1'><query xmlns='jabber:iq:register'/></iq>"));
    let form = stanzas(peer.read(&out));
    let q = form[0].get_child("query", ns::REGISTER).unwrap_or_else(|| panic!("no query"));
    assert!(q.has_child("username", ns::REGISTER) && q.has_child("password", ns::REGISTER));

    let out = n.on_event(stanza(
        "<iq type='set' id='r2'><query xmlns='jabber:iq:register'><username>Carol</username><password>secret</password></query></iq>",
    ));
    assert_eq!(out, vec![Action::Register { username: "carol".into(), password: "secret".into() }]);
    let result = stanzas(peer.read(&n.register_result(RegisterOutcome::Conflict)));
    let err = result[0].get_child("error", ns::CLIENT).unwrap_or_else(|| panic!("no error"));
    assert!(err.has_child("conflict", ns::STANZA_ERRORS));
}

#[test]
fn registration_rate_limited_is_resource_constraint() {
    let (mut n, mut peer) = secure_negotiator();
    let out = n.on_event(stanza(
        "<iq type='set' id='r3'><query xmlns='jabber:iq:register'><username>dave</username><password>secret</password></query></iq>",
    ));
    assert!(matches!(out.first(), Some(Action::Register { .. })), "{out:?}");
    let result = stanzas(peer.read(&n.register_result(RegisterOutcome::RateLimited)));
    assert_eq!(result[0].attr("type"), Some("error"));
    let err = result[0].get_child("error", ns::CLIENT).unwrap_or_else(|| panic!("no error"));
    assert_eq!(err.attr("type"), Some("wait"));
    assert!(err.has_child("resource-constraint", ns::STANZA_ERRORS));
}

#[test]
fn registration_needs_tls_when_tls_is_required() {
    let mut n = Negotiator::new(config(true), false);
    n.on_event(header_event());
    let out = n.on_event(stanza(
        "<iq type='set' id='r2'><query xmlns='jabber:iq:register'><username>c</username><password>s</password></query></iq>",
    ));
    assert_eq!(out.last(), Some(&Action::Close));
}

#[test]
fn an_unreadable_account_is_a_temporary_failure_that_may_be_retried() {
    let (mut n, mut peer) = secure_negotiator();
    let auth = format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
        B64.encode(b"\0alice\0pw")
    );
    // More unavailable answers than the attempt limit: none of them counts as a failure.
    for _ in 0..5 {
        n.on_event(stanza(&auth));
        let out = n.plain_verdict(AuthOutcome::Unavailable);
        let replies = stanzas(peer.read(&out));
        assert_eq!(replies.len(), 1, "{replies:?}");
        assert!(replies[0].has_child("temporary-auth-failure", ns::SASL));
        assert!(!out.iter().any(|a| matches!(a, Action::AuthFailed { .. } | Action::Close)));
    }
    n.on_event(stanza(&auth));
    let out = n.plain_verdict(AuthOutcome::Success);
    assert!(stanzas(peer.read(&out))[0].is("success", ns::SASL));
}

#[test]
fn scram_with_unreadable_credentials_is_a_temporary_failure() {
    for hash in [ScramHash::Sha1, ScramHash::Sha256] {
        let (mut n, mut peer) = secure_negotiator();
        let mechanism = hash.mechanism_name();
        let out = n.on_event(stanza(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mechanism}'>{}</auth>",
            B64.encode(b"n,,n=alice,r=abcdef")
        )));
        assert_eq!(out, vec![Action::LookupScram { username: "alice".into(), hash }]);
        let out = n.scram_credentials(Err(CredentialsUnavailable::Temporarily));
        let replies = stanzas(peer.read(&out));
        assert!(replies[0].has_child("temporary-auth-failure", ns::SASL));
        assert!(!out.contains(&Action::Close));
        let out = n.on_event(stanza(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mechanism}'>{}</auth>",
            B64.encode(b"n,,n=alice,r=abcdef")
        )));
        assert_eq!(out, vec![Action::LookupScram { username: "alice".into(), hash }], "a retry is allowed");
    }
}
