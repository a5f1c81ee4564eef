//! Frames: the cache's folio memory, cut from large chunks, with one word of state per unit.
//!
//! A cache of small folios is mostly metadata unless each folio costs almost nothing beside its
//! bytes. So folio memory is not allocated folio by folio: a [`FrameArena`] maps chunks of at
//! least 2 MiB and hands out frames, naturally aligned power-of-two runs of units (the cache's
//! page size), by the buddy system. Each unit has a descriptor of two 32-bit words, as the
//! kernel has a `struct page` per page: a word for the frame's owner (the cache keeps its folio
//! flags there) and a word the arena keeps, holding the reference count, a reader-writer lock
//! over the frame's bytes, and the frame's order. A [`Frame`] handle holds a reference; the
//! frame goes back to the arena when the last one goes. A [`FrameTable`] keeps frames by key in
//! four bytes each.
//!
//! Waiting is done as the kernel does for folios: on hashed wait queues keyed by the word's
//! address (`parking_lot_core`), so a descriptor needs no queue of its own.
//!
//! Memory safety rests on two invariants the arena keeps: allocated frames never overlap, and
//! a frame is freed only when no handle (and so no guard) refers to it. The bytes of a frame are
//! reached only through its lock's guards.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;
use parking_lot_core::{DEFAULT_PARK_TOKEN, DEFAULT_UNPARK_TOKEN};

use crate::buf::{system_page_size, IoBuf};

/// The reference count: the low 20 bits of the arena's word.
const REFS: u32 = 0xf_ffff;
/// One reader of the frame's bytes.
const READER: u32 = 1 << 20;
/// The count of readers.
const READERS: u32 = 0xff << 20;
/// A writer holds the bytes.
const WRITER: u32 = 1 << 28;
/// A writer waits for the bytes: readers that would wait let it go first.
const WRITER_WAITING: u32 = 1 << 29;
/// Someone sleeps waiting for the bytes' lock.
const DATA_WAITERS: u32 = 1 << 30;
/// The frame has an extension (see [`Frame::with_ext`]).
const HAS_EXT: u32 = 1 << 31;
/// The frame's order (log2 of its units) is kept in bits 10 to 14 of the owner's word, which
/// the owner leaves alone (see [`Frame::word`]).
const ORDER_SHIFT: u32 = 10;
/// The owner's word's bits that are the arena's.
pub const FRAME_ORDER_BITS: u32 = 0x1f << ORDER_SHIFT;

/// Chunks are at least this big (a huge page).
const MIN_CHUNK: usize = 2 << 20;
/// Chunks per second-level table of the chunk directory.
const LEAF_CHUNKS: usize = 1024;
/// Ids are below this: with 4 KiB units, an arena of up to 1 TiB.
const MAX_UNITS: u64 = 1 << 28;
/// Spins before a lock waiter sleeps.
const SPINS: u32 = 64;

/// One unit's descriptor.
#[derive(Default)]
struct Desc {
    /// The owner's word.
    word: AtomicU32,
    /// The arena's word: references, data lock, order.
    state: AtomicU32,
}

/// A mapped run of units.
struct Chunk {
    /// First byte of `mem`, taken once so no later borrow of `mem` is needed.
    base: NonNull<u8>,
    /// Owns the mapping; never touched after `base` was taken, only dropped.
    _mem: IoBuf,
    /// Id of the chunk's first unit.
    first_id: u32,
    desc: Box<[Desc]>,
    /// Extensions by unit index.
    ext: Mutex<HashMap<u32, Box<dyn Any + Send + Sync>>>,
    arena: Weak<Arena>,
}

// SAFETY: `base` points into `_mem`, which the chunk owns for its whole life; the bytes are
// reached only through frame guards, whose locks make shared access read-only and exclusive
// access unique.
unsafe impl Send for Chunk {}
// SAFETY: as above; every other field is `Sync`.
unsafe impl Sync for Chunk {}

/// Free blocks by order (their first unit ids), and which units' memory is resident.
struct Free {
    lists: Vec<BTreeSet<u32>>,
    chunks: u32,
    /// A bit per unit, by chunk: set while the unit's memory is resident (from a frame's
    /// allocation until the arena gives the memory back).
    resident: Vec<Box<[u64]>>,
}

impl Free {
    /// Units `[id, id + n)` of one chunk, as (chunk, first unit in it).
    fn at(&self, id: u32, max_order: u32) -> (usize, usize) {
        (
            (id >> max_order) as usize,
            (id & ((1 << max_order) - 1)) as usize,
        )
    }

    /// How many of units `[id, id + n)` are resident.
    fn resident_units(&self, id: u32, n: usize, max_order: u32) -> u64 {
        let (c, first) = self.at(id, max_order);
        (first..first + n)
            .filter(|&u| self.resident[c][u / 64] & 1 << (u % 64) != 0)
            .count() as u64
    }

    /// Marks units `[id, id + n)` resident or not.
    fn set_resident(&mut self, id: u32, n: usize, max_order: u32, on: bool) {
        let (c, first) = self.at(id, max_order);
        for u in first..first + n {
            if on {
                self.resident[c][u / 64] |= 1 << (u % 64);
            } else {
                self.resident[c][u / 64] &= !(1 << (u % 64));
            }
        }
    }

    /// The runs of resident units in `[id, id + n)`, as (first id, units).
    fn resident_runs(&self, id: u32, n: usize, max_order: u32) -> Vec<(u32, usize)> {
        let (c, first) = self.at(id, max_order);
        let bits = &self.resident[c];
        let set = |u: usize| bits[u / 64] & 1 << (u % 64) != 0;
        let end = first + n;
        let mut runs = Vec::new();
        let mut u = first;
        while u < end {
            let rest = bits[u / 64] >> (u % 64);
            if rest == 0 {
                u = (u / 64 + 1) * 64;
                continue;
            }
            u += rest.trailing_zeros() as usize;
            if u >= end {
                break;
            }
            let start = u;
            while u < end && set(u) {
                u += if u % 64 == 0 && u + 64 <= end && bits[u / 64] == u64::MAX {
                    64
                } else {
                    1
                };
            }
            runs.push((id + (start - first) as u32, u - start));
        }
        runs
    }
}

/// A second-level table of the chunk directory.
type Leaf = Box<[OnceLock<Slot>]>;

/// A chunk in the directory, with its descriptors' address at hand, so finding a frame's
/// descriptor from its id takes no load from the chunk itself.
struct Slot {
    chunk: Arc<Chunk>,
    desc: NonNull<Desc>,
    base: NonNull<u8>,
    unit_shift: u8,
}

// SAFETY: `desc` points into `chunk.desc`, which the slot's `Arc` keeps alive and never moves;
// descriptors are atomics, shared by design.
unsafe impl Send for Slot {}
// SAFETY: as above.
unsafe impl Sync for Slot {}

struct Arena {
    unit_shift: u32,
    /// log2 of the units in a chunk: the largest order.
    max_order: u32,
    max_chunks: u32,
    /// Chunks by number, in two levels made on first need, so finding one takes no lock.
    dir: Box<[OnceLock<Leaf>]>,
    free: Mutex<Free>,
    live_bytes: AtomicU64,
    held_bytes: AtomicU64,
    reused: AtomicU64,
    fresh: AtomicU64,
    trimmed: AtomicU64,
}

/// What an arena holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaStats {
    /// Bytes of frames handed out and not yet freed.
    pub live_bytes: u64,
    /// Bytes of free frames whose memory is resident, kept for reuse.
    pub held_bytes: u64,
    /// Bytes of chunks mapped (live, held, and free memory given back to the kernel).
    pub mapped_bytes: u64,
    /// Bytes of descriptors.
    pub descriptor_bytes: u64,
    /// Frames handed out from resident free memory.
    pub reused: u64,
    /// Frames handed out from memory not yet touched, or given back to the kernel.
    pub fresh: u64,
    /// Bytes of free memory given back to the kernel by [`FrameArena::trim`].
    pub trimmed_bytes: u64,
}

/// Where frames come from: see the module comment.
#[derive(Clone)]
pub struct FrameArena {
    inner: Arc<Arena>,
}

impl fmt::Debug for FrameArena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameArena")
            .field("unit", &(1usize << self.inner.unit_shift))
            .field("stats", &self.stats())
            .finish()
    }
}

impl FrameArena {
    /// An arena of `unit`-byte units whose frames may be as large as `max_frame` bytes. Both
    /// are powers of two, `unit` from 512 to 64 KiB and `max_frame` from `unit` to 1 GiB;
    /// anything else panics (the cache checks its configuration before making one).
    pub fn new(unit: usize, max_frame: usize) -> Self {
        assert!(
            unit.is_power_of_two() && (512..=65536).contains(&unit),
            "frame unit {unit} is not a power of two from 512 to 65536"
        );
        assert!(
            max_frame.is_power_of_two() && max_frame >= unit && max_frame <= 1 << 30,
            "largest frame {max_frame} is not a power of two from {unit} to 1 GiB"
        );
        let chunk = max_frame.max(MIN_CHUNK).max(unit);
        let unit_shift = unit.trailing_zeros();
        let max_order = chunk.trailing_zeros() - unit_shift;
        let max_chunks = (MAX_UNITS >> max_order).max(1) as u32;
        let leaves = (max_chunks as usize).div_ceil(LEAF_CHUNKS);
        Self {
            inner: Arc::new(Arena {
                unit_shift,
                max_order,
                max_chunks,
                dir: (0..leaves).map(|_| OnceLock::new()).collect(),
                free: Mutex::new(Free {
                    lists: vec![BTreeSet::new(); max_order as usize + 1],
                    chunks: 0,
                    resident: Vec::new(),
                }),
                live_bytes: AtomicU64::new(0),
                held_bytes: AtomicU64::new(0),
                reused: AtomicU64::new(0),
                fresh: AtomicU64::new(0),
                trimmed: AtomicU64::new(0),
            }),
        }
    }

    /// The unit, in bytes.
    pub fn unit(&self) -> usize {
        1 << self.inner.unit_shift
    }

    /// The largest frame, in bytes.
    pub fn max_frame(&self) -> usize {
        1 << (self.inner.unit_shift + self.inner.max_order)
    }

    /// A frame of `len` bytes, with the owner's word set to `word`. Its bytes are whatever the
    /// memory last held (zero when fresh). `len` must be a power of two from the unit to the
    /// largest frame.
    ///
    /// # Panics
    /// When `len` is out of range, or the arena has no room for another chunk (4 G units),
    /// as an allocator does when memory runs out.
    pub fn alloc(&self, len: usize, word: u32) -> Frame {
        let a = &self.inner;
        assert!(
            len.is_power_of_two() && len >= 1 << a.unit_shift && len <= self.max_frame(),
            "frame of {len} bytes is outside {}..={}",
            self.unit(),
            self.max_frame()
        );
        assert_eq!(
            word & FRAME_ORDER_BITS,
            0,
            "the owner's word may not use the arena's bits"
        );
        let order = len.trailing_zeros() - a.unit_shift;
        let id = {
            let mut free = a.free.lock();
            let k = match (order..=a.max_order).find(|&k| !free.lists[k as usize].is_empty()) {
                Some(k) => k,
                None => {
                    let first = self.grow(&mut free);
                    free.lists[a.max_order as usize].insert(first);
                    a.max_order
                }
            };
            let Some(id) = free.lists[k as usize].pop_first() else {
                unreachable!("free list {k} was just found non-empty");
            };
            let mut k = k;
            while k > order {
                k -= 1;
                free.lists[k as usize].insert(id + (1 << k));
            }
            let units = 1usize << order;
            let warm = free.resident_units(id, units, a.max_order);
            a.held_bytes
                .fetch_sub(warm << a.unit_shift, Ordering::Relaxed);
            if warm > 0 {
                a.reused.fetch_add(1, Ordering::Relaxed);
            } else {
                a.fresh.fetch_add(1, Ordering::Relaxed);
            }
            // Its user will touch it: resident from now until the arena gives it back.
            free.set_resident(id, units, a.max_order, true);
            id
        };
        a.live_bytes.fetch_add(len as u64, Ordering::Relaxed);
        let slot = a.slot(id);
        let idx = id - slot.chunk.first_id;
        let d = &slot.chunk.desc[idx as usize];
        d.word.store(word | order << ORDER_SHIFT, Ordering::Relaxed);
        d.state.store(1, Ordering::Release);
        // The frame holds a count of its chunk while it is allocated; handles share it.
        let _ = Arc::into_raw(Arc::clone(&slot.chunk));
        Frame::at(slot, idx)
    }

    /// Maps a new chunk; returns its first id. Called with the free lists locked.
    fn grow(&self, free: &mut Free) -> u32 {
        let a = &self.inner;
        assert!(
            free.chunks < a.max_chunks,
            "the frame arena is full ({} chunks)",
            free.chunks
        );
        let n = free.chunks;
        let units = 1usize << a.max_order;
        let mut mem = IoBuf::zeroed(units << a.unit_shift);
        let Some(base) = NonNull::new(mem.as_mut_ptr()) else {
            unreachable!("a mapped chunk has an address");
        };
        let first_id = n << a.max_order;
        let chunk = Arc::new(Chunk {
            base,
            _mem: mem,
            first_id,
            desc: (0..units).map(|_| Desc::default()).collect(),
            ext: Mutex::new(HashMap::new()),
            arena: Arc::downgrade(a),
        });
        let leaf = a.dir[n as usize / LEAF_CHUNKS]
            .get_or_init(|| (0..LEAF_CHUNKS).map(|_| OnceLock::new()).collect());
        // The whole array's address, so pointers derived from it may reach every element.
        let Some(desc) = NonNull::new(chunk.desc.as_ptr().cast_mut()) else {
            unreachable!("a boxed slice's address is not null");
        };
        let unit_shift = a.unit_shift as u8;
        if leaf[n as usize % LEAF_CHUNKS]
            .set(Slot {
                desc,
                base,
                unit_shift,
                chunk,
            })
            .is_err()
        {
            unreachable!("chunk {n} was made twice");
        }
        free.chunks += 1;
        free.resident
            .push(vec![0; units.div_ceil(64)].into_boxed_slice());
        first_id
    }

    /// Gives the memory of free frames back to the kernel until no more than `keep` bytes of
    /// free memory stay resident: from the largest free blocks, and from their ends, since
    /// allocation splits free blocks from their starts. Only as much as needed goes, a unit
    /// at a time. The frames stay the arena's: the memory is mapped again, zeroed, when next
    /// used.
    pub fn trim(&self, keep: u64) {
        let a = &self.inner;
        if a.held_bytes.load(Ordering::Relaxed) <= keep {
            return;
        }
        let unit = 1u64 << a.unit_shift;
        // Memory goes back in whole pages of the system: a unit smaller than one shares its
        // page with its neighbours, which may be live.
        let per_page = (system_page_size() as u64 / unit).max(1) as u32;
        let mut free = a.free.lock();
        for k in (0..=a.max_order).rev() {
            let mut below = u32::MAX;
            while let Some(&id) = free.lists[k as usize].range(..below).next_back() {
                below = id;
                for (run, units) in free
                    .resident_runs(id, 1 << k, a.max_order)
                    .into_iter()
                    .rev()
                {
                    let held = a.held_bytes.load(Ordering::Relaxed);
                    if held <= keep {
                        return;
                    }
                    // Chunks are aligned to their size, so a unit id aligned to `per_page`
                    // is a page-aligned address.
                    let lo = run.next_multiple_of(per_page);
                    let hi = (run + units as u32) / per_page * per_page;
                    if hi <= lo {
                        continue;
                    }
                    // The run's last whole pages, as many as bring the held bytes to `keep`.
                    let want = ((held - keep).div_ceil(unit) as u32).next_multiple_of(per_page);
                    let n = (hi - lo).min(want);
                    let first = hi - n;
                    let chunk = &a.slot(first).chunk;
                    let off = ((first - chunk.first_id) as usize) << a.unit_shift;
                    let len = (n as usize) << a.unit_shift;
                    // SAFETY: the range is whole pages of the system inside one free block of
                    // the chunk's mapping; no handle or guard refers to a free frame, so
                    // nothing reads or writes it meanwhile (the free lists are locked).
                    // MADV_DONTNEED leaves the mapping valid, reading as zero.
                    let rc = unsafe {
                        libc::madvise(
                            chunk.base.as_ptr().add(off).cast(),
                            len,
                            libc::MADV_DONTNEED,
                        )
                    };
                    if rc == 0 {
                        free.set_resident(first, n as usize, a.max_order, false);
                        a.held_bytes.fetch_sub(len as u64, Ordering::Relaxed);
                        a.trimmed.fetch_add(len as u64, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// Bytes of free memory held resident, without the lock [`FrameArena::stats`] takes.
    pub fn held_bytes(&self) -> u64 {
        self.inner.held_bytes.load(Ordering::Relaxed)
    }

    /// What the arena holds.
    pub fn stats(&self) -> ArenaStats {
        let a = &self.inner;
        let chunks = u64::from(a.free.lock().chunks);
        let units = 1u64 << a.max_order;
        ArenaStats {
            live_bytes: a.live_bytes.load(Ordering::Relaxed),
            held_bytes: a.held_bytes.load(Ordering::Relaxed),
            mapped_bytes: chunks * (units << a.unit_shift),
            descriptor_bytes: chunks * units * std::mem::size_of::<Desc>() as u64,
            reused: a.reused.load(Ordering::Relaxed),
            fresh: a.fresh.load(Ordering::Relaxed),
            trimmed_bytes: a.trimmed.load(Ordering::Relaxed),
        }
    }
}

impl Arena {
    fn bytes(&self, order: u32) -> u64 {
        1u64 << (self.unit_shift + order)
    }

    /// The chunk holding unit `id`, which must have been handed out.
    #[inline]
    fn slot(&self, id: u32) -> &Slot {
        let n = (id >> self.max_order) as usize;
        match self.dir[n / LEAF_CHUNKS]
            .get()
            .and_then(|leaf| leaf[n % LEAF_CHUNKS].get())
        {
            Some(slot) => slot,
            None => panic!("frame id {id} is in no chunk"),
        }
    }

    /// A handle on frame `id` taking over one reference its holder already counted.
    #[inline]
    fn adopt(&self, id: u32) -> Frame {
        let slot = self.slot(id);
        let frame = Frame::at(slot, id - slot.chunk.first_id);
        debug_assert!(frame.desc().state.load(Ordering::Relaxed) & REFS != 0);
        frame
    }

    /// Puts a frame whose last reference went back on the free lists, merging buddies.
    fn free(&self, id: u32, order: u32) {
        let size = self.bytes(order);
        self.live_bytes.fetch_sub(size, Ordering::Relaxed);
        let mut free = self.free.lock();
        let (mut id, mut k) = (id, order);
        // Resident since its allocation.
        self.held_bytes.fetch_add(size, Ordering::Relaxed);
        while k < self.max_order && free.lists[k as usize].remove(&(id ^ (1 << k))) {
            id &= !(1 << k);
            k += 1;
        }
        free.lists[k as usize].insert(id);
    }
}

/// A reference to a frame: see the module comment. Cloning takes another reference.
pub struct Frame {
    /// The frame's descriptor, in its chunk.
    desc: NonNull<Desc>,
    /// The frame's first byte, in its chunk's mapping.
    data: NonNull<u8>,
    unit_shift: u8,
    /// The chunk, kept alive by the count an allocated frame holds (see `alloc`).
    chunk: NonNull<Chunk>,
    idx: u32,
}

// SAFETY: a frame is a counted reference to an allocated frame of a `Chunk`, which is `Send`
// and `Sync`; the pointer stays valid while any handle exists (see `Frame::chunk`).
unsafe impl Send for Frame {}
// SAFETY: as above; shared handles reach the chunk only through `&Chunk`.
unsafe impl Sync for Frame {}

impl Frame {
    #[inline]
    fn chunk(&self) -> &Chunk {
        // SAFETY: a handle exists only for an allocated frame (its reference count is not
        // zero while the handle lives), and an allocated frame holds a strong count of its
        // chunk's `Arc`, given back only when the last reference goes.
        unsafe { self.chunk.as_ref() }
    }

    /// A handle on unit `idx` of `slot`'s chunk, counting no reference.
    #[inline]
    fn at(slot: &Slot, idx: u32) -> Self {
        debug_assert!((idx as usize) < slot.chunk.desc.len());
        // In bounds: `idx` is a unit of the chunk.
        let Some(desc) = NonNull::new(slot.desc.as_ptr().wrapping_add(idx as usize)) else {
            unreachable!("a descriptor's address is not null");
        };
        // In bounds: so is the unit's memory.
        let Some(data) = NonNull::new(
            slot.base
                .as_ptr()
                .wrapping_add((idx as usize) << slot.unit_shift),
        ) else {
            unreachable!("a frame's address is not null");
        };
        Frame {
            desc,
            data,
            unit_shift: slot.unit_shift,
            // The `Arc`'s own pointer, as `Arc::from_raw` in `release` requires.
            chunk: match NonNull::new(Arc::as_ptr(&slot.chunk).cast_mut()) {
                Some(chunk) => chunk,
                None => unreachable!("an Arc's address is not null"),
            },
            idx,
        }
    }

    #[inline]
    fn desc(&self) -> &Desc {
        // SAFETY: the descriptor lives in the chunk's descriptor array, alive and unmoved for
        // as long as the chunk is (see `Frame::chunk`).
        unsafe { self.desc.as_ref() }
    }

    #[inline]
    fn order(&self) -> u32 {
        (self.desc().word.load(Ordering::Relaxed) & FRAME_ORDER_BITS) >> ORDER_SHIFT
    }

    /// Size in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        1 << (u32::from(self.unit_shift) + self.order())
    }

    /// Size in units.
    #[inline]
    fn units(&self) -> u64 {
        1 << self.order()
    }

    /// Never: a frame holds at least one unit.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The frame's id in its arena (its first unit's).
    #[inline]
    pub fn id(&self) -> u32 {
        self.chunk().first_id + self.idx
    }

    /// Whether `a` and `b` refer to the same frame.
    #[inline]
    pub fn same(a: &Self, b: &Self) -> bool {
        a.chunk == b.chunk && a.idx == b.idx
    }

    /// The frame's identity, for debug output: equal for handles of the same frame.
    pub fn as_ptr(&self) -> *const () {
        (self.desc() as *const Desc).cast()
    }

    /// The owner's word. Its bits [`FRAME_ORDER_BITS`] hold the frame's order and are the
    /// arena's: the owner sets and clears only its own bits (`fetch_or`, `fetch_and`), never
    /// stores the whole word.
    #[inline]
    pub fn word(&self) -> &AtomicU32 {
        &self.desc().word
    }

    /// References to the frame now (handles, and entries of tables).
    #[inline]
    pub fn refs(&self) -> u32 {
        self.desc().state.load(Ordering::Acquire) & REFS
    }

    /// Sleeps while every bit of `mask` is set in the owner's word, or until woken by
    /// [`Frame::unpark_all`]; it may return early. The owner sets a waiters bit of its own in
    /// `mask` before it calls this, and whoever clears a waited-for bit clears that bit too
    /// and wakes the sleepers: a clearer that saw the waiters bit wakes everyone who checked
    /// the mask before it cleared.
    pub fn park_while_set(&self, mask: u32) {
        let word = &self.desc().word;
        let key = word as *const AtomicU32 as usize;
        // SAFETY: the validation closure only loads an atomic: it neither panics nor calls
        // into the parking lot; the other callbacks do nothing.
        unsafe {
            parking_lot_core::park(
                key,
                || word.load(Ordering::SeqCst) & mask == mask,
                || {},
                |_, _| {},
                DEFAULT_PARK_TOKEN,
                None,
            );
        }
    }

    /// Wakes everyone sleeping in [`Frame::park_while_set`] on this frame.
    pub fn unpark_all(&self) {
        let key = &self.desc().word as *const AtomicU32 as usize;
        // SAFETY: unparking has no callbacks; any key is valid.
        unsafe {
            parking_lot_core::unpark_all(key, DEFAULT_UNPARK_TOKEN);
        }
    }

    // ---- the lock over the bytes ----

    #[inline]
    fn lock_shared(&self, wait: bool) -> bool {
        let st = &self.desc().state;
        let mut spins = 0;
        loop {
            let s = st.load(Ordering::Relaxed);
            // A reader that would wait lets a waiting writer go first, so a stream of
            // readers cannot starve writers; a try ignores waiting writers.
            let blocked = if wait {
                WRITER | WRITER_WAITING
            } else {
                WRITER
            };
            if s & blocked == 0 && s & READERS != READERS {
                if st
                    .compare_exchange_weak(s, s + READER, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return true;
                }
                continue;
            }
            if !wait {
                return false;
            }
            if s & blocked == 0 {
                // As many readers as the count holds: one will be gone soon.
                std::thread::yield_now();
                continue;
            }
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            self.sleep_on_data(s, 0, WRITER | WRITER_WAITING);
        }
    }

    #[inline]
    fn lock_exclusive(&self, wait: bool) -> bool {
        let st = &self.desc().state;
        let mut spins = 0;
        loop {
            let s = st.load(Ordering::Relaxed);
            if s & (WRITER | READERS) == 0 {
                // Taking the lock ends this writer's wait; others waiting set the bit again.
                let taken = (s | WRITER) & !WRITER_WAITING;
                if st
                    .compare_exchange_weak(s, taken, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return true;
                }
                continue;
            }
            if !wait {
                return false;
            }
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            self.sleep_on_data(s, WRITER_WAITING, WRITER | READERS);
        }
    }

    /// Announces a waiter (and sets `mark`) and sleeps while any of `busy` is held, as the
    /// state `s` last read showed. Returns to retry.
    fn sleep_on_data(&self, s: u32, mark: u32, busy: u32) {
        let st = &self.desc().state;
        let want = s | DATA_WAITERS | mark;
        if want != s
            && st
                .compare_exchange_weak(s, want, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let key = st as *const AtomicU32 as usize;
        // SAFETY: the validation closure only loads an atomic: it neither panics nor calls
        // into the parking lot; the other callbacks do nothing.
        unsafe {
            parking_lot_core::park(
                key,
                || {
                    let s = st.load(Ordering::SeqCst);
                    s & busy != 0 && s & DATA_WAITERS != 0
                },
                || {},
                |_, _| {},
                DEFAULT_PARK_TOKEN,
                None,
            );
        }
    }

    fn wake_data_waiters(&self) {
        let st = &self.desc().state;
        st.fetch_and(!DATA_WAITERS, Ordering::SeqCst);
        // SAFETY: unparking has no callbacks; any key is valid.
        unsafe {
            parking_lot_core::unpark_all(st as *const AtomicU32 as usize, DEFAULT_UNPARK_TOKEN);
        }
    }

    #[inline]
    fn unlock_shared(&self) {
        let old = self.desc().state.fetch_sub(READER, Ordering::SeqCst);
        debug_assert!(old & READERS != 0);
        if old & READERS == READER && old & DATA_WAITERS != 0 {
            self.wake_data_waiters();
        }
    }

    #[inline]
    fn unlock_exclusive(&self) {
        let old = self.desc().state.fetch_and(!WRITER, Ordering::SeqCst);
        debug_assert!(old & WRITER != 0);
        if old & DATA_WAITERS != 0 {
            self.wake_data_waiters();
        }
    }

    /// The bytes, shared: waits while a writer holds them.
    #[inline]
    pub fn read(&self) -> FrameRead<'_> {
        self.lock_shared(true);
        FrameRead { frame: self }
    }

    /// The bytes, exclusive: waits while anyone holds them.
    #[inline]
    pub fn write(&self) -> FrameWrite<'_> {
        self.lock_exclusive(true);
        FrameWrite { frame: self }
    }

    /// The bytes, shared, if no writer holds them.
    #[inline]
    pub fn try_read(&self) -> Option<FrameRead<'_>> {
        self.lock_shared(false).then(|| FrameRead { frame: self })
    }

    /// The bytes, exclusive, if nobody holds them.
    #[inline]
    pub fn try_write(&self) -> Option<FrameWrite<'_>> {
        self.lock_exclusive(false)
            .then(|| FrameWrite { frame: self })
    }

    /// As [`Frame::read`], holding a reference of its own.
    #[inline]
    pub fn read_owned(&self) -> OwnedFrameRead {
        self.lock_shared(true);
        OwnedFrameRead {
            frame: self.clone(),
        }
    }

    /// As [`Frame::write`], holding a reference of its own.
    #[inline]
    pub fn write_owned(&self) -> OwnedFrameWrite {
        self.lock_exclusive(true);
        OwnedFrameWrite {
            frame: self.clone(),
        }
    }

    /// As [`Frame::try_read`], holding a reference of its own.
    #[inline]
    pub fn try_read_owned(&self) -> Option<OwnedFrameRead> {
        self.lock_shared(false).then(|| OwnedFrameRead {
            frame: self.clone(),
        })
    }

    /// As [`Frame::try_write`], holding a reference of its own.
    #[inline]
    pub fn try_write_owned(&self) -> Option<OwnedFrameWrite> {
        self.lock_exclusive(false).then(|| OwnedFrameWrite {
            frame: self.clone(),
        })
    }

    #[inline]
    fn bytes_ptr(&self) -> *mut u8 {
        self.data.as_ptr()
    }

    /// The bytes, for a holder of the shared or exclusive lock.
    #[inline]
    fn bytes(&self) -> &[u8] {
        // SAFETY: the frame's range lies inside the chunk's mapping, which lives as long as
        // the `Arc<Chunk>` this handle holds; allocated frames never overlap; the caller holds
        // the frame's lock, so nobody writes the bytes while this borrow lives.
        unsafe { std::slice::from_raw_parts(self.bytes_ptr(), self.len()) }
    }

    /// The bytes, for the holder of the exclusive lock.
    #[allow(clippy::mut_from_ref)]
    #[inline]
    fn bytes_mut(&self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and the caller holds the exclusive lock, which its guard
        // borrows mutably: no other borrow of these bytes exists while this one lives.
        unsafe { std::slice::from_raw_parts_mut(self.bytes_ptr(), self.len()) }
    }

    // ---- extensions ----

    /// Runs `f` on the frame's extension of type `T`, made by `init` first if the frame has
    /// none. Extensions of the frames of a chunk share one lock, held while `f` runs: `f` must
    /// not touch another frame's extension. The extension is dropped with the frame.
    ///
    /// # Panics
    /// When the frame has an extension of another type.
    pub fn with_ext<T: Any + Send + Sync, R>(
        &self,
        init: impl FnOnce() -> T,
        f: impl FnOnce(&mut T) -> R,
    ) -> R {
        let mut map = self.chunk().ext.lock();
        let ext = map.entry(self.idx).or_insert_with(|| {
            self.desc().state.fetch_or(HAS_EXT, Ordering::AcqRel);
            Box::new(init())
        });
        match ext.downcast_mut::<T>() {
            Some(t) => f(t),
            None => panic!("frame {} has an extension of another type", self.id()),
        }
    }

    /// Runs `f` on the frame's extension of type `T`, or on `None` when it has none (made by
    /// nobody yet, as far as this thread has seen).
    #[inline]
    pub fn ext<T: Any + Send + Sync, R>(&self, f: impl FnOnce(Option<&mut T>) -> R) -> R {
        if self.desc().state.load(Ordering::Acquire) & HAS_EXT == 0 {
            return f(None);
        }
        let mut map = self.chunk().ext.lock();
        f(map.get_mut(&self.idx).and_then(|e| e.downcast_mut::<T>()))
    }

    /// Whether the frame has an extension.
    #[inline]
    pub fn has_ext(&self) -> bool {
        self.desc().state.load(Ordering::Acquire) & HAS_EXT != 0
    }

    /// Gives up the handle without giving up its reference; [`Arena::adopt`] takes it back.
    fn into_raw(self) -> u32 {
        let id = self.id();
        std::mem::forget(self);
        id
    }
}

impl Clone for Frame {
    #[inline]
    fn clone(&self) -> Self {
        let st = &self.desc().state;
        let mut s = st.load(Ordering::Relaxed);
        loop {
            assert!(
                s & REFS != REFS,
                "frame {} has too many references",
                self.id()
            );
            match st.compare_exchange_weak(s, s + 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => s = now,
            }
        }
        Self {
            desc: self.desc,
            data: self.data,
            unit_shift: self.unit_shift,
            chunk: self.chunk,
            idx: self.idx,
        }
    }
}

impl Drop for Frame {
    #[inline]
    fn drop(&mut self) {
        let old = self.desc().state.fetch_sub(1, Ordering::Release);
        debug_assert!(old & REFS != 0, "frame reference count underflow");
        if old & REFS == 1 {
            self.release(old);
        }
    }
}

impl Frame {
    /// Frees the frame whose last reference just went (`old` is its state before).
    #[cold]
    #[inline(never)]
    fn release(&mut self, old: u32) {
        fence(Ordering::Acquire);
        if old & HAS_EXT != 0 {
            let gone = self.chunk().ext.lock().remove(&self.idx);
            drop(gone);
        }
        let order = self.order();
        self.desc().state.store(0, Ordering::Relaxed);
        if let Some(arena) = self.chunk().arena.upgrade() {
            arena.free(self.id(), order);
        }
        // SAFETY: the count `alloc` took for this allocation, given back once, now that its
        // last reference is gone; `self` does not touch the chunk after.
        drop(unsafe { Arc::from_raw(self.chunk.as_ptr().cast_const()) });
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("id", &self.id())
            .field("len", &self.len())
            .field("refs", &self.refs())
            .finish()
    }
}

/// Shared access to a frame's bytes.
pub struct FrameRead<'a> {
    frame: &'a Frame,
}

impl Deref for FrameRead<'_> {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        self.frame.bytes()
    }
}

impl Drop for FrameRead<'_> {
    #[inline]
    fn drop(&mut self) {
        self.frame.unlock_shared();
    }
}

/// Exclusive access to a frame's bytes.
pub struct FrameWrite<'a> {
    frame: &'a Frame,
}

impl Deref for FrameWrite<'_> {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        self.frame.bytes()
    }
}

impl DerefMut for FrameWrite<'_> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        self.frame.bytes_mut()
    }
}

impl Drop for FrameWrite<'_> {
    #[inline]
    fn drop(&mut self) {
        self.frame.unlock_exclusive();
    }
}

/// Shared access to a frame's bytes, with a reference of its own.
pub struct OwnedFrameRead {
    frame: Frame,
}

impl Deref for OwnedFrameRead {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        self.frame.bytes()
    }
}

impl Drop for OwnedFrameRead {
    #[inline]
    fn drop(&mut self) {
        self.frame.unlock_shared();
    }
}

/// Exclusive access to a frame's bytes, with a reference of its own.
pub struct OwnedFrameWrite {
    frame: Frame,
}

impl Deref for OwnedFrameWrite {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        self.frame.bytes()
    }
}

impl DerefMut for OwnedFrameWrite {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        self.frame.bytes_mut()
    }
}

impl Drop for OwnedFrameWrite {
    #[inline]
    fn drop(&mut self) {
        self.frame.unlock_exclusive();
    }
}

/// Keys per node of a [`FrameTable`].
const NODE: usize = 64;

/// A node of a [`FrameTable`]: an entry per key, each 0 or a frame id + 1, and which are set.
struct Node {
    set: u64,
    e: [u32; NODE],
}

/// Frames by key, four bytes a frame: a key is a unit's number (a file offset over the unit),
/// and a frame of `n` units sits at a key that is a multiple of `n`, covering `n` keys. Only
/// its first key holds an entry: a lookup of another key tries the keys a frame covering it
/// could start at, from the nearest, so a table of large frames is nearly empty. The table
/// holds a reference to each frame it keeps.
pub struct FrameTable {
    arena: Arc<Arena>,
    /// Node number → entries.
    nodes: BTreeMap<u64, Box<Node>>,
    frames: usize,
    /// The largest order of a frame ever kept: how far back a lookup looks.
    max_order: u32,
}

impl fmt::Debug for FrameTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameTable")
            .field("frames", &self.frames)
            .finish()
    }
}

impl FrameTable {
    /// An empty table of frames from `arena`.
    pub fn new(arena: &FrameArena) -> Self {
        Self {
            arena: Arc::clone(&arena.inner),
            nodes: BTreeMap::new(),
            frames: 0,
            max_order: 0,
        }
    }

    /// Frames kept.
    #[inline]
    pub fn len(&self) -> usize {
        self.frames
    }

    /// Whether no frame is kept.
    pub fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// The frame covering `key`: its first key and entry.
    ///
    /// Frames never overlap and are aligned to their size, so the only frame that can cover
    /// `key` is the nearest one starting at or before it. A frame of at most a node's keys
    /// lies within one node; a larger one covers whole nodes, which then hold no entry but
    /// its own first. So: in `key`'s node, the entry at the nearest of the keys a frame
    /// covering `key` could start at; with no node there, the last entry of the nearest node
    /// before it.
    #[inline]
    fn covering(&self, key: u64) -> Option<(u64, ManuallyDrop<Frame>)> {
        let node_no = key / NODE as u64;
        let (&n, node) = self.nodes.range(..=node_no).next_back()?;
        let (first, e) = if n == node_no {
            let i = (key % NODE as u64) as usize;
            let max = self.max_order.min(NODE.trailing_zeros());
            (0..=max)
                .map(|order| i & !((1 << order) - 1))
                .find(|&j| node.set & 1 << j != 0)
                .map(|j| (n * NODE as u64 + j as u64, node.e[j]))?
        } else {
            let j = 63 - node.set.leading_zeros() as usize;
            (n * NODE as u64 + j as u64, node.e[j])
        };
        let frame = self.lend(e);
        (first + frame.units() > key).then_some((first, frame))
    }

    /// The frame of entry `e`, on the table's own reference: never to be dropped.
    #[inline]
    fn lend(&self, e: u32) -> ManuallyDrop<Frame> {
        ManuallyDrop::new(self.arena.adopt(e - 1))
    }

    fn set_entry(&mut self, key: u64, e: u32) {
        let node_no = key / NODE as u64;
        let i = (key % NODE as u64) as usize;
        if e != 0 {
            let node = self.nodes.entry(node_no).or_insert_with(|| {
                Box::new(Node {
                    set: 0,
                    e: [0; NODE],
                })
            });
            node.e[i] = e;
            node.set |= 1 << i;
        } else if let Some(node) = self.nodes.get_mut(&node_no) {
            node.e[i] = 0;
            node.set &= !(1 << i);
            if node.set == 0 {
                self.nodes.remove(&node_no);
            }
        }
    }

    /// The frame covering `key`, with its first key.
    #[inline]
    pub fn get(&self, key: u64) -> Option<(u64, Frame)> {
        self.covering(key)
            .map(|(first, frame)| (first, Frame::clone(&frame)))
    }

    /// Runs `f` on the frame covering `key` and its first key, lending the table's own
    /// reference: no reference is counted unless `f` clones the frame.
    #[inline]
    pub fn with<R>(&self, key: u64, f: impl FnOnce(u64, &Frame) -> R) -> Option<R> {
        let (first, frame) = self.covering(key)?;
        Some(f(first, &frame))
    }

    /// Keeps `frame` at `key` (a multiple of its units); gives it back if a key it would
    /// cover is taken.
    ///
    /// # Panics
    /// When the frame is from another arena or `key` is not a multiple of its units.
    pub fn insert(&mut self, key: u64, frame: Frame) -> Result<(), Frame> {
        assert!(
            std::ptr::eq(frame.chunk().arena.as_ptr(), Arc::as_ptr(&self.arena)),
            "frame from another arena"
        );
        let units = (frame.len() >> self.arena.unit_shift) as u64;
        assert_eq!(key % units, 0, "key {key} is not a multiple of {units}");
        if self.range(key, key + units).next().is_some() {
            return Err(frame);
        }
        self.max_order = self.max_order.max(units.trailing_zeros());
        let e = frame.into_raw() + 1;
        self.set_entry(key, e);
        self.frames += 1;
        Ok(())
    }

    /// Takes out the frame covering `key`, with its first key.
    pub fn remove(&mut self, key: u64) -> Option<(u64, Frame)> {
        let (first, frame) = self.covering(key)?;
        self.set_entry(first, 0);
        self.frames -= 1;
        // The table's reference passes to the caller.
        Some((first, ManuallyDrop::into_inner(frame)))
    }

    /// The first frame starting at or after `key`: its first key and entry.
    fn next_start(&self, key: u64) -> Option<(u64, u32)> {
        let node_no = key / NODE as u64;
        for (&n, node) in self.nodes.range(node_no..) {
            let from = if n == node_no {
                (key % NODE as u64) as usize
            } else {
                0
            };
            let later = node.set & (u64::MAX << from);
            if later != 0 {
                let i = later.trailing_zeros() as usize;
                return Some((n * NODE as u64 + i as u64, node.e[i]));
            }
        }
        None
    }

    /// The frames covering any key of `[start, end)`, in key order, each with its first key
    /// (which may be before `start`). Each is a new reference, taken as the iterator reaches
    /// it.
    pub fn range(&self, start: u64, end: u64) -> FrameRange<'_> {
        FrameRange {
            table: self,
            next: start,
            end,
            first: true,
        }
    }
}

impl Drop for FrameTable {
    fn drop(&mut self) {
        let mut key = 0;
        while let Some((k, e)) = self.next_start(key) {
            key = k + 1;
            drop(self.arena.adopt(e - 1));
        }
    }
}

/// Frames of a [`FrameTable`] in key order: see [`FrameTable::range`].
pub struct FrameRange<'a> {
    table: &'a FrameTable,
    next: u64,
    end: u64,
    /// Whether a frame starting before `next` may still cover it.
    first: bool,
}

impl Iterator for FrameRange<'_> {
    type Item = (u64, Frame);

    fn next(&mut self) -> Option<(u64, Frame)> {
        if self.next >= self.end {
            return None;
        }
        let covering = if std::mem::take(&mut self.first) {
            self.table.covering(self.next)
        } else {
            None
        };
        let (first, frame) = match covering {
            Some(found) => found,
            None => {
                let (first, e) = self.table.next_start(self.next)?;
                (first, self.table.lend(e))
            }
        };
        if first >= self.end {
            self.next = self.end;
            return None;
        }
        self.next = first + frame.units();
        Some((first, Frame::clone(&frame)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_aligned_disjoint_and_come_back_merged() {
        let arena = FrameArena::new(4096, 2 << 20);
        let a = arena.alloc(4096, 0);
        let b = arena.alloc(8192, 0);
        let c = arena.alloc(4096, 0);
        assert_eq!(b.id() % 2, 0, "an 8 KiB frame starts at an even unit");
        let ids = [a.id(), b.id(), b.id() + 1, c.id()];
        for (i, x) in ids.iter().enumerate() {
            assert!(!ids[i + 1..].contains(x), "frames overlap: {ids:?}");
        }
        assert_eq!(arena.stats().live_bytes, 16384);
        drop((a, b, c));
        let s = arena.stats();
        assert_eq!(s.live_bytes, 0);
        // Everything merged back into one chunk-sized block.
        let whole = arena.alloc(2 << 20, 0);
        assert_eq!(whole.len(), 2 << 20);
        assert_eq!(arena.stats().mapped_bytes, 2 << 20);
    }

    #[test]
    fn bytes_are_locked_and_shared_between_handles() {
        let arena = FrameArena::new(4096, 65536);
        let f = arena.alloc(16384, 7);
        assert_eq!(f.word().load(Ordering::Relaxed) & !FRAME_ORDER_BITS, 7);
        f.write()[..4].copy_from_slice(b"abcd");
        let g = f.clone();
        assert_eq!(f.refs(), 2);
        assert_eq!(&g.read()[..4], b"abcd");
        let r = f.read();
        assert!(g.try_write().is_none(), "a reader holds the bytes");
        assert!(g.try_read().is_some(), "readers share");
        drop(r);
        let w = g.write_owned();
        assert!(f.try_read().is_none(), "a writer holds the bytes");
        drop(w);
        assert!(f.try_read_owned().is_some());
        drop(g);
        assert_eq!(f.refs(), 1);
    }

    #[test]
    fn a_writer_waits_for_the_reader_and_sees_its_bytes_after() {
        let arena = FrameArena::new(4096, 4096);
        let f = arena.alloc(4096, 0);
        let r = f.read_owned();
        let g = f.clone();
        let t = std::thread::spawn(move || g.write()[0] = 9);
        assert_eq!(r[0], 0);
        drop(r);
        t.join().unwrap();
        assert_eq!(f.read()[0], 9);
    }

    #[test]
    fn parked_waiters_wake_when_the_bit_clears() {
        const BUSY: u32 = 1;
        const WAITERS: u32 = 2;
        let arena = FrameArena::new(4096, 4096);
        let f = arena.alloc(4096, BUSY);
        let g = f.clone();
        let t = std::thread::spawn(move || loop {
            if g.word().load(Ordering::SeqCst) & BUSY == 0 {
                return;
            }
            g.word().fetch_or(WAITERS, Ordering::SeqCst);
            g.park_while_set(BUSY | WAITERS);
        });
        let old = f.word().fetch_and(!BUSY, Ordering::SeqCst);
        if old & WAITERS != 0 || f.word().load(Ordering::SeqCst) & WAITERS != 0 {
            f.word().fetch_and(!WAITERS, Ordering::SeqCst);
            f.unpark_all();
        }
        t.join().unwrap();
    }

    #[test]
    fn extensions_live_and_die_with_their_frame() {
        let arena = FrameArena::new(4096, 4096);
        let f = arena.alloc(4096, 0);
        assert!(f.ext::<u64, _>(|e| e.is_none()));
        f.with_ext(|| 5u64, |e| *e += 1);
        assert_eq!(f.ext::<u64, _>(|e| e.copied()), Some(6));
        let id = f.id();
        drop(f);
        let g = arena.alloc(4096, 0);
        assert_eq!(g.id(), id, "the freed frame is reused");
        assert!(!g.has_ext(), "its extension went with it");
    }

    #[test]
    fn a_table_keeps_one_reference_and_finds_frames_by_any_key() {
        let arena = FrameArena::new(4096, 1 << 20);
        let mut t = FrameTable::new(&arena);
        let big = arena.alloc(65536, 0); // 16 units
        let small = arena.alloc(4096, 0);
        assert!(t.insert(48, big.clone()).is_ok());
        assert!(t.insert(70, small.clone()).is_ok());
        assert_eq!(big.refs(), 2);
        let (first, f) = t.get(60).unwrap();
        assert_eq!(first, 48);
        assert!(Frame::same(&f, &big));
        drop(f);
        assert!(t.get(64).is_none());
        // A frame over a taken key comes back.
        let clash = arena.alloc(8192, 0);
        assert!(t.insert(70 & !1, clash).is_err());
        let found: Vec<u64> = t.range(50, 71).map(|(k, _)| k).collect();
        assert_eq!(found, [48, 70]);
        assert_eq!(t.range(64, 70).count(), 0);
        // A frame larger than a node, found from any of its keys, lent without counting.
        let wide = arena.alloc(128 * 4096, 0);
        assert!(t.insert(256, wide.clone()).is_ok());
        for key in [256, 300, 383] {
            let got = t.with(key, |first, f| (first, Frame::same(f, &wide), f.refs()));
            assert_eq!(got, Some((256, true, 2)), "key {key}");
        }
        assert!(t.get(384).is_none() && t.get(255).is_none());
        assert!(
            t.insert(320, arena.alloc(4096, 0)).is_err(),
            "inside the wide frame"
        );
        assert_eq!(t.range(200, 500).map(|(k, _)| k).collect::<Vec<_>>(), [256]);
        let (k, f) = t.remove(383).unwrap();
        assert_eq!(k, 256);
        assert!(Frame::same(&f, &wide));
        drop((f, wide));
        let (k, f) = t.remove(55).unwrap();
        assert_eq!(k, 48);
        assert!(Frame::same(&f, &big));
        assert!(t.get(48).is_none() && t.get(63).is_none());
        assert_eq!(t.len(), 1);
        drop((f, big));
        assert_eq!(arena.stats().live_bytes, 4096, "the big frame is free");
        drop(t);
        assert_eq!(
            small.refs(),
            1,
            "dropping the table gives up its references"
        );
    }

    #[test]
    fn trimming_gives_free_memory_back() {
        let arena = FrameArena::new(4096, 2 << 20);
        let mut f = arena.alloc(1 << 20, 0);
        f.clone().write().fill(1);
        let g = arena.alloc(1 << 20, 0);
        drop(std::mem::replace(&mut f, g));
        assert_eq!(arena.stats().held_bytes, 1 << 20);
        arena.trim(0);
        assert_eq!(arena.stats().held_bytes, 0);
        drop(f);
        let h = arena.alloc(1 << 20, 0);
        assert!(
            h.read().iter().all(|&b| b == 0),
            "given-back memory reads as zero"
        );
    }

    /// A small xorshift generator, so the tests need no dependency.
    fn next(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    #[test]
    fn threads_allocating_and_freeing_frames_never_share_bytes() {
        let arena = FrameArena::new(4096, 1 << 20);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let arena = arena.clone();
                s.spawn(move || {
                    let mut x = t + 1;
                    let mut held: Vec<(Frame, u8)> = Vec::new();
                    for i in 0..3000u64 {
                        let order = next(&mut x) % 6;
                        let f = arena.alloc(4096 << order, 0);
                        let tag = (t * 61 + i) as u8;
                        f.write().fill(tag);
                        held.push((f, tag));
                        if held.len() > 24 {
                            let k = next(&mut x) as usize % held.len();
                            let (f, tag) = held.swap_remove(k);
                            assert!(f.read().iter().all(|&b| b == tag), "bytes changed");
                        }
                    }
                    for (f, tag) in held {
                        assert!(f.read().iter().all(|&b| b == tag), "bytes changed");
                    }
                });
            }
        });
        let s = arena.stats();
        assert_eq!(s.live_bytes, 0);
        assert!(s.held_bytes <= s.mapped_bytes);
        arena.trim(0);
        assert_eq!(arena.stats().held_bytes, 0, "all free memory given back");
        let whole = arena.alloc(2 << 20, 0);
        assert!(
            whole.read().iter().all(|&b| b == 0),
            "given-back memory reads as zero, and the chunk merged whole again"
        );
    }

    #[test]
    fn readers_never_see_a_write_half_done() {
        let arena = FrameArena::new(4096, 65536);
        let f = arena.alloc(65536, 0);
        std::thread::scope(|s| {
            for t in 0..2u8 {
                let f = f.clone();
                s.spawn(move || {
                    for i in 0..400u32 {
                        f.write().fill(t.wrapping_mul(100).wrapping_add(i as u8));
                    }
                });
            }
            for _ in 0..2 {
                let f = f.clone();
                s.spawn(move || {
                    for _ in 0..400 {
                        let g = f.read_owned();
                        assert!(g.iter().all(|&b| b == g[0]), "a torn read");
                    }
                });
            }
        });
        assert_eq!(f.refs(), 1);
        assert!(f.try_write().is_some(), "every lock was let go");
    }

    #[test]
    fn trimming_units_smaller_than_a_page_never_touches_live_neighbours() {
        let arena = FrameArena::new(512, 4096);
        let frames: Vec<Frame> = (0..64u8)
            .map(|i| {
                let f = arena.alloc(512, 0);
                f.write().fill(i + 1);
                f
            })
            .collect();
        // Free every other unit: no page of the system is wholly free.
        let (kept, gone): (Vec<_>, Vec<_>) = frames.into_iter().partition(|f| f.id() % 2 == 0);
        drop(gone);
        let before = arena.stats().held_bytes;
        arena.trim(0);
        assert_eq!(
            arena.stats().held_bytes,
            before,
            "no whole free page to give back"
        );
        for f in &kept {
            let want = f.read()[0];
            assert!(
                want != 0 && f.read().iter().all(|&b| b == want),
                "a live frame changed"
            );
        }
        // Freed whole pages do go back.
        drop(kept);
        arena.trim(0);
        assert_eq!(arena.stats().held_bytes, 0);
    }

    #[test]
    fn a_waiting_writer_goes_before_readers_that_come_after_it() {
        let arena = FrameArena::new(4096, 4096);
        let f = arena.alloc(4096, 0);
        let order = AtomicU32::new(0);
        let held = f.read();
        std::thread::scope(|s| {
            let writer = s.spawn(|| {
                let _w = f.write();
                order.fetch_add(1, Ordering::SeqCst)
            });
            // Wait until the writer has announced itself.
            while f.desc().state.load(Ordering::SeqCst) & WRITER_WAITING == 0 {
                std::thread::yield_now();
            }
            assert!(f.try_read().is_some(), "a try still shares with the reader");
            let reader = s.spawn(|| {
                let _r = f.read();
                order.fetch_add(1, Ordering::SeqCst)
            });
            drop(held);
            assert_eq!(writer.join().unwrap(), 0, "the writer went first");
            assert_eq!(reader.join().unwrap(), 1);
        });
    }
}
