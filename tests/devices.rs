//! Signed device lists and link requests (PROTOCOL.md §14): linking, verification by clients and
//! key servers, rollback, forgery and every single-bit flip.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use confidant::device::{
    DeviceEntry, DeviceList, DeviceListChanges, LinkRequest, VerifiedDeviceList,
};
use confidant::limits::MAX_DEVICES_PER_ACCOUNT;
use confidant::{DecodeError, DeviceListError, IdentityKeyPair, Timestamp};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

const T: Timestamp = Timestamp(1_795_000_000_000);

struct Account {
    key: IdentityKeyPair,
    primary: IdentityKeyPair,
}

fn account(rng: &mut ChaCha20Rng) -> Account {
    Account {
        key: IdentityKeyPair::generate(rng),
        primary: IdentityKeyPair::generate(rng),
    }
}

fn list(version: u64, entries: Vec<DeviceEntry>) -> DeviceList {
    DeviceList {
        account_id: b"alice@example.org".to_vec(),
        version,
        timestamp: T,
        entries,
    }
}

#[test]
fn linking_a_device_and_publishing_the_new_list() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let a = account(&mut rng);
    let primary = DeviceEntry::local(&a.key, &a.primary, 1);
    let v1 = list(1, vec![primary.clone()]).sign(&a.key).expect("sign");
    let first = VerifiedDeviceList::verify(&v1, &a.key.public(), None).expect("verify");
    assert_eq!(first.version(), 1);
    assert_eq!(first.device_key(1), Some(a.primary.public()));

    // The laptop shows a link request (QR-sized); the primary checks and signs it.
    let laptop = IdentityKeyPair::generate(&mut rng);
    let request = LinkRequest::new(&laptop, &a.key.public()).to_bytes();
    assert!(
        request.len() < 160,
        "link request is {} bytes",
        request.len()
    );
    let request = LinkRequest::from_bytes(&request).expect("parse");
    assert_eq!(request.device_key(), laptop.public());
    let entry = DeviceEntry::link(&a.key, &request, 2).expect("link");
    let v2 = list(2, vec![primary.clone(), entry])
        .sign(&a.key)
        .expect("sign");
    let second = VerifiedDeviceList::verify(&v2, &a.key.public(), Some(&first)).expect("verify");
    assert_eq!(
        second.changes_since(&first),
        DeviceListChanges {
            added: vec![(2, laptop.public())],
            removed: vec![]
        }
    );

    // Removing the laptop publishes version 3.
    let v3 = list(3, vec![primary]).sign(&a.key).expect("sign");
    let third = VerifiedDeviceList::verify(&v3, &a.key.public(), Some(&second)).expect("verify");
    assert_eq!(
        third.changes_since(&second),
        DeviceListChanges {
            added: vec![],
            removed: vec![2]
        }
    );
    // A rolled-back list (the server replaying v2) is refused.
    assert_eq!(
        VerifiedDeviceList::verify(&v2, &a.key.public(), Some(&third)),
        Err(DeviceListError::Rollback {
            version: 2,
            last: 3
        })
    );
    assert_eq!(
        VerifiedDeviceList::verify(&v3, &a.key.public(), Some(&third)),
        Err(DeviceListError::Rollback {
            version: 3,
            last: 3
        })
    );
}

#[test]
fn link_requests_are_bound_to_the_account_and_signed_by_the_device() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let a = account(&mut rng);
    let b = account(&mut rng);
    let phone = IdentityKeyPair::generate(&mut rng);
    // A request made for account B cannot be linked into A.
    let for_b = LinkRequest::new(&phone, &b.key.public());
    assert_eq!(
        DeviceEntry::link(&a.key, &for_b, 2),
        Err(DeviceListError::AccountMismatch)
    );
    // A request whose device signature is not the device's (a server substituting its own key).
    let mut bytes = LinkRequest::new(&phone, &a.key.public()).to_bytes();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let forged = LinkRequest::from_bytes(&bytes).expect("parse");
    assert_eq!(
        DeviceEntry::link(&a.key, &forged, 2),
        Err(DeviceListError::Unauthenticated)
    );
    assert!(matches!(
        LinkRequest::from_bytes(&bytes[..10]),
        Err(DecodeError::Protobuf | DecodeError::Key { .. })
    ));
}

#[test]
fn forged_lists_are_rejected() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let a = account(&mut rng);
    let server = account(&mut rng);
    let primary = DeviceEntry::local(&a.key, &a.primary, 1);
    // Signed by another key (the server's) but claiming nothing of A: wrong account.
    let by_server = list(1, vec![DeviceEntry::local(&server.key, &server.primary, 1)])
        .sign(&server.key)
        .expect("sign");
    assert_eq!(
        VerifiedDeviceList::verify(&by_server, &a.key.public(), None),
        Err(DeviceListError::AccountMismatch)
    );
    // A's own list plus a device the server linked with its own account key: that entry's
    // account signature is not A's. DeviceList::sign refuses to produce it...
    let slipped = DeviceEntry::local(&server.key, &server.primary, 9);
    assert_eq!(
        list(2, vec![primary.clone(), slipped]).sign(&a.key),
        Err(DeviceListError::Unauthenticated)
    );
    // ...and a list whose body is A's but whose signature is the server's is refused too.
    let good = list(2, vec![primary.clone()]).sign(&a.key).expect("sign");
    let mut resigned = good.clone();
    let n = resigned.len();
    resigned[n - 64..].copy_from_slice(&[7u8; 64]);
    assert_eq!(
        VerifiedDeviceList::verify(&resigned, &a.key.public(), None),
        Err(DeviceListError::Unauthenticated)
    );
    // Duplicates and limits.
    let second = DeviceEntry::local(&a.key, &IdentityKeyPair::generate(&mut rng), 1);
    assert_eq!(
        list(2, vec![primary.clone(), second]).sign(&a.key),
        Err(DeviceListError::DuplicateDevice(1))
    );
    let same_key = DeviceEntry::local(&a.key, &a.primary, 2);
    assert_eq!(
        list(2, vec![primary, same_key]).sign(&a.key),
        Err(DeviceListError::DuplicateDeviceKey(2))
    );
    let many: Vec<DeviceEntry> = (0..=MAX_DEVICES_PER_ACCOUNT as u32)
        .map(|i| DeviceEntry::local(&a.key, &IdentityKeyPair::from_seed(&[i as u8 + 1; 32]), i))
        .collect();
    assert_eq!(
        list(2, many).sign(&a.key),
        Err(DeviceListError::TooManyDevices {
            count: MAX_DEVICES_PER_ACCOUNT + 1,
            limit: MAX_DEVICES_PER_ACCOUNT
        })
    );
}

#[test]
fn the_account_id_cannot_change_between_versions() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let a = account(&mut rng);
    let primary = DeviceEntry::local(&a.key, &a.primary, 1);
    let v1 = VerifiedDeviceList::verify(
        &list(1, vec![primary.clone()]).sign(&a.key).unwrap(),
        &a.key.public(),
        None,
    )
    .unwrap();
    let mut other = list(2, vec![primary]);
    other.account_id = b"mallory@example.org".to_vec();
    let bytes = other.sign(&a.key).unwrap();
    assert_eq!(
        VerifiedDeviceList::verify(&bytes, &a.key.public(), Some(&v1)),
        Err(DeviceListError::AccountMismatch)
    );
}

/// Every single-bit flip of a signed list is rejected (a flip that decoded to the same list would
/// be reported separately, and none does).
#[test]
fn every_bit_flip_of_a_signed_list_is_rejected() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let a = account(&mut rng);
    let laptop = IdentityKeyPair::generate(&mut rng);
    let entries = vec![
        DeviceEntry::local(&a.key, &a.primary, 1),
        DeviceEntry::local(&a.key, &laptop, 2),
    ];
    let bytes = list(7, entries).sign(&a.key).unwrap();
    let original = VerifiedDeviceList::verify(&bytes, &a.key.public(), None).unwrap();
    let mut rejected = 0;
    for bit in 0..bytes.len() * 8 {
        let mut v = bytes.clone();
        v[bit / 8] ^= 1 << (bit % 8);
        match VerifiedDeviceList::verify(&v, &a.key.public(), None) {
            Ok(list) => assert_eq!(list, original, "bit {bit} changed the verified list"),
            Err(_) => rejected += 1,
        }
    }
    assert_eq!(rejected, bytes.len() * 8, "some flips were tolerated");
}
