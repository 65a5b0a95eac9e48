//! Session book (PROTOCOL.md §15): sessions per remote device, archive and promotion,
//! simultaneous initiation, device-list changes, transactional receive, snapshots.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use confidant::book::{Address, ReceiveError, SessionBook};
use confidant::device::{DeviceEntry, DeviceList, VerifiedDeviceList};
use confidant::{IdentityKeyPair, Message, PreKeyBundle, PreKeys, Session, Timestamp};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

const T: Timestamp = Timestamp(1_795_000_000_000);

/// One device of an account: identity, prekeys and its session book.
struct Dev {
    address: Address,
    identity: IdentityKeyPair,
    prekeys: PreKeys,
    book: SessionBook,
}

struct Account {
    key: IdentityKeyPair,
    devices: Vec<Dev>,
    version: u64,
}

impl Account {
    fn new(rng: &mut ChaCha20Rng, devices: u32) -> Self {
        let key = IdentityKeyPair::generate(rng);
        let devices = (1..=devices)
            .map(|id| {
                let identity = IdentityKeyPair::generate(rng);
                let prekeys = PreKeys::new(rng, &identity, T);
                Dev {
                    address: Address {
                        account: key.public(),
                        device: id,
                    },
                    identity,
                    prekeys,
                    book: SessionBook::new(),
                }
            })
            .collect();
        Self {
            key,
            devices,
            version: 0,
        }
    }

    fn list(&mut self) -> VerifiedDeviceList {
        self.version += 1;
        let entries = self
            .devices
            .iter()
            .map(|d| DeviceEntry::local(&self.key, &d.identity, d.address.device))
            .collect();
        let bytes = DeviceList {
            account_id: b"acct".to_vec(),
            version: self.version,
            timestamp: T,
            entries,
        }
        .sign(&self.key)
        .unwrap();
        VerifiedDeviceList::verify(&bytes, &self.key.public(), None).unwrap()
    }
}

/// A PQXDH session from `from` to `to` (using `to`'s last-resort KEM prekey), installed in
/// `from`'s book.
fn initiate(rng: &mut ChaCha20Rng, from: &mut Dev, to: &Dev) {
    let bundle = PreKeyBundle::new(to.identity.public(), to.prekeys.signed_prekey(), None)
        .with_kem_prekey(to.prekeys.last_resort_kem_prekey())
        .verify()
        .unwrap();
    let session = Session::initiate(rng, &from.identity, bundle).unwrap();
    from.book.insert(to.address, session).unwrap();
}

fn send(from: &mut Dev, to: &Address, text: &str) -> Message {
    let wire = from
        .book
        .active_mut(to)
        .expect("active session")
        .encrypt(text.as_bytes())
        .unwrap();
    Message::from_bytes(&wire).unwrap()
}

fn recv(
    rng: &mut ChaCha20Rng,
    at: &mut Dev,
    from: &Address,
    m: &Message,
) -> Result<String, ReceiveError> {
    at.book
        .receive(rng, &at.identity, &mut at.prekeys, from, m)
        .map(|r| String::from_utf8(r.plaintext.to_vec()).unwrap())
}

fn setup(seed: u64) -> (ChaCha20Rng, Account, Account) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut a = Account::new(&mut rng, 2);
    let mut b = Account::new(&mut rng, 1);
    let (la, lb) = (a.list(), b.list());
    for d in a.devices.iter_mut().chain(b.devices.iter_mut()) {
        d.book.apply_device_list(&la).unwrap();
        d.book.apply_device_list(&lb).unwrap();
    }
    (rng, a, b)
}

#[test]
fn a_conversation_through_books() {
    let (mut rng, mut a, mut b) = setup(1);
    let (a1, b1) = (&mut a.devices[0], &mut b.devices[0]);
    assert_eq!(
        a1.book.devices().filter(|(_, has)| !has).count(),
        3,
        "no sessions yet"
    );
    initiate(&mut rng, a1, b1);
    let m = send(a1, &b1.address, "hi");
    assert_eq!(recv(&mut rng, b1, &a1.address, &m).unwrap(), "hi");
    let r = send(b1, &a1.address, "hello");
    assert_eq!(recv(&mut rng, a1, &b1.address, &r).unwrap(), "hello");
    assert_eq!(b1.book.session_count(&a1.address), 1);
}

#[test]
fn simultaneous_initiation_converges_and_loses_nothing() {
    let (mut rng, mut a, mut b) = setup(2);
    let (a1, b1) = (&mut a.devices[0], &mut b.devices[0]);
    initiate(&mut rng, a1, b1);
    initiate(&mut rng, b1, a1);
    let from_a: Vec<Message> = (0..3)
        .map(|i| send(a1, &b1.address, &format!("a{i}")))
        .collect();
    let from_b: Vec<Message> = (0..3)
        .map(|i| send(b1, &a1.address, &format!("b{i}")))
        .collect();
    // Both initial messages cross; each side accepts the other's as a new active session.
    assert_eq!(recv(&mut rng, b1, &a1.address, &from_a[0]).unwrap(), "a0");
    assert_eq!(recv(&mut rng, a1, &b1.address, &from_b[0]).unwrap(), "b0");
    // In-flight messages of both sessions still decrypt (through the archive or the owner).
    assert_eq!(recv(&mut rng, b1, &a1.address, &from_a[2]).unwrap(), "a2");
    assert_eq!(recv(&mut rng, a1, &b1.address, &from_b[1]).unwrap(), "b1");
    // Replies go on whichever session is active; both sides converge within one round trip.
    for round in 0..3 {
        let x = send(a1, &b1.address, &format!("x{round}"));
        assert_eq!(
            recv(&mut rng, b1, &a1.address, &x).unwrap(),
            format!("x{round}")
        );
        let y = send(b1, &a1.address, &format!("y{round}"));
        assert_eq!(
            recv(&mut rng, a1, &b1.address, &y).unwrap(),
            format!("y{round}")
        );
    }
    assert_eq!(recv(&mut rng, b1, &a1.address, &from_a[1]).unwrap(), "a1");
    assert_eq!(recv(&mut rng, a1, &b1.address, &from_b[2]).unwrap(), "b2");
    // Replays of anything are rejected.
    assert!(recv(&mut rng, b1, &a1.address, &from_a[1]).is_err());
}

#[test]
fn a_new_initial_message_replaces_the_active_session() {
    let (mut rng, mut a, mut b) = setup(3);
    let (a1, b1) = (&mut a.devices[0], &mut b.devices[0]);
    initiate(&mut rng, a1, b1);
    let old = send(a1, &b1.address, "old 1");
    assert_eq!(recv(&mut rng, b1, &a1.address, &old).unwrap(), "old 1");
    let late = send(a1, &b1.address, "old 2");
    // a1 reinstalls (lost state, reinstall...) and starts again.
    initiate(&mut rng, a1, b1);
    let new = send(a1, &b1.address, "new");
    assert_eq!(recv(&mut rng, b1, &a1.address, &new).unwrap(), "new");
    assert_eq!(b1.book.session_count(&a1.address), 2);
    // The old session's late message still decrypts from the archive (and is promoted).
    assert_eq!(recv(&mut rng, b1, &a1.address, &late).unwrap(), "old 2");
}

#[test]
fn removed_devices_lose_their_sessions_and_unknown_senders_are_refused() {
    let (mut rng, mut a, mut b) = setup(4);
    {
        let (a2, b1) = (&mut a.devices[1], &mut b.devices[0]);
        initiate(&mut rng, a2, b1);
        let m = send(a2, &b1.address, "from the laptop");
        assert_eq!(
            recv(&mut rng, b1, &a2.address, &m).unwrap(),
            "from the laptop"
        );
    }
    // Alice removes her laptop (device 2) and publishes version 2.
    let laptop = a.devices.remove(1);
    let list = a.list();
    let b1 = &mut b.devices[0];
    let needs_bundle = b1.book.apply_device_list(&list).unwrap();
    assert_eq!(
        needs_bundle,
        vec![a.devices[0].address],
        "the phone still needs a session"
    );
    assert_eq!(b1.book.session_count(&laptop.address), 0);
    // Anything the laptop sends now is from an unknown device.
    let mut laptop = laptop;
    assert!(laptop.book.active_mut(&b1.address).is_some());
    let m = send(&mut laptop, &b1.address, "still here?");
    let before = (b1.book.snapshot(), b1.prekeys.snapshot());
    assert_eq!(
        recv(&mut rng, b1, &laptop.address, &m),
        Err(ReceiveError::UnknownDevice)
    );
    assert!((b1.book.snapshot(), b1.prekeys.snapshot()) == before);
}

#[test]
fn an_initial_message_must_come_from_the_listed_device_key() {
    let (mut rng, mut a, mut b) = setup(5);
    let (a1, a2) = a.devices.split_at_mut(1);
    let (a1, a2, b1) = (&mut a1[0], &mut a2[0], &mut b.devices[0]);
    initiate(&mut rng, a2, b1);
    let m = send(a2, &b1.address, "pretending to be device 1");
    let before = (b1.book.snapshot(), b1.prekeys.snapshot());
    assert_eq!(
        recv(&mut rng, b1, &a1.address, &m),
        Err(ReceiveError::IdentityMismatch)
    );
    assert!((b1.book.snapshot(), b1.prekeys.snapshot()) == before);
    // A session with the wrong identity cannot be installed either.
    let bundle = PreKeyBundle::new(b1.identity.public(), b1.prekeys.signed_prekey(), None)
        .with_kem_prekey(b1.prekeys.last_resort_kem_prekey())
        .verify()
        .unwrap();
    let session = Session::initiate(&mut rng, &a1.identity, bundle).unwrap();
    assert_eq!(
        b1.book.insert(a1.address, session),
        Err(ReceiveError::IdentityMismatch)
    );
}

#[test]
fn failed_receives_change_nothing_and_snapshots_round_trip() {
    let (mut rng, mut a, mut b) = setup(6);
    let (a1, b1) = (&mut a.devices[0], &mut b.devices[0]);
    initiate(&mut rng, a1, b1);
    let m1 = send(a1, &b1.address, "one");
    assert_eq!(recv(&mut rng, b1, &a1.address, &m1).unwrap(), "one");
    let r = send(b1, &a1.address, "two");
    assert_eq!(recv(&mut rng, a1, &b1.address, &r).unwrap(), "two");
    // A replay: rejected, nothing changes, no randomness used.
    let before = (b1.book.snapshot(), b1.prekeys.snapshot(), rng.clone());
    assert!(matches!(
        recv(&mut rng, b1, &a1.address, &m1),
        Err(ReceiveError::Decrypt(_))
    ));
    assert!((b1.book.snapshot(), b1.prekeys.snapshot(), rng.clone()) == before);
    // Restart both books from snapshots and continue.
    a1.book = SessionBook::restore(&a1.book.snapshot()).unwrap();
    b1.book = SessionBook::restore(&b1.book.snapshot()).unwrap();
    assert!(
        b1.book.snapshot()
            == SessionBook::restore(&b1.book.snapshot())
                .unwrap()
                .snapshot()
    );
    let m3 = send(a1, &b1.address, "three");
    assert_eq!(recv(&mut rng, b1, &a1.address, &m3).unwrap(), "three");
    // Garbage never restores.
    assert!(SessionBook::restore(&[0x33, 0x0a, 0x05, 1, 2, 3]).is_err());
    assert!(SessionBook::restore(&[0x31]).is_err());
    let reply = send(b1, &a1.address, "four");
    assert_eq!(recv(&mut rng, a1, &b1.address, &reply).unwrap(), "four");
}

/// Establishes sessions from `from` to every other device of both accounts (one round trip
/// each, so later messages are plain ratchet messages).
fn establish_all(rng: &mut ChaCha20Rng, a: &mut Account, b: &mut Account, from: usize) {
    let mut targets: Vec<Dev> = a.devices.drain(..).collect();
    let mut others: Vec<Dev> = b.devices.drain(..).collect();
    let mut me = targets.remove(from);
    for to in targets.iter_mut().chain(others.iter_mut()) {
        initiate(rng, &mut me, to);
        let m = send(&mut me, &to.address, "setup");
        assert_eq!(recv(rng, to, &me.address, &m).unwrap(), "setup");
        let r = send(to, &me.address, "ack");
        assert_eq!(recv(rng, &mut me, &to.address, &r).unwrap(), "ack");
    }
    targets.insert(from, me);
    a.devices = targets;
    b.devices = others;
}

#[test]
fn fan_out_reaches_every_device_once_with_one_body() {
    let (mut rng, mut a, mut b) = setup(7);
    establish_all(&mut rng, &mut a, &mut b, 0);
    let (accounts, sender) = ([a.key.public(), b.key.public()], a.devices[0].address);
    let text = vec![0x5Au8; 1024];
    let out = a.devices[0]
        .book
        .fan_out(&mut rng, &accounts, &sender, &text)
        .unwrap();
    assert!(out.needs_bundle.is_empty());
    let mut reached: Vec<u32> = Vec::new();
    for (address, entry) in &out.entries {
        // Established sessions: at most 120 bytes per device beyond the shared body. Exactly
        // 109: leading byte 1 + header field 42 + ciphertext field 2 + (48-byte K || D + 16 tag).
        assert_eq!(entry.len(), 109, "entry of {} bytes", entry.len());
        let dev = a
            .devices
            .iter_mut()
            .chain(b.devices.iter_mut())
            .find(|d| d.address == *address)
            .unwrap();
        let m = Message::from_bytes(entry).unwrap();
        // A wrong body (flipped bit) is refused before anything is committed.
        let mut wrong = out.body.clone();
        wrong[10] ^= 1;
        let before = (dev.book.snapshot(), dev.prekeys.snapshot());
        assert!(matches!(
            dev.book.receive_fan_out(
                &mut rng,
                &dev.identity,
                &mut dev.prekeys,
                &sender,
                &m,
                &wrong
            ),
            Err(ReceiveError::Decrypt(
                confidant::DecryptError::Unauthenticated
            ))
        ));
        assert!((dev.book.snapshot(), dev.prekeys.snapshot()) == before);
        let got = dev
            .book
            .receive_fan_out(
                &mut rng,
                &dev.identity,
                &mut dev.prekeys,
                &sender,
                &m,
                &out.body,
            )
            .unwrap();
        assert_eq!(&got.plaintext[..], &text[..]);
        // Exactly once.
        assert!(
            dev.book
                .receive_fan_out(
                    &mut rng,
                    &dev.identity,
                    &mut dev.prekeys,
                    &sender,
                    &m,
                    &out.body
                )
                .is_err()
        );
        reached.push(
            address.device
                + if address.account == a.key.public() {
                    100
                } else {
                    200
                },
        );
    }
    reached.sort_unstable();
    assert_eq!(
        reached,
        vec![102, 201],
        "the sender's laptop and Bob's phone, not the sender"
    );
}

#[test]
fn fan_out_reports_devices_without_sessions_and_skips_removed_ones() {
    let (mut rng, mut a, mut b) = setup(8);
    let (accounts, sender) = ([a.key.public(), b.key.public()], a.devices[0].address);
    let out = a.devices[0]
        .book
        .fan_out(&mut rng, &accounts, &sender, b"hello")
        .unwrap();
    assert!(out.entries.is_empty());
    assert_eq!(
        out.needs_bundle,
        vec![a.devices[1].address, b.devices[0].address]
    );
    // After Bob's account drops its only device, only Alice's laptop remains a target.
    b.devices.clear();
    let empty = b.list();
    a.devices[0].book.apply_device_list(&empty).unwrap();
    let out = a.devices[0]
        .book
        .fan_out(&mut rng, &accounts, &sender, b"hello")
        .unwrap();
    assert_eq!(out.needs_bundle, vec![a.devices[1].address]);
}

#[test]
fn a_fan_out_is_completed_for_new_sessions_with_the_same_body() {
    let (mut rng, mut a, mut b) = setup(9);
    let (accounts, sender) = ([a.key.public(), b.key.public()], a.devices[0].address);
    let (mine, rest) = a.devices.split_at_mut(1);
    let (a1, a2, b1) = (&mut mine[0], &mut rest[0], &mut b.devices[0]);
    let mut out = a1
        .book
        .fan_out(&mut rng, &accounts, &sender, b"to everyone")
        .unwrap();
    assert!(out.entries.is_empty());
    assert_eq!(out.needs_bundle, vec![a2.address, b1.address]);
    // The sender fetches a bundle for Bob's phone only, then completes the fan-out.
    initiate(&mut rng, a1, b1);
    a1.book.complete_fan_out(&mut out);
    assert_eq!(out.needs_bundle, vec![a2.address]);
    assert_eq!(out.entries.len(), 1);
    let (to, entry) = &out.entries[0];
    assert_eq!(*to, b1.address);
    let m = Message::from_bytes(entry).unwrap();
    let got = b1
        .book
        .receive_fan_out(
            &mut rng,
            &b1.identity,
            &mut b1.prekeys,
            &sender,
            &m,
            &out.body,
        )
        .unwrap();
    assert!(got.new_session);
    assert_eq!(&got.plaintext[..], b"to everyone");
    // Then the laptop, with the same body.
    initiate(&mut rng, a1, a2);
    a1.book.complete_fan_out(&mut out);
    assert!(out.needs_bundle.is_empty());
    let m = Message::from_bytes(&out.entries[1].1).unwrap();
    let got = a2
        .book
        .receive_fan_out(
            &mut rng,
            &a2.identity,
            &mut a2.prekeys,
            &sender,
            &m,
            &out.body,
        )
        .unwrap();
    assert_eq!(&got.plaintext[..], b"to everyone");
}

#[test]
fn the_book_refuses_an_older_device_list() {
    let (_rng, mut a, mut b) = setup(10);
    let old = a.list(); // version 2
    let laptop = a.devices.remove(1);
    let newer = a.list(); // version 3, without the laptop
    let b1 = &mut b.devices[0];
    b1.book.apply_device_list(&newer).unwrap();
    let before = b1.book.snapshot();
    assert_eq!(
        b1.book.apply_device_list(&old),
        Err(confidant::DeviceListError::Rollback {
            version: 2,
            last: 3
        })
    );
    assert!(b1.book.snapshot() == before);
    // The same version again changes nothing; the laptop stays unknown, also after a restore.
    b1.book.apply_device_list(&newer).unwrap();
    assert!(b1.book.snapshot() == before);
    b1.book = SessionBook::restore(&b1.book.snapshot()).unwrap();
    assert!(b1.book.apply_device_list(&old).is_err());
    assert!(b1.book.devices().all(|(addr, _)| addr != laptop.address));
}

/// A sender-key rotation for a group of 100 devices, delivered through `fan_out_to`
/// (PROTOCOL.md §17.6): one shared body plus one 109-byte pairwise entry per other device,
/// every member installs the key and reads the group message, and after a removal the next
/// rotation reaches the 98 remaining devices only. Prints the cost (`--nocapture`).
#[test]
fn group_rotation_cost_through_fan_out() {
    use confidant::group::{GroupError, SenderKeyDistribution};
    use confidant::group::{GroupId, GroupMessage, GroupSession, RotationPolicy};

    let mut rng = ChaCha20Rng::seed_from_u64(100);
    let mut me = Account::new(&mut rng, 1);
    // 99 other devices over 7 accounts.
    let mut others: Vec<Account> = [15, 14, 14, 14, 14, 14, 14]
        .iter()
        .map(|&n| Account::new(&mut rng, n))
        .collect();
    let my_list = me.list();
    let lists: Vec<VerifiedDeviceList> = others.iter_mut().map(Account::list).collect();
    for l in &lists {
        me.devices[0].book.apply_device_list(l).unwrap();
    }
    let mut sender = me.devices.remove(0);
    for acct in &mut others {
        for to in &mut acct.devices {
            to.book.apply_device_list(&my_list).unwrap();
            initiate(&mut rng, &mut sender, to);
            let m = send(&mut sender, &to.address, "setup");
            assert_eq!(recv(&mut rng, to, &sender.address, &m).unwrap(), "setup");
            let r = send(to, &sender.address, "ack");
            assert_eq!(recv(&mut rng, &mut sender, &to.address, &r).unwrap(), "ack");
        }
    }
    let mut members = confidant::group::member_devices(lists.iter().chain([&my_list]));
    assert_eq!(members.len(), 100);
    assert!(members.contains(&sender.address));
    // Keep the sender first (the others' sessions are built from members[1..]).
    members.retain(|a| *a != sender.address);
    members.insert(0, sender.address);
    let id = GroupId::random(&mut rng);
    let policy = RotationPolicy::default();
    let mut group = GroupSession::new(id, sender.address, &members, policy).unwrap();
    let mut their_groups: Vec<GroupSession> = members[1..]
        .iter()
        .map(|a| GroupSession::new(id, *a, &members, policy).unwrap())
        .collect();

    let mut rotate_and_check = |group: &mut GroupSession,
                                members: &[Address],
                                their_groups: &mut [GroupSession],
                                others: &mut [Account],
                                text: &[u8]| {
        let sent = group.encrypt(&mut rng, T, text).unwrap();
        let distribution = sent.distribution.expect("a new key is distributed");
        assert_eq!(distribution.recipients.len(), members.len() - 1);
        let out = sender
            .book
            .fan_out_to(&mut rng, &distribution.recipients, &distribution.message)
            .unwrap();
        assert!(out.needs_bundle.is_empty());
        assert_eq!(out.entries.len(), members.len() - 1);
        assert!(out.entries.iter().all(|(_, e)| e.len() == 109));
        // Body: leading byte + (padded distribution + 16-byte tag).
        assert_eq!(
            out.body.len(),
            1 + confidant::padding::padded_len(distribution.message.len()) + 16
        );
        let upload = out.body.len() + out.entries.iter().map(|(_, e)| e.len()).sum::<usize>();
        println!(
            "rotation to {} devices: {} pairwise entries of 109 B + one {} B body \
             (distribution {} B); {} B uploaded, {} B delivered per device, group message {} B",
            members.len(),
            out.entries.len(),
            out.body.len(),
            distribution.message.len(),
            upload,
            109 + out.body.len(),
            sent.message.len()
        );
        for (address, entry) in &out.entries {
            let dev = others
                .iter_mut()
                .flat_map(|a| a.devices.iter_mut())
                .find(|d| d.address == *address)
                .unwrap();
            let got = dev
                .book
                .receive_fan_out(
                    &mut rng,
                    &dev.identity,
                    &mut dev.prekeys,
                    &sender.address,
                    &Message::from_bytes(entry).unwrap(),
                    &out.body,
                )
                .unwrap();
            let d = SenderKeyDistribution::from_bytes(&got.plaintext).unwrap();
            let g = their_groups
                .iter_mut()
                .find(|g| g.own_address() == *address)
                .unwrap();
            g.receive_distribution(&sender.address, &d).unwrap();
            let m = GroupMessage::from_bytes(&sent.message).unwrap();
            assert_eq!(&g.decrypt(&sender.address, &m).unwrap()[..], text);
        }
        sent.message
    };
    rotate_and_check(
        &mut group,
        &members,
        &mut their_groups,
        &mut others,
        b"hello 100",
    );

    // Remove one device: everyone updates the member list; the sender's next message starts a
    // new key for the 98 remaining devices, which the removed device (keeping its stale
    // session) cannot read.
    let removed = members.pop().unwrap();
    group.set_members(&members).unwrap();
    for g in their_groups
        .iter_mut()
        .filter(|g| g.own_address() != removed)
    {
        g.set_members(&members).unwrap();
    }
    let message = rotate_and_check(&mut group, &members, &mut their_groups, &mut others, b"bye");
    let stale = their_groups
        .iter_mut()
        .find(|g| g.own_address() == removed)
        .unwrap();
    let m = GroupMessage::from_bytes(&message).unwrap();
    assert!(matches!(
        stale.decrypt(&sender.address, &m),
        Err(GroupError::UnknownSenderKey { .. })
    ));
}
