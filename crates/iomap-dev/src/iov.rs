//! A request's buffers locked for a transfer and described as `iovec`s for the kernel.
//!
//! A read fills its buffers, so it holds their write locks; a write holds read locks. The locks
//! are owned guards so that a request in flight on io_uring can carry them to the completion
//! thread. A buffer named by several segments is locked once: locking it twice would deadlock
//! against ourselves.

use std::io;

use crate::buf::{OwnedBufRead, OwnedBufWrite, SharedBuf};
use crate::request::{DeviceRequest, Op};

/// The most iovecs one system call or io_uring operation takes (Linux's `IOV_MAX`).
pub(crate) const IOV_MAX: usize = 1024;

/// Held only to be dropped: the locks are the point, not the values.
#[expect(
    dead_code,
    reason = "the guards are held for their locks and never read"
)]
enum Guards {
    /// Held while the device fills the buffers.
    Fill(Vec<OwnedBufWrite>),
    /// Held while the device copies from the buffers.
    Drain(Vec<OwnedBufRead>),
}

/// The segments of one read or write, locked, as the iovecs still to transfer.
pub(crate) struct LockedIo {
    /// Keeps every iovec's memory alive and ours; never read, only dropped.
    _guards: Guards,
    iov: Vec<libc::iovec>,
    /// Index of the first iovec not yet fully transferred.
    first: usize,
    /// Device byte address of the next byte to transfer.
    pub pos: u64,
    /// Bytes still to transfer.
    pub remaining: u64,
}

// SAFETY: the raw pointers in `iov` point into buffers whose locks `_guards` holds; the guards
// are `Send`, and whoever holds a `LockedIo` is the only user of those pointers.
unsafe impl Send for LockedIo {}

/// Every segment inside its buffer; `lens[owner[i]]` is segment i's buffer length.
fn check_segments(req: &DeviceRequest, owner: &[usize], lens: &[usize]) -> io::Result<()> {
    for (seg, &k) in req.segments.iter().zip(owner) {
        if seg
            .offset
            .checked_add(seg.len)
            .is_none_or(|end| end > lens[k])
        {
            return Err(segment_outside(seg.offset, seg.len, lens[k]));
        }
    }
    Ok(())
}

/// The error for a segment that does not lie within its buffer.
pub(crate) fn segment_outside(offset: usize, len: usize, buf_len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("segment {offset}+{len} lies outside its {buf_len}-byte buffer"),
    )
}

impl LockedIo {
    /// Locks the buffers of a read or write and describes them as iovecs, in request order.
    /// Fails if a segment lies outside its buffer (checked here, under the lock, because
    /// [`check_request`](crate::check_request) skips buffers it finds locked).
    pub fn lock(req: &DeviceRequest) -> io::Result<Self> {
        Self::lock_with(req, true)
            .unwrap_or_else(|| Err(io::Error::other("a blocking buffer lock gave up")))
    }

    /// As [`lock`](Self::lock), but gives up (`None`), holding nothing, if any buffer is
    /// locked elsewhere: for a thread that must never wait on a lock another of its own
    /// requests holds.
    pub fn try_lock(req: &DeviceRequest) -> Option<io::Result<Self>> {
        Self::lock_with(req, false)
    }

    fn lock_with(req: &DeviceRequest, wait: bool) -> Option<io::Result<Self>> {
        // Each distinct buffer once, in first-use order, and which of them each segment uses.
        let mut bufs: Vec<&SharedBuf> = Vec::new();
        let owner: Vec<usize> = req
            .segments
            .iter()
            .map(
                |s| match bufs.iter().position(|b| SharedBuf::same(b, &s.buf)) {
                    Some(k) => k,
                    None => {
                        bufs.push(&s.buf);
                        bufs.len() - 1
                    }
                },
            )
            .collect();
        let mut iov = Vec::with_capacity(req.segments.len());
        let guards = if req.op == Op::Read {
            let mut guards: Vec<_> = bufs
                .iter()
                .map(|b| {
                    if wait {
                        Some(b.write_owned())
                    } else {
                        b.try_write_owned()
                    }
                })
                .collect::<Option<_>>()?;
            let lens: Vec<usize> = guards.iter().map(|g| g.len()).collect();
            if let Err(e) = check_segments(req, &owner, &lens) {
                return Some(Err(e));
            }
            // One base pointer per buffer, taken once, so that no later borrow of the buffer
            // invalidates the iovecs derived from it.
            let bases: Vec<*mut u8> = guards.iter_mut().map(|g| g.as_mut_ptr()).collect();
            for (seg, &k) in req.segments.iter().zip(&owner) {
                // In bounds: checked just above.
                iov.push(libc::iovec {
                    iov_base: bases[k].wrapping_add(seg.offset).cast(),
                    iov_len: seg.len,
                });
            }
            Guards::Fill(guards)
        } else {
            let guards: Vec<_> = bufs
                .iter()
                .map(|b| {
                    if wait {
                        Some(b.read_owned())
                    } else {
                        b.try_read_owned()
                    }
                })
                .collect::<Option<_>>()?;
            let lens: Vec<usize> = guards.iter().map(|g| g.len()).collect();
            if let Err(e) = check_segments(req, &owner, &lens) {
                return Some(Err(e));
            }
            for (seg, &k) in req.segments.iter().zip(&owner) {
                let bytes = &guards[k][seg.offset..seg.offset + seg.len];
                iov.push(libc::iovec {
                    // Never written through: the device only reads from it.
                    iov_base: bytes.as_ptr().cast_mut().cast(),
                    iov_len: bytes.len(),
                });
            }
            Guards::Drain(guards)
        };
        Some(Ok(Self {
            _guards: guards,
            iov,
            first: 0,
            pos: req.addr.0,
            remaining: req.len(),
        }))
    }

    /// With `O_DIRECT`, checks that every segment's memory is aligned to `mem_align` and its
    /// length to the logical block size `lbs`, so a misaligned request is refused with a reason
    /// instead of failing in the kernel with a bare `EINVAL`.
    pub fn check_direct(&self, mem_align: usize, lbs: u32) -> io::Result<()> {
        let lbs = lbs as usize;
        match self
            .iov
            .iter()
            .find(|v| v.iov_base as usize % mem_align != 0 || v.iov_len % lbs != 0)
        {
            Some(v) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "O_DIRECT needs memory aligned to {mem_align} bytes and lengths to {lbs}: \
                     segment at {:p}, {} bytes",
                    v.iov_base, v.iov_len
                ),
            )),
            None => Ok(()),
        }
    }

    /// The iovecs still to transfer, at most [`IOV_MAX`] of them: pointer and count for a
    /// system call. They stay valid while `self` lives and is not advanced.
    pub fn pending(&self) -> (*const libc::iovec, usize) {
        let rest = &self.iov[self.first..];
        (rest.as_ptr(), rest.len().min(IOV_MAX))
    }

    /// Records that `done` more bytes moved, trimming the iovecs to what is left.
    pub fn advance(&mut self, done: usize) {
        let mut left = done;
        self.pos += done as u64;
        self.remaining -= done as u64;
        while let Some(v) = self.iov.get_mut(self.first) {
            if left < v.iov_len {
                // Stays within the same buffer: `left` is less than what remains of it.
                v.iov_base = v.iov_base.cast::<u8>().wrapping_add(left).cast();
                v.iov_len -= left;
                return;
            }
            left -= v.iov_len;
            self.first += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::{BufRange, IoBuf};
    use crate::request::{check_request, DevAddr};
    use crate::MemDevice;

    #[test]
    fn checking_a_request_never_waits_for_a_locked_buffer() {
        let dev = MemDevice::new(1 << 20);
        let buf = IoBuf::zeroed(4096).shared();
        let held = buf.write();
        let req = DeviceRequest::read(DevAddr(0), vec![BufRange::new(buf.clone(), 0, 4096)]);
        // With a blocking look at the buffer this would never return.
        check_request(&dev, &req).unwrap();
        drop(held);
        // A segment outside its buffer is caught when the device locks it, too.
        let bad = DeviceRequest::write(DevAddr(0), vec![BufRange::new(buf, 2048, 4096)]);
        let err = LockedIo::lock(&bad).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(
            err.to_string().contains("outside its 4096-byte buffer"),
            "{err}"
        );
        assert!(LockedIo::try_lock(&bad).unwrap().is_err());
    }
}
