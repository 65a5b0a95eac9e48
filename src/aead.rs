//! The only place keys and nonces meet AES-256-GCM (PROTOCOL.md §5.3).

use aes_gcm::aead::{Aead, KeyInit, Nonce, Payload};
use aes_gcm::{Aes256Gcm, Key};
use zeroize::Zeroizing;

use crate::kdf::AeadKey;

/// AES-256-GCM encryption; returns `ciphertext || tag`.
pub(crate) fn seal(key: &AeadKey, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(key.key));
    let nonce = Nonce::<Aes256Gcm>::from(key.nonce);
    // Encryption fails only for inputs beyond GCM's 64 GiB bound, far above MAX_PLAINTEXT.
    cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .unwrap_or_default()
}

/// AES-256-GCM decryption; `None` on any authentication failure.
pub(crate) fn open(key: &AeadKey, aad: &[u8], ciphertext: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(key.key));
    let nonce = Nonce::<Aes256Gcm>::from(key.nonce);
    cipher
        .decrypt(
            &nonce,
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .ok()
        .map(Zeroizing::new)
}
