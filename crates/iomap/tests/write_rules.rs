//! Rules R6–R12: what buffered writes, zeroing and unsharing ask of the device and the
//! filesystem, and the folio state they leave.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first unexpected error"
)]

mod common;

use common::{pattern, Ext, ShortSource, TestFs};
use iomap::iomap_dev::{BlockDeviceExt, Op};
use iomap::{buffered_write, file_unshare, truncate_page, zero_range, SliceSource};

fn mapped_block(fs: &TestFs, b: u64) -> u64 {
    match fs.ext(b) {
        Some(Ext::Mapped { block, .. }) => block,
        other => panic!("block {b} is {other:?}"),
    }
}

#[test]
fn r6_write_begin_reads_only_partially_covered_blocks() {
    let fs = TestFs::new(1024, 4096);
    let d = fs.map_blocks(0, 4, |i| (i / 1024) as u8 + 1);
    fs.log();
    // Covers block 0 from 512, block 1 whole, block 2 up to 2560.
    fs.write(512, &[0xEE; 2048]).unwrap();
    assert_eq!(
        TestFs::requests(&fs.log(), Op::Read),
        [(d * 1024, 1024), ((d + 2) * 1024, 1024)],
        "blocks 0 and 2 are read, block 1 (wholly overwritten) and block 3 (untouched) are not"
    );
    let snap = fs.mapping.find_folio(0).unwrap().snapshot();
    assert_eq!(snap.uptodate_blocks, [true, true, true, false]);
    assert_eq!(snap.dirty_blocks, [true, true, true, false]);
    let data = fs.read(0, 4096).unwrap();
    assert!(data[..512].iter().all(|&b| b == 1));
    assert!(data[512..2560].iter().all(|&b| b == 0xEE));
    assert!(data[2560..3072].iter().all(|&b| b == 3));
}

#[test]
fn r6_new_blocks_are_zeroed_around_the_write_instead_of_read() {
    let fs = TestFs::new(1024, 4096);
    fs.mapping.set_size(4096);
    fs.log();
    fs.write(100, b"hello").unwrap();
    assert!(
        fs.log().is_empty(),
        "a hole becomes NEW delalloc: nothing is read"
    );
    assert_eq!(fs.ext(0), Some(Ext::Delalloc));
    let data = fs.read(0, 1024).unwrap();
    assert!(data[..100].iter().all(|&b| b == 0));
    assert_eq!(&data[100..105], b"hello");
    assert!(data[105..].iter().all(|&b| b == 0));
}

#[test]
fn r7_stale_mapping_is_remapped_and_the_data_is_right() {
    // Block 0 holds "A" bytes at device block X. Between begin and write_begin, a concurrent
    // change moves the block to Y and scribbles over X, changing the cookie. A partial write
    // must read the block from Y, not from the stale mapping.
    let fs = TestFs::new(4096, 4096);
    let x = fs.map_blocks(0, 1, |_| b'A');
    let y_addr = fs.dev_addr(500);
    let x_addr = fs.dev_addr(x);
    let mut moved = false;
    fs.state.lock().on_valid = Some(Box::new(move |st, dev| {
        if std::mem::replace(&mut moved, true) {
            return false;
        }
        // Straight to the memory device, so the log shows only the engine's requests.
        let mem = dev.inner().inner();
        let mut buf = vec![0u8; 4096];
        mem.read_at(x_addr, &mut buf).unwrap();
        mem.write_at(y_addr, &buf).unwrap();
        mem.write_at(x_addr, &[0xEE; 4096]).unwrap();
        st.blocks.insert(
            0,
            Ext::Mapped {
                block: 500,
                shared: false,
            },
        );
        true
    }));
    fs.log();
    fs.write(10, b"new bytes").unwrap();
    let reads = TestFs::requests(&fs.log(), Op::Read);
    assert_eq!(
        reads.last(),
        Some(&(500 * 4096, 4096)),
        "the block is read from its new place"
    );
    assert!(!reads.contains(&(x * 4096, 4096)));
    let ends = fs.state.lock().ends.clone();
    assert_eq!(
        ends.len(),
        2,
        "the stale mapping was ended and a new one begun: {ends:?}"
    );
    assert_eq!(
        ends[0].2, 0,
        "nothing was written through the stale mapping"
    );
    let data = fs.read(0, 4096).unwrap();
    assert!(data[..10].iter().all(|&b| b == b'A'));
    assert_eq!(&data[10..19], b"new bytes");
    assert!(data[19..].iter().all(|&b| b == b'A'));
}

#[test]
fn r8_a_short_copy_never_makes_uncopied_bytes_uptodate() {
    // Four mapped 1 KiB blocks. The source gives 1500 bytes of a 4096-byte write and then runs
    // dry: block 1 holds 476 copied bytes and 548 never-written ones.
    let fs = TestFs::new(1024, 4096);
    let d = fs.map_blocks(0, 4, |_| 0x11);
    fs.log();
    let data = pattern(4096, 7);
    let mut src = ShortSource::new(&data, 300, 1500);
    let written = fs.write_from(0, 4096, &mut src).unwrap();

    assert_eq!(written, 1500, "every delivered byte ends up written");
    assert_eq!(src.consumed(), 1500);
    // The 476 bytes in block 1 are given back rather than committed; the next copy of just
    // those bytes into a 3072-byte chunk is short again, so they go back once more and the
    // chunk shrinks to them.
    assert_eq!(
        src.unread,
        [476, 476],
        "the part-block was given back, not committed"
    );
    // The retry wrote just the 476 bytes: write_begin read block 1 first, so its tail holds
    // the file's old bytes, never garbage.
    assert_eq!(
        TestFs::requests(&fs.log(), Op::Read),
        [((d + 1) * 1024, 1024)]
    );
    let snap = fs.mapping.find_folio(0).unwrap().snapshot();
    assert_eq!(snap.uptodate_blocks, [true, true, false, false]);
    assert_eq!(snap.dirty_blocks, [true, true, false, false]);
    let back = fs.read(0, 4096).unwrap();
    assert_eq!(&back[..1500], &data[..1500]);
    assert!(back[1500..].iter().all(|&b| b == 0x11));
}

#[test]
fn r8_i_size_grows_only_over_bytes_written() {
    let fs = TestFs::new(1024, 4096);
    let data = pattern(8192, 3);
    let mut src = ShortSource::new(&data, 4096, 3000);
    assert_eq!(fs.write_from(0, 8192, &mut src).unwrap(), 3000);
    assert_eq!(fs.mapping.size(), 3000);
    assert_eq!(fs.read(0, 8192).unwrap(), &data[..3000]);
    // A source that gives nothing writes nothing and leaves the size alone.
    let mut empty = ShortSource::new(&data, 4096, 0);
    assert_eq!(fs.write_from(3000, 100, &mut empty).unwrap(), 0);
    assert_eq!(fs.mapping.size(), 3000);
}

#[test]
fn r8_large_writes_use_large_folios_and_a_short_copy_halves_the_chunk() {
    let fs = TestFs::new(4096, 2 << 20);
    let data = pattern(4 << 20, 1);
    fs.write(0, &data[..2 << 20]).unwrap();
    assert_eq!(
        fs.mapping.nr_folios(),
        1,
        "a 2 MiB aligned write uses one 2 MiB folio"
    );
    assert_eq!(fs.mapping.find_folio(0).unwrap().size(), 2 << 20);

    // Into a fresh 2 MiB region: the source stalls mid-block once (a delivery of 1000 bytes
    // then nothing), the chunk halves, and later folios are at most 1 MiB.
    let fs = TestFs::new(4096, 2 << 20);
    struct StallOnce<'a> {
        inner: SliceSource<'a>,
        stalled: bool,
    }
    impl iomap::WriteSource for StallOnce<'_> {
        fn copy_to(&mut self, dst: &mut [u8]) -> std::io::Result<usize> {
            if !self.stalled && self.inner.consumed() == 0 {
                return self.inner.copy_to(&mut dst[..1000]);
            }
            if !self.stalled {
                self.stalled = true;
                return Ok(0);
            }
            self.inner.copy_to(dst)
        }
        fn unread(&mut self, bytes: &[u8]) {
            self.inner.unread(bytes)
        }
    }
    let mut src = StallOnce {
        inner: SliceSource::new(&data),
        stalled: false,
    };
    let n = fs.write_from(0, 4 << 20, &mut src).unwrap();
    assert_eq!(n, 4 << 20);
    let sizes: Vec<usize> = fs
        .mapping
        .folios_in(0, 4 << 20)
        .iter()
        .map(|f| f.size())
        .collect();
    assert_eq!(
        sizes[0],
        2 << 20,
        "the first folio was made before the short copy"
    );
    assert!(sizes[1..].iter().all(|&s| s <= 1 << 20), "{sizes:?}");
    assert_eq!(fs.read(0, 4 << 20).unwrap(), data);
}

#[test]
fn r9_a_short_write_gives_back_delalloc_only_under_clean_cache() {
    let fs = TestFs::new(1024, 4096);
    // Block 2 is dirty in the cache under its own reservation.
    fs.write(2048, &[5u8; 1024]).unwrap();
    let free_before = fs.state.lock().free_blocks;
    // A write over blocks 0..4 reserves blocks 0, 1 and 3, then the source runs dry after
    // one block.
    let data = [6u8; 4096];
    let mut src = ShortSource::new(&data, 4096, 1024);
    assert_eq!(fs.write_from(0, 4096, &mut src).unwrap(), 1024);

    let st = fs.state.lock();
    assert_eq!(
        st.punched,
        [(1024, 2048), (3072, 4096)],
        "block 2 is dirty: its reservation stays"
    );
    assert_eq!(st.blocks.get(&0), Some(&Ext::Delalloc));
    assert_eq!(st.blocks.get(&1), None);
    assert_eq!(st.blocks.get(&2), Some(&Ext::Delalloc));
    assert_eq!(st.blocks.get(&3), None);
    assert_eq!(
        st.free_blocks,
        free_before - 1,
        "only block 0's reservation is kept"
    );
}

#[test]
fn r10_writing_one_byte_dirties_one_block() {
    let fs = TestFs::new(1024, 16384);
    let d = fs.map_blocks(0, 16, |_| 1);
    fs.read(0, 16384).unwrap();
    fs.log();
    fs.write(5000, b"x").unwrap();
    let snap = fs.mapping.find_folio(0).unwrap().snapshot();
    let dirty: Vec<usize> = (0..16).filter(|&i| snap.dirty_blocks[i]).collect();
    assert_eq!(dirty, [4]);
    assert!(fs.log().is_empty(), "the block was uptodate: no read");
    fs.flush_all();
    assert_eq!(
        TestFs::requests(&fs.log(), Op::Write),
        [((d + 4) * 1024, 1024)]
    );
    assert!(!fs.mapping.find_folio(0).unwrap().is_dirty());
}

#[test]
fn r11_zero_range_skips_holes_and_unwritten_extents_without_dirty_cache() {
    let fs = TestFs::new(1024, 4096);
    // Block 0 hole, block 1 unwritten, block 2 mapped, block 3 hole.
    fs.fallocate_blocks(1, 1).unwrap();
    fs.map_blocks(2, 1, |_| 9);
    fs.mapping.set_size(4096);
    fs.log();
    assert!(zero_range(&fs.mapping, &fs, 0, 4096).unwrap());
    assert!(
        fs.log().is_empty(),
        "block 2 is wholly zeroed: nothing to read"
    );
    let snap = fs.mapping.find_folio(0).unwrap().snapshot();
    assert_eq!(
        snap.dirty_blocks,
        [false, false, true, false],
        "only the mapped block is zeroed"
    );
    assert_eq!(fs.ext(0), None, "no space was reserved for the hole");
    assert!(fs.read(0, 4096).unwrap().iter().all(|&b| b == 0));

    // A hole-only range with no cache does nothing at all.
    let fs = TestFs::new(1024, 4096);
    fs.mapping.set_size(8192);
    assert!(!zero_range(&fs.mapping, &fs, 0, 8192).unwrap());
    assert_eq!(fs.mapping.nr_folios(), 0);
}

#[test]
fn r11_zero_range_zeroes_dirty_cache_over_unwritten_extents() {
    let fs = TestFs::new(1024, 4096);
    fs.fallocate_blocks(0, 4).unwrap();
    fs.mapping.set_size(4096);
    fs.write(1024, &[7u8; 1024]).unwrap();
    assert!(
        matches!(fs.ext(1), Some(Ext::Unwritten { .. })),
        "still unwritten until writeback"
    );
    assert!(zero_range(&fs.mapping, &fs, 1024, 1024).unwrap());
    assert!(fs.read(1024, 1024).unwrap().iter().all(|&b| b == 0));
}

#[test]
fn r11_truncate_page_zeroes_the_tail_of_the_eof_block() {
    let fs = TestFs::new(1024, 4096);
    let d = fs.map_blocks(0, 2, |_| 4);
    fs.log();
    assert!(truncate_page(&fs.mapping, &fs, 1536).unwrap());
    assert_eq!(
        TestFs::requests(&fs.log(), Op::Read),
        [((d + 1) * 1024, 1024)]
    );
    let snap = fs.mapping.find_folio(0).unwrap().snapshot();
    assert_eq!(&snap.dirty_blocks[..2], [false, true]);
    let data = fs.read(1024, 1024).unwrap();
    assert!(data[..512].iter().all(|&b| b == 4));
    assert!(data[512..].iter().all(|&b| b == 0));
    assert!(
        !truncate_page(&fs.mapping, &fs, 2048).unwrap(),
        "block-aligned: nothing to zero"
    );
}

#[test]
fn r12_unshare_reads_shared_blocks_and_dirties_them() {
    let fs = TestFs::new(1024, 4096);
    let d = fs.map_blocks(0, 4, |i| (i / 1024) as u8 + 1);
    fs.share_blocks(1, 2);
    fs.log();
    file_unshare(&fs.mapping, &fs, 0, 4096).unwrap();
    assert_eq!(
        TestFs::requests(&fs.log(), Op::Read),
        [((d + 1) * 1024, 2048)],
        "only the shared blocks are read, in one request"
    );
    let snap = fs.mapping.find_folio(0).unwrap().snapshot();
    assert_eq!(snap.dirty_blocks, [false, true, true, false]);
    assert_eq!(fs.ext(1), Some(Ext::Cow { old: d + 1 }));
    fs.flush_all();
    let nb = mapped_block(&fs, 1);
    assert_ne!(nb, d + 1, "the block moved to new space");
    let mut buf = vec![0u8; 1024];
    fs.mem().read_at(fs.dev_addr(nb), &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 2));
}

#[test]
fn writes_to_shared_blocks_read_old_data_through_the_srcmap() {
    let fs = TestFs::new(1024, 4096);
    let d = fs.map_blocks(0, 1, |_| 3);
    fs.share_blocks(0, 1);
    fs.log();
    fs.write(10, b"cow").unwrap();
    assert_eq!(TestFs::requests(&fs.log(), Op::Read), [(d * 1024, 1024)]);
    fs.flush_all();
    let nb = mapped_block(&fs, 0);
    assert_ne!(nb, d);
    let mut old = vec![0u8; 1024];
    fs.mem().read_at(fs.dev_addr(d), &mut old).unwrap();
    assert!(old.iter().all(|&b| b == 3), "the shared copy is untouched");
    let data = fs.read(0, 1024).unwrap();
    assert_eq!(&data[10..13], b"cow");
    assert_eq!(data[0], 3);
}

#[test]
fn inline_writes_land_in_the_inline_data() {
    let fs = TestFs::new_inline(4096);
    fs.write(0, b"hello world").unwrap();
    fs.write(6, b"there").unwrap();
    assert_eq!(fs.mapping.size(), 11);
    let inline = fs.state.lock().inline.clone().unwrap();
    assert_eq!(&inline.read()[..11], b"hello there");
    assert!(fs.log().is_empty());
    assert_eq!(fs.read(0, 100).unwrap(), b"hello there");
    let err = fs.write(4096, b"x").unwrap_err();
    assert_eq!(err.errno(), 27, "past the inline capacity: EFBIG");
}

#[test]
fn write_begin_read_errors_fail_the_write() {
    let fs = TestFs::new(1024, 4096);
    let d = fs.map_blocks(0, 1, |_| 1);
    fs.fail_reads(d * 1024, (d + 1) * 1024, 5);
    let err = fs.write(10, b"x").unwrap_err();
    assert_eq!(err.errno(), 5);
    let f = fs.mapping.find_folio(0).unwrap();
    assert!(!f.is_dirty() && !f.is_locked());
    // Writing whole blocks needs no read and succeeds.
    assert_eq!(
        buffered_write(&fs.mapping, &fs, 0, 1024, &mut SliceSource::new(&[2; 1024])).unwrap(),
        1024
    );
}

/// Regression: zero_range over unwritten extents used to carry on with a mapping found stale
/// at the first dirty folio and then claim the whole mapping done, leaving that folio's data.
#[test]
fn r7_zero_range_remaps_when_a_mapping_goes_stale_between_dirty_folios() {
    let fs = TestFs::new(4096, 4096);
    fs.fallocate_blocks(0, 8).unwrap();
    fs.mapping.set_size(8 * 4096);
    fs.write(4096, &[1u8; 4096]).unwrap();
    fs.write(5 * 4096, &[2u8; 4096]).unwrap();
    let mut once = true;
    fs.state.lock().on_valid = Some(Box::new(move |_, _| std::mem::take(&mut once)));
    assert!(zero_range(&fs.mapping, &fs, 0, 8 * 4096).unwrap());
    assert!(fs.read(0, 8 * 4096).unwrap().iter().all(|&b| b == 0));
    let zero_ends = fs
        .state
        .lock()
        .ends
        .iter()
        .filter(|e| e.3.contains(iomap::IterFlags::ZERO))
        .count();
    assert_eq!(
        zero_ends, 2,
        "the stale mapping was ended and the range remapped once"
    );
}

/// Regression (found by the model test): zero_range skipped a clean folio under writeback over
/// an unwritten extent; when the ioend completed the extent became written and the bytes that
/// should have been zeroed came back. Such folios count as data the device lacks, like dirty
/// ones, as in Linux's `filemap_range_needs_writeback`.
#[test]
fn r11_zero_range_zeroes_cache_under_writeback_over_unwritten_extents() {
    let fs = TestFs::new(1024, 4096);
    fs.fallocate_blocks(0, 4).unwrap();
    fs.mapping.set_size(4096);
    fs.write(0, &[6u8; 4096]).unwrap();
    let cache = fs.mapping.cache();
    std::thread::scope(|s| {
        let hold = cache.hold_completions();
        fs.flush_all_nowait();
        assert!(fs.mapping.find_folio(0).unwrap().is_writeback());
        assert!(
            matches!(fs.ext(1), Some(Ext::Unwritten { .. })),
            "conversion is held back"
        );
        // zero_range must wait for the writeback (however long the release takes); a version
        // that skips the folio returns at once with nothing zeroed.
        s.spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(30));
            drop(hold);
        });
        assert!(
            zero_range(&fs.mapping, &fs, 1000, 2000).unwrap(),
            "zeroed, not skipped"
        );
    });
    fs.flush_all();
    let data = fs.read(0, 4096).unwrap();
    assert!(data[..1000].iter().all(|&b| b == 6));
    assert!(data[1000..3000].iter().all(|&b| b == 0));
    assert!(data[3000..].iter().all(|&b| b == 6));
    let b1 = match fs.ext(1) {
        Some(Ext::Mapped { block, .. }) => block,
        other => panic!("{other:?}"),
    };
    let mut dev = vec![1u8; 1024];
    fs.mem().read_at(fs.dev_addr(b1), &mut dev).unwrap();
    assert!(
        dev.iter().all(|&b| b == 0),
        "the device holds the zeros too"
    );
}
