//! Identity keys and X25519 keys (PROTOCOL.md §3).

use core::fmt;

use curve25519_dalek::edwards::CompressedEdwardsY;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRng;
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey as XPublic, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

use crate::error::KeyError;

/// Type byte of an encoded X25519 public key, `EncodeX` (PROTOCOL.md §3.1).
pub(crate) const X25519_TYPE: u8 = 0x05;
/// Type byte of an encoded Ed25519 identity key, `EncodeEd` (PROTOCOL.md §3.1).
pub(crate) const ED25519_TYPE: u8 = 0xED;

/// A device's long-term identity key pair: an Ed25519 seed (PROTOCOL.md §3.2).
///
/// The same seed signs prekeys (Ed25519, RFC 8032) and, through its X25519 form
/// `clamp(SHA-512(seed)[0..32])`, takes part in X3DH. Not `Clone`: there is one owner.
/// Persist it with [`IdentityKeyPair::to_seed`] (the caller encrypts it at rest).
///
/// # Example
/// ```
/// use confidant::{IdentityKeyPair, PreKeyBundle, PreKeys, Timestamp};
/// # use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};
/// # let mut rng = ChaCha20Rng::seed_from_u64(7);
/// let identity = IdentityKeyPair::generate(&mut rng);
/// let seed = identity.to_seed(); // store it encrypted at rest; wiped on drop
///
/// // After a restart: the same identity, which signs for the same public key.
/// let restored = IdentityKeyPair::from_seed(&seed);
/// assert_eq!(restored.public(), identity.public());
/// let prekeys = PreKeys::new(&mut rng, &restored, Timestamp(1_700_000_000_000));
/// let bundle = PreKeyBundle::new(restored.public(), prekeys.signed_prekey(), None);
/// assert!(bundle.verify_for(&identity.public()).is_ok());
/// ```
pub struct IdentityKeyPair {
    signing: SigningKey,
    public: IdentityKey,
}

impl IdentityKeyPair {
    /// Generates a fresh identity from 32 bytes of `rng`.
    pub fn generate(rng: &mut (impl CryptoRng + ?Sized)) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        Self::from_seed(&seed)
    }

    /// Rebuilds an identity from its 32-byte Ed25519 seed.
    #[must_use]
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(seed);
        let verifying = signing.verifying_key();
        let public = IdentityKey {
            ed: verifying.to_bytes(),
            x: verifying.to_montgomery().to_bytes(),
        };
        Self { signing, public }
    }

    /// The 32-byte seed, for the caller to persist (encrypted at rest).
    #[must_use]
    pub fn to_seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// The public identity key.
    #[must_use]
    pub fn public(&self) -> IdentityKey {
        self.public
    }

    /// Ed25519 signature (RFC 8032, deterministic) over `message`.
    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// The X25519 form of the identity secret: `SHA-512(seed)[0..32]`, clamped by X25519.
    pub(crate) fn dh_secret(&self) -> StaticSecret {
        let mut bytes = self.signing.to_scalar_bytes();
        let secret = StaticSecret::from(bytes);
        bytes.zeroize();
        secret
    }
}

impl fmt::Debug for IdentityKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// A public identity key: an Ed25519 public key (PROTOCOL.md §3.2).
///
/// Construction checks that the encoding is canonical, decodes to a curve point, is not of
/// small order and lies in the prime-order subgroup, and so has a valid X25519 form
/// `u = (1 + y) / (1 - y)` (PROTOCOL.md §3.2). One exception: the identity keys of a
/// [`Session`](crate::Session) rebuilt by `Session::restore` carry both forms as the snapshot
/// recorded them, unchecked beyond their lengths and the X25519 form's byte checks
/// (PROTOCOL.md §10.1); a snapshot is the caller's own authenticated state. Equality, ordering
/// and hashing compare both forms, so such a key never equals a validated key it does not match.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityKey {
    ed: [u8; 32],
    x: [u8; 32],
}

impl IdentityKey {
    /// Parses a 32-byte Ed25519 public key.
    ///
    /// # Errors
    /// [`KeyError`] if the bytes are not a canonical, valid, non-small-order Ed25519 point.
    ///
    /// # Example
    /// ```
    /// use confidant::{IdentityKey, IdentityKeyPair, KeyError};
    /// # use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};
    /// # let mut rng = ChaCha20Rng::seed_from_u64(7);
    /// let key = IdentityKeyPair::generate(&mut rng).public();
    /// assert_eq!(IdentityKey::from_bytes(&key.to_bytes())?, key);
    ///
    /// assert_eq!(IdentityKey::from_bytes(&[0u8; 31]), Err(KeyError::Length));
    /// // The neutral point (y = 1) has small order: DH with it would be non-contributory.
    /// let mut neutral = [0u8; 32];
    /// neutral[0] = 1;
    /// assert_eq!(IdentityKey::from_bytes(&neutral), Err(KeyError::SmallOrder));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let ed: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Length)?;
        let point = CompressedEdwardsY(ed)
            .decompress()
            .ok_or(KeyError::Invalid)?;
        if point.compress().to_bytes() != ed {
            return Err(KeyError::Invalid);
        }
        let verifying = VerifyingKey::from_bytes(&ed).map_err(|_| KeyError::Invalid)?;
        if verifying.is_weak() {
            return Err(KeyError::SmallOrder);
        }
        // As libsodium's crypto_sign_ed25519_pk_to_curve25519: only prime-order-subgroup points,
        // so `A` and `A + T` (T of small order) cannot pose as two identities.
        if !point.is_torsion_free() {
            return Err(KeyError::Torsion);
        }
        let x = verifying.to_montgomery().to_bytes();
        Ok(Self { ed, x })
    }

    /// Rebuilds a key from both forms as a snapshot recorded them (PROTOCOL.md §10.1): lengths
    /// and the X25519 form's cheap checks (canonical, not of small order) only. The curve
    /// arithmetic of [`IdentityKey::from_bytes`] ran when the key first entered the state; a
    /// snapshot is the caller's own authenticated state, and a session compares and binds
    /// these bytes (the associated data, the book's device key) rather than computing with them.
    pub(crate) fn from_recorded(ed: &[u8], x: &[u8]) -> Result<Self, KeyError> {
        let ed: [u8; 32] = ed.try_into().map_err(|_| KeyError::Length)?;
        let x: [u8; 32] = x.try_into().map_err(|_| KeyError::Length)?;
        if !is_canonical_u(&x) {
            return Err(KeyError::Invalid);
        }
        if is_small_order_u(&x) {
            return Err(KeyError::SmallOrder);
        }
        Ok(Self { ed, x })
    }

    /// The 32-byte Ed25519 encoding.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; 32] {
        self.ed
    }

    /// The X25519 form (birational map), used for DH in X3DH.
    #[must_use]
    pub fn x25519(&self) -> [u8; 32] {
        self.x
    }

    /// `EncodeEd(IK) = 0xED || IK` (PROTOCOL.md §3.1).
    pub(crate) fn encode(&self) -> [u8; 33] {
        let mut out = [0u8; 33];
        out[0] = ED25519_TYPE;
        out[1..].copy_from_slice(&self.ed);
        out
    }

    /// Strict RFC 8032 verification of `signature` over `message`.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(sig) = <[u8; 64]>::try_from(signature) else {
            return false;
        };
        let Ok(vk) = VerifyingKey::from_bytes(&self.ed) else {
            return false;
        };
        vk.verify_strict(message, &Signature::from_bytes(&sig))
            .is_ok()
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityKey({})", Hex(&self.ed))
    }
}

/// A validated X25519 public key (PROTOCOL.md §3.3): canonical (`u < 2^255 - 19`) and not of
/// small order. Ratchet keys in headers are not validated this way; their DH output is checked
/// instead.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Parses and validates 32 raw bytes.
    ///
    /// # Errors
    /// [`KeyError`] on a wrong length, a non-canonical encoding or a point of small order.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let u: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Length)?;
        if !is_canonical_u(&u) {
            return Err(KeyError::Invalid);
        }
        if is_small_order_u(&u) {
            return Err(KeyError::SmallOrder);
        }
        Ok(Self(u))
    }

    /// The raw 32 bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    pub(crate) fn from_secret(secret: &StaticSecret) -> Self {
        Self(XPublic::from(secret).to_bytes())
    }

    /// `EncodeX(pk) = 0x05 || pk` (PROTOCOL.md §3.1), the message a signed prekey signature covers.
    pub(crate) fn encode(&self) -> [u8; 33] {
        let mut out = [0u8; 33];
        out[0] = X25519_TYPE;
        out[1..].copy_from_slice(&self.0);
        out
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", Hex(&self.0))
    }
}

/// X25519 with the contributory check of PROTOCOL.md §3.3: an all-zero output is an error.
pub(crate) fn dh(secret: &StaticSecret, public: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
    let shared = secret.diffie_hellman(&XPublic::from(*public));
    if shared.was_contributory() {
        Some(Zeroizing::new(shared.to_bytes()))
    } else {
        None
    }
}

/// A fresh X25519 secret: 32 bytes of `rng`, clamped by X25519 (PROTOCOL.md §3.3).
pub(crate) fn generate_x25519(rng: &mut (impl CryptoRng + ?Sized)) -> StaticSecret {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(bytes.as_mut());
    StaticSecret::from(*bytes)
}

/// `u < 2^255 - 19` with the top bit clear.
fn is_canonical_u(u: &[u8; 32]) -> bool {
    // p = 2^255 - 19 little-endian: ed ff .. ff 7f. Non-canonical iff u >= p.
    if u[31] & 0x80 != 0 {
        return false;
    }
    let top_is_max = u[31] == 0x7f && u[1..31].iter().all(|&b| b == 0xff);
    !(top_is_max && u[0] >= 0xed)
}

/// The canonical u-coordinates of every point of order dividing 8, on the curve (orders 2, 4
/// and 8) and on its twist (order 4): 0, 1, two points of order 8, and p - 1. Non-canonical
/// encodings are rejected before this check. (The same list as libsodium's blocklist.)
const SMALL_ORDER_U: [[u8; 32]; 5] = [
    [0; 32],
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ],
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ],
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ],
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
];

/// True if the canonical `u` is a point of order dividing 8 (on the curve or the twist).
fn is_small_order_u(u: &[u8; 32]) -> bool {
    SMALL_ORDER_U
        .iter()
        .fold(subtle::Choice::from(0), |acc, bad| acc | bad.ct_eq(u))
        .into()
}

/// Lower-case hex for `Debug` of public values.
pub(crate) struct Hex<'a>(pub(crate) &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use curve25519_dalek::montgomery::MontgomeryPoint;
    use curve25519_dalek::scalar::Scalar;

    use super::*;

    fn unhex(s: &str) -> [u8; 32] {
        let v: Vec<u8> = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect();
        v.try_into().unwrap()
    }

    /// The small-order and non-canonical u-coordinates listed by libsodium and RFC 7748 §6.1.
    #[test]
    fn rejects_small_order_and_non_canonical_x25519_keys() {
        let bad = [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0100000000000000000000000000000000000000000000000000000000000000",
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "cdeb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880",
            "4c9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f11d7",
            "d9ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "daffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "dbffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        ];
        for b in bad {
            assert!(PublicKey::from_bytes(&unhex(b)).is_err(), "{b} accepted");
        }
        // p - 1 is canonical but of order 2 (u = -1); the first five are small order.
        assert_eq!(
            PublicKey::from_bytes(&unhex(bad[4])),
            Err(KeyError::SmallOrder)
        );
        assert_eq!(
            PublicKey::from_bytes(&unhex(bad[5])),
            Err(KeyError::Invalid)
        );
        assert_eq!(PublicKey::from_bytes(&[9u8; 31]), Err(KeyError::Length));
        let mut base = [0u8; 32];
        base[0] = 9;
        assert!(PublicKey::from_bytes(&base).is_ok());
    }

    /// The blocklist is exactly the set of canonical u whose point has order dividing 8: each
    /// listed u is annihilated by 8, and random public keys are neither listed nor annihilated.
    #[test]
    fn small_order_list_matches_multiplication_by_eight() {
        let eight = Scalar::from(8u8);
        for u in SMALL_ORDER_U {
            assert_eq!((MontgomeryPoint(u) * eight).to_bytes(), [0u8; 32]);
        }
        for i in 0..64u8 {
            let u = PublicKey::from_secret(&StaticSecret::from([i; 32])).to_bytes();
            assert!(!is_small_order_u(&u));
            assert_ne!((MontgomeryPoint(u) * eight).to_bytes(), [0u8; 32]);
        }
    }

    #[test]
    fn identity_dh_forms_agree() {
        let alice = IdentityKeyPair::from_seed(&[7u8; 32]);
        let secret = alice.dh_secret();
        assert_eq!(
            PublicKey::from_secret(&secret).to_bytes(),
            alice.public().x25519()
        );
        let parsed = IdentityKey::from_bytes(&alice.public().to_bytes()).unwrap();
        assert_eq!(parsed, alice.public());
    }

    #[test]
    fn rejects_small_order_and_non_canonical_identity_keys() {
        // Ed25519 identity point (0, 1) and a point of order 2 (0, -1).
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(
            IdentityKey::from_bytes(&identity),
            Err(KeyError::SmallOrder)
        );
        let minus_one = unhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f");
        assert_eq!(
            IdentityKey::from_bytes(&minus_one),
            Err(KeyError::SmallOrder)
        );
        // A valid key plus a point of order 8 is rejected; the key itself is accepted.
        let key = IdentityKeyPair::from_seed(&[9u8; 32]).public();
        let point = CompressedEdwardsY(key.to_bytes()).decompress().unwrap();
        let torsion = curve25519_dalek::constants::EIGHT_TORSION[1];
        let mixed = (point + torsion).compress().to_bytes();
        assert_eq!(IdentityKey::from_bytes(&mixed), Err(KeyError::Torsion));
        assert!(IdentityKey::from_bytes(&key.to_bytes()).is_ok());
        // y = p + 1 encodes the identity non-canonically.
        let non_canonical =
            unhex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f");
        assert!(IdentityKey::from_bytes(&non_canonical).is_err());
    }
}
