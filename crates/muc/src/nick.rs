//! Nickname comparison: when two nicknames are "the same" for the room.
//!
//! Nicknames reach the room as the resourceprepped resource of the occupant JID (the
//! `jid` crate applies RFC 3920 resourceprep, which already NFKC-normalizes and so maps
//! fullwidth forms to their ASCII counterparts, but keeps case). Occupants are still keyed
//! by the nickname as given; this module decides which nicknames collide.
//!
//! [`key`] is the comparison subset of the RFC 8266 (formerly RFC 7700) PRECIS Nickname
//! profile, §2.2-§2.4: non-ASCII spaces map to U+0020, leading and trailing spaces go,
//! runs of spaces collapse to one; Unicode `toLowerCase`; NFKC (which covers width
//! mapping). The steps are repeated until the result is stable (at most a few rounds), as
//! RFC 8266 §2.4 asks for idempotence. Not applied: the PRECIS FreeformClass code point
//! checks (resourceprep already refused what XMPP forbids in a resource) and the
//! directionality rule (the profile itself has none).
//!
//! [`skeleton`] goes one step further against look-alikes, cheaply: [`HOMOGLYPHS`] maps
//! a small table of Cyrillic and Greek letters that look like Latin ones to those Latin
//! letters (before and after case mapping, so uppercase look-alikes such as Cyrillic `В`
//! for `B` are caught too). Two nicknames with equal skeletons collide. This covers the
//! common single-script swaps (`аlice` with a Cyrillic `а` against `alice`). It does not
//! cover the full Unicode confusables data (UTS #39): no digit/letter swaps (`0`/`O`,
//! `1`/`l`), no other scripts (Armenian, Cherokee, mathematical letters beyond what NFKC
//! folds), no combining-mark tricks beyond what NFKC composes, and no invisible
//! characters other than the spaces above.

use unicode_normalization::UnicodeNormalization;

/// The RFC 8266 comparison form of `nick` (see the module documentation).
pub fn key(nick: &str) -> String {
    let mut current = round(nick);
    // NFKC then lowercase can produce a string that a second round changes (RFC 8266
    // §2.4); three rounds reach the fixed point for every input we know of.
    for _ in 0..3 {
        let next = round(&current);
        if next == current {
            break;
        }
        current = next;
    }
    current
}

fn round(s: &str) -> String {
    let spaced = map_spaces(s);
    spaced.to_lowercase().nfkc().collect()
}

/// RFC 8266 §2.2 additional mapping rule: every Unicode space separator (`Zs`) becomes
/// U+0020, leading and trailing spaces are removed, runs collapse to one.
fn map_spaces(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    for c in s.chars() {
        if is_space_separator(c) {
            pending_space = !out.is_empty();
        } else {
            if pending_space {
                out.push(' ');
                pending_space = false;
            }
            out.push(c);
        }
    }
    out
}

/// The Unicode general category `Zs` (Unicode 15).
fn is_space_separator(c: char) -> bool {
    matches!(c, ' ' | '\u{A0}' | '\u{1680}' | '\u{2000}'..='\u{200A}' | '\u{202F}' | '\u{205F}' | '\u{3000}')
}

/// Look-alikes of Latin letters: (look-alike, Latin letter). Cyrillic then Greek,
/// uppercase then lowercase. Only letters that are near-identical in common fonts.
pub const HOMOGLYPHS: &[(char, char)] = &[
    // Cyrillic uppercase
    ('А', 'A'),
    ('В', 'B'),
    ('Е', 'E'),
    ('К', 'K'),
    ('М', 'M'),
    ('Н', 'H'),
    ('О', 'O'),
    ('Р', 'P'),
    ('С', 'C'),
    ('Т', 'T'),
    ('Х', 'X'),
    ('Ѕ', 'S'),
    ('І', 'I'),
    ('Ј', 'J'),
    ('Ү', 'Y'),
    // Cyrillic lowercase
    ('а', 'a'),
    ('е', 'e'),
    ('о', 'o'),
    ('р', 'p'),
    ('с', 'c'),
    ('у', 'y'),
    ('х', 'x'),
    ('ѕ', 's'),
    ('і', 'i'),
    ('ј', 'j'),
    ('һ', 'h'),
    ('ԁ', 'd'),
    ('ԛ', 'q'),
    ('ԝ', 'w'),
    ('ӏ', 'l'),
    // Greek uppercase
    ('Α', 'A'),
    ('Β', 'B'),
    ('Ε', 'E'),
    ('Ζ', 'Z'),
    ('Η', 'H'),
    ('Ι', 'I'),
    ('Κ', 'K'),
    ('Μ', 'M'),
    ('Ν', 'N'),
    ('Ο', 'O'),
    ('Ρ', 'P'),
    ('Τ', 'T'),
    ('Υ', 'Y'),
    ('Χ', 'X'),
    // Greek lowercase
    ('ο', 'o'),
    ('ν', 'v'),
];

fn latin_lookalike(c: char) -> char {
    HOMOGLYPHS.iter().find(|(from, _)| *from == c).map_or(c, |(_, to)| *to)
}

/// [`key`] with the [`HOMOGLYPHS`] folded to Latin, before and after case mapping.
pub fn skeleton(nick: &str) -> String {
    let folded: String = nick.chars().map(latin_lookalike).collect();
    key(&folded).chars().map(latin_lookalike).collect()
}

/// Whether two nicknames collide: equal [`key`]s, or equal [`skeleton`]s.
pub fn collide(a: &str, b: &str) -> bool {
    key(a) == key(b) || skeleton(a) == skeleton(b)
}

#[cfg(test)]
mod tests {
    use super::{collide, key, skeleton, HOMOGLYPHS};

    #[test]
    fn case_is_folded() {
        assert_eq!(key("Alice"), "alice");
        assert_eq!(key("ALICE"), key("alice"));
        assert_eq!(key("ΣΟΦΊΑ"), key("σοφία"), "beyond ASCII");
        assert_ne!(key("alice"), key("alicia"));
    }

    #[test]
    fn width_is_mapped() {
        assert_eq!(key("ａｌｉｃｅ"), "alice");
        assert_eq!(key("ＡＬＩＣＥ"), "alice");
        assert_eq!(key("ｶﾀｶﾅ"), key("カタカナ"), "halfwidth katakana");
    }

    #[test]
    fn spaces_are_normalized() {
        assert_eq!(key("  alice   smith "), "alice smith");
        assert_eq!(key("alice\u{A0}smith"), "alice smith");
        assert_eq!(key("alice\u{3000}\u{2003}smith"), "alice smith");
        assert_ne!(key("alice smith"), key("alicesmith"), "a space still separates");
    }

    #[test]
    fn compatibility_forms_are_folded() {
        assert_eq!(key("ﬁona"), "fiona", "ligature");
        assert_eq!(key("Å"), key("å"), "angstrom sign");
        assert_eq!(key("e\u{301}"), key("é"), "composed");
    }

    #[test]
    fn key_is_idempotent() {
        for nick in ["Alice", "ａｌｉｃｅ", " A  B ", "ΣΟΦΊΑ", "ﬁ", "İstanbul", "ẞ"] {
            assert_eq!(key(&key(nick)), key(nick), "{nick:?}");
        }
    }

    #[test]
    fn script_mixing_look_alikes_collide() {
        assert!(collide("alice", "\u{430}lice"), "Cyrillic a");
        assert!(collide("Bob", "ВОВ"), "uppercase Cyrillic");
        assert!(collide("Bob", "\u{392}ob"), "Greek Beta");
        assert!(collide("poco", "рос\u{43E}"), "all Cyrillic look-alikes");
        assert!(collide("Alice", "ALICE"));
        assert!(!collide("alice", "bob"));
        assert!(!collide("борис", "boris"), "real Cyrillic words are not look-alikes");
        assert!(!collide("l0l", "lol"), "digit swaps are not covered");
    }

    #[test]
    fn every_table_entry_maps_to_its_latin_letter() {
        for &(from, to) in HOMOGLYPHS {
            assert!(!from.is_ascii() && to.is_ascii_alphabetic(), "{from:?} → {to:?}");
            assert_eq!(skeleton(&from.to_string()), to.to_ascii_lowercase().to_string(), "{from:?}");
        }
    }
}
