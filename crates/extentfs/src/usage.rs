//! What the page cache holds for a mounted filesystem, and the two levers a daemon pulls to
//! keep it in bounds: background writeback of dirty data and dropping clean folios.
//!
//! These walk every cached folio of every file in memory, so they are for a statistics
//! request or a flusher's periodic pass, not for every write.

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
    /// Bytes in dirty blocks (not yet under writeback).
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

    /// What the cache holds now.
    pub fn cache_usage(&self) -> CacheUsage {
        let nodes = self.cached_nodes();
        let mut u = CacheUsage {
            files: nodes.len() as u64,
            ..CacheUsage::default()
        };
        for n in &nodes {
            for f in n.mapping.folios_in(0, u64::MAX) {
                u.folios += 1;
                u.cached_bytes += f.size() as u64;
                if f.is_writeback() {
                    u.writeback_bytes += f.size() as u64;
                }
                u.dirty_bytes += f
                    .dirty_ranges()
                    .iter()
                    .map(|&(_, len)| len as u64)
                    .sum::<u64>();
            }
        }
        u
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

    /// Drops clean, unlocked folios not under writeback until about `want_bytes` are freed;
    /// returns the bytes freed. Dirty data stays: write it back first to free more.
    pub fn release_clean(&self, want_bytes: u64) -> u64 {
        let mut freed = 0;
        for n in self.cached_nodes() {
            if freed >= want_bytes {
                break;
            }
            let before: u64 = cached_bytes(&n);
            n.mapping.release_clean(0, u64::MAX);
            freed += before.saturating_sub(cached_bytes(&n));
        }
        freed
    }
}

fn cached_bytes(n: &Node) -> u64 {
    n.mapping
        .folios_in(0, u64::MAX)
        .iter()
        .map(|f| f.size() as u64)
        .sum()
}
