use hmac::digest::{Digest, Key, KeyInit};
use hmac::{Hmac, Mac};
use sha1::Sha1 as Sha1Hasher;
use sha2::Sha256 as Sha256Hasher;

/// The hash function of a SCRAM mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScramHash {
    /// SCRAM-SHA-1 (RFC 5802).
    Sha1,
    /// SCRAM-SHA-256 (RFC 7677).
    Sha256,
}

/// Computes HMAC over the concatenation of `parts`. The key is brought to the hash's
/// block size exactly as RFC 2104 prescribes (hashed when longer, zero-padded), which
/// lets the MAC be built from a fixed-size key without any fallible step.
macro_rules! hmac_with {
    ($hasher:ty, $key:expr, $parts:expr) => {{
        let key: &[u8] = $key;
        let mut block = Key::<Hmac<$hasher>>::default();
        if key.len() > block.len() {
            let digest = <$hasher as Digest>::digest(key);
            block[..digest.len()].copy_from_slice(&digest);
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let mut mac = <Hmac<$hasher> as KeyInit>::new(&block);
        for part in $parts {
            Mac::update(&mut mac, part);
        }
        mac.finalize().into_bytes().to_vec()
    }};
}

impl ScramHash {
    /// Both mechanisms, strongest first (the order in which to advertise them).
    pub const ALL: [ScramHash; 2] = [ScramHash::Sha256, ScramHash::Sha1];

    /// The SASL mechanism name: `"SCRAM-SHA-1"` or `"SCRAM-SHA-256"`.
    pub fn mechanism_name(self) -> &'static str {
        match self {
            ScramHash::Sha1 => "SCRAM-SHA-1",
            ScramHash::Sha256 => "SCRAM-SHA-256",
        }
    }

    /// Inverse of [`ScramHash::mechanism_name`] (exact match; `-PLUS` variants are not
    /// supported and give `None`).
    pub fn from_mechanism_name(name: &str) -> Option<ScramHash> {
        ScramHash::ALL.into_iter().find(|h| h.mechanism_name() == name)
    }

    /// Output length of the hash in bytes (length of StoredKey, ServerKey and proofs).
    pub fn output_len(self) -> usize {
        match self {
            ScramHash::Sha1 => 20,
            ScramHash::Sha256 => 32,
        }
    }

    /// H(data).
    pub(crate) fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => Sha1Hasher::digest(data).to_vec(),
            ScramHash::Sha256 => Sha256Hasher::digest(data).to_vec(),
        }
    }

    /// HMAC(key, parts[0] || parts[1] || ...).
    pub(crate) fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => hmac_with!(Sha1Hasher, key, parts),
            ScramHash::Sha256 => hmac_with!(Sha256Hasher, key, parts),
        }
    }

    /// SaltedPassword = Hi(password, salt, i), i.e. PBKDF2 with HMAC of this hash and an
    /// output of one hash length.
    pub(crate) fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0u8; self.output_len()];
        match self {
            ScramHash::Sha1 => pbkdf2::pbkdf2_hmac::<Sha1Hasher>(password, salt, iterations, &mut out),
            ScramHash::Sha256 => pbkdf2::pbkdf2_hmac::<Sha256Hasher>(password, salt, iterations, &mut out),
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(ScramHash::Sha1.mechanism_name(), "SCRAM-SHA-1");
        assert_eq!(ScramHash::Sha256.mechanism_name(), "SCRAM-SHA-256");
        for h in ScramHash::ALL {
            assert_eq!(ScramHash::from_mechanism_name(h.mechanism_name()), Some(h));
        }
        assert_eq!(ScramHash::from_mechanism_name("SCRAM-SHA-1-PLUS"), None);
        assert_eq!(ScramHash::from_mechanism_name("scram-sha-1"), None);
        assert_eq!(ScramHash::from_mechanism_name("PLAIN"), None);
    }

    #[test]
    fn hmac_matches_reference_for_all_key_lengths() {
        let data: &[u8] = b"The quick brown fox jumps over the lazy dog";
        for len in 0..200usize {
            let key: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut m1 = <Hmac<Sha1Hasher> as Mac>::new_from_slice(&key).unwrap();
            m1.update(data);
            assert_eq!(ScramHash::Sha1.hmac(&key, &[&data[..10], &data[10..]]), m1.finalize().into_bytes().to_vec());
            let mut m2 = <Hmac<Sha256Hasher> as Mac>::new_from_slice(&key).unwrap();
            m2.update(data);
            assert_eq!(ScramHash::Sha256.hmac(&key, &[data]), m2.finalize().into_bytes().to_vec());
        }
    }

    #[test]
    fn hmac_known_answers() {
        // RFC 2202 test case 6 and RFC 4231 test case 6 (key longer than the block size).
        let data = b"Test Using Larger Than Block-Size Key - Hash Key First";
        assert_eq!(hex(&ScramHash::Sha1.hmac(&[0xaa; 80], &[data])), "aa4ae5e15272d00e95705637ce8a3b55ed402112");
        assert_eq!(
            hex(&ScramHash::Sha256.hmac(&[0xaa; 131], &[data])),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        // RFC 2202 test case 2 / RFC 4231 test case 2 (short key).
        assert_eq!(
            hex(&ScramHash::Sha1.hmac(b"Jefe", &[b"what do ya want ", b"for nothing?"])),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
        assert_eq!(
            hex(&ScramHash::Sha256.hmac(b"Jefe", &[b"what do ya want for nothing?"])),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn pbkdf2_known_answers() {
        // RFC 6070 test case 2 (PBKDF2-HMAC-SHA1, 2 iterations).
        assert_eq!(
            hex(&ScramHash::Sha1.salted_password(b"password", b"salt", 2)),
            "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957"
        );
        assert_eq!(hex(&ScramHash::Sha1.digest(b"abc")), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(
            hex(&ScramHash::Sha256.digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
