//! Per-block state of a folio holding more than one block, the kernel's `iomap_folio_state`:
//! an uptodate bit and a dirty bit per block, and the bytes of read and write I/O in flight.
//!
//! Invariants (checked in debug builds by [`FolioState::check`]):
//! 1. a dirty block is uptodate;
//! 2. pending byte counts never go below zero (they are unsigned and decremented with checks).

/// A fixed-length bitmap over a folio's blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockBitmap {
    words: Box<[u64]>,
    nbits: usize,
}

impl BlockBitmap {
    /// `nbits` clear bits.
    pub fn new(nbits: usize) -> Self {
        Self {
            words: vec![0; nbits.div_ceil(64)].into_boxed_slice(),
            nbits,
        }
    }

    /// Number of bits.
    pub fn len(&self) -> usize {
        self.nbits
    }

    /// True for a zero-length bitmap.
    pub fn is_empty(&self) -> bool {
        self.nbits == 0
    }

    /// Bit `i`.
    pub fn get(&self, i: usize) -> bool {
        debug_assert!(i < self.nbits);
        self.words[i / 64] & (1 << (i % 64)) != 0
    }

    fn apply(&mut self, first: usize, count: usize, set: bool) {
        debug_assert!(first + count <= self.nbits);
        let mut i = first;
        let end = first + count;
        while i < end {
            let bit = i % 64;
            let n = (64 - bit).min(end - i);
            let mask = if n == 64 {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << bit
            };
            if set {
                self.words[i / 64] |= mask;
            } else {
                self.words[i / 64] &= !mask;
            }
            i += n;
        }
    }

    /// Sets `count` bits from `first`.
    pub fn set_range(&mut self, first: usize, count: usize) {
        self.apply(first, count, true);
    }

    /// Clears `count` bits from `first`.
    pub fn clear_range(&mut self, first: usize, count: usize) {
        self.apply(first, count, false);
    }

    /// Sets every bit.
    pub fn set_all(&mut self) {
        self.set_range(0, self.nbits);
    }

    /// The first bit at or after `from` whose value is `value`, if any.
    pub fn find_next(&self, from: usize, value: bool) -> Option<usize> {
        let mut i = from;
        while i < self.nbits {
            let mut word = self.words[i / 64];
            if !value {
                word = !word;
            }
            word &= u64::MAX << (i % 64);
            if word != 0 {
                let found = (i / 64) * 64 + word.trailing_zeros() as usize;
                return (found < self.nbits).then_some(found);
            }
            i = (i / 64 + 1) * 64;
        }
        None
    }

    /// True when all `count` bits from `first` are set.
    pub fn all_set(&self, first: usize, count: usize) -> bool {
        count == 0
            || self
                .find_next(first, false)
                .is_none_or(|i| i >= first + count)
    }

    /// True when any of `count` bits from `first` is set.
    pub fn any_set(&self, first: usize, count: usize) -> bool {
        count != 0
            && self
                .find_next(first, true)
                .is_some_and(|i| i < first + count)
    }

    /// True when every bit is set.
    pub fn is_full(&self) -> bool {
        self.all_set(0, self.nbits)
    }

    /// The runs of set bits, as `(first, count)`, in order.
    pub fn runs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let mut at = 0;
        std::iter::from_fn(move || {
            let first = self.find_next(at, true)?;
            let end = self.find_next(first, false).unwrap_or(self.nbits);
            at = end;
            Some((first, end - first))
        })
    }
}

/// Per-block state of one folio.
#[derive(Clone, Debug)]
pub struct FolioState {
    /// One bit per block: the cached bytes are the file's bytes.
    pub uptodate: BlockBitmap,
    /// One bit per block: the cached bytes are newer than the device's.
    pub dirty: BlockBitmap,
    /// Bytes of read I/O in flight, plus the unsubmitted share held by the reader building it.
    pub read_bytes_pending: u64,
    /// Bytes of write I/O in flight, plus the unsubmitted share held by writeback building it.
    pub write_bytes_pending: u64,
}

impl FolioState {
    /// State for `nblocks` blocks inheriting the whole-folio flags, as when the state is created
    /// after the folio was already uptodate or dirty.
    pub fn new(nblocks: usize, uptodate: bool, dirty: bool) -> Self {
        let mut s = Self {
            uptodate: BlockBitmap::new(nblocks),
            dirty: BlockBitmap::new(nblocks),
            read_bytes_pending: 0,
            write_bytes_pending: 0,
        };
        if uptodate {
            s.uptodate.set_all();
        }
        if dirty {
            s.dirty.set_all();
        }
        s
    }

    /// Checks the invariants listed in the module comment.
    pub fn check(&self) {
        for (first, count) in self.dirty.runs() {
            assert!(
                self.uptodate.all_set(first, count),
                "dirty blocks {first}+{count} are not uptodate"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_set_and_clear_across_word_boundaries() {
        let mut b = BlockBitmap::new(130);
        b.set_range(60, 10);
        assert!(b.all_set(60, 10));
        assert!(!b.get(59) && !b.get(70));
        assert!(b.any_set(0, 61) && !b.any_set(0, 60));
        b.clear_range(63, 2);
        assert_eq!(b.runs().collect::<Vec<_>>(), [(60, 3), (65, 5)]);
        b.set_range(0, 130);
        assert!(b.is_full());
        assert_eq!(b.find_next(0, false), None);
        b.clear_range(129, 1);
        assert_eq!(b.find_next(0, false), Some(129));
        assert_eq!(b.runs().collect::<Vec<_>>(), [(0, 129)]);
    }

    #[test]
    fn find_next_respects_the_bitmap_length() {
        let b = BlockBitmap::new(3);
        assert_eq!(b.find_next(0, false), Some(0));
        assert_eq!(b.find_next(0, true), None);
        assert_eq!(b.find_next(3, false), None);
        let full = {
            let mut f = BlockBitmap::new(64);
            f.set_all();
            f
        };
        assert_eq!(full.find_next(0, false), None);
        assert!(full.all_set(0, 64));
    }

    #[test]
    fn late_state_inherits_whole_folio_flags() {
        let s = FolioState::new(8, true, true);
        assert!(s.uptodate.is_full() && s.dirty.is_full());
        s.check();
        let s = FolioState::new(8, false, false);
        assert!(!s.uptodate.any_set(0, 8) && !s.dirty.any_set(0, 8));
    }

    #[test]
    #[should_panic(expected = "not uptodate")]
    fn a_dirty_block_that_is_not_uptodate_breaks_the_invariant() {
        let mut s = FolioState::new(4, false, false);
        s.dirty.set_range(1, 1);
        s.check();
    }
}
