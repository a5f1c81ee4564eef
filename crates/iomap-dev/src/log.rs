//! A wrapper that records every request it passes on, so tests can assert on the exact device
//! traffic (count, order, addresses, lengths) an operation caused.

use parking_lot::Mutex;

use crate::request::{Completion, DevAddr, DeviceRequest, Op};
use crate::BlockDevice;

/// One request as it was submitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoggedRequest {
    /// Read, write or flush.
    pub op: Op,
    /// First device byte.
    pub addr: DevAddr,
    /// Bytes moved.
    pub len: u64,
    /// Scatter-gather elements.
    pub segments: usize,
    /// Force unit access.
    pub fua: bool,
}

/// Passes requests to `inner` and records them in submission order.
pub struct LogDevice<D> {
    inner: D,
    log: Mutex<Vec<LoggedRequest>>,
}

impl<D: BlockDevice> LogDevice<D> {
    /// Wraps `inner`.
    pub fn new(inner: D) -> Self {
        Self {
            inner,
            log: Mutex::new(Vec::new()),
        }
    }

    /// Returns and clears the record.
    pub fn take(&self) -> Vec<LoggedRequest> {
        std::mem::take(&mut self.log.lock())
    }

    /// The wrapped device.
    pub fn inner(&self) -> &D {
        &self.inner
    }
}

impl<D: BlockDevice> BlockDevice for LogDevice<D> {
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
        self.log.lock().push(LoggedRequest {
            op: req.op,
            addr: req.addr,
            len: req.len(),
            segments: req.segments.len(),
            fua: req.fua,
        });
        self.inner.submit(req, done)
    }
}
