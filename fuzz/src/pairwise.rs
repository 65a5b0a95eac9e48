//! `session_decrypt`: decryption against live pairwise sessions.
//!
//! The fixture is an established PQXDH conversation between Alice and Bob (both directions
//! used, a DH ratchet step, messages in flight each way), Bob's `SessionBook` and `PreKeys`
//! (with unused one-time EC and KEM prekeys), and Carol's initial messages to Bob, not yet
//! delivered. Every input restores the states from snapshots and delivers bytes to:
//!
//! * selector 0: Bob's bare [`Session`] (from Alice);
//! * selector 1: Alice's bare [`Session`] (from Bob);
//! * selector 2: Bob's [`SessionBook`] + [`PreKeys`], sender Alice;
//! * selector 3: Bob's [`SessionBook`] + [`PreKeys`], sender Carol (new-session path).
//!
//! A plain input goes to all four; an input starting with [`BATCH`] is a sequence of
//! [`crate::batch_items`] delivered in order to the same (evolving) states.
//!
//! Invariants after every delivery: a failed receive leaves every state byte-identical
//! (snapshot compare); a successful one yields a plaintext the peer actually sent and not yet
//! decrypted by that state (so each message decrypts at most once, and nothing forged ever
//! does), and the same bytes again fail without changing anything; an exact in-flight message
//! delivered to its receiver for the first time decrypts.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use confidant::book::{Address, SessionBook};
use confidant::{IdentityKeyPair, Message, PreKeyBundle, PreKeys, Session};
use rand_chacha::ChaCha20Rng;

use crate::{NOW, app_text, device_list, rng};

/// First byte of a batch input.
pub const BATCH: u8 = 0x00;
/// Most items in a batch.
const MAX_ITEMS: usize = 24;

/// A message in flight: its wire bytes and the plaintext it carries.
pub struct Pending {
    /// Wire bytes (`0x11` or `0x12`).
    pub wire: Vec<u8>,
    /// The plaintext sent.
    pub plaintext: Vec<u8>,
}

/// The fixed conversation.
pub struct Fixture {
    /// Alice's session snapshot.
    pub alice_session: Vec<u8>,
    /// Bob's session with Alice, snapshot (the same state as in `bob_book`).
    pub bob_session: Vec<u8>,
    /// Bob's session book (Alice's session active, Carol listed without a session).
    pub bob_book: Vec<u8>,
    /// Bob's prekey secrets.
    pub bob_prekeys: Vec<u8>,
    /// Bob's identity.
    pub bob_identity: IdentityKeyPair,
    /// Alice's device address.
    pub alice: Address,
    /// Carol's device address.
    pub carol: Address,
    /// In flight from Alice to Bob (an old chain and a new one).
    pub to_bob: Vec<Pending>,
    /// In flight from Bob to Alice.
    pub to_alice: Vec<Pending>,
    /// Carol's initial messages to Bob (one-time EC and KEM prekeys).
    pub from_carol: Vec<Pending>,
    /// Messages already decrypted (replays).
    pub delivered: Vec<Vec<u8>>,
    /// The bundle Alice used.
    pub bundle: Vec<u8>,
    /// Bob's key-server upload (current prekeys and the one-time ones).
    pub upload: Vec<u8>,
}

fn receive(
    rng: &mut ChaCha20Rng,
    book: &mut SessionBook,
    identity: &IdentityKeyPair,
    prekeys: &mut PreKeys,
    from: &Address,
    wire: &[u8],
) {
    let message = Message::from_bytes(wire).expect("fixture message parses");
    book.receive(rng, identity, prekeys, from, &message)
        .expect("fixture message decrypts");
}

fn build() -> Fixture {
    let mut rng = rng(0x5e55_1011);
    let [alice_acct, bob_acct, carol_acct, alice, bob, carol] =
        std::array::from_fn(|_| IdentityKeyPair::generate(&mut rng));
    let (_, la) = device_list(&alice_acct, b"alice", &[(&alice, 1)], 1);
    let (_, lb) = device_list(&bob_acct, b"bob", &[(&bob, 1)], 1);
    let (_, lc) = device_list(&carol_acct, b"carol", &[(&carol, 1)], 1);
    let alice_addr = Address {
        account: alice_acct.public(),
        device: 1,
    };
    let carol_addr = Address {
        account: carol_acct.public(),
        device: 1,
    };

    let mut prekeys = PreKeys::new(&mut rng, &bob, NOW);
    let otks = prekeys
        .generate_one_time_prekeys(&mut rng, 2)
        .expect("one-time prekeys");
    let kem_otks = prekeys
        .generate_one_time_kem_prekeys(&mut rng, &bob, 1)
        .expect("one-time KEM prekeys");
    let upload = prekeys
        .upload(&bob, otks.clone(), kem_otks.clone())
        .to_bytes();
    let mut book = SessionBook::new();
    for list in [&la, &lb, &lc] {
        book.apply_device_list(list).expect("apply list");
    }

    let bundle = PreKeyBundle::new(bob.public(), prekeys.signed_prekey(), otks.first().copied())
        .with_kem_prekey(prekeys.last_resort_kem_prekey())
        .to_bytes();
    let verified = PreKeyBundle::from_bytes(&bundle)
        .map(PreKeyBundle::verify)
        .expect("bundle parses")
        .expect("bundle verifies");
    let mut a = Session::initiate(&mut rng, &alice, verified).expect("initiate");

    let mut delivered = Vec::new();
    let mut a_to_b = |rng: &mut ChaCha20Rng,
                      a: &mut Session,
                      book: &mut SessionBook,
                      prekeys: &mut PreKeys,
                      text: &str| {
        let wire = a.encrypt(&app_text(text, 3)).expect("encrypt");
        receive(rng, book, &bob, prekeys, &alice_addr, &wire);
        delivered.push(wire);
    };
    let b_send = |book: &mut SessionBook, text: &str| -> Pending {
        let plaintext = app_text(text, 5);
        let wire = book
            .active_mut(&alice_addr)
            .expect("active session")
            .encrypt(&plaintext)
            .expect("encrypt");
        Pending { wire, plaintext }
    };

    a_to_b(&mut rng, &mut a, &mut book, &mut prekeys, "a0");
    let b0 = b_send(&mut book, "b0");
    a.decrypt_bytes(&mut rng, &b0.wire).expect("b0");
    a_to_b(&mut rng, &mut a, &mut book, &mut prekeys, "a1");
    let b1 = b_send(&mut book, "b1");
    a.decrypt_bytes(&mut rng, &b1.wire).expect("b1");
    a_to_b(&mut rng, &mut a, &mut book, &mut prekeys, "a2");
    a_to_b(&mut rng, &mut a, &mut book, &mut prekeys, "a3");
    let b2 = b_send(&mut book, "b2");
    a.decrypt_bytes(&mut rng, &b2.wire).expect("b2");
    delivered.extend([b0.wire, b1.wire, b2.wire]);

    let a_send = |a: &mut Session, text: &str| -> Pending {
        let plaintext = app_text(text, 7);
        let wire = a.encrypt(&plaintext).expect("encrypt");
        Pending { wire, plaintext }
    };
    let mut to_bob = vec![a_send(&mut a, "a4")];
    let b3 = b_send(&mut book, "b3");
    a.decrypt_bytes(&mut rng, &b3.wire).expect("b3");
    delivered.push(b3.wire);
    to_bob.push(a_send(&mut a, "a5"));
    to_bob.push(a_send(&mut a, "a6"));
    let to_alice = vec![b_send(&mut book, "b4"), b_send(&mut book, "b5")];

    let carol_bundle =
        PreKeyBundle::new(bob.public(), prekeys.signed_prekey(), otks.get(1).copied())
            .with_kem_prekey(kem_otks.first().cloned().expect("one KEM one-time prekey"))
            .verify()
            .expect("carol's bundle");
    let mut c = Session::initiate(&mut rng, &carol, carol_bundle).expect("initiate");
    let from_carol = ["c0", "c1"]
        .iter()
        .map(|t| {
            let plaintext = app_text(t, 11);
            let wire = c.encrypt(&plaintext).expect("encrypt");
            Pending { wire, plaintext }
        })
        .collect();

    let bob_session = book
        .active_mut(&alice_addr)
        .expect("active session")
        .snapshot()
        .to_vec();
    Fixture {
        alice_session: a.snapshot().to_vec(),
        bob_session,
        bob_book: book.snapshot().to_vec(),
        bob_prekeys: prekeys.snapshot().to_vec(),
        bob_identity: bob,
        alice: alice_addr,
        carol: carol_addr,
        to_bob,
        to_alice,
        from_carol,
        delivered,
        bundle,
        upload,
    }
}

/// The fixture, built once per process.
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(build)
}

/// One receiving state and what it has decrypted so far.
struct Receiving<T> {
    state: T,
    done: BTreeSet<Vec<u8>>,
}

struct Book {
    book: SessionBook,
    prekeys: PreKeys,
}

#[derive(Default)]
struct States {
    bob: Option<Receiving<Session>>,
    alice: Option<Receiving<Session>>,
    book: Option<Receiving<Book>>,
}

fn restore_session(bytes: &[u8]) -> Receiving<Session> {
    Receiving {
        state: Session::restore(bytes).expect("fixture snapshot restores"),
        done: BTreeSet::new(),
    }
}

/// Whether `wire` is one of `pending` not yet decrypted by this state.
fn live(wire: &[u8], pending: &[Pending], done: &BTreeSet<Vec<u8>>) -> bool {
    pending
        .iter()
        .any(|p| p.wire == wire && !done.contains(&p.plaintext))
}

fn check_plaintext(plaintext: &[u8], pending: &[Pending], done: &mut BTreeSet<Vec<u8>>) {
    assert!(
        pending.iter().any(|p| p.plaintext == plaintext),
        "decrypted a plaintext the peer never sent (forgery or replay of a delivered message)"
    );
    assert!(
        done.insert(plaintext.to_vec()),
        "a message decrypted twice at the same receiver"
    );
}

fn session_deliver(
    rng: &mut ChaCha20Rng,
    r: &mut Receiving<Session>,
    message: &Message,
    wire: &[u8],
    pending: &[Pending],
) {
    let before = r.state.snapshot();
    match r.state.decrypt(rng, message) {
        Err(e) => {
            assert!(
                *before == *r.state.snapshot(),
                "failed decrypt ({e:?}) changed the session"
            );
            assert!(
                !live(wire, pending, &r.done),
                "an in-flight message failed to decrypt: {e:?}"
            );
        }
        Ok(plaintext) => {
            check_plaintext(&plaintext, pending, &mut r.done);
            let after = r.state.snapshot();
            assert!(
                r.state.decrypt(rng, message).is_err(),
                "the same message decrypted twice"
            );
            assert!(
                *after == *r.state.snapshot(),
                "a replayed message changed the session"
            );
        }
    }
}

fn book_deliver(
    rng: &mut ChaCha20Rng,
    r: &mut Receiving<Book>,
    from: &Address,
    message: &Message,
    wire: &[u8],
    pending: &[Pending],
) {
    let f = fixture();
    let snapshot = |b: &Book| (b.book.snapshot().to_vec(), b.prekeys.snapshot().to_vec());
    let before = snapshot(&r.state);
    let Book { book, prekeys } = &mut r.state;
    match book.receive(rng, &f.bob_identity, prekeys, from, message) {
        Err(e) => {
            assert!(
                before == snapshot(&r.state),
                "failed receive ({e:?}) changed the book or the prekeys"
            );
            assert!(
                !live(wire, pending, &r.done),
                "an in-flight message failed to be received: {e:?}"
            );
        }
        Ok(received) => {
            check_plaintext(&received.plaintext, pending, &mut r.done);
            let after = snapshot(&r.state);
            let Book { book, prekeys } = &mut r.state;
            assert!(
                book.receive(rng, &f.bob_identity, prekeys, from, message)
                    .is_err(),
                "the same message was received twice"
            );
            assert!(
                after == snapshot(&r.state),
                "a replayed message changed the book or the prekeys"
            );
        }
    }
}

fn deliver(rng: &mut ChaCha20Rng, states: &mut States, selector: u8, wire: &[u8]) {
    let f = fixture();
    let Ok(message) = Message::from_bytes(wire) else {
        return;
    };
    assert_eq!(
        Message::from_bytes(&message.to_bytes()).as_ref(),
        Ok(&message),
        "Message re-encoding does not parse back to itself"
    );
    match selector % 4 {
        0 => {
            let r = states
                .bob
                .get_or_insert_with(|| restore_session(&f.bob_session));
            session_deliver(rng, r, &message, wire, &f.to_bob);
        }
        1 => {
            let r = states
                .alice
                .get_or_insert_with(|| restore_session(&f.alice_session));
            session_deliver(rng, r, &message, wire, &f.to_alice);
        }
        which => {
            let r = states.book.get_or_insert_with(|| Receiving {
                state: Book {
                    book: SessionBook::restore(&f.bob_book).expect("fixture book"),
                    prekeys: PreKeys::restore(&f.bob_prekeys).expect("fixture prekeys"),
                },
                done: BTreeSet::new(),
            });
            let (from, pending) = if which == 2 {
                (&f.alice, &f.to_bob)
            } else {
                (&f.carol, &f.from_carol)
            };
            book_deliver(rng, r, from, &message, wire, pending);
        }
    }
}

/// The `session_decrypt` target.
pub fn run(data: &[u8]) {
    let mut rng = rng(1);
    if let Some((&BATCH, rest)) = data.split_first() {
        let mut states = States::default();
        for (selector, item) in crate::batch_items(rest, MAX_ITEMS) {
            deliver(&mut rng, &mut states, selector, item);
        }
    } else {
        for selector in 0..4 {
            deliver(&mut rng, &mut States::default(), selector, data);
        }
    }
}

/// Seeds: every in-flight and delivered message, and batches that deliver them in orders
/// that reach deeper states (skipped keys, the new-session path, replays).
#[must_use]
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let f = fixture();
    let mut out = Vec::new();
    let all = f
        .to_bob
        .iter()
        .chain(&f.to_alice)
        .chain(&f.from_carol)
        .map(|p| &p.wire)
        .chain(&f.delivered);
    for (i, wire) in all.enumerate() {
        out.push((format!("message-{i}"), wire.clone()));
    }
    fn w(p: &Pending) -> &[u8] {
        &p.wire
    }
    let b = |i: usize| w(&f.to_bob[i]);
    out.push((
        "batch-bob-reverse".into(),
        crate::encode_batch(BATCH, &[(0, b(2)), (0, b(0)), (0, b(1)), (0, b(1))]),
    ));
    out.push((
        "batch-book-all".into(),
        crate::encode_batch(
            BATCH,
            &[
                (2, b(1)),
                (3, w(&f.from_carol[1])),
                (3, w(&f.from_carol[0])),
                (2, b(0)),
                (2, b(2)),
                (3, w(&f.from_carol[1])),
                (2, f.delivered[0].as_slice()),
            ],
        ),
    ));
    out.push((
        "batch-alice".into(),
        crate::encode_batch(BATCH, &[(1, w(&f.to_alice[1])), (1, w(&f.to_alice[0]))]),
    ));
    out
}
