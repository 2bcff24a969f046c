//! Per-(publisher, chain) state in one stream part: duplicate detection, gap tracking and
//! ordered delivery.
//!
//! `next_sequence` is the next sequence to deliver in order; everything below it has been
//! delivered or given up (counted lost). A ring bitmap marks which of the next
//! [`DEDUP_WINDOW`] sequences have been seen. A frame at `next_sequence` is delivered at once,
//! and so are the buffered frames it unblocks; a frame beyond it (or an announced sequence
//! beyond it, [`ChainState::announce`]) opens a gap; a frame is forwarded to neighbors
//! immediately (forwarding never waits), and — if local subscribers want ordered
//! delivery — waits in a bounded reorder buffer until the gap is repaired (NAK) or given up.
//!
//! Limits: a sequence more than [`DEDUP_WINDOW`] ahead forces the window forward (the skipped
//! sequences count as lost); the reorder buffer holds at most `reorder_frames_max` frames;
//! the first frame seen of a chain sets the starting point (a late joiner starts mid-chain).

use std::collections::BTreeMap;

/// When a chain is first seen at a sequence that has a predecessor, the relay starts this
/// many sequences earlier, so frames that were merely reordered (or are still in a
/// neighbor's repair ring) are recovered and delivered in order instead of being taken for
/// duplicates. A late joiner therefore gets a short history, or waits one NAK cycle.
pub const CHAIN_START_LOOKBACK: u64 = 256;

/// Sequences tracked above the delivery point.
pub const DEDUP_WINDOW: u64 = 8192;
const WORDS: usize = (DEDUP_WINDOW / 64) as usize;

/// An open gap: when we noticed it and how NAKs for it are going.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    /// The first missing sequence when the NAKs below were counted: a new first hole
    /// starts its own retry count.
    pub first_missing: u64,
    pub next_nak_us: u64,
    pub naks_sent: u32,
    /// The link that delivered the frame beyond the gap: first one to ask.
    pub source_link: u32,
}

#[derive(Debug)]
pub struct ChainState {
    next_sequence: u64,
    /// Highest sequence seen + 1.
    top: u64,
    seen: Box<[u64; WORDS]>,
    buffered: BTreeMap<u64, Box<[u8]>>,
    pub gap: Option<Gap>,
    pub last_activity_us: u64,
    /// When to resend the chain's newest frame to neighbors if nothing newer arrives
    /// (tail-loss probe), and how many probes were sent for it.
    pub tail_probe_due_us: Option<u64>,
    pub tail_probes_sent: u32,
    /// Where this chain's recent frames are in the stream part's repair arena.
    pub repair: super::repair::RepairIndex,
}

/// What happened to an accepted frame, for counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub delivered: u64,
    pub lost: u64,
    pub reorder_dropped: u64,
}

impl ChainState {
    pub fn new(first_sequence: u64, now_us: u64) -> Self {
        Self {
            next_sequence: first_sequence,
            top: first_sequence,
            seen: Box::new([0; WORDS]),
            buffered: BTreeMap::new(),
            gap: None,
            last_activity_us: now_us,
            tail_probe_due_us: None,
            tail_probes_sent: 0,
            repair: super::repair::RepairIndex::default(),
        }
    }

    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    fn bit(sequence: u64) -> (usize, u64) {
        let slot = sequence % DEDUP_WINDOW;
        ((slot / 64) as usize, 1 << (slot % 64))
    }

    fn is_set(&self, sequence: u64) -> bool {
        let (word, bit) = Self::bit(sequence);
        self.seen[word] & bit != 0
    }

    fn set(&mut self, sequence: u64, value: bool) {
        let (word, bit) = Self::bit(sequence);
        if value {
            self.seen[word] |= bit;
        } else {
            self.seen[word] &= !bit;
        }
    }

    /// True if `sequence` was already delivered, given up, or seen.
    pub fn is_duplicate(&self, sequence: u64) -> bool {
        sequence < self.next_sequence || (sequence < self.next_sequence.saturating_add(DEDUP_WINDOW) && self.is_set(sequence))
    }

    /// Frames a new (verified, not duplicate) sequence. `frame` is kept for ordered delivery
    /// when `ordered` is set; `deliver` receives every frame released in order.
    pub fn accept(
        &mut self,
        sequence: u64,
        frame: &[u8],
        ordered: bool,
        reorder_frames_max: usize,
        mut deliver: impl FnMut(&[u8]),
    ) -> Outcome {
        debug_assert!(!self.is_duplicate(sequence));
        let mut outcome = Outcome::default();
        if sequence == u64::MAX {
            // No room after it for the window arithmetic; no real chain gets here.
            outcome.lost += 1;
            return outcome;
        }
        if sequence == self.next_sequence {
            self.top = self.top.max(sequence + 1);
            if ordered {
                deliver(frame);
                outcome.delivered += 1;
            }
            self.next_sequence += 1;
            self.release(ordered, &mut deliver, &mut outcome);
        } else {
            if sequence >= self.next_sequence.saturating_add(DEDUP_WINDOW) {
                // Too far ahead to track: give up the oldest sequences to make room.
                self.skip_to(sequence + 1 - DEDUP_WINDOW, ordered, &mut deliver, &mut outcome);
            }
            self.top = self.top.max(sequence + 1);
            if ordered && self.buffered.len() >= reorder_frames_max {
                // Bounded: stop waiting for the oldest gap; what lies before the oldest
                // waiting frame (or before this one, if older) is given up.
                let oldest = *self.buffered.keys().next().expect("non-empty");
                self.skip_to(oldest.min(sequence), ordered, &mut deliver, &mut outcome);
                outcome.reorder_dropped += 1;
            }
            if sequence == self.next_sequence {
                if ordered {
                    deliver(frame);
                    outcome.delivered += 1;
                }
                self.next_sequence += 1;
                self.release(ordered, &mut deliver, &mut outcome);
            } else {
                self.set(sequence, true);
                if ordered {
                    self.buffered.insert(sequence, frame.into());
                }
            }
        }
        outcome
    }

    /// Delivers buffered frames that are now in order.
    fn release(&mut self, ordered: bool, deliver: &mut impl FnMut(&[u8]), outcome: &mut Outcome) {
        while self.next_sequence < self.top && self.is_set(self.next_sequence) {
            self.set(self.next_sequence, false);
            if let Some(frame) = self.buffered.remove(&self.next_sequence) {
                if ordered {
                    deliver(&frame);
                    outcome.delivered += 1;
                }
            }
            self.next_sequence += 1;
        }
        if self.next_sequence >= self.top {
            self.gap = None;
        }
    }

    /// Gives up every unseen sequence below `target` (counted lost) and releases what follows.
    ///
    /// Only sequences below `top` can have been seen (and `top` never exceeds
    /// `next_sequence + DEDUP_WINDOW`), so the walk is bounded by the window; the rest is a jump.
    pub fn skip_to(&mut self, target: u64, ordered: bool, deliver: &mut impl FnMut(&[u8]), outcome: &mut Outcome) {
        let walk_end = target.min(self.top);
        while self.next_sequence < walk_end {
            if self.is_set(self.next_sequence) {
                self.set(self.next_sequence, false);
                if let Some(frame) = self.buffered.remove(&self.next_sequence) {
                    if ordered {
                        deliver(&frame);
                        outcome.delivered += 1;
                    }
                }
            } else {
                outcome.lost += 1;
            }
            self.next_sequence += 1;
        }
        if self.next_sequence < target {
            outcome.lost += target - self.next_sequence;
            self.next_sequence = target;
        }
        self.top = self.top.max(self.next_sequence);
        self.release(ordered, deliver, outcome);
    }

    /// Gives up the current gap: skips to the next seen sequence.
    pub fn give_up_gap(&mut self, ordered: bool, deliver: &mut impl FnMut(&[u8])) -> Outcome {
        let mut outcome = Outcome::default();
        let mut target = self.next_sequence;
        while target < self.top && !self.is_set(target) {
            target += 1;
        }
        self.skip_to(target, ordered, deliver, &mut outcome);
        outcome
    }

    /// The missing ranges between the delivery point and the highest seen, at most `max`.
    pub fn missing_ranges(&self, max: usize) -> Vec<(u64, u64)> {
        let mut ranges = Vec::new();
        let mut sequence = self.next_sequence;
        while sequence < self.top && ranges.len() < max {
            if self.is_set(sequence) {
                sequence += 1;
                continue;
            }
            let first = sequence;
            while sequence < self.top && !self.is_set(sequence) {
                sequence += 1;
            }
            ranges.push((first, sequence - 1));
        }
        ranges
    }

    /// Records that sequences up to `last` exist (a neighbor announced them in an IHave):
    /// the unseen ones among them are missing from now on, so [`ChainState::missing_ranges`]
    /// names them and a gap can NAK them. False, and nothing changes, when `last` lies
    /// beyond the dedup window (an announcement never forces the window forward, so it can
    /// never make a relay give up frames).
    pub fn announce(&mut self, last: u64) -> bool {
        if last >= self.next_sequence.saturating_add(DEDUP_WINDOW) {
            return false;
        }
        self.top = self.top.max(last + 1);
        true
    }

    /// Highest sequence seen (or, before anything is seen, the one before the start).
    pub fn newest_sequence(&self) -> Option<u64> {
        self.top.checked_sub(1)
    }

    pub fn has_gap(&self) -> bool {
        self.next_sequence < self.top
    }

    pub fn buffered_len(&self) -> usize {
        self.buffered.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chain: &mut ChainState, sequence: u64, out: &mut Vec<u64>) -> Outcome {
        let frame = sequence.to_le_bytes();
        chain.accept(sequence, &frame, true, 1024, |r| out.push(u64::from_le_bytes(r.try_into().unwrap())))
    }

    // Goal: in-order frames are delivered at once, out-of-order ones wait for the gap, and
    // duplicates are recognized on both sides of the delivery point.
    #[test]
    fn delivers_in_order_and_detects_duplicates() {
        let mut chain = ChainState::new(0, 0);
        let mut out = Vec::new();
        run(&mut chain, 0, &mut out);
        run(&mut chain, 2, &mut out);
        run(&mut chain, 3, &mut out);
        assert_eq!(out, vec![0]);
        assert!(chain.has_gap());
        assert_eq!(chain.missing_ranges(8), vec![(1, 1)]);
        assert!(chain.is_duplicate(0) && chain.is_duplicate(2) && !chain.is_duplicate(1));
        run(&mut chain, 1, &mut out);
        assert_eq!(out, vec![0, 1, 2, 3]);
        assert!(!chain.has_gap());
        assert!(chain.is_duplicate(3) && !chain.is_duplicate(4));
    }

    // Goal: giving up a gap counts the missing sequences lost and releases what follows.
    #[test]
    fn give_up_releases_and_counts_lost() {
        let mut chain = ChainState::new(10, 0);
        let mut out = Vec::new();
        run(&mut chain, 10, &mut out);
        run(&mut chain, 14, &mut out);
        run(&mut chain, 16, &mut out);
        assert_eq!(chain.missing_ranges(8), vec![(11, 13), (15, 15)]);
        let outcome = chain.give_up_gap(true, &mut |r: &[u8]| out.push(u64::from_le_bytes(r.try_into().unwrap())));
        assert_eq!(outcome.lost, 3);
        assert_eq!(out, vec![10, 14]);
        let outcome = chain.give_up_gap(true, &mut |r: &[u8]| out.push(u64::from_le_bytes(r.try_into().unwrap())));
        assert_eq!(outcome.lost, 1);
        assert_eq!(out, vec![10, 14, 16]);
        assert!(!chain.has_gap());
    }

    // Goal: a jump beyond the window forces it forward; every sequence is delivered or
    // counted lost exactly once, and memory stays bounded.
    #[test]
    fn far_jump_is_bounded() {
        // Jumps as far as the sequence space allows cost no more than one window walk.
        let mut huge = ChainState::new(2, 0);
        let mut sink = Vec::new();
        run(&mut huge, 2, &mut sink);
        run(&mut huge, 318_767_107, &mut sink);
        run(&mut huge, u64::MAX - 1, &mut sink);
        run(&mut huge, u64::MAX, &mut sink);
        assert!(huge.is_duplicate(u64::MAX - 1));
        let mut chain = ChainState::new(0, 0);
        let mut out = Vec::new();
        run(&mut chain, 0, &mut out);
        run(&mut chain, 5, &mut out);
        let outcome = run(&mut chain, 1_000_000, &mut out);
        assert_eq!(out, vec![0, 5]);
        assert_eq!(outcome.lost + 2 + DEDUP_WINDOW - 1, 1_000_000);
        assert!(chain.is_duplicate(5) && chain.is_duplicate(1_000_000));
        let outcome = chain.give_up_gap(true, &mut |r: &[u8]| out.push(u64::from_le_bytes(r.try_into().unwrap())));
        assert_eq!(outcome.lost, DEDUP_WINDOW - 1);
        assert_eq!(out.last(), Some(&1_000_000));
    }

    // Goal: announced sequences count as missing until they arrive, an announcement of what
    // is already known changes nothing, and one beyond the window is refused.
    #[test]
    fn announced_sequences_are_missing_until_seen() {
        let mut chain = ChainState::new(0, 0);
        let mut out = Vec::new();
        run(&mut chain, 0, &mut out);
        assert!(chain.announce(3));
        assert_eq!(chain.missing_ranges(8), vec![(1, 3)]);
        assert!(chain.announce(0) && chain.announce(2));
        assert_eq!(chain.missing_ranges(8), vec![(1, 3)]);
        assert!(!chain.announce(DEDUP_WINDOW + 1));
        assert!(!chain.announce(u64::MAX));
        for sequence in 1..=3 {
            run(&mut chain, sequence, &mut out);
        }
        assert_eq!(out, vec![0, 1, 2, 3]);
        assert!(!chain.has_gap());
    }

    // Goal: random permutations with duplicates (seeded) deliver each sequence exactly once
    // and in order when nothing is lost.
    #[test]
    fn random_reordering_delivers_each_once_in_order() {
        let seed = runnel_proto::testing::seed(42u64);
        let mut rng = runnel_proto::testing::Rng::new(seed);
        let mut next = || rng.next_u64();
        let mut sequences: Vec<u64> = (0..5000).collect();
        // Local shuffles: swap within distance 50, plus duplicates.
        for i in 0..sequences.len() {
            let j = (i + (next() % 50) as usize).min(sequences.len() - 1);
            sequences.swap(i, j);
        }
        let dupes: Vec<u64> = (0..500).map(|_| next() % 5000).collect();
        sequences.extend(dupes);
        let mut chain = ChainState::new(0, 0);
        let mut out = Vec::new();
        // Make sure 0 comes first so the chain starts at 0.
        let zero = sequences.iter().position(|s| *s == 0).unwrap();
        sequences.swap(0, zero);
        for sequence in sequences {
            if !chain.is_duplicate(sequence) {
                run(&mut chain, sequence, &mut out);
            }
        }
        assert_eq!(out, (0..5000).collect::<Vec<_>>(), "seed {seed}");
    }
}
