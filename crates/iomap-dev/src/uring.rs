//! A device on a regular file or block device driven through one io_uring.
//!
//! One ring thread owns the ring and is its only issuer, which lets the kernel defer completion
//! work to the moments that thread asks for events (`SINGLE_ISSUER | DEFER_TASKRUN`, as fio sets
//! up its rings) instead of interrupting it for each one. Submitters on any thread queue their
//! request and, only if the ring thread is asleep in the kernel, wake it through an eventfd whose
//! read it keeps armed in the ring. Each turn the ring thread takes every queued request (up to
//! `queue_depth` in flight) and pushes its entry, then handles one completion: it resubmits the
//! rest of a short or interrupted transfer or calls the request's completion, and a completion
//! that submits more requests (a read-ahead chain, a journal commit) just queues them, with no
//! wake-up. What a turn pushed goes to the kernel at the start of the next, in an entry that also
//! runs the deferred completion work without waiting, so it collects what completed meanwhile
//! (fio's io_uring engine drives its ring the same way). The thread sleeps in the kernel only
//! when no completion is left to handle.
//!
//! With [`DeviceOptions::poll`] the ring thread does not sleep while requests are in flight: it
//! enters the kernel without waiting, which runs the deferred completion work, and looks again.
//!
//! A flush is `IORING_OP_FSYNC` with `DATASYNC`; a FUA write carries `RWF_DSYNC`.
//!
//! Submitters lock their request's buffers before queueing it (a buffer named by a request in
//! flight is released when that request completes). The ring thread never waits for a buffer:
//! requests submitted from its own completions are locked there with a try, and one whose
//! buffers another request in flight holds (a read into part of a folio while another part is
//! written back) waits for that request to complete. The queue's lock is never held while
//! locking buffers or calling completions.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use io_uring::{opcode, squeue, types, IoUring};
use parking_lot::Mutex;

use crate::backing::{Backing, DeviceOptions};
use crate::iov::LockedIo;
use crate::request::{check_request, Completion, DeviceRequest, Op};
use crate::BlockDevice;

/// The `user_data` of the armed eventfd read that wakes the ring thread.
const WAKE: u64 = u64::MAX;

/// `IORING_ENTER_GETEVENTS`: run deferred completion work and wait for `min_complete` events.
const ENTER_GETEVENTS: u32 = 1;

/// A block device driven through io_uring.
pub struct UringDevice {
    shared: Arc<Shared>,
    ring_thread: Option<JoinHandle<()>>,
}

/// What submitters share with the ring thread.
struct Shared {
    backing: Backing,
    /// Requests waiting for the ring thread.
    queue: Mutex<VecDeque<Job>>,
    /// The ring thread is (about to be) asleep in the kernel: a submitter must wake it.
    sleeping: AtomicBool,
    /// Writing to it completes the ring thread's armed read and so wakes it.
    wake_fd: OwnedFd,
    closing: AtomicBool,
}

/// A request waiting for the ring thread.
struct Job {
    req: DeviceRequest,
    done: Completion,
    /// The buffers, locked by the submitter; `None` for a flush, or for a request submitted on
    /// the ring thread itself, which locks them only when none is held elsewhere.
    io: Option<LockedIo>,
}

thread_local! {
    /// On a ring thread, the address of its device's shared state.
    static RING_THREAD_OF: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
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
        let poll = opts.poll;
        // SAFETY: eventfd takes no pointers; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let wake_fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let shared = Arc::new(Shared {
            backing,
            queue: Mutex::new(VecDeque::new()),
            sleeping: AtomicBool::new(false),
            wake_fd,
            closing: AtomicBool::new(false),
        });
        // The ring is made on its thread: with SINGLE_ISSUER the creator is the only task
        // allowed to submit.
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let ring_thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("uring-dev".into())
                .spawn(move || match new_ring(depth) {
                    Ok(ring) => {
                        // The receiver waits for exactly this message.
                        let _ = ready_tx.send(Ok(()));
                        RingThread::new(&shared, ring, depth, poll).run();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                })?
        };
        let ready = ready_rx.recv().unwrap_or_else(|_| {
            Err(io::Error::other(
                "the io_uring thread stopped while starting",
            ))
        });
        if let Err(e) = ready {
            // The thread has returned or is about to.
            let _ = ring_thread.join();
            return Err(unavailable(e));
        }
        Ok(Self {
            shared,
            ring_thread: Some(ring_thread),
        })
    }
}

/// A ring with room for every request in flight plus the wake-up read. Deferred completion
/// work needs Linux 6.1; older kernels get a plain ring.
fn new_ring(depth: u32) -> io::Result<IoUring> {
    let entries = depth + 1;
    let deferred = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .setup_cqsize(2 * entries)
        .build(entries);
    match deferred {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            IoUring::builder().setup_cqsize(2 * entries).build(entries)
        }
        other => other,
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
    /// Wakes the ring thread from its wait in the kernel.
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local to an eventfd we own. It can only fail if
        // the counter would overflow, and then the ring thread has a wake-up pending anyway.
        unsafe { libc::write(self.wake_fd.as_raw_fd(), std::ptr::from_ref(&one).cast(), 8) };
    }
}

/// The state only the ring thread touches.
struct RingThread<'a> {
    shared: &'a Shared,
    ring: IoUring,
    depth: u32,
    /// Poll for completions rather than sleep while requests are in flight.
    poll: bool,
    inflight: u32,
    /// Where the armed eventfd read puts the counter. Boxed: its address is in the ring.
    wake_buf: Box<u64>,
    wake_armed: bool,
    fd: RawFd,
}

impl<'a> RingThread<'a> {
    fn new(shared: &'a Shared, ring: IoUring, depth: u32, poll: bool) -> Self {
        Self {
            fd: shared.backing.file.as_raw_fd(),
            shared,
            ring,
            depth,
            poll,
            inflight: 0,
            wake_buf: Box::new(0),
            wake_armed: false,
        }
    }

    fn run(mut self) {
        RING_THREAD_OF.with(|c| c.set(std::ptr::from_ref(self.shared) as usize));
        // Requests taken from the queue and not yet started, in submission order.
        let mut waiting: VecDeque<Job> = VecDeque::new();
        loop {
            let closing = self.shared.closing.load(Ordering::Acquire);
            if !self.wake_armed && !closing {
                self.arm_wake();
            }
            waiting.extend(self.shared.queue.lock().drain(..));
            // Start what fits. A request whose buffers another request of ours holds (a read
            // into one part of a folio while another part is being written back) waits for
            // that one to complete: blocking here would wait on ourselves.
            let mut tries = waiting.len();
            while self.inflight < self.depth && tries > 0 {
                tries -= 1;
                let Some(mut job) = waiting.pop_front() else {
                    break;
                };
                if job.io.is_none() && job.req.op != Op::Flush {
                    match LockedIo::try_lock(&job.req) {
                        Some(Ok(io)) => job.io = Some(io),
                        Some(Err(e)) => {
                            let Job { req, done, .. } = job;
                            drop(req);
                            done(Err(e));
                            continue;
                        }
                        None => {
                            waiting.push_back(job);
                            continue;
                        }
                    }
                }
                self.start_request(job);
            }
            if closing && self.inflight == 0 && !self.wake_armed && waiting.is_empty() {
                if self.shared.queue.lock().is_empty() {
                    return;
                }
                continue;
            }
            // Completions posted by the last entry and not yet handled: handle the next one
            // before sleeping, and submit what it queues at once (see `handle_one`).
            let cq_ready = !self.ring.completion().is_empty();
            // A polling thread re-reads the queue every turn: no one need wake it.
            let polling = self.poll && self.inflight > 0;
            let may_sleep = !polling && !cq_ready;
            // Sleep only when nothing more can be started; a submitter that queues after this
            // store sees it and wakes us.
            if may_sleep {
                self.shared.sleeping.store(true, Ordering::SeqCst);
            }
            let queued =
                may_sleep && self.inflight < self.depth && !self.shared.queue.lock().is_empty();
            // Buffers held by someone outside the ring (a reader copying) are released without
            // any completion of ours to wake us: poll for them.
            let held_outside = !waiting.is_empty() && self.inflight == 0;
            if held_outside {
                std::thread::yield_now();
            }
            let want = u32::from(may_sleep && !held_outside && !queued);
            // With completions still to handle and nothing to submit there is nothing to ask
            // the kernel.
            if !(cq_ready && self.ring.submission().is_empty()) {
                self.enter(want);
            }
            if may_sleep {
                self.shared.sleeping.store(false, Ordering::SeqCst);
            }
            self.handle_one();
        }
    }

    /// Handles the oldest completion, if any.
    ///
    /// One at a time, as fio's io_uring engine does: whatever the completion submits (the next
    /// request of a chain) goes to the kernel on the next turn, in an entry that also runs the
    /// deferred completion work and so collects what completed meanwhile; the thread sleeps only
    /// when that finds nothing. Handling every completion of a wake-up before submitting their
    /// successors in one entry held each successor back for the rest of the batch and gave the
    /// disk bursts instead of a stream: 0.8x of fio's 4 KiB random reads at queue depth 32 on a
    /// virtio disk, where this reaches fio (docs/BENCHMARKS.md, "Devices against fio").
    fn handle_one(&mut self) {
        let Some(cqe) = self.ring.completion().next() else {
            return;
        };
        let (user_data, res) = (cqe.user_data(), cqe.result());
        if user_data == WAKE {
            self.wake_armed = false;
            if res < 0 && res != -libc::ECANCELED {
                tracing::warn!("io_uring wake-up read failed: errno {}", -res);
            }
            return;
        }
        // SAFETY: every other `user_data` is a `Box<Inflight>` leaked by `push`, whose entry
        // has now completed, so the kernel no longer uses it or its iovecs.
        let inflight = unsafe { Box::from_raw(user_data as *mut Inflight) };
        self.complete(inflight, res);
    }

    /// Submits everything pushed and, with `want` 1, waits for a completion.
    fn enter(&mut self, want: u32) {
        let to_submit = self.ring.submission().len() as u32;
        // SAFETY: no argument structure is passed; flags and counts are plain integers.
        let res = unsafe {
            self.ring
                .submitter()
                .enter::<libc::sigset_t>(to_submit, want, ENTER_GETEVENTS, None)
        };
        match res {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                ) => {}
            Err(e) => {
                tracing::error!("io_uring enter failed: {e}");
                std::thread::yield_now();
            }
        }
    }

    fn arm_wake(&mut self) {
        let read = opcode::Read::new(
            types::Fd(self.shared.wake_fd.as_raw_fd()),
            std::ptr::from_mut(&mut *self.wake_buf).cast(),
            8,
        )
        .build()
        .user_data(WAKE);
        // SAFETY: `wake_buf` is boxed and lives as long as `self`, which outlives the read: the
        // thread returns only after the read has completed (`wake_armed` false).
        self.push_entry(&read);
        self.wake_armed = true;
    }

    fn push_entry(&mut self, entry: &squeue::Entry) {
        let mut sq = self.ring.submission();
        // SAFETY: the caller keeps everything the entry points to alive until it completes.
        let pushed = unsafe { sq.push(entry) };
        debug_assert!(
            pushed.is_ok(),
            "the ring has an entry for every request in flight"
        );
        sq.sync();
    }

    /// Pushes a request's entry; one whose buffers fail the O_DIRECT checks completes here.
    fn start_request(&mut self, job: Job) {
        let Job { req, done, io } = job;
        let b = &self.shared.backing;
        if let (Some(locked), true) = (&io, b.mem_align > 1) {
            if let Err(e) = locked.check_direct(b.mem_align, b.logical_block_size) {
                drop(io);
                drop(req);
                return done(Err(e));
            }
        }
        self.inflight += 1;
        self.push(Box::new(Inflight {
            op: req.op,
            req,
            io,
            done,
        }));
    }

    /// Pushes the entry for what is left of `inflight`.
    fn push(&mut self, inflight: Box<Inflight>) {
        let fd = types::Fd(self.fd);
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
        // The iovecs and the buffers they point into belong to the boxed `Inflight` named by
        // `user_data`, reclaimed only when the kernel posts this entry's completion; the
        // buffers' locks are held until then.
        let entry = entry.user_data(Box::into_raw(inflight) as u64);
        self.push_entry(&entry);
    }

    /// Handles one completion: resubmits the rest of a short transfer, or finishes.
    fn complete(&mut self, mut inflight: Box<Inflight>, res: i32) {
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
                self.inflight -= 1;
                done(res);
            }
        }
    }
}

impl Drop for UringDevice {
    fn drop(&mut self) {
        // The ring thread finishes every queued and in-flight request (their buffers may still
        // be written by the kernel) and its own wake-up read, then returns.
        self.shared.closing.store(true, Ordering::Release);
        self.shared.wake();
        if let Some(t) = self.ring_thread.take() {
            // A completion that panicked has already reported it.
            let _ = t.join();
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
        // Lock the buffers here, where waiting for a request in flight to release them is
        // harmless, except on the ring thread itself.
        let on_ring_thread =
            RING_THREAD_OF.with(std::cell::Cell::get) == Arc::as_ptr(shared) as usize;
        let io = match (req.op, on_ring_thread) {
            (Op::Flush, _) | (_, true) => None,
            _ => match LockedIo::lock(&req) {
                Ok(io) => Some(io),
                Err(e) => {
                    drop(req);
                    return done(Err(e));
                }
            },
        };
        shared.queue.lock().push_back(Job { req, done, io });
        if shared.sleeping.load(Ordering::SeqCst) {
            shared.wake();
        }
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
