//! Rules R1–R5: what a buffered read asks of the device, and the folio state it leaves.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first unexpected error"
)]

mod common;

use common::{Ext, TestFs};
use iomap::iomap_dev::Op;
use iomap::{buffered_read, readahead, Iomap, IomapFlags, IomapOps, IomapPair, IterFlags, Result};

#[test]
fn r1_holes_unwritten_and_post_eof_blocks_are_zero_filled_not_read() {
    // 1 KiB blocks in a 4 KiB folio: mapped, hole, unwritten, mapped; EOF inside block 3... no:
    // EOF at the end of block 2, so block 3 is wholly past EOF.
    let fs = TestFs::new(1024, 4096);
    let d0 = fs.map_blocks(0, 1, |i| (i % 251) as u8 + 1);
    fs.fallocate_blocks(2, 1).unwrap();
    fs.map_blocks(3, 1, |_| 0xAB);
    fs.mapping.set_size(3 * 1024);
    fs.log();

    let data = fs.read(0, 4096).unwrap();
    assert_eq!(data.len(), 3 * 1024, "short read at EOF");
    assert_eq!(
        &data[..1024],
        &pattern_of(1024, |i| (i % 251) as u8 + 1)[..]
    );
    assert!(
        data[1024..].iter().all(|&b| b == 0),
        "hole and unwritten read as zeros"
    );

    let log = fs.log();
    assert_eq!(
        TestFs::requests(&log, Op::Read),
        [(d0 * 1024, 1024)],
        "only the mapped block inside EOF is read"
    );
    let folio = fs.mapping.find_folio(0).unwrap().snapshot();
    assert!(folio.uptodate, "zero-filled blocks are uptodate too");
    let mut tail = [1u8; 1024];
    fs.mapping.find_folio(0).unwrap().copy_out(3072, &mut tail);
    assert!(
        tail.iter().all(|&b| b == 0),
        "the block past EOF is zeroed, not read"
    );
}

fn pattern_of(len: usize, f: impl Fn(usize) -> u8) -> Vec<u8> {
    (0..len).map(f).collect()
}

/// Hands out fixed mappings, for flags the test filesystem never produces.
struct Fixed(Vec<Iomap>);

impl IomapOps for Fixed {
    fn begin(&self, pos: u64, _len: u64, _flags: IterFlags) -> Result<IomapPair> {
        let m = self
            .0
            .iter()
            .find(|m| m.offset <= pos && pos < m.end())
            .unwrap();
        Ok(m.clone().into())
    }
}

#[test]
fn r1_blocks_flagged_new_are_zeroed_not_read() {
    let fs = TestFs::new(4096, 4096);
    fs.map_blocks(0, 2, |_| 0x77);
    fs.log();
    let addr = fs.dev_addr(1);
    let ops = Fixed(vec![
        Iomap::mapped(0, 8192, addr).with_flags(IomapFlags::NEW)
    ]);
    let mut buf = vec![0xFFu8; 8192];
    assert_eq!(buffered_read(&fs.mapping, &ops, 0, &mut buf).unwrap(), 8192);
    assert!(buf.iter().all(|&b| b == 0));
    assert!(fs.log().is_empty(), "NEW blocks issue no device read");
}

#[test]
fn r2_a_read_skips_blocks_already_uptodate() {
    let fs = TestFs::new(1024, 4096);
    let d = fs.map_blocks(0, 4, |i| (i / 1024) as u8 + 10);
    // A full-block write makes block 1 uptodate without reading it.
    fs.write(1024, &[9u8; 1024]).unwrap();
    assert!(fs.log().iter().all(|r| r.op != Op::Read));
    let snap = fs.mapping.find_folio(0).unwrap().snapshot();
    assert_eq!(snap.uptodate_blocks, [false, true, false, false]);

    let data = fs.read(0, 4096).unwrap();
    assert_eq!(data[0], 10);
    assert!(data[1024..2048].iter().all(|&b| b == 9));
    assert_eq!(data[2048], 12);
    assert_eq!(data[3072], 13);
    let log = fs.log();
    assert_eq!(
        TestFs::requests(&log, Op::Read),
        [(d * 1024, 1024), ((d + 2) * 1024, 2048)],
        "blocks 0 and 2-3 are read; block 1 is not"
    );
    assert!(fs.mapping.find_folio(0).unwrap().is_uptodate());
}

#[test]
fn r3_contiguous_blocks_are_read_with_one_request_across_folios() {
    // 16 KiB folios, 256 KiB contiguous on the device: one request of 16 segments.
    let fs = TestFs::new(4096, 16384);
    let d = fs.map_blocks(0, 64, |i| i as u8);
    fs.log();
    let before = fs.mapping.cache().stats().snapshot();
    assert_eq!(fs.read(0, 256 << 10).unwrap().len(), 256 << 10);
    let log = fs.log();
    assert_eq!(TestFs::requests(&log, Op::Read), [(d * 4096, 256 << 10)]);
    assert_eq!(log[0].segments, 16);
    assert_eq!(fs.mapping.nr_folios(), 16);
    let after = fs.mapping.cache().stats().snapshot();
    assert_eq!(
        after.blocks_merged - before.blocks_merged,
        63,
        "64 blocks in one request: 63 beyond the first"
    );
    assert_eq!(after.dev_read_requests - before.dev_read_requests, 1);
}

#[test]
fn r3_requests_stop_at_the_device_maximum_and_at_discontiguity() {
    let fs = TestFs::with_config(
        4096,
        iomap::CacheConfig {
            page_size: 4096,
            max_folio_size: 1 << 20,
        },
        64 << 10,
    );
    let d = fs.map_blocks(0, 32, |i| i as u8);
    // A gap on the device: file blocks 32.. are mapped after an unrelated block.
    fs.map_blocks(100, 1, |_| 0);
    let d2 = fs.map_blocks(32, 8, |i| i as u8);
    fs.mapping.set_size(40 * 4096);
    fs.log();
    fs.read(0, 40 * 4096).unwrap();
    let reads = TestFs::requests(&fs.log(), Op::Read);
    assert_eq!(
        reads,
        [
            (d * 4096, 65536),
            ((d + 16) * 4096, 65536),
            (d2 * 4096, 32768)
        ]
    );
}

#[test]
fn r4_inline_data_is_copied_and_the_rest_of_the_folio_zeroed() {
    let fs = TestFs::new_inline(4096);
    fs.state
        .lock()
        .inline
        .as_ref()
        .unwrap()
        .write()
        .extend_from_slice(b"inline bytes");
    fs.mapping.set_size(12);
    let data = fs.read(0, 100).unwrap();
    assert_eq!(data, b"inline bytes");
    assert!(fs.log().is_empty(), "inline data never touches the device");
    let folio = fs.mapping.find_folio(0).unwrap();
    assert!(folio.is_uptodate());
    let mut rest = vec![1u8; 4096 - 12];
    folio.copy_out(12, &mut rest);
    assert!(rest.iter().all(|&b| b == 0));
}

#[test]
fn r5_a_read_error_reaches_the_caller_and_leaves_blocks_not_uptodate() {
    let fs = TestFs::new(1024, 4096);
    fs.map_blocks(0, 2, |_| 1);
    let d2 = fs.map_blocks(100, 1, |_| 0); // a gap on the device
    let _ = d2;
    let d = fs.map_blocks(2, 2, |_| 2);
    fs.state.lock().blocks.remove(&100);
    fs.mapping.set_size(4096);
    fs.fail_reads(d * 1024, (d + 2) * 1024, 121);
    fs.log();

    // What was read comes back as a short read, as Linux's filemap_read returns it; the error
    // reaches the next read of the failed blocks.
    assert_eq!(fs.read(0, 4096).unwrap(), vec![1u8; 2048]);
    let err = fs.read(2048, 2048).unwrap_err();
    assert_eq!(
        err.errno(),
        121,
        "the device's own errno reaches the reader"
    );
    // Readahead issues two requests; the first reader then retries the failed blocks once,
    // alone, as Linux's filemap_read does before returning what it has; the second reader
    // tries them once more and reports the error.
    let d0 = match fs.ext(0) {
        Some(Ext::Mapped { block, .. }) => block,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        TestFs::requests(&fs.log(), Op::Read),
        [
            (d0 * 1024, 2048),
            (d * 1024, 2048),
            (d * 1024, 2048),
            (d * 1024, 2048)
        ]
    );
    let snap = fs.mapping.find_folio(0).unwrap().snapshot();
    assert_eq!(snap.uptodate_blocks, [true, true, false, false]);
    assert!(!snap.uptodate);
    assert!(
        !fs.mapping.find_folio(0).unwrap().is_locked(),
        "a failed read unlocks the folio"
    );

    // The data before the failed blocks is served; the failed ones are read again once the
    // device recovers (R2: only they are).
    assert_eq!(fs.read(0, 2048).unwrap(), vec![1u8; 2048]);
    fs.fault().clear_rules();
    fs.log();
    assert_eq!(fs.read(2048, 2048).unwrap(), vec![2u8; 2048]);
    assert_eq!(TestFs::requests(&fs.log(), Op::Read), [(d * 1024, 2048)]);
}

#[test]
fn readahead_fills_a_window_and_skips_cached_folios() {
    let fs = TestFs::new(4096, 4096);
    let d = fs.map_blocks(0, 8, |i| (i / 4096) as u8);
    fs.read(8192, 1).unwrap();
    fs.log();
    readahead(&fs.mapping, &fs, 0, 8 * 4096).unwrap();
    // Folio 2 was cached: the window splits into two requests around it.
    assert_eq!(
        TestFs::requests(&fs.log(), Op::Read),
        [(d * 4096, 8192), ((d + 3) * 4096, 5 * 4096)]
    );
    assert_eq!(fs.mapping.nr_folios(), 8);
    assert!(matches!(fs.ext(0), Some(Ext::Mapped { .. })));
    let data = fs.read(0, 8 * 4096).unwrap();
    assert!(fs.log().is_empty(), "everything was read ahead");
    assert_eq!(data[5 * 4096], 5);
}
