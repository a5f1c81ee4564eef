//! Inputs the fuzz targets in `fuzz/` found crashing, each kept as a named test with the
//! input inlined and a comment saying what it caught. The same inputs are in
//! `fuzz/corpus/<target>/regression-*`.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use extentfs::format::{self, Superblock, SB_OFFSETS, VERSION};
use extentfs::fuzzing;
use extentfs::meta::{Attr, Op};
use extentfs::{fsck, mkfs, Error, ExtentFs, FileType, MkfsOptions, MountOptions, ROOT_INO};
use iomap_dev::{BlockDevice, BlockDeviceExt, DevAddr, MemDevice};

/// The superblock of the fuzz targets' base image with 512-byte blocks: log at block 256
/// for 8 blocks, 128 data blocks, the checkpoint chain in the last 12.
fn base_superblock() -> Superblock {
    let data_start = 256 + 8;
    let total_blocks = data_start + 128;
    Superblock {
        version: VERSION,
        uuid: *b"extentfs-fuzzing",
        generation: 2,
        block_size: 512,
        flags: 0,
        total_blocks,
        log_start: 256,
        log_blocks: 8,
        data_start,
        ckpt_block: total_blocks - 12,
        ckpt_nblocks: 12,
        ckpt_bytes: 0,
        ckpt_crc: 0,
    }
}

fn chain(sb: &Superblock) -> [(u64, u64); 1] {
    [(sb.ckpt_block, sb.ckpt_nblocks)]
}

/// Little-endian pieces of a hand-written checkpoint body.
#[derive(Default)]
struct Body(Vec<u8>);

impl Body {
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(self, v: &[u8]) -> Self {
        let mut s = self.u32(v.len() as u32);
        s.0.extend_from_slice(v);
        s
    }
    /// Inode `ino`'s number and attributes (stored as a SetAttr op), and no xattrs.
    fn inode(self, ino: u64, kind: u8, perm: u16, nlink: u32, size: u64) -> Self {
        let mut s = self.u64(ino).u8(2).u64(0).u8(kind);
        s.0.extend_from_slice(&perm.to_le_bytes());
        let mut s = s.u32(nlink).u32(0).u32(0).u64(size);
        for _ in 0..4 {
            s = s.u64(1_700_000_000).u32(0);
        }
        s.u32(0).u32(0).u32(0)
    }
}

/// A root directory and inode 2, a file of `size` bytes holding "hello, inline" inline.
fn inline_file_checkpoint(size: u64) -> Vec<u8> {
    Body::default()
        .u64(3) // next inode number
        .u32(2) // inodes
        .inode(1, 2, 0o755, 2, 0)
        .u8(2) // directory body: next cookie, no entries
        .u64(3)
        .u32(0)
        .inode(2, 1, 0o644, 0, size)
        .u8(1) // file body: inline flag, then the data
        .u8(1)
        .bytes(b"hello, inline")
        .u32(0) // free extents (not checked by decoding)
        .u32(0) // shared extents
        .0
}

/// The `checkpoint` target's round trip: a checkpoint whose inline file claimed 18 445 bytes
/// while holding 13 decoded, and the checkpoint a mount writes of it stored the data padded
/// to 2048 bytes, which no mount of a 512-byte-block image accepts: the image mounted once,
/// then never again. Inline data must be exactly the file's size.
#[test]
fn regression_inline_data_shorter_than_size() {
    let sb = base_superblock();
    let err =
        format::decode_checkpoint(&inline_file_checkpoint(18_445), &sb, &chain(&sb)).unwrap_err();
    assert!(
        err.to_string()
            .contains("18445 but 13 bytes of inline data"),
        "{err}"
    );
    // Longer than the data is refused too, even within what fits inline.
    assert!(format::decode_checkpoint(&inline_file_checkpoint(14), &sb, &chain(&sb)).is_err());
    // The file with its true size decodes, and the checkpoint of what it decoded too.
    let (meta, _) =
        format::decode_checkpoint(&inline_file_checkpoint(13), &sb, &chain(&sb)).unwrap();
    let again = format::encode_checkpoint(&meta, &chain(&sb));
    format::decode_checkpoint(&again, &sb, &chain(&sb)).unwrap();
}

/// The current superblock of a freshly made image: the copy with the higher generation.
fn current_superblock(dev: &dyn BlockDevice) -> Superblock {
    let mut best: Option<Superblock> = None;
    for off in SB_OFFSETS {
        let mut buf = vec![0u8; 512];
        dev.read_at(DevAddr(off), &mut buf).unwrap();
        let sb = Superblock::decode(&buf, dev.capacity_bytes()).unwrap();
        if best.as_ref().is_none_or(|b| sb.generation > b.generation) {
            best = Some(sb);
        }
    }
    best.unwrap()
}

fn snapshot(dev: &dyn BlockDevice) -> Vec<u8> {
    let mut out = vec![0u8; dev.capacity_bytes() as usize];
    dev.read_at(DevAddr(0), &mut out).unwrap();
    out
}

/// Formats a 16 MiB image, writes one intact log record holding `payload` (`nops` ops) after
/// its checkpoint, and mounts it; returns the device, what it held before the mount, and the
/// mount's error (panicking if the mount succeeds).
fn mount_with_log_record(payload: &[u8], nops: u32) -> (Arc<dyn BlockDevice>, Vec<u8>, Error) {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(16 << 20));
    mkfs(Arc::clone(&dev), &MkfsOptions::default()).unwrap();
    let sb = current_superblock(&*dev);
    let bs = u64::from(sb.block_size);
    let rec = format::encode_log_record(&sb.uuid, sb.generation, 0, nops, payload, bs as usize);
    dev.write_at(DevAddr(sb.log_start * bs), &rec).unwrap();
    let before = snapshot(&*dev);
    let opts = MountOptions {
        commit_interval: None,
        ..MountOptions::default()
    };
    match ExtentFs::mount(Arc::clone(&dev), opts) {
        Ok(_) => panic!("a log leaving a state no checkpoint can hold was mounted"),
        Err(e) => (dev, before, e),
    }
}

/// The refused mount wrote nothing, and fsck reports the log record.
fn assert_refused(dev: Arc<dyn BlockDevice>, before: &[u8], err: &Error) {
    assert!(
        matches!(
            err,
            Error::Corrupt {
                structure: "log record",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        snapshot(&*dev) == before,
        "a refused mount wrote to the image"
    );
    let report = fsck::fsck(dev, false);
    assert!(
        report.problems.iter().any(|p| p.structure == "log record"),
        "{:?}",
        report.problems
    );
}

/// The `replay` target: an intact log record whose one operation adds a root entry "new"
/// naming inode 2048, which does not exist. Replay applied it (ops are checked only against
/// what they touch), the mount wrote a checkpoint holding the dangling entry, and every later
/// mount refused that checkpoint. Now the mount that replays it refuses, writing nothing, and
/// fsck names the log record.
#[test]
fn regression_log_entry_naming_missing_inode() {
    // DirAdd (tag 4) to directory 1 of the name "new" (u32 length 3), inode 2048, type 1.
    let payload: &[u8] = &[
        4, 1, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, b'n', b'e', b'w', 0, 8, 0, 0, 0, 0, 0, 0, 1,
    ];
    let (dev, before, err) = mount_with_log_record(payload, 1);
    assert_refused(dev, &before, &err);
}

/// The `image` target: a log record's payload damaged (its checksum fixed) so that a file is
/// created under the name "\xd5\xff\0". Replay took the name, which no checkpoint accepts (a
/// name holds no NUL), so the image mounted once and never again. Now that mount refuses.
#[test]
fn regression_log_entry_with_invalid_name() {
    let ops = [
        Op::Create {
            ino: 2,
            attr: Attr::new(FileType::File, 0o644, 0, 0),
            target: Vec::new(),
        },
        Op::DirAdd {
            dir: ROOT_INO,
            name: b"\xd5\xff\0".to_vec(),
            ino: 2,
            kind: FileType::File,
        },
    ];
    let (dev, before, err) = mount_with_log_record(&fuzzing::encode_ops(&ops), 2);
    assert_refused(dev, &before, &err);
}

/// The `replay` target: an intact log record creating inode 2^64 - 1. Replay set the next
/// inode number to one past it, which overflowed (a panic with overflow checks, a wrap to 0
/// without). Now the op is refused as out of range and the mount with it.
#[test]
fn regression_log_creates_the_last_inode_number() {
    let ops = [Op::Create {
        ino: u64::MAX,
        attr: Attr::new(FileType::File, 0o644, 0, 0),
        target: Vec::new(),
    }];
    let (dev, before, err) = mount_with_log_record(&fuzzing::encode_ops(&ops), 1);
    assert!(err.to_string().contains("out of range"), "{err}");
    assert_refused(dev, &before, &err);
}

/// The `image` target: a checkpoint whose next inode number was 2^64 - 1 (the first eight
/// bytes of its body set to 0xff). statfs subtracted it from 2^63 and panicked; creating a
/// file would have logged an inode numbered 2^64 - 1, failed, and shut the filesystem down.
/// Now statfs reports no free inodes and a create fails with ENOSPC, the filesystem alive.
#[test]
fn regression_next_inode_number_at_its_limit() {
    // Replaying the creation of inode 2^64 - 2 leaves the next number at 2^64 - 1, as the
    // damaged checkpoint did.
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(16 << 20));
    mkfs(Arc::clone(&dev), &MkfsOptions::default()).unwrap();
    let sb = current_superblock(&*dev);
    let last = u64::MAX - 1;
    let ops = [
        Op::Create {
            ino: last,
            attr: Attr::new(FileType::File, 0o644, 0, 0),
            target: Vec::new(),
        },
        Op::DirAdd {
            dir: ROOT_INO,
            name: b"last".to_vec(),
            ino: last,
            kind: FileType::File,
        },
    ];
    let bs = u64::from(sb.block_size);
    let payload = fuzzing::encode_ops(&ops);
    let rec = format::encode_log_record(&sb.uuid, sb.generation, 0, 2, &payload, bs as usize);
    dev.write_at(DevAddr(sb.log_start * bs), &rec).unwrap();
    let opts = MountOptions {
        commit_interval: None,
        ..MountOptions::default()
    };
    let fs = ExtentFs::mount(Arc::clone(&dev), opts.clone()).unwrap();
    assert_eq!(fs.statfs().ffree, 0);
    assert!(matches!(
        fs.create(ROOT_INO, b"one-more", 0o644, 0, 0),
        Err(Error::NoSpace)
    ));
    assert_eq!(fs.write(last, 0, b"still alive").unwrap(), 11);
    fs.unmount().unwrap();
    drop(fs);
    let fs = ExtentFs::mount(dev, opts).unwrap();
    let mut buf = [0u8; 11];
    assert_eq!(fs.read(last, 0, &mut buf).unwrap(), 11);
    assert_eq!(&buf, b"still alive");
}
