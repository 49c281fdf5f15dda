#![no_main]
//! `cargo fuzz run chat_template`: see crates/moela-fuzz (the body) and docs/fuzzing.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| moela_fuzz::chat_template(data));
