//! Per-operation tests of the namespace and inode operations: create, lookup, unlink, mkdir,
//! rmdir, rename (plain, NOREPLACE, EXCHANGE), hard links, symlinks, special files, readdir
//! offsets while entries come and go, extended attributes, setattr, statfs, and files unlinked
//! while open (freed at last close, or at the next mount after a crash or an unmount).
//! Each test remounts and checks the image with fsck where the result must be durable.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;

use extentfs::{fsck, mkfs, DirEntry, ExtentFs, FileType, MkfsOptions, SetAttr, Time, ROOT_INO};
use iomap_dev::{BlockDevice, MemDevice};

/// Names in `dir`, without "." and "..", in readdir order.
mod common;
use common::*;

fn names(fs: &ExtentFs, dir: u64) -> Vec<Vec<u8>> {
    fs.readdir(dir, 0)
        .unwrap()
        .into_iter()
        .filter(|e| e.name != b"." && e.name != b"..")
        .map(|e| e.name)
        .collect()
}

#[test]
fn create_lookup_getattr_and_unlink() {
    let (dev, fs) = fresh(16 << 20);
    let root0 = fs.getattr(ROOT_INO).unwrap();
    let st = fs.create(ROOT_INO, b"file", 0o640, 1000, 100).unwrap();
    assert_eq!(st.kind, FileType::File);
    assert_eq!((st.perm, st.uid, st.gid), (0o640, 1000, 100));
    assert_eq!((st.nlink, st.size, st.blocks), (1, 0, 0));
    assert_ne!(st.ino, ROOT_INO);
    let looked = fs.lookup(ROOT_INO, b"file").unwrap();
    assert_eq!(looked, st);
    assert_eq!(fs.lookup(ROOT_INO, b".").unwrap().ino, ROOT_INO);
    assert_eq!(fs.lookup(ROOT_INO, b"..").unwrap().ino, ROOT_INO);
    let root1 = fs.getattr(ROOT_INO).unwrap();
    assert!(root1.mtime >= root0.mtime && root1.ctime >= root0.ctime);
    assert_eq!(
        root1.size,
        root0.size + 1,
        "a directory's size counts entries"
    );
    assert_eq!(errno(fs.lookup(ROOT_INO, b"missing")), libc::ENOENT);
    // Names are exact bytes: any byte but '/' and NUL.
    let odd: &[u8] = b"\xff sp\xc3\xa9cial\tname";
    let o = fs.create(ROOT_INO, odd, 0o600, 0, 0).unwrap().ino;
    assert_eq!(fs.lookup(ROOT_INO, odd).unwrap().ino, o);
    for bad in [&b""[..], b".", b"..", b"a/b", b"nul\0"] {
        assert_eq!(errno(fs.create(ROOT_INO, bad, 0o644, 0, 0)), libc::EINVAL);
    }
    fs.write(st.ino, 0, b"contents").unwrap();
    let fs = remount(fs, &dev);
    let st2 = fs.lookup(ROOT_INO, b"file").unwrap();
    assert_eq!(st2.ino, st.ino);
    assert_eq!(
        (st2.perm, st2.uid, st2.gid, st2.size),
        (0o640, 1000, 100, 8)
    );
    assert_eq!(fs.lookup(ROOT_INO, odd).unwrap().ino, o);
    fs.unlink(ROOT_INO, b"file").unwrap();
    assert_eq!(errno(fs.lookup(ROOT_INO, b"file")), libc::ENOENT);
    assert_eq!(errno(fs.getattr(st.ino)), libc::ENOENT);
    assert_eq!(errno(fs.unlink(ROOT_INO, b"file")), libc::ENOENT);
    let fs = remount(fs, &dev);
    assert_eq!(errno(fs.lookup(ROOT_INO, b"file")), libc::ENOENT);
    assert_eq!(names(&fs, ROOT_INO), vec![odd.to_vec()]);
}

#[test]
fn mkdir_rmdir_keep_directory_link_counts_and_parents() {
    let (dev, fs) = fresh(16 << 20);
    assert_eq!(fs.getattr(ROOT_INO).unwrap().nlink, 2);
    let a = fs.mkdir(ROOT_INO, b"a", 0o750, 5, 6).unwrap();
    assert_eq!((a.kind, a.nlink, a.perm), (FileType::Dir, 2, 0o750));
    assert_eq!(fs.getattr(ROOT_INO).unwrap().nlink, 3);
    let b = fs.mkdir(a.ino, b"b", 0o755, 0, 0).unwrap();
    fs.mkdir(a.ino, b"c", 0o755, 0, 0).unwrap();
    fs.create(a.ino, b"f", 0o644, 0, 0).unwrap();
    assert_eq!(
        fs.getattr(a.ino).unwrap().nlink,
        4,
        "2 + two subdirectories"
    );
    assert_eq!(fs.getattr(ROOT_INO).unwrap().nlink, 3);
    assert_eq!(fs.lookup(b.ino, b"..").unwrap().ino, a.ino);
    assert_eq!(fs.lookup(a.ino, b"..").unwrap().ino, ROOT_INO);
    let dots = fs.readdir(b.ino, 0).unwrap();
    assert_eq!(dots.len(), 2);
    assert_eq!((dots[0].name.as_slice(), dots[0].ino), (&b"."[..], b.ino));
    assert_eq!((dots[1].name.as_slice(), dots[1].ino), (&b".."[..], a.ino));
    let fs = remount(fs, &dev);
    assert_eq!(fs.getattr(a.ino).unwrap().nlink, 4);
    assert_eq!(fs.lookup(b.ino, b"..").unwrap().ino, a.ino);
    assert_eq!(errno(fs.rmdir(ROOT_INO, b"a")), libc::ENOTEMPTY);
    assert_eq!(errno(fs.rmdir(a.ino, b"f")), libc::ENOTDIR);
    assert_eq!(errno(fs.rmdir(a.ino, b"..")), libc::ENOTEMPTY);
    assert_eq!(errno(fs.rmdir(a.ino, b".")), libc::EINVAL);
    assert_eq!(errno(fs.rmdir(a.ino, b"nope")), libc::ENOENT);
    fs.rmdir(a.ino, b"b").unwrap();
    assert_eq!(errno(fs.getattr(b.ino)), libc::ENOENT);
    assert_eq!(fs.getattr(a.ino).unwrap().nlink, 3);
    fs.rmdir(a.ino, b"c").unwrap();
    fs.unlink(a.ino, b"f").unwrap();
    assert_eq!(fs.getattr(a.ino).unwrap().nlink, 2);
    fs.rmdir(ROOT_INO, b"a").unwrap();
    assert_eq!(fs.getattr(ROOT_INO).unwrap().nlink, 2);
    assert_eq!(fs.statfs().files, 1, "only the root is left");
    let fs = remount(fs, &dev);
    assert!(names(&fs, ROOT_INO).is_empty());
    assert_eq!(fs.getattr(ROOT_INO).unwrap().nlink, 2);
}

#[test]
fn rename_within_and_across_directories_and_over_existing_targets() {
    let (dev, fs) = fresh(16 << 20);
    let d1 = fs.mkdir(ROOT_INO, b"d1", 0o755, 0, 0).unwrap().ino;
    let d2 = fs.mkdir(ROOT_INO, b"d2", 0o755, 0, 0).unwrap().ino;
    let f = fs.create(d1, b"f", 0o644, 0, 0).unwrap().ino;
    fs.write(f, 0, b"the file").unwrap();
    // Same directory, new name.
    fs.rename(d1, b"f", d1, b"g", false, false).unwrap();
    assert_eq!(errno(fs.lookup(d1, b"f")), libc::ENOENT);
    assert_eq!(fs.lookup(d1, b"g").unwrap().ino, f);
    // Across directories.
    fs.rename(d1, b"g", d2, b"h", false, false).unwrap();
    assert!(names(&fs, d1).is_empty());
    assert_eq!(fs.lookup(d2, b"h").unwrap().ino, f);
    assert_eq!(read_all(&fs, f), b"the file");
    // A directory moved to another parent: ".." and both parents' link counts follow.
    let sub = fs.mkdir(d1, b"sub", 0o755, 0, 0).unwrap().ino;
    fs.create(sub, b"inner", 0o644, 0, 0).unwrap();
    assert_eq!(fs.getattr(d1).unwrap().nlink, 3);
    fs.rename(d1, b"sub", d2, b"moved", false, false).unwrap();
    assert_eq!(fs.getattr(d1).unwrap().nlink, 2);
    assert_eq!(fs.getattr(d2).unwrap().nlink, 3);
    assert_eq!(fs.lookup(sub, b"..").unwrap().ino, d2);
    assert!(fs.lookup(sub, b"inner").is_ok());
    // Over an existing file: the replaced inode loses its only link and is freed.
    let victim = fs.create(d2, b"victim", 0o644, 0, 0).unwrap().ino;
    fs.write(victim, 0, &vec![9u8; 100_000]).unwrap();
    fs.rename(d2, b"h", d2, b"victim", false, false).unwrap();
    assert_eq!(fs.lookup(d2, b"victim").unwrap().ino, f);
    assert_eq!(errno(fs.lookup(d2, b"h")), libc::ENOENT);
    assert_eq!(errno(fs.getattr(victim)), libc::ENOENT);
    // Over an empty directory: allowed, and the parent loses a link.
    fs.mkdir(d2, b"empty", 0o755, 0, 0).unwrap();
    let nl = fs.getattr(d2).unwrap().nlink;
    fs.rename(d2, b"moved", d2, b"empty", false, false).unwrap();
    assert_eq!(fs.getattr(d2).unwrap().nlink, nl - 1);
    assert_eq!(fs.lookup(d2, b"empty").unwrap().ino, sub);
    // Over a hard link to the same inode: nothing happens, both names stay.
    fs.link(f, d2, b"alias").unwrap();
    fs.rename(d2, b"alias", d2, b"victim", false, false)
        .unwrap();
    assert_eq!(fs.lookup(d2, b"alias").unwrap().ino, f);
    assert_eq!(fs.lookup(d2, b"victim").unwrap().ino, f);
    assert_eq!(fs.getattr(f).unwrap().nlink, 2);
    // Onto itself.
    fs.rename(d2, b"victim", d2, b"victim", false, false)
        .unwrap();
    assert_eq!(fs.lookup(d2, b"victim").unwrap().ino, f);
    // Type mismatches and non-empty targets.
    fs.mkdir(d2, b"full", 0o755, 0, 0).unwrap();
    let full = fs.lookup(d2, b"full").unwrap().ino;
    fs.create(full, b"x", 0o644, 0, 0).unwrap();
    assert_eq!(
        errno(fs.rename(d2, b"victim", d2, b"empty", false, false)),
        libc::EISDIR
    );
    assert_eq!(
        errno(fs.rename(d2, b"empty", d2, b"victim", false, false)),
        libc::ENOTDIR
    );
    assert_eq!(
        errno(fs.rename(d2, b"empty", d2, b"full", false, false)),
        libc::ENOTEMPTY
    );
    assert_eq!(
        errno(fs.rename(d2, b"absent", d2, b"z", false, false)),
        libc::ENOENT
    );
    // A directory cannot move below itself.
    assert_eq!(
        errno(fs.rename(ROOT_INO, b"d2", full, b"loop", false, false)),
        libc::EINVAL
    );
    assert_eq!(
        errno(fs.rename(ROOT_INO, b"d2", d2, b"self", false, false)),
        libc::EINVAL
    );
    let fs = remount(fs, &dev);
    assert_eq!(fs.lookup(d2, b"victim").unwrap().ino, f);
    assert_eq!(fs.lookup(d2, b"empty").unwrap().ino, sub);
    assert_eq!(fs.lookup(sub, b"..").unwrap().ino, d2);
    assert_eq!(read_all(&fs, f), b"the file");
    let mut got = names(&fs, d2);
    got.sort();
    assert_eq!(
        got,
        vec![
            b"alias".to_vec(),
            b"empty".to_vec(),
            b"full".to_vec(),
            b"victim".to_vec()
        ]
    );
}

#[test]
fn rename_noreplace_refuses_an_existing_target_and_changes_nothing() {
    let (dev, fs) = fresh(16 << 20);
    let a = fs.create(ROOT_INO, b"a", 0o644, 0, 0).unwrap().ino;
    let b = fs.create(ROOT_INO, b"b", 0o644, 0, 0).unwrap().ino;
    fs.write(a, 0, b"aaa").unwrap();
    fs.write(b, 0, b"bbbb").unwrap();
    assert_eq!(
        errno(fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", true, false)),
        libc::EEXIST
    );
    assert_eq!(fs.lookup(ROOT_INO, b"a").unwrap().ino, a);
    assert_eq!(fs.lookup(ROOT_INO, b"b").unwrap().ino, b);
    assert_eq!(read_all(&fs, b), b"bbbb");
    // A directory target counts too.
    fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap();
    assert_eq!(
        errno(fs.rename(ROOT_INO, b"a", ROOT_INO, b"d", true, false)),
        libc::EEXIST
    );
    // With no target it is a plain rename.
    fs.rename(ROOT_INO, b"a", ROOT_INO, b"c", true, false)
        .unwrap();
    assert_eq!(fs.lookup(ROOT_INO, b"c").unwrap().ino, a);
    // NOREPLACE and EXCHANGE together are refused.
    assert_eq!(
        errno(fs.rename(ROOT_INO, b"b", ROOT_INO, b"c", true, true)),
        libc::EINVAL
    );
    let fs = remount(fs, &dev);
    assert_eq!(
        read_all(&fs, fs.lookup(ROOT_INO, b"c").unwrap().ino),
        b"aaa"
    );
    assert_eq!(
        read_all(&fs, fs.lookup(ROOT_INO, b"b").unwrap().ino),
        b"bbbb"
    );
    assert_eq!(errno(fs.lookup(ROOT_INO, b"a")), libc::ENOENT);
}

#[test]
fn rename_exchange_swaps_a_file_and_a_directory_across_parents() {
    let (dev, fs) = fresh(16 << 20);
    let p = fs.mkdir(ROOT_INO, b"p", 0o755, 0, 0).unwrap().ino;
    let q = fs.mkdir(ROOT_INO, b"q", 0o755, 0, 0).unwrap().ino;
    let f = fs.create(p, b"x", 0o644, 0, 0).unwrap().ino;
    fs.write(f, 0, b"file data").unwrap();
    let d = fs.mkdir(q, b"y", 0o755, 0, 0).unwrap().ino;
    fs.create(d, b"in-d", 0o644, 0, 0).unwrap();
    assert_eq!(fs.getattr(p).unwrap().nlink, 2);
    assert_eq!(fs.getattr(q).unwrap().nlink, 3);
    fs.rename(p, b"x", q, b"y", false, true).unwrap();
    // p/x is now the directory, q/y the file.
    assert_eq!(fs.lookup(p, b"x").unwrap().ino, d);
    assert_eq!(fs.lookup(q, b"y").unwrap().ino, f);
    assert_eq!(fs.lookup(p, b"x").unwrap().kind, FileType::Dir);
    assert_eq!(fs.lookup(d, b"..").unwrap().ino, p);
    assert_eq!(fs.getattr(p).unwrap().nlink, 3);
    assert_eq!(fs.getattr(q).unwrap().nlink, 2);
    let kinds: Vec<(Vec<u8>, FileType)> = fs
        .readdir(p, 2)
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.kind))
        .collect();
    assert_eq!(kinds, vec![(b"x".to_vec(), FileType::Dir)]);
    // Exchanging with a missing name fails and changes nothing.
    assert_eq!(
        errno(fs.rename(p, b"x", q, b"absent", false, true)),
        libc::ENOENT
    );
    // Swap two files in one directory.
    let g = fs.create(q, b"z", 0o644, 0, 0).unwrap().ino;
    fs.rename(q, b"y", q, b"z", false, true).unwrap();
    assert_eq!(fs.lookup(q, b"y").unwrap().ino, g);
    assert_eq!(fs.lookup(q, b"z").unwrap().ino, f);
    // Exchanging a directory with something inside it would make a loop.
    let inner = fs.create(d, b"leaf", 0o644, 0, 0).unwrap().ino;
    assert_ne!(inner, 0);
    assert_eq!(
        errno(fs.rename(p, b"x", d, b"leaf", false, true)),
        libc::EINVAL
    );
    let fs = remount(fs, &dev);
    assert_eq!(fs.lookup(p, b"x").unwrap().ino, d);
    assert_eq!(fs.lookup(d, b"..").unwrap().ino, p);
    assert_eq!(fs.lookup(q, b"z").unwrap().ino, f);
    assert_eq!(read_all(&fs, f), b"file data");
    assert_eq!(fs.getattr(p).unwrap().nlink, 3);
    assert_eq!(fs.getattr(q).unwrap().nlink, 2);
}

/// Caught: exchanging a name with itself removed the entry twice inside one transaction; the
/// second removal failed after the first was applied, which shut the filesystem down.
/// `renameat2(RENAME_EXCHANGE)` of a name with itself succeeds and changes nothing.
#[test]
fn regression_rename_exchange_of_a_name_with_itself_is_a_no_op() {
    let (dev, fs) = fresh(16 << 20);
    let f = fs.create(ROOT_INO, b"same", 0o644, 0, 0).unwrap().ino;
    fs.write(f, 0, b"kept").unwrap();
    fs.rename(ROOT_INO, b"same", ROOT_INO, b"same", false, true)
        .unwrap();
    assert_eq!(fs.lookup(ROOT_INO, b"same").unwrap().ino, f);
    // The filesystem still takes changes.
    fs.create(ROOT_INO, b"after", 0o644, 0, 0).unwrap();
    let fs = remount(fs, &dev);
    assert_eq!(
        read_all(&fs, fs.lookup(ROOT_INO, b"same").unwrap().ino),
        b"kept"
    );
    assert!(fs.lookup(ROOT_INO, b"after").is_ok());
}

#[test]
fn hard_links_count_names_and_keep_the_data_until_the_last_goes() {
    let (dev, fs) = fresh(16 << 20);
    let d = fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    let f = fs.create(ROOT_INO, b"orig", 0o644, 0, 0).unwrap().ino;
    let data = pattern(50_000, 3);
    fs.write(f, 0, &data).unwrap();
    let ctime0 = fs.getattr(f).unwrap().ctime;
    let st = fs.link(f, d, b"second").unwrap();
    assert_eq!((st.ino, st.nlink), (f, 2));
    assert!(st.ctime >= ctime0);
    fs.link(f, ROOT_INO, b"third").unwrap();
    assert_eq!(fs.getattr(f).unwrap().nlink, 3);
    assert_eq!(fs.lookup(d, b"second").unwrap().ino, f);
    // Existing names, directories and missing inodes are refused.
    assert_eq!(errno(fs.link(f, d, b"second")), libc::EEXIST);
    assert_eq!(errno(fs.link(f, f, b"x")), libc::ENOTDIR);
    let fs = remount(fs, &dev);
    assert_eq!(fs.getattr(f).unwrap().nlink, 3);
    fs.unlink(ROOT_INO, b"orig").unwrap();
    assert_eq!(fs.getattr(f).unwrap().nlink, 2);
    assert_eq!(read_all(&fs, fs.lookup(d, b"second").unwrap().ino), data);
    // A write through one name shows through the other.
    fs.write(f, 0, b"XY").unwrap();
    let third = fs.lookup(ROOT_INO, b"third").unwrap().ino;
    let mut two = [0u8; 2];
    fs.read(third, 0, &mut two).unwrap();
    assert_eq!(&two, b"XY");
    fs.unlink(d, b"second").unwrap();
    assert_eq!(fs.getattr(f).unwrap().nlink, 1);
    let fs = remount(fs, &dev);
    assert_eq!(fs.getattr(f).unwrap().nlink, 1);
    let back = read_all(&fs, f);
    assert_eq!(&back[..2], b"XY");
    assert_eq!(&back[2..], &data[2..]);
    let before = fs.statfs().bfree;
    fs.unlink(ROOT_INO, b"third").unwrap();
    fs.commit().unwrap();
    assert_eq!(errno(fs.getattr(f)), libc::ENOENT);
    assert!(
        fs.statfs().bfree >= before + 12,
        "the last unlink freed the data"
    );
    assert_eq!(errno(fs.link(f, ROOT_INO, b"again")), libc::ENOENT);
    drop(remount(fs, &dev));
}

/// Caught: a hard link to a directory failed with EOPNOTSUPP; POSIX `link()` gives EPERM
/// for a directory when the implementation does not link directories.
#[test]
fn regression_a_hard_link_to_a_directory_is_eperm() {
    let (dev, fs) = fresh(16 << 20);
    let d = fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    assert_eq!(errno(fs.link(d, ROOT_INO, b"dirlink")), libc::EPERM);
    assert_eq!(errno(fs.link(ROOT_INO, d, b"root")), libc::EPERM);
    assert_eq!(errno(fs.lookup(ROOT_INO, b"dirlink")), libc::ENOENT);
    assert_eq!(fs.getattr(d).unwrap().nlink, 2);
    let fs = remount(fs, &dev);
    assert_eq!(fs.getattr(d).unwrap().nlink, 2);
    assert_eq!(fs.getattr(ROOT_INO).unwrap().nlink, 3);
}

#[test]
fn symlinks_and_special_files_keep_their_targets_and_device_numbers() {
    let (dev, fs) = fresh(16 << 20);
    let s = fs
        .symlink(ROOT_INO, b"link", b"../some/where", 7, 8)
        .unwrap();
    assert_eq!(s.kind, FileType::Symlink);
    assert_eq!((s.size, s.uid, s.gid, s.nlink), (13, 7, 8, 1));
    assert_eq!(fs.readlink(s.ino).unwrap(), b"../some/where");
    let long: Vec<u8> = (0..4095).map(|i| b'a' + (i % 26) as u8).collect();
    let l = fs.symlink(ROOT_INO, b"long", &long, 0, 0).unwrap().ino;
    assert_eq!(fs.readlink(l).unwrap(), long);
    assert_eq!(
        errno(fs.symlink(ROOT_INO, b"empty", b"", 0, 0)),
        libc::ENOENT
    );
    assert_eq!(
        errno(fs.symlink(ROOT_INO, b"link", b"x", 0, 0)),
        libc::EEXIST
    );
    let f = fs.create(ROOT_INO, b"file", 0o644, 0, 0).unwrap().ino;
    assert_eq!(errno(fs.readlink(f)), libc::EINVAL);
    assert_eq!(errno(fs.readlink(ROOT_INO)), libc::EINVAL);
    // Data operations on a symlink are refused.
    assert_eq!(errno(fs.write(s.ino, 0, b"x")), libc::EINVAL);
    let fifo = fs
        .mknod(ROOT_INO, b"fifo", FileType::Fifo, 0o600, 0, 0, 0, &[])
        .unwrap();
    assert_eq!(fifo.kind, FileType::Fifo);
    let chr = fs
        .mknod(
            ROOT_INO,
            b"chr",
            FileType::CharDev,
            0o660,
            0,
            0,
            0x0103,
            &[],
        )
        .unwrap();
    assert_eq!((chr.kind, chr.rdev), (FileType::CharDev, 0x0103));
    let sock = fs
        .mknod(ROOT_INO, b"sock", FileType::Socket, 0o755, 0, 0, 0, &[])
        .unwrap();
    // A symlink may be hard-linked and renamed like any non-directory.
    fs.link(s.ino, ROOT_INO, b"link2").unwrap();
    fs.rename(ROOT_INO, b"link2", ROOT_INO, b"link3", false, false)
        .unwrap();
    let fs = remount(fs, &dev);
    let s2 = fs.lookup(ROOT_INO, b"link").unwrap();
    assert_eq!((s2.ino, s2.nlink, s2.size), (s.ino, 2, 13));
    assert_eq!(
        fs.readlink(fs.lookup(ROOT_INO, b"link3").unwrap().ino)
            .unwrap(),
        b"../some/where"
    );
    assert_eq!(fs.readlink(l).unwrap(), long);
    assert_eq!(fs.getattr(chr.ino).unwrap().rdev, 0x0103);
    assert_eq!(fs.getattr(fifo.ino).unwrap().kind, FileType::Fifo);
    assert_eq!(fs.getattr(sock.ino).unwrap().kind, FileType::Socket);
    for name in [&b"link"[..], b"link3", b"long", b"fifo", b"chr", b"sock"] {
        fs.unlink(ROOT_INO, name).unwrap();
    }
    assert_eq!(errno(fs.getattr(s.ino)), libc::ENOENT);
    let fs = remount(fs, &dev);
    assert_eq!(names(&fs, ROOT_INO), vec![b"file".to_vec()]);
}

#[test]
fn readdir_offsets_stay_valid_while_entries_come_and_go() {
    let (dev, fs) = fresh(16 << 20);
    let d = fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    let name = |i: usize| format!("f{i:02}").into_bytes();
    for i in 0..50 {
        fs.create(d, &name(i), 0o644, 0, 0).unwrap();
    }
    let first = fs.readdir(d, 0).unwrap();
    assert_eq!(first.len(), 52);
    assert_eq!(first[0].name, b".");
    assert_eq!(first[1].name, b"..");
    let offsets: Vec<u64> = first.iter().map(|e| e.offset).collect();
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "offsets are not increasing: {offsets:?}"
    );
    // Continuing from any offset gives exactly the entries after it.
    for k in 0..first.len() {
        let rest = fs.readdir(d, first[k].offset).unwrap();
        assert_eq!(rest, first[k + 1..].to_vec(), "continuing after entry {k}");
    }
    // A reader has seen ".", ".." and 20 entries and stopped.
    let seen: Vec<DirEntry> = first[..22].to_vec();
    let cursor = seen.last().unwrap().offset;
    fs.unlink(d, &name(5)).unwrap(); // seen
    fs.unlink(d, &name(30)).unwrap(); // not yet seen
    fs.create(d, b"new1", 0o644, 0, 0).unwrap();
    fs.mkdir(d, b"new2", 0o755, 0, 0).unwrap();
    fs.rename(d, &name(40), d, b"renamed40", false, false)
        .unwrap();
    let want_rest = |fs: &ExtentFs| {
        let rest = fs.readdir(d, cursor).unwrap();
        let got: Vec<Vec<u8>> = rest.iter().map(|e| e.name.clone()).collect();
        let mut expect: Vec<Vec<u8>> = (20..50).filter(|&i| i != 30 && i != 40).map(name).collect();
        expect.extend([b"new1".to_vec(), b"new2".to_vec(), b"renamed40".to_vec()]);
        assert_eq!(got, expect, "the rest of the listing after the cursor");
        rest
    };
    let rest = want_rest(&fs);
    // Entries that stayed keep their offsets.
    for e in &rest {
        if let Some(old) = first.iter().find(|o| o.name == e.name) {
            assert_eq!(old.offset, e.offset, "{:?} moved", e.name);
        }
    }
    let kinds: Vec<FileType> = rest[rest.len() - 3..].iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [FileType::File, FileType::Dir, FileType::File]);
    // Resuming from the offset of an entry removed since is fine too.
    let removed_at = first.iter().find(|e| e.name == name(30)).unwrap().offset;
    let after_removed = fs.readdir(d, removed_at).unwrap();
    assert_eq!(after_removed[0].name, name(31));
    // The listing as a whole has no duplicates and no removed names.
    let all: Vec<Vec<u8>> = names(&fs, d);
    let set: BTreeSet<Vec<u8>> = all.iter().cloned().collect();
    assert_eq!(set.len(), all.len());
    assert_eq!(all.len(), 50 - 3 + 3);
    assert!(!set.contains(&name(5)) && !set.contains(&name(40)));
    // Offsets survive a remount.
    let fs = remount(fs, &dev);
    let rest2 = want_rest(&fs);
    assert_eq!(rest, rest2);
    // An offset past the end gives nothing; readdir of a file is refused.
    let end = rest2.last().unwrap().offset;
    assert!(fs.readdir(d, end).unwrap().is_empty());
    let f = fs.lookup(d, &name(0)).unwrap().ino;
    assert_eq!(errno(fs.readdir(f, 0)), libc::ENOTDIR);
    // New entries after a remount get fresh offsets past every old one.
    fs.create(d, b"after-remount", 0o644, 0, 0).unwrap();
    let tail = fs.readdir(d, end).unwrap();
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].name, b"after-remount");
    assert!(tail[0].offset > end);
}

#[test]
fn extended_attributes_set_get_list_remove_and_persist() {
    let (dev, fs) = fresh(16 << 20);
    let f = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    let d = fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    let s = fs.symlink(ROOT_INO, b"s", b"f", 0, 0).unwrap().ino;
    assert!(fs.listxattr(f).unwrap().is_empty());
    assert_eq!(errno(fs.getxattr(f, b"user.none")), libc::ENODATA);
    let ctime0 = fs.getattr(f).unwrap().ctime;
    fs.setxattr(f, b"user.b", b"second", false, false).unwrap();
    fs.setxattr(f, b"user.a", b"first", false, false).unwrap();
    fs.setxattr(f, b"user.empty", b"", false, false).unwrap();
    assert!(fs.getattr(f).unwrap().ctime >= ctime0);
    assert_eq!(fs.getxattr(f, b"user.a").unwrap(), b"first");
    assert_eq!(fs.getxattr(f, b"user.empty").unwrap(), b"");
    let mut list = fs.listxattr(f).unwrap();
    list.sort();
    assert_eq!(
        list,
        vec![
            b"user.a".to_vec(),
            b"user.b".to_vec(),
            b"user.empty".to_vec()
        ]
    );
    // XATTR_CREATE on an existing name, XATTR_REPLACE on a missing one.
    assert_eq!(
        errno(fs.setxattr(f, b"user.a", b"x", true, false)),
        libc::EEXIST
    );
    assert_eq!(
        errno(fs.setxattr(f, b"user.zz", b"x", false, true)),
        libc::ENODATA
    );
    assert_eq!(fs.getxattr(f, b"user.a").unwrap(), b"first");
    assert_eq!(errno(fs.getxattr(f, b"user.zz")), libc::ENODATA);
    fs.setxattr(f, b"user.a", b"replaced", false, true).unwrap();
    fs.setxattr(f, b"user.new", b"created", true, false)
        .unwrap();
    // The largest value fits; binary values are kept exactly.
    let big = pattern(65536, 9);
    fs.setxattr(f, b"user.big", &big, false, false).unwrap();
    let bin = [0u8, 255, 0, 1, b'\n'];
    fs.setxattr(d, b"trusted.bin", &bin, false, false).unwrap();
    fs.setxattr(s, b"user.on-link", b"v", false, false).unwrap();
    fs.removexattr(f, b"user.b").unwrap();
    assert_eq!(errno(fs.removexattr(f, b"user.b")), libc::ENODATA);
    assert_eq!(errno(fs.getxattr(f, b"user.b")), libc::ENODATA);
    let fs = remount(fs, &dev);
    assert_eq!(fs.getxattr(f, b"user.a").unwrap(), b"replaced");
    assert_eq!(fs.getxattr(f, b"user.new").unwrap(), b"created");
    assert_eq!(fs.getxattr(f, b"user.big").unwrap(), big);
    assert_eq!(fs.getxattr(f, b"user.empty").unwrap(), b"");
    assert_eq!(fs.getxattr(d, b"trusted.bin").unwrap(), bin);
    assert_eq!(fs.getxattr(s, b"user.on-link").unwrap(), b"v");
    let mut list = fs.listxattr(f).unwrap();
    list.sort();
    assert_eq!(
        list,
        vec![
            b"user.a".to_vec(),
            b"user.big".to_vec(),
            b"user.empty".to_vec(),
            b"user.new".to_vec()
        ]
    );
    // Attributes go with the inode: an unlinked file's are gone, a link's are shared.
    fs.link(f, ROOT_INO, b"f2").unwrap();
    assert_eq!(
        fs.getxattr(fs.lookup(ROOT_INO, b"f2").unwrap().ino, b"user.a")
            .unwrap(),
        b"replaced"
    );
    fs.unlink(ROOT_INO, b"f").unwrap();
    fs.unlink(ROOT_INO, b"f2").unwrap();
    assert_eq!(errno(fs.getxattr(f, b"user.a")), libc::ENOENT);
    drop(remount(fs, &dev));
}

#[test]
fn setattr_changes_mode_owner_times_and_size() {
    let (dev, fs) = fresh(16 << 20);
    let f = fs.create(ROOT_INO, b"f", 0o644, 1, 2).unwrap().ino;
    let data = pattern(10_000, 1);
    fs.write(f, 0, &data).unwrap();
    let before = fs.getattr(f).unwrap();
    let at = Time {
        sec: 1_000_000_000,
        nsec: 123_456_789,
    };
    let mt = Time {
        sec: -86_400,
        nsec: 1,
    };
    let st = fs
        .setattr(
            f,
            SetAttr {
                perm: Some(0o4750),
                uid: Some(1234),
                gid: Some(5678),
                atime: Some(at),
                mtime: Some(mt),
                ..SetAttr::default()
            },
        )
        .unwrap();
    assert_eq!((st.perm, st.uid, st.gid), (0o4750, 1234, 5678));
    assert_eq!((st.atime, st.mtime), (at, mt));
    assert!(st.ctime >= before.ctime);
    assert_eq!(st.size, 10_000, "a size left alone stays");
    assert_eq!(st.crtime, before.crtime);
    // Only permission bits are kept from a mode.
    let st = fs
        .setattr(
            f,
            SetAttr {
                perm: Some(0o170_640),
                ..SetAttr::default()
            },
        )
        .unwrap();
    assert_eq!(st.perm, 0o640);
    assert_eq!(st.uid, 1234, "fields left as None stay");
    // Size down, then up: the cut bytes come back as zeros.
    let st = fs
        .setattr(
            f,
            SetAttr {
                size: Some(3000),
                ..SetAttr::default()
            },
        )
        .unwrap();
    assert_eq!(st.size, 3000);
    let st = fs
        .setattr(
            f,
            SetAttr {
                size: Some(20_000),
                ..SetAttr::default()
            },
        )
        .unwrap();
    assert_eq!(st.size, 20_000);
    let back = read_all(&fs, f);
    assert_eq!(&back[..3000], &data[..3000]);
    assert!(back[3000..].iter().all(|&b| b == 0));
    // Directories take mode and owner changes; a size change on one is refused.
    let d = fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    fs.setattr(
        d,
        SetAttr {
            perm: Some(0o1777),
            uid: Some(9),
            ..SetAttr::default()
        },
    )
    .unwrap();
    assert_eq!(
        errno(fs.setattr(
            d,
            SetAttr {
                size: Some(0),
                ..SetAttr::default()
            }
        )),
        libc::EISDIR
    );
    // A size change is a data change: it moved mtime on from the value set above.
    let st = fs.getattr(f).unwrap();
    assert!(st.mtime > mt);
    // Times set after writes stay set through writeback and a remount.
    fs.write(f, 100, b"late write").unwrap();
    fs.setattr(
        f,
        SetAttr {
            atime: Some(at),
            mtime: Some(mt),
            ..SetAttr::default()
        },
    )
    .unwrap();
    let fh = fs.open(f).unwrap();
    fs.fsync(&fh, false).unwrap();
    fs.release(fh).unwrap();
    let fs = remount(fs, &dev);
    let st = fs.getattr(f).unwrap();
    assert_eq!(
        (st.perm, st.uid, st.gid, st.size),
        (0o640, 1234, 5678, 20_000)
    );
    assert_eq!((st.atime, st.mtime), (at, mt));
    let back = read_all(&fs, f);
    assert_eq!(&back[..100], &data[..100]);
    assert_eq!(&back[100..110], b"late write");
    assert_eq!(&back[110..3000], &data[110..3000]);
    assert!(back[3000..].iter().all(|&b| b == 0));
    let ds = fs.getattr(d).unwrap();
    assert_eq!((ds.perm, ds.uid), (0o1777, 9));
}

#[test]
fn statfs_counts_blocks_and_inodes() {
    let (dev, fs) = fresh(32 << 20);
    let s0 = fs.statfs();
    assert_eq!(s0.bsize, 4096);
    assert_eq!(s0.namelen, 255);
    assert!(s0.blocks < (32 << 20) / 4096 && s0.blocks > (30 << 20) / 4096);
    assert!(s0.bfree <= s0.blocks && s0.bavail <= s0.bfree);
    assert!(
        s0.bfree + 16 > s0.blocks,
        "a fresh image is nearly all free"
    );
    assert_eq!(s0.files, 1);
    let f = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap();
    let s1 = fs.statfs();
    assert_eq!(s1.files, 3);
    assert!(s1.ffree < s0.ffree);
    // A 1 MiB write is taken from the free count when written, and from bavail at once.
    fs.write(f, 0, &vec![5u8; 1 << 20]).unwrap();
    let s2 = fs.statfs();
    assert!(s1.bavail - s2.bavail >= 256, "{s1:?} -> {s2:?}");
    let fh = fs.open(f).unwrap();
    fs.fsync(&fh, false).unwrap();
    fs.release(fh).unwrap();
    let s3 = fs.statfs();
    assert!(s1.bfree - s3.bfree >= 256, "{s1:?} -> {s3:?}");
    assert!(s1.bfree - s3.bfree <= 256 + 16, "{s1:?} -> {s3:?}");
    assert_eq!(fs.getattr(f).unwrap().blocks, 256 * 8);
    let fs = remount(fs, &dev);
    let s4 = fs.statfs();
    assert_eq!(s4.files, 3);
    assert!(s1.bfree - s4.bfree >= 256);
    fs.unlink(ROOT_INO, b"f").unwrap();
    fs.rmdir(ROOT_INO, b"d").unwrap();
    fs.commit().unwrap();
    let s5 = fs.statfs();
    assert_eq!(s5.files, 1);
    assert!(s5.bfree + 16 >= s1.bfree, "{s1:?} -> {s5:?}");
    assert!(s5.bavail + 16 >= s1.bavail, "{s1:?} -> {s5:?}");
    drop(remount(fs, &dev));
}

#[test]
fn an_open_unlinked_file_lives_until_its_last_close() {
    let (dev, fs) = fresh(32 << 20);
    let f = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    let data = pattern(2 << 20, 4);
    fs.write(f, 0, &data).unwrap();
    fs.syncfs().unwrap();
    let free0 = fs.statfs().bfree;
    let h1 = fs.open(f).unwrap();
    let h2 = fs.open(f).unwrap();
    fs.unlink(ROOT_INO, b"f").unwrap();
    fs.commit().unwrap();
    assert_eq!(errno(fs.lookup(ROOT_INO, b"f")), libc::ENOENT);
    // Still readable and writable through the inode, with no links.
    assert_eq!(fs.getattr(f).unwrap().nlink, 0);
    assert_eq!(read_all(&fs, f), data);
    fs.write(f, 0, b"still here").unwrap();
    fs.fsync(&h1, false).unwrap();
    assert!(fs.statfs().bfree <= free0 + 2, "freed while open");
    assert_eq!(errno(fs.link(f, ROOT_INO, b"back")), libc::ENOENT);
    fs.release(h1).unwrap();
    assert!(fs.getattr(f).is_ok(), "freed with a handle still open");
    fs.release(h2).unwrap();
    fs.commit().unwrap();
    assert_eq!(errno(fs.getattr(f)), libc::ENOENT);
    assert!(
        fs.statfs().bfree >= free0 + 512,
        "the last close gave back the space"
    );
    // Replacing an open file by rename works the same way.
    let g = fs.create(ROOT_INO, b"g", 0o644, 0, 0).unwrap().ino;
    fs.write(g, 0, &data).unwrap();
    fs.create(ROOT_INO, b"h", 0o644, 0, 0).unwrap();
    fs.syncfs().unwrap();
    let free1 = fs.statfs().bfree;
    let hg = fs.open(g).unwrap();
    fs.rename(ROOT_INO, b"h", ROOT_INO, b"g", false, false)
        .unwrap();
    assert_eq!(read_all(&fs, g), data);
    fs.release(hg).unwrap();
    fs.commit().unwrap();
    assert_eq!(errno(fs.getattr(g)), libc::ENOENT);
    assert!(fs.statfs().bfree >= free1 + 512);
    let fs = remount(fs, &dev);
    assert_eq!(fs.statfs().files, 2);
}

/// Sets up a file of 2 MiB, unlinked while open, the unlink committed; returns the free count
/// before the file was written.
fn orphan(fs: &ExtentFs) -> (u64, u64, extentfs::FileHandle) {
    let base = fs.statfs().bfree;
    let f = fs.create(ROOT_INO, b"orphan", 0o644, 0, 0).unwrap().ino;
    fs.write(f, 0, &pattern(2 << 20, 8)).unwrap();
    let h = fs.open(f).unwrap();
    fs.fsync(&h, false).unwrap();
    fs.unlink(ROOT_INO, b"orphan").unwrap();
    fs.commit().unwrap();
    assert!(fs.statfs().bfree + 500 < base);
    (base, f, h)
}

#[test]
fn an_open_unlinked_file_is_freed_at_the_next_mount_after_a_crash() {
    let (dev, fs) = fresh(32 << 20);
    let (base, f, h) = orphan(&fs);
    fs.abandon();
    drop(h);
    drop(fs);
    let report = fsck::fsck(Arc::clone(&dev), false);
    assert!(report.is_clean(), "{:?}", report.problems);
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("unlinked while open")),
        "fsck does not see the orphan: {:?}",
        report.notes
    );
    let fs = ExtentFs::mount(Arc::clone(&dev), opts()).unwrap();
    assert!(!fs.was_clean());
    assert_eq!(errno(fs.getattr(f)), libc::ENOENT);
    assert!(
        fs.statfs().bfree + 4 >= base,
        "the orphan's space came back"
    );
    assert_eq!(fs.statfs().files, 1);
    let fs = remount(fs, &dev);
    let report = fsck::fsck(Arc::clone(&dev), false);
    assert!(report
        .notes
        .iter()
        .all(|n| !n.contains("unlinked while open")));
    drop(fs);
}

#[test]
fn an_open_unlinked_file_is_freed_at_the_next_mount_after_dropping_without_unmount() {
    let (dev, fs) = fresh(32 << 20);
    let (base, f, h) = orphan(&fs);
    // The handle is never released: dropping the filesystem unmounts it with the orphan.
    drop(fs);
    drop(h);
    assert_clean(&dev, "after drop");
    let fs = ExtentFs::mount(Arc::clone(&dev), opts()).unwrap();
    assert_eq!(errno(fs.getattr(f)), libc::ENOENT);
    assert!(fs.statfs().bfree + 4 >= base);
    drop(remount(fs, &dev));
}

#[test]
fn create_in_a_removed_or_non_directory_parent_is_refused() {
    let (_dev, fs) = fresh(16 << 20);
    let f = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    assert_eq!(errno(fs.create(f, b"x", 0o644, 0, 0)), libc::ENOTDIR);
    assert_eq!(errno(fs.mkdir(f, b"x", 0o755, 0, 0)), libc::ENOTDIR);
    assert_eq!(errno(fs.lookup(f, b"x")), libc::ENOTDIR);
    assert_eq!(errno(fs.unlink(f, b"x")), libc::ENOTDIR);
    let d = fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    fs.rmdir(ROOT_INO, b"d").unwrap();
    assert_eq!(errno(fs.create(d, b"x", 0o644, 0, 0)), libc::ENOENT);
    assert_eq!(errno(fs.readdir(d, 0)), libc::ENOENT);
}

#[test]
fn namespace_changes_are_durable_once_committed_and_a_crash_keeps_the_tree_consistent() {
    use iomap_dev::{CrashDevice, Pending};
    let crash = Arc::new(CrashDevice::new(MemDevice::new(16 << 20)).unwrap());
    mkfs(crash.clone(), &MkfsOptions::default()).unwrap();
    let fs = ExtentFs::mount(crash.clone(), opts()).unwrap();
    let d = fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    let f = fs.create(d, b"f", 0o644, 0, 0).unwrap().ino;
    fs.write(f, 0, b"synced").unwrap();
    fs.symlink(ROOT_INO, b"s", b"d/f", 0, 0).unwrap();
    fs.link(f, ROOT_INO, b"hard").unwrap();
    fs.setxattr(d, b"user.k", b"v", false, false).unwrap();
    let gone = fs.create(ROOT_INO, b"gone", 0o644, 0, 0).unwrap().ino;
    fs.unlink(ROOT_INO, b"gone").unwrap();
    fs.rename(ROOT_INO, b"hard", d, b"hard2", false, false)
        .unwrap();
    let fh = fs.open(f).unwrap();
    // fsync of the file commits the whole log, the names included.
    fs.fsync(&fh, false).unwrap();
    let synced = crash.events();
    // Changes after the last commit: an image shows a prefix of them, in order.
    fs.rename(ROOT_INO, b"d", ROOT_INO, b"d-renamed", false, false)
        .unwrap();
    fs.mkdir(ROOT_INO, b"later", 0o755, 0, 0).unwrap();
    fs.unlink(d, b"hard2").unwrap();
    for (t, pending) in [
        (synced, Pending::None),
        (crash.events(), Pending::None),
        (
            crash.events(),
            Pending::Random {
                seed: 3,
                tear: true,
            },
        ),
    ] {
        let at = format!("crash at {t} {pending:?}");
        let image: Arc<dyn BlockDevice> = Arc::new(crash.image_at(t, &pending).unwrap());
        assert_clean(&image, &at);
        let fs2 = ExtentFs::mount(Arc::clone(&image), opts()).unwrap();
        let renamed = fs2.lookup(ROOT_INO, b"d-renamed").is_ok();
        let dir = if renamed { &b"d-renamed"[..] } else { b"d" };
        assert_eq!(fs2.lookup(ROOT_INO, dir).unwrap().ino, d, "{at}");
        assert_eq!(errno(fs2.lookup(ROOT_INO, b"hard")), libc::ENOENT, "{at}");
        assert_eq!(errno(fs2.getattr(gone)), libc::ENOENT, "{at}");
        assert_eq!(read_all(&fs2, f), b"synced", "{at}");
        assert_eq!(
            fs2.readlink(fs2.lookup(ROOT_INO, b"s").unwrap().ino)
                .unwrap(),
            b"d/f"
        );
        assert_eq!(fs2.getxattr(d, b"user.k").unwrap(), b"v", "{at}");
        let later = fs2.lookup(ROOT_INO, b"later").is_ok();
        let hard2 = fs2.lookup(d, b"hard2").is_ok();
        assert_eq!(
            fs2.getattr(f).unwrap().nlink,
            if hard2 { 2 } else { 1 },
            "{at}"
        );
        if t == synced {
            assert!(
                !renamed && !later && hard2,
                "{at}: later changes are present"
            );
        } else {
            let steps = [renamed, later, !hard2];
            let n = steps.iter().take_while(|&&x| x).count();
            assert!(
                steps[n..].iter().all(|&x| !x),
                "{at}: the later changes are not a prefix: {steps:?}"
            );
        }
        fs2.unmount().unwrap();
        drop(fs2);
        assert_clean(&image, &format!("{at}, remounted"));
    }
    fs.release(fh).unwrap();
    fs.abandon();
}
