use std::fmt;
use std::sync::OnceLock;

use subtle::ConstantTimeEq;

use crate::attrs::{b64_decode, b64_encode, check_extensions, decode_saslname, expect_attr, random_nonce, valid_nonce};
use crate::credentials::{DEFAULT_ITERATIONS, SALT_LEN};
use crate::{SaslError, ScramCredentials, ScramHash};

/// The identities requested in a client-first-message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientFirst {
    /// Authentication identity (`n=`), saslname-decoded (`=2C` → `,`, `=3D` → `=`). Not
    /// otherwise normalized: the caller maps it to an account.
    pub username: String,
    /// Authorization identity from the GS2 header (`a=`), saslname-decoded.
    pub authzid: Option<String>,
}

/// Server side of one SCRAM exchange (RFC 5802, RFC 7677).
///
/// Channel binding is never offered (no `-PLUS` mechanisms): a GS2 flag of `n` or `y` is
/// accepted, `p=` fails with [`SaslError::ChannelBindingUnsupported`].
///
/// Steps, in order: [`handle_client_first`](Self::handle_client_first), (credential
/// lookup by the caller), [`server_first`](Self::server_first),
/// [`handle_client_final`](Self::handle_client_final). One instance serves one attempt:
/// any error, or a step out of order, ends it and later steps fail with
/// [`SaslError::OutOfOrder`].
pub struct ScramServer {
    hash: ScramHash,
    state: State,
}

enum State {
    Start,
    GotClientFirst { gs2_header: String, client_first_bare: String, client_nonce: String, username: String },
    SentServerFirst(Box<Pending>),
    Done,
}

/// Everything needed to check client-final.
struct Pending {
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
    /// `true` when the parameters are fake (unknown user): the exchange must fail.
    unknown_user: bool,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Start => "start",
            State::GotClientFirst { .. } => "got-client-first",
            State::SentServerFirst(_) => "sent-server-first",
            State::Done => "done",
        };
        f.debug_struct("ScramServer").field("hash", &self.hash).field("state", &state).finish()
    }
}

/// Per-process secret for the fake salts of unknown users.
fn fake_salt_secret() -> &'static [u8; 32] {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    SECRET.get_or_init(|| {
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut secret);
        secret
    })
}

/// Deterministic salt for an unknown user: stable for the life of the process (so that
/// repeated probes see the same salt, as for a real account), different per mechanism
/// (as real accounts have one random salt per hash), and unpredictable from outside.
fn fake_salt(hash: ScramHash, username: &str) -> Vec<u8> {
    let mut salt =
        ScramHash::Sha256.hmac(fake_salt_secret(), &[hash.mechanism_name().as_bytes(), b"\0", username.as_bytes()]);
    salt.truncate(SALT_LEN);
    salt
}

impl ScramServer {
    pub fn new(hash: ScramHash) -> ScramServer {
        ScramServer { hash, state: State::Start }
    }

    /// The mechanism's hash.
    pub fn hash(&self) -> ScramHash {
        self.hash
    }

    /// Parses client-first-message (`gs2-header client-first-message-bare`). The caller
    /// then looks up the credentials of `username` and calls [`Self::server_first`].
    ///
    /// Errors: [`SaslError::ChannelBindingUnsupported`] for a `p=` flag,
    /// [`SaslError::Malformed`] for anything else that does not follow the grammar,
    /// including a mandatory extension (`m=`). Unknown optional extensions after the
    /// nonce are ignored.
    pub fn handle_client_first(&mut self, msg: &[u8]) -> Result<ClientFirst, SaslError> {
        if !matches!(self.state, State::Start) {
            self.state = State::Done;
            return Err(SaslError::OutOfOrder);
        }
        self.state = State::Done;
        let text = std::str::from_utf8(msg).map_err(|_| SaslError::Malformed("message is not UTF-8"))?;
        let (flag, rest) = text.split_once(',').ok_or(SaslError::Malformed("missing GS2 header"))?;
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(SaslError::ChannelBindingUnsupported),
            _ => return Err(SaslError::Malformed("invalid GS2 channel binding flag")),
        }
        let (authz, bare) = rest.split_once(',').ok_or(SaslError::Malformed("missing GS2 header"))?;
        let authzid = match authz {
            "" => None,
            a => Some(decode_saslname(
                a.strip_prefix("a=").ok_or(SaslError::Malformed("invalid GS2 authorization identity"))?,
            )?),
        };
        let gs2_header_len = flag.len() + authz.len() + 2;
        let gs2_header = text.get(..gs2_header_len).ok_or(SaslError::Malformed("missing GS2 header"))?;

        let mut parts = bare.split(',');
        let username = decode_saslname(expect_attr(&mut parts, b'n', "missing username")?)?;
        let client_nonce = expect_attr(&mut parts, b'r', "missing nonce")?;
        if !valid_nonce(client_nonce) {
            return Err(SaslError::Malformed("invalid nonce"));
        }
        check_extensions(parts)?;

        self.state = State::GotClientFirst {
            gs2_header: gs2_header.to_owned(),
            client_first_bare: bare.to_owned(),
            client_nonce: client_nonce.to_owned(),
            username: username.clone(),
        };
        Ok(ClientFirst { username, authzid })
    }

    /// Produces server-first-message (`r=<nonce>,s=<salt>,i=<iterations>`) with a fresh
    /// random server nonce.
    ///
    /// `creds = None` means the user does not exist: the message then carries a fake salt
    /// (HMAC of a per-process secret, the mechanism and the username) and
    /// [`DEFAULT_ITERATIONS`], so it looks like any other, and the exchange fails at
    /// client-final with [`SaslError::UnknownUser`]. Credentials for another hash are
    /// treated the same way.
    ///
    /// Called out of order it returns an empty message and ends the exchange
    /// (client-final then fails with [`SaslError::OutOfOrder`]).
    pub fn server_first(&mut self, creds: Option<&ScramCredentials>) -> Vec<u8> {
        self.server_first_with_nonce(creds, &random_nonce())
    }

    /// [`Self::server_first`] with a fixed server nonce part (for tests and test vectors).
    /// The nonce must be `printable` (RFC 5802: ASCII `0x21..=0x7E` except `,`); otherwise
    /// the exchange ends and an empty message is returned.
    pub fn server_first_with_nonce(&mut self, creds: Option<&ScramCredentials>, server_nonce: &str) -> Vec<u8> {
        let State::GotClientFirst { gs2_header, client_first_bare, client_nonce, username } =
            std::mem::replace(&mut self.state, State::Done)
        else {
            return Vec::new();
        };
        if !valid_nonce(server_nonce) {
            return Vec::new();
        }
        let nonce = format!("{client_nonce}{server_nonce}");
        let (salt, iterations, stored_key, server_key, unknown_user) =
            match creds.filter(|c| c.hash == self.hash && c.iterations > 0 && !c.salt.is_empty()) {
                Some(c) => (c.salt.clone(), c.iterations, c.stored_key.clone(), c.server_key.clone(), false),
                None => {
                    let len = self.hash.output_len();
                    (fake_salt(self.hash, &username), DEFAULT_ITERATIONS, vec![0; len], vec![0; len], true)
                }
            };
        let server_first = format!("r={nonce},s={},i={iterations}", b64_encode(&salt));
        let out = server_first.clone().into_bytes();
        self.state = State::SentServerFirst(Box::new(Pending {
            gs2_header,
            client_first_bare,
            server_first,
            nonce,
            stored_key,
            server_key,
            unknown_user,
        }));
        out
    }

    /// Verifies client-final-message (`c=<gs2 header>,r=<nonce>[,ext...],p=<proof>`).
    /// On success returns server-final-message (`v=<server signature>`), to be sent as
    /// the additional data of `<success/>`.
    ///
    /// Errors: [`SaslError::Malformed`] (grammar, bad base64),
    /// [`SaslError::ChannelBindingMismatch`] (the `c=` echo differs from the GS2 header),
    /// [`SaslError::NonceMismatch`], [`SaslError::InvalidProof`] (wrong password; the
    /// proof is checked in constant time) and [`SaslError::UnknownUser`] (after the same
    /// work as a real check).
    pub fn handle_client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, SaslError> {
        let State::SentServerFirst(pending) = std::mem::replace(&mut self.state, State::Done) else {
            return Err(SaslError::OutOfOrder);
        };
        let text = std::str::from_utf8(msg).map_err(|_| SaslError::Malformed("message is not UTF-8"))?;
        let (without_proof, proof_attr) = text.rsplit_once(',').ok_or(SaslError::Malformed("missing proof"))?;
        let mut last = std::iter::once(proof_attr);
        let proof = b64_decode(expect_attr(&mut last, b'p', "missing proof")?)?;

        let mut parts = without_proof.split(',');
        let binding = b64_decode(expect_attr(&mut parts, b'c', "missing channel binding")?)?;
        let nonce = expect_attr(&mut parts, b'r', "missing nonce")?;
        check_extensions(parts)?;
        if binding != pending.gs2_header.as_bytes() {
            return Err(SaslError::ChannelBindingMismatch);
        }
        if nonce != pending.nonce {
            return Err(SaslError::NonceMismatch);
        }

        let auth_message: [&[u8]; 5] = [
            pending.client_first_bare.as_bytes(),
            b",",
            pending.server_first.as_bytes(),
            b",",
            without_proof.as_bytes(),
        ];
        let client_signature = self.hash.hmac(&pending.stored_key, &auth_message);
        let proof_ok = if proof.len() == client_signature.len() {
            let client_key: Vec<u8> = proof.iter().zip(&client_signature).map(|(p, s)| p ^ s).collect();
            bool::from(self.hash.digest(&client_key).as_slice().ct_eq(pending.stored_key.as_slice()))
        } else {
            false
        };
        if pending.unknown_user {
            return Err(SaslError::UnknownUser);
        }
        if !proof_ok {
            return Err(SaslError::InvalidProof);
        }
        let server_signature = self.hash.hmac(&pending.server_key, &auth_message);
        Ok(format!("v={}", b64_encode(&server_signature)).into_bytes())
    }
}
