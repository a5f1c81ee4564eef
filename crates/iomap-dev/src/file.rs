//! A device on a regular file (or block device node) using positional I/O.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::request::{check_request, Completion, DeviceRequest, Op};
use crate::BlockDevice;

/// How to open a [`FileDevice`].
#[derive(Clone, Debug)]
pub struct FileDeviceOptions {
    /// Logical block size to enforce on requests.
    pub logical_block_size: u32,
    /// Longest request accepted.
    pub max_request_bytes: u64,
    /// Open read-only: writes complete with `PermissionDenied`.
    pub read_only: bool,
}

impl Default for FileDeviceOptions {
    fn default() -> Self {
        Self {
            logical_block_size: 512,
            max_request_bytes: 1 << 20,
            read_only: false,
        }
    }
}

/// A block device backed by a file. Requests run on the submitting thread with
/// `pread`/`pwrite` (which loop over short transfers and retry `EINTR`) and complete before
/// `submit` returns; a flush is `fdatasync`.
pub struct FileDevice {
    file: File,
    capacity: u64,
    opts: FileDeviceOptions,
}

impl FileDevice {
    /// Opens `path`; its current length is the capacity, rounded down to the block size.
    pub fn open(path: &Path, opts: FileDeviceOptions) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(!opts.read_only)
            .open(path)?;
        let len = file.metadata()?.len();
        Self::from_file(file, len, opts)
    }

    /// Creates (or truncates) `path` as a sparse file of `capacity` bytes.
    pub fn create(path: &Path, capacity: u64, opts: FileDeviceOptions) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.set_len(capacity)?;
        Self::from_file(file, capacity, opts)
    }

    fn from_file(file: File, len: u64, opts: FileDeviceOptions) -> io::Result<Self> {
        let lbs = opts.logical_block_size;
        if !lbs.is_power_of_two() || !(512..=65536).contains(&lbs) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("logical block size {lbs} is not a power of two in 512..=65536"),
            ));
        }
        if opts.max_request_bytes < u64::from(lbs) || opts.max_request_bytes % u64::from(lbs) != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "maximum request {} is not a multiple of the block size {lbs}",
                    opts.max_request_bytes
                ),
            ));
        }
        let capacity = len - len % u64::from(lbs);
        Ok(Self {
            file,
            capacity,
            opts,
        })
    }

    fn execute(&self, req: &DeviceRequest) -> io::Result<()> {
        check_request(self, req)?;
        match req.op {
            Op::Flush => return self.file.sync_data(),
            Op::Write if self.opts.read_only => {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "write to a device opened read-only",
                ))
            }
            _ => {}
        }
        let mut addr = req.addr.0;
        for seg in &req.segments {
            let range = seg.offset..seg.offset + seg.len;
            match req.op {
                Op::Read => self.file.read_exact_at(&mut seg.buf.write()[range], addr)?,
                Op::Write => self.file.write_all_at(&seg.buf.read()[range], addr)?,
                Op::Flush => {}
            }
            addr += seg.len as u64;
        }
        if req.fua && req.op == Op::Write {
            self.file.sync_data()?;
        }
        Ok(())
    }
}

impl BlockDevice for FileDevice {
    fn capacity_bytes(&self) -> u64 {
        self.capacity
    }
    fn logical_block_size(&self) -> u32 {
        self.opts.logical_block_size
    }
    fn max_request_bytes(&self) -> u64 {
        self.opts.max_request_bytes
    }
    fn submit(&self, req: DeviceRequest, done: Completion) {
        let res = self.execute(&req);
        drop(req);
        done(res)
    }
}
