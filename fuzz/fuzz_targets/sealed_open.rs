//! `sealed_open`: see `confidant_fuzz::sealed` for the input format and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| confidant_fuzz::sealed::run(data));
