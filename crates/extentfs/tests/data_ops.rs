//! Per-operation tests of file data: read and write, truncate down and up, every fallocate
//! mode (default, KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE, COLLAPSE_RANGE, INSERT_RANGE),
//! copy_file_range, clones that share blocks, SEEK_DATA and SEEK_HOLE, and fsync durability
//! across a crash. Contents are checked byte for byte against an expected copy, in the cache,
//! after dropping the cache, and after a remount with a clean fsck.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use extentfs::{fsck, mkfs, ExtentFs, MkfsOptions, Whence, ROOT_INO};
use iomap_dev::{BlockDevice, CrashDevice, MemDevice, Pending};

mod common;
use common::*;

const KEEP: i32 = libc::FALLOC_FL_KEEP_SIZE;
const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
const ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE;
const COLLAPSE: i32 = libc::FALLOC_FL_COLLAPSE_RANGE;
const INSERT: i32 = libc::FALLOC_FL_INSERT_RANGE;

/// Checks `ino` against `want`, first in the cache, then after dropping it.
fn expect(fs: &ExtentFs, ino: u64, want: &[u8], at: &str) {
    for pass in ["cached", "uncached"] {
        if pass == "uncached" {
            fs.drop_caches().unwrap();
        }
        let got = read_all(fs, ino);
        assert_eq!(got.len(), want.len(), "{at} ({pass}): size");
        if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
            panic!(
                "{at} ({pass}): byte {i} is {:#x}, want {:#x}",
                got[i], want[i]
            );
        }
    }
}

fn fsync(fs: &ExtentFs, ino: u64) {
    let fh = fs.open(ino).unwrap();
    fs.fsync(&fh, false).unwrap();
    fs.release(fh).unwrap();
}

/// Blocks of `bs` bytes the file holds, from `stat`'s 512-byte count.
fn blocks(fs: &ExtentFs, ino: u64) -> u64 {
    fs.getattr(ino).unwrap().blocks * 512 / u64::from(fs.block_size())
}

fn put(model: &mut Vec<u8>, pos: usize, data: &[u8]) {
    if model.len() < pos + data.len() {
        model.resize(pos + data.len(), 0);
    }
    model[pos..pos + data.len()].copy_from_slice(data);
}

fn zero(model: &mut [u8], start: usize, end: usize) {
    let end = end.min(model.len());
    if start < end {
        model[start..end].fill(0);
    }
}

#[test]
fn writes_and_reads_are_byte_exact_with_gaps_overwrites_and_short_reads() {
    for bs in [1024u32, 4096] {
        let (dev, fs) = fresh_bs(32 << 20, bs);
        let at = format!("block size {bs}");
        let f = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
        let mut model = Vec::new();
        for (pos, len, seed) in [
            (0usize, 1usize, 1u8),
            (1, 5000, 2),
            (100_000, 3, 3),
            (4095, 2, 4),
            (50_000, 70_000, 5),
            (7, 1_000_000, 6),
            (1_200_001, 333, 7),
        ] {
            let data = pattern(len, seed);
            assert_eq!(fs.write(f, pos as u64, &data).unwrap(), len);
            put(&mut model, pos, &data);
            assert_eq!(fs.getattr(f).unwrap().size, model.len() as u64);
        }
        expect(&fs, f, &model, &at);
        // Reads at and past EOF are short or empty; a zero-length write changes nothing.
        let size = model.len() as u64;
        let mut buf = vec![0xeeu8; 100];
        assert_eq!(fs.read(f, size - 10, &mut buf).unwrap(), 10);
        assert_eq!(&buf[..10], &model[model.len() - 10..]);
        assert_eq!(fs.read(f, size, &mut buf).unwrap(), 0);
        assert_eq!(fs.read(f, size + 12345, &mut buf).unwrap(), 0);
        assert_eq!(fs.write(f, size + 999, b"").unwrap(), 0);
        assert_eq!(fs.getattr(f).unwrap().size, size);
        let fs = remount(fs, &dev);
        expect(&fs, f, &model, &format!("{at} after remount"));
    }
}

#[test]
fn a_small_inline_file_grows_into_blocks_keeping_its_bytes() {
    let (dev, fs) = fresh(16 << 20);
    let f = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    let head = pattern(700, 1);
    fs.write(f, 0, &head).unwrap();
    // Small files live in the inode: no blocks.
    fs.syncfs().unwrap();
    assert_eq!(fs.getattr(f).unwrap().blocks, 2);
    let mut model = head.clone();
    let fs = remount(fs, &dev);
    expect(&fs, f, &model, "inline after remount");
    // Past the inline limit the bytes move to a block; the gap reads as zeros.
    let far = pattern(3000, 2);
    fs.write(f, 9000, &far).unwrap();
    put(&mut model, 9000, &far);
    expect(&fs, f, &model, "after growing");
    fsync(&fs, f);
    assert!(blocks(&fs, f) >= 2);
    // A file of zeros moves out without a block.
    let z = fs.create(ROOT_INO, b"z", 0o644, 0, 0).unwrap().ino;
    fs.write(z, 0, &[0u8; 100]).unwrap();
    fs.write(z, 20_000, b"end").unwrap();
    let mut zmodel = vec![0u8; 20_003];
    zmodel[20_000..].copy_from_slice(b"end");
    let fs = remount(fs, &dev);
    expect(&fs, f, &model, "grown after remount");
    expect(&fs, z, &zmodel, "zeros after remount");
    // Shrinking back into the inline range keeps the head.
    fs.truncate(f, 500).unwrap();
    model.truncate(500);
    expect(&fs, f, &model, "truncated");
    let fs = remount(fs, &dev);
    expect(&fs, f, &model, "truncated after remount");
}

#[test]
fn truncate_down_then_up_reads_the_cut_bytes_as_zeros() {
    for bs in [1024u32, 4096] {
        let (dev, fs) = fresh_bs(32 << 20, bs);
        let f = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
        let data = pattern(300_000, 9);
        fs.write(f, 0, &data).unwrap();
        let mut model = data.clone();
        // Down inside a block while the data is still only cached, then up past it.
        fs.truncate(f, 250_123).unwrap();
        model.truncate(250_123);
        expect(&fs, f, &model, "down, cached");
        fs.truncate(f, 260_000).unwrap();
        model.resize(260_000, 0);
        expect(&fs, f, &model, "up, cached");
        fsync(&fs, f);
        // Down on written data, across many blocks; the blocks are freed.
        let before = blocks(&fs, f);
        fs.truncate(f, 10_001).unwrap();
        model.truncate(10_001);
        fsync(&fs, f);
        let after = blocks(&fs, f);
        assert_eq!(
            after,
            10_001u64.div_ceil(u64::from(bs)),
            "block size {bs}: {before} -> {after} blocks"
        );
        fs.truncate(f, 200_000).unwrap();
        model.resize(200_000, 0);
        expect(&fs, f, &model, "up after written down");
        // Extending adds no blocks: the new range is a hole.
        assert_eq!(blocks(&fs, f), after);
        // Writing past the new end, then truncating into the middle of the written block.
        fs.write(f, 199_990, b"0123456789abcdef").unwrap();
        put(&mut model, 199_990, b"0123456789abcdef");
        fs.truncate(f, 199_995).unwrap();
        model.truncate(199_995);
        fs.truncate(f, 200_100).unwrap();
        model.resize(200_100, 0);
        expect(&fs, f, &model, "short cut and regrow");
        // To zero and back.
        let fs = remount(fs, &dev);
        expect(&fs, f, &model, "after remount");
        fs.truncate(f, 0).unwrap();
        fs.truncate(f, 5000).unwrap();
        expect(&fs, f, &[0u8; 5000], "zeroed");
        fsync(&fs, f);
        assert_eq!(blocks(&fs, f), 0);
        let fs = remount(fs, &dev);
        expect(&fs, f, &[0u8; 5000], "zeroed after remount");
    }
}

/// Caught: truncating to the current size left blocks preallocated past EOF with KEEP_SIZE
/// allocated, so they stayed taken until the file was deleted; Linux frees blocks past EOF on
/// every truncate that does not grow the file.
#[test]
fn regression_truncate_to_the_same_size_frees_blocks_preallocated_past_eof() {
    let (dev, fs) = fresh(32 << 20);
    let f = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    let data = pattern(10_000, 3);
    fs.write(f, 0, &data).unwrap();
    fsync(&fs, f);
    let free0 = fs.statfs().bfree;
    fs.fallocate(f, KEEP, 0, 4 << 20).unwrap();
    assert_eq!(fs.getattr(f).unwrap().size, 10_000);
    assert_eq!(blocks(&fs, f), 1024);
    assert!(fs.statfs().bfree + 1000 < free0);
    fs.truncate(f, 10_000).unwrap();
    assert_eq!(blocks(&fs, f), 3);
    fs.commit().unwrap();
    assert!(fs.statfs().bfree + 4 >= free0);
    expect(&fs, f, &data, "after the truncate");
    let fs = remount(fs, &dev);
    assert_eq!(blocks(&fs, f), 3);
    expect(&fs, f, &data, "after remount");
}

#[test]
fn fallocate_default_allocates_zeroed_blocks_and_grows_the_file() {
    let (dev, fs) = fresh(32 << 20);
    let f = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    let head = pattern(6000, 1);
    fs.write(f, 0, &head).unwrap();
    fsync(&fs, f);
    let free0 = fs.statfs().bfree;
    // Unaligned range: whole blocks around it are allocated, the size is the exact end.
    fs.fallocate(f, 0, 5000, 1_000_000).unwrap();
    assert_eq!(fs.getattr(f).unwrap().size, 1_005_000);
    assert_eq!(blocks(&fs, f), 1_005_000u64.div_ceil(4096));
    let used = free0 - fs.statfs().bfree;
    assert!((243..=250).contains(&used), "allocated {used} blocks");
    let mut model = head.clone();
    model.resize(1_005_000, 0);
    expect(&fs, f, &model, "after fallocate");
    // Preallocated blocks read as zeros until written; writes into them land exactly.
    let mid = pattern(10_000, 2);
    fs.write(f, 500_000, &mid).unwrap();
    put(&mut model, 500_000, &mid);
    fsync(&fs, f);
    assert!(
        free0 - fs.statfs().bfree <= used + 1,
        "writes into preallocated space allocate"
    );
    // A range already allocated changes nothing; a range inside the file keeps the size.
    fs.fallocate(f, 0, 0, 8192).unwrap();
    assert_eq!(fs.getattr(f).unwrap().size, 1_005_000);
    let fs = remount(fs, &dev);
    expect(&fs, f, &model, "after remount");
    assert_eq!(blocks(&fs, f), 1_005_000u64.div_ceil(4096));
}

#[test]
fn fallocate_keep_size_allocates_past_eof_without_growing_the_file() {
    let (dev, fs) = fresh(32 << 20);
    let f = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    let head = pattern(5000, 1);
    fs.write(f, 0, &head).unwrap();
    fsync(&fs, f);
    let mtime = fs.getattr(f).unwrap().mtime;
    fs.fallocate(f, KEEP, 0, 1 << 20).unwrap();
    let st = fs.getattr(f).unwrap();
    assert_eq!(st.size, 5000);
    assert!(st.mtime >= mtime);
    assert_eq!(blocks(&fs, f), 256);
    expect(&fs, f, &head, "after KEEP_SIZE");
    // Growing into the preallocation shows zeros, then written bytes.
    let mut model = head.clone();
    fs.truncate(f, 100_000).unwrap();
    model.resize(100_000, 0);
    expect(&fs, f, &model, "grown into the preallocation");
    let tail = pattern(4000, 5);
    fs.write(f, 300_000, &tail).unwrap();
    put(&mut model, 300_000, &tail);
    fsync(&fs, f);
    assert_eq!(
        blocks(&fs, f),
        256,
        "writes inside the preallocation take no more"
    );
    let fs = remount(fs, &dev);
    expect(&fs, f, &model, "after remount");
    assert_eq!(blocks(&fs, f), 256);
}

#[test]
fn punch_hole_zeroes_the_range_and_frees_whole_blocks() {
    for bs in [1024u32, 4096] {
        let b = u64::from(bs);
        let (dev, fs) = fresh_bs(32 << 20, bs);
        let f = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
        let mut model = pattern(64 * bs as usize, 7);
        fs.write(f, 0, &model).unwrap();
        fsync(&fs, f);
        assert_eq!(blocks(&fs, f), 64);
        // Unaligned: partial blocks at both edges are zeroed, the 10 whole ones freed.
        let (start, end) = (3 * b + 100, 14 * b + 7);
        fs.fallocate(f, PUNCH, start, end - start).unwrap();
        zero(&mut model, start as usize, end as usize);
        assert_eq!(fs.getattr(f).unwrap().size, 64 * b);
        assert_eq!(blocks(&fs, f), 64 - 10, "block size {bs}");
        expect(&fs, f, &model, "unaligned punch");
        // Inside one block: zeroed in place, nothing freed.
        fs.fallocate(f, PUNCH, 20 * b + 1, 10).unwrap();
        zero(&mut model, 20 * bs as usize + 1, 20 * bs as usize + 11);
        assert_eq!(blocks(&fs, f), 54);
        // Over the end of the file: the size stays.
        fs.fallocate(f, PUNCH, 60 * b, 100 * b).unwrap();
        zero(&mut model, 60 * bs as usize, usize::MAX);
        assert_eq!(fs.getattr(f).unwrap().size, 64 * b);
        assert_eq!(blocks(&fs, f), 50);
        // Over cached, not yet written data.
        let fresh_data = pattern(8 * bs as usize, 8);
        fs.write(f, 30 * b, &fresh_data).unwrap();
        put(&mut model, 30 * bs as usize, &fresh_data);
        fs.fallocate(f, PUNCH, 31 * b, 2 * b).unwrap();
        zero(&mut model, 31 * bs as usize, 33 * bs as usize);
        expect(&fs, f, &model, "punch over cached data");
        assert_eq!(fs.lseek(f, 4 * b, Whence::Hole).unwrap(), 4 * b);
        assert_eq!(fs.lseek(f, 4 * b, Whence::Data).unwrap(), 14 * b);
        let fs = remount(fs, &dev);
        expect(&fs, f, &model, "after remount");
        assert_eq!(blocks(&fs, f), 48);
    }
}

#[test]
fn zero_range_zeroes_and_keeps_the_blocks_allocated() {
    for bs in [1024u32, 4096] {
        let b = u64::from(bs);
        let (dev, fs) = fresh_bs(32 << 20, bs);
        let f = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
        let mut model = pattern(32 * bs as usize, 3);
        fs.write(f, 0, &model).unwrap();
        fsync(&fs, f);
        let (start, end) = (2 * b + 5, 20 * b + 77);
        fs.fallocate(f, ZERO, start, end - start).unwrap();
        zero(&mut model, start as usize, end as usize);
        assert_eq!(
            blocks(&fs, f),
            32,
            "block size {bs}: zeroed blocks stay allocated"
        );
        expect(&fs, f, &model, "zero range inside");
        // Zeroed whole blocks are unwritten: holes to SEEK_DATA once no cached folio
        // (which may hold zeroed blocks of the range's edges) is over them.
        fs.drop_caches().unwrap();
        assert_eq!(fs.lseek(f, 3 * b, Whence::Data).unwrap(), 20 * b);
        // Past EOF: without KEEP_SIZE the file grows, with it only the blocks are taken.
        fs.fallocate(f, ZERO | KEEP, 30 * b, 10 * b).unwrap();
        zero(&mut model, 30 * bs as usize, 40 * bs as usize);
        assert_eq!(fs.getattr(f).unwrap().size, 32 * b);
        assert_eq!(blocks(&fs, f), 40);
        fs.fallocate(f, ZERO, 31 * b + 3, 20 * b).unwrap();
        zero(&mut model, 31 * bs as usize + 3, usize::MAX);
        model.resize(51 * bs as usize + 3, 0);
        assert_eq!(fs.getattr(f).unwrap().size, 51 * b + 3);
        expect(&fs, f, &model, "zero range past EOF");
        // Over cached dirty data.
        let d = pattern(5 * bs as usize, 11);
        fs.write(f, 8 * b, &d).unwrap();
        put(&mut model, 8 * bs as usize, &d);
        fs.fallocate(f, ZERO, 9 * b - 1, b + 2).unwrap();
        zero(&mut model, 9 * bs as usize - 1, 10 * bs as usize + 1);
        expect(&fs, f, &model, "zero range over dirty data");
        let fs = remount(fs, &dev);
        expect(&fs, f, &model, "after remount");
    }
}

#[test]
fn collapse_range_removes_blocks_and_moves_the_rest_down() {
    let (dev, fs) = fresh(32 << 20);
    let f = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    let mut model = pattern(40 * 4096 + 1234, 4);
    fs.write(f, 0, &model).unwrap();
    // Half the data written back, half still cached.
    fsync(&fs, f);
    let more = pattern(5 * 4096, 5);
    fs.write(f, 30 * 4096, &more).unwrap();
    put(&mut model, 30 * 4096, &more);
    fs.fallocate(f, COLLAPSE, 8 * 4096, 12 * 4096).unwrap();
    model.drain(8 * 4096..20 * 4096);
    assert_eq!(fs.getattr(f).unwrap().size, model.len() as u64);
    expect(&fs, f, &model, "after collapse");
    fsync(&fs, f);
    assert_eq!(blocks(&fs, f), (model.len() as u64).div_ceil(4096));
    // Collapsing the first block.
    fs.fallocate(f, COLLAPSE, 0, 4096).unwrap();
    model.drain(..4096);
    expect(&fs, f, &model, "after collapsing the head");
    // Refused: unaligned, reaching EOF, with other flags.
    let size = model.len() as u64;
    assert_eq!(errno(fs.fallocate(f, COLLAPSE, 100, 4096)), libc::EINVAL);
    assert_eq!(errno(fs.fallocate(f, COLLAPSE, 0, 4000)), libc::EINVAL);
    assert_eq!(
        errno(fs.fallocate(f, COLLAPSE, 4096, size - 4096)),
        libc::EINVAL
    );
    assert_eq!(
        errno(fs.fallocate(f, COLLAPSE | KEEP, 0, 4096)),
        libc::EINVAL
    );
    assert_eq!(fs.getattr(f).unwrap().size, size);
    let fs = remount(fs, &dev);
    expect(&fs, f, &model, "after remount");
}

#[test]
fn insert_range_moves_the_rest_up_and_leaves_a_hole() {
    let (dev, fs) = fresh(32 << 20);
    let f = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    let mut model = pattern(20 * 4096 + 77, 6);
    fs.write(f, 0, &model).unwrap();
    fsync(&fs, f);
    let blocks0 = blocks(&fs, f);
    fs.fallocate(f, INSERT, 4 * 4096, 3 * 4096).unwrap();
    model.splice(4 * 4096..4 * 4096, vec![0u8; 3 * 4096]);
    assert_eq!(fs.getattr(f).unwrap().size, model.len() as u64);
    assert_eq!(blocks(&fs, f), blocks0, "the inserted range is a hole");
    expect(&fs, f, &model, "after insert");
    assert_eq!(fs.lseek(f, 4 * 4096, Whence::Hole).unwrap(), 4 * 4096);
    assert_eq!(fs.lseek(f, 4 * 4096, Whence::Data).unwrap(), 7 * 4096);
    // Inserting into cached dirty data, at the start of the file.
    let d = pattern(4096, 9);
    fs.write(f, 0, &d).unwrap();
    put(&mut model, 0, &d);
    fs.fallocate(f, INSERT, 0, 4096).unwrap();
    model.splice(0..0, vec![0u8; 4096]);
    expect(&fs, f, &model, "after inserting at 0");
    // Refused: at or past EOF, unaligned, with other flags.
    let size = model.len() as u64;
    assert_eq!(
        errno(fs.fallocate(f, INSERT, size.next_multiple_of(4096), 4096)),
        libc::EINVAL
    );
    assert_eq!(errno(fs.fallocate(f, INSERT, 4096, 100)), libc::EINVAL);
    assert_eq!(errno(fs.fallocate(f, INSERT | KEEP, 0, 4096)), libc::EINVAL);
    assert_eq!(fs.getattr(f).unwrap().size, size);
    let fs = remount(fs, &dev);
    expect(&fs, f, &model, "after remount");
}

#[test]
fn fallocate_refuses_bad_modes_and_lengths() {
    let (_dev, fs) = fresh(16 << 20);
    let f = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    fs.write(f, 0, &pattern(10_000, 1)).unwrap();
    assert_eq!(errno(fs.fallocate(f, 0, 0, 0)), libc::EINVAL);
    assert_eq!(
        errno(fs.fallocate(f, libc::FALLOC_FL_PUNCH_HOLE, 0, 4096)),
        libc::EINVAL,
        "PUNCH_HOLE needs KEEP_SIZE"
    );
    assert_eq!(errno(fs.fallocate(f, PUNCH | ZERO, 0, 4096)), libc::EINVAL);
    assert_eq!(
        errno(fs.fallocate(f, libc::FALLOC_FL_UNSHARE_RANGE, 0, 4096)),
        libc::EOPNOTSUPP
    );
    assert_eq!(
        errno(fs.fallocate(f, COLLAPSE | INSERT, 0, 4096)),
        libc::EINVAL
    );
    expect(&fs, f, &pattern(10_000, 1), "after refusals");
}

#[test]
fn copy_file_range_copies_unaligned_ranges_byte_for_byte() {
    let (dev, fs) = fresh(32 << 20);
    let src = fs.create(ROOT_INO, b"src", 0o644, 0, 0).unwrap().ino;
    let dst = fs.create(ROOT_INO, b"dst", 0o644, 0, 0).unwrap().ino;
    let s = pattern(300_000, 2);
    fs.write(src, 0, &s).unwrap();
    let mut d = pattern(50_000, 3);
    fs.write(dst, 0, &d).unwrap();
    fsync(&fs, src);
    let free0 = fs.statfs().bfree;
    // Unaligned: a plain copy.
    assert_eq!(
        fs.copy_file_range(src, 1001, dst, 2002, 100_000).unwrap(),
        100_000
    );
    put(&mut d, 2002, &s[1001..101_001]);
    expect(&fs, dst, &d, "unaligned copy");
    // Past the end of the destination: the gap reads as zeros.
    assert_eq!(
        fs.copy_file_range(src, 7, dst, 200_003, 1000).unwrap(),
        1000
    );
    put(&mut d, 200_003, &s[7..1007]);
    expect(&fs, dst, &d, "copy past EOF");
    // The length is cut at the source's end; from past it nothing is copied.
    assert_eq!(
        fs.copy_file_range(src, 299_000, dst, 0, 5000).unwrap(),
        1000
    );
    put(&mut d, 0, &s[299_000..]);
    assert_eq!(fs.copy_file_range(src, 300_000, dst, 0, 5000).unwrap(), 0);
    assert_eq!(fs.copy_file_range(src, 400_000, dst, 0, 5000).unwrap(), 0);
    // Within one file: apart is fine, overlapping is refused.
    assert_eq!(
        fs.copy_file_range(src, 3, src, 200_001, 50_000).unwrap(),
        50_000
    );
    let mut s2 = s.clone();
    put(&mut s2, 200_001, &s[3..50_003]);
    assert_eq!(
        errno(fs.copy_file_range(src, 0, src, 10_000, 20_000)),
        libc::EINVAL
    );
    expect(&fs, src, &s2, "source after copies");
    expect(&fs, dst, &d, "destination after copies");
    fs.syncfs().unwrap();
    // The destination grew from 13 blocks to 27 of its own (25 at the head, 2 past the
    // hole): nothing was shared.
    assert_eq!(blocks(&fs, dst), 27);
    assert!(
        free0 - fs.statfs().bfree >= 14,
        "an unaligned copy writes its own blocks"
    );
    let fs = remount(fs, &dev);
    expect(&fs, src, &s2, "source after remount");
    expect(&fs, dst, &d, "destination after remount");
}

#[test]
fn clone_range_shares_blocks_until_either_side_is_written() {
    let (dev, fs) = fresh(64 << 20);
    let src = fs.create(ROOT_INO, b"src", 0o644, 0, 0).unwrap().ino;
    let s = pattern(4 << 20, 1);
    fs.write(src, 0, &s).unwrap();
    fsync(&fs, src);
    fs.commit().unwrap();
    let free0 = fs.statfs().bfree;
    let dst = fs.create(ROOT_INO, b"dst", 0o644, 0, 0).unwrap().ino;
    fs.clone_range(src, 0, dst, 0, 4 << 20).unwrap();
    fs.commit().unwrap();
    let free1 = fs.statfs().bfree;
    assert!(
        free0.abs_diff(free1) <= 4,
        "a 1024-block clone changed free space by {}",
        free0 as i64 - free1 as i64
    );
    assert_eq!(blocks(&fs, dst), 1024);
    expect(&fs, dst, &s, "clone");
    // Writing the clone copies only the written block.
    let patch = pattern(100, 77);
    fs.write(dst, 1_000_000, &patch).unwrap();
    let mut d = s.clone();
    put(&mut d, 1_000_000, &patch);
    fsync(&fs, dst);
    fs.commit().unwrap();
    let free2 = fs.statfs().bfree;
    assert!(
        (1..=4).contains(&(free1 - free2)),
        "copy-on-write of one block took {} blocks",
        free1 - free2
    );
    expect(&fs, dst, &d, "written clone");
    expect(&fs, src, &s, "source untouched by the clone's write");
    // Writing the source does not show in the clone either.
    fs.write(src, 0, b"SOURCE").unwrap();
    let mut s2 = s.clone();
    put(&mut s2, 0, b"SOURCE");
    fsync(&fs, src);
    expect(&fs, dst, &d, "clone untouched by the source's write");
    let fs = remount(fs, &dev);
    expect(&fs, src, &s2, "source after remount");
    expect(&fs, dst, &d, "clone after remount");
    // Deleting the source frees only what the clone does not share.
    let free3 = fs.statfs().bfree;
    fs.unlink(ROOT_INO, b"src").unwrap();
    fs.commit().unwrap();
    let freed = fs.statfs().bfree - free3;
    assert!(
        (1..=4).contains(&freed),
        "deleting the source freed {freed} blocks"
    );
    expect(&fs, dst, &d, "clone after the source is gone");
    let fs = remount(fs, &dev);
    expect(&fs, dst, &d, "clone after the source is gone and a remount");
    fs.unlink(ROOT_INO, b"dst").unwrap();
    fs.commit().unwrap();
    assert!(fs.statfs().bfree >= free0 + 1020);
    drop(remount(fs, &dev));
}

#[test]
fn an_aligned_copy_file_range_shares_blocks_and_partial_clones_land_exactly() {
    let (dev, fs) = fresh(64 << 20);
    let src = fs.create(ROOT_INO, b"src", 0o644, 0, 0).unwrap().ino;
    let s = pattern((2 << 20) + 1000, 5);
    fs.write(src, 0, &s).unwrap();
    fsync(&fs, src);
    fs.commit().unwrap();
    let dst = fs.create(ROOT_INO, b"dst", 0o644, 0, 0).unwrap().ino;
    let mut d = pattern(100 * 4096, 6);
    fs.write(dst, 0, &d).unwrap();
    fsync(&fs, dst);
    fs.commit().unwrap();
    let free0 = fs.statfs().bfree;
    // Block-aligned: shared, not copied; the blocks it replaces in the destination are freed.
    assert_eq!(
        fs.copy_file_range(src, 8 * 4096, dst, 40 * 4096, 256 * 4096)
            .unwrap(),
        256 * 4096
    );
    put(&mut d, 40 * 4096, &s[8 * 4096..264 * 4096]);
    fs.commit().unwrap();
    let free1 = fs.statfs().bfree;
    assert!(
        free1 + 4 >= free0 && free1 <= free0 + 64,
        "an aligned 256-block copy moved free space from {free0} to {free1}"
    );
    expect(&fs, dst, &d, "aligned copy");
    // The tail of the source to the end of the destination: the last block is partial.
    let dsize = d.len() as u64;
    let tail_from = 512 * 4096u64;
    let n = fs
        .copy_file_range(src, tail_from, dst, dsize, s.len() as u64 - tail_from)
        .unwrap();
    assert_eq!(n, s.len() as u64 - tail_from);
    put(&mut d, dsize as usize, &s[tail_from as usize..]);
    expect(&fs, dst, &d, "partial tail clone");
    // Clones proper refuse what they cannot share.
    assert_eq!(errno(fs.clone_range(src, 100, dst, 0, 4096)), libc::EINVAL);
    assert_eq!(errno(fs.clone_range(src, 0, dst, 100, 4096)), libc::EINVAL);
    assert_eq!(errno(fs.clone_range(src, 0, dst, 0, 4000)), libc::EINVAL);
    assert_eq!(
        errno(fs.clone_range(src, 0, dst, 0, s.len() as u64 + 4096)),
        libc::EINVAL
    );
    assert_eq!(errno(fs.clone_range(src, 0, src, 4096, 8192)), libc::EINVAL);
    expect(&fs, dst, &d, "after refused clones");
    let fs = remount(fs, &dev);
    expect(&fs, dst, &d, "after remount");
    expect(&fs, src, &s, "source after remount");
}

#[test]
fn seek_data_and_seek_hole_find_data_holes_and_preallocation() {
    let (dev, fs) = fresh(32 << 20);
    let f = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    const M: u64 = 1 << 20;
    fs.write(f, 0, &pattern(4096, 1)).unwrap();
    fs.write(f, M, &pattern(8192, 2)).unwrap();
    fs.truncate(f, 2 * M).unwrap();
    let check = |fs: &ExtentFs, at: &str| {
        let data = |p| fs.lseek(f, p, Whence::Data);
        let hole = |p| fs.lseek(f, p, Whence::Hole);
        assert_eq!(data(0).unwrap(), 0, "{at}");
        assert_eq!(hole(0).unwrap(), 4096, "{at}");
        assert_eq!(hole(100).unwrap(), 4096, "{at}");
        assert_eq!(data(4096).unwrap(), M, "{at}");
        assert_eq!(data(5000).unwrap(), M, "{at}");
        assert_eq!(hole(5000).unwrap(), 5000, "{at}");
        assert_eq!(data(M + 10).unwrap(), M + 10, "{at}");
        assert_eq!(hole(M).unwrap(), M + 8192, "{at}");
        assert_eq!(hole(2 * M - 1).unwrap(), 2 * M - 1, "{at}");
        assert_eq!(errno(data(M + 8192)), libc::ENXIO, "{at}");
        assert_eq!(errno(data(2 * M)), libc::ENXIO, "{at}");
        assert_eq!(errno(hole(2 * M)), libc::ENXIO, "{at}");
        assert_eq!(errno(hole(3 * M)), libc::ENXIO, "{at}");
    };
    check(&fs, "cached");
    fsync(&fs, f);
    fs.drop_caches().unwrap();
    check(&fs, "written back");
    // Preallocated blocks are holes until written; written ones are data.
    fs.fallocate(f, KEEP, 8 * 4096, 8 * 4096).unwrap();
    fs.drop_caches().unwrap();
    assert_eq!(fs.lseek(f, 4096, Whence::Data).unwrap(), M);
    fs.write(f, 10 * 4096 + 5, b"x").unwrap();
    assert_eq!(fs.lseek(f, 4096, Whence::Data).unwrap(), 10 * 4096);
    fsync(&fs, f);
    fs.drop_caches().unwrap();
    assert_eq!(fs.lseek(f, 4096, Whence::Data).unwrap(), 10 * 4096);
    assert_eq!(fs.lseek(f, 10 * 4096, Whence::Hole).unwrap(), 11 * 4096);
    // An empty file has neither.
    let e = fs.create(ROOT_INO, b"e", 0o644, 0, 0).unwrap().ino;
    assert_eq!(errno(fs.lseek(e, 0, Whence::Data)), libc::ENXIO);
    assert_eq!(errno(fs.lseek(e, 0, Whence::Hole)), libc::ENXIO);
    // A small inline file is all data.
    fs.write(e, 0, b"tiny").unwrap();
    assert_eq!(fs.lseek(e, 0, Whence::Data).unwrap(), 0);
    assert_eq!(fs.lseek(e, 0, Whence::Hole).unwrap(), 4);
    let fs = remount(fs, &dev);
    assert_eq!(fs.lseek(f, 4096, Whence::Data).unwrap(), 10 * 4096);
    assert_eq!(fs.lseek(f, 0, Whence::Hole).unwrap(), 4096);
    assert_eq!(fs.lseek(f, M, Whence::Hole).unwrap(), M + 8192);
    assert_eq!(fs.lseek(e, 0, Whence::Hole).unwrap(), 4);
}

#[test]
fn fsync_makes_data_sizes_and_holes_durable_across_a_crash() {
    let mem = MemDevice::new(32 << 20);
    let crash = Arc::new(CrashDevice::new(mem).unwrap());
    mkfs(crash.clone(), &MkfsOptions::default()).unwrap();
    let fs = ExtentFs::mount(crash.clone(), opts()).unwrap();
    let a = fs.create(ROOT_INO, b"a", 0o644, 0, 0).unwrap().ino;
    let b = fs.create(ROOT_INO, b"b", 0o644, 0, 0).unwrap().ino;
    let c = fs.create(ROOT_INO, b"c", 0o644, 0, 0).unwrap().ino;
    // a: written, fsynced, then cut down, punched, and fsynced again.
    let mut am = pattern(500_000, 1);
    fs.write(a, 0, &am).unwrap();
    let ha = fs.open(a).unwrap();
    fs.fsync(&ha, false).unwrap();
    fs.truncate(a, 300_001).unwrap();
    am.truncate(300_001);
    fs.fallocate(a, PUNCH, 8192, 40_000).unwrap();
    zero(&mut am, 8192, 48_192);
    fs.fsync(&ha, false).unwrap();
    // b: written and fdatasync'd, in two rounds.
    let mut bm = pattern(70_000, 2);
    fs.write(b, 0, &bm).unwrap();
    let hb = fs.open(b).unwrap();
    fs.fsync(&hb, true).unwrap();
    let more = pattern(30_000, 3);
    fs.write(b, 65_000, &more).unwrap();
    put(&mut bm, 65_000, &more);
    fs.fsync(&hb, true).unwrap();
    // c: a clone of b's aligned head, fsynced.
    fs.clone_range(b, 0, c, 0, 16 * 4096).unwrap();
    let hc = fs.open(c).unwrap();
    fs.fsync(&hc, false).unwrap();
    let cm = bm[..16 * 4096].to_vec();
    // Later writes that are never synced.
    fs.write(a, 0, &pattern(100_000, 9)).unwrap();
    fs.write(b, 200_000, b"unsynced").unwrap();
    let t = crash.events();
    for pending in [
        Pending::None,
        Pending::Random {
            seed: 7,
            tear: true,
        },
    ] {
        let image: Arc<dyn BlockDevice> = Arc::new(crash.image_at(t, &pending).unwrap());
        let report = fsck::fsck(Arc::clone(&image), false);
        assert!(report.is_clean(), "{pending:?}: {:?}", report.problems);
        let fs2 = ExtentFs::mount(Arc::clone(&image), opts()).unwrap();
        let got_a = read_all(&fs2, a);
        assert_eq!(got_a.len(), am.len(), "{pending:?}: size of a");
        // The unsynced overwrite of a's head may or may not have reached the disk.
        let new_head = pattern(100_000, 9);
        for (i, &byte) in got_a.iter().enumerate() {
            let ok = byte == am[i] || (i < 100_000 && byte == new_head[i]);
            assert!(ok, "{pending:?}: byte {i} of a is {byte:#x}");
        }
        assert_eq!(&got_a[100_000..], &am[100_000..], "{pending:?}");
        let got_b = read_all(&fs2, b);
        assert!(got_b.len() >= bm.len(), "{pending:?}: b lost fsynced bytes");
        assert_eq!(&got_b[..bm.len()], &bm[..], "{pending:?}: b");
        assert_eq!(read_all(&fs2, c), cm, "{pending:?}: c");
        fs2.unmount().unwrap();
        drop(fs2);
        let report = fsck::fsck(image, false);
        assert!(report.is_clean(), "{pending:?}: {:?}", report.problems);
    }
    fs.release(ha).unwrap();
    fs.release(hb).unwrap();
    fs.release(hc).unwrap();
    fs.abandon();
}

#[test]
fn inline_files_read_zeros_in_gaps_and_never_show_cut_bytes_again() {
    let (dev, fs) = fresh(16 << 20);
    let f = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap().ino;
    let mut model = Vec::new();
    fs.write(f, 0, b"abc").unwrap();
    put(&mut model, 0, b"abc");
    fs.write(f, 1000, b"xyz").unwrap();
    put(&mut model, 1000, b"xyz");
    expect(&fs, f, &model, "gap inside the inline data");
    let full = pattern(1500, 4);
    fs.write(f, 0, &full).unwrap();
    put(&mut model, 0, &full);
    fs.truncate(f, 10).unwrap();
    model.truncate(10);
    fs.write(f, 50, b"tail").unwrap();
    put(&mut model, 50, b"tail");
    expect(&fs, f, &model, "write past a cut");
    fs.truncate(f, 20).unwrap();
    model.truncate(20);
    fs.truncate(f, 1200).unwrap();
    model.resize(1200, 0);
    expect(&fs, f, &model, "regrown by truncate");
    let fs = remount(fs, &dev);
    expect(&fs, f, &model, "after remount");
    // Out of the inode by a write far away, then cut and regrown through a block.
    fs.write(f, 10_000, b"far").unwrap();
    put(&mut model, 10_000, b"far");
    fs.truncate(f, 15).unwrap();
    model.truncate(15);
    fs.truncate(f, 6000).unwrap();
    model.resize(6000, 0);
    expect(&fs, f, &model, "cut after leaving the inode");
    let fs = remount(fs, &dev);
    expect(&fs, f, &model, "cut after leaving the inode, remounted");
}

#[test]
fn edits_to_a_shared_block_never_show_in_the_other_file() {
    let (dev, fs) = fresh(64 << 20);
    let a = fs.create(ROOT_INO, b"a", 0o644, 0, 0).unwrap().ino;
    // Not written back before the clone: the clone writes it back first.
    let am = pattern(40 * 4096 + 1000, 1);
    fs.write(a, 0, &am).unwrap();
    let b = fs.create(ROOT_INO, b"b", 0o644, 0, 0).unwrap().ino;
    fs.clone_range(a, 0, b, 0, am.len() as u64).unwrap();
    let mut bm = am.clone();
    expect(&fs, b, &bm, "clone of unsynced data");
    // Appending to b grows through its shared, partial last block: the zeros between the
    // old end and the write must not land in a's block, nor a's bytes appear in b.
    fs.write(b, am.len() as u64 + 500, b"appended").unwrap();
    put(&mut bm, am.len() + 500, b"appended");
    // Cutting b inside a shared block, and zeroing and punching partial shared blocks.
    fs.truncate(b, 30 * 4096 + 123).unwrap();
    bm.truncate(30 * 4096 + 123);
    fs.truncate(b, 35 * 4096).unwrap();
    bm.resize(35 * 4096, 0);
    fs.fallocate(b, PUNCH, 4096 + 10, 100).unwrap();
    zero(&mut bm, 4096 + 10, 4096 + 110);
    fs.fallocate(b, ZERO | KEEP, 2 * 4096 + 1, 3 * 4096)
        .unwrap();
    zero(&mut bm, 2 * 4096 + 1, 5 * 4096 + 1);
    fs.zero_range(b, 6 * 4096 + 7, 9).unwrap();
    zero(&mut bm, 6 * 4096 + 7, 6 * 4096 + 16);
    // Collapsing and inserting in b move its extents, shared ones included.
    fs.fallocate(b, COLLAPSE, 10 * 4096, 2 * 4096).unwrap();
    bm.drain(10 * 4096..12 * 4096);
    fs.fallocate(b, INSERT, 12 * 4096, 4096).unwrap();
    bm.splice(12 * 4096..12 * 4096, vec![0u8; 4096]);
    expect(&fs, b, &bm, "edited clone");
    expect(&fs, a, &am, "source after the clone's edits");
    fs.syncfs().unwrap();
    // The other way round: a's partial last block shared with c, then a grows through it.
    let c = fs.create(ROOT_INO, b"c", 0o644, 0, 0).unwrap().ino;
    fs.clone_range(a, 40 * 4096, c, 0, 1000).unwrap();
    let mut cm = am[40 * 4096..].to_vec();
    let mut am2 = am.clone();
    fs.write(a, am.len() as u64, b"grown").unwrap();
    put(&mut am2, am.len(), b"grown");
    fs.truncate(c, 4096).unwrap();
    cm.resize(4096, 0);
    expect(&fs, a, &am2, "source after growing through a shared block");
    expect(&fs, c, &cm, "tail clone after the source grew");
    let fs = remount(fs, &dev);
    expect(&fs, a, &am2, "source after remount");
    expect(&fs, b, &bm, "clone after remount");
    expect(&fs, c, &cm, "tail clone after remount");
}

#[test]
fn unshare_gives_a_clone_its_own_copy_of_the_range() {
    let (dev, fs) = fresh(64 << 20);
    let a = fs.create(ROOT_INO, b"a", 0o644, 0, 0).unwrap().ino;
    let am = pattern(256 * 4096, 3);
    fs.write(a, 0, &am).unwrap();
    fsync(&fs, a);
    let b = fs.create(ROOT_INO, b"b", 0o644, 0, 0).unwrap().ino;
    fs.clone_range(a, 0, b, 0, am.len() as u64).unwrap();
    fs.commit().unwrap();
    let free0 = fs.statfs().bfree;
    fs.unshare(b, 64 * 4096, 100 * 4096).unwrap();
    fsync(&fs, b);
    fs.commit().unwrap();
    let took = free0 - fs.statfs().bfree;
    assert!(
        (100..=104).contains(&took),
        "unsharing 100 blocks took {took}"
    );
    expect(&fs, b, &am, "unshared clone");
    // Deleting the source now frees exactly the blocks the clone no longer shares.
    fs.unlink(ROOT_INO, b"a").unwrap();
    fs.commit().unwrap();
    let freed = fs.statfs().bfree - (free0 - took);
    assert!((100..=104).contains(&freed), "freed {freed}");
    let fs = remount(fs, &dev);
    expect(&fs, b, &am, "unshared clone after remount");
}
