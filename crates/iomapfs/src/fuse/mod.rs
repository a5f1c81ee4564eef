//! The FUSE side: extentfs served to the kernel through `fuser`.

mod attr;
mod fs;
pub mod fusermount;
mod handles;

pub use fs::FuseFs;
