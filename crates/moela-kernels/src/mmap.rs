//! Read-only file mapping (the one place outside compute kernels that needs `unsafe`).

use std::fs::File;

pub use memmap2::Mmap;

/// Maps `file` read-only.
pub fn map_readonly(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: the mapping is read-only and never outlives the `Mmap`; like every mmap-based
    // loader, we assume the checkpoint file is not truncated or rewritten while mapped.
    // MAP_POPULATE pre-faults every page once at load: otherwise each first touch of a weight
    // page during inference takes a page fault (millions for a multi-GB model).
    unsafe { memmap2::MmapOptions::new().populate().map(file) }
}
