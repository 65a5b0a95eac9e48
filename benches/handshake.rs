//! Session setup benchmarks (criterion): X3DH vs PQXDH, initiator and responder.
//!
//! `cargo bench --bench handshake`

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::hint::black_box;

use confidant::{
    HandshakePolicy, IdentityKeyPair, Message, PreKeyBundle, PreKeys, Session, Timestamp,
};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

struct Bob {
    identity: IdentityKeyPair,
    prekeys: PreKeys,
    bundle: Vec<u8>,
}

fn bob(rng: &mut ChaCha20Rng, pq: bool) -> Bob {
    let identity = IdentityKeyPair::generate(rng);
    let mut prekeys = PreKeys::new(rng, &identity, Timestamp(0));
    prekeys.set_policy(HandshakePolicy::AllowClassical);
    let otk = prekeys.generate_one_time_prekeys(rng, 1).unwrap();
    let mut bundle = PreKeyBundle::new(
        identity.public(),
        prekeys.signed_prekey(),
        otk.first().copied(),
    );
    if pq {
        bundle = bundle.with_kem_prekey(prekeys.last_resort_kem_prekey());
    }
    Bob {
        identity,
        prekeys,
        bundle: bundle.to_bytes(),
    }
}

fn initiate(rng: &mut ChaCha20Rng, alice: &IdentityKeyPair, bundle: &[u8]) -> Session {
    let verified = PreKeyBundle::from_bytes(bundle).unwrap().verify().unwrap();
    Session::initiate_with_policy(rng, alice, verified, HandshakePolicy::AllowClassical).unwrap()
}

fn bench(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let alice = IdentityKeyPair::generate(&mut rng);
    for (name, pq) in [("x3dh", false), ("pqxdh", true)] {
        let b = bob(&mut rng, pq);
        // Initiator: parse + verify the bundle, agree, and encrypt the first 100 B message.
        c.bench_function(&format!("handshake/{name}/initiate"), |bench| {
            let mut r = ChaCha20Rng::seed_from_u64(1);
            bench.iter(|| {
                let mut s = initiate(&mut r, &alice, black_box(&b.bundle));
                black_box(s.encrypt(&[0u8; 100]).unwrap())
            });
        });
        // Responder: parse the initial message, agree, decrypt the first message. The
        // PreKeys value is restored from a snapshot outside the measurement, so every accept
        // starts from the same state (the one-time prekey unused, no replay record).
        let snapshot = b.prekeys.snapshot();
        c.bench_function(&format!("handshake/{name}/accept"), |bench| {
            let mut r = ChaCha20Rng::seed_from_u64(2);
            let mut setup_rng = ChaCha20Rng::seed_from_u64(3);
            bench.iter_batched_ref(
                || {
                    let wire = initiate(&mut setup_rng, &alice, &b.bundle)
                        .encrypt(&[0u8; 100])
                        .unwrap();
                    (PreKeys::restore(&snapshot).unwrap(), wire)
                },
                |(prekeys, wire)| {
                    let Message::PreKey(m) = Message::from_bytes(wire).unwrap() else {
                        panic!()
                    };
                    black_box(prekeys.accept(&mut r, &b.identity, &m).unwrap())
                },
                BatchSize::SmallInput,
            );
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
