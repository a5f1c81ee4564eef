//! A wrapper that fails chosen requests, for testing how errors travel.

use std::io;

use parking_lot::Mutex;

use crate::request::{Completion, DevAddr, DeviceRequest, Op};
use crate::BlockDevice;

/// Fails requests of one kind that touch a device range.
#[derive(Clone, Debug)]
pub struct FaultRule {
    /// The kind of request to fail.
    pub op: Op,
    /// Device range `[start, end)` a request must overlap to fail (ignored for flushes).
    pub range: (DevAddr, DevAddr),
    /// The errno the request completes with.
    pub errno: i32,
    /// How many more requests to fail; `None` fails every match.
    pub remaining: Option<u32>,
    /// Matching requests to let through before failing: 2 fails the third.
    pub skip: u32,
}

impl FaultRule {
    /// Fails every `op` request over the device range `[start, end)` with `errno`.
    pub fn range(op: Op, start: u64, end: u64, errno: i32) -> Self {
        Self {
            op,
            range: (DevAddr(start), DevAddr(end)),
            errno,
            remaining: None,
            skip: 0,
        }
    }

    /// Fails the `n`th `op` request (counting from 1) anywhere on the device, once.
    pub fn nth(op: Op, n: u32, errno: i32) -> Self {
        Self {
            op,
            range: (DevAddr(0), DevAddr(u64::MAX)),
            errno,
            remaining: Some(1),
            skip: n.saturating_sub(1),
        }
    }
}

/// Passes requests to `inner` unless a rule says to fail them; a failed request never reaches
/// the inner device.
pub struct FaultDevice<D> {
    inner: D,
    rules: Mutex<Vec<FaultRule>>,
    injected: Mutex<Vec<(Op, DevAddr, i32)>>,
}

impl<D: BlockDevice> FaultDevice<D> {
    /// Wraps `inner` with no rules.
    pub fn new(inner: D) -> Self {
        Self {
            inner,
            rules: Mutex::new(Vec::new()),
            injected: Mutex::new(Vec::new()),
        }
    }

    /// Adds a rule.
    pub fn add_rule(&self, rule: FaultRule) {
        self.rules.lock().push(rule);
    }

    /// The wrapped device.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// Removes every rule.
    pub fn clear_rules(&self) {
        self.rules.lock().clear();
    }

    /// The faults injected so far: kind, address and errno of each failed request.
    pub fn injected(&self) -> Vec<(Op, DevAddr, i32)> {
        self.injected.lock().clone()
    }

    fn should_fail(&self, req: &DeviceRequest) -> Option<i32> {
        let end = DevAddr(req.addr.0.saturating_add(req.len()));
        let mut rules = self.rules.lock();
        let hit = rules.iter_mut().find(|r| {
            r.op == req.op
                && r.remaining != Some(0)
                && (req.op == Op::Flush || (req.addr < r.range.1 && r.range.0 < end))
        })?;
        if hit.skip > 0 {
            hit.skip -= 1;
            return None;
        }
        if let Some(n) = hit.remaining.as_mut() {
            *n -= 1;
        }
        Some(hit.errno)
    }
}

impl<D: BlockDevice> BlockDevice for FaultDevice<D> {
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
        match self.should_fail(&req) {
            Some(errno) => {
                self.injected.lock().push((req.op, req.addr, errno));
                drop(req);
                done(Err(io::Error::from_raw_os_error(errno)))
            }
            None => self.inner.submit(req, done),
        }
    }
}
