//! Block devices for the iomap engine.
//!
//! Every device implements one small trait, [`BlockDevice`]: it takes a [`DeviceRequest`] (read,
//! write or flush of a byte range, scatter-gathered over shared folio buffers) and reports the
//! outcome once through a [`Completion`]. Submission is asynchronous by contract: a device may
//! complete the request before `submit` returns (the memory device does) or later on another
//! thread (io_uring), and callers must be correct either way. Wrappers compose: [`FaultDevice`],
//! [`LogDevice`] and [`CrashDevice`] take any other device.
//!
//! Addresses and lengths are in bytes and must be multiples of the device's logical block size;
//! a request is never longer than [`BlockDevice::max_request_bytes`]. Requests that break these
//! rules complete with `InvalidInput` and a message saying which rule.

#![deny(unsafe_op_in_unsafe_fn)]

mod backing;
mod buf;
mod crash;
mod fault;
mod file;
mod frames;
mod iov;
mod log;
mod mem;
mod request;
mod select;
mod sync;
mod uring;

pub use backing::DeviceOptions;
pub use buf::{
    BufRange, BufRead, BufWrite, IoBuf, OwnedBufRead, OwnedBufWrite, SharedBuf, IO_BUF_ALIGN,
};
pub use crash::{CrashDevice, CrashEvent, Pending};
pub use fault::{FaultDevice, FaultKind, FaultRule, InjectedFault};
pub use file::FileDevice;
pub use frames::{
    ArenaStats, Frame, FrameArena, FrameRange, FrameRead, FrameTable, FrameWrite, OwnedFrameRead,
    OwnedFrameWrite, FRAME_ORDER_BITS,
};
pub use log::{LogDevice, LoggedRequest};
pub use mem::MemDevice;
pub use request::{check_request, Completion, DevAddr, DeviceRequest, Op};
pub use select::{open_device, DeviceKind, UnknownDevice};
pub use sync::BlockDeviceExt;
pub use uring::UringDevice;

/// A block device: the contract every device of this crate keeps.
pub trait BlockDevice: Send + Sync {
    /// Size of the device in bytes.
    fn capacity_bytes(&self) -> u64;

    /// The smallest unit of addressing and transfer, a power of two from 512 to 65536.
    fn logical_block_size(&self) -> u32;

    /// The longest read or write request accepted, a multiple of the logical block size.
    fn max_request_bytes(&self) -> u64;

    /// Starts `req` and arranges for `done` to be called exactly once with its outcome.
    ///
    /// Writes are durable only after a completed flush, unless submitted with FUA, in which case
    /// they are durable when they complete. `done` may run before `submit` returns, on the
    /// caller's thread, so the caller must hold no lock that `done` takes.
    fn submit(&self, req: DeviceRequest, done: Completion);
}

impl<D: BlockDevice + ?Sized> BlockDevice for std::sync::Arc<D> {
    fn capacity_bytes(&self) -> u64 {
        (**self).capacity_bytes()
    }
    fn logical_block_size(&self) -> u32 {
        (**self).logical_block_size()
    }
    fn max_request_bytes(&self) -> u64 {
        (**self).max_request_bytes()
    }
    fn submit(&self, req: DeviceRequest, done: Completion) {
        (**self).submit(req, done)
    }
}
