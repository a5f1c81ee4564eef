//! Device requests, their completions, and the checks every device applies to them.

use std::fmt;
use std::io;

use crate::buf::{BufRange, SharedBuf};
use crate::BlockDevice;

/// A byte address on a block device.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DevAddr(pub u64);

impl DevAddr {
    /// The address `bytes` further on, or `None` on overflow.
    pub fn checked_add(self, bytes: u64) -> Option<DevAddr> {
        self.0.checked_add(bytes).map(DevAddr)
    }
}

impl std::ops::Add<u64> for DevAddr {
    type Output = DevAddr;

    /// The address `bytes` further on. Callers have checked the range against the device.
    fn add(self, bytes: u64) -> DevAddr {
        DevAddr(self.0 + bytes)
    }
}

impl fmt::Debug for DevAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dev:{:#x}", self.0)
    }
}

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Fill the segments from the device.
    Read,
    /// Write the segments to the device.
    Write,
    /// Make every completed write durable.
    Flush,
}

/// One request to a device: `op` over `len()` bytes starting at `addr`, gathered from or
/// scattered into `segments` in order.
#[derive(Debug)]
pub struct DeviceRequest {
    /// Read, write or flush.
    pub op: Op,
    /// First byte on the device (ignored for flush).
    pub addr: DevAddr,
    /// The memory the data moves to or from, in device order.
    pub segments: Vec<BufRange>,
    /// Force unit access: a write that is durable when it completes.
    pub fua: bool,
}

impl DeviceRequest {
    /// A read of the segments' total length at `addr`.
    pub fn read(addr: DevAddr, segments: Vec<BufRange>) -> Self {
        Self {
            op: Op::Read,
            addr,
            segments,
            fua: false,
        }
    }

    /// A write of the segments' total length at `addr`.
    pub fn write(addr: DevAddr, segments: Vec<BufRange>) -> Self {
        Self {
            op: Op::Write,
            addr,
            segments,
            fua: false,
        }
    }

    /// A cache flush.
    pub fn flush() -> Self {
        Self {
            op: Op::Flush,
            addr: DevAddr(0),
            segments: Vec::new(),
            fua: false,
        }
    }

    /// Total bytes moved.
    pub fn len(&self) -> u64 {
        self.segments.iter().map(|s| s.len as u64).sum()
    }

    /// True for a flush or a request without data.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a segment, extending the last one instead when it is the same buffer and the
    /// bytes follow on, so that a request never names one buffer twice.
    pub fn push_segment(&mut self, seg: BufRange) {
        if let Some(last) = self.segments.last_mut() {
            if SharedBuf::same(&last.buf, &seg.buf) && last.offset + last.len == seg.offset {
                last.len += seg.len;
                return;
            }
        }
        self.segments.push(seg);
    }
}

/// Called once with the outcome of a request.
pub type Completion = Box<dyn FnOnce(io::Result<()>) + Send>;

/// Checks `req` against `dev`'s geometry: alignment to the logical block size, the maximum
/// request size, the device's end, and segments that lie within their buffers. It never waits
/// for a buffer's lock: a buffer locked elsewhere (by a request in flight) is skipped here and
/// checked by the device when it locks the buffer for the transfer.
pub fn check_request<D: BlockDevice + ?Sized>(dev: &D, req: &DeviceRequest) -> io::Result<()> {
    if req.op == Op::Flush {
        return Ok(());
    }
    let invalid = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
    let lbs = u64::from(dev.logical_block_size());
    let len = req.len();
    if len == 0 {
        return invalid(format!(
            "{:?} request at {:?} moves no data",
            req.op, req.addr
        ));
    }
    if req.addr.0 % lbs != 0 || len % lbs != 0 {
        return invalid(format!(
            "{:?} of {len} bytes at {:?} is not aligned to the {lbs}-byte logical block size",
            req.op, req.addr
        ));
    }
    if len > dev.max_request_bytes() {
        return invalid(format!(
            "{:?} of {len} bytes exceeds the device's maximum request of {} bytes",
            req.op,
            dev.max_request_bytes()
        ));
    }
    match req.addr.checked_add(len) {
        Some(end) if end.0 <= dev.capacity_bytes() => {}
        _ => {
            return invalid(format!(
                "{:?} of {len} bytes at {:?} runs past the device's end at {:#x}",
                req.op,
                req.addr,
                dev.capacity_bytes()
            ))
        }
    }
    for seg in &req.segments {
        if seg.len == 0 {
            return invalid(format!("segment at {} has no bytes", seg.offset));
        }
        // A buffer locked elsewhere (by a request in flight) is not waited for: the device
        // checks its bounds again when it locks it for the transfer.
        let Some(buf) = seg.buf.try_read() else {
            continue;
        };
        if seg
            .offset
            .checked_add(seg.len)
            .is_none_or(|e| e > buf.len())
        {
            return Err(crate::iov::segment_outside(seg.offset, seg.len, buf.len()));
        }
    }
    Ok(())
}
