//! Folio buffers, reused. Fresh anonymous memory faults in at a fraction of memcpy speed, so a
//! buffer whose folio left the cache is kept for the next folio of its size instead of being
//! unmapped, up to a bound; past it, buffers are freed. Buffers keep the alignment `IoBuf`
//! gives them (O_DIRECT-ready; huge-page aligned at 2 MiB). A reused buffer holds another
//! folio's bytes: the engine fills every block before it is uptodate, and debug builds poison
//! reused buffers as they do new ones, so a path that shows unfilled bytes fails its tests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use iomap_dev::IoBuf;
use parking_lot::Mutex;

/// The default bound on pooled bytes when no budget sets one.
pub const DEFAULT_POOL_BYTES: u64 = 64 << 20;

/// Free buffers of one size, and when that size was last asked for.
#[derive(Default)]
struct Class {
    bufs: Vec<IoBuf>,
    last_wanted: u64,
}

/// The pool's lists by buffer size.
#[derive(Default)]
struct Free {
    classes: BTreeMap<usize, Class>,
    /// Counts `take`s: the clock `last_wanted` is read on.
    tick: u64,
}

/// Free folio buffers by size.
pub struct BufPool {
    free: Mutex<Free>,
    held_bytes: AtomicU64,
    max_bytes: AtomicU64,
    reused: AtomicU64,
    allocated: AtomicU64,
    live_bytes: AtomicU64,
}

impl Default for BufPool {
    fn default() -> Self {
        Self {
            free: Mutex::new(Free::default()),
            held_bytes: AtomicU64::new(0),
            max_bytes: AtomicU64::new(DEFAULT_POOL_BYTES),
            reused: AtomicU64::new(0),
            allocated: AtomicU64::new(0),
            live_bytes: AtomicU64::new(0),
        }
    }
}

/// What the pool has done and holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers handed out again.
    pub reused: u64,
    /// Buffers allocated fresh.
    pub allocated: u64,
    /// Bytes of free buffers held now.
    pub held_bytes: u64,
    /// Bytes of buffers folios own now: with `held_bytes`, the memory the cache's data takes.
    pub live_bytes: u64,
}

impl BufPool {
    /// A buffer of `size` bytes: a pooled one if there is one (its bytes are stale), else a
    /// fresh, zeroed one.
    pub fn take(&self, size: usize) -> IoBuf {
        self.live_bytes.fetch_add(size as u64, Ordering::Relaxed);
        let pooled = {
            let mut free = self.free.lock();
            free.tick += 1;
            let tick = free.tick;
            let class = free.classes.entry(size).or_default();
            class.last_wanted = tick;
            class.bufs.pop()
        };
        match pooled {
            Some(buf) => {
                self.held_bytes.fetch_sub(size as u64, Ordering::Relaxed);
                self.reused.fetch_add(1, Ordering::Relaxed);
                buf
            }
            None => {
                self.allocated.fetch_add(1, Ordering::Relaxed);
                IoBuf::zeroed(size)
            }
        }
    }

    /// A folio that took a `size`-byte buffer is gone (its buffer comes back with
    /// [`Self::give`] unless a request still holds it, and is freed when that ends).
    pub(crate) fn release(&self, size: usize) {
        self.live_bytes.fetch_sub(size as u64, Ordering::Relaxed);
    }

    /// Takes back a buffer no folio uses any more; frees it past the bound.
    pub fn give(&self, buf: IoBuf) {
        let len = buf.len() as u64;
        let max = self.max_bytes.load(Ordering::Relaxed);
        // Reserve first, so that concurrent givers never hold more than the bound together.
        if len == 0 || self.held_bytes.fetch_add(len, Ordering::Relaxed) + len > max {
            self.held_bytes.fetch_sub(len, Ordering::Relaxed);
            return;
        }
        self.free
            .lock()
            .classes
            .entry(buf.len())
            .or_default()
            .bufs
            .push(buf);
    }

    /// Bounds the bytes held; buffers past a lowered bound are freed now.
    pub fn set_max_bytes(&self, max: u64) {
        self.max_bytes.store(max, Ordering::Relaxed);
        self.shrink_to(max);
    }

    /// Frees held buffers until no more than `max` bytes are held (the bound stays): those of
    /// the size asked for least recently first, so that the sizes folios are being made in
    /// stay (folio sizes follow the I/O, and a pool of the wrong sizes saves nothing).
    pub(crate) fn shrink_to(&self, max: u64) {
        if self.held_bytes.load(Ordering::Relaxed) <= max {
            return;
        }
        let mut freed = Vec::new();
        let mut free = self.free.lock();
        while self.held_bytes.load(Ordering::Relaxed) > max {
            let Some(class) = free
                .classes
                .values_mut()
                .filter(|c| !c.bufs.is_empty())
                .min_by_key(|c| c.last_wanted)
            else {
                break;
            };
            if let Some(buf) = class.bufs.pop() {
                self.held_bytes
                    .fetch_sub(buf.len() as u64, Ordering::Relaxed);
                freed.push(buf);
            }
        }
        drop(free);
        // Unmapped with the lock let go.
        drop(freed);
    }

    /// What the pool has done and holds.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            reused: self.reused.load(Ordering::Relaxed),
            allocated: self.allocated.load(Ordering::Relaxed),
            held_bytes: self.held_bytes.load(Ordering::Relaxed),
            live_bytes: self.live_bytes.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_by_size_and_the_bound_holds() {
        let pool = BufPool::default();
        pool.set_max_bytes(3 * 65536);
        let a = pool.take(65536);
        let b = pool.take(65536);
        let c = pool.take(4096);
        let d = pool.take(65536);
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        pool.give(a);
        pool.give(b);
        pool.give(c);
        pool.give(d); // over the bound: freed
        assert_eq!(pool.stats().held_bytes, 2 * 65536 + 4096);
        let e = pool.take(65536);
        assert!(
            e.as_ptr() == pb || e.as_ptr() == pa,
            "a pooled buffer came back"
        );
        assert_eq!(e.as_ptr() as usize % iomap_dev::IO_BUF_ALIGN, 0);
        assert_eq!(pool.stats().reused, 1);
        pool.set_max_bytes(0);
        assert_eq!(pool.stats().held_bytes, 0);
    }
}
