//! Key-server side, sans-IO (PROTOCOL.md §7): validate uploads, serve bundles that use each
//! one-time prekey at most once, and report low stock. The server needs no secrets.

use std::collections::{HashSet, VecDeque};

use crate::bundle::{self, OneTimePreKeyPublic, PreKeyBundle, SignedPreKeyPublic};
use crate::codec::{self, UPLOAD_V1};
use crate::error::{DecodeError, UploadError};
use crate::keys::IdentityKey;
use crate::limits::{
    LOW_ONE_TIME_PREKEY_STOCK, MAX_SERVER_ONE_TIME_PREKEYS, MAX_UPLOAD_BYTES,
    MAX_UPLOAD_ONE_TIME_PREKEYS,
};
use crate::proto::PreKeyUploadProto;

/// What a device uploads to the key server: its identity key, current signed prekey and a
/// batch of one-time prekeys (PROTOCOL.md §7.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreKeyUpload {
    identity_key: IdentityKey,
    signed_prekey: SignedPreKeyPublic,
    one_time_prekeys: Vec<OneTimePreKeyPublic>,
}

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
        }
    }

    /// The encoding (leading byte `0x22`).
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_upload(
            self.identity_key,
            self.signed_prekey,
            &self.one_time_prekeys,
        )
    }

    /// Decodes and fully validates an upload: key validity, the signed prekey's signature,
    /// unique one-time prekey ids, and the batch size limit.
    ///
    /// # Errors
    /// [`UploadError`] naming the first problem found.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, UploadError> {
        Self::parse(bytes, MAX_UPLOAD_ONE_TIME_PREKEYS)
    }

    /// Decodes and validates an upload encoding with at most `max_one_time` one-time prekeys.
    fn parse(bytes: &[u8], max_one_time: usize) -> Result<Self, UploadError> {
        let proto: PreKeyUploadProto = codec::decode_counted(
            bytes,
            UPLOAD_V1,
            MAX_UPLOAD_BYTES,
            &[codec::RepeatedLimit {
                path: &[],
                tag: 3,
                max: max_one_time,
                field: "one_time_prekeys",
            }],
        )
        .map_err(too_many)?;
        // PROTOCOL.md §8.4: KEM prekeys are not silently dropped.
        if proto.last_resort_kem_prekey.is_some() || !proto.one_time_kem_prekeys.is_empty() {
            return Err(DecodeError::Unsupported("kem_prekey").into());
        }
        let (identity_key, signed_prekey) = bundle::decode_identity_and_signed_prekey(
            &proto.identity_key,
            proto.signed_prekey.as_ref(),
        )?;
        if !signed_prekey.verify(&identity_key) {
            return Err(UploadError::Unauthenticated);
        }
        let mut ids = HashSet::with_capacity(proto.one_time_prekeys.len());
        let mut one_time_prekeys = Vec::with_capacity(proto.one_time_prekeys.len());
        for k in &proto.one_time_prekeys {
            let key = OneTimePreKeyPublic::from_proto(k)?;
            if !ids.insert(key.id()) {
                return Err(UploadError::DuplicateId(key.id()));
            }
            one_time_prekeys.push(key);
        }
        Ok(Self {
            identity_key,
            signed_prekey,
            one_time_prekeys,
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
}

/// One bundle handed out by [`DeviceKeys::fetch_bundle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The bundle to send to the requester.
    pub bundle: PreKeyBundle,
    /// One-time prekeys left after this fetch.
    pub remaining_one_time_prekeys: usize,
    /// Whether the device should upload more one-time prekeys
    /// (fewer than [`LOW_ONE_TIME_PREKEY_STOCK`] remain).
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
        };
        out.add_one_time(&upload.one_time_prekeys)?;
        Ok(out)
    }

    /// Applies a later upload from the same device: a newer signed prekey replaces the current
    /// one (the same one may be repeated), and one-time prekeys are added. "Newer" is RFC 1982
    /// serial-number order on the u32 id, so ids may wrap (PROTOCOL.md §7.2).
    /// Atomic: on error nothing changes.
    ///
    /// # Errors
    /// [`UploadError`]: validation failures, another identity, a stale signed prekey, an id
    /// already in stock, or the stock limit.
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
        next.add_one_time(&upload.one_time_prekeys)?;
        *self = next;
        Ok(())
    }

    fn add_one_time(&mut self, keys: &[OneTimePreKeyPublic]) -> Result<(), UploadError> {
        let count = self.one_time.len().saturating_add(keys.len());
        if count > MAX_SERVER_ONE_TIME_PREKEYS {
            return Err(UploadError::TooMany {
                count,
                limit: MAX_SERVER_ONE_TIME_PREKEYS,
            });
        }
        let stocked: HashSet<u32> = self.one_time.iter().map(OneTimePreKeyPublic::id).collect();
        if let Some(dup) = keys.iter().find(|k| stocked.contains(&k.id())) {
            return Err(UploadError::DuplicateId(dup.id()));
        }
        self.one_time.extend(keys.iter().copied());
        Ok(())
    }

    /// Hands out one bundle. Each one-time prekey is removed as it is handed out, so it is
    /// served at most once; when none is left the bundle has none (X3DH's 3-DH variant).
    pub fn fetch_bundle(&mut self) -> Fetched {
        let one_time = self.one_time.pop_front();
        let remaining = self.one_time.len();
        Fetched {
            bundle: PreKeyBundle::new(self.identity_key, self.signed_prekey, one_time),
            remaining_one_time_prekeys: remaining,
            low_stock: remaining < LOW_ONE_TIME_PREKEY_STOCK,
        }
    }

    /// One-time prekeys in stock.
    #[must_use]
    pub fn one_time_prekey_count(&self) -> usize {
        self.one_time.len()
    }

    /// The device's identity key.
    #[must_use]
    pub fn identity_key(&self) -> IdentityKey {
        self.identity_key
    }

    /// The record as an upload encoding (current signed prekey and remaining stock; at most
    /// [`MAX_SERVER_ONE_TIME_PREKEYS`] keys, so it may exceed a single upload's batch limit:
    /// restore it with [`DeviceKeys::restore`]).
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let stock: Vec<OneTimePreKeyPublic> = self.one_time.iter().copied().collect();
        encode_upload(self.identity_key, self.signed_prekey, &stock)
    }

    /// Restores a record written by [`DeviceKeys::to_bytes`], re-validating everything.
    ///
    /// # Errors
    /// [`UploadError`] as for a registration, with the stock limit instead of the batch limit.
    pub fn restore(bytes: &[u8]) -> Result<Self, UploadError> {
        Self::from_upload(PreKeyUpload::parse(bytes, MAX_SERVER_ONE_TIME_PREKEYS)?)
    }
}

/// `0x22 || PreKeyUploadProto` (PROTOCOL.md §8.4).
fn encode_upload(
    identity_key: IdentityKey,
    signed_prekey: SignedPreKeyPublic,
    one_time_prekeys: &[OneTimePreKeyPublic],
) -> Vec<u8> {
    let proto = PreKeyUploadProto {
        identity_key: identity_key.to_bytes().to_vec(),
        signed_prekey: Some(signed_prekey.to_proto()),
        one_time_prekeys: one_time_prekeys.iter().map(|k| k.to_proto()).collect(),
        ..Default::default()
    };
    codec::encode(UPLOAD_V1, &proto)
}

/// RFC 1982 serial-number comparison on 32-bit ids: `id` is newer than `current` if it is ahead
/// by 1 to 2^31 - 1 steps, counting modulo 2^32. Lets signed prekey ids wrap around.
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
