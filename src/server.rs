//! Key-server side, sans-IO (PROTOCOL.md §7, §13.6): validate uploads, serve bundles that use
//! each one-time prekey (EC and KEM) at most once, and report low stock. The server needs no
//! secrets.
//!
//! ```
//! use confidant::server::DeviceKeys;
//! use confidant::{IdentityKeyPair, PreKeyBundle, PreKeys, Timestamp, UploadError};
//! # use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};
//! # let mut rng = ChaCha20Rng::seed_from_u64(7);
//! // Client: Bob's device uploads its public prekeys (after persisting `prekeys`).
//! let bob = IdentityKeyPair::generate(&mut rng);
//! let mut prekeys = PreKeys::new(&mut rng, &bob, Timestamp(1_700_000_000_000));
//! let one_time = prekeys.generate_one_time_prekeys(&mut rng, 2)?;
//! let upload = prekeys.upload(&bob, one_time, Vec::new()).to_bytes();
//!
//! // Server: every key and signature is validated; only public keys are kept.
//! let mut record = DeviceKeys::register(&upload)?;
//! let first = record.fetch_bundle();
//! assert_eq!(first.remaining_one_time_prekeys, 1);
//! assert!(first.low_stock); // ask the device to upload more one-time prekeys
//! let second = record.fetch_bundle();
//! assert_ne!(first.bundle, second.bundle); // each one-time prekey is served once
//!
//! // An upload signed by another identity cannot touch Bob's record.
//! let mallory = IdentityKeyPair::generate(&mut rng);
//! let theirs = PreKeys::new(&mut rng, &mallory, Timestamp(1_700_000_000_000));
//! let forged = theirs.upload(&mallory, Vec::new(), Vec::new()).to_bytes();
//! assert_eq!(record.apply_upload(&forged), Err(UploadError::IdentityMismatch));
//!
//! // Client: the initiator verifies what it is served (here: no one-time prekey left).
//! let third = PreKeyBundle::from_bytes(&record.fetch_bundle().bundle.to_bytes())?;
//! let verified = third.verify_for(&bob.public())?;
//! assert!(verified.one_time_prekey().is_none() && verified.kem_prekey().is_some());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Multi-recipient uploads (fan-out and sealed sends) are split into per-device envelopes with
//! [`split_upload`]; see the examples of [`crate::fanout`] and [`crate::sealed`].

use std::collections::{BTreeSet, VecDeque};

use crate::book::Address;
use crate::bundle::{self, KemPreKeyPublic, OneTimePreKeyPublic, PreKeyBundle, SignedPreKeyPublic};
use crate::codec::{self, FANOUT_UPLOAD_V1, RepeatedLimit, SEALED_UPLOAD_V1, UPLOAD_V1};
use crate::envelope::{Envelope, EnvelopeContent, SealedEnvelope};
use crate::error::{DecodeError, UploadError};
use crate::keys::IdentityKey;
use crate::limits::{
    LOW_ONE_TIME_PREKEY_STOCK, MAX_DEVICE_RECORD_BYTES, MAX_SERVER_ONE_TIME_KEM_PREKEYS,
    MAX_SERVER_ONE_TIME_PREKEYS, MAX_UPLOAD_BYTES, MAX_UPLOAD_ONE_TIME_KEM_PREKEYS,
    MAX_UPLOAD_ONE_TIME_PREKEYS,
};
use crate::limits::{
    MAX_FANOUT_BODY_BYTES, MAX_MESSAGE_BYTES, MAX_SEALED_BODY_BYTES, MAX_SEALED_ENTRY_BYTES,
    MAX_SEALED_UPLOAD_BYTES, MAX_SPLIT_BYTES, MAX_UPLOAD_RECIPIENTS,
};
use crate::proto::{PreKeyUploadProto, UploadProto};

/// What a device uploads to the key server (PROTOCOL.md §7.1, §13.6): its identity key,
/// current signed prekey, optionally its current last-resort KEM prekey, and batches of
/// one-time EC and KEM prekeys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreKeyUpload {
    identity_key: IdentityKey,
    signed_prekey: SignedPreKeyPublic,
    one_time_prekeys: Vec<OneTimePreKeyPublic>,
    last_resort_kem_prekey: Option<KemPreKeyPublic>,
    one_time_kem_prekeys: Vec<KemPreKeyPublic>,
}

/// Upload and record size limits: a single upload, or a stored [`DeviceKeys`] record.
struct Limits {
    bytes: usize,
    one_time: usize,
    one_time_kem: usize,
}

const UPLOAD: Limits = Limits {
    bytes: MAX_UPLOAD_BYTES,
    one_time: MAX_UPLOAD_ONE_TIME_PREKEYS,
    one_time_kem: MAX_UPLOAD_ONE_TIME_KEM_PREKEYS,
};

const RECORD: Limits = Limits {
    bytes: MAX_DEVICE_RECORD_BYTES,
    one_time: MAX_SERVER_ONE_TIME_PREKEYS,
    one_time_kem: MAX_SERVER_ONE_TIME_KEM_PREKEYS,
};

impl PreKeyUpload {
    /// Assembles an upload (client side).
    #[must_use]
    pub fn new(
        identity_key: IdentityKey,
        signed_prekey: SignedPreKeyPublic,
        one_time_prekeys: Vec<OneTimePreKeyPublic>,
    ) -> Self {
        Self {
            identity_key,
            signed_prekey,
            one_time_prekeys,
            last_resort_kem_prekey: None,
            one_time_kem_prekeys: Vec::new(),
        }
    }

    /// Adds the current last-resort KEM prekey.
    #[must_use]
    pub fn with_last_resort_kem_prekey(mut self, prekey: KemPreKeyPublic) -> Self {
        self.last_resort_kem_prekey = Some(prekey);
        self
    }

    /// Adds a batch of one-time KEM prekeys.
    #[must_use]
    pub fn with_one_time_kem_prekeys(mut self, prekeys: Vec<KemPreKeyPublic>) -> Self {
        self.one_time_kem_prekeys = prekeys;
        self
    }

    /// The encoding (leading byte `0x22`).
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_upload(
            self.identity_key,
            self.signed_prekey,
            self.one_time_prekeys.iter(),
            self.last_resort_kem_prekey.as_ref(),
            self.one_time_kem_prekeys.iter(),
        )
    }

    /// Decodes and fully validates an upload: sizes and counts (before decoding), key validity
    /// (including the FIPS 203 check of every KEM key), every signature, unique one-time prekey
    /// ids and unique KEM prekey ids.
    ///
    /// # Errors
    /// [`UploadError`] naming the first problem found.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, UploadError> {
        Self::parse(bytes, &UPLOAD)
    }

    fn parse(bytes: &[u8], limits: &Limits) -> Result<Self, UploadError> {
        let proto: PreKeyUploadProto = codec::decode_counted(
            bytes,
            UPLOAD_V1,
            limits.bytes,
            &[
                RepeatedLimit {
                    path: &[],
                    tag: 3,
                    max: limits.one_time,
                    field: "one_time_prekeys",
                },
                RepeatedLimit {
                    path: &[],
                    tag: 5,
                    max: limits.one_time_kem,
                    field: "one_time_kem_prekeys",
                },
            ],
        )
        .map_err(too_many)?;
        let (identity_key, signed_prekey) = bundle::decode_identity_and_signed_prekey(
            &proto.identity_key,
            proto.signed_prekey.as_ref(),
        )?;
        if !signed_prekey.verify(&identity_key) {
            return Err(UploadError::Unauthenticated);
        }
        let mut ids = BTreeSet::new();
        let mut one_time_prekeys = Vec::with_capacity(proto.one_time_prekeys.len());
        for k in &proto.one_time_prekeys {
            let key = OneTimePreKeyPublic::from_proto(k)?;
            if !ids.insert(key.id()) {
                return Err(UploadError::DuplicateId(key.id()));
            }
            one_time_prekeys.push(key);
        }
        // One id space for last-resort and one-time KEM prekeys (PROFILE-pqxdh §3).
        let mut kem_ids = BTreeSet::new();
        let mut kem = |p| -> Result<KemPreKeyPublic, UploadError> {
            let key = KemPreKeyPublic::from_proto(p)?;
            if !key.verify(&identity_key) {
                return Err(UploadError::Unauthenticated);
            }
            if !kem_ids.insert(key.id()) {
                return Err(UploadError::DuplicateKemId(key.id()));
            }
            Ok(key)
        };
        let last_resort_kem_prekey = proto
            .last_resort_kem_prekey
            .as_ref()
            .map(&mut kem)
            .transpose()?;
        let one_time_kem_prekeys = proto
            .one_time_kem_prekeys
            .iter()
            .map(kem)
            .collect::<Result<_, _>>()?;
        Ok(Self {
            identity_key,
            signed_prekey,
            one_time_prekeys,
            last_resort_kem_prekey,
            one_time_kem_prekeys,
        })
    }

    /// The identity key.
    #[must_use]
    pub fn identity_key(&self) -> IdentityKey {
        self.identity_key
    }

    /// The signed prekey.
    #[must_use]
    pub fn signed_prekey(&self) -> SignedPreKeyPublic {
        self.signed_prekey
    }

    /// The one-time prekeys.
    #[must_use]
    pub fn one_time_prekeys(&self) -> &[OneTimePreKeyPublic] {
        &self.one_time_prekeys
    }

    /// The last-resort KEM prekey, if uploaded.
    #[must_use]
    pub fn last_resort_kem_prekey(&self) -> Option<&KemPreKeyPublic> {
        self.last_resort_kem_prekey.as_ref()
    }

    /// The one-time KEM prekeys.
    #[must_use]
    pub fn one_time_kem_prekeys(&self) -> &[KemPreKeyPublic] {
        &self.one_time_kem_prekeys
    }
}

/// One bundle handed out by [`DeviceKeys::fetch_bundle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The bundle to send to the requester.
    pub bundle: PreKeyBundle,
    /// One-time prekeys left after this fetch.
    pub remaining_one_time_prekeys: usize,
    /// One-time KEM prekeys left after this fetch.
    pub remaining_one_time_kem_prekeys: usize,
    /// Whether the device should upload more one-time prekeys: fewer than
    /// [`LOW_ONE_TIME_PREKEY_STOCK`] EC ones remain, or (for a device with KEM prekeys) KEM ones.
    pub low_stock: bool,
}

/// The key server's record for one device: validated public keys only.
///
/// Persist it with [`DeviceKeys::to_bytes`] (an upload encoding of the current stock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceKeys {
    identity_key: IdentityKey,
    signed_prekey: SignedPreKeyPublic,
    one_time: VecDeque<OneTimePreKeyPublic>,
    last_resort_kem: Option<KemPreKeyPublic>,
    one_time_kem: VecDeque<KemPreKeyPublic>,
}

impl DeviceKeys {
    /// Registers a device from its first upload.
    ///
    /// # Errors
    /// [`UploadError`] as [`PreKeyUpload::from_bytes`], or [`UploadError::TooMany`].
    pub fn register(upload: &[u8]) -> Result<Self, UploadError> {
        Self::from_upload(PreKeyUpload::from_bytes(upload)?)
    }

    fn from_upload(upload: PreKeyUpload) -> Result<Self, UploadError> {
        let mut out = Self {
            identity_key: upload.identity_key,
            signed_prekey: upload.signed_prekey,
            one_time: VecDeque::new(),
            last_resort_kem: upload.last_resort_kem_prekey,
            one_time_kem: VecDeque::new(),
        };
        out.add_one_time(&upload.one_time_prekeys, &upload.one_time_kem_prekeys)?;
        Ok(out)
    }

    /// Applies a later upload from the same device, atomically (on error nothing changes):
    /// a newer signed prekey replaces the current one (the same one may be repeated); a newer
    /// last-resort KEM prekey replaces the current one (absent keeps it: an upload can never
    /// remove post-quantum support); one-time EC and KEM prekeys are added. "Newer" is RFC 1982
    /// serial-number order on the u32 id, so ids may wrap (PROTOCOL.md §7.2).
    ///
    /// # Errors
    /// [`UploadError`]: validation failures, another identity, a stale signed or last-resort
    /// KEM prekey, an id already in stock, or a stock limit.
    pub fn apply_upload(&mut self, upload: &[u8]) -> Result<(), UploadError> {
        let upload = PreKeyUpload::from_bytes(upload)?;
        if upload.identity_key != self.identity_key {
            return Err(UploadError::IdentityMismatch);
        }
        let spk = upload.signed_prekey;
        let current = self.signed_prekey;
        if !(is_newer(spk.id(), current.id()) || spk == current) {
            return Err(UploadError::StaleSignedPreKey {
                id: spk.id(),
                current: current.id(),
            });
        }
        let mut next = self.clone();
        next.signed_prekey = spk;
        if let Some(kem) = upload.last_resort_kem_prekey {
            if let Some(current) = &self.last_resort_kem
                && !(is_newer(kem.id(), current.id()) || kem == *current)
            {
                return Err(UploadError::StaleKemPreKey {
                    id: kem.id(),
                    current: current.id(),
                });
            }
            // One KEM id space: a new last-resort id must not name a stocked one-time KEM prekey.
            if self.one_time_kem.iter().any(|k| k.id() == kem.id()) {
                return Err(UploadError::DuplicateKemId(kem.id()));
            }
            next.last_resort_kem = Some(kem);
        }
        next.add_one_time(&upload.one_time_prekeys, &upload.one_time_kem_prekeys)?;
        *self = next;
        Ok(())
    }

    fn add_one_time(
        &mut self,
        keys: &[OneTimePreKeyPublic],
        kem: &[KemPreKeyPublic],
    ) -> Result<(), UploadError> {
        // A device with KEM prekeys always publishes a last-resort one, so bundles never lose
        // their KEM prekey when the one-time stock runs out (PROFILE-pqxdh §3).
        if !kem.is_empty() && self.last_resort_kem.is_none() {
            return Err(UploadError::MissingLastResortKemPreKey);
        }
        let count = self.one_time.len().saturating_add(keys.len());
        if count > MAX_SERVER_ONE_TIME_PREKEYS {
            return Err(UploadError::TooMany {
                count,
                limit: MAX_SERVER_ONE_TIME_PREKEYS,
            });
        }
        let count = self.one_time_kem.len().saturating_add(kem.len());
        if count > MAX_SERVER_ONE_TIME_KEM_PREKEYS {
            return Err(UploadError::TooMany {
                count,
                limit: MAX_SERVER_ONE_TIME_KEM_PREKEYS,
            });
        }
        let stocked: BTreeSet<u32> = self.one_time.iter().map(OneTimePreKeyPublic::id).collect();
        if let Some(dup) = keys.iter().find(|k| stocked.contains(&k.id())) {
            return Err(UploadError::DuplicateId(dup.id()));
        }
        let stocked_kem: BTreeSet<u32> = self
            .one_time_kem
            .iter()
            .chain(self.last_resort_kem.iter())
            .map(KemPreKeyPublic::id)
            .collect();
        if let Some(dup) = kem.iter().find(|k| stocked_kem.contains(&k.id())) {
            return Err(UploadError::DuplicateKemId(dup.id()));
        }
        self.one_time.extend(keys.iter().copied());
        self.one_time_kem.extend(kem.iter().cloned());
        Ok(())
    }

    /// Hands out one bundle: the signed prekey, the next one-time prekey (removed: each is
    /// served at most once; none when the stock is empty), and for a device with KEM prekeys
    /// the next one-time KEM prekey (removed likewise) or, when none is left, the last-resort
    /// KEM prekey (PROFILE-pqxdh §3).
    pub fn fetch_bundle(&mut self) -> Fetched {
        let one_time = self.one_time.pop_front();
        let kem = self
            .one_time_kem
            .pop_front()
            .or_else(|| self.last_resort_kem.clone());
        let mut bundle = PreKeyBundle::new(self.identity_key, self.signed_prekey, one_time);
        if let Some(kem) = kem {
            bundle = bundle.with_kem_prekey(kem);
        }
        let remaining = self.one_time.len();
        let remaining_kem = self.one_time_kem.len();
        Fetched {
            bundle,
            remaining_one_time_prekeys: remaining,
            remaining_one_time_kem_prekeys: remaining_kem,
            low_stock: remaining < LOW_ONE_TIME_PREKEY_STOCK
                || (self.last_resort_kem.is_some() && remaining_kem < LOW_ONE_TIME_PREKEY_STOCK),
        }
    }

    /// One-time prekeys in stock.
    #[must_use]
    pub fn one_time_prekey_count(&self) -> usize {
        self.one_time.len()
    }

    /// One-time KEM prekeys in stock.
    #[must_use]
    pub fn one_time_kem_prekey_count(&self) -> usize {
        self.one_time_kem.len()
    }

    /// The device's identity key.
    #[must_use]
    pub fn identity_key(&self) -> IdentityKey {
        self.identity_key
    }

    /// The record as an upload encoding (current prekeys and remaining stock; it may exceed a
    /// single upload's batch limits: restore it with [`DeviceKeys::restore`]).
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_upload(
            self.identity_key,
            self.signed_prekey,
            self.one_time.iter(),
            self.last_resort_kem.as_ref(),
            self.one_time_kem.iter(),
        )
    }

    /// Restores a record written by [`DeviceKeys::to_bytes`], re-validating everything.
    ///
    /// # Errors
    /// [`UploadError`] as for a registration, with the stock limits instead of the batch limits.
    pub fn restore(bytes: &[u8]) -> Result<Self, UploadError> {
        Self::from_upload(PreKeyUpload::parse(bytes, &RECORD)?)
    }
}

/// `0x22 || PreKeyUploadProto` (PROTOCOL.md §8.4).
fn encode_upload<'a>(
    identity_key: IdentityKey,
    signed_prekey: SignedPreKeyPublic,
    one_time_prekeys: impl Iterator<Item = &'a OneTimePreKeyPublic>,
    last_resort_kem_prekey: Option<&KemPreKeyPublic>,
    one_time_kem_prekeys: impl Iterator<Item = &'a KemPreKeyPublic>,
) -> Vec<u8> {
    let proto = PreKeyUploadProto {
        identity_key: identity_key.to_bytes().to_vec(),
        signed_prekey: Some(signed_prekey.to_proto()),
        one_time_prekeys: one_time_prekeys.map(|k| k.to_proto()).collect(),
        last_resort_kem_prekey: last_resort_kem_prekey.map(KemPreKeyPublic::to_proto),
        one_time_kem_prekeys: one_time_kem_prekeys
            .map(KemPreKeyPublic::to_proto)
            .collect(),
    };
    codec::encode(UPLOAD_V1, &proto)
}

/// RFC 1982 serial-number comparison on 32-bit ids: `id` is newer than `current` if it is ahead
/// by 1 to 2^31 - 1 steps, counting modulo 2^32. Lets prekey ids wrap around.
fn is_newer(id: u32, current: u32) -> bool {
    let ahead = id.wrapping_sub(current);
    ahead != 0 && ahead < 1 << 31
}

/// A repeated-field limit found before decoding is reported as [`UploadError::TooMany`].
fn too_many(e: DecodeError) -> UploadError {
    match e {
        DecodeError::TooMany { count, limit, .. } => UploadError::TooMany { count, limit },
        other => UploadError::Decode(other),
    }
}

/// Issues a sender certificate (PROTOCOL.md §19.2) for device `device_id` of the account whose
/// verified device list is `list`, valid until `expires`: the device must be listed, so the key
/// server never certifies a key the account did not sign. `None` if the device is not listed.
#[must_use]
pub fn issue_sender_certificate(
    server: &crate::keys::IdentityKeyPair,
    server_certificate: &[u8],
    list: &crate::device::VerifiedDeviceList,
    device_id: u32,
    expires: crate::time::Timestamp,
) -> Option<Vec<u8>> {
    let identity_key = list.device_key(device_id)?;
    Some(crate::certificate::SenderCertificate::issue(
        server,
        server_certificate,
        Address {
            account: list.account_key(),
            device: device_id,
        },
        &identity_key,
        expires,
    ))
}

/// Splits a multi-recipient upload (PROTOCOL.md §19.4) into one envelope per recipient device,
/// without any key: a sealed upload (`0x72`) into [`EnvelopeContent::Sealed`] envelopes sharing
/// its body, a fan-out upload (`0x73`) into [`EnvelopeContent::FanOut`] envelopes from its
/// sender. The server must check that a fan-out upload's sender is the authenticated client.
/// Every envelope passes [`Envelope::from_bytes`]'s checks.
///
/// # Errors
/// [`DecodeError`]: malformed, oversized, too many recipients, a duplicate recipient, or a
/// field of the wrong kind.
pub fn split_upload(bytes: &[u8]) -> Result<Vec<Envelope>, DecodeError> {
    let limits = [
        RepeatedLimit {
            path: &[],
            tag: 3,
            max: MAX_UPLOAD_RECIPIENTS,
            field: "accounts",
        },
        RepeatedLimit {
            path: &[3],
            tag: 2,
            max: MAX_UPLOAD_RECIPIENTS,
            field: "devices",
        },
    ];
    let sealed = bytes.first() == Some(&SEALED_UPLOAD_V1);
    let leading = if sealed {
        SEALED_UPLOAD_V1
    } else {
        FANOUT_UPLOAD_V1
    };
    let proto: UploadProto =
        codec::decode_counted(bytes, leading, MAX_SEALED_UPLOAD_BYTES, &limits)?;
    let sender = match (&proto.sender_account, proto.sender_device, sealed) {
        (None, None, true) => None,
        (Some(account), Some(device), false) => Some(Address {
            account: IdentityKey::from_bytes(account)
                .map_err(|_| DecodeError::InvalidField("sender_account"))?,
            device,
        }),
        _ => return Err(DecodeError::InvalidField("sender")),
    };
    let ephemeral: Option<[u8; 32]> = if sealed {
        Some(codec::array(&proto.ephemeral, "ephemeral")?)
    } else if proto.ephemeral.is_empty() {
        None
    } else {
        return Err(DecodeError::InvalidField("ephemeral"));
    };
    let body_limit = if sealed {
        MAX_SEALED_BODY_BYTES
    } else {
        MAX_FANOUT_BODY_BYTES
    };
    if proto.body.len() > body_limit {
        return Err(DecodeError::InvalidField("body"));
    }
    // Every envelope carries its own copy of the body: refuse an upload whose split would
    // amplify it beyond MAX_SPLIT_BYTES (a server storing the body once can parse the upload
    // itself). Counted before anything is copied.
    let devices: usize = proto.accounts.iter().map(|a| a.devices.len()).sum();
    if devices.saturating_mul(proto.body.len()) > MAX_SPLIT_BYTES {
        return Err(DecodeError::TooLarge {
            len: devices.saturating_mul(proto.body.len()),
            limit: MAX_SPLIT_BYTES,
        });
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for account in &proto.accounts {
        let key = IdentityKey::from_bytes(&account.account)
            .map_err(|_| DecodeError::InvalidField("account"))?;
        for device in &account.devices {
            let recipient = Address {
                account: key,
                device: device.device,
            };
            if !seen.insert(recipient) {
                return Err(DecodeError::InvalidField("duplicate recipient"));
            }
            let content = match (ephemeral, sender) {
                (Some(ephemeral), None) => {
                    if device.entry.len() > MAX_SEALED_ENTRY_BYTES {
                        return Err(DecodeError::InvalidField("entry"));
                    }
                    EnvelopeContent::Sealed(SealedEnvelope {
                        ephemeral,
                        header: codec::array(&device.message, "header")?,
                        entry: device.entry.clone(),
                        body: proto.body.clone(),
                    })
                }
                (None, Some(sender)) => {
                    if device.message.len() > MAX_MESSAGE_BYTES || !device.entry.is_empty() {
                        return Err(DecodeError::InvalidField("entry"));
                    }
                    EnvelopeContent::FanOut {
                        sender,
                        entry: device.message.clone(),
                        body: proto.body.clone(),
                    }
                }
                _ => return Err(DecodeError::InvalidField("upload")),
            };
            out.push(Envelope { recipient, content });
        }
    }
    if out.is_empty() {
        return Err(DecodeError::InvalidField("recipients"));
    }
    Ok(out)
}

/// Checks a sealed envelope's outer fields only (PROTOCOL.md §19.1): what a server can check
/// without any key. [`Envelope::from_bytes`] already enforces it; this names it for key
/// servers that store envelopes they did not split themselves.
///
/// # Errors
/// [`DecodeError`] if the bytes are not a well-formed sealed envelope.
pub fn validate_sealed_envelope(bytes: &[u8]) -> Result<Address, DecodeError> {
    let envelope = Envelope::from_bytes(bytes)?;
    match envelope.content {
        EnvelopeContent::Sealed(_) => Ok(envelope.recipient),
        _ => Err(DecodeError::InvalidField("kind")),
    }
}
