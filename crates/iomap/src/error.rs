//! The engine's error type.

use std::io;

/// Errors returned by the engine. Filesystem callbacks return them too, usually as
/// [`Error::Io`] carrying an errno (`ENOSPC`, `EDQUOT`, ...).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A device or filesystem operation failed with this OS error.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The operation would make the file larger than its maximum size.
    #[error("offset {pos} + {len} bytes exceeds the maximum file size of {max} bytes")]
    FileTooBig {
        /// Requested start.
        pos: u64,
        /// Requested length.
        len: u64,
        /// The file's maximum size.
        max: u64,
    },
    /// An argument is out of range or inconsistent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A seek for data or a hole started at or past the end of the file, or found no data.
    #[error("no data or hole at or after offset {0}")]
    NoSuchOffset(u64),
    /// A mapped write touched a folio that is no longer inside the file.
    #[error("offset {0} is outside the file: it was truncated under the mapping")]
    Fault(u64),
    /// The filesystem's `IomapOps::begin` returned a mapping that breaks the contract.
    #[error("filesystem returned a bad mapping: {0}")]
    BadMapping(String),
}

impl Error {
    /// The errno a system call would return for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Io(e) => e.raw_os_error().unwrap_or(match e.kind() {
                io::ErrorKind::NotFound => libc_errno::ENOENT,
                io::ErrorKind::PermissionDenied => libc_errno::EACCES,
                io::ErrorKind::InvalidInput => libc_errno::EINVAL,
                io::ErrorKind::StorageFull => libc_errno::ENOSPC,
                io::ErrorKind::Unsupported => libc_errno::EOPNOTSUPP,
                io::ErrorKind::UnexpectedEof => libc_errno::EIO,
                _ => libc_errno::EIO,
            }),
            Error::FileTooBig { .. } => libc_errno::EFBIG,
            Error::InvalidArgument(_) => libc_errno::EINVAL,
            Error::NoSuchOffset(_) => libc_errno::ENXIO,
            Error::Fault(_) => libc_errno::EFAULT,
            Error::BadMapping(_) => libc_errno::EIO,
        }
    }

    /// An error carrying `errno`, as filesystem callbacks return them.
    pub fn from_errno(errno: i32) -> Self {
        Error::Io(io::Error::from_raw_os_error(errno))
    }
}

/// Linux errno values the engine produces, so that the engine needs no libc binding.
pub mod libc_errno {
    /// No such file or directory.
    pub const ENOENT: i32 = 2;
    /// I/O error.
    pub const EIO: i32 = 5;
    /// No such device or address (seek past data).
    pub const ENXIO: i32 = 6;
    /// Permission denied.
    pub const EACCES: i32 = 13;
    /// Bad address.
    pub const EFAULT: i32 = 14;
    /// Invalid argument.
    pub const EINVAL: i32 = 22;
    /// File too large.
    pub const EFBIG: i32 = 27;
    /// No space left on device.
    pub const ENOSPC: i32 = 28;
    /// Operation not supported.
    pub const EOPNOTSUPP: i32 = 95;
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_maps_to_its_errno() {
        let cases = [
            (Error::from_errno(28), 28),
            (Error::Io(io::ErrorKind::InvalidInput.into()), 22),
            (Error::Io(io::ErrorKind::Other.into()), 5),
            (
                Error::FileTooBig {
                    pos: 1,
                    len: 2,
                    max: 3,
                },
                27,
            ),
            (Error::InvalidArgument("x".into()), 22),
            (Error::NoSuchOffset(9), 6),
            (Error::Fault(9), 14),
            (Error::BadMapping("x".into()), 5),
        ];
        for (err, errno) in cases {
            assert_eq!(err.errno(), errno, "{err}");
        }
    }
}
