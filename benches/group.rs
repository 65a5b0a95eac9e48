//! Sender-key group benchmarks (criterion, PROTOCOL.md §17), each next to its primitive floor
//! measured in the same run: a group encrypt is one chain step (2 HMAC-SHA-256), one HKDF, one
//! AES-256-GCM seal and one Ed25519 signature; a decrypt swaps the signature for a
//! verification. Deterministic RNG; setup outside the timed section.
//!
//! `cargo bench --bench group`

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::hint::black_box;
use std::time::Instant;

use aes_gcm::aead::{Aead, KeyInit, Nonce, Payload};
use aes_gcm::{Aes256Gcm, Key};
use confidant::book::Address;
use confidant::group::{
    GroupId, GroupMessage, GroupSession, RotationPolicy, SenderKeyDistribution,
};
use confidant::{IdentityKeyPair, Timestamp, hazmat};
use criterion::{Criterion, criterion_group, criterion_main};
use ed25519_dalek::{Signature, Signer, SigningKey};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

const NOW: Timestamp = Timestamp(1_700_000_000_000);

/// A sender and a receiver that installed the sender's key, with `skipped` skipped keys stored
/// at the receiver.
fn pair(rng: &mut ChaCha20Rng, skipped: usize) -> (GroupSession, GroupSession, Address) {
    let a = Address {
        account: IdentityKeyPair::generate(rng).public(),
        device: 1,
    };
    let b = Address {
        account: IdentityKeyPair::generate(rng).public(),
        device: 1,
    };
    let id = GroupId::random(rng);
    let policy = RotationPolicy::on_removal_only();
    let mut sender = GroupSession::new(id, a, &[a, b], policy).unwrap();
    let mut receiver = GroupSession::new(id, b, &[a, b], policy).unwrap();
    let first = sender.encrypt(rng, NOW, b"start").unwrap();
    let d = SenderKeyDistribution::from_bytes(&first.distribution.unwrap().message).unwrap();
    receiver.receive_distribution(&a, &d).unwrap();
    receiver
        .decrypt(&a, &GroupMessage::from_bytes(&first.message).unwrap())
        .unwrap();
    let mut left = skipped;
    while left > 0 {
        let gap = left.min(1000);
        let mut last = Vec::new();
        for _ in 0..=gap {
            last = sender.encrypt(rng, NOW, b"skip").unwrap().message;
        }
        receiver
            .decrypt(&a, &GroupMessage::from_bytes(&last).unwrap())
            .unwrap();
        left -= gap;
    }
    (sender, receiver, a)
}

fn bench(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(17);
    let payload = [0x42u8; 100];

    // The floor, same run, sized like a real 100-byte group message: the plaintext padded to
    // 256 bytes (PROTOCOL.md §18), the 60-byte AAD, and a signature over the message's exact
    // signed part.
    let sample = {
        let (mut sender, _, _) = pair(&mut rng, 0);
        sender.encrypt(&mut rng, NOW, &payload).unwrap().message
    };
    let signed = sample[..sample.len() - 64].to_vec();
    let padded = confidant::padding::pad(&payload);
    let sk = SigningKey::from_bytes(&[3u8; 32]);
    let vk = sk.verifying_key();
    let aes = Aes256Gcm::new(&Key::<Aes256Gcm>::from([9u8; 32]));
    let nonce = Nonce::<Aes256Gcm>::from([1u8; 12]);
    let aad = [0u8; 60];
    let ct = aes
        .encrypt(
            &nonce,
            Payload {
                msg: &padded,
                aad: &aad,
            },
        )
        .unwrap();
    let sig = sk.sign(&signed);
    c.bench_function("floor/group-encrypt/100B", |bench| {
        bench.iter(|| {
            let step = hazmat::sender_key_step(black_box(&[7u8; 32]));
            let padded = confidant::padding::pad(black_box(&payload));
            let ct = aes
                .encrypt(
                    &nonce,
                    Payload {
                        msg: &padded,
                        aad: &aad,
                    },
                )
                .unwrap();
            black_box((step, ct, sk.sign(black_box(&signed))))
        });
    });
    c.bench_function("floor/group-decrypt/100B", |bench| {
        bench.iter(|| {
            vk.verify_strict(black_box(&signed), &Signature::from_bytes(&sig.to_bytes()))
                .unwrap();
            let step = hazmat::sender_key_step(black_box(&[7u8; 32]));
            let pt = aes
                .decrypt(
                    &nonce,
                    Payload {
                        msg: black_box(&ct),
                        aad: &aad,
                    },
                )
                .unwrap();
            black_box((step, pt))
        });
    });

    c.bench_function("group/encrypt/100B", |bench| {
        let (mut sender, _, _) = pair(&mut rng, 0);
        let mut r = ChaCha20Rng::seed_from_u64(1);
        bench.iter(|| black_box(sender.encrypt(&mut r, NOW, black_box(&payload)).unwrap()));
    });

    for skipped in [0usize, 2000] {
        // In-order decrypt (parse included) with `skipped` keys stored at the receiver.
        c.bench_function(&format!("group/decrypt/100B/skipped={skipped}"), |bench| {
            let (mut sender, mut receiver, a) = pair(&mut rng, skipped);
            let mut r = ChaCha20Rng::seed_from_u64(2);
            bench.iter_custom(|iters| {
                let wires: Vec<Vec<u8>> = (0..iters)
                    .map(|_| sender.encrypt(&mut r, NOW, &payload).unwrap().message)
                    .collect();
                let start = Instant::now();
                for wire in &wires {
                    let m = GroupMessage::from_bytes(wire).unwrap();
                    black_box(receiver.decrypt(&a, &m).unwrap());
                }
                start.elapsed()
            });
        });
    }

    c.bench_function("group/snapshot+restore", |bench| {
        let (_, receiver, _) = pair(&mut rng, 0);
        bench.iter(|| black_box(GroupSession::restore(&receiver.snapshot()).unwrap()));
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
