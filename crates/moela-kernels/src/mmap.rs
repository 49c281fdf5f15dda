//! Read-only file mapping (the one place outside compute kernels that needs `unsafe`).

use std::fs::File;

pub use memmap2::{Mmap, MmapMut};

/// Maps `file` read-only, pre-faulting every page (MAP_POPULATE) when the file fits in the
/// memory that is available ([`crate::memory::fits`]): otherwise each first touch of a weight
/// page during inference takes a page fault (millions for a multi-GB model). A file larger than
/// that is paged in on demand instead: reading it all up front would only evict its own first
/// pages again.
pub fn map_readonly(file: &File) -> std::io::Result<Mmap> {
    let len = file.metadata()?.len();
    let populate = crate::memory::fits(len, crate::memory::available_bytes());
    let mut opts = memmap2::MmapOptions::new();
    if populate {
        opts.populate();
    }
    // SAFETY: the mapping is read-only and never outlives the `Mmap`; like every mmap-based
    // loader, we assume the checkpoint file is not truncated or rewritten while mapped.
    unsafe { opts.map(file) }
}

/// Drops this process's pages of `len` bytes at `offset` (rounded out to whole pages) once
/// their contents were copied elsewhere: they leave the resident set, and a later read would
/// fault them in again from the file. Errors are ignored (only memory use is at stake).
pub fn release(map: &Mmap, offset: usize, len: usize) {
    #[cfg(unix)]
    // SAFETY: the mapping is private and never written, so dropping its pages loses nothing:
    // any later access re-reads the unchanged file contents (the `Mmap` stays valid).
    let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len) };
    #[cfg(not(unix))]
    let _ = (map, offset, len);
}

/// Zeroed anonymous memory of `len` bytes, backed by 2 MiB pages where the kernel allows
/// (`MADV_HUGEPAGE`): weights streamed once per token read faster from huge pages (fewer TLB
/// misses, and hardware prefetchers stop at 4 KiB page boundaries). `None` if the mapping fails.
pub fn anon_huge(len: usize) -> Option<MmapMut> {
    let m = MmapMut::map_anon(len).ok()?;
    #[cfg(target_os = "linux")]
    let _ = m.advise(memmap2::Advice::HugePage);
    Some(m)
}
