//! Double Ratchet benchmarks (criterion), each next to its primitive floor measured in the same
//! run (`floor/mod.rs`). Deterministic RNG; setup excluded via `iter_batched`.
//!
//! `cargo bench --bench ratchet`

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::hint::black_box;
use std::time::Instant;

use confidant::{IdentityKeyPair, PreKeyBundle, PreKeys, Session, Timestamp};
use criterion::{Criterion, criterion_group, criterion_main};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

#[path = "floor/mod.rs"]
mod floor;

fn pair(rng: &mut ChaCha20Rng) -> (Session, Session) {
    let bob = IdentityKeyPair::generate(rng);
    let mut prekeys = PreKeys::new(rng, &bob, Timestamp(0));
    let otk = prekeys.generate_one_time_prekeys(rng, 1).unwrap();
    let bundle = PreKeyBundle::new(bob.public(), prekeys.signed_prekey(), otk.first().copied())
        .with_kem_prekey(prekeys.last_resort_kem_prekey())
        .verify()
        .unwrap();
    let alice = IdentityKeyPair::generate(rng);
    let mut a = Session::initiate(rng, &alice, bundle).unwrap();
    let first = a.encrypt(b"hi").unwrap();
    let confidant::Message::PreKey(m) = confidant::Message::from_bytes(&first).unwrap() else {
        panic!()
    };
    let mut b = prekeys.accept(rng, &bob, &m).unwrap().session;
    let reply = b.encrypt(b"hi").unwrap();
    a.decrypt_bytes(rng, &reply).unwrap();
    (a, b)
}

/// Bob's session after it has stored `skipped` skipped keys (in chains of at most MAX_SKIP),
/// with Alice ready to send in-order messages on Bob's current receiving chain.
fn with_skipped(rng: &mut ChaCha20Rng, skipped: usize) -> (Session, Session) {
    let (mut a, mut b) = pair(rng);
    let mut left = skipped;
    while left > 0 {
        let gap = left.min(1000);
        let mut last = Vec::new();
        for _ in 0..=gap {
            last = a.encrypt(b"skip").unwrap();
        }
        b.decrypt_bytes(rng, &last).unwrap();
        left -= gap;
        let reply = b.encrypt(b"turn").unwrap();
        a.decrypt_bytes(rng, &reply).unwrap();
    }
    // One more in-order message so Bob's receiving chain is Alice's current sending chain.
    let m = a.encrypt(b"sync").unwrap();
    b.decrypt_bytes(rng, &m).unwrap();
    assert_eq!(b.skipped_keys(), skipped);
    (a, b)
}

fn bench(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(42);
    let payload = [0x42u8; 100];

    // Encrypt + decrypt of 100 B in the same sending chain.
    c.bench_function("session/encrypt+decrypt/100B", |bench| {
        let (mut a, mut b) = pair(&mut rng);
        let mut r = ChaCha20Rng::seed_from_u64(1);
        bench.iter(|| {
            let wire = a.encrypt(black_box(&payload)).unwrap();
            black_box(b.decrypt_bytes(&mut r, &wire).unwrap());
        });
    });

    // Its floor: two chain steps (4 HMAC), two HKDF expansions, one AES-256-GCM seal and one
    // open of 100 B with the 106-byte AAD.
    c.bench_function("session/floor_encrypt+decrypt/100B", |bench| {
        let mut cks = [1u8; 32];
        let mut ckr = [1u8; 32];
        let aad = [0x33u8; floor::AAD_LEN];
        bench.iter(|| {
            let ct = floor::send(&mut cks, &aad, black_box(&payload));
            black_box(floor::receive(&mut ckr, &aad, &ct));
        });
    });

    // A ping-pong round: Alice sends, Bob replies, each message starting a new DH ratchet step
    // at its receiver (the chat pattern of alternating turns).
    c.bench_function("session/ping-pong/100B", |bench| {
        let (mut a, mut b) = pair(&mut rng);
        let mut r = ChaCha20Rng::seed_from_u64(3);
        bench.iter(|| {
            let m = a.encrypt(black_box(&payload)).unwrap();
            black_box(b.decrypt_bytes(&mut r, &m).unwrap());
            let m = b.encrypt(black_box(&payload)).unwrap();
            black_box(a.decrypt_bytes(&mut r, &m).unwrap());
        });
    });
    // Its floor: per turn, a message on the sender's chain, and at the receiver DH + KDF_RK, the
    // message, a key generation, DH + KDF_RK (PROTOCOL.md §5.4).
    c.bench_function("session/floor_ping-pong/100B", |bench| {
        // Alice's state after her last receive: her key pair, the root key before Bob's next
        // step, and the sending chain both sides derive from DH(a, B).
        let (a_secret, a_public) = floor::keygen([2u8; 32]);
        let (b_secret, b_public) = floor::keygen([3u8; 32]);
        let aad = [0x33u8; floor::AAD_LEN];
        let rk0 = [4u8; 32];
        let (rk1, ck1) = floor::kdf_rk(&rk0, &floor::dh(&a_secret, &b_public));
        bench.iter(|| {
            let mut cks = ck1;
            let ct = floor::send(&mut cks, &aad, black_box(&payload));
            let (_, mut ck_b, _, b_fresh) =
                floor::ratchet_receive(&rk0, &b_secret, &a_public, [5u8; 32], &aad, &ct);
            let ct = floor::send(&mut ck_b, &aad, black_box(&payload));
            black_box(floor::ratchet_receive(
                &rk1, &a_secret, &b_fresh, [6u8; 32], &aad, &ct,
            ))
        });
    });

    // Snapshot and restore of a fresh (just established) session: what a client does around
    // every message when it keeps sessions in a database.
    c.bench_function("session/snapshot+restore", |bench| {
        let (a, _) = pair(&mut rng);
        bench.iter(|| {
            let bytes = black_box(&a).snapshot();
            black_box(Session::restore(&bytes).unwrap())
        });
    });

    for skipped in [0usize, 2000] {
        // In-order decrypt of one 100 B message with `skipped` keys stored: the steady state of
        // a live session. Alice's messages are made outside the timed section; Bob decrypts them
        // in order, so the store stays at `skipped` keys throughout.
        c.bench_function(
            &format!("session/decrypt/100B/skipped={skipped}"),
            |bench| {
                let (mut a, mut b) = with_skipped(&mut rng, skipped);
                let mut r = ChaCha20Rng::seed_from_u64(2);
                bench.iter_custom(|iters| {
                    let wires: Vec<Vec<u8>> =
                        (0..iters).map(|_| a.encrypt(&payload).unwrap()).collect();
                    let start = Instant::now();
                    for wire in &wires {
                        black_box(b.decrypt_bytes(&mut r, wire).unwrap());
                    }
                    let elapsed = start.elapsed();
                    assert_eq!(b.skipped_keys(), skipped);
                    elapsed
                });
            },
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
