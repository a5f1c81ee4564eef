//! Device failures under the filesystem: a failed data write reaches fsync once (R16, R19)
//! and leaves metadata consistent; a failed copy-on-write gives its new blocks back; a failed
//! log write shuts the filesystem down and the image still mounts as of the last commit.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use extentfs::format::{Superblock, LOG_OFFSET};
use extentfs::{fsck, mkfs, ExtentFs, MkfsOptions, MountOptions, ROOT_INO};
use iomap_dev::{BlockDeviceExt, DevAddr, FaultDevice, FaultRule, MemDevice, Op};

const DEV_BYTES: u64 = 32 << 20;

fn setup() -> (Arc<FaultDevice<Arc<MemDevice>>>, Arc<ExtentFs>, u64) {
    let mem = Arc::new(MemDevice::new(DEV_BYTES));
    mkfs(mem.clone(), &MkfsOptions::default()).unwrap();
    let mut sb = [0u8; 4096];
    mem.read_at(DevAddr(0), &mut sb).unwrap();
    let data_start = Superblock::decode(&sb, DEV_BYTES).unwrap().data_start * 4096;
    let dev = Arc::new(FaultDevice::new(mem));
    let opts = MountOptions {
        commit_interval: None,
        ..MountOptions::default()
    };
    let fs = ExtentFs::mount(dev.clone(), opts).unwrap();
    (dev, fs, data_start)
}

fn remount(dev: &Arc<FaultDevice<Arc<MemDevice>>>) -> Arc<ExtentFs> {
    let opts = MountOptions {
        commit_interval: None,
        ..MountOptions::default()
    };
    ExtentFs::mount(dev.clone(), opts).unwrap()
}

#[test]
fn a_failed_data_write_is_reported_to_fsync_once_and_leaves_no_stale_data() {
    let (dev, fs, data_start) = setup();
    let f = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    let h1 = fs.open(f).unwrap();
    let h2 = fs.open(f).unwrap();
    fs.write(f, 0, &vec![9u8; 256 << 10]).unwrap();
    dev.add_rule(FaultRule::range(Op::Write, data_start, DEV_BYTES, libc::EIO).times(1));
    assert_eq!(fs.fsync(&h1, false).unwrap_err().errno(), libc::EIO);
    fs.fsync(&h1, false).unwrap();
    // Another handle open before the error sees it too, once.
    assert_eq!(fs.fsync(&h2, false).unwrap_err().errno(), libc::EIO);
    fs.fsync(&h2, false).unwrap();
    assert_eq!(dev.injected().len(), 1);
    // The blocks stay unwritten: once the cache is dropped they read as zeros.
    fs.drop_caches().unwrap();
    let mut back = vec![1u8; 256 << 10];
    fs.read(f, 0, &mut back).unwrap();
    assert!(
        back.iter().all(|&b| b == 0),
        "a failed write left bytes behind"
    );
    fs.release(h1).unwrap();
    fs.release(h2).unwrap();
    fs.unmount().unwrap();
    drop(fs);
    let r = fsck::fsck(dev.clone(), false);
    assert!(r.is_clean(), "{:?}", r.problems);
    let fs = remount(&dev);
    let st = fs.lookup(ROOT_INO, b"f").unwrap();
    let mut back = vec![1u8; st.size as usize];
    fs.read(st.ino, 0, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0));
}

#[test]
fn a_failed_copy_on_write_keeps_the_shared_data_and_gives_its_blocks_back() {
    let (dev, fs, data_start) = setup();
    let a = fs.create(ROOT_INO, b"a", 0o644, 0, 0).unwrap().ino;
    let b = fs.create(ROOT_INO, b"b", 0o644, 0, 0).unwrap().ino;
    fs.write(a, 0, &vec![5u8; 64 << 10]).unwrap();
    fs.syncfs().unwrap();
    fs.clone_range(a, 0, b, 0, 64 << 10).unwrap();
    fs.syncfs().unwrap();
    let free_before = fs.statfs().bfree;
    fs.write(b, 0, &vec![6u8; 64 << 10]).unwrap();
    dev.add_rule(FaultRule::range(Op::Write, data_start, DEV_BYTES, libc::EIO).times(1));
    let hb = fs.open(b).unwrap();
    assert_eq!(fs.fsync(&hb, false).unwrap_err().errno(), libc::EIO);
    fs.release(hb).unwrap();
    fs.syncfs().unwrap();
    assert_eq!(
        fs.statfs().bfree,
        free_before,
        "the failed copy's blocks were not given back"
    );
    fs.drop_caches().unwrap();
    for ino in [a, b] {
        let mut back = vec![0u8; 64 << 10];
        fs.read(ino, 0, &mut back).unwrap();
        assert!(
            back.iter().all(|&x| x == 5),
            "inode {ino} lost the shared data"
        );
    }
    fs.unmount().unwrap();
    drop(fs);
    let r = fsck::fsck(dev, false);
    assert!(r.is_clean(), "{:?}", r.problems);
}

#[test]
fn a_failed_log_write_shuts_down_and_the_image_mounts_as_last_committed() {
    let (dev, fs, data_start) = setup();
    let f = fs.create(ROOT_INO, b"kept", 0o644, 0, 0).unwrap().ino;
    fs.write(f, 0, &vec![3u8; 100_000]).unwrap();
    let h = fs.open(f).unwrap();
    fs.fsync(&h, false).unwrap();
    fs.release(h).unwrap();
    fs.create(ROOT_INO, b"lost", 0o644, 0, 0).unwrap();
    dev.add_rule(FaultRule::range(Op::Write, LOG_OFFSET, data_start, libc::EIO).persistent());
    assert_eq!(fs.commit().unwrap_err().errno(), libc::EIO);
    // Shut down: nothing more is accepted.
    assert_eq!(
        fs.create(ROOT_INO, b"after", 0o644, 0, 0)
            .unwrap_err()
            .errno(),
        libc::EIO
    );
    fs.abandon();
    drop(fs);
    dev.clear_rules();
    let r = fsck::fsck(dev.clone(), false);
    assert!(r.is_clean(), "{:?}", r.problems);
    let fs = remount(&dev);
    let st = fs.lookup(ROOT_INO, b"kept").unwrap();
    let mut back = vec![0u8; st.size as usize];
    fs.read(st.ino, 0, &mut back).unwrap();
    assert_eq!(back, vec![3u8; 100_000]);
    assert_eq!(
        fs.lookup(ROOT_INO, b"lost").unwrap_err().errno(),
        libc::ENOENT
    );
}
