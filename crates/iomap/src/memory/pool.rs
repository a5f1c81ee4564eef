//! Folio memory, reused. Fresh anonymous memory faults in at a fraction of memcpy speed, so
//! the memory of a folio that left the cache is kept for the next folio instead of being
//! given back to the kernel, up to a bound; past it, free memory is given back. Folios live in
//! frames of an arena (see [`iomap_dev::FrameArena`]): aligned for O_DIRECT, huge-page backed,
//! with an eight-byte descriptor per page as all the memory a folio costs beside its bytes.
//! Reused memory holds another folio's bytes: the engine fills every block before it is
//! uptodate, and debug builds poison new folios, so a path that shows unfilled bytes fails
//! its tests.

use std::sync::atomic::{AtomicU64, Ordering};

use iomap_dev::FrameArena;

/// The default bound on free bytes kept when no budget sets one.
pub const DEFAULT_POOL_BYTES: u64 = 64 << 20;

/// The memory folios are made of.
pub struct BufPool {
    arena: FrameArena,
    max_bytes: AtomicU64,
}

/// What the pool has done and holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Folios made in memory freed by earlier folios.
    pub reused: u64,
    /// Folios made in fresh memory.
    pub allocated: u64,
    /// Bytes of free memory held now, resident, for reuse.
    pub held_bytes: u64,
    /// Bytes of folios now: with `held_bytes`, the memory the cache's data takes.
    pub live_bytes: u64,
    /// Bytes of descriptors, one per page of memory the pool has mapped.
    pub descriptor_bytes: u64,
    /// Bytes of free memory given back to the kernel, to be faulted in afresh when reused.
    pub trimmed_bytes: u64,
}

impl BufPool {
    /// A pool for folios of `page_size` to `max_folio_size` bytes (checked by the cache).
    pub fn new(page_size: usize, max_folio_size: usize) -> Self {
        Self {
            arena: FrameArena::new(page_size, max_folio_size),
            max_bytes: AtomicU64::new(DEFAULT_POOL_BYTES),
        }
    }

    /// Where folios get their frames.
    pub(crate) fn arena(&self) -> &FrameArena {
        &self.arena
    }

    /// Bounds the free bytes held; memory past a lowered bound is given back now.
    pub fn set_max_bytes(&self, max: u64) {
        self.max_bytes.store(max, Ordering::Relaxed);
        self.shrink_to(max);
    }

    /// Gives back free memory until no more than `max` bytes (and no more than the bound)
    /// are held, largest free runs first.
    pub(crate) fn shrink_to(&self, max: u64) {
        self.arena
            .trim(max.min(self.max_bytes.load(Ordering::Relaxed)));
    }

    /// Bytes of free memory held now (a load, where [`Self::stats`] takes the arena's lock).
    pub fn held_bytes(&self) -> u64 {
        self.arena.held_bytes()
    }

    /// What the pool has done and holds.
    pub fn stats(&self) -> PoolStats {
        let s = self.arena.stats();
        PoolStats {
            reused: s.reused,
            allocated: s.fresh,
            held_bytes: s.held_bytes,
            live_bytes: s.live_bytes,
            descriptor_bytes: s.descriptor_bytes,
            trimmed_bytes: s.trimmed_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_memory_is_reused_and_the_bound_holds() {
        let pool = BufPool::new(4096, 2 << 20);
        pool.set_max_bytes(3 * 65536);
        let a = pool.arena().alloc(65536, 0);
        let b = pool.arena().alloc(65536, 0);
        let first = pool.stats();
        assert_eq!((first.allocated, first.live_bytes), (2, 2 * 65536));
        drop(a);
        let c = pool.arena().alloc(65536, 0);
        assert_eq!(pool.stats().reused, 1, "the freed frame's memory came back");
        drop((b, c));
        assert_eq!(pool.stats().live_bytes, 0);
        pool.shrink_to(u64::MAX);
        assert!(pool.stats().held_bytes <= 3 * 65536);
        pool.set_max_bytes(0);
        assert_eq!(pool.stats().held_bytes, 0);
    }
}
