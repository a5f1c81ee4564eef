//! Live statistics of a mount, served by the daemon as a JSON document behind a virtual
//! extended attribute of the mount's root (`iomapfs.stats`), which `iomapfs stats` reads.

use std::path::PathBuf;
use std::time::Instant;

use extentfs::ExtentFs;
use iomap_dev::DeviceKind;
use serde_json::{json, Value};

/// The attribute name on the root directory that yields the statistics.
pub const STATS_XATTR: &str = "iomapfs.stats";

/// What a mount knows about itself besides its counters.
pub struct StatsSource {
    /// The image mounted.
    pub image: PathBuf,
    /// The device serving it.
    pub device: DeviceKind,
    /// When the mount started.
    pub started: Instant,
}

fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

impl StatsSource {
    /// The statistics now, as a JSON document.
    pub fn render(&self, fs: &ExtentFs) -> String {
        self.to_json(fs).to_string()
    }

    fn to_json(&self, fs: &ExtentFs) -> Value {
        let c = fs.cache().stats().snapshot();
        let pool = fs.cache().pool_stats();
        let u = fs.cache_usage();
        let l = fs.cache().limits();
        let s = fs.statfs();
        let requests = c.dev_read_requests + c.dev_write_requests;
        json!({
            "image": self.image.display().to_string(),
            "device": self.device.name(),
            "block_size": fs.block_size(),
            "uptime_secs": self.started.elapsed().as_secs_f64(),
            "cache": {
                "files": u.files,
                "folios": u.folios,
                "cached_bytes": u.cached_bytes,
                "dirty_bytes": u.dirty_bytes,
                "writeback_bytes": u.writeback_bytes,
                "limit_bytes": l.budget_bytes,
                "dirty_limit_bytes": l.dirty_bytes,
                "dirty_background_bytes": l.dirty_background_bytes,
                "dirty_expire_secs": l.dirty_expire.as_secs_f64(),
                "reclaims": c.reclaims,
                "direct_reclaims": c.direct_reclaims,
                "reclaimed_bytes": c.reclaimed_bytes,
                "buffers_reused": pool.reused,
                "buffers_allocated": pool.allocated,
                "pool_bytes": pool.held_bytes,
                "buffer_bytes": pool.live_bytes,
            },
            "reads": {
                "hits": c.read_hits,
                "misses": c.read_misses,
                "hit_rate": ratio(c.read_hits, c.read_hits + c.read_misses),
                "bytes": c.bytes_read,
                "readahead_sync": c.readahead_sync,
                "readahead_async": c.readahead_async,
                "readahead_bytes": c.readahead_bytes,
            },
            "writes": { "bytes": c.bytes_written },
            "requests": {
                "read_requests": c.dev_read_requests,
                "read_bytes": c.dev_read_bytes,
                "write_requests": c.dev_write_requests,
                "write_bytes": c.dev_write_bytes,
                "ioends": c.ioends,
                "blocks_merged": c.blocks_merged,
                "blocks_per_request": ratio(requests + c.blocks_merged, requests),
            },
            "errors": {
                "read": c.read_errors,
                "writeback": c.writeback_errors,
            },
            "flusher": {
                "passes": c.flusher_passes,
                "expired_files": c.expired_writebacks,
                "threshold_slices": c.threshold_writebacks,
                "throttled_writes": c.throttled_writes,
                "throttled_secs": c.throttled_micros as f64 / 1e6,
            },
            "space": {
                "block_size": s.bsize,
                "blocks": s.blocks,
                "free_blocks": s.bfree,
                "available_blocks": s.bavail,
                "inodes": s.files,
            },
        })
    }
}
