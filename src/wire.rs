//! Pairwise wire messages (PROTOCOL.md §8): a leading version/type byte, then protobuf.
//!
//! Parsing exposes the routing data (sender identity, base key, prekey ids) before any
//! cryptography, so the caller can find the right session or prekeys in its own storage.
//! Authentication covers the exact header and ciphertext bytes received, never a re-encoding.

use crate::codec::{self, PREKEY_MESSAGE_V1, RATCHET_MESSAGE_V1};
use crate::error::DecodeError;
use crate::kem::KEM_CIPHERTEXT_LEN;
use crate::keys::{IdentityKey, PublicKey};
use crate::limits::{MAX_MESSAGE_BYTES, MIN_CIPHERTEXT};
use crate::proto::{PreKeyMessageProto, RatchetMessageProto};
use crate::ratchet::HEADER_LEN;

/// Which key agreement created a session (PROTOCOL.md §6.2). Recorded in every session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Handshake {
    /// X3DH, profile `x3dh-dr-ed25519-x25519-sha256-aesgcm/v1` (classical).
    X3dh,
    /// PQXDH with ML-KEM-1024, profile `pqxdh-ed25519-x25519-mlkem1024-sha256/v1`.
    Pqxdh,
}

impl Handshake {
    pub(crate) fn code(self) -> u32 {
        match self {
            Handshake::X3dh => 1,
            Handshake::Pqxdh => 2,
        }
    }

    pub(crate) fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(Handshake::X3dh),
            2 => Some(Handshake::Pqxdh),
            _ => None,
        }
    }

    /// Whether this handshake protects the session key against a harvest-now,
    /// decrypt-later quantum adversary.
    #[must_use]
    pub fn is_post_quantum(self) -> bool {
        matches!(self, Handshake::Pqxdh)
    }
}

/// The KEM part of a PQXDH initial message: which KEM prekey, and the ciphertext to it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct KemEncapsulation {
    pub(crate) prekey_id: u32,
    pub(crate) ciphertext: Box<[u8; KEM_CIPHERTEXT_LEN]>,
}

impl core::fmt::Debug for KemEncapsulation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KemEncapsulation")
            .field("prekey_id", &self.prekey_id)
            .finish_non_exhaustive()
    }
}

/// A pairwise message as received: either an initial message or a ratchet message.
///
/// # Example
/// ```
/// use confidant::{DecodeError, Handshake, Message};
/// # use confidant::{IdentityKeyPair, PreKeyBundle, PreKeys, Session, Timestamp};
/// # use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};
/// # let mut rng = ChaCha20Rng::seed_from_u64(7);
/// # let (alice, bob) = (IdentityKeyPair::generate(&mut rng), IdentityKeyPair::generate(&mut rng));
/// # let bob_prekeys = PreKeys::new(&mut rng, &bob, Timestamp(1_700_000_000_000));
/// # let bundle = PreKeyBundle::new(bob.public(), bob_prekeys.signed_prekey(), None)
/// #     .with_kem_prekey(bob_prekeys.last_resort_kem_prekey());
/// # let mut alice_session = Session::initiate(&mut rng, &alice, bundle.verify()?)?;
/// let wire = alice_session.encrypt(b"hi")?; // Alice's first message to Bob
///
/// // Routing data is readable before any cryptography: who sent it, with which prekeys.
/// let Message::PreKey(initial) = Message::from_bytes(&wire)? else { unreachable!() };
/// assert_eq!(initial.identity_key(), alice.public());
/// assert_eq!(initial.handshake(), Handshake::Pqxdh);
/// assert_eq!(initial.signed_prekey_id(), bob_prekeys.signed_prekey().id());
///
/// // Anything else is refused before decoding goes further.
/// assert_eq!(Message::from_bytes(&[]), Err(DecodeError::Empty));
/// assert_eq!(Message::from_bytes(b"\x99junk"), Err(DecodeError::UnsupportedVersion(0x99)));
/// assert!(Message::from_bytes(&wire[..wire.len() / 2]).is_err()); // truncated
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Carries the X3DH initial data; sent by the initiator until the first reply arrives.
    PreKey(PreKeyMessage),
    /// An ordinary Double Ratchet message.
    Ratchet(RatchetMessage),
}

impl Message {
    /// Parses a message. Checks the size limit and the leading byte before decoding.
    ///
    /// # Errors
    /// [`DecodeError`] for oversized, unversioned, unknown-version or malformed input.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        match bytes.first() {
            Some(&PREKEY_MESSAGE_V1) => PreKeyMessage::from_bytes(bytes).map(Message::PreKey),
            Some(&RATCHET_MESSAGE_V1) => RatchetMessage::from_bytes(bytes).map(Message::Ratchet),
            Some(&other) if bytes.len() <= MAX_MESSAGE_BYTES => {
                Err(DecodeError::UnsupportedVersion(other))
            }
            Some(_) => Err(DecodeError::TooLarge {
                len: bytes.len(),
                limit: MAX_MESSAGE_BYTES,
            }),
            None => Err(DecodeError::Empty),
        }
    }

    /// The encoding.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Message::PreKey(m) => m.to_bytes(),
            Message::Ratchet(m) => m.to_bytes(),
        }
    }
}

/// A Double Ratchet message: the 40-byte header and the AEAD ciphertext (PROTOCOL.md §8.2).
#[derive(Clone, PartialEq, Eq)]
pub struct RatchetMessage {
    pub(crate) header: [u8; HEADER_LEN],
    pub(crate) ciphertext: Vec<u8>,
}

impl RatchetMessage {
    /// Parses a standalone ratchet message (leading byte `0x12`).
    ///
    /// # Errors
    /// [`DecodeError`] on malformed input.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let proto: RatchetMessageProto =
            codec::decode(bytes, RATCHET_MESSAGE_V1, MAX_MESSAGE_BYTES)?;
        Self::from_proto(proto)
    }

    fn from_proto(proto: RatchetMessageProto) -> Result<Self, DecodeError> {
        let header = codec::array(&proto.header, "header")?;
        if proto.ciphertext.len() < MIN_CIPHERTEXT {
            return Err(DecodeError::InvalidField("ciphertext"));
        }
        Ok(Self {
            header,
            ciphertext: proto.ciphertext,
        })
    }

    fn to_proto(&self) -> RatchetMessageProto {
        RatchetMessageProto {
            header: self.header.to_vec(),
            ciphertext: self.ciphertext.clone(),
        }
    }

    /// The encoding (leading byte `0x12`).
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Self::frame(&self.header, self.ciphertext.len());
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// The encoding up to the ciphertext's bytes, with room for them: what
    /// `codec::encode(RATCHET_MESSAGE_V1, &self.to_proto())` writes before the ciphertext (both
    /// fields are never empty, so both are written, in tag order). Lets a send seal the
    /// ciphertext straight into the wire buffer (the hot path of every message).
    pub(crate) fn frame(header: &[u8; HEADER_LEN], ciphertext_len: usize) -> Vec<u8> {
        use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
        let field_len = |tag: u32, len: usize| key_len(tag) + encoded_len_varint(len as u64) + len;
        let mut out =
            Vec::with_capacity(1 + field_len(1, HEADER_LEN) + field_len(2, ciphertext_len));
        out.push(RATCHET_MESSAGE_V1);
        encode_key(1, WireType::LengthDelimited, &mut out);
        encode_varint(HEADER_LEN as u64, &mut out);
        out.extend_from_slice(header);
        encode_key(2, WireType::LengthDelimited, &mut out);
        encode_varint(ciphertext_len as u64, &mut out);
        out
    }

    /// The sender's current ratchet public key, from the header.
    #[must_use]
    pub fn ratchet_key(&self) -> [u8; 32] {
        crate::kdf::to32(self.header.get(..32).unwrap_or(&[]))
    }

    /// The message number `n` within its sending chain, from the header.
    #[must_use]
    pub fn counter(&self) -> u32 {
        crate::ratchet::Header::from_bytes(&self.header).map_or(0, |h| h.n)
    }
}

impl core::fmt::Debug for RatchetMessage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RatchetMessage")
            .field("counter", &self.counter())
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

/// An initial message (PROTOCOL.md §8.3): X3DH data plus the first ratchet message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreKeyMessage {
    pub(crate) handshake: Handshake,
    pub(crate) identity_key: IdentityKey,
    pub(crate) base_key: PublicKey,
    pub(crate) signed_prekey_id: u32,
    pub(crate) one_time_prekey_id: Option<u32>,
    pub(crate) kem: Option<KemEncapsulation>,
    pub(crate) message: RatchetMessage,
}

impl PreKeyMessage {
    /// Parses an initial message (leading byte `0x11`).
    ///
    /// # Errors
    /// [`DecodeError`] on malformed input, an unknown handshake kind, invalid keys, KEM fields
    /// in an X3DH message or missing ones in a PQXDH message (PROFILE-pqxdh §6.2), or a KEM
    /// ciphertext that is not 1568 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let proto: PreKeyMessageProto = codec::decode(bytes, PREKEY_MESSAGE_V1, MAX_MESSAGE_BYTES)?;
        let handshake =
            Handshake::from_code(proto.handshake).ok_or(DecodeError::InvalidField("handshake"))?;
        let kem = match (
            handshake,
            proto.kem_prekey_id,
            proto.kem_ciphertext.as_deref(),
        ) {
            (Handshake::X3dh, None, None) => None,
            (Handshake::X3dh, Some(_), _) => return Err(DecodeError::Unsupported("kem_prekey_id")),
            (Handshake::X3dh, None, Some(_)) => {
                return Err(DecodeError::Unsupported("kem_ciphertext"));
            }
            (Handshake::Pqxdh, None, _) => return Err(DecodeError::InvalidField("kem_prekey_id")),
            (Handshake::Pqxdh, Some(prekey_id), ciphertext) => Some(KemEncapsulation {
                prekey_id,
                ciphertext: Box::new(codec::array(
                    ciphertext.ok_or(DecodeError::InvalidField("kem_ciphertext"))?,
                    "kem_ciphertext",
                )?),
            }),
        };
        let identity_key =
            IdentityKey::from_bytes(&proto.identity_key).map_err(|error| DecodeError::Key {
                field: "identity_key",
                error,
            })?;
        let base_key =
            PublicKey::from_bytes(&proto.base_key).map_err(|error| DecodeError::Key {
                field: "base_key",
                error,
            })?;
        let message =
            RatchetMessage::from_proto(proto.message.ok_or(DecodeError::InvalidField("message"))?)?;
        Ok(Self {
            handshake,
            identity_key,
            base_key,
            signed_prekey_id: proto.signed_prekey_id,
            one_time_prekey_id: proto.one_time_prekey_id,
            kem,
            message,
        })
    }

    /// The encoding (leading byte `0x11`).
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let proto = PreKeyMessageProto {
            handshake: self.handshake.code(),
            identity_key: self.identity_key.to_bytes().to_vec(),
            base_key: self.base_key.to_bytes().to_vec(),
            signed_prekey_id: self.signed_prekey_id,
            one_time_prekey_id: self.one_time_prekey_id,
            kem_prekey_id: self.kem.as_ref().map(|k| k.prekey_id),
            kem_ciphertext: self.kem.as_ref().map(|k| k.ciphertext.to_vec()),
            message: Some(self.message.to_proto()),
        };
        codec::encode(PREKEY_MESSAGE_V1, &proto)
    }

    /// The handshake kind.
    #[must_use]
    pub fn handshake(&self) -> Handshake {
        self.handshake
    }

    /// The initiator's identity key (`IK_A`). Unauthenticated until the message decrypts.
    #[must_use]
    pub fn identity_key(&self) -> IdentityKey {
        self.identity_key
    }

    /// The initiator's ephemeral key (`EK_A`), which also identifies the session.
    #[must_use]
    pub fn base_key(&self) -> PublicKey {
        self.base_key
    }

    /// Id of the signed prekey used.
    #[must_use]
    pub fn signed_prekey_id(&self) -> u32 {
        self.signed_prekey_id
    }

    /// Id of the KEM prekey used (PQXDH only).
    #[must_use]
    pub fn kem_prekey_id(&self) -> Option<u32> {
        self.kem.as_ref().map(|k| k.prekey_id)
    }

    /// Id of the one-time prekey used, if any.
    #[must_use]
    pub fn one_time_prekey_id(&self) -> Option<u32> {
        self.one_time_prekey_id
    }

    /// The first (or a later, until a reply arrives) ratchet message inside.
    #[must_use]
    pub fn message(&self) -> &RatchetMessage {
        &self.message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-assembled ratchet message encoding is byte-identical to prost's, for one- and
    /// two-byte length prefixes, and parses back.
    #[test]
    fn ratchet_message_encoding_matches_prost() {
        for len in [MIN_CIPHERTEXT, 100, 127, 128, 300, 20_000] {
            let m = RatchetMessage {
                header: [0xa5; HEADER_LEN],
                ciphertext: (0..len).map(|i| i as u8).collect(),
            };
            let bytes = m.to_bytes();
            assert_eq!(bytes, codec::encode(RATCHET_MESSAGE_V1, &m.to_proto()));
            assert_eq!(RatchetMessage::from_bytes(&bytes).ok(), Some(m));
        }
    }
}
