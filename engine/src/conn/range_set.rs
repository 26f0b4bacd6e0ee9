//! A set of `u64` values stored as sorted, disjoint, non-adjacent half-open ranges.
//!
//! Used for received packet numbers (ACK generation), acknowledged stream bytes and
//! reassembly bookkeeping. Backed by a `Vec` that is reused, so steady-state inserts do
//! not allocate; `with_limit` bounds the number of ranges a peer can make us keep
//! (dropping the lowest ones, which are the least useful to remember).

use std::ops::Range;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: Vec<Range<u64>>,
    limit: Option<usize>,
}

impl RangeSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// A set that keeps at most `limit` ranges, discarding the lowest when over.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            ranges: Vec::with_capacity(limit + 1),
            limit: Some(limit.max(1)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Number of disjoint ranges.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn min(&self) -> Option<u64> {
        self.ranges.first().map(|r| r.start)
    }

    /// Largest value in the set.
    pub fn max(&self) -> Option<u64> {
        self.ranges.last().map(|r| r.end - 1)
    }

    pub fn clear(&mut self) {
        self.ranges.clear();
    }

    /// Index of the first range whose end is >= `value` (the range that could hold or
    /// follow `value`).
    fn search(&self, value: u64) -> usize {
        self.ranges.partition_point(|r| r.end < value)
    }

    pub fn contains(&self, value: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.end <= value);
        self.ranges.get(i).is_some_and(|r| r.start <= value)
    }

    /// True if every value of `range` is in the set.
    pub fn contains_range(&self, range: Range<u64>) -> bool {
        if range.is_empty() {
            return true;
        }
        let i = self.ranges.partition_point(|r| r.end <= range.start);
        self.ranges
            .get(i)
            .is_some_and(|r| r.start <= range.start && range.end <= r.end)
    }

    pub fn insert_one(&mut self, value: u64) -> bool {
        self.insert(value..value + 1)
    }

    /// True if inserting `range` would add a disjoint range (it neither overlaps nor
    /// touches any range already in the set).
    pub fn would_add_range(&self, range: Range<u64>) -> bool {
        !range.is_empty()
            && self
                .ranges
                .get(self.search(range.start))
                .is_none_or(|r| r.start > range.end)
    }

    /// Adds `range`; returns true if any value was new.
    pub fn insert(&mut self, range: Range<u64>) -> bool {
        self.insert_counting(range) > 0
    }

    /// Adds `range`; returns how many of its values were new.
    pub fn insert_counting(&mut self, range: Range<u64>) -> u64 {
        if range.is_empty() {
            return 0;
        }
        // Fast path: appending at or past the top, the common case for packet numbers and
        // in-order stream data.
        if let Some(last) = self.ranges.last_mut() {
            if range.start >= last.start && range.start <= last.end {
                if range.end <= last.end {
                    return 0;
                }
                let added = range.end - last.end;
                last.end = range.end;
                return added;
            }
        }
        // Also common: the first range of a fresh set, or one beyond a gap above the top
        // (neither overlapping nor touching anything).
        if self.ranges.last().is_none_or(|last| range.start > last.end) {
            let added = range.end - range.start;
            self.ranges.push(range);
            self.enforce_limit();
            return added;
        }
        let i = self.search(range.start);
        // Ranges i..j overlap or touch `range`.
        let mut j = i;
        let mut merged = 0;
        while j < self.ranges.len() && self.ranges[j].start <= range.end {
            merged += self.ranges[j].end - self.ranges[j].start;
            j += 1;
        }
        if i == j {
            let added = range.end - range.start;
            self.ranges.insert(i, range);
            self.enforce_limit();
            return added;
        }
        let new_start = range.start.min(self.ranges[i].start);
        let new_end = range.end.max(self.ranges[j - 1].end);
        self.ranges[i] = new_start..new_end;
        self.ranges.drain(i + 1..j);
        (new_end - new_start) - merged
    }

    /// Removes every value of `range`.
    pub fn remove(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        let mut i = self.ranges.partition_point(|r| r.end <= range.start);
        while i < self.ranges.len() && self.ranges[i].start < range.end {
            let r = self.ranges[i].clone();
            if r.start < range.start && r.end > range.end {
                // Split in two.
                self.ranges[i] = r.start..range.start;
                self.ranges.insert(i + 1, range.end..r.end);
                self.enforce_limit();
                return;
            } else if r.start < range.start {
                self.ranges[i].end = range.start;
                i += 1;
            } else if r.end > range.end {
                self.ranges[i].start = range.end;
                return;
            } else {
                self.ranges.remove(i);
            }
        }
    }

    /// Removes every value below `value`.
    pub fn remove_below(&mut self, value: u64) {
        self.remove(0..value);
    }

    /// Removes and returns the lowest range.
    pub fn pop_min(&mut self) -> Option<Range<u64>> {
        if self.ranges.is_empty() {
            None
        } else {
            Some(self.ranges.remove(0))
        }
    }

    pub fn first(&self) -> Option<Range<u64>> {
        self.ranges.first().cloned()
    }

    /// Ranges in ascending order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Range<u64>> + ExactSizeIterator + '_ {
        self.ranges.iter().cloned()
    }

    fn enforce_limit(&mut self) {
        if let Some(limit) = self.limit {
            if self.ranges.len() > limit {
                let excess = self.ranges.len() - limit;
                self.ranges.drain(..excess);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn merges_and_splits() {
        let mut s = RangeSet::new();
        assert!(s.insert(5..10));
        assert!(s.insert(0..2));
        assert!(s.insert(2..5));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0..10]);
        assert!(!s.insert(3..7));
        s.remove(4..6);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0..4, 6..10]);
        assert!(s.contains(3) && !s.contains(4) && s.contains(6) && !s.contains(10));
        assert!(s.contains_range(6..10) && !s.contains_range(3..7));
        s.remove_below(7);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![7..10]);
    }

    #[test]
    fn limit_drops_lowest() {
        let mut s = RangeSet::with_limit(2);
        s.insert_one(1);
        s.insert_one(3);
        s.insert_one(5);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![3..4, 5..6]);
    }

    proptest! {
        #[test]
        fn behaves_like_a_set(ops in proptest::collection::vec((any::<bool>(), 0u64..200, 0u64..20), 0..60)) {
            let mut s = RangeSet::new();
            let mut model = BTreeSet::new();
            for (ins, start, len) in ops {
                if ins {
                    let added = s.insert_counting(start..start + len);
                    let mut model_added = 0;
                    for v in start..start + len { model_added += u64::from(model.insert(v)); }
                    prop_assert_eq!(added, model_added);
                } else {
                    s.remove(start..start + len);
                    for v in start..start + len { model.remove(&v); }
                }
                // Invariants: sorted, disjoint, non-adjacent, non-empty.
                let rs: Vec<_> = s.iter().collect();
                for w in rs.windows(2) { prop_assert!(w[0].end < w[1].start); }
                for r in &rs { prop_assert!(r.start < r.end); }
                let flat: BTreeSet<u64> = rs.iter().flat_map(|r| r.clone()).collect();
                prop_assert_eq!(&flat, &model);
            }
        }
    }
}
