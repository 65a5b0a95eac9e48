//! The chat demo (`examples/chat`) as a test: the whole scenario for several seeds, every
//! check asserted, and an audit, independent of the scenario's own, that nothing the relay
//! stored contains any plaintext.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "../examples/chat/client.rs"]
mod client;
#[path = "../examples/chat/relay.rs"]
mod relay;
#[path = "../examples/chat/scenario.rs"]
mod scenario;
#[path = "../examples/chat/store.rs"]
mod store;

use std::collections::HashSet;

/// Seeds played; each run takes well under a second with the test profile.
const SEEDS: [u64; 3] = [1, 2, 0x5eed_cafe];

/// Every 8-byte window of every plaintext, and of the attachment's first 64 KiB.
fn windows(report: &scenario::Report) -> HashSet<[u8; 8]> {
    let mut set = HashSet::new();
    for p in report
        .plaintexts
        .iter()
        .chain(std::iter::once(&report.attachment_prefix))
    {
        assert!(p.len() >= 8, "plaintext shorter than 8 bytes: {p:?}");
        for w in p.windows(8) {
            set.insert(<[u8; 8]>::try_from(w).unwrap());
        }
    }
    set
}

/// Stricter than the scenario's own check: not only no whole plaintext, but no 8-byte
/// substring of any plaintext anywhere in what the relay holds.
fn assert_no_plaintext(report: &scenario::Report) {
    let needles = windows(report);
    assert!(
        needles.len() > 60_000,
        "the attachment prefix is in the set"
    );
    let blobs = report.relay_blobs();
    assert!(!blobs.is_empty());
    let total: usize = blobs.iter().map(Vec::len).sum();
    assert!(
        total > 5 * 1024 * 1024,
        "the attachment ciphertext is audited too"
    );
    for (i, blob) in blobs.iter().enumerate() {
        for (at, w) in blob.windows(8).enumerate() {
            let w = <[u8; 8]>::try_from(w).unwrap();
            assert!(
                !needles.contains(&w),
                "seed {}: relay blob {i} holds plaintext bytes {:?} at offset {at}",
                report.seed,
                String::from_utf8_lossy(&w)
            );
        }
    }
    // And the texts really were sent (the audit would pass vacuously otherwise).
    assert!(report.plaintexts.len() > 70);
    assert!(report.plaintexts.iter().any(|p| p.starts_with(b"Hi Bob!")));
}

#[test]
fn chat_scenario_passes_every_check_for_several_seeds() {
    for seed in SEEDS {
        let report = scenario::run(seed, true);
        assert!(report.lines.is_empty(), "quiet builds no transcript");
        let failed: Vec<&String> = report
            .checks
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(name, _)| name)
            .collect();
        assert!(failed.is_empty(), "seed {seed}: failed checks {failed:#?}");
        assert!(report.checks.len() >= 18, "seed {seed}: checks missing");
        assert!(report.passed());
        assert!(!report.summary.is_empty());
        assert_no_plaintext(&report);
    }
}

#[test]
fn chat_scenario_is_deterministic_for_a_seed() {
    let a = scenario::run(7, false);
    let b = scenario::run(7, false);
    assert!(a.passed(), "{:#?}", a.checks);
    assert_eq!(a.lines, b.lines, "same seed, same transcript");
    assert_eq!(a.summary, b.summary);
    assert_eq!(a.relay_blobs, b.relay_blobs, "same seed, same relay bytes");
    let c = scenario::run(8, true);
    assert_ne!(a.relay_blobs, c.relay_blobs, "another seed, other bytes");
    // The transcript shows what each client read beside what the relay held.
    assert!(a.lines.iter().any(|l| l.contains("│ relay: queued")));
    assert!(a.lines.iter().any(|l| l.contains("← alice.phone")));
}
