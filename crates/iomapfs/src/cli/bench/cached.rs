//! Cached reads and overwrites: the engine against the kernel's page cache.
//!
//! Two files of the same size and contents in the scratch directory: the kernel's, read once
//! so that every page is in its page cache and reached with `pread`/`pwrite`; and the engine's
//! device file, read once through `buffered_read` into a cache with the default configuration
//! (4 KiB blocks, folios up to 2 MiB). Each engine call is wrapped as a filesystem wraps it: an
//! inode I/O lock taken shared for reads and exclusive for writes (XFS's iolock, Linux's
//! `i_rwsem`); the kernel's `pwrite` takes its own. With two threads both sides share one file,
//! and each thread has its own buffer and random seed, the same on both sides.
//!
//! After the kernel's overwrites its file is `fdatasync`ed outside the timed window, so that its
//! writeback does not run in the next measurement; the engine's dirty folios are never written
//! back here. Reads are checked against the pattern before timing, and sampled blocks after it
//! must hold either their original bytes or a writer's block.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Instant;

use iomap::iomap_dev::{BlockDevice, DevAddr, DeviceOptions, FileDevice};
use iomap::{
    buffered_read, buffered_write, CacheConfig, LinearMap, Mapping, PageCache, SliceSource,
};
use parking_lot::RwLock;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::data::{create_buffered, pattern_into, BLOCK, CHUNK, MIB};
use super::row::{Row, Target, Unit};
use super::{both, fail, Case, Config, Context, Progress, Result};

/// What a workload does to a file: positional reads and writes of whole buffers.
trait Side: Sync {
    fn name(&self) -> &'static str;
    fn read(&self, pos: u64, buf: &mut [u8]) -> Result<()>;
    fn write(&self, pos: u64, buf: &[u8]) -> Result<()>;
    /// Called after a measurement that wrote, outside the timed window.
    fn after_writes(&self) -> Result<()> {
        Ok(())
    }
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
    fn read(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        self.file
            .read_exact_at(buf, pos)
            .context(|| format!("kernel pread at {pos}"))
    }

    #[inline]
    fn write(&self, pos: u64, buf: &[u8]) -> Result<()> {
        self.file
            .write_all_at(buf, pos)
            .context(|| format!("kernel pwrite at {pos}"))
    }

    fn after_writes(&self) -> Result<()> {
        self.file
            .sync_data()
            .context(|| "fdatasync the kernel's file")
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
    fn read(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        let _shared = self.iolock.read();
        let n = buffered_read(&self.mapping, &self.fs, pos, buf)
            .context(|| format!("engine read at {pos}"))?;
        if n != buf.len() {
            return Err(fail(format!("short engine read at {pos}")));
        }
        Ok(())
    }

    #[inline]
    fn write(&self, pos: u64, buf: &[u8]) -> Result<()> {
        let _exclusive = self.iolock.write();
        let n = buffered_write(
            &self.mapping,
            &self.fs,
            pos,
            buf.len() as u64,
            &mut SliceSource::new(buf),
        )
        .context(|| format!("engine write at {pos}"))?;
        if n != buf.len() as u64 {
            return Err(fail(format!("short engine write at {pos}")));
        }
        Ok(())
    }
}

/// The workloads, one per case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    SeqRead,
    RandRead,
    Overwrite,
}

impl Workload {
    fn of(case: Case) -> Option<Self> {
        match case {
            Case::SeqRead => Some(Workload::SeqRead),
            Case::RandRead => Some(Workload::RandRead),
            Case::Overwrite => Some(Workload::Overwrite),
            _ => None,
        }
    }

    fn row(self, case: Case, threads: u32) -> Row {
        let (what, unit, target) = match self {
            Workload::SeqRead => (
                "1 MiB sequential read, cached",
                Unit::BytesPerSec,
                Target::at_least(0.9),
            ),
            Workload::RandRead => (
                "4 KiB random read, cached",
                Unit::OpsPerSec,
                Target::at_least(2.0),
            ),
            Workload::Overwrite => (
                "4 KiB random overwrite, cached",
                Unit::OpsPerSec,
                Target::at_least(2.0),
            ),
        };
        let base = match self {
            Workload::Overwrite => "kernel page cache, pwrite",
            _ => "kernel page cache, pread",
        };
        Row::new(case, what, unit, base)
            .threads(threads)
            .target(target)
    }

    fn seed(self, thread: usize) -> u64 {
        let base: u64 = match self {
            Workload::SeqRead => 0x5e9,
            Workload::RandRead => 0x4a4d,
            Workload::Overwrite => 0x0e17,
        };
        base * 1000 + thread as u64
    }
}

/// The block a writer thread stores: a byte that names the thread.
fn write_block(thread: usize) -> Vec<u8> {
    vec![0xa0 | thread as u8; BLOCK as usize]
}

/// One thread's buffer, random numbers and sequential cursor.
struct Worker {
    w: Workload,
    buf: Vec<u8>,
    rng: SmallRng,
    next: u64,
    size: u64,
}

impl Worker {
    fn new(w: Workload, thread: usize, threads: usize, size: u64) -> Self {
        let buf = match w {
            Workload::SeqRead => vec![0u8; CHUNK as usize],
            Workload::RandRead => vec![0u8; BLOCK as usize],
            Workload::Overwrite => write_block(thread),
        };
        // Sequential readers start spread over the file, each on a chunk boundary.
        let chunks = size / CHUNK;
        Self {
            w,
            buf,
            rng: SmallRng::seed_from_u64(w.seed(thread)),
            next: chunks * thread as u64 / threads as u64 * CHUNK,
            size,
        }
    }

    /// One operation; the units it counts for (bytes for sequential reads, else 1).
    #[inline]
    fn step(&mut self, side: &dyn Side) -> Result<u64> {
        match self.w {
            Workload::SeqRead => {
                if self.next + CHUNK > self.size {
                    self.next = 0;
                }
                side.read(self.next, &mut self.buf)?;
                self.next += CHUNK;
                Ok(CHUNK)
            }
            Workload::RandRead => {
                let pos = self.rng.gen_range(0..self.size / BLOCK) * BLOCK;
                side.read(pos, &mut self.buf)?;
                Ok(1)
            }
            Workload::Overwrite => {
                let pos = self.rng.gen_range(0..self.size / BLOCK) * BLOCK;
                side.write(pos, &self.buf)?;
                Ok(1)
            }
        }
    }
}

const WARM: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// Runs `w` on `side` with `threads` threads, a warm-up and then the timed window; units a
/// second over the window, all threads together.
fn measure(side: &dyn Side, w: Workload, threads: usize, cfg: &Config) -> Result<f64> {
    let phase = AtomicU8::new(WARM);
    let barrier = Barrier::new(threads + 1);
    let size = cfg.sizes.cached_file;
    let rate = thread::scope(|s| -> Result<f64> {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (phase, barrier) = (&phase, &barrier);
                s.spawn(move || -> Result<u64> {
                    let mut worker = Worker::new(w, t, threads, size);
                    barrier.wait();
                    let mut units = 0u64;
                    loop {
                        let counting = match phase.load(Ordering::Relaxed) {
                            WARM => false,
                            MEASURE => true,
                            _ => return Ok(units),
                        };
                        match worker.step(side) {
                            Ok(n) if counting => units += n,
                            Ok(_) => {}
                            Err(e) => {
                                phase.store(STOP, Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                    }
                })
            })
            .collect();
        barrier.wait();
        thread::sleep(cfg.sizes.warmup);
        let start = Instant::now();
        phase.store(MEASURE, Ordering::Relaxed);
        thread::sleep(cfg.sizes.window);
        phase.store(STOP, Ordering::Relaxed);
        let elapsed = start.elapsed();
        let mut units = 0;
        for h in workers {
            units += h
                .join()
                .map_err(|_| fail("a benchmark thread panicked"))??;
        }
        Ok(units as f64 / elapsed.as_secs_f64())
    })?;
    if w == Workload::Overwrite {
        side.after_writes()?;
    }
    Ok(rate)
}

/// Both files, removed when dropped.
struct Files(Vec<PathBuf>);

impl Drop for Files {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

/// Makes both files and warms both caches.
fn setup(cfg: &Config, p: &Progress) -> Result<(Engine, Kernel, Files)> {
    let size = cfg.sizes.cached_file;
    let kernel_path = cfg.dir.join("cached-kernel.img");
    let engine_path = cfg.dir.join("cached-engine.img");
    let files = Files(vec![kernel_path.clone(), engine_path.clone()]);
    p.stage(format!("cached: writing 2 x {} MiB", size / MIB))?;
    let kernel = Kernel {
        file: create_buffered(&kernel_path, size)?,
    };
    drop(create_buffered(&engine_path, size)?);

    let dev: Arc<dyn BlockDevice> = Arc::new(
        FileDevice::open(&engine_path, DeviceOptions::default())
            .context(|| format!("open {}", engine_path.display()))?,
    );
    let cache = PageCache::new(CacheConfig::default()).context(|| "a cache")?;
    let mapping = Mapping::new(cache, dev, BLOCK as u32).context(|| "a mapping")?;
    mapping.set_size(size);
    let engine = Engine {
        mapping,
        fs: LinearMap::new(DevAddr(0), size),
        iolock: RwLock::new(()),
    };
    p.stage("cached: warming both caches")?;
    let mut chunk = vec![0u8; 8 * CHUNK as usize];
    for side in [&kernel as &dyn Side, &engine] {
        let mut pos = 0;
        while pos < size {
            let n = (size - pos).min(chunk.len() as u64) as usize;
            side.read(pos, &mut chunk[..n])?;
            pos += n as u64;
        }
    }
    check_reads(&engine, &kernel, size)?;
    Ok((engine, kernel, files))
}

/// Random reads from both sides equal the pattern: 4 KiB aligned, and every 8th one 1 MiB
/// at an 8-byte aligned offset.
fn check_reads(engine: &Engine, kernel: &Kernel, size: u64) -> Result<()> {
    let mut rng = SmallRng::seed_from_u64(0xc0ffee);
    let mut want = vec![0u8; CHUNK as usize];
    let mut got = vec![0u8; CHUNK as usize];
    for i in 0..256 {
        let (pos, len) = if i % 8 == 7 {
            (rng.gen_range(0..(size - CHUNK) / 8) * 8, CHUNK as usize)
        } else {
            (rng.gen_range(0..size / BLOCK) * BLOCK, BLOCK as usize)
        };
        pattern_into(&mut want[..len], pos, 0);
        for side in [engine as &dyn Side, kernel] {
            side.read(pos, &mut got[..len])?;
            if got[..len] != want[..len] {
                return Err(fail(format!(
                    "the {} read wrong bytes at {pos}+{len}",
                    side.name()
                )));
            }
        }
    }
    Ok(())
}

/// After the overwrites, sampled blocks hold either their original bytes or a writer's block.
fn check_after_writes(side: &dyn Side, size: u64) -> Result<()> {
    let mut rng = SmallRng::seed_from_u64(0xdec0de);
    let mut got = vec![0u8; BLOCK as usize];
    let mut original = vec![0u8; BLOCK as usize];
    let written: Vec<Vec<u8>> = (0..2).map(write_block).collect();
    for _ in 0..1024 {
        let pos = rng.gen_range(0..size / BLOCK) * BLOCK;
        side.read(pos, &mut got)?;
        pattern_into(&mut original, pos, 0);
        if got != original && !written.contains(&got) {
            return Err(fail(format!(
                "the {} block at {pos} is corrupt after the overwrites",
                side.name()
            )));
        }
    }
    Ok(())
}

/// Runs the cached cases asked for, 1 and 2 threads each, every round.
pub fn run(cfg: &Config, cases: &[Case], p: &Progress) -> Result<Vec<Row>> {
    let (engine, kernel, _files) = setup(cfg, p)?;
    let mut rows: Vec<(Workload, usize, Row)> = cases
        .iter()
        .filter_map(|&c| Workload::of(c).map(|w| (c, w)))
        .flat_map(|(c, w)| [1u32, 2].map(|t| (w, t as usize, w.row(c, t))))
        .collect();
    for round in 0..cfg.rounds {
        for (w, threads, row) in &mut rows {
            p.stage_round(&row.label(), round, cfg.rounds)?;
            let (e, k) = both(
                round,
                || measure(&engine, *w, *threads, cfg),
                || measure(&kernel, *w, *threads, cfg),
            )?;
            row.push(e, k);
            p.round(round, cfg.rounds, row, ["engine", "kernel"]);
            p.done(2)?;
        }
    }
    if rows.iter().any(|(w, _, _)| *w == Workload::Overwrite) {
        check_after_writes(&engine, cfg.sizes.cached_file)?;
        check_after_writes(&kernel, cfg.sizes.cached_file)?;
    }
    Ok(rows.into_iter().map(|(_, _, row)| row).collect())
}
