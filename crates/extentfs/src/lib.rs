//! extentfs: a persistent, crash-consistent, extent-mapped filesystem on the iomap engine.

#![forbid(unsafe_code)]

pub mod alloc;
pub mod rangemap;
