//! The mount's memory limits: a flusher thread that writes dirty files back by age and by
//! threshold and drops clean cached data past the cache size, and the throttle that makes
//! writers wait while dirty data is over its hard limit.
//!
//! Both read the engine's gauges (exact, and free to read) for what the cache holds. Data
//! under writeback still holds memory and counts as dirty until it completes. Files are
//! written back oldest-dirtied first, as the kernel's flusher walks its dirty inode list;
//! clean data past the cache size goes through the engine's scan-resistant reclaim. Lock
//! order: the flusher's state lock is taken alone, never while a filesystem call runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use extentfs::{CacheUsage, ExtentFs, Ino};
use parking_lot::{Condvar, Mutex};
use tracing::{debug, warn};

/// What the flusher keeps the cache within.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Cached file data, clean and dirty, beyond which clean data is dropped.
    pub cache_bytes: u64,
    /// Dirty data beyond which writers wait for writeback.
    pub dirty_bytes: u64,
    /// Dirty data beyond which the flusher starts writing back.
    pub dirty_background_bytes: u64,
    /// Dirty data older than this is written back.
    pub dirty_expire: Duration,
}

impl Limits {
    /// Limits for a cache of `cache_bytes` with `dirty_bytes` of dirty data at most: background
    /// writeback from half the dirty limit, as the kernel's 10% / 20% ratios.
    pub fn new(cache_bytes: u64, dirty_bytes: u64, dirty_expire: Duration) -> Self {
        let dirty_bytes = dirty_bytes.min(cache_bytes).max(64 << 10);
        Self {
            cache_bytes,
            dirty_bytes,
            dirty_background_bytes: dirty_bytes / 2,
            dirty_expire,
        }
    }
}

/// Counters a `stats` request reads.
#[derive(Default)]
pub struct FlusherStats {
    /// Flusher passes run.
    pub passes: AtomicU64,
    /// Files written back because their dirty data expired.
    pub expired_files: AtomicU64,
    /// Files written back because dirty data passed the background threshold.
    pub threshold_files: AtomicU64,
    /// Writes that had to wait for writeback.
    pub throttled_writes: AtomicU64,
    /// Time writers spent waiting, in microseconds.
    pub throttled_micros: AtomicU64,
    /// Clean cached bytes dropped to stay within the cache size.
    pub reclaimed_bytes: AtomicU64,
    /// Writeback errors the flusher met (also recorded on the files for fsync).
    pub errors: AtomicU64,
}

#[derive(Default)]
struct State {
    /// When each file with dirty data was first dirtied since it was last written back.
    dirtied: HashMap<Ino, Instant>,
    /// A pass is wanted now rather than at the next tick.
    kick: bool,
    /// The last pass left the cache over a limit with writeback under way: look again soon.
    soon: bool,
    stop: bool,
}

struct Shared {
    fs: Arc<ExtentFs>,
    limits: Limits,
    state: Mutex<State>,
    wake: Condvar,
    progress: Condvar,
    stats: FlusherStats,
}

/// The flusher thread and its throttle.
pub struct Flusher {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// How often the flusher looks when nobody asks it to.
const TICK: Duration = Duration::from_millis(500);
/// How soon it looks again while writeback it started is still freeing memory.
const SOON: Duration = Duration::from_millis(10);

impl Flusher {
    /// Starts the flusher for `fs`.
    pub fn start(fs: Arc<ExtentFs>, limits: Limits) -> std::io::Result<Arc<Self>> {
        let shared = Arc::new(Shared {
            fs,
            limits,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            progress: Condvar::new(),
            stats: FlusherStats::default(),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("iomapfs-flusher".into())
            .spawn(move || s.run())?;
        Ok(Arc::new(Self {
            shared,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.shared.limits
    }

    /// The counters.
    pub fn stats(&self) -> &FlusherStats {
        &self.shared.stats
    }

    /// Notes that `ino` was just written, and waits while dirty data is over the hard limit.
    /// Call with no filesystem lock held.
    pub fn wrote(&self, ino: Ino) {
        let s = &*self.shared;
        s.state
            .lock()
            .dirtied
            .entry(ino)
            .or_insert_with(Instant::now);
        let over = |s: &Shared| {
            let u = s.fs.cache().usage();
            let dirty = u.dirty_bytes + u.writeback_bytes;
            (dirty, u.cached_bytes)
        };
        let (dirty, cached) = over(s);
        if dirty > s.limits.dirty_background_bytes || cached > s.limits.cache_bytes {
            s.kick();
        }
        if dirty <= s.limits.dirty_bytes {
            return;
        }
        let start = Instant::now();
        s.stats.throttled_writes.fetch_add(1, Ordering::Relaxed);
        loop {
            {
                let mut st = s.state.lock();
                if st.stop {
                    break;
                }
                st.kick = true;
                s.wake.notify_one();
                s.progress.wait_for(&mut st, TICK);
            }
            if over(s).0 <= s.limits.dirty_bytes {
                break;
            }
        }
        s.stats
            .throttled_micros
            .fetch_add(start.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    /// Notes that data was read (and may have been added to the cache).
    pub fn read(&self) {
        let s = &*self.shared;
        if s.fs.cache().usage().cached_bytes > s.limits.cache_bytes {
            s.kick();
        }
    }

    /// Stops the thread (at unmount, before the final writeback).
    pub fn stop(&self) {
        {
            let mut st = self.shared.state.lock();
            st.stop = true;
            self.shared.wake.notify_all();
            self.shared.progress.notify_all();
        }
        if let Some(t) = self.thread.lock().take() {
            if t.join().is_err() {
                warn!("the flusher thread panicked");
            }
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Marks the flusher stopped when its thread ends, however it ends: a writer must never wait
/// for a flusher that is gone.
struct Stopped<'a>(&'a Shared);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state.lock();
        st.stop = true;
        self.0.progress.notify_all();
    }
}

impl Shared {
    /// Asks for a pass now.
    fn kick(&self) {
        let mut st = self.state.lock();
        if !st.kick {
            st.kick = true;
            self.wake.notify_one();
        }
    }

    fn run(&self) {
        let _stopped = Stopped(self);
        loop {
            {
                let mut st = self.state.lock();
                if !st.kick && !st.stop {
                    let timeout = if st.soon { SOON } else { TICK };
                    self.wake.wait_for(&mut st, timeout);
                }
                if st.stop {
                    return;
                }
                st.kick = false;
            }
            self.pass();
        }
    }

    /// One look at the cache: expired files first, then oldest files until dirty data is
    /// under the background threshold, then clean data past the cache size.
    fn pass(&self) {
        self.stats.passes.fetch_add(1, Ordering::Relaxed);
        let usage = self.fs.cache_usage();
        let now = Instant::now();
        let mut oldest: Vec<(Instant, Ino)> = {
            let st = self.state.lock();
            st.dirtied.iter().map(|(&ino, &t)| (t, ino)).collect()
        };
        oldest.sort_unstable();
        let mut dirty = usage.dirty_bytes;
        for (at, ino) in oldest {
            let expired = now.duration_since(at) >= self.limits.dirty_expire;
            let over = dirty > self.limits.dirty_background_bytes;
            if !expired && !over {
                break;
            }
            self.state.lock().dirtied.remove(&ino);
            let counter = if expired {
                &self.stats.expired_files
            } else {
                &self.stats.threshold_files
            };
            counter.fetch_add(1, Ordering::Relaxed);
            match self.fs.writeback_file(ino) {
                // Dirty folios count whole: ask the gauge what is left rather than subtract
                // the blocks written.
                Ok(_) => dirty = self.fs.cache().usage().dirty_bytes,
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    debug!(ino, "background writeback failed: {e}");
                }
            }
        }
        if dirty > self.limits.dirty_background_bytes {
            // Dirty data of files the writers did not note (zeroing): any file will do.
            let excess = dirty - self.limits.dirty_background_bytes / 2;
            if let Err(e) = self.fs.writeback_background(excess) {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                debug!("background writeback failed: {e}");
            }
        }
        if usage.cached_bytes > self.limits.cache_bytes {
            // Drop down to 90% so that a cache at its limit is not trimmed on every pass.
            let want = usage.cached_bytes - self.limits.cache_bytes / 10 * 9;
            let freed = self.fs.release_clean(want);
            self.stats
                .reclaimed_bytes
                .fetch_add(freed, Ordering::Relaxed);
        }
        let after: CacheUsage = self.fs.cache_usage();
        let over = after.dirty_bytes + after.writeback_bytes > self.limits.dirty_background_bytes
            || after.cached_bytes > self.limits.cache_bytes;
        // Writeback completing is what frees the rest: look again soon.
        self.state.lock().soon = over && (after.writeback_bytes > 0 || after.dirty_bytes > 0);
        self.progress.notify_all();
    }
}
