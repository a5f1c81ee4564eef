//! Free space.
//!
//! [`FreeSpace`] tracks which device blocks are free, as runs of blocks, and hands out
//! contiguous runs near a hint.

use crate::rangemap::{Extent, RangeMap};

/// The value of a free run: every block of it is simply free.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Free;

impl Extent for Free {
    fn advance(&self, _delta: u64) -> Self {
        Free
    }
}

/// Why freeing or taking blocks failed. The free space is unchanged.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocError {
    /// Some block of the run was already free.
    #[error("double free: some of the {len} blocks starting at block {start} are already free")]
    DoubleFree {
        /// First block of the run.
        start: u64,
        /// Number of blocks in the run.
        len: u64,
    },
    /// Some block of the run was in use.
    #[error("some of the {len} blocks starting at block {start} are not free")]
    NotFree {
        /// First block of the run.
        start: u64,
        /// Number of blocks in the run.
        len: u64,
    },
    /// The run ends past the last addressable block.
    #[error("the {len} blocks starting at block {start} run past the last block address")]
    OutOfRange {
        /// First block of the run.
        start: u64,
        /// Number of blocks in the run.
        len: u64,
    },
}

/// Free device blocks, as runs.
///
/// Block `u64::MAX` can never be free, since a run must end at or before `u64::MAX`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FreeSpace {
    free: RangeMap<Free>,
}

/// The end of `[start, start + len)`, or an error if it does not fit in `u64`.
fn checked_end(start: u64, len: u64) -> Result<u64, AllocError> {
    start
        .checked_add(len)
        .ok_or(AllocError::OutOfRange { start, len })
}

impl FreeSpace {
    /// Free space with nothing free.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of free blocks.
    pub fn free_blocks(&self) -> u64 {
        self.free.total()
    }

    /// Marks `[start, start + len)` free.
    ///
    /// Fails, changing nothing, if any block in it is already free or the run ends past
    /// `u64::MAX`.
    pub fn free(&mut self, start: u64, len: u64) -> Result<(), AllocError> {
        let end = checked_end(start, len)?;
        if self.free.range(start, end).next().is_some() {
            return Err(AllocError::DoubleFree { start, len });
        }
        self.free.insert(start, len, Free);
        Ok(())
    }

    /// Marks `[start, start + len)` used.
    ///
    /// Fails, changing nothing, if any block in it is not free or the run ends past
    /// `u64::MAX`.
    pub fn take(&mut self, start: u64, len: u64) -> Result<(), AllocError> {
        checked_end(start, len)?;
        if len == 0 {
            return Ok(());
        }
        // Free runs are always merged, so a fully free range lies inside one run.
        match self.free.lookup(start) {
            Some((_, run, _)) if run >= len => {
                self.free.remove(start, len);
                Ok(())
            }
            _ => Err(AllocError::NotFree { start, len }),
        }
    }

    /// Marks whatever of `[start, start + len)` is free as used, for replaying metadata
    /// that may already be reflected here, and returns how many blocks were free.
    ///
    /// The range is clamped to end at `u64::MAX`.
    pub fn take_if_free(&mut self, start: u64, len: u64) -> u64 {
        self.free
            .remove(start, len)
            .iter()
            .map(|&(_, l, _)| l)
            .sum()
    }

    /// Whether `block` is free.
    pub fn is_free(&self, block: u64) -> bool {
        self.free.lookup(block).is_some()
    }

    /// Allocates up to `want` blocks as one contiguous run and returns it as
    /// `(start, len)`.
    ///
    /// Picks the first free stretch at or after `hint` at least `want` long (which may
    /// begin at `hint` inside a free run); else the first free run at least `want` long;
    /// else the longest free run, taking `min(len, want)` from its start. Returns `None`
    /// only when `want` is zero or nothing is free.
    pub fn alloc(&mut self, want: u64, hint: u64) -> Option<(u64, u64)> {
        if want == 0 {
            return None;
        }
        let near = self
            .free
            .range(hint, u64::MAX)
            .find(|&(_, l, _)| l >= want)
            .map(|(s, _, _)| (s, want));
        let (start, len) = near.or_else(|| {
            // Runs at or after `hint` were too short, but one straddling or before it may
            // do; otherwise settle for the longest (the first of equals).
            let mut longest: Option<(u64, u64)> = None;
            for (s, l, _) in self.free.iter() {
                if l >= want {
                    return Some((s, want));
                }
                if longest.is_none_or(|(_, best)| l > best) {
                    longest = Some((s, l));
                }
            }
            longest
        })?;
        self.free.remove(start, len);
        Some((start, len))
    }

    /// The free runs in order, as `(start, len)`.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.free.iter().map(|(s, l, _)| (s, l))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn runs(f: &FreeSpace) -> Vec<(u64, u64)> {
        f.iter().collect()
    }

    #[test]
    fn free_merges_and_detects_double_free() {
        let mut f = FreeSpace::new();
        assert_eq!(f.free_blocks(), 0);
        f.free(10, 5).unwrap();
        f.free(15, 5).unwrap();
        f.free(0, 5).unwrap();
        assert_eq!(runs(&f), vec![(0, 5), (10, 10)]);
        assert_eq!(
            f.free(4, 2),
            Err(AllocError::DoubleFree { start: 4, len: 2 })
        );
        assert_eq!(
            f.free(u64::MAX, 1),
            Err(AllocError::OutOfRange {
                start: u64::MAX,
                len: 1
            })
        );
        assert_eq!(runs(&f), vec![(0, 5), (10, 10)]);
        assert_eq!(f.free_blocks(), 15);
        assert!(f.is_free(4));
        assert!(!f.is_free(5));
    }

    #[test]
    fn take_requires_free_blocks() {
        let mut f = FreeSpace::new();
        f.free(0, 10).unwrap();
        f.free(12, 4).unwrap();
        assert_eq!(f.take(8, 5), Err(AllocError::NotFree { start: 8, len: 5 }));
        assert_eq!(
            f.take(10, 1),
            Err(AllocError::NotFree { start: 10, len: 1 })
        );
        f.take(2, 3).unwrap();
        assert_eq!(runs(&f), vec![(0, 2), (5, 5), (12, 4)]);
        assert_eq!(f.take_if_free(0, 14), 9);
        assert_eq!(runs(&f), vec![(14, 2)]);
        assert!(AllocError::NotFree { start: 8, len: 5 }
            .to_string()
            .contains("block 8"));
    }

    #[test]
    fn alloc_policy() {
        let mut f = FreeSpace::new();
        f.free(0, 4).unwrap();
        f.free(10, 10).unwrap();
        f.free(30, 3).unwrap();
        // Within a run at the hint.
        assert_eq!(f.alloc(3, 12), Some((12, 3)));
        // Nothing long enough after the hint: the first long enough from the start.
        assert_eq!(f.alloc(4, 25), Some((0, 4)));
        // Straddling the hint: the part after it is too short, the whole run is not.
        assert_eq!(f.alloc(5, 17), Some((15, 5)));
        assert_eq!(runs(&f), vec![(10, 2), (30, 3)]);
        // Nothing long enough anywhere: the longest run.
        assert_eq!(f.alloc(8, 0), Some((30, 3)));
        assert_eq!(f.alloc(0, 0), None);
        assert_eq!(f.alloc(8, 0), Some((10, 2)));
        assert_eq!(f.alloc(1, 0), None);
        assert_eq!(f.free_blocks(), 0);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Free(u64, u64),
        Take(u64, u64),
        TakeIfFree(u64, u64),
        Alloc(u64, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let block = 0u64..200;
        let len = 0u64..30;
        prop_oneof![
            3 => (block.clone(), len.clone()).prop_map(|(s, l)| Op::Free(s, l)),
            1 => (block.clone(), len.clone()).prop_map(|(s, l)| Op::Take(s, l)),
            1 => (block.clone(), len.clone()).prop_map(|(s, l)| Op::TakeIfFree(s, l)),
            2 => (len, block).prop_map(|(w, h)| Op::Alloc(w, h)),
        ]
    }

    /// Maximal runs of free blocks in the model.
    fn model_runs(model: &BTreeSet<u64>) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &b in model {
            match out.last_mut() {
                Some((s, l)) if *s + *l == b => *l += 1,
                _ => out.push((b, 1)),
            }
        }
        out
    }

    /// The run the documented policy picks.
    fn model_alloc(model: &BTreeSet<u64>, want: u64, hint: u64) -> Option<(u64, u64)> {
        if want == 0 {
            return None;
        }
        let all = model_runs(model);
        let trimmed = all.iter().filter(|&&(s, l)| s + l > hint).map(|&(s, l)| {
            let from = s.max(hint);
            (from, s + l - from)
        });
        let mut chosen = trimmed.chain(all.iter().copied()).find(|&(_, l)| l >= want);
        if chosen.is_none() {
            let best = all.iter().map(|&(_, l)| l).max()?;
            chosen = all.iter().copied().find(|&(_, l)| l == best);
        }
        chosen.map(|(s, l)| (s, l.min(want)))
    }

    proptest! {
        #[test]
        fn matches_model(ops in proptest::collection::vec(op(), 1..80)) {
            let mut f = FreeSpace::new();
            let mut model = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Free(s, l) => {
                        let clash = (s..s + l).any(|b| model.contains(&b));
                        let got = f.free(s, l);
                        if clash {
                            prop_assert_eq!(got, Err(AllocError::DoubleFree { start: s, len: l }));
                        } else {
                            prop_assert_eq!(got, Ok(()));
                            model.extend(s..s + l);
                        }
                    }
                    Op::Take(s, l) => {
                        let all_free = (s..s + l).all(|b| model.contains(&b));
                        let got = f.take(s, l);
                        if all_free {
                            prop_assert_eq!(got, Ok(()));
                            for b in s..s + l {
                                model.remove(&b);
                            }
                        } else {
                            prop_assert_eq!(got, Err(AllocError::NotFree { start: s, len: l }));
                        }
                    }
                    Op::TakeIfFree(s, l) => {
                        let was = (s..s + l).filter(|b| model.remove(b)).count() as u64;
                        prop_assert_eq!(f.take_if_free(s, l), was);
                    }
                    Op::Alloc(want, hint) => {
                        let expect = model_alloc(&model, want, hint);
                        let got = f.alloc(want, hint);
                        prop_assert_eq!(got, expect);
                        if let Some((s, l)) = got {
                            prop_assert!(l > 0 && l <= want);
                            for b in s..s + l {
                                prop_assert!(model.remove(&b), "block {} was not free", b);
                            }
                        } else {
                            prop_assert!(want == 0 || model.is_empty());
                        }
                    }
                }
                prop_assert_eq!(f.free_blocks(), model.len() as u64);
                prop_assert_eq!(runs(&f), model_runs(&model));
                for b in 0..240 {
                    prop_assert_eq!(f.is_free(b), model.contains(&b));
                }
            }
        }
    }
}
