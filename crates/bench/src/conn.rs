//! One client connection: TCP, TLS (STARTTLS or direct), SASL, resource binding, and a
//! stanza reader over the workspace's XML stream parser.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use waddle_sasl::{SaltedPassword, ScramClient, ScramHash};
use waddle_xml::{Element, Limits, StreamEvent, StreamParser, NS_CLIENT};

use crate::sm::{self, Inbound, Sm, SmConfig, SmIn, SmNotOffered, SmOut, SmShared, NS_SM};

const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
const NS_SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
const NS_STREAM: &str = "http://etherx.jabber.org/streams";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    None,
    StartTls,
    Direct,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    ScramSha256,
    ScramSha1,
    Plain,
    /// PLAIN with a token from the waddle HTTP API instead of the password.
    Token,
}

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An XML stream, before or after negotiation (boxed once TLS is settled).
pub struct XmppStream<I = Box<dyn Io>> {
    io: I,
    parser: StreamParser,
    buf: Vec<u8>,
    /// Stream management, once the server has answered `<enabled/>`.
    sm: Option<Sm>,
}

fn parser() -> StreamParser {
    // A client trusts its server more than a server trusts clients: rosters and MAM pages
    // can be large.
    StreamParser::new(Limits { max_stanza_bytes: 8 << 20, max_depth: 128, max_header_bytes: 16 << 10 })
}

impl<I: Io> XmppStream<I> {
    fn new(io: I) -> XmppStream<I> {
        XmppStream { io, parser: parser(), buf: vec![0; 16 << 10], sm: None }
    }

    /// Writes bytes as they are: stream headers, negotiation, nonzas.
    pub async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Writes one stanza (`message`, `presence`, `iq`): counted for stream management,
    /// with an `<r/>` in the same write when one is due.
    pub async fn send_stanza(&mut self, stanza: &[u8]) -> anyhow::Result<()> {
        if self.sm.as_mut().is_some_and(|sm| sm.outbound.stanza()) {
            let mut bytes = Vec::with_capacity(stanza.len() + sm::REQUEST.len());
            bytes.extend_from_slice(stanza);
            bytes.extend_from_slice(sm::REQUEST);
            return self.send(&bytes).await;
        }
        self.send(stanza).await
    }

    /// The next stream event, reading as needed.
    async fn next_event(&mut self) -> anyhow::Result<StreamEvent> {
        loop {
            if let Some(event) = self.parser.next_event()? {
                return Ok(event);
            }
            let n = self.io.read(&mut self.buf).await?;
            if n == 0 {
                bail!("server closed the connection");
            }
            self.parser.feed(&self.buf[..n])?;
        }
    }

    /// The next top-level element; a stream error or close is an error. Once stream
    /// management is enabled, its nonzas are handled here (a `<r/>` is answered at once)
    /// and not returned; a protocol error ends the session.
    pub async fn next_stanza(&mut self) -> anyhow::Result<Element> {
        loop {
            let el = match self.next_event().await? {
                StreamEvent::Stanza(el) if el.is("error", NS_STREAM) => {
                    let condition = el.children().next().map(|c| c.name().to_owned()).unwrap_or_default();
                    bail!("stream error: {condition}")
                }
                StreamEvent::Stanza(el) => el,
                StreamEvent::Header(_) => bail!("unexpected stream header"),
                StreamEvent::Close => bail!("server closed the stream"),
            };
            let Some(sm) = self.sm.as_mut() else { return Ok(el) };
            match sm.inbound.classify(&el) {
                Inbound::Stanza => return Ok(el),
                Inbound::Answer(h) => {
                    let mut answer = Vec::with_capacity(48);
                    sm::write_answer(&mut answer, h);
                    self.send(&answer).await?;
                }
                Inbound::Acked => {}
                Inbound::ProtocolError(e) => bail!("stream management: {e}"),
            }
        }
    }

    /// Enables stream management on a bound session (`features`: the post-authentication
    /// stream features). Fails when the server does not advertise it or answers
    /// `<failed/>`.
    async fn enable_sm(&mut self, features: &Element, config: SmConfig) -> anyhow::Result<()> {
        if !features.has_child("sm", NS_SM) {
            return Err(SmNotOffered.into());
        }
        let enable = if config.resume {
            format!("<enable xmlns='{NS_SM}' resume='true'/>")
        } else {
            format!("<enable xmlns='{NS_SM}'/>")
        };
        self.send(enable.as_bytes()).await?;
        loop {
            // Anything before <enabled/> predates the server's count: not counted.
            let el = self.next_stanza().await?;
            if el.is("failed", NS_SM) {
                let condition = el.children().next().map(|c| c.name().to_owned()).unwrap_or_default();
                bail!("the server refused <enable/> with <failed/> ({condition})");
            }
            if el.is("enabled", NS_SM) {
                if config.resume {
                    let granted = matches!(el.attr("resume"), Some("true" | "1"));
                    if !granted || el.attr("id").is_none_or(str::is_empty) {
                        bail!("asked for a resumable session; the server enabled stream management without resumption");
                    }
                }
                let sm = Sm::enabled(config);
                if let Some(id) = el.attr("id").filter(|_| config.resume) {
                    sm.set_resume_id(id);
                }
                self.sm = Some(sm);
                return Ok(());
            }
        }
    }

    /// Opens (or reopens) the stream and returns `<stream:features/>`.
    async fn open(&mut self, domain: &str) -> anyhow::Result<Element> {
        self.parser.reset();
        let header = format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>"
        );
        self.send(header.as_bytes()).await?;
        match self.next_event().await? {
            StreamEvent::Header(_) => {}
            other => bail!("expected a stream header, got {other:?}"),
        }
        let features = self.next_stanza().await?;
        if !features.is("features", NS_STREAM) {
            bail!("expected stream features, got <{}>", features.name());
        }
        Ok(features)
    }

    /// Waits for the IQ answer with `id`, skipping anything else.
    pub async fn iq_answer(&mut self, id: &str) -> anyhow::Result<Element> {
        loop {
            let el = self.next_stanza().await?;
            if el.name() == "iq" && el.attr("id") == Some(id) {
                return Ok(el);
            }
        }
    }

    /// Closes the stream politely and drops the connection (with stream management, a
    /// last `<a/>` first, so the server holds nothing unacknowledged for us).
    pub async fn close(mut self) {
        if let Some(sm) = &self.sm {
            let mut answer = Vec::with_capacity(48);
            sm::write_answer(&mut answer, sm.inbound.handled());
            let _ = self.send(&answer).await;
        }
        let _ = self.send(b"</stream:stream>").await;
        let _ = self.io.shutdown().await;
    }
}

impl XmppStream {
    /// Splits a negotiated stream into a reader (its own task) and a writer that the
    /// reader shares, to answer the server's `<r/>` at once.
    pub fn into_split(self) -> (StanzaReader, SharedWriter) {
        let (r, w) = tokio::io::split(self.io);
        let (sm_in, sm_out) = match self.sm {
            Some(Sm { inbound, outbound }) => (Some(inbound), Some(outbound)),
            None => (None, None),
        };
        let writer = Arc::new(Mutex::new(Writer { io: w, sm: sm_out }));
        let reader = StanzaReader {
            io: r,
            parser: self.parser,
            buf: self.buf,
            sm: sm_in,
            writer: Arc::clone(&writer),
            scratch: Vec::new(),
        };
        (reader, writer)
    }
}

/// A negotiated stream (past the server's header) over an in-memory pipe, split, and
/// the server's end: for tests of the readers built on [`StanzaReader`].
#[cfg(test)]
pub(crate) fn split_pipe() -> (StanzaReader, SharedWriter, tokio::io::DuplexStream) {
    let (client, server) = tokio::io::duplex(64 << 10);
    let mut stream = XmppStream::new(Box::new(client) as Box<dyn Io>);
    let header = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";
    stream.parser.feed(header).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(stream.parser.next_event(), Ok(Some(StreamEvent::Header(_)))));
    let (reader, writer) = stream.into_split();
    (reader, writer, server)
}

/// The write half of a negotiated stream, shared by its writer task and its reader.
pub type SharedWriter = Arc<Mutex<Writer>>;

pub struct Writer {
    io: tokio::io::WriteHalf<Box<dyn Io>>,
    sm: Option<SmOut>,
}

impl Writer {
    /// Writes one stanza held in `buf`, counted for stream management; when an `<r/>` is
    /// due it is appended to `buf` and leaves in the same write.
    pub async fn send_stanza(&mut self, buf: &mut Vec<u8>) -> std::io::Result<()> {
        if self.sm.as_mut().is_some_and(SmOut::stanza) {
            buf.extend_from_slice(sm::REQUEST);
        }
        self.send(buf).await
    }

    /// Writes bytes as they are (nonzas, the stream's end).
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// Asks the server for an acknowledgement now (no-op without stream management).
    pub async fn request_ack(&mut self) -> std::io::Result<()> {
        let Some(sm) = self.sm.as_mut() else { return Ok(()) };
        sm.request_sent();
        self.send(sm::REQUEST).await
    }

    /// Ends the stream and shuts the connection down.
    pub async fn close(&mut self) {
        let _ = self.send(b"</stream:stream>").await;
        let _ = self.io.shutdown().await;
    }
}

/// The read half of a negotiated stream.
pub struct StanzaReader {
    io: tokio::io::ReadHalf<Box<dyn Io>>,
    parser: StreamParser,
    buf: Vec<u8>,
    sm: Option<SmIn>,
    writer: SharedWriter,
    /// The answer being written (reused).
    scratch: Vec<u8>,
}

impl StanzaReader {
    /// The next stanza; `Ok(None)` when the stream ends. Stream management nonzas are
    /// consumed here and never returned: `<r/>` is answered at once, `<a/>` is checked
    /// against what was sent, and a protocol error is recorded in the session's counters
    /// (see [`SmShared::error`]) without ending the session.
    pub async fn next(&mut self) -> anyhow::Result<Option<Element>> {
        loop {
            let event = self.parser.next_event()?;
            match event {
                Some(StreamEvent::Stanza(el)) => {
                    let Some(sm) = self.sm.as_mut() else { return Ok(Some(el)) };
                    match sm.classify(&el) {
                        Inbound::Stanza => return Ok(Some(el)),
                        Inbound::Answer(h) => {
                            self.scratch.clear();
                            sm::write_answer(&mut self.scratch, h);
                            self.writer.lock().await.send(&self.scratch).await?;
                        }
                        Inbound::Acked => {}
                        Inbound::ProtocolError(e) => sm.shared().error(e),
                    }
                    continue;
                }
                Some(StreamEvent::Close) => return Ok(None),
                Some(StreamEvent::Header(_)) => bail!("unexpected stream header"),
                None => {}
            }
            let n = self.io.read(&mut self.buf).await?;
            if n == 0 {
                return Ok(None);
            }
            self.parser.feed(&self.buf[..n])?;
        }
    }

    /// With stream management, a last unsolicited `<a/>` before the stream is closed, so
    /// that the server holds nothing unacknowledged for this session.
    pub async fn final_ack(&mut self) {
        let Some(sm) = &self.sm else { return };
        self.scratch.clear();
        sm::write_answer(&mut self.scratch, sm.handled());
        let _ = self.writer.lock().await.send(&self.scratch).await;
    }

    /// The session's stream management counters, if enabled.
    pub fn sm_shared(&self) -> Option<Arc<SmShared>> {
        self.sm.as_ref().map(|sm| Arc::clone(sm.shared()))
    }
}

/// Accepts any server certificate: the generator measures servers on loopback with
/// self-signed certificates; it is not a client to trust with secrets.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What every connection of a run shares.
#[derive(Clone)]
pub struct Connector {
    pub domain: String,
    pub tls: TlsMode,
    /// Enable XEP-0198 on every session after bind.
    pub sm: Option<SmConfig>,
    tls_config: Arc<rustls::ClientConfig>,
}

/// Credentials of one user, with what a real client would cache between logins.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub username: String,
    /// The password, or the token for [`Auth::Token`].
    pub secret: String,
    pub auth: Auth,
    pub salted: Option<SaltedPassword>,
}

/// A logged-in, bound session.
pub struct Session {
    pub stream: XmppStream,
    pub full_jid: String,
    /// What SCRAM computed, for the next login of the same user.
    pub salted: Option<SaltedPassword>,
}

impl Connector {
    pub fn new(domain: &str, tls: TlsMode, sm: Option<SmConfig>) -> anyhow::Result<Connector> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth();
        Ok(Connector { domain: domain.to_owned(), tls, sm, tls_config: Arc::new(config) })
    }

    async fn wrap_tls(&self, tcp: TcpStream) -> anyhow::Result<Box<dyn Io>> {
        let name = rustls_pki_types::ServerName::try_from(self.domain.clone()).context("TLS server name")?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls_config)).connect(name, tcp).await?;
        Ok(Box::new(tls))
    }

    /// A stream with TLS as configured, features read.
    pub async fn connect(&self, addr: &str) -> anyhow::Result<(XmppStream, Element)> {
        let tcp = TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
        tcp.set_nodelay(true)?;
        let io: Box<dyn Io> = match self.tls {
            TlsMode::Direct => self.wrap_tls(tcp).await?,
            TlsMode::None => Box::new(tcp),
            TlsMode::StartTls => {
                let mut plain = XmppStream::new(tcp);
                let features = plain.open(&self.domain).await?;
                if !features.has_child("starttls", NS_TLS) {
                    bail!("server offers no STARTTLS");
                }
                plain.send(format!("<starttls xmlns='{NS_TLS}'/>").as_bytes()).await?;
                let answer = plain.next_stanza().await?;
                if !answer.is("proceed", NS_TLS) {
                    bail!("STARTTLS refused: <{}>", answer.name());
                }
                self.wrap_tls(plain.io).await?
            }
        };
        let mut stream = XmppStream::new(io);
        let features = stream.open(&self.domain).await?;
        Ok((stream, features))
    }

    /// Connects, authenticates, binds `resource` and enables stream management if asked.
    pub async fn login(&self, addr: &str, creds: &Credentials, resource: &str) -> anyhow::Result<Session> {
        let (mut stream, features) = self.connect(addr).await?;
        let salted = authenticate(&mut stream, &features, creds).await?;
        let features = stream.open(&self.domain).await?;
        let bind =
            format!("<iq type='set' id='bind'><bind xmlns='{NS_BIND}'><resource>{resource}</resource></bind></iq>");
        stream.send(bind.as_bytes()).await?;
        let answer = stream.iq_answer("bind").await?;
        let full_jid =
            answer
                .get_child("bind", NS_BIND)
                .and_then(|b| b.get_child("jid", NS_BIND))
                .map(Element::text)
                .ok_or_else(|| anyhow!("bind failed: {}", String::from_utf8_lossy(&answer.to_bytes(NS_CLIENT))))?;
        let session_required =
            features.get_child("session", NS_SESSION).is_some_and(|s| !s.has_child("optional", NS_SESSION));
        if session_required {
            stream.send(format!("<iq type='set' id='sess'><session xmlns='{NS_SESSION}'/></iq>").as_bytes()).await?;
            let answer = stream.iq_answer("sess").await?;
            if answer.attr("type") != Some("result") {
                bail!("session establishment failed");
            }
        }
        if let Some(config) = self.sm {
            stream.enable_sm(&features, config).await?;
        }
        Ok(Session { stream, full_jid, salted })
    }
}

impl Connector {
    /// Connects, authenticates and resumes the XEP-0198 session `previous` describes
    /// (its id and counters) instead of binding. `Ok(None)`: the server answered
    /// `<failed/>` (the session is gone); the caller logs in afresh.
    pub async fn resume(
        &self,
        addr: &str,
        creds: &Credentials,
        previous: &SmShared,
    ) -> anyhow::Result<Option<XmppStream>> {
        let (Some(config), Some(previd)) = (self.sm, previous.resume_id()) else {
            bail!("the previous session was not resumable");
        };
        let (mut stream, features) = self.connect(addr).await?;
        authenticate(&mut stream, &features, creds).await?;
        let features = stream.open(&self.domain).await?;
        if !features.has_child("sm", NS_SM) {
            return Err(SmNotOffered.into());
        }
        let previd = previd.replace('&', "&amp;").replace('\'', "&apos;").replace('<', "&lt;");
        let resume = format!("<resume xmlns='{NS_SM}' h='{}' previd='{previd}'/>", previous.handled());
        stream.send(resume.as_bytes()).await?;
        let answer = stream.next_stanza().await?;
        if answer.is("failed", NS_SM) {
            return Ok(None);
        }
        if !answer.is("resumed", NS_SM) {
            bail!("expected <resumed/> or <failed/>, got <{}>", answer.name());
        }
        let h = answer.attr("h").and_then(|h| h.parse::<u32>().ok()).context("<resumed/> without a valid h")?;
        stream.sm = Some(Sm::resumed(config, previous, h).map_err(|e| anyhow!("resumed: {e}"))?);
        Ok(Some(stream))
    }
}

/// A SASL `<failure/>` and its condition.
#[derive(Debug, thiserror::Error)]
#[error("authentication failed: {condition}")]
pub struct SaslFailure {
    pub condition: String,
}

async fn sasl_step(stream: &mut XmppStream) -> anyhow::Result<Element> {
    let el = stream.next_stanza().await?;
    if el.is("failure", NS_SASL) {
        let condition = el.children().next().map(|c| c.name().to_owned()).unwrap_or_default();
        return Err(SaslFailure { condition }.into());
    }
    Ok(el)
}

/// How often, and how far apart, a `temporary-auth-failure` (the account's partition is
/// moving between nodes) is retried on the same stream, as RFC 6120 §6.5.13 advises.
const TEMPORARY_AUTH_RETRIES: u32 = 10;
const TEMPORARY_AUTH_BACKOFF: Duration = Duration::from_millis(500);

/// SASL as configured; returns the SCRAM SaltedPassword to cache.
async fn authenticate(
    stream: &mut XmppStream,
    features: &Element,
    creds: &Credentials,
) -> anyhow::Result<Option<SaltedPassword>> {
    let mut attempt = 0;
    loop {
        match authenticate_once(stream, features, creds).await {
            Err(e)
                if attempt < TEMPORARY_AUTH_RETRIES
                    && e.downcast_ref::<SaslFailure>().is_some_and(|f| f.condition == "temporary-auth-failure") =>
            {
                attempt += 1;
                tokio::time::sleep(TEMPORARY_AUTH_BACKOFF).await;
            }
            other => return other,
        }
    }
}

async fn authenticate_once(
    stream: &mut XmppStream,
    features: &Element,
    creds: &Credentials,
) -> anyhow::Result<Option<SaltedPassword>> {
    let offered: Vec<String> = features
        .get_child("mechanisms", NS_SASL)
        .map(|m| m.children().map(Element::text).collect())
        .unwrap_or_default();
    let (mechanism, hash) = match creds.auth {
        Auth::ScramSha256 => ("SCRAM-SHA-256", Some(ScramHash::Sha256)),
        Auth::ScramSha1 => ("SCRAM-SHA-1", Some(ScramHash::Sha1)),
        Auth::Plain | Auth::Token => ("PLAIN", None),
    };
    if !offered.iter().any(|m| m == mechanism) {
        bail!("server does not offer {mechanism} (offers {offered:?})");
    }
    let Some(hash) = hash else {
        let mut plain = Vec::with_capacity(creds.username.len() + creds.secret.len() + 2);
        plain.push(0);
        plain.extend_from_slice(creds.username.as_bytes());
        plain.push(0);
        plain.extend_from_slice(creds.secret.as_bytes());
        let auth = format!("<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{}</auth>", B64.encode(plain));
        stream.send(auth.as_bytes()).await?;
        let answer = sasl_step(stream).await?;
        if !answer.is("success", NS_SASL) {
            bail!("unexpected SASL answer <{}>", answer.name());
        }
        return Ok(None);
    };
    let mut client = ScramClient::new(hash, &creds.username, &creds.secret);
    if let Some(cached) = &creds.salted {
        client = client.with_cached_salted_password(cached.clone());
    }
    let first = client.client_first();
    stream
        .send(format!("<auth xmlns='{NS_SASL}' mechanism='{mechanism}'>{}</auth>", B64.encode(first)).as_bytes())
        .await?;
    let challenge = sasl_step(stream).await?;
    if !challenge.is("challenge", NS_SASL) {
        bail!("expected a SASL challenge, got <{}>", challenge.name());
    }
    let server_first = B64.decode(challenge.text().trim())?;
    let client_final = client.handle_server_first(&server_first)?;
    stream.send(format!("<response xmlns='{NS_SASL}'>{}</response>", B64.encode(client_final)).as_bytes()).await?;
    let mut answer = sasl_step(stream).await?;
    if answer.is("challenge", NS_SASL) {
        // Servers that send server-final as a challenge want an empty response.
        client.verify_server_final(&B64.decode(answer.text().trim())?)?;
        stream.send(format!("<response xmlns='{NS_SASL}'/>").as_bytes()).await?;
        answer = sasl_step(stream).await?;
        if !answer.is("success", NS_SASL) {
            bail!("unexpected SASL answer <{}>", answer.name());
        }
    } else if answer.is("success", NS_SASL) {
        client.verify_server_final(&B64.decode(answer.text().trim())?)?;
    } else {
        bail!("unexpected SASL answer <{}>", answer.name());
    }
    Ok(client.salted_password().cloned())
}

#[cfg(test)]
mod tests {
    use tokio::io::DuplexStream;

    use super::*;

    const HEADER: &[u8] = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

    /// A client stream past its header over an in-memory pipe, and the server's end.
    fn pair() -> (XmppStream, DuplexStream) {
        let (client, server) = tokio::io::duplex(64 << 10);
        let mut stream = XmppStream::new(Box::new(client) as Box<dyn Io>);
        stream.parser.feed(HEADER).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(stream.parser.next_event(), Ok(Some(StreamEvent::Header(_)))));
        (stream, server)
    }

    /// Reads exactly what the client should have written next.
    async fn expect(server: &mut DuplexStream, want: &str) {
        let mut got = vec![0; want.len()];
        tokio::time::timeout(Duration::from_secs(5), server.read_exact(&mut got))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {want}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(String::from_utf8_lossy(&got), want);
    }

    async fn next(reader: &mut StanzaReader) -> Element {
        tokio::time::timeout(Duration::from_secs(5), reader.next())
            .await
            .unwrap_or_else(|_| panic!("timed out"))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("stream ended"))
    }

    #[tokio::test]
    async fn reader_consumes_answers_and_checks_nonzas() {
        let (mut stream, mut server) = pair();
        stream.sm = Some(Sm::enabled(SmConfig { request_every: 2, resume: false }));
        let (mut reader, writer) = stream.into_split();
        let shared = reader.sm_shared().unwrap_or_else(|| panic!("SM not enabled"));

        // Two stanzas sent: the second carries a request in the same write.
        for _ in 0..2 {
            let mut buf = b"<message to='x'/>".to_vec();
            writer.lock().await.send_stanza(&mut buf).await.unwrap_or_else(|e| panic!("{e}"));
        }
        expect(&mut server, "<message to='x'/><message to='x'/><r xmlns='urn:xmpp:sm:3'/>").await;

        server
            .write_all(
                b"<message><body>a</body></message><r xmlns='urn:xmpp:sm:3'/><presence/>\
                  <a xmlns='urn:xmpp:sm:3' h='2'/><iq type='get' id='q'/>",
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // Only the stanzas come out; the request was answered with h=1 (the message
        // before it) at once, before the presence after it was handed over.
        assert_eq!(next(&mut reader).await.name(), "message");
        assert_eq!(next(&mut reader).await.name(), "presence");
        expect(&mut server, "<a xmlns='urn:xmpp:sm:3' h='1'/>").await;
        assert_eq!(next(&mut reader).await.name(), "iq");
        let stats = shared.stats();
        assert_eq!((stats.sent, stats.acked, stats.requests_sent, stats.requests_answered), (2, 2, 1, 1));
        assert_eq!(stats.errors, 0);

        // An ack beyond what was sent is recorded as a protocol error; reading goes on.
        server.write_all(b"<a xmlns='urn:xmpp:sm:3' h='3'/><message/>").await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(next(&mut reader).await.name(), "message");
        assert_eq!(shared.stats().errors, 1);
        assert!(shared.first_error().is_some_and(|e| e.contains("h=3")));

        // The last ack covers all four stanzas received.
        reader.final_ack().await;
        expect(&mut server, "<a xmlns='urn:xmpp:sm:3' h='4'/>").await;
    }

    #[tokio::test]
    async fn a_temporary_auth_failure_is_retried_and_a_final_one_is_not() {
        let (mut stream, mut server) = pair();
        let features = Element::new("features", "http://etherx.jabber.org/streams").with_child(
            Element::new("mechanisms", NS_SASL).with_child(Element::new("mechanism", NS_SASL).with_text("PLAIN")),
        );
        let creds = Credentials { username: "u".into(), secret: "p".into(), auth: Auth::Plain, salted: None };
        let client = tokio::spawn(async move { authenticate(&mut stream, &features, &creds).await.map(|_| ()) });
        let auth = format!("<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{}</auth>", B64.encode(b"\0u\0p"));
        expect(&mut server, &auth).await;
        let temporary = format!("<failure xmlns='{NS_SASL}'><temporary-auth-failure/></failure>");
        server.write_all(temporary.as_bytes()).await.unwrap_or_else(|e| panic!("{e}"));
        expect(&mut server, &auth).await;
        server.write_all(format!("<success xmlns='{NS_SASL}'/>").as_bytes()).await.unwrap_or_else(|e| panic!("{e}"));
        client.await.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|e| panic!("{e}"));

        let (mut stream, mut server) = pair();
        let features = Element::new("features", "http://etherx.jabber.org/streams").with_child(
            Element::new("mechanisms", NS_SASL).with_child(Element::new("mechanism", NS_SASL).with_text("PLAIN")),
        );
        let creds = Credentials { username: "u".into(), secret: "p".into(), auth: Auth::Plain, salted: None };
        let client = tokio::spawn(async move { authenticate(&mut stream, &features, &creds).await.map(|_| ()) });
        expect(&mut server, &auth).await;
        let refused = format!("<failure xmlns='{NS_SASL}'><not-authorized/></failure>");
        server.write_all(refused.as_bytes()).await.unwrap_or_else(|e| panic!("{e}"));
        let err = client.await.unwrap_or_else(|e| panic!("{e}")).err().unwrap_or_else(|| panic!("accepted"));
        assert_eq!(err.downcast_ref::<SaslFailure>().map(|f| f.condition.as_str()), Some("not-authorized"));
    }

    #[tokio::test]
    async fn without_sm_nonzas_are_not_consumed() {
        let (stream, mut server) = pair();
        let (mut reader, writer) = stream.into_split();
        assert!(reader.sm_shared().is_none());
        let mut buf = b"<presence/>".to_vec();
        writer.lock().await.send_stanza(&mut buf).await.unwrap_or_else(|e| panic!("{e}"));
        expect(&mut server, "<presence/>").await;
        server.write_all(b"<r xmlns='urn:xmpp:sm:3'/>").await.unwrap_or_else(|e| panic!("{e}"));
        assert!(next(&mut reader).await.is("r", NS_SM));
    }

    fn features(xml: &str) -> Element {
        Element::from_bytes(xml.as_bytes(), NS_CLIENT).unwrap_or_else(|e| panic!("{e}"))
    }

    const CONFIG: SmConfig = SmConfig { request_every: 5, resume: false };

    #[tokio::test]
    async fn enable_requires_the_feature_and_enabled() {
        let offered =
            features("<features xmlns='http://etherx.jabber.org/streams'><sm xmlns='urn:xmpp:sm:3'/></features>");

        let (mut stream, _server) = pair();
        let none = features("<features xmlns='http://etherx.jabber.org/streams'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></features>");
        let err = stream.enable_sm(&none, CONFIG).await.err().unwrap_or_else(|| panic!("enabled without the feature"));
        assert!(err.downcast_ref::<SmNotOffered>().is_some(), "{err:#}");

        let (mut stream, mut server) = pair();
        server
            .write_all(b"<failed xmlns='urn:xmpp:sm:3'><unexpected-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let err = stream.enable_sm(&offered, CONFIG).await.err().unwrap_or_else(|| panic!("<failed/> accepted"));
        assert!(format!("{err:#}").contains("unexpected-request"), "{err:#}");
        assert!(stream.sm.is_none());
        expect(&mut server, "<enable xmlns='urn:xmpp:sm:3'/>").await;

        // A resumable session was asked for and not granted.
        let (mut stream, mut server) = pair();
        server.write_all(b"<enabled xmlns='urn:xmpp:sm:3'/>").await.unwrap_or_else(|e| panic!("{e}"));
        let resume = SmConfig { resume: true, ..CONFIG };
        assert!(stream.enable_sm(&offered, resume).await.is_err());
        expect(&mut server, "<enable xmlns='urn:xmpp:sm:3' resume='true'/>").await;

        // Enabled; a stanza that arrived before <enabled/> is not counted, and a request
        // met while waiting for an IQ answer is answered at once.
        let (mut stream, mut server) = pair();
        server
            .write_all(b"<presence/><enabled xmlns='urn:xmpp:sm:3' id='x' resume='true'/>")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        stream.enable_sm(&offered, resume).await.unwrap_or_else(|e| panic!("{e:#}"));
        expect(&mut server, "<enable xmlns='urn:xmpp:sm:3' resume='true'/>").await;
        server
            .write_all(b"<message/><r xmlns='urn:xmpp:sm:3'/><iq type='result' id='q'/>")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let answer = stream.iq_answer("q").await.unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(answer.attr("type"), Some("result"));
        expect(&mut server, "<a xmlns='urn:xmpp:sm:3' h='1'/>").await;
        // Pre-split, a bad ack ends the session.
        server.write_all(b"<a xmlns='urn:xmpp:sm:3' h='1'/>").await.unwrap_or_else(|e| panic!("{e}"));
        let bad = tokio::time::timeout(Duration::from_secs(5), stream.next_stanza()).await;
        assert!(bad.is_ok_and(|r| r.is_err()), "an ack of a stanza never sent was accepted");
    }
}
