//! Limits and refusals, one test per errno: ENAMETOOLONG, ENOTEMPTY, EISDIR, ENOTDIR, EEXIST,
//! EFBIG, ENOSPC, EMLINK. A refused operation must change nothing: each test checks the state
//! after the refusal and the image with fsck after a remount.
//!
//! EXDEV has no test: an extentfs is one filesystem with no mount points inside it, so rename,
//! link, clone and copy_file_range never cross a device and nothing returns it.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use extentfs::meta::LINK_MAX;
use extentfs::{max_file_size, mkfs, ExtentFs, FileType, MkfsOptions, SetAttr, ROOT_INO};
use iomap_dev::{BlockDevice, MemDevice};

mod common;
use common::*;

#[test]
fn enametoolong_for_names_targets_and_attribute_names() {
    let (dev, fs) = fresh(16 << 20);
    let max = vec![b'n'; 255];
    let over = vec![b'o'; 256];
    let f = fs.create(ROOT_INO, &max, 0o644, 0, 0).unwrap().ino;
    assert_eq!(fs.lookup(ROOT_INO, &max).unwrap().ino, f);
    let d = fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    assert_eq!(
        errno(fs.create(ROOT_INO, &over, 0o644, 0, 0)),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno(fs.mkdir(ROOT_INO, &over, 0o755, 0, 0)),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno(fs.mknod(ROOT_INO, &over, FileType::Fifo, 0o644, 0, 0, 0, &[])),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno(fs.symlink(ROOT_INO, &over, b"t", 0, 0)),
        libc::ENAMETOOLONG
    );
    assert_eq!(errno(fs.lookup(ROOT_INO, &over)), libc::ENAMETOOLONG);
    assert_eq!(errno(fs.unlink(ROOT_INO, &over)), libc::ENAMETOOLONG);
    assert_eq!(errno(fs.rmdir(ROOT_INO, &over)), libc::ENAMETOOLONG);
    assert_eq!(errno(fs.link(f, d, &over)), libc::ENAMETOOLONG);
    assert_eq!(
        errno(fs.rename(ROOT_INO, &max, d, &over, false, false)),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno(fs.rename(ROOT_INO, &over, d, b"x", false, false)),
        libc::ENAMETOOLONG
    );
    // Symlink targets: 4095 bytes at most.
    let t_max = vec![b't'; 4095];
    fs.symlink(ROOT_INO, b"s", &t_max, 0, 0).unwrap();
    assert_eq!(
        errno(fs.symlink(ROOT_INO, b"s2", &vec![b't'; 4096], 0, 0)),
        libc::ENAMETOOLONG
    );
    // Extended attribute names: 255 bytes at most; values past 64 KiB are E2BIG.
    let xmax = vec![b'x'; 255];
    fs.setxattr(f, &xmax, b"v", false, false).unwrap();
    assert_eq!(
        errno(fs.setxattr(f, &vec![b'x'; 256], b"v", false, false)),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno(fs.setxattr(f, b"user.big", &vec![0u8; 65537], false, false)),
        libc::E2BIG
    );
    // Nothing refused was made, and everything else is intact.
    let fs = remount(fs, &dev);
    let mut names: Vec<Vec<u8>> = fs
        .readdir(ROOT_INO, 2)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort();
    assert_eq!(names, vec![b"d".to_vec(), max.clone(), b"s".to_vec()]);
    assert!(fs.readdir(d, 2).unwrap().is_empty());
    assert_eq!(fs.getxattr(f, &xmax).unwrap(), b"v");
    assert_eq!(fs.listxattr(f).unwrap(), vec![xmax]);
    let s = fs.lookup(ROOT_INO, b"s").unwrap().ino;
    assert_eq!(fs.readlink(s).unwrap(), t_max);
}

#[test]
fn enotempty_for_rmdir_and_rename_over_a_non_empty_directory() {
    let (dev, fs) = fresh(16 << 20);
    let full = fs.mkdir(ROOT_INO, b"full", 0o755, 0, 0).unwrap().ino;
    let child = fs.create(full, b"child", 0o644, 0, 0).unwrap().ino;
    let sub = fs.mkdir(full, b"sub", 0o755, 0, 0).unwrap().ino;
    let other = fs.mkdir(ROOT_INO, b"other", 0o755, 0, 0).unwrap().ino;
    assert_eq!(errno(fs.rmdir(ROOT_INO, b"full")), libc::ENOTEMPTY);
    assert_eq!(
        errno(fs.rename(ROOT_INO, b"other", ROOT_INO, b"full", false, false)),
        libc::ENOTEMPTY
    );
    // A directory holding only a subdirectory is not empty either.
    fs.unlink(full, b"child").unwrap();
    assert_eq!(errno(fs.rmdir(ROOT_INO, b"full")), libc::ENOTEMPTY);
    assert_eq!(fs.lookup(full, b"sub").unwrap().ino, sub);
    assert_eq!(fs.lookup(ROOT_INO, b"other").unwrap().ino, other);
    assert_eq!(errno(fs.getattr(child)), libc::ENOENT);
    let fs = remount(fs, &dev);
    assert_eq!(fs.lookup(ROOT_INO, b"full").unwrap().ino, full);
    assert_eq!(fs.getattr(full).unwrap().nlink, 3);
    assert_eq!(fs.getattr(ROOT_INO).unwrap().nlink, 4);
    // Emptied, it goes.
    fs.rmdir(full, b"sub").unwrap();
    fs.rename(ROOT_INO, b"other", ROOT_INO, b"full", false, false)
        .unwrap();
    assert_eq!(fs.lookup(ROOT_INO, b"full").unwrap().ino, other);
    drop(remount(fs, &dev));
}

#[test]
fn eisdir_for_file_operations_on_a_directory() {
    let (dev, fs) = fresh(16 << 20);
    let d = fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap();
    assert_eq!(errno(fs.unlink(ROOT_INO, b"d")), libc::EISDIR);
    assert_eq!(errno(fs.write(d, 0, b"x")), libc::EISDIR);
    assert_eq!(errno(fs.read(d, 0, &mut [0u8; 4])), libc::EISDIR);
    assert_eq!(errno(fs.truncate(d, 0)), libc::EISDIR);
    assert_eq!(
        errno(fs.setattr(
            d,
            SetAttr {
                size: Some(10),
                ..SetAttr::default()
            }
        )),
        libc::EISDIR
    );
    assert_eq!(errno(fs.fallocate(d, 0, 0, 4096)), libc::EISDIR);
    assert_eq!(
        errno(fs.rename(ROOT_INO, b"f", ROOT_INO, b"d", false, false)),
        libc::EISDIR
    );
    let fs = remount(fs, &dev);
    let st = fs.lookup(ROOT_INO, b"d").unwrap();
    assert_eq!((st.ino, st.kind), (d, FileType::Dir));
    assert_eq!(fs.lookup(ROOT_INO, b"f").unwrap().kind, FileType::File);
}

#[test]
fn enotdir_for_directory_operations_on_a_file() {
    let (dev, fs) = fresh(16 << 20);
    let f = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap();
    assert_eq!(errno(fs.rmdir(ROOT_INO, b"f")), libc::ENOTDIR);
    assert_eq!(errno(fs.readdir(f, 0)), libc::ENOTDIR);
    assert_eq!(errno(fs.lookup(f, b"x")), libc::ENOTDIR);
    assert_eq!(errno(fs.create(f, b"x", 0o644, 0, 0)), libc::ENOTDIR);
    assert_eq!(errno(fs.mkdir(f, b"x", 0o755, 0, 0)), libc::ENOTDIR);
    assert_eq!(errno(fs.symlink(f, b"x", b"t", 0, 0)), libc::ENOTDIR);
    assert_eq!(errno(fs.link(f, f, b"x")), libc::ENOTDIR);
    assert_eq!(
        errno(fs.rename(ROOT_INO, b"d", ROOT_INO, b"f", false, false)),
        libc::ENOTDIR
    );
    assert_eq!(
        errno(fs.rename(ROOT_INO, b"d", f, b"x", false, false)),
        libc::ENOTDIR
    );
    assert_eq!(
        errno(fs.rename(f, b"x", ROOT_INO, b"y", false, false)),
        libc::ENOTDIR
    );
    let fs = remount(fs, &dev);
    assert_eq!(fs.lookup(ROOT_INO, b"f").unwrap().ino, f);
    assert_eq!(fs.lookup(ROOT_INO, b"d").unwrap().kind, FileType::Dir);
    assert_eq!(fs.getattr(f).unwrap().nlink, 1);
}

#[test]
fn eexist_for_every_way_of_making_a_name() {
    let (dev, fs) = fresh(16 << 20);
    let f = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    fs.write(f, 0, b"original").unwrap();
    let d = fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    for name in [&b"f"[..], b"d"] {
        assert_eq!(errno(fs.create(ROOT_INO, name, 0o644, 0, 0)), libc::EEXIST);
        assert_eq!(errno(fs.mkdir(ROOT_INO, name, 0o755, 0, 0)), libc::EEXIST);
        assert_eq!(errno(fs.symlink(ROOT_INO, name, b"t", 0, 0)), libc::EEXIST);
        assert_eq!(
            errno(fs.mknod(ROOT_INO, name, FileType::Fifo, 0o644, 0, 0, 0, &[])),
            libc::EEXIST
        );
        assert_eq!(errno(fs.link(f, ROOT_INO, name)), libc::EEXIST);
    }
    fs.create(ROOT_INO, b"g", 0o644, 0, 0).unwrap();
    assert_eq!(
        errno(fs.rename(ROOT_INO, b"g", ROOT_INO, b"f", true, false)),
        libc::EEXIST
    );
    fs.setxattr(f, b"user.k", b"v1", true, false).unwrap();
    assert_eq!(
        errno(fs.setxattr(f, b"user.k", b"v2", true, false)),
        libc::EEXIST
    );
    let fs = remount(fs, &dev);
    let st = fs.lookup(ROOT_INO, b"f").unwrap();
    assert_eq!((st.ino, st.nlink, st.kind), (f, 1, FileType::File));
    assert_eq!(read_all(&fs, f), b"original");
    assert_eq!(fs.lookup(ROOT_INO, b"d").unwrap().ino, d);
    assert_eq!(fs.getattr(d).unwrap().nlink, 2);
    assert_eq!(fs.getxattr(f, b"user.k").unwrap(), b"v1");
    assert_eq!(fs.statfs().files, 4);
}

#[test]
fn efbig_past_the_largest_file_size() {
    let (dev, fs) = fresh(16 << 20);
    let max = max_file_size(4096);
    assert_eq!(max, 4096 << 40);
    let f = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    fs.write(f, 0, b"head").unwrap();
    assert_eq!(errno(fs.write(f, max - 1, b"xy")), libc::EFBIG);
    assert_eq!(errno(fs.write(f, max, b"x")), libc::EFBIG);
    assert_eq!(errno(fs.write(f, u64::MAX, b"x")), libc::EFBIG);
    assert_eq!(errno(fs.truncate(f, max + 1)), libc::EFBIG);
    assert_eq!(
        errno(fs.setattr(
            f,
            SetAttr {
                size: Some(u64::MAX),
                ..SetAttr::default()
            }
        )),
        libc::EFBIG
    );
    assert_eq!(errno(fs.fallocate(f, 0, max - 4096, 8192)), libc::EFBIG);
    assert_eq!(
        errno(fs.fallocate(f, libc::FALLOC_FL_KEEP_SIZE, u64::MAX - 1, 2)),
        libc::EFBIG
    );
    assert_eq!(fs.getattr(f).unwrap().size, 4);
    // Up to the limit itself is fine: a sparse file of the largest size.
    fs.truncate(f, max).unwrap();
    assert_eq!(fs.getattr(f).unwrap().size, max);
    let mut tail = [1u8; 8];
    assert_eq!(fs.read(f, max - 8, &mut tail).unwrap(), 8);
    assert_eq!(tail, [0u8; 8]);
    // An insert that would push the end past the limit is refused.
    assert_eq!(
        errno(fs.fallocate(f, libc::FALLOC_FL_INSERT_RANGE, 0, 4096)),
        libc::EFBIG
    );
    fs.truncate(f, 4).unwrap();
    // A clone whose destination end passes the limit, too.
    let g = fs.create(ROOT_INO, b"g", 0o644, 0, 0).unwrap().ino;
    fs.write(g, 0, &vec![3u8; 8192]).unwrap();
    assert_eq!(
        errno(fs.clone_range(g, 0, f, max - 4096, 8192)),
        libc::EFBIG
    );
    let fs = remount(fs, &dev);
    assert_eq!(fs.getattr(f).unwrap().size, 4);
    assert_eq!(read_all(&fs, f), b"head");
}

#[test]
fn enospc_when_the_device_is_full_and_the_filesystem_stays_usable() {
    let (dev, fs) = fresh(8 << 20);
    let avail = fs.statfs().bavail;
    let f = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    // A preallocation larger than the free space fails.
    assert_eq!(
        errno(fs.fallocate(f, 0, 0, (avail + 64) * 4096)),
        libc::ENOSPC
    );
    assert_eq!(
        fs.getattr(f).unwrap().size,
        0,
        "a failed preallocation grew the file"
    );
    // Whatever it took is given back with the file.
    fs.unlink(ROOT_INO, b"f").unwrap();
    fs.commit().unwrap();
    assert!(fs.statfs().bavail + 4 >= avail);
    let f = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    // Writes fill the device and then fail with ENOSPC at write time.
    let chunk = vec![0x5au8; 128 << 10];
    let mut written = 0u64;
    let err = loop {
        match fs.write(f, written, &chunk) {
            Ok(n) => written += n as u64,
            Err(e) => break e,
        }
    };
    assert_eq!(err.errno(), libc::ENOSPC, "{err}");
    assert!(written >= (avail - 64) * 4096, "only {written} bytes fit");
    let g = fs.create(ROOT_INO, b"g", 0o644, 0, 0).unwrap().ino;
    assert_eq!(errno(fs.write(g, 0, &vec![1u8; 64 << 10])), libc::ENOSPC);
    assert_eq!(errno(fs.fallocate(g, 0, 0, 1 << 20)), libc::ENOSPC);
    let fh = fs.open(f).unwrap();
    fs.fsync(&fh, false).unwrap();
    fs.release(fh).unwrap();
    let fs = remount(fs, &dev);
    let f = fs.lookup(ROOT_INO, b"f").unwrap().ino;
    assert_eq!(fs.getattr(f).unwrap().size, written);
    assert!(read_all(&fs, f).iter().all(|&b| b == 0x5a));
    // Freeing space makes room again.
    fs.truncate(f, written / 2).unwrap();
    fs.commit().unwrap();
    let g = fs.lookup(ROOT_INO, b"g").unwrap().ino;
    let data = vec![7u8; 1 << 20];
    assert_eq!(fs.write(g, 0, &data).unwrap(), data.len());
    let fs = remount(fs, &dev);
    let g = fs.lookup(ROOT_INO, b"g").unwrap().ino;
    assert_eq!(read_all(&fs, g), data);
}

#[test]
fn emlink_for_hard_links_past_the_limit() {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(64 << 20));
    mkfs(Arc::clone(&dev), &MkfsOptions::default()).unwrap();
    let fs = ExtentFs::mount(Arc::clone(&dev), opts()).unwrap();
    let d = fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    let f = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    for i in 1..LINK_MAX {
        fs.link(f, d, format!("{i}").as_bytes()).unwrap();
    }
    assert_eq!(fs.getattr(f).unwrap().nlink, LINK_MAX);
    assert_eq!(errno(fs.link(f, d, b"one-more")), libc::EMLINK);
    assert_eq!(errno(fs.lookup(d, b"one-more")), libc::ENOENT);
    assert_eq!(fs.getattr(f).unwrap().nlink, LINK_MAX);
    let fs = remount(fs, &dev);
    assert_eq!(fs.getattr(f).unwrap().nlink, LINK_MAX);
    assert_eq!(errno(fs.link(f, d, b"one-more")), libc::EMLINK);
    // One link fewer makes room for one more.
    fs.unlink(d, b"1").unwrap();
    fs.link(f, d, b"one-more").unwrap();
    assert_eq!(fs.getattr(f).unwrap().nlink, LINK_MAX);
    drop(remount(fs, &dev));
}

/// Fills directory `p` up to the link limit with subdirectories.
fn fill_with_subdirs(fs: &ExtentFs, p: u64) {
    for i in 2..LINK_MAX {
        fs.mkdir(p, format!("{i}").as_bytes(), 0o755, 0, 0).unwrap();
    }
    assert_eq!(fs.getattr(p).unwrap().nlink, LINK_MAX);
}

#[test]
fn emlink_for_subdirectories_past_the_limit() {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(64 << 20));
    mkfs(Arc::clone(&dev), &MkfsOptions::default()).unwrap();
    let fs = ExtentFs::mount(Arc::clone(&dev), opts()).unwrap();
    let p = fs.mkdir(ROOT_INO, b"p", 0o755, 0, 0).unwrap().ino;
    fill_with_subdirs(&fs, p);
    assert_eq!(errno(fs.mkdir(p, b"over", 0o755, 0, 0)), libc::EMLINK);
    // Files take no directory link: they can still be made.
    fs.create(p, b"file", 0o644, 0, 0).unwrap();
    assert_eq!(errno(fs.lookup(p, b"over")), libc::ENOENT);
    let fs = remount(fs, &dev);
    assert_eq!(fs.getattr(p).unwrap().nlink, LINK_MAX);
    assert_eq!(errno(fs.mkdir(p, b"over", 0o755, 0, 0)), libc::EMLINK);
    fs.rmdir(p, b"2").unwrap();
    fs.mkdir(p, b"over", 0o755, 0, 0).unwrap();
    assert_eq!(fs.getattr(p).unwrap().nlink, LINK_MAX);
    drop(remount(fs, &dev));
}

/// Caught: a rename that moved a directory into a parent at the link limit failed with EMLINK
/// only after the entries had moved, and the half-done rename was logged: the directory was
/// in its new parent with both parents' link counts wrong (fsck found the mismatch).
#[test]
fn regression_emlink_for_a_directory_renamed_into_a_full_parent_changes_nothing() {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(64 << 20));
    mkfs(Arc::clone(&dev), &MkfsOptions::default()).unwrap();
    let fs = ExtentFs::mount(Arc::clone(&dev), opts()).unwrap();
    let p = fs.mkdir(ROOT_INO, b"p", 0o755, 0, 0).unwrap().ino;
    fill_with_subdirs(&fs, p);
    let q = fs.mkdir(ROOT_INO, b"q", 0o755, 0, 0).unwrap().ino;
    let mover = fs.mkdir(q, b"mover", 0o755, 0, 0).unwrap().ino;
    let file = fs.create(p, b"file", 0o644, 0, 0).unwrap().ino;
    assert_eq!(
        errno(fs.rename(q, b"mover", p, b"mover", false, false)),
        libc::EMLINK
    );
    // Exchanging a file in the full parent for a directory elsewhere adds a link there too.
    assert_eq!(
        errno(fs.rename(p, b"file", q, b"mover", false, true)),
        libc::EMLINK
    );
    let check = |fs: &ExtentFs| {
        assert_eq!(fs.lookup(q, b"mover").unwrap().ino, mover);
        assert_eq!(fs.lookup(mover, b"..").unwrap().ino, q);
        assert_eq!(errno(fs.lookup(p, b"mover")), libc::ENOENT);
        assert_eq!(fs.lookup(p, b"file").unwrap().ino, file);
        assert_eq!(fs.getattr(p).unwrap().nlink, LINK_MAX);
        assert_eq!(fs.getattr(q).unwrap().nlink, 3);
    };
    check(&fs);
    // Renames that add no link to the full parent still work.
    fs.rename(p, b"2", p, b"renamed", false, false).unwrap();
    fs.rename(q, b"mover", p, b"3", false, false).unwrap();
    assert_eq!(fs.lookup(p, b"3").unwrap().ino, mover);
    fs.rename(p, b"3", q, b"mover", false, false).unwrap();
    // That replaced the empty p/3; put it back to fill p again.
    fs.mkdir(p, b"3", 0o755, 0, 0).unwrap();
    let fs = remount(fs, &dev);
    check(&fs);
    drop(fs);
}
