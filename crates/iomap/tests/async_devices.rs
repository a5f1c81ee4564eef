//! The engine over devices that complete requests later, on their own threads and out of
//! order: the file device's pool, io_uring (buffered and O_DIRECT), and a memory device behind
//! a fault device that holds random requests back. Several threads write, read, read ahead,
//! fsync and drop the cache on one raw image at once; every read is checked against a model,
//! and after a final fsync and cache drop the device holds exactly the model's bytes.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first unexpected error"
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use iomap::iomap_dev::{
    BlockDevice, BlockDeviceExt, DevAddr, DeviceOptions, FaultDevice, FaultRule, FileDevice,
    MemDevice, Op, UringDevice,
};
use iomap::{
    buffered_read, buffered_write, readahead, CacheConfig, LinearMap, Mapping, OpenFile, PageCache,
    SliceSource, WritebackOps,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const THREADS: u64 = 4;
const REGION: u64 = 1 << 20;
const SIZE: u64 = THREADS * REGION;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("iomap-async-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Runs the workload on `dev` and checks the result on it.
fn exercise(dev: Arc<dyn BlockDevice>, block_size: u32, seed: u64) {
    let cache = PageCache::new(CacheConfig::default()).unwrap();
    let mapping = Arc::new(Mapping::new(cache, Arc::clone(&dev), block_size).unwrap());
    let map = Arc::new(LinearMap::new(DevAddr(0), SIZE));
    mapping.set_size(SIZE);
    let wb: Arc<dyn WritebackOps> = map.clone();
    let models: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (mapping, map, wb) = (&mapping, &map, &wb);
                s.spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(seed * 100 + t);
                    let base = t * REGION;
                    let mut model = vec![0u8; REGION as usize];
                    let file = OpenFile::open(mapping);
                    for step in 0..300 {
                        let off = rng.gen_range(0..REGION - 1);
                        let len = rng.gen_range(1..=(REGION - off).min(40_000));
                        match rng.gen_range(0..10) {
                            0..=3 => {
                                let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                                let mut src = SliceSource::new(&data);
                                let n = buffered_write(mapping, &**map, base + off, len, &mut src)
                                    .unwrap();
                                assert_eq!(n, len);
                                model[off as usize..(off + len) as usize].copy_from_slice(&data);
                            }
                            4..=6 => {
                                let mut buf = vec![0u8; len as usize];
                                let n =
                                    buffered_read(mapping, &**map, base + off, &mut buf).unwrap();
                                assert_eq!(n as u64, len);
                                assert!(
                                    buf == model[off as usize..(off + len) as usize],
                                    "thread {t} step {step}: read at {off}+{len} differs"
                                );
                            }
                            7 => readahead(mapping, &**map, base + off, len).unwrap(),
                            8 => file.fsync(wb, base, base + REGION, step % 2 == 0).unwrap(),
                            _ => {
                                mapping.release_clean(0, u64::MAX);
                            }
                        }
                    }
                    file.fsync(wb, 0, u64::MAX, false).unwrap();
                    model
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    mapping.release_clean(0, u64::MAX);
    let mut all = vec![0u8; SIZE as usize];
    assert_eq!(
        buffered_read(&mapping, &*map, 0, &mut all).unwrap() as u64,
        SIZE
    );
    let mut on_dev = vec![0u8; SIZE as usize];
    dev.read_at(DevAddr(0), &mut on_dev).unwrap();
    for (t, model) in models.iter().enumerate() {
        let r = t * REGION as usize..(t + 1) * REGION as usize;
        assert!(all[r.clone()] == model[..], "region {t} read back differs");
        assert!(on_dev[r] == model[..], "region {t} on the device differs");
    }
}

#[test]
fn the_engine_over_the_file_device_pool() {
    let path = tmp("pool");
    let dev = FileDevice::create(&path, SIZE, DeviceOptions::default()).unwrap();
    exercise(Arc::new(dev), 4096, 1);
    std::fs::remove_file(path).ok();
}

#[test]
fn the_engine_over_io_uring() {
    let path = tmp("uring");
    let dev = UringDevice::create(&path, SIZE, DeviceOptions::default()).unwrap();
    exercise(Arc::new(dev), 1024, 2);
    std::fs::remove_file(path).ok();
}

#[test]
fn the_engine_over_io_uring_with_o_direct() {
    let path = tmp("uring-direct");
    let opts = DeviceOptions {
        direct: true,
        ..DeviceOptions::default()
    };
    let dev = UringDevice::create(&path, SIZE, opts).unwrap();
    let block = dev.logical_block_size().max(512);
    exercise(Arc::new(dev), block, 3);
    std::fs::remove_file(path).ok();
}

#[test]
fn the_engine_over_a_device_that_completes_out_of_order() {
    for seed in 0..3 {
        let dev = FaultDevice::new(MemDevice::new(SIZE));
        // About a third of reads and writes are held back, so completions arrive on the timer
        // thread in another order than their submissions.
        for (op, salt) in [(Op::Read, 1), (Op::Write, 2), (Op::Flush, 3)] {
            dev.add_rule(
                FaultRule::random(op, 0.3, seed * 10 + salt, 0)
                    .delay(Duration::from_micros(200 + 150 * salt)),
            );
        }
        exercise(Arc::new(dev), 512 << seed, 10 + seed);
    }
}
