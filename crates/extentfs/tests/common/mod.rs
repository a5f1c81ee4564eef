//! Making, remounting and checking a filesystem on a memory device, for the operation tests.

#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;

use extentfs::{fsck, mkfs, ExtentFs, MkfsOptions, MountOptions};
use iomap_dev::{BlockDevice, MemDevice};

/// Mount options without the periodic commit, so that only the test decides what is durable.
pub fn opts() -> MountOptions {
    MountOptions {
        commit_interval: None,
        ..MountOptions::default()
    }
}

/// A fresh filesystem of `bytes` with `bs`-byte blocks, mounted.
pub fn fresh_bs(bytes: u64, bs: u32) -> (Arc<dyn BlockDevice>, Arc<ExtentFs>) {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(bytes));
    let mk = MkfsOptions {
        block_size: bs,
        log_blocks: None,
    };
    mkfs(Arc::clone(&dev), &mk).unwrap();
    let fs = ExtentFs::mount(Arc::clone(&dev), opts()).unwrap();
    (dev, fs)
}

/// A fresh filesystem of `bytes` with 4 KiB blocks, mounted.
pub fn fresh(bytes: u64) -> (Arc<dyn BlockDevice>, Arc<ExtentFs>) {
    fresh_bs(bytes, 4096)
}

/// Fails the test, naming `at`, if fsck finds anything wrong with the image.
pub fn assert_clean(dev: &Arc<dyn BlockDevice>, at: &str) {
    let report = fsck::fsck(Arc::clone(dev), false);
    assert!(report.is_clean(), "{at}: fsck: {:?}", report.problems);
}

/// Unmounts, checks the image, and mounts it again.
pub fn remount(fs: Arc<ExtentFs>, dev: &Arc<dyn BlockDevice>) -> Arc<ExtentFs> {
    fs.unmount().unwrap();
    drop(fs);
    assert_clean(dev, "after unmount");
    let fs = ExtentFs::mount(Arc::clone(dev), opts()).unwrap();
    assert!(fs.was_clean());
    fs
}

/// The errno of a result that must be an error.
pub fn errno<T: std::fmt::Debug>(r: extentfs::Result<T>) -> i32 {
    r.unwrap_err().errno()
}

/// The whole file, checked to read in full.
pub fn read_all(fs: &ExtentFs, ino: u64) -> Vec<u8> {
    let size = fs.getattr(ino).unwrap().size;
    let mut buf = vec![0u8; size as usize];
    let n = fs.read(ino, 0, &mut buf).unwrap();
    assert_eq!(n as u64, size, "short read of inode {ino}");
    buf
}

/// `len` bytes that differ by `seed` and are never zero (so a hole never passes for data).
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) | 1)
        .collect()
}
