//! The peering thread: a single-threaded tokio runtime that owns the libp2p swarm and the
//! [`Overlay`], and turns swarm events, handle commands and a 200 ms tick into overlay calls.
//! All decisions are the overlay's; this file is glue and bookkeeping of what is in flight.
//!
//! The loop `select!`s over the swarm, the command queue and the tick; all three futures are
//! cancel-safe (a `Swarm` keeps its events until polled again, tokio's `mpsc::Receiver::recv`
//! and `Interval::tick` lose nothing when dropped), so whichever branch loses the race misses
//! nothing.
//!
//! Bounds: requests in flight are at most the overlay's proposals plus one Leave per dropped
//! neighbor (each ends by answer or `request_timeout`); lookups at most one per part; the
//! event outbox holds what the consumer has not taken yet — new neighbors are refused while
//! it holds [`OUTBOX_ACCEPTING_MAX`] events, so beyond that only NeighborDown events (at most
//! one per neighbor) are added.

use crate::api::{ClientLinkDown, ClientLinkUp, Command, Counters, PeeringConfig, PeeringCounter, PeeringError, PeeringEvent};
use crate::codec::{NeighborCodec, NEIGHBOR_PROTOCOL};
use crate::handshake::{derive_client_link_key, Ephemeral, LinkIds, Transcript};
use crate::keep_alive;
use crate::overlay::{Overlay, OverlayError};
use crate::wire::{ClientGrant, ClientLink, Endpoint, Leave, RefuseReason, Request, Response};
use crossbeam_channel::TrySendError;
use futures::StreamExt;
use libp2p::kad::store::{MemoryStore, MemoryStoreConfig};
use libp2p::kad::{self, GetProvidersOk, QueryId, QueryResult, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, InboundRequestId, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{connection_limits, identify, noise, ping, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder};
use runnel_proto::stream::StreamPartKey;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Kademlia protocol name: Runnel's own DHT, apart from the public IPFS one.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/runnel/kad/1.0.0");
/// identify's protocol version string.
pub const IDENTIFY_PROTOCOL_VERSION: &str = "/runnel/1.0.0";
/// How often the driver looks at parts below target, retries and the outbox.
const TICK: Duration = Duration::from_millis(200);
/// While the outbox holds this many events, no new neighbor is made.
pub const OUTBOX_ACCEPTING_MAX: usize = 64;
/// Listen addresses taken from one identify message.
const IDENTIFY_ADDRESSES_MAX: usize = 8;
/// How long shutdown waits for neighbors to acknowledge our Leave.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// How often bootstrap peers are dialed again while no peer is connected.
const BOOTSTRAP_REDIAL: Duration = Duration::from_secs(3);
/// Neighbor request streams open at once per connection.
const NEIGHBOR_STREAMS_MAX: usize = 32;

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    limits: connection_limits::Behaviour,
    keep_alive: keep_alive::Behaviour,
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    neighbor: request_response::Behaviour<NeighborCodec>,
}

impl Behaviour {
    fn new(key: &libp2p::identity::Keypair, config: &PeeringConfig, counters: std::sync::Arc<Counters>) -> Self {
        let peer_id = key.public().to_peer_id();
        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        kad_config
            .set_query_timeout(config.query_timeout)
            .set_provider_record_ttl(Some(config.provider_record_ttl))
            .set_provider_publication_interval(Some(config.provider_publication_interval))
            // Runnel stores no records, only provider records: a tiny record store.
            .set_record_ttl(Some(Duration::from_secs(60)));
        let store = MemoryStore::with_config(
            peer_id,
            MemoryStoreConfig {
                max_records: 16,
                max_value_bytes: 1024,
                max_providers_per_key: kad::K_VALUE.get(),
                max_provided_keys: config.stream_parts_max,
            },
        );
        let mut kad = kad::Behaviour::with_config(peer_id, store, kad_config);
        // Every node answers DHT queries: without this, kad waits for a confirmed external
        // address (autonat) before serving, which loopback and LAN nodes never get.
        kad.set_mode(Some(kad::Mode::Server));
        let limits = connection_limits::ConnectionLimits::default()
            .with_max_established(Some(config.connections_max))
            .with_max_established_per_peer(Some(2))
            .with_max_pending_incoming(Some(64))
            .with_max_pending_outgoing(Some(64));
        let neighbor_config = request_response::Config::default()
            .with_request_timeout(config.request_timeout)
            .with_max_concurrent_streams(NEIGHBOR_STREAMS_MAX);
        Self {
            limits: connection_limits::Behaviour::new(limits),
            keep_alive: keep_alive::Behaviour::default(),
            kad,
            identify: identify::Behaviour::new(identify::Config::new(IDENTIFY_PROTOCOL_VERSION.into(), key.public())),
            ping: ping::Behaviour::new(ping::Config::new().with_interval(config.ping_interval)),
            neighbor: request_response::Behaviour::with_codec(
                NeighborCodec { counters },
                [(NEIGHBOR_PROTOCOL, ProtocolSupport::Full)],
                neighbor_config,
            ),
        }
    }
}

fn build_swarm(config: &PeeringConfig, counters: std::sync::Arc<Counters>) -> Result<Swarm<Behaviour>, PeeringError> {
    let timeouts = (config.quic_idle_timeout, config.idle_connection_timeout);
    build_swarm_with(&config.identity, timeouts, |key| Behaviour::new(key, config, counters))
}

/// The transports every Runnel swarm speaks (TCP with Noise and Yamux, QUIC), around
/// `behaviour`: a node's, or a client's (`crate::client`). `timeouts`: QUIC idle timeout,
/// idle connection timeout.
pub(crate) fn build_swarm_with<B: NetworkBehaviour>(
    identity: &crate::Identity,
    (quic_idle_timeout, idle_connection_timeout): (Duration, Duration),
    behaviour: impl FnOnce(&libp2p::identity::Keypair) -> B,
) -> Result<Swarm<B>, PeeringError> {
    let start = |error: &dyn std::fmt::Display| PeeringError::Start(error.to_string());
    Ok(SwarmBuilder::with_existing_identity(identity.keypair().clone())
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|error| start(&error))?
        .with_quic_config(|mut quic| {
            quic.max_idle_timeout = quic_idle_timeout.as_millis() as u32;
            quic.keep_alive_interval = quic_idle_timeout / 2;
            quic
        })
        .with_behaviour(behaviour)
        .map_err(|error| start(&error))?
        .with_swarm_config(|swarm| swarm.with_idle_connection_timeout(idle_connection_timeout))
        .build())
}

/// A request of ours waiting for its answer.
enum Outstanding {
    Propose { part: StreamPartKey, peer: PeerId, local_link_id: u32 },
    Leave,
}

/// Provider lookups and announcements of one part.
#[derive(Default)]
struct Discovery {
    lookup: Option<QueryId>,
    last_lookup: Option<Instant>,
    /// Whether the last announcement reached at least one peer.
    announced: bool,
    last_announce: Option<Instant>,
}

struct Driver {
    swarm: Swarm<Behaviour>,
    overlay: Overlay,
    config: PeeringConfig,
    commands: tokio::sync::mpsc::Receiver<Command>,
    events: crossbeam_channel::Sender<PeeringEvent>,
    outbox: VecDeque<PeeringEvent>,
    outstanding: HashMap<OutboundRequestId, Outstanding>,
    /// Accepts we sent whose stream has not finished: if it fails, the peer never saw the
    /// Accept and the neighbor is dropped again.
    accepted: HashMap<InboundRequestId, (StreamPartKey, PeerId, u32)>,
    /// Client links by (client, part): at most `clients_max`.
    clients: HashMap<(PeerId, StreamPartKey), u32>,
    client_ids: LinkIds,
    /// The remote IP of each open connection (from its multiaddr), to check the dataplane
    /// endpoint a neighbor names against where it connects from.
    connection_ips: HashMap<ConnectionId, IpAddr>,
    /// Grants we sent whose stream has not finished (as `accepted`).
    granted: HashMap<InboundRequestId, (PeerId, StreamPartKey, u32)>,
    discovery: HashMap<StreamPartKey, Discovery>,
    queries: HashMap<QueryId, StreamPartKey>,
    bootstrap: Vec<(PeerId, Multiaddr)>,
    last_bootstrap_dial: Instant,
    counters: std::sync::Arc<Counters>,
}

/// The listen addresses of a peer worth giving Kademlia: at most [`IDENTIFY_ADDRESSES_MAX`],
/// and its loopback addresses only when it has nothing else (a node listening on all
/// interfaces also reports 127.0.0.1, which means this host to anyone who dials it).
fn dialable(addresses: Vec<Multiaddr>) -> Vec<Multiaddr> {
    let is_loopback = |address: &Multiaddr| {
        address.iter().any(|protocol| match protocol {
            Protocol::Ip4(ip) => ip.is_loopback(),
            Protocol::Ip6(ip) => ip.is_loopback(),
            _ => false,
        })
    };
    let all_loopback = addresses.iter().all(is_loopback);
    addresses.into_iter().filter(|address| all_loopback || !is_loopback(address)).take(IDENTIFY_ADDRESSES_MAX).collect()
}

/// The IP of a multiaddr (`/ip4/…` or `/ip6/…`), if it has one.
fn ip_of(address: &Multiaddr) -> Option<IpAddr> {
    address.iter().find_map(|protocol| match protocol {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// Equal IPs, an IPv4-mapped IPv6 address equal to its IPv4 address.
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

/// The peering thread's body.
pub(crate) fn run(
    config: PeeringConfig,
    commands: tokio::sync::mpsc::Receiver<Command>,
    events: crossbeam_channel::Sender<PeeringEvent>,
    ready: std::sync::mpsc::SyncSender<Result<(), PeeringError>>,
    counters: std::sync::Arc<Counters>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = ready.send(Err(PeeringError::Start(format!("tokio runtime: {error}"))));
            return;
        }
    };
    runtime.block_on(async move {
        let mut driver = match Driver::start(config, commands, events, counters).await {
            Ok(driver) => driver,
            Err(error) => {
                let _ = ready.send(Err(error));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        if driver.run().await {
            driver.shutdown().await;
        }
    });
}

impl Driver {
    async fn start(
        config: PeeringConfig,
        commands: tokio::sync::mpsc::Receiver<Command>,
        events: crossbeam_channel::Sender<PeeringEvent>,
        counters: std::sync::Arc<Counters>,
    ) -> Result<Self, PeeringError> {
        let mut swarm = build_swarm(&config, counters.clone())?;
        let mut listeners = HashSet::new();
        for address in &config.listen {
            let listener =
                swarm.listen_on(address.clone()).map_err(|error| PeeringError::Start(format!("cannot listen on {address}: {error}")))?;
            listeners.insert(listener);
        }
        for address in &config.external_addresses {
            swarm.add_external_address(address.clone());
        }
        let rng = rand::SeedableRng::from_os_rng();
        let overlay = Overlay::new(config.identity.peer_id(), config.dataplane, config.overlay(), rand::random(), rng);
        let bootstrap = config.bootstrap_peers()?;
        let mut driver = Self {
            swarm,
            overlay,
            commands,
            events,
            outbox: VecDeque::new(),
            outstanding: HashMap::new(),
            accepted: HashMap::new(),
            clients: HashMap::new(),
            connection_ips: HashMap::new(),
            client_ids: LinkIds::new(config.client_link_ids.clone(), config.clients_max, rand::random()),
            granted: HashMap::new(),
            discovery: HashMap::new(),
            queries: HashMap::new(),
            bootstrap,
            last_bootstrap_dial: Instant::now(),
            counters,
            config,
        };
        driver.wait_listening(listeners).await?;
        driver.dial_bootstrap();
        Ok(driver)
    }

    /// Runs the swarm until every listener has an address.
    async fn wait_listening(&mut self, mut waiting: HashSet<libp2p::core::transport::ListenerId>) -> Result<(), PeeringError> {
        let deadline = tokio::time::Instant::now() + crate::api::START_TIMEOUT - Duration::from_secs(1);
        while !waiting.is_empty() {
            let event = tokio::time::timeout_at(deadline, self.swarm.select_next_some())
                .await
                .map_err(|_| PeeringError::Start("a listener got no address in time".into()))?;
            match &event {
                SwarmEvent::NewListenAddr { listener_id, .. } => {
                    waiting.remove(listener_id);
                }
                SwarmEvent::ListenerClosed { listener_id, reason, .. } if waiting.contains(listener_id) => {
                    return Err(PeeringError::Start(format!("listener closed: {reason:?}")));
                }
                SwarmEvent::ListenerError { listener_id, error } if waiting.contains(listener_id) => {
                    return Err(PeeringError::Start(format!("listener failed: {error}")));
                }
                _ => {}
            }
            self.on_swarm_event(event);
        }
        Ok(())
    }

    fn dial_bootstrap(&mut self) {
        self.last_bootstrap_dial = Instant::now();
        let local = self.overlay_local();
        for (peer, address) in self.bootstrap.clone() {
            if peer == local {
                continue;
            }
            self.swarm.behaviour_mut().kad.add_address(&peer, address.clone());
            // A failed dial shows up as OutgoingConnectionError; the tick dials again.
            let _ = self.swarm.dial(address.with(Protocol::P2p(peer)));
        }
        let _ = self.swarm.behaviour_mut().kad.bootstrap();
    }

    fn overlay_local(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// Returns whether to shut down gracefully (false: `Abort`, as a crash would).
    async fn run(&mut self) -> bool {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.flush_events();
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown) | None => return true,
                    Some(Command::Abort) => return false,
                    Some(command) => self.on_command(command),
                },
                _ = tick.tick() => self.on_tick(Instant::now()),
            }
        }
    }

    /// Leaves every part (Leave to each neighbor, NeighborDown for each), gives the Leaves
    /// up to [`SHUTDOWN_GRACE`] to be answered, then drops the swarm (closing connections).
    async fn shutdown(&mut self) {
        let parts: Vec<StreamPartKey> = self.overlay.parts().copied().collect();
        for part in parts {
            self.leave(part);
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while self.outstanding.values().any(|request| matches!(request, Outstanding::Leave)) {
            match tokio::time::timeout_at(deadline, self.swarm.select_next_some()).await {
                Ok(event) => self.on_swarm_event(event),
                Err(_) => break,
            }
        }
        self.flush_events();
    }

    fn flush_events(&mut self) {
        while let Some(event) = self.outbox.pop_front() {
            match self.events.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(event)) => {
                    self.outbox.push_front(event);
                    self.counters.add(PeeringCounter::EventsDeferred, 1);
                    return;
                }
                // Nobody reads events any more: keep running (the handle may still ask
                // questions), but do not hoard them.
                Err(TrySendError::Disconnected(_)) => {
                    self.outbox.clear();
                    return;
                }
            }
        }
    }

    fn accepting(&self) -> bool {
        self.outbox.len() < OUTBOX_ACCEPTING_MAX
    }

    /// Queues events for the consumer, counts them, and keeps connections to neighbors and
    /// clients (only) open.
    fn emit(&mut self, events: Vec<PeeringEvent>) {
        for event in events {
            let peer = match &event {
                PeeringEvent::NeighborUp(up) => {
                    self.counters.add(PeeringCounter::NeighborsUp, 1);
                    up.peer
                }
                PeeringEvent::NeighborDown(down) => {
                    self.counters.add(PeeringCounter::NeighborsDown, 1);
                    down.peer
                }
                PeeringEvent::ClientLinkUp(up) => {
                    self.counters.add(PeeringCounter::ClientLinksGranted, 1);
                    up.peer
                }
                PeeringEvent::ClientLinkDown(down) => {
                    self.counters.add(PeeringCounter::ClientLinksDown, 1);
                    down.peer
                }
            };
            self.outbox.push_back(event);
            self.update_keep_alive(peer);
        }
    }

    /// Connections to a peer stay open while it is a neighbor of some part or holds a
    /// client link.
    fn update_keep_alive(&mut self, peer: PeerId) {
        let keep = self.overlay.is_neighbor_anywhere(&peer) || self.clients.keys().any(|(client, _)| *client == peer);
        self.swarm.behaviour_mut().keep_alive.set_neighbor(peer, keep);
    }

    /// A client asks for a client link: grant it (a fresh key agreed as a neighbor's is,
    /// one link id both ways), replacing its earlier link for the part, or refuse.
    fn grant_client_link(&mut self, peer: PeerId, request: &ClientLink, request_id: InboundRequestId) -> Response {
        let part = StreamPartKey(request.part);
        self.remove_client_link(peer, part);
        if !self.accepting() || self.clients.len() >= self.config.clients_max {
            self.counters.add(PeeringCounter::ClientLinksRefused, 1);
            return Response::Refuse(RefuseReason::Busy);
        }
        if let Some(admission) = &self.config.admission {
            // A PeerId that carries no secp256k1 key has no account the registry could name.
            let verdict = match crate::identity::address_of_peer(&peer) {
                Some(client) => admission.admit(client, part, request.access),
                None => Err(RefuseReason::NotPermitted),
            };
            if let Err(reason) = verdict {
                self.counters.add(PeeringCounter::ClientLinksRefused, 1);
                self.counters.add(PeeringCounter::ClientLinksNotPermitted, 1);
                return Response::Refuse(reason);
            }
        }
        let Some(link_id) = self.client_ids.allocate() else {
            self.counters.add(PeeringCounter::ClientLinksRefused, 1);
            return Response::Refuse(RefuseReason::Busy);
        };
        let ours = Ephemeral::generate();
        let public = ours.public();
        let local = self.overlay_local();
        let transcript = Transcript {
            initiator: &peer,
            responder: &local,
            part: &request.part,
            initiator_link_id: 0,
            responder_link_id: link_id,
            initiator_public: &request.ephemeral_public,
            responder_public: &public,
        };
        let Some(key) = derive_client_link_key(ours, &request.ephemeral_public, &transcript) else {
            self.client_ids.release(link_id);
            self.counters.add(PeeringCounter::ClientLinksRefused, 1);
            return Response::Refuse(RefuseReason::Invalid);
        };
        self.clients.insert((peer, part), link_id);
        self.granted.insert(request_id, (peer, part, link_id));
        self.emit(vec![PeeringEvent::ClientLinkUp(ClientLinkUp { part, peer, link_id, access: request.access, key })]);
        Response::ClientGrant(ClientGrant { link_id, endpoint: self.config.dataplane, ephemeral_public: public })
    }

    fn remove_client_link(&mut self, peer: PeerId, part: StreamPartKey) {
        let Some(link_id) = self.clients.remove(&(peer, part)) else { return };
        self.client_ids.release(link_id);
        self.emit(vec![PeeringEvent::ClientLinkDown(ClientLinkDown { part, peer, link_id })]);
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Join(part, reply) => {
                let _ = reply.try_send(self.join(part));
            }
            Command::Leave(part, reply) => {
                self.leave(part);
                let _ = reply.try_send(());
            }
            Command::DropNeighbor(part, local_link_id) => {
                let mut events = Vec::new();
                if let Some((peer, leave)) = self.overlay.neighbor_silent(&part, local_link_id, Instant::now(), &mut events) {
                    self.counters.add(PeeringCounter::NeighborsSilent, 1);
                    let request = self.swarm.behaviour_mut().neighbor.send_request(&peer, Request::Leave(leave));
                    self.outstanding.insert(request, Outstanding::Leave);
                }
                self.emit(events);
            }
            Command::Neighbors(part, reply) => {
                let _ = reply.try_send(self.overlay.neighbors(&part));
            }
            Command::ListenAddrs(reply) => {
                let local = self.overlay_local();
                let addresses = self.swarm.listeners().map(|address| address.clone().with(Protocol::P2p(local))).collect();
                let _ = reply.try_send(addresses);
            }
            Command::Shutdown | Command::Abort => unreachable!("handled by run"),
        }
    }

    fn join(&mut self, part: StreamPartKey) -> Result<(), PeeringError> {
        match self.overlay.join(part) {
            Ok(false) => return Ok(()),
            Ok(true) => {}
            Err(OverlayError::TooManyParts { max }) => return Err(PeeringError::TooManyStreamParts { max }),
        }
        self.discovery.insert(part, Discovery::default());
        self.announce(part, Instant::now());
        self.lookup(part, Instant::now());
        Ok(())
    }

    fn leave(&mut self, part: StreamPartKey) {
        let mut events = Vec::new();
        for (peer, leave) in self.overlay.leave(&part, &mut events) {
            let request = self.swarm.behaviour_mut().neighbor.send_request(&peer, Request::Leave(leave));
            self.outstanding.insert(request, Outstanding::Leave);
        }
        self.emit(events);
        let kad = &mut self.swarm.behaviour_mut().kad;
        kad.stop_providing(&RecordKey::new(&part.0));
        if let Some(query) = self.discovery.remove(&part).and_then(|discovery| discovery.lookup) {
            self.queries.remove(&query);
            if let Some(mut running) = kad.query_mut(&query) {
                running.finish();
            }
        }
    }

    fn announce(&mut self, part: StreamPartKey, now: Instant) {
        let Some(discovery) = self.discovery.get_mut(&part) else { return };
        discovery.last_announce = Some(now);
        discovery.announced = true; // until the query reports it reached no one
        match self.swarm.behaviour_mut().kad.start_providing(RecordKey::new(&part.0)) {
            Ok(query) => {
                self.queries.insert(query, part);
            }
            Err(_) => discovery.announced = false,
        }
    }

    fn lookup(&mut self, part: StreamPartKey, now: Instant) {
        let Some(discovery) = self.discovery.get_mut(&part) else { return };
        if discovery.lookup.is_some() {
            return;
        }
        let query = self.swarm.behaviour_mut().kad.get_providers(RecordKey::new(&part.0));
        discovery.lookup = Some(query);
        discovery.last_lookup = Some(now);
        self.queries.insert(query, part);
        self.counters.add(PeeringCounter::ProviderLookups, 1);
    }

    fn propose(&mut self, part: StreamPartKey, now: Instant) {
        let accepting = self.accepting();
        for (peer, propose) in self.overlay.start_proposals(&part, now, accepting) {
            let request = self.swarm.behaviour_mut().neighbor.send_request(&peer, Request::Propose(propose));
            self.outstanding.insert(request, Outstanding::Propose { part, peer, local_link_id: propose.link_id });
            self.counters.add(PeeringCounter::ProposalsSent, 1);
        }
    }

    fn on_tick(&mut self, now: Instant) {
        let mut events = Vec::new();
        for (peer, leave) in self.overlay.expire_disconnected(now, &mut events) {
            self.counters.add(PeeringCounter::NeighborsExpired, 1);
            if self.swarm.is_connected(&peer) {
                let request = self.swarm.behaviour_mut().neighbor.send_request(&peer, Request::Leave(leave));
                self.outstanding.insert(request, Outstanding::Leave);
            }
        }
        self.emit(events);
        for part in self.overlay.parts_below_target() {
            let Some(discovery) = self.discovery.get(&part) else { continue };
            let due = |last: Option<Instant>| last.is_none_or(|last| now.duration_since(last) >= self.config.lookup_interval);
            let (lookup_due, announce_due) = (due(discovery.last_lookup), !discovery.announced && due(discovery.last_announce));
            if lookup_due {
                self.lookup(part, now);
            }
            if announce_due {
                self.announce(part, now);
            }
            self.propose(part, now);
        }
        if self.swarm.connected_peers().next().is_none() && now.duration_since(self.last_bootstrap_dial) >= BOOTSTRAP_REDIAL {
            self.dial_bootstrap();
        }
        let dropped = std::mem::take(&mut self.overlay.candidates_dropped);
        self.counters.add(PeeringCounter::CandidatesDropped, dropped);
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.on_kad(event),
            SwarmEvent::Behaviour(BehaviourEvent::Neighbor(event)) => self.on_neighbor(event),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                let kad = &mut self.swarm.behaviour_mut().kad;
                for address in dialable(info.listen_addrs) {
                    kad.add_address(&peer_id, address);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { connection, result: Err(ping::Failure::Timeout), .. })) => {
                self.counters.add(PeeringCounter::PingTimeouts, 1);
                self.swarm.close_connection(connection);
            }
            SwarmEvent::ConnectionEstablished { connection_id, endpoint, .. } => {
                if let Some(ip) = ip_of(endpoint.get_remote_address()) {
                    self.connection_ips.insert(connection_id, ip);
                }
            }
            SwarmEvent::ConnectionClosed { connection_id, peer_id, num_established, .. } => {
                self.connection_ips.remove(&connection_id);
                if num_established == 0 {
                    self.peer_gone(peer_id);
                }
            }
            SwarmEvent::NewListenAddr { address, .. } if self.config.external_addresses.is_empty() => {
                self.swarm.add_external_address(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } if self.config.external_addresses.is_empty() => {
                self.swarm.remove_external_address(&address);
            }
            _ => {}
        }
    }

    /// `peer`'s last connection closed: its client links go, its neighbor links wait out
    /// their grace period.
    fn peer_gone(&mut self, peer: PeerId) {
        let parts: Vec<StreamPartKey> = self.clients.keys().filter(|(client, _)| *client == peer).map(|(_, part)| *part).collect();
        for part in parts {
            self.remove_client_link(peer, part);
        }
        self.overlay.peer_disconnected(&peer, Instant::now());
    }

    /// Whether a dataplane endpoint a peer named on `connection` may be used: its IP is the
    /// one the connection comes from, unless the check is off (`trust_peer_endpoints`).
    /// Otherwise a peer could point our dataplane at someone else's address.
    fn endpoint_allowed(&self, connection: ConnectionId, endpoint: &Endpoint) -> bool {
        if self.config.trust_peer_endpoints {
            return true;
        }
        let allowed = self.connection_ips.get(&connection).is_some_and(|ip| same_ip(*ip, endpoint.address.ip()));
        if !allowed {
            self.counters.add(PeeringCounter::EndpointMismatches, 1);
        }
        allowed
    }

    fn on_kad(&mut self, event: kad::Event) {
        let kad::Event::OutboundQueryProgressed { id, result, stats, step } = event else { return };
        let Some(part) = self.queries.get(&id).copied() else { return };
        if step.last {
            self.queries.remove(&id);
        }
        match result {
            QueryResult::GetProviders(result) => {
                if let Ok(GetProvidersOk::FoundProviders { providers, .. }) = result {
                    self.overlay.add_candidates(&part, providers, Instant::now());
                    self.propose(part, Instant::now());
                }
                if step.last {
                    if let Some(discovery) = self.discovery.get_mut(&part) {
                        discovery.lookup = None;
                    }
                }
            }
            QueryResult::StartProviding(result) => {
                if let Some(discovery) = self.discovery.get_mut(&part) {
                    discovery.announced = result.is_ok() && stats.num_successes() > 0;
                }
            }
            _ => {}
        }
    }

    fn on_neighbor(&mut self, event: request_response::Event<Request, Response>) {
        use request_response::{Event, Message};
        match event {
            Event::Message { peer, connection_id, message: Message::Request { request_id, request, channel } } => {
                let mut events = Vec::new();
                let response = match request {
                    Request::Propose(propose) if !self.endpoint_allowed(connection_id, &propose.endpoint) => {
                        self.counters.add(PeeringCounter::ProposalsReceived, 1);
                        Response::Refuse(RefuseReason::Invalid)
                    }
                    Request::Propose(propose) => {
                        self.counters.add(PeeringCounter::ProposalsReceived, 1);
                        let accepting = self.accepting();
                        let response = self.overlay.handle_propose(peer, &propose, accepting, Instant::now(), &mut events);
                        match response {
                            Response::Accept(accept) => {
                                self.accepted.insert(request_id, (StreamPartKey(propose.part), peer, accept.link_id));
                            }
                            _ => self.counters.add(PeeringCounter::RefusalsSent, 1),
                        }
                        response
                    }
                    Request::Leave(leave) => {
                        self.counters.add(PeeringCounter::LeavesReceived, 1);
                        self.overlay.handle_leave(peer, &leave, Instant::now(), &mut events)
                    }
                    Request::ClientLink(request) => self.grant_client_link(peer, &request, request_id),
                };
                self.emit(events);
                if self.swarm.behaviour_mut().neighbor.send_response(channel, response).is_err() {
                    self.accept_lost(request_id);
                }
            }
            Event::Message { connection_id, message: Message::Response { request_id, response }, .. } => {
                let Some(Outstanding::Propose { part, peer, local_link_id }) = self.outstanding.remove(&request_id) else { return };
                let counter = match response {
                    Response::Accept(_) => PeeringCounter::ProposalsAccepted,
                    _ => PeeringCounter::ProposalsRefused,
                };
                self.counters.add(counter, 1);
                let mut events = Vec::new();
                // An Accept naming an endpoint elsewhere than the connection's IP counts as
                // a refusal here; the peer, which made the link, is told to drop it.
                let (response, mut leave) = match response {
                    Response::Accept(accept) if !self.endpoint_allowed(connection_id, &accept.endpoint) => {
                        (Response::Refuse(RefuseReason::Invalid), Some(Leave { part: part.0, link_id: local_link_id }))
                    }
                    other => (other, None),
                };
                leave = leave.or(self.overlay.handle_reply(&part, peer, local_link_id, &response, Instant::now(), &mut events));
                self.emit(events);
                if let Some(leave) = leave {
                    let request = self.swarm.behaviour_mut().neighbor.send_request(&peer, Request::Leave(leave));
                    self.outstanding.insert(request, Outstanding::Leave);
                }
            }
            Event::OutboundFailure { request_id, .. } => {
                if let Some(Outstanding::Propose { part, peer, local_link_id }) = self.outstanding.remove(&request_id) {
                    self.counters.add(PeeringCounter::ProposalsFailed, 1);
                    self.overlay.proposal_failed(&part, &peer, local_link_id, Instant::now());
                }
            }
            Event::InboundFailure { request_id, .. } => {
                self.counters.add(PeeringCounter::InboundFailures, 1);
                self.accept_lost(request_id);
            }
            Event::ResponseSent { request_id, .. } => {
                self.accepted.remove(&request_id);
                self.granted.remove(&request_id);
            }
        }
    }

    /// An Accept we made never reached the peer: drop the neighbor it created.
    fn accept_lost(&mut self, request_id: InboundRequestId) {
        if let Some((peer, part, link_id)) = self.granted.remove(&request_id) {
            if self.clients.get(&(peer, part)) == Some(&link_id) {
                self.remove_client_link(peer, part);
            }
        }
        let Some((part, peer, local_link_id)) = self.accepted.remove(&request_id) else { return };
        let mut events = Vec::new();
        self.overlay.drop_neighbor(&part, &peer, local_link_id, &mut events);
        self.emit(events);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: another host's loopback addresses never reach the routing table, unless they are
    // all it has (a node on this host, as in the tests); the count is bounded.
    #[test]
    fn loopback_addresses_only_when_nothing_else() {
        let parse = |text: &str| text.parse::<Multiaddr>().unwrap();
        let mixed = vec![parse("/ip4/127.0.0.1/tcp/1"), parse("/ip4/192.0.2.5/tcp/1"), parse("/ip6/::1/udp/1/quic-v1")];
        assert_eq!(dialable(mixed), vec![parse("/ip4/192.0.2.5/tcp/1")]);
        let local = vec![parse("/ip4/127.0.0.1/tcp/1"), parse("/ip4/127.0.0.1/udp/1/quic-v1")];
        assert_eq!(dialable(local.clone()), local);
        let many: Vec<Multiaddr> = (1..100).map(|port| parse(&format!("/ip4/192.0.2.5/tcp/{port}"))).collect();
        assert_eq!(dialable(many).len(), IDENTIFY_ADDRESSES_MAX);
    }
}
