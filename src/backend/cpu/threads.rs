//! One long-lived task per thread for a whole forward: each thread takes a static share of every
//! operation's rows and waits at a spin barrier before an operation that reads another thread's
//! results. (Fork/join per matrix costs more than it saves at decode sizes.)

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::error::{Error, Result};

/// The threads one model computes on.
pub struct Pool {
    threads: usize,
    #[cfg(not(target_arch = "wasm32"))]
    pool: Option<rayon::ThreadPool>,
}

/// Workers the page started for the threaded wasm build besides its own thread
/// ([`init_web_threads`]).
#[cfg(all(target_arch = "wasm32", feature = "threads"))]
static WEB_THREADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Records that the page started `workers` Web Workers as rayon's global pool
/// (wasm-bindgen-rayon's `initThreadPool`), which every model's pool then runs on.
#[cfg(all(target_arch = "wasm32", feature = "threads"))]
pub fn init_web_threads(workers: usize) {
    WEB_THREADS.store(workers, Ordering::Release);
}

impl Pool {
    /// `threads` workers (1: everything runs on the caller).
    pub fn new(threads: usize) -> Result<Pool> {
        let threads = threads.max(1);
        #[cfg(not(target_arch = "wasm32"))]
        {
            let pool = if threads > 1 {
                // The caller is thread 0: the pool holds the others.
                let p = rayon::ThreadPoolBuilder::new().num_threads(threads - 1).thread_name(|i| format!("ferrolm-cpu-{}", i + 1)).build();
                Some(p.map_err(|e| Error::InvalidOption { option: "threads", reason: format!("could not start {threads} CPU threads ({e}); ask for fewer") })?)
            } else {
                None
            };
            Ok(Pool { threads, pool })
        }
        #[cfg(target_arch = "wasm32")]
        {
            #[cfg(feature = "threads")]
            let started = WEB_THREADS.load(Ordering::Acquire) + 1;
            #[cfg(not(feature = "threads"))]
            let started = 1;
            if threads > started.max(1) {
                let why = if cfg!(feature = "threads") { format!("the page started {started} worker threads (initThreads)") } else { "this is the single-threaded wasm build".into() };
                return Err(Error::InvalidOption {
                    option: "threads",
                    reason: format!("{threads} threads asked for, but {why}; threads need the threaded build in a cross-origin isolated page (COOP/COEP headers), otherwise use 1"),
                });
            }
            Ok(Pool { threads })
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` once on every thread and returns when all are done. A panic on one thread
    /// releases the others from the barrier and is propagated, so nothing waits forever.
    pub fn run<F: Fn(&Worker) + Sync>(&self, f: F) {
        let barrier = SpinBarrier { n: self.threads, count: AtomicUsize::new(0), generation: AtomicUsize::new(0), poisoned: AtomicBool::new(false) };
        let task = |index: usize| {
            let w = Worker { index, count: self.threads, barrier: &barrier };
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&w)));
            if let Err(panic) = result {
                barrier.poisoned.store(true, Ordering::Release);
                std::panic::resume_unwind(panic);
            }
        };
        if self.threads == 1 {
            task(0)
        } else {
            self.broadcast(&task)
        }
    }

    /// Thread 0 is the caller (a waiting caller would take a core from the workers); the pool's
    /// threads are 1.. .
    #[cfg(not(target_arch = "wasm32"))]
    fn broadcast(&self, task: &(dyn Fn(usize) + Sync)) {
        self.pool.as_ref().expect("a pool for more than one thread").in_place_scope(|s| {
            s.spawn_broadcast(|_, ctx| task(ctx.index() + 1));
            task(0);
        });
    }

    /// As natively, on the page's global pool, which may hold more workers than this model uses
    /// (the others return at once).
    #[cfg(all(target_arch = "wasm32", feature = "threads"))]
    fn broadcast(&self, task: &(dyn Fn(usize) + Sync)) {
        rayon::in_place_scope(|s| {
            s.spawn_broadcast(|_, ctx| {
                if ctx.index() + 1 < self.threads {
                    task(ctx.index() + 1)
                }
            });
            task(0);
        });
    }

    /// `Pool::new` allows one thread only in this build.
    #[cfg(all(target_arch = "wasm32", not(feature = "threads")))]
    fn broadcast(&self, task: &(dyn Fn(usize) + Sync)) {
        task(0)
    }
}

/// One thread's view of a [`Pool::run`].
pub struct Worker<'a> {
    pub index: usize,
    pub count: usize,
    barrier: &'a SpinBarrier,
}

impl Worker<'_> {
    /// This thread's share of `0..n` (contiguous, sizes differ by at most one).
    pub fn share(&self, n: usize) -> Range<usize> {
        let (per, extra) = (n / self.count, n % self.count);
        let start = self.index * per + self.index.min(extra);
        start..start + per + usize::from(self.index < extra)
    }

    /// This thread's share of `0..n` in whole units of `unit` (the last may be partial).
    pub fn share_aligned(&self, n: usize, unit: usize) -> Range<usize> {
        let units = self.share(n.div_ceil(unit));
        (units.start * unit).min(n)..(units.end * unit).min(n)
    }

    /// Waits until every thread has reached this barrier.
    pub fn barrier(&self) {
        self.barrier.wait();
    }
}

struct SpinBarrier {
    n: usize,
    count: AtomicUsize,
    generation: AtomicUsize,
    poisoned: AtomicBool,
}

impl SpinBarrier {
    fn wait(&self) {
        if self.n == 1 {
            return;
        }
        let generation = self.generation.load(Ordering::Acquire);
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            self.count.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            if self.poisoned.load(Ordering::Acquire) {
                panic!("another CPU thread panicked");
            }
            spins += 1;
            if spins < 4096 {
                std::hint::spin_loop();
            } else {
                // More threads than free cores (tests in parallel): let the others run.
                std::thread::yield_now();
            }
        }
    }
}

/// A buffer every thread of a [`Pool::run`] reads and writes, each writing only its own share
/// between two barriers.
pub struct Shared<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: access goes through the unsafe methods below, whose callers keep writes disjoint and
// separated from reads by barriers.
unsafe impl<T: Send> Send for Shared<'_, T> {}
unsafe impl<T: Send> Sync for Shared<'_, T> {}

impl<'a, T> Shared<'a, T> {
    pub fn new(s: &'a mut [T]) -> Self {
        Shared { ptr: s.as_mut_ptr(), len: s.len(), _borrow: PhantomData }
    }

    /// # Safety
    /// No other thread reads or writes `r` until the next barrier.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, r: Range<usize>) -> &mut [T] {
        assert!(r.start <= r.end && r.end <= self.len, "shared slice {r:?} out of 0..{}", self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(r.start), r.end - r.start)
    }

    /// # Safety
    /// No thread writes `r` until the next barrier.
    pub unsafe fn slice(&self, r: Range<usize>) -> &[T] {
        assert!(r.start <= r.end && r.end <= self.len, "shared slice {r:?} out of 0..{}", self.len);
        std::slice::from_raw_parts(self.ptr.add(r.start), r.end - r.start)
    }

    /// # Safety
    /// No thread writes any of the buffer until the next barrier.
    pub unsafe fn all(&self) -> &[T] {
        std::slice::from_raw_parts(self.ptr, self.len)
    }
}
