//! The primitive cost floor (criterion): what every protocol operation is made of.
//!
//! `cargo bench --bench primitives`

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::hint::black_box;

use confidant::hazmat;
use criterion::{Criterion, criterion_group, criterion_main};
use curve25519_dalek::edwards::CompressedEdwardsY;
use ed25519_dalek::{Signer, SigningKey, Verifier};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use x25519_dalek::{PublicKey, StaticSecret};

fn bench(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let a = StaticSecret::from([7u8; 32]);
    let b = PublicKey::from(&StaticSecret::from([8u8; 32]));
    c.bench_function("primitive/x25519/keygen", |bench| {
        bench.iter(|| PublicKey::from(&StaticSecret::from(black_box([5u8; 32]))));
    });
    c.bench_function("primitive/x25519/dh", |bench| {
        bench.iter(|| a.diffie_hellman(black_box(&b)))
    });
    let sk = SigningKey::from_bytes(&[3u8; 32]);
    let vk = sk.verifying_key();
    let msg = [0x05u8; 33];
    let sig = sk.sign(&msg);
    c.bench_function("primitive/ed25519/sign", |bench| {
        bench.iter(|| sk.sign(black_box(&msg)))
    });
    c.bench_function("primitive/ed25519/verify", |bench| {
        bench.iter(|| vk.verify(black_box(&msg), &sig).unwrap());
    });
    let compressed = CompressedEdwardsY(vk.to_bytes());
    c.bench_function("primitive/ed25519/decompress+torsion", |bench| {
        bench.iter(|| {
            black_box(&compressed)
                .decompress()
                .unwrap()
                .is_torsion_free()
        });
    });
    let mut seed = [0u8; 64];
    rng.fill_bytes(&mut seed);
    let ek = hazmat::kem_public(&seed);
    let ct = hazmat::kem_encapsulate(&mut rng, &ek).unwrap().ciphertext;
    c.bench_function("primitive/mlkem1024/keygen", |bench| {
        bench.iter(|| hazmat::kem_public(black_box(&seed)))
    });
    c.bench_function("primitive/mlkem1024/encaps", |bench| {
        bench.iter(|| hazmat::kem_encapsulate(&mut rng, black_box(&ek)));
    });
    c.bench_function("primitive/mlkem1024/decaps", |bench| {
        bench.iter(|| hazmat::kem_decapsulate(&seed, black_box(&ct)));
    });
    c.bench_function("primitive/mlkem1024/parse-ek", |bench| {
        bench.iter(|| confidant::KemPublicKey::from_bytes(black_box(ek.as_bytes())).unwrap());
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
