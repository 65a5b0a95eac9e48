//! Generates the seed corpora `seeds/<target>/` from the test vectors and the fixtures.
//!
//! ```text
//! gen_seeds [--vectors DIR] [--out DIR] [--check]
//! gen_seeds --run TARGET FILE...
//! ```
//!
//! * Every hex string of every `DIR/*.json` test vector (default `../test-vectors`) that holds
//!   an encoding (by its field name and its leading byte, [`WireFormat::of`]) becomes a seed of
//!   `decode_wire`; sealed-sender ones of `sealed_open`, certificates of `certificates`,
//!   group messages and distributions of `group_decrypt`.
//! * Each target adds the seeds its fixture makes (in-flight messages, snapshots, batches…).
//! * `--check` then runs every target, uninstrumented, over its seeds: a quick check that the
//!   invariants hold on valid inputs.
//! * `--run TARGET FILE...` only runs a target on files (to replay a crash without libFuzzer;
//!   `FUZZ_TRACE=1` makes `interaction` print what it does).
//!
//! Output is deterministic: each target's directory is emptied and rewritten; file names are
//! `<origin>-<sha256 prefix>`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use confidant::envelope::WireFormat;
use confidant_fuzz::TARGETS;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Vector fields that hold an encoding.
const ENCODING_FIELDS: &[&str] = &[
    "body",
    "certificate",
    "distribution",
    "envelope",
    "link_request",
    "local_scannable",
    "message",
    "pointer",
    "remote_scannable",
    "signed_list",
    "tampered_list",
    "upload",
];

fn walk(value: &Value, key: &str, path: &str, out: &mut Vec<(String, Vec<u8>)>) {
    match value {
        Value::Object(map) => {
            let name = map.get("name").and_then(Value::as_str).unwrap_or("");
            for (k, v) in map {
                let p = if name.is_empty() {
                    format!("{path}.{k}")
                } else {
                    format!("{name}.{k}")
                };
                walk(v, k, &p, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                walk(v, key, &format!("{path}{i}"), out);
            }
        }
        Value::String(s) if ENCODING_FIELDS.contains(&key) => {
            if let Ok(bytes) = hex::decode(s)
                && WireFormat::of(&bytes).is_some()
            {
                out.push((path.to_string(), bytes));
            }
        }
        _ => {}
    }
}

fn vector_encodings(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read vector file");
        let doc: Value = serde_json::from_str(&text).expect("vector JSON");
        let stem = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("vector");
        walk(&doc, "", stem, &mut out);
    }
    out
}

/// Which targets a vector encoding seeds, beyond `decode_wire`.
fn also_for(bytes: &[u8]) -> &'static [&'static str] {
    match WireFormat::of(bytes) {
        Some(WireFormat::Envelope | WireFormat::SealedUpload) => &["sealed_open"],
        Some(WireFormat::SenderCertificate | WireFormat::ServerCertificate) => &["certificates"],
        Some(WireFormat::GroupMessage | WireFormat::SenderKeyDistribution) => &["group_decrypt"],
        Some(WireFormat::PreKeyMessage | WireFormat::RatchetMessage) => &["session_decrypt"],
        _ => &[],
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn main() {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut vectors = manifest.join("../test-vectors");
    let mut out = manifest.join("seeds");
    let mut check = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--vectors" => vectors = args.next().expect("--vectors DIR").into(),
            "--out" => out = args.next().expect("--out DIR").into(),
            "--check" => check = true,
            "--run" => {
                // Replay: `gen_seeds --run TARGET FILE...` runs a target, uninstrumented, on files.
                let name = args.next().expect("--run TARGET FILE...");
                let target = TARGETS
                    .iter()
                    .find(|t| t.name == name)
                    .unwrap_or_else(|| panic!("no target {name}"));
                for file in args.by_ref() {
                    eprintln!("{name} {file}");
                    (target.run)(&std::fs::read(&file).expect("read input"));
                }
                return;
            }
            other => panic!(
                "unknown argument {other}; usage: gen_seeds [--vectors DIR] [--out DIR] [--check] | --run TARGET FILE..."
            ),
        }
    }

    let mut seeds: BTreeMap<&str, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    let mut add = |target: &'static str, origin: &str, bytes: Vec<u8>| {
        let digest = Sha256::digest(&bytes);
        let name = format!("{}-{}", sanitize(origin), hex::encode(&digest[..6]));
        seeds.entry(target).or_default().insert(name, bytes);
    };
    for (origin, bytes) in vector_encodings(&vectors) {
        for target in std::iter::once(&"decode_wire").chain(also_for(&bytes)) {
            add(target, &origin, bytes.clone());
        }
    }
    for target in TARGETS {
        let started = Instant::now();
        for (origin, bytes) in (target.seeds)() {
            add(target.name, &origin, bytes);
        }
        // Inputs that once failed a check (kept in regressions/<target>/, committed), so every
        // run and every `--check` replays them.
        let regressions = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("regressions")
            .join(target.name);
        if let Ok(entries) = std::fs::read_dir(&regressions) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let bytes = std::fs::read(entry.path()).expect("read a regression input");
                add(target.name, &format!("regression-{name}"), bytes);
            }
        }
        eprintln!(
            "{:<20} fixture seeds in {:?}",
            target.name,
            started.elapsed()
        );
    }

    let mut total = 0usize;
    for target in TARGETS {
        let dir = out.join(target.name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("clear the seed directory");
        }
        std::fs::create_dir_all(&dir).expect("create the seed directory");
        let files = seeds.get(target.name).cloned().unwrap_or_default();
        let bytes: usize = files.values().map(Vec::len).sum();
        total += bytes;
        for (name, data) in &files {
            std::fs::write(dir.join(name), data).expect("write a seed");
        }
        println!(
            "{:<20} {:>4} seeds {:>8} bytes",
            target.name,
            files.len(),
            bytes
        );
        if check {
            let started = Instant::now();
            for data in files.values() {
                (target.run)(data);
            }
            println!("{:<20} checked in {:?}", target.name, started.elapsed());
        }
    }
    println!("total {total} bytes in {}", out.display());
    if check {
        let started = Instant::now();
        let stats = confidant_fuzz::interaction::self_test();
        println!(
            "interaction self-test: {stats:?} in {:?}",
            started.elapsed()
        );
    }
}
