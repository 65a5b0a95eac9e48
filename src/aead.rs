//! The only place keys and nonces meet AES-256-GCM (PROTOCOL.md §5.3).

use aes_gcm::aead::{Aead, AeadInOut, KeyInit, Nonce, Payload};
use aes_gcm::{Aes256Gcm, Key};
use zeroize::{Zeroize, Zeroizing};

use crate::kdf::AeadKey;

/// The AES-256-GCM tag length.
pub(crate) const TAG_LEN: usize = 16;

/// AES-256-GCM encryption appending `ciphertext || tag` to `out`, so a wire message is built in
/// one buffer (its prefix first, then the ciphertext sealed in place).
pub(crate) fn seal_into(key: &AeadKey, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(key.key));
    let nonce = Nonce::<Aes256Gcm>::from(key.nonce);
    let start = out.len();
    out.extend_from_slice(plaintext);
    let tag = out
        .get_mut(start..)
        .and_then(|buf| cipher.encrypt_inout_detached(&nonce, aad, buf.into()).ok());
    match tag {
        Some(tag) => out.extend_from_slice(&tag),
        // Encryption fails only for inputs beyond GCM's 64 GiB bound, far above MAX_PLAINTEXT;
        // never leave plaintext behind, not even in the spare capacity.
        None => {
            if let Some(tail) = out.get_mut(start..) {
                tail.zeroize();
            }
            out.truncate(start);
        }
    }
}

/// AES-256-GCM encryption; returns `ciphertext || tag`.
pub(crate) fn seal(key: &AeadKey, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
    seal_into(key, aad, plaintext, &mut out);
    out
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
