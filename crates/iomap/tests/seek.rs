//! SEEK_DATA and SEEK_HOLE over mapping kinds and the cache.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first unexpected error"
)]

mod common;

use common::TestFs;
use iomap::{seek_data, seek_hole};

#[test]
fn seek_sees_holes_data_and_cached_data_over_unwritten_extents() {
    let fs = TestFs::new(4096, 4096);
    // 0: hole, 1: mapped, 2: unwritten, 3: unwritten with dirty cache, 4: hole, 5: delalloc.
    fs.map_blocks(1, 1, |_| 1);
    fs.fallocate_blocks(2, 2).unwrap();
    fs.mapping.set_size(6 * 4096);
    fs.write(3 * 4096 + 100, b"cached").unwrap();
    fs.write(5 * 4096, b"delalloc").unwrap();
    let k = 4096;
    assert_eq!(seek_data(&fs.mapping, &fs, 0).unwrap(), k);
    assert_eq!(seek_hole(&fs.mapping, &fs, 0).unwrap(), 0);
    assert_eq!(
        seek_hole(&fs.mapping, &fs, k).unwrap(),
        2 * k,
        "unwritten without cache is a hole"
    );
    assert_eq!(
        seek_data(&fs.mapping, &fs, 2 * k).unwrap(),
        3 * k,
        "cached blocks over unwritten are data"
    );
    assert_eq!(seek_hole(&fs.mapping, &fs, 3 * k).unwrap(), 4 * k);
    assert_eq!(
        seek_data(&fs.mapping, &fs, 4 * k).unwrap(),
        5 * k,
        "delalloc is data"
    );
    assert_eq!(
        seek_hole(&fs.mapping, &fs, 5 * k).unwrap(),
        6 * k,
        "EOF is a hole"
    );
    assert_eq!(
        seek_data(&fs.mapping, &fs, 6 * k).unwrap_err().errno(),
        6,
        "ENXIO at EOF"
    );
    assert_eq!(seek_hole(&fs.mapping, &fs, 1 << 40).unwrap_err().errno(), 6);
}

#[test]
fn seek_data_past_the_last_data_is_enxio() {
    let fs = TestFs::new(1024, 4096);
    fs.map_blocks(0, 1, |_| 1);
    fs.mapping.set_size(10 * 1024);
    assert_eq!(seek_data(&fs.mapping, &fs, 1024).unwrap_err().errno(), 6);
    assert_eq!(seek_hole(&fs.mapping, &fs, 0).unwrap(), 1024);
}
