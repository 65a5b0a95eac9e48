//! Double Ratchet benchmarks (criterion). Deterministic RNG; setup excluded via `iter_batched`.
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
