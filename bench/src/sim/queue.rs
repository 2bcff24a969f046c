//! The simulator's event queue: a binary heap ordered by time, ties broken by the order the
//! events were scheduled, so a run does not depend on the heap's internal layout.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Events in time order; equal times in scheduling order.
pub struct EventQueue<E> {
    heap: BinaryHeap<Entry<E>>,
    /// Stamped on each scheduled event: the tie-breaker.
    next_sequence: u64,
}

struct Entry<E> {
    at_us: u64,
    sequence: u64,
    event: E,
}

impl<E> Entry<E> {
    fn key(&self) -> (u64, u64) {
        (self.at_us, self.sequence)
    }
}

impl<E> PartialEq for Entry<E> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl<E> Eq for Entry<E> {}

impl<E> PartialOrd for Entry<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<E> Ord for Entry<E> {
    /// Reversed: `BinaryHeap` pops its greatest entry, and the earliest must come first.
    fn cmp(&self, other: &Self) -> Ordering {
        other.key().cmp(&self.key())
    }
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        Self { heap: BinaryHeap::new(), next_sequence: 0 }
    }
}

impl<E> EventQueue<E> {
    pub fn push(&mut self, at_us: u64, event: E) {
        self.heap.push(Entry { at_us, sequence: self.next_sequence, event });
        self.next_sequence += 1;
    }

    /// The earliest event and its time.
    pub fn pop(&mut self) -> Option<(u64, E)> {
        self.heap.pop().map(|entry| (entry.at_us, entry.event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: events come out by time, and events at the same time in the order they were
    // scheduled, whatever order they went in.
    #[test]
    fn time_then_scheduling_order() {
        let mut queue = EventQueue::default();
        for (at_us, name) in [(30, "c"), (10, "a1"), (20, "b"), (10, "a2"), (10, "a3"), (0, "first")] {
            queue.push(at_us, name);
        }
        let order: Vec<(u64, &str)> = std::iter::from_fn(|| queue.pop()).collect();
        assert_eq!(order, vec![(0, "first"), (10, "a1"), (10, "a2"), (10, "a3"), (20, "b"), (30, "c")]);
        assert!(queue.pop().is_none());
    }
}
