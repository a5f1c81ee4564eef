//! Aligned data buffers shared between the page cache and devices.
//!
//! A folio's bytes live in an [`IoBuf`]: one aligned allocation, zeroed when made, aligned for
//! O_DIRECT. The cache and a device share it as a [`SharedBuf`]; the `RwLock` around it is the
//! only thing that lets a device fill a buffer while a reader copies out of another part of the
//! cache, so it is held for exactly the span of a copy or a device transfer, never across a wait
//! on anything else.
//!
//! Lock order: a device that holds several buffers of one request locks them in the order the
//! request lists them, which is file order; nothing takes a buffer lock and then waits for
//! another lock of the cache.

use std::alloc::{self, Layout};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::Arc;

use parking_lot::lock_api::{ArcRwLockReadGuard, ArcRwLockWriteGuard};
use parking_lot::{RawRwLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::frames::{Frame, FrameRead, FrameWrite, OwnedFrameRead, OwnedFrameWrite};

/// The alignment every [`IoBuf`] gets: enough for O_DIRECT on any logical block size up to
/// 4 KiB and for page-granular io_uring registration.
pub const IO_BUF_ALIGN: usize = 4096;

/// Buffers at least this long come straight from anonymous `mmap`: the kernel hands out
/// zeroed pages on first touch, where an aligned heap allocation would be `memset` first and
/// then faulted in, zeroing every byte twice.
const MMAP_MIN: usize = 64 << 10;

/// Buffers that are a multiple of this are placed on huge-page boundaries and advised to use
/// huge pages: a 2 MiB folio on 4 KiB pages costs a TLB miss and a page walk on most random
/// reads of it.
const HUGE_PAGE: usize = 2 << 20;

/// Buffers of a power-of-two length from [`IO_BUF_ALIGN`] up to (not including) [`MMAP_MIN`]
/// come from slabs: 2 MiB anonymous mappings cut into slots of one length. An aligned heap
/// allocation of 4 KiB costs the heap a second 4 KiB to align it, doubling the memory of a
/// cache of small folios; a slot costs nothing beside its bytes. The mappings are kept for
/// reuse. A freed slot stays resident, to be zeroed when next handed out, while its class
/// keeps no more than [`SLAB_RESIDENT_FREE`] so; past that a freed slot's pages go back to the
/// kernel (`MADV_DONTNEED`, which reads as zero again). Giving back every slot at once cost a
/// TLB shootdown on every free: a sixth of the time of a small cache of small folios churning.
const SLAB_BYTES: usize = 2 << 20;

/// Free bytes a slab class keeps resident.
const SLAB_RESIDENT_FREE: usize = 4 << 20;

/// A free slot: its address, and whether it still holds old bytes (resident) or reads as
/// zero (given back).
#[derive(Clone, Copy)]
struct Slot {
    addr: usize,
    resident: bool,
}

/// One slab length class: its free slots.
struct SlabClass {
    free: parking_lot::Mutex<SlabFree>,
}

struct SlabFree {
    slots: Vec<Slot>,
    resident_bytes: usize,
}

/// Slab classes for 4, 8, 16 and 32 KiB.
static SLABS: [SlabClass; 4] = [
    SlabClass::new(),
    SlabClass::new(),
    SlabClass::new(),
    SlabClass::new(),
];

impl SlabClass {
    const fn new() -> Self {
        Self {
            free: parking_lot::const_mutex(SlabFree {
                slots: Vec::new(),
                resident_bytes: 0,
            }),
        }
    }

    /// The class for buffers of `len` bytes, if they come from slabs: only whole pages of
    /// the system's page size, since a slot's pages may be given back on free (with 16 or
    /// 64 KiB pages a 4 KiB slot would share a page with live neighbours).
    fn of(len: usize) -> Option<&'static SlabClass> {
        if !len.is_power_of_two()
            || !(IO_BUF_ALIGN..MMAP_MIN).contains(&len)
            || len < system_page_size()
        {
            return None;
        }
        SLABS.get((len / IO_BUF_ALIGN).trailing_zeros() as usize)
    }

    /// A zeroed slot of `len` bytes.
    fn alloc(&self, len: usize) -> NonNull<u8> {
        let slot = {
            let mut free = self.free.lock();
            if free.slots.is_empty() {
                let raw = map_anonymous(SLAB_BYTES);
                // Small pages only: a huge page would keep freed slots resident (and fault in
                // 2 MiB on a slot's first touch) where transparent huge pages are always on.
                // SAFETY: advice on the mapping just made; failure only leaves the default.
                unsafe { libc::madvise(raw, SLAB_BYTES, libc::MADV_NOHUGEPAGE) };
                let base = raw as usize;
                // Handed out from the start of the mapping; fresh pages read as zero.
                free.slots.extend((0..SLAB_BYTES / len).rev().map(|i| Slot {
                    addr: base + i * len,
                    resident: false,
                }));
            }
            let slot = free.slots.pop();
            if let Some(Slot { resident: true, .. }) = slot {
                free.resident_bytes -= len;
            }
            slot
        };
        let Some(slot) = slot.and_then(|s| NonNull::new(s.addr as *mut u8).map(|p| (p, s))) else {
            alloc::handle_alloc_error(IoBuf::layout(len))
        };
        let (ptr, slot) = slot;
        if slot.resident {
            // SAFETY: the slot is `len` bytes inside a live slab mapping, free until now and
            // ours alone (it was just taken off the free list).
            unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, len) };
        }
        ptr
    }

    /// Takes back the slot at `ptr`, `len` bytes.
    ///
    /// # Safety
    /// `ptr` came from [`Self::alloc`] of this class with `len`, and nothing uses it after.
    unsafe fn free(&self, ptr: NonNull<u8>, len: usize) {
        let mut free = self.free.lock();
        let resident = free.resident_bytes + len <= SLAB_RESIDENT_FREE;
        if resident {
            free.resident_bytes += len;
        }
        let addr = ptr.as_ptr() as usize;
        if resident {
            free.slots.push(Slot { addr, resident });
            return;
        }
        drop(free);
        // SAFETY: the slot is page-aligned (of a whole number of system pages, see `of`),
        // `len` long, inside a live slab mapping and unused (the caller's contract); dropping
        // its pages makes it read as zeroes when next used.
        let rc = unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_DONTNEED) };
        // Where the pages could not be dropped the slot is zeroed when handed out again.
        let mut free = self.free.lock();
        if rc != 0 {
            free.resident_bytes += len;
        }
        free.slots.push(Slot {
            addr,
            resident: rc != 0,
        });
    }
}

/// A fresh private anonymous mapping of `len` bytes, zero-filled by the kernel on first
/// touch; an allocation failure (as the global allocator reports it) if there is none.
fn map_anonymous(len: usize) -> *mut libc::c_void {
    // SAFETY: a private anonymous mapping at an address of the kernel's choosing aliases
    // nothing; failure is checked below.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        alloc::handle_alloc_error(IoBuf::layout(len))
    }
    raw
}

/// The system's page size.
pub(crate) fn system_page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf reads a constant of the system.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(page).unwrap_or(usize::MAX)
    })
}

/// A zero-initialised, [`IO_BUF_ALIGN`]-aligned buffer of fixed length.
pub struct IoBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: `IoBuf` owns its allocation exclusively (like `Box<[u8]>`); moving it to another
// thread moves that ownership.
unsafe impl Send for IoBuf {}
// SAFETY: shared access only hands out `&[u8]`; mutation needs `&mut IoBuf`.
unsafe impl Sync for IoBuf {}

impl IoBuf {
    /// Allocates `len` zeroed bytes. `len` may be zero.
    ///
    /// # Panics
    /// Only when the allocator itself fails (as `Vec` does).
    pub fn zeroed(len: usize) -> Self {
        if len == 0 {
            return Self {
                ptr: NonNull::dangling(),
                len: 0,
            };
        }
        if let Some(class) = SlabClass::of(len) {
            return Self {
                ptr: class.alloc(len),
                len,
            };
        }
        if len >= MMAP_MIN {
            let huge = len % HUGE_PAGE == 0;
            let map_len = if huge { len + HUGE_PAGE } else { len };
            let raw = map_anonymous(map_len);
            let mut start = raw.cast::<u8>();
            if huge {
                let head = (HUGE_PAGE - start as usize % HUGE_PAGE) % HUGE_PAGE;
                let tail = map_len - head - len;
                // SAFETY: `head` and `tail` lie inside the mapping just made, which nothing
                // else uses; trimming them leaves `[start + head, + len)` mapped.
                unsafe {
                    if head > 0 {
                        libc::munmap(raw, head);
                    }
                    start = start.add(head);
                    if tail > 0 {
                        libc::munmap(start.add(len).cast(), tail);
                    }
                    // Advice only: without transparent huge pages this fails harmlessly.
                    libc::madvise(start.cast(), len, libc::MADV_HUGEPAGE);
                }
            }
            // Page-aligned (so IO_BUF_ALIGN-aligned) and zero-filled by the kernel.
            if let Some(ptr) = NonNull::new(start) {
                return Self { ptr, len };
            }
        }
        let layout = Self::layout(len);
        // SAFETY: `layout` has a non-zero size (checked above) and a valid power-of-two alignment.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        Self { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        match Layout::from_size_align(len, IO_BUF_ALIGN) {
            Ok(layout) => layout,
            Err(_) => panic!("IoBuf of {len} bytes exceeds the address space"),
        }
    }

    /// Wraps the buffer for sharing between the cache and devices.
    pub fn shared(self) -> SharedBuf {
        SharedBuf::from(self)
    }
}

impl Deref for IoBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `len` initialised bytes (zeroed at allocation, or dangling
        // with `len == 0`), owned by `self`, and borrowed immutably for the lifetime of `&self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for IoBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        if let Some(class) = SlabClass::of(self.len) {
            // SAFETY: buffers of this length come from this class (see `zeroed`), and no
            // borrow of the bytes outlives `self`.
            unsafe { class.free(self.ptr, self.len) }
        } else if self.len >= MMAP_MIN {
            // SAFETY: mapped in `zeroed` with exactly this length and not unmapped since; no
            // borrow of the bytes outlives `self`.
            let rc = unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
            debug_assert_eq!(rc, 0, "munmap of an IoBuf failed");
        } else if self.len != 0 {
            // SAFETY: allocated in `zeroed` with exactly this layout and not freed since.
            unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
        }
    }
}

impl fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoBuf").field("len", &self.len).finish()
    }
}

/// A buffer shared by the cache and the devices; see the module comment for the locking rule.
///
/// A handle: clones name the same buffer. Its bytes are reached only through the guards its
/// lock methods return, each of which derefs to the whole buffer.
#[derive(Clone)]
pub struct SharedBuf {
    repr: Repr,
}

/// What backs a [`SharedBuf`].
#[derive(Clone)]
enum Repr {
    /// An [`IoBuf`] of its own behind a lock, and its length, kept outside the lock so that
    /// asking for it never waits.
    Heap { buf: Arc<RwLock<IoBuf>>, len: usize },
    /// A frame of a [`FrameArena`](crate::FrameArena), locked by its descriptor.
    Frame(Frame),
}

impl SharedBuf {
    /// Length of the buffer in bytes.
    pub fn len(&self) -> usize {
        match &self.repr {
            Repr::Heap { len, .. } => *len,
            Repr::Frame(f) => f.len(),
        }
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shared access to the bytes, waiting while a writer holds the buffer.
    pub fn read(&self) -> BufRead<'_> {
        match &self.repr {
            Repr::Heap { buf, .. } => BufRead {
                repr: ReadRepr::Heap(buf.read()),
            },
            Repr::Frame(f) => BufRead {
                repr: ReadRepr::Frame(f.read()),
            },
        }
    }

    /// Exclusive access to the bytes, waiting while anyone else holds the buffer.
    pub fn write(&self) -> BufWrite<'_> {
        match &self.repr {
            Repr::Heap { buf, .. } => BufWrite {
                repr: WriteRepr::Heap(buf.write()),
            },
            Repr::Frame(f) => BufWrite {
                repr: WriteRepr::Frame(f.write()),
            },
        }
    }

    /// As [`read`](Self::read), or `None` at once if a writer holds the buffer.
    pub fn try_read(&self) -> Option<BufRead<'_>> {
        match &self.repr {
            Repr::Heap { buf, .. } => buf.try_read().map(|g| BufRead {
                repr: ReadRepr::Heap(g),
            }),
            Repr::Frame(f) => f.try_read().map(|g| BufRead {
                repr: ReadRepr::Frame(g),
            }),
        }
    }

    /// As [`write`](Self::write), or `None` at once if anyone else holds the buffer.
    pub fn try_write(&self) -> Option<BufWrite<'_>> {
        match &self.repr {
            Repr::Heap { buf, .. } => buf.try_write().map(|g| BufWrite {
                repr: WriteRepr::Heap(g),
            }),
            Repr::Frame(f) => f.try_write().map(|g| BufWrite {
                repr: WriteRepr::Frame(g),
            }),
        }
    }

    /// As [`read`](Self::read), with a guard that keeps the buffer alive on its own, so that it
    /// can outlive this handle and move to another thread.
    pub fn read_owned(&self) -> OwnedBufRead {
        match &self.repr {
            Repr::Heap { buf, .. } => OwnedBufRead {
                repr: OwnedReadRepr::Heap(buf.read_arc()),
            },
            Repr::Frame(f) => OwnedBufRead {
                repr: OwnedReadRepr::Frame(f.read_owned()),
            },
        }
    }

    /// As [`write`](Self::write), with a guard that keeps the buffer alive on its own.
    pub fn write_owned(&self) -> OwnedBufWrite {
        match &self.repr {
            Repr::Heap { buf, .. } => OwnedBufWrite {
                repr: OwnedWriteRepr::Heap(buf.write_arc()),
            },
            Repr::Frame(f) => OwnedBufWrite {
                repr: OwnedWriteRepr::Frame(f.write_owned()),
            },
        }
    }

    /// As [`read_owned`](Self::read_owned), or `None` at once if a writer holds the buffer.
    pub fn try_read_owned(&self) -> Option<OwnedBufRead> {
        match &self.repr {
            Repr::Heap { buf, .. } => buf.try_read_arc().map(|g| OwnedBufRead {
                repr: OwnedReadRepr::Heap(g),
            }),
            Repr::Frame(f) => f.try_read_owned().map(|g| OwnedBufRead {
                repr: OwnedReadRepr::Frame(g),
            }),
        }
    }

    /// As [`write_owned`](Self::write_owned), or `None` at once if anyone else holds the
    /// buffer.
    pub fn try_write_owned(&self) -> Option<OwnedBufWrite> {
        match &self.repr {
            Repr::Heap { buf, .. } => buf.try_write_arc().map(|g| OwnedBufWrite {
                repr: OwnedWriteRepr::Heap(g),
            }),
            Repr::Frame(f) => f.try_write_owned().map(|g| OwnedBufWrite {
                repr: OwnedWriteRepr::Frame(g),
            }),
        }
    }

    /// Whether `a` and `b` name the same buffer.
    pub fn same(a: &Self, b: &Self) -> bool {
        match (&a.repr, &b.repr) {
            (Repr::Heap { buf: a, .. }, Repr::Heap { buf: b, .. }) => Arc::ptr_eq(a, b),
            (Repr::Frame(a), Repr::Frame(b)) => Frame::same(a, b),
            _ => false,
        }
    }

    /// The buffer's identity, for debug output: equal for handles of the same buffer.
    pub fn as_ptr(&self) -> *const () {
        match &self.repr {
            Repr::Heap { buf, .. } => Arc::as_ptr(buf).cast(),
            Repr::Frame(f) => f.as_ptr(),
        }
    }

    /// The [`IoBuf`] itself, if this is the only handle to it; `None` (dropping this handle)
    /// otherwise.
    pub fn into_inner(self) -> Option<IoBuf> {
        match self.repr {
            Repr::Heap { buf, .. } => Arc::try_unwrap(buf).ok().map(RwLock::into_inner),
            Repr::Frame(_) => None,
        }
    }
}

impl From<IoBuf> for SharedBuf {
    fn from(buf: IoBuf) -> Self {
        Self {
            repr: Repr::Heap {
                len: buf.len(),
                buf: Arc::new(RwLock::new(buf)),
            },
        }
    }
}

impl From<Frame> for SharedBuf {
    fn from(frame: Frame) -> Self {
        Self {
            repr: Repr::Frame(frame),
        }
    }
}

impl fmt::Debug for SharedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedBuf")
            .field("buf", &self.as_ptr())
            .field("len", &self.len())
            .finish()
    }
}

/// Shared access to the bytes of a [`SharedBuf`], from [`SharedBuf::read`].
pub struct BufRead<'a> {
    repr: ReadRepr<'a>,
}

/// The lock held by a [`BufRead`], by what backs the buffer.
enum ReadRepr<'a> {
    Heap(RwLockReadGuard<'a, IoBuf>),
    Frame(FrameRead<'a>),
}

/// Exclusive access to the bytes of a [`SharedBuf`], from [`SharedBuf::write`].
pub struct BufWrite<'a> {
    repr: WriteRepr<'a>,
}

/// The lock held by a [`BufWrite`], by what backs the buffer.
enum WriteRepr<'a> {
    Heap(RwLockWriteGuard<'a, IoBuf>),
    Frame(FrameWrite<'a>),
}

/// Shared access to the bytes of a [`SharedBuf`] that keeps the buffer alive, from
/// [`SharedBuf::read_owned`].
pub struct OwnedBufRead {
    repr: OwnedReadRepr,
}

/// The lock held by an [`OwnedBufRead`], by what backs the buffer.
enum OwnedReadRepr {
    Heap(ArcRwLockReadGuard<RawRwLock, IoBuf>),
    Frame(OwnedFrameRead),
}

/// Exclusive access to the bytes of a [`SharedBuf`] that keeps the buffer alive, from
/// [`SharedBuf::write_owned`].
pub struct OwnedBufWrite {
    repr: OwnedWriteRepr,
}

/// The lock held by an [`OwnedBufWrite`], by what backs the buffer.
enum OwnedWriteRepr {
    Heap(ArcRwLockWriteGuard<RawRwLock, IoBuf>),
    Frame(OwnedFrameWrite),
}

impl Deref for BufRead<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.repr {
            ReadRepr::Heap(g) => g,
            ReadRepr::Frame(g) => g,
        }
    }
}

impl Deref for BufWrite<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.repr {
            WriteRepr::Heap(g) => g,
            WriteRepr::Frame(g) => g,
        }
    }
}

impl DerefMut for BufWrite<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.repr {
            WriteRepr::Heap(g) => g,
            WriteRepr::Frame(g) => g,
        }
    }
}

impl Deref for OwnedBufRead {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.repr {
            OwnedReadRepr::Heap(g) => g,
            OwnedReadRepr::Frame(g) => g,
        }
    }
}

impl Deref for OwnedBufWrite {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.repr {
            OwnedWriteRepr::Heap(g) => g,
            OwnedWriteRepr::Frame(g) => g,
        }
    }
}

impl DerefMut for OwnedBufWrite {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.repr {
            OwnedWriteRepr::Heap(g) => g,
            OwnedWriteRepr::Frame(g) => g,
        }
    }
}

/// A byte range of a shared buffer: one scatter-gather element of a device request.
#[derive(Clone)]
pub struct BufRange {
    /// The buffer.
    pub buf: SharedBuf,
    /// Offset of the first byte within `buf`.
    pub offset: usize,
    /// Number of bytes.
    pub len: usize,
}

impl BufRange {
    /// A range of `buf`.
    pub fn new(buf: SharedBuf, offset: usize, len: usize) -> Self {
        Self { buf, offset, len }
    }
}

impl fmt::Debug for BufRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufRange")
            .field("buf", &self.buf.as_ptr())
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_zeroed_and_aligned() {
        for len in [
            0,
            1,
            512,
            4096,
            MMAP_MIN - 1,
            MMAP_MIN,
            65536 + 7,
            HUGE_PAGE,
            2 * HUGE_PAGE,
        ] {
            let buf = IoBuf::zeroed(len);
            assert_eq!(buf.len(), len);
            assert!(buf.iter().all(|&b| b == 0));
            if len > 0 {
                assert_eq!(buf.as_ptr() as usize % IO_BUF_ALIGN, 0);
            }
            if len >= HUGE_PAGE {
                assert_eq!(buf.as_ptr() as usize % HUGE_PAGE, 0, "huge-page aligned");
            }
        }
    }

    #[test]
    fn small_buffers_come_from_slabs_and_are_zero_when_reused() {
        for len in [4096, 8192, 16384, 32768] {
            // Slots of one slab are adjacent: no alignment padding between them.
            let a = IoBuf::zeroed(len);
            let b = IoBuf::zeroed(len);
            assert_eq!(a.as_ptr() as usize % IO_BUF_ALIGN, 0);
            assert_eq!(
                (b.as_ptr() as usize).abs_diff(a.as_ptr() as usize) % len,
                0,
                "slots of {len} bytes"
            );
            let mut c = IoBuf::zeroed(len);
            c.fill(0xa5);
            let addr = c.as_ptr() as usize;
            drop(c);
            // The slot freed last is handed out next (other tests may race for it: look a few
            // times).
            let again: Vec<IoBuf> = (0..64).map(|_| IoBuf::zeroed(len)).collect();
            assert!(again.iter().all(|buf| buf.iter().all(|&x| x == 0)));
            assert!(
                again.iter().any(|buf| buf.as_ptr() as usize == addr),
                "the freed slot of {len} bytes was not reused"
            );
        }
    }

    #[test]
    fn writes_are_visible_through_the_shared_lock() {
        let shared = IoBuf::zeroed(8192).shared();
        shared.write()[100..104].copy_from_slice(b"abcd");
        assert_eq!(&shared.read()[100..104], b"abcd");
    }

    #[test]
    fn handles_name_one_buffer_and_lock_it_together() {
        let a = IoBuf::zeroed(4096).shared();
        let b = a.clone();
        assert!(SharedBuf::same(&a, &b));
        assert_eq!(a.as_ptr(), b.as_ptr());
        assert!(!SharedBuf::same(&a, &IoBuf::zeroed(4096).shared()));
        assert_eq!((a.len(), a.is_empty()), (4096, false));
        assert!(IoBuf::zeroed(0).shared().is_empty());

        let w = a.write_owned();
        assert_eq!(a.len(), 4096, "the length never waits for the lock");
        assert!(b.try_read().is_none() && b.try_write_owned().is_none());
        drop(w);
        let r = a.read_owned();
        assert!(b.try_read().is_some() && b.try_write().is_none());
        assert!(b.try_read_owned().is_some());
        drop(r);

        // Owned guards keep the buffer alive past every handle.
        let mut w = b.try_write_owned().unwrap();
        drop((a, b));
        w[0] = 7;
        assert_eq!(w.len(), 4096);
    }

    #[test]
    fn owned_guards_move_between_threads() {
        fn send<T: Send>() {}
        send::<OwnedBufRead>();
        send::<OwnedBufWrite>();
        send::<SharedBuf>();
    }

    #[test]
    fn the_last_handle_gives_the_buffer_back() {
        let a = IoBuf::zeroed(8192).shared();
        a.write()[0] = 1;
        let b = a.clone();
        assert!(a.into_inner().is_none());
        let buf = b.into_inner().unwrap();
        assert_eq!((buf.len(), buf[0]), (8192, 1));
    }
}
