//! Readahead: a sequential scan issues one device request per window and the window grows; a
//! random reader gets no readahead; the hints of posix_fadvise change both.

#![allow(clippy::unwrap_used)]

mod common;

use common::TestFs;
use iomap::iomap_dev::Op;
use iomap::{buffered_read_ra, Advice, RaState};

const MIB: u64 = 1 << 20;

fn fill(i: u64) -> u8 {
    (i / 4096) as u8 ^ (i as u8)
}

/// A file of `bytes` mapped to one contiguous device run, nothing cached.
fn file(bytes: u64) -> TestFs {
    let fs = TestFs::new(4096, 2 << 20);
    fs.map_blocks(0, bytes / 4096, fill);
    fs
}

fn read_sizes(fs: &TestFs) -> Vec<u64> {
    TestFs::requests(&fs.log(), Op::Read)
        .into_iter()
        .map(|(_, len)| len)
        .collect()
}

#[test]
fn a_sequential_scan_reads_one_request_per_window_and_the_window_ramps_to_the_maximum() {
    let fs = file(8 * MIB);
    let ra = RaState::new(MIB);
    let mut buf = vec![0u8; 64 << 10];
    let mut pos = 0;
    while pos < 8 * MIB {
        let n = buffered_read_ra(&fs.mapping, &fs, &ra, pos, &mut buf).unwrap();
        assert_eq!(n, buf.len());
        assert!(
            buf.iter()
                .enumerate()
                .all(|(i, &b)| b == fill(pos + i as u64)),
            "bytes at {pos}"
        );
        pos += n as u64;
    }
    let reqs = TestFs::requests(&fs.log(), Op::Read);
    let sizes: Vec<u64> = reqs.iter().map(|&(_, len)| len).collect();
    // 64 KiB reads: a first window of twice the read, then 256 KiB, 512 KiB, 1 MiB, and the
    // maximum from there on, the last cut at the end of the file; every byte read once.
    assert_eq!(
        &sizes[..4],
        &[128 << 10, 256 << 10, 512 << 10, MIB],
        "{sizes:?}"
    );
    assert!(
        sizes[4..sizes.len() - 1].iter().all(|&s| s == MIB),
        "{sizes:?}"
    );
    assert_eq!(
        sizes.iter().sum::<u64>(),
        8 * MIB,
        "every byte read once: {sizes:?}"
    );
    assert!(
        reqs.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0),
        "windows follow each other on the device: {reqs:?}"
    );
}

#[test]
fn random_reads_get_no_readahead() {
    let fs = file(16 * MIB);
    let ra = RaState::new(MIB);
    let mut buf = vec![0u8; 4096];
    let mut x = 12345u64;
    for _ in 0..200 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let pos = (x >> 33) % (16 * MIB / 4096) * 4096;
        buffered_read_ra(&fs.mapping, &fs, &ra, pos, &mut buf).unwrap();
        assert!(buf
            .iter()
            .enumerate()
            .all(|(i, &b)| b == fill(pos + i as u64)));
    }
    let sizes = read_sizes(&fs);
    assert!(!sizes.is_empty());
    assert!(sizes.iter().all(|&s| s == 4096), "{sizes:?}");
}

#[test]
fn fadvise_random_turns_readahead_off_and_sequential_doubles_the_window() {
    let fs = file(8 * MIB);
    let ra = RaState::new(MIB);
    ra.advise(Advice::Random);
    let mut buf = vec![0u8; 64 << 10];
    for i in 0..4 {
        buffered_read_ra(&fs.mapping, &fs, &ra, i * (64 << 10), &mut buf).unwrap();
    }
    assert!(
        read_sizes(&fs).iter().all(|&s| s == 64 << 10),
        "{:?}",
        read_sizes(&fs)
    );

    let fs = file(16 * MIB);
    let ra = RaState::new(MIB);
    ra.advise(Advice::Sequential);
    let mut pos = 0;
    while pos < 16 * MIB {
        pos += buffered_read_ra(&fs.mapping, &fs, &ra, pos, &mut buf).unwrap() as u64;
    }
    let sizes = read_sizes(&fs);
    // Twice the maximum window (the device splits it into its 1 MiB requests).
    assert_eq!(ra.window().1, 2 * MIB, "{sizes:?}");
    assert!(sizes.len() < 16 * MIB as usize / (64 << 10), "{sizes:?}");
}

#[test]
fn a_reader_that_skips_ahead_starts_a_new_stream() {
    let fs = file(8 * MIB);
    let ra = RaState::new(MIB);
    let mut buf = vec![0u8; 64 << 10];
    buffered_read_ra(&fs.mapping, &fs, &ra, 0, &mut buf).unwrap();
    buffered_read_ra(&fs.mapping, &fs, &ra, 64 << 10, &mut buf).unwrap();
    assert_eq!(read_sizes(&fs), vec![128 << 10, 256 << 10]);
    // A jump: a random read, served alone.
    buffered_read_ra(&fs.mapping, &fs, &ra, 5 * MIB, &mut buf).unwrap();
    assert_eq!(read_sizes(&fs).last(), Some(&(64 << 10)));
    // Reading on from there is sequential again: a new window, read ahead.
    buffered_read_ra(&fs.mapping, &fs, &ra, 5 * MIB + (64 << 10), &mut buf).unwrap();
    assert_eq!(ra.window().0, 5 * MIB + (64 << 10));
    assert_eq!(read_sizes(&fs), vec![128 << 10]);
}

#[test]
fn reads_ahead_are_never_past_the_end_of_the_file() {
    // Blocks are mapped past the end, so reading there would show as device requests.
    let fs = file(2 * MIB);
    fs.mapping.set_size(MIB + 8192);
    let ra = RaState::new(MIB);
    let mut buf = vec![0u8; 64 << 10];
    let mut pos = 0;
    loop {
        let n = buffered_read_ra(&fs.mapping, &fs, &ra, pos, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        pos += n as u64;
    }
    assert_eq!(pos, MIB + 8192);
    let reqs = TestFs::requests(&fs.log(), Op::Read);
    let read: u64 = reqs.iter().map(|&(_, len)| len).sum();
    assert_eq!(read, MIB + 8192, "{reqs:?}");
    assert!(fs.mapping.folios_in(MIB + 8192, u64::MAX).is_empty());
}

#[test]
fn regression_an_unaligned_sequential_reader_gets_readahead() {
    // Reads continuing where the last ended were taken for random when they did not start
    // on a folio boundary: forty reads made forty requests.
    let fs = file(8 * MIB);
    let ra = RaState::new(MIB);
    let mut buf = vec![0u8; 64 << 10];
    let mut pos = MIB + 100;
    for _ in 0..40 {
        pos += buffered_read_ra(&fs.mapping, &fs, &ra, pos, &mut buf).unwrap() as u64;
    }
    let sizes = read_sizes(&fs);
    assert!(sizes.len() <= 10, "{sizes:?}");
    assert!(sizes.contains(&MIB), "the window ramped: {sizes:?}");
}

#[test]
fn regression_a_marker_left_behind_never_reads_far_away() {
    // A read reaching a marker another stream left walked the whole cache to the first gap,
    // however far, and read there.
    let fs = file(64 * MIB);
    let first = RaState::new(MIB);
    let mut buf = vec![0u8; 64 << 10];
    buffered_read_ra(&fs.mapping, &fs, &first, 0, &mut buf).unwrap();
    buffered_read_ra(&fs.mapping, &fs, &first, 64 << 10, &mut buf).unwrap();
    let mut rest = vec![0u8; (60 * MIB - (384 << 10)) as usize];
    iomap::buffered_read(&fs.mapping, &fs, 384 << 10, &mut rest).unwrap();
    let _ = fs.log();
    let other = RaState::new(MIB);
    let mut small = vec![0u8; 4096];
    buffered_read_ra(&fs.mapping, &fs, &other, 128 << 10, &mut small).unwrap();
    assert_eq!(
        read_sizes(&fs),
        Vec::<u64>::new(),
        "nothing within reach was missing"
    );
}

#[test]
fn regression_a_small_first_read_reads_one_window_and_marks_the_next() {
    // The marker landed on the folio being read, so the first read also read the second
    // window.
    let fs = file(8 * MIB);
    let ra = RaState::new(MIB);
    let mut buf = vec![0u8; 4096];
    buffered_read_ra(&fs.mapping, &fs, &ra, 0, &mut buf).unwrap();
    assert_eq!(read_sizes(&fs), vec![16 << 10]);
    assert_eq!(ra.window(), (0, 16 << 10, 12 << 10));
    buffered_read_ra(&fs.mapping, &fs, &ra, 4096, &mut buf).unwrap();
    assert_eq!(
        read_sizes(&fs),
        vec![64 << 10],
        "the marker at 4 KiB started the next"
    );
}

#[test]
fn regression_a_random_read_inside_an_old_window_gets_no_readahead() {
    // A miss anywhere inside the last window counted as sequential, so after the cache was
    // trimmed a random reader there was read ahead for.
    let fs = file(8 * MIB);
    let ra = RaState::new(MIB);
    let mut buf = vec![0u8; 64 << 10];
    let mut pos = 0;
    while pos < 2 * MIB {
        pos += buffered_read_ra(&fs.mapping, &fs, &ra, pos, &mut buf).unwrap() as u64;
    }
    fs.mapping.release_clean(0, u64::MAX);
    let _ = fs.log();
    let mut small = vec![0u8; 4096];
    let (start, size, _) = ra.window();
    let inside = start + size / 2;
    buffered_read_ra(&fs.mapping, &fs, &ra, inside, &mut small).unwrap();
    assert_eq!(read_sizes(&fs), vec![4096]);
}

#[test]
fn reads_as_large_as_the_window_keep_one_window_in_flight_ahead() {
    let fs = file(8 * MIB);
    let ra = RaState::new(MIB);
    let mut buf = vec![0u8; MIB as usize];
    buffered_read_ra(&fs.mapping, &fs, &ra, 0, &mut buf).unwrap();
    // The first read reads its own window and starts the next one.
    assert_eq!(read_sizes(&fs), vec![MIB, MIB]);
    assert_eq!(ra.window(), (MIB, MIB, MIB));
    buffered_read_ra(&fs.mapping, &fs, &ra, MIB, &mut buf).unwrap();
    assert_eq!(
        read_sizes(&fs),
        vec![MIB],
        "the second read found its data read ahead"
    );
    assert_eq!(ra.window().0, 2 * MIB);
}

#[test]
fn fadvise_willneed_reads_ahead_now_and_the_read_finds_it_cached() {
    let fs = file(4 * MIB);
    iomap::fadvise_willneed(&fs.mapping, &fs, MIB, MIB).unwrap();
    assert_eq!(read_sizes(&fs), vec![MIB]);
    let mut buf = vec![0u8; MIB as usize];
    iomap::buffered_read(&fs.mapping, &fs, MIB, &mut buf).unwrap();
    assert!(read_sizes(&fs).is_empty(), "served from the cache");
    assert!(buf
        .iter()
        .enumerate()
        .all(|(i, &b)| b == fill(MIB + i as u64)));
}

#[test]
fn fadvise_dontneed_writes_back_and_drops_the_range() {
    let fs = file(4 * MIB);
    let mut buf = vec![0u8; MIB as usize];
    // Two reads, two 1 MiB folios: the second lies wholly outside the range dropped.
    iomap::buffered_read(&fs.mapping, &fs, 0, &mut buf).unwrap();
    iomap::buffered_read(&fs.mapping, &fs, MIB, &mut buf).unwrap();
    fs.write(4096, b"dirty").unwrap();
    let _ = fs.log();
    let before = fs.mapping.cache().usage();
    assert!(
        before.cached_bytes >= 2 * MIB && before.dirty_bytes > 0,
        "{before:?}"
    );
    iomap::fadvise_dontneed(&fs.mapping, &fs.wb, 0, MIB).unwrap();
    fs.mapping.wait_writeback_range(0, MIB);
    assert_eq!(
        TestFs::requests(&fs.log(), Op::Write).len(),
        1,
        "the dirty block went out"
    );
    fs.mapping.release_clean(0, MIB);
    let after = fs.mapping.cache().usage();
    assert_eq!(after.dirty_bytes, 0);
    assert!(fs.mapping.folios_in(0, MIB).is_empty(), "{after:?}");
    assert!(
        !fs.mapping.folios_in(MIB, 2 * MIB).is_empty(),
        "outside the range stays"
    );
    assert_eq!(fs.read(4096, 5).unwrap(), b"dirty");
}

#[test]
fn an_uncached_read_leaves_only_what_was_cached_before() {
    let fs = file(8 * MIB);
    let mut buf = vec![0u8; MIB as usize];
    iomap::buffered_read(&fs.mapping, &fs, 0, &mut buf).unwrap();
    let cached = fs.mapping.cache().usage().cached_bytes;
    assert_eq!(cached, MIB);
    let mut all = vec![0u8; 8 * MIB as usize];
    let n = iomap::buffered_read_uncached(&fs.mapping, &fs, 0, &mut all).unwrap();
    assert_eq!(n, all.len());
    assert!(all.iter().enumerate().all(|(i, &b)| b == fill(i as u64)));
    assert_eq!(fs.mapping.cache().usage().cached_bytes, MIB);
    assert!(
        !fs.mapping.folios_in(0, MIB).is_empty(),
        "the hot first MiB stays"
    );
}

#[test]
fn r5_a_failed_readahead_reaches_the_read_that_needs_it() {
    // Readahead does not report its errors; the read that needs the failed blocks reads them
    // again and gets the errno, and nothing unread is uptodate.
    let fs = file(4 * MIB);
    let dev = fs.dev_addr(1).0;
    fs.fail_reads(dev + 256 * 1024, dev + 320 * 1024, libc::EIO);
    let ra = RaState::new(MIB);
    let mut buf = vec![0u8; 64 << 10];
    let mut pos = 0;
    let err = loop {
        match buffered_read_ra(&fs.mapping, &fs, &ra, pos, &mut buf) {
            Ok(n) => pos += n as u64,
            Err(e) => break e,
        }
    };
    assert_eq!(err.errno(), libc::EIO);
    assert_eq!(pos, 256 << 10, "every read before the bad range succeeded");
    let bad = fs.mapping.find_folio(256 << 10);
    assert!(bad.is_none_or(|f| !f.range_uptodate((256 << 10) - f.pos() as usize, 4096)));
}

#[test]
fn readahead_counts_windows_started_on_a_miss_and_at_the_marker() {
    let fs = file(8 * MIB);
    let ra = RaState::new(MIB);
    let mut buf = vec![0u8; 64 << 10];
    for pos in (0..8 * MIB).step_by(buf.len()) {
        buffered_read_ra(&fs.mapping, &fs, &ra, pos, &mut buf).unwrap();
    }
    let s = fs.mapping.cache().stats().snapshot();
    // One window on the first miss; every later one starts at a marker.
    assert_eq!(s.readahead_sync, 1, "{s:?}");
    assert!(s.readahead_async >= 7, "{s:?}");
    let requested: u64 = read_sizes(&fs).iter().sum();
    assert!(s.readahead_bytes >= requested, "{s:?}");
    // Random reads start none.
    let fs = file(8 * MIB);
    let ra = RaState::new(MIB);
    for pos in [5 * MIB, MIB, 7 * MIB, 3 * MIB] {
        buffered_read_ra(&fs.mapping, &fs, &ra, pos, &mut buf[..4096]).unwrap();
    }
    let s = fs.mapping.cache().stats().snapshot();
    assert_eq!((s.readahead_sync, s.readahead_async), (0, 0), "{s:?}");
}
