//! The crate's public face: [`PeeringConfig`], [`Peering::spawn`], the [`PeeringHandle`]
//! and the [`PeeringEvent`]s.

use crate::driver;
use crate::identity::Identity;
pub use crate::overlay::NeighborInfo;
use crate::overlay::OverlayConfig;
use crate::wire::{ClientAccess, Endpoint, RefuseReason};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use runnel_keystore::Secret;
use runnel_proto::stream::StreamPartKey;
use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a [`PeeringHandle`] call waits for the peering thread's answer.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`Peering::spawn`] waits for the listeners to come up.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Commands waiting for the peering thread; a full queue is [`PeeringError::Busy`].
pub const COMMAND_QUEUE_LENGTH: usize = 256;

/// Who may have a client link. A node that follows the chain answers from the stream
/// registry (its cached copy: this is called on the peering thread and must not block);
/// without one every client is admitted.
pub trait ClientAdmission: Send + Sync + fmt::Debug {
    /// `Ok` to grant `client` (its Ethereum account, proved by its libp2p key) a link to
    /// publish to or subscribe to `part`; otherwise the reason to refuse with.
    fn admit(&self, client: [u8; 20], part: StreamPartKey, access: ClientAccess) -> Result<(), RefuseReason>;
}

/// Everything the peering thread needs. [`PeeringConfig::new`] fills in the defaults.
#[derive(Clone, Debug)]
pub struct PeeringConfig {
    pub identity: Identity,
    /// libp2p listen addresses, e.g. `/ip4/0.0.0.0/tcp/7600` and `/ip4/0.0.0.0/udp/7600/quic-v1`.
    pub listen: Vec<Multiaddr>,
    /// Addresses to announce (in provider records and identify); empty = the listen
    /// addresses as bound.
    pub external_addresses: Vec<Multiaddr>,
    /// Peers to start from: multiaddrs ending in `/p2p/<PeerId>`.
    pub bootstrap: Vec<Multiaddr>,
    /// This node's dataplane: what neighbors will send their UDP datagrams to.
    pub dataplane: Endpoint,
    /// Neighbors a node seeks per stream part (DESIGN §1: 4).
    pub degree_target: usize,
    /// Neighbors a node accepts per stream part (DESIGN §1: 8).
    pub degree_max: usize,
    pub stream_parts_max: usize,
    /// Providers kept per part to propose to.
    pub candidates_per_part_max: usize,
    /// Link ids this node hands out for neighbor links; by default the upper half of u32,
    /// leaving the lower half to links from config files and client links.
    pub link_ids: RangeInclusive<u32>,
    /// A neighbor request (Propose, Leave) without an answer in this time has failed.
    pub request_timeout: Duration,
    /// Wait before proposing again to a peer that refused.
    pub retry_after_refusal: Duration,
    /// Wait before proposing again to a peer whose proposal failed or that disconnected.
    pub retry_after_failure: Duration,
    /// How long a neighbor whose connection closed keeps its dataplane link (it may be a
    /// control process restarting beside a dataplane that forwards); replacements are
    /// sought at once. A dead neighbor goes sooner, when the dataplane finds it silent.
    pub disconnected_grace: Duration,
    /// Use the dataplane endpoint a neighbor names even when its IP is not the one its
    /// connection comes from (multi-homed hosts with a separate data network). Off by
    /// default: a peer could otherwise point our dataplane at a bystander's address.
    pub trust_peer_endpoints: bool,
    /// How often a part below its target degree starts a provider lookup.
    pub lookup_interval: Duration,
    /// Kademlia query timeout (lookups, provider announcements).
    pub query_timeout: Duration,
    pub provider_record_ttl: Duration,
    pub provider_publication_interval: Duration,
    /// A connection no protocol uses (and not to a neighbor) closes after this.
    pub idle_connection_timeout: Duration,
    pub ping_interval: Duration,
    /// A QUIC connection that hears nothing for this long is closed (a killed QUIC peer sends
    /// no close; TCP peers are noticed by the kernel's FIN/RST or by a ping timeout).
    pub quic_idle_timeout: Duration,
    /// Established connections, all peers together.
    pub connections_max: u32,
    /// Client links (`runnel pub/sub --node`) this node holds at once; more are refused Busy.
    pub clients_max: usize,
    /// Link ids for client links: by default the lower half of u32 above the small ids
    /// config files use, apart from neighbor ids.
    pub client_link_ids: RangeInclusive<u32>,
    /// Events waiting for the consumer. While it is full the node takes no new neighbors
    /// (it refuses with Busy and proposes to no one); NeighborDown events wait in the
    /// peering thread, at most one per neighbor.
    pub event_queue_length: usize,
    /// Checks each client link request; `None` admits every client.
    pub admission: Option<Arc<dyn ClientAdmission>>,
}

impl PeeringConfig {
    /// Defaults: listen on all IPv4 interfaces, TCP and QUIC, ports chosen by the system.
    pub fn new(identity: Identity, dataplane: Endpoint) -> Self {
        Self {
            identity,
            listen: vec!["/ip4/0.0.0.0/tcp/0".parse().expect("valid"), "/ip4/0.0.0.0/udp/0/quic-v1".parse().expect("valid")],
            external_addresses: Vec::new(),
            bootstrap: Vec::new(),
            dataplane,
            degree_target: 4,
            degree_max: 8,
            stream_parts_max: 1024,
            candidates_per_part_max: 64,
            link_ids: 0x8000_0000..=u32::MAX,
            request_timeout: Duration::from_secs(10),
            retry_after_refusal: Duration::from_secs(5),
            retry_after_failure: Duration::from_secs(10),
            disconnected_grace: Duration::from_secs(15),
            trust_peer_endpoints: false,
            lookup_interval: Duration::from_secs(2),
            query_timeout: Duration::from_secs(20),
            provider_record_ttl: Duration::from_secs(30 * 60),
            provider_publication_interval: Duration::from_secs(10 * 60),
            idle_connection_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(15),
            quic_idle_timeout: Duration::from_secs(10),
            connections_max: 512,
            clients_max: 256,
            client_link_ids: 0x0001_0000..=0x7fff_ffff,
            event_queue_length: 1024,
            admission: None,
        }
    }

    /// Checks the values that can be wrong; the message names the field and the fix.
    pub fn validate(&self) -> Result<(), PeeringError> {
        let fail = |message: String| Err(PeeringError::Config(message));
        if self.degree_target == 0 || self.degree_max < self.degree_target {
            return fail(format!(
                "degree_target {} and degree_max {}: need 1 <= degree_target <= degree_max",
                self.degree_target, self.degree_max
            ));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(600)).contains(&self.quic_idle_timeout) {
            return fail(format!("quic_idle_timeout {:?} outside 100 ms..=600 s", self.quic_idle_timeout));
        }
        if self.listen.is_empty() {
            return fail("listen is empty: add e.g. /ip4/0.0.0.0/tcp/7600".into());
        }
        if self.stream_parts_max == 0 || self.event_queue_length == 0 || self.candidates_per_part_max == 0 {
            return fail("stream_parts_max, event_queue_length and candidates_per_part_max must be at least 1".into());
        }
        let ids = u64::from(*self.link_ids.end()) + 1 - u64::from(*self.link_ids.start());
        if self.link_ids.is_empty() || ids < self.overlay().link_ids_max() as u64 {
            return fail(format!(
                "link_ids {:?} holds fewer ids than stream_parts_max × (degree_max + 2 × degree_target) = {}: widen it",
                self.link_ids,
                self.overlay().link_ids_max()
            ));
        }
        let overlaps = self.client_link_ids.start() <= self.link_ids.end() && self.link_ids.start() <= self.client_link_ids.end();
        if self.client_link_ids.is_empty() || overlaps || self.clients_max == 0 {
            return fail(format!(
                "client_link_ids {:?} must be non-empty and apart from link_ids {:?}, and clients_max at least 1",
                self.client_link_ids, self.link_ids
            ));
        }
        crate::handshake::validate_endpoint(&self.dataplane)
            .map_err(|why| PeeringError::Config(format!("dataplane endpoint {:?}: {why}", self.dataplane)))?;
        self.bootstrap_peers().map(|_| ())
    }

    /// The bootstrap multiaddrs split into (PeerId, address without the `/p2p` part).
    pub fn bootstrap_peers(&self) -> Result<Vec<(PeerId, Multiaddr)>, PeeringError> {
        self.bootstrap
            .iter()
            .map(|address| {
                let mut address = address.clone();
                match address.pop() {
                    Some(Protocol::P2p(peer)) => Ok((peer, address)),
                    _ => Err(PeeringError::Config(format!("bootstrap address {address} does not end in /p2p/<PeerId>: add the peer's id"))),
                }
            })
            .collect()
    }

    pub(crate) fn overlay(&self) -> OverlayConfig {
        OverlayConfig {
            degree_target: self.degree_target,
            degree_max: self.degree_max,
            stream_parts_max: self.stream_parts_max,
            candidates_per_part_max: self.candidates_per_part_max,
            retry_after_refusal: self.retry_after_refusal,
            retry_after_failure: self.retry_after_failure,
            crossing_window: self.request_timeout,
            disconnected_grace: self.disconnected_grace,
            link_ids: self.link_ids.clone(),
        }
    }
}

/// A new neighbor for a stream part, with everything the dataplane's `AddLink` needs.
pub struct NeighborUp {
    pub part: StreamPartKey,
    pub peer: PeerId,
    /// The id this node's dataplane knows the link by (and expects in datagrams it receives).
    pub local_link_id: u32,
    /// The id the neighbor's dataplane knows the link by (to put in datagrams sent to it).
    pub remote_link_id: u32,
    /// The link key both sides derived; `Debug` shows `<redacted>`.
    pub key: Secret,
    /// The neighbor's shard 0 UDP address.
    pub remote_endpoint: SocketAddr,
    pub remote_shards: u16,
}

impl fmt::Debug for NeighborUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NeighborUp")
            .field("part", &self.part)
            .field("peer", &self.peer)
            .field("local_link_id", &self.local_link_id)
            .field("remote_link_id", &self.remote_link_id)
            .field("key", &self.key)
            .field("remote_endpoint", &self.remote_endpoint)
            .field("remote_shards", &self.remote_shards)
            .finish()
    }
}

/// A neighbor is gone (it disconnected, left, was replaced by a newer handshake, or this
/// node left the part or shut down): remove the link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeighborDown {
    pub part: StreamPartKey,
    pub peer: PeerId,
    pub local_link_id: u32,
}

/// A client (a publisher or subscriber that is not a node) got a client link: the
/// dataplane's `AddLink` with role client, one id both ways.
pub struct ClientLinkUp {
    pub part: StreamPartKey,
    /// The client's PeerId (a publisher's is its Ethereum key's).
    pub peer: PeerId,
    pub link_id: u32,
    /// What the client asked for and was admitted to: the dataplane binds the link to it.
    pub access: ClientAccess,
    /// `Debug` shows `<redacted>`.
    pub key: Secret,
}

impl fmt::Debug for ClientLinkUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientLinkUp")
            .field("part", &self.part)
            .field("peer", &self.peer)
            .field("link_id", &self.link_id)
            .field("access", &self.access)
            .field("key", &self.key)
            .finish()
    }
}

/// A client's libp2p connection closed (or it asked again for the same part): remove its link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientLinkDown {
    pub part: StreamPartKey,
    pub peer: PeerId,
    pub link_id: u32,
}

#[derive(Debug)]
pub enum PeeringEvent {
    NeighborUp(NeighborUp),
    NeighborDown(NeighborDown),
    ClientLinkUp(ClientLinkUp),
    ClientLinkDown(ClientLinkDown),
}

/// What went wrong; each says what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeeringError {
    Config(String),
    /// Building the swarm or a listener failed.
    Start(String),
    /// The command queue is full: the peering thread is behind; try again.
    Busy,
    /// The peering thread has stopped (shutdown, or it failed).
    Stopped,
    TooManyStreamParts {
        max: usize,
    },
    /// The node refused a client link ([`crate::client::ClientSession::open`]).
    Refused {
        reason: RefuseReason,
        access: ClientAccess,
    },
}

impl fmt::Display for PeeringError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeeringError::Config(message) => write!(f, "peering config: {message}"),
            PeeringError::Start(message) => write!(f, "peering could not start: {message}"),
            PeeringError::Busy => write!(f, "peering command queue full ({COMMAND_QUEUE_LENGTH}): retry shortly"),
            PeeringError::Stopped => write!(f, "the peering thread has stopped"),
            PeeringError::TooManyStreamParts { max } => {
                write!(f, "already joined stream_parts_max = {max} stream parts: leave one or raise the limit")
            }
            PeeringError::Refused { reason, access } => {
                let why = match reason {
                    RefuseReason::Busy => "busy (it holds its maximum of client links, or is behind): retry later",
                    RefuseReason::Invalid => "invalid request",
                    RefuseReason::NotPermitted => match access {
                        ClientAccess::Publish => {
                            "not permitted: the stream registry gives this account no live Publish permission on the stream \
                             (`runnel stream grant <stream> <account> publish`)"
                        }
                        ClientAccess::Subscribe => {
                            "not permitted: the stream registry gives this account no live Subscribe permission on the stream \
                             (`runnel stream grant <stream> <account> subscribe`)"
                        }
                    },
                    RefuseReason::UnknownStream => {
                        "unknown stream: the stream registry the node follows has no such stream part (`runnel stream create`)"
                    }
                    RefuseReason::Full | RefuseReason::NotJoined | RefuseReason::Conflict => "refused",
                };
                write!(f, "the node refused a client link to {}: {why}", access.name())
            }
        }
    }
}

impl std::error::Error for PeeringError {}

type Reply<T> = std::sync::mpsc::SyncSender<T>;

pub(crate) enum Command {
    Join(StreamPartKey, Reply<Result<(), PeeringError>>),
    Leave(StreamPartKey, Reply<()>),
    DropNeighbor(StreamPartKey, u32),
    Neighbors(StreamPartKey, Reply<Vec<NeighborInfo>>),
    ListenAddrs(Reply<Vec<Multiaddr>>),
    Shutdown,
    Abort,
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident = $text:literal,)*) => {
        /// The peering thread's counters (STYLE §8), read with [`PeeringHandle::counter`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum PeeringCounter { $($(#[$doc])* $name,)* }

        impl PeeringCounter {
            pub const ALL: &'static [PeeringCounter] = &[$(PeeringCounter::$name,)*];
            pub const COUNT: usize = Self::ALL.len();
            /// Prometheus-style name, `runnel_peering_…_total`.
            pub fn name(self) -> &'static str {
                match self { $(PeeringCounter::$name => concat!("runnel_peering_", $text, "_total"),)* }
            }
        }
    };
}

counters! {
    /// Proposals sent.
    ProposalsSent = "proposals_sent",
    /// Proposals of ours that the peer accepted.
    ProposalsAccepted = "proposals_accepted",
    /// Proposals of ours that the peer refused (any reason).
    ProposalsRefused = "proposals_refused",
    /// Proposals of ours without an answer (dial failure, timeout, stream error).
    ProposalsFailed = "proposals_failed",
    /// Proposals received.
    ProposalsReceived = "proposals_received",
    /// Proposals received and refused (full, not joined, conflict, invalid, busy).
    RefusalsSent = "refusals_sent",
    NeighborsUp = "neighbors_up",
    NeighborsDown = "neighbors_down",
    /// Leave messages received.
    LeavesReceived = "leaves_received",
    /// Inbound neighbor exchanges that failed after the request was read (the response could
    /// not be sent: timeout, stream or connection closed).
    InboundFailures = "inbound_failures",
    /// Neighbor messages, requests or responses, that did not decode (malformed, oversized,
    /// unknown version); the stream is dropped.
    MalformedMessages = "malformed_messages",
    /// Provider lookups started.
    ProviderLookups = "provider_lookups",
    /// Providers not kept as candidates because the part had enough.
    CandidatesDropped = "candidates_dropped",
    /// Times an event had to wait because the event queue was full.
    EventsDeferred = "events_deferred",
    /// Connections closed because pings timed out.
    PingTimeouts = "ping_timeouts",
    /// Neighbors dropped because the dataplane heard no heartbeat from them.
    NeighborsSilent = "neighbors_silent",
    /// Neighbors dropped because their connection stayed closed for the grace period.
    NeighborsExpired = "neighbors_expired",
    /// Proposals and Accepts refused because the dataplane endpoint they named is not on
    /// the IP their connection comes from (`trust_peer_endpoints` off).
    EndpointMismatches = "endpoint_mismatches",
    /// Client links granted (`runnel pub/sub --node`).
    ClientLinksGranted = "client_links_granted",
    /// Client link requests refused (full, busy, invalid key).
    ClientLinksRefused = "client_links_refused",
    /// Client link requests refused because the stream registry does not permit the client
    /// (or does not know the stream); also counted in `client_links_refused`.
    ClientLinksNotPermitted = "client_links_not_permitted",
    /// Client links removed (the client disconnected or asked again).
    ClientLinksDown = "client_links_down",
}

/// Counter values shared between the peering thread (writer) and the handle (reader).
#[derive(Debug, Default)]
pub(crate) struct Counters([AtomicU64; PeeringCounter::COUNT]);

impl Counters {
    pub(crate) fn add(&self, counter: PeeringCounter, count: u64) {
        self.0[counter as usize].fetch_add(count, Ordering::Relaxed);
    }

    pub(crate) fn get(&self, counter: PeeringCounter) -> u64 {
        self.0[counter as usize].load(Ordering::Relaxed)
    }
}

/// Starts peering.
pub struct Peering;

impl Peering {
    /// Starts the peering thread (one single-threaded tokio runtime owning the swarm), waits
    /// until every listen address is bound, and returns the handle and the event receiver.
    pub fn spawn(config: PeeringConfig) -> Result<(PeeringHandle, crossbeam_channel::Receiver<PeeringEvent>), PeeringError> {
        config.validate()?;
        let (commands, command_receiver) = tokio::sync::mpsc::channel(COMMAND_QUEUE_LENGTH);
        let (event_sender, events) = crossbeam_channel::bounded(config.event_queue_length);
        let (ready_sender, ready) = std::sync::mpsc::sync_channel(1);
        let counters = Arc::new(Counters::default());
        let local_peer_id = config.identity.peer_id();
        let thread_counters = counters.clone();
        let thread = std::thread::Builder::new()
            .name("runnel-peering".into())
            .spawn(move || driver::run(config, command_receiver, event_sender, ready_sender, thread_counters))
            .map_err(|error| PeeringError::Start(format!("cannot start the peering thread: {error}")))?;
        match ready.recv_timeout(START_TIMEOUT) {
            Ok(Ok(())) => Ok((PeeringHandle { commands, thread: Some(thread), local_peer_id, counters }, events)),
            Ok(Err(error)) => {
                let _ = thread.join();
                Err(error)
            }
            Err(_) => Err(PeeringError::Start(format!("listeners not up within {START_TIMEOUT:?}"))),
        }
    }
}

/// Talks to the peering thread. Every call is answered within [`REPLY_TIMEOUT`] or fails
/// with [`PeeringError::Stopped`]; none uses a tokio blocking primitive, so calls work from
/// any thread. Dropping the handle shuts peering down.
pub struct PeeringHandle {
    commands: tokio::sync::mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
    local_peer_id: PeerId,
    counters: Arc<Counters>,
}

impl fmt::Debug for PeeringHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeeringHandle({})", self.local_peer_id)
    }
}

impl PeeringHandle {
    fn ask<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, PeeringError> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.send(command(reply))?;
        answer.recv_timeout(REPLY_TIMEOUT).map_err(|_| PeeringError::Stopped)
    }

    fn send(&self, command: Command) -> Result<(), PeeringError> {
        self.commands.try_send(command).map_err(|error| match error {
            tokio::sync::mpsc::error::TrySendError::Full(_) => PeeringError::Busy,
            tokio::sync::mpsc::error::TrySendError::Closed(_) => PeeringError::Stopped,
        })
    }

    /// Joins a stream part: announces this node as a provider of its key and seeks
    /// neighbors for it until it has the target degree (and again whenever it drops below).
    pub fn join(&self, part: StreamPartKey) -> Result<(), PeeringError> {
        self.ask(|reply| Command::Join(part, reply))?
    }

    /// Leaves a stream part: stops providing it, tells each neighbor, and emits a
    /// NeighborDown for each.
    pub fn leave(&self, part: StreamPartKey) -> Result<(), PeeringError> {
        self.ask(|reply| Command::Leave(part, reply))
    }

    /// Drops the neighbor of `part` on `local_link_id` because the dataplane heard nothing
    /// from it (missed heartbeats, `WireEvent::NeighborSilent`): it gets a Leave, the node a
    /// NeighborDown, and the part seeks a replacement among the other candidates.
    pub fn drop_neighbor(&self, part: StreamPartKey, local_link_id: u32) -> Result<(), PeeringError> {
        self.send(Command::DropNeighbor(part, local_link_id))
    }

    pub fn neighbors(&self, part: StreamPartKey) -> Result<Vec<NeighborInfo>, PeeringError> {
        self.ask(|reply| Command::Neighbors(part, reply))
    }

    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// The addresses the listeners are bound to, each with `/p2p/<local PeerId>` appended,
    /// ready to hand to another node as a bootstrap address.
    pub fn listen_addrs(&self) -> Result<Vec<Multiaddr>, PeeringError> {
        self.ask(Command::ListenAddrs)
    }

    pub fn counter(&self, counter: PeeringCounter) -> u64 {
        self.counters.get(counter)
    }

    /// Leaves every part (telling the neighbors, within about a second), then stops the
    /// thread and waits for it.
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// Stops at once, without telling the neighbors: connections just close, as when the
    /// process is killed. For tests of failure handling.
    #[doc(hidden)]
    pub fn abort(mut self) {
        let _ = self.commands.try_send(Command::Abort);
        self.stop();
    }

    fn stop(&mut self) {
        let Some(thread) = self.thread.take() else { return };
        // A full queue still sees the channel close when the handle's sender is dropped
        // below; the thread treats that as shutdown too (after an Abort, Shutdown is never read).
        let _ = self.commands.try_send(Command::Shutdown);
        let (closed, _) = tokio::sync::mpsc::channel(1);
        drop(std::mem::replace(&mut self.commands, closed));
        let _ = thread.join();
    }
}

impl Drop for PeeringHandle {
    fn drop(&mut self) {
        self.stop();
    }
}
