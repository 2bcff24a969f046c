//! The simulated world: every node (its [`Overlay`] and its [`Relay`]), the messages between
//! them, the publisher, churn, and what is recorded for the report. One event at a time, in
//! [`EventQueue`] order; every random choice comes from one seeded [`Rng`], drawn in an order
//! that depends only on the seed (see "Determinism" in the module doc of `sim`).

use super::network::{shortest_paths, Geography};
use super::queue::EventQueue;
use super::SimOptions;
use libp2p::PeerId;
use runnel_core::client::{Outgoing, Publisher, SigningMode};
use runnel_core::counters::Counter;
use runnel_core::link::{LinkConfig, LinkRole, VerifyPolicy};
use runnel_core::relay::{Event as RelayEvent, Relay, RelayConfig};
use runnel_peering::overlay::{Overlay, OverlayConfig};
use runnel_peering::wire::{Endpoint, Leave, Request, Response};
use runnel_peering::{Identity, NeighborUp, PeeringConfig, PeeringEvent};
use runnel_proto::crypto::PublisherKey;
use runnel_proto::linktag::LinkKey;
use runnel_proto::stream::{StreamPart, StreamPartKey};
use runnel_proto::testing::Rng;
use runnel_proto::wire::{self, DatagramBuilder, HeaderFields, Kind, FLAG_REPAIR};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The driver's tick (`control/peering/src/driver.rs`, `TICK`): how often a node below its
/// target looks for candidates and proposes.
const TICK_US: u64 = 200_000;
/// Sequential round trips of one Kademlia provider lookup or announcement: libp2p's
/// iterative query with α = 3 converges in about log2(N)/3 steps, 4–5 at 10^4 nodes.
const KADEMLIA_ROUND_TRIPS: u64 = 4;
/// Providers one lookup returns (Kademlia's k).
const PROVIDERS_PER_LOOKUP: usize = 20;
/// A Propose to a peer not yet connected waits for the dial: TCP (one round trip) and the
/// Noise XX handshake (about one more) before the request's own one-way trip.
const DIAL_ROUND_TRIPS: u64 = 2;
/// Jitter added to each datagram's latency, as a fraction of the link's latency (reorders).
const JITTER_FRACTION: f64 = 0.1;
/// Neighbors a node needs to count as meshed (the report's "≥ 3 neighbors").
pub const MESHED_DEGREE: usize = 3;
/// Repair ring per relay: 16 KiB holds ~75 frames of this workload (~220 B each), 1.5 s at
/// 50 msgs/s, which is more than any NAK round trip here; the 8 MiB default would put up to
/// 80 GiB into 10^4 relays.
const REPAIR_RING_BYTES: usize = 16 << 10;
/// The publisher's client link at the first node.
const PUBLISHER_LINK: u32 = 1;
const PUBLISHER_LINK_KEY: LinkKey = LinkKey([0xaa; 32]);
/// Datagram payload bytes of every message; the first 8 are its sequence.
pub const PAYLOAD_LENGTH: usize = 64;
/// The publisher's address (a client on the first node's host): nothing is ever sent there
/// but the relay's credit grants, which the simulator drops.
const PUBLISHER_ADDRESS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 5000);
/// Dataplane port of every node (each has its own synthetic address).
const DATAPLANE_PORT: u16 = 7000;
/// The node the publisher is a client of; churn never kills it.
pub const PUBLISHER_NODE: usize = 0;
/// "Not delivered" in a node's latency record.
pub const NOT_DELIVERED: u32 = u32::MAX;

/// The relay configuration of every node: the relay's defaults but for what is said here,
/// with the propagation `--propagation` chose.
fn relay_config(options: &SimOptions) -> RelayConfig {
    // Signatures do not change which route a frame takes or when (the simulator gives
    // nodes infinite CPU): verifying 10^4 × messages ECDSA signatures would cost minutes
    // and measure nothing here. The frames themselves are real, signed, encoded frames.
    let mut config = RelayConfig::new(0, 1, wire::DATAGRAM_LENGTH_DEFAULT, VerifyPolicy::None);
    // Nothing is verified, so the verifier's batch-root cache (1.9 MiB a relay by default,
    // allocated up front) would only take room: 10^4 relays would hold 19 GiB of it.
    config.batch_roots_max = 1;
    config.repair_ring_bytes_max = REPAIR_RING_BYTES;
    config.propagation = options.propagation;
    config
}

/// The overlay configuration: the peering defaults (`PeeringConfig::new`), one stream part.
fn overlay_config(defaults: &PeeringConfig) -> OverlayConfig {
    OverlayConfig {
        degree_target: defaults.degree_target,
        degree_max: defaults.degree_max,
        stream_parts_max: 1,
        candidates_per_part_max: defaults.candidates_per_part_max,
        retry_after_refusal: defaults.retry_after_refusal,
        retry_after_failure: defaults.retry_after_failure,
        crossing_window: defaults.request_timeout,
        disconnected_grace: defaults.disconnected_grace,
        link_ids: defaults.link_ids.clone(),
    }
}

/// Node `index`'s synthetic dataplane address (10.0.0.0/8; nothing touches a socket).
fn node_address(index: usize) -> SocketAddr {
    let [_, a, b, c] = (index as u32 + 1).to_be_bytes();
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, a, b, c)), DATAPLANE_PORT)
}

/// The node index of a synthetic address, or `None` (the publisher's).
fn node_index(address: &SocketAddr) -> Option<usize> {
    match address.ip() {
        IpAddr::V4(ip) if ip.octets()[0] == 10 => {
            let [_, a, b, c] = ip.octets();
            Some(u32::from_be_bytes([0, a, b, c]) as usize - 1)
        }
        _ => None,
    }
}

/// Something that happens at one instant.
enum Event {
    /// A node starts: joins the part, announces itself, looks up providers.
    Start(usize),
    /// The driver's periodic tick of a node.
    Tick(usize),
    /// A node's provider record is stored in the DHT.
    Announced(usize),
    /// A node's provider lookup returns.
    LookupDone(usize),
    /// A handshake request (Propose, Leave) arrives. (Boxed, as the answer below: handshake
    /// messages are rare and large, datagrams many and small, and every event in the heap
    /// is as large as the largest kind.)
    Request { from: usize, to: usize, request: Box<Request> },
    /// The answer to a Propose arrives at its initiator.
    Reply { from: usize, to: usize, local_link_id: u32, response: Box<Response> },
    /// A Propose could not be delivered (the peer's process is gone): the initiator's
    /// request fails, as libp2p's `OutboundFailure`.
    ProposalFailed { node: usize, peer: usize, local_link_id: u32 },
    /// An Accept could not be delivered: the responder drops the neighbor it made.
    AcceptLost { node: usize, peer: usize, local_link_id: u32 },
    /// The connection to a killed peer closed.
    Disconnected { node: usize, peer: usize },
    /// A dataplane datagram arrives.
    Datagram { from: usize, to: usize, bytes: Vec<u8> },
    /// A relay's `poll_timeout` deadline.
    RelayTimer(usize),
    /// The publisher sends its next message.
    Publish,
    /// A node's process is killed.
    Kill(usize),
}

struct Node {
    peer: PeerId,
    overlay: Overlay,
    relay: Relay,
    /// The relay's neighbor links: (peer node, local link id), in the order they came up.
    links: Vec<(usize, u32)>,
    alive: bool,
    started_us: u64,
    killed_us: Option<u64>,
    /// When the node first had [`MESHED_DEGREE`] neighbors.
    meshed_us: Option<u64>,
    /// Whether it counts in `World::meshed_now`.
    counted_meshed: bool,
    lookup_running: bool,
    last_lookup_us: Option<u64>,
    /// The relay deadline a `RelayTimer` event is queued for.
    timer_at_us: Option<u64>,
    /// Per message (frame sequence): first acceptance minus publish time, µs, or
    /// [`NOT_DELIVERED`]; allocated at the first delivery.
    latencies_us: Vec<u32>,
}

/// Frame counts summed over all relays, from their counters around each received datagram.
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameTotals {
    /// Frames accepted (first copies) from neighbors: deliveries.
    pub delivered: u64,
    /// Of those, first copies that came in a repair datagram (a NAK answer or tail probe).
    pub delivered_by_repair: u64,
    /// Duplicate copies in ordinary (propagation) datagrams.
    pub duplicates: u64,
    /// Duplicate copies in repair datagrams.
    pub repair_duplicates: u64,
}

/// Everything a run leaves for the report.
pub struct Outcome {
    pub nodes_started: usize,
    pub mesh_us: Option<u64>,
    pub publish_us: Vec<u64>,
    /// Per message: the shortest-path latency from the publisher's node to every node over
    /// the overlay as it was when the message was published (shared while it did not change).
    pub distances_us: Vec<Rc<Vec<u64>>>,
    pub frames: FrameTotals,
    pub datagrams: u64,
    pub events: u64,
    pub end_us: u64,
    pub naks_sent: u64,
    pub grafts_sent: u64,
    pub prunes_sent: u64,
    pub frames_lost: u64,
    /// Per node: started, killed, first meshed, latencies.
    pub lifetimes: Vec<(u64, Option<u64>, Option<u64>)>,
    pub latencies_us: Vec<Vec<u32>>,
    /// The final overlay among live nodes: per node, its neighbors and their latencies.
    pub links: Vec<Vec<(usize, u64)>>,
    pub alive: Vec<bool>,
}

pub struct World {
    options: SimOptions,
    churn: f64,
    rng: Rng,
    queue: EventQueue<Event>,
    now_us: u64,
    /// Overlay time: `base + now_us` (the overlay takes `Instant`s).
    base: Instant,
    part: StreamPartKey,
    peering_defaults: PeeringConfig,
    nodes: Vec<Node>,
    by_peer: HashMap<PeerId, usize>,
    geography: Geography,
    /// Nodes whose provider record is stored (records of killed nodes stay: their TTL is
    /// 30 minutes, longer than a run).
    providers: Vec<usize>,
    publisher: Publisher,
    publisher_link_seq: u64,
    /// Publish time of each message, by frame sequence.
    publish_us: Vec<u64>,
    /// Per message, the overlay's shortest paths at its publish time; and whether a link
    /// came up or went down (or a node died) since the last were computed.
    distances_us: Vec<Rc<Vec<u64>>>,
    overlay_changed: bool,
    /// Live nodes with at least [`MESHED_DEGREE`] neighbors, and live nodes.
    meshed_now: usize,
    alive_now: usize,
    mesh_us: Option<u64>,
    publish_start_us: Option<u64>,
    end_us: Option<u64>,
    frames: FrameTotals,
    datagrams: u64,
    events: u64,
    /// Scratch for `drain`.
    transmit_buffer: Vec<u8>,
}

impl World {
    pub fn new(options: &SimOptions, churn: f64) -> Self {
        let mut rng = Rng::new(options.seed);
        let part = StreamPart::parse("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/sim#0").expect("a valid stream part").key();
        let publisher_secret = blake3::derive_key("runnel-bench sim publisher key", &options.seed.to_le_bytes());
        let publisher_key = PublisherKey::from_hex(&hex_digits(&publisher_secret)).expect("a blake3 output is a valid secp256k1 key");
        let publisher = Publisher::with_chain_id(publisher_key, part, SigningMode::PerMessage, rng.next_u64());
        let defaults_identity = Identity::from_bytes(&[1; 32]).expect("a valid key");
        let peering_defaults = PeeringConfig::new(defaults_identity, Endpoint { address: node_address(0), shards: 1 });
        let mut world = Self {
            options: options.clone(),
            churn,
            rng,
            queue: EventQueue::default(),
            now_us: 0,
            base: Instant::now(),
            part,
            peering_defaults,
            nodes: Vec::new(),
            by_peer: HashMap::new(),
            geography: Geography::default(),
            providers: Vec::new(),
            publisher,
            publisher_link_seq: 0,
            publish_us: Vec::new(),
            distances_us: Vec::new(),
            overlay_changed: true,
            meshed_now: 0,
            alive_now: 0,
            mesh_us: None,
            publish_start_us: None,
            end_us: None,
            frames: FrameTotals::default(),
            datagrams: 0,
            events: 0,
            transmit_buffer: Vec::new(),
        };
        // The whole network starts at once (a cold start), each node's tick at its own phase.
        for _ in 0..options.nodes {
            let index = world.add_node();
            world.queue.push(0, Event::Start(index));
        }
        world.nodes[PUBLISHER_NODE].relay.add_link(&LinkConfig {
            id: PUBLISHER_LINK,
            peer_link_id: None,
            key: PUBLISHER_LINK_KEY,
            role: LinkRole::Client,
            peer: None,
            peer_shards: 1,
            rate_datagrams_per_s: 0,
            burst_datagrams: 1,
        });
        world
    }

    /// Creates the next node (not started): its identity, place, overlay and relay.
    fn add_node(&mut self) -> usize {
        let index = self.nodes.len();
        let secret =
            blake3::derive_key("runnel-bench sim node identity", &[self.options.seed.to_le_bytes(), (index as u64).to_le_bytes()].concat());
        let identity = Identity::from_bytes(&secret).expect("a blake3 output is a valid secp256k1 key");
        let peer = identity.peer_id();
        let endpoint = Endpoint { address: node_address(index), shards: 1 };
        let rng = rand::SeedableRng::seed_from_u64(self.rng.next_u64());
        let link_id_start = self.rng.next_u64() as u32;
        let overlay = Overlay::new(peer, endpoint, overlay_config(&self.peering_defaults), link_id_start, rng);
        let (x, y) = (self.unit(), self.unit());
        self.geography.place(x, y);
        self.by_peer.insert(peer, index);
        self.nodes.push(Node {
            peer,
            overlay,
            relay: Relay::new(relay_config(&self.options)),
            links: Vec::new(),
            alive: false,
            started_us: 0,
            killed_us: None,
            meshed_us: None,
            counted_meshed: false,
            lookup_running: false,
            last_lookup_us: None,
            timer_at_us: None,
            latencies_us: Vec::new(),
        });
        index
    }

    fn unit(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_micros(self.now_us)
    }

    fn latency_us(&self, a: usize, b: usize) -> u64 {
        self.geography.latency_us(a, b)
    }

    /// Runs to the end: mesh, publish (with churn), drain.
    pub fn run(mut self) -> Outcome {
        while let Some((at_us, event)) = self.queue.pop() {
            if self.end_us.is_some_and(|end| at_us > end) {
                break;
            }
            self.now_us = at_us;
            self.events += 1;
            self.handle(event);
            if self.publish_start_us.is_none() && (self.mesh_us.is_some() || self.now_us >= super::MESH_DEADLINE_US) {
                self.start_publishing();
            }
        }
        self.outcome()
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Start(node) => self.start(node),
            Event::Tick(node) => self.tick(node),
            Event::Announced(node) => {
                if self.nodes[node].alive {
                    self.providers.push(node);
                }
            }
            Event::LookupDone(node) => self.lookup_done(node),
            Event::Request { from, to, request } => self.on_request(from, to, *request),
            Event::Reply { from, to, local_link_id, response } => self.on_reply(from, to, local_link_id, *response),
            Event::ProposalFailed { node, peer, local_link_id } => {
                if self.nodes[node].alive {
                    let (part, peer_id, now) = (self.part, self.nodes[peer].peer, self.instant());
                    self.nodes[node].overlay.proposal_failed(&part, &peer_id, local_link_id, now);
                }
            }
            Event::AcceptLost { node, peer, local_link_id } => {
                if self.nodes[node].alive {
                    let mut events = Vec::new();
                    let (part, peer_id) = (self.part, self.nodes[peer].peer);
                    self.nodes[node].overlay.drop_neighbor(&part, &peer_id, local_link_id, &mut events);
                    self.apply(node, events);
                }
            }
            Event::Disconnected { node, peer } => {
                if self.nodes[node].alive {
                    let (peer_id, now) = (self.nodes[peer].peer, self.instant());
                    self.nodes[node].overlay.peer_disconnected(&peer_id, now);
                    self.update_meshed(node);
                }
            }
            Event::Datagram { from, to, bytes } => self.on_datagram(from, to, &bytes),
            Event::RelayTimer(node) => self.relay_timer(node),
            Event::Publish => self.publish(),
            Event::Kill(node) => self.kill(node),
        }
    }

    // ---- Overlay: what the peering driver does, with the DHT modeled ------------------------

    fn start(&mut self, node: usize) {
        let (part, now_us) = (self.part, self.now_us);
        let state = &mut self.nodes[node];
        state.alive = true;
        state.started_us = now_us;
        state.overlay.join(part).expect("one part per node");
        state.relay.join(now_us, part);
        self.alive_now += 1;
        let announce_us = self.kademlia_us(node);
        self.queue.push(now_us + announce_us, Event::Announced(node));
        self.lookup(node);
        let phase_us = self.rng.below(TICK_US);
        self.queue.push(now_us + phase_us, Event::Tick(node));
        self.drain(node);
    }

    /// How long a Kademlia query from `node` takes: sequential round trips to random nodes.
    fn kademlia_us(&mut self, node: usize) -> u64 {
        (0..KADEMLIA_ROUND_TRIPS)
            .map(|_| {
                let other = self.rng.below(self.nodes.len() as u64) as usize;
                2 * self.latency_us(node, other)
            })
            .sum()
    }

    fn lookup(&mut self, node: usize) {
        if self.nodes[node].lookup_running {
            return;
        }
        let lookup_us = self.kademlia_us(node);
        let state = &mut self.nodes[node];
        state.lookup_running = true;
        state.last_lookup_us = Some(self.now_us);
        self.queue.push(self.now_us + lookup_us, Event::LookupDone(node));
    }

    /// The DHT is not simulated: a lookup returns up to k providers drawn uniformly from the
    /// nodes whose announcement completed (docs/decisions-sim.md).
    fn lookup_done(&mut self, node: usize) {
        if !self.nodes[node].alive {
            return;
        }
        self.nodes[node].lookup_running = false;
        let mut found: Vec<usize> = Vec::with_capacity(PROVIDERS_PER_LOOKUP);
        let wanted = PROVIDERS_PER_LOOKUP.min(self.providers.len());
        while found.len() < wanted {
            let provider = self.providers[self.rng.below(self.providers.len() as u64) as usize];
            if !found.contains(&provider) {
                found.push(provider);
            }
        }
        let peers: Vec<PeerId> = found.iter().map(|index| self.nodes[*index].peer).collect();
        let (part, now) = (self.part, self.instant());
        self.nodes[node].overlay.add_candidates(&part, peers, now);
        self.propose(node);
    }

    /// The driver's tick: a part below target looks providers up again (every
    /// `lookup_interval`) and proposes to due candidates.
    fn tick(&mut self, node: usize) {
        if !self.nodes[node].alive {
            return;
        }
        self.queue.push(self.now_us + TICK_US, Event::Tick(node));
        let mut events = Vec::new();
        let now = self.instant();
        for (peer, leave) in self.nodes[node].overlay.expire_disconnected(now, &mut events) {
            self.send_leave(node, self.by_peer[&peer], leave);
        }
        self.apply(node, events);
        if self.nodes[node].overlay.parts_below_target().is_empty() {
            return;
        }
        let interval_us = self.peering_defaults.lookup_interval.as_micros() as u64;
        if self.nodes[node].last_lookup_us.is_none_or(|last| self.now_us >= last + interval_us) {
            self.lookup(node);
        }
        self.propose(node);
    }

    fn propose(&mut self, node: usize) {
        let (part, now) = (self.part, self.instant());
        for (peer, propose) in self.nodes[node].overlay.start_proposals(&part, now, true) {
            let to = self.by_peer[&peer];
            let one_way_us = self.latency_us(node, to);
            let at_us = self.now_us + (2 * DIAL_ROUND_TRIPS + 1) * one_way_us;
            self.queue.push(at_us, Event::Request { from: node, to, request: Box::new(Request::Propose(propose)) });
        }
    }

    fn on_request(&mut self, from: usize, to: usize, request: Request) {
        let one_way_us = self.latency_us(from, to);
        if !self.nodes[to].alive {
            // Connection refused: the initiator's request fails one trip later.
            if let Request::Propose(propose) = request {
                let failed = Event::ProposalFailed { node: from, peer: to, local_link_id: propose.link_id };
                self.queue.push(self.now_us + one_way_us, failed);
            }
            return;
        }
        if !self.nodes[from].alive {
            return; // its connection closed with it: nothing to answer
        }
        let (peer, now) = (self.nodes[from].peer, self.instant());
        let mut events = Vec::new();
        match request {
            Request::Propose(propose) => {
                let response = self.nodes[to].overlay.handle_propose(peer, &propose, true, now, &mut events);
                let reply = Event::Reply { from: to, to: from, local_link_id: propose.link_id, response: Box::new(response) };
                self.queue.push(self.now_us + one_way_us, reply);
            }
            Request::Leave(leave) => {
                self.nodes[to].overlay.handle_leave(peer, &leave, now, &mut events);
            }
            // Every simulated node is a full node: clients are not simulated.
            Request::ClientLink(_) => {}
        }
        self.apply(to, events);
    }

    fn on_reply(&mut self, from: usize, to: usize, local_link_id: u32, response: Response) {
        let one_way_us = self.latency_us(from, to);
        if !self.nodes[to].alive {
            if let Response::Accept(accept) = response {
                let lost = Event::AcceptLost { node: from, peer: to, local_link_id: accept.link_id };
                self.queue.push(self.now_us + one_way_us, lost);
            }
            return;
        }
        let (part, peer, now) = (self.part, self.nodes[from].peer, self.instant());
        if !self.nodes[from].alive {
            // The responder died with the answer in flight: the connection closed first.
            self.nodes[to].overlay.proposal_failed(&part, &peer, local_link_id, now);
            return;
        }
        let mut events = Vec::new();
        let leave = self.nodes[to].overlay.handle_reply(&part, peer, local_link_id, &response, now, &mut events);
        self.apply(to, events);
        if let Some(leave) = leave {
            self.send_leave(to, from, leave);
        }
    }

    /// What control does with the relay's events: a neighbor the relay found silent is
    /// dropped (and told so), like the driver's `drop_neighbor`.
    fn follow_relay_events(&mut self, node: usize) {
        let mut silent = Vec::new();
        while let Some(event) = self.nodes[node].relay.poll_event() {
            if let RelayEvent::NeighborSilent { link_id, part } = event {
                silent.push((link_id, part));
            }
        }
        if silent.is_empty() {
            return;
        }
        let (now, mut events) = (self.instant(), Vec::new());
        for (link_id, part) in silent {
            if let Some((peer, leave)) = self.nodes[node].overlay.neighbor_silent(&part, link_id, now, &mut events) {
                self.send_leave(node, self.by_peer[&peer], leave);
            }
        }
        self.apply(node, events);
    }

    fn send_leave(&mut self, from: usize, to: usize, leave: Leave) {
        let one_way_us = self.latency_us(from, to);
        self.queue.push(self.now_us + one_way_us, Event::Request { from, to, request: Box::new(Request::Leave(leave)) });
    }

    /// Turns overlay events into the relay's links (what the control process's `AddLink` /
    /// `RemoveLink` do) and keeps the mesh count.
    fn apply(&mut self, node: usize, events: Vec<PeeringEvent>) {
        if events.is_empty() {
            return;
        }
        for event in events {
            match event {
                PeeringEvent::NeighborUp(up) => self.link_up(node, up),
                PeeringEvent::NeighborDown(down) => {
                    let state = &mut self.nodes[node];
                    state.relay.remove_link(down.local_link_id);
                    state.links.retain(|(_, link_id)| *link_id != down.local_link_id);
                    self.overlay_changed = true;
                }
                // The overlay makes no client links (the driver does).
                PeeringEvent::ClientLinkUp(_) | PeeringEvent::ClientLinkDown(_) => {}
            }
        }
        self.update_meshed(node);
        self.drain(node);
    }

    fn link_up(&mut self, node: usize, up: NeighborUp) {
        let peer = self.by_peer[&up.peer];
        let state = &mut self.nodes[node];
        state.relay.add_link(&LinkConfig {
            id: up.local_link_id,
            peer_link_id: Some(up.remote_link_id),
            key: LinkKey(*up.key.expose()),
            role: LinkRole::Neighbor,
            peer: Some(up.remote_endpoint),
            peer_shards: up.remote_shards,
            rate_datagrams_per_s: 0,
            burst_datagrams: 1,
        });
        // `add_link` replaces a link of the same id.
        state.links.retain(|(_, link_id)| *link_id != up.local_link_id);
        state.links.push((peer, up.local_link_id));
        self.overlay_changed = true;
    }

    /// The overlay's links among live nodes now: per node, its neighbors by index (sorted) and
    /// the mean latency to each.
    fn overlay_links(&self) -> Vec<Vec<(usize, u64)>> {
        let links_of = |(index, node): (usize, &Node)| {
            if !node.alive {
                return Vec::new();
            }
            let mut neighbors: Vec<(usize, u64)> = node
                .links
                .iter()
                .map(|(peer, _)| *peer)
                .filter(|peer| self.nodes[*peer].alive)
                .map(|peer| (peer, self.geography.latency_us(index, peer)))
                .collect();
            neighbors.sort_unstable();
            neighbors
        };
        self.nodes.iter().enumerate().map(links_of).collect()
    }

    fn update_meshed(&mut self, node: usize) {
        let part = self.part;
        let state = &mut self.nodes[node];
        let meshed = state.alive && state.overlay.degree(&part) >= MESHED_DEGREE;
        if meshed && state.meshed_us.is_none() {
            state.meshed_us = Some(self.now_us);
        }
        match (meshed, state.counted_meshed) {
            (true, false) => self.meshed_now += 1,
            (false, true) => self.meshed_now -= 1,
            _ => {}
        }
        state.counted_meshed = meshed;
        if self.mesh_us.is_none() && self.meshed_now == self.alive_now && self.alive_now == self.options.nodes {
            self.mesh_us = Some(self.now_us);
        }
    }

    // ---- Dataplane: the relays and the lossy network between them ----------------------------

    fn on_datagram(&mut self, from: usize, to: usize, bytes: &[u8]) {
        let state = &mut self.nodes[to];
        if !state.alive {
            return;
        }
        let Ok(datagram) = wire::Datagram::parse(bytes) else { panic!("relays send valid datagrams") };
        let repair = datagram.flags() & FLAG_REPAIR != 0;
        let sequences: Vec<u64> = if datagram.kind == Kind::Data {
            datagram.frames().filter_map(Result::ok).map(|frame| frame.sequence()).collect()
        } else {
            Vec::new()
        };
        let counters = |relay: &Relay| (relay.counters().get(Counter::FramesAccepted), relay.counters().get(Counter::FramesDuplicate));
        let (accepted_before, duplicate_before) = counters(&state.relay);
        state.relay.handle_receive(self.now_us, node_address(from), bytes);
        let (accepted_after, duplicate_after) = counters(&state.relay);
        let (accepted, duplicates) = (accepted_after - accepted_before, duplicate_after - duplicate_before);
        if accepted > 0 {
            // Each frame's first copy at this node. Datagrams here carry one frame each (one
            // message per publish, one received datagram per relay batch), so the counter
            // and the frames agree; with several, those not yet recorded are the new ones.
            if state.latencies_us.is_empty() {
                state.latencies_us = vec![NOT_DELIVERED; self.options.messages];
            }
            for sequence in sequences {
                let slot = &mut state.latencies_us[sequence as usize];
                if *slot == NOT_DELIVERED {
                    *slot = (self.now_us - self.publish_us[sequence as usize]) as u32;
                }
            }
        }
        self.frames.delivered += accepted;
        if repair {
            self.frames.delivered_by_repair += accepted;
            self.frames.repair_duplicates += duplicates;
        } else {
            self.frames.duplicates += duplicates;
        }
        self.drain(to);
    }

    fn relay_timer(&mut self, node: usize) {
        let state = &mut self.nodes[node];
        if !state.alive || state.timer_at_us != Some(self.now_us) {
            return; // stale: an earlier deadline replaced it, or the node is gone
        }
        state.timer_at_us = None;
        state.relay.handle_timeout(self.now_us);
        self.drain(node);
    }

    /// Seals what the relay packed, moves its sends into the network (each datagram lost or
    /// delayed on its own), and queues its next deadline.
    fn drain(&mut self, node: usize) {
        self.follow_relay_events(node);
        let mut buffer = std::mem::take(&mut self.transmit_buffer);
        let mut sends: Vec<(usize, u32, u64, Vec<u8>)> = Vec::new();
        let relay = &mut self.nodes[node].relay;
        relay.flush();
        while let Some(transmit) = relay.poll_transmit(&mut buffer) {
            let Some(to) = node_index(&transmit.destination) else { continue }; // credit to the publisher
            for bytes in buffer[..transmit.length].chunks(transmit.segment_size) {
                let datagram = wire::Datagram::parse(bytes).expect("relays send valid datagrams");
                sends.push((to, datagram.link_id(), datagram.link_seq(), bytes.to_vec()));
            }
        }
        self.transmit_buffer = buffer;
        // The relay lists links in its hash maps' order, which differs per process: sorted by
        // link (each link's datagrams stay in sequence), the draws below depend on the seed only.
        sends.sort_unstable_by_key(|(to, link_id, link_seq, _)| (*to, *link_id, *link_seq));
        for (to, _, _, bytes) in sends {
            self.datagrams += 1;
            if self.unit() < self.options.loss {
                continue;
            }
            let latency_us = self.latency_us(node, to) as f64 * (1.0 + JITTER_FRACTION * self.unit());
            self.queue.push(self.now_us + latency_us as u64, Event::Datagram { from: node, to, bytes });
        }
        let state = &mut self.nodes[node];
        if let Some(deadline_us) = state.relay.poll_timeout() {
            let deadline_us = deadline_us.max(self.now_us);
            if state.timer_at_us.is_none_or(|queued| deadline_us < queued) {
                state.timer_at_us = Some(deadline_us);
                self.queue.push(deadline_us, Event::RelayTimer(node));
            }
        }
    }

    // ---- The workload: publishing and churn --------------------------------------------------

    /// Publishing starts a settle time after the mesh formed (new links carry data once a
    /// Subscribe crossed them, within the relay's `subscribe_interval_us`); churn is spread
    /// over the publishing window.
    fn start_publishing(&mut self) {
        let start_us = self.now_us + super::SETTLE_US;
        self.publish_start_us = Some(start_us);
        self.queue.push(start_us, Event::Publish);
        let window_us = self.options.publish_window_us();
        let changes = (self.churn * self.options.nodes as f64).round() as usize;
        let mut victims: Vec<usize> = Vec::with_capacity(changes);
        // Never the publisher's node: churn among the relays, not of the source.
        while victims.len() < changes.min(self.options.nodes - 1) {
            let victim = self.rng.below(self.options.nodes as u64) as usize;
            if victim != PUBLISHER_NODE && !victims.contains(&victim) {
                victims.push(victim);
            }
        }
        for victim in victims {
            let at_us = start_us + self.rng.below(window_us);
            self.queue.push(at_us, Event::Kill(victim));
        }
        for _ in 0..changes {
            let at_us = start_us + self.rng.below(window_us);
            let index = self.add_node();
            self.queue.push(at_us, Event::Start(index));
        }
        self.end_us = Some(start_us + window_us + super::DRAIN_US);
    }

    fn publish(&mut self) {
        let sequence = self.publish_us.len();
        let mut payload = [0u8; PAYLOAD_LENGTH];
        payload[..8].copy_from_slice(&(sequence as u64).to_le_bytes());
        let timestamp_ms = self.now_us / 1000;
        self.publisher.publish(&Outgoing::binary(timestamp_ms, &payload)).expect("a small message");
        self.publisher.flush();
        let mut builder = DatagramBuilder::new(wire::DATAGRAM_LENGTH_DEFAULT);
        for frame in runnel_proto::frame::split_frames(self.publisher.frames()) {
            let frame = frame.expect("the publisher writes valid frames");
            assert_eq!(frame.sequence() as usize, self.publish_us.len(), "one frame per message");
            self.publish_us.push(self.now_us);
            assert!(builder.try_push(frame.bytes), "a small message fits a datagram");
        }
        self.publisher.clear_frames();
        self.record_distances();
        let fields = HeaderFields::new(Kind::Data, PUBLISHER_LINK, self.publisher_link_seq, self.part.0);
        self.publisher_link_seq += 1;
        let datagram = builder.finish(fields, &PUBLISHER_LINK_KEY).to_vec();
        // The publisher is a client on the first node's host: that hop neither loses nor waits.
        self.nodes[PUBLISHER_NODE].relay.handle_receive(self.now_us, PUBLISHER_ADDRESS, &datagram);
        self.drain(PUBLISHER_NODE);
        if self.publish_us.len() < self.options.messages {
            self.queue.push(self.now_us + self.options.publish_interval_us(), Event::Publish);
        }
    }

    /// The shortest paths of the message just published: those of the last one while the
    /// overlay did not change, else Dijkstra over it now.
    fn record_distances(&mut self) {
        let distances_us = match self.distances_us.last() {
            Some(last) if !self.overlay_changed => Rc::clone(last),
            _ => Rc::new(shortest_paths(&self.overlay_links(), PUBLISHER_NODE)),
        };
        self.overlay_changed = false;
        self.distances_us.push(distances_us);
    }

    /// A killed process: its peers see their connections close one trip later; it sends
    /// nothing more (what it sent is still on the wire and arrives).
    fn kill(&mut self, node: usize) {
        let part = self.part;
        let neighbors = self.nodes[node].overlay.neighbors(&part);
        let state = &mut self.nodes[node];
        state.alive = false;
        state.killed_us = Some(self.now_us);
        self.overlay_changed = true;
        self.alive_now -= 1;
        if state.counted_meshed {
            state.counted_meshed = false;
            self.meshed_now -= 1;
        }
        let mut peers: Vec<usize> = neighbors.iter().map(|neighbor| self.by_peer[&neighbor.peer]).collect();
        peers.sort_unstable(); // the overlay lists neighbors in HashMap order
        for peer in peers {
            let at_us = self.now_us + self.latency_us(node, peer);
            self.queue.push(at_us, Event::Disconnected { node: peer, peer: node });
        }
    }

    fn outcome(self) -> Outcome {
        let links = self.overlay_links();
        let sum = |counter: Counter| self.nodes.iter().map(|node| node.relay.counters().get(counter)).sum();
        Outcome {
            nodes_started: self.nodes.len(),
            mesh_us: self.mesh_us,
            frames: self.frames,
            datagrams: self.datagrams,
            events: self.events,
            end_us: self.now_us,
            naks_sent: sum(Counter::NaksSent),
            grafts_sent: sum(Counter::GraftsSent),
            prunes_sent: sum(Counter::PrunesSent),
            frames_lost: sum(Counter::FramesLost),
            lifetimes: self.nodes.iter().map(|node| (node.started_us, node.killed_us, node.meshed_us)).collect(),
            alive: self.nodes.iter().map(|node| node.alive).collect(),
            latencies_us: self.nodes.into_iter().map(|node| node.latencies_us).collect(),
            links,
            publish_us: self.publish_us,
            distances_us: self.distances_us,
        }
    }
}

fn hex_digits(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
