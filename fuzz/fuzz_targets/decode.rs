//! The superblock, checkpoint chain block and log record decoders (src/decode.rs).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| iomapfs_fuzz::decode::run(data));
