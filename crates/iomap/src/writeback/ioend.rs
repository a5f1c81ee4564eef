//! Ioends: runs of dirty blocks contiguous in the file and on the device, written with one
//! device request, and what happens when they complete.
//!
//! Rules: R14 an ioend grows while the next block is contiguous in file and device, of the same
//! kind (unwritten, shared), with no BOUNDARY, under the maximum size; R16 a device error is
//! recorded once per ioend with its errno and folios end writeback clean and uptodate; R17
//! ioends that need filesystem work complete on a worker, merged with adjacent completed
//! ioends of the same kind and status, in offset order.
//!
//! An ioend that needs no filesystem work ends its folios' writeback on the device's
//! completion path. One that does is queued to the cache's completion worker, which runs the
//! filesystem's completion (unwritten conversion, copy-on-write remap, on-disk size) and only
//! then ends writeback, so that a waiter (fsync) sees the metadata done too.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Weak};

use bitflags::bitflags;
use iomap_dev::{BufRange, DevAddr, DeviceRequest, SharedBuf};
use parking_lot::{Condvar, Mutex};
use tracing::{debug, trace};

use crate::error::libc_errno;
use crate::folio::Folio;
use crate::mapping::Mapping;
use crate::writeback::WritebackOps;

bitflags! {
    /// Kinds of ioend that must not merge with each other.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct IoendFlags: u8 {
        /// Written into unwritten extents: completion converts them.
        const UNWRITTEN = 1 << 0;
        /// Written into new space for shared blocks: completion remaps.
        const SHARED = 1 << 1;
        /// Starts at a mapping flagged BOUNDARY: never merged into the previous ioend.
        const BOUNDARY = 1 << 2;
    }
}

/// What an ioend wrote, as the filesystem sees it at completion.
#[derive(Clone, PartialEq, Eq)]
pub struct Ioend {
    /// First file byte.
    pub offset: u64,
    /// Bytes written (whole blocks; may reach past EOF within the last block).
    pub size: u64,
    /// Device address of `offset`.
    pub addr: DevAddr,
    /// Kind.
    pub flags: IoendFlags,
    /// The errno the write failed with, if it did.
    pub error: Option<i32>,
}

impl Ioend {
    /// One past the last file byte written.
    pub fn end(&self) -> u64 {
        self.offset + self.size
    }

    /// Written into unwritten extents.
    pub fn is_unwritten(&self) -> bool {
        self.flags.contains(IoendFlags::UNWRITTEN)
    }

    /// Written into new space for shared blocks.
    pub fn is_shared(&self) -> bool {
        self.flags.contains(IoendFlags::SHARED)
    }
}

impl fmt::Debug for Ioend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Ioend({}+{} at {:?}, {:?}",
            self.offset, self.size, self.addr, self.flags
        )?;
        if let Some(e) = self.error {
            write!(f, ", errno {e}")?;
        }
        write!(f, ")")
    }
}

/// An ioend being built or in flight: its description, its request and the folio bytes it
/// carries.
pub(crate) struct IoendBuild {
    pub(crate) ioend: Ioend,
    req: DeviceRequest,
    parts: Vec<(Folio, u64)>,
}

impl IoendBuild {
    pub(crate) fn new(offset: u64, addr: DevAddr, flags: IoendFlags) -> Self {
        Self {
            ioend: Ioend {
                offset,
                size: 0,
                addr,
                flags,
                error: None,
            },
            req: DeviceRequest::write(addr, Vec::new()),
            parts: Vec::new(),
        }
    }

    /// Whether a block at `pos`, device `addr`, of kind `flags` continues this ioend (R14).
    pub(crate) fn can_add(&self, pos: u64, addr: DevAddr, flags: IoendFlags, max: u64) -> bool {
        !flags.contains(IoendFlags::BOUNDARY)
            && (flags & !IoendFlags::BOUNDARY) == (self.ioend.flags & !IoendFlags::BOUNDARY)
            && pos == self.ioend.end()
            && addr == self.ioend.addr + self.ioend.size
            && self.ioend.size < max
    }

    /// Adds `len` bytes at folio offset `off`; the folio's write-pending count grows with it.
    pub(crate) fn push(&mut self, folio: &Folio, off: usize, len: u64) {
        self.req
            .push_segment(BufRange::new(folio.data(), off, len as usize));
        folio.add_write_pending(len);
        match self.parts.last_mut() {
            Some((f, n)) if Folio::same(f, folio) => *n += len,
            _ => self.parts.push((folio.clone(), len)),
        }
        self.ioend.size += len;
    }
}

impl IoendBuild {
    /// Splits off the bytes of `folio` at the tail of this ioend (the folio being written back
    /// is always the last one added), leaving the rest; `None` if the tail is another folio's.
    pub(crate) fn split_tail(&mut self, folio: &Folio) -> Option<IoendBuild> {
        let (last, len) = self.parts.last()?;
        if !Folio::same(last, folio) {
            return None;
        }
        let len = *len;
        let (folio, _) = self.parts.pop()?;
        let seg = self.req.segments.pop()?;
        debug_assert!(SharedBuf::same(&seg.buf, &folio.data()) && seg.len as u64 == len);
        self.ioend.size -= len;
        let offset = self.ioend.end();
        let addr = self.ioend.addr + self.ioend.size;
        let mut tail = IoendBuild {
            ioend: Ioend {
                offset,
                size: len,
                addr,
                flags: self.ioend.flags & !IoendFlags::BOUNDARY,
                error: None,
            },
            req: DeviceRequest::write(addr, vec![seg]),
            parts: vec![(folio, len)],
        };
        tail.req.fua = self.req.fua;
        Some(tail)
    }

    /// True when nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.ioend.size == 0
    }
}

/// Submits `b` to the mapping's device; with `fail`, completes it with that errno instead.
pub(crate) fn submit(
    mapping: &Arc<Mapping>,
    ops: &Arc<dyn WritebackOps>,
    b: IoendBuild,
    fail: Option<i32>,
) {
    let stats = mapping.cache().stats();
    stats.ioends.add(1);
    if let Some(errno) = fail {
        trace!(ioend = ?b.ioend, errno, "ioend failed before submission");
        complete(
            Arc::clone(mapping),
            Arc::clone(ops),
            b.ioend,
            b.parts,
            Some(errno),
        );
        return;
    }
    stats.dev_write_requests.add(1);
    stats.dev_write_bytes.add(b.ioend.size);
    let blocks = b.ioend.size / mapping.block_size() as u64;
    stats.blocks_merged.add(blocks.saturating_sub(1));
    trace!(ioend = ?b.ioend, "ioend submit");
    let (mapping2, ops2) = (Arc::clone(mapping), Arc::clone(ops));
    let IoendBuild { ioend, req, parts } = b;
    mapping.dev().submit(
        req,
        Box::new(move |res| {
            let errno = res
                .err()
                .map(|e| e.raw_os_error().unwrap_or(libc_errno::EIO));
            complete(mapping2, ops2, ioend, parts, errno);
        }),
    );
}

/// Device completion of an ioend: record the error once (R16), then either end writeback now
/// or hand the ioend to the completion worker (R17).
fn complete(
    mapping: Arc<Mapping>,
    ops: Arc<dyn WritebackOps>,
    mut ioend: Ioend,
    parts: Vec<(Folio, u64)>,
    errno: Option<i32>,
) {
    ioend.error = errno;
    if let Some(e) = errno {
        debug!(ioend = ?ioend, errno = e, "writeback error");
        mapping.set_error(e);
    }
    if ops.ioend_needs_completion(&ioend) {
        let queue = Arc::clone(mapping.cache().completions());
        queue.push(Done {
            mapping,
            ops,
            ioend,
            parts,
        });
    } else {
        finish(&mapping, parts);
    }
}

/// Ends the write I/O of each folio part, ending writeback of folios with none left.
fn finish(mapping: &Mapping, parts: Vec<(Folio, u64)>) {
    for (folio, len) in parts {
        if folio.write_done(len) {
            mapping.end_writeback(&folio);
        }
    }
}

/// A completed ioend waiting for filesystem work.
pub(crate) struct Done {
    mapping: Arc<Mapping>,
    ops: Arc<dyn WritebackOps>,
    ioend: Ioend,
    parts: Vec<(Folio, u64)>,
}

struct QueueState {
    items: Vec<Done>,
    held: bool,
    running: bool,
    worker: bool,
}

/// The cache's ioend completion queue and its worker thread.
pub(crate) struct CompletionQueue {
    state: Mutex<QueueState>,
    wake: Condvar,
    idle: Condvar,
}

impl CompletionQueue {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(QueueState {
                items: Vec::new(),
                held: false,
                running: false,
                worker: false,
            }),
            wake: Condvar::new(),
            idle: Condvar::new(),
        })
    }

    fn push(self: &Arc<Self>, done: Done) {
        let mut st = self.state.lock();
        st.items.push(done);
        if !st.worker {
            st.worker = true;
            let weak = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name("iomap-ioend".into())
                .spawn(move || worker(weak));
            if spawned.is_err() {
                // No thread to be had: do the work here rather than leave writeback hanging.
                st.worker = false;
                let batch = std::mem::take(&mut st.items);
                drop(st);
                process(batch);
                return;
            }
        }
        self.wake.notify_one();
    }

    /// Holds completion work in the queue until released: lets a caller (a test) gather
    /// several completions and watch them merge.
    pub(crate) fn set_held(&self, held: bool) {
        self.state.lock().held = held;
        self.wake.notify_all();
    }

    /// Waits until the queue is empty and no batch is being processed.
    pub(crate) fn drain(&self) {
        let mut st = self.state.lock();
        while !st.items.is_empty() || st.running {
            self.idle.wait(&mut st);
        }
    }

    pub(crate) fn shutdown(&self) {
        self.wake.notify_all();
    }
}

fn worker(queue: Weak<CompletionQueue>) {
    loop {
        let Some(q) = queue.upgrade() else { return };
        let batch = {
            let mut st = q.state.lock();
            while st.items.is_empty() || st.held {
                // Wake at times to notice the cache going away.
                if q.wake
                    .wait_for(&mut st, std::time::Duration::from_millis(200))
                    .timed_out()
                    && Arc::strong_count(&q) == 1
                    && st.items.is_empty()
                {
                    st.worker = false;
                    return;
                }
            }
            st.running = true;
            std::mem::take(&mut st.items)
        };
        process(batch);
        let mut st = q.state.lock();
        st.running = false;
        if st.items.is_empty() {
            q.idle.notify_all();
        }
    }
}

/// Runs filesystem completion for a batch: sorted by mapping and offset, adjacent ioends of
/// the same kind and status merged, each merged run completed once, then writeback ended.
fn process(mut batch: Vec<Done>) {
    batch.sort_by_key(|d| (Arc::as_ptr(&d.mapping) as usize, d.ioend.offset));
    let mut batch: VecDeque<Done> = batch.into();
    while let Some(mut head) = batch.pop_front() {
        while let Some(next) = batch.front() {
            let mergeable = Arc::ptr_eq(&next.mapping, &head.mapping)
                && Arc::ptr_eq(&next.ops, &head.ops)
                && next.ioend.offset == head.ioend.end()
                && !next.ioend.flags.contains(IoendFlags::BOUNDARY)
                && (next.ioend.flags & !IoendFlags::BOUNDARY)
                    == (head.ioend.flags & !IoendFlags::BOUNDARY)
                && next.ioend.error.is_some() == head.ioend.error.is_some()
                && next.ioend.addr == head.ioend.addr + head.ioend.size;
            if !mergeable {
                break;
            }
            let Some(next) = batch.pop_front() else { break };
            head.ioend.size += next.ioend.size;
            head.parts.extend(next.parts);
        }
        trace!(ioend = ?head.ioend, "ioend completion");
        if let Err(e) = head.ops.ioend_complete(&head.mapping, &head.ioend) {
            head.mapping.set_error(e.errno());
        }
        finish(&head.mapping, head.parts);
    }
}
