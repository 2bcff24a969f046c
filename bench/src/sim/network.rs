//! The simulated network's geometry: where each node is, the one-way latency between two
//! nodes, and shortest paths over the overlay's links.
//!
//! Nodes sit at random points of a unit square; the latency between two is a fixed base (the
//! last mile, the stacks) plus a part proportional to their distance (the long haul), so
//! latencies obey the triangle inequality as on the Internet and a route through a far
//! neighbor really costs more. The base and span put every latency between 5 and 100 ms,
//! the range of one continent to across the world.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// One-way latency between two nodes at the same spot.
pub const LATENCY_BASE_US: u64 = 5_000;
/// Added for the longest distance (opposite corners).
pub const LATENCY_SPAN_US: u64 = 95_000;
/// "Unreachable" in [`shortest_paths`].
pub const UNREACHABLE: u64 = u64::MAX;

/// Every node's position, by node index (joiners are appended).
#[derive(Default)]
pub struct Geography {
    positions: Vec<(f64, f64)>,
}

impl Geography {
    /// Places the next node (index = the number placed so far) at `(x, y)` in the unit square.
    pub fn place(&mut self, x: f64, y: f64) {
        debug_assert!((0.0..=1.0).contains(&x) && (0.0..=1.0).contains(&y));
        self.positions.push((x, y));
    }

    /// The mean one-way latency between nodes `a` and `b` (packets add jitter to it).
    pub fn latency_us(&self, a: usize, b: usize) -> u64 {
        let ((ax, ay), (bx, by)) = (self.positions[a], self.positions[b]);
        let distance = ((ax - bx).powi(2) + (ay - by).powi(2)).sqrt() / std::f64::consts::SQRT_2;
        LATENCY_BASE_US + (distance * LATENCY_SPAN_US as f64) as u64
    }
}

/// Dijkstra: the least total latency from `source` to every node over `links` (per node, its
/// neighbors and the latency to each); [`UNREACHABLE`] where no path exists.
pub fn shortest_paths(links: &[Vec<(usize, u64)>], source: usize) -> Vec<u64> {
    let mut distance = vec![UNREACHABLE; links.len()];
    let mut frontier = BinaryHeap::new();
    distance[source] = 0;
    frontier.push(Reverse((0u64, source)));
    while let Some(Reverse((reached_us, node))) = frontier.pop() {
        if reached_us > distance[node] {
            continue; // a stale entry: a shorter path was found after it was queued
        }
        for &(next, latency_us) in &links[node] {
            let through_us = reached_us + latency_us;
            if through_us < distance[next] {
                distance[next] = through_us;
                frontier.push(Reverse((through_us, next)));
            }
        }
    }
    distance
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: Dijkstra prefers two short hops over one long one, and says which nodes it cannot reach.
    #[test]
    fn shortest_paths_take_the_cheaper_route() {
        // 0 -10- 1 -10- 2, and 0 -50- 2 directly; 3 is alone.
        let mut links = vec![Vec::new(); 4];
        for (a, b, latency_us) in [(0, 1, 10), (1, 2, 10), (0, 2, 50)] {
            links[a].push((b, latency_us));
            links[b].push((a, latency_us));
        }
        assert_eq!(shortest_paths(&links, 0), vec![0, 10, 20, UNREACHABLE]);
        assert_eq!(shortest_paths(&links, 2), vec![20, 10, 0, UNREACHABLE]);
    }

    // Goal: latencies are symmetric, within 5..=100 ms, and grow with distance.
    #[test]
    fn latency_grows_with_distance() {
        let mut geography = Geography::default();
        for (x, y) in [(0.0, 0.0), (1.0, 1.0), (0.1, 0.0)] {
            geography.place(x, y);
        }
        assert_eq!(geography.latency_us(0, 0), LATENCY_BASE_US);
        assert_eq!(geography.latency_us(0, 1), LATENCY_BASE_US + LATENCY_SPAN_US);
        assert_eq!(geography.latency_us(0, 2), geography.latency_us(2, 0));
        assert!(geography.latency_us(0, 2) < geography.latency_us(2, 1));
    }
}
