//! The HTTP listener over TLS (`http.tls`): the API and `wss://` with the node's
//! certificate, through the same server-side TLS as the XMPP listeners.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::tls_stream::{self, TlsStream};

/// Connections whose handshake finished, waiting for the HTTP server to take them.
const READY_QUEUE: usize = 64;

/// Hands axum connections whose TLS handshake is done. Handshakes run on tasks of their
/// own (bounded by `handshake_timeout`), so a client that stalls its handshake holds up
/// nobody else's.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
}

impl TlsListener {
    pub fn spawn(tcp: TcpListener, config: Arc<ServerConfig>, handshake_timeout: Duration) -> io::Result<TlsListener> {
        let local_addr = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        tokio::spawn(accept_loop(tcp, config, handshake_timeout, tx));
        Ok(TlsListener { ready, local_addr })
    }
}

async fn accept_loop(
    tcp: TcpListener,
    config: Arc<ServerConfig>,
    handshake_timeout: Duration,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    while !ready.is_closed() {
        let (stream, peer) = match tcp.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (config, ready) = (Arc::clone(&config), ready.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(handshake_timeout, tls_stream::accept(config, stream)).await {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "HTTP TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "HTTP TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept loop only ends once this receiver is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
}
