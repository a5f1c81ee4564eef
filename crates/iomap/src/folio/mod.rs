//! Folios: naturally aligned, power-of-two runs of file bytes held in the cache.
//!
//! A [`Folio`] is a handle: a reference to a frame of the cache's arena (see
//! [`iomap_dev::FrameArena`]) with the file offset it holds. The frame's descriptor is all the
//! cache keeps per folio: its owner's word carries the whole-folio flags (locked, uptodate,
//! dirty, writeback, ...) and the count of readers pinning it, and the frame's own word its
//! references and the lock over its bytes. A cache of 4 KiB folios so spends eight bytes of
//! descriptor per folio, plus four in the mapping's index.
//!
//! A folio holding more than one block also has a [`FolioState`] with a bit per block, kept as
//! the frame's extension, made on first need; it inherits the whole-folio flags then. A folio
//! of one block has state only to report a failed read.
//!
//! Locking: the folio lock ([`Folio::lock`]) is held across read I/O (released by the last
//! completion), across `write_begin`..`write_end`, and while writeback is set up. The state
//! lock (the extension lock, shared by the folios of one arena chunk) is a leaf lock held only
//! for bit operations. The data lock (the frame's) is a leaf lock held only for the span of a
//! copy or a device transfer; copying out of an uptodate folio takes it shared and never takes
//! the folio lock. Waiters sleep on hashed queues keyed by the folio's word, as the kernel's
//! folio wait table.
//!
//! Lock order: folio lock (in file order when several) → state lock; folio lock → data lock.
//! The state lock and data lock are never held together and never held across a submit.

mod state;

pub use state::{BlockBitmap, FolioState};

use iomap_dev::{Frame, FrameArena, SharedBuf};
use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicU32, Ordering};

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
// Bits 10 to 14 are the arena's (`FRAME_ORDER_BITS`).
const _: () = assert!(
    (LOCKED
        | UPTODATE
        | DIRTY
        | WRITEBACK
        | WAITERS
        | DETACHED
        | READAHEAD
        | REFERENCED
        | ACTIVE
        | DROPBEHIND
        | 0xffff << 16)
        & iomap_dev::FRAME_ORDER_BITS
        == 0
);
/// One reader's pin: the pin count is the word's top half.
const PIN: u32 = 1 << 16;
const PINS: u32 = 0xffff << 16;

/// What debug builds fill new folios with (the kernel's slab poison byte).
#[cfg(debug_assertions)]
pub const POISON: u8 = 0x6b;

/// A folio of the page cache: a counted reference, cheap to clone (see the module comment).
///
/// `Folio<&Frame>` is a folio seen through a reference its holder lends (the index's, while
/// its shard is held): the cached read path looks at a folio without counting a reference.
#[derive(Clone)]
pub struct Folio<F = Frame> {
    frame: F,
    pos: u64,
    block_shift: u8,
}

/// What a folio keeps beside its descriptor, when it needs anything.
#[derive(Debug, Default)]
struct FolioExt {
    /// Per-block state, for a folio of several blocks.
    state: Option<FolioState>,
    /// Errno of the last failed read into the folio, for the reader waiting on it.
    read_error: i32,
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

/// Where folios made outside a cache (by unit tests) get their memory.
#[cfg(test)]
static LOOSE: std::sync::LazyLock<FrameArena> =
    std::sync::LazyLock::new(|| FrameArena::new(4096, 2 << 20));

impl Folio {
    /// A new folio of `size` bytes at file offset `pos`, returned locked and not uptodate.
    #[cfg(test)]
    pub(crate) fn new_locked(pos: u64, size: usize, block_shift: u32) -> FolioGuard {
        Self::new_in(&LOOSE, pos, size, block_shift)
    }

    /// A new locked folio whose memory comes from `arena`.
    pub(crate) fn new_in(
        arena: &FrameArena,
        pos: u64,
        size: usize,
        block_shift: u32,
    ) -> FolioGuard {
        debug_assert!(size.is_power_of_two() && size >= 1 << block_shift);
        debug_assert_eq!(
            pos % size as u64,
            0,
            "folio at {pos} is not naturally aligned"
        );
        let frame = arena.alloc(size, LOCKED);
        // Debug builds poison new folios, so a path that exposes bytes it never filled shows
        // them instead of passing on lucky zeros (recycled memory is not zero either).
        #[cfg(debug_assertions)]
        frame.write().fill(POISON);
        FolioGuard {
            folio: Some(Self {
                frame,
                pos,
                block_shift: block_shift as u8,
            }),
        }
    }

    /// Whether `a` and `b` are the same folio.
    pub fn same(a: &Self, b: &Self) -> bool {
        Frame::same(&a.frame, &b.frame)
    }
}

impl<F: Borrow<Frame>> Folio<F> {
    /// The folio whose frame a mapping's index keeps at `pos`.
    pub(crate) fn from_frame(frame: F, pos: u64, block_shift: u32) -> Self {
        Self {
            frame,
            pos,
            block_shift: block_shift as u8,
        }
    }

    /// The frame holding the folio's bytes.
    pub(crate) fn frame(&self) -> &Frame {
        self.frame.borrow()
    }

    /// A counted reference to the folio.
    pub fn counted(&self) -> Folio {
        Folio {
            frame: self.frame().clone(),
            pos: self.pos,
            block_shift: self.block_shift,
        }
    }

    /// File offset of the first byte.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.frame().len()
    }

    /// One past the last file byte.
    pub fn end(&self) -> u64 {
        self.pos + self.size() as u64
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> usize {
        1 << self.block_shift
    }

    /// Number of blocks.
    pub fn nblocks(&self) -> usize {
        self.size() >> self.block_shift
    }

    /// The folio's bytes as a buffer device requests can carry.
    pub fn data(&self) -> SharedBuf {
        SharedBuf::from(self.frame().clone())
    }

    fn flags(&self) -> &AtomicU32 {
        self.frame().word()
    }

    fn test(&self, bit: u32) -> bool {
        self.flags().load(Ordering::Acquire) & bit != 0
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
        let f = self.flags().load(Ordering::Relaxed);
        if f & ACTIVE != 0 {
            return;
        }
        if f & REFERENCED == 0 {
            // A cached read wants it kept: it is no longer dropped after writeback.
            if f & DROPBEHIND != 0 {
                self.flags().fetch_and(!DROPBEHIND, Ordering::Relaxed);
            }
            self.flags().fetch_or(REFERENCED, Ordering::Relaxed);
        } else {
            self.flags().fetch_or(ACTIVE, Ordering::Relaxed);
            self.flags().fetch_and(!REFERENCED, Ordering::Relaxed);
        }
    }

    /// Pins the folio against eviction until the pin is dropped. The mapping pins only with
    /// the folio's index shard held or the folio locked, so eviction, which checks with both
    /// held, never misses a pin.
    pub(crate) fn pin(&self) -> FolioPin {
        let flags = self.flags();
        let mut f = flags.load(Ordering::Relaxed);
        loop {
            assert!(f & PINS != PINS, "folio {} has too many pins", self.pos);
            match flags.compare_exchange_weak(f, f + PIN, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => f = now,
            }
        }
        FolioPin(self.counted())
    }

    /// Pinned by a reader.
    pub(crate) fn is_pinned(&self) -> bool {
        self.flags().load(Ordering::Acquire) & PINS != 0
    }

    /// Marks the folio to be dropped once its writeback ends (the kernel's
    /// `PG_dropbehind`, set by uncached writes).
    pub(crate) fn set_dropbehind(&self) {
        self.flags().fetch_or(DROPBEHIND, Ordering::Relaxed);
    }

    /// No longer to be dropped after writeback.
    pub(crate) fn clear_dropbehind(&self) {
        if self.test(DROPBEHIND) {
            self.flags().fetch_and(!DROPBEHIND, Ordering::Relaxed);
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
        self.flags().fetch_and(!REFERENCED, Ordering::Relaxed) & REFERENCED != 0
    }

    /// Moves the folio to the inactive list, unreferenced.
    pub(crate) fn deactivate(&self) {
        self.flags()
            .fetch_and(!(ACTIVE | REFERENCED), Ordering::Relaxed);
    }

    /// Sets the readahead marker (the kernel's PG_readahead).
    pub fn set_readahead(&self) {
        self.flags().fetch_or(READAHEAD, Ordering::Relaxed);
    }

    /// Clears the readahead marker; whether it was set. One reader wins it.
    pub fn test_clear_readahead(&self) -> bool {
        self.flags().fetch_and(!READAHEAD, Ordering::Relaxed) & READAHEAD != 0
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

    /// Runs `f` on the folio's state, or on `None` if it has none.
    fn with_state<R>(&self, f: impl FnOnce(Option<&mut FolioState>) -> R) -> R {
        self.frame()
            .ext::<FolioExt, _>(|e| f(e.and_then(|e| e.state.as_mut())))
    }

    /// Runs `f` on the folio's state, made now if the folio holds several blocks and has
    /// none yet; on `None` for a single-block folio.
    fn with_state_made<R>(&self, f: impl FnOnce(Option<&mut FolioState>) -> R) -> R {
        let n = self.nblocks();
        if n == 1 {
            return f(None);
        }
        self.frame().with_ext(FolioExt::default, |e| {
            let s = e
                .state
                .get_or_insert_with(|| FolioState::new(n, self.is_uptodate(), self.is_dirty()));
            f(Some(s))
        })
    }

    /// Whether every block touching `[off, off + len)` is uptodate.
    pub fn range_uptodate(&self, off: usize, len: usize) -> bool {
        if self.is_uptodate() {
            return true;
        }
        let (first, count) = self.blocks_of(off, len);
        self.with_state(|s| s.is_some_and(|s| s.uptodate.all_set(first, count)))
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
        self.with_state(|s| s.is_none_or(|s| s.dirty.get(block)))
    }

    /// Marks the blocks touching `[off, off + len)` uptodate, and the folio when all are. The
    /// caller guarantees those blocks hold the file's bytes.
    pub(crate) fn set_range_uptodate(&self, off: usize, len: usize) {
        if len == 0 || self.is_uptodate() {
            return;
        }
        let (first, count) = self.blocks_of(off, len);
        let all = self.with_state_made(|s| match s {
            Some(s) => {
                s.uptodate.set_range(first, count);
                s.uptodate.is_full()
            }
            None => true,
        });
        if all {
            self.flags().fetch_or(UPTODATE, Ordering::Release);
        }
    }

    /// The dirty byte ranges of the folio, in order, block aligned.
    pub fn dirty_ranges(&self) -> Vec<(usize, usize)> {
        if !self.is_dirty() {
            return Vec::new();
        }
        let shift = self.block_shift;
        self.with_state(|s| match s {
            Some(s) => s
                .dirty
                .runs()
                .map(|(first, count)| (first << shift, count << shift))
                .collect(),
            None => vec![(0, self.size())],
        })
    }

    /// Zeroes `len` bytes at `off`; the caller owns the folio lock (possibly handed to I/O).
    pub(crate) fn zero_data(&self, off: usize, len: usize) {
        self.frame().write()[off..off + len].fill(0);
    }

    /// Copies `dst.len()` bytes from folio offset `off`.
    pub fn copy_out(&self, off: usize, dst: &mut [u8]) {
        dst.copy_from_slice(&self.frame().read()[off..off + dst.len()]);
    }

    /// Flags and per-block bits, for tests and diagnostics.
    pub fn snapshot(&self) -> FolioSnapshot {
        let n = self.nblocks();
        let (uptodate, dirty) = (self.is_uptodate(), self.is_dirty());
        let (uptodate_blocks, dirty_blocks, has_state) = self.with_state(|s| match s {
            Some(s) => (
                (0..n).map(|i| s.uptodate.get(i)).collect(),
                (0..n).map(|i| s.dirty.get(i)).collect(),
                true,
            ),
            None => (vec![uptodate; n], vec![dirty; n], false),
        });
        FolioSnapshot {
            pos: self.pos,
            size: self.size(),
            uptodate: self.is_uptodate(),
            dirty: self.is_dirty(),
            writeback: self.is_writeback(),
            uptodate_blocks,
            dirty_blocks,
            has_state,
        }
    }

    /// Bytes of read I/O pending, as [`FolioState`] counts them (0 without state).
    pub fn read_bytes_pending(&self) -> u64 {
        self.with_state(|s| s.map_or(0, |s| s.read_bytes_pending))
    }

    // ---- locking and waiting ----

    /// Takes the folio lock, waiting for it.
    pub fn lock(&self) -> FolioGuard {
        loop {
            if let Some(guard) = self.try_lock() {
                return guard;
            }
            self.wait_while(LOCKED);
        }
    }

    /// Takes the folio lock if it is free.
    pub fn try_lock(&self) -> Option<FolioGuard> {
        let old = self.flags().fetch_or(LOCKED, Ordering::AcqRel);
        (old & LOCKED == 0).then(|| FolioGuard {
            folio: Some(self.counted()),
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
        loop {
            if !self.test(bit) {
                return;
            }
            // Announce the waiter before sleeping; the sleep re-checks both bits under the
            // wait queue's lock, so a clearer either sees WAITERS or we see its cleared bit.
            self.flags().fetch_or(WAITERS, Ordering::SeqCst);
            self.frame().park_while_set(bit | WAITERS);
        }
    }

    fn clear_and_wake(&self, bit: u32) {
        let old = self.flags().fetch_and(!bit, Ordering::SeqCst);
        debug_assert!(old & bit != 0, "clearing flag {bit:#x} that was not set");
        if old & WAITERS != 0 || self.flags().load(Ordering::SeqCst) & WAITERS != 0 {
            self.flags().fetch_and(!WAITERS, Ordering::SeqCst);
            self.frame().unpark_all();
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
        if self.frame().has_ext() {
            self.frame().ext::<FolioExt, _>(|e| {
                if let Some(e) = e {
                    e.read_error = 0;
                }
            });
        }
        let size = self.size() as u64;
        self.with_state_made(|s| {
            if let Some(s) = s {
                debug_assert_eq!(s.read_bytes_pending, 0);
                s.read_bytes_pending = size;
            }
        });
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
        let pos = self.pos;
        self.with_state(|s| {
            let Some(s) = s else {
                return true;
            };
            let pending = field(s);
            *pending = pending
                .checked_sub(bytes)
                .unwrap_or_else(|| panic!("{what}_bytes_pending underflow at {pos}"));
            *pending == 0
        })
    }

    /// Records a failed read so that a waiting reader can report its errno.
    pub(crate) fn set_read_error(&self, errno: i32) {
        self.frame()
            .with_ext(FolioExt::default, |e| e.read_error = errno);
    }

    /// The errno of the last failed read, if any.
    pub(crate) fn read_error(&self) -> Option<i32> {
        match self
            .frame()
            .ext::<FolioExt, _>(|e| e.map_or(0, |e| e.read_error))
        {
            0 => None,
            e => Some(e),
        }
    }

    /// Ends a read: the folio lock handed to I/O is released and waiters wake.
    pub(crate) fn end_read(&self) {
        #[cfg(debug_assertions)]
        self.with_state(|s| {
            if let Some(s) = s {
                s.check();
            }
        });
        self.unlock_from_io();
    }

    // ---- writes in flight ----

    /// Adds `bytes` queued for write I/O to `write_bytes_pending` (no-op without state: a
    /// single-block folio has one range, whose ioend ends its writeback).
    pub(crate) fn add_write_pending(&self, bytes: u64) {
        self.with_state(|s| {
            if let Some(s) = s {
                s.write_bytes_pending += bytes;
            }
        });
    }

    /// Gives back `bytes` of write-pending accounting; true when this ended the folio's write
    /// I/O, in which case the caller ends its writeback. Without state there is one owner.
    pub(crate) fn write_done(&self, bytes: u64) -> bool {
        self.give_back(bytes, "write", |s| &mut s.write_bytes_pending)
    }

    /// Bytes of write I/O pending, as [`FolioState`] counts them (0 without state).
    pub fn write_bytes_pending(&self) -> u64 {
        self.with_state(|s| s.map_or(0, |s| s.write_bytes_pending))
    }

    /// Clears the writeback flag and wakes waiters.
    pub(crate) fn clear_writeback(&self) {
        self.clear_and_wake(WRITEBACK);
    }

    /// Sets `bit`; true when it was clear. Tests first, so re-dirtying a dirty folio does no
    /// locked write.
    fn set_flag(&self, bit: u32) -> bool {
        !self.test(bit) && self.flags().fetch_or(bit, Ordering::AcqRel) & bit == 0
    }

    pub(crate) fn detach(&self) {
        self.flags().fetch_or(DETACHED, Ordering::AcqRel);
    }
}

impl<F: Borrow<Frame>> fmt::Debug for Folio<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Folio")
            .field("pos", &self.pos)
            .field("size", &self.size())
            .field(
                "flags",
                &format_args!("{:#x}", self.flags().load(Ordering::Relaxed)),
            )
            .finish()
    }
}

/// A reader's pin on a folio: reclaim leaves the folio in the cache while it lives; dropping
/// it unpins. Taken by [`crate::Mapping::find_pinned`].
pub struct FolioPin(Folio);

impl Deref for FolioPin {
    type Target = Folio;
    fn deref(&self) -> &Folio {
        &self.0
    }
}

impl Drop for FolioPin {
    fn drop(&mut self) {
        self.0.flags().fetch_sub(PIN, Ordering::AcqRel);
    }
}

/// Proof that the folio lock is held; dropping it unlocks.
pub struct FolioGuard {
    /// Always `Some` until `into_io` takes the lock away from the guard.
    folio: Option<Folio>,
}

impl Deref for FolioGuard {
    type Target = Folio;
    fn deref(&self) -> &Folio {
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
    pub(crate) fn into_io(mut self) -> Folio {
        match self.folio.take() {
            Some(folio) => folio,
            None => unreachable!("a guard is not used after into_io"),
        }
    }

    /// Copies `src` into the folio at `off`.
    pub fn copy_in(&self, off: usize, src: &[u8]) {
        self.frame().write()[off..off + src.len()].copy_from_slice(src);
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
        let (first, count) = self.blocks_of(off, len);
        self.with_state_made(|s| {
            if let Some(s) = s {
                debug_assert!(
                    s.uptodate.all_set(first, count),
                    "dirtying blocks {first}+{count} that are not uptodate"
                );
                s.dirty.set_range(first, count);
            }
        });
        self.set_flag(DIRTY)
    }

    /// Starts writeback of the locked folio: sets the writeback flag and gives the caller a
    /// share of `write_bytes_pending` (one byte, as Linux's bias) so ioends completing while
    /// the folio is still being written back cannot end its writeback early. Returns whether
    /// the folio has state (and so a share to give back with `write_done(1)`).
    pub(crate) fn start_writeback(&self) -> bool {
        let had = self.set_flag(WRITEBACK);
        debug_assert!(had, "folio {} already under writeback", self.pos);
        self.with_state_made(|s| match s {
            Some(s) => {
                debug_assert_eq!(s.write_bytes_pending, 0);
                s.write_bytes_pending = 1;
                true
            }
            None => false,
        })
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
        let clean = self.with_state_made(|s| match s {
            Some(s) => {
                s.dirty.clear_range(first, end - first);
                !s.dirty.any_set(0, s.dirty.len())
            }
            None => true,
        });
        clean && self.flags().fetch_and(!DIRTY, Ordering::AcqRel) & DIRTY != 0
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
        let folio = (*g).clone();
        let other = (*g).clone();
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
        assert!(folio.try_lock().is_none());
        folio.end_read();
        assert!(!folio.is_locked());
        assert!(folio.try_lock().is_some());
    }
}
