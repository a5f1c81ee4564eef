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

#[test]
fn every_block_size_from_512_bytes_to_64_kib_formats_mounts_and_checks_clean() {
    for bs in [512u32, 1024, 2048, 4096, 16384, 65536] {
        let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(64 << 20));
        mkfs(
            Arc::clone(&dev),
            &MkfsOptions {
                block_size: bs,
                log_blocks: None,
            },
        )
        .unwrap();
        let fs = ExtentFs::mount(Arc::clone(&dev), MountOptions::default()).unwrap();
        assert_eq!(fs.block_size(), bs);
        let d = fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
        let small = fs.create(d, b"small", 0o644, 0, 0).unwrap().ino;
        fs.write(small, 0, b"tiny").unwrap();
        let big = fs.create(d, b"big", 0o644, 0, 0).unwrap().ino;
        let data: Vec<u8> = (0..1_000_003u32).map(|i| (i % 253) as u8).collect();
        fs.write(big, 12345, &data).unwrap();
        fs.unmount().unwrap();
        drop(fs);
        let report = extentfs::fsck::fsck(Arc::clone(&dev), false);
        assert!(report.is_clean(), "block size {bs}: {:?}", report.problems);
        let fs = ExtentFs::mount(Arc::clone(&dev), MountOptions::default()).unwrap();
        let d = fs.lookup(ROOT_INO, b"d").unwrap().ino;
        let st = fs.lookup(d, b"big").unwrap();
        assert_eq!(st.size, 12345 + data.len() as u64);
        let mut back = vec![0u8; st.size as usize];
        fs.read(st.ino, 0, &mut back).unwrap();
        assert!(
            back[..12345].iter().all(|&b| b == 0),
            "block size {bs}: the gap is not zero"
        );
        assert!(back[12345..] == data[..], "block size {bs}: data differs");
        let s = fs.lookup(d, b"small").unwrap();
        let mut b = [0u8; 8];
        assert_eq!(fs.read(s.ino, 0, &mut b).unwrap(), 4);
        assert_eq!(&b[..4], b"tiny");
    }
}

#[test]
fn bad_geometry_is_refused_with_a_reason() {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(64 << 20));
    for bs in [0u32, 256, 3000, 131072] {
        let err = mkfs(
            Arc::clone(&dev),
            &MkfsOptions {
                block_size: bs,
                log_blocks: None,
            },
        )
        .unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL, "block size {bs}: {err}");
        assert!(err.to_string().contains("block size"), "{err}");
    }
    let tiny: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(256 << 10));
    let err = mkfs(tiny, &MkfsOptions::default()).unwrap_err();
    assert!(err.to_string().contains("needs at least"), "{err}");
}

#[test]
fn the_periodic_commit_makes_changes_durable_without_fsync() {
    use iomap_dev::{CrashDevice, Pending};
    use std::time::{Duration, Instant};
    let mem = Arc::new(MemDevice::new(16 << 20));
    mkfs(mem.clone(), &MkfsOptions::default()).unwrap();
    let crash = Arc::new(CrashDevice::new(mem).unwrap());
    let opts = MountOptions {
        commit_interval: Some(Duration::from_millis(20)),
        ..MountOptions::default()
    };
    let fs = ExtentFs::mount(crash.clone(), opts).unwrap();
    let before = crash.events();
    fs.create(ROOT_INO, b"later", 0o644, 0, 0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let found = loop {
        let image: Arc<dyn BlockDevice> =
            Arc::new(crash.image_at(crash.events(), &Pending::None).unwrap());
        let ro = MountOptions {
            read_only: true,
            commit_interval: None,
            ..MountOptions::default()
        };
        let seen = ExtentFs::mount(image, ro)
            .unwrap()
            .lookup(ROOT_INO, b"later")
            .is_ok();
        if seen || Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        found,
        "no commit within 20 s ({} device events)",
        crash.events() - before
    );
    fs.abandon();
}

#[test]
fn a_read_only_mount_replays_in_memory_and_writes_nothing() {
    use iomap_dev::CrashDevice;
    let mem = Arc::new(MemDevice::new(16 << 20));
    mkfs(mem.clone(), &MkfsOptions::default()).unwrap();
    let opts = MountOptions {
        commit_interval: None,
        ..MountOptions::default()
    };
    let fs = ExtentFs::mount(mem.clone(), opts.clone()).unwrap();
    let f = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    fs.write(f, 0, b"committed but not checkpointed").unwrap();
    fs.syncfs().unwrap();
    fs.abandon();
    drop(fs);
    let crash = Arc::new(CrashDevice::new(mem).unwrap());
    let ro = MountOptions {
        read_only: true,
        ..opts
    };
    let fs = ExtentFs::mount(crash.clone(), ro).unwrap();
    assert!(fs.replayed().records > 0);
    let st = fs.lookup(ROOT_INO, b"f").unwrap();
    let mut b = vec![0u8; st.size as usize];
    fs.read(st.ino, 0, &mut b).unwrap();
    assert_eq!(b, b"committed but not checkpointed");
    assert_eq!(
        fs.create(ROOT_INO, b"g", 0o644, 0, 0).unwrap_err().errno(),
        libc::EROFS
    );
    assert_eq!(fs.write(st.ino, 0, b"x").unwrap_err().errno(), libc::EROFS);
    assert_eq!(fs.truncate(st.ino, 0).unwrap_err().errno(), libc::EROFS);
    fs.unmount().unwrap();
    assert_eq!(crash.events(), 0, "a read-only mount wrote to the device");
}
