//! Prekey and key-server flows (PROTOCOL.md §3.4, §6, §7, §10): one-time prekey consumption,
//! replay rejection, initial-data repetition, signed-prekey rotation, server stock, upload
//! validation, persistence round trips and untrusted snapshots.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{
    Device, NOW, PREKEY_V1, RecvError, Routed, Value, accept, bob_receive, encode_proto, is_prekey,
    is_ratchet, len_fields, parse_proto, prekey, rng,
};
use confidant::hazmat::{self, Ratchet};
use confidant::limits::{
    LOW_ONE_TIME_PREKEY_STOCK, MAX_ACCEPTED_BASE_KEYS, MAX_BUNDLE_BYTES,
    MAX_LAST_RESORT_KEM_PREKEYS, MAX_MESSAGE_BYTES, MAX_ONE_TIME_KEM_PREKEYS, MAX_ONE_TIME_PREKEYS,
    MAX_PLAINTEXT, MAX_SERVER_ONE_TIME_PREKEYS, MAX_SIGNED_PREKEYS, MAX_SKIP, MAX_SNAPSHOT_BYTES,
    MAX_STORED_SKIPPED, MAX_UPLOAD_BYTES, MAX_UPLOAD_ONE_TIME_PREKEYS, SIGNED_PREKEY_GRACE_MS,
};
use confidant::server::{DeviceKeys, PreKeyUpload};
use confidant::{
    BundleError, DecodeError, DecryptError, EncryptError, Handshake, HandshakeError,
    HandshakePolicy, IdentityKeyPair, KEM_CIPHERTEXT_LEN, KEM_PUBLIC_KEY_LEN, KemPreKeyPublic,
    KeyError, Message, OneTimePreKeyPublic, PreKeyBundle, PreKeyError, PreKeys, RestoreError, Role,
    Session, SignedPreKeyPublic, Timestamp, UploadError,
};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;

/// Decrypts at `s`, checking that a failure changes neither the session nor the RNG.
fn decrypt(
    rng: &mut ChaCha20Rng,
    s: &mut Session,
    message: &Message,
) -> Result<Vec<u8>, DecryptError> {
    let before = s.snapshot();
    let rng_before = rng.clone();
    let result = s.decrypt(rng, message).map(|p| p.to_vec());
    if result.is_err() {
        assert!(s.snapshot() == before, "failed decrypt changed the session");
        assert!(*rng == rng_before, "failed decrypt used randomness");
    }
    result
}

/// Number of replay records in a PreKeys snapshot (`accepted_base_keys`, tag 5).
fn replay_records(p: &PreKeys) -> usize {
    len_fields(&parse_proto(&p.snapshot()[1..]).expect("snapshot"), 5).len()
}

// ---- One-time prekeys and replays -------------------------------------------------------------

#[test]
fn one_time_prekey_is_consumed_exactly_once() {
    let mut rng = rng(1);
    let (mut bob, otks) = Device::new(&mut rng, 3);
    assert_eq!(
        otks.iter().map(OneTimePreKeyPublic::id).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let opk = otks[1];

    let alice1 = IdentityKeyPair::generate(&mut rng);
    let mut s1 = common::initiate(&mut rng, &alice1, &bob, Some(opk));
    let accepted =
        accept(&mut rng, &mut bob, &s1.encrypt(b"one").expect("encrypt")).expect("accept");
    assert_eq!(accepted.consumed_one_time_prekey, Some(2));
    assert_eq!(&accepted.plaintext[..], b"one");
    assert_eq!(accepted.session.role(), Role::Responder);
    assert_eq!(accepted.session.remote_identity(), alice1.public());
    assert_eq!(accepted.session.local_identity(), bob.identity.public());
    assert_eq!(accepted.session.base_key(), s1.base_key());
    assert_eq!(accepted.session.handshake(), Handshake::X3dh);
    assert_eq!(bob.prekeys.one_time_prekey_count(), 2);

    // A second initiator with the same (stale) one-time prekey: unknown or already used.
    let alice2 = IdentityKeyPair::generate(&mut rng);
    let mut s2 = common::initiate(&mut rng, &alice2, &bob, Some(opk));
    let wire2 = s2.encrypt(b"two").expect("encrypt");
    assert_eq!(
        accept(&mut rng, &mut bob, &wire2).err(),
        Some(HandshakeError::UnknownOneTimePreKey(2))
    );
    assert_eq!(bob.prekeys.one_time_prekey_count(), 2);

    // Without a one-time prekey nothing is consumed.
    let alice3 = IdentityKeyPair::generate(&mut rng);
    let mut s3 = common::initiate(&mut rng, &alice3, &bob, None);
    let accepted =
        accept(&mut rng, &mut bob, &s3.encrypt(b"three").expect("encrypt")).expect("accept");
    assert_eq!(accepted.consumed_one_time_prekey, None);
    assert_eq!(bob.prekeys.one_time_prekey_count(), 2);

    // The other one-time prekeys are still usable, once each.
    let alice4 = IdentityKeyPair::generate(&mut rng);
    let mut s4 = common::initiate(&mut rng, &alice4, &bob, Some(otks[2]));
    let accepted =
        accept(&mut rng, &mut bob, &s4.encrypt(b"four").expect("encrypt")).expect("accept");
    assert_eq!(accepted.consumed_one_time_prekey, Some(3));
    assert_eq!(bob.prekeys.one_time_prekey_count(), 1);
}

/// PROTOCOL.md §6.3: a replayed initial message never creates a second session. With a one-time
/// prekey the deleted prekey rejects it (`UnknownOneTimePreKey`); without one, the replay record
/// does (`Replay`). Only the latter is recorded.
#[test]
fn accepting_the_same_initial_message_twice_is_rejected() {
    for with_opk in [true, false] {
        let mut rng = rng(2);
        let (mut bob, otks) = Device::new(&mut rng, 1);
        let alice = IdentityKeyPair::generate(&mut rng);
        let opk = otks.first().copied().filter(|_| with_opk);
        let mut s = common::initiate(&mut rng, &alice, &bob, opk);
        let wire = s.encrypt(b"hi").expect("encrypt");
        let first = accept(&mut rng, &mut bob, &wire).expect("accept");
        assert_eq!(first.consumed_one_time_prekey.is_some(), with_opk);
        assert_eq!(replay_records(&bob.prekeys), usize::from(!with_opk));
        let expected = match opk {
            Some(k) => HandshakeError::UnknownOneTimePreKey(k.id()),
            None => HandshakeError::Replay,
        };
        let before = bob.prekeys.snapshot();
        assert_eq!(
            accept(&mut rng, &mut bob, &wire).err(),
            Some(expected),
            "with_opk = {with_opk}"
        );
        // The initiator's next message is owned by the session; `accept` rejects it the same way.
        let second = s.encrypt(b"again").expect("encrypt");
        assert_eq!(accept(&mut rng, &mut bob, &second).err(), Some(expected));
        assert!(
            bob.prekeys.snapshot() == before,
            "a rejected accept changed PreKeys"
        );
    }
}

#[test]
fn replay_is_still_rejected_after_a_prekeys_round_trip() {
    for with_opk in [true, false] {
        let mut rng = rng(3);
        let (mut bob, otks) = Device::new(&mut rng, 1);
        let alice = IdentityKeyPair::generate(&mut rng);
        let opk = otks.first().copied().filter(|_| with_opk);
        let mut s = common::initiate(&mut rng, &alice, &bob, opk);
        let wire = s.encrypt(b"hi").expect("encrypt");
        accept(&mut rng, &mut bob, &wire).expect("accept");
        bob.prekeys = PreKeys::restore(&bob.prekeys.snapshot()).expect("restore");
        let expected = match opk {
            Some(k) => HandshakeError::UnknownOneTimePreKey(k.id()),
            None => HandshakeError::Replay,
        };
        assert_eq!(accept(&mut rng, &mut bob, &wire).err(), Some(expected));
    }
}

/// PROTOCOL.md §6.3: the replay record never forgets while its signed prekey is held. When it is
/// full, new initial messages without a one-time prekey are refused (fail closed) until the
/// signed prekey is rotated; then new bundles work again and old entries still reject replays.
#[test]
fn full_replay_record_refuses_instead_of_forgetting() {
    let mut rng = rng(30);
    let (bob, _) = Device::new(&mut rng, 0);
    let alice = IdentityKeyPair::generate(&mut rng);
    // Fill the record for signed prekey 1 through a crafted snapshot (2000 real handshakes would
    // work too, just slower).
    let snap = bob.prekeys.snapshot();
    let mut fields = parse_proto(&snap[1..]).expect("snapshot");
    for i in 0..MAX_ACCEPTED_BASE_KEYS as u32 {
        let mut k = vec![0u8; 32];
        k[..4].copy_from_slice(&i.to_le_bytes());
        fields.push((
            5,
            Value::Len(encode_proto(&[(1, Value::Varint(1)), (2, Value::Len(k))])),
        ));
    }
    let full = PreKeys::restore(&[vec![0x32], encode_proto(&fields)].concat()).expect("restore");
    let mut bob = Device {
        identity: bob.identity,
        prekeys: full,
    };
    let mut s = common::initiate(&mut rng, &alice, &bob, None);
    let wire = s.encrypt(b"hi").expect("encrypt");
    let before = bob.prekeys.snapshot();
    assert_eq!(
        accept(&mut rng, &mut bob, &wire).err(),
        Some(HandshakeError::ReplayRecordFull {
            signed_prekey_id: 1,
            kem_prekey_id: None,
            limit: MAX_ACCEPTED_BASE_KEYS
        })
    );
    assert!(bob.prekeys.snapshot() == before);
    // After a rotation a fresh bundle (signed prekey 2) is accepted.
    bob.prekeys
        .rotate_signed_prekey(&mut rng, &bob.identity, NOW);
    let mut s2 = common::initiate(&mut rng, &alice, &bob, None);
    let wire2 = s2.encrypt(b"after rotation").expect("encrypt");
    assert_eq!(
        &accept(&mut rng, &mut bob, &wire2)
            .expect("accept")
            .plaintext[..],
        b"after rotation"
    );
    assert_eq!(
        accept(&mut rng, &mut bob, &wire2).err(),
        Some(HandshakeError::Replay)
    );
}

// ---- Initial data repetition and routing ------------------------------------------------------

#[test]
fn initiator_repeats_initial_data_until_the_first_reply() {
    let mut rng = rng(4);
    let (mut bob, otks) = Device::new(&mut rng, 1);
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let mut alice = common::initiate(&mut rng, &alice_id, &bob, otks.first().copied());
    assert!(alice.awaiting_reply());
    assert_eq!(alice.role(), Role::Initiator);

    let m: Vec<Vec<u8>> = (0..4u8)
        .map(|i| alice.encrypt(&[b'm', i]).expect("encrypt"))
        .collect();
    let first = prekey(&m[0]);
    for w in &m {
        let p = prekey(w);
        assert_eq!(p.base_key(), first.base_key());
        assert_eq!(p.identity_key(), alice_id.public());
        assert_eq!(p.signed_prekey_id(), 1);
        assert_eq!(p.one_time_prekey_id(), Some(1));
        assert_eq!(p.handshake(), Handshake::X3dh);
    }
    assert_eq!(first.base_key(), alice.base_key());

    // Bob accepts m[1] first (not n = 0): m[0] is then a skipped key.
    let Ok(Routed::Accepted(acc)) = bob_receive(&mut rng, &mut bob, None, &m[1]) else {
        panic!("accept")
    };
    let mut bob_s = acc.session;
    assert_eq!(bob_s.skipped_keys(), 1);
    for (i, w) in [(0usize, &m[0]), (2, &m[2])] {
        let Ok(Message::PreKey(p)) = Message::from_bytes(w) else {
            panic!("prekey")
        };
        assert!(bob_s.owns(&p), "session owns message {i}");
        assert!(!alice.owns(&p), "an initiator owns nothing");
        assert_eq!(
            decrypt(&mut rng, &mut bob_s, &Message::PreKey(p)).as_deref(),
            Ok(&[b'm', i as u8][..])
        );
    }

    // Bob replies; Alice's messages become plain ratchet messages.
    let reply = bob_s.encrypt(b"reply").expect("encrypt");
    assert!(is_ratchet(&reply));
    let in_flight = alice.encrypt(b"still prekey").expect("encrypt");
    assert!(is_prekey(&in_flight));
    assert_eq!(
        alice
            .decrypt_bytes(&mut rng, &reply)
            .map(|p| p.to_vec())
            .as_deref(),
        Ok(&b"reply"[..])
    );
    assert!(!alice.awaiting_reply());
    let after = alice.encrypt(b"ratchet now").expect("encrypt");
    assert!(is_ratchet(&after));
    // Restoring keeps the "reply seen" state.
    let mut alice = Session::restore(&alice.snapshot()).expect("restore");
    assert!(!alice.awaiting_reply());
    assert!(is_ratchet(
        &alice.encrypt(b"still ratchet").expect("encrypt")
    ));

    // Late initial-data messages still decrypt via `owns`, in any order.
    for (w, p) in [
        (&after, &b"ratchet now"[..]),
        (&in_flight, b"still prekey"),
        (&m[3], &[b'm', 3][..]),
    ] {
        let Ok(Routed::Session(got)) = bob_receive(&mut rng, &mut bob, Some(&mut bob_s), w) else {
            panic!("decrypt")
        };
        assert_eq!(got, p);
    }
}

#[test]
fn prekey_message_of_another_session_is_other_session() {
    let mut rng = rng(5);
    let (mut bob, otks) = Device::new(&mut rng, 2);
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let mut a1 = common::initiate(&mut rng, &alice_id, &bob, Some(otks[0]));
    let Ok(Routed::Accepted(acc)) =
        bob_receive(&mut rng, &mut bob, None, &a1.encrypt(b"1").expect("e"))
    else {
        panic!("accept")
    };
    let mut bob_s = acc.session;

    // Same identity, new session (new base key).
    let mut a2 = common::initiate(&mut rng, &alice_id, &bob, Some(otks[1]));
    let other = Message::from_bytes(&a2.encrypt(b"2").expect("encrypt")).expect("decode");
    let Message::PreKey(p) = &other else {
        panic!("prekey")
    };
    assert!(!bob_s.owns(p));
    assert_eq!(
        decrypt(&mut rng, &mut bob_s, &other),
        Err(DecryptError::OtherSession)
    );
    assert_eq!(
        bob_s.decrypt_bytes(&mut rng, &other.to_bytes()).err(),
        Some(DecryptError::OtherSession)
    );

    // Same base key, but another identity key (crafted): not owned either.
    let mine = a1.encrypt(b"3").expect("encrypt");
    let stranger = IdentityKeyPair::generate(&mut rng);
    let fields: Vec<(u32, Value)> = parse_proto(&mine[1..])
        .expect("protobuf")
        .into_iter()
        .map(|(f, v)| {
            if f == 2 {
                (2, Value::Len(stranger.public().to_bytes().to_vec()))
            } else {
                (f, v)
            }
        })
        .collect();
    let forged = [vec![PREKEY_V1], encode_proto(&fields)].concat();
    let forged = Message::from_bytes(&forged).expect("decode");
    let Message::PreKey(fp) = &forged else {
        panic!("prekey")
    };
    assert!(!bob_s.owns(fp));
    assert_eq!(
        decrypt(&mut rng, &mut bob_s, &forged),
        Err(DecryptError::OtherSession)
    );
    // Routed to accept instead, its one-time prekey is already used.
    assert_eq!(
        bob_receive(&mut rng, &mut bob, Some(&mut bob_s), &forged.to_bytes()).err(),
        Some(RecvError::Handshake(HandshakeError::UnknownOneTimePreKey(
            otks[0].id()
        )))
    );

    // An initiator session never accepts a PreKeyMessage, not even its own.
    let own = Message::from_bytes(&a2.encrypt(b"own").expect("encrypt")).expect("decode");
    assert_eq!(
        decrypt(&mut rng, &mut a1, &own),
        Err(DecryptError::OtherSession)
    );
    assert_eq!(
        decrypt(&mut rng, &mut a2, &own),
        Err(DecryptError::OtherSession)
    );

    // The genuine message still decrypts.
    assert_eq!(
        bob_s
            .decrypt_bytes(&mut rng, &mine)
            .map(|p| p.to_vec())
            .as_deref(),
        Ok(&b"3"[..])
    );
}

// ---- Signed-prekey rotation ---------------------------------------------------------------------

#[test]
fn signed_prekey_rotation_grace_period_and_prune() {
    let mut rng = rng(6);
    let (mut bob, _) = Device::new(&mut rng, 0);
    let old_spk = bob.prekeys.signed_prekey();
    assert_eq!(old_spk.id(), 1);
    // Three initiators fetched the old bundle.
    let mut wires = Vec::new();
    for i in 0..3u8 {
        let a = IdentityKeyPair::generate(&mut rng);
        let mut s = common::initiate(&mut rng, &a, &bob, None);
        wires.push(s.encrypt(&[i]).expect("encrypt"));
    }
    let t1 = Timestamp(NOW.0 + 1000);
    let new_spk = bob
        .prekeys
        .rotate_signed_prekey(&mut rng, &bob.identity, t1);
    assert_eq!(new_spk.id(), 2);
    assert_eq!(new_spk.created_at(), t1);
    assert!(new_spk.verify(&bob.identity.public()));
    assert_eq!(bob.prekeys.signed_prekey(), new_spk);

    // Retired but within the grace period: still accepted.
    assert_eq!(
        &accept(&mut rng, &mut bob, &wires[0])
            .expect("accept")
            .plaintext[..],
        [0]
    );
    assert_eq!(
        bob.prekeys
            .prune(
                Timestamp(t1.0 + SIGNED_PREKEY_GRACE_MS - 1),
                SIGNED_PREKEY_GRACE_MS
            )
            .signed_prekeys,
        Vec::<u32>::new()
    );
    assert_eq!(
        &accept(&mut rng, &mut bob, &wires[1])
            .expect("accept")
            .plaintext[..],
        [1]
    );
    assert_eq!(replay_records(&bob.prekeys), 2);

    // Past the grace period: dropped with its replay records.
    assert_eq!(
        bob.prekeys
            .prune(
                Timestamp(t1.0 + SIGNED_PREKEY_GRACE_MS),
                SIGNED_PREKEY_GRACE_MS
            )
            .signed_prekeys,
        vec![1]
    );
    assert_eq!(replay_records(&bob.prekeys), 0);
    assert_eq!(
        accept(&mut rng, &mut bob, &wires[2]).err(),
        Some(HandshakeError::UnknownSignedPreKey(1))
    );
    assert_eq!(
        accept(&mut rng, &mut bob, &wires[0]).err(),
        Some(HandshakeError::UnknownSignedPreKey(1))
    );
    // Pruning again drops nothing; the current signed prekey is never pruned.
    assert_eq!(
        bob.prekeys.prune(Timestamp(u64::MAX), 0).signed_prekeys,
        Vec::<u32>::new()
    );
    let a = IdentityKeyPair::generate(&mut rng);
    let mut s = common::initiate(&mut rng, &a, &bob, None);
    assert!(accept(&mut rng, &mut bob, &s.encrypt(b"new").expect("encrypt")).is_ok());
    // The deadline `retired_at + grace` saturates at u64::MAX (and `deadline <= now` drops).
    bob.prekeys
        .rotate_signed_prekey(&mut rng, &bob.identity, t1);
    assert_eq!(
        bob.prekeys
            .prune(Timestamp(u64::MAX - 1), u64::MAX)
            .signed_prekeys,
        Vec::<u32>::new()
    );
    assert_eq!(
        bob.prekeys
            .prune(Timestamp(u64::MAX - 1), u64::MAX - t1.0)
            .signed_prekeys,
        Vec::<u32>::new()
    );
    assert_eq!(
        bob.prekeys
            .prune(Timestamp(u64::MAX), u64::MAX)
            .signed_prekeys,
        vec![2]
    );
}

#[test]
fn rotation_keeps_at_most_max_signed_prekeys() {
    let mut rng = rng(7);
    let (mut bob, _) = Device::new(&mut rng, 0);
    let a = IdentityKeyPair::generate(&mut rng);
    let mut s1 = common::initiate(&mut rng, &a, &bob, None);
    let mut s2 = common::initiate(&mut rng, &a, &bob, None);
    let (w1, w2) = (s1.encrypt(b"1").expect("e"), s2.encrypt(b"2").expect("e"));
    // Current + (MAX − 1) retired: signed prekey 1 is still held.
    for _ in 0..MAX_SIGNED_PREKEYS - 1 {
        bob.prekeys
            .rotate_signed_prekey(&mut rng, &bob.identity, NOW);
    }
    assert_eq!(bob.prekeys.signed_prekey().id(), MAX_SIGNED_PREKEYS as u32);
    assert!(accept(&mut rng, &mut bob, &w1).is_ok());
    assert_eq!(replay_records(&bob.prekeys), 1);
    // One more rotation drops the oldest (id 1) with its replay record.
    bob.prekeys
        .rotate_signed_prekey(&mut rng, &bob.identity, NOW);
    assert_eq!(replay_records(&bob.prekeys), 0);
    assert_eq!(
        accept(&mut rng, &mut bob, &w2).err(),
        Some(HandshakeError::UnknownSignedPreKey(1))
    );
    assert_eq!(
        accept(&mut rng, &mut bob, &w1).err(),
        Some(HandshakeError::UnknownSignedPreKey(1))
    );
    let restored = PreKeys::restore(&bob.prekeys.snapshot()).expect("restore");
    assert!(restored.snapshot() == bob.prekeys.snapshot());
}

// ---- Key server -------------------------------------------------------------------------------

fn upload(
    identity: &IdentityKeyPair,
    spk: SignedPreKeyPublic,
    otks: &[OneTimePreKeyPublic],
) -> Vec<u8> {
    PreKeyUpload::new(identity.public(), spk, otks.to_vec()).to_bytes()
}

/// `count` one-time prekeys with ids `first..` sharing one valid public key (the server does
/// not care whose key it is).
fn fake_otks(template: &OneTimePreKeyPublic, first: u32, count: usize) -> Vec<OneTimePreKeyPublic> {
    (0..count as u32)
        .map(|i| OneTimePreKeyPublic::new(first + i, template.key()))
        .collect()
}

#[test]
fn server_hands_out_each_one_time_prekey_at_most_once() {
    let mut rng = rng(8);
    let stock = LOW_ONE_TIME_PREKEY_STOCK + 5;
    let (mut bob, otks) = Device::new(&mut rng, stock);
    let mut server =
        DeviceKeys::register(&upload(&bob.identity, bob.prekeys.signed_prekey(), &otks))
            .expect("register");
    assert_eq!(server.one_time_prekey_count(), stock);
    assert_eq!(server.identity_key(), bob.identity.public());

    let mut served = Vec::new();
    #[allow(clippy::needless_range_loop)] // `i` counts fetches, not an index into `otks` only
    for i in 0..stock {
        let fetched = server.fetch_bundle();
        let remaining = stock - i - 1;
        assert_eq!(fetched.remaining_one_time_prekeys, remaining);
        assert_eq!(
            fetched.low_stock,
            remaining < LOW_ONE_TIME_PREKEY_STOCK,
            "remaining {remaining}"
        );
        let bundle = PreKeyBundle::from_bytes(&fetched.bundle.to_bytes()).expect("decode");
        assert_eq!(bundle, fetched.bundle);
        let verified = bundle.verify_for(&bob.identity.public()).expect("verify");
        let opk = verified
            .one_time_prekey()
            .expect("one-time prekey while stocked");
        assert_eq!(opk, otks[i], "served oldest first");
        served.push(opk.id());
        // Every served bundle starts a session Bob accepts, consuming exactly that prekey. The
        // device registered no KEM prekey, so the bundles are classical: the initiator must
        // allow X3DH explicitly (the default policy refuses them, see tests/pqxdh.rs).
        assert!(verified.kem_prekey().is_none());
        let a = IdentityKeyPair::generate(&mut rng);
        let mut s =
            Session::initiate_with_policy(&mut rng, &a, verified, HandshakePolicy::AllowClassical)
                .expect("initiate");
        let acc = accept(&mut rng, &mut bob, &s.encrypt(b"x").expect("encrypt")).expect("accept");
        assert_eq!(acc.consumed_one_time_prekey, Some(opk.id()));
    }
    served.sort_unstable();
    served.dedup();
    assert_eq!(served.len(), stock, "no one-time prekey served twice");
    assert_eq!(bob.prekeys.one_time_prekey_count(), 0);

    // Empty stock: 3-DH bundles, still accepted.
    for _ in 0..2 {
        let fetched = server.fetch_bundle();
        assert_eq!(
            fetched
                .bundle
                .clone()
                .verify()
                .expect("verify")
                .one_time_prekey(),
            None
        );
        assert_eq!(fetched.remaining_one_time_prekeys, 0);
        assert!(fetched.low_stock);
        let a = IdentityKeyPair::generate(&mut rng);
        let mut s = Session::initiate_with_policy(
            &mut rng,
            &a,
            fetched.bundle.verify().expect("verify"),
            HandshakePolicy::AllowClassical,
        )
        .expect("initiate");
        let acc = accept(&mut rng, &mut bob, &s.encrypt(b"y").expect("encrypt")).expect("accept");
        assert_eq!(acc.consumed_one_time_prekey, None);
    }

    // Restocking (same signed prekey repeated) ends the low-stock state at exactly the threshold.
    let more = bob
        .prekeys
        .generate_one_time_prekeys(&mut rng, LOW_ONE_TIME_PREKEY_STOCK + 1)
        .expect("generate");
    assert_eq!(more[0].id(), stock as u32 + 1, "ids continue");
    server
        .apply_upload(&upload(&bob.identity, bob.prekeys.signed_prekey(), &more))
        .expect("apply");
    let f = server.fetch_bundle();
    assert_eq!(
        (f.remaining_one_time_prekeys, f.low_stock),
        (LOW_ONE_TIME_PREKEY_STOCK, false)
    );
    let f = server.fetch_bundle();
    assert_eq!(
        (f.remaining_one_time_prekeys, f.low_stock),
        (LOW_ONE_TIME_PREKEY_STOCK - 1, true)
    );
}

#[test]
fn server_rotates_signed_prekeys_by_id() {
    let mut rng = rng(9);
    let (mut bob, otks) = Device::new(&mut rng, 2);
    let spk1 = bob.prekeys.signed_prekey();
    let mut server =
        DeviceKeys::register(&upload(&bob.identity, spk1, &otks[..1])).expect("register");
    // The same signed prekey may be repeated.
    server
        .apply_upload(&upload(&bob.identity, spk1, &otks[1..]))
        .expect("same spk");
    let spk2 = bob
        .prekeys
        .rotate_signed_prekey(&mut rng, &bob.identity, NOW);
    server
        .apply_upload(&upload(&bob.identity, spk2, &[]))
        .expect("newer spk");
    assert_eq!(
        server
            .fetch_bundle()
            .bundle
            .verify()
            .expect("verify")
            .signed_prekey(),
        spk2
    );

    let before = server.clone();
    let stale = server.apply_upload(&upload(&bob.identity, spk1, &[]));
    assert_eq!(
        stale,
        Err(UploadError::StaleSignedPreKey { id: 1, current: 2 })
    );
    // Same id, different content (even only the unsigned created_at): stale too.
    let tweaked = SignedPreKeyPublic::new(
        spk2.id(),
        spk2.key(),
        spk2.signature(),
        Timestamp(spk2.created_at().0 + 1),
    );
    assert_eq!(
        server.apply_upload(&upload(&bob.identity, tweaked, &[])),
        Err(UploadError::StaleSignedPreKey { id: 2, current: 2 })
    );
    assert_eq!(server, before, "a rejected upload changes nothing");
}

#[test]
fn upload_validation_errors() {
    let mut rng = rng(10);
    let (bob, otks) = Device::new(&mut rng, 3);
    let spk = bob.prekeys.signed_prekey();
    let good = upload(&bob.identity, spk, &otks);
    let mut server = DeviceKeys::register(&good).expect("register");
    let before = server.clone();

    // A signature with any one bit flipped.
    for bit in [0usize, 7, 100, 255, 256, 511] {
        let mut sig = spk.signature();
        sig[bit / 8] ^= 1 << (bit % 8);
        let bad = upload(
            &bob.identity,
            SignedPreKeyPublic::new(spk.id(), spk.key(), sig, spk.created_at()),
            &[],
        );
        assert_eq!(
            DeviceKeys::register(&bad).err(),
            Some(UploadError::Unauthenticated),
            "bit {bit}"
        );
        assert_eq!(
            PreKeyUpload::from_bytes(&bad).err(),
            Some(UploadError::Unauthenticated)
        );
        assert_eq!(server.apply_upload(&bad), Err(UploadError::Unauthenticated));
    }
    // A signature by another identity.
    let mallory = IdentityKeyPair::generate(&mut rng);
    let forged = SignedPreKeyPublic::new(
        spk.id(),
        spk.key(),
        hazmat::sign_prekey(&mallory, &spk.key()),
        spk.created_at(),
    );
    assert_eq!(
        DeviceKeys::register(&upload(&bob.identity, forged, &[])).err(),
        Some(UploadError::Unauthenticated)
    );

    // Duplicate ids within a batch, and against the stock.
    let dup = [
        otks[0],
        otks[1],
        OneTimePreKeyPublic::new(otks[0].id(), otks[2].key()),
    ];
    assert_eq!(
        DeviceKeys::register(&upload(&bob.identity, spk, &dup)).err(),
        Some(UploadError::DuplicateId(otks[0].id()))
    );
    assert_eq!(
        server.apply_upload(&upload(&bob.identity, spk, &otks[1..2])),
        Err(UploadError::DuplicateId(otks[1].id()))
    );

    // Batch limit.
    let batch = fake_otks(&otks[0], 100, MAX_UPLOAD_ONE_TIME_PREKEYS + 1);
    let too_many = upload(&bob.identity, spk, &batch);
    let expected = UploadError::TooMany {
        count: MAX_UPLOAD_ONE_TIME_PREKEYS + 1,
        limit: MAX_UPLOAD_ONE_TIME_PREKEYS,
    };
    assert_eq!(DeviceKeys::register(&too_many).err(), Some(expected));
    assert_eq!(server.apply_upload(&too_many), Err(expected));
    assert!(
        DeviceKeys::register(&upload(
            &bob.identity,
            spk,
            &batch[..MAX_UPLOAD_ONE_TIME_PREKEYS]
        ))
        .is_ok()
    );

    // Another identity.
    let other = Device::new(&mut rng, 0).0;
    assert_eq!(
        server.apply_upload(&upload(&other.identity, other.prekeys.signed_prekey(), &[])),
        Err(UploadError::IdentityMismatch)
    );

    // Not an upload at all.
    assert_eq!(
        DeviceKeys::register(&[]).err(),
        Some(UploadError::Decode(DecodeError::Empty))
    );
    let bundle = PreKeyBundle::new(bob.identity.public(), spk, None).to_bytes();
    assert_eq!(
        DeviceKeys::register(&bundle).err(),
        Some(UploadError::Decode(DecodeError::UnsupportedVersion(0x21)))
    );
    let huge = vec![0x22; MAX_UPLOAD_BYTES + 1];
    assert_eq!(
        DeviceKeys::register(&huge).err(),
        Some(UploadError::Decode(DecodeError::TooLarge {
            len: MAX_UPLOAD_BYTES + 1,
            limit: MAX_UPLOAD_BYTES
        }))
    );

    assert_eq!(server, before, "rejected uploads change nothing");
}

#[test]
fn server_stock_limit() {
    let mut rng = rng(11);
    let (bob, otks) = Device::new(&mut rng, 1);
    let spk = bob.prekeys.signed_prekey();
    let mut server = DeviceKeys::register(&upload(&bob.identity, spk, &[])).expect("register");
    let mut next = 1;
    while server.one_time_prekey_count() < MAX_SERVER_ONE_TIME_PREKEYS {
        let n = MAX_UPLOAD_ONE_TIME_PREKEYS
            .min(MAX_SERVER_ONE_TIME_PREKEYS - server.one_time_prekey_count());
        server
            .apply_upload(&upload(&bob.identity, spk, &fake_otks(&otks[0], next, n)))
            .expect("apply");
        next += n as u32;
    }
    let before = server.clone();
    assert_eq!(
        server.apply_upload(&upload(&bob.identity, spk, &fake_otks(&otks[0], next, 1))),
        Err(UploadError::TooMany {
            count: MAX_SERVER_ONE_TIME_PREKEYS + 1,
            limit: MAX_SERVER_ONE_TIME_PREKEYS
        })
    );
    assert_eq!(server, before);
    // After one fetch there is room for exactly one more.
    server.fetch_bundle();
    server
        .apply_upload(&upload(&bob.identity, spk, &fake_otks(&otks[0], next, 1)))
        .expect("room for one");
    assert_eq!(server.one_time_prekey_count(), MAX_SERVER_ONE_TIME_PREKEYS);
}

#[test]
fn device_keys_round_trip() {
    let mut rng = rng(12);
    let (bob, otks) = Device::new(&mut rng, 1);
    let spk = bob.prekeys.signed_prekey();
    // Full stock with the largest ids (longest varints): the record must still fit and restore.
    let mut server = DeviceKeys::register(&upload(&bob.identity, spk, &[])).expect("register");
    for chunk in 0..MAX_SERVER_ONE_TIME_PREKEYS / MAX_UPLOAD_ONE_TIME_PREKEYS {
        let first = u32::MAX - MAX_SERVER_ONE_TIME_PREKEYS as u32
            + (chunk * MAX_UPLOAD_ONE_TIME_PREKEYS) as u32;
        server
            .apply_upload(&upload(
                &bob.identity,
                spk,
                &fake_otks(&otks[0], first, MAX_UPLOAD_ONE_TIME_PREKEYS),
            ))
            .expect("apply");
    }
    for s in [
        0usize,
        1,
        7,
        MAX_SERVER_ONE_TIME_PREKEYS - 1,
        MAX_SERVER_ONE_TIME_PREKEYS,
    ] {
        let mut copy = server.clone();
        for _ in 0..s {
            copy.fetch_bundle();
        }
        let bytes = copy.to_bytes();
        assert!(bytes.len() <= MAX_UPLOAD_BYTES);
        let mut restored = DeviceKeys::restore(&bytes).expect("restore");
        assert_eq!(restored, copy);
        assert_eq!(restored.to_bytes(), bytes);
        // Same serving order.
        assert_eq!(restored.fetch_bundle(), copy.fetch_bundle());
    }
    assert_eq!(
        DeviceKeys::restore(&[0x23]).err(),
        Some(UploadError::Decode(DecodeError::UnsupportedVersion(0x23)))
    );
}

// ---- PreKeys persistence -------------------------------------------------------------------------

#[test]
fn prekeys_round_trip_and_restored_copy_behaves_identically() {
    let mut rng = rng(13);
    let (mut bob, otks) = Device::new(&mut rng, 4);
    bob.prekeys
        .rotate_signed_prekey(&mut rng, &bob.identity, NOW);
    let a = IdentityKeyPair::generate(&mut rng);
    let mut s = common::initiate(&mut rng, &a, &bob, Some(otks[0]));
    accept(&mut rng, &mut bob, &s.encrypt(b"x").expect("encrypt")).expect("accept");

    let snap = bob.prekeys.snapshot();
    let mut restored = PreKeys::restore(&snap).expect("restore");
    assert!(restored.snapshot() == snap);
    assert_eq!(format!("{restored:?}"), format!("{:?}", bob.prekeys));
    assert_eq!(restored.signed_prekey(), bob.prekeys.signed_prekey());
    assert_eq!(restored.one_time_prekey_count(), 3);

    // Both accept the same new initial message identically, and generate the same next ids.
    let b = IdentityKeyPair::generate(&mut rng);
    let mut s2 = common::initiate(&mut rng, &b, &bob, Some(otks[2]));
    let wire = prekey(&s2.encrypt(b"y").expect("encrypt"));
    let mut rng2 = rng.clone();
    let x = bob
        .prekeys
        .accept(&mut rng, &bob.identity, &wire)
        .expect("accept");
    let y = restored
        .accept(&mut rng2, &bob.identity, &wire)
        .expect("accept");
    assert_eq!(x.consumed_one_time_prekey, y.consumed_one_time_prekey);
    assert!(x.session.snapshot() == y.session.snapshot());
    assert!(bob.prekeys.snapshot() == restored.snapshot());
    let g1 = bob
        .prekeys
        .generate_one_time_prekeys(&mut rng, 2)
        .expect("generate");
    let g2 = restored
        .generate_one_time_prekeys(&mut rng2, 2)
        .expect("generate");
    assert_eq!(g1, g2);
    assert_eq!(g1[0].id(), 5);
}

#[test]
fn one_time_prekey_generation_limit() {
    let mut rng = rng(14);
    let (mut bob, _) = Device::new(&mut rng, MAX_ONE_TIME_PREKEYS - 1);
    let before = bob.prekeys.snapshot();
    assert_eq!(
        bob.prekeys.generate_one_time_prekeys(&mut rng, 2).err(),
        Some(PreKeyError::TooMany {
            requested: 2,
            limit: MAX_ONE_TIME_PREKEYS
        })
    );
    assert!(bob.prekeys.snapshot() == before);
    assert_eq!(
        bob.prekeys
            .generate_one_time_prekeys(&mut rng, 1)
            .expect("last one")
            .len(),
        1
    );
    assert_eq!(bob.prekeys.one_time_prekey_count(), MAX_ONE_TIME_PREKEYS);
    assert_eq!(
        bob.prekeys.generate_one_time_prekeys(&mut rng, 1).err(),
        Some(PreKeyError::TooMany {
            requested: 1,
            limit: MAX_ONE_TIME_PREKEYS
        })
    );
    assert!(PreKeys::restore(&bob.prekeys.snapshot()).is_ok());
}

// ---- Bundles --------------------------------------------------------------------------------------

#[test]
fn bundle_with_any_flipped_signature_bit_is_unauthenticated() {
    let mut rng = rng(15);
    let (bob, otks) = Device::new(&mut rng, 1);
    let spk = bob.prekeys.signed_prekey();
    let ik = bob.identity.public();
    for bit in 0..512 {
        let mut sig = spk.signature();
        sig[bit / 8] ^= 1 << (bit % 8);
        let bundle = PreKeyBundle::new(
            ik,
            SignedPreKeyPublic::new(spk.id(), spk.key(), sig, spk.created_at()),
            otks.first().copied(),
        );
        let parsed = PreKeyBundle::from_bytes(&bundle.to_bytes())
            .expect("decodes: signatures are checked by verify");
        assert_eq!(
            parsed.clone().verify().err(),
            Some(BundleError::Unauthenticated),
            "bit {bit}"
        );
        assert_eq!(
            parsed.verify_for(&ik).err(),
            Some(BundleError::Unauthenticated),
            "bit {bit}"
        );
    }
    // Another identity's bundle: the identity check comes first.
    let other = IdentityKeyPair::generate(&mut rng);
    let good = PreKeyBundle::new(ik, spk, None);
    assert!(good.clone().verify().is_ok());
    assert_eq!(
        good.clone().verify_for(&other.public()).err(),
        Some(BundleError::IdentityMismatch)
    );
    // A bundle that claims another identity but carries Bob's signed prekey.
    let claimed = PreKeyBundle::new(other.public(), spk, None);
    assert_eq!(
        claimed.clone().verify().err(),
        Some(BundleError::Unauthenticated)
    );
    assert_eq!(
        claimed.verify_for(&ik).err(),
        Some(BundleError::IdentityMismatch)
    );
    // The created_at time is not signed.
    let retimed = PreKeyBundle::new(
        ik,
        SignedPreKeyPublic::new(spk.id(), spk.key(), spk.signature(), Timestamp(0)),
        None,
    );
    assert!(retimed.verify_for(&ik).is_ok());
}

#[test]
fn bundle_decode_errors() {
    let mut rng = rng(16);
    let (bob, _) = Device::new(&mut rng, 0);
    let bytes =
        PreKeyBundle::new(bob.identity.public(), bob.prekeys.signed_prekey(), None).to_bytes();
    assert_eq!(
        PreKeyBundle::from_bytes(&[]).err(),
        Some(DecodeError::Empty)
    );
    assert_eq!(
        PreKeyBundle::from_bytes(&[0x22]).err(),
        Some(DecodeError::UnsupportedVersion(0x22))
    );
    assert_eq!(
        PreKeyBundle::from_bytes(&vec![0x21; MAX_BUNDLE_BYTES + 1]).err(),
        Some(DecodeError::TooLarge {
            len: MAX_BUNDLE_BYTES + 1,
            limit: MAX_BUNDLE_BYTES
        })
    );
    let fields = parse_proto(&bytes[1..]).expect("protobuf");
    let rebuild = |fs: Vec<(u32, Value)>| [vec![0x21], encode_proto(&fs)].concat();
    let no_spk: Vec<(u32, Value)> = fields.iter().filter(|(f, _)| *f != 2).cloned().collect();
    assert_eq!(
        PreKeyBundle::from_bytes(&rebuild(no_spk)).err(),
        Some(DecodeError::InvalidField("signed_prekey"))
    );
    let short_sig: Vec<(u32, Value)> = fields
        .iter()
        .map(|(f, v)| match (f, v) {
            (2, Value::Len(inner)) => {
                let spk: Vec<(u32, Value)> = parse_proto(inner)
                    .expect("spk")
                    .into_iter()
                    .map(|(g, w)| {
                        if g == 3 {
                            (3, Value::Len(vec![1; 63]))
                        } else {
                            (g, w)
                        }
                    })
                    .collect();
                (2, Value::Len(encode_proto(&spk)))
            }
            _ => (*f, v.clone()),
        })
        .collect();
    assert_eq!(
        PreKeyBundle::from_bytes(&rebuild(short_sig)).err(),
        Some(DecodeError::InvalidField("signed_prekey.signature"))
    );
    let bad_ik: Vec<(u32, Value)> = fields
        .iter()
        .map(|(f, v)| {
            if *f == 1 {
                (1, Value::Len(vec![0; 32]))
            } else {
                (*f, v.clone())
            }
        })
        .collect();
    assert_eq!(
        PreKeyBundle::from_bytes(&rebuild(bad_ik)).err(),
        Some(DecodeError::Key {
            field: "identity_key",
            error: KeyError::SmallOrder
        })
    );
    // Other unknown fields are skipped.
    let mut unknown = fields.clone();
    unknown.push((9, Value::Varint(1)));
    assert!(PreKeyBundle::from_bytes(&rebuild(unknown)).is_ok());

    // PQXDH: the KEM prekey (tag 4) is decoded and validated like every other key.
    let kem = bob.prekeys.last_resort_kem_prekey();
    let pq = PreKeyBundle::new(bob.identity.public(), bob.prekeys.signed_prekey(), None)
        .with_kem_prekey(kem.clone());
    let parsed = PreKeyBundle::from_bytes(&pq.to_bytes()).expect("PQXDH bundle decodes");
    assert_eq!(parsed, pq);
    assert_eq!(parsed.kem_prekey(), Some(&kem));
    let with_kem = |kem_fields: &[(u32, Value)]| {
        let mut fs = fields.clone();
        fs.push((4, Value::Len(encode_proto(kem_fields))));
        rebuild(fs)
    };
    let key = kem.key().as_bytes().to_vec();
    let sig = kem.signature().to_vec();
    assert_eq!(
        PreKeyBundle::from_bytes(&with_kem(&kem_fields(kem.id(), &key, Some(&sig)))),
        Ok(pq.clone()),
        "the crafted encoding is faithful"
    );
    for (kem_fields, expected) in kem_field_errors(&kem) {
        assert_eq!(
            PreKeyBundle::from_bytes(&with_kem(&kem_fields)).err(),
            Some(expected),
            "{expected:?}"
        );
    }
    // The size limit applies before decoding, whatever the KEM prekey holds.
    let huge = with_kem(&kem_fields(1, &vec![0; MAX_BUNDLE_BYTES], Some(&sig)));
    assert_eq!(
        PreKeyBundle::from_bytes(&huge).err(),
        Some(DecodeError::TooLarge {
            len: huge.len(),
            limit: MAX_BUNDLE_BYTES
        })
    );
    // A well-formed KEM prekey whose signature does not verify decodes: `verify` rejects it.
    let mut bad_sig = sig.clone();
    bad_sig[17] ^= 0x04;
    let unverified =
        PreKeyBundle::from_bytes(&with_kem(&kem_fields(kem.id(), &key, Some(&bad_sig))))
            .expect("signatures are checked by verify");
    assert_eq!(
        unverified.verify().err(),
        Some(BundleError::Unauthenticated)
    );
}

/// `KemPreKeyProto { 1: id, 2: public_key, 3: signature }` fields.
fn kem_fields(id: u32, key: &[u8], sig: Option<&[u8]>) -> Fields {
    let mut out = vec![
        (1, Value::Varint(u64::from(id))),
        (2, Value::Len(key.to_vec())),
    ];
    if let Some(sig) = sig {
        out.push((3, Value::Len(sig.to_vec())));
    }
    out
}

/// `key` (a valid encapsulation key) with its first coefficient set to 4095 ≥ q = 3329: right
/// length, but it fails the FIPS 203 encapsulation-key (modulus) check.
fn kem_key_failing_modulus_check(key: &[u8]) -> Vec<u8> {
    let mut bad = key.to_vec();
    bad[0] = 0xff;
    bad[1] |= 0x0f;
    assert_eq!(
        confidant::KemPublicKey::from_bytes(&bad).err(),
        Some(KeyError::Invalid)
    );
    bad
}

/// Malformed variants of a valid KEM prekey and the decode error each must produce. The key is
/// decoded before the signature.
fn kem_field_errors(kem: &KemPreKeyPublic) -> Vec<(Fields, DecodeError)> {
    let key = kem.key().as_bytes().to_vec();
    let sig = kem.signature().to_vec();
    let id = kem.id();
    let key_error = |error| DecodeError::Key {
        field: "kem_prekey",
        error,
    };
    let sig_error = DecodeError::InvalidField("kem_prekey.signature");
    let encoded = [vec![0x0a], key.clone()].concat(); // EncodeKEM form: not the raw field
    assert_eq!(encoded.len(), KEM_PUBLIC_KEY_LEN + 1);
    vec![
        (vec![], key_error(KeyError::Length)),
        (kem_fields(id, &[], Some(&sig)), key_error(KeyError::Length)),
        (
            kem_fields(id, &key[1..], Some(&sig)),
            key_error(KeyError::Length),
        ),
        (
            kem_fields(id, &encoded, Some(&sig)),
            key_error(KeyError::Length),
        ),
        (
            kem_fields(id, &key[..32], Some(&sig)),
            key_error(KeyError::Length),
        ),
        (
            kem_fields(id, &kem_key_failing_modulus_check(&key), Some(&sig)),
            key_error(KeyError::Invalid),
        ),
        // Both wrong: the key is reported.
        (
            kem_fields(id, &kem_key_failing_modulus_check(&key), Some(&sig[1..])),
            key_error(KeyError::Invalid),
        ),
        (kem_fields(id, &key, None), sig_error),
        (kem_fields(id, &key, Some(&sig[1..])), sig_error),
        (
            kem_fields(id, &key, Some(&[sig.clone(), vec![0]].concat())),
            sig_error,
        ),
    ]
}

/// PQXDH uploads (formerly rejected outright): every KEM prekey, last-resort (tag 4) or one-time
/// (tag 5), is decoded, checked with the FIPS 203 key check and signature-verified; any failure
/// rejects the whole upload in every entry point and changes nothing.
#[test]
fn uploads_validate_kem_prekeys() {
    let mut rng = rng(21);
    let (mut bob, otks) = Device::new(&mut rng, 1);
    let spk = bob.prekeys.signed_prekey();
    let last_resort = bob.prekeys.last_resort_kem_prekey();
    let kem_otks = bob
        .prekeys
        .generate_one_time_kem_prekeys(&mut rng, &bob.identity, 2)
        .expect("generate");
    let up = PreKeyUpload::new(bob.identity.public(), spk, otks.clone())
        .with_last_resort_kem_prekey(last_resort.clone())
        .with_one_time_kem_prekeys(kem_otks.clone());
    let good = up.to_bytes();
    let parsed = PreKeyUpload::from_bytes(&good).expect("PQXDH upload decodes");
    assert_eq!(parsed, up);
    assert_eq!(parsed.last_resort_kem_prekey(), Some(&last_resort));
    assert_eq!(parsed.one_time_kem_prekeys(), &kem_otks[..]);
    assert!(DeviceKeys::register(&good).is_ok());

    let mut server = DeviceKeys::register(&upload(&bob.identity, spk, &otks)).expect("register");
    let before = server.clone();
    let fields = parse_proto(&good[1..]).expect("protobuf");
    // The upload with its first KEM prekey of field `tag` replaced by `kem`.
    let edit = |tag: u32, kem: &Fields| {
        let mut done = false;
        let fs: Fields = fields
            .iter()
            .map(|(f, v)| {
                if *f == tag && !done {
                    done = true;
                    (*f, Value::Len(encode_proto(kem)))
                } else {
                    (*f, v.clone())
                }
            })
            .collect();
        assert!(done);
        [vec![0x22], encode_proto(&fs)].concat()
    };
    let mallory = IdentityKeyPair::generate(&mut rng);
    for (tag, kem) in [(4u32, &last_resort), (5, &kem_otks[0])] {
        let key = kem.key().as_bytes().to_vec();
        let mut cases: Vec<(Fields, UploadError)> = kem_field_errors(kem)
            .into_iter()
            .map(|(f, e)| (f, UploadError::Decode(e)))
            .collect();
        // Well-formed, but the signature does not verify under the upload's identity key.
        let mut flipped = kem.signature();
        flipped[63] ^= 0x20;
        let forged = hazmat::sign_kem_prekey(&mallory, kem.key());
        let other = kem_otks[1].signature(); // valid, but over another KEM key
        for sig in [flipped, forged, other] {
            cases.push((
                kem_fields(kem.id(), &key, Some(&sig)),
                UploadError::Unauthenticated,
            ));
        }
        for (kem_fields, expected) in cases {
            let bytes = edit(tag, &kem_fields);
            assert_eq!(
                PreKeyUpload::from_bytes(&bytes).err(),
                Some(expected),
                "tag {tag}: {expected:?}"
            );
            assert_eq!(DeviceKeys::register(&bytes).err(), Some(expected));
            assert_eq!(DeviceKeys::restore(&bytes).err(), Some(expected));
            assert_eq!(server.apply_upload(&bytes), Err(expected));
        }
    }
    assert_eq!(server, before, "rejected uploads change nothing");
}

// ---- Sessions: limits and readiness --------------------------------------------------------------

#[test]
fn largest_plaintext_fits_in_an_initial_message() {
    let mut rng = rng(17);
    let (mut bob, otks) = Device::new(&mut rng, 1);
    let a = IdentityKeyPair::generate(&mut rng);
    let mut s = common::initiate(&mut rng, &a, &bob, otks.first().copied());
    let before = s.snapshot();
    assert_eq!(
        s.encrypt(&vec![7; MAX_PLAINTEXT + 1]),
        Err(EncryptError::TooLarge {
            len: MAX_PLAINTEXT + 1,
            limit: MAX_PLAINTEXT
        })
    );
    assert!(s.snapshot() == before);
    let wire = s.encrypt(&vec![7; MAX_PLAINTEXT]).expect("encrypt");
    assert!(wire.len() <= MAX_MESSAGE_BYTES);
    let acc = accept(&mut rng, &mut bob, &wire).expect("accept");
    assert_eq!(acc.plaintext.len(), MAX_PLAINTEXT);
}

#[test]
fn responder_ratchet_cannot_send_first() {
    let mut bob = Ratchet::init_bob(&[1; 32], &[2; 66], &[3; 32]);
    assert!(matches!(
        bob.encrypt(b"too early"),
        Err(EncryptError::NotReady)
    ));
    assert!(matches!(
        bob.encrypt(&vec![0; MAX_PLAINTEXT + 1]),
        Err(EncryptError::TooLarge { .. })
    ));
}

// ---- Untrusted session snapshots -----------------------------------------------------------------

/// A conversation with skipped keys on both sides, pending cleared: every snapshot field set.
fn sessions(seed: u64) -> (Session, Session) {
    let mut rng = rng(seed);
    let (mut bob, otks) = Device::new(&mut rng, 1);
    let a = IdentityKeyPair::generate(&mut rng);
    let mut alice = common::initiate(&mut rng, &a, &bob, otks.first().copied());
    let m: Vec<Vec<u8>> = (0..3).map(|_| alice.encrypt(b"a").expect("e")).collect();
    let Ok(Routed::Accepted(acc)) = bob_receive(&mut rng, &mut bob, None, &m[2]) else {
        panic!("accept")
    };
    let mut bob_s = acc.session;
    let r: Vec<Vec<u8>> = (0..3).map(|_| bob_s.encrypt(b"b").expect("e")).collect();
    alice.decrypt_bytes(&mut rng, &r[2]).expect("decrypt");
    (alice, bob_s)
}

#[test]
fn truncated_and_garbage_session_snapshots_are_rejected() {
    let (alice, bob) = sessions(18);
    let mut rng = rng(180);
    let someone = IdentityKeyPair::generate(&mut rng);
    let (carol, _) = Device::new(&mut rng, 0);
    let pending = common::initiate(&mut rng, &someone, &carol, None);
    assert!(pending.awaiting_reply());
    // A pending PQXDH initiator: its snapshot carries the KEM prekey id and ciphertext.
    let pq_pending = common::initiate_pq(&mut rng, &someone, &carol, None, None);
    assert!(pq_pending.awaiting_reply());
    for s in [&alice, &bob, &pending, &pq_pending] {
        let snap = s.snapshot();
        for len in 0..snap.len() {
            assert!(
                Session::restore(&snap[..len]).is_err(),
                "prefix of {len} bytes restored"
            );
        }
        // Any single-bit flip: an error or a session, never a panic.
        for bit in 0..snap.len() * 8 {
            let _ = Session::restore(&common::flip(&snap, bit));
        }
    }
    assert_eq!(
        Session::restore(&[]).err(),
        Some(RestoreError::Decode(DecodeError::Empty))
    );
    assert_eq!(
        Session::restore(&[0x32, 0]).err(),
        Some(RestoreError::Decode(DecodeError::UnsupportedVersion(0x32)))
    );
    assert_eq!(
        Session::restore(&[0x31, 0x0b]).err(),
        Some(RestoreError::Decode(DecodeError::Protobuf))
    );
    assert_eq!(
        Session::restore(&[0x31]).err(),
        Some(RestoreError::Invariant("handshake"))
    );
    assert_eq!(
        Session::restore(&vec![0x31; MAX_SNAPSHOT_BYTES + 1]).err(),
        Some(RestoreError::Decode(DecodeError::TooLarge {
            len: MAX_SNAPSHOT_BYTES + 1,
            limit: MAX_SNAPSHOT_BYTES
        }))
    );
}

type Fields = Vec<(u32, Value)>;

fn set(fields: &mut Fields, field: u32, value: Option<Value>) {
    fields.retain(|(f, _)| *f != field);
    if let Some(v) = value {
        fields.push((field, v));
        fields.sort_by_key(|(f, _)| *f);
    }
}

/// Rebuilds a session snapshot after editing its top-level and ratchet fields.
fn edit_session(snap: &[u8], edit: impl FnOnce(&mut Fields, &mut Fields)) -> Vec<u8> {
    let mut top = parse_proto(&snap[1..]).expect("snapshot");
    let mut ratchet = parse_proto(&len_fields(&top, 7)[0]).expect("ratchet");
    edit(&mut top, &mut ratchet);
    if top.iter().any(|(f, _)| *f == 7) {
        set(&mut top, 7, Some(Value::Len(encode_proto(&ratchet))));
    }
    [vec![snap[0]], encode_proto(&top)].concat()
}

#[test]
fn session_snapshot_invariants_are_checked() {
    fn key(n: usize) -> Option<Value> {
        Some(Value::Len(vec![9; n]))
    }
    fn ct(n: usize) -> Option<Value> {
        Some(Value::Len(vec![7; n]))
    }
    fn skipped(dh: u8, n: u64) -> Value {
        Value::Len(encode_proto(&[
            (1, Value::Len(vec![dh; 32])),
            (2, Value::Varint(n)),
            (3, Value::Len(vec![5; 32])),
        ]))
    }
    let (alice, bob) = sessions(19);
    let a: Vec<u8> = alice.snapshot().to_vec();
    let b: Vec<u8> = bob.snapshot().to_vec();
    let mut rng = rng(190);
    let someone = IdentityKeyPair::generate(&mut rng);
    let (carol, _) = Device::new(&mut rng, 0);
    let p: Vec<u8> = common::initiate(&mut rng, &someone, &carol, None)
        .snapshot()
        .to_vec();
    assert!(
        Session::restore(&p)
            .expect("pending session")
            .awaiting_reply()
    );
    // A pending PQXDH initiator: its pending data carries the KEM prekey id and ciphertext.
    let (dave, _) = Device::new_pq(&mut rng, 0);
    let pq: Vec<u8> = common::initiate_pq(&mut rng, &someone, &dave, None, None)
        .snapshot()
        .to_vec();
    let restored = Session::restore(&pq).expect("pending PQXDH session");
    assert!(restored.awaiting_reply());
    assert_eq!(restored.handshake(), Handshake::Pqxdh);
    let kem_mismatch = "pending KEM data matches the handshake";
    let cases: Vec<(&[u8], Box<SnapshotEdit>, &str)> = vec![
        (&a, Box::new(|t, _| set(t, 1, None)), "handshake"),
        // Code 2 is PQXDH now; 3 is unknown.
        (
            &a,
            Box::new(|t, _| set(t, 1, Some(Value::Varint(3)))),
            "handshake",
        ),
        (
            &pq,
            Box::new(|t, _| set(t, 1, Some(Value::Varint(3)))),
            "handshake",
        ),
        // Pending KEM data exactly for PQXDH sessions (PROFILE-pqxdh §6.2).
        (
            &p,
            Box::new(|t, _| edit_pending(t, |q| set(q, 3, Some(Value::Varint(1))))),
            kem_mismatch,
        ),
        (
            &p,
            Box::new(|t, _| edit_pending(t, |q| set(q, 4, ct(KEM_CIPHERTEXT_LEN)))),
            kem_mismatch,
        ),
        (
            &p,
            Box::new(|t, _| {
                edit_pending(t, |q| {
                    set(q, 3, Some(Value::Varint(1)));
                    set(q, 4, ct(KEM_CIPHERTEXT_LEN));
                })
            }),
            kem_mismatch,
        ),
        (
            &p,
            Box::new(|t, _| set(t, 1, Some(Value::Varint(2)))),
            kem_mismatch,
        ),
        (
            &pq,
            Box::new(|t, _| set(t, 1, Some(Value::Varint(1)))),
            kem_mismatch,
        ),
        (
            &pq,
            Box::new(|t, _| {
                edit_pending(t, |q| {
                    set(q, 3, None);
                    set(q, 4, None);
                })
            }),
            kem_mismatch,
        ),
        (
            &pq,
            Box::new(|t, _| edit_pending(t, |q| set(q, 3, None))),
            kem_mismatch,
        ),
        (
            &pq,
            Box::new(|t, _| edit_pending(t, |q| set(q, 4, None))),
            kem_mismatch,
        ),
        (
            &pq,
            Box::new(|t, _| edit_pending(t, |q| set(q, 4, ct(KEM_CIPHERTEXT_LEN - 1)))),
            "pending.kem_ciphertext",
        ),
        (
            &pq,
            Box::new(|t, _| edit_pending(t, |q| set(q, 4, ct(KEM_CIPHERTEXT_LEN + 1)))),
            "pending.kem_ciphertext",
        ),
        (
            &pq,
            Box::new(|t, _| edit_pending(t, |q| set(q, 4, ct(0)))),
            "pending.kem_ciphertext",
        ),
        // A responder never has pending data, PQXDH or not.
        (
            &pq,
            Box::new(|t, _| set(t, 2, None)),
            "pending only for the initiator",
        ),
        (&a, Box::new(|t, _| set(t, 3, key(31))), "local_identity"),
        // Identity keys are restored as recorded (PROTOCOL.md §10.1): an Ed25519 form that
        // differs from the one the snapshot's associated data starts with is refused there,
        // lengths and the X25519 form's byte checks here.
        (
            &a,
            Box::new(|t, _| set(t, 4, Some(Value::Len(vec![0; 32])))),
            "associated_data",
        ),
        (&a, Box::new(|t, _| set(t, 4, key(33))), "remote_identity"),
        (&a, Box::new(|t, _| set(t, 8, None)), "local_identity"),
        (&a, Box::new(|t, _| set(t, 9, key(31))), "remote_identity"),
        (
            &b,
            Box::new(|t, _| set(t, 9, Some(Value::Len(vec![0; 32])))),
            "remote_identity",
        ),
        (
            &a,
            Box::new(|t, _| set(t, 8, Some(Value::Len(vec![0xff; 32])))),
            "local_identity",
        ),
        (
            &a,
            Box::new(|t, _| set(t, 5, Some(Value::Len(vec![0; 32])))),
            "base_key",
        ),
        (
            &b,
            Box::new(|t, _| {
                set(
                    t,
                    6,
                    Some(Value::Len(encode_proto(&[(1, Value::Varint(1))]))),
                )
            }),
            "pending only for the initiator",
        ),
        (&a, Box::new(|t, _| set(t, 7, None)), "ratchet"),
        // Swapping the role flips the expected AD order.
        (&a, Box::new(|t, _| set(t, 2, None)), "associated_data"),
        (
            &a,
            Box::new(|_, r| set(r, 1, Some(Value::Len(vec![0xed; 66])))),
            "associated_data",
        ),
        (
            &a,
            Box::new(|_, r| {
                let Value::Len(ad) = &r.iter().find(|(f, _)| *f == 1).expect("ad").1 else {
                    panic!()
                };
                let long = [ad.clone(), vec![0; 1025]].concat();
                set(r, 1, Some(Value::Len(long)));
            }),
            "associated_data",
        ),
        (&a, Box::new(|_, r| set(r, 2, key(31))), "root_key"),
        (
            &a,
            Box::new(|_, r| set(r, 3, key(33))),
            "sending_ratchet_private",
        ),
        (
            &a,
            Box::new(|_, r| set(r, 4, key(31))),
            "remote_ratchet_public",
        ),
        (
            &a,
            Box::new(|_, r| set(r, 11, None)),
            "sending_ratchet_public",
        ),
        (&a, Box::new(|_, r| set(r, 5, key(31))), "sending_chain_key"),
        (
            &a,
            Box::new(|_, r| set(r, 6, key(0))),
            "receiving_chain_key",
        ),
        (
            &a,
            Box::new(|_, r| set(r, 4, None)),
            "receiving chain without remote ratchet key",
        ),
        (
            &a,
            Box::new(|_, r| set(r, 6, None)),
            "nr without receiving chain",
        ),
        (
            &a,
            Box::new(|_, r| set(r, 5, None)),
            "counters without sending chain",
        ),
        (
            &a,
            Box::new(|_, r| {
                r.push((
                    10,
                    Value::Len(encode_proto(&[
                        (1, Value::Len(vec![1; 31])),
                        (3, Value::Len(vec![5; 32])),
                    ])),
                ))
            }),
            "skipped.ratchet_key",
        ),
        (
            &a,
            Box::new(|_, r| {
                r.push((
                    10,
                    Value::Len(encode_proto(&[
                        (1, Value::Len(vec![1; 32])),
                        (3, Value::Len(vec![5; 33])),
                    ])),
                ))
            }),
            "skipped.message_key",
        ),
        (
            &a,
            Box::new(|_, r| {
                r.push((10, skipped(1, 7)));
                r.push((10, skipped(1, 7)));
            }),
            "duplicate skipped key",
        ),
        // Every session can send and knows the peer's ratchet key.
        (
            &a,
            Box::new(|_, r| {
                for f in [5, 7, 9] {
                    set(r, f, None);
                }
            }),
            "sending chain and remote ratchet key",
        ),
        (
            &b,
            Box::new(|_, r| {
                for f in [4, 6, 8] {
                    set(r, f, None);
                }
            }),
            "sending chain and remote ratchet key",
        ),
        // The initiator has pending initial data exactly until it has received; a responder
        // has always received.
        (
            &a,
            Box::new(|t, _| {
                set(
                    t,
                    6,
                    Some(Value::Len(encode_proto(&[(1, Value::Varint(1))]))),
                )
            }),
            "pending initial data",
        ),
        (
            &a,
            Box::new(|_, r| {
                set(r, 6, None);
                set(r, 8, None);
            }),
            "pending initial data",
        ),
        (
            &p,
            Box::new(|_, r| set(r, 6, key(32))),
            "pending initial data",
        ),
        (
            &b,
            Box::new(|_, r| {
                set(r, 6, None);
                set(r, 8, None);
            }),
            "pending initial data",
        ),
    ];
    // Too many skipped keys is caught on the wire bytes, before prost allocates anything.
    let too_many = edit_session(&a, |_, r: &mut Fields| {
        for i in 0..=MAX_STORED_SKIPPED as u64 {
            r.push((10, skipped(1, i)));
        }
    });
    assert!(matches!(
        Session::restore(&too_many).err(),
        Some(RestoreError::Decode(DecodeError::TooMany { field: "ratchet.skipped", count, limit }))
            if count > limit && limit == MAX_STORED_SKIPPED
    ));
    for (snap, edit, expected) in cases {
        let edited = edit_session(snap, edit);
        assert_eq!(
            Session::restore(&edited).err(),
            Some(RestoreError::Invariant(expected)),
            "{expected}"
        );
    }
    // Boundaries that are accepted: an AD appendix of exactly 1024 bytes, MAX_STORED_SKIPPED keys.
    let ok = edit_session(&a, |_, r| {
        let Value::Len(ad) = &r.iter().find(|(f, _)| *f == 1).expect("ad").1 else {
            panic!()
        };
        let long = [ad.clone(), vec![0; 1024]].concat();
        set(r, 1, Some(Value::Len(long)));
    });
    assert!(Session::restore(&ok).is_ok());
    let full = edit_session(&b, |_, r| {
        set(r, 10, None);
        for i in 0..MAX_STORED_SKIPPED as u64 {
            r.push((10, skipped(1, i)));
        }
    });
    let restored = Session::restore(&full).expect("full skipped store");
    assert_eq!(restored.skipped_keys(), MAX_STORED_SKIPPED);
    // Unedited snapshots restore (the edit helper is faithful).
    assert!(edit_session(&a, |_, _| ()) == a);
    assert!(edit_session(&pq, |t, _| edit_pending(t, |_| ())) == pq);
    assert!(Session::restore(&edit_session(&b, |_, _| ())).is_ok());
}

/// Edits the pending initial data (session snapshot field 6) in place.
fn edit_pending(top: &mut Fields, edit: impl FnOnce(&mut Fields)) {
    let mut pending = parse_proto(&len_fields(top, 6)[0]).expect("pending");
    edit(&mut pending);
    set(top, 6, Some(Value::Len(encode_proto(&pending))));
}

#[test]
fn prekeys_snapshot_invariants_are_checked() {
    let mut rng = rng(20);
    let (mut bob, _) = Device::new(&mut rng, 2);
    bob.prekeys
        .rotate_signed_prekey(&mut rng, &bob.identity, NOW);
    // KEM ids: last-resort 1 (retired below), one-time 2 and 3, last-resort 4 (current).
    let kem_otks = bob
        .prekeys
        .generate_one_time_kem_prekeys(&mut rng, &bob.identity, 2)
        .expect("generate");
    assert_eq!(kem_otks.iter().map(|k| k.id()).collect::<Vec<_>>(), [2, 3]);
    let lr = bob
        .prekeys
        .rotate_last_resort_kem_prekey(&mut rng, &bob.identity, NOW);
    assert_eq!(lr.id(), 4);
    let a = IdentityKeyPair::generate(&mut rng);
    // No one-time prekey, so the accept is recorded in the replay record: X3DH as
    // (signed prekey, base key), PQXDH with the last-resort KEM prekey as a KEM triple.
    let mut s = common::initiate(&mut rng, &a, &bob, None);
    accept(&mut rng, &mut bob, &s.encrypt(b"x").expect("e")).expect("accept");
    let mut s2 = common::initiate_pq(&mut rng, &a, &bob, None, None);
    accept(&mut rng, &mut bob, &s2.encrypt(b"x").expect("e")).expect("accept");
    let snap = bob.prekeys.snapshot();
    let top = parse_proto(&snap[1..]).expect("snapshot");
    assert_eq!(len_fields(&top, 1).len(), 2, "signed prekeys");
    assert_eq!(len_fields(&top, 2).len(), 2, "one-time prekeys");
    assert_eq!(len_fields(&top, 5).len(), 2, "replay records");
    assert_eq!(len_fields(&top, 6).len(), 2, "last-resort KEM prekeys");
    assert_eq!(len_fields(&top, 7).len(), 2, "one-time KEM prekeys");
    assert!(top.contains(&(8, Value::Varint(5))), "next KEM id");
    assert!(top.contains(&(9, Value::Varint(1))), "AllowClassical");
    let rebuild = |fs: &Fields| [vec![0x32], encode_proto(fs)].concat();
    // Edits the `i`-th occurrence of repeated field `field`.
    let with_entry = |field: u32, i: usize, edit: &dyn Fn(&mut Fields)| -> Vec<u8> {
        let mut fs = top.clone();
        let mut n = 0;
        for (f, v) in fs.iter_mut() {
            if *f == field {
                if n == i {
                    let Value::Len(inner) = v else { panic!() };
                    let mut entry = parse_proto(inner).expect("entry");
                    edit(&mut entry);
                    *v = Value::Len(encode_proto(&entry));
                }
                n += 1;
            }
        }
        assert!(n > i, "no entry {i} of field {field}");
        rebuild(&fs)
    };
    let with_spk = |i: usize, edit: &dyn Fn(&mut Fields)| with_entry(1, i, edit);
    let edit_top = |edit: &dyn Fn(&mut Fields)| {
        let mut fs = top.clone();
        edit(&mut fs);
        rebuild(&fs)
    };
    let spk_record = |id: u64, retired: Option<u64>| {
        let mut f = vec![
            (1, Value::Varint(id)),
            (2, Value::Len(vec![3; 32])),
            (3, Value::Len(vec![4; 64])),
        ];
        if let Some(r) = retired {
            f.push((5, Value::Varint(r)));
        }
        Value::Len(encode_proto(&f))
    };
    let kem_record = |id: u64, retired: Option<u64>| {
        let mut f = vec![
            (1, Value::Varint(id)),
            (2, Value::Len(vec![3; 64])),
            (3, Value::Len(vec![4; 64])),
        ];
        if let Some(r) = retired {
            f.push((5, Value::Varint(r)));
        }
        Value::Len(encode_proto(&f))
    };
    let replay_entry = |spk: u64, key: Vec<u8>, kem: Option<u64>| {
        let mut f = vec![(1, Value::Varint(spk)), (2, Value::Len(key))];
        if let Some(k) = kem {
            f.push((3, Value::Varint(k)));
        }
        Value::Len(encode_proto(&f))
    };
    let numbered = |i: u32| {
        let mut k = vec![0u8; 32];
        k[..4].copy_from_slice(&i.to_le_bytes());
        k
    };
    let signed = "signed prekeys: one current, unique nonzero ids";
    let last_resort = "last-resort KEM prekeys: one current, unique nonzero ids";
    // Entry 0 of a rotating set is the current key, entry 1 the retired one.
    let cases: Vec<(Vec<u8>, &str)> = vec![
        // Signed prekeys: exactly one current, unique nonzero ids.
        (edit_top(&|fs| fs.retain(|(f, _)| *f != 1)), signed),
        (with_spk(1, &|spk| set(spk, 5, None)), signed),
        (
            with_spk(0, &|spk| set(spk, 5, Some(Value::Varint(1)))),
            signed,
        ),
        (
            with_spk(1, &|spk| set(spk, 1, Some(Value::Varint(2)))),
            signed,
        ),
        (edit_top(&|fs| fs.push((1, spk_record(1, Some(5))))), signed),
        (
            edit_top(&|fs| {
                fs.push((1, spk_record(50, Some(5))));
                fs.push((1, spk_record(50, Some(6))));
            }),
            signed,
        ),
        // Signed prekey id 0 (PreKeys never assigns it), current or retired.
        (with_spk(0, &|spk| set(spk, 1, None)), signed),
        (with_spk(1, &|spk| set(spk, 1, None)), signed),
        (
            with_spk(0, &|spk| set(spk, 2, Some(Value::Len(vec![1; 31])))),
            "signed prekey private key",
        ),
        (
            with_spk(1, &|spk| set(spk, 3, Some(Value::Len(vec![1; 63])))),
            "signature",
        ),
        // Last-resort KEM prekeys: the same rules, plus a 64-byte seed and a 64-byte signature.
        (edit_top(&|fs| fs.retain(|(f, _)| *f != 6)), last_resort),
        (with_entry(6, 1, &|k| set(k, 5, None)), last_resort),
        (
            with_entry(6, 0, &|k| set(k, 5, Some(Value::Varint(1)))),
            last_resort,
        ),
        (
            with_entry(6, 1, &|k| set(k, 1, Some(Value::Varint(4)))),
            last_resort,
        ),
        (with_entry(6, 0, &|k| set(k, 1, None)), last_resort),
        (with_entry(6, 1, &|k| set(k, 1, None)), last_resort),
        (
            edit_top(&|fs| fs.push((6, kem_record(9, None)))),
            last_resort,
        ),
        (
            edit_top(&|fs| fs.push((6, kem_record(1, Some(5))))),
            last_resort,
        ),
        (
            with_entry(6, 0, &|k| set(k, 2, Some(Value::Len(vec![1; 63])))),
            "KEM seed",
        ),
        (
            with_entry(6, 1, &|k| set(k, 2, Some(Value::Len(vec![1; 65])))),
            "KEM seed",
        ),
        (with_entry(6, 0, &|k| set(k, 2, None)), "KEM seed"),
        (
            with_entry(6, 1, &|k| set(k, 3, Some(Value::Len(vec![1; 63])))),
            "kem signature",
        ),
        (with_entry(6, 0, &|k| set(k, 3, None)), "kem signature"),
        // One-time KEM prekeys: 64-byte seeds, nonzero ids unique across the KEM id space.
        (
            with_entry(7, 0, &|k| set(k, 2, Some(Value::Len(vec![1; 32])))),
            "KEM seed",
        ),
        (with_entry(7, 1, &|k| set(k, 2, None)), "KEM seed"),
        (
            with_entry(7, 0, &|k| set(k, 1, Some(Value::Varint(4)))),
            "one-time KEM prekey id",
        ),
        (
            with_entry(7, 1, &|k| set(k, 1, Some(Value::Varint(1)))),
            "one-time KEM prekey id",
        ),
        (
            with_entry(7, 0, &|k| set(k, 1, None)),
            "one-time KEM prekey id",
        ),
        (
            with_entry(7, 1, &|k| set(k, 1, Some(Value::Varint(2)))),
            "duplicate one-time KEM prekey id",
        ),
        // One-time EC prekeys.
        (
            edit_top(&|fs| {
                fs.push((
                    2,
                    Value::Len(encode_proto(&[
                        (1, Value::Varint(9)),
                        (2, Value::Len(vec![1; 33])),
                    ])),
                ))
            }),
            "one-time prekey private key",
        ),
        (
            edit_top(&|fs| {
                fs.push((
                    2,
                    Value::Len(encode_proto(&[
                        (1, Value::Varint(2)),
                        (2, Value::Len(vec![1; 32])),
                    ])),
                ))
            }),
            "duplicate one-time prekey id",
        ),
        // Replay records: entry 0 is the X3DH (signed) record, entry 1 the KEM triple.
        (
            edit_top(&|fs| fs.push((5, replay_entry(1, vec![1; 31], None)))),
            "accepted base key",
        ),
        (
            edit_top(&|fs| fs.push((5, replay_entry(1, vec![1; 33], Some(4))))),
            "accepted base key",
        ),
        (
            with_entry(5, 0, &|r| set(r, 1, Some(Value::Varint(99)))),
            "accepted base key for an unknown signed prekey",
        ),
        (
            with_entry(5, 1, &|r| set(r, 1, Some(Value::Varint(99)))),
            "accepted base key for an unknown signed prekey",
        ),
        (
            with_entry(5, 1, &|r| set(r, 3, Some(Value::Varint(99)))),
            "accepted base key for an unknown KEM prekey",
        ),
        // A one-time KEM prekey has no replay record: its deletion stops replays.
        (
            with_entry(5, 1, &|r| set(r, 3, Some(Value::Varint(2)))),
            "accepted base key for an unknown KEM prekey",
        ),
        (
            with_entry(5, 0, &|r| set(r, 3, Some(Value::Varint(5)))),
            "accepted base key for an unknown KEM prekey",
        ),
        (
            edit_top(&|fs| {
                let dup = len_fields(fs, 5)[0].clone();
                fs.push((5, Value::Len(dup)));
            }),
            "duplicate accepted base key",
        ),
        (
            edit_top(&|fs| {
                let dup = len_fields(fs, 5)[1].clone();
                fs.push((5, Value::Len(dup)));
            }),
            "duplicate accepted base key",
        ),
        (
            edit_top(&|fs| {
                for i in 0..MAX_ACCEPTED_BASE_KEYS as u32 {
                    fs.push((5, replay_entry(2, numbered(i), None)));
                }
            }),
            "accepted base key count",
        ),
        (
            edit_top(&|fs| {
                for i in 0..MAX_ACCEPTED_BASE_KEYS as u32 {
                    fs.push((5, replay_entry(2, numbered(i), Some(4))));
                }
            }),
            "accepted base key count",
        ),
    ];
    for (bytes, expected) in cases {
        assert_eq!(
            PreKeys::restore(&bytes).err(),
            Some(RestoreError::Invariant(expected)),
            "{expected}"
        );
    }
    // The same (signed prekey, base key) may be in both records, and the KEM record of one
    // last-resort KEM prekey may name any held signed prekey.
    let both = edit_top(&|fs| {
        let Value::Len(signed_entry) = &fs.iter().find(|(f, _)| *f == 5).expect("entry").1 else {
            panic!()
        };
        let mut e = parse_proto(signed_entry).expect("entry");
        set(&mut e, 3, Some(Value::Varint(4)));
        fs.push((5, Value::Len(encode_proto(&e))));
        fs.push((5, replay_entry(1, numbered(7), Some(1))));
    });
    assert!(PreKeys::restore(&both).is_ok());
    // Full records (MAX_ACCEPTED_BASE_KEYS per key) restore.
    let full = edit_top(&|fs| {
        for i in 1..MAX_ACCEPTED_BASE_KEYS as u32 {
            fs.push((5, replay_entry(2, numbered(i), Some(4))));
        }
    });
    assert!(PreKeys::restore(&full).is_ok());
    // Counts beyond the limits are caught on the wire bytes.
    let too_many = edit_top(&|fs| {
        for i in 0..(MAX_SIGNED_PREKEYS - 1) as u64 {
            fs.push((1, spk_record(100 + i, Some(1))));
        }
    });
    assert_eq!(
        PreKeys::restore(&too_many).err(),
        Some(RestoreError::Decode(DecodeError::TooMany {
            field: "signed_prekeys",
            count: MAX_SIGNED_PREKEYS + 1,
            limit: MAX_SIGNED_PREKEYS
        }))
    );
    let too_many = edit_top(&|fs| {
        for i in 0..=MAX_ONE_TIME_PREKEYS as u64 {
            fs.push((
                2,
                Value::Len(encode_proto(&[
                    (1, Value::Varint(100 + i)),
                    (2, Value::Len(vec![1; 32])),
                ])),
            ));
        }
    });
    assert!(matches!(
        PreKeys::restore(&too_many).err(),
        Some(RestoreError::Decode(DecodeError::TooMany { field: "one_time_prekeys", count, limit }))
            if count > limit && limit == MAX_ONE_TIME_PREKEYS
    ));
    let too_many = edit_top(&|fs| {
        for i in 0..(MAX_LAST_RESORT_KEM_PREKEYS - 1) as u64 {
            fs.push((6, kem_record(100 + i, Some(1))));
        }
    });
    assert_eq!(
        PreKeys::restore(&too_many).err(),
        Some(RestoreError::Decode(DecodeError::TooMany {
            field: "last_resort_kem_prekeys",
            count: MAX_LAST_RESORT_KEM_PREKEYS + 1,
            limit: MAX_LAST_RESORT_KEM_PREKEYS
        }))
    );
    let at_limit = edit_top(&|fs| {
        for i in 0..(MAX_LAST_RESORT_KEM_PREKEYS - 2) as u64 {
            fs.push((6, kem_record(100 + i, Some(1))));
        }
    });
    assert!(PreKeys::restore(&at_limit).is_ok());
    let too_many = edit_top(&|fs| {
        for i in 0..(MAX_ONE_TIME_KEM_PREKEYS - 1) as u64 {
            fs.push((7, kem_record(100 + i, None)));
        }
    });
    assert_eq!(
        PreKeys::restore(&too_many).err(),
        Some(RestoreError::Decode(DecodeError::TooMany {
            field: "one_time_kem_prekeys",
            count: MAX_ONE_TIME_KEM_PREKEYS + 1,
            limit: MAX_ONE_TIME_KEM_PREKEYS
        }))
    );
    // next ids of 0 are read as 1.
    let zero_ids = edit_top(&|fs| {
        set(fs, 3, None);
        set(fs, 4, None);
        set(fs, 8, None);
    });
    assert!(PreKeys::restore(&zero_ids).is_ok());
    // The policy is field 9: absent means the default (PQXDH required).
    assert_eq!(
        PreKeys::restore(&rebuild(&top)).expect("restore").policy(),
        HandshakePolicy::AllowClassical
    );
    assert_eq!(
        PreKeys::restore(&edit_top(&|fs| set(fs, 9, None)))
            .expect("restore")
            .policy(),
        HandshakePolicy::RequirePostQuantum
    );
    // A snapshot without any KEM prekey (as written before PQXDH support, same leading byte)
    // does not restore: every PreKeys holds a last-resort KEM prekey.
    let classical_only = edit_top(&|fs| fs.retain(|(f, _)| *f <= 5));
    assert_eq!(
        PreKeys::restore(&classical_only).err(),
        Some(RestoreError::Invariant(last_resort))
    );
    assert_eq!(
        PreKeys::restore(&[0x31]).err(),
        Some(RestoreError::Decode(DecodeError::UnsupportedVersion(0x31)))
    );
    assert_eq!(
        PreKeys::restore(&[0x32]).err(),
        Some(RestoreError::Invariant(signed))
    );
    // Unedited: restores byte-identically.
    assert!(
        PreKeys::restore(&rebuild(&top))
            .expect("restore")
            .snapshot()
            == snap
    );
    // Prefixes and bit flips never panic.
    for len in 0..snap.len() {
        let _ = PreKeys::restore(&snap[..len]);
    }
    for bit in 0..snap.len() * 8 {
        let _ = PreKeys::restore(&common::flip(&snap, bit));
    }
}

fn config(cases: u32) -> proptest::test_runner::Config {
    common::proptest_config(cases, 0x5EED_F10F)
}

proptest! {
    #![proptest_config(config(512))]

    /// Arbitrary bytes (with and without a valid leading byte) never panic any decoder or
    /// restore; session snapshots made of garbage are rejected.
    #[test]
    fn garbage_never_panics(lead in prop_oneof![Just(0x31u8), Just(0x32), Just(0x11), Just(0x12), Just(0x21), Just(0x22), any::<u8>()],
                            body in prop::collection::vec(any::<u8>(), 0..300)) {
        let bytes = [vec![lead], body].concat();
        prop_assert!(Session::restore(&bytes).is_err());
        let _ = PreKeys::restore(&bytes);
        let _ = Message::from_bytes(&bytes);
        let _ = PreKeyBundle::from_bytes(&bytes);
        let _ = DeviceKeys::restore(&bytes);
        let _ = PreKeyUpload::from_bytes(&bytes);
    }
}

#[test]
fn two_sessions_with_the_same_peer_are_routed_by_owns() {
    let mut rng = rng(22);
    let (mut bob, otks) = Device::new(&mut rng, 2);
    let alice = IdentityKeyPair::generate(&mut rng);
    let mut a1 = common::initiate(&mut rng, &alice, &bob, Some(otks[0]));
    let mut a2 = common::initiate(&mut rng, &alice, &bob, Some(otks[1]));
    assert_ne!(a1.base_key(), a2.base_key());
    let (w1, w2) = (a1.encrypt(b"s1").expect("e"), a2.encrypt(b"s2").expect("e"));
    let Ok(Routed::Accepted(x1)) = bob_receive(&mut rng, &mut bob, None, &w1) else {
        panic!("accept 1")
    };
    let Ok(Routed::Accepted(x2)) = bob_receive(&mut rng, &mut bob, None, &w2) else {
        panic!("accept 2")
    };
    let (mut b1, mut b2) = (x1.session, x2.session);
    // Later initial-data messages go to their own session only.
    let (v1, v2) = (
        a1.encrypt(b"s1 again").expect("e"),
        a2.encrypt(b"s2 again").expect("e"),
    );
    let (m1, m2) = (
        Message::from_bytes(&v1).expect("d"),
        Message::from_bytes(&v2).expect("d"),
    );
    assert_eq!(
        decrypt(&mut rng, &mut b2, &m1),
        Err(DecryptError::OtherSession)
    );
    assert_eq!(
        decrypt(&mut rng, &mut b1, &m2),
        Err(DecryptError::OtherSession)
    );
    assert_eq!(
        decrypt(&mut rng, &mut b1, &m1).as_deref(),
        Ok(&b"s1 again"[..])
    );
    assert_eq!(
        decrypt(&mut rng, &mut b2, &m2).as_deref(),
        Ok(&b"s2 again"[..])
    );
    // Ratchet messages are tried against each session: the wrong one fails and is unchanged.
    let r1 = b1.encrypt(b"to a1").expect("e");
    assert_eq!(
        a2.decrypt_bytes(&mut rng, &r1).err(),
        Some(DecryptError::Unauthenticated)
    );
    assert!(a2.awaiting_reply());
    assert_eq!(
        a1.decrypt_bytes(&mut rng, &r1)
            .map(|p| p.to_vec())
            .as_deref(),
        Ok(&b"to a1"[..])
    );
    let t1 = Message::from_bytes(&a1.encrypt(b"ratchet").expect("e")).expect("d");
    assert_eq!(
        decrypt(&mut rng, &mut b2, &t1),
        Err(DecryptError::Unauthenticated)
    );
    assert_eq!(
        decrypt(&mut rng, &mut b1, &t1).as_deref(),
        Ok(&b"ratchet"[..])
    );
}

/// Sets `next_signed_prekey_id` (tag 3) of a PreKeys snapshot; `restore` accepts any value
/// (PROTOCOL.md §10.2: "not checked ... that next_*_id exceeds the held ids").
fn with_next_signed_id(p: &PreKeys, next: u32) -> PreKeys {
    let mut fs = parse_proto(&p.snapshot()[1..]).expect("snapshot");
    set(&mut fs, 3, Some(Value::Varint(u64::from(next))));
    PreKeys::restore(&[vec![0x32], encode_proto(&fs)].concat()).expect("restore")
}

/// Held signed prekey ids, current first (from the snapshot).
fn signed_ids(p: &PreKeys) -> Vec<u64> {
    let top = parse_proto(&p.snapshot()[1..]).expect("snapshot");
    len_fields(&top, 1)
        .iter()
        .map(|r| {
            match parse_proto(r)
                .expect("record")
                .iter()
                .find(|(f, _)| *f == 1)
            {
                Some((_, Value::Varint(id))) => *id,
                _ => 0,
            }
        })
        .collect()
}

#[test]
fn signed_prekey_ids_stay_unique_when_the_counter_wraps() {
    let mut rng = rng(23);
    let (bob, _) = Device::new(&mut rng, 0);
    let alice = IdentityKeyPair::generate(&mut rng);
    let mut s = common::initiate(&mut rng, &alice, &bob, None);
    let in_flight = s.encrypt(b"sent before the rotations").expect("encrypt");
    assert_eq!(prekey(&in_flight).signed_prekey_id(), 1);

    let mut prekeys = with_next_signed_id(&bob.prekeys, u32::MAX);
    let spk_max = prekeys.rotate_signed_prekey(&mut rng, &bob.identity, NOW);
    assert_eq!(spk_max.id(), u32::MAX);
    // The counter wraps "to 1, never 0" (PROTOCOL.md §3.3) — but id 1 is still held (retired,
    // within its grace period), so the next id must skip it.
    let next = prekeys.rotate_signed_prekey(&mut rng, &bob.identity, NOW);
    let ids = signed_ids(&prekeys);
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        ids.len(),
        "duplicate signed prekey ids {ids:?} (new id {})",
        next.id()
    );
    // The state must survive a restart...
    assert!(
        PreKeys::restore(&prekeys.snapshot()).is_ok(),
        "snapshot does not restore"
    );
    // ...and the message made from signed prekey 1 is still accepted during the grace period.
    let mut bob = Device {
        identity: bob.identity,
        prekeys,
    };
    assert_eq!(
        &bob.accept_wire(&mut rng, &in_flight)
            .expect("accept")
            .plaintext[..],
        b"sent before the rotations"
    );
}

#[test]
fn key_server_accepts_the_signed_prekey_after_the_counter_wraps() {
    let mut rng = rng(24);
    let (bob, _) = Device::new(&mut rng, 0);
    let mut prekeys = with_next_signed_id(&bob.prekeys, u32::MAX);
    let spk_max = prekeys.rotate_signed_prekey(&mut rng, &bob.identity, NOW);
    let mut server = DeviceKeys::register(&upload(&bob.identity, spk_max, &[])).expect("register");
    let wrapped = prekeys.rotate_signed_prekey(&mut rng, &bob.identity, NOW);
    assert!(wrapped.id() < spk_max.id(), "the id counter wrapped");
    assert_eq!(
        server.apply_upload(&upload(&bob.identity, wrapped, &[])),
        Ok(())
    );
}

fn draw32(rng: &mut ChaCha20Rng) -> [u8; 32] {
    use rand_chacha::rand_core::Rng;
    let mut out = [0u8; 32];
    rng.fill_bytes(&mut out);
    out
}

/// PROTOCOL.md §5.1, §5.4, §6.3: `initiate` draws `EK_A` then `DHs`; `accept` and a decrypt that
/// steps the DH ratchet draw exactly one new `DHs`, after verification; nothing else draws.
#[test]
fn randomness_is_drawn_exactly_as_specified() {
    let mut rng = rng(25);
    let mut probe = rng.clone();
    let seed = draw32(&mut probe);
    let alice_id = IdentityKeyPair::generate(&mut rng);
    assert!(rng == probe);
    assert_eq!(*alice_id.to_seed(), seed);
    assert_eq!(
        IdentityKeyPair::from_seed(&seed).public(),
        alice_id.public()
    );
    let (mut bob, otks) = Device::new(&mut rng, 1);

    let mut probe = rng.clone();
    let (ek, dhs) = (draw32(&mut probe), draw32(&mut probe));
    let mut alice = common::initiate(&mut rng, &alice_id, &bob, Some(otks[0]));
    assert!(rng == probe, "initiate draws exactly EK_A and DHs");
    assert_eq!(alice.base_key().to_bytes(), hazmat::x25519_public(&ek));
    let wire = alice.encrypt(b"hi").expect("encrypt");
    assert_eq!(common::header_of(&wire).0, hazmat::x25519_public(&dhs));

    let mut probe = rng.clone();
    let bob_dhs = draw32(&mut probe);
    let mut bob_s = accept(&mut rng, &mut bob, &wire).expect("accept").session;
    assert!(rng == probe, "accept draws exactly Bob's first DHs");
    let reply = bob_s.encrypt(b"reply").expect("encrypt");
    assert_eq!(common::header_of(&reply).0, hazmat::x25519_public(&bob_dhs));

    let mut probe = rng.clone();
    let alice_dhs = draw32(&mut probe);
    alice.decrypt_bytes(&mut rng, &reply).expect("decrypt");
    assert!(rng == probe, "a DH ratchet step draws exactly one DHs");
    assert_eq!(
        common::header_of(&alice.encrypt(b"next").expect("encrypt")).0,
        hazmat::x25519_public(&alice_dhs)
    );

    // Decrypting in the current chain draws nothing.
    let reply2 = bob_s.encrypt(b"reply 2").expect("encrypt");
    let before = rng.clone();
    alice.decrypt_bytes(&mut rng, &reply2).expect("decrypt");
    assert!(rng == before);
}

/// PROTOCOL.md §3.3: one-time prekey ids wrap to 1, skipping 0 and ids still held.
#[test]
fn one_time_prekey_ids_wrap_and_skip_held_ids() {
    let mut rng = rng(26);
    let (bob, otks) = Device::new(&mut rng, 2);
    assert_eq!(
        otks.iter().map(OneTimePreKeyPublic::id).collect::<Vec<_>>(),
        [1, 2]
    );
    let mut fs = parse_proto(&bob.prekeys.snapshot()[1..]).expect("snapshot");
    set(&mut fs, 4, Some(Value::Varint(u64::from(u32::MAX))));
    let mut prekeys = PreKeys::restore(&[vec![0x32], encode_proto(&fs)].concat()).expect("restore");
    let ids: Vec<u32> = prekeys
        .generate_one_time_prekeys(&mut rng, 3)
        .expect("generate")
        .iter()
        .map(|k| k.id())
        .collect();
    assert_eq!(ids, [u32::MAX, 3, 4]);
    assert!(PreKeys::restore(&prekeys.snapshot()).is_ok());
}

#[test]
fn encodings_round_trip() {
    let mut rng = rng(27);
    let (mut bob, otks) = Device::new(&mut rng, 3);
    let alice = IdentityKeyPair::generate(&mut rng);
    let mut s = common::initiate(&mut rng, &alice, &bob, Some(otks[0]));
    let w = s.encrypt(b"x").expect("encrypt");
    assert_eq!(Message::from_bytes(&w).expect("decode").to_bytes(), w);
    let mut b = accept(&mut rng, &mut bob, &w).expect("accept").session;
    let r = b.encrypt(b"y").expect("encrypt");
    assert_eq!(Message::from_bytes(&r).expect("decode").to_bytes(), r);
    for opk in [None, Some(otks[1])] {
        let bundle = PreKeyBundle::new(bob.identity.public(), bob.prekeys.signed_prekey(), opk);
        assert_eq!(
            PreKeyBundle::from_bytes(&bundle.to_bytes()).expect("decode"),
            bundle
        );
    }
    let up = PreKeyUpload::new(
        bob.identity.public(),
        bob.prekeys.signed_prekey(),
        otks.clone(),
    );
    let parsed = PreKeyUpload::from_bytes(&up.to_bytes()).expect("decode");
    assert_eq!(parsed, up);
    assert_eq!(parsed.identity_key(), bob.identity.public());
    assert_eq!(parsed.signed_prekey(), bob.prekeys.signed_prekey());
    assert_eq!(parsed.one_time_prekeys(), &otks[..]);
}

/// PROTOCOL.md §7.1: the batch size is checked before the keys; invalid keys are decode errors.
#[test]
fn upload_validation_order() {
    let mut rng = rng(28);
    let (bob, otks) = Device::new(&mut rng, 1);
    let spk = bob.prekeys.signed_prekey();
    let edit = |otk_count: usize, f: &dyn Fn(&mut Fields)| {
        let bytes = upload(&bob.identity, spk, &fake_otks(&otks[0], 1, otk_count));
        let mut fs = parse_proto(&bytes[1..]).expect("protobuf");
        f(&mut fs);
        [vec![0x22], encode_proto(&fs)].concat()
    };
    let zero_identity = |fs: &mut Fields| set(fs, 1, Some(Value::Len(vec![0; 32])));
    assert_eq!(
        PreKeyUpload::from_bytes(&edit(MAX_UPLOAD_ONE_TIME_PREKEYS + 1, &zero_identity)).err(),
        Some(UploadError::TooMany {
            count: MAX_UPLOAD_ONE_TIME_PREKEYS + 1,
            limit: MAX_UPLOAD_ONE_TIME_PREKEYS
        })
    );
    assert_eq!(
        PreKeyUpload::from_bytes(&edit(MAX_UPLOAD_ONE_TIME_PREKEYS, &zero_identity)).err(),
        Some(UploadError::Decode(DecodeError::Key {
            field: "identity_key",
            error: KeyError::SmallOrder
        }))
    );
    assert_eq!(
        PreKeyUpload::from_bytes(&edit(1, &|fs| set(fs, 2, None))).err(),
        Some(UploadError::Decode(DecodeError::InvalidField(
            "signed_prekey"
        )))
    );
    let zero_otk = |fs: &mut Fields| {
        fs.push((
            3,
            Value::Len(encode_proto(&[
                (1, Value::Varint(77)),
                (2, Value::Len(vec![0; 32])),
            ])),
        ));
    };
    assert_eq!(
        PreKeyUpload::from_bytes(&edit(1, &zero_otk)).err(),
        Some(UploadError::Decode(DecodeError::Key {
            field: "one_time_prekey",
            error: KeyError::SmallOrder
        }))
    );
    // Id 0 and any created_at are accepted by the server (not checked, §7.1).
    let odd = SignedPreKeyPublic::new(0, spk.key(), spk.signature(), Timestamp(u64::MAX));
    assert!(
        DeviceKeys::register(&upload(
            &bob.identity,
            odd,
            &[OneTimePreKeyPublic::new(0, otks[0].key())]
        ))
        .is_ok()
    );
}

/// SECURITY.md §4.6: an evicted skipped key makes its message undecryptable — `Duplicate` in
/// the current receiving chain, `Unauthenticated` in an earlier one.
#[test]
fn evicted_skipped_keys() {
    let mut rng = rng(29);
    let (mut bob, otks) = Device::new(&mut rng, 1);
    let a = IdentityKeyPair::generate(&mut rng);
    let mut alice = common::initiate(&mut rng, &a, &bob, otks.first().copied());
    let step = MAX_SKIP as usize + 1;
    let m: Vec<Vec<u8>> = (0..3 * step)
        .map(|i| alice.encrypt(&(i as u32).to_be_bytes()).expect("e"))
        .collect();
    let Ok(Routed::Accepted(acc)) = bob_receive(&mut rng, &mut bob, None, &m[step - 1]) else {
        panic!("accept")
    };
    let mut b = acc.session;
    for k in [2 * step - 1, 3 * step - 1] {
        let Ok(Routed::Session(_)) = bob_receive(&mut rng, &mut bob, Some(&mut b), &m[k]) else {
            panic!("decrypt {k}")
        };
    }
    // 3 × MAX_SKIP keys were skipped; the oldest MAX_SKIP (messages 0..MAX_SKIP) were evicted.
    assert_eq!(b.skipped_keys(), MAX_STORED_SKIPPED);
    let msg = |w: &[u8]| Message::from_bytes(w).expect("decode");
    assert_eq!(
        decrypt(&mut rng, &mut b, &msg(&m[5])),
        Err(DecryptError::Duplicate { counter: 5 })
    );
    assert_eq!(
        decrypt(&mut rng, &mut b, &msg(&m[step - 2])),
        Err(DecryptError::Duplicate {
            counter: MAX_SKIP - 1
        })
    );
    assert_eq!(
        decrypt(&mut rng, &mut b, &msg(&m[step])).as_deref(),
        Ok(&(step as u32).to_be_bytes()[..])
    );
    // After a DH ratchet step the evicted messages belong to an earlier chain.
    let reply = b.encrypt(b"r").expect("e");
    alice.decrypt_bytes(&mut rng, &reply).expect("decrypt");
    let next = alice.encrypt(b"next").expect("e");
    assert_eq!(
        decrypt(&mut rng, &mut b, &msg(&next)).as_deref(),
        Ok(&b"next"[..])
    );
    assert_eq!(
        decrypt(&mut rng, &mut b, &msg(&m[6])),
        Err(DecryptError::Unauthenticated)
    );
    // Stored keys of the earlier chain still work, once. A replay from an earlier chain is
    // treated as a new ratchet key (PROTOCOL.md §5.4 step 3): with n > MAX_SKIP it is rejected
    // from the header (TooFarAhead, gap n), otherwise by the tag (Unauthenticated).
    assert_eq!(
        decrypt(&mut rng, &mut b, &msg(&m[step + 1])).as_deref(),
        Ok(&(step as u32 + 1).to_be_bytes()[..])
    );
    assert_eq!(
        decrypt(&mut rng, &mut b, &msg(&m[step + 1])),
        Err(DecryptError::TooFarAhead {
            gap: u64::from(MAX_SKIP) + 2,
            limit: MAX_SKIP
        })
    );
    assert_eq!(
        decrypt(&mut rng, &mut b, &msg(&m[step - 1])),
        Err(DecryptError::Unauthenticated)
    );
}

/// Edits the top-level and ratchet fields of a decoded session snapshot.
type SnapshotEdit = dyn FnOnce(&mut Fields, &mut Fields);
