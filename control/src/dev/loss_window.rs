//! Loss and duplicate accounting for one (subscriber, publisher, chain) in fixed memory.
//!
//! `runnel dev` runs for hours, so it cannot remember every sequence it was delivered. A
//! [`LossWindow`] remembers the highest sequence seen and one bit for each of the
//! [`WINDOW_SEQUENCES`] sequences at and below it (a ring indexed by `sequence %
//! WINDOW_SEQUENCES`, like an anti-replay window). A chain numbers its messages from 0, so
//! before anything arrives the window stands just below sequence 0.
//!
//! - A sequence above the highest moves the window up. Each sequence that leaves the bottom
//!   of the window with its bit unset was never delivered in time: it is counted lost.
//! - A sequence inside the window is a first delivery if its bit is unset (a reordering or
//!   a repaired hole), else a duplicate.
//! - A sequence below the window is [`Arrival::Late`]: the window no longer knows whether it
//!   came before, so it is neither a first delivery nor a duplicate. If it never came, it was
//!   already counted lost when it left the window, and stays lost: for a live stream a
//!   message more than `WINDOW_SEQUENCES` behind the newest one (6.5 s at 10k msgs/s) is as
//!   good as lost.
//!
//! So for a chain of `published` messages, `first deliveries + lost_at_end(published) =
//! published` exactly, and every delivery is one of first, duplicate or late.
//!
//! Limits: 8 KiB per window; a far jump ahead (a publisher restarting its numbering is a new
//! chain, so this is only a bug or a forgery) counts everything it skips as lost.

/// Sequences a window tells apart below (and including) the highest one seen.
pub const WINDOW_SEQUENCES: u64 = 65_536;
const WORDS: usize = (WINDOW_SEQUENCES / 64) as usize;

/// What one delivered sequence was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Delivered for the first time (possibly out of order, inside the window).
    First,
    /// Delivered before, inside the window.
    Duplicate,
    /// Below the window: too old to tell; counted neither first nor duplicate.
    Late,
}

/// One chain's delivery record: the highest sequence and a bitmap of the window below it.
#[derive(Clone, Debug)]
pub struct LossWindow {
    /// `None` until the first delivery.
    highest: Option<u64>,
    /// Bit `s % WINDOW_SEQUENCES` is set when sequence `s` (inside the window) was delivered.
    bits: Box<[u64]>,
    /// Sequences that left the window undelivered.
    lost: u64,
}

impl Default for LossWindow {
    fn default() -> Self {
        Self { highest: None, bits: vec![0; WORDS].into_boxed_slice(), lost: 0 }
    }
}

impl LossWindow {
    fn bit(sequence: u64) -> (usize, u64) {
        let slot = sequence % WINDOW_SEQUENCES;
        ((slot / 64) as usize, 1u64 << (slot % 64))
    }

    /// Records one delivery of `sequence` and says what it was.
    pub fn record(&mut self, sequence: u64) -> Arrival {
        match self.highest {
            Some(highest) if sequence <= highest => {
                if highest - sequence >= WINDOW_SEQUENCES {
                    return Arrival::Late;
                }
                let (word, mask) = Self::bit(sequence);
                if self.bits[word] & mask != 0 {
                    return Arrival::Duplicate;
                }
                self.bits[word] |= mask;
                Arrival::First
            }
            _ => {
                self.advance(sequence);
                let (word, mask) = Self::bit(sequence);
                self.bits[word] |= mask;
                Arrival::First
            }
        }
    }

    /// Sequences that left the window undelivered so far.
    #[cfg(test)]
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// The highest sequence delivered, if any.
    #[cfg(test)]
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    /// Lost for a chain that ended after `published` messages (sequences `0..published`):
    /// what left the window undelivered, the holes still in the window, and everything
    /// above the highest delivered sequence that was never delivered.
    pub fn lost_at_end(&self, published: u64) -> u64 {
        let never_reached = match self.highest {
            None => published,
            Some(highest) => published.saturating_sub(highest).saturating_sub(1),
        };
        self.lost + self.holes_in_window() + never_reached
    }

    /// Undelivered sequences inside the window (only sequences ≥ 0 exist).
    fn holes_in_window(&self) -> u64 {
        let Some(highest) = self.highest else { return 0 };
        let in_window = highest.min(WINDOW_SEQUENCES - 1) + 1;
        in_window - self.bits.iter().map(|w| u64::from(w.count_ones())).sum::<u64>()
    }

    /// Moves the highest sequence up to `sequence`. Every sequence `s` entering the window
    /// reuses the slot of `s - WINDOW_SEQUENCES`, which leaves it: count it lost if unset.
    fn advance(&mut self, sequence: u64) {
        let first_entering = self.highest.map_or(0, |highest| highest + 1);
        // Entering: first_entering..=sequence; `span` is their count minus one (no overflow).
        let span = sequence - first_entering;
        if span >= WINDOW_SEQUENCES - 1 {
            // The whole window leaves, and so does everything skipped below the new one.
            self.lost += self.holes_in_window() + (span - (WINDOW_SEQUENCES - 1));
            self.bits.fill(0);
        } else {
            // Slots of entering sequences below WINDOW_SEQUENCES stand for no real sequence
            // (and are unset); only the others evict one.
            let lowest_evicting = first_entering.max(WINDOW_SEQUENCES);
            let evicting = if sequence >= lowest_evicting { sequence - lowest_evicting + 1 } else { 0 };
            let delivered = self.take_slots(first_entering, span + 1);
            self.lost += evicting - delivered;
        }
        self.highest = Some(sequence);
    }

    /// Clears the `count` (< WINDOW_SEQUENCES) slots from `sequence`'s on, wrapping around
    /// the ring; returns how many were set.
    fn take_slots(&mut self, sequence: u64, count: u64) -> u64 {
        let mut slot = sequence % WINDOW_SEQUENCES;
        let mut left = count;
        let mut set = 0;
        while left > 0 {
            let offset = slot % 64;
            let bits_here = (64 - offset).min(left);
            let mask = if bits_here == 64 { u64::MAX } else { ((1u64 << bits_here) - 1) << offset };
            let word = &mut self.bits[(slot / 64) as usize];
            set += u64::from((*word & mask).count_ones());
            *word &= !mask;
            left -= bits_here;
            slot = (slot + bits_here) % WINDOW_SEQUENCES;
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_proto::testing::Rng;
    use std::collections::BTreeSet;

    const W: u64 = WINDOW_SEQUENCES;

    // Goal: in-order delivery is all first deliveries and loses nothing; a repeat inside the
    // window is a duplicate and changes no count.
    #[test]
    fn duplicates_inside_the_window() {
        let mut window = LossWindow::default();
        for sequence in 0..3 * W {
            assert_eq!(window.record(sequence), Arrival::First);
        }
        assert_eq!(window.record(3 * W - 1), Arrival::Duplicate);
        assert_eq!(window.record(2 * W), Arrival::Duplicate, "the oldest sequence still in the window");
        assert_eq!(window.record(2 * W - 1), Arrival::Late, "one below the window");
        assert_eq!(window.lost(), 0);
        assert_eq!(window.lost_at_end(3 * W), 0);
        assert_eq!(window.lost_at_end(3 * W + 5), 5, "published but never delivered");
    }

    // Goal: sequences reordered inside the window are first deliveries that fill their holes,
    // so nothing is lost when the window later slides over them.
    #[test]
    fn reordering_inside_the_window() {
        let mut window = LossWindow::default();
        assert_eq!(window.record(5), Arrival::First);
        assert_eq!(window.lost_at_end(6), 5, "0..5 are holes for now");
        for sequence in (0..5).rev() {
            assert_eq!(window.record(sequence), Arrival::First);
        }
        assert_eq!(window.record(W + 100), Arrival::First);
        assert_eq!(window.record(W + 50), Arrival::First);
        assert_eq!(window.record(W + 50), Arrival::Duplicate);
        // The window is now W+100-W+1 = 101..=W+100: of 0..=100 that left it, 0..=5 had
        // been delivered, 6..=100 are lost.
        assert_eq!(window.lost(), 101 - 6);
        assert_eq!(window.lost_at_end(W + 101), (W + 101) - 8);
    }

    // Goal: a hole is counted lost exactly when it leaves the window, not before, and a late
    // copy of it afterwards changes nothing.
    #[test]
    fn loss_when_sliding() {
        let mut window = LossWindow::default();
        for sequence in (0..W + 3).filter(|s| *s != 3) {
            window.record(sequence);
        }
        assert_eq!(window.lost(), 0, "3 is the bottom of the window (highest W+2)");
        assert_eq!(window.lost_at_end(W + 3), 1);
        assert_eq!(window.record(W + 3), Arrival::First, "3 leaves the window now");
        assert_eq!(window.lost(), 1);
        assert_eq!(window.record(3), Arrival::Late);
        assert_eq!(window.lost(), 1);
        assert_eq!(window.lost_at_end(W + 4), 1);
        assert_eq!(window.lost_at_end(W + 10), 7, "and the 6 never delivered above the highest");
    }

    // Goal: a jump further than the window counts the old window's holes and every skipped
    // sequence lost, in one step; jumps to the top of u64 do not overflow.
    #[test]
    fn far_jumps() {
        let mut window = LossWindow::default();
        window.record(0);
        window.record(2);
        window.record(10 * W);
        // Lost: 1 (a hole in the old window) and 3..(10W - W + 1) skipped entirely.
        assert_eq!(window.lost(), 1 + (9 * W + 1 - 3));
        assert_eq!(window.lost_at_end(10 * W + 1), 10 * W + 1 - 3);
        assert_eq!(window.record(9 * W + 1), Arrival::First, "the bottom of the new window");
        assert_eq!(window.record(9 * W), Arrival::Late);
        // Exactly one window ahead: the old window leaves entirely.
        let mut window = LossWindow::default();
        window.record(W - 1);
        assert_eq!(window.lost(), 0);
        window.record(2 * W - 1);
        assert_eq!(window.lost(), W - 1);
        let mut window = LossWindow::default();
        assert_eq!(window.record(u64::MAX), Arrival::First);
        assert_eq!(window.record(u64::MAX), Arrival::Duplicate);
        assert_eq!(window.record(u64::MAX - W), Arrival::Late);
        assert_eq!(window.lost(), u64::MAX - W + 1);
        assert_eq!(window.highest(), Some(u64::MAX));
        let mut window = LossWindow::default();
        window.record(u64::MAX - 1);
        assert_eq!(window.lost(), u64::MAX - W, "0..=u64::MAX-1-W skipped");
        assert_eq!(window.record(u64::MAX), Arrival::First);
        assert_eq!(window.lost(), u64::MAX - W + 1, "u64::MAX-W left the window undelivered");
    }

    // Goal: nothing delivered means everything published is lost.
    #[test]
    fn empty_window() {
        let window = LossWindow::default();
        assert_eq!(window.lost_at_end(0), 0);
        assert_eq!(window.lost_at_end(42), 42);
        assert_eq!(window.highest(), None);
    }

    /// The same rules on a set of every first delivery.
    #[derive(Default)]
    struct Reference {
        first: BTreeSet<u64>,
        highest: Option<u64>,
    }

    impl Reference {
        fn record(&mut self, sequence: u64) -> Arrival {
            if self.highest.is_some_and(|h| sequence <= h && h - sequence >= W) {
                return Arrival::Late;
            }
            self.highest = Some(self.highest.map_or(sequence, |h| h.max(sequence)));
            if self.first.insert(sequence) {
                Arrival::First
            } else {
                Arrival::Duplicate
            }
        }

        /// Sequences below the window that were never a first delivery.
        fn lost(&self) -> u64 {
            let Some(bottom) = self.highest.and_then(|h| (h + 1).checked_sub(W)) else { return 0 };
            bottom - self.first.range(..bottom).count() as u64
        }
    }

    // Goal: on random mixes of in-order runs, reordering, duplicates, holes, late copies and
    // far jumps, the window classifies every delivery and counts loss like a set of all
    // sequences would. Replay a failure with RUNNEL_SEED=<n>.
    #[test]
    fn random_sequences_agree_with_a_set() {
        let seed = runnel_proto::testing::seed(rand::random());
        let mut rng = Rng::new(seed);
        for round in 0..20 {
            let (mut window, mut reference) = (LossWindow::default(), Reference::default());
            let mut next = 0u64;
            for step in 0..20_000 {
                let highest = reference.highest.unwrap_or(0);
                let sequence = match rng.below(100) {
                    0..=59 => next,
                    60..=69 => highest.saturating_sub(rng.below(200)),
                    70..=74 => highest.saturating_sub(W - 2 + rng.below(4)),
                    75..=79 => highest.saturating_sub(W + rng.below(3 * W)),
                    80..=94 => next + rng.below(50),
                    95..=98 => next + rng.below(3 * W),
                    _ => next + W - 2 + rng.below(4),
                };
                next = next.max(sequence + 1);
                let expected = reference.record(sequence);
                assert_eq!(window.record(sequence), expected, "seed {seed} round {round} step {step}: sequence {sequence}");
                if step % 997 == 0 {
                    assert_eq!(window.lost(), reference.lost(), "seed {seed} round {round} step {step}");
                }
            }
            assert_eq!(window.lost(), reference.lost(), "seed {seed} round {round}");
            let published = next + rng.below(100);
            assert_eq!(window.lost_at_end(published), published - reference.first.len() as u64, "seed {seed} round {round}");
        }
    }
}
