//! `interaction`: see `confidant_fuzz::interaction` for the input format and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| confidant_fuzz::interaction::run(data));
