//! A log record's operations, decoded and replayed onto a state (src/replay.rs).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| iomapfs_fuzz::replay::run(data));
