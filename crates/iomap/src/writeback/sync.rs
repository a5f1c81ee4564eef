//! Waiting for data to be safe: the writeback entry points, open-file error sampling, fsync,
//! fdatasync and syncfs (rule R19).
//!
//! Each open file samples its mapping's error sequence (and the filesystem's) when opened.
//! fsync writes back and waits, flushes the device cache, asks the filesystem to commit, and
//! reports an error that happened since this file last saw one, once; a file opened after an
//! error nobody saw still sees it. A failed device flush is recorded like a write error, so
//! every open file learns of it once.

use std::sync::Arc;

use iomap_dev::BlockDeviceExt;
use parking_lot::Mutex;

use crate::error::{libc_errno, Error, Result};
use crate::errseq::ErrSeqSince;
use crate::mapping::Mapping;
use crate::writeback::{writepages, WritebackControl, WritebackOps};

/// Writes back `[start, end)` with data integrity and waits for it, the kernel's
/// `filemap_write_and_wait_range`. Returns the first writeback error met on the way; errors
/// recorded in the error sequence are reported through [`OpenFile`].
pub fn write_and_wait_range(
    mapping: &Arc<Mapping>,
    ops: &Arc<dyn WritebackOps>,
    start: u64,
    end: u64,
) -> Result<()> {
    let res = writepages(mapping, ops, &mut WritebackControl::integrity(start, end));
    mapping.wait_writeback_range(start, end);
    res
}

/// Writes back and waits for every mapping, then flushes each distinct device once: the data
/// half of `sync` and `syncfs`. Returns the first error.
pub fn sync_mappings<'a>(
    files: impl IntoIterator<Item = (&'a Arc<Mapping>, &'a Arc<dyn WritebackOps>)>,
) -> Result<()> {
    let mut first = None;
    let mut devs: Vec<&Arc<Mapping>> = Vec::new();
    for (mapping, ops) in files {
        if let Err(e) = write_and_wait_range(mapping, ops, 0, u64::MAX) {
            first.get_or_insert(e);
        }
        if !devs.iter().any(|m| Arc::ptr_eq(m.dev(), mapping.dev())) {
            devs.push(mapping);
        }
    }
    for mapping in devs {
        if let Err(e) = flush_device(mapping) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// Flushes the device's write cache; a failure is recorded on the mapping for every open file.
fn flush_device(mapping: &Mapping) -> Result<()> {
    mapping.dev().flush().map_err(|e| {
        mapping.set_error(e.raw_os_error().unwrap_or(libc_errno::EIO));
        Error::Io(e)
    })
}

/// An open file: what it has seen of its mapping's and its filesystem's error sequences.
pub struct OpenFile {
    mapping: Arc<Mapping>,
    since: Mutex<(ErrSeqSince, Option<ErrSeqSince>)>,
}

impl OpenFile {
    /// Opens `mapping`, sampling its error sequences now.
    pub fn open(mapping: &Arc<Mapping>) -> Self {
        let wb = mapping.errseq().sample();
        let sb = mapping.sb_errseq().map(|s| s.sample());
        Self {
            mapping: Arc::clone(mapping),
            since: Mutex::new((wb, sb)),
        }
    }

    /// The file's mapping.
    pub fn mapping(&self) -> &Arc<Mapping> {
        &self.mapping
    }

    /// Reports a writeback error recorded since this file last saw one, once, the kernel's
    /// `file_check_and_advance_wb_err`.
    pub fn check_and_advance(&self) -> Result<()> {
        let mut since = self.since.lock();
        match self.mapping.errseq().check_and_advance(&mut since.0) {
            Some(errno) => Err(Error::from_errno(errno)),
            None => Ok(()),
        }
    }

    /// Reports a writeback error recorded since this file last saw one, without marking it
    /// seen (the kernel's `filemap_check_wb_err`): what `close` reports, so that an error
    /// surfacing at one close of a shared open file still reaches its fsync.
    pub fn check(&self) -> Result<()> {
        let since = self.since.lock().0;
        match self.mapping.errseq().check(since) {
            Some(errno) => Err(Error::from_errno(errno)),
            None => Ok(()),
        }
    }

    /// fsync (`datasync == false`) or fdatasync of `[start, end)`: write back and wait, flush
    /// the device, commit the filesystem's metadata, and report an error since this file last
    /// saw one. Writeback and flush failures are recorded in the error sequence, so they reach
    /// this file (and every other) exactly once through it; a failed commit is returned as is.
    pub fn fsync(
        &self,
        ops: &Arc<dyn WritebackOps>,
        start: u64,
        end: u64,
        datasync: bool,
    ) -> Result<()> {
        if start > end {
            return Err(Error::InvalidArgument(format!(
                "fsync range starts at {start}, after its end at {end}"
            )));
        }
        let _recorded = write_and_wait_range(&self.mapping, ops, start, end);
        let _recorded = flush_device(&self.mapping);
        let committed = ops.commit(datasync);
        self.check_and_advance()?;
        committed
    }

    /// syncfs: writes back and waits for every mapping of the filesystem, flushes, commits, and
    /// reports a filesystem-wide error (see [`Mapping::set_sb_errseq`]) since this file last saw
    /// one. Without a filesystem-wide sequence, the file's own mapping's is checked.
    pub fn syncfs<'a>(
        &self,
        files: impl IntoIterator<Item = (&'a Arc<Mapping>, &'a Arc<dyn WritebackOps>)>,
        commit: &dyn WritebackOps,
    ) -> Result<()> {
        let _recorded = sync_mappings(files);
        let committed = commit.commit(false);
        {
            let mut since = self.since.lock();
            let (wb, sb) = &mut *since;
            let errno = match (self.mapping.sb_errseq(), sb.as_mut()) {
                (Some(seq), Some(sb_since)) => seq.check_and_advance(sb_since),
                _ => self.mapping.errseq().check_and_advance(wb),
            };
            if let Some(errno) = errno {
                return Err(Error::from_errno(errno));
            }
        }
        committed
    }
}
