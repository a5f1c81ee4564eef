//! Range invalidation for punch and truncate, and release of clean folios.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first unexpected error"
)]

mod common;

use common::TestFs;

#[test]
fn truncate_range_removes_whole_folios_and_zeroes_partial_ones() {
    let fs = TestFs::new(1024, 4096);
    fs.write(0, &[7u8; 12288]).unwrap();
    assert_eq!(fs.mapping.nr_folios(), 3);
    fs.mapping.truncate_range(2048, 8192);
    assert_eq!(fs.mapping.nr_folios(), 2, "the folio wholly inside is gone");
    let head = fs.mapping.find_folio(0).unwrap().snapshot();
    assert_eq!(
        head.dirty_blocks,
        [true, true, false, false],
        "blocks wholly inside lose their dirty bits"
    );
    let mut buf = [1u8; 2048];
    fs.mapping.find_folio(0).unwrap().copy_out(2048, &mut buf);
    assert!(
        buf.iter().all(|&b| b == 0),
        "the truncated part of a kept folio is zeroed"
    );
    assert_eq!(fs.mapping.dirty_folios(0, u64::MAX), [0, 8192]);
}

#[test]
fn truncate_to_drops_the_cache_past_eof_and_release_keeps_dirty_folios() {
    let fs = TestFs::new(4096, 4096);
    fs.write(0, &[1u8; 4 * 4096]).unwrap();
    fs.flush_all();
    fs.write(4096, b"dirty").unwrap();
    assert_eq!(
        fs.mapping.release_clean(0, u64::MAX),
        3,
        "three clean folios released"
    );
    assert!(
        fs.mapping.find_folio(4096).is_some(),
        "the dirty folio stays"
    );
    fs.truncate(5000).unwrap();
    assert_eq!(fs.mapping.size(), 5000);
    assert_eq!(fs.mapping.nr_folios(), 1);
    assert_eq!(fs.read(0, 10000).unwrap().len(), 5000);
    // Growing again shows zeros past the old EOF, never the old bytes.
    fs.truncate(8192).unwrap();
    let data = fs.read(4096, 4096).unwrap();
    assert_eq!(&data[..5], b"dirty");
    assert!(data[5..904].iter().all(|&b| b == 1));
    assert!(data[904..].iter().all(|&b| b == 0));
}

#[test]
fn punch_drops_cached_data_and_frees_blocks() {
    let fs = TestFs::new(1024, 4096);
    fs.write(0, &[3u8; 8192]).unwrap();
    fs.flush_all();
    fs.punch(1500, 4000).unwrap();
    let data = fs.read(0, 8192).unwrap();
    assert!(data[..1500].iter().all(|&b| b == 3));
    assert!(data[1500..5500].iter().all(|&b| b == 0));
    assert!(data[5500..].iter().all(|&b| b == 3));
    assert_eq!(fs.ext(2), None);
    assert!(
        fs.ext(1).is_some() && fs.ext(5).is_some(),
        "partial blocks stay allocated"
    );
}
