//! X3DH and PQXDH key agreement (PROTOCOL.md §4, §13; PROFILE §3, PROFILE-pqxdh §4): pure
//! functions, no state. PQXDH is X3DH with the KEM shared secret appended to the DH outputs and
//! its own HKDF info.

use x25519_dalek::StaticSecret;
use zeroize::{Zeroize, Zeroizing};

use crate::kdf::{self, RootKey};
use crate::keys::{self, IdentityKey, IdentityKeyPair};

/// The result of X3DH: `SK`, `AD`, and the DH outputs (kept only for vector checks).
pub(crate) struct Agreement {
    pub(crate) shared_secret: RootKey,
    pub(crate) associated_data: Vec<u8>,
    pub(crate) dh: Vec<Zeroizing<[u8; 32]>>,
}

/// `AD = EncodeEd(IK_A) || EncodeEd(IK_B) || appendix` (PROTOCOL.md §4.3).
pub(crate) fn associated_data(alice: &IdentityKey, bob: &IdentityKey, appendix: &[u8]) -> Vec<u8> {
    let mut ad = Vec::with_capacity(66 + appendix.len());
    ad.extend_from_slice(&alice.encode());
    ad.extend_from_slice(&bob.encode());
    ad.extend_from_slice(appendix);
    ad
}

/// `SK = HKDF(0^32, F || DH1 || DH2 || DH3 [|| DH4] [|| SS], info, 32)` with `X3DH_INFO`, or
/// with `PQXDH_INFO` when the KEM shared secret `SS` is present (PROTOCOL.md §4.2, §13.2).
fn derive(dhs: &[Zeroizing<[u8; 32]>], kem_shared_secret: Option<&[u8; 32]>) -> RootKey {
    let mut ikm = Zeroizing::new(Vec::with_capacity(32 * (dhs.len() + 2)));
    ikm.extend_from_slice(&kdf::F);
    for dh in dhs {
        ikm.extend_from_slice(dh.as_ref());
    }
    let info = match kem_shared_secret {
        Some(ss) => {
            ikm.extend_from_slice(ss);
            kdf::PQXDH_INFO
        }
        None => kdf::X3DH_INFO,
    };
    let mut sk = [0u8; 32];
    kdf::hkdf_zero_salt(&ikm, info, &mut sk);
    let out = RootKey::from_bytes(sk);
    sk.zeroize();
    out
}

/// Alice's side (PROTOCOL.md §4.2). The bundle's signature has already been verified.
/// `None` if any DH is non-contributory.
pub(crate) fn initiate(
    identity: &IdentityKeyPair,
    ephemeral: &StaticSecret,
    bob_identity: &IdentityKey,
    signed_prekey: &[u8; 32],
    one_time_prekey: Option<&[u8; 32]>,
    kem_shared_secret: Option<&[u8; 32]>,
    appendix: &[u8],
) -> Option<Agreement> {
    let ik = identity.dh_secret();
    let mut dh = vec![
        keys::dh(&ik, signed_prekey)?,
        keys::dh(ephemeral, &bob_identity.x25519())?,
        keys::dh(ephemeral, signed_prekey)?,
    ];
    if let Some(opk) = one_time_prekey {
        dh.push(keys::dh(ephemeral, opk)?);
    }
    Some(Agreement {
        shared_secret: derive(&dh, kem_shared_secret),
        associated_data: associated_data(&identity.public(), bob_identity, appendix),
        dh,
    })
}

/// Bob's side (PROTOCOL.md §4.4), mirroring [`initiate`].
pub(crate) fn respond(
    identity: &IdentityKeyPair,
    signed_prekey: &StaticSecret,
    one_time_prekey: Option<&StaticSecret>,
    alice_identity: &IdentityKey,
    alice_ephemeral: &[u8; 32],
    kem_shared_secret: Option<&[u8; 32]>,
    appendix: &[u8],
) -> Option<Agreement> {
    let ik = identity.dh_secret();
    let mut dh = vec![
        keys::dh(signed_prekey, &alice_identity.x25519())?,
        keys::dh(&ik, alice_ephemeral)?,
        keys::dh(signed_prekey, alice_ephemeral)?,
    ];
    if let Some(opk) = one_time_prekey {
        dh.push(keys::dh(opk, alice_ephemeral)?);
    }
    Some(Agreement {
        shared_secret: derive(&dh, kem_shared_secret),
        associated_data: associated_data(alice_identity, &identity.public(), appendix),
        dh,
    })
}
