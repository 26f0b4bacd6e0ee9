//! The stream table: stream id → boxed state.
//!
//! Streams are looked up by id many times per request (the peer's frame, each read and
//! write, the frame writer, the acknowledgement, the reap), so the common case should cost
//! a mask and a compare rather than a hash and a probe. A stream goes into a direct-mapped
//! slot, `slots[id % SLOTS]`, when that slot is free as it opens, and into a hash map
//! otherwise. Ids of one type are dense and a peer's come in order (§3.2), so streams
//! opened one after another take different slots: up to `SLOTS / 4` streams of one type
//! open at once never meet. A stream that stays open while later ones come and go shares
//! its slot with every `SLOTS / 4`-th of them, and those live in the map.
//!
//! Memory stays bounded by the streams open, whatever ids a peer picks: `SLOTS` slots
//! (allocated with the first stream) and a map entry per stream that found its slot
//! taken. The map keeps foldhash's per-map keys, since a peer chooses which ids collide.
//! A stream is in exactly one place: ids are never reused, so `insert` never meets an id
//! already present, and a lookup that misses its slot checks the map.

// Keyed per map (peers choose stream ids) and far cheaper than SipHash per frame.
use foldhash::{HashMap, HashMapExt};

use super::Stream;

/// Direct-mapped slots: a power of two, so that the four stream types (the id's low two
/// bits) get `SLOTS / 4` slots each.
const SLOTS: usize = 64;

#[derive(Debug)]
pub(super) struct StreamTable {
    /// Empty until the first stream, then `SLOTS` long. A slot holds a stream whose id
    /// maps to it (the state carries its id).
    slots: Vec<Option<Box<Stream>>>,
    /// Streams whose slot was taken when they opened.
    overflow: HashMap<u64, Box<Stream>>,
    len: usize,
}

const fn slot_of(id: u64) -> usize {
    (id % SLOTS as u64) as usize
}

impl StreamTable {
    pub(super) fn new() -> Self {
        Self {
            slots: Vec::new(),
            overflow: HashMap::new(),
            len: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Every stream, in no particular order.
    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = &Stream> {
        let slots = self.slots.iter().flatten().map(|s| &**s);
        slots.chain(self.overflow.values().map(|s| &**s))
    }

    #[inline]
    pub(super) fn get(&self, id: u64) -> Option<&Stream> {
        match self.slots.get(slot_of(id)) {
            Some(Some(s)) if s.id == id => Some(s),
            _ => self.overflow.get(&id).map(|s| &**s),
        }
    }

    #[inline]
    pub(super) fn get_mut(&mut self, id: u64) -> Option<&mut Stream> {
        match self.slots.get_mut(slot_of(id)) {
            Some(Some(s)) if s.id == id => Some(s),
            _ => self.overflow.get_mut(&id).map(|s| &mut **s),
        }
    }

    /// Adds a stream whose id (`stream.id`) is not in the table.
    #[inline]
    pub(super) fn insert(&mut self, stream: Box<Stream>) {
        debug_assert!(self.get(stream.id).is_none(), "stream id reused");
        self.len += 1;
        match self.slots.get_mut(slot_of(stream.id)) {
            Some(free @ None) => *free = Some(stream),
            _ => self.insert_slow(stream),
        }
    }

    /// The first stream (which allocates the slots), or one whose slot is taken.
    #[cold]
    fn insert_slow(&mut self, stream: Box<Stream>) {
        if self.slots.is_empty() {
            self.slots.resize_with(SLOTS, || None);
        }
        match &mut self.slots[slot_of(stream.id)] {
            free @ None => *free = Some(stream),
            Some(_) => {
                self.overflow.insert(stream.id, stream);
            }
        }
    }

    pub(super) fn remove(&mut self, id: u64) -> Option<Box<Stream>> {
        let removed = match self.slots.get_mut(slot_of(id)) {
            Some(slot) if slot.as_ref().is_some_and(|s| s.id == id) => slot.take(),
            _ => self.overflow.remove(&id),
        };
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Stream> {
        self.slots
            .iter()
            .flatten()
            .chain(self.overflow.values())
            .map(|s| &**s)
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut Stream> {
        self.slots
            .iter_mut()
            .flatten()
            .chain(self.overflow.values_mut())
            .map(|s| &mut **s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(t: &StreamTable) -> Vec<u64> {
        let mut v: Vec<u64> = t.values().map(|s| s.id).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn colliding_ids_share_a_slot_through_the_map() {
        let mut t = StreamTable::new();
        assert!(t.get(0).is_none());
        assert!(t.remove(0).is_none());
        let same_slot = SLOTS as u64;
        for id in [0, same_slot, 4, 1, 2 * same_slot + 1] {
            t.insert(Stream::empty(id));
        }
        assert_eq!(t.len(), 5);
        assert_eq!(t.overflow.len(), 2);
        for id in [0, same_slot, 4, 1, 2 * same_slot + 1] {
            assert_eq!(t.get(id).map(|s| s.id), Some(id));
            assert_eq!(t.get_mut(id).map(|s| s.id), Some(id));
        }
        assert!(t.get(8).is_none() && t.get(3 * same_slot).is_none());
        // The slot's stream goes; the one in the map is still found.
        assert_eq!(t.remove(0).map(|s| s.id), Some(0));
        assert!(t.get(0).is_none() && t.remove(0).is_none());
        assert_eq!(t.get(same_slot).map(|s| s.id), Some(same_slot));
        // A new stream takes the freed slot.
        t.insert(Stream::empty(2 * same_slot));
        assert_eq!(t.overflow.len(), 2);
        assert_eq!(ids(&t), [1, 4, same_slot, 2 * same_slot, 2 * same_slot + 1]);
        for s in t.values_mut() {
            s.in_send_queue = true;
        }
        assert!(t.values().all(|s| s.in_send_queue));
        assert_eq!(t.remove(same_slot).map(|s| s.id), Some(same_slot));
        assert_eq!(t.len(), 4);
        assert_eq!(ids(&t), [1, 4, 2 * same_slot, 2 * same_slot + 1]);
    }

    /// A peer that keeps stream 0 open while it cycles through a million others: the
    /// table holds what is open, no more.
    #[test]
    fn memory_follows_open_streams_not_ids() {
        let mut t = StreamTable::new();
        t.insert(Stream::empty(0));
        for i in 1..1_000_000u64 {
            t.insert(Stream::empty(4 * i));
            if i > 8 {
                assert!(t.remove(4 * (i - 8)).is_some());
            }
        }
        assert_eq!(t.len(), 9);
        assert_eq!(t.slots.len(), SLOTS);
        assert!(t.overflow.len() <= 1 && t.overflow.capacity() <= 16);
        assert_eq!(t.get(0).map(|s| s.id), Some(0));
    }
}
