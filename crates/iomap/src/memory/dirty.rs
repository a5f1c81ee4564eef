//! Memory limits and dirty throttling, after Linux's `mm/page-writeback.c`.
//!
//! Dirty data (dirty folios and folios under writeback, counted whole) is held between two
//! thresholds. Below the midpoint of the background threshold and the hard limit writers run
//! free; from the background threshold the flusher writes back. Between the midpoint and the
//! limit each writer pauses in proportion to what it dirtied, at a rate that falls from about
//! twice the measured writeback bandwidth at the midpoint to nothing at the limit (the
//! kernel's cubic position ratio around the setpoint), so writers together dirty data about as
//! fast as it is cleaned, and each pays for its own share: a writer that dirties little waits
//! little. At the limit writers wait for writeback to complete. Pauses are bounded, and every
//! completion of writeback wakes the writers waiting at the limit.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::stats::{CacheStats, GaugeSnapshot};

/// The longest single pause of a throttled writer (the kernel's `MAX_PAUSE`).
const MAX_PAUSE: Duration = Duration::from_millis(200);
/// Pauses shorter than this are saved up rather than slept.
const MIN_PAUSE: Duration = Duration::from_millis(1);
/// The writeback bandwidth assumed before any is measured.
const INITIAL_BANDWIDTH: f64 = 100.0 * (1 << 20) as f64;
/// How often the bandwidth estimate is updated.
const BANDWIDTH_PERIOD: Duration = Duration::from_millis(200);

/// What a cache keeps its memory within, the kernel's `vm.dirty_*` settings and a bound on
/// cached data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Cached folio bytes, clean and dirty, the cache keeps within by evicting clean folios
    /// (`u64::MAX`: no bound).
    pub budget_bytes: u64,
    /// Dirty and writeback bytes at which writers wait for writeback (the hard limit).
    pub dirty_bytes: u64,
    /// Dirty bytes from which the flusher writes back.
    pub dirty_background_bytes: u64,
    /// Dirty data older than this is written back by the flusher (default 30 s).
    pub dirty_expire: Duration,
    /// How often the flusher looks when nothing wakes it (default 5 s).
    pub writeback_interval: Duration,
}

impl Default for MemoryLimits {
    /// No bound on cached or dirty data; 30 s expiry.
    fn default() -> Self {
        Self {
            budget_bytes: u64::MAX,
            dirty_bytes: u64::MAX,
            dirty_background_bytes: u64::MAX,
            dirty_expire: Duration::from_secs(30),
            writeback_interval: Duration::from_secs(5),
        }
    }
}

impl MemoryLimits {
    /// Limits for a cache of `budget_bytes`: dirty data up to 20% of it, background
    /// writeback from 10%, as the kernel's default ratios of memory.
    pub fn with_budget(budget_bytes: u64) -> Self {
        let dirty = (budget_bytes / 5).max(256 << 10).min(budget_bytes);
        Self {
            budget_bytes,
            dirty_bytes: dirty,
            dirty_background_bytes: dirty / 2,
            ..Self::default()
        }
    }

    /// Checks that the thresholds are in order: background ≤ hard ≤ budget, none zero.
    pub fn check(&self) -> Result<()> {
        if self.dirty_background_bytes == 0 || self.budget_bytes == 0 {
            return Err(Error::InvalidArgument(
                "memory limits must be greater than zero".into(),
            ));
        }
        if self.dirty_background_bytes > self.dirty_bytes || self.dirty_bytes > self.budget_bytes {
            return Err(Error::InvalidArgument(format!(
                "dirty background threshold {} must not exceed the dirty limit {}, nor that the \
                 budget {}",
                self.dirty_background_bytes, self.dirty_bytes, self.budget_bytes
            )));
        }
        if self.writeback_interval.is_zero() {
            return Err(Error::InvalidArgument(
                "the writeback interval must be greater than zero".into(),
            ));
        }
        Ok(())
    }

    /// Whether dirty data is bounded.
    pub fn bounds_dirty(&self) -> bool {
        self.dirty_bytes != u64::MAX
    }
}

thread_local! {
    /// Bytes this thread dirtied since it last paid for them (the kernel's
    /// `current->nr_dirtied`).
    static DIRTIED: Cell<u64> = const { Cell::new(0) };
}

/// The throttle's shared state.
pub(crate) struct DirtyThrottle {
    limits: Mutex<MemoryLimits>,
    budget: AtomicU64,
    dirty: AtomicU64,
    background: AtomicU64,
    /// Whether a flusher runs: without one nothing cleans dirty data, so nobody is throttled.
    flusher: AtomicBool,
    /// Writers waiting at the hard limit.
    waiters: AtomicUsize,
    wait: Mutex<()>,
    progress: Condvar,
    /// Bytes whose writeback completed, ever.
    completed: AtomicU64,
    bandwidth: Mutex<Bandwidth>,
}

struct Bandwidth {
    bytes_per_sec: f64,
    at: Instant,
    completed: u64,
}

/// What [`DirtyThrottle::balance`] decided.
pub(crate) enum Verdict {
    /// Dirty data is low: go on.
    Free,
    /// Over the background threshold: wake the flusher, then pause this long (maybe zero).
    Pause(Duration),
    /// At the hard limit: wake the flusher and wait for writeback.
    Wait,
}

impl Default for DirtyThrottle {
    fn default() -> Self {
        let l = MemoryLimits::default();
        Self {
            limits: Mutex::new(l),
            budget: AtomicU64::new(l.budget_bytes),
            dirty: AtomicU64::new(l.dirty_bytes),
            background: AtomicU64::new(l.dirty_background_bytes),
            flusher: AtomicBool::new(false),
            waiters: AtomicUsize::new(0),
            wait: Mutex::new(()),
            progress: Condvar::new(),
            completed: AtomicU64::new(0),
            bandwidth: Mutex::new(Bandwidth {
                bytes_per_sec: INITIAL_BANDWIDTH,
                at: Instant::now(),
                completed: 0,
            }),
        }
    }
}

impl DirtyThrottle {
    pub(crate) fn limits(&self) -> MemoryLimits {
        *self.limits.lock()
    }

    pub(crate) fn set_limits(&self, l: MemoryLimits) {
        *self.limits.lock() = l;
        self.budget.store(l.budget_bytes, Ordering::Relaxed);
        self.dirty.store(l.dirty_bytes, Ordering::Relaxed);
        self.background
            .store(l.dirty_background_bytes, Ordering::Relaxed);
        self.wake_all();
    }

    pub(crate) fn budget(&self) -> u64 {
        self.budget.load(Ordering::Relaxed)
    }

    pub(crate) fn set_flusher(&self, running: bool) {
        self.flusher.store(running, Ordering::Release);
        self.wake_all();
    }

    pub(crate) fn flusher_running(&self) -> bool {
        self.flusher.load(Ordering::Acquire)
    }

    /// Writeback of `bytes` completed: counted for the bandwidth estimate, and writers
    /// waiting at the limit look again.
    pub(crate) fn written_back(&self, bytes: u64) {
        self.completed.fetch_add(bytes, Ordering::Relaxed);
        if self.waiters.load(Ordering::Acquire) > 0 {
            self.wake_all();
        }
    }

    pub(crate) fn wake_all(&self) {
        let _g = self.wait.lock();
        self.progress.notify_all();
    }

    /// Writeback bandwidth, bytes per second, updated at most every 200 ms as an average
    /// weighted to the recent past.
    fn bandwidth(&self) -> f64 {
        let mut b = self.bandwidth.lock();
        let now = Instant::now();
        let elapsed = now.duration_since(b.at);
        if elapsed >= BANDWIDTH_PERIOD {
            let done = self.completed.load(Ordering::Relaxed);
            let sample = (done - b.completed) as f64 / elapsed.as_secs_f64();
            // Idle periods say nothing about the device: keep the estimate.
            if done > b.completed {
                b.bytes_per_sec = (b.bytes_per_sec * 3.0 + sample) / 4.0;
            }
            b.at = now;
            b.completed = done;
        }
        b.bytes_per_sec.max(1.0)
    }

    /// Decides what a writer that just dirtied `dirtied` bytes does, given the cache's gauges
    /// (read only when dirty data is bounded).
    pub(crate) fn balance(&self, dirtied: u64, gauges: impl FnOnce() -> GaugeSnapshot) -> Verdict {
        let hard = self.dirty.load(Ordering::Relaxed);
        if hard == u64::MAX || !self.flusher_running() {
            return Verdict::Free;
        }
        let g = gauges();
        let owed = DIRTIED.with(|d| {
            d.set(d.get() + dirtied);
            d.get()
        });
        let bg = self.background.load(Ordering::Relaxed).min(hard);
        let nr = g.dirty_bytes + g.writeback_bytes;
        let freerun = bg + (hard - bg) / 2;
        if nr <= freerun {
            DIRTIED.with(|d| d.set(0));
            return if nr > bg {
                Verdict::Pause(Duration::ZERO)
            } else {
                Verdict::Free
            };
        }
        if nr >= hard {
            DIRTIED.with(|d| d.set(0));
            return Verdict::Wait;
        }
        let setpoint = freerun + (hard - freerun) / 2;
        let x = (setpoint as f64 - nr as f64) / ((hard - setpoint).max(1) as f64);
        let pos_ratio = (1.0 + x * x * x).clamp(0.0, 2.0);
        let rate = self.bandwidth() * pos_ratio;
        let pause = if rate > 0.0 {
            Duration::from_secs_f64((owed as f64 / rate).min(MAX_PAUSE.as_secs_f64()))
        } else {
            MAX_PAUSE
        };
        if pause < MIN_PAUSE {
            // Too short to sleep: owed until it adds up.
            return Verdict::Pause(Duration::ZERO);
        }
        DIRTIED.with(|d| d.set(0));
        Verdict::Pause(pause)
    }

    /// Pauses a writer for `pause` (woken early by a change of limits or the flusher
    /// stopping).
    pub(crate) fn pause(&self, pause: Duration, stats: &CacheStats) {
        let start = Instant::now();
        let mut g = self.wait.lock();
        let deadline = start + pause;
        while Instant::now() < deadline && self.flusher_running() {
            self.progress.wait_until(&mut g, deadline);
        }
        drop(g);
        stats.throttled_writes.add(1);
        stats
            .throttled_micros
            .add(start.elapsed().as_micros() as u64);
    }

    /// Waits at the hard limit until dirty data (from `gauges()`) is below it, the flusher
    /// stops, or the limit is raised; `kick` wakes the flusher each time round. A writer also
    /// goes on when a whole pause passes with no writeback in flight: the dirty data is then
    /// data the flusher cannot write (a mapping without writeback ops), and waiting longer
    /// would wait forever.
    pub(crate) fn wait_below(
        &self,
        stats: &CacheStats,
        gauges: impl Fn() -> GaugeSnapshot,
        kick: impl Fn(),
    ) {
        let start = Instant::now();
        let under = || {
            let g = gauges();
            g.dirty_bytes + g.writeback_bytes < self.dirty.load(Ordering::Relaxed)
        };
        self.waiters.fetch_add(1, Ordering::AcqRel);
        loop {
            kick();
            let mut g = self.wait.lock();
            // Checked under the lock the wakers take: a completion cannot slip in between.
            if under() || !self.flusher_running() {
                break;
            }
            let timed_out = self.progress.wait_for(&mut g, MAX_PAUSE).timed_out();
            drop(g);
            if under() || (timed_out && gauges().writeback_bytes == 0) {
                break;
            }
        }
        self.waiters.fetch_sub(1, Ordering::AcqRel);
        stats.throttled_writes.add(1);
        stats
            .throttled_micros
            .add(start.elapsed().as_micros() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauges(dirty: u64) -> GaugeSnapshot {
        GaugeSnapshot {
            dirty_bytes: dirty,
            ..GaugeSnapshot::default()
        }
    }

    #[test]
    fn pauses_grow_with_the_excess_and_stop_at_the_limit() {
        let t = DirtyThrottle::default();
        t.set_limits(MemoryLimits::with_budget(100 << 20)); // dirty 20 MiB, background 10 MiB
        t.set_flusher(true);
        let pause_at = |dirty: u64| match t.balance(1 << 20, || gauges(dirty)) {
            Verdict::Pause(p) => p,
            Verdict::Free => Duration::ZERO,
            Verdict::Wait => Duration::MAX,
        };
        assert_eq!(pause_at(5 << 20), Duration::ZERO);
        assert!(matches!(
            t.balance(1 << 20, || gauges(12 << 20)),
            Verdict::Pause(p) if p.is_zero()
        ));
        let low = pause_at(16 << 20);
        let high = pause_at(19 << 20);
        assert!(low > Duration::ZERO && high > low, "{low:?} {high:?}");
        assert!(high <= MAX_PAUSE);
        assert!(matches!(
            t.balance(1 << 20, || gauges(20 << 20)),
            Verdict::Wait
        ));
        t.set_flusher(false);
        assert!(matches!(
            t.balance(1 << 20, || gauges(30 << 20)),
            Verdict::Free
        ));
    }

    #[test]
    fn limits_out_of_order_are_refused() {
        let mut l = MemoryLimits::with_budget(1 << 30);
        assert!(l.check().is_ok());
        l.dirty_background_bytes = l.dirty_bytes + 1;
        assert!(l.check().is_err());
        let mut l = MemoryLimits::with_budget(1 << 30);
        l.dirty_bytes = l.budget_bytes + 1;
        assert!(l.check().is_err());
        assert!(MemoryLimits::with_budget(0).check().is_err());
    }
}
