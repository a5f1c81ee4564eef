//! A device on a regular file or block device, using vectored positional I/O on a small pool of
//! threads.
//!
//! `submit` queues the request and returns; a worker moves the bytes with `preadv`/`pwritev`,
//! looping over short transfers and retrying `EINTR` and `EAGAIN`, and calls the completion on
//! its own thread. A flush is `fdatasync`, and a FUA write is a write with `RWF_DSYNC`. With no
//! workers, requests run on the submitting thread and complete before `submit` returns.
//!
//! Requests in flight at the same time may complete in any order, like a real disk's; a flush
//! covers every write that completed before it was submitted.

use std::collections::VecDeque;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use crate::backing::{Backing, DeviceOptions};
use crate::iov::LockedIo;
use crate::request::{check_request, Completion, DeviceRequest, Op};
use crate::BlockDevice;

/// A block device backed by a file or a block device node.
pub struct FileDevice {
    backing: Arc<Backing>,
    pool: Option<Pool>,
}

struct Pool {
    queue: Arc<Queue>,
    workers: Vec<JoinHandle<()>>,
}

#[derive(Default)]
struct Queue {
    jobs: Mutex<Jobs>,
    ready: Condvar,
}

#[derive(Default)]
struct Jobs {
    pending: VecDeque<(DeviceRequest, Completion)>,
    closing: bool,
}

impl FileDevice {
    /// Opens `path`, a regular file or a block device; its size is the capacity, rounded down to
    /// the logical block size.
    pub fn open(path: &Path, opts: DeviceOptions) -> io::Result<Self> {
        Self::start(Backing::open(path, &opts, None)?, &opts)
    }

    /// Creates (or truncates) the regular file `path` as a sparse file of `capacity` bytes.
    pub fn create(path: &Path, capacity: u64, opts: DeviceOptions) -> io::Result<Self> {
        Self::start(Backing::open(path, &opts, Some(capacity))?, &opts)
    }

    fn start(backing: Backing, opts: &DeviceOptions) -> io::Result<Self> {
        let backing = Arc::new(backing);
        let pool = if opts.workers == 0 {
            None
        } else {
            let queue = Arc::new(Queue::default());
            let workers = (0..opts.workers)
                .map(|i| {
                    let queue = Arc::clone(&queue);
                    let backing = Arc::clone(&backing);
                    std::thread::Builder::new()
                        .name(format!("file-dev-{i}"))
                        .spawn(move || worker(&queue, &backing))
                })
                .collect::<io::Result<Vec<_>>>()?;
            Some(Pool { queue, workers })
        };
        Ok(Self { backing, pool })
    }
}

fn worker(queue: &Queue, backing: &Backing) {
    loop {
        let (req, done) = {
            let mut jobs = queue.jobs.lock();
            loop {
                if let Some(job) = jobs.pending.pop_front() {
                    break job;
                }
                if jobs.closing {
                    return;
                }
                queue.ready.wait(&mut jobs);
            }
        };
        let res = execute(backing, &req);
        drop(req);
        done(res);
    }
}

fn execute(backing: &Backing, req: &DeviceRequest) -> io::Result<()> {
    match req.op {
        Op::Flush => return backing.file.sync_data(),
        Op::Write if backing.read_only => return Err(Backing::read_only_error()),
        _ => {}
    }
    let mut io = LockedIo::lock(req)?;
    if backing.mem_align > 1 {
        io.check_direct(backing.mem_align, backing.logical_block_size)?;
    }
    let flags = if req.fua { libc::RWF_DSYNC } else { 0 };
    transfer(backing, &mut io, req.op, flags)
}

/// Moves every byte `io` describes, looping over short transfers.
fn transfer(backing: &Backing, io: &mut LockedIo, op: Op, flags: libc::c_int) -> io::Result<()> {
    while io.remaining > 0 {
        let (iov, n) = io.pending();
        let offset = libc::off_t::try_from(io.pos)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset overflows"))?;
        let fd = backing.file.as_raw_fd();
        let done = if op == Op::Read {
            // SAFETY: `iov` holds `n` iovecs into buffers whose write locks `io` holds, each
            // valid for its `iov_len` bytes, for the whole call.
            unsafe { libc::preadv2(fd, iov, n as libc::c_int, offset, flags) }
        } else {
            // SAFETY: as above, with read locks; pwritev2 only reads the memory.
            unsafe { libc::pwritev2(fd, iov, n as libc::c_int, offset, flags) }
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
                format!("{op:?} at {} reached the end of the backing file", io.pos),
            ));
        }
        io.advance(done as usize);
    }
    Ok(())
}

impl Drop for FileDevice {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.queue.jobs.lock().closing = true;
            pool.queue.ready.notify_all();
            for w in pool.workers {
                // A worker that panicked has already reported it; nothing more to do here.
                let _ = w.join();
            }
        }
    }
}

impl BlockDevice for FileDevice {
    fn capacity_bytes(&self) -> u64 {
        self.backing.capacity
    }
    fn logical_block_size(&self) -> u32 {
        self.backing.logical_block_size
    }
    fn max_request_bytes(&self) -> u64 {
        self.backing.max_request_bytes
    }
    fn submit(&self, req: DeviceRequest, done: Completion) {
        if let Err(e) = check_request(self, &req) {
            drop(req);
            return done(Err(e));
        }
        match &self.pool {
            Some(pool) => {
                pool.queue.jobs.lock().pending.push_back((req, done));
                pool.queue.ready.notify_one();
            }
            None => {
                let res = execute(&self.backing, &req);
                drop(req);
                done(res)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::{BufRange, IoBuf};
    use crate::request::DevAddr;
    use crate::sync::BlockDeviceExt;

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("iomap-dev-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn vectored_requests_scatter_and_gather_in_order() {
        let path = tmp("vectored");
        let dev = FileDevice::create(&path, 1 << 20, DeviceOptions::default()).unwrap();
        let bufs: Vec<_> = (0..3u8)
            .map(|i| {
                let mut b = IoBuf::zeroed(4096);
                b.fill(i + 1);
                b.shared()
            })
            .collect();
        let segs = bufs
            .iter()
            .map(|b| BufRange::new(b.clone(), 512, 1024))
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
            .map(|b| BufRange::new(b.clone(), 0, 1536))
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
        let opts = DeviceOptions {
            direct: true,
            ..DeviceOptions::default()
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
        let ok = DeviceRequest::write(DevAddr(0), vec![BufRange::new(buf.clone(), 512, 4096)]);
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
