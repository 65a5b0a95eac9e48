//! Property tests: random two-party conversations over a lossy, reordering, duplicating network
//! with snapshot/restore at random points, checked against a model of the receiver's state.

mod common;

use std::collections::BTreeSet;

use common::{Device, RecvError, Routed, bob_receive, header_of, is_prekey, is_ratchet, rng};
use confidant::{DecryptError, IdentityKeyPair, PreKeys, Session};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestCaseError};
use rand_chacha::ChaCha20Rng;

/// Deterministic proptest configuration: a fixed seed unless `PROPTEST_RNG_SEED` is set, no
/// failure-persistence files, no output on success.
fn config(cases: u32) -> Config {
    let mut config = Config { cases, failure_persistence: None, ..Config::default() };
    if matches!(config.rng_seed, RngSeed::Random) {
        config.rng_seed = RngSeed::Fixed(0x00C0_FFEE_D00D_F00D);
    }
    config
}

#[derive(Clone, Copy, Debug)]
enum Who {
    Alice,
    BobSession,
    BobPreKeys,
    BobIdentity,
}

#[derive(Clone, Debug)]
enum Action {
    /// Encrypt the next message; `lost` drops it, `dup` puts a second copy on the network.
    Send { alice: bool, len: usize, lost: bool, dup: bool },
    /// Deliver one in-flight message (any one: reordering).
    Deliver { to_bob: bool, pick: Index },
    /// Re-deliver an already delivered message.
    Replay { to_bob: bool, pick: Index },
    /// Replace a state value by `restore(snapshot())` (only in the second run).
    Restore(Who),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (any::<bool>(), 0usize..48, prop::bool::weighted(0.15), prop::bool::weighted(0.1))
            .prop_map(|(alice, len, lost, dup)| Action::Send { alice, len, lost, dup }),
        4 => (any::<bool>(), any::<Index>()).prop_map(|(to_bob, pick)| Action::Deliver { to_bob, pick }),
        1 => (any::<bool>(), any::<Index>()).prop_map(|(to_bob, pick)| Action::Replay { to_bob, pick }),
        1 => prop_oneof![Just(Who::Alice), Just(Who::BobSession), Just(Who::BobPreKeys), Just(Who::BobIdentity)]
            .prop_map(Action::Restore),
    ]
}

/// What the receiver's Double Ratchet must look like: current receiving chain, `Nr`, and the
/// set of stored skipped keys `(ratchet key, n)`.
#[derive(Default)]
struct ReceiverModel {
    current: Option<[u8; 32]>,
    nr: u32,
    skipped: BTreeSet<([u8; 32], u32)>,
}

impl ReceiverModel {
    /// The error a replay of an already decrypted `(dh, n)` must get: `Duplicate` on the current
    /// receiving chain; on an older chain the header looks like a new ratchet key, so the DH
    /// ratchet is tried and the tag fails: `Unauthenticated`.
    fn replay_error(&self, dh: [u8; 32], n: u32) -> DecryptError {
        if self.current == Some(dh) { DecryptError::Duplicate { counter: n } } else { DecryptError::Unauthenticated }
    }

    fn on_success(&mut self, dh: [u8; 32], pn: u32, n: u32) -> Result<(), TestCaseError> {
        if self.current == Some(dh) {
            if n >= self.nr {
                self.skipped.extend((self.nr..n).map(|k| (dh, k)));
                self.nr = n + 1;
            } else {
                prop_assert!(self.skipped.remove(&(dh, n)), "decrypted ({n}) below Nr without a skipped key");
            }
        } else if !self.skipped.remove(&(dh, n)) {
            if let Some(old) = self.current {
                self.skipped.extend((self.nr..pn).map(|k| (old, k)));
            }
            self.skipped.extend((0..n).map(|k| (dh, k)));
            self.nr = n + 1;
            self.current = Some(dh);
        }
        Ok(())
    }
}

struct Msg {
    from_alice: bool,
    wire: Vec<u8>,
    plaintext: Vec<u8>,
    header: ([u8; 32], u32, u32),
    decrypted: bool,
    lost: bool,
}

/// What both runs must agree on byte for byte.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Sent(Vec<u8>),
    Opened { id: usize, plaintext: Vec<u8> },
    Rejected { id: usize, error: String },
}

struct Sim {
    rng: ChaCha20Rng,
    alice_identity: IdentityKeyPair,
    alice: Session,
    bob: Device,
    bob_session: Option<Session>,
    opk_id: u32,
    msgs: Vec<Msg>,
    to_bob: Vec<usize>,
    to_alice: Vec<usize>,
    delivered_to_bob: Vec<usize>,
    delivered_to_alice: Vec<usize>,
    alice_model: ReceiverModel,
    bob_model: ReceiverModel,
    transcript: Vec<Event>,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = rng(seed);
        let (bob, otks) = Device::new(&mut rng, 2);
        let alice_identity = IdentityKeyPair::generate(&mut rng);
        let opk = otks[1];
        let alice = common::initiate(&mut rng, &alice_identity, &bob, Some(opk));
        Self {
            rng,
            alice_identity,
            alice,
            bob,
            bob_session: None,
            opk_id: opk.id(),
            msgs: Vec::new(),
            to_bob: Vec::new(),
            to_alice: Vec::new(),
            delivered_to_bob: Vec::new(),
            delivered_to_alice: Vec::new(),
            alice_model: ReceiverModel::default(),
            bob_model: ReceiverModel::default(),
            transcript: Vec::new(),
        }
    }

    fn send(&mut self, alice: bool, len: usize, lost: bool, dup: bool) -> Result<(), TestCaseError> {
        let id = self.msgs.len();
        let plaintext: Vec<u8> = (0..len + 2).map(|i| (id as u8).wrapping_mul(31).wrapping_add(i as u8)).collect();
        let wire = if alice {
            let awaiting = self.alice.awaiting_reply();
            let wire = self.alice.encrypt(&plaintext).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            // Initial data is repeated exactly until the first reply has been decrypted.
            prop_assert_eq!(is_prekey(&wire), awaiting);
            prop_assert_eq!(is_ratchet(&wire), !awaiting);
            wire
        } else {
            let Some(s) = self.bob_session.as_mut() else { return Ok(()) };
            let wire = s.encrypt(&plaintext).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            prop_assert!(is_ratchet(&wire));
            wire
        };
        self.transcript.push(Event::Sent(wire.clone()));
        let header = header_of(&wire);
        self.msgs.push(Msg { from_alice: alice, wire, plaintext, header, decrypted: false, lost });
        if !lost {
            let queue = if alice { &mut self.to_bob } else { &mut self.to_alice };
            queue.push(id);
            if dup {
                queue.push(id);
            }
        }
        Ok(())
    }

    fn deliver(&mut self, to_bob: bool, id: usize) -> Result<(), TestCaseError> {
        if to_bob { self.deliver_to_bob(id) } else { self.deliver_to_alice(id) }
    }

    fn deliver_to_bob(&mut self, id: usize) -> Result<(), TestCaseError> {
        let msg = &self.msgs[id];
        prop_assert!(msg.from_alice && !msg.lost);
        let (dh, pn, n) = msg.header;
        let wire = msg.wire.clone();
        let session_before = self.bob_session.as_ref().map(Session::snapshot);
        let prekeys_before = self.bob.prekeys.snapshot();
        let rng_before = self.rng.clone();
        let result = bob_receive(&mut self.rng, &mut self.bob, self.bob_session.as_mut(), &wire);
        if !self.msgs[id].decrypted {
            let plaintext = match result {
                Ok(Routed::Accepted(a)) => {
                    prop_assert!(self.bob_session.is_none(), "accept while a session exists");
                    prop_assert_eq!(a.consumed_one_time_prekey, Some(self.opk_id));
                    prop_assert_eq!(self.bob.prekeys.one_time_prekey_count(), 1);
                    self.bob_session = Some(a.session);
                    a.plaintext.to_vec()
                }
                Ok(Routed::Session(p)) => p,
                Err(e) => return Err(TestCaseError::fail(format!("first delivery of {id} failed: {e:?}"))),
            };
            prop_assert_eq!(&plaintext, &self.msgs[id].plaintext);
            self.msgs[id].decrypted = true;
            self.delivered_to_bob.push(id);
            self.bob_model.on_success(dh, pn, n)?;
            let s = self.bob_session.as_ref().expect("session");
            prop_assert_eq!(s.skipped_keys(), self.bob_model.skipped.len());
            self.transcript.push(Event::Opened { id, plaintext });
        } else {
            let expected = RecvError::Decrypt(self.bob_model.replay_error(dh, n));
            match result {
                Err(e) => {
                    prop_assert_eq!(&e, &expected, "replay of {} (n={})", id, n);
                    self.transcript.push(Event::Rejected { id, error: format!("{e:?}") });
                }
                Ok(_) => return Err(TestCaseError::fail(format!("replay of {id} was accepted"))),
            }
            // A failed receive changes nothing and uses no randomness.
            prop_assert_eq!(self.bob_session.as_ref().map(Session::snapshot), session_before);
            prop_assert_eq!(self.bob.prekeys.snapshot(), prekeys_before);
            prop_assert!(self.rng == rng_before);
        }
        Ok(())
    }

    fn deliver_to_alice(&mut self, id: usize) -> Result<(), TestCaseError> {
        let msg = &self.msgs[id];
        prop_assert!(!msg.from_alice && !msg.lost);
        let (dh, pn, n) = msg.header;
        let wire = msg.wire.clone();
        let before = self.alice.snapshot();
        let rng_before = self.rng.clone();
        let result = self.alice.decrypt_bytes(&mut self.rng, &wire).map(|p| p.to_vec());
        if !self.msgs[id].decrypted {
            let plaintext = result.map_err(|e| TestCaseError::fail(format!("first delivery of {id} failed: {e:?}")))?;
            prop_assert_eq!(&plaintext, &self.msgs[id].plaintext);
            prop_assert!(!self.alice.awaiting_reply());
            self.msgs[id].decrypted = true;
            self.delivered_to_alice.push(id);
            self.alice_model.on_success(dh, pn, n)?;
            prop_assert_eq!(self.alice.skipped_keys(), self.alice_model.skipped.len());
            self.transcript.push(Event::Opened { id, plaintext });
        } else {
            let expected = self.alice_model.replay_error(dh, n);
            match result {
                Err(e) => {
                    prop_assert_eq!(e, expected, "replay of {} (n={})", id, n);
                    self.transcript.push(Event::Rejected { id, error: format!("{e:?}") });
                }
                Ok(_) => return Err(TestCaseError::fail(format!("replay of {id} was accepted"))),
            }
            prop_assert_eq!(self.alice.snapshot(), before);
            prop_assert!(self.rng == rng_before);
        }
        Ok(())
    }

    fn restore(&mut self, who: Who) -> Result<(), TestCaseError> {
        match who {
            Who::Alice => {
                let snap = self.alice.snapshot();
                self.alice = Session::restore(&snap).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                prop_assert_eq!(self.alice.snapshot(), snap);
            }
            Who::BobSession => {
                if let Some(s) = self.bob_session.as_mut() {
                    let snap = s.snapshot();
                    *s = Session::restore(&snap).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                    prop_assert_eq!(s.snapshot(), snap);
                }
            }
            Who::BobPreKeys => {
                let snap = self.bob.prekeys.snapshot();
                self.bob.prekeys = PreKeys::restore(&snap).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                prop_assert_eq!(self.bob.prekeys.snapshot(), snap);
            }
            Who::BobIdentity => {
                let public = self.bob.identity.public();
                self.bob.identity = IdentityKeyPair::from_seed(&self.bob.identity.to_seed());
                prop_assert_eq!(self.bob.identity.public(), public);
                let alice_public = self.alice_identity.public();
                self.alice_identity = IdentityKeyPair::from_seed(&self.alice_identity.to_seed());
                prop_assert_eq!(self.alice_identity.public(), alice_public);
            }
        }
        Ok(())
    }

    fn run(&mut self, actions: &[Action], restores: bool) -> Result<(), TestCaseError> {
        for a in actions {
            match a {
                Action::Send { alice, len, lost, dup } => self.send(*alice, *len, *lost, *dup)?,
                Action::Deliver { to_bob, pick } => {
                    let queue = if *to_bob { &mut self.to_bob } else { &mut self.to_alice };
                    if !queue.is_empty() {
                        let id = queue.remove(pick.index(queue.len()));
                        self.deliver(*to_bob, id)?;
                    }
                }
                Action::Replay { to_bob, pick } => {
                    let done = if *to_bob { &self.delivered_to_bob } else { &self.delivered_to_alice };
                    if !done.is_empty() {
                        let id = done[pick.index(done.len())];
                        self.deliver(*to_bob, id)?;
                    }
                }
                Action::Restore(who) => {
                    if restores {
                        self.restore(*who)?;
                    }
                }
            }
        }
        // Drain the network in order: everything not lost decrypts exactly once.
        while !self.to_bob.is_empty() || !self.to_alice.is_empty() {
            if !self.to_bob.is_empty() {
                let id = self.to_bob.remove(0);
                self.deliver_to_bob(id)?;
            }
            if !self.to_alice.is_empty() {
                let id = self.to_alice.remove(0);
                self.deliver_to_alice(id)?;
            }
        }
        for (id, m) in self.msgs.iter().enumerate() {
            prop_assert_eq!(m.decrypted, !m.lost, "message {} (lost: {})", id, m.lost);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(config(96))]

    /// Every delivered message decrypts exactly once to its plaintext; replays get exactly the
    /// predicted error and change nothing; restoring snapshots anywhere changes no output byte.
    #[test]
    fn conversations(seed in any::<u64>(), actions in prop::collection::vec(action(), 1..90)) {
        let mut plain = Sim::new(seed);
        plain.run(&actions, false)?;
        let mut restored = Sim::new(seed);
        restored.run(&actions, true)?;
        prop_assert!(plain.transcript == restored.transcript, "snapshot/restore changed the transcript");
        // Both ends of both runs also agree on the final state, byte for byte.
        prop_assert_eq!(plain.alice.snapshot(), restored.alice.snapshot());
        prop_assert_eq!(
            plain.bob_session.as_ref().map(Session::snapshot),
            restored.bob_session.as_ref().map(Session::snapshot)
        );
        prop_assert_eq!(plain.bob.prekeys.snapshot(), restored.bob.prekeys.snapshot());
    }
}

#[derive(Clone, Debug)]
enum Op {
    AliceSends,
    BobSends,
    DeliverToBob(Index),
    DeliverToAlice(Index),
    RotateSignedPreKey,
    GenerateOneTimePreKeys(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::AliceSends),
        3 => Just(Op::BobSends),
        3 => any::<Index>().prop_map(Op::DeliverToBob),
        3 => any::<Index>().prop_map(Op::DeliverToAlice),
        1 => Just(Op::RotateSignedPreKey),
        1 => (0usize..4).prop_map(Op::GenerateOneTimePreKeys),
    ]
}

fn session_round_trip(s: &Session) -> Result<(), TestCaseError> {
    let snap = s.snapshot();
    let restored = Session::restore(&snap).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    prop_assert_eq!(restored.snapshot(), snap);
    prop_assert_eq!(format!("{restored:?}"), format!("{s:?}"));
    Ok(())
}

fn prekeys_round_trip(p: &PreKeys) -> Result<(), TestCaseError> {
    let snap = p.snapshot();
    let restored = PreKeys::restore(&snap).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    prop_assert_eq!(restored.snapshot(), snap);
    prop_assert_eq!(format!("{restored:?}"), format!("{p:?}"));
    Ok(())
}

proptest! {
    #![proptest_config(config(128))]

    /// `restore(snapshot())` reproduces the snapshot byte for byte in every reachable state, and
    /// a restored session continues exactly like the original.
    #[test]
    fn snapshot_restore_round_trip(seed in any::<u64>(), ops in prop::collection::vec(op(), 0..40)) {
        let mut rng = rng(seed);
        let (mut bob, otks) = Device::new(&mut rng, 1);
        let alice_id = IdentityKeyPair::generate(&mut rng);
        let mut alice = common::initiate(&mut rng, &alice_id, &bob, otks.first().copied());
        let mut bob_session: Option<Session> = None;
        let (mut to_bob, mut to_alice) = (Vec::new(), Vec::new());
        let mut rotations = 0;
        session_round_trip(&alice)?;
        prekeys_round_trip(&bob.prekeys)?;
        for op in &ops {
            match op {
                Op::AliceSends => to_bob.push(alice.encrypt(b"a").map_err(|e| TestCaseError::fail(format!("{e:?}")))?),
                Op::BobSends => if let Some(s) = bob_session.as_mut() {
                    to_alice.push(s.encrypt(b"b").map_err(|e| TestCaseError::fail(format!("{e:?}")))?);
                },
                Op::DeliverToBob(i) => if !to_bob.is_empty() {
                    let wire = to_bob.remove(i.index(to_bob.len()));
                    match bob_receive(&mut rng, &mut bob, bob_session.as_mut(), &wire) {
                        Ok(Routed::Accepted(a)) => bob_session = Some(a.session),
                        Ok(Routed::Session(p)) => prop_assert_eq!(&p[..], b"a"),
                        Err(e) => return Err(TestCaseError::fail(format!("{e:?}"))),
                    }
                },
                Op::DeliverToAlice(i) => if !to_alice.is_empty() {
                    let wire = to_alice.remove(i.index(to_alice.len()));
                    let p = alice.decrypt_bytes(&mut rng, &wire).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                    prop_assert_eq!(&p[..], b"b");
                },
                Op::RotateSignedPreKey => {
                    // Stay below MAX_SIGNED_PREKEYS so Alice's signed prekey is still held.
                    if rotations < 8 {
                        rotations += 1;
                        bob.prekeys.rotate_signed_prekey(&mut rng, &bob.identity, common::NOW);
                    }
                }
                Op::GenerateOneTimePreKeys(k) => {
                    bob.prekeys.generate_one_time_prekeys(&mut rng, *k).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                }
            }
            session_round_trip(&alice)?;
            if let Some(s) = &bob_session {
                session_round_trip(s)?;
            }
            prekeys_round_trip(&bob.prekeys)?;
        }
        // Continue from restored copies: identical output to the original.
        let mut restored = Session::restore(&alice.snapshot()).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let a = alice.encrypt(b"next").map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let b = restored.encrypt(b"next").map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(a, b);
        prop_assert_eq!(alice.snapshot(), restored.snapshot());
    }
}
