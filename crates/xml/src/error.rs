//! Parse errors and their mapping to RFC 6120 stream error conditions.

/// Everything that can go wrong while parsing an XMPP stream. All of these are fatal to
/// the stream: the caller should send `<stream:error>` with [`XmlError::stream_condition`]
/// and close.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum XmlError {
    /// The bytes are not well-formed XML (or not namespace-well-formed).
    #[error("not well-formed: {0}")]
    NotWellFormed(String),
    /// The bytes are not valid UTF-8.
    #[error("not well-formed: invalid UTF-8")]
    InvalidUtf8,
    /// A top-level stanza grew beyond [`crate::Limits::max_stanza_bytes`].
    #[error("stanza exceeds {limit} bytes")]
    StanzaTooLarge { limit: usize },
    /// The prolog plus stream header grew beyond [`crate::Limits::max_header_bytes`].
    #[error("stream header exceeds {limit} bytes")]
    HeaderTooLarge { limit: usize },
    /// Element nesting inside a stanza exceeded [`crate::Limits::max_depth`].
    #[error("element nesting exceeds depth {limit}")]
    TooDeep { limit: usize },
    /// A construct XMPP forbids (RFC 6120 §11.1): comments, processing instructions other
    /// than the XML declaration, DTDs, entity declarations.
    #[error("restricted XML: {0} not allowed")]
    Restricted(&'static str),
    /// A namespace prefix is used without being declared, or is declared illegally.
    #[error("bad namespace prefix '{0}'")]
    BadNamespacePrefix(String),
    /// The stream root is not `stream` in `http://etherx.jabber.org/streams`; the payload
    /// is the offending name in `{namespace}local` form.
    #[error("invalid stream namespace or root element: {0}")]
    InvalidNamespace(String),
    /// The XML declaration names an encoding other than UTF-8.
    #[error("unsupported encoding '{0}'")]
    UnsupportedEncoding(String),
    /// A new stream header inside an open stream where no restart was negotiated
    /// (restarts go through [`crate::StreamParser::reset`]).
    #[error("unexpected stream header inside an open stream")]
    UnexpectedRestart,
}

impl XmlError {
    /// The RFC 6120 §4.9.3 stream error condition element name to send.
    pub fn stream_condition(&self) -> &'static str {
        match self {
            XmlError::NotWellFormed(_) | XmlError::InvalidUtf8 => "not-well-formed",
            XmlError::StanzaTooLarge { .. } | XmlError::HeaderTooLarge { .. } | XmlError::TooDeep { .. } => {
                "policy-violation"
            }
            XmlError::Restricted(_) => "restricted-xml",
            XmlError::BadNamespacePrefix(_) => "bad-namespace-prefix",
            XmlError::InvalidNamespace(_) => "invalid-namespace",
            XmlError::UnsupportedEncoding(_) => "unsupported-encoding",
            XmlError::UnexpectedRestart => "invalid-xml",
        }
    }
}

/// Shorthand for [`XmlError::NotWellFormed`].
pub(crate) fn nwf(msg: &str) -> XmlError {
    XmlError::NotWellFormed(msg.to_owned())
}
