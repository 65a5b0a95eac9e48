//! Client-side prekey secrets as a value (PROTOCOL.md §3.3, §6.3, §13.5): generation,
//! rotation with a grace period of signed prekeys and last-resort KEM prekeys, one-time prekey
//! consumption (EC and KEM), the handshake policy, and replay rejection.

use core::fmt;
use std::collections::{BTreeMap, BTreeSet};

use rand_core::CryptoRng;
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::bundle::{KemPreKeyPublic, OneTimePreKeyPublic, SignedPreKeyPublic};
use crate::codec::{self, PREKEYS_SNAPSHOT_V1, RepeatedLimit};
use crate::error::{HandshakeError, PreKeyError, RestoreError};
use crate::kem::{KEM_SEED_LEN, KemSecret};
use crate::keys::{self, IdentityKeyPair, PublicKey};
use crate::limits::{
    MAX_ACCEPTED_BASE_KEYS, MAX_LAST_RESORT_KEM_PREKEYS, MAX_ONE_TIME_KEM_PREKEYS,
    MAX_ONE_TIME_PREKEYS, MAX_SIGNED_PREKEYS, MAX_SNAPSHOT_BYTES,
};
use crate::proto::{
    AcceptedBaseKeyProto, KemPreKeySecretProto, OneTimePreKeySecretProto, PreKeysProto,
    SignedPreKeySecretProto,
};
use crate::server::PreKeyUpload;
use crate::session::{HandshakePolicy, Session};
use crate::time::Timestamp;
use crate::wire::PreKeyMessage;

/// A key with an id that is replaced by rotation and kept for a grace period after.
trait Keyed {
    fn id(&self) -> u32;
}

/// The current key plus retired ones (oldest first) with the time they were retired.
struct Rotating<T> {
    current: T,
    retired: Vec<(T, Timestamp)>,
}

impl<T: Keyed> Rotating<T> {
    fn new(current: T) -> Self {
        Self {
            current,
            retired: Vec::new(),
        }
    }

    fn find(&self, id: u32) -> Option<&T> {
        core::iter::once(&self.current)
            .chain(self.retired.iter().map(|(k, _)| k))
            .find(|k| k.id() == id)
    }

    /// Makes `next` current and retires the old one at `now`; drops the oldest retired keys
    /// beyond `max_held` keys in all. Returns the dropped ids.
    fn rotate(&mut self, next: T, now: Timestamp, max_held: usize) -> Vec<u32> {
        let old = core::mem::replace(&mut self.current, next);
        self.retired.push((old, now));
        let excess = (self.retired.len() + 1).saturating_sub(max_held);
        self.retired.drain(..excess).map(|(k, _)| k.id()).collect()
    }

    /// Drops keys retired at least `grace_ms` before `now`. Returns the dropped ids.
    fn prune(&mut self, now: Timestamp, grace_ms: u64) -> Vec<u32> {
        let mut dropped = Vec::new();
        self.retired.retain(|(k, at)| {
            let expired = at.plus_ms(grace_ms) <= now;
            if expired {
                dropped.push(k.id());
            }
            !expired
        });
        dropped
    }

    /// Current first, then retired oldest first, with their retirement times.
    fn iter(&self) -> impl Iterator<Item = (&T, Option<Timestamp>)> {
        core::iter::once((&self.current, None))
            .chain(self.retired.iter().map(|(k, at)| (k, Some(*at))))
    }

    /// Rebuilds from `(key, retired_at)` records: exactly one current, unique nonzero ids.
    fn from_records(
        records: Vec<(T, Option<Timestamp>)>,
        what: &'static str,
    ) -> Result<Self, RestoreError> {
        let mut current = None;
        let mut retired = Vec::with_capacity(records.len());
        let mut ids = BTreeSet::new();
        for (key, retired_at) in records {
            if key.id() == 0 || !ids.insert(key.id()) {
                return Err(RestoreError::Invariant(what));
            }
            match retired_at {
                None if current.is_none() => current = Some(key),
                None => return Err(RestoreError::Invariant(what)),
                Some(at) => retired.push((key, at)),
            }
        }
        let current = current.ok_or(RestoreError::Invariant(what))?;
        Ok(Self { current, retired })
    }
}

struct SignedPreKeySecret {
    public: SignedPreKeyPublic,
    secret: StaticSecret,
}

impl Keyed for SignedPreKeySecret {
    fn id(&self) -> u32 {
        self.public.id
    }
}

/// A last-resort KEM prekey: its seed, and the signature and time published with it.
struct LastResortKem {
    id: u32,
    secret: KemSecret,
    signature: [u8; 64],
    created_at: Timestamp,
}

impl Keyed for LastResortKem {
    fn id(&self) -> u32 {
        self.id
    }
}

/// Which KEM prekey an initial message used.
enum KemUse<'a> {
    OneTime(u32, &'a KemSecret),
    LastResort(u32, &'a KemSecret),
}

/// The replay-record entry an accepted initial message adds, if any (PROTOCOL.md §6.3, §13.5).
#[derive(Clone, Copy)]
enum Record {
    /// X3DH without a one-time prekey: `(signed prekey id, base key)`, kept with the signed prekey.
    Signed(u32, [u8; 32]),
    /// PQXDH with a last-resort KEM prekey: `(KEM prekey id, signed prekey id, base key)`,
    /// kept with the KEM prekey (PROFILE-pqxdh §6.4).
    Kem(u32, u32, [u8; 32]),
}

/// The result of accepting an initial message.
pub struct Accepted {
    /// The new session (responder side). Persist it together with the updated [`PreKeys`].
    pub session: Session,
    /// The first message's plaintext.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// The one-time prekey this message used, now deleted from [`PreKeys`]: it will never be
    /// accepted again. `None` if the initiator used none.
    pub consumed_one_time_prekey: Option<u32>,
    /// The one-time KEM prekey this message used, now deleted likewise. `None` for X3DH and for
    /// a last-resort KEM prekey (which stays, with a replay record).
    pub consumed_one_time_kem_prekey: Option<u32>,
}

impl fmt::Debug for Accepted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accepted")
            .field("session", &self.session)
            .field("plaintext_len", &self.plaintext.len())
            .field("consumed_one_time_prekey", &self.consumed_one_time_prekey)
            .field(
                "consumed_one_time_kem_prekey",
                &self.consumed_one_time_kem_prekey,
            )
            .finish()
    }
}

/// What [`PreKeys::prune`] dropped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pruned {
    /// Ids of retired signed prekeys dropped, with their replay records.
    pub signed_prekeys: Vec<u32>,
    /// Ids of retired last-resort KEM prekeys dropped, with their replay records.
    pub last_resort_kem_prekeys: Vec<u32>,
}

/// A device's prekey secrets: signed prekeys and last-resort KEM prekeys (the current ones and
/// retired ones within their grace period), unused one-time EC and KEM prekeys, the replay
/// record of accepted initial messages, and the [`HandshakePolicy`] for accepting them.
///
/// A value the caller persists with [`PreKeys::snapshot`]; every method that changes it
/// returns what changed, and a failed [`PreKeys::accept`] changes nothing.
///
/// # Example
/// ```
/// use confidant::{HandshakeError, IdentityKeyPair, Message, PreKeyBundle, PreKeys, Session};
/// use confidant::Timestamp;
/// # use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};
/// # let mut rng = ChaCha20Rng::seed_from_u64(7);
/// let bob = IdentityKeyPair::generate(&mut rng);
/// let mut prekeys = PreKeys::new(&mut rng, &bob, Timestamp(1_700_000_000_000));
/// let one_time = prekeys.generate_one_time_prekeys(&mut rng, 10)?;
/// assert_eq!(prekeys.one_time_prekey_count(), 10);
/// let _persist_first = prekeys.snapshot(); // then upload the public halves
///
/// // Alice starts a session from a bundle with Bob's first one-time prekey.
/// # let alice = IdentityKeyPair::generate(&mut rng);
/// let bundle = PreKeyBundle::new(bob.public(), prekeys.signed_prekey(), one_time.first().copied())
///     .with_kem_prekey(prekeys.last_resort_kem_prekey());
/// let mut alice_session = Session::initiate(&mut rng, &alice, bundle.verify()?)?;
/// let wire = alice_session.encrypt(b"hi Bob")?;
/// let Message::PreKey(initial) = Message::from_bytes(&wire)? else { unreachable!() };
///
/// let accepted = prekeys.accept(&mut rng, &bob, &initial)?;
/// assert_eq!(&accepted.plaintext[..], b"hi Bob");
/// assert_eq!(accepted.consumed_one_time_prekey, one_time.first().map(|k| k.id()));
/// assert_eq!(prekeys.one_time_prekey_count(), 9);
///
/// // The same initial message again cannot start a second session; nothing changes.
/// let replayed = prekeys.accept(&mut rng, &bob, &initial);
/// assert_eq!(replayed.err(), Some(HandshakeError::Replay));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PreKeys {
    signed: Rotating<SignedPreKeySecret>,
    last_resort_kem: Rotating<LastResortKem>,
    one_time: BTreeMap<u32, StaticSecret>,
    one_time_kem: BTreeMap<u32, KemSecret>,
    next_signed_id: u32,
    next_one_time_id: u32,
    /// One id space for one-time and last-resort KEM prekeys (PROFILE-pqxdh §3).
    next_kem_id: u32,
    /// Replay record for X3DH accepts without a one-time prekey: signed prekey id → base keys.
    accepted: BTreeMap<u32, BTreeSet<[u8; 32]>>,
    /// Replay record for PQXDH accepts with a last-resort KEM prekey: KEM prekey id →
    /// `(signed prekey id, base key)`.
    accepted_kem: BTreeMap<u32, BTreeSet<(u32, [u8; 32])>>,
    policy: HandshakePolicy,
}

impl PreKeys {
    /// A fresh set: signed prekey id 1, last-resort KEM prekey id 1, no one-time prekeys, and
    /// [`HandshakePolicy::RequirePostQuantum`]. Draws 32 bytes (signed prekey) and then 64
    /// bytes (KEM seed) from `rng`.
    pub fn new(
        rng: &mut (impl CryptoRng + ?Sized),
        identity: &IdentityKeyPair,
        now: Timestamp,
    ) -> Self {
        Self {
            signed: Rotating::new(new_signed(rng, identity, 1, now)),
            last_resort_kem: Rotating::new(new_last_resort(rng, identity, 1, now)),
            one_time: BTreeMap::new(),
            one_time_kem: BTreeMap::new(),
            next_signed_id: 2,
            next_one_time_id: 1,
            next_kem_id: 2,
            accepted: BTreeMap::new(),
            accepted_kem: BTreeMap::new(),
            policy: HandshakePolicy::default(),
        }
    }

    /// The policy [`PreKeys::accept`] applies.
    #[must_use]
    pub fn policy(&self) -> HandshakePolicy {
        self.policy
    }

    /// Sets the policy [`PreKeys::accept`] applies (persisted in the snapshot). Allow classical
    /// X3DH only while peers without PQXDH must still reach this device.
    pub fn set_policy(&mut self, policy: HandshakePolicy) {
        self.policy = policy;
    }

    /// The current signed prekey, to publish.
    #[must_use]
    pub fn signed_prekey(&self) -> SignedPreKeyPublic {
        self.signed.current.public
    }

    /// The current last-resort KEM prekey, to publish. Recomputes the 1568-byte encapsulation
    /// key from the stored seed (an ML-KEM key generation).
    #[must_use]
    pub fn last_resort_kem_prekey(&self) -> KemPreKeyPublic {
        let k = &self.last_resort_kem.current;
        KemPreKeyPublic::new(k.id, k.secret.public(), k.signature)
    }

    /// Replaces the current signed prekey with a new one. The old one is retired at `now` and
    /// still accepted until [`PreKeys::prune`] removes it, so delayed initial messages decrypt.
    /// If more than [`MAX_SIGNED_PREKEYS`] would be held, the oldest retired ones are dropped
    /// with their replay records.
    ///
    /// **Persist [`PreKeys::snapshot`] before uploading the result**: state restored from an
    /// older snapshot would issue the same ids again with different keys, and the key server
    /// would keep serving the lost ones.
    pub fn rotate_signed_prekey(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        identity: &IdentityKeyPair,
        now: Timestamp,
    ) -> SignedPreKeyPublic {
        let id = allocate_id(&mut self.next_signed_id, |id| {
            self.signed.find(id).is_some()
        });
        let dropped =
            self.signed
                .rotate(new_signed(rng, identity, id, now), now, MAX_SIGNED_PREKEYS);
        for id in dropped {
            self.forget_signed(id);
        }
        self.signed.current.public
    }

    /// Replaces the current last-resort KEM prekey (PROFILE-pqxdh §6.4), like
    /// [`PreKeys::rotate_signed_prekey`]: the old one stays usable until pruned, and at most
    /// [`MAX_LAST_RESORT_KEM_PREKEYS`] are held. Draws a 64-byte seed from `rng`.
    ///
    /// **Persist [`PreKeys::snapshot`] before uploading the result**: state restored from an
    /// older snapshot would issue the same ids again with different keys, and the key server
    /// would keep serving the lost ones.
    pub fn rotate_last_resort_kem_prekey(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        identity: &IdentityKeyPair,
        now: Timestamp,
    ) -> KemPreKeyPublic {
        let id = self.allocate_kem_id();
        let next = new_last_resort(rng, identity, id, now);
        for id in self
            .last_resort_kem
            .rotate(next, now, MAX_LAST_RESORT_KEM_PREKEYS)
        {
            self.accepted_kem.remove(&id);
        }
        self.last_resort_kem_prekey()
    }

    /// Drops signed prekeys and last-resort KEM prekeys retired for at least `grace_ms`
    /// (default [`SIGNED_PREKEY_GRACE_MS`](crate::limits::SIGNED_PREKEY_GRACE_MS)), with their
    /// replay records.
    pub fn prune(&mut self, now: Timestamp, grace_ms: u64) -> Pruned {
        let signed_prekeys = self.signed.prune(now, grace_ms);
        for id in &signed_prekeys {
            self.forget_signed(*id);
        }
        let last_resort_kem_prekeys = self.last_resort_kem.prune(now, grace_ms);
        for id in &last_resort_kem_prekeys {
            self.accepted_kem.remove(id);
        }
        Pruned {
            signed_prekeys,
            last_resort_kem_prekeys,
        }
    }

    /// A dropped signed prekey takes its replay records with it, in both records.
    fn forget_signed(&mut self, signed_prekey_id: u32) {
        self.accepted.remove(&signed_prekey_id);
        for record in self.accepted_kem.values_mut() {
            record.retain(|(spk, _)| *spk != signed_prekey_id);
        }
    }

    fn allocate_kem_id(&mut self) -> u32 {
        let (one_time, last_resort) = (&self.one_time_kem, &self.last_resort_kem);
        allocate_id(&mut self.next_kem_id, |id| {
            one_time.contains_key(&id) || last_resort.find(id).is_some()
        })
    }

    /// Generates `count` one-time prekeys and returns their public halves to upload.
    ///
    /// **Persist [`PreKeys::snapshot`] before uploading the result**: state restored from an
    /// older snapshot would issue the same ids again with different keys, and the key server
    /// would keep serving the lost ones.
    ///
    /// # Errors
    /// [`PreKeyError::TooMany`] if more than [`MAX_ONE_TIME_PREKEYS`] would be held.
    pub fn generate_one_time_prekeys(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        count: usize,
    ) -> Result<Vec<OneTimePreKeyPublic>, PreKeyError> {
        if self.one_time.len().saturating_add(count) > MAX_ONE_TIME_PREKEYS {
            return Err(PreKeyError::TooMany {
                requested: count,
                limit: MAX_ONE_TIME_PREKEYS,
            });
        }
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let one_time = &self.one_time;
            let id = allocate_id(&mut self.next_one_time_id, |id| one_time.contains_key(&id));
            let secret = keys::generate_x25519(rng);
            out.push(OneTimePreKeyPublic::new(
                id,
                PublicKey::from_secret(&secret),
            ));
            self.one_time.insert(id, secret);
        }
        Ok(out)
    }

    /// Generates `count` signed one-time KEM prekeys (64-byte seed each from `rng`) and returns
    /// their public halves to upload (PROFILE-pqxdh §3).
    ///
    /// **Persist [`PreKeys::snapshot`] before uploading the result**: state restored from an
    /// older snapshot would issue the same ids again with different keys, and the key server
    /// would keep serving the lost ones.
    ///
    /// # Errors
    /// [`PreKeyError::TooMany`] if more than [`MAX_ONE_TIME_KEM_PREKEYS`] would be held.
    pub fn generate_one_time_kem_prekeys(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        identity: &IdentityKeyPair,
        count: usize,
    ) -> Result<Vec<KemPreKeyPublic>, PreKeyError> {
        if self.one_time_kem.len().saturating_add(count) > MAX_ONE_TIME_KEM_PREKEYS {
            return Err(PreKeyError::TooMany {
                requested: count,
                limit: MAX_ONE_TIME_KEM_PREKEYS,
            });
        }
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let id = self.allocate_kem_id();
            let secret = KemSecret::generate(rng);
            let key = secret.public();
            let signature = identity.sign(&key.encode());
            out.push(KemPreKeyPublic::new(id, key, signature));
            self.one_time_kem.insert(id, secret);
        }
        Ok(out)
    }

    /// An upload of this device's current signed prekey and last-resort KEM prekey, with the
    /// given new one-time prekeys (PROTOCOL.md §7.1, §13.6). Always carrying the last-resort KEM
    /// prekey keeps the device reachable by peers that require PQXDH.
    #[must_use]
    pub fn upload(
        &self,
        identity: &IdentityKeyPair,
        one_time_prekeys: Vec<OneTimePreKeyPublic>,
        one_time_kem_prekeys: Vec<KemPreKeyPublic>,
    ) -> PreKeyUpload {
        PreKeyUpload::new(identity.public(), self.signed_prekey(), one_time_prekeys)
            .with_last_resort_kem_prekey(self.last_resort_kem_prekey())
            .with_one_time_kem_prekeys(one_time_kem_prekeys)
    }

    /// Number of unused one-time prekeys held.
    #[must_use]
    pub fn one_time_prekey_count(&self) -> usize {
        self.one_time.len()
    }

    /// Number of unused one-time KEM prekeys held.
    #[must_use]
    pub fn one_time_kem_prekey_count(&self) -> usize {
        self.one_time_kem.len()
    }

    fn kem_use(&self, id: u32) -> Option<KemUse<'_>> {
        if let Some(secret) = self.one_time_kem.get(&id) {
            return Some(KemUse::OneTime(id, secret));
        }
        self.last_resort_kem
            .find(id)
            .map(|k| KemUse::LastResort(id, &k.secret))
    }

    fn recorded(&self, record: Record) -> (bool, usize) {
        match record {
            Record::Signed(spk, base) => self
                .accepted
                .get(&spk)
                .map_or((false, 0), |r| (r.contains(&base), r.len())),
            Record::Kem(kem, spk, base) => self
                .accepted_kem
                .get(&kem)
                .map_or((false, 0), |r| (r.contains(&(spk, base)), r.len())),
        }
    }

    /// Accepts an initial message: X3DH or PQXDH as responder, then decrypts the first message
    /// (PROTOCOL.md §4.4, §6.3, §13.5). Checks, in order: the policy, the signed prekey, the
    /// KEM prekey, the replay record, the one-time prekey. On success one-time prekeys (EC and
    /// KEM) are deleted and, where the profile requires it, a replay record is added, all in
    /// `self`; persist `self` and the new session together.
    ///
    /// Before calling this, offer the message to existing sessions with the same peer
    /// ([`Session::owns`]): the initiator repeats its initial data until it gets a reply.
    ///
    /// # Errors
    /// [`HandshakeError`]; on error `self` is unchanged and no session exists.
    pub fn accept(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        identity: &IdentityKeyPair,
        message: &PreKeyMessage,
    ) -> Result<Accepted, HandshakeError> {
        self.accept_checked(rng, identity, message, |_| true)
    }

    /// As [`PreKeys::accept`], with `check` run on the first plaintext before anything is
    /// committed (a rejection is `Unauthenticated`, nothing changes).
    pub(crate) fn accept_checked(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        identity: &IdentityKeyPair,
        message: &PreKeyMessage,
        check: impl FnOnce(&[u8]) -> bool,
    ) -> Result<Accepted, HandshakeError> {
        if !self.policy.allows(message.handshake()) {
            return Err(HandshakeError::PostQuantumRequired);
        }
        let spk_id = message.signed_prekey_id();
        let signed = &self
            .signed
            .find(spk_id)
            .ok_or(HandshakeError::UnknownSignedPreKey(spk_id))?
            .secret;
        let kem = match message.kem_prekey_id() {
            Some(id) => Some(
                self.kem_use(id)
                    .ok_or(HandshakeError::UnknownKemPreKey(id))?,
            ),
            None => None,
        };
        // A deleted one-time prekey alone stops replays; otherwise the replay record does, and
        // it never forgets while its key is held: when full it refuses (fail closed). It is
        // checked before the one-time EC prekey, so a replayed last-resort message is `Replay`
        // even when it also used one (PROFILE-pqxdh §6.4).
        let base_key = message.base_key().to_bytes();
        let record = match (&kem, message.one_time_prekey_id()) {
            (Some(KemUse::LastResort(kem_id, _)), _) => {
                Some(Record::Kem(*kem_id, spk_id, base_key))
            }
            (Some(KemUse::OneTime(..)), _) | (None, Some(_)) => None,
            (None, None) => Some(Record::Signed(spk_id, base_key)),
        };
        if let Some(record) = record {
            let (seen, len) = self.recorded(record);
            if seen {
                return Err(HandshakeError::Replay);
            }
            if len >= MAX_ACCEPTED_BASE_KEYS {
                return Err(HandshakeError::ReplayRecordFull {
                    signed_prekey_id: spk_id,
                    kem_prekey_id: match record {
                        Record::Kem(kem_id, ..) => Some(kem_id),
                        Record::Signed(..) => None,
                    },
                    limit: MAX_ACCEPTED_BASE_KEYS,
                });
            }
        }
        let one_time = match message.one_time_prekey_id() {
            Some(id) => Some(
                self.one_time
                    .get(&id)
                    .ok_or(HandshakeError::UnknownOneTimePreKey(id))?,
            ),
            None => None,
        };
        let kem_secret = kem.as_ref().map(|k| match k {
            KemUse::OneTime(_, s) | KemUse::LastResort(_, s) => *s,
        });
        let consumed_kem = match kem {
            Some(KemUse::OneTime(id, _)) => Some(id),
            _ => None,
        };
        let (session, plaintext) =
            Session::respond(rng, identity, signed, one_time, kem_secret, message, check)?;
        // Commit.
        let consumed = message.one_time_prekey_id();
        if let Some(id) = consumed {
            self.one_time.remove(&id);
        }
        if let Some(id) = consumed_kem {
            self.one_time_kem.remove(&id);
        }
        match record {
            Some(Record::Signed(spk, base)) => {
                self.accepted.entry(spk).or_default().insert(base);
            }
            Some(Record::Kem(kem_id, spk, base)) => {
                self.accepted_kem
                    .entry(kem_id)
                    .or_default()
                    .insert((spk, base));
            }
            None => {}
        }
        Ok(Accepted {
            session,
            plaintext,
            consumed_one_time_prekey: consumed,
            consumed_one_time_kem_prekey: consumed_kem,
        })
    }

    /// A versioned snapshot of every secret (PROTOCOL.md §10.2). Store it encrypted at rest.
    #[must_use]
    pub fn snapshot(&self) -> Zeroizing<Vec<u8>> {
        let accepted = self.accepted.iter().flat_map(|(spk, keys)| {
            keys.iter().map(move |k| AcceptedBaseKeyProto {
                signed_prekey_id: *spk,
                base_key: k.to_vec(),
                kem_prekey_id: None,
            })
        });
        let accepted_kem = self.accepted_kem.iter().flat_map(|(kem, entries)| {
            entries.iter().map(move |(spk, k)| AcceptedBaseKeyProto {
                signed_prekey_id: *spk,
                base_key: k.to_vec(),
                kem_prekey_id: Some(*kem),
            })
        });
        let proto = PreKeysProto {
            signed_prekeys: self
                .signed
                .iter()
                .map(|(s, retired_at)| SignedPreKeySecretProto {
                    id: s.public.id,
                    private_key: s.secret.to_bytes().to_vec(),
                    signature: s.public.signature.to_vec(),
                    created_at: s.public.created_at.0,
                    retired_at: retired_at.map(|t| t.0),
                })
                .collect(),
            one_time_prekeys: self
                .one_time
                .iter()
                .map(|(id, k)| OneTimePreKeySecretProto {
                    id: *id,
                    private_key: k.to_bytes().to_vec(),
                })
                .collect(),
            next_signed_prekey_id: self.next_signed_id,
            next_one_time_prekey_id: self.next_one_time_id,
            accepted_base_keys: accepted.chain(accepted_kem).collect(),
            last_resort_kem_prekeys: self
                .last_resort_kem
                .iter()
                .map(|(k, retired_at)| KemPreKeySecretProto {
                    id: k.id,
                    seed: k.secret.seed().to_vec(),
                    signature: k.signature.to_vec(),
                    created_at: k.created_at.0,
                    retired_at: retired_at.map(|t| t.0),
                })
                .collect(),
            one_time_kem_prekeys: self
                .one_time_kem
                .iter()
                .map(|(id, k)| KemPreKeySecretProto {
                    id: *id,
                    seed: k.seed().to_vec(),
                    signature: Vec::new(),
                    created_at: 0,
                    retired_at: None,
                })
                .collect(),
            next_kem_prekey_id: self.next_kem_id,
            allow_classical: self.policy == HandshakePolicy::AllowClassical,
        };
        codec::encode_secret(PREKEYS_SNAPSHOT_V1, &proto)
    }

    /// Restores a snapshot, treating it as untrusted: counts are checked before decoding, and
    /// every id, key length and record is checked after.
    ///
    /// # Errors
    /// [`RestoreError`] naming the violated invariant.
    pub fn restore(bytes: &[u8]) -> Result<Self, RestoreError> {
        let limit = |tag, max, field| RepeatedLimit {
            path: &[],
            tag,
            max,
            field,
        };
        let proto: PreKeysProto = codec::decode_counted(
            bytes,
            PREKEYS_SNAPSHOT_V1,
            MAX_SNAPSHOT_BYTES,
            &[
                limit(1, MAX_SIGNED_PREKEYS, "signed_prekeys"),
                limit(2, MAX_ONE_TIME_PREKEYS, "one_time_prekeys"),
                limit(
                    5,
                    MAX_ACCEPTED_BASE_KEYS * (MAX_SIGNED_PREKEYS + MAX_LAST_RESORT_KEM_PREKEYS),
                    "accepted_base_keys",
                ),
                limit(6, MAX_LAST_RESORT_KEM_PREKEYS, "last_resort_kem_prekeys"),
                limit(7, MAX_ONE_TIME_KEM_PREKEYS, "one_time_kem_prekeys"),
            ],
        )?;
        let mut signed_records = Vec::with_capacity(proto.signed_prekeys.len());
        for s in &proto.signed_prekeys {
            let secret = secret_from(&s.private_key, "signed prekey private key")?;
            let signature = codec::array(&s.signature, "signature")
                .map_err(|_| RestoreError::Invariant("signature"))?;
            let public = SignedPreKeyPublic::new(
                s.id,
                PublicKey::from_secret(&secret),
                signature,
                Timestamp(s.created_at),
            );
            signed_records.push((
                SignedPreKeySecret { public, secret },
                s.retired_at.map(Timestamp),
            ));
        }
        let signed = Rotating::from_records(
            signed_records,
            "signed prekeys: one current, unique nonzero ids",
        )?;
        let mut kem_records = Vec::with_capacity(proto.last_resort_kem_prekeys.len());
        for k in &proto.last_resort_kem_prekeys {
            let signature = codec::array(&k.signature, "signature")
                .map_err(|_| RestoreError::Invariant("kem signature"))?;
            let key = LastResortKem {
                id: k.id,
                secret: kem_secret_from(&k.seed)?,
                signature,
                created_at: Timestamp(k.created_at),
            };
            kem_records.push((key, k.retired_at.map(Timestamp)));
        }
        let last_resort_kem = Rotating::from_records(
            kem_records,
            "last-resort KEM prekeys: one current, unique nonzero ids",
        )?;
        let mut one_time = BTreeMap::new();
        for k in &proto.one_time_prekeys {
            let secret = secret_from(&k.private_key, "one-time prekey private key")?;
            if one_time.insert(k.id, secret).is_some() {
                return Err(RestoreError::Invariant("duplicate one-time prekey id"));
            }
        }
        let mut one_time_kem = BTreeMap::new();
        for k in &proto.one_time_kem_prekeys {
            if k.id == 0 || last_resort_kem.find(k.id).is_some() {
                return Err(RestoreError::Invariant("one-time KEM prekey id"));
            }
            if one_time_kem
                .insert(k.id, kem_secret_from(&k.seed)?)
                .is_some()
            {
                return Err(RestoreError::Invariant("duplicate one-time KEM prekey id"));
            }
        }
        let mut accepted: BTreeMap<u32, BTreeSet<[u8; 32]>> = BTreeMap::new();
        let mut accepted_kem: BTreeMap<u32, BTreeSet<(u32, [u8; 32])>> = BTreeMap::new();
        for a in &proto.accepted_base_keys {
            let key = codec::array(&a.base_key, "base_key")
                .map_err(|_| RestoreError::Invariant("accepted base key"))?;
            if signed.find(a.signed_prekey_id).is_none() {
                return Err(RestoreError::Invariant(
                    "accepted base key for an unknown signed prekey",
                ));
            }
            let inserted = match a.kem_prekey_id {
                None => insert_bounded(accepted.entry(a.signed_prekey_id).or_default(), key)?,
                Some(kem_id) => {
                    if last_resort_kem.find(kem_id).is_none() {
                        return Err(RestoreError::Invariant(
                            "accepted base key for an unknown KEM prekey",
                        ));
                    }
                    insert_bounded(
                        accepted_kem.entry(kem_id).or_default(),
                        (a.signed_prekey_id, key),
                    )?
                }
            };
            if !inserted {
                return Err(RestoreError::Invariant("duplicate accepted base key"));
            }
        }
        // Valid: keep the current last-resort KEM key expanded (see `new_last_resort`).
        last_resort_kem.current.secret.warm();
        Ok(Self {
            signed,
            last_resort_kem,
            one_time,
            one_time_kem,
            next_signed_id: proto.next_signed_prekey_id.max(1),
            next_one_time_id: proto.next_one_time_prekey_id.max(1),
            next_kem_id: proto.next_kem_prekey_id.max(1),
            accepted,
            accepted_kem,
            policy: if proto.allow_classical {
                HandshakePolicy::AllowClassical
            } else {
                HandshakePolicy::RequirePostQuantum
            },
        })
    }
}

/// Inserts into a replay record, enforcing [`MAX_ACCEPTED_BASE_KEYS`].
fn insert_bounded<T: Ord>(record: &mut BTreeSet<T>, entry: T) -> Result<bool, RestoreError> {
    if record.len() >= MAX_ACCEPTED_BASE_KEYS {
        return Err(RestoreError::Invariant("accepted base key count"));
    }
    Ok(record.insert(entry))
}

/// The next id of a counter: increasing, wrapping from `u32::MAX` to 1 (never 0), skipping ids
/// for which `held` is true, so ids stay unique (PROTOCOL.md §3.3). Fewer ids are ever held than
/// exist, so the loop ends.
fn allocate_id(next: &mut u32, held: impl Fn(u32) -> bool) -> u32 {
    loop {
        let id = *next;
        *next = id.wrapping_add(1).max(1);
        if id != 0 && !held(id) {
            return id;
        }
    }
}

fn kem_secret_from(seed: &[u8]) -> Result<KemSecret, RestoreError> {
    let seed: Zeroizing<[u8; KEM_SEED_LEN]> = Zeroizing::new(
        codec::array(seed, "seed").map_err(|_| RestoreError::Invariant("KEM seed"))?,
    );
    Ok(KemSecret::from_seed(&seed))
}

fn new_last_resort(
    rng: &mut (impl CryptoRng + ?Sized),
    identity: &IdentityKeyPair,
    id: u32,
    now: Timestamp,
) -> LastResortKem {
    let secret = KemSecret::generate(rng);
    // The current last-resort key serves every PQXDH initiator that finds no one-time KEM
    // prekey: keep it expanded (this also makes `public` below reuse the expansion).
    secret.warm();
    let signature = identity.sign(&secret.public().encode());
    LastResortKem {
        id,
        secret,
        signature,
        created_at: now,
    }
}

fn secret_from(bytes: &[u8], field: &'static str) -> Result<StaticSecret, RestoreError> {
    let arr: Zeroizing<[u8; 32]> =
        Zeroizing::new(codec::array(bytes, field).map_err(|_| RestoreError::Invariant(field))?);
    Ok(StaticSecret::from(*arr))
}

fn new_signed(
    rng: &mut (impl CryptoRng + ?Sized),
    identity: &IdentityKeyPair,
    id: u32,
    now: Timestamp,
) -> SignedPreKeySecret {
    let secret = keys::generate_x25519(rng);
    let key = PublicKey::from_secret(&secret);
    let signature = identity.sign(&key.encode());
    SignedPreKeySecret {
        public: SignedPreKeyPublic::new(id, key, signature, now),
        secret,
    }
}

impl fmt::Debug for PreKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreKeys")
            .field(
                "signed_prekey_ids",
                &self.signed.iter().map(|(k, _)| k.id()).collect::<Vec<_>>(),
            )
            .field(
                "last_resort_kem_prekey_ids",
                &self
                    .last_resort_kem
                    .iter()
                    .map(|(k, _)| k.id())
                    .collect::<Vec<_>>(),
            )
            .field("one_time_prekeys", &self.one_time.len())
            .field("one_time_kem_prekeys", &self.one_time_kem.len())
            .field(
                "replay_records",
                &(self.accepted.values().map(BTreeSet::len).sum::<usize>()
                    + self.accepted_kem.values().map(BTreeSet::len).sum::<usize>()),
            )
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_chacha::rand_core::SeedableRng;

    use super::*;

    /// The largest `PreKeys` the crate can build (every limit reached, both replay records full
    /// for every held key) snapshots within `MAX_SNAPSHOT_BYTES` and restores byte-identically.
    #[test]
    fn largest_snapshot_restores() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let identity = IdentityKeyPair::from_seed(&[1; 32]);
        let mut p = PreKeys::new(&mut rng, &identity, Timestamp(0));
        for t in 1..MAX_SIGNED_PREKEYS as u64 {
            p.rotate_signed_prekey(&mut rng, &identity, Timestamp(t));
        }
        for t in 1..MAX_LAST_RESORT_KEM_PREKEYS as u64 {
            p.rotate_last_resort_kem_prekey(&mut rng, &identity, Timestamp(t));
        }
        p.generate_one_time_prekeys(&mut rng, MAX_ONE_TIME_PREKEYS)
            .unwrap();
        p.generate_one_time_kem_prekeys(&mut rng, &identity, MAX_ONE_TIME_KEM_PREKEYS)
            .unwrap();
        let spk_ids: Vec<u32> = p.signed.iter().map(|(k, _)| k.id()).collect();
        let kem_ids: Vec<u32> = p.last_resort_kem.iter().map(|(k, _)| k.id()).collect();
        assert_eq!(
            (spk_ids.len(), kem_ids.len()),
            (MAX_SIGNED_PREKEYS, MAX_LAST_RESORT_KEM_PREKEYS)
        );
        let base = |i: usize| {
            let mut k = [0xA5u8; 32];
            k[..8].copy_from_slice(&(i as u64).to_le_bytes());
            k
        };
        for &spk in &spk_ids {
            p.accepted
                .insert(spk, (0..MAX_ACCEPTED_BASE_KEYS).map(base).collect());
        }
        // KEM replay entries name a held signed prekey (restore checks it): the current one.
        let current = p.signed.current.public.id;
        for &kem in &kem_ids {
            let entries = (0..MAX_ACCEPTED_BASE_KEYS)
                .map(|i| (current, base(i)))
                .collect();
            p.accepted_kem.insert(kem, entries);
        }
        let snapshot = p.snapshot();
        assert!(
            snapshot.len() <= MAX_SNAPSHOT_BYTES,
            "{} bytes",
            snapshot.len()
        );
        let restored = PreKeys::restore(&snapshot).unwrap();
        assert!(restored.snapshot() == snapshot);
    }
}
