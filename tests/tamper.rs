//! Tampering and hostile input: every single-bit flip of real messages, hostile header counters,
//! malformed framing and size limits. Every rejection must be a typed error that changes no state
//! and uses no randomness (PROTOCOL.md §5.4, §6.3, §11).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::{Duration, Instant};

use common::{
    Device, NOW, PREKEY_V1, RATCHET_V1, RecvError, Routed, Value, bob_receive, encode_proto, flip,
    header, parse_proto, prekey, prekey_inner_parts, prekey_with_inner, ratchet_parts,
    ratchet_wire, rng, split_header,
};
use confidant::limits::{MAX_MESSAGE_BYTES, MAX_SKIP};
use confidant::{
    DecodeError, DecryptError, EncryptError, HandshakeError, IdentityKeyPair, KeyError, Message,
    PreKeyMessage, PreKeys, RatchetMessage, Session,
};
use rand_chacha::ChaCha20Rng;

/// Bob: device, prekeys and (once accepted) his session with Alice.
struct Bob {
    dev: Device,
    session: Option<Session>,
}

impl Bob {
    fn state(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        (
            self.dev.prekeys.snapshot().to_vec(),
            self.session.as_ref().map(|s| s.snapshot().to_vec()),
        )
    }

    fn reset(&mut self, state: &(Vec<u8>, Option<Vec<u8>>)) {
        self.dev.prekeys = PreKeys::restore(&state.0).expect("prekeys restore");
        self.session = state
            .1
            .as_ref()
            .map(|s| Session::restore(s).expect("session restore"));
    }

    fn receive(&mut self, rng: &mut ChaCha20Rng, wire: &[u8]) -> Result<Vec<u8>, RecvError> {
        match bob_receive(rng, &mut self.dev, self.session.as_mut(), wire)? {
            Routed::Session(p) => Ok(p),
            Routed::Accepted(a) => {
                assert!(self.session.is_none(), "a second session was accepted");
                self.session = Some(a.session);
                Ok(a.plaintext.to_vec())
            }
        }
    }
}

/// How a tampered message may legitimately still decrypt: only if it parses to something the
/// protocol treats as the same message (PROTOCOL.md §8.1: the protobuf framing, unknown fields
/// and — for a PreKeyMessage routed to an existing session by `owns` — the prekey ids are not
/// authenticated). Anything else must be rejected.
#[derive(Clone, Copy)]
enum Equivalence {
    /// Only a message equal to the original after parsing.
    Exact,
    /// A PreKeyMessage with the same identity key, base key, handshake and ratchet message
    /// (prekey ids may differ), or an exactly equal message.
    OwnedPreKey,
}

fn equivalent(a: &Message, b: &Message, eq: Equivalence) -> bool {
    match (eq, a, b) {
        (_, a, b) if a == b => true,
        (Equivalence::OwnedPreKey, Message::PreKey(a), Message::PreKey(b)) => {
            a.identity_key() == b.identity_key()
                && a.base_key() == b.base_key()
                && a.handshake() == b.handshake()
                && a.message() == b.message()
        }
        _ => false,
    }
}

/// Flips every bit of `wire` and delivers each variant to Bob. Returns how many variants were
/// equivalent (and decrypted to the original plaintext). Afterwards the original decrypts.
fn flip_every_bit_at_bob(
    rng: &mut ChaCha20Rng,
    bob: &mut Bob,
    wire: &[u8],
    plaintext: &[u8],
    eq: Equivalence,
) -> usize {
    let original = Message::from_bytes(wire).expect("original decodes");
    let before = bob.state();
    let mut equivalents = 0;
    for bit in 0..wire.len() * 8 {
        let variant = flip(wire, bit);
        let rng_before = rng.clone();
        let same = Message::from_bytes(&variant).is_ok_and(|m| equivalent(&m, &original, eq));
        let result = bob.receive(rng, &variant);
        if same {
            equivalents += 1;
            assert_eq!(
                result.as_deref(),
                Ok(plaintext),
                "bit {bit}: equivalent message must decrypt"
            );
            bob.reset(&before);
            *rng = rng_before;
        } else {
            assert!(
                result.is_err(),
                "bit {bit}: tampered message accepted: {:?}",
                result.map(|p| p.len())
            );
            assert!(
                bob.state() == before,
                "bit {bit}: state changed by rejected message ({result:?})"
            );
            assert!(
                *rng == rng_before,
                "bit {bit}: rejected message used randomness"
            );
        }
    }
    assert_eq!(
        bob.receive(rng, wire).as_deref(),
        Ok(plaintext),
        "original after tampering"
    );
    equivalents
}

/// Flips every bit of `wire` and delivers each variant to `session` (Alice's side).
fn flip_every_bit_at_session(
    rng: &mut ChaCha20Rng,
    session: &mut Session,
    wire: &[u8],
    plaintext: &[u8],
) {
    let before = session.snapshot();
    for bit in 0..wire.len() * 8 {
        let variant = flip(wire, bit);
        let rng_before = rng.clone();
        let result = session.decrypt_bytes(rng, &variant);
        assert!(result.is_err(), "bit {bit}: tampered message accepted");
        assert!(
            session.snapshot() == before,
            "bit {bit}: state changed ({result:?})"
        );
        assert!(
            *rng == rng_before,
            "bit {bit}: rejected message used randomness"
        );
    }
    assert_eq!(
        session
            .decrypt_bytes(rng, wire)
            .map(|p| p.to_vec())
            .as_deref(),
        Ok(plaintext)
    );
}

/// Bob with signed prekeys 1..=4 and one-time prekeys 1..=16, and Alice's session made from the
/// bundle with signed prekey 1 and one-time prekey 6 — so flipped ids often name keys Bob holds.
fn setup(seed: u64, with_opk: bool) -> (ChaCha20Rng, IdentityKeyPair, Session, Bob) {
    let mut rng = rng(seed);
    let (mut dev, otks) = Device::new(&mut rng, 16);
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let opk = otks
        .iter()
        .copied()
        .find(|k| k.id() == 6)
        .filter(|_| with_opk);
    let alice = common::initiate(&mut rng, &alice_id, &dev, opk);
    for _ in 0..3 {
        dev.prekeys
            .rotate_signed_prekey(&mut rng, &dev.identity, NOW);
    }
    assert_eq!(dev.prekeys.signed_prekey().id(), 4);
    (rng, alice_id, alice, Bob { dev, session: None })
}

#[test]
fn every_bit_flip_of_an_initial_message_with_one_time_prekey_is_rejected() {
    let (mut rng, _, mut alice, mut bob) = setup(1, true);
    let wire = alice.encrypt(b"first message").expect("encrypt");
    assert_eq!(prekey(&wire).one_time_prekey_id(), Some(6));
    let eq = flip_every_bit_at_bob(
        &mut rng,
        &mut bob,
        &wire,
        b"first message",
        Equivalence::Exact,
    );
    assert_eq!(
        eq, 0,
        "no single-bit flip of an initial message is equivalent"
    );
    assert_eq!(bob.dev.prekeys.one_time_prekey_count(), 15);
}

#[test]
fn every_bit_flip_of_an_initial_message_without_one_time_prekey_is_rejected() {
    let (mut rng, _, mut alice, mut bob) = setup(2, false);
    let wire = alice.encrypt(b"no opk").expect("encrypt");
    assert_eq!(prekey(&wire).one_time_prekey_id(), None);
    let eq = flip_every_bit_at_bob(&mut rng, &mut bob, &wire, b"no opk", Equivalence::Exact);
    assert_eq!(eq, 0);
    assert_eq!(bob.dev.prekeys.one_time_prekey_count(), 16);
}

#[test]
fn every_bit_flip_of_a_repeated_initial_message_is_rejected_or_equivalent() {
    let (mut rng, _, mut alice, mut bob) = setup(3, true);
    let first = alice.encrypt(b"one").expect("encrypt");
    let second = alice.encrypt(b"two").expect("encrypt");
    assert_eq!(bob.receive(&mut rng, &first).as_deref(), Ok(&b"one"[..]));
    // `second` is routed to the session by `owns`; its prekey ids are unauthenticated there
    // (PROTOCOL.md §8.1), so flips that only change them decrypt to the same plaintext.
    let eq = flip_every_bit_at_bob(
        &mut rng,
        &mut bob,
        &second,
        b"two",
        Equivalence::OwnedPreKey,
    );
    assert!(eq > 0, "prekey-id flips are routed to the session");
}

#[test]
fn every_bit_flip_of_ratchet_messages_is_rejected() {
    let (mut rng, _, mut alice, mut bob) = setup(4, true);
    let first = alice.encrypt(b"hello").expect("encrypt");
    bob.receive(&mut rng, &first).expect("accept");
    let reply = bob
        .session
        .as_mut()
        .expect("session")
        .encrypt(b"reply")
        .expect("encrypt");

    // Alice's side: the first reply (a new ratchet key) — rejection must keep `pending`.
    flip_every_bit_at_session(&mut rng, &mut alice, &reply, b"reply");
    assert!(!alice.awaiting_reply());

    // Bob's side: r0 starts a new chain; r2 then leaves r1 in the skipped store; r3 is the next
    // message of the current chain.
    let r: Vec<Vec<u8>> = (0..4)
        .map(|i| alice.encrypt(&[b'r', i]).expect("encrypt"))
        .collect();
    assert!(r.iter().all(|w| w[0] == RATCHET_V1));
    assert_eq!(
        flip_every_bit_at_bob(&mut rng, &mut bob, &r[0], b"r\x00", Equivalence::Exact),
        0
    );
    assert_eq!(bob.receive(&mut rng, &r[2]).as_deref(), Ok(&b"r\x02"[..]));
    assert_eq!(bob.session.as_ref().expect("session").skipped_keys(), 1);
    assert_eq!(
        flip_every_bit_at_bob(&mut rng, &mut bob, &r[1], b"r\x01", Equivalence::Exact),
        0
    );
    assert_eq!(
        flip_every_bit_at_bob(&mut rng, &mut bob, &r[3], b"r\x03", Equivalence::Exact),
        0
    );
    assert_eq!(bob.session.as_ref().expect("session").skipped_keys(), 0);
}

/// A session pair where Bob's current receiving chain is Alice's second chain with `Nr = 1`.
fn established(seed: u64) -> (ChaCha20Rng, Session, Bob, Vec<u8>) {
    let (mut rng, _, mut alice, mut bob) = setup(seed, true);
    let first = alice.encrypt(b"hello").expect("encrypt");
    bob.receive(&mut rng, &first).expect("accept");
    let reply = bob
        .session
        .as_mut()
        .expect("session")
        .encrypt(b"reply")
        .expect("encrypt");
    alice.decrypt_bytes(&mut rng, &reply).expect("reply");
    let r0 = alice.encrypt(b"r0").expect("encrypt");
    assert_eq!(bob.receive(&mut rng, &r0).as_deref(), Ok(&b"r0"[..]));
    let r1 = alice.encrypt(b"r1").expect("encrypt");
    (rng, alice, bob, r1)
}

/// Delivers a hostile message to Bob's session and checks: the exact error, no state change,
/// no randomness used, and bounded work.
fn hostile(rng: &mut ChaCha20Rng, bob: &mut Bob, wire: &[u8], expected: DecryptError) {
    let before = bob.state();
    let rng_before = rng.clone();
    let start = Instant::now();
    let result = bob.receive(rng, wire);
    let elapsed = start.elapsed();
    assert_eq!(result, Err(RecvError::Decrypt(expected)));
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    assert!(bob.state() == before, "state changed");
    assert!(*rng == rng_before, "randomness used");
}

#[test]
fn hostile_counters_in_the_current_chain() {
    let (mut rng, _alice, mut bob, r1) = established(5);
    let (h, ct) = ratchet_parts(&r1);
    let (dh, pn, n) = split_header(&h);
    assert_eq!(n, 1, "Nr is 1");
    let nr = 1u32;

    let forged = |n: u32| ratchet_wire(&header(dh, pn, n), &ct);
    hostile(
        &mut rng,
        &mut bob,
        &forged(u32::MAX),
        DecryptError::TooFarAhead {
            gap: u64::from(u32::MAX - nr),
            limit: MAX_SKIP,
        },
    );
    hostile(
        &mut rng,
        &mut bob,
        &forged(nr + MAX_SKIP + 1),
        DecryptError::TooFarAhead {
            gap: u64::from(MAX_SKIP) + 1,
            limit: MAX_SKIP,
        },
    );
    // Exactly MAX_SKIP keys may be skipped: the keys are derived, then the tag fails.
    hostile(
        &mut rng,
        &mut bob,
        &forged(nr + MAX_SKIP),
        DecryptError::Unauthenticated,
    );
    // A counter below Nr is a duplicate, decided before any AEAD work.
    hostile(
        &mut rng,
        &mut bob,
        &forged(0),
        DecryptError::Duplicate { counter: 0 },
    );
    // pn is irrelevant on the current chain, but authenticated.
    hostile(
        &mut rng,
        &mut bob,
        &ratchet_wire(&header(dh, u32::MAX, n), &ct),
        DecryptError::Unauthenticated,
    );

    assert_eq!(bob.receive(&mut rng, &r1).as_deref(), Ok(&b"r1"[..]));
}

#[test]
fn hostile_counters_with_a_new_ratchet_key() {
    let (mut rng, _alice, mut bob, r1) = established(6);
    let (h, ct) = ratchet_parts(&r1);
    let nr = 1u32;
    // A valid X25519 public key Bob has never seen.
    let mut other = rng.clone();
    let stranger = IdentityKeyPair::generate(&mut other);
    let fresh = PreKeys::new(&mut other, &stranger, NOW)
        .signed_prekey()
        .key()
        .to_bytes();
    let forged = |pn: u32, n: u32| ratchet_wire(&header(fresh, pn, n), &ct);

    hostile(
        &mut rng,
        &mut bob,
        &forged(u32::MAX, 0),
        DecryptError::TooFarAhead {
            gap: u64::from(u32::MAX - nr),
            limit: MAX_SKIP,
        },
    );
    hostile(
        &mut rng,
        &mut bob,
        &forged(0, u32::MAX),
        DecryptError::TooFarAhead {
            gap: u64::from(u32::MAX),
            limit: MAX_SKIP,
        },
    );
    hostile(
        &mut rng,
        &mut bob,
        &forged(u32::MAX, u32::MAX),
        DecryptError::TooFarAhead {
            gap: u64::from(u32::MAX - nr),
            limit: MAX_SKIP,
        },
    );
    hostile(
        &mut rng,
        &mut bob,
        &forged(nr + MAX_SKIP + 1, 0),
        DecryptError::TooFarAhead {
            gap: u64::from(MAX_SKIP) + 1,
            limit: MAX_SKIP,
        },
    );
    hostile(
        &mut rng,
        &mut bob,
        &forged(0, MAX_SKIP + 1),
        DecryptError::TooFarAhead {
            gap: u64::from(MAX_SKIP) + 1,
            limit: MAX_SKIP,
        },
    );
    // At the bound both chains are derived (2 × MAX_SKIP keys), then the tag fails.
    hostile(
        &mut rng,
        &mut bob,
        &forged(nr + MAX_SKIP, MAX_SKIP),
        DecryptError::Unauthenticated,
    );
    // A small-order "ratchet key" fails the contributory check: Unauthenticated.
    hostile(
        &mut rng,
        &mut bob,
        &ratchet_wire(&header([0; 32], 0, 0), &ct),
        DecryptError::Unauthenticated,
    );
    // The genuine header with a forged ciphertext.
    let mut bad = ct.clone();
    bad[0] ^= 1;
    hostile(
        &mut rng,
        &mut bob,
        &ratchet_wire(&h, &bad),
        DecryptError::Unauthenticated,
    );

    assert_eq!(bob.receive(&mut rng, &r1).as_deref(), Ok(&b"r1"[..]));
}

#[test]
fn hostile_counters_in_an_initial_message() {
    let (mut rng, _, mut alice, mut bob) = setup(7, true);
    let wire = alice.encrypt(b"first").expect("encrypt");
    let (h, ct) = prekey_inner_parts(&wire);
    let (dh, _, _) = split_header(&h);
    let cases = [
        (
            header(dh, 0, u32::MAX),
            HandshakeError::FirstMessage(DecryptError::TooFarAhead {
                gap: u64::from(u32::MAX),
                limit: MAX_SKIP,
            }),
        ),
        (
            header(dh, u32::MAX, 0),
            HandshakeError::FirstMessage(DecryptError::TooFarAhead {
                gap: u64::from(u32::MAX),
                limit: MAX_SKIP,
            }),
        ),
        (
            header(dh, 0, MAX_SKIP + 1),
            HandshakeError::FirstMessage(DecryptError::TooFarAhead {
                gap: u64::from(MAX_SKIP) + 1,
                limit: MAX_SKIP,
            }),
        ),
        (header(dh, 0, MAX_SKIP), HandshakeError::Unauthenticated),
        (header([0; 32], 0, 0), HandshakeError::Unauthenticated),
    ];
    for (forged, expected) in cases {
        let hostile = prekey_with_inner(&wire, &forged, &ct);
        let before = bob.state();
        let rng_before = rng.clone();
        let start = Instant::now();
        let result = bob.receive(&mut rng, &hostile);
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(result, Err(RecvError::Handshake(expected)));
        assert!(bob.state() == before);
        assert!(rng == rng_before);
    }
    // Re-encoding the genuine inner message changes nothing.
    assert_eq!(prekey_with_inner(&wire, &h, &ct), wire);
    assert_eq!(bob.receive(&mut rng, &wire).as_deref(), Ok(&b"first"[..]));
}

/// Replaces (or adds) varint field `field` of the nested message `outer_field` of a snapshot.
fn set_nested_varint(snapshot: &[u8], outer_field: u32, field: u32, value: u64) -> Vec<u8> {
    let outer = parse_proto(&snapshot[1..]).expect("snapshot protobuf");
    let mut out = vec![snapshot[0]];
    let replaced: Vec<(u32, Value)> = outer
        .into_iter()
        .map(|(f, v)| match (f, v) {
            (f, Value::Len(inner)) if f == outer_field => {
                let mut fields: Vec<(u32, Value)> = parse_proto(&inner)
                    .expect("nested")
                    .into_iter()
                    .filter(|(g, _)| *g != field)
                    .collect();
                fields.push((field, Value::Varint(value)));
                fields.sort_by_key(|(g, _)| *g);
                (f, Value::Len(encode_proto(&fields)))
            }
            other => other,
        })
        .collect();
    out.extend(encode_proto(&replaced));
    out
}

#[test]
fn sending_chain_exhaustion_and_the_largest_counter() {
    let (mut rng, _, alice, mut bob) = setup(8, true);
    // Alice's sending counter Ns = 2^32 − 2 (RatchetProto.ns is tag 7 of SessionProto.ratchet = 7).
    let snap = set_nested_varint(&alice.snapshot(), 7, 7, u64::from(u32::MAX - 1));
    let mut alice = Session::restore(&snap).expect("restore");
    let last = alice.encrypt(b"last").expect("n = 2^32 - 2 is sendable");
    let (h, _) = prekey_inner_parts(&last);
    assert_eq!(split_header(&h).2, u32::MAX - 1);
    let exhausted = alice.snapshot();
    assert_eq!(alice.encrypt(b"more"), Err(EncryptError::ChainExhausted));
    assert!(alice.snapshot() == exhausted);
    // Plaintext size is checked first (PROTOCOL.md §5.3).
    assert_eq!(
        alice.encrypt(&vec![0; confidant::limits::MAX_PLAINTEXT + 1]),
        Err(EncryptError::TooLarge {
            len: confidant::limits::MAX_PLAINTEXT + 1,
            limit: confidant::limits::MAX_PLAINTEXT
        })
    );
    // Bob refuses to skip 2^32 − 2 keys.
    let before = bob.state();
    assert_eq!(
        bob.receive(&mut rng, &last),
        Err(RecvError::Handshake(HandshakeError::FirstMessage(
            DecryptError::TooFarAhead {
                gap: u64::from(u32::MAX - 1),
                limit: MAX_SKIP
            }
        )))
    );
    assert!(bob.state() == before);
}

#[test]
fn oversized_input_is_too_large() {
    let (mut rng, _alice, mut bob, r1) = established(9);
    let limit = MAX_MESSAGE_BYTES;
    for lead in [PREKEY_V1, RATCHET_V1, 0x00, 0x13, 0xff] {
        let big = vec![lead; limit + 1];
        let expected = DecodeError::TooLarge {
            len: limit + 1,
            limit,
        };
        assert_eq!(Message::from_bytes(&big), Err(expected));
        assert_eq!(RatchetMessage::from_bytes(&big).err(), Some(expected));
        assert_eq!(PreKeyMessage::from_bytes(&big).err(), Some(expected));
        let session = bob.session.as_mut().expect("session");
        let before = session.snapshot();
        assert_eq!(
            session.decrypt_bytes(&mut rng, &big).err(),
            Some(DecryptError::Malformed(expected))
        );
        assert!(session.snapshot() == before);
    }
    // A well-formed ratchet message of exactly MAX_MESSAGE_BYTES is decoded (and then fails
    // authentication); one byte more is TooLarge.
    let (h, _) = ratchet_parts(&r1);
    let mut ct_len = limit - 1 - 2 - 40 - 1 - 3; // lead, header tag+len, header, ct tag, ct len (3-byte varint)
    let exact = ratchet_wire(&h, &vec![0xab; ct_len]);
    assert_eq!(exact.len(), limit);
    assert!(matches!(
        Message::from_bytes(&exact),
        Ok(Message::Ratchet(_))
    ));
    let before = bob.state();
    assert_eq!(
        bob.receive(&mut rng, &exact),
        Err(RecvError::Decrypt(DecryptError::Unauthenticated))
    );
    assert!(bob.state() == before);
    ct_len += 1;
    let over = ratchet_wire(&h, &vec![0xab; ct_len]);
    assert_eq!(
        Message::from_bytes(&over),
        Err(DecodeError::TooLarge {
            len: limit + 1,
            limit
        })
    );
}

#[test]
fn unknown_leading_byte_is_unsupported_version() {
    let (mut rng, _alice, mut bob, r1) = established(10);
    let session = bob.session.as_mut().expect("session");
    let before = session.snapshot();
    for lead in 0..=u8::MAX {
        if lead == PREKEY_V1 || lead == RATCHET_V1 {
            continue;
        }
        let mut wire = r1.clone();
        wire[0] = lead;
        assert_eq!(
            Message::from_bytes(&wire),
            Err(DecodeError::UnsupportedVersion(lead)),
            "lead {lead:#04x}"
        );
        assert_eq!(
            session.decrypt_bytes(&mut rng, &wire).err(),
            Some(DecryptError::Malformed(DecodeError::UnsupportedVersion(
                lead
            )))
        );
        assert_eq!(
            Message::from_bytes(&[lead]),
            Err(DecodeError::UnsupportedVersion(lead))
        );
    }
    // The typed decoders insist on their own byte.
    assert_eq!(
        PreKeyMessage::from_bytes(&r1).err(),
        Some(DecodeError::UnsupportedVersion(RATCHET_V1))
    );
    assert!(session.snapshot() == before);
    assert_eq!(
        session
            .decrypt_bytes(&mut rng, &r1)
            .map(|p| p.to_vec())
            .as_deref(),
        Ok(&b"r1"[..])
    );
}

#[test]
fn empty_input_is_empty() {
    let (mut rng, _alice, mut bob, _r1) = established(11);
    assert_eq!(Message::from_bytes(&[]), Err(DecodeError::Empty));
    assert_eq!(
        RatchetMessage::from_bytes(&[]).err(),
        Some(DecodeError::Empty)
    );
    assert_eq!(
        PreKeyMessage::from_bytes(&[]).err(),
        Some(DecodeError::Empty)
    );
    let session = bob.session.as_mut().expect("session");
    let before = session.snapshot();
    assert_eq!(
        session.decrypt_bytes(&mut rng, &[]).err(),
        Some(DecryptError::Malformed(DecodeError::Empty))
    );
    assert!(session.snapshot() == before);
}

#[test]
fn malformed_ratchet_messages_are_typed_decode_errors() {
    let (_rng, _alice, _bob, r1) = established(12);
    let (h, ct) = ratchet_parts(&r1);
    let cases: Vec<(Vec<u8>, DecodeError)> = vec![
        (vec![RATCHET_V1], DecodeError::InvalidField("header")),
        (
            ratchet_wire(&h[..39], &ct),
            DecodeError::InvalidField("header"),
        ),
        (
            ratchet_wire(&[h.as_slice(), &[0]].concat(), &ct),
            DecodeError::InvalidField("header"),
        ),
        (
            ratchet_wire(&h, &ct[..15]),
            DecodeError::InvalidField("ciphertext"),
        ),
        (
            ratchet_wire(&h, &[]),
            DecodeError::InvalidField("ciphertext"),
        ),
        (vec![RATCHET_V1, 0x0a, 0x28], DecodeError::Protobuf),
        (vec![RATCHET_V1, 0x0b], DecodeError::Protobuf),
    ];
    for (wire, expected) in cases {
        assert_eq!(Message::from_bytes(&wire), Err(expected), "{wire:02x?}");
    }
    // 16 bytes of ciphertext (an empty plaintext's tag) is well-formed.
    assert!(matches!(
        Message::from_bytes(&ratchet_wire(&h, &ct[..16])),
        Ok(Message::Ratchet(_))
    ));
}

#[test]
fn malformed_initial_messages_are_typed_decode_errors() {
    let (_rng, _, mut alice, _bob) = setup(13, true);
    let wire = alice.encrypt(b"x").expect("encrypt");
    let fields = parse_proto(&wire[1..]).expect("protobuf");
    let with = |f: &FieldEdit| {
        let mut out = vec![PREKEY_V1];
        let mut fs = f(fields.clone());
        fs.sort_by_key(|(g, _)| *g);
        out.extend(encode_proto(&fs));
        out
    };
    let set = |field: u32, value: Value| {
        move |fs: Vec<(u32, Value)>| {
            let mut fs: Vec<(u32, Value)> = fs.into_iter().filter(|(g, _)| *g != field).collect();
            fs.push((field, value.clone()));
            fs
        }
    };
    let without = |field: u32| {
        move |fs: Vec<(u32, Value)>| fs.into_iter().filter(|(g, _)| *g != field).collect()
    };
    // p = 2^255 − 19 (non-canonical u) and the all-zero key (small order).
    let mut p = [0xff; 32];
    p[0] = 0xed;
    p[31] = 0x7f;
    let cases: Vec<(Vec<u8>, DecodeError)> = vec![
        (vec![PREKEY_V1], DecodeError::InvalidField("handshake")),
        (
            with(&set(1, Value::Varint(0))),
            DecodeError::InvalidField("handshake"),
        ),
        // Code 2 is PQXDH, which requires the KEM fields this X3DH message lacks.
        (
            with(&set(1, Value::Varint(2))),
            DecodeError::InvalidField("kem_prekey_id"),
        ),
        (
            with(&set(1, Value::Varint(3))),
            DecodeError::InvalidField("handshake"),
        ),
        (with(&without(1)), DecodeError::InvalidField("handshake")),
        (
            with(&set(6, Value::Varint(1))),
            DecodeError::Unsupported("kem_prekey_id"),
        ),
        (
            with(&set(7, Value::Len(vec![0; 1568]))),
            DecodeError::Unsupported("kem_ciphertext"),
        ),
        (
            with(&set(2, Value::Len(vec![1; 31]))),
            DecodeError::Key {
                field: "identity_key",
                error: KeyError::Length,
            },
        ),
        (
            with(&set(2, Value::Len(vec![0; 32]))),
            DecodeError::Key {
                field: "identity_key",
                error: KeyError::SmallOrder,
            },
        ),
        (
            with(&set(3, Value::Len(vec![0; 32]))),
            DecodeError::Key {
                field: "base_key",
                error: KeyError::SmallOrder,
            },
        ),
        (
            with(&set(3, Value::Len(p.to_vec()))),
            DecodeError::Key {
                field: "base_key",
                error: KeyError::Invalid,
            },
        ),
        (
            with(&set(3, Value::Len(vec![0; 33]))),
            DecodeError::Key {
                field: "base_key",
                error: KeyError::Length,
            },
        ),
        (with(&without(8)), DecodeError::InvalidField("message")),
        (
            with(&set(8, Value::Len(vec![]))),
            DecodeError::InvalidField("header"),
        ),
    ];
    for (bytes, expected) in cases {
        assert_eq!(Message::from_bytes(&bytes), Err(expected));
    }
    // Unknown fields are skipped (not authenticated, PROTOCOL.md §8.1): the message still parses.
    let extra = with(&set(15, Value::Varint(7)));
    assert_eq!(Message::from_bytes(&extra), Message::from_bytes(&wire));
}

/// An edit of a decoded protobuf field list.
type FieldEdit = dyn Fn(Vec<(u32, Value)>) -> Vec<(u32, Value)>;
