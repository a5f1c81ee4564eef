//! Cheap counters for the cache: sharded so that threads on different cores do not bounce one
//! cache line on every cached read, and bumped with a plain load and store on the thread's own
//! shard rather than a locked read-modify-write, which would be a full barrier on every read.
//! Threads beyond the shard count share shards, so with more than 16 threads racing on one
//! counter a count can be lost: these are statistics, not accounting.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const SHARDS: usize = 16;

#[repr(align(128))]
#[derive(Default)]
struct Slot(AtomicU64);

/// A monotonically increasing count, summed over per-thread shards when read.
#[derive(Default)]
pub struct Counter([Slot; SHARDS]);

fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SHARD.with(|s| {
        if s.get() == usize::MAX {
            s.set(NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS);
        }
        s.get()
    })
}

impl Counter {
    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        let slot = &self.0[shard()].0;
        slot.store(
            slot.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// The current total.
    pub fn get(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

/// What a cache holds now, exactly: changed under the locks that change what they count, so
/// unlike the counters they are accounting, not statistics.
#[derive(Default)]
pub struct CacheGauges {
    folios: AtomicU64,
    cached_bytes: AtomicU64,
    dirty_bytes: AtomicU64,
    writeback_bytes: AtomicU64,
}

/// A point-in-time copy of [`CacheGauges`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GaugeSnapshot {
    /// Folios cached.
    pub folios: u64,
    /// Bytes of folio data cached, whatever their state.
    pub cached_bytes: u64,
    /// Bytes of dirty folios (a folio counts whole, as Linux's dirty page accounting does).
    pub dirty_bytes: u64,
    /// Bytes of folios under writeback.
    pub writeback_bytes: u64,
}

/// Which gauge a tag change moves.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Gauge {
    Dirty,
    Writeback,
}

impl CacheGauges {
    pub(crate) fn added(&self, bytes: u64) {
        self.folios.fetch_add(1, Ordering::Relaxed);
        self.cached_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn removed(&self, bytes: u64) {
        self.folios.fetch_sub(1, Ordering::Relaxed);
        self.cached_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub(crate) fn tagged(&self, gauge: Gauge, bytes: u64, on: bool) {
        let g = match gauge {
            Gauge::Dirty => &self.dirty_bytes,
            Gauge::Writeback => &self.writeback_bytes,
        };
        if on {
            g.fetch_add(bytes, Ordering::Relaxed);
        } else {
            g.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    /// Reads every gauge (each exact; together, a moment's view give or take a change).
    pub fn snapshot(&self) -> GaugeSnapshot {
        GaugeSnapshot {
            folios: self.folios.load(Ordering::Relaxed),
            cached_bytes: self.cached_bytes.load(Ordering::Relaxed),
            dirty_bytes: self.dirty_bytes.load(Ordering::Relaxed),
            writeback_bytes: self.writeback_bytes.load(Ordering::Relaxed),
        }
    }
}

macro_rules! cache_stats {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Counters kept by a page cache, read by `stats` tools and benchmarks.
        #[derive(Default)]
        pub struct CacheStats {
            $($(#[$doc])* pub $name: Counter,)*
        }

        /// A point-in-time copy of [`CacheStats`].
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct StatsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl CacheStats {
            /// Reads every counter.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.get(),)* }
            }
        }
    };
}

cache_stats! {
    /// Reads served entirely from uptodate folios.
    read_hits,
    /// Reads that had to start device I/O or zero-fill.
    read_misses,
    /// Bytes copied out to readers.
    bytes_read,
    /// Bytes copied in from writers.
    bytes_written,
    /// Device read requests submitted.
    dev_read_requests,
    /// Bytes read from the device.
    dev_read_bytes,
    /// Blocks that went to the device in a request another block started: for each read or
    /// write request, its blocks less one.
    blocks_merged,
    /// Device write requests submitted.
    dev_write_requests,
    /// Bytes written to the device.
    dev_write_bytes,
    /// Read requests that failed.
    read_errors,
    /// Ioends submitted.
    ioends,
    /// Writeback errors recorded on mappings.
    writeback_errors,
    /// Folios added to the cache.
    folios_added,
    /// Folios removed from the cache.
    folios_removed,
    /// Reclaim passes that evicted something.
    reclaims,
    /// Bytes of clean folios evicted by reclaim.
    reclaimed_bytes,
    /// Reclaims run by a folio allocation over the budget.
    direct_reclaims,
    /// Readahead windows started by a read that missed the cache.
    readahead_sync,
    /// Readahead windows started by a read reaching the readahead marker: readahead that was
    /// used before it ran out (readahead hits).
    readahead_async,
    /// Bytes of the readahead windows started.
    readahead_bytes,
    /// Flusher passes.
    flusher_passes,
    /// Mappings the flusher wrote back because their dirty data expired.
    expired_writebacks,
    /// Slices of mappings the flusher wrote back because dirty data was over the background
    /// threshold.
    threshold_writebacks,
    /// Times writers were paused or stopped by the dirty throttle.
    throttled_writes,
    /// Time writers spent throttled, in microseconds.
    throttled_micros,
}
