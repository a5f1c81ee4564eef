//! Buffered writes: `write_begin` / copy / `write_end` per folio, unshare, and mapped writes.
//!
//! Rules (design §4): R6 `write_begin` reads only blocks the write covers partially that are
//! not uptodate, and zeroes them instead when they read as zero (NEW, holes, past EOF); R7 once
//! the folio is locked the mapping is revalidated and a stale one remapped; R8 a short copy
//! never marks uptodate a block holding bytes that were not copied, i_size grows only over
//! bytes written, and the chunk halves after a short copy; R12 unshare reads shared blocks and
//! dirties them.
//!
//! The caller holds the filesystem's inode I/O lock exclusive, as Linux callers hold
//! `i_rwsem`. A folio is locked from `write_begin` to the end of the copy and waits for
//! writeback first, so the device never sees data change under a request.

use std::collections::HashSet;
use std::io::{self, Read};
use std::sync::Arc;

use iomap_dev::{BlockDeviceExt, BufRange, DeviceRequest};

use crate::error::{Error, Result};
use crate::folio::FolioGuard;
use crate::iomap::{IomapFlags, IomapKind, IomapOps, IterFlags};
use crate::iter::IomapIter;
use crate::mapping::Mapping;
use crate::read::{fill_inline, read_folios};
use crate::writeback::{writepages, WritebackControl, WritebackOps};

/// Where a write's bytes come from: a buffer, a reader, a socket. It may deliver fewer bytes
/// than asked (a short copy), and takes back bytes the engine could not commit so that it
/// delivers them again next.
pub trait WriteSource {
    /// Copies up to `dst.len()` bytes into `dst`; `Ok(0)` when nothing more can be had now.
    fn copy_to(&mut self, dst: &mut [u8]) -> io::Result<usize>;

    /// Takes back `bytes`, the tail of what the last copies delivered; the next `copy_to`
    /// starts with them.
    fn unread(&mut self, bytes: &[u8]);
}

/// A [`WriteSource`] over a byte slice.
#[derive(Debug)]
pub struct SliceSource<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> SliceSource<'a> {
    /// A source delivering `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, at: 0 }
    }

    /// Bytes delivered and not taken back.
    pub fn consumed(&self) -> usize {
        self.at
    }
}

impl WriteSource for SliceSource<'_> {
    fn copy_to(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        let n = dst.len().min(self.data.len() - self.at);
        dst[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }

    fn unread(&mut self, bytes: &[u8]) {
        debug_assert!(bytes.len() <= self.at);
        self.at -= bytes.len();
        debug_assert_eq!(&self.data[self.at..self.at + bytes.len()], bytes);
    }
}

/// A [`WriteSource`] over any reader; bytes taken back are kept and delivered first.
#[derive(Debug)]
pub struct ReaderSource<R> {
    reader: R,
    pushback: Vec<u8>,
}

impl<R: Read> ReaderSource<R> {
    /// A source reading from `reader`.
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            pushback: Vec::new(),
        }
    }
}

impl<R: Read> WriteSource for ReaderSource<R> {
    fn copy_to(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        if !self.pushback.is_empty() {
            let n = dst.len().min(self.pushback.len());
            dst[..n].copy_from_slice(&self.pushback[..n]);
            self.pushback.drain(..n);
            return Ok(n);
        }
        self.reader.read(dst)
    }

    fn unread(&mut self, bytes: &[u8]) {
        self.pushback.splice(0..0, bytes.iter().copied());
    }
}

/// Checks a write of `len` bytes at `pos` against offset overflow and the maximum file size;
/// returns the length that may be written (shortened at the maximum, as Linux does).
fn check_write(mapping: &Mapping, pos: u64, len: u64) -> Result<u64> {
    if pos > i64::MAX as u64 || pos.checked_add(len).is_none_or(|e| e > i64::MAX as u64) {
        return Err(Error::InvalidArgument(format!(
            "write of {len} bytes at {pos} overflows the file offset"
        )));
    }
    let max = mapping.max_file_size();
    if pos >= max {
        return Err(Error::FileTooBig { pos, len, max });
    }
    Ok(len.min(max - pos))
}

/// Writes `len` bytes from `src` at `pos`. Returns the bytes written, which is less than `len`
/// only when the source ran dry, an error stopped the write part-way, or the write reached the
/// maximum file size; an error is returned only when nothing was written.
pub fn buffered_write(
    mapping: &Mapping,
    ops: &dyn IomapOps,
    pos: u64,
    len: u64,
    src: &mut dyn WriteSource,
) -> Result<u64> {
    if len == 0 {
        return Ok(0);
    }
    let len = check_write(mapping, pos, len)?;
    let mut chunk = mapping.max_folio_size() as u64;
    let mut src_error = None;
    let (written, res) = IomapIter::new(ops, pos, len, IterFlags::WRITE)
        .with_alignment(mapping.block_size() as u64)
        .run(|it| write_iter(mapping, it, src, &mut chunk, &mut src_error));
    mapping.cache().stats().bytes_written.add(written);
    if written < len {
        write_failed(mapping, pos + written, len - written);
    }
    match (written, res, src_error) {
        (0, Err(e), _) => Err(e),
        (0, Ok(()), Some(e)) => Err(Error::Io(e)),
        (n, ..) => Ok(n),
    }
}

/// An uncached write (Linux's `RWF_DONTCACHE`): writes as [`buffered_write`] does, then
/// starts writeback of what it wrote, and the folios the write brought into the cache are
/// dropped as their writeback ends, so streaming writes do not push out what others use.
/// Folios cached before the write stay, and so does a folio read through the cache
/// meanwhile.
pub fn buffered_write_uncached(
    mapping: &Arc<Mapping>,
    ops: &dyn IomapOps,
    wb: &Arc<dyn WritebackOps>,
    pos: u64,
    len: u64,
    src: &mut dyn WriteSource,
) -> Result<u64> {
    let end = pos.saturating_add(len);
    let before: HashSet<u64> = mapping
        .folios_in(pos, end)
        .iter()
        .map(|f| f.pos())
        .collect();
    let n = buffered_write(mapping, ops, pos, len, src)?;
    let ours: Vec<_> = mapping
        .folios_in(pos, pos + n)
        .into_iter()
        .filter(|f| !before.contains(&f.pos()))
        .collect();
    for f in &ours {
        f.set_dropbehind();
    }
    let mut wbc = WritebackControl::background_range(pos, pos + n);
    // As for any background writeback, an error is recorded for fsync to report; the write
    // itself succeeded.
    let _ = writepages(mapping, wb, &mut wbc);
    // A folio the flusher wrote back before it was marked ended its writeback without being
    // dropped: drop it now.
    for f in &ours {
        if f.is_dropbehind() && !f.is_dirty() && !f.is_writeback() {
            mapping.evict(f);
        }
    }
    Ok(n)
}

/// Drops folios that a failed or short write instantiated past EOF, so no folio past EOF
/// lingers with data that was never written (the kernel's `iomap_write_failed`).
fn write_failed(mapping: &Mapping, pos: u64, len: u64) {
    let size = mapping.size();
    if pos + len > size {
        mapping.truncate_range(pos.max(size), pos + len);
    }
}

fn write_iter(
    mapping: &Mapping,
    it: &mut IomapIter<'_>,
    src: &mut dyn WriteSource,
    chunk: &mut u64,
    src_error: &mut Option<io::Error>,
) -> Result<()> {
    let page = mapping.cache().config().page_size as u64;
    let mut retry_bytes = None;
    while it.length() > 0 {
        let pos = it.pos();
        let bytes = retry_bytes
            .take()
            .unwrap_or_else(|| (*chunk - pos % *chunk).min(it.length()));
        let Some(guard) = write_begin(mapping, it, pos, bytes)? else {
            return Ok(()); // stale mapping: iteration remaps from here
        };
        let bytes = bytes.min(guard.end() - pos) as usize;
        let off = (pos - guard.pos()) as usize;
        let copied = copy_from_source(&guard, off, bytes, src, src_error);
        // Only newly dirtied folios are charged to the writer, as the kernel counts newly
        // dirtied pages: overwriting dirty data adds none.
        let was_dirty = guard.is_dirty();
        let written = write_end(mapping, it, &guard, pos, bytes, copied);
        if written < copied {
            src.unread(&guard.data().read()[off + written..off + copied]);
        }
        let grew_from = if written > 0 {
            mapping.grow_size(pos + written as u64)
        } else {
            None
        };
        if grew_from.is_some() {
            it.mark_size_changed();
        }
        let newly_dirty = !was_dirty && guard.is_dirty();
        let folio_size = guard.size() as u64;
        drop(guard);
        if let Some(old) = grew_from.filter(|&old| old < pos) {
            // The gap between the old end of file and the write reads as zeros, whatever a
            // store through a mapping left past the old end in the folio that held it.
            mapping.size_extended(old, pos);
        }
        if newly_dirty {
            mapping.cache().balance_dirty(folio_size);
        }
        if copied < bytes && (copied == 0 || src_error.is_some()) && written == copied {
            // The source is dry or failed: end the write here rather than ask the filesystem
            // for another mapping (and reservation) that nothing would fill.
            it.advance(written as u64);
            it.stop();
            return Ok(());
        }
        if written == 0 {
            // Part of a block that was not uptodate arrived: retry with just what arrived, in
            // smaller folios, so write_begin prepares the block it ends in.
            if *chunk > page {
                *chunk /= 2;
            }
            retry_bytes = Some(copied as u64);
            continue;
        }
        it.advance(written as u64);
    }
    Ok(())
}

/// Copies up to `bytes` from `src` into the folio at `off`, asking again after short copies
/// until the source has nothing more; a source error is kept for the caller.
fn copy_from_source(
    guard: &FolioGuard,
    off: usize,
    bytes: usize,
    src: &mut dyn WriteSource,
    src_error: &mut Option<io::Error>,
) -> usize {
    let mut data = guard.frame().write();
    let dst = &mut data[off..off + bytes];
    let mut n = 0;
    while n < bytes {
        match src.copy_to(&mut dst[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                *src_error = Some(e);
                break;
            }
        }
    }
    n
}

/// Locks the folio for a write of `len` bytes at `pos` and makes the blocks the write covers
/// partially uptodate. `None` when the mapping went stale (it is marked, and the caller lets
/// iteration remap).
pub fn write_begin(
    mapping: &Mapping,
    it: &mut IomapIter<'_>,
    pos: u64,
    len: u64,
) -> Result<Option<FolioGuard>> {
    let (guard, _) = mapping.grab_folio(pos, len);
    guard.wait_writeback();
    if !it.is_valid() {
        it.mark_stale();
        return Ok(None);
    }
    let len = len.min(guard.end() - pos) as usize;
    let off = (pos - guard.pos()) as usize;
    let src = it.srcmap();
    if src.kind == IomapKind::Inline {
        if !guard.range_uptodate(off, len) {
            // All of the folio the inline mapping covers, not just the write: the folio may be
            // a single block, which becomes uptodate as a whole.
            let start = src.offset.max(guard.pos());
            let end = src.end().min(guard.end());
            fill_inline(
                &guard,
                (start - guard.pos()) as usize,
                (end - start) as usize,
                src,
            );
        }
        return Ok(Some(guard));
    }
    if !guard.is_uptodate() {
        prepare_blocks(mapping, it, &guard, off, len)?;
    }
    Ok(Some(guard))
}

/// Reads or zeroes the not-uptodate blocks of `[off, off + len)` that the write covers only in
/// part (all of them when unsharing) and marks them uptodate (R6).
fn prepare_blocks(
    mapping: &Mapping,
    it: &IomapIter<'_>,
    guard: &FolioGuard,
    off: usize,
    len: usize,
) -> Result<()> {
    let bs = guard.block_size();
    let (first, count) = guard.blocks_of(off, len);
    let last = first + count - 1;
    let unshare = it.flags().contains(IterFlags::UNSHARE);
    let needs = |b: usize| {
        let partial = (b == first && off % bs != 0) || (b == last && (off + len) % bs != 0);
        (unshare || partial) && !guard.block_uptodate(b)
    };
    let src = it.srcmap();
    let size = mapping.size();
    let mut b = first;
    while b <= last {
        if !needs(b) {
            b += 1;
            continue;
        }
        let mut end = b + 1;
        while end <= last && needs(end) {
            end += 1;
        }
        let (boff, blen) = (b * bs, (end - b) * bs);
        let bpos = guard.pos() + boff as u64;
        if src.reads_as_zero() || bpos >= size {
            if unshare && bpos < size {
                return Err(Error::BadMapping(format!(
                    "unshare of {bpos} through a mapping that reads as zero: {src:?}"
                )));
            }
            guard.zero(boff, blen);
        } else {
            read_blocks_sync(mapping, guard, boff, blen, src.dev_addr(bpos))?;
        }
        guard.set_range_uptodate(boff, blen);
        b = end;
    }
    Ok(())
}

/// Reads `[boff, boff + blen)` of a locked folio from `addr`, waiting for it.
fn read_blocks_sync(
    mapping: &Mapping,
    guard: &FolioGuard,
    boff: usize,
    blen: usize,
    addr: iomap_dev::DevAddr,
) -> Result<()> {
    let stats = mapping.cache().stats();
    let max = (mapping.dev().max_request_bytes() / mapping.block_size() as u64
        * mapping.block_size() as u64) as usize;
    let mut done = 0;
    while done < blen {
        let n = (blen - done).min(max);
        let seg = BufRange::new(guard.data(), boff + done, n);
        stats.dev_read_requests.add(1);
        stats.dev_read_bytes.add(n as u64);
        if let Err(e) = mapping
            .dev()
            .submit_wait(DeviceRequest::read(addr + done as u64, vec![seg]))
        {
            stats.read_errors.add(1);
            return Err(Error::Io(e));
        }
        done += n;
    }
    Ok(())
}

/// Commits `copied` of the `len` bytes a write put in the folio at `pos`; returns how many
/// bytes are committed (uptodate and dirty). A short copy into a folio that is not uptodate
/// commits only up to the start of the block it ended in, unless that block is uptodate
/// already (R8): the rest of that block holds bytes that were never written.
pub fn write_end(
    mapping: &Mapping,
    it: &IomapIter<'_>,
    guard: &FolioGuard,
    pos: u64,
    len: usize,
    copied: usize,
) -> usize {
    let off = (pos - guard.pos()) as usize;
    let bs = guard.block_size();
    let committed = if copied == len || guard.is_uptodate() {
        copied
    } else {
        let end = off + copied;
        if end % bs == 0 || guard.block_uptodate(end / bs) {
            copied
        } else {
            (end - end % bs).saturating_sub(off)
        }
    };
    if committed == 0 {
        return 0;
    }
    let src = it.srcmap();
    if src.kind == IomapKind::Inline {
        if let Some(inline) = &src.inline_data {
            let start = (pos - src.offset) as usize;
            let mut inline = inline.write();
            if inline.len() < start + committed {
                inline.resize(start + committed, 0);
            }
            guard.copy_out(off, &mut inline[start..start + committed]);
        }
        return committed;
    }
    guard.set_range_uptodate(off, committed);
    mapping.mark_dirty(guard, off, committed);
    committed
}

/// Makes the shared blocks of `[pos, pos + len)` private: reads them into the cache through
/// the srcmap and dirties them, so writeback moves them to new space (R12). Only the part
/// inside the file size is unshared.
pub fn file_unshare(mapping: &Mapping, ops: &dyn IomapOps, pos: u64, len: u64) -> Result<()> {
    let size = mapping.size();
    if pos >= size || len == 0 {
        return Ok(());
    }
    let len = len.min(size - pos);
    let (_, res) = IomapIter::new(ops, pos, len, IterFlags::WRITE | IterFlags::UNSHARE)
        .with_alignment(mapping.block_size() as u64)
        .run(|it| {
            let shared = it.iomap().flags.contains(IomapFlags::SHARED)
                && it.srcmap().kind == IomapKind::Mapped;
            if !shared {
                it.advance_full();
                return Ok(());
            }
            let end = it.pos() + it.length();
            rewrite_in_place(mapping, it, end, |_guard, _off, _len| {})
        });
    res
}

/// Runs write_begin / `fill` / write_end from the iterator's position to `end` (inside the
/// current mapping), committing every byte: the common loop of unshare and zeroing.
pub(crate) fn rewrite_in_place(
    mapping: &Mapping,
    it: &mut IomapIter<'_>,
    end: u64,
    mut fill: impl FnMut(&FolioGuard, usize, usize),
) -> Result<()> {
    let max = mapping.max_folio_size() as u64;
    while it.pos() < end {
        let pos = it.pos();
        let bytes = (max - pos % max).min(end - pos);
        let Some(guard) = write_begin(mapping, it, pos, bytes)? else {
            return Ok(());
        };
        let bytes = bytes.min(guard.end() - pos) as usize;
        let off = (pos - guard.pos()) as usize;
        fill(&guard, off, bytes);
        let was_dirty = guard.is_dirty();
        let done = write_end(mapping, it, &guard, pos, bytes, bytes);
        debug_assert_eq!(done, bytes);
        let newly_dirty = !was_dirty && guard.is_dirty();
        let folio_size = guard.size() as u64;
        drop(guard);
        // Zeroing and unsharing dirty data as writes do, and are throttled alike.
        if newly_dirty {
            mapping.cache().balance_dirty(folio_size);
        }
        it.advance(bytes as u64);
    }
    Ok(())
}

/// A folio made writable through a mapped-write fault: locked, uptodate, and dirty over the
/// part inside the file, with space for it reserved by the filesystem. Dropping it unlocks.
pub struct MkwriteFolio {
    guard: FolioGuard,
    writable: usize,
}

impl MkwriteFolio {
    /// File offset of the folio.
    pub fn pos(&self) -> u64 {
        self.guard.pos()
    }

    /// Bytes of the folio that may be written: up to the end of the page that holds the end
    /// of the file, since a shared mapping maps whole pages. Bytes past the end of the file
    /// are never written back or read; they are zeroed at writeback and when the file grows.
    pub fn len(&self) -> usize {
        self.writable
    }

    /// True when no byte is writable (never returned by `page_mkwrite`).
    pub fn is_empty(&self) -> bool {
        self.writable == 0
    }

    /// Stores `src` at folio offset `off`, as a store through a shared mapping would.
    pub fn write(&self, off: usize, src: &[u8]) -> Result<()> {
        if off
            .checked_add(src.len())
            .is_none_or(|end| end > self.writable)
        {
            return Err(Error::Fault(self.pos() + off as u64));
        }
        self.guard.copy_in(off, src);
        Ok(())
    }

    /// The locked folio.
    pub fn folio(&self) -> &FolioGuard {
        &self.guard
    }
}

/// Prepares the folio holding `pos` for stores through a shared mapping, the kernel's
/// `iomap_page_mkwrite`: reads it in if needed, waits for writeback, asks the filesystem to
/// reserve space for the part inside the file (so `ENOSPC` is reported now, not lost at
/// writeback), and dirties that part. `Error::Fault` if `pos` is at or past the file size.
pub fn page_mkwrite(mapping: &Mapping, ops: &dyn IomapOps, pos: u64) -> Result<MkwriteFolio> {
    let _invalidate = mapping.invalidate_lock().read();
    loop {
        if pos >= mapping.size() {
            return Err(Error::Fault(pos));
        }
        let (guard, _) = mapping.grab_folio(pos, mapping.min_folio_size() as u64);
        if !guard.is_uptodate() {
            let folio = (*guard).clone();
            read_folios(mapping, ops, vec![guard])?;
            folio.wait_unlocked();
            if !folio.is_detached() && !folio.is_uptodate() {
                return Err(Error::from_errno(
                    folio.read_error().unwrap_or(crate::error::libc_errno::EIO),
                ));
            }
            continue;
        }
        guard.wait_writeback();
        let size = mapping.size();
        if guard.pos() >= size {
            return Err(Error::Fault(pos));
        }
        let inside = (size - guard.pos()).min(guard.size() as u64) as usize;
        let page = mapping.min_folio_size() as u64;
        let writable = (size.div_ceil(page) * page - guard.pos()).min(guard.size() as u64) as usize;
        let (_, res) = IomapIter::new(
            ops,
            guard.pos(),
            inside as u64,
            IterFlags::WRITE | IterFlags::FAULT,
        )
        .with_alignment(mapping.block_size() as u64)
        .run(|it| {
            it.advance_full();
            Ok(())
        });
        res?;
        let bs = guard.block_size();
        mapping.mark_dirty(&guard, 0, inside.div_ceil(bs) * bs);
        return Ok(MkwriteFolio { guard, writable });
    }
}
