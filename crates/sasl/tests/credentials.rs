#![allow(clippy::unwrap_used, clippy::expect_used)]

use waddle_sasl::{saslprep, SaslError, ScramCredentials, ScramHash};

#[test]
fn derive_is_deterministic_and_hash_sized() {
    for hash in ScramHash::ALL {
        let a = ScramCredentials::derive(hash, "pencil", b"salt", 16).unwrap();
        let b = ScramCredentials::derive(hash, "pencil", b"salt", 16).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.stored_key.len(), hash.output_len());
        assert_eq!(a.server_key.len(), hash.output_len());
        assert_ne!(a.stored_key, a.server_key);
        assert_ne!(a, ScramCredentials::derive(hash, "pencil", b"salt", 17).unwrap());
        assert_ne!(a, ScramCredentials::derive(hash, "pencil", b"salu", 16).unwrap());
        assert_ne!(a, ScramCredentials::derive(hash, "pencim", b"salt", 16).unwrap());
    }
}

#[test]
fn generate_uses_fresh_salts() {
    let a = ScramCredentials::generate(ScramHash::Sha256, "pencil", 4096).unwrap();
    let b = ScramCredentials::generate(ScramHash::Sha256, "pencil", 4096).unwrap();
    assert_eq!(a.salt.len(), 16);
    assert_eq!(a.iterations, 4096);
    assert_ne!(a.salt, b.salt);
    assert_ne!(a.stored_key, b.stored_key);
    assert!(a.verify_password("pencil"));
    assert!(b.verify_password("pencil"));
}

#[test]
fn verify_password() {
    for hash in ScramHash::ALL {
        let creds = ScramCredentials::derive(hash, "pencil", b"salt", 64).unwrap();
        assert!(creds.verify_password("pencil"));
        assert!(!creds.verify_password("pencil "));
        assert!(!creds.verify_password("Pencil"));
        assert!(!creds.verify_password(""));
        assert!(!creds.verify_password("pen\u{0000}cil"));
        // Corrupted stored data never verifies.
        let mut broken = creds.clone();
        broken.stored_key[0] ^= 1;
        assert!(!broken.verify_password("pencil"));
        let mut broken = creds.clone();
        broken.stored_key.truncate(4);
        assert!(!broken.verify_password("pencil"));
        let mut broken = creds.clone();
        broken.iterations = 0;
        assert!(!broken.verify_password("pencil"));
    }
}

#[test]
fn verify_password_applies_saslprep() {
    let creds = ScramCredentials::derive(ScramHash::Sha256, "I\u{00AD}X\u{00A0}y", b"salt", 8).unwrap();
    assert!(creds.verify_password("IX y"));
    assert!(creds.verify_password("I\u{200B}X\u{3000}y"));
    assert!(!creds.verify_password("IXy"));
}

#[test]
fn derive_rejects_bad_input() {
    let h = ScramHash::Sha1;
    assert_eq!(
        ScramCredentials::derive(h, "pw", b"salt", 0),
        Err(SaslError::InvalidParameters("iteration count must be at least 1"))
    );
    assert_eq!(ScramCredentials::derive(h, "pw", b"", 1), Err(SaslError::InvalidParameters("salt must not be empty")));
    assert_eq!(ScramCredentials::derive(h, "", b"salt", 1), Err(SaslError::InvalidPassword("empty password")));
    assert_eq!(ScramCredentials::derive(h, "\u{00AD}", b"salt", 1), Err(SaslError::InvalidPassword("empty password")));
    let err = ScramCredentials::derive(h, "a\nb", b"salt", 1).unwrap_err();
    assert_eq!(err, SaslError::InvalidPassword("ASCII control character"));
    assert_eq!(err.condition(), "not-authorized");
    assert!(ScramCredentials::derive(h, "\u{E000}", b"salt", 1).is_err());
    assert!(ScramCredentials::generate(h, "\u{202E}abc", 1).is_err());
}

#[test]
fn saslprep_is_public() {
    assert_eq!(saslprep("a\u{00A0}b\u{00AD}").unwrap(), "a b");
    assert!(saslprep("a\u{0001}").is_err());
}

#[test]
fn conditions() {
    let cases = [
        (SaslError::Malformed("x"), "malformed-request"),
        (SaslError::IncorrectEncoding, "incorrect-encoding"),
        (SaslError::ChannelBindingUnsupported, "malformed-request"),
        (SaslError::ChannelBindingMismatch, "not-authorized"),
        (SaslError::NonceMismatch, "malformed-request"),
        (SaslError::InvalidProof, "not-authorized"),
        (SaslError::UnknownUser, "not-authorized"),
        (SaslError::InvalidPassword("x"), "not-authorized"),
        (SaslError::OutOfOrder, "malformed-request"),
        (SaslError::InvalidServerSignature, "not-authorized"),
        (SaslError::ServerError("e".into()), "not-authorized"),
        (SaslError::InvalidParameters("x"), "malformed-request"),
        (SaslError::InvalidAuthzid, "invalid-authzid"),
        (SaslError::InvalidMechanism, "invalid-mechanism"),
        (SaslError::EncryptionRequired, "encryption-required"),
        (SaslError::Aborted, "aborted"),
        (SaslError::AccountDisabled, "account-disabled"),
        (SaslError::TemporaryFailure, "temporary-auth-failure"),
    ];
    for (err, condition) in cases {
        assert_eq!(err.condition(), condition, "{err:?}");
        assert!(!err.to_string().is_empty());
    }
}
