//! Helpers shared by the GGUF integration tests.

use std::path::{Path, PathBuf};

/// tests/fixtures/gguf at the workspace root.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf")
}
