//! Presence helpers (RFC 6121 §4.7).

use crate::roster::RosterError;

/// Parses the character data of a presence `<priority/>` element
/// (RFC 6121 §4.7.2.3).
///
/// * `None` (no `<priority/>` element) → `0`, the default;
/// * an integer in `-128..=127`, optionally signed and surrounded by XML
///   whitespace (the schema type is `xs:byte`) → that value;
/// * anything else (empty, not a number, out of range) →
///   [`RosterError::BadRequest`] (`bad-request`).
pub fn parse_priority(text: Option<&str>) -> Result<i8, RosterError> {
    let Some(raw) = text else {
        return Ok(0);
    };
    let trimmed = raw.trim_matches(|c| matches!(c, ' ' | '\t' | '\r' | '\n'));
    trimmed.parse::<i8>().map_err(|_| {
        RosterError::BadRequest(format!("presence priority must be an integer between -128 and 127, got {raw:?}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_priority_defaults_to_zero() {
        assert_eq!(parse_priority(None), Ok(0));
    }

    #[test]
    fn valid_priorities() {
        for (text, value) in [
            ("0", 0),
            ("1", 1),
            ("5", 5),
            ("-1", -1),
            ("+7", 7),
            ("127", 127),
            ("-128", -128),
            ("007", 7),
            (" 42\n", 42),
            ("\t-3 ", -3),
        ] {
            assert_eq!(parse_priority(Some(text)), Ok(value), "{text:?}");
        }
    }

    #[test]
    fn invalid_priorities() {
        for text in ["", " ", "128", "-129", "1000", "abc", "1.5", "1e2", "0x10", "- 1", "1 2", "++1"] {
            let err = parse_priority(Some(text));
            assert!(matches!(err, Err(RosterError::BadRequest(_))), "{text:?} → {err:?}");
            assert_eq!(err.map_err(|e| e.condition()), Err("bad-request"));
        }
    }
}
