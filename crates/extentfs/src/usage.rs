//! What the page cache holds for a mounted filesystem, and the two levers a daemon pulls to
//! keep it in bounds: background writeback of dirty data and dropping clean folios.
//!
//! The usage comes from the engine's gauges and costs nothing; writeback and dropping walk
//! the files in memory.

use std::sync::Arc;

use iomap::{writepages, WritebackControl};

use crate::error::Result;
use crate::fs::{ExtentFs, Node};
use crate::meta::Ino;

/// Bytes the cache holds, by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheUsage {
    /// Files with engine state in memory.
    pub files: u64,
    /// Folios cached.
    pub folios: u64,
    /// Bytes of folio data cached, whatever their state.
    pub cached_bytes: u64,
    /// Bytes of dirty folios (a folio counts whole, as Linux's dirty accounting does).
    pub dirty_bytes: u64,
    /// Bytes of folios under writeback.
    pub writeback_bytes: u64,
}

impl ExtentFs {
    /// Files with engine state in memory, in inode order.
    fn cached_nodes(&self) -> Vec<Arc<Node>> {
        let mut nodes: Vec<_> = self
            .nodes
            .lock()
            .iter()
            .map(|(&ino, n)| (ino, Arc::clone(n)))
            .collect();
        nodes.sort_unstable_by_key(|&(ino, _)| ino);
        nodes.into_iter().map(|(_, n)| n).collect()
    }

    /// What the cache holds now (the engine's gauges: no folio is visited).
    pub fn cache_usage(&self) -> CacheUsage {
        let g = self.shared.cache.usage();
        CacheUsage {
            files: self.nodes.lock().len() as u64,
            folios: g.folios,
            cached_bytes: g.cached_bytes,
            dirty_bytes: g.dirty_bytes,
            writeback_bytes: g.writeback_bytes,
        }
    }

    /// Starts background writeback of every file's dirty data, about `budget_bytes` in all
    /// (files in inode order); returns the bytes queued. Like the kernel's background
    /// writeback it stops at the first error, which is also recorded on the file for fsync.
    pub fn writeback_background(&self, budget_bytes: u64) -> Result<u64> {
        let mut queued = 0;
        for n in self.cached_nodes() {
            if queued >= budget_bytes {
                break;
            }
            if n.mapping.dirty_folios(0, u64::MAX).is_empty() {
                continue;
            }
            let mut wbc = WritebackControl::background(budget_bytes - queued);
            writepages(&n.mapping, &n.wb, &mut wbc)?;
            queued += wbc.written_bytes;
        }
        Ok(queued)
    }

    /// Starts background writeback of all of `ino`'s dirty data; returns the bytes queued
    /// (0 for a file with nothing cached).
    pub fn writeback_file(&self, ino: Ino) -> Result<u64> {
        let Some(n) = self.nodes.lock().get(&ino).cloned() else {
            return Ok(0);
        };
        let mut wbc = WritebackControl::background(u64::MAX);
        writepages(&n.mapping, &n.wb, &mut wbc)?;
        Ok(wbc.written_bytes)
    }

    /// Evicts about `want_bytes` of clean folios from the cache, scan resistantly (a working
    /// set read twice outlives a one-off scan: see `iomap::Reclaimer`); returns the bytes
    /// evicted. Dirty data stays: write it back first to free more.
    pub fn release_clean(&self, want_bytes: u64) -> u64 {
        self.shared.cache.reclaim(want_bytes)
    }
}
