//! A sparse in-memory device: chunks are allocated on first write and read as zeros before.

use std::io;

use parking_lot::RwLock;

use crate::request::{check_request, Completion, DeviceRequest, Op};
use crate::BlockDevice;

const CHUNK_BYTES: usize = 1 << 20;

/// A block device held in memory. Requests complete before `submit` returns.
pub struct MemDevice {
    chunks: Vec<RwLock<Option<Box<[u8]>>>>,
    capacity: u64,
    logical_block_size: u32,
    max_request_bytes: u64,
}

impl MemDevice {
    /// A zeroed device of `capacity` bytes with 512-byte logical blocks and 1 MiB requests.
    pub fn new(capacity: u64) -> Self {
        Self::with_geometry(capacity, 512, 1 << 20)
    }

    /// A zeroed device with the given logical block size and maximum request size.
    ///
    /// # Panics
    /// If the block size is not a power of two in 512..=65536, or the request size not a
    /// non-zero multiple of it, or the capacity not a multiple of it: these are programming
    /// errors in whoever builds the device.
    pub fn with_geometry(capacity: u64, logical_block_size: u32, max_request_bytes: u64) -> Self {
        assert!(
            logical_block_size.is_power_of_two() && (512..=65536).contains(&logical_block_size),
            "logical block size {logical_block_size} is not a power of two in 512..=65536"
        );
        let lbs = u64::from(logical_block_size);
        assert!(max_request_bytes >= lbs && max_request_bytes % lbs == 0);
        assert!(
            capacity % lbs == 0,
            "capacity {capacity} is not a multiple of {lbs}"
        );
        let nchunks = capacity.div_ceil(CHUNK_BYTES as u64) as usize;
        Self {
            chunks: (0..nchunks).map(|_| RwLock::new(None)).collect(),
            capacity,
            logical_block_size,
            max_request_bytes,
        }
    }

    /// Copies device bytes at `addr` into `dst`.
    fn copy_out(&self, mut addr: u64, mut dst: &mut [u8]) {
        while !dst.is_empty() {
            let (idx, off) = ((addr as usize) / CHUNK_BYTES, (addr as usize) % CHUNK_BYTES);
            let n = dst.len().min(CHUNK_BYTES - off);
            let (head, tail) = dst.split_at_mut(n);
            match &*self.chunks[idx].read() {
                Some(chunk) => head.copy_from_slice(&chunk[off..off + n]),
                None => head.fill(0),
            }
            dst = tail;
            addr += n as u64;
        }
    }

    /// Copies `src` onto the device at `addr`.
    fn copy_in(&self, mut addr: u64, mut src: &[u8]) {
        while !src.is_empty() {
            let (idx, off) = ((addr as usize) / CHUNK_BYTES, (addr as usize) % CHUNK_BYTES);
            let n = src.len().min(CHUNK_BYTES - off);
            let mut chunk = self.chunks[idx].write();
            let chunk = chunk.get_or_insert_with(|| vec![0u8; CHUNK_BYTES].into_boxed_slice());
            chunk[off..off + n].copy_from_slice(&src[..n]);
            src = &src[n..];
            addr += n as u64;
        }
    }

    fn execute(&self, req: &DeviceRequest) -> io::Result<()> {
        check_request(self, req)?;
        let mut addr = req.addr.0;
        for seg in &req.segments {
            let range = seg.offset..seg.offset + seg.len;
            let outside = |len| crate::iov::segment_outside(seg.offset, seg.len, len);
            match req.op {
                Op::Read => {
                    let mut buf = seg.buf.write();
                    let len = buf.len();
                    self.copy_out(addr, buf.get_mut(range).ok_or_else(|| outside(len))?);
                }
                Op::Write => {
                    let buf = seg.buf.read();
                    self.copy_in(addr, buf.get(range).ok_or_else(|| outside(buf.len()))?);
                }
                Op::Flush => {}
            }
            addr += seg.len as u64;
        }
        Ok(())
    }
}

impl BlockDevice for MemDevice {
    fn capacity_bytes(&self) -> u64 {
        self.capacity
    }
    fn logical_block_size(&self) -> u32 {
        self.logical_block_size
    }
    fn max_request_bytes(&self) -> u64 {
        self.max_request_bytes
    }
    fn submit(&self, req: DeviceRequest, done: Completion) {
        let res = self.execute(&req);
        drop(req);
        done(res)
    }
}
