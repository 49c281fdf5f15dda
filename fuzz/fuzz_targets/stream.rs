#![no_main]
//! `cargo fuzz run stream`: see crates/moela-fuzz (the body) and docs/fuzzing.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| moela_fuzz::stream(data));
