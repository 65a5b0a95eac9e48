//! Sessions per remote device, Sesame-style (PROTOCOL.md §15): for each (account, device) an
//! active session plus a bounded archive of earlier ones. Receiving tries the active session,
//! then the archive, and promotes the one that works, so simultaneous initiation converges and
//! nothing in flight is lost.
//!
//! ```
//! use confidant::book::{Address, ReceiveError, SessionBook};
//! use confidant::{IdentityKeyPair, Message, PreKeyBundle, PreKeys, Session, Timestamp};
//! # use confidant::device::{DeviceEntry, DeviceList, VerifiedDeviceList};
//! # use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};
//! # let mut rng = ChaCha20Rng::seed_from_u64(7);
//! let now = Timestamp(1_700_000_000_000);
//! # // A one-device account's signed and verified device list (see `confidant::device`).
//! # let list = |account: &IdentityKeyPair, device: &IdentityKeyPair| {
//! #     let entries = vec![DeviceEntry::local(account, device, 1)];
//! #     let list = DeviceList { account_id: b"id".to_vec(), version: 1, timestamp: now, entries };
//! #     VerifiedDeviceList::verify(&list.sign(account)?, &account.public(), None)
//! # };
//! // Alice and Bob: an account key each, and one device (id 1) with its own identity.
//! let alice_account = IdentityKeyPair::generate(&mut rng);
//! let alice = IdentityKeyPair::generate(&mut rng);
//! let bob_account = IdentityKeyPair::generate(&mut rng);
//! let bob = IdentityKeyPair::generate(&mut rng);
//! let mut bob_prekeys = PreKeys::new(&mut rng, &bob, now);
//! let (a, b) = (Address { account: alice_account.public(), device: 1 },
//!               Address { account: bob_account.public(), device: 1 });
//!
//! // Each book learns the other account's devices from its verified device list.
//! let (mut alice_book, mut bob_book) = (SessionBook::new(), SessionBook::new());
//! let needs_bundle = alice_book.apply_device_list(&list(&bob_account, &bob)?)?;
//! assert_eq!(needs_bundle, vec![b]); // no session with Bob's device yet: fetch its bundle
//! bob_book.apply_device_list(&list(&alice_account, &alice)?)?;
//!
//! let bundle = PreKeyBundle::new(bob.public(), bob_prekeys.signed_prekey(), None)
//!     .with_kem_prekey(bob_prekeys.last_resort_kem_prekey());
//! alice_book.insert(b, Session::initiate(&mut rng, &alice, bundle.verify()?)?)?;
//! let wire = alice_book.active_mut(&b).ok_or("no session")?.encrypt(b"hi Bob")?;
//!
//! let message = Message::from_bytes(&wire)?;
//! let received = bob_book.receive(&mut rng, &bob, &mut bob_prekeys, &a, &message)?;
//! assert_eq!(&received.plaintext[..], b"hi Bob");
//! assert!(received.new_session);
//! // The same message from a device no verified list names is refused.
//! let stranger = Address { device: 2, ..a };
//! let refused = bob_book.receive(&mut rng, &bob, &mut bob_prekeys, &stranger, &message);
//! assert_eq!(refused.err(), Some(ReceiveError::UnknownDevice));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::fmt;
use std::collections::{BTreeMap, VecDeque};

use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::codec::{self, RepeatedLimit, SESSION_BOOK_V1};
use crate::device::VerifiedDeviceList;
use crate::error::{DecryptError, DeviceListError, HandshakeError, RestoreError};
use crate::keys::{IdentityKey, IdentityKeyPair};
use crate::limits::{MAX_ARCHIVED_SESSIONS, MAX_BOOK_DEVICES, MAX_SESSION_BOOK_BYTES};
use crate::prekeys::PreKeys;
use crate::proto::{AccountVersionProto, DeviceSessionsProto, SessionBookProto};
use crate::session::Session;
use crate::wire::Message;

/// A remote device: its account (by account key) and its device id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    /// The account key of the device's account (from its verified device list).
    pub account: IdentityKey,
    /// The device id within the account.
    pub device: u32,
}

impl fmt::Display for Address {
    /// `<first 4 bytes of the account key in hex>…#<device>`, for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.account.to_bytes().iter().take(4) {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…#{}", self.device)
    }
}

/// The sessions with one remote device.
struct DeviceSessions {
    /// The device's identity key, from the account's verified device list.
    device_key: IdentityKey,
    active: Option<Session>,
    /// Earlier sessions, most recently active first.
    archive: VecDeque<Session>,
}

impl DeviceSessions {
    /// Makes `session` active; the previous active session goes to the front of the archive.
    fn activate(&mut self, session: Session) {
        if let Some(old) = self.active.replace(session) {
            self.archive.push_front(old);
            self.archive.truncate(MAX_ARCHIVED_SESSIONS);
        }
    }
}

/// A received and decrypted message.
pub struct Received {
    /// The plaintext.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// Whether an initial message created a new session (persist `PreKeys` with the book).
    pub new_session: bool,
    /// The one-time prekey consumed by a new session, if any.
    pub consumed_one_time_prekey: Option<u32>,
    /// The one-time KEM prekey consumed by a new session, if any.
    pub consumed_one_time_kem_prekey: Option<u32>,
}

impl fmt::Debug for Received {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Received")
            .field("plaintext_len", &self.plaintext.len())
            .field("new_session", &self.new_session)
            .finish_non_exhaustive()
    }
}

/// Why [`SessionBook::receive`] failed. The book and `PreKeys` are unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiveError {
    /// The sender device is not in any verified device list given to the book.
    #[error("unknown sender device")]
    UnknownDevice,
    /// The initial message's identity key is not the sender device's listed key.
    #[error("initial message identity does not match the device list")]
    IdentityMismatch,
    /// No session could decrypt the message.
    #[error("decrypt failed: {0}")]
    Decrypt(#[from] DecryptError),
    /// Accepting the initial message failed for a reason other than authentication (unknown
    /// or replayed prekeys, policy, limits). Authentication failures are always
    /// `Decrypt(DecryptError::Unauthenticated)`.
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
}

/// All pairwise sessions of this device, keyed by remote device (PROTOCOL.md §15). A value the
/// caller persists with [`SessionBook::snapshot`].
#[derive(Default)]
pub struct SessionBook {
    devices: BTreeMap<Address, DeviceSessions>,
    /// The device-list version last applied per account.
    versions: BTreeMap<IdentityKey, u64>,
}

impl SessionBook {
    /// An empty book.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a verified device list of an account (PROTOCOL.md §15.2). The book remembers the
    /// version it last applied per account and refuses an older one (`Rollback`), so a replayed
    /// list cannot bring back a removed device even if the caller verified it without its
    /// predecessor; the same version again changes nothing. Devices no longer listed (or listed
    /// under another key) are dropped with all their sessions; listed devices are registered.
    /// Returns the listed devices that have no session yet: fetch their bundles.
    ///
    /// # Errors
    /// [`DeviceListError::Rollback`]; [`DeviceListError::TooManyDevices`] if the book would hold
    /// more than [`MAX_BOOK_DEVICES`] devices. The book is unchanged.
    pub fn apply_device_list(
        &mut self,
        list: &VerifiedDeviceList,
    ) -> Result<Vec<Address>, DeviceListError> {
        let account = list.account_key();
        match self.versions.get(&account) {
            Some(&last) if list.version() < last => {
                return Err(DeviceListError::Rollback {
                    version: list.version(),
                    last,
                });
            }
            Some(&last) if list.version() == last => {}
            _ => {
                // The book never grows past what `restore` accepts.
                let others = self.devices.keys().filter(|a| a.account != account).count();
                let count = others.saturating_add(list.entries().len());
                if count > MAX_BOOK_DEVICES {
                    return Err(DeviceListError::TooManyDevices {
                        count,
                        limit: MAX_BOOK_DEVICES,
                    });
                }
                self.devices.retain(|a, d| {
                    a.account != account || list.device_key(a.device) == Some(d.device_key)
                });
                for entry in list.entries() {
                    let address = Address {
                        account,
                        device: entry.device_id(),
                    };
                    self.devices
                        .entry(address)
                        .or_insert_with(|| DeviceSessions {
                            device_key: entry.device_key(),
                            active: None,
                            archive: VecDeque::new(),
                        });
                }
                self.versions.insert(account, list.version());
            }
        }
        Ok(self
            .devices
            .iter()
            .filter(|(a, d)| a.account == account && d.active.is_none())
            .map(|(a, _)| *a)
            .collect())
    }

    /// Drops every device of `account` (for example when the account key changed and the
    /// application decided to stop trusting it).
    pub fn forget_account(&mut self, account: &IdentityKey) {
        self.devices.retain(|a, _| a.account != *account);
        self.versions.remove(account);
    }

    /// The listed devices of this book, with whether each has an active session.
    pub fn devices(&self) -> impl Iterator<Item = (Address, bool)> + '_ {
        self.devices.iter().map(|(a, d)| (*a, d.active.is_some()))
    }

    /// The listed devices of `account`, in device-id order.
    pub(crate) fn account_devices<'a>(
        &'a self,
        account: &IdentityKey,
    ) -> impl Iterator<Item = Address> + 'a {
        let first = Address {
            account: *account,
            device: 0,
        };
        let last = Address {
            account: *account,
            device: u32::MAX,
        };
        self.devices.range(first..=last).map(|(a, _)| *a)
    }

    /// Calls `f` with each of the sorted, deduplicated `addresses` and its active session, if
    /// any. Many addresses (a fan-out to most of the book) walk the address-ordered map once
    /// instead of looking each one up.
    pub(crate) fn for_each_active_mut(
        &mut self,
        addresses: &[Address],
        mut f: impl FnMut(&Address, Option<&mut Session>),
    ) {
        let Some(first) = addresses.first() else {
            return;
        };
        if addresses.len().saturating_mul(16) < self.devices.len() {
            for address in addresses {
                f(
                    address,
                    self.devices
                        .get_mut(address)
                        .and_then(|d| d.active.as_mut()),
                );
            }
            return;
        }
        let mut records = self.devices.range_mut(first..).peekable();
        for address in addresses {
            while records.next_if(|(a, _)| *a < address).is_some() {}
            let session = match records.peek_mut() {
                Some((a, d)) if *a == address => d.active.as_mut(),
                _ => None,
            };
            f(address, session);
        }
    }

    /// The listed identity key of `device`.
    pub(crate) fn device_identity(&self, device: &Address) -> Option<IdentityKey> {
        self.devices.get(device).map(|d| d.device_key)
    }

    /// Installs a session this device initiated (PROTOCOL.md §15.3): it becomes active and the
    /// previous active session is archived.
    ///
    /// # Errors
    /// [`ReceiveError::UnknownDevice`] if the device is not listed;
    /// [`ReceiveError::IdentityMismatch`] if the session is with another identity key.
    pub fn insert(&mut self, address: Address, session: Session) -> Result<(), ReceiveError> {
        let record = self
            .devices
            .get_mut(&address)
            .ok_or(ReceiveError::UnknownDevice)?;
        if session.remote_identity() != record.device_key {
            return Err(ReceiveError::IdentityMismatch);
        }
        record.activate(session);
        Ok(())
    }

    /// The active session with a device, to encrypt with. **Persist the book before sending**
    /// what it returns.
    pub fn active_mut(&mut self, address: &Address) -> Option<&mut Session> {
        self.devices.get_mut(address)?.active.as_mut()
    }

    /// Number of sessions (active and archived) held for a device.
    #[must_use]
    pub fn session_count(&self, address: &Address) -> usize {
        self.devices
            .get(address)
            .map_or(0, |d| usize::from(d.active.is_some()) + d.archive.len())
    }

    /// Receives a message from `sender` (PROTOCOL.md §15.4): the active session, then the
    /// archive (most recent first), decrypt in turn, and one that succeeds becomes active; an
    /// initial message no held session owns is accepted with `prekeys` as a new active session.
    /// Transactional: on error the book and `prekeys` are unchanged.
    ///
    /// # Errors
    /// [`ReceiveError`].
    pub fn receive(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        identity: &IdentityKeyPair,
        prekeys: &mut PreKeys,
        sender: &Address,
        message: &Message,
    ) -> Result<Received, ReceiveError> {
        self.receive_checked(rng, identity, prekeys, sender, message, |_| true)
    }

    /// As [`SessionBook::receive`], with `check` run on the plaintext before any session or
    /// prekey state is committed.
    pub(crate) fn receive_checked(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        identity: &IdentityKeyPair,
        prekeys: &mut PreKeys,
        sender: &Address,
        message: &Message,
        check: impl Fn(&[u8]) -> bool,
    ) -> Result<Received, ReceiveError> {
        let record = self
            .devices
            .get_mut(sender)
            .ok_or(ReceiveError::UnknownDevice)?;
        let received = |plaintext| Received {
            plaintext,
            new_session: false,
            consumed_one_time_prekey: None,
            consumed_one_time_kem_prekey: None,
        };
        if let Message::PreKey(m) = message {
            if m.identity_key() != record.device_key {
                return Err(ReceiveError::IdentityMismatch);
            }
            // The session that owns an initial message is the only one that can decrypt it.
            if record.active.as_ref().is_some_and(|s| s.owns(m)) {
                let active = record.active.as_mut().ok_or(ReceiveError::UnknownDevice)?;
                return Ok(received(active.decrypt_checked(rng, message, &check)?));
            }
            if let Some(i) = record.archive.iter().position(|s| s.owns(m)) {
                let session = record
                    .archive
                    .get_mut(i)
                    .ok_or(ReceiveError::UnknownDevice)?;
                let plaintext = session.decrypt_checked(rng, message, &check)?;
                if let Some(session) = record.archive.remove(i) {
                    record.activate(session);
                }
                return Ok(received(plaintext));
            }
            // A new session. Every authentication failure is reported as one variant.
            let accepted =
                prekeys
                    .accept_checked(rng, identity, m, &check)
                    .map_err(|e| match e {
                        HandshakeError::Unauthenticated => {
                            ReceiveError::Decrypt(DecryptError::Unauthenticated)
                        }
                        other => ReceiveError::Handshake(other),
                    })?;
            record.activate(accepted.session);
            return Ok(Received {
                plaintext: accepted.plaintext,
                new_session: true,
                consumed_one_time_prekey: accepted.consumed_one_time_prekey,
                consumed_one_time_kem_prekey: accepted.consumed_one_time_kem_prekey,
            });
        }
        // A ratchet message: the active session, then the archive, most recent first.
        let mut first_error = None;
        if let Some(active) = record.active.as_mut() {
            match active.decrypt_checked(rng, message, &check) {
                Ok(plaintext) => return Ok(received(plaintext)),
                Err(e) => first_error = Some(e),
            }
        }
        for i in 0..record.archive.len() {
            let Some(session) = record.archive.get_mut(i) else {
                break;
            };
            if let Ok(plaintext) = session.decrypt_checked(rng, message, &check) {
                // Promote: the peer is using this session.
                if let Some(session) = record.archive.remove(i) {
                    record.activate(session);
                }
                return Ok(received(plaintext));
            }
        }
        Err(ReceiveError::Decrypt(
            first_error.unwrap_or(DecryptError::OtherSession),
        ))
    }

    /// A versioned snapshot of every session (PROTOCOL.md §15.5). Store it encrypted at rest.
    #[must_use]
    pub fn snapshot(&self) -> Zeroizing<Vec<u8>> {
        let proto = SessionBookProto {
            devices: self
                .devices
                .iter()
                .map(|(a, d)| DeviceSessionsProto {
                    account_key: a.account.to_bytes().to_vec(),
                    device_id: a.device,
                    device_key: d.device_key.to_bytes().to_vec(),
                    active: d.active.as_ref().map(|s| s.snapshot().to_vec()),
                    archive: d.archive.iter().map(|s| s.snapshot().to_vec()).collect(),
                })
                .collect(),
            versions: self
                .versions
                .iter()
                .map(|(account, version)| AccountVersionProto {
                    account_key: account.to_bytes().to_vec(),
                    version: *version,
                })
                .collect(),
        };
        codec::encode_secret(SESSION_BOOK_V1, &proto)
    }

    /// Restores a snapshot, treating it as untrusted (every session is restored and checked).
    ///
    /// # Errors
    /// [`RestoreError`].
    pub fn restore(bytes: &[u8]) -> Result<Self, RestoreError> {
        let proto: SessionBookProto = codec::decode_counted(
            bytes,
            SESSION_BOOK_V1,
            MAX_SESSION_BOOK_BYTES,
            &[RepeatedLimit {
                path: &[],
                tag: 1,
                max: MAX_BOOK_DEVICES,
                field: "devices",
            }],
        )?;
        let mut devices = BTreeMap::new();
        for d in &proto.devices {
            let key =
                |b: &[u8], f| IdentityKey::from_bytes(b).map_err(|_| RestoreError::Invariant(f));
            let address = Address {
                account: key(&d.account_key, "account_key")?,
                device: d.device_id,
            };
            let device_key = key(&d.device_key, "device_key")?;
            if d.archive.len() > MAX_ARCHIVED_SESSIONS {
                return Err(RestoreError::Invariant("archived session count"));
            }
            let restore_with = |b: &Vec<u8>| -> Result<Session, RestoreError> {
                let s = Session::restore(b)?;
                if s.remote_identity() != device_key {
                    return Err(RestoreError::Invariant(
                        "session identity differs from the device key",
                    ));
                }
                Ok(s)
            };
            let active = d.active.as_ref().map(restore_with).transpose()?;
            let archive = d
                .archive
                .iter()
                .map(restore_with)
                .collect::<Result<VecDeque<_>, _>>()?;
            if active.is_none() && !archive.is_empty() {
                return Err(RestoreError::Invariant("archive without an active session"));
            }
            if devices
                .insert(
                    address,
                    DeviceSessions {
                        device_key,
                        active,
                        archive,
                    },
                )
                .is_some()
            {
                return Err(RestoreError::Invariant("duplicate device"));
            }
        }
        let mut versions = BTreeMap::new();
        for v in &proto.versions {
            let account = IdentityKey::from_bytes(&v.account_key)
                .map_err(|_| RestoreError::Invariant("account_key"))?;
            if versions.insert(account, v.version).is_some() {
                return Err(RestoreError::Invariant("duplicate account version"));
            }
        }
        Ok(Self { devices, versions })
    }
}

impl fmt::Debug for SessionBook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionBook")
            .field("devices", &self.devices.len())
            .finish_non_exhaustive()
    }
}
