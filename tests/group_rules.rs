//! Sender-key rules beyond the basic flow (PROTOCOL.md §17.3–§17.7): the sender is bound into
//! every message, a rotation ends the previous key, a receiver far behind recovers through a
//! re-sent distribution, retired keys never come back, and snapshots keep the policy exactly.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use confidant::book::Address;
use confidant::group::{
    GroupError, GroupId, GroupMessage, GroupSession, KeyStatus, PreviousKey, RotationPolicy,
    SenderKeyDistribution,
};
use confidant::{IdentityKeyPair, Timestamp, hazmat};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

const NOW: Timestamp = Timestamp(1_700_000_000_000);

fn address(rng: &mut ChaCha20Rng, device: u32) -> Address {
    Address {
        account: IdentityKeyPair::generate(rng).public(),
        device,
    }
}

fn msg(bytes: &[u8]) -> GroupMessage {
    GroupMessage::from_bytes(bytes).unwrap()
}

fn dist(bytes: &[u8]) -> SenderKeyDistribution {
    SenderKeyDistribution::from_bytes(bytes).unwrap()
}

struct Trio {
    rng: ChaCha20Rng,
    a: Address,
    b: Address,
    m: Address,
    at_a: GroupSession,
    at_b: GroupSession,
    at_m: GroupSession,
}

fn trio(seed: u64) -> Trio {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let (a, b, m) = (
        address(&mut rng, 1),
        address(&mut rng, 2),
        address(&mut rng, 3),
    );
    let id = GroupId::random(&mut rng);
    let policy = RotationPolicy::on_removal_only();
    let members = [a, b, m];
    Trio {
        at_a: GroupSession::new(id, a, &members, policy).unwrap(),
        at_b: GroupSession::new(id, b, &members, policy).unwrap(),
        at_m: GroupSession::new(id, m, &members, policy).unwrap(),
        rng,
        a,
        b,
        m,
    }
}

#[test]
fn a_member_cannot_pass_off_another_members_messages() {
    let mut t = trio(1);
    let sent = t.at_a.encrypt(&mut t.rng, NOW, b"from a").unwrap();
    let d = sent.distribution.unwrap();
    t.at_b
        .receive_distribution(&t.a, &dist(&d.message))
        .unwrap();
    t.at_m
        .receive_distribution(&t.a, &dist(&d.message))
        .unwrap();
    // M forwards A's distribution to B as if it were M's own key (through M's authentic
    // pairwise session, so B takes it as M's), then claims A's message as its own.
    assert_eq!(
        t.at_b.receive_distribution(&t.m, &dist(&d.message)),
        Ok(KeyStatus::New)
    );
    let before = t.at_b.snapshot();
    assert_eq!(
        t.at_b.decrypt(&t.m, &msg(&sent.message)),
        Err(GroupError::Unauthenticated)
    );
    assert_eq!(&t.at_b.snapshot()[..], &before[..]);
    // Attributed to its real sender, it decrypts.
    assert_eq!(
        &t.at_b.decrypt(&t.a, &msg(&sent.message)).unwrap()[..],
        b"from a"
    );
}

#[test]
fn a_rotation_ends_the_previous_key() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let (a, b) = (address(&mut rng, 1), address(&mut rng, 2));
    let id = GroupId::random(&mut rng);
    let mut at_b = GroupSession::new(id, b, &[a, b], RotationPolicy::on_removal_only()).unwrap();
    // A's first key, built from explicit secrets so a thief can hold a copy of them.
    let (ck1, seed1, key1) = ([7u8; 32], [8u8; 32], 100u32);
    let d1 = hazmat::sender_key_distribution(id, key1, 0, &ck1, &seed1, None, key1);
    at_b.receive_distribution(&a, &dist(&d1)).unwrap();
    let mut chain = vec![ck1];
    for _ in 0..6 {
        chain.push(*hazmat::sender_key_step(chain.last().unwrap()).next_chain_key);
    }
    let seal = |it: usize, text: &[u8]| {
        hazmat::group_seal(id, &a, key1, it as u32, &chain[it], &seed1, text)
    };
    // A sent iterations 0, 1, 2 under key 1; B has read 0 and 1, 2 is in flight.
    for it in 0..2 {
        at_b.decrypt(&a, &msg(&seal(it, b"old"))).unwrap();
    }
    // Before the rotation is known, a thief holding key 1 can still forge (unavoidable).
    let forged_early = seal(4, b"forged early");
    assert!(at_b.decrypt(&a, &msg(&forged_early)).is_ok());
    // A rotates: key 2's distribution says key 1 ended at iteration 3.
    let d2 = hazmat::sender_key_distribution(
        id,
        key1 + 1,
        0,
        &[9u8; 32],
        &[10u8; 32],
        Some(PreviousKey {
            key_id: key1,
            end: 3,
        }),
        key1,
    );
    assert_eq!(
        at_b.receive_distribution(&a, &dist(&d2)),
        Ok(KeyStatus::New)
    );
    // The message in flight still decrypts; a forgery at or beyond the end does not.
    assert_eq!(
        &at_b.decrypt(&a, &msg(&seal(2, b"in flight"))).unwrap()[..],
        b"in flight"
    );
    for it in [3usize, 5, 6] {
        let before = at_b.snapshot();
        assert_eq!(
            at_b.decrypt(&a, &msg(&seal(it, b"forged late"))),
            Err(GroupError::Unauthenticated),
            "iteration {it}"
        );
        assert_eq!(&at_b.snapshot()[..], &before[..]);
    }
    // The end survives a snapshot.
    let mut restored = GroupSession::restore(&at_b.snapshot()).unwrap();
    assert_eq!(
        restored.decrypt(&a, &msg(&seal(6, b"forged late"))),
        Err(GroupError::Unauthenticated)
    );
}

/// Found by `fuzz/run.sh` (group_decrypt; kept in `fuzz/regressions/`): a distribution reported
/// `Known` installs nothing, yet the previous-key end it announces still applies, only ever
/// lowering an end; delivering it again, or a known distribution that announces no end,
/// changes nothing.
#[test]
fn a_known_distribution_still_applies_its_announced_end() {
    let mut rng = ChaCha20Rng::seed_from_u64(21);
    let (a, b) = (address(&mut rng, 1), address(&mut rng, 2));
    let id = GroupId::random(&mut rng);
    let mut at_b = GroupSession::new(id, b, &[a, b], RotationPolicy::on_removal_only()).unwrap();
    let (ck1, seed1, key1) = ([7u8; 32], [8u8; 32], 100u32);
    let d1 = hazmat::sender_key_distribution(id, key1, 0, &ck1, &seed1, None, key1);
    assert_eq!(
        at_b.receive_distribution(&a, &dist(&d1)),
        Ok(KeyStatus::New)
    );
    let mut chain = vec![ck1];
    for _ in 0..6 {
        chain.push(*hazmat::sender_key_step(chain.last().unwrap()).next_chain_key);
    }
    let seal = |it: usize| hazmat::group_seal(id, &a, key1, it as u32, &chain[it], &seed1, b"m");
    let key2 = |end: u32| {
        hazmat::sender_key_distribution(
            id,
            key1 + 1,
            0,
            &[9u8; 32],
            &[10u8; 32],
            Some(PreviousKey { key_id: key1, end }),
            key1,
        )
    };
    assert_eq!(
        at_b.receive_distribution(&a, &dist(&key2(5))),
        Ok(KeyStatus::New)
    );
    // The same key announcing a later end: known, and the end stays at 5.
    let before = at_b.snapshot();
    assert_eq!(
        at_b.receive_distribution(&a, &dist(&key2(9))),
        Ok(KeyStatus::Known)
    );
    assert_eq!(&at_b.snapshot()[..], &before[..]);
    // An earlier end: known, and applied (iteration 4 of key 1 is now refused).
    assert_eq!(
        at_b.receive_distribution(&a, &dist(&key2(3))),
        Ok(KeyStatus::Known)
    );
    let lowered = at_b.snapshot();
    assert_ne!(&lowered[..], &before[..]);
    assert_eq!(
        at_b.decrypt(&a, &msg(&seal(4))),
        Err(GroupError::Unauthenticated)
    );
    assert_eq!(&at_b.decrypt(&a, &msg(&seal(2))).unwrap()[..], b"m");
    // Delivered again, and a known distribution without an end: nothing changes.
    let settled = at_b.snapshot();
    assert_eq!(
        at_b.receive_distribution(&a, &dist(&key2(3))),
        Ok(KeyStatus::Known)
    );
    assert_eq!(
        at_b.receive_distribution(&a, &dist(&d1)),
        Ok(KeyStatus::Known)
    );
    assert_eq!(&at_b.snapshot()[..], &settled[..]);
}

#[test]
fn the_library_announces_the_end_of_the_previous_key() {
    let mut t = trio(3);
    let first = t.at_a.encrypt(&mut t.rng, NOW, b"one").unwrap();
    assert_eq!(
        dist(&first.distribution.unwrap().message).previous_key(),
        None
    );
    let key1 = msg(&first.message).key_id();
    t.at_a.encrypt(&mut t.rng, NOW, b"two").unwrap();
    t.at_a.rotate();
    let third = t.at_a.encrypt(&mut t.rng, NOW, b"three").unwrap();
    let d = dist(&third.distribution.unwrap().message);
    assert_eq!(d.key_id(), key1.wrapping_add(1));
    assert_eq!(
        d.previous_key(),
        Some(PreviousKey {
            key_id: key1,
            end: 2
        })
    );
}

#[test]
fn a_receiver_far_behind_recovers_with_a_resent_distribution() {
    let mut t = trio(4);
    let first = t.at_a.encrypt(&mut t.rng, NOW, b"0").unwrap();
    let d = first.distribution.unwrap();
    t.at_b
        .receive_distribution(&t.a, &dist(&d.message))
        .unwrap();
    // The same distribution again: known, nothing rewinds.
    t.at_b.decrypt(&t.a, &msg(&first.message)).unwrap();
    assert_eq!(
        t.at_b.receive_distribution(&t.a, &dist(&d.message)),
        Ok(KeyStatus::Known)
    );
    assert!(matches!(
        t.at_b.decrypt(&t.a, &msg(&first.message)),
        Err(GroupError::Duplicate { iteration: 0 })
    ));
    // B misses 1500 messages: the next is out of reach.
    let mut last = Vec::new();
    for _ in 0..1500 {
        last = t.at_a.encrypt(&mut t.rng, NOW, b"missed").unwrap().message;
    }
    assert!(matches!(
        t.at_b.decrypt(&t.a, &msg(&last)),
        Err(GroupError::TooFarAhead { .. })
    ));
    // A re-sends its current key to B (for example after B asked): B moves forward.
    let again = t.at_a.distribution_for(NOW, &[t.b]).unwrap();
    assert_eq!(again.recipients, vec![t.b]);
    assert_eq!(
        t.at_b.receive_distribution(&t.a, &dist(&again.message)),
        Ok(KeyStatus::Advanced)
    );
    let next = t.at_a.encrypt(&mut t.rng, NOW, b"caught up").unwrap();
    assert!(next.distribution.is_none());
    assert_eq!(
        &t.at_b.decrypt(&t.a, &msg(&next.message)).unwrap()[..],
        b"caught up"
    );
    // Within reach, a re-sent distribution does not move the key (messages stay readable).
    let near = t.at_a.distribution_for(NOW, &[t.b]).unwrap();
    let pending = t.at_a.encrypt(&mut t.rng, NOW, b"pending").unwrap();
    let _ = t.at_a.encrypt(&mut t.rng, NOW, b"later").unwrap();
    let later_dist = t.at_a.distribution_for(NOW, &[t.b]).unwrap();
    assert_eq!(
        t.at_b
            .receive_distribution(&t.a, &dist(&later_dist.message)),
        Ok(KeyStatus::Known)
    );
    assert_eq!(
        &t.at_b.decrypt(&t.a, &msg(&pending.message)).unwrap()[..],
        b"pending"
    );
    drop(near);
}

#[test]
fn retired_keys_are_never_installed_again() {
    let mut t = trio(5);
    let mut firsts = Vec::new();
    for i in 0..7 {
        if i > 0 {
            t.at_a.rotate();
        }
        let sent = t.at_a.encrypt(&mut t.rng, NOW, b"x").unwrap();
        let d = sent.distribution.unwrap();
        assert_eq!(
            t.at_b.receive_distribution(&t.a, &dist(&d.message)),
            Ok(KeyStatus::New)
        );
        firsts.push((d.message.to_vec(), sent.message));
    }
    // Keys 0 and 1 left the five-key window: their messages are refused, and re-delivering
    // their distributions installs nothing (so nothing can decrypt twice).
    for (d, m) in &firsts[..2] {
        assert!(matches!(
            t.at_b.decrypt(&t.a, &msg(m)),
            Err(GroupError::UnknownSenderKey { .. })
        ));
        let before = t.at_b.snapshot();
        assert_eq!(
            t.at_b.receive_distribution(&t.a, &dist(d)),
            Ok(KeyStatus::Known)
        );
        assert_eq!(&t.at_b.snapshot()[..], &before[..]);
    }
    // The five kept keys still decrypt their in-flight messages.
    for (_, m) in &firsts[2..] {
        assert_eq!(&t.at_b.decrypt(&t.a, &msg(m)).unwrap()[..], b"x");
    }
    // Retirement survives a snapshot.
    let mut restored = GroupSession::restore(&t.at_b.snapshot()).unwrap();
    assert_eq!(
        restored.receive_distribution(&t.a, &dist(&firsts[0].0)),
        Ok(KeyStatus::Known)
    );
}

#[test]
fn snapshots_keep_the_policy_exactly() {
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let a = address(&mut rng, 1);
    let id = GroupId::random(&mut rng);
    for policy in [
        RotationPolicy::default(),
        RotationPolicy::on_removal_only(),
        RotationPolicy {
            max_messages: Some(0),
            max_age_ms: None,
        },
        RotationPolicy {
            max_messages: None,
            max_age_ms: Some(0),
        },
    ] {
        let g = GroupSession::new(id, a, &[a], policy).unwrap();
        assert_eq!(
            GroupSession::restore(&g.snapshot()).unwrap().policy(),
            policy
        );
    }
    // Rotate-on-every-message really rotates on every message.
    let b = address(&mut rng, 2);
    let mut g = GroupSession::new(
        id,
        a,
        &[a, b],
        RotationPolicy {
            max_messages: Some(1),
            max_age_ms: None,
        },
    )
    .unwrap();
    for _ in 0..3 {
        assert!(
            g.encrypt(&mut rng, NOW, b"x")
                .unwrap()
                .distribution
                .is_some()
        );
    }
}

#[test]
fn distributions_with_malformed_keys_are_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let id = GroupId::random(&mut rng);
    let good = hazmat::sender_key_distribution(id, 1, 0, &[1; 32], &[2; 32], None, 0);
    // With lineage 0 (omitted), the signing key is the last field: 0x2a (field 5), length 32.
    let at = good.len() - 32;
    assert_eq!(good[at - 2..at], [0x2a, 32]);
    let mut non_canonical = good.to_vec();
    // y = p (non-canonical encoding of 0): 0xed, 0xff.., 0x7f.
    let mut p = [0xffu8; 32];
    p[0] = 0xed;
    p[31] = 0x7f;
    non_canonical[at..].copy_from_slice(&p);
    assert!(SenderKeyDistribution::from_bytes(&non_canonical).is_err());
    let mut small_order = good.to_vec();
    let mut identity = [0u8; 32];
    identity[0] = 1;
    small_order[at..].copy_from_slice(&identity);
    assert!(SenderKeyDistribution::from_bytes(&small_order).is_err());
    // A previous key with the same id as the key itself is malformed.
    let same = hazmat::sender_key_distribution(
        id,
        1,
        0,
        &[1; 32],
        &[2; 32],
        Some(PreviousKey { key_id: 1, end: 5 }),
        1,
    );
    assert!(SenderKeyDistribution::from_bytes(&same).is_err());
}

#[test]
fn keys_of_a_removed_sender_stay_retired_when_it_rejoins() {
    let mut t = trio(8);
    let first = t.at_a.encrypt(&mut t.rng, NOW, b"m0").unwrap();
    let withheld = first.distribution.unwrap();
    // B got the key through a resend at a later iteration (the first distribution was held
    // back), read a message, then A left and rejoined.
    for _ in 0..3 {
        t.at_a.encrypt(&mut t.rng, NOW, b"more").unwrap();
    }
    let resend = t.at_a.distribution_for(NOW, &[t.b]).unwrap();
    t.at_b
        .receive_distribution(&t.a, &dist(&resend.message))
        .unwrap();
    let m4 = t.at_a.encrypt(&mut t.rng, NOW, b"m4").unwrap();
    assert_eq!(&t.at_b.decrypt(&t.a, &msg(&m4.message)).unwrap()[..], b"m4");
    t.at_b.set_members(&[t.b, t.m]).unwrap();
    t.at_b.set_members(&[t.a, t.b, t.m]).unwrap();
    assert!(!t.at_b.has_sender_key(&t.a));
    // The withheld distribution finally arrives: nothing is installed, m4 cannot replay.
    assert_eq!(
        t.at_b.receive_distribution(&t.a, &dist(&withheld.message)),
        Ok(KeyStatus::Known)
    );
    assert!(t.at_b.decrypt(&t.a, &msg(&m4.message)).is_err());
    // Also across a snapshot.
    let mut restored = GroupSession::restore(&t.at_b.snapshot()).unwrap();
    assert_eq!(
        restored.receive_distribution(&t.a, &dist(&withheld.message)),
        Ok(KeyStatus::Known)
    );
}

#[test]
fn a_sender_that_starts_over_ends_its_old_keys() {
    let mut t = trio(9);
    let id = t.at_a.group_id();
    // A's old state: a key built from explicit secrets (so a thief can hold a copy).
    let (ck, seed, key) = ([3u8; 32], [4u8; 32], 500u32);
    let old = hazmat::sender_key_distribution(id, key, 0, &ck, &seed, None, key);
    t.at_b.receive_distribution(&t.a, &dist(&old)).unwrap();
    let mut chain = vec![ck];
    for _ in 0..1100 {
        chain.push(*hazmat::sender_key_step(chain.last().unwrap()).next_chain_key);
    }
    let seal = |it: usize| hazmat::group_seal(id, &t.a, key, it as u32, &chain[it], &seed, b"old");
    t.at_b.decrypt(&t.a, &msg(&seal(0))).unwrap();
    // A loses its state and starts over with a new session: a new lineage.
    let mut fresh =
        GroupSession::new(id, t.a, &[t.a, t.b, t.m], RotationPolicy::default()).unwrap();
    let sent = fresh.encrypt(&mut t.rng, NOW, b"new").unwrap();
    let d = dist(&sent.distribution.unwrap().message);
    assert_ne!(d.lineage(), key);
    assert_eq!(t.at_b.receive_distribution(&t.a, &d), Ok(KeyStatus::New));
    assert_eq!(
        &t.at_b.decrypt(&t.a, &msg(&sent.message)).unwrap()[..],
        b"new"
    );
    // The old key still reads messages in flight, but not beyond MAX_SKIP past where it was.
    t.at_b.decrypt(&t.a, &msg(&seal(5))).unwrap();
    assert_eq!(
        t.at_b.decrypt(&t.a, &msg(&seal(1 + 1000))),
        Err(GroupError::Unauthenticated)
    );
    // And it is the first to go once the new lineage rotates.
    for _ in 0..5 {
        fresh.rotate();
        let s = fresh.encrypt(&mut t.rng, NOW, b"r").unwrap();
        t.at_b
            .receive_distribution(&t.a, &dist(&s.distribution.unwrap().message))
            .unwrap();
        assert_eq!(&t.at_b.decrypt(&t.a, &msg(&s.message)).unwrap()[..], b"r");
    }
    assert!(matches!(
        t.at_b.decrypt(&t.a, &msg(&seal(6))),
        Err(GroupError::UnknownSenderKey { .. })
    ));
}

#[test]
fn out_of_order_distributions_never_evict_the_current_key() {
    let mut t = trio(10);
    let mut sent = Vec::new();
    for i in 0..12 {
        if i > 0 {
            t.at_a.rotate();
        }
        let s = t
            .at_a
            .encrypt(&mut t.rng, NOW, format!("k{i}").as_bytes())
            .unwrap();
        sent.push((s.distribution.unwrap().message.to_vec(), s.message));
    }
    // The newest key arrives first, then five older, non-consecutive ones.
    let order = [11usize, 1, 3, 5, 7, 0];
    for &i in &order {
        t.at_b
            .receive_distribution(&t.a, &dist(&sent[i].0))
            .unwrap();
    }
    assert_eq!(
        &t.at_b.decrypt(&t.a, &msg(&sent[11].1)).unwrap()[..],
        b"k11"
    );
    let next = t.at_a.encrypt(&mut t.rng, NOW, b"still k11").unwrap();
    assert!(next.distribution.is_none());
    assert_eq!(
        &t.at_b.decrypt(&t.a, &msg(&next.message)).unwrap()[..],
        b"still k11"
    );
}
