//! Image files: creating them sparse, locking them against a second user, and opening them as
//! the device the filesystem runs on.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::ValueEnum;
use iomap_dev::{open_device, BlockDevice, DeviceKind, DeviceOptions};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tracing::warn;

/// Which device serves the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceChoice {
    /// io_uring when the kernel allows it, else positional I/O on a thread pool.
    Auto,
    /// Positional I/O (preadv2/pwritev2) on a pool of threads.
    File,
    /// io_uring: one ring, batched submissions.
    Uring,
}

/// An image held open with an exclusive lock, so that no other `iomapfs` mounts, formats or
/// repairs it meanwhile. The lock goes when this drops or the process dies.
pub struct LockedImage {
    path: PathBuf,
    _lock: Flock<File>,
}

impl LockedImage {
    /// Locks `path`, which must exist.
    pub fn lock(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).open(path).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
        })?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Self {
                path: path.to_owned(),
                _lock: lock,
            }),
            Err((_, Errno::EWOULDBLOCK)) => Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!(
                    "{} is in use by another iomapfs (mounted, or being formatted or checked)",
                    path.display()
                ),
            )),
            Err((_, e)) => Err(io::Error::new(
                io::Error::from(e).kind(),
                format!("cannot lock {}: {e}", path.display()),
            )),
        }
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the image as a device of `choice`; `auto` falls back from io_uring to the file
    /// device, saying why.
    pub fn open_device(
        &self,
        choice: DeviceChoice,
        read_only: bool,
        direct: bool,
    ) -> io::Result<(Arc<dyn BlockDevice>, DeviceKind)> {
        let opts = DeviceOptions {
            read_only,
            direct,
            ..DeviceOptions::default()
        };
        let open = |kind| {
            open_device(kind, &self.path, &opts).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot open {} with the {kind} device: {e}",
                        self.path.display()
                    ),
                )
            })
        };
        match choice {
            DeviceChoice::File => Ok((open(DeviceKind::File)?, DeviceKind::File)),
            DeviceChoice::Uring => Ok((open(DeviceKind::Uring)?, DeviceKind::Uring)),
            DeviceChoice::Auto => match open(DeviceKind::Uring) {
                Ok(dev) => Ok((dev, DeviceKind::Uring)),
                Err(e) => {
                    warn!("{e}; using the file device instead");
                    Ok((open(DeviceKind::File)?, DeviceKind::File))
                }
            },
        }
    }
}

/// Creates `path` as a sparse file of `size` bytes; fails if it exists.
pub fn create_sparse(path: &Path, size: u64) -> io::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display())))?;
    file.set_len(size).map_err(|e| {
        let _ = std::fs::remove_file(path);
        io::Error::new(
            e.kind(),
            format!("cannot size {} to {size} bytes: {e}", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_locked_image_cannot_be_locked_twice_until_released() {
        let dir = std::env::temp_dir().join(format!("iomapfs-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("img");
        let _ = std::fs::remove_file(&path);
        create_sparse(&path, 1 << 20).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
        let held = LockedImage::lock(&path).unwrap();
        let err = LockedImage::lock(&path).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::ResourceBusy);
        assert!(err.to_string().contains("in use"), "{err}");
        drop(held);
        LockedImage::lock(&path).unwrap();
        let err = create_sparse(&path, 1 << 20).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
