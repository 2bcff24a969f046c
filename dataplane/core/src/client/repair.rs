//! The publisher's repair ring: the frames this client published in the last few seconds,
//! so that its node can NAK what was lost on the client→node hop and get it again.
//!
//! How it works: one byte ring (allocated on first use, [`REPAIR_RING_BYTES_MAX`]) holds the
//! frames back to back in publish order; a frame that does not fit before the ring's end
//! goes to its start (the tail bytes stay unused until the next wrap). An index of
//! (chain, sequence, offset, length, time) entries follows the same order, and each chain
//! (stream part, publisher, chain id) keeps its (sequence, entry number) pairs, sorted,
//! because a chain's sequences only grow: a lookup is one hash and a binary search. The
//! oldest frames leave first, when their bytes are needed or when older than
//! [`REPAIR_AGE_MAX_US`]; every eviction is counted. Each chain also carries its pending tail
//! probe: due one interval after the last insert, then again at doubling intervals, up to a
//! maximum count (see [`super::ClientCore`]). In steady state an insert copies the frame and
//! allocates nothing.
//!
//! Limits: one ring for every stream part the client publishes to, so memory stays bounded
//! however many it publishes to (a busy stream part shortens a quiet one's history); a
//! frame queued again with a sequence not above its chain's newest is not stored twice.

use std::collections::{HashMap, VecDeque};

/// Bytes of published frames kept for repair.
pub const REPAIR_RING_BYTES_MAX: usize = 16 << 20;
/// Published frames older than this are no longer kept for repair.
pub const REPAIR_AGE_MAX_US: u64 = 5_000_000;

/// (stream part key, publisher, chain id).
pub(crate) type ChainKey = ([u8; 32], [u8; 20], u64);

#[derive(Debug)]
struct Entry {
    chain: ChainKey,
    sequence: u64,
    offset: usize,
    length: usize,
    inserted_us: u64,
}

#[derive(Debug, Default)]
struct ChainIndex {
    /// (sequence, entry number), oldest first; sequences strictly increase.
    slots: VecDeque<(u64, u64)>,
    /// When the chain's newest frame is to be resent if nothing newer is published, and
    /// how many times it was since the last insert.
    probe_due_us: Option<u64>,
    probes_sent: u32,
}

#[derive(Debug)]
pub(crate) struct RepairRing {
    /// Empty until the first insert, then `bytes_max` long.
    bytes: Vec<u8>,
    bytes_max: usize,
    age_max_us: u64,
    /// Where the next frame goes when it fits before the end.
    write: usize,
    entries: VecDeque<Entry>,
    /// Entry number of `entries[0]`.
    first_entry: u64,
    chains: HashMap<ChainKey, ChainIndex, foldhash::fast::RandomState>,
    probe_interval_us: u64,
    probes_max: u32,
    /// A lower bound of every chain's `probe_due_us` (exact after `take_due_probes`).
    next_probe_due_us: Option<u64>,
}

impl RepairRing {
    /// A chain's tail probe fires `probe_interval_us` after its last insert, then at
    /// doubling intervals, `probes_max` times at most.
    pub fn new(bytes_max: usize, age_max_us: u64, probe_interval_us: u64, probes_max: u32) -> Self {
        Self {
            bytes: Vec::new(),
            bytes_max,
            age_max_us,
            write: 0,
            entries: VecDeque::new(),
            first_entry: 0,
            chains: HashMap::default(),
            probe_interval_us,
            probes_max,
            next_probe_due_us: None,
        }
    }

    /// Stores a published frame and (re)schedules its chain's tail probe. Returns false if
    /// it is not stored (empty, larger than the ring, or not newer than its chain's newest).
    /// Adds the frames evicted to make room to `evictions`.
    pub fn insert(&mut self, now_us: u64, chain: ChainKey, sequence: u64, record: &[u8], evictions: &mut u64) -> bool {
        let length = record.len();
        if length == 0 || length > self.bytes_max {
            return false;
        }
        if let Some(index) = self.chains.get_mut(&chain) {
            if index.slots.back().is_some_and(|&(newest, _)| newest >= sequence) {
                return false;
            }
        }
        if self.bytes.is_empty() {
            // Zeroed allocation: the kernel maps pages only as they are written.
            self.bytes = vec![0; self.bytes_max];
        }
        self.evict_older(now_us, evictions);
        let wrap = self.write + length > self.bytes_max;
        let offset = if wrap { 0 } else { self.write };
        while let Some(front) = self.entries.front() {
            // When wrapping, the bytes from `write` to the end are abandoned: whatever lies
            // there is the oldest. Then the oldest frames overlapping the target go.
            let abandoned = wrap && front.offset >= self.write;
            let overlaps = front.offset < offset + length && offset < front.offset + front.length;
            if !(abandoned || overlaps) {
                break;
            }
            self.pop_front();
            *evictions += 1;
        }
        self.bytes[offset..offset + length].copy_from_slice(record);
        self.write = offset + length;
        let number = self.first_entry + self.entries.len() as u64;
        self.entries.push_back(Entry { chain, sequence, offset, length, inserted_us: now_us });
        let index = self.chains.entry(chain).or_default();
        index.slots.push_back((sequence, number));
        let probe_due_us = now_us + self.probe_interval_us;
        index.probe_due_us = Some(probe_due_us);
        index.probes_sent = 0;
        self.next_probe_due_us = Some(self.next_probe_due_us.map_or(probe_due_us, |due| due.min(probe_due_us)));
        true
    }

    fn pop_front(&mut self) {
        let Some(entry) = self.entries.pop_front() else { return };
        let number = self.first_entry;
        self.first_entry += 1;
        let index = self.chains.get_mut(&entry.chain).expect("every entry is indexed by its chain");
        let popped = index.slots.pop_front();
        assert_eq!(popped, Some((entry.sequence, number)), "a chain's oldest slot is the ring's oldest entry of it");
        if index.slots.is_empty() {
            self.chains.remove(&entry.chain);
        }
        if self.entries.is_empty() {
            self.write = 0;
        }
    }

    /// Drops frames older than the age bound, adding their count to `evictions`.
    pub fn evict_older(&mut self, now_us: u64, evictions: &mut u64) {
        while self.entries.front().is_some_and(|e| now_us.saturating_sub(e.inserted_us) > self.age_max_us) {
            self.pop_front();
            *evictions += 1;
        }
    }

    /// The stored frame of `chain` at `sequence`.
    pub fn get(&self, chain: &ChainKey, sequence: u64) -> Option<&[u8]> {
        let index = self.chains.get(chain)?;
        let at = index.slots.binary_search_by_key(&sequence, |&(s, _)| s).ok()?;
        let entry = &self.entries[(index.slots[at].1 - self.first_entry) as usize];
        Some(&self.bytes[entry.offset..entry.offset + entry.length])
    }

    /// The newest stored frame of `chain`.
    pub fn newest(&self, chain: &ChainKey) -> Option<&[u8]> {
        let sequence = self.chains.get(chain)?.slots.back()?.0;
        self.get(chain, sequence)
    }

    /// When [`RepairRing::take_due_probes`] has something to do (possibly earlier).
    pub fn next_probe_due_us(&self) -> Option<u64> {
        self.next_probe_due_us
    }

    /// Moves the chains whose tail probe is due into `due`, scheduling the next probe.
    pub fn take_due_probes(&mut self, now_us: u64, due: &mut Vec<ChainKey>) {
        if self.next_probe_due_us.is_none_or(|next| next > now_us) {
            return;
        }
        let mut next: Option<u64> = None;
        for (chain, index) in &mut self.chains {
            match index.probe_due_us {
                Some(at) if at <= now_us => {
                    index.probes_sent += 1;
                    index.probe_due_us =
                        (index.probes_sent < self.probes_max).then(|| now_us + (self.probe_interval_us << index.probes_sent));
                    due.push(*chain);
                }
                Some(_) => {}
                None => {}
            }
            if let Some(at) = index.probe_due_us {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        self.next_probe_due_us = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(id: u64) -> ChainKey {
        ([1; 32], [2; 20], id)
    }

    fn record(sequence: u64, length: usize) -> Vec<u8> {
        let mut bytes = vec![sequence as u8; length];
        bytes[..8].copy_from_slice(&sequence.to_le_bytes());
        bytes
    }

    // Goal: lookups return the exact bytes stored; the ring stays within its byte bound
    // across many wraps with mixed sizes, evicting oldest first and counting each eviction;
    // everything younger than the evicted stays retrievable.
    #[test]
    fn bounded_by_bytes_across_wraps() {
        let mut ring = RepairRing::new(1000, 1_000_000, 30, 1);
        let mut evictions = 0;
        let mut stored = 0u64;
        for sequence in 0..500u64 {
            let length = 20 + (sequence as usize * 37) % 180;
            assert!(ring.insert(sequence, chain(7), sequence, &record(sequence, length), &mut evictions));
            stored += 1;
            assert_eq!(ring.get(&chain(7), sequence), Some(&record(sequence, length)[..]));
            let live: usize = ring.entries.iter().map(|e| e.length).sum();
            assert!(live <= 1000);
            assert_eq!(stored - evictions, ring.entries.len() as u64);
            // The oldest kept is contiguous up to the newest.
            let oldest = sequence + 1 - ring.entries.len() as u64;
            for kept in oldest..=sequence {
                let length = 20 + (kept as usize * 37) % 180;
                assert_eq!(ring.get(&chain(7), kept), Some(&record(kept, length)[..]), "kept {kept} at {sequence}");
            }
            if oldest > 0 {
                assert_eq!(ring.get(&chain(7), oldest - 1), None);
            }
        }
        assert!(evictions > 400);
        assert_eq!(ring.newest(&chain(7)), Some(&record(499, 20 + (499 * 37) % 180)[..]));
    }

    // Goal: age eviction drops old frames (counted); interleaved chains are kept apart;
    // a sequence not above its chain's newest is not stored twice; tail probes fire at their
    // due time, then at a doubled interval, `probes_max` times.
    #[test]
    fn age_chains_and_probes() {
        let mut ring = RepairRing::new(1 << 20, 1000, 30, 2);
        let mut evictions = 0;
        assert!(ring.insert(0, chain(1), 5, &record(5, 64), &mut evictions));
        assert!(ring.insert(10, chain(2), 5, &record(105, 64), &mut evictions));
        assert!(!ring.insert(10, chain(1), 5, &record(5, 64), &mut evictions), "not stored twice");
        assert_eq!(ring.get(&chain(1), 5), Some(&record(5, 64)[..]));
        assert_eq!(ring.get(&chain(2), 5), Some(&record(105, 64)[..]));
        let mut due = Vec::new();
        ring.take_due_probes(29, &mut due);
        assert!(due.is_empty());
        ring.take_due_probes(30, &mut due);
        assert_eq!(due, vec![chain(1)]);
        assert_eq!(ring.next_probe_due_us(), Some(40));
        ring.take_due_probes(40, &mut due);
        due.sort_unstable();
        assert_eq!(due, vec![chain(1), chain(2)]);
        assert_eq!(ring.next_probe_due_us(), Some(90), "chain 1 again at 30 + 60");
        ring.take_due_probes(100, &mut due);
        due[2..].sort_unstable();
        assert_eq!(due, vec![chain(1), chain(2), chain(1), chain(2)]);
        assert_eq!(ring.next_probe_due_us(), None);
        ring.evict_older(1005, &mut evictions);
        assert_eq!((ring.get(&chain(1), 5), evictions), (None, 1));
        ring.evict_older(2000, &mut evictions);
        assert_eq!((ring.entries.len(), evictions), (0, 2));
        assert!(ring.chains.is_empty());
    }
}
