//! `iomapfs stats`: asks a running mount's daemon for its statistics and prints them.

use std::io;

use serde_json::Value;

use super::{CliError, StatsArgs};
use crate::size::human;
use crate::stats::STATS_XATTR;

pub fn run(a: StatsArgs) -> Result<(), CliError> {
    let raw = xattr::get(&a.mountpoint, STATS_XATTR)
        .map_err(|e| not_ours(&a.mountpoint, e))?
        .ok_or_else(|| not_ours(&a.mountpoint, io::Error::from_raw_os_error(libc::ENODATA)))?;
    if a.json {
        println!("{}", String::from_utf8_lossy(&raw));
        return Ok(());
    }
    let v: Value = serde_json::from_slice(&raw).map_err(|e| {
        CliError::Usage(format!(
            "{} answered with statistics this version cannot read: {e}",
            a.mountpoint.display()
        ))
    })?;
    print!("{}", render(&v));
    Ok(())
}

fn not_ours(mnt: &std::path::Path, e: io::Error) -> CliError {
    CliError::Usage(format!(
        "{} is not served by a running `iomapfs mount` ({e})",
        mnt.display()
    ))
}

fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path).and_then(Value::as_u64).unwrap_or(0)
}

fn f(v: &Value, path: &str) -> f64 {
    v.pointer(path).and_then(Value::as_f64).unwrap_or(0.0)
}

/// The statistics as a table.
fn render(v: &Value) -> String {
    let s = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned()
    };
    let b = |p: &str| human(u(v, p));
    let mut out = String::new();
    let mut row = |k: &str, val: String| out.push_str(&format!("{k:<22} {val}\n"));
    row(
        "image",
        format!(
            "{} ({} device, {}-byte blocks)",
            s("/image"),
            s("/device"),
            u(v, "/block_size")
        ),
    );
    row("uptime", format!("{:.0} s", f(v, "/uptime_secs")));
    row(
        "cached",
        format!(
            "{} of {} in {} folios over {} files",
            b("/cache/cached_bytes"),
            b("/cache/limit_bytes"),
            u(v, "/cache/folios"),
            u(v, "/cache/files")
        ),
    );
    row(
        "dirty",
        format!(
            "{} (background writeback from {}, writers wait past {})",
            b("/cache/dirty_bytes"),
            b("/cache/dirty_background_bytes"),
            b("/cache/dirty_limit_bytes")
        ),
    );
    row("under writeback", b("/cache/writeback_bytes"));
    row(
        "reclaimed",
        format!(
            "{} in {} passes over the cache size; buffers {} reused, {} new, {} pooled",
            b("/cache/reclaimed_bytes"),
            u(v, "/cache/reclaims"),
            u(v, "/cache/buffers_reused"),
            u(v, "/cache/buffers_allocated"),
            b("/cache/pool_bytes")
        ),
    );
    row(
        "reads",
        format!(
            "{} hits, {} misses, hit rate {:.1}%, {} read",
            u(v, "/reads/hits"),
            u(v, "/reads/misses"),
            100.0 * f(v, "/reads/hit_rate"),
            b("/reads/bytes")
        ),
    );
    row(
        "readahead",
        format!(
            "{} windows on a miss, {} on reaching the marker, {} read ahead",
            u(v, "/reads/readahead_sync"),
            u(v, "/reads/readahead_async"),
            b("/reads/readahead_bytes")
        ),
    );
    row("writes", format!("{} written", b("/writes/bytes")));
    row(
        "device requests",
        format!(
            "{} reads ({}), {} writes ({}), {} ioends",
            u(v, "/requests/read_requests"),
            b("/requests/read_bytes"),
            u(v, "/requests/write_requests"),
            b("/requests/write_bytes"),
            u(v, "/requests/ioends")
        ),
    );
    row(
        "merge ratio",
        format!(
            "{:.2} blocks per request",
            f(v, "/requests/blocks_per_request")
        ),
    );
    row(
        "errors",
        format!(
            "{} read, {} writeback",
            u(v, "/errors/read"),
            u(v, "/errors/writeback")
        ),
    );
    row(
        "flusher",
        format!(
            "{} passes, {} files expired, {} slices over threshold",
            u(v, "/flusher/passes"),
            u(v, "/flusher/expired_files"),
            u(v, "/flusher/threshold_slices")
        ),
    );
    row(
        "throttled",
        format!(
            "{} writes, {:.2} s waiting",
            u(v, "/flusher/throttled_writes"),
            f(v, "/flusher/throttled_secs")
        ),
    );
    let bs = u(v, "/space/block_size");
    row(
        "space",
        format!(
            "{} free of {}, {} inodes",
            human(u(v, "/space/available_blocks") * bs),
            human(u(v, "/space/blocks") * bs),
            u(v, "/space/inodes")
        ),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_the_daemons_figures() {
        let v: Value = serde_json::from_str(
            r#"{"image":"/tmp/x.img","device":"file","block_size":4096,
                "cache":{"cached_bytes":3145728,"dirty_bytes":1048576,"folios":3,"files":2},
                "reads":{"hits":3,"misses":1,"hit_rate":0.75},
                "requests":{"read_requests":2,"blocks_per_request":4.5},
                "errors":{"writeback":7}}"#,
        )
        .expect("json");
        let t = render(&v);
        assert!(
            t.contains("/tmp/x.img (file device, 4096-byte blocks)"),
            "{t}"
        );
        assert!(t.contains("3.0 MiB of 0 B in 3 folios over 2 files"), "{t}");
        assert!(t.contains("hit rate 75.0%"), "{t}");
        assert!(t.contains("4.50 blocks per request"), "{t}");
        assert!(t.contains("7 writeback"), "{t}");
    }
}
