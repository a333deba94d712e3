//! The inter-node wire format. Pure: no I/O, no clocks.
//!
//! Every byte the transport puts on the wire is one of these frames, whatever carries it
//! (ractor_cluster's session, or the in-memory network in tests):
//!
//! ```text
//! frame    = wire_version:u16  from:u64  to:u64  count:u32  envelope{count}
//! envelope = kind:u16  version:u16  corr:u64  flags:u8  len:u32  payload[len]
//! ```
//!
//! All integers are big-endian. `wire_version` versions this framing only; each message
//! type carries its own `version` ([`Envelope::version`]) so that message types can
//! evolve independently (see [`super::Message`]). A frame ([`Batch`]) carries many
//! envelopes from one node to another: under load one inter-node message carries many
//! stanzas.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Version of the framing above. A frame with another version is refused whole.
pub const WIRE_VERSION: u16 = 1;

/// Bytes of an envelope before its payload.
pub const ENVELOPE_HEADER_LEN: usize = 2 + 2 + 8 + 1 + 4;

/// Bytes of a frame before its first envelope.
pub const BATCH_HEADER_LEN: usize = 2 + 8 + 8 + 4;

/// Envelope flag: a request; the receiver answers with a response carrying the same `corr`.
pub const FLAG_REQUEST: u8 = 0b001;
/// Envelope flag: the response to the request with the same `corr`.
pub const FLAG_RESPONSE: u8 = 0b010;
/// Envelope flag (with [`FLAG_RESPONSE`]): the request failed; the payload is a UTF-8 reason.
pub const FLAG_ERROR: u8 = 0b100;
const KNOWN_FLAGS: u8 = FLAG_REQUEST | FLAG_RESPONSE | FLAG_ERROR;

/// Message kinds below this are the transport's own; application kinds start here.
pub const FIRST_APP_KIND: u16 = 16;
/// The kind of an error response (and of [`super::NoResponse`]).
pub const KIND_NONE: u16 = 0;
/// The transport's liveness ping (a cast with an empty payload).
pub const KIND_PING: u16 = 1;

/// Why bytes could not be decoded into a frame, an envelope or a typed message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("unsupported wire version {0} (this node speaks {WIRE_VERSION})")]
    UnsupportedWireVersion(u16),
    #[error("truncated: needed {needed} more bytes, {have} left")]
    Truncated { needed: usize, have: usize },
    #[error("{0} unexpected trailing bytes")]
    TrailingBytes(usize),
    #[error("unknown flag bits {0:#04x}")]
    InvalidFlags(u8),
    #[error("payload of {0} bytes does not fit a frame")]
    TooLarge(usize),
    #[error("message kind {kind}: unsupported version {version}")]
    UnsupportedVersion { kind: u16, version: u16 },
    #[error("message kind {kind}: {reason}")]
    Malformed { kind: u16, reason: String },
}

/// One message between two nodes: a cast, a request or a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Message type ([`super::Message::KIND`]).
    pub kind: u16,
    /// Version of that message type's encoding ([`super::Message::VERSION`]).
    pub version: u16,
    /// 0 for a one-way cast; otherwise the request id a response echoes.
    pub corr: u64,
    /// [`FLAG_REQUEST`], [`FLAG_RESPONSE`], [`FLAG_ERROR`].
    pub flags: u8,
    pub payload: Bytes,
}

impl Envelope {
    /// A one-way message.
    pub fn cast(kind: u16, version: u16, payload: Bytes) -> Envelope {
        Envelope { kind, version, corr: 0, flags: 0, payload }
    }

    /// A request; the transport assigns `corr` when it sends it.
    pub fn request(kind: u16, version: u16, payload: Bytes) -> Envelope {
        Envelope { kind, version, corr: 0, flags: FLAG_REQUEST, payload }
    }

    /// A (successful) response; the transport sets `corr` to the request's.
    pub fn response(kind: u16, version: u16, payload: Bytes) -> Envelope {
        Envelope { kind, version, corr: 0, flags: FLAG_RESPONSE, payload }
    }

    /// A failed response: the caller gets [`super::TransportError::Remote`] with `reason`.
    pub fn error(reason: &str) -> Envelope {
        Envelope {
            kind: KIND_NONE,
            version: 0,
            corr: 0,
            flags: FLAG_RESPONSE | FLAG_ERROR,
            payload: Bytes::copy_from_slice(reason.as_bytes()),
        }
    }

    pub fn is_request(&self) -> bool {
        self.flags & FLAG_REQUEST != 0
    }

    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }

    pub fn is_error(&self) -> bool {
        self.flags & FLAG_ERROR != 0
    }

    /// The reason carried by an error response.
    pub fn error_reason(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    /// Bytes this envelope takes inside a frame.
    pub fn encoded_len(&self) -> usize {
        ENVELOPE_HEADER_LEN + self.payload.len()
    }

    fn put(&self, out: &mut BytesMut) -> Result<(), WireError> {
        let len = u32::try_from(self.payload.len()).map_err(|_| WireError::TooLarge(self.payload.len()))?;
        out.put_u16(self.kind);
        out.put_u16(self.version);
        out.put_u64(self.corr);
        out.put_u8(self.flags);
        out.put_u32(len);
        out.put_slice(&self.payload);
        Ok(())
    }

    /// Reads one envelope from the front of `buf`; the payload shares `buf`'s storage.
    fn take(buf: &mut Bytes) -> Result<Envelope, WireError> {
        need(buf, ENVELOPE_HEADER_LEN)?;
        let kind = buf.get_u16();
        let version = buf.get_u16();
        let corr = buf.get_u64();
        let flags = buf.get_u8();
        if flags & !KNOWN_FLAGS != 0 {
            return Err(WireError::InvalidFlags(flags));
        }
        let len = buf.get_u32() as usize;
        need(buf, len)?;
        let payload = buf.split_to(len);
        Ok(Envelope { kind, version, corr, flags, payload })
    }

    /// One envelope on its own, with the leading wire version.
    pub fn encode(&self) -> Result<Bytes, WireError> {
        let mut out = BytesMut::with_capacity(2 + self.encoded_len());
        out.put_u16(WIRE_VERSION);
        self.put(&mut out)?;
        Ok(out.freeze())
    }

    /// The inverse of [`Envelope::encode`].
    pub fn decode(mut bytes: Bytes) -> Result<Envelope, WireError> {
        take_wire_version(&mut bytes)?;
        let env = Envelope::take(&mut bytes)?;
        if !bytes.is_empty() {
            return Err(WireError::TrailingBytes(bytes.len()));
        }
        Ok(env)
    }
}

/// One frame: envelopes from node `from` to node `to`, in sending order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub from: u64,
    pub to: u64,
    pub envelopes: Vec<Envelope>,
}

impl Batch {
    /// Bytes the encoded frame takes.
    pub fn encoded_len(&self) -> usize {
        BATCH_HEADER_LEN + self.envelopes.iter().map(Envelope::encoded_len).sum::<usize>()
    }

    pub fn encode(&self) -> Result<Bytes, WireError> {
        let count = u32::try_from(self.envelopes.len()).map_err(|_| WireError::TooLarge(self.envelopes.len()))?;
        let mut out = BytesMut::with_capacity(self.encoded_len());
        out.put_u16(WIRE_VERSION);
        out.put_u64(self.from);
        out.put_u64(self.to);
        out.put_u32(count);
        for env in &self.envelopes {
            env.put(&mut out)?;
        }
        Ok(out.freeze())
    }

    /// Decodes a whole frame; payloads share `bytes`' storage (no copy).
    pub fn decode(mut bytes: Bytes) -> Result<Batch, WireError> {
        take_wire_version(&mut bytes)?;
        need(&bytes, BATCH_HEADER_LEN - 2)?;
        let from = bytes.get_u64();
        let to = bytes.get_u64();
        let count = bytes.get_u32() as usize;
        // Each envelope takes at least its header: a count the bytes cannot hold is refused
        // before anything is allocated for it.
        let min = count.saturating_mul(ENVELOPE_HEADER_LEN);
        need(&bytes, min)?;
        let mut envelopes = Vec::with_capacity(count);
        for _ in 0..count {
            envelopes.push(Envelope::take(&mut bytes)?);
        }
        if !bytes.is_empty() {
            return Err(WireError::TrailingBytes(bytes.len()));
        }
        Ok(Batch { from, to, envelopes })
    }
}

fn need(buf: &Bytes, n: usize) -> Result<(), WireError> {
    if buf.len() < n {
        Err(WireError::Truncated { needed: n, have: buf.len() })
    } else {
        Ok(())
    }
}

fn take_wire_version(buf: &mut Bytes) -> Result<(), WireError> {
    need(buf, 2)?;
    let v = buf.get_u16();
    if v != WIRE_VERSION {
        return Err(WireError::UnsupportedWireVersion(v));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn sample() -> Vec<Envelope> {
        vec![
            Envelope::cast(20, 1, Bytes::from_static(b"<message/>")),
            Envelope { corr: 7, ..Envelope::request(21, 3, Bytes::from_static(b"q")) },
            Envelope { corr: 7, ..Envelope::error("no such room") },
            Envelope::cast(KIND_PING, 0, Bytes::new()),
        ]
    }

    #[test]
    fn envelope_round_trip() {
        for env in sample() {
            let bytes = env.encode().unwrap();
            assert_eq!(bytes.len(), 2 + env.encoded_len());
            assert_eq!(Envelope::decode(bytes).unwrap(), env);
        }
    }

    #[test]
    fn flags_are_what_the_constructors_say() {
        let [cast, req, err, _] = <[Envelope; 4]>::try_from(sample()).unwrap();
        assert!(!cast.is_request() && !cast.is_response() && !cast.is_error());
        assert!(req.is_request() && !req.is_response());
        assert!(err.is_response() && err.is_error());
        assert_eq!(err.error_reason(), "no such room");
    }

    #[test]
    fn batch_round_trip_keeps_order() {
        let batch = Batch { from: 1, to: u64::MAX, envelopes: sample() };
        let bytes = batch.encode().unwrap();
        assert_eq!(bytes.len(), batch.encoded_len());
        assert_eq!(Batch::decode(bytes).unwrap(), batch);

        let empty = Batch { from: 3, to: 4, envelopes: vec![] };
        assert_eq!(Batch::decode(empty.encode().unwrap()).unwrap(), empty);
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = Batch { from: 1, to: 2, envelopes: sample() }.encode().unwrap();
        for cut in 0..bytes.len() {
            let err = Batch::decode(bytes.slice(..cut)).unwrap_err();
            assert!(matches!(err, WireError::Truncated { .. }), "cut at {cut}: {err:?}");
        }
        let one = sample()[0].encode().unwrap();
        for cut in 0..one.len() {
            assert!(matches!(Envelope::decode(one.slice(..cut)), Err(WireError::Truncated { .. })));
        }
    }

    #[test]
    fn unknown_wire_version_is_refused() {
        let mut bytes = BytesMut::from(&Batch { from: 1, to: 2, envelopes: sample() }.encode().unwrap()[..]);
        bytes[0..2].copy_from_slice(&(WIRE_VERSION + 1).to_be_bytes());
        assert_eq!(Batch::decode(bytes.freeze()), Err(WireError::UnsupportedWireVersion(WIRE_VERSION + 1)));

        let mut one = BytesMut::from(&sample()[0].encode().unwrap()[..]);
        one[0..2].copy_from_slice(&0u16.to_be_bytes());
        assert_eq!(Envelope::decode(one.freeze()), Err(WireError::UnsupportedWireVersion(0)));
    }

    #[test]
    fn trailing_bytes_unknown_flags_and_absurd_counts_are_refused() {
        let mut bytes = BytesMut::from(&Batch { from: 1, to: 2, envelopes: sample() }.encode().unwrap()[..]);
        bytes.put_u8(0);
        assert_eq!(Batch::decode(bytes.freeze()), Err(WireError::TrailingBytes(1)));

        let mut bad_flags = BytesMut::from(&sample()[0].encode().unwrap()[..]);
        bad_flags[2 + 12] = 0x80;
        assert_eq!(Envelope::decode(bad_flags.freeze()), Err(WireError::InvalidFlags(0x80)));

        // A header claiming u32::MAX envelopes with no bytes behind it.
        let mut absurd = BytesMut::new();
        absurd.put_u16(WIRE_VERSION);
        absurd.put_u64(1);
        absurd.put_u64(2);
        absurd.put_u32(u32::MAX);
        assert!(matches!(Batch::decode(absurd.freeze()), Err(WireError::Truncated { .. })));
    }

    #[test]
    fn decoded_payloads_share_the_frame() {
        let bytes = Batch { from: 1, to: 2, envelopes: sample() }.encode().unwrap();
        let range = bytes.as_ptr_range();
        let batch = Batch::decode(bytes.clone()).unwrap();
        let p = batch.envelopes[0].payload.as_ptr();
        assert!(range.contains(&p));
    }
}
