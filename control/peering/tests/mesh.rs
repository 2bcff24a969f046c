//! Real libp2p over loopback (127.0.0.1 only, no mocks): several peering nodes in one
//! process, each with its own thread, swarm and sockets. Every test stops by itself within
//! its deadline (at most 60 s each).

use crossbeam_channel::Receiver;
use libp2p::{Multiaddr, PeerId};
use runnel_peering::wire::{ClientAccess, RefuseReason};
use runnel_peering::{
    ClientAdmission, Endpoint, Identity, Peering, PeeringConfig, PeeringCounter, PeeringError, PeeringEvent, PeeringHandle,
};
use runnel_proto::stream::StreamPartKey;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PART: StreamPartKey = StreamPartKey([0x50; 32]);
const PART_A: StreamPartKey = StreamPartKey([0xa0; 32]);
const PART_B: StreamPartKey = StreamPartKey([0xb0; 32]);
const DEADLINE: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    TcpAndQuic,
    QuicOnly,
}

/// One link as one side's events describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Link {
    local_link_id: u32,
    remote_link_id: u32,
    key: [u8; 32],
    remote_port: u16,
}

/// A running node and the neighbor view its events built.
struct Node {
    handle: Option<PeeringHandle>,
    events: Receiver<PeeringEvent>,
    peer: PeerId,
    port: u16,
    links: HashMap<(StreamPartKey, PeerId), Link>,
    downs: Vec<(StreamPartKey, PeerId)>,
    client_ups: Vec<runnel_peering::ClientLinkUp>,
    client_downs: Vec<runnel_peering::ClientLinkDown>,
}

impl Node {
    fn start(index: u16, bootstrap: Vec<Multiaddr>, transport: Transport) -> Self {
        Self::start_claiming(index, bootstrap, transport, "127.0.0.1", None)
    }

    /// A node that names `dataplane_ip` as its dataplane's address (listening on 127.0.0.1)
    /// and checks client links with `admission`.
    fn start_claiming(
        index: u16,
        bootstrap: Vec<Multiaddr>,
        transport: Transport,
        dataplane_ip: &str,
        admission: Option<Arc<dyn ClientAdmission>>,
    ) -> Self {
        let port = 30_000 + index;
        let dataplane = Endpoint { address: format!("{dataplane_ip}:{port}").parse().unwrap(), shards: 2 };
        let mut config = PeeringConfig::new(Identity::generate(), dataplane);
        config.listen = match transport {
            Transport::TcpAndQuic => vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap(), "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
            Transport::QuicOnly => vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
        };
        config.bootstrap = bootstrap;
        config.lookup_interval = Duration::from_millis(500);
        config.retry_after_refusal = Duration::from_secs(1);
        config.retry_after_failure = Duration::from_secs(2);
        config.request_timeout = Duration::from_secs(5);
        config.quic_idle_timeout = Duration::from_secs(3);
        // No dataplane here reports a dead neighbor silent: the grace alone drops it.
        config.disconnected_grace = Duration::from_secs(2);
        config.admission = admission;
        let (handle, events) = Peering::spawn(config).expect("peering starts");
        let peer = handle.local_peer_id();
        Self {
            handle: Some(handle),
            events,
            peer,
            port,
            links: HashMap::new(),
            downs: Vec::new(),
            client_ups: Vec::new(),
            client_downs: Vec::new(),
        }
    }

    fn handle(&self) -> &PeeringHandle {
        self.handle.as_ref().expect("node running")
    }

    fn address(&self, tcp: bool) -> Multiaddr {
        let addresses = self.handle().listen_addrs().unwrap();
        let wanted = if tcp { "/tcp/" } else { "/quic-v1" };
        addresses.into_iter().find(|address| address.to_string().contains(wanted)).expect("a listen address of that transport")
    }

    /// Applies every waiting event to the view, checking each makes sense.
    fn drain(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            match event {
                PeeringEvent::NeighborUp(up) => {
                    let link = Link {
                        local_link_id: up.local_link_id,
                        remote_link_id: up.remote_link_id,
                        key: *up.key.expose(),
                        remote_port: up.remote_endpoint.port(),
                    };
                    assert_eq!(up.remote_shards, 2);
                    let old = self.links.insert((up.part, up.peer), link);
                    assert!(old.is_none(), "NeighborUp for a neighbor that is up already (no NeighborDown first)");
                }
                PeeringEvent::NeighborDown(down) => {
                    let link = self.links.remove(&(down.part, down.peer)).expect("NeighborDown for a neighbor that is not up");
                    assert_eq!(link.local_link_id, down.local_link_id);
                    self.downs.push((down.part, down.peer));
                }
                PeeringEvent::ClientLinkUp(up) => self.client_ups.push(up),
                PeeringEvent::ClientLinkDown(down) => self.client_downs.push(down),
            }
        }
    }

    fn degree(&self, part: StreamPartKey) -> usize {
        self.links.keys().filter(|(linked, _)| *linked == part).count()
    }

    fn neighbors(&self, part: StreamPartKey) -> Vec<PeerId> {
        self.links.keys().filter(|(linked, _)| *linked == part).map(|(_, peer)| *peer).collect()
    }
}

/// Every link seen on one side has its mirror on the other: same key, swapped link ids,
/// each side's dataplane port. Returns what is missing, if anything.
fn asymmetry(nodes: &[Node]) -> Option<String> {
    let by_peer: HashMap<PeerId, &Node> = nodes.iter().filter(|node| node.handle.is_some()).map(|node| (node.peer, node)).collect();
    for node in by_peer.values() {
        for ((part, peer), link) in &node.links {
            let Some(other) = by_peer.get(peer) else { return Some(format!("{} links to stopped {peer}", node.peer)) };
            let Some(mirror) = other.links.get(&(*part, node.peer)) else {
                return Some(format!("{} has {peer} as neighbor, not the other way round", node.peer));
            };
            assert_eq!(mirror.key, link.key, "both sides of a link derive the same key");
            assert_eq!((mirror.local_link_id, mirror.remote_link_id), (link.remote_link_id, link.local_link_id));
            assert_eq!((mirror.remote_port, link.remote_port), (node.port, other.port));
        }
    }
    None
}

/// Drains every node until `done` holds and the views are symmetric, or panics at `deadline`.
fn wait_until(nodes: &mut [Node], deadline: Instant, what: &str, done: impl Fn(&[Node]) -> bool) {
    loop {
        for node in nodes.iter_mut() {
            node.drain();
        }
        if done(nodes) && asymmetry(nodes).is_none() {
            return;
        }
        if Instant::now() > deadline {
            let degrees: Vec<usize> = nodes.iter().map(|node| node.links.len()).collect();
            panic!("{what}: not reached in time; links per node {degrees:?}; {:?}", asymmetry(nodes));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Node 0 is the bootstrap; the others start from its address.
fn start_nodes(count: u16, transport: Transport) -> Vec<Node> {
    let bootstrap = Node::start(0, Vec::new(), transport);
    let address = bootstrap.address(transport == Transport::TcpAndQuic);
    let mut nodes = vec![bootstrap];
    nodes.extend((1..count).map(|index| Node::start(index, vec![address.clone()], transport)));
    nodes
}

fn live(nodes: &[Node]) -> impl Iterator<Item = &Node> {
    nodes.iter().filter(|node| node.handle.is_some())
}

/// Six nodes join one part and mesh; prints how long it took.
fn six_node_mesh() -> Vec<Node> {
    let spawned = Instant::now();
    let mut nodes = start_nodes(6, Transport::TcpAndQuic);
    let started = Instant::now();
    for node in &nodes {
        node.handle().join(PART).unwrap();
    }
    let wanted = 3.min(nodes.len() - 1);
    wait_until(&mut nodes, started + DEADLINE, "six nodes meshing", |nodes| {
        nodes.iter().all(|node| node.degree(PART) >= wanted && node.degree(PART) <= 8)
    });
    eprintln!(
        "six nodes: >= 3 neighbors each {:.2} s after the joins, {:.2} s after the first spawn",
        started.elapsed().as_secs_f64(),
        spawned.elapsed().as_secs_f64()
    );
    nodes
}

// Goal: six nodes, one of them the bootstrap of the others, all join one part: each gets
// at least min(3, n - 1) neighbors and at most the maximum, and every NeighborUp has its
// mirror on the other side (same key, swapped link ids).
#[test]
fn six_nodes_mesh_with_matching_links() {
    let mut nodes = six_node_mesh();
    for node in &mut nodes {
        // Links may still be forming (up to the target of 4): compare a snapshot with the
        // events up to it (the peering thread queues events before it answers a command).
        let settle_by = Instant::now() + Duration::from_secs(10);
        let reported = loop {
            let reported = node.handle().neighbors(PART).unwrap();
            node.drain();
            let mut peers: Vec<PeerId> = reported.iter().map(|neighbor| neighbor.peer).collect();
            let mut seen = node.neighbors(PART);
            peers.sort();
            seen.sort();
            if peers == seen {
                break reported;
            }
            assert!(Instant::now() < settle_by, "neighbors() never agreed with the events: {peers:?} vs {seen:?}");
            std::thread::sleep(Duration::from_millis(50));
        };
        for neighbor in reported {
            let link = &node.links[&(PART, neighbor.peer)];
            assert_eq!((neighbor.local_link_id, neighbor.remote_link_id), (link.local_link_id, link.remote_link_id));
            assert!(neighbor.local_link_id >= 0x8000_0000, "peering ids come from the upper half");
        }
        assert!(node.handle().counter(PeeringCounter::NeighborsUp) >= 3);
        assert!(node.handle().counter(PeeringCounter::ProviderLookups) >= 1);
    }
}

/// Shuts one non-bootstrap node down (gracefully or not) and checks the healing.
fn heals_after_losing_a_node(graceful: bool) {
    let mut nodes = six_node_mesh();
    let victim = 3;
    let victim_peer = nodes[victim].peer;
    let had_victim: Vec<usize> = (0..nodes.len()).filter(|&i| i != victim && nodes[i].neighbors(PART).contains(&victim_peer)).collect();
    assert!(!had_victim.is_empty());
    let handle = nodes[victim].handle.take().unwrap();
    let stopped = Instant::now();
    if graceful {
        handle.shutdown();
    } else {
        handle.abort();
    }
    wait_until(&mut nodes, stopped + Duration::from_secs(10), "survivors back to >= 3 neighbors", |nodes| {
        live(nodes).all(|node| !node.neighbors(PART).contains(&victim_peer) && node.degree(PART) >= 3)
    });
    for &i in &had_victim {
        assert!(nodes[i].downs.contains(&(PART, victim_peer)), "node {i} got NeighborDown for the stopped node");
    }
    eprintln!(
        "{}: {} neighbors saw NeighborDown; all survivors back to >= 3 neighbors after {:.2} s",
        if graceful { "shutdown" } else { "abort" },
        had_victim.len(),
        stopped.elapsed().as_secs_f64()
    );
}

// Goal: a node that shuts down (sending Leave) is dropped by its neighbors, and each
// survivor is back to at least 3 neighbors within 10 s.
#[test]
fn neighbors_replace_a_node_that_shuts_down() {
    heals_after_losing_a_node(true);
}

// Goal: the same when the node vanishes without a word (its connections just close, as
// when the process is killed): replacements are sought at once, and its link goes when
// `disconnected_grace` has passed (a dataplane would report it silent sooner).
#[test]
fn neighbors_replace_a_node_that_vanishes() {
    heals_after_losing_a_node(false);
}

// Goal: two parts with disjoint node sets, over QUIC only: no link is ever made for the
// other part, and no node links to a node of the other set.
#[test]
fn disjoint_parts_stay_apart_over_quic() {
    let mut nodes = start_nodes(7, Transport::QuicOnly);
    let started = Instant::now();
    // Node 0 is only the bootstrap; 1..=3 join A, 4..=6 join B.
    for (index, node) in nodes.iter().enumerate().skip(1) {
        node.handle().join(if index <= 3 { PART_A } else { PART_B }).unwrap();
    }
    let set_of = |nodes: &[Node], part: StreamPartKey| -> Vec<PeerId> {
        nodes
            .iter()
            .enumerate()
            .filter(|(index, _)| (*index >= 1 && *index <= 3) == (part == PART_A) && *index >= 1)
            .map(|(_, node)| node.peer)
            .collect()
    };
    wait_until(&mut nodes, started + DEADLINE, "two disjoint meshes", |nodes| nodes.iter().skip(1).all(|node| node.links.len() >= 2));
    let meshed_s = started.elapsed().as_secs_f64();
    // Let discovery keep running a while: still nothing may cross.
    let settle = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle {
        for node in nodes.iter_mut() {
            node.drain();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (a, b) = (set_of(&nodes, PART_A), set_of(&nodes, PART_B));
    assert!(nodes[0].links.is_empty(), "the bootstrap joined nothing and has no neighbors");
    for (index, node) in nodes.iter().enumerate().skip(1) {
        let (own_part, own_set) = if index <= 3 { (PART_A, &a) } else { (PART_B, &b) };
        for (part, peer) in node.links.keys() {
            assert_eq!(*part, own_part, "node {index} has a link for a part it never joined");
            assert!(own_set.contains(peer), "node {index} links to a node of the other part");
        }
        if !node.downs.is_empty() {
            let counters: Vec<(&str, u64)> = PeeringCounter::ALL.iter().map(|c| (c.name(), node.handle().counter(*c))).collect();
            panic!("node {index} saw NeighborDown {:?}; counters {counters:?}", node.downs);
        }
    }
    eprintln!("disjoint parts over QUIC: both meshes complete {meshed_s:.2} s after the joins; nothing crossed in 2 s more");
}

// Goal: leaving a part tells the neighbors (they get NeighborDown), emits NeighborDown
// locally for every link, and the node stops being found for it.
#[test]
fn leave_drops_every_link_on_both_sides() {
    let mut nodes = start_nodes(4, Transport::TcpAndQuic);
    let started = Instant::now();
    for node in &nodes {
        node.handle().join(PART).unwrap();
    }
    wait_until(&mut nodes, started + DEADLINE, "four nodes meshing", |nodes| nodes.iter().all(|node| node.degree(PART) >= 2));
    let leaver = nodes[2].peer;
    nodes[2].handle().leave(PART).unwrap();
    wait_until(&mut nodes, Instant::now() + Duration::from_secs(10), "everyone dropping the leaver", |nodes| {
        nodes[2].links.is_empty() && nodes.iter().all(|node| !node.neighbors(PART).contains(&leaver))
    });
    assert!(nodes[2].handle().neighbors(PART).unwrap().is_empty());
    let left_counted: u64 = nodes.iter().map(|node| node.handle().counter(PeeringCounter::LeavesReceived)).sum();
    assert!(left_counted >= 1);
}

// Goal: a client (not a node) asks a node for a client link over TCP and over QUIC: both
// ends hold the same key (never sent), the node reports the client's PeerId and the link id
// it granted, its dataplane endpoint reaches the client; asking again for the same part
// replaces the link; dropping the session (closing the connection) removes every link.
#[test]
fn client_links_are_granted_replaced_and_removed() {
    use runnel_peering::client::ClientSession;
    let mut nodes = start_nodes(1, Transport::TcpAndQuic);
    nodes[0].handle().join(PART).unwrap();
    for tcp in [true, false] {
        let node_address = nodes[0].address(tcp);
        let identity = Identity::generate();
        let client_peer = identity.peer_id();
        let session = ClientSession::open(identity.clone(), &node_address, PART, ClientAccess::Publish, Duration::from_secs(10))
            .expect("a client link");
        assert!(session.connected());
        let grant = session.grant();
        assert_eq!((grant.endpoint.address.port(), grant.endpoint.shards, grant.node), (nodes[0].port, 2, nodes[0].peer));
        wait_until(&mut nodes, Instant::now() + Duration::from_secs(10), "the node's ClientLinkUp", |nodes| {
            nodes[0].client_ups.iter().any(|up| up.peer == client_peer)
        });
        let up = nodes[0].client_ups.iter().find(|up| up.peer == client_peer).unwrap();
        assert_eq!((up.part, up.link_id, up.key.expose()), (PART, grant.link_id, grant.key.expose()));
        let first_link = up.link_id;
        // The same client asking again for the same part: the new link replaces the old.
        let again = ClientSession::open(identity, &node_address, PART, ClientAccess::Subscribe, Duration::from_secs(10)).unwrap();
        assert_ne!(again.grant().link_id, first_link);
        wait_until(&mut nodes, Instant::now() + Duration::from_secs(10), "the old link's ClientLinkDown", |nodes| {
            nodes[0].client_downs.iter().any(|down| down.link_id == first_link)
        });
        let second_link = again.grant().link_id;
        // A second request from another client for another part gets its own link.
        let other =
            ClientSession::open(Identity::generate(), &node_address, PART_A, ClientAccess::Subscribe, Duration::from_secs(10)).unwrap();
        assert_ne!(other.grant().link_id, first_link);
        assert_ne!(other.grant().key.expose(), grant.key.expose());
        drop(other);
        drop(again);
        drop(session);
        wait_until(&mut nodes, Instant::now() + Duration::from_secs(10), "ClientLinkDown for every link", |nodes| {
            nodes[0].client_downs.iter().any(|down| down.link_id == second_link && down.peer == client_peer)
                && nodes[0].client_downs.iter().any(|down| down.part == PART_A)
        });
        nodes[0].client_ups.clear();
        nodes[0].client_downs.clear();
    }
    // A node address without /p2p is refused with a clear message.
    let bare: Multiaddr = "/ip4/127.0.0.1/tcp/9".parse().unwrap();
    let error =
        ClientSession::open(Identity::generate(), &bare, PART, ClientAccess::Publish, Duration::from_secs(1)).err().expect("refused");
    assert!(error.to_string().contains("/p2p/"), "{error}");
    assert_eq!(nodes[0].handle().counter(PeeringCounter::ClientLinksGranted), 6);
}

/// Admits only `allowed` to subscribe and anyone to publish, for `PART` alone.
#[derive(Debug)]
struct OnlySubscriber {
    allowed: [u8; 20],
}

impl ClientAdmission for OnlySubscriber {
    fn admit(&self, client: [u8; 20], part: StreamPartKey, access: ClientAccess) -> Result<(), RefuseReason> {
        if part != PART {
            return Err(RefuseReason::UnknownStream);
        }
        match access {
            ClientAccess::Publish => Ok(()),
            ClientAccess::Subscribe if client == self.allowed => Ok(()),
            ClientAccess::Subscribe => Err(RefuseReason::NotPermitted),
        }
    }
}

// Goal: a node with an admission check asks it with the account behind the client's PeerId
// and the access the client asked for, refuses with the check's reason (a clear error at the
// client, counted at the node), and grants what it admits.
#[test]
fn client_links_are_checked_against_the_admission() {
    use runnel_peering::client::ClientSession;
    let allowed = Identity::generate();
    let admission: Arc<dyn ClientAdmission> = Arc::new(OnlySubscriber { allowed: allowed.address() });
    let node = Node::start_claiming(45, Vec::new(), Transport::TcpAndQuic, "127.0.0.1", Some(admission));
    node.handle().join(PART).unwrap();
    let address = node.address(true);
    let timeout = Duration::from_secs(10);
    let stranger = Identity::generate();
    let refused = ClientSession::open(stranger.clone(), &address, PART, ClientAccess::Subscribe, timeout).err().expect("refused");
    assert!(matches!(refused, PeeringError::Refused { reason: RefuseReason::NotPermitted, access: ClientAccess::Subscribe }), "{refused}");
    assert!(refused.to_string().contains("Subscribe permission"), "{refused}");
    let unknown = ClientSession::open(stranger.clone(), &address, PART_A, ClientAccess::Publish, timeout).err().expect("refused");
    assert!(matches!(unknown, PeeringError::Refused { reason: RefuseReason::UnknownStream, .. }), "{unknown}");
    let publisher = ClientSession::open(stranger, &address, PART, ClientAccess::Publish, timeout).expect("publishing is open");
    let subscriber = ClientSession::open(allowed, &address, PART, ClientAccess::Subscribe, timeout).expect("the allowed subscriber");
    assert!(publisher.connected() && subscriber.connected());
    assert_eq!(node.handle().counter(PeeringCounter::ClientLinksNotPermitted), 2);
    assert_eq!(node.handle().counter(PeeringCounter::ClientLinksRefused), 2);
    assert_eq!(node.handle().counter(PeeringCounter::ClientLinksGranted), 2);
    drop(node);
}

// Goal: a peer that names a dataplane endpoint off the IP its connection comes from (here
// 127.0.0.2 while it connects from 127.0.0.1) gets no link, whether it proposes or accepts,
// and the check is counted; an honest third node links to the same bootstrap as usual.
#[test]
fn a_peer_naming_someone_elses_dataplane_address_gets_no_link() {
    let bootstrap = Node::start(40, Vec::new(), Transport::TcpAndQuic);
    let address = bootstrap.address(true);
    let mut nodes = vec![bootstrap];
    nodes.push(Node::start_claiming(41, vec![address.clone()], Transport::TcpAndQuic, "127.0.0.2", None));
    nodes.push(Node::start(42, vec![address], Transport::TcpAndQuic));
    for node in &nodes {
        node.handle().join(PART).unwrap();
    }
    let (liar, honest) = (nodes[1].peer, nodes[2].peer);
    wait_until(&mut nodes, Instant::now() + DEADLINE, "the honest nodes linked", |nodes| nodes[0].neighbors(PART).contains(&honest));
    let deadline = Instant::now() + DEADLINE;
    while nodes[0].handle().counter(PeeringCounter::EndpointMismatches) + nodes[2].handle().counter(PeeringCounter::EndpointMismatches) == 0
    {
        assert!(Instant::now() < deadline, "the liar's endpoint was never checked");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its proposals and Accepts keep failing; give it a few rounds.
    std::thread::sleep(Duration::from_secs(3));
    for node in &mut nodes {
        node.drain();
    }
    assert!(!nodes[0].neighbors(PART).contains(&liar) && !nodes[2].neighbors(PART).contains(&liar), "an honest node linked to the liar");
}
