//! Mapping of external identities (DIDs) and local usernames to JID localparts.
//!
//! Every function here is pure: no I/O, no storage lookups. Results only ever contain
//! `a-z 0-9 - . _`, so they are valid JID localparts (RFC 7622) without further
//! preparation.

/// Longest localpart this server hands out, in bytes.
pub const MAX_LOCALPART_BYTES: usize = 64;

/// Why an identifier cannot be turned into a localpart.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The input is empty (or the DID has an empty method-specific identifier).
    #[error("must not be empty")]
    Empty,
    /// The input is not of the form `did:<method>:<identifier>`.
    #[error("not a DID (expected did:<method>:<identifier>)")]
    NotADid,
    /// A DID method other than `plc` and `web`.
    #[error("unsupported DID method {0:?} (only plc and web)")]
    UnsupportedMethod(String),
    /// A `did:web` identifier with an empty host label or path segment.
    #[error("empty label in did:web identifier")]
    EmptyLabel,
    /// A malformed percent-escape, or escapes that do not decode to UTF-8.
    #[error("invalid percent-encoding")]
    InvalidEncoding,
    /// A character outside `a-z 0-9 - . _` (after lowercasing).
    #[error("invalid character {0:?} (allowed: a-z, 0-9, '-', '.', '_')")]
    InvalidCharacter(char),
    /// Usernames must start with a letter or a digit.
    #[error("must start with a letter or a digit")]
    InvalidStart,
    /// Longer than [`MAX_LOCALPART_BYTES`].
    #[error("longer than {MAX_LOCALPART_BYTES} bytes")]
    TooLong,
    /// `did_to_jid` was given an empty domain.
    #[error("empty domain")]
    EmptyDomain,
}

/// DID → JID localpart.
///
/// - `did:plc:abc123` → `abc123` (the identifier, lowercased; only `a-z0-9` accepted,
///   so it can never collide with a `did:web` mapping, which always contains `-`);
/// - `did:web:example.com` → `web-example-com`: the identifier is percent-decoded, then
///   every `.` and `:` becomes `-` (`did:web:example.com%3A8080` → `web-example-com-8080`,
///   path segments `did:web:example.com:u:alice` → `web-example-com-u-alice`), lowercased.
///
/// The result must be non-empty, at most 64 bytes and only contain `a-z 0-9 - . _`.
/// Note that the `did:web` mapping is not injective (`a-b.com` and `a.b-com` both give
/// `web-a-b-com`).
pub fn did_to_localpart(did: &str) -> Result<String, IdentityError> {
    let rest = did.strip_prefix("did:").ok_or(IdentityError::NotADid)?;
    let (method, id) = rest.split_once(':').ok_or(IdentityError::NotADid)?;
    if id.is_empty() {
        return Err(IdentityError::Empty);
    }
    let local = match method {
        "plc" => {
            let id = id.to_ascii_lowercase();
            if let Some(c) = id.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit())) {
                return Err(IdentityError::InvalidCharacter(c));
            }
            id
        }
        "web" => {
            let decoded = percent_decode(id)?;
            let mut out = String::from("web");
            for label in decoded.split([':', '.']) {
                if label.is_empty() {
                    return Err(IdentityError::EmptyLabel);
                }
                out.push('-');
                out.push_str(&label.to_ascii_lowercase());
            }
            out
        }
        "" => return Err(IdentityError::NotADid),
        other => return Err(IdentityError::UnsupportedMethod(other.to_owned())),
    };
    check_localpart(&local)?;
    Ok(local)
}

/// DID → bare JID `localpart@domain` (see [`did_to_localpart`]).
pub fn did_to_jid(did: &str, domain: &str) -> Result<String, IdentityError> {
    if domain.is_empty() {
        return Err(IdentityError::EmptyDomain);
    }
    Ok(format!("{}@{domain}", did_to_localpart(did)?))
}

/// Validates a local username for account creation: 1..=64 bytes of `[a-z0-9._-]`
/// (ASCII letters are accepted in either case), starting with a letter or a digit.
/// Returns the normalized (lowercased) form.
pub fn validate_username(s: &str) -> Result<String, IdentityError> {
    if s.is_empty() {
        return Err(IdentityError::Empty);
    }
    let lower = s.to_ascii_lowercase();
    check_localpart(&lower)?;
    if !lower.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(IdentityError::InvalidStart);
    }
    Ok(lower)
}

fn allowed(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_')
}

fn check_localpart(s: &str) -> Result<(), IdentityError> {
    if s.is_empty() {
        return Err(IdentityError::Empty);
    }
    if let Some(c) = s.chars().find(|&c| !allowed(c)) {
        return Err(IdentityError::InvalidCharacter(c));
    }
    if s.len() > MAX_LOCALPART_BYTES {
        return Err(IdentityError::TooLong);
    }
    Ok(())
}

fn percent_decode(s: &str) -> Result<String, IdentityError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(IdentityError::InvalidEncoding)?;
            let hex = std::str::from_utf8(hex).map_err(|_| IdentityError::InvalidEncoding)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(IdentityError::InvalidEncoding);
            }
            out.push(u8::from_str_radix(hex, 16).map_err(|_| IdentityError::InvalidEncoding)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| IdentityError::InvalidEncoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn did_plc() {
        assert_eq!(did_to_localpart("did:plc:abc123"), Ok("abc123".into()));
        assert_eq!(did_to_localpart("did:plc:ewvi7nxzyoun6zhxrhs64oiz"), Ok("ewvi7nxzyoun6zhxrhs64oiz".into()));
        assert_eq!(did_to_localpart("did:plc:ABC123"), Ok("abc123".into()));
        assert_eq!(did_to_jid("did:plc:abc123", "example.org"), Ok("abc123@example.org".into()));
    }

    #[test]
    fn did_web() {
        assert_eq!(did_to_localpart("did:web:example.com"), Ok("web-example-com".into()));
        assert_eq!(did_to_localpart("did:web:Example.COM"), Ok("web-example-com".into()));
        assert_eq!(did_to_localpart("did:web:example.com%3A8080"), Ok("web-example-com-8080".into()));
        assert_eq!(did_to_localpart("did:web:example.com%3a8080"), Ok("web-example-com-8080".into()));
        assert_eq!(did_to_localpart("did:web:example.com:user:alice"), Ok("web-example-com-user-alice".into()));
        assert_eq!(did_to_localpart("did:web:my_host.example"), Ok("web-my_host-example".into()));
        assert_eq!(
            did_to_jid("did:web:example.com%3A8080", "chat.example"),
            Ok("web-example-com-8080@chat.example".into())
        );
    }

    #[test]
    fn invalid_dids() {
        assert_eq!(did_to_localpart(""), Err(IdentityError::NotADid));
        assert_eq!(did_to_localpart("abc123"), Err(IdentityError::NotADid));
        assert_eq!(did_to_localpart("did:plc"), Err(IdentityError::NotADid));
        assert_eq!(did_to_localpart("did::abc"), Err(IdentityError::NotADid));
        assert_eq!(did_to_localpart("DID:plc:abc"), Err(IdentityError::NotADid));
        assert_eq!(did_to_localpart("did:plc:"), Err(IdentityError::Empty));
        assert_eq!(did_to_localpart("did:web:"), Err(IdentityError::Empty));
        assert_eq!(did_to_localpart("did:key:z6Mk"), Err(IdentityError::UnsupportedMethod("key".into())));
        assert_eq!(did_to_localpart("did:plc:abc-123"), Err(IdentityError::InvalidCharacter('-')));
        assert_eq!(did_to_localpart("did:plc:ab c"), Err(IdentityError::InvalidCharacter(' ')));
        assert_eq!(did_to_localpart("did:plc:abé"), Err(IdentityError::InvalidCharacter('é')));
        assert_eq!(did_to_localpart("did:plc:ab@c"), Err(IdentityError::InvalidCharacter('@')));
        assert_eq!(did_to_localpart("did:web:exa mple.com"), Err(IdentityError::InvalidCharacter(' ')));
        assert_eq!(did_to_localpart("did:web:example.com%2Fx"), Err(IdentityError::InvalidCharacter('/')));
        assert_eq!(did_to_localpart("did:web:example.com%3"), Err(IdentityError::InvalidEncoding));
        assert_eq!(did_to_localpart("did:web:example.com%zz80"), Err(IdentityError::InvalidEncoding));
        assert_eq!(did_to_localpart("did:web:example.com%ff"), Err(IdentityError::InvalidEncoding));
        assert_eq!(did_to_localpart("did:web:example..com"), Err(IdentityError::EmptyLabel));
        assert_eq!(did_to_localpart("did:web:.example.com"), Err(IdentityError::EmptyLabel));
        assert_eq!(did_to_localpart("did:web:example.com:"), Err(IdentityError::EmptyLabel));
        assert_eq!(did_to_localpart("did:web:example.com%3A"), Err(IdentityError::EmptyLabel));
        let long = format!("did:plc:{}", "a".repeat(65));
        assert_eq!(did_to_localpart(&long), Err(IdentityError::TooLong));
        assert_eq!(did_to_localpart(&format!("did:plc:{}", "a".repeat(64))).map(|s| s.len()), Ok(64));
        // "web-" + 60 = 64 bytes is fine, one more is not.
        assert!(did_to_localpart(&format!("did:web:{}", "a".repeat(60))).is_ok());
        assert_eq!(did_to_localpart(&format!("did:web:{}", "a".repeat(61))), Err(IdentityError::TooLong));
        assert_eq!(did_to_jid("did:plc:abc", ""), Err(IdentityError::EmptyDomain));
        assert_eq!(did_to_jid("did:x", "example.org"), Err(IdentityError::NotADid));
    }

    #[test]
    fn usernames() {
        assert_eq!(validate_username("alice"), Ok("alice".into()));
        assert_eq!(validate_username("Alice.Smith_2-x"), Ok("alice.smith_2-x".into()));
        assert_eq!(validate_username("7up"), Ok("7up".into()));
        assert_eq!(validate_username(&"a".repeat(64)).map(|s| s.len()), Ok(64));
        assert_eq!(validate_username(&"a".repeat(65)), Err(IdentityError::TooLong));
        assert_eq!(validate_username(""), Err(IdentityError::Empty));
        assert_eq!(validate_username("-alice"), Err(IdentityError::InvalidStart));
        assert_eq!(validate_username(".alice"), Err(IdentityError::InvalidStart));
        assert_eq!(validate_username("_alice"), Err(IdentityError::InvalidStart));
        assert_eq!(validate_username("al ice"), Err(IdentityError::InvalidCharacter(' ')));
        assert_eq!(validate_username("alice@example.com"), Err(IdentityError::InvalidCharacter('@')));
        assert_eq!(validate_username("alice/res"), Err(IdentityError::InvalidCharacter('/')));
        assert_eq!(validate_username("alïce"), Err(IdentityError::InvalidCharacter('ï')));
        assert_eq!(validate_username("ALICE"), Ok("alice".into()));
    }
}
