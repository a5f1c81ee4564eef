//! `iomapfs mkfs`: formats an image, creating it sparse if it does not exist.

use std::fs::OpenOptions;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use extentfs::format::{SB_MAGIC, SB_OFFSETS};
use extentfs::MkfsOptions;
use tracing::info;

use super::{CliError, MkfsArgs};
use crate::image::{create_sparse, DeviceChoice, LockedImage};
use crate::size::human;

/// The size of an image made without `--size`.
pub const DEFAULT_IMAGE_SIZE: u64 = 8 << 30;

pub fn run(a: MkfsArgs) -> Result<(), CliError> {
    let exists = a.image.exists();
    if !exists {
        create_sparse(&a.image, a.size.unwrap_or(DEFAULT_IMAGE_SIZE))?;
    }
    let made = (|| {
        let image = LockedImage::lock(&a.image)?;
        if exists {
            if !a.force {
                refuse_unless_blank(&a.image)?;
            }
            if let Some(size) = a.size {
                resize(&a.image, size)?;
            }
        }
        format(&image, a.block_size)
    })();
    if made.is_err() && !exists {
        let _ = std::fs::remove_file(&a.image);
    }
    made
}

/// What formatting over `path` would destroy, unless it is blank: extentfs or anything else.
fn refuse_unless_blank(path: &Path) -> Result<(), CliError> {
    let what = if holds_extentfs(path)? {
        "already holds an extentfs"
    } else if !starts_blank(path)? {
        "is not empty (its first MiB holds data)"
    } else {
        return Ok(());
    };
    Err(CliError::Usage(format!(
        "{} {what}; pass --force to format over it",
        path.display()
    )))
}

/// Whether the first MiB of `path` (or all of it, if shorter) is zeros.
fn starts_blank(path: &Path) -> io::Result<bool> {
    let mut head = Vec::with_capacity(1 << 20);
    std::fs::File::open(path)?
        .take(1 << 20)
        .read_to_end(&mut head)?;
    Ok(head.iter().all(|&b| b == 0))
}

/// Formats a locked image with `block_size`.
pub fn format(image: &LockedImage, block_size: u32) -> Result<(), CliError> {
    let (dev, _) = image.open_device(DeviceChoice::File, false, false)?;
    let size = dev.capacity_bytes();
    let opts = MkfsOptions {
        block_size,
        ..MkfsOptions::default()
    };
    extentfs::mkfs(dev, &opts).map_err(CliError::fs(format!(
        "cannot format {}",
        image.path().display()
    )))?;
    info!(
        "formatted {} as extentfs: {}, {block_size}-byte blocks",
        image.path().display(),
        human(size)
    );
    Ok(())
}

fn resize(path: &Path, size: u64) -> io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "--size applies to image files; {} is not one",
                path.display()
            ),
        ));
    }
    OpenOptions::new().write(true).open(path)?.set_len(size)
}

/// Whether either superblock slot of `path` starts with extentfs's magic.
fn holds_extentfs(path: &Path) -> io::Result<bool> {
    let mut f = std::fs::File::open(path)?;
    for off in SB_OFFSETS {
        let mut magic = [0u8; 8];
        f.seek(SeekFrom::Start(off))?;
        match f.read_exact(&mut magic) {
            Ok(()) if &magic == SB_MAGIC => return Ok(true),
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}
