//! XMPP over WebSocket (RFC 7395) on the HTTP listener: the upgrade at
//! `/xmpp-websocket`, and the socket shell that lets a WebSocket stand in for a TCP
//! stream. Frames are translated by `waddle_c2s::websocket` at this boundary, so the
//! connection shell, the negotiator and the session task run unchanged.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::{Buf as _, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use waddle_c2s::websocket::{translate_inbound, FrameError, Inbound, OutboundFramer, SUBPROTOCOL};

use crate::ctx::Ctx;
use crate::io::ClientIo;

/// tungstenite's read buffer, allocated up front for every connection. With its default
/// (128 KiB) 300 idle WebSocket sessions cost 117.5 KiB of RSS each, with 4 KiB 5.6 KiB
/// (measured on a debug build). Larger messages get room when they arrive.
const READ_BUFFER: usize = 4096;

/// `GET /xmpp-websocket`.
pub fn route(ctx: Arc<Ctx>) -> axum::routing::MethodRouter {
    axum::routing::get(
        move |ConnectInfo(peer): ConnectInfo<SocketAddr>,
              upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>| {
            let ctx = Arc::clone(&ctx);
            async move { accept(ctx, peer, upgrade) }
        },
    )
}

fn accept(ctx: Arc<Ctx>, peer: SocketAddr, upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>) -> Response {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade.protocols([SUBPROTOCOL]),
        Err(rejection) => {
            return refuse(
                rejection.status(),
                "websocket_required",
                "this endpoint is XMPP over WebSocket (RFC 7395): open a WebSocket offering the subprotocol 'xmpp'",
            )
        }
    };
    // RFC 7395 §3.1: without the subprotocol the client is not speaking XMPP framing.
    if upgrade.selected_protocol().is_none() {
        return refuse(
            StatusCode::BAD_REQUEST,
            "subprotocol_required",
            "offer the WebSocket subprotocol 'xmpp' (Sec-WebSocket-Protocol: xmpp, RFC 7395 §3.1)",
        );
    }
    // A frame holds one element, so no frame may exceed what one stanza may: WsIo
    // refuses longer ones with <policy-violation/>. tungstenite's own cap is set above
    // that: it refuses a message over its cap before reading it, and a connection
    // closed with unread input is reset, which loses the stream error on its way to
    // the client. Only frames beyond twice the limit are cut off that way.
    let limit = ctx.config.c2s.max_stanza_bytes;
    let secure = ctx.config.websocket_is_secure();
    upgrade
        .max_message_size(limit.saturating_mul(2))
        .max_frame_size(limit.saturating_mul(2))
        .read_buffer_size(READ_BUFFER)
        .on_failed_upgrade(move |e| tracing::debug!(%peer, error = %e, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| {
            let io = ClientIo::WebSocket(Box::new(WsIo::new(socket, limit)));
            crate::connection::serve_websocket(ctx, io, peer, secure)
        })
}

/// The API's error envelope.
fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": { "code": code, "message": message } }))).into_response()
}

/// The framing error a read failed with, when that is why: the client gets it as a
/// stream error instead of a silent disconnect.
pub fn frame_error(e: &io::Error) -> Option<&FrameError> {
    e.get_ref()?.downcast_ref::<FrameError>()
}

fn frame_io_error(e: FrameError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// A WebSocket read and written as the byte stream of an RFC 6120 connection.
pub struct WsIo {
    socket: WebSocket,
    /// What the parser has not read yet of the last frame (one larger than a read).
    unread: Bytes,
    framer: OutboundFramer,
    /// Frames cut from written bytes that the socket has not taken yet.
    unsent: VecDeque<String>,
    max_frame: usize,
}

impl WsIo {
    pub fn new(socket: WebSocket, max_frame: usize) -> WsIo {
        WsIo { socket, unread: Bytes::new(), framer: OutboundFramer::new(), unsent: VecDeque::new(), max_frame }
    }

    /// Hands the frames waiting for the socket to it, in order.
    fn poll_send_unsent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.unsent.is_empty() {
            ready!(Pin::new(&mut self.socket).poll_ready(cx)).map_err(io::Error::other)?;
            if let Some(frame) = self.unsent.pop_front() {
                Pin::new(&mut self.socket).start_send(Message::Text(frame.into())).map_err(io::Error::other)?;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for WsIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.unread.is_empty() {
                let n = this.unread.len().min(buf.remaining());
                buf.put_slice(&this.unread[..n]);
                this.unread.advance(n);
                if this.unread.is_empty() {
                    // An emptied `Bytes` still holds the frame's buffer; an idle
                    // session should not.
                    this.unread = Bytes::new();
                }
                return Poll::Ready(Ok(()));
            }
            let message = match ready!(Pin::new(&mut this.socket).poll_next(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(message)) => message,
                // tungstenite has closed the WebSocket with its own status code (a
                // protocol error, invalid UTF-8, a message over its cap).
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            };
            match message {
                Message::Text(text) if text.len() > this.max_frame => {
                    return Poll::Ready(Err(frame_io_error(FrameError::TooLarge { limit: this.max_frame })))
                }
                Message::Text(text) => match translate_inbound(text.as_str()) {
                    Ok(Inbound::PassThrough) => this.unread = Bytes::from(text),
                    Ok(Inbound::Replace(bytes)) => this.unread = Bytes::from(bytes),
                    Ok(Inbound::Nothing) => {}
                    Err(e) => return Poll::Ready(Err(frame_io_error(e))),
                },
                Message::Binary(_) => return Poll::Ready(Err(frame_io_error(FrameError::Binary))),
                // tungstenite answers pings itself.
                Message::Ping(_) | Message::Pong(_) => {}
                // The client closed the WebSocket without <close/>: the end of the stream.
                Message::Close(_) => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl AsyncWrite for WsIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Bytes are only taken once earlier frames are gone: the writer's back-pressure
        // reaches the socket, and at most one write's frames wait here.
        ready!(this.poll_send_unsent(cx))?;
        this.framer.push(buf, &mut this.unsent).map_err(io::Error::other)?;
        if let Poll::Ready(Err(e)) = this.poll_send_unsent(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_unsent(cx))?;
        Pin::new(&mut this.socket).poll_flush(cx).map_err(io::Error::other)
    }

    /// Sends what is left, then the WebSocket close frame (RFC 7395 §3.6: the server
    /// closes the connection after `<close/>`).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_unsent(cx))?;
        Pin::new(&mut this.socket).poll_close(cx).map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refused frame must survive the trip through `io::Error` (the reader's only
    /// channel) or the client is dropped without the stream error.
    #[test]
    fn framing_errors_are_told_apart_from_socket_errors() {
        let refused = frame_io_error(FrameError::TooLarge { limit: 9 });
        assert_eq!(frame_error(&refused), Some(&FrameError::TooLarge { limit: 9 }));
        assert_eq!(frame_error(&io::Error::other("reset")), None);
        assert_eq!(frame_error(&io::Error::from(io::ErrorKind::UnexpectedEof)), None);
    }
}
