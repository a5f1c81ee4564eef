//! A device on a regular file (or block device node) using vectored positional I/O.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
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
    /// Open with `O_DIRECT`, bypassing the kernel's page cache: every segment's memory, offset
    /// and length must then be aligned to the logical block size.
    pub direct: bool,
}

impl Default for FileDeviceOptions {
    fn default() -> Self {
        Self {
            logical_block_size: 512,
            max_request_bytes: 1 << 20,
            read_only: false,
            direct: false,
        }
    }
}

/// A block device backed by a file. Requests run on the submitting thread with
/// `preadv`/`pwritev` (looping over short transfers and retrying `EINTR`) and complete before
/// `submit` returns; a flush is `fdatasync`.
pub struct FileDevice {
    file: File,
    capacity: u64,
    opts: FileDeviceOptions,
}

/// The most iovecs one `preadv`/`pwritev` takes (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

impl FileDevice {
    /// Opens `path`; its current length is the capacity, rounded down to the block size.
    pub fn open(path: &Path, opts: FileDeviceOptions) -> io::Result<Self> {
        let file = Self::options(&opts)
            .open(path)
            .map_err(|e| with_path(e, path, &opts))?;
        let len = file.metadata()?.len();
        Self::from_file(file, len, opts)
    }

    /// Creates (or truncates) `path` as a sparse file of `capacity` bytes.
    pub fn create(path: &Path, capacity: u64, opts: FileDeviceOptions) -> io::Result<Self> {
        let file = Self::options(&opts)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| with_path(e, path, &opts))?;
        file.set_len(capacity)?;
        Self::from_file(file, capacity, opts)
    }

    fn options(opts: &FileDeviceOptions) -> OpenOptions {
        let mut o = OpenOptions::new();
        o.read(true).write(!opts.read_only);
        if opts.direct {
            o.custom_flags(libc::O_DIRECT);
        }
        o
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
        match req.op {
            Op::Read => {
                let mut guards: Vec<_> = req.segments.iter().map(|s| s.buf.write()).collect();
                let mut iov: Vec<libc::iovec> = guards
                    .iter_mut()
                    .zip(&req.segments)
                    .map(|(g, s)| libc::iovec {
                        iov_base: g[s.offset..s.offset + s.len].as_mut_ptr().cast(),
                        iov_len: s.len,
                    })
                    .collect();
                self.check_direct(&iov)?;
                self.transfer(&mut iov, req.addr.0, Op::Read)?;
            }
            Op::Write => {
                let guards: Vec<_> = req.segments.iter().map(|s| s.buf.read()).collect();
                let mut iov: Vec<libc::iovec> = guards
                    .iter()
                    .zip(&req.segments)
                    .map(|(g, s)| libc::iovec {
                        // Never written through: pwritev only reads from it.
                        iov_base: g[s.offset..s.offset + s.len].as_ptr().cast_mut().cast(),
                        iov_len: s.len,
                    })
                    .collect();
                self.check_direct(&iov)?;
                self.transfer(&mut iov, req.addr.0, Op::Write)?;
            }
            Op::Flush => {}
        }
        if req.fua && req.op == Op::Write {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// With O_DIRECT, every segment's memory must be aligned to the logical block size.
    fn check_direct(&self, iov: &[libc::iovec]) -> io::Result<()> {
        if !self.opts.direct {
            return Ok(());
        }
        let lbs = self.opts.logical_block_size as usize;
        match iov
            .iter()
            .find(|v| v.iov_base as usize % lbs != 0 || v.iov_len % lbs != 0)
        {
            Some(v) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "O_DIRECT needs memory aligned to {lbs} bytes: segment at {:p}, {} bytes",
                    v.iov_base, v.iov_len
                ),
            )),
            None => Ok(()),
        }
    }

    /// Moves every byte described by `iov` at file offset `pos`, looping over short transfers.
    /// The iovecs point into buffers whose locks the caller holds for the whole call.
    fn transfer(&self, mut iov: &mut [libc::iovec], mut pos: u64, op: Op) -> io::Result<()> {
        while !iov.is_empty() {
            let n = iov.len().min(IOV_MAX);
            let offset = libc::off_t::try_from(pos)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset overflows"))?;
            let done = match op {
                // SAFETY: each iovec points into a buffer this thread holds the write lock of
                // (taken in `execute` and held across the call), for exactly `iov_len` bytes;
                // `n` does not exceed the slice.
                Op::Read => unsafe {
                    libc::preadv(
                        self.file.as_raw_fd(),
                        iov.as_ptr(),
                        n as libc::c_int,
                        offset,
                    )
                },
                // SAFETY: as above, with read locks; pwritev only reads the memory.
                _ => unsafe {
                    libc::pwritev(
                        self.file.as_raw_fd(),
                        iov.as_ptr(),
                        n as libc::c_int,
                        offset,
                    )
                },
            };
            if done < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => continue,
                    _ => return Err(err),
                }
            }
            if done == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{op:?} at {pos} reached the end of the backing file"),
                ));
            }
            let mut done = done as usize;
            pos += done as u64;
            while let Some(first) = iov.first_mut() {
                if done < first.iov_len {
                    // SAFETY: advancing within the same buffer by fewer bytes than its length.
                    first.iov_base = unsafe { first.iov_base.cast::<u8>().add(done).cast() };
                    first.iov_len -= done;
                    break;
                }
                done -= first.iov_len;
                iov = &mut iov[1..];
            }
        }
        Ok(())
    }
}

fn with_path(e: io::Error, path: &Path, opts: &FileDeviceOptions) -> io::Error {
    let what = if opts.direct && e.raw_os_error() == Some(libc::EINVAL) {
        "the file system does not support O_DIRECT"
    } else {
        "cannot open device file"
    };
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::{BufRange, IoBuf};
    use crate::request::DevAddr;
    use crate::sync::BlockDeviceExt;
    use std::sync::Arc;

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("iomap-dev-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn vectored_requests_scatter_and_gather_in_order() {
        let path = tmp("vectored");
        let dev = FileDevice::create(&path, 1 << 20, FileDeviceOptions::default()).unwrap();
        let bufs: Vec<_> = (0..3u8)
            .map(|i| {
                let mut b = IoBuf::zeroed(4096);
                b.fill(i + 1);
                b.shared()
            })
            .collect();
        let segs = bufs
            .iter()
            .map(|b| BufRange::new(Arc::clone(b), 512, 1024))
            .collect();
        dev.submit_wait(DeviceRequest::write(DevAddr(8192), segs))
            .unwrap();
        let mut back = vec![0u8; 3072];
        dev.read_at(DevAddr(8192), &mut back).unwrap();
        assert!(back[..1024].iter().all(|&b| b == 1));
        assert!(back[1024..2048].iter().all(|&b| b == 2));
        assert!(back[2048..].iter().all(|&b| b == 3));
        let out: Vec<_> = (0..2).map(|_| IoBuf::zeroed(4096).shared()).collect();
        let segs = out
            .iter()
            .map(|b| BufRange::new(Arc::clone(b), 0, 1536))
            .collect();
        dev.submit_wait(DeviceRequest::read(DevAddr(8192), segs))
            .unwrap();
        assert!(out[0].read()[..1024].iter().all(|&b| b == 1));
        assert!(out[0].read()[1024..1536].iter().all(|&b| b == 2));
        assert!(out[1].read()[..512].iter().all(|&b| b == 2));
        assert!(out[1].read()[512..1536].iter().all(|&b| b == 3));
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn direct_io_rejects_misaligned_memory_with_a_reason() {
        let path = tmp("direct");
        let opts = FileDeviceOptions {
            direct: true,
            ..FileDeviceOptions::default()
        };
        let dev = match FileDevice::create(&path, 1 << 20, opts) {
            Ok(dev) => dev,
            // tmpfs and some overlays refuse O_DIRECT; the error says so.
            Err(e) => {
                assert!(e.to_string().contains("O_DIRECT"), "{e}");
                return;
            }
        };
        let buf = IoBuf::zeroed(8192).shared();
        let ok = DeviceRequest::write(DevAddr(0), vec![BufRange::new(Arc::clone(&buf), 512, 4096)]);
        dev.submit_wait(ok).unwrap();
        // A request aligned on the device but not in memory is refused, not passed to the
        // kernel to fail with a bare EINVAL.
        let bad = IoBuf::zeroed(8192).shared();
        let misaligned = BufRange {
            buf: bad,
            offset: 512,
            len: 512,
        };
        let mut req = DeviceRequest::write(DevAddr(4096), vec![misaligned]);
        req.segments[0].offset = 100;
        let err = dev.submit_wait(req).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        std::fs::remove_file(path).ok();
    }
}
