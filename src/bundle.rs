//! Prekey bundles (PROTOCOL.md §3.4): what a key server hands an initiator.

use crate::codec::{self, BUNDLE_V1};
use crate::error::{BundleError, DecodeError};
use crate::kem::KemPublicKey;
use crate::keys::{IdentityKey, PublicKey};
use crate::limits::MAX_BUNDLE_BYTES;
use crate::proto::{KemPreKeyProto, OneTimePreKeyProto, PreKeyBundleProto, SignedPreKeyProto};
use crate::time::Timestamp;

/// The public half of a signed prekey: id, X25519 key, Ed25519 signature over `0x05 || key`,
/// and the (unsigned) creation time (PROTOCOL.md §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedPreKeyPublic {
    pub(crate) id: u32,
    pub(crate) key: PublicKey,
    pub(crate) signature: [u8; 64],
    pub(crate) created_at: Timestamp,
}

impl SignedPreKeyPublic {
    /// Assembles a signed prekey from its parts (the signature is checked by
    /// [`PreKeyBundle::verify`], not here).
    #[must_use]
    pub fn new(id: u32, key: PublicKey, signature: [u8; 64], created_at: Timestamp) -> Self {
        Self {
            id,
            key,
            signature,
            created_at,
        }
    }

    /// The prekey id.
    #[must_use]
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The X25519 public key.
    #[must_use]
    pub fn key(&self) -> PublicKey {
        self.key
    }

    /// The Ed25519 signature over `0x05 || key`.
    #[must_use]
    pub fn signature(&self) -> [u8; 64] {
        self.signature
    }

    /// Creation time as published (not covered by the signature).
    #[must_use]
    pub fn created_at(&self) -> Timestamp {
        self.created_at
    }

    /// Whether `identity` signed this prekey (strict RFC 8032 verification).
    #[must_use]
    pub fn verify(&self, identity: &IdentityKey) -> bool {
        identity.verify(&self.key.encode(), &self.signature)
    }

    pub(crate) fn to_proto(self) -> SignedPreKeyProto {
        SignedPreKeyProto {
            id: self.id,
            public_key: self.key.to_bytes().to_vec(),
            signature: self.signature.to_vec(),
            created_at: self.created_at.0,
        }
    }

    pub(crate) fn from_proto(proto: &SignedPreKeyProto) -> Result<Self, DecodeError> {
        Ok(Self {
            id: proto.id,
            key: PublicKey::from_bytes(&proto.public_key).map_err(|error| DecodeError::Key {
                field: "signed_prekey",
                error,
            })?,
            signature: codec::array(&proto.signature, "signed_prekey.signature")?,
            created_at: Timestamp(proto.created_at),
        })
    }
}

/// The public half of a one-time prekey (PROTOCOL.md §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OneTimePreKeyPublic {
    pub(crate) id: u32,
    pub(crate) key: PublicKey,
}

impl OneTimePreKeyPublic {
    /// Assembles a one-time prekey from its parts.
    #[must_use]
    pub fn new(id: u32, key: PublicKey) -> Self {
        Self { id, key }
    }

    /// The prekey id.
    #[must_use]
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The X25519 public key.
    #[must_use]
    pub fn key(&self) -> PublicKey {
        self.key
    }

    pub(crate) fn to_proto(self) -> OneTimePreKeyProto {
        OneTimePreKeyProto {
            id: self.id,
            public_key: self.key.to_bytes().to_vec(),
        }
    }

    pub(crate) fn from_proto(proto: &OneTimePreKeyProto) -> Result<Self, DecodeError> {
        Ok(Self {
            id: proto.id,
            key: PublicKey::from_bytes(&proto.public_key).map_err(|error| DecodeError::Key {
                field: "one_time_prekey",
                error,
            })?,
        })
    }
}

/// The public half of a signed ML-KEM-1024 prekey (PQXDH, PROTOCOL.md §13.1): id,
/// encapsulation key, and an Ed25519 signature over `EncodeKEM(key) = 0x0A || key`. One-time and
/// last-resort KEM prekeys look the same; they share one id space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KemPreKeyPublic {
    pub(crate) id: u32,
    pub(crate) key: KemPublicKey,
    pub(crate) signature: [u8; 64],
}

impl KemPreKeyPublic {
    /// Assembles a KEM prekey from its parts (the signature is checked by
    /// [`PreKeyBundle::verify`], not here).
    #[must_use]
    pub fn new(id: u32, key: KemPublicKey, signature: [u8; 64]) -> Self {
        Self { id, key, signature }
    }

    /// The prekey id.
    #[must_use]
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The ML-KEM-1024 encapsulation key.
    #[must_use]
    pub fn key(&self) -> &KemPublicKey {
        &self.key
    }

    /// The Ed25519 signature over `0x0A || key`.
    #[must_use]
    pub fn signature(&self) -> [u8; 64] {
        self.signature
    }

    /// Whether `identity` signed this prekey (strict RFC 8032 verification).
    #[must_use]
    pub fn verify(&self, identity: &IdentityKey) -> bool {
        identity.verify(&self.key.encode(), &self.signature)
    }

    pub(crate) fn to_proto(&self) -> KemPreKeyProto {
        KemPreKeyProto {
            id: self.id,
            public_key: self.key.as_bytes().to_vec(),
            signature: self.signature.to_vec(),
        }
    }

    pub(crate) fn from_proto(proto: &KemPreKeyProto) -> Result<Self, DecodeError> {
        Ok(Self {
            id: proto.id,
            key: KemPublicKey::from_bytes(&proto.public_key).map_err(|error| DecodeError::Key {
                field: "kem_prekey",
                error,
            })?,
            signature: codec::array(&proto.signature, "kem_prekey.signature")?,
        })
    }
}

/// A prekey bundle as served: identity key, signed prekey, optionally one one-time prekey, and
/// (for PQXDH) exactly one signed KEM prekey. Unverified; [`PreKeyBundle::verify`] is the only
/// way to a [`VerifiedBundle`].
///
/// # Example
/// ```
/// use confidant::{BundleError, IdentityKeyPair, PreKeyBundle, PreKeys, SignedPreKeyPublic};
/// # use confidant::Timestamp;
/// # use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};
/// # let mut rng = ChaCha20Rng::seed_from_u64(7);
/// let bob = IdentityKeyPair::generate(&mut rng);
/// let prekeys = PreKeys::new(&mut rng, &bob, Timestamp(1_700_000_000_000));
/// let bundle = PreKeyBundle::new(bob.public(), prekeys.signed_prekey(), None)
///     .with_kem_prekey(prekeys.last_resort_kem_prekey());
///
/// // What the key server sends; the initiator parses, then verifies the signatures.
/// let parsed = PreKeyBundle::from_bytes(&bundle.to_bytes())?;
/// assert_eq!(parsed, bundle);
/// let verified = parsed.verify_for(&bob.public())?;
/// assert_eq!(verified.signed_prekey(), prekeys.signed_prekey());
///
/// // A signed prekey whose signature was altered is refused.
/// let spk = prekeys.signed_prekey();
/// let mut signature = spk.signature();
/// signature[0] ^= 1;
/// let forged = SignedPreKeyPublic::new(spk.id(), spk.key(), signature, spk.created_at());
/// let tampered = PreKeyBundle::new(bob.public(), forged, None);
/// assert_eq!(tampered.verify().err(), Some(BundleError::Unauthenticated));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreKeyBundle {
    pub(crate) identity_key: IdentityKey,
    pub(crate) signed_prekey: SignedPreKeyPublic,
    pub(crate) one_time_prekey: Option<OneTimePreKeyPublic>,
    pub(crate) kem_prekey: Option<KemPreKeyPublic>,
}

impl PreKeyBundle {
    /// Assembles a bundle from its parts.
    #[must_use]
    pub fn new(
        identity_key: IdentityKey,
        signed_prekey: SignedPreKeyPublic,
        one_time_prekey: Option<OneTimePreKeyPublic>,
    ) -> Self {
        Self {
            identity_key,
            signed_prekey,
            one_time_prekey,
            kem_prekey: None,
        }
    }

    /// Adds (or replaces) the KEM prekey, making this a PQXDH bundle.
    #[must_use]
    pub fn with_kem_prekey(mut self, kem_prekey: KemPreKeyPublic) -> Self {
        self.kem_prekey = Some(kem_prekey);
        self
    }

    /// The KEM prekey, if the bundle offers PQXDH.
    #[must_use]
    pub fn kem_prekey(&self) -> Option<&KemPreKeyPublic> {
        self.kem_prekey.as_ref()
    }

    /// Parses a bundle (leading byte `0x21`), validating every key but not the signature.
    ///
    /// # Errors
    /// [`DecodeError`] on malformed input or an invalid key.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let proto: PreKeyBundleProto = codec::decode(bytes, BUNDLE_V1, MAX_BUNDLE_BYTES)?;
        let (identity_key, signed_prekey) =
            decode_identity_and_signed_prekey(&proto.identity_key, proto.signed_prekey.as_ref())?;
        let one_time_prekey = proto
            .one_time_prekey
            .as_ref()
            .map(OneTimePreKeyPublic::from_proto)
            .transpose()?;
        let kem_prekey = proto
            .kem_prekey
            .as_ref()
            .map(KemPreKeyPublic::from_proto)
            .transpose()?;
        Ok(Self {
            identity_key,
            signed_prekey,
            one_time_prekey,
            kem_prekey,
        })
    }

    /// The encoding (leading byte `0x21`).
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let proto = PreKeyBundleProto {
            identity_key: self.identity_key.to_bytes().to_vec(),
            signed_prekey: Some(self.signed_prekey.to_proto()),
            one_time_prekey: self.one_time_prekey.map(OneTimePreKeyPublic::to_proto),
            kem_prekey: self.kem_prekey.as_ref().map(KemPreKeyPublic::to_proto),
        };
        codec::encode(BUNDLE_V1, &proto)
    }

    /// The identity key the bundle claims.
    #[must_use]
    pub fn identity_key(&self) -> IdentityKey {
        self.identity_key
    }

    /// Verifies the signed prekey's and, if present, the KEM prekey's signature under the
    /// bundle's own identity key (PROFILE-pqxdh §4: both must verify; an invalid KEM signature
    /// is never treated as "no KEM prekey").
    ///
    /// Whether that identity is the peer's is the caller's trust decision (safety numbers);
    /// use [`verify_for`](Self::verify_for) when the identity is already known.
    ///
    /// # Errors
    /// [`BundleError::Unauthenticated`] if a signature does not verify.
    pub fn verify(self) -> Result<VerifiedBundle, BundleError> {
        if !self.signed_prekey.verify(&self.identity_key) {
            return Err(BundleError::Unauthenticated);
        }
        if let Some(kem) = &self.kem_prekey
            && !kem.verify(&self.identity_key)
        {
            return Err(BundleError::Unauthenticated);
        }
        Ok(VerifiedBundle(self))
    }

    /// As [`verify`](Self::verify), and also requires the bundle's identity to be `expected`.
    ///
    /// # Errors
    /// [`BundleError::IdentityMismatch`] or [`BundleError::Unauthenticated`].
    pub fn verify_for(self, expected: &IdentityKey) -> Result<VerifiedBundle, BundleError> {
        if self.identity_key != *expected {
            return Err(BundleError::IdentityMismatch);
        }
        self.verify()
    }
}

/// The identity key and (required) signed prekey shared by bundles and uploads.
pub(crate) fn decode_identity_and_signed_prekey(
    identity_key: &[u8],
    signed_prekey: Option<&SignedPreKeyProto>,
) -> Result<(IdentityKey, SignedPreKeyPublic), DecodeError> {
    let identity_key = IdentityKey::from_bytes(identity_key).map_err(|error| DecodeError::Key {
        field: "identity_key",
        error,
    })?;
    let signed_prekey = SignedPreKeyPublic::from_proto(
        signed_prekey.ok_or(DecodeError::InvalidField("signed_prekey"))?,
    )?;
    Ok((identity_key, signed_prekey))
}

/// A bundle whose signed prekey signature verified. Only [`PreKeyBundle::verify`] makes one,
/// and [`Session::initiate`](crate::Session::initiate) consumes it: one bundle (and so its
/// one-time prekey) starts exactly one session. Not `Clone`, for the same reason.
#[derive(Debug, PartialEq, Eq)]
pub struct VerifiedBundle(PreKeyBundle);

impl VerifiedBundle {
    /// The peer's identity key.
    #[must_use]
    pub fn identity_key(&self) -> IdentityKey {
        self.0.identity_key
    }

    /// The signed prekey.
    #[must_use]
    pub fn signed_prekey(&self) -> SignedPreKeyPublic {
        self.0.signed_prekey
    }

    /// The one-time prekey, if the server had one.
    #[must_use]
    pub fn one_time_prekey(&self) -> Option<OneTimePreKeyPublic> {
        self.0.one_time_prekey
    }

    /// The KEM prekey; present means the bundle must be used with PQXDH.
    #[must_use]
    pub fn kem_prekey(&self) -> Option<&KemPreKeyPublic> {
        self.0.kem_prekey.as_ref()
    }
}
