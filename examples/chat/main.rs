//! The chat demo: an in-process untrusted relay and key server, and five client devices
//! (Alice's phone and laptop, Bob's phone, Carol's phone and later tablet) that each persist
//! their state in a SQLite database.
//!
//! It plays a 1:1 chat with receipts and typing indicators, safety numbers, a group of all
//! three accounts, 50 messages queued for an offline phone and delivered shuffled with
//! duplicates, a client restart from its database, a device linked and a device removed,
//! simultaneous session initiation and a 5 MiB attachment uploaded in resumable chunks.
//! Beside each client's view it prints what the relay holds (recipient, kind, size: never
//! plaintext), then a summary table and a check list; it exits non-zero if a check failed.
//!
//! ```sh
//! cargo run --example chat                 # the transcript, seed 1
//! cargo run --example chat -- --seed 7     # another deterministic run
//! cargo run --example chat -- --quiet      # summary and checks only
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod client;
mod relay;
mod scenario;
mod store;

use std::process::ExitCode;
use std::time::Instant;

fn usage() -> ExitCode {
    eprintln!("usage: chat [--seed N] [--quiet]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut seed = 1u64;
    let mut quiet = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quiet" | "-q" => quiet = true,
            "--seed" => match args.next().and_then(|s| s.parse().ok()) {
                Some(n) => seed = n,
                None => return usage(),
            },
            other => match other.strip_prefix("--seed=").and_then(|s| s.parse().ok()) {
                Some(n) => seed = n,
                None => return usage(),
            },
        }
    }
    let started = Instant::now();
    let report = scenario::run(seed, quiet);
    if !quiet {
        println!("confidant chat demo, seed {}", report.seed);
        for line in &report.lines {
            println!("{line}");
        }
        println!();
        println!("── Summary {}", "─".repeat(85));
    }
    for line in &report.summary {
        println!("{line}");
    }
    println!();
    println!("Checks (seed {}):", report.seed);
    for (name, ok) in &report.checks {
        println!("  {} {name}", if *ok { "✓" } else { "✗" });
    }
    let failed = report.checks.iter().filter(|(_, ok)| !ok).count();
    println!();
    println!(
        "{} of {} checks passed in {:.1} s",
        report.checks.len() - failed,
        report.checks.len(),
        started.elapsed().as_secs_f64()
    );
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
