//! Client-side prekey secrets as a value (PROTOCOL.md §3.3, §6.3): generation, signed-prekey
//! rotation with a grace period, one-time prekey consumption, and replay rejection.

use core::fmt;
use std::collections::{BTreeMap, BTreeSet};

use rand_core::CryptoRng;
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::bundle::{OneTimePreKeyPublic, SignedPreKeyPublic};
use crate::codec::{self, PREKEYS_SNAPSHOT_V1};
use crate::error::{HandshakeError, PreKeyError, RestoreError};
use crate::keys::{self, IdentityKeyPair, PublicKey};
use crate::limits::{
    MAX_ACCEPTED_BASE_KEYS, MAX_ONE_TIME_PREKEYS, MAX_SIGNED_PREKEYS, MAX_SNAPSHOT_BYTES,
};
use crate::proto::{
    AcceptedBaseKeyProto, OneTimePreKeySecretProto, PreKeysProto, SignedPreKeySecretProto,
};
use crate::session::Session;
use crate::time::Timestamp;
use crate::wire::PreKeyMessage;

struct SignedPreKeySecret {
    public: SignedPreKeyPublic,
    secret: StaticSecret,
    /// When it stopped being the current signed prekey; `None` for the current one.
    retired_at: Option<Timestamp>,
}

/// The result of accepting an initial message.
pub struct Accepted {
    /// The new session (responder side). Persist it together with the updated [`PreKeys`].
    pub session: Session,
    /// The first message's plaintext.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// The one-time prekey this message used, now deleted from [`PreKeys`]: tell nobody, but
    /// it will never be accepted again. `None` if the initiator used none.
    pub consumed_one_time_prekey: Option<u32>,
}

impl fmt::Debug for Accepted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accepted")
            .field("session", &self.session)
            .field("plaintext_len", &self.plaintext.len())
            .field("consumed_one_time_prekey", &self.consumed_one_time_prekey)
            .finish()
    }
}

/// A device's prekey secrets: signed prekeys (the current one and retired ones within their
/// grace period), unused one-time prekeys, and the base keys of accepted initial messages.
///
/// A value the caller persists with [`PreKeys::snapshot`]; every method that changes it
/// returns what changed, and a failed [`PreKeys::accept`] changes nothing.
pub struct PreKeys {
    /// The current signed prekey.
    current: SignedPreKeySecret,
    /// Retired signed prekeys within their grace period, oldest first.
    retired: Vec<SignedPreKeySecret>,
    one_time: BTreeMap<u32, StaticSecret>,
    next_signed_id: u32,
    next_one_time_id: u32,
    /// Replay record: per held signed prekey id, the base keys of accepted initial messages
    /// that used no one-time prekey (PROTOCOL.md §6.3). Dropped with the signed prekey.
    accepted: BTreeMap<u32, BTreeSet<[u8; 32]>>,
}

impl PreKeys {
    /// A fresh set with signed prekey id 1 and no one-time prekeys.
    pub fn new(
        rng: &mut (impl CryptoRng + ?Sized),
        identity: &IdentityKeyPair,
        now: Timestamp,
    ) -> Self {
        Self {
            current: new_signed(rng, identity, 1, now),
            retired: Vec::new(),
            one_time: BTreeMap::new(),
            next_signed_id: 2,
            next_one_time_id: 1,
            accepted: BTreeMap::new(),
        }
    }

    /// The current signed prekey, to publish.
    #[must_use]
    pub fn signed_prekey(&self) -> SignedPreKeyPublic {
        self.current.public
    }

    /// The next signed prekey id: increasing, wrapping from `u32::MAX` to 1 (never 0), and
    /// skipping ids still held so that ids stay unique (PROTOCOL.md §3.3). At most
    /// [`MAX_SIGNED_PREKEYS`] ids are held, so the loop ends within that many steps.
    fn allocate_signed_id(&mut self) -> u32 {
        loop {
            let id = self.next_signed_id;
            self.next_signed_id = id.wrapping_add(1).max(1);
            if id != 0 && self.signed_secret(id).is_none() {
                return id;
            }
        }
    }

    fn signed_secret(&self, id: u32) -> Option<&StaticSecret> {
        core::iter::once(&self.current)
            .chain(self.retired.iter())
            .find(|s| s.public.id == id)
            .map(|s| &s.secret)
    }

    /// Replaces the current signed prekey with a new one. The old one is retired at `now` and
    /// still accepted until [`PreKeys::prune`] removes it, so delayed initial messages decrypt.
    /// If more than [`MAX_SIGNED_PREKEYS`] are held, the oldest retired one is dropped.
    pub fn rotate_signed_prekey(
        &mut self,
        rng: &mut (impl CryptoRng + ?Sized),
        identity: &IdentityKeyPair,
        now: Timestamp,
    ) -> SignedPreKeyPublic {
        let id = self.allocate_signed_id();
        let mut old = core::mem::replace(&mut self.current, new_signed(rng, identity, id, now));
        old.retired_at = Some(now);
        self.retired.push(old);
        while self.retired.len() >= MAX_SIGNED_PREKEYS {
            let removed = self.retired.remove(0);
            self.forget_accepted(removed.public.id);
        }
        self.current.public
    }

    /// Drops signed prekeys retired for longer than `grace_ms` (default
    /// [`SIGNED_PREKEY_GRACE_MS`](crate::limits::SIGNED_PREKEY_GRACE_MS)), with their
    /// replay records. Returns the dropped ids.
    pub fn prune(&mut self, now: Timestamp, grace_ms: u64) -> Vec<u32> {
        let mut dropped = Vec::new();
        self.retired.retain(|s| match s.retired_at {
            Some(at) if at.plus_ms(grace_ms) <= now => {
                dropped.push(s.public.id);
                false
            }
            _ => true,
        });
        for id in &dropped {
            self.forget_accepted(*id);
        }
        dropped
    }

    fn forget_accepted(&mut self, signed_prekey_id: u32) {
        self.accepted.remove(&signed_prekey_id);
    }

    /// Generates `count` one-time prekeys and returns their public halves to upload.
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
        while out.len() < count {
            let id = self.next_one_time_id;
            self.next_one_time_id = self.next_one_time_id.wrapping_add(1).max(1);
            if self.one_time.contains_key(&id) {
                continue;
            }
            let secret = keys::generate_x25519(rng);
            out.push(OneTimePreKeyPublic::new(
                id,
                PublicKey::from_secret(&secret),
            ));
            self.one_time.insert(id, secret);
        }
        Ok(out)
    }

    /// The replay record as `(signed prekey id, base key)` pairs, in id then key order.
    fn accepted_pairs(&self) -> impl Iterator<Item = (&u32, &[u8; 32])> {
        self.accepted
            .iter()
            .flat_map(|(id, keys)| keys.iter().map(move |k| (id, k)))
    }

    /// Number of unused one-time prekeys held.
    #[must_use]
    pub fn one_time_prekey_count(&self) -> usize {
        self.one_time.len()
    }

    /// Accepts an initial message: X3DH as responder, then decrypts the first message
    /// (PROTOCOL.md §4.4, §6.3). On success the one-time prekey is deleted or, if the message
    /// used none, its `(signed prekey id, base key)` pair is recorded, both in `self`; persist
    /// `self` and the new session together.
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
        let spk_id = message.signed_prekey_id();
        let signed = self
            .signed_secret(spk_id)
            .ok_or(HandshakeError::UnknownSignedPreKey(spk_id))?;
        let base_key = message.base_key().to_bytes();
        let one_time = match message.one_time_prekey_id() {
            // A one-time prekey is deleted on first use: that alone stops replays.
            Some(id) => Some(
                self.one_time
                    .get(&id)
                    .ok_or(HandshakeError::UnknownOneTimePreKey(id))?,
            ),
            // Otherwise the replay record does, and it never forgets while the signed prekey is
            // held: when full it refuses new sessions instead (fail closed).
            None => {
                let record = self.accepted.get(&spk_id);
                if record.is_some_and(|r| r.contains(&base_key)) {
                    return Err(HandshakeError::Replay);
                }
                if record.map_or(0, BTreeSet::len) >= MAX_ACCEPTED_BASE_KEYS {
                    return Err(HandshakeError::ReplayRecordFull {
                        signed_prekey_id: spk_id,
                        limit: MAX_ACCEPTED_BASE_KEYS,
                    });
                }
                None
            }
        };
        let (session, plaintext) = Session::respond(rng, identity, signed, one_time, message)?;
        // Commit.
        let consumed = message.one_time_prekey_id();
        if let Some(id) = consumed {
            self.one_time.remove(&id);
        }
        if consumed.is_none() {
            self.accepted.entry(spk_id).or_default().insert(base_key);
        }
        Ok(Accepted {
            session,
            plaintext,
            consumed_one_time_prekey: consumed,
        })
    }

    /// A versioned snapshot of every secret (PROTOCOL.md §10.2). Store it encrypted at rest.
    #[must_use]
    pub fn snapshot(&self) -> Zeroizing<Vec<u8>> {
        let proto = PreKeysProto {
            signed_prekeys: core::iter::once(&self.current)
                .chain(self.retired.iter())
                .map(|s| SignedPreKeySecretProto {
                    id: s.public.id,
                    private_key: s.secret.to_bytes().to_vec(),
                    signature: s.public.signature.to_vec(),
                    created_at: s.public.created_at.0,
                    retired_at: s.retired_at.map(|t| t.0),
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
            accepted_base_keys: self
                .accepted_pairs()
                .map(|(id, k)| AcceptedBaseKeyProto {
                    signed_prekey_id: *id,
                    base_key: k.to_vec(),
                })
                .collect(),
        };
        codec::encode_secret(PREKEYS_SNAPSHOT_V1, &proto)
    }

    /// Restores a snapshot, treating it as untrusted.
    ///
    /// # Errors
    /// [`RestoreError`] naming the violated invariant.
    pub fn restore(bytes: &[u8]) -> Result<Self, RestoreError> {
        let proto: PreKeysProto = codec::decode_counted(
            bytes,
            PREKEYS_SNAPSHOT_V1,
            MAX_SNAPSHOT_BYTES,
            &[
                codec::RepeatedLimit {
                    path: &[],
                    tag: 1,
                    max: MAX_SIGNED_PREKEYS,
                    field: "signed_prekeys",
                },
                codec::RepeatedLimit {
                    path: &[],
                    tag: 2,
                    max: MAX_ONE_TIME_PREKEYS,
                    field: "one_time_prekeys",
                },
                codec::RepeatedLimit {
                    path: &[],
                    tag: 5,
                    max: MAX_ACCEPTED_BASE_KEYS * MAX_SIGNED_PREKEYS,
                    field: "accepted_base_keys",
                },
            ],
        )?;
        if proto.signed_prekeys.is_empty() || proto.signed_prekeys.len() > MAX_SIGNED_PREKEYS {
            return Err(RestoreError::Invariant("signed prekey count"));
        }
        if proto
            .signed_prekeys
            .iter()
            .filter(|s| s.retired_at.is_none())
            .count()
            != 1
        {
            return Err(RestoreError::Invariant("exactly one current signed prekey"));
        }
        let mut signed: Vec<SignedPreKeySecret> = Vec::with_capacity(proto.signed_prekeys.len());
        let mut current = None;
        for s in &proto.signed_prekeys {
            if signed.iter().any(|x| x.public.id == s.id) {
                return Err(RestoreError::Invariant("duplicate signed prekey id"));
            }
            let secret = secret_from(&s.private_key, "signed prekey private key")?;
            let signature = codec::array(&s.signature, "signature")
                .map_err(|_| RestoreError::Invariant("signature"))?;
            let record = SignedPreKeySecret {
                public: SignedPreKeyPublic::new(
                    s.id,
                    PublicKey::from_secret(&secret),
                    signature,
                    Timestamp(s.created_at),
                ),
                secret,
                retired_at: s.retired_at.map(Timestamp),
            };
            if record.retired_at.is_none() {
                current = Some(record);
            } else {
                signed.push(record);
            }
        }
        let current =
            current.ok_or(RestoreError::Invariant("exactly one current signed prekey"))?;
        if signed.iter().any(|s| s.public.id == current.public.id) {
            return Err(RestoreError::Invariant("duplicate signed prekey id"));
        }
        if current.public.id == 0 || signed.iter().any(|s| s.public.id == 0) {
            return Err(RestoreError::Invariant("signed prekey id 0"));
        }
        if proto.one_time_prekeys.len() > MAX_ONE_TIME_PREKEYS {
            return Err(RestoreError::Invariant("one-time prekey count"));
        }
        let mut one_time = BTreeMap::new();
        for k in &proto.one_time_prekeys {
            let secret = secret_from(&k.private_key, "one-time prekey private key")?;
            if one_time.insert(k.id, secret).is_some() {
                return Err(RestoreError::Invariant("duplicate one-time prekey id"));
            }
        }
        let mut accepted: BTreeMap<u32, BTreeSet<[u8; 32]>> = BTreeMap::new();
        for a in &proto.accepted_base_keys {
            let key = codec::array(&a.base_key, "base_key")
                .map_err(|_| RestoreError::Invariant("accepted base key"))?;
            let held = current.public.id == a.signed_prekey_id
                || signed.iter().any(|s| s.public.id == a.signed_prekey_id);
            if !held {
                return Err(RestoreError::Invariant(
                    "accepted base key for an unknown signed prekey",
                ));
            }
            let record = accepted.entry(a.signed_prekey_id).or_default();
            if record.len() >= MAX_ACCEPTED_BASE_KEYS {
                return Err(RestoreError::Invariant("accepted base key count"));
            }
            if !record.insert(key) {
                return Err(RestoreError::Invariant("duplicate accepted base key"));
            }
        }
        Ok(Self {
            current,
            retired: signed,
            one_time,
            next_signed_id: proto.next_signed_prekey_id.max(1),
            next_one_time_id: proto.next_one_time_prekey_id.max(1),
            accepted,
        })
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
        retired_at: None,
    }
}

impl fmt::Debug for PreKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreKeys")
            .field("signed_prekey_id", &self.current.public.id)
            .field(
                "retired_signed_prekey_ids",
                &self.retired.iter().map(|s| s.public.id).collect::<Vec<_>>(),
            )
            .field("one_time_prekeys", &self.one_time.len())
            .field(
                "accepted_base_keys",
                &self.accepted.values().map(BTreeSet::len).sum::<usize>(),
            )
            .finish_non_exhaustive()
    }
}
