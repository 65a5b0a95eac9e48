//! Low-level building blocks, exposed for test vectors, interoperability checks and audits.
//!
//! **Hazardous.** These functions take raw secrets and skip the checks and bookkeeping of
//! [`Session`](crate::Session) and [`PreKeys`](crate::PreKeys) (one-time prekey consumption,
//! replay records, initial-message framing). Applications should not need them.
//!
//! ```
//! // HAZMAT: fixed secrets, as in a test vector. Never send with explicit keys.
//! use confidant::book::Address;
//! use confidant::group::{GroupId, GroupMessage, GroupSession, RotationPolicy};
//! use confidant::group::SenderKeyDistribution;
//! use confidant::{IdentityKeyPair, hazmat};
//! # use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};
//! # let mut rng = ChaCha20Rng::seed_from_u64(7);
//! # let a = Address { account: IdentityKeyPair::generate(&mut rng).public(), device: 1 };
//! # let b = Address { account: IdentityKeyPair::generate(&mut rng).public(), device: 1 };
//! let id = GroupId::from_bytes([1; 16]);
//! let (key_id, chain_key, signing_seed) = (5, [7u8; 32], [8u8; 32]);
//! // Device `a`'s sender key (first key of its lineage) and its message at iteration 1.
//! let distribution =
//!     hazmat::sender_key_distribution(id, key_id, 0, &chain_key, &signing_seed, None, key_id);
//! let step = hazmat::sender_key_step(&chain_key);
//! let message =
//!     hazmat::group_seal(id, &a, key_id, 1, &step.next_chain_key, &signing_seed, b"vector");
//!
//! // The real group session of `b` accepts both, as if `a` had sent them.
//! let mut at_b = GroupSession::new(id, b, &[a, b], RotationPolicy::default())?;
//! at_b.receive_distribution(&a, &SenderKeyDistribution::from_bytes(&distribution)?)?;
//! assert_eq!(&at_b.decrypt(&a, &GroupMessage::from_bytes(&message)?)?[..], b"vector");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::fmt;

use rand_core::CryptoRng;
use x25519_dalek::StaticSecret;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::bundle::VerifiedBundle;
use crate::error::{DecryptError, EncryptError, HandshakeError};
use crate::kdf::RootKey;
pub use crate::kem::Encapsulated;
use crate::kem::{KEM_CIPHERTEXT_LEN, KemPublicKey, KemSecret};
use crate::keys::{IdentityKey, IdentityKeyPair, PublicKey};
use crate::ratchet::{self, HEADER_LEN};
use crate::x3dh;

/// Everything X3DH derives (PROTOCOL.md §4).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct X3dhOutput {
    /// `SK`.
    pub shared_secret: [u8; 32],
    /// `AD`.
    pub associated_data: Vec<u8>,
    /// `DH1..DH3` or `DH1..DH4`, in order.
    pub dh: Vec<[u8; 32]>,
    /// `SS` for PQXDH on the responder side (the decapsulated KEM secret); `None` otherwise.
    pub kem_shared_secret: Option<[u8; 32]>,
}

impl fmt::Debug for X3dhOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X3dhOutput")
            .field("dh_count", &self.dh.len())
            .finish_non_exhaustive()
    }
}

fn output(agreement: &x3dh::Agreement) -> X3dhOutput {
    X3dhOutput {
        shared_secret: *agreement.shared_secret.as_bytes(),
        associated_data: agreement.associated_data.clone(),
        dh: agreement.dh.iter().map(|d| **d).collect(),
        kem_shared_secret: None,
    }
}

/// X3DH as initiator with an explicit ephemeral secret.
///
/// # Errors
/// [`HandshakeError::PostQuantumRequired`] if the bundle has a KEM prekey (a bundle with one is
/// only ever used with PQXDH: [`pqxdh_initiate`]); [`HandshakeError::Unauthenticated`] if a DH
/// is non-contributory.
pub fn x3dh_initiate(
    identity: &IdentityKeyPair,
    ephemeral_private: &[u8; 32],
    bundle: &VerifiedBundle,
    appendix: &[u8],
) -> Result<X3dhOutput, HandshakeError> {
    if bundle.kem_prekey().is_some() {
        return Err(HandshakeError::PostQuantumRequired);
    }
    initiate(identity, ephemeral_private, bundle, None, appendix)
}

/// PQXDH as initiator with an explicit ephemeral secret and KEM shared secret `SS`
/// (PROTOCOL.md §13.3); the bundle's KEM prekey is not used (encapsulate with
/// [`kem_encapsulate`] to obtain `SS` and the ciphertext).
///
/// # Errors
/// [`HandshakeError::Unauthenticated`] if a DH is non-contributory.
pub fn pqxdh_initiate(
    identity: &IdentityKeyPair,
    ephemeral_private: &[u8; 32],
    bundle: &VerifiedBundle,
    kem_shared_secret: &[u8; 32],
    appendix: &[u8],
) -> Result<X3dhOutput, HandshakeError> {
    initiate(
        identity,
        ephemeral_private,
        bundle,
        Some(kem_shared_secret),
        appendix,
    )
}

fn initiate(
    identity: &IdentityKeyPair,
    ephemeral_private: &[u8; 32],
    bundle: &VerifiedBundle,
    kem_shared_secret: Option<&[u8; 32]>,
    appendix: &[u8],
) -> Result<X3dhOutput, HandshakeError> {
    let ephemeral = StaticSecret::from(*ephemeral_private);
    let agreement = x3dh::initiate(
        identity,
        &ephemeral,
        &bundle.identity_key(),
        &bundle.signed_prekey().key().to_bytes(),
        bundle
            .one_time_prekey()
            .map(|k| k.key().to_bytes())
            .as_ref(),
        kem_shared_secret,
        appendix,
    )
    .ok_or(HandshakeError::Unauthenticated)?;
    Ok(output(&agreement))
}

/// X3DH as responder with explicit prekey secrets.
///
/// # Errors
/// [`HandshakeError::Unauthenticated`] if a DH is non-contributory.
pub fn x3dh_respond(
    identity: &IdentityKeyPair,
    signed_prekey_private: &[u8; 32],
    one_time_prekey_private: Option<&[u8; 32]>,
    initiator_identity: &IdentityKey,
    initiator_ephemeral: &PublicKey,
    appendix: &[u8],
) -> Result<X3dhOutput, HandshakeError> {
    respond(
        identity,
        signed_prekey_private,
        one_time_prekey_private,
        initiator_identity,
        initiator_ephemeral,
        None,
        appendix,
    )
}

/// PQXDH as responder with explicit prekey secrets: decapsulates `kem_ciphertext` with the KEM
/// prekey `kem_seed` and derives `SK` (PROTOCOL.md §13.5). The returned
/// [`X3dhOutput::kem_shared_secret`] is the decapsulated `SS`.
///
/// # Errors
/// [`HandshakeError::Unauthenticated`] if a DH is non-contributory.
#[allow(clippy::too_many_arguments)]
pub fn pqxdh_respond(
    identity: &IdentityKeyPair,
    signed_prekey_private: &[u8; 32],
    one_time_prekey_private: Option<&[u8; 32]>,
    kem_seed: &[u8; 64],
    kem_ciphertext: &[u8; KEM_CIPHERTEXT_LEN],
    initiator_identity: &IdentityKey,
    initiator_ephemeral: &PublicKey,
    appendix: &[u8],
) -> Result<X3dhOutput, HandshakeError> {
    let ss = KemSecret::from_seed(kem_seed).decapsulate(kem_ciphertext);
    respond(
        identity,
        signed_prekey_private,
        one_time_prekey_private,
        initiator_identity,
        initiator_ephemeral,
        Some(&ss),
        appendix,
    )
}

fn respond(
    identity: &IdentityKeyPair,
    signed_prekey_private: &[u8; 32],
    one_time_prekey_private: Option<&[u8; 32]>,
    initiator_identity: &IdentityKey,
    initiator_ephemeral: &PublicKey,
    kem_shared_secret: Option<&[u8; 32]>,
    appendix: &[u8],
) -> Result<X3dhOutput, HandshakeError> {
    let spk = StaticSecret::from(*signed_prekey_private);
    let opk = one_time_prekey_private.map(|k| StaticSecret::from(*k));
    let agreement = x3dh::respond(
        identity,
        &spk,
        opk.as_ref(),
        initiator_identity,
        &initiator_ephemeral.to_bytes(),
        kem_shared_secret,
        appendix,
    )
    .ok_or(HandshakeError::Unauthenticated)?;
    let mut out = output(&agreement);
    out.kem_shared_secret = kem_shared_secret.copied();
    Ok(out)
}

/// The ML-KEM-1024 encapsulation key of a 64-byte FIPS 203 seed `d || z`.
#[must_use]
pub fn kem_public(seed: &[u8; 64]) -> KemPublicKey {
    KemSecret::from_seed(seed).public()
}

/// `ML-KEM-1024.Decaps` with the key of `seed` (implicit rejection).
#[must_use]
pub fn kem_decapsulate(
    seed: &[u8; 64],
    ciphertext: &[u8; KEM_CIPHERTEXT_LEN],
) -> Zeroizing<[u8; 32]> {
    KemSecret::from_seed(seed).decapsulate(ciphertext)
}

/// `ML-KEM-1024.Encaps` with 32 bytes of `rng`: returns `(CT, SS)` (`None` only for a key
/// that fails the FIPS 203 check).
#[must_use]
pub fn kem_encapsulate(
    rng: &mut (impl CryptoRng + ?Sized),
    key: &KemPublicKey,
) -> Option<Encapsulated> {
    key.encapsulate(rng)
}

/// Ed25519 signature of `identity` over `EncodeKEM(key) = 0x0A || key`.
#[must_use]
pub fn sign_kem_prekey(identity: &IdentityKeyPair, key: &KemPublicKey) -> [u8; 64] {
    identity.sign(&key.encode())
}

/// The X25519 public key of a private key.
#[must_use]
pub fn x25519_public(private: &[u8; 32]) -> [u8; 32] {
    PublicKey::from_secret(&StaticSecret::from(*private)).to_bytes()
}

/// Ed25519 signature of `identity` over `EncodeX(key) = 0x05 || key`.
#[must_use]
pub fn sign_prekey(identity: &IdentityKeyPair, key: &PublicKey) -> [u8; 64] {
    identity.sign(&key.encode())
}

/// The spec-level Double Ratchet state (PROFILE §4), for vector checks. `PartialEq` is not
/// constant-time: compare states in tests, not in production decisions.
#[derive(Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct RatchetState {
    /// `RK`.
    pub root_key: [u8; 32],
    /// `CKs`.
    pub sending_chain_key: Option<[u8; 32]>,
    /// `CKr`.
    pub receiving_chain_key: Option<[u8; 32]>,
    /// Public half of `DHs`.
    pub ratchet_public: [u8; 32],
    /// `DHr`.
    pub remote_ratchet_public: Option<[u8; 32]>,
    /// `Ns`.
    pub ns: u32,
    /// `Nr`.
    pub nr: u32,
    /// `PN`.
    pub pn: u32,
    /// Number of stored skipped message keys.
    pub skipped: usize,
}

impl fmt::Debug for RatchetState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RatchetState")
            .field("ns", &self.ns)
            .field("nr", &self.nr)
            .field("pn", &self.pn)
            .finish_non_exhaustive()
    }
}

/// A bare Double Ratchet (PROTOCOL.md §5), without session framing.
pub struct Ratchet(ratchet::Ratchet);

impl fmt::Debug for Ratchet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ratchet(<redacted>)")
    }
}

/// One encrypted message from [`Ratchet::encrypt`].
pub struct RatchetOutput {
    /// The 40-byte header.
    pub header: [u8; HEADER_LEN],
    /// `ciphertext || tag`.
    pub ciphertext: Vec<u8>,
    /// The message key used.
    pub message_key: Zeroizing<[u8; 32]>,
}

/// One decrypted message from [`Ratchet::decrypt`].
pub struct Opened {
    /// The plaintext.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// The message key used.
    pub message_key: Zeroizing<[u8; 32]>,
}

impl Ratchet {
    /// `RatchetInitAlice`: draws `DHs` (32 bytes) from `rng`.
    ///
    /// # Errors
    /// [`HandshakeError::Unauthenticated`] if `DH(DHs, SPK_B)` is non-contributory.
    pub fn init_alice(
        rng: &mut (impl CryptoRng + ?Sized),
        shared_secret: &[u8; 32],
        associated_data: &[u8],
        bob_signed_prekey: &[u8; 32],
    ) -> Result<Self, HandshakeError> {
        let sk = RootKey::from_bytes(*shared_secret);
        ratchet::Ratchet::init_alice(rng, &sk, associated_data.to_vec(), bob_signed_prekey)
            .map(Self)
            .ok_or(HandshakeError::Unauthenticated)
    }

    /// `RatchetInitBob` with the signed prekey secret as `DHs`.
    #[must_use]
    pub fn init_bob(
        shared_secret: &[u8; 32],
        associated_data: &[u8],
        signed_prekey_private: &[u8; 32],
    ) -> Self {
        let sk = RootKey::from_bytes(*shared_secret);
        Self(ratchet::Ratchet::init_bob(
            &sk,
            associated_data.to_vec(),
            StaticSecret::from(*signed_prekey_private),
        ))
    }

    /// `RatchetEncrypt`.
    ///
    /// # Errors
    /// [`EncryptError`]; the state is unchanged.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<RatchetOutput, EncryptError> {
        let out = self.0.encrypt(plaintext)?;
        Ok(RatchetOutput {
            header: out.header,
            ciphertext: out.ciphertext,
            message_key: Zeroizing::new(*out.message_key.as_bytes()),
        })
    }

    /// `RatchetDecrypt`; returns the plaintext and the message key. Transactional.
    ///
    /// # Errors
    /// [`DecryptError`]; the state is unchanged and `rng` unused.
    pub fn decrypt(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        header: &[u8],
        ciphertext: &[u8],
    ) -> Result<Opened, DecryptError> {
        let out = self.0.decrypt(rng, header, ciphertext)?;
        Ok(Opened {
            plaintext: out.plaintext,
            message_key: Zeroizing::new(*out.message_key.as_bytes()),
        })
    }

    /// The spec-level state.
    #[must_use]
    pub fn state(&self) -> RatchetState {
        let r = &self.0;
        RatchetState {
            root_key: *r.root.as_bytes(),
            sending_chain_key: r.cks.as_ref().map(|k| *k.as_bytes()),
            receiving_chain_key: r.ckr.as_ref().map(|k| *k.as_bytes()),
            ratchet_public: r.dhs.public,
            remote_ratchet_public: r.dhr,
            ns: r.ns,
            nr: r.nr,
            pn: r.pn,
            skipped: r.skipped.len(),
        }
    }
}

/// The fan-out body and key-entry payload `K || D` for an explicit content key (PROTOCOL.md
/// §16.1), for vectors. Never reuse a content key.
///
/// # Errors
/// [`EncryptError::TooLarge`] beyond GCM's limits.
pub fn fanout_seal(
    key: &[u8; 32],
    plaintext: &[u8],
) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), EncryptError> {
    crate::fanout::seal_body(key, plaintext)
}

/// One sender-key chain step (PROTOCOL.md §17.2): from the chain key for iteration `i`, the
/// message key `MK_i = HMAC-SHA-256(CK_i, 0x01)`, the AES-256-GCM key and nonce expanded from
/// it, and `CK_{i+1} = HMAC-SHA-256(CK_i, 0x02)`. For vectors.
#[must_use]
pub fn sender_key_step(chain_key: &[u8; 32]) -> SenderKeyStep {
    let (mk, next) = crate::kdf::ChainKey::from_bytes(*chain_key).step();
    let aead = mk.sender_key_aead_key();
    SenderKeyStep {
        message_key: Zeroizing::new(*mk.as_bytes()),
        aes_key: Zeroizing::new(aead.key),
        nonce: aead.nonce,
        next_chain_key: Zeroizing::new(*next.as_bytes()),
    }
}

/// The output of [`sender_key_step`].
pub struct SenderKeyStep {
    /// `MK_i`.
    pub message_key: Zeroizing<[u8; 32]>,
    /// AES-256-GCM key expanded from `MK_i`.
    pub aes_key: Zeroizing<[u8; 32]>,
    /// AES-256-GCM nonce expanded from `MK_i`.
    pub nonce: [u8; 12],
    /// `CK_{i+1}`.
    pub next_chain_key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for SenderKeyStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SenderKeyStep(<redacted>)")
    }
}

/// A signed group message (PROTOCOL.md §17.3) from explicit inputs: `sender` is the sending
/// device (bound in the AAD), `chain_key` the chain key for `iteration`, `signing_seed` the
/// sender key's Ed25519 seed. For vectors; never reuse
/// a (chain key, iteration) pair for two plaintexts.
#[must_use]
pub fn group_seal(
    group_id: crate::group::GroupId,
    sender: &crate::book::Address,
    key_id: u32,
    iteration: u32,
    chain_key: &[u8; 32],
    signing_seed: &[u8; 32],
    plaintext: &[u8],
) -> Vec<u8> {
    let (mk, _) = crate::kdf::ChainKey::from_bytes(*chain_key).step();
    let signing = ed25519_dalek::SigningKey::from_bytes(signing_seed);
    crate::group::seal_message(
        group_id, sender, key_id, iteration, &mk, &signing, plaintext,
    )
}

/// The Ed25519 public key of a sender key's signing seed.
#[must_use]
pub fn sender_key_signing_public(signing_seed: &[u8; 32]) -> [u8; 32] {
    ed25519_dalek::SigningKey::from_bytes(signing_seed)
        .verifying_key()
        .to_bytes()
}

/// A sender-key distribution message (PROTOCOL.md §17.4) from explicit inputs, for vectors.
#[must_use]
pub fn sender_key_distribution(
    group_id: crate::group::GroupId,
    key_id: u32,
    iteration: u32,
    chain_key: &[u8; 32],
    signing_seed: &[u8; 32],
    previous: Option<crate::group::PreviousKey>,
    lineage: u32,
) -> Zeroizing<Vec<u8>> {
    crate::group::encode_distribution(
        group_id,
        key_id,
        iteration,
        &crate::kdf::ChainKey::from_bytes(*chain_key),
        &ed25519_dalek::SigningKey::from_bytes(signing_seed).verifying_key(),
        previous,
        lineage,
    )
}

/// [`crate::sealed::seal`] without its sender-side checks (a canonical certificate that
/// certifies `sender_identity`) and without a decoy: lets tests play a misbehaving sender.
///
/// # Errors
/// As [`crate::sealed::seal`].
pub fn seal_unchecked(
    rng: &mut (impl rand_core::CryptoRng + ?Sized),
    sender_identity: &IdentityKeyPair,
    certificate: &[u8],
    kind: crate::envelope::EnvelopeKind,
    content: &[u8],
    recipients: &[crate::sealed::SealedRecipient<'_>],
) -> Result<Vec<u8>, EncryptError> {
    crate::sealed::seal_inner(
        rng,
        sender_identity,
        certificate,
        kind,
        content,
        recipients,
        None,
    )
}
