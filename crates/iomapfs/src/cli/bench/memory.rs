//! The cache within a memory budget: a cold sequential read against O_DIRECT, the resident
//! memory while writing 4x the budget, and the memory a cached GiB costs besides its data.
//!
//! Every engine here reads or writes a `FileDevice` opened O_DIRECT, so the kernel's page
//! cache holds none of the data. The two memory cases read this process's resident set
//! (`VmRSS`), so `bench` measures each row of each round in a fresh process
//! (`measure_isolated`): heap that other cases or rows freed would otherwise be reused and
//! hide what the cache costs.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use iomap::iomap_dev::{BlockDevice, DevAddr, FileDevice, IoBuf};
use iomap::{
    buffered_read, buffered_read_ra, buffered_write, CacheConfig, LinearMap, Mapping, MemoryLimits,
    PageCache, RaState, SliceSource, WritebackOps, DEFAULT_MAX_READAHEAD,
};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::data::{
    create_direct, direct_device, open_direct, pattern_into, rss, size_words, BLOCK, CHUNK, GIB,
    MIB,
};
use super::row::{Row, Target, Unit};
use super::{both, fail, Case, CliError, Config, Context, Progress, Result, Sizes};

/// What the kernel spends on every 4 KiB page of memory, cached or not: its 64-byte
/// `struct page`, 16 MiB a GiB.
const KERNEL_STRUCT_PAGE_PER_GIB: f64 = (GIB / 4096 * 64) as f64;

/// A cache with limits, one mapping of a whole device over one extent, and its flusher's ops.
struct Engine {
    cache: Arc<PageCache>,
    mapping: Arc<Mapping>,
    map: Arc<LinearMap>,
}

impl Engine {
    fn new(dev: Arc<dyn BlockDevice>, size: u64, limits: MemoryLimits) -> Result<Self> {
        let cache = PageCache::new(CacheConfig::default()).context(|| "a cache")?;
        cache.set_limits(limits).context(|| "cache limits")?;
        let map = Arc::new(LinearMap::new(DevAddr(0), size));
        let mapping =
            Arc::new(Mapping::new(Arc::clone(&cache), dev, BLOCK as u32).context(|| "a mapping")?);
        mapping.set_size(size);
        let wb: Arc<dyn WritebackOps> = map.clone();
        mapping.set_writeback_ops(wb);
        cache.register(&mapping);
        Ok(Self {
            cache,
            mapping,
            map,
        })
    }
}

fn open_device(path: &Path) -> Result<Arc<FileDevice>> {
    Ok(Arc::new(FileDevice::open(path, direct_device()).context(
        || format!("open {} with O_DIRECT", path.display()),
    )?))
}

/// Scratch files, removed when dropped.
pub struct Files(Vec<PathBuf>);

impl Drop for Files {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

/// Reads the whole of `path` through a fresh engine with a budget, after filling the budget
/// from `warm` (untimed) so that the read runs on memory the process has used before, as in a
/// daemon that has run a while; bytes a second.
fn engine_cold_read(path: &Path, warm: &Path, sizes: &Sizes) -> Result<f64> {
    let size = sizes.cold_file;
    let e = Engine::new(
        open_device(path)?,
        size,
        MemoryLimits::with_budget(sizes.cold_budget),
    )?;
    e.cache.start_flusher().context(|| "start the flusher")?;
    let mut buf = vec![0u8; CHUNK as usize];
    let wmap = LinearMap::new(DevAddr(0), sizes.cold_budget);
    let wm = Arc::new(
        Mapping::new(Arc::clone(&e.cache), open_device(warm)?, BLOCK as u32)
            .context(|| "a mapping")?,
    );
    wm.set_size(sizes.cold_budget);
    e.cache.register(&wm);
    let wra = RaState::new(DEFAULT_MAX_READAHEAD);
    for pos in (0..sizes.cold_budget).step_by(CHUNK as usize) {
        buffered_read_ra(&wm, &wmap, &wra, pos, &mut buf).context(|| "warm-up read")?;
    }

    let ra = RaState::new(DEFAULT_MAX_READAHEAD);
    let mut check = vec![0u8; CHUNK as usize];
    let start = Instant::now();
    let mut pos = 0;
    while pos < size {
        let n = buffered_read_ra(&e.mapping, &*e.map, &ra, pos, &mut buf)
            .context(|| format!("engine read at {pos}"))?;
        if n != CHUNK as usize {
            return Err(fail(format!("short engine read at {pos}")));
        }
        // Every 64th read checked: the same small cost in every round.
        if pos % (64 * CHUNK) == 0 {
            pattern_into(&mut check, pos, 0);
            if buf != check {
                return Err(fail(format!("the engine read wrong bytes at {pos}")));
            }
        }
        pos += n as u64;
    }
    let rate = size as f64 / start.elapsed().as_secs_f64();
    let cached = e.cache.usage().cached_bytes;
    if cached > sizes.cold_budget + 4 * MIB {
        return Err(fail(format!(
            "the cache held {cached} bytes over a budget of {}",
            sizes.cold_budget
        )));
    }
    Ok(rate)
}

/// Reads the whole of `path` in 1 MiB O_DIRECT reads, one at a time; bytes a second.
fn direct_read(path: &Path, size: u64) -> Result<f64> {
    let f = open_direct(path, false)?;
    let mut buf = IoBuf::zeroed(CHUNK as usize);
    let start = Instant::now();
    let mut pos = 0;
    while pos < size {
        f.read_exact_at(&mut buf, pos)
            .context(|| format!("O_DIRECT read at {pos}"))?;
        pos += CHUNK;
    }
    Ok(size as f64 / start.elapsed().as_secs_f64())
}

/// `cold-read`: the engine's readahead keeps its window of requests in flight while the
/// reader copies; the baseline reads one request at a time, as `dd iflag=direct bs=1M` does.
pub fn cold_read(cfg: &Config, p: &Progress) -> Result<Vec<Row>> {
    let s = &cfg.sizes;
    let files = Files(vec![
        cfg.dir.join("cold.img"),
        cfg.dir.join("cold-warm.img"),
    ]);
    let (path, warm) = (&files.0[0], &files.0[1]);
    p.stage(format!("cold-read: writing {} MiB", s.cold_file / MIB))?;
    create_direct(path, s.cold_file)?;
    create_direct(warm, s.cold_budget)?;
    let mut row = Row::new(
        Case::ColdRead,
        format!(
            "cold sequential read of {}, 1 MiB reads, {} budget",
            size_words(s.cold_file),
            size_words(s.cold_budget)
        ),
        Unit::BytesPerSec,
        "O_DIRECT 1 MiB reads",
    )
    .target(Target::at_least(0.9));
    for round in 0..cfg.rounds {
        p.stage_round("cold-read", round, cfg.rounds)?;
        let (e, d) = both(
            round,
            || engine_cold_read(path, warm, s),
            || direct_read(path, s.cold_file),
        )?;
        row.push(e, d);
        p.round(round, cfg.rounds, &row, ["engine", "O_DIRECT"]);
        p.done(2)?;
    }
    Ok(vec![row])
}

/// The rows of a case measured in a fresh process, figures to come.
pub fn isolated_rows(case: Case, s: &Sizes) -> Vec<Row> {
    const STRUCT_PAGE: &str = "the kernel's struct page: 64 B per 4 KiB page, a constant";
    match case {
        Case::DirtyMemory => vec![Row::new(
            case,
            format!(
                "resident memory growth writing {} through a {} budget",
                size_words(4 * s.dirty_budget),
                size_words(s.dirty_budget)
            ),
            Unit::Bytes,
            "the budget",
        )
        .target(Target::at_most(1.1))],
        Case::Metadata => vec![
            Row::new(
                case,
                "memory besides data per cached GiB, sequential reads (large folios)",
                Unit::BytesPerCachedGib,
                STRUCT_PAGE,
            )
            .target(Target::at_most(0.25)),
            Row::new(
                case,
                "memory besides data per cached GiB, 4 KiB random reads (4 KiB folios)",
                Unit::BytesPerCachedGib,
                STRUCT_PAGE,
            )
            .target(Target::at_most(0.25)),
        ],
        _ => Vec::new(),
    }
}

/// Makes the files the rounds of `case` share.
pub fn prepare(case: Case, cfg: &Config, p: &Progress) -> Result<Files> {
    match case {
        Case::Metadata => {
            let path = cfg.dir.join("metadata.img");
            p.stage(format!(
                "metadata: writing {} MiB",
                cfg.sizes.metadata_cached / MIB
            ))?;
            let files = Files(vec![path.clone()]);
            create_direct(&path, cfg.sizes.metadata_cached)?;
            Ok(files)
        }
        _ => Ok(Files(Vec::new())),
    }
}

/// Row `row` of `case`, measured once in this process (a fresh one): engine and baseline.
pub fn measure_isolated(case: Case, row: usize, dir: &Path, s: &Sizes) -> Result<(f64, f64)> {
    match (case, row) {
        (Case::DirtyMemory, 0) => Ok((dirty_rss(dir, s.dirty_budget)?, s.dirty_budget as f64)),
        (Case::Metadata, 0 | 1) => {
            let path = dir.join("metadata.img");
            if !path.exists() {
                return Err(fail(format!(
                    "{} is missing: the metadata case reads a file `iomapfs bench` makes",
                    path.display()
                )));
            }
            Ok((
                metadata(&path, s.metadata_cached, row == 1)?,
                KERNEL_STRUCT_PAGE_PER_GIB,
            ))
        }
        (Case::DirtyMemory | Case::Metadata, _) => {
            Err(CliError::Usage(format!("{} has no row {row}", case.name())))
        }
        _ => Err(CliError::Usage(format!(
            "{} does not run in a child process (only dirty-memory and metadata do)",
            case.name()
        ))),
    }
}

/// Writes 4x the budget through a fresh engine with its flusher and throttle on; the peak
/// growth of the resident set, sampled after every write.
fn dirty_rss(dir: &Path, budget: u64) -> Result<f64> {
    let size = 4 * budget;
    let path = dir.join("dirty-memory.img");
    let _files = Files(vec![path.clone()]);
    let dev = Arc::new(
        FileDevice::create(&path, size, direct_device())
            .context(|| format!("create {}", path.display()))?,
    );
    let mut buf = vec![0u8; CHUNK as usize];
    let base = rss()?;
    let e = Engine::new(dev, size, MemoryLimits::with_budget(budget))?;
    e.cache.start_flusher().context(|| "start the flusher")?;
    let mut peak = 0;
    for pos in (0..size).step_by(CHUNK as usize) {
        pattern_into(&mut buf, pos, 0);
        let n = buffered_write(&e.mapping, &*e.map, pos, CHUNK, &mut SliceSource::new(&buf))
            .context(|| format!("engine write at {pos}"))?;
        if n != CHUNK {
            return Err(fail(format!("short engine write at {pos}")));
        }
        peak = peak.max(rss()?.saturating_sub(base));
    }
    e.cache.sync_all().context(|| "sync")?;
    Ok(peak as f64)
}

/// Caches the whole of `path`, sequentially or in random 4 KiB reads; the growth of the
/// resident set less the folio buffers (the pool's own count), per cached GiB.
fn metadata(path: &Path, cached: u64, random: bool) -> Result<f64> {
    // Everything this function uses is allocated and touched before the baseline.
    let mut buf = vec![1u8; CHUNK as usize];
    let mut blocks: Vec<u64> = (0..cached / BLOCK).collect();
    blocks.shuffle(&mut SmallRng::seed_from_u64(7));
    let ra = RaState::new(DEFAULT_MAX_READAHEAD);
    let dev = open_device(path)?;
    let base = rss()?;
    let e = Engine::new(dev, cached, MemoryLimits::default())?;
    e.cache.set_pool_max_bytes(0);
    if random {
        for &b in &blocks {
            buffered_read(&e.mapping, &*e.map, b * BLOCK, &mut buf[..BLOCK as usize])
                .context(|| "engine read")?;
        }
    } else {
        for pos in (0..cached).step_by(CHUNK as usize) {
            buffered_read_ra(&e.mapping, &*e.map, &ra, pos, &mut buf).context(|| "engine read")?;
        }
    }
    let grown = rss()?.saturating_sub(base);
    let pool = e.cache.pool_stats();
    let usage = e.cache.usage();
    if usage.cached_bytes == 0 {
        return Err(fail("nothing was cached"));
    }
    let meta = grown.saturating_sub(pool.live_bytes + pool.held_bytes);
    Ok(meta as f64 * GIB as f64 / usage.cached_bytes as f64)
}
