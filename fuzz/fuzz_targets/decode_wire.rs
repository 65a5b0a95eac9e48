//! `decode_wire`: see `confidant_fuzz::wire` for the input format and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| confidant_fuzz::wire::run(data));
