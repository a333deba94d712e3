#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use waddle_sasl::{ClientFirst, SaslError, ScramClient, ScramCredentials, ScramHash, ScramServer};

fn s(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap()
}

/// Runs a server through client-first and server-first for `client_first` with a fixed
/// server nonce "SNONCE", returning the server.
fn server_after_first(hash: ScramHash, client_first: &str, creds: Option<&ScramCredentials>) -> ScramServer {
    let mut server = ScramServer::new(hash);
    server.handle_client_first(client_first.as_bytes()).unwrap();
    let first = server.server_first_with_nonce(creds, "SNONCE");
    assert!(!first.is_empty());
    server
}

#[test]
fn rfc5802_sha1_example() {
    let salt = STANDARD.decode("QSXCR+Q6sek8bf92").unwrap();
    let creds = ScramCredentials::derive(ScramHash::Sha1, "pencil", &salt, 4096).unwrap();

    let mut client = ScramClient::with_nonce(ScramHash::Sha1, "user", "pencil", "fyko+d2lbbFgONRv9qkxdawL");
    let client_first = client.client_first();
    assert_eq!(s(&client_first), "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL");

    let mut server = ScramServer::new(ScramHash::Sha1);
    let first = server.handle_client_first(&client_first).unwrap();
    assert_eq!(first, ClientFirst { username: "user".into(), authzid: None });

    let server_first = server.server_first_with_nonce(Some(&creds), "3rfcNHYJY1ZVvWVs7j");
    assert_eq!(s(&server_first), "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096");

    let client_final = client.handle_server_first(&server_first).unwrap();
    assert_eq!(s(&client_final), "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=");

    let server_final = server.handle_client_final(&client_final).unwrap();
    assert_eq!(s(&server_final), "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=");
    client.verify_server_final(&server_final).unwrap();
}

#[test]
fn rfc7677_sha256_example() {
    let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
    let creds = ScramCredentials::derive(ScramHash::Sha256, "pencil", &salt, 4096).unwrap();

    let mut client = ScramClient::with_nonce(ScramHash::Sha256, "user", "pencil", "rOprNGfwEbeRWgbNEkqO");
    let client_first = client.client_first();
    assert_eq!(s(&client_first), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");

    let mut server = ScramServer::new(ScramHash::Sha256);
    assert_eq!(server.handle_client_first(&client_first).unwrap().username, "user");
    let server_first = server.server_first_with_nonce(Some(&creds), "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
    assert_eq!(
        s(&server_first),
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    );

    let client_final = client.handle_server_first(&server_first).unwrap();
    assert_eq!(
        s(&client_final),
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    );

    let server_final = server.handle_client_final(&client_final).unwrap();
    assert_eq!(s(&server_final), "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    client.verify_server_final(&server_final).unwrap();
}

fn exchange(hash: ScramHash, creds: Option<&ScramCredentials>, user: &str, password: &str) -> Result<(), SaslError> {
    let mut client = ScramClient::new(hash, user, password);
    let mut server = ScramServer::new(hash);
    let first = server.handle_client_first(&client.client_first())?;
    assert_eq!(first.username, user);
    let server_first = server.server_first(creds);
    let client_final = client.handle_server_first(&server_first)?;
    let server_final = server.handle_client_final(&client_final)?;
    client.verify_server_final(&server_final)
}

#[test]
fn round_trip_both_hashes() {
    for hash in ScramHash::ALL {
        let creds = ScramCredentials::generate(hash, "correct horse battery staple", 4096).unwrap();
        exchange(hash, Some(&creds), "alice", "correct horse battery staple").unwrap();
        // Usernames that need escaping survive the round trip.
        exchange(hash, Some(&creds), "a,b=c", "correct horse battery staple").unwrap();
    }
}

#[test]
fn random_server_nonces_differ() {
    let creds = ScramCredentials::generate(ScramHash::Sha256, "pw", 4096).unwrap();
    let mut nonces = Vec::new();
    for _ in 0..2 {
        let mut server = ScramServer::new(ScramHash::Sha256);
        server.handle_client_first(b"n,,n=alice,r=abc").unwrap();
        let first = String::from_utf8(server.server_first(Some(&creds))).unwrap();
        let nonce = first.strip_prefix("r=abc").unwrap().split(',').next().unwrap().to_owned();
        assert!(nonce.len() >= 16, "{nonce}");
        nonces.push(nonce);
    }
    assert_ne!(nonces[0], nonces[1]);
}

#[test]
fn wrong_password_is_invalid_proof() {
    for hash in ScramHash::ALL {
        let creds = ScramCredentials::generate(hash, "pencil", 4096).unwrap();
        let err = exchange(hash, Some(&creds), "alice", "crayon").unwrap_err();
        assert_eq!(err, SaslError::InvalidProof);
        assert_eq!(err.condition(), "not-authorized");
    }
}

#[test]
fn saslprep_applies_to_both_sides() {
    let creds = ScramCredentials::generate(ScramHash::Sha256, "pass\u{00A0}word\u{00AD}", 4096).unwrap();
    exchange(ScramHash::Sha256, Some(&creds), "alice", "pass word").unwrap();
    let err = exchange(ScramHash::Sha256, Some(&creds), "alice", "pass\u{0007}word").unwrap_err();
    assert!(matches!(err, SaslError::InvalidPassword(_)), "{err:?}");
}

#[test]
fn unknown_user_fails_only_at_final() {
    for hash in ScramHash::ALL {
        let mut client = ScramClient::with_nonce(hash, "nobody", "pencil", "cnonce");
        let mut server = ScramServer::new(hash);
        server.handle_client_first(&client.client_first()).unwrap();
        let server_first = String::from_utf8(server.server_first_with_nonce(None, "snonce")).unwrap();

        // Looks like a normal server-first: same shape, 16-byte salt, 4096 iterations.
        let rest = server_first.strip_prefix("r=cnoncesnonce,s=").unwrap();
        let (salt, iterations) = rest.split_once(",i=").unwrap();
        assert_eq!(STANDARD.decode(salt).unwrap().len(), 16);
        assert_eq!(iterations, "4096");

        let client_final = client.handle_server_first(server_first.as_bytes()).unwrap();
        let err = server.handle_client_final(&client_final).unwrap_err();
        assert_eq!(err, SaslError::UnknownUser);
        assert_eq!(err.condition(), "not-authorized");
        assert_eq!(err.condition(), SaslError::InvalidProof.condition());
    }
}

fn fake_salt(hash: ScramHash, user: &str) -> String {
    let mut server = ScramServer::new(hash);
    server.handle_client_first(format!("n,,n={user},r=x").as_bytes()).unwrap();
    let first = String::from_utf8(server.server_first_with_nonce(None, "y")).unwrap();
    first.split(',').nth(1).unwrap().to_owned()
}

#[test]
fn unknown_user_salt_is_deterministic_per_user_and_hash() {
    assert_eq!(fake_salt(ScramHash::Sha256, "ghost"), fake_salt(ScramHash::Sha256, "ghost"));
    assert_ne!(fake_salt(ScramHash::Sha256, "ghost"), fake_salt(ScramHash::Sha256, "ghost2"));
    assert_ne!(fake_salt(ScramHash::Sha256, "ghost"), fake_salt(ScramHash::Sha1, "ghost"));
}

#[test]
fn credentials_for_another_hash_are_treated_as_unknown() {
    let creds = ScramCredentials::generate(ScramHash::Sha1, "pencil", 4096).unwrap();
    assert_eq!(exchange(ScramHash::Sha256, Some(&creds), "alice", "pencil"), Err(SaslError::UnknownUser));
}

#[test]
fn malformed_client_first() {
    let cases: &[(&[u8], SaslError)] = &[
        (b"", SaslError::Malformed("missing GS2 header")),
        (b"n", SaslError::Malformed("missing GS2 header")),
        (b"n,", SaslError::Malformed("missing GS2 header")),
        (b"x,,n=user,r=abc", SaslError::Malformed("invalid GS2 channel binding flag")),
        (b"N,,n=user,r=abc", SaslError::Malformed("invalid GS2 channel binding flag")),
        (b"p,,n=user,r=abc", SaslError::Malformed("invalid GS2 channel binding flag")),
        (b"n,b=x,n=user,r=abc", SaslError::Malformed("invalid GS2 authorization identity")),
        (b"n,a=,n=user,r=abc", SaslError::Malformed("empty saslname")),
        (b"n,,", SaslError::Malformed("invalid attribute")),
        (b"n,,r=abc", SaslError::Malformed("missing username")),
        (b"n,,n=user", SaslError::Malformed("missing nonce")),
        (b"n,,n=user,s=abc", SaslError::Malformed("missing nonce")),
        (b"n,,n=user,r=", SaslError::Malformed("invalid nonce")),
        (b"n,,n=user,r=a b", SaslError::Malformed("invalid nonce")),
        (b"n,,n=,r=abc", SaslError::Malformed("empty saslname")),
        (b"n,,n=us=er,r=abc", SaslError::Malformed("invalid escape in saslname")),
        (b"n,,n=user,r=abc,", SaslError::Malformed("invalid attribute")),
        (b"n,,n=user,r=abc,junk", SaslError::Malformed("invalid attribute")),
        (b"n,,m=ext,n=user,r=abc", SaslError::Malformed("mandatory extensions are not supported")),
        (b"n,,n=user,m=ext,r=abc", SaslError::Malformed("mandatory extensions are not supported")),
        (b"n,,n=us\xffer,r=abc", SaslError::Malformed("message is not UTF-8")),
    ];
    for (msg, expected) in cases {
        let mut server = ScramServer::new(ScramHash::Sha256);
        let err = server.handle_client_first(msg).unwrap_err();
        assert_eq!(&err, expected, "{:?}", String::from_utf8_lossy(msg));
        assert_eq!(err.condition(), "malformed-request");
        // The exchange is over.
        assert!(server.server_first(None).is_empty());
        assert_eq!(server.handle_client_final(b"c=biws,r=abc,p=AAAA"), Err(SaslError::OutOfOrder));
    }
}

#[test]
fn optional_extensions_in_client_first_are_ignored() {
    let mut server = ScramServer::new(ScramHash::Sha1);
    let first = server.handle_client_first(b"n,,n=user,r=abc,x=whatever,y=").unwrap();
    assert_eq!(first.username, "user");
}

#[test]
fn channel_binding_required_is_rejected() {
    let mut server = ScramServer::new(ScramHash::Sha256);
    let err = server.handle_client_first(b"p=tls-exporter,,n=user,r=abc").unwrap_err();
    assert_eq!(err, SaslError::ChannelBindingUnsupported);
    assert_eq!(err.condition(), "malformed-request");
    let mut server = ScramServer::new(ScramHash::Sha1);
    assert_eq!(
        server.handle_client_first(b"p=tls-unique,a=admin,n=user,r=abc"),
        Err(SaslError::ChannelBindingUnsupported)
    );
}

#[test]
fn saslname_escaping_and_authzid() {
    let mut server = ScramServer::new(ScramHash::Sha256);
    let first = server.handle_client_first(b"n,a=ad=3Dmin=2Cx,n=a=2Cb=3Dc,r=abc").unwrap();
    assert_eq!(first, ClientFirst { username: "a,b=c".into(), authzid: Some("ad=min,x".into()) });

    let mut client = ScramClient::with_nonce(ScramHash::Sha256, "a,b=c", "pw", "abc");
    assert_eq!(s(&client.client_first()), "n,,n=a=2Cb=3Dc,r=abc");
}

#[test]
fn authzid_round_trip_echoes_the_full_gs2_header() {
    for hash in ScramHash::ALL {
        let creds = ScramCredentials::generate(hash, "pw", 4096).unwrap();
        let mut client = ScramClient::with_nonce(hash, "alice", "pw", "abc").with_authzid("alice@example.com,x");
        let client_first = client.client_first();
        assert_eq!(s(&client_first), "n,a=alice@example.com=2Cx,n=alice,r=abc");
        let mut server = ScramServer::new(hash);
        let first = server.handle_client_first(&client_first).unwrap();
        assert_eq!(first.authzid.as_deref(), Some("alice@example.com,x"));
        let server_first = server.server_first(Some(&creds));
        let client_final = client.handle_server_first(&server_first).unwrap();
        let expected_c = format!("c={},", STANDARD.encode("n,a=alice@example.com=2Cx,"));
        assert!(s(&client_final).starts_with(&expected_c), "{}", s(&client_final));
        let server_final = server.handle_client_final(&client_final).unwrap();
        client.verify_server_final(&server_final).unwrap();
    }
}

#[test]
fn gs2_y_flag_and_authzid_are_echoed_in_channel_binding() {
    let creds = ScramCredentials::generate(ScramHash::Sha256, "pw", 4096).unwrap();
    // "y,a=admin," base64 is "eSxhPWFkbWluLA=="; a "n,," echo ("biws") must be refused.
    let mut server = server_after_first(ScramHash::Sha256, "y,a=admin,n=user,r=abc", Some(&creds));
    assert_eq!(server.handle_client_final(b"c=biws,r=abcSNONCE,p=AAAA"), Err(SaslError::ChannelBindingMismatch));
    let mut server = server_after_first(ScramHash::Sha256, "y,a=admin,n=user,r=abc", Some(&creds));
    assert_eq!(server.handle_client_final(b"c=eSxhPWFkbWluLA==,r=abcSNONCE,p=AAAA"), Err(SaslError::InvalidProof));
}

#[test]
fn malformed_client_final() {
    let creds = ScramCredentials::generate(ScramHash::Sha1, "pencil", 4096).unwrap();
    let good_proof = "p=AAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let cases: Vec<(String, SaslError)> = vec![
        ("".into(), SaslError::Malformed("missing proof")),
        ("c=biws,r=abcSNONCE".into(), SaslError::Malformed("missing proof")),
        (format!("r=abcSNONCE,{good_proof}"), SaslError::Malformed("missing channel binding")),
        (format!("c=biws,{good_proof}"), SaslError::Malformed("missing nonce")),
        ("c=biws,r=abcSNONCE,p=not*base64".into(), SaslError::Malformed("invalid base64")),
        ("c=biws,r=abcSNONCE,p=".into(), SaslError::Malformed("empty base64 value")),
        ("c=biws,r=abcSNONCE,p=AAAA=".into(), SaslError::Malformed("invalid base64")),
        (format!("c=bi!ws,r=abcSNONCE,{good_proof}"), SaslError::Malformed("invalid base64")),
        (format!("c=biws,r=abcSNONCE,{good_proof},x=1"), SaslError::Malformed("missing proof")),
        (format!("c=biws,r=abcSNONCE,junk,{good_proof}"), SaslError::Malformed("invalid attribute")),
        (
            format!("c=biws,m=x,r=abcSNONCE,{good_proof}"),
            SaslError::Malformed("mandatory extensions are not supported"),
        ),
        (format!("c=biws,r=abcSNONCE,{good_proof}").replace("c=biws", "c=eSws"), SaslError::ChannelBindingMismatch),
        (format!("c=biws,r=abcOTHER,{good_proof}"), SaslError::NonceMismatch),
        (format!("c=biws,r=abc,{good_proof}"), SaslError::NonceMismatch),
        (format!("c=biws,r=abcSNONCEX,{good_proof}"), SaslError::NonceMismatch),
        // Well-formed but wrong: wrong length proof and wrong proof.
        ("c=biws,r=abcSNONCE,p=AAAA".into(), SaslError::InvalidProof),
        (format!("c=biws,r=abcSNONCE,{good_proof}"), SaslError::InvalidProof),
        // An ignored extension before the proof is fine (and still fails on the proof).
        (format!("c=biws,r=abcSNONCE,x=ext,{good_proof}"), SaslError::InvalidProof),
    ];
    for (msg, expected) in cases {
        let mut server = server_after_first(ScramHash::Sha1, "n,,n=user,r=abc", Some(&creds));
        assert_eq!(server.handle_client_final(msg.as_bytes()), Err(expected.clone()), "{msg}");
        // One attempt per exchange.
        assert_eq!(server.handle_client_final(msg.as_bytes()), Err(SaslError::OutOfOrder));
    }
    assert_eq!(SaslError::NonceMismatch.condition(), "malformed-request");
    assert_eq!(SaslError::Malformed("x").condition(), "malformed-request");
}

#[test]
fn tampered_client_final_fails() {
    let creds = ScramCredentials::generate(ScramHash::Sha256, "pencil", 4096).unwrap();
    let mut client = ScramClient::with_nonce(ScramHash::Sha256, "alice", "pencil", "abc");
    let mut server = ScramServer::new(ScramHash::Sha256);
    server.handle_client_first(&client.client_first()).unwrap();
    let server_first = server.server_first_with_nonce(Some(&creds), "SNONCE");
    let client_final = String::from_utf8(client.handle_server_first(&server_first).unwrap()).unwrap();
    // Adding an extension changes the AuthMessage: the proof no longer matches.
    let tampered = client_final.replace(",p=", ",x=1,p=");
    assert_eq!(server.handle_client_final(tampered.as_bytes()), Err(SaslError::InvalidProof));
}

#[test]
fn steps_out_of_order() {
    let mut server = ScramServer::new(ScramHash::Sha256);
    assert_eq!(server.handle_client_final(b"c=biws,r=abc,p=AAAA"), Err(SaslError::OutOfOrder));

    let mut server = ScramServer::new(ScramHash::Sha256);
    assert!(server.server_first(None).is_empty());
    assert_eq!(server.handle_client_first(b"n,,n=user,r=abc"), Err(SaslError::OutOfOrder));

    let mut server = ScramServer::new(ScramHash::Sha256);
    server.handle_client_first(b"n,,n=user,r=abc").unwrap();
    assert_eq!(server.handle_client_first(b"n,,n=user,r=abc"), Err(SaslError::OutOfOrder));
    assert_eq!(SaslError::OutOfOrder.condition(), "malformed-request");

    // An invalid fixed nonce ends the exchange instead of producing a broken message.
    let mut server = ScramServer::new(ScramHash::Sha256);
    server.handle_client_first(b"n,,n=user,r=abc").unwrap();
    assert!(server.server_first_with_nonce(None, "a,b").is_empty());
    assert_eq!(server.handle_client_final(b"c=biws,r=abca,p=AAAA"), Err(SaslError::OutOfOrder));

    let mut client = ScramClient::new(ScramHash::Sha1, "user", "pencil");
    assert_eq!(client.handle_server_first(b"r=x,s=QQ==,i=1"), Err(SaslError::OutOfOrder));
    assert_eq!(client.verify_server_final(b"v=AAAA"), Err(SaslError::OutOfOrder));
}

#[test]
fn client_checks_server_messages() {
    let start = || {
        let mut client = ScramClient::with_nonce(ScramHash::Sha1, "user", "pencil", "abc");
        client.client_first();
        client
    };
    let cases: &[(&str, SaslError)] = &[
        ("r=abc,s=QQ==,i=1", SaslError::NonceMismatch),
        ("r=xyzdef,s=QQ==,i=1", SaslError::NonceMismatch),
        ("r=abcdef,s=,i=1", SaslError::Malformed("empty base64 value")),
        ("r=abcdef,s=Q,i=1", SaslError::Malformed("invalid base64")),
        ("r=abcdef,s=QQ==,i=0", SaslError::Malformed("invalid iteration count")),
        ("r=abcdef,s=QQ==,i=+1", SaslError::Malformed("invalid iteration count")),
        ("r=abcdef,s=QQ==,i=99999999999", SaslError::Malformed("invalid iteration count")),
        ("r=abcdef,s=QQ==,i=", SaslError::Malformed("invalid iteration count")),
        ("r=abcdef,s=QQ==", SaslError::Malformed("missing iteration count")),
        ("r=abcdef,i=1", SaslError::Malformed("missing salt")),
        ("m=x,r=abcdef,s=QQ==,i=1", SaslError::Malformed("mandatory extensions are not supported")),
        ("e=other-error", SaslError::Malformed("missing nonce")),
    ];
    for (msg, expected) in cases {
        assert_eq!(start().handle_server_first(msg.as_bytes()), Err(expected.clone()), "{msg}");
    }
    let mut client = start();
    client.handle_server_first(b"r=abcdef,s=QQ==,i=1,x=ext").unwrap();
    assert_eq!(client.verify_server_final(b"e=invalid-proof"), Err(SaslError::ServerError("invalid-proof".into())));
    assert_eq!(client.verify_server_final(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAA="), Err(SaslError::InvalidServerSignature));
    assert_eq!(client.verify_server_final(b"v=**"), Err(SaslError::Malformed("invalid base64")));
    assert_eq!(client.verify_server_final(b"x=1"), Err(SaslError::Malformed("missing verifier")));
}

#[test]
fn client_rejects_a_server_final_from_another_exchange() {
    let mut client = ScramClient::with_nonce(ScramHash::Sha1, "user", "pencil", "fyko+d2lbbFgONRv9qkxdawL");
    client.client_first();
    // Same salt, different server nonce: the RFC's server signature must not verify.
    client.handle_server_first(b"r=fyko+d2lbbFgONRv9qkxdawLother,s=QSXCR+Q6sek8bf92,i=4096").unwrap();
    assert_eq!(client.verify_server_final(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ="), Err(SaslError::InvalidServerSignature));
}

#[test]
fn client_debug_redacts_password() {
    let client = ScramClient::new(ScramHash::Sha256, "alice", "hunter2");
    let debug = format!("{client:?}");
    assert!(debug.contains("alice"));
    assert!(!debug.contains("hunter2"));
}

#[test]
fn cached_salted_password_gives_the_same_proof_and_is_ignored_for_another_salt() {
    let first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    let expected =
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    let mut client = ScramClient::with_nonce(ScramHash::Sha256, "user", "pencil", "rOprNGfwEbeRWgbNEkqO");
    client.client_first();
    assert_eq!(s(&client.handle_server_first(first.as_bytes()).unwrap()), expected);
    let cached = client.salted_password().unwrap().clone();
    assert_eq!(cached.iterations, 4096);

    // A cached value is used as is: a client with the wrong password but the right
    // cache still produces the RFC's proof.
    let mut again = ScramClient::with_nonce(ScramHash::Sha256, "user", "not the password", "rOprNGfwEbeRWgbNEkqO")
        .with_cached_salted_password(cached.clone());
    again.client_first();
    assert_eq!(s(&again.handle_server_first(first.as_bytes()).unwrap()), expected);

    // Another iteration count: the cache does not apply, the password is used.
    let other = first.replace("i=4096", "i=4097");
    let mut fresh = ScramClient::with_nonce(ScramHash::Sha256, "user", "pencil", "rOprNGfwEbeRWgbNEkqO")
        .with_cached_salted_password(cached.clone());
    fresh.client_first();
    fresh.handle_server_first(other.as_bytes()).unwrap();
    assert_eq!(fresh.salted_password().unwrap().iterations, 4097);
    assert_ne!(fresh.salted_password().unwrap().salted, cached.salted);
}
