//! Bad input: overflowing offsets, EOF, the maximum file size, zero lengths, bad geometry and
//! bad mappings get clear errors or defined results, never a panic.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first unexpected error"
)]

mod common;

use std::sync::Arc;

use common::TestFs;
use iomap::iomap_dev::{DevAddr, MemDevice};
use iomap::{
    buffered_read, buffered_write, file_unshare, readahead, seek_data, zero_range, CacheConfig,
    Error, Iomap, IomapOps, IomapPair, IterFlags, Mapping, PageCache, Result, SliceSource,
};

#[test]
fn offsets_that_overflow_are_invalid() {
    let fs = TestFs::new(4096, 4096);
    let mut src = SliceSource::new(&[0; 100]);
    let e = buffered_write(&fs.mapping, &fs, u64::MAX - 10, 100, &mut src).unwrap_err();
    assert_eq!(e.errno(), 22);
    let e = buffered_write(&fs.mapping, &fs, i64::MAX as u64 - 10, 100, &mut src).unwrap_err();
    assert_eq!(e.errno(), 22);
    let e = zero_range(&fs.mapping, &fs, u64::MAX - 1, 10).unwrap_err();
    assert_eq!(e.errno(), 22);
    let mut buf = [0u8; 10];
    assert_eq!(
        buffered_read(&fs.mapping, &fs, u64::MAX, &mut buf)
            .unwrap_err()
            .errno(),
        22
    );
}

#[test]
fn reads_at_or_past_eof_are_short_or_empty() {
    let fs = TestFs::new(4096, 4096);
    fs.write(0, b"abc").unwrap();
    let mut buf = [0u8; 10];
    assert_eq!(buffered_read(&fs.mapping, &fs, 0, &mut buf).unwrap(), 3);
    assert_eq!(buffered_read(&fs.mapping, &fs, 3, &mut buf).unwrap(), 0);
    assert_eq!(
        buffered_read(&fs.mapping, &fs, 1 << 50, &mut buf).unwrap(),
        0
    );
    assert_eq!(buffered_read(&fs.mapping, &fs, 0, &mut []).unwrap(), 0);
    readahead(&fs.mapping, &fs, 1 << 50, 1 << 20).unwrap();
    assert_eq!(fs.mapping.nr_folios(), 1, "readahead past EOF adds nothing");
}

#[test]
fn writes_past_the_maximum_file_size_are_efbig_or_shortened() {
    let fs = TestFs::new(4096, 4096);
    fs.mapping.set_max_file_size(1 << 20);
    let data = vec![5u8; 8192];
    let e = fs.write(1 << 20, &data).unwrap_err();
    assert!(matches!(e, Error::FileTooBig { .. }));
    assert_eq!(e.errno(), 27);
    assert_eq!(
        fs.write((1 << 20) - 100, &data).unwrap(),
        100,
        "shortened at the limit"
    );
    assert_eq!(fs.mapping.size(), 1 << 20);
}

#[test]
fn zero_length_calls_do_nothing() {
    let fs = TestFs::new(4096, 4096);
    let mut src = SliceSource::new(&[]);
    assert_eq!(
        buffered_write(&fs.mapping, &fs, 100, 0, &mut src).unwrap(),
        0
    );
    assert!(!zero_range(&fs.mapping, &fs, 100, 0).unwrap());
    file_unshare(&fs.mapping, &fs, 0, 0).unwrap();
    assert_eq!(fs.mapping.size(), 0);
    assert_eq!(fs.mapping.nr_folios(), 0);
    assert!(fs.log().is_empty());
}

#[test]
fn bad_geometry_is_rejected_with_a_reason() {
    let dev = Arc::new(MemDevice::new(1 << 20));
    let cache = PageCache::new(CacheConfig::default()).unwrap();
    for bs in [0, 256, 3000, 1 << 17] {
        let e = Mapping::new(cache.clone(), dev.clone(), bs)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.errno(), 22, "block size {bs}");
    }
    let small_requests = Arc::new(MemDevice::with_geometry(1 << 20, 512, 4096));
    let e = Mapping::new(cache, small_requests, 65536)
        .map(|_| ())
        .unwrap_err();
    assert!(e.to_string().contains("maximum request"), "{e}");
    for cfg in [
        CacheConfig {
            page_size: 1000,
            max_folio_size: 1 << 21,
        },
        CacheConfig {
            page_size: 4096,
            max_folio_size: 2048,
        },
        CacheConfig {
            page_size: 4096,
            max_folio_size: 1 << 31,
        },
    ] {
        assert_eq!(PageCache::new(cfg).map(|_| ()).unwrap_err().errno(), 22);
    }
}

/// Returns a mapping that breaks the contract in a chosen way.
struct Broken(fn(u64) -> Iomap);

impl IomapOps for Broken {
    fn begin(&self, pos: u64, _: u64, _: IterFlags) -> Result<IomapPair> {
        Ok((self.0)(pos).into())
    }
}

#[test]
fn mappings_that_break_the_contract_are_eio_not_a_panic() {
    let fs = TestFs::new(4096, 4096);
    fs.mapping.set_size(1 << 20);
    let cases: [fn(u64) -> Iomap; 4] = [
        |pos| Iomap::hole(pos + 4096, 4096),               // misses pos
        |pos| Iomap::hole(pos, 0),                         // empty
        |pos| Iomap::mapped(pos + 512, 4096, DevAddr(0)),  // not block aligned
        |_| Iomap::new(iomap::IomapKind::Inline, 0, 4096), // inline without data
    ];
    for case in cases {
        let ops = Broken(case);
        let mut buf = [0u8; 100];
        let e = buffered_read(&fs.mapping, &ops, 8192, &mut buf).unwrap_err();
        assert_eq!(e.errno(), 5, "{e}");
        let e = buffered_write(&fs.mapping, &ops, 8192, 10, &mut SliceSource::new(&[1; 10]))
            .unwrap_err();
        assert_eq!(e.errno(), 5, "{e}");
        assert_eq!(seek_data(&fs.mapping, &ops, 8192).unwrap_err().errno(), 5);
    }
    for f in fs.mapping.folios_in(0, u64::MAX) {
        assert!(!f.is_locked(), "a failed read unlocks its folios");
    }
}

#[test]
fn a_mapping_error_mid_write_returns_the_bytes_written() {
    let fs = TestFs::new(4096, 4096);
    // Two mapped blocks, then holes: the write needs a second mapping at 8192, which fails.
    fs.map_blocks(0, 2, |_| 0);
    fs.state.lock().fail_begin = Some((8192, u64::MAX, 28));
    assert_eq!(fs.write(0, &[1u8; 16384]).unwrap(), 8192);
    assert_eq!(fs.mapping.size(), 8192);
    assert_eq!(fs.write(8192, &[1u8; 10]).unwrap_err().errno(), 28);
}
