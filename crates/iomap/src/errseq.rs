//! Error sequences: Linux's `errseq_t`.
//!
//! One 32-bit word holds the last error's errno (low 12 bits), a SEEN flag, and a counter that
//! advances each time a new error is recorded after the previous one was seen. A reader keeps a
//! [`ErrSeqSince`] sampled at open and asks whether an error happened since; each reader learns
//! of each error once, and a reader that opens after an error nobody has seen still learns of it.

use std::sync::atomic::{AtomicU32, Ordering};

const ERRNO_BITS: u32 = 12;
const ERRNO_MASK: u32 = (1 << ERRNO_BITS) - 1;
const SEEN: u32 = 1 << ERRNO_BITS;
const CTR_INC: u32 = 1 << (ERRNO_BITS + 1);

/// An error sequence, kept per mapping and per filesystem.
#[derive(Debug, Default)]
pub struct ErrSeq(AtomicU32);

/// What a reader saw of an [`ErrSeq`] when it last looked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrSeqSince(u32);

impl ErrSeq {
    /// A sequence with no error recorded.
    pub const fn new() -> Self {
        Self(AtomicU32::new(0))
    }

    /// Records `errno` (a positive errno). The counter advances only if the previous error was
    /// seen, so errors that nobody looked at in between are reported once, as the latest.
    pub fn set(&self, errno: i32) {
        let errno = (errno.unsigned_abs()) & ERRNO_MASK;
        if errno == 0 {
            return;
        }
        let mut old = self.0.load(Ordering::Acquire);
        loop {
            let mut new = (old & !(ERRNO_MASK | SEEN)) | errno;
            if old & SEEN != 0 || old & ERRNO_MASK == 0 {
                new = new.wrapping_add(CTR_INC);
            }
            if new == old {
                return;
            }
            match self
                .0
                .compare_exchange_weak(old, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(cur) => old = cur,
            }
        }
    }

    /// Samples for a new reader: an error nobody has seen yet will still be reported to it.
    pub fn sample(&self) -> ErrSeqSince {
        let old = self.0.load(Ordering::Acquire);
        ErrSeqSince(if old & SEEN != 0 { old } else { 0 })
    }

    /// Returns the errno recorded since `since`, without advancing it.
    pub fn check(&self, since: ErrSeqSince) -> Option<i32> {
        let cur = self.0.load(Ordering::Acquire);
        ((cur & !SEEN) != (since.0 & !SEEN)).then_some((cur & ERRNO_MASK) as i32)
    }

    /// Returns the errno recorded since `since`, once: `since` advances and the error is marked
    /// seen.
    pub fn check_and_advance(&self, since: &mut ErrSeqSince) -> Option<i32> {
        let mut cur = self.0.load(Ordering::Acquire);
        if cur == since.0 {
            return None;
        }
        if cur & SEEN == 0 && cur & ERRNO_MASK != 0 {
            // Mark seen so the next error bumps the counter; losing this race only means
            // another reader marked it first.
            let _ = self
                .0
                .compare_exchange(cur, cur | SEEN, Ordering::AcqRel, Ordering::Acquire);
            cur |= SEEN;
        }
        let err = cur & ERRNO_MASK;
        let changed = (cur & !SEEN) != (since.0 & !SEEN);
        since.0 = cur;
        (changed && err != 0).then_some(err as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reader_sees_an_error_once() {
        let seq = ErrSeq::new();
        let mut a = seq.sample();
        let mut b = seq.sample();
        seq.set(5);
        assert_eq!(seq.check(a), Some(5));
        assert_eq!(seq.check_and_advance(&mut a), Some(5));
        assert_eq!(seq.check_and_advance(&mut a), None);
        assert_eq!(seq.check_and_advance(&mut b), Some(5));
        assert_eq!(seq.check_and_advance(&mut b), None);
    }

    #[test]
    fn a_late_opener_sees_an_unseen_error_but_not_a_seen_one() {
        let seq = ErrSeq::new();
        seq.set(28);
        let mut late = seq.sample();
        assert_eq!(seq.check_and_advance(&mut late), Some(28));
        let mut later = seq.sample();
        assert_eq!(seq.check_and_advance(&mut later), None);
    }

    #[test]
    fn a_second_error_after_being_seen_is_reported_again() {
        let seq = ErrSeq::new();
        let mut a = seq.sample();
        seq.set(5);
        assert_eq!(seq.check_and_advance(&mut a), Some(5));
        seq.set(5);
        assert_eq!(seq.check_and_advance(&mut a), Some(5));
        seq.set(28);
        seq.set(5);
        assert_eq!(seq.check_and_advance(&mut a), Some(5));
        assert_eq!(seq.check_and_advance(&mut a), None);
    }
}
