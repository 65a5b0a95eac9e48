//! Sealed sender as the server sees it (PROTOCOL.md §19): what a key/message server holds of
//! sealed sends, certificates, tampering with sealed envelopes, splitting multi-recipient
//! uploads, and replays.
//!
//! * `the_server_view_identifies_no_sender` plays the server for many sealed fan-out and group
//!   sends from three sender devices (two accounts, two server keys) to the same recipients:
//!   no 8-byte window of any sender key or certificate appears in anything it holds, and the
//!   field-length profile of every upload and envelope is the same whoever sent it.
//! * `sealed_lengths_reveal_only_the_padding_bucket` checks every length 0..=255 and the ends
//!   and a middle point of every Padmé bucket up to `MAX_PLAINTEXT` against a length formula
//!   written from the wire formats; `server_bytes_of_small_and_large_sealed_sends` prints the
//!   exact byte counts of 1- and 1000-byte sends.
//! * The certificate, tampering, splitting and replay tests pin down the exact error of every
//!   failure and check that the recipient's state is byte-identical afterwards.
//! * `sender_device_id_does_not_change_sealed_lengths` (ignored, a known bug) shows that the
//!   sender certificate's length, which varies with the sender's device id, shows through the
//!   padding of the sealed body.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};

use common::{Value, encode_proto, flip, parse_proto};
use confidant::book::{Address, ReceiveError, SessionBook};
use confidant::certificate::{
    CertificateValidator, MAX_SENDER_CERTIFICATE_BYTES, SenderCertificate, ServerCertificate,
};
use confidant::content::{self, Content};
use confidant::device::{DeviceEntry, DeviceList, VerifiedDeviceList};
use confidant::envelope::{
    Envelope, EnvelopeContent, EnvelopeKind, SEALED_HEADER_LEN, SealedEnvelope,
};
use confidant::group::{GroupId, GroupMessage, GroupSession, RotationPolicy};
use confidant::limits::{
    MAX_FANOUT_BODY_BYTES, MAX_MESSAGE_BYTES, MAX_PLAINTEXT, MAX_SEALED_BODY_BYTES,
    MAX_SEALED_ENTRY_BYTES, MAX_SEALED_UPLOAD_BYTES, MAX_UPLOAD_RECIPIENTS,
};
use confidant::padding::padded_len;
use confidant::sealed::{self, SealedRecipient};
use confidant::{
    CertificateError, DecodeError, DecryptError, EncryptError, GroupError, IdentityKeyPair,
    Message, PreKeyBundle, PreKeys, SealedError, Session, Timestamp, hazmat, server,
};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

const T: Timestamp = Timestamp(1_795_000_000_000);
const DAY: u64 = 86_400_000;
/// Expiry of every sender certificate of the world.
const EXPIRES: Timestamp = Timestamp(T.0 + DAY);
/// Server key ids: Alice's devices are certified by the first key, Carol's by the second.
const KEY_IDS: [u32; 2] = [7, 8];
/// Leading bytes (PROTOCOL.md §19.4).
const SEALED_UPLOAD: u8 = 0x72;
const FANOUT_UPLOAD: u8 = 0x73;

// ---- World -------------------------------------------------------------------------------------

struct Dev {
    address: Address,
    identity: IdentityKeyPair,
    prekeys: PreKeys,
    book: SessionBook,
    /// The sender certificate (sender devices only).
    cert: Vec<u8>,
}

fn new_dev(rng: &mut ChaCha20Rng, account: &IdentityKeyPair, device: u32) -> Dev {
    let identity = IdentityKeyPair::generate(rng);
    Dev {
        address: Address {
            account: account.public(),
            device,
        },
        prekeys: PreKeys::new(rng, &identity, T),
        identity,
        book: SessionBook::new(),
        cert: Vec::new(),
    }
}

fn device_list(account_id: &[u8], key: &IdentityKeyPair, devices: &[Dev]) -> VerifiedDeviceList {
    let entries = devices
        .iter()
        .map(|d| DeviceEntry::local(key, &d.identity, d.address.device))
        .collect();
    let bytes = DeviceList {
        account_id: account_id.to_vec(),
        version: 1,
        timestamp: T,
        entries,
    }
    .sign(key)
    .unwrap();
    VerifiedDeviceList::verify(&bytes, &key.public(), None).unwrap()
}

/// A PQXDH session from `a` to `b`, established both ways (`b` received `a`'s initial message
/// and `a` received `b`'s reply), so `a`'s fan-out entries are plain ratchet messages.
fn connect(rng: &mut ChaCha20Rng, a: &mut Dev, b: &mut Dev) {
    let bundle = PreKeyBundle::new(b.identity.public(), b.prekeys.signed_prekey(), None)
        .with_kem_prekey(b.prekeys.last_resort_kem_prekey())
        .verify()
        .unwrap();
    let session = Session::initiate(rng, &a.identity, bundle).unwrap();
    a.book.insert(b.address, session).unwrap();
    let first = a
        .book
        .active_mut(&b.address)
        .unwrap()
        .encrypt(b"setup")
        .unwrap();
    b.book
        .receive(
            rng,
            &b.identity,
            &mut b.prekeys,
            &a.address,
            &Message::from_bytes(&first).unwrap(),
        )
        .unwrap();
    let reply = b
        .book
        .active_mut(&a.address)
        .unwrap()
        .encrypt(b"ack")
        .unwrap();
    a.book
        .receive(
            rng,
            &a.identity,
            &mut a.prekeys,
            &b.address,
            &Message::from_bytes(&reply).unwrap(),
        )
        .unwrap();
}

struct ServerKey {
    key: IdentityKeyPair,
    certificate: Vec<u8>,
}

struct World {
    rng: ChaCha20Rng,
    alice_key: IdentityKeyPair,
    carol_key: IdentityKeyPair,
    bob_key: IdentityKeyPair,
    /// The sender devices: Alice's devices 1 and 2 (server key 7), Carol's device (server
    /// key 8). Each has an established session with each of Bob's devices and a certificate.
    senders: Vec<Dev>,
    /// Bob's devices 1 and 2: the recipients.
    bob: Vec<Dev>,
    /// Alice's, Carol's and Bob's verified device lists (applied to every book).
    lists: Vec<VerifiedDeviceList>,
    root: IdentityKeyPair,
    servers: Vec<ServerKey>,
    validator: CertificateValidator,
    /// One group of all five devices: each sender's session, then each Bob device's.
    groups: Vec<GroupSession>,
    bob_groups: Vec<GroupSession>,
}

fn world(seed: u64) -> World {
    world_with(seed, 1)
}

/// The world, with Carol's device id `carol_device`.
fn world_with(seed: u64, carol_device: u32) -> World {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let alice_key = IdentityKeyPair::generate(&mut rng);
    let carol_key = IdentityKeyPair::generate(&mut rng);
    let bob_key = IdentityKeyPair::generate(&mut rng);
    let mut senders = vec![
        new_dev(&mut rng, &alice_key, 1),
        new_dev(&mut rng, &alice_key, 2),
        new_dev(&mut rng, &carol_key, carol_device),
    ];
    let mut bob = vec![
        new_dev(&mut rng, &bob_key, 1),
        new_dev(&mut rng, &bob_key, 2),
    ];
    let lists = vec![
        device_list(b"alice", &alice_key, &senders[..2]),
        device_list(b"carol", &carol_key, &senders[2..]),
        device_list(b"bob", &bob_key, &bob),
    ];
    for d in senders.iter_mut().chain(bob.iter_mut()) {
        for list in &lists {
            d.book.apply_device_list(list).unwrap();
        }
    }
    for s in &mut senders {
        for b in &mut bob {
            connect(&mut rng, s, b);
        }
    }
    let root = IdentityKeyPair::generate(&mut rng);
    let servers: Vec<ServerKey> = KEY_IDS
        .iter()
        .map(|&id| {
            let key = IdentityKeyPair::generate(&mut rng);
            let certificate = ServerCertificate::issue(&root, id, &key.public());
            ServerKey { key, certificate }
        })
        .collect();
    for (i, s) in senders.iter_mut().enumerate() {
        let (server, list) = if i < 2 {
            (&servers[0], &lists[0])
        } else {
            (&servers[1], &lists[1])
        };
        s.cert = server::issue_sender_certificate(
            &server.key,
            &server.certificate,
            list,
            s.address.device,
            EXPIRES,
        )
        .unwrap();
    }
    let members: Vec<Address> = senders
        .iter()
        .chain(bob.iter())
        .map(|d| d.address)
        .collect();
    let id = GroupId::random(&mut rng);
    let group =
        |own: Address| GroupSession::new(id, own, &members, RotationPolicy::default()).unwrap();
    let groups = senders.iter().map(|d| group(d.address)).collect();
    let bob_groups = bob.iter().map(|d| group(d.address)).collect();
    World {
        rng,
        validator: CertificateValidator::new(root.public()),
        alice_key,
        carol_key,
        bob_key,
        senders,
        bob,
        lists,
        root,
        servers,
        groups,
        bob_groups,
    }
}

fn below(rng: &mut ChaCha20Rng, n: usize) -> usize {
    assert!(n > 0);
    (rng.next_u64() % n as u64) as usize
}

fn random_bytes(rng: &mut ChaCha20Rng, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    rng.fill_bytes(&mut out);
    out
}

// ---- Sending and delivering --------------------------------------------------------------------

/// A sealed fan-out of `plaintext` from sender `i` to every device of Bob's account.
fn send_fan_out(w: &mut World, i: usize, plaintext: &[u8]) -> Vec<u8> {
    let bob = w.bob_key.public();
    let s = &mut w.senders[i];
    let sealed = s
        .book
        .fan_out_sealed(
            &mut w.rng,
            &s.identity,
            &s.cert,
            &[bob],
            &s.address,
            plaintext,
        )
        .unwrap();
    assert!(sealed.needs_bundle.is_empty());
    sealed.upload
}

/// A group message from sender `i`, sealed to Bob's devices: the uploads in sending order (the
/// sender-key distribution first, itself as a sealed fan-out to Bob, when the send starts a
/// key), and the group message.
fn send_group(w: &mut World, i: usize, plaintext: &[u8]) -> (Vec<Vec<u8>>, Vec<u8>) {
    let sent = w.groups[i].encrypt(&mut w.rng, T, plaintext).unwrap();
    let mut uploads = Vec::new();
    if let Some(d) = &sent.distribution {
        uploads.push(send_fan_out(w, i, &d.message));
    }
    // Sealed to Bob's devices without the sender's decoy (`seal_to` adds one, since a real
    // group's members are all recipients; here the "group" seen by the server is Bob alone,
    // so the same recipient set for every sender is the no-decoy one).
    let s = &w.senders[i];
    let recipients: Vec<SealedRecipient<'_>> = w
        .bob
        .iter()
        .map(|d| SealedRecipient {
            address: d.address,
            identity_key: s.book.device_key(&d.address).unwrap(),
            entry: None,
        })
        .collect();
    let upload = sealed::seal(
        &mut w.rng,
        &s.identity,
        &s.cert,
        EnvelopeKind::Group,
        &sent.message,
        &recipients,
        false,
    )
    .unwrap();
    uploads.push(upload);
    (uploads, sent.message)
}

fn sealed_part(envelope: &Envelope) -> &SealedEnvelope {
    match &envelope.content {
        EnvelopeContent::Sealed(s) => s,
        other => panic!("not a sealed envelope: {other:?}"),
    }
}

/// What a Bob device got from a sealed envelope.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Application(Address, Vec<u8>),
    Distribution(Address),
    Group(Address, Vec<u8>),
}

/// Delivers a sealed envelope to its Bob device: open, then the pairwise or group layer.
fn deliver(w: &mut World, envelope: &Envelope) -> Got {
    let j = w
        .bob
        .iter()
        .position(|d| d.address == envelope.recipient)
        .unwrap();
    let dev = &mut w.bob[j];
    let unsealed = dev
        .book
        .open_sealed(&dev.identity, &w.validator, T, sealed_part(envelope))
        .unwrap();
    match &unsealed.content {
        EnvelopeContent::FanOut {
            sender,
            entry,
            body,
        } => {
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
            match content::parse(&received.plaintext).unwrap() {
                Content::Application(p) => Got::Application(*sender, p.to_vec()),
                Content::Distribution(d) => {
                    w.bob_groups[j].receive_distribution(sender, &d).unwrap();
                    Got::Distribution(*sender)
                }
                other => panic!("unexpected content {other:?}"),
            }
        }
        EnvelopeContent::Group { sender, message } => {
            let plaintext = w.bob_groups[j]
                .decrypt(sender, &GroupMessage::from_bytes(message).unwrap())
                .unwrap();
            Got::Group(*sender, plaintext.to_vec())
        }
        other => panic!("unexpected inner content {other:?}"),
    }
}

// ---- Length arithmetic of the wire formats -----------------------------------------------------
//
// Every field number is below 16, so every protobuf key is one byte. proto3 omits a scalar or
// bytes field equal to its default (0, empty); `optional` fields are written when set.

fn varint_len(v: u64) -> usize {
    let mut n = 1;
    let mut v = v >> 7;
    while v > 0 {
        n += 1;
        v >>= 7;
    }
    n
}

/// A non-optional `uint32`/`uint64` field.
fn uint_len(v: u64) -> usize {
    if v == 0 { 0 } else { 1 + varint_len(v) }
}

/// A non-optional `bytes` (or embedded message) field of `len` bytes.
fn bytes_len(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        1 + varint_len(len as u64) + len
    }
}

/// An `optional` field, always written when set.
fn optional_bytes_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn optional_uint_len(v: u64) -> usize {
    1 + varint_len(v)
}

/// `0x81 || {key_id, key} || signature`.
fn server_certificate_len(key_id: u32) -> usize {
    // `key_id` is a fixed32 that is always present: 1 tag byte + 4.
    let _ = key_id;
    1 + 5 + bytes_len(32) + 64
}

/// `0x82 || {account_key, device_id, identity_key, expires, server_certificate} || signature`.
fn sender_certificate_len(device: u32, expires: Timestamp, key_id: u32) -> usize {
    // `device_id` (fixed32) and `expires` (fixed64) are always present: every certificate has
    // the same length, whoever it certifies.
    let (_, _) = (device, expires);
    1 + bytes_len(32) + 5 + bytes_len(32) + 9 + bytes_len(server_certificate_len(key_id)) + 64
}

/// A fan-out body: `0x52 || AES-256-GCM(pad(plaintext))`.
fn fan_out_body_len(plaintext: usize) -> usize {
    1 + padded_len(plaintext) + 16
}

/// A fan-out key entry over an established session: `0x12 || {header(40), ciphertext(48 + 16)}`.
fn ratchet_entry_len() -> usize {
    1 + bytes_len(40) + bytes_len(48 + 16)
}

/// `0x61 || {group_id(16), key_id, iteration, ciphertext} || signature`.
fn group_message_len(plaintext: usize, key_id: u32, iteration: u32) -> usize {
    1 + bytes_len(16)
        + uint_len(key_id.into())
        + uint_len(iteration.into())
        + bytes_len(padded_len(plaintext) + 16)
        + 64
}

/// The sealed body: `AES-256-GCM(pad({sender_certificate, kind, content}))`.
fn sealed_body_len(certificate: usize, kind: EnvelopeKind, inner: usize) -> usize {
    padded_len(bytes_len(certificate) + uint_len(kind.code().into()) + bytes_len(inner)) + 16
}

/// A sealed upload `0x72 || {ephemeral, body, accounts {account, devices {device, C||AT,
/// sealed entry}}}` to `devices` (address, sealed entry length).
fn sealed_upload_len(body: usize, devices: &[(Address, usize)]) -> usize {
    let mut accounts: BTreeMap<[u8; 32], usize> = BTreeMap::new();
    for (address, entry) in devices {
        *accounts.entry(address.account.to_bytes()).or_default() += bytes_len(
            uint_len(address.device.into()) + bytes_len(SEALED_HEADER_LEN) + bytes_len(*entry),
        );
    }
    1 + bytes_len(32)
        + bytes_len(body)
        + accounts
            .values()
            .map(|devices| bytes_len(bytes_len(32) + devices))
            .sum::<usize>()
}

/// A sealed envelope `0x71 || {kind 5, recipient, C||AT, body, ephemeral, sealed entry}`.
fn sealed_envelope_len(recipient_device: u32, body: usize, entry: usize) -> usize {
    1 + uint_len(EnvelopeKind::Sealed.code().into())
        + bytes_len(32)
        + uint_len(recipient_device.into())
        + bytes_len(SEALED_HEADER_LEN)
        + bytes_len(body)
        + bytes_len(32)
        + bytes_len(entry)
}

/// The unsealed fan-out upload `0x73` to devices of one account.
fn fan_out_upload_len(body: usize, devices: &[(u32, usize)], sender_device: u32) -> usize {
    let devices: usize = devices
        .iter()
        .map(|&(d, entry)| bytes_len(uint_len(d.into()) + bytes_len(entry)))
        .sum();
    1 + bytes_len(body)
        + bytes_len(bytes_len(32) + devices)
        + optional_bytes_len(32)
        + optional_uint_len(sender_device.into())
}

/// An unsealed envelope (fan-out or group): `0x71 || {kind, recipient, sender, message, body}`.
fn unsealed_envelope_len(
    kind: EnvelopeKind,
    recipient_device: u32,
    sender_device: u32,
    message: usize,
    body: usize,
) -> usize {
    1 + uint_len(kind.code().into())
        + bytes_len(32)
        + uint_len(recipient_device.into())
        + optional_bytes_len(32)
        + optional_uint_len(sender_device.into())
        + bytes_len(message)
        + bytes_len(body)
}

// ---- The server's view ---------------------------------------------------------------------------

/// The shape of a protobuf body: each field's number with its varint value, its length, or
/// (for the field numbers on `path`, level by level) its own shape.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    Varint(u64),
    Len(usize),
    Nested(Vec<(u32, Field)>),
    Fixed,
}

fn shape(body: &[u8], path: &[u32]) -> Vec<(u32, Field)> {
    parse_proto(body)
        .unwrap()
        .into_iter()
        .map(|(tag, value)| {
            let field = match value {
                Value::Varint(v) => Field::Varint(v),
                Value::Len(v) => match path.split_first() {
                    Some((&nested, rest)) if nested == tag => Field::Nested(shape(&v, rest)),
                    _ => Field::Len(v.len()),
                },
                Value::Fixed32(_) | Value::Fixed64(_) => Field::Fixed,
            };
            (tag, field)
        })
        .collect()
}

/// Everything observable about one envelope but its random bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EnvelopeView {
    recipient: Address,
    kind: u32,
    wire_len: usize,
    /// Lengths of the ephemeral key, `C || AT`, the sealed entry, the sealed body.
    fields: [usize; 4],
    wire: Vec<(u32, Field)>,
}

/// Everything observable about one upload but its random bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UploadView {
    leading: u8,
    len: usize,
    shape: Vec<(u32, Field)>,
    envelopes: Vec<EnvelopeView>,
}

/// The server's part: split the upload, keep the envelopes' wire bytes. Returns the view and
/// every byte string the server held.
fn play_server(upload: &[u8]) -> (UploadView, Vec<Envelope>, Vec<Vec<u8>>) {
    let envelopes = server::split_upload(upload).unwrap();
    let mut held = vec![upload.to_vec()];
    let mut views = Vec::new();
    for e in &envelopes {
        let wire = e.to_bytes();
        assert_eq!(
            server::validate_sealed_envelope(&wire).unwrap(),
            e.recipient
        );
        assert_eq!(&Envelope::from_bytes(&wire).unwrap(), e);
        assert_eq!(e.sender(), None);
        let s = sealed_part(e);
        views.push(EnvelopeView {
            recipient: e.recipient,
            kind: e.kind().code(),
            wire_len: wire.len(),
            fields: [
                s.ephemeral.len(),
                s.header.len(),
                s.entry.len(),
                s.body.len(),
            ],
            wire: shape(&wire[1..], &[]),
        });
        held.extend([
            s.ephemeral.to_vec(),
            s.header.to_vec(),
            s.entry.clone(),
            s.body.clone(),
            wire,
        ]);
    }
    let view = UploadView {
        leading: upload[0],
        len: upload.len(),
        shape: shape(&upload[1..], &[3, 2]),
        envelopes: views,
    };
    (view, envelopes, held)
}

/// Every 8-byte window of the byte strings that identify sender device `s`: its account key,
/// its identity key (Ed25519 and X25519 forms) and its certificate.
fn sender_windows(s: &Dev) -> HashSet<[u8; 8]> {
    let strings = [
        s.address.account.to_bytes().to_vec(),
        s.identity.public().to_bytes().to_vec(),
        s.identity.public().x25519().to_vec(),
        s.cert.clone(),
    ];
    strings
        .iter()
        .flat_map(|b| b.windows(8).map(|w| <[u8; 8]>::try_from(w).unwrap()))
        .collect()
}

fn contains_window(held: &[u8], windows: &HashSet<[u8; 8]>) -> bool {
    held.windows(8)
        .any(|w| windows.contains(&<[u8; 8]>::try_from(w).unwrap()))
}

#[test]
fn the_server_view_identifies_no_sender() {
    let mut w = world(1);
    let lengths = [
        0usize, 1, 2, 31, 100, 254, 255, 256, 300, 511, 1000, 1023, 1024, 4000, 20_000, 70_000,
    ];
    // views[kind][length index][sender]
    let mut views: [Vec<Vec<UploadView>>; 2] = [Vec::new(), Vec::new()];
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut sends = 0;
    for &len in &lengths {
        let mut by_sender = [Vec::new(), Vec::new()];
        for i in 0..w.senders.len() {
            let sender = w.senders[i].address;
            // A sealed fan-out of an application payload (`len` bytes of plaintext, at least 1).
            let payload = random_bytes(&mut w.rng, len.saturating_sub(1));
            let upload = send_fan_out(&mut w, i, &content::application(&payload));
            let (view, envelopes, bytes) = play_server(&upload);
            assert_eq!(envelopes.len(), 2);
            for e in &envelopes {
                assert_eq!(
                    deliver(&mut w, e),
                    Got::Application(sender, payload.clone())
                );
            }
            by_sender[0].push(view);
            held.extend(bytes);
            // A sealed group message of `len` bytes (after a sealed distribution the first time).
            let plaintext = random_bytes(&mut w.rng, len);
            let (uploads, _) = send_group(&mut w, i, &plaintext);
            for (k, upload) in uploads.iter().enumerate() {
                let (view, envelopes, bytes) = play_server(upload);
                held.extend(bytes);
                for e in &envelopes {
                    let got = deliver(&mut w, e);
                    if k + 1 < uploads.len() {
                        assert_eq!(got, Got::Distribution(sender));
                    } else {
                        assert_eq!(got, Got::Group(sender, plaintext.clone()));
                    }
                }
                if k + 1 == uploads.len() {
                    by_sender[1].push(view);
                }
            }
            sends += 1 + uploads.len();
        }
        for (kind, v) in by_sender.into_iter().enumerate() {
            views[kind].push(v);
        }
    }

    // (a) No window of any sender's keys or certificate is anywhere in what the server held.
    let total: usize = held.iter().map(Vec::len).sum();
    for s in &w.senders {
        let windows = sender_windows(s);
        assert!(windows.len() > 250);
        for bytes in &held {
            assert!(
                !contains_window(bytes, &windows),
                "the server holds bytes of sender {:?}",
                s.address
            );
        }
    }
    // The check itself works: it finds the recipients' account key.
    let recipient: HashSet<[u8; 8]> = w
        .bob_key
        .public()
        .to_bytes()
        .windows(8)
        .map(|x| x.try_into().unwrap())
        .collect();
    assert!(held.iter().any(|b| contains_window(b, &recipient)));

    // (b) The same send from different senders (different accounts, devices, certificates and
    // server keys) looks the same: every field length, kind and recipient.
    for (kind, per_length) in views.iter().enumerate() {
        for (v, len) in per_length.iter().zip(lengths) {
            for other in &v[1..] {
                assert_eq!(&v[0], other, "kind {kind}, plaintext length {len}");
            }
        }
    }
    println!(
        "server view: {sends} sealed uploads from 3 senders, {} byte strings, {total} bytes held, \
         no sender bytes",
        held.len()
    );
}

#[test]
fn sealed_lengths_reveal_only_the_padding_bucket() {
    let mut w = world(2);
    let cert = w.senders[0].cert.len();
    assert_eq!(
        cert,
        sender_certificate_len(w.senders[0].address.device, EXPIRES, KEY_IDS[0])
    );
    let bob: Vec<(Address, u32)> = w
        .bob
        .iter()
        .map(|d| (d.address, d.address.device))
        .collect();

    // Returns (upload length, [envelope lengths]) of a sealed fan-out and checks them and the
    // sealed body and entry lengths against the formats.
    let fan_out = |w: &mut World, len: usize| {
        let plaintext = random_bytes(&mut w.rng, len);
        let upload = send_fan_out(w, 0, &plaintext);
        let envelopes = server::split_upload(&upload).unwrap();
        let body = sealed_body_len(cert, EnvelopeKind::FanOut, fan_out_body_len(len));
        let entry = ratchet_entry_len() + 16;
        let devices: Vec<(Address, usize)> = bob.iter().map(|&(a, _)| (a, entry)).collect();
        assert_eq!(upload.len(), sealed_upload_len(body, &devices), "{len}");
        let lens: Vec<usize> = envelopes
            .iter()
            .map(|e| {
                let s = sealed_part(e);
                assert_eq!((s.body.len(), s.entry.len()), (body, entry), "{len}");
                let wire = e.to_bytes();
                assert_eq!(&Envelope::from_bytes(&wire).unwrap(), e);
                assert_eq!(
                    wire.len(),
                    sealed_envelope_len(e.recipient.device, body, entry)
                );
                wire.len()
            })
            .collect();
        (upload.len(), lens)
    };
    let group = |w: &mut World, len: usize| {
        let plaintext = random_bytes(&mut w.rng, len);
        let (uploads, message) = send_group(w, 0, &plaintext);
        let upload = uploads.last().unwrap();
        let parsed = GroupMessage::from_bytes(&message).unwrap();
        let inner = group_message_len(len, parsed.key_id(), parsed.iteration());
        assert_eq!(message.len(), inner);
        let body = sealed_body_len(cert, EnvelopeKind::Group, inner);
        let devices: Vec<(Address, usize)> = bob.iter().map(|&(a, _)| (a, 0)).collect();
        assert_eq!(upload.len(), sealed_upload_len(body, &devices), "{len}");
        let envelopes = server::split_upload(upload).unwrap();
        let lens: Vec<usize> = envelopes
            .iter()
            .map(|e| {
                let s = sealed_part(e);
                assert_eq!((s.body.len(), s.entry.len()), (body, 0), "{len}");
                let wire = e.to_bytes();
                assert_eq!(&Envelope::from_bytes(&wire).unwrap(), e);
                assert_eq!(wire.len(), sealed_envelope_len(e.recipient.device, body, 0));
                wire.len()
            })
            .collect();
        (upload.len(), lens)
    };

    // Every plaintext of 0 to 255 bytes gives the same lengths (the group's iteration, hence
    // its message, grows a byte at 1 and at 128 on the way: the padding still hides it).
    let small_fan_out = fan_out(&mut w, 0);
    let small_group = group(&mut w, 0);
    for len in 0..=255 {
        assert_eq!(
            fan_out(&mut w, len),
            small_fan_out,
            "fan-out of {len} bytes"
        );
        assert_eq!(
            group(&mut w, len),
            small_group,
            "group message of {len} bytes"
        );
    }

    // Above: the lowest, a middle and the highest plaintext length of every Padmé bucket up to
    // MAX_PLAINTEXT give the same lengths. A bucket never looks shorter than a lower one; the
    // sealed content's own padding sometimes merges neighbouring buckets (the server then
    // learns less).
    let mut lo = 256;
    let mut buckets = 0;
    let mut previous = (small_fan_out.0, small_group.0);
    let mut distinct = (BTreeSet::from([previous.0]), BTreeSet::from([previous.1]));
    while lo <= MAX_PLAINTEXT {
        let hi = (padded_len(lo) - 1).min(MAX_PLAINTEXT);
        assert_eq!(padded_len(hi), padded_len(lo));
        let mid = lo + below(&mut w.rng, hi - lo + 1);
        let f = fan_out(&mut w, lo);
        let g = group(&mut w, lo);
        for len in [mid, hi] {
            assert_eq!(fan_out(&mut w, len), f, "fan-out of {len} bytes");
            assert_eq!(group(&mut w, len), g, "group message of {len} bytes");
        }
        assert!(f.0 >= previous.0 && g.0 >= previous.1, "{lo}");
        previous = (f.0, g.0);
        distinct.0.insert(f.0);
        distinct.1.insert(g.0);
        buckets += 1;
        lo = hi + 1;
    }
    println!(
        "{} padding buckets from 0 to {MAX_PLAINTEXT} bytes: {} distinct sealed fan-out upload \
         lengths, {} distinct sealed group upload lengths",
        buckets + 1,
        distinct.0.len(),
        distinct.1.len()
    );
    assert_eq!(
        buckets, 193,
        "194 padded lengths in all, the first being 256"
    );
}

#[test]
fn server_bytes_of_small_and_large_sealed_sends() {
    let mut w = world(3);
    // One warm-up group send (iteration 0, which proto3 omits) and its distribution, so the
    // measured group messages are at iterations 1 and 2 like almost all group messages.
    let (uploads, _) = send_group(&mut w, 0, b"warm-up");
    for upload in &uploads {
        for e in server::split_upload(upload).unwrap() {
            deliver(&mut w, &e);
        }
    }
    let sender = w.senders[0].address;
    let bob1 = w.bob[0].address;
    let cert = sender_certificate_len(sender.device, EXPIRES, KEY_IDS[0]);
    assert_eq!(w.senders[0].cert.len(), cert);
    println!(
        "server-visible bytes, sender certificate {cert} B, one recipient device \
         (unsealed equivalent in brackets):"
    );
    println!("  kind      plaintext  upload          envelope        sealed body  sealed entry");
    for len in [1usize, 1000] {
        // An application payload framed to `len` bytes of plaintext.
        let payload = random_bytes(&mut w.rng, len - 1);
        let plaintext = content::application(&payload);

        // Sealed fan-out to Bob's device 1 only.
        let s = &mut w.senders[0];
        let fan = s.book.fan_out_to(&mut w.rng, &[bob1], &plaintext).unwrap();
        let recipients = [SealedRecipient {
            address: bob1,
            identity_key: s.book.device_key(&bob1).unwrap(),
            entry: Some(&fan.entries[0].1),
        }];
        let upload = sealed::seal(
            &mut w.rng,
            &s.identity,
            &s.cert,
            EnvelopeKind::FanOut,
            &fan.body,
            &recipients,
            false,
        )
        .unwrap();
        let unsealed_upload = fan.to_upload(&sender);
        let envelopes = server::split_upload(&upload).unwrap();
        let envelope = &envelopes[0];
        let wire = envelope.to_bytes();
        let sealed_env = sealed_part(envelope);
        let unsealed_wire = server::split_upload(&unsealed_upload).unwrap()[0].to_bytes();

        let inner_body = fan_out_body_len(len);
        let entry = ratchet_entry_len();
        assert_eq!(
            (fan.body.len(), fan.entries[0].1.len()),
            (inner_body, entry)
        );
        let body = sealed_body_len(cert, EnvelopeKind::FanOut, inner_body);
        assert_eq!(sealed_env.body.len(), body);
        assert_eq!(sealed_env.entry.len(), entry + 16);
        assert_eq!(upload.len(), sealed_upload_len(body, &[(bob1, entry + 16)]));
        assert_eq!(wire.len(), sealed_envelope_len(1, body, entry + 16));
        assert_eq!(
            unsealed_upload.len(),
            fan_out_upload_len(inner_body, &[(1, entry)], sender.device)
        );
        assert_eq!(
            unsealed_wire.len(),
            unsealed_envelope_len(EnvelopeKind::FanOut, 1, sender.device, entry, inner_body)
        );
        println!(
            "  fan-out   {len:>9}  {:>5} [{:>5}]   {:>5} [{:>5}]   {:>11}  {:>12}",
            upload.len(),
            unsealed_upload.len(),
            wire.len(),
            unsealed_wire.len(),
            body,
            entry + 16
        );
        assert_eq!(deliver(&mut w, envelope), Got::Application(sender, payload));

        // Sealed group message to Bob's device 1 only.
        let sent = w.groups[0].encrypt(&mut w.rng, T, &plaintext).unwrap();
        assert!(sent.distribution.is_none());
        let s = &w.senders[0];
        let (upload, _) = s
            .book
            .seal_to(
                &mut w.rng,
                &s.identity,
                &s.cert,
                EnvelopeKind::Group,
                &sent.message,
                &[bob1],
            )
            .unwrap();
        // `seal_to` adds the sender's decoy: Bob's envelope and the decoy.
        let envelopes = server::split_upload(&upload).unwrap();
        assert_eq!(envelopes.len(), 2);
        let envelope = envelopes.iter().find(|e| e.recipient == bob1).unwrap();
        let wire = envelope.to_bytes();
        let parsed = GroupMessage::from_bytes(&sent.message).unwrap();
        let inner = group_message_len(len, parsed.key_id(), parsed.iteration());
        assert_eq!(sent.message.len(), inner);
        let body = sealed_body_len(cert, EnvelopeKind::Group, inner);
        assert_eq!(sealed_part(envelope).body.len(), body);
        let mut with_decoy = [(bob1, 0), (sender, 0)];
        with_decoy.sort();
        assert_eq!(upload.len(), sealed_upload_len(body, &with_decoy));
        assert_eq!(wire.len(), sealed_envelope_len(1, body, 0));
        let unsealed_wire = unsealed_envelope_len(EnvelopeKind::Group, 1, sender.device, inner, 0);
        assert_eq!(
            Envelope {
                recipient: bob1,
                content: EnvelopeContent::Group {
                    sender,
                    message: sent.message.clone(),
                },
            }
            .to_bytes()
            .len(),
            unsealed_wire
        );
        println!(
            "  group     {len:>9}  {:>5}           {:>5} [{:>5}]   {:>11}  {:>12}   \
             (group message {inner} B: key id {} B varint, iteration {})",
            upload.len(),
            wire.len(),
            unsealed_wire,
            body,
            0,
            varint_len(parsed.key_id().into()),
            parsed.iteration()
        );
        assert_eq!(
            deliver(&mut w, envelope),
            Got::Group(sender, plaintext.clone())
        );
    }
}

// ---- Certificates --------------------------------------------------------------------------------

/// A sealed message of `kind` (content `inner`) from `identity` with `cert` to device `to`,
/// as the server delivers it.
fn seal_one(
    rng: &mut ChaCha20Rng,
    identity: &IdentityKeyPair,
    cert: &[u8],
    kind: EnvelopeKind,
    to: &Dev,
) -> SealedEnvelope {
    let recipient = SealedRecipient {
        address: to.address,
        identity_key: to.identity.public(),
        entry: None,
    };
    // A misbehaving sender may seal anything: the checks under test are the recipient's.
    let upload = hazmat::seal_unchecked(rng, identity, cert, kind, b"inner", &[recipient]).unwrap();
    let envelopes = server::split_upload(&upload).unwrap();
    assert_eq!(envelopes[0].recipient, to.address);
    sealed_part(&envelopes[0]).clone()
}

#[test]
fn certificates_are_checked() {
    let mut w = world(4);
    let alice1 = w.senders[0].address;
    let cert = w.senders[0].cert.clone();
    let v = w.validator.clone();
    let identity = w.senders[0].identity.public();

    // Valid until just before the expiry; expired at and after it.
    let ok = v.validate(&cert, T).unwrap();
    assert_eq!(ok.sender(), alice1);
    assert_eq!(ok.identity_key(), identity);
    assert_eq!(ok.expires(), EXPIRES);
    assert_eq!(ok.server_key_id(), KEY_IDS[0]);
    assert_eq!(v.validate(&cert, Timestamp(EXPIRES.0 - 1)).unwrap(), ok);
    for now in [EXPIRES, EXPIRES.plus_ms(1), EXPIRES.plus_ms(365 * DAY)] {
        assert_eq!(
            v.validate(&cert, now),
            Err(CertificateError::Expired {
                expires: EXPIRES,
                now
            })
        );
    }
    // The same through a sealed envelope and the book.
    let sealed_env = seal_one(
        &mut w.rng,
        &w.senders[0].identity,
        &cert,
        EnvelopeKind::Group,
        &w.bob[0],
    );
    let bob1 = &w.bob[0];
    let open = |validator: &CertificateValidator, now: Timestamp, e: &SealedEnvelope| {
        bob1.book.open_sealed(&bob1.identity, validator, now, e)
    };
    assert_eq!(open(&v, T, &sealed_env).unwrap().sender(), alice1);
    assert_eq!(
        open(&v, EXPIRES, &sealed_env).unwrap_err(),
        SealedError::Certificate(CertificateError::Expired {
            expires: EXPIRES,
            now: EXPIRES
        })
    );

    // issue_sender_certificate is SenderCertificate::issue for a listed device (Ed25519 is
    // deterministic), and refuses a device that is not listed.
    let server0 = &w.servers[0];
    assert_eq!(
        SenderCertificate::issue(
            &server0.key,
            &server0.certificate,
            alice1,
            &identity,
            EXPIRES
        ),
        cert
    );
    for device in [0, 3, 9, u32::MAX] {
        assert!(
            server::issue_sender_certificate(
                &server0.key,
                &server0.certificate,
                &w.lists[0],
                device,
                EXPIRES
            )
            .is_none()
        );
    }

    // Forged: signed by a server key that the root never certified, with the genuine server
    // certificate or a certificate from another root.
    let mut rng = ChaCha20Rng::seed_from_u64(40);
    let rogue = IdentityKeyPair::generate(&mut rng);
    let rogue_root = IdentityKeyPair::generate(&mut rng);
    let forged = SenderCertificate::issue(&rogue, &server0.certificate, alice1, &identity, EXPIRES);
    assert_eq!(forged.len(), cert.len());
    assert_eq!(
        v.validate(&forged, T),
        Err(CertificateError::Unauthenticated)
    );
    let rogue_server_cert = ServerCertificate::issue(&rogue_root, KEY_IDS[0], &rogue.public());
    let forged2 = SenderCertificate::issue(&rogue, &rogue_server_cert, alice1, &identity, EXPIRES);
    assert_eq!(
        v.validate(&forged2, T),
        Err(CertificateError::Unauthenticated)
    );
    // ... and is refused when sealed by the genuine sender device.
    for f in [&forged, &forged2] {
        let e = seal_one(
            &mut w.rng,
            &w.senders[0].identity,
            f,
            EnvelopeKind::Group,
            &w.bob[0],
        );
        let bob1 = &w.bob[0];
        assert_eq!(
            bob1.book
                .open_sealed(&bob1.identity, &v, T, &e)
                .unwrap_err(),
            SealedError::Certificate(CertificateError::Unauthenticated)
        );
    }

    // Wrong root: everything genuine, but the client pins another root.
    let other = CertificateValidator::new(rogue_root.public());
    assert_eq!(
        other.validate(&cert, T),
        Err(CertificateError::Unauthenticated)
    );
    // The rogue's own chain validates under its own root (the root is all that is trusted).
    assert!(other.validate(&forged2, T).is_ok());

    // Revocation is by server key id.
    let mut revoked = v.clone();
    revoked.revoke(KEY_IDS[0]);
    assert_eq!(
        revoked.validate(&cert, T),
        Err(CertificateError::Revoked { key_id: KEY_IDS[0] })
    );
    // A revoked key's certificate is refused even once expired or with a bad sender signature
    // (the chain is checked first, then revocation, then the sender signature, then expiry).
    assert_eq!(
        revoked.validate(&cert, EXPIRES),
        Err(CertificateError::Revoked { key_id: KEY_IDS[0] })
    );
    assert_eq!(
        revoked.validate(&forged, T),
        Err(CertificateError::Revoked { key_id: KEY_IDS[0] })
    );
    // Carol's certificate, signed by the other server key (id 8, certified by the root), still
    // validates.
    assert_eq!(
        revoked
            .validate(&w.senders[2].cert, T)
            .unwrap()
            .server_key_id(),
        KEY_IDS[1]
    );
    // The revoked server key certified again by the root under another id validates: revoking
    // an id does not revoke the key.
    let recertified = ServerCertificate::issue(&w.root, 9, &server0.key.public());
    let cert9 = SenderCertificate::issue(&server0.key, &recertified, alice1, &identity, EXPIRES);
    assert_eq!(revoked.validate(&cert9, T).unwrap().server_key_id(), 9);
    // The revoked server certificate with its key id edited to a non-revoked one: the root's
    // signature fails.
    let mut edited = server0.certificate.clone();
    // Field 1, fixed32 (wire type 5): tag byte 0x0d, then the id little-endian.
    assert_eq!(
        &edited[1..6],
        &[&[0x0d][..], &KEY_IDS[0].to_le_bytes()].concat()[..]
    );
    edited[2] = KEY_IDS[1] as u8;
    let cert_edited = SenderCertificate::issue(&server0.key, &edited, alice1, &identity, EXPIRES);
    assert_eq!(
        revoked.validate(&cert_edited, T),
        Err(CertificateError::Unauthenticated)
    );
    let e = seal_one(
        &mut w.rng,
        &w.senders[0].identity,
        &cert,
        EnvelopeKind::Group,
        &w.bob[0],
    );
    let bob1 = &w.bob[0];
    assert_eq!(
        bob1.book
            .open_sealed(&bob1.identity, &revoked, T, &e)
            .unwrap_err(),
        SealedError::Certificate(CertificateError::Revoked { key_id: KEY_IDS[0] })
    );

    // Malformed certificates.
    assert_eq!(
        v.validate(&[], T),
        Err(CertificateError::Malformed(DecodeError::Empty))
    );
    assert_eq!(
        v.validate(&server0.certificate, T),
        Err(CertificateError::Malformed(
            DecodeError::UnsupportedVersion(0x81)
        ))
    );
    let mut long = cert.clone();
    long.resize(MAX_SENDER_CERTIFICATE_BYTES + 1, 0);
    assert_eq!(
        v.validate(&long, T),
        Err(CertificateError::Malformed(DecodeError::TooLarge {
            len: MAX_SENDER_CERTIFICATE_BYTES + 1,
            limit: MAX_SENDER_CERTIFICATE_BYTES
        }))
    );

    // Every single-bit flip anywhere in the certificate is refused: by the validator, and
    // sealed by the genuine device, by the recipient with exactly the validator's error.
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for bit in 0..cert.len() * 8 {
        let flipped = flip(&cert, bit);
        let err = v.validate(&flipped, T).unwrap_err();
        assert!(
            matches!(
                err,
                CertificateError::Unauthenticated | CertificateError::Malformed(_)
            ),
            "bit {bit}: {err:?}"
        );
        *kinds.entry(format!("{err:?}")).or_default() += 1;
        // Also fails under a validator that would accept an expired one.
        assert!(v.validate(&flipped, Timestamp(0)).is_err());
        let e = seal_one(
            &mut w.rng,
            &w.senders[0].identity,
            &flipped,
            EnvelopeKind::Group,
            &w.bob[0],
        );
        // The tag is checked before the chain, with the certificate's key taken unverified:
        // a flip that breaks the encoding or the key fails the tag; one that leaves them
        // intact fails the chain exactly as the validator does.
        let bob1 = &w.bob[0];
        let got = bob1
            .book
            .open_sealed(&bob1.identity, &v, T, &e)
            .unwrap_err();
        assert!(
            got == SealedError::Certificate(err) || got == SealedError::Unauthenticated,
            "bit {bit}: {got:?}"
        );
    }
    println!("{} certificate bit flips: {kinds:?}", cert.len() * 8);

    // A certificate whose identity key differs from the book's key for that device, used by
    // the holder of that key: the sealed layer authenticates it (AT matches the certified
    // key), the book refuses it.
    let mallory = IdentityKeyPair::generate(&mut rng);
    let lying = SenderCertificate::issue(
        &server0.key,
        &server0.certificate,
        alice1,
        &mallory.public(),
        EXPIRES,
    );
    assert!(v.validate(&lying, T).is_ok());
    let e = seal_one(&mut w.rng, &mallory, &lying, EnvelopeKind::Group, &w.bob[0]);
    let bob1 = &w.bob[0];
    assert_eq!(
        sealed::open(&bob1.identity, &e, &v, T).unwrap().sender(),
        alice1
    );
    assert_eq!(
        bob1.book
            .open_sealed(&bob1.identity, &v, T, &e)
            .unwrap_err(),
        SealedError::IdentityMismatch
    );
    // The genuine device sealing with that certificate fails the tag (AT binds the certified
    // key), and Mallory with Alice's certificate too.
    let e = seal_one(
        &mut w.rng,
        &w.senders[0].identity,
        &lying,
        EnvelopeKind::Group,
        &w.bob[0],
    );
    let bob1 = &w.bob[0];
    assert_eq!(
        bob1.book
            .open_sealed(&bob1.identity, &v, T, &e)
            .unwrap_err(),
        SealedError::Unauthenticated
    );
    let e = seal_one(&mut w.rng, &mallory, &cert, EnvelopeKind::Group, &w.bob[0]);
    let bob1 = &w.bob[0];
    assert_eq!(
        bob1.book
            .open_sealed(&bob1.identity, &v, T, &e)
            .unwrap_err(),
        SealedError::Unauthenticated
    );

    // A certificate for a device in no device list (an unlisted device of Alice's account, a
    // device of an unknown account): unknown sender.
    let stranger = IdentityKeyPair::generate(&mut rng);
    for address in [
        Address {
            account: w.alice_key.public(),
            device: 3,
        },
        Address {
            account: stranger.public(),
            device: 1,
        },
    ] {
        let c = SenderCertificate::issue(
            &server0.key,
            &server0.certificate,
            address,
            &mallory.public(),
            EXPIRES,
        );
        let e = seal_one(&mut w.rng, &mallory, &c, EnvelopeKind::Group, &w.bob[0]);
        let bob1 = &w.bob[0];
        assert_eq!(
            bob1.book
                .open_sealed(&bob1.identity, &v, T, &e)
                .unwrap_err(),
            SealedError::UnknownSender
        );
    }
    // After the book forgets Carol's account, her genuine sends are from an unknown sender.
    let e = seal_one(
        &mut w.rng,
        &w.senders[2].identity,
        &w.senders[2].cert,
        EnvelopeKind::Group,
        &w.bob[0],
    );
    let bob1 = &mut w.bob[0];
    assert!(bob1.book.open_sealed(&bob1.identity, &v, T, &e).is_ok());
    bob1.book.forget_account(&w.carol_key.public());
    assert_eq!(
        bob1.book
            .open_sealed(&bob1.identity, &v, T, &e)
            .unwrap_err(),
        SealedError::UnknownSender
    );
}

// ---- Tampering -----------------------------------------------------------------------------------

/// Flips bit `bit` of one field of a sealed envelope (0 ephemeral, 1 header, 2 entry, 3 body).
fn flip_field(s: &SealedEnvelope, field: usize, bit: usize) -> SealedEnvelope {
    let mut m = s.clone();
    let bytes: &mut [u8] = match field {
        0 => &mut m.ephemeral,
        1 => &mut m.header,
        2 => &mut m.entry,
        _ => &mut m.body,
    };
    bytes[bit / 8] ^= 1 << (bit % 8);
    m
}

fn field_len(s: &SealedEnvelope, field: usize) -> usize {
    match field {
        0 => s.ephemeral.len(),
        1 => s.header.len(),
        2 => s.entry.len(),
        _ => s.body.len(),
    }
}

/// Asserts that the Bob device of `envelope` refuses every single-bit flip of its ephemeral
/// key, header and sealed entry, and (if `body`: the body is the same in every envelope of a
/// send) of its body, with exactly `Unauthenticated`, through `sealed::open` and
/// `open_sealed` (`open_sealed` only for the body), its state unchanged. Returns the number of
/// flips.
fn every_flip_is_refused(w: &World, envelope: &Envelope, body: bool) -> usize {
    let dev = w
        .bob
        .iter()
        .find(|d| d.address == envelope.recipient)
        .unwrap();
    let s = sealed_part(envelope);
    let book = dev.book.snapshot();
    let prekeys = dev.prekeys.snapshot();
    let mut flips = 0;
    for field in 0..if body { 4 } else { 3 } {
        for bit in 0..field_len(s, field) * 8 {
            let m = flip_field(s, field, bit);
            if field < 3 {
                assert_eq!(
                    sealed::open(&dev.identity, &m, &w.validator, T).unwrap_err(),
                    SealedError::Unauthenticated,
                    "field {field} bit {bit}"
                );
            }
            assert_eq!(
                dev.book
                    .open_sealed(&dev.identity, &w.validator, T, &m)
                    .unwrap_err(),
                SealedError::Unauthenticated,
                "field {field} bit {bit}"
            );
            flips += 1;
        }
    }
    // An entry added to, or removed from, the envelope.
    let mut m = s.clone();
    if m.entry.is_empty() {
        m.entry.push(0);
    } else {
        m.entry.clear();
    }
    assert_eq!(
        dev.book
            .open_sealed(&dev.identity, &w.validator, T, &m)
            .unwrap_err(),
        SealedError::Unauthenticated
    );
    // Truncated or extended body.
    for body in [
        s.body[..s.body.len() - 1].to_vec(),
        [s.body.as_slice(), &[0]].concat(),
        Vec::new(),
    ] {
        let m = SealedEnvelope { body, ..s.clone() };
        assert_eq!(
            dev.book
                .open_sealed(&dev.identity, &w.validator, T, &m)
                .unwrap_err(),
            SealedError::Unauthenticated
        );
    }
    assert_eq!(*dev.book.snapshot(), *book);
    assert_eq!(*dev.prekeys.snapshot(), *prekeys);
    flips
}

#[test]
fn every_bit_flip_of_a_sealed_envelope_is_refused() {
    let mut w = world(5);
    let sender = w.senders[0].address;
    let payload = b"x".to_vec();
    let fan_out =
        server::split_upload(&send_fan_out(&mut w, 0, &content::application(&payload))).unwrap();
    let (uploads, _) = send_group(&mut w, 0, b"g");
    let mut group = Vec::new();
    for (k, upload) in uploads.iter().enumerate() {
        let envelopes = server::split_upload(upload).unwrap();
        if k + 1 < uploads.len() {
            for e in &envelopes {
                assert_eq!(deliver(&mut w, e), Got::Distribution(sender));
            }
        } else {
            group = envelopes;
        }
    }
    let mut flips = 0;
    for e in fan_out.iter().chain(&group) {
        flips += every_flip_is_refused(&w, e, e.recipient == w.bob[0].address);
    }

    // Wire-level flips of Bob 1's fan-out envelope: refused by the decoder, or a routing change
    // (the recipient), or refused by the recipient with exactly `Unauthenticated`.
    let original = &fan_out[0];
    let wire = original.to_bytes();
    let bob1 = &w.bob[0];
    let before = bob1.book.snapshot();
    let mut decode_errors: BTreeMap<String, usize> = BTreeMap::new();
    let (mut rerouted, mut refused) = (0, 0);
    for bit in 0..wire.len() * 8 {
        match Envelope::from_bytes(&flip(&wire, bit)) {
            Err(e) => *decode_errors.entry(format!("{e:?}")).or_default() += 1,
            Ok(e) if e.content == original.content => {
                assert_ne!(e.recipient, original.recipient);
                rerouted += 1;
            }
            Ok(e) => {
                let EnvelopeContent::Sealed(s) = &e.content else {
                    panic!("bit {bit} turned the envelope into {e:?}")
                };
                assert_eq!(
                    bob1.book
                        .open_sealed(&bob1.identity, &w.validator, T, s)
                        .unwrap_err(),
                    SealedError::Unauthenticated,
                    "bit {bit}"
                );
                refused += 1;
            }
        }
    }
    assert_eq!(*bob1.book.snapshot(), *before);
    println!(
        "{flips} field bit flips refused; {} wire bit flips: {rerouted} re-routed, {refused} \
         refused by the recipient, not decoded: {decode_errors:?}",
        wire.len() * 8
    );

    // Swaps and mix-ups, each refused with `Unauthenticated`.
    let refuse = |w: &World, j: usize, s: &SealedEnvelope| {
        let dev = &w.bob[j];
        assert_eq!(
            sealed::open(&dev.identity, s, &w.validator, T).unwrap_err(),
            SealedError::Unauthenticated
        );
        assert_eq!(
            dev.book
                .open_sealed(&dev.identity, &w.validator, T, s)
                .unwrap_err(),
            SealedError::Unauthenticated
        );
    };
    let (f1, f2) = (sealed_part(&fan_out[0]), sealed_part(&fan_out[1]));
    let (g1, g2) = (sealed_part(&group[0]), sealed_part(&group[1]));
    assert_eq!(
        (fan_out[0].recipient, fan_out[1].recipient),
        (w.bob[0].address, w.bob[1].address)
    );
    assert_eq!(
        (group[0].recipient, group[1].recipient),
        (w.bob[0].address, w.bob[1].address)
    );
    // Headers swapped between the two recipients of one send.
    for (a, b) in [(f1, f2), (g1, g2)] {
        refuse(
            &w,
            0,
            &SealedEnvelope {
                header: b.header,
                ..a.clone()
            },
        );
        refuse(
            &w,
            1,
            &SealedEnvelope {
                header: a.header,
                ..b.clone()
            },
        );
    }
    // One recipient's sealed entry in place of the other's.
    refuse(
        &w,
        0,
        &SealedEnvelope {
            entry: f2.entry.clone(),
            ..f1.clone()
        },
    );
    refuse(
        &w,
        1,
        &SealedEnvelope {
            entry: f1.entry.clone(),
            ..f2.clone()
        },
    );
    // Delivered to the other recipient device (the server routing it wrongly).
    refuse(&w, 1, f1);
    refuse(&w, 0, f2);
    refuse(&w, 1, g1);
    refuse(&w, 0, g2);
    // Bodies (and ephemeral keys) swapped between two sends of the same length, from the same
    // sender and from another one.
    let same = server::split_upload(&send_fan_out(&mut w, 0, &content::application(b"y"))).unwrap();
    let other =
        server::split_upload(&send_fan_out(&mut w, 2, &content::application(b"y"))).unwrap();
    for second in [&same, &other] {
        let s1 = sealed_part(&second[0]);
        assert_eq!(s1.body.len(), f1.body.len());
        refuse(
            &w,
            0,
            &SealedEnvelope {
                body: s1.body.clone(),
                ..f1.clone()
            },
        );
        refuse(
            &w,
            0,
            &SealedEnvelope {
                ephemeral: s1.ephemeral,
                ..f1.clone()
            },
        );
        refuse(
            &w,
            0,
            &SealedEnvelope {
                ephemeral: s1.ephemeral,
                body: s1.body.clone(),
                ..f1.clone()
            },
        );
        refuse(
            &w,
            0,
            &SealedEnvelope {
                entry: s1.entry.clone(),
                ..f1.clone()
            },
        );
    }
    // A recipient cannot pass the sender's certificate off as its own message to another
    // device: `seal` refuses a certificate that does not certify the sealing identity (and a
    // hand-made one would fail the tag at the recipient, since AT needs the certified key).
    let alice_cert = w.senders[0].cert.clone();
    assert_eq!(
        sealed::seal(
            &mut w.rng,
            &w.bob[0].identity,
            &alice_cert,
            EnvelopeKind::Group,
            b"inner",
            &[SealedRecipient {
                address: w.bob[1].address,
                identity_key: w.bob[1].identity.public(),
                entry: None,
            }],
            false,
        ),
        Err(EncryptError::NotReady)
    );
    // Sealing a content of kind `Sealed`, or a pairwise kind to more than one device, is
    // refused before anything is drawn or sent.
    let to = |d: &Dev| SealedRecipient {
        address: d.address,
        identity_key: d.identity.public(),
        entry: None,
    };
    assert_eq!(
        sealed::seal(
            &mut w.rng,
            &w.senders[0].identity,
            &alice_cert,
            EnvelopeKind::Sealed,
            b"inner",
            &[to(&w.bob[0])],
            false,
        ),
        Err(EncryptError::NotReady)
    );
    assert_eq!(
        sealed::seal(
            &mut w.rng,
            &w.senders[0].identity,
            &alice_cert,
            EnvelopeKind::Ratchet,
            b"inner",
            &[to(&w.bob[0]), to(&w.bob[1])],
            false,
        ),
        Err(EncryptError::NotReady)
    );

    // Nothing changed: the originals are still delivered.
    assert_eq!(
        deliver(&mut w, &fan_out[0]),
        Got::Application(sender, payload.clone())
    );
    assert_eq!(
        deliver(&mut w, &fan_out[1]),
        Got::Application(sender, payload)
    );
    assert_eq!(
        deliver(&mut w, &group[0]),
        Got::Group(sender, b"g".to_vec())
    );
    assert_eq!(
        deliver(&mut w, &group[1]),
        Got::Group(sender, b"g".to_vec())
    );
}

// ---- Upload splitting ----------------------------------------------------------------------------

#[test]
fn split_upload_gives_one_envelope_per_device() {
    let mut w = world(6);
    // A sealed group send from Alice 1 to five devices of three accounts (her own other device
    // included).
    let devices: Vec<Address> = w
        .senders
        .iter()
        .skip(1)
        .chain(w.bob.iter())
        .map(|d| d.address)
        .collect();
    let sent = w.groups[0].encrypt(&mut w.rng, T, b"to all").unwrap();
    let s = &w.senders[0];
    let (upload, unknown) = s
        .book
        .seal_to(
            &mut w.rng,
            &s.identity,
            &s.cert,
            EnvelopeKind::Group,
            &sent.message,
            &devices,
        )
        .unwrap();
    assert!(unknown.is_empty());
    let envelopes = server::split_upload(&upload).unwrap();
    // Every device, and the sender's own decoy.
    let mut sorted = devices.clone();
    sorted.push(s.address);
    sorted.sort();
    assert_eq!(
        envelopes.iter().map(|e| e.recipient).collect::<Vec<_>>(),
        sorted
    );
    let shared = sealed_part(&envelopes[0]);
    for e in &envelopes {
        let s = sealed_part(e);
        assert_eq!((s.ephemeral, &s.body), (shared.ephemeral, &shared.body));
        assert!(s.entry.is_empty());
        let wire = e.to_bytes();
        assert_eq!(&Envelope::from_bytes(&wire).unwrap(), e);
        assert_eq!(
            server::validate_sealed_envelope(&wire).unwrap(),
            e.recipient
        );
    }
    // seal_to leaves out, and returns, a device the book does not know.
    let ghost = Address {
        account: w.bob_key.public(),
        device: 9,
    };
    let s = &w.senders[0];
    let (upload, unknown) = s
        .book
        .seal_to(
            &mut w.rng,
            &s.identity,
            &s.cert,
            EnvelopeKind::Group,
            &sent.message,
            &[ghost, w.bob[0].address],
        )
        .unwrap();
    assert_eq!(unknown, vec![ghost]);
    assert_eq!(
        server::split_upload(&upload).unwrap().len(),
        2,
        "Bob's device and the sender's decoy"
    );

    // A sealed fan-out: one envelope per device, each with its own sealed entry.
    let upload = send_fan_out(&mut w, 0, &content::application(b"hi"));
    let envelopes = server::split_upload(&upload).unwrap();
    assert_eq!(envelopes.len(), 2);
    assert_ne!(
        sealed_part(&envelopes[0]).entry,
        sealed_part(&envelopes[1]).entry
    );
    for e in &envelopes {
        assert_eq!(&Envelope::from_bytes(&e.to_bytes()).unwrap(), e);
    }

    // An unsealed fan-out upload (0x73): fan-out envelopes from the named sender.
    let sender = w.senders[0].address;
    let targets: Vec<Address> = devices.clone();
    let fan = w.senders[0]
        .book
        .fan_out_to(&mut w.rng, &targets, &content::application(b"plain"))
        .unwrap();
    // Alice 1 has sessions with Bob's devices only.
    let mut without_session = vec![w.senders[1].address, w.senders[2].address];
    without_session.sort();
    assert_eq!(fan.needs_bundle, without_session);
    let upload = fan.to_upload(&sender);
    assert_eq!(upload[0], FANOUT_UPLOAD);
    let envelopes = server::split_upload(&upload).unwrap();
    assert_eq!(envelopes.len(), fan.entries.len());
    for e in &envelopes {
        assert_eq!(e.kind(), EnvelopeKind::FanOut);
        assert_eq!(e.sender(), Some(sender));
        let EnvelopeContent::FanOut { entry, body, .. } = &e.content else {
            panic!()
        };
        assert_eq!(body, &fan.body);
        let expected = &fan
            .entries
            .iter()
            .find(|(a, _)| *a == e.recipient)
            .unwrap()
            .1;
        assert_eq!(entry, expected);
        let wire = e.to_bytes();
        assert_eq!(&Envelope::from_bytes(&wire).unwrap(), e);
        assert_eq!(
            server::validate_sealed_envelope(&wire),
            Err(DecodeError::InvalidField("kind"))
        );
    }
}

fn invalid(field: &'static str) -> Result<Vec<Envelope>, DecodeError> {
    Err(DecodeError::InvalidField(field))
}

fn upload_bytes(leading: u8, fields: &[(u32, Value)]) -> Vec<u8> {
    let mut out = vec![leading];
    out.extend(encode_proto(fields));
    out
}

fn account_field(account: &[u8], devices: &[Vec<(u32, Value)>]) -> (u32, Value) {
    let mut fields = vec![(1, Value::Len(account.to_vec()))];
    fields.extend(devices.iter().map(|d| (2, Value::Len(encode_proto(d)))));
    (3, Value::Len(encode_proto(&fields)))
}

fn sealed_device(device: u32, header: usize, entry: usize) -> Vec<(u32, Value)> {
    let mut fields = vec![
        (1, Value::Varint(device.into())),
        (2, Value::Len(vec![0xaa; header])),
    ];
    if entry > 0 {
        fields.push((3, Value::Len(vec![0xbb; entry])));
    }
    fields
}

fn fan_out_device(device: u32, message: usize) -> Vec<(u32, Value)> {
    vec![
        (1, Value::Varint(device.into())),
        (2, Value::Len(vec![0x12; message])),
    ]
}

#[test]
fn split_upload_refuses_malformed_uploads_with_typed_errors() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let a = IdentityKeyPair::generate(&mut rng).public().to_bytes();
    let b = IdentityKeyPair::generate(&mut rng).public().to_bytes();
    let sealed = |body: usize, accounts: Vec<(u32, Value)>| {
        let mut fields = vec![(1, Value::Len(vec![9; 32])), (2, Value::Len(vec![7; body]))];
        fields.extend(accounts);
        upload_bytes(SEALED_UPLOAD, &fields)
    };
    let fan_out = |body: usize, accounts: Vec<(u32, Value)>| {
        let mut fields = vec![(2, Value::Len(vec![7; body]))];
        fields.extend(accounts);
        fields.push((4, Value::Len(a.to_vec())));
        fields.push((5, Value::Varint(1)));
        upload_bytes(FANOUT_UPLOAD, &fields)
    };
    let split = server::split_upload;

    // Well-formed uploads, for reference.
    let ok = sealed(
        100,
        vec![
            account_field(&a, &[sealed_device(1, 48, 0), sealed_device(2, 48, 10)]),
            account_field(&b, &[sealed_device(1, 48, 0)]),
        ],
    );
    assert_eq!(split(&ok).unwrap().len(), 3);
    assert_eq!(
        split(&fan_out(
            100,
            vec![account_field(&b, &[fan_out_device(1, 50)])]
        ))
        .unwrap()
        .len(),
        1
    );
    // An account listed twice with different devices is fine; with the same device it is a
    // duplicate, as is a device listed twice in one account.
    assert_eq!(
        split(&sealed(
            1,
            vec![
                account_field(&a, &[sealed_device(1, 48, 0)]),
                account_field(&a, &[sealed_device(2, 48, 0)]),
            ]
        ))
        .unwrap()
        .len(),
        2
    );
    for accounts in [
        vec![
            account_field(&a, &[sealed_device(1, 48, 0)]),
            account_field(&a, &[sealed_device(1, 48, 0)]),
        ],
        vec![account_field(
            &a,
            &[sealed_device(3, 48, 0), sealed_device(3, 48, 5)],
        )],
    ] {
        assert_eq!(split(&sealed(1, accounts)), invalid("duplicate recipient"));
    }
    assert_eq!(
        split(&fan_out(
            1,
            vec![account_field(
                &b,
                &[fan_out_device(1, 5), fan_out_device(1, 5)]
            )]
        )),
        invalid("duplicate recipient")
    );
    // No recipient at all: refused.
    assert_eq!(split(&sealed(10, vec![])), invalid("recipients"));

    // Sizes.
    let mut huge = vec![SEALED_UPLOAD];
    huge.resize(MAX_SEALED_UPLOAD_BYTES + 1, 0);
    assert_eq!(
        split(&huge),
        Err(DecodeError::TooLarge {
            len: MAX_SEALED_UPLOAD_BYTES + 1,
            limit: MAX_SEALED_UPLOAD_BYTES
        })
    );
    drop(huge);
    let one = |d: Vec<(u32, Value)>| vec![account_field(&a, &[d])];
    assert!(split(&sealed(MAX_SEALED_BODY_BYTES, one(sealed_device(1, 48, 0)))).is_ok());
    assert_eq!(
        split(&sealed(
            MAX_SEALED_BODY_BYTES + 1,
            one(sealed_device(1, 48, 0))
        )),
        invalid("body")
    );
    assert!(
        split(&sealed(
            1,
            one(sealed_device(1, 48, MAX_SEALED_ENTRY_BYTES))
        ))
        .is_ok()
    );
    assert_eq!(
        split(&sealed(
            1,
            one(sealed_device(1, 48, MAX_SEALED_ENTRY_BYTES + 1))
        )),
        invalid("entry")
    );
    assert!(split(&fan_out(MAX_FANOUT_BODY_BYTES, one(fan_out_device(1, 5)))).is_ok());
    assert_eq!(
        split(&fan_out(
            MAX_FANOUT_BODY_BYTES + 1,
            one(fan_out_device(1, 5))
        )),
        invalid("body")
    );
    assert!(split(&fan_out(1, one(fan_out_device(1, MAX_MESSAGE_BYTES)))).is_ok());
    assert_eq!(
        split(&fan_out(1, one(fan_out_device(1, MAX_MESSAGE_BYTES + 1)))),
        invalid("entry")
    );
    // The largest envelopes still pass Envelope::from_bytes.
    for upload in [
        sealed(
            MAX_SEALED_BODY_BYTES,
            one(sealed_device(u32::MAX, 48, MAX_SEALED_ENTRY_BYTES)),
        ),
        fan_out(
            MAX_FANOUT_BODY_BYTES,
            one(fan_out_device(u32::MAX, MAX_MESSAGE_BYTES)),
        ),
    ] {
        for e in split(&upload).unwrap() {
            assert_eq!(Envelope::from_bytes(&e.to_bytes()).unwrap(), e);
        }
    }

    // Recipient counts: exactly the limit is fine, one more is refused before decoding.
    let devices: Vec<Vec<(u32, Value)>> = (1..=MAX_UPLOAD_RECIPIENTS as u32)
        .map(|d| sealed_device(d, 48, 0))
        .collect();
    assert_eq!(
        split(&sealed(1, vec![account_field(&a, &devices)]))
            .unwrap()
            .len(),
        MAX_UPLOAD_RECIPIENTS
    );
    let mut more = devices.clone();
    more.push(sealed_device(0, 48, 0));
    assert_eq!(
        split(&sealed(1, vec![account_field(&a, &more)])),
        Err(DecodeError::TooMany {
            field: "devices",
            count: MAX_UPLOAD_RECIPIENTS + 1,
            limit: MAX_UPLOAD_RECIPIENTS
        })
    );
    // Spread over two accounts, or as empty device entries: counted all the same.
    let (first, second) = more.split_at(1000);
    assert_eq!(
        split(&sealed(
            1,
            vec![account_field(&a, first), account_field(&b, second)]
        )),
        Err(DecodeError::TooMany {
            field: "devices",
            count: MAX_UPLOAD_RECIPIENTS + 1,
            limit: MAX_UPLOAD_RECIPIENTS
        })
    );
    let empty_devices = vec![Vec::new(); MAX_UPLOAD_RECIPIENTS + 1];
    assert_eq!(
        split(&sealed(1, vec![account_field(&a, &empty_devices)])),
        Err(DecodeError::TooMany {
            field: "devices",
            count: MAX_UPLOAD_RECIPIENTS + 1,
            limit: MAX_UPLOAD_RECIPIENTS
        })
    );
    let accounts: Vec<(u32, Value)> = (0..=MAX_UPLOAD_RECIPIENTS)
        .map(|_| (3, Value::Len(Vec::new())))
        .collect();
    assert_eq!(
        split(&sealed(1, accounts)),
        Err(DecodeError::TooMany {
            field: "accounts",
            count: MAX_UPLOAD_RECIPIENTS + 1,
            limit: MAX_UPLOAD_RECIPIENTS
        })
    );

    // Garbage and wrong fields.
    assert_eq!(split(&[]), Err(DecodeError::Empty));
    for leading in [0x00, 0x71, 0x74, 0xff] {
        assert_eq!(
            split(&[leading, 0x0a, 0x00]),
            Err(DecodeError::UnsupportedVersion(leading))
        );
    }
    assert_eq!(split(&[SEALED_UPLOAD, 0xff]), Err(DecodeError::Protobuf));
    assert_eq!(
        split(&[FANOUT_UPLOAD, 0x12, 0x05, 1]),
        Err(DecodeError::Protobuf)
    );
    assert_eq!(split(&[SEALED_UPLOAD]), invalid("ephemeral"));
    assert_eq!(split(&[FANOUT_UPLOAD]), invalid("sender"));
    let acct = || vec![account_field(&a, &[sealed_device(1, 48, 0)])];
    let mut fields = vec![(1, Value::Len(vec![9; 31]))];
    fields.extend(acct());
    assert_eq!(
        split(&upload_bytes(SEALED_UPLOAD, &fields)),
        invalid("ephemeral")
    );
    let mut fields = vec![(1, Value::Len(vec![9; 32]))];
    fields.extend(acct());
    fields.push((4, Value::Len(a.to_vec())));
    fields.push((5, Value::Varint(1)));
    assert_eq!(
        split(&upload_bytes(SEALED_UPLOAD, &fields)),
        invalid("sender")
    );
    let mut fields = vec![(1, Value::Len(vec![9; 32]))];
    fields.extend(acct());
    fields.push((5, Value::Varint(1)));
    assert_eq!(
        split(&upload_bytes(SEALED_UPLOAD, &fields)),
        invalid("sender")
    );
    // A fan-out upload with only part of a sender, an invalid sender key, or an ephemeral key.
    let fan_acct = || vec![account_field(&b, &[fan_out_device(1, 5)])];
    let mut fields = fan_acct();
    fields.push((4, Value::Len(a.to_vec())));
    assert_eq!(
        split(&upload_bytes(FANOUT_UPLOAD, &fields)),
        invalid("sender")
    );
    let mut fields = fan_acct();
    fields.push((4, Value::Len(vec![1; 31])));
    fields.push((5, Value::Varint(1)));
    assert_eq!(
        split(&upload_bytes(FANOUT_UPLOAD, &fields)),
        invalid("sender_account")
    );
    let mut fields = vec![(1, Value::Len(vec![9; 32]))];
    fields.extend(fan_acct());
    fields.push((4, Value::Len(a.to_vec())));
    fields.push((5, Value::Varint(1)));
    assert_eq!(
        split(&upload_bytes(FANOUT_UPLOAD, &fields)),
        invalid("ephemeral")
    );
    // Per recipient: an invalid account key, a short or long header, a fan-out device with a
    // sealed entry.
    for account in [vec![1u8; 31], vec![0xff; 32], Vec::new()] {
        assert_eq!(
            split(&sealed(
                1,
                vec![account_field(&account, &[sealed_device(1, 48, 0)])]
            )),
            invalid("account")
        );
    }
    for header in [0, 47, 49] {
        assert_eq!(
            split(&sealed(1, one(sealed_device(1, header, 0)))),
            invalid("header")
        );
    }
    let mut device = fan_out_device(1, 5);
    device.push((3, Value::Len(vec![1])));
    assert_eq!(split(&fan_out(1, one(device))), invalid("entry"));

    // validate_sealed_envelope on other inputs.
    assert_eq!(
        server::validate_sealed_envelope(&[]),
        Err(DecodeError::Empty)
    );
    assert_eq!(
        server::validate_sealed_envelope(&ok),
        Err(DecodeError::UnsupportedVersion(SEALED_UPLOAD))
    );
    // A sealed envelope naming a sender is refused.
    let e = &split(&ok).unwrap()[0];
    let mut fields = parse_proto(&e.to_bytes()[1..]).unwrap();
    fields.push((4, Value::Len(b.to_vec())));
    fields.push((5, Value::Varint(1)));
    assert_eq!(
        server::validate_sealed_envelope(&upload_bytes(0x71, &fields)),
        Err(DecodeError::InvalidField("sender"))
    );
}

/// Random structural mutations of `bytes`.
fn mutate(rng: &mut ChaCha20Rng, bytes: &[u8], other: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let n = b.len();
    match below(rng, 9) {
        0 => {
            let bit = below(rng, n * 8);
            b[bit / 8] ^= 1 << (bit % 8);
        }
        1 => {
            for _ in 0..1 + below(rng, 8) {
                let bit = below(rng, n * 8);
                b[bit / 8] ^= 1 << (bit % 8);
            }
        }
        2 => {
            let i = below(rng, n);
            b[i] = rng.next_u32() as u8;
        }
        3 => {
            let at = below(rng, n + 1);
            let len = 1 + below(rng, 16);
            let insert = random_bytes(rng, len);
            b.splice(at..at, insert);
        }
        4 => {
            let at = below(rng, n);
            let len = (1 + below(rng, 64)).min(n - at);
            b.drain(at..at + len);
        }
        5 => {
            let at = below(rng, n);
            let len = (1 + below(rng, 128)).min(n - at);
            let copy = b[at..at + len].to_vec();
            let to = below(rng, n + 1);
            b.splice(to..to, copy);
        }
        6 => {
            let cut = below(rng, n + 1);
            let from = below(rng, other.len() + 1);
            b.truncate(cut);
            b.extend_from_slice(&other[from..]);
        }
        7 => {
            // A length or varint byte set to a large value.
            let i = below(rng, n);
            b[i] = [0x7f, 0x80, 0xff, 0x00][below(rng, 4)];
        }
        _ => {
            let len = below(rng, 2 * n);
            b = random_bytes(rng, len);
            if let Some(first) = b.first_mut() {
                *first = [SEALED_UPLOAD, FANOUT_UPLOAD][below(rng, 2)];
            }
        }
    }
    b
}

/// The invariants for any split result: each envelope round-trips and passes the server
/// check, and a sealed envelope that a Bob device opens is byte-identical to the original
/// one for that device.
fn check_split(w: &World, bytes: &[u8], originals: &[Envelope]) -> bool {
    let Ok(envelopes) = server::split_upload(bytes) else {
        return false;
    };
    for e in &envelopes {
        let wire = e.to_bytes();
        assert_eq!(&Envelope::from_bytes(&wire).unwrap(), e);
        if let EnvelopeContent::Sealed(s) = &e.content {
            assert_eq!(
                server::validate_sealed_envelope(&wire).unwrap(),
                e.recipient
            );
            if let Some(dev) = w.bob.iter().find(|d| d.address == e.recipient)
                && dev
                    .book
                    .open_sealed(&dev.identity, &w.validator, T, s)
                    .is_ok()
            {
                assert!(originals.contains(e), "a mutated envelope opened");
            }
        }
    }
    true
}

#[test]
fn split_upload_never_panics_on_truncated_or_mutated_uploads() {
    let mut w = world(8);
    let fan = send_fan_out(&mut w, 0, &content::application(b"fuzz me"));
    let (uploads, _) = send_group(&mut w, 2, b"fuzz the group");
    let group = uploads.last().unwrap().clone();
    let (bob, alice2) = (w.bob_key.public(), w.senders[1].address);
    let plain = w.senders[1]
        .book
        .fan_out(&mut w.rng, &[bob], &alice2, b"plain")
        .unwrap()
        .to_upload(&alice2);
    let inputs = [fan, group, plain];
    let originals: Vec<Envelope> = inputs
        .iter()
        .flat_map(|u| server::split_upload(u).unwrap())
        .collect();
    let bob_snapshots: Vec<_> = w.bob.iter().map(|d| d.book.snapshot()).collect();

    let mut accepted = 0;
    let mut total = 0;
    for input in &inputs {
        for cut in 0..input.len() {
            total += 1;
            if check_split(&w, &input[..cut], &originals) {
                accepted += 1;
            }
        }
    }
    let mut rng = ChaCha20Rng::seed_from_u64(80);
    for i in 0..4000 {
        let input = &inputs[i % inputs.len()];
        let other = &inputs[(i + 1) % inputs.len()];
        let mutated = mutate(&mut rng, input, other);
        total += 1;
        if check_split(&w, &mutated, &originals) {
            accepted += 1;
        }
        // The same mutations of a stored envelope.
        let e = &originals[i % originals.len()].to_bytes();
        let mutated = mutate(&mut rng, e, other);
        if let Ok(parsed) = Envelope::from_bytes(&mutated) {
            assert_eq!(Envelope::from_bytes(&parsed.to_bytes()).unwrap(), parsed);
        }
        let _ = server::validate_sealed_envelope(&mutated);
    }
    for (dev, before) in w.bob.iter().zip(&bob_snapshots) {
        assert_eq!(*dev.book.snapshot(), **before);
    }
    println!("{total} truncated or mutated uploads, {accepted} split without error");
}

// ---- Replay ----------------------------------------------------------------------------------------

#[test]
fn a_replayed_sealed_envelope_fails_at_the_inner_layer() {
    let mut w = world(9);
    let sender = w.senders[0].address;
    let upload = send_fan_out(&mut w, 0, &content::application(b"once"));
    let envelopes = server::split_upload(&upload).unwrap();
    assert_eq!(
        deliver(&mut w, &envelopes[0]),
        Got::Application(sender, b"once".to_vec())
    );
    // The sealed layer is stateless: the copy opens again. The pairwise layer refuses it as a
    // duplicate and nothing changes.
    let bob1 = &mut w.bob[0];
    let book = bob1.book.snapshot();
    let prekeys = bob1.prekeys.snapshot();
    let unsealed = bob1
        .book
        .open_sealed(&bob1.identity, &w.validator, T, sealed_part(&envelopes[0]))
        .unwrap();
    let EnvelopeContent::FanOut {
        sender: from,
        entry,
        body,
    } = &unsealed.content
    else {
        panic!()
    };
    assert_eq!(*from, sender);
    let (_, _, counter) = common::header_of(entry);
    let entry = Message::from_bytes(entry).unwrap();
    assert!(matches!(entry, Message::Ratchet(_)));
    assert_eq!(
        bob1.book
            .receive_fan_out(
                &mut w.rng,
                &bob1.identity,
                &mut bob1.prekeys,
                from,
                &entry,
                body
            )
            .unwrap_err(),
        ReceiveError::Decrypt(DecryptError::Duplicate { counter })
    );
    assert_eq!(*bob1.book.snapshot(), *book);
    assert_eq!(*bob1.prekeys.snapshot(), *prekeys);
    // The next message still arrives.
    let upload = send_fan_out(&mut w, 0, &content::application(b"twice"));
    let next = server::split_upload(&upload).unwrap();
    assert_eq!(
        deliver(&mut w, &next[0]),
        Got::Application(sender, b"twice".to_vec())
    );

    // A replayed entry that is an initial (prekey) message: a new sender device with a fresh,
    // unanswered session to Bob 1.
    let mut dave = new_dev(&mut w.rng, &w.alice_key, 3);
    let mut alice_devices: Vec<&Dev> = w.senders[..2].iter().collect();
    alice_devices.push(&dave);
    let entries = alice_devices
        .iter()
        .map(|d| DeviceEntry::local(&w.alice_key, &d.identity, d.address.device))
        .collect();
    let list = DeviceList {
        account_id: b"alice".to_vec(),
        version: 2,
        timestamp: T,
        entries,
    }
    .sign(&w.alice_key)
    .unwrap();
    let list = VerifiedDeviceList::verify(&list, &w.alice_key.public(), None).unwrap();
    w.bob[0].book.apply_device_list(&list).unwrap();
    for l in &w.lists[1..] {
        dave.book.apply_device_list(l).unwrap();
    }
    let bob1 = &w.bob[0];
    let bundle = PreKeyBundle::new(bob1.identity.public(), bob1.prekeys.signed_prekey(), None)
        .with_kem_prekey(bob1.prekeys.last_resort_kem_prekey())
        .verify()
        .unwrap();
    let session = Session::initiate(&mut w.rng, &dave.identity, bundle).unwrap();
    dave.book.insert(bob1.address, session).unwrap();
    dave.cert = server::issue_sender_certificate(
        &w.servers[0].key,
        &w.servers[0].certificate,
        &list,
        3,
        EXPIRES,
    )
    .unwrap();
    let fan = dave
        .book
        .fan_out_to(&mut w.rng, &[bob1.address], &content::application(b"hello"))
        .unwrap();
    let upload = sealed::seal(
        &mut w.rng,
        &dave.identity,
        &dave.cert,
        EnvelopeKind::FanOut,
        &fan.body,
        &[SealedRecipient {
            address: bob1.address,
            identity_key: bob1.identity.public(),
            entry: Some(&fan.entries[0].1),
        }],
        false,
    )
    .unwrap();
    let envelope = &server::split_upload(&upload).unwrap()[0];
    let validator = &w.validator;
    let receive = |bob1: &mut Dev, rng: &mut ChaCha20Rng| {
        let unsealed = bob1
            .book
            .open_sealed(&bob1.identity, validator, T, sealed_part(envelope))
            .unwrap();
        assert_eq!(unsealed.sender(), dave.address);
        let EnvelopeContent::FanOut {
            sender,
            entry,
            body,
        } = &unsealed.content
        else {
            panic!()
        };
        let entry = Message::from_bytes(entry).unwrap();
        assert!(matches!(entry, Message::PreKey(_)));
        bob1.book
            .receive_fan_out(rng, &bob1.identity, &mut bob1.prekeys, sender, &entry, body)
    };
    let bob1 = &mut w.bob[0];
    let first = receive(bob1, &mut w.rng).unwrap();
    assert!(first.new_session);
    assert_eq!(&first.plaintext[..], &content::application(b"hello")[..]);
    let book = bob1.book.snapshot();
    let prekeys = bob1.prekeys.snapshot();
    assert_eq!(
        receive(bob1, &mut w.rng).unwrap_err(),
        ReceiveError::Decrypt(DecryptError::Duplicate { counter: 0 })
    );
    assert_eq!(*bob1.book.snapshot(), *book);
    assert_eq!(*bob1.prekeys.snapshot(), *prekeys);

    // A replayed sealed group message: the group session refuses it, unchanged.
    let (uploads, _) = send_group(&mut w, 0, b"group once");
    let mut group = Vec::new();
    for upload in &uploads {
        group = server::split_upload(upload).unwrap();
        deliver(&mut w, &group[0]);
    }
    let bob1 = &w.bob[0];
    let unsealed = bob1
        .book
        .open_sealed(&bob1.identity, &w.validator, T, sealed_part(&group[0]))
        .unwrap();
    let EnvelopeContent::Group {
        sender: from,
        message,
    } = &unsealed.content
    else {
        panic!()
    };
    let snapshot = w.bob_groups[0].snapshot();
    assert_eq!(
        w.bob_groups[0]
            .decrypt(from, &GroupMessage::from_bytes(message).unwrap())
            .unwrap_err(),
        GroupError::Duplicate { iteration: 0 }
    );
    assert_eq!(*w.bob_groups[0].snapshot(), *snapshot);
}

// ---- Certificate length ----------------------------------------------------------------------

/// The sealed content pads the certificate together with the message, so every certificate
/// must have the same length: its integers are fixed-width and always present (a varint device
/// id once made device 1 and device 20000 produce different envelope lengths for a 256-byte
/// plaintext).
#[test]
fn sender_device_id_does_not_change_sealed_lengths() {
    let mut w = world_with(10, 20_000);
    let (alice, carol) = (w.senders[0].cert.len(), w.senders[2].cert.len());
    assert_eq!(
        (alice, carol),
        (
            sender_certificate_len(1, EXPIRES, KEY_IDS[0]),
            sender_certificate_len(20_000, EXPIRES, KEY_IDS[1])
        )
    );
    assert_eq!(carol, alice, "certificates have one length");
    // Plaintext lengths whose sealed lengths differ, from the formats: 128 of them.
    let differing: Vec<usize> = (0..=MAX_PLAINTEXT)
        .filter(|&len| {
            sealed_body_len(alice, EnvelopeKind::FanOut, fan_out_body_len(len))
                != sealed_body_len(carol, EnvelopeKind::FanOut, fan_out_body_len(len))
        })
        .collect();
    println!(
        "{} plaintext lengths (from {:?} to {:?}) give different sealed fan-out lengths",
        differing.len(),
        differing.first(),
        differing.last()
    );
    let plaintext = vec![1u8; 256];
    let a = play_server(&send_fan_out(&mut w, 0, &plaintext)).0;
    let c = play_server(&send_fan_out(&mut w, 2, &plaintext)).0;
    assert_eq!(a, c, "the server tells the two senders apart");
}
