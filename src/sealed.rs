//! Sealed sender (PROTOCOL.md §19.3): the sender's certificate and the message travel encrypted
//! to each recipient device's identity key, so the server learns only the recipient. One send to
//! many devices shares one sealed body; each device gets a 48-byte header `C || AT` (and, for a
//! fan-out, its sealed key entry).
//!
//! Per send: `M` is 32 random bytes; `e_seed || K = HKDF(0^32, M, "confidant/sealed/v1/message",
//! 64)`; `e = X25519 clamp(e_seed)`, `E = e·G`; the body is `AES-256-GCM(K, 0^12, "confidant/sealed/
//! v1/body" || E, pad(SealedContent))`. Per recipient device with identity X25519 key `R`:
//! `mask || entry_key = HKDF(0^32, DH(e, R) || E || R, "confidant/sealed/v1/recipient", 64)`,
//! `C = M ⊕ mask`, the sealed entry `AES-256-GCM(entry_key, 0^12, E || C, entry)`, and
//! `AT = HKDF(0^32, DH(S, R) || E || C || S || R || SHA-256(body) || SHA-256(sealed entry),
//! "confidant/sealed/v1/auth", 16)` where `S` is the sender device's identity X25519 key.
//!
//! The recipient recovers `M`, re-derives `E` from it (so every recipient of one send sees the
//! same `E`), opens the body, checks `AT` with the certificate's identity key (which proves the
//! sender holds it and binds the header to this body and entry), and only then validates the
//! certificate chain.
//!
//! ```
//! use confidant::book::Address;
//! use confidant::certificate::{CertificateValidator, SenderCertificate, ServerCertificate};
//! use confidant::envelope::{EnvelopeContent, EnvelopeKind};
//! use confidant::sealed::{self, SealedRecipient};
//! use confidant::{IdentityKeyPair, SealedError, Timestamp, server};
//! # use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};
//! # let mut rng = ChaCha20Rng::seed_from_u64(7);
//! let now = Timestamp(1_700_000_000_000);
//! # let root = IdentityKeyPair::generate(&mut rng);
//! # let server_key = IdentityKeyPair::generate(&mut rng);
//! # let server_cert = ServerCertificate::issue(&root, 1, &server_key.public());
//! # let (alice, bob) = (IdentityKeyPair::generate(&mut rng), IdentityKeyPair::generate(&mut rng));
//! # let a = Address { account: IdentityKeyPair::generate(&mut rng).public(), device: 1 };
//! # let b = Address { account: IdentityKeyPair::generate(&mut rng).public(), device: 1 };
//! // Alice's device `a` holds a sender certificate from the key server (see `certificate`).
//! let expires = now.plus_ms(86_400_000);
//! let cert = SenderCertificate::issue(&server_key, &server_cert, a, &alice.public(), expires);
//! // It seals a message for Bob's device `b` (here opaque bytes; normally a ratchet message).
//! let to_bob = SealedRecipient { address: b, identity_key: bob.public(), entry: None };
//! let (kind, inner) = (EnvelopeKind::Ratchet, b"inner message".to_vec());
//! let upload = sealed::seal(&mut rng, &alice, &cert, kind, &inner, &[to_bob], false)?;
//!
//! // The server splits the upload without any key: it learns the recipient, not the sender.
//! let envelopes = server::split_upload(&upload)?;
//! let [envelope] = envelopes.as_slice() else { unreachable!() };
//! assert_eq!((envelope.recipient, envelope.sender()), (b, None));
//! let EnvelopeContent::Sealed(sealed_part) = &envelope.content else { unreachable!() };
//!
//! // Bob opens it with his identity key; the verified certificate names the sender.
//! let validator = CertificateValidator::new(root.public());
//! let unsealed = sealed::open(&bob, sealed_part, &validator, now)?;
//! assert_eq!(unsealed.sender(), a);
//! assert_eq!(unsealed.content, EnvelopeContent::Ratchet { sender: a, message: inner });
//! // No other device can open it.
//! let eve = IdentityKeyPair::generate(&mut rng);
//! let refused = sealed::open(&eve, sealed_part, &validator, now);
//! assert_eq!(refused.err(), Some(SealedError::Unauthenticated));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! An application opens with [`SessionBook::open_sealed`] instead, which also checks the
//! certified sender against the verified device lists, then hands [`Unsealed::content`] to
//! [`SessionBook::receive`] (or a fan-out or group receive).

use core::fmt;

use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey as XPublic, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

use crate::aead;
use crate::book::Address;
use crate::book::SessionBook;
use crate::certificate::{CertificateValidator, VerifiedSenderCertificate};
use crate::codec::{self, SEALED_UPLOAD_V1};
use crate::envelope::{EnvelopeContent, EnvelopeKind, SEALED_HEADER_LEN, SealedEnvelope};
use crate::error::{DecodeError, EncryptError, SealedError};
use crate::fanout::FanOut;
use crate::group::Distribution;
use crate::kdf::{AeadKey, hkdf_zero_salt};
use crate::keys::{self, IdentityKey, IdentityKeyPair};
use crate::limits::{
    MAX_SEALED_BODY_BYTES, MAX_SEALED_CONTENT_BYTES, MAX_SEALED_ENTRY_BYTES, MAX_UPLOAD_RECIPIENTS,
};
use crate::padding;
use crate::proto::{SealedContentProto, UploadAccountProto, UploadDeviceProto, UploadProto};
use crate::time::Timestamp;

/// `M` expansion label (PROTOCOL.md §19.3).
const MESSAGE_INFO: &[u8] = b"confidant/sealed/v1/message";
/// Per-recipient key label (PROTOCOL.md §19.3).
const RECIPIENT_INFO: &[u8] = b"confidant/sealed/v1/recipient";
/// Authentication-tag label (PROTOCOL.md §19.3).
const AUTH_INFO: &[u8] = b"confidant/sealed/v1/auth";
/// Prefix of the body's associated data (PROTOCOL.md §19.3).
const BODY_AAD_PREFIX: &[u8] = b"confidant/sealed/v1/body";
/// Length of the authentication tag `AT`.
const AT_LEN: usize = 16;

/// One recipient device of a sealed send.
pub struct SealedRecipient<'a> {
    /// The device.
    pub address: Address,
    /// Its identity key, from the account's verified device list.
    pub identity_key: IdentityKey,
    /// Its fan-out key entry (a pairwise message), for [`EnvelopeKind::FanOut`] sends.
    pub entry: Option<&'a [u8]>,
}

impl fmt::Debug for SealedRecipient<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedRecipient")
            .field("address", &self.address)
            .field("entry_len", &self.entry.map(<[u8]>::len))
            .finish()
    }
}

/// The keys derived from `M`.
struct MessageKeys {
    ephemeral: StaticSecret,
    ephemeral_public: [u8; 32],
    body: AeadKey,
}

fn message_keys(m: &[u8; 32]) -> MessageKeys {
    let mut okm = Zeroizing::new([0u8; 64]);
    hkdf_zero_salt(m, MESSAGE_INFO, okm.as_mut());
    let (e_seed, k) = okm.split_at(32);
    let ephemeral = StaticSecret::from(crate::kdf::to32(e_seed));
    let ephemeral_public = XPublic::from(&ephemeral).to_bytes();
    MessageKeys {
        ephemeral,
        ephemeral_public,
        body: AeadKey {
            key: crate::kdf::to32(k),
            nonce: [0; 12],
        },
    }
}

/// `mask || entry_key` for one recipient (the DH output must be contributory).
fn recipient_keys(dh: &[u8; 32], e: &[u8; 32], r: &[u8; 32]) -> (Zeroizing<[u8; 32]>, AeadKey) {
    let mut ikm = Zeroizing::new([0u8; 96]);
    for (chunk, part) in ikm.chunks_mut(32).zip([dh, e, r]) {
        chunk.copy_from_slice(part);
    }
    let mut okm = Zeroizing::new([0u8; 64]);
    hkdf_zero_salt(ikm.as_ref(), RECIPIENT_INFO, okm.as_mut());
    let (mask, key) = okm.split_at(32);
    (
        Zeroizing::new(crate::kdf::to32(mask)),
        AeadKey {
            key: crate::kdf::to32(key),
            nonce: [0; 12],
        },
    )
}

/// `AT` (PROTOCOL.md §19.3).
fn auth_tag(
    static_dh: &[u8; 32],
    e: &[u8; 32],
    c: &[u8; 32],
    s: &[u8; 32],
    r: &[u8; 32],
    body_hash: &[u8; 32],
    entry: &[u8],
) -> [u8; AT_LEN] {
    let entry_hash: [u8; 32] = Sha256::digest(entry).into();
    let mut ikm = Zeroizing::new([0u8; 32 * 7]);
    for (chunk, part) in ikm
        .chunks_mut(32)
        .zip([static_dh, e, c, s, r, body_hash, &entry_hash])
    {
        chunk.copy_from_slice(part);
    }
    let mut at = [0u8; AT_LEN];
    hkdf_zero_salt(ikm.as_ref(), AUTH_INFO, &mut at);
    at
}

fn body_aad(e: &[u8; 32]) -> Vec<u8> {
    [BODY_AAD_PREFIX, e].concat()
}

/// Seals `content` of `kind` from this device (`sender_identity`, with its sender certificate)
/// to every recipient device, returning a multi-recipient upload (`0x72`, PROTOCOL.md §19.4) for
/// the server to split with [`crate::server::split_upload`]. Draws 32 bytes from `rng`. With
/// `decoy`, the upload also holds an envelope for the sending device itself (unless it is a
/// recipient), which opens to [`SealedError::FromSelf`]: drop it. Use it whenever the server
/// could know the set the recipients are drawn from — group messages and distributions, and
/// sends that include the sender's own other devices — so the missing device does not name the
/// sender. The [`SessionBook`] helpers decide it for you.
///
/// `kind` is [`EnvelopeKind::FanOut`] (then `content` is the fan-out body and each recipient
/// carries its key entry), [`EnvelopeKind::Group`] (the group message), or a pairwise kind for
/// a single recipient.
///
/// # Errors
/// [`EncryptError::TooLarge`] for oversized content or too many recipients;
/// [`EncryptError::NotReady`] for no recipient, a certificate that is not canonical or does not
/// certify `sender_identity`,
/// [`EnvelopeKind::Sealed`] content, a pairwise kind with other than one recipient, a repeated
/// recipient, a recipient
/// without an entry in a fan-out send (or with one otherwise), or a recipient key of small
/// order.
pub fn seal(
    rng: &mut (impl CryptoRng + ?Sized),
    sender_identity: &IdentityKeyPair,
    certificate: &[u8],
    kind: EnvelopeKind,
    content: &[u8],
    recipients: &[SealedRecipient<'_>],
    decoy: bool,
) -> Result<Vec<u8>, EncryptError> {
    // The certificate must be canonical and certify this very identity key: its length is then
    // the same for every sender, and recipients will accept the authentication tag.
    let (own, certified_key) =
        crate::certificate::unverified_subject(certificate).map_err(|_| EncryptError::NotReady)?;
    if certified_key != sender_identity.public() {
        return Err(EncryptError::NotReady);
    }
    seal_inner(
        rng,
        sender_identity,
        certificate,
        kind,
        content,
        recipients,
        decoy.then_some(own),
    )
}

/// [`seal`] without the certificate checks (the decoy, if any, goes to `decoy`): for tests
/// that play a misbehaving sender, through [`crate::hazmat::seal_unchecked`].
pub(crate) fn seal_inner(
    rng: &mut (impl CryptoRng + ?Sized),
    sender_identity: &IdentityKeyPair,
    certificate: &[u8],
    kind: EnvelopeKind,
    content: &[u8],
    recipients: &[SealedRecipient<'_>],
    decoy: Option<Address>,
) -> Result<Vec<u8>, EncryptError> {
    let pairwise = matches!(kind, EnvelopeKind::PreKey | EnvelopeKind::Ratchet);
    if kind == EnvelopeKind::Sealed || recipients.is_empty() || (pairwise && recipients.len() != 1)
    {
        return Err(EncryptError::NotReady);
    }
    // With `decoy`, the sending device itself is a recipient too (PROTOCOL.md §19.3), with an
    // entry as long as the most common real one: a send that the server could match against a known
    // set (a group's members, or an account's devices when the sender's other devices are
    // recipients) then no longer leaves out exactly the sender. Without it, a one-to-one send
    // names only the recipients.
    let decoy = if pairwise { None } else { decoy };
    let decoy_entry: Option<Vec<u8>> = (kind == EnvelopeKind::FanOut).then(|| {
        let mut counts: std::collections::BTreeMap<usize, usize> = Default::default();
        for r in recipients {
            *counts.entry(r.entry.map_or(0, <[u8]>::len)).or_default() += 1;
        }
        let len = counts
            .iter()
            .max_by_key(|(len, n)| (**n, core::cmp::Reverse(**len)))
            .map_or(0, |(len, _)| *len);
        vec![0u8; len]
    });
    let decoy = decoy.map(|own| SealedRecipient {
        address: own,
        identity_key: sender_identity.public(),
        entry: decoy_entry.as_deref(),
    });
    let with_decoy: Vec<&SealedRecipient<'_>> = match &decoy {
        Some(d) if !recipients.iter().any(|r| r.address == d.address) => {
            recipients.iter().chain(core::iter::once(d)).collect()
        }
        _ => recipients.iter().collect(),
    };
    if with_decoy.len() > MAX_UPLOAD_RECIPIENTS {
        return Err(EncryptError::TooLarge {
            len: with_decoy.len(),
            limit: MAX_UPLOAD_RECIPIENTS,
        });
    }
    let plaintext = Zeroizing::new(prost::Message::encode_to_vec(&SealedContentProto {
        sender_certificate: certificate.to_vec(),
        kind: kind.code(),
        content: content.to_vec(),
    }));
    if plaintext.len() > MAX_SEALED_CONTENT_BYTES {
        return Err(EncryptError::TooLarge {
            len: plaintext.len(),
            limit: MAX_SEALED_CONTENT_BYTES,
        });
    }
    let mut m = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(m.as_mut());
    let keys = message_keys(&m);
    let e = keys.ephemeral_public;
    let body = aead::seal(&keys.body, &body_aad(&e), &padding::pad(&plaintext));
    let body_hash: [u8; 32] = Sha256::digest(&body).into();
    let s_secret = sender_identity.dh_secret();
    let s = sender_identity.public().x25519();

    // Group recipients by account (the account key is sent once per account).
    let mut accounts: Vec<UploadAccountProto> = Vec::new();
    let mut sorted = with_decoy;
    sorted.sort_by_key(|r| r.address);
    if sorted
        .windows(2)
        .any(|w| matches!(w, [a, b] if a.address == b.address))
    {
        return Err(EncryptError::NotReady);
    }
    for recipient in sorted {
        if recipient.entry.is_some() != (kind == EnvelopeKind::FanOut) {
            return Err(EncryptError::NotReady);
        }
        let r = recipient.identity_key.x25519();
        let dh = keys::dh(&keys.ephemeral, &r).ok_or(EncryptError::NotReady)?;
        let (mask, entry_key) = recipient_keys(&dh, &e, &r);
        let mut c = [0u8; 32];
        for ((out, a), b) in c.iter_mut().zip(m.iter()).zip(mask.iter()) {
            *out = a ^ b;
        }
        let entry = match recipient.entry {
            Some(entry) if entry.len() + 16 <= MAX_SEALED_ENTRY_BYTES => {
                aead::seal(&entry_key, &[e.as_slice(), &c].concat(), entry)
            }
            Some(entry) => {
                return Err(EncryptError::TooLarge {
                    len: entry.len(),
                    limit: MAX_SEALED_ENTRY_BYTES - 16,
                });
            }
            None => Vec::new(),
        };
        let static_dh = keys::dh(&s_secret, &r).ok_or(EncryptError::NotReady)?;
        let at = auth_tag(&static_dh, &e, &c, &s, &r, &body_hash, &entry);
        let mut header = Vec::with_capacity(SEALED_HEADER_LEN);
        header.extend_from_slice(&c);
        header.extend_from_slice(&at);
        c.zeroize();
        let device = UploadDeviceProto {
            device: recipient.address.device,
            message: header,
            entry,
        };
        let account = recipient.address.account.to_bytes().to_vec();
        match accounts.last_mut() {
            Some(last) if last.account == account => last.devices.push(device),
            _ => accounts.push(UploadAccountProto {
                account,
                devices: vec![device],
            }),
        }
    }
    Ok(codec::encode(
        SEALED_UPLOAD_V1,
        &UploadProto {
            ephemeral: e.to_vec(),
            body,
            accounts,
            sender_account: None,
            sender_device: None,
        },
    ))
}

/// An opened sealed envelope: the sender's verified certificate and the inner message, as the
/// unsealed envelope content it stands for.
pub struct Unsealed {
    /// The sender's certificate (chain, expiry and revocation checked; `AT` proved the sender
    /// holds its identity key).
    pub certificate: VerifiedSenderCertificate,
    /// The inner message, with the certified sender.
    pub content: EnvelopeContent,
}

impl Unsealed {
    /// The certified sender device.
    #[must_use]
    pub fn sender(&self) -> Address {
        self.certificate.sender()
    }
}

impl fmt::Debug for Unsealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unsealed")
            .field("certificate", &self.certificate)
            .field("content", &self.content)
            .finish()
    }
}

/// Opens a sealed envelope with this device's identity key (PROTOCOL.md §19.3), validating the
/// sender certificate with `validator` at time `now`. Nothing is stateful: the inner message
/// still goes through the session book or group session, which must check that the certified
/// identity key is the one they know for the sender
/// ([`SessionBook::open_sealed`](crate::book::SessionBook::open_sealed) does it all).
///
/// # Errors
/// [`SealedError`]; every cryptographic failure is `Unauthenticated`.
pub fn open(
    identity: &IdentityKeyPair,
    sealed: &SealedEnvelope,
    validator: &CertificateValidator,
    now: Timestamp,
) -> Result<Unsealed, SealedError> {
    if sealed.body.len() > MAX_SEALED_BODY_BYTES || sealed.entry.len() > MAX_SEALED_ENTRY_BYTES {
        return Err(SealedError::Malformed(DecodeError::InvalidField("size")));
    }
    let e = sealed.ephemeral;
    let r = identity.public().x25519();
    let r_secret = identity.dh_secret();
    let dh = keys::dh(&r_secret, &e).ok_or(SealedError::Unauthenticated)?;
    let (mask, entry_key) = recipient_keys(&dh, &e, &r);
    let (c, at) = sealed.header.split_at(32);
    let c: [u8; 32] = crate::kdf::to32(c);
    let mut m = Zeroizing::new([0u8; 32]);
    for ((out, a), b) in m.iter_mut().zip(c.iter()).zip(mask.iter()) {
        *out = a ^ b;
    }
    let keys = message_keys(&m);
    if !bool::from(keys.ephemeral_public.ct_eq(&e)) {
        return Err(SealedError::Unauthenticated);
    }
    let padded =
        aead::open(&keys.body, &body_aad(&e), &sealed.body).ok_or(SealedError::Unauthenticated)?;
    let plaintext = padding::unpad(&padded).ok_or(SealedError::Unauthenticated)?;
    let content: SealedContentProto =
        codec::decode_body(&plaintext, &[]).map_err(|_| SealedError::Unauthenticated)?;
    // The tag first, with the certificate's key taken unverified: a certificate error is only
    // reported for an envelope its certified sender really made (certificates are not secret).
    let (_, certified_key) = crate::certificate::unverified_subject(&content.sender_certificate)
        .map_err(|_| SealedError::Unauthenticated)?;
    let s = certified_key.x25519();
    let static_dh = keys::dh(&r_secret, &s).ok_or(SealedError::Unauthenticated)?;
    let body_hash: [u8; 32] = Sha256::digest(&sealed.body).into();
    let expected = auth_tag(&static_dh, &e, &c, &s, &r, &body_hash, &sealed.entry);
    if !bool::from(expected.ct_eq(at)) {
        return Err(SealedError::Unauthenticated);
    }
    if certified_key == identity.public() {
        return Err(SealedError::FromSelf);
    }
    let certificate = validator.validate(&content.sender_certificate, now)?;
    let kind = EnvelopeKind::from_code(content.kind)
        .ok_or(SealedError::Malformed(DecodeError::InvalidField("kind")))?;
    let sender = certificate.sender();
    let inner = content.content.clone();
    let content = match kind {
        EnvelopeKind::FanOut => {
            let entry = aead::open(&entry_key, &[e.as_slice(), &c].concat(), &sealed.entry)
                .ok_or(SealedError::Unauthenticated)?;
            EnvelopeContent::FanOut {
                sender,
                entry: entry.to_vec(),
                body: inner,
            }
        }
        _ if !sealed.entry.is_empty() => {
            return Err(SealedError::Malformed(DecodeError::InvalidField("entry")));
        }
        EnvelopeKind::PreKey => EnvelopeContent::PreKey {
            sender,
            message: inner,
        },
        EnvelopeKind::Ratchet => EnvelopeContent::Ratchet {
            sender,
            message: inner,
        },
        EnvelopeKind::Group => EnvelopeContent::Group {
            sender,
            message: inner,
        },
        EnvelopeKind::Sealed => {
            return Err(SealedError::Malformed(DecodeError::InvalidField("kind")));
        }
    };
    Ok(Unsealed {
        certificate,
        content,
    })
}

/// A sealed fan-out: the upload for the server, and the devices that need a bundle first.
#[derive(Debug)]
pub struct SealedFanOut {
    /// The multi-recipient upload (`0x72`); empty when no listed device has a session (then
    /// there is nothing to send).
    pub upload: Vec<u8>,
    /// Listed devices without a usable session (see [`SessionBook::fan_out`]); they are not in
    /// the upload.
    pub needs_bundle: Vec<Address>,
}

impl SessionBook {
    /// The identity key of a listed device, from its account's verified device list.
    #[must_use]
    pub fn device_key(&self, device: &Address) -> Option<IdentityKey> {
        self.device_identity(device)
    }

    /// [`SessionBook::fan_out`], sealed (PROTOCOL.md §19.3): the fan-out body is the shared
    /// sealed content, each device's key entry is sealed to it, and the server learns only the
    /// recipients. Draws 32 bytes for the content key and 32 for the seal.
    ///
    /// **Persist the book before sending** the upload.
    ///
    /// # Errors
    /// [`EncryptError`] (nothing changed if the plaintext is too large).
    pub fn fan_out_sealed(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        identity: &IdentityKeyPair,
        certificate: &[u8],
        accounts: &[IdentityKey],
        sender: &Address,
        plaintext: &[u8],
    ) -> Result<SealedFanOut, EncryptError> {
        // Check what sealing could refuse before the sessions advance.
        if check_sender(identity, certificate)? != *sender {
            return Err(EncryptError::NotReady);
        }
        let targets = self
            .devices()
            .filter(|(a, _)| accounts.contains(&a.account) && a != sender)
            .count();
        if targets >= MAX_UPLOAD_RECIPIENTS {
            return Err(EncryptError::TooLarge {
                len: targets,
                limit: MAX_UPLOAD_RECIPIENTS - 1,
            });
        }
        let fan_out = self.fan_out(rng, accounts, sender, plaintext)?;
        // A decoy when the sender's own other devices are recipients (their account is then in
        // the set anyway; the decoy hides which device sent).
        let decoy = accounts.contains(&sender.account).then_some(*sender);
        self.seal_sealed_fan_out(rng, identity, certificate, &fan_out, decoy)
    }

    /// Seals a fan-out whose sender was already checked against `certificate` (`decoy`: the
    /// sender's address, or none): an empty upload when no entry was made.
    fn seal_sealed_fan_out(
        &self,
        rng: &mut (impl CryptoRng + ?Sized),
        identity: &IdentityKeyPair,
        certificate: &[u8],
        fan_out: &FanOut,
        decoy: Option<Address>,
    ) -> Result<SealedFanOut, EncryptError> {
        let upload = if fan_out.entries.is_empty() {
            Vec::new()
        } else {
            self.seal_entries(rng, identity, certificate, fan_out, decoy)?
        };
        Ok(SealedFanOut {
            upload,
            needs_bundle: fan_out.needs_bundle.clone(),
        })
    }

    /// The sealing of [`SessionBook::seal_fan_out`], without its certificate check.
    fn seal_entries(
        &self,
        rng: &mut (impl CryptoRng + ?Sized),
        identity: &IdentityKeyPair,
        certificate: &[u8],
        fan_out: &FanOut,
        decoy: Option<Address>,
    ) -> Result<Vec<u8>, EncryptError> {
        let mut recipients = Vec::with_capacity(fan_out.entries.len());
        for (address, entry) in &fan_out.entries {
            let identity_key = self.device_key(address).ok_or(EncryptError::NotReady)?;
            recipients.push(SealedRecipient {
                address: *address,
                identity_key,
                entry: Some(entry),
            });
        }
        seal_inner(
            rng,
            identity,
            certificate,
            EnvelopeKind::FanOut,
            &fan_out.body,
            &recipients,
            decoy,
        )
    }

    /// Seals the entries of a [`FanOut`] made with [`SessionBook::fan_out`] (and completed with
    /// [`SessionBook::complete_fan_out`] for devices whose bundles the caller fetched), as
    /// [`SessionBook::fan_out_sealed`] does: the body is the shared sealed content, each entry is
    /// sealed to its device. Devices still in `needs_bundle` are not in the upload.
    ///
    /// # Errors
    /// As [`seal`]; [`EncryptError::NotReady`] if an entry's device is no longer listed.
    pub fn seal_fan_out(
        &self,
        rng: &mut (impl CryptoRng + ?Sized),
        identity: &IdentityKeyPair,
        certificate: &[u8],
        fan_out: &FanOut,
        decoy: bool,
    ) -> Result<Vec<u8>, EncryptError> {
        let own = check_sender(identity, certificate)?;
        self.seal_entries(rng, identity, certificate, fan_out, decoy.then_some(own))
    }

    /// Seals a shared `content` of `kind` (typically [`EnvelopeKind::Group`], a group message)
    /// to the listed devices, with their identity keys from the book. Devices the book does
    /// not know are returned and left out.
    ///
    /// # Errors
    /// As [`seal`].
    pub fn seal_to(
        &self,
        rng: &mut (impl CryptoRng + ?Sized),
        identity: &IdentityKeyPair,
        certificate: &[u8],
        kind: EnvelopeKind,
        content: &[u8],
        devices: &[Address],
    ) -> Result<(Vec<u8>, Vec<Address>), EncryptError> {
        let mut recipients = Vec::with_capacity(devices.len());
        let mut unknown = Vec::new();
        for address in devices {
            match self.device_key(address) {
                Some(identity_key) => recipients.push(SealedRecipient {
                    address: *address,
                    identity_key,
                    entry: None,
                }),
                None => unknown.push(*address),
            }
        }
        if recipients.is_empty() {
            return Ok((Vec::new(), unknown));
        }
        // Group messages: always a decoy, so the missing member does not name the sender.
        let decoy = kind != EnvelopeKind::PreKey && kind != EnvelopeKind::Ratchet;
        let upload = seal(
            rng,
            identity,
            certificate,
            kind,
            content,
            &recipients,
            decoy,
        )?;
        Ok((upload, unknown))
    }

    /// Opens a sealed envelope ([`open`]) and checks that the certified sender is a device this
    /// book knows from a verified device list, with exactly the certified identity key
    /// (PROTOCOL.md §19.3). Then hand [`Unsealed::content`] to [`SessionBook::receive`],
    /// [`SessionBook::receive_fan_out`] or a group session, with [`Unsealed::sender`].
    ///
    /// # Errors
    /// [`SealedError`].
    pub fn open_sealed(
        &self,
        identity: &IdentityKeyPair,
        validator: &CertificateValidator,
        now: Timestamp,
        sealed: &SealedEnvelope,
    ) -> Result<Unsealed, SealedError> {
        let unsealed = open(identity, sealed, validator, now)?;
        self.verify_sealed_sender(&unsealed)?;
        Ok(unsealed)
    }

    /// The check [`SessionBook::open_sealed`] adds to [`open`]: the certified sender is a device
    /// of a verified device list applied to this book, with exactly the certified identity key.
    /// For a sender first heard of in a sealed envelope: [`open`], fetch and verify its account's
    /// device list, [`SessionBook::apply_device_list`], then this.
    ///
    /// # Errors
    /// [`SealedError::UnknownSender`], [`SealedError::IdentityMismatch`].
    pub fn verify_sealed_sender(&self, unsealed: &Unsealed) -> Result<(), SealedError> {
        match self.device_key(&unsealed.sender()) {
            None => Err(SealedError::UnknownSender),
            Some(key) if key != unsealed.certificate.identity_key() => {
                Err(SealedError::IdentityMismatch)
            }
            Some(_) => Ok(()),
        }
    }
}

impl SessionBook {
    /// The listed devices of `accounts` (except `sender`) without an active session: fetch their
    /// bundles and `insert` sessions before a sealed fan-out, which cannot be completed later.
    #[must_use]
    pub fn missing_sessions(&self, accounts: &[IdentityKey], sender: &Address) -> Vec<Address> {
        self.devices()
            .filter(|(a, active)| !active && accounts.contains(&a.account) && a != sender)
            .map(|(a, _)| a)
            .collect()
    }

    /// [`SessionBook::fan_out_to`], sealed: to exactly the listed devices. Devices without a
    /// session are returned in `needs_bundle` and left out. Pass `decoy` when the devices are a
    /// set the server may know in full (a whole group, all of an account's devices), so the
    /// missing sender is not exposed; not for a subset, where the decoy would add the sender.
    ///
    /// **Persist the book before sending** the upload.
    ///
    /// # Errors
    /// As [`SessionBook::fan_out_sealed`].
    pub fn fan_out_to_sealed(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        identity: &IdentityKeyPair,
        certificate: &[u8],
        devices: &[Address],
        plaintext: &[u8],
        decoy: bool,
    ) -> Result<SealedFanOut, EncryptError> {
        let own = check_sender(identity, certificate)?;
        if devices.len() >= MAX_UPLOAD_RECIPIENTS {
            return Err(EncryptError::TooLarge {
                len: devices.len(),
                limit: MAX_UPLOAD_RECIPIENTS - 1,
            });
        }
        let fan_out = self.fan_out_to(rng, devices, plaintext)?;
        self.seal_sealed_fan_out(rng, identity, certificate, &fan_out, decoy.then_some(own))
    }

    /// A group's sender-key distribution, sealed, to exactly its recipients.
    ///
    /// **Persist the book before sending** the upload.
    ///
    /// # Errors
    /// As [`SessionBook::fan_out_to_sealed`].
    pub fn send_distribution_sealed(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        identity: &IdentityKeyPair,
        certificate: &[u8],
        distribution: &Distribution,
    ) -> Result<SealedFanOut, EncryptError> {
        // A decoy only for a new key to the whole group: for newcomers or a resend it would add
        // the sender to a set that otherwise names only the recipients.
        self.fan_out_to_sealed(
            rng,
            identity,
            certificate,
            &distribution.recipients,
            &distribution.message,
            distribution.is_whole_group(),
        )
    }
}

/// The checks [`seal`] makes on the certificate, done before any session advances.
fn check_sender(identity: &IdentityKeyPair, certificate: &[u8]) -> Result<Address, EncryptError> {
    match crate::certificate::unverified_subject(certificate) {
        Ok((address, key)) if key == identity.public() => Ok(address),
        _ => Err(EncryptError::NotReady),
    }
}
