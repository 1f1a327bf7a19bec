//! One long-lived task per thread for a whole forward: each thread takes a static share of every
//! operation's rows and waits at a spin barrier before an operation that reads another thread's
//! results. (Fork/join per matrix costs more than it saves at decode sizes.)

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

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

/// Counters by which the threads of a [`Pool::run`] share out the parts of operations at run
/// time ([`Worker::claim`]): `[operation][thread]`, one cache line each, so that a thread's
/// claims on its own share stay in its cache until another thread helps with it.
#[derive(Default)]
pub struct Claims {
    counters: Vec<Counter>,
    threads: usize,
}

#[repr(align(64))]
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Claims {
    pub fn new(operations: usize, threads: usize) -> Claims {
        let mut claims = Claims { counters: Vec::new(), threads };
        claims.reset(operations, threads);
        claims
    }

    /// Every counter back to untouched, for `operations` of `threads` (the forward's claims are
    /// reset each step, not allocated again).
    pub fn reset(&mut self, operations: usize, threads: usize) {
        self.counters.clear();
        self.counters.resize_with(operations * threads, Counter::default);
        self.threads = threads;
    }

    /// Operation `i`'s counters (each used by one operation of one [`Pool::run`]).
    pub fn op(&self, i: usize) -> &[Counter] {
        &self.counters[i * self.threads..(i + 1) * self.threads]
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
        self.share_of(n, self.index)
    }

    /// This thread's share of `0..n` in whole units of `unit` (the last may be partial).
    pub fn share_aligned(&self, n: usize, unit: usize) -> Range<usize> {
        self.share_aligned_of(n, unit, self.index)
    }

    /// Thread `index`'s share, as [`Worker::share_aligned`].
    fn share_aligned_of(&self, n: usize, unit: usize, index: usize) -> Range<usize> {
        let units = self.share_of(n.div_ceil(unit), index);
        (units.start * unit).min(n)..(units.end * unit).min(n)
    }

    /// Runs `part(share, j)` for the parts `j` of every thread's share of `0..n` in whole units
    /// of `unit` ([`Worker::share_aligned`]; `parts(len)` of a share of `len`), each part once
    /// over all threads: its own share's parts from the
    /// first, then the others' from their last, until what is left meets what their owners
    /// took. A thread that falls behind (another program on its core, a late start) is helped
    /// instead of waited for at the next barrier. Helpers take from the end so that owner and
    /// helper each still read their weights in order: the two taking turns along the same
    /// runs cut 2-thread products alone in Chromium by a third. `counters` are one
    /// operation's, [`Claims::op`], untouched before.
    pub fn claim(&self, n: usize, unit: usize, counters: &[Counter], parts: impl Fn(usize) -> usize, mut part: impl FnMut(Range<usize>, usize)) {
        assert_eq!(counters.len(), self.count, "one counter per thread");
        for s in (self.index..self.count).chain(0..self.index) {
            let share = self.share_aligned_of(n, unit, s);
            let count = parts(share.len()) as u64;
            // One add a claim on (taken from the front) + (taken from the back) << 32: the
            // adds' order gives every part to exactly one claim, and the first `count` claims
            // are the valid ones.
            let step = if s == self.index { 1 } else { 1 << 32 };
            loop {
                let taken = counters[s].0.fetch_add(step, Ordering::Relaxed);
                let (front, back) = (taken & 0xFFFF_FFFF, taken >> 32);
                if front + back >= count {
                    break;
                }
                part(share.clone(), if s == self.index { front } else { count - 1 - back } as usize);
            }
        }
    }

    /// Thread `index`'s share of `0..n`, as [`Worker::share`].
    fn share_of(&self, n: usize, index: usize) -> Range<usize> {
        let (per, extra) = (n / self.count, n % self.count);
        let start = index * per + index.min(extra);
        start..start + per + usize::from(index < extra)
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

    /// A pointer to element `i`, for writing part of it while other threads write its other
    /// parts (distinct fields or array elements, through the pointer: no reference to the whole).
    pub fn ptr(&self, i: usize) -> *mut T {
        assert!(i < self.len, "shared element {i} out of 0..{}", self.len);
        // SAFETY: in bounds (asserted).
        unsafe { self.ptr.add(i) }
    }

    /// # Safety
    /// No thread writes any of the buffer until the next barrier.
    pub unsafe fn all(&self) -> &[T] {
        std::slice::from_raw_parts(self.ptr, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::{Claims, Pool};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Every part of every share runs once, shares are whole units, and a thread that starts
    /// late is helped: its share's parts run on the others (from its end) while it sleeps.
    #[test]
    fn claims_run_each_part_once_and_help_a_late_thread() {
        let (n, unit, threads) = (1000, 16, 3);
        let parts = |len: usize| len.div_ceil(7);
        let pool = Pool::new(threads).unwrap();
        let claims = Claims::new(1, threads);
        // (share, part) -> runs, and which thread ran it.
        let runs: Vec<AtomicUsize> = (0..threads * 64).map(|_| AtomicUsize::new(0)).collect();
        let by: Vec<AtomicUsize> = (0..threads * 64).map(|_| AtomicUsize::new(usize::MAX)).collect();
        // 63 units of 16 (the last 8 long): 21 a thread.
        let w = |s: usize| (s * 336).min(n)..((s + 1) * 336).min(n);
        pool.run(|wk| {
            if wk.index == 1 {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            wk.claim(n, unit, claims.op(0), parts, |share, j| {
                let s = share.start / 336;
                assert_eq!(share, w(s), "a part comes with its share");
                runs[s * 64 + j].fetch_add(1, Ordering::Relaxed);
                by[s * 64 + j].store(wk.index, Ordering::Relaxed);
            });
        });
        for s in 0..threads {
            let count = parts(w(s).len());
            for j in 0..64 {
                assert_eq!(runs[s * 64 + j].load(Ordering::Relaxed), usize::from(j < count), "share {s} part {j}");
            }
        }
        // Thread 1 slept through its share: the last part went to a helper.
        let last = parts(w(1).len()) - 1;
        assert_ne!(by[64 + last].load(Ordering::Relaxed), 1, "the late thread's last part ran on another thread");
    }
}
