//! A wrapper that injects faults into chosen requests, for testing how errors travel.
//!
//! A [`FaultDevice`] passes requests to the device it wraps and consults an ordered list of
//! [`FaultRule`]s on the way. A rule picks requests of one [`Op`] by number (the nth after the
//! rule was added), by device range, or at random from a seed, and then fails them outright,
//! lets only a block-rounded prefix (a short write) or a seeded random subset of blocks (a torn
//! write) reach the inner device before failing, or delays them and passes them on unchanged.
//! Every injected fault is logged as an [`InjectedFault`] so a test can assert on exactly what
//! happened. Delays are served by one timer thread per device, started on the first delay and
//! stopped when the device is dropped; the submitting thread never sleeps.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::buf::BufRange;
use crate::request::{check_request, Completion, DevAddr, DeviceRequest, Op};
use crate::BlockDevice;

/// What a rule does to a request it picks.
#[derive(Clone, Debug)]
enum Action {
    Fail,
    Short(u64),
    Torn(SmallRng),
    Delay(Duration),
    Lost,
}

/// Picks requests of one kind and says what fault to inject into them.
///
/// A rule matches a request when the op is the rule's, the request overlaps the rule's device
/// range (flushes ignore ranges), it is at least the rule's nth such request since the rule was
/// added, and the rule's random draw (if any) comes up. A matching rule applies while it has
/// budget left: [`times`](Self::times) sets the budget, [`persistent`](Self::persistent)
/// removes it. Every rule counts and draws for every request of its op in its range, whether or
/// not it or an earlier rule applies, so a rule's choices depend only on its own seed and the
/// requests it sees.
#[derive(Clone, Debug)]
pub struct FaultRule {
    op: Op,
    range: (u64, u64),
    nth: u64,
    chance: Option<(f64, SmallRng)>,
    errno: i32,
    remaining: Option<u32>,
    action: Action,
    seen: u64,
}

impl FaultRule {
    /// Fails every `op` request with `EIO`, persistently; narrow it with the other methods.
    pub fn on(op: Op) -> Self {
        Self {
            op,
            range: (0, u64::MAX),
            nth: 0,
            chance: None,
            errno: libc::EIO,
            remaining: None,
            action: Action::Fail,
            seen: 0,
        }
    }

    /// Fails every `op` request that overlaps the device range `[start, end)` with `errno`,
    /// persistently.
    pub fn range(op: Op, start: u64, end: u64, errno: i32) -> Self {
        Self::on(op).within(start, end).errno(errno)
    }

    /// Fails the `n`th `op` request (counting from 1) after the rule is added, once. With a
    /// larger budget it fails that request and the ones after it until the budget runs out.
    pub fn nth(op: Op, n: u32, errno: i32) -> Self {
        Self {
            nth: u64::from(n),
            ..Self::on(op).errno(errno).times(1)
        }
    }

    /// Fails each `op` request with the given probability, drawn from a generator seeded with
    /// `seed`, persistently: the same seed and the same requests give the same failures.
    pub fn random(op: Op, probability: f64, seed: u64, errno: i32) -> Self {
        Self {
            chance: Some((probability, SmallRng::seed_from_u64(seed))),
            ..Self::on(op).errno(errno)
        }
    }

    /// Restricts the rule to requests that overlap the device range `[start, end)`.
    pub fn within(mut self, start: u64, end: u64) -> Self {
        self.range = (start, end);
        self
    }

    /// Sets the errno that failed, short and torn requests complete with.
    pub fn errno(mut self, errno: i32) -> Self {
        self.errno = errno;
        self
    }

    /// Applies the rule to `n` matching requests, then lets everything through (a transient
    /// fault).
    pub fn times(mut self, n: u32) -> Self {
        self.remaining = Some(n);
        self
    }

    /// Applies the rule to every matching request (a persistent fault).
    pub fn persistent(mut self) -> Self {
        self.remaining = None;
        self
    }

    /// Instead of failing outright, lets the first `bytes` of the request, rounded down to the
    /// logical block size, reach the inner device, then completes with the errno. Reads are
    /// treated alike (only the prefix is filled); a flush simply fails.
    pub fn short(mut self, bytes: u64) -> Self {
        self.action = Action::Short(bytes);
        self
    }

    /// Instead of failing outright, lets a random subset of the request's logical blocks, each
    /// kept with probability one half from a generator seeded with `seed`, reach the inner
    /// device, then completes with the errno. Reads are treated alike; a flush simply fails.
    pub fn torn(mut self, seed: u64) -> Self {
        self.action = Action::Torn(SmallRng::seed_from_u64(seed));
        self
    }

    /// Instead of failing, holds the request back for `delay` and then passes it to the inner
    /// device unchanged; it completes with whatever the inner device reports.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.action = Action::Delay(delay);
        self
    }

    /// Instead of failing, completes the request successfully without passing it on: a write
    /// cache that acknowledges and then loses data, for testing that a checker notices.
    /// Reads are treated alike (the buffer is left as it was); so are flushes.
    pub fn lost(mut self) -> Self {
        self.action = Action::Lost;
        self
    }

    /// Counts and draws for a request; true when the rule would apply to it.
    fn observe(&mut self, op: Op, addr: u64, len: u64) -> bool {
        let overlaps = addr < self.range.1 && self.range.0 < addr.saturating_add(len);
        if op != self.op || (op != Op::Flush && !overlaps) {
            return false;
        }
        self.seen += 1;
        let drawn = match &mut self.chance {
            Some((p, rng)) => rng.gen::<f64>() < *p,
            None => true,
        };
        drawn && self.seen >= self.nth && self.remaining != Some(0)
    }

    /// Spends one unit of budget and decides the fault for a request of `len` bytes.
    fn apply(&mut self, len: u64, lbs: u64) -> (FaultKind, Plan) {
        if let Some(n) = self.remaining.as_mut() {
            *n = n.saturating_sub(1);
        }
        let errno = self.errno;
        match &mut self.action {
            Action::Delay(d) => (FaultKind::Delay { delay: *d }, Plan::Delay(*d)),
            Action::Lost => (FaultKind::Lost, Plan::Parts(Vec::new(), 0)),
            _ if self.op == Op::Flush => (FaultKind::Fail, Plan::Parts(Vec::new(), errno)),
            Action::Fail => (FaultKind::Fail, Plan::Parts(Vec::new(), errno)),
            Action::Short(bytes) => {
                let written_bytes = (*bytes / lbs * lbs).min(len);
                let parts = if written_bytes > 0 {
                    vec![(0, written_bytes)]
                } else {
                    Vec::new()
                };
                (
                    FaultKind::Short { written_bytes },
                    Plan::Parts(parts, errno),
                )
            }
            Action::Torn(rng) => {
                let written_blocks: Vec<u64> = (0..len / lbs).filter(|_| rng.gen()).collect();
                let mut parts: Vec<(u64, u64)> = Vec::new();
                for &b in &written_blocks {
                    match parts.last_mut() {
                        Some(last) if last.1 == b * lbs => last.1 += lbs,
                        _ => parts.push((b * lbs, (b + 1) * lbs)),
                    }
                }
                (
                    FaultKind::Torn { written_blocks },
                    Plan::Parts(parts, errno),
                )
            }
        }
    }
}

/// The fault injected into one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The request never reached the inner device.
    Fail,
    /// Only the first `written_bytes` of the request reached the inner device.
    Short {
        /// Bytes passed on, a multiple of the logical block size (possibly zero).
        written_bytes: u64,
    },
    /// Only some logical blocks of the request reached the inner device.
    Torn {
        /// Indexes of the blocks passed on, in ascending order, counting from 0 at the
        /// request's first block: block `i` lies at `addr + i * logical_block_size`.
        written_blocks: Vec<u64>,
    },
    /// The request completed successfully without reaching the inner device.
    Lost,
    /// The request was held back, then passed on whole.
    Delay {
        /// How long it was held back.
        delay: Duration,
    },
}

/// A record of one fault a [`FaultDevice`] injected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectedFault {
    /// The request's number among all valid requests given to the device, counting from 1.
    pub seq: u64,
    /// Read, write or flush.
    pub op: Op,
    /// The request's first device byte (zero for a flush).
    pub addr: DevAddr,
    /// The request's length in bytes (zero for a flush).
    pub len: u64,
    /// What was done to it.
    pub kind: FaultKind,
    /// The errno it completed with; `None` for a delay, which completes as the inner device
    /// says, and for a lost request, which completes successfully.
    pub errno: Option<i32>,
}

/// How to carry out a fault: pass the listed byte ranges `[from, to)` of the request on and
/// then fail with the errno (or, with errno zero, succeed), or pass the whole request on
/// after a delay.
enum Plan {
    Parts(Vec<(u64, u64)>, i32),
    Delay(Duration),
}

/// Rules and the fault log, under one lock.
struct State {
    rules: Vec<FaultRule>,
    injected: Vec<InjectedFault>,
    seq: u64,
}

type Job = Box<dyn FnOnce() + Send>;

/// A job due at a deadline; ordered so that `BinaryHeap` pops the earliest (then the first
/// scheduled) first.
struct Delayed {
    at: Instant,
    id: u64,
    job: Job,
}

impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.id).cmp(&(self.at, self.id))
    }
}

impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.id) == (other.at, other.id)
    }
}

impl Eq for Delayed {}

/// The deadline heap the timer thread serves.
#[derive(Default)]
struct TimerQueue {
    heap: BinaryHeap<Delayed>,
    next_id: u64,
    stop: bool,
}

#[derive(Default)]
struct Timer {
    queue: Mutex<TimerQueue>,
    wake: Condvar,
}

impl Timer {
    /// The timer thread: runs each job at its deadline, and every remaining job at once when
    /// told to stop.
    fn run(&self) {
        let mut q = self.queue.lock();
        loop {
            match q.heap.peek().map(|d| d.at) {
                Some(at) if q.stop || at <= Instant::now() => {
                    if let Some(due) = q.heap.pop() {
                        MutexGuard::unlocked(&mut q, due.job);
                    }
                }
                Some(at) => {
                    self.wake.wait_until(&mut q, at);
                }
                None if q.stop => return,
                None => self.wake.wait(&mut q),
            }
        }
    }
}

/// Passes requests to `inner`, injecting the faults its rules ask for.
///
/// Rules are examined in the order they were added; the first that matches and has budget left
/// applies. Requests that break the device's rules (see [`check_request`]) pass straight to the
/// inner device, are not counted and get no faults.
pub struct FaultDevice<D> {
    inner: Arc<D>,
    state: Mutex<State>,
    timer: Arc<Timer>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl<D: BlockDevice> FaultDevice<D> {
    /// Wraps `inner` with no rules.
    pub fn new(inner: D) -> Self {
        Self {
            inner: Arc::new(inner),
            state: Mutex::new(State {
                rules: Vec::new(),
                injected: Vec::new(),
                seq: 0,
            }),
            timer: Arc::default(),
            worker: Mutex::new(None),
        }
    }

    /// Adds a rule after the existing ones; it counts requests from now on.
    pub fn add_rule(&self, rule: FaultRule) {
        self.state.lock().rules.push(rule);
    }

    /// Removes every rule. The log of injected faults is kept.
    pub fn clear_rules(&self) {
        self.state.lock().rules.clear();
    }

    /// The wrapped device.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// Every fault injected so far, in submission order.
    pub fn injected(&self) -> Vec<InjectedFault> {
        self.state.lock().injected.clone()
    }

    /// Numbers `req`, lets every rule see it, and logs and returns the fault to inject, if any.
    fn decide(&self, req: &DeviceRequest) -> Option<Plan> {
        let (addr, len) = (req.addr.0, req.len());
        let lbs = u64::from(self.inner.logical_block_size());
        let mut guard = self.state.lock();
        let st = &mut *guard;
        st.seq += 1;
        let mut hit = None;
        for (i, rule) in st.rules.iter_mut().enumerate() {
            if rule.observe(req.op, addr, len) && hit.is_none() {
                hit = Some(i);
            }
        }
        let (kind, plan) = st.rules[hit?].apply(len, lbs);
        st.injected.push(InjectedFault {
            seq: st.seq,
            op: req.op,
            addr: req.addr,
            len,
            errno: match plan {
                Plan::Parts(_, 0) => None,
                Plan::Parts(_, errno) => Some(errno),
                Plan::Delay(_) => None,
            },
            kind,
        });
        Some(plan)
    }

    /// Starts the timer thread unless it is running.
    fn start_timer(&self) -> io::Result<()> {
        let mut worker = self.worker.lock();
        if worker.is_none() {
            let timer = Arc::clone(&self.timer);
            let handle = thread::Builder::new()
                .name("fault-delay".into())
                .spawn(move || timer.run())?;
            *worker = Some(handle);
        }
        Ok(())
    }

    /// Queues `job` on the timer thread to run at `at`.
    fn schedule(&self, at: Instant, job: Job) {
        let mut q = self.timer.queue.lock();
        let id = q.next_id;
        q.next_id += 1;
        q.heap.push(Delayed { at, id, job });
        drop(q);
        self.timer.wake.notify_one();
    }

    /// Passes the byte ranges `parts` of `req` to the inner device, then completes `done` with
    /// `errno` once all of them have completed.
    fn submit_parts(
        &self,
        req: DeviceRequest,
        parts: Vec<(u64, u64)>,
        errno: i32,
        done: Completion,
    ) {
        let error = move || io::Error::from_raw_os_error(errno);
        if parts.is_empty() {
            drop(req);
            return done(if errno == 0 { Ok(()) } else { Err(error()) });
        }
        let pending = Arc::new(Mutex::new((parts.len(), Some(done))));
        for (from, to) in parts {
            let part = DeviceRequest {
                op: req.op,
                addr: req.addr + from,
                segments: slice_segments(&req.segments, from, to),
                fua: req.fua,
            };
            let pending = Arc::clone(&pending);
            self.inner.submit(
                part,
                Box::new(move |_| {
                    let mut p = pending.lock();
                    p.0 -= 1;
                    let last = if p.0 == 0 { p.1.take() } else { None };
                    drop(p);
                    if let Some(done) = last {
                        done(Err(error()));
                    }
                }),
            );
        }
    }
}

/// The parts of `segments` that carry request bytes `[from, to)`: the same buffers, narrower
/// ranges.
fn slice_segments(segments: &[BufRange], from: u64, to: u64) -> Vec<BufRange> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    for seg in segments {
        let (start, end) = (pos, pos + seg.len as u64);
        pos = end;
        let (lo, hi) = (start.max(from), end.min(to));
        if lo < hi {
            let offset = seg.offset + (lo - start) as usize;
            out.push(BufRange::new(seg.buf.clone(), offset, (hi - lo) as usize));
        }
    }
    out
}

impl<D: BlockDevice + 'static> BlockDevice for FaultDevice<D> {
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
        if check_request(self, &req).is_err() {
            return self.inner.submit(req, done);
        }
        match self.decide(&req) {
            None => self.inner.submit(req, done),
            Some(Plan::Parts(parts, errno)) => self.submit_parts(req, parts, errno, done),
            Some(Plan::Delay(delay)) => match self.start_timer() {
                Ok(()) => {
                    let inner = Arc::clone(&self.inner);
                    let at = Instant::now() + delay;
                    self.schedule(at, Box::new(move || inner.submit(req, done)));
                }
                Err(e) => {
                    drop(req);
                    done(Err(e))
                }
            },
        }
    }
}

impl<D> Drop for FaultDevice<D> {
    /// Stops the timer thread, which first passes on every request still held back, at once.
    fn drop(&mut self) {
        self.timer.queue.lock().stop = true;
        self.timer.wake.notify_all();
        if let Some(handle) = self.worker.get_mut().take() {
            // A completion that drops the last reference runs on the timer thread itself,
            // which then exits by itself once the queue is empty.
            if handle.thread().id() != thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}
