//! `attachment_decrypt`: see `confidant_fuzz::attachment` for the input format and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| confidant_fuzz::attachment::run(data));
