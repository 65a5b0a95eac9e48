//! Shared helpers for the integration tests: deterministic devices, bundles, message routing,
//! and a tiny protobuf reader/writer for crafting hostile wire bytes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![allow(dead_code)]

use confidant::{
    Accepted, DecodeError, DecryptError, HandshakeError, HandshakePolicy, IdentityKeyPair,
    KemPreKeyPublic, Message, OneTimePreKeyPublic, PreKeyBundle, PreKeyMessage, PreKeys, Session,
    Timestamp, VerifiedBundle,
};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

/// A fixed "now" (the crate never reads a clock).
pub(crate) const NOW: Timestamp = Timestamp(1_700_000_000_000);

/// Leading byte of a prekey (initial) message.
pub(crate) const PREKEY_V1: u8 = 0x11;
/// Leading byte of a ratchet message.
pub(crate) const RATCHET_V1: u8 = 0x12;

pub(crate) fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// A device with an identity and prekey secrets.
pub(crate) struct Device {
    pub(crate) identity: IdentityKeyPair,
    pub(crate) prekeys: PreKeys,
}

impl Device {
    /// A fresh device holding `one_time` one-time prekeys (ids 1..=one_time); returns their
    /// public halves too. Its policy allows classical X3DH, which the suites that predate
    /// PQXDH exercise; [`Device::new_pq`] is a device with the default (PQXDH-only) policy.
    pub(crate) fn new(rng: &mut ChaCha20Rng, one_time: usize) -> (Self, Vec<OneTimePreKeyPublic>) {
        let (mut device, otks) = Self::new_pq(rng, one_time);
        device.prekeys.set_policy(HandshakePolicy::AllowClassical);
        (device, otks)
    }

    /// A fresh device with the default policy (PQXDH required).
    pub(crate) fn new_pq(
        rng: &mut ChaCha20Rng,
        one_time: usize,
    ) -> (Self, Vec<OneTimePreKeyPublic>) {
        let identity = IdentityKeyPair::generate(rng);
        let mut prekeys = PreKeys::new(rng, &identity, NOW);
        let otks = prekeys
            .generate_one_time_prekeys(rng, one_time)
            .expect("generate one-time prekeys");
        (Self { identity, prekeys }, otks)
    }

    /// This device's current classical (X3DH) bundle with an optional one-time prekey,
    /// serialised, parsed and verified against the expected identity, as an initiator would.
    pub(crate) fn bundle(&self, one_time: Option<OneTimePreKeyPublic>) -> VerifiedBundle {
        self.bundle_with(one_time, None)
    }

    /// A PQXDH bundle with the given KEM prekey (or the current last-resort one).
    pub(crate) fn pq_bundle(
        &self,
        one_time: Option<OneTimePreKeyPublic>,
        kem: Option<KemPreKeyPublic>,
    ) -> VerifiedBundle {
        let kem = kem.unwrap_or_else(|| self.prekeys.last_resort_kem_prekey());
        self.bundle_with(one_time, Some(kem))
    }

    fn bundle_with(
        &self,
        one_time: Option<OneTimePreKeyPublic>,
        kem: Option<KemPreKeyPublic>,
    ) -> VerifiedBundle {
        let mut bundle = PreKeyBundle::new(
            self.identity.public(),
            self.prekeys.signed_prekey(),
            one_time,
        );
        if let Some(kem) = kem {
            bundle = bundle.with_kem_prekey(kem);
        }
        PreKeyBundle::from_bytes(&bundle.to_bytes())
            .expect("bundle decodes")
            .verify_for(&self.identity.public())
            .expect("bundle verifies")
    }

    /// Accepts an initial message given as wire bytes.
    pub(crate) fn accept_wire(
        &mut self,
        rng: &mut ChaCha20Rng,
        wire: &[u8],
    ) -> Result<Accepted, HandshakeError> {
        let m = prekey(wire);
        self.prekeys.accept(rng, &self.identity, &m)
    }
}

/// An X3DH session from `alice` to `bob` using `one_time` (classical policy).
pub(crate) fn initiate(
    rng: &mut ChaCha20Rng,
    alice: &IdentityKeyPair,
    bob: &Device,
    one_time: Option<OneTimePreKeyPublic>,
) -> Session {
    Session::initiate_with_policy(
        rng,
        alice,
        bob.bundle(one_time),
        HandshakePolicy::AllowClassical,
    )
    .expect("initiate")
}

/// A PQXDH session from `alice` to `bob` using `one_time` and `kem` (default: the last-resort
/// KEM prekey), under the default policy.
pub(crate) fn initiate_pq(
    rng: &mut ChaCha20Rng,
    alice: &IdentityKeyPair,
    bob: &Device,
    one_time: Option<OneTimePreKeyPublic>,
    kem: Option<KemPreKeyPublic>,
) -> Session {
    Session::initiate(rng, alice, bob.pq_bundle(one_time, kem)).expect("initiate")
}

/// Parses wire bytes that must be an initial message.
pub(crate) fn prekey(wire: &[u8]) -> PreKeyMessage {
    match Message::from_bytes(wire).expect("message decodes") {
        Message::PreKey(m) => m,
        Message::Ratchet(_) => panic!("expected a prekey message"),
    }
}

/// Whether wire bytes parse as an initial message.
pub(crate) fn is_prekey(wire: &[u8]) -> bool {
    matches!(Message::from_bytes(wire), Ok(Message::PreKey(_)))
}

/// Whether wire bytes parse as a plain ratchet message.
pub(crate) fn is_ratchet(wire: &[u8]) -> bool {
    matches!(Message::from_bytes(wire), Ok(Message::Ratchet(_)))
}

/// What a responder did with a received message.
#[allow(clippy::large_enum_variant)] // test-only; a Session is large by design
pub(crate) enum Routed {
    /// Decrypted by an existing session.
    Session(Vec<u8>),
    /// Accepted as a new session.
    Accepted(Accepted),
}

/// Why the responder's receive path failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecvError {
    Decode(DecodeError),
    Decrypt(DecryptError),
    Handshake(HandshakeError),
    NoSession,
}

/// The responder's receive path: parse; an initial message goes to the existing session if it
/// `owns` it, otherwise to `PreKeys::accept`; a ratchet message goes to the session.
pub(crate) fn bob_receive(
    rng: &mut ChaCha20Rng,
    bob: &mut Device,
    session: Option<&mut Session>,
    wire: &[u8],
) -> Result<Routed, RecvError> {
    let message = Message::from_bytes(wire).map_err(RecvError::Decode)?;
    match (&message, session) {
        (Message::PreKey(m), Some(s)) if s.owns(m) => s
            .decrypt(rng, &message)
            .map(|p| Routed::Session(p.to_vec()))
            .map_err(RecvError::Decrypt),
        (Message::PreKey(m), _) => bob
            .prekeys
            .accept(rng, &bob.identity, m)
            .map(Routed::Accepted)
            .map_err(RecvError::Handshake),
        (Message::Ratchet(_), Some(s)) => s
            .decrypt(rng, &message)
            .map(|p| Routed::Session(p.to_vec()))
            .map_err(RecvError::Decrypt),
        (Message::Ratchet(_), None) => Err(RecvError::NoSession),
    }
}

/// The `(dh, pn, n)` of a message's (inner) ratchet header.
pub(crate) fn header_of(wire: &[u8]) -> ([u8; 32], u32, u32) {
    let (h, _) = if wire[0] == PREKEY_V1 {
        prekey_inner_parts(wire)
    } else {
        ratchet_parts(wire)
    };
    split_header(&h)
}

/// Returns `bytes` with bit `bit` (0 = LSB of byte 0) flipped.
pub(crate) fn flip(bytes: &[u8], bit: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[bit / 8] ^= 1 << (bit % 8);
    out
}

// ---- A tiny protobuf reader/writer ---------------------------------------------------------

/// One protobuf field value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Value {
    Varint(u64),
    Fixed64([u8; 8]),
    Len(Vec<u8>),
    Fixed32([u8; 4]),
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn get_varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Parses a protobuf body into `(field number, value)` pairs in wire order.
pub(crate) fn parse_proto(bytes: &[u8]) -> Option<Vec<(u32, Value)>> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < bytes.len() {
        let key = get_varint(bytes, &mut pos)?;
        let field = u32::try_from(key >> 3).ok()?;
        let value = match key & 7 {
            0 => Value::Varint(get_varint(bytes, &mut pos)?),
            1 => {
                let v = bytes.get(pos..pos + 8)?.try_into().ok()?;
                pos += 8;
                Value::Fixed64(v)
            }
            2 => {
                let len = usize::try_from(get_varint(bytes, &mut pos)?).ok()?;
                let v = bytes.get(pos..pos.checked_add(len)?)?.to_vec();
                pos += len;
                Value::Len(v)
            }
            5 => {
                let v = bytes.get(pos..pos + 4)?.try_into().ok()?;
                pos += 4;
                Value::Fixed32(v)
            }
            _ => return None,
        };
        out.push((field, value));
    }
    Some(out)
}

/// Encodes `(field number, value)` pairs in the given order.
pub(crate) fn encode_proto(fields: &[(u32, Value)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (field, value) in fields {
        let wire_type = match value {
            Value::Varint(_) => 0,
            Value::Fixed64(_) => 1,
            Value::Len(_) => 2,
            Value::Fixed32(_) => 5,
        };
        put_varint(&mut out, (u64::from(*field) << 3) | wire_type);
        match value {
            Value::Varint(v) => put_varint(&mut out, *v),
            Value::Fixed64(v) => out.extend_from_slice(v),
            Value::Len(v) => {
                put_varint(&mut out, v.len() as u64);
                out.extend_from_slice(v);
            }
            Value::Fixed32(v) => out.extend_from_slice(v),
        }
    }
    out
}

/// All `Len` values of field `field`.
pub(crate) fn len_fields(fields: &[(u32, Value)], field: u32) -> Vec<Vec<u8>> {
    fields
        .iter()
        .filter_map(|(f, v)| match v {
            Value::Len(b) if *f == field => Some(b.clone()),
            _ => None,
        })
        .collect()
}

/// `header || ciphertext` of a standalone ratchet message's wire bytes.
pub(crate) fn ratchet_parts(wire: &[u8]) -> ([u8; 40], Vec<u8>) {
    assert_eq!(wire[0], RATCHET_V1);
    ratchet_body_parts(&wire[1..])
}

fn ratchet_body_parts(body: &[u8]) -> ([u8; 40], Vec<u8>) {
    let fields = parse_proto(body).expect("ratchet message protobuf");
    let header = len_fields(&fields, 1).pop().expect("header");
    let ciphertext = len_fields(&fields, 2).pop().expect("ciphertext");
    (header.try_into().expect("40-byte header"), ciphertext)
}

/// A standalone ratchet message: `0x12 || {1: header, 2: ciphertext}`.
pub(crate) fn ratchet_wire(header: &[u8], ciphertext: &[u8]) -> Vec<u8> {
    let mut out = vec![RATCHET_V1];
    out.extend(encode_proto(&[
        (1, Value::Len(header.to_vec())),
        (2, Value::Len(ciphertext.to_vec())),
    ]));
    out
}

/// `dh || u32be(pn) || u32be(n)`.
pub(crate) fn header(dh: [u8; 32], pn: u32, n: u32) -> [u8; 40] {
    let mut out = [0u8; 40];
    out[..32].copy_from_slice(&dh);
    out[32..36].copy_from_slice(&pn.to_be_bytes());
    out[36..].copy_from_slice(&n.to_be_bytes());
    out
}

/// `(dh, pn, n)` of a 40-byte header.
pub(crate) fn split_header(h: &[u8; 40]) -> ([u8; 32], u32, u32) {
    (
        h[..32].try_into().expect("32"),
        u32::from_be_bytes(h[32..36].try_into().expect("4")),
        u32::from_be_bytes(h[36..].try_into().expect("4")),
    )
}

/// The inner ratchet message `(header, ciphertext)` of an initial message's wire bytes.
pub(crate) fn prekey_inner_parts(wire: &[u8]) -> ([u8; 40], Vec<u8>) {
    assert_eq!(wire[0], PREKEY_V1);
    let fields = parse_proto(&wire[1..]).expect("prekey protobuf");
    let inner = len_fields(&fields, 8).pop().expect("inner message");
    ratchet_body_parts(&inner)
}

/// An initial message's wire bytes with its inner ratchet message replaced (every other field
/// is re-encoded unchanged, in order).
pub(crate) fn prekey_with_inner(wire: &[u8], header: &[u8], ciphertext: &[u8]) -> Vec<u8> {
    assert_eq!(wire[0], PREKEY_V1);
    let fields = parse_proto(&wire[1..]).expect("prekey protobuf");
    let inner = encode_proto(&[
        (1, Value::Len(header.to_vec())),
        (2, Value::Len(ciphertext.to_vec())),
    ]);
    let replaced: Vec<(u32, Value)> = fields
        .into_iter()
        .map(|(f, v)| {
            if f == 8 {
                (8, Value::Len(inner.clone()))
            } else {
                (f, v)
            }
        })
        .collect();
    let mut out = vec![PREKEY_V1];
    out.extend(encode_proto(&replaced));
    out
}

/// Accepts wire bytes at `bob`, checking that a failure changes neither `PreKeys` nor the RNG.
pub(crate) fn accept(
    rng: &mut ChaCha20Rng,
    bob: &mut Device,
    wire: &[u8],
) -> Result<Accepted, HandshakeError> {
    let before = bob.prekeys.snapshot();
    let rng_before = rng.clone();
    let result = bob.accept_wire(rng, wire);
    if result.is_err() {
        assert!(
            bob.prekeys.snapshot() == before,
            "failed accept changed PreKeys"
        );
        assert!(*rng == rng_before, "failed accept used randomness");
    }
    result
}

/// Deterministic proptest configuration: a fixed seed unless `PROPTEST_RNG_SEED` is set, no
/// failure-persistence files, no output on success.
pub(crate) fn proptest_config(cases: u32, seed: u64) -> proptest::test_runner::Config {
    use proptest::test_runner::{Config, RngSeed};
    let mut config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    if matches!(config.rng_seed, RngSeed::Random) {
        config.rng_seed = RngSeed::Fixed(seed);
    }
    config
}
