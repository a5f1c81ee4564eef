//! Blocking helpers over the asynchronous [`BlockDevice`] contract.

use std::io;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use crate::buf::{BufRange, IoBuf};
use crate::request::{DevAddr, DeviceRequest};
use crate::BlockDevice;

/// A result slot that one thread fills and another waits on.
struct Oneshot {
    slot: Mutex<Option<io::Result<()>>>,
    cond: Condvar,
}

impl Oneshot {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            slot: Mutex::new(None),
            cond: Condvar::new(),
        })
    }

    fn complete(&self, res: io::Result<()>) {
        *self.slot.lock() = Some(res);
        self.cond.notify_all();
    }

    fn wait(&self) -> io::Result<()> {
        let mut slot = self.slot.lock();
        loop {
            if let Some(res) = slot.take() {
                return res;
            }
            self.cond.wait(&mut slot);
        }
    }
}

/// Blocking conveniences for metadata I/O and tests; each call submits and waits.
pub trait BlockDeviceExt: BlockDevice {
    /// Submits `req` and waits for its completion.
    fn submit_wait(&self, req: DeviceRequest) -> io::Result<()> {
        let done = Oneshot::new();
        let signal = Arc::clone(&done);
        self.submit(req, Box::new(move |res| signal.complete(res)));
        done.wait()
    }

    /// Reads `dst.len()` bytes at `addr`, splitting at the maximum request size.
    fn read_at(&self, addr: DevAddr, dst: &mut [u8]) -> io::Result<()> {
        let max = usize::try_from(self.max_request_bytes()).unwrap_or(usize::MAX);
        for (i, chunk) in dst.chunks_mut(max).enumerate() {
            let buf = IoBuf::zeroed(chunk.len()).shared();
            let seg = BufRange::new(buf.clone(), 0, chunk.len());
            self.submit_wait(DeviceRequest::read(addr + (i * max) as u64, vec![seg]))?;
            chunk.copy_from_slice(&buf.read());
        }
        Ok(())
    }

    /// Writes `src` at `addr`, splitting at the maximum request size.
    fn write_at(&self, addr: DevAddr, src: &[u8]) -> io::Result<()> {
        let max = usize::try_from(self.max_request_bytes()).unwrap_or(usize::MAX);
        for (i, chunk) in src.chunks(max).enumerate() {
            let mut buf = IoBuf::zeroed(chunk.len());
            buf.copy_from_slice(chunk);
            let seg = BufRange::new(buf.shared(), 0, chunk.len());
            self.submit_wait(DeviceRequest::write(addr + (i * max) as u64, vec![seg]))?;
        }
        Ok(())
    }

    /// Makes every completed write durable.
    fn flush(&self) -> io::Result<()> {
        self.submit_wait(DeviceRequest::flush())
    }
}

impl<D: BlockDevice + ?Sized> BlockDeviceExt for D {}
