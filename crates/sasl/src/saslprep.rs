//! A minimal SASLprep (RFC 4013) for passwords.
//!
//! Implemented: the mapping step (RFC 3454 table C.1.2 non-ASCII spaces become U+0020,
//! table B.1 "commonly mapped to nothing" characters are removed) and the prohibited
//! output check (tables C.1.2, C.2.1, C.2.2, C.3, C.4, C.5, C.6, C.7, C.8 and C.9).
//!
//! Not implemented, by design:
//! - NFKC normalization. A client that normalizes will derive a different key for a
//!   password containing compatibility characters (full-width forms, ligatures,
//!   superscripts, decomposed sequences, ...). ASCII passwords and ordinary precomposed
//!   text are unaffected.
//! - The bidirectional-text rules (RFC 3454 §6) and the unassigned code point check,
//!   both of which need the full Unicode character database.

use crate::SaslError;

/// RFC 3454 table B.1: commonly mapped to nothing.
fn mapped_to_nothing(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{1806}'
            | '\u{180B}'..='\u{180D}'
            | '\u{200B}'..='\u{200D}'
            | '\u{2060}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
    )
}

/// RFC 3454 table C.1.2: non-ASCII space characters. (U+200B is also in table B.1 and
/// is removed by the mapping step before this one applies.)
fn non_ascii_space(c: char) -> bool {
    matches!(c, '\u{00A0}' | '\u{1680}' | '\u{2000}'..='\u{200B}' | '\u{202F}' | '\u{205F}' | '\u{3000}')
}

/// Prohibited output (RFC 4013 §2.3), with the reason reported in the error.
fn prohibited(c: char) -> Option<&'static str> {
    let cp = u32::from(c);
    if non_ascii_space(c) {
        return Some("non-ASCII space");
    }
    if cp < 0x20 || cp == 0x7F {
        return Some("ASCII control character");
    }
    if matches!(
        c,
        '\u{0080}'..='\u{009F}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{180E}'
            | '\u{200C}'
            | '\u{200D}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{2060}'..='\u{2063}'
            | '\u{206A}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFC}'
            | '\u{1D173}'..='\u{1D17A}'
    ) {
        return Some("non-ASCII control character");
    }
    if matches!(c, '\u{E000}'..='\u{F8FF}' | '\u{F0000}'..='\u{FFFFD}' | '\u{100000}'..='\u{10FFFD}') {
        return Some("private use character");
    }
    if matches!(c, '\u{FDD0}'..='\u{FDEF}') || cp & 0xFFFE == 0xFFFE {
        return Some("non-character code point");
    }
    // Table C.5 (surrogates) cannot occur in a Rust `str`.
    if matches!(c, '\u{FFF9}'..='\u{FFFD}') {
        return Some("character inappropriate for plain text");
    }
    if matches!(c, '\u{2FF0}'..='\u{2FFB}') {
        return Some("character inappropriate for canonical representation");
    }
    if matches!(c, '\u{0340}' | '\u{0341}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{206A}'..='\u{206F}')
    {
        return Some("display property or deprecated character");
    }
    if matches!(c, '\u{E0001}' | '\u{E0020}'..='\u{E007F}') {
        return Some("tagging character");
    }
    None
}

/// Applies the minimal SASLprep described in the module docs (mapping and prohibited
/// output; no NFKC, no bidi or unassigned checks). Errors are
/// [`SaslError::InvalidPassword`] naming the offending character class. An empty input
/// (or one that maps to nothing) yields an empty string; callers decide whether that is
/// acceptable.
pub fn saslprep(input: &str) -> Result<String, SaslError> {
    if input.bytes().all(|b| (0x20..0x7F).contains(&b)) {
        return Ok(input.to_owned());
    }
    let mut out = String::with_capacity(input.len());
    for c in input.chars() {
        if mapped_to_nothing(c) {
            continue;
        }
        let c = if non_ascii_space(c) { ' ' } else { c };
        if let Some(reason) = prohibited(c) {
            return Err(SaslError::InvalidPassword(reason));
        }
        out.push(c);
    }
    Ok(out)
}

/// SASLprep for a password that is about to be used as key material: also rejects an
/// empty result.
pub(crate) fn prep_password(password: &str) -> Result<String, SaslError> {
    let prepped = saslprep(password)?;
    if prepped.is_empty() {
        return Err(SaslError::InvalidPassword("empty password"));
    }
    Ok(prepped)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ascii_is_unchanged() {
        assert_eq!(saslprep("pencil").unwrap(), "pencil");
        assert_eq!(saslprep("I ix ~!@#$%^&*()_+").unwrap(), "I ix ~!@#$%^&*()_+");
        assert_eq!(saslprep("").unwrap(), "");
    }

    #[test]
    fn rfc4013_examples_that_do_not_need_nfkc() {
        // RFC 4013 §3: SOFT HYPHEN mapped to nothing.
        assert_eq!(saslprep("I\u{00AD}X").unwrap(), "IX");
        assert_eq!(saslprep("user").unwrap(), "user");
        assert_eq!(saslprep("USER").unwrap(), "USER");
        // Control character prohibited.
        assert_eq!(saslprep("\u{0007}"), Err(SaslError::InvalidPassword("ASCII control character")));
    }

    #[test]
    fn non_ascii_spaces_become_space() {
        assert_eq!(saslprep("a\u{00A0}b\u{3000}c\u{2002}d").unwrap(), "a b c d");
        assert_eq!(saslprep("a\u{1680}\u{202F}\u{205F}b").unwrap(), "a   b");
    }

    #[test]
    fn commonly_mapped_to_nothing_is_removed() {
        assert_eq!(
            saslprep("p\u{200B}a\u{200C}s\u{200D}s\u{2060}\u{FEFF}\u{FE0F}\u{034F}\u{1806}\u{180C}").unwrap(),
            "pass"
        );
        assert_eq!(saslprep("\u{00AD}").unwrap(), "");
        assert_eq!(prep_password("\u{00AD}\u{200B}"), Err(SaslError::InvalidPassword("empty password")));
    }

    #[test]
    fn prohibited_output_is_rejected() {
        for (s, reason) in [
            ("a\u{0000}b", "ASCII control character"),
            ("a\tb", "ASCII control character"),
            ("a\u{007F}", "ASCII control character"),
            ("\u{0085}", "non-ASCII control character"),
            ("\u{2028}", "non-ASCII control character"),
            ("\u{1D175}", "non-ASCII control character"),
            ("\u{E000}", "private use character"),
            ("\u{10FFFD}", "private use character"),
            ("\u{FDD0}", "non-character code point"),
            ("\u{1FFFF}", "non-character code point"),
            ("\u{FFFD}", "character inappropriate for plain text"),
            ("\u{2FF5}", "character inappropriate for canonical representation"),
            ("\u{200E}", "display property or deprecated character"),
            ("\u{202E}", "display property or deprecated character"),
            ("\u{E0041}", "tagging character"),
        ] {
            assert_eq!(saslprep(s), Err(SaslError::InvalidPassword(reason)), "{s:?}");
        }
    }

    #[test]
    fn ordinary_unicode_is_kept() {
        assert_eq!(saslprep("pässwörd").unwrap(), "pässwörd");
        assert_eq!(saslprep("пароль😀").unwrap(), "пароль😀");
        // No NFKC: compatibility characters are kept as they are.
        assert_eq!(saslprep("\u{FB01}").unwrap(), "\u{FB01}");
    }
}
