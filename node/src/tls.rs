//! TLS setup: a configured PEM certificate/key, or a self-signed certificate generated
//! on first start and kept in the data directory so clients can pin it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;

pub fn acceptor(config: &Config) -> Result<TlsAcceptor> {
    // Install one process-wide provider explicitly: two providers linked in (ring and
    // aws-lc-rs via other crates) would otherwise make rustls refuse to pick.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (cert_path, key_path) = if config.tls.cert_path.is_empty() {
        ensure_self_signed(&config.server.data_dir.join("tls"), &config.server.domain)?
    } else {
        (PathBuf::from(&config.tls.cert_path), PathBuf::from(&config.tls.key_path))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("tls.cert_path: cannot read {}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("tls.cert_path: invalid PEM in {}", cert_path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("tls.cert_path: no certificate in {}", cert_path.display());
    }
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("tls.key_path: cannot read a private key from {}", key_path.display()))?;
    let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("tls: certificate and key do not match")?;
    Ok(TlsAcceptor::from(Arc::new(server_config)))
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
