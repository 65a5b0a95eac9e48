//! Accounts and signed device lists (PROTOCOL.md §14): an account identity key (Ed25519, held by
//! the primary device) signs the list of the account's devices; each entry is linked by two
//! signatures, the account's over the device key and the device's over the account key.
//!
//! One verification API serves clients and key servers: [`VerifiedDeviceList::verify`].
//!
//! ```
//! use confidant::device::{DeviceEntry, DeviceList, LinkRequest, VerifiedDeviceList};
//! use confidant::{DeviceListError, IdentityKeyPair, Timestamp};
//! # use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};
//! # let mut rng = ChaCha20Rng::seed_from_u64(7);
//! let account = IdentityKeyPair::generate(&mut rng); // held by the primary device
//! let phone = IdentityKeyPair::generate(&mut rng); // the primary's own device identity
//! let mut list = DeviceList {
//!     account_id: b"alice".to_vec(),
//!     version: 1,
//!     timestamp: Timestamp(1_700_000_000_000),
//!     entries: vec![DeviceEntry::local(&account, &phone, 1)],
//! };
//! let v1_bytes = list.sign(&account)?;
//! let v1 = VerifiedDeviceList::verify(&v1_bytes, &account.public(), None)?;
//!
//! // A laptop joins: it signs a link request, the primary links it and publishes version 2.
//! let laptop = IdentityKeyPair::generate(&mut rng);
//! let qr_code = LinkRequest::new(&laptop, &account.public()).to_bytes();
//! let request = LinkRequest::from_bytes(&qr_code)?; // on the primary
//! list.entries.push(DeviceEntry::link(&account, &request, 2)?);
//! list.version = 2;
//! let v2 = VerifiedDeviceList::verify(&list.sign(&account)?, &account.public(), Some(&v1))?;
//! assert_eq!(v2.changes_since(&v1).added, vec![(2, laptop.public())]);
//!
//! // Replaying version 1 after version 2 is a rollback; a list under another key is refused.
//! let replayed = VerifiedDeviceList::verify(&v1_bytes, &account.public(), Some(&v2));
//! assert_eq!(replayed, Err(DeviceListError::Rollback { version: 1, last: 2 }));
//! let other = IdentityKeyPair::generate(&mut rng).public();
//! let wrong_key = VerifiedDeviceList::verify(&v1_bytes, &other, None);
//! assert_eq!(wrong_key, Err(DeviceListError::AccountMismatch));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::fmt;
use std::collections::BTreeSet;

use crate::codec::{self, DEVICE_LIST_V1, LINK_REQUEST_V1, RepeatedLimit};
use crate::error::{DecodeError, DeviceListError};
use crate::keys::{IdentityKey, IdentityKeyPair};
use crate::limits::{MAX_ACCOUNT_ID_BYTES, MAX_DEVICE_LIST_BYTES, MAX_DEVICES_PER_ACCOUNT};
use crate::proto::{
    DeviceEntryProto, DeviceListBodyProto, LinkRequestProto, SignedDeviceListProto,
};
use crate::time::Timestamp;

/// Signature context of a device list body (PROTOCOL.md §14.3).
const LIST_CONTEXT: &[u8] = b"confidant/device-list/v1";
/// Signature context of the account's signature over a device key (PROTOCOL.md §14.2).
const ACCOUNT_LINK_CONTEXT: &[u8] = b"confidant/device-link/v1/account";
/// Signature context of the device's signature over the account key (PROTOCOL.md §14.2).
const DEVICE_LINK_CONTEXT: &[u8] = b"confidant/device-link/v1/device";

/// `DEVICE_LINK_CONTEXT || EncodeEd(account key)`: what a device signs to join an account.
fn device_link_message(account_key: &IdentityKey) -> Vec<u8> {
    [DEVICE_LINK_CONTEXT, &account_key.encode()].concat()
}

/// `ACCOUNT_LINK_CONTEXT || u32be(device id) || EncodeEd(device key)`: what the account signs.
fn account_link_message(device_id: u32, device_key: &IdentityKey) -> Vec<u8> {
    [
        ACCOUNT_LINK_CONTEXT,
        &device_id.to_be_bytes(),
        &device_key.encode(),
    ]
    .concat()
}

/// What a new device shows the primary (as a QR code, about 135 bytes) to be linked: its
/// identity key and its signature over the account key (PROTOCOL.md §14.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRequest {
    account_key: IdentityKey,
    device_key: IdentityKey,
    device_signature: [u8; 64],
}

impl LinkRequest {
    /// Made on the new device, for the account whose key it learned from the primary.
    #[must_use]
    pub fn new(device: &IdentityKeyPair, account_key: &IdentityKey) -> Self {
        Self {
            account_key: *account_key,
            device_key: device.public(),
            device_signature: device.sign(&device_link_message(account_key)),
        }
    }

    /// The new device's identity key.
    #[must_use]
    pub fn device_key(&self) -> IdentityKey {
        self.device_key
    }

    /// The encoding (leading byte `0x42`).
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let proto = LinkRequestProto {
            account_key: self.account_key.to_bytes().to_vec(),
            device_key: self.device_key.to_bytes().to_vec(),
            device_signature: self.device_signature.to_vec(),
        };
        codec::encode(LINK_REQUEST_V1, &proto)
    }

    /// Parses a link request (keys validated, signature not yet checked).
    ///
    /// # Errors
    /// [`DecodeError`] on malformed input.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let proto: LinkRequestProto = codec::decode(bytes, LINK_REQUEST_V1, MAX_DEVICE_LIST_BYTES)?;
        Ok(Self {
            account_key: key(&proto.account_key, "account_key")?,
            device_key: key(&proto.device_key, "device_key")?,
            device_signature: codec::array(&proto.device_signature, "device_signature")?,
        })
    }
}

fn key(bytes: &[u8], field: &'static str) -> Result<IdentityKey, DecodeError> {
    IdentityKey::from_bytes(bytes).map_err(|error| DecodeError::Key { field, error })
}

/// One device of an account: its id, identity key, and both link signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEntry {
    device_id: u32,
    device_key: IdentityKey,
    account_signature: [u8; 64],
    device_signature: [u8; 64],
}

impl DeviceEntry {
    /// The primary links a device that sent `request`, under `device_id`.
    ///
    /// # Errors
    /// [`DeviceListError::AccountMismatch`] if the request is for another account;
    /// [`DeviceListError::Unauthenticated`] if the device's signature does not verify.
    pub fn link(
        account: &IdentityKeyPair,
        request: &LinkRequest,
        device_id: u32,
    ) -> Result<Self, DeviceListError> {
        if request.account_key != account.public() {
            return Err(DeviceListError::AccountMismatch);
        }
        if !request.device_key.verify(
            &device_link_message(&request.account_key),
            &request.device_signature,
        ) {
            return Err(DeviceListError::Unauthenticated);
        }
        Ok(Self {
            device_id,
            device_key: request.device_key,
            account_signature: account.sign(&account_link_message(device_id, &request.device_key)),
            device_signature: request.device_signature,
        })
    }

    /// An entry for a device whose identity key pair is at hand (the primary itself).
    #[must_use]
    pub fn local(account: &IdentityKeyPair, device: &IdentityKeyPair, device_id: u32) -> Self {
        Self {
            device_id,
            device_key: device.public(),
            account_signature: account.sign(&account_link_message(device_id, &device.public())),
            device_signature: device.sign(&device_link_message(&account.public())),
        }
    }

    /// The device id (unique within the account).
    #[must_use]
    pub fn device_id(&self) -> u32 {
        self.device_id
    }

    /// The device's identity key.
    #[must_use]
    pub fn device_key(&self) -> IdentityKey {
        self.device_key
    }

    fn verify(&self, account_key: &IdentityKey) -> bool {
        account_key.verify(
            &account_link_message(self.device_id, &self.device_key),
            &self.account_signature,
        ) && self
            .device_key
            .verify(&device_link_message(account_key), &self.device_signature)
    }

    fn to_proto(&self) -> DeviceEntryProto {
        DeviceEntryProto {
            device_id: self.device_id,
            device_key: self.device_key.to_bytes().to_vec(),
            account_signature: self.account_signature.to_vec(),
            device_signature: self.device_signature.to_vec(),
        }
    }

    fn from_proto(p: &DeviceEntryProto) -> Result<Self, DecodeError> {
        Ok(Self {
            device_id: p.device_id,
            device_key: key(&p.device_key, "device_key")?,
            account_signature: codec::array(&p.account_signature, "account_signature")?,
            device_signature: codec::array(&p.device_signature, "device_signature")?,
        })
    }
}

/// A device list to sign (primary device side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceList {
    /// The application's account identifier (at most [`MAX_ACCOUNT_ID_BYTES`]).
    pub account_id: Vec<u8>,
    /// Strictly increasing with every change.
    pub version: u64,
    /// When the list was made (caller-supplied; informational).
    pub timestamp: Timestamp,
    /// The devices.
    pub entries: Vec<DeviceEntry>,
}

impl DeviceList {
    /// Signs the list with the account key: `0x41 || SignedDeviceList { body, signature }`
    /// where the signature covers `LIST_CONTEXT || body` (PROTOCOL.md §14.3).
    ///
    /// # Errors
    /// The same checks as [`VerifiedDeviceList::verify`] (the list must verify once signed).
    pub fn sign(&self, account: &IdentityKeyPair) -> Result<Vec<u8>, DeviceListError> {
        let body = prost::Message::encode_to_vec(&DeviceListBodyProto {
            account_id: self.account_id.clone(),
            account_key: account.public().to_bytes().to_vec(),
            version: self.version,
            timestamp: self.timestamp.0,
            entries: self.entries.iter().map(DeviceEntry::to_proto).collect(),
        });
        let signature = account.sign(&[LIST_CONTEXT, &body].concat());
        let bytes = codec::encode(
            DEVICE_LIST_V1,
            &SignedDeviceListProto {
                body,
                signature: signature.to_vec(),
            },
        );
        VerifiedDeviceList::verify(&bytes, &account.public(), None)?;
        Ok(bytes)
    }
}

/// A device list whose signatures verified against a pinned account key; only
/// [`VerifiedDeviceList::verify`] makes one.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedDeviceList {
    account_id: Vec<u8>,
    account_key: IdentityKey,
    version: u64,
    timestamp: Timestamp,
    entries: Vec<DeviceEntry>,
}

/// What changed between two verified lists of one account.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceListChanges {
    /// Devices new in the newer list (or whose key changed), with their keys: fetch bundles.
    pub added: Vec<(u32, IdentityKey)>,
    /// Devices gone from the newer list (or whose key changed): drop their sessions.
    pub removed: Vec<u32>,
}

impl VerifiedDeviceList {
    /// Verifies signed device-list bytes (PROTOCOL.md §14.4), in order: size and decoding, the
    /// account key equals `account_key` (pinned by the caller), the list signature over the
    /// exact received body, the account id and entry limits, unique device ids and keys, both
    /// link signatures of every entry, and — given the last accepted list — the same account id
    /// and a strictly greater version (no rollback). Clients and key servers use it alike.
    ///
    /// # Errors
    /// [`DeviceListError`]; nothing is accepted on error.
    pub fn verify(
        bytes: &[u8],
        account_key: &IdentityKey,
        previous: Option<&VerifiedDeviceList>,
    ) -> Result<Self, DeviceListError> {
        let signed: SignedDeviceListProto =
            codec::decode(bytes, DEVICE_LIST_V1, MAX_DEVICE_LIST_BYTES)?;
        // The body is inside the size-checked input; count entries before decoding them.
        let body: DeviceListBodyProto = codec::decode_body(
            &signed.body,
            &[RepeatedLimit {
                path: &[],
                tag: 5,
                max: MAX_DEVICES_PER_ACCOUNT,
                field: "entries",
            }],
        )
        .map_err(|e| match e {
            DecodeError::TooMany { count, limit, .. } => {
                DeviceListError::TooManyDevices { count, limit }
            }
            other => DeviceListError::Decode(other),
        })?;
        if key(&body.account_key, "account_key")? != *account_key {
            return Err(DeviceListError::AccountMismatch);
        }
        if !account_key.verify(&[LIST_CONTEXT, &signed.body].concat(), &signed.signature) {
            return Err(DeviceListError::Unauthenticated);
        }
        if body.account_id.len() > MAX_ACCOUNT_ID_BYTES {
            return Err(DeviceListError::Decode(DecodeError::InvalidField(
                "account_id",
            )));
        }
        let entries = body
            .entries
            .iter()
            .map(DeviceEntry::from_proto)
            .collect::<Result<Vec<_>, _>>()?;
        let mut ids = BTreeSet::new();
        let mut keys = BTreeSet::new();
        for e in &entries {
            if !ids.insert(e.device_id) {
                return Err(DeviceListError::DuplicateDevice(e.device_id));
            }
            if !keys.insert(e.device_key.to_bytes()) {
                return Err(DeviceListError::DuplicateDeviceKey(e.device_id));
            }
            if !e.verify(account_key) {
                return Err(DeviceListError::Unauthenticated);
            }
        }
        if let Some(previous) = previous {
            if previous.account_key != *account_key || previous.account_id != body.account_id {
                return Err(DeviceListError::AccountMismatch);
            }
            if body.version <= previous.version {
                return Err(DeviceListError::Rollback {
                    version: body.version,
                    last: previous.version,
                });
            }
        }
        Ok(Self {
            account_id: body.account_id,
            account_key: *account_key,
            version: body.version,
            timestamp: Timestamp(body.timestamp),
            entries,
        })
    }

    /// The account id.
    #[must_use]
    pub fn account_id(&self) -> &[u8] {
        &self.account_id
    }

    /// The account key the list verified under.
    #[must_use]
    pub fn account_key(&self) -> IdentityKey {
        self.account_key
    }

    /// The list version.
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The list's timestamp (as signed).
    #[must_use]
    pub fn timestamp(&self) -> Timestamp {
        self.timestamp
    }

    /// The devices, in list order.
    #[must_use]
    pub fn entries(&self) -> &[DeviceEntry] {
        &self.entries
    }

    /// The identity key of `device_id`, if it is in the list.
    #[must_use]
    pub fn device_key(&self, device_id: u32) -> Option<IdentityKey> {
        self.entries
            .iter()
            .find(|e| e.device_id == device_id)
            .map(|e| e.device_key)
    }

    /// What changed from `older` to `self` (PROTOCOL.md §14.5). A device whose key changed
    /// counts as removed and added.
    #[must_use]
    pub fn changes_since(&self, older: &VerifiedDeviceList) -> DeviceListChanges {
        let mut changes = DeviceListChanges::default();
        for e in &older.entries {
            if self.device_key(e.device_id) != Some(e.device_key) {
                changes.removed.push(e.device_id);
            }
        }
        for e in &self.entries {
            if older.device_key(e.device_id) != Some(e.device_key) {
                changes.added.push((e.device_id, e.device_key));
            }
        }
        changes
    }
}

impl fmt::Debug for VerifiedDeviceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedDeviceList")
            .field("account_key", &self.account_key)
            .field("version", &self.version)
            .field(
                "devices",
                &self.entries.iter().map(|e| e.device_id).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}
