//! Sealed sender and attachment benchmarks (criterion, PROTOCOL.md §19–§20), each send next to
//! its primitive floor measured in the same run (`floor/mod.rs`). Deterministic RNG.
//!
//! `cargo bench --bench sealed`

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::hint::black_box;

use confidant::attachment::{AttachmentDecryptor, AttachmentEncryptor, DEFAULT_CHUNK_SIZE};
use confidant::book::Address;
use confidant::certificate::{CertificateValidator, SenderCertificate, ServerCertificate};
use confidant::envelope::{EnvelopeContent, EnvelopeKind};
use confidant::sealed::{self, SealedRecipient};
use confidant::{IdentityKey, IdentityKeyPair, Timestamp, server};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

#[path = "floor/mod.rs"]
mod floor;

const NOW: Timestamp = Timestamp(1_795_000_000_000);

fn bench(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let root = IdentityKeyPair::generate(&mut rng);
    let server_key = IdentityKeyPair::generate(&mut rng);
    let server_cert = ServerCertificate::issue(&root, 1, &server_key.public());
    let sender = IdentityKeyPair::generate(&mut rng);
    let account = IdentityKeyPair::generate(&mut rng).public();
    let cert = SenderCertificate::issue(
        &server_key,
        &server_cert,
        Address { account, device: 1 },
        &sender.public(),
        NOW.plus_ms(86_400_000),
    );
    // 1000 recipient devices over 334 accounts; the recipients' secrets for opening.
    let accounts: Vec<IdentityKey> = (0..334)
        .map(|_| IdentityKeyPair::generate(&mut rng).public())
        .collect();
    let devices: Vec<IdentityKeyPair> = (0..1000)
        .map(|_| IdentityKeyPair::generate(&mut rng))
        .collect();
    let recipients: Vec<SealedRecipient<'_>> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| SealedRecipient {
            address: Address {
                account: accounts[i / 3],
                device: (i % 3) as u32 + 1,
            },
            identity_key: d.public(),
            entry: None,
        })
        .collect();
    let message = vec![0x61u8; 400];

    let mut group = c.benchmark_group("sealed");
    group.sample_size(20);
    group.bench_function("seal/group-message/1000-devices", |b| {
        b.iter(|| {
            black_box(
                sealed::seal(
                    &mut rng,
                    &sender,
                    &cert,
                    EnvelopeKind::Group,
                    &message,
                    &recipients,
                    false,
                )
                .unwrap(),
            )
        });
    });
    // The floor (PROTOCOL.md §19.3): once, HKDF of M, the ephemeral key, the padded body's
    // AES-256-GCM seal and its SHA-256; per recipient device, DH(e, R) with HKDF (96-byte IKM,
    // 64 bytes out) and DH(S, R) with HKDF (224-byte IKM, 16 bytes out).
    let padded = confidant::padding::pad(&[0x5au8; 400 + 253 + 16]);
    let s_secret = floor::keygen([41u8; 32]).0;
    let r_public: Vec<x25519_dalek::PublicKey> = devices
        .iter()
        .map(|d| x25519_dalek::PublicKey::from(d.public().x25519()))
        .collect();
    group.bench_function("floor/seal/group-message/1000-devices", |b| {
        b.iter(|| {
            let ek: [u8; 64] = floor::hkdf(&[0u8; 32], &[42u8; 32], b"confidant/sealed/v1/message");
            let (e, e_pub) = floor::keygen(ek[..32].try_into().unwrap());
            let body = floor::aes_gcm_seal(
                &ek[32..].try_into().unwrap(),
                &[0; 12],
                e_pub.as_bytes(),
                &padded,
            );
            let body_hash = Sha256::digest(&body);
            let entry_hash = Sha256::digest([]);
            let mut headers = Vec::with_capacity(48 * r_public.len());
            for r in &r_public {
                let mut ikm = [0u8; 96];
                ikm[..32].copy_from_slice(&floor::dh(&e, r));
                ikm[32..64].copy_from_slice(e_pub.as_bytes());
                ikm[64..].copy_from_slice(r.as_bytes());
                let mask: [u8; 64] =
                    floor::hkdf(&[0u8; 32], &ikm, b"confidant/sealed/v1/recipient");
                let c: Vec<u8> = mask[..32].iter().map(|m| m ^ 0x42).collect();
                let mut auth = [0u8; 224];
                auth[..32].copy_from_slice(&floor::dh(&s_secret, r));
                auth[32..64].copy_from_slice(e_pub.as_bytes());
                auth[64..96].copy_from_slice(&c);
                auth[160..192].copy_from_slice(&body_hash);
                auth[192..].copy_from_slice(&entry_hash);
                let at: [u8; 16] = floor::hkdf(&[0u8; 32], &auth, b"confidant/sealed/v1/auth");
                headers.extend_from_slice(&c);
                headers.extend_from_slice(&at);
            }
            black_box((body, headers))
        });
    });
    let upload = sealed::seal(
        &mut rng,
        &sender,
        &cert,
        EnvelopeKind::Group,
        &message,
        &recipients,
        false,
    )
    .unwrap();
    group.bench_function("server/split/1000-devices", |b| {
        b.iter(|| black_box(server::split_upload(&upload).unwrap()));
    });
    let envelopes = server::split_upload(&upload).unwrap();
    let validator = CertificateValidator::new(root.public());
    let first = envelopes
        .iter()
        .find(|e| e.recipient == recipients[0].address)
        .unwrap();
    let EnvelopeContent::Sealed(s) = &first.content else {
        panic!()
    };
    group.bench_function("open", |b| {
        b.iter(|| black_box(sealed::open(&devices[0], s, &validator, NOW).unwrap()));
    });
    group.finish();

    // Attachment encryption and decryption throughput, 64 MiB in 64 KiB chunks.
    let mut data = vec![0u8; 64 << 20];
    rng.fill_bytes(&mut data);
    let mut att = c.benchmark_group("attachment");
    att.sample_size(10);
    att.throughput(Throughput::Bytes(data.len() as u64));
    let mut out = Vec::with_capacity(data.len() + data.len() / 1024);
    att.bench_function("encrypt/64MiB", |b| {
        b.iter(|| {
            out.clear();
            let mut enc =
                AttachmentEncryptor::new(&mut rng, DEFAULT_CHUNK_SIZE, "application/octet-stream")
                    .unwrap();
            enc.update(&data, &mut out).unwrap();
            black_box(enc.finish(&mut out))
        });
    });
    out.clear();
    let mut enc =
        AttachmentEncryptor::new(&mut rng, DEFAULT_CHUNK_SIZE, "application/octet-stream").unwrap();
    enc.update(&data, &mut out).unwrap();
    let pointer = enc.finish(&mut out);
    // The floor: one AES-256-GCM key setup, a seal of every 64 KiB chunk into the output, and
    // SHA-256 over the ciphertext (the pointer's digest).
    att.bench_function("floor/encrypt/64MiB", |b| {
        use aes_gcm::aead::{AeadInOut, KeyInit};
        let mut out = Vec::with_capacity(data.len() + data.len() / 1024);
        b.iter(|| {
            out.clear();
            let cipher = aes_gcm::Aes256Gcm::new(&[3u8; 32].into());
            let mut digest = Sha256::new();
            for (i, chunk) in data.chunks(DEFAULT_CHUNK_SIZE as usize).enumerate() {
                let start = out.len();
                out.extend_from_slice(chunk);
                let mut nonce = [0u8; 12];
                nonce[7..11].copy_from_slice(&(i as u32).to_be_bytes());
                let tag = cipher
                    .encrypt_inout_detached(&nonce.into(), b"", (&mut out[start..]).into())
                    .unwrap();
                out.extend_from_slice(&tag);
                digest.update(&out[start..]);
            }
            black_box(digest.finalize())
        });
    });
    let mut plain = Vec::with_capacity(data.len());
    att.bench_function("decrypt/64MiB", |b| {
        b.iter(|| {
            plain.clear();
            let mut dec = AttachmentDecryptor::new(&pointer);
            dec.update(&out, &mut plain).unwrap();
            dec.finish().unwrap();
        });
    });
    att.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
