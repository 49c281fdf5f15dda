//! Thread-count setting and a scoped parallel-for over disjoint output chunks.

use std::sync::atomic::{AtomicUsize, Ordering};

static THREADS: AtomicUsize = AtomicUsize::new(0);

/// Sets the number of worker threads used by kernels (0 = all available cores).
pub fn set_num_threads(n: usize) {
    THREADS.store(n, Ordering::Relaxed);
}

/// The number of worker threads kernels use.
pub fn num_threads() -> usize {
    match THREADS.load(Ordering::Relaxed) {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Splits `out` into chunks of `chunk` elements and calls `f(chunk_index, chunk)` for each,
/// spreading the chunks over the worker threads. Runs inline when there is one thread or
/// `work` (a rough count of multiply-adds) is too small to pay for spawning.
pub fn parallel_chunks<T, F>(out: &mut [T], chunk: usize, work: usize, f: F)
where
    T: Send,
    F: Fn(usize, &mut [T]) + Sync,
{
    let chunk = chunk.max(1);
    let n_chunks = out.len().div_ceil(chunk);
    let threads = num_threads().min(n_chunks);
    if threads <= 1 || work < 1 << 16 {
        for (i, c) in out.chunks_mut(chunk).enumerate() {
            f(i, c);
        }
        return;
    }
    // Contiguous runs of chunks per thread, so each thread writes one region.
    let per = n_chunks.div_ceil(threads);
    std::thread::scope(|s| {
        let mut rest = out;
        let mut first = 0;
        while !rest.is_empty() {
            let take = (per * chunk).min(rest.len());
            let (mine, tail) = rest.split_at_mut(take);
            rest = tail;
            let f = &f;
            let start = first;
            s.spawn(move || {
                for (i, c) in mine.chunks_mut(chunk).enumerate() {
                    f(start + i, c);
                }
            });
            first += per;
        }
    });
}
