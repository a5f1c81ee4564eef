//! The cache within a memory budget, against what the machine gives without one.
//!
//! One process measures:
//!
//! 1. **Cold sequential read**: a file (4 GiB by default) read front to back in 1 MiB reads
//!    through the engine, with per-file readahead and a cache budget a sixteenth of the file,
//!    from a [`FileDevice`] opened with `O_DIRECT` (so the kernel's page cache holds nothing),
//!    against 1 MiB `O_DIRECT` `pread`s of the same file. The sides alternate, and which goes
//!    first alternates by round; medians are reported, and their ratio.
//! 2. **Resident memory while writing 4x the budget**: a fresh cache with a budget (256 MiB by
//!    default), its flusher running, takes 1 MiB writes of four times that; the process's
//!    resident set (`/proc/self/statm`) is sampled after every write, and its peak growth is
//!    compared with the budget.
//! 3. **Metadata per cached GiB**: the growth of the resident set while 1 GiB is cached,
//!    less the folio buffers (the pool's own count), once read sequentially (large folios)
//!    and once in 4 KiB random reads (one folio per 4 KiB, the worst case). Run it alone
//!    (`BENCH_ONLY=meta`): in the same process as the others, heap they freed is reused and
//!    the figure comes out low.
//!
//! The `O_DIRECT` baseline reads one 1 MiB request at a time (what `dd iflag=direct bs=1M`
//! does); the engine keeps its readahead window in flight.
//!
//! Environment: `BENCH_DIR` (default `<workspace>/target/bench-data`), `BENCH_FILE_MB` (default
//! 4096), `BENCH_BUDGET_MB` (default 256), `BENCH_ROUNDS` (default 3), `BENCH_RA_KB` the
//! engine's largest readahead window (default 1024), `BENCH_ONLY` some of `read,write,meta`,
//! `BENCH_KEEP=1` keeps the data file.
//!
//! Run: `cargo bench -p iomap --bench memory`.

#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iomap::iomap_dev::{BlockDevice, DevAddr, DeviceOptions, FileDevice, IoBuf};
use iomap::{
    buffered_read, buffered_read_ra, buffered_write, CacheConfig, LinearMap, Mapping, MemoryLimits,
    PageCache, RaState, SliceSource, WritebackOps, DEFAULT_MAX_READAHEAD,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const CHUNK: usize = MIB as usize;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a non-negative integer")),
        Err(_) => default,
    }
}

/// The byte at file offset `pos`.
fn byte_at(pos: u64) -> u8 {
    (pos >> 12) as u8 ^ (pos as u8).wrapping_mul(31) ^ 0x5a
}

fn fill(buf: &mut [u8], pos: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = byte_at(pos + i as u64);
    }
}

/// Makes `path` a `size`-byte file of the pattern (kept if one of that size exists), durable
/// and dropped from the kernel's page cache.
fn data_file(path: &Path, size: u64) {
    let reuse = std::fs::metadata(path).is_ok_and(|m| m.len() == size);
    if !reuse {
        eprintln!("writing {} MiB to {}", size / MIB, path.display());
        let f = File::create(path).expect("create the data file");
        let mut buf = vec![0u8; 8 * CHUNK];
        let mut pos = 0;
        while pos < size {
            let n = (size - pos).min(buf.len() as u64) as usize;
            fill(&mut buf[..n], pos);
            f.write_all_at(&buf[..n], pos).expect("write the data file");
            pos += n as u64;
        }
        f.sync_all().expect("fsync the data file");
    }
}

fn direct_options() -> DeviceOptions {
    DeviceOptions {
        direct: true,
        ..DeviceOptions::default()
    }
}

/// Resident bytes of this process.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("parse /proc/self/statm");
    pages * 4096
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn gib_s(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64() / GIB as f64
}

/// A cache, one mapping of a whole device, and the ops for it.
struct Engine {
    cache: Arc<PageCache>,
    mapping: Arc<Mapping>,
    map: Arc<LinearMap>,
}

impl Engine {
    fn new(dev: Arc<dyn BlockDevice>, size: u64, limits: MemoryLimits) -> Self {
        let cache = PageCache::new(CacheConfig::default()).expect("cache");
        cache.set_limits(limits).expect("limits");
        let map = Arc::new(LinearMap::new(DevAddr(0), size));
        let mapping = Arc::new(Mapping::new(Arc::clone(&cache), dev, 4096).expect("mapping"));
        mapping.set_size(size);
        let wb: Arc<dyn WritebackOps> = map.clone();
        mapping.set_writeback_ops(wb);
        cache.register(&mapping);
        Self {
            cache,
            mapping,
            map,
        }
    }
}

/// Reads the whole file through a fresh engine with a budget; bytes/s. With `warm`, the
/// cache is first filled to its budget from that other file, so that the cold read runs on
/// memory the process has used before, as in a daemon that has been running a while; without
/// it every folio buffer up to the budget is fresh memory the kernel must fault in and zero.
fn engine_cold_read(path: &Path, size: u64, budget: u64, warm: Option<&Path>) -> f64 {
    let dev = Arc::new(FileDevice::open(path, direct_options()).expect("open with O_DIRECT"));
    let e = Engine::new(dev, size, MemoryLimits::with_budget(budget));
    e.cache.start_flusher().expect("flusher");
    let ra = RaState::new(env_u64("BENCH_RA_KB", DEFAULT_MAX_READAHEAD >> 10) << 10);
    let mut buf = vec![0u8; CHUNK];
    let mut check = vec![0u8; CHUNK];
    if let Some(warm) = warm {
        let len = std::fs::metadata(warm).expect("the warm-up file").len();
        let wdev = Arc::new(FileDevice::open(warm, direct_options()).expect("open with O_DIRECT"));
        let wmap = LinearMap::new(DevAddr(0), len);
        let wm = Arc::new(Mapping::new(Arc::clone(&e.cache), wdev, 4096).expect("mapping"));
        wm.set_size(len);
        e.cache.register(&wm);
        let wra = RaState::new(env_u64("BENCH_RA_KB", DEFAULT_MAX_READAHEAD >> 10) << 10);
        for pos in (0..len).step_by(CHUNK) {
            buffered_read_ra(&wm, &wmap, &wra, pos, &mut buf).expect("warm-up read");
        }
    }
    let stats_before = e.cache.stats().snapshot();
    let start = Instant::now();
    let mut pos = 0;
    while pos < size {
        let n = buffered_read_ra(&e.mapping, &*e.map, &ra, pos, &mut buf).expect("engine read");
        assert_eq!(n, CHUNK);
        if pos % (64 * MIB) == 0 {
            // Spot checks, outside nothing: they cost the same on every round.
            fill(&mut check, pos);
            assert!(buf == check, "the engine read wrong bytes at {pos}");
        }
        pos += n as u64;
    }
    let t = start.elapsed();
    let mut s = e.cache.stats().snapshot();
    s.dev_read_requests -= stats_before.dev_read_requests;
    s.dev_read_bytes -= stats_before.dev_read_bytes;
    s.read_misses -= stats_before.read_misses;
    s.direct_reclaims -= stats_before.direct_reclaims;
    s.folios_added -= stats_before.folios_added;
    eprintln!(
        "  engine: {} device reads of {:.0} KiB on average, {} misses, {} direct reclaims, \
         {} folios, buffers {} reused / {} allocated",
        s.dev_read_requests,
        s.dev_read_bytes as f64 / s.dev_read_requests.max(1) as f64 / 1024.0,
        s.read_misses,
        s.direct_reclaims,
        s.folios_added,
        e.cache.pool_stats().reused,
        e.cache.pool_stats().allocated,
    );
    let at_end = e.cache.usage().cached_bytes;
    assert!(
        at_end <= budget + 4 * MIB,
        "the cache held {at_end} bytes at the end"
    );
    size as f64 / t.as_secs_f64()
}

/// Reads the whole file with `O_DIRECT` preads; bytes/s.
fn direct_read(path: &Path, size: u64) -> f64 {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .expect("open with O_DIRECT");
    let mut buf = IoBuf::zeroed(CHUNK);
    let start = Instant::now();
    let mut pos = 0;
    while pos < size {
        f.read_exact_at(&mut buf[..], pos).expect("O_DIRECT pread");
        pos += CHUNK as u64;
    }
    size as f64 / start.elapsed().as_secs_f64()
}

fn cold_read(path: &Path, size: u64, budget: u64, rounds: usize, warm: Option<&Path>) {
    let (mut ours, mut direct) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for side in 0..2 {
            if (side + round) % 2 == 0 {
                ours.push(engine_cold_read(path, size, budget, warm));
            } else {
                direct.push(direct_read(path, size));
            }
        }
        eprintln!(
            "round {round}: engine {:.2} GiB/s, O_DIRECT {:.2} GiB/s",
            ours[round] / GIB as f64,
            direct[round] / GIB as f64
        );
    }
    // Each round's sides ran back to back on the same disk: the paired ratio is the steadier
    // figure on a shared machine, and the one reported.
    let mut ratios: Vec<f64> = ours.iter().zip(&direct).map(|(o, d)| o / d).collect();
    let paired = median(&mut ratios);
    eprintln!("  per-round ratios: {ratios:.2?}");
    let (o, d) = (median(&mut ours), median(&mut direct));
    println!(
        "| cold sequential read, {} MiB in 1 MiB reads, budget {} MiB, {} | {:.2} GiB/s | {:.2} GiB/s | {:.2}x (median of per-round ratios; of medians {:.2}x) (>= 0.9x) |",
        size / MIB,
        budget / MIB,
        if warm.is_some() {
            "cache memory warm (full of other data)"
        } else {
            "fresh process (cache memory faulted in)"
        },
        o / GIB as f64,
        d / GIB as f64,
        paired,
        o / d
    );
}

/// Writes 4x the budget through a fresh engine; the peak growth of the resident set.
fn write_rss(dir: &Path, budget: u64) {
    let size = 4 * budget;
    let path = dir.join("memory-write.img");
    let dev = Arc::new(FileDevice::create(&path, size, direct_options()).expect("create"));
    let base = rss();
    let e = Engine::new(dev, size, MemoryLimits::with_budget(budget));
    e.cache.start_flusher().expect("flusher");
    let mut buf = vec![0u8; CHUNK];
    let mut peak = 0;
    let mut peak_live = 0;
    let start = Instant::now();
    for pos in (0..size).step_by(CHUNK) {
        fill(&mut buf, pos);
        let n = buffered_write(
            &e.mapping,
            &*e.map,
            pos,
            CHUNK as u64,
            &mut SliceSource::new(&buf),
        )
        .expect("engine write");
        assert_eq!(n, CHUNK as u64);
        peak = peak.max(rss().saturating_sub(base));
        let p = e.cache.pool_stats();
        peak_live = peak_live.max(p.live_bytes + p.held_bytes);
    }
    e.cache.sync_all().expect("sync");
    let t = start.elapsed();
    let s = e.cache.stats().snapshot();
    println!(
        "| write {} MiB through a {} MiB budget | peak RSS growth {:.1} MiB ({:.3}x the budget, < 1.1x) | folio buffers at most {:.1} MiB | {:.2} GiB/s with sync; {} throttled, {:.2} s |",
        size / MIB,
        budget / MIB,
        peak as f64 / MIB as f64,
        peak as f64 / budget as f64,
        peak_live as f64 / MIB as f64,
        gib_s(size, t),
        s.throttled_writes,
        s.throttled_micros as f64 / 1e6
    );
    drop(e);
    std::fs::remove_file(&path).ok();
}

/// Caches 1 GiB of the file, sequentially or in random 4 KiB reads; metadata bytes (resident
/// growth less folio buffers) per cached GiB.
fn metadata(path: &Path, size: u64, random: bool) {
    let cached = GIB.min(size);
    let dev = Arc::new(FileDevice::open(path, direct_options()).expect("open"));
    // Everything the benchmark itself uses is allocated and touched before the baseline.
    let mut buf = vec![1u8; CHUNK];
    let mut blocks: Vec<u64> = (0..cached / 4096).collect();
    let mut rng = SmallRng::seed_from_u64(7);
    for i in (1..blocks.len()).rev() {
        blocks.swap(i, rng.gen_range(0..=i));
    }
    let ra = RaState::new(DEFAULT_MAX_READAHEAD);
    let base = rss();
    let e = Engine::new(dev, size, MemoryLimits::default());
    e.cache.set_pool_max_bytes(0);
    if random {
        for &b in &blocks {
            buffered_read(&e.mapping, &*e.map, b * 4096, &mut buf[..4096]).expect("read");
        }
    } else {
        for pos in (0..cached).step_by(CHUNK) {
            buffered_read_ra(&e.mapping, &*e.map, &ra, pos, &mut buf).expect("read");
        }
    }
    let grown = rss().saturating_sub(base);
    let p = e.cache.pool_stats();
    let u = e.cache.usage();
    let meta = grown.saturating_sub(p.live_bytes + p.held_bytes);
    let per_gib = meta as f64 * GIB as f64 / u.cached_bytes as f64;
    println!(
        "| metadata, 1 GiB cached {} | {} folios | {:.2} MiB per cached GiB ({:.0} bytes per folio) | kernel: 16 MiB (struct page) |",
        if random {
            "by 4 KiB random reads"
        } else {
            "by sequential reads"
        },
        u.folios,
        per_gib / MIB as f64,
        meta as f64 / u.folios as f64,
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` lists or smoke-runs benches: nothing to do here.
    }
    let dir: PathBuf = match std::env::var_os("BENCH_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-data"),
    };
    std::fs::create_dir_all(&dir).expect("create the bench directory");
    let size = env_u64("BENCH_FILE_MB", 4096) * MIB;
    let budget = env_u64("BENCH_BUDGET_MB", 256) * MIB;
    let rounds = env_u64("BENCH_ROUNDS", 3).max(1) as usize;
    let path = dir.join("memory-read.img");
    data_file(&path, size);

    let only = std::env::var("BENCH_ONLY").unwrap_or_else(|_| "read,write,meta".into());
    let runs = |name: &str| only.split(',').any(|o| o.trim() == name);
    println!("| case | ours | baseline | ratio |");
    println!("|---|---:|---:|---:|");
    if runs("read") {
        let warm = dir.join("memory-warm.img");
        data_file(&warm, budget);
        cold_read(&path, size, budget, rounds, Some(&warm));
        cold_read(&path, size, budget, rounds, None);
        std::fs::remove_file(&warm).ok();
    }
    println!();
    if runs("write") {
        write_rss(&dir, budget);
    }
    if runs("meta") {
        metadata(&path, size, false);
        metadata(&path, size, true);
    }
    if std::env::var_os("BENCH_KEEP").is_none_or(|v| v == "0") {
        std::fs::remove_file(&path).ok();
    }
}
