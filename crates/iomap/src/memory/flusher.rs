//! The flusher: a thread per cache that writes dirty data back by age and by threshold and
//! keeps cached data within the budget, the kernel's per-device writeback worker with
//! kswapd's background reclaim.
//!
//! Each pass writes back, oldest-dirtied mapping first, every mapping whose dirty data is
//! older than the expiry, then more while dirty data is over the background threshold (a
//! slice of each mapping at a time, so one large file does not hold the others back), then
//! evicts clean folios until the cache is under its budget with some room. A pass runs every
//! writeback interval, or at once when a writer or an allocation asks for one. Mappings are
//! written back through the [`WritebackOps`] set on them with
//! [`crate::Mapping::set_writeback_ops`]; a registered mapping without one is left to its
//! filesystem. Errors are recorded on the mappings for fsync, as background writeback does.

use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};
use tracing::debug;

use crate::cache::PageCache;
use crate::writeback::{writepages, WritebackControl};

/// Dirty bytes written back from one mapping at a time when over the background threshold
/// (the kernel's `MAX_WRITEBACK_PAGES` of 4 KiB pages).
const SLICE: u64 = 4 << 20;

#[derive(Default)]
struct State {
    kick: bool,
    stop: bool,
    /// Passes completed.
    passes: u64,
    /// A pass is running.
    running: bool,
    /// The thread is running (kept here so that nothing takes the thread lock with this
    /// one held).
    started: bool,
}

/// The flusher's thread and how to wake it.
#[derive(Default)]
pub(crate) struct FlusherHandle {
    state: Mutex<State>,
    wake: Condvar,
    done: Condvar,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl FlusherHandle {
    /// Starts the thread for `cache` (held weakly: the cache going away ends it).
    pub(crate) fn start(self: &Arc<Self>, cache: &Arc<PageCache>) -> std::io::Result<()> {
        let mut thread = self.thread.lock();
        if thread.is_some() {
            if self.state.lock().started {
                return Ok(());
            }
            // The thread ended (a filesystem callback panicked): start another.
            if let Some(t) = thread.take() {
                if t.join().is_err() {
                    debug!("the flusher thread had panicked");
                }
            }
        }
        {
            let mut st = self.state.lock();
            st.stop = false;
            st.started = true;
        }
        let weak: Weak<PageCache> = Arc::downgrade(cache);
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("iomap-flusher".into())
            .spawn(move || me.run(&weak));
        match spawned {
            Ok(t) => {
                *thread = Some(t);
                Ok(())
            }
            Err(e) => {
                self.state.lock().started = false;
                Err(e)
            }
        }
    }

    /// Asks for a pass now.
    pub(crate) fn kick(&self) {
        let mut st = self.state.lock();
        if !st.kick {
            st.kick = true;
            self.wake.notify_one();
        }
    }

    /// Asks for a pass and waits until one that started after the call has finished; false
    /// when no flusher runs.
    pub(crate) fn pass_and_wait(&self) -> bool {
        let mut st = self.state.lock();
        if st.stop || !st.started {
            return false;
        }
        // A pass running now may have looked already: wait for the one after it.
        let target = st.passes + 1 + u64::from(st.running);
        st.kick = true;
        self.wake.notify_one();
        while st.passes < target && !st.stop {
            self.done.wait(&mut st);
        }
        !st.stop
    }

    /// Stops the thread and waits for it (unless called from it).
    pub(crate) fn stop(&self) {
        {
            let mut st = self.state.lock();
            st.stop = true;
            self.wake.notify_all();
            self.done.notify_all();
        }
        let thread = self.thread.lock().take();
        if let Some(t) = thread {
            if t.thread().id() != std::thread::current().id() && t.join().is_err() {
                debug!("the flusher thread panicked");
            }
        }
    }

    fn run(&self, cache: &Weak<PageCache>) {
        let _ended = Ended {
            handle: self,
            cache,
        };
        loop {
            let interval = match cache.upgrade() {
                Some(c) => c.limits().writeback_interval,
                None => break,
            };
            {
                let mut st = self.state.lock();
                if !st.kick && !st.stop {
                    self.wake.wait_for(&mut st, interval);
                }
                if st.stop {
                    break;
                }
                st.kick = false;
                st.running = true;
            }
            let Some(cache) = cache.upgrade() else {
                break;
            };
            pass(&cache);
            let mut st = self.state.lock();
            st.running = false;
            st.passes += 1;
            self.done.notify_all();
        }
    }
}

/// Marks the flusher ended however its thread ends (a panicking filesystem callback
/// included), so that no writer waits for it and no pass is waited for.
struct Ended<'a> {
    handle: &'a FlusherHandle,
    cache: &'a Weak<PageCache>,
}

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        let mut st = self.handle.state.lock();
        st.stop = true;
        st.started = false;
        st.running = false;
        self.handle.done.notify_all();
        drop(st);
        if let Some(c) = self.cache.upgrade() {
            c.throttle().set_flusher(false);
        }
    }
}

/// One pass: expired mappings, then mappings over the background threshold, then clean data
/// past the budget.
fn pass(cache: &PageCache) {
    let limits = cache.limits();
    let stats = cache.stats();
    stats.flusher_passes.add(1);
    let now = Instant::now();
    let mut dirty: Vec<_> = cache
        .reclaimer()
        .live()
        .into_iter()
        .filter_map(|(_, m)| {
            let at = m.dirtied_when()?;
            let ops = m.writeback_ops()?;
            Some((at, m, ops))
        })
        .collect();
    dirty.sort_by_key(|(at, ..)| *at);
    let over = |cache: &PageCache| {
        let g = cache.usage();
        g.dirty_bytes > limits.dirty_background_bytes
    };
    // Expired data first, whole files, oldest first.
    for (at, m, ops) in &dirty {
        if now.duration_since(*at) < limits.dirty_expire {
            break;
        }
        stats.expired_writebacks.add(1);
        if let Err(e) = writepages(m, ops, &mut WritebackControl::background(u64::MAX)) {
            debug!("background writeback failed: {e}");
        }
        // Dirtied again while it was written back: it waits a whole expiry from now, as the
        // kernel's redirty_tail does, rather than being written on every pass.
        m.redirtied_now();
    }
    // Then a slice of each file in turn while over the threshold.
    while over(cache) {
        let mut wrote = 0;
        for (_, m, ops) in &dirty {
            if !over(cache) {
                break;
            }
            let mut wbc = WritebackControl::background(SLICE);
            stats.threshold_writebacks.add(1);
            if let Err(e) = writepages(m, ops, &mut wbc) {
                debug!("background writeback failed: {e}");
            }
            wrote += wbc.written_bytes;
        }
        if wrote == 0 {
            break; // all in flight already, or failing: completions will wake the writers
        }
    }
    let budget = limits.budget_bytes;
    let cached = cache.usage().cached_bytes;
    if budget != u64::MAX {
        if cached > budget {
            // Down to 15/16 of the budget, so allocations find room without reclaiming.
            cache.reclaim(cached - budget / 16 * 15);
        }
        // Free memory beyond what a busy cache reuses between passes (after files were
        // truncated or dropped, say) goes back to the system rather than wait for the next
        // allocation over the budget.
        cache.trim_pool(budget / 8);
    }
}
