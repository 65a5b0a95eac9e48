//! Shared code of confidant's fuzz targets and of the seed generator (`gen_seeds`).
//!
//! Every target is a thin `fuzz_target!` around one `run` function here, so the same checks run
//! under libFuzzer (`fuzz_targets/*.rs`) and, uninstrumented, over the seed corpus
//! (`gen_seeds --check`). Fixtures (established sessions, group sessions, certificates, the
//! interaction world) are built once per process from fixed seeds and restored from snapshots
//! for every input, so runs are deterministic and cheap.
//!
//! Conventions: a check that fails panics with a message naming the violated invariant; the
//! library's documented, expected errors never do.

pub mod attachment;
pub mod certificates;
pub mod group;
pub mod interaction;
pub mod pairwise;
pub mod sealed;
pub mod snapshots;
pub mod vectors;
pub mod wire;

use confidant::Timestamp;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

/// The fixed "now" of every fixture: the test vectors' `now` (sealed sender, device lists).
pub const NOW: Timestamp = Timestamp(1_795_000_000_000);
/// One day in milliseconds.
pub const DAY_MS: u64 = 86_400_000;

/// Checks what a sender-key distribution did to `session` (`before`: its snapshot before
/// `result = session.receive_distribution(sender, distribution)`):
/// * refused: nothing changed;
/// * `Known`: nothing was installed, but the end of the previous key the distribution
///   announces is still applied (`KeyStatus::Known` documents this), so the session may change
///   only if it announces one; and delivering the same distribution again is `Known` and
///   changes nothing.
///
/// # Panics
/// If one of these fails.
pub fn check_distribution_outcome(
    session: &mut confidant::group::GroupSession,
    before: &[u8],
    sender: &confidant::book::Address,
    distribution: &confidant::group::SenderKeyDistribution,
    result: &Result<confidant::group::KeyStatus, confidant::group::GroupError>,
) {
    use confidant::group::KeyStatus;
    match result {
        Err(_) => assert!(
            *before == *session.snapshot(),
            "a refused distribution ({result:?}) changed the session"
        ),
        Ok(KeyStatus::Known) => {
            let after = session.snapshot();
            assert!(
                distribution.previous_key().is_some() || *before == *after,
                "a known distribution announcing no previous key changed the session"
            );
            let again = session.receive_distribution(sender, distribution);
            assert!(
                matches!(again, Ok(KeyStatus::Known)),
                "a known distribution delivered again gave {again:?}"
            );
            assert!(
                *after == *session.snapshot(),
                "a known distribution delivered again changed the session"
            );
        }
        Ok(KeyStatus::New | KeyStatus::Advanced) => {}
    }
}

/// A deterministic RNG.
#[must_use]
pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// Splits a "batch" input into items: a sequence of `selector (1) || len (2, big endian) ||
/// bytes`; a truncated last item takes what is left. At most `max` items.
#[must_use]
pub fn batch_items(data: &[u8], max: usize) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    let mut rest = data;
    while out.len() < max {
        let Some((&selector, tail)) = rest.split_first() else {
            break;
        };
        let (len, tail) = match tail {
            [hi, lo, tail @ ..] => (usize::from(u16::from_be_bytes([*hi, *lo])), tail),
            _ => (tail.len(), &[][..]),
        };
        let (item, tail) = tail.split_at(len.min(tail.len()));
        out.push((selector, item));
        rest = tail;
    }
    out
}

/// Encodes items as [`batch_items`] reads them (for seeds).
#[must_use]
pub fn encode_batch(marker: u8, items: &[(u8, &[u8])]) -> Vec<u8> {
    let mut out = vec![marker];
    for (selector, item) in items {
        out.push(*selector);
        let len = u16::try_from(item.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(item);
    }
    out
}

/// `0x01 || text || filler`: an application plaintext that names its message.
#[must_use]
pub fn app_text(text: &str, filler: usize) -> Vec<u8> {
    let mut payload = text.as_bytes().to_vec();
    payload.extend(std::iter::repeat_n(b'.', filler));
    confidant::content::application(&payload)
}

/// Signs a device list of `account` (account id `account_id`) with `devices` (identity, device
/// id) at `version` and verifies it, as a client would before applying it.
///
/// # Panics
/// If signing or verification fails (a fixture bug).
#[must_use]
pub fn device_list(
    account: &confidant::IdentityKeyPair,
    account_id: &[u8],
    devices: &[(&confidant::IdentityKeyPair, u32)],
    version: u64,
) -> (Vec<u8>, confidant::device::VerifiedDeviceList) {
    use confidant::device::{DeviceEntry, DeviceList, VerifiedDeviceList};
    let entries = devices
        .iter()
        .map(|(identity, id)| DeviceEntry::local(account, identity, *id))
        .collect();
    let bytes = DeviceList {
        account_id: account_id.to_vec(),
        version,
        timestamp: NOW,
        entries,
    }
    .sign(account)
    .expect("sign device list");
    let verified =
        VerifiedDeviceList::verify(&bytes, &account.public(), None).expect("verify device list");
    (bytes, verified)
}

/// A fuzz target: its name, its entry point and its generated seeds (beyond the test vectors'
/// encodings, which `gen_seeds` adds by format).
pub struct Target {
    /// The binary's name (`fuzz_targets/<name>.rs`).
    pub name: &'static str,
    /// What the binary runs on each input.
    pub run: fn(&[u8]),
    /// Seeds made from the fixtures.
    pub seeds: fn() -> Vec<(String, Vec<u8>)>,
}

/// Every target, in the order `run.sh` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "decode_wire",
        run: wire::run,
        seeds: wire::seeds,
    },
    Target {
        name: "restore_snapshots",
        run: snapshots::run,
        seeds: snapshots::seeds,
    },
    Target {
        name: "certificates",
        run: certificates::run,
        seeds: certificates::seeds,
    },
    Target {
        name: "session_decrypt",
        run: pairwise::run,
        seeds: pairwise::seeds,
    },
    Target {
        name: "group_decrypt",
        run: group::run,
        seeds: group::seeds,
    },
    Target {
        name: "sealed_open",
        run: sealed::run,
        seeds: sealed::seeds,
    },
    Target {
        name: "attachment_decrypt",
        run: attachment::run,
        seeds: attachment::seeds,
    },
    Target {
        name: "interaction",
        run: interaction::run,
        seeds: interaction::seeds,
    },
];
