//! Per-thread scratch directories for the targets whose library entry points read files.

use std::path::{Path, PathBuf};

thread_local! {
    static DIR: tempfile::TempDir = tempfile::Builder::new()
        .prefix("moela-fuzz-")
        .tempdir()
        .expect("cannot create a scratch directory for the fuzz target");
}

/// This thread's scratch directory, emptied of the previous input's files.
pub(crate) fn fresh_dir() -> PathBuf {
    DIR.with(|d| {
        let p = d.path().to_path_buf();
        if let Ok(entries) = std::fs::read_dir(&p) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        p
    })
}

/// Writes `data` to `dir/name`.
pub(crate) fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("cannot write a scratch file for the fuzz target");
    p
}
