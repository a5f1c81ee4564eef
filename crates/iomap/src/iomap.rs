//! What a filesystem tells the engine about a file range: [`Iomap`], and the [`IomapOps`] it
//! implements to produce them.

use std::fmt;
use std::sync::Arc;

use bitflags::bitflags;
use iomap_dev::DevAddr;
use parking_lot::RwLock;

use crate::error::Result;

/// How a file range is backed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IomapKind {
    /// No space allocated: reads as zeros.
    Hole,
    /// Space reserved but not yet allocated; allocation happens at writeback.
    Delalloc,
    /// Allocated and written: data is on the device at `addr`.
    Mapped,
    /// Allocated but never written: reads as zeros, writeback converts it.
    Unwritten,
    /// Data kept in the filesystem's metadata, in `inline_data`.
    Inline,
}

bitflags! {
    /// Properties of a mapping, the kernel's `IOMAP_F_*`.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct IomapFlags: u16 {
        /// Freshly allocated: contents are undefined, so the cache zeroes instead of reading.
        const NEW = 1 << 0;
        /// Metadata for this mapping is not yet durable (fdatasync must commit it).
        const DIRTY = 1 << 1;
        /// Blocks shared with another file: writes go elsewhere (copy on write).
        const SHARED = 1 << 2;
        /// Set by the engine when a write through this mapping grew the file.
        const SIZE_CHANGED = 1 << 3;
        /// Set by the engine when `IomapOps::valid` said the mapping is out of date.
        const STALE = 1 << 4;
        /// I/O must not merge across the end of this mapping.
        const BOUNDARY = 1 << 5;
    }
}

bitflags! {
    /// Why the engine is asking for a mapping, the kernel's `IOMAP_*` iteration flags.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct IterFlags: u16 {
        /// A buffered write: reserve space (delalloc) for holes.
        const WRITE = 1 << 0;
        /// Zeroing a range.
        const ZERO = 1 << 1;
        /// Reporting only (seek): allocate nothing.
        const REPORT = 1 << 2;
        /// A mapped write (mkwrite).
        const FAULT = 1 << 3;
        /// Unsharing shared extents.
        const UNSHARE = 1 << 4;
    }
}

/// Inline file data owned by the filesystem (e.g. in its inode), shared with the engine.
pub type InlineData = Arc<RwLock<Vec<u8>>>;

/// A mapping of file range `[offset, offset + length)`, the kernel's `struct iomap`.
#[derive(Clone)]
pub struct Iomap {
    /// First file byte mapped.
    pub offset: u64,
    /// Bytes mapped.
    pub length: u64,
    /// How the range is backed.
    pub kind: IomapKind,
    /// Device address of `offset` (meaningful for `Mapped` and `Unwritten`).
    pub addr: DevAddr,
    /// Properties.
    pub flags: IomapFlags,
    /// The filesystem's validity cookie: it changes whenever the file's extent map changes, so
    /// `IomapOps::valid` can tell that this mapping went stale.
    pub cookie: u64,
    /// Inline data, for `Inline` mappings: file byte `offset + i` is `inline_data[i]`.
    pub inline_data: Option<InlineData>,
}

impl Iomap {
    /// A mapping of `kind` with no device address.
    pub fn new(kind: IomapKind, offset: u64, length: u64) -> Self {
        Self {
            offset,
            length,
            kind,
            addr: DevAddr(0),
            flags: IomapFlags::empty(),
            cookie: 0,
            inline_data: None,
        }
    }

    /// A hole.
    pub fn hole(offset: u64, length: u64) -> Self {
        Self::new(IomapKind::Hole, offset, length)
    }

    /// Allocated, written data at `addr`.
    pub fn mapped(offset: u64, length: u64, addr: DevAddr) -> Self {
        Self {
            addr,
            ..Self::new(IomapKind::Mapped, offset, length)
        }
    }

    /// Allocated, unwritten space at `addr`.
    pub fn unwritten(offset: u64, length: u64, addr: DevAddr) -> Self {
        Self {
            addr,
            ..Self::new(IomapKind::Unwritten, offset, length)
        }
    }

    /// Inline data.
    pub fn inline(offset: u64, length: u64, data: InlineData) -> Self {
        Self {
            inline_data: Some(data),
            ..Self::new(IomapKind::Inline, offset, length)
        }
    }

    /// With these flags added.
    pub fn with_flags(mut self, flags: IomapFlags) -> Self {
        self.flags |= flags;
        self
    }

    /// With this validity cookie.
    pub fn with_cookie(mut self, cookie: u64) -> Self {
        self.cookie = cookie;
        self
    }

    /// One past the last file byte mapped.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.length)
    }

    /// Device address of file byte `pos`, which must lie inside the mapping.
    pub fn dev_addr(&self, pos: u64) -> DevAddr {
        debug_assert!(pos >= self.offset && pos < self.end());
        self.addr + (pos - self.offset)
    }

    /// True when reading file byte `pos` through this mapping must produce zeros rather than
    /// device data: holes, delalloc, unwritten and NEW blocks (rule R1; EOF is the caller's).
    pub fn reads_as_zero(&self) -> bool {
        self.kind != IomapKind::Mapped || self.flags.contains(IomapFlags::NEW)
    }
}

impl fmt::Debug for Iomap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Iomap");
        d.field("offset", &self.offset)
            .field("length", &self.length)
            .field("kind", &self.kind);
        if matches!(self.kind, IomapKind::Mapped | IomapKind::Unwritten) {
            d.field("addr", &self.addr);
        }
        d.field("flags", &self.flags).field("cookie", &self.cookie);
        if let Some(data) = &self.inline_data {
            d.field("inline_len", &data.read().len());
        }
        d.finish()
    }
}

/// The mapping of a range, and for copy-on-write the mapping to read old data from.
#[derive(Clone, Debug)]
pub struct IomapPair {
    /// Where data goes (and comes from, when there is no `srcmap`).
    pub iomap: Iomap,
    /// Where existing data comes from when it differs from `iomap` (a shared extent being
    /// written through a new one).
    pub srcmap: Option<Iomap>,
}

impl From<Iomap> for IomapPair {
    fn from(iomap: Iomap) -> Self {
        Self {
            iomap,
            srcmap: None,
        }
    }
}

/// What a filesystem implements so the engine can map file ranges, the kernel's `iomap_ops`
/// with `iomap_valid` folded in.
pub trait IomapOps: Send + Sync {
    /// Maps the range starting at `pos`, at most `len` bytes long. The returned mapping must
    /// contain `pos`; it may be shorter than `len` and may start before `pos`. For writes the
    /// filesystem reserves space here, so `ENOSPC` is returned now rather than at writeback.
    fn begin(&self, pos: u64, len: u64, flags: IterFlags) -> Result<IomapPair>;

    /// Ends use of `iomap` for `[pos, pos + len)`, of which `done` bytes were processed
    /// (written, zeroed...). A write that did less than asked gives back its reservation here,
    /// and only under ranges that are clean in the cache (rule R9,
    /// [`crate::Mapping::punch_clean_ranges`]).
    fn end(&self, pos: u64, len: u64, done: u64, flags: IterFlags, iomap: &Iomap) -> Result<()> {
        let _ = (pos, len, done, flags, iomap);
        Ok(())
    }

    /// Whether `iomap` is still current, checked after a folio is locked for write (rule R7).
    fn valid(&self, iomap: &Iomap) -> bool {
        let _ = iomap;
        true
    }
}
