//! Writeback: the iomap engine's sequential writeback against O_DIRECT, and how well it merges
//! scattered dirty blocks into device requests.
//!
//! One process measures:
//!
//! 1. **Sequential writeback against O_DIRECT (bytes/s).** A fully dirty, fully cached
//!    [`Mapping`] (default [`CacheConfig`]: 2 MiB folios; 4 KiB blocks) is written back with
//!    [`write_and_wait_range`] over the whole file and made durable with a device flush, to a
//!    [`FileDevice`] opened with O_DIRECT (4 KiB logical blocks, 1 MiB maximum request) on a
//!    preallocated file. The baseline of the target (engine >= 0.9x), in the same run, is
//!    sequential 1 MiB O_DIRECT `pwrite`s of the same total size from one reused aligned 1 MiB
//!    buffer to a second preallocated file in the same directory, then `fdatasync`. Two more
//!    O_DIRECT baselines separate what the memory under the data costs from what the engine
//!    costs: the same reused 1 MiB placed in a huge page (as the engine's 2 MiB folios are),
//!    and 1 MiB `pwrite`s walking a huge-page buffer as large as the file (the engine's memory
//!    footprint too). Each round measures every side once, the order rotating by round; the
//!    engine's cache is re-dirtied (untimed, with new contents) before every engine
//!    measurement. Besides the times: the cache's ioend and device-write counters, the
//!    measuring thread's CPU time, and the block device's completed write requests.
//! 2. **Merge optimality on random dirtying (requests).** A second cache over the same device
//!    file, wrapped in a [`LogDevice`], is read in whole (clean and uptodate), then
//!    `BENCH_RAND_BLOCKS` distinct random 4 KiB blocks are overwritten with `buffered_write`.
//!    The fewest write requests that can carry them is one per contiguous run of dirty blocks,
//!    times `ceil(run bytes / max request)`; writeback must issue exactly that many, in
//!    ascending device order. The time is reported for information, next to an O_DIRECT
//!    replay of exactly those minimal requests.
//!
//! The filesystem is minimal: one written extent over the whole file at device address 0, and a
//! writeback that maps every dirty range through it.
//!
//! Every data file is written in full once with O_DIRECT before anything is timed, so its blocks
//! are allocated and written (overwrites need no allocation or unwritten conversion) and none of
//! it sits in the kernel's page cache. `BENCH_DIR` must be on a disk file system that accepts
//! O_DIRECT (ext4, xfs, btrfs); the benchmark stops with a message if O_DIRECT is refused, and
//! warns on tmpfs, where O_DIRECT is accepted but is a memory copy.
//!
//! Correctness is checked outside the timed windows: sampled blocks of both files after every
//! round, the whole engine file when it is read into the second cache, and the whole file again
//! after the random writeback.
//!
//! Environment: `BENCH_DIR` (default `<workspace>/target/bench-data`), `BENCH_WB_MB` file size
//! in MiB (default 1024), `BENCH_ROUNDS` (default 3), `BENCH_RAND_BLOCKS` (default 65536),
//! `BENCH_SEED` for the random blocks (default 0x3b5), `BENCH_KEEP=1` keeps the data files,
//! `BENCH_ONLY=seq,merge` runs only some parts (for profiling).
//!
//! Run: `cargo bench -p iomap --bench writeback`.

// A benchmark is a program run by hand: a failed setup step should stop it with a message, and
// `expect` carries one everywhere below.
#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use iomap::iomap_dev::{
    BlockDevice, BlockDeviceExt, DevAddr, DeviceOptions, FileDevice, IoBuf, LogDevice, Op,
};
use iomap::{
    buffered_read, buffered_write, write_and_wait_range, CacheConfig, LinearMap, Mapping,
    PageCache, SliceSource, StatsSnapshot, WritebackOps,
};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;
const BLOCK: u64 = 4 * KIB;
/// The device's maximum request, and the baseline's `pwrite` size.
const MAX_REQUEST: u64 = MIB;
/// Setup, fill and verification I/O size.
const CHUNK: u64 = 8 * MIB;
/// Engine bytes/s over O_DIRECT bytes/s.
const TARGET: f64 = 0.9;
/// Blocks of each file checked after every sequential round.
const SAMPLES: usize = 1024;
/// Contents generation of the blocks the merge part dirties.
const MERGE_GEN: u64 = 0xd1;

// ---------------------------------------------------------------------------------------------
// Configuration

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Part {
    Seq,
    Merge,
}

struct Config {
    dir: PathBuf,
    size: u64,
    rounds: usize,
    rand_blocks: u64,
    seed: u64,
    keep: bool,
    only: Vec<Part>,
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a non-negative integer"))
        }
        Err(_) => default,
    }
}

impl Config {
    fn from_env() -> Self {
        let dir = match std::env::var_os("BENCH_DIR") {
            Some(d) => PathBuf::from(d),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-data"),
        };
        let mb = env_u64("BENCH_WB_MB", 1024);
        assert!(mb >= 8, "BENCH_WB_MB must be at least 8");
        let size = mb * MIB;
        let rand_blocks = env_u64("BENCH_RAND_BLOCKS", 65536);
        assert!(
            rand_blocks >= 1 && rand_blocks <= size / BLOCK,
            "BENCH_RAND_BLOCKS must be from 1 to the file's {} blocks",
            size / BLOCK
        );
        Self {
            dir,
            size,
            rounds: env_u64("BENCH_ROUNDS", 3).max(1) as usize,
            rand_blocks,
            seed: env_u64("BENCH_SEED", 0x3b5),
            keep: std::env::var_os("BENCH_KEEP").is_some_and(|v| v != "0"),
            only: match std::env::var("BENCH_ONLY") {
                Ok(list) => list
                    .split(',')
                    .map(|name| match name.trim() {
                        "seq" => Part::Seq,
                        "merge" => Part::Merge,
                        other => panic!("BENCH_ONLY: unknown part {other:?} (seq, merge)"),
                    })
                    .collect(),
                Err(_) => vec![Part::Seq, Part::Merge],
            },
        }
    }

    fn runs(&self, part: Part) -> bool {
        self.only.contains(&part)
    }
}

// ---------------------------------------------------------------------------------------------
// File contents

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Contents generation `gen` at file offset `pos` (8-byte aligned): never a zero word,
/// different at every offset and in every generation, so a stale or misplaced block shows.
fn pattern_into(buf: &mut [u8], pos: u64, gen: u64) {
    debug_assert!(pos % 8 == 0 && buf.len() % 8 == 0);
    for (i, word) in buf.chunks_exact_mut(8).enumerate() {
        let v = splitmix64((pos + 8 * i as u64) ^ (gen << 48)) | 1;
        word.copy_from_slice(&v.to_le_bytes());
    }
}

// ---------------------------------------------------------------------------------------------
// O_DIRECT files

/// Stops the benchmark with a message; a refused O_DIRECT is a setup problem, not a result.
fn die(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1)
}

fn refused(dir: &Path, fs_type: &str, what: &str, e: &io::Error) -> ! {
    die(&format!(
        "O_DIRECT refused on BENCH_DIR {} (file system {fs_type}): {what}: {e}\n       \
         This benchmark compares against O_DIRECT and writes back through an O_DIRECT device: \
         point BENCH_DIR at a directory on a disk file system that supports O_DIRECT (ext4, \
         xfs, btrfs), not tmpfs or an overlay.",
        dir.display()
    ))
}

fn open_direct(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(create)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

/// The device options both parts use.
fn device_options() -> DeviceOptions {
    DeviceOptions {
        direct: true,
        logical_block_size: Some(BLOCK as u32),
        max_request_bytes: MAX_REQUEST,
        ..DeviceOptions::default()
    }
}

/// Creates `path` with `size` bytes of generation 0, written with O_DIRECT (so every block is
/// allocated and written, and none of it is in the kernel's page cache), and makes it durable.
fn create_data_file(cfg: &Config, fs_type: &str, path: &Path) {
    let file = open_direct(path, true)
        .unwrap_or_else(|e| refused(&cfg.dir, fs_type, &format!("open {}", path.display()), &e));
    let mut chunk = IoBuf::zeroed(CHUNK as usize);
    let mut pos = 0;
    while pos < cfg.size {
        let n = (cfg.size - pos).min(CHUNK) as usize;
        pattern_into(&mut chunk[..n], pos, 0);
        if let Err(e) = file.write_all_at(&chunk[..n], pos) {
            if e.raw_os_error() == Some(libc::EINVAL) {
                refused(&cfg.dir, fs_type, "an aligned O_DIRECT write", &e);
            }
            panic!("write {}: {e}", path.display());
        }
        pos += n as u64;
    }
    file.sync_all().expect("fsync a data file");
}

/// The type of the file system holding `dir`, from the longest matching mount point.
fn fs_type(dir: &Path) -> String {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return "unknown".into();
    };
    mounts
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_, mnt, ty) = (f.next()?, f.next()?, f.next()?);
            let mnt = mnt.replace("\\040", " ");
            dir.starts_with(&mnt).then(|| (mnt.len(), ty.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".into(), |(_, ty)| ty)
}

/// Checks `samples` random blocks of `file` (opened with O_DIRECT) against `expect`.
fn check_blocks(
    file: &File,
    name: &str,
    size: u64,
    samples: usize,
    seed: u64,
    expect: impl Fn(u64, &mut [u8]),
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut got = IoBuf::zeroed(BLOCK as usize);
    let mut want = vec![0u8; BLOCK as usize];
    for _ in 0..samples {
        let pos = rng.gen_range(0..size / BLOCK) * BLOCK;
        file.read_exact_at(&mut got, pos)
            .unwrap_or_else(|e| panic!("O_DIRECT read of {name} at {pos}: {e}"));
        expect(pos, &mut want);
        assert!(*got == *want, "{name}: block at {pos} holds the wrong data");
    }
}

// ---------------------------------------------------------------------------------------------
// The engine side

struct Engine {
    mapping: Arc<Mapping>,
    fs: Arc<LinearMap>,
    wb: Arc<dyn WritebackOps>,
}

impl Engine {
    fn new(dev: Arc<dyn BlockDevice>, size: u64) -> Self {
        assert_eq!(dev.capacity_bytes(), size, "device file has the wrong size");
        let cache = PageCache::new(CacheConfig::default()).expect("default cache configuration");
        let mapping = Mapping::new(cache, dev, BLOCK as u32).expect("a mapping with 4 KiB blocks");
        mapping.set_size(size);
        let fs = Arc::new(LinearMap::new(DevAddr(0), size));
        let wb: Arc<dyn WritebackOps> = Arc::clone(&fs) as Arc<dyn WritebackOps>;
        Self {
            mapping: Arc::new(mapping),
            fs,
            wb,
        }
    }

    fn stats(&self) -> StatsSnapshot {
        self.mapping.cache().stats().snapshot()
    }

    /// Writes generation `gen` over the whole file through `buffered_write` (untimed).
    fn write_all(&self, gen: u64, chunk: &mut [u8]) {
        let size = self.mapping.size();
        let mut pos = 0;
        while pos < size {
            let n = (size - pos).min(chunk.len() as u64) as usize;
            pattern_into(&mut chunk[..n], pos, gen);
            let done = buffered_write(
                &self.mapping,
                &*self.fs,
                pos,
                n as u64,
                &mut SliceSource::new(&chunk[..n]),
            )
            .expect("engine buffered_write");
            assert_eq!(done, n as u64, "short engine write at {pos}");
            pos += n as u64;
        }
    }

    /// Writes back everything and flushes the device: the timed operation. Returns the time
    /// of each half.
    fn writeback_and_flush(&self) -> (Duration, Duration) {
        let t = Instant::now();
        write_and_wait_range(&self.mapping, &self.wb, 0, u64::MAX).expect("engine writeback");
        let wb = t.elapsed();
        let t = Instant::now();
        self.mapping.dev().flush().expect("engine device flush");
        (wb, t.elapsed())
    }

    fn assert_clean(&self) {
        assert!(
            self.mapping.dirty_folios(0, u64::MAX).is_empty(),
            "dirty folios left after writeback"
        );
        assert!(
            self.mapping.writeback_folios(0, u64::MAX).is_empty(),
            "folios still under writeback after write_and_wait_range"
        );
    }
}

/// Counter differences over one measurement.
#[derive(Clone, Copy, Debug, Default)]
struct Delta {
    ioends: u64,
    dev_write_requests: u64,
    dev_write_bytes: u64,
    dev_read_requests: u64,
    blocks_merged: u64,
    writeback_errors: u64,
}

fn delta(a: &StatsSnapshot, b: &StatsSnapshot) -> Delta {
    Delta {
        ioends: b.ioends - a.ioends,
        dev_write_requests: b.dev_write_requests - a.dev_write_requests,
        dev_write_bytes: b.dev_write_bytes - a.dev_write_bytes,
        dev_read_requests: b.dev_read_requests - a.dev_read_requests,
        blocks_merged: b.blocks_merged - a.blocks_merged,
        writeback_errors: b.writeback_errors - a.writeback_errors,
    }
}

// ---------------------------------------------------------------------------------------------
// Part 1: sequential writeback against O_DIRECT

/// The sides of the sequential comparison.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    /// The engine: writeback of the whole dirty cache, then a device flush.
    Engine,
    /// O_DIRECT `pwrite`s from one reused 1 MiB aligned buffer on 4 KiB pages (what an aligned
    /// heap or `mmap` allocation of that size gets), then `fdatasync`: the baseline of the
    /// target.
    Direct,
    /// The same from one reused 1 MiB in a 2 MiB-aligned buffer advised to use a huge page,
    /// as the engine's 2 MiB folios are.
    DirectHuge,
    /// O_DIRECT `pwrite`s walking a buffer as large as the file, on huge pages: the same
    /// memory footprint and backing as the engine's cache, each request from fresh memory.
    DirectStream,
}

const SIDES: [Side; 4] = [
    Side::Engine,
    Side::Direct,
    Side::DirectHuge,
    Side::DirectStream,
];

const BASELINES: [Side; 3] = [Side::Direct, Side::DirectHuge, Side::DirectStream];

impl Side {
    fn index(self) -> usize {
        self as usize
    }

    fn label(self) -> &'static str {
        match self {
            Side::Engine => "engine",
            Side::Direct => "O_DIRECT, reused buffer, 4 KiB pages",
            Side::DirectHuge => "O_DIRECT, reused buffer, huge page",
            Side::DirectStream => "O_DIRECT, file-sized buffer, huge pages",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Side::Engine => "E",
            Side::Direct => "D",
            Side::DirectHuge => "H",
            Side::DirectStream => "S",
        }
    }
}

/// One side's measurement.
#[derive(Clone, Copy, Default)]
struct Timing {
    write: Duration,
    flush: Duration,
    /// On-CPU time of the measuring thread over both (all the engine's work runs on it).
    cpu: Option<Duration>,
    /// Write requests the block device holding `BENCH_DIR` completed meanwhile (from its
    /// `/sys` statistics: the whole device, so other processes' writes count too).
    blk_writes: Option<u64>,
}

struct Round {
    order: [Side; 4],
    /// Indexed by [`Side::index`].
    times: [Timing; 4],
    counters: Delta,
}

impl Round {
    fn rate(&self, side: Side, size: u64) -> f64 {
        let t = self.times[side.index()];
        size as f64 / (t.write + t.flush).as_secs_f64()
    }
}

/// On-CPU time of the calling thread so far, from the scheduler's statistics.
fn thread_cpu() -> Option<Duration> {
    let s = fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// The `/sys` statistics file of the block device holding `dir`.
static BLOCK_STAT: OnceLock<Option<PathBuf>> = OnceLock::new();

fn block_stat_path(dir: &Path) -> Option<PathBuf> {
    let dev = fs::metadata(dir).ok()?.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let path = PathBuf::from(format!("/sys/dev/block/{major}:{minor}/stat"));
    path.exists().then_some(path)
}

/// Write requests completed by the block device holding `BENCH_DIR`.
fn block_writes() -> Option<u64> {
    let path = BLOCK_STAT.get()?.as_ref()?;
    let stat = fs::read_to_string(path).ok()?;
    stat.split_whitespace().nth(4)?.parse().ok()
}

/// Times `f`, which returns its write and flush times, with the thread's CPU time and the
/// device's write requests around it.
fn timed(f: impl FnOnce() -> (Duration, Duration)) -> Timing {
    let (cpu, blk) = (thread_cpu(), block_writes());
    let (write, flush) = f();
    Timing {
        write,
        flush,
        cpu: thread_cpu().zip(cpu).map(|(b, a)| b.saturating_sub(a)),
        blk_writes: block_writes().zip(blk).map(|(b, a)| b.saturating_sub(a)),
    }
}

fn show<T: std::fmt::Debug>(v: Option<T>) -> String {
    v.map_or("?".into(), |v| format!("{v:.1?}"))
}

/// Sequential 1 MiB O_DIRECT writes over the whole file, the data for offset `pos` from
/// `src(pos)`, then `fdatasync`.
fn direct_pass<'a>(file: &File, size: u64, src: impl Fn(u64) -> &'a [u8]) -> (Duration, Duration) {
    let t = Instant::now();
    let mut pos = 0;
    while pos < size {
        file.write_all_at(src(pos), pos).expect("O_DIRECT pwrite");
        pos += MAX_REQUEST;
    }
    let write = t.elapsed();
    let t = Instant::now();
    file.sync_data().expect("fdatasync the O_DIRECT file");
    (write, t.elapsed())
}

/// Kibibytes of anonymous huge pages in the process, or in the mapping holding `addr`.
fn anon_huge_kb(addr: Option<usize>) -> Option<u64> {
    let smaps = fs::read_to_string("/proc/self/smaps").ok()?;
    let mut inside = addr.is_none();
    let mut total = 0;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((lo, hi)) = first.split_once('-') {
            if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                inside = addr.is_none_or(|a| lo <= a && a < hi);
                continue;
            }
        }
        if inside && first == "AnonHugePages:" {
            total += fields.next()?.parse::<u64>().ok()?;
        }
    }
    Some(total)
}

/// What the sequential part found.
struct Sequential {
    rounds: Vec<Round>,
    end: StatsSnapshot,
    /// Anonymous huge pages under the engine's folios (the whole process with the cache full
    /// before any baseline buffer is touched), in KiB.
    huge_kb_engine: Option<u64>,
    /// Anonymous huge pages under the reused and the file-sized huge-page buffers, in KiB.
    huge_kb_buffers: (Option<u64>, Option<u64>),
}

/// Runs the rounds, each side once per round, the order rotating by round.
fn sequential(cfg: &Config, engine_path: &Path, direct_path: &Path) -> Sequential {
    let dev: Arc<dyn BlockDevice> = Arc::new(
        FileDevice::open(engine_path, device_options())
            .unwrap_or_else(|e| die(&format!("open the engine's device file: {e}"))),
    );
    let engine = Engine::new(dev, cfg.size);
    let direct = open_direct(direct_path, false).expect("open the O_DIRECT file");
    let verify = open_direct(engine_path, false).expect("open the engine file for checks");
    let mut chunk = vec![0u8; CHUNK as usize];

    // Dirty the engine's cache first, so its folios are the only huge pages counted.
    let t = Instant::now();
    engine.write_all(1, &mut chunk);
    let huge_kb_engine = anon_huge_kb(None);
    eprintln!(
        "setup: engine cache filled in {:.1?} (first touch of its memory): {} dirty folios",
        t.elapsed(),
        engine.mapping.dirty_folios(0, u64::MAX).len()
    );
    let mut dirtied_gen = 1;

    let mut small = IoBuf::zeroed(MAX_REQUEST as usize);
    let mut huge = IoBuf::zeroed(2 * MAX_REQUEST as usize);
    let mut stream = IoBuf::zeroed(cfg.size as usize);

    let mut rounds = Vec::new();
    for round in 0..cfg.rounds {
        let gen = 1 + round as u64;
        let mut order = [
            Side::Direct,
            Side::DirectHuge,
            Side::DirectStream,
            Side::Engine,
        ];
        order.rotate_left(round % 4);
        let mut times = [Timing::default(); 4];
        let mut counters = Delta::default();
        for side in order {
            let t = match side {
                Side::Engine => {
                    // Untimed: dirty every block with this round's contents.
                    if dirtied_gen != gen {
                        let t = Instant::now();
                        engine.write_all(gen, &mut chunk);
                        dirtied_gen = gen;
                        eprintln!(
                            "round {round}: engine cache dirtied in {:.1?}: {} dirty folios",
                            t.elapsed(),
                            engine.mapping.dirty_folios(0, u64::MAX).len()
                        );
                    }
                    let before = engine.stats();
                    let t = timed(|| engine.writeback_and_flush());
                    counters = delta(&before, &engine.stats());
                    engine.assert_clean();
                    assert_eq!(
                        counters.dev_write_bytes, cfg.size,
                        "engine wrote too little"
                    );
                    assert_eq!(counters.writeback_errors, 0, "engine writeback errors");
                    check_blocks(
                        &verify,
                        "engine file",
                        cfg.size,
                        SAMPLES,
                        gen,
                        |pos, want| pattern_into(want, pos, gen),
                    );
                    t
                }
                Side::Direct | Side::DirectHuge => {
                    let buf: &mut [u8] = if side == Side::Direct {
                        &mut small
                    } else {
                        &mut huge[..MAX_REQUEST as usize]
                    };
                    pattern_into(buf, 0, 0x100 + gen);
                    let buf = &*buf;
                    let t = timed(|| direct_pass(&direct, cfg.size, |_| buf));
                    check_blocks(
                        &direct,
                        "O_DIRECT file",
                        cfg.size,
                        SAMPLES,
                        gen,
                        |pos, want| {
                            let off = (pos % MAX_REQUEST) as usize;
                            want.copy_from_slice(&buf[off..off + BLOCK as usize]);
                        },
                    );
                    t
                }
                Side::DirectStream => {
                    pattern_into(&mut stream, 0, 0x200 + gen);
                    let buf = &stream;
                    let t = timed(|| {
                        direct_pass(&direct, cfg.size, |pos| {
                            &buf[pos as usize..(pos + MAX_REQUEST) as usize]
                        })
                    });
                    check_blocks(
                        &direct,
                        "O_DIRECT file",
                        cfg.size,
                        SAMPLES,
                        gen,
                        |pos, want| {
                            let pos = pos as usize;
                            want.copy_from_slice(&buf[pos..pos + BLOCK as usize]);
                        },
                    );
                    t
                }
            };
            eprintln!(
                "round {round}: {:<40} {:>6.3} GiB/s  (write {:.1?} + flush {:.1?}, CPU {}, \
                 {} block-layer writes){}",
                side.label(),
                cfg.size as f64 / GIB / (t.write + t.flush).as_secs_f64(),
                t.write,
                t.flush,
                show(t.cpu),
                show(t.blk_writes),
                if side == Side::Engine {
                    format!(
                        "; {} ioends, {} device writes",
                        counters.ioends, counters.dev_write_requests
                    )
                } else {
                    String::new()
                }
            );
            times[side.index()] = t;
        }
        rounds.push(Round {
            order,
            times,
            counters,
        });
    }
    Sequential {
        rounds,
        end: engine.stats(),
        huge_kb_engine,
        huge_kb_buffers: (
            anon_huge_kb(Some(huge.as_ptr() as usize)),
            anon_huge_kb(Some(stream.as_ptr() as usize)),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Part 2: merge optimality on random dirtying

struct Merge {
    dirty_blocks: u64,
    runs: u64,
    expected: u64,
    issued: u64,
    ascending: bool,
    exact: bool,
    flushes: usize,
    max_segments: usize,
    mean_segments: f64,
    engine: Timing,
    replay: Timing,
    read_in: Delta,
    counters: Delta,
}

fn merge(cfg: &Config, engine_path: &Path, direct_path: &Path, file_gen: u64) -> Merge {
    let log = Arc::new(LogDevice::new(
        FileDevice::open(engine_path, device_options())
            .unwrap_or_else(|e| die(&format!("open the engine's device file: {e}"))),
    ));
    let engine = Engine::new(Arc::clone(&log) as Arc<dyn BlockDevice>, cfg.size);

    // Read the whole file in (untimed): every folio clean and uptodate; check every byte.
    let t = Instant::now();
    let start = engine.stats();
    let mut chunk = vec![0u8; CHUNK as usize];
    let mut want = vec![0u8; CHUNK as usize];
    let mut pos = 0;
    while pos < cfg.size {
        let n = (cfg.size - pos).min(CHUNK) as usize;
        let got =
            buffered_read(&engine.mapping, &*engine.fs, pos, &mut chunk[..n]).expect("engine read");
        assert_eq!(got, n, "short engine read at {pos}");
        pattern_into(&mut want[..n], pos, file_gen);
        assert!(chunk[..n] == want[..n], "engine file at {pos}+{n} is wrong");
        pos += n as u64;
    }
    let read_in = delta(&start, &engine.stats());
    let reads = log.take();
    assert!(reads.iter().all(|r| r.op == Op::Read));
    eprintln!(
        "merge: file read into a new cache in {:.1?} ({} device reads, {} folios), every byte \
         checked",
        t.elapsed(),
        reads.len(),
        engine.mapping.nr_folios()
    );

    // Dirty distinct random blocks, in random order, 4 KiB writes.
    let nblocks = cfg.size / BLOCK;
    let mut all: Vec<u64> = (0..nblocks).collect();
    let mut rng = SmallRng::seed_from_u64(cfg.seed);
    let (chosen, _) = all.partial_shuffle(&mut rng, cfg.rand_blocks as usize);
    let mut blocks = chosen.to_vec();
    let t = Instant::now();
    let mut data = vec![0u8; BLOCK as usize];
    for &b in &blocks {
        let pos = b * BLOCK;
        pattern_into(&mut data, pos, MERGE_GEN);
        let n = buffered_write(
            &engine.mapping,
            &*engine.fs,
            pos,
            BLOCK,
            &mut SliceSource::new(&data),
        )
        .expect("engine buffered_write");
        assert_eq!(n, BLOCK, "short engine write at {pos}");
    }
    assert!(
        log.take().is_empty(),
        "dirtying an uptodate cache touched the device"
    );
    eprintln!(
        "merge: {} random blocks dirtied in {:.1?}: {} dirty folios",
        blocks.len(),
        t.elapsed(),
        engine.mapping.dirty_folios(0, u64::MAX).len()
    );

    // The fewest requests: each run of adjacent dirty blocks, cut at the maximum request.
    blocks.sort_unstable();
    let max = engine.mapping.dev().max_request_bytes();
    let mut pieces: Vec<(u64, u64)> = Vec::new();
    let mut runs = 0;
    let mut i = 0;
    while i < blocks.len() {
        let mut j = i + 1;
        while j < blocks.len() && blocks[j] == blocks[j - 1] + 1 {
            j += 1;
        }
        runs += 1;
        let (mut at, end) = (blocks[i] * BLOCK, (blocks[j - 1] + 1) * BLOCK);
        while at < end {
            let len = (end - at).min(max);
            pieces.push((at, len));
            at += len;
        }
        i = j;
    }

    // Timed: writeback and flush.
    let before = engine.stats();
    let timing = timed(|| engine.writeback_and_flush());
    let counters = delta(&before, &engine.stats());
    engine.assert_clean();
    let logged = log.take();
    let writes: Vec<_> = logged.iter().filter(|r| r.op == Op::Write).collect();
    let flushes = logged.iter().filter(|r| r.op == Op::Flush).count();
    let ascending = writes
        .windows(2)
        .all(|w| w[1].addr.0 >= w[0].addr.0 + w[0].len);
    let exact = writes.len() == pieces.len()
        && writes
            .iter()
            .zip(&pieces)
            .all(|(r, &(at, len))| r.addr == DevAddr(at) && r.len == len);
    let max_segments = writes.iter().map(|r| r.segments).max().unwrap_or(0);
    let mean_segments =
        writes.iter().map(|r| r.segments).sum::<usize>() as f64 / writes.len().max(1) as f64;
    eprintln!(
        "merge: writeback {:.1?} + flush {:.1?}: {} write requests for {} expected",
        timing.write,
        timing.flush,
        writes.len(),
        pieces.len()
    );

    // Every block of the file: dirtied blocks hold the new data, the rest the old.
    let mut dirty = vec![false; nblocks as usize];
    for &b in &blocks {
        dirty[b as usize] = true;
    }
    let verify = open_direct(engine_path, false).expect("open the engine file for checks");
    let mut got = IoBuf::zeroed(CHUNK as usize);
    let mut pos = 0;
    while pos < cfg.size {
        let n = (cfg.size - pos).min(CHUNK) as usize;
        verify
            .read_exact_at(&mut got[..n], pos)
            .expect("O_DIRECT read of the engine file");
        for (k, block) in got[..n].chunks_exact(BLOCK as usize).enumerate() {
            let at = pos + k as u64 * BLOCK;
            let gen = if dirty[(at / BLOCK) as usize] {
                MERGE_GEN
            } else {
                file_gen
            };
            pattern_into(&mut data, at, gen);
            assert!(*block == *data, "engine file: block at {at} is wrong");
        }
        pos += n as u64;
    }
    eprintln!("merge: every block of the file checked after writeback");

    // For information: the same minimal requests as O_DIRECT pwrites, then fdatasync, from a
    // written (not zero-page) huge-page buffer like the engine's folios.
    let direct = open_direct(direct_path, false).expect("open the O_DIRECT file");
    let mut buf = IoBuf::zeroed(2 * MAX_REQUEST as usize);
    pattern_into(&mut buf, 0, MERGE_GEN);
    let replay = timed(|| {
        let t = Instant::now();
        for &(at, len) in &pieces {
            direct
                .write_all_at(&buf[..len as usize], at)
                .expect("O_DIRECT pwrite");
        }
        let write = t.elapsed();
        let t = Instant::now();
        direct.sync_data().expect("fdatasync the O_DIRECT file");
        (write, t.elapsed())
    });

    Merge {
        dirty_blocks: blocks.len() as u64,
        runs,
        expected: pieces.len() as u64,
        issued: writes.len() as u64,
        ascending,
        exact,
        flushes,
        max_segments,
        mean_segments,
        engine: timing,
        replay,
        read_in,
        counters,
    }
}

// ---------------------------------------------------------------------------------------------
// Report

fn best(v: impl Iterator<Item = f64>) -> f64 {
    v.fold(0.0, f64::max)
}

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64()
}

fn report_sequential(cfg: &Config, s: &Sequential) {
    let size = cfg.size;
    let rounds = &s.rounds;
    let best_of = |side: Side| best(rounds.iter().map(|r| r.rate(side, size)));
    let e = best_of(Side::Engine);
    println!();
    println!(
        "Sequential writeback vs O_DIRECT, {} MiB, 1 MiB requests, best of {} round(s) per side \
         (each: all writes, then flush / fdatasync)",
        size / MIB,
        rounds.len()
    );
    println!();
    println!("| engine side | baseline side | engine | baseline | ratio | target | met? |");
    println!("|---|---|---:|---:|---:|---:|:---:|");
    for side in BASELINES {
        let d = best_of(side);
        let ratio = e / d;
        println!(
            "| {} MiB writeback + flush | {}{} | {:.2} GiB/s | {:.2} GiB/s | {ratio:.2}x | \
             >= {TARGET:.1}x | {} |",
            size / MIB,
            side.label(),
            if side == Side::Direct {
                " (target)"
            } else {
                ""
            },
            e / GIB,
            d / GIB,
            if ratio >= TARGET { "yes" } else { "NO" }
        );
    }
    println!();
    println!(
        "Per round (GiB/s; order E = engine, D / H / S = the baselines above in order; ratios \
         are engine / baseline in the same round):"
    );
    println!();
    println!(
        "| round | order | engine | D | H | S | engine / D | engine / H | engine / S | engine \
         ioends | engine device writes |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, r) in rounds.iter().enumerate() {
        let order: Vec<&str> = r.order.iter().map(|s| s.short()).collect();
        let e = r.rate(Side::Engine, size);
        println!(
            "| {i} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2}x | {:.2}x | {:.2}x | {} | {} |",
            order.join(","),
            e / GIB,
            r.rate(Side::Direct, size) / GIB,
            r.rate(Side::DirectHuge, size) / GIB,
            r.rate(Side::DirectStream, size) / GIB,
            e / r.rate(Side::Direct, size),
            e / r.rate(Side::DirectHuge, size),
            e / r.rate(Side::DirectStream, size),
            r.counters.ioends,
            r.counters.dev_write_requests,
        );
    }
    println!();
    println!(
        "Write + flush time, the measuring thread's CPU time, and the write requests the block \
         device completed (whole device), per round:"
    );
    println!();
    for (i, r) in rounds.iter().enumerate() {
        let parts: Vec<String> = SIDES
            .iter()
            .map(|&side| {
                let t = r.times[side.index()];
                format!(
                    "{} {:.1?} + {:.1?} (CPU {}, {} device writes)",
                    side.short(),
                    t.write,
                    t.flush,
                    show(t.cpu),
                    show(t.blk_writes)
                )
            })
            .collect();
        println!("- round {i}: {}", parts.join("; "));
    }
    let kb = |v: Option<u64>| v.map_or("?".into(), |kb| format!("{} MiB", kb / 1024));
    println!();
    println!(
        "Expected per round: {} ioends and device writes of 1 MiB ({} MiB / 1 MiB maximum \
         request); `blocks_merged` per round: {}. Anonymous huge pages: {} under the engine's \
         folios, {} under H's buffer, {} under S's.",
        size / MAX_REQUEST,
        size / MIB,
        rounds.last().map_or(0, |r| r.counters.blocks_merged),
        kb(s.huge_kb_engine),
        kb(s.huge_kb_buffers.0),
        kb(s.huge_kb_buffers.1),
    );
    println!();
    println!(
        "Engine cache stats at the end of the sequential part: {:?}",
        s.end
    );
}

fn report_merge(cfg: &Config, m: &Merge) {
    let dirty_bytes = m.dirty_blocks * BLOCK;
    let ratio = m.issued as f64 / m.expected as f64;
    println!();
    println!(
        "Merge optimality: {} random 4 KiB blocks (seed {:#x}) dirtied in a clean, uptodate \
         {} MiB file",
        m.dirty_blocks,
        cfg.seed,
        cfg.size / MIB
    );
    println!();
    println!(
        "| dirty blocks | dirty runs | expected min requests | requests issued | ratio | \
         optimal? | strictly ascending | same requests as expected |"
    );
    println!("|---:|---:|---:|---:|---:|:---:|:---:|:---:|");
    println!(
        "| {} | {} | {} | {} | {ratio:.4} | {} | {} | {} |",
        m.dirty_blocks,
        m.runs,
        m.expected,
        m.issued,
        if m.issued == m.expected { "yes" } else { "NO" },
        if m.ascending { "yes" } else { "NO" },
        if m.exact { "yes" } else { "NO" },
    );
    println!();
    println!("For information (not a target):");
    println!();
    println!("| what | write + flush | CPU | block-layer writes | dirty data | requests/s |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (what, t, requests) in [
        ("engine writeback + flush", &m.engine, m.issued),
        (
            "O_DIRECT replay of the expected requests + fdatasync",
            &m.replay,
            m.expected,
        ),
    ] {
        let total = t.write + t.flush;
        println!(
            "| {what} | {:.1?} + {:.1?} | {} | {} | {:.1} MiB/s | {:.0} |",
            t.write,
            t.flush,
            show(t.cpu),
            show(t.blk_writes),
            mib_per_s(dirty_bytes, total),
            requests as f64 / total.as_secs_f64()
        );
    }
    println!();
    println!(
        "Write requests: {} segments at most, {:.2} on average; flushes: {}. Engine counters \
         over the writeback: {:?}. Reading the file in: {} device reads.",
        m.max_segments, m.mean_segments, m.flushes, m.counters, m.read_in.dev_read_requests
    );
}

fn main() {
    let mut cfg = Config::from_env();
    fs::create_dir_all(&cfg.dir)
        .unwrap_or_else(|e| panic!("create BENCH_DIR {}: {e}", cfg.dir.display()));
    cfg.dir = cfg.dir.canonicalize().expect("canonical BENCH_DIR");
    let fs_type = fs_type(&cfg.dir);
    BLOCK_STAT.get_or_init(|| block_stat_path(&cfg.dir));
    eprintln!(
        "writeback: file {} MiB, {} round(s), {} random blocks, dir {} ({fs_type})",
        cfg.size / MIB,
        cfg.rounds,
        cfg.rand_blocks,
        cfg.dir.display()
    );
    if matches!(fs_type.as_str(), "tmpfs" | "ramfs") {
        eprintln!(
            "warning: {fs_type} accepts O_DIRECT but keeps data in memory: these figures do \
             not measure a disk"
        );
    }

    let engine_path = cfg.dir.join("writeback-engine-dev.img");
    let direct_path = cfg.dir.join("writeback-odirect.img");
    let t = Instant::now();
    create_data_file(&cfg, &fs_type, &engine_path);
    create_data_file(&cfg, &fs_type, &direct_path);
    eprintln!(
        "setup: wrote 2 x {} MiB with O_DIRECT and synced in {:.1?}",
        cfg.size / MIB,
        t.elapsed()
    );

    let mut file_gen = 0;
    let seq = cfg.runs(Part::Seq).then(|| {
        let out = sequential(&cfg, &engine_path, &direct_path);
        file_gen = cfg.rounds as u64;
        out
    });
    let merged = cfg
        .runs(Part::Merge)
        .then(|| merge(&cfg, &engine_path, &direct_path, file_gen));

    if let Some(s) = &seq {
        report_sequential(&cfg, s);
    }
    if let Some(m) = &merged {
        report_merge(&cfg, m);
    }

    println!();
    let env: Vec<String> = [
        "BENCH_DIR",
        "BENCH_ONLY",
        "BENCH_WB_MB",
        "BENCH_ROUNDS",
        "BENCH_RAND_BLOCKS",
        "BENCH_SEED",
    ]
    .iter()
    .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v}")))
    .collect();
    println!(
        "Command: {}{}cargo bench -p iomap --bench writeback",
        env.join(" "),
        if env.is_empty() { "" } else { " " }
    );
    println!(
        "Binary:  {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );

    if !cfg.keep {
        for p in [&engine_path, &direct_path] {
            if let Err(e) = fs::remove_file(p) {
                eprintln!("could not remove {}: {e}", p.display());
            }
        }
    }
    let missed = seq.as_ref().is_some_and(|s| {
        let e = best(s.rounds.iter().map(|r| r.rate(Side::Engine, cfg.size)));
        BASELINES
            .iter()
            .any(|&d| e / best(s.rounds.iter().map(|r| r.rate(d, cfg.size))) < TARGET)
    }) || merged
        .as_ref()
        .is_some_and(|m| m.issued != m.expected || !m.ascending);
    if missed {
        eprintln!("note: a target was missed (see the tables above)");
    }
}
