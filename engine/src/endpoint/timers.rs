//! Connection deadlines: an indexed binary min-heap holding at most one entry per connection.
//!
//! A changed deadline moves the connection's entry in place. The lazy alternative (push a new
//! entry, skip stale ones when they surface) grows by one entry per timer change for as long as
//! the idle timeout, since stale idle deadlines only surface when they expire: millions of
//! entries on a busy worker, each pop walking a deep, cache-cold heap.

use std::time::Instant;

const ABSENT: u32 = u32::MAX;

#[derive(Debug, Default)]
pub(crate) struct TimerQueue {
    /// (deadline, handle), heap-ordered by deadline.
    heap: Vec<(Instant, usize)>,
    /// Index into `heap` of each handle's entry, or `ABSENT`.
    pos: Vec<u32>,
}

impl TimerQueue {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            heap: Vec::with_capacity(n),
            pos: Vec::with_capacity(n),
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// The deadline of `h`, if it has one.
    #[cfg(test)]
    pub fn get(&self, h: usize) -> Option<Instant> {
        let i = *self.pos.get(h)?;
        (i != ABSENT).then(|| self.heap[i as usize].0)
    }

    /// Sets (or with `None` clears) the deadline of `h`.
    pub fn set(&mut self, h: usize, deadline: Option<Instant>) {
        let i = self.pos.get(h).copied().unwrap_or(ABSENT);
        match (deadline, i) {
            (None, ABSENT) => {}
            (None, i) => self.remove_at(i as usize),
            (Some(t), ABSENT) => {
                if h >= self.pos.len() {
                    // Handles are slab indices: this grows only when the endpoint has more
                    // connections than ever before.
                    self.pos.resize(h + 1, ABSENT);
                }
                self.heap.push((t, h));
                let last = self.heap.len() - 1;
                self.pos[h] = last as u32;
                self.sift_up(last);
            }
            (Some(t), i) => {
                let i = i as usize;
                let old = std::mem::replace(&mut self.heap[i].0, t);
                if t < old {
                    self.sift_up(i);
                } else {
                    self.sift_down(i);
                }
            }
        }
    }

    /// Every (deadline, handle), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (Instant, usize)> + '_ {
        self.heap.iter().copied()
    }

    /// The earliest deadline and its handle.
    pub fn peek(&self) -> Option<(Instant, usize)> {
        self.heap.first().copied()
    }

    /// Removes and returns the handle with the earliest deadline if it is at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<usize> {
        let &(t, h) = self.heap.first()?;
        if t > now {
            return None;
        }
        self.remove_at(0);
        Some(h)
    }

    fn remove_at(&mut self, i: usize) {
        let last = self.heap.len() - 1;
        self.swap(i, last);
        let (_, h) = self.heap.pop().expect("index within the heap");
        self.pos[h] = ABSENT;
        if i < self.heap.len() {
            // The entry moved into the hole may belong above or below it.
            self.sift_up(i);
            self.sift_down(i);
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.pos[self.heap[a].1] = a as u32;
        self.pos[self.heap[b].1] = b as u32;
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[i].0 >= self.heap[parent].0 {
                break;
            }
            self.swap(i, parent);
            i = parent;
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        loop {
            let left = 2 * i + 1;
            if left >= n {
                break;
            }
            let right = left + 1;
            let child = if right < n && self.heap[right].0 < self.heap[left].0 {
                right
            } else {
                left
            };
            if self.heap[child].0 >= self.heap[i].0 {
                break;
            }
            self.swap(i, child);
            i = child;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_order_and_moves_entries() {
        let base = Instant::now();
        let at = |ms| Some(base + Duration::from_millis(ms));
        let mut q = TimerQueue::with_capacity(4);
        q.set(3, at(30));
        q.set(1, at(10));
        q.set(2, at(20));
        q.set(1, at(40)); // later: moves down
        q.set(3, at(5)); // earlier: moves up
        q.set(2, None);
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop_due(base + Duration::from_millis(4)), None);
        assert_eq!(q.pop_due(base + Duration::from_millis(100)), Some(3));
        assert_eq!(q.pop_due(base + Duration::from_millis(100)), Some(1));
        assert_eq!(q.pop_due(base + Duration::from_millis(100)), None);
        assert_eq!(q.len(), 0);
    }

    proptest! {
        /// Any sequence of updates leaves exactly one entry per handle with a deadline, and
        /// pops come out in deadline order.
        #[test]
        fn matches_a_reference_map(ops in proptest::collection::vec((0usize..40, proptest::option::of(0u64..1000)), 0..400)) {
            let base = Instant::now();
            let mut q = TimerQueue::with_capacity(8);
            let mut model: BTreeMap<usize, Instant> = BTreeMap::new();
            for (h, t) in ops {
                let t = t.map(|ms| base + Duration::from_millis(ms));
                q.set(h, t);
                match t {
                    Some(t) => { model.insert(h, t); }
                    None => { model.remove(&h); }
                }
                prop_assert_eq!(q.len(), model.len());
                for (&h, &t) in &model {
                    prop_assert_eq!(q.get(h), Some(t));
                }
                let min = model.values().min().copied();
                prop_assert_eq!(q.peek().map(|(t, _)| t), min);
            }
            let mut last = None;
            while let Some((t, h)) = q.peek() {
                prop_assert_eq!(q.pop_due(t), Some(h));
                prop_assert_eq!(model.remove(&h), Some(t));
                prop_assert!(last.is_none_or(|l| l <= t));
                last = Some(t);
            }
            prop_assert!(model.is_empty());
        }
    }
}
