//! A userspace rebuild of Linux's iomap buffered-I/O engine.
//!
//! A filesystem implements [`IomapOps`] (and, for writeback, `WritebackOps`) to say how file
//! ranges map to its device; the engine keeps each file's cached data in a [`Mapping`] of
//! [`Folio`]s with per-block uptodate and dirty state, and moves data between the cache, the
//! caller and the [`iomap_dev::BlockDevice`] in as few, as large, device requests as the
//! mapping allows.
//!
//! Entry points: [`buffered_read`] (and [`buffered_read_ra`] with per-file readahead state),
//! [`readahead`], [`read_folio`], [`buffered_write`],
//! [`zero_range`], [`truncate_page`], [`file_unshare`], [`page_mkwrite`], [`seek_data`],
//! [`seek_hole`], and on [`Mapping`] the invalidation calls [`Mapping::truncate_range`],
//! [`Mapping::truncate_to`] and [`Mapping::release_clean`]; for writeback [`writepages`],
//! [`write_and_wait_range`], [`sync_mappings`] and [`OpenFile::fsync`].
//!
//! The rules these keep are listed in `docs/design.md` §4 and each has a test named after it.

#![forbid(unsafe_code)]

mod cache;
mod error;
mod errseq;
mod folio;
mod iomap;
mod iter;
mod linear;
mod mapping;
mod memory;
mod read;
mod readahead;
mod seek;
mod stats;
mod write;
mod writeback;
mod zero;

pub use cache::{CacheConfig, CompletionHold, PageCache};
pub use error::{libc_errno, Error, Result};
pub use errseq::{ErrSeq, ErrSeqSince};
pub use folio::{BlockBitmap, Folio, FolioGuard, FolioPin, FolioSnapshot, FolioState};
pub use iomap::{InlineData, Iomap, IomapFlags, IomapKind, IomapOps, IomapPair, IterFlags};
pub use iter::IomapIter;
pub use linear::LinearMap;
pub use mapping::{Mapping, ReleaseHook};
pub use memory::{BufPool, MemoryLimits, PoolStats, Reclaimer, DEFAULT_POOL_BYTES};
pub use read::{adjust_read_range, buffered_read, read_folio, readahead};
pub use readahead::{
    buffered_read_ra, buffered_read_uncached, fadvise_dontneed, fadvise_willneed, Advice, RaState,
    DEFAULT_MAX_READAHEAD,
};
pub use seek::{seek_data, seek_hole};
pub use stats::{CacheStats, Counter, GaugeSnapshot, StatsSnapshot};
pub use write::{
    buffered_write, buffered_write_uncached, file_unshare, page_mkwrite, write_begin, write_end,
    MkwriteFolio, ReaderSource, SliceSource, WriteSource,
};
pub use writeback::{
    sync_mappings, write_and_wait_range, writepages, Ioend, IoendFlags, OpenFile, SyncMode,
    WritebackControl, WritebackCtx, WritebackOps,
};
pub use zero::{truncate_page, zero_range};

pub use iomap_dev;
