//! extentfs: a persistent, crash-consistent, extent-mapped filesystem on the iomap engine.
//!
//! Metadata lives in memory and changes by logged operations; a metadata log makes them
//! durable at fsync (and periodically), and checkpoints write the whole state when the log
//! fills. File data goes through the engine's page cache: delalloc at write, allocation as
//! unwritten at writeback, conversion at I/O completion, copy-on-write for shared extents,
//! inline data for small files. `docs/format.md` draws the on-disk format.

#![forbid(unsafe_code)]

pub mod alloc;
mod codec;
pub mod error;
mod file;
pub mod format;
mod fs;
pub mod fsck;
#[doc(hidden)]
pub mod fuzzing;
mod journal;
pub mod meta;
mod ops;
pub mod rangemap;
mod usage;

pub use error::{Error, Result};
pub use fs::{max_file_size, mkfs, ExtentFs, MkfsOptions, MountOptions};
pub use journal::ReplayStats;
pub use meta::{FileType, Ino, Time, ROOT_INO};
pub use ops::{DirEntry, FileHandle, SetAttr, Stat, StatFs, Whence};
pub use usage::CacheUsage;
