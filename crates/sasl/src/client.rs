use std::fmt;

use subtle::ConstantTimeEq;

use crate::attrs::{
    b64_decode, b64_encode, check_extensions, encode_saslname, expect_attr, random_nonce, split_attr, valid_nonce,
};
use crate::credentials::Keys;
use crate::saslprep::prep_password;
use crate::{SaslError, ScramHash};

/// Client side of one SCRAM exchange, without channel binding (GS2 header `n,,`).
///
/// Used by tests and the load generator. Unlike everything else in this crate it has to
/// hold the clear password until [`Self::handle_server_first`] has run.
pub struct ScramClient {
    hash: ScramHash,
    username: String,
    authzid: Option<String>,
    password: String,
    client_nonce: String,
    state: State,
    /// `(salt, iterations, SaltedPassword)` known from an earlier exchange.
    salted: Option<SaltedPassword>,
}

/// A client's SaltedPassword for one salt and iteration count. RFC 5802 §5.1 lets a
/// client cache it, so that only the first login pays for PBKDF2.
#[derive(Clone, PartialEq, Eq)]
pub struct SaltedPassword {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub salted: Vec<u8>,
}

impl fmt::Debug for SaltedPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaltedPassword").field("iterations", &self.iterations).finish_non_exhaustive()
    }
}

enum State {
    Start,
    SentClientFirst { client_first_bare: String },
    SentClientFinal { server_signature: Vec<u8> },
    Done,
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClient")
            .field("hash", &self.hash)
            .field("username", &self.username)
            .field("authzid", &self.authzid)
            .field("password", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl ScramClient {
    /// A client with a fresh random nonce.
    pub fn new(hash: ScramHash, username: &str, password: &str) -> ScramClient {
        ScramClient::with_nonce(hash, username, password, &random_nonce())
    }

    /// A client with a fixed nonce (test vectors). The nonce should be `printable`
    /// (ASCII `0x21..=0x7E` except `,`), or servers will reject client-first.
    pub fn with_nonce(hash: ScramHash, username: &str, password: &str, client_nonce: &str) -> ScramClient {
        ScramClient {
            hash,
            username: username.to_owned(),
            authzid: None,
            password: password.to_owned(),
            client_nonce: client_nonce.to_owned(),
            state: State::Start,
            salted: None,
        }
    }

    /// Reuses a SaltedPassword from an earlier exchange if the server sends the same
    /// salt and iteration count (otherwise it is computed as usual).
    pub fn with_cached_salted_password(mut self, cached: SaltedPassword) -> ScramClient {
        self.salted = Some(cached);
        self
    }

    /// The SaltedPassword of this exchange, once [`Self::handle_server_first`] ran: what
    /// a client may cache for the next login.
    pub fn salted_password(&self) -> Option<&SaltedPassword> {
        self.salted.as_ref()
    }

    /// Requests an authorization identity (`a=` in the GS2 header).
    pub fn with_authzid(mut self, authzid: &str) -> ScramClient {
        self.authzid = Some(authzid.to_owned());
        self
    }

    fn gs2_header(&self) -> String {
        match &self.authzid {
            Some(a) => format!("n,a={},", encode_saslname(a)),
            None => "n,,".to_owned(),
        }
    }

    /// client-first-message: `n,[a=<saslname>],n=<saslname>,r=<nonce>`. The names are
    /// sent as given (saslname-escaped only).
    pub fn client_first(&mut self) -> Vec<u8> {
        let client_first_bare = format!("n={},r={}", encode_saslname(&self.username), self.client_nonce);
        let msg = format!("{}{client_first_bare}", self.gs2_header()).into_bytes();
        self.state = State::SentClientFirst { client_first_bare };
        msg
    }

    /// Processes server-first-message and returns client-final-message.
    ///
    /// Errors: [`SaslError::OutOfOrder`], [`SaslError::Malformed`] (grammar, bad base64,
    /// zero or non-numeric iteration count, `m=`), [`SaslError::NonceMismatch`] (the
    /// server nonce does not extend ours) and [`SaslError::InvalidPassword`] (SASLprep).
    pub fn handle_server_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, SaslError> {
        let State::SentClientFirst { client_first_bare } = std::mem::replace(&mut self.state, State::Done) else {
            return Err(SaslError::OutOfOrder);
        };
        let text = std::str::from_utf8(msg).map_err(|_| SaslError::Malformed("message is not UTF-8"))?;
        let mut parts = text.split(',');
        let nonce = expect_attr(&mut parts, b'r', "missing nonce")?;
        let salt = b64_decode(expect_attr(&mut parts, b's', "missing salt")?)?;
        let iterations = expect_attr(&mut parts, b'i', "missing iteration count")?;
        check_extensions(parts)?;
        if !valid_nonce(nonce) {
            return Err(SaslError::Malformed("invalid nonce"));
        }
        if nonce.len() <= self.client_nonce.len() || !nonce.starts_with(&self.client_nonce) {
            return Err(SaslError::NonceMismatch);
        }
        if iterations.is_empty() || !iterations.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SaslError::Malformed("invalid iteration count"));
        }
        let iterations: u32 = match iterations.parse() {
            Ok(i) if i > 0 => i,
            _ => return Err(SaslError::Malformed("invalid iteration count")),
        };

        let cached = self.salted.take().filter(|c| c.salt == salt && c.iterations == iterations);
        let salted = match cached {
            Some(c) => c,
            None => {
                let password = prep_password(&self.password)?;
                let salted = self.hash.salted_password(password.as_bytes(), &salt, iterations);
                SaltedPassword { salt, iterations, salted }
            }
        };
        let keys = Keys::from_salted_password(self.hash, &salted.salted);
        self.salted = Some(salted);
        let without_proof = format!("c={},r={nonce}", b64_encode(self.gs2_header().as_bytes()));
        let auth_message: [&[u8]; 5] =
            [client_first_bare.as_bytes(), b",", text.as_bytes(), b",", without_proof.as_bytes()];
        let client_signature = self.hash.hmac(&keys.stored_key, &auth_message);
        let proof: Vec<u8> = keys.client_key.iter().zip(&client_signature).map(|(k, s)| k ^ s).collect();
        let server_signature = self.hash.hmac(&keys.server_key, &auth_message);
        self.state = State::SentClientFinal { server_signature };
        Ok(format!("{without_proof},p={}", b64_encode(&proof)).into_bytes())
    }

    /// Checks server-final-message (`v=<signature>` or `e=<error>`).
    ///
    /// Errors: [`SaslError::OutOfOrder`], [`SaslError::ServerError`] for `e=`,
    /// [`SaslError::InvalidServerSignature`], [`SaslError::Malformed`].
    pub fn verify_server_final(&self, msg: &[u8]) -> Result<(), SaslError> {
        let State::SentClientFinal { server_signature } = &self.state else {
            return Err(SaslError::OutOfOrder);
        };
        let text = std::str::from_utf8(msg).map_err(|_| SaslError::Malformed("message is not UTF-8"))?;
        let mut parts = text.split(',');
        let first = parts.next().ok_or(SaslError::Malformed("missing verifier"))?;
        match split_attr(first)? {
            (b'e', value) => Err(SaslError::ServerError(value.to_owned())),
            (b'v', value) => {
                let signature = b64_decode(value)?;
                check_extensions(parts)?;
                if bool::from(signature.as_slice().ct_eq(server_signature.as_slice())) {
                    Ok(())
                } else {
                    Err(SaslError::InvalidServerSignature)
                }
            }
            _ => Err(SaslError::Malformed("missing verifier")),
        }
    }
}
