//! A persistent worker pool.
//!
//! Workers are started once (lazily, up to `num_threads() − 1`; the calling thread is the
//! remaining participant) and wait between jobs: first spinning for a short while, so the
//! back-to-back ops of a forward pass find them awake, then parked on a condvar. A job is a
//! closure `f(task)` over `0..n_tasks`; participants claim small runs of task indices from one
//! atomic counter, so a thread that gets descheduled does not hold up the whole op.
//!
//! Workers enter a job through a gate (epoch, closed flag, count of workers inside). When the
//! poster has run out of tasks to claim it closes the gate and waits only for the workers that
//! are inside, i.e. actually running tasks; a worker that was asleep or descheduled and comes
//! late finds the gate closed and never touches the job. (Waiting for every worker to check in
//! instead costs a scheduler time slice whenever the machine is oversubscribed.)
//!
//! Calls made from inside a task (nested use) run inline on that thread. Calls from several
//! outside threads at once are serialized.

use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

static THREADS: AtomicUsize = AtomicUsize::new(0);

/// How many times the system was asked for the core count (at most once per process).
static CORE_QUERIES: AtomicUsize = AtomicUsize::new(0);

/// Sets the number of threads kernels use, the caller included (0 = all available cores).
pub fn set_num_threads(n: usize) {
    THREADS.store(n, Ordering::Relaxed);
}

/// The cores this process may use: the affinity mask, capped by a cgroup CPU quota (v1 or v2)
/// when one is set, as `std::thread::available_parallelism` computes them on Linux. Asked of
/// the system once per process (on Linux that is a `sched_getaffinity` call plus reads under
/// `/proc` and `/sys/fs/cgroup`); every later call is a load.
pub fn available_cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| {
        CORE_QUERIES.fetch_add(1, Ordering::Relaxed);
        std::thread::available_parallelism().map_or(1, |n| n.get())
    })
}

/// How many times [`available_cores`] has asked the system: 0 before the first call, 1 after.
pub fn core_count_queries() -> usize {
    CORE_QUERIES.load(Ordering::Relaxed)
}

/// The number of threads kernels use, the caller included: the count set by
/// [`set_num_threads`], else [`available_cores`]. Two atomic loads; no system call.
pub fn num_threads() -> usize {
    match THREADS.load(Ordering::Relaxed) {
        0 => available_cores(),
        n => n,
    }
}

thread_local! {
    static IN_POOL: Cell<bool> = const { Cell::new(false) };
}

/// True while the current thread is executing a pool task (where nested calls run inline).
pub fn in_pool_task() -> bool {
    IN_POOL.with(|c| c.get())
}

/// How long an idle worker spins before parking.
const SPIN: Duration = Duration::from_micros(200);

/// One posted job. Lives on the posting thread's stack for the duration of `run`.
struct Job {
    data: *const (),
    call: unsafe fn(*const (), usize),
    n_tasks: usize,
    grain: usize,
    next: AtomicUsize,
    panicked: AtomicBool,
    /// The first panic's payload, re-raised by the poster.
    payload: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

impl Job {
    /// Claims runs of `grain` tasks until none are left, catching a panic.
    fn work(&self) {
        let r = catch_unwind(AssertUnwindSafe(|| loop {
            let start = self.next.fetch_add(self.grain, Ordering::Relaxed);
            if start >= self.n_tasks {
                break;
            }
            for i in start..(start + self.grain).min(self.n_tasks) {
                // SAFETY: `data`/`call` were made together by `run` from a live `&F`, and the
                // job (hence the closure it points to) outlives every participant's `work`.
                unsafe { (self.call)(self.data, i) }
            }
        }));
        if let Err(p) = r {
            if !self.panicked.swap(true, Ordering::Relaxed) {
                *self.payload.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
            }
            // Let the others stop early.
            self.next.store(self.n_tasks, Ordering::Relaxed);
        }
    }
}

unsafe fn trampoline<F: Fn(usize) + Sync>(data: *const (), i: usize) {
    // SAFETY: `data` is the `&F` that `ThreadPool::run` erased; the caller guarantees it is live.
    let f = unsafe { &*(data as *const F) };
    f(i)
}

/// `gate` layout: epoch in the high 32 bits, then the closed flag, then the number of workers
/// inside the job.
const GATE_CLOSED: u64 = 1 << 31;
const GATE_INSIDE: u64 = GATE_CLOSED - 1;

struct Shared {
    /// `epoch << 16 | workers wanted`: bumping the epoch posts `job`.
    state: AtomicU64,
    /// Entry gate of the current job (see the module comment).
    gate: AtomicU64,
    job: AtomicPtr<Job>,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

/// The process-wide pool. Get it with [`pool`].
pub struct ThreadPool {
    shared: &'static Shared,
    /// Serializes posters; holds the number of workers spawned so far.
    post: Mutex<usize>,
}

/// The process-wide worker pool.
pub fn pool() -> &'static ThreadPool {
    static POOL: OnceLock<ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| ThreadPool {
        shared: Box::leak(Box::new(Shared {
            state: AtomicU64::new(0),
            gate: AtomicU64::new(GATE_CLOSED),
            job: AtomicPtr::new(std::ptr::null_mut()),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        })),
        post: Mutex::new(0),
    })
}

fn worker_loop(shared: &'static Shared, id: usize, mut seen: u64) {
    IN_POOL.with(|c| c.set(true));
    loop {
        let s = wait_for_post(shared, seen);
        seen = s >> 16;
        let wanted = (s & 0xFFFF) as usize;
        if id >= wanted {
            continue;
        }
        if !enter(shared, seen) {
            continue; // came late: the job is finished or being finished without us
        }
        let job = shared.job.load(Ordering::Acquire);
        // SAFETY: the gate was open for this epoch when we entered, so the poster stored `job`
        // before opening it and has not returned from `run` (dropping the job): it closes the
        // gate and then waits until every worker inside has left, which we do only below.
        let job = unsafe { &*job };
        job.work();
        // `job` must not be touched after leaving.
        shared.gate.fetch_sub(1, Ordering::Release);
    }
}

/// Enters the job of `epoch` if its gate is still open.
fn enter(shared: &Shared, epoch: u64) -> bool {
    let mut g = shared.gate.load(Ordering::Acquire);
    loop {
        if g >> 32 != epoch & 0xFFFF_FFFF || g & GATE_CLOSED != 0 {
            return false;
        }
        match shared
            .gate
            .compare_exchange_weak(g, g + 1, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return true,
            Err(now) => g = now,
        }
    }
}

fn wait_for_post(shared: &Shared, seen: u64) -> u64 {
    let start = Instant::now();
    let mut spins = 0u32;
    loop {
        let s = shared.state.load(Ordering::Acquire);
        if s >> 16 != seen {
            return s;
        }
        std::hint::spin_loop();
        spins += 1;
        if spins.is_multiple_of(128) && start.elapsed() > SPIN {
            break;
        }
    }
    let mut g = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
    shared.sleepers.fetch_add(1, Ordering::SeqCst);
    let s = loop {
        let s = shared.state.load(Ordering::SeqCst);
        if s >> 16 != seen {
            break s;
        }
        g = shared.wake.wait(g).unwrap_or_else(|e| e.into_inner());
    };
    shared.sleepers.fetch_sub(1, Ordering::SeqCst);
    s
}

impl ThreadPool {
    /// Runs `f(i)` for every `i` in `0..n_tasks`, spread over [`num_threads`] threads (the
    /// caller included), and returns when all are done. Nested calls run inline. A panic in a
    /// task is re-raised here after every participant has stopped.
    ///
    /// Jobs from different outside threads run one at a time, so a task must not block on
    /// another thread that is itself waiting to use the pool.
    pub fn run<F: Fn(usize) + Sync>(&self, n_tasks: usize, f: F) {
        let threads = num_threads().min(n_tasks).min(0xFFFF);
        if threads <= 1 || in_pool_task() {
            for i in 0..n_tasks {
                f(i);
            }
            return;
        }
        let mut spawned = self.post.lock().unwrap_or_else(|e| e.into_inner());
        let workers = threads - 1;
        let epoch = self.shared.state.load(Ordering::Relaxed) >> 16;
        while *spawned < workers {
            let (shared, id) = (self.shared, *spawned);
            std::thread::Builder::new()
                .name(format!("moela-worker-{id}"))
                .spawn(move || worker_loop(shared, id, epoch))
                .expect("spawning a worker thread");
            *spawned += 1;
        }
        // Small runs of tasks per claim: few atomics, still fine-grained enough to balance.
        let grain = (n_tasks / (threads * 8)).max(1);
        let job = Job {
            data: &f as *const F as *const (),
            call: trampoline::<F>,
            n_tasks,
            grain,
            next: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            payload: Mutex::new(None),
        };
        let epoch = epoch + 1;
        let sh = self.shared;
        sh.job
            .store(&job as *const Job as *mut Job, Ordering::Release);
        sh.gate
            .store((epoch & 0xFFFF_FFFF) << 32, Ordering::Release);
        sh.state
            .store((epoch << 16) | workers as u64, Ordering::SeqCst);
        if self.shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        IN_POOL.with(|c| c.set(true));
        job.work();
        IN_POOL.with(|c| c.set(false));
        // Every task is claimed now; shut out latecomers and wait for those still inside.
        self.shared.gate.fetch_or(GATE_CLOSED, Ordering::AcqRel);
        let mut spins = 0u32;
        while self.shared.gate.load(Ordering::Acquire) & GATE_INSIDE != 0 {
            spins += 1;
            if spins < 4096 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        drop(spawned);
        if job.panicked.load(Ordering::Relaxed) {
            let p = job.payload.lock().unwrap_or_else(|e| e.into_inner()).take();
            resume_unwind(p.unwrap_or_else(|| Box::new("a pool task panicked")));
        }
    }
}

/// Runs `f(i)` for `i` in `0..n` on the pool (see [`ThreadPool::run`]).
pub fn parallel_for<F: Fn(usize) + Sync>(n: usize, f: F) {
    pool().run(n, f)
}

/// A raw pointer that may cross threads; users guarantee disjoint access.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub *mut T);

impl<T> SendPtr<T> {
    /// The pointer. (A method, so closures capture the whole `SendPtr` rather than the bare
    /// pointer field.)
    #[inline]
    pub(crate) fn get(&self) -> *mut T {
        self.0
    }
}
// SAFETY: only used to hand disjoint regions of one buffer to pool tasks.
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above; each task writes a region no other task touches.
unsafe impl<T: Send> Sync for SendPtr<T> {}

/// Splits `out` into chunks of `chunk` elements and calls `f(chunk_index, chunk)` for each on
/// the pool. Runs inline when `work` (a rough count of multiply-adds) is too small to pay for
/// waking workers.
pub fn parallel_chunks<T, F>(out: &mut [T], chunk: usize, work: usize, f: F)
where
    T: Send,
    F: Fn(usize, &mut [T]) + Sync,
{
    let chunk = chunk.max(1);
    let len = out.len();
    let n_chunks = len.div_ceil(chunk);
    if work < 1 << 15 || n_chunks <= 1 {
        for (i, c) in out.chunks_mut(chunk).enumerate() {
            f(i, c);
        }
        return;
    }
    let base = SendPtr(out.as_mut_ptr());
    pool().run(n_chunks, |i| {
        let start = i * chunk;
        let n = chunk.min(len - start);
        // SAFETY: chunk `i` covers `start..start+n` of `out`, disjoint from every other chunk,
        // and `out` stays mutably borrowed until `run` returns.
        let c = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), n) };
        f(i, c);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn runs_every_task_exactly_once() {
        for n in [0usize, 1, 2, 3, 7, 64, 1000, 10_000] {
            let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
            pool().run(n, |i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "n = {n}"
            );
        }
    }

    #[test]
    fn many_small_jobs_back_to_back() {
        let total = AtomicUsize::new(0);
        for j in 0..2000 {
            pool().run(3, |i| {
                total.fetch_add(i + j, Ordering::Relaxed);
            });
        }
        let want: usize = (0..2000).map(|j| 3 * j + 3).sum();
        assert_eq!(total.load(Ordering::Relaxed), want);
    }

    #[test]
    fn nested_calls_run_inline_without_deadlock() {
        let total = AtomicUsize::new(0);
        pool().run(8, |i| {
            assert!(in_pool_task());
            pool().run(5, |k| {
                parallel_for(3, |m| {
                    total.fetch_add(i * 100 + k * 10 + m, Ordering::Relaxed);
                });
            });
        });
        let want: usize = (0..8)
            .flat_map(|i| (0..5).flat_map(move |k| (0..3).map(move |m| i * 100 + k * 10 + m)))
            .sum();
        assert_eq!(total.load(Ordering::Relaxed), want);
        assert!(!in_pool_task());
    }

    #[test]
    fn concurrent_callers_from_many_threads() {
        std::thread::scope(|s| {
            for t in 0..4 {
                s.spawn(move || {
                    for _ in 0..200 {
                        let sum = AtomicUsize::new(0);
                        parallel_for(17, |i| {
                            sum.fetch_add(i * t, Ordering::Relaxed);
                        });
                        assert_eq!(sum.load(Ordering::Relaxed), 136 * t);
                    }
                });
            }
        });
    }

    #[test]
    fn workers_wake_after_parking() {
        let sum = AtomicUsize::new(0);
        parallel_for(4, |i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        std::thread::sleep(SPIN * 5);
        parallel_for(4, |i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 12);
    }

    #[test]
    fn panics_propagate_and_pool_survives() {
        let r = catch_unwind(|| {
            pool().run(64, |i| {
                if i == 37 {
                    panic!("boom");
                }
            })
        });
        assert!(r.is_err());
        let sum = AtomicUsize::new(0);
        parallel_for(100, |i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 4950);
    }

    #[test]
    fn thread_count_changes_take_effect() {
        // The only test that changes the count; each run reads it once, so concurrent tests
        // are unaffected in correctness.
        for n in [3usize, 1, 4, 2, 0] {
            set_num_threads(n);
            let want = num_threads();
            let seen = Mutex::new(std::collections::HashSet::new());
            let sum = AtomicUsize::new(0);
            // Sleeping tasks: the caller cannot finish them all before the workers join in.
            parallel_for(32, |i| {
                seen.lock().unwrap().insert(std::thread::current().id());
                sum.fetch_add(i, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            });
            assert_eq!(sum.load(Ordering::Relaxed), 496);
            let used = seen.lock().unwrap().len();
            assert!(used <= want, "{n} threads: used {used}");
            if want >= 2 {
                assert!(used >= 2, "{n} threads: the workers never joined in");
            }
        }
    }

    #[test]
    fn core_count_is_asked_of_the_system_once() {
        // Whatever other tests ran first, the default path (no count set) resolves from the
        // cache: thousands of jobs and queries later the system has been asked at most once.
        for _ in 0..2000 {
            assert!(available_cores() >= 1);
            parallel_for(3, |_| {});
        }
        assert_eq!(core_count_queries(), 1);
        assert_eq!(
            available_cores(),
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
    }

    #[test]
    fn parallel_chunks_covers_everything() {
        let mut v = vec![0usize; 1001];
        parallel_chunks(&mut v, 10, 1 << 20, |ci, c| {
            for (j, x) in c.iter_mut().enumerate() {
                *x = ci * 10 + j;
            }
        });
        assert!(v.iter().enumerate().all(|(i, x)| *x == i));
    }
}
