//! The page cache as a whole: configuration shared by every mapping, and its counters.

use std::sync::Arc;

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

    /// Bounds the free folio buffers kept for reuse (64 MiB by default).
    pub fn set_pool_max_bytes(&self, bytes: u64) {
        self.pool.set_max_bytes(bytes);
    }

    pub(crate) fn pool(&self) -> &Arc<BufPool> {
        &self.pool
    }

    /// What the pool of free folio buffers has done and holds.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Evicts about `want_bytes` of clean folios from the registered mappings, scan
    /// resistantly (see [`Reclaimer`]); returns the bytes evicted.
    pub fn reclaim(&self, want_bytes: u64) -> u64 {
        let freed = self.reclaimer.reclaim(want_bytes);
        if freed > 0 {
            self.stats.reclaims.add(1);
            self.stats.reclaimed_bytes.add(freed);
        }
        freed
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
