//! The relay core: what a shard does with datagrams, without doing any I/O.
//!
//! Modeled on quinn-proto: the caller feeds received bytes with [`Relay::handle_receive`],
//! closes the datagrams being packed with [`Relay::flush`] once per receive batch, drains
//! sends with [`Relay::poll_gather`] (scatter-gather parts) or [`Relay::poll_transmit`] (one
//! flat buffer), and drives timers with [`Relay::poll_timeout`] /
//! [`Relay::handle_timeout`]. Time is an argument (`now_us`, microseconds on any monotonic
//! clock), so a seeded simulation drives many relays deterministically and the shard runtime
//! drives one per core.
//!
//! One frame's path: the datagram's link, tag and link sequence are checked; each frame is
//! validated in place; a duplicate (per publisher and chain, by frame sequence) is dropped
//! before any hashing; the signature is verified once (policy [`VerifyPolicy`]); the frame goes
//! to the repair ring, is appended byte for byte to a datagram being packed for every
//! eager neighbor except the one it came from (its id goes to the lazy ones, below), and is
//! released in chain order to local subscribers (clients). A datagram is packed once per audience and its body shared by every
//! link it goes to; each link gets its own stamped header ([`Relay::poll_gather`],
//! docs/decisions-forwarding.md). A gap in a chain is NAKed to a neighbor after `nak_delay_us` and
//! given up after `nak_retries_max`. A message larger than a frame spans several frames,
//! each authenticated on its own: the relay never reassembles anything.
//!
//! Propagation (Plumtree, docs/decisions-plumtree.md): per stream part each neighbor link is
//! eager or lazy (new ones eager). A full frame that arrives twice (not a repair) turns its
//! second sender's link lazy and sends it a Prune; a Prune turns its sender lazy. Lazy
//! neighbors get, per receive batch, one IHave naming the frames forwarded in full to the
//! others. An IHave naming frames this relay lacks opens a gap in the ordinary gap machinery,
//! first NAKed from the announcer after `graft_delay_us`; a NAK to or from a lazy neighbor is
//! a graft (the link turns eager). With [`Propagation::Flood`] every link stays eager.
//!
//! Flow control ([`crate::credit`]): every link's receiver grants its sender a window of link
//! sequences. Data to a link waits for its credit (control datagrams never do), and a shard
//! grants credit as it processes what arrives — but holds grants back (up to
//! `credit_hold_max_us`) while a neighbor link's queue is backlogged, or every subscriber of
//! a stream part is, so a slow neighbor (or a stream part whose subscribers are all slower
//! than its publishers) paces the senders upstream instead of overflowing. While one
//! subscriber keeps up, the slower ones never hold grants back: a subscriber that grants
//! nothing for `slow_consumer_timeout_us` is cut off (counted), so one slow subscriber never
//! slows the others. NAK answers are rate-limited per link.
//!
//! Bounds (all in [`RelayConfig`]): per-link outbound queue, stream parts, chains per stream
//! part, neighbors and clients per stream part, repair ring bytes and age, reorder buffer,
//! events. The lazy set and the IHaves and Prunes being collected are per (neighbor, stream
//! part), so bounded by the neighbors bound; an IHave never moves a chain's window forward and
//! never evicts a chain. Whatever a bound refuses is counted.

pub mod chain;
pub mod repair;
pub mod replay;

use crate::counters::{Counter, Counters};
use crate::credit::{GrantCredit, SendCredit};
use crate::filter::{Filter, FilterUpdate, RateLimit, Verdict};
use crate::link::{shard_of, LinkConfig, LinkRole, Propagation, SlowConsumerPolicy, VerifyPolicy};
use chain::ChainState;
use repair::RepairArena;
use runnel_proto::crypto::{self, SignatureError, Verifier, VerifyCost};
use runnel_proto::linktag::LinkKey;
use runnel_proto::stream::StreamPartKey;
use runnel_proto::wire::{
    self, Datagram, DatagramBuilder, Frame, HeaderFields, Kind, NakRange, FLAG_REPAIR, FLAG_SINGLE_PUBLISHER, HEADER_LENGTH,
    NAK_RANGE_LENGTH,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// Microseconds on the caller's monotonic clock.
pub type Micros = u64;

/// Tunables of one relay (one shard). Every bound is in the name or documented.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// This shard's index and the node's shard count.
    pub shard_index: u16,
    pub shards: u16,
    /// Largest datagram this relay builds (UDP payload bytes).
    pub datagram_length_max: usize,
    pub verify: VerifyPolicy,
    /// Authenticated batch roots the verifier caches (one per batch in flight; rounded up to
    /// a power of two). The cache is allocated whole when the relay is made, ~118 B a slot:
    /// 1.9 MiB at the default [`crypto::ROOTS_MAX`]. A relay that never verifies
    /// ([`VerifyPolicy::None`]) needs one.
    pub batch_roots_max: usize,
    /// Datagrams waiting to be sent on one link; beyond this they are dropped and counted.
    pub link_queue_datagrams_max: usize,
    /// Repair ring of one stream part: bytes and age bounds.
    pub repair_ring_bytes_max: usize,
    pub repair_age_max_us: Micros,
    /// Wait this long after a gap opens before the first NAK (reordering settles).
    pub nak_delay_us: Micros,
    /// Between the first NAK retries (each retry asks the next neighbor); doubles up to 8×.
    pub nak_interval_us: Micros,
    /// NAKs per gap before it is given up and counted lost.
    pub nak_retries_max: u32,
    /// Frames one chain may hold back for ordered delivery.
    pub reorder_frames_max: usize,
    pub chains_per_stream_part_max: usize,
    pub stream_parts_max: usize,
    pub neighbors_per_stream_part_max: usize,
    pub clients_per_stream_part_max: usize,
    /// Interest (Subscribe) expires without a refresh within this time.
    pub interest_timeout_us: Micros,
    /// How often Subscribe is refreshed to neighbors, and housekeeping runs.
    pub subscribe_interval_us: Micros,
    /// Events waiting for the runtime; beyond this they are dropped and counted.
    pub events_max: usize,
    /// A chain idle this long has its newest frame resent to neighbors (flagged repair),
    /// so a lost tail is noticed: the probe either fills it or reveals the gap.
    pub tail_probe_us: Micros,
    /// Probes per idle chain (spaced by doubling intervals).
    pub tail_probes_max: u32,
    /// Does this relay's filter enforce link rate limits? False when the XDP program does
    /// (metering twice would halve the rate).
    pub rate_limit_in_userspace: bool,
    /// The window this relay grants each link's sender, in datagrams.
    pub credit_window_datagrams: u64,
    /// A neighbor link with more Data datagrams than this waiting is backlogged: grants to
    /// every link are held back until it drains ...
    pub backlog_datagrams: usize,
    /// ... but never longer than this per link, so a cycle of backlogged nodes cannot
    /// deadlock (what then overflows is dropped and counted).
    pub credit_hold_max_us: Micros,
    /// A subscribed client that has granted no credit for this long is cut off (or, with
    /// [`SlowConsumerPolicy::Skip`], has its queue dropped and stays subscribed).
    pub slow_consumer_timeout_us: Micros,
    /// What happens to a subscribed client that cannot keep up.
    pub slow_consumer: SlowConsumerPolicy,
    /// Frames resent per second per link to answer NAKs (sustained, then `repair_burst_frames`).
    pub repair_frames_per_s: u64,
    pub repair_burst_frames: u64,
    /// Eager/lazy push along a tree (Plumtree) or flooding, to neighbors.
    pub propagation: Propagation,
    /// Plumtree: frames an IHave names that this relay lacks are NAKed — a graft when the
    /// announcer is lazy — after this long, unless the eager copy arrives first: the time
    /// the tree route may take beyond the announcer's.
    pub graft_delay_us: Micros,
}

impl RelayConfig {
    /// Defaults for everything but the shard layout, datagram size and verify policy.
    pub fn new(shard_index: u16, shards: u16, datagram_length_max: usize, verify: VerifyPolicy) -> Self {
        assert!(shard_index < shards, "shard index {shard_index} out of {shards}");
        Self {
            shard_index,
            shards,
            datagram_length_max,
            verify,
            batch_roots_max: crypto::ROOTS_MAX,
            link_queue_datagrams_max: 16_384,
            repair_ring_bytes_max: 8 << 20,
            repair_age_max_us: 5_000_000,
            nak_delay_us: 5_000,
            nak_interval_us: 20_000,
            nak_retries_max: 8,
            reorder_frames_max: 65_536,
            chains_per_stream_part_max: 4096,
            stream_parts_max: 4096,
            neighbors_per_stream_part_max: 8,
            clients_per_stream_part_max: 4096,
            interest_timeout_us: 5_000_000,
            subscribe_interval_us: 1_000_000,
            events_max: 1024,
            tail_probe_us: 30_000,
            tail_probes_max: 2,
            rate_limit_in_userspace: true,
            credit_window_datagrams: crate::credit::CREDIT_WINDOW_DATAGRAMS,
            backlog_datagrams: 2048,
            credit_hold_max_us: 100_000,
            slow_consumer_timeout_us: 1_000_000,
            slow_consumer: SlowConsumerPolicy::Cut,
            repair_frames_per_s: 50_000,
            repair_burst_frames: 4096,
            propagation: Propagation::Plumtree,
            graft_delay_us: 5_000,
        }
    }
}

/// One send: `segments` datagrams to one destination, each `segment_size` bytes except
/// possibly the last — exactly the shape of one UDP GSO send (`UDP_SEGMENT`). `length` is
/// their total.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub destination: SocketAddr,
    pub segment_size: usize,
    pub segments: usize,
    pub length: usize,
}

/// Things the runtime must act on outside the relay (e.g. quarantine in the XDP maps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A frame failed signature verification. `publisher_proven` says the frame came over a
    /// client link on which this publisher's signatures had verified before, so the publisher
    /// itself (not an impostor using its address) is at fault.
    SignatureFailure { link_id: u32, publisher: [u8; 20], publisher_proven: bool },
    /// This shard joined a stream part (the XDP `joined` map must learn it).
    Joined { part: StreamPartKey },
    /// A subscribed client granted no credit for the slow-consumer timeout: it was cut off
    /// (policy cut: its interest dropped; it is served again once it subscribes and reads) or
    /// skipped ahead (policy skip: its queue dropped, still subscribed).
    SlowConsumer { link_id: u32 },
    /// A neighbor's interest in a joined stream part expired: it sent no Subscribe refresh
    /// for `interest_timeout_us` (missed its heartbeats), so it is gone from the stream part's
    /// overlay here and the control process may replace it. Once per expiry; never for
    /// clients, for an Unsubscribe or for a removed link.
    NeighborSilent { link_id: u32, part: StreamPartKey },
}

/// Most segments in one GSO send (the kernel's UDP_MAX_SEGMENTS is 64).
pub const GSO_SEGMENTS_MAX: usize = 64;
/// Most bytes in one GSO send (one IP packet's worth of UDP payload).
pub const GSO_BYTES_MAX: usize = 65_000;
/// Most datagram buffers kept for reuse.
const BUFFER_POOL_MAX: usize = 4096;
/// Most NAK ranges one gap asks for at once.
const NAK_RANGES_MAX: usize = 16;
/// Longest range a NAK may ask to resend (bounds the work one NAK causes).
const NAK_RANGE_SEQUENCES_MAX: u64 = 4096;
/// Publishers remembered per client link as proven by a verified signature.
const PROVEN_PUBLISHERS_MAX: usize = 8;

/// A finished datagram: a header template (link id, link sequence and tag are stamped per
/// link as it leaves, [`wire::stamp`]) and a body shared by every link it goes to, so a frame
/// forwarded to a hundred subscribers is packed once, not a hundred times.
type SharedDatagram = Rc<Vec<u8>>;

/// The link id in a datagram template: the real one is stamped as it leaves.
const TEMPLATE_LINK_ID: u32 = 0;
/// `Audience::*::except` when no link is left out.
const NO_LINK: u32 = u32::MAX;

struct Outgoing {
    destination: SocketAddr,
    datagram: SharedDatagram,
}

/// One send's datagrams as scatter-gather parts, filled by [`Relay::poll_gather`]: per
/// datagram its header stamped for the link (in one buffer, [`HEADER_LENGTH`] bytes each) and
/// its body, shared with every other link the datagram went to. A runtime points one
/// `sendmsg` iovec at each part (two per datagram; with `UDP_SEGMENT` the kernel cuts the
/// concatenation at the segment size), keeps the `Gather` until the send completed, and then
/// hands it back to [`Relay::poll_gather`], which returns its bodies to the relay's pool.
#[derive(Default)]
pub struct Gather {
    headers: Vec<u8>,
    datagrams: Vec<SharedDatagram>,
}

impl Gather {
    /// Datagrams in this send.
    pub fn len(&self) -> usize {
        self.datagrams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }

    /// Each datagram's stamped header and its body (padding included).
    pub fn segments(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers.chunks_exact(HEADER_LENGTH).zip(self.datagrams.iter().map(|datagram| &datagram[HEADER_LENGTH..]))
    }

    fn push(&mut self, datagram: SharedDatagram, link_id: u32, link_seq: u64, key: &LinkKey) {
        let start = self.headers.len();
        self.headers.extend_from_slice(&datagram[..HEADER_LENGTH]);
        wire::stamp(&mut self.headers[start..], link_id, link_seq, key);
        self.datagrams.push(datagram);
    }
}

/// Data one link carried, counted since it was added: what settlement's traffic reports
/// are made of. Sent: Data datagrams queued to the link (forwarded, delivered, repairs),
/// counted when sealed; received: Data datagrams from it that passed the filter, duplicates
/// included. Bytes are whole datagrams (header and GSO padding too: the bandwidth used);
/// frames are the signed units they carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkTraffic {
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
}

impl LinkTraffic {
    /// Adds `other` (another shard's count of the same link).
    pub fn add(&mut self, other: &LinkTraffic) {
        self.frames_sent += other.frames_sent;
        self.bytes_sent += other.bytes_sent;
        self.frames_received += other.frames_received;
        self.bytes_received += other.bytes_received;
    }
}

struct Link {
    config: LinkConfig,
    traffic: LinkTraffic,
    /// Where a client was last heard from (neighbors use their configured address).
    client_address: Option<SocketAddr>,
    /// Client links: publishers whose signatures verified on this link (bounded).
    proven_publishers: Vec<[u8; 20]>,
    /// The link sequence of the next datagram to leave (datagrams are numbered as they
    /// leave, in [`Relay::poll_gather`]).
    send_sequence: u64,
    /// Data datagrams waiting to leave; they wait for credit.
    outbound: VecDeque<Outgoing>,
    /// Subscribe, Unsubscribe, Nak and Credit datagrams; they never wait for credit.
    control: VecDeque<Outgoing>,
    queue_datagrams_max: usize,
    /// Policy skip, client links: most Data datagrams waiting beyond the link's credit;
    /// older ones make room.
    skip_ahead_datagrams: Option<usize>,
    /// Listed in the outbox's `ready` round-robin.
    in_ready: bool,
    /// What the peer has granted this relay.
    credit: SendCredit,
    /// What this relay grants the peer, the stream part of the last datagram from it (its
    /// Credit goes to the peer's shard of that part), and whether it is listed for a grant.
    grant: GrantCredit,
    grant_part: StreamPartKey,
    grant_listed: bool,
    /// Since when grants to this link are held back for a backlog.
    withheld_since: Option<Micros>,
    /// GCRA state of the link's NAK answers.
    repair_tat_ns: u64,
}

impl Link {
    fn destination(&self, part: &StreamPartKey) -> Option<SocketAddr> {
        match self.config.role {
            LinkRole::Neighbor => {
                let mut address = self.config.peer?;
                address.set_port(address.port() + shard_of(part, self.config.peer_shards));
                Some(address)
            }
            LinkRole::Client => self.client_address,
        }
    }

    /// Whether `poll_gather` has something it may send on this link now.
    fn sendable(&self) -> bool {
        !self.control.is_empty() || (!self.outbound.is_empty() && self.credit.allowance(self.send_sequence) > 0)
    }
}

/// The header template of a datagram: link id, link sequence and tag are stamped as it leaves.
fn template(kind: Kind, part: StreamPartKey, flags: u16, publisher: [u8; 20]) -> HeaderFields {
    HeaderFields { flags, publisher, ..HeaderFields::new(kind, TEMPLATE_LINK_ID, 0, part.0) }
}

/// Which links a Data datagram being packed goes to. Part of the packing key, so frames with
/// different audiences (from another source, or a repair for one link) never share a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Audience {
    /// Interested neighbors but `except` (the neighbor the frames came from, or [`NO_LINK`]).
    Neighbors { except: u32 },
    /// Subscribed clients but `except` (a subscribed client that published them, or [`NO_LINK`]).
    Clients { except: u32 },
    /// One link: NAK answers.
    Link(u32),
}

type PackKey = (StreamPartKey, u16, Audience);

struct Packing {
    builder: DatagramBuilder,
    /// The links the datagram being packed goes to (fixed while it holds frames).
    links: Vec<u32>,
}

/// The Data datagrams being packed: one per (stream part, header flags, audience), each sent
/// to all of its audience's links when sealed.
#[derive(Default)]
struct Packer {
    packing: FastMap<PackKey, Packing>,
    /// Keys whose datagram holds frames: sealed by `flush`.
    dirty: Vec<PackKey>,
}

impl Packer {
    /// Appends `frame` (its bytes unchanged) to the datagram being packed for `key`, bound
    /// for `audience`; seals that datagram first if the frame does not fit, or if it was
    /// packed for other links (interest changed within the batch).
    fn append(
        &mut self,
        outbox: &mut Outbox,
        links: &mut FastMap<u32, Link>,
        counters: &mut Counters,
        key: PackKey,
        audience: &[u32],
        frame: &[u8],
    ) {
        if audience.is_empty() {
            return;
        }
        let capacity = outbox.datagram_length_max;
        if frame.len() > capacity - HEADER_LENGTH {
            // Sized for a larger path MTU than this node's: it cannot be sent whole, and a
            // frame is never cut (its authentication covers it whole).
            counters.increment(Counter::FramesTooLarge);
            return;
        }
        // Packings stay in the map between batches (empty, buffer kept), so the steady state
        // neither allocates nor rehashes; housekeeping prunes the idle ones.
        let packing = self.packing.entry(key).or_insert_with(|| Packing { builder: outbox.builder(capacity), links: Vec::new() });
        if !packing.builder.is_empty() && packing.links != audience {
            let sealed = std::mem::replace(&mut packing.builder, outbox.builder(capacity));
            outbox.seal(counters, links, key, sealed, &packing.links);
        }
        if packing.builder.is_empty() {
            if packing.links != audience {
                packing.links.clear();
                packing.links.extend_from_slice(audience);
            }
            self.dirty.push(key);
        }
        if packing.builder.try_push(frame) {
            return;
        }
        // Full: pad to the segment size so a run of full datagrams leaves in one GSO send.
        let mut full = std::mem::replace(&mut packing.builder, outbox.builder(capacity));
        let pushed = packing.builder.try_push(frame);
        debug_assert!(pushed, "a frame that fits an empty datagram");
        full.pad_to(capacity);
        outbox.seal(counters, links, key, full, &packing.links);
    }

    /// Seals every datagram holding frames.
    fn flush(&mut self, outbox: &mut Outbox, links: &mut FastMap<u32, Link>, counters: &mut Counters) {
        for key in self.dirty.drain(..) {
            let Some(packing) = self.packing.get_mut(&key) else { continue };
            if packing.builder.is_empty() {
                continue;
            }
            let capacity = packing.builder.capacity();
            let sealed = std::mem::replace(&mut packing.builder, outbox.builder(capacity));
            outbox.seal(counters, links, key, sealed, &packing.links);
        }
    }

    /// Drops `link_id` from every audience (its frames being packed are not sent to it).
    fn forget_link(&mut self, link_id: u32) {
        self.packing.retain(|(_, _, audience), packing| {
            packing.links.retain(|id| *id != link_id);
            !matches!(audience, Audience::Link(id) if *id == link_id)
        });
    }

    /// Forgets the packings of `part` (after `flush`, so they hold nothing).
    fn forget_part(&mut self, outbox: &mut Outbox, part: &StreamPartKey) {
        self.packing.retain(|(packing_part, _, _), packing| {
            if packing_part != part {
                return true;
            }
            outbox.recycle(
                std::mem::replace(&mut packing.builder, DatagramBuilder::from_buffer(Vec::new(), HEADER_LENGTH + 1)).into_buffer(),
            );
            false
        });
    }

    /// Drops the packings holding nothing (each keeps a buffer; the busy ones come back).
    fn prune(&mut self, outbox: &mut Outbox) {
        self.packing.retain(|_, packing| {
            if !packing.builder.is_empty() {
                return true;
            }
            outbox.recycle(
                std::mem::replace(&mut packing.builder, DatagramBuilder::from_buffer(Vec::new(), HEADER_LENGTH + 1)).into_buffer(),
            );
            false
        });
    }
}

/// Plumtree's control datagrams collected during a receive batch and sent by `flush`.
///
/// Bounds: both are keyed by (neighbor link, stream part), so they hold at most
/// `neighbors_per_stream_part_max` entries per joined stream part; `flush` empties them, and an
/// announcement list that reaches a datagram's worth of ranges leaves at once.
#[derive(Default)]
struct TreeControl {
    /// Per lazy neighbor and stream part, the ids of the frames it was not sent in full.
    /// Kept empty between batches (for their capacity); housekeeping drops the idle ones.
    announcements: FastMap<(u32, StreamPartKey), Vec<NakRange>>,
    /// Keys of `announcements` that hold ranges.
    announcing: Vec<(u32, StreamPartKey)>,
    /// Neighbors that sent a frame this relay already had, in full: one Prune each.
    prunes: FastSet<(u32, StreamPartKey)>,
}

impl TreeControl {
    /// Adds one frame id to the IHave being collected for `link_id` (consecutive sequences
    /// of one chain share a range). True when it holds `ranges_max` ranges: send it now.
    fn announce(&mut self, link_id: u32, part: StreamPartKey, chain_id: ChainId, sequence: u64, ranges_max: usize) -> bool {
        let ranges = self.announcements.entry((link_id, part)).or_default();
        if ranges.is_empty() {
            self.announcing.push((link_id, part));
        }
        let extends =
            |range: &&mut NakRange| (range.publisher, range.chain_id) == chain_id && range.last_sequence.checked_add(1) == Some(sequence);
        match ranges.last_mut().filter(extends) {
            Some(range) => range.last_sequence = sequence,
            None => {
                ranges.push(NakRange { publisher: chain_id.0, chain_id: chain_id.1, first_sequence: sequence, last_sequence: sequence })
            }
        }
        ranges.len() >= ranges_max
    }

    fn forget_link(&mut self, link_id: u32) {
        self.announcements.retain(|(id, _), _| *id != link_id);
        self.announcing.retain(|(id, _)| *id != link_id);
        self.prunes.retain(|(id, _)| *id != link_id);
    }

    fn forget_part(&mut self, part: &StreamPartKey) {
        self.announcements.retain(|(_, announced), _| announced != part);
        self.announcing.retain(|(_, announced)| announced != part);
        self.prunes.retain(|(_, pruned)| pruned != part);
    }
}

/// The sending side of a relay apart from the links themselves: reused datagram buffers, the
/// round-robin of links with queued datagrams, and the grant bookkeeping. Kept out of
/// [`Relay`]'s other fields so a link (borrowed from the link table) and the outbox can be
/// used together.
struct Outbox {
    datagram_length_max: usize,
    /// Datagram buffers kept for reuse (at most [`BUFFER_POOL_MAX`]).
    pool: Vec<Vec<u8>>,
    /// Links with datagrams they may send now, round-robin (each once: `Link::in_ready`).
    ready: VecDeque<u32>,
    /// Links whose Data waits for credit.
    stalled: FastSet<u32>,
    /// Links that sent something this receive batch: grants are decided in `flush`.
    grants: Vec<u32>,
    /// Links whose grant is held back for a backlog.
    withheld: Vec<u32>,
    /// The relay's clock, for stalls that begin when Data is queued.
    now_us: Micros,
}

impl Outbox {
    /// A datagram builder on a reused buffer.
    fn builder(&mut self, capacity: usize) -> DatagramBuilder {
        DatagramBuilder::from_buffer(self.pool.pop().unwrap_or_default(), capacity)
    }

    fn recycle(&mut self, bytes: Vec<u8>) {
        if self.pool.len() < BUFFER_POOL_MAX {
            self.pool.push(bytes);
        }
    }

    /// Gives up one reference to a datagram; the last one returns its buffer to the pool.
    fn release(&mut self, datagram: SharedDatagram) {
        if let Ok(bytes) = Rc::try_unwrap(datagram) {
            self.recycle(bytes);
        }
    }

    /// Finishes a Data datagram's header template and queues the datagram, shared, on every
    /// link of `audience`.
    fn seal(
        &mut self,
        counters: &mut Counters,
        links: &mut FastMap<u32, Link>,
        key: PackKey,
        mut builder: DatagramBuilder,
        audience: &[u32],
    ) {
        let (part, flags, _) = key;
        // The single-publisher flag lets the XDP filter check publish permission per
        // datagram; it is set when every frame is from one publisher.
        let single = builder.single_publisher();
        let flags = flags | if single.is_some() { FLAG_SINGLE_PUBLISHER } else { 0 };
        builder.finish_unstamped(template(Kind::Data, part, flags, single.unwrap_or([0; 20])));
        let frames = u64::from(builder.count());
        let datagram = Rc::new(builder.into_buffer());
        for link_id in audience {
            let Some(link) = links.get_mut(link_id) else { continue };
            link.traffic.frames_sent += frames;
            link.traffic.bytes_sent += datagram.len() as u64;
            match link.destination(&part) {
                Some(destination) => self.enqueue(counters, link, destination, Rc::clone(&datagram), false),
                None => counters.increment(Counter::DatagramsNoAddress),
            }
        }
        self.release(datagram);
    }

    /// Queues a control datagram (it never waits for credit) on one link.
    fn send_control(&mut self, counters: &mut Counters, link: &mut Link, part: &StreamPartKey, builder: DatagramBuilder) {
        match link.destination(part) {
            Some(destination) => self.enqueue(counters, link, destination, Rc::new(builder.into_buffer()), true),
            None => {
                counters.increment(Counter::DatagramsNoAddress);
                self.recycle(builder.into_buffer());
            }
        }
    }

    /// Queues a finished (unstamped) datagram: Data waits for credit, control does not.
    fn enqueue(&mut self, counters: &mut Counters, link: &mut Link, destination: SocketAddr, datagram: SharedDatagram, control: bool) {
        let waiting_beyond_credit = || (link.outbound.len() as u64).saturating_sub(link.credit.allowance(link.send_sequence));
        if !control && link.skip_ahead_datagrams.is_some_and(|bound| waiting_beyond_credit() >= bound as u64) {
            // Policy skip: the subscriber gets the newest data; the oldest of what waits for
            // its credit goes. What its window allows still leaves.
            if let Some(oldest) = link.outbound.pop_front() {
                counters.increment(Counter::DropsSkippedAhead);
                self.release(oldest.datagram);
            }
        }
        let queue = if control { &mut link.control } else { &mut link.outbound };
        if queue.len() >= link.queue_datagrams_max {
            counters.increment(Counter::DropsLinkQueueFull);
            self.release(datagram);
            return;
        }
        queue.push_back(Outgoing { destination, datagram });
        if !control && link.credit.allowance(link.send_sequence) == 0 && link.credit.stall(self.now_us) {
            // Queued onto a link already out of credit: it probes from now on.
            self.stalled.insert(link.config.id);
            counters.increment(Counter::CreditStalls);
        }
        self.mark_ready(link);
    }

    /// Lists a link in the round-robin if it may send now.
    fn mark_ready(&mut self, link: &mut Link) {
        if !link.in_ready && link.sendable() {
            link.in_ready = true;
            self.ready.push_back(link.config.id);
        }
    }

    /// Moves up to `allowance` datagrams of one run (same destination, GSO-shaped) from the
    /// front of a queue into `gather`, numbering and tagging each header as it goes.
    fn take_run(link: &mut Link, control: bool, allowance: u64, gather: &mut Gather) -> Transmit {
        let queue = if control { &mut link.control } else { &mut link.outbound };
        let first = queue.front().expect("a run starts at a queued datagram");
        let destination = first.destination;
        let segment_size = first.datagram.len();
        let (mut segments, mut length) = (0, 0);
        while segments < GSO_SEGMENTS_MAX && (segments as u64) < allowance {
            let Some(next) = queue.front() else { break };
            let size = next.datagram.len();
            if segments > 0 && (next.destination != destination || size > segment_size || length + size > GSO_BYTES_MAX) {
                break;
            }
            let next = queue.pop_front().expect("front exists");
            gather.push(next.datagram, link.config.send_id(), link.send_sequence, &link.config.key);
            link.send_sequence += 1;
            segments += 1;
            length += size;
            if size < segment_size {
                break;
            }
        }
        Transmit { destination, segment_size, segments, length }
    }
}

type ChainId = ([u8; 20], u64);

struct StreamPartState {
    /// Interested neighbor links → interest expiry.
    neighbors: FastMap<u32, Micros>,
    /// Subscribed client links → interest expiry.
    clients: FastMap<u32, Micros>,
    chains: FastMap<ChainId, ChainState>,
    repair: RepairArena,
    /// Plumtree: the neighbors this relay only announces frames to; every other neighbor
    /// with interest is eager (new ones start eager). Always a subset of `neighbors`' keys.
    lazy: FastSet<u32>,
}

impl StreamPartState {
    /// The live neighbors but `except`, split into those sent frames in full (`eager`) and
    /// those sent their ids (`lazy`; always empty when flooding: nothing is ever pruned).
    fn split_neighbors(&self, now_us: Micros, except: u32, links: &FastMap<u32, Link>, eager: &mut Vec<u32>, lazy: &mut Vec<u32>) {
        eager.clear();
        lazy.clear();
        for link_id in live_links(&self.neighbors, now_us, except, links) {
            if self.lazy.contains(&link_id) {
                lazy.push(link_id);
            } else {
                eager.push(link_id);
            }
        }
    }
}

/// A shard's relay state.
pub struct Relay {
    config: RelayConfig,
    counters: Counters,
    links: FastMap<u32, Link>,
    /// Neighbor link ids, for Subscribe refreshes.
    neighbor_links: Vec<u32>,
    stream_parts: FastMap<StreamPartKey, StreamPartState>,
    verifier: Verifier,
    filter: Filter,
    events: VecDeque<Event>,
    outbox: Outbox,
    packer: Packer,
    /// Scratch: the audiences of the frame being handled (kept for their capacity).
    forward_to: Vec<u32>,
    announce_to: Vec<u32>,
    deliver_to: Vec<u32>,
    tree: TreeControl,
    /// What [`Relay::poll_transmit`] gathers before copying it out.
    flat: Gather,
    /// Chains with an open gap.
    gapped: FastSet<(StreamPartKey, ChainId)>,
    /// Chains with a pending tail probe.
    probing: FastSet<(StreamPartKey, ChainId)>,
    /// Every link's NAK answers are metered by this.
    repair_rate: RateLimit,
    next_housekeeping_us: Micros,
    now_us: Micros,
}

impl Relay {
    pub fn new(config: RelayConfig) -> Self {
        let filter = Filter::new(config.rate_limit_in_userspace);
        let outbox = Outbox {
            datagram_length_max: config.datagram_length_max,
            pool: Vec::new(),
            ready: VecDeque::new(),
            stalled: FastSet::default(),
            grants: Vec::new(),
            withheld: Vec::new(),
            now_us: 0,
        };
        let repair_rate = RateLimit::new(config.repair_frames_per_s, config.repair_burst_frames);
        let verifier = Verifier::new(crypto::PUBLIC_KEYS_MAX, config.batch_roots_max);
        Self {
            config,
            counters: Counters::default(),
            links: FastMap::default(),
            neighbor_links: Vec::new(),
            stream_parts: FastMap::default(),
            verifier,
            filter,
            events: VecDeque::new(),
            outbox,
            packer: Packer::default(),
            forward_to: Vec::new(),
            announce_to: Vec::new(),
            deliver_to: Vec::new(),
            tree: TreeControl::default(),
            flat: Gather::default(),
            gapped: FastSet::default(),
            probing: FastSet::default(),
            repair_rate,
            next_housekeeping_us: 0,
            now_us: 0,
        }
    }

    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// Does this shard own `part`?
    pub fn owns(&self, part: &StreamPartKey) -> bool {
        shard_of(part, self.config.shards) == self.config.shard_index
    }

    /// Adds (or replaces) a link.
    pub fn add_link(&mut self, link: &LinkConfig) {
        let rate = RateLimit::new(link.rate_datagrams_per_s, link.burst_datagrams);
        self.filter.set_link(link.id, link.key, link.role, rate);
        if link.role == LinkRole::Neighbor && !self.neighbor_links.contains(&link.id) {
            self.neighbor_links.push(link.id);
        }
        self.links.insert(
            link.id,
            Link {
                config: link.clone(),
                traffic: LinkTraffic::default(),
                client_address: None,
                proven_publishers: Vec::new(),
                send_sequence: 0,
                outbound: VecDeque::new(),
                control: VecDeque::new(),
                queue_datagrams_max: self.config.link_queue_datagrams_max,
                skip_ahead_datagrams: (link.role == LinkRole::Client && self.config.slow_consumer == SlowConsumerPolicy::Skip)
                    .then_some(self.config.backlog_datagrams.max(1)),
                in_ready: false,
                credit: SendCredit::new(0, self.config.credit_window_datagrams),
                grant: GrantCredit::default(),
                grant_part: StreamPartKey([0; 32]),
                grant_listed: false,
                withheld_since: None,
                repair_tat_ns: 0,
            },
        );
    }

    /// Removes a link and every interest it held.
    pub fn remove_link(&mut self, link_id: u32) {
        self.links.remove(&link_id);
        self.filter.remove_link(link_id);
        self.neighbor_links.retain(|id| *id != link_id);
        self.outbox.ready.retain(|id| *id != link_id);
        self.outbox.stalled.remove(&link_id);
        self.packer.forget_link(link_id);
        self.outbox.grants.retain(|id| *id != link_id);
        self.outbox.withheld.retain(|id| *id != link_id);
        self.tree.forget_link(link_id);
        for state in self.stream_parts.values_mut() {
            state.neighbors.remove(&link_id);
            state.lazy.remove(&link_id);
            state.clients.remove(&link_id);
        }
    }

    /// Joins a stream part: this shard carries it and subscribes to it at its neighbors.
    /// Returns false (counted) when the stream part bound is reached.
    pub fn join(&mut self, now_us: Micros, part: StreamPartKey) -> bool {
        self.now_us = self.now_us.max(now_us);
        self.outbox.now_us = self.now_us;
        if self.stream_parts.contains_key(&part) {
            return true;
        }
        if self.stream_parts.len() >= self.config.stream_parts_max {
            self.counters.increment(Counter::DropsStreamPartsFull);
            return false;
        }
        self.stream_parts.insert(
            part,
            StreamPartState {
                neighbors: FastMap::default(),
                clients: FastMap::default(),
                chains: FastMap::default(),
                repair: RepairArena::new(self.config.repair_ring_bytes_max, self.config.repair_age_max_us),
                lazy: FastSet::default(),
            },
        );
        self.filter.join(part);
        self.push_event(Event::Joined { part });
        for link_id in self.neighbor_links.clone() {
            self.send_control(link_id, part, Kind::Subscribe);
        }
        true
    }

    /// Leaves a stream part: forgets its state (interest, chains, repair ring, open gaps and
    /// tail probes), sends an Unsubscribe to every neighbor link, and has the filter drop its
    /// neighbors' datagrams again. Frames already packed for it still leave with this flush.
    /// Returns false if this shard had not joined it. Auto-joins still apply afterwards: a
    /// neighbor's Subscribe or a client's Data joins the stream part again.
    pub fn leave(&mut self, part: &StreamPartKey) -> bool {
        if self.stream_parts.remove(part).is_none() {
            return false;
        }
        self.filter.leave(part);
        self.gapped.retain(|(gapped, _)| gapped != part);
        self.probing.retain(|(probing, _)| probing != part);
        // Announcing frames of a stream part it no longer carries would invite grafts it cannot answer.
        self.tree.forget_part(part);
        self.flush();
        self.packer.forget_part(&mut self.outbox, part);
        for link_id in self.neighbor_links.clone() {
            self.send_control(link_id, *part, Kind::Unsubscribe);
        }
        true
    }

    /// Applies a policy update (quarantine, permission) to this shard's filter; false (and
    /// counted) when the filter's table for it is full and the update was refused.
    pub fn apply_filter_update(&mut self, update: &FilterUpdate) -> bool {
        let applied = self.filter.apply(update);
        if !applied {
            self.counters.increment(Counter::FilterUpdatesRefused);
        }
        applied
    }

    /// Forgets expired quarantines (the policy thread calls this now and then via a command).
    pub fn expire_filter(&mut self, now_us: Micros) {
        self.filter.expire(now_us.saturating_mul(1000));
    }

    fn push_event(&mut self, event: Event) {
        if self.events.len() < self.config.events_max {
            self.events.push_back(event);
        } else {
            self.counters.increment(Counter::EventsDropped);
        }
    }

    /// Stream parts this shard has joined.
    pub fn joined(&self) -> impl Iterator<Item = &StreamPartKey> {
        self.stream_parts.keys()
    }

    /// Feeds one receive buffer: one datagram, or several coalesced by GRO.
    pub fn handle_receive(&mut self, now_us: Micros, from: SocketAddr, buffer: &[u8]) {
        self.now_us = self.now_us.max(now_us);
        self.outbox.now_us = self.now_us;
        for datagram in wire::split_datagrams(buffer) {
            self.counters.increment(Counter::DatagramsReceived);
            match datagram {
                Ok(datagram) => self.handle_datagram(from, datagram),
                Err(_) => self.counters.increment(Counter::DatagramsMalformed),
            }
        }
    }

    fn handle_datagram(&mut self, from: SocketAddr, datagram: Datagram<'_>) {
        let verdict = self.filter.check(self.now_us.saturating_mul(1000), from, datagram.bytes);
        match verdict {
            Verdict::Pass => {}
            Verdict::NotRunnel | Verdict::Malformed => self.counters.increment(Counter::DatagramsMalformed),
            Verdict::UnknownLink => self.counters.increment(Counter::DatagramsUnknownLink),
            Verdict::BadTag => self.counters.increment(Counter::DatagramsBadTag),
            Verdict::QuarantinedLink => self.counters.increment(Counter::DatagramsQuarantinedLink),
            Verdict::Replayed => self.counters.increment(Counter::DatagramsReplayed),
            Verdict::QuarantinedPublisher => self.counters.increment(Counter::DatagramsQuarantinedPublisher),
            Verdict::NotJoined => self.counters.increment(Counter::DatagramsNotJoined),
            Verdict::NotPermitted => self.counters.increment(Counter::DatagramsNotPermitted),
            Verdict::RateLimited => self.counters.increment(Counter::DatagramsRateLimited),
        }
        if verdict != Verdict::Pass {
            return;
        }
        let link_id = datagram.link_id();
        let Some(link) = self.links.get_mut(&link_id) else {
            // The filter knows every link the relay does; this is a removed link racing.
            self.counters.increment(Counter::DatagramsUnknownLink);
            return;
        };
        let role = link.config.role;
        if role == LinkRole::Client {
            link.client_address = Some(from);
        }
        if datagram.kind == Kind::Data {
            // Counted with the link in hand (no second lookup): Data that passed the filter,
            // whether or not this shard then takes it (settlement pays for the bandwidth).
            link.traffic.frames_received += u64::from(datagram.message_count());
            link.traffic.bytes_received += datagram.bytes.len() as u64;
        }
        let part = datagram.stream_part_key();
        // Credit is decided once per receive batch (in `flush`), for what was processed.
        link.grant.received(datagram.link_seq());
        if datagram.kind != Kind::Credit {
            link.grant_part = part;
            if !link.grant_listed {
                link.grant_listed = true;
                self.outbox.grants.push(link_id);
            }
        }
        match datagram.kind {
            Kind::Credit => {
                let Ok(granted) = datagram.credit() else {
                    self.counters.increment(Counter::DatagramsMalformed);
                    return;
                };
                self.counters.increment(Counter::CreditsReceived);
                if link.credit.grant(granted) {
                    self.outbox.stalled.remove(&link_id);
                }
                self.outbox.mark_ready(link);
            }
            Kind::Subscribe => {
                self.counters.increment(Counter::SubscribesReceived);
                if !self.owns(&part) || !self.join(self.now_us, part) {
                    self.counters.increment(Counter::DatagramsNotJoined);
                    return;
                }
                let expiry = self.now_us + self.config.interest_timeout_us;
                let state = self.stream_parts.get_mut(&part).expect("joined above");
                let (map, max) = match role {
                    LinkRole::Neighbor => (&mut state.neighbors, self.config.neighbors_per_stream_part_max),
                    LinkRole::Client => (&mut state.clients, self.config.clients_per_stream_part_max),
                };
                if map.len() >= max && !map.contains_key(&link_id) {
                    self.counters.increment(Counter::DropsNeighborsFull);
                    return;
                }
                map.insert(link_id, expiry);
            }
            Kind::Unsubscribe => {
                if let Some(state) = self.stream_parts.get_mut(&part) {
                    state.neighbors.remove(&link_id);
                    state.lazy.remove(&link_id);
                    state.clients.remove(&link_id);
                }
            }
            Kind::Data => {
                if !self.accepts_data(&part, role) {
                    self.counters.increment(Counter::DatagramsNotJoined);
                    return;
                }
                let repair = datagram.flags() & FLAG_REPAIR != 0;
                for frame in datagram.frames() {
                    match frame {
                        Ok(frame) => self.handle_frame(link_id, part, &frame, repair),
                        Err(_) => {
                            self.counters.increment(Counter::FramesMalformed);
                            break;
                        }
                    }
                }
            }
            Kind::Nak => {
                self.counters.increment(Counter::NaksReceived);
                let Ok(ranges) = owned_ranges(&datagram) else {
                    self.counters.increment(Counter::DatagramsMalformed);
                    return;
                };
                // A NAK from a lazy neighbor is a graft: it lacked what was only announced, so
                // the tree route to it broke; frames go to it in full again.
                let state = self.stream_parts.get_mut(&part).filter(|_| role == LinkRole::Neighbor);
                if state.is_some_and(|state| state.lazy.remove(&link_id)) {
                    self.counters.increment(Counter::GraftsReceived);
                }
                self.answer_nak(link_id, part, &ranges);
            }
            Kind::IHave => {
                self.counters.increment(Counter::IhavesReceived);
                if role != LinkRole::Neighbor || !self.stream_parts.contains_key(&part) {
                    self.counters.increment(Counter::TreeControlRefused);
                    return;
                }
                let Ok(ranges) = owned_ranges(&datagram) else {
                    self.counters.increment(Counter::DatagramsMalformed);
                    return;
                };
                self.handle_ihave(link_id, part, &ranges);
            }
            Kind::Prune => {
                self.counters.increment(Counter::PrunesReceived);
                let state = self.stream_parts.get_mut(&part).filter(|state| state.neighbors.contains_key(&link_id));
                let Some(state) = state.filter(|_| role == LinkRole::Neighbor) else {
                    self.counters.increment(Counter::TreeControlRefused);
                    return;
                };
                // Flooding ignores it: a flooding node keeps sending in full (and the pruning
                // end, having turned this link lazy, does not prune it again each frame).
                if self.config.propagation == Propagation::Plumtree {
                    state.lazy.insert(link_id);
                }
            }
        }
    }

    /// Plumtree's lazy push, received: the sequences an IHave names that this relay lacks
    /// join the chain's missing ranges, and a gap opened by them sends its first NAK to the
    /// announcer (a graft when it is lazy) after `graft_delay_us`, unless the eager copy
    /// arrives first. The existing gap machinery does the rest: retries, other neighbors,
    /// giving up. An unknown chain (a publisher whose first frames were lost on the eager
    /// path) is started as a frame would start it, but only while the stream part has room
    /// for chains: announcements are not signed, so they never evict a chain.
    fn handle_ihave(&mut self, link_id: u32, part: StreamPartKey, ranges: &[NakRange]) {
        let now_us = self.now_us;
        let state = self.stream_parts.get_mut(&part).expect("caller checked the stream part is joined");
        for range in ranges {
            let chain_id: ChainId = (range.publisher, range.chain_id);
            if !state.chains.contains_key(&chain_id) {
                let permitted = self.filter.may_publish(now_us.saturating_mul(1000), &part, &chain_id.0);
                if !permitted || state.chains.len() >= self.config.chains_per_stream_part_max {
                    self.counters.increment(Counter::TreeControlRefused);
                    continue;
                }
                let first = range.first_sequence;
                let start = if first > 0 { first.saturating_sub(chain::CHAIN_START_LOOKBACK) } else { first };
                state.chains.insert(chain_id, ChainState::new(start, now_us));
            }
            let chain = state.chains.get_mut(&chain_id).expect("present or inserted");
            if !chain.announce(range.last_sequence) {
                self.counters.increment(Counter::TreeControlRefused);
                continue;
            }
            if chain.has_gap() && chain.gap.is_none() {
                let first_missing = chain.next_sequence();
                let next_nak_us = now_us + self.config.graft_delay_us;
                chain.gap = Some(chain::Gap { first_missing, next_nak_us, naks_sent: 0, source_link: link_id });
                self.gapped.insert((part, chain_id));
            }
        }
    }

    /// Data for `part` is taken if this shard carries it; a client publishing joins it.
    fn accepts_data(&mut self, part: &StreamPartKey, role: LinkRole) -> bool {
        if self.stream_parts.contains_key(part) {
            return true;
        }
        role == LinkRole::Client && self.owns(part) && self.join(self.now_us, *part)
    }

    fn handle_frame(&mut self, source_link: u32, part: StreamPartKey, frame: &Frame<'_>, repair: bool) {
        let now_us = self.now_us;
        let chain_id: ChainId = (frame.publisher(), frame.chain_id());
        let sequence = frame.sequence();
        let state = self.stream_parts.get_mut(&part).expect("caller checked the stream part is joined");
        if state.chains.get(&chain_id).is_some_and(|c| c.is_duplicate(sequence)) {
            self.counters.increment(Counter::FramesDuplicate);
            // Plumtree: a second full copy means its sender's link is a redundant route of
            // the tree: it turns lazy here and is told so. A lazy link still sending in full
            // lost our Prune: it is told again (once per batch). Repairs and tail probes are
            // asked for or expected twice: they prune nothing.
            let plumtree = self.config.propagation == Propagation::Plumtree;
            if plumtree && !repair && state.neighbors.contains_key(&source_link) {
                state.lazy.insert(source_link);
                self.tree.prunes.insert((source_link, part));
            }
            return;
        }
        // The filter checked a single-publisher header; this covers every frame, whatever
        // datagram it came in (forwarded datagrams mix publishers).
        if !self.filter.may_publish(now_us.saturating_mul(1000), &part, &chain_id.0) {
            self.counters.increment(Counter::FramesNotPermitted);
            return;
        }
        if self.config.verify == VerifyPolicy::All {
            let verified = self.verifier.verify(&part, frame);
            let link = self.links.get_mut(&source_link);
            let client = link.filter(|link| link.config.role == LinkRole::Client);
            match verified {
                Ok(cost) => {
                    match cost {
                        VerifyCost::Ecdsa { signatures } => self.counters.add(Counter::SignaturesEcdsa, signatures.into()),
                        VerifyCost::CachedRoot => self.counters.increment(Counter::SignaturesCachedRoot),
                    }
                    if let Some(link) = client {
                        if !link.proven_publishers.contains(&chain_id.0) && link.proven_publishers.len() < PROVEN_PUBLISHERS_MAX {
                            link.proven_publishers.push(chain_id.0);
                        }
                    }
                }
                Err(SignatureError::Malformed | SignatureError::WrongSigner) => {
                    self.counters.increment(Counter::FramesBadSignature);
                    let publisher_proven = client.is_some_and(|link| link.proven_publishers.contains(&chain_id.0));
                    self.push_event(Event::SignatureFailure { link_id: source_link, publisher: chain_id.0, publisher_proven });
                    return;
                }
            }
        }
        self.counters.increment(Counter::FramesAccepted);
        if repair {
            self.counters.increment(Counter::FramesRepaired);
        }
        // The stream part state again (verify borrowed self).
        let state = self.stream_parts.get_mut(&part).expect("joined");
        if !state.chains.contains_key(&chain_id) && state.chains.len() >= self.config.chains_per_stream_part_max {
            let idle = state.chains.iter().min_by_key(|(_, c)| c.last_activity_us).map(|(id, _)| *id).expect("full");
            state.chains.remove(&idle);
            self.gapped.remove(&(part, idle));
            self.probing.remove(&(part, idle));
            self.counters.increment(Counter::ChainsEvicted);
        }

        // Forward in full to every eager neighbor but the source, and collect the frame's id
        // for the lazy ones (sent with this batch's IHaves): forwarding never waits for order.
        let mut forward_to = std::mem::take(&mut self.forward_to);
        let mut announce_to = std::mem::take(&mut self.announce_to);
        state.split_neighbors(now_us, source_link, &self.links, &mut forward_to, &mut announce_to);
        let except = if state.neighbors.contains_key(&source_link) { source_link } else { NO_LINK };
        let key = (part, 0, Audience::Neighbors { except });
        self.packer.append(&mut self.outbox, &mut self.links, &mut self.counters, key, &forward_to, frame.bytes);
        self.counters.add(Counter::FramesForwarded, forward_to.len() as u64);
        self.forward_to = forward_to;

        // Release in chain order to subscribed clients.
        let ordered = state.clients.values().any(|expiry| *expiry >= now_us);
        // A frame with a predecessor (a previous reference, or a later piece of a message)
        // is mid-chain: start a little earlier so reordered earlier frames still count.
        let mid_chain = frame.previous().is_some() || sequence > 0;
        let start = if mid_chain { sequence.saturating_sub(chain::CHAIN_START_LOOKBACK) } else { sequence };
        let chain = state.chains.entry(chain_id).or_insert_with(|| ChainState::new(start, now_us));
        chain.last_activity_us = now_us;
        if let Some(entry) = state.repair.store(now_us, sequence, frame.bytes) {
            chain.repair.insert(&state.repair, now_us, entry);
        }
        if chain.newest_sequence().is_none_or(|newest| sequence >= newest) {
            chain.tail_probe_due_us = Some(now_us + self.config.tail_probe_us);
            chain.tail_probes_sent = 0;
            self.probing.insert((part, chain_id));
        }
        let mut deliver_to = std::mem::take(&mut self.deliver_to);
        deliver_to.clear();
        deliver_to.extend(live_links(&state.clients, now_us, source_link, &self.links));
        let except = if state.clients.contains_key(&source_link) { source_link } else { NO_LINK };
        let key = (part, 0, Audience::Clients { except });
        let (packer, outbox, links, counters) = (&mut self.packer, &mut self.outbox, &mut self.links, &mut self.counters);
        let mut delivered_copies = 0u64;
        let reorder_frames_max = self.config.reorder_frames_max;
        let outcome = chain.accept(sequence, frame.bytes, ordered, reorder_frames_max, |bytes| {
            packer.append(outbox, links, counters, key, &deliver_to, bytes);
            delivered_copies += deliver_to.len() as u64;
        });
        self.deliver_to = deliver_to;
        self.counters.add(Counter::FramesDelivered, delivered_copies);
        self.counters.add(Counter::FramesLost, outcome.lost);
        self.counters.add(Counter::DropsReorderBufferFull, outcome.reorder_dropped);
        if chain.has_gap() {
            if chain.gap.is_none() {
                let first_missing = chain.next_sequence();
                chain.gap = Some(chain::Gap { first_missing, next_nak_us: now_us + self.config.nak_delay_us, naks_sent: 0, source_link });
            }
            self.gapped.insert((part, chain_id));
        }
        self.announce(part, chain_id, sequence, &announce_to);
        self.announce_to = announce_to;
    }

    /// Adds a frame id to the IHave being collected for each of `lazy`; an IHave holding a
    /// datagram's worth of ranges leaves at once, the others with `flush`.
    fn announce(&mut self, part: StreamPartKey, chain_id: ChainId, sequence: u64, lazy: &[u32]) {
        let ranges_max = ((self.config.datagram_length_max - HEADER_LENGTH) / NAK_RANGE_LENGTH).clamp(1, u16::MAX as usize);
        for &link_id in lazy {
            if self.tree.announce(link_id, part, chain_id, sequence, ranges_max) {
                self.send_announcement(link_id, part);
            }
        }
        self.counters.add(Counter::FramesAnnounced, lazy.len() as u64);
    }

    /// Sends the IHave collected for `link_id` in `part` (if any) and empties it.
    fn send_announcement(&mut self, link_id: u32, part: StreamPartKey) {
        let Some(ranges) = self.tree.announcements.get_mut(&(link_id, part)) else { return };
        if ranges.is_empty() {
            return;
        }
        if let Some(link) = self.links.get_mut(&link_id) {
            Self::send_ranges(&mut self.outbox, &mut self.counters, link, part, Kind::IHave, ranges);
            self.counters.increment(Counter::IhavesSent);
        }
        ranges.clear();
    }

    /// Sends this batch's IHaves and Prunes (control datagrams: they never wait for credit).
    fn send_tree_control(&mut self) {
        let mut announcing = std::mem::take(&mut self.tree.announcing);
        for &(link_id, part) in &announcing {
            self.send_announcement(link_id, part);
        }
        announcing.clear();
        self.tree.announcing = announcing;
        let prunes: Vec<(u32, StreamPartKey)> = self.tree.prunes.drain().collect();
        for (link_id, part) in prunes {
            self.counters.increment(Counter::PrunesSent);
            self.send_control(link_id, part, Kind::Prune);
        }
    }

    /// Sends a bodiless control datagram (Subscribe, Unsubscribe, Prune) for `part` on a link.
    fn send_control(&mut self, link_id: u32, part: StreamPartKey, kind: Kind) {
        let Some(link) = self.links.get_mut(&link_id) else { return };
        let mut builder = self.outbox.builder(HEADER_LENGTH + 1);
        builder.finish_unstamped(template(kind, part, 0, [0; 20]));
        self.outbox.send_control(&mut self.counters, link, &part, builder);
    }

    /// Grants the link's sender `granted` (a Credit datagram to its shard of `grant_part`).
    fn send_credit(outbox: &mut Outbox, counters: &mut Counters, link: &mut Link, granted: u64) {
        let mut builder = outbox.builder(HEADER_LENGTH + wire::CREDIT_BODY_LENGTH);
        builder.body_mut().extend_from_slice(&granted.to_le_bytes());
        builder.finish_unstamped(template(Kind::Credit, link.grant_part, 0, [0; 20]));
        counters.increment(Counter::CreditsSent);
        let part = link.grant_part;
        outbox.send_control(counters, link, &part, builder);
    }

    /// Whether grants must be held back: a neighbor link has more than `backlog_datagrams`
    /// Data waiting, or (policy cut) every subscribed client of some stream part has (then
    /// the publishers are faster than all of that part's subscribers, and pacing them slows
    /// nobody; while one subscriber keeps up, the slower ones are left to their queues and
    /// the cut-off).
    fn backlogged(&self) -> bool {
        let backlog = |id: &u32| self.links.get(id).is_some_and(|link| link.outbound.len() > self.config.backlog_datagrams);
        if self.neighbor_links.iter().any(backlog) {
            return true;
        }
        if self.config.slow_consumer == SlowConsumerPolicy::Skip {
            // Skipping subscribers drop their oldest data instead: they pace nobody.
            return false;
        }
        self.stream_parts.values().any(|state| {
            let mut live = state.clients.iter().filter(|(_, expiry)| **expiry >= self.now_us).map(|(id, _)| id).peekable();
            live.peek().is_some() && live.all(backlog)
        })
    }

    /// Sends the grants due for links heard from this batch (and, once no neighbor link is
    /// backlogged, for those held back).
    fn grant_credits(&mut self) {
        if self.outbox.grants.is_empty() && self.outbox.withheld.is_empty() {
            return;
        }
        let backlogged = self.backlogged();
        let now_us = self.now_us;
        let mut grants = std::mem::take(&mut self.outbox.grants);
        if !backlogged {
            grants.append(&mut self.outbox.withheld);
        }
        for link_id in grants.drain(..) {
            let Some(link) = self.links.get_mut(&link_id) else { continue };
            link.grant_listed = false;
            if backlogged {
                let since = *link.withheld_since.get_or_insert(now_us);
                if now_us < since + self.config.credit_hold_max_us {
                    if !self.outbox.withheld.contains(&link_id) {
                        self.outbox.withheld.push(link_id);
                        self.counters.increment(Counter::CreditsWithheld);
                    }
                    continue;
                }
            }
            link.withheld_since = None;
            self.outbox.withheld.retain(|id| *id != link_id);
            if let Some(granted) = link.grant.due(now_us, self.config.credit_window_datagrams) {
                Self::send_credit(&mut self.outbox, &mut self.counters, link, granted);
            }
        }
        self.outbox.grants = grants;
    }

    fn answer_nak(&mut self, link_id: u32, part: StreamPartKey, ranges: &[NakRange]) {
        let Some(state) = self.stream_parts.get(&part) else { return };
        let Some(link) = self.links.get_mut(&link_id) else { return };
        let mut tat_ns = link.repair_tat_ns;
        let now_ns = self.now_us.saturating_mul(1000);
        let key = (part, FLAG_REPAIR, Audience::Link(link_id));
        for range in ranges {
            let last = range.last_sequence.min(range.first_sequence.saturating_add(NAK_RANGE_SEQUENCES_MAX - 1));
            let chain = state.chains.get(&(range.publisher, range.chain_id));
            for sequence in range.first_sequence..=last {
                // Repair is load added when a node is already losing: it gets a budget.
                if !self.repair_rate.admit(&mut tat_ns, now_ns) {
                    self.counters.add(Counter::RepairsRateLimited, last - sequence + 1);
                    break;
                }
                let stored = chain.and_then(|c| c.repair.find(sequence)).and_then(|entry| state.repair.get(&entry, self.now_us));
                match stored {
                    Some(frame) => {
                        self.packer.append(&mut self.outbox, &mut self.links, &mut self.counters, key, &[link_id], frame);
                        self.counters.increment(Counter::RepairsSent);
                    }
                    None => self.counters.increment(Counter::RepairMisses),
                }
            }
        }
        if let Some(link) = self.links.get_mut(&link_id) {
            link.repair_tat_ns = tat_ns;
        }
    }

    /// Closes the datagrams being packed so they can be sent: call once per receive batch.
    pub fn flush(&mut self) {
        self.packer.flush(&mut self.outbox, &mut self.links, &mut self.counters);
        self.send_tree_control();
        self.grant_credits();
    }

    /// Puts the next send into `gather` (first taking back what it held from the last send,
    /// which must have completed): datagrams of one link to one destination, equal-sized but
    /// for the last, at most [`GSO_SEGMENTS_MAX`]. Control datagrams go first; Data only as
    /// far as the link's credit allows. Headers are stamped per link; bodies are shared.
    pub fn poll_gather(&mut self, gather: &mut Gather) -> Option<Transmit> {
        gather.headers.clear();
        for datagram in gather.datagrams.drain(..) {
            self.outbox.release(datagram);
        }
        while let Some(link_id) = self.outbox.ready.pop_front() {
            let Some(link) = self.links.get_mut(&link_id) else { continue };
            link.in_ready = false;
            let control = !link.control.is_empty();
            let allowance = if control { u64::MAX } else { link.credit.allowance(link.send_sequence) };
            if allowance == 0 || (!control && link.outbound.is_empty()) {
                continue;
            }
            let transmit = Outbox::take_run(link, control, allowance, gather);
            if !control {
                link.credit.sent(link.send_sequence);
            }
            if !link.outbound.is_empty() && link.credit.allowance(link.send_sequence) == 0 && link.credit.stall(self.now_us) {
                self.outbox.stalled.insert(link_id);
                self.counters.increment(Counter::CreditStalls);
            }
            self.outbox.mark_ready(link);
            self.counters.add(Counter::DatagramsSent, transmit.segments as u64);
            let drained = !control && link.config.role == LinkRole::Neighbor && link.outbound.len() <= self.config.backlog_datagrams;
            if drained && !self.outbox.withheld.is_empty() {
                // A backlog drained: the grants held back for it leave now, not at the next
                // receive (which a stalled upstream sends only as a probe).
                self.grant_credits();
            }
            return Some(transmit);
        }
        None
    }

    /// [`Relay::poll_gather`] with the datagrams copied into `buffer` (cleared first), back to
    /// back: for simulations, tests and runtimes without scatter-gather sends.
    pub fn poll_transmit(&mut self, buffer: &mut Vec<u8>) -> Option<Transmit> {
        buffer.clear();
        let mut flat = std::mem::take(&mut self.flat);
        let transmit = self.poll_gather(&mut flat);
        for (header, body) in flat.segments() {
            buffer.extend_from_slice(header);
            buffer.extend_from_slice(body);
        }
        self.flat = flat;
        transmit
    }

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Option<Micros> {
        let mut next = self.next_housekeeping_us;
        for (part, chain_id) in &self.gapped {
            if let Some(gap) = self.stream_parts.get(part).and_then(|s| s.chains.get(chain_id)).and_then(|c| c.gap) {
                next = next.min(gap.next_nak_us);
            }
        }
        for (part, chain_id) in &self.probing {
            if let Some(due) = self.stream_parts.get(part).and_then(|s| s.chains.get(chain_id)).and_then(|c| c.tail_probe_due_us) {
                next = next.min(due);
            }
        }
        for link_id in &self.outbox.stalled {
            if let Some(due) = self.links.get(link_id).and_then(|link| link.credit.probe_due_us()) {
                next = next.min(due);
            }
        }
        Some(next)
    }

    pub fn handle_timeout(&mut self, now_us: Micros) {
        self.now_us = self.now_us.max(now_us);
        self.outbox.now_us = self.now_us;
        let now_us = self.now_us;
        if now_us >= self.next_housekeeping_us {
            self.next_housekeeping_us = now_us + self.config.subscribe_interval_us;
            self.housekeeping(now_us);
        }
        self.service_gaps(now_us);
        self.service_tail_probes(now_us);
        self.service_stalls(now_us);
        self.flush();
    }

    /// Links whose Data waits for credit: a subscribed client past the slow-consumer
    /// timeout is cut off; any other stalled link sends a probe when one is due.
    fn service_stalls(&mut self, now_us: Micros) {
        let stalled: Vec<u32> = self.outbox.stalled.iter().copied().collect();
        for link_id in stalled {
            let Some(link) = self.links.get_mut(&link_id) else {
                self.outbox.stalled.remove(&link_id);
                continue;
            };
            if !link.credit.is_stalled() {
                self.outbox.stalled.remove(&link_id);
                continue;
            }
            let slow = link.config.role == LinkRole::Client
                && link.credit.stalled_for(now_us).is_some_and(|waited| waited >= self.config.slow_consumer_timeout_us);
            if slow {
                match self.config.slow_consumer {
                    SlowConsumerPolicy::Cut => self.cut_slow_consumer(link_id),
                    SlowConsumerPolicy::Skip => self.skip_slow_consumer(link_id),
                }
                continue;
            }
            if link.credit.take_probe(now_us) {
                self.counters.increment(Counter::CreditProbesSent);
                self.outbox.mark_ready(link);
            }
        }
    }

    /// Drops a slow client's waiting Data and its interest in every stream part (it is
    /// served again after its next Subscribe refresh, once it reads: skipping what it missed).
    fn cut_slow_consumer(&mut self, link_id: u32) {
        let Some(link) = self.links.get_mut(&link_id) else { return };
        self.counters.add(Counter::DropsSlowConsumer, link.outbound.len() as u64);
        for outgoing in link.outbound.drain(..) {
            self.outbox.release(outgoing.datagram);
        }
        self.packer.forget_link(link_id);
        link.credit.clear_stall();
        self.outbox.stalled.remove(&link_id);
        for state in self.stream_parts.values_mut() {
            state.clients.remove(&link_id);
        }
        self.counters.increment(Counter::SlowConsumersCut);
        self.push_event(Event::SlowConsumer { link_id });
    }

    /// Policy skip: drops a silent client's waiting Data (counted) but keeps its interest;
    /// what is sent to it next is the newest data, as soon as it grants credit again.
    fn skip_slow_consumer(&mut self, link_id: u32) {
        let Some(link) = self.links.get_mut(&link_id) else { return };
        self.counters.add(Counter::DropsSkippedAhead, link.outbound.len() as u64);
        for outgoing in link.outbound.drain(..) {
            self.outbox.release(outgoing.datagram);
        }
        link.credit.clear_stall();
        self.outbox.stalled.remove(&link_id);
        self.counters.increment(Counter::SlowConsumersSkipped);
        self.push_event(Event::SlowConsumer { link_id });
    }

    fn service_tail_probes(&mut self, now_us: Micros) {
        let due: Vec<(StreamPartKey, ChainId)> = self
            .probing
            .iter()
            .filter(|(part, chain_id)| {
                self.stream_parts
                    .get(part)
                    .and_then(|s| s.chains.get(chain_id))
                    .and_then(|c| c.tail_probe_due_us)
                    .is_none_or(|due| due <= now_us)
            })
            .copied()
            .collect();
        for (part, chain_id) in due {
            let Some(state) = self.stream_parts.get_mut(&part) else {
                self.probing.remove(&(part, chain_id));
                continue;
            };
            let Some(chain) = state.chains.get_mut(&chain_id) else {
                self.probing.remove(&(part, chain_id));
                continue;
            };
            let newest = chain.newest_sequence();
            chain.tail_probes_sent += 1;
            if chain.tail_probes_sent >= self.config.tail_probes_max {
                chain.tail_probe_due_us = None;
                self.probing.remove(&(part, chain_id));
            } else {
                chain.tail_probe_due_us = Some(now_us + (self.config.tail_probe_us << chain.tail_probes_sent));
            }
            let stored = newest.and_then(|n| chain.repair.find(n));
            let Some(record) = stored.and_then(|entry| state.repair.get(&entry, now_us)) else { continue };
            // Lazy neighbors get the probe as an announcement: one lacking the tail grafts it.
            let mut forward_to = std::mem::take(&mut self.forward_to);
            let mut announce_to = std::mem::take(&mut self.announce_to);
            state.split_neighbors(now_us, NO_LINK, &self.links, &mut forward_to, &mut announce_to);
            let key = (part, FLAG_REPAIR, Audience::Neighbors { except: NO_LINK });
            self.packer.append(&mut self.outbox, &mut self.links, &mut self.counters, key, &forward_to, record);
            self.counters.add(Counter::TailProbesSent, forward_to.len() as u64);
            self.forward_to = forward_to;
            if let Some(newest) = newest {
                self.announce(part, chain_id, newest, &announce_to);
            }
            self.announce_to = announce_to;
        }
    }

    fn housekeeping(&mut self, now_us: Micros) {
        self.packer.prune(&mut self.outbox);
        self.tree.announcements.retain(|_, ranges| !ranges.is_empty());
        let parts: Vec<StreamPartKey> = self.stream_parts.keys().copied().collect();
        let mut silent = Vec::new();
        for part in parts {
            for link_id in self.neighbor_links.clone() {
                self.send_control(link_id, part, Kind::Subscribe);
            }
            let state = self.stream_parts.get_mut(&part).expect("listed");
            state.neighbors.retain(|link_id, expiry| {
                let refreshed = *expiry >= now_us;
                if !refreshed {
                    silent.push(*link_id);
                }
                refreshed
            });
            state.lazy.retain(|link_id| state.neighbors.contains_key(link_id));
            state.clients.retain(|_, expiry| *expiry >= now_us);
            for link_id in silent.drain(..) {
                self.counters.increment(Counter::NeighborsSilent);
                self.push_event(Event::NeighborSilent { link_id, part });
            }
        }
    }

    fn service_gaps(&mut self, now_us: Micros) {
        let due: Vec<(StreamPartKey, ChainId)> = self
            .gapped
            .iter()
            .filter(|(part, chain_id)| {
                self.stream_parts
                    .get(part)
                    .and_then(|s| s.chains.get(chain_id))
                    .and_then(|c| c.gap)
                    .is_none_or(|gap| gap.next_nak_us <= now_us)
            })
            .copied()
            .collect();
        for (part, chain_id) in due {
            let Some(state) = self.stream_parts.get_mut(&part) else {
                self.gapped.remove(&(part, chain_id));
                continue;
            };
            let Some(chain) = state.chains.get_mut(&chain_id) else {
                self.gapped.remove(&(part, chain_id));
                continue;
            };
            let Some(mut gap) = chain.gap.filter(|_| chain.has_gap()) else {
                chain.gap = None;
                self.gapped.remove(&(part, chain_id));
                continue;
            };
            // Ask the neighbor the frame beyond the gap came from, then the others in turn.
            let mut askable: Vec<u32> = state.neighbors.keys().copied().collect();
            askable.sort_unstable();
            // A chain published by a client of ours can only be repaired by that client.
            if !askable.contains(&gap.source_link) && self.links.get(&gap.source_link).is_some_and(|l| l.config.role == LinkRole::Client) {
                askable.push(gap.source_link);
            }
            if let Some(position) = askable.iter().position(|id| *id == gap.source_link) {
                askable.rotate_left(position);
            }
            let ranges = chain.missing_ranges(NAK_RANGES_MAX);
            if let Some(&(first_missing, _)) = ranges.first() {
                if first_missing != gap.first_missing {
                    // The hole we were asking for is filled; a newer one gets its own retries.
                    gap.first_missing = first_missing;
                    gap.naks_sent = 0;
                }
            }
            if gap.naks_sent < self.config.nak_retries_max && !askable.is_empty() {
                let target = askable[gap.naks_sent as usize % askable.len()];
                gap.naks_sent += 1;
                // Back off (20, 40, 80, then 160 ms): a neighbor briefly starved of CPU is
                // asked again rather than the hole given up after 160 ms.
                gap.next_nak_us = now_us + (self.config.nak_interval_us << (gap.naks_sent - 1).min(3));
                chain.gap = Some(gap);
                // A NAK to a lazy neighbor is a graft: it announced what the tree did not bring,
                // so it sends in full again (it turns this link eager on receipt).
                if state.lazy.remove(&target) {
                    self.counters.increment(Counter::GraftsSent);
                }
                self.send_nak(target, part, chain_id, &ranges);
                continue;
            }
            // Given up: count the missing frames lost and release what waits behind them.
            let ordered = state.clients.values().any(|expiry| *expiry >= now_us);
            let mut deliver_to = std::mem::take(&mut self.deliver_to);
            deliver_to.clear();
            deliver_to.extend(live_links(&state.clients, now_us, NO_LINK, &self.links));
            let key = (part, 0, Audience::Clients { except: NO_LINK });
            let (packer, outbox, links, counters) = (&mut self.packer, &mut self.outbox, &mut self.links, &mut self.counters);
            let mut delivered = 0u64;
            let outcome = chain.give_up_gap(ordered, &mut |bytes: &[u8]| {
                packer.append(outbox, links, counters, key, &deliver_to, bytes);
                delivered += deliver_to.len() as u64;
            });
            self.deliver_to = deliver_to;
            self.counters.add(Counter::FramesDelivered, delivered);
            self.counters.add(Counter::FramesLost, outcome.lost);
            if chain.has_gap() {
                chain.gap = Some(chain::Gap {
                    first_missing: chain.next_sequence(),
                    next_nak_us: now_us + self.config.nak_delay_us,
                    naks_sent: 0,
                    source_link: gap.source_link,
                });
            } else {
                chain.gap = None;
                self.gapped.remove(&(part, chain_id));
            }
        }
    }

    fn send_nak(&mut self, link_id: u32, part: StreamPartKey, chain_id: ChainId, ranges: &[(u64, u64)]) {
        let Some(link) = self.links.get_mut(&link_id) else { return };
        let ranges: Vec<NakRange> = ranges
            .iter()
            .map(|&(first, last)| NakRange { publisher: chain_id.0, chain_id: chain_id.1, first_sequence: first, last_sequence: last })
            .collect();
        self.counters.increment(Counter::NaksSent);
        Self::send_ranges(&mut self.outbox, &mut self.counters, link, part, Kind::Nak, &ranges);
    }

    /// Queues a Nak or an IHave (one body encoding: frame sequence ranges) on a link.
    fn send_ranges(outbox: &mut Outbox, counters: &mut Counters, link: &mut Link, part: StreamPartKey, kind: Kind, ranges: &[NakRange]) {
        let capacity = HEADER_LENGTH + NAK_RANGE_LENGTH * ranges.len();
        let mut builder = outbox.builder(capacity.max(HEADER_LENGTH + 1));
        for range in ranges {
            wire::encode_nak_range(range, builder.body_mut());
        }
        builder.set_count(ranges.len() as u16);
        builder.finish_unstamped(template(kind, part, 0, [0; 20]));
        outbox.send_control(counters, link, &part, builder);
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The link's key, for runtimes that check tags before calling the relay (XDP mirror).
    pub fn link_key(&self, link_id: u32) -> Option<&LinkKey> {
        self.links.get(&link_id).map(|l| &l.config.key)
    }

    /// Each link's [`LinkTraffic`] since it was added.
    pub fn link_traffic(&self) -> impl Iterator<Item = (u32, LinkTraffic)> + '_ {
        self.links.iter().map(|(id, link)| (*id, link.traffic))
    }
}

/// The ranges of a Nak or IHave datagram, copied out of the receive buffer.
fn owned_ranges(datagram: &Datagram<'_>) -> Result<Vec<NakRange>, wire::WireError> {
    Ok(datagram
        .nak_ranges()?
        .map(|r| NakRange {
            publisher: r.publisher,
            chain_id: r.chain_id.to_native(),
            first_sequence: r.first_sequence.to_native(),
            last_sequence: r.last_sequence.to_native(),
        })
        .collect())
}

/// The links of an interest map that are live at `now_us`, exist, and are not `except`.
fn live_links<'a>(
    interest: &'a FastMap<u32, Micros>,
    now_us: Micros,
    except: u32,
    links: &'a FastMap<u32, Link>,
) -> impl Iterator<Item = u32> + 'a {
    interest.iter().filter(move |(id, expiry)| **id != except && **expiry >= now_us && links.contains_key(*id)).map(|(id, _)| *id)
}
