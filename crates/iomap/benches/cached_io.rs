//! Cached reads and overwrites: the iomap engine against the kernel's page cache.
//!
//! One process measures, for 1 and 2 threads sharing one file:
//!
//! 1. 1 MiB sequential reads (bytes/s),
//! 2. 4 KiB random reads at 4 KiB-aligned offsets (ops/s),
//! 3. 4 KiB overwrites of cached data at random aligned offsets (ops/s),
//!
//! once through the engine (`buffered_read` / `buffered_write` on a fully cached [`Mapping`]
//! over a [`FileDevice`]) and once through `pread`/`pwrite` on a regular file of the same size
//! and contents in the same directory, whose pages the kernel holds in its page cache. Every
//! figure that matters is a ratio of the two, measured in the same run.
//!
//! The engine calls are wrapped the way a filesystem wraps them: an inode I/O lock
//! (`parking_lot::RwLock<()>`) taken shared for reads and exclusive for writes, as XFS takes its
//! iolock and Linux `i_rwsem` around buffered writes. The kernel's `pwrite` takes its own inode
//! lock.
//!
//! Environment: `BENCH_DIR` (default `<workspace>/target/bench-data`), `BENCH_FILE_MB` (default
//! 512), `BENCH_SECS` seconds per measurement (default 3), `BENCH_WARMUP_MS` (default 300),
//! `BENCH_ROUNDS` (default 2; each round measures every case on both sides, the engine and
//! kernel order alternating by round, and the best round of each side is reported),
//! `BENCH_KEEP=1` keeps the data files, `BENCH_ONLY=seq,rand,write` runs only some workloads
//! (for profiling).
//!
//! Run: `cargo bench -p iomap --bench cached_io`.

// A benchmark is a program run by hand: a failed setup step should stop it with a message, and
// `expect` carries one everywhere below.
#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use iomap::iomap_dev::{BlockDevice, DevAddr, DeviceOptions, FileDevice};
use iomap::{
    buffered_read, buffered_write, CacheConfig, LinearMap, Mapping, PageCache, SliceSource,
};
use parking_lot::RwLock;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;
const BLOCK: u64 = 4 * KIB;
const SEQ_CHUNK: u64 = MIB;

// ---------------------------------------------------------------------------------------------
// Configuration

struct Config {
    dir: PathBuf,
    size: u64,
    secs: Duration,
    warmup: Duration,
    rounds: usize,
    keep: bool,
    /// Workloads to run (`BENCH_ONLY=seq,rand,write`), for profiling one case.
    only: Vec<Workload>,
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a non-negative integer")),
        Err(_) => default,
    }
}

fn env_f64(name: &str, default: f64) -> f64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

impl Config {
    fn from_env() -> Self {
        let dir = match std::env::var_os("BENCH_DIR") {
            Some(d) => PathBuf::from(d),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-data"),
        };
        let mb = env_u64("BENCH_FILE_MB", 512);
        assert!(mb >= 2, "BENCH_FILE_MB must be at least 2");
        let secs = env_f64("BENCH_SECS", 3.0);
        assert!(secs > 0.0, "BENCH_SECS must be positive");
        let rounds = env_u64("BENCH_ROUNDS", 2).max(1) as usize;
        Self {
            dir,
            size: mb * MIB,
            secs: Duration::from_secs_f64(secs),
            warmup: Duration::from_millis(env_u64("BENCH_WARMUP_MS", 300)),
            rounds,
            keep: std::env::var_os("BENCH_KEEP").is_some_and(|v| v != "0"),
            only: match std::env::var("BENCH_ONLY") {
                Ok(list) => list
                    .split(',')
                    .map(|name| {
                        Workload::from_name(name.trim())
                            .unwrap_or_else(|| panic!("BENCH_ONLY: unknown workload {name:?}"))
                    })
                    .collect(),
                Err(_) => Workload::ALL.to_vec(),
            },
        }
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

/// The original contents at file offset `pos` (8-byte aligned): never a zero word, and
/// different at every offset so a read from the wrong place shows.
fn pattern_into(buf: &mut [u8], pos: u64) {
    debug_assert!(pos % 8 == 0 && buf.len() % 8 == 0);
    for (i, word) in buf.chunks_exact_mut(8).enumerate() {
        let v = splitmix64(pos + 8 * i as u64) | 1;
        word.copy_from_slice(&v.to_le_bytes());
    }
}

/// The block a writer thread stores: a byte that identifies the thread.
fn write_block(thread: usize) -> Vec<u8> {
    vec![0xa0 | thread as u8; BLOCK as usize]
}

/// Creates `path` with `size` bytes of the pattern and makes it durable, so no writeback of the
/// setup runs during measurements.
fn create_data_file(path: &Path, size: u64) -> File {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let mut chunk = vec![0u8; (8 * MIB) as usize];
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(chunk.len() as u64) as usize;
        pattern_into(&mut chunk[..n], pos);
        file.write_all_at(&chunk[..n], pos)
            .expect("write the data file");
        pos += n as u64;
    }
    file.sync_all().expect("fsync the data file");
    file
}

// ---------------------------------------------------------------------------------------------
// The two sides

/// What a workload does to a file: positional reads and writes of whole buffers.
trait Side: Sync {
    fn name(&self) -> &'static str;
    fn read(&self, pos: u64, buf: &mut [u8]);
    fn write(&self, pos: u64, buf: &[u8]);
    /// Called after a measurement that wrote, outside the timed window.
    fn after_writes(&self) {}
}

/// The kernel: `pread`/`pwrite` on a cached regular file.
struct Kernel {
    file: File,
}

impl Side for Kernel {
    fn name(&self) -> &'static str {
        "kernel"
    }

    #[inline]
    fn read(&self, pos: u64, buf: &mut [u8]) {
        self.file.read_exact_at(buf, pos).expect("kernel pread");
    }

    #[inline]
    fn write(&self, pos: u64, buf: &[u8]) {
        self.file.write_all_at(buf, pos).expect("kernel pwrite");
    }

    /// Writes the dirty pages back now, so the kernel's writeback does not steal CPU from the
    /// next measurement (the engine's dirty folios are never written back in this benchmark).
    fn after_writes(&self) {
        self.file.sync_data().expect("fdatasync the kernel file");
    }
}

/// The engine: a cached mapping with a filesystem's inode I/O lock around each call.
struct Engine {
    mapping: Mapping,
    fs: LinearMap,
    iolock: RwLock<()>,
}

impl Side for Engine {
    fn name(&self) -> &'static str {
        "engine"
    }

    #[inline]
    fn read(&self, pos: u64, buf: &mut [u8]) {
        let _shared = self.iolock.read();
        let n = buffered_read(&self.mapping, &self.fs, pos, buf).expect("engine read");
        assert_eq!(n, buf.len(), "short engine read at {pos}");
    }

    #[inline]
    fn write(&self, pos: u64, buf: &[u8]) {
        let _exclusive = self.iolock.write();
        let n = buffered_write(
            &self.mapping,
            &self.fs,
            pos,
            buf.len() as u64,
            &mut SliceSource::new(buf),
        )
        .expect("engine write");
        assert_eq!(n, buf.len() as u64, "short engine write at {pos}");
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads and the timing loop

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Workload {
    SeqRead,
    RandRead,
    Overwrite,
}

impl Workload {
    const ALL: [Workload; 3] = [Workload::SeqRead, Workload::RandRead, Workload::Overwrite];

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "seq" => Some(Workload::SeqRead),
            "rand" => Some(Workload::RandRead),
            "write" => Some(Workload::Overwrite),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Workload::SeqRead => "1 MiB sequential read",
            Workload::RandRead => "4 KiB random read",
            Workload::Overwrite => "4 KiB random overwrite (cached)",
        }
    }

    fn target(self) -> f64 {
        match self {
            Workload::SeqRead => 0.9,
            _ => 2.0,
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Workload::SeqRead => "GiB/s",
            _ => "Mops/s",
        }
    }

    /// Converts units per second (bytes or ops) to the displayed unit.
    fn scale(self, per_sec: f64) -> f64 {
        match self {
            Workload::SeqRead => per_sec / GIB,
            _ => per_sec / 1e6,
        }
    }

    fn buf_len(self) -> usize {
        match self {
            Workload::SeqRead => SEQ_CHUNK as usize,
            _ => BLOCK as usize,
        }
    }

    fn seed(self, thread: usize) -> u64 {
        let base = match self {
            Workload::SeqRead => 0x5e9,
            Workload::RandRead => 0x4a4d,
            Workload::Overwrite => 0x0e17,
        };
        splitmix64(base * 1000 + thread as u64)
    }
}

/// One thread's private state: its buffer, its RNG and its sequential cursor.
struct Worker {
    buf: Vec<u8>,
    rng: SmallRng,
    next: u64,
}

impl Worker {
    fn new(w: Workload, thread: usize, threads: usize, size: u64) -> Self {
        let buf = match w {
            Workload::Overwrite => write_block(thread),
            _ => vec![0u8; w.buf_len()],
        };
        // Sequential readers start spread over the file, each on a chunk boundary.
        let chunks = size / SEQ_CHUNK;
        Self {
            buf,
            rng: SmallRng::seed_from_u64(w.seed(thread)),
            next: chunks * thread as u64 / threads as u64 * SEQ_CHUNK,
        }
    }

    /// One operation; returns the units it counts for (bytes for sequential reads, else 1).
    #[inline]
    fn step<S: Side + ?Sized>(&mut self, w: Workload, side: &S, size: u64) -> u64 {
        match w {
            Workload::SeqRead => {
                if self.next + SEQ_CHUNK > size {
                    self.next = 0;
                }
                side.read(self.next, &mut self.buf);
                self.next += SEQ_CHUNK;
                SEQ_CHUNK
            }
            Workload::RandRead => {
                let pos = self.rng.gen_range(0..size / BLOCK) * BLOCK;
                side.read(pos, &mut self.buf);
                1
            }
            Workload::Overwrite => {
                let pos = self.rng.gen_range(0..size / BLOCK) * BLOCK;
                side.write(pos, &self.buf);
                1
            }
        }
    }
}

const WARM: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// Runs `w` on `side` with `threads` threads: a warm-up, then a timed window. Returns units per
/// second over the window, all threads together.
fn measure<S: Side>(side: &S, w: Workload, threads: usize, cfg: &Config) -> f64 {
    let phase = AtomicU8::new(WARM);
    let barrier = Barrier::new(threads + 1);
    let size = cfg.size;
    let rate = thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (phase, barrier) = (&phase, &barrier);
                s.spawn(move || {
                    let mut worker = Worker::new(w, t, threads, size);
                    barrier.wait();
                    let mut units = 0u64;
                    loop {
                        match phase.load(Ordering::Relaxed) {
                            WARM => {
                                worker.step(w, side, size);
                            }
                            MEASURE => units += worker.step(w, side, size),
                            _ => return units,
                        }
                    }
                })
            })
            .collect();
        barrier.wait();
        thread::sleep(cfg.warmup);
        let start = Instant::now();
        phase.store(MEASURE, Ordering::Relaxed);
        thread::sleep(cfg.secs);
        phase.store(STOP, Ordering::Relaxed);
        let elapsed = start.elapsed();
        let units: u64 = workers
            .into_iter()
            .map(|h| h.join().expect("a benchmark thread panicked"))
            .sum();
        units as f64 / elapsed.as_secs_f64()
    });
    if w == Workload::Overwrite {
        side.after_writes();
    }
    rate
}

// ---------------------------------------------------------------------------------------------
// Correctness checks, before and after timing

fn check_reads_match(engine: &Engine, kernel: &Kernel, size: u64) {
    let mut rng = SmallRng::seed_from_u64(0xc0ffee);
    let mut expect = vec![0u8; SEQ_CHUNK as usize];
    let mut a = vec![0u8; SEQ_CHUNK as usize];
    let mut b = vec![0u8; SEQ_CHUNK as usize];
    for i in 0..512 {
        // Mostly aligned 4 KiB reads; every 8th one a 1 MiB read at an 8-byte aligned offset.
        let (pos, len) = if i % 8 == 7 {
            (rng.gen_range(0..(size - SEQ_CHUNK) / 8) * 8, SEQ_CHUNK)
        } else {
            (rng.gen_range(0..size / BLOCK) * BLOCK, BLOCK)
        };
        let len = len as usize;
        engine.read(pos, &mut a[..len]);
        kernel.read(pos, &mut b[..len]);
        pattern_into(&mut expect[..len], pos);
        assert!(
            a[..len] == expect[..len],
            "engine read at {pos}+{len} is wrong"
        );
        assert!(
            b[..len] == expect[..len],
            "kernel read at {pos}+{len} is wrong"
        );
    }
}

/// A write through each side reads back through that side, then the original is restored.
fn check_write_round_trip(engine: &Engine, kernel: &Kernel, size: u64) {
    let pos = size / 2 + BLOCK;
    let block = write_block(9);
    let mut original = vec![0u8; BLOCK as usize];
    pattern_into(&mut original, pos);
    let mut back = vec![0u8; BLOCK as usize];
    for side in [engine as &dyn Side, kernel as &dyn Side] {
        side.write(pos, &block);
        side.read(pos, &mut back);
        assert!(
            back == block,
            "{} write at {pos} did not read back",
            side.name()
        );
        side.write(pos, &original);
        side.read(pos, &mut back);
        assert!(back == original, "{} restore at {pos} failed", side.name());
    }
}

/// After the overwrites, every block holds either its original bytes or a writer's block.
fn check_after_writes(side: &dyn Side, size: u64) {
    let mut rng = SmallRng::seed_from_u64(0xdec0de);
    let mut got = vec![0u8; BLOCK as usize];
    let mut original = vec![0u8; BLOCK as usize];
    let written: Vec<Vec<u8>> = (0..2).map(write_block).collect();
    let mut overwritten = 0;
    for _ in 0..2048 {
        let pos = rng.gen_range(0..size / BLOCK) * BLOCK;
        side.read(pos, &mut got);
        pattern_into(&mut original, pos);
        if written.contains(&got) {
            overwritten += 1;
        } else {
            assert!(got == original, "{} block at {pos} is corrupt", side.name());
        }
    }
    eprintln!(
        "check: {} after overwrites: 2048 sampled blocks intact, {overwritten} of them overwritten",
        side.name()
    );
}

// ---------------------------------------------------------------------------------------------
// Setup and report

fn setup(cfg: &Config) -> (Engine, Kernel, PathBuf, PathBuf) {
    let kernel_path = cfg.dir.join("cached_io-kernel.img");
    let engine_path = cfg.dir.join("cached_io-engine-dev.img");

    let t = Instant::now();
    let kernel_file = create_data_file(&kernel_path, cfg.size);
    drop(create_data_file(&engine_path, cfg.size));
    eprintln!(
        "setup: wrote and synced 2 x {} MiB in {:.1?}",
        cfg.size / MIB,
        t.elapsed()
    );

    // Kernel side: read the whole file once so every page is cached.
    let kernel = Kernel { file: kernel_file };
    let t = Instant::now();
    let mut chunk = vec![0u8; (8 * MIB) as usize];
    let mut pos = 0;
    while pos < cfg.size {
        let n = (cfg.size - pos).min(chunk.len() as u64) as usize;
        kernel.read(pos, &mut chunk[..n]);
        pos += n as u64;
    }
    eprintln!("setup: kernel file read once in {:.1?}", t.elapsed());

    // Engine side: a cache with the default configuration, 4 KiB blocks, on a file device.
    let dev: Arc<dyn BlockDevice> = Arc::new(
        FileDevice::open(&engine_path, DeviceOptions::default())
            .expect("open the engine's device file"),
    );
    assert_eq!(dev.capacity_bytes(), cfg.size);
    let cache = PageCache::new(CacheConfig::default()).expect("default cache configuration");
    let mapping = Mapping::new(cache, dev, BLOCK as u32).expect("a mapping with 4 KiB blocks");
    mapping.set_size(cfg.size);
    let engine = Engine {
        mapping,
        fs: LinearMap::new(DevAddr(0), cfg.size),
        iolock: RwLock::new(()),
    };
    let t = Instant::now();
    let mut pos = 0;
    while pos < cfg.size {
        let n = (cfg.size - pos).min(chunk.len() as u64) as usize;
        engine.read(pos, &mut chunk[..n]);
        pos += n as u64;
    }
    eprintln!(
        "setup: engine cache warmed in {:.1?}: {} folios",
        t.elapsed(),
        engine.mapping.nr_folios()
    );
    (engine, kernel, kernel_path, engine_path)
}

struct Row {
    w: Workload,
    threads: usize,
    engine: Vec<f64>,
    kernel: Vec<f64>,
}

fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

fn main() {
    let mut cfg = Config::from_env();
    fs::create_dir_all(&cfg.dir)
        .unwrap_or_else(|e| panic!("create BENCH_DIR {}: {e}", cfg.dir.display()));
    cfg.dir = cfg.dir.canonicalize().expect("canonical BENCH_DIR");
    eprintln!(
        "cached_io: file {} MiB, {:?} per measurement after {:?} warm-up, {} round(s), dir {}",
        cfg.size / MIB,
        cfg.secs,
        cfg.warmup,
        cfg.rounds,
        cfg.dir.display()
    );
    let (engine, kernel, kernel_path, engine_path) = setup(&cfg);

    check_reads_match(&engine, &kernel, cfg.size);
    check_write_round_trip(&engine, &kernel, cfg.size);
    eprintln!("check: 512 engine reads equal the kernel's and the pattern; writes read back");
    let after_warmup = engine.mapping.cache().stats().snapshot();

    let mut rows: Vec<Row> = cfg
        .only
        .iter()
        .flat_map(|&w| {
            [1, 2].map(|threads| Row {
                w,
                threads,
                engine: Vec::new(),
                kernel: Vec::new(),
            })
        })
        .collect();

    for round in 0..cfg.rounds {
        for row in &mut rows {
            // Alternate which side goes first, so drift on a shared machine hits both.
            let kernel_first = round % 2 == 0;
            for i in 0..2 {
                let (name, rate) = if (i == 0) == kernel_first {
                    ("kernel", measure(&kernel, row.w, row.threads, &cfg))
                } else {
                    ("engine", measure(&engine, row.w, row.threads, &cfg))
                };
                eprintln!(
                    "round {round}: {:<32} {} thr  {name}: {:>8.3} {}",
                    row.w.label(),
                    row.threads,
                    row.w.scale(rate),
                    row.w.unit()
                );
                if name == "kernel" {
                    row.kernel.push(rate);
                } else {
                    row.engine.push(rate);
                }
            }
        }
    }

    check_after_writes(&engine, cfg.size);
    check_after_writes(&kernel, cfg.size);

    println!();
    println!(
        "Engine vs kernel page cache, {} MiB file, {:?} per measurement, best of {} round(s) per side",
        cfg.size / MIB,
        cfg.secs,
        cfg.rounds
    );
    println!();
    println!("| workload | threads | engine | kernel | ratio | target | met? |");
    println!("|---|---:|---:|---:|---:|---:|:---:|");
    for row in &rows {
        let (e, k) = (best(&row.engine), best(&row.kernel));
        let ratio = e / k;
        let unit = row.w.unit();
        println!(
            "| {} | {} | {:.2} {unit} | {:.2} {unit} | {:.2}x | >= {:.1}x | {} |",
            row.w.label(),
            row.threads,
            row.w.scale(e),
            row.w.scale(k),
            ratio,
            row.w.target(),
            if ratio >= row.w.target() { "yes" } else { "NO" }
        );
    }
    if cfg.rounds > 1 {
        println!();
        println!("Per-round ratios (engine / kernel, same round):");
        println!();
        for row in &rows {
            let ratios: Vec<String> = row
                .engine
                .iter()
                .zip(&row.kernel)
                .map(|(e, k)| format!("{:.2}x", e / k))
                .collect();
            println!(
                "- {}, {} thread(s): {}",
                row.w.label(),
                row.threads,
                ratios.join(", ")
            );
        }
    }

    let end = engine.mapping.cache().stats().snapshot();
    println!();
    println!("Engine cache stats after warm-up: {after_warmup:?}");
    println!("Engine cache stats at the end:    {end:?}");
    println!(
        "Engine folios cached: {}, dirty folios: {}",
        engine.mapping.nr_folios(),
        engine.mapping.dirty_folios(0, cfg.size).len()
    );
    println!();
    let env: Vec<String> = [
        "BENCH_DIR",
        "BENCH_ONLY",
        "BENCH_FILE_MB",
        "BENCH_SECS",
        "BENCH_WARMUP_MS",
        "BENCH_ROUNDS",
    ]
    .iter()
    .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v}")))
    .collect();
    println!(
        "Command: {}{}cargo bench -p iomap --bench cached_io",
        env.join(" "),
        if env.is_empty() { "" } else { " " }
    );
    println!(
        "Binary:  {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );

    if !cfg.keep {
        for p in [&kernel_path, &engine_path] {
            if let Err(e) = fs::remove_file(p) {
                eprintln!("could not remove {}: {e}", p.display());
            }
        }
    }
}
