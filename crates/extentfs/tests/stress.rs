//! Concurrency stress: threads write, read, truncate, punch, zero, copy and fsync the same
//! files at once, under a small cache budget with the engine's flusher and reclaim running.
//!
//! Every 8-byte word ever written names its file and its own offset, so any word a read
//! returns must either be zero (a hole, punched, zeroed or truncated away) or name that file
//! and that offset: data read is always data that was written there. A thread of its own
//! writes and fsyncs a file nobody else touches; after the storm the filesystem is unmounted,
//! checked and mounted again, and that file must hold what it fsynced. A watchdog reports
//! what each thread was doing if the run stops making progress, and aborts.
//!
//! `STRESS_OPS` sets the operations per thread (default 3000).

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first unexpected error"
)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use extentfs::{fsck, mkfs, ExtentFs, MkfsOptions, MountOptions, ROOT_INO};
use iomap::{CacheConfig, MemoryLimits};
use iomap_dev::MemDevice;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const FILES: u64 = 3;
const WRITERS: usize = 4;
const MAX_SIZE: u64 = 4 << 20;
const WORD: u64 = 8;

/// The word every write stores at `pos` of file `file`: never zero.
fn word(file: u64, pos: u64) -> u64 {
    (file << 56) | (pos << 8) | 0xa5
}

fn fill(file: u64, pos: u64, len: u64) -> Vec<u8> {
    (pos / WORD..(pos + len) / WORD)
        .flat_map(|w| word(file, w * WORD).to_le_bytes())
        .collect()
}

/// Checks that every word of `buf`, read at `pos` of `file`, is zero or that file's word for
/// its offset.
fn check(file: u64, pos: u64, buf: &[u8], what: &str) {
    for (i, w) in buf.chunks_exact(WORD as usize).enumerate() {
        let v = u64::from_le_bytes(w.try_into().unwrap());
        let at = pos + i as u64 * WORD;
        assert!(
            v == 0 || v == word(file, at),
            "{what}: file {file} at {at} read {v:#x}, which was never written there"
        );
    }
}

/// What each thread did last, for the watchdog.
struct Progress {
    op: AtomicU64,
    at: AtomicU64,
    count: AtomicU64,
}

const OPS: [&str; 8] = [
    "write", "read", "truncate", "punch", "zero", "copy", "fsync", "done",
];

fn ops_per_thread() -> u64 {
    std::env::var("STRESS_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

fn mount(dev: Arc<MemDevice>) -> Arc<ExtentFs> {
    let fs = ExtentFs::mount(
        dev,
        MountOptions {
            cache: CacheConfig {
                page_size: 4096,
                max_folio_size: 256 << 10,
            },
            read_only: false,
            commit_interval: Some(Duration::from_millis(50)),
        },
    )
    .unwrap();
    let mut limits = MemoryLimits::with_budget(2 << 20);
    limits.dirty_expire = Duration::from_millis(20);
    limits.writeback_interval = Duration::from_millis(10);
    fs.cache().set_limits(limits).unwrap();
    fs.cache().start_flusher().unwrap();
    fs
}

#[test]
fn threads_on_the_same_files_under_a_small_budget_read_only_what_was_written() {
    let dev = Arc::new(MemDevice::new(256 << 20));
    mkfs(
        dev.clone(),
        &MkfsOptions {
            block_size: 4096,
            log_blocks: None,
        },
    )
    .unwrap();
    let fs = mount(dev.clone());
    let inos: Vec<u64> = (0..FILES)
        .map(|i| {
            fs.create(ROOT_INO, format!("f{i}").as_bytes(), 0o644, 0, 0)
                .unwrap()
                .ino
        })
        .collect();
    let durable_ino = fs.create(ROOT_INO, b"durable", 0o644, 0, 0).unwrap().ino;
    let progress: Vec<Progress> = (0..=WRITERS)
        .map(|_| Progress {
            op: AtomicU64::new(0),
            at: AtomicU64::new(0),
            count: AtomicU64::new(0),
        })
        .collect();
    let finished = AtomicBool::new(false);
    let ops = ops_per_thread();
    let durable_len = std::sync::Mutex::new(0u64);
    std::thread::scope(|s| {
        let (fs, inos, progress, finished) = (&fs, &inos, &progress, &finished);
        let mut handles = Vec::new();
        for (t, p) in progress.iter().enumerate().take(WRITERS) {
            handles.push(s.spawn(move || {
                let mut rng = SmallRng::seed_from_u64(0x5eed + t as u64);
                for _ in 0..ops {
                    let f = rng.gen_range(0..FILES);
                    let ino = inos[f as usize];
                    let pos = rng.gen_range(0..MAX_SIZE / WORD) * WORD;
                    let len = (rng.gen_range(1..=(64 << 10) / WORD) * WORD).min(MAX_SIZE - pos);
                    let op = rng.gen_range(0..100u64);
                    let kind = match op {
                        0..=39 => 0,
                        40..=74 => 1,
                        75..=79 => 2,
                        80..=84 => 3,
                        85..=89 => 4,
                        90..=94 => 5,
                        _ => 6,
                    };
                    p.op.store(kind, Ordering::Relaxed);
                    p.at.store(pos, Ordering::Relaxed);
                    match kind {
                        0 => {
                            fs.write(ino, pos, &fill(f, pos, len)).unwrap();
                        }
                        1 => {
                            let mut buf = vec![0u8; len as usize];
                            let n = fs.read(ino, pos, &mut buf).unwrap();
                            check(f, pos, &buf[..n - n % WORD as usize], "read");
                        }
                        2 => fs.truncate(ino, pos).unwrap(),
                        3 => fs
                            .fallocate(
                                ino,
                                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                                pos,
                                len,
                            )
                            .unwrap(),
                        4 => fs
                            .fallocate(ino, libc::FALLOC_FL_ZERO_RANGE, pos, len)
                            .unwrap(),
                        5 => {
                            // A copy within one file keeps every word at its own offset.
                            fs.copy_file_range(ino, pos, ino, pos, len).ok();
                        }
                        _ => {
                            let fh = fs.open(ino).unwrap();
                            fs.fsync(&fh, rng.gen()).unwrap();
                            fs.release(fh).unwrap();
                        }
                    }
                    p.count.fetch_add(1, Ordering::Relaxed);
                }
                p.op.store(7, Ordering::Relaxed);
            }));
        }
        // The durable file: appended and fsynced by one thread.
        let durable_len = &durable_len;
        handles.push(s.spawn(move || {
            let p = &progress[WRITERS];
            let fh = fs.open(durable_ino).unwrap();
            for i in 0..ops / 10 {
                let pos = i * 8192;
                p.op.store(0, Ordering::Relaxed);
                p.at.store(pos, Ordering::Relaxed);
                fs.write(durable_ino, pos, &fill(FILES, pos, 8192)).unwrap();
                p.op.store(6, Ordering::Relaxed);
                fs.fsync(&fh, false).unwrap();
                *durable_len.lock().unwrap() = pos + 8192;
                p.count.fetch_add(1, Ordering::Relaxed);
            }
            fs.release(fh).unwrap();
            p.op.store(7, Ordering::Relaxed);
        }));
        // The watchdog: every thread must make progress within a generous bound.
        let watchdog = s.spawn(move || {
            let mut last: Vec<u64> = vec![u64::MAX; WRITERS + 1];
            let mut since = Instant::now();
            while !finished.load(Ordering::Relaxed) {
                std::thread::park_timeout(Duration::from_millis(200));
                let now: Vec<u64> = progress
                    .iter()
                    .map(|p| p.count.load(Ordering::Relaxed))
                    .collect();
                if now != last {
                    last = now;
                    since = Instant::now();
                } else if since.elapsed() > Duration::from_secs(60) {
                    for (t, p) in progress.iter().enumerate() {
                        eprintln!(
                            "thread {t}: {} at {} after {} operations",
                            OPS[p.op.load(Ordering::Relaxed) as usize],
                            p.at.load(Ordering::Relaxed),
                            p.count.load(Ordering::Relaxed)
                        );
                    }
                    eprintln!("no progress for 60 s: deadlocked");
                    std::process::abort();
                }
            }
        });
        for h in handles {
            h.join().unwrap();
        }
        finished.store(true, Ordering::Relaxed);
        watchdog.thread().unpark();
    });
    let s = fs.cache().stats().snapshot();
    assert!(s.direct_reclaims > 0, "the budget never bit: {s:?}");
    assert!(s.flusher_passes > 0, "{s:?}");
    // Everything still reads as written, then survives an unmount, fsck and a mount.
    let verify = |fs: &ExtentFs| {
        for (f, &ino) in inos.iter().enumerate() {
            let mut buf = vec![0u8; MAX_SIZE as usize];
            let n = fs.read(ino, 0, &mut buf).unwrap();
            check(f as u64, 0, &buf[..n], "final read");
        }
    };
    verify(&fs);
    fs.unmount().unwrap();
    drop(fs);
    let report = fsck::fsck(dev.clone(), false);
    assert!(report.is_clean(), "{report:?}");
    let fs = mount(dev);
    verify(&fs);
    let len = *durable_len.lock().unwrap();
    let ino = fs.lookup(ROOT_INO, b"durable").unwrap().ino;
    let mut buf = vec![0u8; len as usize];
    assert_eq!(fs.read(ino, 0, &mut buf).unwrap() as u64, len);
    assert!(buf == fill(FILES, 0, len), "fsynced data was lost");
}
