//! TLS setup: a configured PEM certificate/key, or a self-signed certificate generated
//! on first start and kept in the data directory so clients can pin it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

pub fn server_config_for(config: &Config) -> Result<Arc<rustls::ServerConfig>> {
    // Install one process-wide provider explicitly: two providers linked in (ring and
    // aws-lc-rs via other crates) would otherwise make rustls refuse to pick.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (certs, key) = node_certificate(config)?;
    let server_config = server_config(certs, key)?;
    Ok(Arc::new(server_config))
}

/// The node's certificate chain and key: the configured files, or the self-signed pair
/// generated in the data dir.
fn node_certificate(config: &Config) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let (cert_path, key_path) = if config.tls.cert_path.is_empty() {
        ensure_self_signed(&config.server.data_dir.join("tls"), &config.server.domain)?
    } else {
        (PathBuf::from(&config.tls.cert_path), PathBuf::from(&config.tls.key_path))
    };
    let certs = read_certs(&cert_path, "tls.cert_path")?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("tls.key_path: cannot read a private key from {}", key_path.display()))?;
    Ok((certs, key))
}

fn read_certs(path: &Path, field: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("{field}: cannot read {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{field}: invalid PEM in {}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{field}: no certificate in {}", path.display());
    }
    Ok(certs)
}

/// TLS between nodes (`cluster.tls`): each node presents its own certificate (the
/// client one's, `tls.cert_path`) and accepts peers whose certificate is valid for
/// `server.domain` and chains to `cluster.tls_ca`, or, without it, is the node's own
/// certificate (every node configured with the same certificate). Peers authenticate
/// with the cluster secret as well; TLS adds confidentiality and authenticates the node
/// a connection reaches.
pub fn cluster_tls(config: &Config) -> Result<waddle_cluster::transport::ractor::ClusterTls> {
    use rustls::pki_types::ServerName;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (certs, key) = node_certificate(config)?;
    let anchors = if config.cluster.tls_ca.is_empty() {
        certs.clone()
    } else {
        read_certs(Path::new(&config.cluster.tls_ca), "cluster.tls_ca")?
    };
    let mut roots = rustls::RootCertStore::empty();
    for anchor in anchors {
        roots.add(anchor).context("cluster.tls_ca: not a usable trust anchor")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("tls: certificate and key do not match")?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server_name =
        ServerName::try_from(config.server.domain.clone()).context("server.domain: not usable as a TLS server name")?;
    Ok(waddle_cluster::transport::ractor::ClusterTls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        server_name,
    })
}

/// The SHA-256 cipher suites, which the server prefers (see [`server_config`]).
const SHA256_SUITES: &[rustls::CipherSuite] = &[
    rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
    rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    rustls::CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// The server's TLS settings: rustls' safe defaults (TLS 1.2 and 1.3, ring), except that
/// the server picks the cipher suite, preferring SHA-256 suites: AES-128-GCM first, the
/// suite TLS 1.3 requires everyone to implement. Its 128-bit strength matches the X25519
/// key exchange, and SHA-256 runs on the CPU's SHA extensions where SHA-384 does not
/// (profiled on logins: the SHA-384 key schedule was 7 % of the server's CPU).
/// One TLS 1.3 session ticket per handshake instead of two: an XMPP client holds one
/// connection and resumes it with one ticket; each ticket costs a record write.
pub(crate) fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|suite| !SHA256_SUITES.contains(&suite.suite()));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("tls: certificate and key do not match")?;
    config.ignore_client_order = true;
    config.send_tls13_tickets = 1;
    Ok(config)
}

fn ensure_self_signed(dir: &Path, domain: &str) -> Result<(PathBuf, PathBuf)> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut names = vec![domain.to_owned(), format!("*.{domain}")];
    if domain != "localhost" {
        names.push("localhost".to_owned());
    }
    let generated = rcgen::generate_simple_self_signed(names).context("generating a self-signed certificate")?;
    write_private(&key, generated.key_pair.serialize_pem().as_bytes())?;
    std::fs::write(&cert, generated.cert.pem()).with_context(|| format!("writing {}", cert.display()))?;
    tracing::warn!(cert = %cert.display(), "generated a self-signed certificate; configure tls.cert_path for production");
    Ok((cert, key))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).with_context(|| format!("writing {}", path.display()))?;
    file.write_all(bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Moves everything `from` has to send into `to`, and lets `to` process it.
    fn send<A, B>(from: &mut rustls::ConnectionCommon<A>, to: &mut rustls::ConnectionCommon<B>) {
        let mut wire = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut wire).unwrap();
        }
        let mut slice = wire.as_slice();
        while !slice.is_empty() {
            to.read_tls(&mut slice).unwrap();
            to.process_new_packets().unwrap();
        }
    }

    /// Runs a handshake between `client` and `server` in memory.
    fn handshake(client: &mut rustls::ClientConnection, server: &mut rustls::ServerConnection) {
        for _ in 0..10 {
            send(client, server);
            send(server, client);
            if !client.is_handshaking() && !server.is_handshaking() {
                return;
            }
        }
        panic!("handshake did not complete");
    }

    #[test]
    fn the_server_picks_aes_128_gcm_sha256_whatever_the_client_prefers() {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let certs = vec![generated.cert.der().clone()];
        let key = PrivateKeyDer::try_from(generated.key_pair.serialize_der()).unwrap();
        let server_config = Arc::new(server_config(certs.clone(), key).unwrap());

        let mut roots = rustls::RootCertStore::empty();
        roots.add(certs[0].clone()).unwrap();
        // The client lists the SHA-384 suite first, as rustls' own default order does.
        let client_provider = rustls::crypto::ring::default_provider();
        assert_eq!(client_provider.cipher_suites[0].suite(), rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
        for versions in [&[&rustls::version::TLS13][..], &[&rustls::version::TLS12][..]] {
            let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(client_provider.clone()))
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut client = rustls::ClientConnection::new(Arc::new(client_config), name).unwrap();
            let mut server = rustls::ServerConnection::new(Arc::clone(&server_config)).unwrap();
            handshake(&mut client, &mut server);
            let suite = server.negotiated_cipher_suite().unwrap().suite();
            let expected = if versions[0] == &rustls::version::TLS13 {
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
            } else {
                rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            };
            assert_eq!(suite, expected);
        }
    }
}
