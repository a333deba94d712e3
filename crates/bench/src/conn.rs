//! One client connection: TCP, TLS (STARTTLS or direct), SASL, resource binding, and a
//! stanza reader over the workspace's XML stream parser.

use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use waddle_sasl::{SaltedPassword, ScramClient, ScramHash};
use waddle_xml::{Element, Limits, StreamEvent, StreamParser, NS_CLIENT};

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
}

fn parser() -> StreamParser {
    // A client trusts its server more than a server trusts clients: rosters and MAM pages
    // can be large.
    StreamParser::new(Limits { max_stanza_bytes: 8 << 20, max_depth: 128, max_header_bytes: 16 << 10 })
}

impl<I: Io> XmppStream<I> {
    fn new(io: I) -> XmppStream<I> {
        XmppStream { io, parser: parser(), buf: vec![0; 16 << 10] }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await?;
        Ok(())
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

    /// The next top-level element; a stream error or close is an error.
    pub async fn next_stanza(&mut self) -> anyhow::Result<Element> {
        match self.next_event().await? {
            StreamEvent::Stanza(el) if el.is("error", NS_STREAM) => {
                let condition = el.children().next().map(|c| c.name().to_owned()).unwrap_or_default();
                bail!("stream error: {condition}")
            }
            StreamEvent::Stanza(el) => Ok(el),
            StreamEvent::Header(_) => bail!("unexpected stream header"),
            StreamEvent::Close => bail!("server closed the stream"),
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

    /// Closes the stream politely and drops the connection.
    pub async fn close(mut self) {
        let _ = self.send(b"</stream:stream>").await;
        let _ = self.io.shutdown().await;
    }
}

impl XmppStream {
    pub fn into_split(self) -> (StanzaReader, tokio::io::WriteHalf<Box<dyn Io>>) {
        let (r, w) = tokio::io::split(self.io);
        (StanzaReader { io: r, parser: self.parser, buf: self.buf }, w)
    }
}

/// The read half of a negotiated stream.
pub struct StanzaReader {
    io: tokio::io::ReadHalf<Box<dyn Io>>,
    parser: StreamParser,
    buf: Vec<u8>,
}

impl StanzaReader {
    /// The next stanza; `Ok(None)` when the stream ends.
    pub async fn next(&mut self) -> anyhow::Result<Option<Element>> {
        loop {
            match self.parser.next_event()? {
                Some(StreamEvent::Stanza(el)) => return Ok(Some(el)),
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
    pub fn new(domain: &str, tls: TlsMode) -> anyhow::Result<Connector> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth();
        Ok(Connector { domain: domain.to_owned(), tls, tls_config: Arc::new(config) })
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

    /// Connects, authenticates and binds `resource`.
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
        Ok(Session { stream, full_jid, salted })
    }
}

async fn sasl_step(stream: &mut XmppStream) -> anyhow::Result<Element> {
    let el = stream.next_stanza().await?;
    if el.is("failure", NS_SASL) {
        let condition = el.children().next().map(|c| c.name().to_owned()).unwrap_or_default();
        bail!("authentication failed: {condition}");
    }
    Ok(el)
}

/// SASL as configured; returns the SCRAM SaltedPassword to cache.
async fn authenticate(
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
