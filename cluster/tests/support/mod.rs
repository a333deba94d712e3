//! Shared by the cross-process transport tests and `examples/transport_bench.rs`: test
//! messages, the peer process (a node that answers and records), and child-process helpers.
//!
//! The peer is this same binary re-executed with `WADDLE_PEER_ID` set; it prints
//! `PEER:`-prefixed lines on stdout (`PEER:READY`, `PEER:EVENT Up(1)`, `PEER:FIRST-RECV`)
//! and exits when its stdin closes, so it never outlives its parent.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use waddle_cluster::transport::envelope::WireError;
use waddle_cluster::transport::ractor::{ClusterTls, RactorConfig, RactorTransport};
use waddle_cluster::transport::{
    cast_msg, Dispatcher, Envelope, Inbound, Message, NoResponse, Transport, TransportConfig,
};

fn malformed(kind: u16, reason: &str) -> WireError {
    WireError::Malformed { kind, reason: reason.to_string() }
}

fn check_version(kind: u16, version: u16, known: u16) -> Result<(), WireError> {
    if version == known {
        Ok(())
    } else {
        Err(WireError::UnsupportedVersion { kind, version })
    }
}

fn u64_of(kind: u16, bytes: &[u8]) -> Result<u64, WireError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| malformed(kind, "not 8 bytes"))?;
    Ok(u64::from_be_bytes(arr))
}

/// Request: bytes to send back.
#[derive(Debug, PartialEq)]
pub struct Echo(pub Bytes);
#[derive(Debug, PartialEq)]
pub struct Echoed(pub Bytes);
/// Cast: a sequence number.
#[derive(Debug, PartialEq)]
pub struct Seq(pub u64);
/// Request: how many `Seq` casts arrived, and whether in order (0, 1, 2, ...).
#[derive(Debug, PartialEq)]
pub struct Report;
#[derive(Debug, PartialEq)]
pub struct Counted {
    pub count: u64,
    pub in_order: bool,
}
/// Request: cast `Seq(0..n)` back to the caller, then answer.
#[derive(Debug, PartialEq)]
pub struct SendBack(pub u64);
#[derive(Debug, PartialEq)]
pub struct Ack;

impl Message for Echo {
    const KIND: u16 = 100;
    const VERSION: u16 = 1;
    type Response = Echoed;
    fn encode(&self) -> Bytes {
        self.0.clone()
    }
    fn decode(version: u16, bytes: &[u8]) -> Result<Self, WireError> {
        check_version(Self::KIND, version, 1)?;
        Ok(Echo(Bytes::copy_from_slice(bytes)))
    }
}

impl Message for Echoed {
    const KIND: u16 = 101;
    const VERSION: u16 = 1;
    type Response = NoResponse;
    fn encode(&self) -> Bytes {
        self.0.clone()
    }
    fn decode(version: u16, bytes: &[u8]) -> Result<Self, WireError> {
        check_version(Self::KIND, version, 1)?;
        Ok(Echoed(Bytes::copy_from_slice(bytes)))
    }
}

impl Message for Seq {
    const KIND: u16 = 102;
    const VERSION: u16 = 1;
    type Response = NoResponse;
    fn encode(&self) -> Bytes {
        Bytes::copy_from_slice(&self.0.to_be_bytes())
    }
    fn decode(version: u16, bytes: &[u8]) -> Result<Self, WireError> {
        check_version(Self::KIND, version, 1)?;
        u64_of(Self::KIND, bytes).map(Seq)
    }
}

impl Message for Report {
    const KIND: u16 = 103;
    const VERSION: u16 = 1;
    type Response = Counted;
    fn encode(&self) -> Bytes {
        Bytes::new()
    }
    fn decode(version: u16, _bytes: &[u8]) -> Result<Self, WireError> {
        check_version(Self::KIND, version, 1)?;
        Ok(Report)
    }
}

impl Message for Counted {
    const KIND: u16 = 104;
    const VERSION: u16 = 1;
    type Response = NoResponse;
    fn encode(&self) -> Bytes {
        let mut v = self.count.to_be_bytes().to_vec();
        v.push(u8::from(self.in_order));
        Bytes::from(v)
    }
    fn decode(version: u16, bytes: &[u8]) -> Result<Self, WireError> {
        check_version(Self::KIND, version, 1)?;
        if bytes.len() != 9 {
            return Err(malformed(Self::KIND, "not 9 bytes"));
        }
        Ok(Counted { count: u64_of(Self::KIND, &bytes[..8])?, in_order: bytes[8] == 1 })
    }
}

impl Message for SendBack {
    const KIND: u16 = 105;
    const VERSION: u16 = 1;
    type Response = Ack;
    fn encode(&self) -> Bytes {
        Bytes::copy_from_slice(&self.0.to_be_bytes())
    }
    fn decode(version: u16, bytes: &[u8]) -> Result<Self, WireError> {
        check_version(Self::KIND, version, 1)?;
        u64_of(Self::KIND, bytes).map(SendBack)
    }
}

impl Message for Ack {
    const KIND: u16 = 106;
    const VERSION: u16 = 1;
    type Response = NoResponse;
    fn encode(&self) -> Bytes {
        Bytes::new()
    }
    fn decode(version: u16, _bytes: &[u8]) -> Result<Self, WireError> {
        check_version(Self::KIND, version, 1)?;
        Ok(Ack)
    }
}

/// What arrived: `Seq` numbers, in arrival order.
#[derive(Default)]
pub struct Recorder {
    pub seqs: Mutex<Vec<u64>>,
    pub first_recv: AtomicBool,
}

impl Recorder {
    pub fn counted(&self) -> Counted {
        let seqs = self.seqs.lock().unwrap();
        let in_order = seqs.iter().enumerate().all(|(i, n)| *n == i as u64);
        Counted { count: seqs.len() as u64, in_order }
    }
}

pub type TransportCell = Arc<OnceLock<Arc<dyn Transport>>>;

/// The test node's handlers: answers `Echo`, `Report`, `SendBack`; records `Seq`.
pub fn dispatcher(rec: Arc<Recorder>, transport: TransportCell) -> Dispatcher {
    let mut d = Dispatcher::new();
    d.handle_request(|_, Echo(b)| async move { Ok(Echoed(b)) });
    let r = rec.clone();
    d.handle_request(move |_, Report| {
        let c = r.counted();
        async move { Ok(c) }
    });
    d.handle_request(move |from, SendBack(n)| {
        let t = transport.clone();
        async move {
            let t = t.get().ok_or("not started")?;
            for i in 0..n {
                // Backpressure is not expected at these volumes; report it if it happens.
                cast_msg(t.as_ref(), from, &Seq(i)).map_err(|e| e.to_string())?;
            }
            Ok(Ack)
        }
    });
    d.handle_cast(move |_, Seq(n)| rec.seqs.lock().unwrap().push(n));
    d
}

/// Marks the first envelope received, then delegates.
pub struct Watching {
    pub inner: Dispatcher,
    pub rec: Arc<Recorder>,
    pub print: bool,
}

impl Watching {
    fn first(&self) {
        if !self.rec.first_recv.swap(true, Ordering::SeqCst) && self.print {
            println!("PEER:FIRST-RECV");
        }
    }
}

impl Inbound for Watching {
    fn on_cast(&self, from: u64, env: Envelope) {
        self.first();
        self.inner.on_cast(from, env)
    }
    fn on_call(&self, from: u64, env: Envelope) -> futures_util::future::BoxFuture<'static, Envelope> {
        self.first();
        self.inner.on_call(from, env)
    }
}

/// Fast failure detection for tests.
pub fn test_config(id: u64, port: u16, secret: &str) -> RactorConfig {
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut cfg = RactorConfig::new(id, listen, secret);
    cfg.transport = TransportConfig {
        ping_interval: Duration::from_millis(200),
        down_after: Duration::from_millis(1200),
        ..TransportConfig::default()
    };
    cfg.connect_timeout = Duration::from_secs(1);
    cfg.dial_grace = Duration::from_millis(100);
    cfg.reconnect_min = Duration::from_millis(50);
    cfg.reconnect_max = Duration::from_millis(500);
    cfg
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// A self-signed certificate for `localhost`: (certificate DER, PKCS#8 key DER).
pub fn test_cert() -> (Vec<u8>, Vec<u8>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    (ck.cert.der().to_vec(), ck.key_pair.serialize_der())
}

/// TLS between nodes that all present `cert` and trust only it.
///
/// Built with an explicit provider: this build has both ring (the workspace's rustls
/// features) and aws-lc-rs (ractor_cluster's tokio-rustls default features), so rustls
/// cannot pick a default and `ServerConfig::builder()` would panic.
pub fn cluster_tls(cert: &[u8], key: &[u8]) -> ClusterTls {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = CertificateDer::from(cert.to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec()));
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    ClusterTls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        server_name: ServerName::try_from("localhost").unwrap(),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// A node in the parent process.
pub async fn start_node(cfg: RactorConfig) -> (Arc<RactorTransport>, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let cell: TransportCell = Arc::default();
    let inbound = Watching { inner: dispatcher(rec.clone(), cell.clone()), rec: rec.clone(), print: false };
    let t = RactorTransport::start(cfg, Arc::new(inbound)).await.expect("start transport");
    let _ = cell.set(t.clone());
    (t, rec)
}

/// The peer process's main: a node configured from the environment.
pub async fn run_peer() {
    init_tracing();
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    let id: u64 = env("WADDLE_PEER_ID").parse().unwrap();
    let port: u16 = env("WADDLE_PEER_PORT").parse().unwrap();
    let secret = env("WADDLE_PEER_SECRET");
    let peers: Vec<(u64, String)> = env("WADDLE_PEER_PEERS")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|p| {
            let (id, addr) = p.split_once('=').unwrap();
            (id.parse().unwrap(), addr.to_string())
        })
        .collect();
    let mut cfg = test_config(id, port, &secret);
    if std::env::var("WADDLE_PEER_BENCH").is_ok() {
        cfg.transport = TransportConfig::default();
    }
    if let (Ok(cert), Ok(key)) = (std::env::var("WADDLE_PEER_TLS_CERT"), std::env::var("WADDLE_PEER_TLS_KEY")) {
        cfg.tls = Some(cluster_tls(&unhex(&cert), &unhex(&key)));
    }
    // Exit with the parent.
    std::thread::spawn(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {}
        std::process::exit(0);
    });
    let rec = Arc::new(Recorder::default());
    let cell: TransportCell = Arc::default();
    let inbound = Watching { inner: dispatcher(rec.clone(), cell.clone()), rec, print: true };
    let t = RactorTransport::start(cfg, Arc::new(inbound)).await.expect("peer: start transport");
    let _ = cell.set(t.clone());
    let mut events = t.peer_events();
    t.set_peers(peers);
    println!("PEER:READY");
    while let Ok(ev) = events.recv().await {
        println!("PEER:EVENT {ev:?}");
    }
}

/// A free TCP port on loopback (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process running [`run_peer`]; killed when dropped.
pub struct PeerProcess {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl PeerProcess {
    /// Runs `exe args` with the peer's environment.
    pub fn spawn(exe: &std::path::Path, args: &[&str], id: u64, port: u16, secret: &str, peers: &[(u64, u16)]) -> Self {
        Self::spawn_with(exe, args, id, port, secret, peers, &[])
    }

    /// As [`PeerProcess::spawn`], with more environment variables.
    pub fn spawn_with(
        exe: &std::path::Path,
        args: &[&str],
        id: u64,
        port: u16,
        secret: &str,
        peers: &[(u64, u16)],
        extra_env: &[(&str, &str)],
    ) -> Self {
        let peers: Vec<String> = peers.iter().map(|(id, port)| format!("{id}=127.0.0.1:{port}")).collect();
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .env("WADDLE_PEER_ID", id.to_string())
            .env("WADDLE_PEER_PORT", port.to_string())
            .env("WADDLE_PEER_SECRET", secret)
            .env("WADDLE_PEER_PEERS", peers.join(","))
            .envs(extra_env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn peer");
        let stdout = child.stdout.take().expect("peer stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                // libtest may have printed "test peer_process ... " on the same line.
                if let Some(at) = line.find("PEER:") {
                    if tx.send(line[at + 5..].to_string()).is_err() {
                        return;
                    }
                }
            }
        });
        PeerProcess { child, lines, seen: Vec::new() }
    }

    /// Waits (without blocking the async runtime's other tasks for long) for a line.
    pub async fn wait_line(&mut self, line: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.seen.iter().any(|l| l == line) {
                return;
            }
            assert!(Instant::now() < deadline, "peer did not print {line:?} in {timeout:?}; saw {:?}", self.seen);
            self.drain();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Collects what the peer printed so far.
    pub fn drain(&mut self) -> &[String] {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        &self.seen
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().map(|s| s.success());
        assert_eq!(ok.ok(), Some(true), "kill {sig} failed");
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SIGCONT first in case it was stopped, then kill.
            let _ = Command::new("kill").args(["-CONT", &self.child.id().to_string()]).status();
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
