//! A seeded, deterministic simulation of relays connected by a lossy packet network.
//!
//! No sockets: each relay is the sans-I/O core a shard runs, and a packet simulator moves
//! their transmits with loss, delay (hence reordering) and duplication chosen by a seeded
//! RNG. Every run prints its seed; `RUNNEL_SEED=<n>` replays it exactly.

use runnel_core::client::{Outgoing, Publisher, SigningMode};
use runnel_core::counters::Counter;
use runnel_core::link::{LinkConfig, LinkRole, VerifyPolicy};
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
const SUBSCRIBER_ADDRESS: &str = "10.77.1.2:5000";
const PUBLISHER_LINK: u32 = 1000;
const SUBSCRIBER_LINK: u32 = 2000;

fn link_key(a: usize, b: usize) -> LinkKey {
    let (low, high) = (a.min(b) as u8, a.max(b) as u8);
    LinkKey([low * 16 + high + 1; 32])
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
    subscriber_inbox: Vec<Vec<u8>>,
}

impl Network {
    fn new(nodes: usize, edges: &[(usize, usize)], seed: u64, loss: f64, duplicate: f64) -> Self {
        let mut relays: Vec<Relay> =
            (0..nodes).map(|_| Relay::new(RelayConfig::new(0, 1, wire::DATAGRAM_LENGTH_DEFAULT, VerifyPolicy::All))).collect();
        for &(a, b) in edges {
            for (me, peer) in [(a, b), (b, a)] {
                relays[me].add_link(&LinkConfig {
                    // Each end numbers the link its own way (as peering does); the key is shared.
                    id: 100 + (me * 10 + peer) as u32,
                    peer_link_id: Some(100 + (peer * 10 + me) as u32),
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
        relays[nodes - 1].add_link(&LinkConfig {
            id: SUBSCRIBER_LINK,
            peer_link_id: None,
            key: LinkKey([0xbb; 32]),
            role: LinkRole::Client,
            peer: None,
            peer_shards: 1,
            rate_datagrams_per_s: 0,
            burst_datagrams: 1,
        });
        let addresses = (0..nodes).map(|i| (node_address(i), i)).collect();
        Self {
            relays,
            addresses,
            in_flight: BTreeMap::new(),
            rng: Rng::new(seed),
            loss,
            duplicate,
            counter: 0,
            now_us: 0,
            down: vec![false; nodes],
            subscriber_inbox: Vec::new(),
        }
    }

    fn send(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        if to == SUBSCRIBER_ADDRESS.parse::<SocketAddr>().unwrap() {
            // The subscriber runs beside its node: that hop neither loses nor reorders.
            self.subscriber_inbox.push(bytes);
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

struct Scenario {
    nodes: usize,
    edges: Vec<(usize, usize)>,
    loss: f64,
    duplicate: f64,
    messages: u64,
    batch: bool,
    kill: Option<(usize, u64)>,
    /// Every n-th message carries 5000 bytes, so it spans several frames.
    large_every: Option<u64>,
}

/// Runs a publisher at node 0 and a subscriber at the last node; returns the sequences the
/// subscriber got in arrival order, plus the network for counter checks.
fn run(scenario: &Scenario, seed: u64) -> (Vec<u64>, Network) {
    let mut network = Network::new(scenario.nodes, &scenario.edges, seed, scenario.loss, scenario.duplicate);
    let part = StreamPart::parse("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/sim#0").unwrap().key();
    let publisher_key_pair = PublisherKey::from_hex("0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80").unwrap();
    let mode = if scenario.batch { SigningMode::Batch { frames_per_root_max: 64 } } else { SigningMode::PerMessage };
    let mut publisher = Publisher::with_chain_id(publisher_key_pair, part, mode, 9);
    let subscriber_key = LinkKey([0xbb; 32]);
    let publisher_key = LinkKey([0xaa; 32]);
    let last = scenario.nodes - 1;
    let subscriber_from: SocketAddr = SUBSCRIBER_ADDRESS.parse().unwrap();
    let publisher_from: SocketAddr = PUBLISHER_ADDRESS.parse().unwrap();
    let mut subscriber_seq = 0;
    let mut publisher_seq = 0;
    // Subscribe, and let the overlay form (neighbors exchange Subscribe every second).
    let subscribe = client_datagram(Kind::Subscribe, SUBSCRIBER_LINK, &subscriber_key, subscriber_seq, part.0, b"");
    subscriber_seq += 1;
    network.relays[last].handle_receive(0, subscriber_from, &subscribe);
    // The publisher's node joins on its first publish; join explicitly so the overlay forms.
    network.relays[0].join(0, part);
    network.step_until(2_500_000);

    let mut sequence = 0u64;
    let per_step = 20u64;
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
        if let Some((node, at_sequence)) = scenario.kill {
            if sequence >= at_sequence && !network.down[node] {
                network.down[node] = true;
            }
        }
        if sequence.is_multiple_of(1000) {
            // Keep the subscription fresh, as the client library does every second.
            let subscribe = client_datagram(Kind::Subscribe, SUBSCRIBER_LINK, &subscriber_key, subscriber_seq, part.0, b"");
            subscriber_seq += 1;
            network.relays[last].handle_receive(network.now_us, subscriber_from, &subscribe);
        }
    }
    let until = network.now_us + 2_000_000;
    network.step_until(until);

    // Message sequences as the subscriber's frames carry them, a message spanning frames
    // counted at its last piece.
    let mut received = Vec::new();
    for datagram in &network.subscriber_inbox {
        for datagram in wire::split_datagrams(datagram) {
            let datagram = datagram.expect("relays send valid datagrams");
            assert!(datagram.tag_matches(&subscriber_key));
            if datagram.kind == Kind::Data {
                for frame in datagram.frames() {
                    let frame = frame.expect("valid frame");
                    received.extend(frame.messages().filter(|m| !m.continues).map(|m| m.sequence));
                }
            }
        }
    }
    (received, network)
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

// Goal: over a lossless line of 3 relays, every message reaches the subscriber exactly once
// and in order, in both signature modes, and the batch mode verifies almost nothing with ECDSA.
#[test]
fn line_lossless_delivers_each_once_in_order() {
    let seed = seed();
    for batch in [false, true] {
        let scenario =
            Scenario { nodes: 3, edges: line(3), loss: 0.0, duplicate: 0.0, messages: 2000, batch, kill: None, large_every: None };
        let (received, network) = run(&scenario, seed);
        assert_exactly_once_in_order(&received, 2000, &format!("batch={batch} seed {seed}"));
        let ecdsa: u64 = network.relays.iter().map(|r| r.counters().get(Counter::SignaturesEcdsa)).sum();
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
    let scenario =
        Scenario { nodes: 4, edges: line(4), loss: 0.05, duplicate: 0.02, messages: 3000, batch: true, kill: None, large_every: Some(37) };
    let (received, network) = run(&scenario, seed);
    assert_exactly_once_in_order(&received, 3000, &format!("seed {seed}"));
    let naks: u64 = network.relays.iter().map(|r| r.counters().get(Counter::NaksSent)).sum();
    let repaired: u64 = network.relays.iter().map(|r| r.counters().get(Counter::FramesRepaired)).sum();
    assert!(naks > 0 && repaired > 0, "loss must have caused repairs (naks {naks}, repaired {repaired}), seed {seed}");
}

// Goal: in a triangle, killing the middle relay mid-stream loses nothing: the direct route
// keeps delivering and gaps opened by the kill are repaired; order holds.
#[test]
fn triangle_survives_relay_loss() {
    let seed = seed();
    let scenario = Scenario {
        nodes: 3,
        edges: vec![(0, 1), (1, 2), (0, 2)],
        loss: 0.01,
        duplicate: 0.0,
        messages: 3000,
        batch: false,
        kill: Some((1, 1500)),
        large_every: None,
    };
    let (received, network) = run(&scenario, seed);
    assert_exactly_once_in_order(&received, 3000, &format!("seed {seed}"));
    let duplicates = network.relays[2].counters().get(Counter::FramesDuplicate);
    assert!(duplicates > 0, "two routes should have delivered duplicates to the last relay, seed {seed}");
}
