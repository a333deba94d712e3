//! Character-level helpers: XML character classes, names, reference decoding and
//! normalization of character data and attribute values.

use memchr::{memchr, memchr2};

use crate::error::{nwf, XmlError};

/// Longest entity/character reference name accepted between `&` and `;`.
pub(crate) const MAX_REF_LEN: usize = 32;

/// XML white space (S production).
#[inline]
pub(crate) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Is `c` allowed in an XML 1.0 document (Char production)?
#[inline]
pub(crate) fn is_xml_char(c: u32) -> bool {
    matches!(c, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

/// Reject characters that are valid UTF-8 but not allowed in XML 1.0: C0 controls other
/// than tab/newline/carriage return, and U+FFFE/U+FFFF. Surrogates and code points above
/// U+10FFFF are already impossible in valid UTF-8.
pub(crate) fn check_chars(bytes: &[u8]) -> Result<(), XmlError> {
    match first_bad_char(bytes) {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// The offset and error of the first character [`check_chars`] rejects. The first one,
/// not the first of a kind: character data is checked in pieces as it arrives, and the
/// error must not depend on where the pieces end.
pub(crate) fn first_bad_char(bytes: &[u8]) -> Option<(usize, XmlError)> {
    let control = bytes.iter().position(|&b| b < 0x20 && b != b'\t' && b != b'\n' && b != b'\r');
    let before = &bytes[..control.unwrap_or(bytes.len())];
    let mut i = 0;
    while let Some(off) = memchr(0xEF, &before[i..]) {
        let j = i + off;
        if before.get(j + 1) == Some(&0xBF) && matches!(before.get(j + 2), Some(0xBE | 0xBF)) {
            return Some((j, nwf("illegal character U+FFFE/U+FFFF")));
        }
        i = j + 1;
    }
    control.map(|at| (at, nwf("illegal control character")))
}

#[inline]
fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

#[inline]
fn is_name_char(b: u8) -> bool {
    is_name_start(b) || b.is_ascii_digit() || b == b'-' || b == b'.'
}

/// Is `s` an NCName (a name without colons)? Exact for ASCII; any non-ASCII is accepted.
pub(crate) fn is_ncname(s: &str) -> bool {
    let b = s.as_bytes();
    match b.first() {
        Some(&first) => is_name_start(first) && b[1..].iter().all(|&c| is_name_char(c)),
        None => false,
    }
}

/// Split a qualified name into `(prefix, local)`; the prefix is `""` when absent.
pub(crate) fn split_qname(q: &str) -> Result<(&str, &str), XmlError> {
    let (prefix, local) = match q.find(':') {
        Some(i) => (&q[..i], &q[i + 1..]),
        None => ("", q),
    };
    let prefix_ok = prefix.is_empty() && local.len() == q.len() || is_ncname(prefix);
    if !prefix_ok || !is_ncname(local) {
        return Err(XmlError::NotWellFormed(format!("invalid name '{q}'")));
    }
    Ok((prefix, local))
}

fn parse_num(digits: &str, radix: u32) -> Option<u32> {
    if digits.is_empty() {
        return None;
    }
    let mut v: u32 = 0;
    for c in digits.chars() {
        let d = c.to_digit(radix)?;
        v = v.checked_mul(radix)?.checked_add(d)?;
        if v > 0x10_FFFF {
            return None;
        }
    }
    Some(v)
}

/// Decode the reference `&name;` (given `name`) and append the character to `out`.
fn push_ref(name: &str, out: &mut String) -> Result<(), XmlError> {
    let c = match name {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "apos" => '\'',
        "quot" => '"',
        _ => {
            let num = if let Some(hex) = name.strip_prefix("#x") {
                parse_num(hex, 16)
            } else if let Some(dec) = name.strip_prefix('#') {
                parse_num(dec, 10)
            } else {
                return Err(XmlError::NotWellFormed(format!("unknown entity '&{name};'")));
            };
            match num.filter(|&n| is_xml_char(n)).and_then(char::from_u32) {
                Some(c) => c,
                None => return Err(XmlError::NotWellFormed(format!("invalid character reference '&{name};'"))),
            }
        }
    };
    out.push(c);
    Ok(())
}

/// Length of the reference name starting at `bytes[amp + 1]`, i.e. the offset of `;`
/// relative to `amp + 1`, searching at most [`MAX_REF_LEN`] bytes.
fn ref_end(bytes: &[u8], amp: usize) -> Result<usize, XmlError> {
    let start = amp + 1;
    let limit = (start + MAX_REF_LEN + 1).min(bytes.len());
    memchr(b';', &bytes[start..limit]).ok_or_else(|| nwf("invalid entity reference"))
}

/// Append character data to `out`, normalizing line endings (`\r\n` and lone `\r` become
/// `\n`) and, if `refs`, decoding entity and character references. `raw` must already be
/// validated UTF-8 text without markup.
pub(crate) fn decode_text(raw: &str, out: &mut String, refs: bool) -> Result<(), XmlError> {
    let bytes = raw.as_bytes();
    let mut last = 0;
    let mut i = 0;
    loop {
        let found = if refs { memchr2(b'&', b'\r', &bytes[i..]) } else { memchr(b'\r', &bytes[i..]) };
        let Some(off) = found else { break };
        let j = i + off;
        out.push_str(&raw[last..j]);
        if bytes[j] == b'&' {
            let len = ref_end(bytes, j)?;
            push_ref(&raw[j + 1..j + 1 + len], out)?;
            i = j + len + 2;
        } else {
            out.push('\n');
            i = j + 1;
            if bytes.get(i) == Some(&b'\n') {
                i += 1;
            }
        }
        last = i;
    }
    out.push_str(&raw[last..]);
    Ok(())
}

/// Decode and normalize an attribute value (XML 1.0 §3.3.3): references are decoded,
/// literal white space characters become spaces, `<` is an error.
pub(crate) fn decode_attr(raw: &str) -> Result<String, XmlError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut last = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'&' => {
                out.push_str(&raw[last..i]);
                let len = ref_end(bytes, i)?;
                push_ref(&raw[i + 1..i + 1 + len], &mut out)?;
                i += len + 2;
                last = i;
            }
            b'<' => return Err(nwf("'<' in attribute value")),
            b'\t' | b'\n' => {
                out.push_str(&raw[last..i]);
                out.push(' ');
                i += 1;
                last = i;
            }
            b'\r' => {
                out.push_str(&raw[last..i]);
                out.push(' ');
                i += 1;
                if bytes.get(i) == Some(&b'\n') {
                    i += 1;
                }
                last = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&raw[last..]);
    Ok(out)
}
