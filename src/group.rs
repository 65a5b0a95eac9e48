//! Sender-key group encryption (PROTOCOL.md §17): each member device sends with its own sender
//! key (a hash chain plus an Ed25519 signing key), distributed once to the other member devices
//! through their pairwise sessions; a group message is then one AES-256-GCM encryption and one
//! signature, whatever the group's size.
//!
//! Membership is the application's decision: [`GroupSession::set_members`] takes the member
//! devices and reports what must be sent to whom. Removing a device makes this device's next
//! [`GroupSession::encrypt`] use a fresh sender key, distributed to the remaining devices only.
//!
//! ```
//! use confidant::book::Address;
//! use confidant::group::{GroupId, GroupMessage, GroupSession, RotationPolicy, SenderKeyDistribution};
//! use confidant::{IdentityKeyPair, Timestamp};
//! # use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};
//! # let mut rng = ChaCha20Rng::seed_from_u64(7);
//! let (alice, bob) = (IdentityKeyPair::generate(&mut rng), IdentityKeyPair::generate(&mut rng));
//! let a = Address { account: alice.public(), device: 1 };
//! let b = Address { account: bob.public(), device: 1 };
//! let id = GroupId::random(&mut rng);
//! let mut at_a = GroupSession::new(id, a, &[a, b], RotationPolicy::default())?;
//! let mut at_b = GroupSession::new(id, b, &[a, b], RotationPolicy::default())?;
//!
//! let now = Timestamp(1_700_000_000_000);
//! let sent = at_a.encrypt(&mut rng, now, b"hello group")?;
//! // The first send distributes Alice's sender key: deliver it to each listed device through
//! // its pairwise session (for example `SessionBook::fan_out_to`), then the group message.
//! let distribution = sent.distribution.expect("first send distributes");
//! assert_eq!(distribution.recipients, vec![b]);
//!
//! at_b.receive_distribution(&a, &SenderKeyDistribution::from_bytes(&distribution.message)?)?;
//! let plaintext = at_b.decrypt(&a, &GroupMessage::from_bytes(&sent.message)?)?;
//! assert_eq!(&plaintext[..], b"hello group");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::fmt;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRng;
use zeroize::{Zeroize, Zeroizing};

use crate::aead;
use crate::book::Address;
use crate::codec::{self, DISTRIBUTION_V1, GROUP_MESSAGE_V1, GROUP_SESSION_V1, RepeatedLimit};
pub use crate::error::GroupError;
use crate::error::{DecodeError, EncryptError, RestoreError};
use crate::kdf::{ChainKey, MessageKey};
use crate::keys::IdentityKey;
use crate::limits::{
    MAX_DISTRIBUTION_BYTES, MAX_GROUP_DEVICES, MAX_GROUP_MESSAGE_BYTES, MAX_GROUP_SNAPSHOT_BYTES,
    MAX_PLAINTEXT, MAX_RETIRED_SENDER_KEYS, MAX_SENDER_KEY_STATES, MAX_SENDER_RECORDS, MAX_SKIP,
    MAX_STORED_SKIPPED,
};
use crate::padding;
use crate::proto::{
    GroupMessageProto, GroupSessionProto, MemberProto, ReceivingKeyProto,
    SenderKeyDistributionProto, SenderStateProto, SendingKeyProto,
};
use crate::skipped::SkippedKeys;
use crate::time::Timestamp;

/// Length of a [`GroupId`].
pub const GROUP_ID_LEN: usize = 16;
/// Length of the Ed25519 signature that ends every group message.
pub const GROUP_SIGNATURE_LEN: usize = 64;
/// Length of one packed skipped-key record in a snapshot (PROTOCOL.md §17.7).
const SKIPPED_RECORD_LEN: usize = 40;
/// Length of one packed retired-key record in a snapshot (PROTOCOL.md §17.7).
const RETIRED_RECORD_LEN: usize = 36;

/// A group's identifier: 16 bytes chosen by the group's creator (random, or derived by the
/// application from its own group id). Public: the server sees it on every group message.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId([u8; GROUP_ID_LEN]);

impl GroupId {
    /// A fresh random id from 16 bytes of `rng`.
    pub fn random(rng: &mut (impl CryptoRng + ?Sized)) -> Self {
        let mut id = [0u8; GROUP_ID_LEN];
        rng.fill_bytes(&mut id);
        Self(id)
    }

    /// The id with these bytes.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; GROUP_ID_LEN]) -> Self {
        Self(bytes)
    }

    /// The id's bytes.
    #[must_use]
    pub const fn to_bytes(self) -> [u8; GROUP_ID_LEN] {
        self.0
    }

    fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::array(bytes, "group_id").map(Self)
    }
}

impl fmt::Debug for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupId(")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// When this device replaces its own sender key besides membership removals
/// (PROTOCOL.md §17.6). A rotation costs one distribution to every other member device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    /// Replace the key after this many messages (`None`: no count limit). A key is always
    /// replaced before its iteration counter would overflow.
    pub max_messages: Option<u32>,
    /// Replace the key once it is this many milliseconds old, by the caller-supplied time
    /// (`None`: no age limit).
    pub max_age_ms: Option<u64>,
}

impl RotationPolicy {
    /// Rotate only when a member device is removed or [`GroupSession::rotate`] is called
    /// (the Signal and WhatsApp behaviour).
    #[must_use]
    pub const fn on_removal_only() -> Self {
        Self {
            max_messages: None,
            max_age_ms: None,
        }
    }
}

impl Default for RotationPolicy {
    /// After 10 000 messages or 7 days, whichever comes first (PROTOCOL.md §17.6).
    fn default() -> Self {
        Self {
            max_messages: Some(10_000),
            max_age_ms: Some(7 * 24 * 60 * 60 * 1000),
        }
    }
}

/// A sender-key distribution to deliver, through each recipient's pairwise session, before (or
/// with) the group messages that use it. The message carries a chain key: it is wiped on drop.
pub struct Distribution {
    /// The member devices that must receive it.
    pub recipients: Vec<Address>,
    /// The encoded [`SenderKeyDistribution`] (`0x62 || …`), the pairwise plaintext.
    pub message: Zeroizing<Vec<u8>>,
    /// Whether it goes to every other member (a new key), rather than to some (newcomers, a
    /// resend): sealed, only the former takes a decoy (PROTOCOL.md §19.3).
    whole_group: bool,
}

impl Distribution {
    /// Whether it goes to every other member device (a new key) rather than to some of them.
    #[must_use]
    pub fn is_whole_group(&self) -> bool {
        self.whole_group
    }
}

impl fmt::Debug for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Distribution")
            .field("recipients", &self.recipients)
            .field("message", &"<redacted>")
            .finish()
    }
}

/// The result of [`GroupSession::encrypt`].
#[derive(Debug)]
pub struct GroupSend {
    /// The group message, identical for every member device (`0x61 || … || signature`).
    pub message: Vec<u8>,
    /// Set when this send started a new sender key and there are other member devices:
    /// deliver it to its recipients first.
    pub distribution: Option<Distribution>,
}

/// The result of [`GroupSession::set_members`].
#[derive(Debug)]
pub struct MembershipUpdate {
    /// Devices that joined.
    pub added: Vec<Address>,
    /// Devices that left: their sender keys are retired (never accepted or installed again),
    /// and this device's next send uses a
    /// fresh sender key that they never receive.
    pub removed: Vec<Address>,
    /// This device's current sender key at its current iteration, for the added devices only
    /// (they cannot read anything sent before). `None` when there was nobody to add, when this
    /// device has not sent yet, or when a rotation is pending (the next send distributes the
    /// new key to every member).
    pub distribution: Option<Distribution>,
}

/// Whether [`GroupSession::receive_distribution`] installed a new sender key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// A new sender key: retry the messages held back with
    /// [`GroupError::UnknownSenderKey`].
    New,
    /// This sender key was already installed, was retired, or was retired at once (a stale
    /// key beyond the [`MAX_SENDER_KEY_STATES`] window). Nothing is rewound, so a replayed
    /// distribution cannot make a decrypted message decrypt again; the previous-key end it
    /// announces is still applied, so persist the session after any successful call.
    Known,
    /// This sender key was installed, and the distribution is more than `MAX_SKIP` iterations
    /// ahead of it: the key moved forward to the distributed iteration, so a receiver that
    /// fell too far behind recovers. Messages before that iteration not yet decrypted are
    /// lost (they were out of reach already).
    Advanced,
}

/// A parsed group message (PROTOCOL.md §17.3): routing data readable before any cryptography.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupMessage {
    /// The exact bytes received; the signature covers all but the last 64.
    bytes: Vec<u8>,
    group_id: GroupId,
    key_id: u32,
    iteration: u32,
    ciphertext: Vec<u8>,
}

impl GroupMessage {
    /// Parses a group message (leading byte `0x61`).
    ///
    /// # Errors
    /// [`DecodeError`] on malformed input.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_GROUP_MESSAGE_BYTES {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                limit: MAX_GROUP_MESSAGE_BYTES,
            });
        }
        let (&first, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if first != GROUP_MESSAGE_V1 {
            return Err(DecodeError::UnsupportedVersion(first));
        }
        let body_len = rest
            .len()
            .checked_sub(GROUP_SIGNATURE_LEN)
            .ok_or(DecodeError::InvalidField("signature"))?;
        let body = rest.get(..body_len).ok_or(DecodeError::Protobuf)?;
        let proto: GroupMessageProto = codec::decode_body(body, &[])?;
        if proto.ciphertext.len() < crate::limits::MIN_CIPHERTEXT {
            return Err(DecodeError::InvalidField("ciphertext"));
        }
        Ok(Self {
            bytes: bytes.to_vec(),
            group_id: GroupId::parse(&proto.group_id)?,
            key_id: proto.key_id,
            iteration: proto.iteration,
            ciphertext: proto.ciphertext,
        })
    }

    /// The exact bytes parsed.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        self.bytes.clone()
    }

    /// The group the message belongs to (route it to that [`GroupSession`]).
    #[must_use]
    pub fn group_id(&self) -> GroupId {
        self.group_id
    }

    /// The sender key's id.
    #[must_use]
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The message's position in its sender key's chain.
    #[must_use]
    pub fn iteration(&self) -> u32 {
        self.iteration
    }

    /// The signed part and the signature.
    fn split(&self) -> Option<(&[u8], [u8; GROUP_SIGNATURE_LEN])> {
        let at = self.bytes.len().checked_sub(GROUP_SIGNATURE_LEN)?;
        let (signed, signature) = self.bytes.split_at_checked(at)?;
        Some((signed, signature.try_into().ok()?))
    }
}

impl fmt::Debug for GroupMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupMessage")
            .field("group_id", &self.group_id)
            .field("key_id", &self.key_id)
            .field("iteration", &self.iteration)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// A parsed sender-key distribution message (PROTOCOL.md §17.4). It carries a chain key: not
/// `Clone`, wiped on drop, redacted `Debug`.
pub struct SenderKeyDistribution {
    group_id: GroupId,
    key_id: u32,
    iteration: u32,
    chain: ChainKey,
    signing_key: VerifyingKey,
    previous: Option<PreviousKey>,
    lineage: u32,
}

/// The end of the sender's previous key, announced with its successor (PROTOCOL.md §17.4):
/// the previous key's messages all have iterations below `end`, so a receiver refuses any
/// later iteration under it (a stolen old key cannot be used to forge after the rotation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreviousKey {
    /// The previous key's id.
    pub key_id: u32,
    /// One past the last iteration sent under it.
    pub end: u32,
}

impl SenderKeyDistribution {
    /// Parses a distribution (leading byte `0x62`), the plaintext of a pairwise message.
    ///
    /// # Errors
    /// [`DecodeError`] on malformed input, including a signing key that is not a valid
    /// Ed25519 point or has small order.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let proto: SenderKeyDistributionProto =
            codec::decode(bytes, DISTRIBUTION_V1, MAX_DISTRIBUTION_BYTES)?;
        let chain = ChainKey::from_bytes(codec::array(&proto.chain_key, "chain_key")?);
        let previous = previous_key(proto.key_id, proto.previous_key_id, proto.previous_end)
            .ok_or(DecodeError::InvalidField("previous key"))?;
        Ok(Self {
            group_id: GroupId::parse(&proto.group_id)?,
            key_id: proto.key_id,
            iteration: proto.iteration,
            chain,
            signing_key: parse_verifying_key(&proto.signing_key)
                .ok_or(DecodeError::InvalidField("signing_key"))?,
            previous,
            lineage: proto.lineage,
        })
    }

    /// The encoding (`0x62 || protobuf`); it contains the chain key.
    #[must_use]
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        encode_distribution(
            self.group_id,
            self.key_id,
            self.iteration,
            &self.chain,
            &self.signing_key,
            self.previous,
            self.lineage,
        )
    }

    /// The group it belongs to.
    #[must_use]
    pub fn group_id(&self) -> GroupId {
        self.group_id
    }

    /// The sender key's id.
    #[must_use]
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The first iteration the recipient can decrypt.
    #[must_use]
    pub fn iteration(&self) -> u32 {
        self.iteration
    }

    /// The sender key's public signing key.
    #[must_use]
    pub fn signing_key(&self) -> [u8; 32] {
        self.signing_key.to_bytes()
    }

    /// The end of the sender's previous key, if this key replaced one.
    #[must_use]
    pub fn previous_key(&self) -> Option<PreviousKey> {
        self.previous
    }

    /// The sender's key lineage: the id of the first key of the sender's group session. Keys
    /// of one lineage have consecutive ids; a new lineage means the sender started over.
    #[must_use]
    pub fn lineage(&self) -> u32 {
        self.lineage
    }
}

impl fmt::Debug for SenderKeyDistribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SenderKeyDistribution")
            .field("group_id", &self.group_id)
            .field("key_id", &self.key_id)
            .field("iteration", &self.iteration)
            .field("chain_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The previous key named by a distribution or snapshot (fields set together or not at all,
/// never the key itself): `Some(None)` when absent, `None` when malformed.
fn previous_key(key_id: u32, id: Option<u32>, end: Option<u32>) -> Option<Option<PreviousKey>> {
    match (id, end) {
        (None, None) => Some(None),
        (Some(id), Some(end)) if id != key_id => Some(Some(PreviousKey { key_id: id, end })),
        _ => None,
    }
}

/// A canonically encoded, valid, non-small-order Ed25519 public key.
fn parse_verifying_key(bytes: &[u8]) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = bytes.try_into().ok()?;
    let key = VerifyingKey::from_bytes(&bytes).ok()?;
    (!key.is_weak() && key.to_edwards().compress().to_bytes() == bytes).then_some(key)
}

pub(crate) fn encode_distribution(
    group_id: GroupId,
    key_id: u32,
    iteration: u32,
    chain: &ChainKey,
    signing_key: &VerifyingKey,
    previous: Option<PreviousKey>,
    lineage: u32,
) -> Zeroizing<Vec<u8>> {
    codec::encode_secret(
        DISTRIBUTION_V1,
        &SenderKeyDistributionProto {
            group_id: group_id.0.to_vec(),
            key_id,
            iteration,
            chain_key: chain.as_bytes().to_vec(),
            signing_key: signing_key.to_bytes().to_vec(),
            previous_key_id: previous.map(|p| p.key_id),
            previous_end: previous.map(|p| p.end),
            lineage,
        },
    )
}

/// Length of a group message's AEAD associated data.
const AAD_LEN: usize = GROUP_ID_LEN + 4 + 4 + 32 + 4;

/// The AEAD associated data of a group message (PROTOCOL.md §17.3): `group_id ||
/// u32be(key_id) || u32be(iteration) || sender account key || u32be(sender device)`. Binding
/// the sender means a member that re-distributes another member's key as its own cannot pass
/// that member's messages off as its own.
fn message_aad(group_id: GroupId, key_id: u32, iteration: u32, sender: &Address) -> [u8; AAD_LEN] {
    let mut aad = [0u8; AAD_LEN];
    let parts: [&[u8]; 5] = [
        &group_id.0,
        &key_id.to_be_bytes(),
        &iteration.to_be_bytes(),
        &sender.account.to_bytes(),
        &sender.device.to_be_bytes(),
    ];
    let mut rest = &mut aad[..];
    for part in parts {
        let (head, tail) = rest.split_at_mut(part.len());
        head.copy_from_slice(part);
        rest = tail;
    }
    aad
}

/// Seals one group message at `iteration` with message key `mk` and signs it
/// (PROTOCOL.md §17.3): `0x61 || GroupMessageProto || Ed25519(signing, 0x61 || proto)`, the
/// ciphertext sealing the padded plaintext (PROTOCOL.md §18).
pub(crate) fn seal_message(
    group_id: GroupId,
    sender: &Address,
    key_id: u32,
    iteration: u32,
    mk: &MessageKey,
    signing: &SigningKey,
    plaintext: &[u8],
) -> Vec<u8> {
    let key = mk.sender_key_aead_key();
    let padded = padding::pad(plaintext);
    let proto = GroupMessageProto {
        group_id: group_id.0.to_vec(),
        key_id,
        iteration,
        ciphertext: aead::seal(
            &key,
            &message_aad(group_id, key_id, iteration, sender),
            &padded,
        ),
    };
    let mut out = Vec::with_capacity(1 + prost::Message::encoded_len(&proto) + GROUP_SIGNATURE_LEN);
    out.push(GROUP_MESSAGE_V1);
    prost::Message::encode_raw(&proto, &mut out);
    let signature = signing.sign(&out);
    out.extend_from_slice(&signature.to_bytes());
    out
}

/// AES-256-GCM open, then padding removal; either failure is `Unauthenticated`.
fn open_padded(
    mk: &MessageKey,
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, GroupError> {
    let padded = aead::open(&mk.sender_key_aead_key(), aad, ciphertext)
        .ok_or(GroupError::Unauthenticated)?;
    padding::unpad(&padded).ok_or(GroupError::Unauthenticated)
}

/// This device's own sender key.
struct SendingKey {
    key_id: u32,
    /// The iteration of the next message; `chain` is the chain key for it.
    iteration: u32,
    chain: ChainKey,
    signing: SigningKey,
    created_at: Timestamp,
    /// The key this one replaced, and where it ended.
    previous: Option<PreviousKey>,
    /// The id of this session's first key.
    lineage: u32,
}

impl SendingKey {
    fn distribution(&self, group_id: GroupId) -> Zeroizing<Vec<u8>> {
        encode_distribution(
            group_id,
            self.key_id,
            self.iteration,
            &self.chain,
            &self.signing.verifying_key(),
            self.previous,
            self.lineage,
        )
    }
}

/// A sender key received from another member device.
struct ReceivingKey {
    key_id: u32,
    /// The next iteration expected in order; `chain` is the chain key for it.
    iteration: u32,
    chain: ChainKey,
    verifying: VerifyingKey,
    /// Set once the sender announced this key's successor: no iteration at or beyond it is
    /// accepted.
    end: Option<u32>,
    /// The key this one replaced, as its distribution announced.
    previous: Option<PreviousKey>,
    /// Its lineage (PROTOCOL.md §17.4).
    lineage: u32,
}

/// The sender keys of one other member device.
#[derive(Default)]
struct SenderState {
    /// Most recently installed first; at most [`MAX_SENDER_KEY_STATES`].
    keys: VecDeque<ReceivingKey>,
    /// Skipped message keys by (key id, iteration), oldest insertion evicted first.
    skipped: SkippedKeys<u32>,
    /// Keys dropped from `keys` (id, signing key), most recent last, at most
    /// [`MAX_RETIRED_SENDER_KEYS`]: a retired key is never installed again, so its messages
    /// cannot decrypt twice.
    retired: VecDeque<(u32, [u8; 32])>,
}

impl SenderState {
    fn retire(&mut self, key: &ReceivingKey) {
        self.skipped.remove_chain(&key.key_id);
        self.retired
            .push_back((key.key_id, key.verifying.to_bytes()));
        while self.retired.len() > MAX_RETIRED_SENDER_KEYS {
            self.retired.pop_front();
        }
    }

    /// Applies the end of the previous key announced by a distribution.
    fn end_previous(&mut self, previous: Option<PreviousKey>) {
        if let Some(p) = previous
            && let Some(k) = self.keys.iter_mut().find(|k| k.key_id == p.key_id)
        {
            k.end = Some(k.end.map_or(p.end, |e| e.min(p.end)));
        }
    }

    /// Installs a new key (PROTOCOL.md §17.4): it takes the end its successor announced, if
    /// that arrived first; then, beyond [`MAX_SENDER_KEY_STATES`], superseded keys (those with
    /// an end) are dropped first, oldest installed first, so the sender's current key stays
    /// even when distributions arrive out of order.
    fn install(&mut self, mut key: ReceivingKey) -> bool {
        if self.keys.front().is_some_and(|k| k.lineage != key.lineage) {
            // The sender started over (a new lineage): keys of other lineages can only have
            // messages in flight, so they end within MAX_SKIP of where they are.
            for k in self
                .keys
                .iter_mut()
                .filter(|k| k.end.is_none() && k.lineage != key.lineage)
            {
                k.end = Some(k.iteration.saturating_add(MAX_SKIP));
            }
        }
        let key_id = key.key_id;
        let announced = self
            .keys
            .iter()
            .filter_map(|k| k.previous)
            .filter(|p| p.key_id == key.key_id)
            .map(|p| p.end)
            .min();
        if let Some(end) = announced {
            key.end = Some(key.end.map_or(end, |e| e.min(end)));
        }
        let previous = key.previous;
        self.keys.push_front(key);
        self.end_previous(previous);
        while self.keys.len() > MAX_SENDER_KEY_STATES {
            let at = self.eviction_candidate();
            if let Some(old) = self.keys.remove(at) {
                self.retire(&old);
            }
        }
        self.keys.iter().any(|k| k.key_id == key_id)
    }

    /// The key to drop when over [`MAX_SENDER_KEY_STATES`] (PROTOCOL.md §17.4): the oldest
    /// installed superseded key (one with an end); if none, the oldest installed key other than
    /// the newest of the most recently installed key's lineage (within a lineage, key ids
    /// follow each other from the lineage id).
    fn eviction_candidate(&self) -> usize {
        if let Some(at) = self.keys.iter().rposition(|k| k.end.is_some()) {
            return at;
        }
        let lineage = self.keys.front().map_or(0, |k| k.lineage);
        let newest = self
            .keys
            .iter()
            .enumerate()
            .filter(|(_, k)| k.lineage == lineage)
            .max_by_key(|(_, k)| k.key_id.wrapping_sub(lineage))
            .map_or(0, |(i, _)| i);
        (0..self.keys.len())
            .rev()
            .find(|&i| i != newest)
            .unwrap_or(0)
    }

    /// Retires every key (the sender left the group); the retired records stay.
    fn retire_all(&mut self) {
        while let Some(key) = self.keys.pop_back() {
            self.retire(&key);
        }
        self.skipped = SkippedKeys::default();
    }
}

/// One device's state in one group (PROTOCOL.md §17): its own sender key, the sender keys of
/// the other member devices, and the member list. A value the caller persists with
/// [`GroupSession::snapshot`]: **persist it after every [`encrypt`](Self::encrypt) before
/// sending** (or a crash could reuse a message key), and after every call that changed it
/// (a successful `decrypt` or `receive_distribution`, `set_members`, `rotate`), or a crash could undo a removal's rotation or let a message decrypt twice. On
/// start-up, calling `set_members` with the application's current member list is a cheap
/// safety net.
pub struct GroupSession {
    group_id: GroupId,
    own: Address,
    members: BTreeSet<Address>,
    policy: RotationPolicy,
    sending: Option<SendingKey>,
    rotation_pending: bool,
    senders: BTreeMap<Address, SenderState>,
}

impl GroupSession {
    /// A group session for device `own` with the given member devices (`own` among them). No
    /// key is created until the first [`encrypt`](Self::encrypt).
    ///
    /// # Errors
    /// [`GroupError::OwnDeviceNotListed`], [`GroupError::TooManyMembers`].
    pub fn new(
        group_id: GroupId,
        own: Address,
        members: &[Address],
        policy: RotationPolicy,
    ) -> Result<Self, GroupError> {
        let members = check_members(&own, members)?;
        Ok(Self {
            group_id,
            own,
            members,
            policy,
            sending: None,
            rotation_pending: false,
            senders: BTreeMap::new(),
        })
    }

    /// The group's id.
    #[must_use]
    pub fn group_id(&self) -> GroupId {
        self.group_id
    }

    /// This device's address.
    #[must_use]
    pub fn own_address(&self) -> Address {
        self.own
    }

    /// The current member devices, this one included, in address order.
    pub fn members(&self) -> impl Iterator<Item = &Address> + '_ {
        self.members.iter()
    }

    /// Whether `device` is a current member (this device included).
    #[must_use]
    pub fn is_member(&self, device: &Address) -> bool {
        self.members.contains(device)
    }

    /// Whether a sender key of member device `sender` is installed (its messages can be read).
    #[must_use]
    pub fn has_sender_key(&self, sender: &Address) -> bool {
        self.senders.get(sender).is_some_and(|s| !s.keys.is_empty())
    }

    /// The rotation policy.
    #[must_use]
    pub fn policy(&self) -> RotationPolicy {
        self.policy
    }

    /// Replaces the rotation policy; it applies from the next send.
    pub fn set_policy(&mut self, policy: RotationPolicy) {
        self.policy = policy;
    }

    /// Replaces the member list (PROTOCOL.md §17.6). Removed devices' sender keys are retired
    /// at once (nothing they send is accepted any more) and this device's next send starts a
    /// new sender key distributed only to the remaining devices. Added devices receive this
    /// device's current sender key at its current iteration, so they read nothing sent before.
    ///
    /// Derive the list from the member accounts' **verified** device lists: a device that an
    /// account removes must leave every group too.
    ///
    /// # Errors
    /// [`GroupError::OwnDeviceNotListed`] (this device left: drop the session),
    /// [`GroupError::TooManyMembers`]. The session is unchanged.
    pub fn set_members(&mut self, members: &[Address]) -> Result<MembershipUpdate, GroupError> {
        let members = check_members(&self.own, members)?;
        let added: Vec<Address> = members.difference(&self.members).copied().collect();
        let removed: Vec<Address> = self.members.difference(&members).copied().collect();
        for device in &removed {
            // Its keys are retired, not forgotten: a delayed distribution of one of them can
            // never be installed again, even if the device rejoins.
            if let Some(state) = self.senders.get_mut(device) {
                state.retire_all();
            }
        }
        while self.senders.len() > MAX_SENDER_RECORDS {
            let Some(former) = self.senders.keys().find(|a| !members.contains(a)).copied() else {
                break;
            };
            self.senders.remove(&former);
        }
        if !removed.is_empty() {
            self.rotation_pending = true;
        }
        self.members = members;
        let distribution = match (&self.sending, self.rotation_pending || added.is_empty()) {
            (Some(key), false) => Some(Distribution {
                recipients: added.clone(),
                message: key.distribution(self.group_id),
                whole_group: false,
            }),
            _ => None,
        };
        Ok(MembershipUpdate {
            added,
            removed,
            distribution,
        })
    }

    /// Makes the next send start a new sender key (distributed to every other member device),
    /// for example after a suspected compromise.
    pub fn rotate(&mut self) {
        self.rotation_pending = true;
    }

    /// Whether the next [`encrypt`](Self::encrypt) at time `now` starts a new sender key.
    #[must_use]
    pub fn rotation_due(&self, now: Timestamp) -> bool {
        let Some(key) = &self.sending else {
            return true;
        };
        self.rotation_pending
            || key.iteration == u32::MAX
            || self.policy.max_messages.is_some_and(|m| key.iteration >= m)
            || self.policy.max_age_ms.is_some_and(|age| {
                // A key stamped more than `age` in the future (a clock glitch) also rotates.
                now.0.saturating_sub(key.created_at.0) >= age
                    || key.created_at.0.saturating_sub(now.0) > age
            })
    }

    /// This device's current sender key at its current iteration, for the given member devices
    /// (other devices are left out): to answer a member that lost its state, fell more than
    /// `MAX_SKIP` messages behind, or never received the key. `None` before the first send,
    /// when a rotation is due at `now` (the next send distributes a new key to every member),
    /// or when no listed device is another current member.
    #[must_use]
    pub fn distribution_for(&self, now: Timestamp, recipients: &[Address]) -> Option<Distribution> {
        if self.rotation_due(now) {
            return None;
        }
        let key = self.sending.as_ref()?;
        let recipients: Vec<Address> = recipients
            .iter()
            .filter(|a| **a != self.own && self.members.contains(a))
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        (!recipients.is_empty()).then(|| Distribution {
            recipients,
            message: key.distribution(self.group_id),
            whole_group: false,
        })
    }

    /// Encrypts `plaintext` for every member device (PROTOCOL.md §17.3). Starts a new sender
    /// key first when [`rotation_due`](Self::rotation_due): 32 bytes of `rng` for the chain
    /// key, 32 for the signing key and, for the first key only, 4 for its id. Deliver
    /// [`GroupSend::distribution`] before the message.
    ///
    /// **Persist the session before sending.**
    ///
    /// # Errors
    /// [`EncryptError::TooLarge`] (nothing changed).
    pub fn encrypt(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        now: Timestamp,
        plaintext: &[u8],
    ) -> Result<GroupSend, EncryptError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(EncryptError::TooLarge {
                len: plaintext.len(),
                limit: MAX_PLAINTEXT,
            });
        }
        let mut distribution = None;
        if self.rotation_due(now) {
            let key = self.new_sending_key(rng, now);
            let recipients: Vec<Address> = self
                .members
                .iter()
                .filter(|a| **a != self.own)
                .copied()
                .collect();
            if !recipients.is_empty() {
                distribution = Some(Distribution {
                    recipients,
                    message: key.distribution(self.group_id),
                    whole_group: true,
                });
            }
            self.sending = Some(key);
            self.rotation_pending = false;
        }
        let (group_id, own) = (self.group_id, self.own);
        let key = self.sending.as_mut().ok_or(EncryptError::NotReady)?;
        let (mk, next) = key.chain.step();
        let message = seal_message(
            group_id,
            &own,
            key.key_id,
            key.iteration,
            &mk,
            &key.signing,
            plaintext,
        );
        key.chain = next;
        // Cannot overflow: `rotation_due` replaces a key at `u32::MAX`.
        key.iteration = key.iteration.saturating_add(1);
        Ok(GroupSend {
            message,
            distribution,
        })
    }

    /// A fresh sender key. Its id follows the previous one (so ids differ among the keys a
    /// receiver keeps); the first id is random.
    fn new_sending_key(&self, rng: &mut (impl CryptoRng + ?Sized), now: Timestamp) -> SendingKey {
        let mut chain = [0u8; 32];
        rng.fill_bytes(&mut chain);
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        let key_id = match &self.sending {
            Some(previous) => previous.key_id.wrapping_add(1),
            None => {
                let mut id = [0u8; 4];
                rng.fill_bytes(&mut id);
                u32::from_be_bytes(id)
            }
        };
        let key = SendingKey {
            key_id,
            iteration: 0,
            chain: ChainKey::from_bytes(chain),
            signing: SigningKey::from_bytes(&seed),
            created_at: now,
            previous: self.sending.as_ref().map(|p| PreviousKey {
                key_id: p.key_id,
                end: p.iteration,
            }),
            lineage: self.sending.as_ref().map_or(key_id, |p| p.lineage),
        };
        chain.zeroize();
        key
    }

    /// Installs a sender key received from member device `sender` through its pairwise session
    /// (PROTOCOL.md §17.4). `sender` must be the device whose session decrypted the
    /// distribution (for example [`SessionBook::receive`](crate::book::SessionBook::receive)'s
    /// sender), never a claim from the message. A key already installed is never rewound (it
    /// moves forward only when the distribution is out of its reach: [`KeyStatus::Advanced`]),
    /// and a retired key is never installed again. Keeps at most [`MAX_SENDER_KEY_STATES`] keys
    /// per sender, superseded keys going first (PROTOCOL.md §17.4).
    ///
    /// # Errors
    /// [`GroupError::WrongGroup`], [`GroupError::OwnDevice`], [`GroupError::NotMember`]. The
    /// session is unchanged.
    pub fn receive_distribution(
        &mut self,
        sender: &Address,
        distribution: &SenderKeyDistribution,
    ) -> Result<KeyStatus, GroupError> {
        if distribution.group_id != self.group_id {
            return Err(GroupError::WrongGroup);
        }
        if *sender == self.own {
            return Err(GroupError::OwnDevice);
        }
        if !self.members.contains(sender) {
            return Err(GroupError::NotMember);
        }
        let state = self.senders.entry(*sender).or_default();
        let signing_key = distribution.signing_key.to_bytes();
        if state.retired.contains(&(distribution.key_id, signing_key)) {
            return Ok(KeyStatus::Known);
        }
        if let Some(at) = state
            .keys
            .iter()
            .position(|k| k.key_id == distribution.key_id)
        {
            if let Some(k) = state
                .keys
                .get_mut(at)
                .filter(|k| k.verifying == distribution.signing_key)
            {
                // The same key again: never rewound; moved forward only when it is out of
                // reach (more than MAX_SKIP ahead).
                let status = if distribution.iteration.saturating_sub(k.iteration) > MAX_SKIP
                    && k.end.is_none_or(|e| distribution.iteration < e)
                {
                    k.chain = distribution.chain.duplicate();
                    k.iteration = distribution.iteration;
                    KeyStatus::Advanced
                } else {
                    KeyStatus::Known
                };
                state.end_previous(distribution.previous);
                return Ok(status);
            }
            // The sender reused an id for a different key (it lost its state): the new key
            // replaces the old one.
            if let Some(old) = state.keys.remove(at) {
                state.retire(&old);
            }
        }
        let kept = state.install(ReceivingKey {
            key_id: distribution.key_id,
            iteration: distribution.iteration,
            chain: distribution.chain.duplicate(),
            verifying: distribution.signing_key,
            end: None,
            previous: distribution.previous,
            lineage: distribution.lineage,
        });
        // A stale key that was retired at once is as good as known.
        Ok(if kept {
            KeyStatus::New
        } else {
            KeyStatus::Known
        })
    }

    /// Decrypts a group message from member device `sender` (PROTOCOL.md §17.5). The signature
    /// is checked before anything else; the message key is derived on a copy of the chain and
    /// committed only once the AEAD tag verified, so on any error the session is unchanged.
    /// Each message decrypts at most once.
    ///
    /// `sender` comes from the transport or the sealed envelope; a wrong one fails
    /// ([`GroupError::UnknownSenderKey`] or [`GroupError::Unauthenticated`]).
    ///
    /// # Errors
    /// [`GroupError`].
    pub fn decrypt(
        &mut self,
        sender: &Address,
        message: &GroupMessage,
    ) -> Result<Zeroizing<Vec<u8>>, GroupError> {
        if message.group_id != self.group_id {
            return Err(GroupError::WrongGroup);
        }
        if *sender == self.own {
            return Err(GroupError::OwnDevice);
        }
        if !self.members.contains(sender) {
            return Err(GroupError::NotMember);
        }
        let unknown = GroupError::UnknownSenderKey {
            key_id: message.key_id,
        };
        let state = self.senders.get_mut(sender).ok_or(unknown)?;
        let key = state
            .keys
            .iter_mut()
            .find(|k| k.key_id == message.key_id)
            .ok_or(unknown)?;
        let (signed, signature) = message.split().ok_or(GroupError::Unauthenticated)?;
        key.verifying
            .verify_strict(signed, &Signature::from_bytes(&signature))
            .map_err(|_| GroupError::Unauthenticated)?;

        let n = message.iteration;
        if key.end.is_some_and(|end| n >= end) {
            // Beyond the end its sender announced: only a holder of a stolen old key makes this.
            return Err(GroupError::Unauthenticated);
        }
        let aad = message_aad(self.group_id, message.key_id, n, sender);
        if n < key.iteration {
            let mk = state
                .skipped
                .get(&message.key_id, n)
                .ok_or(GroupError::Duplicate { iteration: n })?;
            let plaintext = open_padded(mk, &aad, &message.ciphertext)?;
            state.skipped.remove(&message.key_id, n);
            return Ok(plaintext);
        }
        let gap = n - key.iteration;
        if gap > MAX_SKIP {
            return Err(GroupError::TooFarAhead {
                gap,
                limit: MAX_SKIP,
            });
        }
        let next_iteration =
            n.checked_add(1)
                .ok_or(GroupError::Malformed(DecodeError::InvalidField(
                    "iteration",
                )))?;
        // Stage: walk a copy of the chain, keeping the keys skipped on the way.
        let mut skipped = Vec::new();
        let mut chain = key.chain.duplicate();
        for i in key.iteration..n {
            let (mk, next) = chain.step();
            skipped.push((i, mk));
            chain = next;
        }
        let (mk, next) = chain.step();
        let plaintext = open_padded(&mk, &aad, &message.ciphertext)?;
        // Commit.
        key.chain = next;
        key.iteration = next_iteration;
        for (i, mk) in skipped {
            state.skipped.insert(message.key_id, i, mk);
        }
        Ok(plaintext)
    }

    /// A versioned snapshot (PROTOCOL.md §17.7). Store it encrypted at rest.
    #[must_use]
    pub fn snapshot(&self) -> Zeroizing<Vec<u8>> {
        let member = |a: &Address| MemberProto {
            account_key: a.account.to_bytes().to_vec(),
            device_id: a.device,
        };
        let proto = GroupSessionProto {
            group_id: self.group_id.0.to_vec(),
            own: Some(member(&self.own)),
            members: self.members.iter().map(member).collect(),
            rotate_after_messages: self.policy.max_messages,
            rotate_after_ms: self.policy.max_age_ms,
            sending: self.sending.as_ref().map(|k| SendingKeyProto {
                key_id: k.key_id,
                iteration: k.iteration,
                chain_key: k.chain.as_bytes().to_vec(),
                signing_seed: k.signing.to_bytes().to_vec(),
                created_at: k.created_at.0,
                previous_key_id: k.previous.map(|p| p.key_id),
                previous_end: k.previous.map(|p| p.end),
                lineage: k.lineage,
            }),
            rotation_pending: self.rotation_pending,
            senders: self
                .senders
                .iter()
                .map(|(a, s)| {
                    let mut skipped = Vec::with_capacity(s.skipped.len() * SKIPPED_RECORD_LEN);
                    for (key_id, n, mk) in s.skipped.iter() {
                        skipped.extend_from_slice(&key_id.to_be_bytes());
                        skipped.extend_from_slice(&n.to_be_bytes());
                        skipped.extend_from_slice(mk.as_bytes());
                    }
                    let mut retired = Vec::with_capacity(s.retired.len() * RETIRED_RECORD_LEN);
                    for (key_id, key) in &s.retired {
                        retired.extend_from_slice(&key_id.to_be_bytes());
                        retired.extend_from_slice(key);
                    }
                    SenderStateProto {
                        account_key: a.account.to_bytes().to_vec(),
                        device_id: a.device,
                        keys: s
                            .keys
                            .iter()
                            .map(|k| ReceivingKeyProto {
                                key_id: k.key_id,
                                iteration: k.iteration,
                                chain_key: k.chain.as_bytes().to_vec(),
                                signing_key: k.verifying.to_bytes().to_vec(),
                                end: k.end,
                                previous_key_id: k.previous.map(|p| p.key_id),
                                previous_end: k.previous.map(|p| p.end),
                                lineage: k.lineage,
                            })
                            .collect(),
                        skipped,
                        retired,
                    }
                })
                .collect(),
        };
        codec::encode_secret(GROUP_SESSION_V1, &proto)
    }

    /// Restores a snapshot, treating it as untrusted: every invariant is checked.
    ///
    /// # Errors
    /// [`RestoreError`].
    pub fn restore(bytes: &[u8]) -> Result<Self, RestoreError> {
        let proto: GroupSessionProto = codec::decode_counted(
            bytes,
            GROUP_SESSION_V1,
            MAX_GROUP_SNAPSHOT_BYTES,
            &[
                RepeatedLimit {
                    path: &[],
                    tag: 3,
                    max: MAX_GROUP_DEVICES,
                    field: "members",
                },
                RepeatedLimit {
                    path: &[],
                    tag: 8,
                    max: MAX_SENDER_RECORDS,
                    field: "senders",
                },
                RepeatedLimit {
                    path: &[8],
                    tag: 3,
                    max: MAX_GROUP_DEVICES * MAX_SENDER_KEY_STATES,
                    field: "sender keys",
                },
            ],
        )?;
        let invariant = RestoreError::Invariant;
        // Each distinct account key is validated once (a point check costs tens of
        // microseconds; an account's devices share its key).
        let mut accounts: BTreeMap<Vec<u8>, IdentityKey> = BTreeMap::new();
        let mut account = |bytes: &[u8], f| -> Result<IdentityKey, RestoreError> {
            if let Some(key) = accounts.get(bytes) {
                return Ok(*key);
            }
            let key = IdentityKey::from_bytes(bytes).map_err(|_| invariant(f))?;
            accounts.insert(bytes.to_vec(), key);
            Ok(key)
        };
        let mut address = |m: &MemberProto, f| -> Result<Address, RestoreError> {
            Ok(Address {
                account: account(&m.account_key, f)?,
                device: m.device_id,
            })
        };
        let group_id = GroupId::parse(&proto.group_id)?;
        let own = address(proto.own.as_ref().ok_or(invariant("own"))?, "own")?;
        let mut members = BTreeSet::new();
        for m in &proto.members {
            if !members.insert(address(m, "member")?) {
                return Err(invariant("duplicate member"));
            }
        }
        if !members.contains(&own) {
            return Err(invariant("own device not a member"));
        }
        let policy = RotationPolicy {
            max_messages: proto.rotate_after_messages,
            max_age_ms: proto.rotate_after_ms,
        };
        let sending = match &proto.sending {
            None => None,
            Some(k) => Some(SendingKey {
                key_id: k.key_id,
                iteration: k.iteration,
                chain: ChainKey::from_bytes(
                    codec::array(&k.chain_key, "chain_key").map_err(|_| invariant("chain_key"))?,
                ),
                signing: SigningKey::from_bytes(&Zeroizing::new(
                    codec::array(&k.signing_seed, "signing_seed")
                        .map_err(|_| invariant("signing_seed"))?,
                )),
                created_at: Timestamp(k.created_at),
                previous: previous_key(k.key_id, k.previous_key_id, k.previous_end)
                    .ok_or(invariant("previous key"))?,
                lineage: k.lineage,
            }),
        };
        let mut senders = BTreeMap::new();
        for s in &proto.senders {
            let sender = address(
                &MemberProto {
                    account_key: s.account_key.clone(),
                    device_id: s.device_id,
                },
                "sender account_key",
            )?;
            // A former member keeps only its retired records.
            let former = !members.contains(&sender);
            if sender == own || (former && (!s.keys.is_empty() || !s.skipped.is_empty())) {
                return Err(invariant("sender not another member"));
            }
            if s.keys.len() > MAX_SENDER_KEY_STATES {
                return Err(invariant("sender key count"));
            }
            let mut state = SenderState::default();
            for k in &s.keys {
                if state.keys.iter().any(|x| x.key_id == k.key_id) {
                    return Err(invariant("duplicate sender key id"));
                }
                state.keys.push_back(ReceivingKey {
                    key_id: k.key_id,
                    iteration: k.iteration,
                    chain: ChainKey::from_bytes(
                        codec::array(&k.chain_key, "chain_key")
                            .map_err(|_| invariant("chain_key"))?,
                    ),
                    verifying: parse_verifying_key(&k.signing_key)
                        .ok_or(invariant("signing_key"))?,
                    end: k.end,
                    previous: previous_key(k.key_id, k.previous_key_id, k.previous_end)
                        .ok_or(invariant("previous key"))?,
                    lineage: k.lineage,
                });
            }
            if s.retired.len() % RETIRED_RECORD_LEN != 0
                || s.retired.len() / RETIRED_RECORD_LEN > MAX_RETIRED_SENDER_KEYS
            {
                return Err(invariant("retired keys"));
            }
            for record in s.retired.chunks_exact(RETIRED_RECORD_LEN) {
                let (key_id, key) = record.split_at(4);
                let retired = (
                    u32::from_be_bytes(codec::array(key_id, "key_id")?),
                    codec::array(key, "signing_key")?,
                );
                let held = state
                    .keys
                    .iter()
                    .any(|k| (k.key_id, k.verifying.to_bytes()) == retired);
                if held || state.retired.contains(&retired) {
                    return Err(invariant("retired key held or repeated"));
                }
                state.retired.push_back(retired);
            }
            if s.skipped.len() % SKIPPED_RECORD_LEN != 0
                || s.skipped.len() / SKIPPED_RECORD_LEN > MAX_STORED_SKIPPED
            {
                return Err(invariant("skipped keys"));
            }
            for record in s.skipped.chunks_exact(SKIPPED_RECORD_LEN) {
                let (key_id, rest) = record.split_at(4);
                let (n, mk) = rest.split_at(4);
                let key_id = u32::from_be_bytes(codec::array(key_id, "key_id")?);
                let n = u32::from_be_bytes(codec::array(n, "iteration")?);
                let chain = state
                    .keys
                    .iter()
                    .find(|k| k.key_id == key_id)
                    .ok_or(invariant("skipped key of an unknown sender key"))?;
                if n >= chain.iteration || state.skipped.get(&key_id, n).is_some() {
                    return Err(invariant("skipped key iteration"));
                }
                state
                    .skipped
                    .insert(key_id, n, MessageKey::from_bytes(codec::array(mk, "key")?));
            }
            if senders.insert(sender, state).is_some() {
                return Err(invariant("duplicate sender"));
            }
        }
        Ok(Self {
            group_id,
            own,
            members,
            policy,
            sending,
            rotation_pending: proto.rotation_pending,
            senders,
        })
    }
}

impl fmt::Debug for GroupSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupSession")
            .field("group_id", &self.group_id)
            .field("own", &self.own)
            .field("members", &self.members.len())
            .field("sending_key_id", &self.sending.as_ref().map(|k| k.key_id))
            .field("senders", &self.senders.len())
            .finish_non_exhaustive()
    }
}

/// The member devices of a group whose member accounts have these verified device lists: every
/// listed device of each account, in address order. Pass the result to
/// [`GroupSession::set_members`] whenever a member account's list changes, so a device removed
/// from its account also leaves every group (PROTOCOL.md §17.6).
#[must_use]
pub fn member_devices<'a>(
    lists: impl IntoIterator<Item = &'a crate::device::VerifiedDeviceList>,
) -> Vec<Address> {
    let set: BTreeSet<Address> = lists
        .into_iter()
        .flat_map(|list| {
            let account = list.account_key();
            list.entries().iter().map(move |e| Address {
                account,
                device: e.device_id(),
            })
        })
        .collect();
    set.into_iter().collect()
}

fn check_members(own: &Address, members: &[Address]) -> Result<BTreeSet<Address>, GroupError> {
    let set: BTreeSet<Address> = members.iter().copied().collect();
    if set.len() > MAX_GROUP_DEVICES {
        return Err(GroupError::TooManyMembers {
            count: set.len(),
            limit: MAX_GROUP_DEVICES,
        });
    }
    if !set.contains(own) {
        return Err(GroupError::OwnDeviceNotListed);
    }
    Ok(set)
}
