//! A device on a regular file or block device driven through one io_uring.
//!
//! Submitters on any thread lock their request's buffers, take a slot (at most `queue_depth`
//! requests are in flight; the ring has room for all of them, so pushing never fails), push one
//! entry and enter the kernel. Entering is batched: whoever holds the submit lock submits every
//! entry pushed so far, and a submitter that finds it taken leaves its entry to that holder.
//! One completion thread waits for completions, resubmits the rest of a short or interrupted
//! transfer, and calls each request's completion. Completions that submit more requests (a
//! read-ahead chain, a benchmark loop) are queued and pushed by the completion thread itself
//! on its next turn, without a system call of their own and without ever waiting for a slot
//! that only the completion thread can free.
//!
//! A flush is `IORING_OP_FSYNC` with `DATASYNC`; a FUA write carries `RWF_DSYNC`.
//!
//! Lock order: buffer locks (taken in request order), then the slot count, then the submission
//! queue, then the submit lock. Completions run with none of them held.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use io_uring::{opcode, types, IoUring};
use parking_lot::{Condvar, Mutex};

use crate::backing::{Backing, DeviceOptions};
use crate::iov::LockedIo;
use crate::request::{check_request, Completion, DeviceRequest, Op};
use crate::BlockDevice;

/// The `user_data` of the no-op that tells the completion thread to stop.
const SHUTDOWN: u64 = u64::MAX;

thread_local! {
    /// On a device's completion thread, the address of that device's shared state.
    static COMPLETION_THREAD_OF: Cell<usize> = const { Cell::new(0) };
}

/// A block device driven through io_uring.
pub struct UringDevice {
    shared: Arc<Shared>,
    reaper: Option<JoinHandle<()>>,
}

struct Shared {
    ring: IoUring,
    backing: Backing,
    /// Producers of the submission queue take this to push.
    sq: Mutex<()>,
    /// Whoever holds this enters the kernel to submit.
    submit: Mutex<()>,
    /// Requests in flight, at most `depth`.
    inflight: Mutex<u32>,
    slot_freed: Condvar,
    depth: u32,
    /// Requests submitted from completions, pushed by the completion thread.
    deferred: Mutex<VecDeque<(DeviceRequest, Completion)>>,
}

/// One request in flight: owned by the kernel (as `user_data`) from push to completion.
struct Inflight {
    op: Op,
    /// Keeps the request's buffers alive.
    req: DeviceRequest,
    io: Option<LockedIo>,
    done: Completion,
}

impl UringDevice {
    /// Opens `path`, a regular file or a block device, and starts the ring.
    ///
    /// Fails with a message naming the cause when io_uring is unavailable (`ENOSYS` on kernels
    /// without it, `EPERM` where a container or `kernel.io_uring_disabled` forbids it); the file
    /// device works everywhere.
    pub fn open(path: &Path, opts: DeviceOptions) -> io::Result<Self> {
        Self::start(Backing::open(path, &opts, None)?, &opts)
    }

    /// Creates (or truncates) the regular file `path` as a sparse file of `capacity` bytes.
    pub fn create(path: &Path, capacity: u64, opts: DeviceOptions) -> io::Result<Self> {
        Self::start(Backing::open(path, &opts, Some(capacity))?, &opts)
    }

    fn start(backing: Backing, opts: &DeviceOptions) -> io::Result<Self> {
        let depth = opts.queue_depth.clamp(1, 4096);
        // Room for every request in flight plus the shutdown no-op; completions never overflow.
        let ring = IoUring::builder()
            .setup_cqsize(2 * (depth + 1))
            .build(depth + 1)
            .map_err(unavailable)?;
        let shared = Arc::new(Shared {
            ring,
            backing,
            sq: Mutex::new(()),
            submit: Mutex::new(()),
            inflight: Mutex::new(0),
            slot_freed: Condvar::new(),
            depth,
            deferred: Mutex::new(VecDeque::new()),
        });
        let reaper = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("uring-dev".into())
                .spawn(move || shared.reap())?
        };
        Ok(Self {
            shared,
            reaper: Some(reaper),
        })
    }
}

/// Explains why io_uring could not be set up.
fn unavailable(e: io::Error) -> io::Error {
    let why = match e.raw_os_error() {
        Some(libc::ENOSYS) => "this kernel has no io_uring",
        Some(libc::EPERM) => {
            "io_uring is forbidden here (kernel.io_uring_disabled, or a container's seccomp \
             policy)"
        }
        Some(libc::ENOMEM) => "not enough locked memory for the ring (RLIMIT_MEMLOCK)",
        _ => "io_uring setup failed",
    };
    io::Error::new(
        e.kind(),
        format!("{why}: {e}; the file device works without it"),
    )
}

impl Shared {
    /// Waits for a free slot. Never called on the completion thread.
    fn take_slot(&self) {
        let mut n = self.inflight.lock();
        while *n >= self.depth {
            self.slot_freed.wait(&mut n);
        }
        *n += 1;
    }

    /// Takes a slot if one is free without waiting.
    fn try_take_slot(&self) -> bool {
        let mut n = self.inflight.lock();
        if *n >= self.depth {
            return false;
        }
        *n += 1;
        true
    }

    fn release_slot(&self) {
        let mut n = self.inflight.lock();
        *n -= 1;
        drop(n);
        self.slot_freed.notify_all();
    }

    /// Turns a checked request holding a slot into a ring entry and pushes it; a request that
    /// fails before reaching the ring gives its slot back and completes here.
    fn start_request(&self, req: DeviceRequest, done: Completion) {
        let op = req.op;
        let io = match op {
            Op::Flush => None,
            _ => {
                let io = LockedIo::lock(&req);
                if self.backing.mem_align > 1 {
                    if let Err(e) =
                        io.check_direct(self.backing.mem_align, self.backing.logical_block_size)
                    {
                        drop(io);
                        drop(req);
                        self.release_slot();
                        return done(Err(e));
                    }
                }
                Some(io)
            }
        };
        self.push(Box::new(Inflight { op, req, io, done }));
    }

    /// Pushes the entry for what is left of `inflight`. The caller holds its slot, and the
    /// ring has an entry for every slot.
    fn push(&self, inflight: Box<Inflight>) {
        let fd = types::Fd(self.backing.file.as_raw_fd());
        let entry = match (&inflight.op, &inflight.io) {
            (Op::Read, Some(io)) => {
                let (iov, n) = io.pending();
                opcode::Readv::new(fd, iov, n as u32).offset(io.pos).build()
            }
            (Op::Write, Some(io)) => {
                let (iov, n) = io.pending();
                let flags = if inflight.req.fua { libc::RWF_DSYNC } else { 0 };
                opcode::Writev::new(fd, iov, n as u32)
                    .offset(io.pos)
                    .rw_flags(flags)
                    .build()
            }
            _ => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        };
        let entry = entry.user_data(Box::into_raw(inflight) as u64);
        let _sq = self.sq.lock();
        // SAFETY: `sq` serialises every producer, so this is the only `SubmissionQueue` alive.
        let mut sq = unsafe { self.ring.submission_shared() };
        // SAFETY: the iovecs and the buffers they point into belong to the boxed `Inflight`
        // named by `user_data`, which the completion thread reclaims only after the kernel has
        // posted this entry's completion; the buffers' locks are held until then.
        let pushed = unsafe { sq.push(&entry) };
        debug_assert!(pushed.is_ok(), "a slot without a ring entry");
        sq.sync();
    }

    /// Enters the kernel until nothing pushed is left unsubmitted, unless another thread is
    /// already doing so, in which case it submits ours too.
    fn flush_submissions(&self) {
        while let Some(_g) = self.submit.try_lock() {
            loop {
                match self.ring.submitter().submit() {
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    // EAGAIN/EBUSY: the kernel is short of resources; the completion
                    // thread's next enter submits what is left.
                    _ => break,
                }
            }
            drop(_g);
            let _sq = self.sq.lock();
            // SAFETY: as in `push`; only looks at the queue's length.
            if unsafe { self.ring.submission_shared() }.is_empty() {
                return;
            }
        }
    }

    /// The completion thread.
    fn reap(&self) {
        COMPLETION_THREAD_OF.with(|c| c.set(std::ptr::from_ref(self) as usize));
        let mut batch: Vec<(u64, i32)> = Vec::with_capacity(self.depth as usize + 1);
        loop {
            self.push_deferred();
            match self.ring.submitter().submit_and_wait(1) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(e) => {
                    tracing::error!("io_uring wait failed: {e}");
                    std::thread::yield_now();
                }
            }
            {
                // SAFETY: only this thread ever borrows the completion queue.
                let cq = unsafe { self.ring.completion_shared() };
                batch.extend(cq.map(|c| (c.user_data(), c.result())));
            }
            let mut stop = false;
            for (user_data, res) in batch.drain(..) {
                if user_data == SHUTDOWN {
                    stop = true;
                    continue;
                }
                // SAFETY: every other `user_data` is a `Box<Inflight>` leaked by `push`, whose
                // entry has now completed, so the kernel no longer uses it or its iovecs.
                let inflight = unsafe { Box::from_raw(user_data as *mut Inflight) };
                self.complete(inflight, res);
            }
            if stop {
                return;
            }
        }
    }

    /// Handles one completion: resubmits the rest of a short transfer, or finishes.
    fn complete(&self, mut inflight: Box<Inflight>, res: i32) {
        let outcome = if res == -libc::EINTR || res == -libc::EAGAIN {
            None
        } else if res < 0 {
            Some(Err(io::Error::from_raw_os_error(-res)))
        } else if let Some(io) = inflight.io.as_mut() {
            if res == 0 {
                Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{:?} at {} reached the end of the backing file",
                        inflight.op, io.pos
                    ),
                )))
            } else {
                io.advance(res as usize);
                (io.remaining == 0).then_some(Ok(()))
            }
        } else {
            Some(Ok(()))
        };
        match outcome {
            None => self.push(inflight),
            Some(res) => {
                let Inflight { req, io, done, .. } = *inflight;
                drop(io);
                drop(req);
                self.release_slot();
                done(res);
            }
        }
    }

    /// Pushes requests that completions submitted, as far as slots allow.
    fn push_deferred(&self) {
        // Never holds the queue's lock while taking a slot: `Drop` takes them the other way.
        while !self.deferred.lock().is_empty() && self.try_take_slot() {
            let job = self.deferred.lock().pop_front();
            match job {
                Some((req, done)) => self.start_request(req, done),
                None => {
                    self.release_slot();
                    return;
                }
            }
        }
    }
}

impl Drop for UringDevice {
    fn drop(&mut self) {
        let shared = &self.shared;
        // Every request in flight holds buffers the kernel may still write: wait them out.
        {
            let mut n = shared.inflight.lock();
            while *n > 0 || !shared.deferred.lock().is_empty() {
                shared.slot_freed.wait(&mut n);
            }
        }
        {
            let _sq = shared.sq.lock();
            // SAFETY: as in `push`.
            let mut sq = unsafe { shared.ring.submission_shared() };
            let nop = opcode::Nop::new().build().user_data(SHUTDOWN);
            // SAFETY: a no-op references no memory.
            let _ = unsafe { sq.push(&nop) };
            sq.sync();
        }
        shared.flush_submissions();
        if let Some(reaper) = self.reaper.take() {
            // A completion that panicked has already reported it.
            let _ = reaper.join();
        }
    }
}

impl BlockDevice for UringDevice {
    fn capacity_bytes(&self) -> u64 {
        self.shared.backing.capacity
    }
    fn logical_block_size(&self) -> u32 {
        self.shared.backing.logical_block_size
    }
    fn max_request_bytes(&self) -> u64 {
        self.shared.backing.max_request_bytes
    }
    fn submit(&self, req: DeviceRequest, done: Completion) {
        let shared = &self.shared;
        if let Err(e) = check_request(self, &req) {
            drop(req);
            return done(Err(e));
        }
        if req.op == Op::Write && shared.backing.read_only {
            drop(req);
            return done(Err(Backing::read_only_error()));
        }
        if COMPLETION_THREAD_OF.with(Cell::get) == Arc::as_ptr(shared) as usize {
            // Waiting for a slot here would wait on ourselves; the loop pushes it next turn.
            shared.deferred.lock().push_back((req, done));
            return;
        }
        shared.take_slot();
        shared.start_request(req, done);
        shared.flush_submissions();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unavailable_ring_says_why_and_what_works_instead() {
        for (errno, why) in [
            (libc::ENOSYS, "no io_uring"),
            (libc::EPERM, "io_uring_disabled"),
            (libc::ENOMEM, "RLIMIT_MEMLOCK"),
        ] {
            let err = unavailable(io::Error::from_raw_os_error(errno));
            let msg = err.to_string();
            assert!(msg.contains(why), "{msg}");
            assert!(msg.contains("file device works"), "{msg}");
            assert_eq!(err.kind(), io::Error::from_raw_os_error(errno).kind());
        }
    }
}
