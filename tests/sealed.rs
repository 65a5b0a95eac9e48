//! Sealed sender end to end (PROTOCOL.md §19): certificates, envelopes, multi-recipient uploads
//! split by the server, opening and dispatch through the session book and group sessions.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use confidant::book::{Address, SessionBook};
use confidant::certificate::{CertificateValidator, ServerCertificate};
use confidant::content::{self, Content};
use confidant::device::{DeviceEntry, DeviceList, VerifiedDeviceList};
use confidant::envelope::{Envelope, EnvelopeContent, EnvelopeKind};
use confidant::group::{GroupId, GroupMessage, GroupSession, RotationPolicy};
use confidant::sealed::{self, SealedRecipient};
use confidant::{
    CertificateError, IdentityKeyPair, Message, PreKeyBundle, PreKeys, SealedError, Session,
    Timestamp, server,
};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

const T: Timestamp = Timestamp(1_795_000_000_000);
const DAY: u64 = 86_400_000;

struct Dev {
    address: Address,
    identity: IdentityKeyPair,
    prekeys: PreKeys,
    book: SessionBook,
}

struct Account {
    key: IdentityKeyPair,
    devices: Vec<Dev>,
}

impl Account {
    fn new(rng: &mut ChaCha20Rng, devices: u32) -> Self {
        let key = IdentityKeyPair::generate(rng);
        let devices = (1..=devices)
            .map(|id| {
                let identity = IdentityKeyPair::generate(rng);
                Dev {
                    address: Address {
                        account: key.public(),
                        device: id,
                    },
                    prekeys: PreKeys::new(rng, &identity, T),
                    identity,
                    book: SessionBook::new(),
                }
            })
            .collect();
        Self { key, devices }
    }

    fn list(&self) -> VerifiedDeviceList {
        let entries = self
            .devices
            .iter()
            .map(|d| DeviceEntry::local(&self.key, &d.identity, d.address.device))
            .collect();
        let bytes = DeviceList {
            account_id: b"acct".to_vec(),
            version: 1,
            timestamp: T,
            entries,
        }
        .sign(&self.key)
        .unwrap();
        VerifiedDeviceList::verify(&bytes, &self.key.public(), None).unwrap()
    }
}

struct World {
    rng: ChaCha20Rng,
    alice: Account,
    bob: Account,
    validator: CertificateValidator,
    alice_cert: Vec<u8>,
}

/// Alice (1 device) and Bob (2 devices), all lists applied everywhere, sessions from Alice to
/// each of Bob's devices established, and a sender certificate for Alice's device.
fn world(seed: u64) -> World {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut alice = Account::new(&mut rng, 1);
    let mut bob = Account::new(&mut rng, 2);
    let (la, lb) = (alice.list(), bob.list());
    for d in alice.devices.iter_mut().chain(bob.devices.iter_mut()) {
        d.book.apply_device_list(&la).unwrap();
        d.book.apply_device_list(&lb).unwrap();
    }
    let a = &mut alice.devices[0];
    for to in &mut bob.devices {
        let bundle = PreKeyBundle::new(to.identity.public(), to.prekeys.signed_prekey(), None)
            .with_kem_prekey(to.prekeys.last_resort_kem_prekey())
            .verify()
            .unwrap();
        let session = Session::initiate(&mut rng, &a.identity, bundle).unwrap();
        a.book.insert(to.address, session).unwrap();
        let first = a
            .book
            .active_mut(&to.address)
            .unwrap()
            .encrypt(b"setup")
            .unwrap();
        to.book
            .receive(
                &mut rng,
                &to.identity,
                &mut to.prekeys,
                &a.address,
                &Message::from_bytes(&first).unwrap(),
            )
            .unwrap();
        let reply = to
            .book
            .active_mut(&a.address)
            .unwrap()
            .encrypt(b"ack")
            .unwrap();
        a.book
            .receive(
                &mut rng,
                &a.identity,
                &mut a.prekeys,
                &to.address,
                &Message::from_bytes(&reply).unwrap(),
            )
            .unwrap();
    }
    let root = IdentityKeyPair::generate(&mut rng);
    let server_key = IdentityKeyPair::generate(&mut rng);
    let server_cert = ServerCertificate::issue(&root, 7, &server_key.public());
    let alice_cert =
        server::issue_sender_certificate(&server_key, &server_cert, &la, 1, T.plus_ms(DAY))
            .unwrap();
    World {
        rng,
        alice,
        bob,
        validator: CertificateValidator::new(root.public()),
        alice_cert,
    }
}

#[test]
fn a_sealed_fan_out_reaches_every_device_and_hides_the_sender() {
    let mut w = world(1);
    let a = &mut w.alice.devices[0];
    let payload = content::application(b"sealed hello");
    let sealed = a
        .book
        .fan_out_sealed(
            &mut w.rng,
            &a.identity,
            &w.alice_cert,
            &[w.bob.key.public()],
            &a.address,
            &payload,
        )
        .unwrap();
    assert!(sealed.needs_bundle.is_empty());
    let envelopes = server::split_upload(&sealed.upload).unwrap();
    // Bob's two devices only: a one-to-one send to another account carries no decoy.
    assert_eq!(envelopes.len(), 2);
    for envelope in envelopes {
        // What the server stores and the recipient fetches.
        let wire = envelope.to_bytes();
        assert_eq!(
            server::validate_sealed_envelope(&wire).unwrap(),
            envelope.recipient
        );
        let got = Envelope::from_bytes(&wire).unwrap();
        assert_eq!(got, envelope);
        assert_eq!(got.kind(), EnvelopeKind::Sealed);
        assert_eq!(got.sender(), None);
        let EnvelopeContent::Sealed(s) = &got.content else {
            panic!()
        };
        // The sender's account key appears nowhere in the bytes the server holds.
        let alice_key = w.alice.key.public().to_bytes();
        assert!(!wire.windows(32).any(|win| win == alice_key));
        let dev = w
            .bob
            .devices
            .iter_mut()
            .find(|d| d.address == got.recipient)
            .unwrap();
        let unsealed = dev
            .book
            .open_sealed(&dev.identity, &w.validator, T, s)
            .unwrap();
        assert_eq!(unsealed.sender(), a.address);
        let EnvelopeContent::FanOut {
            sender,
            entry,
            body,
        } = &unsealed.content
        else {
            panic!()
        };
        let received = dev
            .book
            .receive_fan_out(
                &mut w.rng,
                &dev.identity,
                &mut dev.prekeys,
                sender,
                &Message::from_bytes(entry).unwrap(),
                body,
            )
            .unwrap();
        assert!(matches!(
            content::parse(&received.plaintext).unwrap(),
            Content::Application(b"sealed hello")
        ));
        // Expired, wrong root, revoked: refused.
        assert!(matches!(
            dev.book
                .open_sealed(&dev.identity, &w.validator, T.plus_ms(2 * DAY), s),
            Err(SealedError::Certificate(CertificateError::Expired { .. }))
        ));
        let mut revoked = w.validator.clone();
        revoked.revoke(7);
        assert!(matches!(
            dev.book.open_sealed(&dev.identity, &revoked, T, s),
            Err(SealedError::Certificate(CertificateError::Revoked {
                key_id: 7
            }))
        ));
        let other_root = CertificateValidator::new(IdentityKeyPair::generate(&mut w.rng).public());
        assert!(matches!(
            dev.book.open_sealed(&dev.identity, &other_root, T, s),
            Err(SealedError::Certificate(CertificateError::Unauthenticated))
        ));
        // Not for this device: unauthenticated.
        let stranger = IdentityKeyPair::generate(&mut w.rng);
        assert!(matches!(
            sealed::open(&stranger, s, &w.validator, T),
            Err(SealedError::Unauthenticated)
        ));
    }
}

#[test]
fn a_sealed_group_message_and_per_device_overhead() {
    let mut w = world(2);
    let a = &w.alice.devices[0];
    let members: Vec<Address> = std::iter::once(a.address)
        .chain(w.bob.devices.iter().map(|d| d.address))
        .collect();
    let id = GroupId::random(&mut w.rng);
    let mut group = GroupSession::new(id, a.address, &members, RotationPolicy::default()).unwrap();
    let sent = group.encrypt(&mut w.rng, T, b"group hello").unwrap();
    let (upload, unknown) = a
        .book
        .seal_to(
            &mut w.rng,
            &a.identity,
            &w.alice_cert,
            EnvelopeKind::Group,
            &sent.message,
            &members[1..],
        )
        .unwrap();
    assert!(unknown.is_empty());
    let envelopes = server::split_upload(&upload).unwrap();
    // The two other members, and a decoy sealed to Alice's sending device itself (so the
    // recipient set does not leave out exactly the sender), which opens to `FromSelf`.
    assert_eq!(envelopes.len(), 3, "two members and the sender's decoy");
    let decoy = envelopes.iter().find(|e| e.recipient == a.address).unwrap();
    let EnvelopeContent::Sealed(ds) = &decoy.content else {
        panic!()
    };
    assert_eq!(
        a.book
            .open_sealed(&a.identity, &w.validator, T, ds)
            .unwrap_err(),
        SealedError::FromSelf
    );
    let bob1 = &w.bob.devices[0];
    let mut bob_group =
        GroupSession::new(id, bob1.address, &members, RotationPolicy::default()).unwrap();
    let d = sent.distribution.unwrap();
    let dist = confidant::group::SenderKeyDistribution::from_bytes(&d.message).unwrap();
    bob_group.receive_distribution(&a.address, &dist).unwrap();
    let mine = envelopes
        .iter()
        .find(|e| e.recipient == bob1.address)
        .unwrap();
    let EnvelopeContent::Sealed(s) = &mine.content else {
        panic!()
    };
    let unsealed = bob1
        .book
        .open_sealed(&bob1.identity, &w.validator, T, s)
        .unwrap();
    let EnvelopeContent::Group { sender, message } = &unsealed.content else {
        panic!()
    };
    assert_eq!(
        &bob_group
            .decrypt(sender, &GroupMessage::from_bytes(message).unwrap())
            .unwrap()[..],
        b"group hello"
    );

    // Per-device overhead of a sealed multi-recipient send: 1000 devices over 334 accounts (3
    // each), measured against the same send with one recipient.
    let accounts: Vec<confidant::IdentityKey> = (0..334)
        .map(|_| IdentityKeyPair::generate(&mut w.rng).public())
        .collect();
    let keys: Vec<(Address, confidant::IdentityKey)> = (0..1000u32)
        .map(|i| {
            (
                Address {
                    account: accounts[(i / 3) as usize],
                    device: i % 3 + 1,
                },
                IdentityKeyPair::generate(&mut w.rng).public(),
            )
        })
        .collect();
    let recipients: Vec<SealedRecipient<'_>> = keys
        .iter()
        .map(|(address, identity_key)| SealedRecipient {
            address: *address,
            identity_key: *identity_key,
            entry: None,
        })
        .collect();
    let one = sealed::seal(
        &mut w.rng,
        &a.identity,
        &w.alice_cert,
        EnvelopeKind::Group,
        &sent.message,
        &recipients[..1],
        true,
    )
    .unwrap();
    let all = sealed::seal(
        &mut w.rng,
        &a.identity,
        &w.alice_cert,
        EnvelopeKind::Group,
        &sent.message,
        &recipients,
        true,
    )
    .unwrap();
    let per_device = (all.len() - one.len()) as f64 / 999.0;
    println!(
        "sealed group send: 1 recipient {} B, 1000 recipients {} B, {per_device:.1} B per \
         additional device",
        one.len(),
        all.len()
    );
    assert!(per_device < 70.0, "{per_device} B per device");
    assert_eq!(server::split_upload(&all).unwrap().len(), 1001);
}
