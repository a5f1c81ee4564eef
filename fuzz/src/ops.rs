//! The `ops` target: operation sequences for the random-operation checker behind
//! `iomapfs exercise` (writes, reads, truncates, every fallocate mode, copies, clones,
//! fsyncs, cache drops, reclaim, remounts, crashes and failing device requests), run on an
//! in-memory extentfs with the flusher running and checked against a byte-vector oracle per
//! file and fsck. Any difference is a panic with the checker's own description.

use iomapfs::exercise::{ops_from_bytes, run_ops, Config};

/// Most operations per input, so one execution stays fast.
pub const MAX_OPS: usize = 32;
/// The block sizes the first byte chooses among.
const BLOCK_SIZES: [u32; 3] = [512, 1024, 4096];

/// The checker's settings for an input whose first byte is `first`.
pub fn config(first: u8) -> Config {
    Config {
        block_size: BLOCK_SIZES[usize::from(first) % BLOCK_SIZES.len()],
        cache_bytes: 4 << 20,
        max_folio_bytes: 64 << 10,
        files: 2,
        crash: true,
        faults: true,
        ..Config::default()
    }
}

/// Runs the operations `data[1..]` stands for.
pub fn run(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let cfg = config(first);
    let ops = ops_from_bytes(rest, MAX_OPS, &cfg);
    if let Err(f) = run_ops(&cfg, &ops, &mut || {}) {
        let at =
            f.at.map_or("setting up".to_string(), |i| format!("operation {i}"));
        panic!("{at}: {}\noperations: {ops:#?}", f.what);
    }
}
