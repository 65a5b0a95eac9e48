//! Safety numbers and key-change reporting (PROTOCOL.md §21): agreement of both sides, what
//! changes the number and what does not, hostile scannable input, `KnownAccounts` and its
//! snapshot, and the known-answer vectors of profile `confidant-safety-number/v1`
//! (`test-vectors/safety_number.json`), re-derived through the API and independently with
//! `sha2`.
//!
//! Regenerate the vectors (a protocol change: say so in the CHANGELOG) with
//! `cargo test --test safety -- --ignored regenerate_safety_number_vectors`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;

use confidant::device::{DeviceEntry, DeviceList, VerifiedDeviceList};
use confidant::limits::MAX_ACCOUNT_ID_BYTES;
use confidant::safety::{
    KeyChange, KnownAccounts, MAX_KNOWN_ACCOUNTS, MAX_KNOWN_ACCOUNTS_SNAPSHOT_BYTES,
    MAX_SCANNABLE_BYTES, ObserveError, SAFETY_NUMBER_DIGITS, SAFETY_NUMBER_ITERATIONS,
    SAFETY_NUMBER_PROFILE_ID, SCANNABLE_FINGERPRINT_LEN, SCANNABLE_VERSION, SafetyNumber,
    SafetyNumberError,
};
use confidant::{DecodeError, IdentityKey, IdentityKeyPair, RestoreError, Timestamp};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_core::Rng;
use serde_json::{Value, json};
use sha2::{Digest, Sha512};

/// Leading byte of the scannable form (PROTOCOL.md §21.4).
const SCANNABLE_V1: u8 = 0xA1;
/// Leading byte of a `KnownAccounts` snapshot (PROTOCOL.md §21.6).
const KNOWN_ACCOUNTS_V1: u8 = 0x35;

fn key(rng: &mut ChaCha20Rng) -> IdentityKey {
    IdentityKeyPair::generate(rng).public()
}

// ---------------------------------------------------------------------------------------------
// Independent reference (PROTOCOL.md §21.2–§21.4), straight from SHA-512.

fn reference_fingerprint(key: &[u8; 32], id: &[u8]) -> [u8; 64] {
    let mut first = b"confidant/safety-number/v1".to_vec();
    first.extend_from_slice(&[0, 0]);
    first.extend_from_slice(key);
    first.extend_from_slice(id);
    let mut h: [u8; 64] = Sha512::digest(&first).into();
    for _ in 0..5200 {
        let mut input = h.to_vec();
        input.extend_from_slice(key);
        h = Sha512::digest(&input).into();
    }
    h
}

fn reference_digits(h: &[u8; 64]) -> String {
    (0..6)
        .map(|i| {
            let mut v = 0u64;
            for b in &h[5 * i..5 * i + 5] {
                v = v * 256 + u64::from(*b);
            }
            format!("{:05}", v % 100_000)
        })
        .collect()
}

fn reference_scannable(local: &[u8], remote: &[u8]) -> Vec<u8> {
    let mut out = vec![SCANNABLE_V1, 0x08, 0x01, 0x12, 0x20];
    out.extend_from_slice(local);
    out.extend_from_slice(&[0x1a, 0x20]);
    out.extend_from_slice(remote);
    out
}

// ---------------------------------------------------------------------------------------------
// Tiny protobuf writer for crafted inputs.

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn len_field(out: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    varint(out, u64::from(tag) << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn account_entry(id: &[u8], key: &[u8], verified: bool) -> Vec<u8> {
    let mut entry = Vec::new();
    len_field(&mut entry, 1, id);
    len_field(&mut entry, 2, key);
    if verified {
        entry.extend_from_slice(&[0x18, 0x01]);
    }
    entry
}

fn snapshot_of(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![KNOWN_ACCOUNTS_V1];
    for e in entries {
        len_field(&mut out, 1, e);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Safety numbers

#[test]
fn both_sides_get_the_same_number_and_their_scans_match() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    for _ in 0..8 {
        let (alice, bob) = (key(&mut rng), key(&mut rng));
        let at_alice = SafetyNumber::new(&alice, b"alice@example.org", &bob, b"bob@example.org");
        let at_bob = SafetyNumber::new(&bob, b"bob@example.org", &alice, b"alice@example.org");
        assert_eq!(at_alice.displayable(), at_bob.displayable());
        assert_eq!(at_alice.displayable_grouped(), at_bob.displayable_grouped());
        // Each side scans the other's QR code.
        assert_eq!(at_alice.compare_scanned(&at_bob.scannable()), Ok(true));
        assert_eq!(at_bob.compare_scanned(&at_alice.scannable()), Ok(true));
        // A side's own form is the mirror image, not a match (the two accounts differ).
        assert_ne!(at_alice.scannable(), at_bob.scannable());
        assert_eq!(at_alice.compare_scanned(&at_alice.scannable()), Ok(false));
        assert_eq!(at_alice.scannable().len(), 71);
    }
}

#[test]
fn swapping_roles_swaps_the_scannable_halves_only() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let (a, b) = (key(&mut rng), key(&mut rng));
    let ab = SafetyNumber::new(&a, b"a", &b, b"b");
    let ba = SafetyNumber::new(&b, b"b", &a, b"a");
    let (s_ab, s_ba) = (ab.scannable(), ba.scannable());
    // 0xa1, version (2 bytes), local (2 + 32), remote (2 + 32).
    assert_eq!(s_ab[5..37], s_ba[39..71]);
    assert_eq!(s_ab[39..71], s_ba[5..37]);
    assert_eq!(ab.displayable(), ba.displayable());
    assert_ne!(ab, ba);
    // The same accounts in the same roles always give the same value.
    assert_eq!(ab, SafetyNumber::new(&a, b"a", &b, b"b"));
    assert_eq!(
        SafetyNumber::new(&a, b"a", &a, b"a")
            .compare_scanned(&SafetyNumber::new(&a, b"a", &a, b"a").scannable()),
        Ok(true)
    );
}

#[test]
fn changing_one_key_or_one_id_changes_the_number() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let (a, b, c) = (key(&mut rng), key(&mut rng), key(&mut rng));
    let base = SafetyNumber::new(&a, b"alice", &b, b"bob");
    let variants = [
        SafetyNumber::new(&c, b"alice", &b, b"bob"),
        SafetyNumber::new(&a, b"alice", &c, b"bob"),
        SafetyNumber::new(&a, b"alicf", &b, b"bob"),
        SafetyNumber::new(&a, b"alice", &b, b"bo"),
        SafetyNumber::new(&a, b"alice", &b, b"bob\0"),
        SafetyNumber::new(&a, b"", &b, b"bob"),
        // Roles kept, accounts' ids exchanged.
        SafetyNumber::new(&a, b"bob", &b, b"alice"),
    ];
    let mut seen = vec![base.displayable().to_owned()];
    for v in &variants {
        assert!(!seen.contains(&v.displayable().to_owned()), "{v:?}");
        seen.push(v.displayable().to_owned());
        assert_eq!(base.compare_scanned(&v.scannable()), Ok(false));
        assert_eq!(v.compare_scanned(&base.scannable()), Ok(false));
    }
    // Only the changed account's half changes.
    let (old, new) = (base.displayable(), variants[1].displayable());
    let halves = |s: &str| [s[..30].to_owned(), s[30..].to_owned()];
    let common = halves(old)
        .into_iter()
        .filter(|h| halves(new).contains(h))
        .count();
    assert_eq!(common, 1);
}

#[test]
fn displayable_is_sixty_ascii_digits_grouped_in_fives() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    for i in 0..16u8 {
        let (a, b) = (key(&mut rng), key(&mut rng));
        let n = SafetyNumber::new(&a, &[i], &b, &[i, i]);
        let digits = n.displayable();
        assert_eq!(digits.len(), SAFETY_NUMBER_DIGITS);
        assert!(digits.bytes().all(|c| c.is_ascii_digit()), "{digits}");
        assert!(digits[..30] <= digits[30..], "halves in ascending order");
        let grouped = n.displayable_grouped();
        assert_eq!(grouped.len(), 71);
        let groups: Vec<&str> = grouped.split(' ').collect();
        assert_eq!(groups.len(), 12);
        assert!(groups.iter().all(|g| g.len() == 5));
        assert_eq!(groups.concat(), digits);
        assert!(format!("{n:?}").contains(digits));
    }
}

#[test]
fn the_number_is_the_independent_construction() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let (a, b) = (key(&mut rng), key(&mut rng));
    let (fa, fb) = (
        reference_fingerprint(&a.to_bytes(), b"a"),
        reference_fingerprint(&b.to_bytes(), b"b"),
    );
    let (da, db) = (reference_digits(&fa), reference_digits(&fb));
    let n = SafetyNumber::new(&a, b"a", &b, b"b");
    let expected = if da <= db { da + &db } else { db + &da };
    assert_eq!(n.displayable(), expected);
    assert_eq!(n.scannable(), reference_scannable(&fa[..32], &fb[..32]));
    assert_eq!(SAFETY_NUMBER_ITERATIONS, 5200);
    assert_eq!(SCANNABLE_FINGERPRINT_LEN, 32);
}

#[test]
fn malformed_scannable_input_is_an_error_or_false_and_never_panics() {
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let (a, b) = (key(&mut rng), key(&mut rng));
    let ours = SafetyNumber::new(&a, b"a", &b, b"b");
    let theirs = SafetyNumber::new(&b, b"b", &a, b"a").scannable();
    assert_eq!(ours.compare_scanned(&theirs), Ok(true));

    // Every truncation fails to decode.
    for len in 0..theirs.len() {
        assert!(
            ours.compare_scanned(&theirs[..len]).is_err(),
            "prefix of {len}"
        );
    }
    // Every single-byte change: an error or a mismatch, never a match (no change leaves both
    // fingerprints intact).
    let (mut errors, mut mismatches) = (0, 0);
    for i in 0..theirs.len() {
        for mask in 1..=255u8 {
            let mut t = theirs.clone();
            t[i] ^= mask;
            match ours.compare_scanned(&t) {
                Ok(true) => panic!("byte {i} ^ {mask:#04x} still matches"),
                Ok(false) => mismatches += 1,
                Err(_) => errors += 1,
            }
        }
    }
    assert!(errors > 0 && mismatches > 0);

    // Named errors.
    assert_eq!(
        ours.compare_scanned(&[]),
        Err(SafetyNumberError::Decode(DecodeError::Empty))
    );
    let mut other_type = theirs.clone();
    other_type[0] = 0x35;
    assert_eq!(
        ours.compare_scanned(&other_type),
        Err(SafetyNumberError::Decode(DecodeError::UnsupportedVersion(
            0x35
        )))
    );
    let mut v2 = theirs.clone();
    v2[2] = 2;
    assert_eq!(
        ours.compare_scanned(&v2),
        Err(SafetyNumberError::VersionMismatch {
            ours: SCANNABLE_VERSION,
            theirs: 2
        })
    );
    let mut no_version = vec![SCANNABLE_V1];
    no_version.extend_from_slice(&theirs[3..]);
    assert_eq!(
        ours.compare_scanned(&no_version),
        Err(SafetyNumberError::VersionMismatch {
            ours: SCANNABLE_VERSION,
            theirs: 0
        })
    );
    // Fingerprints of 31 and 33 bytes.
    let short = {
        let mut s = vec![SCANNABLE_V1, 0x08, 0x01];
        len_field(&mut s, 2, &theirs[5..36]);
        len_field(&mut s, 3, &theirs[39..71]);
        s
    };
    assert_eq!(
        ours.compare_scanned(&short),
        Err(SafetyNumberError::Decode(DecodeError::InvalidField(
            "local_fingerprint"
        )))
    );
    let long = {
        let mut s = theirs[..37].to_vec();
        let mut remote = theirs[39..71].to_vec();
        remote.push(0);
        len_field(&mut s, 3, &remote);
        s
    };
    assert_eq!(
        ours.compare_scanned(&long),
        Err(SafetyNumberError::Decode(DecodeError::InvalidField(
            "remote_fingerprint"
        )))
    );
    let mut oversized = theirs.clone();
    oversized.resize(MAX_SCANNABLE_BYTES + 1, 0);
    assert_eq!(
        ours.compare_scanned(&oversized),
        Err(SafetyNumberError::Decode(DecodeError::TooLarge {
            len: MAX_SCANNABLE_BYTES + 1,
            limit: MAX_SCANNABLE_BYTES
        }))
    );
    // Arbitrary bytes after the leading byte.
    let mut r = ChaCha20Rng::seed_from_u64(66);
    for len in 0..MAX_SCANNABLE_BYTES {
        let mut junk = vec![0u8; len];
        r.fill_bytes(&mut junk);
        junk.insert(0, SCANNABLE_V1);
        assert_ne!(ours.compare_scanned(&junk), Ok(true));
    }
}

fn signed_list(
    account: &IdentityKeyPair,
    devices: &[(&IdentityKeyPair, u32)],
    version: u64,
) -> VerifiedDeviceList {
    let entries = devices
        .iter()
        .map(|(device, id)| DeviceEntry::local(account, device, *id))
        .collect();
    let bytes = DeviceList {
        account_id: b"alice@example.org".to_vec(),
        version,
        timestamp: Timestamp(1_795_000_000_000),
        entries,
    }
    .sign(account)
    .unwrap();
    VerifiedDeviceList::verify(&bytes, &account.public(), None).unwrap()
}

#[test]
fn device_list_changes_do_not_change_the_number() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let alice = IdentityKeyPair::generate(&mut rng);
    let (phone, laptop, tablet) = (
        IdentityKeyPair::generate(&mut rng),
        IdentityKeyPair::generate(&mut rng),
        IdentityKeyPair::generate(&mut rng),
    );
    let bob_account = IdentityKeyPair::generate(&mut rng);
    let bob_phone = IdentityKeyPair::generate(&mut rng);
    let bob = {
        let bytes = DeviceList {
            account_id: b"bob@example.org".to_vec(),
            version: 1,
            timestamp: Timestamp(1_795_000_000_000),
            entries: vec![DeviceEntry::local(&bob_account, &bob_phone, 1)],
        }
        .sign(&bob_account)
        .unwrap();
        VerifiedDeviceList::verify(&bytes, &bob_account.public(), None).unwrap()
    };

    let v1 = signed_list(&alice, &[(&phone, 1)], 1);
    let v2 = signed_list(&alice, &[(&phone, 1), (&laptop, 2)], 2);
    let v3 = signed_list(&alice, &[(&laptop, 2), (&tablet, 3)], 3);
    let numbers: Vec<SafetyNumber> = [&v1, &v2, &v3]
        .iter()
        .map(|list| {
            SafetyNumber::new(
                &bob.account_key(),
                bob.account_id(),
                &list.account_key(),
                list.account_id(),
            )
        })
        .collect();
    assert!(numbers.iter().all(|n| *n == numbers[0]));
    assert_eq!(SafetyNumber::from_lists(&bob, &v3), numbers[0]);
    assert_eq!(
        SafetyNumber::from_lists(&v1, &bob).displayable(),
        numbers[0].displayable()
    );
    assert_eq!(
        SafetyNumber::from_lists(&v2, &bob).compare_scanned(&numbers[2].scannable()),
        Ok(true)
    );

    // And `KnownAccounts` sees the same account throughout.
    let mut known = KnownAccounts::new();
    assert_eq!(known.observe_list(&v1), Ok(KeyChange::First));
    assert_eq!(known.observe_list(&v2), Ok(KeyChange::Unchanged));
    assert_eq!(known.observe_list(&v3), Ok(KeyChange::Unchanged));
    assert_eq!(known.observe_list(&bob), Ok(KeyChange::First));
    assert_eq!(known.len(), 2);
}

// ---------------------------------------------------------------------------------------------
// KnownAccounts

#[test]
fn known_accounts_report_first_unchanged_and_changed() {
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let (k1, k2, k3) = (key(&mut rng), key(&mut rng), key(&mut rng));
    let mut known = KnownAccounts::new();
    assert!(known.is_empty());
    assert_eq!(known.observe(b"bob", &k1), Ok(KeyChange::First));
    assert_eq!(known.observe(b"bob", &k1), Ok(KeyChange::Unchanged));
    assert_eq!(known.account_key(b"bob"), Some(k1));
    assert_eq!(
        known.observe(b"bob", &k2),
        Ok(KeyChange::Changed {
            previous: k1,
            was_verified: false
        })
    );
    // Reported once; the new key is now the recorded one.
    assert_eq!(known.observe(b"bob", &k2), Ok(KeyChange::Unchanged));
    assert_eq!(known.account_key(b"bob"), Some(k2));
    // Changing back is a change too.
    assert_eq!(
        known.observe(b"bob", &k1),
        Ok(KeyChange::Changed {
            previous: k2,
            was_verified: false
        })
    );
    // Accounts are independent, and the empty id is an id.
    assert_eq!(known.observe(b"", &k3), Ok(KeyChange::First));
    assert_eq!(known.observe(b"carol", &k1), Ok(KeyChange::First));
    assert_eq!(known.len(), 3);
    assert!(known.forget(b"carol"));
    assert!(!known.forget(b"carol"));
    assert_eq!(known.observe(b"carol", &k1), Ok(KeyChange::First));
}

#[test]
fn a_key_change_clears_the_verified_flag() {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let (k1, k2) = (key(&mut rng), key(&mut rng));
    let mut known = KnownAccounts::new();
    assert!(!known.mark_verified(b"bob", &k1), "unknown account");
    assert_eq!(known.observe(b"bob", &k1), Ok(KeyChange::First));
    assert!(!known.is_verified(b"bob", &k1));
    assert!(!known.mark_verified(b"bob", &k2), "not the recorded key");
    assert!(!known.is_verified(b"bob", &k1));
    assert!(known.mark_verified(b"bob", &k1));
    assert!(known.is_verified(b"bob", &k1));
    assert!(!known.is_verified(b"bob", &k2));
    assert!(!known.is_verified(b"bo", &k1));
    assert_eq!(known.observe(b"bob", &k1), Ok(KeyChange::Unchanged));
    assert!(known.is_verified(b"bob", &k1), "unchanged keeps the flag");

    assert_eq!(
        known.observe(b"bob", &k2),
        Ok(KeyChange::Changed {
            previous: k1,
            was_verified: true
        })
    );
    assert!(!known.is_verified(b"bob", &k2));
    assert!(!known.is_verified(b"bob", &k1));
    assert!(!known.mark_verified(b"bob", &k1), "the old key is gone");
    assert!(known.mark_verified(b"bob", &k2));
    assert!(known.clear_verified(b"bob"));
    assert!(!known.clear_verified(b"bob"));
    assert!(!known.is_verified(b"bob", &k2));
}

#[test]
fn known_accounts_limits() {
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    let k = key(&mut rng);
    let mut known = KnownAccounts::new();
    let long = vec![7u8; MAX_ACCOUNT_ID_BYTES + 1];
    assert_eq!(
        known.observe(&long, &k),
        Err(ObserveError::AccountIdTooLong {
            len: MAX_ACCOUNT_ID_BYTES + 1,
            limit: MAX_ACCOUNT_ID_BYTES
        })
    );
    assert!(known.is_empty());
    assert_eq!(
        known.observe(&long[1..], &k),
        Ok(KeyChange::First),
        "256 bytes"
    );

    for i in 1..MAX_KNOWN_ACCOUNTS {
        assert_eq!(
            known.observe(&(i as u64).to_be_bytes(), &k),
            Ok(KeyChange::First)
        );
    }
    assert_eq!(known.len(), MAX_KNOWN_ACCOUNTS);
    assert_eq!(
        known.observe(b"one more", &k),
        Err(ObserveError::TooManyAccounts {
            limit: MAX_KNOWN_ACCOUNTS
        })
    );
    // Known accounts are still observed when full.
    assert_eq!(known.observe(&long[1..], &k), Ok(KeyChange::Unchanged));
    let k2 = key(&mut rng);
    assert!(matches!(
        known.observe(&1u64.to_be_bytes(), &k2),
        Ok(KeyChange::Changed { .. })
    ));
    // A full record restores.
    let snapshot = known.snapshot();
    assert!(snapshot.len() <= MAX_KNOWN_ACCOUNTS_SNAPSHOT_BYTES);
    assert_eq!(KnownAccounts::restore(&snapshot).unwrap(), known);
}

#[test]
fn a_full_record_of_longest_ids_fits_the_snapshot_limit() {
    // Every entry at its largest: 256-byte id, key, verified flag.
    let entry = account_entry(&[0xff; MAX_ACCOUNT_ID_BYTES], &[0x11; 32], true);
    let mut framed = Vec::new();
    len_field(&mut framed, 1, &entry);
    let largest = 1 + framed.len() * MAX_KNOWN_ACCOUNTS; // leading byte + entries
    assert!(
        largest <= MAX_KNOWN_ACCOUNTS_SNAPSHOT_BYTES,
        "{largest} bytes"
    );
}

#[test]
fn snapshot_round_trip() {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let mut known = KnownAccounts::new();
    assert_eq!(
        KnownAccounts::restore(&known.snapshot()).unwrap(),
        KnownAccounts::new()
    );
    assert_eq!(known.snapshot(), vec![KNOWN_ACCOUNTS_V1]);
    let keys: Vec<IdentityKey> = (0..5).map(|_| key(&mut rng)).collect();
    for (i, k) in keys.iter().enumerate() {
        let _ = known.observe(format!("account-{i}").as_bytes(), k).unwrap();
    }
    let _ = known.observe(b"", &keys[0]).unwrap();
    let _ = known.observe(&[0xab; 256], &keys[1]).unwrap();
    assert!(known.mark_verified(b"account-1", &keys[1]));
    assert!(known.mark_verified(b"", &keys[0]));
    let snapshot = known.snapshot();
    let restored = KnownAccounts::restore(&snapshot).unwrap();
    assert_eq!(restored, known);
    assert_eq!(restored.snapshot(), snapshot);
    assert!(restored.is_verified(b"account-1", &keys[1]));
    assert!(restored.is_verified(b"", &keys[0]));
    assert!(!restored.is_verified(b"account-2", &keys[2]));
    assert_eq!(restored.account_key(&[0xab; 256]), Some(keys[1]));
    // Entries are written in ascending id order, whatever the order of observation.
    let mut reversed = KnownAccounts::new();
    for (i, k) in keys.iter().enumerate().rev() {
        let _ = reversed
            .observe(format!("account-{i}").as_bytes(), k)
            .unwrap();
    }
    let mut forward = KnownAccounts::new();
    for (i, k) in keys.iter().enumerate() {
        let _ = forward
            .observe(format!("account-{i}").as_bytes(), k)
            .unwrap();
    }
    assert_eq!(reversed.snapshot(), forward.snapshot());
    // The encoding is the documented one.
    assert_eq!(
        forward.snapshot(),
        snapshot_of(
            &keys
                .iter()
                .enumerate()
                .map(|(i, k)| account_entry(
                    format!("account-{i}").as_bytes(),
                    &k.to_bytes(),
                    false
                ))
                .collect::<Vec<_>>()
        )
    );
    // The record holds public data only; its Debug output shows just the count.
    assert_eq!(
        format!("{known:?}"),
        "KnownAccounts { accounts: 7, .. }".to_owned()
    );
}

#[test]
fn restore_rejects_corruptions_without_panicking() {
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    let (k1, k2) = (key(&mut rng), key(&mut rng));
    let good = [
        account_entry(b"alice", &k1.to_bytes(), true),
        account_entry(b"bob", &k2.to_bytes(), false),
    ];
    let snapshot = snapshot_of(&good);
    let known = KnownAccounts::restore(&snapshot).unwrap();
    assert!(known.is_verified(b"alice", &k1));

    // Every truncation and every single-bit flip: an error, or a record that round-trips.
    for len in 0..snapshot.len() {
        if let Ok(r) = KnownAccounts::restore(&snapshot[..len]) {
            assert_eq!(KnownAccounts::restore(&r.snapshot()).unwrap(), r);
        }
    }
    for bit in 0..snapshot.len() * 8 {
        let mut t = snapshot.clone();
        t[bit / 8] ^= 1 << (bit % 8);
        if let Ok(r) = KnownAccounts::restore(&t) {
            assert!(r.len() <= 2);
            assert_eq!(KnownAccounts::restore(&r.snapshot()).unwrap(), r);
        }
    }

    let invariant = |entries: &[Vec<u8>]| KnownAccounts::restore(&snapshot_of(entries));
    assert_eq!(
        invariant(&[good[0].clone(), good[1].clone(), good[0].clone()]),
        Err(RestoreError::Invariant("duplicate account id"))
    );
    assert_eq!(
        invariant(&[account_entry(&[1; 257], &k1.to_bytes(), false)]),
        Err(RestoreError::Invariant("account id length"))
    );
    assert!(invariant(&[account_entry(&[1; 256], &k1.to_bytes(), false)]).is_ok());
    let mut small_order = [0u8; 32];
    small_order[0] = 1; // the Ed25519 identity point
    for bad_key in [&small_order[..], &k1.to_bytes()[..31], &[][..]] {
        assert_eq!(
            invariant(&[account_entry(b"x", bad_key, false)]),
            Err(RestoreError::Invariant("account_key"))
        );
    }
    assert_eq!(
        KnownAccounts::restore(&[]),
        Err(RestoreError::Decode(DecodeError::Empty))
    );
    let mut other = snapshot.clone();
    other[0] = 0x34;
    assert_eq!(
        KnownAccounts::restore(&other),
        Err(RestoreError::Decode(DecodeError::UnsupportedVersion(0x34)))
    );
    // The count is checked on the wire before decoding: 100 001 empty entries (2 bytes each).
    let too_many = snapshot_of(&vec![Vec::new(); MAX_KNOWN_ACCOUNTS + 1]);
    assert_eq!(
        KnownAccounts::restore(&too_many),
        Err(RestoreError::Decode(DecodeError::TooMany {
            field: "accounts",
            count: MAX_KNOWN_ACCOUNTS + 1,
            limit: MAX_KNOWN_ACCOUNTS
        }))
    );
    let mut oversized = vec![KNOWN_ACCOUNTS_V1];
    oversized.resize(MAX_KNOWN_ACCOUNTS_SNAPSHOT_BYTES + 1, 0);
    assert_eq!(
        KnownAccounts::restore(&oversized),
        Err(RestoreError::Decode(DecodeError::TooLarge {
            len: MAX_KNOWN_ACCOUNTS_SNAPSHOT_BYTES + 1,
            limit: MAX_KNOWN_ACCOUNTS_SNAPSHOT_BYTES
        }))
    );
    // Random bodies.
    let mut r = ChaCha20Rng::seed_from_u64(1212);
    for len in 0..512 {
        let mut junk = vec![0u8; len];
        r.fill_bytes(&mut junk);
        junk.insert(0, KNOWN_ACCOUNTS_V1);
        let _ = KnownAccounts::restore(&junk);
    }
}

// ---------------------------------------------------------------------------------------------
// Known-answer vectors: profile `confidant-safety-number/v1`, type `safety_number`.

fn vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("test-vectors/safety_number.json")
}

fn h(v: &Value, field: &str) -> Vec<u8> {
    hex::decode(
        v.get(field)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("missing hex field {field}")),
    )
    .unwrap_or_else(|e| panic!("{field}: {e}"))
}

fn s<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get(field)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("missing string field {field}"))
}

fn check_vector(v: &Value) {
    let name = s(v, "name");
    let seed = |f| -> [u8; 32] { h(v, f).try_into().unwrap() };
    let local = IdentityKeyPair::from_seed(&seed("local_account_seed")).public();
    let remote = IdentityKeyPair::from_seed(&seed("remote_account_seed")).public();
    assert_eq!(
        local.to_bytes().to_vec(),
        h(v, "local_account_key"),
        "{name}"
    );
    assert_eq!(
        remote.to_bytes().to_vec(),
        h(v, "remote_account_key"),
        "{name}"
    );
    let (local_id, remote_id) = (h(v, "local_account_id"), h(v, "remote_account_id"));

    // Independently, straight from SHA-512.
    let lf = reference_fingerprint(&local.to_bytes(), &local_id);
    let rf = reference_fingerprint(&remote.to_bytes(), &remote_id);
    assert_eq!(lf[..32].to_vec(), h(v, "local_fingerprint"), "{name}");
    assert_eq!(rf[..32].to_vec(), h(v, "remote_fingerprint"), "{name}");
    let (ld, rd) = (reference_digits(&lf), reference_digits(&rf));
    assert_eq!(ld, s(v, "local_digits"), "{name}");
    assert_eq!(rd, s(v, "remote_digits"), "{name}");
    let displayable = if ld <= rd { ld + &rd } else { rd + &ld };
    assert_eq!(displayable, s(v, "displayable"), "{name}");
    assert_eq!(
        reference_scannable(&lf[..32], &rf[..32]),
        h(v, "local_scannable"),
        "{name}"
    );
    assert_eq!(
        reference_scannable(&rf[..32], &lf[..32]),
        h(v, "remote_scannable"),
        "{name}"
    );

    // Through the API, from each side.
    let at_local = SafetyNumber::new(&local, &local_id, &remote, &remote_id);
    let at_remote = SafetyNumber::new(&remote, &remote_id, &local, &local_id);
    for n in [&at_local, &at_remote] {
        assert_eq!(n.displayable(), s(v, "displayable"), "{name}");
        assert_eq!(
            n.displayable_grouped(),
            s(v, "displayable_grouped"),
            "{name}"
        );
    }
    assert_eq!(at_local.scannable(), h(v, "local_scannable"), "{name}");
    assert_eq!(at_remote.scannable(), h(v, "remote_scannable"), "{name}");
    assert_eq!(
        at_local.compare_scanned(&h(v, "remote_scannable")),
        Ok(true),
        "{name}"
    );
    assert_eq!(
        at_remote.compare_scanned(&h(v, "local_scannable")),
        Ok(true),
        "{name}"
    );
}

#[test]
fn safety_number_vectors() {
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(vectors_path()).unwrap()).unwrap();
    assert_eq!(doc["profile"], SAFETY_NUMBER_PROFILE_ID);
    assert_eq!(doc["type"], "safety_number");
    let vectors = doc["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 5, "only {} vectors", vectors.len());
    for v in vectors {
        check_vector(v);
    }
}

/// As `seeded()` in tests/vectors.rs: a ChaCha20 stream seeded by a vector's name.
fn seeded(label: &str) -> ChaCha20Rng {
    let mut seed = [0u8; 32];
    for (i, b) in label.as_bytes().iter().enumerate() {
        seed[i % 32] ^= b.wrapping_add(u8::try_from(i % 251).unwrap());
    }
    ChaCha20Rng::from_seed(seed)
}

enum Ids {
    Fixed(&'static [u8], &'static [u8]),
    /// Two ids of this many bytes, drawn from the vector's stream after the seeds.
    Random(usize),
}

fn gen_vector(name: &str, ids: Ids, same_key: bool) -> Value {
    let mut rng = seeded(name);
    let mut local_seed = [0u8; 32];
    rng.fill_bytes(&mut local_seed);
    let mut remote_seed = [0u8; 32];
    rng.fill_bytes(&mut remote_seed);
    if same_key {
        remote_seed = local_seed;
    }
    let (local_id, remote_id) = match ids {
        Ids::Fixed(l, r) => (l.to_vec(), r.to_vec()),
        Ids::Random(len) => {
            let (mut l, mut r) = (vec![0u8; len], vec![0u8; len]);
            rng.fill_bytes(&mut l);
            rng.fill_bytes(&mut r);
            (l, r)
        }
    };
    let local = IdentityKeyPair::from_seed(&local_seed).public();
    let remote = IdentityKeyPair::from_seed(&remote_seed).public();
    let lf = reference_fingerprint(&local.to_bytes(), &local_id);
    let rf = reference_fingerprint(&remote.to_bytes(), &remote_id);
    let at_local = SafetyNumber::new(&local, &local_id, &remote, &remote_id);
    let at_remote = SafetyNumber::new(&remote, &remote_id, &local, &local_id);
    json!({
        "name": name,
        "local_account_seed": hex::encode(local_seed),
        "local_account_key": hex::encode(local.to_bytes()),
        "local_account_id": hex::encode(&local_id),
        "remote_account_seed": hex::encode(remote_seed),
        "remote_account_key": hex::encode(remote.to_bytes()),
        "remote_account_id": hex::encode(&remote_id),
        "local_fingerprint": hex::encode(&lf[..32]),
        "remote_fingerprint": hex::encode(&rf[..32]),
        "local_digits": reference_digits(&lf),
        "remote_digits": reference_digits(&rf),
        "displayable": at_local.displayable(),
        "displayable_grouped": at_local.displayable_grouped(),
        "local_scannable": hex::encode(at_local.scannable()),
        "remote_scannable": hex::encode(at_remote.scannable()),
    })
}

#[test]
#[ignore = "rewrites the frozen vectors; run on purpose and review the diff"]
fn regenerate_safety_number_vectors() {
    let vectors = vec![
        gen_vector(
            "safety-number-basic",
            Ids::Fixed(b"alice@example.org", b"bob@example.org"),
            false,
        ),
        gen_vector("safety-number-empty-ids", Ids::Fixed(b"", b""), false),
        gen_vector(
            "safety-number-max-ids",
            Ids::Random(MAX_ACCOUNT_ID_BYTES),
            false,
        ),
        gen_vector(
            "safety-number-same-id",
            Ids::Fixed(b"shared@example.org", b"shared@example.org"),
            false,
        ),
        gen_vector(
            "safety-number-same-key",
            Ids::Fixed(b"alice@example.org", b"alice@example.net"),
            true,
        ),
    ];
    let doc = json!({
        "profile": SAFETY_NUMBER_PROFILE_ID,
        "type": "safety_number",
        "vectors": vectors,
    });
    std::fs::write(
        vectors_path(),
        serde_json::to_string_pretty(&doc).unwrap() + "\n",
    )
    .unwrap();
    safety_number_vectors();
}
