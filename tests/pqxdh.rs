//! PQXDH (`PROFILE-pqxdh-v1.md` §3–§6) end to end: one-time and last-resort KEM prekeys,
//! downgrade protection on both sides, KEM ciphertext tampering, last-resort replay records,
//! repetition of the KEM data until the first reply, the key server's KEM stock, and sizes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeMap;

use common::{
    Device, NOW, PREKEY_V1, RATCHET_V1, RecvError, Routed, Value, accept, bob_receive,
    encode_proto, flip, header_of, is_prekey, is_ratchet, len_fields, parse_proto, prekey, rng,
};
use confidant::hazmat;
use confidant::limits::{
    LOW_ONE_TIME_PREKEY_STOCK, MAX_ACCEPTED_BASE_KEYS, MAX_BUNDLE_BYTES, MAX_DEVICE_RECORD_BYTES,
    MAX_LAST_RESORT_KEM_PREKEYS, MAX_SERVER_ONE_TIME_KEM_PREKEYS, MAX_UPLOAD_BYTES,
    MAX_UPLOAD_ONE_TIME_KEM_PREKEYS, SIGNED_PREKEY_GRACE_MS,
};
use confidant::server::{DeviceKeys, PreKeyUpload};
use confidant::{
    BundleError, DecodeError, DecryptError, Handshake, HandshakeError, HandshakePolicy,
    IdentityKeyPair, KEM_CIPHERTEXT_LEN, KEM_PUBLIC_KEY_LEN, KemPreKeyPublic, Message,
    OneTimePreKeyPublic, PreKeyBundle, PreKeys, Pruned, Session, Timestamp, UploadError,
};
use rand_chacha::ChaCha20Rng;

type Fields = Vec<(u32, Value)>;

/// The protobuf fields of an initial message's wire bytes.
fn fields_of(wire: &[u8]) -> Fields {
    assert_eq!(wire[0], PREKEY_V1);
    parse_proto(&wire[1..]).expect("prekey protobuf")
}

/// Re-encodes an initial message from (edited) fields.
fn prekey_wire(fields: &[(u32, Value)]) -> Vec<u8> {
    [vec![PREKEY_V1], encode_proto(fields)].concat()
}

/// `fields` with field `field` replaced by `value` (or removed), in field order.
fn with_field(mut fields: Fields, field: u32, value: Option<Value>) -> Fields {
    fields.retain(|(f, _)| *f != field);
    if let Some(v) = value {
        fields.push((field, v));
        fields.sort_by_key(|(f, _)| *f);
    }
    fields
}

/// The KEM ciphertext (field 7) of an initial message.
fn kem_ciphertext(wire: &[u8]) -> Vec<u8> {
    let cts = len_fields(&fields_of(wire), 7);
    assert_eq!(cts.len(), 1, "exactly one KEM ciphertext field");
    cts[0].clone()
}

/// Byte offset of the KEM ciphertext inside the wire bytes.
fn kem_ciphertext_offset(wire: &[u8]) -> usize {
    let ct = kem_ciphertext(wire);
    let at = wire
        .windows(ct.len())
        .position(|w| w == ct.as_slice())
        .expect("ciphertext in the wire bytes");
    assert!(
        wire[at + 1..].windows(ct.len()).all(|w| w != ct.as_slice()),
        "the ciphertext occurs once"
    );
    at
}

/// The replay record of a `PreKeys` snapshot (field 5): `(signed prekey id, base key, KEM
/// prekey id)` per entry, in snapshot order (X3DH records first, then KEM triples).
fn replay_entries(p: &PreKeys) -> Vec<(u64, Vec<u8>, Option<u64>)> {
    len_fields(&parse_proto(&p.snapshot()[1..]).expect("snapshot"), 5)
        .iter()
        .map(|e| {
            let fs = parse_proto(e).expect("entry");
            let varint = |field| {
                fs.iter().find_map(|(f, v)| match v {
                    Value::Varint(x) if *f == field => Some(*x),
                    _ => None,
                })
            };
            (
                varint(1).unwrap_or(0),
                len_fields(&fs, 2).pop().unwrap_or_default(),
                varint(3),
            )
        })
        .collect()
}

/// A `PreKeys` snapshot with extra replay-record entries `(signed prekey id, base key, KEM id)`
/// (crafted: thousands of real handshakes would work too, just slower).
fn with_replay_entries(p: &PreKeys, entries: impl Iterator<Item = (u64, Vec<u8>, u64)>) -> PreKeys {
    let mut fields = parse_proto(&p.snapshot()[1..]).expect("snapshot");
    for (spk, key, kem) in entries {
        fields.push((
            5,
            Value::Len(encode_proto(&[
                (1, Value::Varint(spk)),
                (2, Value::Len(key)),
                (3, Value::Varint(kem)),
            ])),
        ));
    }
    fields.sort_by_key(|(f, _)| *f);
    PreKeys::restore(&[vec![0x32], encode_proto(&fields)].concat()).expect("restore")
}

/// A 32-byte key numbered `i` (distinct for distinct `i`, never a real base key).
fn numbered(i: u32) -> Vec<u8> {
    let mut k = vec![0xa5u8; 32];
    k[..4].copy_from_slice(&i.to_le_bytes());
    k
}

fn draw32(rng: &mut ChaCha20Rng) -> [u8; 32] {
    use rand_chacha::rand_core::Rng;
    let mut out = [0u8; 32];
    rng.fill_bytes(&mut out);
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KemKind {
    OneTime,
    LastResort,
}

// ---- End to end ---------------------------------------------------------------------------------

/// PROFILE-pqxdh §3–§6.3: both KEM prekey kinds, with and without an EC one-time prekey. Both
/// sides record PQXDH; a one-time KEM prekey is consumed (and reported) exactly once, a
/// last-resort one stays and gets a replay record instead.
#[test]
fn pqxdh_end_to_end_with_each_kem_prekey_kind() {
    for (i, kind) in [KemKind::OneTime, KemKind::LastResort]
        .into_iter()
        .enumerate()
    {
        for with_opk in [true, false] {
            let what = format!("{kind:?}, with_opk = {with_opk}");
            let mut rng = rng(100 + 2 * i as u64 + u64::from(with_opk));
            let (mut bob, otks) = Device::new_pq(&mut rng, 2);
            assert_eq!(bob.prekeys.policy(), HandshakePolicy::RequirePostQuantum);
            let kem_otks = bob
                .prekeys
                .generate_one_time_kem_prekeys(&mut rng, &bob.identity, 2)
                .expect("generate");
            // One KEM id space: the last-resort key is 1, one-time ones continue from 2.
            let last_resort = bob.prekeys.last_resort_kem_prekey();
            assert_eq!(last_resort.id(), 1);
            assert_eq!(kem_otks.iter().map(|k| k.id()).collect::<Vec<_>>(), [2, 3]);
            assert!(kem_otks.iter().all(|k| k.verify(&bob.identity.public())));
            assert!(last_resort.verify(&bob.identity.public()));
            assert_eq!(bob.prekeys.one_time_kem_prekey_count(), 2);
            let kem = match kind {
                KemKind::OneTime => kem_otks[0].clone(),
                KemKind::LastResort => last_resort.clone(),
            };
            let opk = otks.first().copied().filter(|_| with_opk);

            let alice_id = IdentityKeyPair::generate(&mut rng);
            let mut alice = common::initiate_pq(&mut rng, &alice_id, &bob, opk, Some(kem.clone()));
            assert_eq!(alice.handshake(), Handshake::Pqxdh, "{what}");
            assert!(alice.awaiting_reply());
            let wire = alice.encrypt(b"hello, post-quantum Bob").expect("encrypt");
            let m = prekey(&wire);
            assert_eq!(m.handshake(), Handshake::Pqxdh);
            assert_eq!(m.kem_prekey_id(), Some(kem.id()));
            assert_eq!(m.signed_prekey_id(), 1);
            assert_eq!(m.one_time_prekey_id(), opk.map(|k| k.id()));
            assert_eq!(m.base_key(), alice.base_key());
            assert_eq!(kem_ciphertext(&wire).len(), KEM_CIPHERTEXT_LEN);

            let acc = accept(&mut rng, &mut bob, &wire).expect("accept");
            assert_eq!(&acc.plaintext[..], b"hello, post-quantum Bob");
            assert_eq!(acc.session.handshake(), Handshake::Pqxdh, "{what}");
            assert_eq!(acc.session.remote_identity(), alice_id.public());
            assert_eq!(acc.session.base_key(), alice.base_key());
            assert_eq!(acc.consumed_one_time_prekey, opk.map(|k| k.id()));
            assert_eq!(
                acc.consumed_one_time_kem_prekey,
                (kind == KemKind::OneTime).then_some(kem.id()),
                "{what}"
            );
            assert_eq!(
                bob.prekeys.one_time_prekey_count(),
                if with_opk { 1 } else { 2 }
            );
            assert_eq!(
                bob.prekeys.one_time_kem_prekey_count(),
                if kind == KemKind::OneTime { 1 } else { 2 }
            );
            assert_eq!(bob.prekeys.last_resort_kem_prekey(), last_resort);
            // Only a last-resort KEM prekey leaves a replay record: the KEM triple.
            let base = alice.base_key().to_bytes().to_vec();
            assert_eq!(
                replay_entries(&bob.prekeys),
                match kind {
                    KemKind::OneTime => vec![],
                    KemKind::LastResort => vec![(1, base, Some(1))],
                },
                "{what}"
            );

            // The conversation continues; neither side ever changes its handshake kind, not
            // even through snapshot/restore.
            let mut bob_s = acc.session;
            for round in 0..3u8 {
                let r = bob_s.encrypt(&[b'b', round]).expect("encrypt");
                assert_eq!(
                    alice.decrypt_bytes(&mut rng, &r).map(|p| p.to_vec()),
                    Ok(vec![b'b', round])
                );
                let a = alice.encrypt(&[b'a', round]).expect("encrypt");
                assert!(is_ratchet(&a));
                assert_eq!(
                    bob_s.decrypt_bytes(&mut rng, &a).map(|p| p.to_vec()),
                    Ok(vec![b'a', round])
                );
                alice = Session::restore(&alice.snapshot()).expect("restore");
                bob_s = Session::restore(&bob_s.snapshot()).expect("restore");
                assert_eq!(alice.handshake(), Handshake::Pqxdh);
                assert_eq!(bob_s.handshake(), Handshake::Pqxdh);
            }

            // The same initial message again never makes a second session. Checks run in the
            // order policy, signed prekey, KEM prekey, replay record, one-time prekey: a used
            // one-time KEM prekey is unknown, a last-resort replay is `Replay` with or without
            // a (used) one-time prekey.
            let expected = match kind {
                KemKind::OneTime => HandshakeError::UnknownKemPreKey(kem.id()),
                KemKind::LastResort => HandshakeError::Replay,
            };
            assert_eq!(
                accept(&mut rng, &mut bob, &wire).err(),
                Some(expected),
                "{what}"
            );

            // A second initiator with a stale bundle naming the same KEM prekey (and, if any,
            // an unused one-time prekey): a used one-time KEM prekey is unknown.
            let carol = IdentityKeyPair::generate(&mut rng);
            let opk2 = otks.get(1).copied().filter(|_| with_opk);
            let mut c = common::initiate_pq(&mut rng, &carol, &bob, opk2, Some(kem.clone()));
            let cw = c.encrypt(b"carol").expect("encrypt");
            match kind {
                KemKind::OneTime => {
                    assert_eq!(
                        accept(&mut rng, &mut bob, &cw).err(),
                        Some(HandshakeError::UnknownKemPreKey(kem.id()))
                    );
                    // The other one-time KEM prekey still works, once.
                    let mut d = common::initiate_pq(
                        &mut rng,
                        &carol,
                        &bob,
                        opk2,
                        Some(kem_otks[1].clone()),
                    );
                    let dw = d.encrypt(b"dave").expect("encrypt");
                    let acc = accept(&mut rng, &mut bob, &dw).expect("accept");
                    assert_eq!(acc.consumed_one_time_kem_prekey, Some(3));
                    assert_eq!(bob.prekeys.one_time_kem_prekey_count(), 0);
                    assert_eq!(
                        accept(&mut rng, &mut bob, &dw).err(),
                        Some(HandshakeError::UnknownKemPreKey(3))
                    );
                }
                KemKind::LastResort => {
                    let acc = accept(&mut rng, &mut bob, &cw).expect("last resort is reusable");
                    assert_eq!(acc.consumed_one_time_kem_prekey, None);
                    assert_eq!(acc.session.handshake(), Handshake::Pqxdh);
                    assert_eq!(bob.prekeys.one_time_kem_prekey_count(), 2);
                    assert_eq!(replay_entries(&bob.prekeys).len(), 2);
                }
            }
        }
    }
}

/// Session::initiate draws `EK_A`, then the 32-byte encapsulation randomness, then the first
/// ratchet key; PreKeys::new draws the signed prekey, then the 64-byte KEM seed; accept draws
/// only Bob's first ratchet key (decapsulation is deterministic).
#[test]
fn pqxdh_randomness_is_drawn_exactly_as_documented() {
    let mut rng = rng(110);
    let bob_id = IdentityKeyPair::generate(&mut rng);
    let mut probe = rng.clone();
    let _spk = draw32(&mut probe);
    let mut seed = [0u8; 64];
    seed[..32].copy_from_slice(&draw32(&mut probe));
    seed[32..].copy_from_slice(&draw32(&mut probe));
    let prekeys = PreKeys::new(&mut rng, &bob_id, NOW);
    assert!(rng == probe, "PreKeys::new draws 32 + 64 bytes");
    assert_eq!(
        prekeys.last_resort_kem_prekey().key(),
        &hazmat::kem_public(&seed)
    );
    let mut bob = Device {
        identity: bob_id,
        prekeys,
    };

    let alice_id = IdentityKeyPair::generate(&mut rng);
    let bundle = bob.pq_bundle(None, None);
    let kem_key = bundle.kem_prekey().expect("KEM prekey").key().clone();
    let mut probe = rng.clone();
    let ek = draw32(&mut probe);
    let hazmat::Encapsulated {
        ciphertext: ct,
        shared_secret: ss,
    } = hazmat::kem_encapsulate(&mut probe, &kem_key).expect("valid key");
    let mut at_dhs = probe.clone();
    let dhs = draw32(&mut probe);
    let mut alice = Session::initiate(&mut rng, &alice_id, bundle).expect("initiate");
    assert!(rng == probe, "initiate draws exactly EK_A, m and DHs");
    assert_eq!(alice.base_key().to_bytes(), hazmat::x25519_public(&ek));
    let wire = alice.encrypt(b"hi").expect("encrypt");
    assert_eq!(kem_ciphertext(&wire), ct.to_vec());
    assert_eq!(header_of(&wire).0, hazmat::x25519_public(&dhs));
    // Bob's decapsulation with the seed recovers Alice's SS.
    assert_eq!(*hazmat::kem_decapsulate(&seed, &ct), *ss);
    // The session layer runs exactly the profile: the first message equals the one built from
    // the vector-checked hazmat derivation (PQXDH SK and AD, then RatchetInitAlice + encrypt).
    let out = hazmat::pqxdh_initiate(&alice_id, &ek, &bob.pq_bundle(None, None), &ss, &[])
        .expect("pqxdh");
    let spk = bob.prekeys.signed_prekey().key().to_bytes();
    let mut reference =
        hazmat::Ratchet::init_alice(&mut at_dhs, &out.shared_secret, &out.associated_data, &spk)
            .expect("ratchet");
    let first = reference.encrypt(b"hi").expect("encrypt");
    let expected = [
        vec![RATCHET_V1],
        encode_proto(&[
            (1, Value::Len(first.header.to_vec())),
            (2, Value::Len(first.ciphertext.clone())),
        ]),
    ]
    .concat();
    assert_eq!(prekey(&wire).message().to_bytes(), expected);

    let mut probe = rng.clone();
    let bob_dhs = draw32(&mut probe);
    let mut bob_s = accept(&mut rng, &mut bob, &wire).expect("accept").session;
    assert!(rng == probe, "accept draws exactly Bob's first DHs");
    let reply = bob_s.encrypt(b"reply").expect("encrypt");
    assert_eq!(header_of(&reply).0, hazmat::x25519_public(&bob_dhs));
}

/// PROFILE-pqxdh §3: one-time and last-resort KEM prekeys share one id space; ids wrap to 1,
/// skipping 0 and every held KEM id of either kind.
#[test]
fn kem_prekey_ids_share_one_space_and_wrap() {
    let mut rng = rng(111);
    let (bob, _) = Device::new_pq(&mut rng, 0);
    let mut prekeys = bob.prekeys;
    let ids = |v: Vec<KemPreKeyPublic>| v.iter().map(|k| k.id()).collect::<Vec<_>>();
    assert_eq!(
        ids(prekeys
            .generate_one_time_kem_prekeys(&mut rng, &bob.identity, 2)
            .expect("generate")),
        [2, 3]
    );
    let mut fs = parse_proto(&prekeys.snapshot()[1..]).expect("snapshot");
    fs = with_field(fs, 8, Some(Value::Varint(u64::from(u32::MAX))));
    let mut prekeys = PreKeys::restore(&[vec![0x32], encode_proto(&fs)].concat()).expect("restore");
    assert_eq!(
        ids(prekeys
            .generate_one_time_kem_prekeys(&mut rng, &bob.identity, 2)
            .expect("generate")),
        [u32::MAX, 4],
        "1 (last resort), 2 and 3 (one-time) are held"
    );
    assert_eq!(
        prekeys
            .rotate_last_resort_kem_prekey(&mut rng, &bob.identity, NOW)
            .id(),
        5
    );
    let restored = PreKeys::restore(&prekeys.snapshot()).expect("restore");
    assert!(restored.snapshot() == prekeys.snapshot());
    assert_eq!(restored.one_time_kem_prekey_count(), 4);
}

// ---- Downgrade protection (PROFILE-pqxdh §6.1, §6.2) ------------------------------------------

/// A server (or attacker) that strips the KEM prekey serves a valid, verifiable classical
/// bundle. The default policy refuses it before drawing any randomness; `AllowClassical` makes
/// an X3DH session, which a default responder refuses and an `AllowClassical` one accepts.
#[test]
fn a_stripped_kem_prekey_is_refused_under_the_default_policy() {
    let mut rng = rng(120);
    let (mut bob, otks) = Device::new_pq(&mut rng, 2);
    let ik = bob.identity.public();
    let spk = bob.prekeys.signed_prekey();
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let stripped = |opk: Option<OneTimePreKeyPublic>| {
        let served = PreKeyBundle::new(ik, spk, opk);
        PreKeyBundle::from_bytes(&served.to_bytes())
            .expect("decodes")
            .verify_for(&ik)
            .expect("a stripped bundle still verifies")
    };
    for opk in [None, Some(otks[0])] {
        let verified = stripped(opk);
        assert!(verified.kem_prekey().is_none());
        let rng_before = rng.clone();
        assert_eq!(
            Session::initiate(&mut rng, &alice_id, verified).err(),
            Some(HandshakeError::PostQuantumRequired)
        );
        assert!(rng == rng_before, "a refused initiate draws no randomness");
        assert_eq!(
            Session::initiate_with_policy(
                &mut rng,
                &alice_id,
                stripped(opk),
                HandshakePolicy::RequirePostQuantum
            )
            .err(),
            Some(HandshakeError::PostQuantumRequired)
        );
        assert!(rng == rng_before);
    }

    // Classical sessions allowed by the initiator: X3DH, no KEM fields on the wire.
    for opk in [None, Some(otks[0])] {
        let mut x = Session::initiate_with_policy(
            &mut rng,
            &alice_id,
            stripped(opk),
            HandshakePolicy::AllowClassical,
        )
        .expect("initiate");
        assert_eq!(x.handshake(), Handshake::X3dh);
        let wire = x.encrypt(b"classical").expect("encrypt");
        let m = prekey(&wire);
        assert_eq!(m.handshake(), Handshake::X3dh);
        assert_eq!(m.kem_prekey_id(), None);
        let fields = fields_of(&wire);
        assert!(fields.iter().all(|(f, _)| *f != 6 && *f != 7));

        // A default-policy responder refuses it first, whatever the message names; PreKeys
        // unchanged (checked by `accept`), the one-time prekey not consumed.
        assert_eq!(bob.prekeys.policy(), HandshakePolicy::RequirePostQuantum);
        assert_eq!(
            accept(&mut rng, &mut bob, &wire).err(),
            Some(HandshakeError::PostQuantumRequired)
        );
        let unknown_spk = prekey_wire(&with_field(fields, 4, Some(Value::Varint(99))));
        assert_eq!(
            accept(&mut rng, &mut bob, &unknown_spk).err(),
            Some(HandshakeError::PostQuantumRequired)
        );
        assert_eq!(bob.prekeys.one_time_prekey_count(), 2);

        // An AllowClassical responder accepts it as X3DH; the policy survives a restore.
        bob.prekeys.set_policy(HandshakePolicy::AllowClassical);
        bob.prekeys = PreKeys::restore(&bob.prekeys.snapshot()).expect("restore");
        assert_eq!(bob.prekeys.policy(), HandshakePolicy::AllowClassical);
        let acc = accept(&mut rng, &mut bob, &wire).expect("classical accept");
        assert_eq!(acc.session.handshake(), Handshake::X3dh);
        assert_eq!(acc.consumed_one_time_kem_prekey, None);
        assert_eq!(acc.consumed_one_time_prekey, opk.map(|k| k.id()));
        bob.prekeys.set_policy(HandshakePolicy::RequirePostQuantum);
        bob.prekeys = PreKeys::restore(&bob.prekeys.snapshot()).expect("restore");
        assert_eq!(bob.prekeys.policy(), HandshakePolicy::RequirePostQuantum);
    }
}

/// PROFILE-pqxdh §6.1: a bundle with a KEM prekey is always used with PQXDH, whatever the
/// initiator's policy; responders of either policy accept it.
#[test]
fn a_bundle_with_a_kem_prekey_is_always_pqxdh() {
    let mut rng = rng(121);
    for policy in [
        HandshakePolicy::RequirePostQuantum,
        HandshakePolicy::AllowClassical,
    ] {
        for responder in [
            HandshakePolicy::RequirePostQuantum,
            HandshakePolicy::AllowClassical,
        ] {
            let (mut bob, otks) = Device::new_pq(&mut rng, 1);
            bob.prekeys.set_policy(responder);
            let alice_id = IdentityKeyPair::generate(&mut rng);
            let mut s = Session::initiate_with_policy(
                &mut rng,
                &alice_id,
                bob.pq_bundle(otks.first().copied(), None),
                policy,
            )
            .expect("initiate");
            assert_eq!(s.handshake(), Handshake::Pqxdh, "{policy:?}");
            let wire = s.encrypt(b"pq").expect("encrypt");
            assert_eq!(prekey(&wire).handshake(), Handshake::Pqxdh);
            let acc = accept(&mut rng, &mut bob, &wire).expect("accept");
            assert_eq!(acc.session.handshake(), Handshake::Pqxdh);
        }
    }
}

/// PROFILE-pqxdh §4, §6.1: a KEM prekey whose signature does not verify makes the whole bundle
/// unauthenticated (it is never treated as "no KEM prekey": there is no VerifiedBundle at all).
#[test]
fn an_invalid_kem_signature_fails_bundle_verification() {
    let mut rng = rng(122);
    let (mut bob, otks) = Device::new_pq(&mut rng, 1);
    let ik = bob.identity.public();
    let spk = bob.prekeys.signed_prekey();
    let one_time = bob
        .prekeys
        .generate_one_time_kem_prekeys(&mut rng, &bob.identity, 1)
        .expect("generate")
        .remove(0);
    let mallory = IdentityKeyPair::generate(&mut rng);
    let (carol, _) = Device::new_pq(&mut rng, 0);
    for kem in [bob.prekeys.last_resort_kem_prekey(), one_time] {
        let bundle = |k: KemPreKeyPublic| {
            let b = PreKeyBundle::new(ik, spk, otks.first().copied()).with_kem_prekey(k);
            PreKeyBundle::from_bytes(&b.to_bytes()).expect("decodes: signatures are checked later")
        };
        let good = bundle(kem.clone());
        assert!(good.clone().verify().is_ok());
        let mut bad: Vec<KemPreKeyPublic> = (0..512)
            .map(|bit| {
                let mut sig = kem.signature();
                sig[bit / 8] ^= 1 << (bit % 8);
                KemPreKeyPublic::new(kem.id(), kem.key().clone(), sig)
            })
            .collect();
        // Signed by another identity; another device's genuine KEM prekey; a valid signature
        // over another KEM key.
        bad.push(KemPreKeyPublic::new(
            kem.id(),
            kem.key().clone(),
            hazmat::sign_kem_prekey(&mallory, kem.key()),
        ));
        bad.push(carol.prekeys.last_resort_kem_prekey());
        bad.push(KemPreKeyPublic::new(
            kem.id(),
            carol.prekeys.last_resort_kem_prekey().key().clone(),
            kem.signature(),
        ));
        for (i, k) in bad.into_iter().enumerate() {
            let b = bundle(k);
            assert_eq!(
                b.clone().verify().err(),
                Some(BundleError::Unauthenticated),
                "case {i}"
            );
            assert_eq!(
                b.clone().verify_for(&ik).err(),
                Some(BundleError::Unauthenticated),
                "case {i}"
            );
            // The identity check still comes first.
            assert_eq!(
                b.verify_for(&mallory.public()).err(),
                Some(BundleError::IdentityMismatch)
            );
        }
    }
    // A valid KEM signature does not rescue an invalid signed prekey signature.
    let mut sig = spk.signature();
    sig[0] ^= 1;
    let bad_spk = confidant::SignedPreKeyPublic::new(spk.id(), spk.key(), sig, spk.created_at());
    assert_eq!(
        PreKeyBundle::new(ik, bad_spk, None)
            .with_kem_prekey(bob.prekeys.last_resort_kem_prekey())
            .verify()
            .err(),
        Some(BundleError::Unauthenticated)
    );
}

/// PROFILE-pqxdh §6.2 on the wire: an X3DH initial message names no KEM prekey and carries no
/// ciphertext; a PQXDH one has both, with a 1568-byte ciphertext.
#[test]
fn initial_message_kem_field_rules() {
    let mut rng = rng(123);
    let (bob, otks) = Device::new(&mut rng, 1);
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let pq_wire = common::initiate_pq(&mut rng, &alice_id, &bob, otks.first().copied(), None)
        .encrypt(b"pq")
        .expect("encrypt");
    let x_wire = common::initiate(&mut rng, &alice_id, &bob, None)
        .encrypt(b"x")
        .expect("encrypt");
    let pq = fields_of(&pq_wire);
    let x = fields_of(&x_wire);
    let ct = |n: usize| Some(Value::Len(vec![3; n]));
    let cases: Vec<(Fields, DecodeError)> = vec![
        (
            with_field(pq.clone(), 6, None),
            DecodeError::InvalidField("kem_prekey_id"),
        ),
        (
            with_field(with_field(pq.clone(), 6, None), 7, None),
            DecodeError::InvalidField("kem_prekey_id"),
        ),
        (
            with_field(pq.clone(), 7, None),
            DecodeError::InvalidField("kem_ciphertext"),
        ),
        (
            with_field(pq.clone(), 7, ct(KEM_CIPHERTEXT_LEN - 1)),
            DecodeError::InvalidField("kem_ciphertext"),
        ),
        (
            with_field(pq.clone(), 7, ct(KEM_CIPHERTEXT_LEN + 1)),
            DecodeError::InvalidField("kem_ciphertext"),
        ),
        (
            with_field(pq.clone(), 7, ct(0)),
            DecodeError::InvalidField("kem_ciphertext"),
        ),
        (
            with_field(pq.clone(), 1, Some(Value::Varint(3))),
            DecodeError::InvalidField("handshake"),
        ),
        // Relabelled as X3DH with the KEM fields still present.
        (
            with_field(pq.clone(), 1, Some(Value::Varint(1))),
            DecodeError::Unsupported("kem_prekey_id"),
        ),
        (
            with_field(with_field(pq.clone(), 1, Some(Value::Varint(1))), 6, None),
            DecodeError::Unsupported("kem_ciphertext"),
        ),
        (
            with_field(x.clone(), 6, Some(Value::Varint(1))),
            DecodeError::Unsupported("kem_prekey_id"),
        ),
        (
            with_field(x.clone(), 7, ct(KEM_CIPHERTEXT_LEN)),
            DecodeError::Unsupported("kem_ciphertext"),
        ),
        // Relabelled as PQXDH without KEM fields.
        (
            with_field(x.clone(), 1, Some(Value::Varint(2))),
            DecodeError::InvalidField("kem_prekey_id"),
        ),
    ];
    for (fields, expected) in cases {
        let bytes = prekey_wire(&fields);
        assert_eq!(Message::from_bytes(&bytes), Err(expected), "{expected:?}");
    }
    // The crafted encodings are faithful.
    assert_eq!(prekey_wire(&pq), pq_wire);
    assert_eq!(prekey_wire(&x), x_wire);
}

/// An active attacker rewriting a PQXDH initial message into an X3DH one (handshake 1, KEM
/// fields removed) gets nowhere: a default responder refuses X3DH, an `AllowClassical` one
/// fails authentication (SS is missing from SK), and Bob's PQXDH session does not own it.
#[test]
fn rewriting_a_pqxdh_message_as_x3dh_fails() {
    let mut rng = rng(124);
    let (mut bob, _) = Device::new_pq(&mut rng, 0);
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let mut alice = common::initiate_pq(&mut rng, &alice_id, &bob, None, None);
    let wire = alice.encrypt(b"pq").expect("encrypt");
    let downgraded = prekey_wire(&with_field(
        with_field(
            with_field(fields_of(&wire), 1, Some(Value::Varint(1))),
            6,
            None,
        ),
        7,
        None,
    ));
    assert_eq!(prekey(&downgraded).handshake(), Handshake::X3dh);
    assert_eq!(
        accept(&mut rng, &mut bob, &downgraded).err(),
        Some(HandshakeError::PostQuantumRequired)
    );
    bob.prekeys.set_policy(HandshakePolicy::AllowClassical);
    assert_eq!(
        accept(&mut rng, &mut bob, &downgraded).err(),
        Some(HandshakeError::Unauthenticated)
    );
    assert!(replay_entries(&bob.prekeys).is_empty());
    // The genuine message is accepted; later rewritten copies are not its session's.
    let mut bob_s = accept(&mut rng, &mut bob, &wire).expect("accept").session;
    let second = alice.encrypt(b"second").expect("encrypt");
    let rewritten = prekey_wire(&with_field(
        with_field(
            with_field(fields_of(&second), 1, Some(Value::Varint(1))),
            6,
            None,
        ),
        7,
        None,
    ));
    let m = prekey(&rewritten);
    assert!(!bob_s.owns(&m));
    assert!(bob_s.owns(&prekey(&second)));
    let before = bob_s.snapshot();
    assert_eq!(
        bob_s.decrypt(&mut rng, &Message::PreKey(m)).err(),
        Some(DecryptError::OtherSession)
    );
    assert!(bob_s.snapshot() == before);
    // Routed to accept instead: the (signed prekey, base key) X3DH record is separate from the
    // KEM triple, so it gets as far as authentication and fails there.
    assert_eq!(
        accept(&mut rng, &mut bob, &rewritten).err(),
        Some(HandshakeError::Unauthenticated)
    );
    assert_eq!(
        bob_s.decrypt_bytes(&mut rng, &second).map(|p| p.to_vec()),
        Ok(b"second".to_vec())
    );
}

/// PreKeys::accept checks, in order: the policy, the signed prekey, the KEM prekey, the replay
/// record, the one-time prekey (src/prekeys.rs). Each crafted message is wrong in every later
/// check too, so only the order explains the error.
#[test]
fn accept_check_order_with_kem_prekeys() {
    let mut rng = rng(125);
    let (mut bob, otks) = Device::new_pq(&mut rng, 1);
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let wire = common::initiate_pq(&mut rng, &alice_id, &bob, otks.first().copied(), None)
        .encrypt(b"x")
        .expect("encrypt");
    let fields = fields_of(&wire);
    let edit = |spk: u64, otk: u64, kem: u64| {
        let fs = with_field(fields.clone(), 4, Some(Value::Varint(spk)));
        let fs = with_field(fs, 5, Some(Value::Varint(otk)));
        prekey_wire(&with_field(fs, 6, Some(Value::Varint(kem))))
    };
    assert_eq!(
        accept(&mut rng, &mut bob, &edit(9, 77, 99)).err(),
        Some(HandshakeError::UnknownSignedPreKey(9))
    );
    assert_eq!(
        accept(&mut rng, &mut bob, &edit(1, 77, 99)).err(),
        Some(HandshakeError::UnknownKemPreKey(99))
    );
    assert_eq!(
        accept(&mut rng, &mut bob, &edit(1, 77, 1)).err(),
        Some(HandshakeError::UnknownOneTimePreKey(77))
    );
    // KEM id 0 is never assigned.
    assert_eq!(
        accept(&mut rng, &mut bob, &edit(1, 1, 0)).err(),
        Some(HandshakeError::UnknownKemPreKey(0))
    );
    assert_eq!(
        accept(&mut rng, &mut bob, &wire)
            .expect("accept")
            .consumed_one_time_prekey,
        Some(1)
    );
    // Now the last-resort KEM triple is recorded: the replay record comes before the (used,
    // or here unknown) one-time prekey.
    assert_eq!(
        accept(&mut rng, &mut bob, &edit(1, 77, 1)).err(),
        Some(HandshakeError::Replay)
    );
    assert_eq!(
        accept(&mut rng, &mut bob, &wire).err(),
        Some(HandshakeError::Replay)
    );
    // ...but after the KEM prekey.
    assert_eq!(
        accept(&mut rng, &mut bob, &edit(1, 77, 99)).err(),
        Some(HandshakeError::UnknownKemPreKey(99))
    );
}

// ---- Tampering with the KEM ciphertext -----------------------------------------------------------

/// PROFILE-pqxdh §1, §4: a flipped bit anywhere in `CT` is implicitly rejected by ML-KEM (a
/// pseudorandom SS), so the first AEAD fails: `Unauthenticated`, no session, PreKeys
/// byte-identical, no randomness drawn. The genuine message is accepted afterwards.
#[test]
fn a_flipped_kem_ciphertext_bit_is_unauthenticated() {
    let setups = [
        (KemKind::OneTime, true),
        (KemKind::OneTime, false),
        (KemKind::LastResort, false),
        (KemKind::LastResort, true),
    ];
    for (i, (kind, with_opk)) in setups.into_iter().enumerate() {
        let mut rng = rng(130 + i as u64);
        let (mut bob, otks) = Device::new_pq(&mut rng, 1);
        let kem_otk = bob
            .prekeys
            .generate_one_time_kem_prekeys(&mut rng, &bob.identity, 1)
            .expect("generate")
            .remove(0);
        let kem = (kind == KemKind::OneTime).then(|| kem_otk.clone());
        let alice_id = IdentityKeyPair::generate(&mut rng);
        let opk = otks.first().copied().filter(|_| with_opk);
        let mut alice = common::initiate_pq(&mut rng, &alice_id, &bob, opk, kem);
        let wire = alice.encrypt(b"tamper with me").expect("encrypt");
        let at = kem_ciphertext_offset(&wire);
        let before = bob.prekeys.snapshot();
        // First and last byte, both halves of ML-KEM-1024's CT (c1: 1408 bytes, c2: 160).
        for byte in [0usize, 1, 2, 700, 1406, 1407, 1408, 1409, 1500, 1566, 1567] {
            for bit in [0usize, 3, 7] {
                let variant = flip(&wire, (at + byte) * 8 + bit);
                let m = prekey(&variant);
                assert_eq!(m.kem_prekey_id(), prekey(&wire).kem_prekey_id());
                let rng_before = rng.clone();
                assert_eq!(
                    bob.prekeys.accept(&mut rng, &bob.identity, &m).err(),
                    Some(HandshakeError::Unauthenticated),
                    "{kind:?}, byte {byte}, bit {bit}"
                );
                assert!(bob.prekeys.snapshot() == before, "PreKeys changed");
                assert!(rng == rng_before, "randomness used");
            }
        }
        // Any ciphertext at all (not Alice's) fails the same way.
        let forged = prekey_wire(&with_field(
            fields_of(&wire),
            7,
            Some(Value::Len(vec![0; KEM_CIPHERTEXT_LEN])),
        ));
        assert_eq!(
            accept(&mut rng, &mut bob, &forged).err(),
            Some(HandshakeError::Unauthenticated)
        );
        assert!(bob.prekeys.snapshot() == before);
        let acc = accept(&mut rng, &mut bob, &wire).expect("the original still accepts");
        assert_eq!(&acc.plaintext[..], b"tamper with me");
        assert_eq!(
            acc.consumed_one_time_kem_prekey,
            (kind == KemKind::OneTime).then_some(kem_otk.id())
        );
        assert_eq!(acc.consumed_one_time_prekey, opk.map(|k| k.id()));
    }
}

/// How the responder rejected a tampered initial message (no session exists yet).
fn rejection_class(e: &RecvError) -> &'static str {
    match e {
        RecvError::Decode(_) => "decode",
        RecvError::Handshake(HandshakeError::Unauthenticated) => "unauthenticated",
        RecvError::Handshake(HandshakeError::UnknownSignedPreKey(_)) => "unknown signed prekey",
        RecvError::Handshake(HandshakeError::UnknownKemPreKey(_)) => "unknown KEM prekey",
        RecvError::Handshake(HandshakeError::UnknownOneTimePreKey(_)) => "unknown one-time prekey",
        RecvError::Handshake(HandshakeError::FirstMessage(_)) => "first message",
        other => panic!("unexpected rejection {other:?}"),
    }
}

/// Which bits of an initial message a bit-flip test flips.
#[derive(Clone, Copy)]
enum Sample {
    /// Every bit.
    All,
    /// Every 7th bit (0, 7, 14, ...): every byte, every bit position mod 8.
    Every7th,
}

/// Flips the `sample`d bits of `wire` one at a time and delivers each variant to Bob (no session
/// yet): each must be rejected with a typed error, leave PreKeys byte-identical and draw no
/// randomness; flips inside the KEM ciphertext must be `Unauthenticated`. Returns the rejection
/// classes.
fn flip_bits_of_an_initial_message(
    rng: &mut ChaCha20Rng,
    bob: &mut Device,
    wire: &[u8],
    sample: Sample,
) -> BTreeMap<&'static str, usize> {
    let original = Message::from_bytes(wire).expect("original decodes");
    let ct = kem_ciphertext_offset(wire)..kem_ciphertext_offset(wire) + KEM_CIPHERTEXT_LEN;
    let before = bob.prekeys.snapshot();
    let mut classes = BTreeMap::new();
    let bits = (0..wire.len() * 8).filter(|bit| match sample {
        Sample::All => true,
        Sample::Every7th => bit % 7 == 0,
    });
    for bit in bits {
        let variant = flip(wire, bit);
        assert!(
            Message::from_bytes(&variant) != Ok(original.clone()),
            "bit {bit}: a single-bit flip parsed to the same message"
        );
        let rng_before = rng.clone();
        let error = match bob_receive(rng, bob, None, &variant) {
            Ok(_) => panic!("bit {bit}: tampered initial message accepted"),
            Err(e) => e,
        };
        assert!(
            bob.prekeys.snapshot() == before,
            "bit {bit}: PreKeys changed"
        );
        assert!(*rng == rng_before, "bit {bit}: randomness used");
        if ct.contains(&(bit / 8)) {
            assert_eq!(
                error,
                RecvError::Handshake(HandshakeError::Unauthenticated),
                "bit {bit} (in the KEM ciphertext)"
            );
        }
        *classes.entry(rejection_class(&error)).or_default() += 1;
    }
    classes
}

/// Bob with signed prekeys 1..=4, one-time prekeys 1..=16 and KEM prekeys 1 (retired last
/// resort), 2..=9 (one-time) and 10 (current last resort), so flipped ids often name held keys.
struct TamperSetup {
    rng: ChaCha20Rng,
    alice_id: IdentityKeyPair,
    bob: Device,
    /// Bundle parts published before the rotations: signed prekey 1, one-time prekeys.
    spk1: confidant::SignedPreKeyPublic,
    otks: Vec<OneTimePreKeyPublic>,
    kem_otks: Vec<KemPreKeyPublic>,
}

fn tamper_setup(seed: u64) -> TamperSetup {
    let mut rng = rng(seed);
    let (mut bob, otks) = Device::new_pq(&mut rng, 16);
    let spk1 = bob.prekeys.signed_prekey();
    for _ in 0..3 {
        bob.prekeys
            .rotate_signed_prekey(&mut rng, &bob.identity, NOW);
    }
    let kem_otks = bob
        .prekeys
        .generate_one_time_kem_prekeys(&mut rng, &bob.identity, 8)
        .expect("generate");
    assert_eq!(kem_otks.first().map(KemPreKeyPublic::id), Some(2));
    assert_eq!(
        bob.prekeys
            .rotate_last_resort_kem_prekey(&mut rng, &bob.identity, NOW)
            .id(),
        10
    );
    let alice_id = IdentityKeyPair::generate(&mut rng);
    TamperSetup {
        rng,
        alice_id,
        bob,
        spk1,
        otks,
        kem_otks,
    }
}

/// Every single-bit flip of a whole PQXDH initial message (about 13 800 bits) is rejected. The
/// last-resort message below gets every 7th bit (a 7-bit stride still hits every byte and every
/// bit position), to keep the suite fast.
#[test]
fn every_bit_flip_of_a_one_time_pqxdh_initial_message_is_rejected() {
    // One-time KEM prekey 4 with one-time prekey 6, under the retired signed prekey 1 (the
    // bundle predates the rotations).
    let TamperSetup {
        mut rng,
        alice_id,
        mut bob,
        spk1,
        otks,
        kem_otks,
    } = tamper_setup(140);
    let bundle = PreKeyBundle::new(bob.identity.public(), spk1, Some(otks[5]))
        .with_kem_prekey(kem_otks[2].clone());
    let mut alice =
        Session::initiate(&mut rng, &alice_id, bundle.verify().expect("verify")).expect("initiate");
    let wire = alice.encrypt(b"first message").expect("encrypt");
    let m = prekey(&wire);
    assert_eq!(
        (
            m.signed_prekey_id(),
            m.one_time_prekey_id(),
            m.kem_prekey_id()
        ),
        (1, Some(6), Some(4))
    );
    let classes = flip_bits_of_an_initial_message(&mut rng, &mut bob, &wire, Sample::All);
    for class in [
        "decode",
        "unauthenticated",
        "unknown signed prekey",
        "unknown KEM prekey",
        "unknown one-time prekey",
        "first message",
    ] {
        assert!(
            classes.get(class).is_some_and(|n| *n > 0),
            "{class}: {classes:?}"
        );
    }
    assert_eq!(classes.values().sum::<usize>(), wire.len() * 8);
    let acc = accept(&mut rng, &mut bob, &wire).expect("the original still accepts");
    assert_eq!(acc.consumed_one_time_kem_prekey, Some(4));
    assert_eq!(acc.consumed_one_time_prekey, Some(6));
}

/// As above, with the current last-resort KEM prekey 10 and no one-time prekey (every 7th bit).
#[test]
fn every_bit_flip_of_a_last_resort_pqxdh_initial_message_is_rejected() {
    let TamperSetup {
        mut rng,
        alice_id,
        mut bob,
        ..
    } = tamper_setup(141);
    let mut alice = common::initiate_pq(&mut rng, &alice_id, &bob, None, None);
    let wire = alice.encrypt(b"no opk").expect("encrypt");
    assert_eq!(prekey(&wire).kem_prekey_id(), Some(10));
    let classes = flip_bits_of_an_initial_message(&mut rng, &mut bob, &wire, Sample::Every7th);
    assert_eq!(
        classes.values().sum::<usize>(),
        (wire.len() * 8).div_ceil(7)
    );
    // (With a 7-bit stride no flip happens to turn KEM id 10 into an unknown id.)
    for class in ["decode", "unauthenticated"] {
        assert!(
            classes.get(class).is_some_and(|n| *n > 0),
            "{class}: {classes:?}"
        );
    }
    assert!(replay_entries(&bob.prekeys).is_empty());
    let acc = accept(&mut rng, &mut bob, &wire).expect("the original still accepts");
    assert_eq!(acc.consumed_one_time_kem_prekey, None);
    assert_eq!(replay_entries(&bob.prekeys).len(), 1);
}

// ---- Last-resort KEM prekeys and their replay record (PROFILE-pqxdh §6.4) ------------------------

#[test]
fn last_resort_replay_is_rejected() {
    let mut rng = rng(150);
    let (mut bob, otks) = Device::new_pq(&mut rng, 1);
    let alice_id = IdentityKeyPair::generate(&mut rng);

    // Without a one-time prekey: the KEM triple (1, 1, EK_A) rejects the replay.
    let mut a1 = common::initiate_pq(&mut rng, &alice_id, &bob, None, None);
    let w1 = a1.encrypt(b"one").expect("encrypt");
    let acc = accept(&mut rng, &mut bob, &w1).expect("accept");
    assert_eq!(acc.consumed_one_time_kem_prekey, None);
    let base1 = a1.base_key().to_bytes().to_vec();
    assert_eq!(
        replay_entries(&bob.prekeys),
        vec![(1, base1.clone(), Some(1))]
    );
    assert_eq!(
        accept(&mut rng, &mut bob, &w1).err(),
        Some(HandshakeError::Replay)
    );
    // So is the initiator's next message of the same session (it belongs to the session).
    let w1b = a1.encrypt(b"one again").expect("encrypt");
    assert_eq!(
        accept(&mut rng, &mut bob, &w1b).err(),
        Some(HandshakeError::Replay)
    );

    // A new initial message (new base key) with the same last-resort KEM prekey is accepted.
    let mut a2 = common::initiate_pq(&mut rng, &alice_id, &bob, None, None);
    let w2 = a2.encrypt(b"two").expect("encrypt");
    assert_ne!(a2.base_key(), a1.base_key());
    assert_eq!(
        &accept(&mut rng, &mut bob, &w2).expect("accept").plaintext[..],
        b"two"
    );
    assert_eq!(replay_entries(&bob.prekeys).len(), 2);

    // With a one-time prekey the triple is recorded too, and the replay record is checked
    // before the (now deleted) one-time prekey: the replay is `Replay` as well.
    let mut a3 = common::initiate_pq(&mut rng, &alice_id, &bob, Some(otks[0]), None);
    let w3 = a3.encrypt(b"three").expect("encrypt");
    let acc = accept(&mut rng, &mut bob, &w3).expect("accept");
    assert_eq!(acc.consumed_one_time_prekey, Some(otks[0].id()));
    assert_eq!(acc.consumed_one_time_kem_prekey, None);
    let base3 = a3.base_key().to_bytes().to_vec();
    assert!(replay_entries(&bob.prekeys).contains(&(1, base3, Some(1))));
    assert_eq!(
        accept(&mut rng, &mut bob, &w3).err(),
        Some(HandshakeError::Replay)
    );
    // The one-time prekey id is unauthenticated routing data; a replay with it removed or
    // changed is caught by the KEM triple just the same.
    let w3_stripped = prekey_wire(&with_field(fields_of(&w3), 5, None));
    assert_eq!(prekey(&w3_stripped).one_time_prekey_id(), None);
    assert_eq!(
        accept(&mut rng, &mut bob, &w3_stripped).err(),
        Some(HandshakeError::Replay)
    );
    let w3_other = prekey_wire(&with_field(fields_of(&w3), 5, Some(Value::Varint(77))));
    assert_eq!(
        accept(&mut rng, &mut bob, &w3_other).err(),
        Some(HandshakeError::Replay)
    );

    // The records survive a PreKeys snapshot/restore.
    let snap = bob.prekeys.snapshot();
    bob.prekeys = PreKeys::restore(&snap).expect("restore");
    assert!(bob.prekeys.snapshot() == snap);
    for w in [&w1, &w2, &w3, &w3_stripped] {
        assert_eq!(
            accept(&mut rng, &mut bob, w).err(),
            Some(HandshakeError::Replay)
        );
    }
}

/// rotate_last_resort_kem_prekey keeps the old key (and its replay record) until prune drops it
/// after the grace period (Pruned.last_resort_kem_prekeys); then its id is unknown.
#[test]
fn last_resort_kem_prekey_rotation_grace_period_and_prune() {
    let mut rng = rng(151);
    let (mut bob, _) = Device::new_pq(&mut rng, 0);
    let old = bob.prekeys.last_resort_kem_prekey();
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let mut a1 = common::initiate_pq(&mut rng, &alice_id, &bob, None, None);
    let w1 = a1.encrypt(b"delivered").expect("encrypt");
    accept(&mut rng, &mut bob, &w1).expect("accept");
    // In flight during the rotation: made from the old bundle.
    let mut a2 = common::initiate_pq(&mut rng, &alice_id, &bob, None, None);
    let w2 = a2.encrypt(b"late").expect("encrypt");

    let t1 = Timestamp(NOW.0 + 1000);
    let new = bob
        .prekeys
        .rotate_last_resort_kem_prekey(&mut rng, &bob.identity, t1);
    assert_eq!(new.id(), 2);
    assert!(new.verify(&bob.identity.public()));
    assert_ne!(new.key(), old.key());
    assert_eq!(bob.prekeys.last_resort_kem_prekey(), new);

    // Retired but within the grace period: still accepted, and its replays still rejected.
    assert_eq!(
        &accept(&mut rng, &mut bob, &w2).expect("accept").plaintext[..],
        b"late"
    );
    assert_eq!(
        accept(&mut rng, &mut bob, &w1).err(),
        Some(HandshakeError::Replay)
    );
    assert_eq!(
        bob.prekeys.prune(
            Timestamp(t1.0 + SIGNED_PREKEY_GRACE_MS - 1),
            SIGNED_PREKEY_GRACE_MS
        ),
        Pruned::default()
    );
    assert_eq!(replay_entries(&bob.prekeys).len(), 2);
    let restored = PreKeys::restore(&bob.prekeys.snapshot()).expect("restore");
    assert!(restored.snapshot() == bob.prekeys.snapshot());

    // Past the grace period: dropped with its replay records.
    assert_eq!(
        bob.prekeys.prune(
            Timestamp(t1.0 + SIGNED_PREKEY_GRACE_MS),
            SIGNED_PREKEY_GRACE_MS
        ),
        Pruned {
            signed_prekeys: vec![],
            last_resort_kem_prekeys: vec![1],
        }
    );
    assert!(replay_entries(&bob.prekeys).is_empty());
    for w in [&w1, &w2] {
        assert_eq!(
            accept(&mut rng, &mut bob, w).err(),
            Some(HandshakeError::UnknownKemPreKey(1))
        );
    }
    let mut a3 = common::initiate_pq(&mut rng, &alice_id, &bob, None, Some(old.clone()));
    assert_eq!(
        accept(
            &mut rng,
            &mut bob,
            &a3.encrypt(b"old key").expect("encrypt")
        )
        .err(),
        Some(HandshakeError::UnknownKemPreKey(1))
    );
    // The current one is never pruned and keeps working.
    assert_eq!(bob.prekeys.prune(Timestamp(u64::MAX), 0), Pruned::default());
    let mut a4 = common::initiate_pq(&mut rng, &alice_id, &bob, None, None);
    assert!(
        accept(
            &mut rng,
            &mut bob,
            &a4.encrypt(b"new key").expect("encrypt")
        )
        .is_ok()
    );
}

/// At most MAX_LAST_RESORT_KEM_PREKEYS are held; rotating past that drops the oldest with its
/// replay record.
#[test]
fn last_resort_rotation_keeps_at_most_the_limit() {
    let mut rng = rng(152);
    let (mut bob, _) = Device::new_pq(&mut rng, 0);
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let mut a1 = common::initiate_pq(&mut rng, &alice_id, &bob, None, None);
    let mut a2 = common::initiate_pq(&mut rng, &alice_id, &bob, None, None);
    let (w1, w2) = (
        a1.encrypt(b"1").expect("encrypt"),
        a2.encrypt(b"2").expect("encrypt"),
    );
    for _ in 0..MAX_LAST_RESORT_KEM_PREKEYS - 1 {
        bob.prekeys
            .rotate_last_resort_kem_prekey(&mut rng, &bob.identity, NOW);
    }
    assert_eq!(
        bob.prekeys.last_resort_kem_prekey().id(),
        MAX_LAST_RESORT_KEM_PREKEYS as u32
    );
    assert!(accept(&mut rng, &mut bob, &w1).is_ok());
    assert_eq!(replay_entries(&bob.prekeys).len(), 1);
    bob.prekeys
        .rotate_last_resort_kem_prekey(&mut rng, &bob.identity, NOW);
    assert!(replay_entries(&bob.prekeys).is_empty());
    for w in [&w1, &w2] {
        assert_eq!(
            accept(&mut rng, &mut bob, w).err(),
            Some(HandshakeError::UnknownKemPreKey(1))
        );
    }
    let restored = PreKeys::restore(&bob.prekeys.snapshot()).expect("restore");
    assert!(restored.snapshot() == bob.prekeys.snapshot());
}

/// Dropping a signed prekey drops the KEM triples that name it (the triple can never match
/// again), while the last-resort KEM prekey stays.
#[test]
fn pruning_a_signed_prekey_drops_its_kem_triples() {
    let mut rng = rng(153);
    let (mut bob, _) = Device::new_pq(&mut rng, 0);
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let mut a1 = common::initiate_pq(&mut rng, &alice_id, &bob, None, None);
    let w1 = a1.encrypt(b"1").expect("encrypt");
    accept(&mut rng, &mut bob, &w1).expect("accept");
    bob.prekeys
        .rotate_signed_prekey(&mut rng, &bob.identity, NOW);
    let mut a2 = common::initiate_pq(&mut rng, &alice_id, &bob, None, None);
    let w2 = a2.encrypt(b"2").expect("encrypt");
    accept(&mut rng, &mut bob, &w2).expect("accept");
    let base2 = a2.base_key().to_bytes().to_vec();
    assert_eq!(replay_entries(&bob.prekeys).len(), 2);
    assert_eq!(
        bob.prekeys.prune(
            Timestamp(NOW.0 + SIGNED_PREKEY_GRACE_MS),
            SIGNED_PREKEY_GRACE_MS
        ),
        Pruned {
            signed_prekeys: vec![1],
            last_resort_kem_prekeys: vec![],
        }
    );
    assert_eq!(replay_entries(&bob.prekeys), vec![(2, base2, Some(1))]);
    assert_eq!(
        accept(&mut rng, &mut bob, &w1).err(),
        Some(HandshakeError::UnknownSignedPreKey(1))
    );
    assert_eq!(
        accept(&mut rng, &mut bob, &w2).err(),
        Some(HandshakeError::Replay)
    );
}

/// A full KEM replay record refuses (fail closed) instead of forgetting, naming the KEM prekey
/// to rotate; one-time KEM prekeys need no record and are unaffected.
#[test]
fn a_full_kem_replay_record_refuses_instead_of_forgetting() {
    let mut rng = rng(154);
    let (bob, otks) = Device::new_pq(&mut rng, 1);
    let alice_id = IdentityKeyPair::generate(&mut rng);

    // One below the limit: one more accept fits, the next is refused.
    let almost = with_replay_entries(
        &bob.prekeys,
        (0..MAX_ACCEPTED_BASE_KEYS as u32 - 1).map(|i| (1, numbered(i), 1)),
    );
    let mut b = Device {
        identity: IdentityKeyPair::from_seed(&bob.identity.to_seed()),
        prekeys: almost,
    };
    let mut s = common::initiate_pq(&mut rng, &alice_id, &b, None, None);
    assert!(accept(&mut rng, &mut b, &s.encrypt(b"last").expect("encrypt")).is_ok());
    let full = ReplayFull(1);
    let mut s = common::initiate_pq(&mut rng, &alice_id, &b, None, None);
    assert_eq!(
        accept(
            &mut rng,
            &mut b,
            &s.encrypt(b"one too many").expect("encrypt")
        )
        .err(),
        Some(full.error())
    );

    let full_prekeys = with_replay_entries(
        &bob.prekeys,
        (0..MAX_ACCEPTED_BASE_KEYS as u32).map(|i| (1, numbered(i), 1)),
    );
    let mut bob = Device {
        identity: bob.identity,
        prekeys: full_prekeys,
    };
    let mut s = common::initiate_pq(&mut rng, &alice_id, &bob, None, None);
    let wire = s.encrypt(b"hi").expect("encrypt");
    assert_eq!(accept(&mut rng, &mut bob, &wire).err(), Some(full.error()));
    // With a one-time prekey the triple is still needed: refused too, the prekey not consumed.
    let mut s = common::initiate_pq(&mut rng, &alice_id, &bob, Some(otks[0]), None);
    assert_eq!(
        accept(&mut rng, &mut bob, &s.encrypt(b"hi").expect("encrypt")).err(),
        Some(full.error())
    );
    assert_eq!(bob.prekeys.one_time_prekey_count(), 1);
    // A one-time KEM prekey needs no record.
    let kem_otk = bob
        .prekeys
        .generate_one_time_kem_prekeys(&mut rng, &bob.identity, 1)
        .expect("generate")
        .remove(0);
    let mut s = common::initiate_pq(&mut rng, &alice_id, &bob, None, Some(kem_otk.clone()));
    let acc = accept(
        &mut rng,
        &mut bob,
        &s.encrypt(b"one-time").expect("encrypt"),
    )
    .expect("accept");
    assert_eq!(acc.consumed_one_time_kem_prekey, Some(kem_otk.id()));
    // After rotating the last-resort KEM prekey, fresh bundles work again; the full record
    // of the old key is kept (and keeps refusing) while that key is held.
    let new = bob
        .prekeys
        .rotate_last_resort_kem_prekey(&mut rng, &bob.identity, NOW);
    let mut s2 = common::initiate_pq(&mut rng, &alice_id, &bob, None, None);
    let w2 = s2.encrypt(b"after rotation").expect("encrypt");
    assert_eq!(prekey(&w2).kem_prekey_id(), Some(new.id()));
    assert_eq!(
        &accept(&mut rng, &mut bob, &w2).expect("accept").plaintext[..],
        b"after rotation"
    );
    assert_eq!(
        accept(&mut rng, &mut bob, &w2).err(),
        Some(HandshakeError::Replay)
    );
    assert_eq!(accept(&mut rng, &mut bob, &wire).err(), Some(full.error()));
}

/// The `ReplayRecordFull` error for last-resort KEM prekey `.0` under signed prekey 1.
struct ReplayFull(u32);

impl ReplayFull {
    fn error(&self) -> HandshakeError {
        HandshakeError::ReplayRecordFull {
            signed_prekey_id: 1,
            kem_prekey_id: Some(self.0),
            limit: MAX_ACCEPTED_BASE_KEYS,
        }
    }
}

// ---- Initial data repetition (PROFILE-pqxdh §5) -------------------------------------------------

/// Alice repeats the KEM prekey id and the same ciphertext in every initial message until the
/// first reply, also across a Session snapshot/restore; Bob's session owns all of them.
#[test]
fn initiator_repeats_kem_data_until_the_first_reply() {
    let mut rng = rng(160);
    let (mut bob, otks) = Device::new_pq(&mut rng, 1);
    let kem_otk = bob
        .prekeys
        .generate_one_time_kem_prekeys(&mut rng, &bob.identity, 1)
        .expect("generate")
        .remove(0);
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let mut alice = common::initiate_pq(
        &mut rng,
        &alice_id,
        &bob,
        otks.first().copied(),
        Some(kem_otk.clone()),
    );
    let mut m: Vec<Vec<u8>> = (0..2u8)
        .map(|i| alice.encrypt(&[b'm', i]).expect("encrypt"))
        .collect();
    // A restart between messages: the pending KEM data is part of the snapshot.
    let snap = alice.snapshot();
    alice = Session::restore(&snap).expect("restore");
    assert!(alice.snapshot() == snap);
    assert!(alice.awaiting_reply());
    assert_eq!(alice.handshake(), Handshake::Pqxdh);
    m.extend((2..4u8).map(|i| alice.encrypt(&[b'm', i]).expect("encrypt")));
    let ct = kem_ciphertext(&m[0]);
    assert_eq!(ct.len(), KEM_CIPHERTEXT_LEN);
    for w in &m {
        let p = prekey(w);
        assert_eq!(p.handshake(), Handshake::Pqxdh);
        assert_eq!(p.kem_prekey_id(), Some(kem_otk.id()));
        assert_eq!(p.one_time_prekey_id(), Some(otks[0].id()));
        assert_eq!(p.signed_prekey_id(), 1);
        assert_eq!(p.base_key(), alice.base_key());
        assert_eq!(kem_ciphertext(w), ct, "the same ciphertext every time");
    }

    // Bob accepts m[1] first; the others are owned by his session, before and after a restore.
    let Ok(Routed::Accepted(acc)) = bob_receive(&mut rng, &mut bob, None, &m[1]) else {
        panic!("accept")
    };
    assert_eq!(acc.consumed_one_time_kem_prekey, Some(kem_otk.id()));
    let mut bob_s = acc.session;
    for (i, w) in [(0u8, &m[0]), (2, &m[2])] {
        assert!(bob_s.owns(&prekey(w)));
        let Ok(Routed::Session(p)) = bob_receive(&mut rng, &mut bob, Some(&mut bob_s), w) else {
            panic!("decrypt {i}")
        };
        assert_eq!(p, [b'm', i]);
    }
    bob_s = Session::restore(&bob_s.snapshot()).expect("restore");
    assert!(bob_s.owns(&prekey(&m[3])));
    // Without the session, m[3] would go to accept: its one-time KEM prekey is gone.
    assert_eq!(
        accept(&mut rng, &mut bob, &m[3]).err(),
        Some(HandshakeError::UnknownKemPreKey(kem_otk.id()))
    );

    // The first reply ends the repetition; in-flight initial messages still decrypt.
    let reply = bob_s.encrypt(b"reply").expect("encrypt");
    let in_flight = alice.encrypt(b"in flight").expect("encrypt");
    assert_eq!(kem_ciphertext(&in_flight), ct);
    assert_eq!(
        alice.decrypt_bytes(&mut rng, &reply).map(|p| p.to_vec()),
        Ok(b"reply".to_vec())
    );
    assert!(!alice.awaiting_reply());
    let after = alice.encrypt(b"ratchet").expect("encrypt");
    assert!(is_ratchet(&after) && is_prekey(&in_flight));
    let alice = Session::restore(&alice.snapshot()).expect("restore");
    assert!(!alice.awaiting_reply());
    assert_eq!(alice.handshake(), Handshake::Pqxdh);
    for (w, p) in [
        (&after, &b"ratchet"[..]),
        (&in_flight, b"in flight"),
        (&m[3], &[b'm', 3][..]),
    ] {
        let Ok(Routed::Session(got)) = bob_receive(&mut rng, &mut bob, Some(&mut bob_s), w) else {
            panic!("decrypt")
        };
        assert_eq!(got, p);
    }
}

// ---- Key server (PROTOCOL.md §7, PROFILE-pqxdh §3) ---------------------------------------------

fn pq_upload(
    bob: &Device,
    otks: &[OneTimePreKeyPublic],
    last_resort: Option<&KemPreKeyPublic>,
    kem_otks: &[KemPreKeyPublic],
) -> Vec<u8> {
    let mut up = PreKeyUpload::new(
        bob.identity.public(),
        bob.prekeys.signed_prekey(),
        otks.to_vec(),
    )
    .with_one_time_kem_prekeys(kem_otks.to_vec());
    if let Some(k) = last_resort {
        up = up.with_last_resort_kem_prekey(k.clone());
    }
    up.to_bytes()
}

/// `kem` under another id (its signature covers only the key, so it stays valid).
fn renumbered(kem: &KemPreKeyPublic, id: u32) -> KemPreKeyPublic {
    KemPreKeyPublic::new(id, kem.key().clone(), kem.signature())
}

/// The last-resort KEM prekey the server falls back to (probed on a copy).
fn served_last_resort(server: &DeviceKeys) -> Option<KemPreKeyPublic> {
    let mut probe = server.clone();
    while probe.one_time_kem_prekey_count() > 0 {
        probe.fetch_bundle();
    }
    probe.fetch_bundle().bundle.kem_prekey().cloned()
}

/// Each one-time KEM prekey is served at most once, oldest first, then the last-resort one;
/// every bundle starts a PQXDH session Bob accepts; low stock reflects the KEM stock too.
#[test]
fn key_server_serves_each_one_time_kem_prekey_at_most_once() {
    let mut rng = rng(170);
    let kem_stock = LOW_ONE_TIME_PREKEY_STOCK + 2;
    let fetches = kem_stock + 3;
    // Enough EC one-time prekeys that their stock never runs low here.
    let ec_stock = LOW_ONE_TIME_PREKEY_STOCK + fetches + 2;
    let (mut bob, otks) = Device::new_pq(&mut rng, ec_stock);
    let kem_otks = bob
        .prekeys
        .generate_one_time_kem_prekeys(&mut rng, &bob.identity, kem_stock)
        .expect("generate");
    let last_resort = bob.prekeys.last_resort_kem_prekey();
    let mut server = DeviceKeys::register(&pq_upload(&bob, &otks, Some(&last_resort), &kem_otks))
        .expect("register");
    assert_eq!(server.one_time_prekey_count(), ec_stock);
    assert_eq!(server.one_time_kem_prekey_count(), kem_stock);

    let mut served = Vec::new();
    let mut low = Vec::new();
    for i in 0..fetches {
        let f = server.fetch_bundle();
        let remaining_kem = kem_stock.saturating_sub(i + 1);
        assert_eq!(f.remaining_one_time_prekeys, ec_stock - i - 1);
        assert_eq!(f.remaining_one_time_kem_prekeys, remaining_kem);
        assert!(f.remaining_one_time_prekeys >= LOW_ONE_TIME_PREKEY_STOCK);
        assert_eq!(f.low_stock, remaining_kem < LOW_ONE_TIME_PREKEY_STOCK);
        low.push(f.low_stock);
        let bundle = PreKeyBundle::from_bytes(&f.bundle.to_bytes()).expect("decode");
        assert_eq!(bundle, f.bundle);
        let verified = bundle.verify_for(&bob.identity.public()).expect("verify");
        assert_eq!(verified.one_time_prekey(), Some(otks[i]));
        let kem = verified.kem_prekey().expect("always a KEM prekey").clone();
        if i < kem_stock {
            assert_eq!(kem, kem_otks[i], "served oldest first");
        } else {
            assert_eq!(kem, last_resort, "then the last-resort one");
        }
        let a = IdentityKeyPair::generate(&mut rng);
        let mut s = Session::initiate(&mut rng, &a, verified).expect("initiate");
        assert_eq!(s.handshake(), Handshake::Pqxdh);
        let acc = accept(&mut rng, &mut bob, &s.encrypt(b"x").expect("encrypt")).expect("accept");
        assert_eq!(
            acc.consumed_one_time_kem_prekey,
            (i < kem_stock).then_some(kem.id())
        );
        if i < kem_stock {
            served.push(kem.id());
        }
    }
    // low_stock flips exactly when the KEM stock drops below the threshold.
    let flip_at = kem_stock - LOW_ONE_TIME_PREKEY_STOCK;
    assert_eq!(low, (0..fetches).map(|i| i >= flip_at).collect::<Vec<_>>());
    let mut unique = served.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        kem_stock,
        "no one-time KEM prekey served twice"
    );
    assert_eq!(bob.prekeys.one_time_kem_prekey_count(), 0);

    // Restocking ends the low-stock state at exactly the threshold.
    let more = bob
        .prekeys
        .generate_one_time_kem_prekeys(&mut rng, &bob.identity, LOW_ONE_TIME_PREKEY_STOCK + 1)
        .expect("generate");
    server
        .apply_upload(&pq_upload(&bob, &[], None, &more))
        .expect("restock");
    let f = server.fetch_bundle();
    assert_eq!(
        (f.remaining_one_time_kem_prekeys, f.low_stock),
        (LOW_ONE_TIME_PREKEY_STOCK, false)
    );
    let f = server.fetch_bundle();
    assert_eq!(
        (f.remaining_one_time_kem_prekeys, f.low_stock),
        (LOW_ONE_TIME_PREKEY_STOCK - 1, true)
    );

    // A device without KEM prekeys: only the EC stock counts, and its bundles are classical
    // (which a default initiator refuses).
    let (carol, carol_otks) = Device::new_pq(&mut rng, LOW_ONE_TIME_PREKEY_STOCK + 2);
    let mut classical =
        DeviceKeys::register(&pq_upload(&carol, &carol_otks, None, &[])).expect("register");
    let f = classical.fetch_bundle();
    assert_eq!(
        (
            f.remaining_one_time_prekeys,
            f.remaining_one_time_kem_prekeys,
            f.low_stock
        ),
        (LOW_ONE_TIME_PREKEY_STOCK + 1, 0, false)
    );
    assert!(f.bundle.kem_prekey().is_none());
    let a = IdentityKeyPair::generate(&mut rng);
    assert_eq!(
        Session::initiate(&mut rng, &a, f.bundle.verify().expect("verify")).err(),
        Some(HandshakeError::PostQuantumRequired)
    );
    // Adding a last-resort KEM prekey later makes its bundles PQXDH.
    classical
        .apply_upload(&pq_upload(
            &carol,
            &[],
            Some(&carol.prekeys.last_resort_kem_prekey()),
            &[],
        ))
        .expect("upgrade");
    let f = classical.fetch_bundle();
    assert_eq!(
        f.bundle.kem_prekey(),
        Some(&carol.prekeys.last_resort_kem_prekey())
    );
    assert_eq!(
        (
            f.remaining_one_time_prekeys,
            f.remaining_one_time_kem_prekeys,
            f.low_stock
        ),
        (LOW_ONE_TIME_PREKEY_STOCK, 0, true),
        "a device with KEM prekeys but no one-time KEM stock is low"
    );
}

/// Upload rules for KEM prekeys: newer last-resort ids only (RFC 1982 order), an upload without
/// one keeps the current one, one KEM id space, valid signatures, batch and stock limits.
/// Every rejected upload changes nothing.
#[test]
fn key_server_kem_upload_rules() {
    let mut rng = rng(171);
    let (mut bob, _) = Device::new_pq(&mut rng, 0);
    let lr1 = bob.prekeys.last_resort_kem_prekey();
    let kem_otks = bob
        .prekeys
        .generate_one_time_kem_prekeys(&mut rng, &bob.identity, 3)
        .expect("generate");
    assert_eq!(
        kem_otks.iter().map(|k| k.id()).collect::<Vec<_>>(),
        [2, 3, 4]
    );
    let mut server =
        DeviceKeys::register(&pq_upload(&bob, &[], Some(&lr1), &kem_otks[..2])).expect("register");
    assert_eq!(served_last_resort(&server), Some(lr1.clone()));

    // An upload without a last-resort KEM prekey keeps the current one.
    server
        .apply_upload(&pq_upload(&bob, &[], None, &kem_otks[2..]))
        .expect("apply");
    assert_eq!(server.one_time_kem_prekey_count(), 3);
    assert_eq!(served_last_resort(&server), Some(lr1.clone()));

    // A newer one replaces it; repeating the current one is fine.
    let lr5 = bob
        .prekeys
        .rotate_last_resort_kem_prekey(&mut rng, &bob.identity, NOW);
    assert_eq!(lr5.id(), 5);
    server
        .apply_upload(&pq_upload(&bob, &[], Some(&lr5), &[]))
        .expect("newer");
    server
        .apply_upload(&pq_upload(&bob, &[], Some(&lr5), &[]))
        .expect("same");
    assert_eq!(served_last_resort(&server), Some(lr5.clone()));

    let before = server.clone();
    let mallory = IdentityKeyPair::generate(&mut rng);
    let mut bad_sig = lr5.signature();
    bad_sig[5] ^= 0x80;
    // (upload, error from apply_upload, result of registering the same upload: the stateless
    // checks fail the same way; without a last-resort KEM prekey one-time ones are refused).
    let missing = Err(UploadError::MissingLastResortKemPreKey);
    let cases: Vec<(Vec<u8>, UploadError, Result<(), UploadError>)> = vec![
        // An older last-resort id, or the current id with other content.
        (
            pq_upload(&bob, &[], Some(&lr1), &[]),
            UploadError::StaleKemPreKey { id: 1, current: 5 },
            Ok(()),
        ),
        (
            pq_upload(&bob, &[], Some(&renumbered(&lr1, 5)), &[]),
            UploadError::StaleKemPreKey { id: 5, current: 5 },
            Ok(()),
        ),
        // One KEM id space: duplicates within the one-time prekeys and across one-time and
        // last-resort in one upload, against the one-time stock and against the stocked
        // last-resort prekey.
        (
            pq_upload(&bob, &[], None, &[renumbered(&lr5, 9), renumbered(&lr1, 9)]),
            UploadError::DuplicateKemId(9),
            Err(UploadError::DuplicateKemId(9)),
        ),
        (
            pq_upload(&bob, &[], Some(&lr5), &[renumbered(&kem_otks[0], 5)]),
            UploadError::DuplicateKemId(5),
            Err(UploadError::DuplicateKemId(5)),
        ),
        (
            pq_upload(
                &bob,
                &[],
                None,
                &[renumbered(&lr5, 10), kem_otks[1].clone()],
            ),
            UploadError::DuplicateKemId(3),
            missing,
        ),
        (
            pq_upload(&bob, &[], None, &[renumbered(&kem_otks[0], 5)]),
            UploadError::DuplicateKemId(5),
            missing,
        ),
        // (A newer last-resort id naming a stocked one-time KEM prekey: see
        // key_server_rejects_a_last_resort_id_already_stocked_as_one_time.)
        // Signatures.
        (
            pq_upload(
                &bob,
                &[],
                Some(&KemPreKeyPublic::new(6, lr5.key().clone(), bad_sig)),
                &[],
            ),
            UploadError::Unauthenticated,
            Err(UploadError::Unauthenticated),
        ),
        (
            pq_upload(
                &bob,
                &[],
                None,
                &[KemPreKeyPublic::new(
                    11,
                    lr5.key().clone(),
                    hazmat::sign_kem_prekey(&mallory, lr5.key()),
                )],
            ),
            UploadError::Unauthenticated,
            Err(UploadError::Unauthenticated),
        ),
        // Batch limit, checked on the wire bytes before any key is decoded.
        (
            pq_upload(
                &bob,
                &[],
                None,
                &(0..=MAX_UPLOAD_ONE_TIME_KEM_PREKEYS as u32)
                    .map(|i| renumbered(&lr5, 100 + i))
                    .collect::<Vec<_>>(),
            ),
            UploadError::TooMany {
                count: MAX_UPLOAD_ONE_TIME_KEM_PREKEYS + 1,
                limit: MAX_UPLOAD_ONE_TIME_KEM_PREKEYS,
            },
            Err(UploadError::TooMany {
                count: MAX_UPLOAD_ONE_TIME_KEM_PREKEYS + 1,
                limit: MAX_UPLOAD_ONE_TIME_KEM_PREKEYS,
            }),
        ),
    ];
    for (bytes, expected, register) in cases {
        assert_eq!(server.apply_upload(&bytes), Err(expected), "{expected:?}");
        assert_eq!(server, before, "a rejected upload changes nothing");
        assert_eq!(
            DeviceKeys::register(&bytes).map(|_| ()),
            register,
            "{expected:?}"
        );
    }

    // One-time KEM prekeys need a last-resort KEM prekey, published in the same or an earlier
    // upload (bundles never lose their KEM prekey when the one-time stock runs out).
    let one_time_only = pq_upload(&bob, &[], None, &kem_otks[..1]);
    assert_eq!(
        DeviceKeys::register(&one_time_only).err(),
        Some(UploadError::MissingLastResortKemPreKey)
    );
    let mut classical = DeviceKeys::register(&pq_upload(&bob, &[], None, &[])).expect("register");
    let classical_before = classical.clone();
    assert_eq!(
        classical.apply_upload(&one_time_only),
        Err(UploadError::MissingLastResortKemPreKey)
    );
    assert_eq!(classical, classical_before);
    classical
        .apply_upload(&pq_upload(&bob, &[], Some(&lr5), &kem_otks[..1]))
        .expect("with a last-resort KEM prekey");
    assert_eq!(classical.one_time_kem_prekey_count(), 1);
    classical
        .apply_upload(&pq_upload(&bob, &[], None, &kem_otks[1..2]))
        .expect("the last-resort KEM prekey is already published");
    assert_eq!(classical.one_time_kem_prekey_count(), 2);

    // Stock limit: MAX_SERVER_ONE_TIME_KEM_PREKEYS in stock, not one more.
    let mut next = 1000u32;
    while server.one_time_kem_prekey_count() < MAX_SERVER_ONE_TIME_KEM_PREKEYS {
        let n = MAX_UPLOAD_ONE_TIME_KEM_PREKEYS
            .min(MAX_SERVER_ONE_TIME_KEM_PREKEYS - server.one_time_kem_prekey_count());
        let batch: Vec<KemPreKeyPublic> =
            (0..n as u32).map(|i| renumbered(&lr5, next + i)).collect();
        server
            .apply_upload(&pq_upload(&bob, &[], None, &batch))
            .expect("apply");
        next += n as u32;
    }
    let before = server.clone();
    assert_eq!(
        server.apply_upload(&pq_upload(&bob, &[], None, &[renumbered(&lr5, next)])),
        Err(UploadError::TooMany {
            count: MAX_SERVER_ONE_TIME_KEM_PREKEYS + 1,
            limit: MAX_SERVER_ONE_TIME_KEM_PREKEYS
        })
    );
    assert_eq!(server, before);
    // A full record is larger than any single upload, yet restores exactly.
    let bytes = server.to_bytes();
    assert!(bytes.len() > MAX_UPLOAD_BYTES && bytes.len() <= MAX_DEVICE_RECORD_BYTES);
    let mut restored = DeviceKeys::restore(&bytes).expect("restore");
    assert_eq!(restored, server);
    assert_eq!(restored.to_bytes(), bytes);
    assert_eq!(restored.fetch_bundle(), server.fetch_bundle());
}

/// Last-resort KEM prekey ids are compared in RFC 1982 serial-number order, so they may wrap.
#[test]
fn key_server_last_resort_ids_wrap() {
    let mut rng = rng(172);
    let (bob, _) = Device::new_pq(&mut rng, 0);
    let lr = bob.prekeys.last_resort_kem_prekey();
    let max = renumbered(&lr, u32::MAX);
    let mut server =
        DeviceKeys::register(&pq_upload(&bob, &[], Some(&max), &[])).expect("register");
    let wrapped = renumbered(&lr, 1);
    assert_eq!(
        server.apply_upload(&pq_upload(&bob, &[], Some(&wrapped), &[])),
        Ok(())
    );
    assert_eq!(
        server.apply_upload(&pq_upload(&bob, &[], Some(&max), &[])),
        Err(UploadError::StaleKemPreKey {
            id: u32::MAX,
            current: 1
        })
    );
    assert_eq!(served_last_resort(&server), Some(wrapped));
}

/// DeviceKeys::to_bytes / restore with KEM prekeys, at every stage of depletion.
#[test]
fn device_keys_with_kem_prekeys_round_trip() {
    let mut rng = rng(173);
    let (mut bob, otks) = Device::new_pq(&mut rng, 3);
    let kem_otks = bob
        .prekeys
        .generate_one_time_kem_prekeys(&mut rng, &bob.identity, 4)
        .expect("generate");
    let server = DeviceKeys::register(&pq_upload(
        &bob,
        &otks,
        Some(&bob.prekeys.last_resort_kem_prekey()),
        &kem_otks,
    ))
    .expect("register");
    for fetched in 0..7 {
        let mut copy = server.clone();
        for _ in 0..fetched {
            copy.fetch_bundle();
        }
        let bytes = copy.to_bytes();
        let mut restored = DeviceKeys::restore(&bytes).expect("restore");
        assert_eq!(restored, copy);
        assert_eq!(restored.to_bytes(), bytes);
        assert_eq!(
            restored.one_time_kem_prekey_count(),
            copy.one_time_kem_prekey_count()
        );
        // Same serving order, to the end.
        for _ in 0..8 {
            assert_eq!(restored.fetch_bundle(), copy.fetch_bundle());
        }
    }
    // The upload accessors round-trip as well.
    let up = PreKeyUpload::from_bytes(&pq_upload(
        &bob,
        &otks,
        Some(&bob.prekeys.last_resort_kem_prekey()),
        &kem_otks,
    ))
    .expect("decode");
    assert_eq!(
        up.last_resort_kem_prekey(),
        Some(&bob.prekeys.last_resort_kem_prekey())
    );
    assert_eq!(up.one_time_kem_prekeys(), &kem_otks[..]);
}

/// One KEM id space on the server: a new last-resort KEM prekey whose id is already stocked as
/// a one-time KEM prekey is refused, and the record the server keeps still restores. (An
/// earlier revision of `apply_upload` accepted it; `DeviceKeys::restore(&to_bytes())` then
/// failed with `DuplicateKemId`.)
#[test]
fn key_server_rejects_a_last_resort_id_already_stocked_as_one_time() {
    let mut rng = rng(174);
    let (mut bob, _) = Device::new_pq(&mut rng, 0);
    let lr1 = bob.prekeys.last_resort_kem_prekey();
    let kem_otks = bob
        .prekeys
        .generate_one_time_kem_prekeys(&mut rng, &bob.identity, 2)
        .expect("generate");
    let mut server =
        DeviceKeys::register(&pq_upload(&bob, &[], Some(&lr1), &kem_otks)).expect("register");
    let before = server.clone();
    // Newer than 1, but the id of the stocked one-time KEM prekey 3.
    let clash = renumbered(&lr1, kem_otks[1].id());
    let result = server.apply_upload(&pq_upload(&bob, &[], Some(&clash), &[]));
    // Whatever apply_upload decides, the record it keeps must restore.
    assert_eq!(
        DeviceKeys::restore(&server.to_bytes()).map(|_| ()),
        Ok(()),
        "the stored record no longer restores"
    );
    assert_eq!(result, Err(UploadError::DuplicateKemId(3)));
    assert_eq!(server, before);
    // Once that one-time KEM prekey has been served, the id is free again.
    server.fetch_bundle();
    server.fetch_bundle();
    assert_eq!(server.one_time_kem_prekey_count(), 0);
    server
        .apply_upload(&pq_upload(&bob, &[], Some(&clash), &[]))
        .expect("no longer stocked");
    assert_eq!(served_last_resort(&server), Some(clash));
    assert!(DeviceKeys::restore(&server.to_bytes()).is_ok());
}

// ---- Sizes ------------------------------------------------------------------------------------------

/// Documented sizes (ids 1, created_at = NOW; protobuf framing as in PROTOCOL.md §8):
/// * a PQXDH bundle with an EC one-time prekey is exactly 1826 bytes (< MAX_BUNDLE_BYTES = 4096):
///   1 leading byte + identity 34 + signed prekey 111 + one-time prekey 38 + KEM prekey 1642
///   (1568-byte key, 64-byte signature, id, framing);
/// * an initial PQXDH message with a one-time prekey and a 100-byte plaintext is 1811 bytes:
///   1711 bytes of overhead, exactly 1573 more than X3DH's 138 (KEM id 2 + ciphertext field
///   1 + 2 + 1568); it carries exactly one 1568-byte ciphertext.
#[test]
fn pqxdh_sizes() {
    let mut rng = rng(180);
    let (mut bob, otks) = Device::new(&mut rng, 2);
    let ik = bob.identity.public();
    let spk = bob.prekeys.signed_prekey();
    assert_eq!((spk.id(), spk.created_at()), (1, NOW));
    let kem = bob.prekeys.last_resort_kem_prekey();
    assert_eq!(kem.id(), 1);
    let bundle = PreKeyBundle::new(ik, spk, Some(otks[0]))
        .with_kem_prekey(kem)
        .to_bytes();
    assert_eq!(bundle.len(), 1826);
    assert!(bundle.len() < MAX_BUNDLE_BYTES);
    let classical = PreKeyBundle::new(ik, spk, Some(otks[0])).to_bytes();
    assert_eq!(bundle.len() - classical.len(), 1642);

    let plaintext = [0x42u8; 100];
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let pq_wire = common::initiate_pq(&mut rng, &alice_id, &bob, Some(otks[0]), None)
        .encrypt(&plaintext)
        .expect("encrypt");
    let x_wire = common::initiate(&mut rng, &alice_id, &bob, Some(otks[1]))
        .encrypt(&plaintext)
        .expect("encrypt");
    assert_eq!(pq_wire.len(), 1811);
    assert_eq!(pq_wire.len() - plaintext.len(), 1711);
    assert_eq!(x_wire.len() - plaintext.len(), 138);
    assert_eq!(pq_wire.len() - x_wire.len(), 1573);
    // Exactly one 1568-byte ciphertext, and no other field of that size anywhere.
    let fields = fields_of(&pq_wire);
    let long: Vec<u32> = fields
        .iter()
        .filter_map(|(f, v)| match v {
            Value::Len(b) if b.len() >= KEM_CIPHERTEXT_LEN => Some(*f),
            _ => None,
        })
        .collect();
    assert_eq!(long, [7]);
    assert_eq!(kem_ciphertext(&pq_wire).len(), KEM_CIPHERTEXT_LEN);
    let inner = parse_proto(&len_fields(&fields, 8)[0]).expect("inner");
    assert_eq!(len_fields(&inner, 1)[0].len(), 40);
    assert_eq!(len_fields(&inner, 2)[0].len(), plaintext.len() + 16);
    // The raw encapsulation key is KEM_PUBLIC_KEY_LEN bytes on the wire (no type byte).
    let kem_field = parse_proto(&len_fields(&parse_proto(&bundle[1..]).expect("bundle"), 4)[0])
        .expect("KEM prekey");
    assert_eq!(len_fields(&kem_field, 2)[0].len(), KEM_PUBLIC_KEY_LEN);
    let accepted = accept(&mut rng, &mut bob, &pq_wire).expect("accept");
    assert_eq!(&accepted.plaintext[..], &plaintext[..]);
}
