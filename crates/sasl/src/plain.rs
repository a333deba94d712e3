use std::fmt;

use crate::SaslError;

/// A parsed PLAIN message (RFC 4616). Holds the clear password only for as long as the
/// caller needs to check it; its `Debug` output redacts the password.
#[derive(Clone, PartialEq, Eq)]
pub struct PlainCredentials {
    /// Requested authorization identity; `None` when empty.
    pub authzid: Option<String>,
    /// Authentication identity, as sent (not normalized).
    pub authcid: String,
    /// Password, as sent (SASLprep is applied when it is verified).
    pub password: String,
}

impl fmt::Debug for PlainCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainCredentials")
            .field("authzid", &self.authzid)
            .field("authcid", &self.authcid)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Parses an RFC 4616 message: `[authzid] NUL authcid NUL passwd`, UTF-8, exactly two
/// NULs, non-empty authcid and password. An empty authzid gives `None`.
pub fn parse_plain(msg: &[u8]) -> Result<PlainCredentials, SaslError> {
    let text = std::str::from_utf8(msg).map_err(|_| SaslError::Malformed("PLAIN message is not UTF-8"))?;
    let mut parts = text.split('\0');
    let (Some(authzid), Some(authcid), Some(password), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed("PLAIN message must contain exactly two NUL separators"));
    };
    if authcid.is_empty() {
        return Err(SaslError::Malformed("empty PLAIN authentication identity"));
    }
    if password.is_empty() {
        return Err(SaslError::Malformed("empty PLAIN password"));
    }
    Ok(PlainCredentials {
        authzid: (!authzid.is_empty()).then(|| authzid.to_owned()),
        authcid: authcid.to_owned(),
        password: password.to_owned(),
    })
}
