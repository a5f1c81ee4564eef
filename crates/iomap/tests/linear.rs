//! `LinearMap`: a raw image through the whole engine.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first unexpected error"
)]

use std::sync::Arc;

use iomap::iomap_dev::{BlockDeviceExt, DevAddr, MemDevice};
use iomap::{
    buffered_read, buffered_write, CacheConfig, LinearMap, Mapping, OpenFile, PageCache,
    SliceSource, WritebackOps,
};

#[test]
fn a_raw_image_reads_writes_and_syncs_through_a_linear_map() {
    let dev = Arc::new(MemDevice::new(4 << 20));
    dev.write_at(DevAddr(1 << 20), &[7u8; 8192]).unwrap();
    let cache = PageCache::new(CacheConfig::default()).unwrap();
    let mapping = Arc::new(Mapping::new(cache, dev.clone(), 4096).unwrap());
    let map = Arc::new(LinearMap::new(DevAddr(1 << 20), 2 << 20));
    mapping.set_size(map.len());
    let file = OpenFile::open(&mapping);

    let mut buf = vec![0u8; 8192];
    assert_eq!(buffered_read(&mapping, &*map, 0, &mut buf).unwrap(), 8192);
    assert!(
        buf.iter().all(|&b| b == 7),
        "file byte 0 is device byte 1 MiB"
    );

    let mut src = SliceSource::new(b"hello");
    assert_eq!(
        buffered_write(&mapping, &*map, 100, 5, &mut src).unwrap(),
        5
    );
    let wb: Arc<dyn WritebackOps> = map.clone();
    file.fsync(&wb, 0, u64::MAX, false).unwrap();
    let mut back = [0u8; 512];
    dev.read_at(DevAddr(1 << 20), &mut back).unwrap();
    assert_eq!(&back[100..105], b"hello");
    assert!(back[..100].iter().all(|&b| b == 7));

    // The image cannot grow.
    let mut src = SliceSource::new(b"x");
    let err = buffered_write(&mapping, &*map, 2 << 20, 1, &mut src).unwrap_err();
    assert_eq!(err.errno(), 28);
}
