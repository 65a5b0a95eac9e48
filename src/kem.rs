//! ML-KEM-1024 (FIPS 203) for PQXDH (PROTOCOL.md §13, PROFILE-pqxdh §1): key validation,
//! generation from a 64-byte seed, encapsulation and decapsulation with implicit rejection.

use core::fmt;
use std::sync::OnceLock;

use ml_kem::array::Array;
use ml_kem::{Encapsulate, KeyExport, MlKem1024};
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::error::KeyError;
use crate::keys::Hex;

/// Type byte of an encoded ML-KEM-1024 public key, `EncodeKEM` (PROFILE-pqxdh §2).
pub(crate) const KEM_TYPE: u8 = 0x0A;
/// Length of an ML-KEM-1024 encapsulation key.
pub const KEM_PUBLIC_KEY_LEN: usize = 1568;
/// Length of an ML-KEM-1024 ciphertext.
pub const KEM_CIPHERTEXT_LEN: usize = 1568;
/// Length of an ML-KEM-1024 key-generation seed `d || z`.
pub(crate) const KEM_SEED_LEN: usize = 64;

type EncapsulationKey = ml_kem::EncapsulationKey<MlKem1024>;
type DecapsulationKey = ml_kem::DecapsulationKey<MlKem1024>;

/// A validated ML-KEM-1024 encapsulation key (1568 bytes; the FIPS 203 modulus check passed).
#[derive(Clone, PartialEq, Eq)]
pub struct KemPublicKey(Box<[u8; KEM_PUBLIC_KEY_LEN]>);

impl KemPublicKey {
    /// Parses and validates a raw encapsulation key (no type byte).
    ///
    /// # Errors
    /// [`KeyError::Length`] or [`KeyError::Invalid`] (FIPS 203 encapsulation-key check).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let raw: [u8; KEM_PUBLIC_KEY_LEN] = bytes.try_into().map_err(|_| KeyError::Length)?;
        EncapsulationKey::new(&Array::from(raw)).map_err(|_| KeyError::Invalid)?;
        Ok(Self(Box::new(raw)))
    }

    /// The raw 1568 bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; KEM_PUBLIC_KEY_LEN] {
        &self.0
    }

    /// `EncodeKEM(ek) = 0x0A || ek` (1569 bytes), the message a KEM prekey signature covers.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + KEM_PUBLIC_KEY_LEN);
        out.push(KEM_TYPE);
        out.extend_from_slice(self.0.as_slice());
        out
    }

    /// `(CT, SS) = ML-KEM-1024.Encaps(ek)` with 32 bytes of `rng` as the message `m`. `None`
    /// only if the key fails the FIPS 203 check, which construction already ran: fail closed.
    pub(crate) fn encapsulate(&self, rng: &mut (impl CryptoRng + ?Sized)) -> Option<Encapsulated> {
        let ek = EncapsulationKey::new(&Array::from(*self.0)).ok()?;
        let (ct, ss) = ek.encapsulate_with_rng(rng);
        Some(Encapsulated {
            ciphertext: Box::new(ct.into()),
            shared_secret: Zeroizing::new(ss.into()),
        })
    }
}

/// The result of an ML-KEM-1024 encapsulation: the ciphertext `CT` and the shared secret `SS`.
pub struct Encapsulated {
    /// `CT`, 1568 bytes.
    pub ciphertext: Box<[u8; KEM_CIPHERTEXT_LEN]>,
    /// `SS`, 32 bytes.
    pub shared_secret: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for Encapsulated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encapsulated").finish_non_exhaustive()
    }
}

impl fmt::Debug for KemPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "KemPublicKey({}…)",
            Hex(self.0.get(..8).unwrap_or_default())
        )
    }
}

/// An ML-KEM-1024 decapsulation key, held (and persisted) as its 64-byte FIPS 203 seed `d || z`.
/// [`KemSecret::warm`] keeps the expanded key in memory (wiped on drop), for the key used more
/// than once, the current last-resort KEM prekey: it then pays the expansion (`KeyGen_internal`,
/// about as costly as a decapsulation) once per process instead of once per handshake. Other keys
/// expand for each use and drop the expansion at once.
pub(crate) struct KemSecret {
    seed: Zeroizing<[u8; KEM_SEED_LEN]>,
    expanded: OnceLock<Box<DecapsulationKey>>,
}

impl KemSecret {
    pub(crate) fn generate(rng: &mut (impl CryptoRng + ?Sized)) -> Self {
        let mut seed = Zeroizing::new([0u8; KEM_SEED_LEN]);
        rng.fill_bytes(seed.as_mut());
        Self {
            seed,
            expanded: OnceLock::new(),
        }
    }

    pub(crate) fn from_seed(seed: &[u8; KEM_SEED_LEN]) -> Self {
        Self {
            seed: Zeroizing::new(*seed),
            expanded: OnceLock::new(),
        }
    }

    pub(crate) fn seed(&self) -> &[u8; KEM_SEED_LEN] {
        &self.seed
    }

    /// A fresh expansion, not kept.
    fn fresh(&self) -> DecapsulationKey {
        DecapsulationKey::from_seed(Array::from(*self.seed))
    }

    /// Expands the key and keeps the expansion (for the current last-resort key, used by every
    /// initiator that finds no one-time KEM prekey), so handshakes using it do not pay for it.
    pub(crate) fn warm(&self) {
        let _ = self.expanded.get_or_init(|| Box::new(self.fresh()));
    }

    /// `ML-KEM-1024.KeyGen_internal(d, z)`'s encapsulation key. Does not keep the expansion (one-
    /// time KEM prekeys are published in batches and each used at most once).
    pub(crate) fn public(&self) -> KemPublicKey {
        let ek: [u8; KEM_PUBLIC_KEY_LEN] = match self.expanded.get() {
            Some(dk) => dk.encapsulation_key().to_bytes().into(),
            None => self.fresh().encapsulation_key().to_bytes().into(),
        };
        KemPublicKey(Box::new(ek))
    }

    /// `SS = ML-KEM-1024.Decaps(dk, CT)`, with implicit rejection: a malformed but well-sized
    /// ciphertext yields a pseudorandom secret, and the handshake fails at the first AEAD.
    /// Uses the kept expansion if [`KemSecret::warm`] made one, else expands for this call only
    /// (so unauthenticated initial messages cannot make one-time keys hold expanded secrets).
    pub(crate) fn decapsulate(&self, ciphertext: &[u8; KEM_CIPHERTEXT_LEN]) -> Zeroizing<[u8; 32]> {
        use ml_kem::Decapsulate;
        let ct = Array::from(*ciphertext);
        let ss = match self.expanded.get() {
            Some(dk) => dk.decapsulate(&ct),
            None => self.fresh().decapsulate(&ct),
        };
        Zeroizing::new(ss.into())
    }
}

impl fmt::Debug for KemSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KemSecret(<redacted>)")
    }
}
