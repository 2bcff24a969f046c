//! Per-chain receive state of a subscriber: where the chain is, what waits behind a gap.
//!
//! The node delivers each (publisher, chain) of a stream part in frame sequence order, so on
//! the node→client hop a frame sequence jump means datagrams were lost. An [`InboundChain`]
//! keeps the next frame sequence to deliver, the frames that arrived ahead of it (held until
//! the gap is repaired or given up), and the timers the core drives: the NAK schedule of the
//! current gap and the tail query of an idle chain.
//!
//! The first frame seen of a chain sets its start. If that frame has a predecessor (it is
//! not the chain's first), the chain *settles* for a moment first: frames arriving then,
//! lower ones included, are held, and the chain starts at the lowest. This absorbs small
//! reorderings (a repair overtaking the frames sent after it) without taking history for
//! lost frames.
//!
//! Limits: anything below the next frame sequence is a duplicate (delivered or given up) and
//! is dropped; the held frames are bounded by the core ([`super::core::REORDER_BYTES_MAX`],
//! [`super::core::REORDER_SEQUENCES_MAX`]), which gives gaps up early when a bound is hit.

use std::collections::BTreeMap;

/// An open gap and how its NAKs are going.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Gap {
    /// The first missing sequence the retries below were counted for: a new first hole
    /// starts its own count.
    pub first_missing: u64,
    pub naks_sent: u32,
    pub next_nak_us: u64,
}

#[derive(Debug)]
pub(crate) struct InboundChain {
    next_sequence: u64,
    /// Records received ahead of `next_sequence`, by sequence.
    held: BTreeMap<u64, Box<[u8]>>,
    pub gap: Option<Gap>,
    /// When to ask the node for records beyond the newest seen, if nothing arrives, and
    /// how many such queries went out since the last record arrived.
    pub tail_query_due_us: Option<u64>,
    pub tail_queries_sent: u32,
    pub last_activity_us: u64,
    /// While set, the start is not fixed: records are held and `next_sequence` is the
    /// lowest held.
    pub settling_until_us: Option<u64>,
    /// Whether the chain is in the core's timer list / released list.
    pub timer_listed: bool,
    pub release_listed: bool,
}

impl InboundChain {
    pub fn new(first_sequence: u64, now_us: u64) -> Self {
        Self {
            next_sequence: first_sequence,
            held: BTreeMap::new(),
            gap: None,
            tail_query_due_us: None,
            tail_queries_sent: 0,
            last_activity_us: now_us,
            settling_until_us: None,
            timer_listed: false,
            release_listed: false,
        }
    }

    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Delivered, given up, or already held.
    pub fn is_duplicate(&self, sequence: u64) -> bool {
        (sequence < self.next_sequence && self.settling_until_us.is_none()) || self.held.contains_key(&sequence)
    }

    /// Holds a record while the chain settles; the start becomes the lowest held.
    pub fn hold_settling(&mut self, sequence: u64, record: &[u8]) {
        debug_assert!(self.settling_until_us.is_some() && !self.held.contains_key(&sequence));
        self.next_sequence = self.next_sequence.min(sequence);
        self.held.insert(sequence, record.into());
    }

    /// Marks the next sequence delivered (the caller delivered it straight from the wire).
    pub fn advance(&mut self) {
        self.next_sequence += 1;
    }

    /// Keeps a record that arrived ahead of the next sequence.
    pub fn hold(&mut self, sequence: u64, record: &[u8]) {
        debug_assert!(sequence > self.next_sequence && !self.held.contains_key(&sequence));
        self.held.insert(sequence, record.into());
    }

    pub fn has_held(&self) -> bool {
        !self.held.is_empty()
    }

    /// Sequences above the next one that the chain has seen (held), first and last.
    pub fn held_span(&self) -> Option<(u64, u64)> {
        Some((*self.held.first_key_value()?.0, *self.held.last_key_value()?.0))
    }

    /// The held record at the next sequence, if any; advances past it.
    pub fn take_next(&mut self) -> Option<Box<[u8]>> {
        let entry = self.held.first_entry()?;
        if *entry.key() != self.next_sequence {
            return None;
        }
        self.next_sequence += 1;
        Some(entry.remove())
    }

    /// Gives up the hole at the next sequence, up to the first held record or `limit`,
    /// whichever is lower; returns how many sequences were given up.
    pub fn skip_hole(&mut self, limit: u64) -> u64 {
        let to = self.held.first_key_value().map_or(limit, |(&first, _)| first.min(limit));
        let lost = to.saturating_sub(self.next_sequence);
        self.next_sequence = self.next_sequence.max(to);
        lost
    }

    /// The missing ranges (inclusive) between the next sequence and the newest held, at
    /// most `max`, into `out` (cleared first).
    pub fn missing_ranges(&self, max: usize, out: &mut Vec<(u64, u64)>) {
        out.clear();
        let mut expected = self.next_sequence;
        for &sequence in self.held.keys() {
            if out.len() >= max {
                break;
            }
            if sequence > expected {
                out.push((expected, sequence - 1));
            }
            expected = sequence.saturating_add(1);
        }
    }

    /// The earliest of this chain's timers.
    pub fn next_timer_us(&self) -> Option<u64> {
        [self.gap.map(|g| g.next_nak_us), self.tail_query_due_us, self.settling_until_us].into_iter().flatten().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: holding, hole ranges, taking in order and giving holes up behave as the core
    // relies on: every sequence is either taken once or counted given up once.
    #[test]
    fn holds_ranges_and_skips() {
        let mut chain = InboundChain::new(10, 0);
        assert!(chain.is_duplicate(9) && !chain.is_duplicate(10));
        chain.advance();
        for sequence in [13, 14, 17, 20] {
            chain.hold(sequence, &[sequence as u8]);
        }
        assert!(chain.is_duplicate(14) && !chain.is_duplicate(15));
        let mut ranges = Vec::new();
        chain.missing_ranges(8, &mut ranges);
        assert_eq!(ranges, vec![(11, 12), (15, 16), (18, 19)]);
        chain.missing_ranges(2, &mut ranges);
        assert_eq!(ranges, vec![(11, 12), (15, 16)]);
        assert_eq!(chain.held_span(), Some((13, 20)));
        assert!(chain.take_next().is_none());
        assert_eq!(chain.skip_hole(u64::MAX), 2);
        assert_eq!(&*chain.take_next().unwrap(), &[13]);
        assert_eq!(&*chain.take_next().unwrap(), &[14]);
        assert!(chain.take_next().is_none());
        assert_eq!(chain.skip_hole(16), 1, "a limit below the first held stops there");
        assert_eq!(chain.next_sequence(), 16);
        assert_eq!(chain.skip_hole(u64::MAX), 1);
        assert_eq!(&*chain.take_next().unwrap(), &[17]);
        assert_eq!(chain.skip_hole(u64::MAX), 2);
        assert_eq!(&*chain.take_next().unwrap(), &[20]);
        assert!(!chain.has_held());
        assert_eq!(chain.skip_hole(25), 4, "without held records the limit is the target");
        assert_eq!(chain.next_sequence(), 25);
    }

    // Goal: a settling chain takes lower sequences and starts at the lowest held.
    #[test]
    fn settling_starts_at_the_lowest() {
        let mut chain = InboundChain::new(7, 0);
        chain.settling_until_us = Some(5);
        chain.hold_settling(7, &[7]);
        assert!(!chain.is_duplicate(4) && chain.is_duplicate(7));
        chain.hold_settling(4, &[4]);
        chain.hold_settling(5, &[5]);
        chain.settling_until_us = None;
        assert_eq!(chain.next_sequence(), 4);
        assert!(chain.is_duplicate(3));
        assert_eq!(&*chain.take_next().unwrap(), &[4]);
        assert_eq!(&*chain.take_next().unwrap(), &[5]);
        assert!(chain.take_next().is_none());
        assert_eq!(chain.skip_hole(u64::MAX), 1);
        assert_eq!(&*chain.take_next().unwrap(), &[7]);
    }
}
