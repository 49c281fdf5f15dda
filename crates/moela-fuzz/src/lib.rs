//! Fuzz target bodies: one function per surface that reads untrusted bytes, each taking any
//! input at all. The libFuzzer binaries under `fuzz/` (see docs/fuzzing.md) call them, and so
//! does `tests/replay.rs`, which runs every committed corpus file and crash regression through
//! the same function on stable Rust in `cargo test --workspace`.
//!
//! A target must return on every input without panicking, hanging or exhausting memory; the
//! library code it drives answers bad input with typed errors. Where a surface documents an
//! invariant (a streaming parser equals its whole-text form), the target asserts it, so a
//! violation is a finding like a crash.
//!
//! Targets whose input is several files take them as parts separated by [`PART_SEPARATOR`]
//! ([`parts`]); the committed seeds show the layout of each.

mod loader;
mod request;
mod scratch;
mod text;

pub use loader::{config, gguf, safetensors};
pub use request::request;
pub use text::{chat_template, stream};

/// Separates the files or fields of a multi-part input: `\n`, NUL, `PART`, NUL, `\n` (JSON text
/// never holds a raw NUL, so the parts of the JSON targets cannot run into one another).
pub const PART_SEPARATOR: &[u8] = b"\n\x00PART\x00\n";

/// The parts of a multi-part input (one part when there is no separator).
pub fn parts(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(at) = rest
        .windows(PART_SEPARATOR.len())
        .position(|w| w == PART_SEPARATOR)
    {
        out.push(&rest[..at]);
        rest = &rest[at + PART_SEPARATOR.len()..];
    }
    out.push(rest);
    out
}

/// Joins parts with [`PART_SEPARATOR`] (for writing seeds).
pub fn join_parts(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(PART_SEPARATOR)
}

/// A fuzz target: its name (the binary under `fuzz/fuzz_targets/` and the corpus folder) and
/// its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    ("gguf", gguf),
    ("safetensors", safetensors),
    ("config", config),
    ("chat_template", chat_template),
    ("request", request),
    ("stream", stream),
];

/// The repository root (the fixtures the targets load once live under `tests/fixtures`).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip() {
        let joined = join_parts(&[b"a", b"", b"c\n"]);
        assert_eq!(parts(&joined), vec![&b"a"[..], b"", b"c\n"]);
        assert_eq!(parts(b"plain"), vec![&b"plain"[..]]);
        assert_eq!(parts(b""), vec![&b""[..]]);
    }
}
