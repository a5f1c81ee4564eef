//! Zeroing file ranges through the cache: `zero_range` and `truncate_page` (rule R11).
//!
//! Holes and unwritten extents already read as zeros, so they are skipped unless the cache
//! holds data over them the device does not have yet: dirty blocks, or folios under writeback
//! (whose unwritten extent becomes written when the ioend completes). Those are zeroed, after
//! waiting for writeback and remapping; everything else is zeroed in the cache and dirtied,
//! for writeback to carry to the device.

use crate::error::{Error, Result};
use crate::iomap::{IomapKind, IomapOps, IterFlags};
use crate::iter::IomapIter;
use crate::mapping::Mapping;
use crate::write::rewrite_in_place;

/// Zeroes `[pos, pos + len)`. Returns whether any byte was zeroed in the cache.
pub fn zero_range(mapping: &Mapping, ops: &dyn IomapOps, pos: u64, len: u64) -> Result<bool> {
    if len == 0 {
        return Ok(false);
    }
    if pos.checked_add(len).is_none_or(|e| e > i64::MAX as u64) {
        return Err(Error::InvalidArgument(format!(
            "zeroing {len} bytes at {pos} overflows the file offset"
        )));
    }
    let mut did_zero = false;
    let (_, res) = IomapIter::new(ops, pos, len, IterFlags::ZERO)
        .with_alignment(mapping.block_size() as u64)
        .run(|it| {
            let zero = |guard: &crate::FolioGuard, off: usize, n: usize| guard.zero(off, n);
            if !matches!(it.srcmap().kind, IomapKind::Hole | IomapKind::Unwritten) {
                did_zero = true;
                let end = it.pos() + it.length();
                return rewrite_in_place(mapping, it, end, zero);
            }
            // Only folios holding data the device lacks need zeroing; the rest already reads
            // as zeros.
            let end = it.pos() + it.length();
            let start = it.pos();
            let targets: Vec<_> = mapping
                .folios_in(start, end)
                .into_iter()
                .filter(|f| mapping.range_needs_writeback(f.pos().max(start), f.end().min(end)))
                .collect();
            // Writeback may have converted the extent and cleaned its folios since `begin`;
            // the cookie tells. If it did, what looked clean is data: remap.
            if !it.is_valid() {
                it.mark_stale();
                return Ok(());
            }
            for folio in targets {
                let from = folio.pos().max(it.pos());
                if from > it.pos() {
                    it.advance(from - it.pos());
                }
                rewrite_in_place(mapping, it, folio.end().min(end), zero)?;
                did_zero = true;
                if it.is_stale() {
                    return Ok(()); // remapped from here by the iteration
                }
            }
            it.advance_full();
            Ok(())
        });
    res.map(|()| did_zero)
}

/// Zeroes from `pos` to the end of its block, the kernel's `iomap_truncate_page`: called
/// before a truncate so the tail of the new EOF block reads as zeros after a later extension.
pub fn truncate_page(mapping: &Mapping, ops: &dyn IomapOps, pos: u64) -> Result<bool> {
    let bs = mapping.block_size() as u64;
    let off = pos % bs;
    if off == 0 {
        return Ok(false);
    }
    zero_range(mapping, ops, pos, bs - off)
}
