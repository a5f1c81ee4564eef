//! The FUSE side: extentfs served to the kernel through `fuser`.

mod attr;
mod fs;
mod handles;

pub use fs::FuseFs;
