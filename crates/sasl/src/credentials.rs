use subtle::ConstantTimeEq;

use crate::saslprep::prep_password;
use crate::{SaslError, ScramHash};

/// Iteration count used for the fake parameters of unknown users, and a sensible
/// default (the minimum RFC 7677 recommends) for new credentials.
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// Length in bytes of the salts made by [`ScramCredentials::generate`].
pub const SALT_LEN: usize = 16;

/// What the server stores for one account and one SCRAM hash (RFC 5802 §3). The password
/// itself cannot be recovered from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramCredentials {
    pub hash: ScramHash,
    pub salt: Vec<u8>,
    pub iterations: u32,
    /// StoredKey = H(HMAC(SaltedPassword, "Client Key")).
    pub stored_key: Vec<u8>,
    /// ServerKey = HMAC(SaltedPassword, "Server Key").
    pub server_key: Vec<u8>,
}

/// ClientKey, StoredKey and ServerKey from a SaltedPassword.
pub(crate) struct Keys {
    pub(crate) client_key: Vec<u8>,
    pub(crate) stored_key: Vec<u8>,
    pub(crate) server_key: Vec<u8>,
}

impl Keys {
    pub(crate) fn from_salted_password(hash: ScramHash, salted_password: &[u8]) -> Keys {
        let client_key = hash.hmac(salted_password, &[b"Client Key"]);
        let stored_key = hash.digest(&client_key);
        let server_key = hash.hmac(salted_password, &[b"Server Key"]);
        Keys { client_key, stored_key, server_key }
    }
}

impl ScramCredentials {
    /// Derives credentials from a clear password:
    /// SaltedPassword = PBKDF2-HMAC-H(SASLprep(password), salt, iterations),
    /// StoredKey = H(HMAC(SaltedPassword, "Client Key")),
    /// ServerKey = HMAC(SaltedPassword, "Server Key").
    ///
    /// The password goes through the minimal SASLprep of [`mod@crate::saslprep`]: non-ASCII
    /// spaces are mapped to U+0020, "commonly mapped to nothing" characters are removed,
    /// control, private-use, non-character and the other RFC 4013 prohibited characters
    /// are rejected ([`SaslError::InvalidPassword`]), as is a password that is empty
    /// after mapping. NFKC normalization is **not** applied, so clients that apply it
    /// will disagree on passwords containing compatibility characters.
    ///
    /// `iterations` must be at least 1 and `salt` non-empty
    /// ([`SaslError::InvalidParameters`]).
    pub fn derive(
        hash: ScramHash,
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> Result<ScramCredentials, SaslError> {
        if iterations == 0 {
            return Err(SaslError::InvalidParameters("iteration count must be at least 1"));
        }
        if salt.is_empty() {
            return Err(SaslError::InvalidParameters("salt must not be empty"));
        }
        let password = prep_password(password)?;
        let salted = hash.salted_password(password.as_bytes(), salt, iterations);
        let keys = Keys::from_salted_password(hash, &salted);
        Ok(ScramCredentials {
            hash,
            salt: salt.to_vec(),
            iterations,
            stored_key: keys.stored_key,
            server_key: keys.server_key,
        })
    }

    /// Like [`ScramCredentials::derive`] with a fresh random salt of [`SALT_LEN`] bytes.
    pub fn generate(hash: ScramHash, password: &str, iterations: u32) -> Result<ScramCredentials, SaslError> {
        let mut salt = [0u8; SALT_LEN];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut salt);
        ScramCredentials::derive(hash, password, &salt, iterations)
    }

    /// Checks a clear password (PLAIN, HTTP login) by recomputing StoredKey with this
    /// salt and iteration count and comparing in constant time. A password rejected by
    /// SASLprep, or credentials with a zero iteration count, never verify.
    ///
    /// This runs PBKDF2 and is therefore deliberately slow: keep it off async workers.
    pub fn verify_password(&self, password: &str) -> bool {
        if self.iterations == 0 {
            return false;
        }
        let Ok(password) = prep_password(password) else {
            return false;
        };
        let salted = self.hash.salted_password(password.as_bytes(), &self.salt, self.iterations);
        let keys = Keys::from_salted_password(self.hash, &salted);
        bool::from(keys.stored_key.as_slice().ct_eq(self.stored_key.as_slice()))
    }
}
