//! Every KDF label and chain constant of the pairwise layer, and the KDFs built from them.
//!
//! This is the one file to audit for labels: PROTOCOL.md §2 mirrors it line for line.

use core::fmt;

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// `X3DH_INFO` (PROTOCOL.md §2).
pub(crate) const X3DH_INFO: &[u8] = b"E2EE_X3DH_v1";
/// `PQXDH_INFO`: `info_curve_hash_pqkem` (PROFILE-pqxdh §2, PROTOCOL.md §13.2).
pub(crate) const PQXDH_INFO: &[u8] = b"E2EE_PQXDH_v1_CURVE25519_SHA-256_ML-KEM-1024";
/// `RK_INFO`, the KDF_RK label (PROTOCOL.md §2).
pub(crate) const RK_INFO: &[u8] = b"E2EE_Ratchet_v1";
/// `MK_INFO`, the message-key expansion label (PROTOCOL.md §2).
pub(crate) const MK_INFO: &[u8] = b"E2EE_MessageKeys_v1";
/// `SENDER_KEY_INFO`, the sender-key message-key expansion label (PROTOCOL.md §17.2).
pub(crate) const SENDER_KEY_INFO: &[u8] = b"confidant/sender-key/v1/message";
/// KDF_CK input byte for the message key (PROTOCOL.md §2).
const CK_MESSAGE_BYTE: u8 = 0x01;
/// KDF_CK input byte for the next chain key (PROTOCOL.md §2).
const CK_CHAIN_BYTE: u8 = 0x02;
/// `F`: 32 bytes 0xFF prepended to the X3DH input keying material (PROTOCOL.md §4).
pub(crate) const F: [u8; 32] = [0xFF; 32];
/// The all-zero 32-byte HKDF salt (PROTOCOL.md §4.2, §5.3).
const ZERO_SALT: [u8; 32] = [0; 32];

/// HKDF-SHA-256 with an all-zero 32-byte salt, expanding into `out`.
pub(crate) fn hkdf_zero_salt(ikm: &[u8], info: &[u8], out: &mut [u8]) {
    hkdf(&ZERO_SALT, ikm, info, out);
}

/// HKDF-SHA-256 (RFC 5869). `out` is at most 255 * 32 bytes at every call site (32, 44, 64).
fn hkdf(salt: &[u8], ikm: &[u8], info: &[u8], out: &mut [u8]) {
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    // Cannot fail: every caller asks for at most 64 bytes, far below 255 * HashLen.
    if hk.expand(info, out).is_err() {
        out.zeroize();
    }
}

/// `(HMAC(key, a), HMAC(key, b))`, keying HMAC once: both MACs start from the same inner and
/// outer states, so the second costs two SHA-256 blocks instead of four.
fn hmac_sha256_pair(key: &[u8; 32], a: u8, b: u8) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
    // RFC 2104 pads a key shorter than the 64-byte block with zeros, so keying HMAC with
    // `key || 0^32` through the infallible block-sized constructor is HMAC keyed with `key`.
    let mut block = [0u8; 64];
    if let Some(head) = block.get_mut(..32) {
        head.copy_from_slice(key);
    }
    let keyed = <Hmac<Sha256> as KeyInit>::new(&block.into());
    block.zeroize();
    let finish = |mut mac: Hmac<Sha256>, byte: u8| -> Zeroizing<[u8; 32]> {
        mac.update(&[byte]);
        Zeroizing::new(mac.finalize().into_bytes().into())
    };
    (finish(keyed.clone(), a), finish(keyed, b))
}

macro_rules! secret32 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Zeroize, ZeroizeOnDrop)]
        pub(crate) struct $name(Box<[u8; 32]>);

        impl $name {
            pub(crate) fn from_bytes(bytes: [u8; 32]) -> Self {
                let mut bytes = bytes;
                let out = Self(Box::new(bytes));
                bytes.zeroize();
                out
            }

            pub(crate) fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// An explicit copy, for staged (transactional) updates and snapshots.
            #[allow(dead_code)]
            pub(crate) fn duplicate(&self) -> Self {
                Self(self.0.clone())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }
    };
}

secret32!(
    /// Double Ratchet root key (PROTOCOL.md §5.2).
    RootKey
);
secret32!(
    /// Double Ratchet chain key (PROTOCOL.md §5.2).
    ChainKey
);
secret32!(
    /// Double Ratchet message key (PROTOCOL.md §5.2). Used exactly once.
    MessageKey
);

impl RootKey {
    /// KDF_RK (PROTOCOL.md §5.2): HKDF-SHA-256(salt = rk, IKM = dh_out, info = RK_INFO, L = 64).
    pub(crate) fn step(&self, dh_out: &[u8; 32]) -> (RootKey, ChainKey) {
        let mut okm = [0u8; 64];
        hkdf(self.as_bytes(), dh_out, RK_INFO, &mut okm);
        let (rk, ck) = okm.split_at(32);
        let out = (
            RootKey::from_bytes(to32(rk)),
            ChainKey::from_bytes(to32(ck)),
        );
        okm.zeroize();
        out
    }
}

impl ChainKey {
    /// KDF_CK (PROTOCOL.md §5.2): `MK = HMAC(ck, 0x01)`, `CK' = HMAC(ck, 0x02)`.
    pub(crate) fn step(&self) -> (MessageKey, ChainKey) {
        let (mk, ck) = hmac_sha256_pair(self.as_bytes(), CK_MESSAGE_BYTE, CK_CHAIN_BYTE);
        (MessageKey::from_bytes(*mk), ChainKey::from_bytes(*ck))
    }

    /// KDF_CK in place: returns `MK` and overwrites this chain key with `CK'` (a send, which
    /// cannot fail once it has started, needs no staged copy).
    pub(crate) fn advance(&mut self) -> MessageKey {
        let (mk, next) = hmac_sha256_pair(self.as_bytes(), CK_MESSAGE_BYTE, CK_CHAIN_BYTE);
        *self.0 = *next;
        MessageKey::from_bytes(*mk)
    }
}

/// AES-256-GCM key and nonce expanded from a message key (PROTOCOL.md §5.3).
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct AeadKey {
    pub(crate) key: [u8; 32],
    pub(crate) nonce: [u8; 12],
}

impl MessageKey {
    /// `okm = HKDF-SHA-256(salt = 0^32, IKM = MK, info = MK_INFO, L = 44)`.
    pub(crate) fn aead_key(&self) -> AeadKey {
        self.expand(MK_INFO)
    }

    /// Sender keys (PROTOCOL.md §17.2): as [`MessageKey::aead_key`] with `SENDER_KEY_INFO`.
    pub(crate) fn sender_key_aead_key(&self) -> AeadKey {
        self.expand(SENDER_KEY_INFO)
    }

    /// `key || nonce = HKDF-SHA-256(salt = 0^32, IKM = MK, info, L = 44)`.
    fn expand(&self, info: &[u8]) -> AeadKey {
        let mut okm = [0u8; 44];
        hkdf_zero_salt(self.as_bytes(), info, &mut okm);
        let mut out = AeadKey {
            key: [0; 32],
            nonce: [0; 12],
        };
        out.key.copy_from_slice(okm.get(..32).unwrap_or(&[0; 32]));
        out.nonce.copy_from_slice(okm.get(32..).unwrap_or(&[0; 12]));
        okm.zeroize();
        out
    }
}

/// Copies a slice that is 32 bytes long by construction.
pub(crate) fn to32(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    if let Ok(arr) = <&[u8; 32]>::try_from(bytes) {
        out.copy_from_slice(arr);
    }
    out
}
