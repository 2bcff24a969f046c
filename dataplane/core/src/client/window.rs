//! A sliding sequence window: "have I seen this sequence number recently?"
//!
//! The client uses it per node shard for link sequences (replay protection, as the node
//! does per link per shard); message sequences are tracked per chain in order delivery
//! (`order.rs`). It remembers the highest sequence accepted
//! and a ring of [`WINDOW_LENGTH`] bits below it, like the IPsec/WireGuard anti-replay
//! window. Limits: anything more than `WINDOW_LENGTH` below the highest is rejected as too
//! old, even if it was never seen (a reordering deeper than the window is treated as replay).

/// Sequences the window remembers below the highest one.
pub const WINDOW_LENGTH: u64 = 1024;
const WORDS: usize = (WINDOW_LENGTH / 64) as usize;

#[derive(Clone, Debug, Default)]
pub struct SequenceWindow {
    /// `None` until the first sequence is accepted.
    highest: Option<u64>,
    bits: [u64; WORDS],
}

impl SequenceWindow {
    fn bit(sequence: u64) -> (usize, u64) {
        let slot = sequence % WINDOW_LENGTH;
        ((slot / 64) as usize, 1u64 << (slot % 64))
    }

    /// Whether `sequence` would be rejected (seen, or too old) without recording it.
    pub fn rejects(&self, sequence: u64) -> bool {
        match self.highest {
            None => false,
            Some(highest) if sequence > highest => false,
            Some(highest) if highest - sequence >= WINDOW_LENGTH => true,
            Some(_) => {
                let (word, mask) = Self::bit(sequence);
                self.bits[word] & mask != 0
            }
        }
    }

    /// Records `sequence`; returns false (and changes nothing) if it is a replay or too old.
    pub fn accept(&mut self, sequence: u64) -> bool {
        if self.rejects(sequence) {
            return false;
        }
        match self.highest {
            Some(highest) if sequence <= highest => {}
            Some(highest) if sequence - highest < WINDOW_LENGTH => {
                // Forget the slots the window slides over: they now stand for new sequences.
                for skipped in highest + 1..sequence {
                    let (word, mask) = Self::bit(skipped);
                    self.bits[word] &= !mask;
                }
                self.highest = Some(sequence);
            }
            _ => {
                self.bits = [0; WORDS];
                self.highest = Some(sequence);
            }
        }
        let (word, mask) = Self::bit(sequence);
        self.bits[word] |= mask;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: new, reordered-within-window and far-ahead sequences pass once; replays and
    // sequences older than the window are rejected; sliding clears reused slots.
    #[test]
    fn accepts_once_and_rejects_replays() {
        let mut window = SequenceWindow::default();
        assert!(window.accept(10));
        assert!(!window.accept(10));
        assert!(window.accept(12));
        assert!(window.accept(11));
        assert!(!window.accept(11));
        assert!(window.accept(10 + WINDOW_LENGTH));
        assert!(!window.accept(10), "10 is now too old");
        assert!(window.accept(12 + WINDOW_LENGTH), "ahead of the highest: new");
        assert!(window.accept(u64::MAX - 1));
        assert!(!window.accept(12 + WINDOW_LENGTH));
        assert!(window.accept(u64::MAX));
        assert!(!window.accept(u64::MAX));
    }
}
