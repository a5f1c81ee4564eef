//! The checker behind `iomapfs exercise`: a seeded random-operation checker over an in-memory extentfs, the role
//! fsx plays for Linux file systems.
//!
//! The whole operation list is drawn from the seed before anything runs, so a run replays
//! exactly and a failing list can be shrunk by re-running subsets of it on fresh file systems.
//! Each file has a `Vec<u8>` oracle; reads, the end of the run and every remount or crash
//! recovery compare the file with it, and every operation checks the sizes. The oracle
//! zero-fills whatever an operation exposes (a truncate up, a write or fallocate past EOF),
//! so stale bytes past an old EOF show up as a mismatch.
//!
//! Crashes come in two kinds. After a `syncfs` every file must read back exactly. Without
//! one, a file not changed since its last fsync must read back exactly its fsynced contents;
//! a file changed since may hold anything the recovery leaves, so its oracle restarts from
//! what is read.

use std::collections::BTreeMap;
use std::sync::Arc;

use extentfs::{fsck, mkfs, ExtentFs, Ino, MkfsOptions, MountOptions, ROOT_INO};
use iomap::{CacheConfig, MemoryLimits};
use iomap_dev::{
    BlockDevice, BlockDeviceExt, CrashDevice, DevAddr, FaultDevice, FaultRule, MemDevice, Pending,
};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

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
    /// dropped first, so the read reaches the device): the read either returns the right
    /// bytes or EIO, and once the device works again it returns the right bytes.
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
            dst: rng.gen_range(0..files),
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
            dst: rng.gen_range(0..files),
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
    for (i, op) in ops.iter().enumerate() {
        h.step(op).map_err(|what| Failure { at: Some(i), what })?;
        progress();
    }
    let tally = h.tally.clone();
    let end = h.verify_all().and_then(|()| h.finish());
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
    /// Reads that returned EIO for them.
    pub read_errors: usize,
    /// Power cuts, each followed by recovery.
    pub crashes: usize,
}

/// The device a run's file system lives on: memory, recorded for crashes (`--crash`), under
/// a fault injector (`--faults`).
struct Device {
    top: Arc<dyn BlockDevice>,
    crash: Option<Arc<CrashDevice<MemDevice>>>,
    faults: Option<Arc<FaultDevice<Arc<dyn BlockDevice>>>>,
}

impl Device {
    fn new(cfg: &Config, mem: MemDevice) -> Checked<Self> {
        let (inner, crash): (Arc<dyn BlockDevice>, _) = if cfg.crash {
            let d = Arc::new(CrashDevice::new(mem).map_err(|e| format!("crash device: {e}"))?);
            (Arc::clone(&d) as Arc<dyn BlockDevice>, Some(d))
        } else {
            (Arc::new(mem), None)
        };
        let faults = cfg
            .faults
            .then(|| Arc::new(FaultDevice::new(Arc::clone(&inner))));
        let top = match &faults {
            Some(f) => Arc::clone(f) as Arc<dyn BlockDevice>,
            None => inner,
        };
        Ok(Device { top, crash, faults })
    }

    fn block_device(&self) -> Arc<dyn BlockDevice> {
        Arc::clone(&self.top)
    }

    fn faults(&self) -> Checked<&FaultDevice<Arc<dyn BlockDevice>>> {
        self.faults
            .as_deref()
            .ok_or_else(|| "a fault needs the fault device (--faults)".to_string())
    }
}

/// The byte a fresh device holds everywhere before mkfs: a block the file system hands out
/// without writing or zeroing shows up as this instead of zeros.
const CANARY: u8 = 0xc5;

fn canary_device(capacity: u64) -> Checked<MemDevice> {
    let mem = MemDevice::new(capacity);
    let chunk = vec![CANARY; 1 << 20];
    let mut at = 0;
    while at < capacity {
        let n = (capacity - at).min(chunk.len() as u64) as usize;
        mem.write_at(DevAddr(at), &chunk[..n])
            .map_err(|e| format!("filling the device: {e}"))?;
        at += n as u64;
    }
    Ok(mem)
}

type Checked<T = ()> = Result<T, String>;

fn fs_err(what: &str) -> impl FnOnce(extentfs::Error) -> String + '_ {
    move |e| format!("{what} failed unexpectedly: {e}")
}

struct Harness {
    cfg: Config,
    dev: Device,
    fs: Arc<ExtentFs>,
    inos: Vec<Ino>,
    oracle: Vec<Vec<u8>>,
    /// Per file: changed since its last fsync or sync, so a crash may lose the change.
    unsynced: Vec<bool>,
    tally: Tally,
}

fn name(f: usize) -> Vec<u8> {
    format!("f{f}").into_bytes()
}

impl Harness {
    fn new(cfg: &Config) -> Checked<Self> {
        // Room for every file at its largest, once more for copy-on-write of shared
        // extents, plus the log: ENOSPC is never a correct answer in a run. No more, since
        // every crash scans the whole device for its new recording.
        let capacity = (32 << 20) + cfg.files as u64 * 2 * MAX_FILE_BYTES;
        let dev = Device::new(cfg, canary_device(capacity)?)?;
        let opts = MkfsOptions {
            block_size: cfg.block_size,
            log_blocks: None,
        };
        mkfs(dev.block_device(), &opts).map_err(fs_err("mkfs"))?;
        let fs = mount(cfg, &dev)?;
        let mut inos = Vec::with_capacity(cfg.files);
        for f in 0..cfg.files {
            let st = fs
                .create(ROOT_INO, &name(f), 0o644, 0, 0)
                .map_err(fs_err("create"))?;
            inos.push(st.ino);
        }
        // The files must outlive any crash, whatever the run does before the first sync.
        fs.syncfs().map_err(fs_err("syncfs after create"))?;
        Ok(Harness {
            cfg: cfg.clone(),
            dev,
            fs,
            inos,
            oracle: vec![Vec::new(); cfg.files],
            unsynced: vec![false; cfg.files],
            tally: Tally::default(),
        })
    }

    fn step(&mut self, op: &Op) -> Checked {
        let fs = Arc::clone(&self.fs);
        let bs = u64::from(self.cfg.block_size);
        match *op {
            Op::Write { f, pos, len, seed } => {
                self.unsynced[f] = true;
                let mut data = vec![0u8; len as usize];
                SmallRng::seed_from_u64(seed).fill_bytes(&mut data);
                let old = self.size(f);
                let n = fs
                    .write(self.inos[f], pos, &data)
                    .map_err(fs_err("write"))?;
                if n != data.len() {
                    return Err(format!("short write: {n} of {len} bytes"));
                }
                put(&mut self.oracle[f], pos, &data);
                self.check_gap(f, old, pos)?;
            }
            Op::MappedWrite { f, pos, len, seed } => self.mapped_write(f, pos, len, seed)?,
            Op::Read { f, pos, len } => self.check_range(f, pos, pos + len)?,
            Op::Truncate { f, size } => {
                self.unsynced[f] = true;
                let old = self.size(f);
                fs.truncate(self.inos[f], size)
                    .map_err(fs_err("truncate"))?;
                self.oracle[f].resize(size as usize, 0);
                self.check_gap(f, old, size)?;
            }
            Op::Fallocate {
                f,
                pos,
                len,
                keep_size,
            } => {
                self.unsynced[f] = true;
                let old = self.size(f);
                let mode = if keep_size {
                    libc::FALLOC_FL_KEEP_SIZE
                } else {
                    0
                };
                fs.fallocate(self.inos[f], mode, pos, len)
                    .map_err(fs_err("fallocate"))?;
                if !keep_size {
                    grow(&mut self.oracle[f], pos + len);
                }
                self.check_gap(f, old, pos + len)?;
            }
            Op::PunchHole { f, pos, len } => {
                self.unsynced[f] = true;
                let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                fs.fallocate(self.inos[f], mode, pos, len)
                    .map_err(fs_err("punch hole"))?;
                zero(&mut self.oracle[f], pos, pos + len);
            }
            Op::ZeroRange {
                f,
                pos,
                len,
                keep_size,
            } => {
                self.unsynced[f] = true;
                let old = self.size(f);
                let keep = if keep_size {
                    libc::FALLOC_FL_KEEP_SIZE
                } else {
                    0
                };
                fs.fallocate(self.inos[f], libc::FALLOC_FL_ZERO_RANGE | keep, pos, len)
                    .map_err(fs_err("zero range"))?;
                zero(&mut self.oracle[f], pos, pos + len);
                if !keep_size {
                    grow(&mut self.oracle[f], pos + len);
                }
                self.check_gap(f, old, pos + len)?;
            }
            Op::CollapseRange { f, pos, len } => {
                self.unsynced[f] = true;
                let ok = pos + len < self.size(f);
                let res = fs.fallocate(self.inos[f], libc::FALLOC_FL_COLLAPSE_RANGE, pos, len);
                if expect_einval(res, ok, "collapse range")? {
                    self.oracle[f].drain(pos as usize..(pos + len) as usize);
                }
            }
            Op::InsertRange { f, pos, len } => {
                let size = self.size(f);
                let ok = pos < size;
                if ok && size + len > MAX_FILE_BYTES {
                    // Keeps the run's files bounded; the same list always skips it.
                    return Ok(());
                }
                self.unsynced[f] = true;
                let res = fs.fallocate(self.inos[f], libc::FALLOC_FL_INSERT_RANGE, pos, len);
                if expect_einval(res, ok, "insert range")? {
                    let o = &mut self.oracle[f];
                    o.splice(
                        pos as usize..pos as usize,
                        std::iter::repeat_n(0, len as usize),
                    );
                }
            }
            Op::CopyFileRange {
                src,
                soff,
                dst,
                doff,
                len,
            } => {
                let n = len.min(self.size(src).saturating_sub(soff));
                if doff + n > MAX_FILE_BYTES {
                    return Ok(());
                }
                self.unsynced[dst] = true;
                let overlap = src == dst && n > 0 && soff < doff + n && doff < soff + n;
                let old = self.size(dst);
                let res = fs.copy_file_range(self.inos[src], soff, self.inos[dst], doff, len);
                match res {
                    Ok(0) if n == 0 => {}
                    Ok(done) if !overlap && done == n => {
                        let data = self.oracle[src][soff as usize..(soff + n) as usize].to_vec();
                        put(&mut self.oracle[dst], doff, &data);
                        self.check_gap(dst, old, doff)?;
                    }
                    Ok(done) if overlap => {
                        return Err(format!("an overlapping copy succeeded ({done} bytes)"));
                    }
                    Ok(done) => return Err(format!("copied {done} bytes, expected {n}")),
                    Err(e) if overlap && e.errno() == libc::EINVAL => {}
                    Err(e) => return Err(format!("copy_file_range failed unexpectedly: {e}")),
                }
            }
            Op::CloneRange {
                src,
                soff,
                dst,
                doff,
                len,
                to_eof,
            } => {
                let ssize = self.size(src);
                let dsize = self.size(dst);
                // Either whole blocks, or everything from soff to the end of the source.
                let len = if to_eof {
                    ssize.saturating_sub(soff)
                } else {
                    len
                };
                if len == 0 || doff + len > MAX_FILE_BYTES {
                    return Ok(());
                }
                self.unsynced[dst] = true;
                let ok = soff + len <= ssize
                    && !(src == dst && soff < doff + len && doff < soff + len)
                    && !(len % bs != 0 && doff + len < dsize);
                let res = fs.clone_range(self.inos[src], soff, self.inos[dst], doff, len);
                if expect_einval(res, ok, "clone range")? {
                    let data = self.oracle[src][soff as usize..(soff + len) as usize].to_vec();
                    put(&mut self.oracle[dst], doff, &data);
                    self.check_gap(dst, dsize, doff)?;
                }
            }
            Op::Fsync { f, datasync } => {
                self.fsync(f, datasync).map_err(fs_err("fsync"))?;
                self.unsynced[f] = false;
            }
            Op::Syncfs => {
                fs.syncfs().map_err(fs_err("syncfs"))?;
                self.unsynced.fill(false);
            }
            Op::DropCaches => {
                fs.syncfs().map_err(fs_err("syncfs"))?;
                self.unsynced.fill(false);
                fs.drop_caches().map_err(fs_err("drop caches"))?;
            }
            Op::Reclaim { bytes } => {
                fs.cache().reclaim(bytes);
            }
            Op::Verify => self.verify_all()?,
            Op::Remount => self.remount()?,
            Op::CrashAfterSync => {
                fs.syncfs().map_err(fs_err("syncfs"))?;
                self.unsynced.fill(false);
                self.crash(&Pending::None)?;
            }
            Op::Crash { seed, tear } => self.crash(&Pending::Random { seed, tear })?,
            Op::WriteFault { f, fault } => self.write_fault(f, &fault)?,
            Op::ReadFault {
                f,
                pos,
                len,
                nth,
                drop,
            } => self.read_fault(f, pos, len, nth, drop)?,
            Op::CorruptOracle { f } => {
                let o = &mut self.oracle[f];
                match o.len() {
                    0 => o.push(1),
                    n => o[n / 2] ^= 0x5a,
                }
            }
        }
        self.check_sizes()
    }

    fn size(&self, f: usize) -> u64 {
        self.oracle[f].len() as u64
    }

    fn check_sizes(&self) -> Checked {
        for (f, &ino) in self.inos.iter().enumerate() {
            let got = self.fs.getattr(ino).map_err(fs_err("getattr"))?.size;
            if got != self.size(f) {
                return Err(format!(
                    "file {f} is {got} bytes long, expected {}",
                    self.size(f)
                ));
            }
        }
        Ok(())
    }

    /// Reads `[start, end)` of file `f` and compares it with the oracle (short at EOF).
    fn check_range(&self, f: usize, start: u64, end: u64) -> Checked {
        let mut buf = vec![0u8; end.saturating_sub(start) as usize];
        let n = self
            .fs
            .read(self.inos[f], start, &mut buf)
            .map_err(fs_err("read"))?;
        self.compare(f, start, end, &buf[..n])
    }

    /// Compares what a read of `[start, end)` returned with the oracle (short at EOF).
    fn compare(&self, f: usize, start: u64, end: u64, buf: &[u8]) -> Checked {
        let o = &self.oracle[f];
        let n = buf.len();
        let want = o
            .get(start as usize..end.min(o.len() as u64) as usize)
            .unwrap_or(&[]);
        if n != want.len() {
            return Err(format!(
                "read of file {f} at {start} returned {n} bytes, expected {} (size {})",
                want.len(),
                o.len()
            ));
        }
        // The slice comparison is a memcmp; the byte-wise search runs only on a mismatch.
        if buf[..n] == *want {
            return Ok(());
        }
        if let Some(i) = buf[..n].iter().zip(want).position(|(a, b)| a != b) {
            let off = start + i as u64;
            let diff_end = buf[i..n]
                .iter()
                .zip(&want[i..])
                .rposition(|(a, b)| a != b)
                .map_or(off + 1, |j| off + j as u64 + 1);
            return Err(format!(
                "file {f} differs at byte {off}: expected {:#04x}, found {:#04x} \
                 (bytes {off}..{diff_end} differ somewhere; size {})",
                want[i],
                buf[i],
                o.len()
            ));
        }
        Ok(())
    }

    /// After an operation that may have extended file `f` from `old` to past `to`: the
    /// bytes between must read as zeros whatever the file held there before a truncate.
    fn check_gap(&self, f: usize, old: u64, to: u64) -> Checked {
        let end = to.min(self.size(f)).min(old + MAX_LEN_BYTES);
        if old < end {
            self.check_range(f, old, end)
                .map_err(|e| format!("past the old EOF {old}: {e}"))?;
        }
        Ok(())
    }

    fn verify_all(&self) -> Checked {
        self.check_sizes()?;
        for f in 0..self.inos.len() {
            self.check_range(f, 0, self.size(f))?;
        }
        Ok(())
    }

    fn relookup(&mut self) -> Checked {
        for (f, ino) in self.inos.iter_mut().enumerate() {
            *ino = self
                .fs
                .lookup(ROOT_INO, &name(f))
                .map_err(fs_err("lookup after mount"))?
                .ino;
        }
        Ok(())
    }

    fn check_fsck(&self, at: &str) -> Checked {
        let r = fsck::fsck(self.dev.block_device(), false);
        if r.is_clean() {
            Ok(())
        } else {
            Err(format!("fsck {at}: {:?}", r.problems))
        }
    }

    fn remount(&mut self) -> Checked {
        self.fs.unmount().map_err(fs_err("unmount"))?;
        self.fs.cache().stop_flusher();
        self.check_fsck("after unmount")?;
        // The crash device's recording goes on: each crash starts a fresh one, which bounds
        // it, and re-recording here would cost a scan of the whole device.
        self.fs = mount(&self.cfg, &self.dev)?;
        self.relookup()?;
        self.unsynced.fill(false);
        self.verify_all().map_err(|e| format!("after remount: {e}"))
    }

    /// Cuts the power now, keeps the pending device writes `pending` picks, recovers, and
    /// checks: files unchanged since their last sync must read back exactly, the others
    /// restart their oracles from what recovery left.
    fn crash(&mut self, pending: &Pending) -> Checked {
        let Some(d) = self.dev.crash.clone() else {
            return Err("a crash needs the crash device (--crash)".into());
        };
        // Nothing the dying file system or its flusher does later may reach the image.
        self.tally.crashes += 1;
        d.power_cut();
        let t = d.events();
        self.fs.abandon();
        self.fs.cache().stop_flusher();
        let image = d
            .image_at(t, pending)
            .map_err(|e| format!("crash image: {e}"))?;
        self.dev = Device::new(&self.cfg, image)?;
        if *pending == Pending::None {
            // After a sync the durable image is whole as it stands; with writes in flight,
            // only the image after log recovery must be.
            self.check_fsck("after the crash, before recovery")?;
        }
        self.recover("the crash")
    }

    /// Mounts the device again after the file system stopped without unmounting (a crash,
    /// or a shutdown after an error): log recovery must bring back every file synced since it
    /// last changed exactly; the others restart their oracles from what recovery left. Then
    /// an unmount, fsck and mount must agree.
    fn recover(&mut self, after: &str) -> Checked {
        self.fs = mount(&self.cfg, &self.dev).map_err(|e| format!("recovery: {e}"))?;
        self.relookup()?;
        for f in 0..self.inos.len() {
            if !self.unsynced[f] {
                self.check_range(f, 0, self.size(f))
                    .map_err(|e| format!("after {after}, synced {e}"))?;
                continue;
            }
            self.adopt(f).map_err(|e| format!("after {after}: {e}"))?;
        }
        self.unsynced.fill(false);
        self.check_sizes()?;
        // Recovery wrote its checkpoint; what it left must now pass a check.
        self.fs
            .unmount()
            .map_err(fs_err("unmount after recovery"))?;
        self.fs.cache().stop_flusher();
        self.check_fsck("after recovery")?;
        self.fs = mount(&self.cfg, &self.dev)?;
        self.relookup()?;
        self.verify_all()
            .map_err(|e| format!("after recovery and remount: {e}"))
    }

    /// Restarts file `f`'s oracle from what the file holds now.
    fn adopt(&mut self, f: usize) -> Checked {
        let size = self
            .fs
            .getattr(self.inos[f])
            .map_err(fs_err("getattr"))?
            .size;
        if size > MAX_RECOVERED_BYTES {
            return Err(format!("file {f} is {size} bytes long"));
        }
        let mut buf = vec![0u8; size as usize];
        let n = self
            .fs
            .read(self.inos[f], 0, &mut buf)
            .map_err(fs_err("read"))?;
        if n != buf.len() {
            return Err(format!("short read of file {f}: {n} of {size} bytes"));
        }
        if let Some(i) = canary_run(&buf, u64::from(self.cfg.block_size)) {
            return Err(format!(
                "file {f} shows the device's unwritten canary at byte {i}"
            ));
        }
        self.oracle[f] = buf;
        Ok(())
    }

    /// Stores through a shared mapping: each folio is made writable by `page_mkwrite` and
    /// stored into, as the faults of a process writing through `mmap` would.
    fn mapped_write(&mut self, f: usize, pos: u64, len: u64, seed: u64) -> Checked {
        let end = (pos + len).min(self.size(f));
        if pos >= end {
            return Ok(());
        }
        self.unsynced[f] = true;
        let mut data = vec![0u8; (end - pos) as usize];
        SmallRng::seed_from_u64(seed).fill_bytes(&mut data);
        let mut at = pos;
        while at < end {
            let folio = self
                .fs
                .page_mkwrite(self.inos[f], at)
                .map_err(fs_err("page_mkwrite"))?;
            let (fpos, flen) = (folio.pos(), folio.len() as u64);
            if !(fpos <= at && at < fpos + flen) {
                return Err(format!(
                    "page_mkwrite at {at} gave the folio at {fpos} with {flen} writable bytes"
                ));
            }
            let upto = end.min(fpos + flen);
            let src = &data[(at - pos) as usize..(upto - pos) as usize];
            folio
                .write((at - fpos) as usize, src)
                .map_err(|e| format!("store into the folio at {fpos}: {e}"))?;
            at = upto;
        }
        put(&mut self.oracle[f], pos, &data);
        Ok(())
    }

    /// Whether the file system has shut down after an error.
    fn is_shut_down(&self) -> bool {
        matches!(self.fs.commit(), Err(extentfs::Error::Shutdown))
    }

    /// Syncs with a device fault armed; see [`Op::WriteFault`].
    fn write_fault(&mut self, f: Option<usize>, fault: &Fault) -> Checked {
        let faults = self.dev.faults()?;
        let before = faults.injected().len();
        faults.add_rule(fault.rule());
        let synced = match f {
            Some(f) => self.fsync(f, false),
            None => self.fs.syncfs(),
        };
        faults.clear_rules();
        let injected = faults.injected().len() - before;
        self.tally.write_faults += injected;
        let injected = injected > 0;
        let reported = match synced {
            Ok(()) => false,
            Err(_) if !injected => {
                return Err("the sync failed with no device fault injected".into());
            }
            Err(e) if e.errno() == libc::EIO => true,
            Err(e) => return Err(format!("the sync failed with {e}, expected EIO")),
        };
        if !reported {
            if let Some(f) = f {
                self.unsynced[f] = false;
            } else {
                self.unsynced.fill(false);
            }
        }
        self.settle_fault(f.filter(|_| reported), injected && !reported)
    }

    /// After a write or flush fault: every file is fsynced through a new handle, which
    /// reports an error nobody has seen (R19). A file whose error was reported (`reported`,
    /// or now) may have lost what it had not synced: its oracle restarts from what the device
    /// holds. Every other file must read back exactly, from the device. `owed`: a fault was
    /// injected and not yet reported, so some report must come now.
    fn settle_fault(&mut self, reported: Option<usize>, owed: bool) -> Checked {
        if self.is_shut_down() {
            return self.shut_down_and_recover();
        }
        let mut tainted = vec![false; self.inos.len()];
        if let Some(f) = reported {
            tainted[f] = true;
        }
        for (f, tainted) in tainted.iter_mut().enumerate() {
            match self.fsync(f, false) {
                Ok(()) => self.unsynced[f] = false,
                Err(e) if e.errno() == libc::EIO => {
                    if self.is_shut_down() {
                        return self.shut_down_and_recover();
                    }
                    *tainted = true;
                }
                Err(e) => return Err(format!("fsync after a fault failed with {e}")),
            }
        }
        self.tally.reported += tainted.iter().filter(|&&t| t).count();
        if owed && !tainted.contains(&true) {
            return Err("a device fault was injected and no fsync reported it".into());
        }
        // Everything is written back; read from the device, not the cache.
        self.fs
            .drop_caches()
            .map_err(fs_err("drop caches after a fault"))?;
        for (f, &tainted) in tainted.iter().enumerate() {
            if tainted {
                self.adopt(f)
                    .map_err(|e| format!("after a reported fault: {e}"))?;
                // A write that failed may have left the size on the device short of the size
                // in memory, as XFS's would: set it again, as a program that saw the error
                // would, and sync, so that the oracle holds again across a crash.
                let size = self.size(f);
                self.fs
                    .truncate(self.inos[f], size)
                    .map_err(fs_err("truncate after a reported fault"))?;
                self.fsync(f, false)
                    .map_err(|e| format!("fsync after a reported fault: {e}"))?;
                self.unsynced[f] = false;
            } else {
                self.check_range(f, 0, self.size(f))
                    .map_err(|e| format!("after a fault nothing reported for: {e}"))?;
            }
        }
        Ok(())
    }

    /// The file system shut down after a fault: mounting again recovers the log.
    fn shut_down_and_recover(&mut self) -> Checked {
        self.tally.shutdowns += 1;
        self.fs.abandon();
        self.fs.cache().stop_flusher();
        self.recover("a shutdown")
    }

    /// Reads with a device read fault armed; see [`Op::ReadFault`].
    fn read_fault(&mut self, f: usize, pos: u64, len: u64, nth: u32, drop: bool) -> Checked {
        if drop {
            self.fs.syncfs().map_err(fs_err("syncfs"))?;
            self.unsynced.fill(false);
            self.fs.drop_caches().map_err(fs_err("drop caches"))?;
        }
        let faults = self.dev.faults()?;
        let before = faults.injected().len();
        faults.add_rule(FaultRule::nth(iomap_dev::Op::Read, nth, libc::EIO));
        let end = pos + len;
        let mut buf = vec![0u8; len as usize];
        let read = self.fs.read(self.inos[f], pos, &mut buf);
        faults.clear_rules();
        let injected = faults.injected().len() - before;
        self.tally.read_faults += injected;
        let injected = injected > 0;
        match read {
            Ok(n) => self.compare(f, pos, end, &buf[..n])?,
            Err(e) if injected && e.errno() == libc::EIO => self.tally.read_errors += 1,
            Err(e) if injected => return Err(format!("a failed read returned {e}, not EIO")),
            Err(e) => return Err(format!("read failed with no device fault injected: {e}")),
        }
        self.check_range(f, pos, end)
            .map_err(|e| format!("after a failed read: {e}"))
    }

    /// fsync or fdatasync of file `f` through a new handle.
    fn fsync(&self, f: usize, datasync: bool) -> extentfs::Result<()> {
        let fh = self.fs.open(self.inos[f])?;
        let synced = self.fs.fsync(&fh, datasync);
        let closed = self.fs.release(fh);
        synced.and(closed)
    }

    fn finish(self) -> Checked {
        self.fs.unmount().map_err(fs_err("unmount"))?;
        self.fs.cache().stop_flusher();
        self.check_fsck("at the end")
    }
}

fn mount(cfg: &Config, dev: &Device) -> Checked<Arc<ExtentFs>> {
    let opts = MountOptions {
        cache: CacheConfig {
            page_size: (cfg.block_size as usize).min(4096),
            max_folio_size: cfg.max_folio_bytes as usize,
        },
        read_only: false,
        commit_interval: None,
    };
    let fs = ExtentFs::mount(dev.block_device(), opts).map_err(fs_err("mount"))?;
    fs.cache()
        .set_limits(MemoryLimits::with_budget(cfg.cache_bytes))
        .map_err(|e| format!("cache limits: {e}"))?;
    fs.cache()
        .start_flusher()
        .map_err(|e| format!("cannot start the flusher: {e}"))?;
    Ok(fs)
}

/// Whether an operation the oracle predicts to succeed (`ok`) did; one predicted to fail
/// must fail with EINVAL.
fn expect_einval(res: extentfs::Result<()>, ok: bool, what: &str) -> Checked<bool> {
    match res {
        Ok(()) if ok => Ok(true),
        Ok(()) => Err(format!("{what} succeeded where it must fail with EINVAL")),
        Err(e) if !ok && e.errno() == libc::EINVAL => Ok(false),
        Err(e) if !ok => Err(format!("{what} failed with {e}, expected EINVAL")),
        Err(e) => Err(format!("{what} failed unexpectedly: {e}")),
    }
}

/// Where a whole block of the device's canary starts in `buf`, if one does.
fn canary_run(buf: &[u8], bs: u64) -> Option<usize> {
    buf.chunks(bs as usize)
        .position(|c| c.len() == bs as usize && c.iter().all(|&b| b == CANARY))
        .map(|i| i * bs as usize)
}

fn grow(o: &mut Vec<u8>, end: u64) {
    if (o.len() as u64) < end {
        o.resize(end as usize, 0);
    }
}

fn put(o: &mut Vec<u8>, pos: u64, data: &[u8]) {
    grow(o, pos + data.len() as u64);
    o[pos as usize..pos as usize + data.len()].copy_from_slice(data);
}

fn zero(o: &mut [u8], start: u64, end: u64) {
    let end = end.min(o.len() as u64);
    if start < end {
        o[start as usize..end as usize].fill(0);
    }
}

// ---- shrinking ----

/// A shorter failing list, and how it fails.
pub struct Shrunk {
    /// The operations left.
    pub ops: Vec<Op>,
    /// How they fail.
    pub failure: Failure,
}

/// Removes chunks of the list (halves, quarters, ... single operations) while the run still
/// fails, each try on a fresh file system, within `SHRINK_ATTEMPTS` runs. Any failure counts:
/// a shrink that turns one mismatch into another is still a smaller failing list.
/// `status` is told how far the shrinking has got.
pub fn shrink(
    cfg: &Config,
    mut ops: Vec<Op>,
    first: &Failure,
    status: &mut dyn FnMut(&str),
) -> Shrunk {
    // Nothing after the failing operation can matter.
    if let Some(at) = first.at {
        ops.truncate(at + 1);
    }
    let mut failure = Failure {
        at: first.at,
        what: first.what.clone(),
    };
    let mut attempts = 0;
    let mut chunk = ops.len().div_ceil(2).max(1);
    'outer: loop {
        let mut i = 0;
        while i < ops.len() {
            if attempts == SHRINK_ATTEMPTS {
                break 'outer;
            }
            attempts += 1;
            status(&format!(
                "shrinking: {} operations left, try {attempts}/{SHRINK_ATTEMPTS}",
                ops.len()
            ));
            let mut candidate = ops.clone();
            candidate.drain(i..(i + chunk).min(ops.len()));
            match run_ops(cfg, &candidate, &mut || {}) {
                Err(f) => {
                    if let Some(at) = f.at {
                        candidate.truncate(at + 1);
                    }
                    ops = candidate;
                    failure = f;
                }
                Ok(_) => i += chunk,
            }
        }
        if chunk == 1 {
            break;
        }
        chunk = chunk.div_ceil(2);
    }
    Shrunk { ops, failure }
}
