//! A test device that records every write and flush and can rebuild the device image as it
//! could be after a power loss at any moment of the recorded run.
//!
//! [`CrashDevice`] wraps any device. Every request passes through to the inner device
//! unchanged; on the way the recorder copies each write's bytes at submit time (the data
//! buffers are stable while a write is in flight) and appends to a timeline of events: write
//! submitted, write completed (ok or error), flush submitted, flush completed. Concurrent
//! submitters are safe: one mutex guards the log, and it is never held across a call into the
//! inner device or a completion. Reads are passed through and not recorded. Requests that break
//! the geometry rules of [`check_request`] are passed through unrecorded, as every device
//! rejects them without touching its media.
//!
//! [`CrashDevice::new`] snapshots the inner device's contents as the starting image, keeping
//! only non-zero blocks, so a mostly-empty device costs little memory.
//!
//! # Crash points
//!
//! A crash point `t` is a position in the event timeline, `0..=events()`: the first `t` events
//! happened, the rest did not. At crash point `t` a write `W` is
//!
//! * **durable** if it completed successfully by `t` and either was submitted with FUA, or some
//!   flush that completed successfully by `t` was submitted after `W` completed;
//! * **pending** if it was submitted by `t` and is not durable. In the crash image each of its
//!   logical blocks may be present or absent independently (a torn write), or the whole write
//!   present or absent. A write that failed is pending forever: the device may have written
//!   any part of it;
//! * nonexistent if it was submitted after `t`.
//!
//! A failed flush makes nothing durable.
//!
//! # Images
//!
//! [`CrashDevice::image_at`] starts from the snapshot and applies the durable writes and the
//! chosen pending writes ([`Pending`]) in order of (completion event, or after everything when
//! not completed by `t`; then submission event). So a pending write that completed before a
//! later write was submitted never overrides that later write, while a write still in flight at
//! `t` may land over anything that completed. The image is a new [`MemDevice`] with the inner device's geometry
//! (capacity, logical block size, maximum request), ready to be mounted and checked.
//!
//! # Power cut
//!
//! [`CrashDevice::power_cut`] models the machine losing power mid-workload: from then on every
//! request completes with `EIO` without reaching the inner device, a request still in flight
//! at the cut also reports `EIO` whatever the inner device says, and no more events are
//! recorded. The image at `events()` is then the state at the cut.
//!
//! This is a test device: it keeps a copy of every byte ever written, for the life of the
//! device, so use it on small devices and short runs.

use std::io;
use std::sync::Arc;

use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::mem::MemDevice;
use crate::request::{check_request, Completion, DevAddr, DeviceRequest, Op};
use crate::sync::BlockDeviceExt;
use crate::BlockDevice;

/// Bytes read from the inner device per request when taking the starting snapshot.
const SNAPSHOT_CHUNK: u64 = 1 << 20;

/// Granularity at which the snapshot drops all-zero ranges (raised to the logical block size).
const SNAPSHOT_PIECE: usize = 4096;

/// One entry of the recorded timeline. Writes and flushes are numbered from 0 in submission
/// order, separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashEvent {
    /// A write was submitted to the inner device.
    WriteSubmitted {
        /// The write's number.
        write: usize,
        /// First device byte.
        addr: DevAddr,
        /// Bytes written.
        len: u64,
        /// Force unit access.
        fua: bool,
    },
    /// A write completed.
    WriteCompleted {
        /// The write's number.
        write: usize,
        /// Whether it succeeded.
        ok: bool,
    },
    /// A flush was submitted to the inner device.
    FlushSubmitted {
        /// The flush's number.
        flush: usize,
    },
    /// A flush completed.
    FlushCompleted {
        /// The flush's number.
        flush: usize,
        /// Whether it succeeded.
        ok: bool,
    },
}

/// Which pending writes (see the module documentation) a crash image contains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pending {
    /// None: the image holds only durable data.
    None,
    /// Every pending write, in full.
    All,
    /// Each pending write present or absent at random; with `tear`, also torn at random: each
    /// of its logical blocks present or absent independently. The same seed over the same
    /// recording gives the same image.
    Random {
        /// Seed of the choices.
        seed: u64,
        /// Whether writes may be torn at logical-block granularity.
        tear: bool,
    },
    /// Exactly the listed writes (by number), in full; numbers of writes that are durable or
    /// not yet submitted at the crash point are ignored.
    Exactly(Vec<usize>),
}

/// A recorded write.
struct WriteRec {
    addr: u64,
    data: Vec<u8>,
    fua: bool,
    /// Event index of the submission.
    submitted: usize,
    /// Event index of the completion and whether it succeeded.
    completed: Option<(usize, bool)>,
}

/// A recorded flush.
struct FlushRec {
    submitted: usize,
    completed: Option<(usize, bool)>,
}

/// The recording, behind one mutex.
#[derive(Default)]
struct Log {
    events: Vec<CrashEvent>,
    writes: Vec<WriteRec>,
    flushes: Vec<FlushRec>,
    cut: bool,
}

/// What a completion has to record.
#[derive(Clone, Copy)]
enum Tracked {
    Untracked,
    Write(usize),
    Flush(usize),
}

impl Log {
    /// Records the completion of `what` and returns the result to report to the submitter.
    fn complete(&mut self, what: Tracked, res: io::Result<()>) -> io::Result<()> {
        if self.cut {
            return Err(power_cut_error());
        }
        let idx = self.events.len();
        let ok = res.is_ok();
        match what {
            Tracked::Untracked => {}
            Tracked::Write(write) => {
                self.writes[write].completed = Some((idx, ok));
                self.events.push(CrashEvent::WriteCompleted { write, ok });
            }
            Tracked::Flush(flush) => {
                self.flushes[flush].completed = Some((idx, ok));
                self.events.push(CrashEvent::FlushCompleted { flush, ok });
            }
        }
        res
    }

    /// The state of every write at crash point `t`.
    fn classify(&self, t: usize) -> Vec<State> {
        // A successful write is durable once a flush submitted after its completion has
        // completed successfully: comparing with the latest such flush submission suffices.
        let flushed_before = self
            .flushes
            .iter()
            .filter(|f| matches!(f.completed, Some((c, true)) if c < t))
            .map(|f| f.submitted)
            .max();
        self.writes
            .iter()
            .map(|w| {
                if w.submitted >= t {
                    return State::Absent;
                }
                match w.completed {
                    Some((c, true))
                        if c < t && (w.fua || flushed_before.is_some_and(|f| f > c)) =>
                    {
                        State::Durable
                    }
                    _ => State::Pending,
                }
            })
            .collect()
    }
}

/// A write's state at a crash point.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Absent,
    Durable,
    Pending,
}

fn power_cut_error() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

/// Passes requests to `inner` and records writes and flushes, so that [`CrashDevice::image_at`]
/// can rebuild the device as a power loss at any recorded moment could leave it. See the
/// module documentation for the exact crash semantics.
pub struct CrashDevice<D> {
    inner: D,
    log: Arc<Mutex<Log>>,
    /// Non-zero ranges of the inner device when it was wrapped.
    snapshot: Vec<(u64, Vec<u8>)>,
}

impl<D: BlockDevice> CrashDevice<D> {
    /// Wraps `inner`, reading its current contents as the image every crash starts from.
    ///
    /// # Errors
    /// A read of the inner device failed.
    pub fn new(inner: D) -> io::Result<Self> {
        let capacity = inner.capacity_bytes();
        let piece = SNAPSHOT_PIECE.max(inner.logical_block_size() as usize);
        let mut snapshot = Vec::new();
        let mut buf = vec![0u8; SNAPSHOT_CHUNK as usize];
        let mut addr = 0u64;
        while addr < capacity {
            let n = (capacity - addr).min(SNAPSHOT_CHUNK) as usize;
            inner.read_at(DevAddr(addr), &mut buf[..n])?;
            for (i, bytes) in buf[..n].chunks(piece).enumerate() {
                if bytes.iter().any(|&b| b != 0) {
                    snapshot.push((addr + (i * piece) as u64, bytes.to_vec()));
                }
            }
            addr += n as u64;
        }
        Ok(Self {
            inner,
            log: Arc::new(Mutex::new(Log::default())),
            snapshot,
        })
    }

    /// The wrapped device.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// Cuts the power: every later request, and every completion still to come, reports `EIO`,
    /// nothing more reaches the inner device and nothing more is recorded.
    pub fn power_cut(&self) {
        self.log.lock().cut = true;
    }

    /// Whether [`CrashDevice::power_cut`] has been called.
    pub fn is_cut(&self) -> bool {
        self.log.lock().cut
    }

    /// Number of recorded events: the last crash point.
    pub fn events(&self) -> usize {
        self.log.lock().events.len()
    }

    /// A copy of the recorded timeline.
    pub fn event_log(&self) -> Vec<CrashEvent> {
        self.log.lock().events.clone()
    }

    /// Every crash point: each event boundary, `0..=events()`.
    pub fn all_points(&self) -> Vec<usize> {
        (0..=self.events()).collect()
    }

    /// The crash points just after each flush completion, and the end of the timeline, in
    /// increasing order.
    pub fn flush_points(&self) -> Vec<usize> {
        let log = self.log.lock();
        let mut points: Vec<usize> = log
            .flushes
            .iter()
            .filter_map(|f| f.completed.map(|(c, _)| c + 1))
            .collect();
        points.push(log.events.len());
        points.sort_unstable();
        points.dedup();
        points
    }

    /// `n` distinct crash points drawn at random from `0..=events()` (all of them when there
    /// are no more than `n`), in increasing order. The same seed gives the same points.
    pub fn sample_points(&self, seed: u64, n: usize) -> Vec<usize> {
        let count = self.events() + 1;
        if n >= count {
            return (0..count).collect();
        }
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut points = rand::seq::index::sample(&mut rng, count, n).into_vec();
        points.sort_unstable();
        points
    }

    /// Number of writes durable at crash point `t`.
    pub fn durable_at(&self, t: usize) -> usize {
        let log = self.log.lock();
        log.classify(t)
            .iter()
            .filter(|&&s| s == State::Durable)
            .count()
    }

    /// Number of writes pending at crash point `t`.
    pub fn pending_at(&self, t: usize) -> usize {
        self.pending_writes(t).len()
    }

    /// The numbers of the writes pending at crash point `t`, in submission order.
    pub fn pending_writes(&self, t: usize) -> Vec<usize> {
        let log = self.log.lock();
        log.classify(t)
            .iter()
            .enumerate()
            .filter(|(_, &s)| s == State::Pending)
            .map(|(i, _)| i)
            .collect()
    }

    /// The device as a power loss at crash point `t` could leave it, with the pending writes
    /// chosen by `pending`, as a new memory device with the inner device's geometry.
    ///
    /// # Errors
    /// `InvalidInput` if `t` is past [`CrashDevice::events`]; otherwise only a failed write to
    /// the new memory device, which does not happen for requests within its geometry.
    pub fn image_at(&self, t: usize, pending: &Pending) -> io::Result<MemDevice> {
        let log = self.log.lock();
        if t > log.events.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "crash point {t} is past the {} recorded events",
                    log.events.len()
                ),
            ));
        }
        let image = MemDevice::with_geometry(
            self.inner.capacity_bytes(),
            self.inner.logical_block_size(),
            self.inner.max_request_bytes(),
        );
        for (addr, bytes) in &self.snapshot {
            image.write_at(DevAddr(*addr), bytes)?;
        }
        let lbs = self.inner.logical_block_size() as usize;
        let states = log.classify(t);
        let mut order: Vec<usize> = (0..log.writes.len())
            .filter(|&i| states[i] != State::Absent)
            .collect();
        order.sort_by_key(|&i| {
            let w = &log.writes[i];
            let done = w.completed.map_or(usize::MAX, |(c, _)| c);
            (if done < t { done } else { usize::MAX }, w.submitted)
        });
        let mut rng = SmallRng::seed_from_u64(match pending {
            Pending::Random { seed, .. } => *seed,
            _ => 0,
        });
        for i in order {
            let w = &log.writes[i];
            if states[i] == State::Durable {
                image.write_at(DevAddr(w.addr), &w.data)?;
                continue;
            }
            let sectors = w.data.len() / lbs;
            let present: Vec<bool> = match pending {
                Pending::None => vec![false; sectors],
                Pending::All => vec![true; sectors],
                Pending::Exactly(ids) => vec![ids.contains(&i); sectors],
                Pending::Random { tear: false, .. } => vec![rng.gen_bool(0.5); sectors],
                Pending::Random { tear: true, .. } => match rng.gen_range(0..3u8) {
                    0 => vec![false; sectors],
                    1 => vec![true; sectors],
                    _ => (0..sectors).map(|_| rng.gen_bool(0.5)).collect(),
                },
            };
            apply_sectors(&image, w, lbs, &present)?;
        }
        Ok(image)
    }
}

/// Writes the runs of consecutive present sectors of `w` to `image`.
fn apply_sectors(image: &MemDevice, w: &WriteRec, lbs: usize, present: &[bool]) -> io::Result<()> {
    let mut s = 0;
    while s < present.len() {
        if !present[s] {
            s += 1;
            continue;
        }
        let run = present[s..].iter().take_while(|&&p| p).count();
        let bytes = &w.data[s * lbs..(s + run) * lbs];
        image.write_at(DevAddr(w.addr + (s * lbs) as u64), bytes)?;
        s += run;
    }
    Ok(())
}

impl<D: BlockDevice> BlockDevice for CrashDevice<D> {
    fn capacity_bytes(&self) -> u64 {
        self.inner.capacity_bytes()
    }
    fn logical_block_size(&self) -> u32 {
        self.inner.logical_block_size()
    }
    fn max_request_bytes(&self) -> u64 {
        self.inner.max_request_bytes()
    }
    fn submit(&self, req: DeviceRequest, done: Completion) {
        // Copy the data before taking the log lock: buffer locks are never held under it.
        let data = match req.op {
            Op::Write if check_request(&self.inner, &req).is_ok() => {
                let mut data = Vec::with_capacity(req.len() as usize);
                for seg in &req.segments {
                    let buf = seg.buf.read();
                    match buf.get(seg.offset..seg.offset + seg.len) {
                        Some(bytes) => data.extend_from_slice(bytes),
                        // Out of bounds: the inner device refuses it; nothing to record.
                        None => {
                            drop(buf);
                            return self.inner.submit(req, done);
                        }
                    }
                }
                Some(data)
            }
            _ => None,
        };
        let mut log = self.log.lock();
        if log.cut {
            drop(log);
            drop(req);
            return done(Err(power_cut_error()));
        }
        let idx = log.events.len();
        let tracked = match (req.op, data) {
            (Op::Write, Some(data)) => {
                let write = log.writes.len();
                log.events.push(CrashEvent::WriteSubmitted {
                    write,
                    addr: req.addr,
                    len: data.len() as u64,
                    fua: req.fua,
                });
                log.writes.push(WriteRec {
                    addr: req.addr.0,
                    data,
                    fua: req.fua,
                    submitted: idx,
                    completed: None,
                });
                Tracked::Write(write)
            }
            (Op::Flush, _) => {
                let flush = log.flushes.len();
                log.events.push(CrashEvent::FlushSubmitted { flush });
                log.flushes.push(FlushRec {
                    submitted: idx,
                    completed: None,
                });
                Tracked::Flush(flush)
            }
            // Reads, and writes the inner device will reject unseen.
            _ => Tracked::Untracked,
        };
        drop(log);
        let log = Arc::clone(&self.log);
        self.inner.submit(
            req,
            Box::new(move |res| {
                let res = log.lock().complete(tracked, res);
                done(res)
            }),
        );
    }
}
