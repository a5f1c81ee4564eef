//! fsck, mount, use and repair of a damaged image (src/image.rs).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| iomapfs_fuzz::image::run(data));
