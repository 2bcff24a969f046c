//! `runnel bench sim`: a seeded, deterministic simulation of one stream part's overlay and
//! propagation at thousands of nodes, on one machine, in simulated time.
//!
//! **What is real.** Each node runs the real neighbor overlay (`runnel_peering::overlay`,
//! the state machine the libp2p driver drives: candidates, proposals, accept/refuse, degree
//! target 4 / max 8, X25519 link keys) and the real relay core (`runnel_core::relay`, the
//! sans-I/O state machine a dataplane shard drives), fed real encoded, signed frames from the
//! real publisher core. The simulator is only the glue the driver and the shard runtime
//! would be, and the network between them.
//!
//! **What is modeled** (each decision and its reason: docs/decisions-sim.md). Latency from
//! node positions (`network`), per-datagram loss and jitter; handshake messages over
//! reliable connections with a dial cost; the DHT as "up to k = 20 random providers that
//! have announced"; killed processes whose peers see the connection close; infinite CPU.
//!
//! **How it runs.** One event queue (`queue`), ordered by simulated time and then by the
//! order events were scheduled; one event at a time (`world`). All N nodes start at once;
//! once every node has ≥ 3 neighbors (or after `MESH_DEADLINE_US`) and a settle time, one
//! publisher on the first node publishes `messages` messages at `rate_per_s`; with churn, a
//! fraction of the nodes is killed at random instants of that window and as many fresh nodes
//! start in it; after a drain the run ends and [`SimReport`] is computed.
//!
//! **Determinism.** Every random choice comes from one xorshift generator seeded by `seed`
//! (printed; `--seed` replays it), drawn in an order that depends only on the seed: the
//! overlays get seeded `StdRng`s and sort candidates before shuffling; the relays' sends,
//! which they list in hash-map order (seeded per process), are sorted by link before any
//! draw; overlay neighbor lists are sorted before use. Link keys come from the OS (the
//! overlay's X25519), but no decision depends on their bytes. Same seed, same report —
//! except `wall_seconds` and `peak_rss_bytes`.
//!
//! **Limits.** One stream part, one publisher. Nodes have infinite CPU and unbounded
//! bandwidth, so queueing never adds latency. The DHT, identify and ping are not simulated.

mod network;
mod queue;
mod world;

use crate::BenchError;
use network::{shortest_paths, UNREACHABLE};
use runnel_core::link::Propagation;
use serde_json::{json, Value};
use world::{Outcome, World, MESHED_DEGREE, NOT_DELIVERED, PUBLISHER_NODE};

/// Publishing starts this long after the mesh formed: a new link carries data once its
/// neighbor's Subscribe crossed it, which the relay refreshes every second.
const SETTLE_US: u64 = 2_000_000;
/// After the last publish: time for the last messages, their repairs and tail probes.
const DRAIN_US: u64 = 5_000_000;
/// If the mesh has not formed by then, publishing starts anyway (and `seconds_to_mesh` is null).
const MESH_DEADLINE_US: u64 = 60_000_000;
/// A message counts for a node that stays alive this long after it was published (one that
/// dies sooner may die before the message could reach it).
const ALIVE_AFTER_PUBLISH_US: u64 = 2_000_000;

/// What `runnel bench sim` simulates.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub nodes: usize,
    pub seed: u64,
    /// Fractions of nodes killed (and as many started) during publishing, one run each.
    pub churn: Vec<f64>,
    pub messages: usize,
    pub rate_per_s: u64,
    /// Probability that one datagram is lost (each independently).
    pub loss: f64,
    /// How every relay passes frames to its neighbors (`RelayConfig::propagation`).
    pub propagation: Propagation,
}

impl Default for SimOptions {
    fn default() -> Self {
        let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |since| since.as_nanos() as u64);
        Self {
            nodes: 1000,
            seed: clock,
            churn: vec![0.0, 0.1],
            messages: 300,
            rate_per_s: 50,
            loss: 0.001,
            propagation: Propagation::Plumtree,
        }
    }
}

impl SimOptions {
    fn validate(&self) -> Result<(), BenchError> {
        if !(2..=1_000_000).contains(&self.nodes) {
            return Err(BenchError::new(format!("--nodes {}: use 2..=1000000", self.nodes)));
        }
        if self.churn.is_empty() || self.churn.iter().any(|churn| !(0.0..=0.5).contains(churn)) {
            return Err(BenchError::new(format!("--churn {:?}: give fractions in 0..=0.5, e.g. 0,0.1", self.churn)));
        }
        if !(1..=100_000).contains(&self.messages) || !(1..=10_000).contains(&self.rate_per_s) {
            return Err(BenchError::new("--messages must be in 1..=100000 and --rate in 1..=10000"));
        }
        if !(0.0..1.0).contains(&self.loss) {
            return Err(BenchError::new(format!("--loss {}: use 0 <= LOSS < 1", self.loss)));
        }
        Ok(())
    }

    fn publish_interval_us(&self) -> u64 {
        1_000_000 / self.rate_per_s
    }

    fn publish_window_us(&self) -> u64 {
        self.publish_interval_us() * self.messages as u64
    }
}

/// One run's figures (one churn level).
#[derive(Clone, Debug, PartialEq)]
pub struct SimReport {
    pub nodes: usize,
    pub churn: f64,
    pub seed: u64,
    pub messages: usize,
    pub loss: f64,
    pub propagation: Propagation,
    /// Simulated seconds from the cold start until every node had ≥ 3 neighbors at once.
    pub seconds_to_mesh: Option<f64>,
    /// Delivered / expected (node, message) pairs; see [`expected`] for which pairs count.
    pub delivery_ratio: f64,
    pub expected_deliveries: u64,
    /// First arrival latency over the shortest-path latency from the publisher's node in the
    /// overlay as it was when the message was published (Dijkstra over its links' mean
    /// latencies), per delivered (node, message) pair that counts (docs/decisions-sim.md).
    pub latency_stretch_p50: f64,
    pub latency_stretch_p99: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    /// Duplicate copies in propagation datagrams per delivered frame.
    pub duplicates_per_delivery: f64,
    /// Copies in repair datagrams (tail probes, NAK answers) that were duplicates, per delivery.
    pub repair_duplicates_per_delivery: f64,
    /// Deliveries that came by repair (a NAK answer or a tail probe filled the gap).
    pub delivered_by_repair: u64,
    pub naks_sent: u64,
    /// Plumtree: NAKs that were grafts (sent to a lazy neighbor), and Prunes sent, summed
    /// over the relays: how much the tree moved.
    pub grafts_sent: u64,
    pub prunes_sent: u64,
    pub frames_lost: u64,
    /// The final overlay among live nodes.
    pub degree_min: usize,
    pub degree_mean: f64,
    pub degree_max: usize,
    pub nodes_below_meshed_degree: usize,
    pub overlay_connected: bool,
    pub nodes_killed: usize,
    pub nodes_joined: usize,
    pub datagrams: u64,
    pub events: u64,
    pub simulated_seconds: f64,
    pub wall_seconds: f64,
    /// The process's peak resident set so far (VmHWM), bytes.
    pub peak_rss_bytes: u64,
}

/// Runs the simulation once per churn level.
pub fn sim(options: SimOptions) -> Result<Vec<SimReport>, BenchError> {
    options.validate()?;
    Ok(options.churn.iter().map(|churn| run(&options, *churn)).collect())
}

fn run(options: &SimOptions, churn: f64) -> SimReport {
    let started = std::time::Instant::now();
    let outcome = World::new(options, churn).run();
    let mut report = report(options, churn, &outcome);
    report.wall_seconds = started.elapsed().as_secs_f64();
    report.peak_rss_bytes = peak_rss_bytes();
    report
}

/// Whether message `message` counted for node `node`: the node had been meshed (≥ 3
/// neighbors, first reached) a settle time before the message was published, and was alive
/// from then until [`ALIVE_AFTER_PUBLISH_US`] after it. The publisher's node never counts.
fn expected(outcome: &Outcome, node: usize, published_us: u64) -> bool {
    let (_, killed_us, meshed_us) = outcome.lifetimes[node];
    node != PUBLISHER_NODE
        && meshed_us.is_some_and(|meshed| meshed + SETTLE_US <= published_us)
        && killed_us.is_none_or(|killed| killed >= published_us + ALIVE_AFTER_PUBLISH_US)
}

fn report(options: &SimOptions, churn: f64, outcome: &Outcome) -> SimReport {
    // Connectivity of the final overlay; stretch is measured on each message's own overlay.
    let distance_us = shortest_paths(&outcome.links, PUBLISHER_NODE);
    let (mut expected_pairs, mut delivered_pairs) = (0u64, 0u64);
    let (mut stretches, mut latencies_ms) = (Vec::new(), Vec::new());
    for (node, latencies) in outcome.latencies_us.iter().enumerate() {
        for (message, published_us) in outcome.publish_us.iter().enumerate() {
            if !expected(outcome, node, *published_us) {
                continue;
            }
            expected_pairs += 1;
            let latency_us = latencies.get(message).copied().unwrap_or(NOT_DELIVERED);
            if latency_us == NOT_DELIVERED {
                continue;
            }
            delivered_pairs += 1;
            latencies_ms.push(f64::from(latency_us) / 1000.0);
            let shortest_us = outcome.distances_us[message][node];
            if shortest_us != UNREACHABLE {
                stretches.push(f64::from(latency_us) / shortest_us as f64);
            }
        }
    }
    let live: Vec<usize> = (0..outcome.links.len()).filter(|node| outcome.alive[*node]).collect();
    let degrees: Vec<usize> = live.iter().map(|node| outcome.links[*node].len()).collect();
    let frames = outcome.frames;
    let per_delivery = |count: u64| count as f64 / frames.delivered.max(1) as f64;
    SimReport {
        nodes: options.nodes,
        churn,
        seed: options.seed,
        messages: outcome.publish_us.len(),
        loss: options.loss,
        propagation: options.propagation,
        seconds_to_mesh: outcome.mesh_us.map(|us| us as f64 / 1e6),
        delivery_ratio: delivered_pairs as f64 / expected_pairs.max(1) as f64,
        expected_deliveries: expected_pairs,
        latency_stretch_p50: percentile(&mut stretches, 0.50),
        latency_stretch_p99: percentile(&mut stretches, 0.99),
        latency_ms_p50: percentile(&mut latencies_ms, 0.50),
        latency_ms_p99: percentile(&mut latencies_ms, 0.99),
        duplicates_per_delivery: per_delivery(frames.duplicates),
        repair_duplicates_per_delivery: per_delivery(frames.repair_duplicates),
        delivered_by_repair: frames.delivered_by_repair,
        naks_sent: outcome.naks_sent,
        grafts_sent: outcome.grafts_sent,
        prunes_sent: outcome.prunes_sent,
        frames_lost: outcome.frames_lost,
        degree_min: degrees.iter().copied().min().unwrap_or(0),
        degree_mean: degrees.iter().sum::<usize>() as f64 / degrees.len().max(1) as f64,
        degree_max: degrees.iter().copied().max().unwrap_or(0),
        nodes_below_meshed_degree: degrees.iter().filter(|degree| **degree < MESHED_DEGREE).count(),
        overlay_connected: live.iter().all(|node| distance_us[*node] != UNREACHABLE),
        nodes_killed: outcome.lifetimes.iter().filter(|(_, killed, _)| killed.is_some()).count(),
        nodes_joined: outcome.nodes_started - options.nodes,
        datagrams: outcome.datagrams,
        events: outcome.events,
        simulated_seconds: outcome.end_us as f64 / 1e6,
        wall_seconds: 0.0,
        peak_rss_bytes: 0,
    }
}

/// The `fraction` quantile (nearest rank) of `values`, reordering them; 0 when empty.
fn percentile(values: &mut [f64], fraction: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let rank = ((values.len() as f64 * fraction).ceil() as usize).clamp(1, values.len()) - 1;
    *values.select_nth_unstable_by(rank, f64::total_cmp).1
}

/// `--propagation plumtree|flood`.
pub fn propagation(name: &str) -> Result<Propagation, BenchError> {
    match name {
        "plumtree" => Ok(Propagation::Plumtree),
        "flood" => Ok(Propagation::Flood),
        other => Err(BenchError::new(format!("{other:?}: use plumtree or flood"))),
    }
}

/// The name `--propagation` takes and the report shows.
pub fn propagation_name(propagation: Propagation) -> &'static str {
    match propagation {
        Propagation::Plumtree => "plumtree",
        Propagation::Flood => "flood",
    }
}

/// VmHWM from /proc/self/status, bytes (0 where there is no /proc).
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

impl SimReport {
    pub fn to_json(&self) -> Value {
        json!({
            "nodes": self.nodes,
            "churn": self.churn,
            "seed": self.seed,
            "propagation": propagation_name(self.propagation),
            "messages": self.messages,
            "loss": self.loss,
            "seconds_to_mesh": self.seconds_to_mesh,
            "delivery_ratio": self.delivery_ratio,
            "expected_deliveries": self.expected_deliveries,
            "latency_stretch_p50": self.latency_stretch_p50,
            "latency_stretch_p99": self.latency_stretch_p99,
            "latency_ms_p50": self.latency_ms_p50,
            "latency_ms_p99": self.latency_ms_p99,
            "duplicates_per_delivery": self.duplicates_per_delivery,
            "repair_duplicates_per_delivery": self.repair_duplicates_per_delivery,
            "delivered_by_repair": self.delivered_by_repair,
            "naks_sent": self.naks_sent,
            "grafts_sent": self.grafts_sent,
            "prunes_sent": self.prunes_sent,
            "frames_lost": self.frames_lost,
            "degree_min": self.degree_min,
            "degree_mean": self.degree_mean,
            "degree_max": self.degree_max,
            "nodes_below_meshed_degree": self.nodes_below_meshed_degree,
            "overlay_connected": self.overlay_connected,
            "nodes_killed": self.nodes_killed,
            "nodes_joined": self.nodes_joined,
            "datagrams": self.datagrams,
            "events": self.events,
            "simulated_seconds": self.simulated_seconds,
            "wall_seconds": self.wall_seconds,
            "peak_rss_bytes": self.peak_rss_bytes,
        })
    }

    /// The deterministic part of the report (everything but wall time and memory).
    pub fn replayable(&self) -> SimReport {
        SimReport { wall_seconds: 0.0, peak_rss_bytes: 0, ..self.clone() }
    }
}

/// The table of several runs (one row per churn level).
pub fn table(reports: &[SimReport]) -> String {
    let Some(first) = reports.first() else { return String::new() };
    let mut out = format!(
        "runnel bench sim: {} nodes, seed {} (replay: --seed {}), {} messages, loss {}, propagation {}\n\n",
        first.nodes,
        first.seed,
        first.seed,
        first.messages,
        first.loss,
        propagation_name(first.propagation)
    );
    out += "churn  mesh_s  delivery  stretch_p50  stretch_p99  p50_ms  p99_ms  dup/deliv  repair_dup/deliv  degree min/mean/max  connected  wall_s  peak_rss_MiB\n";
    for report in reports {
        let mesh = report.seconds_to_mesh.map_or("never".to_string(), |seconds| format!("{seconds:.2}"));
        out += &format!(
            "{:<6.2} {:>6} {:>9.5} {:>12.3} {:>12.3} {:>7.1} {:>7.1} {:>10.3} {:>17.3} {:>9}/{:.2}/{:<6} {:>9} {:>7.1} {:>13.0}\n",
            report.churn,
            mesh,
            report.delivery_ratio,
            report.latency_stretch_p50,
            report.latency_stretch_p99,
            report.latency_ms_p50,
            report.latency_ms_p99,
            report.duplicates_per_delivery,
            report.repair_duplicates_per_delivery,
            report.degree_min,
            report.degree_mean,
            report.degree_max,
            report.overlay_connected,
            report.wall_seconds,
            report.peak_rss_bytes as f64 / f64::from(1 << 20),
        );
    }
    out
}
