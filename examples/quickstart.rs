//! Alice and Bob through an in-memory stand-in for the key server and the relay.
//!
//! Everything the "server" holds is printed beside what each client reads: the server only
//! ever sees public keys and ciphertext.
//!
//! Run with `cargo run --example quickstart`.

use std::collections::VecDeque;

use confidant::server::DeviceKeys;
use confidant::{IdentityKeyPair, Message, PreKeyBundle, PreKeys, Session, Timestamp};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

/// The untrusted server: a prekey directory and a store-and-forward queue per recipient.
#[derive(Default)]
struct Server {
    bob_keys: Option<DeviceKeys>,
    to_bob: VecDeque<Vec<u8>>,
    to_alice: VecDeque<Vec<u8>>,
}

fn show(who: &str, what: &str, server_view: &str) {
    println!("{who:<6} {what:<44} | server holds: {server_view}");
}

/// What the relay can tell about a message: its kind, its size and opaque bytes.
fn kind(wire: &[u8]) -> String {
    let kind = match Message::from_bytes(wire) {
        Ok(Message::PreKey(_)) => "initial",
        Ok(Message::Ratchet(_)) => "ratchet",
        Err(_) => "garbage",
    };
    let tail: String = wire
        .iter()
        .rev()
        .take(6)
        .rev()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{kind} msg, {} B ..{tail}", wire.len())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Demo only: a seeded RNG makes the transcript reproducible. Real clients use an OS CSPRNG.
    let mut rng = ChaCha20Rng::seed_from_u64(2026);
    let mut now = Timestamp(1_795_000_000_000);
    let mut server = Server::default();

    // 1. Bob's device creates its identity and prekeys (signed X25519 prekey, last-resort
    //    ML-KEM-1024 prekey, one-time prekeys of both kinds) and uploads the public halves.
    let bob = IdentityKeyPair::generate(&mut rng);
    let mut bob_prekeys = PreKeys::new(&mut rng, &bob, now);
    let otks = bob_prekeys.generate_one_time_prekeys(&mut rng, 5)?;
    let kem_otks = bob_prekeys.generate_one_time_kem_prekeys(&mut rng, &bob, 2)?;
    // Persist before upload: a crash after uploading but before saving would lose the secrets
    // of keys the server then hands out.
    let _persist_first = bob_prekeys.snapshot();
    let upload = bob_prekeys.upload(&bob, otks, kem_otks).to_bytes();
    server.bob_keys = Some(DeviceKeys::register(&upload)?);
    show(
        "bob",
        "uploads identity + prekeys (5 EC, 2+1 KEM)",
        &format!("{} public bytes", upload.len()),
    );
    // Bob goes offline.

    // 2. Alice fetches a bundle (the server hands out each one-time prekey once).
    let fetched = server
        .bob_keys
        .as_mut()
        .ok_or("bob not registered")?
        .fetch_bundle();
    let bundle_bytes = fetched.bundle.to_bytes();
    show(
        "alice",
        &format!("fetches Bob's bundle ({} B)", bundle_bytes.len()),
        &format!(
            "{} EC + {} KEM one-time prekeys left",
            fetched.remaining_one_time_prekeys, fetched.remaining_one_time_kem_prekeys
        ),
    );
    let alice = IdentityKeyPair::generate(&mut rng);
    let bundle = PreKeyBundle::from_bytes(&bundle_bytes)?.verify()?;
    // In a real app Alice now checks bundle.identity_key() against what she trusts for Bob.
    // The bundle has a KEM prekey, so this is PQXDH; a bundle without one is refused by default.
    let mut alice_session = Session::initiate(&mut rng, &alice, bundle)?;
    show(
        "alice",
        &format!("starts a {:?} session", alice_session.handshake()),
        "-",
    );

    // 3. Alice sends two messages while Bob is offline.
    for text in ["Hi Bob, it's Alice.", "Are you there?"] {
        let wire = alice_session.encrypt(text.as_bytes())?;
        let _persist_first = alice_session.snapshot(); // persist-before-send
        show("alice", &format!("sends {text:?}"), &kind(&wire));
        server.to_bob.push_back(wire);
    }

    // 4. Bob comes online and drains his queue.
    let mut bob_session: Option<Session> = None;
    while let Some(wire) = server.to_bob.pop_front() {
        now = now.plus_ms(60_000);
        let message = Message::from_bytes(&wire)?;
        let plaintext = match (&message, bob_session.as_mut()) {
            // An initial message for a session Bob already has: the initiator repeats it.
            (Message::PreKey(m), Some(s)) if s.owns(m) => s.decrypt(&mut rng, &message)?,
            (Message::PreKey(m), _) => {
                let accepted = bob_prekeys.accept(&mut rng, &bob, m)?;
                if let Some(id) = accepted.consumed_one_time_prekey {
                    show(
                        "bob",
                        &format!("accepts session, used one-time prekey {id}"),
                        "-",
                    );
                }
                bob_session = Some(accepted.session);
                accepted.plaintext
            }
            (Message::Ratchet(_), Some(s)) => s.decrypt(&mut rng, &message)?,
            (Message::Ratchet(_), None) => return Err("ratchet message without a session".into()),
        };
        show(
            "bob",
            &format!("reads {:?}", String::from_utf8_lossy(&plaintext)),
            "(delivered, deleted)",
        );
    }
    let bob_session = bob_session.as_mut().ok_or("no session")?;

    // 5. Bob replies; Alice reads; from now on no initial data is sent.
    let wire = bob_session.encrypt(b"Yes! Hi Alice.")?;
    show("bob", "sends \"Yes! Hi Alice.\"", &kind(&wire));
    server.to_alice.push_back(wire);
    while let Some(wire) = server.to_alice.pop_front() {
        let plaintext = alice_session.decrypt_bytes(&mut rng, &wire)?;
        show(
            "alice",
            &format!("reads {:?}", String::from_utf8_lossy(&plaintext)),
            "(delivered, deleted)",
        );
    }
    let wire = alice_session.encrypt(b"Great, the ratchet is turning.")?;
    show(
        "alice",
        "sends \"Great, the ratchet is turning.\"",
        &kind(&wire),
    );
    let plaintext = bob_session.decrypt_bytes(&mut rng, &wire)?;
    show(
        "bob",
        &format!("reads {:?}", String::from_utf8_lossy(&plaintext)),
        "(delivered, deleted)",
    );

    // 6. A replay by the server is rejected, and Bob's state is untouched.
    let before = bob_session.snapshot();
    let replay = bob_session.decrypt_bytes(&mut rng, &wire);
    show(
        "server",
        "replays Alice's last message",
        &format!(
            "rejected: {}",
            replay.err().map(|e| e.to_string()).unwrap_or_default()
        ),
    );
    assert!(before == bob_session.snapshot());

    // 7. Restart: Bob's client restores from its persisted snapshot and keeps going.
    let snapshot = bob_session.snapshot();
    let mut restored = Session::restore(&snapshot)?;
    let wire = alice_session.encrypt(b"Still there after your restart?")?;
    let plaintext = restored.decrypt_bytes(&mut rng, &wire)?;
    show(
        "bob",
        &format!(
            "(restored, {} B snapshot) reads {:?}",
            snapshot.len(),
            String::from_utf8_lossy(&plaintext)
        ),
        "(delivered, deleted)",
    );
    println!(
        "\nThe server saw public keys, sizes and ciphertext; never a plaintext or a secret key."
    );
    Ok(())
}
