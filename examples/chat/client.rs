//! A client device: identity and prekeys, a session book, group sessions, pinned contacts and
//! their verified device lists, a sender certificate, and the app's message history — all
//! persisted to the device's SQLite database after every change and before every send.
//!
//! Sending: 1:1 messages are sealed fan-outs to the peer's devices and this account's other
//! devices ([`SessionBook::fan_out_sealed`]); sender-key distributions are sealed fan-outs to
//! exactly their recipients; group messages are sealed to the members
//! ([`SessionBook::seal_to`]). Devices without a session get one first, from a bundle fetched
//! from the key server and checked against the device's listed key.
//!
//! Receiving: [`Envelope::from_bytes`], then `open_sealed` for sealed envelopes, then the
//! session book (pairwise and fan-out) or the group session (group messages, held back until
//! their sender key arrives).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use confidant::attachment::{AttachmentDecryptor, AttachmentPointer};
use confidant::book::{Address, ReceiveError, SessionBook};
use confidant::certificate::CertificateValidator;
use confidant::content::{self, Content};
use confidant::device::{DeviceEntry, DeviceList, LinkRequest, VerifiedDeviceList};
use confidant::envelope::{Envelope, EnvelopeContent, EnvelopeKind};
use confidant::group::{
    GroupError, GroupId, GroupMessage, GroupSession, KeyStatus, RotationPolicy,
    SenderKeyDistribution, member_devices,
};
use confidant::safety::{KeyChange, KnownAccounts, SafetyNumber};
use confidant::sealed::{self, SealedRecipient};
use confidant::{
    DecryptError, IdentityKey, IdentityKeyPair, Message, PreKeyBundle, PreKeys, SealedError,
    Session, Timestamp,
};
use rand_chacha::ChaCha20Rng;

use crate::relay::{Relay, Stored};
use crate::store::{LogRow, Reader, Store, Writer};

/// The app's own payload format, inside `content::application` framing (so always encrypted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum App {
    /// A text message.
    Text {
        /// Message id (random, unique).
        id: u64,
        /// The text.
        text: String,
    },
    /// Delivery receipt for these message ids.
    Delivered(Vec<u64>),
    /// Read receipt for these message ids.
    Read(Vec<u64>),
    /// Typing indicator on/off.
    Typing(bool),
    /// An attachment: its pointer (key, digest, size, chunk size) and where it is stored.
    Attachment {
        /// Message id.
        id: u64,
        /// File name.
        name: String,
        /// Relay blob id.
        blob: u64,
        /// `AttachmentPointer::to_bytes()`.
        pointer: Vec<u8>,
    },
    /// A group's id, name and member accounts (sent when a group is created or a device joins).
    GroupInfo {
        /// The group.
        group: GroupId,
        /// Its name.
        name: String,
        /// Member account keys.
        accounts: Vec<IdentityKey>,
    },
}

impl App {
    /// Encodes the payload.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            Self::Text { id, text } => w.u8(1).u64(*id).str(text),
            Self::Delivered(ids) | Self::Read(ids) => {
                w.u8(if matches!(self, Self::Delivered(_)) {
                    2
                } else {
                    3
                })
                .u64(ids.len() as u64);
                for id in ids {
                    w.u64(*id);
                }
                &mut w
            }
            Self::Typing(on) => w.u8(4).u8(u8::from(*on)),
            Self::Attachment {
                id,
                name,
                blob,
                pointer,
            } => w.u8(5).u64(*id).str(name).u64(*blob).bytes(pointer),
            Self::GroupInfo {
                group,
                name,
                accounts,
            } => {
                w.u8(6)
                    .bytes(&group.to_bytes())
                    .str(name)
                    .u64(accounts.len() as u64);
                for a in accounts {
                    w.bytes(&a.to_bytes());
                }
                &mut w
            }
        };
        w.finish()
    }

    /// Decodes a payload; `None` if malformed.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader::new(bytes);
        let app = match r.u8()? {
            1 => Self::Text {
                id: r.u64()?,
                text: r.string()?,
            },
            tag @ (2 | 3) => {
                let n = r.u64()?;
                let ids = (0..n.min(10_000))
                    .map(|_| r.u64())
                    .collect::<Option<Vec<_>>>()?;
                if tag == 2 {
                    Self::Delivered(ids)
                } else {
                    Self::Read(ids)
                }
            }
            4 => Self::Typing(r.u8()? == 1),
            5 => Self::Attachment {
                id: r.u64()?,
                name: r.string()?,
                blob: r.u64()?,
                pointer: r.bytes()?.to_vec(),
            },
            6 => {
                let group = GroupId::from_bytes(r.array()?);
                let name = r.string()?;
                let n = r.u64()?;
                let accounts = (0..n.min(64))
                    .map(|_| IdentityKey::from_bytes(r.bytes()?).ok())
                    .collect::<Option<Vec<_>>>()?;
                Self::GroupInfo {
                    group,
                    name,
                    accounts,
                }
            }
            _ => return None,
        };
        r.is_empty().then_some(app)
    }
}

/// What processing one envelope (or retrying held ones) produced.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// An application payload.
    App {
        /// The authenticated sender device.
        from: Address,
        /// The payload.
        app: App,
        /// The group it was sent to, if any.
        group: Option<GroupId>,
    },
    /// A sender key was installed.
    Key {
        /// Whose.
        from: Address,
        /// New, known or advanced.
        status: KeyStatus,
    },
    /// A group message waits for its sender key, or a sender key for its group.
    Held {
        /// From whom.
        from: Address,
        /// Whether it is a sender key (waiting for the group) rather than a message.
        distribution: bool,
    },
    /// The envelope was refused; nothing changed.
    Rejected {
        /// The sender, when known.
        from: Option<Address>,
        /// Why.
        reason: String,
        /// Whether it was refused as a duplicate (replayed) message.
        duplicate: bool,
    },
}

/// Result of a send.
#[derive(Debug, Default)]
pub(crate) struct Sent {
    /// Envelopes the relay queued, by recipient device, with their bytes.
    pub(crate) queued: Vec<(Address, Vec<u8>)>,
    /// Devices this send had to start a session with (from a fetched bundle).
    pub(crate) new_sessions: Vec<Address>,
    /// Devices that received a sender-key distribution with this send.
    pub(crate) distributed_to: Vec<Address>,
    /// The group message, for group sends.
    pub(crate) group_message: Option<Vec<u8>>,
    /// Upload size(s).
    pub(crate) upload_bytes: usize,
}

/// What applying a changed device list did.
#[derive(Debug)]
pub(crate) struct ListEvent {
    /// Whose list.
    pub(crate) account: IdentityKey,
    /// Its version.
    pub(crate) version: u64,
    /// Devices added.
    pub(crate) added: Vec<u32>,
    /// Devices removed.
    pub(crate) removed: Vec<u32>,
}

/// A device's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stats {
    /// App messages sent (texts and attachments).
    pub(crate) sent: u64,
    /// App messages received (texts and attachments).
    pub(crate) received: u64,
    /// Receipts and typing indicators received.
    pub(crate) signals: u64,
    /// Envelopes refused as duplicates.
    pub(crate) duplicates: u64,
    /// Envelopes refused otherwise.
    pub(crate) failed: u64,
}

/// The primary device's account role: it holds the account key and signs device lists.
struct Primary {
    account: IdentityKeyPair,
    version: u64,
}

/// A group as this device sees it.
struct Group {
    session: GroupSession,
    name: String,
    accounts: Vec<IdentityKey>,
}

/// Something waiting: a group message without its sender key, or a distribution for a group
/// this device does not know yet.
enum Held {
    Message { sender: Address, message: Vec<u8> },
    Distribution { sender: Address, bytes: Vec<u8> },
}

/// One received app message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delivery {
    /// Message id.
    pub(crate) msg_id: u64,
    /// Sender as `account-id/device-id`.
    pub(crate) from: String,
    /// The text or attachment name.
    pub(crate) body: String,
    /// Group or direct.
    pub(crate) group: bool,
}

/// A client device.
pub(crate) struct Device {
    /// Display name (`bob.phone`): the demo's, never sent anywhere.
    pub(crate) name: String,
    account_id: String,
    /// This device's address.
    pub(crate) address: Address,
    identity: IdentityKeyPair,
    prekeys: PreKeys,
    book: SessionBook,
    groups: BTreeMap<GroupId, Group>,
    held: Vec<Held>,
    known: KnownAccounts,
    /// Pinned contacts: account id → account key (own account included).
    contacts: BTreeMap<String, IdentityKey>,
    lists: BTreeMap<IdentityKey, VerifiedDeviceList>,
    list_bytes: BTreeMap<IdentityKey, Vec<u8>>,
    certificate: Vec<u8>,
    root: IdentityKey,
    validator: CertificateValidator,
    primary: Option<Primary>,
    log: Vec<Delivery>,
    persisted_log: usize,
    /// Message id → (delivered to, read by) for messages this device sent.
    pub(crate) receipts: BTreeMap<u64, (BTreeSet<Address>, BTreeSet<Address>)>,
    /// Counters.
    pub(crate) stats: Stats,
    store: Store,
}

/// `map_err(ctx("what"))`: an error with its context, as a `String`.
fn ctx<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl Device {
    /// A new device with a fresh store at `db`. `primary` is the account key pair for the
    /// account's primary device.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create(
        rng: &mut ChaCha20Rng,
        now: Timestamp,
        name: &str,
        account_id: &str,
        account: IdentityKey,
        device_id: u32,
        primary: Option<IdentityKeyPair>,
        root: IdentityKey,
        db: &Path,
    ) -> Result<Self, String> {
        let identity = IdentityKeyPair::generate(rng);
        let prekeys = PreKeys::new(rng, &identity, now);
        let mut contacts = BTreeMap::new();
        contacts.insert(account_id.to_string(), account);
        let mut device = Self {
            name: name.to_string(),
            account_id: account_id.to_string(),
            address: Address {
                account,
                device: device_id,
            },
            identity,
            prekeys,
            book: SessionBook::new(),
            groups: BTreeMap::new(),
            held: Vec::new(),
            known: KnownAccounts::new(),
            contacts,
            lists: BTreeMap::new(),
            list_bytes: BTreeMap::new(),
            certificate: Vec::new(),
            root,
            validator: CertificateValidator::new(root),
            primary: primary.map(|account| Primary {
                account,
                version: 0,
            }),
            log: Vec::new(),
            persisted_log: 0,
            receipts: BTreeMap::new(),
            stats: Stats::default(),
            store: Store::open(db)?,
        };
        device.persist()?;
        Ok(device)
    }

    /// This device's identity key.
    pub(crate) fn identity_key(&self) -> IdentityKey {
        self.identity.public()
    }

    /// The received app messages, oldest first (restored from the database after a restart).
    pub(crate) fn log(&self) -> &[Delivery] {
        &self.log
    }

    /// Size of the database.
    pub(crate) fn db_size(&self) -> u64 {
        self.store.size()
    }

    /// Path of the database.
    pub(crate) fn db_path(&self) -> &Path {
        self.store.path()
    }

    /// Sessions held (active and archived) with `peer`.
    pub(crate) fn session_count(&self, peer: &Address) -> usize {
        self.book.session_count(peer)
    }

    /// Devices this device has an active session with.
    pub(crate) fn active_sessions(&self) -> usize {
        self.book.devices().filter(|(_, has)| *has).count()
    }

    /// The base key of the active session with `peer` (equal on both sides iff both use the
    /// same session).
    pub(crate) fn active_base_key(&mut self, peer: &Address) -> Option<[u8; 32]> {
        self.book.active_mut(peer).map(|s| s.base_key().to_bytes())
    }

    /// Messages waiting for a sender key.
    pub(crate) fn held(&self) -> usize {
        self.held.len()
    }

    /// `account-id/device-id` for a device, from the pinned contacts.
    pub(crate) fn label(&self, address: &Address) -> String {
        let account = self
            .contacts
            .iter()
            .find(|(_, k)| **k == address.account)
            .map_or_else(|| "?".to_string(), |(n, _)| n.clone());
        format!("{account}/{}", address.device)
    }

    // ---- keys, contacts, lists, certificates ---------------------------------------------

    /// Generates one-time prekeys, persists, then uploads them (with the current signed and
    /// last-resort KEM prekeys). Returns the upload size.
    pub(crate) fn upload_prekeys(
        &mut self,
        rng: &mut ChaCha20Rng,
        relay: &mut Relay,
        ec: usize,
        kem: usize,
    ) -> Result<usize, String> {
        let otks = self
            .prekeys
            .generate_one_time_prekeys(rng, ec)
            .map_err(ctx("prekeys"))?;
        let kem_otks = self
            .prekeys
            .generate_one_time_kem_prekeys(rng, &self.identity, kem)
            .map_err(ctx("KEM prekeys"))?;
        self.persist()?; // persist before upload
        let upload = self
            .prekeys
            .upload(&self.identity, otks, kem_otks)
            .to_bytes();
        relay.upload_keys(self.address, &upload)?;
        Ok(upload.len())
    }

    /// Tops up one-time prekeys if the key server said the stock is low. Returns the upload
    /// size if it did.
    pub(crate) fn top_up_prekeys(
        &mut self,
        rng: &mut ChaCha20Rng,
        relay: &mut Relay,
    ) -> Result<Option<usize>, String> {
        if !relay.low_stock(&self.address) {
            return Ok(None);
        }
        self.upload_prekeys(rng, relay, 20, 20).map(Some)
    }

    /// Pins a contact's account key (trust on first use, to be verified with safety numbers).
    pub(crate) fn add_contact(
        &mut self,
        account_id: &str,
        key: IdentityKey,
    ) -> Result<KeyChange, String> {
        let change = self
            .known
            .observe(account_id.as_bytes(), &key)
            .map_err(ctx("contact"))?;
        self.contacts.insert(account_id.to_string(), key);
        self.persist()?;
        Ok(change)
    }

    /// The pinned contacts (to hand to a newly linked device).
    pub(crate) fn contacts(&self) -> Vec<(String, IdentityKey)> {
        self.contacts.iter().map(|(n, k)| (n.clone(), *k)).collect()
    }

    /// Requests a sender certificate valid until `expires`.
    pub(crate) fn renew_certificate(&mut self, relay: &mut Relay, expires: Timestamp) -> bool {
        match relay.sender_certificate(&self.address, expires) {
            Some(c) => {
                self.certificate = c;
                self.persist().is_ok()
            }
            None => false,
        }
    }

    /// Verifies and applies a contact's signed device list (pinned account key, no rollback).
    pub(crate) fn apply_list(
        &mut self,
        account: &IdentityKey,
        bytes: &[u8],
    ) -> Result<ListEvent, String> {
        let previous = self.lists.get(account);
        let list =
            VerifiedDeviceList::verify(bytes, account, previous).map_err(ctx("device list"))?;
        let changes = previous.map(|p| list.changes_since(p));
        self.book
            .apply_device_list(&list)
            .map_err(ctx("device list"))?;
        // A changed account key would be reported here (KeyChange::Changed): the lists are
        // verified under the pinned key, so within this demo it never changes.
        let _ = self.known.observe_list(&list).map_err(ctx("device list"))?;
        let event = ListEvent {
            account: *account,
            version: list.version(),
            added: match &changes {
                Some(c) => c.added.iter().map(|(d, _)| *d).collect(),
                None => list.entries().iter().map(DeviceEntry::device_id).collect(),
            },
            removed: changes.map(|c| c.removed).unwrap_or_default(),
        };
        self.lists.insert(*account, list);
        self.list_bytes.insert(*account, bytes.to_vec());
        Ok(event)
    }

    /// Fetches every contact's device list; applies the changed ones, then updates the groups
    /// (sending the current sender key to added devices). Returns what changed and the sends.
    pub(crate) fn refresh_lists(
        &mut self,
        rng: &mut ChaCha20Rng,
        relay: &mut Relay,
    ) -> Result<(Vec<ListEvent>, Vec<Sent>), String> {
        let mut events = Vec::new();
        for key in self.contacts.values().copied().collect::<Vec<_>>() {
            let Some(bytes) = relay.device_list(&key) else {
                continue;
            };
            if self.list_bytes.get(&key) == Some(&bytes) {
                continue;
            }
            events.push(self.apply_list(&key, &bytes)?);
        }
        let sends = if events.is_empty() {
            Vec::new()
        } else {
            self.update_groups(rng, relay)?
        };
        self.persist()?;
        Ok((events, sends))
    }

    fn members_of(&self, accounts: &[IdentityKey]) -> Vec<Address> {
        member_devices(accounts.iter().filter_map(|a| self.lists.get(a)))
    }

    /// Re-derives every group's members from the verified lists (PROTOCOL.md §17.6).
    fn update_groups(
        &mut self,
        rng: &mut ChaCha20Rng,
        relay: &mut Relay,
    ) -> Result<Vec<Sent>, String> {
        let mut pending = Vec::new();
        let ids: Vec<GroupId> = self.groups.keys().copied().collect();
        for id in ids {
            let Some(g) = self.groups.get(&id) else {
                continue;
            };
            let members = self.members_of(&g.accounts);
            let Some(g) = self.groups.get_mut(&id) else {
                continue;
            };
            match g.session.set_members(&members) {
                Ok(update) => {
                    if let Some(d) = update.distribution {
                        pending.push(d);
                    }
                }
                // Removed from its own account: keep the stale state (nothing new is readable).
                Err(GroupError::OwnDeviceNotListed) => {}
                Err(e) => return Err(ctx("group members")(e)),
            }
        }
        let mut sends = Vec::new();
        for d in pending {
            let mut sent = self.send_sealed_to(rng, relay, &d.recipients, &d.message)?;
            sent.distributed_to = d.recipients.clone();
            sends.push(sent);
        }
        Ok(sends)
    }

    /// The safety number with a contact's account, from both verified lists.
    pub(crate) fn safety_number(&self, peer: &IdentityKey) -> Option<SafetyNumber> {
        Some(SafetyNumber::from_lists(
            self.lists.get(&self.address.account)?,
            self.lists.get(peer)?,
        ))
    }

    /// Marks a contact verified after comparing safety numbers.
    pub(crate) fn mark_verified(&mut self, account_id: &str) -> bool {
        let Some(key) = self.contacts.get(account_id).copied() else {
            return false;
        };
        let ok = self.known.mark_verified(account_id.as_bytes(), &key);
        ok && self.persist().is_ok()
    }

    // ---- account (primary device) --------------------------------------------------------

    /// This account's current device entries (from its own verified list).
    pub(crate) fn account_entries(&self) -> Vec<DeviceEntry> {
        self.lists
            .get(&self.address.account)
            .map(|l| l.entries().to_vec())
            .unwrap_or_default()
    }

    /// The primary's own entry.
    pub(crate) fn own_entry(&self) -> Option<DeviceEntry> {
        let p = self.primary.as_ref()?;
        Some(DeviceEntry::local(
            &p.account,
            &self.identity,
            self.address.device,
        ))
    }

    /// What this (new, not yet listed) device shows the primary to be linked: a QR code.
    pub(crate) fn link_request(&self) -> Vec<u8> {
        LinkRequest::new(&self.identity, &self.address.account).to_bytes()
    }

    /// Links a device from its link request (what the new device shows as a QR code).
    pub(crate) fn link(&self, request: &[u8], device_id: u32) -> Result<DeviceEntry, String> {
        let p = self.primary.as_ref().ok_or("not the primary device")?;
        let request = LinkRequest::from_bytes(request).map_err(ctx("link request"))?;
        DeviceEntry::link(&p.account, &request, device_id).map_err(ctx("link"))
    }

    /// Signs and publishes the account's device list with these entries; returns its version.
    pub(crate) fn publish_list(
        &mut self,
        relay: &mut Relay,
        now: Timestamp,
        entries: Vec<DeviceEntry>,
    ) -> Result<u64, String> {
        let p = self.primary.as_mut().ok_or("not the primary device")?;
        p.version += 1;
        let bytes = DeviceList {
            account_id: self.account_id.as_bytes().to_vec(),
            version: p.version,
            timestamp: now,
            entries,
        }
        .sign(&p.account)
        .map_err(ctx("sign list"))?;
        let version = p.version;
        self.persist()?;
        relay.publish_list(&self.address.account, &bytes)?;
        Ok(version)
    }

    // ---- groups ------------------------------------------------------------------------

    /// Creates (or joins) a group over these member accounts' current devices.
    pub(crate) fn install_group(
        &mut self,
        id: GroupId,
        name: &str,
        accounts: &[IdentityKey],
    ) -> Result<usize, String> {
        if self.groups.contains_key(&id) {
            return Ok(0);
        }
        let members = self.members_of(accounts);
        let session = GroupSession::new(id, self.address, &members, RotationPolicy::default())
            .map_err(ctx("group"))?;
        self.groups.insert(
            id,
            Group {
                session,
                name: name.to_string(),
                accounts: accounts.to_vec(),
            },
        );
        self.persist()?;
        Ok(members.len())
    }

    /// The group's name and member accounts.
    pub(crate) fn group_info(&self, id: &GroupId) -> Option<App> {
        let g = self.groups.get(id)?;
        Some(App::GroupInfo {
            group: *id,
            name: g.name.clone(),
            accounts: g.accounts.clone(),
        })
    }

    // ---- sending -----------------------------------------------------------------------

    /// Starts a session (from a fetched, verified bundle) with every target that has none.
    fn ensure_sessions(
        &mut self,
        rng: &mut ChaCha20Rng,
        relay: &mut Relay,
        targets: &[Address],
    ) -> Result<Vec<Address>, String> {
        let missing: Vec<Address> = self
            .book
            .devices()
            .filter(|(a, has)| !has && targets.contains(a) && *a != self.address)
            .map(|(a, _)| a)
            .collect();
        let mut started = Vec::new();
        for address in missing {
            let Some(listed) = self.book.device_key(&address) else {
                continue;
            };
            let Some(bytes) = relay.fetch_bundle(&address) else {
                continue;
            };
            // The bundle must be signed by the key the account's verified list gives.
            let bundle = PreKeyBundle::from_bytes(&bytes)
                .map_err(ctx("bundle"))?
                .verify_for(&listed)
                .map_err(ctx("bundle"))?;
            let session =
                Session::initiate(rng, &self.identity, bundle).map_err(ctx("initiate"))?;
            self.book.insert(address, session).map_err(ctx("insert"))?;
            started.push(address);
        }
        Ok(started)
    }

    /// Sends an app payload to every device of `accounts` (the own account's other devices
    /// too if it is listed), sealed unless `unsealed`.
    pub(crate) fn send_direct(
        &mut self,
        rng: &mut ChaCha20Rng,
        relay: &mut Relay,
        accounts: &[IdentityKey],
        app: &App,
        unsealed: bool,
    ) -> Result<Sent, String> {
        let targets: Vec<Address> = self
            .book
            .devices()
            .map(|(a, _)| a)
            .filter(|a| accounts.contains(&a.account) && *a != self.address)
            .collect();
        let new_sessions = self.ensure_sessions(rng, relay, &targets)?;
        let payload = content::application(&app.encode());
        let upload = if unsealed {
            let fan_out = self
                .book
                .fan_out(rng, accounts, &self.address, &payload)
                .map_err(ctx("fan-out"))?;
            fan_out.to_upload(&self.address)
        } else {
            let sealed = self
                .book
                .fan_out_sealed(
                    rng,
                    &self.identity,
                    &self.certificate,
                    accounts,
                    &self.address,
                    &payload,
                )
                .map_err(ctx("sealed fan-out"))?;
            if !sealed.needs_bundle.is_empty() {
                return Err(format!(
                    "{} devices without a session",
                    sealed.needs_bundle.len()
                ));
            }
            sealed.upload
        };
        if matches!(app, App::Text { .. } | App::Attachment { .. }) {
            self.stats.sent += 1;
        }
        if let App::Text { id, .. } | App::Attachment { id, .. } = app {
            self.receipts.entry(*id).or_default();
        }
        self.persist()?; // persist before send
        let authenticated = unsealed.then_some(self.address);
        let queued = relay.submit(authenticated, &upload)?;
        Ok(Sent {
            queued,
            new_sessions,
            upload_bytes: upload.len(),
            ..Sent::default()
        })
    }

    /// Sends `plaintext` (a distribution) to exactly `targets`, sealed. The library has no
    /// sealed variant of `fan_out_to`, so this seals the fan-out itself with `sealed::seal`.
    fn send_sealed_to(
        &mut self,
        rng: &mut ChaCha20Rng,
        relay: &mut Relay,
        targets: &[Address],
        plaintext: &[u8],
    ) -> Result<Sent, String> {
        let new_sessions = self.ensure_sessions(rng, relay, targets)?;
        let fan_out = self
            .book
            .fan_out_to(rng, targets, plaintext)
            .map_err(ctx("fan-out"))?;
        if !fan_out.needs_bundle.is_empty() {
            return Err(format!(
                "{} devices without a session",
                fan_out.needs_bundle.len()
            ));
        }
        let mut recipients = Vec::with_capacity(fan_out.entries.len());
        for (address, entry) in &fan_out.entries {
            recipients.push(SealedRecipient {
                address: *address,
                identity_key: self.book.device_key(address).ok_or("unlisted device")?,
                entry: Some(entry),
            });
        }
        let upload = sealed::seal(
            rng,
            &self.identity,
            &self.certificate,
            EnvelopeKind::FanOut,
            &fan_out.body,
            &recipients,
            true, // a decoy to itself: explicit recipient sets are group-like
        )
        .map_err(ctx("seal"))?;
        self.persist()?; // persist before send
        let queued = relay.submit(None, &upload)?;
        Ok(Sent {
            queued,
            new_sessions,
            upload_bytes: upload.len(),
            ..Sent::default()
        })
    }

    /// Sends an app payload to a group: the sender-key distribution first when this send
    /// starts a new key, then the group message sealed to every other member device.
    pub(crate) fn send_group(
        &mut self,
        rng: &mut ChaCha20Rng,
        relay: &mut Relay,
        now: Timestamp,
        group: &GroupId,
        app: &App,
    ) -> Result<Sent, String> {
        let g = self.groups.get_mut(group).ok_or("unknown group")?;
        let send = g
            .session
            .encrypt(rng, now, &content::application(&app.encode()))
            .map_err(ctx("group encrypt"))?;
        let members: Vec<Address> = g
            .session
            .members()
            .filter(|a| **a != self.address)
            .copied()
            .collect();
        let mut out = Sent::default();
        if let Some(d) = send.distribution {
            let sent = self.send_sealed_to(rng, relay, &d.recipients, &d.message)?;
            out.queued.extend(sent.queued);
            out.new_sessions = sent.new_sessions;
            out.distributed_to = d.recipients.clone();
            out.upload_bytes += sent.upload_bytes;
        }
        let (upload, _unknown) = self
            .book
            .seal_to(
                rng,
                &self.identity,
                &self.certificate,
                EnvelopeKind::Group,
                &send.message,
                &members,
            )
            .map_err(ctx("seal"))?;
        if matches!(app, App::Text { .. } | App::Attachment { .. }) {
            self.stats.sent += 1;
        }
        self.persist()?; // persist before send
        out.queued.extend(relay.submit(None, &upload)?);
        out.upload_bytes += upload.len();
        out.group_message = Some(send.message);
        Ok(out)
    }

    // ---- receiving ---------------------------------------------------------------------

    /// Fetches the queue, processes it in order, persists after every envelope, then
    /// acknowledges.
    pub(crate) fn sync(
        &mut self,
        rng: &mut ChaCha20Rng,
        relay: &mut Relay,
        now: Timestamp,
    ) -> Result<Vec<Outcome>, String> {
        let batch = relay.fetch(&self.address);
        let out = self.process_batch(rng, now, &batch)?;
        relay.ack(&self.address, &batch.iter().map(|s| s.id).collect());
        Ok(out)
    }

    /// Processes a fetched batch (persisting after every envelope) without acknowledging.
    /// Whether `bytes` is the decoy of one of this device's own sealed sends (sealed to itself
    /// so that the server cannot tell the sender from the recipient set): dropped on receipt.
    pub(crate) fn is_own_decoy(&self, bytes: &[u8]) -> bool {
        match Envelope::from_bytes(bytes).map(|e| e.content) {
            Ok(EnvelopeContent::Sealed(s)) => matches!(
                sealed::open(&self.identity, &s, &self.validator, Timestamp(0)),
                Err(SealedError::FromSelf)
            ),
            _ => false,
        }
    }

    pub(crate) fn process_batch(
        &mut self,
        rng: &mut ChaCha20Rng,
        now: Timestamp,
        batch: &[Stored],
    ) -> Result<Vec<Outcome>, String> {
        let mut out = Vec::new();
        for stored in batch {
            out.extend(self.process(rng, now, &stored.bytes));
            self.persist()?;
        }
        Ok(out)
    }

    fn rejected(&mut self, from: Option<Address>, reason: String, duplicate: bool) -> Outcome {
        if duplicate {
            self.stats.duplicates += 1;
        } else {
            self.stats.failed += 1;
        }
        Outcome::Rejected {
            from,
            reason,
            duplicate,
        }
    }

    /// Processes one envelope.
    pub(crate) fn process(
        &mut self,
        rng: &mut ChaCha20Rng,
        now: Timestamp,
        bytes: &[u8],
    ) -> Vec<Outcome> {
        let envelope = match Envelope::from_bytes(bytes) {
            Ok(e) => e,
            Err(e) => return vec![self.rejected(None, format!("malformed envelope: {e}"), false)],
        };
        if envelope.recipient != self.address {
            return vec![self.rejected(None, "not addressed to this device".into(), false)];
        }
        // Unsealed kinds name their sender (the relay checked it against the uploader).
        let outer_sender = envelope.sender();
        let (sender, content) = match envelope.content {
            EnvelopeContent::Sealed(s) => {
                match self
                    .book
                    .open_sealed(&self.identity, &self.validator, now, &s)
                {
                    Ok(unsealed) => (unsealed.sender(), unsealed.content),
                    // The decoy of one of this device's own sends: nothing to read.
                    Err(SealedError::FromSelf) => return Vec::new(),
                    Err(e) => return vec![self.rejected(None, format!("sealed: {e}"), false)],
                }
            }
            other => match outer_sender {
                Some(sender) => (sender, other),
                None => return vec![self.rejected(None, "no sender".into(), false)],
            },
        };
        match content {
            EnvelopeContent::FanOut { entry, body, .. } => {
                let received = Message::from_bytes(&entry)
                    .map_err(|e| ReceiveError::Decrypt(DecryptError::Malformed(e)))
                    .and_then(|m| {
                        self.book.receive_fan_out(
                            rng,
                            &self.identity,
                            &mut self.prekeys,
                            &sender,
                            &m,
                            &body,
                        )
                    });
                match received {
                    Ok(r) => self.on_plaintext(sender, &r.plaintext),
                    Err(e) => vec![self.receive_error(sender, e)],
                }
            }
            EnvelopeContent::PreKey { message, .. } | EnvelopeContent::Ratchet { message, .. } => {
                let received = Message::from_bytes(&message)
                    .map_err(|e| ReceiveError::Decrypt(DecryptError::Malformed(e)))
                    .and_then(|m| {
                        self.book
                            .receive(rng, &self.identity, &mut self.prekeys, &sender, &m)
                    });
                match received {
                    Ok(r) => self.on_plaintext(sender, &r.plaintext),
                    Err(e) => vec![self.receive_error(sender, e)],
                }
            }
            EnvelopeContent::Group { message, .. } => self.on_group(sender, &message, false),
            EnvelopeContent::Sealed(_) => {
                vec![self.rejected(Some(sender), "sealed inside sealed".into(), false)]
            }
        }
    }

    fn receive_error(&mut self, sender: Address, e: ReceiveError) -> Outcome {
        let duplicate = matches!(e, ReceiveError::Decrypt(DecryptError::Duplicate { .. }));
        self.rejected(Some(sender), e.to_string(), duplicate)
    }

    fn on_plaintext(&mut self, sender: Address, plaintext: &[u8]) -> Vec<Outcome> {
        match content::parse(plaintext) {
            Ok(Content::Application(bytes)) => match App::decode(bytes) {
                Some(app) => self.on_app(sender, app, None),
                None => vec![self.rejected(Some(sender), "unknown app payload".into(), false)],
            },
            Ok(Content::Distribution(d)) => self.on_distribution(sender, &d, true),
            Ok(_) => vec![self.rejected(Some(sender), "unknown content".into(), false)],
            Err(e) => vec![self.rejected(Some(sender), format!("content: {e}"), false)],
        }
    }

    fn on_app(&mut self, from: Address, app: App, group: Option<GroupId>) -> Vec<Outcome> {
        let mut out = Vec::new();
        match &app {
            App::Text { id, text } => self.record(from, *id, text, group.is_some()),
            App::Attachment { id, name, .. } => self.record(from, *id, name, group.is_some()),
            App::Delivered(ids) | App::Read(ids) => {
                self.stats.signals += 1;
                let read = matches!(app, App::Read(_));
                for id in ids {
                    if let Some((delivered, read_by)) = self.receipts.get_mut(id) {
                        if read {
                            read_by.insert(from);
                        } else {
                            delivered.insert(from);
                        }
                    }
                }
            }
            App::Typing(_) => self.stats.signals += 1,
            App::GroupInfo {
                group: id,
                name,
                accounts,
            } => {
                // Only a member account may announce a group, and only one this account is in.
                let member = accounts.contains(&from.account);
                let mine = accounts.contains(&self.address.account);
                if member && mine && self.install_group(*id, name, accounts).is_ok() {
                    out.extend(self.retry_held());
                }
            }
        }
        out.insert(0, Outcome::App { from, app, group });
        out
    }

    fn record(&mut self, from: Address, msg_id: u64, body: &str, group: bool) {
        self.stats.received += 1;
        let from = self.label(&from);
        self.log.push(Delivery {
            msg_id,
            from,
            body: body.to_string(),
            group,
        });
    }

    fn on_distribution(
        &mut self,
        sender: Address,
        d: &SenderKeyDistribution,
        retry: bool,
    ) -> Vec<Outcome> {
        let Some(g) = self.groups.get_mut(&d.group_id()) else {
            self.held.push(Held::Distribution {
                sender,
                bytes: d.to_bytes().to_vec(),
            });
            return vec![Outcome::Held {
                from: sender,
                distribution: true,
            }];
        };
        match g.session.receive_distribution(&sender, d) {
            Ok(status) => {
                let mut out = vec![Outcome::Key {
                    from: sender,
                    status,
                }];
                if retry && matches!(status, KeyStatus::New | KeyStatus::Advanced) {
                    out.extend(self.retry_held());
                }
                out
            }
            Err(e) => vec![self.rejected(Some(sender), format!("distribution: {e}"), false)],
        }
    }

    fn on_group(&mut self, sender: Address, message: &[u8], retrying: bool) -> Vec<Outcome> {
        let parsed = match GroupMessage::from_bytes(message) {
            Ok(m) => m,
            Err(e) => return vec![self.rejected(Some(sender), format!("group: {e}"), false)],
        };
        let id = parsed.group_id();
        let Some(g) = self.groups.get_mut(&id) else {
            self.held.push(Held::Message {
                sender,
                message: message.to_vec(),
            });
            return if retrying {
                Vec::new()
            } else {
                vec![Outcome::Held {
                    from: sender,
                    distribution: false,
                }]
            };
        };
        match g.session.decrypt(&sender, &parsed) {
            Ok(plaintext) => match content::parse(&plaintext) {
                Ok(Content::Application(bytes)) => match App::decode(bytes) {
                    Some(app) => self.on_app(sender, app, Some(id)),
                    None => vec![self.rejected(Some(sender), "unknown app payload".into(), false)],
                },
                _ => vec![self.rejected(Some(sender), "group content".into(), false)],
            },
            Err(GroupError::UnknownSenderKey { .. }) => {
                self.held.push(Held::Message {
                    sender,
                    message: message.to_vec(),
                });
                if retrying {
                    Vec::new()
                } else {
                    vec![Outcome::Held {
                        from: sender,
                        distribution: false,
                    }]
                }
            }
            Err(e) => {
                let duplicate = matches!(e, GroupError::Duplicate { .. });
                vec![self.rejected(Some(sender), format!("group: {e}"), duplicate)]
            }
        }
    }

    /// Retries what was held: distributions for groups now known, then group messages.
    fn retry_held(&mut self) -> Vec<Outcome> {
        let held = std::mem::take(&mut self.held);
        let mut out = Vec::new();
        let mut messages = Vec::new();
        for h in held {
            match h {
                Held::Distribution { sender, bytes } => {
                    match SenderKeyDistribution::from_bytes(&bytes) {
                        Ok(d) if self.groups.contains_key(&d.group_id()) => {
                            out.extend(self.on_distribution(sender, &d, false));
                        }
                        Ok(_) => self.held.push(Held::Distribution { sender, bytes }),
                        Err(_) => {}
                    }
                }
                Held::Message { sender, message } => messages.push((sender, message)),
            }
        }
        for (sender, message) in messages {
            out.extend(self.on_group(sender, &message, true));
        }
        out
    }

    /// Tries to decrypt a group message's bytes handed over outside the relay (a ciphertext
    /// backup, a leak). Returns the text if it could be read.
    pub(crate) fn try_group_ciphertext(
        &mut self,
        sender: &Address,
        message: &[u8],
    ) -> Result<String, String> {
        let parsed = GroupMessage::from_bytes(message).map_err(|e| e.to_string())?;
        let g = self
            .groups
            .get_mut(&parsed.group_id())
            .ok_or("unknown group")?;
        let plaintext = g
            .session
            .decrypt(sender, &parsed)
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&plaintext).into_owned())
    }

    /// Downloads an attachment from the relay in range requests and decrypts it as it
    /// arrives; the file is valid only once the decryptor's `finish` accepted it.
    pub(crate) fn download_attachment(
        &self,
        relay: &mut Relay,
        blob: u64,
        pointer: &[u8],
    ) -> Result<Vec<u8>, String> {
        const PIECE: u64 = 256 * 1024;
        let pointer = AttachmentPointer::from_bytes(pointer).map_err(ctx("pointer"))?;
        let mut decryptor = AttachmentDecryptor::new(&pointer);
        let total = pointer.ciphertext_len();
        let mut out = Vec::with_capacity(usize::try_from(pointer.size()).unwrap_or(0));
        let mut offset = 0;
        while offset < total {
            let piece = relay
                .download(blob, offset, PIECE)
                .ok_or("download refused")?;
            if piece.is_empty() {
                break;
            }
            decryptor
                .update(&piece, &mut out)
                .map_err(ctx("attachment"))?;
            offset += piece.len() as u64;
        }
        decryptor.finish().map_err(ctx("attachment"))?;
        Ok(out)
    }

    // ---- persistence -------------------------------------------------------------------

    /// Writes the whole state (and new history rows) in one transaction.
    pub(crate) fn persist(&mut self) -> Result<(), String> {
        let mut rows: Vec<(String, Vec<u8>)> = Vec::new();
        let mut meta = Writer::new();
        meta.str(&self.name)
            .str(&self.account_id)
            .bytes(&self.address.account.to_bytes())
            .u64(u64::from(self.address.device))
            .bytes(&self.root.to_bytes());
        match &self.primary {
            Some(p) => meta
                .u8(1)
                .bytes(p.account.to_seed().as_ref())
                .u64(p.version),
            None => meta.u8(0),
        };
        let s = self.stats;
        meta.u64(s.sent)
            .u64(s.received)
            .u64(s.signals)
            .u64(s.duplicates)
            .u64(s.failed);
        rows.push(("meta".into(), meta.finish()));
        rows.push(("identity".into(), self.identity.to_seed().to_vec()));
        rows.push(("prekeys".into(), self.prekeys.snapshot().to_vec()));
        rows.push(("book".into(), self.book.snapshot().to_vec()));
        rows.push(("known".into(), self.known.snapshot()));
        rows.push(("certificate".into(), self.certificate.clone()));
        let mut w = Writer::new();
        w.u64(self.contacts.len() as u64);
        for (name, key) in &self.contacts {
            w.str(name).bytes(&key.to_bytes());
        }
        rows.push(("contacts".into(), w.finish()));
        let mut w = Writer::new();
        w.u64(self.held.len() as u64);
        for h in &self.held {
            match h {
                Held::Message { sender, message } => w
                    .u8(0)
                    .bytes(&sender.account.to_bytes())
                    .u64(u64::from(sender.device))
                    .bytes(message),
                Held::Distribution { sender, bytes } => w
                    .u8(1)
                    .bytes(&sender.account.to_bytes())
                    .u64(u64::from(sender.device))
                    .bytes(bytes),
            };
        }
        rows.push(("held".into(), w.finish()));
        let mut w = Writer::new();
        w.u64(self.receipts.len() as u64);
        for (id, (delivered, read)) in &self.receipts {
            w.u64(*id);
            for set in [delivered, read] {
                w.u64(set.len() as u64);
                for a in set {
                    w.bytes(&a.account.to_bytes()).u64(u64::from(a.device));
                }
            }
        }
        rows.push(("receipts".into(), w.finish()));
        for (key, bytes) in &self.list_bytes {
            rows.push((
                format!("list:{}", hex::encode(key.to_bytes())),
                bytes.clone(),
            ));
        }
        for (id, g) in &self.groups {
            let mut w = Writer::new();
            w.str(&g.name)
                .bytes(&g.session.snapshot())
                .u64(g.accounts.len() as u64);
            for a in &g.accounts {
                w.bytes(&a.to_bytes());
            }
            rows.push((format!("group:{}", hex::encode(id.to_bytes())), w.finish()));
        }
        let new_rows: Vec<LogRow> = self
            .log
            .iter()
            .skip(self.persisted_log)
            .map(|d| LogRow {
                msg_id: d.msg_id,
                from: d.from.clone(),
                channel: if d.group { "group" } else { "direct" }.into(),
                body: d.body.clone(),
            })
            .collect();
        self.store.save(&rows, &[], &new_rows)?;
        self.persisted_log = self.log.len();
        Ok(())
    }

    /// Restores a device from its database: nothing else survives a restart.
    pub(crate) fn load(db: &Path) -> Result<Self, String> {
        let store = Store::open(db)?;
        let state = store.load_state()?;
        let get = |name: &str| state.get(name).ok_or(format!("missing {name}"));
        let key = |b: &[u8]| IdentityKey::from_bytes(b).map_err(ctx("key"));
        let address = |r: &mut Reader<'_>| -> Result<Address, String> {
            let account = key(r.bytes().ok_or("address")?)?;
            let device = u32::try_from(r.u64().ok_or("address")?).map_err(|_| "device id")?;
            Ok(Address { account, device })
        };
        let bad = || "corrupt record".to_string();

        let meta = get("meta")?;
        let mut r = Reader::new(meta);
        let name = r.string().ok_or_else(bad)?;
        let account_id = r.string().ok_or_else(bad)?;
        let own = address(&mut r)?;
        let root = key(r.bytes().ok_or_else(bad)?)?;
        let primary = match r.u8().ok_or_else(bad)? {
            1 => Some(Primary {
                account: IdentityKeyPair::from_seed(&r.array().ok_or_else(bad)?),
                version: r.u64().ok_or_else(bad)?,
            }),
            _ => None,
        };
        let stats = Stats {
            sent: r.u64().ok_or_else(bad)?,
            received: r.u64().ok_or_else(bad)?,
            signals: r.u64().ok_or_else(bad)?,
            duplicates: r.u64().ok_or_else(bad)?,
            failed: r.u64().ok_or_else(bad)?,
        };
        let seed: [u8; 32] = get("identity")?.as_slice().try_into().map_err(|_| bad())?;
        let identity = IdentityKeyPair::from_seed(&seed);
        let prekeys = PreKeys::restore(get("prekeys")?).map_err(ctx("prekeys"))?;
        let book = SessionBook::restore(get("book")?).map_err(ctx("book"))?;
        let known = KnownAccounts::restore(get("known")?).map_err(ctx("known"))?;
        let certificate = get("certificate")?.clone();

        let mut contacts = BTreeMap::new();
        let mut r = Reader::new(get("contacts")?);
        for _ in 0..r.u64().ok_or_else(bad)? {
            let n = r.string().ok_or_else(bad)?;
            contacts.insert(n, key(r.bytes().ok_or_else(bad)?)?);
        }
        let mut held = Vec::new();
        let mut r = Reader::new(get("held")?);
        for _ in 0..r.u64().ok_or_else(bad)? {
            let tag = r.u8().ok_or_else(bad)?;
            let sender = address(&mut r)?;
            let bytes = r.bytes().ok_or_else(bad)?.to_vec();
            held.push(if tag == 0 {
                Held::Message {
                    sender,
                    message: bytes,
                }
            } else {
                Held::Distribution { sender, bytes }
            });
        }
        let mut receipts = BTreeMap::new();
        let mut r = Reader::new(get("receipts")?);
        for _ in 0..r.u64().ok_or_else(bad)? {
            let id = r.u64().ok_or_else(bad)?;
            let mut sets = [BTreeSet::new(), BTreeSet::new()];
            for set in &mut sets {
                for _ in 0..r.u64().ok_or_else(bad)? {
                    set.insert(address(&mut r)?);
                }
            }
            let [delivered, read] = sets;
            receipts.insert(id, (delivered, read));
        }
        let mut lists = BTreeMap::new();
        let mut list_bytes = BTreeMap::new();
        let mut groups = BTreeMap::new();
        for (row, value) in &state {
            if let Some(k) = row.strip_prefix("list:") {
                let account = key(&hex::decode(k).map_err(|_| bad())?)?;
                // Re-verified: the database is untrusted input too.
                let list =
                    VerifiedDeviceList::verify(value, &account, None).map_err(ctx("list"))?;
                lists.insert(account, list);
                list_bytes.insert(account, value.clone());
            } else if let Some(k) = row.strip_prefix("group:") {
                let id: [u8; 16] = hex::decode(k)
                    .map_err(|_| bad())?
                    .try_into()
                    .map_err(|_| bad())?;
                let mut r = Reader::new(value);
                let gname = r.string().ok_or_else(bad)?;
                let session =
                    GroupSession::restore(r.bytes().ok_or_else(bad)?).map_err(ctx("group"))?;
                let mut accounts = Vec::new();
                for _ in 0..r.u64().ok_or_else(bad)? {
                    accounts.push(key(r.bytes().ok_or_else(bad)?)?);
                }
                groups.insert(
                    GroupId::from_bytes(id),
                    Group {
                        session,
                        name: gname,
                        accounts,
                    },
                );
            }
        }
        let log: Vec<Delivery> = store
            .load_messages()?
            .into_iter()
            .map(|row| Delivery {
                msg_id: row.msg_id,
                from: row.from,
                body: row.body,
                group: row.channel == "group",
            })
            .collect();
        Ok(Self {
            name,
            account_id,
            address: own,
            identity,
            prekeys,
            book,
            groups,
            held,
            known,
            contacts,
            lists,
            list_bytes,
            certificate,
            root,
            validator: CertificateValidator::new(root),
            primary,
            persisted_log: log.len(),
            log,
            receipts,
            stats,
            store,
        })
    }

    /// Numbers shown after a restore.
    pub(crate) fn restored_summary(&self) -> String {
        format!(
            "{} sessions, {} group, {} contacts, {} messages of history",
            self.active_sessions(),
            self.groups.len(),
            self.contacts.len(),
            self.log.len()
        )
    }
}
