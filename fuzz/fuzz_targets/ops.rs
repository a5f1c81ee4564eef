//! Operation sequences checked against an oracle (src/ops.rs).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| iomapfs_fuzz::ops::run(data));
