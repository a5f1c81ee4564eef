//! A ready-made filesystem for raw images: file byte `N` lives at device byte `base + N`, all
//! of it written. It implements both [`IomapOps`] and [`WritebackOps`], so a raw disk image, a
//! partition or a fixed-size region of a device gets the whole engine (cache, readahead,
//! merged writeback, fsync) with no filesystem of its own.

use iomap_dev::DevAddr;

use crate::error::{libc_errno, Error, Result};
use crate::folio::FolioGuard;
use crate::iomap::{Iomap, IomapOps, IomapPair, IterFlags};
use crate::writeback::{WritebackCtx, WritebackOps};

/// A linear mapping of a file of up to `len` bytes onto a device from `base`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearMap {
    base: DevAddr,
    len: u64,
}

impl LinearMap {
    /// Maps file bytes `[0, len)` to device bytes `[base, base + len)`. Both should be
    /// multiples of the file's block size; the engine rejects mappings that are not.
    pub fn new(base: DevAddr, len: u64) -> Self {
        Self { base, len }
    }

    /// How many bytes the mapping covers.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the mapping covers nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn extent(&self) -> Iomap {
        Iomap::mapped(0, self.len, self.base)
    }
}

impl IomapOps for LinearMap {
    fn begin(&self, pos: u64, _len: u64, flags: IterFlags) -> Result<IomapPair> {
        if pos < self.len {
            return Ok(self.extent().into());
        }
        if flags.intersects(IterFlags::WRITE | IterFlags::ZERO) {
            // A fixed-size image cannot grow.
            return Err(Error::from_errno(libc_errno::ENOSPC));
        }
        Ok(Iomap::hole(self.len, u64::MAX - self.len).into())
    }
}

impl WritebackOps for LinearMap {
    fn writeback_range(
        &self,
        ctx: &mut WritebackCtx<'_>,
        folio: &FolioGuard,
        pos: u64,
        len: u64,
        end_pos: u64,
    ) -> Result<u64> {
        ctx.iomap = Some(self.extent());
        ctx.add_to_ioend(folio, pos, len, end_pos)
    }
}
