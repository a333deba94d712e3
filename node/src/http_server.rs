//! The HTTP listener (API and XMPP over WebSocket), plain or over TLS (`http.tls`).
//!
//! `axum::serve` has no timeouts and no connection cap, so a client could hold a
//! connection forever by sending nothing or by trickling a request head. This loop
//! serves the same router through hyper's HTTP/1.1 connection directly, with:
//! - `http.header_timeout_secs`: hyper's header read timeout, which runs from when the
//!   connection starts waiting for a request head (accepted, or previous response sent)
//!   until the head is complete, so it cuts both trickling heads and idle keep-alive;
//! - `http.idle_timeout_secs`: a watchdog closing the connection when no byte has moved
//!   either way for that long (a stalled request body, a client that stops reading its
//!   response). Handlers here answer in well under a second, so a handler never waits
//!   that long on its own; a stalled body, read inside the handler, could not be told
//!   from a slow handler anyway;
//! - `http.max_connections`: a semaphore permit per connection, carried inside its
//!   I/O, so it is held by an upgraded WebSocket until that closes too.
//!
//! Neither timeout touches an upgraded WebSocket: hyper hands the I/O over and the
//! connection future (with its watchdog) ends; XMPP's own keepalive bounds it then.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower_service::Service as _;

use crate::tls_stream;

/// The listener's limits (from `http.*`, and the TLS handshake bound).
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Longest a TLS handshake may take (`http.tls` only).
    pub handshake_timeout: Duration,
}

/// Accepts connections on `listener` forever, serving `app` on each.
pub async fn serve(listener: TcpListener, tls: Option<Arc<ServerConfig>>, app: Router, limits: HttpLimits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Refused at once rather than left in the accept queue, where it would still
        // cost the client a socket and tell it nothing.
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%peer, limit = limits.max_connections, "HTTP connection refused: http.max_connections");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (app, builder, tls) = (app.clone(), builder.clone(), tls.clone());
        tokio::spawn(async move {
            match tls {
                None => serve_connection(tcp, peer, app, builder, limits, permit).await,
                Some(config) => {
                    match tokio::time::timeout(limits.handshake_timeout, tls_stream::accept(config, tcp)).await {
                        Ok(Ok(stream)) => serve_connection(stream, peer, app, builder, limits, permit).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "HTTP TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "HTTP TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    app: Router,
    builder: hyper::server::conn::http1::Builder,
    limits: HttpLimits,
    permit: OwnedSemaphorePermit,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = Tracked { inner: io, activity: Arc::clone(&activity), _permit: permit };
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        // What `into_make_service_with_connect_info` would insert: the API's
        // per-address limits and the XMPP login limiter key on it.
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().call(req)
    });
    let conn = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
    tokio::pin!(conn);
    loop {
        let wake = activity.idle_deadline(limits.idle_timeout);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended");
                }
                return;
            }
            _ = tokio::time::sleep_until(wake) => {
                if activity.is_idle(limits.idle_timeout) {
                    // Dropping the connection closes the socket.
                    tracing::debug!(%peer, "HTTP connection idle: closed");
                    return;
                }
            }
        }
    }
}

/// When a connection last moved a byte.
struct Activity {
    base: Instant,
    /// Milliseconds after `base`.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity { base: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    fn is_idle(&self, timeout: Duration) -> bool {
        self.last().elapsed() >= timeout
    }

    /// When the connection becomes idle unless a byte moves first.
    fn idle_deadline(&self, timeout: Duration) -> Instant {
        self.last() + timeout
    }
}

/// A connection's I/O, noting every byte moved and holding its `max_connections` slot
/// for as long as the I/O lives (through a WebSocket upgrade too).
struct Tracked<I> {
    inner: I,
    activity: Arc<Activity>,
    _permit: OwnedSemaphorePermit,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
