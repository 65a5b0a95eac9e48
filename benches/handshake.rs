//! Session setup benchmarks (criterion): X3DH vs PQXDH, initiator and responder, each next to
//! its primitive floor measured in the same run (`floor/mod.rs`).
//!
//! `cargo bench --bench handshake`

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::hint::black_box;

use confidant::{
    HandshakePolicy, IdentityKeyPair, Message, PreKeyBundle, PreKeys, Session, Timestamp,
};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

use ed25519_dalek::{Signer, SigningKey};
use ml_kem::array::Array;
use ml_kem::{Decapsulate, Encapsulate, KeyExport, MlKem1024};

#[path = "floor/mod.rs"]
mod floor;

/// The primitive floor of one side of a handshake (PROTOCOL.md §6, §13, §5): nothing but the
/// checks, key agreements, KDFs and AEAD the protocol requires, on fixed keys.
struct Floor {
    pq: bool,
    ik_b: SigningKey,
    spk_sig: ed25519_dalek::Signature,
    kem_sig: ed25519_dalek::Signature,
    spk_encoded: [u8; 33],
    kem_encoded: Vec<u8>,
    kem_seed: [u8; 64],
    kem_ct: ml_kem::ml_kem_1024::Ciphertext,
    aad: [u8; floor::AAD_LEN],
    /// The initiator's identity secret (X25519 form), Bob's identity key (X25519 form), signed
    /// prekey and one-time prekey.
    ik_a: x25519_dalek::StaticSecret,
    ik_b_x: x25519_dalek::PublicKey,
    spk: x25519_dalek::PublicKey,
    opk: x25519_dalek::PublicKey,
}

impl Floor {
    fn new(pq: bool) -> Self {
        let ik_b = SigningKey::from_bytes(&[21u8; 32]);
        let (_, spk) = floor::keygen([22u8; 32]);
        let mut spk_encoded = [5u8; 33];
        spk_encoded[1..].copy_from_slice(spk.as_bytes());
        let kem_seed = [23u8; 64];
        let dk = ml_kem::DecapsulationKey::<MlKem1024>::from_seed(Array::from(kem_seed));
        let ek = dk.encapsulation_key().clone();
        let kem_encoded = [&[0x0au8][..], ek.to_bytes().as_slice()].concat();
        let (kem_ct, _) = ek.encapsulate_with_rng(&mut ChaCha20Rng::seed_from_u64(24));
        Floor {
            pq,
            spk_sig: ik_b.sign(&spk_encoded),
            kem_sig: ik_b.sign(&kem_encoded),
            ik_b,
            spk_encoded,
            kem_encoded,
            kem_seed,
            kem_ct,
            aad: [0x33; floor::AAD_LEN],
            ik_a: floor::keygen([25u8; 32]).0,
            ik_b_x: floor::keygen([26u8; 32]).1,
            spk,
            opk: floor::keygen([27u8; 32]).1,
        }
    }

    /// `SK = HKDF(0^32, F || DH1 || DH2 || DH3 || DH4 [|| SS], info, 32)`.
    fn sk(&self, dhs: [[u8; 32]; 4], ss: Option<[u8; 32]>) -> [u8; 32] {
        let mut ikm = Vec::with_capacity(32 * 6);
        ikm.extend_from_slice(&[0xff; 32]);
        for d in dhs {
            ikm.extend_from_slice(&d);
        }
        if let Some(ss) = ss {
            ikm.extend_from_slice(&ss);
        }
        let info = if self.pq {
            floor::PQXDH_INFO
        } else {
            floor::X3DH_INFO
        };
        floor::hkdf(&[0u8; 32], &ikm, info)
    }

    /// Initiator: bundle checks (identity key validation, signatures, KEM key parse), EK, four
    /// DH [+ encapsulation], SK, the first ratchet key and step, and the first 100 B message.
    fn initiate(&self, payload: &[u8], rng: &mut ChaCha20Rng) -> Vec<u8> {
        let vk = self.ik_b.verifying_key();
        assert!(floor::validate_identity(vk.as_bytes()));
        assert!(floor::verify(&vk, &self.spk_encoded, &self.spk_sig));
        let ss = if self.pq {
            assert!(floor::verify(&vk, &self.kem_encoded, &self.kem_sig));
            let raw: [u8; 1568] = self.kem_encoded[1..].try_into().unwrap();
            let ek = ml_kem::EncapsulationKey::<MlKem1024>::new(&Array::from(raw)).unwrap();
            let (_, ss) = ek.encapsulate_with_rng(rng);
            Some(ss.into())
        } else {
            None
        };
        let (ek, _) = floor::keygen(black_box([28u8; 32]));
        let sk = self.sk(
            [
                floor::dh(&self.ik_a, &self.spk),
                floor::dh(&ek, &self.ik_b_x),
                floor::dh(&ek, &self.spk),
                floor::dh(&ek, &self.opk),
            ],
            ss,
        );
        let (dhs, _) = floor::keygen(black_box([29u8; 32]));
        let (_, mut cks) = floor::kdf_rk(&sk, &floor::dh(&dhs, &self.spk));
        floor::send(&mut cks, &self.aad, payload)
    }

    /// Responder: identity key validation, four DH [+ decapsulation], SK, then the first
    /// message's DH ratchet step (DH, KDF_RK, decrypt, new key pair, DH, KDF_RK).
    fn accept(
        &self,
        keys: &AcceptKeys,
        dk: &ml_kem::DecapsulationKey<MlKem1024>,
        ct: &[u8],
    ) -> [u8; 32] {
        assert!(floor::validate_identity(&keys.ik_a_ed));
        let ss = self.pq.then(|| dk.decapsulate(&self.kem_ct).into());
        let sk = self.sk(
            [
                floor::dh(&keys.spk, &keys.ik_a_x),
                floor::dh(&keys.ik_b, &keys.ek),
                floor::dh(&keys.spk, &keys.ek),
                floor::dh(&keys.opk, &keys.ek),
            ],
            ss,
        );
        let (_, cks, _, _) =
            floor::ratchet_receive(&sk, &keys.spk, &keys.dhs_a, [30u8; 32], &self.aad, ct);
        cks
    }
}

/// The responder's fixed keys for the accept floor, and the message the initiator made.
struct AcceptKeys {
    ik_a_ed: [u8; 32],
    ik_a_x: x25519_dalek::PublicKey,
    ik_b: x25519_dalek::StaticSecret,
    spk: x25519_dalek::StaticSecret,
    opk: x25519_dalek::StaticSecret,
    ek: x25519_dalek::PublicKey,
    dhs_a: x25519_dalek::PublicKey,
}

struct Bob {
    identity: IdentityKeyPair,
    prekeys: PreKeys,
    bundle: Vec<u8>,
}

/// Which KEM prekey the bundle carries.
#[derive(Clone, Copy, PartialEq)]
enum Kem {
    None,
    /// The last-resort key: held expanded by `PreKeys` (created, rotated or restored).
    LastResort,
    /// A one-time KEM prekey: stored as a seed, expanded on its single use.
    OneTime,
}

fn bob(rng: &mut ChaCha20Rng, kem: Kem) -> Bob {
    let identity = IdentityKeyPair::generate(rng);
    let mut prekeys = PreKeys::new(rng, &identity, Timestamp(0));
    prekeys.set_policy(HandshakePolicy::AllowClassical);
    let otk = prekeys.generate_one_time_prekeys(rng, 1).unwrap();
    let mut bundle = PreKeyBundle::new(
        identity.public(),
        prekeys.signed_prekey(),
        otk.first().copied(),
    );
    match kem {
        Kem::None => {}
        Kem::LastResort => bundle = bundle.with_kem_prekey(prekeys.last_resort_kem_prekey()),
        Kem::OneTime => {
            let k = prekeys
                .generate_one_time_kem_prekeys(rng, &identity, 1)
                .unwrap();
            bundle = bundle.with_kem_prekey(k[0].clone());
        }
    }
    Bob {
        identity,
        prekeys,
        bundle: bundle.to_bytes(),
    }
}

fn initiate(rng: &mut ChaCha20Rng, alice: &IdentityKeyPair, bundle: &[u8]) -> Session {
    let verified = PreKeyBundle::from_bytes(bundle).unwrap().verify().unwrap();
    Session::initiate_with_policy(rng, alice, verified, HandshakePolicy::AllowClassical).unwrap()
}

/// The floors of both sides of one handshake (X3DH, or PQXDH with `pq`).
fn floors(c: &mut Criterion, name: &str, pq: bool) {
    let f = Floor::new(pq);
    c.bench_function(&format!("handshake/{name}/floor_initiate"), |bench| {
        let mut r = ChaCha20Rng::seed_from_u64(1);
        bench.iter(|| black_box(f.initiate(&[0u8; 100], &mut r)));
    });
    // The accept floor's inputs: the initiator's side computed once, outside the timing.
    let keys = {
        let (ik_a, ik_a_x) = floor::keygen([25u8; 32]);
        let (ik_b, ik_b_x) = floor::keygen([26u8; 32]);
        let (spk, spk_pub) = floor::keygen([22u8; 32]);
        let (opk, opk_pub) = floor::keygen([27u8; 32]);
        let (ek_s, ek) = floor::keygen([28u8; 32]);
        let (dhs_s, dhs_a) = floor::keygen([29u8; 32]);
        let dk = ml_kem::DecapsulationKey::<MlKem1024>::from_seed(Array::from(f.kem_seed));
        let ss = pq.then(|| dk.decapsulate(&f.kem_ct).into());
        let sk = f.sk(
            [
                floor::dh(&ik_a, &spk_pub),
                floor::dh(&ek_s, &ik_b_x),
                floor::dh(&ek_s, &spk_pub),
                floor::dh(&ek_s, &opk_pub),
            ],
            ss,
        );
        let (_, mut cks) = floor::kdf_rk(&sk, &floor::dh(&dhs_s, &spk_pub));
        let ct = floor::send(&mut cks, &f.aad, &[0u8; 100]);
        let keys = AcceptKeys {
            ik_a_ed: f.ik_b.verifying_key().to_bytes(),
            ik_a_x,
            ik_b,
            spk,
            opk,
            ek,
            dhs_a,
        };
        (keys, dk, ct)
    };
    c.bench_function(&format!("handshake/{name}/floor_accept"), |bench| {
        let (keys, dk, ct) = &keys;
        bench.iter(|| black_box(f.accept(keys, dk, ct)));
    });
}

fn bench(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let alice = IdentityKeyPair::generate(&mut rng);
    // The one-time KEM variant differs only in the responder's key expansion: its floor is
    // pqxdh's, and its initiator side is pqxdh's.
    for (name, kem) in [
        ("x3dh", Kem::None),
        ("pqxdh", Kem::LastResort),
        ("pqxdh-one-time-kem", Kem::OneTime),
    ] {
        let pq = kem != Kem::None;
        let b = bob(&mut rng, kem);
        if kem != Kem::OneTime {
            floors(c, name, pq);
            // Initiator: parse + verify the bundle, agree, and encrypt the first 100 B message.
            c.bench_function(&format!("handshake/{name}/initiate"), |bench| {
                let mut r = ChaCha20Rng::seed_from_u64(1);
                bench.iter(|| {
                    let mut s = initiate(&mut r, &alice, black_box(&b.bundle));
                    black_box(s.encrypt(&[0u8; 100]).unwrap())
                });
            });
        }
        // Responder: parse the initial message, agree, decrypt the first message. The
        // PreKeys value is restored from a snapshot outside the measurement, so every accept
        // starts from the same state (the one-time prekey unused, no replay record).
        let snapshot = b.prekeys.snapshot();
        c.bench_function(&format!("handshake/{name}/accept"), |bench| {
            let mut r = ChaCha20Rng::seed_from_u64(2);
            let mut setup_rng = ChaCha20Rng::seed_from_u64(3);
            bench.iter_batched_ref(
                || {
                    let wire = initiate(&mut setup_rng, &alice, &b.bundle)
                        .encrypt(&[0u8; 100])
                        .unwrap();
                    (PreKeys::restore(&snapshot).unwrap(), wire)
                },
                |(prekeys, wire)| {
                    let Message::PreKey(m) = Message::from_bytes(wire).unwrap() else {
                        panic!()
                    };
                    black_box(prekeys.accept(&mut r, &b.identity, &m).unwrap())
                },
                BatchSize::SmallInput,
            );
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
