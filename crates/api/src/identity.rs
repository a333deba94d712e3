//! Mapping of external identities (DIDs) and local usernames to JID localparts.
//!
//! DID users and local accounts share one namespace of localparts, so the forms a DID
//! maps to are reserved: a local account can never be created under one
//! ([`validate_new_username`]), otherwise whoever registered it first would own that
//! DID user's JID, roster and archive. The reserved forms are exactly the images of
//! [`did_to_localpart`]: 24 characters of `a-z2-7` (`did:plc`) and anything starting
//! with `web-` (`did:web`).
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
    /// A `did:plc` identifier that is not 24 characters of base32 (`a-z2-7`).
    #[error("not a did:plc identifier (24 characters of a-z, 2-7)")]
    InvalidPlcIdentifier,
    /// A local username of a form reserved for DID users (see the module docs).
    #[error("reserved for DID identities (24 characters of a-z2-7, or starting with \"web-\")")]
    ReservedForDid,
}

/// Length of a `did:plc` identifier (the did:plc specification: the first 24 characters
/// of a base32-encoded SHA-256 digest).
pub const PLC_IDENTIFIER_LEN: usize = 24;

/// Prefix of every `did:web` localpart.
pub const WEB_PREFIX: &str = "web-";

/// DID → JID localpart.
///
/// - `did:plc:<id>` → `<id>` lowercased, where `<id>` must be 24 characters of base32
///   `a-z2-7` (what did:plc identifiers are), so it can never collide with a `did:web`
///   mapping, which always starts with `web-`;
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
            if !is_plc_form(&id) {
                return Err(IdentityError::InvalidPlcIdentifier);
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

/// Validates a username for a new local account: [`validate_username`], and not one of
/// the forms reserved for DID users ([`is_did_localpart`]). Every account-creation path
/// (HTTP and in-band registration) goes through this.
pub fn validate_new_username(s: &str) -> Result<String, IdentityError> {
    let name = validate_username(s)?;
    if is_did_localpart(&name) {
        return Err(IdentityError::ReservedForDid);
    }
    Ok(name)
}

/// Whether a (lowercase) localpart is of a form [`did_to_localpart`] can produce.
pub fn is_did_localpart(localpart: &str) -> bool {
    localpart.starts_with(WEB_PREFIX) || is_plc_form(localpart)
}

fn is_plc_form(s: &str) -> bool {
    s.len() == PLC_IDENTIFIER_LEN && s.bytes().all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
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
        assert_eq!(did_to_localpart("did:plc:ewvi7nxzyoun6zhxrhs64oiz"), Ok("ewvi7nxzyoun6zhxrhs64oiz".into()));
        assert_eq!(did_to_localpart("did:plc:EWVI7NXZYOUN6ZHXRHS64OIZ"), Ok("ewvi7nxzyoun6zhxrhs64oiz".into()));
        assert_eq!(
            did_to_jid("did:plc:ewvi7nxzyoun6zhxrhs64oiz", "example.org"),
            Ok("ewvi7nxzyoun6zhxrhs64oiz@example.org".into())
        );
        // Not did:plc identifiers: wrong length, or digits outside base32.
        assert_eq!(did_to_localpart("did:plc:abc123"), Err(IdentityError::InvalidPlcIdentifier));
        assert_eq!(did_to_localpart("did:plc:ewvi7nxzyoun6zhxrhs64oi"), Err(IdentityError::InvalidPlcIdentifier));
        assert_eq!(did_to_localpart("did:plc:ewvi7nxzyoun6zhxrhs64oiz2"), Err(IdentityError::InvalidPlcIdentifier));
        assert_eq!(did_to_localpart("did:plc:ewvi7nxzyoun6zhxrhs64oi1"), Err(IdentityError::InvalidPlcIdentifier));
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
        // "web-" + 60 = 64 bytes is fine, one more is not.
        assert!(did_to_localpart(&format!("did:web:{}", "a".repeat(60))).is_ok());
        assert_eq!(did_to_localpart(&format!("did:web:{}", "a".repeat(61))), Err(IdentityError::TooLong));
        assert_eq!(did_to_jid("did:plc:ewvi7nxzyoun6zhxrhs64oiz", ""), Err(IdentityError::EmptyDomain));
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

    #[test]
    fn did_forms_are_reserved_for_new_accounts() {
        // Every localpart a DID maps to is refused as a new local username...
        for did in ["did:plc:ewvi7nxzyoun6zhxrhs64oiz", "did:web:a.b", "did:web:example.com%3A8080"] {
            let local = did_to_localpart(did).unwrap_or_else(|e| panic!("{did}: {e}"));
            assert!(is_did_localpart(&local), "{local}");
            assert_eq!(validate_new_username(&local), Err(IdentityError::ReservedForDid), "{local}");
            // ... in any case (usernames are lowercased first).
            assert_eq!(validate_new_username(&local.to_ascii_uppercase()), Err(IdentityError::ReservedForDid));
        }
        assert_eq!(validate_new_username("web-anything"), Err(IdentityError::ReservedForDid));
        // Near misses stay available to local users.
        for name in ["alice", "web", "webmaster", "web_a", "ewvi7nxzyoun6zhxrhs64oi", "ewvi7nxzyoun6zhxrhs64oiz2"] {
            assert_eq!(validate_new_username(name), Ok(name.to_owned()), "{name}");
        }
        // 24 characters with a digit outside base32 cannot be a did:plc identifier.
        assert_eq!(validate_new_username("ewvi7nxzyoun6zhxrhs64oi1"), Ok("ewvi7nxzyoun6zhxrhs64oi1".into()));
        // Logins and references to existing users are not affected.
        assert_eq!(validate_username("web-a-b"), Ok("web-a-b".into()));
    }
}
