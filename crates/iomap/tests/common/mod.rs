//! A test filesystem for the engine: one file whose extent map is kept per block in memory and
//! hands out every mapping kind (hole, delalloc, mapped, unwritten, inline, shared with a
//! srcmap), on a memory device wrapped to log and fail requests.
//!
//! It behaves like XFS where the engine can tell: writes reserve delalloc (ENOSPC at write
//! time), the validity cookie changes with every extent map change, a short write gives back
//! its reservation only under clean cache (R9), extending writes and truncates zero the gap;
//! writeback allocates delalloc as unwritten and converts it when the ioend completes, writes
//! to shared blocks go to new space remapped at completion, and a failed writeback mapping
//! discards the delalloc from the failing offset (R15).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::Arc;

use iomap::iomap_dev::{
    BlockDevice, BlockDeviceExt, DevAddr, FaultDevice, FaultRule, LogDevice, LoggedRequest,
    MemDevice, Op,
};
use iomap::{
    CacheConfig, ErrSeq, Error, Folio, FolioGuard, InlineData, Ioend, Iomap, IomapFlags, IomapKind,
    IomapOps, IomapPair, IterFlags, Mapping, OpenFile, PageCache, Result, SliceSource, WriteSource,
    WritebackControl, WritebackCtx, WritebackOps,
};
use parking_lot::{Mutex, RwLock};

pub type Dev = LogDevice<FaultDevice<MemDevice>>;

/// What one file block is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ext {
    /// Reserved, not allocated.
    Delalloc,
    /// Allocated and written; `shared` blocks are copied on write.
    Mapped { block: u64, shared: bool },
    /// Allocated, never written.
    Unwritten { block: u64 },
    /// A shared block being written: a delalloc reservation for the new copy, old data at
    /// `old`.
    Cow { old: u64 },
    /// A shared block whose new copy writeback allocated at `new`; remapped there when the
    /// ioend completes.
    CowAlloc { old: u64, new: u64 },
}

/// A hook run on `valid`; returning true makes the mapping stale.
pub type ValidHook = Box<dyn FnMut(&mut FsState, &Dev) -> bool + Send>;

pub struct FsState {
    pub blocks: BTreeMap<u64, Ext>,
    pub next_dev_block: u64,
    /// Device blocks freed by punch and truncate, reused first so stale data is real.
    pub freed: Vec<u64>,
    /// Blocks that may still be reserved or allocated.
    pub free_blocks: u64,
    pub cookie: u64,
    /// `begin` fails with this errno for offsets in the range.
    pub fail_begin: Option<(u64, u64, i32)>,
    pub on_valid: Option<ValidHook>,
    pub inline: Option<InlineData>,
    /// Every `end` call: (pos, len, done, flags).
    pub ends: Vec<(u64, u64, u64, IterFlags)>,
    /// Every range whose reservation was given back: (start, end).
    pub punched: Vec<(u64, u64)>,
    /// Writeback mapping fails with this errno for offsets in the range.
    pub fail_writeback: Option<(u64, u64, i32)>,
    /// Offsets the engine's discard was told of.
    pub discards: Vec<u64>,
    /// Ioend completions the filesystem ran, in order.
    pub completions: Vec<Ioend>,
    /// Metadata commits (fsync).
    pub commits: u32,
    /// At most this many blocks are mapped by one writeback_range call.
    pub wb_max_blocks: Option<u64>,
    /// Mapped blocks that start a mapping flagged BOUNDARY at writeback.
    pub boundary: Vec<u64>,
}

/// What the filesystem shares with its writeback side.
pub struct FsCore {
    pub dev: Arc<Dev>,
    pub bs: u64,
    pub state: Mutex<FsState>,
}

pub struct TestFs {
    core: Arc<FsCore>,
    pub mapping: Arc<Mapping>,
    pub wb: Arc<dyn WritebackOps>,
    /// The filesystem-wide error sequence syncfs reports from.
    pub sb: Arc<ErrSeq>,
}

impl Deref for TestFs {
    type Target = FsCore;
    fn deref(&self) -> &FsCore {
        &self.core
    }
}

/// The filesystem's writeback operations.
pub struct FsWriteback(Arc<FsCore>);

pub const DEV_BYTES: u64 = 1 << 30;

/// The byte freshly allocated device blocks hold.
pub const STALE: u8 = 0xdb;

impl FsCore {
    pub fn log(&self) -> Vec<LoggedRequest> {
        self.dev.take()
    }

    pub fn fault(&self) -> &FaultDevice<MemDevice> {
        self.dev.inner()
    }

    pub fn mem(&self) -> &MemDevice {
        self.dev.inner().inner()
    }

    pub fn dev_addr(&self, block: u64) -> DevAddr {
        DevAddr(block * self.bs)
    }

    /// Allocates a device block and fills it with stale-looking bytes, as a freed block of
    /// another file would hold: a read that should zero-fill and reads instead shows them.
    pub fn alloc_stale(&self, st: &mut FsState) -> u64 {
        let b = st.freed.pop().unwrap_or_else(|| {
            st.next_dev_block += 1;
            st.next_dev_block - 1
        });
        self.mem()
            .write_at(self.dev_addr(b), &vec![STALE; self.bs as usize])
            .unwrap();
        b
    }

    pub fn ext(&self, block: u64) -> Option<Ext> {
        self.state.lock().blocks.get(&block).copied()
    }

    /// Device contents of mapped file blocks, for comparison with a model: file block → data.
    pub fn device_view(&self) -> BTreeMap<u64, Vec<u8>> {
        let st = self.state.lock();
        st.blocks
            .iter()
            .filter_map(|(b, e)| match e {
                Ext::Mapped { block, .. } => {
                    let mut buf = vec![0u8; self.bs as usize];
                    self.mem().read_at(self.dev_addr(*block), &mut buf).unwrap();
                    Some((*b, buf))
                }
                _ => None,
            })
            .collect()
    }

    pub fn fail_reads(&self, dev_start: u64, dev_end: u64, errno: i32) {
        self.fault()
            .add_rule(FaultRule::range(Op::Read, dev_start, dev_end, errno));
    }
}

impl TestFs {
    pub fn new(block_size: u32, max_folio: usize) -> Self {
        Self::with_config(
            block_size,
            CacheConfig {
                page_size: 4096,
                max_folio_size: max_folio,
            },
            1 << 20,
        )
    }

    pub fn with_config(block_size: u32, config: CacheConfig, max_request: u64) -> Self {
        let dev = Arc::new(LogDevice::new(FaultDevice::new(MemDevice::with_geometry(
            DEV_BYTES,
            512,
            max_request,
        ))));
        let cache = PageCache::new(config).unwrap();
        let sb = Arc::new(ErrSeq::new());
        let mut mapping = Mapping::new(cache, dev.clone(), block_size).unwrap();
        mapping.set_sb_errseq(Arc::clone(&sb));
        let mapping = Arc::new(mapping);
        let bs = u64::from(block_size);
        let core = Arc::new(FsCore {
            dev,
            bs,
            state: Mutex::new(FsState {
                blocks: BTreeMap::new(),
                // Leave device block 0 unused so a zero address is never valid data.
                next_dev_block: 1,
                freed: Vec::new(),
                free_blocks: DEV_BYTES / bs - 1,
                cookie: 1,
                fail_begin: None,
                on_valid: None,
                inline: None,
                ends: Vec::new(),
                punched: Vec::new(),
                fail_writeback: None,
                discards: Vec::new(),
                completions: Vec::new(),
                commits: 0,
                wb_max_blocks: None,
                boundary: Vec::new(),
            }),
        });
        Self {
            wb: Arc::new(FsWriteback(Arc::clone(&core))),
            core,
            mapping,
            sb,
        }
    }

    /// A file whose data lives inline (in "metadata") up to one block.
    pub fn new_inline(block_size: u32) -> Self {
        let fs = Self::new(block_size, 1 << 21);
        fs.mapping.set_max_file_size(u64::from(block_size));
        fs.state.lock().inline = Some(Arc::new(RwLock::new(Vec::new())));
        fs
    }

    /// Maps file blocks `[first, first + n)` to fresh device blocks holding `fill(i)` bytes.
    pub fn map_blocks(&self, first: u64, n: u64, fill: impl Fn(u64) -> u8) -> u64 {
        let mut st = self.state.lock();
        let dev_first = st.next_dev_block;
        for i in 0..n {
            let b = st.next_dev_block;
            st.next_dev_block += 1;
            st.free_blocks -= 1;
            st.blocks.insert(
                first + i,
                Ext::Mapped {
                    block: b,
                    shared: false,
                },
            );
            let data: Vec<u8> = (0..self.bs).map(|j| fill(i * self.bs + j)).collect();
            self.mem().write_at(self.dev_addr(b), &data).unwrap();
        }
        st.cookie += 1;
        let end = (first + n) * self.bs;
        if self.mapping.size() < end {
            self.mapping.set_size(end);
        }
        dev_first
    }

    /// Allocates unwritten blocks over the holes of `[first, first + n)`.
    pub fn fallocate_blocks(&self, first: u64, n: u64) -> Result<()> {
        let mut st = self.state.lock();
        for b in first..first + n {
            if st.blocks.contains_key(&b) {
                continue;
            }
            if st.free_blocks == 0 {
                return Err(Error::from_errno(28));
            }
            st.free_blocks -= 1;
            let d = self.alloc_stale(&mut st);
            st.blocks.insert(b, Ext::Unwritten { block: d });
        }
        st.cookie += 1;
        Ok(())
    }

    /// Marks mapped blocks of `[first, first + n)` shared, as a reflink would.
    pub fn share_blocks(&self, first: u64, n: u64) {
        let mut st = self.state.lock();
        for b in first..first + n {
            if let Some(Ext::Mapped { shared, .. }) = st.blocks.get_mut(&b) {
                *shared = true;
            }
        }
        st.cookie += 1;
    }

    // ---- file operations as a filesystem would wrap the engine ----

    /// A write as the filesystem does it: zero the gap past EOF first, then write.
    pub fn write(&self, pos: u64, data: &[u8]) -> Result<u64> {
        self.write_from(pos, data.len() as u64, &mut SliceSource::new(data))
    }

    pub fn write_from(&self, pos: u64, len: u64, src: &mut dyn WriteSource) -> Result<u64> {
        let size = self.mapping.size();
        if pos > size && len > 0 {
            iomap::zero_range(&self.mapping, self, size, pos - size)?;
        }
        iomap::buffered_write(&self.mapping, self, pos, len, src)
    }

    pub fn read(&self, pos: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let n = iomap::buffered_read(&self.mapping, self, pos, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Reads into `buf`, ignoring how much came back (for load generators).
    pub fn read_into(&self, pos: u64, buf: &mut [u8]) {
        iomap::buffered_read(&self.mapping, self, pos, buf).unwrap();
    }

    /// Truncate as XFS does: zero the tail of the new EOF block (or the gap when growing),
    /// drop the cache past EOF, free blocks past it.
    pub fn truncate(&self, size: u64) -> Result<()> {
        let old = self.mapping.size();
        if size > old {
            iomap::zero_range(&self.mapping, self, old, size - old)?;
            self.mapping.set_size(size);
            return Ok(());
        }
        iomap::truncate_page(&self.mapping, self, size)?;
        let _inval = self.mapping.invalidate_lock().write();
        self.mapping.truncate_to(size);
        self.remove_blocks(size.div_ceil(self.bs), u64::MAX);
        Ok(())
    }

    /// Punches a hole: zero partial blocks at the edges, drop the cache inside, free whole
    /// blocks.
    pub fn punch(&self, pos: u64, len: u64) -> Result<()> {
        let end = pos + len;
        let first_whole = pos.div_ceil(self.bs);
        let end_whole = end / self.bs;
        if first_whole >= end_whole {
            iomap::zero_range(&self.mapping, self, pos, len)?;
            return Ok(());
        }
        iomap::zero_range(&self.mapping, self, pos, first_whole * self.bs - pos)?;
        iomap::zero_range(
            &self.mapping,
            self,
            end_whole * self.bs,
            end - end_whole * self.bs,
        )?;
        let _inval = self.mapping.invalidate_lock().write();
        self.mapping
            .truncate_range(first_whole * self.bs, end_whole * self.bs);
        self.remove_blocks(first_whole, end_whole);
        Ok(())
    }

    fn remove_blocks(&self, first: u64, end: u64) {
        let mut st = self.state.lock();
        let gone: Vec<u64> = st.blocks.range(first..end).map(|(b, _)| *b).collect();
        for b in gone {
            match st.blocks.remove(&b) {
                Some(Ext::Mapped {
                    block,
                    shared: false,
                })
                | Some(Ext::Unwritten { block })
                | Some(Ext::CowAlloc { new: block, .. }) => st.freed.push(block),
                // Reservations hold no block; a shared block's old copy is another file's.
                _ => {}
            }
            st.free_blocks += 1;
        }
        st.cookie += 1;
    }

    /// Writes back everything and waits: data-integrity writeback of the whole file.
    pub fn flush_all(&self) {
        iomap::write_and_wait_range(&self.mapping, &self.wb, 0, u64::MAX).unwrap();
    }

    /// Starts data-integrity writeback of the whole file without waiting for it.
    pub fn flush_all_nowait(&self) {
        self.writeback(&mut WritebackControl::integrity(0, u64::MAX))
            .unwrap();
    }

    /// Writes back with `wbc`, without waiting.
    pub fn writeback(&self, wbc: &mut WritebackControl) -> Result<()> {
        iomap::writepages(&self.mapping, &self.wb, wbc)
    }

    pub fn open(&self) -> OpenFile {
        OpenFile::open(&self.mapping)
    }

    pub fn fsync(&self, file: &OpenFile) -> Result<()> {
        file.fsync(&self.wb, 0, u64::MAX, false)
    }

    /// Device requests of one kind in the log.
    pub fn requests(log: &[LoggedRequest], op: Op) -> Vec<(u64, u64)> {
        log.iter()
            .filter(|r| r.op == op)
            .map(|r| (r.addr.0, r.len))
            .collect()
    }

    /// Length of the run of blocks from `b` that map like `b` does (same kind, contiguous on
    /// the device), at most `max` blocks.
    pub fn run_len(st: &FsState, b: u64, max: u64) -> u64 {
        let first = st.blocks.get(&b).copied();
        let mut n = 1;
        while n < max {
            let next = st.blocks.get(&(b + n)).copied();
            let same = match (first, next) {
                (None, None) => true,
                (Some(Ext::Delalloc), Some(Ext::Delalloc)) => true,
                (
                    Some(Ext::Mapped {
                        block: a,
                        shared: s,
                    }),
                    Some(Ext::Mapped {
                        block: c,
                        shared: t,
                    }),
                ) => c == a + n && s == t,
                (Some(Ext::Unwritten { block: a }), Some(Ext::Unwritten { block: c })) => {
                    c == a + n
                }
                (Some(Ext::Cow { old: a }), Some(Ext::Cow { old: c })) => c == a + n,
                (Some(Ext::CowAlloc { old: a, .. }), Some(Ext::CowAlloc { old: c, .. })) => {
                    c == a + n
                }
                _ => false,
            };
            if !same {
                break;
            }
            n += 1;
        }
        n
    }
}

impl IomapOps for TestFs {
    fn begin(&self, pos: u64, len: u64, flags: IterFlags) -> Result<IomapPair> {
        let mut st = self.state.lock();
        if let Some((start, end, errno)) = st.fail_begin {
            if pos >= start && pos < end {
                return Err(Error::from_errno(errno));
            }
        }
        if let Some(inline) = &st.inline {
            return Ok(Iomap::inline(0, self.bs, Arc::clone(inline))
                .with_cookie(st.cookie)
                .into());
        }
        let bs = self.bs;
        let b = pos / bs;
        let nblocks = (pos + len).div_ceil(bs) - b;
        let write = flags.intersects(IterFlags::WRITE);
        let run = Self::run_len(&st, b, nblocks);
        let off = b * bs;
        let pair: IomapPair = match st.blocks.get(&b).copied() {
            None if write => {
                // Reserve the holes of a run of holes and delalloc blocks, and hand the run out
                // as one new delalloc extent, as XFS may after merging reservations.
                let mut run = 0;
                let mut holes = 0;
                while run < nblocks {
                    match st.blocks.get(&(b + run)) {
                        None if holes < st.free_blocks => holes += 1,
                        Some(Ext::Delalloc) => {}
                        _ => break,
                    }
                    run += 1;
                }
                if run == 0 {
                    return Err(Error::from_errno(28));
                }
                st.free_blocks -= holes;
                for i in 0..run {
                    st.blocks.insert(b + i, Ext::Delalloc);
                }
                st.cookie += 1;
                Iomap::new(IomapKind::Delalloc, off, run * bs)
                    .with_flags(IomapFlags::NEW)
                    .into()
            }
            None => Iomap::hole(off, run * bs).into(),
            Some(Ext::Delalloc) => Iomap::new(IomapKind::Delalloc, off, run * bs).into(),
            Some(Ext::Unwritten { block }) => {
                Iomap::unwritten(off, run * bs, self.dev_addr(block)).into()
            }
            Some(Ext::Mapped {
                block,
                shared: false,
            }) => Iomap::mapped(off, run * bs, self.dev_addr(block)).into(),
            Some(Ext::Mapped {
                block,
                shared: true,
            }) if write => {
                if st.free_blocks < run {
                    return Err(Error::from_errno(28));
                }
                st.free_blocks -= run;
                for i in 0..run {
                    st.blocks.insert(b + i, Ext::Cow { old: block + i });
                }
                st.cookie += 1;
                IomapPair {
                    iomap: Iomap::new(IomapKind::Delalloc, off, run * bs)
                        .with_flags(IomapFlags::SHARED),
                    srcmap: Some(Iomap::mapped(off, run * bs, self.dev_addr(block))),
                }
            }
            Some(Ext::Mapped {
                block,
                shared: true,
            }) => Iomap::mapped(off, run * bs, self.dev_addr(block))
                .with_flags(IomapFlags::SHARED)
                .into(),
            Some(Ext::Cow { old }) | Some(Ext::CowAlloc { old, .. }) if write => IomapPair {
                iomap: Iomap::new(IomapKind::Delalloc, off, run * bs)
                    .with_flags(IomapFlags::SHARED),
                srcmap: Some(Iomap::mapped(off, run * bs, self.dev_addr(old))),
            },
            Some(Ext::Cow { old }) | Some(Ext::CowAlloc { old, .. }) => {
                Iomap::mapped(off, run * bs, self.dev_addr(old)).into()
            }
        };
        let cookie = st.cookie;
        Ok(IomapPair {
            iomap: pair.iomap.with_cookie(cookie),
            srcmap: pair.srcmap.map(|s| s.with_cookie(cookie)),
        })
    }

    fn end(&self, pos: u64, len: u64, done: u64, flags: IterFlags, iomap: &Iomap) -> Result<()> {
        self.state.lock().ends.push((pos, len, done, flags));
        if !flags.contains(IterFlags::WRITE)
            || !iomap.flags.contains(IomapFlags::NEW)
            || done >= len
        {
            return Ok(());
        }
        // Give back the reservation past what was written, but only where the cache holds no
        // dirty data (R9): those blocks still need their space at writeback.
        let start = (pos + done).div_ceil(self.bs) * self.bs;
        let mut ranges = Vec::new();
        self.mapping.punch_clean_ranges(start, pos + len, |s, e| {
            ranges.push((s, e));
            Ok(())
        })?;
        let mut st = self.state.lock();
        for (s, e) in ranges {
            for b in s / self.bs..e / self.bs {
                if st.blocks.get(&b) == Some(&Ext::Delalloc) {
                    st.blocks.remove(&b);
                    st.free_blocks += 1;
                }
            }
            st.punched.push((s, e));
        }
        st.cookie += 1;
        Ok(())
    }

    fn valid(&self, iomap: &Iomap) -> bool {
        let mut st = self.state.lock();
        if let Some(mut hook) = st.on_valid.take() {
            let stale = hook(&mut st, &self.dev);
            if stale {
                st.cookie += 1;
            }
            st.on_valid = Some(hook);
        }
        iomap.cookie == st.cookie
    }
}

/// A source that delivers at most `per_call` bytes a call, and nothing after `limit` bytes;
/// records what it was given back.
pub struct ShortSource<'a> {
    inner: SliceSource<'a>,
    pub per_call: usize,
    pub limit: usize,
    pub unread: Vec<usize>,
}

impl<'a> ShortSource<'a> {
    pub fn new(data: &'a [u8], per_call: usize, limit: usize) -> Self {
        Self {
            inner: SliceSource::new(data),
            per_call,
            limit,
            unread: Vec::new(),
        }
    }

    pub fn consumed(&self) -> usize {
        self.inner.consumed()
    }
}

impl WriteSource for ShortSource<'_> {
    fn copy_to(&mut self, dst: &mut [u8]) -> std::io::Result<usize> {
        let left = self.limit.saturating_sub(self.inner.consumed());
        let n = dst.len().min(self.per_call).min(left);
        self.inner.copy_to(&mut dst[..n])
    }

    fn unread(&mut self, bytes: &[u8]) {
        self.unread.push(bytes.len());
        self.inner.unread(bytes);
    }
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

pub fn dev_capacity(fs: &TestFs) -> u64 {
    fs.dev.capacity_bytes()
}

impl WritebackOps for FsWriteback {
    fn writeback_range(
        &self,
        ctx: &mut WritebackCtx<'_>,
        folio: &FolioGuard,
        pos: u64,
        len: u64,
        end_pos: u64,
    ) -> Result<u64> {
        let core = &self.0;
        let bs = core.bs;
        let iomap = {
            let mut st = core.state.lock();
            if let Some((start, end, errno)) = st.fail_writeback {
                if pos >= start && pos < end {
                    return Err(Error::from_errno(errno));
                }
            }
            if st.inline.is_some() {
                return Ok(len); // inline data is written with the metadata
            }
            let b = pos / bs;
            let mut nblocks = (pos + len).div_ceil(bs) - b;
            if let Some(max) = st.wb_max_blocks {
                nblocks = nblocks.min(max);
            }
            if let Some(next) = st.boundary.iter().find(|&&x| x > b) {
                nblocks = nblocks.min(next - b);
            }
            let off = b * bs;
            match st.blocks.get(&b).copied() {
                None => Iomap::hole(off, bs),
                // Allocate as XFS does: delalloc becomes unwritten, converted at completion.
                Some(Ext::Delalloc) => {
                    let first = core.alloc_stale(&mut st);
                    st.blocks.insert(b, Ext::Unwritten { block: first });
                    let mut n = 1;
                    while n < nblocks && st.blocks.get(&(b + n)) == Some(&Ext::Delalloc) {
                        let d = core.alloc_stale(&mut st);
                        if d != first + n {
                            st.freed.push(d); // not contiguous: map what we have
                            break;
                        }
                        st.blocks.insert(b + n, Ext::Unwritten { block: d });
                        n += 1;
                    }
                    st.cookie += 1;
                    Iomap::unwritten(off, n * bs, core.dev_addr(first))
                }
                Some(Ext::Unwritten { block }) => {
                    let run = TestFs::run_len(&st, b, nblocks);
                    Iomap::unwritten(off, run * bs, core.dev_addr(block))
                }
                Some(Ext::Mapped {
                    block,
                    shared: false,
                }) => {
                    let run = TestFs::run_len(&st, b, nblocks);
                    let iomap = Iomap::mapped(off, run * bs, core.dev_addr(block));
                    if st.boundary.contains(&b) {
                        iomap.with_flags(IomapFlags::BOUNDARY)
                    } else {
                        iomap
                    }
                }
                Some(Ext::Cow { old })
                | Some(Ext::Mapped {
                    block: old,
                    shared: true,
                }) => {
                    let new = core.alloc_stale(&mut st);
                    st.blocks.insert(b, Ext::CowAlloc { old, new });
                    st.cookie += 1;
                    Iomap::mapped(off, bs, core.dev_addr(new)).with_flags(IomapFlags::SHARED)
                }
                Some(Ext::CowAlloc { new, .. }) => {
                    Iomap::mapped(off, bs, core.dev_addr(new)).with_flags(IomapFlags::SHARED)
                }
            }
        };
        ctx.iomap = Some(iomap);
        ctx.add_to_ioend(folio, pos, len, end_pos)
    }

    fn discard(&self, folio: &Folio, pos: u64) {
        let core = &self.0;
        let mut st = core.state.lock();
        st.discards.push(pos);
        for b in pos / core.bs..folio.end() / core.bs {
            if st.blocks.get(&b) == Some(&Ext::Delalloc) {
                st.blocks.remove(&b);
                st.free_blocks += 1;
            }
        }
        st.cookie += 1;
    }

    fn ioend_complete(&self, _mapping: &Mapping, ioend: &Ioend) -> Result<()> {
        let core = &self.0;
        let mut st = core.state.lock();
        st.completions.push(ioend.clone());
        for b in ioend.offset / core.bs..ioend.end().div_ceil(core.bs) {
            let new = match (st.blocks.get(&b).copied(), ioend.error) {
                (Some(Ext::Unwritten { block }), None) => Ext::Mapped {
                    block,
                    shared: false,
                },
                (Some(Ext::CowAlloc { new, .. }), None) => Ext::Mapped {
                    block: new,
                    shared: false,
                },
                (Some(Ext::CowAlloc { old, new }), Some(_)) => {
                    st.freed.push(new);
                    Ext::Mapped {
                        block: old,
                        shared: true,
                    }
                }
                _ => continue,
            };
            st.blocks.insert(b, new);
        }
        st.cookie += 1;
        Ok(())
    }

    fn commit(&self, _datasync: bool) -> Result<()> {
        self.0.state.lock().commits += 1;
        Ok(())
    }
}
