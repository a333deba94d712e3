#![allow(clippy::unwrap_used, clippy::expect_used)]

use waddle_sasl::{parse_plain, PlainCredentials, SaslError};

#[test]
fn without_authzid() {
    let c = parse_plain(b"\0user\0pencil").unwrap();
    assert_eq!(c, PlainCredentials { authzid: None, authcid: "user".into(), password: "pencil".into() });
}

#[test]
fn with_authzid() {
    let c = parse_plain(b"admin@example.com\0user\0pen cil=,x").unwrap();
    assert_eq!(c.authzid.as_deref(), Some("admin@example.com"));
    assert_eq!(c.authcid, "user");
    assert_eq!(c.password, "pen cil=,x");
}

#[test]
fn utf8_is_kept_as_is() {
    let c = parse_plain("\0jürgen\0pässwörd\u{00A0}".as_bytes()).unwrap();
    assert_eq!(c.authcid, "jürgen");
    assert_eq!(c.password, "pässwörd\u{00A0}");
}

#[test]
fn malformed() {
    let two_nuls = SaslError::Malformed("PLAIN message must contain exactly two NUL separators");
    let cases: &[(&[u8], SaslError)] = &[
        (b"", two_nuls.clone()),
        (b"user", two_nuls.clone()),
        (b"user\0pencil", two_nuls.clone()),
        (b"\0user\0pen\0cil", two_nuls.clone()),
        (b"\0\0\0", two_nuls.clone()),
        (b"\0\0pencil", SaslError::Malformed("empty PLAIN authentication identity")),
        (b"admin\0\0pencil", SaslError::Malformed("empty PLAIN authentication identity")),
        (b"\0user\0", SaslError::Malformed("empty PLAIN password")),
        (b"\0\0", SaslError::Malformed("empty PLAIN authentication identity")),
        (b"\0us\xc3er\0pencil", SaslError::Malformed("PLAIN message is not UTF-8")),
        (b"\0user\0pen\xffcil", SaslError::Malformed("PLAIN message is not UTF-8")),
    ];
    for (msg, expected) in cases {
        let err = parse_plain(msg).unwrap_err();
        assert_eq!(&err, expected, "{:?}", String::from_utf8_lossy(msg));
        assert_eq!(err.condition(), "malformed-request");
    }
}

#[test]
fn debug_redacts_password() {
    let c = parse_plain(b"\0user\0hunter2").unwrap();
    let debug = format!("{c:?}");
    assert!(debug.contains("user"));
    assert!(!debug.contains("hunter2"));
}
