//! Randomized tests ("fuzzing" on stable Rust) of [`StreamParser`] and serialization.
//!
//! No fuzzing engine (cargo-fuzz needs a nightly toolchain): each property draws its
//! cases from a seeded generator of its own (SplitMix64), so that every finding is
//! reproducible from one number. The properties:
//!
//! - `fuzz_random_bytes` / `fuzz_mutated_streams`: on any bytes (random, biased towards
//!   XML syntax, or a valid stream with a few mutations), fed in any split into reads,
//!   the parser never panics; the outcome (events, then the error if any) does not depend
//!   on the split; errors are sticky; between reads it never holds more than one unit's
//!   limit (+1 byte) of unparsed input nor more open elements than the depth limit; and
//!   every stanza it accepts serializes and parses back to itself.
//! - `fuzz_valid_streams`: a generated stream, written with the syntax's freedoms
//!   (prefixes or default namespace declarations, either quote, character references,
//!   CDATA sections, white space in tags, `<a></a>` for `<a/>`), yields exactly the
//!   generated elements however it is split.
//! - `fuzz_limits`: with random limits, a stanza over the size limit or nesting limit
//!   fails with that error (the one whose limit is crossed first in the bytes), after
//!   exactly the stanzas before it, without buffering beyond the limit.
//! - `fuzz_round_trip`: `Element::from_bytes(e.to_bytes(ns), ns) == e` for generated
//!   elements with namespaces, namespaced attributes and text needing escapes.
//!
//! By default each property runs [`DEFAULT_CASES`] cases from a fixed seed, a few
//! seconds for all of them in a debug build (CI). Longer on demand:
//!
//! ```text
//! WADDLE_FUZZ_SECS=120   # run each property this long (cases unlimited unless set)
//! WADDLE_FUZZ_CASES=N    # cases per property
//! WADDLE_FUZZ_SEED=S     # first case's seed (default fixed; case i uses S + i)
//! WADDLE_FUZZ_DUMP=path  # where a split-dependent input is written (and path.splits)
//! ```
//!
//! e.g. `WADDLE_FUZZ_SECS=150 cargo test -p waddle-xml fuzz -- --test-threads=1
//! --nocapture`. A failing case names its seed; `WADDLE_FUZZ_SEED=<seed>
//! WADDLE_FUZZ_CASES=1` replays it alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crate::*;

/// Cases per property when nothing else is asked.
const DEFAULT_CASES: u64 = 300;
const DEFAULT_SEED: u64 = 0x5741_4444_4c45;

/// SplitMix64: small, fast, and good enough to drive test cases.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `1 / n`.
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Runs `case` over the configured cases, each with its own seed; a panic names the
/// seed that replays it.
fn run_cases(property: &str, case: impl Fn(&mut Rng)) {
    let secs = env_u64("WADDLE_FUZZ_SECS");
    let cases = env_u64("WADDLE_FUZZ_CASES").unwrap_or(if secs.is_some() { u64::MAX } else { DEFAULT_CASES });
    let seed = env_u64("WADDLE_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let until = secs.map(|s| Instant::now() + Duration::from_secs(s));
    let started = Instant::now();
    let mut ran = 0u64;
    while ran < cases && until.is_none_or(|u| Instant::now() < u) {
        let case_seed = seed.wrapping_add(ran);
        let mut rng = Rng::new(case_seed);
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| case(&mut rng))) {
            eprintln!(
                "fuzz {property}: case seed {case_seed} failed after {ran} passing cases; replay with \
                 WADDLE_FUZZ_SEED={case_seed} WADDLE_FUZZ_CASES=1"
            );
            std::panic::resume_unwind(panic);
        }
        ran += 1;
    }
    eprintln!(
        "fuzz {property}: {ran} cases passed in {:.1} s (seeds {seed}..{})",
        started.elapsed().as_secs_f64(),
        seed.wrapping_add(ran)
    );
}

// ---------------------------------------------------------------- feeding

#[derive(Debug, PartialEq)]
struct Outcome {
    events: Vec<StreamEvent>,
    error: Option<XmlError>,
}

/// Feeds `chunks` in order, pulling every event after each, and checks the invariants
/// that hold whatever the input: no more than one unit's limit (+1) of unparsed bytes
/// and no more open elements than the depth limit while the stream is healthy, and
/// sticky errors. With `release`, gives memory back between reads as the server does
/// ([`StreamParser::release_consumed`]).
fn feed(limits: Limits, chunks: &[&[u8]], release: bool) -> Outcome {
    let mut p = StreamParser::new(limits);
    let mut events = Vec::new();
    let bound = limits.max_stanza_bytes.max(limits.max_header_bytes) + 1;
    for chunk in chunks {
        let mut result = p.feed(chunk);
        while result.is_ok() {
            match p.next_event() {
                Ok(Some(ev)) => events.push(ev),
                Ok(None) => break,
                Err(e) => result = Err(e),
            }
        }
        if let Err(e) = result {
            assert_eq!(p.next_event(), Err(e.clone()), "error not sticky");
            assert_eq!(p.feed(b"<a/>"), Err(e.clone()), "error not sticky");
            return Outcome { events, error: Some(e) };
        }
        assert!(p.buffered_len() <= bound, "{} bytes held unparsed, limit {bound}", p.buffered_len());
        assert!(p.open_depth() <= limits.max_depth, "{} open elements, limit {}", p.open_depth(), limits.max_depth);
        if release {
            p.release_consumed();
        }
    }
    Outcome { events, error: None }
}

/// A random split of `doc` into reads: single bytes, small pieces or large ones.
fn split<'a>(rng: &mut Rng, doc: &'a [u8]) -> Vec<&'a [u8]> {
    let max = *rng.pick(&[1, 2, 3, 5, 8, 17, 64, 512, 4096]);
    let mut out = Vec::new();
    let mut i = 0;
    while i < doc.len() {
        let n = 1 + rng.below(max);
        let j = (i + n).min(doc.len());
        out.push(&doc[i..j]);
        i = j;
    }
    out
}

/// Parses `doc` whole and in `splits` random splits; all must agree. Returns the outcome.
fn feed_all_ways(rng: &mut Rng, limits: Limits, doc: &[u8], splits: usize) -> Outcome {
    let whole = feed(limits, &[doc], false);
    for _ in 0..splits {
        let chunks = split(rng, doc);
        let got = feed(limits, &chunks, rng.one_in(2));
        if got != whole {
            if let Ok(path) = std::env::var("WADDLE_FUZZ_DUMP") {
                let sizes: Vec<String> = chunks.iter().map(|c| c.len().to_string()).collect();
                let _ = std::fs::write(&path, doc);
                let _ = std::fs::write(format!("{path}.splits"), format!("{limits:?}\n{}\n", sizes.join(" ")));
            }
        }
        assert_eq!(got, whole, "outcome depends on the split into {} reads of {:?}", chunks.len(), show(doc));
    }
    whole
}

fn show(doc: &[u8]) -> String {
    if doc.len() > 2000 {
        format!("{}…({} bytes)", String::from_utf8_lossy(&doc[..2000]), doc.len())
    } else {
        String::from_utf8_lossy(doc).into_owned()
    }
}

/// Every stanza accepted serializes and parses back to itself.
fn check_stanzas_round_trip(outcome: &Outcome) {
    let mut ns = NS_CLIENT.to_owned();
    for ev in &outcome.events {
        match ev {
            StreamEvent::Header(h) => ns = h.default_ns.clone(),
            StreamEvent::Stanza(el) => {
                let bytes = el.to_bytes(&ns);
                assert_eq!(Element::from_bytes(&bytes, &ns).as_ref(), Ok(el), "{:?} does not round-trip", show(&bytes));
            }
            StreamEvent::Close => {}
        }
    }
}

fn random_limits(rng: &mut Rng) -> Limits {
    if rng.one_in(3) {
        return Limits::default();
    }
    Limits {
        max_stanza_bytes: 32 + rng.below(4096),
        max_depth: 1 + rng.below(12),
        max_header_bytes: 64 + rng.below(512),
    }
}

// ---------------------------------------------------------------- generation

const NAMES: &[&str] = &["message", "body", "x", "a", "b-c", "d.e", "_f1", "é", "日本"];
const NAMESPACES: &[&str] = &[NS_CLIENT, "urn:x:a", "urn:x:b", "urn:x:{q}&'\"<>", "", NS_XML];
const ATTR_NAMES: &[&str] = &[
    "to",
    "from",
    "id",
    "type",
    "xml:lang",
    "a-b",
    "{urn:x:attr}k",
    "{urn:x:attr}j",
    "{urn:x:b}k",
    "{urn:x:a}id",
    "{urn:x:}}k",
];
/// Characters of generated text and attribute values: everything that needs escaping,
/// white space that normalization would change, multi-byte characters.
const CHARS: &[char] =
    &['a', 'Z', '0', ' ', '\t', '\n', '\r', '<', '>', '&', '\'', '"', ']', ';', '#', 'é', '日', '😀', '\u{FFFD}'];

fn gen_text(rng: &mut Rng, max: usize) -> String {
    let n = 1 + rng.below(max);
    (0..n).map(|_| *rng.pick(CHARS)).collect()
}

/// A random element: at most `depth` levels, no empty or adjacent text nodes (the
/// parser merges those, so they would not round-trip).
fn gen_element(rng: &mut Rng, depth: usize) -> Element {
    let mut el = Element::new(*rng.pick(NAMES), *rng.pick(NAMESPACES));
    for _ in 0..rng.below(4) {
        let name = *rng.pick(ATTR_NAMES);
        if el.attr(name).is_none() {
            let value = if rng.one_in(4) { String::new() } else { gen_text(rng, 12) };
            el.set_attr(name, value);
        }
    }
    if depth > 1 {
        for _ in 0..rng.below(5) {
            let last_is_text = matches!(el.nodes().last(), Some(Node::Text(_)));
            if !last_is_text && rng.one_in(2) {
                el.append_text(gen_text(rng, 20));
            } else {
                let child = gen_element(rng, depth - 1);
                el.append_child(child);
            }
        }
    }
    el
}

fn depth_of(el: &Element) -> usize {
    1 + el.children().map(depth_of).max().unwrap_or(0)
}

/// Writes `el` with random but equivalent syntax. `default_ns`: the default namespace in
/// scope. `depth`: of `el` (1 for a stanza). Records in `deep_end` the offset just past
/// the first start tag deeper than `max_depth` (relative to `base`).
struct Writer<'a> {
    rng: &'a mut Rng,
    out: Vec<u8>,
    max_depth: usize,
    base: usize,
    deep_end: Option<usize>,
}

impl Writer<'_> {
    fn ws(&mut self, may_be_empty: bool) {
        let choices: &[&str] =
            if may_be_empty { &["", "", "", " ", "\n", "\t ", "\r\n"] } else { &[" ", " ", "\n", "\t", "  "] };
        let ws = *self.rng.pick(choices);
        self.out.extend_from_slice(ws.as_bytes());
    }

    fn char_ref(&mut self, c: char) {
        let r = if self.rng.one_in(2) { format!("&#x{:X};", c as u32) } else { format!("&#{};", c as u32) };
        self.out.extend_from_slice(r.as_bytes());
    }

    /// An attribute value between `quote`s.
    fn attr_value(&mut self, value: &str, quote: u8) {
        self.out.push(quote);
        for c in value.chars() {
            match c {
                '&' => self.pick_ref(&["&amp;", "&#38;", "&#x26;"]),
                '<' => self.pick_ref(&["&lt;", "&#60;", "&#x3c;"]),
                '\t' | '\n' | '\r' => self.char_ref(c),
                '\'' if quote == b'\'' => self.pick_ref(&["&apos;", "&#39;"]),
                '"' if quote == b'"' => self.pick_ref(&["&quot;", "&#34;"]),
                _ if self.rng.one_in(8) => self.char_ref(c),
                _ => self.push_char(c),
            }
        }
        self.out.push(quote);
    }

    fn pick_ref(&mut self, refs: &[&str]) {
        let r = *self.rng.pick(refs);
        self.out.extend_from_slice(r.as_bytes());
    }

    fn push_char(&mut self, c: char) {
        let mut b = [0; 4];
        self.out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
    }

    fn text(&mut self, text: &str) {
        let chars: Vec<char> = text.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            // A run as CDATA when it can be (no `]]>`, no `\r`, which CDATA would not
            // protect from line-ending normalization).
            let n = 1 + self.rng.below(chars.len() - i);
            let run: String = chars[i..i + n].iter().collect();
            if self.rng.one_in(3) && !run.contains("]]>") && !run.contains('\r') {
                self.out.extend_from_slice(b"<![CDATA[");
                self.out.extend_from_slice(run.as_bytes());
                self.out.extend_from_slice(b"]]>");
            } else {
                for (k, &c) in chars[i..i + n].iter().enumerate() {
                    let after_brackets = i + k >= 2 && chars[i + k - 1] == ']' && chars[i + k - 2] == ']';
                    match c {
                        '&' => self.pick_ref(&["&amp;", "&#38;"]),
                        '<' => self.pick_ref(&["&lt;", "&#x3C;"]),
                        '>' if after_brackets || self.rng.one_in(2) => self.pick_ref(&["&gt;", "&#62;"]),
                        '\r' => self.char_ref(c),
                        _ if self.rng.one_in(10) => self.char_ref(c),
                        _ => self.push_char(c),
                    }
                }
            }
            i += n;
        }
    }

    fn element(&mut self, el: &Element, default_ns: &str, depth: usize) {
        // Namespace declarations go anywhere among the attributes; the attributes keep
        // their order (the element's attribute list is ordered).
        let mut decls: Vec<Vec<u8>> = Vec::new();
        let mut items: Vec<Vec<u8>> = Vec::new();
        // The element's own namespace: inherited, a default declaration, or a prefix.
        let (qname, child_default) = if el.ns() == NS_XML {
            // Bound without a declaration, and never the default namespace.
            (format!("xml:{}", el.name()), default_ns.to_owned())
        } else if el.ns() == default_ns && !self.rng.one_in(5) {
            (el.name().to_owned(), default_ns.to_owned())
        } else if !el.ns().is_empty() && self.rng.one_in(2) {
            let prefix = format!("p{depth}");
            decls.push(self.decl(&format!("xmlns:{prefix}"), el.ns()));
            (format!("{prefix}:{}", el.name()), default_ns.to_owned())
        } else {
            decls.push(self.decl("xmlns", el.ns()));
            (el.name().to_owned(), el.ns().to_owned())
        };
        for (i, a) in el.attrs().iter().enumerate() {
            let name = match a.name.strip_prefix('{').and_then(|r| r.rsplit_once('}')) {
                Some((uri, local)) => {
                    let prefix = format!("q{depth}_{i}");
                    decls.push(self.decl(&format!("xmlns:{prefix}"), uri));
                    format!("{prefix}:{local}")
                }
                None => a.name.clone(),
            };
            items.push(self.attr(&name, &a.value));
        }
        for d in decls {
            let at = self.rng.below(items.len() + 1);
            items.insert(at, d);
        }
        self.out.push(b'<');
        self.out.extend_from_slice(qname.as_bytes());
        for item in items {
            self.ws(false);
            self.out.extend_from_slice(&item);
        }
        self.ws(true);
        let self_closing = el.nodes().is_empty() && !self.rng.one_in(4);
        if depth > self.max_depth && self.deep_end.is_none() {
            // Where the parser learns that it is too deep: the end of this start tag.
            let end_of_tag = self.out.len() + if self_closing { 2 } else { 1 };
            self.deep_end = Some(end_of_tag - self.base);
        }
        if self_closing {
            self.out.extend_from_slice(b"/>");
            return;
        }
        self.out.push(b'>');
        for node in el.nodes() {
            match node {
                Node::Element(child) => self.element(child, &child_default, depth + 1),
                Node::Text(t) => self.text(t),
            }
        }
        self.out.extend_from_slice(b"</");
        self.out.extend_from_slice(qname.as_bytes());
        self.ws(true);
        self.out.push(b'>');
    }

    fn decl(&mut self, name: &str, uri: &str) -> Vec<u8> {
        self.attr(name, uri)
    }

    fn attr(&mut self, name: &str, value: &str) -> Vec<u8> {
        let quote = if self.rng.one_in(2) { b'\'' } else { b'"' };
        let saved = std::mem::take(&mut self.out);
        self.out.extend_from_slice(name.as_bytes());
        self.ws(true);
        self.out.push(b'=');
        self.ws(true);
        self.attr_value(value, quote);
        std::mem::replace(&mut self.out, saved)
    }
}

/// A generated stream: its bytes, the stanzas in it, and where each stanza's bytes are.
struct GenStream {
    bytes: Vec<u8>,
    header_len: usize,
    stanzas: Vec<Element>,
    /// Per stanza: its byte range, and the offset (from its start) just past its first
    /// start tag deeper than `max_depth`, if any.
    spans: Vec<(std::ops::Range<usize>, Option<usize>)>,
    closed: bool,
}

fn gen_stream(rng: &mut Rng, max_depth: usize, max_stanzas: usize, stanza_depth: usize) -> GenStream {
    let mut w = Writer { rng, out: Vec::new(), max_depth, base: 0, deep_end: None };
    if w.rng.one_in(4) {
        w.out.extend_from_slice(b"\xEF\xBB\xBF");
    }
    match w.rng.below(3) {
        0 => {}
        1 => w.out.extend_from_slice(b"<?xml version='1.0'?>"),
        _ => w.out.extend_from_slice(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>"),
    }
    w.ws(true);
    let mut items = vec![
        w.attr("xmlns", NS_CLIENT),
        w.attr("xmlns:stream", NS_STREAM),
        w.attr("to", "example.org"),
        w.attr("version", "1.0"),
    ];
    if w.rng.one_in(2) {
        items.push(w.attr("xml:lang", "en"));
    }
    for i in (1..items.len()).rev() {
        items.swap(i, w.rng.below(i + 1));
    }
    w.out.extend_from_slice(b"<stream:stream");
    for item in items {
        w.ws(false);
        w.out.extend_from_slice(&item);
    }
    w.ws(true);
    w.out.push(b'>');
    let header_len = w.out.len();
    let mut stanzas = Vec::new();
    let mut spans = Vec::new();
    for _ in 0..w.rng.below(max_stanzas + 1) {
        if w.rng.one_in(3) {
            w.ws(false);
        }
        let depth = 1 + w.rng.below(stanza_depth);
        let el = gen_element(w.rng, depth);
        w.base = w.out.len();
        w.deep_end = None;
        w.element(&el, NS_CLIENT, 1);
        spans.push((w.base..w.out.len(), w.deep_end));
        stanzas.push(el);
    }
    let closed = w.rng.one_in(2);
    if closed {
        w.ws(true);
        w.out.extend_from_slice(b"</stream:stream");
        w.ws(true);
        w.out.push(b'>');
        if w.rng.one_in(2) {
            // Ignored: nothing after the close is parsed.
            w.out.extend_from_slice(b"<garbage & </ ");
        }
    }
    GenStream { bytes: w.out, header_len, stanzas, spans, closed }
}

/// Bytes biased towards XML syntax (or, sometimes, anything).
fn gen_bytes(rng: &mut Rng, max: usize) -> Vec<u8> {
    const TOKENS: &[&[u8]] = &[
        b"<",
        b">",
        b"/",
        b"</",
        b"/>",
        b"=",
        b"'",
        b"\"",
        b"&",
        b";",
        b":",
        b"?",
        b"!",
        b"[",
        b"]",
        b" ",
        b"\n",
        b"\r",
        b"\t",
        b"a",
        b"b",
        b"x",
        b"stream",
        b"stream:stream",
        b"xmlns",
        b"xmlns:p",
        b"p:",
        b"xml:lang",
        b"&amp;",
        b"&#x",
        b"&#",
        b"&lt;",
        b"<![CDATA[",
        b"]]>",
        b"<!--",
        b"-->",
        b"<?xml version='1.0'?>",
        b"<?",
        b"?>",
        b"<!DOCTYPE",
        b"<!ENTITY",
        b"\0",
        b"\x01",
        b"\xff",
        b"\xc3",
        b"\xa9",
        b"\xe6\x97",
        b"\xef\xbb\xbf",
        b"\xf0\x9f\x98\x80",
        b"'http://etherx.jabber.org/streams'",
        b"'jabber:client'",
        b"</stream:stream>",
    ];
    let target = rng.below(max + 1);
    let mut out = Vec::with_capacity(target + 16);
    let raw = rng.one_in(8);
    while out.len() < target {
        if raw {
            out.push(rng.next() as u8);
        } else {
            out.extend_from_slice(rng.pick::<&[u8]>(TOKENS));
        }
    }
    out
}

const HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' to='example.org' version='1.0'>";

/// Applies 1 to 4 random mutations.
fn mutate(rng: &mut Rng, doc: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let len = doc.len();
        let at = if len == 0 { 0 } else { rng.below(len + 1) };
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                doc[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                doc[i] = rng.next() as u8;
            }
            2 => {
                let extra = gen_bytes(rng, 12);
                doc.splice(at..at, extra);
            }
            3 if at < len => {
                let end = (at + 1 + rng.below(16)).min(len);
                doc.drain(at..end);
            }
            4 if at < len => {
                let end = (at + 1 + rng.below(64)).min(len);
                let copy = doc[at..end].to_vec();
                let to = rng.below(doc.len() + 1);
                doc.splice(to..to, copy);
            }
            5 => doc.truncate(at),
            _ => {
                let token: &[u8] = rng.pick::<&[u8]>(&[
                    &b"<!-- c -->"[..],
                    b"<?pi x?>",
                    b"<!DOCTYPE a>",
                    b"]]>",
                    b"&bogus;",
                    b"&#0;",
                    b"&#x110000;",
                    b"&#xD800;",
                    b"xmlns:p=''",
                    b" xmlns=''",
                    b" p:a='1'",
                    b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>",
                    b"</stream:stream>",
                    b"<a>",
                    b"</a>",
                    b"<![CDATA[",
                ]);
                doc.splice(at..at, token.iter().copied());
            }
        }
    }
}

// ---------------------------------------------------------------- properties

#[test]
fn fuzz_random_bytes() {
    run_cases("random_bytes", |rng| {
        let limits = random_limits(rng);
        let mut doc = if rng.one_in(2) { HEADER.to_vec() } else { Vec::new() };
        doc.extend(gen_bytes(rng, 600));
        let outcome = feed_all_ways(rng, limits, &doc, 3);
        check_stanzas_round_trip(&outcome);
    });
}

#[test]
fn fuzz_mutated_streams() {
    run_cases("mutated_streams", |rng| {
        let limits = random_limits(rng);
        let mut doc = gen_stream(rng, usize::MAX, 5, 6).bytes;
        mutate(rng, &mut doc);
        let outcome = feed_all_ways(rng, limits, &doc, 3);
        check_stanzas_round_trip(&outcome);
    });
}

#[test]
fn fuzz_valid_streams() {
    run_cases("valid_streams", |rng| {
        let limits = Limits::default();
        let s = gen_stream(rng, limits.max_depth, 6, 7);
        let outcome = feed_all_ways(rng, limits, &s.bytes, 4);
        assert_eq!(outcome.error, None, "valid stream refused: {:?}", show(&s.bytes));
        let mut events = outcome.events.iter();
        assert!(matches!(events.next(), Some(StreamEvent::Header(h)) if h.default_ns == NS_CLIENT
            && h.attr("to") == Some("example.org") && h.attr("version") == Some("1.0")));
        for want in &s.stanzas {
            match events.next() {
                Some(StreamEvent::Stanza(got)) => assert_eq!(got, want, "in {:?}", show(&s.bytes)),
                other => panic!("expected {want}, got {other:?} in {:?}", show(&s.bytes)),
            }
        }
        if s.closed {
            assert_eq!(events.next(), Some(&StreamEvent::Close));
        }
        assert_eq!(events.next(), None);
    });
}

#[test]
fn fuzz_limits() {
    run_cases("limits", |rng| {
        let max_depth = 1 + rng.below(6);
        let s = gen_stream(rng, max_depth, 6, 8);
        let sizes: Vec<usize> = s.spans.iter().map(|(r, _)| r.len()).collect();
        // Limits around the sizes generated, so that some stanzas pass and some fail;
        // never below `</stream:stream>`, which the stanza limit also covers.
        let max_stanza_bytes = if sizes.is_empty() {
            20 + rng.below(200)
        } else {
            (rng.pick(&sizes) + rng.below(9)).saturating_sub(4).max(20)
        };
        let max_header_bytes = if rng.one_in(5) { s.header_len - 1 } else { s.header_len + rng.below(3) };
        let limits = Limits { max_stanza_bytes, max_depth, max_header_bytes };
        let outcome = feed_all_ways(rng, limits, &s.bytes, 3);

        if s.header_len > max_header_bytes {
            assert_eq!(
                outcome,
                Outcome { events: vec![], error: Some(XmlError::HeaderTooLarge { limit: max_header_bytes }) }
            );
            return;
        }
        // The first stanza over a limit fails with the limit its bytes cross first.
        let first_bad = s.spans.iter().position(|(r, deep)| r.len() > max_stanza_bytes || deep.is_some());
        let ok_count = first_bad.unwrap_or(s.stanzas.len());
        let stanzas: Vec<&Element> = outcome
            .events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Stanza(el) => Some(el),
                _ => None,
            })
            .collect();
        assert_eq!(stanzas, s.stanzas[..ok_count].iter().collect::<Vec<_>>(), "in {:?}", show(&s.bytes));
        let want = first_bad.map(|i| match s.spans[i].1 {
            Some(deep_end) if deep_end <= max_stanza_bytes => XmlError::TooDeep { limit: max_depth },
            _ => XmlError::StanzaTooLarge { limit: max_stanza_bytes },
        });
        assert_eq!(outcome.error, want, "limits {limits:?}, spans {:?} in {:?}", s.spans, show(&s.bytes));
    });
}

#[test]
fn fuzz_round_trip() {
    run_cases("round_trip", |rng| {
        let depth = 1 + rng.below(8);
        let el = gen_element(rng, depth);
        let parent = *rng.pick(NAMESPACES);
        let bytes = el.to_bytes(parent);
        assert_eq!(Element::from_bytes(&bytes, parent), Ok(el.clone()), "{:?}", show(&bytes));
        assert!(depth_of(&el) <= 8);
        // And as a stanza of a stream, in pieces.
        let mut doc = HEADER.to_vec();
        doc.extend_from_slice(&el.to_bytes(NS_CLIENT));
        let outcome = feed_all_ways(rng, Limits::default(), &doc, 2);
        assert_eq!(outcome.error, None, "{:?}", show(&doc));
        assert_eq!(outcome.events.get(1), Some(&StreamEvent::Stanza(el)));
    });
}
