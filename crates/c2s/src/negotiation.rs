//! Stream negotiation as a sans-I/O state machine (RFC 6120 §4–§7, XEP-0077 pre-auth).
//!
//! The shell feeds [`Negotiator::on_event`] with parsed stream events and the results of
//! the lookups it was asked for; every call returns the [`Action`]s to execute in order.
//! Once [`Negotiator::is_established`] is true the shell hands the stream to a session.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand::distributions::Alphanumeric;
use rand::Rng as _;
use waddle_sasl::{parse_plain, ScramCredentials, ScramHash, ScramServer};
use waddle_xml::{Element, StreamEvent, StreamHeader};

use crate::ns;
use crate::stanza::{error_reply, iq_payload, iq_result, iq_result_with};
use crate::stream;

#[derive(Clone, Debug)]
pub struct NegotiationConfig {
    pub domain: String,
    /// Refuse SASL (and registration) until the stream is encrypted.
    pub require_tls: bool,
    /// Whether STARTTLS can be offered on this listener (false on direct TLS).
    pub starttls_available: bool,
    pub in_band_registration: bool,
    /// Offer XEP-0198 Stream Management (enabled on the session after bind, or a
    /// session resumed instead of binding).
    pub stream_management: bool,
    /// Failed authentications tolerated on one stream before it is closed.
    pub max_auth_attempts: u32,
}

/// What the shell must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Send(Vec<u8>),
    /// `<proceed/>` was queued: flush it, run the TLS handshake, reset the parser discarding
    /// buffered bytes, then call [`Negotiator::tls_established`].
    StartTls,
    /// Stream restart after SASL success: reset the parser, keeping buffered bytes.
    ResetParser,
    /// Fetch the SCRAM credentials of `username` and call [`Negotiator::scram_credentials`].
    LookupScram {
        username: String,
        hash: ScramHash,
    },
    /// Check a PLAIN password or session token and call [`Negotiator::plain_verdict`].
    VerifyPlain {
        username: String,
        secret: String,
    },
    /// XEP-0077: create the account and call [`Negotiator::register_result`].
    Register {
        username: String,
        password: String,
    },
    /// Bind `resource` for the authenticated user (replacing any session with the same
    /// full JID) and call [`Negotiator::bound`].
    Bind {
        username: String,
        resource: String,
    },
    /// XEP-0198: hand the stream to the detached session `previd` names, if it exists,
    /// belongs to `username` and accepts; then call [`Negotiator::resume_accepted`],
    /// else [`Negotiator::resume_failed`]. `h` is the client's count of our stanzas.
    Resume {
        username: String,
        previd: String,
        h: u32,
    },
    /// An authentication attempt failed (for rate limiting and metrics).
    AuthFailed {
        username: Option<String>,
    },
    /// Flush what was sent and close the connection.
    Close,
}

/// The shell's answer to [`Action::VerifyPlain`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    Success,
    Failure,
    /// Too many recent failures for this client or account.
    Blocked,
    /// The account could not be read just now (its partition is moving to another
    /// node): `temporary-auth-failure`, which asks the client to try again later
    /// (RFC 6120 §6.5.13), and not counted as a failed attempt.
    Unavailable,
}

/// Why the shell has no answer to [`Action::LookupScram`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialsUnavailable {
    /// Too many recent failures for this client or account.
    Blocked,
    /// The account could not be read just now; see [`AuthOutcome::Unavailable`].
    Temporarily,
}

/// The shell's answer to [`Action::Register`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterOutcome {
    Created,
    Conflict,
    NotAcceptable(String),
    /// Too many accounts created from this address lately (ejabberd's answer to the
    /// same, `resource-constraint`, XEP-0077 §3.1 leaves the condition to the server).
    RateLimited,
    InternalError,
}

enum State {
    AwaitHeader,
    AwaitNegotiation,
    ScramAwaitClientFirst(ScramHash),
    PlainAwaitInitial,
    ScramAwaitCredentials(Box<ScramServer>, String),
    ScramAwaitFinal(Box<ScramServer>, String),
    PlainAwaitVerdict(String),
    AwaitRegisterResult(Element),
    AwaitBindResult(Element),
    AwaitResumeResult,
    Established,
    Closed,
}

pub struct Negotiator {
    config: NegotiationConfig,
    state: State,
    secure: bool,
    header_sent: bool,
    authenticated: Option<String>,
    failures: u32,
    lang: Option<String>,
}

impl Negotiator {
    /// `secure` is true on a direct-TLS listener (XEP-0368).
    pub fn new(config: NegotiationConfig, secure: bool) -> Negotiator {
        Negotiator {
            config,
            state: State::AwaitHeader,
            secure,
            header_sent: false,
            authenticated: None,
            failures: 0,
            lang: None,
        }
    }

    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established)
    }

    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// The authenticated local username, once SASL succeeded.
    pub fn username(&self) -> Option<&str> {
        self.authenticated.as_deref()
    }

    pub fn lang(&self) -> Option<&str> {
        self.lang.as_deref()
    }

    /// A parse error from the codec: send its stream error and close.
    pub fn on_parse_error(&mut self, condition: &str) -> Vec<Action> {
        self.fail_stream(condition, None)
    }

    /// The transport refused what the client sent (a WebSocket frame that is not XMPP):
    /// send this stream error, with `text` saying why, and close.
    pub fn on_transport_error(&mut self, condition: &str, text: &str) -> Vec<Action> {
        self.fail_stream(condition, Some(text))
    }

    pub fn on_event(&mut self, event: StreamEvent) -> Vec<Action> {
        match event {
            StreamEvent::Header(h) => self.on_header(&h),
            StreamEvent::Stanza(el) => self.on_element(el),
            StreamEvent::Close => {
                self.state = State::Closed;
                vec![Action::Send(stream::CLOSE.to_vec()), Action::Close]
            }
        }
    }

    pub fn tls_established(&mut self) {
        self.secure = true;
        self.state = State::AwaitHeader;
    }

    fn on_header(&mut self, h: &StreamHeader) -> Vec<Action> {
        if !matches!(self.state, State::AwaitHeader) {
            return self.fail_stream("invalid-xml", Some("unexpected stream header"));
        }
        self.lang = h.attr("xml:lang").map(str::to_owned);
        let mut out = vec![Action::Send(stream::header(&self.config.domain, &new_stream_id(), self.lang.as_deref()))];
        self.header_sent = true;
        if h.default_ns != ns::CLIENT {
            out.extend(self.fail_stream("invalid-namespace", None));
            return out;
        }
        match h.attr("to") {
            Some(to) if to.eq_ignore_ascii_case(&self.config.domain) => {}
            Some(_) | None => {
                out.extend(self.fail_stream("host-unknown", None));
                return out;
            }
        }
        let major = h.attr("version").and_then(|v| v.split('.').next()).and_then(|m| m.parse::<u32>().ok());
        if major.unwrap_or(0) < 1 {
            out.extend(self.fail_stream("unsupported-version", None));
            return out;
        }
        out.push(Action::Send(stream::features(&self.features())));
        self.state = State::AwaitNegotiation;
        out
    }

    fn features(&self) -> Vec<Element> {
        if let Some(_user) = &self.authenticated {
            let mut features = vec![
                Element::new("bind", ns::BIND),
                Element::new("session", ns::SESSION).with_child(Element::new("optional", ns::SESSION)),
                Element::new("ver", ns::ROSTER_VER),
                Element::new("sub", ns::PRE_APPROVAL),
                Element::new("csi", crate::csi::NS),
            ];
            if self.config.stream_management {
                features.push(Element::new("sm", crate::sm::NS));
            }
            return features;
        }
        let mut features = Vec::new();
        if !self.secure && self.config.starttls_available {
            let mut starttls = Element::new("starttls", ns::TLS);
            if self.config.require_tls {
                starttls.append_child(Element::new("required", ns::TLS));
            }
            features.push(starttls);
        }
        if self.auth_allowed() {
            let mut mechs = Element::new("mechanisms", ns::SASL);
            for m in self.mechanisms() {
                mechs.append_child(Element::new("mechanism", ns::SASL).with_text(m));
            }
            features.push(mechs);
            if self.config.in_band_registration {
                features.push(Element::new("register", ns::REGISTER_FEATURE));
            }
        }
        features
    }

    fn auth_allowed(&self) -> bool {
        self.secure || !self.config.require_tls
    }

    fn mechanisms(&self) -> Vec<&'static str> {
        let mut m = vec!["SCRAM-SHA-256", "SCRAM-SHA-1"];
        // PLAIN exposes the secret: only ever offered inside TLS.
        if self.secure {
            m.push("PLAIN");
        }
        m
    }

    fn on_element(&mut self, el: Element) -> Vec<Action> {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::AwaitNegotiation => self.on_negotiation_element(el),
            State::ScramAwaitClientFirst(hash) if el.is("response", ns::SASL) => match decode_sasl_payload(&el) {
                Ok(data) => self.scram_client_first(hash, &data),
                Err(()) => self.sasl_failure("incorrect-encoding", None),
            },
            State::PlainAwaitInitial if el.is("response", ns::SASL) => match decode_sasl_payload(&el) {
                Ok(data) => self.plain(&data),
                Err(()) => self.sasl_failure("incorrect-encoding", None),
            },
            State::ScramAwaitFinal(mut server, username) if el.is("response", ns::SASL) => {
                let Ok(data) = decode_sasl_payload(&el) else {
                    return self.sasl_failure("incorrect-encoding", Some(username));
                };
                match server.handle_client_final(&data) {
                    Ok(server_final) => self.sasl_success(username, &server_final),
                    Err(e) => self.sasl_failure(e.condition(), Some(username)),
                }
            }
            State::ScramAwaitClientFirst(_) | State::ScramAwaitFinal(..) | State::PlainAwaitInitial
                if el.is("abort", ns::SASL) =>
            {
                self.sasl_failure("aborted", None)
            }
            State::Established => {
                self.state = State::Established;
                Vec::new()
            }
            State::Closed => Vec::new(),
            _ => self.fail_stream("policy-violation", Some("unexpected element during negotiation")),
        }
    }

    fn on_negotiation_element(&mut self, el: Element) -> Vec<Action> {
        if self.authenticated.is_some() {
            return self.on_post_auth_element(el);
        }
        if el.is("starttls", ns::TLS) {
            if self.secure || !self.config.starttls_available {
                self.state = State::Closed;
                return vec![
                    Action::Send(Element::new("failure", ns::TLS).to_bytes(ns::CLIENT)),
                    Action::Send(stream::CLOSE.to_vec()),
                    Action::Close,
                ];
            }
            self.state = State::AwaitHeader;
            return vec![Action::Send(Element::new("proceed", ns::TLS).to_bytes(ns::CLIENT)), Action::StartTls];
        }
        if el.is("auth", ns::SASL) {
            return self.on_auth(&el);
        }
        if el.is("iq", ns::CLIENT) {
            if let Some(query) = iq_payload(&el).filter(|q| q.is("query", ns::REGISTER)) {
                if self.config.in_band_registration && self.auth_allowed() {
                    let query = query.clone();
                    return self.on_register(el, &query);
                }
            }
        }
        self.fail_stream("not-authorized", None)
    }

    fn on_auth(&mut self, el: &Element) -> Vec<Action> {
        if !self.auth_allowed() {
            self.state = State::AwaitNegotiation;
            return vec![Action::Send(sasl_failure_element("encryption-required", None))];
        }
        let mechanism = el.attr("mechanism").unwrap_or("");
        if !self.mechanisms().contains(&mechanism) {
            return self.sasl_failure("invalid-mechanism", None);
        }
        let text = el.text();
        let initial = match text.trim() {
            "" => None,
            "=" => Some(Vec::new()),
            t => match B64.decode(t) {
                Ok(d) => Some(d),
                Err(_) => return self.sasl_failure("incorrect-encoding", None),
            },
        };
        match mechanism {
            "PLAIN" => match initial {
                None => {
                    // No initial response: ask for it with an empty challenge (RFC 6120 §6.4.2).
                    self.state = State::PlainAwaitInitial;
                    vec![Action::Send(Element::new("challenge", ns::SASL).to_bytes(ns::CLIENT))]
                }
                Some(data) => self.plain(&data),
            },
            m => {
                let hash = if m == "SCRAM-SHA-1" { ScramHash::Sha1 } else { ScramHash::Sha256 };
                match initial {
                    None => {
                        self.state = State::ScramAwaitClientFirst(hash);
                        vec![Action::Send(Element::new("challenge", ns::SASL).to_bytes(ns::CLIENT))]
                    }
                    Some(data) => self.scram_client_first(hash, &data),
                }
            }
        }
    }

    fn plain(&mut self, data: &[u8]) -> Vec<Action> {
        let creds = match parse_plain(data) {
            Ok(c) => c,
            Err(e) => return self.sasl_failure(e.condition(), None),
        };
        let Some(username) = self.local_username(&creds.authcid) else {
            return self.sasl_failure("not-authorized", None);
        };
        if let Some(authzid) = creds.authzid.as_deref() {
            if self.local_username(authzid).as_deref() != Some(username.as_str()) {
                return self.sasl_failure("invalid-authzid", Some(username));
            }
        }
        self.state = State::PlainAwaitVerdict(username.clone());
        vec![Action::VerifyPlain { username, secret: creds.password }]
    }

    /// Answer to [`Action::VerifyPlain`].
    pub fn plain_verdict(&mut self, outcome: AuthOutcome) -> Vec<Action> {
        let State::PlainAwaitVerdict(username) = std::mem::replace(&mut self.state, State::Closed) else {
            return Vec::new();
        };
        match outcome {
            AuthOutcome::Success => self.sasl_success(username, &[]),
            AuthOutcome::Failure => self.sasl_failure("not-authorized", Some(username)),
            AuthOutcome::Blocked => self.sasl_blocked(),
            AuthOutcome::Unavailable => self.sasl_temporary_failure(),
        }
    }

    fn scram_client_first(&mut self, hash: ScramHash, data: &[u8]) -> Vec<Action> {
        let mut server = Box::new(ScramServer::new(hash));
        let first = match server.handle_client_first(data) {
            Ok(f) => f,
            Err(e) => return self.sasl_failure(e.condition(), None),
        };
        let Some(username) = self.local_username(&first.username) else {
            return self.sasl_failure("not-authorized", None);
        };
        if let Some(authzid) = first.authzid.as_deref() {
            if self.local_username(authzid).as_deref() != Some(username.as_str()) {
                return self.sasl_failure("invalid-authzid", Some(username));
            }
        }
        self.state = State::ScramAwaitCredentials(server, username.clone());
        vec![Action::LookupScram { username, hash }]
    }

    /// Answer to [`Action::LookupScram`]: `Ok(None)` for an unknown user (the exchange
    /// continues with fake parameters and fails at the end).
    pub fn scram_credentials(
        &mut self,
        creds: Result<Option<ScramCredentials>, CredentialsUnavailable>,
    ) -> Vec<Action> {
        let State::ScramAwaitCredentials(mut server, username) = std::mem::replace(&mut self.state, State::Closed)
        else {
            return Vec::new();
        };
        let creds = match creds {
            Ok(creds) => creds,
            Err(CredentialsUnavailable::Blocked) => return self.sasl_blocked(),
            Err(CredentialsUnavailable::Temporarily) => return self.sasl_temporary_failure(),
        };
        let server_first = server.server_first(creds.as_ref());
        self.state = State::ScramAwaitFinal(server, username);
        vec![Action::Send(Element::new("challenge", ns::SASL).with_text(B64.encode(server_first)).to_bytes(ns::CLIENT))]
    }

    fn sasl_success(&mut self, username: String, additional: &[u8]) -> Vec<Action> {
        let mut success = Element::new("success", ns::SASL);
        if !additional.is_empty() {
            success.append_text(B64.encode(additional));
        }
        self.authenticated = Some(username);
        self.state = State::AwaitHeader;
        vec![Action::Send(success.to_bytes(ns::CLIENT)), Action::ResetParser]
    }

    fn sasl_failure(&mut self, condition: &str, username: Option<String>) -> Vec<Action> {
        self.failures += 1;
        self.state = State::AwaitNegotiation;
        let mut out = vec![Action::Send(sasl_failure_element(condition, None)), Action::AuthFailed { username }];
        if self.failures >= self.config.max_auth_attempts {
            out.extend(self.fail_stream("policy-violation", Some("too many failed authentication attempts")));
        }
        out
    }

    /// The client may authenticate again on this stream; the attempt is not counted.
    fn sasl_temporary_failure(&mut self) -> Vec<Action> {
        self.state = State::AwaitNegotiation;
        vec![Action::Send(sasl_failure_element(
            "temporary-auth-failure",
            Some("the account is moving between nodes; try again shortly"),
        ))]
    }

    fn sasl_blocked(&mut self) -> Vec<Action> {
        self.state = State::AwaitNegotiation;
        let mut out = vec![Action::Send(sasl_failure_element(
            "not-authorized",
            Some("too many failed attempts; try again later"),
        ))];
        out.extend(self.fail_stream("policy-violation", Some("authentication rate limit exceeded")));
        out
    }

    /// Maps a SASL authcid (`alice` or `alice@domain`) to a normalised local username.
    fn local_username(&self, authcid: &str) -> Option<String> {
        let candidate =
            if authcid.contains('@') { authcid.to_owned() } else { format!("{authcid}@{}", self.config.domain) };
        let jid = waddle_jid::BareJid::new(&candidate).ok()?;
        if jid.domain().as_str() != self.config.domain {
            return None;
        }
        jid.node().map(|n| n.as_str().to_owned())
    }

    fn on_register(&mut self, iq: Element, query: &Element) -> Vec<Action> {
        self.state = State::AwaitNegotiation;
        match iq.attr("type") {
            Some("get") => {
                let form = Element::new("query", ns::REGISTER)
                    .with_child(
                        Element::new("instructions", ns::REGISTER)
                            .with_text("Choose a username and password to register with this server."),
                    )
                    .with_child(Element::new("username", ns::REGISTER))
                    .with_child(Element::new("password", ns::REGISTER));
                vec![Action::Send(iq_result_with(&iq, form).to_bytes(ns::CLIENT))]
            }
            Some("set") => {
                if query.has_child("remove", ns::REGISTER) {
                    return send_error(&iq, "not-allowed", Some("not registered"));
                }
                let username = query.get_child("username", ns::REGISTER).map(Element::text);
                let password = query.get_child("password", ns::REGISTER).map(Element::text);
                match (username, password) {
                    (Some(u), Some(p)) if !u.is_empty() && !p.is_empty() => {
                        let Some(username) = self.local_username(&u) else {
                            return send_error(&iq, "jid-malformed", Some("invalid username"));
                        };
                        self.state = State::AwaitRegisterResult(iq);
                        vec![Action::Register { username, password: p }]
                    }
                    _ => send_error(&iq, "not-acceptable", Some("username and password are required")),
                }
            }
            _ => send_error(&iq, "bad-request", None),
        }
    }

    /// Answer to [`Action::Register`].
    pub fn register_result(&mut self, outcome: RegisterOutcome) -> Vec<Action> {
        let State::AwaitRegisterResult(iq) = std::mem::replace(&mut self.state, State::AwaitNegotiation) else {
            return Vec::new();
        };
        match outcome {
            RegisterOutcome::Created => vec![Action::Send(iq_result(&iq).to_bytes(ns::CLIENT))],
            RegisterOutcome::Conflict => send_error(&iq, "conflict", Some("username already taken")),
            RegisterOutcome::NotAcceptable(reason) => send_error(&iq, "not-acceptable", Some(&reason)),
            RegisterOutcome::RateLimited => {
                send_error(&iq, "resource-constraint", Some("too many accounts created from this address"))
            }
            RegisterOutcome::InternalError => send_error(&iq, "internal-server-error", None),
        }
    }

    fn on_post_auth_element(&mut self, el: Element) -> Vec<Action> {
        let Some(username) = self.authenticated.clone() else {
            return self.fail_stream("not-authorized", None);
        };
        if el.is("iq", ns::CLIENT) && el.attr("type") == Some("set") {
            if let Some(bind) = iq_payload(&el).filter(|p| p.is("bind", ns::BIND)) {
                let requested =
                    bind.get_child("resource", ns::BIND).map(Element::text).filter(|r| !r.trim().is_empty());
                let resource = match requested {
                    Some(r) => match waddle_jid::FullJid::new(&format!("{username}@{}/{r}", self.config.domain)) {
                        Ok(full) => full.resource().as_str().to_owned(),
                        Err(_) => {
                            self.state = State::AwaitNegotiation;
                            return send_error(&el, "bad-request", Some("invalid resource"));
                        }
                    },
                    None => generated_resource(),
                };
                self.state = State::AwaitBindResult(el);
                return vec![Action::Bind { username, resource }];
            }
        }
        if self.config.stream_management && el.ns() == crate::sm::NS {
            self.state = State::AwaitNegotiation;
            return match el.name() {
                "resume" => match (el.attr("previd"), crate::sm::parse_h(&el)) {
                    (Some(previd), Some(h)) if !previd.is_empty() => {
                        self.state = State::AwaitResumeResult;
                        vec![Action::Resume { username, previd: previd.to_owned(), h }]
                    }
                    _ => vec![Action::Send(crate::sm::failed("bad-request", None).to_bytes(ns::CLIENT))],
                },
                // XEP-0198 §3: enabling before binding is refused, the stream goes on.
                _ => vec![Action::Send(crate::sm::failed("unexpected-request", None).to_bytes(ns::CLIENT))],
            };
        }
        // RFC 6120 §7.1: nothing but binding is allowed before a resource is bound.
        self.fail_stream("not-authorized", Some("bind a resource first"))
    }

    /// Answer to [`Action::Resume`]: the session took the stream over (it sends
    /// `<resumed/>` itself, as only it knows its count); negotiation is over.
    pub fn resume_accepted(&mut self) {
        if matches!(self.state, State::AwaitResumeResult) {
            self.state = State::Established;
        }
    }

    /// Answer to [`Action::Resume`]: no such session (unknown, expired, another
    /// user's): `<failed><item-not-found/></failed>`, and the client may bind instead.
    pub fn resume_failed(&mut self) -> Vec<Action> {
        if !matches!(self.state, State::AwaitResumeResult) {
            return Vec::new();
        }
        self.state = State::AwaitNegotiation;
        vec![Action::Send(crate::sm::failed("item-not-found", None).to_bytes(ns::CLIENT))]
    }

    /// Answer to [`Action::Bind`] with the bound full JID.
    pub fn bound(&mut self, full_jid: &str) -> Vec<Action> {
        let State::AwaitBindResult(iq) = std::mem::replace(&mut self.state, State::Established) else {
            return Vec::new();
        };
        let payload = Element::new("bind", ns::BIND).with_child(Element::new("jid", ns::BIND).with_text(full_jid));
        vec![Action::Send(iq_result_with(&iq, payload).to_bytes(ns::CLIENT))]
    }

    fn fail_stream(&mut self, condition: &str, text: Option<&str>) -> Vec<Action> {
        self.state = State::Closed;
        let mut out = Vec::new();
        if !self.header_sent {
            self.header_sent = true;
            out.push(Action::Send(stream::header(&self.config.domain, &new_stream_id(), None)));
        }
        out.push(Action::Send(stream::error(condition, text)));
        out.push(Action::Close);
        out
    }
}

fn send_error(iq: &Element, condition: &str, text: Option<&str>) -> Vec<Action> {
    error_reply(iq, condition, text).map(|e| vec![Action::Send(e.to_bytes(ns::CLIENT))]).unwrap_or_default()
}

fn sasl_failure_element(condition: &str, text: Option<&str>) -> Vec<u8> {
    let mut failure = Element::new("failure", ns::SASL).with_child(Element::new(condition, ns::SASL));
    if let Some(text) = text {
        failure.append_child(Element::new("text", ns::SASL).with_text(text));
    }
    failure.to_bytes(ns::CLIENT)
}

fn decode_sasl_payload(el: &Element) -> Result<Vec<u8>, ()> {
    let text = el.text();
    match text.trim() {
        "" | "=" => Ok(Vec::new()),
        t => B64.decode(t).map_err(|_| ()),
    }
}

pub(crate) fn random_token(len: usize) -> String {
    rand::thread_rng().sample_iter(&Alphanumeric).take(len).map(char::from).collect()
}

fn new_stream_id() -> String {
    random_token(16)
}

fn generated_resource() -> String {
    format!("waddle-{}", random_token(10))
}

#[cfg(test)]
mod tests;
