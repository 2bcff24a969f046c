//! Reassembly of records that arrive as fragments.
//!
//! A record too large for one datagram travels as Fragment datagrams, each carrying
//! (publisher, chain, sequence, record length, offset) and a slice. Slices may arrive in any
//! order and more than once. A record is complete when its received ranges cover it.
//!
//! Bounded: at most `entries_max` records in progress, at most `bytes_max` bytes allocated
//! for them, each given up after `timeout_us`. What is refused or expired is counted by the
//! caller from the returned outcome.

use std::collections::HashMap;

pub type FragmentKey = ([u8; 32], [u8; 20], u64, u64);

#[derive(Debug)]
struct Partial {
    buffer: Vec<u8>,
    /// Received byte ranges, sorted and disjoint.
    ranges: Vec<(u32, u32)>,
    received: usize,
    started_us: u64,
}

/// What one fragment did.
#[derive(Debug, PartialEq, Eq)]
pub enum FragmentOutcome {
    Incomplete,
    Complete(Vec<u8>),
    /// Refused: over a bound, inconsistent with earlier fragments, or too many ranges.
    Dropped,
}

#[derive(Debug)]
pub struct Reassembler {
    partials: HashMap<FragmentKey, Partial, foldhash::fast::RandomState>,
    bytes: usize,
    bytes_max: usize,
    entries_max: usize,
    timeout_us: u64,
}

/// Most disjoint ranges one record may be received in (bounds per-record bookkeeping).
const RANGES_MAX: usize = 4096;

impl Reassembler {
    pub fn new(bytes_max: usize, entries_max: usize, timeout_us: u64) -> Self {
        Self { partials: HashMap::default(), bytes: 0, bytes_max, entries_max, timeout_us }
    }

    pub fn insert(&mut self, now_us: u64, key: FragmentKey, record_length: u32, offset: u32, slice: &[u8]) -> FragmentOutcome {
        let end = offset as u64 + slice.len() as u64;
        if slice.is_empty() || end > record_length as u64 {
            return FragmentOutcome::Dropped;
        }
        if !self.partials.contains_key(&key) {
            if self.partials.len() >= self.entries_max || self.bytes + record_length as usize > self.bytes_max {
                return FragmentOutcome::Dropped;
            }
            self.bytes += record_length as usize;
            self.partials
                .insert(key, Partial { buffer: vec![0; record_length as usize], ranges: Vec::new(), received: 0, started_us: now_us });
        }
        let partial = self.partials.get_mut(&key).expect("inserted above");
        if partial.buffer.len() != record_length as usize || partial.ranges.len() >= RANGES_MAX {
            return FragmentOutcome::Dropped;
        }
        let (start, end) = (offset, end as u32);
        // Copy only the parts not yet received, then merge the range in.
        let mut cursor = start;
        let mut merged = Vec::with_capacity(partial.ranges.len() + 1);
        let mut new_start = start;
        let mut new_end = end;
        for &(a, b) in &partial.ranges {
            if b < new_start || a > new_end {
                merged.push((a, b));
                continue;
            }
            new_start = new_start.min(a);
            new_end = new_end.max(b);
        }
        for &(a, b) in partial.ranges.iter().filter(|(a, b)| !(*b < start || *a > end)) {
            if cursor < a.min(end) {
                let to = a.min(end);
                partial.buffer[cursor as usize..to as usize].copy_from_slice(&slice[(cursor - start) as usize..(to - start) as usize]);
                partial.received += (to - cursor) as usize;
            }
            cursor = cursor.max(b);
        }
        if cursor < end {
            partial.buffer[cursor as usize..end as usize].copy_from_slice(&slice[(cursor - start) as usize..]);
            partial.received += (end - cursor) as usize;
        }
        merged.push((new_start, new_end));
        merged.sort_unstable();
        partial.ranges = merged;
        if partial.received == partial.buffer.len() {
            let partial = self.partials.remove(&key).expect("present");
            self.bytes -= partial.buffer.len();
            return FragmentOutcome::Complete(partial.buffer);
        }
        FragmentOutcome::Incomplete
    }

    /// Gives up records older than the timeout; returns how many.
    pub fn expire(&mut self, now_us: u64) -> usize {
        let before = self.partials.len();
        let timeout_us = self.timeout_us;
        let mut freed = 0;
        self.partials.retain(|_, partial| {
            let keep = now_us.saturating_sub(partial.started_us) <= timeout_us;
            if !keep {
                freed += partial.buffer.len();
            }
            keep
        });
        self.bytes -= freed;
        before - self.partials.len()
    }

    /// Drops a record in progress (its sequence was completed another way).
    pub fn forget(&mut self, key: &FragmentKey) {
        if let Some(partial) = self.partials.remove(key) {
            self.bytes -= partial.buffer.len();
        }
    }

    pub fn len(&self) -> usize {
        self.partials.len()
    }

    pub fn is_empty(&self) -> bool {
        self.partials.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The earliest time a record in progress expires.
    pub fn next_expiry_us(&self) -> Option<u64> {
        self.partials.values().map(|p| p.started_us + self.timeout_us + 1).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sequence: u64) -> FragmentKey {
        ([0; 32], [1; 20], 2, sequence)
    }

    // Goal: fragments in any order, with overlaps and repeats (seeded), rebuild the record
    // exactly; memory returns to zero afterwards.
    #[test]
    fn reassembles_in_any_order_with_overlaps() {
        let seed = runnel_proto::testing::seed(7u64);
        let mut rng = runnel_proto::testing::Rng::new(seed);
        let mut next = || rng.next_u64();
        for round in 0..50 {
            let length = 1 + (next() % 300_000) as usize;
            let record: Vec<u8> = (0..length).map(|i| (i * 31 + round) as u8).collect();
            let mut reassembler = Reassembler::new(1 << 20, 4, 1_000_000);
            let mut pieces = Vec::new();
            let mut at = 0;
            while at < length {
                let size = 1 + (next() % 3000) as usize;
                let end = (at + size).min(length);
                pieces.push((at, end));
                // Sometimes overlap the next piece with this one.
                at = if next() % 4 == 0 && end > at + 1 { end - 1 } else { end };
            }
            let extra: Vec<_> = (0..pieces.len() / 3).map(|_| pieces[(next() as usize) % pieces.len()]).collect();
            pieces.extend(extra);
            for i in (1..pieces.len()).rev() {
                pieces.swap(i, (next() as usize) % (i + 1));
            }
            let mut completed = None;
            for (a, b) in pieces {
                match reassembler.insert(0, key(1), length as u32, a as u32, &record[a..b]) {
                    FragmentOutcome::Complete(bytes) => {
                        assert!(completed.is_none(), "completed twice, seed {seed}");
                        completed = Some(bytes);
                    }
                    FragmentOutcome::Incomplete => {}
                    FragmentOutcome::Dropped => {
                        // After completion, a late repeat starts a new partial: fine, it expires.
                    }
                }
            }
            assert_eq!(completed.as_deref(), Some(&record[..]), "round {round} seed {seed}");
        }
    }

    // Goal: the entry, byte and time bounds hold and inconsistent fragments are refused.
    #[test]
    fn bounds_hold() {
        let mut reassembler = Reassembler::new(1000, 2, 100);
        assert_eq!(reassembler.insert(0, key(1), 400, 0, &[0; 10]), FragmentOutcome::Incomplete);
        assert_eq!(reassembler.insert(0, key(2), 400, 0, &[0; 10]), FragmentOutcome::Incomplete);
        assert_eq!(reassembler.insert(0, key(3), 100, 0, &[0; 10]), FragmentOutcome::Dropped);
        assert_eq!(reassembler.insert(0, key(1), 500, 0, &[0; 10]), FragmentOutcome::Dropped);
        assert_eq!(reassembler.insert(0, key(1), 400, 395, &[0; 10]), FragmentOutcome::Dropped);
        assert_eq!(reassembler.bytes(), 800);
        assert_eq!(reassembler.expire(50), 0);
        assert_eq!(reassembler.expire(200), 2);
        assert_eq!(reassembler.bytes(), 0);
        let mut small = Reassembler::new(100, 8, 100);
        assert_eq!(small.insert(0, key(1), 101, 0, &[0; 10]), FragmentOutcome::Dropped);
    }
}
