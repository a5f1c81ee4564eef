//! Space accounting: reservations made at write time are given back exactly once, so ENOSPC
//! comes at write time and never at writeback.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use extentfs::{mkfs, ExtentFs, MkfsOptions, MountOptions, ROOT_INO};
use iomap_dev::{BlockDevice, MemDevice};

fn mount(bytes: u64) -> Arc<ExtentFs> {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(bytes));
    mkfs(Arc::clone(&dev), &MkfsOptions::default()).unwrap();
    let opts = MountOptions {
        commit_interval: None,
        ..MountOptions::default()
    };
    ExtentFs::mount(dev, opts).unwrap()
}

#[test]
fn writeback_gives_back_a_reservation_once() {
    let fs = mount(32 << 20);
    let a0 = fs.statfs().bavail;
    let f = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    let g = fs.create(ROOT_INO, b"g", 0o644, 0, 0).unwrap().ino;
    fs.write(f, 0, &vec![1u8; 64 * 4096]).unwrap();
    fs.write(g, 0, &vec![2u8; 64 * 4096]).unwrap();
    let a1 = fs.statfs().bavail;
    assert!(
        a0 - a1 >= 128,
        "two 64-block writes reserved only {} blocks",
        a0 - a1
    );
    let fh = fs.open(f).unwrap();
    fs.fsync(&fh, false).unwrap();
    fs.release(fh).unwrap();
    let a2 = fs.statfs().bavail;
    // The first file's blocks are now allocated instead of reserved; the second's are still
    // reserved. Checkpoint headroom may move by a few blocks, no more.
    assert!(
        a0 - a2 >= 124,
        "after writeback only {} blocks are accounted",
        a0 - a2
    );
    assert!(
        a0 - a2 <= 140,
        "after writeback {} blocks are accounted",
        a0 - a2
    );
}

#[test]
fn filling_the_device_fails_at_write_time_and_fsync_succeeds() {
    let fs = mount(8 << 20);
    let f = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    let chunk = vec![7u8; 256 << 10];
    let mut written = 0u64;
    let err = loop {
        match fs.write(f, written, &chunk) {
            Ok(n) if n == chunk.len() => written += n as u64,
            Ok(n) => written += n as u64,
            Err(e) => break e,
        }
    };
    assert_eq!(err.errno(), libc::ENOSPC, "{err}");
    assert!(written > 4 << 20, "only {written} bytes fit");
    let fh = fs.open(f).unwrap();
    fs.fsync(&fh, false).unwrap();
    fs.release(fh).unwrap();
    assert_eq!(fs.getattr(f).unwrap().size, written);
    fs.drop_caches().unwrap();
    let mut back = vec![0u8; written as usize];
    fs.read(f, 0, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 7));
    // Deleting gives the space back for new writes.
    fs.unlink(ROOT_INO, b"f").unwrap();
    fs.commit().unwrap();
    let g = fs.create(ROOT_INO, b"g", 0o644, 0, 0).unwrap().ino;
    assert_eq!(fs.write(g, 0, &chunk).unwrap(), chunk.len());
}
