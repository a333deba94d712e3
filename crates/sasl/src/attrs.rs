//! Shared pieces of the SCRAM message grammar (RFC 5802 §7).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::SaslError;

/// Splits `x=value` into its one-letter name and value.
pub(crate) fn split_attr(part: &str) -> Result<(u8, &str), SaslError> {
    let bytes = part.as_bytes();
    match (bytes.first(), bytes.get(1), part.get(2..)) {
        (Some(&name), Some(b'='), Some(value)) if name.is_ascii_alphabetic() => Ok((name, value)),
        _ => Err(SaslError::Malformed("invalid attribute")),
    }
}

/// Expects the attribute `name` next in `parts`.
pub(crate) fn expect_attr<'a>(
    parts: &mut impl Iterator<Item = &'a str>,
    name: u8,
    missing: &'static str,
) -> Result<&'a str, SaslError> {
    let part = parts.next().ok_or(SaslError::Malformed(missing))?;
    match split_attr(part)? {
        (b'm', _) => Err(SaslError::Malformed("mandatory extensions are not supported")),
        (n, value) if n == name => Ok(value),
        _ => Err(SaslError::Malformed(missing)),
    }
}

/// Checks that the remaining parts are well-formed extension attributes (which are then
/// ignored, as RFC 5802 requires for unknown ones).
pub(crate) fn check_extensions<'a>(parts: impl Iterator<Item = &'a str>) -> Result<(), SaslError> {
    for part in parts {
        split_attr(part)?;
    }
    Ok(())
}

/// Decodes a `saslname`: `=2C` is `,`, `=3D` is `=`; any other `=`, a bare `,` or a NUL
/// is an error, as is an empty name.
pub(crate) fn decode_saslname(s: &str) -> Result<String, SaslError> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '=' => match (chars.next(), chars.next()) {
                (Some('2'), Some('C')) => out.push(','),
                (Some('3'), Some('D')) => out.push('='),
                _ => return Err(SaslError::Malformed("invalid escape in saslname")),
            },
            ',' | '\0' => return Err(SaslError::Malformed("invalid character in saslname")),
            c => out.push(c),
        }
    }
    if out.is_empty() {
        return Err(SaslError::Malformed("empty saslname"));
    }
    Ok(out)
}

/// Encodes a `saslname` (inverse of [`decode_saslname`]).
pub(crate) fn encode_saslname(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            ',' => out.push_str("=2C"),
            '=' => out.push_str("=3D"),
            c => out.push(c),
        }
    }
    out
}

/// `printable` from RFC 5802: `%x21-2B / %x2D-7E`, at least one character.
pub(crate) fn valid_nonce(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7E).contains(&b) && b != b',')
}

pub(crate) fn b64_decode(s: &str) -> Result<Vec<u8>, SaslError> {
    match STANDARD.decode(s) {
        Ok(bytes) if !bytes.is_empty() => Ok(bytes),
        Ok(_) => Err(SaslError::Malformed("empty base64 value")),
        Err(_) => Err(SaslError::Malformed("invalid base64")),
    }
}

pub(crate) fn b64_encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// A fresh random nonce: 24 random bytes, base64-encoded (always `printable`).
pub(crate) fn random_nonce() -> String {
    let mut bytes = [0u8; 24];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
    b64_encode(&bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn saslname_round_trip() {
        for name in ["user", "a,b", "a=b", "=2C", ",=,=", "jürgen"] {
            let enc = encode_saslname(name);
            assert!(!enc.contains(','));
            assert_eq!(decode_saslname(&enc).unwrap(), name);
        }
        assert_eq!(encode_saslname("a,b=c"), "a=2Cb=3Dc");
    }

    #[test]
    fn saslname_rejects_bad_escapes() {
        for bad in ["a=", "a=2", "a=2c", "a=3d", "=41", "a,b", "", "a\0b"] {
            assert!(matches!(decode_saslname(bad), Err(SaslError::Malformed(_))), "{bad:?}");
        }
    }

    #[test]
    fn attributes() {
        assert_eq!(split_attr("r=abc").unwrap(), (b'r', "abc"));
        assert_eq!(split_attr("r=").unwrap(), (b'r', ""));
        for bad in ["", "r", "rr=x", "1=x", "=x", "é=x"] {
            assert!(split_attr(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nonces() {
        assert!(valid_nonce("fyko+d2lbbFgONRv9qkxdawL"));
        assert!(valid_nonce("%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"));
        assert!(!valid_nonce(""));
        assert!(!valid_nonce("a b"));
        assert!(!valid_nonce("a,b"));
        assert!(!valid_nonce("é"));
        let n = random_nonce();
        assert!(valid_nonce(&n));
        assert_ne!(n, random_nonce());
    }
}
