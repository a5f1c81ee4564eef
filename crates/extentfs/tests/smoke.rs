//! A first end-to-end check: format, write, fsync, unmount, mount, read back.

#![allow(clippy::unwrap_used)]
use std::sync::Arc;

use extentfs::{mkfs, ExtentFs, MkfsOptions, MountOptions, ROOT_INO};
use iomap_dev::{BlockDevice, MemDevice};

#[test]
fn smoke() {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(64 << 20));
    mkfs(Arc::clone(&dev), &MkfsOptions::default()).unwrap();
    let fs = ExtentFs::mount(Arc::clone(&dev), MountOptions::default()).unwrap();
    let f = fs.create(ROOT_INO, b"a", 0o644, 0, 0).unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(fs.write(f.ino, 0, &data).unwrap(), data.len());
    let small = fs.create(ROOT_INO, b"small", 0o644, 0, 0).unwrap();
    fs.write(small.ino, 0, b"hello").unwrap();
    let fh = fs.open(f.ino).unwrap();
    fs.fsync(&fh, false).unwrap();
    fs.release(fh).unwrap();
    fs.unmount().unwrap();
    drop(fs);
    let fs = ExtentFs::mount(Arc::clone(&dev), MountOptions::default()).unwrap();
    assert!(fs.was_clean());
    let st = fs.lookup(ROOT_INO, b"a").unwrap();
    assert_eq!(st.size, data.len() as u64);
    let mut back = vec![0u8; data.len()];
    assert_eq!(fs.read(st.ino, 0, &mut back).unwrap(), data.len());
    assert!(back == data);
    let s = fs.lookup(ROOT_INO, b"small").unwrap();
    let mut b = [0u8; 10];
    assert_eq!(fs.read(s.ino, 0, &mut b).unwrap(), 5);
    assert_eq!(&b[..5], b"hello");
}
