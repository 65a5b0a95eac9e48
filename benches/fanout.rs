//! Encrypt-once fan-out benchmarks (criterion, PROTOCOL.md §16): 1 KiB to 1, 10, 100 and 1000
//! devices over established sessions, next to the primitive floor measured in the same run:
//! per device one same-sender ratchet message carrying the 48-byte key entry (its own message
//! key, so its own AES-256-GCM key setup), plus one AES-256-GCM seal of the padded body and its
//! SHA-256 digest.
//!
//! `cargo bench --bench fanout`

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::hint::black_box;

use confidant::book::{Address, SessionBook};
use confidant::device::{DeviceEntry, DeviceList, VerifiedDeviceList};
use confidant::{IdentityKey, IdentityKeyPair, Message, PreKeyBundle, PreKeys, Session, Timestamp};
use criterion::{Criterion, criterion_group, criterion_main};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

#[path = "floor/mod.rs"]
mod floor;
use sha2::{Digest, Sha256};

const T: Timestamp = Timestamp(1_795_000_000_000);

/// A sender device whose book holds established sessions with `n` devices (16 per account).
fn world(rng: &mut ChaCha20Rng, n: usize) -> (SessionBook, Address, Vec<IdentityKey>) {
    let sender_account = IdentityKeyPair::generate(rng);
    let sender = IdentityKeyPair::generate(rng);
    let sender_address = Address {
        account: sender_account.public(),
        device: 1,
    };
    let mut book = SessionBook::new();
    let mut accounts = Vec::new();
    let mut left = n;
    while left > 0 {
        let count = left.min(16);
        left -= count;
        let account = IdentityKeyPair::generate(rng);
        let devices: Vec<(IdentityKeyPair, PreKeys)> = (0..count)
            .map(|_| {
                let id = IdentityKeyPair::generate(rng);
                let pk = PreKeys::new(rng, &id, T);
                (id, pk)
            })
            .collect();
        let entries = devices
            .iter()
            .enumerate()
            .map(|(i, (id, _))| DeviceEntry::local(&account, id, i as u32 + 1))
            .collect();
        let list = DeviceList {
            account_id: b"acct".to_vec(),
            version: 1,
            timestamp: T,
            entries,
        }
        .sign(&account)
        .unwrap();
        let list = VerifiedDeviceList::verify(&list, &account.public(), None).unwrap();
        book.apply_device_list(&list).unwrap();
        for (i, (id, mut prekeys)) in devices.into_iter().enumerate() {
            let bundle = PreKeyBundle::new(id.public(), prekeys.signed_prekey(), None)
                .with_kem_prekey(prekeys.last_resort_kem_prekey())
                .verify()
                .unwrap();
            let mut session = Session::initiate(rng, &sender, bundle).unwrap();
            let first = session.encrypt(b"setup").unwrap();
            let Message::PreKey(m) = Message::from_bytes(&first).unwrap() else {
                panic!()
            };
            let mut theirs = prekeys.accept(rng, &id, &m).unwrap().session;
            let reply = theirs.encrypt(b"ack").unwrap();
            session.decrypt_bytes(rng, &reply).unwrap();
            let address = Address {
                account: account.public(),
                device: i as u32 + 1,
            };
            book.insert(address, session).unwrap();
        }
        accounts.push(account.public());
    }
    (book, sender_address, accounts)
}

fn bench(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let payload = vec![0x5au8; 1024];
    let mut group = c.benchmark_group("fanout");
    group.sample_size(10);
    for n in [1usize, 10, 100, 1000] {
        let (mut book, sender, accounts) = world(&mut rng, n);
        group.bench_function(format!("1KiB/{n}-devices"), |b| {
            b.iter(|| {
                let out = book
                    .fan_out(&mut rng, &accounts, &sender, &payload)
                    .unwrap();
                assert_eq!(out.entries.len(), n);
                black_box(out)
            });
        });
        // The floor: per device a same-sender ratchet message carrying the 48-byte key entry
        // (chain step, HKDF, AES-256-GCM key setup and seal with the 106-byte AAD); once the
        // padded 1 KiB body seal under a fresh key and its SHA-256 digest.
        let padded = confidant::padding::pad(&payload);
        let entry = [7u8; 48];
        let aad = [9u8; floor::AAD_LEN];
        group.bench_function(format!("floor/1KiB/{n}-devices"), |b| {
            b.iter(|| {
                let body = floor::seal(&[3u8; 32], b"body", b"x", &padded);
                let digest = Sha256::digest(&body);
                let mut ck = [1u8; 32];
                for _ in 0..n {
                    black_box(floor::send(&mut ck, &aad, black_box(&entry)));
                }
                black_box(digest)
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
