//! Runs `examples/ws_relay.rs` end to end: a relay and two clients over real WebSockets on
//! loopback, five sealed fan-out messages each way.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "../examples/ws_relay.rs"]
pub mod ws_relay;

use std::time::Duration;

use confidant::envelope::EnvelopeKind;
use ws_relay::Route;

#[test]
fn the_websocket_relay_example_runs_end_to_end_on_loopback() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let summary = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(60), ws_relay::run()).await })
        .expect("timed out")
        .unwrap_or_else(|e| panic!("{e}"));

    assert!(summary.relay.ip().is_loopback());
    assert_ne!(summary.relay.port(), 0);
    // run() already checks the plaintexts; check the shape of what it reports.
    assert_eq!(summary.alice_read.len(), 5);
    assert_eq!(summary.bob_read.len(), 5);
    assert_eq!(summary.bob_read[0], "Hi Bob, it's Alice.");
    assert_eq!(summary.relay_log.len(), 12); // 10 routed on upload + 2 delivered from the queue
    assert!(
        summary
            .relay_log
            .iter()
            .all(|e| e.kind == EnvelopeKind::Sealed && !e.names_sender && e.size > 0)
    );
    let queued: Vec<_> = summary
        .relay_log
        .iter()
        .filter(|e| e.route == Route::Queued)
        .map(|e| e.recipient)
        .collect();
    assert_eq!(queued.len(), 2);
    assert!(
        summary
            .relay_log
            .iter()
            .filter(|e| e.route == Route::Delivered)
            .all(|e| queued.contains(&e.recipient))
    );
    assert!(!summary.transcript.is_empty());
    for line in &summary.transcript {
        println!("{line}");
    }
}
