//! vodozemac (Olm and Megolm, the `vodozemac` crate as a dev-dependency) on the operations
//! `benches/report.sh` compares confidant with. Each benchmark mirrors one of ours as closely as
//! the two protocols allow, wire bytes included (messages are encoded and parsed, as ours are):
//!
//! | here | ours | difference in what is done |
//! |---|---|---|
//! | `olm/outbound+encrypt/100B` | `handshake/x3dh/initiate` | Olm does no signature check (Matrix clients verify the one-time key's signature outside vodozemac); X3DH verifies the signed prekey and validates the identity key |
//! | `olm/inbound/100B` | `handshake/x3dh/accept` | as above |
//! | `olm/encrypt+decrypt/100B` | `session/encrypt+decrypt/100B` | AES-256-CBC + HMAC-SHA-256 (8-byte tag) vs AES-256-GCM |
//! | `olm/ping-pong/100B` | `session/ping-pong/100B` | same DH ratchet shape |
//! | `olm/pickle+unpickle` | `session/snapshot+restore` | serde JSON of `SessionPickle`, unencrypted, vs our protobuf snapshot; neither encrypts (vodozemac's `encrypt` adds AES-CBC + base64) |
//! | `megolm/encrypt/100B` | `group/encrypt/100B` | Megolm does not pad; ours pads to 256 B |
//! | `megolm/decrypt/100B` | `group/decrypt/100B/skipped=0` | in-order messages, signature verified by both |
//!
//! vodozemac draws its randomness from the operating system (it has no RNG parameter), so these
//! runs are not seeded. `cargo bench --bench vodozemac`

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use vodozemac::megolm::{self, GroupSession, InboundGroupSession, MegolmMessage};
use vodozemac::olm::{Account, AccountPickle, OlmMessage, Session, SessionConfig, SessionPickle};

/// A message as it travels: encoded, then parsed by the receiver.
fn wire(m: &OlmMessage) -> OlmMessage {
    let (kind, bytes) = m.to_parts();
    OlmMessage::from_parts(kind, &bytes).unwrap()
}

/// Alice's account, Bob's account (with one published one-time key) and Bob's keys.
fn accounts() -> (Account, Account) {
    let alice = Account::new();
    let mut bob = Account::new();
    bob.generate_one_time_keys(1);
    (alice, bob)
}

fn outbound(alice: &Account, bob: &Account) -> Session {
    let otk = *bob.one_time_keys().values().next().unwrap();
    alice
        .create_outbound_session(SessionConfig::version_1(), bob.curve25519_key(), otk)
        .unwrap()
}

/// An established pair: one message each way.
fn pair() -> (Session, Session) {
    let (alice, mut bob) = accounts();
    let mut a = outbound(&alice, &bob);
    let OlmMessage::PreKey(m) = wire(&a.encrypt(b"hi").unwrap()) else {
        panic!()
    };
    let mut b = bob
        .create_inbound_session(SessionConfig::version_1(), alice.curve25519_key(), &m)
        .unwrap()
        .session;
    a.decrypt(&wire(&b.encrypt(b"hi").unwrap())).unwrap();
    (a, b)
}

fn olm(c: &mut Criterion) {
    let payload = [0x42u8; 100];

    c.bench_function("vodozemac/olm/outbound+encrypt/100B", |bench| {
        let (alice, bob) = accounts();
        bench.iter(|| {
            let mut s = outbound(&alice, black_box(&bob));
            black_box(s.encrypt(payload).unwrap().to_parts())
        });
    });

    c.bench_function("vodozemac/olm/inbound/100B", |bench| {
        // Bob is restored from a pickle for every iteration (outside the timing), so each
        // inbound session consumes the same, unused one-time key.
        let (alice, mut bob) = accounts();
        let (kind, bytes) = outbound(&alice, &bob).encrypt(payload).unwrap().to_parts();
        bob.mark_keys_as_published();
        let pickle = serde_json::to_string(&bob.pickle()).unwrap();
        bench.iter_batched_ref(
            || {
                let p: AccountPickle = serde_json::from_str(&pickle).unwrap();
                Account::from_pickle(p)
            },
            |bob| {
                let OlmMessage::PreKey(m) = OlmMessage::from_parts(kind, &bytes).unwrap() else {
                    panic!()
                };
                black_box(
                    bob.create_inbound_session(
                        SessionConfig::version_1(),
                        alice.curve25519_key(),
                        &m,
                    )
                    .unwrap(),
                )
            },
            BatchSize::SmallInput,
        );
    });

    c.bench_function("vodozemac/olm/encrypt+decrypt/100B", |bench| {
        let (mut a, mut b) = pair();
        bench.iter(|| {
            let m = a.encrypt(black_box(payload)).unwrap();
            black_box(b.decrypt(&wire(&m)).unwrap())
        });
    });

    c.bench_function("vodozemac/olm/ping-pong/100B", |bench| {
        let (mut a, mut b) = pair();
        bench.iter(|| {
            let m = a.encrypt(black_box(payload)).unwrap();
            black_box(b.decrypt(&wire(&m)).unwrap());
            let m = b.encrypt(black_box(payload)).unwrap();
            black_box(a.decrypt(&wire(&m)).unwrap())
        });
    });

    c.bench_function("vodozemac/olm/pickle+unpickle", |bench| {
        let (a, _) = pair();
        bench.iter(|| {
            let bytes = serde_json::to_vec(&black_box(&a).pickle()).unwrap();
            let p: SessionPickle = serde_json::from_slice(&bytes).unwrap();
            black_box(Session::from_pickle(p))
        });
    });
}

fn megolm(c: &mut Criterion) {
    let payload = [0x42u8; 100];
    let new_pair = || {
        let outbound = GroupSession::new(megolm::SessionConfig::version_1());
        let inbound =
            InboundGroupSession::new(&outbound.session_key(), megolm::SessionConfig::version_1());
        (outbound, inbound)
    };

    c.bench_function("vodozemac/megolm/encrypt/100B", |bench| {
        let (mut outbound, _) = new_pair();
        bench.iter(|| black_box(outbound.encrypt(black_box(payload)).to_bytes()));
    });

    // In-order decryption, messages made outside the timing (as `group/decrypt/100B`).
    c.bench_function("vodozemac/megolm/decrypt/100B", |bench| {
        let (mut outbound, mut inbound) = new_pair();
        bench.iter_custom(|iters| {
            let messages: Vec<Vec<u8>> = (0..iters)
                .map(|_| outbound.encrypt(payload).to_bytes())
                .collect();
            let start = Instant::now();
            for m in &messages {
                let m = MegolmMessage::from_bytes(m).unwrap();
                black_box(inbound.decrypt(&m).unwrap());
            }
            start.elapsed()
        });
    });
}

criterion_group!(benches, olm, megolm);
criterion_main!(benches);
