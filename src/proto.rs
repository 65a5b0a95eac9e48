//! Hand-written prost messages (no protoc, no build script). The `.proto` text of every message
//! is in PROTOCOL.md §8 (wire) and §10 (snapshots); tags here must match it. Retired tags are
//! never reused.

#![allow(missing_docs, unreachable_pub)]

use zeroize::Zeroize;

// ---- Wire (PROTOCOL.md §8) -------------------------------------------------------------------

/// A Double Ratchet message. Next tag: 3.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RatchetMessageProto {
    /// The 40-byte header, authenticated as received.
    #[prost(bytes = "vec", tag = "1")]
    pub header: Vec<u8>,
    /// AES-256-GCM ciphertext || tag.
    #[prost(bytes = "vec", tag = "2")]
    pub ciphertext: Vec<u8>,
}

/// An initial (prekey) message. Next tag: 9. Tags 6 and 7 are set exactly for PQXDH.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PreKeyMessageProto {
    #[prost(uint32, tag = "1")]
    pub handshake: u32,
    #[prost(bytes = "vec", tag = "2")]
    pub identity_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub base_key: Vec<u8>,
    #[prost(uint32, tag = "4")]
    pub signed_prekey_id: u32,
    #[prost(uint32, optional, tag = "5")]
    pub one_time_prekey_id: Option<u32>,
    #[prost(uint32, optional, tag = "6")]
    pub kem_prekey_id: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "7")]
    pub kem_ciphertext: Option<Vec<u8>>,
    #[prost(message, optional, tag = "8")]
    pub message: Option<RatchetMessageProto>,
}

// ---- Bundles and uploads (PROTOCOL.md §8) ----------------------------------------------------

/// Next tag: 5.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SignedPreKeyProto {
    #[prost(uint32, tag = "1")]
    pub id: u32,
    #[prost(bytes = "vec", tag = "2")]
    pub public_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub signature: Vec<u8>,
    #[prost(uint64, tag = "4")]
    pub created_at: u64,
}

/// Next tag: 3.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OneTimePreKeyProto {
    #[prost(uint32, tag = "1")]
    pub id: u32,
    #[prost(bytes = "vec", tag = "2")]
    pub public_key: Vec<u8>,
}

/// A signed ML-KEM-1024 prekey (PQXDH, PROFILE-pqxdh §3). Next tag: 4.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KemPreKeyProto {
    #[prost(uint32, tag = "1")]
    pub id: u32,
    /// The raw 1568-byte encapsulation key (no type byte).
    #[prost(bytes = "vec", tag = "2")]
    pub public_key: Vec<u8>,
    /// Ed25519 over `0x0A || public_key`.
    #[prost(bytes = "vec", tag = "3")]
    pub signature: Vec<u8>,
}

/// Next tag: 5.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PreKeyBundleProto {
    #[prost(bytes = "vec", tag = "1")]
    pub identity_key: Vec<u8>,
    #[prost(message, optional, tag = "2")]
    pub signed_prekey: Option<SignedPreKeyProto>,
    #[prost(message, optional, tag = "3")]
    pub one_time_prekey: Option<OneTimePreKeyProto>,
    #[prost(message, optional, tag = "4")]
    pub kem_prekey: Option<KemPreKeyProto>,
}

/// Next tag: 6.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PreKeyUploadProto {
    #[prost(bytes = "vec", tag = "1")]
    pub identity_key: Vec<u8>,
    #[prost(message, optional, tag = "2")]
    pub signed_prekey: Option<SignedPreKeyProto>,
    #[prost(message, repeated, tag = "3")]
    pub one_time_prekeys: Vec<OneTimePreKeyProto>,
    #[prost(message, optional, tag = "4")]
    pub last_resort_kem_prekey: Option<KemPreKeyProto>,
    #[prost(message, repeated, tag = "5")]
    pub one_time_kem_prekeys: Vec<KemPreKeyProto>,
}

// ---- Snapshots (PROTOCOL.md §10) -------------------------------------------------------------

/// Next tag: 4.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SkippedKeyProto {
    #[prost(bytes = "vec", tag = "1")]
    pub ratchet_key: Vec<u8>,
    #[prost(uint32, tag = "2")]
    pub counter: u32,
    #[prost(bytes = "vec", tag = "3")]
    pub message_key: Vec<u8>,
}

/// Next tag: 12.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RatchetProto {
    #[prost(bytes = "vec", tag = "1")]
    pub associated_data: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub root_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub sending_ratchet_private: Vec<u8>,
    #[prost(bytes = "vec", optional, tag = "4")]
    pub remote_ratchet_public: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "5")]
    pub sending_chain_key: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "6")]
    pub receiving_chain_key: Option<Vec<u8>>,
    #[prost(uint32, tag = "7")]
    pub ns: u32,
    #[prost(uint32, tag = "8")]
    pub nr: u32,
    #[prost(uint32, tag = "9")]
    pub pn: u32,
    #[prost(message, repeated, tag = "10")]
    pub skipped: Vec<SkippedKeyProto>,
    #[prost(bytes = "vec", tag = "11")]
    pub sending_ratchet_public: Vec<u8>,
}

/// Next tag: 5.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PendingPreKeyProto {
    #[prost(uint32, tag = "1")]
    pub signed_prekey_id: u32,
    #[prost(uint32, optional, tag = "2")]
    pub one_time_prekey_id: Option<u32>,
    /// PQXDH only.
    #[prost(uint32, optional, tag = "3")]
    pub kem_prekey_id: Option<u32>,
    /// PQXDH only: the 1568-byte ciphertext repeated in every initial message.
    #[prost(bytes = "vec", optional, tag = "4")]
    pub kem_ciphertext: Option<Vec<u8>>,
}

/// Next tag: 10.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionProto {
    #[prost(uint32, tag = "1")]
    pub handshake: u32,
    #[prost(bool, tag = "2")]
    pub initiator: bool,
    #[prost(bytes = "vec", tag = "3")]
    pub local_identity: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub remote_identity: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    pub base_key: Vec<u8>,
    #[prost(message, optional, tag = "6")]
    pub pending: Option<PendingPreKeyProto>,
    #[prost(message, optional, tag = "7")]
    pub ratchet: Option<RatchetProto>,
    #[prost(bytes = "vec", tag = "8")]
    pub local_identity_x25519: Vec<u8>,
    #[prost(bytes = "vec", tag = "9")]
    pub remote_identity_x25519: Vec<u8>,
}

/// Next tag: 6.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SignedPreKeySecretProto {
    #[prost(uint32, tag = "1")]
    pub id: u32,
    #[prost(bytes = "vec", tag = "2")]
    pub private_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub signature: Vec<u8>,
    #[prost(uint64, tag = "4")]
    pub created_at: u64,
    #[prost(uint64, optional, tag = "5")]
    pub retired_at: Option<u64>,
}

/// Next tag: 3.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OneTimePreKeySecretProto {
    #[prost(uint32, tag = "1")]
    pub id: u32,
    #[prost(bytes = "vec", tag = "2")]
    pub private_key: Vec<u8>,
}

/// A replay-record entry. Next tag: 4.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AcceptedBaseKeyProto {
    #[prost(uint32, tag = "1")]
    pub signed_prekey_id: u32,
    #[prost(bytes = "vec", tag = "2")]
    pub base_key: Vec<u8>,
    /// Set for a PQXDH accept with this last-resort KEM prekey (PROFILE-pqxdh §6.4).
    #[prost(uint32, optional, tag = "3")]
    pub kem_prekey_id: Option<u32>,
}

/// A KEM prekey secret: its FIPS 203 seed; for last-resort keys also the signature and times.
/// Next tag: 6.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KemPreKeySecretProto {
    #[prost(uint32, tag = "1")]
    pub id: u32,
    #[prost(bytes = "vec", tag = "2")]
    pub seed: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub signature: Vec<u8>,
    #[prost(uint64, tag = "4")]
    pub created_at: u64,
    #[prost(uint64, optional, tag = "5")]
    pub retired_at: Option<u64>,
}

/// Next tag: 10.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PreKeysProto {
    #[prost(message, repeated, tag = "1")]
    pub signed_prekeys: Vec<SignedPreKeySecretProto>,
    #[prost(message, repeated, tag = "2")]
    pub one_time_prekeys: Vec<OneTimePreKeySecretProto>,
    #[prost(uint32, tag = "3")]
    pub next_signed_prekey_id: u32,
    #[prost(uint32, tag = "4")]
    pub next_one_time_prekey_id: u32,
    #[prost(message, repeated, tag = "5")]
    pub accepted_base_keys: Vec<AcceptedBaseKeyProto>,
    #[prost(message, repeated, tag = "6")]
    pub last_resort_kem_prekeys: Vec<KemPreKeySecretProto>,
    #[prost(message, repeated, tag = "7")]
    pub one_time_kem_prekeys: Vec<KemPreKeySecretProto>,
    #[prost(uint32, tag = "8")]
    pub next_kem_prekey_id: u32,
    /// `HandshakePolicy::AllowClassical` when true (default: require PQXDH).
    #[prost(bool, tag = "9")]
    pub allow_classical: bool,
}

// Secret-bearing snapshot structs are wiped when dropped.

impl Drop for SkippedKeyProto {
    fn drop(&mut self) {
        self.message_key.zeroize();
    }
}

impl Drop for RatchetProto {
    fn drop(&mut self) {
        self.root_key.zeroize();
        self.sending_ratchet_private.zeroize();
        self.sending_chain_key.zeroize();
        self.receiving_chain_key.zeroize();
    }
}

impl Drop for SignedPreKeySecretProto {
    fn drop(&mut self) {
        self.private_key.zeroize();
    }
}

impl Drop for KemPreKeySecretProto {
    fn drop(&mut self) {
        self.seed.zeroize();
    }
}

impl Drop for OneTimePreKeySecretProto {
    fn drop(&mut self) {
        self.private_key.zeroize();
    }
}

// ---- Device lists (PROTOCOL.md §14) ----------------------------------------------------------

/// Next tag: 5.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeviceEntryProto {
    #[prost(uint32, tag = "1")]
    pub device_id: u32,
    #[prost(bytes = "vec", tag = "2")]
    pub device_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub account_signature: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub device_signature: Vec<u8>,
}

/// The signed body of a device list. Next tag: 6.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeviceListBodyProto {
    #[prost(bytes = "vec", tag = "1")]
    pub account_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub account_key: Vec<u8>,
    #[prost(uint64, tag = "3")]
    pub version: u64,
    #[prost(uint64, tag = "4")]
    pub timestamp: u64,
    #[prost(message, repeated, tag = "5")]
    pub entries: Vec<DeviceEntryProto>,
}

/// `0x41 ||` this. The signature covers `"confidant/device-list/v1" || body` (the exact bytes).
/// Next tag: 3.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SignedDeviceListProto {
    #[prost(bytes = "vec", tag = "1")]
    pub body: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub signature: Vec<u8>,
}

/// `0x42 ||` this: a new device's link request. Next tag: 4.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LinkRequestProto {
    #[prost(bytes = "vec", tag = "1")]
    pub account_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub device_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub device_signature: Vec<u8>,
}

// ---- Session book (PROTOCOL.md §15) ----------------------------------------------------------

/// The sessions with one remote device. Next tag: 6.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeviceSessionsProto {
    #[prost(bytes = "vec", tag = "1")]
    pub account_key: Vec<u8>,
    #[prost(uint32, tag = "2")]
    pub device_id: u32,
    #[prost(bytes = "vec", tag = "3")]
    pub device_key: Vec<u8>,
    /// A session snapshot (`0x31 || SessionProto`).
    #[prost(bytes = "vec", optional, tag = "4")]
    pub active: Option<Vec<u8>>,
    /// Session snapshots, most recently active first.
    #[prost(bytes = "vec", repeated, tag = "5")]
    pub archive: Vec<Vec<u8>>,
}

/// The device-list version a book last applied for an account. Next tag: 3.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AccountVersionProto {
    #[prost(bytes = "vec", tag = "1")]
    pub account_key: Vec<u8>,
    #[prost(uint64, tag = "2")]
    pub version: u64,
}

/// `0x33 ||` this. Next tag: 3.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionBookProto {
    #[prost(message, repeated, tag = "1")]
    pub devices: Vec<DeviceSessionsProto>,
    #[prost(message, repeated, tag = "2")]
    pub versions: Vec<AccountVersionProto>,
}

impl Drop for DeviceSessionsProto {
    fn drop(&mut self) {
        self.active.zeroize();
        for s in &mut self.archive {
            s.zeroize();
        }
    }
}

// ---- Groups (PROTOCOL.md §17) ----------------------------------------------------------------

/// A sender-key group message, before its 64-byte signature. Next tag: 5.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GroupMessageProto {
    #[prost(bytes = "vec", tag = "1")]
    pub group_id: Vec<u8>,
    #[prost(uint32, tag = "2")]
    pub key_id: u32,
    #[prost(uint32, tag = "3")]
    pub iteration: u32,
    #[prost(bytes = "vec", tag = "4")]
    pub ciphertext: Vec<u8>,
}

/// A sender-key distribution message (travels inside a pairwise session). Next tag: 9. Tags 6
/// and 7 are set together or not at all.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SenderKeyDistributionProto {
    #[prost(bytes = "vec", tag = "1")]
    pub group_id: Vec<u8>,
    #[prost(uint32, tag = "2")]
    pub key_id: u32,
    #[prost(uint32, tag = "3")]
    pub iteration: u32,
    #[prost(bytes = "vec", tag = "4")]
    pub chain_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    pub signing_key: Vec<u8>,
    #[prost(uint32, optional, tag = "6")]
    pub previous_key_id: Option<u32>,
    #[prost(uint32, optional, tag = "7")]
    pub previous_end: Option<u32>,
    #[prost(uint32, tag = "8")]
    pub lineage: u32,
}

impl Drop for SenderKeyDistributionProto {
    fn drop(&mut self) {
        self.chain_key.zeroize();
    }
}

/// A group member device. Next tag: 3.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MemberProto {
    #[prost(bytes = "vec", tag = "1")]
    pub account_key: Vec<u8>,
    #[prost(uint32, tag = "2")]
    pub device_id: u32,
}

/// This device's own sender key. Next tag: 9.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SendingKeyProto {
    #[prost(uint32, tag = "1")]
    pub key_id: u32,
    #[prost(uint32, tag = "2")]
    pub iteration: u32,
    #[prost(bytes = "vec", tag = "3")]
    pub chain_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub signing_seed: Vec<u8>,
    #[prost(uint64, tag = "5")]
    pub created_at: u64,
    #[prost(uint32, optional, tag = "6")]
    pub previous_key_id: Option<u32>,
    #[prost(uint32, optional, tag = "7")]
    pub previous_end: Option<u32>,
    #[prost(uint32, tag = "8")]
    pub lineage: u32,
}

impl Drop for SendingKeyProto {
    fn drop(&mut self) {
        self.chain_key.zeroize();
        self.signing_seed.zeroize();
    }
}

/// A received sender key. Next tag: 9. Tags 6 and 7 are set together or not at all.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReceivingKeyProto {
    #[prost(uint32, tag = "1")]
    pub key_id: u32,
    #[prost(uint32, tag = "2")]
    pub iteration: u32,
    #[prost(bytes = "vec", tag = "3")]
    pub chain_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub signing_key: Vec<u8>,
    #[prost(uint32, optional, tag = "5")]
    pub end: Option<u32>,
    #[prost(uint32, optional, tag = "6")]
    pub previous_key_id: Option<u32>,
    #[prost(uint32, optional, tag = "7")]
    pub previous_end: Option<u32>,
    #[prost(uint32, tag = "8")]
    pub lineage: u32,
}

impl Drop for ReceivingKeyProto {
    fn drop(&mut self) {
        self.chain_key.zeroize();
    }
}

/// Another member device's sender keys. Next tag: 6.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SenderStateProto {
    #[prost(bytes = "vec", tag = "1")]
    pub account_key: Vec<u8>,
    #[prost(uint32, tag = "2")]
    pub device_id: u32,
    /// Most recently installed first.
    #[prost(message, repeated, tag = "3")]
    pub keys: Vec<ReceivingKeyProto>,
    /// Skipped message keys, oldest first, as packed 40-byte records
    /// `u32be(key_id) || u32be(iteration) || message_key`.
    #[prost(bytes = "vec", tag = "4")]
    pub skipped: Vec<u8>,
    /// Retired keys, oldest first, as packed 36-byte records `u32be(key_id) || signing_key`.
    #[prost(bytes = "vec", tag = "5")]
    pub retired: Vec<u8>,
}

impl Drop for SenderStateProto {
    fn drop(&mut self) {
        self.skipped.zeroize();
    }
}

/// A group session snapshot. Next tag: 9.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GroupSessionProto {
    #[prost(bytes = "vec", tag = "1")]
    pub group_id: Vec<u8>,
    #[prost(message, optional, tag = "2")]
    pub own: Option<MemberProto>,
    #[prost(message, repeated, tag = "3")]
    pub members: Vec<MemberProto>,
    #[prost(uint32, optional, tag = "4")]
    pub rotate_after_messages: Option<u32>,
    #[prost(uint64, optional, tag = "5")]
    pub rotate_after_ms: Option<u64>,
    #[prost(message, optional, tag = "6")]
    pub sending: Option<SendingKeyProto>,
    #[prost(bool, tag = "7")]
    pub rotation_pending: bool,
    #[prost(message, repeated, tag = "8")]
    pub senders: Vec<SenderStateProto>,
}

// ---- Sealed sender (PROTOCOL.md §19) ---------------------------------------------------------

/// A server certificate's body, before the root's signature. Next tag: 3. Fixed-width,
/// always-present integers keep every certificate the same length (PROTOCOL.md §19.2).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerCertificateProto {
    #[prost(fixed32, optional, tag = "1")]
    pub key_id: Option<u32>,
    #[prost(bytes = "vec", tag = "2")]
    pub key: Vec<u8>,
}

/// A sender certificate's body, before the server key's signature. Next tag: 6. Fixed-width,
/// always-present integers keep every certificate the same length, so a sealed envelope's
/// size does not depend on who sent it (PROTOCOL.md §19.2).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SenderCertificateProto {
    #[prost(bytes = "vec", tag = "1")]
    pub account_key: Vec<u8>,
    #[prost(fixed32, optional, tag = "2")]
    pub device_id: Option<u32>,
    #[prost(bytes = "vec", tag = "3")]
    pub identity_key: Vec<u8>,
    #[prost(fixed64, optional, tag = "4")]
    pub expires: Option<u64>,
    #[prost(bytes = "vec", tag = "5")]
    pub server_certificate: Vec<u8>,
}

/// An envelope (PROTOCOL.md §19.1). Next tag: 10. Tags 4 and 5 are set exactly for unsealed
/// kinds; 8 and 9 only for sealed ones.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EnvelopeProto {
    #[prost(uint32, tag = "1")]
    pub kind: u32,
    #[prost(bytes = "vec", tag = "2")]
    pub recipient_account: Vec<u8>,
    #[prost(uint32, tag = "3")]
    pub recipient_device: u32,
    #[prost(bytes = "vec", optional, tag = "4")]
    pub sender_account: Option<Vec<u8>>,
    #[prost(uint32, optional, tag = "5")]
    pub sender_device: Option<u32>,
    /// PreKey/Ratchet/Group: the message; FanOut: the key entry; Sealed: `C || AT`.
    #[prost(bytes = "vec", tag = "6")]
    pub message: Vec<u8>,
    /// FanOut: the shared body; Sealed: the sealed body.
    #[prost(bytes = "vec", tag = "7")]
    pub body: Vec<u8>,
    /// Sealed: the ephemeral key `E`.
    #[prost(bytes = "vec", tag = "8")]
    pub ephemeral: Vec<u8>,
    /// Sealed: the sealed key entry (may be empty).
    #[prost(bytes = "vec", tag = "9")]
    pub entry: Vec<u8>,
}

/// The plaintext of a sealed body, before padding (PROTOCOL.md §19.3). Next tag: 4.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SealedContentProto {
    #[prost(bytes = "vec", tag = "1")]
    pub sender_certificate: Vec<u8>,
    #[prost(uint32, tag = "2")]
    pub kind: u32,
    #[prost(bytes = "vec", tag = "3")]
    pub content: Vec<u8>,
}

/// One recipient device of a multi-recipient upload. Next tag: 4.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UploadDeviceProto {
    #[prost(uint32, tag = "1")]
    pub device: u32,
    /// Sealed: `C || AT`; fan-out: the key entry.
    #[prost(bytes = "vec", tag = "2")]
    pub message: Vec<u8>,
    /// Sealed: the sealed key entry (may be empty).
    #[prost(bytes = "vec", tag = "3")]
    pub entry: Vec<u8>,
}

/// The recipient devices of one account. Next tag: 3.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UploadAccountProto {
    #[prost(bytes = "vec", tag = "1")]
    pub account: Vec<u8>,
    #[prost(message, repeated, tag = "2")]
    pub devices: Vec<UploadDeviceProto>,
}

/// A multi-recipient upload (PROTOCOL.md §19.4): sealed (`0x72`) or fan-out (`0x73`). Next
/// tag: 6. Tag 4 (the sender) is set exactly for fan-out uploads, tag 1 exactly for sealed.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UploadProto {
    #[prost(bytes = "vec", tag = "1")]
    pub ephemeral: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub body: Vec<u8>,
    #[prost(message, repeated, tag = "3")]
    pub accounts: Vec<UploadAccountProto>,
    #[prost(bytes = "vec", optional, tag = "4")]
    pub sender_account: Option<Vec<u8>>,
    #[prost(uint32, optional, tag = "5")]
    pub sender_device: Option<u32>,
}

impl Drop for SealedContentProto {
    fn drop(&mut self) {
        self.content.zeroize();
    }
}
