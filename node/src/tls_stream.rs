//! The server side of a TLS connection: a rustls `ServerConnection` over a socket.
//!
//! tokio-rustls would do, except for one write per connection: its handshake future
//! flushes everything rustls has queued when the handshake ends, and in TLS 1.3 that is
//! the session ticket, which then travels alone in its own write (and costs the client a
//! read), right before the stream features that answer the same client flight. Here the
//! handshake hands over with the ticket still queued, and it leaves with the first bytes
//! the server writes. A client needs the ticket only to resume a later connection.
//!
//! Writes are buffered by rustls (up to its buffer limit) and reach the socket on
//! `poll_flush` or when the buffer is full, so a caller writes, then flushes.

use std::io::{self, BufRead, Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::{ProtocolVersion, ServerConfig, ServerConnection};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct TlsStream<IO> {
    io: IO,
    conn: ServerConnection,
    /// `close_notify` has been queued ([`AsyncWrite::poll_shutdown`] was called).
    closing: bool,
}

/// Runs the server side of a TLS handshake over `io`.
///
/// On failure the alert rustls prepared (if any) goes out first if the socket takes it
/// at once; the error is returned either way.
pub async fn accept<IO>(config: Arc<ServerConfig>, io: IO) -> io::Result<TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let conn = ServerConnection::new(config).map_err(io::Error::other)?;
    let mut stream = TlsStream { io, conn, closing: false };
    std::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TlsStream<IO> {
    /// The socket under the TLS layer (for socket options).
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.is_handshaking() {
            ready!(self.poll_write_tls(cx))?;
            ready!(self.poll_read_tls(cx))?;
        }
        // TLS 1.2 ends with the server's Finished, which the client waits for before it
        // sends anything: that goes now. In TLS 1.3 only the ticket can be left.
        if self.conn.protocol_version() != Some(ProtocolVersion::TLSv1_3) {
            ready!(self.poll_write_tls(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Writes everything rustls has queued to the socket.
    fn poll_write_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            let written = self.conn.write_tls(&mut Adapter { io: &mut self.io, cx });
            match written {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads one batch of TLS records from the socket and processes them. At end of file
    /// rustls is told so; a protocol error sends rustls' alert (best effort) and fails.
    fn poll_read_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let read = match self.conn.read_tls(&mut Adapter { io: &mut self.io, cx }) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
            Err(e) => return Poll::Ready(Err(e)),
        };
        if let Err(e) = self.conn.process_new_packets() {
            // The alert is a courtesy: the connection fails whether or not it gets out.
            let _ = self.poll_write_tls(cx);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
        if read == 0 && self.conn.is_handshaking() {
            return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
        }
        Poll::Ready(Ok(read))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            // Copied out of rustls' buffer rather than read into `buf`, which would have
            // to be zeroed first (the session reads into an uninitialized stack buffer).
            let mut reader = this.conn.reader();
            match reader.fill_buf() {
                Ok(plaintext) => {
                    // Empty: the peer sent close_notify, a clean end of stream.
                    let n = plaintext.len().min(buf.remaining());
                    buf.put_slice(&plaintext[..n]);
                    reader.consume(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // Includes the socket closing without close_notify (UnexpectedEof).
                Err(e) => return Poll::Ready(Err(e)),
            }
            ready!(this.poll_read_tls(cx))?;
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            let taken = this.conn.writer().write(buf)?;
            if taken > 0 {
                return Poll::Ready(Ok(taken));
            }
            // rustls' buffer is full: make room by sending what it holds.
            ready!(this.poll_write_tls(cx))?;
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_tls(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            this.conn.send_close_notify();
            this.closing = true;
        }
        ready!(this.poll_write_tls(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// The socket as the blocking `Read`/`Write` rustls drives, with "not ready" reported
/// as `WouldBlock` (and the task registered for a wake-up by the poll that said so).
struct Adapter<'a, 'b, IO> {
    io: &'a mut IO,
    cx: &'a mut Context<'b>,
}

impl<IO: AsyncRead + Unpin> Read for Adapter<'_, '_, IO> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut buf) {
            Poll::Ready(Ok(())) => Ok(buf.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<IO: AsyncWrite + Unpin> Write for Adapter<'_, '_, IO> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write_vectored(self.cx, bufs) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
    use tokio_rustls::TlsConnector;

    use super::*;

    /// A socket that counts the writes that carried bytes.
    struct Counted {
        inner: DuplexStream,
        writes: Arc<AtomicUsize>,
    }

    impl AsyncRead for Counted {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counted {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let written = ready!(Pin::new(&mut self.inner).poll_write(cx, buf));
            if matches!(written, Ok(n) if n > 0) {
                self.writes.fetch_add(1, Ordering::SeqCst);
            }
            Poll::Ready(written)
        }

        /// One write for all the slices, as `writev` on a socket (a duplex pipe would
        /// take only the first slice per call).
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            self.poll_write(cx, &joined)
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    struct Pki {
        server: Arc<ServerConfig>,
        roots: rustls::RootCertStore,
    }

    fn pki() -> Pki {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert: CertificateDer<'static> = generated.cert.der().clone();
        let key = PrivateKeyDer::try_from(generated.key_pair.serialize_der()).unwrap();
        let server = Arc::new(crate::tls::server_config(vec![cert.clone()], key).unwrap());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        Pki { server, roots }
    }

    fn client(pki: &Pki, version: &'static rustls::SupportedProtocolVersion) -> TlsConnector {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(pki.roots.clone())
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }

    fn localhost() -> ServerName<'static> {
        ServerName::try_from("localhost").unwrap()
    }

    async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), f).await.unwrap_or_else(|_| panic!("{what} timed out"))
    }

    /// Server side of one connection: handshake, then "features" out, then 5 bytes in.
    async fn serve(config: Arc<ServerConfig>, io: DuplexStream) -> (usize, usize, Option<rustls::HandshakeKind>) {
        let writes = Arc::new(AtomicUsize::new(0));
        let mut tls = accept(config, Counted { inner: io, writes: Arc::clone(&writes) }).await.unwrap();
        let during_handshake = writes.load(Ordering::SeqCst);
        tls.write_all(b"features").await.unwrap();
        tls.flush().await.unwrap();
        let mut hello = [0u8; 5];
        tls.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello, b"hello");
        (during_handshake, writes.load(Ordering::SeqCst), tls.conn.handshake_kind())
    }

    async fn client_side(connector: &TlsConnector, io: DuplexStream) {
        let mut tls = connector.connect(localhost(), io).await.unwrap();
        let mut features = [0u8; 8];
        tls.read_exact(&mut features).await.unwrap();
        assert_eq!(&features, b"features");
        tls.write_all(b"hello").await.unwrap();
        tls.flush().await.unwrap();
    }

    #[tokio::test]
    async fn a_tls13_ticket_leaves_with_the_first_write_and_still_resumes() {
        let pki = pki();
        let connector = client(&pki, &rustls::version::TLS13);
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let (client_io, server_io) = tokio::io::duplex(64 * 1024);
            let server = tokio::spawn(serve(Arc::clone(&pki.server), server_io));
            within("client", client_side(&connector, client_io)).await;
            let (during_handshake, total, kind) = within("server", server).await.unwrap();
            // One write for the server's flight; the ticket waits for "features".
            assert_eq!(during_handshake, 1);
            assert_eq!(total, 2);
            kinds.push(kind);
        }
        // The second connection resumed with the ticket the first one delivered late.
        assert_eq!(kinds, [Some(rustls::HandshakeKind::Full), Some(rustls::HandshakeKind::Resumed)]);
    }

    #[tokio::test]
    async fn a_tls12_handshake_sends_the_servers_finished_at_once() {
        let pki = pki();
        let connector = client(&pki, &rustls::version::TLS12);
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        // As after STARTTLS, the client speaks first; it cannot finish its handshake,
        // let alone send, before it has the server's Finished.
        let server = tokio::spawn(async move {
            let mut tls = accept(Arc::clone(&pki.server), server_io).await.unwrap();
            let mut header = [0u8; 6];
            tls.read_exact(&mut header).await.unwrap();
            assert_eq!(&header, b"header");
            tls.conn.handshake_kind()
        });
        let mut tls = within("client handshake", connector.connect(localhost(), client_io)).await.unwrap();
        tls.write_all(b"header").await.unwrap();
        tls.flush().await.unwrap();
        assert_eq!(within("server", server).await.unwrap(), Some(rustls::HandshakeKind::Full));
    }

    #[tokio::test]
    async fn more_than_the_buffer_holds_arrives_whole_and_shutdown_is_a_clean_end() {
        let pki = pki();
        let connector = client(&pki, &rustls::version::TLS13);
        // A small pipe: the server must wait for the client to drain it, many times over.
        let (client_io, server_io) = tokio::io::duplex(4096);
        let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let server = tokio::spawn(async move {
            let mut tls = accept(Arc::clone(&pki.server), server_io).await.unwrap();
            tls.write_all(&sent).await.unwrap();
            tls.flush().await.unwrap();
            tls.shutdown().await.unwrap();
        });
        let mut tls = within("handshake", connector.connect(localhost(), client_io)).await.unwrap();
        let mut received = Vec::new();
        // read_to_end fails on a socket closed without close_notify.
        within("read", tls.read_to_end(&mut received)).await.unwrap();
        assert!(received == payload, "{} bytes received", received.len());
        within("server", server).await.unwrap();
    }

    #[tokio::test]
    async fn a_client_that_is_not_speaking_tls_gets_an_alert_and_an_error() {
        let pki = pki();
        let (mut client_io, server_io) = tokio::io::duplex(4096);
        let server = tokio::spawn(accept(Arc::clone(&pki.server), server_io));
        client_io.write_all(b"<?xml version='1.0'?><stream:stream to='localhost'>").await.unwrap();
        let accepted = within("server", server).await.unwrap();
        assert_eq!(accepted.err().map(|e| e.kind()), Some(io::ErrorKind::InvalidData));
        let mut alert = [0u8; 1];
        within("alert", client_io.read_exact(&mut alert)).await.unwrap();
        assert_eq!(alert[0], 21, "a TLS alert record");
    }
}
