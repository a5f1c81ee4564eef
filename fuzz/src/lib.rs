//! The bodies of the fuzz targets in `fuzz_targets/`, kept in a library so the corpus
//! generator (`examples/seeds.rs`) and the corpus test (`tests/corpus.rs`) run the same code
//! on stable Rust without libFuzzer.
//!
//! Each target takes arbitrary bytes and panics only when extentfs breaks a promise: a
//! decoder that panics or accepts what it cannot re-encode, a mount or fsck that panics on a
//! damaged image, or the random-operation checker finding a file that differs from its oracle.

pub mod base;
pub mod checkpoint;
pub mod decode;
pub mod image;
pub mod ops;
pub mod replay;
pub mod seeds;
