//! `group_decrypt`: see `confidant_fuzz::group` for the input format and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| confidant_fuzz::group::run(data));
