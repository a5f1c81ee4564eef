//! Folios: naturally aligned, power-of-two runs of file bytes held in the cache.
//!
//! A folio carries whole-folio flags (locked, uptodate, dirty, writeback) and, when it holds
//! more than one block, a [`FolioState`] with a bit per block. The state is made on first need
//! and inherits the whole-folio flags then. A folio of one block never has state: its flags say
//! everything.
//!
//! Locking: the folio lock ([`Folio::lock`]) is held across read I/O (released by the last
//! completion), across `write_begin`..`write_end`, and while writeback is set up. The state
//! mutex is a leaf lock held only for bit operations. The data lock (inside [`SharedBuf`]) is a
//! leaf lock held only for the span of a copy or a device transfer; copying out of an uptodate
//! folio takes it shared and never takes the folio lock.
//!
//! Lock order: folio lock (in file order when several) → state mutex; folio lock → data lock.
//! The state mutex and data lock are never held together and never held across a submit.

mod state;

pub use state::{BlockBitmap, FolioState};

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, Weak};

use iomap_dev::{IoBuf, SharedBuf};

use crate::memory::BufPool;
use parking_lot::{Condvar, Mutex, MutexGuard};

const LOCKED: u32 = 1 << 0;
const UPTODATE: u32 = 1 << 1;
const DIRTY: u32 = 1 << 2;
const WRITEBACK: u32 = 1 << 3;
const WAITERS: u32 = 1 << 4;
const DETACHED: u32 = 1 << 5;
const READAHEAD: u32 = 1 << 6;
const REFERENCED: u32 = 1 << 7;
const ACTIVE: u32 = 1 << 8;
const DROPBEHIND: u32 = 1 << 9;

/// What debug builds fill new folios with (the kernel's slab poison byte).
#[cfg(debug_assertions)]
pub const POISON: u8 = 0x6b;

/// A folio of the page cache.
pub struct Folio {
    pos: u64,
    size: usize,
    block_shift: u32,
    flags: AtomicU32,
    /// Boxed: most folios of a cache of small folios hold one block and never need one.
    state: Mutex<Option<Box<FolioState>>>,
    data: SharedBuf,
    /// Where the buffer goes back when the folio is gone.
    pool: Weak<BufPool>,
    /// Errno of the last failed read into this folio, for the reader waiting on it.
    read_error: AtomicI32,
    /// Readers that have yet to copy from the folio: reclaim leaves it alone while any do.
    pins: AtomicU32,
    waitq: Mutex<()>,
    wake: Condvar,
}

/// A snapshot of a folio's flags and per-block bits, for tests and diagnostics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FolioSnapshot {
    /// File offset of the first byte.
    pub pos: u64,
    /// Size in bytes.
    pub size: usize,
    /// Whole folio uptodate.
    pub uptodate: bool,
    /// Folio has dirty blocks.
    pub dirty: bool,
    /// Folio is under writeback.
    pub writeback: bool,
    /// Per-block uptodate bits (one entry when the folio holds one block).
    pub uptodate_blocks: Vec<bool>,
    /// Per-block dirty bits.
    pub dirty_blocks: Vec<bool>,
    /// Whether a `FolioState` exists.
    pub has_state: bool,
}

impl Folio {
    /// A new folio of `size` bytes at file offset `pos`, returned locked and not uptodate.
    #[cfg(test)]
    pub(crate) fn new_locked(pos: u64, size: usize, block_shift: u32) -> FolioGuard {
        Self::new_in(pos, size, block_shift, None)
    }

    /// A new locked folio whose buffer comes from, and goes back to, `pool`.
    pub(crate) fn new_pooled(
        pos: u64,
        size: usize,
        block_shift: u32,
        pool: &Arc<BufPool>,
    ) -> FolioGuard {
        Self::new_in(pos, size, block_shift, Some(pool))
    }

    fn new_in(pos: u64, size: usize, block_shift: u32, pool: Option<&Arc<BufPool>>) -> FolioGuard {
        debug_assert!(size.is_power_of_two() && size >= 1 << block_shift);
        debug_assert_eq!(
            pos % size as u64,
            0,
            "folio at {pos} is not naturally aligned"
        );
        #[allow(unused_mut)]
        let mut buf = match pool {
            Some(p) => p.take(size),
            None => IoBuf::zeroed(size),
        };
        // Debug builds poison new folios, so a path that exposes bytes it never filled shows
        // them instead of passing on lucky zeros (recycled buffers are not zero either).
        #[cfg(debug_assertions)]
        buf.fill(POISON);
        let folio = Arc::new(Self {
            pos,
            size,
            block_shift,
            flags: AtomicU32::new(LOCKED),
            state: Mutex::new(None),
            data: buf.shared(),
            pool: pool.map_or_else(Weak::new, Arc::downgrade),
            read_error: AtomicI32::new(0),
            pins: AtomicU32::new(0),
            waitq: Mutex::new(()),
            wake: Condvar::new(),
        });
        FolioGuard { folio: Some(folio) }
    }

    /// File offset of the first byte.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// One past the last file byte.
    pub fn end(&self) -> u64 {
        self.pos + self.size as u64
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> usize {
        1 << self.block_shift
    }

    /// Number of blocks.
    pub fn nblocks(&self) -> usize {
        self.size >> self.block_shift
    }

    /// The buffer holding the folio's bytes.
    pub fn data(&self) -> &SharedBuf {
        &self.data
    }

    fn test(&self, bit: u32) -> bool {
        self.flags.load(Ordering::Acquire) & bit != 0
    }

    /// Every block is uptodate.
    pub fn is_uptodate(&self) -> bool {
        self.test(UPTODATE)
    }

    /// Some block is dirty.
    pub fn is_dirty(&self) -> bool {
        self.test(DIRTY)
    }

    /// Under writeback.
    pub fn is_writeback(&self) -> bool {
        self.test(WRITEBACK)
    }

    /// Carries the readahead marker: a reader reaching it starts the next window.
    pub fn is_readahead(&self) -> bool {
        self.test(READAHEAD)
    }

    /// Notes an access, as the kernel's `folio_mark_accessed`: a first access marks the folio
    /// referenced, a second makes it active (protected from reclaim while the active set is
    /// no larger than the inactive one). Hot folios pay only a load.
    pub fn mark_accessed(&self) {
        let f = self.flags.load(Ordering::Relaxed);
        if f & ACTIVE != 0 {
            return;
        }
        if f & REFERENCED == 0 {
            // A cached read wants it kept: it is no longer dropped after writeback.
            if f & DROPBEHIND != 0 {
                self.flags.fetch_and(!DROPBEHIND, Ordering::Relaxed);
            }
            self.flags.fetch_or(REFERENCED, Ordering::Relaxed);
        } else {
            self.flags.fetch_or(ACTIVE, Ordering::Relaxed);
            self.flags.fetch_and(!REFERENCED, Ordering::Relaxed);
        }
    }

    /// Pins the folio against eviction until the pin is dropped. The mapping pins only with
    /// the folio's index shard held or the folio locked, so eviction, which checks with both
    /// held, never misses a pin.
    pub(crate) fn pin(self: &Arc<Self>) -> FolioPin {
        self.pins.fetch_add(1, Ordering::AcqRel);
        FolioPin(Arc::clone(self))
    }

    /// Pinned by a reader.
    pub(crate) fn is_pinned(&self) -> bool {
        self.pins.load(Ordering::Acquire) > 0
    }

    /// Marks the folio to be dropped once its writeback ends (the kernel's
    /// `PG_dropbehind`, set by uncached writes).
    pub(crate) fn set_dropbehind(&self) {
        self.flags.fetch_or(DROPBEHIND, Ordering::Relaxed);
    }

    /// No longer to be dropped after writeback.
    pub(crate) fn clear_dropbehind(&self) {
        if self.test(DROPBEHIND) {
            self.flags.fetch_and(!DROPBEHIND, Ordering::Relaxed);
        }
    }

    /// To be dropped once its writeback ends.
    pub fn is_dropbehind(&self) -> bool {
        self.test(DROPBEHIND)
    }

    /// On the active list.
    pub fn is_active(&self) -> bool {
        self.test(ACTIVE)
    }

    /// Clears the referenced bit; whether it was set (a second chance in reclaim).
    pub(crate) fn test_clear_referenced(&self) -> bool {
        self.flags.fetch_and(!REFERENCED, Ordering::Relaxed) & REFERENCED != 0
    }

    /// Moves the folio to the inactive list, unreferenced.
    pub(crate) fn deactivate(&self) {
        self.flags
            .fetch_and(!(ACTIVE | REFERENCED), Ordering::Relaxed);
    }

    /// Sets the readahead marker (the kernel's PG_readahead).
    pub fn set_readahead(&self) {
        self.flags.fetch_or(READAHEAD, Ordering::Relaxed);
    }

    /// Clears the readahead marker; whether it was set. One reader wins it.
    pub fn test_clear_readahead(&self) -> bool {
        self.flags.fetch_and(!READAHEAD, Ordering::Relaxed) & READAHEAD != 0
    }

    /// Locked by someone.
    pub fn is_locked(&self) -> bool {
        self.test(LOCKED)
    }

    /// Removed from its mapping (truncated, invalidated or reclaimed).
    pub fn is_detached(&self) -> bool {
        self.test(DETACHED)
    }

    /// Blocks `[first, first + count)` covering byte range `[off, off + len)` of the folio,
    /// including partially covered blocks.
    pub fn blocks_of(&self, off: usize, len: usize) -> (usize, usize) {
        if len == 0 {
            return (off >> self.block_shift, 0);
        }
        let first = off >> self.block_shift;
        let last = (off + len - 1) >> self.block_shift;
        (first, last - first + 1)
    }

    fn state(&self) -> MutexGuard<'_, Option<Box<FolioState>>> {
        self.state.lock()
    }

    /// The folio's state, made now if the folio holds several blocks and has none yet; `None`
    /// for a single-block folio.
    fn state_mut<'a>(
        &self,
        slot: &'a mut MutexGuard<'_, Option<Box<FolioState>>>,
    ) -> Option<&'a mut FolioState> {
        if self.nblocks() == 1 {
            return None;
        }
        if slot.is_none() {
            **slot = Some(Box::new(FolioState::new(
                self.nblocks(),
                self.is_uptodate(),
                self.is_dirty(),
            )));
        }
        slot.as_deref_mut()
    }

    /// Whether every block touching `[off, off + len)` is uptodate.
    pub fn range_uptodate(&self, off: usize, len: usize) -> bool {
        if self.is_uptodate() {
            return true;
        }
        let (first, count) = self.blocks_of(off, len);
        match &*self.state() {
            Some(s) => s.uptodate.all_set(first, count),
            None => false,
        }
    }

    /// Whether block `block` is uptodate.
    pub fn block_uptodate(&self, block: usize) -> bool {
        self.range_uptodate(block << self.block_shift, 1 << self.block_shift)
    }

    /// Whether block `block` is dirty.
    pub fn block_dirty(&self, block: usize) -> bool {
        if !self.is_dirty() {
            return false;
        }
        match &*self.state() {
            Some(s) => s.dirty.get(block),
            None => true,
        }
    }

    /// Marks the blocks touching `[off, off + len)` uptodate, and the folio when all are. The
    /// caller guarantees those blocks hold the file's bytes.
    pub(crate) fn set_range_uptodate(&self, off: usize, len: usize) {
        if len == 0 || self.is_uptodate() {
            return;
        }
        let all = {
            let mut slot = self.state();
            match self.state_mut(&mut slot) {
                Some(s) => {
                    let (first, count) = self.blocks_of(off, len);
                    s.uptodate.set_range(first, count);
                    s.uptodate.is_full()
                }
                None => true,
            }
        };
        if all {
            self.flags.fetch_or(UPTODATE, Ordering::Release);
        }
    }

    /// The dirty byte ranges of the folio, in order, block aligned.
    pub fn dirty_ranges(&self) -> Vec<(usize, usize)> {
        if !self.is_dirty() {
            return Vec::new();
        }
        match &*self.state() {
            Some(s) => s
                .dirty
                .runs()
                .map(|(first, count)| (first << self.block_shift, count << self.block_shift))
                .collect(),
            None => vec![(0, self.size)],
        }
    }

    /// Zeroes `len` bytes at `off`; the caller owns the folio lock (possibly handed to I/O).
    pub(crate) fn zero_data(&self, off: usize, len: usize) {
        self.data.write()[off..off + len].fill(0);
    }

    /// Copies `dst.len()` bytes from folio offset `off`.
    pub fn copy_out(&self, off: usize, dst: &mut [u8]) {
        dst.copy_from_slice(&self.data.read()[off..off + dst.len()]);
    }

    /// Flags and per-block bits, for tests and diagnostics.
    pub fn snapshot(&self) -> FolioSnapshot {
        let slot = self.state();
        let n = self.nblocks();
        let (uptodate_blocks, dirty_blocks) = match &*slot {
            Some(s) => (
                (0..n).map(|i| s.uptodate.get(i)).collect(),
                (0..n).map(|i| s.dirty.get(i)).collect(),
            ),
            None => (vec![self.is_uptodate(); n], vec![self.is_dirty(); n]),
        };
        FolioSnapshot {
            pos: self.pos,
            size: self.size,
            uptodate: self.is_uptodate(),
            dirty: self.is_dirty(),
            writeback: self.is_writeback(),
            uptodate_blocks,
            dirty_blocks,
            has_state: slot.is_some(),
        }
    }

    /// Bytes of read I/O pending, as [`FolioState`] counts them (0 without state).
    pub fn read_bytes_pending(&self) -> u64 {
        self.state().as_ref().map_or(0, |s| s.read_bytes_pending)
    }

    // ---- locking and waiting ----

    /// Takes the folio lock, waiting for it.
    pub fn lock(self: &Arc<Self>) -> FolioGuard {
        loop {
            if let Some(guard) = self.try_lock() {
                return guard;
            }
            self.wait_while(LOCKED);
        }
    }

    /// Takes the folio lock if it is free.
    pub fn try_lock(self: &Arc<Self>) -> Option<FolioGuard> {
        let old = self.flags.fetch_or(LOCKED, Ordering::AcqRel);
        (old & LOCKED == 0).then(|| FolioGuard {
            folio: Some(Arc::clone(self)),
        })
    }

    /// Waits until nobody holds the folio lock (without taking it).
    pub fn wait_unlocked(&self) {
        self.wait_while(LOCKED);
    }

    /// Waits until the folio is not under writeback: the stable-pages rule.
    pub fn wait_writeback(&self) {
        self.wait_while(WRITEBACK);
    }

    fn wait_while(&self, bit: u32) {
        if !self.test(bit) {
            return;
        }
        let mut q = self.waitq.lock();
        loop {
            // Announce the waiter before re-checking, under the queue lock, so that a clearer
            // either sees WAITERS or we see its cleared bit.
            self.flags.fetch_or(WAITERS, Ordering::SeqCst);
            if self.flags.load(Ordering::SeqCst) & bit == 0 {
                return;
            }
            self.wake.wait(&mut q);
        }
    }

    fn clear_and_wake(&self, bit: u32) {
        let old = self.flags.fetch_and(!bit, Ordering::SeqCst);
        debug_assert!(old & bit != 0, "clearing flag {bit:#x} that was not set");
        if old & WAITERS != 0 || self.flags.load(Ordering::SeqCst) & WAITERS != 0 {
            let _q = self.waitq.lock();
            self.flags.fetch_and(!WAITERS, Ordering::SeqCst);
            self.wake.notify_all();
        }
    }

    /// Releases a lock handed to I/O by [`FolioGuard::into_io`].
    pub(crate) fn unlock_from_io(&self) {
        self.clear_and_wake(LOCKED);
    }

    // ---- reads in flight ----

    /// Starts a read of the locked folio: the reader holds a share of the whole folio in
    /// `read_bytes_pending` until it either hands parts to device requests or gives the rest
    /// back, so that no completion can end the read while it is still being built.
    pub(crate) fn begin_read(&self) {
        self.read_error.store(0, Ordering::Relaxed);
        let mut slot = self.state();
        if let Some(s) = self.state_mut(&mut slot) {
            debug_assert_eq!(s.read_bytes_pending, 0);
            s.read_bytes_pending = self.size as u64;
        }
    }

    /// Gives back `bytes` of read-pending accounting; true when this ended the read, in which
    /// case the caller must call [`Folio::end_read`]. A single-block folio has one owner of its
    /// read at a time, so giving back always ends it.
    pub(crate) fn read_done(&self, bytes: u64) -> bool {
        self.give_back(bytes, "read", |s| &mut s.read_bytes_pending)
    }

    /// Subtracts `bytes` from the pending count `field` picks; true when it reached zero, or
    /// when the folio has no state (one owner, so giving back ends the I/O).
    fn give_back(&self, bytes: u64, what: &str, field: fn(&mut FolioState) -> &mut u64) -> bool {
        let mut slot = self.state();
        let Some(s) = slot.as_mut() else {
            return true;
        };
        let pending = field(s);
        *pending = pending
            .checked_sub(bytes)
            .unwrap_or_else(|| panic!("{what}_bytes_pending underflow at {}", self.pos));
        *pending == 0
    }

    /// Records a failed read so that a waiting reader can report its errno.
    pub(crate) fn set_read_error(&self, errno: i32) {
        self.read_error.store(errno, Ordering::Relaxed);
    }

    /// The errno of the last failed read, if any.
    pub(crate) fn read_error(&self) -> Option<i32> {
        match self.read_error.load(Ordering::Relaxed) {
            0 => None,
            e => Some(e),
        }
    }

    /// Ends a read: the folio lock handed to I/O is released and waiters wake.
    pub(crate) fn end_read(&self) {
        #[cfg(debug_assertions)]
        if let Some(s) = &*self.state() {
            s.check();
        }
        self.unlock_from_io();
    }

    // ---- writes in flight ----

    /// Adds `bytes` queued for write I/O to `write_bytes_pending` (no-op without state: a
    /// single-block folio has one range, whose ioend ends its writeback).
    pub(crate) fn add_write_pending(&self, bytes: u64) {
        if let Some(s) = self.state().as_mut() {
            s.write_bytes_pending += bytes;
        }
    }

    /// Gives back `bytes` of write-pending accounting; true when this ended the folio's write
    /// I/O, in which case the caller ends its writeback. Without state there is one owner.
    pub(crate) fn write_done(&self, bytes: u64) -> bool {
        self.give_back(bytes, "write", |s| &mut s.write_bytes_pending)
    }

    /// Bytes of write I/O pending, as [`FolioState`] counts them (0 without state).
    pub fn write_bytes_pending(&self) -> u64 {
        self.state().as_ref().map_or(0, |s| s.write_bytes_pending)
    }

    /// Clears the writeback flag and wakes waiters.
    pub(crate) fn clear_writeback(&self) {
        self.clear_and_wake(WRITEBACK);
    }

    /// Sets `bit`; true when it was clear. Tests first, so re-dirtying a dirty folio does no
    /// locked write.
    fn set_flag(&self, bit: u32) -> bool {
        !self.test(bit) && self.flags.fetch_or(bit, Ordering::AcqRel) & bit == 0
    }

    pub(crate) fn detach(&self) {
        self.flags.fetch_or(DETACHED, Ordering::AcqRel);
    }
}

/// What a dropped folio leaves in place of the buffer it gives back.
static NO_BUFFER: LazyLock<SharedBuf> = LazyLock::new(|| IoBuf::zeroed(0).shared());

impl Drop for Folio {
    /// The buffer goes back to the pool, unless a request still holds it (it cannot, once
    /// the folio is gone from the cache and its I/O has ended; if it does, it is freed).
    fn drop(&mut self) {
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        pool.release(self.size);
        let data = std::mem::replace(&mut self.data, NO_BUFFER.clone());
        if let Some(buf) = data.into_inner() {
            pool.give(buf);
        }
    }
}

impl fmt::Debug for Folio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Folio")
            .field("pos", &self.pos)
            .field("size", &self.size)
            .field(
                "flags",
                &format_args!("{:#x}", self.flags.load(Ordering::Relaxed)),
            )
            .finish()
    }
}

/// A reader's pin on a folio: reclaim leaves the folio in the cache while it lives; dropping
/// it unpins. Taken by [`crate::Mapping::find_pinned`].
pub struct FolioPin(Arc<Folio>);

impl Deref for FolioPin {
    type Target = Arc<Folio>;
    fn deref(&self) -> &Arc<Folio> {
        &self.0
    }
}

impl Drop for FolioPin {
    fn drop(&mut self) {
        self.0.pins.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Proof that the folio lock is held; dropping it unlocks.
pub struct FolioGuard {
    /// Always `Some` until `into_io` takes the lock away from the guard.
    folio: Option<Arc<Folio>>,
}

impl Deref for FolioGuard {
    type Target = Arc<Folio>;
    fn deref(&self) -> &Arc<Folio> {
        match &self.folio {
            Some(folio) => folio,
            None => unreachable!("a guard is not used after into_io"),
        }
    }
}

impl Drop for FolioGuard {
    fn drop(&mut self) {
        if let Some(folio) = self.folio.take() {
            folio.clear_and_wake(LOCKED);
        }
    }
}

impl FolioGuard {
    /// Hands the lock to I/O: the folio stays locked and the I/O path releases it with
    /// [`Folio::end_read`].
    pub(crate) fn into_io(mut self) -> Arc<Folio> {
        match self.folio.take() {
            Some(folio) => folio,
            None => unreachable!("a guard is not used after into_io"),
        }
    }

    /// Pins the locked folio against eviction (see [`Folio::pin`]).
    pub(crate) fn pin(&self) -> FolioPin {
        Folio::pin(self)
    }

    /// Copies `src` into the folio at `off`.
    pub fn copy_in(&self, off: usize, src: &[u8]) {
        self.data.write()[off..off + src.len()].copy_from_slice(src);
    }

    /// Zeroes `len` bytes at `off`.
    pub fn zero(&self, off: usize, len: usize) {
        self.zero_data(off, len);
    }

    /// Marks the blocks touching `[off, off + len)` dirty. They must be uptodate. Returns true
    /// when the folio was clean before, so the mapping can tag it.
    pub(crate) fn set_range_dirty(&self, off: usize, len: usize) -> bool {
        if len == 0 {
            return false;
        }
        {
            let mut slot = self.state();
            if let Some(s) = self.state_mut(&mut slot) {
                let (first, count) = self.blocks_of(off, len);
                debug_assert!(
                    s.uptodate.all_set(first, count),
                    "dirtying blocks {first}+{count} that are not uptodate"
                );
                s.dirty.set_range(first, count);
            }
        }
        self.set_flag(DIRTY)
    }

    /// Starts writeback of the locked folio: sets the writeback flag and gives the caller a
    /// share of `write_bytes_pending` (one byte, as Linux's bias) so ioends completing while
    /// the folio is still being written back cannot end its writeback early. Returns whether
    /// the folio has state (and so a share to give back with `write_done(1)`).
    pub(crate) fn start_writeback(&self) -> bool {
        let had = self.set_flag(WRITEBACK);
        debug_assert!(had, "folio {} already under writeback", self.pos);
        let mut slot = self.state();
        match self.state_mut(&mut slot) {
            Some(s) => {
                debug_assert_eq!(s.write_bytes_pending, 0);
                s.write_bytes_pending = 1;
                true
            }
            None => false,
        }
    }

    /// Clears dirty bits for blocks wholly inside `[off, off + len)`. Returns true when the
    /// folio became clean, so the mapping can untag it.
    pub(crate) fn clear_range_dirty(&self, off: usize, len: usize) -> bool {
        if !self.is_dirty() {
            return false;
        }
        let bs = self.block_size();
        let first = off.div_ceil(bs);
        let end = (off + len) / bs;
        if end <= first {
            return false;
        }
        let clean = {
            let mut slot = self.state();
            match self.state_mut(&mut slot) {
                Some(s) => {
                    s.dirty.clear_range(first, end - first);
                    !s.dirty.any_set(0, s.dirty.len())
                }
                None => true,
            }
        };
        clean && self.flags.fetch_and(!DIRTY, Ordering::AcqRel) & DIRTY != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_is_made_only_for_multi_block_folios() {
        let single = Folio::new_locked(0, 4096, 12);
        single.set_range_uptodate(0, 4096);
        assert!(single.is_uptodate());
        assert!(!single.snapshot().has_state);

        let multi = Folio::new_locked(0, 4096, 10);
        multi.set_range_uptodate(0, 1024);
        let snap = multi.snapshot();
        assert!(snap.has_state && !snap.uptodate);
        assert_eq!(snap.uptodate_blocks, [true, false, false, false]);
        multi.set_range_uptodate(1024, 3072);
        assert!(multi.is_uptodate());
    }

    #[test]
    fn dirty_bits_are_per_block_and_the_folio_flag_follows() {
        let f = Folio::new_locked(8192, 8192, 11);
        f.set_range_uptodate(0, 8192);
        assert!(f.set_range_dirty(2048, 1));
        assert!(!f.set_range_dirty(6000, 10));
        // Blocks 1 and 2 are dirty and adjacent: one range.
        assert_eq!(f.dirty_ranges(), [(2048, 4096)]);
        assert!(!f.clear_range_dirty(2048, 2048));
        assert!(f.block_dirty(2) && !f.block_dirty(1));
        assert!(f.clear_range_dirty(4096, 4096));
        assert!(!f.is_dirty());
    }

    #[test]
    fn the_lock_hands_over_between_threads() {
        let g = Folio::new_locked(0, 4096, 12);
        let folio = Arc::clone(&g);
        let other = Arc::clone(&g);
        let t = std::thread::spawn(move || other.lock().copy_in(0, b"x"));
        g.copy_in(0, b"a");
        // The other thread's copy can only happen after this guard drops.
        drop(g);
        t.join().unwrap();
        let mut b = [0u8; 1];
        folio.copy_out(0, &mut b);
        assert_eq!(&b, b"x");
        assert!(!folio.is_locked());
    }

    #[test]
    fn a_lock_handed_to_io_is_released_by_end_read() {
        let g = Folio::new_locked(0, 4096, 12);
        let folio = g.into_io();
        assert!(folio.is_locked());
        assert!(Arc::clone(&folio).try_lock().is_none());
        folio.end_read();
        assert!(!folio.is_locked());
        assert!(folio.try_lock().is_some());
    }
}
