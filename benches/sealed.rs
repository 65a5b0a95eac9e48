//! Sealed sender and attachment benchmarks (criterion, PROTOCOL.md §19–§20). Deterministic RNG.
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
