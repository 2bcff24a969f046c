//! The repair ring: the last few seconds of frames of one stream part, to answer NAKs.
//!
//! Frames are copied into one byte arena per stream part, written round and round (a frame
//! never straddles the end: the writer skips to the start). Each chain keeps a small index of
//! `(sequence, position, length, time)` in sequence order, so storing a frame costs one
//! memcpy and a deque push — no allocation and no large hash map on the hot path — and a NAK
//! looks sequences up by binary search. An entry is valid while the arena has not wrapped
//! over it and it is younger than the age bound.
//!
//! Bounds: `capacity` bytes per stream part (the arena grows to it as it is used, then
//! reuses it); `age_max_us` per frame; each chain's index is pruned as it grows.

use std::collections::VecDeque;

/// Where one stored frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RepairEntry {
    pub sequence: u64,
    /// Absolute write position (bytes ever written before it), not wrapped.
    position: u64,
    length: u32,
    inserted_us: u64,
}

#[derive(Debug)]
pub struct RepairArena {
    bytes: Vec<u8>,
    /// Absolute position of the next write.
    head: u64,
    capacity: usize,
    age_max_us: u64,
}

impl RepairArena {
    pub fn new(capacity: usize, age_max_us: u64) -> Self {
        Self { bytes: Vec::new(), head: 0, capacity, age_max_us }
    }

    /// Copies `frame` in; returns where it went (None if it can never fit).
    pub fn store(&mut self, now_us: u64, sequence: u64, record: &[u8]) -> Option<RepairEntry> {
        if record.len() > self.capacity || record.is_empty() {
            return None;
        }
        let mut offset = (self.head % self.capacity as u64) as usize;
        if offset + record.len() > self.capacity {
            // Skip to the start rather than straddle the end.
            self.head += (self.capacity - offset) as u64;
            offset = 0;
        }
        let end = offset + record.len();
        if self.bytes.len() < end {
            self.bytes.resize(end.max((self.bytes.len() * 2).min(self.capacity)), 0);
        }
        self.bytes[offset..end].copy_from_slice(record);
        let entry = RepairEntry { sequence, position: self.head, length: record.len() as u32, inserted_us: now_us };
        self.head += record.len() as u64;
        Some(entry)
    }

    fn is_valid(&self, entry: &RepairEntry, now_us: u64) -> bool {
        entry.position + self.capacity as u64 >= self.head && now_us.saturating_sub(entry.inserted_us) <= self.age_max_us
    }

    /// The stored frame, if it is still there.
    pub fn get(&self, entry: &RepairEntry, now_us: u64) -> Option<&[u8]> {
        if !self.is_valid(entry, now_us) {
            return None;
        }
        let offset = (entry.position % self.capacity as u64) as usize;
        self.bytes.get(offset..offset + entry.length as usize)
    }

    /// Bytes the arena holds now (grows to `capacity`).
    pub fn allocated(&self) -> usize {
        self.bytes.len()
    }
}

/// One chain's stored frames, in sequence order.
#[derive(Debug, Default)]
pub struct RepairIndex {
    entries: VecDeque<RepairEntry>,
}

impl RepairIndex {
    /// Adds an entry (in order in the common case) and drops entries no longer valid.
    pub fn insert(&mut self, arena: &RepairArena, now_us: u64, entry: RepairEntry) {
        while self.entries.front().is_some_and(|front| !arena.is_valid(front, now_us)) {
            self.entries.pop_front();
        }
        match self.entries.back() {
            Some(back) if back.sequence >= entry.sequence => {
                // A repaired (late) frame: keep the index sorted.
                let at = self.entries.partition_point(|e| e.sequence < entry.sequence);
                if self.entries.get(at).is_some_and(|e| e.sequence == entry.sequence) {
                    self.entries[at] = entry;
                } else {
                    self.entries.insert(at, entry);
                }
            }
            _ => self.entries.push_back(entry),
        }
    }

    pub fn find(&self, sequence: u64) -> Option<RepairEntry> {
        let at = self.entries.partition_point(|e| e.sequence < sequence);
        self.entries.get(at).filter(|e| e.sequence == sequence).copied()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: frames are found by sequence while the arena has not wrapped over them and
    // they are young enough; the arena never exceeds its capacity; late frames stay sorted.
    #[test]
    fn bounded_by_bytes_and_age() {
        let mut arena = RepairArena::new(250, 1_000_000);
        let mut index = RepairIndex::default();
        for sequence in 0..5u64 {
            let record = [sequence as u8; 100];
            let entry = arena.store(sequence, sequence, &record).unwrap();
            index.insert(&arena, sequence, entry);
        }
        assert!(arena.allocated() <= 250);
        assert!(index.len() <= 3);
        assert_eq!(arena.get(&index.find(4).unwrap(), 10).unwrap(), &[4u8; 100][..]);
        assert!(index.find(0).is_none_or(|e| arena.get(&e, 10).is_none()));
        assert!(arena.get(&index.find(4).unwrap(), 3_000_000).is_none(), "aged out");
        // A late frame is inserted in order.
        let mut index = RepairIndex::default();
        let mut arena = RepairArena::new(10_000, 1_000_000);
        for sequence in [1u64, 2, 5, 3] {
            let entry = arena.store(0, sequence, &[sequence as u8; 10]).unwrap();
            index.insert(&arena, 0, entry);
        }
        assert_eq!(arena.get(&index.find(3).unwrap(), 0).unwrap(), &[3u8; 10][..]);
        assert!(index.find(4).is_none());
        assert!(arena.store(0, 9, &[0; 10_001]).is_none());
    }
}
