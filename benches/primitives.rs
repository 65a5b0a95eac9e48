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

#[path = "floor/mod.rs"]
mod floor;

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
    for len in [32usize, 306] {
        let m = vec![0x61u8; len];
        let sig = sk.sign(&m);
        c.bench_function(&format!("primitive/ed25519/sign/{len}B"), |bench| {
            bench.iter(|| sk.sign(black_box(&m)))
        });
        c.bench_function(
            &format!("primitive/ed25519/verify-strict/{len}B"),
            |bench| bench.iter(|| vk.verify_strict(black_box(&m), &sig).unwrap()),
        );
    }
    c.bench_function("primitive/sha256/306B", |bench| {
        bench.iter(|| <sha2::Sha256 as sha2::Digest>::digest(black_box(&[0x61u8; 306])))
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
    // Symmetric primitives, as the protocol uses them: a fresh key per message (key setup
    // included), the 106-byte AAD of a ratchet message.
    let aad = [0x33u8; floor::AAD_LEN];
    for (name, len) in [("100B", 100usize), ("1KiB", 1024), ("64KiB", 65536)] {
        let msg = vec![0x42u8; len];
        c.bench_function(&format!("primitive/aes256gcm/seal/{name}"), |bench| {
            bench.iter(|| floor::aes_gcm_seal(black_box(&[1u8; 32]), &[0u8; 12], &aad, &msg))
        });
    }
    c.bench_function("primitive/kdf-ck/2x-hmac-sha256", |bench| {
        bench.iter(|| floor::chain_step(black_box(&[1u8; 32])))
    });
    c.bench_function("primitive/hkdf-sha256/44B", |bench| {
        bench.iter(|| floor::hkdf::<44>(&[0u8; 32], black_box(&[1u8; 32]), floor::MK_INFO))
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
