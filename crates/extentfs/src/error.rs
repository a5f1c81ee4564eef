//! extentfs errors, each with the errno a system call returns for it.

use std::io;

/// What went wrong, in words, with the errno it maps to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The engine or the device failed.
    #[error(transparent)]
    Engine(#[from] iomap::Error),
    /// A structure on disk failed its checksum or bounds checks.
    #[error("corrupt {structure}: {detail}")]
    Corrupt {
        /// Which structure (superblock, checkpoint, log record, inode...).
        structure: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// The image was made by a newer (or unknown) format version.
    #[error("unsupported format version {found} (this build reads version {supported})")]
    Version {
        /// Version on disk.
        found: u32,
        /// Version this build understands.
        supported: u32,
    },
    /// No such file or directory.
    #[error("no such file or directory")]
    NotFound,
    /// The name exists already.
    #[error("file exists")]
    Exists,
    /// A directory was needed.
    #[error("not a directory")]
    NotDir,
    /// A directory was not expected.
    #[error("is a directory")]
    IsDir,
    /// The directory is not empty.
    #[error("directory not empty")]
    NotEmpty,
    /// A name or path is too long.
    #[error("name too long ({len} bytes, at most {max})")]
    NameTooLong {
        /// Bytes given.
        len: usize,
        /// Bytes allowed.
        max: usize,
    },
    /// No space left for data or metadata.
    #[error("no space left on device")]
    NoSpace,
    /// Too many hard links.
    #[error("too many links (at most {0})")]
    TooManyLinks(u32),
    /// The file would grow past the largest size the format can map.
    #[error("file too large (at most {0} bytes)")]
    FileTooBig(u64),
    /// The operation would move something between filesystems or is not possible across them.
    #[error("cross-device link")]
    CrossDevice,
    /// A bad argument, in words.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The filesystem is mounted read-only.
    #[error("read-only filesystem")]
    ReadOnly,
    /// The extended attribute does not exist.
    #[error("no such attribute")]
    NoAttr,
    /// An extended attribute value does not fit the caller's buffer or the format.
    #[error("attribute value too large ({len} bytes, at most {max})")]
    AttrTooBig {
        /// Bytes given.
        len: usize,
        /// Bytes allowed.
        max: usize,
    },
    /// Not supported by this filesystem.
    #[error("operation not supported: {0}")]
    Unsupported(&'static str),
    /// Not permitted on this kind of file (POSIX's EPERM).
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    /// The filesystem stopped accepting changes after an unrecoverable error.
    #[error("filesystem shut down after an earlier error")]
    Shutdown,
    /// A device operation failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

impl Error {
    /// The errno a system call would return.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Engine(e) => e.errno(),
            Error::Corrupt { .. } => libc::EUCLEAN,
            Error::Version { .. } => libc::EINVAL,
            Error::NotFound => libc::ENOENT,
            Error::Exists => libc::EEXIST,
            Error::NotDir => libc::ENOTDIR,
            Error::IsDir => libc::EISDIR,
            Error::NotEmpty => libc::ENOTEMPTY,
            Error::NameTooLong { .. } => libc::ENAMETOOLONG,
            Error::NoSpace => libc::ENOSPC,
            Error::TooManyLinks(_) => libc::EMLINK,
            Error::FileTooBig(_) => libc::EFBIG,
            Error::CrossDevice => libc::EXDEV,
            Error::Invalid(_) => libc::EINVAL,
            Error::ReadOnly => libc::EROFS,
            Error::NoAttr => libc::ENODATA,
            Error::AttrTooBig { .. } => libc::E2BIG,
            Error::Unsupported(_) => libc::EOPNOTSUPP,
            Error::NotPermitted(_) => libc::EPERM,
            Error::Shutdown => libc::EIO,
            Error::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }

    /// A corruption report naming `structure`.
    pub fn corrupt(structure: &'static str, detail: impl Into<String>) -> Self {
        Error::Corrupt {
            structure,
            detail: detail.into(),
        }
    }

    /// An error for `errno`, as device and engine calls report them.
    pub fn from_errno(errno: i32) -> Self {
        match errno {
            libc::ENOSPC => Error::NoSpace,
            _ => Error::Io(io::Error::from_raw_os_error(errno)),
        }
    }
}

impl From<Error> for iomap::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Engine(e) => e,
            other => iomap::Error::from_errno(other.errno()),
        }
    }
}

/// extentfs's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
