//! `runnel bench sim` at 1,000 nodes: the real overlay and relay cores of every node over the
//! simulated network (bench/src/sim, docs/decisions-sim.md), with fixed seeds.
//! `RUNNEL_SEED=<n>` runs another seed; each test prints the one it ran.
//!
//! Fewer messages than the benchmark's default (50, not 300) keep these tests to seconds in
//! release; the first messages, which build the tree, weigh more in the duplicates here.

use runnel_bench::sim::{sim, SimOptions, SimReport};
use runnel_core::link::Propagation;

const NODES: usize = 1000;
const MESSAGES: usize = 50;

fn options(seed: u64, churn: &[f64], propagation: Propagation) -> SimOptions {
    SimOptions { nodes: NODES, seed, churn: churn.to_vec(), messages: MESSAGES, propagation, ..SimOptions::default() }
}

/// The report's figures every run must meet: the mesh formed, and the final overlay is
/// connected with every live node at ≥ 3 neighbors.
fn assert_meshed(report: &SimReport) {
    let context = format!("churn {}, seed {}: {report:?}", report.churn, report.seed);
    assert!(report.seconds_to_mesh.is_some(), "the mesh never formed; {context}");
    assert!(report.overlay_connected, "the final overlay is not connected; {context}");
    assert_eq!(report.nodes_below_meshed_degree, 0, "{context}");
    assert!(report.degree_min >= 3, "{context}");
}

// Goal: with every node subscribed and one publisher, Plumtree delivers every message to every
// node at 0 % churn and ≥ 99.9 % of them at 10 % churn, over a connected mesh where every node
// has ≥ 3 neighbors, with far fewer duplicates than flooding the same overlay (same seed, so
// the same overlay and the same losses up to the first published frame).
#[test]
fn plumtree_delivers_everything_with_few_duplicates_at_1000_nodes() {
    let seed = runnel_proto::testing::seed(1);
    let reports = sim(options(seed, &[0.0, 0.1], Propagation::Plumtree)).unwrap();
    let (steady, churned) = (&reports[0], &reports[1]);
    for report in &reports {
        assert_meshed(report);
        assert!(report.expected_deliveries > (NODES as u64 - 200) * MESSAGES as u64, "{report:?}");
    }
    assert_eq!(steady.delivery_ratio, 1.0, "{steady:?}");
    assert!(churned.delivery_ratio >= 0.999, "{churned:?}");
    assert!(churned.nodes_killed == 100 && churned.nodes_joined == 100, "{churned:?}");

    let flood = sim(options(seed, &[0.0], Propagation::Flood)).unwrap().remove(0);
    assert_meshed(&flood);
    assert_eq!(flood.delivery_ratio, 1.0, "{flood:?}");
    // Flooding at a mean degree of ~6 sends each frame to every neighbor but its source.
    assert!(flood.duplicates_per_delivery > 3.0, "{flood:?}");
    assert!(steady.duplicates_per_delivery < 0.5, "{steady:?}");
    assert!(churned.duplicates_per_delivery < flood.duplicates_per_delivery / 4.0, "{churned:?} vs flooding {flood:?}");
}

// Goal: a seed replays: the same options give the same report, but for wall time and memory
// (every random choice is drawn from the seed, in an order that depends on the seed only).
#[test]
fn same_seed_same_report_at_1000_nodes() {
    let seed = runnel_proto::testing::seed(2);
    let once = sim(SimOptions { messages: 20, ..options(seed, &[0.1], Propagation::Plumtree) }).unwrap();
    let again = sim(SimOptions { messages: 20, ..options(seed, &[0.1], Propagation::Plumtree) }).unwrap();
    assert_eq!(once[0].replayable(), again[0].replayable());
    assert!(once[0].nodes_killed > 0 && once[0].delivery_ratio > 0.0, "{:?}", once[0]);
}
