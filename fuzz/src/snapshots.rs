//! `restore_snapshots`: every `restore` treats its input as untrusted.
//!
//! Input, by its first byte: `0x31` [`Session`], `0x32` [`PreKeys`], `0x33` [`SessionBook`],
//! `0x34` [`GroupSession`], `0x35` [`KnownAccounts`], `0x22` [`DeviceKeys`] (a key server's
//! record, an upload encoding).
//!
//! Invariants: a restored value's snapshot restores to a value with the same snapshot (a
//! fixed point after one round), and a restored value is usable without panicking — the
//! restore checked every invariant the methods rely on: a session encrypts to a parseable
//! message, a group session encrypts to a parseable group message and distribution, a key
//! server record serves a bundle whose signatures verify.

use std::sync::OnceLock;

use confidant::book::SessionBook;
use confidant::group::{GroupMessage, GroupSession, SenderKeyDistribution};
use confidant::safety::KnownAccounts;
use confidant::server::DeviceKeys;
use confidant::{IdentityKeyPair, Message, PreKeys, Session};

use crate::{NOW, rng};

fn session(data: &[u8]) {
    let Ok(mut s) = Session::restore(data) else {
        return;
    };
    let snapshot = s.snapshot();
    let again = Session::restore(&snapshot).expect("a session snapshot restores");
    assert!(
        *again.snapshot() == *snapshot,
        "Session snapshot is not a fixed point"
    );
    let _ = (
        s.handshake(),
        s.role(),
        s.awaiting_reply(),
        s.skipped_keys(),
    );
    if let Ok(wire) = s.encrypt(b"\x01fuzz") {
        let message = Message::from_bytes(&wire).expect("a restored session's message parses");
        if let Message::PreKey(m) = &message {
            assert!(
                m.identity_key() == s.local_identity() && m.base_key() == s.base_key(),
                "an initial message with another identity or base key"
            );
        }
    }
}

fn prekeys(data: &[u8]) {
    let Ok(mut p) = PreKeys::restore(data) else {
        return;
    };
    let snapshot = p.snapshot();
    let again = PreKeys::restore(&snapshot).expect("a prekeys snapshot restores");
    assert!(
        *again.snapshot() == *snapshot,
        "PreKeys snapshot is not a fixed point"
    );
    let _ = (p.signed_prekey(), p.last_resort_kem_prekey(), p.policy());
    let _ = p.generate_one_time_prekeys(&mut rng(2), 1);
    let _ = p.prune(NOW, 0);
    let pruned = p.snapshot();
    assert!(
        *PreKeys::restore(&pruned)
            .expect("a pruned snapshot restores")
            .snapshot()
            == *pruned,
        "PreKeys snapshot after prune is not a fixed point"
    );
}

fn book(data: &[u8]) {
    let Ok(b) = SessionBook::restore(data) else {
        return;
    };
    let snapshot = b.snapshot();
    let again = SessionBook::restore(&snapshot).expect("a book snapshot restores");
    assert!(
        *again.snapshot() == *snapshot,
        "SessionBook snapshot is not a fixed point"
    );
    for (address, active) in b.devices() {
        let count = b.session_count(&address);
        assert!(
            !active || count >= 1,
            "an active session that is not counted"
        );
        assert!(
            active || count == 0,
            "archived sessions without an active one"
        );
    }
}

fn group(data: &[u8]) {
    let Ok(mut g) = GroupSession::restore(data) else {
        return;
    };
    let snapshot = g.snapshot();
    let again = GroupSession::restore(&snapshot).expect("a group snapshot restores");
    assert!(
        *again.snapshot() == *snapshot,
        "GroupSession snapshot is not a fixed point"
    );
    let members: Vec<_> = g.members().copied().collect();
    assert!(g.is_member(&g.own_address()), "own device not a member");
    if let Ok(sent) = g.encrypt(&mut rng(3), NOW, b"\x01fuzz") {
        let m = GroupMessage::from_bytes(&sent.message).expect("a restored group's message parses");
        assert!(m.group_id() == g.group_id(), "a message for another group");
        if let Some(d) = sent.distribution {
            let d = SenderKeyDistribution::from_bytes(&d.message)
                .expect("a restored group's distribution parses");
            assert!(
                d.key_id() == m.key_id() && d.iteration() == m.iteration(),
                "a distribution that does not start at the message"
            );
        }
    }
    let _ = g.set_members(&members).expect("the same members again");
}

fn known_accounts(data: &[u8]) {
    let Ok(k) = KnownAccounts::restore(data) else {
        return;
    };
    let snapshot = k.snapshot();
    let again = KnownAccounts::restore(&snapshot).expect("a known-accounts snapshot restores");
    assert!(again == k, "KnownAccounts does not round-trip");
    assert!(
        again.snapshot() == snapshot,
        "KnownAccounts snapshot is not a fixed point"
    );
}

fn device_keys(data: &[u8]) {
    let Ok(mut k) = DeviceKeys::restore(data) else {
        return;
    };
    let again = DeviceKeys::restore(&k.to_bytes()).expect("a key-server record restores");
    assert!(again == k, "DeviceKeys does not round-trip");
    let fetched = k.fetch_bundle();
    assert!(
        fetched.bundle.identity_key() == k.identity_key(),
        "a bundle for another identity"
    );
    fetched
        .bundle
        .verify()
        .expect("a restored record serves a bundle that verifies");
}

/// Restores `data` by its leading byte and checks the invariants.
pub fn check(data: &[u8]) {
    match data.first() {
        Some(0x31) => session(data),
        Some(0x32) => prekeys(data),
        Some(0x33) => book(data),
        Some(0x34) => group(data),
        Some(0x35) => known_accounts(data),
        Some(0x22) => device_keys(data),
        _ => {}
    }
}

/// The `restore_snapshots` target.
pub fn run(data: &[u8]) {
    check(data);
}

fn known_accounts_seed() -> Vec<u8> {
    let mut r = rng(0x005e_ed35);
    let mut known = KnownAccounts::new();
    for i in 0..3u8 {
        let key = IdentityKeyPair::generate(&mut r).public();
        let id = [b'a' + i; 5];
        let _ = known.observe(&id, &key);
        if i == 1 {
            known.mark_verified(&id, &key);
        }
    }
    known.snapshot()
}

/// Seeds: every snapshot the other fixtures hold, a known-accounts record and a key-server
/// record.
#[must_use]
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    static SEEDS: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    SEEDS
        .get_or_init(|| {
            let p = crate::pairwise::fixture();
            let mut out = vec![
                ("session-alice".to_string(), p.alice_session.clone()),
                ("session-bob".to_string(), p.bob_session.clone()),
                ("book-bob".to_string(), p.bob_book.clone()),
                ("prekeys-bob".to_string(), p.bob_prekeys.clone()),
                ("group-bob".to_string(), crate::group::fixture().bob.clone()),
                ("known-accounts".to_string(), known_accounts_seed()),
            ];
            let record = DeviceKeys::register(&p.upload).expect("fixture upload registers");
            out.push(("device-keys".to_string(), record.to_bytes()));
            for (i, s) in crate::interaction::snapshots().into_iter().enumerate() {
                out.push((format!("interaction-{i}"), s));
            }
            out
        })
        .clone()
}
