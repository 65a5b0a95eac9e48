//! Property tests: random two-party conversations over a lossy, reordering, duplicating network
//! with snapshot/restore at random points, checked against a model of the receiver's Double
//! Ratchet that predicts every outcome exactly (PROTOCOL.md §5.4):
//!
//! * without gaps beyond `MAX_SKIP`, the first delivery of every message that was not lost
//!   decrypts to its plaintext, and nothing decrypts twice;
//! * a replay of a decrypted message is `Duplicate { counter: n }` if it belongs to the receiver's
//!   current receiving chain, otherwise (an earlier chain) `Unauthenticated` — or `TooFarAhead`
//!   when its `pn`/`n` exceed the skip bound;
//! * every failure leaves the snapshots byte-identical and the RNG untouched;
//! * restoring any state from its snapshot at any point changes no output byte.
//!
//! The same simulation runs on sessions set up by X3DH (`conversations`) and by PQXDH
//! (`pq_conversations`, with a one-time or the last-resort KEM prekey): after the handshake,
//! PQXDH sessions must behave exactly like X3DH ones.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::{HashSet, VecDeque};

use common::{Device, PREKEY_V1, RATCHET_V1, RecvError, Routed, bob_receive, header_of, rng};
use confidant::limits::{MAX_SKIP, MAX_STORED_SKIPPED};
use confidant::{DecryptError, Handshake, HandshakeError, IdentityKeyPair, PreKeys, Session};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError};
use rand_chacha::ChaCha20Rng;

fn config(cases: u32) -> Config {
    common::proptest_config(cases, 0x00C0_FFEE_D00D_F00D)
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
    Send {
        alice: bool,
        len: usize,
        lost: bool,
        dup: bool,
    },
    /// Deliver one in-flight message (any one: reordering).
    Deliver { to_bob: bool, pick: Index },
    /// Re-deliver an already delivered message.
    Replay { to_bob: bool, pick: Index },
    /// Replace a state value by `restore(snapshot())` (only in the second run).
    Restore(Who),
    /// Send `count` messages of which only the first and the last reach the network: a gap
    /// around `MAX_SKIP`, which fills (and with several bursts, overflows) the skipped-key store.
    Burst { alice: bool, count: u32 },
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

/// Conversations, some of which contain bursts (a small share, as each costs ~1000 messages).
fn actions() -> impl Strategy<Value = Vec<Action>> {
    let burst = (any::<bool>(), (MAX_SKIP - 3)..=(MAX_SKIP + 3))
        .prop_map(|(alice, count)| Action::Burst { alice, count });
    (
        prop::collection::vec(action(), 1..90),
        prop::collection::vec((any::<Index>(), burst), 0..=3),
        prop::bool::weighted(0.15),
    )
        .prop_map(|(mut actions, bursts, with_bursts)| {
            if with_bursts {
                for (at, b) in bursts {
                    let i = at.index(actions.len() + 1);
                    actions.insert(i, b);
                }
            }
            actions
        })
}

/// What the receiver's Double Ratchet must look like (PROTOCOL.md §5.4): the current receiving
/// chain, `Nr`, the chains seen so far and the skipped-key store in insertion order, with FIFO
/// eviction at `MAX_STORED_SKIPPED`. It predicts the outcome of every delivery exactly.
#[derive(Default)]
struct ReceiverModel {
    current: Option<[u8; 32]>,
    seen: HashSet<[u8; 32]>,
    nr: u32,
    skipped: VecDeque<([u8; 32], u32)>,
}

impl ReceiverModel {
    /// `TrySkippedMessageKeys` as the spec writes it: the store is consulted first, always.
    fn stored(&self, dh: [u8; 32], n: u32) -> Option<usize> {
        self.skipped.iter().position(|k| *k == (dh, n))
    }

    /// The outcome of decrypting the genuine message with header `(dh, pn, n)`: a stored key
    /// decrypts; the current chain rejects used counters (`Duplicate`) and gaps beyond `MAX_SKIP`;
    /// another chain is a DH ratchet step, bounded by `MAX_SKIP` for `pn` and `n`, which succeeds
    /// only for a chain never seen before (otherwise the tag fails: `Unauthenticated`).
    fn predict(&self, dh: [u8; 32], pn: u32, n: u32) -> Result<(), DecryptError> {
        let limit = MAX_SKIP;
        if self.stored(dh, n).is_some() {
            return Ok(());
        }
        if self.current == Some(dh) {
            if n < self.nr {
                return Err(DecryptError::Duplicate { counter: n });
            }
            if n - self.nr > limit {
                return Err(DecryptError::TooFarAhead {
                    gap: u64::from(n - self.nr),
                    limit,
                });
            }
            return Ok(());
        }
        if u64::from(pn) > u64::from(self.nr) + u64::from(limit) {
            return Err(DecryptError::TooFarAhead {
                gap: u64::from(pn - self.nr),
                limit,
            });
        }
        if n > limit {
            return Err(DecryptError::TooFarAhead {
                gap: u64::from(n),
                limit,
            });
        }
        if self.seen.contains(&dh) {
            Err(DecryptError::Unauthenticated)
        } else {
            Ok(())
        }
    }

    fn commit(&mut self, dh: [u8; 32], pn: u32, n: u32) {
        if let Some(i) = self.stored(dh, n) {
            self.skipped.remove(i);
            return;
        }
        if self.current != Some(dh) {
            if let Some(old) = self.current {
                self.skipped.extend((self.nr..pn).map(|k| (old, k)));
            }
            self.current = Some(dh);
            self.seen.insert(dh);
            self.nr = 0;
        }
        self.skipped.extend((self.nr..n).map(|k| (dh, k)));
        self.nr = n + 1;
        while self.skipped.len() > MAX_STORED_SKIPPED {
            self.skipped.pop_front();
        }
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

/// How Alice's session is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    /// X3DH with a one-time prekey.
    X3dh,
    /// PQXDH with a one-time KEM prekey and a one-time prekey: accepting consumes both.
    PqOneTime,
    /// PQXDH with the last-resort KEM prekey and no one-time prekey: accepting consumes nothing
    /// and records the KEM triple `(KEM prekey id, signed prekey id, base key)` instead.
    PqLastResort,
}

/// What Bob's first successful accept must report and leave behind.
struct Expected {
    handshake: Handshake,
    consumed_one_time_prekey: Option<u32>,
    consumed_one_time_kem_prekey: Option<u32>,
    one_time_prekeys_left: usize,
    one_time_kem_prekeys_left: usize,
    /// `(signed prekey id, KEM prekey id)` of every replay-record entry after the accept.
    replay_records: Vec<(u64, Option<u64>)>,
}

struct Sim {
    rng: ChaCha20Rng,
    alice_identity: IdentityKeyPair,
    alice: Session,
    bob: Device,
    bob_session: Option<Session>,
    expected: Expected,
    msgs: Vec<Msg>,
    to_bob: Vec<usize>,
    to_alice: Vec<usize>,
    delivered_to_bob: Vec<usize>,
    delivered_to_alice: Vec<usize>,
    alice_model: ReceiverModel,
    bob_model: ReceiverModel,
    transcript: Vec<Event>,
    /// Whether a burst happened: without one, every first delivery must succeed.
    had_burst: bool,
}

impl Sim {
    fn new(seed: u64, setup: Setup) -> Self {
        let mut rng = rng(seed);
        let (alice_identity, alice, bob, expected) = match setup {
            Setup::X3dh => {
                let (bob, otks) = Device::new(&mut rng, 2);
                let alice_identity = IdentityKeyPair::generate(&mut rng);
                let opk = otks[1];
                let alice = common::initiate(&mut rng, &alice_identity, &bob, Some(opk));
                let expected = Expected {
                    handshake: Handshake::X3dh,
                    consumed_one_time_prekey: Some(opk.id()),
                    consumed_one_time_kem_prekey: None,
                    one_time_prekeys_left: 1,
                    one_time_kem_prekeys_left: 0,
                    replay_records: vec![],
                };
                (alice_identity, alice, bob, expected)
            }
            Setup::PqOneTime | Setup::PqLastResort => {
                let (mut bob, otks) = Device::new_pq(&mut rng, 2);
                let kem_otks = bob
                    .prekeys
                    .generate_one_time_kem_prekeys(&mut rng, &bob.identity, 2)
                    .expect("generate");
                let alice_identity = IdentityKeyPair::generate(&mut rng);
                let one_time = setup == Setup::PqOneTime;
                let opk = Some(otks[1]).filter(|_| one_time);
                let kem = Some(kem_otks[1].clone()).filter(|_| one_time);
                let alice = common::initiate_pq(&mut rng, &alice_identity, &bob, opk, kem.clone());
                let last_resort = bob.prekeys.last_resort_kem_prekey().id();
                let expected = Expected {
                    handshake: Handshake::Pqxdh,
                    consumed_one_time_prekey: opk.map(|k| k.id()),
                    consumed_one_time_kem_prekey: kem.map(|k| k.id()),
                    one_time_prekeys_left: if one_time { 1 } else { 2 },
                    one_time_kem_prekeys_left: if one_time { 1 } else { 2 },
                    replay_records: if one_time {
                        vec![]
                    } else {
                        vec![(1, Some(u64::from(last_resort)))]
                    },
                };
                (alice_identity, alice, bob, expected)
            }
        };
        Self {
            rng,
            alice_identity,
            alice,
            bob,
            bob_session: None,
            expected,
            msgs: Vec::new(),
            to_bob: Vec::new(),
            to_alice: Vec::new(),
            delivered_to_bob: Vec::new(),
            delivered_to_alice: Vec::new(),
            alice_model: ReceiverModel::default(),
            bob_model: ReceiverModel::default(),
            transcript: Vec::new(),
            had_burst: false,
        }
    }

    fn send(
        &mut self,
        alice: bool,
        len: usize,
        lost: bool,
        dup: bool,
    ) -> Result<(), TestCaseError> {
        let id = self.msgs.len();
        let plaintext: Vec<u8> = (0..len + 2)
            .map(|i| (id as u8).wrapping_mul(31).wrapping_add(i as u8))
            .collect();
        let wire = if alice {
            let awaiting = self.alice.awaiting_reply();
            let wire = self
                .alice
                .encrypt(&plaintext)
                .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            // Initial data is repeated exactly until the first reply has been decrypted.
            prop_assert_eq!(wire[0], if awaiting { PREKEY_V1 } else { RATCHET_V1 });
            wire
        } else {
            let Some(s) = self.bob_session.as_mut() else {
                return Ok(());
            };
            let wire = s
                .encrypt(&plaintext)
                .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            prop_assert_eq!(wire[0], RATCHET_V1);
            wire
        };
        self.transcript.push(Event::Sent(wire.clone()));
        let header = header_of(&wire);
        self.msgs.push(Msg {
            from_alice: alice,
            wire,
            plaintext,
            header,
            decrypted: false,
            lost,
        });
        if !lost {
            let queue = if alice {
                &mut self.to_bob
            } else {
                &mut self.to_alice
            };
            queue.push(id);
            if dup {
                queue.push(id);
            }
        }
        Ok(())
    }

    fn deliver(&mut self, to_bob: bool, id: usize) -> Result<(), TestCaseError> {
        if to_bob {
            self.deliver_to_bob(id)
        } else {
            self.deliver_to_alice(id)
        }
    }

    /// Checks a delivery against the model: `expected` from `ReceiverModel::predict`, and the
    /// invariants that hold regardless — a message decrypts at most once, a failure changes no
    /// state and uses no randomness, and without bursts every first delivery succeeds.
    fn check_expected(
        &self,
        id: usize,
        expected: &Result<(), DecryptError>,
    ) -> Result<(), TestCaseError> {
        let m = &self.msgs[id];
        if m.decrypted {
            prop_assert!(
                expected.is_err(),
                "model would decrypt message {} twice",
                id
            );
        } else if !self.had_burst {
            prop_assert!(
                expected.is_ok(),
                "first delivery of {} predicted to fail: {:?}",
                id,
                expected
            );
        }
        Ok(())
    }

    fn deliver_to_bob(&mut self, id: usize) -> Result<(), TestCaseError> {
        let msg = &self.msgs[id];
        prop_assert!(msg.from_alice && !msg.lost);
        let (dh, pn, n) = msg.header;
        let wire = msg.wire.clone();
        let expected = self.bob_model.predict(dh, pn, n);
        self.check_expected(id, &expected)?;
        // Snapshots are compared only after a failure (they are large with a full skipped store).
        let failing = expected.is_err();
        let session_before = self
            .bob_session
            .as_ref()
            .filter(|_| failing)
            .map(Session::snapshot);
        let prekeys_before = failing.then(|| self.bob.prekeys.snapshot());
        let rng_before = self.rng.clone();
        let had_session = self.bob_session.is_some();
        let result = bob_receive(
            &mut self.rng,
            &mut self.bob,
            self.bob_session.as_mut(),
            &wire,
        );
        match expected {
            Ok(()) => {
                let plaintext = match result {
                    Ok(Routed::Accepted(a)) => {
                        prop_assert!(!had_session, "accept while a session exists");
                        let e = &self.expected;
                        prop_assert_eq!(a.session.handshake(), e.handshake);
                        prop_assert_eq!(a.consumed_one_time_prekey, e.consumed_one_time_prekey);
                        prop_assert_eq!(
                            a.consumed_one_time_kem_prekey,
                            e.consumed_one_time_kem_prekey
                        );
                        prop_assert_eq!(
                            self.bob.prekeys.one_time_prekey_count(),
                            e.one_time_prekeys_left
                        );
                        prop_assert_eq!(
                            self.bob.prekeys.one_time_kem_prekey_count(),
                            e.one_time_kem_prekeys_left
                        );
                        prop_assert_eq!(&replay_records(&self.bob.prekeys), &e.replay_records);
                        self.bob_session = Some(a.session);
                        a.plaintext.to_vec()
                    }
                    Ok(Routed::Session(p)) => p,
                    Err(e) => {
                        return Err(TestCaseError::fail(format!(
                            "delivery of {id} (n={n}) failed: {e:?}"
                        )));
                    }
                };
                prop_assert_eq!(&plaintext, &self.msgs[id].plaintext);
                self.msgs[id].decrypted = true;
                self.delivered_to_bob.push(id);
                self.bob_model.commit(dh, pn, n);
                let s = self.bob_session.as_ref().expect("session");
                prop_assert_eq!(s.skipped_keys(), self.bob_model.skipped.len());
                self.transcript.push(Event::Opened { id, plaintext });
            }
            Err(e) => {
                // Without a session the message goes to `accept`, which wraps ratchet errors.
                let expected = match (had_session, e) {
                    (true, e) => RecvError::Decrypt(e),
                    (false, DecryptError::Unauthenticated) => {
                        RecvError::Handshake(HandshakeError::Unauthenticated)
                    }
                    (false, e) => RecvError::Handshake(HandshakeError::FirstMessage(e)),
                };
                match result {
                    Err(e) => {
                        prop_assert_eq!(&e, &expected, "message {} (pn={}, n={})", id, pn, n);
                        self.transcript.push(Event::Rejected {
                            id,
                            error: format!("{e:?}"),
                        });
                    }
                    Ok(_) => {
                        return Err(TestCaseError::fail(format!(
                            "message {id} decrypted, expected {expected:?}"
                        )));
                    }
                }
                prop_assert_eq!(
                    self.bob_session.as_ref().map(Session::snapshot),
                    session_before
                );
                prop_assert_eq!(Some(self.bob.prekeys.snapshot()), prekeys_before);
                prop_assert!(self.rng == rng_before);
            }
        }
        Ok(())
    }

    fn deliver_to_alice(&mut self, id: usize) -> Result<(), TestCaseError> {
        let msg = &self.msgs[id];
        prop_assert!(!msg.from_alice && !msg.lost);
        let (dh, pn, n) = msg.header;
        let wire = msg.wire.clone();
        let expected = self.alice_model.predict(dh, pn, n);
        self.check_expected(id, &expected)?;
        let before = expected.is_err().then(|| self.alice.snapshot());
        let awaiting = self.alice.awaiting_reply();
        let rng_before = self.rng.clone();
        let result = self
            .alice
            .decrypt_bytes(&mut self.rng, &wire)
            .map(|p| p.to_vec());
        match expected {
            Ok(()) => {
                let plaintext = result.map_err(|e| {
                    TestCaseError::fail(format!("delivery of {id} (n={n}) failed: {e:?}"))
                })?;
                prop_assert_eq!(&plaintext, &self.msgs[id].plaintext);
                prop_assert!(!self.alice.awaiting_reply());
                self.msgs[id].decrypted = true;
                self.delivered_to_alice.push(id);
                self.alice_model.commit(dh, pn, n);
                prop_assert_eq!(self.alice.skipped_keys(), self.alice_model.skipped.len());
                self.transcript.push(Event::Opened { id, plaintext });
            }
            Err(expected) => {
                match result {
                    Err(e) => {
                        prop_assert_eq!(e, expected, "message {} (pn={}, n={})", id, pn, n);
                        self.transcript.push(Event::Rejected {
                            id,
                            error: format!("{e:?}"),
                        });
                    }
                    Ok(_) => {
                        return Err(TestCaseError::fail(format!(
                            "message {id} decrypted, expected {expected:?}"
                        )));
                    }
                }
                prop_assert_eq!(Some(self.alice.snapshot()), before);
                prop_assert_eq!(self.alice.awaiting_reply(), awaiting);
                prop_assert!(self.rng == rng_before);
            }
        }
        Ok(())
    }

    fn burst(&mut self, alice: bool, count: u32) -> Result<(), TestCaseError> {
        if !alice && self.bob_session.is_none() {
            return Ok(());
        }
        self.had_burst = true;
        for i in 0..count {
            // The first and the last message reach the network; the gap between them is lost.
            let kept = i == 0 || i + 1 == count;
            self.send(alice, 0, !kept, false)?;
        }
        Ok(())
    }

    fn restore(&mut self, who: Who) -> Result<(), TestCaseError> {
        match who {
            Who::Alice => {
                let snap = self.alice.snapshot();
                self.alice =
                    Session::restore(&snap).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                prop_assert_eq!(self.alice.snapshot(), snap);
            }
            Who::BobSession => {
                if let Some(s) = self.bob_session.as_mut() {
                    let snap = s.snapshot();
                    *s = Session::restore(&snap)
                        .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                    prop_assert_eq!(s.snapshot(), snap);
                }
            }
            Who::BobPreKeys => {
                let snap = self.bob.prekeys.snapshot();
                self.bob.prekeys =
                    PreKeys::restore(&snap).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
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
                Action::Send {
                    alice,
                    len,
                    lost,
                    dup,
                } => self.send(*alice, *len, *lost, *dup)?,
                Action::Deliver { to_bob, pick } => {
                    let queue = if *to_bob {
                        &mut self.to_bob
                    } else {
                        &mut self.to_alice
                    };
                    if !queue.is_empty() {
                        let id = queue.remove(pick.index(queue.len()));
                        self.deliver(*to_bob, id)?;
                    }
                }
                Action::Replay { to_bob, pick } => {
                    let done = if *to_bob {
                        &self.delivered_to_bob
                    } else {
                        &self.delivered_to_alice
                    };
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
                Action::Burst { alice, count } => self.burst(*alice, *count)?,
            }
        }
        // Drain the network in order (each delivery checked against the model as above).
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
        // Neither side ever changes its handshake kind.
        prop_assert_eq!(self.alice.handshake(), self.expected.handshake);
        if let Some(s) = &self.bob_session {
            prop_assert_eq!(s.handshake(), self.expected.handshake);
        }
        // The stored skipped keys are exactly the model's, entry by entry, oldest first.
        prop_assert_eq!(
            skipped_ids(&self.alice),
            Vec::from(self.alice_model.skipped.clone())
        );
        if let Some(s) = &self.bob_session {
            prop_assert_eq!(skipped_ids(s), Vec::from(self.bob_model.skipped.clone()));
        }
        // Without bursts, everything not lost was decrypted (exactly once, by construction).
        if !self.had_burst {
            for (id, m) in self.msgs.iter().enumerate() {
                prop_assert_eq!(m.decrypted, !m.lost, "message {} (lost: {})", id, m.lost);
            }
        }
        Ok(())
    }
}

/// `(signed prekey id, KEM prekey id)` of every replay-record entry of a PreKeys snapshot
/// (PROTOCOL.md §10.2: `accepted_base_keys`, field 5).
fn replay_records(p: &PreKeys) -> Vec<(u64, Option<u64>)> {
    let snapshot = p.snapshot();
    let top = common::parse_proto(&snapshot[1..]).expect("snapshot");
    common::len_fields(&top, 5)
        .iter()
        .map(|entry| {
            let fields = common::parse_proto(entry).expect("replay entry");
            let varint = |field| {
                fields.iter().find_map(|(f, v)| match v {
                    common::Value::Varint(x) if *f == field => Some(*x),
                    _ => None,
                })
            };
            (varint(1).unwrap_or(0), varint(3))
        })
        .collect()
}

/// The `(ratchet key, n)` of every stored skipped key, oldest first, read from the snapshot
/// (PROTOCOL.md §10.1: `RatchetProto.skipped`, field 10, in insertion order).
fn skipped_ids(session: &Session) -> Vec<([u8; 32], u32)> {
    let snapshot = session.snapshot();
    let top = common::parse_proto(&snapshot[1..]).expect("snapshot");
    let ratchet = common::parse_proto(&common::len_fields(&top, 7)[0]).expect("ratchet");
    common::len_fields(&ratchet, 10)
        .iter()
        .map(|entry| {
            let fields = common::parse_proto(entry).expect("skipped entry");
            let dh: [u8; 32] = common::len_fields(&fields, 1)[0]
                .clone()
                .try_into()
                .expect("32 bytes");
            let n = fields
                .iter()
                .find_map(|(f, v)| match (f, v) {
                    (2, common::Value::Varint(n)) => Some(u32::try_from(*n).expect("u32")),
                    _ => None,
                })
                .unwrap_or(0);
            (dh, n)
        })
        .collect()
}

proptest! {
    #![proptest_config(config(1024))]

    /// Every delivered message decrypts exactly once to its plaintext; replays get exactly the
    /// predicted error and change nothing; restoring snapshots anywhere changes no output byte.
    #[test]
    fn conversations(seed in any::<u64>(), actions in actions()) {
        conversation(seed, Setup::X3dh, &actions)?;
    }
}

proptest! {
    // Fewer cases: a PQXDH setup costs an ML-KEM key generation, encapsulation and
    // decapsulation per run, and the ratchet under test is the same.
    #![proptest_config(config(384))]

    /// As `conversations`, for sessions set up by PQXDH with a one-time KEM prekey (and a
    /// one-time prekey) or with the last-resort KEM prekey (and none).
    #[test]
    fn pq_conversations(
        seed in any::<u64>(),
        setup in prop_oneof![Just(Setup::PqOneTime), Just(Setup::PqLastResort)],
        actions in actions(),
    ) {
        conversation(seed, setup, &actions)?;
    }
}

/// Runs `actions` twice, without and with snapshot/restore, and compares the runs.
fn conversation(seed: u64, setup: Setup, actions: &[Action]) -> Result<(), TestCaseError> {
    let mut plain = Sim::new(seed, setup);
    plain.run(actions, false)?;
    let mut restored = Sim::new(seed, setup);
    restored.run(actions, true)?;
    prop_assert!(
        plain.transcript == restored.transcript,
        "snapshot/restore changed the transcript"
    );
    // Both ends of both runs also agree on the final state, byte for byte.
    prop_assert_eq!(plain.alice.snapshot(), restored.alice.snapshot());
    prop_assert_eq!(
        plain.bob_session.as_ref().map(Session::snapshot),
        restored.bob_session.as_ref().map(Session::snapshot)
    );
    prop_assert_eq!(
        plain.bob.prekeys.snapshot(),
        restored.bob.prekeys.snapshot()
    );
    Ok(())
}

#[derive(Clone, Debug)]
enum Op {
    AliceSends,
    BobSends,
    DeliverToBob(Index),
    DeliverToAlice(Index),
    RotateSignedPreKey,
    GenerateOneTimePreKeys(usize),
    RotateLastResortKemPreKey,
    GenerateOneTimeKemPreKeys(usize),
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

/// `op()` plus the KEM prekey operations.
fn pq_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => op(),
        1 => Just(Op::RotateLastResortKemPreKey),
        1 => (0usize..3).prop_map(Op::GenerateOneTimeKemPreKeys),
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
    #![proptest_config(config(512))]

    /// `restore(snapshot())` reproduces the snapshot byte for byte in every reachable state, and
    /// a restored session continues exactly like the original.
    #[test]
    fn snapshot_restore_round_trip(seed in any::<u64>(), ops in prop::collection::vec(op(), 0..40)) {
        round_trip(seed, false, &ops)?;
    }
}

proptest! {
    #![proptest_config(config(128))]

    /// As `snapshot_restore_round_trip` for a PQXDH session (pending KEM data in the
    /// initiator's snapshot until the first reply) and PreKeys with KEM prekeys being rotated
    /// and generated.
    #[test]
    fn pq_snapshot_restore_round_trip(seed in any::<u64>(), ops in prop::collection::vec(pq_op(), 0..40)) {
        round_trip(seed, true, &ops)?;
    }
}

fn round_trip(seed: u64, pq: bool, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut rng = rng(seed);
    let (mut bob, mut alice) = if pq {
        let (mut bob, otks) = Device::new_pq(&mut rng, 1);
        let kem = bob
            .prekeys
            .generate_one_time_kem_prekeys(&mut rng, &bob.identity, 1)
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let alice_id = IdentityKeyPair::generate(&mut rng);
        let alice = common::initiate_pq(
            &mut rng,
            &alice_id,
            &bob,
            otks.first().copied(),
            kem.first().cloned(),
        );
        (bob, alice)
    } else {
        let (bob, otks) = Device::new(&mut rng, 1);
        let alice_id = IdentityKeyPair::generate(&mut rng);
        let alice = common::initiate(&mut rng, &alice_id, &bob, otks.first().copied());
        (bob, alice)
    };
    let handshake = if pq {
        Handshake::Pqxdh
    } else {
        Handshake::X3dh
    };
    prop_assert_eq!(alice.handshake(), handshake);
    let mut bob_session: Option<Session> = None;
    let (mut to_bob, mut to_alice) = (Vec::new(), Vec::new());
    let (mut rotations, mut kem_rotations) = (0, 0);
    session_round_trip(&alice)?;
    prekeys_round_trip(&bob.prekeys)?;
    for op in ops {
        match op {
            Op::AliceSends => to_bob.push(
                alice
                    .encrypt(b"a")
                    .map_err(|e| TestCaseError::fail(format!("{e:?}")))?,
            ),
            Op::BobSends => {
                if let Some(s) = bob_session.as_mut() {
                    to_alice.push(
                        s.encrypt(b"b")
                            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?,
                    );
                }
            }
            Op::DeliverToBob(i) => {
                if !to_bob.is_empty() {
                    let wire = to_bob.remove(i.index(to_bob.len()));
                    match bob_receive(&mut rng, &mut bob, bob_session.as_mut(), &wire) {
                        Ok(Routed::Accepted(a)) => {
                            prop_assert_eq!(a.session.handshake(), handshake);
                            bob_session = Some(a.session);
                        }
                        Ok(Routed::Session(p)) => prop_assert_eq!(&p[..], b"a"),
                        Err(e) => return Err(TestCaseError::fail(format!("{e:?}"))),
                    }
                }
            }
            Op::DeliverToAlice(i) => {
                if !to_alice.is_empty() {
                    let wire = to_alice.remove(i.index(to_alice.len()));
                    let p = alice
                        .decrypt_bytes(&mut rng, &wire)
                        .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                    prop_assert_eq!(&p[..], b"b");
                }
            }
            Op::RotateSignedPreKey => {
                // Stay below MAX_SIGNED_PREKEYS so Alice's signed prekey is still held.
                if rotations < 8 {
                    rotations += 1;
                    bob.prekeys
                        .rotate_signed_prekey(&mut rng, &bob.identity, common::NOW);
                }
            }
            Op::GenerateOneTimePreKeys(k) => {
                bob.prekeys
                    .generate_one_time_prekeys(&mut rng, *k)
                    .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            }
            Op::RotateLastResortKemPreKey => {
                if kem_rotations < 8 {
                    kem_rotations += 1;
                    bob.prekeys
                        .rotate_last_resort_kem_prekey(&mut rng, &bob.identity, common::NOW);
                }
            }
            Op::GenerateOneTimeKemPreKeys(k) => {
                bob.prekeys
                    .generate_one_time_kem_prekeys(&mut rng, &bob.identity, *k)
                    .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            }
        }
        session_round_trip(&alice)?;
        if let Some(s) = &bob_session {
            session_round_trip(s)?;
        }
        prekeys_round_trip(&bob.prekeys)?;
    }
    // Continue from restored copies: identical output to the original.
    let mut restored =
        Session::restore(&alice.snapshot()).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    let a = alice
        .encrypt(b"next")
        .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    let b = restored
        .encrypt(b"next")
        .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    prop_assert_eq!(a, b);
    prop_assert_eq!(alice.snapshot(), restored.snapshot());
    Ok(())
}
