//! Crash consistency: a workload mix runs on a `CrashDevice`; at every flush point, and at
//! sampled points with unflushed writes partly present and torn, the image must mount, fsck
//! must find nothing wrong, every file fsynced before the crash must be intact, and no file
//! may show a byte it never held.
//!
//! File data is written in 8-byte words that name the write that made them and their own
//! offset, so any byte read after a crash can be traced to a write of that file at that
//! offset (or is zero).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use extentfs::{fsck, mkfs, ExtentFs, FileType, MkfsOptions, MountOptions, ROOT_INO};
use iomap_dev::{BlockDevice, CrashDevice, MemDevice, Pending};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const DEV_BYTES: u64 = 24 << 20;

/// Data for a write: word `i` holds the write's id and its file offset.
fn words(id: u32, pos: u64, len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len as usize);
    for w in 0..len / 8 {
        let off = pos + w * 8;
        let v = (u64::from(id) << 40) | (off / 8);
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

#[derive(Default)]
struct Oracle {
    /// Write id -> (file name, pos, len).
    writes: HashMap<u32, (String, u64, u64)>,
    /// File name -> ids of writes whose words may appear in it.
    allowed: HashMap<String, HashSet<u32>>,
    /// Fsynced files never touched again: name -> (contents, crash point from which it is durable).
    stable: Vec<(String, Vec<u8>, usize)>,
    next_id: u32,
}

impl Oracle {
    fn write(&mut self, fs: &ExtentFs, ino: u64, name: &str, pos: u64, len: u64) -> Vec<u8> {
        self.next_id += 1;
        let id = self.next_id;
        let data = words(id, pos, len);
        self.writes.insert(id, (name.to_string(), pos, len));
        self.allowed.entry(name.to_string()).or_default().insert(id);
        fs.write(ino, pos, &data).unwrap();
        data
    }

    /// Checks that every word of `data` (file `name` from offset 0) is zero or was written
    /// there by an allowed write.
    fn check_bytes(&self, name: &str, data: &[u8], at: &str) {
        let allowed = self.allowed.get(name);
        for (w, chunk) in data.chunks(8).enumerate() {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            let v = u64::from_le_bytes(b);
            if v == 0 {
                continue;
            }
            let off = w as u64 * 8;
            let id = (v >> 40) as u32;
            let ok = chunk.len() == 8
                && v & ((1 << 40) - 1) == off / 8
                && allowed.is_some_and(|a| a.contains(&id))
                && self
                    .writes
                    .get(&id)
                    .is_some_and(|&(_, p, l)| off >= p && off < p + l);
            assert!(
                ok,
                "{at}: {name} shows bytes it never held at offset {off}: {v:#x}"
            );
        }
    }
}

struct Run {
    crash: Arc<CrashDevice<Arc<MemDevice>>>,
    oracle: Oracle,
    block_size: u32,
}

fn workload(block_size: u32, seed: u64) -> Run {
    let mem = Arc::new(MemDevice::new(DEV_BYTES));
    mkfs(
        mem.clone(),
        &MkfsOptions {
            block_size,
            log_blocks: Some(64),
        },
    )
    .unwrap();
    let crash = Arc::new(CrashDevice::new(mem).unwrap());
    let dev: Arc<dyn BlockDevice> = crash.clone();
    let opts = MountOptions {
        commit_interval: None,
        ..MountOptions::default()
    };
    let fs = ExtentFs::mount(dev, opts).unwrap();
    let mut o = Oracle::default();
    let mut rng = SmallRng::seed_from_u64(seed);
    let bs = u64::from(block_size);
    let mut churn: Vec<(String, u64)> = Vec::new();
    for i in 0..3 {
        let name = format!("c{i}");
        let st = fs.create(ROOT_INO, name.as_bytes(), 0o644, 0, 0).unwrap();
        churn.push((name, st.ino));
    }
    let dir = fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    let mut stable_n = 0;
    let mut names_n = 0;
    for _ in 0..70 {
        match rng.gen_range(0..12) {
            0..=2 => {
                // A stable file: written, fsynced, never touched again.
                let name = format!("s{stable_n}");
                stable_n += 1;
                let ino = fs
                    .create(ROOT_INO, name.as_bytes(), 0o644, 0, 0)
                    .unwrap()
                    .ino;
                let mut content = Vec::new();
                let len = if rng.gen_bool(0.3) {
                    8 * rng.gen_range(1..200)
                } else {
                    8 * rng.gen_range(1..40_000)
                };
                let mut pos = 0;
                while pos < len {
                    let n = (8 * rng.gen_range(1..20_000u64)).min(len - pos);
                    content.extend_from_slice(&o.write(&fs, ino, &name, pos, n));
                    pos += n;
                }
                let fh = fs.open(ino).unwrap();
                fs.fsync(&fh, rng.gen_bool(0.5)).unwrap();
                fs.release(fh).unwrap();
                o.stable.push((name, content, o_point(&crash)));
            }
            3..=5 => {
                let (name, ino) = churn[rng.gen_range(0..churn.len())].clone();
                let pos = 8 * rng.gen_range(0..60_000u64);
                let len = 8 * rng.gen_range(1..30_000u64);
                o.write(&fs, ino, &name, pos, len);
            }
            6 => {
                let (_, ino) = &churn[rng.gen_range(0..churn.len())];
                let size = 8 * rng.gen_range(0..70_000u64);
                fs.truncate(*ino, size).unwrap();
            }
            7 => {
                let (_, ino) = &churn[rng.gen_range(0..churn.len())];
                let mode = [
                    0,
                    libc::FALLOC_FL_KEEP_SIZE,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    libc::FALLOC_FL_ZERO_RANGE,
                ][rng.gen_range(0..4)];
                let pos = 8 * rng.gen_range(0..60_000u64);
                let len = 8 * rng.gen_range(1..20_000u64);
                fs.fallocate(*ino, mode, pos, len).unwrap();
            }
            8 => {
                // Share a stable file's blocks into a churn file at the same offset.
                if let Some((sname, content, _)) = o.stable.last().cloned() {
                    let (name, ino) = churn[rng.gen_range(0..churn.len())].clone();
                    let sino = fs.lookup(ROOT_INO, sname.as_bytes()).unwrap().ino;
                    let len = (content.len() as u64 / bs) * bs;
                    if len > 0 {
                        fs.clone_range(sino, 0, ino, 0, len).unwrap();
                        let ids: Vec<u32> = o.allowed[&sname].iter().copied().collect();
                        o.allowed.entry(name.clone()).or_default().extend(ids);
                    }
                }
            }
            9 => {
                // Namespace churn in a subdirectory.
                let name = format!("n{names_n}");
                names_n += 1;
                fs.create(dir, name.as_bytes(), 0o644, 0, 0).unwrap();
                if rng.gen_bool(0.5) {
                    fs.rename(
                        dir,
                        name.as_bytes(),
                        dir,
                        format!("r{names_n}").as_bytes(),
                        false,
                        false,
                    )
                    .unwrap();
                } else if names_n > 2 {
                    let _ = fs.unlink(dir, format!("n{}", names_n - 2).as_bytes());
                }
            }
            10 => {
                let (_, ino) = &churn[rng.gen_range(0..churn.len())];
                let fh = fs.open(*ino).unwrap();
                fs.fsync(&fh, false).unwrap();
                fs.release(fh).unwrap();
            }
            _ => fs.syncfs().unwrap(),
        }
    }
    fs.abandon();
    drop(fs);
    Run {
        crash,
        oracle: o,
        block_size,
    }
}

fn o_point(crash: &CrashDevice<Arc<MemDevice>>) -> usize {
    crash.events()
}

/// Mounts the image of crash point `t`, checks it, and returns nothing; panics on a failure.
fn check_point(run: &Run, t: usize, pending: &Pending, full: bool) {
    let at = format!("block size {} crash point {t} {pending:?}", run.block_size);
    let image = run.crash.image_at(t, pending).unwrap();
    let dev: Arc<dyn BlockDevice> = Arc::new(image);
    let report = fsck::fsck(Arc::clone(&dev), false);
    assert!(
        report.is_clean(),
        "{at}: fsck before mount: {:?}",
        report.problems
    );
    let opts = MountOptions {
        commit_interval: None,
        ..MountOptions::default()
    };
    let fs = ExtentFs::mount(Arc::clone(&dev), opts).unwrap_or_else(|e| panic!("{at}: mount: {e}"));
    for (name, content, durable_from) in &run.oracle.stable {
        match fs.lookup(ROOT_INO, name.as_bytes()) {
            Ok(st) => {
                let mut buf = vec![0u8; st.size as usize];
                let n = fs.read(st.ino, 0, &mut buf).unwrap();
                assert_eq!(n as u64, st.size);
                if t >= *durable_from {
                    assert!(
                        buf == *content,
                        "{at}: fsynced file {name} is not intact (size {} of {})",
                        buf.len(),
                        content.len()
                    );
                } else {
                    assert!(
                        buf.len() <= content.len(),
                        "{at}: {name} grew past what was written"
                    );
                    run.oracle.check_bytes(name, &buf, &at);
                }
            }
            Err(e) => assert!(
                t < *durable_from,
                "{at}: fsynced file {name} is missing: {e}"
            ),
        }
    }
    for entry in fs.readdir(ROOT_INO, 0).unwrap() {
        let name = String::from_utf8(entry.name.clone()).unwrap();
        if entry.kind != FileType::File || !name.starts_with('c') {
            continue;
        }
        let st = fs.getattr(entry.ino).unwrap();
        let mut buf = vec![0u8; st.size as usize];
        fs.read(entry.ino, 0, &mut buf).unwrap();
        run.oracle.check_bytes(&name, &buf, &at);
    }
    if full {
        fs.unmount().unwrap();
        drop(fs);
        let report = fsck::fsck(dev, false);
        assert!(
            report.is_clean(),
            "{at}: fsck after remount: {:?}",
            report.problems
        );
    } else {
        fs.abandon();
    }
}

fn samples() -> usize {
    std::env::var("EXTENTFS_CRASH_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000)
}

#[test]
fn every_flush_point_recovers_with_fsynced_data_intact() {
    for (bs, seed) in [(4096, 1), (1024, 2)] {
        let run = workload(bs, seed);
        let points = run.crash.flush_points();
        assert!(
            points.len() > 20,
            "the workload flushed only {} times",
            points.len()
        );
        for t in points {
            check_point(&run, t, &Pending::None, true);
        }
    }
}

#[test]
fn sampled_points_with_unflushed_writes_torn_recover() {
    for (bs, seed) in [(4096, 3), (1024, 4)] {
        let run = workload(bs, seed);
        let n = samples() / 2;
        for (i, t) in run.crash.sample_points(seed, n).into_iter().enumerate() {
            let pending = match i % 3 {
                0 => Pending::All,
                _ => Pending::Random {
                    seed: seed * 1_000_003 + i as u64,
                    tear: true,
                },
            };
            check_point(&run, t, &pending, i % 25 == 0);
        }
    }
}

/// After a crash that lost a size raise whose data reached the disk, the block holding the
/// recovered end of file holds bytes past it; every way of growing the file must show zeros
/// there. Found by the exercise: a clone past the end of file exposed them.
#[test]
fn regression_growing_a_file_after_a_crash_never_exposes_bytes_past_the_recovered_eof() {
    type Grow = fn(&ExtentFs, u64, u64);
    let grows: [(&str, Grow); 5] = [
        ("truncate", |fs, ino, _| fs.truncate(ino, 6000).unwrap()),
        ("write", |fs, ino, _| {
            fs.write(ino, 5000, b"x").unwrap();
        }),
        ("fallocate", |fs, ino, _| {
            fs.fallocate(ino, 0, 4096, 1024).unwrap()
        }),
        ("zero range", |fs, ino, _| {
            fs.fallocate(ino, libc::FALLOC_FL_ZERO_RANGE, 4096, 1024)
                .unwrap()
        }),
        ("clone", |fs, ino, other| {
            fs.clone_range(other, 0, ino, 4096, 1024).unwrap()
        }),
    ];
    for (how, grow) in grows {
        let (dev, fs) = common::fresh_bs(8 << 20, 1024);
        let st = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap();
        let other = fs.create(ROOT_INO, b"g", 0o644, 0, 0).unwrap().ino;
        fs.write(other, 0, &[9u8; 1024]).unwrap();
        fs.write(st.ino, 0, &[1u8; 1500]).unwrap();
        fs.syncfs().unwrap();
        // The write reaches the disk; the size it raised is never committed.
        fs.write(st.ino, 1500, &[0xb0; 300]).unwrap();
        fs.drop_caches().unwrap();
        fs.abandon();
        let fs = ExtentFs::mount(Arc::clone(&dev), common::opts()).unwrap();
        let ino = fs.lookup(ROOT_INO, b"f").unwrap().ino;
        let other = fs.lookup(ROOT_INO, b"g").unwrap().ino;
        assert_eq!(
            fs.getattr(ino).unwrap().size,
            1500,
            "{how}: the raise was lost"
        );
        grow(&fs, ino, other);
        let mut buf = vec![0u8; 2548];
        fs.read(ino, 1500, &mut buf).unwrap();
        assert_eq!(
            buf.iter().position(|&b| b != 0),
            None,
            "{how}: bytes past the recovered end of file show"
        );
        // And so after the zeros, not the stale bytes, reached the disk.
        fs.abandon();
        let fs = ExtentFs::mount(Arc::clone(&dev), common::opts()).unwrap();
        let ino = fs.lookup(ROOT_INO, b"f").unwrap().ino;
        let size = fs.getattr(ino).unwrap().size;
        let mut buf = vec![0u8; size.saturating_sub(1500) as usize];
        fs.read(ino, 1500, &mut buf).unwrap();
        assert_eq!(
            buf.iter().position(|&b| b == 0xb0),
            None,
            "{how}: after another crash, bytes past the first recovered end show"
        );
        fs.abandon();
    }
}
