//! The wire envelope (PROTOCOL.md §19.1): one versioned type that every transport (WebSocket,
//! HTTP, push) and store (SQLite, a queue) carries, holding only what a server needs to route
//! it. Parse with [`Envelope::from_bytes`], then match on [`EnvelopeContent`].
//!
//! | kind | code | server sees |
//! |---|---|---|
//! | [`EnvelopeContent::PreKey`] | 1 | recipient, sender, the initial message |
//! | [`EnvelopeContent::Ratchet`] | 2 | recipient, sender, the ratchet message |
//! | [`EnvelopeContent::FanOut`] | 3 | recipient, sender, the key entry and the shared body |
//! | [`EnvelopeContent::Group`] | 4 | recipient, sender, the group message |
//! | [`EnvelopeContent::Sealed`] | 5 | recipient only; everything else is encrypted |
//!
//! Sender-key distributions travel as the plaintext of pairwise or fan-out messages
//! ([`crate::content`]), so the server cannot tell them from other messages.
//!
//! ```
//! use confidant::book::Address;
//! use confidant::envelope::{Envelope, EnvelopeContent, EnvelopeKind, WireFormat};
//! # use confidant::{IdentityKeyPair, PreKeyBundle, PreKeys, Session, Timestamp};
//! # use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};
//! # let mut rng = ChaCha20Rng::seed_from_u64(7);
//! # let alice_account = IdentityKeyPair::generate(&mut rng);
//! # let bob_account = IdentityKeyPair::generate(&mut rng);
//! # let (alice, bob) = (IdentityKeyPair::generate(&mut rng), IdentityKeyPair::generate(&mut rng));
//! # let bob_prekeys = PreKeys::new(&mut rng, &bob, Timestamp(1_700_000_000_000));
//! # let bundle = PreKeyBundle::new(bob.public(), bob_prekeys.signed_prekey(), None)
//! #     .with_kem_prekey(bob_prekeys.last_resort_kem_prekey());
//! # let mut session = Session::initiate(&mut rng, &alice, bundle.verify()?)?;
//! let initial = session.encrypt(b"hi Bob")?; // a pairwise initial message (0x11)
//! let sender = Address { account: alice_account.public(), device: 1 };
//! let recipient = Address { account: bob_account.public(), device: 1 };
//! let content = EnvelopeContent::PreKey { sender, message: initial };
//! let envelope = Envelope { recipient, content };
//! let wire = envelope.to_bytes();
//! assert_eq!(WireFormat::of(&wire), Some(WireFormat::Envelope));
//!
//! // The server and the recipient parse the same outer fields; nothing is decrypted.
//! let parsed = Envelope::from_bytes(&wire)?;
//! assert_eq!(parsed, envelope);
//! assert_eq!((parsed.kind(), parsed.sender()), (EnvelopeKind::PreKey, Some(sender)));
//! let EnvelopeContent::PreKey { message, .. } = &parsed.content else { unreachable!() };
//! assert_eq!(WireFormat::of(message), Some(WireFormat::PreKeyMessage));
//! assert!(Envelope::from_bytes(&wire[..wire.len() - 1]).is_err()); // truncated
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::fmt;

use crate::book::Address;
use crate::codec::{self, ENVELOPE_V1};
use crate::error::DecodeError;
use crate::keys::IdentityKey;
use crate::limits::{
    MAX_ENVELOPE_BYTES, MAX_FANOUT_BODY_BYTES, MAX_MESSAGE_BYTES, MAX_SEALED_BODY_BYTES,
    MAX_SEALED_ENTRY_BYTES,
};
use crate::proto::EnvelopeProto;

/// Length of a sealed envelope's per-recipient header `C || AT` (PROTOCOL.md §19.3).
pub const SEALED_HEADER_LEN: usize = 48;

/// The stable type codes of [`EnvelopeContent`] (PROTOCOL.md §19.1). Never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum EnvelopeKind {
    /// A pairwise initial message (`0x11`).
    PreKey = 1,
    /// A pairwise ratchet message (`0x12`).
    Ratchet = 2,
    /// A fan-out key entry and its shared body (`0x52`).
    FanOut = 3,
    /// A sender-key group message (`0x61`).
    Group = 4,
    /// A sealed-sender envelope.
    Sealed = 5,
}

impl EnvelopeKind {
    /// The kind with this code.
    #[must_use]
    pub fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            1 => Self::PreKey,
            2 => Self::Ratchet,
            3 => Self::FanOut,
            4 => Self::Group,
            5 => Self::Sealed,
            _ => return None,
        })
    }

    /// The stable code.
    #[must_use]
    pub fn code(self) -> u32 {
        self as u32
    }
}

/// The sealed part of a sealed-sender envelope (PROTOCOL.md §19.3): opened only with the
/// recipient device's identity key ([`crate::sealed::open`]).
#[derive(Clone, PartialEq, Eq)]
pub struct SealedEnvelope {
    /// The ephemeral X25519 key `E`, shared by every recipient of one send.
    pub ephemeral: [u8; 32],
    /// This recipient's `C || AT`.
    pub header: [u8; SEALED_HEADER_LEN],
    /// This recipient's sealed key entry (fan-out sends), or empty.
    pub entry: Vec<u8>,
    /// The sealed content, shared by every recipient of one send.
    pub body: Vec<u8>,
}

impl fmt::Debug for SealedEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedEnvelope")
            .field("entry_len", &self.entry.len())
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// What an envelope carries.
#[derive(Clone, PartialEq, Eq)]
pub enum EnvelopeContent {
    /// A pairwise initial message from `sender`.
    PreKey {
        /// The sending device.
        sender: Address,
        /// The message (`0x11 || …`).
        message: Vec<u8>,
    },
    /// A pairwise ratchet message from `sender`.
    Ratchet {
        /// The sending device.
        sender: Address,
        /// The message (`0x12 || …`).
        message: Vec<u8>,
    },
    /// A fan-out: this device's key entry (a pairwise message) and the shared body.
    FanOut {
        /// The sending device.
        sender: Address,
        /// The pairwise message carrying the content key.
        entry: Vec<u8>,
        /// The shared body (`0x52 || …`).
        body: Vec<u8>,
    },
    /// A sender-key group message from `sender`.
    Group {
        /// The sending device.
        sender: Address,
        /// The group message (`0x61 || …`).
        message: Vec<u8>,
    },
    /// A sealed-sender envelope: the sender is inside.
    Sealed(SealedEnvelope),
}

impl fmt::Debug for EnvelopeContent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PreKey { sender, message } | Self::Ratchet { sender, message } => f
                .debug_struct(if matches!(self, Self::PreKey { .. }) {
                    "PreKey"
                } else {
                    "Ratchet"
                })
                .field("sender", sender)
                .field("len", &message.len())
                .finish(),
            Self::FanOut {
                sender,
                entry,
                body,
            } => f
                .debug_struct("FanOut")
                .field("sender", sender)
                .field("entry_len", &entry.len())
                .field("body_len", &body.len())
                .finish(),
            Self::Group { sender, message } => f
                .debug_struct("Group")
                .field("sender", sender)
                .field("len", &message.len())
                .finish(),
            Self::Sealed(s) => s.fmt(f),
        }
    }
}

/// One message for one recipient device (PROTOCOL.md §19.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The device it is for.
    pub recipient: Address,
    /// What it carries.
    pub content: EnvelopeContent,
}

impl Envelope {
    /// The content's kind.
    #[must_use]
    pub fn kind(&self) -> EnvelopeKind {
        match self.content {
            EnvelopeContent::PreKey { .. } => EnvelopeKind::PreKey,
            EnvelopeContent::Ratchet { .. } => EnvelopeKind::Ratchet,
            EnvelopeContent::FanOut { .. } => EnvelopeKind::FanOut,
            EnvelopeContent::Group { .. } => EnvelopeKind::Group,
            EnvelopeContent::Sealed(_) => EnvelopeKind::Sealed,
        }
    }

    /// The sender, for unsealed kinds.
    #[must_use]
    pub fn sender(&self) -> Option<Address> {
        match &self.content {
            EnvelopeContent::PreKey { sender, .. }
            | EnvelopeContent::Ratchet { sender, .. }
            | EnvelopeContent::FanOut { sender, .. }
            | EnvelopeContent::Group { sender, .. } => Some(*sender),
            EnvelopeContent::Sealed(_) => None,
        }
    }

    /// `0x71 || EnvelopeProto`.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let address = |a: &Address| (a.account.to_bytes().to_vec(), a.device);
        let (recipient_account, recipient_device) = address(&self.recipient);
        let mut proto = EnvelopeProto {
            kind: self.kind().code(),
            recipient_account,
            recipient_device,
            ..EnvelopeProto::default()
        };
        if let Some(sender) = self.sender() {
            let (account, device) = address(&sender);
            proto.sender_account = Some(account);
            proto.sender_device = Some(device);
        }
        match &self.content {
            EnvelopeContent::PreKey { message, .. }
            | EnvelopeContent::Ratchet { message, .. }
            | EnvelopeContent::Group { message, .. } => proto.message.clone_from(message),
            EnvelopeContent::FanOut { entry, body, .. } => {
                proto.message.clone_from(entry);
                proto.body.clone_from(body);
            }
            EnvelopeContent::Sealed(s) => {
                proto.message = s.header.to_vec();
                proto.body.clone_from(&s.body);
                proto.ephemeral = s.ephemeral.to_vec();
                proto.entry.clone_from(&s.entry);
            }
        }
        codec::encode(ENVELOPE_V1, &proto)
    }

    /// Parses and checks an envelope's outer fields (PROTOCOL.md §19.1): the kind is known;
    /// the recipient is present; unsealed kinds name a sender and sealed ones do not; each kind
    /// has exactly its fields, each within its size limit. Nothing is decrypted.
    ///
    /// # Errors
    /// [`DecodeError`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let proto: EnvelopeProto = codec::decode(bytes, ENVELOPE_V1, MAX_ENVELOPE_BYTES)?;
        let kind = EnvelopeKind::from_code(proto.kind).ok_or(DecodeError::InvalidField("kind"))?;
        let key = |b: &[u8], field| {
            IdentityKey::from_bytes(b).map_err(|_| DecodeError::InvalidField(field))
        };
        let recipient = Address {
            account: key(&proto.recipient_account, "recipient_account")?,
            device: proto.recipient_device,
        };
        let sender = match (&proto.sender_account, proto.sender_device) {
            (Some(account), Some(device)) => Some(Address {
                account: key(account, "sender_account")?,
                device,
            }),
            (None, None) => None,
            _ => return Err(DecodeError::InvalidField("sender")),
        };
        let fits = |b: &[u8], limit: usize, field| {
            if b.len() > limit {
                Err(DecodeError::InvalidField(field))
            } else {
                Ok(())
            }
        };
        let unsealed_only = proto.ephemeral.is_empty() && proto.entry.is_empty();
        let content = match (kind, sender) {
            (EnvelopeKind::Sealed, None) => {
                fits(&proto.entry, MAX_SEALED_ENTRY_BYTES, "entry")?;
                fits(&proto.body, MAX_SEALED_BODY_BYTES, "body")?;
                EnvelopeContent::Sealed(SealedEnvelope {
                    ephemeral: codec::array(&proto.ephemeral, "ephemeral")?,
                    header: codec::array(&proto.message, "header")?,
                    entry: proto.entry.clone(),
                    body: proto.body.clone(),
                })
            }
            (EnvelopeKind::Sealed, Some(_)) => return Err(DecodeError::InvalidField("sender")),
            (_, None) => return Err(DecodeError::InvalidField("sender")),
            (_, Some(_)) if !unsealed_only => {
                return Err(DecodeError::InvalidField("sealed field"));
            }
            (EnvelopeKind::FanOut, Some(sender)) => {
                fits(&proto.message, MAX_MESSAGE_BYTES, "message")?;
                fits(&proto.body, MAX_FANOUT_BODY_BYTES, "body")?;
                EnvelopeContent::FanOut {
                    sender,
                    entry: proto.message.clone(),
                    body: proto.body.clone(),
                }
            }
            (_, Some(_)) if !proto.body.is_empty() => {
                return Err(DecodeError::InvalidField("body"));
            }
            (EnvelopeKind::PreKey, Some(sender)) => {
                fits(&proto.message, MAX_MESSAGE_BYTES, "message")?;
                EnvelopeContent::PreKey {
                    sender,
                    message: proto.message.clone(),
                }
            }
            (EnvelopeKind::Ratchet, Some(sender)) => {
                fits(&proto.message, MAX_MESSAGE_BYTES, "message")?;
                EnvelopeContent::Ratchet {
                    sender,
                    message: proto.message.clone(),
                }
            }
            (EnvelopeKind::Group, Some(sender)) => {
                fits(
                    &proto.message,
                    crate::limits::MAX_GROUP_MESSAGE_BYTES,
                    "message",
                )?;
                EnvelopeContent::Group {
                    sender,
                    message: proto.message.clone(),
                }
            }
        };
        Ok(Self { recipient, content })
    }
}

/// Every encoding of the crate, by its leading byte (PROTOCOL.md §8.1), for transports and
/// stores that dispatch on it before parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WireFormat {
    /// `0x11` pairwise initial message.
    PreKeyMessage,
    /// `0x12` pairwise ratchet message.
    RatchetMessage,
    /// `0x21` prekey bundle.
    Bundle,
    /// `0x22` prekey upload.
    PreKeyUpload,
    /// `0x31` session snapshot.
    SessionSnapshot,
    /// `0x32` prekey-secrets snapshot.
    PreKeysSnapshot,
    /// `0x33` session book snapshot.
    SessionBookSnapshot,
    /// `0x34` group session snapshot.
    GroupSessionSnapshot,
    /// `0x35` known-accounts snapshot.
    KnownAccountsSnapshot,
    /// `0x41` signed device list.
    DeviceList,
    /// `0x42` device link request.
    LinkRequest,
    /// `0x52` fan-out body.
    FanOutBody,
    /// `0x61` group message.
    GroupMessage,
    /// `0x62` sender-key distribution.
    SenderKeyDistribution,
    /// `0x71` envelope.
    Envelope,
    /// `0x72` multi-recipient sealed upload.
    SealedUpload,
    /// `0x73` multi-recipient fan-out upload.
    FanOutUpload,
    /// `0x81` server certificate.
    ServerCertificate,
    /// `0x82` sender certificate.
    SenderCertificate,
    /// `0x91` attachment pointer.
    AttachmentPointer,
    /// `0xA1` scannable safety number.
    ScannableSafetyNumber,
}

impl WireFormat {
    /// The format of `bytes` by its leading byte (nothing else is checked).
    #[must_use]
    pub fn of(bytes: &[u8]) -> Option<Self> {
        Some(match *bytes.first()? {
            0x11 => Self::PreKeyMessage,
            0x12 => Self::RatchetMessage,
            0x21 => Self::Bundle,
            0x22 => Self::PreKeyUpload,
            0x31 => Self::SessionSnapshot,
            0x32 => Self::PreKeysSnapshot,
            0x33 => Self::SessionBookSnapshot,
            0x34 => Self::GroupSessionSnapshot,
            0x35 => Self::KnownAccountsSnapshot,
            0x41 => Self::DeviceList,
            0x42 => Self::LinkRequest,
            0x52 => Self::FanOutBody,
            0x61 => Self::GroupMessage,
            0x62 => Self::SenderKeyDistribution,
            0x71 => Self::Envelope,
            0x72 => Self::SealedUpload,
            0x73 => Self::FanOutUpload,
            0x81 => Self::ServerCertificate,
            0x82 => Self::SenderCertificate,
            0x91 => Self::AttachmentPointer,
            0xA1 => Self::ScannableSafetyNumber,
            _ => return None,
        })
    }
}
