//! Typed inter-node messages on top of [`Envelope`]s, and a [`Dispatcher`] that routes
//! received envelopes by kind to typed handlers.
//!
//! Every message type names its kind, the version of its encoding it sends, and its
//! response type, so a request and what answers it are tied together in the type system
//! and each can evolve on its own: a receiver decodes the versions it knows and refuses
//! the others loudly (an `error!` log and, for a request, an error response).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::envelope::{Envelope, WireError, FIRST_APP_KIND, KIND_NONE};
use super::Inbound;

/// A typed inter-node message.
///
/// `KIND` must be unique among the message types of the cluster and at least
/// [`FIRST_APP_KIND`]. `decode` receives the version the sender encoded with: accept
/// every version still spoken in a rolling upgrade and refuse the others with
/// [`WireError::UnsupportedVersion`].
pub trait Message: Sized + Send + 'static {
    const KIND: u16;
    const VERSION: u16;
    /// What a request of this type is answered with ([`NoResponse`] for casts).
    type Response: Message;
    fn encode(&self) -> Bytes;
    fn decode(version: u16, bytes: &[u8]) -> Result<Self, WireError>;
}

/// The response type of messages that are only ever cast.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoResponse;

impl Message for NoResponse {
    const KIND: u16 = KIND_NONE;
    const VERSION: u16 = 0;
    type Response = NoResponse;
    fn encode(&self) -> Bytes {
        Bytes::new()
    }
    fn decode(_version: u16, _bytes: &[u8]) -> Result<Self, WireError> {
        Ok(NoResponse)
    }
}

/// `msg` as a cast envelope.
pub fn cast_envelope<M: Message>(msg: &M) -> Envelope {
    Envelope::cast(M::KIND, M::VERSION, msg.encode())
}

/// `msg` as a request envelope.
pub fn request_envelope<M: Message>(msg: &M) -> Envelope {
    Envelope::request(M::KIND, M::VERSION, msg.encode())
}

/// `msg` as a response envelope.
pub fn response_envelope<M: Message>(msg: &M) -> Envelope {
    Envelope::response(M::KIND, M::VERSION, msg.encode())
}

type CastHandler = Box<dyn Fn(u64, Envelope) + Send + Sync>;
type CallHandler = Box<dyn Fn(u64, Envelope) -> BoxFuture<'static, Envelope> + Send + Sync>;

/// An [`Inbound`] that decodes each envelope into the message type registered for its
/// kind and hands it to that type's handler.
///
/// Envelopes of an unknown kind, or that do not decode (an unknown version, bad bytes),
/// are logged at `error!` with the peer, kind and version; a request among them is
/// answered with an error response, so its caller gets
/// [`super::TransportError::Remote`] instead of waiting for a timeout.
#[derive(Default)]
pub struct Dispatcher {
    casts: HashMap<u16, CastHandler>,
    calls: HashMap<u16, CallHandler>,
}

impl fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut casts: Vec<_> = self.casts.keys().collect();
        let mut calls: Vec<_> = self.calls.keys().collect();
        casts.sort();
        calls.sort();
        f.debug_struct("Dispatcher").field("casts", &casts).field("calls", &calls).finish()
    }
}

impl Dispatcher {
    pub fn new() -> Dispatcher {
        Dispatcher::default()
    }

    /// Handles casts of `M`. Runs on the transport's receive path, in the order the
    /// sender cast them: keep it short and non-blocking (hand off to a channel).
    pub fn handle_cast<M, F>(&mut self, handler: F) -> &mut Dispatcher
    where
        M: Message,
        F: Fn(u64, M) + Send + Sync + 'static,
    {
        warn_reserved(M::KIND);
        let prev = self.casts.insert(
            M::KIND,
            Box::new(move |from, env| match M::decode(env.version, &env.payload) {
                Ok(msg) => handler(from, msg),
                Err(e) => {
                    tracing::error!(peer = from, kind = env.kind, version = env.version, error = %e, "cannot decode an inter-node cast; dropped");
                }
            }),
        );
        if prev.is_some() {
            tracing::warn!(kind = M::KIND, "a second cast handler replaced the first");
        }
        self
    }

    /// Answers requests of `M`. Each request runs as its own task, concurrently with
    /// others; `Err(reason)` reaches the caller as [`super::TransportError::Remote`].
    pub fn handle_request<M, F, Fut>(&mut self, handler: F) -> &mut Dispatcher
    where
        M: Message,
        F: Fn(u64, M) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<M::Response, String>> + Send + 'static,
    {
        warn_reserved(M::KIND);
        let handler = Arc::new(handler);
        let prev = self.calls.insert(
            M::KIND,
            Box::new(move |from, env| match M::decode(env.version, &env.payload) {
                Ok(msg) => {
                    let fut = handler(from, msg);
                    async move {
                        match fut.await {
                            Ok(resp) => response_envelope(&resp),
                            Err(reason) => Envelope::error(&reason),
                        }
                    }
                    .boxed()
                }
                Err(e) => {
                    tracing::error!(peer = from, kind = env.kind, version = env.version, error = %e, "cannot decode an inter-node request; answering with an error");
                    let reason = format!("cannot decode kind {} version {}: {e}", env.kind, env.version);
                    futures_util::future::ready(Envelope::error(&reason)).boxed()
                }
            }),
        );
        if prev.is_some() {
            tracing::warn!(kind = M::KIND, "a second request handler replaced the first");
        }
        self
    }
}

fn warn_reserved(kind: u16) {
    if kind < FIRST_APP_KIND {
        tracing::warn!(kind, "message kind is in the transport's reserved range");
    }
}

impl Inbound for Dispatcher {
    fn on_cast(&self, from: u64, env: Envelope) {
        match self.casts.get(&env.kind) {
            Some(handler) => handler(from, env),
            None => {
                tracing::error!(
                    peer = from,
                    kind = env.kind,
                    version = env.version,
                    "inter-node cast of an unknown kind; dropped"
                );
            }
        }
    }

    fn on_call(&self, from: u64, env: Envelope) -> BoxFuture<'static, Envelope> {
        match self.calls.get(&env.kind) {
            Some(handler) => handler(from, env),
            None => {
                tracing::error!(
                    peer = from,
                    kind = env.kind,
                    version = env.version,
                    "inter-node request of an unknown kind; answering with an error"
                );
                let reason = format!("unknown request kind {}", env.kind);
                futures_util::future::ready(Envelope::error(&reason)).boxed()
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A test request: text to echo, in two encodings (v1 plain, v2 with a prefix byte).
    #[derive(Debug, PartialEq)]
    pub(crate) struct Echo(pub String);
    #[derive(Debug, PartialEq)]
    pub(crate) struct Echoed(pub String);
    /// A test cast: a sequence number.
    #[derive(Debug, PartialEq)]
    pub(crate) struct Seq(pub u64);

    impl Message for Echo {
        const KIND: u16 = 100;
        const VERSION: u16 = 2;
        type Response = Echoed;
        fn encode(&self) -> Bytes {
            let mut v = vec![b'>'];
            v.extend_from_slice(self.0.as_bytes());
            Bytes::from(v)
        }
        fn decode(version: u16, bytes: &[u8]) -> Result<Self, WireError> {
            let text = match version {
                1 => bytes,
                2 => bytes.strip_prefix(b">").ok_or(WireError::Malformed { kind: 100, reason: "no prefix".into() })?,
                _ => return Err(WireError::UnsupportedVersion { kind: Self::KIND, version }),
            };
            String::from_utf8(text.to_vec())
                .map(Echo)
                .map_err(|e| WireError::Malformed { kind: Self::KIND, reason: e.to_string() })
        }
    }

    impl Message for Echoed {
        const KIND: u16 = 101;
        const VERSION: u16 = 1;
        type Response = NoResponse;
        fn encode(&self) -> Bytes {
            Bytes::copy_from_slice(self.0.as_bytes())
        }
        fn decode(version: u16, bytes: &[u8]) -> Result<Self, WireError> {
            if version != 1 {
                return Err(WireError::UnsupportedVersion { kind: Self::KIND, version });
            }
            String::from_utf8(bytes.to_vec())
                .map(Echoed)
                .map_err(|e| WireError::Malformed { kind: Self::KIND, reason: e.to_string() })
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
            if version != 1 {
                return Err(WireError::UnsupportedVersion { kind: Self::KIND, version });
            }
            let arr: [u8; 8] = bytes
                .try_into()
                .map_err(|_| WireError::Malformed { kind: Self::KIND, reason: "not 8 bytes".into() })?;
            Ok(Seq(u64::from_be_bytes(arr)))
        }
    }

    /// A dispatcher answering `Echo` with its text and recording `Seq` casts.
    pub(crate) fn echo_dispatcher(seen: Arc<Mutex<Vec<(u64, u64)>>>) -> Dispatcher {
        let mut d = Dispatcher::new();
        d.handle_request(|_from, Echo(text): Echo| async move {
            if text == "fail" {
                Err("asked to fail".to_string())
            } else {
                Ok(Echoed(text))
            }
        });
        d.handle_cast(move |from, Seq(n)| seen.lock().unwrap().push((from, n)));
        d
    }

    fn block<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn typed_request_is_answered() {
        let d = echo_dispatcher(Arc::default());
        let resp = block(d.on_call(1, request_envelope(&Echo("hi".into()))));
        assert!(resp.is_response() && !resp.is_error());
        assert_eq!(resp.kind, Echoed::KIND);
        assert_eq!(Echoed::decode(resp.version, &resp.payload).unwrap(), Echoed("hi".into()));

        // An older version the receiver still decodes.
        let v1 = Envelope::request(Echo::KIND, 1, Bytes::from_static(b"old"));
        let resp = block(d.on_call(1, v1));
        assert_eq!(Echoed::decode(resp.version, &resp.payload).unwrap(), Echoed("old".into()));
    }

    #[test]
    fn unknown_message_version_is_answered_with_an_error() {
        let d = echo_dispatcher(Arc::default());
        let env = Envelope::request(Echo::KIND, 99, Bytes::from_static(b">x"));
        let resp = block(d.on_call(7, env));
        assert!(resp.is_response() && resp.is_error());
        assert!(resp.error_reason().contains("version 99"), "{}", resp.error_reason());
    }

    #[test]
    fn unknown_kind_and_handler_errors_are_answered_with_errors() {
        let d = echo_dispatcher(Arc::default());
        let resp = block(d.on_call(7, Envelope::request(999, 1, Bytes::new())));
        assert!(resp.is_error());
        assert!(resp.error_reason().contains("999"));
        let resp = block(d.on_call(7, request_envelope(&Echo("fail".into()))));
        assert!(resp.is_error());
        assert_eq!(resp.error_reason(), "asked to fail");
    }

    #[test]
    fn casts_reach_their_handler_and_bad_ones_are_dropped() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let d = echo_dispatcher(seen.clone());
        d.on_cast(3, cast_envelope(&Seq(1)));
        d.on_cast(3, Envelope::cast(Seq::KIND, 2, Bytes::new()));
        d.on_cast(3, Envelope::cast(Seq::KIND, 1, Bytes::from_static(b"short")));
        d.on_cast(3, Envelope::cast(4242, 1, Bytes::new()));
        d.on_cast(4, cast_envelope(&Seq(2)));
        assert_eq!(*seen.lock().unwrap(), vec![(3, 1), (4, 2)]);
    }
}
