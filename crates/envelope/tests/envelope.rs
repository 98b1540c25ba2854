//! Envelopes as an attacker meets them: every byte of a signed envelope matters, a
//! signature is its source twin's only, a sealed payload opens for its recipient only and
//! in its own envelope only, a replay is refused while expiries let uid reuse through.
//! And the test vectors in `tests/vectors.json`, which the Python tests check with
//! independent libraries (PyNaCl, cryptography).

use proptest::prelude::*;
use trunkline_envelope::envelope::{MAX_CLOCK_SKEW, MAX_TTL};
use trunkline_envelope::seal::{associated_data, open, seal, seal_with_nonce};
use trunkline_envelope::{Address, Envelope, EnvelopeError, Identity, Kind, Payload, ReplayWindow};

const NOW: u64 = 1_800_000_000;

fn alice() -> Identity {
    Identity::from_seed(&[0xa1; 32])
}

fn bob() -> Identity {
    Identity::from_seed(&[0xb0; 32])
}

fn request(uid: &str, from: &Identity, to: &Identity, body: &[u8]) -> Envelope {
    let (src, dst) = (Address::twin(41), Address::parse("42:s1").expect("address"));
    let ad = associated_data(&src, &dst, uid);
    let cipher = seal(body, from, &to.public(), &ad).expect("seal");
    let mut e = Envelope::new(
        uid,
        src,
        dst,
        Kind::Request {
            command: "calc.add".into(),
        },
        Payload::Cipher(cipher),
        NOW,
        120,
    );
    e.tags = Some("fail-fast".into());
    e.schema = Some("application/json".into());
    e.sign(from).expect("sign");
    e
}

#[test]
fn a_signed_envelope_round_trips_and_opens_for_its_recipient_only() {
    let (a, b) = (alice(), bob());
    let e = request("u-1", &a, &b, b"{\"x\":1}");
    let wire = e.encode().expect("encode");
    let got = Envelope::decode(&wire).expect("decode");
    assert_eq!(got, e);
    got.verify(&a.public()).expect("alice's signature");
    got.check_time(NOW + 60).expect("current");
    let ad = associated_data(&got.source, &got.destination, &got.uid);
    assert_eq!(
        open(got.payload.bytes(), &b, &a.public(), &ad).expect("open"),
        b"{\"x\":1}"
    );
    // Someone else (the relay, any third twin) cannot open it.
    let eve = Identity::from_seed(&[0xee; 32]);
    assert!(open(got.payload.bytes(), &eve, &a.public(), &ad).is_err());
    // And the plaintext is nowhere in what travels.
    assert!(!wire.windows(7).any(|w| w == b"{\"x\":1}"));
}

#[test]
fn every_byte_of_a_signed_envelope_is_covered() {
    let (a, b) = (alice(), bob());
    let wire = request("u-2", &a, &b, b"payload").encode().expect("encode");
    for i in 0..wire.len() {
        for bit in [0x01u8, 0x80] {
            let mut t = wire.clone();
            t[i] ^= bit;
            if let Ok(e) = Envelope::decode(&t) {
                assert_eq!(
                    e.verify(&a.public()),
                    Err(EnvelopeError::BadSignature),
                    "byte {i} flipped with {bit:#x} still verifies"
                );
            }
        }
    }
}

#[test]
fn a_forged_or_resigned_source_does_not_verify() {
    let (a, b) = (alice(), bob());
    let eve = Identity::from_seed(&[0xee; 32]);
    // Eve signs an envelope claiming to be from Alice's twin.
    let forged = request("u-3", &eve, &b, b"x");
    assert_eq!(forged.verify(&a.public()), Err(EnvelopeError::BadSignature));
    // Eve takes Alice's envelope, changes its source to her own twin, signs it again: it
    // verifies as Eve's, and its sealed payload no longer opens (bound to Alice's
    // address and key).
    let mut taken = request("u-4", &a, &b, b"secret");
    taken.source = Address::twin(66);
    taken.sign(&eve).expect("sign");
    taken.verify(&eve.public()).expect("eve's now");
    let ad = associated_data(&taken.source, &taken.destination, &taken.uid);
    assert!(open(taken.payload.bytes(), &b, &eve.public(), &ad).is_err());
    assert!(open(taken.payload.bytes(), &b, &a.public(), &ad).is_err());
}

#[test]
fn a_sealed_payload_opens_in_its_own_envelope_only() {
    let (a, b) = (alice(), bob());
    let (src, dst) = (Address::twin(41), Address::twin(42));
    let ad = associated_data(&src, &dst, "u-5");
    let cipher = seal(b"m", &a, &b.public(), &ad).expect("seal");
    for (s, d, uid) in [
        (Address::twin(41), Address::twin(42), "u-6"),
        (Address::twin(41), Address::parse("42:x").expect("a"), "u-5"),
        (Address::twin(43), Address::twin(42), "u-5"),
    ] {
        assert!(open(&cipher, &b, &a.public(), &associated_data(&s, &d, uid)).is_err());
    }
    let mut tampered = cipher.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(open(&tampered, &b, &a.public(), &ad).is_err());
    assert!(open(&cipher[..20], &b, &a.public(), &ad).is_err());
    // The reverse direction has its own key: Bob cannot pass Alice's words back as his.
    assert!(open(&cipher, &a, &b.public(), &ad).is_err());
    // Fresh nonces: the same payload seals differently each time.
    assert_ne!(seal(b"m", &a, &b.public(), &ad).expect("seal"), cipher);
}

#[test]
fn time_is_checked_against_expiry_and_skew() {
    let e = request("u-7", &alice(), &bob(), b"");
    assert!(e.check_time(NOW).is_ok());
    assert_eq!(e.check_time(NOW + 120), Err(EnvelopeError::Expired(0)));
    assert_eq!(e.check_time(NOW + 130), Err(EnvelopeError::Expired(10)));
    assert!(e.check_time(NOW - MAX_CLOCK_SKEW).is_ok());
    assert_eq!(
        e.check_time(NOW - MAX_CLOCK_SKEW - 5),
        Err(EnvelopeError::FromTheFuture(MAX_CLOCK_SKEW + 5))
    );
    // A life is capped, and none is the default.
    let long = Envelope::new(
        "u",
        Address::twin(1),
        Address::twin(2),
        Kind::Ping,
        Payload::Plain(vec![]),
        NOW,
        100_000,
    );
    assert_eq!(long.expiration, MAX_TTL);
    let none = Envelope::new(
        "u",
        Address::twin(1),
        Address::twin(2),
        Kind::Ping,
        Payload::Plain(vec![]),
        NOW,
        0,
    );
    assert_eq!(none.expiration, 300);
}

#[test]
fn a_replay_is_refused_and_a_reused_uid_is_not() {
    let (a, b) = (alice(), bob());
    let mut w = ReplayWindow::new(100);
    let req = request("u-8", &a, &b, b"q");
    w.check(&req, NOW).expect("first");
    assert_eq!(w.check(&req, NOW + 1), Err(EnvelopeError::Replay));
    // The same bytes decoded again are the same envelope.
    let again = Envelope::decode(&req.encode().expect("e")).expect("d");
    assert_eq!(w.check(&again, NOW + 2), Err(EnvelopeError::Replay));
    // The response carries the request's uid; a request to another twin shares it too.
    let mut resp = Envelope::new(
        "u-8",
        req.destination.clone(),
        req.source.clone(),
        Kind::Response,
        Payload::Plain(b"r".to_vec()),
        NOW,
        60,
    );
    resp.sign(&b).expect("sign");
    w.check(&resp, NOW + 3)
        .expect("a response with the request's uid");
    let mut other = req.clone();
    other.destination = Address::twin(43);
    other.sign(&a).expect("sign");
    w.check(&other, NOW + 3)
        .expect("the same request to another twin");
    // Once expired it is forgotten (and refused as expired before it gets here).
    assert_eq!(w.len(), 3);
    w.check(&request("u-9", &a, &b, b""), NOW + 200)
        .expect("new");
    assert_eq!(w.len(), 1, "the expired ones are gone");
}

#[test]
fn decoding_refuses_anything_but_the_exact_form() {
    let wire = request("u-10", &alice(), &bob(), b"p")
        .encode()
        .expect("encode");
    let mut trailing = wire.clone();
    trailing.push(0);
    assert!(Envelope::decode(&trailing).is_err());
    for n in [0, 3, 4, 10, wire.len() - 1] {
        assert!(Envelope::decode(&wire[..n]).is_err(), "truncated at {n}");
    }
    let mut bad_magic = wire.clone();
    bad_magic[3] = 2;
    assert!(Envelope::decode(&bad_magic).is_err());
    // The uid's length byte says 0.
    let mut empty_uid = wire.clone();
    empty_uid[4] = 0;
    assert!(Envelope::decode(&empty_uid).is_err());
    // A session that is not one, and a twin that is not a number.
    for bad in ["", "x", "41:", "41:a:b", "+41", "4294967296"] {
        assert_eq!(Address::parse(bad), None, "{bad}");
    }
    assert_eq!(
        Address::parse("41:s").map(|a| a.to_string()).as_deref(),
        Some("41:s")
    );
}

fn arb_envelope() -> impl Strategy<Value = Envelope> {
    (
        "[a-z0-9-]{1,40}",
        proptest::option::of("[ -~]{0,50}"),
        any::<u64>(),
        1u32..=MAX_TTL,
        (any::<u32>(), proptest::option::of("[a-z0-9]{1,20}")),
        (any::<u32>(), proptest::option::of("[a-z0-9]{1,20}")),
        prop_oneof![
            "[a-z.]{1,30}".prop_map(|command| Kind::Request { command }),
            Just(Kind::Response),
            (any::<u32>(), "[ -~]{0,80}").prop_map(|(code, message)| Kind::Error { code, message }),
            Just(Kind::Ping),
            Just(Kind::Pong),
        ],
        proptest::option::of("[a-z/]{0,30}"),
        (
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..300),
        ),
    )
        .prop_map(
            |(uid, tags, ts, exp, src, dst, kind, schema, (cipher, data))| Envelope {
                uid,
                tags,
                timestamp: ts,
                expiration: exp,
                source: Address {
                    twin: src.0,
                    session: src.1,
                },
                destination: Address {
                    twin: dst.0,
                    session: dst.1,
                },
                kind,
                schema,
                payload: if cipher {
                    Payload::Cipher(data)
                } else {
                    Payload::Plain(data)
                },
                signature: [0; 64],
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn any_envelope_round_trips_signed(mut e in arb_envelope()) {
        let a = alice();
        e.sign(&a).unwrap();
        let wire = e.encode().unwrap();
        let got = Envelope::decode(&wire).unwrap();
        prop_assert_eq!(&got, &e);
        prop_assert!(got.verify(&a.public()).is_ok());
    }

    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = Envelope::decode(&bytes);
    }
}

/// The vectors the Python tests check. Regenerate with
/// `TRUNKLINE_WRITE_VECTORS=1 cargo test -p trunkline-envelope --test envelope vectors`.
#[test]
fn test_vectors_are_what_the_code_makes() {
    let (a, b) = (alice(), bob());
    let (src, dst) = (Address::twin(41), Address::parse("42:s1").expect("address"));
    let ad = associated_data(&src, &dst, "vector-1");
    let plain = b"{\"op\":\"add\",\"args\":[1,2]}".to_vec();
    let cipher = seal_with_nonce(&plain, &a, &b.public(), &ad, [7; 24]).expect("seal");
    let mut e = Envelope::new(
        "vector-1",
        src,
        dst,
        Kind::Request {
            command: "calc.add".into(),
        },
        Payload::Cipher(cipher.clone()),
        NOW,
        300,
    );
    e.schema = Some("application/json".into());
    e.sign(&a).expect("sign");
    let login = trunkline_envelope::Login::sign(
        &a,
        [9; 32],
        trunkline_envelope::Who::Twin {
            id: 41,
            session: Some("s1".into()),
        },
        NOW,
    )
    .expect("login");
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let vectors = serde_json::json!({
        "about": "Made by crates/envelope/tests/envelope.rs; checked by tests/interop/test_envelope_vectors.py",
        "sender_seed": hex(&a.seed()),
        "sender_public": a.public().to_text(),
        "recipient_seed": hex(&b.seed()),
        "recipient_public": b.public().to_text(),
        "associated_data": hex(&ad),
        "nonce": hex(&[7; 24]),
        "plain": hex(&plain),
        "cipher": hex(&cipher),
        "envelope": hex(&e.encode().expect("encode")),
        "signed_prefix": hex(trunkline_envelope::envelope::DOMAIN),
        "seal_salt": hex(trunkline_envelope::seal::SEAL_SALT),
        "login_challenge": hex(&[9; 32]),
        "login": hex(&login.encode().expect("encode")),
        "login_prefix": hex(trunkline_envelope::login::LOGIN_DOMAIN),
    });
    let text = serde_json::to_string_pretty(&vectors).expect("json") + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors.json");
    if std::env::var_os("TRUNKLINE_WRITE_VECTORS").is_some() {
        std::fs::write(&path, &text).expect("write vectors");
    }
    let stored =
        std::fs::read_to_string(&path).expect("tests/vectors.json (regenerate it: see this test)");
    assert_eq!(stored, text, "the code no longer makes the stored vectors");
}
