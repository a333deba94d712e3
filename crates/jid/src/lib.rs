//! JIDs as RFC 7622 has them: the `jid` crate's parsing and normalization, except that a
//! resourcepart which stringprep's resourceprep refuses but the PRECIS OpaqueString
//! profile accepts (RFC 7622 §3.4; an emoji, anything from a Unicode version newer than
//! stringprep's 3.2) is accepted too.
//!
//! Localparts and domainparts are the `jid` crate's, unchanged ([`BareJid`] is its type).
//! A resource that resourceprep accepts is normalized as before, so every JID that was
//! valid keeps its form; only JIDs that used to be refused are new.
//!
//! Must never do I/O.

use std::borrow::Borrow;
use std::fmt;

use unicode_normalization::UnicodeNormalization as _;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory as _};

pub use jid::{BareJid, DomainRef, NodeRef};

/// Why a string is not a JID.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum JidError {
    #[error("{0}")]
    Jid(#[from] jid::Error),
    #[error("resourcepart refused by the OpaqueString profile")]
    Resource,
}

/// Longest resourcepart in bytes (RFC 7622 §3.4).
const MAX_RESOURCE_BYTES: usize = 1023;

/// A full JID (`node@domain/resource` or `domain/resource`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FullJid {
    /// The whole JID, normalized.
    full: String,
    /// Where the `/` before the resource is.
    slash: usize,
    bare: BareJid,
}

/// A resourcepart, as a full JID holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource<'a>(&'a str);

impl<'a> Resource<'a> {
    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

impl fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl FullJid {
    /// Parses and normalizes a full JID; a JID without a resource is an error.
    pub fn new(s: &str) -> Result<FullJid, JidError> {
        match Jid::new(s)? {
            Jid::Full(full) => Ok(full),
            Jid::Bare(_) => Err(JidError::Jid(jid::Error::ResourceMissingInFullJid)),
        }
    }

    fn from_jid_crate(full: jid::FullJid) -> FullJid {
        let bare = full.to_bare();
        let full = full.as_str().to_owned();
        let slash = bare.as_str().len();
        FullJid { full, slash, bare }
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    pub fn to_bare(&self) -> BareJid {
        self.bare.clone()
    }

    pub fn bare(&self) -> &BareJid {
        &self.bare
    }

    pub fn resource(&self) -> Resource<'_> {
        Resource(&self.full[self.slash + 1..])
    }

    pub fn node(&self) -> Option<&NodeRef> {
        self.bare.node()
    }

    pub fn domain(&self) -> &DomainRef {
        self.bare.domain()
    }
}

impl fmt::Display for FullJid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for FullJid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FullJid({})", self.full)
    }
}

/// A bare or a full JID.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Jid {
    Bare(BareJid),
    Full(FullJid),
}

impl Jid {
    /// Parses and normalizes a JID (RFC 7622): the `jid` crate's rules, and a
    /// resourcepart that resourceprep refuses is checked with OpaqueString instead.
    pub fn new(s: &str) -> Result<Jid, JidError> {
        match jid::Jid::new(s) {
            Ok(parsed) => Ok(match parsed.try_into_full() {
                Ok(full) => Jid::Full(FullJid::from_jid_crate(full)),
                Err(bare) => Jid::Bare(bare),
            }),
            Err(jid::Error::ResourcePrep) => {
                // The resource is what failed, so there is a '/' and the part before it
                // is not what failed.
                let Some((bare, resource)) = split_resource(s) else {
                    return Err(JidError::Jid(jid::Error::ResourcePrep));
                };
                let bare = BareJid::new(bare)?;
                let resource = opaque_string(resource).ok_or(JidError::Resource)?;
                let slash = bare.as_str().len();
                let full = format!("{bare}/{resource}");
                Ok(Jid::Full(FullJid { full, slash, bare }))
            }
            Err(e) => Err(JidError::Jid(e)),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Jid::Bare(bare) => bare.as_str(),
            Jid::Full(full) => full.as_str(),
        }
    }

    pub fn to_bare(&self) -> BareJid {
        match self {
            Jid::Bare(bare) => bare.clone(),
            Jid::Full(full) => full.to_bare(),
        }
    }

    pub fn node(&self) -> Option<&NodeRef> {
        match self {
            Jid::Bare(bare) => bare.node(),
            Jid::Full(full) => full.node(),
        }
    }

    pub fn domain(&self) -> &DomainRef {
        match self {
            Jid::Bare(bare) => bare.domain(),
            Jid::Full(full) => full.domain(),
        }
    }

    pub fn resource(&self) -> Option<Resource<'_>> {
        match self {
            Jid::Bare(_) => None,
            Jid::Full(full) => Some(full.resource()),
        }
    }

    pub fn is_full(&self) -> bool {
        matches!(self, Jid::Full(_))
    }

    pub fn try_into_full(self) -> Result<FullJid, BareJid> {
        match self {
            Jid::Full(full) => Ok(full),
            Jid::Bare(bare) => Err(bare),
        }
    }

    pub fn try_as_full(&self) -> Result<&FullJid, &BareJid> {
        match self {
            Jid::Full(full) => Ok(full),
            Jid::Bare(bare) => Err(bare),
        }
    }
}

impl From<FullJid> for Jid {
    fn from(full: FullJid) -> Jid {
        Jid::Full(full)
    }
}

impl From<BareJid> for Jid {
    fn from(bare: BareJid) -> Jid {
        Jid::Bare(bare)
    }
}

impl fmt::Display for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Jid({})", self.as_str())
    }
}

impl Borrow<str> for FullJid {
    fn borrow(&self) -> &str {
        &self.full
    }
}

/// The bare part and the resource of `node@domain/resource`: the resource starts at
/// the first '/' (RFC 7622 §3.1: a resource may contain '/', the domain may not).
fn split_resource(s: &str) -> Option<(&str, &str)> {
    s.split_once('/')
}

/// The resourcepart under the PRECIS OpaqueString profile (RFC 7622 §3.4, RFC 8265
/// §4.2): non-ASCII spaces become ASCII spaces, then NFC; the result must be non-empty,
/// at most 1023 bytes, and hold only FreeformClass code points. `None` if refused.
///
/// The FreeformClass check is the subset that matters for what resourceprep refuses:
/// controls, format characters (which holds the default-ignorable joiners PRECIS
/// allows only in contexts this check does not evaluate), private use, surrogates and
/// code points unassigned in the Unicode version of the properties tables are refused;
/// letters, marks, digits, punctuation, symbols (emoji among them) and spaces pass.
pub fn opaque_string(resource: &str) -> Option<String> {
    let mapped: String = resource
        .chars()
        .map(|c| if c != ' ' && c.general_category() == GeneralCategory::SpaceSeparator { ' ' } else { c })
        .nfc()
        .collect();
    let acceptable = !mapped.is_empty()
        && mapped.len() <= MAX_RESOURCE_BYTES
        && mapped.chars().all(|c| {
            !matches!(
                c.general_category(),
                GeneralCategory::Control
                    | GeneralCategory::Format
                    | GeneralCategory::PrivateUse
                    | GeneralCategory::Surrogate
                    | GeneralCategory::Unassigned
                    | GeneralCategory::LineSeparator
                    | GeneralCategory::ParagraphSeparator
            )
        });
    acceptable.then_some(mapped)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn what_resourceprep_accepts_keeps_its_form() {
        let j = Jid::new("Alice@Example.ORG/Phone").unwrap();
        assert_eq!(j.as_str(), "alice@example.org/Phone");
        let full = j.try_as_full().unwrap();
        assert_eq!(full.resource().as_str(), "Phone");
        assert_eq!(full.to_bare().as_str(), "alice@example.org");
        assert_eq!(Jid::new("alice@example.org").unwrap(), Jid::Bare(BareJid::new("alice@example.org").unwrap()));
        assert_eq!(FullJid::new("a@b/x/y").unwrap().resource().as_str(), "x/y");
    }

    #[test]
    fn an_emoji_resource_is_a_jid() {
        let full = FullJid::new("Alice@example.org/phone📱").unwrap();
        assert_eq!(full.as_str(), "alice@example.org/phone📱");
        assert_eq!(full.resource().as_str(), "phone📱");
        assert_eq!(full.node().map(|n| n.as_str()), Some("alice"));
        assert_eq!(full.domain().as_str(), "example.org");
        assert!(Jid::new("example.org/🐧").unwrap().is_full());
    }

    #[test]
    fn opaque_string_maps_spaces_and_normalizes_to_nfc() {
        assert_eq!(opaque_string("a\u{3000}b").as_deref(), Some("a b"));
        assert_eq!(opaque_string("e\u{301}📱").as_deref(), Some("\u{e9}📱"));
    }

    #[test]
    fn what_opaque_string_refuses() {
        for bad in ["", "phone\u{7f}", "a\u{200d}b", "a\u{e000}", "a\u{2028}", "\u{10ffff}"] {
            assert_eq!(opaque_string(bad), None, "{bad:?}");
            assert!(Jid::new(&format!("a@example.org/x{bad}📱")).is_err() || bad.is_empty(), "{bad:?}");
        }
        assert_eq!(opaque_string(&"📱".repeat(256)), None, "over 1023 bytes");
        assert!(FullJid::new("a@example.org/phone\u{7f}").is_err());
        assert!(FullJid::new("a@example.org").is_err());
        assert!(Jid::new("a b@example.org/📱").is_err(), "the localpart rules are unchanged");
    }
}
