//! The checkpoint body decoder and its round trip (src/checkpoint.rs).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| iomapfs_fuzz::checkpoint::run(data));
