//! `Debug` of every public secret-bearing type must not reveal secret bytes: not in lower- or
//! upper-case hex, not as a decimal or hex byte list (`{:?}`, `{:#?}`, `{:x?}`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{Device, Routed, bob_receive, len_fields, parse_proto, rng};
use confidant::hazmat::{self, Ratchet};
use confidant::{IdentityKeyPair, PreKeys, Session};
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

/// Every private key in a PreKeys snapshot (signed and one-time prekeys).
fn prekey_secrets(p: &PreKeys) -> Vec<Vec<u8>> {
    let snap = p.snapshot();
    let top = parse_proto(&snap[1..]).expect("prekeys snapshot");
    let mut out = Vec::new();
    for field in [1, 2] {
        for record in len_fields(&top, field) {
            out.extend(len_fields(&parse_proto(&record).expect("record"), 2));
        }
    }
    assert!(out.iter().all(|k| k.len() == 32));
    out
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
    assert_eq!(secrets.len(), 2 + 5);
    secrets.extend(identity_secrets(&dev.identity));
    assert_redacted("PreKeys", &dev.prekeys, &secrets);
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
