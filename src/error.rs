//! Error types, one per operation (PROTOCOL.md §9 lists the limits they name).
//!
//! Every error says whether state was modified: for every operation in this crate the answer is
//! "never" — a failed call leaves every value it borrowed byte-identical.

use thiserror::Error;

/// A key failed validation (PROTOCOL.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key is not 32 bytes long.
    #[error("key has the wrong length")]
    Length,
    /// The bytes are not a canonical encoding of a curve point.
    #[error("key is not a valid point")]
    Invalid,
    /// The point has small order and would make DH non-contributory.
    #[error("key is a point of small order")]
    SmallOrder,
    /// The point has a small-order component (it is not in the prime-order subgroup).
    #[error("key is not in the prime-order subgroup")]
    Torsion,
}

/// Bytes that could not be decoded. Decoding errors may be detailed: they concern public bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input is longer than the limit for its type (checked before decoding).
    #[error("input of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Length of the input.
        len: usize,
        /// The limit (PROTOCOL.md §9).
        limit: usize,
    },
    /// A repeated field occurs more often than its limit (checked before decoding).
    #[error("{count} `{field}` entries exceed the limit of {limit}")]
    TooMany {
        /// Which field.
        field: &'static str,
        /// Occurrences in the input (saturating).
        count: usize,
        /// The limit (PROTOCOL.md §9).
        limit: usize,
    },
    /// The input is empty.
    #[error("input is empty")]
    Empty,
    /// The leading version/type byte is not one this version understands.
    #[error("unsupported version or type byte {0:#04x}")]
    UnsupportedVersion(u8),
    /// The protobuf body is malformed.
    #[error("malformed protobuf")]
    Protobuf,
    /// A field is missing, has the wrong length, or has an invalid value.
    #[error("invalid field `{0}`")]
    InvalidField(&'static str),
    /// A field names a feature (for example a KEM prekey) that this handshake kind forbids or
    /// that this version does not support.
    #[error("unsupported field `{0}`")]
    Unsupported(&'static str),
    /// A key inside the input failed validation.
    #[error("invalid key in `{field}`: {error}")]
    Key {
        /// Which field.
        field: &'static str,
        /// Why.
        error: KeyError,
    },
}

/// Why [`PreKeyBundle::verify`](crate::PreKeyBundle::verify) rejected a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum BundleError {
    /// A signature did not verify.
    #[error("bundle failed authentication")]
    Unauthenticated,
    /// The bundle names an identity other than the one the caller expected.
    #[error("bundle identity does not match the expected identity")]
    IdentityMismatch,
}

/// Why a handshake (X3DH initiation or acceptance) failed. No session is created, no prekey is
/// consumed, and every borrowed value is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// A signature, the first message's AEAD tag, or a DH contributory check failed.
    #[error("handshake failed authentication")]
    Unauthenticated,
    /// The initial message names a signed prekey this device does not hold (or no longer holds).
    #[error("unknown signed prekey {0}")]
    UnknownSignedPreKey(u32),
    /// The policy requires PQXDH: the bundle has no KEM prekey (initiator), or the initial
    /// message is X3DH (responder). See [`HandshakePolicy`](crate::HandshakePolicy).
    #[error("post-quantum handshake required")]
    PostQuantumRequired,
    /// The initial message names a KEM prekey this device does not hold (unknown, a used
    /// one-time KEM prekey, or a pruned last-resort one).
    #[error("unknown or already used KEM prekey {0}")]
    UnknownKemPreKey(u32),
    /// The initial message names a one-time prekey that is unknown or already used.
    #[error("unknown or already used one-time prekey {0}")]
    UnknownOneTimePreKey(u32),
    /// An initial message with this (signed prekey id, base key) and no one-time prekey was
    /// already accepted. If it came from the session's initiator repeating its initial data,
    /// route it to the existing session whose [`Session::owns`](crate::Session::owns) matches
    /// it instead of calling `accept` (PROTOCOL.md §6.3).
    #[error("initial message replayed")]
    Replay,
    /// The replay record for this signed prekey is full (`limit` initial messages without a
    /// one-time prekey were accepted for it). Rotate the signed prekey and publish the new
    /// one; this refuses instead of forgetting, so a replay can never create a second session.
    #[error("replay record is full ({limit} entries): rotate the prekey")]
    ReplayRecordFull {
        /// The signed prekey the message names.
        signed_prekey_id: u32,
        /// For PQXDH with a last-resort KEM prekey, the KEM prekey whose record is full: rotate
        /// that one ([`PreKeys::rotate_last_resort_kem_prekey`](crate::PreKeys::rotate_last_resort_kem_prekey)).
        kem_prekey_id: Option<u32>,
        /// [`MAX_ACCEPTED_BASE_KEYS`](crate::limits::MAX_ACCEPTED_BASE_KEYS).
        limit: usize,
    },
    /// The first message inside the initial message is malformed or too far ahead.
    #[error("first message rejected: {0}")]
    FirstMessage(DecryptError),
}

/// Why [`Session::encrypt`](crate::Session::encrypt) failed. The session is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EncryptError {
    /// The responder cannot send before it has received (PROTOCOL.md §5.1).
    #[error("session cannot send yet")]
    NotReady,
    /// The plaintext exceeds the message size limit.
    #[error("plaintext of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Plaintext length.
        len: usize,
        /// [`MAX_PLAINTEXT`](crate::limits::MAX_PLAINTEXT).
        limit: usize,
    },
    /// The sending chain's counter reached `u32::MAX`.
    #[error("sending chain exhausted")]
    ChainExhausted,
}

/// Why a message was not decrypted. In every case the session is unchanged.
///
/// Every cryptographic failure (AEAD tag, DH contributory check) is
/// [`Unauthenticated`](Self::Unauthenticated): which check failed helps only an attacker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecryptError {
    /// The message could not be parsed.
    #[error("malformed message: {0}")]
    Malformed(#[from] DecodeError),
    /// The message failed authentication.
    #[error("message failed authentication")]
    Unauthenticated,
    /// A message of the current receiving chain that was already decrypted, or whose skipped
    /// key was evicted. (A replay from an earlier chain whose key is gone cannot be told apart
    /// from a forgery and is [`Unauthenticated`](Self::Unauthenticated); PROTOCOL.md §5.4.)
    #[error("message {counter} was already decrypted or has expired")]
    Duplicate {
        /// Message number within its chain.
        counter: u32,
    },
    /// Reaching the message would skip more than `MAX_SKIP` keys (PROTOCOL.md §5.4).
    #[error("skipping {gap} message keys exceeds the limit of {limit}")]
    TooFarAhead {
        /// Keys that would have to be skipped (saturating).
        gap: u64,
        /// [`MAX_SKIP`](crate::limits::MAX_SKIP).
        limit: u32,
    },
    /// An initial message that belongs to another session (different base key or identity):
    /// hand it to [`PreKeys::accept`](crate::PreKeys::accept) instead.
    #[error("initial message belongs to another session")]
    OtherSession,
}

/// Why restoring a snapshot failed. Snapshots are untrusted input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// The snapshot could not be decoded.
    #[error("malformed snapshot: {0}")]
    Decode(#[from] DecodeError),
    /// The snapshot decoded but violates an invariant (named).
    #[error("snapshot violates invariant `{0}`")]
    Invariant(&'static str),
}

/// Why prekey generation failed (client side).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PreKeyError {
    /// Generating this many one-time prekeys would exceed the stored limit.
    #[error("{requested} more one-time prekeys would exceed the limit of {limit}")]
    TooMany {
        /// How many were requested.
        requested: usize,
        /// [`MAX_ONE_TIME_PREKEYS`](crate::limits::MAX_ONE_TIME_PREKEYS).
        limit: usize,
    },
}

/// Why a key server rejected an upload (PROTOCOL.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum UploadError {
    /// The upload could not be decoded.
    #[error("malformed upload: {0}")]
    Decode(#[from] DecodeError),
    /// The signed prekey's signature does not verify under the identity key.
    #[error("upload failed authentication")]
    Unauthenticated,
    /// The upload is for a different identity than the one registered.
    #[error("upload identity does not match the registered identity")]
    IdentityMismatch,
    /// A one-time prekey id appears twice, or is already stocked.
    #[error("duplicate one-time prekey id {0}")]
    DuplicateId(u32),
    /// A KEM prekey id appears twice (one-time and last-resort share one id space), or is
    /// already stocked.
    #[error("duplicate KEM prekey id {0}")]
    DuplicateKemId(u32),
    /// One-time KEM prekeys were uploaded for a device that has published no last-resort KEM
    /// prekey (include one in the same or an earlier upload).
    #[error("one-time KEM prekeys without a last-resort KEM prekey")]
    MissingLastResortKemPreKey,
    /// A newer last-resort KEM prekey replaces the current one only with a newer id.
    #[error("last-resort KEM prekey id {id} is not newer than {current}")]
    StaleKemPreKey {
        /// Uploaded id.
        id: u32,
        /// Currently published id.
        current: u32,
    },
    /// The batch or the stock would exceed a limit.
    #[error("{count} one-time prekeys exceed the limit of {limit}")]
    TooMany {
        /// Resulting count.
        count: usize,
        /// The limit (PROTOCOL.md §9).
        limit: usize,
    },
    /// A newer signed prekey replaces an older one only with a larger id.
    #[error("signed prekey id {id} is not newer than {current}")]
    StaleSignedPreKey {
        /// Uploaded id.
        id: u32,
        /// Currently published id.
        current: u32,
    },
}

/// Why a device list or link request was rejected (PROTOCOL.md §14.4). Nothing is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DeviceListError {
    /// The bytes could not be decoded.
    #[error("malformed device list: {0}")]
    Decode(#[from] DecodeError),
    /// The list signature or a link signature did not verify.
    #[error("device list failed authentication")]
    Unauthenticated,
    /// The list (or link request) is for another account key or account id.
    #[error("device list is for another account")]
    AccountMismatch,
    /// The version is not greater than the last accepted one.
    #[error("device list version {version} is not newer than {last}")]
    Rollback {
        /// Received version.
        version: u64,
        /// Last accepted version.
        last: u64,
    },
    /// A device id appears twice.
    #[error("duplicate device id {0}")]
    DuplicateDevice(u32),
    /// A device identity key appears twice (under the named device id the second time).
    #[error("duplicate device key (device {0})")]
    DuplicateDeviceKey(u32),
    /// More devices than allowed.
    #[error("{count} devices exceed the limit of {limit}")]
    TooManyDevices {
        /// Entries in the list (or, from `SessionBook::apply_device_list`, devices the book
        /// would hold).
        count: usize,
        /// [`MAX_DEVICES_PER_ACCOUNT`](crate::limits::MAX_DEVICES_PER_ACCOUNT) (or
        /// [`MAX_BOOK_DEVICES`](crate::limits::MAX_BOOK_DEVICES)).
        limit: usize,
    },
}

/// Why a group operation failed (PROTOCOL.md §17). In every case the
/// [`GroupSession`](crate::group::GroupSession) is unchanged.
///
/// Every cryptographic failure (signature, AEAD tag) is
/// [`Unauthenticated`](Self::Unauthenticated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum GroupError {
    /// The message or distribution could not be parsed.
    #[error("malformed group message: {0}")]
    Malformed(#[from] DecodeError),
    /// The message or distribution belongs to another group.
    #[error("message belongs to another group")]
    WrongGroup,
    /// The sender device is not a current member of the group.
    #[error("sender is not a member of the group")]
    NotMember,
    /// The message or distribution claims to come from this device itself.
    #[error("message from this device itself")]
    OwnDevice,
    /// No sender key with this id is held for the sender: its distribution has not arrived
    /// yet (hold the message and retry after the next distribution from that sender), or the
    /// key was retired (evicted beyond `MAX_SENDER_KEY_STATES`, or the sender left).
    #[error("no sender key {key_id} for this sender")]
    UnknownSenderKey {
        /// The key id the message names.
        key_id: u32,
    },
    /// The signature or the AEAD tag did not verify, the padding is malformed, or the
    /// iteration is at or beyond the end its sender announced for the key.
    #[error("group message failed authentication")]
    Unauthenticated,
    /// The message's key is not available: it was already decrypted, its skipped key was
    /// evicted, or it precedes the iteration at which this device received the sender key.
    #[error("group message {iteration} was already decrypted or is not available")]
    Duplicate {
        /// The message's iteration.
        iteration: u32,
    },
    /// Reaching the message would skip more than `MAX_SKIP` keys (PROTOCOL.md §17.5).
    #[error("skipping {gap} message keys exceeds the limit of {limit}")]
    TooFarAhead {
        /// Keys that would have to be skipped.
        gap: u32,
        /// [`MAX_SKIP`](crate::limits::MAX_SKIP).
        limit: u32,
    },
    /// The member list does not contain this device.
    #[error("the member list does not contain this device")]
    OwnDeviceNotListed,
    /// More member devices than allowed.
    #[error("{count} member devices exceed the limit of {limit}")]
    TooManyMembers {
        /// Devices in the list.
        count: usize,
        /// [`MAX_GROUP_DEVICES`](crate::limits::MAX_GROUP_DEVICES).
        limit: usize,
    },
}

/// Why a sender certificate was refused (PROTOCOL.md §19.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// The certificate (or the server certificate inside it) could not be decoded.
    #[error("malformed certificate: {0}")]
    Malformed(#[from] DecodeError),
    /// A signature did not verify: not signed by the trusted root, or not by the certified
    /// server key.
    #[error("certificate failed authentication")]
    Unauthenticated,
    /// The certificate expired.
    #[error("certificate expired at {expires:?} (now {now:?})")]
    Expired {
        /// The certificate's expiry.
        expires: crate::time::Timestamp,
        /// The time given to the check.
        now: crate::time::Timestamp,
    },
    /// The server key that signed it was revoked.
    #[error("server key {key_id} is revoked")]
    Revoked {
        /// The revoked server key id.
        key_id: u32,
    },
}

/// Why a sealed envelope was not opened (PROTOCOL.md §19.3). Nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SealedError {
    /// An outer field is malformed.
    #[error("malformed sealed envelope: {0}")]
    Malformed(#[from] DecodeError),
    /// Any authentication failure: not sealed to this device, a tampered header, body or
    /// entry, a certificate that does not even parse canonically, an authentication tag that
    /// does not match the certified key.
    #[error("sealed envelope failed authentication")]
    Unauthenticated,
    /// The sender certificate was refused.
    #[error("sender certificate refused: {0}")]
    Certificate(#[from] CertificateError),
    /// The certified sender is not a device of any verified device list known here.
    #[error("unknown sender device")]
    UnknownSender,
    /// The envelope was sealed by this device itself: the decoy of one of its own sends
    /// (PROTOCOL.md §19.3). Drop it.
    #[error("sealed by this device itself")]
    FromSelf,
    /// The certified identity key differs from the one the device list gives for the sender.
    #[error("certificate identity does not match the sender's device key")]
    IdentityMismatch,
}
