//! A client socket: plain TCP until STARTTLS and TLS afterwards, or a WebSocket (RFC
//! 7395) read and written as the same byte stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::tls_stream::TlsStream;
use crate::ws::WsIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub enum ClientIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    WebSocket(Box<WsIo>),
}

impl ClientIo {
    /// Makes the coming close reset the TCP connection (`SO_LINGER` 0) instead of leaving
    /// the kernel to deliver what is still queued: for a client that does not read, whose
    /// unsent bytes would otherwise stay in the kernel until TCP gives up. A WebSocket's
    /// socket is hidden under the HTTP stack and closes normally.
    pub fn reset_on_close(&self) {
        let tcp = match self {
            ClientIo::Plain(s) => s,
            ClientIo::Tls(s) => s.get_ref(),
            ClientIo::WebSocket(_) => return,
        };
        if let Err(e) = tcp.set_zero_linger() {
            tracing::debug!(error = %e, "cannot set SO_LINGER 0");
        }
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            ClientIo::WebSocket(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            ClientIo::WebSocket(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            ClientIo::WebSocket(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            ClientIo::WebSocket(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            ClientIo::WebSocket(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientIo::Plain(s) => s.is_write_vectored(),
            ClientIo::Tls(s) => s.is_write_vectored(),
            ClientIo::WebSocket(s) => s.is_write_vectored(),
        }
    }
}
