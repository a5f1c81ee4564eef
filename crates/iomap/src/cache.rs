//! The page cache as a whole: configuration shared by every mapping, and its counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::mapping::Mapping;
use crate::memory::{BufPool, PoolStats, Reclaimer};
use crate::stats::{CacheGauges, CacheStats, GaugeSnapshot};
use crate::writeback::CompletionQueue;

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
    /// Bytes of folios the cache keeps at most; `u64::MAX` for no limit.
    budget: AtomicU64,
    /// Held by the one thread reclaiming for the budget; others carry on meanwhile.
    reclaiming: Mutex<()>,
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
            pool: Arc::default(),
            budget: AtomicU64::new(u64::MAX),
            reclaiming: Mutex::new(()),
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

    /// Keeps the cache within `bytes` (`None`: no limit): whenever a folio added takes it over,
    /// the thread that added it evicts clean folios (see [`Self::reclaim`]) down to 90% of
    /// the budget. Dirty data is not evicted: its writeback is the filesystem's flusher's.
    /// With a budget, the pool of free folio buffers keeps at most an eighth of it.
    pub fn set_budget(&self, bytes: Option<u64>) {
        self.budget
            .store(bytes.unwrap_or(u64::MAX), Ordering::Relaxed);
        self.pool
            .set_max_bytes(bytes.map_or(crate::memory::DEFAULT_POOL_BYTES, |b| b / 8));
    }

    pub(crate) fn pool(&self) -> &Arc<BufPool> {
        &self.pool
    }

    /// What the pool of free folio buffers has done and holds.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// The budget, if one is set.
    pub fn budget(&self) -> Option<u64> {
        Some(self.budget.load(Ordering::Relaxed)).filter(|&b| b != u64::MAX)
    }

    /// Direct reclaim after a folio was added; called with no shard lock held.
    pub(crate) fn after_add(&self) {
        let Some(budget) = self.budget() else {
            return;
        };
        let cached = self.gauges.snapshot().cached_bytes;
        if cached <= budget {
            return;
        }
        let Some(_one) = self.reclaiming.try_lock() else {
            return;
        };
        let freed = self.reclaimer.reclaim(cached - budget / 10 * 9);
        self.stats.reclaims.add(1);
        self.stats.reclaimed_bytes.add(freed);
    }

    /// Evicts about `want_bytes` of clean folios from the registered mappings, scan
    /// resistantly (see [`Reclaimer`]); returns the bytes evicted.
    pub fn reclaim(&self, want_bytes: u64) -> u64 {
        self.reclaimer.reclaim(want_bytes)
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
