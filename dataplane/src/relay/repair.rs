//! The repair ring: the last few seconds of records of one stream part, to answer NAKs.
//!
//! Bounded by bytes and by age; the oldest records leave first. Lookups are by
//! (publisher, chain, sequence).

use std::collections::{HashMap, VecDeque};

pub type RecordId = ([u8; 20], u64, u64);

#[derive(Debug)]
pub struct RepairRing {
    records: HashMap<RecordId, Box<[u8]>, foldhash::fast::RandomState>,
    order: VecDeque<(RecordId, u64)>,
    bytes: usize,
    bytes_max: usize,
    age_max_us: u64,
}

impl RepairRing {
    pub fn new(bytes_max: usize, age_max_us: u64) -> Self {
        Self { records: HashMap::default(), order: VecDeque::new(), bytes: 0, bytes_max, age_max_us }
    }

    pub fn insert(&mut self, now_us: u64, id: RecordId, record: &[u8]) {
        if record.len() > self.bytes_max {
            return;
        }
        if self.records.insert(id, record.into()).is_none() {
            self.order.push_back((id, now_us));
            self.bytes += record.len();
        }
        self.evict(now_us);
    }

    /// Drops records older than the age bound or beyond the byte bound.
    pub fn evict(&mut self, now_us: u64) {
        while let Some(&(id, inserted_us)) = self.order.front() {
            if self.bytes <= self.bytes_max && now_us.saturating_sub(inserted_us) <= self.age_max_us {
                break;
            }
            self.order.pop_front();
            if let Some(record) = self.records.remove(&id) {
                self.bytes -= record.len();
            }
        }
    }

    pub fn get(&self, id: &RecordId) -> Option<&[u8]> {
        self.records.get(id).map(|r| &r[..])
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the ring answers lookups and stays within its byte and age bounds.
    #[test]
    fn bounded_by_bytes_and_age() {
        let mut ring = RepairRing::new(250, 1_000_000);
        for sequence in 0..5u64 {
            ring.insert(sequence, ([1; 20], 7, sequence), &[0u8; 100]);
        }
        assert_eq!(ring.len(), 2);
        assert!(ring.bytes() <= 250);
        assert!(ring.get(&([1; 20], 7, 4)).is_some());
        assert!(ring.get(&([1; 20], 7, 0)).is_none());
        ring.evict(3_000_000);
        assert!(ring.is_empty());
    }
}
