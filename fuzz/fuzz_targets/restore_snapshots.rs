//! `restore_snapshots`: see `confidant_fuzz::snapshots` for the input format and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| confidant_fuzz::snapshots::run(data));
