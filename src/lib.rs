//! # confidant
//!
//! Sans-IO end-to-end encryption for chat: identity keys, prekey bundles, X3DH and the Double
//! Ratchet, byte-exact to the profile `x3dh-dr-ed25519-x25519-sha256-aesgcm/v1`
//! (`docs/PROTOCOL.md`).
//!
//! ```
//! use confidant::{IdentityKeyPair, Message, PreKeyBundle, PreKeys, Session, Timestamp};
//! # use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};
//! # let mut rng = ChaCha20Rng::seed_from_u64(7);
//! let now = Timestamp(1_700_000_000_000);
//!
//! // Bob publishes a bundle (through any key server).
//! let bob = IdentityKeyPair::generate(&mut rng);
//! let mut bob_prekeys = PreKeys::new(&mut rng, &bob, now);
//! let otk = bob_prekeys.generate_one_time_prekeys(&mut rng, 1)?;
//! let bundle = PreKeyBundle::new(bob.public(), bob_prekeys.signed_prekey(), otk.first().copied())
//!     .with_kem_prekey(bob_prekeys.last_resort_kem_prekey()); // PQXDH (ML-KEM-1024)
//!
//! // Alice verifies it and sends while Bob is offline.
//! let alice = IdentityKeyPair::generate(&mut rng);
//! let verified = PreKeyBundle::from_bytes(&bundle.to_bytes())?.verify()?;
//! let mut alice_session = Session::initiate(&mut rng, &alice, verified)?;
//! let wire = alice_session.encrypt(b"hi Bob")?; // persist alice_session, then send
//!
//! // Bob parses (routing data first), then accepts.
//! let Message::PreKey(initial) = Message::from_bytes(&wire)? else { unreachable!() };
//! let accepted = bob_prekeys.accept(&mut rng, &bob, &initial)?;
//! assert_eq!(&accepted.plaintext[..], b"hi Bob");
//! let mut bob_session = accepted.session;
//!
//! let reply = bob_session.encrypt(b"hi Alice")?;
//! assert_eq!(&alice_session.decrypt_bytes(&mut rng, &reply)?[..], b"hi Alice");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Sans-IO contract
//! * No sockets, files, clocks, threads, global state or hidden randomness. Every call takes
//!   bytes, `&mut impl CryptoRng` and, where time matters, a caller-supplied [`Timestamp`].
//! * State ([`Session`], [`PreKeys`], [`IdentityKeyPair`], [`server::DeviceKeys`]) is a value the
//!   caller persists with `snapshot()`/`restore()` (or `to_seed`/`to_bytes`).
//! * **Persist before send**: store the snapshot after [`Session::encrypt`] before transmitting
//!   its output, or a crash can reuse a message key.
//! * Receive is transactional: a failed [`Session::decrypt`] or [`PreKeys::accept`] leaves every
//!   value byte-identical.
//! * Parse first ([`Message::from_bytes`]), then act: routing data is readable before crypto.

#![forbid(unsafe_code)]

mod aead;
pub mod attachment;
pub mod book;
mod bundle;
pub mod certificate;
mod codec;
pub mod content;
pub mod device;
pub mod envelope;
mod error;
pub mod fanout;
pub mod group;
pub mod hazmat;
mod kdf;
mod kem;
mod keys;
pub mod limits;
pub mod padding;
mod prekeys;
mod proto;
mod ratchet;
pub mod safety;
pub mod sealed;
pub mod server;
mod session;
mod skipped;
mod time;
mod wire;
mod x3dh;

pub use bundle::{
    KemPreKeyPublic, OneTimePreKeyPublic, PreKeyBundle, SignedPreKeyPublic, VerifiedBundle,
};
pub use error::{
    BundleError, CertificateError, DecodeError, DecryptError, DeviceListError, EncryptError,
    GroupError, HandshakeError, KeyError, PreKeyError, RestoreError, SealedError, UploadError,
};
pub use kem::{KEM_CIPHERTEXT_LEN, KEM_PUBLIC_KEY_LEN, KemPublicKey};
pub use keys::{IdentityKey, IdentityKeyPair, PublicKey};
pub use prekeys::{Accepted, PreKeys, Pruned};
pub use session::{HandshakePolicy, Role, Session};
pub use time::Timestamp;
pub use wire::{Handshake, Message, PreKeyMessage, RatchetMessage};

/// The pairwise profile this crate implements (PROTOCOL.md §1).
pub const PROFILE_ID: &str = "x3dh-dr-ed25519-x25519-sha256-aesgcm/v1";
/// The post-quantum session-setup profile this crate implements (PROTOCOL.md §13).
pub const PQXDH_PROFILE_ID: &str = "pqxdh-ed25519-x25519-mlkem1024-sha256/v1";
/// The sender-key group profile this crate implements (PROTOCOL.md §17).
pub const SENDER_KEY_PROFILE_ID: &str = "confidant-sender-key/v1";

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    /// Every state value can move between threads and be shared behind a lock or an `Arc`
    /// (the KEM key cache in `PreKeys` is a `OnceLock`, not a `OnceCell`).
    #[test]
    fn state_values_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<crate::Session>();
        check::<crate::PreKeys>();
        check::<crate::IdentityKeyPair>();
        check::<crate::book::SessionBook>();
        check::<crate::group::GroupSession>();
        check::<crate::server::DeviceKeys>();
        check::<crate::safety::KnownAccounts>();
    }
}
