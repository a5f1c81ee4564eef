//! One file's page cache, the kernel's `address_space`: the folio index, the file size, dirty
//! and writeback tags, the error sequence, and the invalidate lock.
//!
//! The index is sharded by max-folio-sized region: folios are naturally aligned and never cross
//! such a region, so the folio covering an offset is always in that region's shard, and
//! threads reading different regions do not touch the same lock.
//!
//! Lock order: invalidate lock → folio lock → shard lock → tags lock, and folio state alone.
//! A shard lock is never held while waiting for a folio lock.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use iomap_dev::{BlockDevice, Frame, FrameTable};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use crate::cache::PageCache;
use crate::error::{Error, Result};
use crate::errseq::ErrSeq;
use crate::folio::{Folio, FolioGuard, FolioPin};
use crate::stats::Gauge;
use crate::writeback::WritebackOps;

pub(crate) const SHARDS: usize = 64;

/// Pages a shard's region holds at least: a node of the index's table.
const SHARD_PAGES: u64 = 64;

type Shard = RwLock<FrameTable>;

/// Dirty and writeback tags: folio offsets, for finding work without scanning every folio.
#[derive(Debug, Default)]
struct Tags {
    dirty: BTreeSet<u64>,
    writeback: BTreeSet<u64>,
    /// When the mapping went from clean to dirty (the kernel's `dirtied_when`), while it is.
    dirtied_when: Option<Instant>,
}

/// One file's cached data.
pub struct Mapping {
    cache: Arc<PageCache>,
    dev: Arc<dyn BlockDevice>,
    block_shift: u32,
    page_shift: u32,
    /// Bytes of file each shard region covers: at least the largest folio, so a folio never
    /// straddles two.
    shard_region: u64,
    min_folio: usize,
    max_folio: usize,
    max_file_size: AtomicU64,
    size: AtomicU64,
    shards: Box<[Shard]>,
    /// Folios in the index.
    folios: AtomicU64,
    tags: Mutex<Tags>,
    errseq: ErrSeq,
    /// The filesystem's error sequence (the kernel's `s_wb_err`), for syncfs.
    sb_errseq: Option<Arc<ErrSeq>>,
    invalidate_lock: RwLock<()>,
    /// How the cache's flusher writes this mapping back.
    writeback_ops: OnceLock<Arc<dyn WritebackOps>>,
    /// The filesystem's say on evicting a clean folio (the kernel's `release_folio`).
    release: OnceLock<ReleaseHook>,
}

/// Called with a clean folio locked before reclaim or [`Mapping::release_clean`] evicts it:
/// false keeps it cached; true lets it go (the filesystem drops what it keeps for the folio;
/// eviction may still fail after, as a busy folio is skipped). It must not block or call into
/// the cache.
pub type ReleaseHook = Arc<dyn Fn(&Folio) -> bool + Send + Sync>;

impl Mapping {
    /// A mapping for a file with `block_size`-byte blocks whose data lives on `dev`.
    ///
    /// The block size must be a power of two from 512 B to 64 KiB, at least the device's
    /// logical block size and at most its maximum request. Folios are at least one block and
    /// one page; when a block is larger than the cache's largest folio, the block wins.
    pub fn new(cache: Arc<PageCache>, dev: Arc<dyn BlockDevice>, block_size: u32) -> Result<Self> {
        if !block_size.is_power_of_two() || !(512..=65536).contains(&block_size) {
            return Err(Error::InvalidArgument(format!(
                "block size {block_size} is not a power of two from 512 to 65536"
            )));
        }
        if block_size < dev.logical_block_size() {
            return Err(Error::InvalidArgument(format!(
                "block size {block_size} is smaller than the device's logical block size {}",
                dev.logical_block_size()
            )));
        }
        if dev.max_request_bytes() < u64::from(block_size) {
            return Err(Error::InvalidArgument(format!(
                "the device's maximum request of {} bytes is smaller than a {block_size}-byte block",
                dev.max_request_bytes()
            )));
        }
        let config = cache.config();
        let min_folio = config.page_size.max(block_size as usize);
        // A folio's I/O counts a reference or two per device request, and a frame counts up
        // to about a million: a folio is never more than 65536 requests.
        let per_requests = dev.max_request_bytes().saturating_mul(1 << 16).min(1 << 62);
        let by_requests = 1usize << (63 - per_requests.leading_zeros());
        let max_folio = config.max_folio_size.min(by_requests).max(min_folio);
        let shards = (0..SHARDS)
            .map(|_| RwLock::new(FrameTable::new(cache.pool().arena())))
            .collect();
        Ok(Self {
            cache,
            dev,
            block_shift: block_size.trailing_zeros(),
            page_shift: config.page_size.trailing_zeros(),
            shard_region: (max_folio as u64).max(SHARD_PAGES * config.page_size as u64),
            min_folio,
            max_folio,
            max_file_size: AtomicU64::new(i64::MAX as u64 & !(u64::from(block_size) - 1)),
            size: AtomicU64::new(0),
            shards,
            folios: AtomicU64::new(0),
            tags: Mutex::new(Tags::default()),
            errseq: ErrSeq::new(),
            sb_errseq: None,
            invalidate_lock: RwLock::new(()),
            writeback_ops: OnceLock::new(),
            release: OnceLock::new(),
        })
    }

    /// Sets the largest file size writes may reach (`EFBIG` beyond), rounded down to a block.
    pub fn set_max_file_size(&self, max: u64) {
        let max = max.min(i64::MAX as u64) & !(self.block_size() as u64 - 1);
        self.max_file_size.store(max, Ordering::Relaxed);
    }

    /// The largest file size.
    pub fn max_file_size(&self) -> u64 {
        self.max_file_size.load(Ordering::Relaxed)
    }

    /// The cache this mapping belongs to.
    pub fn cache(&self) -> &Arc<PageCache> {
        &self.cache
    }

    /// The device holding the file's data.
    pub fn dev(&self) -> &Arc<dyn BlockDevice> {
        &self.dev
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> usize {
        1 << self.block_shift
    }

    /// Smallest folio size.
    pub fn min_folio_size(&self) -> usize {
        self.min_folio
    }

    /// Largest folio size.
    pub fn max_folio_size(&self) -> usize {
        self.max_folio
    }

    /// The file size, the kernel's `i_size`.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Sets the file size. Shrinking does not drop cached data; see [`Mapping::truncate_to`].
    /// Growing zeroes what the folio holding the old end of file caches past it (see
    /// [`Mapping::size_extended`]). The caller holds no folio lock.
    pub fn set_size(&self, size: u64) {
        let old = self.size.swap(size, Ordering::AcqRel);
        if old < size {
            self.size_extended(old, size);
        }
    }

    /// Raises the file size to `end` if it is smaller; the old size when it grew.
    pub(crate) fn grow_size(&self, end: u64) -> Option<u64> {
        // Overwrites never grow the file: keep them from writing the line every reader loads.
        if self.size.load(Ordering::Acquire) >= end {
            return None;
        }
        let old = self.size.fetch_max(end, Ordering::AcqRel);
        (old < end).then_some(old)
    }

    /// After the file grew from `from`, zeroes `[from, to)` in the folio that held the old end
    /// of file, if it is cached: the kernel's `pagecache_isize_extended`. A shared mapping
    /// maps whole pages, so a store through it can put bytes past the end of file into that
    /// folio, which writeback would zero but growing the file would make file data. Waits for
    /// the folio's writeback, and takes its lock: the caller must not hold it.
    pub fn size_extended(&self, from: u64, to: u64) {
        let Some(folio) = self.find_folio(from) else {
            return;
        };
        if folio.pos() == from {
            return;
        }
        let guard = folio.lock();
        if guard.is_detached() || from <= guard.pos() || guard.end() <= from {
            return;
        }
        guard.wait_writeback();
        let hi = to.min(guard.end());
        if from < hi {
            guard.zero((from - guard.pos()) as usize, (hi - from) as usize);
        }
    }

    /// The error sequence writeback errors are recorded in.
    pub fn errseq(&self) -> &ErrSeq {
        &self.errseq
    }

    /// Records writeback errors in `sb` as well: the filesystem-wide sequence syncfs checks.
    pub fn set_sb_errseq(&mut self, sb: Arc<ErrSeq>) {
        self.sb_errseq = Some(sb);
    }

    /// Lets the cache's flusher write this mapping back with `ops` (once; later calls are
    /// ignored and return false).
    pub fn set_writeback_ops(&self, ops: Arc<dyn WritebackOps>) -> bool {
        self.writeback_ops.set(ops).is_ok()
    }

    /// Sets the filesystem's release hook (once; later calls are ignored and return false).
    pub fn set_release_hook(&self, hook: ReleaseHook) -> bool {
        self.release.set(hook).is_ok()
    }

    /// The writeback ops the flusher uses, if set.
    pub fn writeback_ops(&self) -> Option<Arc<dyn WritebackOps>> {
        self.writeback_ops.get().cloned()
    }

    /// When the mapping became dirty, if it is: the flusher writes back oldest first.
    pub fn dirtied_when(&self) -> Option<Instant> {
        self.tags.lock().dirtied_when
    }

    /// Restarts the dirty age of a mapping that is still dirty after being written back.
    pub(crate) fn redirtied_now(&self) {
        let mut tags = self.tags.lock();
        if !tags.dirty.is_empty() {
            tags.dirtied_when = Some(Instant::now());
        }
    }

    /// The filesystem-wide error sequence, if one was set.
    pub fn sb_errseq(&self) -> Option<&Arc<ErrSeq>> {
        self.sb_errseq.as_ref()
    }

    /// Records a writeback error (errno) for every open file of this mapping and of its
    /// filesystem to see once, the kernel's `mapping_set_error`.
    pub fn set_error(&self, errno: i32) {
        self.errseq.set(errno);
        if let Some(sb) = &self.sb_errseq {
            sb.set(errno);
        }
        self.cache.stats().writeback_errors.add(1);
    }

    /// The invalidate lock: taken shared by paths that add folios from the device (reads,
    /// mapped writes) and exclusive by the filesystem around hole punching and truncation, so
    /// no folio is read in from an extent that is being removed.
    pub fn invalidate_lock(&self) -> &RwLock<()> {
        &self.invalidate_lock
    }

    // ---- the index ----

    fn shard(&self, pos: u64) -> &Shard {
        &self.shards[(pos / self.shard_region) as usize % SHARDS]
    }

    /// The index key of the page holding `pos`.
    fn key(&self, pos: u64) -> u64 {
        pos >> self.page_shift
    }

    /// The folio of a frame the index keeps at `key`.
    fn folio_at(&self, key: u64, frame: Frame) -> Folio {
        Folio::from_frame(frame, key << self.page_shift, self.block_shift)
    }

    fn covering(&self, table: &FrameTable, pos: u64) -> Option<Folio> {
        table
            .get(self.key(pos))
            .map(|(key, frame)| self.folio_at(key, frame))
    }

    /// Whether the index holds `folio` itself (not another folio at its offset).
    fn holds(&self, table: &FrameTable, folio: &Folio) -> bool {
        table
            .with(self.key(folio.pos()), |_, f| Frame::same(f, folio.frame()))
            .unwrap_or(false)
    }

    /// The cached folio holding `pos`, if any.
    pub fn find_folio(&self, pos: u64) -> Option<Folio> {
        self.covering(&self.shard(pos).read(), pos)
    }

    /// The cached folio holding `pos`, pinned against eviction while the pin lives (the
    /// reference a kernel reader takes with `filemap_get_folio`).
    pub fn find_pinned(&self, pos: u64) -> Option<FolioPin> {
        let shard = self.shard(pos).read();
        self.covering(&shard, pos).map(|f| f.pin())
    }

    /// Runs `f` on the folio holding `pos` with its shard held shared, lending the index's
    /// reference: the cached read path counts none.
    pub(crate) fn with_folio<R>(&self, pos: u64, f: impl FnOnce(&Folio<&Frame>) -> R) -> Option<R> {
        let shard: RwLockReadGuard<'_, _> = self.shard(pos).read();
        shard.with(self.key(pos), |key, frame| {
            f(&Folio::from_frame(
                frame,
                key << self.page_shift,
                self.block_shift,
            ))
        })
    }

    /// Puts a new folio's frame in the index, whose shard the caller holds exclusive and
    /// found clear where the folio goes.
    fn index(&self, table: &mut FrameTable, guard: &FolioGuard) {
        if table
            .insert(self.key(guard.pos()), guard.frame().clone())
            .is_err()
        {
            unreachable!("folio at {} overlaps a cached one", guard.pos());
        }
    }

    /// The folio holding `pos`, locked; if none is cached, a new one sized for a `len_hint`-byte
    /// operation at `pos` is added (not uptodate). The second value is true for a new folio.
    pub(crate) fn grab_folio(&self, pos: u64, len_hint: u64) -> (FolioGuard, bool) {
        loop {
            if let Some(folio) = self.find_folio(pos) {
                let guard = folio.lock();
                if guard.is_detached() {
                    continue;
                }
                // Written through the cache again: kept, whatever an uncached write wanted
                // (which marks its folios after writing them).
                guard.clear_dropbehind();
                return (guard, false);
            }
            let mut map = self.shard(pos).write();
            if self.covering(&map, pos).is_some() {
                continue;
            }
            let (fpos, size) = self.new_folio_extent(&map, pos, len_hint);
            let guard = Folio::new_in(self.cache.pool().arena(), fpos, size, self.block_shift);
            self.index(&mut map, &guard);
            drop(map);
            self.added(size);
            return (guard, true);
        }
    }

    /// A new folio at `pos` if none is cached: `None` when one is (the caller skips it, as
    /// readahead does).
    pub(crate) fn add_folio(&self, pos: u64, len_hint: u64) -> Option<FolioGuard> {
        let mut map = self.shard(pos).write();
        if self.covering(&map, pos).is_some() {
            return None;
        }
        let (fpos, size) = self.new_folio_extent(&map, pos, len_hint);
        let guard = Folio::new_in(self.cache.pool().arena(), fpos, size, self.block_shift);
        self.index(&mut map, &guard);
        drop(map);
        self.added(size);
        Some(guard)
    }

    /// Accounts a folio just added, and keeps the cache within its budget.
    fn added(&self, size: usize) {
        self.cache.stats().folios_added.add(1);
        self.cache.gauges().added(size as u64);
        self.folios.fetch_add(1, Ordering::Relaxed);
        self.cache.after_add();
    }

    /// Where a new folio holding `pos` starts and how big it is: as large as `len_hint` asks,
    /// up to the largest folio, but naturally aligned and clear of cached folios.
    fn new_folio_extent(&self, map: &FrameTable, pos: u64, len_hint: u64) -> (u64, usize) {
        let fpos = pos & !(self.min_folio as u64 - 1);
        let want = (pos - fpos).saturating_add(len_hint).max(1);
        let mut size = if want >= self.max_folio as u64 {
            self.max_folio
        } else {
            // Largest power of two not above `want`.
            (1usize << (63 - want.leading_zeros())).max(self.min_folio)
        };
        while size > self.min_folio
            && (fpos % size as u64 != 0
                || map
                    .range(self.key(fpos), self.key(fpos + size as u64))
                    .next()
                    .is_some())
        {
            size /= 2;
        }
        (fpos, size)
    }

    /// The cached folios overlapping `[start, end)`, in file order.
    pub fn folios_in(&self, start: u64, end: u64) -> Vec<Folio> {
        if start >= end {
            return Vec::new();
        }
        let region = self.shard_region;
        let first = start / region;
        let last = (end - 1) / region;
        let (kstart, kend) = (self.key(start), end.div_ceil(1 << self.page_shift));
        let mut out = Vec::new();
        if last - first < SHARDS as u64 {
            for r in first..=last {
                let shard = self.shard(r * region).read();
                let lo = kstart.max(self.key(r * region));
                let hi = kend.min(self.key((r + 1).saturating_mul(region)));
                out.extend(shard.range(lo, hi).map(|(k, f)| self.folio_at(k, f)));
            }
        } else {
            for shard in self.shards.iter() {
                out.extend(
                    shard
                        .read()
                        .range(kstart, kend)
                        .map(|(k, f)| self.folio_at(k, f)),
                );
            }
            out.sort_by_key(|f| f.pos());
        }
        out
    }

    /// Up to `n` cached folios of index shard `shard` at offsets from `from`, in offset order:
    /// reclaim's clock hand moves through a mapping shard by shard. `None` when the shard is
    /// busy: reclaim runs under folio locks of the allocating thread, and never waits for a
    /// shard (a queued writer would make a shared lock wait for a reader that may be waiting
    /// for one of those folios).
    pub(crate) fn shard_batch(&self, shard: usize, from: u64, n: usize) -> Option<Vec<Folio>> {
        let shard = self.shards[shard % SHARDS].try_read()?;
        let from = self.key(from.next_multiple_of(1 << self.page_shift));
        Some(
            shard
                .range(from, u64::MAX)
                .filter(|&(k, _)| k >= from)
                .take(n)
                .map(|(k, f)| self.folio_at(k, f))
                .collect(),
        )
    }

    /// Number of cached folios.
    pub fn nr_folios(&self) -> usize {
        self.folios.load(Ordering::Relaxed) as usize
    }

    /// Removes a locked folio from the index; its dirty data is discarded.
    fn remove_folio(&self, guard: &FolioGuard) {
        let mut shard = self.shard(guard.pos()).write();
        if self.holds(&shard, guard) {
            shard.remove(self.key(guard.pos()));
            self.cache.gauges().removed(guard.size() as u64);
            self.folios.fetch_sub(1, Ordering::Relaxed);
        }
        self.untag_removed(guard);
        drop(shard);
        self.cache.stats().folios_removed.add(1);
    }

    /// Detaches a folio just taken out of the index and clears its tags. Called with its shard
    /// still held exclusive: tags are kept by offset, and once the shard is let go a new folio
    /// may take the offset and be tagged, which clearing the old folio's tags would undo.
    fn untag_removed(&self, guard: &FolioGuard) {
        guard.detach();
        self.tag(Gauge::Dirty, guard, false);
        self.tag(Gauge::Writeback, guard, false);
    }

    // ---- writeback state ----

    /// Starts writeback of a locked, dirty folio: writeback flag and tag set, dirty tag and flag
    /// cleared (its per-block dirty bits are cleared by the caller as it goes). Returns whether
    /// the folio holds a write-pending share (see `Folio::start_writeback`).
    pub(crate) fn start_writeback(&self, guard: &FolioGuard) -> bool {
        let share = guard.start_writeback();
        self.tag(Gauge::Writeback, guard, true);
        share
    }

    /// Ends writeback of a folio whose write I/O is all done: flag and tag cleared, waiters
    /// woken. Runs on completion paths without the folio lock.
    pub(crate) fn end_writeback(&self, folio: &Folio) {
        // A folio removed from the index had its tags cleared then, and its offset may since
        // hold another folio whose tags are not this one's to clear.
        if !folio.is_detached() {
            self.tag(Gauge::Writeback, folio, false);
        }
        folio.clear_writeback();
        self.cache.throttle().written_back(folio.size() as u64);
        // An uncached write's folio goes once it is clean on the device, unless it is busy
        // (locked, redirtied or pinned), when it stays like any other.
        if folio.is_dropbehind() {
            self.evict(folio);
        }
    }

    /// Offsets of folios under writeback in `[start, end)`, in file order.
    pub fn writeback_folios(&self, start: u64, end: u64) -> Vec<u64> {
        if start >= end {
            return Vec::new();
        }
        self.tags
            .lock()
            .writeback
            .range(start..end)
            .copied()
            .collect()
    }

    /// Waits until no folio overlapping `[start, end)` is under writeback.
    pub fn wait_writeback_range(&self, start: u64, end: u64) {
        let from = start.saturating_sub(self.max_folio as u64 - 1);
        for pos in self.writeback_folios(from, end) {
            if let Some(folio) = self.find_folio(pos) {
                if folio.end() > start {
                    folio.wait_writeback();
                }
            }
        }
    }

    // ---- dirty state ----

    /// Marks the blocks touching `[off, off + len)` of a locked folio dirty, and tags it.
    pub(crate) fn mark_dirty(&self, guard: &FolioGuard, off: usize, len: usize) {
        if guard.set_range_dirty(off, len) {
            self.tag(Gauge::Dirty, guard, true);
        }
    }

    /// Clears dirty bits of blocks wholly inside `[off, off + len)` of a locked folio, and
    /// untags it when it becomes clean.
    pub fn clear_dirty(&self, guard: &FolioGuard, off: usize, len: usize) {
        if guard.clear_range_dirty(off, len) {
            self.tag(Gauge::Dirty, guard, false);
        }
    }

    /// Sets or clears a tag of `folio`, moving the cache's gauge when the tag changes.
    fn tag(&self, gauge: Gauge, folio: &Folio, on: bool) {
        let mut tags = self.tags.lock();
        let set = match gauge {
            Gauge::Dirty => &mut tags.dirty,
            Gauge::Writeback => &mut tags.writeback,
        };
        let changed = if on {
            set.insert(folio.pos())
        } else {
            set.remove(&folio.pos())
        };
        if changed {
            self.cache.gauges().tagged(gauge, folio.size() as u64, on);
            if let Gauge::Dirty = gauge {
                match (on, tags.dirty.is_empty()) {
                    (true, _) if tags.dirtied_when.is_none() => {
                        tags.dirtied_when = Some(Instant::now());
                    }
                    (false, true) => tags.dirtied_when = None,
                    _ => {}
                }
            }
        }
    }

    /// Offsets of dirty folios in `[start, end)`, in file order.
    pub fn dirty_folios(&self, start: u64, end: u64) -> Vec<u64> {
        if start >= end {
            return Vec::new();
        }
        self.tags.lock().dirty.range(start..end).copied().collect()
    }

    /// Whether the cache holds data over `[start, end)` that the device does not have yet: a
    /// dirty block, or a folio under writeback (whose extent may still be unwritten until its
    /// ioend completes), the kernel's `filemap_range_needs_writeback`.
    pub fn range_needs_writeback(&self, start: u64, end: u64) -> bool {
        let from = start.saturating_sub(self.max_folio as u64 - 1);
        let under_writeback = self
            .writeback_folios(from, end)
            .into_iter()
            .filter_map(|p| self.find_folio(p))
            .any(|f| f.end() > start && f.is_writeback());
        under_writeback || self.range_dirty(start, end)
    }

    /// Whether any block touching `[start, end)` is dirty in the cache.
    pub fn range_dirty(&self, start: u64, end: u64) -> bool {
        self.dirty_folios(start.saturating_sub(self.max_folio as u64), end)
            .into_iter()
            .filter_map(|p| self.find_folio(p))
            .any(|f| {
                let lo = start.max(f.pos());
                let hi = end.min(f.end());
                lo < hi && {
                    let (first, count) = f.blocks_of((lo - f.pos()) as usize, (hi - lo) as usize);
                    (first..first + count).any(|b| f.block_dirty(b))
                }
            })
    }

    // ---- invalidation ----

    /// Drops cached data in `[start, end)`, the kernel's `truncate_inode_pages_range`: folios
    /// wholly inside are removed (dirty data too), partly covered folios are zeroed over the
    /// range and lose the dirty bits of blocks wholly inside it. Waits for writeback. The
    /// caller holds the invalidate lock exclusive when extents are going away (punch,
    /// truncate).
    pub fn truncate_range(&self, start: u64, end: u64) {
        for folio in self.folios_in(start, end) {
            let guard = folio.lock();
            if guard.is_detached() {
                continue;
            }
            guard.wait_writeback();
            if start <= guard.pos() && guard.end() <= end {
                self.remove_folio(&guard);
                continue;
            }
            let lo = start.max(guard.pos());
            let hi = end.min(guard.end());
            let (off, len) = ((lo - guard.pos()) as usize, (hi - lo) as usize);
            guard.zero(off, len);
            self.clear_dirty(&guard, off, len);
        }
    }

    /// Truncates the file to `size`: sets the size, then drops cached data past it (the
    /// remainder of the folio holding the new end is zeroed). Zeroing the tail of the EOF block
    /// on disk is `truncate_page`'s job.
    pub fn truncate_to(&self, size: u64) {
        self.set_size(size);
        self.truncate_range(size, u64::MAX);
    }

    /// Evicts `folio` if it is clean, unlocked, not under writeback, still cached and not
    /// pinned by a reader; whether it was.
    ///
    /// The pin stands for the reference the kernel's `folio_ref_freeze` checks: a reader pins
    /// the folio it filled until it has copied from it, so reclaim cannot take a read's data
    /// before the read sees it. Pins are taken with the shard held shared and checked with it
    /// held exclusive, so none can appear meanwhile.
    pub(crate) fn evict(&self, folio: &Folio) -> bool {
        let Some(guard) = folio.try_lock() else {
            return false;
        };
        if guard.is_detached() || guard.is_dirty() || guard.is_writeback() || guard.is_pinned() {
            return false;
        }
        if let Some(release) = self.release.get() {
            if !release(&guard) {
                return false;
            }
        }
        // Never wait for the shard here: a reader holding it may be waiting for a folio's data
        // that a writer holds while its source reads through this cache. A busy shard skips
        // the folio.
        let Some(mut shard) = self.shard(guard.pos()).try_write() else {
            return false;
        };
        if guard.is_pinned() {
            return false;
        }
        if self.holds(&shard, &guard) {
            shard.remove(self.key(guard.pos()));
            self.cache.gauges().removed(guard.size() as u64);
            self.folios.fetch_sub(1, Ordering::Relaxed);
        }
        self.untag_removed(&guard);
        drop(shard);
        self.cache.stats().folios_removed.add(1);
        true
    }

    /// Releases clean, unlocked folios in `[start, end)` that are not under writeback, the
    /// kernel's `invalidate_mapping_pages`. Returns how many were released.
    pub fn release_clean(&self, start: u64, end: u64) -> usize {
        let mut released = 0;
        for folio in self.folios_in(start, end) {
            if self.evict(&folio) {
                released += 1;
            }
        }
        released
    }

    // ---- cache scans ----

    /// Calls `punch` for each maximal block-aligned run of `[start, end)` that holds no dirty
    /// block in the cache: the ranges whose delalloc reservation a failed or short write may
    /// give back (rule R9). Runs are in file order; the first error stops the scan.
    pub fn punch_clean_ranges(
        &self,
        start: u64,
        end: u64,
        mut punch: impl FnMut(u64, u64) -> Result<()>,
    ) -> Result<()> {
        let bs = self.block_size() as u64;
        let start = start - start % bs;
        let end = end.div_ceil(bs) * bs;
        let mut run_start = start;
        for folio in self.folios_in(start, end) {
            for (off, len) in folio.dirty_ranges() {
                let lo = (folio.pos() + off as u64).max(start);
                let hi = (folio.pos() + (off + len) as u64).min(end);
                if lo >= hi {
                    continue;
                }
                if run_start < lo {
                    punch(run_start, lo)?;
                }
                run_start = hi;
            }
        }
        if run_start < end {
            punch(run_start, end)?;
        }
        Ok(())
    }

    /// The first offset in `[start, end)` where the cache holds data (`want_data`) or lacks it,
    /// at block granularity; an uptodate block counts as data.
    pub fn seek_cached(&self, start: u64, end: u64, want_data: bool) -> Option<u64> {
        let bs = self.block_size() as u64;
        let mut pos = start;
        let mut folios = self.folios_in(start, end).into_iter().peekable();
        while pos < end {
            match folios.peek() {
                Some(f) if f.pos() <= pos => {
                    let folio = folios.next()?;
                    while pos < end && pos < folio.end() {
                        let block = ((pos - folio.pos()) / bs) as usize;
                        if folio.block_uptodate(block) == want_data {
                            return Some(pos);
                        }
                        pos = (pos / bs + 1) * bs;
                    }
                }
                next => {
                    // Not cached from `pos` to the next folio (or the end).
                    if !want_data {
                        return Some(pos);
                    }
                    pos = next.map_or(end, |f| f.pos());
                }
            }
        }
        None
    }
}

impl Drop for Mapping {
    /// A mapping dropped with folios cached takes them out of its cache's gauges.
    fn drop(&mut self) {
        let gauges = self.cache.gauges();
        let tags = self.tags.get_mut();
        let page_shift = self.page_shift;
        for shard in self.shards.iter_mut() {
            for (key, f) in shard.get_mut().range(0, u64::MAX) {
                let pos = &(key << page_shift);
                let size = f.len() as u64;
                gauges.removed(size);
                if tags.dirty.contains(pos) {
                    gauges.tagged(Gauge::Dirty, size, false);
                }
                if tags.writeback.contains(pos) {
                    gauges.tagged(Gauge::Writeback, size, false);
                }
            }
        }
    }
}
