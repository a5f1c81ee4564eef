//! The page cache as a whole: configuration shared by every mapping, and its counters.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::mapping::Mapping;
use crate::memory::{
    BufPool, DirtyThrottle, FlusherHandle, MemoryLimits, PoolStats, Reclaimer, Verdict,
};
use crate::stats::{CacheGauges, CacheStats, GaugeSnapshot};
use crate::writeback::CompletionQueue;
use crate::writeback::{sync_mappings, WritebackOps};

/// Sizes that shape every folio of a cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// The base page size: the smallest folio, and the unit folio indices count in.
    pub page_size: usize,
    /// The largest folio. Large writes and reads use folios up to this size.
    pub max_folio_size: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            page_size: 4096,
            max_folio_size: 2 << 20,
        }
    }
}

/// A page cache: the configuration and counters every [`crate::Mapping`] of it shares.
pub struct PageCache {
    config: CacheConfig,
    stats: CacheStats,
    gauges: CacheGauges,
    reclaimer: Reclaimer,
    pool: Arc<BufPool>,
    throttle: DirtyThrottle,
    flusher: Arc<FlusherHandle>,
    completions: Arc<CompletionQueue>,
}

impl PageCache {
    /// A cache with `config`, checked: sizes are powers of two, pages 512 B..64 KiB, and the
    /// largest folio at least a page and at most 1 GiB.
    pub fn new(config: CacheConfig) -> Result<Arc<Self>> {
        let CacheConfig {
            page_size,
            max_folio_size,
        } = config;
        if !page_size.is_power_of_two() || !(512..=65536).contains(&page_size) {
            return Err(Error::InvalidArgument(format!(
                "page size {page_size} is not a power of two from 512 to 65536"
            )));
        }
        if !max_folio_size.is_power_of_two()
            || max_folio_size < page_size
            || max_folio_size > 1 << 30
        {
            return Err(Error::InvalidArgument(format!(
                "maximum folio size {max_folio_size} is not a power of two from the page size \
                 {page_size} to 1 GiB"
            )));
        }
        Ok(Arc::new(Self {
            config,
            stats: CacheStats::default(),
            gauges: CacheGauges::default(),
            reclaimer: Reclaimer::default(),
            // Folios are at least a block, and blocks may be up to 64 KiB.
            pool: Arc::new(BufPool::new(page_size, max_folio_size.max(65536))),
            throttle: DirtyThrottle::default(),
            flusher: Arc::default(),
            completions: CompletionQueue::new(),
        }))
    }

    /// The configuration.
    pub fn config(&self) -> CacheConfig {
        self.config
    }

    /// The counters.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// What the cache holds now: folios, and bytes cached, dirty and under writeback.
    pub fn usage(&self) -> GaugeSnapshot {
        self.gauges.snapshot()
    }

    pub(crate) fn gauges(&self) -> &CacheGauges {
        &self.gauges
    }

    /// Lets [`Self::reclaim`] take folios from `mapping`, one of this cache's.
    pub fn register(&self, mapping: &Arc<Mapping>) {
        debug_assert!(
            std::ptr::eq(&**mapping.cache(), self),
            "a mapping of another cache"
        );
        self.reclaimer.register(mapping);
    }

    /// Bounds the free folio memory kept resident for reuse (64 MiB by default; the budget
    /// once one is set with [`Self::set_limits`], which covers it).
    pub fn set_pool_max_bytes(&self, bytes: u64) {
        self.pool.set_max_bytes(bytes);
    }

    /// Gives free folio memory past `bytes` back to the kernel (see `FrameArena::trim`).
    pub(crate) fn trim_pool(&self, bytes: u64) {
        self.pool.shrink_to(bytes);
    }

    pub(crate) fn pool(&self) -> &Arc<BufPool> {
        &self.pool
    }

    /// What the pool of folio memory has done and holds.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Evicts about `want_bytes` of clean folios from the registered mappings, scan
    /// resistantly (see [`Reclaimer`]); returns the bytes evicted.
    pub fn reclaim(&self, want_bytes: u64) -> u64 {
        self.reclaim_scanning(want_bytes, u64::MAX, true)
    }

    fn reclaim_scanning(&self, want_bytes: u64, max_scan: u64, wait: bool) -> u64 {
        let folios = self.gauges.snapshot().folios;
        let freed = self.reclaimer.reclaim(want_bytes, folios, max_scan, wait);
        if freed > 0 {
            self.stats.reclaims.add(1);
            self.stats.reclaimed_bytes.add(freed);
        }
        freed
    }

    pub(crate) fn reclaimer(&self) -> &Reclaimer {
        &self.reclaimer
    }

    // ---- memory limits ----

    /// Sets the budget and dirty limits (checked: see [`MemoryLimits::check`]). Folio
    /// allocations past the budget evict clean folios; writers are throttled by the dirty
    /// limits while a flusher runs ([`Self::start_flusher`]).
    pub fn set_limits(&self, limits: MemoryLimits) -> Result<()> {
        limits.check()?;
        self.throttle.set_limits(limits);
        if limits.budget_bytes != u64::MAX {
            // The budget covers the pool's free memory too (see `after_add`): it may keep as
            // much as fits in it.
            self.pool.set_max_bytes(limits.budget_bytes);
            self.flusher.kick();
        }
        Ok(())
    }

    /// The limits in force.
    pub fn limits(&self) -> MemoryLimits {
        self.throttle.limits()
    }

    pub(crate) fn throttle(&self) -> &DirtyThrottle {
        &self.throttle
    }

    /// Starts the cache's flusher thread (see the `memory::flusher` module): dirty data is
    /// written back by age and threshold, and writers are throttled at the dirty limits.
    /// Starting it twice is harmless.
    pub fn start_flusher(self: &Arc<Self>) -> Result<()> {
        self.flusher.start(self).map_err(Error::Io)?;
        self.throttle.set_flusher(true);
        Ok(())
    }

    /// Stops the flusher thread; throttled writers go on.
    pub fn stop_flusher(&self) {
        self.throttle.set_flusher(false);
        self.flusher.stop();
    }

    /// Wakes the flusher for a pass now.
    pub fn kick_flusher(&self) {
        self.flusher.kick();
    }

    /// Runs a flusher pass now and waits for it: for sync, and for tests to watch what a pass
    /// does. False when no flusher runs.
    pub fn flush_pass(&self) -> bool {
        self.flusher.pass_and_wait()
    }

    /// Data-integrity writeback of every registered mapping that has writeback ops, then a
    /// flush of each device: the data half of `sync(2)`. Returns the first error.
    pub fn sync_all(&self) -> Result<()> {
        let files: Vec<(Arc<Mapping>, Arc<dyn WritebackOps>)> = self
            .reclaimer
            .live()
            .into_iter()
            .filter_map(|(_, m)| m.writeback_ops().map(|ops| (m, ops)))
            .collect();
        sync_mappings(files.iter().map(|(m, ops)| (m, ops)))
    }

    /// Keeps the cache within its budget after a folio was added. Folio memory in use stays
    /// within the budget, and with the free memory the pool keeps resident for reuse, within
    /// a sixteenth more. When either is passed, clean folios are evicted until those in use
    /// are a reserve below the budget (their frames go back to the pool, so the next folios
    /// reuse that memory instead of faulting in fresh memory), and free memory past what then
    /// fits is given back. Looks at a bounded number of folios. Called with no shard lock
    /// held; the new folio is locked, so it is not a candidate.
    pub(crate) fn after_add(&self) {
        let budget = self.throttle.budget();
        if budget == u64::MAX {
            return;
        }
        // Room for free memory in runs of other sizes than the next folios want: folio sizes
        // follow the I/O, and giving back each run that does not fit at once would fault in
        // fresh memory for nearly every folio.
        let slack = budget / 16;
        let g = self.gauges.snapshot();
        if g.cached_bytes <= budget && g.cached_bytes + self.pool.held_bytes() <= budget + slack {
            return;
        }
        // A 64th of the budget, at least 1 MiB (or an eighth of a small budget), at most 4 MiB.
        let reserve = (budget / 64).clamp((budget / 8).min(1 << 20), 4 << 20);
        let target = budget - reserve;
        if g.cached_bytes > target {
            // Dirty and in-flight data is not reclaimable: when it is what fills the cache, a
            // scan finds nothing, and writeback is what has to happen.
            let clean = g
                .cached_bytes
                .saturating_sub(g.dirty_bytes + g.writeback_bytes);
            let want = (g.cached_bytes - target).min(clean);
            let freed = if want == 0 {
                0
            } else {
                self.stats.direct_reclaims.add(1);
                let page = self.config.page_size as u64;
                // Another thread reclaiming is freeing memory already: no need to queue
                // behind it.
                self.reclaim_scanning(want, 4 * want.div_ceil(page) + 64, false)
            };
            if freed < want || want == 0 {
                self.flusher.kick();
            }
        }
        let cached = self.gauges.snapshot().cached_bytes;
        self.pool.shrink_to((budget + slack).saturating_sub(cached));
    }

    /// The dirty throttle, the kernel's `balance_dirty_pages`: called by writers after
    /// dirtying `dirtied` bytes, with no folio lock held. May pause the caller.
    pub(crate) fn balance_dirty(&self, dirtied: u64) {
        match self.throttle.balance(dirtied, || self.gauges.snapshot()) {
            Verdict::Free => {}
            Verdict::Pause(p) => {
                self.flusher.kick();
                if !p.is_zero() {
                    self.throttle.pause(p, &self.stats);
                }
            }
            Verdict::Wait => self.throttle.wait_below(
                &self.stats,
                || self.gauges.snapshot(),
                || self.flusher.kick(),
            ),
        }
    }

    pub(crate) fn completions(&self) -> &Arc<CompletionQueue> {
        &self.completions
    }

    /// Holds ioend completion work until the returned guard drops, then lets it run as one
    /// batch: for watching completions merge (R17) deterministically.
    pub fn hold_completions(&self) -> CompletionHold<'_> {
        self.completions.set_held(true);
        CompletionHold(self)
    }

    /// Waits until all queued ioend completion work has run.
    pub fn drain_completions(&self) {
        self.completions.drain();
    }
}

impl Drop for PageCache {
    fn drop(&mut self) {
        self.flusher.stop();
        self.completions.shutdown();
    }
}

/// Holds ioend completion work while alive; see [`PageCache::hold_completions`].
pub struct CompletionHold<'a>(&'a PageCache);

impl Drop for CompletionHold<'_> {
    fn drop(&mut self) {
        self.0.completions.set_held(false);
    }
}
