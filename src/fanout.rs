//! Encrypt-once fan-out to every device of the recipients and the sender's other devices
//! (PROTOCOL.md §16): the payload is sealed once under a fresh content key, and only the key,
//! bound to a digest of the sealed body, goes through each device's pairwise session.
//!
//! ```
//! use confidant::book::{Address, ReceiveError, SessionBook};
//! use confidant::envelope::EnvelopeContent;
//! use confidant::{DecryptError, IdentityKeyPair, Message, PreKeyBundle, Session, server};
//! # use confidant::device::{DeviceEntry, DeviceList, VerifiedDeviceList};
//! # use confidant::{PreKeys, Timestamp};
//! # use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};
//! # let mut rng = ChaCha20Rng::seed_from_u64(7);
//! # let now = Timestamp(1_700_000_000_000);
//! # let list = |account: &IdentityKeyPair, device: &IdentityKeyPair| {
//! #     let entries = vec![DeviceEntry::local(account, device, 1)];
//! #     let list = DeviceList { account_id: b"id".to_vec(), version: 1, timestamp: now, entries };
//! #     VerifiedDeviceList::verify(&list.sign(account)?, &account.public(), None)
//! # };
//! # let alice_account = IdentityKeyPair::generate(&mut rng);
//! # let alice = IdentityKeyPair::generate(&mut rng);
//! # let bob_account = IdentityKeyPair::generate(&mut rng);
//! # let bob = IdentityKeyPair::generate(&mut rng);
//! # let mut bob_prekeys = PreKeys::new(&mut rng, &bob, now);
//! # let a = Address { account: alice_account.public(), device: 1 };
//! # let b = Address { account: bob_account.public(), device: 1 };
//! # let (mut alice_book, mut bob_book) = (SessionBook::new(), SessionBook::new());
//! # alice_book.apply_device_list(&list(&bob_account, &bob)?)?;
//! # bob_book.apply_device_list(&list(&alice_account, &alice)?)?;
//! // Alice's device `a` sends to every listed device of Bob's account (here only `b`).
//! let text = b"hello, all of you";
//! let mut out = alice_book.fan_out(&mut rng, &[bob_account.public()], &a, text)?;
//! assert_eq!(out.needs_bundle, vec![b]); // no session yet: fetch a bundle, insert, complete
//! let bundle = PreKeyBundle::new(bob.public(), bob_prekeys.signed_prekey(), None)
//!     .with_kem_prekey(bob_prekeys.last_resort_kem_prekey());
//! alice_book.insert(b, Session::initiate(&mut rng, &alice, bundle.verify()?)?)?;
//! alice_book.complete_fan_out(&mut out);
//! assert!(out.needs_bundle.is_empty());
//!
//! // The server splits the upload: per device a small key entry, plus the shared body.
//! let envelopes = server::split_upload(&out.to_upload(&a))?;
//! let [envelope] = envelopes.as_slice() else { unreachable!() };
//! let EnvelopeContent::FanOut { sender, entry, body } = &envelope.content else { unreachable!() };
//! let entry = Message::from_bytes(entry)?;
//!
//! // A body that does not match the entry is refused before anything changes.
//! let mut wrong = body.clone();
//! wrong[1] ^= 1;
//! let refused =
//!     bob_book.receive_fan_out(&mut rng, &bob, &mut bob_prekeys, sender, &entry, &wrong);
//! assert_eq!(refused.err(), Some(ReceiveError::Decrypt(DecryptError::Unauthenticated)));
//! let got = bob_book.receive_fan_out(&mut rng, &bob, &mut bob_prekeys, sender, &entry, body)?;
//! assert_eq!(&got.plaintext[..], text);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::cell::RefCell;
use core::fmt;

use aes_gcm::aead::{Aead, KeyInit, Nonce, Payload};
use aes_gcm::{Aes256Gcm, Key};
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::book::{Address, ReceiveError, Received, SessionBook};
use crate::codec::{self, FANOUT_UPLOAD_V1};
use crate::error::{DecodeError, DecryptError, EncryptError};
use crate::group::Distribution;
use crate::keys::{IdentityKey, IdentityKeyPair};
use crate::limits::{MAX_FANOUT_BODY_BYTES, MAX_PLAINTEXT};
use crate::padding;
use crate::prekeys::PreKeys;
use crate::proto::{UploadAccountProto, UploadDeviceProto, UploadProto};
use crate::wire::Message;

/// Leading byte of a fan-out body, format version 2 (version 1, `0x51`, did not pad).
const FANOUT_BODY_V2: u8 = 0x52;
/// Associated data of the body's AEAD (PROTOCOL.md §16.1).
const BODY_AAD: &[u8] = b"confidant/fanout/v2";
/// Domain separation of the body digest (PROTOCOL.md §16.1).
const DIGEST_CONTEXT: &[u8] = b"confidant/fanout/v2/digest";
/// Length of the body digest carried in each key entry.
pub const FANOUT_DIGEST_LEN: usize = 16;
/// Length of a key entry's pairwise plaintext: content key `K` (32) `||` digest `D` (16).
pub const FANOUT_KEY_PAYLOAD_LEN: usize = 32 + FANOUT_DIGEST_LEN;

/// `D = SHA-256(DIGEST_CONTEXT || body)[0..16]`.
fn digest(body: &[u8]) -> [u8; FANOUT_DIGEST_LEN] {
    let full = Sha256::new()
        .chain_update(DIGEST_CONTEXT)
        .chain_update(body)
        .finalize();
    let mut out = [0u8; FANOUT_DIGEST_LEN];
    out.copy_from_slice(
        full.get(..FANOUT_DIGEST_LEN)
            .unwrap_or(&[0; FANOUT_DIGEST_LEN]),
    );
    out
}

/// Seals `plaintext` under the content key `key`: returns the body
/// `0x52 || AES-256-GCM(key, 0^12, BODY_AAD, pad(plaintext))` (padding: PROTOCOL.md §18) and
/// the key-entry payload `key || D` (PROTOCOL.md §16.1). The key must be fresh for every body
/// (the nonce is fixed).
pub(crate) fn seal_body(
    key: &[u8; 32],
    plaintext: &[u8],
) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), EncryptError> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(EncryptError::TooLarge {
            len: plaintext.len(),
            limit: MAX_PLAINTEXT,
        });
    }
    let padded = padding::pad(plaintext);
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key));
    let sealed = cipher
        .encrypt(
            &Nonce::<Aes256Gcm>::from([0u8; 12]),
            Payload {
                msg: &padded,
                aad: BODY_AAD,
            },
        )
        .map_err(|_| EncryptError::TooLarge {
            len: plaintext.len(),
            limit: MAX_PLAINTEXT,
        })?;
    let mut body = Vec::with_capacity(1 + sealed.len());
    body.push(FANOUT_BODY_V2);
    body.extend_from_slice(&sealed);
    let mut payload = Zeroizing::new(Vec::with_capacity(FANOUT_KEY_PAYLOAD_LEN));
    payload.extend_from_slice(key);
    payload.extend_from_slice(&digest(&body));
    Ok((body, payload))
}

/// Opens a body with its content key and removes the padding; `None` on a wrong leading byte,
/// an AEAD failure or malformed padding.
fn open_body(key: &[u8; 32], body: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let sealed = match body.split_first() {
        Some((&FANOUT_BODY_V2, sealed)) => sealed,
        _ => return None,
    };
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key));
    let padded = cipher
        .decrypt(
            &Nonce::<Aes256Gcm>::from([0u8; 12]),
            Payload {
                msg: sealed,
                aad: BODY_AAD,
            },
        )
        .ok()
        .map(Zeroizing::new)?;
    padding::unpad(&padded)
}

/// One fan-out: the shared body, one small pairwise message per device with a session, and
/// the devices that need a bundle first.
pub struct FanOut {
    /// The sealed payload, identical for every device (`0x52 || AES-256-GCM ciphertext`).
    pub body: Vec<u8>,
    /// One entry per device with an active session: a pairwise message carrying `K || D`.
    pub entries: Vec<(Address, Vec<u8>)>,
    /// Listed devices without a usable session: fetch their bundles, `insert` the sessions,
    /// then call [`SessionBook::complete_fan_out`] to add their entries for the same body.
    pub needs_bundle: Vec<Address>,
    /// `K || D`, kept to complete the fan-out; wiped on drop.
    payload: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for FanOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FanOut")
            .field("body_len", &self.body.len())
            .field("entries", &self.entries.len())
            .field("needs_bundle", &self.needs_bundle)
            .finish()
    }
}

impl FanOut {
    /// The multi-recipient upload for the server (`0x73`, PROTOCOL.md §19.4): the sender, the
    /// body once, and each device's key entry, grouped by account. The server splits it with
    /// [`crate::server::split_upload`] into one [`crate::envelope::Envelope`] per device.
    #[must_use]
    pub fn to_upload(&self, sender: &Address) -> Vec<u8> {
        let mut entries: Vec<&(Address, Vec<u8>)> = self.entries.iter().collect();
        entries.sort_by_key(|(a, _)| *a);
        let mut accounts: Vec<UploadAccountProto> = Vec::new();
        for (address, entry) in entries {
            let device = UploadDeviceProto {
                device: address.device,
                message: entry.clone(),
                entry: Vec::new(),
            };
            let account = address.account.to_bytes().to_vec();
            match accounts.last_mut() {
                Some(last) if last.account == account => last.devices.push(device),
                _ => accounts.push(UploadAccountProto {
                    account,
                    devices: vec![device],
                }),
            }
        }
        codec::encode(
            FANOUT_UPLOAD_V1,
            &UploadProto {
                ephemeral: Vec::new(),
                body: self.body.clone(),
                accounts,
                sender_account: Some(sender.account.to_bytes().to_vec()),
                sender_device: Some(sender.device),
            },
        )
    }
}

impl SessionBook {
    /// Encrypts `plaintext` once for every registered device of `accounts` (the recipients'
    /// account keys and, for the sender's other devices, its own) except `sender` itself
    /// (PROTOCOL.md §16.2). Devices are known to the book only from verified device lists, so
    /// no other device is ever encrypted to. Draws the 32-byte content key from `rng`.
    ///
    /// **Persist the book before sending** the entries.
    ///
    /// # Errors
    /// [`EncryptError::TooLarge`] for an oversized plaintext (nothing changed). A device whose
    /// session cannot send (exhausted chain) is listed in `needs_bundle` instead.
    pub fn fan_out(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        accounts: &[IdentityKey],
        sender: &Address,
        plaintext: &[u8],
    ) -> Result<FanOut, EncryptError> {
        // The listed devices of each account: one range of the address-ordered device map per
        // account (a linear `contains` over the accounts per device costs more than the
        // encryption at a thousand devices).
        let mut wanted = accounts.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let targets: Vec<Address> = wanted
            .iter()
            .flat_map(|account| self.account_devices(account))
            .filter(|a| a != sender)
            .collect();
        self.fan_out_to(rng, &targets, plaintext)
    }

    /// As [`SessionBook::fan_out`], to exactly the listed devices (for example a group's
    /// [`Distribution::recipients`](crate::group::Distribution)). Listed devices without an
    /// active session, including devices in no device list applied to the book, are returned
    /// in `needs_bundle`. Duplicates are sent once.
    ///
    /// **Persist the book before sending** the entries.
    ///
    /// # Errors
    /// [`EncryptError::TooLarge`] for an oversized plaintext (nothing changed).
    pub fn fan_out_to(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        devices: &[Address],
        plaintext: &[u8],
    ) -> Result<FanOut, EncryptError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(EncryptError::TooLarge {
                len: plaintext.len(),
                limit: MAX_PLAINTEXT,
            });
        }
        let mut key = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(key.as_mut());
        let (body, payload) = seal_body(&key, plaintext)?;
        let mut targets = devices.to_vec();
        targets.sort_unstable();
        targets.dedup();
        let mut out = FanOut {
            body,
            entries: Vec::with_capacity(targets.len()),
            needs_bundle: targets,
            payload,
        };
        self.complete_fan_out(&mut out);
        Ok(out)
    }

    /// Sends a group's sender-key distribution to exactly its recipients
    /// ([`fan_out_to`](Self::fan_out_to) with [`Distribution::recipients`]), so the chain key
    /// never reaches a device outside the group.
    ///
    /// **Persist the book before sending** the entries.
    ///
    /// # Errors
    /// As [`fan_out_to`](Self::fan_out_to).
    pub fn send_distribution(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        distribution: &Distribution,
    ) -> Result<FanOut, EncryptError> {
        self.fan_out_to(rng, &distribution.recipients, &distribution.message)
    }

    /// Encrypts the key entry of `fan_out` for every device in its `needs_bundle` that now has
    /// an active session (after the caller fetched bundles and `insert`ed sessions), moving it
    /// to `entries`; the body stays the same. Devices still without a session stay listed.
    /// `needs_bundle` is taken as a set: duplicates get one entry, and the devices still listed
    /// afterwards are in address order.
    ///
    /// **Persist the book before sending** the new entries.
    pub fn complete_fan_out(&mut self, fan_out: &mut FanOut) {
        let mut pending = core::mem::take(&mut fan_out.needs_bundle);
        pending.sort_unstable();
        pending.dedup();
        let payload = &fan_out.payload;
        let (entries, needs_bundle) = (&mut fan_out.entries, &mut fan_out.needs_bundle);
        self.for_each_active_mut(&pending, |address, session| {
            match session.map(|s| s.encrypt(payload)) {
                Some(Ok(message)) => entries.push((*address, message)),
                _ => needs_bundle.push(*address),
            }
        });
    }

    /// Receives a fan-out: decrypts the key entry from `sender` (as [`SessionBook::receive`])
    /// and the shared `body` (PROTOCOL.md §16.3). The entry's digest must match the body and
    /// the body must decrypt **before** the session or `prekeys` commit, so a wrong or corrupt
    /// body changes nothing (`ReceiveError::Decrypt(DecryptError::Unauthenticated)`).
    ///
    /// # Errors
    /// [`ReceiveError`].
    pub fn receive_fan_out(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        identity: &IdentityKeyPair,
        prekeys: &mut PreKeys,
        sender: &Address,
        entry: &Message,
        body: &[u8],
    ) -> Result<Received, ReceiveError> {
        if body.len() > MAX_FANOUT_BODY_BYTES {
            return Err(ReceiveError::Decrypt(DecryptError::Malformed(
                DecodeError::TooLarge {
                    len: body.len(),
                    limit: MAX_FANOUT_BODY_BYTES,
                },
            )));
        }
        let expected = digest(body);
        // The whole check — digest and body decryption — runs before anything is committed;
        // the opened body is kept aside and returned on success.
        let opened: RefCell<Option<Zeroizing<Vec<u8>>>> = RefCell::new(None);
        let check = |payload: &[u8]| {
            let bound = payload.len() == FANOUT_KEY_PAYLOAD_LEN
                && payload
                    .get(32..)
                    .is_some_and(|d| bool::from(d.ct_eq(&expected)));
            let key = payload
                .get(..32)
                .and_then(|k| <[u8; 32]>::try_from(k).ok())
                .map(Zeroizing::new);
            match (bound, key) {
                (true, Some(key)) => match open_body(&key, body) {
                    Some(plaintext) => {
                        *opened.borrow_mut() = Some(plaintext);
                        true
                    }
                    None => false,
                },
                _ => false,
            }
        };
        let mut received = self.receive_checked(rng, identity, prekeys, sender, entry, check)?;
        let plaintext = opened
            .into_inner()
            .ok_or(ReceiveError::Decrypt(DecryptError::Unauthenticated))?;
        received.plaintext = plaintext;
        Ok(received)
    }
}
