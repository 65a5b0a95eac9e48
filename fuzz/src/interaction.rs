//! `interaction`: a small world of accounts and devices driven by fuzzed operations, with the
//! protocol's invariants checked after every one.
//!
//! The world: three accounts (two devices, one, one) with signed device lists applied
//! everywhere, pairwise sessions established between every two devices (in `SessionBook`s),
//! one group of all three accounts (a `GroupSession` per device), sender certificates for
//! sealed sender, and a pool of three more devices to link. It is built once per process and
//! restored from snapshots for every input. Messages travel as wire envelopes (`0x71`) through a
//! queue the fuzzer controls.
//!
//! Operations ([`Op`]): send a fan-out or a group message (sealed or not; missing pairwise
//! sessions are set up with PQXDH on demand, at most [`MAX_HANDSHAKES`] per input); deliver a
//! queued envelope to its recipient, to another device (eavesdropping), or corrupted; drop,
//! duplicate or reorder queued envelopes; snapshot and restore a device; link a device; remove
//! a device (a new signed list applied everywhere, except on the removed device, which keeps
//! its keys and keeps receiving as an adversary would); an account joins or leaves the group;
//! a device rotates its sender key.
//!
//! Invariants, on every delivery:
//! * a plaintext is only ever obtained by a device among the message's readers when it was
//!   sent, and equals what was sent. Readers: of a fan-out, the devices that got a key entry
//!   (only removed ones if the sender was removed); of a group message from a current member,
//!   the current members it was sent to. So removed devices and departed accounts read
//!   nothing sent after they left, and nobody current reads what they send (out of scope:
//!   non-members reading each other through stale sessions, and current members reading what
//!   a non-member sent once the sender is a member again, since membership is checked on
//!   receipt);
//! * each message decrypts at most once per device;
//! * a failed receive leaves the device's book, prekeys and group session byte-identical;
//! * a fan-out (or distribution) delivered intact to its recipient for the first time
//!   decrypts, while both ends are listed devices;
//! * a distribution refused leaves the group session unchanged, and so does one reported `Known`
//!   unless it announces a previous key's end ([`crate::check_distribution_outcome`]).
//!
//! After membership changes every current member's group session has exactly the members
//! derived from the verified device lists; snapshot/restore is a fixed point.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use confidant::book::{Address, SessionBook};
use confidant::certificate::{CertificateValidator, ServerCertificate};
use confidant::content::{self, Content};
use confidant::device::{DeviceEntry, DeviceList, LinkRequest, VerifiedDeviceList};
use confidant::envelope::{Envelope, EnvelopeContent, EnvelopeKind};
use confidant::group::{GroupId, GroupMessage, GroupSession, RotationPolicy, member_devices};
use confidant::{
    IdentityKey, IdentityKeyPair, Message, PreKeyBundle, PreKeys, SealedError, Session, server,
};
use rand_chacha::ChaCha20Rng;

use crate::{DAY_MS, NOW, rng};

/// Devices of each account at the start.
const INITIAL: [usize; 3] = [2, 1, 1];
/// Devices that can be linked.
const POOL: usize = 3;
/// Most operations per input.
pub const MAX_OPS: usize = 64;
/// Most queued envelopes.
const MAX_QUEUE: usize = 64;
/// Most PQXDH handshakes per input (~1 ms each).
pub const MAX_HANDSHAKES: usize = 8;
/// Sender keys rotate after this many messages.
const ROTATE_AFTER: u32 = 5;

/// One fuzzed operation. Device and account numbers are taken modulo the current counts.
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// A fan-out from `from` to the accounts in the bit mask `to_accounts`.
    FanOut {
        /// Sending device.
        from: u8,
        /// Recipient accounts, as a bit mask.
        to_accounts: u8,
        /// Sealed sender.
        sealed: bool,
        /// Plaintext filler length.
        len: u8,
    },
    /// A group message from `from` (with its distribution first when the key is new).
    Group {
        /// Sending device.
        from: u8,
        /// Sealed sender.
        sealed: bool,
        /// Plaintext filler length.
        len: u8,
    },
    /// Deliver a queued envelope to its recipient (consumed if it decrypts).
    Deliver {
        /// Queue position.
        pick: u8,
    },
    /// Deliver a queued envelope to another device (left queued).
    Eavesdrop {
        /// Queue position.
        pick: u8,
        /// Receiving device.
        dev: u8,
    },
    /// Deliver a corrupted copy of a queued envelope to its recipient.
    Tamper {
        /// Queue position.
        pick: u8,
        /// Byte position.
        at: u16,
        /// XOR mask (made non-zero).
        xor: u8,
    },
    /// Drop a queued envelope.
    Drop {
        /// Queue position.
        pick: u8,
    },
    /// Queue a copy of a queued envelope.
    Duplicate {
        /// Queue position.
        pick: u8,
    },
    /// Swap two queued envelopes.
    Reorder {
        /// Queue position.
        a: u8,
        /// Queue position.
        b: u8,
    },
    /// Snapshot a device's state and restore it.
    SnapshotRestore {
        /// The device.
        dev: u8,
    },
    /// Link a new device to an account.
    Link {
        /// The account.
        account: u8,
    },
    /// Remove a device from an account (if it has another).
    Remove {
        /// The account.
        account: u8,
        /// Which of its devices.
        which: u8,
    },
    /// An account other than the first joins or leaves the group.
    JoinLeave {
        /// The account.
        account: u8,
    },
    /// A device rotates its sender key before its next group message.
    Rotate {
        /// The device.
        dev: u8,
    },
}

struct BaseDevice {
    account: usize,
    id: u32,
    identity: IdentityKeyPair,
    prekeys: Vec<u8>,
}

/// Keys and identities, made once.
struct Base {
    server: IdentityKeyPair,
    server_certificate: Vec<u8>,
    validator: CertificateValidator,
    accounts: Vec<IdentityKeyPair>,
    devices: Vec<BaseDevice>,
    pool: Vec<(IdentityKeyPair, Vec<u8>)>,
    group_id: GroupId,
}

fn base() -> &'static Base {
    static B: OnceLock<Base> = OnceLock::new();
    B.get_or_init(|| {
        let mut rng = rng(0x1_47e4);
        let root = IdentityKeyPair::generate(&mut rng);
        let server = IdentityKeyPair::generate(&mut rng);
        let server_certificate = ServerCertificate::issue(&root, 1, &server.public());
        let accounts: Vec<_> = INITIAL
            .iter()
            .map(|_| IdentityKeyPair::generate(&mut rng))
            .collect();
        let device = |rng: &mut ChaCha20Rng| {
            let identity = IdentityKeyPair::generate(rng);
            let prekeys = PreKeys::new(rng, &identity, NOW).snapshot().to_vec();
            (identity, prekeys)
        };
        let mut devices = Vec::new();
        for (account, count) in INITIAL.iter().enumerate() {
            for id in 1..=*count {
                let (identity, prekeys) = device(&mut rng);
                devices.push(BaseDevice {
                    account,
                    id: u32::try_from(id).unwrap_or(1),
                    identity,
                    prekeys,
                });
            }
        }
        let pool = (0..POOL).map(|_| device(&mut rng)).collect();
        Base {
            validator: CertificateValidator::new(root.public()),
            server,
            server_certificate,
            accounts,
            devices,
            pool,
            group_id: GroupId::random(&mut rng),
        }
    })
}

/// The account keys of the world (device lists are verified under them).
#[must_use]
pub fn account_keys() -> Vec<IdentityKey> {
    base()
        .accounts
        .iter()
        .map(IdentityKeyPair::public)
        .collect()
}

fn account_id(account: usize) -> Vec<u8> {
    format!("account-{account}").into_bytes()
}

/// A device's persistent state as snapshots.
struct DevSnapshot {
    book: Vec<u8>,
    prekeys: Vec<u8>,
    group: Vec<u8>,
}

struct Dev {
    identity: &'static IdentityKeyPair,
    address: Address,
    account: usize,
    prekeys: PreKeys,
    book: SessionBook,
    group: GroupSession,
    certificate: Vec<u8>,
    removed: bool,
}

impl Dev {
    fn snapshot(&self) -> DevSnapshot {
        DevSnapshot {
            book: self.book.snapshot().to_vec(),
            prekeys: self.prekeys.snapshot().to_vec(),
            group: self.group.snapshot().to_vec(),
        }
    }
}

impl PartialEq for DevSnapshot {
    fn eq(&self, other: &Self) -> bool {
        self.book == other.book && self.prekeys == other.prekeys && self.group == other.group
    }
}

#[derive(Clone)]
struct AccountState {
    list: VerifiedDeviceList,
    next_id: u32,
    in_group: bool,
}

#[derive(Clone)]
struct Queued {
    id: usize,
    to: usize,
    envelope: Vec<u8>,
}

struct Sent {
    sender: usize,
    readers: BTreeSet<usize>,
    /// A group message its sender sent while not a current member: should the sender become
    /// a member again, current members may read it (membership is checked on receipt; the
    /// sender chose to send it). A current member's message never widens this way.
    from_outsider: bool,
    /// Delivered through a pairwise session (fan-out entry): liveness is checked.
    pairwise: bool,
}

/// How a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivered {
    Plaintext,
    /// A sealed decoy opened by its own sender (`SealedError::FromSelf`): dropped.
    Decoy,
    Failed,
}

/// What a delivery gave.
enum Outcome {
    Failed(String),
    FromSelf,
    Plaintext(Vec<u8>),
}

struct World {
    devs: Vec<Dev>,
    accounts: Vec<AccountState>,
    queue: Vec<Queued>,
    sent: Vec<Sent>,
    by_plaintext: BTreeMap<Vec<u8>, Vec<usize>>,
    decrypted: BTreeSet<(usize, usize)>,
    rng: ChaCha20Rng,
    pool_used: usize,
    handshakes: usize,
    max_handshakes: usize,
    /// Multi-recipient uploads made (kept for seeds only when set).
    uploads: Option<Vec<Vec<u8>>>,
    /// Print every operation and delivery (`FUZZ_TRACE=1`, to read a crash).
    trace: bool,
}

/// The world after set-up, as snapshots.
struct Fixture {
    devices: Vec<(DevSnapshot, Vec<u8>)>,
    accounts: Vec<AccountState>,
}

fn policy() -> RotationPolicy {
    RotationPolicy {
        max_messages: Some(ROTATE_AFTER),
        max_age_ms: None,
    }
}

fn certificate(list: &VerifiedDeviceList, id: u32) -> Vec<u8> {
    let b = base();
    server::issue_sender_certificate(
        &b.server,
        &b.server_certificate,
        list,
        id,
        NOW.plus_ms(30 * DAY_MS),
    )
    .expect("a listed device is certified")
}

impl World {
    /// The world with lists applied and no sessions.
    fn fresh() -> Self {
        let b = base();
        let accounts: Vec<AccountState> = b
            .accounts
            .iter()
            .enumerate()
            .map(|(a, key)| {
                let devices: Vec<(&IdentityKeyPair, u32)> = b
                    .devices
                    .iter()
                    .filter(|d| d.account == a)
                    .map(|d| (&d.identity, d.id))
                    .collect();
                let next_id = devices.len() as u32 + 1;
                let (_, list) = crate::device_list(key, &account_id(a), &devices, 1);
                AccountState {
                    list,
                    next_id,
                    in_group: true,
                }
            })
            .collect();
        let members = member_devices(accounts.iter().map(|a| &a.list));
        let devs = b
            .devices
            .iter()
            .map(|d| {
                let address = Address {
                    account: b.accounts[d.account].public(),
                    device: d.id,
                };
                let mut book = SessionBook::new();
                for a in &accounts {
                    book.apply_device_list(&a.list).expect("apply list");
                }
                Dev {
                    identity: &d.identity,
                    address,
                    account: d.account,
                    prekeys: PreKeys::restore(&d.prekeys).expect("prekeys"),
                    book,
                    group: GroupSession::new(b.group_id, address, &members, policy())
                        .expect("group session"),
                    certificate: certificate(&accounts[d.account].list, d.id),
                    removed: false,
                }
            })
            .collect();
        Self::with(devs, accounts, usize::MAX, 0xb11d)
    }

    /// A world of these devices. `seed`: its RNG's. The set-up and the fuzzed runs must use
    /// different seeds: a run's first handshake would otherwise draw the set-up's first
    /// ephemeral key again, and the recipient rightly refuses it as a replay.
    fn with(devs: Vec<Dev>, accounts: Vec<AccountState>, max_handshakes: usize, seed: u64) -> Self {
        Self {
            devs,
            accounts,
            queue: Vec::new(),
            sent: Vec::new(),
            by_plaintext: BTreeMap::new(),
            decrypted: BTreeSet::new(),
            rng: rng(seed),
            pool_used: 0,
            handshakes: 0,
            max_handshakes,
            uploads: None,
            trace: std::env::var_os("FUZZ_TRACE").is_some(),
        }
    }

    /// The world restored from the fixture.
    fn restore() -> Self {
        let b = base();
        let f = fixture();
        let devs = f
            .devices
            .iter()
            .zip(&b.devices)
            .map(|((s, certificate), d)| Dev {
                identity: &d.identity,
                address: Address {
                    account: b.accounts[d.account].public(),
                    device: d.id,
                },
                account: d.account,
                prekeys: PreKeys::restore(&s.prekeys).expect("prekeys"),
                book: SessionBook::restore(&s.book).expect("book"),
                group: GroupSession::restore(&s.group).expect("group"),
                certificate: certificate.clone(),
                removed: false,
            })
            .collect();
        Self::with(devs, f.accounts.clone(), MAX_HANDSHAKES, 0xf022)
    }

    fn index_of(&self, address: &Address) -> Option<usize> {
        self.devs.iter().position(|d| d.address == *address)
    }

    fn canonical_members(&self) -> Vec<Address> {
        member_devices(self.accounts.iter().filter(|a| a.in_group).map(|a| &a.list))
    }

    /// Sets up a session from `from` to `to` from `to`'s bundle, as fetched from a key server.
    fn establish(&mut self, from: usize, to: &Address) {
        if self.handshakes >= self.max_handshakes {
            return;
        }
        let Some(t) = self.index_of(to) else {
            return;
        };
        let target = &self.devs[t];
        let Some(listed) = self.devs[from].book.device_key(to) else {
            return;
        };
        let bundle = PreKeyBundle::new(
            target.identity.public(),
            target.prekeys.signed_prekey(),
            None,
        )
        .with_kem_prekey(target.prekeys.last_resort_kem_prekey())
        .to_bytes();
        let verified = PreKeyBundle::from_bytes(&bundle)
            .expect("bundle parses")
            .verify_for(&listed)
            .expect("bundle verifies for the listed key");
        self.handshakes += 1;
        if self.trace {
            eprintln!("   handshake {from} -> {t}");
        }
        let session =
            Session::initiate(&mut self.rng, self.devs[from].identity, verified).expect("initiate");
        self.devs[from]
            .book
            .insert(*to, session)
            .expect("insert the new session");
    }

    fn record(
        &mut self,
        sender: usize,
        plaintext: Vec<u8>,
        readers: BTreeSet<usize>,
        pairwise: bool,
        from_outsider: bool,
    ) -> usize {
        let id = self.sent.len();
        self.by_plaintext.entry(plaintext).or_default().push(id);
        self.sent.push(Sent {
            sender,
            readers,
            from_outsider,
            pairwise,
        });
        id
    }

    fn enqueue(&mut self, id: usize, upload: &[u8]) {
        if let Some(u) = self.uploads.as_mut() {
            u.push(upload.to_vec());
        }
        for envelope in server::split_upload(upload).expect("an upload made here splits") {
            let Some(to) = self.index_of(&envelope.recipient) else {
                continue;
            };
            self.push(Queued {
                id,
                to,
                envelope: envelope.to_bytes(),
            });
        }
    }

    fn push(&mut self, item: Queued) {
        if self.queue.len() >= MAX_QUEUE {
            self.queue.remove(0);
        }
        self.queue.push(item);
    }

    /// A fan-out of `plaintext` from `from` to `targets` (account keys, or exactly `devices`).
    fn fan_out(
        &mut self,
        from: usize,
        accounts: Option<&[IdentityKey]>,
        devices: &[Address],
        plaintext: Vec<u8>,
        sealed: bool,
    ) {
        let sender = self.devs[from].address;
        let rng = &mut self.rng;
        let book = &mut self.devs[from].book;
        let mut fan_out = match accounts {
            Some(accounts) => book.fan_out(rng, accounts, &sender, &plaintext),
            None => book.fan_out_to(rng, devices, &plaintext),
        }
        .expect("a small plaintext fans out");
        if !self.devs[from].removed {
            for address in fan_out.needs_bundle.clone() {
                self.establish(from, &address);
            }
            self.devs[from].book.complete_fan_out(&mut fan_out);
        }
        // A removed device's entries are readable only by devices removed before it (their
        // stale books still list it): never by a listed device.
        let removed = self.devs[from].removed;
        let readers = fan_out
            .entries
            .iter()
            .filter_map(|(a, _)| self.index_of(a))
            .filter(|&i| !removed || self.devs[i].removed)
            .collect();
        if self.trace {
            eprintln!(
                "   fan-out #{} from {from} to {readers:?} (no session: {:?})",
                self.sent.len(),
                fan_out.needs_bundle
            );
        }
        let id = self.record(from, plaintext, readers, true, false);
        if fan_out.entries.is_empty() {
            return;
        }
        let dev = &self.devs[from];
        let upload = if sealed {
            // A decoy to the sender itself when its own account is among the recipients (as
            // `fan_out_sealed` decides), and for distributions (`accounts` is `None`).
            let decoy = accounts.is_none_or(|a| a.contains(&sender.account));
            dev.book
                .seal_fan_out(
                    &mut self.rng,
                    dev.identity,
                    &dev.certificate,
                    &fan_out,
                    decoy,
                )
                .expect("seal a fan-out")
        } else {
            fan_out.to_upload(&sender)
        };
        self.enqueue(id, &upload);
    }

    fn group_send(&mut self, from: usize, plaintext: Vec<u8>, sealed: bool) {
        let sent = self.devs[from]
            .group
            .encrypt(&mut self.rng, NOW, &plaintext)
            .expect("group encrypt");
        if let Some(d) = sent.distribution {
            self.fan_out(from, None, &d.recipients, d.message.to_vec(), sealed);
        }
        let own = self.devs[from].address;
        let recipients: Vec<Address> = self.devs[from]
            .group
            .members()
            .filter(|a| **a != own)
            .copied()
            .collect();
        // A current member's message is for current members only; a non-member's (removed,
        // or of an account that left) may reach other non-members whose stale sessions still
        // list it, never a current member.
        let canonical = self.canonical_members();
        let member = !self.devs[from].removed && canonical.contains(&own);
        let readers = recipients
            .iter()
            .filter(|a| canonical.contains(a) == member)
            .filter_map(|a| self.index_of(a))
            .collect();
        if self.trace {
            eprintln!("   group #{} from {from} to {readers:?}", self.sent.len());
        }
        let id = self.record(from, plaintext, readers, false, !member);
        if sealed {
            let dev = &self.devs[from];
            let known: Vec<Address> = recipients
                .iter()
                .filter(|a| dev.book.device_key(a).is_some())
                .copied()
                .collect();
            if known.is_empty() {
                return;
            }
            let (upload, unknown) = dev
                .book
                .seal_to(
                    &mut self.rng,
                    dev.identity,
                    &dev.certificate,
                    EnvelopeKind::Group,
                    &sent.message,
                    &known,
                )
                .expect("seal a group message");
            assert!(unknown.is_empty(), "seal_to left out a listed device");
            self.enqueue(id, &upload);
        } else {
            for recipient in recipients {
                let Some(to) = self.index_of(&recipient) else {
                    continue;
                };
                let envelope = Envelope {
                    recipient,
                    content: EnvelopeContent::Group {
                        sender: own,
                        message: sent.message.clone(),
                    },
                };
                self.push(Queued {
                    id,
                    to,
                    envelope: envelope.to_bytes(),
                });
            }
        }
    }

    /// Receives `bytes` at device `to`; the group part of a distribution is checked here.
    fn receive(&mut self, to: usize, bytes: &[u8]) -> Outcome {
        let validator = &base().validator;
        let Ok(envelope) = Envelope::from_bytes(bytes) else {
            return Outcome::Failed("envelope".into());
        };
        let dev = &mut self.devs[to];
        let content = match envelope.content {
            EnvelopeContent::Sealed(sealed) => {
                match dev.book.open_sealed(dev.identity, validator, NOW, &sealed) {
                    Ok(unsealed) => {
                        assert!(
                            dev.book.verify_sealed_sender(&unsealed).is_ok(),
                            "open_sealed returned an unverified sender"
                        );
                        unsealed.content
                    }
                    Err(SealedError::FromSelf) => return Outcome::FromSelf,
                    Err(e) => return Outcome::Failed(format!("open sealed: {e:?}")),
                }
            }
            other => other,
        };
        let (sender, received) = match content {
            EnvelopeContent::FanOut {
                sender,
                entry,
                body,
            } => {
                let Ok(message) = Message::from_bytes(&entry) else {
                    return Outcome::Failed("entry".into());
                };
                let r = dev.book.receive_fan_out(
                    &mut self.rng,
                    dev.identity,
                    &mut dev.prekeys,
                    &sender,
                    &message,
                    &body,
                );
                (sender, r)
            }
            EnvelopeContent::PreKey { sender, message }
            | EnvelopeContent::Ratchet { sender, message } => {
                let Ok(message) = Message::from_bytes(&message) else {
                    return Outcome::Failed("message".into());
                };
                let r = dev.book.receive(
                    &mut self.rng,
                    dev.identity,
                    &mut dev.prekeys,
                    &sender,
                    &message,
                );
                (sender, r)
            }
            EnvelopeContent::Group { sender, message } => {
                let Ok(message) = GroupMessage::from_bytes(&message) else {
                    return Outcome::Failed("group message".into());
                };
                if self.trace {
                    eprintln!(
                        "   group message from {sender} (key {}, iteration {}): member here {}, key here {}",
                        message.key_id(),
                        message.iteration(),
                        dev.group.is_member(&sender),
                        dev.group.has_sender_key(&sender)
                    );
                }
                return match dev.group.decrypt(&sender, &message) {
                    Ok(plaintext) => Outcome::Plaintext(plaintext.to_vec()),
                    Err(e) => Outcome::Failed(format!("group decrypt: {e:?}")),
                };
            }
            EnvelopeContent::Sealed(_) => return Outcome::Failed("nested sealed".into()),
        };
        let plaintext = match received {
            Ok(r) => r.plaintext.to_vec(),
            Err(e) => return Outcome::Failed(format!("pairwise receive: {e:?}")),
        };
        if let Ok(Content::Distribution(d)) = content::parse(&plaintext) {
            let before = dev.group.snapshot();
            let result = dev.group.receive_distribution(&sender, &d);
            if self.trace {
                eprintln!(
                    "   distribution from {sender} (key {}, iteration {}): {result:?}",
                    d.key_id(),
                    d.iteration()
                );
            }
            crate::check_distribution_outcome(&mut dev.group, &before, &sender, &d, &result);
        }
        Outcome::Plaintext(plaintext)
    }

    /// Whether device `to` may read message `id` now.
    fn may_read(&self, to: usize, id: usize) -> bool {
        let sent = &self.sent[id];
        if sent.readers.contains(&to) {
            return true;
        }
        let members = self.canonical_members();
        let member = |i: usize| !self.devs[i].removed && members.contains(&self.devs[i].address);
        // A non-member's message: current members may read it once the sender is a member
        // again (membership is checked on receipt); a device that is itself no longer a member
        // may read it through its stale session (non-members reading each other is out of
        // scope, whenever the reader stopped being a member).
        sent.from_outsider && ((member(sent.sender) && member(to)) || !member(to))
    }

    /// Whether message `id` must decrypt at `to` now (liveness of pairwise delivery).
    fn must_receive(&self, to: usize, id: usize) -> bool {
        let sent = &self.sent[id];
        let (r, s) = (&self.devs[to], &self.devs[sent.sender]);
        sent.pairwise
            && sent.readers.contains(&to)
            && !r.removed
            && !s.removed
            && r.book.device_key(&s.address) == Some(s.identity.public())
            && !self.decrypted.contains(&(to, id))
    }

    /// Delivers `bytes` (an envelope of message `id`, possibly corrupted or misdelivered) to
    /// `to` and checks the invariants. `genuine`: intact, to its recipient.
    fn deliver(&mut self, to: usize, bytes: &[u8], id: usize, genuine: bool) -> Delivered {
        let before = self.devs[to].snapshot();
        let outcome = self.receive(to, bytes);
        if self.trace {
            let what = match &outcome {
                Outcome::Failed(reason) => reason.clone(),
                Outcome::FromSelf => "decoy (FromSelf)".to_string(),
                Outcome::Plaintext(p) => format!("ok {}", String::from_utf8_lossy(p)),
            };
            eprintln!("   deliver #{id} to {to} (genuine {genuine}): {what}");
        }
        match outcome {
            Outcome::Failed(reason) => {
                assert!(
                    before == self.devs[to].snapshot(),
                    "a failed receive ({reason}) changed the device's state"
                );
                assert!(
                    !(genuine && self.must_receive(to, id)),
                    "an intact fan-out to its recipient failed: {reason}"
                );
                Delivered::Failed
            }
            Outcome::FromSelf => {
                // Only the sender itself gets `FromSelf` (its decoy is sealed to its own
                // identity); anyone else gets a plain authentication failure.
                assert!(
                    self.sent[id].sender == to,
                    "FromSelf at a device that did not send the message"
                );
                assert!(
                    before == self.devs[to].snapshot(),
                    "a decoy changed the device's state"
                );
                Delivered::Decoy
            }
            Outcome::Plaintext(plaintext) => {
                let ids = self
                    .by_plaintext
                    .get(&plaintext)
                    .expect("decrypted a plaintext nobody sent");
                let id = ids
                    .iter()
                    .copied()
                    .find(|id| self.may_read(to, *id) && !self.decrypted.contains(&(to, *id)));
                let Some(id) = id else {
                    let readers = ids.iter().any(|id| self.may_read(to, *id));
                    panic!(
                        "device {to} decrypted a message {}",
                        if readers {
                            "a second time"
                        } else {
                            "it was not a reader of when sent"
                        }
                    );
                };
                self.decrypted.insert((to, id));
                Delivered::Plaintext
            }
        }
    }

    fn publish_list(&mut self, account: usize, entries: Vec<DeviceEntry>) {
        let key = &base().accounts[account];
        let state = &self.accounts[account];
        let bytes = DeviceList {
            account_id: account_id(account),
            version: state.list.version() + 1,
            timestamp: NOW,
            entries,
        }
        .sign(key)
        .expect("sign the new list");
        let list = VerifiedDeviceList::verify(&bytes, &key.public(), Some(&state.list))
            .expect("the new list verifies as a successor");
        for dev in self.devs.iter_mut().filter(|d| !d.removed) {
            dev.book
                .apply_device_list(&list)
                .expect("apply the new list");
        }
        self.accounts[account].list = list;
    }

    /// Applies the current membership to every current member's group session and sends the
    /// distributions that requires.
    fn update_group(&mut self, sealed: bool) {
        let members = self.canonical_members();
        let mut distributions = Vec::new();
        for (i, dev) in self.devs.iter_mut().enumerate() {
            if dev.removed || !self.accounts[dev.account].in_group {
                continue;
            }
            let update = dev
                .group
                .set_members(&members)
                .expect("a member's group session takes the member list");
            if let Some(d) = update.distribution {
                distributions.push((i, d.recipients.clone(), d.message.to_vec()));
            }
            let now: Vec<Address> = dev.group.members().copied().collect();
            assert!(
                now == members,
                "a group session's members differ from the lists'"
            );
        }
        for (from, recipients, message) in distributions {
            self.fan_out(from, None, &recipients, message, sealed);
        }
    }

    fn link(&mut self, account: usize) {
        let b = base();
        let Some((identity, prekeys)) = b.pool.get(self.pool_used) else {
            return;
        };
        self.pool_used += 1;
        let key = &b.accounts[account];
        let id = self.accounts[account].next_id;
        self.accounts[account].next_id += 1;
        let request =
            LinkRequest::from_bytes(&LinkRequest::new(identity, &key.public()).to_bytes())
                .expect("link request parses");
        let entry = DeviceEntry::link(key, &request, id).expect("link");
        let mut entries = self.accounts[account].list.entries().to_vec();
        entries.push(entry);
        self.publish_list(account, entries);
        let address = Address {
            account: key.public(),
            device: id,
        };
        let mut book = SessionBook::new();
        for a in &self.accounts {
            book.apply_device_list(&a.list).expect("apply list");
        }
        let members = if self.accounts[account].in_group {
            self.canonical_members()
        } else {
            vec![address]
        };
        self.devs.push(Dev {
            identity,
            address,
            account,
            prekeys: PreKeys::restore(prekeys).expect("pool prekeys"),
            book,
            group: GroupSession::new(b.group_id, address, &members, policy())
                .expect("group session"),
            certificate: certificate(&self.accounts[account].list, id),
            removed: false,
        });
        self.update_group(false);
    }

    fn remove(&mut self, account: usize, which: u8) {
        let alive: Vec<usize> = (0..self.devs.len())
            .filter(|&i| self.devs[i].account == account && !self.devs[i].removed)
            .collect();
        if alive.len() < 2 {
            return;
        }
        let gone = alive[usize::from(which) % alive.len()];
        self.devs[gone].removed = true;
        let id = self.devs[gone].address.device;
        let entries = self.accounts[account]
            .list
            .entries()
            .iter()
            .filter(|e| e.device_id() != id)
            .cloned()
            .collect();
        self.publish_list(account, entries);
        self.update_group(false);
    }

    fn snapshot_restore(&mut self, i: usize) {
        let dev = &mut self.devs[i];
        let s = dev.snapshot();
        dev.book = SessionBook::restore(&s.book).expect("book snapshot restores");
        dev.prekeys = PreKeys::restore(&s.prekeys).expect("prekeys snapshot restores");
        dev.group = GroupSession::restore(&s.group).expect("group snapshot restores");
        assert!(dev.snapshot() == s, "snapshot/restore is not a fixed point");
    }

    fn plaintext(&self, from: usize, len: u8) -> Vec<u8> {
        crate::app_text(
            &format!("#{} from {from}", self.sent.len()),
            usize::from(len % 64),
        )
    }

    fn pick(&self, pick: u8) -> Option<usize> {
        (!self.queue.is_empty()).then(|| usize::from(pick) % self.queue.len())
    }

    fn apply(&mut self, op: &Op) {
        if self.trace {
            eprintln!(
                "op {op:?} (queue {}, handshakes {})",
                self.queue.len(),
                self.handshakes
            );
        }
        let n = self.devs.len();
        let dev = |d: u8| usize::from(d) % n;
        match *op {
            Op::FanOut {
                from,
                to_accounts,
                sealed,
                len,
            } => {
                let from = dev(from);
                let accounts: Vec<IdentityKey> = (0..self.accounts.len())
                    .filter(|a| to_accounts & (1 << a) != 0)
                    .map(|a| base().accounts[a].public())
                    .collect();
                let plaintext = self.plaintext(from, len);
                self.fan_out(from, Some(&accounts), &[], plaintext, sealed);
            }
            Op::Group { from, sealed, len } => {
                let from = dev(from);
                let plaintext = self.plaintext(from, len);
                self.group_send(from, plaintext, sealed);
            }
            Op::Deliver { pick } => {
                if let Some(i) = self.pick(pick) {
                    let item = self.queue.remove(i);
                    match self.deliver(item.to, &item.envelope, item.id, true) {
                        Delivered::Plaintext | Delivered::Decoy => {}
                        // Held back (a group message before its key, say): to the back.
                        Delivered::Failed => self.push(item),
                    }
                }
            }
            Op::Eavesdrop { pick, dev: d } => {
                if let Some(i) = self.pick(pick) {
                    let item = self.queue[i].clone();
                    self.deliver(dev(d), &item.envelope, item.id, false);
                }
            }
            Op::Tamper { pick, at, xor } => {
                if let Some(i) = self.pick(pick) {
                    let item = self.queue[i].clone();
                    let mut bytes = item.envelope;
                    let at = usize::from(at) % bytes.len().max(1);
                    if let Some(b) = bytes.get_mut(at) {
                        *b ^= xor | 1;
                    }
                    self.deliver(item.to, &bytes, item.id, false);
                }
            }
            Op::Drop { pick } => {
                if let Some(i) = self.pick(pick) {
                    self.queue.remove(i);
                }
            }
            Op::Duplicate { pick } => {
                if let Some(i) = self.pick(pick) {
                    let item = self.queue[i].clone();
                    self.push(item);
                }
            }
            Op::Reorder { a, b } => {
                if let (Some(a), Some(b)) = (self.pick(a), self.pick(b)) {
                    self.queue.swap(a, b);
                }
            }
            Op::SnapshotRestore { dev: d } => self.snapshot_restore(dev(d)),
            Op::Link { account } => self.link(usize::from(account) % self.accounts.len()),
            Op::Remove { account, which } => {
                self.remove(usize::from(account) % self.accounts.len(), which);
            }
            Op::JoinLeave { account } => {
                let a = 1 + usize::from(account) % (self.accounts.len() - 1);
                self.accounts[a].in_group = !self.accounts[a].in_group;
                self.update_group(false);
            }
            Op::Rotate { dev: d } => self.devs[dev(d)].group.rotate(),
        }
    }
}

fn build() -> Fixture {
    let mut w = World::fresh();
    // Full mesh: every pair exchanges a fan-out each way (the first sets up the session).
    let n = w.devs.len();
    for i in 0..n {
        for j in i + 1..n {
            let (a, b) = (w.devs[i].address, w.devs[j].address);
            let hello = w.plaintext(i, 0);
            w.fan_out(i, None, &[b], hello, false);
            let reply = w.plaintext(j, 0);
            while let Some(item) = w.queue.pop() {
                let d = w.deliver(item.to, &item.envelope, item.id, true);
                assert!(d == Delivered::Plaintext, "set-up delivery");
            }
            w.fan_out(j, None, &[a], reply, false);
            while let Some(item) = w.queue.pop() {
                let d = w.deliver(item.to, &item.envelope, item.id, true);
                assert!(d == Delivered::Plaintext, "set-up delivery");
            }
        }
    }
    for i in 0..n {
        for j in 0..n {
            if i != j {
                let to = w.devs[j].address;
                assert!(
                    w.devs[i].book.session_count(&to) == 1,
                    "one session per pair"
                );
            }
        }
    }
    Fixture {
        devices: w
            .devs
            .iter()
            .map(|d| (d.snapshot(), d.certificate.clone()))
            .collect(),
        accounts: w.accounts.clone(),
    }
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(build)
}

/// What a run did: messages sent, deliveries that decrypted, PQXDH handshakes, devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Messages sent (fan-outs, distributions, group messages).
    pub sent: usize,
    /// Deliveries that decrypted.
    pub decrypted: usize,
    /// Handshakes made.
    pub handshakes: usize,
    /// Devices in the world at the end (removed ones included).
    pub devices: usize,
}

/// Runs `ops` on a freshly restored world.
pub fn run_ops(ops: &[Op]) -> Stats {
    let t = std::time::Instant::now();
    let mut w = World::restore();
    if w.trace {
        eprintln!("world restored in {:?}", t.elapsed());
    }
    for op in ops.iter().take(MAX_OPS) {
        w.apply(op);
    }
    Stats {
        sent: w.sent.len(),
        decrypted: w.decrypted.len(),
        handshakes: w.handshakes,
        devices: w.devs.len(),
    }
}

/// A scripted run through every operation, checking it does what it should (so the target is
/// not vacuous): fan-outs and group messages decrypt, a removed device and a departed account
/// read nothing new, a linked device joins in. Run by `gen_seeds --check`.
///
/// # Panics
/// If the world does not behave as scripted.
pub fn self_test() -> Stats {
    let deliver_all = |n: u8| (0..n).map(|_| Op::Deliver { pick: 0 }).collect::<Vec<_>>();
    let mut ops = vec![
        Op::FanOut {
            from: 0,
            to_accounts: 7,
            sealed: false,
            len: 1,
        },
        Op::FanOut {
            from: 2,
            to_accounts: 7,
            sealed: true,
            len: 2,
        },
        Op::Group {
            from: 1,
            sealed: false,
            len: 3,
        },
        Op::Group {
            from: 3,
            sealed: true,
            len: 4,
        },
    ];
    ops.extend(deliver_all(40));
    ops.extend([
        Op::SnapshotRestore { dev: 0 },
        Op::Remove {
            account: 0,
            which: 1,
        },
        Op::Group {
            from: 0,
            sealed: false,
            len: 5,
        },
        Op::Eavesdrop { pick: 0, dev: 1 },
        Op::Eavesdrop { pick: 1, dev: 1 },
        Op::JoinLeave { account: 1 },
        Op::Group {
            from: 0,
            sealed: true,
            len: 6,
        },
        Op::Link { account: 1 },
        Op::FanOut {
            from: 4,
            to_accounts: 7,
            sealed: false,
            len: 7,
        },
        Op::Duplicate { pick: 0 },
        Op::Tamper {
            pick: 1,
            at: 40,
            xor: 0x10,
        },
        Op::Rotate { dev: 3 },
    ]);
    ops.extend(deliver_all(40));
    let mut w = World::restore();
    for op in &ops {
        w.apply(op);
    }
    let stats = Stats {
        sent: w.sent.len(),
        decrypted: w.decrypted.len(),
        handshakes: w.handshakes,
        devices: w.devs.len(),
    };
    assert!(
        w.devs[1].removed && stats.devices == 5,
        "remove and link: {stats:?}"
    );
    assert!(
        stats.handshakes >= 1,
        "the linked device needs sessions: {stats:?}"
    );
    assert!(stats.decrypted >= 20, "deliveries decrypt: {stats:?}");
    stats
}

/// The `interaction` target.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut ops = Vec::new();
    while ops.len() < MAX_OPS && !u.is_empty() {
        match u.arbitrary::<Op>() {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    run_ops(&ops);
}

/// The initial devices' snapshots (seeds for `restore_snapshots`).
#[must_use]
pub fn snapshots() -> Vec<Vec<u8>> {
    fixture()
        .devices
        .iter()
        .flat_map(|(s, _)| [s.book.clone(), s.prekeys.clone(), s.group.clone()])
        .collect()
}

/// A short scripted run's uploads and envelopes (seeds for `decode_wire`).
#[must_use]
pub fn sample_uploads() -> Vec<Vec<u8>> {
    let mut w = World::restore();
    w.uploads = Some(Vec::new());
    for op in [
        Op::FanOut {
            from: 0,
            to_accounts: 7,
            sealed: false,
            len: 3,
        },
        Op::FanOut {
            from: 2,
            to_accounts: 1,
            sealed: true,
            len: 3,
        },
        Op::Group {
            from: 1,
            sealed: true,
            len: 3,
        },
    ] {
        w.apply(&op);
    }
    let mut out = w.uploads.take().unwrap_or_default();
    out.extend(w.queue.iter().map(|q| q.envelope.clone()));
    out
}

/// Seeds: random operation sequences of several lengths (libFuzzer finds the structure).
#[must_use]
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut r = rng(0x5eed_1417);
    [16usize, 48, 96, 160, 256, 400, 640, 1024]
        .iter()
        .enumerate()
        .map(|(i, len)| {
            let mut bytes = vec![0u8; *len];
            rand_chacha::rand_core::Rng::fill_bytes(&mut r, &mut bytes);
            (format!("random-{i}"), bytes)
        })
        .collect()
}
