//! Extent maps.
//!
//! A [`RangeMap`] maps runs of `u64` units (file blocks or device blocks) to values that
//! describe them, such as the device address a run of file blocks lives at. Runs never
//! overlap, and neighbouring runs that continue each other are always merged, so every
//! mapping has exactly one representation.
//!
//! A run must end at or before `u64::MAX`, so unit `u64::MAX` itself can never be mapped.

use std::collections::BTreeMap;
use std::ops::Bound;

/// A value that can describe part of an extent.
///
/// `advance(d)` is the value for the piece starting `d` units into the extent: a device
/// block address advances by `d`, while a value that is the same for every unit (a flag or
/// a count) stays the same.
///
/// Implementations must compose: `v.advance(a).advance(b) == v.advance(a + b)`, and
/// `v.advance(0) == v`.
pub trait Extent: Clone + PartialEq + std::fmt::Debug {
    /// The value describing the unit `delta` units after the one `self` describes.
    fn advance(&self, delta: u64) -> Self;
}

/// A map from non-overlapping runs of `u64` units to values describing them.
///
/// Runs are reported as `(start, len, value)`, where `value` describes unit `start`.
/// After every mutation, no two stored runs continue each other (one ending where the next
/// starts with the value its end advances to), so equal mappings compare equal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeMap<V> {
    /// Start of each run to its length (never zero) and value.
    map: BTreeMap<u64, (u64, V)>,
    /// Sum of all lengths; cannot overflow since runs are disjoint within `0..u64::MAX`.
    total: u64,
}

impl<V> Default for RangeMap<V> {
    fn default() -> Self {
        Self {
            map: BTreeMap::new(),
            total: 0,
        }
    }
}

/// The end of `[start, start + len)`, clamped to `u64::MAX`.
fn end_of(start: u64, len: u64) -> u64 {
    start.saturating_add(len)
}

impl<V: Extent> RangeMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The number of stored runs.
    pub fn entries(&self) -> usize {
        self.map.len()
    }

    /// The number of mapped units.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The run containing `at`, trimmed to start at `at`: `(at, remaining len, value at at)`.
    pub fn lookup(&self, at: u64) -> Option<(u64, u64, V)> {
        let (&s, (l, v)) = self.map.range(..=at).next_back()?;
        let end = s + l;
        (end > at).then(|| (at, end - at, v.advance(at - s)))
    }

    /// The first run that ends after `at`, trimmed to start no earlier than `at`.
    pub fn next_from(&self, at: u64) -> Option<(u64, u64, V)> {
        self.lookup(at).or_else(|| {
            // No run contains `at`, so none starts there either.
            self.map
                .range((Bound::Excluded(at), Bound::Unbounded))
                .next()
                .map(|(&s, (l, v))| (s, *l, v.clone()))
        })
    }

    /// The runs overlapping `[start, end)`, trimmed to it, in order.
    pub fn range(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, u64, V)> + '_ {
        // `BTreeMap::range` panics on reversed bounds; an empty window maps nothing.
        let end = end.max(start);
        let first = self
            .map
            .range(..start)
            .next_back()
            .filter(|(&s, (l, _))| start < end && s + l > start);
        first
            .into_iter()
            .chain(self.map.range(start..end))
            .map(move |(&s, (l, v))| {
                let from = s.max(start);
                let to = (s + l).min(end);
                (from, to - from, v.advance(from - s))
            })
    }

    /// All runs in order, untrimmed.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, &V)> + '_ {
        self.map.iter().map(|(&s, (l, v))| (s, *l, v))
    }

    /// Maps `[start, start + len)` to `v` (`v` describes unit `start`), replacing whatever
    /// was there, and returns the replaced pieces, trimmed, in order.
    ///
    /// The run is clamped to end at `u64::MAX`. The new run is merged with neighbours that
    /// continue it.
    pub fn insert(&mut self, start: u64, len: u64, v: V) -> Vec<(u64, u64, V)> {
        let end = end_of(start, len);
        if end == start {
            return Vec::new();
        }
        let replaced = self.remove(start, end - start);
        self.total += end - start;

        let (mut s, mut l, mut val) = (start, end - start, v);
        // `remove` left a gap at [start, end), so a neighbour can only touch its edges.
        if let Some((&ps, (pl, pv))) = self.map.range(..start).next_back() {
            if ps + pl == start && pv.advance(*pl) == val {
                (s, l, val) = (ps, pl + l, pv.clone());
                self.map.remove(&ps);
            }
        }
        if let Some((nl, nv)) = self.map.get(&end) {
            if val.advance(l) == *nv {
                l += nl;
                self.map.remove(&end);
            }
        }
        self.map.insert(s, (l, val));
        replaced
    }

    /// Unmaps `[start, start + len)` and returns the removed pieces, trimmed, in order.
    ///
    /// The range is clamped to end at `u64::MAX`.
    pub fn remove(&mut self, start: u64, len: u64) -> Vec<(u64, u64, V)> {
        let end = end_of(start, len);
        if end == start {
            return Vec::new();
        }
        self.split_at(start);
        self.split_at(end);
        let keys: Vec<u64> = self.map.range(start..end).map(|(&s, _)| s).collect();
        let mut removed = Vec::with_capacity(keys.len());
        for s in keys {
            if let Some((l, v)) = self.map.remove(&s) {
                self.total -= l;
                removed.push((s, l, v));
            }
        }
        removed
    }

    /// Moves every run at or after `from` down by `delta` units, as for collapsing a range
    /// out of a file.
    ///
    /// Returns `false`, changing nothing, unless `delta <= from` and `[from - delta, from)`
    /// is unmapped. The run ending at `from - delta` is merged with the one moved there if
    /// they continue each other.
    #[must_use]
    pub fn shift_down(&mut self, from: u64, delta: u64) -> bool {
        if delta == 0 {
            return true;
        }
        let Some(dest) = from.checked_sub(delta) else {
            return false;
        };
        if self.range(dest, from).next().is_some() {
            return false;
        }
        // With `from - 1` unmapped, no run straddles `from`.
        let tail = self.map.split_off(&from);
        let moved = tail.into_iter().map(|(s, lv)| (s - delta, lv));
        self.map.extend(moved);
        self.merge_at(dest);
        true
    }

    /// Moves every unit at or after `from` up by `delta` units, splitting a run that
    /// straddles `from`, as for inserting a hole into a file.
    ///
    /// Returns `false`, changing nothing, if a moved run would end past `u64::MAX`.
    #[must_use]
    pub fn shift_up(&mut self, from: u64, delta: u64) -> bool {
        if delta == 0 {
            return true;
        }
        if let Some((&s, (l, _))) = self.map.last_key_value() {
            if s + l > from && (s + l).checked_add(delta).is_none() {
                return false;
            }
        }
        self.split_at(from);
        let tail = self.map.split_off(&from);
        let moved = tail.into_iter().map(|(s, lv)| (s + delta, lv));
        self.map.extend(moved);
        // The split pieces are now `delta` apart, so nothing new touches.
        true
    }

    /// Splits the run containing `at`, if it starts before `at`, into two at `at`.
    fn split_at(&mut self, at: u64) {
        let Some((&s, (l, _))) = self.map.range(..at).next_back() else {
            return;
        };
        if s + l <= at {
            return;
        }
        if let Some((l, v)) = self.map.get_mut(&s) {
            let head = at - s;
            let tail = (*l - head, v.advance(head));
            *l = head;
            self.map.insert(at, tail);
        }
    }

    /// Merges the run starting at `at` into the run before it if it continues that one.
    fn merge_at(&mut self, at: u64) {
        let Some((nl, nv)) = self.map.get(&at) else {
            return;
        };
        let Some((&ps, (pl, pv))) = self.map.range(..at).next_back() else {
            return;
        };
        if ps + pl != at || pv.advance(*pl) != *nv {
            return;
        }
        let nl = *nl;
        self.map.remove(&at);
        if let Some((pl, _)) = self.map.get_mut(&ps) {
            *pl += nl;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A device address with a tag, so that runs can differ without being far apart.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Dev {
        tag: u8,
        addr: u64,
    }

    impl Extent for Dev {
        fn advance(&self, delta: u64) -> Self {
            Dev {
                tag: self.tag,
                addr: self.addr + delta,
            }
        }
    }

    fn dev(tag: u8, addr: u64) -> Dev {
        Dev { tag, addr }
    }

    /// A value that is the same for every unit of a run.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Flag(u8);

    impl Extent for Flag {
        fn advance(&self, _delta: u64) -> Self {
            *self
        }
    }

    fn runs<V: Extent>(m: &RangeMap<V>) -> Vec<(u64, u64, V)> {
        m.iter().map(|(s, l, v)| (s, l, v.clone())).collect()
    }

    #[test]
    fn empty_and_zero_length() {
        let mut m = RangeMap::<Dev>::new();
        assert!(m.is_empty());
        assert!(m.insert(5, 0, dev(0, 0)).is_empty());
        assert!(m.remove(5, 0).is_empty());
        assert!(m.is_empty());
        assert_eq!(m.lookup(0), None);
        assert_eq!(m.next_from(0), None);
        assert_eq!(m.range(0, u64::MAX).count(), 0);
    }

    #[test]
    fn split_in_the_middle() {
        let mut m = RangeMap::new();
        m.insert(10, 10, dev(0, 100));
        let old = m.insert(13, 2, dev(1, 500));
        assert_eq!(old, vec![(13, 2, dev(0, 103))]);
        assert_eq!(
            runs(&m),
            vec![
                (10, 3, dev(0, 100)),
                (13, 2, dev(1, 500)),
                (15, 5, dev(0, 105)),
            ]
        );
        assert_eq!(m.total(), 10);

        let gone = m.remove(11, 1);
        assert_eq!(gone, vec![(11, 1, dev(0, 101))]);
        assert_eq!(m.entries(), 4);
        assert_eq!(m.total(), 9);
    }

    #[test]
    fn replace_across_several() {
        let mut m = RangeMap::new();
        m.insert(0, 4, Flag(1));
        m.insert(6, 4, Flag(2));
        m.insert(12, 4, Flag(3));
        let old = m.insert(2, 12, Flag(9));
        assert_eq!(
            old,
            vec![(2, 2, Flag(1)), (6, 4, Flag(2)), (12, 2, Flag(3))]
        );
        assert_eq!(
            runs(&m),
            vec![(0, 2, Flag(1)), (2, 12, Flag(9)), (14, 2, Flag(3))]
        );
        assert_eq!(m.total(), 16);
    }

    #[test]
    fn merges_with_both_neighbours() {
        let mut m = RangeMap::new();
        m.insert(0, 5, dev(0, 100));
        m.insert(10, 5, dev(0, 110));
        assert!(m.insert(5, 5, dev(0, 105)).is_empty());
        assert_eq!(runs(&m), vec![(0, 15, dev(0, 100))]);

        // Only a neighbour whose value continues is merged.
        let mut m = RangeMap::new();
        m.insert(0, 5, dev(0, 100));
        m.insert(10, 5, dev(0, 111));
        m.insert(5, 5, dev(0, 105));
        assert_eq!(runs(&m), vec![(0, 10, dev(0, 100)), (10, 5, dev(0, 111))]);

        // Overwriting a piece with what was already there restores one run.
        let mut m = RangeMap::new();
        m.insert(0, 10, dev(0, 100));
        m.insert(3, 3, dev(1, 0));
        m.insert(3, 3, dev(0, 103));
        assert_eq!(runs(&m), vec![(0, 10, dev(0, 100))]);
    }

    #[test]
    fn lookup_and_next_from_at_edges() {
        let mut m = RangeMap::new();
        m.insert(10, 5, dev(0, 100));
        m.insert(20, 5, dev(1, 200));
        assert_eq!(m.lookup(9), None);
        assert_eq!(m.lookup(10), Some((10, 5, dev(0, 100))));
        assert_eq!(m.lookup(14), Some((14, 1, dev(0, 104))));
        assert_eq!(m.lookup(15), None);
        assert_eq!(m.next_from(0), Some((10, 5, dev(0, 100))));
        assert_eq!(m.next_from(12), Some((12, 3, dev(0, 102))));
        assert_eq!(m.next_from(15), Some((20, 5, dev(1, 200))));
        assert_eq!(m.next_from(24), Some((24, 1, dev(1, 204))));
        assert_eq!(m.next_from(25), None);
        assert_eq!(
            m.range(12, 22).collect::<Vec<_>>(),
            vec![(12, 3, dev(0, 102)), (20, 2, dev(1, 200))]
        );
        assert_eq!(m.range(15, 20).count(), 0);
        assert_eq!(m.range(22, 12).count(), 0);
    }

    #[test]
    fn clamps_at_the_top() {
        let mut m = RangeMap::new();
        m.insert(u64::MAX - 3, u64::MAX, Flag(1));
        assert_eq!(m.total(), 3);
        assert_eq!(m.lookup(u64::MAX - 2), Some((u64::MAX - 2, 2, Flag(1))));
        assert_eq!(m.lookup(u64::MAX), None);
        assert_eq!(m.remove(u64::MAX - 2, 10), vec![(u64::MAX - 2, 2, Flag(1))]);
        assert_eq!(m.total(), 1);
    }

    #[test]
    fn shifts() {
        let mut m = RangeMap::new();
        m.insert(0, 5, dev(0, 100));
        m.insert(10, 5, dev(0, 105));
        assert!(!m.shift_down(10, 6), "[4, 10) is not empty");
        assert!(!m.shift_down(3, 4), "below zero");
        assert!(m.shift_down(10, 5));
        assert_eq!(runs(&m), vec![(0, 10, dev(0, 100))]);

        assert!(m.shift_up(4, 6));
        assert_eq!(runs(&m), vec![(0, 4, dev(0, 100)), (10, 6, dev(0, 104))]);
        assert!(m.shift_up(20, 1), "nothing at or after 20");
        assert!(!m.shift_up(0, u64::MAX - 10));
        assert_eq!(runs(&m), vec![(0, 4, dev(0, 100)), (10, 6, dev(0, 104))]);
        assert_eq!(m.total(), 10);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u64, u64, Dev),
        Remove(u64, u64),
        ShiftDown(u64, u64),
        ShiftUp(u64, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let unit = 0u64..200;
        let len = 0u64..40;
        let value = (0u8..2, 0u64..30).prop_map(|(tag, addr)| dev(tag, addr));
        prop_oneof![
            4 => (unit.clone(), len.clone(), value).prop_map(|(s, l, v)| Op::Insert(s, l, v)),
            2 => (unit.clone(), len.clone()).prop_map(|(s, l)| Op::Remove(s, l)),
            1 => (unit.clone(), len.clone()).prop_map(|(f, d)| Op::ShiftDown(f, d)),
            1 => (unit, len).prop_map(|(f, d)| Op::ShiftUp(f, d)),
        ]
    }

    type Model = BTreeMap<u64, Dev>;

    /// Maximal runs of the model within `[start, end)`.
    fn model_runs(model: &Model, start: u64, end: u64) -> Vec<(u64, u64, Dev)> {
        let mut out: Vec<(u64, u64, Dev)> = Vec::new();
        for (&u, &v) in model.range(start..end.max(start)) {
            match out.last_mut() {
                Some((s, l, first)) if *s + *l == u && first.advance(*l) == v => *l += 1,
                _ => out.push((u, 1, v)),
            }
        }
        out
    }

    fn model_shift(model: &mut Model, from: u64, by: impl Fn(u64) -> u64) {
        let tail = model.split_off(&from);
        model.extend(tail.into_iter().map(|(u, v)| (by(u), v)));
    }

    proptest! {
        #[test]
        fn matches_model(ops in proptest::collection::vec(op(), 1..60)) {
            let mut m = RangeMap::new();
            let mut model = Model::new();
            for op in ops {
                match op {
                    Op::Insert(s, l, v) => {
                        let expect = model_runs(&model, s, s + l);
                        prop_assert_eq!(m.insert(s, l, v), expect);
                        for i in 0..l {
                            model.insert(s + i, v.advance(i));
                        }
                    }
                    Op::Remove(s, l) => {
                        let expect = model_runs(&model, s, s + l);
                        prop_assert_eq!(m.remove(s, l), expect);
                        for i in 0..l {
                            model.remove(&(s + i));
                        }
                    }
                    Op::ShiftDown(f, d) => {
                        let ok = d == 0
                            || (d <= f && model.range(f - d..f).next().is_none());
                        prop_assert_eq!(m.shift_down(f, d), ok);
                        if ok {
                            model_shift(&mut model, f, |u| u - d);
                        }
                    }
                    Op::ShiftUp(f, d) => {
                        prop_assert!(m.shift_up(f, d));
                        model_shift(&mut model, f, |u| u + d);
                    }
                }

                let top = model.keys().next_back().map_or(0, |&u| u + 2).max(200);
                for u in 0..top {
                    let got = m.lookup(u).map(|(at, _, v)| (at, v));
                    prop_assert_eq!(got, model.get(&u).map(|&v| (u, v)));
                }
                prop_assert_eq!(m.total(), model.len() as u64);
                // Stored runs are the model's maximal runs: nothing is left unmerged.
                prop_assert_eq!(runs(&m), model_runs(&model, 0, u64::MAX));
                prop_assert_eq!(m.entries(), runs(&m).len());
                prop_assert_eq!(m.is_empty(), model.is_empty());
                for (s, e) in [(0, 50), (37, 121), (150, top)] {
                    prop_assert_eq!(m.range(s, e).collect::<Vec<_>>(), model_runs(&model, s, e));
                }
                for at in [0, 17, 99, 180] {
                    let expect = model_runs(&model, at, u64::MAX).into_iter().next();
                    prop_assert_eq!(m.next_from(at), expect);
                }
            }
        }
    }
}
