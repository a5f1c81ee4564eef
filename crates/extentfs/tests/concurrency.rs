//! Many threads at once on one filesystem: writers and readers on their own files and on
//! disjoint regions of a shared file, namespace churn, fsync, syncfs, cache drops and commits.
//! Every read is checked against the thread's own model; the run must finish (a watchdog
//! fails it otherwise), fsck must be clean after unmount, and the data must survive a remount.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use extentfs::{fsck, mkfs, ExtentFs, MkfsOptions, MountOptions, ROOT_INO};
use iomap_dev::{BlockDevice, MemDevice};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const REGION: u64 = 512 << 10;

fn fill(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen()).collect()
}

/// Writes, reads back and sometimes truncates and fsyncs `[base, base + REGION)` of `ino`.
fn region_worker(
    fs: &ExtentFs,
    ino: u64,
    base: u64,
    seed: u64,
    iters: usize,
    own_file: bool,
) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut model = vec![0u8; REGION as usize];
    let mut fh = Some(fs.open(ino).unwrap());
    for i in 0..iters {
        let pos = rng.gen_range(0..REGION - 1);
        let len = rng.gen_range(1..(REGION - pos).min(96 << 10));
        let data = fill(seed * 7919 + i as u64, len as usize);
        fs.write(ino, base + pos, &data).unwrap();
        model[pos as usize..(pos + len) as usize].copy_from_slice(&data);
        let (rp, rl) = (rng.gen_range(0..REGION), rng.gen_range(1..64 << 10));
        let rl = rl.min(REGION - rp) as usize;
        let mut buf = vec![0u8; rl];
        let n = fs.read(ino, base + rp, &mut buf).unwrap();
        assert!(n <= rl);
        assert!(
            buf[..n] == model[rp as usize..rp as usize + n],
            "thread {seed}: read at {} differs",
            base + rp
        );
        match rng.gen_range(0..20) {
            0 => fs.fsync(fh.as_ref().unwrap(), rng.gen_bool(0.5)).unwrap(),
            1 if own_file => {
                let size = rng.gen_range(0..REGION);
                fs.truncate(ino, size).unwrap();
                model[size as usize..].fill(0);
            }
            2 => {
                fs.release(fh.take().unwrap()).unwrap();
                fh = Some(fs.open(ino).unwrap());
            }
            _ => {}
        }
    }
    fs.release(fh.take().unwrap()).unwrap();
    model
}

#[test]
fn threads_at_once_keep_every_byte_and_finish() {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(256 << 20));
    mkfs(Arc::clone(&dev), &MkfsOptions::default()).unwrap();
    let opts = MountOptions {
        commit_interval: Some(Duration::from_millis(50)),
        ..MountOptions::default()
    };
    let fs = ExtentFs::mount(Arc::clone(&dev), opts).unwrap();
    let shared = fs.create(ROOT_INO, b"shared", 0o644, 0, 0).unwrap().ino;
    let own: Vec<u64> = (0..2)
        .map(|i| {
            fs.create(ROOT_INO, format!("own{i}").as_bytes(), 0o644, 0, 0)
                .unwrap()
                .ino
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let mut handles = Vec::new();
    for (i, &ino) in own.iter().enumerate() {
        let (fs, tx) = (Arc::clone(&fs), tx.clone());
        handles.push(std::thread::spawn(move || {
            let m = region_worker(&fs, ino, 0, 10 + i as u64, 300, true);
            tx.send(()).unwrap();
            (ino, 0, m)
        }));
    }
    for i in 0..2u64 {
        let (fs, tx) = (Arc::clone(&fs), tx.clone());
        handles.push(std::thread::spawn(move || {
            let m = region_worker(&fs, shared, i * REGION, 20 + i, 300, false);
            tx.send(()).unwrap();
            (shared, i * REGION, m)
        }));
    }
    let churn = {
        let (fs, stop) = (Arc::clone(&fs), Arc::clone(&stop));
        std::thread::spawn(move || {
            let d = fs.mkdir(ROOT_INO, b"churn", 0o755, 0, 0).unwrap().ino;
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                let name = format!("f{n}");
                let ino = fs.create(d, name.as_bytes(), 0o644, 0, 0).unwrap().ino;
                fs.write(ino, 0, &fill(n, 10_000)).unwrap();
                fs.rename(d, name.as_bytes(), d, b"target", false, false)
                    .unwrap();
                if n % 3 == 0 {
                    fs.mkdir(d, b"sub", 0o755, 0, 0).unwrap();
                    fs.rmdir(d, b"sub").unwrap();
                }
                n += 1;
            }
            n
        })
    };
    let syncer = {
        let (fs, stop) = (Arc::clone(&fs), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Acquire) {
                match n % 3 {
                    0 => fs.syncfs().unwrap(),
                    1 => fs.drop_caches().unwrap(),
                    _ => fs.commit().unwrap(),
                }
                n += 1;
            }
        })
    };
    for _ in 0..handles.len() {
        rx.recv_timeout(Duration::from_secs(120))
            .expect("a worker is stuck: deadlock or livelock");
    }
    stop.store(true, Ordering::Release);
    let models: Vec<(u64, u64, Vec<u8>)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let renamed = churn.join().unwrap();
    syncer.join().unwrap();
    assert!(renamed > 0);
    fs.unmount().unwrap();
    drop(fs);
    let r = fsck::fsck(Arc::clone(&dev), false);
    assert!(r.is_clean(), "{:?}", r.problems);
    let fs = ExtentFs::mount(dev, MountOptions::default()).unwrap();
    for (ino, base, model) in models {
        let mut buf = vec![0u8; REGION as usize];
        let n = fs.read(ino, base, &mut buf).unwrap();
        buf[n..].fill(0);
        assert!(buf == model, "inode {ino} at {base} differs after remount");
    }
}
