//! A seeded, deterministic simulation of relays connected by a lossy packet network.
//!
//! No sockets: each relay is the sans-I/O core a shard runs, and a packet simulator moves
//! their transmits with loss, delay (hence reordering) and duplication chosen by a seeded
//! RNG. Every run prints its seed; `RUNNEL_SEED=<n>` replays it exactly.

use runnel_core::client::{Outgoing, Publisher, SigningMode};
use runnel_core::counters::Counter;
use runnel_core::link::{LinkConfig, LinkRole, Propagation, VerifyPolicy};
use runnel_core::relay::{Relay, RelayConfig};
use runnel_proto::crypto::PublisherKey;
use runnel_proto::linktag::LinkKey;
use runnel_proto::stream::StreamPart;
use runnel_proto::testing::Rng;
use runnel_proto::wire::{self, DatagramBuilder, HeaderFields, Kind};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

fn seed() -> u64 {
    let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    runnel_proto::testing::seed(clock)
}

fn node_address(index: usize) -> SocketAddr {
    // In-memory addresses only: nothing is ever sent on a real network here.
    SocketAddr::from(([10, 77, 0, index as u8 + 1], 7000))
}

const PUBLISHER_ADDRESS: &str = "10.77.1.1:5000";
const PUBLISHER_LINK: u32 = 1000;
/// Node i's subscriber has link id `SUBSCRIBER_LINK + i` there.
const SUBSCRIBER_LINK: u32 = 2000;

/// The subscriber beside node `index`.
fn subscriber_address(index: usize) -> SocketAddr {
    SocketAddr::from(([10, 77, 2, index as u8 + 1], 5000))
}

/// The id node `me` knows its link to `peer` by (each end numbers a link its own way, as
/// peering does).
fn neighbor_link_id(me: usize, peer: usize) -> u32 {
    10_000 + (me * 100 + peer) as u32
}

fn link_key(a: usize, b: usize) -> LinkKey {
    let mut key = [0x33; 32];
    key[0] = a.min(b) as u8;
    key[1] = a.max(b) as u8;
    LinkKey(key)
}

struct Network {
    relays: Vec<Relay>,
    addresses: HashMap<SocketAddr, usize>,
    /// (deliver at µs, tie-breaker) → (from, to, bytes)
    in_flight: BTreeMap<(u64, u64), (SocketAddr, SocketAddr, Vec<u8>)>,
    rng: Rng,
    loss: f64,
    duplicate: f64,
    counter: u64,
    now_us: u64,
    /// Relays switched off (node loss).
    down: Vec<bool>,
    /// What each subscriber received, by its address.
    subscriber_inboxes: HashMap<SocketAddr, Vec<Vec<u8>>>,
}

impl Network {
    fn new(scenario: &Scenario, seed: u64) -> Self {
        let nodes = scenario.nodes;
        let mut config = RelayConfig::new(0, 1, wire::DATAGRAM_LENGTH_DEFAULT, VerifyPolicy::All);
        config.propagation = scenario.propagation;
        let mut relays: Vec<Relay> = (0..nodes).map(|_| Relay::new(config.clone())).collect();
        for &(a, b) in &scenario.edges {
            for (me, peer) in [(a, b), (b, a)] {
                relays[me].add_link(&LinkConfig {
                    // The key is shared by both ends.
                    id: neighbor_link_id(me, peer),
                    peer_link_id: Some(neighbor_link_id(peer, me)),
                    key: link_key(a, b),
                    role: LinkRole::Neighbor,
                    peer: Some(node_address(peer)),
                    peer_shards: 1,
                    rate_datagrams_per_s: 0,
                    burst_datagrams: 1,
                });
            }
        }
        relays[0].add_link(&LinkConfig {
            id: PUBLISHER_LINK,
            peer_link_id: None,
            key: LinkKey([0xaa; 32]),
            role: LinkRole::Client,
            peer: None,
            peer_shards: 1,
            rate_datagrams_per_s: 0,
            burst_datagrams: 1,
        });
        for &node in &scenario.subscribers {
            relays[node].add_link(&LinkConfig {
                id: SUBSCRIBER_LINK + node as u32,
                peer_link_id: None,
                key: LinkKey([0xbb; 32]),
                role: LinkRole::Client,
                peer: None,
                peer_shards: 1,
                rate_datagrams_per_s: 0,
                burst_datagrams: 1,
            });
        }
        let addresses = (0..nodes).map(|i| (node_address(i), i)).collect();
        Self {
            relays,
            addresses,
            in_flight: BTreeMap::new(),
            rng: Rng::new(seed),
            loss: scenario.loss,
            duplicate: scenario.duplicate,
            counter: 0,
            now_us: 0,
            down: vec![false; nodes],
            subscriber_inboxes: scenario.subscribers.iter().map(|&node| (subscriber_address(node), Vec::new())).collect(),
        }
    }

    /// Sums one counter over every relay.
    fn total(&self, counter: Counter) -> u64 {
        self.relays.iter().map(|relay| relay.counters().get(counter)).sum()
    }

    /// Switches a relay off and has its neighbors remove their links to it (what the control
    /// process does when a neighbor goes silent).
    fn kill(&mut self, node: usize, edges: &[(usize, usize)]) {
        self.down[node] = true;
        for &(a, b) in edges {
            if a == node {
                self.relays[b].remove_link(neighbor_link_id(b, a));
            } else if b == node {
                self.relays[a].remove_link(neighbor_link_id(a, b));
            }
        }
    }

    fn send(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        if let Some(inbox) = self.subscriber_inboxes.get_mut(&to) {
            // A subscriber runs beside its node: that hop neither loses nor reorders.
            inbox.push(bytes);
            return;
        }
        if self.rng.chance(self.loss) {
            return;
        }
        let copies = if self.rng.chance(self.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let delay_us = 100 + self.rng.below(2000);
            self.counter += 1;
            self.in_flight.insert((self.now_us + delay_us, self.counter), (from, to, bytes.clone()));
        }
    }

    /// Drains every relay's transmits into the simulator, splitting GSO sends into datagrams
    /// (each loses/arrives on its own, as on a real wire).
    fn drain(&mut self) {
        let mut buffer = Vec::new();
        for index in 0..self.relays.len() {
            self.relays[index].flush();
            while let Some(transmit) = self.relays[index].poll_transmit(&mut buffer) {
                if self.down[index] {
                    continue;
                }
                for segment in buffer[..transmit.length].chunks(transmit.segment_size) {
                    self.send(node_address(index), transmit.destination, segment.to_vec());
                }
            }
        }
    }

    fn step_until(&mut self, until_us: u64) {
        loop {
            self.drain();
            let next_packet = self.in_flight.keys().next().map(|k| k.0);
            let next_timer = (0..self.relays.len()).filter(|i| !self.down[*i]).filter_map(|i| self.relays[i].poll_timeout()).min();
            let next = [next_packet, next_timer].into_iter().flatten().min().unwrap_or(until_us).min(until_us);
            self.now_us = self.now_us.max(next);
            while let Some((&key, _)) = self.in_flight.iter().next() {
                if key.0 > self.now_us {
                    break;
                }
                let (from, to, bytes) = self.in_flight.remove(&key).unwrap();
                if let Some(&index) = self.addresses.get(&to) {
                    if !self.down[index] {
                        self.relays[index].handle_receive(self.now_us, from, &bytes);
                    }
                }
            }
            for index in 0..self.relays.len() {
                if !self.down[index] && self.relays[index].poll_timeout().is_some_and(|t| t <= self.now_us) {
                    self.relays[index].handle_timeout(self.now_us);
                }
            }
            if self.now_us >= until_us {
                self.drain();
                return;
            }
        }
    }
}

/// Builds a client datagram (what the client library sends) on a client link.
fn client_datagram(kind: Kind, link_id: u32, key: &LinkKey, seq: u64, part: [u8; 32], frames: &[u8]) -> Vec<u8> {
    let mut builder = DatagramBuilder::new(wire::DATAGRAM_LENGTH_MAX);
    for frame in runnel_proto::frame::split_frames(frames) {
        assert!(builder.try_push(frame.expect("the publisher writes valid frames").bytes));
    }
    let fields = HeaderFields::new(kind, link_id, seq, part);
    builder.finish(fields, key).to_vec()
}

/// Which relay a scenario switches off mid-stream.
#[derive(Clone, Copy)]
enum Victim {
    /// Switched off, its links left in place at its neighbors (interest expires on its own).
    Node(usize),
    /// The relay (other than the publisher's) that forwarded the most frames in full over
    /// the last 500 messages — under Plumtree an inner node of the tree — switched off and its
    /// links removed at its neighbors.
    BusiestForwarder,
}

struct Scenario {
    nodes: usize,
    edges: Vec<(usize, usize)>,
    loss: f64,
    duplicate: f64,
    messages: u64,
    batch: bool,
    kill: Option<(Victim, u64)>,
    /// Every n-th message carries 5000 bytes, so it spans several frames.
    large_every: Option<u64>,
    propagation: Propagation,
    /// Nodes with a subscriber beside them.
    subscribers: Vec<usize>,
}

impl Scenario {
    /// A publisher at node 0 and a subscriber at the last node of `edges`, under Plumtree.
    fn new(nodes: usize, edges: Vec<(usize, usize)>, loss: f64, duplicate: f64, messages: u64, batch: bool) -> Self {
        Self {
            nodes,
            edges,
            loss,
            duplicate,
            messages,
            batch,
            kill: None,
            large_every: None,
            propagation: Propagation::Plumtree,
            subscribers: vec![nodes - 1],
        }
    }
}

/// What a run left: per subscribing node the message sequences its subscriber got, in
/// arrival order; the network for counter checks; the relay killed, if any, and the total
/// grafts sent before the kill.
struct Outcome {
    received: BTreeMap<usize, Vec<u64>>,
    network: Network,
    killed: Option<usize>,
    grafts_before_kill: u64,
}

/// Runs a publisher at node 0 and the scenario's subscribers.
fn run(scenario: &Scenario, seed: u64) -> Outcome {
    let mut network = Network::new(scenario, seed);
    let part = StreamPart::parse("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/sim#0").unwrap().key();
    let publisher_key_pair = PublisherKey::from_hex("0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80").unwrap();
    let mode = if scenario.batch { SigningMode::Batch { frames_per_root_max: 64 } } else { SigningMode::PerMessage };
    let mut publisher = Publisher::with_chain_id(publisher_key_pair, part, mode, 9);
    let subscriber_key = LinkKey([0xbb; 32]);
    let publisher_key = LinkKey([0xaa; 32]);
    let publisher_from: SocketAddr = PUBLISHER_ADDRESS.parse().unwrap();
    let mut subscriber_seq = 0;
    let mut publisher_seq = 0;
    // Subscribe, and let the overlay form (neighbors exchange Subscribe every second).
    let subscribe_all = |network: &mut Network, subscriber_seq: u64| {
        for &node in &scenario.subscribers {
            let link_id = SUBSCRIBER_LINK + node as u32;
            let subscribe = client_datagram(Kind::Subscribe, link_id, &subscriber_key, subscriber_seq, part.0, b"");
            network.relays[node].handle_receive(network.now_us, subscriber_address(node), &subscribe);
        }
    };
    subscribe_all(&mut network, subscriber_seq);
    subscriber_seq += 1;
    // The publisher's node joins on its first publish; join explicitly so the overlay forms.
    network.relays[0].join(0, part);
    network.step_until(2_500_000);

    let mut sequence = 0u64;
    let per_step = 20u64;
    let (mut killed, mut grafts_before_kill) = (None, 0);
    let mut forwarded_mark = vec![0u64; scenario.nodes];
    while sequence < scenario.messages {
        let step = per_step.min(scenario.messages - sequence);
        for s in sequence..sequence + step {
            let payload = match scenario.large_every {
                Some(n) if s % n == n - 1 => {
                    let mut large = vec![0xab; 5000];
                    large[..8].copy_from_slice(&s.to_le_bytes());
                    large
                }
                _ => s.to_le_bytes().to_vec(),
            };
            publisher.publish(&Outgoing::binary(1_000 + s, &payload)).unwrap();
        }
        publisher.flush();
        // The publisher's link to its node is lossless (same host); the mesh is not.
        let datagram = client_datagram(Kind::Data, PUBLISHER_LINK, &publisher_key, publisher_seq, part.0, publisher.frames());
        publisher.clear_frames();
        publisher_seq += 1;
        network.relays[0].handle_receive(network.now_us, publisher_from, &datagram);
        sequence += step;
        let until = network.now_us + 1_000;
        network.step_until(until);
        if let Some((victim, at_sequence)) = scenario.kill {
            if sequence + 500 == at_sequence {
                forwarded_mark = network.relays.iter().map(|r| r.counters().get(Counter::FramesForwarded)).collect();
            }
            if sequence >= at_sequence && killed.is_none() {
                let node = match victim {
                    Victim::Node(node) => node,
                    Victim::BusiestForwarder => {
                        let busiest = (1..scenario.nodes)
                            .max_by_key(|&i| network.relays[i].counters().get(Counter::FramesForwarded) - forwarded_mark[i]);
                        let node = busiest.expect("more than one node");
                        network.kill(node, &scenario.edges);
                        node
                    }
                };
                network.down[node] = true;
                killed = Some(node);
                grafts_before_kill = network.total(Counter::GraftsSent);
            }
        }
        if sequence.is_multiple_of(1000) {
            // Keep the subscriptions fresh, as the client library does every second.
            subscribe_all(&mut network, subscriber_seq);
            subscriber_seq += 1;
        }
    }
    let until = network.now_us + 2_000_000;
    network.step_until(until);

    // Message sequences as the subscribers' frames carry them, a message spanning frames
    // counted at its last piece.
    let mut received = BTreeMap::new();
    for &node in &scenario.subscribers {
        let mut sequences = Vec::new();
        for datagram in &network.subscriber_inboxes[&subscriber_address(node)] {
            for datagram in wire::split_datagrams(datagram) {
                let datagram = datagram.expect("relays send valid datagrams");
                assert!(datagram.tag_matches(&subscriber_key));
                if datagram.kind == Kind::Data {
                    for frame in datagram.frames() {
                        let frame = frame.expect("valid frame");
                        sequences.extend(frame.messages().filter(|m| !m.continues).map(|m| m.sequence));
                    }
                }
            }
        }
        received.insert(node, sequences);
    }
    Outcome { received, network, killed, grafts_before_kill }
}

/// Checks `received` is exactly 0..count in order; reports the first difference briefly.
fn assert_exactly_once_in_order(received: &[u64], count: u64, context: &str) {
    let first_wrong = received.iter().enumerate().find(|(i, s)| **s != *i as u64).map(|(i, _)| i);
    if let Some(index) = first_wrong {
        let from = index.saturating_sub(3);
        panic!(
            "{context}: received {} messages, first out of place at index {index}: ...{:?}...",
            received.len(),
            &received[from..(index + 4).min(received.len())]
        );
    }
    assert_eq!(received.len() as u64, count, "{context}: received {} of {count} messages", received.len());
}

fn line(nodes: usize) -> Vec<(usize, usize)> {
    (0..nodes - 1).map(|i| (i, i + 1)).collect()
}

/// A connected 4-regular graph on `nodes` nodes, seeded: a circulant graph (each node linked
/// to the next and the fourth next) rewired by random degree-preserving edge swaps.
fn random_regular_4(nodes: usize, seed: u64) -> Vec<(usize, usize)> {
    let mut rng = Rng::new(seed ^ 0x9e37_79b9);
    let normal = |a: usize, b: usize| (a.min(b), a.max(b));
    let mut edges: Vec<(usize, usize)> = (0..nodes).flat_map(|i| [normal(i, (i + 1) % nodes), normal(i, (i + 4) % nodes)]).collect();
    let connected = |edges: &[(usize, usize)]| {
        let mut seen = vec![false; nodes];
        let mut stack = vec![0];
        seen[0] = true;
        while let Some(node) = stack.pop() {
            for &(a, b) in edges {
                let other = if a == node {
                    b
                } else if b == node {
                    a
                } else {
                    continue;
                };
                if !seen[other] {
                    seen[other] = true;
                    stack.push(other);
                }
            }
        }
        seen.iter().all(|s| *s)
    };
    for _ in 0..nodes * 8 {
        let (i, j) = (rng.below(edges.len() as u64) as usize, rng.below(edges.len() as u64) as usize);
        let ((a, b), (c, d)) = (edges[i], edges[j]);
        let (first, second) = (normal(a, d), normal(c, b));
        if a == d || c == b || edges.contains(&first) || edges.contains(&second) {
            continue;
        }
        let mut swapped = edges.clone();
        swapped[i] = first;
        swapped[j] = second;
        if connected(&swapped) {
            edges = swapped;
        }
    }
    edges
}

/// Duplicate frames received per frame accepted, over every relay.
fn duplicates_per_delivery(network: &Network) -> f64 {
    network.total(Counter::FramesDuplicate) as f64 / network.total(Counter::FramesAccepted) as f64
}

// Goal: over a lossless line of 3 relays, every message reaches the subscriber exactly once
// and in order, in both signature modes, and the batch mode verifies almost nothing with ECDSA.
#[test]
fn line_lossless_delivers_each_once_in_order() {
    let seed = seed();
    for batch in [false, true] {
        let scenario = Scenario::new(3, line(3), 0.0, 0.0, 2000, batch);
        let outcome = run(&scenario, seed);
        assert_exactly_once_in_order(&outcome.received[&2], 2000, &format!("batch={batch} seed {seed}"));
        let ecdsa = outcome.network.total(Counter::SignaturesEcdsa);
        if batch {
            // One ECDSA per flush (20 messages, one root) per relay, plus rare re-verifications:
            // the root cache is direct-mapped under a random key, so a new batch's root can
            // evict the previous one while reordered frames of that batch are still arriving.
            // More than 10% extra would mean the cache is not working.
            let batches = 3 * 2000 / 20;
            assert!((batches..=batches + batches / 10).contains(&ecdsa), "{ecdsa} ECDSA verifications for {batches} batches, seed {seed}");
        } else {
            assert_eq!(ecdsa, 3 * 2000, "seed {seed}");
        }
    }
}

// Goal: with 5% loss, reordering and duplication on every mesh hop, NAK repair fills the
// gaps — including in messages that span several frames — and the subscriber still gets every
// message exactly once and in order.
#[test]
fn lossy_line_is_repaired_in_order() {
    let seed = seed();
    let scenario = Scenario { large_every: Some(37), ..Scenario::new(4, line(4), 0.05, 0.02, 3000, true) };
    let outcome = run(&scenario, seed);
    assert_exactly_once_in_order(&outcome.received[&3], 3000, &format!("seed {seed}"));
    let naks = outcome.network.total(Counter::NaksSent);
    let repaired = outcome.network.total(Counter::FramesRepaired);
    assert!(naks > 0 && repaired > 0, "loss must have caused repairs (naks {naks}, repaired {repaired}), seed {seed}");
}

// Goal: in a triangle, killing the middle relay mid-stream loses nothing, flooding or not:
// the direct route keeps delivering (or is grafted) and gaps opened by the kill are
// repaired; order holds.
#[test]
fn triangle_survives_relay_loss() {
    let seed = seed();
    for propagation in [Propagation::Flood, Propagation::Plumtree] {
        let scenario = Scenario {
            kill: Some((Victim::Node(1), 1500)),
            propagation,
            ..Scenario::new(3, vec![(0, 1), (1, 2), (0, 2)], 0.01, 0.0, 3000, false)
        };
        let outcome = run(&scenario, seed);
        assert_exactly_once_in_order(&outcome.received[&2], 3000, &format!("{propagation:?} seed {seed}"));
        let duplicates = outcome.network.relays[2].counters().get(Counter::FramesDuplicate);
        assert!(duplicates > 0, "{propagation:?}: two routes delivered the first frames twice to the last relay, seed {seed}");
    }
}

/// The steady-state and kill scenarios: 16 relays, degree 4, 1% loss, a subscriber at every node.
fn mesh(propagation: Propagation, seed: u64) -> Scenario {
    let nodes = 16;
    Scenario {
        propagation,
        subscribers: (0..nodes).collect(),
        ..Scenario::new(nodes, random_regular_4(nodes, seed), 0.01, 0.0, 4000, true)
    }
}

// Goal: Plumtree keeps flooding's delivery — every node's subscriber gets every message, in
// order, over a lossy, reordering degree-4 mesh — while a frame reaches a relay about once:
// duplicates per delivered frame far below flooding's (which is about degree − 2 = 2, so
// the bound can fail), with IHaves and prunes doing the work.
#[test]
fn plumtree_steady_state_has_few_duplicates() {
    let seed = seed();
    let mut duplicates = Vec::new();
    for propagation in [Propagation::Flood, Propagation::Plumtree] {
        let scenario = mesh(propagation, seed);
        let outcome = run(&scenario, seed);
        for (node, received) in &outcome.received {
            assert_exactly_once_in_order(received, scenario.messages, &format!("{propagation:?} node {node} seed {seed}"));
        }
        let network = &outcome.network;
        let ratio = duplicates_per_delivery(network);
        println!(
            "{propagation:?}: {ratio:.3} duplicates per delivered frame ({} duplicates, {} accepted, {} forwarded in full, \
             {} announced in {} IHaves, {} prunes, {} grafts, {} NAKs), seed {seed}",
            network.total(Counter::FramesDuplicate),
            network.total(Counter::FramesAccepted),
            network.total(Counter::FramesForwarded),
            network.total(Counter::FramesAnnounced),
            network.total(Counter::IhavesSent),
            network.total(Counter::PrunesSent),
            network.total(Counter::GraftsSent),
            network.total(Counter::NaksSent),
        );
        duplicates.push(ratio);
        if propagation == Propagation::Flood {
            assert_eq!(network.total(Counter::IhavesSent) + network.total(Counter::PrunesSent), 0, "flooding sends no tree control");
        } else {
            assert!(network.total(Counter::PrunesSent) > 0 && network.total(Counter::IhavesSent) > 0, "seed {seed}");
        }
    }
    let (flood, plumtree) = (duplicates[0], duplicates[1]);
    assert!(flood >= 2.0, "flooding at degree 4 delivers about 2 duplicates per frame, got {flood:.3}, seed {seed}");
    assert!(plumtree <= 0.5, "Plumtree: {plumtree:.3} duplicates per delivered frame (flooding {flood:.3}), seed {seed}");
}

// Goal: killing an inner node of the tree mid-stream (its links removed at its neighbors)
// loses nothing: the nodes below it hear IHaves from their lazy neighbors, graft, and every
// other node's subscriber still gets every message in order.
#[test]
fn plumtree_regrafts_around_a_killed_node() {
    let seed = seed();
    let scenario = Scenario { kill: Some((Victim::BusiestForwarder, 2000)), ..mesh(Propagation::Plumtree, seed) };
    let outcome = run(&scenario, seed);
    let killed = outcome.killed.expect("a node was killed");
    for (node, received) in outcome.received.iter().filter(|(node, _)| **node != killed) {
        assert_exactly_once_in_order(received, scenario.messages, &format!("node {node} (killed {killed}) seed {seed}"));
    }
    let grafts = outcome.network.total(Counter::GraftsSent);
    println!(
        "killed node {killed}: grafts {} before, {grafts} in all; {:.3} duplicates per delivered frame, seed {seed}",
        outcome.grafts_before_kill,
        duplicates_per_delivery(&outcome.network)
    );
    assert!(grafts > outcome.grafts_before_kill, "the kill must have caused grafts, seed {seed}");
}
