//! The one place errors become errnos for the kernel.
//!
//! An `io::Error` built from a raw OS error keeps it; one built from an `ErrorKind` has none,
//! and mapping every such kind to EIO (as a blanket conversion would) turns "no space" into
//! "I/O error". So the raw errno comes first, then an explicit table of kinds.

use std::io;

use fuser::Errno;

/// The errno for a filesystem error.
pub fn fs_errno(e: &extentfs::Error) -> Errno {
    Errno::from_i32(match e {
        extentfs::Error::Io(io) | extentfs::Error::Engine(iomap::Error::Io(io)) => io_errno(io),
        other => other.errno(),
    })
}

/// The errno for an I/O error: its raw OS error, else its kind's.
pub fn io_errno(e: &io::Error) -> i32 {
    if let Some(raw) = e.raw_os_error() {
        return raw;
    }
    use io::ErrorKind as K;
    match e.kind() {
        K::NotFound => libc::ENOENT,
        K::PermissionDenied => libc::EACCES,
        K::AlreadyExists => libc::EEXIST,
        K::InvalidInput => libc::EINVAL,
        K::StorageFull => libc::ENOSPC,
        K::Unsupported => libc::EOPNOTSUPP,
        K::WouldBlock => libc::EAGAIN,
        K::Interrupted => libc::EINTR,
        K::TimedOut => libc::ETIMEDOUT,
        K::ReadOnlyFilesystem => libc::EROFS,
        K::ResourceBusy => libc::EBUSY,
        K::FileTooLarge => libc::EFBIG,
        K::NotADirectory => libc::ENOTDIR,
        K::IsADirectory => libc::EISDIR,
        K::DirectoryNotEmpty => libc::ENOTEMPTY,
        K::InvalidFilename => libc::ENAMETOOLONG,
        K::TooManyLinks => libc::EMLINK,
        K::CrossesDevices => libc::EXDEV,
        K::OutOfMemory => libc::ENOMEM,
        K::BrokenPipe => libc::EPIPE,
        // Short transfers, corrupt data and anything else the device reports are I/O errors.
        _ => libc::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use extentfs::Error as F;
    use io::ErrorKind as K;

    fn code(e: &F) -> i32 {
        fs_errno(e).code()
    }

    #[test]
    fn every_filesystem_error_has_its_errno() {
        let table: Vec<(F, i32)> = vec![
            (
                F::Corrupt {
                    structure: "inode",
                    detail: "bad".into(),
                },
                libc::EUCLEAN,
            ),
            (
                F::Version {
                    found: 9,
                    supported: 1,
                },
                libc::EINVAL,
            ),
            (F::NotFound, libc::ENOENT),
            (F::Exists, libc::EEXIST),
            (F::NotDir, libc::ENOTDIR),
            (F::IsDir, libc::EISDIR),
            (F::NotEmpty, libc::ENOTEMPTY),
            (F::NameTooLong { len: 300, max: 255 }, libc::ENAMETOOLONG),
            (F::NoSpace, libc::ENOSPC),
            (F::TooManyLinks(65000), libc::EMLINK),
            (F::FileTooBig(1 << 40), libc::EFBIG),
            (F::CrossDevice, libc::EXDEV),
            (F::Invalid("x".into()), libc::EINVAL),
            (F::ReadOnly, libc::EROFS),
            (F::NoAttr, libc::ENODATA),
            (
                F::AttrTooBig {
                    len: 70000,
                    max: 65536,
                },
                libc::E2BIG,
            ),
            (F::Unsupported("fallocate mode"), libc::EOPNOTSUPP),
            (F::NotPermitted("a hard link to a directory"), libc::EPERM),
            (F::Shutdown, libc::EIO),
            (
                F::Io(io::Error::from_raw_os_error(libc::ENOSPC)),
                libc::ENOSPC,
            ),
            (F::Io(K::StorageFull.into()), libc::ENOSPC),
            (F::Io(K::Other.into()), libc::EIO),
        ];
        for (err, want) in &table {
            assert_eq!(code(err), *want, "{err}");
        }
    }

    #[test]
    fn every_engine_error_has_its_errno() {
        let table: Vec<(iomap::Error, i32)> = vec![
            (iomap::Error::from_errno(libc::EDQUOT), libc::EDQUOT),
            (iomap::Error::Io(K::StorageFull.into()), libc::ENOSPC),
            (iomap::Error::Io(K::UnexpectedEof.into()), libc::EIO),
            (
                iomap::Error::FileTooBig {
                    pos: 1,
                    len: 2,
                    max: 3,
                },
                libc::EFBIG,
            ),
            (iomap::Error::InvalidArgument("x".into()), libc::EINVAL),
            (iomap::Error::NoSuchOffset(7), libc::ENXIO),
            (iomap::Error::Fault(7), libc::EFAULT),
            (iomap::Error::BadMapping("x".into()), libc::EIO),
        ];
        for (err, want) in table {
            let msg = err.to_string();
            assert_eq!(code(&F::Engine(err)), want, "{msg}");
        }
    }

    #[test]
    fn a_raw_errno_wins_over_the_kind_and_every_kind_has_an_errno() {
        assert_eq!(
            io_errno(&io::Error::from_raw_os_error(libc::EDQUOT)),
            libc::EDQUOT
        );
        let kinds = [
            (K::NotFound, libc::ENOENT),
            (K::PermissionDenied, libc::EACCES),
            (K::AlreadyExists, libc::EEXIST),
            (K::InvalidInput, libc::EINVAL),
            (K::StorageFull, libc::ENOSPC),
            (K::Unsupported, libc::EOPNOTSUPP),
            (K::WouldBlock, libc::EAGAIN),
            (K::Interrupted, libc::EINTR),
            (K::TimedOut, libc::ETIMEDOUT),
            (K::ReadOnlyFilesystem, libc::EROFS),
            (K::ResourceBusy, libc::EBUSY),
            (K::FileTooLarge, libc::EFBIG),
            (K::NotADirectory, libc::ENOTDIR),
            (K::IsADirectory, libc::EISDIR),
            (K::DirectoryNotEmpty, libc::ENOTEMPTY),
            (K::InvalidFilename, libc::ENAMETOOLONG),
            (K::TooManyLinks, libc::EMLINK),
            (K::CrossesDevices, libc::EXDEV),
            (K::OutOfMemory, libc::ENOMEM),
            (K::BrokenPipe, libc::EPIPE),
            (K::UnexpectedEof, libc::EIO),
            (K::InvalidData, libc::EIO),
            (K::Other, libc::EIO),
        ];
        for (kind, want) in kinds {
            assert_eq!(io_errno(&io::Error::from(kind)), want, "{kind:?}");
        }
    }
}
