//! Safety numbers and account-key change reporting (PROTOCOL.md §21).
//!
//! A [`SafetyNumber`] is computed from both accounts' **account keys** and account ids (never
//! from device keys, so it stays the same when either account adds or removes a device). Both
//! sides get the same 60-digit [`SafetyNumber::displayable`] string, to read aloud or compare on
//! screen, and a [`SafetyNumber::scannable`] byte form, to put in a QR code and check with
//! [`SafetyNumber::compare_scanned`] on the other device.
//!
//! [`KnownAccounts`] remembers the account key seen for each account id and whether the user
//! verified it, and reports a changed key ([`KeyChange::Changed`]) so the application can warn
//! the user and offer to compare safety numbers again.
//!
//! ```
//! use confidant::IdentityKeyPair;
//! use confidant::safety::{KeyChange, KnownAccounts, SafetyNumber};
//! # use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};
//! # let mut rng = ChaCha20Rng::seed_from_u64(7);
//! let alice = IdentityKeyPair::generate(&mut rng).public();
//! let bob = IdentityKeyPair::generate(&mut rng).public();
//!
//! let at_alice = SafetyNumber::new(&alice, b"alice@example.org", &bob, b"bob@example.org");
//! let at_bob = SafetyNumber::new(&bob, b"bob@example.org", &alice, b"alice@example.org");
//! assert_eq!(at_alice.displayable(), at_bob.displayable()); // 60 digits
//! assert!(at_bob.compare_scanned(&at_alice.scannable())?); // Bob scans Alice's QR code
//!
//! let mut known = KnownAccounts::new();
//! assert_eq!(known.observe(b"bob@example.org", &bob)?, KeyChange::First);
//! assert!(known.mark_verified(b"bob@example.org", &bob));
//! let new_bob = IdentityKeyPair::generate(&mut rng).public();
//! assert_eq!(
//!     known.observe(b"bob@example.org", &new_bob)?,
//!     KeyChange::Changed { previous: bob, was_verified: true } // ask the user
//! );
//! assert!(!known.is_verified(b"bob@example.org", &new_bob));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::fmt;
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;
use thiserror::Error;

use crate::codec::{self, RepeatedLimit};
use crate::device::VerifiedDeviceList;
use crate::error::{DecodeError, RestoreError};
use crate::keys::IdentityKey;
use crate::limits::MAX_ACCOUNT_ID_BYTES;

/// Profile of the safety-number construction and of its test vectors (PROTOCOL.md §21.1).
pub const SAFETY_NUMBER_PROFILE_ID: &str = "confidant-safety-number/v1";
/// Domain-separation label that starts every fingerprint hash (PROTOCOL.md §21.1), so these
/// numbers never equal libsignal's or any other system's for the same key.
const FINGERPRINT_LABEL: &[u8] = b"confidant/safety-number/v1";
/// Version of the fingerprint hash, `u16be` after the label (PROTOCOL.md §21.1, §21.2).
const HASH_VERSION: u16 = 0;
/// Iterations of the fingerprint hash after the initial one (PROTOCOL.md §21.1, §21.2).
pub const SAFETY_NUMBER_ITERATIONS: u32 = 5200;
/// Digits of the displayable safety number: 30 per account (PROTOCOL.md §21.3).
pub const SAFETY_NUMBER_DIGITS: usize = 60;
/// Digits of one account's half of the displayable number (PROTOCOL.md §21.3).
const HALF_DIGITS: usize = 30;
/// Bytes of the final hash that make one group of five digits (PROTOCOL.md §21.3).
const GROUP_BYTES: usize = 5;
/// Groups of five digits per account (PROTOCOL.md §21.3).
const GROUPS_PER_HALF: usize = 6;
/// Length of one account's fingerprint in the scannable form (PROTOCOL.md §21.4).
pub const SCANNABLE_FINGERPRINT_LEN: usize = 32;
/// The `version` field of the scannable form (PROTOCOL.md §21.1, §21.4).
pub const SCANNABLE_VERSION: u32 = 1;
/// Leading byte of the scannable form, format version 1 (PROTOCOL.md §21.1, §21.4).
const SCANNABLE_V1: u8 = 0xA1;
/// Largest scannable input accepted, checked before decoding (PROTOCOL.md §21.1, §21.4). A
/// valid one is 71 bytes.
pub const MAX_SCANNABLE_BYTES: usize = 128;
/// Leading byte of a [`KnownAccounts`] snapshot, format version 1 (PROTOCOL.md §21.1, §21.6).
const KNOWN_ACCOUNTS_V1: u8 = 0x35;
/// Most accounts one [`KnownAccounts`] holds (PROTOCOL.md §21.1, §21.5).
pub const MAX_KNOWN_ACCOUNTS: usize = 20_000;
/// Largest [`KnownAccounts`] snapshot accepted by [`KnownAccounts::restore`]: room for
/// [`MAX_KNOWN_ACCOUNTS`] entries with 256-byte ids (about 300 bytes each; PROTOCOL.md §21.1,
/// §21.6).
pub const MAX_KNOWN_ACCOUNTS_SNAPSHOT_BYTES: usize = 8 * 1024 * 1024;

// ---- Errors ----------------------------------------------------------------------------------

/// Why [`SafetyNumber::compare_scanned`] could not compare (PROTOCOL.md §21.4). A well-formed
/// scannable form of another safety number is not an error: the comparison returns `false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SafetyNumberError {
    /// The scanned bytes are not a scannable safety number (size, leading byte, protobuf, or a
    /// fingerprint that is not 32 bytes).
    #[error("malformed scannable safety number: {0}")]
    Decode(#[from] DecodeError),
    /// The scanned form is of another safety-number version: the two applications must agree
    /// on one before the numbers can be compared.
    #[error("scannable safety number of version {theirs}; this version computes {ours}")]
    VersionMismatch {
        /// [`SCANNABLE_VERSION`].
        ours: u32,
        /// The version in the scanned form.
        theirs: u32,
    },
}

/// Why [`KnownAccounts::observe`] refused an account (PROTOCOL.md §21.5). Nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ObserveError {
    /// The account id is longer than [`MAX_ACCOUNT_ID_BYTES`] (a verified device list never
    /// carries one).
    #[error("account id of {len} bytes exceeds the limit of {limit}")]
    AccountIdTooLong {
        /// Length of the id.
        len: usize,
        /// [`MAX_ACCOUNT_ID_BYTES`].
        limit: usize,
    },
    /// The account is new and [`MAX_KNOWN_ACCOUNTS`] are already known: forget some first.
    #[error("already {limit} known accounts")]
    TooManyAccounts {
        /// [`MAX_KNOWN_ACCOUNTS`].
        limit: usize,
    },
}

// ---- Encodings (PROTOCOL.md §21.4, §21.6) ----------------------------------------------------

/// The scannable form (PROTOCOL.md §21.4). Next tag: 4.
#[derive(Clone, PartialEq, prost::Message)]
struct ScannableSafetyNumberProto {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(bytes = "vec", tag = "2")]
    local_fingerprint: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    remote_fingerprint: Vec<u8>,
}

/// A [`KnownAccounts`] snapshot (PROTOCOL.md §21.6). Next tag: 2.
#[derive(Clone, PartialEq, prost::Message)]
struct KnownAccountsProto {
    #[prost(message, repeated, tag = "1")]
    accounts: Vec<KnownAccountProto>,
}

/// One known account (PROTOCOL.md §21.6). Next tag: 4.
#[derive(Clone, PartialEq, prost::Message)]
struct KnownAccountProto {
    #[prost(bytes = "vec", tag = "1")]
    account_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    account_key: Vec<u8>,
    #[prost(bool, tag = "3")]
    verified: bool,
}

// ---- Safety numbers --------------------------------------------------------------------------

/// The iterated fingerprint hash of one account (PROTOCOL.md §21.2):
/// `H_0 = SHA-512(FINGERPRINT_LABEL || u16be(HASH_VERSION) || account_key || account_id)`, then
/// `H_i = SHA-512(H_{i-1} || account_key)` for `i = 1..=SAFETY_NUMBER_ITERATIONS`.
fn fingerprint(key: &IdentityKey, account_id: &[u8]) -> [u8; 64] {
    let key = key.to_bytes();
    let mut hash: [u8; 64] = Sha512::new()
        .chain_update(FINGERPRINT_LABEL)
        .chain_update(HASH_VERSION.to_be_bytes())
        .chain_update(key)
        .chain_update(account_id)
        .finalize()
        .into();
    for _ in 0..SAFETY_NUMBER_ITERATIONS {
        hash = Sha512::new()
            .chain_update(hash)
            .chain_update(key)
            .finalize()
            .into();
    }
    hash
}

/// One account's 30 digits (PROTOCOL.md §21.3): for `i` in `0..6`, the 40-bit big-endian integer
/// `hash[5i..5i+5]` modulo 100 000, as five zero-padded decimal digits.
fn digits(hash: &[u8; 64]) -> String {
    let mut out = String::with_capacity(HALF_DIGITS);
    for chunk in hash.chunks_exact(GROUP_BYTES).take(GROUPS_PER_HALF) {
        let value = chunk.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        out.push_str(&format!("{:05}", value % 100_000));
    }
    out
}

/// The first [`SCANNABLE_FINGERPRINT_LEN`] bytes of a fingerprint hash (PROTOCOL.md §21.4).
fn scannable_part(hash: &[u8; 64]) -> [u8; SCANNABLE_FINGERPRINT_LEN] {
    let mut out = [0u8; SCANNABLE_FINGERPRINT_LEN];
    for (o, h) in out.iter_mut().zip(hash) {
        *o = *h;
    }
    out
}

/// The safety number of a conversation between two accounts (PROTOCOL.md §21): identical on
/// both sides, changed iff either account key or account id changes, independent of devices.
///
/// Safety numbers are public values (they are derived from public keys only).
#[derive(Clone, PartialEq, Eq)]
pub struct SafetyNumber {
    local: [u8; SCANNABLE_FINGERPRINT_LEN],
    remote: [u8; SCANNABLE_FINGERPRINT_LEN],
    displayable: String,
}

impl SafetyNumber {
    /// Computes the safety number between this account (`local_key`, `local_id`) and a peer's
    /// (`remote_key`, `remote_id`): `2 × (1 + SAFETY_NUMBER_ITERATIONS)` SHA-512 calls, a few
    /// milliseconds. The ids are the applications' account ids (those of the accounts'
    /// verified device lists, [`VerifiedDeviceList::account_id`]); any length is accepted.
    #[must_use]
    pub fn new(
        local_key: &IdentityKey,
        local_id: &[u8],
        remote_key: &IdentityKey,
        remote_id: &[u8],
    ) -> Self {
        let local = fingerprint(local_key, local_id);
        let remote = fingerprint(remote_key, remote_id);
        let (local_digits, remote_digits) = (digits(&local), digits(&remote));
        // Both sides order the halves the same way: the smaller digit string first.
        let displayable = if local_digits <= remote_digits {
            local_digits + &remote_digits
        } else {
            remote_digits + &local_digits
        };
        Self {
            local: scannable_part(&local),
            remote: scannable_part(&remote),
            displayable,
        }
    }

    /// [`SafetyNumber::new`] from both accounts' verified device lists (their account keys and
    /// ids; the devices listed play no part).
    #[must_use]
    pub fn from_lists(local: &VerifiedDeviceList, remote: &VerifiedDeviceList) -> Self {
        Self::new(
            &local.account_key(),
            local.account_id(),
            &remote.account_key(),
            remote.account_id(),
        )
    }

    /// The 60 decimal digits both users compare (PROTOCOL.md §21.3).
    #[must_use]
    pub fn displayable(&self) -> &str {
        &self.displayable
    }

    /// The 60 digits in twelve groups of five separated by single spaces (71 characters), the
    /// usual way to show them.
    #[must_use]
    pub fn displayable_grouped(&self) -> String {
        let mut out = String::with_capacity(SAFETY_NUMBER_DIGITS + SAFETY_NUMBER_DIGITS / 5);
        for (i, c) in self.displayable.chars().enumerate() {
            if i > 0 && i % 5 == 0 {
                out.push(' ');
            }
            out.push(c);
        }
        out
    }

    /// The scannable form for a QR code (PROTOCOL.md §21.4): `0xA1 ||
    /// ScannableSafetyNumberProto { version: 1, local_fingerprint, remote_fingerprint }`, from
    /// this side's point of view (71 bytes).
    #[must_use]
    pub fn scannable(&self) -> Vec<u8> {
        codec::encode(
            SCANNABLE_V1,
            &ScannableSafetyNumberProto {
                version: SCANNABLE_VERSION,
                local_fingerprint: self.local.to_vec(),
                remote_fingerprint: self.remote.to_vec(),
            },
        )
    }

    /// Compares the scannable form shown by the peer's device with this safety number
    /// (PROTOCOL.md §21.4): `true` iff its local fingerprint equals our remote one and its
    /// remote fingerprint equals our local one (compared in constant time). `false` means the
    /// keys differ (or the form was made for another conversation): do not mark the peer
    /// verified.
    ///
    /// # Errors
    /// [`SafetyNumberError`] if `scanned` is not a scannable safety number of this version.
    pub fn compare_scanned(&self, scanned: &[u8]) -> Result<bool, SafetyNumberError> {
        let proto: ScannableSafetyNumberProto =
            codec::decode(scanned, SCANNABLE_V1, MAX_SCANNABLE_BYTES)?;
        if proto.version != SCANNABLE_VERSION {
            return Err(SafetyNumberError::VersionMismatch {
                ours: SCANNABLE_VERSION,
                theirs: proto.version,
            });
        }
        let theirs_local: [u8; SCANNABLE_FINGERPRINT_LEN] =
            codec::array(&proto.local_fingerprint, "local_fingerprint")?;
        let theirs_remote: [u8; SCANNABLE_FINGERPRINT_LEN] =
            codec::array(&proto.remote_fingerprint, "remote_fingerprint")?;
        let same = theirs_local.as_slice().ct_eq(self.remote.as_slice())
            & theirs_remote.as_slice().ct_eq(self.local.as_slice());
        Ok(same.into())
    }
}

impl fmt::Debug for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SafetyNumber({})", self.displayable)
    }
}

// ---- Key changes -----------------------------------------------------------------------------

/// What [`KnownAccounts::observe`] learned about an account's key (PROTOCOL.md §21.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum KeyChange {
    /// The account was not known; its key is now recorded (not verified).
    First,
    /// The account's key is the recorded one.
    Unchanged,
    /// The account's key differs from the recorded one. The new key is now recorded, not
    /// verified: tell the user (a new safety number; "verified" lost if `was_verified`) before
    /// relying on the new key. Reported once per change.
    Changed {
        /// The key recorded until now.
        previous: IdentityKey,
        /// Whether the user had verified the previous key.
        was_verified: bool,
    },
}

/// One recorded account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Known {
    key: IdentityKey,
    verified: bool,
}

/// The account key last seen for each account id, and whether the user verified it (compared
/// safety numbers) — a small persistent value for key-change warnings (PROTOCOL.md §21.5).
///
/// Persist it with [`KnownAccounts::snapshot`] after every change. It holds public data only.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct KnownAccounts {
    accounts: BTreeMap<Vec<u8>, Known>,
}

impl KnownAccounts {
    /// An empty record.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `key` as the account key of `account_id` and reports what changed
    /// (PROTOCOL.md §21.5). A changed key replaces the recorded one and clears the verified
    /// flag; [`KeyChange::Changed`] is reported only by the call that saw the change.
    ///
    /// # Errors
    /// [`ObserveError`] for an id longer than [`MAX_ACCOUNT_ID_BYTES`] or a new account beyond
    /// [`MAX_KNOWN_ACCOUNTS`]; nothing changes.
    pub fn observe(
        &mut self,
        account_id: &[u8],
        key: &IdentityKey,
    ) -> Result<KeyChange, ObserveError> {
        if account_id.len() > MAX_ACCOUNT_ID_BYTES {
            return Err(ObserveError::AccountIdTooLong {
                len: account_id.len(),
                limit: MAX_ACCOUNT_ID_BYTES,
            });
        }
        let full = self.accounts.len() >= MAX_KNOWN_ACCOUNTS;
        match self.accounts.entry(account_id.to_vec()) {
            Entry::Vacant(_) if full => Err(ObserveError::TooManyAccounts {
                limit: MAX_KNOWN_ACCOUNTS,
            }),
            Entry::Vacant(v) => {
                v.insert(Known {
                    key: *key,
                    verified: false,
                });
                Ok(KeyChange::First)
            }
            Entry::Occupied(mut o) => {
                let known = o.get_mut();
                if known.key == *key {
                    return Ok(KeyChange::Unchanged);
                }
                let change = KeyChange::Changed {
                    previous: known.key,
                    was_verified: known.verified,
                };
                *known = Known {
                    key: *key,
                    verified: false,
                };
                Ok(change)
            }
        }
    }

    /// [`KnownAccounts::observe`] with the account id and key of a verified device list.
    ///
    /// # Errors
    /// [`ObserveError::TooManyAccounts`] (a verified list's id is never too long).
    pub fn observe_list(&mut self, list: &VerifiedDeviceList) -> Result<KeyChange, ObserveError> {
        self.observe(list.account_id(), &list.account_key())
    }

    /// Marks `account_id` verified, after the user compared safety numbers computed with `key`.
    /// Returns `false`, and changes nothing, if `key` is not the recorded key of the account
    /// (or the account is unknown): the user verified something else.
    pub fn mark_verified(&mut self, account_id: &[u8], key: &IdentityKey) -> bool {
        match self.accounts.get_mut(account_id) {
            Some(known) if known.key == *key => {
                known.verified = true;
                true
            }
            _ => false,
        }
    }

    /// Clears the verified flag of `account_id` (the user withdrew it). Returns whether it was
    /// set.
    pub fn clear_verified(&mut self, account_id: &[u8]) -> bool {
        self.accounts
            .get_mut(account_id)
            .is_some_and(|known| core::mem::replace(&mut known.verified, false))
    }

    /// Whether `key` is the recorded key of `account_id` and the user verified it.
    #[must_use]
    pub fn is_verified(&self, account_id: &[u8], key: &IdentityKey) -> bool {
        self.accounts
            .get(account_id)
            .is_some_and(|known| known.verified && known.key == *key)
    }

    /// The recorded key of `account_id`, if any.
    #[must_use]
    pub fn account_key(&self, account_id: &[u8]) -> Option<IdentityKey> {
        self.accounts.get(account_id).map(|known| known.key)
    }

    /// Forgets `account_id` (its next observation is [`KeyChange::First`]). Returns whether it
    /// was known.
    pub fn forget(&mut self, account_id: &[u8]) -> bool {
        self.accounts.remove(account_id).is_some()
    }

    /// Number of known accounts.
    #[must_use]
    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    /// Whether no account is known.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    /// `0x35 || KnownAccountsProto`, accounts in ascending id order (PROTOCOL.md §21.6).
    #[must_use]
    pub fn snapshot(&self) -> Vec<u8> {
        let proto = KnownAccountsProto {
            accounts: self
                .accounts
                .iter()
                .map(|(id, known)| KnownAccountProto {
                    account_id: id.clone(),
                    account_key: known.key.to_bytes().to_vec(),
                    verified: known.verified,
                })
                .collect(),
        };
        codec::encode(KNOWN_ACCOUNTS_V1, &proto)
    }

    /// Restores a snapshot, treating it as untrusted (PROTOCOL.md §21.6): size, leading byte and
    /// account count before decoding, then every id length and key, and no id twice.
    ///
    /// # Errors
    /// [`RestoreError`].
    pub fn restore(bytes: &[u8]) -> Result<Self, RestoreError> {
        let proto: KnownAccountsProto = codec::decode_counted(
            bytes,
            KNOWN_ACCOUNTS_V1,
            MAX_KNOWN_ACCOUNTS_SNAPSHOT_BYTES,
            &[RepeatedLimit {
                path: &[],
                tag: 1,
                max: MAX_KNOWN_ACCOUNTS,
                field: "accounts",
            }],
        )?;
        let mut accounts = BTreeMap::new();
        for a in proto.accounts {
            if a.account_id.len() > MAX_ACCOUNT_ID_BYTES {
                return Err(RestoreError::Invariant("account id length"));
            }
            let key = IdentityKey::from_bytes(&a.account_key)
                .map_err(|_| RestoreError::Invariant("account_key"))?;
            let known = Known {
                key,
                verified: a.verified,
            };
            if accounts.insert(a.account_id, known).is_some() {
                return Err(RestoreError::Invariant("duplicate account id"));
            }
        }
        Ok(Self { accounts })
    }
}

impl fmt::Debug for KnownAccounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KnownAccounts")
            .field("accounts", &self.accounts.len())
            .finish_non_exhaustive()
    }
}
