//! Multi-device simulation (PROTOCOL.md §14–§16): three accounts of up to five devices each,
//! signed device lists, session books and encrypt-once fan-out over an untrusted relay that
//! reorders, drops, duplicates and replays, with devices going offline, being linked and
//! removed, initiating simultaneously, and restarting from snapshots. Many seeded runs.
//!
//! Checked: every message decrypts exactly once, to its plaintext, at every device listed in
//! the target accounts and the sender's account (minus the sender) at send time whose copy the
//! relay did not drop; duplicates, replays and misrouted entries are rejected and a failed
//! receive changes neither the book, nor `PreKeys`, nor the RNG; a removed device decrypts
//! nothing sent after its removal; forged and rolled-back lists are rejected and change no book;
//! a restored device continues byte for byte as the original would have.
//!
//! Two modelling choices follow the library's documented behaviour: an entry whose sender was
//! removed before it is delivered is refused as `UnknownDevice` (PROTOCOL.md §15.2 drops the
//! removed device's sessions), and is counted as such instead of as reached; and when a fan-out
//! reports `needs_bundle`, the second fan-out's entries are sent only to those devices (the
//! others are discarded, so their receivers skip one message key).
//!
//! `MULTIDEVICE_SEEDS`, `MULTIDEVICE_FIRST_SEED` and `MULTIDEVICE_OPS` override the seed range
//! and the operations per seed for longer soak runs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};

use confidant::book::{Address, ReceiveError, Received, SessionBook};
use confidant::device::{DeviceEntry, DeviceList, LinkRequest, VerifiedDeviceList};
use confidant::fanout::FanOut;
use confidant::limits::MAX_ARCHIVED_SESSIONS;
use confidant::{
    DecryptError, DeviceListError, IdentityKey, IdentityKeyPair, KemPreKeyPublic, Message,
    OneTimePreKeyPublic, PreKeyBundle, PreKeys, Session, Timestamp,
};
use ed25519_dalek::Signer;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

const T: Timestamp = Timestamp(1_795_000_000_000);
/// Seeds simulated.
const SEEDS: u64 = 32;
/// Random operations per seed (before the final drain and round).
const OPS: usize = 200;
const ACCOUNTS: usize = 3;
/// Listed devices per account at most.
const MAX_DEVICES: usize = 5;
/// Shadowed calls a restored device is compared with its original for.
const SHADOW_USES: u32 = 6;
/// Signature context of a device list body (PROTOCOL.md §14.1).
const LIST_CONTEXT: &[u8] = b"confidant/device-list/v1";

// ---- Device-list wire format (PROTOCOL.md §14.3), to craft forged lists -----------------------

#[derive(Clone, PartialEq, prost::Message)]
struct EntryWire {
    #[prost(uint32, tag = "1")]
    device_id: u32,
    #[prost(bytes = "vec", tag = "2")]
    device_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    account_signature: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    device_signature: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct BodyWire {
    #[prost(bytes = "vec", tag = "1")]
    account_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    account_key: Vec<u8>,
    #[prost(uint64, tag = "3")]
    version: u64,
    #[prost(uint64, tag = "4")]
    timestamp: u64,
    #[prost(message, repeated, tag = "5")]
    entries: Vec<EntryWire>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SignedWire {
    #[prost(bytes = "vec", tag = "1")]
    body: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    signature: Vec<u8>,
}

fn parse_list(bytes: &[u8]) -> (BodyWire, Vec<u8>) {
    assert_eq!(bytes[0], 0x41);
    let signed = <SignedWire as prost::Message>::decode(&bytes[1..]).unwrap();
    let body = <BodyWire as prost::Message>::decode(&signed.body[..]).unwrap();
    (body, signed.signature)
}

fn encode_list(body: &[u8], signature: &[u8]) -> Vec<u8> {
    let mut out = vec![0x41];
    prost::Message::encode(
        &SignedWire {
            body: body.to_vec(),
            signature: signature.to_vec(),
        },
        &mut out,
    )
    .unwrap();
    out
}

/// `body` signed (over `LIST_CONTEXT || body`) with the Ed25519 seed of `signer`.
fn sign_list(body: &BodyWire, signer: &IdentityKeyPair) -> Vec<u8> {
    let body = prost::Message::encode_to_vec(body);
    let key = ed25519_dalek::SigningKey::from_bytes(&signer.to_seed());
    let signature = key.sign(&[LIST_CONTEXT, &body].concat()).to_bytes();
    encode_list(&body, &signature)
}

/// The wire form of one entry, taken from a list `account` signs around it.
fn entry_wire(account: &IdentityKeyPair, entry: DeviceEntry) -> EntryWire {
    let bytes = DeviceList {
        account_id: b"scratch".to_vec(),
        version: 1,
        timestamp: T,
        entries: vec![entry],
    }
    .sign(account)
    .unwrap();
    parse_list(&bytes).0.entries.remove(0)
}

// ---- The model -------------------------------------------------------------------------------

type DevId = usize;

/// A restored device's original state, run alongside for a few calls and compared.
struct Shadow {
    book: SessionBook,
    prekeys: PreKeys,
    uses: u32,
}

struct Dev {
    address: Address,
    account: usize,
    identity: IdentityKeyPair,
    prekeys: PreKeys,
    book: SessionBook,
    /// The last accepted list of each account.
    lists: Vec<Option<VerifiedDeviceList>>,
    /// The relay's queue for this device.
    inbox: Vec<Item>,
    online: bool,
    /// Removed devices keep their state and inbox but see no later list: their view is frozen.
    frozen_view: Option<BTreeSet<Address>>,
    /// What the key server still holds of this device's one-time prekeys.
    server_otks: Vec<OneTimePreKeyPublic>,
    server_kem_otks: Vec<KemPreKeyPublic>,
    /// Ids of the one-time KEM prekeys issued (the last-resort one is not consumed).
    kem_otk_ids: BTreeSet<u32>,
    shadow: Option<Shadow>,
    /// Calls compared with a shadow.
    shadow_compared: usize,
}

#[derive(Clone)]
struct Item {
    msg: usize,
    from: DevId,
    entry: Vec<u8>,
    body: usize,
}

struct Sent {
    sender: DevId,
    plaintext: Vec<u8>,
    bodies: Vec<Vec<u8>>,
    /// Every entry sent: addressee, entry bytes, body index.
    entries: Vec<(DevId, Vec<u8>, usize)>,
    expected: BTreeSet<DevId>,
}

struct Account {
    key: IdentityKeyPair,
    id: Vec<u8>,
    version: u64,
    members: Vec<DevId>,
    next_device_id: u32,
    entries: BTreeMap<DevId, DeviceEntry>,
    /// Every list published, by version (index version - 1).
    published: Vec<Vec<u8>>,
}

#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    messages: usize,
    delivered: usize,
    duplicates_rejected: usize,
    orphans_rejected: usize,
    removed_rejected: usize,
    misroutes_rejected: usize,
    wrong_bodies_rejected: usize,
    wrong_senders_rejected: usize,
    forged_rejected: usize,
    rollbacks_rejected: usize,
    dropped: usize,
    sessions_inserted: usize,
    new_sessions_accepted: usize,
    simultaneous: usize,
    reestablished: usize,
    links: usize,
    removals: usize,
    restores: usize,
    shadow_calls: usize,
}

struct Sim {
    seed: u64,
    step: usize,
    rng: ChaCha20Rng,
    sched: ChaCha20Rng,
    accounts: Vec<Account>,
    devices: Vec<Dev>,
    by_address: BTreeMap<Address, DevId>,
    sent: Vec<Sent>,
    delivered: BTreeSet<(usize, DevId)>,
    dropped: BTreeSet<(usize, DevId)>,
    orphaned: BTreeSet<(usize, DevId)>,
    /// Items delivered successfully, for replays.
    history: Vec<(DevId, Item)>,
    mallory: IdentityKeyPair,
    intruder: IdentityKeyPair,
    stats: Stats,
}

fn below(rng: &mut ChaCha20Rng, n: usize) -> usize {
    assert!(n > 0);
    (rng.next_u64() % n as u64) as usize
}

fn chance(rng: &mut ChaCha20Rng, percent: u64) -> bool {
    rng.next_u64() % 100 < percent
}

/// Book, prekeys (and RNG) state, to show a failed call changed nothing.
fn state(dev: &Dev) -> (Vec<u8>, Vec<u8>) {
    (
        dev.book.snapshot().to_vec(),
        dev.prekeys.snapshot().to_vec(),
    )
}

impl Dev {
    /// After a shadowed call: the restored state and the original must be byte-identical.
    fn shadow_check(&mut self, what: &str) {
        if let Some(s) = self.shadow.as_mut() {
            assert!(
                s.book.snapshot() == self.book.snapshot()
                    && s.prekeys.snapshot() == self.prekeys.snapshot(),
                "restored device diverged from its original after {what}"
            );
            s.uses -= 1;
            self.shadow_compared += 1;
            if s.uses == 0 {
                self.shadow = None;
            }
        }
    }

    fn receive(
        &mut self,
        rng: &mut ChaCha20Rng,
        sender: &Address,
        entry: &Message,
        body: &[u8],
    ) -> Result<Received, ReceiveError> {
        let mut twin = rng.clone();
        let got =
            self.book
                .receive_fan_out(rng, &self.identity, &mut self.prekeys, sender, entry, body);
        if let Some(s) = self.shadow.as_mut() {
            let other = s.book.receive_fan_out(
                &mut twin,
                &self.identity,
                &mut s.prekeys,
                sender,
                entry,
                body,
            );
            match (&got, &other) {
                (Ok(a), Ok(b)) => assert!(
                    a.plaintext == b.plaintext
                        && a.new_session == b.new_session
                        && a.consumed_one_time_prekey == b.consumed_one_time_prekey
                        && a.consumed_one_time_kem_prekey == b.consumed_one_time_kem_prekey,
                    "restored device received differently"
                ),
                (Err(a), Err(b)) => assert_eq!(a, b, "restored device failed differently"),
                _ => panic!("restored device: {:?} vs original {:?}", got, other),
            }
            assert!(twin == *rng, "restored device drew different randomness");
            self.shadow_check("receive");
        }
        got
    }

    fn fan_out(
        &mut self,
        rng: &mut ChaCha20Rng,
        accounts: &[IdentityKey],
        plaintext: &[u8],
    ) -> FanOut {
        let mut twin = rng.clone();
        let out = self
            .book
            .fan_out(rng, accounts, &self.address, plaintext)
            .unwrap();
        if let Some(s) = self.shadow.as_mut() {
            let other = s
                .book
                .fan_out(&mut twin, accounts, &self.address, plaintext)
                .unwrap();
            assert!(
                out.body == other.body
                    && out.entries == other.entries
                    && out.needs_bundle == other.needs_bundle,
                "restored device fanned out differently"
            );
            assert!(twin == *rng, "restored device drew different randomness");
            self.shadow_check("fan_out");
        }
        out
    }

    fn insert(&mut self, to: Address, session: Session) {
        if let Some(s) = self.shadow.as_mut() {
            let copy = Session::restore(&session.snapshot()).unwrap();
            s.book.insert(to, copy).unwrap();
        }
        self.book.insert(to, session).unwrap();
        self.shadow_check("insert");
    }

    fn apply(&mut self, list: &VerifiedDeviceList) -> Vec<Address> {
        let needs = self
            .book
            .apply_device_list(list)
            .expect("a newer or the same list");
        if let Some(s) = self.shadow.as_mut() {
            assert_eq!(
                s.book
                    .apply_device_list(list)
                    .expect("a newer or the same list"),
                needs,
                "restored device applied a list differently"
            );
            self.shadow_check("apply_device_list");
        }
        needs
    }
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let sched = ChaCha20Rng::seed_from_u64(seed ^ 0x005E_ED0F_0DE5);
        let mallory = IdentityKeyPair::generate(&mut rng);
        let intruder = IdentityKeyPair::generate(&mut rng);
        let mut sim = Self {
            seed,
            step: 0,
            rng,
            sched,
            accounts: Vec::new(),
            devices: Vec::new(),
            by_address: BTreeMap::new(),
            sent: Vec::new(),
            delivered: BTreeSet::new(),
            dropped: BTreeSet::new(),
            orphaned: BTreeSet::new(),
            history: Vec::new(),
            mallory,
            intruder,
            stats: Stats::default(),
        };
        for a in 0..ACCOUNTS {
            let key = IdentityKeyPair::generate(&mut sim.rng);
            sim.accounts.push(Account {
                key,
                id: format!("account-{a}@example.org").into_bytes(),
                version: 0,
                members: Vec::new(),
                next_device_id: 1,
                entries: BTreeMap::new(),
                published: Vec::new(),
            });
        }
        for a in 0..ACCOUNTS {
            let n = 1 + below(&mut sim.sched, 3);
            for i in 0..n {
                let d = sim.new_device(a);
                // The primary's entry is local; the others link with a request.
                let entry = if i == 0 {
                    DeviceEntry::local(
                        &sim.accounts[a].key,
                        &sim.devices[d].identity,
                        sim.devices[d].address.device,
                    )
                } else {
                    sim.link_entry(d)
                };
                sim.accounts[a].entries.insert(d, entry);
                sim.accounts[a].members.push(d);
            }
        }
        for a in 0..ACCOUNTS {
            sim.publish(a, None);
        }
        sim
    }

    fn ctx(&self) -> String {
        format!("seed {} step {}", self.seed, self.step)
    }

    /// A fresh device of account `a` (not yet listed), with one-time prekeys on the server.
    fn new_device(&mut self, a: usize) -> DevId {
        let identity = IdentityKeyPair::generate(&mut self.rng);
        let mut prekeys = PreKeys::new(&mut self.rng, &identity, T);
        let otks = prekeys.generate_one_time_prekeys(&mut self.rng, 2).unwrap();
        let kem_otks = prekeys
            .generate_one_time_kem_prekeys(&mut self.rng, &identity, 1)
            .unwrap();
        let account = &mut self.accounts[a];
        let address = Address {
            account: account.key.public(),
            device: account.next_device_id,
        };
        account.next_device_id += 1;
        let id = self.devices.len();
        self.devices.push(Dev {
            address,
            account: a,
            identity,
            prekeys,
            book: SessionBook::new(),
            lists: vec![None; ACCOUNTS],
            inbox: Vec::new(),
            online: true,
            frozen_view: None,
            server_otks: otks,
            kem_otk_ids: kem_otks.iter().map(KemPreKeyPublic::id).collect(),
            server_kem_otks: kem_otks,
            shadow: None,
            shadow_compared: 0,
        });
        self.by_address.insert(address, id);
        id
    }

    /// The new device shows a link request; the account's primary checks and signs it.
    fn link_entry(&self, d: DevId) -> DeviceEntry {
        let dev = &self.devices[d];
        let account = &self.accounts[dev.account];
        let request = LinkRequest::new(&dev.identity, &account.key.public()).to_bytes();
        let request = LinkRequest::from_bytes(&request).unwrap();
        assert_eq!(request.device_key(), dev.identity.public());
        DeviceEntry::link(&account.key, &request, dev.address.device).unwrap()
    }

    fn current(&self) -> Vec<DevId> {
        (0..self.devices.len())
            .filter(|&d| self.devices[d].frozen_view.is_none())
            .collect()
    }

    fn current_view(&self) -> BTreeSet<Address> {
        self.accounts
            .iter()
            .filter(|a| a.version > 0)
            .flat_map(|a| a.members.iter().map(|&d| self.devices[d].address))
            .collect()
    }

    fn view(&self, d: DevId) -> BTreeSet<Address> {
        self.devices[d]
            .frozen_view
            .clone()
            .unwrap_or_else(|| self.current_view())
    }

    /// Signs and publishes account `a`'s member list with a new version; every current device
    /// verifies it against its last accepted list and applies it. `change` is the expected
    /// `changes_since` (added, removed device id).
    fn publish(&mut self, a: usize, change: Option<(Option<DevId>, Option<DevId>)>) {
        let ctx = self.ctx();
        let account = &mut self.accounts[a];
        account.version += 1;
        let entries = account
            .members
            .iter()
            .map(|d| account.entries[d].clone())
            .collect();
        let bytes = DeviceList {
            account_id: account.id.clone(),
            version: account.version,
            timestamp: Timestamp(T.0 + account.version),
            entries,
        }
        .sign(&account.key)
        .unwrap();
        account.published.push(bytes.clone());
        assert_eq!(account.published.len() as u64, account.version);
        let key = account.key.public();
        let members: BTreeSet<Address> = account
            .members
            .iter()
            .map(|&d| self.devices[d].address)
            .collect();
        for d in self.current() {
            let previous = self.devices[d].lists[a].take();
            let list = VerifiedDeviceList::verify(&bytes, &key, previous.as_ref())
                .unwrap_or_else(|e| panic!("{ctx}: device {d} refused list: {e:?}"));
            if let (Some(previous), Some((added, removed))) = (&previous, change) {
                let changes = list.changes_since(previous);
                let expect_added: Vec<(u32, IdentityKey)> = added
                    .map(|n| {
                        let dev = &self.devices[n];
                        (dev.address.device, dev.identity.public())
                    })
                    .into_iter()
                    .collect();
                let expect_removed: Vec<u32> = removed
                    .map(|r| self.devices[r].address.device)
                    .into_iter()
                    .collect();
                assert_eq!(changes.added, expect_added, "{ctx}");
                assert_eq!(changes.removed, expect_removed, "{ctx}");
            }
            let dev = &mut self.devices[d];
            let needs = dev.apply(&list);
            // Every listed device without an active session, and nothing else.
            let without: Vec<Address> = dev
                .book
                .devices()
                .filter(|(addr, active)| addr.account == key && !active)
                .map(|(addr, _)| addr)
                .collect();
            assert_eq!(needs, without, "{ctx}");
            assert!(needs.iter().all(|n| members.contains(n)), "{ctx}");
            dev.lists[a] = Some(list);
        }
        self.check_views();
    }

    /// Every book registers exactly the devices of its (modelled) view.
    fn check_views(&self) {
        for d in 0..self.devices.len() {
            let registered: BTreeSet<Address> =
                self.devices[d].book.devices().map(|(a, _)| a).collect();
            assert_eq!(registered, self.view(d), "{}: device {d}", self.ctx());
        }
    }

    // ---- Operations --------------------------------------------------------------------------

    fn step(&mut self) {
        let roll = below(&mut self.sched, 100);
        match roll {
            0..=26 => self.op_send(),
            27..=59 => self.op_deliver(),
            60..=63 => self.op_drop(),
            64..=68 => self.op_duplicate(),
            69..=72 => self.op_toggle_online(),
            73..=76 => self.op_link(),
            77..=78 => self.op_remove(),
            79..=82 => self.op_simultaneous(),
            83..=85 => self.op_reestablish(),
            86..=89 => self.op_snapshot_restore(),
            90..=92 => self.op_forged_lists(),
            93..=96 => self.op_misroute(),
            _ => self.op_removed_sends(),
        }
    }

    fn op_send(&mut self) {
        let senders: Vec<DevId> = self
            .current()
            .into_iter()
            .filter(|&d| self.devices[d].online)
            .collect();
        if senders.is_empty() {
            return;
        }
        let s = senders[below(&mut self.sched, senders.len())];
        let own = self.devices[s].account;
        let others: Vec<usize> = (0..ACCOUNTS).filter(|&a| a != own).collect();
        let target = others[below(&mut self.sched, others.len())];
        self.send(s, target);
    }

    /// A PQXDH bundle of device `t` as the key server would serve it (one-time prekeys while
    /// it has them), verified by `s` against `t`'s key in `s`'s verified list; the session is
    /// installed in `s`'s book.
    fn establish(&mut self, s: DevId, t: DevId) {
        let target = &mut self.devices[t];
        let otk = target.server_otks.pop();
        let kem = target
            .server_kem_otks
            .pop()
            .unwrap_or_else(|| target.prekeys.last_resort_kem_prekey());
        let bundle = PreKeyBundle::new(
            target.identity.public(),
            target.prekeys.signed_prekey(),
            otk,
        )
        .with_kem_prekey(kem)
        .to_bytes();
        let address = target.address;
        let t_account = target.account;
        let listed = self.devices[s].lists[t_account]
            .as_ref()
            .and_then(|l| l.device_key(address.device))
            .expect("bundle for an unlisted device");
        let bundle = PreKeyBundle::from_bytes(&bundle)
            .unwrap()
            .verify_for(&listed)
            .unwrap();
        let sender = &mut self.devices[s];
        let session = Session::initiate(&mut self.rng, &sender.identity, bundle).unwrap();
        sender.insert(address, session);
        self.stats.sessions_inserted += 1;
    }

    /// Device `s` fans a new message out to account `target` and its own other devices.
    fn send(&mut self, s: DevId, target: usize) -> usize {
        let ctx = self.ctx();
        let own = self.devices[s].account;
        let mut accounts = vec![self.accounts[target].key.public()];
        if own != target {
            accounts.push(self.accounts[own].key.public());
        }
        let expected: BTreeSet<DevId> = self.accounts[target]
            .members
            .iter()
            .chain(self.accounts[own].members.iter())
            .copied()
            .filter(|&d| d != s)
            .collect();
        let expected_addresses: BTreeSet<Address> =
            expected.iter().map(|&d| self.devices[d].address).collect();
        let msg = self.sent.len();
        let mut plaintext = format!("message {msg} of seed {} from {s}", self.seed).into_bytes();
        let pad = below(&mut self.sched, 300);
        plaintext.extend((0..pad).map(|i| (i as u8) ^ (msg as u8)));

        let first = self.devices[s].fan_out(&mut self.rng, &accounts, &plaintext);
        let mut targeted: Vec<Address> = first.entries.iter().map(|(a, _)| *a).collect();
        targeted.extend(first.needs_bundle.iter().copied());
        let set: BTreeSet<Address> = targeted.iter().copied().collect();
        assert_eq!(set.len(), targeted.len(), "{ctx}: a device targeted twice");
        assert_eq!(set, expected_addresses, "{ctx}: fan-out targets");

        let mut bodies = vec![first.body.clone()];
        let mut entries: Vec<(DevId, Vec<u8>, usize)> = first
            .entries
            .iter()
            .map(|(a, e)| (self.by_address[a], e.clone(), 0))
            .collect();
        if !first.needs_bundle.is_empty() {
            for address in &first.needs_bundle {
                let t = self.by_address[address];
                self.establish(s, t);
            }
            // Fan out again: only the new sessions' entries are sent (with the second body);
            // the others are discarded (their receivers skip one message key).
            let second = self.devices[s].fan_out(&mut self.rng, &accounts, &plaintext);
            assert!(second.needs_bundle.is_empty(), "{ctx}: still needs bundles");
            let again: BTreeSet<Address> = second.entries.iter().map(|(a, _)| *a).collect();
            assert_eq!(again, expected_addresses, "{ctx}: second fan-out targets");
            bodies.push(second.body.clone());
            for (address, entry) in &second.entries {
                if first.needs_bundle.contains(address) {
                    assert!(
                        matches!(Message::from_bytes(entry), Ok(Message::PreKey(_))),
                        "{ctx}: a new session's entry is an initial message"
                    );
                    entries.push((self.by_address[address], entry.clone(), 1));
                }
            }
        }
        assert_eq!(entries.len(), expected.len(), "{ctx}");
        for (to, entry, body) in &entries {
            self.devices[*to].inbox.push(Item {
                msg,
                from: s,
                entry: entry.clone(),
                body: *body,
            });
        }
        self.sent.push(Sent {
            sender: s,
            plaintext,
            bodies,
            entries,
            expected,
        });
        self.stats.messages += 1;
        self.removed_cannot_decrypt(msg);
        msg
    }

    /// Every removed device is given every entry of message `msg` (sent after its removal)
    /// with the body: every receive fails and changes nothing.
    fn removed_cannot_decrypt(&mut self, msg: usize) {
        let removed: Vec<DevId> = (0..self.devices.len())
            .filter(|&d| self.devices[d].frozen_view.is_some())
            .collect();
        for r in removed {
            let sender = self.devices[self.sent[msg].sender].address;
            for i in 0..self.sent[msg].entries.len() {
                let (_, entry, body) = &self.sent[msg].entries[i];
                let entry = Message::from_bytes(entry).unwrap();
                let body = self.sent[msg].bodies[*body].clone();
                self.expect_rejected(r, &sender, &entry, &body, "removed device");
                self.stats.removed_rejected += 1;
            }
        }
    }

    /// `d` receives `entry` from `sender`: it must fail, and change nothing (nor draw
    /// randomness).
    fn expect_rejected(
        &mut self,
        d: DevId,
        sender: &Address,
        entry: &Message,
        body: &[u8],
        what: &str,
    ) -> ReceiveError {
        let ctx = self.ctx();
        let before = state(&self.devices[d]);
        let rng_before = self.rng.clone();
        let got = self.devices[d].receive(&mut self.rng, sender, entry, body);
        let Err(e) = got else {
            panic!("{ctx}: {what} {d} decrypted an entry it must not");
        };
        assert!(
            state(&self.devices[d]) == before,
            "{ctx}: {what} {d}: failed receive ({e:?}) changed state"
        );
        assert!(
            self.rng == rng_before,
            "{ctx}: {what} {d}: failed receive drew randomness"
        );
        e
    }

    /// Delivers the `i`-th queued item of device `d`.
    fn deliver(&mut self, d: DevId, i: usize) {
        let ctx = self.ctx();
        let item = self.devices[d].inbox.remove(i);
        let entry = Message::from_bytes(&item.entry).unwrap();
        let sender = self.devices[item.from].address;
        let body = self.sent[item.msg].bodies[item.body].clone();
        let key = (item.msg, d);
        if !self.view(d).contains(&sender) {
            // The sender was removed since: its sessions are gone, it is unknown.
            let e = self.expect_rejected(d, &sender, &entry, &body, "receiver");
            assert_eq!(e, ReceiveError::UnknownDevice, "{ctx}");
            if !self.delivered.contains(&key) {
                self.orphaned.insert(key);
            }
            self.stats.orphans_rejected += 1;
        } else if self.delivered.contains(&key) {
            let e = self.expect_rejected(d, &sender, &entry, &body, "duplicate at");
            assert!(
                matches!(e, ReceiveError::Decrypt(_)),
                "{ctx}: duplicate rejected with {e:?}"
            );
            self.stats.duplicates_rejected += 1;
        } else {
            assert!(
                self.sent[item.msg].expected.contains(&d),
                "{ctx}: entry for an unexpected device"
            );
            if chance(&mut self.sched, 15) {
                // The relay first pairs the entry with a wrong body (another message's, or
                // this one with a bit flipped): refused before anything commits (§16.3).
                let other = below(&mut self.sched, self.sent.len());
                let mut wrong = self.sent[other].bodies[0].clone();
                if wrong == body {
                    let i = below(&mut self.sched, wrong.len());
                    wrong[i] ^= 1 << below(&mut self.sched, 8);
                }
                let e = self.expect_rejected(d, &sender, &entry, &wrong, "wrong body at");
                assert_eq!(
                    e,
                    ReceiveError::Decrypt(DecryptError::Unauthenticated),
                    "{ctx}: wrong body"
                );
                self.stats.wrong_bodies_rejected += 1;
            }
            let got = self.devices[d]
                .receive(&mut self.rng, &sender, &entry, &body)
                .unwrap_or_else(|e| {
                    panic!(
                        "{ctx}: device {d} could not receive message {} from {}: {e:?}",
                        item.msg, item.from
                    )
                });
            assert!(
                got.plaintext[..] == self.sent[item.msg].plaintext[..],
                "{ctx}: wrong plaintext"
            );
            match &entry {
                Message::PreKey(m) if got.new_session => {
                    assert_eq!(
                        got.consumed_one_time_prekey,
                        m.one_time_prekey_id(),
                        "{ctx}"
                    );
                    let kem = m
                        .kem_prekey_id()
                        .filter(|id| self.devices[d].kem_otk_ids.contains(id));
                    assert_eq!(got.consumed_one_time_kem_prekey, kem, "{ctx}");
                    self.stats.new_sessions_accepted += 1;
                }
                _ => {
                    assert!(!got.new_session, "{ctx}: a ratchet message made a session");
                    assert_eq!(got.consumed_one_time_prekey, None, "{ctx}");
                    assert_eq!(got.consumed_one_time_kem_prekey, None, "{ctx}");
                }
            }
            self.delivered.insert(key);
            self.history.push((d, item));
            self.stats.delivered += 1;
        }
    }

    fn op_deliver(&mut self) {
        let ready: Vec<DevId> = (0..self.devices.len())
            .filter(|&d| self.devices[d].online && !self.devices[d].inbox.is_empty())
            .collect();
        if ready.is_empty() {
            return;
        }
        let d = ready[below(&mut self.sched, ready.len())];
        let i = below(&mut self.sched, self.devices[d].inbox.len());
        self.deliver(d, i);
    }

    fn op_drop(&mut self) {
        let queued: Vec<DevId> = (0..self.devices.len())
            .filter(|&d| !self.devices[d].inbox.is_empty())
            .collect();
        if queued.is_empty() {
            return;
        }
        let d = queued[below(&mut self.sched, queued.len())];
        let i = below(&mut self.sched, self.devices[d].inbox.len());
        let item = self.devices[d].inbox.remove(i);
        if !self.delivered.contains(&(item.msg, d)) {
            self.dropped.insert((item.msg, d));
        }
        self.stats.dropped += 1;
    }

    /// The relay duplicates a queued item, or replays one already delivered.
    fn op_duplicate(&mut self) {
        if chance(&mut self.sched, 50) && !self.history.is_empty() {
            let (d, item) = self.history[below(&mut self.sched, self.history.len())].clone();
            let at = below(&mut self.sched, self.devices[d].inbox.len() + 1);
            self.devices[d].inbox.insert(at, item);
            return;
        }
        let queued: Vec<DevId> = (0..self.devices.len())
            .filter(|&d| !self.devices[d].inbox.is_empty())
            .collect();
        if queued.is_empty() {
            return;
        }
        let d = queued[below(&mut self.sched, queued.len())];
        let item =
            self.devices[d].inbox[below(&mut self.sched, self.devices[d].inbox.len())].clone();
        let at = below(&mut self.sched, self.devices[d].inbox.len() + 1);
        self.devices[d].inbox.insert(at, item);
    }

    fn op_toggle_online(&mut self) {
        let d = below(&mut self.sched, self.devices.len());
        self.devices[d].online = !self.devices[d].online;
    }

    /// Links a new device: link request, entry, new list version applied everywhere. The new
    /// device first learns the other accounts' current lists (first use: no previous list).
    fn op_link(&mut self) {
        let a = below(&mut self.sched, ACCOUNTS);
        if self.accounts[a].members.len() >= MAX_DEVICES {
            return;
        }
        let n = self.new_device(a);
        for b in (0..ACCOUNTS).filter(|&b| b != a) {
            let bytes = self.accounts[b].published.last().unwrap().clone();
            let key = self.accounts[b].key.public();
            let list = VerifiedDeviceList::verify(&bytes, &key, None).unwrap();
            self.devices[n].apply(&list);
            self.devices[n].lists[b] = Some(list);
        }
        let entry = self.link_entry(n);
        self.accounts[a].entries.insert(n, entry);
        self.accounts[a].members.push(n);
        self.publish(a, Some((Some(n), None)));
        self.stats.links += 1;
    }

    /// Removes a device: a new list without it, applied everywhere else. The removed device
    /// keeps its state and inbox, and sees no later list.
    fn op_remove(&mut self) {
        let candidates: Vec<usize> = (0..ACCOUNTS)
            .filter(|&a| self.accounts[a].members.len() >= 2)
            .collect();
        if candidates.is_empty() {
            return;
        }
        let a = candidates[below(&mut self.sched, candidates.len())];
        let members = &self.accounts[a].members;
        let r = members[below(&mut self.sched, members.len())];
        let view = self.current_view();
        self.devices[r].frozen_view = Some(view);
        self.accounts[a].members.retain(|&d| d != r);
        self.publish(a, Some((None, Some(r))));
        let address = self.devices[r].address;
        for d in self.current() {
            assert_eq!(self.devices[d].book.session_count(&address), 0);
        }
        self.stats.removals += 1;
    }

    /// Two devices with no session between them both install one and send before anything
    /// is delivered.
    fn op_simultaneous(&mut self) {
        let current: Vec<DevId> = self
            .current()
            .into_iter()
            .filter(|&d| self.devices[d].online)
            .collect();
        let mut pairs = Vec::new();
        for &x in &current {
            for &y in &current {
                if x < y {
                    let (ax, ay) = (self.devices[x].address, self.devices[y].address);
                    if self.devices[x].book.active_mut(&ay).is_none()
                        && self.devices[y].book.active_mut(&ax).is_none()
                    {
                        pairs.push((x, y));
                    }
                }
            }
        }
        if pairs.is_empty() {
            return;
        }
        let (x, y) = pairs[below(&mut self.sched, pairs.len())];
        self.establish(x, y);
        self.establish(y, x);
        let (ax, ay) = (self.devices[x].account, self.devices[y].account);
        self.send(x, ay);
        self.send(y, ax);
        self.stats.simultaneous += 1;
    }

    /// A device starts a fresh session with a peer it already has one with (a new bundle) and
    /// sends on it while messages of the old one may still be in flight (PROTOCOL.md §15.1).
    fn op_reestablish(&mut self) {
        let mut pairs = Vec::new();
        for s in self.current() {
            if !self.devices[s].online {
                continue;
            }
            for t in self.current() {
                let address = self.devices[t].address;
                if t != s && self.devices[s].book.active_mut(&address).is_some() {
                    pairs.push((s, t));
                }
            }
        }
        if pairs.is_empty() {
            return;
        }
        let (s, t) = pairs[below(&mut self.sched, pairs.len())];
        let before = self.devices[s].book.session_count(&self.devices[t].address);
        self.establish(s, t);
        let after = self.devices[s].book.session_count(&self.devices[t].address);
        assert_eq!(
            after,
            (before + 1).min(1 + MAX_ARCHIVED_SESSIONS),
            "{}",
            self.ctx()
        );
        let target = self.devices[t].account;
        self.send(s, target);
        self.stats.reestablished += 1;
    }

    /// Snapshots and restores a device's book and prekeys; the restored state replaces the
    /// device's and the original runs alongside it for the next few calls, byte for byte.
    fn op_snapshot_restore(&mut self) {
        let d = below(&mut self.sched, self.devices.len());
        let dev = &mut self.devices[d];
        if dev.shadow.is_some() {
            return;
        }
        let (book, prekeys) = (dev.book.snapshot(), dev.prekeys.snapshot());
        let restored_book = SessionBook::restore(&book).unwrap();
        let restored_prekeys = PreKeys::restore(&prekeys).unwrap();
        assert!(restored_book.snapshot() == book, "book snapshot round trip");
        assert!(
            restored_prekeys.snapshot() == prekeys,
            "prekeys snapshot round trip"
        );
        let original_book = std::mem::replace(&mut dev.book, restored_book);
        let original_prekeys = std::mem::replace(&mut dev.prekeys, restored_prekeys);
        dev.shadow = Some(Shadow {
            book: original_book,
            prekeys: original_prekeys,
            uses: SHADOW_USES,
        });
        self.stats.restores += 1;
    }

    /// The relay serves forged and rolled-back lists of an account to every current device:
    /// all are rejected, and no book changes.
    fn op_forged_lists(&mut self) {
        let ctx = self.ctx();
        let a = below(&mut self.sched, ACCOUNTS);
        let account = &self.accounts[a];
        let key = account.key.public();
        let v = account.version;
        let current = account.published.last().unwrap().clone();
        let (body, signature) = parse_list(&current);
        let mut next = body.clone();
        next.version = v + 1;
        let free_id = account.next_device_id + 1000;

        // Control: the same crafting, correctly signed by the account, verifies.
        let control = sign_list(&next, &account.key);
        // Signed by another key.
        let other_signer = sign_list(&next, &self.mallory);
        // Another account's list (signed by its own key) served for this account.
        let other_account = DeviceList {
            account_id: account.id.clone(),
            version: v + 1,
            timestamp: T,
            entries: vec![DeviceEntry::local(&self.mallory, &self.intruder, free_id)],
        }
        .sign(&self.mallory)
        .unwrap();
        // An entry linked by another account key, in a list the account key signed.
        let foreign = entry_wire(
            &self.mallory,
            DeviceEntry::local(&self.mallory, &self.intruder, free_id),
        );
        let mut with_foreign = next.clone();
        with_foreign.entries.push(foreign.clone());
        let foreign_linked = sign_list(&with_foreign, &account.key);
        // The account admits the device, but the device consented to another account.
        let admitted = entry_wire(
            &account.key,
            DeviceEntry::local(&account.key, &self.intruder, free_id),
        );
        let mut half = admitted.clone();
        half.device_signature = foreign.device_signature.clone();
        let mut with_half = next.clone();
        with_half.entries.push(half);
        let no_consent = sign_list(&with_half, &account.key);
        // A valid entry injected into the current list under its original signature.
        let mut injected_body = body.clone();
        injected_body.entries.push(admitted);
        let injected = encode_list(&prost::Message::encode_to_vec(&injected_body), &signature);
        // Rollback: an older version, and the current one again.
        let older = (v >= 2).then(|| {
            let w = 1 + below(&mut self.sched, (v - 1) as usize) as u64;
            (w, self.accounts[a].published[(w - 1) as usize].clone())
        });

        let forged: [(&str, &[u8], DeviceListError); 5] = [
            (
                "other signer",
                &other_signer,
                DeviceListError::Unauthenticated,
            ),
            (
                "other account",
                &other_account,
                DeviceListError::AccountMismatch,
            ),
            (
                "foreign link",
                &foreign_linked,
                DeviceListError::Unauthenticated,
            ),
            (
                "no device consent",
                &no_consent,
                DeviceListError::Unauthenticated,
            ),
            (
                "injected entry",
                &injected,
                DeviceListError::Unauthenticated,
            ),
        ];
        let current_devices = self.current();
        let books: Vec<Vec<u8>> = current_devices
            .iter()
            .map(|&d| self.devices[d].book.snapshot().to_vec())
            .collect();
        for &d in &current_devices {
            let last = self.devices[d].lists[a].clone().unwrap();
            assert_eq!(last.version(), v, "{ctx}");
            let ok = VerifiedDeviceList::verify(&control, &key, Some(&last))
                .unwrap_or_else(|e| panic!("{ctx}: control list refused: {e:?}"));
            assert_eq!(ok.version(), v + 1);
            assert_eq!(ok.entries(), last.entries());
            for (what, bytes, error) in &forged {
                assert_eq!(
                    VerifiedDeviceList::verify(bytes, &key, Some(&last)),
                    Err(*error),
                    "{ctx}: {what}"
                );
                self.stats.forged_rejected += 1;
            }
            assert_eq!(
                VerifiedDeviceList::verify(&current, &key, Some(&last)),
                Err(DeviceListError::Rollback {
                    version: v,
                    last: v
                }),
                "{ctx}: replayed current list"
            );
            self.stats.rollbacks_rejected += 1;
            if let Some((w, bytes)) = &older {
                assert_eq!(
                    VerifiedDeviceList::verify(bytes, &key, Some(&last)),
                    Err(DeviceListError::Rollback {
                        version: *w,
                        last: v
                    }),
                    "{ctx}: rolled-back list"
                );
                self.stats.rollbacks_rejected += 1;
            }
            // Nothing was accepted: re-applying the last accepted list changes nothing either.
            let dev = &mut self.devices[d];
            assert!(dev.lists[a].as_ref() == Some(&last), "{ctx}");
            let before = dev.book.snapshot();
            dev.apply(&last);
            assert!(
                dev.book.snapshot() == before,
                "{ctx}: re-applying changed the book"
            );
        }
        for (&d, before) in current_devices.iter().zip(&books) {
            assert!(
                self.devices[d].book.snapshot()[..] == before[..],
                "{ctx}: a rejected list changed a book"
            );
        }
    }

    /// The relay hands an entry to a device it was not addressed to: rejected, nothing changes.
    fn op_misroute(&mut self) {
        if self.sent.is_empty() {
            return;
        }
        let msg = below(&mut self.sched, self.sent.len());
        let sent = &self.sent[msg];
        let (to, entry, body) = sent.entries[below(&mut self.sched, sent.entries.len())].clone();
        let sender = sent.sender;
        let others: Vec<DevId> = (0..self.devices.len())
            .filter(|&d| d != to && d != sender)
            .collect();
        let body = self.sent[msg].bodies[body].clone();
        let entry = Message::from_bytes(&entry).unwrap();
        if chance(&mut self.sched, 50) {
            // To the addressee, claiming another sender (known to it or not).
            let liars: Vec<DevId> = (0..self.devices.len())
                .filter(|&d| d != to && d != sender)
                .collect();
            let liar = self.devices[liars[below(&mut self.sched, liars.len())]].address;
            self.expect_rejected(to, &liar, &entry, &body, "wrong sender at");
            self.stats.wrong_senders_rejected += 1;
            return;
        }
        let d = others[below(&mut self.sched, others.len())];
        let sender_address = self.devices[sender].address;
        self.expect_rejected(d, &sender_address, &entry, &body, "misrouted to");
        self.stats.misroutes_rejected += 1;
    }

    /// A removed device still holds sessions and fans out: every current device refuses it as
    /// an unknown device and changes nothing.
    fn op_removed_sends(&mut self) {
        let removed: Vec<DevId> = (0..self.devices.len())
            .filter(|&d| self.devices[d].frozen_view.is_some())
            .collect();
        if removed.is_empty() {
            return;
        }
        let r = removed[below(&mut self.sched, removed.len())];
        let ctx = self.ctx();
        let keys: Vec<IdentityKey> = self.accounts.iter().map(|a| a.key.public()).collect();
        let out = self.devices[r].fan_out(&mut self.rng, &keys, b"still here");
        let sender = self.devices[r].address;
        for (address, entry) in &out.entries {
            let Some(&d) = self.by_address.get(address) else {
                continue;
            };
            if self.devices[d].frozen_view.is_some() {
                continue;
            }
            let entry = Message::from_bytes(entry).unwrap();
            let e = self.expect_rejected(d, &sender, &entry, &out.body, "current device");
            assert_eq!(e, ReceiveError::UnknownDevice, "{ctx}");
            self.stats.removed_rejected += 1;
        }
    }

    /// Delivers everything still queued (everyone online), in random order.
    fn drain(&mut self) {
        for d in &mut self.devices {
            d.online = true;
        }
        loop {
            let queued: Vec<DevId> = (0..self.devices.len())
                .filter(|&d| !self.devices[d].inbox.is_empty())
                .collect();
            if queued.is_empty() {
                break;
            }
            let d = queued[below(&mut self.sched, queued.len())];
            let i = below(&mut self.sched, self.devices[d].inbox.len());
            self.deliver(d, i);
        }
    }

    fn run(mut self, ops: usize) -> Stats {
        for step in 0..ops {
            self.step = step;
            self.step();
        }
        self.step = ops;
        self.drain();
        // A last round with a reliable relay: every current device sends once more.
        let mut last_round = Vec::new();
        for s in self.current() {
            let own = self.devices[s].account;
            let target = (own + 1 + below(&mut self.sched, ACCOUNTS - 1)) % ACCOUNTS;
            last_round.push(self.send(s, target));
        }
        self.step = ops + 1;
        self.drain();
        self.check_views();
        let ctx = self.ctx();
        for (msg, sent) in self.sent.iter().enumerate() {
            for &d in &sent.expected {
                let key = (msg, d);
                assert!(
                    self.delivered.contains(&key)
                        || self.dropped.contains(&key)
                        || self.orphaned.contains(&key),
                    "{ctx}: message {msg} never reached device {d}"
                );
                if last_round.contains(&msg) {
                    assert!(
                        self.delivered.contains(&key),
                        "{ctx}: last round {msg} to {d}"
                    );
                }
            }
        }
        for &(msg, d) in &self.delivered {
            assert!(self.sent[msg].expected.contains(&d), "{ctx}");
        }
        assert!(self.stats.delivered > 0, "{ctx}: nothing delivered");
        self.stats.shadow_calls = self.devices.iter().map(|d| d.shadow_compared).sum();
        self.stats
    }
}

#[test]
fn multidevice_simulation() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .map_or(default, |v| v.parse().expect("a number"))
    };
    let (first, seeds) = (
        env("MULTIDEVICE_FIRST_SEED", 0),
        env("MULTIDEVICE_SEEDS", SEEDS),
    );
    let ops = env("MULTIDEVICE_OPS", OPS as u64) as usize;
    let mut total = Stats::default();
    for seed in first..first + seeds {
        let s = Sim::new(seed).run(ops);
        total.messages += s.messages;
        total.delivered += s.delivered;
        total.duplicates_rejected += s.duplicates_rejected;
        total.orphans_rejected += s.orphans_rejected;
        total.removed_rejected += s.removed_rejected;
        total.misroutes_rejected += s.misroutes_rejected;
        total.wrong_bodies_rejected += s.wrong_bodies_rejected;
        total.wrong_senders_rejected += s.wrong_senders_rejected;
        total.forged_rejected += s.forged_rejected;
        total.rollbacks_rejected += s.rollbacks_rejected;
        total.dropped += s.dropped;
        total.sessions_inserted += s.sessions_inserted;
        total.new_sessions_accepted += s.new_sessions_accepted;
        total.simultaneous += s.simultaneous;
        total.reestablished += s.reestablished;
        total.links += s.links;
        total.removals += s.removals;
        total.restores += s.restores;
        total.shadow_calls += s.shadow_calls;
    }
    // A run that checks nothing fails: every kind of check ran, and often.
    let scale = (seeds as usize * ops / OPS).max(1);
    let t = total;
    for (what, count, at_least) in [
        ("deliveries", t.delivered, 150 * scale),
        ("new sessions accepted", t.new_sessions_accepted, 40 * scale),
        (
            "duplicates and replays rejected",
            t.duplicates_rejected,
            2 * scale,
        ),
        (
            "entries from removed senders rejected",
            t.orphans_rejected,
            scale,
        ),
        (
            "removed-device receives rejected",
            t.removed_rejected,
            100 * scale,
        ),
        ("misrouted entries rejected", t.misroutes_rejected, 1),
        ("wrong bodies rejected", t.wrong_bodies_rejected, 10 * scale),
        ("wrong senders rejected", t.wrong_senders_rejected, 1),
        ("forged lists rejected", t.forged_rejected, 50 * scale),
        (
            "rolled-back lists rejected",
            t.rollbacks_rejected,
            20 * scale,
        ),
        ("items dropped", t.dropped, scale),
        ("simultaneous initiations", t.simultaneous, 1),
        ("re-established sessions", t.reestablished, 1),
        ("links", t.links, 1),
        ("removals", t.removals, 1),
        ("restores", t.restores, 1),
        (
            "calls compared with a restored twin",
            t.shadow_calls,
            2 * scale,
        ),
    ] {
        assert!(
            count >= at_least,
            "only {count} {what} (want {at_least}): {t:?}"
        );
    }
}

/// PROTOCOL.md §16.3: a body that does not match its entry is rejected with
/// `ReceiveError::Decrypt(Unauthenticated)` and changes nothing, also for an initial entry that
/// would start a new session (regression: it used to surface as `Handshake(Unauthenticated)`).
#[test]
fn wrong_body_of_an_initial_entry_is_decrypt_unauthenticated() {
    let mut rng = ChaCha20Rng::seed_from_u64(42);
    let (alice_account, bob_account) = (
        IdentityKeyPair::generate(&mut rng),
        IdentityKeyPair::generate(&mut rng),
    );
    let (alice, bob) = (
        IdentityKeyPair::generate(&mut rng),
        IdentityKeyPair::generate(&mut rng),
    );
    let mut bob_prekeys = PreKeys::new(&mut rng, &bob, T);
    let list = |account: &IdentityKeyPair, device: &IdentityKeyPair| {
        let bytes = DeviceList {
            account_id: b"acct".to_vec(),
            version: 1,
            timestamp: T,
            entries: vec![DeviceEntry::local(account, device, 1)],
        }
        .sign(account)
        .unwrap();
        VerifiedDeviceList::verify(&bytes, &account.public(), None).unwrap()
    };
    let (alice_list, bob_list) = (list(&alice_account, &alice), list(&bob_account, &bob));
    let (mut alice_book, mut bob_book) = (SessionBook::new(), SessionBook::new());
    for book in [&mut alice_book, &mut bob_book] {
        book.apply_device_list(&alice_list).unwrap();
        book.apply_device_list(&bob_list).unwrap();
    }
    let (alice_address, bob_address) = (
        Address {
            account: alice_account.public(),
            device: 1,
        },
        Address {
            account: bob_account.public(),
            device: 1,
        },
    );
    let bundle = PreKeyBundle::new(bob.public(), bob_prekeys.signed_prekey(), None)
        .with_kem_prekey(bob_prekeys.last_resort_kem_prekey())
        .verify()
        .unwrap();
    let session = Session::initiate(&mut rng, &alice, bundle).unwrap();
    alice_book.insert(bob_address, session).unwrap();
    let out = alice_book
        .fan_out(&mut rng, &[bob_account.public()], &alice_address, b"hi")
        .unwrap();
    let entry = Message::from_bytes(&out.entries[0].1).unwrap();
    assert!(matches!(entry, Message::PreKey(_)));
    let mut wrong = out.body.clone();
    wrong[5] ^= 1;
    let before = (bob_book.snapshot(), bob_prekeys.snapshot());
    let got = bob_book
        .receive_fan_out(
            &mut rng,
            &bob,
            &mut bob_prekeys,
            &alice_address,
            &entry,
            &wrong,
        )
        .map(|r| r.plaintext.to_vec());
    assert!((bob_book.snapshot(), bob_prekeys.snapshot()) == before);
    assert_eq!(
        got,
        Err(ReceiveError::Decrypt(DecryptError::Unauthenticated)),
        "documented error for a body that does not match its entry"
    );
}

/// As above, for an initial entry owned by an archived session (its initiator repeats the
/// initial data until a reply; meanwhile a newer session became active): only the owning
/// session tries it, so its `Decrypt(Unauthenticated)` is returned (regression: it used to be the
/// active session's `Decrypt(OtherSession)`).
#[test]
fn wrong_body_of_an_archived_sessions_entry_is_decrypt_unauthenticated() {
    let mut rng = ChaCha20Rng::seed_from_u64(43);
    let (alice_account, bob_account) = (
        IdentityKeyPair::generate(&mut rng),
        IdentityKeyPair::generate(&mut rng),
    );
    let (alice, bob) = (
        IdentityKeyPair::generate(&mut rng),
        IdentityKeyPair::generate(&mut rng),
    );
    let mut bob_prekeys = PreKeys::new(&mut rng, &bob, T);
    let list = |account: &IdentityKeyPair, device: &IdentityKeyPair| {
        let bytes = DeviceList {
            account_id: b"acct".to_vec(),
            version: 1,
            timestamp: T,
            entries: vec![DeviceEntry::local(account, device, 1)],
        }
        .sign(account)
        .unwrap();
        VerifiedDeviceList::verify(&bytes, &account.public(), None).unwrap()
    };
    let (alice_list, bob_list) = (list(&alice_account, &alice), list(&bob_account, &bob));
    let (mut alice_book, mut bob_book) = (SessionBook::new(), SessionBook::new());
    for book in [&mut alice_book, &mut bob_book] {
        book.apply_device_list(&alice_list).unwrap();
        book.apply_device_list(&bob_list).unwrap();
    }
    let alice_address = Address {
        account: alice_account.public(),
        device: 1,
    };
    let bob_address = Address {
        account: bob_account.public(),
        device: 1,
    };
    let new_session = |rng: &mut ChaCha20Rng, book: &mut SessionBook| {
        let bundle = PreKeyBundle::new(bob.public(), bob_prekeys.signed_prekey(), None)
            .with_kem_prekey(bob_prekeys.last_resort_kem_prekey())
            .verify()
            .unwrap();
        book.insert(bob_address, Session::initiate(rng, &alice, bundle).unwrap())
            .unwrap();
    };
    let send = |rng: &mut ChaCha20Rng, book: &mut SessionBook, text: &[u8]| {
        let out = book
            .fan_out(rng, &[bob_account.public()], &alice_address, text)
            .unwrap();
        (Message::from_bytes(&out.entries[0].1).unwrap(), out.body)
    };
    new_session(&mut rng, &mut alice_book);
    let (m1, b1) = send(&mut rng, &mut alice_book, b"one");
    let (m2, b2) = send(&mut rng, &mut alice_book, b"two");
    new_session(&mut rng, &mut alice_book);
    let (m3, b3) = send(&mut rng, &mut alice_book, b"three");
    for (m, b) in [(&m1, &b1), (&m3, &b3)] {
        bob_book
            .receive_fan_out(&mut rng, &bob, &mut bob_prekeys, &alice_address, m, b)
            .unwrap();
    }
    // m2 belongs to the first session, now archived behind the second.
    assert!(matches!(m2, Message::PreKey(_)));
    assert_eq!(bob_book.session_count(&alice_address), 2);
    let mut wrong = b2.clone();
    wrong[5] ^= 1;
    let before = (bob_book.snapshot(), bob_prekeys.snapshot());
    let got = bob_book
        .receive_fan_out(
            &mut rng,
            &bob,
            &mut bob_prekeys,
            &alice_address,
            &m2,
            &wrong,
        )
        .map(|r| r.plaintext.to_vec());
    assert!((bob_book.snapshot(), bob_prekeys.snapshot()) == before);
    // The right body still decrypts.
    let mut probe = SessionBook::restore(&bob_book.snapshot()).unwrap();
    let mut probe_prekeys = PreKeys::restore(&bob_prekeys.snapshot()).unwrap();
    let right = probe
        .receive_fan_out(&mut rng, &bob, &mut probe_prekeys, &alice_address, &m2, &b2)
        .unwrap();
    assert_eq!(&right.plaintext[..], b"two");
    assert_eq!(
        got,
        Err(ReceiveError::Decrypt(DecryptError::Unauthenticated)),
        "documented error for a body that does not match its entry"
    );
}
