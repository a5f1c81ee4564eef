//! Opening the file or block device behind [`FileDevice`](crate::FileDevice) and
//! [`UringDevice`](crate::UringDevice), and discovering its geometry.
//!
//! Both devices take the same [`DeviceOptions`]. Size and logical block size come from the
//! backing object itself: a regular file's length, or a block device's size and sector size from
//! the kernel. With `O_DIRECT` the kernel also dictates alignment of file offsets and of memory;
//! `statx(STATX_DIOALIGN)` reports both, and a file system that reports none does not support
//! direct I/O on that file, which we say when opening rather than at the first request.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// How to open a file-backed device ([`FileDevice`](crate::FileDevice) or
/// [`UringDevice`](crate::UringDevice)).
#[derive(Clone, Debug)]
pub struct DeviceOptions {
    /// Logical block size to enforce on requests; `None` discovers it: the sector size of a
    /// block device, the direct-I/O alignment of a file opened with `direct`, else 512.
    pub logical_block_size: Option<u32>,
    /// Longest request accepted.
    pub max_request_bytes: u64,
    /// Open read-only: writes complete with `PermissionDenied`.
    pub read_only: bool,
    /// Open with `O_DIRECT`, bypassing the kernel's page cache: every segment's memory, offset
    /// and length must then be aligned as the kernel requires, which the device checks.
    pub direct: bool,
    /// Threads of a [`FileDevice`](crate::FileDevice)'s pool; 0 runs each request on the
    /// submitting thread before `submit` returns.
    pub workers: usize,
    /// Requests a [`UringDevice`](crate::UringDevice) keeps in flight at most; more submitters
    /// wait for a slot.
    pub queue_depth: u32,
    /// A [`UringDevice`](crate::UringDevice)'s ring thread polls for completions instead of
    /// sleeping while requests are in flight: lower latency on a fast device, for a core kept
    /// busy while I/O is outstanding. Without it the thread already enters the kernel once a
    /// request without waiting, as fio's io_uring engine does, and sleeps only when no
    /// completion is there.
    pub poll: bool,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        Self {
            logical_block_size: None,
            max_request_bytes: 1 << 20,
            read_only: false,
            direct: false,
            workers: 4,
            queue_depth: 128,
            poll: false,
        }
    }
}

/// An open backing file or block device and the geometry found for it.
pub(crate) struct Backing {
    pub file: File,
    pub capacity: u64,
    pub logical_block_size: u32,
    pub max_request_bytes: u64,
    /// With `O_DIRECT`: the alignment the kernel needs of segment memory, else 1.
    pub mem_align: usize,
    pub read_only: bool,
}

impl Backing {
    /// Opens `path`. With `create`, a missing or existing regular file is (re)made as a sparse
    /// file of that many bytes.
    pub fn open(path: &Path, opts: &DeviceOptions, create: Option<u64>) -> io::Result<Self> {
        let mut o = OpenOptions::new();
        o.read(true).write(!opts.read_only);
        if opts.direct {
            o.custom_flags(libc::O_DIRECT);
        }
        if create.is_some() {
            if opts.read_only {
                return Err(invalid(format!(
                    "cannot create {} read-only",
                    path.display()
                )));
            }
            if std::fs::metadata(path).is_ok_and(|m| !m.file_type().is_file()) {
                return Err(invalid(format!(
                    "{} exists and is not a regular file; open it instead of creating it",
                    path.display()
                )));
            }
            o.create(true).truncate(true);
        }
        let mut file = o.open(path).map_err(|e| open_error(e, path, opts))?;
        if let Some(len) = create {
            file.set_len(len)?;
        }
        let meta = file.metadata()?;
        let ft = meta.file_type();
        let (len, sector) = if ft.is_block_device() {
            (file.seek(SeekFrom::End(0))?, block_sector_size(&file)?)
        } else if ft.is_file() {
            (meta.len(), 512)
        } else {
            return Err(invalid(format!(
                "{} is neither a regular file nor a block device",
                path.display()
            )));
        };
        let (offset_align, mem_align) = if opts.direct {
            dio_alignment(&file, sector)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?
        } else {
            (sector, 1)
        };
        let lbs = match opts.logical_block_size {
            Some(lbs) => lbs,
            None => offset_align.max(512),
        };
        check_logical_block_size(lbs)?;
        if lbs % offset_align != 0 {
            return Err(invalid(format!(
                "logical block size {lbs} is not a multiple of the {offset_align}-byte alignment \
                 {} needs",
                path.display()
            )));
        }
        let max = opts.max_request_bytes;
        if max < u64::from(lbs) || max % u64::from(lbs) != 0 {
            return Err(invalid(format!(
                "maximum request {max} is not a multiple of the block size {lbs}"
            )));
        }
        Ok(Self {
            file,
            capacity: len - len % u64::from(lbs),
            logical_block_size: lbs,
            max_request_bytes: max,
            mem_align: mem_align as usize,
            read_only: opts.read_only,
        })
    }

    /// The error a write to a read-only device completes with.
    pub fn read_only_error() -> io::Error {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            "write to a device opened read-only",
        )
    }
}

/// A logical block size every device accepts: a power of two from 512 to 65536.
pub(crate) fn check_logical_block_size(lbs: u32) -> io::Result<()> {
    if lbs.is_power_of_two() && (512..=65536).contains(&lbs) {
        return Ok(());
    }
    Err(invalid(format!(
        "logical block size {lbs} is not a power of two in 512..=65536"
    )))
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn open_error(e: io::Error, path: &Path, opts: &DeviceOptions) -> io::Error {
    let what = if opts.direct && e.raw_os_error() == Some(libc::EINVAL) {
        "the file system does not support O_DIRECT on"
    } else {
        "cannot open device file"
    };
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// The logical sector size of a block device.
fn block_sector_size(file: &File) -> io::Result<u32> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one `int` through the pointer, which points at a live local.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::BLKSSZGET, &mut size) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(size)
        .ok()
        .filter(|s| s.is_power_of_two())
        .ok_or_else(|| invalid(format!("block device reports a sector size of {size}")))
}

/// File offset and memory alignment `O_DIRECT` needs on `file`, from `statx`; `fallback` when
/// the kernel does not report them.
fn dio_alignment(file: &File, fallback: u32) -> io::Result<(u32, u32)> {
    // SAFETY: `statx` is plain old data; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: an empty, NUL-terminated path with AT_EMPTY_PATH names `file` itself; the kernel
    // writes at most one `struct statx` into `stx`.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc < 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        // Older kernels and some file systems do not answer; a whole page is always enough.
        return Ok((fallback.max(4096), 4096));
    }
    if stx.stx_dio_offset_align == 0 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the file system does not support O_DIRECT on this file",
        ));
    }
    Ok((stx.stx_dio_offset_align, stx.stx_dio_mem_align.max(1)))
}
