use thiserror::Error;

/// Everything that can go wrong in a SASL exchange, on either side.
///
/// [`SaslError::condition`] maps each error to the RFC 6120 §6.5 `<failure/>` condition
/// a server sends. Several distinct errors deliberately map to the same condition
/// (`not-authorized`) so that a client cannot tell a wrong password from an unknown user;
/// the distinct variants exist for logging and tests only.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SaslError {
    /// The message does not follow the mechanism's grammar.
    #[error("malformed SASL message: {0}")]
    Malformed(&'static str),
    /// The outer SASL payload was not valid base64 (for the XMPP layer; this crate works
    /// on decoded payloads and never returns it itself).
    #[error("incorrect base64 encoding of the SASL payload")]
    IncorrectEncoding,
    /// The client requires channel binding (GS2 flag `p=`), which this server never offers.
    #[error("channel binding is not supported")]
    ChannelBindingUnsupported,
    /// The channel-binding echo (`c=`) of client-final does not match the GS2 header of
    /// client-first.
    #[error("channel binding data does not match the GS2 header")]
    ChannelBindingMismatch,
    /// The nonce of a later message does not continue the exchange's nonce.
    #[error("nonce mismatch")]
    NonceMismatch,
    /// The client proof does not verify (wrong password).
    #[error("invalid client proof")]
    InvalidProof,
    /// The user does not exist. Only ever returned by the final step of an exchange, which
    /// until then is indistinguishable from one for an existing user.
    #[error("unknown user")]
    UnknownUser,
    /// The password was rejected by SASLprep (or is empty after it).
    #[error("password rejected by SASLprep: {0}")]
    InvalidPassword(&'static str),
    /// A step was called before the previous one, or after the exchange finished.
    #[error("SASL step out of order")]
    OutOfOrder,
    /// Client side: the server signature in server-final does not verify.
    #[error("invalid server signature")]
    InvalidServerSignature,
    /// Client side: the server sent `e=<value>` in server-final.
    #[error("server reported an error: {0}")]
    ServerError(String),
    /// Iteration count or salt not acceptable for credential derivation.
    #[error("invalid SCRAM parameters: {0}")]
    InvalidParameters(&'static str),
    /// The requested authorization identity may not be used by this authentication identity.
    #[error("invalid authorization identity")]
    InvalidAuthzid,
    /// The requested mechanism is unknown or not offered.
    #[error("invalid mechanism")]
    InvalidMechanism,
    /// The mechanism is only allowed on an encrypted stream.
    #[error("encryption required")]
    EncryptionRequired,
    /// The client aborted the exchange.
    #[error("aborted by the client")]
    Aborted,
    /// The account exists but is disabled.
    #[error("account disabled")]
    AccountDisabled,
    /// A transient server-side problem (storage unavailable, rate limited, ...).
    #[error("temporary authentication failure")]
    TemporaryFailure,
}

impl SaslError {
    /// RFC 6120 §6.5 failure condition (element name in the `urn:ietf:params:xml:ns:xmpp-sasl`
    /// namespace) to send for this error.
    pub fn condition(&self) -> &'static str {
        match self {
            SaslError::Malformed(_)
            | SaslError::ChannelBindingUnsupported
            | SaslError::NonceMismatch
            | SaslError::OutOfOrder
            | SaslError::InvalidParameters(_) => "malformed-request",
            SaslError::IncorrectEncoding => "incorrect-encoding",
            SaslError::ChannelBindingMismatch
            | SaslError::InvalidProof
            | SaslError::UnknownUser
            | SaslError::InvalidPassword(_)
            | SaslError::InvalidServerSignature
            | SaslError::ServerError(_) => "not-authorized",
            SaslError::InvalidAuthzid => "invalid-authzid",
            SaslError::InvalidMechanism => "invalid-mechanism",
            SaslError::EncryptionRequired => "encryption-required",
            SaslError::Aborted => "aborted",
            SaslError::AccountDisabled => "account-disabled",
            SaslError::TemporaryFailure => "temporary-auth-failure",
        }
    }
}
