//! `Debug` of every public secret-bearing type must not reveal secret bytes: not in lower- or
//! upper-case hex, not as a decimal or hex byte list (`{:?}`, `{:#?}`, `{:x?}`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{Device, Routed, bob_receive, len_fields, parse_proto, prekey, rng};
use confidant::hazmat::{self, Ratchet};
use confidant::server::{DeviceKeys, PreKeyUpload};
use confidant::{
    IdentityKeyPair, KEM_CIPHERTEXT_LEN, KEM_PUBLIC_KEY_LEN, KemPreKeyPublic, Message,
    PreKeyBundle, PreKeys, Session,
};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::Rng;
use sha2::{Digest, Sha512};

/// Consecutive secret bytes that count as a leak (8 bytes: 2^-64 chance of a false match).
const WINDOW: usize = 8;

/// Byte values found in `text`, parsed two ways: decimal tokens and hex tokens (`0x` optional).
/// Each token sequence is split at non-alphanumeric characters, so any list formatting works.
fn byte_lists(text: &str) -> [Vec<Option<u8>>; 2] {
    let tokens: Vec<&str> = text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty())
        .collect();
    let decimal = tokens.iter().map(|t| t.parse::<u8>().ok()).collect();
    let hex = tokens
        .iter()
        .map(|t| {
            let t = t.strip_prefix("0x").unwrap_or(t);
            if t.len() <= 2 {
                u8::from_str_radix(t, 16).ok()
            } else {
                None
            }
        })
        .collect();
    [decimal, hex]
}

/// Describes how `secret` leaks into `text`, if it does.
fn leak(text: &str, secret: &[u8]) -> Option<String> {
    assert!(secret.len() >= WINDOW);
    let lists = byte_lists(text);
    for w in secret.windows(WINDOW) {
        let lower = hex::encode(w);
        if text.contains(&lower) {
            return Some(format!("lower-case hex {lower}"));
        }
        let upper = hex::encode_upper(w);
        if text.contains(&upper) {
            return Some(format!("upper-case hex {upper}"));
        }
        for list in &lists {
            if list
                .windows(WINDOW)
                .any(|l| l.iter().zip(w).all(|(a, b)| *a == Some(*b)))
            {
                return Some(format!("byte list {w:?}"));
            }
        }
    }
    None
}

/// Asserts that neither `{:?}` nor `{:#?}` of `value` reveals any of `secrets`.
fn assert_redacted(what: &str, value: &impl core::fmt::Debug, secrets: &[Vec<u8>]) {
    assert!(!secrets.is_empty(), "{what}: no secrets to look for");
    for text in [format!("{value:?}"), format!("{value:#?}")] {
        for (i, s) in secrets.iter().enumerate() {
            assert!(s.iter().any(|&b| b != 0), "{what}: secret {i} is all zero");
            if let Some(how) = leak(&text, s) {
                panic!("{what} Debug leaks secret {i} as {how}: {text}");
            }
        }
    }
}

fn random32(rng: &mut ChaCha20Rng) -> [u8; 32] {
    let mut out = [0u8; 32];
    rng.fill_bytes(&mut out);
    out
}

/// The identity's secrets: the seed and its X25519 form `SHA-512(seed)[0..32]` (raw and clamped).
fn identity_secrets(id: &IdentityKeyPair) -> Vec<Vec<u8>> {
    let seed = id.to_seed();
    let h = Sha512::digest(seed.as_slice());
    let raw: Vec<u8> = h[..32].to_vec();
    let mut clamped = raw.clone();
    clamped[0] &= 248;
    clamped[31] &= 127;
    clamped[31] |= 64;
    vec![seed.to_vec(), raw, clamped]
}

/// Every secret in a session snapshot: RK, DHs private, CKs, CKr and every skipped message key.
fn session_secrets(s: &Session) -> Vec<Vec<u8>> {
    let snap = s.snapshot();
    let top = parse_proto(&snap[1..]).expect("session snapshot");
    let ratchet = parse_proto(&len_fields(&top, 7)[0]).expect("ratchet");
    let mut out = Vec::new();
    for field in [2, 3, 5, 6] {
        out.extend(len_fields(&ratchet, field));
    }
    for skipped in len_fields(&ratchet, 10) {
        out.extend(len_fields(&parse_proto(&skipped).expect("skipped"), 3));
    }
    assert!(out.iter().all(|k| k.len() == 32));
    out
}

/// Every private key in a PreKeys snapshot: signed and one-time prekeys (fields 1, 2: 32-byte
/// X25519 keys) and last-resort and one-time KEM prekeys (fields 6, 7: 64-byte ML-KEM seeds
/// `d || z`), each in field 2 of its record.
fn prekey_secrets(p: &PreKeys) -> Vec<Vec<u8>> {
    let snap = p.snapshot();
    let top = parse_proto(&snap[1..]).expect("prekeys snapshot");
    let mut out = Vec::new();
    for (field, len) in [(1, 32), (2, 32), (6, 64), (7, 64)] {
        for record in len_fields(&top, field) {
            let secret = len_fields(&parse_proto(&record).expect("record"), 2);
            assert!(secret.len() == 1 && secret[0].len() == len, "field {field}");
            out.extend(secret);
        }
    }
    out
}

/// The 64-byte seeds of the KEM prekeys in a PreKeys snapshot (fields 6 and 7).
fn kem_seeds(p: &PreKeys) -> Vec<[u8; 64]> {
    let top = parse_proto(&p.snapshot()[1..]).expect("prekeys snapshot");
    [6, 7]
        .into_iter()
        .flat_map(|field| len_fields(&top, field))
        .map(|r| {
            len_fields(&parse_proto(&r).expect("record"), 2)[0]
                .clone()
                .try_into()
                .expect("64-byte seed")
        })
        .collect()
}

#[test]
fn the_leak_detector_detects_leaks() {
    let secret: Vec<u8> = (0u8..32)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let formats = [
        format!("{secret:?}"),
        format!("{secret:#?}"),
        format!("{secret:x?}"),
        format!("{secret:#x?}"),
        format!("{secret:02X?}"),
        hex::encode(&secret),
        hex::encode_upper(&secret),
        format!("Thing {{ key: {} }}", hex::encode(&secret[3..11])),
    ];
    for text in &formats {
        assert!(leak(text, &secret).is_some(), "not detected: {text}");
    }
    assert!(leak("Thing { len: 32, id: 7, key: <redacted> }", &secret).is_none());
}

#[test]
fn identity_key_pair_debug_is_redacted() {
    let mut rng = rng(1);
    let id = IdentityKeyPair::generate(&mut rng);
    assert_redacted("IdentityKeyPair", &id, &identity_secrets(&id));
    // It does show the public key.
    assert!(format!("{id:?}").contains(&hex::encode(id.public().to_bytes())));
}

#[test]
fn prekeys_debug_is_redacted() {
    let mut rng = rng(2);
    let (mut dev, _) = Device::new(&mut rng, 5);
    dev.prekeys
        .rotate_signed_prekey(&mut rng, &dev.identity, common::NOW);
    let mut secrets = prekey_secrets(&dev.prekeys);
    // Two signed prekeys, five one-time prekeys, the last-resort KEM seed.
    assert_eq!(secrets.len(), 2 + 5 + 1);
    secrets.extend(identity_secrets(&dev.identity));
    assert_redacted("PreKeys", &dev.prekeys, &secrets);
}

/// PreKeys holding KEM seeds (a current and a retired last-resort KEM prekey, one-time KEM
/// prekeys, a KEM replay record): no seed, half-seed or X25519 key shows in its Debug.
#[test]
fn prekeys_with_kem_seeds_debug_is_redacted() {
    let mut rng = rng(6);
    let (mut dev, otks) = Device::new_pq(&mut rng, 2);
    dev.prekeys
        .generate_one_time_kem_prekeys(&mut rng, &dev.identity, 3)
        .expect("generate");
    dev.prekeys
        .rotate_last_resort_kem_prekey(&mut rng, &dev.identity, common::NOW);
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let mut alice = common::initiate_pq(&mut rng, &alice_id, &dev, otks.first().copied(), None);
    let wire = alice.encrypt(b"x").expect("encrypt");
    let seeds_before = kem_seeds(&dev.prekeys);
    let Ok(Routed::Accepted(_)) = bob_receive(&mut rng, &mut dev, None, &wire) else {
        panic!("accept")
    };
    let mut secrets = prekey_secrets(&dev.prekeys);
    // Two last-resort seeds and three one-time ones, as the snapshot's fields 6 and 7 hold them.
    assert_eq!(kem_seeds(&dev.prekeys).len(), 2 + 3);
    assert_eq!(secrets.len(), 1 + 1 + 2 + 3);
    for seed in seeds_before {
        // Each half on its own too: `d` and `z` are both secret.
        secrets.push(seed[..32].to_vec());
        secrets.push(seed[32..].to_vec());
    }
    secrets.extend(identity_secrets(&dev.identity));
    assert_redacted("PreKeys with KEM prekeys", &dev.prekeys, &secrets);
    let text = format!("{:?}", dev.prekeys);
    assert!(text.len() < 1000, "PreKeys Debug is {} chars", text.len());
}

/// Alice and Bob with skipped keys on both sides, every state field populated.
fn conversation(seed: u64) -> (ChaCha20Rng, Session, Session, Device, IdentityKeyPair) {
    let mut rng = rng(seed);
    let (mut bob, otks) = Device::new(&mut rng, 1);
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let mut alice = common::initiate(&mut rng, &alice_id, &bob, otks.first().copied());
    let a: Vec<Vec<u8>> = (0..3u8)
        .map(|i| alice.encrypt(&[i; 40]).expect("encrypt"))
        .collect();
    let Ok(Routed::Accepted(acc)) = bob_receive(&mut rng, &mut bob, None, &a[2]) else {
        panic!("accept")
    };
    let mut bob_session = acc.session;
    let b: Vec<Vec<u8>> = (0..3u8)
        .map(|i| bob_session.encrypt(&[i; 40]).expect("encrypt"))
        .collect();
    alice.decrypt_bytes(&mut rng, &b[2]).expect("decrypt");
    let a2 = alice.encrypt(b"again").expect("encrypt");
    bob_session.decrypt_bytes(&mut rng, &a2).expect("decrypt");
    assert!(alice.skipped_keys() == 2 && bob_session.skipped_keys() == 2);
    (rng, alice, bob_session, bob, alice_id)
}

#[test]
fn session_debug_is_redacted() {
    let (_rng, alice, bob_session, bob, alice_id) = conversation(3);
    for (name, s) in [
        ("initiator Session", &alice),
        ("responder Session", &bob_session),
    ] {
        let mut secrets = session_secrets(s);
        assert_eq!(secrets.len(), 4 + 2);
        secrets.extend(identity_secrets(&alice_id));
        secrets.extend(identity_secrets(&bob.identity));
        assert_redacted(name, s, &secrets);
    }
    // A fresh initiator session (no receiving chain yet) too.
    let mut rng = rng(33);
    let (bob, _) = Device::new(&mut rng, 0);
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let fresh = common::initiate(&mut rng, &alice_id, &bob, None);
    assert_redacted("fresh Session", &fresh, &session_secrets(&fresh));
}

#[test]
fn accepted_debug_is_redacted() {
    let mut rng = rng(4);
    let (mut bob, otks) = Device::new(&mut rng, 1);
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let mut alice = common::initiate(&mut rng, &alice_id, &bob, otks.first().copied());
    let plaintext = random32(&mut rng);
    let wire = alice.encrypt(&plaintext).expect("encrypt");
    let prekeys_before = prekey_secrets(&bob.prekeys);
    let Ok(Routed::Accepted(acc)) = bob_receive(&mut rng, &mut bob, None, &wire) else {
        panic!("accept")
    };
    let mut secrets = session_secrets(&acc.session);
    secrets.push(plaintext.to_vec());
    secrets.extend(prekeys_before);
    secrets.extend(identity_secrets(&bob.identity));
    assert_redacted("Accepted", &acc, &secrets);
}

#[test]
fn hazmat_types_debug_is_redacted() {
    let mut rng = rng(5);
    let (bob, otks) = Device::new(&mut rng, 1);
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let ephemeral = random32(&mut rng);
    let bundle = bob.bundle(otks.first().copied());

    // X3dhOutput: SK and every DH output; also the ephemeral private key it came from.
    let x3dh = hazmat::x3dh_initiate(&alice_id, &ephemeral, &bundle, b"appendix").expect("x3dh");
    assert_eq!(x3dh.dh.len(), 4);
    let mut secrets = vec![x3dh.shared_secret.to_vec(), ephemeral.to_vec()];
    secrets.extend(x3dh.dh.iter().map(|d| d.to_vec()));
    secrets.extend(identity_secrets(&alice_id));
    assert_redacted("X3dhOutput", &x3dh, &secrets);

    // Ratchet and RatchetState, on both sides, with every chain populated.
    let spk_private = random32(&mut rng);
    let spk_public = hazmat::x25519_public(&spk_private);
    let sk = x3dh.shared_secret;
    let mut alice =
        Ratchet::init_alice(&mut rng, &sk, &x3dh.associated_data, &spk_public).expect("init");
    let mut bob_r = Ratchet::init_bob(&sk, &x3dh.associated_data, &spk_private);
    let sent = alice.encrypt(b"hi").expect("encrypt");
    let opened = bob_r
        .decrypt(&mut rng, &sent.header, &sent.ciphertext)
        .expect("decrypt");
    let back = bob_r.encrypt(b"back").expect("encrypt");
    alice
        .decrypt(&mut rng, &back.header, &back.ciphertext)
        .expect("decrypt");
    for (name, r) in [("alice", &alice), ("bob", &bob_r)] {
        let state = r.state();
        let mut secrets = vec![sk.to_vec(), spk_private.to_vec(), state.root_key.to_vec()];
        secrets.extend(state.sending_chain_key.map(|k| k.to_vec()));
        secrets.extend(state.receiving_chain_key.map(|k| k.to_vec()));
        secrets.push(sent.message_key.to_vec());
        secrets.push(opened.message_key.to_vec());
        secrets.push(back.message_key.to_vec());
        assert!(state.sending_chain_key.is_some() && state.receiving_chain_key.is_some());
        assert_redacted(&format!("hazmat::Ratchet ({name})"), r, &secrets);
        assert_redacted(&format!("hazmat::RatchetState ({name})"), &state, &secrets);
    }
    // The responder's side of X3DH too.
    let bob_x3dh = hazmat::x3dh_respond(
        &bob.identity,
        &spk_private,
        None,
        &alice_id.public(),
        &confidant::PublicKey::from_bytes(&hazmat::x25519_public(&ephemeral)).expect("key"),
        &[],
    )
    .expect("x3dh respond");
    let mut secrets = vec![bob_x3dh.shared_secret.to_vec(), spk_private.to_vec()];
    secrets.extend(bob_x3dh.dh.iter().map(|d| d.to_vec()));
    assert_redacted("X3dhOutput (responder)", &bob_x3dh, &secrets);
}

/// A PQXDH session pair and the acceptance that made Bob's side: the session secrets, the KEM
/// seeds and the KEM shared secret `SS` (recomputed from Bob's seed and Alice's ciphertext)
/// stay out of every Debug.
#[test]
fn pqxdh_session_and_accepted_debug_is_redacted() {
    let mut rng = rng(7);
    let (mut bob, otks) = Device::new_pq(&mut rng, 1);
    let kem = bob
        .prekeys
        .generate_one_time_kem_prekeys(&mut rng, &bob.identity, 1)
        .expect("generate");
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let mut alice = common::initiate_pq(
        &mut rng,
        &alice_id,
        &bob,
        otks.first().copied(),
        kem.first().cloned(),
    );
    let plaintext = random32(&mut rng);
    let wire = alice.encrypt(&plaintext).expect("encrypt");
    let ct: [u8; KEM_CIPHERTEXT_LEN] = len_fields(&parse_proto(&wire[1..]).expect("wire"), 7)[0]
        .clone()
        .try_into()
        .expect("ciphertext");
    let one_time_seed = kem_seeds(&bob.prekeys)[1];
    assert_eq!(
        &hazmat::kem_public(&one_time_seed),
        kem[0].key(),
        "the seed Alice used"
    );
    let ss = hazmat::kem_decapsulate(&one_time_seed, &ct);
    let mut prekeys_before = prekey_secrets(&bob.prekeys);
    prekeys_before.push(ss.to_vec());
    assert_redacted(
        "pending PQXDH Session",
        &alice,
        &[&session_secrets(&alice)[..], &prekeys_before[..]].concat(),
    );
    let Ok(Routed::Accepted(acc)) = bob_receive(&mut rng, &mut bob, None, &wire) else {
        panic!("accept")
    };
    let mut secrets = session_secrets(&acc.session);
    secrets.push(plaintext.to_vec());
    secrets.extend(prekeys_before.iter().cloned());
    secrets.extend(identity_secrets(&bob.identity));
    secrets.extend(identity_secrets(&alice_id));
    assert_redacted("PQXDH Accepted", &acc, &secrets);
    let mut bob_s = acc.session;
    let reply = bob_s.encrypt(b"reply").expect("encrypt");
    alice.decrypt_bytes(&mut rng, &reply).expect("decrypt");
    for (name, s) in [("PQXDH initiator", &alice), ("PQXDH responder", &bob_s)] {
        let mut secrets = session_secrets(s);
        secrets.push(ss.to_vec());
        assert_redacted(name, s, &secrets);
    }
}

/// The public KEM types print a short prefix, never the 1568-byte key or ciphertext.
#[test]
fn kem_public_types_debug_is_compact() {
    let mut rng = rng(8);
    let (mut bob, otks) = Device::new_pq(&mut rng, 1);
    let kem_otks = bob
        .prekeys
        .generate_one_time_kem_prekeys(&mut rng, &bob.identity, 2)
        .expect("generate");
    let last_resort = bob.prekeys.last_resort_kem_prekey();
    let key = last_resort.key();
    // Everything after the 8-byte prefix the Debug shows.
    let body = |k: &KemPreKeyPublic| k.key().as_bytes()[8..].to_vec();

    for text in [format!("{key:?}"), format!("{key:#?}")] {
        assert!(
            text.len() < 100,
            "KemPublicKey Debug is {} chars: {text}",
            text.len()
        );
        assert!(leak(&text, &key.as_bytes()[8..]).is_none(), "{text}");
    }
    assert!(format!("{key:?}").contains(&hex::encode(&key.as_bytes()[..8])));

    let alice_id = IdentityKeyPair::generate(&mut rng);
    let bundle = PreKeyBundle::new(
        bob.identity.public(),
        bob.prekeys.signed_prekey(),
        otks.first().copied(),
    )
    .with_kem_prekey(last_resort.clone());
    let verified = bundle.clone().verify().expect("verify");
    let mut alice = confidant::Session::initiate(
        &mut rng,
        &alice_id,
        bundle.clone().verify().expect("verify"),
    )
    .expect("initiate");
    let wire = alice.encrypt(b"hi").expect("encrypt");
    let ct = len_fields(&parse_proto(&wire[1..]).expect("wire"), 7)[0].clone();
    assert_eq!(ct.len(), KEM_CIPHERTEXT_LEN);
    let message = Message::from_bytes(&wire).expect("decode");
    let upload = PreKeyUpload::new(
        bob.identity.public(),
        bob.prekeys.signed_prekey(),
        otks.clone(),
    )
    .with_last_resort_kem_prekey(last_resort.clone())
    .with_one_time_kem_prekeys(kem_otks.clone());
    let server = DeviceKeys::register(&upload.to_bytes()).expect("register");
    let mut fetching = server.clone();
    let fetched = fetching.fetch_bundle();

    let bulky: Vec<Vec<u8>> = [&last_resort, &kem_otks[0], &kem_otks[1]]
        .into_iter()
        .map(body)
        .chain([ct.clone()])
        .collect();
    let cases: Vec<(&str, String, usize)> = vec![
        // (what, Debug, how many KEM keys it may name)
        ("KemPreKeyPublic", format!("{last_resort:?}"), 1),
        ("PreKeyBundle", format!("{bundle:?}"), 1),
        ("VerifiedBundle", format!("{verified:?}"), 1),
        ("PreKeyMessage", format!("{:?}", prekey(&wire)), 0),
        ("Message", format!("{message:?}"), 0),
        ("PreKeyUpload", format!("{upload:?}"), 3),
        ("DeviceKeys", format!("{server:?}"), 3),
        ("Fetched", format!("{fetched:?}"), 1),
    ];
    for (what, text, keys) in cases {
        for (i, b) in bulky.iter().enumerate() {
            assert!(
                leak(&text, b).is_none(),
                "{what} Debug prints bulky value {i}"
            );
        }
        // Shorter than one raw key per key named (the hex of a key alone is 3136 chars, a
        // byte list far more), and than one raw ciphertext for the messages.
        let limit = KEM_PUBLIC_KEY_LEN * keys.max(1);
        assert!(
            text.len() < limit,
            "{what} Debug is {} chars (limit {limit})",
            text.len()
        );
    }
}

/// Group types: the sender key's chain key and signing seed (from the `GroupSession` snapshot)
/// never appear in the `Debug` of the session, a `GroupSend`, a `Distribution`, a parsed
/// `SenderKeyDistribution`, a `MembershipUpdate`, or a hazmat `SenderKeyStep`.
#[test]
fn group_types_debug_is_redacted() {
    use confidant::book::Address;
    use confidant::group::{GroupId, GroupSession, RotationPolicy, SenderKeyDistribution};

    let mut rng = rng(77);
    let a = Address {
        account: IdentityKeyPair::generate(&mut rng).public(),
        device: 1,
    };
    let b = Address {
        account: IdentityKeyPair::generate(&mut rng).public(),
        device: 2,
    };
    let c = Address {
        account: IdentityKeyPair::generate(&mut rng).public(),
        device: 3,
    };
    let id = GroupId::random(&mut rng);
    let mut sender = GroupSession::new(id, a, &[a, b], RotationPolicy::default()).unwrap();
    let mut receiver = GroupSession::new(id, b, &[a, b], RotationPolicy::default()).unwrap();
    let now = confidant::Timestamp(1);
    let sent = sender.encrypt(&mut rng, now, b"first").unwrap();
    let distribution = sent.distribution.as_ref().unwrap();
    let parsed = SenderKeyDistribution::from_bytes(&distribution.message).unwrap();
    receiver.receive_distribution(&a, &parsed).unwrap();
    // The receiver skips iterations 0..3, so it stores skipped keys too.
    sender.encrypt(&mut rng, now, b"second").unwrap();
    sender.encrypt(&mut rng, now, b"third").unwrap();
    let fourth = sender.encrypt(&mut rng, now, b"fourth").unwrap();
    receiver
        .decrypt(
            &a,
            &confidant::group::GroupMessage::from_bytes(&fourth.message).unwrap(),
        )
        .unwrap();
    let update = sender.set_members(&[a, b, c]).unwrap();
    assert!(update.distribution.is_some());

    // The distribution is `0x62 || {1: group id, 2: key id, 3: iteration, 4: chain key, 5:
    // signing key}`; the sender's snapshot holds the chain key and the signing seed (sending
    // key, field 6: {3: chain key, 4: seed}); the receiver's holds its chain key and skipped
    // keys (field 8).
    let dist = parse_proto(&distribution.message[1..]).unwrap();
    let mut secrets = len_fields(&dist, 4);
    let snap = sender.snapshot();
    let sending = parse_proto(&len_fields(&parse_proto(&snap[1..]).unwrap(), 6)[0]).unwrap();
    secrets.extend(len_fields(&sending, 3));
    secrets.extend(len_fields(&sending, 4));
    let rsnap = receiver.snapshot();
    for state in len_fields(&parse_proto(&rsnap[1..]).unwrap(), 8) {
        let state = parse_proto(&state).unwrap();
        for key in len_fields(&state, 3) {
            secrets.extend(len_fields(&parse_proto(&key).unwrap(), 3));
        }
        for record in len_fields(&state, 4)[0].chunks(40) {
            secrets.push(record[8..].to_vec());
        }
    }
    assert_eq!(secrets.len(), 7, "chain keys, seed and three skipped keys");
    let step = hazmat::sender_key_step(&random32(&mut rng));
    secrets.extend([
        step.message_key.to_vec(),
        step.aes_key.to_vec(),
        step.next_chain_key.to_vec(),
    ]);

    assert_redacted("GroupSession (sender)", &sender, &secrets);
    assert_redacted("GroupSession (receiver)", &receiver, &secrets);
    assert_redacted("GroupSend", &sent, &secrets);
    assert_redacted("Distribution", distribution, &secrets);
    assert_redacted("SenderKeyDistribution", &parsed, &secrets);
    assert_redacted("MembershipUpdate", &update, &secrets);
    assert_redacted("SenderKeyStep", &step, &secrets);
}
