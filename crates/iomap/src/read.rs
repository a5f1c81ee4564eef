//! Buffered reads: copying out of uptodate folios, and filling folios from the device.
//!
//! Rules (design §4): R1 holes, delalloc, unwritten, NEW and post-EOF blocks are zero-filled,
//! never read; R2 uptodate blocks are skipped; R3 blocks contiguous in file and on the device
//! go in one request up to the device's maximum; R4 inline data is copied and the rest of the
//! mapping zeroed; R5 a failed read leaves blocks not uptodate and its errno reaches the reader.
//!
//! A read of a folio is asynchronous: the folio lock is handed to the I/O, and the last
//! completion (or the reader, if nothing needed the device) ends the read and unlocks it. The
//! reader's share of `read_bytes_pending` keeps a quick completion from ending a read that is
//! still being built.

use std::borrow::Borrow;
use std::collections::VecDeque;
use std::sync::Arc;

use iomap_dev::{BufRange, DevAddr, DeviceRequest, Frame};
use tracing::trace;

use crate::error::{libc_errno, Error, Result};
use crate::folio::{Folio, FolioGuard, FolioPin};
use crate::iomap::{Iomap, IomapKind, IomapOps, IterFlags};
use crate::iter::IomapIter;
use crate::mapping::Mapping;

/// Reads up to `dst.len()` bytes at `pos`; returns how many, short at end of file (0 at or
/// past it).
pub fn buffered_read(
    mapping: &Mapping,
    ops: &dyn IomapOps,
    pos: u64,
    dst: &mut [u8],
) -> Result<usize> {
    read_stream(mapping, ops, pos, dst, None)
}

/// [`buffered_read`] for a stream whose previous read ended at `prev_end`: the folio that
/// read ended in is not marked accessed again, so a reader going through a large folio in
/// small reads touches it once, as Linux's `filemap_read` does.
pub(crate) fn read_stream(
    mapping: &Mapping,
    ops: &dyn IomapOps,
    pos: u64,
    dst: &mut [u8],
    prev_end: Option<u64>,
) -> Result<usize> {
    if pos > i64::MAX as u64 {
        return Err(Error::InvalidArgument(format!(
            "read offset {pos} is negative as a loff_t"
        )));
    }
    let stats = mapping.cache().stats();
    let mut done = 0usize;
    while done < dst.len() {
        let p = pos + done as u64;
        let size = mapping.size();
        if p >= size {
            break;
        }
        let want = (dst.len() - done).min((size - p).try_into().unwrap_or(usize::MAX));
        let last = prev_end.and_then(|e| e.checked_sub(1));
        let n = copy_cached(mapping, p, &mut dst[done..done + want], last);
        if n > 0 {
            stats.read_hits.add(1);
            done += n;
            continue;
        }
        stats.read_misses.add(1);
        match fill(mapping, ops, p, want as u64) {
            // Copied from the folio `fill` pinned: reclaim leaves a pinned folio alone, so what
            // was read is not evicted before it is copied.
            Ok(Some(folio)) if !folio.is_detached() => {
                done += copy_folio(&folio, p, &mut dst[done..done + want], last);
            }
            Ok(_) => {}
            Err(e) => {
                if done == 0 {
                    return Err(e);
                }
                // Like Linux's filemap_read: what was read is returned; the error comes next
                // time.
                break;
            }
        }
    }
    stats.bytes_read.add(done as u64);
    Ok(done)
}

/// Copies from uptodate cached blocks at `pos` until `dst` is full or a block is missing;
/// takes no folio lock. Marks each folio accessed but the one holding byte `last` (where
/// the stream's previous read ended).
fn copy_cached(mapping: &Mapping, mut pos: u64, dst: &mut [u8], last: Option<u64>) -> usize {
    let mut done = 0;
    while done < dst.len() {
        let copied =
            mapping.with_folio(pos, |folio| copy_folio(folio, pos, &mut dst[done..], last));
        match copied {
            Some(n) if n > 0 => {
                done += n;
                pos += n as u64;
            }
            _ => break,
        }
    }
    done
}

/// Copies from the uptodate blocks of `folio` at file offset `pos` into `dst` until it is
/// full, the folio ends or a block is missing; marks the folio accessed unless it holds byte
/// `last`. Returns the bytes copied.
fn copy_folio<F: Borrow<Frame>>(
    folio: &Folio<F>,
    pos: u64,
    dst: &mut [u8],
    last: Option<u64>,
) -> usize {
    let off = (pos - folio.pos()) as usize;
    let n = uptodate_bytes_from(folio, off).min(dst.len());
    if n > 0 {
        folio.copy_out(off, &mut dst[..n]);
        if !last.is_some_and(|l| folio.pos() <= l && l < folio.end()) {
            folio.mark_accessed();
        }
    }
    n
}

/// Bytes from folio offset `off` to the first block that is not uptodate (or the folio end).
fn uptodate_bytes_from<F: Borrow<Frame>>(folio: &Folio<F>, off: usize) -> usize {
    if folio.is_uptodate() {
        return folio.size() - off;
    }
    let bs = folio.block_size();
    let mut block = off / bs;
    while block < folio.nblocks() && folio.block_uptodate(block) {
        block += 1;
    }
    (block * bs).saturating_sub(off)
}

/// Makes the block at `pos` uptodate, reading ahead over up to `len` bytes when nothing is
/// cached there, and waits for it. Returns the folio holding it, uptodate there and pinned
/// against eviction until the caller has copied from it, or `None` when it was removed
/// meanwhile (the caller looks again).
fn fill(mapping: &Mapping, ops: &dyn IomapOps, pos: u64, len: u64) -> Result<Option<FolioPin>> {
    // An error mapping some later part of a readahead window does not fail this read: only
    // the block at `pos` has to be read.
    // The folio holding `pos` is pinned while it is still locked for its read, so that no
    // reclaim can take it between the read's end and the copy.
    let (pinned, started) = {
        let _invalidate = mapping.invalidate_lock().read();
        match mapping.find_folio(pos) {
            None => readahead_locked(mapping, ops, pos, len, None, Some(pos)),
            Some(folio) => {
                let guard = folio.lock();
                let off = (pos - guard.pos()) as usize;
                if !guard.is_detached() && !guard.range_uptodate(off, 1) {
                    let pin = guard.pin();
                    (Some(pin), read_folios(mapping, ops, vec![guard]))
                } else {
                    (None, Ok(()))
                }
            }
        }
    };
    let Some(folio) = pinned.or_else(|| mapping.find_pinned(pos)) else {
        return started.map(|()| None); // removed meanwhile: the caller looks again
    };
    folio.wait_unlocked();
    let off = (pos - folio.pos()) as usize;
    if folio.is_detached() {
        return Ok(None);
    }
    if folio.range_uptodate(off, 1) {
        return Ok(Some(folio));
    }
    started?;
    Err(Error::from_errno(
        folio.read_error().unwrap_or(libc_errno::EIO),
    ))
}

/// Reads the not-uptodate blocks of a locked folio. The lock passes to the I/O and is
/// released when the read ends; wait with [`Folio::wait_unlocked`] and check uptodate.
pub fn read_folio(mapping: &Mapping, ops: &dyn IomapOps, guard: FolioGuard) -> Result<()> {
    let _invalidate = mapping.invalidate_lock().read();
    read_folios(mapping, ops, vec![guard])
}

/// Adds folios for `[pos, pos + len)` (clipped to the file size) where none are cached and
/// starts reading them, in as few device requests as contiguity allows. Folios already cached
/// are left alone. Returns once the reads are submitted.
pub fn readahead(mapping: &Mapping, ops: &dyn IomapOps, pos: u64, len: u64) -> Result<()> {
    readahead_marked(mapping, ops, pos, len, None)
}

/// [`readahead`] with a readahead marker: no new folio crosses `mark`, and the folio holding
/// it carries the marker, so the window still goes out as one request where it can.
pub(crate) fn readahead_marked(
    mapping: &Mapping,
    ops: &dyn IomapOps,
    pos: u64,
    len: u64,
    mark: Option<u64>,
) -> Result<()> {
    let _invalidate = mapping.invalidate_lock().read();
    readahead_locked(mapping, ops, pos, len, mark, None).1
}

/// Reads ahead as [`readahead_marked`] does with the invalidate lock held; a new folio
/// holding `pin_at` is pinned before its read is submitted, and the pin returned.
fn readahead_locked(
    mapping: &Mapping,
    ops: &dyn IomapOps,
    pos: u64,
    len: u64,
    mark: Option<u64>,
    pin_at: Option<u64>,
) -> (Option<FolioPin>, Result<()>) {
    let mut pin = None;
    let res = readahead_runs(mapping, ops, pos, len, mark, |guard| {
        if pin_at.is_some_and(|p| guard.pos() <= p && p < guard.end()) {
            pin = Some(guard.pin());
        }
    });
    (pin, res)
}

fn readahead_runs(
    mapping: &Mapping,
    ops: &dyn IomapOps,
    pos: u64,
    len: u64,
    mark: Option<u64>,
    mut added: impl FnMut(&FolioGuard),
) -> Result<()> {
    let end = pos.saturating_add(len).min(mapping.size());
    let mark = mark.filter(|&m| m < end);
    let holds_mark = |f: &Folio| mark.is_some_and(|m| f.pos() <= m && m < f.end());
    if let Some(cached) = mark.and_then(|m| mapping.find_folio(m)) {
        cached.set_readahead();
    }
    let mut p = pos;
    let mut run: Vec<FolioGuard> = Vec::new();
    while p < end {
        let hint = match mark {
            Some(m) if p < m => m.min(end) - p,
            _ => end - p,
        };
        match mapping.add_folio(p, hint) {
            Some(guard) => {
                // Marked before its read is submitted: a reader may reach it before the read
                // completes.
                if holds_mark(&guard) {
                    guard.set_readahead();
                }
                added(&guard);
                p = guard.end();
                run.push(guard);
            }
            None => {
                if !run.is_empty() {
                    read_folios(mapping, ops, std::mem::take(&mut run))?;
                }
                if let Some(folio) = mapping.find_folio(p) {
                    p = folio.end();
                }
            }
        }
    }
    if run.is_empty() {
        return Ok(());
    }
    read_folios(mapping, ops, run)
}

/// Reads a run of locked, file-contiguous folios. Every folio's read is ended (and its lock
/// released) whatever happens; an error from the filesystem is returned after that.
pub(crate) fn read_folios(
    mapping: &Mapping,
    ops: &dyn IomapOps,
    folios: Vec<FolioGuard>,
) -> Result<()> {
    let (Some(first), Some(last)) = (folios.first(), folios.last()) else {
        return Ok(());
    };
    let (start, end) = (first.pos(), last.end());
    let mut ctx = ReadCtx::new(mapping, folios);
    let (_, res) = IomapIter::new(ops, start, end - start, IterFlags::empty())
        .with_alignment(mapping.block_size() as u64)
        .run(|it| ctx.read_iter(it));
    ctx.finish();
    res
}

/// The folio being read and how much of its read-pending share the reader still holds.
struct CurFolio {
    folio: Folio,
    held: u64,
}

/// A device read being built: file- and device-contiguous ranges of one or more folios.
struct PendingRead {
    req: DeviceRequest,
    file_end: u64,
    dev_end: DevAddr,
    parts: Vec<(Folio, usize, usize)>,
}

struct ReadCtx<'a> {
    mapping: &'a Mapping,
    queue: VecDeque<Folio>,
    cur: Option<CurFolio>,
    pending: Option<PendingRead>,
    max_request: u64,
}

impl<'a> ReadCtx<'a> {
    fn new(mapping: &'a Mapping, folios: Vec<FolioGuard>) -> Self {
        let queue = folios
            .into_iter()
            .map(|guard| {
                guard.begin_read();
                guard.into_io()
            })
            .collect();
        let bs = mapping.block_size() as u64;
        let max_request = mapping.dev().max_request_bytes() / bs * bs;
        Self {
            mapping,
            queue,
            cur: None,
            pending: None,
            max_request,
        }
    }

    /// The folio holding `pos`, ending the reads of folios before it.
    fn folio_at(&mut self, pos: u64) -> Folio {
        loop {
            if let Some(cur) = &self.cur {
                if cur.folio.end() > pos {
                    return cur.folio.clone();
                }
            }
            self.end_current();
            match self.queue.pop_front() {
                Some(folio) => {
                    let held = folio.size() as u64;
                    self.cur = Some(CurFolio { folio, held });
                }
                None => unreachable!("iteration ran past the folios being read"),
            }
        }
    }

    /// Gives back the reader's remaining share of the current folio's read.
    fn end_current(&mut self) {
        if let Some(cur) = self.cur.take() {
            if cur.held > 0 && cur.folio.read_done(cur.held) {
                cur.folio.end_read();
            }
        }
    }

    fn read_iter(&mut self, it: &mut IomapIter<'_>) -> Result<()> {
        let size = self.mapping.size();
        while it.length() > 0 {
            let pos = it.pos();
            let folio = self.folio_at(pos);
            let off = (pos - folio.pos()) as usize;
            let avail = (it.length().min(folio.end() - pos)) as usize;
            let src = it.srcmap();
            if src.kind == IomapKind::Inline {
                fill_inline(&folio, off, avail, src);
                it.advance(avail as u64);
                continue;
            }
            let (poff, plen) = adjust_read_range(&folio, off, avail, size);
            if plen > 0 {
                let range_pos = folio.pos() + poff as u64;
                if src.reads_as_zero() || range_pos >= size {
                    folio.zero_data(poff, plen);
                    folio.set_range_uptodate(poff, plen);
                } else {
                    let addr = src.dev_addr(range_pos);
                    self.queue_range(&folio, poff, plen, range_pos, addr);
                }
            }
            it.advance((poff + plen - off) as u64);
        }
        Ok(())
    }

    /// Adds `[poff, poff + plen)` of `folio`, at file offset `pos` and device address `addr`,
    /// to the request being built, or submits that one and starts another (R3).
    fn queue_range(&mut self, folio: &Folio, poff: usize, plen: usize, pos: u64, addr: DevAddr) {
        let (mut poff, mut plen, mut pos, mut addr) = (poff, plen, pos, addr);
        while plen > 0 {
            let joins = self.pending.as_ref().is_some_and(|p| {
                p.file_end == pos && p.dev_end == addr && p.req.len() < self.max_request
            });
            if !joins {
                self.submit();
                self.pending = Some(PendingRead {
                    req: DeviceRequest::read(addr, Vec::new()),
                    file_end: pos,
                    dev_end: addr,
                    parts: Vec::new(),
                });
            }
            let Some(pending) = self.pending.as_mut() else {
                unreachable!("a pending read was just made")
            };
            let room = (self.max_request - pending.req.len()) as usize;
            let n = plen.min(room);
            pending
                .req
                .push_segment(BufRange::new(folio.data(), poff, n));
            pending.parts.push((folio.clone(), poff, n));
            pending.file_end += n as u64;
            pending.dev_end = pending.dev_end + n as u64;
            if let Some(cur) = self.cur.as_mut() {
                cur.held -= n as u64;
            }
            poff += n;
            plen -= n;
            pos += n as u64;
            addr = addr + n as u64;
        }
    }

    fn submit(&mut self) {
        let Some(PendingRead { req, parts, .. }) = self.pending.take() else {
            return;
        };
        let cache = Arc::clone(self.mapping.cache());
        let blocks = req.len() / self.mapping.block_size() as u64;
        cache.stats().dev_read_requests.add(1);
        cache.stats().dev_read_bytes.add(req.len());
        cache.stats().blocks_merged.add(blocks.saturating_sub(1));
        trace!(addr = ?req.addr, len = req.len(), folios = parts.len(), "read submit");
        self.mapping.dev().submit(
            req,
            Box::new(move |res| {
                match &res {
                    Ok(()) => {
                        for (folio, off, len) in &parts {
                            folio.set_range_uptodate(*off, *len);
                        }
                    }
                    Err(e) => {
                        cache.stats().read_errors.add(1);
                        let errno = e.raw_os_error().unwrap_or(libc_errno::EIO);
                        for (folio, ..) in &parts {
                            folio.set_read_error(errno);
                        }
                    }
                }
                for (folio, _, len) in parts {
                    if folio.read_done(len as u64) {
                        folio.end_read();
                    }
                }
            }),
        );
    }

    /// Submits what is built and ends the reads of every folio the iteration did not reach
    /// (after an error).
    fn finish(mut self) {
        self.submit();
        self.end_current();
        while let Some(folio) = self.queue.pop_front() {
            if folio.read_done(folio.size() as u64) {
                folio.end_read();
            }
        }
    }
}

/// Copies inline data into `[off, off + len)` of a folio locked for the copy, zeroing what the
/// inline data does not cover, and marks it uptodate (R4).
pub(crate) fn fill_inline(folio: &Folio, off: usize, len: usize, iomap: &Iomap) {
    let pos = folio.pos() + off as u64;
    let start = (pos - iomap.offset) as usize;
    let mut data = folio.frame().write();
    let dst = &mut data[off..off + len];
    match &iomap.inline_data {
        Some(inline) => {
            let inline = inline.read();
            let n = inline.len().saturating_sub(start).min(len);
            dst[..n].copy_from_slice(&inline[start..start + n]);
            dst[n..].fill(0);
        }
        None => dst.fill(0),
    }
    drop(data);
    folio.set_range_uptodate(off, len);
}

/// The part of `[off, off + len)` of `folio` that a read must fill, the kernel's
/// `iomap_adjust_read_range`: leading uptodate blocks are skipped, the range stops at the next
/// uptodate block, and blocks wholly past the block holding EOF are left for a later
/// zero-filling pass. Returns `(poff, plen)` with `poff >= off`; `plen == 0` means nothing to
/// read before `off + len`, in which case `poff == off + len`.
pub fn adjust_read_range(folio: &Folio, off: usize, len: usize, size: u64) -> (usize, usize) {
    if len == 0 || folio.is_uptodate() {
        return (off + len, 0);
    }
    let bs = folio.block_size();
    let end = off + len;
    let mut first = off / bs;
    let last = (end - 1) / bs;
    while first <= last && folio.block_uptodate(first) {
        first += 1;
    }
    if first > last {
        return (end, 0);
    }
    let poff = off.max(first * bs);
    let mut stop = first;
    while stop <= last && !folio.block_uptodate(stop) {
        stop += 1;
    }
    let mut pend = end.min(stop * bs);
    // A range that starts before EOF stops at the end of the block holding EOF.
    let pos = folio.pos() + poff as u64;
    if pos < size && folio.end() > size {
        let eof_block = ((size - 1 - folio.pos()) as usize) / bs;
        pend = pend.min((eof_block + 1) * bs);
    }
    (poff, pend - poff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folio_with(uptodate_blocks: &[usize], nblocks: usize, bs_shift: u32) -> FolioGuard {
        let g = Folio::new_locked(0, nblocks << bs_shift, bs_shift);
        for &b in uptodate_blocks {
            g.set_range_uptodate(b << bs_shift, 1 << bs_shift);
        }
        g
    }

    #[test]
    fn leading_uptodate_blocks_are_skipped_and_the_range_stops_at_the_next_one() {
        let f = folio_with(&[0, 1, 4], 8, 9);
        assert_eq!(adjust_read_range(&f, 0, 4096, u64::MAX), (1024, 1024));
        assert_eq!(adjust_read_range(&f, 1536, 1536, u64::MAX), (1536, 512));
        assert_eq!(adjust_read_range(&f, 2560, 1536, u64::MAX), (2560, 1536));
        assert_eq!(adjust_read_range(&f, 2048, 512, u64::MAX), (2560, 0));
    }

    #[test]
    fn a_fully_uptodate_folio_needs_nothing() {
        let f = folio_with(&[0, 1, 2, 3], 4, 10);
        assert!(f.is_uptodate());
        assert_eq!(adjust_read_range(&f, 0, 4096, u64::MAX), (4096, 0));
        assert_eq!(adjust_read_range(&f, 100, 0, u64::MAX), (100, 0));
    }

    #[test]
    fn the_range_stops_at_the_block_holding_eof() {
        let f = folio_with(&[], 8, 9);
        // EOF at 1500: blocks 0..=2 hold data, 3.. are wholly past EOF.
        assert_eq!(adjust_read_range(&f, 0, 4096, 1500), (0, 1536));
        // A range starting past EOF is returned whole: the caller zero-fills it.
        assert_eq!(adjust_read_range(&f, 1536, 2560, 1500), (1536, 2560));
        // EOF on a block boundary.
        assert_eq!(adjust_read_range(&f, 0, 4096, 1024), (0, 1024));
    }

    #[test]
    fn single_block_folios_are_all_or_nothing() {
        let f = folio_with(&[], 1, 12);
        assert_eq!(adjust_read_range(&f, 0, 4096, u64::MAX), (0, 4096));
        f.set_range_uptodate(0, 4096);
        assert_eq!(adjust_read_range(&f, 0, 4096, u64::MAX), (4096, 0));
    }
}
