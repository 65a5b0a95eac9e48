//! `group_decrypt`: group messages and sender-key distributions against a live
//! [`GroupSession`].
//!
//! The fixture is a group of Alice, Bob and Carol (one device each) seen from Bob: Alice's
//! first sender key is installed and two of its messages were decrypted, four more are in
//! flight; Alice then rotated, and the new key's distribution and two messages under it are in
//! flight too; Carol's key is installed, two of its messages are in flight. Dave is not a
//! member.
//!
//! Input: a group message (`0x61`) is decrypted as from Alice, Carol, Dave and Bob himself; a
//! distribution (`0x62`) is installed as from each; anything else goes to
//! [`confidant::content::parse`]. An input starting with [`BATCH`] is a sequence of
//! [`crate::batch_items`] (selector: the sender) delivered in order to one evolving session.
//!
//! Invariants: a failed decrypt or distribution leaves the session byte-identical, and so does
//! a distribution reported `Known` unless it announces a previous key's end (which is still
//! applied), and delivering it again changes nothing ([`crate::check_distribution_outcome`]);
//! a decrypt yields a plaintext its sender sent and not yet
//! decrypted here, and the same message then fails without changing anything; an in-flight
//! message whose key is installed decrypts the first time it is delivered.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use confidant::book::Address;
use confidant::group::{
    GroupId, GroupMessage, GroupSession, KeyStatus, RotationPolicy, SenderKeyDistribution,
};
use confidant::{IdentityKeyPair, content};
use rand_chacha::ChaCha20Rng;

use crate::{NOW, app_text, rng};

/// First byte of a batch input.
pub const BATCH: u8 = 0x00;
/// Most items in a batch: too few to push a genuine key out of the retired-key record
/// (`MAX_SENDER_KEY_STATES` + `MAX_RETIRED_SENDER_KEYS` installs), which only the sender could do
/// anyway (distributions arrive through its authenticated pairwise session).
const MAX_ITEMS: usize = 24;

/// A group message in flight.
pub struct Pending {
    /// Index of the sender in [`Fixture::members`].
    pub sender: usize,
    /// The group message.
    pub wire: Vec<u8>,
    /// Its plaintext.
    pub plaintext: Vec<u8>,
    /// Whether Bob needs [`Fixture::rotation`] first.
    pub needs_rotation: bool,
}

/// The fixed group, from Bob's side.
pub struct Fixture {
    /// Bob's session snapshot.
    pub bob: Vec<u8>,
    /// Alice, Carol, Dave (not a member), Bob.
    pub members: [Address; 4],
    /// In flight.
    pub pending: Vec<Pending>,
    /// Alice's second key's distribution, not yet received.
    pub rotation: Vec<u8>,
    /// Messages and distributions already processed (replays), with their sender index.
    pub delivered: Vec<(usize, Vec<u8>)>,
}

fn build() -> Fixture {
    let mut rng = rng(0x6_0000);
    let keys: [IdentityKeyPair; 4] = std::array::from_fn(|_| IdentityKeyPair::generate(&mut rng));
    let members: [Address; 4] = std::array::from_fn(|i| Address {
        account: keys[i].public(),
        device: 1 + u32::try_from(i).unwrap_or(0),
    });
    let [alice, carol, _dave, bob] = members;
    let id = GroupId::random(&mut rng);
    let group = [alice, carol, bob];
    let policy = RotationPolicy::on_removal_only();
    let session = |own| GroupSession::new(id, own, &group, policy).expect("group session");
    let (mut at_a, mut at_c, mut at_b) = (session(alice), session(carol), session(bob));

    let mut delivered = Vec::new();
    let mut pending = Vec::new();
    let send = |rng: &mut ChaCha20Rng, s: &mut GroupSession, text: &str| {
        let sent = s.encrypt(rng, NOW, &app_text(text, 9)).expect("encrypt");
        (sent.message, sent.distribution.map(|d| d.message.to_vec()))
    };
    let install = |at_b: &mut GroupSession, from: &Address, d: &[u8]| {
        let d = SenderKeyDistribution::from_bytes(d).expect("distribution parses");
        at_b.receive_distribution(from, &d).expect("distribution");
    };

    // Alice: key 1, two messages delivered, four in flight.
    for i in 0..6 {
        let text = format!("g{i}");
        let (message, distribution) = send(&mut rng, &mut at_a, &text);
        if let Some(d) = distribution {
            install(&mut at_b, &alice, &d);
            delivered.push((0, d));
        }
        if i < 2 {
            let gm = GroupMessage::from_bytes(&message).expect("parses");
            at_b.decrypt(&alice, &gm).expect("decrypts");
            delivered.push((0, message));
        } else {
            pending.push(Pending {
                sender: 0,
                wire: message,
                plaintext: app_text(&text, 9),
                needs_rotation: false,
            });
        }
    }
    // Alice rotates: key 2's distribution and messages in flight.
    at_a.rotate();
    let mut rotation = Vec::new();
    for text in ["h0", "h1"] {
        let (message, distribution) = send(&mut rng, &mut at_a, text);
        if let Some(d) = distribution {
            rotation = d;
        }
        pending.push(Pending {
            sender: 0,
            wire: message,
            plaintext: app_text(text, 9),
            needs_rotation: true,
        });
    }
    // Carol: key installed, two messages in flight.
    for text in ["c0", "c1"] {
        let (message, distribution) = send(&mut rng, &mut at_c, text);
        if let Some(d) = distribution {
            install(&mut at_b, &carol, &d);
            delivered.push((1, d));
        }
        pending.push(Pending {
            sender: 1,
            wire: message,
            plaintext: app_text(text, 9),
            needs_rotation: false,
        });
    }
    assert!(!rotation.is_empty(), "rotation distributes");
    Fixture {
        bob: at_b.snapshot().to_vec(),
        members,
        pending,
        rotation,
        delivered,
    }
}

/// The fixture, built once per process.
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(build)
}

struct State {
    session: GroupSession,
    done: BTreeSet<Vec<u8>>,
    rotated: bool,
    /// Senders from which a distribution other than their genuine ones was installed: only the
    /// sender itself can do that (distributions are authenticated by its pairwise session), and
    /// it may legitimately make its own in-flight messages unreadable.
    forged: [bool; 4],
}

impl State {
    fn new() -> Self {
        Self {
            session: GroupSession::restore(&fixture().bob).expect("fixture snapshot"),
            done: BTreeSet::new(),
            rotated: false,
            forged: [false; 4],
        }
    }
}

fn decrypt(state: &mut State, sender: usize, wire: &[u8]) {
    let f = fixture();
    let Ok(message) = GroupMessage::from_bytes(wire) else {
        return;
    };
    assert!(
        message.to_bytes() == wire,
        "GroupMessage::to_bytes differs from the bytes parsed"
    );
    let from = &f.members[sender];
    let before = state.session.snapshot();
    match state.session.decrypt(from, &message) {
        Err(e) => {
            assert!(
                *before == *state.session.snapshot(),
                "failed group decrypt ({e:?}) changed the session"
            );
            let live = f.pending.iter().any(|p| {
                p.wire == wire
                    && p.sender == sender
                    && !state.forged[sender]
                    && (state.rotated || !p.needs_rotation)
                    && !state.done.contains(&p.plaintext)
            });
            assert!(!live, "an in-flight group message failed to decrypt: {e:?}");
        }
        Ok(plaintext) => {
            assert!(
                f.pending
                    .iter()
                    .any(|p| p.sender == sender && p.plaintext == *plaintext),
                "decrypted a group plaintext its sender never sent (or one already delivered)"
            );
            assert!(
                state.done.insert(plaintext.to_vec()),
                "a group message decrypted twice"
            );
            let after = state.session.snapshot();
            assert!(
                state.session.decrypt(from, &message).is_err(),
                "the same group message decrypted twice"
            );
            assert!(
                *after == *state.session.snapshot(),
                "a replayed group message changed the session"
            );
        }
    }
}

fn distribute(state: &mut State, sender: usize, wire: &[u8]) {
    let f = fixture();
    let Ok(distribution) = SenderKeyDistribution::from_bytes(wire) else {
        return;
    };
    let again = SenderKeyDistribution::from_bytes(&distribution.to_bytes())
        .expect("a distribution's encoding parses");
    assert!(
        *again.to_bytes() == *distribution.to_bytes(),
        "SenderKeyDistribution does not round-trip"
    );
    let before = state.session.snapshot();
    let result = state
        .session
        .receive_distribution(&f.members[sender], &distribution);
    crate::check_distribution_outcome(
        &mut state.session,
        &before,
        &f.members[sender],
        &distribution,
        &result,
    );
    match result {
        Err(_) | Ok(KeyStatus::Known) => {}
        Ok(KeyStatus::New | KeyStatus::Advanced) => {
            if sender == 0 && wire == f.rotation {
                state.rotated = true;
            } else if !f.delivered.iter().any(|(s, d)| *s == sender && d == wire) {
                state.forged[sender] = true;
            }
        }
    }
    if sender == 0 && wire == f.rotation && !state.rotated && !state.forged[0] {
        panic!("Alice's genuine rotation distribution was not installed: {result:?}");
    }
}

fn deliver(state: &mut State, sender: u8, wire: &[u8]) {
    let sender = usize::from(sender % 4);
    match wire.first() {
        Some(0x61) => decrypt(state, sender, wire),
        Some(0x62) => distribute(state, sender, wire),
        _ => {
            let _ = content::parse(wire);
        }
    }
}

/// The `group_decrypt` target.
pub fn run(data: &[u8]) {
    if let Some((&BATCH, rest)) = data.split_first() {
        let mut state = State::new();
        for (selector, item) in crate::batch_items(rest, MAX_ITEMS) {
            deliver(&mut state, selector, item);
        }
    } else {
        for sender in 0..4 {
            deliver(&mut State::new(), sender, data);
        }
    }
}

/// Seeds: every in-flight and delivered message and distribution, and batches that install
/// the rotation and deliver out of order.
#[must_use]
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let f = fixture();
    let mut out = Vec::new();
    for (i, p) in f.pending.iter().enumerate() {
        out.push((format!("pending-{i}"), p.wire.clone()));
    }
    for (i, (_, wire)) in f.delivered.iter().enumerate() {
        out.push((format!("delivered-{i}"), wire.clone()));
    }
    out.push(("rotation".into(), f.rotation.clone()));
    let p = |i: usize| f.pending[i].wire.as_slice();
    let sel = |i: usize| u8::try_from(f.pending[i].sender).unwrap_or(0);
    let mut items: Vec<(u8, &[u8])> = vec![(0, p(4)), (0, f.rotation.as_slice())];
    items.extend((0..f.pending.len()).rev().map(|i| (sel(i), p(i))));
    items.push((0, p(0)));
    out.push(("batch-all".into(), crate::encode_batch(BATCH, &items)));
    out
}
