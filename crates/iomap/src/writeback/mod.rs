//! Writeback: dirty folios to the device, in file order, through the filesystem's
//! [`WritebackOps`], merged into [`Ioend`]s.
//!
//! Rules: R10 only dirty blocks are written; R13 a folio straddling EOF is zeroed past EOF
//! before it is written and a folio wholly past EOF is cleaned without I/O; R14 (in `ioend`);
//! R15 when mapping fails part-way through a folio the filesystem's discard is told the failing
//! offset, the folio's remaining dirty bits are cleared, blocks already queued fail with their
//! ioend, the folio stays uptodate, its writeback ends once what was submitted completes, and
//! the error is recorded on the mapping; R18 data-integrity writeback goes on after an error
//! and returns the first, background writeback stops at the first error.
//!
//! Unlike Linux, which fails whichever ioend is pending when the pass ends (possibly a later,
//! healthy folio's), the failing folio's queued blocks are split off the pending ioend and
//! failed alone, so no other folio's data is dropped for its error.
//!
//! Locking: each folio is locked while its dirty ranges are handed to the filesystem; the
//! pending ioend may be submitted with the current folio locked, so completions take no folio
//! lock. Writeback of a folio ends when its `write_bytes_pending` (plus the writer's one-byte
//! share while it works on the folio) reaches zero.

mod ioend;
mod sync;

pub(crate) use ioend::CompletionQueue;
pub use ioend::{Ioend, IoendFlags};
pub use sync::{sync_mappings, write_and_wait_range, OpenFile};

use std::sync::Arc;

use iomap_dev::DevAddr;
use tracing::trace;

use crate::error::{Error, Result};
use crate::folio::{Folio, FolioGuard};
use crate::iomap::{Iomap, IomapFlags, IomapKind};
use crate::mapping::Mapping;
use ioend::IoendBuild;

/// Data integrity (wait for and write everything) or background (best effort, a budget).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// Background writeback: skip folios under writeback, stop at the budget or first error.
    None,
    /// Data integrity (fsync, sync): wait for writeback in progress, write every dirty folio
    /// that was dirty when writeback started, go on after errors and return the first.
    All,
}

/// What a writeback pass should do, the kernel's `writeback_control`.
#[derive(Clone, Debug)]
pub struct WritebackControl {
    /// Integrity or background.
    pub sync_mode: SyncMode,
    /// First file byte of the range.
    pub start: u64,
    /// One past the last file byte of the range.
    pub end: u64,
    /// For background writeback, stop after about this many bytes.
    pub budget_bytes: Option<u64>,
    /// Bytes queued for writing by this pass (output).
    pub written_bytes: u64,
}

impl WritebackControl {
    /// Data-integrity writeback of `[start, end)`.
    pub fn integrity(start: u64, end: u64) -> Self {
        Self {
            sync_mode: SyncMode::All,
            start,
            end,
            budget_bytes: None,
            written_bytes: 0,
        }
    }

    /// Background writeback of `[start, end)`, all of it (skipping folios under writeback).
    pub fn background_range(start: u64, end: u64) -> Self {
        Self {
            sync_mode: SyncMode::None,
            start,
            end,
            budget_bytes: None,
            written_bytes: 0,
        }
    }

    /// Background writeback of the whole file, up to `budget_bytes`.
    pub fn background(budget_bytes: u64) -> Self {
        Self {
            sync_mode: SyncMode::None,
            start: 0,
            end: u64::MAX,
            budget_bytes: Some(budget_bytes),
            written_bytes: 0,
        }
    }
}

/// What a filesystem implements so the engine can write dirty data back, the kernel's
/// `iomap_writeback_ops` with XFS's discard and ioend completion.
pub trait WritebackOps: Send + Sync {
    /// Maps (allocating if needed: delalloc becomes unwritten) the dirty range
    /// `[pos, pos + len)` of `folio`, sets `ctx.iomap`, and queues it with
    /// [`WritebackCtx::add_to_ioend`]. May handle less than `len`; returns the bytes handled.
    /// `end_pos` is where the file ends within this folio's writeback.
    fn writeback_range(
        &self,
        ctx: &mut WritebackCtx<'_>,
        folio: &FolioGuard,
        pos: u64,
        len: u64,
        end_pos: u64,
    ) -> Result<u64>;

    /// Submits the pending ioend, or fails it with `error` (an errno) without I/O.
    fn writeback_submit(&self, ctx: &mut WritebackCtx<'_>, error: Option<i32>) {
        ctx.submit_pending(error);
    }

    /// Writeback of `folio` failed at `pos`: give back reservations (delalloc) from `pos` to
    /// the end of the folio, whose dirty data is being dropped (R15, R9).
    fn discard(&self, folio: &Folio, pos: u64) {
        let _ = (folio, pos);
    }

    /// Whether `ioend` needs filesystem work at completion; such ioends complete on the worker.
    fn ioend_needs_completion(&self, ioend: &Ioend) -> bool {
        ioend.is_unwritten() || ioend.is_shared()
    }

    /// Filesystem work for a completed (possibly merged) ioend: convert unwritten extents,
    /// remap shared ones, update the on-disk size. `ioend.error` says whether the write failed.
    fn ioend_complete(&self, mapping: &Mapping, ioend: &Ioend) -> Result<()> {
        let _ = (mapping, ioend);
        Ok(())
    }

    /// Makes metadata durable for fsync (`datasync`: only what reading the data needs).
    fn commit(&self, datasync: bool) -> Result<()> {
        let _ = datasync;
        Ok(())
    }
}

/// State of one writeback pass, the kernel's `iomap_writepage_ctx`.
pub struct WritebackCtx<'a> {
    mapping: &'a Arc<Mapping>,
    ops: &'a Arc<dyn WritebackOps>,
    /// The filesystem's current mapping; `writeback_range` sets it and may reuse it for later
    /// ranges it still covers.
    pub iomap: Option<Iomap>,
    pending: Option<IoendBuild>,
    max_ioend: u64,
    /// Whether the folio being written back has bytes in an ioend.
    queued: bool,
}

impl<'a> WritebackCtx<'a> {
    fn new(mapping: &'a Arc<Mapping>, ops: &'a Arc<dyn WritebackOps>) -> Self {
        let bs = mapping.block_size() as u64;
        Self {
            mapping,
            ops,
            iomap: None,
            pending: None,
            max_ioend: mapping.dev().max_request_bytes() / bs * bs,
            queued: false,
        }
    }

    /// The mapping being written back.
    pub fn mapping(&self) -> &Arc<Mapping> {
        self.mapping
    }

    /// Queues `[pos, pos + len)` of `folio` for writing through `self.iomap`, the kernel's
    /// `iomap_add_to_ioend`: the bytes join the pending ioend if they continue it (R14), else
    /// it is submitted and a new one started. Returns the bytes handled, at most to the end of
    /// the mapping; a hole is handled by writing nothing.
    pub fn add_to_ioend(
        &mut self,
        folio: &FolioGuard,
        pos: u64,
        len: u64,
        end_pos: u64,
    ) -> Result<u64> {
        let _ = end_pos;
        let Some(iomap) = &self.iomap else {
            return Err(Error::BadMapping(
                "writeback_range queued without a mapping".into(),
            ));
        };
        if iomap.offset > pos || iomap.end() <= pos {
            return Err(Error::BadMapping(format!(
                "writeback mapping {iomap:?} does not contain offset {pos}"
            )));
        }
        let map_len = len.min(iomap.end() - pos);
        let mut flags = match iomap.kind {
            IomapKind::Hole => return Ok(map_len),
            IomapKind::Mapped => IoendFlags::empty(),
            IomapKind::Unwritten => IoendFlags::UNWRITTEN,
            kind => {
                return Err(Error::BadMapping(format!(
                    "writeback needs allocated space, got a {kind:?} mapping at {pos}"
                )))
            }
        };
        if iomap.flags.contains(IomapFlags::SHARED) {
            flags |= IoendFlags::SHARED;
        }
        let boundary = iomap.flags.contains(IomapFlags::BOUNDARY) && pos == iomap.offset;
        let mut addr: DevAddr = iomap.dev_addr(pos);
        let (mut at, end) = (pos, pos + map_len);
        while at < end {
            let start_flags = if boundary && at == pos {
                flags | IoendFlags::BOUNDARY
            } else {
                flags
            };
            let joins = self
                .pending
                .as_ref()
                .is_some_and(|p| p.can_add(at, addr, start_flags, self.max_ioend));
            if !joins {
                let ops = Arc::clone(self.ops);
                ops.writeback_submit(self, None);
                self.pending = Some(IoendBuild::new(at, addr, start_flags));
            }
            let Some(pending) = self.pending.as_mut() else {
                unreachable!("an ioend was just started")
            };
            let n = (end - at).min(self.max_ioend - pending.ioend.size);
            pending.push(folio, (at - folio.pos()) as usize, n);
            self.queued = true;
            at += n;
            addr = addr + n;
        }
        Ok(map_len)
    }

    /// Fails, without I/O, the bytes of `folio` queued at the tail of the pending ioend: the
    /// blocks of a folio whose writeback failed part-way (R15). Blocks of earlier folios in the
    /// same ioend are unaffected and still go to the device.
    fn fail_folio_tail(&mut self, folio: &Folio, errno: i32) {
        let Some(pending) = self.pending.as_mut() else {
            return;
        };
        if let Some(tail) = pending.split_tail(folio) {
            if pending.is_empty() {
                self.pending = None;
            }
            ioend::submit(self.mapping, self.ops, tail, Some(errno));
        }
    }

    /// Submits the pending ioend, or fails it with `error` without I/O: what
    /// [`WritebackOps::writeback_submit`] does by default.
    pub fn submit_pending(&mut self, error: Option<i32>) {
        if let Some(b) = self.pending.take() {
            ioend::submit(self.mapping, self.ops, b, error);
        }
    }
}

/// Writes back dirty folios of `mapping` in `wbc`'s range, in file order (R14, R18).
pub fn writepages(
    mapping: &Arc<Mapping>,
    ops: &Arc<dyn WritebackOps>,
    wbc: &mut WritebackControl,
) -> Result<()> {
    let mut ctx = WritebackCtx::new(mapping, ops);
    let mut first_err = None;
    let from = wbc
        .start
        .saturating_sub(mapping.max_folio_size() as u64 - 1);
    // The dirty folios now: folios dirtied while we work wait for the next pass, so a writer
    // cannot keep an fsync going forever.
    for fpos in mapping.dirty_folios(from, wbc.end) {
        if wbc.sync_mode == SyncMode::None
            && wbc.budget_bytes.is_some_and(|b| wbc.written_bytes >= b)
        {
            break;
        }
        let Some(folio) = mapping.find_folio(fpos) else {
            continue;
        };
        if folio.end() <= wbc.start {
            continue;
        }
        let guard = folio.lock();
        if guard.is_detached() || !guard.is_dirty() {
            continue;
        }
        if guard.is_writeback() {
            if wbc.sync_mode == SyncMode::None {
                continue;
            }
            guard.wait_writeback();
        }
        match writeback_folio(&mut ctx, &guard) {
            Ok(n) => wbc.written_bytes += n,
            Err(e) => {
                // This folio's queued blocks fail with their own ioend (R15); blocks of earlier
                // folios queued with them still go out.
                ctx.fail_folio_tail(&guard, e.errno());
                drop(guard);
                if first_err.is_none() {
                    first_err = Some(e);
                }
                if wbc.sync_mode == SyncMode::None {
                    break;
                }
            }
        }
    }
    ops.writeback_submit(&mut ctx, None);
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Writes back one locked, dirty folio; returns the bytes queued.
fn writeback_folio(ctx: &mut WritebackCtx<'_>, guard: &FolioGuard) -> Result<u64> {
    debug_assert!(guard.is_locked() && !guard.is_writeback());
    let mapping = ctx.mapping;
    let size = mapping.size();
    let bs = guard.block_size() as u64;
    let mut end_pos = guard.end();
    if end_pos > size {
        if guard.pos() >= size {
            // Wholly past EOF (a truncate racing with us): nothing to write, and cleaning it
            // keeps it from being redirtied and retried forever (R13).
            mapping.clear_dirty(guard, 0, guard.size());
            return Ok(0);
        }
        // Straddling EOF: what lies past EOF may have been dirtied through a mapping; it must
        // reach the device as zeros (R13).
        let keep = (size - guard.pos()) as usize;
        guard.zero(keep, guard.size() - keep);
        end_pos = size;
    }
    trace!(pos = guard.pos(), size = guard.size(), "writeback_folio");
    let has_share = mapping.start_writeback(guard);
    ctx.queued = false;
    let write_end = end_pos.div_ceil(bs) * bs;
    let mut queued = 0;
    let mut error = None;
    'ranges: for (off, len) in guard.dirty_ranges() {
        let mut pos = guard.pos() + off as u64;
        let rend = (pos + len as u64).min(write_end);
        while pos < rend {
            let ops = Arc::clone(ctx.ops);
            match ops.writeback_range(ctx, guard, pos, rend - pos, end_pos) {
                Ok(0) => {
                    error = Some(Error::BadMapping(format!(
                        "writeback_range made no progress at {pos}"
                    )));
                }
                Ok(n) => {
                    pos += n;
                    queued += n;
                    continue;
                }
                Err(e) => error = Some(e),
            }
            // R15: the filesystem gives back what it reserved from the failing offset on.
            ops.discard(guard, pos);
            break 'ranges;
        }
    }
    // Every dirty bit goes, written or not: blocks past EOF dirtied through a mapping, and on
    // failure the rest of the folio, which is never redirtied (R13, R15).
    mapping.clear_dirty(guard, 0, guard.size());
    let ended = if has_share {
        guard.write_done(1)
    } else {
        !ctx.queued
    };
    if ended {
        mapping.end_writeback(guard);
    }
    if let Some(e) = error {
        mapping.set_error(e.errno());
        return Err(e);
    }
    Ok(queued)
}
