//! Rules R13–R19: what writeback sends to the device, how ioends merge and complete, and how
//! errors reach the open files that must see them.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first unexpected error"
)]

mod common;

use common::{Ext, TestFs};
use iomap::iomap_dev::{BlockDeviceExt, FaultRule, Op};
use iomap::{write_and_wait_range, IoendFlags, SyncMode, WritebackControl};

fn wait_idle(fs: &TestFs) {
    fs.mapping.cache().drain_completions();
    fs.mapping.wait_writeback_range(0, u64::MAX);
}

fn dev_bytes(fs: &TestFs, block: u64) -> Vec<u8> {
    let mut buf = vec![0u8; fs.bs as usize];
    fs.mem().read_at(fs.dev_addr(block), &mut buf).unwrap();
    buf
}

#[test]
fn r13_a_folio_straddling_eof_is_zeroed_past_eof_before_it_is_written() {
    let fs = TestFs::new(1024, 4096);
    let d = fs.map_blocks(0, 4, |_| 0x11);
    fs.write(0, &[0xAA; 4096]).unwrap();
    // A truncate in progress: i_size moved, the cache not yet trimmed.
    fs.mapping.set_size(1500);
    fs.log();
    fs.flush_all();
    assert_eq!(
        TestFs::requests(&fs.log(), Op::Write),
        [(d * 1024, 2048)],
        "only the blocks up to the one holding EOF are written"
    );
    let b1 = dev_bytes(&fs, d + 1);
    assert!(b1[..476].iter().all(|&b| b == 0xAA));
    assert!(
        b1[476..].iter().all(|&b| b == 0),
        "bytes past EOF reach the device as zeros"
    );
    let snap = fs.mapping.find_folio(0).unwrap().snapshot();
    assert!(!snap.dirty && !snap.writeback && snap.uptodate);
}

#[test]
fn r13_a_folio_wholly_past_eof_is_cleaned_without_io_and_never_redirtied() {
    let fs = TestFs::new(4096, 4096);
    fs.write(0, &[1u8; 3 * 4096]).unwrap();
    fs.mapping.set_size(4096);
    fs.log();
    fs.flush_all();
    let writes = TestFs::requests(&fs.log(), Op::Write);
    assert_eq!(
        writes.len(),
        1,
        "only the folio inside EOF is written: {writes:?}"
    );
    for pos in [4096, 8192] {
        let f = fs.mapping.find_folio(pos).unwrap();
        assert!(!f.is_dirty() && !f.is_writeback(), "folio {pos}");
    }
    assert!(fs.mapping.dirty_folios(0, u64::MAX).is_empty());
    fs.flush_all();
    assert!(fs.log().is_empty(), "a second pass has nothing to do");
}

#[test]
fn r14_contiguous_dirty_blocks_merge_into_one_request_across_folios() {
    let fs = TestFs::new(1024, 4096);
    let d = fs.map_blocks(0, 8, |_| 0);
    fs.write(0, &[5u8; 8192]).unwrap();
    fs.log();
    let before = fs.mapping.cache().stats().snapshot();
    fs.flush_all();
    let log = fs.log();
    assert_eq!(TestFs::requests(&log, Op::Write), [(d * 1024, 8192)]);
    assert_eq!(log[0].segments, 2, "one segment per folio");
    let after = fs.mapping.cache().stats().snapshot();
    assert_eq!(after.ioends - before.ioends, 1);
    assert_eq!(
        after.blocks_merged - before.blocks_merged,
        7,
        "8 blocks in one request: 7 beyond the first"
    );
}

#[test]
fn r14_ioends_split_on_kind_device_gaps_boundary_and_size() {
    // Mapped 0-1, unwritten 2-3 (contiguous on the device), then a gap, then mapped 4-5 with a
    // boundary at 5.
    let fs = TestFs::with_config(
        1024,
        iomap::CacheConfig {
            page_size: 4096,
            max_folio_size: 4096,
        },
        1 << 20,
    );
    let d = fs.map_blocks(0, 2, |_| 0);
    fs.fallocate_blocks(2, 2).unwrap();
    fs.map_blocks(100, 1, |_| 0); // a gap on the device
    let d4 = fs.map_blocks(4, 2, |_| 0);
    fs.state.lock().blocks.remove(&100);
    fs.state.lock().boundary.push(5);
    fs.mapping.set_size(6 * 1024);
    fs.write(0, &[7u8; 6 * 1024]).unwrap();
    fs.log();
    fs.flush_all();
    assert_eq!(
        TestFs::requests(&fs.log(), Op::Write),
        [
            (d * 1024, 2048),        // mapped
            ((d + 2) * 1024, 2048),  // unwritten: another kind
            (d4 * 1024, 1024),       // after a device gap
            ((d4 + 1) * 1024, 1024), // a BOUNDARY mapping starts a new ioend
        ]
    );
    // The maximum request size caps an ioend.
    let fs = TestFs::with_config(
        4096,
        iomap::CacheConfig {
            page_size: 4096,
            max_folio_size: 1 << 20,
        },
        64 << 10,
    );
    let d = fs.map_blocks(0, 32, |_| 0);
    fs.write(0, &vec![1u8; 32 * 4096]).unwrap();
    fs.log();
    fs.flush_all();
    assert_eq!(
        TestFs::requests(&fs.log(), Op::Write),
        [(d * 4096, 65536), ((d + 16) * 4096, 65536)]
    );
}

#[test]
fn r14_dirty_ranges_go_out_in_file_order() {
    let fs = TestFs::new(4096, 4096);
    let d = fs.map_blocks(0, 64, |_| 0);
    for b in [40u64, 3, 17, 4, 63, 0, 41] {
        fs.write(b * 4096, &[b as u8; 4096]).unwrap();
    }
    fs.log();
    fs.flush_all();
    let writes = TestFs::requests(&fs.log(), Op::Write);
    assert_eq!(
        writes,
        [
            (d * 4096, 4096),
            ((d + 3) * 4096, 8192),
            ((d + 17) * 4096, 4096),
            ((d + 40) * 4096, 8192),
            ((d + 63) * 4096, 4096)
        ],
        "one request per contiguous dirty run, in offset order"
    );
}

/// The seed's scenario: a folio of four 1 KiB blocks, all dirty; mapping fails on the third
/// after two were queued.
#[test]
fn r15_a_mapping_failure_mid_folio_fails_the_queued_blocks_and_never_redirties() {
    let fs = TestFs::new(1024, 4096);
    let a = fs.open();
    let b = fs.open();
    fs.write(0, &[9u8; 4096]).unwrap();
    {
        let mut st = fs.state.lock();
        st.wb_max_blocks = Some(1);
        st.fail_writeback = Some((2048, 4096, 5));
    }
    let free_before = fs.state.lock().free_blocks;
    fs.log();
    let err = fs
        .writeback(&mut WritebackControl::integrity(0, u64::MAX))
        .unwrap_err();
    assert_eq!(err.errno(), 5);
    wait_idle(&fs);

    let st = fs.state.lock();
    assert_eq!(st.discards, [2048], "discard is told the failing offset");
    assert_eq!(
        st.blocks.get(&2),
        None,
        "the delalloc from the failing block on is given back"
    );
    assert_eq!(st.blocks.get(&3), None);
    assert_eq!(st.free_blocks, free_before + 2);
    assert_eq!(
        st.completions.len(),
        1,
        "the queued blocks' ioend completes, failed"
    );
    assert_eq!(
        (st.completions[0].offset, st.completions[0].size),
        (0, 2048)
    );
    assert_eq!(st.completions[0].error, Some(5));
    assert!(st.completions[0].flags.contains(IoendFlags::UNWRITTEN));
    drop(st);
    assert!(
        fs.log().iter().all(|r| r.op != Op::Write),
        "the failed ioend never reached the device"
    );

    let snap = fs.mapping.find_folio(0).unwrap().snapshot();
    assert!(
        !snap.dirty && snap.uptodate && !snap.writeback,
        "clean, uptodate, not under writeback"
    );
    assert!(snap.dirty_blocks.iter().all(|&d| !d));
    assert_eq!(fs.mapping.find_folio(0).unwrap().write_bytes_pending(), 0);

    // A handle opened after the error, before anyone saw it, sees it too.
    let c = fs.open();
    assert_eq!(fs.fsync(&a).unwrap_err().errno(), 5);
    assert!(fs.fsync(&a).is_ok(), "once per handle");
    assert_eq!(fs.fsync(&b).unwrap_err().errno(), 5);
    assert!(fs.fsync(&b).is_ok());
    assert_eq!(fs.fsync(&c).unwrap_err().errno(), 5);
    assert!(fs.fsync(&c).is_ok());
    let d = fs.open();
    assert!(
        fs.fsync(&d).is_ok(),
        "a handle opened after everyone saw it starts clean"
    );

    fs.log();
    fs.flush_all();
    assert!(
        fs.log().iter().all(|r| r.op != Op::Write),
        "a second writeback pass issues no I/O for the folio: nothing was redirtied"
    );
    assert!(fs.mapping.dirty_folios(0, u64::MAX).is_empty());
}

#[test]
fn r15_only_the_failing_folios_blocks_fail_with_it() {
    // Folio 0 is queued in an ioend; folio 1, contiguous on the device, fails to map. Folio 0's
    // blocks still go to the device.
    let fs = TestFs::new(4096, 4096);
    let d = fs.map_blocks(0, 3, |_| 0);
    fs.write(0, &[3u8; 3 * 4096]).unwrap();
    fs.state.lock().fail_writeback = Some((4096, 8192, 28));
    fs.log();
    assert_eq!(
        fs.writeback(&mut WritebackControl::integrity(0, u64::MAX))
            .unwrap_err()
            .errno(),
        28
    );
    wait_idle(&fs);
    assert_eq!(
        TestFs::requests(&fs.log(), Op::Write),
        [(d * 4096, 4096), ((d + 2) * 4096, 4096)]
    );
    assert!(dev_bytes(&fs, d).iter().all(|&b| b == 3));
    assert!(dev_bytes(&fs, d + 1).iter().all(|&b| b == 0));
}

#[test]
fn r16_a_device_write_error_is_recorded_once_per_ioend_and_folios_end_clean() {
    let fs = TestFs::new(1024, 4096);
    let d = fs.map_blocks(0, 8, |_| 0);
    let a = fs.open();
    let b = fs.open();
    fs.write(0, &[4u8; 8192]).unwrap();
    fs.fault()
        .add_rule(FaultRule::range(Op::Write, d * 1024, (d + 8) * 1024, 121));
    let before = fs.mapping.cache().stats().snapshot();
    // Two ioends: a device gap is simulated by writing the two halves in separate passes.
    fs.writeback(&mut WritebackControl::integrity(0, 4096))
        .unwrap();
    fs.writeback(&mut WritebackControl::integrity(4096, 8192))
        .unwrap();
    wait_idle(&fs);
    let after = fs.mapping.cache().stats().snapshot();
    assert_eq!(
        after.writeback_errors - before.writeback_errors,
        2,
        "once per failed ioend"
    );
    for pos in [0, 4096] {
        let s = fs.mapping.find_folio(pos).unwrap().snapshot();
        assert!(
            s.uptodate && !s.dirty && !s.writeback,
            "folio {pos} ends clean and uptodate"
        );
    }
    assert_eq!(
        fs.read(0, 8192).unwrap(),
        vec![4u8; 8192],
        "the cache keeps the data"
    );
    assert_eq!(
        fs.fsync(&a).unwrap_err().errno(),
        121,
        "the device's own errno"
    );
    assert!(fs.fsync(&a).is_ok());
    assert_eq!(fs.fsync(&b).unwrap_err().errno(), 121);
    assert!(fs.fsync(&b).is_ok());
}

#[test]
fn r16_a_write_error_on_the_nth_request_reaches_each_handle_once() {
    let fs = TestFs::new(4096, 4096);
    let d = fs.map_blocks(0, 10, |_| 0);
    let a = fs.open();
    let b = fs.open();
    for blk in [0u64, 2, 4, 6, 8] {
        fs.write(blk * 4096, &[blk as u8 + 1; 4096]).unwrap();
    }
    fs.fault().add_rule(FaultRule::nth(Op::Write, 3, 122));
    fs.log();
    assert_eq!(fs.fsync(&a).unwrap_err().errno(), 122);
    assert_eq!(TestFs::requests(&fs.log(), Op::Write).len(), 5);
    let injected = fs.fault().injected();
    assert_eq!(
        injected
            .iter()
            .map(|f| (f.op, f.addr, f.errno))
            .collect::<Vec<_>>(),
        [(
            Op::Write,
            iomap::iomap_dev::DevAddr((d + 4) * 4096),
            Some(122)
        )]
    );
    assert!(fs.fsync(&a).is_ok());
    assert_eq!(fs.fsync(&b).unwrap_err().errno(), 122);
    assert!(fs.fsync(&b).is_ok());
    assert!(
        dev_bytes(&fs, d + 6).iter().all(|&x| x == 7),
        "the other requests landed"
    );
}

#[test]
fn r16_a_flush_error_reaches_each_handle_once() {
    let fs = TestFs::new(4096, 4096);
    let a = fs.open();
    let b = fs.open();
    fs.write(0, b"data").unwrap();
    fs.fault().add_rule(FaultRule::nth(Op::Flush, 1, 110));
    assert_eq!(fs.fsync(&a).unwrap_err().errno(), 110);
    assert!(fs.fsync(&a).is_ok());
    assert_eq!(fs.fsync(&b).unwrap_err().errno(), 110);
    assert!(fs.fsync(&b).is_ok());
}

#[test]
fn r17_completions_run_off_the_device_path_merged_and_sorted() {
    let fs = TestFs::new(1024, 4096);
    fs.fallocate_blocks(0, 8).unwrap();
    fs.mapping.set_size(8192);
    fs.write(0, &[1u8; 8192]).unwrap();
    {
        let _hold = fs.mapping.cache().hold_completions();
        // Four separate ioends, submitted out of order.
        for (start, end) in [(6144, 8192), (2048, 4096), (0, 2048), (4096, 6144)] {
            fs.writeback(&mut WritebackControl::integrity(start, end))
                .unwrap();
        }
        // The memory device completed every request before `writeback` returned; the work they
        // need waits on the worker.
        assert!(
            fs.state.lock().completions.is_empty(),
            "no filesystem work on the device path"
        );
        assert!(
            fs.mapping.find_folio(0).unwrap().is_writeback(),
            "writeback ends after it"
        );
        assert!(matches!(fs.ext(0), Some(Ext::Unwritten { .. })));
    }
    wait_idle(&fs);
    let st = fs.state.lock();
    let done: Vec<(u64, u64, bool)> = st
        .completions
        .iter()
        .map(|c| (c.offset, c.size, c.is_unwritten()))
        .collect();
    assert_eq!(
        done,
        [(0, 8192, true)],
        "four adjacent completions merged into one, in order"
    );
    drop(st);
    for blk in 0..8 {
        assert!(
            matches!(fs.ext(blk), Some(Ext::Mapped { .. })),
            "block {blk} converted"
        );
    }
    assert!(!fs.mapping.find_folio(0).unwrap().is_writeback());
}

#[test]
fn r17_completions_of_different_kinds_or_status_do_not_merge() {
    let fs = TestFs::new(1024, 4096);
    fs.map_blocks(0, 2, |_| 0);
    fs.share_blocks(0, 2);
    fs.fallocate_blocks(2, 2).unwrap();
    fs.write(0, &[2u8; 4096]).unwrap();
    {
        let _hold = fs.mapping.cache().hold_completions();
        fs.flush_all_nowait();
    }
    wait_idle(&fs);
    let kinds: Vec<(u64, bool, bool)> = fs
        .state
        .lock()
        .completions
        .iter()
        .map(|c| (c.offset, c.is_shared(), c.is_unwritten()))
        .collect();
    // The two shared blocks went out as one ioend; the unwritten ones, adjacent but of another
    // kind, complete separately.
    assert_eq!(kinds, [(0, true, false), (2048, false, true)]);
    for blk in 0..4 {
        assert!(matches!(
            fs.ext(blk),
            Some(Ext::Mapped { shared: false, .. })
        ));
    }
    assert_eq!(fs.read(0, 4096).unwrap(), vec![2u8; 4096]);
}

#[test]
fn r18_integrity_writeback_goes_on_after_an_error_and_returns_the_first() {
    let fs = TestFs::new(4096, 4096);
    let d = fs.map_blocks(0, 4, |_| 0);
    fs.write(0, &[8u8; 4 * 4096]).unwrap();
    {
        let mut st = fs.state.lock();
        st.fail_writeback = Some((4096, 8192, 28));
    }
    fs.log();
    let err = fs
        .writeback(&mut WritebackControl::integrity(0, u64::MAX))
        .unwrap_err();
    assert_eq!(err.errno(), 28);
    wait_idle(&fs);
    assert_eq!(
        TestFs::requests(&fs.log(), Op::Write),
        [(d * 4096, 4096), ((d + 2) * 4096, 8192)],
        "every other folio was written"
    );
    assert!(fs.mapping.dirty_folios(0, u64::MAX).is_empty());
}

#[test]
fn r18_background_writeback_stops_at_the_first_error() {
    let fs = TestFs::new(4096, 4096);
    let d = fs.map_blocks(0, 4, |_| 0);
    fs.write(0, &[8u8; 4 * 4096]).unwrap();
    fs.state.lock().fail_writeback = Some((4096, 8192, 28));
    fs.log();
    let mut wbc = WritebackControl::background(u64::MAX);
    assert_eq!(wbc.sync_mode, SyncMode::None);
    assert_eq!(fs.writeback(&mut wbc).unwrap_err().errno(), 28);
    wait_idle(&fs);
    assert_eq!(TestFs::requests(&fs.log(), Op::Write), [(d * 4096, 4096)]);
    assert_eq!(
        fs.mapping.dirty_folios(0, u64::MAX),
        [8192, 12288],
        "the rest waits for later"
    );
}

#[test]
fn r18_background_writeback_respects_its_budget_and_skips_folios_under_writeback() {
    let fs = TestFs::new(4096, 4096);
    fs.map_blocks(0, 8, |_| 0);
    fs.write(0, &[1u8; 8 * 4096]).unwrap();
    let mut wbc = WritebackControl::background(3 * 4096);
    fs.writeback(&mut wbc).unwrap();
    assert_eq!(wbc.written_bytes, 3 * 4096);
    wait_idle(&fs);
    assert_eq!(fs.mapping.dirty_folios(0, u64::MAX).len(), 5);
}

#[test]
fn r19_errseq_each_handle_sees_each_error_once_and_syncfs_reports_per_filesystem() {
    let fs = TestFs::new(4096, 4096);
    let d = fs.map_blocks(0, 2, |_| 0);
    let early = fs.open();
    fs.write(0, b"x").unwrap();
    fs.fault()
        .add_rule(FaultRule::range(Op::Write, d * 4096, (d + 1) * 4096, 5));
    let during = fs.open();
    write_and_wait_range(&fs.mapping, &fs.wb, 0, u64::MAX).unwrap();
    wait_idle(&fs);
    let late = fs.open(); // nobody has seen the error yet
    let files = [(&fs.mapping, &fs.wb)];
    assert_eq!(early.syncfs(files, &*fs.wb).unwrap_err().errno(), 5);
    assert!(
        early.syncfs(files, &*fs.wb).is_ok(),
        "syncfs reports once per handle"
    );
    assert_eq!(
        fs.fsync(&early).unwrap_err().errno(),
        5,
        "fsync's sequence is separate"
    );
    assert_eq!(fs.fsync(&during).unwrap_err().errno(), 5);
    assert_eq!(fs.fsync(&late).unwrap_err().errno(), 5);
    let after = fs.open();
    assert!(fs.fsync(&after).is_ok());
    // A second error after all have seen the first is reported again.
    fs.fault().clear_rules();
    fs.fault()
        .add_rule(FaultRule::range(Op::Write, d * 4096, (d + 1) * 4096, 28));
    fs.write(0, b"y").unwrap();
    assert_eq!(fs.fsync(&after).unwrap_err().errno(), 28);
    assert_eq!(fs.fsync(&early).unwrap_err().errno(), 28);
    assert!(fs.state.lock().commits >= 5, "fsync commits the filesystem");
}

#[test]
fn r19_close_reports_an_unseen_error_without_consuming_it() {
    let fs = TestFs::new(4096, 4096);
    let d = fs.map_blocks(0, 1, |_| 0);
    let a = fs.open();
    let b = fs.open();
    fs.write(0, b"x").unwrap();
    fs.fault()
        .add_rule(FaultRule::range(Op::Write, d * 4096, (d + 1) * 4096, 5));
    write_and_wait_range(&fs.mapping, &fs.wb, 0, u64::MAX).unwrap();
    wait_idle(&fs);
    // Every close of a file that has not fsynced since the error reports it...
    assert_eq!(a.check().unwrap_err().errno(), 5);
    assert_eq!(a.check().unwrap_err().errno(), 5);
    // ...and the error still reaches its fsync, once.
    assert_eq!(fs.fsync(&a).unwrap_err().errno(), 5);
    assert!(a.check().is_ok(), "seen by fsync: close has nothing new");
    assert!(fs.fsync(&a).is_ok());
    // Another file's view is its own.
    assert_eq!(b.check().unwrap_err().errno(), 5);
    assert_eq!(fs.fsync(&b).unwrap_err().errno(), 5);
}

#[test]
fn stable_pages_a_write_waits_for_writeback_of_its_folio() {
    let fs = TestFs::new(4096, 4096);
    fs.map_blocks(0, 1, |_| 0);
    fs.fallocate_blocks(1, 1).unwrap();
    fs.mapping.set_size(8192);
    fs.write(4096, &[1u8; 4096]).unwrap();
    let fs = std::sync::Arc::new(fs);
    let cache = std::sync::Arc::clone(fs.mapping.cache());
    let hold = cache.hold_completions();
    fs.flush_all_nowait();
    let folio = fs.mapping.find_folio(4096).unwrap();
    assert!(
        folio.is_writeback(),
        "held: the unwritten ioend's completion has not run"
    );
    let writer = {
        let fs = fs.clone();
        std::thread::spawn(move || fs.write(4096, &[2u8; 10]).unwrap())
    };
    // A correct engine never lets the writer finish before the hold is dropped, so this cannot
    // fail spuriously; an engine that skipped the wait would usually be caught here.
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(
        !writer.is_finished(),
        "the writer waits while the folio is under writeback"
    );
    assert!(folio.is_writeback());
    drop(hold);
    writer.join().unwrap();
    assert_eq!(
        &fs.read(4096, 11).unwrap()[..],
        &[2u8, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1]
    );
}
