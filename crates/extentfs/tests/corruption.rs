//! Corrupt images: every damaged superblock, checkpoint block or log record is either
//! survived (the other superblock copy, the end of the log) or reported as a corruption
//! naming the structure, never a panic and never a mount that returns wrong data.

#![allow(clippy::unwrap_used)]
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use extentfs::format::{Superblock, HDR_LEN, LOG_MAGIC, SB_LEN, SB_OFFSETS};
use extentfs::{mkfs, Error, ExtentFs, FileType, MkfsOptions, MountOptions, ROOT_INO};
use iomap_dev::{BlockDevice, BlockDeviceExt, DevAddr, MemDevice};

const DEV_BYTES: u64 = 16 << 20;
const CHUNK: usize = 1 << 20;

/// What a file, directory or symlink should hold after a mount.
#[derive(Clone, Debug)]
enum Want {
    File(Vec<u8>),
    Dir,
    Link(Vec<u8>),
}

/// An image and what it holds: `old` was made durable by a clean unmount, `new` only by log
/// records after the last checkpoint.
struct Image {
    bytes: Vec<u8>,
    /// The 1 MiB chunks of `bytes` that are not all zeros, to rebuild a device quickly.
    chunks: Vec<(u64, Vec<u8>)>,
    old: Vec<(Vec<Vec<u8>>, Want)>,
    new: Vec<(Vec<Vec<u8>>, Want)>,
}

fn opts() -> MountOptions {
    MountOptions {
        commit_interval: None,
        ..MountOptions::default()
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn path(p: &[&str]) -> Vec<Vec<u8>> {
    p.iter().map(|s| s.as_bytes().to_vec()).collect()
}

fn device(bytes: &[u8]) -> Arc<dyn BlockDevice> {
    let dev = MemDevice::new(bytes.len() as u64);
    for (i, chunk) in bytes.chunks(CHUNK).enumerate() {
        if chunk.iter().any(|&b| b != 0) {
            dev.write_at(DevAddr((i * CHUNK) as u64), chunk).unwrap();
        }
    }
    Arc::new(dev)
}

fn snapshot(dev: &dyn BlockDevice) -> Vec<u8> {
    let mut out = vec![0u8; dev.capacity_bytes() as usize];
    dev.read_at(DevAddr(0), &mut out).unwrap();
    out
}

/// Formats a 16 MiB image with block size `bs`; a first session writes files, a directory,
/// a symlink and extended attributes and unmounts; a second writes more, commits them to
/// the log record by record, and stops as if the power went.
fn build(bs: u32) -> Image {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(DEV_BYTES));
    mkfs(
        Arc::clone(&dev),
        &MkfsOptions {
            block_size: bs,
            log_blocks: None,
        },
    )
    .unwrap();
    let mut old = Vec::new();
    let fs = ExtentFs::mount(Arc::clone(&dev), opts()).unwrap();
    let small = fs.create(ROOT_INO, b"small", 0o644, 1, 2).unwrap();
    fs.write(small.ino, 0, b"hello, extentfs").unwrap();
    old.push((path(&["small"]), Want::File(b"hello, extentfs".to_vec())));
    let big = fs.create(ROOT_INO, b"big", 0o600, 0, 0).unwrap();
    let data = pattern(5 * bs as usize + 123, 7);
    fs.write(big.ino, 0, &data).unwrap();
    old.push((path(&["big"]), Want::File(data)));
    let d = fs.mkdir(ROOT_INO, b"dir", 0o755, 0, 0).unwrap();
    old.push((path(&["dir"]), Want::Dir));
    let inner = fs.create(d.ino, b"inner", 0o644, 0, 0).unwrap();
    let data = pattern(3 * bs as usize, 99);
    fs.write(inner.ino, 0, &data).unwrap();
    old.push((path(&["dir", "inner"]), Want::File(data)));
    fs.symlink(d.ino, b"link", b"../big", 0, 0).unwrap();
    old.push((path(&["dir", "link"]), Want::Link(b"../big".to_vec())));
    fs.setxattr(big.ino, b"user.colour", b"blue", false, false)
        .unwrap();
    fs.setxattr(d.ino, b"user.big", &pattern(600, 3), false, false)
        .unwrap();
    fs.unmount().unwrap();
    drop(fs);

    let mut new = Vec::new();
    let fs = ExtentFs::mount(Arc::clone(&dev), opts()).unwrap();
    let d = fs.lookup(ROOT_INO, b"dir").unwrap();
    for i in 0..4u8 {
        let name = format!("new{i}");
        let f = fs.create(d.ino, name.as_bytes(), 0o644, 0, 0).unwrap();
        let data = pattern(100 + usize::from(i) * bs as usize, i);
        fs.write(f.ino, 0, &data).unwrap();
        fs.setxattr(f.ino, b"user.n", &[i], false, false).unwrap();
        fs.syncfs().unwrap();
        new.push((path(&["dir", &name]), Want::File(data)));
    }
    fs.mkdir(ROOT_INO, b"newdir", 0o700, 0, 0).unwrap();
    fs.commit().unwrap();
    new.push((path(&["newdir"]), Want::Dir));
    fs.abandon();
    drop(fs);
    let bytes = snapshot(&*dev);
    let chunks = bytes
        .chunks(CHUNK)
        .enumerate()
        .filter(|(_, c)| c.iter().any(|&b| b != 0))
        .map(|(i, c)| ((i * CHUNK) as u64, c.to_vec()))
        .collect();
    Image {
        bytes,
        chunks,
        old,
        new,
    }
}

impl Image {
    /// A device holding the image with the byte at `at` flipped.
    fn flipped(&self, at: usize) -> Arc<dyn BlockDevice> {
        let dev = MemDevice::new(self.bytes.len() as u64);
        for (off, c) in &self.chunks {
            dev.write_at(DevAddr(*off), c).unwrap();
        }
        let sector = at / 512 * 512;
        let mut s = self.bytes[sector..sector + 512].to_vec();
        flip(&mut s, at - sector);
        dev.write_at(DevAddr(sector as u64), &s).unwrap();
        Arc::new(dev)
    }
}

fn sb_at(img: &[u8], slot: usize) -> Result<Superblock, Error> {
    let off = SB_OFFSETS[slot] as usize;
    Superblock::decode(&img[off..off + SB_LEN], img.len() as u64)
}

/// The valid superblock with the higher generation, and its slot.
fn current_sb(img: &[u8]) -> (usize, Superblock) {
    (0..2)
        .filter_map(|s| sb_at(img, s).ok().map(|sb| (s, sb)))
        .max_by_key(|(_, sb)| sb.generation)
        .unwrap()
}

/// Re-encodes the superblock in `slot` after `f` changes it (its checksum stays valid).
fn patch_sb(img: &mut [u8], slot: usize, f: impl FnOnce(&mut Superblock)) {
    let mut sb = sb_at(img, slot).unwrap();
    f(&mut sb);
    let off = SB_OFFSETS[slot] as usize;
    img[off..off + SB_LEN].copy_from_slice(&sb.encode());
}

/// Blocks of the checkpoint chain `sb` names, in chain order.
fn chain(img: &[u8], sb: &Superblock) -> Vec<u64> {
    let bs = sb.block_size as usize;
    let mut out = Vec::new();
    let mut b = sb.ckpt_block;
    for _ in 0..sb.ckpt_nblocks {
        out.push(b);
        let at = b as usize * bs;
        b = u64::from_le_bytes(img[at + 24..at + 32].try_into().unwrap());
    }
    out
}

/// Byte ranges of the log records `sb`'s replay would read: (offset, header + payload
/// bytes, bytes with padding).
fn records(img: &[u8], sb: &Superblock) -> Vec<(usize, usize, usize)> {
    let bs = sb.block_size as usize;
    let mut at = sb.log_start as usize * bs;
    let end = (sb.log_start + sb.log_blocks) as usize * bs;
    let mut out = Vec::new();
    while at + HDR_LEN <= end {
        let word = |o: usize| u32::from_le_bytes(img[at + o..at + o + 4].try_into().unwrap());
        let seq = u64::from_le_bytes(img[at + 16..at + 24].try_into().unwrap());
        if word(0) != LOG_MAGIC || seq != out.len() as u64 {
            break;
        }
        let n = HDR_LEN + word(24) as usize;
        let padded = n.div_ceil(bs) * bs;
        out.push((at, n, padded));
        at += padded;
    }
    out
}

fn mount(img: &[u8]) -> Result<Arc<ExtentFs>, Error> {
    ExtentFs::mount(device(img), opts())
}

fn resolve(fs: &ExtentFs, p: &[Vec<u8>]) -> Result<extentfs::Stat, Error> {
    let mut ino = ROOT_INO;
    let mut st = fs.getattr(ROOT_INO)?;
    for name in p {
        st = fs.lookup(ino, name)?;
        ino = st.ino;
    }
    Ok(st)
}

fn read_all(fs: &ExtentFs, ino: u64, size: u64) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; size as usize];
    let n = fs.read(ino, 0, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// Asserts that every entry of `want` is there with its contents.
fn check(fs: &ExtentFs, want: &[(Vec<Vec<u8>>, Want)]) {
    for (p, w) in want {
        let st = resolve(fs, p).unwrap_or_else(|e| panic!("{p:?}: {e}"));
        match w {
            Want::File(data) => {
                assert_eq!(st.kind, FileType::File, "{p:?}");
                assert_eq!(st.size, data.len() as u64, "{p:?}");
                assert!(read_all(fs, st.ino, st.size).unwrap() == *data, "{p:?}");
            }
            Want::Dir => assert_eq!(st.kind, FileType::Dir, "{p:?}"),
            Want::Link(t) => assert_eq!(fs.readlink(st.ino).unwrap(), *t, "{p:?}"),
        }
    }
}

fn absent(fs: &ExtentFs, p: &[Vec<u8>]) -> bool {
    matches!(resolve(fs, p), Err(Error::NotFound))
}

/// Reads everything reachable from the root through the public API; errors are allowed,
/// panics are not.
fn walk(fs: &ExtentFs) {
    let mut todo = vec![ROOT_INO];
    let mut seen = std::collections::HashSet::new();
    while let Some(dir) = todo.pop() {
        if !seen.insert(dir) {
            continue;
        }
        let _ = fs.listxattr(dir);
        let Ok(entries) = fs.readdir(dir, 0) else {
            continue;
        };
        for e in entries {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            let Ok(st) = fs.lookup(dir, &e.name) else {
                continue;
            };
            if let Ok(names) = fs.listxattr(st.ino) {
                for n in names {
                    let _ = fs.getxattr(st.ino, &n);
                }
            }
            match st.kind {
                FileType::Dir => todo.push(st.ino),
                FileType::Symlink => {
                    let _ = fs.readlink(st.ino);
                }
                FileType::File => {
                    let _ = read_all(fs, st.ino, st.size.min(1 << 20));
                }
                _ => {}
            }
        }
    }
}

/// The structure a corruption error names; panics on any other error.
fn corrupt_structure(e: &Error) -> &'static str {
    match e {
        Error::Corrupt { structure, detail } => {
            assert!(!detail.is_empty(), "empty detail for {structure}");
            assert_eq!(e.errno(), libc::EUCLEAN);
            structure
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
}

fn expect_corrupt(img: &[u8], structure: &str, detail: &str) {
    match mount(img) {
        Ok(_) => panic!("mounted an image with a corrupt {structure}"),
        Err(e) => {
            assert_eq!(corrupt_structure(&e), structure, "{e}");
            assert!(e.to_string().contains(detail), "{e}");
        }
    }
}

fn flip(img: &mut [u8], at: usize) {
    img[at] ^= 0x5a;
}

#[test]
fn intact_image_mounts_with_everything() {
    for bs in [4096, 1024] {
        let img = build(bs);
        let fs = mount(&img.bytes).unwrap();
        assert!(!fs.was_clean());
        assert!(fs.replayed().records >= 2, "{:?}", fs.replayed());
        check(&fs, &img.old);
        check(&fs, &img.new);
        let big = resolve(&fs, &path(&["big"])).unwrap();
        assert_eq!(fs.getxattr(big.ino, b"user.colour").unwrap(), b"blue");
    }
}

#[test]
fn wrong_magic_in_both_superblocks() {
    let mut img = build(4096).bytes;
    for off in SB_OFFSETS {
        img[off as usize] = b'X';
    }
    expect_corrupt(&img, "superblock", "wrong magic");
}

#[test]
fn empty_device_is_not_an_image() {
    expect_corrupt(&vec![0u8; 1 << 20], "superblock", "wrong magic");
}

#[test]
fn one_corrupt_superblock_falls_back_to_the_other() {
    let img = build(4096);
    // Mount and unmount twice with no changes: both superblock copies then name checkpoints
    // of the same state, and the older chain is still on disk.
    let mut bytes = img.bytes.clone();
    for _ in 0..2 {
        let dev = device(&bytes);
        let fs = ExtentFs::mount(Arc::clone(&dev), opts()).unwrap();
        fs.unmount().unwrap();
        drop(fs);
        bytes = snapshot(&*dev);
    }
    let (cur, sb) = current_sb(&bytes);
    for slot in [cur, 1 - cur] {
        let mut b = bytes.clone();
        flip(&mut b, SB_OFFSETS[slot] as usize + 40);
        assert!(sb_at(&b, slot).is_err());
        let fs = mount(&b).unwrap_or_else(|e| panic!("slot {slot} corrupt: {e}"));
        // The older copy names the checkpoint written at mount, before the unmount's.
        assert_eq!(fs.was_clean(), slot != cur);
        check(&fs, &img.old);
        check(&fs, &img.new);
        fs.unmount().unwrap();
    }
    // The newer copy damaged: the older one is used, and it is one generation behind.
    let mut b = bytes.clone();
    flip(&mut b, SB_OFFSETS[cur] as usize + 100);
    let (_, used) = current_sb(&b);
    assert_eq!(used.generation + 1, sb.generation);
}

#[test]
fn older_superblock_damaged_keeps_the_log() {
    // The older copy is corrupt: the newer one and its log are used, nothing is lost.
    let img = build(4096);
    let (cur, _) = current_sb(&img.bytes);
    let mut b = img.bytes.clone();
    flip(&mut b, SB_OFFSETS[1 - cur] as usize + 20);
    let fs = mount(&b).unwrap();
    check(&fs, &img.old);
    check(&fs, &img.new);
}

#[test]
fn both_superblocks_corrupt() {
    let mut img = build(4096).bytes;
    for off in SB_OFFSETS {
        flip(&mut img, off as usize + 50);
    }
    expect_corrupt(&img, "superblock", "checksum");
}

#[test]
fn newer_version_is_refused() {
    let mut img = build(4096).bytes;
    for slot in 0..2 {
        patch_sb(&mut img, slot, |sb| sb.version += 1);
    }
    match mount(&img) {
        Err(e @ Error::Version { found, supported }) => {
            assert_eq!(found, supported + 1);
            assert_eq!(e.errno(), libc::EINVAL);
            assert!(e.to_string().contains("version"));
        }
        Err(e) => panic!("expected a version error, got {e:?}"),
        Ok(_) => panic!("mounted an image of another version"),
    }
}

#[test]
fn version_bumped_without_new_checksum_is_corruption() {
    let mut img = build(4096).bytes;
    for off in SB_OFFSETS {
        img[off as usize + 8] += 1;
    }
    expect_corrupt(&img, "superblock", "checksum");
}

#[test]
fn truncated_image() {
    let img = build(4096).bytes;
    for len in [8 << 20, (1 << 20) + 4096, 64 << 10] {
        let dev = MemDevice::new(len as u64);
        dev.write_at(DevAddr(0), &img[..len]).unwrap();
        match ExtentFs::mount(Arc::new(dev), opts()) {
            Ok(_) => panic!("mounted a {len}-byte prefix"),
            Err(e) => {
                assert_eq!(corrupt_structure(&e), "superblock", "{e}");
                let s = e.to_string();
                assert!(s.contains("truncated") || s.contains("too small"), "{s}");
            }
        }
    }
}

#[test]
fn absurd_geometry_with_valid_checksums() {
    let img = build(4096).bytes;
    type Patch = fn(&mut Superblock);
    let cases: &[(&str, Patch)] = &[
        ("total_blocks", |sb| sb.total_blocks = u64::MAX / 3),
        ("ckpt_nblocks", |sb| sb.ckpt_nblocks = u64::MAX / 3),
        ("ckpt_nblocks zero", |sb| sb.ckpt_nblocks = 0),
        ("ckpt_bytes", |sb| sb.ckpt_bytes = u64::MAX / 3),
        ("ckpt_block", |sb| sb.ckpt_block = u64::MAX / 3),
        ("ckpt_block in the log", |sb| sb.ckpt_block = sb.log_start),
        ("log_start", |sb| sb.log_start = u64::MAX / 3),
        ("log_start one off", |sb| sb.log_start += 1),
        ("log_blocks", |sb| sb.log_blocks = u64::MAX / 3),
        ("log_blocks one", |sb| sb.log_blocks = 1),
        ("data_start", |sb| sb.data_start = u64::MAX / 3),
        ("block_size zero", |sb| sb.block_size = 0),
        ("block_size odd", |sb| sb.block_size = 4097),
        ("block_size huge", |sb| sb.block_size = 1 << 31),
        ("block_size smaller", |sb| sb.block_size = 1024),
    ];
    for (what, f) in cases {
        let mut b = img.clone();
        for slot in 0..2 {
            patch_sb(&mut b, slot, *f);
        }
        let res = catch_unwind(AssertUnwindSafe(|| mount(&b).map(|_| ())));
        match res {
            Err(_) => panic!("{what}: mount panicked"),
            Ok(Ok(())) => panic!("{what}: mounted"),
            Ok(Err(e)) => assert_eq!(corrupt_structure(&e), "superblock", "{what}: {e}"),
        }
    }
}

#[test]
fn log_start_overflow_is_corruption_not_a_panic() {
    let mut img = build(1024).bytes;
    for slot in 0..2 {
        patch_sb(&mut img, slot, |sb| sb.log_start = u64::MAX / 2);
    }
    let res = catch_unwind(AssertUnwindSafe(|| mount(&img).map(|_| ())));
    let Ok(Err(e)) = res else {
        panic!("log_start of u64::MAX / 2 must be reported as corruption")
    };
    assert_eq!(corrupt_structure(&e), "superblock");
}

#[test]
fn flipped_byte_in_each_checkpoint_block() {
    for bs in [4096, 1024] {
        let img = build(bs).bytes;
        let (_, sb) = current_sb(&img);
        let blocks = chain(&img, &sb);
        assert_eq!(blocks.len() as u64, sb.ckpt_nblocks);
        let bsz = bs as usize;
        for (i, &b) in blocks.iter().enumerate() {
            // A payload byte, a header byte and a padding byte of the last block.
            for off in [HDR_LEN + 5, 20, bsz - 1] {
                let mut m = img.clone();
                flip(&mut m, b as usize * bsz + off);
                match mount(&m) {
                    Ok(_) => panic!("block {i} offset {off}: mounted"),
                    Err(e) => assert_eq!(
                        corrupt_structure(&e),
                        "checkpoint block",
                        "block {i} offset {off}: {e}"
                    ),
                }
            }
        }
    }
}

#[test]
fn flipped_byte_in_a_log_record_ends_the_log_there() {
    for bs in [4096, 1024] {
        let img = build(bs);
        let (_, sb) = current_sb(&img.bytes);
        let recs = records(&img.bytes, &sb);
        assert!(recs.len() >= 2);
        let full = mount(&img.bytes).unwrap().replayed();
        assert_eq!(full.records, recs.len() as u64);
        for (k, &(at, n, padded)) in recs.iter().enumerate() {
            for off in [0, 4, 9, 17, 25, HDR_LEN + (n - HDR_LEN) / 2, n - 1] {
                let mut m = img.bytes.clone();
                flip(&mut m, at + off);
                let fs = mount(&m).unwrap_or_else(|e| panic!("record {k} byte {off}: {e}"));
                assert_eq!(fs.replayed().records, k as u64, "record {k} byte {off}");
                check(&fs, &img.old);
                // What the log held lands as a prefix: everything up to some point, then
                // nothing.
                let present: Vec<bool> = img.new.iter().map(|(p, _)| !absent(&fs, p)).collect();
                let first_missing = present.iter().position(|&p| !p).unwrap_or(present.len());
                assert!(
                    present[first_missing..].iter().all(|&p| !p),
                    "record {k}: {present:?}"
                );
                check(&fs, &img.new[..first_missing]);
                if k == recs.len() - 1 {
                    assert!(absent(&fs, &img.new.last().unwrap().0));
                }
                walk(&fs);
                fs.unmount().unwrap();
                let dev = Arc::clone(fs.device());
                drop(fs);
                // The mount after that is clean and sees the same.
                let fs = ExtentFs::mount(dev, opts()).unwrap();
                assert!(fs.was_clean());
                assert_eq!(fs.replayed().records, 0);
                check(&fs, &img.old);
                check(&fs, &img.new[..first_missing]);
            }
            // Padding after the payload is not part of the record.
            if padded > n {
                let mut m = img.bytes.clone();
                flip(&mut m, at + padded - 1);
                let fs = mount(&m).unwrap();
                assert_eq!(fs.replayed().records, recs.len() as u64);
                check(&fs, &img.new);
            }
        }
    }
}

/// What mounting an image with one flipped byte did.
#[derive(Debug, Default)]
struct Tally {
    mounted: usize,
    corrupt: usize,
    version: usize,
}

/// Flips one byte at each of `offsets` in turn, mounts, and reads everything; a panic
/// anywhere fails the test naming the byte. Returns what happened.
fn sweep(img: &Image, region: &str, offsets: &[usize], must_mount: bool) -> Tally {
    let mut t = Tally::default();
    for &at in offsets {
        let dev = img.flipped(at);
        let res = catch_unwind(AssertUnwindSafe(|| match ExtentFs::mount(dev, opts()) {
            Ok(fs) => {
                walk(&fs);
                if must_mount {
                    check(&fs, &img.old);
                }
                let _ = fs.unmount();
                Ok(())
            }
            Err(e) => Err(e),
        }));
        match res {
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("{region}: flipping byte {at:#x} panicked: {msg}");
            }
            Ok(Ok(())) => t.mounted += 1,
            Ok(Err(e @ Error::Corrupt { .. })) => {
                assert!(!must_mount, "{region}: byte {at:#x}: {e}");
                let s = corrupt_structure(&e);
                assert!(!s.is_empty() && !e.to_string().is_empty());
                t.corrupt += 1;
            }
            Ok(Err(Error::Version { .. })) => t.version += 1,
            Ok(Err(e)) => panic!("{region}: byte {at:#x}: unexpected error {e:?}"),
        }
    }
    t
}

fn every(range: std::ops::Range<usize>, step: usize) -> Vec<usize> {
    range.step_by(step).collect()
}

#[test]
fn sweep_metadata_bytes() {
    let started = Instant::now();
    for (bs, step) in [(4096u32, 5usize), (1024, 3)] {
        let img = build(bs);
        let (cur, sb) = current_sb(&img.bytes);
        let bsz = bs as usize;

        // The newer superblock: a damaged copy leaves the older one, whose checkpoint may
        // or may not survive; never a panic.
        let newer = SB_OFFSETS[cur] as usize;
        let t = sweep(
            &img,
            "newer superblock",
            &every(newer..newer + SB_LEN, 1),
            false,
        );
        assert_eq!(t.mounted + t.corrupt + t.version, SB_LEN);

        // The older superblock: every byte is covered by its checksum, and the newer copy
        // is intact, so every mount succeeds with everything.
        let older = SB_OFFSETS[1 - cur] as usize;
        let t = sweep(
            &img,
            "older superblock",
            &every(older..older + SB_LEN, 1),
            true,
        );
        assert_eq!(t.mounted, SB_LEN, "{t:?}");

        // The current checkpoint: each block is checksummed whole, so every flip is caught.
        let mut offsets = Vec::new();
        for b in chain(&img.bytes, &sb) {
            let at = b as usize * bsz;
            offsets.extend(every(at..at + HDR_LEN, 1));
            offsets.extend(every(at + HDR_LEN..at + bsz, step));
        }
        let t = sweep(&img, "checkpoint", &offsets, false);
        assert_eq!(t.corrupt, offsets.len(), "{t:?}");

        // The log: a damaged record ends the log, so every mount succeeds.
        let mut offsets = Vec::new();
        for (at, _, padded) in records(&img.bytes, &sb) {
            offsets.extend(every(at..at + HDR_LEN, 1));
            offsets.extend(every(at + HDR_LEN..at + padded, step));
        }
        let t = sweep(&img, "log", &offsets, true);
        assert_eq!(t.mounted, offsets.len(), "{t:?}");
    }
    eprintln!("sweep took {:?}", started.elapsed());
}

#[test]
fn a_damaged_newer_superblock_whose_log_was_in_use_is_refused_not_rolled_back() {
    // The second session committed log records under the newest checkpoint: falling back to
    // the older copy would mount metadata whose freed blocks may have been reused since.
    let img = build(4096);
    let (cur, sb) = current_sb(&img.bytes);
    assert!(!records(&img.bytes, &sb).is_empty());
    let mut b = img.bytes.clone();
    flip(&mut b, SB_OFFSETS[cur] as usize + 60);
    let err = mount(&b)
        .err()
        .expect("mounted an older superblock over a used log");
    assert_eq!(corrupt_structure(&err), "superblock");
    assert!(err.to_string().contains("roll back"), "{err}");
    assert_eq!(err.errno(), libc::EUCLEAN);
}
