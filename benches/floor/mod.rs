//! The primitive floor (shared by the bench files): the bare primitive calls a protocol
//! operation is made of, with the operation's real sizes and labels (PROTOCOL.md §4–§6), and
//! nothing else: no parsing, encoding, state or checks. `floor(op) / op` is how much of an
//! operation is primitive cost; `op / floor(op)` is the overhead reported by `benches/report.sh`.
//!
//! Each bench file includes this module with `#[path]`; not every file uses every function.

#![allow(dead_code)]

use aes_gcm::aead::{Aead, KeyInit, Nonce, Payload};
use aes_gcm::{Aes256Gcm, Key};
use curve25519_dalek::edwards::CompressedEdwardsY;
use ed25519_dalek::{Signature, VerifyingKey};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::hint::black_box;
use x25519_dalek::{PublicKey, StaticSecret};

pub(crate) const RK_INFO: &[u8] = b"E2EE_Ratchet_v1";
pub(crate) const MK_INFO: &[u8] = b"E2EE_MessageKeys_v1";
pub(crate) const X3DH_INFO: &[u8] = b"E2EE_X3DH_v1";
pub(crate) const PQXDH_INFO: &[u8] = b"E2EE_PQXDH_v1_CURVE25519_SHA-256_ML-KEM-1024";
/// `AD = EncodeEd(IK_A) || EncodeEd(IK_B)` (66 bytes) followed by the 40-byte header.
pub(crate) const AAD_LEN: usize = 66 + 40;

/// KDF_CK: two HMAC-SHA-256 of one byte each under one key (PROTOCOL.md §5.2), keyed once.
pub(crate) fn chain_step(ck: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    let keyed = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(ck).unwrap();
    let mac = |mut m: Hmac<Sha256>, byte: u8| {
        m.update(&[byte]);
        let out: [u8; 32] = m.finalize().into_bytes().into();
        out
    };
    (mac(keyed.clone(), 1), mac(keyed, 2))
}

/// HKDF-SHA-256 with `salt`, expanding `N` bytes.
pub(crate) fn hkdf<const N: usize>(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, &mut out)
        .unwrap();
    out
}

/// KDF_RK: HKDF(salt = RK, IKM = DH output, L = 64).
pub(crate) fn kdf_rk(rk: &[u8; 32], dh: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    let okm: [u8; 64] = hkdf(rk, dh, RK_INFO);
    (okm[..32].try_into().unwrap(), okm[32..].try_into().unwrap())
}

/// HKDF(0^32, MK, info, 44) into an AES-256-GCM key and nonce (PROTOCOL.md §5.3).
fn aead(mk: &[u8; 32], info: &[u8]) -> (Aes256Gcm, Nonce<Aes256Gcm>) {
    let okm: [u8; 44] = hkdf(&[0u8; 32], mk, info);
    let key: [u8; 32] = okm[..32].try_into().unwrap();
    let nonce: [u8; 12] = okm[32..].try_into().unwrap();
    (
        Aes256Gcm::new(&Key::<Aes256Gcm>::from(key)),
        Nonce::<Aes256Gcm>::from(nonce),
    )
}

/// AES-256-GCM seal of `msg` with `aad` under the key and nonce a message key expands to.
pub(crate) fn seal(mk: &[u8; 32], info: &[u8], aad: &[u8], msg: &[u8]) -> Vec<u8> {
    let (cipher, nonce) = aead(mk, info);
    cipher.encrypt(&nonce, Payload { msg, aad }).unwrap()
}

/// AES-256-GCM alone: key setup and seal.
pub(crate) fn aes_gcm_seal(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], msg: &[u8]) -> Vec<u8> {
    Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key))
        .encrypt(&Nonce::<Aes256Gcm>::from(*nonce), Payload { msg, aad })
        .unwrap()
}

/// The matching open.
pub(crate) fn open(mk: &[u8; 32], info: &[u8], aad: &[u8], ct: &[u8]) -> Vec<u8> {
    let (cipher, nonce) = aead(mk, info);
    cipher.decrypt(&nonce, Payload { msg: ct, aad }).unwrap()
}

/// One Double Ratchet message on an established chain: chain step, message keys, seal.
pub(crate) fn send(ck: &mut [u8; 32], aad: &[u8], msg: &[u8]) -> Vec<u8> {
    let (mk, next) = chain_step(ck);
    *ck = next;
    seal(&mk, MK_INFO, aad, msg)
}

/// Its receiving side.
pub(crate) fn receive(ck: &mut [u8; 32], aad: &[u8], ct: &[u8]) -> Vec<u8> {
    let (mk, next) = chain_step(ck);
    *ck = next;
    open(&mk, MK_INFO, aad, ct)
}

/// X25519 key generation from 32 bytes (a base-point multiplication).
pub(crate) fn keygen(seed: [u8; 32]) -> (StaticSecret, PublicKey) {
    let s = StaticSecret::from(seed);
    let p = PublicKey::from(&s);
    (s, p)
}

/// One X25519 DH.
pub(crate) fn dh(s: &StaticSecret, p: &PublicKey) -> [u8; 32] {
    s.diffie_hellman(p).to_bytes()
}

/// Identity key validation (PROTOCOL.md §3.2): decompression, and the prime-order check.
pub(crate) fn validate_identity(ed: &[u8; 32]) -> bool {
    CompressedEdwardsY(*ed)
        .decompress()
        .is_some_and(|p| p.is_torsion_free())
}

/// Strict Ed25519 verification.
pub(crate) fn verify(vk: &VerifyingKey, msg: &[u8], sig: &Signature) -> bool {
    vk.verify_strict(black_box(msg), sig).is_ok()
}

/// The receiving half of a DH ratchet step and the message it carries (PROTOCOL.md §5.4): DH
/// with the new remote key, KDF_RK, the message, a fresh key pair, a second DH and KDF_RK.
/// Returns the new root key, sending chain key and key pair.
pub(crate) fn ratchet_receive(
    rk: &[u8; 32],
    dhs: &StaticSecret,
    remote: &PublicKey,
    fresh: [u8; 32],
    aad: &[u8],
    ct: &[u8],
) -> ([u8; 32], [u8; 32], StaticSecret, PublicKey) {
    let (rk1, mut ckr) = kdf_rk(rk, &dh(dhs, remote));
    black_box(receive(&mut ckr, aad, ct));
    let (s, p) = keygen(fresh);
    let (rk2, cks) = kdf_rk(&rk1, &dh(&s, remote));
    (rk2, cks, s, p)
}
