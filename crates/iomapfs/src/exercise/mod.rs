//! The checker behind `iomapfs exercise`: a seeded random-operation checker over an
//! in-memory extentfs, the role fsx plays for Linux file systems.
//!
//! The whole operation list is drawn from the seed before anything runs, so a run replays
//! (the operations exactly; with device faults or several threads, not the timing of the
//! flusher and of the threads against each other) and a failing list can be shrunk by
//! re-running subsets of it on fresh file systems.
//! Each file has a `Vec<u8>` oracle; reads, the end of the run and every remount or crash
//! recovery compare the file with it, and every operation checks the sizes. The oracle
//! zero-fills whatever an operation exposes (a truncate up, a write or fallocate past EOF),
//! so stale bytes past an old EOF show up as a mismatch.
//!
//! Crashes come in two kinds. After a `syncfs` every file must read back exactly. Without
//! one, a file not changed since its last fsync must read back exactly its fsynced contents;
//! a file changed since may hold anything the recovery leaves, so its oracle restarts from
//! what is read.
//!
//! With device faults, a failed write or flush must be reported to an fsync (R19); a file that
//! reports nothing must read back exactly from the device, and one that reports an error
//! restarts its oracle from the device. With several threads, each thread owns the files
//! whose number it is modulo the thread count and runs their operations concurrently with
//! the others'; the operations on the whole file system (syncs, cache drops, remounts,
//! crashes, faults) run alone between such stretches.

mod harness;
mod lane;
mod shrink;

use std::collections::BTreeMap;

use iomap_dev::FaultRule;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

use harness::Harness;
pub use shrink::{shrink, Shrunk};

type Checked<T = ()> = Result<T, String>;

/// No operation makes a file larger than this, so that a run's memory stays bounded.
const MAX_FILE_BYTES: u64 = 8 << 20;
/// The longest write, read, copy or fallocate.
const MAX_LEN_BYTES: u64 = 256 << 10;
/// Most writes land here, so that operations overlap often.
const HOT_BYTES: u64 = 1 << 20;
/// Re-runs the shrinker may spend; each is a run from a fresh file system.
const SHRINK_ATTEMPTS: usize = 200;
/// The smallest cache that leaves room for a largest folio and the dirty thresholds.
const MIN_CACHE_BYTES: u64 = 1 << 20;
/// Largest file size read back into the oracle after a crash: a recovered size beyond any
/// size the run made is a failure, not something to allocate.
const MAX_RECOVERED_BYTES: u64 = 2 * MAX_FILE_BYTES;
/// The byte a fresh device holds everywhere before mkfs: a block the file system hands out
/// without writing or zeroing shows up as this instead of zeros.
const CANARY: u8 = 0xc5;
/// The most threads a run can use.
pub const MAX_THREADS: usize = 16;

/// One step of a run. Offsets and lengths are in bytes; `f`, `src` and `dst` index the files.
#[derive(Clone, Debug)]
#[allow(missing_docs)] // the fields: see above
pub enum Op {
    /// Writes `len` bytes drawn from `seed` at `pos`.
    Write {
        f: usize,
        pos: u64,
        len: u64,
        seed: u64,
    },
    /// Stores through a shared mapping: `page_mkwrite` and a store into each folio the range
    /// covers, inside EOF only (a store past EOF would fault).
    MappedWrite {
        f: usize,
        pos: u64,
        len: u64,
        seed: u64,
    },
    /// Reads a range and compares it with the oracle.
    Read { f: usize, pos: u64, len: u64 },
    /// Truncates up or down.
    Truncate { f: usize, size: u64 },
    /// Preallocates, growing the file unless `keep_size`.
    Fallocate {
        f: usize,
        pos: u64,
        len: u64,
        keep_size: bool,
    },
    /// Punches a hole.
    PunchHole { f: usize, pos: u64, len: u64 },
    /// Zeroes a range, growing the file unless `keep_size`.
    ZeroRange {
        f: usize,
        pos: u64,
        len: u64,
        keep_size: bool,
    },
    /// Removes whole blocks, shifting the rest down.
    CollapseRange { f: usize, pos: u64, len: u64 },
    /// Inserts whole blocks of zeros, shifting the rest up.
    InsertRange { f: usize, pos: u64, len: u64 },
    /// copy_file_range(2).
    CopyFileRange {
        src: usize,
        soff: u64,
        dst: usize,
        doff: u64,
        len: u64,
    },
    /// Shares blocks (FICLONERANGE); `to_eof` clones to the end of the source.
    CloneRange {
        src: usize,
        soff: u64,
        dst: usize,
        doff: u64,
        len: u64,
        to_eof: bool,
    },
    /// fsync(2), or fdatasync(2) if `datasync`.
    Fsync { f: usize, datasync: bool },
    /// syncfs(2).
    Syncfs,
    /// Writes everything back and drops the whole cache.
    DropCaches,
    /// Asks reclaim for `bytes` of the cache.
    Reclaim { bytes: u64 },
    /// Reads every file back whole.
    Verify,
    /// Unmounts, checks the image, and mounts again.
    Remount,
    /// Syncs, then cuts the power.
    CrashAfterSync,
    /// A power cut with no sync first; `seed` picks which in-flight device writes survive,
    /// and with `tear` which of their sectors.
    Crash { seed: u64, tear: bool },
    /// Syncs file `f` (or, with `None`, the whole file system) while the device fails a write
    /// or flush, then checks that the failure was reported (R19) and that every file whose
    /// fsync reports nothing reads back exactly, from the device.
    WriteFault { f: Option<usize>, fault: Fault },
    /// Reads a range while the device fails the `nth` read from now (`drop`: with the cache
    /// dropped first, so the read reaches the device): the read returns the right bytes, or
    /// fewer of them (short), or EIO, and once the device works again all the right bytes.
    ReadFault {
        f: usize,
        pos: u64,
        len: u64,
        nth: u32,
        drop: bool,
    },
    /// Test-only: flips the oracle so that the run must fail.
    CorruptOracle { f: usize },
}

impl Op {
    /// Whether the operation works on the whole file system, so that it runs alone; the
    /// others work on one file or two of the same owner.
    pub fn is_global(&self) -> bool {
        matches!(
            self,
            Op::Syncfs
                | Op::DropCaches
                | Op::Verify
                | Op::Remount
                | Op::CrashAfterSync
                | Op::Crash { .. }
                | Op::WriteFault { .. }
                | Op::ReadFault { .. }
        )
    }

    /// Which of `threads` threads runs an operation on files: the owner of its file.
    fn owner(&self, threads: usize) -> usize {
        let f = match *self {
            Op::Write { f, .. }
            | Op::MappedWrite { f, .. }
            | Op::Read { f, .. }
            | Op::Truncate { f, .. }
            | Op::Fallocate { f, .. }
            | Op::PunchHole { f, .. }
            | Op::ZeroRange { f, .. }
            | Op::CollapseRange { f, .. }
            | Op::InsertRange { f, .. }
            | Op::Fsync { f, .. }
            | Op::CorruptOracle { f } => f,
            Op::CopyFileRange { dst, .. } | Op::CloneRange { dst, .. } => dst,
            _ => 0,
        };
        f % threads
    }

    /// The operation's name in totals and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Write { .. } => "write",
            Op::MappedWrite { .. } => "mapped-write",
            Op::Read { .. } => "read",
            Op::Truncate { .. } => "truncate",
            Op::Fallocate { .. } => "fallocate",
            Op::PunchHole { .. } => "punch",
            Op::ZeroRange { .. } => "zero",
            Op::CollapseRange { .. } => "collapse",
            Op::InsertRange { .. } => "insert",
            Op::CopyFileRange { .. } => "copy",
            Op::CloneRange { .. } => "clone",
            Op::Fsync {
                datasync: false, ..
            } => "fsync",
            Op::Fsync { datasync: true, .. } => "fdatasync",
            Op::Syncfs => "syncfs",
            Op::DropCaches => "drop-caches",
            Op::Reclaim { .. } => "reclaim",
            Op::Verify => "verify",
            Op::Remount => "remount",
            Op::CrashAfterSync => "crash-after-sync",
            Op::Crash { tear: false, .. } => "crash",
            Op::Crash { tear: true, .. } => "crash-torn",
            Op::WriteFault { f: Some(_), .. } => "fsync-fault",
            Op::WriteFault { f: None, .. } => "syncfs-fault",
            Op::ReadFault { .. } => "read-fault",
            Op::CorruptOracle { .. } => "corrupt-oracle",
        }
    }
}

/// A device fault a `WriteFault` injects.
#[derive(Clone, Copy, Debug)]
pub struct Fault {
    /// Fail a flush instead of a write.
    pub flush: bool,
    /// Which request from now fails, counting from 1.
    pub nth: u32,
    /// How many requests in a row fail.
    pub times: u32,
    /// What reaches the device of a failing write.
    pub kind: FaultKind,
}

/// What reaches the device of a failing write.
#[derive(Clone, Copy, Debug)]
pub enum FaultKind {
    /// Nothing.
    Fail,
    /// The first `bytes`, rounded down to the logical block size.
    Short {
        /// How much is written.
        bytes: u64,
    },
    /// A random subset of its blocks.
    Torn {
        /// Picks the blocks.
        seed: u64,
    },
    /// Nothing, yet the write succeeds: a device that loses acknowledged data. Runs never
    /// draw it; it shows that the checker notices such a loss.
    Lost,
}

impl Fault {
    fn rule(&self) -> FaultRule {
        let op = if self.flush {
            iomap_dev::Op::Flush
        } else {
            iomap_dev::Op::Write
        };
        let rule = FaultRule::nth(op, self.nth, libc::EIO).times(self.times);
        match self.kind {
            FaultKind::Fail => rule,
            FaultKind::Short { bytes } => rule.short(bytes),
            FaultKind::Torn { seed } => rule.torn(seed),
            FaultKind::Lost => rule.lost(),
        }
    }
}

/// What a run works on.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file system's block size: a power of two from 512 to 65536.
    pub block_size: u32,
    /// The cache's largest folio.
    pub max_folio_bytes: u64,
    /// The cache's memory budget.
    pub cache_bytes: u64,
    /// How many files the operations work on.
    pub files: usize,
    /// Whether the run cuts the power (after a sync and without one).
    pub crash: bool,
    /// Whether the run makes device requests fail.
    pub faults: bool,
    /// Threads running operations on files at once, each on its own files.
    pub threads: usize,
}

impl Default for Config {
    /// What `iomapfs exercise` runs with by default: 4 KiB blocks, folios up to 2 MiB, a
    /// 64 MiB cache and four files, without crashes.
    fn default() -> Self {
        Config {
            block_size: 4096,
            max_folio_bytes: 2 << 20,
            cache_bytes: 64 << 20,
            files: 4,
            crash: false,
            faults: false,
            threads: 1,
        }
    }
}

impl Config {
    /// Checks that a run can work with these settings; the reason if not.
    pub fn validate(&self) -> Result<(), String> {
        let bs = u64::from(self.block_size);
        if !bs.is_power_of_two() || !(512..=65536).contains(&bs) {
            return Err(format!(
                "block size {bs} is not a power of two from 512 to 65536"
            ));
        }
        let f = self.max_folio_bytes;
        if !f.is_power_of_two() || f < bs.max(4096) || f > 64 << 20 {
            return Err(format!(
                "the largest folio ({f} bytes) must be a power of two from the block size \
                 (or 4 KiB) to 64 MiB"
            ));
        }
        if self.cache_bytes < MIN_CACHE_BYTES.max(2 * f) {
            return Err(format!(
                "a cache of {} bytes is too small: at least {MIN_CACHE_BYTES} bytes and two \
                 largest folios are needed",
                self.cache_bytes
            ));
        }
        if self.files == 0 || self.files > 64 {
            return Err(format!("{} files: from 1 to 64 are possible", self.files));
        }
        if self.threads == 0 || self.threads > MAX_THREADS.min(self.files) {
            return Err(format!(
                "{} threads for {} files: from 1 to {MAX_THREADS}, and no more than files, \
                 since each thread owns its files",
                self.threads, self.files
            ));
        }
        Ok(())
    }
}

/// Why a run failed: the operation's index (none for setup) and what differed.
#[derive(Debug)]
pub struct Failure {
    /// The failing operation's index; `None` when setting up failed.
    pub at: Option<usize>,
    /// What differed, or what failed unexpectedly.
    pub what: String,
}

/// How many of each kind of operation a list holds.
pub fn counts(ops: &[Op]) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    for op in ops {
        *counts.entry(op.kind()).or_default() += 1;
    }
    counts
}

// ---- generation ----

/// The `n` operations a seed stands for.
pub fn generate(seed: u64, n: usize, cfg: &Config) -> Vec<Op> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..n).map(|_| random_op(&mut rng, cfg)).collect()
}

/// Operations drawn from `data` instead of a seed, for fuzzers: every choice the generator
/// makes consumes input, so a fuzzer that mutates the input steers the operations. At most
/// `max` operations; fewer when the input runs out.
pub fn ops_from_bytes(data: &[u8], max: usize, cfg: &Config) -> Vec<Op> {
    let mut rng = ByteRng { data, at: 0 };
    let mut ops = Vec::new();
    while ops.len() < max && rng.at < data.len() {
        ops.push(random_op(&mut rng, cfg));
    }
    ops
}

/// Randomness read from a byte string, then zeros once it is used up.
struct ByteRng<'a> {
    data: &'a [u8],
    at: usize,
}

impl RngCore for ByteRng<'_> {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        let rest = self.data.get(self.at..).unwrap_or(&[]);
        let n = rest.len().min(dest.len());
        dest[..n].copy_from_slice(&rest[..n]);
        dest[n..].fill(0);
        self.at += dest.len();
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

fn pos(rng: &mut impl Rng) -> u64 {
    if rng.gen_bool(0.7) {
        rng.gen_range(0..HOT_BYTES)
    } else {
        rng.gen_range(0..MAX_FILE_BYTES)
    }
}

fn len(rng: &mut impl Rng) -> u64 {
    if rng.gen_bool(0.5) {
        rng.gen_range(1..=8192)
    } else {
        rng.gen_range(1..=MAX_LEN_BYTES)
    }
}

/// An in-bounds `(pos, len)`: the range ends at or before `MAX_FILE_BYTES`.
fn range(rng: &mut impl Rng) -> (u64, u64) {
    let p = pos(rng).min(MAX_FILE_BYTES - 1);
    (p, len(rng).min(MAX_FILE_BYTES - p))
}

/// A block-aligned `(pos, len)` in bounds, for the operations that need whole blocks.
fn aligned_range(rng: &mut impl Rng, bs: u64) -> (u64, u64) {
    let p = pos(rng) / bs * bs;
    let blocks = rng.gen_range(1..=(MAX_LEN_BYTES / bs).max(1));
    (p, (blocks * bs).min(MAX_FILE_BYTES - p).max(bs))
}

/// A file owned by the same thread as file `f` (any file with one thread).
fn same_owner(rng: &mut impl Rng, f: usize, cfg: &Config) -> usize {
    let t = cfg.threads.max(1);
    let owner = f % t;
    owner + t * rng.gen_range(0..(cfg.files - owner).div_ceil(t))
}

fn random_op(rng: &mut impl Rng, cfg: &Config) -> Op {
    let files = cfg.files;
    let bs = u64::from(cfg.block_size);
    let f = rng.gen_range(0..files);
    // Weights per thousand; the crash and fault operations take their share from writes when
    // enabled.
    let crash = if cfg.crash { 5 } else { 0 };
    let faults = if cfg.faults { 10 } else { 0 };
    let roll = rng.gen_range(0..1000);
    let mut at = 0;
    let mut next = |w: u32| {
        at += w;
        roll < at
    };
    if next(220 - 2 * crash - 2 * faults) {
        let (pos, len) = range(rng);
        Op::Write {
            f,
            pos,
            len,
            seed: rng.gen(),
        }
    } else if next(30) {
        let (pos, len) = range(rng);
        Op::MappedWrite {
            f,
            pos,
            len,
            seed: rng.gen(),
        }
    } else if next(120) {
        let (pos, len) = range(rng);
        Op::Read { f, pos, len }
    } else if next(70) {
        Op::Truncate { f, size: pos(rng) }
    } else if next(50) {
        let (pos, len) = range(rng);
        Op::Fallocate {
            f,
            pos,
            len,
            keep_size: rng.gen(),
        }
    } else if next(50) {
        let (pos, len) = range(rng);
        Op::PunchHole { f, pos, len }
    } else if next(50) {
        let (pos, len) = range(rng);
        Op::ZeroRange {
            f,
            pos,
            len,
            keep_size: rng.gen(),
        }
    } else if next(30) {
        let (pos, len) = aligned_range(rng, bs);
        Op::CollapseRange { f, pos, len }
    } else if next(30) {
        let (pos, len) = aligned_range(rng, bs);
        Op::InsertRange { f, pos, len }
    } else if next(60) {
        let (soff, len) = range(rng);
        let (doff, _) = range(rng);
        Op::CopyFileRange {
            src: f,
            soff,
            dst: same_owner(rng, f, cfg),
            doff,
            len,
        }
    } else if next(60) {
        let (soff, len) = aligned_range(rng, bs);
        let (doff, _) = aligned_range(rng, bs);
        let to_eof = rng.gen_bool(0.25);
        Op::CloneRange {
            src: f,
            soff,
            dst: same_owner(rng, f, cfg),
            doff,
            len,
            to_eof,
        }
    } else if next(60) {
        Op::Fsync {
            f,
            datasync: rng.gen(),
        }
    } else if next(15) {
        Op::Syncfs
    } else if next(15) {
        Op::DropCaches
    } else if next(40) {
        Op::Reclaim {
            bytes: rng.gen_range(1..=cfg.cache_bytes),
        }
    } else if next(30) {
        Op::Verify
    } else if next(5) {
        Op::Remount
    } else if next(crash) {
        Op::CrashAfterSync
    } else if next(crash) {
        Op::Crash {
            seed: rng.gen(),
            tear: rng.gen(),
        }
    } else if next(faults) {
        let fault = Fault {
            flush: rng.gen_bool(0.15),
            nth: rng.gen_range(1..=4),
            times: if rng.gen_bool(0.8) { 1 } else { 3 },
            kind: match rng.gen_range(0..4) {
                0 => FaultKind::Short {
                    bytes: rng.gen_range(0..MAX_LEN_BYTES),
                },
                1 => FaultKind::Torn { seed: rng.gen() },
                _ => FaultKind::Fail,
            },
        };
        let f = rng.gen_bool(0.8).then_some(f);
        Op::WriteFault { f, fault }
    } else if next(faults) {
        let (pos, len) = range(rng);
        Op::ReadFault {
            f,
            pos,
            len,
            nth: rng.gen_range(1..=3),
            drop: rng.gen_bool(0.7),
        }
    } else {
        let (pos, len) = range(rng);
        Op::Write {
            f,
            pos,
            len,
            seed: rng.gen(),
        }
    }
}

// ---- running ----

/// Runs `ops` on a fresh file system, checking each against the oracle; `progress` is called
/// after each operation.
pub fn run_ops(cfg: &Config, ops: &[Op], progress: &mut dyn FnMut()) -> Result<Tally, Failure> {
    let mut h = Harness::new(cfg).map_err(|what| Failure { at: None, what })?;
    let mut stretch: Vec<(usize, &Op)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if cfg.threads > 1 && !op.is_global() {
            // Gathered until the next operation on the whole file system, then run at once.
            stretch.push((i, op));
            if i + 1 < ops.len() {
                continue;
            }
        }
        if !stretch.is_empty() {
            h.run_parallel(&stretch)?;
            stretch.iter().for_each(|_| progress());
            stretch.clear();
            if !op.is_global() {
                continue;
            }
        }
        h.step(op).map_err(|what| Failure { at: Some(i), what })?;
        progress();
    }
    let tally = h.tally.clone();
    let end = h.l.verify_all().and_then(|()| h.finish());
    end.map_err(|what| Failure {
        at: Some(ops.len()),
        what: format!("at the end: {what}"),
    })?;
    Ok(tally)
}

/// What a passing run's faults and crashes came to.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Device writes and flushes failed.
    pub write_faults: usize,
    /// Files whose fsync reported a failed write or flush.
    pub reported: usize,
    /// Shutdowns after a failed write of the log or a checkpoint, each followed by recovery.
    pub shutdowns: usize,
    /// Device reads failed.
    pub read_faults: usize,
    /// Reads that returned EIO or came up short for them.
    pub read_errors: usize,
    /// Power cuts, each followed by recovery.
    pub crashes: usize,
}
