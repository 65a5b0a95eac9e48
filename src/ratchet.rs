//! The Double Ratchet (PROTOCOL.md §5), exactly PROFILE §4, with a transactional decrypt.

use rand_core::CryptoRng;
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::aead;
use crate::error::{DecodeError, DecryptError, EncryptError};
use crate::kdf::{ChainKey, MessageKey, RootKey};
use crate::keys::{self, PublicKey};
use crate::limits::{MAX_PLAINTEXT, MAX_SKIP};
use crate::skipped::SkippedKeys;

/// Length of the fixed binary header `dh || u32be(pn) || u32be(n)` (PROTOCOL.md §5.3).
pub(crate) const HEADER_LEN: usize = 40;

/// A parsed message header (PROTOCOL.md §5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) dh: [u8; 32],
    pub(crate) pn: u32,
    pub(crate) n: u32,
}

impl Header {
    pub(crate) fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..32].copy_from_slice(&self.dh);
        out[32..36].copy_from_slice(&self.pn.to_be_bytes());
        out[36..].copy_from_slice(&self.n.to_be_bytes());
        out
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let bytes: &[u8; HEADER_LEN] = bytes
            .try_into()
            .map_err(|_| DecodeError::InvalidField("header"))?;
        let (dh, counters) = bytes.split_at(32);
        let (pn, n) = counters.split_at(4);
        Ok(Self {
            dh: crate::kdf::to32(dh),
            pn: u32::from_be_bytes(
                pn.try_into()
                    .map_err(|_| DecodeError::InvalidField("header"))?,
            ),
            n: u32::from_be_bytes(
                n.try_into()
                    .map_err(|_| DecodeError::InvalidField("header"))?,
            ),
        })
    }
}

/// An X25519 ratchet key pair (`DHs`).
pub(crate) struct RatchetKeyPair {
    pub(crate) secret: StaticSecret,
    pub(crate) public: [u8; 32],
}

impl RatchetKeyPair {
    pub(crate) fn from_secret(secret: StaticSecret) -> Self {
        let public = PublicKey::from_secret(&secret).to_bytes();
        Self { secret, public }
    }

    /// A key pair as a snapshot recorded it (PROTOCOL.md §10.1): the public key is taken as
    /// stored, not recomputed (a mismatched pair only makes the peer reject what it sends).
    pub(crate) fn from_recorded(secret: StaticSecret, public: [u8; 32]) -> Self {
        Self { secret, public }
    }

    fn generate(rng: &mut (impl CryptoRng + ?Sized)) -> Self {
        Self::from_secret(keys::generate_x25519(rng))
    }
}

/// Double Ratchet state of PROFILE §4: `DHs, DHr, RK, CKs, CKr, Ns, Nr, PN, MKSKIPPED`, plus the
/// associated data fixed at session setup.
pub(crate) struct Ratchet {
    pub(crate) ad: Vec<u8>,
    pub(crate) root: RootKey,
    pub(crate) dhs: RatchetKeyPair,
    pub(crate) dhr: Option<[u8; 32]>,
    pub(crate) cks: Option<ChainKey>,
    pub(crate) ckr: Option<ChainKey>,
    pub(crate) ns: u32,
    pub(crate) nr: u32,
    pub(crate) pn: u32,
    /// `MKSKIPPED`, bounded, oldest insertion evicted first (PROTOCOL.md §5.4).
    pub(crate) skipped: SkippedKeys,
}

/// Output of [`Ratchet::encrypt`].
pub(crate) struct Encrypted {
    pub(crate) header: [u8; HEADER_LEN],
    pub(crate) ciphertext: Vec<u8>,
    pub(crate) message_key: MessageKey,
}

/// Output of a successful decrypt, with the message key for vector checks.
pub(crate) struct Decrypted {
    pub(crate) plaintext: Zeroizing<Vec<u8>>,
    pub(crate) message_key: MessageKey,
}

impl Ratchet {
    /// `RatchetInitAlice` (PROTOCOL.md §5.1): draws `DHs` from `rng`, then
    /// `RK, CKs = KDF_RK(SK, DH(DHs, SPK_B))`. `None` if the DH is non-contributory.
    pub(crate) fn init_alice(
        rng: &mut (impl CryptoRng + ?Sized),
        shared_secret: &RootKey,
        ad: Vec<u8>,
        bob_ratchet_key: &[u8; 32],
    ) -> Option<Self> {
        let dhs = RatchetKeyPair::generate(rng);
        let dh_out = keys::dh(&dhs.secret, bob_ratchet_key)?;
        let (root, cks) = shared_secret.step(&dh_out);
        Some(Self {
            ad,
            root,
            dhs,
            dhr: Some(*bob_ratchet_key),
            cks: Some(cks),
            ckr: None,
            ns: 0,
            nr: 0,
            pn: 0,
            skipped: SkippedKeys::default(),
        })
    }

    /// `RatchetInitBob` (PROTOCOL.md §5.1): `DHs = SPK_B`, `RK = SK`, no chains.
    pub(crate) fn init_bob(
        shared_secret: &RootKey,
        ad: Vec<u8>,
        signed_prekey: StaticSecret,
    ) -> Self {
        Self {
            ad,
            root: shared_secret.duplicate(),
            dhs: RatchetKeyPair::from_secret(signed_prekey),
            dhr: None,
            cks: None,
            ckr: None,
            ns: 0,
            nr: 0,
            pn: 0,
            skipped: SkippedKeys::default(),
        }
    }

    /// Runs `f` on `AD || header`, assembled on the stack when it fits (the usual 66-byte `AD`),
    /// so the hot path allocates nothing for it.
    fn with_aad<R>(&self, header: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
        let len = self.ad.len() + header.len();
        let mut stack = [0u8; 256];
        let mut heap = Vec::new();
        let buf = match stack.get_mut(..len) {
            Some(buf) => buf,
            None => {
                heap.resize(len, 0);
                heap.as_mut_slice()
            }
        };
        let (ad, rest) = buf.split_at_mut(self.ad.len());
        ad.copy_from_slice(&self.ad);
        rest.copy_from_slice(header);
        f(buf)
    }

    /// `RatchetEncrypt` (PROTOCOL.md §5.3).
    pub(crate) fn encrypt(&mut self, plaintext: &[u8]) -> Result<Encrypted, EncryptError> {
        let mut header_out = [0u8; HEADER_LEN];
        let (ciphertext, message_key) = self.encrypt_framed(plaintext, |header, len| {
            header_out = *header;
            Vec::with_capacity(len)
        })?;
        Ok(Encrypted {
            header: header_out,
            ciphertext,
            message_key,
        })
    }

    /// `RatchetEncrypt` writing into the buffer `frame` returns for the header and the
    /// ciphertext length: the ciphertext is appended to it (the whole wire message in one
    /// allocation). Returns the buffer and the message key.
    pub(crate) fn encrypt_framed(
        &mut self,
        plaintext: &[u8],
        frame: impl FnOnce(&[u8; HEADER_LEN], usize) -> Vec<u8>,
    ) -> Result<(Vec<u8>, MessageKey), EncryptError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(EncryptError::TooLarge {
                len: plaintext.len(),
                limit: MAX_PLAINTEXT,
            });
        }
        let cks = self.cks.as_mut().ok_or(EncryptError::NotReady)?;
        let next_ns = self.ns.checked_add(1).ok_or(EncryptError::ChainExhausted)?;
        // Nothing below can fail: the chain advances in place.
        let message_key = cks.advance();
        let header = Header {
            dh: self.dhs.public,
            pn: self.pn,
            n: self.ns,
        }
        .to_bytes();
        let mut out = frame(&header, plaintext.len() + aead::TAG_LEN);
        self.with_aad(&header, |aad| {
            aead::seal_into(&message_key.aead_key(), aad, plaintext, &mut out);
        });
        self.ns = next_ns;
        Ok((out, message_key))
    }

    /// `RatchetDecrypt` (PROTOCOL.md §5.4). Transactional: every new value is derived on the
    /// side and the state is written only after the AEAD tag verified. In particular the new
    /// sending ratchet key is drawn from `rng` only after success, so a rejected message
    /// consumes no randomness.
    pub(crate) fn decrypt(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        header_bytes: &[u8],
        ciphertext: &[u8],
    ) -> Result<Decrypted, DecryptError> {
        self.decrypt_checked(rng, header_bytes, ciphertext, |_| true)
    }

    /// As [`Ratchet::decrypt`], and `check` must also accept the plaintext before anything is
    /// committed: a rejected plaintext is [`DecryptError::Unauthenticated`] with the state
    /// unchanged (used to bind a fan-out key entry to its body, PROTOCOL.md §16).
    pub(crate) fn decrypt_checked(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        header_bytes: &[u8],
        ciphertext: &[u8],
        check: impl FnOnce(&[u8]) -> bool,
    ) -> Result<Decrypted, DecryptError> {
        let header = Header::from_bytes(header_bytes)?;
        let open = |key: &MessageKey, aad: &[u8]| {
            aead::open(&key.aead_key(), aad, ciphertext).ok_or(DecryptError::Unauthenticated)
        };
        // Each path below opens exactly once, so `check` runs at most once.
        let mut check = Some(check);
        let mut accept = |plaintext: Zeroizing<Vec<u8>>| {
            let ok = check.take().is_some_and(|check| check(&plaintext));
            if ok {
                Ok(plaintext)
            } else {
                Err(DecryptError::Unauthenticated)
            }
        };

        // TrySkippedMessageKeys, first, as in the spec (an O(log n) lookup).
        if let Some(key) = self.skipped.get(&header.dh, header.n) {
            let plaintext = accept(self.with_aad(header_bytes, |aad| open(key, aad))?)?;
            let message_key = self
                .skipped
                .remove(&header.dh, header.n)
                .ok_or(DecryptError::Unauthenticated)?;
            return Ok(Decrypted {
                plaintext,
                message_key,
            });
        }

        if self.dhr == Some(header.dh) {
            if header.n < self.nr {
                return Err(DecryptError::Duplicate { counter: header.n });
            }
            check_skip(self.nr, header.n)?;
            let ckr = self.ckr.as_ref().ok_or(DecryptError::Unauthenticated)?;
            let (skipped, message_key, next_ck) = derive_until(ckr, self.nr, header.n);
            let plaintext = accept(self.with_aad(header_bytes, |aad| open(&message_key, aad))?)?;
            // Commit.
            self.store_skipped(header.dh, skipped);
            self.ckr = Some(next_ck);
            self.nr = header.n.saturating_add(1);
            return Ok(Decrypted {
                plaintext,
                message_key,
            });
        }

        // A new ratchet key: SkipMessageKeys(PN), DHRatchet, SkipMessageKeys(n). Both bounds are
        // checked first; the old chain's keys are derived only once the message authenticated.
        check_skip(self.nr, header.pn)?;
        check_skip(0, header.n)?;
        let dh_recv =
            keys::dh(&self.dhs.secret, &header.dh).ok_or(DecryptError::Unauthenticated)?;
        let (root_mid, ckr_new) = self.root.step(&dh_recv);
        let (skipped, message_key, next_ck) = derive_until(&ckr_new, 0, header.n);
        let plaintext = accept(self.with_aad(header_bytes, |aad| open(&message_key, aad))?)?;
        // Authenticated: now draw the new sending key pair (second half of DHRatchet).
        let dhs_new = RatchetKeyPair::generate(rng);
        let dh_send = keys::dh(&dhs_new.secret, &header.dh).ok_or(DecryptError::Unauthenticated)?;
        let (root_new, cks_new) = root_mid.step(&dh_send);
        // Commit, in the spec's order: the old chain's keys up to PN, then the new chain's.
        if let (Some(ckr), Some(dhr)) = (&self.ckr, self.dhr) {
            let old_chain = derive_skipped(ckr, self.nr, header.pn);
            self.store_skipped(dhr, old_chain);
        }
        self.store_skipped(header.dh, skipped);
        self.pn = self.ns;
        self.ns = 0;
        self.nr = header.n.saturating_add(1);
        self.dhr = Some(header.dh);
        self.ckr = Some(next_ck);
        self.dhs = dhs_new;
        self.root = root_new;
        self.cks = Some(cks_new);
        Ok(Decrypted {
            plaintext,
            message_key,
        })
    }

    fn store_skipped(&mut self, dh: [u8; 32], keys: Vec<(u32, MessageKey)>) {
        for (n, key) in keys {
            self.skipped.insert(dh, n, key);
        }
    }
}

/// `SkipMessageKeys` bound (PROTOCOL.md §5.4): error if `Nr + MAX_SKIP < until`.
fn check_skip(nr: u32, until: u32) -> Result<(), DecryptError> {
    if u64::from(nr) + u64::from(MAX_SKIP) < u64::from(until) {
        return Err(DecryptError::TooFarAhead {
            gap: u64::from(until) - u64::from(nr),
            limit: MAX_SKIP,
        });
    }
    Ok(())
}

/// Message keys `from..until` of a chain (none if `until <= from`) and the chain key after them.
fn skip_chain(ck: &ChainKey, from: u32, until: u32) -> (Vec<(u32, MessageKey)>, ChainKey) {
    let mut out = Vec::new();
    let mut ck = ck.duplicate();
    for n in from..until {
        let (mk, next) = ck.step();
        out.push((n, mk));
        ck = next;
    }
    (out, ck)
}

/// Message keys `from..until` of a chain: what `SkipMessageKeys(until)` stores.
fn derive_skipped(ck: &ChainKey, from: u32, until: u32) -> Vec<(u32, MessageKey)> {
    skip_chain(ck, from, until).0
}

/// Skipped keys `from..n`, the key for `n`, and the chain key after `n`.
fn derive_until(
    ck: &ChainKey,
    from: u32,
    n: u32,
) -> (Vec<(u32, MessageKey)>, MessageKey, ChainKey) {
    let (skipped, ck) = skip_chain(ck, from, n);
    let (mk, next) = ck.step();
    (skipped, mk, next)
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_chacha::rand_core::SeedableRng;

    use super::*;
    use crate::limits::MAX_STORED_SKIPPED;

    fn pair(rng: &mut ChaCha20Rng) -> (Ratchet, Ratchet) {
        let sk = RootKey::from_bytes([3u8; 32]);
        let spk = keys::generate_x25519(rng);
        let spk_pub = PublicKey::from_secret(&spk).to_bytes();
        let alice = Ratchet::init_alice(rng, &sk, b"ad".to_vec(), &spk_pub).unwrap();
        let bob = Ratchet::init_bob(&sk, b"ad".to_vec(), spk);
        (alice, bob)
    }

    /// Sends `count` messages from `tx` and returns them.
    fn burst(tx: &mut Ratchet, count: u32) -> Vec<Encrypted> {
        (0..count)
            .map(|i| tx.encrypt(&i.to_be_bytes()).unwrap())
            .collect()
    }

    #[test]
    fn skipped_store_is_bounded_and_evicts_oldest_first() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let (mut alice, mut bob) = pair(&mut rng);
        let mut chains = Vec::new();
        for round in 0..3 {
            let msgs = burst(&mut alice, MAX_SKIP + 1);
            let last = msgs.last().unwrap();
            bob.decrypt(&mut rng, &last.header, &last.ciphertext)
                .unwrap();
            assert_eq!(
                bob.skipped.len(),
                (usize::try_from(MAX_SKIP).unwrap() * (round + 1)).min(MAX_STORED_SKIPPED)
            );
            let reply = bob.encrypt(b"turn").unwrap();
            alice
                .decrypt(&mut rng, &reply.header, &reply.ciphertext)
                .unwrap();
            chains.push(msgs);
        }
        assert_eq!(bob.skipped.len(), MAX_STORED_SKIPPED);
        // The first chain's keys were evicted; its messages now fail authentication (a new
        // ratchet step against an old key) and leave the state unchanged.
        let old = &chains[0][0];
        let before_root = *bob.root.as_bytes();
        assert_eq!(
            bob.decrypt(&mut rng, &old.header, &old.ciphertext).err(),
            Some(DecryptError::Unauthenticated)
        );
        assert_eq!(*bob.root.as_bytes(), before_root);
        assert_eq!(bob.skipped.len(), MAX_STORED_SKIPPED);
        // The second and third chains' keys are all still there.
        for chain in &chains[1..] {
            for m in &chain[..chain.len() - 1] {
                bob.decrypt(&mut rng, &m.header, &m.ciphertext).unwrap();
            }
        }
        assert_eq!(bob.skipped.len(), 0);
    }

    #[test]
    fn skip_limit_is_exact() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let (mut alice, mut bob) = pair(&mut rng);
        let msgs = burst(&mut alice, MAX_SKIP + 2);
        // n = MAX_SKIP + 1 needs MAX_SKIP + 1 skipped keys: rejected; n = MAX_SKIP is accepted.
        let too_far = &msgs[usize::try_from(MAX_SKIP + 1).unwrap()];
        assert_eq!(
            bob.decrypt(&mut rng, &too_far.header, &too_far.ciphertext)
                .err(),
            Some(DecryptError::TooFarAhead {
                gap: u64::from(MAX_SKIP + 1),
                limit: MAX_SKIP
            })
        );
        let edge = &msgs[usize::try_from(MAX_SKIP).unwrap()];
        bob.decrypt(&mut rng, &edge.header, &edge.ciphertext)
            .unwrap();
        assert_eq!(bob.skipped.len(), usize::try_from(MAX_SKIP).unwrap());
    }

    #[test]
    fn failed_decrypt_draws_no_randomness() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let (mut alice, mut bob) = pair(&mut rng);
        let m = alice.encrypt(b"x").unwrap();
        let mut bad = m.ciphertext.clone();
        bad[0] ^= 1;
        let mut probe = rng.clone();
        assert!(bob.decrypt(&mut probe, &m.header, &bad).is_err());
        assert_eq!(probe, rng, "a rejected message consumed randomness");
    }

    #[test]
    fn header_round_trip() {
        let h = Header {
            dh: [5u8; 32],
            pn: 0x0102_0304,
            n: u32::MAX,
        };
        assert_eq!(Header::from_bytes(&h.to_bytes()).unwrap(), h);
        assert!(Header::from_bytes(&[0u8; 39]).is_err());
    }
}
