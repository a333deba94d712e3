//! The binary encoding of [`ReplRequest`] and [`ReplResponse`] for the node's transport.
//!
//! Big-endian throughout. A message starts with the protocol version (u16) and a tag byte
//! naming the variant; integers have their natural width (partition u16, epoch/seq/node u64);
//! an `Option` is a presence byte (0 or 1) followed by the value; a list is a u32 count
//! followed by its items; a byte string (payload, text) is a u32 length followed by the bytes,
//! copied as they are.
//!
//! ```text
//! request  = version:u16 tag:u8 body
//!   1 Append  partition:u16 epoch:u64 leader:u64 prev:opt(pos) entries:list(entry) commit:u64
//!             serving:opt(set)
//!   2 Fence   partition:u16 epoch:u64
//!   3 Fetch   partition:u16 epoch:u64 from:u64 max_entries:u32
//! response = version:u16 tag:u8 body
//!   1 Appended  last:u64
//!   2 Stale     promised:u64
//!   3 Mismatch  last:opt(pos)
//!   4 Fenced    last:opt(pos) commit:u64 serving:opt(set)
//!   5 Entries   list(entry)
//!   6 VersionMismatch ours:u16
//!   7 Invalid   text
//!   8 Failed    text
//! pos   = epoch:u64 seq:u64
//! entry = seq:u64 epoch:u64 payload:bytes
//! set   = epoch:u64 replicas:list(node:u64)
//! ```
//!
//! Decoding is bounded by its input: every length and count is checked against the bytes that
//! remain before anything is allocated, and any malformed input is an error, never a panic.
//! A message of another protocol version is refused ([`WireDecodeError::UnsupportedVersion`];
//! the receiver should answer [`ResponseBody::VersionMismatch`]), except the
//! `VersionMismatch` answer itself, whose layout never changes so that every version can read
//! it.

use crate::types::*;

/// Why bytes could not be decoded into a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireDecodeError {
    #[error("message truncated: {needed} more bytes needed for {what}")]
    Truncated { what: &'static str, needed: usize },
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u16),
    #[error("unknown {what} tag {tag}")]
    UnknownTag { what: &'static str, tag: u8 },
    #[error("invalid presence flag {0}")]
    InvalidFlag(u8),
    #[error("{what}: {count} items cannot fit in the {remaining} bytes left")]
    CountTooLarge { what: &'static str, count: u32, remaining: usize },
    #[error("text is not UTF-8")]
    InvalidUtf8,
    #[error("{0} bytes left after the message")]
    TrailingBytes(usize),
}

const REQ_APPEND: u8 = 1;
const REQ_FENCE: u8 = 2;
const REQ_FETCH: u8 = 3;

const RESP_APPENDED: u8 = 1;
const RESP_STALE: u8 = 2;
const RESP_MISMATCH: u8 = 3;
const RESP_FENCED: u8 = 4;
const RESP_ENTRIES: u8 = 5;
const RESP_VERSION_MISMATCH: u8 = 6;
const RESP_INVALID: u8 = 7;
const RESP_FAILED: u8 = 8;

/// The fixed part of an encoded entry (seq, epoch, payload length).
const ENTRY_MIN: usize = 8 + 8 + 4;

// ---- encoding ----

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    /// A length or count; the in-memory sizes this crate produces stay far below u32::MAX
    /// (batches are bounded), and saturating keeps the function total.
    fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
    fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.0.extend_from_slice(b);
    }
    fn pos(&mut self, p: Option<LogPos>) {
        match p {
            None => self.u8(0),
            Some(p) => {
                self.u8(1);
                self.u64(p.epoch);
                self.u64(p.seq);
            }
        }
    }
    fn set(&mut self, set: Option<&ReplicaSet>) {
        match set {
            None => self.u8(0),
            Some(set) => {
                self.u8(1);
                self.u64(set.epoch);
                self.len(set.replicas.len());
                for &n in &set.replicas {
                    self.u64(n);
                }
            }
        }
    }
    fn entries(&mut self, entries: &[Entry]) {
        self.len(entries.len());
        for e in entries {
            self.u64(e.seq);
            self.u64(e.epoch);
            self.bytes(&e.payload);
        }
    }
}

fn entries_size(entries: &[Entry]) -> usize {
    entries.iter().map(|e| ENTRY_MIN + e.payload.len()).sum::<usize>() + 4
}

pub fn encode_request(req: &ReplRequest) -> Vec<u8> {
    let hint = match &req.body {
        RequestBody::Append(a) => 64 + entries_size(&a.entries),
        _ => 32,
    };
    let mut w = Writer(Vec::with_capacity(hint));
    w.u16(req.version);
    match &req.body {
        RequestBody::Append(a) => {
            w.u8(REQ_APPEND);
            w.u16(a.partition);
            w.u64(a.epoch);
            w.u64(a.leader);
            w.pos(a.prev);
            w.entries(&a.entries);
            w.u64(a.commit);
            w.set(a.serving.as_ref());
        }
        RequestBody::Fence(f) => {
            w.u8(REQ_FENCE);
            w.u16(f.partition);
            w.u64(f.epoch);
        }
        RequestBody::Fetch(f) => {
            w.u8(REQ_FETCH);
            w.u16(f.partition);
            w.u64(f.epoch);
            w.u64(f.from);
            w.u32(f.max_entries);
        }
    }
    w.0
}

pub fn encode_response(resp: &ReplResponse) -> Vec<u8> {
    let hint = match &resp.body {
        ResponseBody::Entries(e) => 16 + entries_size(e),
        ResponseBody::Invalid(s) | ResponseBody::Failed(s) => 16 + s.len(),
        _ => 32,
    };
    let mut w = Writer(Vec::with_capacity(hint));
    w.u16(resp.version);
    match &resp.body {
        ResponseBody::Appended { last } => {
            w.u8(RESP_APPENDED);
            w.u64(*last);
        }
        ResponseBody::Stale { promised } => {
            w.u8(RESP_STALE);
            w.u64(*promised);
        }
        ResponseBody::Mismatch { last } => {
            w.u8(RESP_MISMATCH);
            w.pos(*last);
        }
        ResponseBody::Fenced { last, commit, serving } => {
            w.u8(RESP_FENCED);
            w.pos(*last);
            w.u64(*commit);
            w.set(serving.as_ref());
        }
        ResponseBody::Entries(entries) => {
            w.u8(RESP_ENTRIES);
            w.entries(entries);
        }
        ResponseBody::VersionMismatch { ours } => {
            w.u8(RESP_VERSION_MISMATCH);
            w.u16(*ours);
        }
        ResponseBody::Invalid(s) => {
            w.u8(RESP_INVALID);
            w.bytes(s.as_bytes());
        }
        ResponseBody::Failed(s) => {
            w.u8(RESP_FAILED);
            w.bytes(s.as_bytes());
        }
    }
    w.0
}

// ---- decoding ----

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireDecodeError> {
        if self.buf.len() < n {
            return Err(WireDecodeError::Truncated { what, needed: n - self.buf.len() });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], WireDecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, WireDecodeError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, WireDecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, WireDecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, WireDecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }
    fn flag(&mut self, what: &'static str) -> Result<bool, WireDecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(WireDecodeError::InvalidFlag(other)),
        }
    }
    /// A count of items each at least `min_item` bytes long, checked against what is left.
    fn count(&mut self, min_item: usize, what: &'static str) -> Result<usize, WireDecodeError> {
        let count = self.u32(what)?;
        let n = usize::try_from(count).unwrap_or(usize::MAX);
        if n.saturating_mul(min_item.max(1)) > self.buf.len() {
            return Err(WireDecodeError::CountTooLarge { what, count, remaining: self.buf.len() });
        }
        Ok(n)
    }
    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], WireDecodeError> {
        let n = self.count(1, what)?;
        self.take(n, what)
    }
    fn text(&mut self, what: &'static str) -> Result<String, WireDecodeError> {
        let b = self.bytes(what)?;
        std::str::from_utf8(b).map(str::to_owned).map_err(|_| WireDecodeError::InvalidUtf8)
    }
    fn pos(&mut self, what: &'static str) -> Result<Option<LogPos>, WireDecodeError> {
        if !self.flag(what)? {
            return Ok(None);
        }
        Ok(Some(LogPos { epoch: self.u64(what)?, seq: self.u64(what)? }))
    }
    fn set(&mut self, what: &'static str) -> Result<Option<ReplicaSet>, WireDecodeError> {
        if !self.flag(what)? {
            return Ok(None);
        }
        let epoch = self.u64(what)?;
        let n = self.count(8, what)?;
        let mut replicas = Vec::with_capacity(n);
        for _ in 0..n {
            replicas.push(self.u64(what)?);
        }
        Ok(Some(ReplicaSet { epoch, replicas }))
    }
    fn entries(&mut self) -> Result<Vec<Entry>, WireDecodeError> {
        let n = self.count(ENTRY_MIN, "entries")?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let seq = self.u64("entry seq")?;
            let epoch = self.u64("entry epoch")?;
            let payload = self.bytes("entry payload")?.to_vec();
            out.push(Entry { seq, epoch, payload });
        }
        Ok(out)
    }
    fn finish(&self) -> Result<(), WireDecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(WireDecodeError::TrailingBytes(n)),
        }
    }
}

pub fn decode_request(bytes: &[u8]) -> Result<ReplRequest, WireDecodeError> {
    let mut r = Reader { buf: bytes };
    let version = r.u16("version")?;
    if version != REPL_VERSION {
        return Err(WireDecodeError::UnsupportedVersion(version));
    }
    let body = match r.u8("tag")? {
        REQ_APPEND => RequestBody::Append(Append {
            partition: r.u16("partition")?,
            epoch: r.u64("epoch")?,
            leader: r.u64("leader")?,
            prev: r.pos("prev")?,
            entries: r.entries()?,
            commit: r.u64("commit")?,
            serving: r.set("serving")?,
        }),
        REQ_FENCE => RequestBody::Fence(Fence { partition: r.u16("partition")?, epoch: r.u64("epoch")? }),
        REQ_FETCH => RequestBody::Fetch(Fetch {
            partition: r.u16("partition")?,
            epoch: r.u64("epoch")?,
            from: r.u64("from")?,
            max_entries: r.u32("max_entries")?,
        }),
        tag => return Err(WireDecodeError::UnknownTag { what: "request", tag }),
    };
    r.finish()?;
    Ok(ReplRequest { version, body })
}

pub fn decode_response(bytes: &[u8]) -> Result<ReplResponse, WireDecodeError> {
    let mut r = Reader { buf: bytes };
    let version = r.u16("version")?;
    let tag = r.u8("tag")?;
    if version != REPL_VERSION && tag != RESP_VERSION_MISMATCH {
        return Err(WireDecodeError::UnsupportedVersion(version));
    }
    let body = match tag {
        RESP_APPENDED => ResponseBody::Appended { last: r.u64("last")? },
        RESP_STALE => ResponseBody::Stale { promised: r.u64("promised")? },
        RESP_MISMATCH => ResponseBody::Mismatch { last: r.pos("last")? },
        RESP_FENCED => {
            ResponseBody::Fenced { last: r.pos("last")?, commit: r.u64("commit")?, serving: r.set("serving")? }
        }
        RESP_ENTRIES => ResponseBody::Entries(r.entries()?),
        RESP_VERSION_MISMATCH => ResponseBody::VersionMismatch { ours: r.u16("ours")? },
        RESP_INVALID => ResponseBody::Invalid(r.text("reason")?),
        RESP_FAILED => ResponseBody::Failed(r.text("reason")?),
        tag => return Err(WireDecodeError::UnknownTag { what: "response", tag }),
    };
    r.finish()?;
    Ok(ReplResponse { version, body })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(seq: Seq, epoch: Epoch, payload: &[u8]) -> Entry {
        Entry { seq, epoch, payload: payload.to_vec() }
    }

    fn requests() -> Vec<ReplRequest> {
        vec![
            ReplRequest::new(RequestBody::Append(Append {
                partition: 7,
                epoch: 3,
                leader: u64::MAX,
                prev: Some(LogPos { epoch: 2, seq: 41 }),
                entries: vec![entry(42, 3, b""), entry(43, 3, b"\x00\xff\"\\<x/>"), entry(44, 3, &[7u8; 300])],
                commit: 40,
                serving: Some(ReplicaSet { epoch: 3, replicas: vec![u64::MAX, 2, 3] }),
            })),
            ReplRequest::new(RequestBody::Append(Append {
                partition: 0,
                epoch: 1,
                leader: 1,
                prev: None,
                entries: vec![],
                commit: 0,
                serving: None,
            })),
            ReplRequest::new(RequestBody::Fence(Fence { partition: u16::MAX, epoch: 9 })),
            ReplRequest::new(RequestBody::Fetch(Fetch { partition: 3, epoch: 9, from: 12, max_entries: 256 })),
        ]
    }

    fn responses() -> Vec<ReplResponse> {
        vec![
            ReplResponse::new(ResponseBody::Appended { last: 99 }),
            ReplResponse::new(ResponseBody::Stale { promised: 5 }),
            ReplResponse::new(ResponseBody::Mismatch { last: None }),
            ReplResponse::new(ResponseBody::Mismatch { last: Some(LogPos { epoch: 1, seq: 2 }) }),
            ReplResponse::new(ResponseBody::Fenced {
                last: Some(LogPos { epoch: 4, seq: 8 }),
                commit: 7,
                serving: Some(ReplicaSet { epoch: 2, replicas: vec![1, 2, 3] }),
            }),
            ReplResponse::new(ResponseBody::Fenced { last: None, commit: 0, serving: None }),
            ReplResponse::new(ResponseBody::Entries(vec![entry(1, 1, b""), entry(2, 1, "é".as_bytes())])),
            ReplResponse::new(ResponseBody::Entries(vec![])),
            ReplResponse::new(ResponseBody::VersionMismatch { ours: REPL_VERSION }),
            ReplResponse::new(ResponseBody::Invalid("entries are not contiguous".into())),
            ReplResponse::new(ResponseBody::Failed("disk full — ünïcode".into())),
        ]
    }

    #[test]
    fn every_variant_round_trips() {
        for req in requests() {
            assert_eq!(decode_request(&encode_request(&req)).unwrap(), req);
        }
        for resp in responses() {
            assert_eq!(decode_response(&encode_response(&resp)).unwrap(), resp);
        }
    }

    #[test]
    fn layout_is_big_endian_with_raw_payloads() {
        let req = ReplRequest::new(RequestBody::Fence(Fence { partition: 0x0102, epoch: 0x0304 }));
        let mut expected = REPL_VERSION.to_be_bytes().to_vec();
        expected.extend_from_slice(&[REQ_FENCE, 1, 2, 0, 0, 0, 0, 0, 0, 3, 4]);
        assert_eq!(encode_request(&req), expected);
        // The payload appears verbatim in the encoding.
        let payload = b"<message to='a@b'>\"quoted\"</message>".to_vec();
        let req = ReplRequest::new(RequestBody::Append(Append {
            partition: 1,
            epoch: 1,
            leader: 1,
            prev: None,
            entries: vec![entry(1, 1, &payload)],
            commit: 0,
            serving: None,
        }));
        let bytes = encode_request(&req);
        assert!(bytes.windows(payload.len()).any(|w| w == payload.as_slice()));
    }

    #[test]
    fn other_versions_are_refused_except_the_version_mismatch_answer() {
        let mut bytes = encode_request(&requests()[2]);
        bytes[..2].copy_from_slice(&(REPL_VERSION + 1).to_be_bytes());
        assert_eq!(decode_request(&bytes), Err(WireDecodeError::UnsupportedVersion(REPL_VERSION + 1)));
        let mut bytes = encode_response(&responses()[0]);
        bytes[..2].copy_from_slice(&(REPL_VERSION + 1).to_be_bytes());
        assert_eq!(decode_response(&bytes), Err(WireDecodeError::UnsupportedVersion(REPL_VERSION + 1)));
        let theirs = ReplResponse { version: REPL_VERSION + 7, body: ResponseBody::VersionMismatch { ours: 77 } };
        assert_eq!(decode_response(&encode_response(&theirs)).unwrap(), theirs);
    }

    #[test]
    fn hostile_counts_and_lengths_are_refused_before_allocating() {
        // An Append claiming u32::MAX entries in a few bytes.
        let mut bytes = REPL_VERSION.to_be_bytes().to_vec();
        bytes.push(REQ_APPEND);
        bytes.extend_from_slice(&[0, 1]);
        bytes.extend_from_slice(&[0; 16]);
        bytes.push(0);
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        bytes.extend_from_slice(&[0; 9]);
        assert!(matches!(decode_request(&bytes), Err(WireDecodeError::CountTooLarge { .. })));
        // A text claiming more bytes than there are.
        let mut bytes = REPL_VERSION.to_be_bytes().to_vec();
        bytes.push(RESP_FAILED);
        bytes.extend_from_slice(&1000u32.to_be_bytes());
        bytes.extend_from_slice(b"short");
        assert!(matches!(decode_response(&bytes), Err(WireDecodeError::CountTooLarge { .. })));
        // Bad flag, bad tag, bad UTF-8, trailing bytes.
        let mut bytes = encode_response(&responses()[2]);
        bytes[3] = 2;
        assert_eq!(decode_response(&bytes), Err(WireDecodeError::InvalidFlag(2)));
        let mut bytes = encode_response(&responses()[0]);
        bytes[2] = 200;
        assert!(matches!(decode_response(&bytes), Err(WireDecodeError::UnknownTag { tag: 200, .. })));
        let mut bytes = REPL_VERSION.to_be_bytes().to_vec();
        bytes.push(RESP_INVALID);
        bytes.extend_from_slice(&2u32.to_be_bytes());
        bytes.extend_from_slice(&[0xc3, 0x28]);
        assert_eq!(decode_response(&bytes), Err(WireDecodeError::InvalidUtf8));
        let mut bytes = encode_request(&requests()[3]);
        bytes.push(0);
        assert_eq!(decode_request(&bytes), Err(WireDecodeError::TrailingBytes(1)));
    }

    /// A small deterministic generator (xorshift) so the test needs no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn truncated_mutated_and_random_input_never_panics() {
        let encoded: Vec<(bool, Vec<u8>)> = requests()
            .iter()
            .map(|r| (true, encode_request(r)))
            .chain(responses().iter().map(|r| (false, encode_response(r))))
            .collect();
        let decode = |is_req: bool, b: &[u8]| {
            // Both decoders on everything; only the absence of a panic matters here.
            let _ = decode_request(b);
            let _ = decode_response(b);
            if is_req {
                decode_request(b).is_ok()
            } else {
                decode_response(b).is_ok()
            }
        };
        for (is_req, bytes) in &encoded {
            for cut in 0..bytes.len() {
                assert!(!decode(*is_req, &bytes[..cut]), "a truncation to {cut} bytes decoded");
            }
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // Single-byte mutations of valid messages.
        for (is_req, bytes) in &encoded {
            for _ in 0..200 {
                let mut b = bytes.clone();
                let i = (rng.next() as usize) % b.len();
                b[i] = rng.next() as u8;
                decode(*is_req, &b);
            }
        }
        // Random strings, with a valid header half the time so that the bodies get exercised.
        for i in 0..5000 {
            let len = (rng.next() % 96) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if i % 2 == 0 && b.len() >= 3 {
                b[..2].copy_from_slice(&REPL_VERSION.to_be_bytes());
                b[2] = (rng.next() % 9) as u8;
            }
            decode(i % 4 == 0, &b);
        }
    }

    /// Size and speed against serde_json, for the record:
    /// `cargo test -p waddle-replog --release wire_figures -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn wire_figures() {
        let entries: Vec<Entry> = (1..=100)
            .map(|i| Entry {
                seq: 1000 + i,
                epoch: 4,
                payload: (0..300).map(|j| (i as usize * 31 + j) as u8).collect(),
            })
            .collect();
        let req = ReplRequest::new(RequestBody::Append(Append {
            partition: 12,
            epoch: 4,
            leader: 3,
            prev: Some(LogPos { epoch: 4, seq: 1000 }),
            entries,
            commit: 998,
            serving: Some(ReplicaSet { epoch: 4, replicas: vec![3, 1, 2] }),
        }));
        let bin = encode_request(&req);
        let json = serde_json::to_vec(&req).unwrap();
        let rounds = 2000u32;
        let t = std::time::Instant::now();
        for _ in 0..rounds {
            let b = encode_request(std::hint::black_box(&req));
            std::hint::black_box(decode_request(&b).unwrap());
        }
        let bin_time = t.elapsed() / rounds;
        let t = std::time::Instant::now();
        for _ in 0..rounds / 10 {
            let b = serde_json::to_vec(std::hint::black_box(&req)).unwrap();
            std::hint::black_box(serde_json::from_slice::<ReplRequest>(&b).unwrap());
        }
        let json_time = t.elapsed() / (rounds / 10);
        eprintln!(
            "Append of 100 x 300-byte entries: binary {} bytes, json {} bytes; encode+decode binary {:?}, json {:?}",
            bin.len(),
            json.len(),
            bin_time,
            json_time
        );
    }
}
