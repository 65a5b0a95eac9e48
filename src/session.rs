//! The persisted pairwise unit: one Double Ratchet plus who it is with and how it began
//! (PROTOCOL.md §6).

use core::fmt;

use rand_core::CryptoRng;
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::bundle::VerifiedBundle;
use crate::codec::{self, SESSION_SNAPSHOT_V1};
use crate::error::{DecodeError, DecryptError, EncryptError, HandshakeError, RestoreError};
use crate::kdf::{ChainKey, MessageKey, RootKey};
use crate::kem::{KEM_CIPHERTEXT_LEN, KemSecret};
use crate::keys::{self, IdentityKey, IdentityKeyPair, PublicKey};
use crate::limits::{MAX_AD_APPENDIX, MAX_SNAPSHOT_BYTES, MAX_STORED_SKIPPED};
use crate::proto::{PendingPreKeyProto, RatchetProto, SessionProto, SkippedKeyProto};
use crate::ratchet::{Ratchet, RatchetKeyPair};
use crate::skipped::SkippedKeys;
use crate::wire::{Handshake, KemEncapsulation, Message, PreKeyMessage, RatchetMessage};
use crate::x3dh;

/// Which side of the handshake this device played.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Sent the initial message (Alice).
    Initiator,
    /// Accepted the initial message (Bob).
    Responder,
}

/// The prekey data the initiator repeats until the first reply (PROTOCOL.md §6.1), including,
/// for PQXDH, the KEM prekey id and ciphertext (PROFILE-pqxdh §5).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    signed_prekey_id: u32,
    one_time_prekey_id: Option<u32>,
    kem: Option<KemEncapsulation>,
}

/// Which handshakes a device accepts (PROTOCOL.md §13.4, PROFILE-pqxdh §6).
///
/// The default requires post-quantum protection: an initiator refuses a bundle without a KEM
/// prekey (it may have been stripped by the server), and a responder refuses X3DH initial
/// messages. A bundle that carries a KEM prekey is always used with PQXDH, whatever the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum HandshakePolicy {
    /// Only PQXDH.
    #[default]
    RequirePostQuantum,
    /// PQXDH when the bundle offers a KEM prekey, X3DH otherwise (for peers that predate
    /// PQXDH). Classical sessions have no protection against a harvest-now adversary.
    AllowClassical,
}

impl HandshakePolicy {
    pub(crate) fn allows(self, handshake: Handshake) -> bool {
        handshake.is_post_quantum() || self == HandshakePolicy::AllowClassical
    }
}

/// A pairwise session with one remote device.
///
/// # Sans-IO contract
/// * [`Session::encrypt`] returns wire bytes. **Persist [`Session::snapshot`] before sending
///   them**: otherwise a crash can make the next encrypt reuse a message key.
/// * [`Session::decrypt`] is transactional: on `Err` the session is byte-identical to before.
///   Persist the snapshot after a successful decrypt.
/// * No clock, no IO; randomness only from the `rng` argument.
///
/// # Example
/// ```
/// use confidant::{DecryptError, IdentityKeyPair, Message, PreKeyBundle, PreKeys, Session};
/// # use confidant::Timestamp;
/// # use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};
/// # let mut rng = ChaCha20Rng::seed_from_u64(7);
/// # let bob = IdentityKeyPair::generate(&mut rng);
/// # let mut bob_prekeys = PreKeys::new(&mut rng, &bob, Timestamp(1_700_000_000_000));
/// # let bundle = PreKeyBundle::new(bob.public(), bob_prekeys.signed_prekey(), None)
/// #     .with_kem_prekey(bob_prekeys.last_resort_kem_prekey());
/// let alice = IdentityKeyPair::generate(&mut rng);
/// let mut alice_session = Session::initiate(&mut rng, &alice, bundle.verify()?)?;
/// let first = alice_session.encrypt(b"hello Bob")?;
/// # let Message::PreKey(initial) = Message::from_bytes(&first)? else { unreachable!() };
/// # let mut bob_session = bob_prekeys.accept(&mut rng, &bob, &initial)?.session;
///
/// // Bob (whose session came from `PreKeys::accept`) replies.
/// let reply = bob_session.encrypt(b"hello Alice")?;
/// assert_eq!(&alice_session.decrypt_bytes(&mut rng, &reply)?[..], b"hello Alice");
///
/// // Persist the state (encrypted at rest). A replay is refused and changes nothing.
/// let snapshot = alice_session.snapshot();
/// let replayed = alice_session.decrypt_bytes(&mut rng, &reply);
/// assert_eq!(replayed, Err(DecryptError::Duplicate { counter: 0 }));
/// assert!(alice_session.snapshot() == snapshot);
///
/// // After a restart, the restored session carries on.
/// let mut restored = Session::restore(&snapshot)?;
/// let next = bob_session.encrypt(b"still there?")?;
/// assert_eq!(&restored.decrypt_bytes(&mut rng, &next)?[..], b"still there?");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Session {
    ratchet: Ratchet,
    handshake: Handshake,
    role: Role,
    local_identity: IdentityKey,
    remote_identity: IdentityKey,
    base_key: PublicKey,
    pending: Option<Pending>,
}

impl Session {
    /// Starts a session from a verified bundle under the default
    /// [`HandshakePolicy::RequirePostQuantum`]; see [`Session::initiate_with_policy`].
    ///
    /// # Errors
    /// As [`Session::initiate_with_policy`].
    pub fn initiate(
        rng: &mut (impl CryptoRng + ?Sized),
        identity: &IdentityKeyPair,
        bundle: VerifiedBundle,
    ) -> Result<Self, HandshakeError> {
        Self::initiate_with_policy(rng, identity, bundle, HandshakePolicy::default())
    }

    /// Starts a session from a verified bundle: PQXDH if the bundle has a KEM prekey
    /// (PROTOCOL.md §13.3), otherwise X3DH (§4.2) if `policy` allows classical sessions.
    ///
    /// Draws the ephemeral key `EK_A`, then (PQXDH) the 32-byte encapsulation randomness, then
    /// the first ratchet key from `rng`, in that order. Every message sent before the first
    /// reply carries the initial data. Takes the bundle by value: its one-time prekeys may
    /// start only one session (fetch a new bundle to retry).
    ///
    /// # Errors
    /// [`HandshakeError::PostQuantumRequired`] for a bundle without a KEM prekey under
    /// [`HandshakePolicy::RequirePostQuantum`]; [`HandshakeError::Unauthenticated`] if a DH is
    /// non-contributory.
    pub fn initiate_with_policy(
        rng: &mut (impl CryptoRng + ?Sized),
        identity: &IdentityKeyPair,
        bundle: VerifiedBundle,
        policy: HandshakePolicy,
    ) -> Result<Self, HandshakeError> {
        let handshake = if bundle.kem_prekey().is_some() {
            Handshake::Pqxdh
        } else {
            Handshake::X3dh
        };
        if !policy.allows(handshake) {
            return Err(HandshakeError::PostQuantumRequired);
        }
        let ephemeral = keys::generate_x25519(rng);
        let base_key = PublicKey::from_secret(&ephemeral);
        let signed_prekey = bundle.signed_prekey();
        let one_time = bundle.one_time_prekey();
        let (kem, kem_shared_secret) = match bundle.kem_prekey() {
            Some(k) => {
                let enc = k
                    .key()
                    .encapsulate(rng)
                    .ok_or(HandshakeError::Unauthenticated)?;
                (
                    Some(KemEncapsulation {
                        prekey_id: k.id(),
                        ciphertext: enc.ciphertext,
                    }),
                    Some(enc.shared_secret),
                )
            }
            None => (None, None),
        };
        let agreement = x3dh::initiate(
            identity,
            &ephemeral,
            &bundle.identity_key(),
            &signed_prekey.key().to_bytes(),
            one_time.map(|k| k.key().to_bytes()).as_ref(),
            kem_shared_secret.as_deref(),
            &[],
        )
        .ok_or(HandshakeError::Unauthenticated)?;
        drop(kem_shared_secret);
        drop(ephemeral);
        let ratchet = Ratchet::init_alice(
            rng,
            &agreement.shared_secret,
            agreement.associated_data.clone(),
            &signed_prekey.key().to_bytes(),
        )
        .ok_or(HandshakeError::Unauthenticated)?;
        Ok(Self {
            ratchet,
            handshake,
            role: Role::Initiator,
            local_identity: identity.public(),
            remote_identity: bundle.identity_key(),
            base_key,
            pending: Some(Pending {
                signed_prekey_id: signed_prekey.id(),
                one_time_prekey_id: one_time.map(|k| k.id()),
                kem,
            }),
        })
    }

    /// Creates the responder's session from an authenticated initial message; used by
    /// [`PreKeys::accept`](crate::PreKeys::accept), which owns the prekey secrets.
    pub(crate) fn respond(
        rng: &mut (impl CryptoRng + ?Sized),
        identity: &IdentityKeyPair,
        signed_prekey: &StaticSecret,
        one_time_prekey: Option<&StaticSecret>,
        kem_prekey: Option<&KemSecret>,
        message: &PreKeyMessage,
        check: impl FnOnce(&[u8]) -> bool,
    ) -> Result<(Self, Zeroizing<Vec<u8>>), HandshakeError> {
        let kem_shared_secret = match (kem_prekey, &message.kem) {
            (Some(secret), Some(kem)) => Some(secret.decapsulate(&kem.ciphertext)),
            (None, None) => None,
            // The caller pairs them by the message's handshake kind; never mix.
            _ => return Err(HandshakeError::Unauthenticated),
        };
        let agreement = x3dh::respond(
            identity,
            signed_prekey,
            one_time_prekey,
            &message.identity_key,
            &message.base_key.to_bytes(),
            kem_shared_secret.as_deref(),
            &[],
        )
        .ok_or(HandshakeError::Unauthenticated)?;
        let spk_copy = StaticSecret::from(signed_prekey.to_bytes());
        let mut ratchet = Ratchet::init_bob(
            &agreement.shared_secret,
            agreement.associated_data.clone(),
            spk_copy,
        );
        let inner = &message.message;
        let decrypted = ratchet
            .decrypt_checked(rng, &inner.header, &inner.ciphertext, check)
            .map_err(|e| match e {
                DecryptError::Unauthenticated => HandshakeError::Unauthenticated,
                other => HandshakeError::FirstMessage(other),
            })?;
        let session = Self {
            ratchet,
            handshake: message.handshake,
            role: Role::Responder,
            local_identity: identity.public(),
            remote_identity: message.identity_key,
            base_key: message.base_key,
            pending: None,
        };
        Ok((session, decrypted.plaintext))
    }

    /// Encrypts `plaintext` and returns the wire bytes: an initial message until the first
    /// reply has been decrypted, a ratchet message after.
    ///
    /// **Persist [`Session::snapshot`] before transmitting the result.**
    ///
    /// # Errors
    /// [`EncryptError`]; the session is unchanged.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, EncryptError> {
        if self.pending.is_none() {
            // The common case, sealed straight into the wire buffer (PROTOCOL.md §8.2).
            let (bytes, _) = self
                .ratchet
                .encrypt_framed(plaintext, RatchetMessage::frame)?;
            return Ok(bytes);
        }
        let out = self.ratchet.encrypt(plaintext)?;
        let message = RatchetMessage {
            header: out.header,
            ciphertext: out.ciphertext,
        };
        Ok(match &self.pending {
            Some(p) => PreKeyMessage {
                handshake: self.handshake,
                identity_key: self.local_identity,
                base_key: self.base_key,
                signed_prekey_id: p.signed_prekey_id,
                one_time_prekey_id: p.one_time_prekey_id,
                kem: p.kem.clone(),
                message,
            }
            .to_bytes(),
            None => message.to_bytes(),
        })
    }

    /// Decrypts a parsed message. An initial message is accepted only if it belongs to this
    /// session (same base key and identity; the initiator keeps repeating its initial data).
    ///
    /// Transactional: on `Err` the session is unchanged and no randomness was used.
    ///
    /// # Errors
    /// [`DecryptError`]; [`DecryptError::OtherSession`] for an initial message of another
    /// session (hand it to [`PreKeys::accept`](crate::PreKeys::accept)).
    pub fn decrypt(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        message: &Message,
    ) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
        self.decrypt_checked(rng, message, |_| true)
    }

    /// As [`Session::decrypt`], with `check` run on the plaintext before anything is committed.
    pub(crate) fn decrypt_checked(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        message: &Message,
        check: impl FnOnce(&[u8]) -> bool,
    ) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
        let inner = match message {
            Message::Ratchet(m) => m,
            Message::PreKey(m) => {
                if !self.owns(m) {
                    return Err(DecryptError::OtherSession);
                }
                &m.message
            }
        };
        let out = self
            .ratchet
            .decrypt_checked(rng, &inner.header, &inner.ciphertext, check)?;
        // A reply proves the responder has the session: stop sending the initial data.
        if self.role == Role::Initiator {
            self.pending = None;
        }
        Ok(out.plaintext)
    }

    /// Parses and decrypts wire bytes; see [`Session::decrypt`].
    ///
    /// # Errors
    /// As [`Session::decrypt`], plus [`DecryptError::Malformed`].
    pub fn decrypt_bytes(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        bytes: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
        self.decrypt(rng, &Message::from_bytes(bytes)?)
    }

    /// Whether an initial message was produced by this session's initiator for this session.
    #[must_use]
    pub fn owns(&self, message: &PreKeyMessage) -> bool {
        self.role == Role::Responder
            && message.base_key == self.base_key
            && message.identity_key == self.remote_identity
            && message.handshake == self.handshake
    }

    /// The handshake that created the session (never changes).
    #[must_use]
    pub fn handshake(&self) -> Handshake {
        self.handshake
    }

    /// Which side this device played.
    #[must_use]
    pub fn role(&self) -> Role {
        self.role
    }

    /// This device's identity key.
    #[must_use]
    pub fn local_identity(&self) -> IdentityKey {
        self.local_identity
    }

    /// The peer device's identity key, authenticated by the handshake.
    #[must_use]
    pub fn remote_identity(&self) -> IdentityKey {
        self.remote_identity
    }

    /// The initiator's ephemeral key `EK_A`: identifies the session on both sides.
    #[must_use]
    pub fn base_key(&self) -> PublicKey {
        self.base_key
    }

    /// Whether outgoing messages still carry the initial data (initiator, no reply yet).
    #[must_use]
    pub fn awaiting_reply(&self) -> bool {
        self.pending.is_some()
    }

    /// Number of stored skipped message keys.
    #[must_use]
    pub fn skipped_keys(&self) -> usize {
        self.ratchet.skipped.len()
    }

    /// The session's state as a versioned snapshot (PROTOCOL.md §10.1). Contains secrets:
    /// store it encrypted at rest.
    #[must_use]
    pub fn snapshot(&self) -> Zeroizing<Vec<u8>> {
        let r = &self.ratchet;
        let proto = SessionProto {
            handshake: self.handshake.code(),
            initiator: self.role == Role::Initiator,
            local_identity: self.local_identity.to_bytes().to_vec(),
            remote_identity: self.remote_identity.to_bytes().to_vec(),
            base_key: self.base_key.to_bytes().to_vec(),
            pending: self.pending.as_ref().map(|p| PendingPreKeyProto {
                signed_prekey_id: p.signed_prekey_id,
                one_time_prekey_id: p.one_time_prekey_id,
                kem_prekey_id: p.kem.as_ref().map(|k| k.prekey_id),
                kem_ciphertext: p.kem.as_ref().map(|k| k.ciphertext.to_vec()),
            }),
            ratchet: Some(RatchetProto {
                associated_data: r.ad.clone(),
                root_key: r.root.as_bytes().to_vec(),
                sending_ratchet_private: r.dhs.secret.to_bytes().to_vec(),
                remote_ratchet_public: r.dhr.map(|k| k.to_vec()),
                sending_chain_key: r.cks.as_ref().map(|k| k.as_bytes().to_vec()),
                receiving_chain_key: r.ckr.as_ref().map(|k| k.as_bytes().to_vec()),
                ns: r.ns,
                nr: r.nr,
                pn: r.pn,
                skipped: r
                    .skipped
                    .iter()
                    .map(|(dh, n, key)| SkippedKeyProto {
                        ratchet_key: dh.to_vec(),
                        counter: n,
                        message_key: key.as_bytes().to_vec(),
                    })
                    .collect(),
                sending_ratchet_public: r.dhs.public.to_vec(),
            }),
            local_identity_x25519: self.local_identity.x25519().to_vec(),
            remote_identity_x25519: self.remote_identity.x25519().to_vec(),
        };
        codec::encode_secret(SESSION_SNAPSHOT_V1, &proto)
    }

    /// Restores a snapshot, treating it as untrusted input: every length, limit and listed
    /// invariant is checked, and nothing in it can make this or a later call panic
    /// (PROTOCOL.md §10.1). Keys are taken as recorded, without curve arithmetic: the identity
    /// keys' two forms and the sending ratchet key pair are not re-derived from each other (the
    /// session never computes with the identity keys' X25519 forms; §10.1 lists what is not
    /// checked).
    ///
    /// # Errors
    /// [`RestoreError`] naming the violated invariant.
    pub fn restore(bytes: &[u8]) -> Result<Self, RestoreError> {
        let mut proto: SessionProto = codec::decode_counted(
            bytes,
            SESSION_SNAPSHOT_V1,
            MAX_SNAPSHOT_BYTES,
            &[codec::RepeatedLimit {
                path: &[7],
                tag: 10,
                max: MAX_STORED_SKIPPED,
                field: "ratchet.skipped",
            }],
        )?;
        let handshake =
            Handshake::from_code(proto.handshake).ok_or(RestoreError::Invariant("handshake"))?;
        let role = if proto.initiator {
            Role::Initiator
        } else {
            Role::Responder
        };
        // Both forms as recorded, without the curve arithmetic that validated them when they
        // entered the session; the associated data check below binds the Ed25519 forms.
        let local_identity =
            IdentityKey::from_recorded(&proto.local_identity, &proto.local_identity_x25519)
                .map_err(|_| RestoreError::Invariant("local_identity"))?;
        let remote_identity =
            IdentityKey::from_recorded(&proto.remote_identity, &proto.remote_identity_x25519)
                .map_err(|_| RestoreError::Invariant("remote_identity"))?;
        let base_key = PublicKey::from_bytes(&proto.base_key)
            .map_err(|_| RestoreError::Invariant("base_key"))?;
        let pending = proto
            .pending
            .as_ref()
            .map(|p| restore_pending(p, handshake))
            .transpose()?;
        if pending.is_some() && role != Role::Initiator {
            return Err(RestoreError::Invariant("pending only for the initiator"));
        }
        let r = proto
            .ratchet
            .take()
            .ok_or(RestoreError::Invariant("ratchet"))?;
        let (initiator, responder) = match role {
            Role::Initiator => (&local_identity, &remote_identity),
            Role::Responder => (&remote_identity, &local_identity),
        };
        let expected_ad = x3dh::associated_data(initiator, responder, &[]);
        if r.associated_data.len() > expected_ad.len() + MAX_AD_APPENDIX
            || r.associated_data.get(..expected_ad.len()) != Some(expected_ad.as_slice())
        {
            return Err(RestoreError::Invariant("associated_data"));
        }
        let ratchet = restore_ratchet(&r)?;
        // A session can always send, and always knows the peer's ratchet key: the initiator's
        // from the bundle, the responder's from the first message (PROTOCOL.md §5.1).
        if ratchet.cks.is_none() || ratchet.dhr.is_none() {
            return Err(RestoreError::Invariant(
                "sending chain and remote ratchet key",
            ));
        }
        // The initiator repeats its initial data exactly until it has received something.
        let received = ratchet.ckr.is_some();
        if (role == Role::Initiator && pending.is_some() == received)
            || (role == Role::Responder && !received)
        {
            return Err(RestoreError::Invariant("pending initial data"));
        }
        Ok(Self {
            ratchet,
            handshake,
            role,
            local_identity,
            remote_identity,
            base_key,
            pending,
        })
    }
}

/// The initiator's pending initial data; KEM fields exactly for PQXDH sessions.
fn restore_pending(p: &PendingPreKeyProto, handshake: Handshake) -> Result<Pending, RestoreError> {
    let kem = match (handshake, p.kem_prekey_id, p.kem_ciphertext.as_deref()) {
        (Handshake::X3dh, None, None) => None,
        (Handshake::Pqxdh, Some(prekey_id), Some(ct)) => Some(KemEncapsulation {
            prekey_id,
            ciphertext: Box::new(
                <[u8; KEM_CIPHERTEXT_LEN]>::try_from(ct)
                    .map_err(|_| RestoreError::Invariant("pending.kem_ciphertext"))?,
            ),
        }),
        _ => {
            return Err(RestoreError::Invariant(
                "pending KEM data matches the handshake",
            ));
        }
    };
    Ok(Pending {
        signed_prekey_id: p.signed_prekey_id,
        one_time_prekey_id: p.one_time_prekey_id,
        kem,
    })
}

fn key32(bytes: &[u8], field: &'static str) -> Result<[u8; 32], RestoreError> {
    codec::array(bytes, field).map_err(|_: DecodeError| RestoreError::Invariant(field))
}

fn restore_ratchet(r: &RatchetProto) -> Result<Ratchet, RestoreError> {
    let root = RootKey::from_bytes(key32(&r.root_key, "root_key")?);
    let mut dhs_bytes = Zeroizing::new(key32(
        &r.sending_ratchet_private,
        "sending_ratchet_private",
    )?);
    let secret = StaticSecret::from(*dhs_bytes);
    dhs_bytes.as_mut().fill(0);
    let public = key32(&r.sending_ratchet_public, "sending_ratchet_public")?;
    let dhs = RatchetKeyPair::from_recorded(secret, public);
    let dhr = r
        .remote_ratchet_public
        .as_deref()
        .map(|k| key32(k, "remote_ratchet_public"))
        .transpose()?;
    let cks = r
        .sending_chain_key
        .as_deref()
        .map(|k| key32(k, "sending_chain_key").map(ChainKey::from_bytes))
        .transpose()?;
    let ckr = r
        .receiving_chain_key
        .as_deref()
        .map(|k| key32(k, "receiving_chain_key").map(ChainKey::from_bytes))
        .transpose()?;
    if ckr.is_some() && dhr.is_none() {
        return Err(RestoreError::Invariant(
            "receiving chain without remote ratchet key",
        ));
    }
    if ckr.is_none() && r.nr != 0 {
        return Err(RestoreError::Invariant("nr without receiving chain"));
    }
    if cks.is_none() && (r.ns != 0 || r.pn != 0) {
        return Err(RestoreError::Invariant("counters without sending chain"));
    }
    if r.skipped.len() > MAX_STORED_SKIPPED {
        return Err(RestoreError::Invariant(
            "skipped keys exceed MAX_STORED_SKIPPED",
        ));
    }
    let mut skipped = SkippedKeys::default();
    for s in &r.skipped {
        let dh = key32(&s.ratchet_key, "skipped.ratchet_key")?;
        if skipped.get(&dh, s.counter).is_some() {
            return Err(RestoreError::Invariant("duplicate skipped key"));
        }
        let key = MessageKey::from_bytes(key32(&s.message_key, "skipped.message_key")?);
        skipped.insert(dh, s.counter, key);
    }
    Ok(Ratchet {
        ad: r.associated_data.clone(),
        root,
        dhs,
        dhr,
        cks,
        ckr,
        ns: r.ns,
        nr: r.nr,
        pn: r.pn,
        skipped,
    })
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("handshake", &self.handshake)
            .field("role", &self.role)
            .field("local_identity", &self.local_identity)
            .field("remote_identity", &self.remote_identity)
            .field("base_key", &self.base_key)
            .field("awaiting_reply", &self.pending.is_some())
            .field("skipped_keys", &self.ratchet.skipped.len())
            .finish_non_exhaustive()
    }
}
