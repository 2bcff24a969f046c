//! The sans-I/O client core: packs frames into datagrams for a node and unpacks what the
//! node sends back. Time is an argument (`now_us`); the caller owns the socket.
//!
//! **Sending.** [`ClientCore::queue_frames`] packs frames of one stream part back to back
//! into a Data datagram of at most `datagram_length_max` bytes. A datagram that is full (the
//! next frame does not fit, or fewer bytes than the smallest frame are left) is padded to
//! `datagram_length_max` and closed; [`ClientCore::flush`] closes the last one unpadded. So a
//! run of datagrams to one node shard is N equal segments plus one shorter last one — one UDP
//! GSO send, described by a [`Transmit`] ([`ClientCore::poll_transmit`]). The publisher sizes
//! frames to the link's datagrams, so a frame is never cut. Every datagram carries the link
//! id, a link sequence that increases per destination shard (the node keeps a replay window
//! per link per shard), `FLAG_SINGLE_PUBLISHER` with the publisher when all its frames are
//! from one publisher, and the link tag. Link sequences start at the caller's
//! `link_seq_start` (the UDP client uses Unix time in nanoseconds so that a restarted client
//! is ahead of its previous run in the node's replay window).
//!
//! **Subscribing.** [`ClientCore::subscribe`] sends a Subscribe datagram to the owning shard
//! now and every [`SUBSCRIBE_REFRESH_US`] ([`ClientCore::poll_timeout`] /
//! [`ClientCore::handle_timeout`]); the node expires interest that is not refreshed.
//!
//! **Receiving.** [`ClientCore::handle_receive`] splits a (possibly GRO-coalesced) buffer by
//! `total_length`, drops datagrams of another link, with a wrong tag or a replayed link
//! sequence (window per node shard, the shard being `shard_of(stream part key)`), drops
//! duplicate frames (stream part, publisher, chain, frame sequence) before any hashing,
//! optionally verifies publisher signatures, orders frames per chain, and calls back with
//! each message as a [`Delivery`], borrowed from the buffer: no allocation per message. The
//! pieces of a message that spans frames are joined after ordered delivery (bounded by
//! [`REASSEMBLIES_MAX`]). Everything is counted in [`ClientCounters`].
//!
//! **Repair, publisher side.** Every queued frame also goes into a repair ring
//! ([`REPAIR_RING_BYTES_MAX`], [`REPAIR_AGE_MAX_US`]). A Nak datagram from the node (tag- and
//! replay-checked like everything else) is answered with the frames still in the ring, at
//! most [`NAK_RANGE_SEQUENCES_MAX`] per range and [`NAK_RANGES_ANSWERED_MAX`] ranges, packed
//! into Data datagrams flagged `FLAG_REPAIR` to the stream part's shard. A chain idle for
//! [`TAIL_PROBE_US`] after a publish has its newest frame resent (flagged repair;
//! [`TAIL_PROBES_MAX`] times at doubling intervals), so that a lost tail shows up at the node
//! as a gap (or is a harmless duplicate).
//!
//! **Repair, subscriber side.** The node delivers each chain's frames in order, so a frame
//! sequence jump means loss on the node→client hop. Frames ahead of the gap are held
//! (verified) in a bounded reorder buffer; after [`NAK_DELAY_US`] a Nak for the missing ranges
//! goes to the owning shard, retried at backing-off intervals from [`NAK_INTERVAL_US`] up to
//! [`NAK_RETRIES_MAX`] times per hole, then the hole is given up (counted in `frames_lost`)
//! and what follows is delivered ([`ClientCore::deliver_released`]). A chain idle for
//! [`TAIL_QUERY_US`] NAKs its next frame sequence (up to [`TAIL_QUERIES_MAX`] times, at
//! doubling intervals), which the node answers from its repair ring if the tail of a burst was
//! lost (the node tail-probes neighbors, not clients); an answer is followed at once by a
//! query for the frame after it. A query asks for one frame only: the node's ring may also
//! hold frames it is still holding back behind a gap of its own, and fetching those would
//! open a hole here that only the node's repair can fill, possibly after this client gave it
//! up.
//!
//! **Flow control** ([`crate::credit`]): the node grants each client link a window of link
//! sequences per shard, and Data to a shard leaves only within it ([`ClientCore::poll_transmit`]
//! returns nothing while the front datagram waits; [`ClientCore::data_queue_bytes`] tells the
//! caller to stop publishing). Control datagrams (Subscribe, Nak, Credit) never wait.
//! Datagrams are numbered as they leave. The other way round, the client grants the node a
//! window as it processes what arrives, so a node never floods a subscriber that stopped
//! reading (it cuts it off instead).
//!
//! Limits: Data waiting for one shard's credit holds back Data behind it for other shards;
//! one datagram is open at a time, so interleaving stream parts closes datagrams
//! early; a chain starts at the first frame seen (a lost first datagram is not repaired);
//! frames given up and arriving later are dropped as duplicates; bounds are
//! [`SEND_QUEUE_BYTES_MAX`], [`SUBSCRIPTIONS_MAX`], [`CHAINS_MAX`], [`REASSEMBLIES_MAX`],
//! [`REORDER_BYTES_MAX`], [`REORDER_SEQUENCES_MAX`], [`REPAIR_RING_BYTES_MAX`].

use super::link::ClientLinkConfig;
use super::order::{Gap, InboundChain};
use super::repair::{ChainKey, RepairRing, REPAIR_AGE_MAX_US, REPAIR_RING_BYTES_MAX};
use super::window::SequenceWindow;
use crate::credit::{GrantCredit, SendCredit, CREDIT_WINDOW_DATAGRAMS};
use crate::link::shard_of;
use crate::relay::Transmit;
use runnel_proto::crypto::Verifier;
use runnel_proto::frame::{Frame, MessageView, FRAME_HEADER_LENGTH, MESSAGE_ENTRY_LENGTH};
use runnel_proto::stream::StreamPartKey;
use runnel_proto::wire::{
    encode_nak_range, split_datagrams, stamp, ContentType, Datagram, DatagramBuilder, Encryption, HeaderFields, Kind, NakRange,
    CREDIT_BODY_LENGTH, FLAG_REPAIR, FLAG_SINGLE_PUBLISHER, HEADER_LENGTH, NAK_RANGE_LENGTH, PAYLOAD_LENGTH_MAX,
};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

/// How often a subscription is refreshed at the node.
pub const SUBSCRIBE_REFRESH_US: u64 = 1_000_000;
/// Most stream parts one client subscribes to.
pub const SUBSCRIPTIONS_MAX: usize = 1024;
/// Bytes of closed datagrams waiting for `poll_transmit` beyond which `queue_records` refuses.
pub const SEND_QUEUE_BYTES_MAX: usize = 8 << 20;
/// Most (stream part, publisher, chain) receive states kept; a new chain beyond this evicts
/// the least recently active one (its held records are delivered, its holes given up).
pub const CHAINS_MAX: usize = 4096;
/// Longest range of one received NAK that is answered (bounds the work one NAK causes).
pub const NAK_RANGE_SEQUENCES_MAX: u64 = 4096;
/// Ranges of one received NAK that are answered; further ones are ignored.
pub const NAK_RANGES_ANSWERED_MAX: usize = 16;
/// Most ranges one sent NAK asks for (fewer if the datagram is too small for them).
const NAK_RANGES_SENT_MAX: usize = 16;
/// A published chain idle this long has its newest record resent (tail probe) ...
pub const TAIL_PROBE_US: u64 = 30_000;
/// ... this many times per idle period, at doubling intervals (30, 60, 120 ms): a lost
/// probe is covered by the next. One more than the relay sends between nodes, because a tail
/// lost on the publisher's hop exists nowhere else.
pub const TAIL_PROBES_MAX: u32 = 3;
/// Wait this long after a gap opens before the first NAK.
pub const NAK_DELAY_US: u64 = 5_000;
/// Between the first NAK retries of one hole (doubling up to 8×).
pub const NAK_INTERVAL_US: u64 = 20_000;
/// NAKs per hole before it is given up and counted lost.
pub const NAK_RETRIES_MAX: u32 = 8;
/// A received chain idle this long asks the node for its next sequence (tail query).
pub const TAIL_QUERY_US: u64 = 30_000;
/// Tail queries per idle period, at TAIL_QUERY_US, then doubling intervals (an answer or
/// a query may be lost too).
pub const TAIL_QUERIES_MAX: u32 = 3;
/// Bytes of records held (all chains) while gaps are repaired; beyond, gaps are given up.
pub const REORDER_BYTES_MAX: usize = 16 << 20;
/// Farthest a held record may be ahead of its chain's next sequence; beyond, the oldest
/// sequences are given up.
pub const REORDER_SEQUENCES_MAX: u64 = 65_536;
/// Most messages spanning frames joined at once (one per chain at most); a new one evicts
/// another, counted in `messages_incomplete`.
pub const REASSEMBLIES_MAX: usize = 16;
/// Largest UDP payload one GSO send may carry (IPv4: 65535 − 20 − 8).
pub const GSO_BYTES_MAX: usize = 65_507;
/// Most segments one GSO send may carry (the kernel's UDP_MAX_SEGMENTS).
pub const GSO_SEGMENTS_MAX: usize = 64;
/// Smallest possible frame: fewer free bytes than this close a datagram as full.
const FRAME_LENGTH_MIN: usize = FRAME_HEADER_LENGTH + MESSAGE_ENTRY_LENGTH;

/// What the client did, for status output and tests. Every field is incremented somewhere.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientCounters {
    pub frames_queued: u64,
    pub datagrams_sent: u64,
    /// Datagrams the socket refused (the UDP wrapper counts these).
    pub datagrams_send_failed: u64,
    /// Times the kernel refused a GSO send and the wrapper fell back to one send per datagram.
    pub gso_fallbacks: u64,
    pub subscribes_sent: u64,
    pub datagrams_received: u64,
    pub datagrams_malformed: u64,
    pub datagrams_unknown_link: u64,
    pub datagrams_bad_tag: u64,
    pub datagrams_replayed: u64,
    /// Well-formed datagrams of a kind a client does not act on (Subscribe, Unsubscribe).
    pub datagrams_ignored: u64,
    /// Messages handed to the application (a message spanning frames counts once).
    pub messages_delivered: u64,
    /// Messages dropped incomplete: a piece was given up, or [`REASSEMBLIES_MAX`] was hit.
    pub messages_incomplete: u64,
    pub frames_malformed: u64,
    pub frames_bad_signature: u64,
    /// Frames at or below a chain's delivery point (delivered or given up) or already held.
    pub frames_duplicate: u64,
    /// New frames that came in a datagram flagged repair (a NAK answer or tail probe).
    pub frames_repaired: u64,
    /// Frames that arrived ahead of a gap and waited in the reorder buffer.
    pub frames_held: u64,
    /// Frame sequences given up after NAK retries ran out or a reorder bound was hit.
    pub frames_lost: u64,
    /// Times a reorder bound ([`REORDER_BYTES_MAX`], [`REORDER_SEQUENCES_MAX`]) gave a gap up early.
    pub reorder_overflows: u64,
    /// Chains evicted because [`CHAINS_MAX`] were tracked.
    pub chains_evicted: u64,
    /// NAKs this client sent for gaps (retries included) and tail queries.
    pub naks_sent: u64,
    pub tail_queries_sent: u64,
    /// Publisher side: NAKs received from the node.
    pub naks_received: u64,
    /// Frames resent to answer NAKs.
    pub repairs_sent: u64,
    /// Sequences NAKed that the repair ring no longer (or never) held.
    pub repair_misses: u64,
    /// Sequences NAKed but not resent because the send queue was full.
    pub repairs_dropped: u64,
    /// Frames resent because their chain went idle (tail-loss probes).
    pub tail_probes_sent: u64,
    /// Datagrams flagged repair queued (NAK answers and tail probes; in `datagrams_sent`).
    pub datagrams_repair: u64,
    /// Frames pushed out of the repair ring by its byte or age bound.
    pub repair_ring_evictions: u64,
    /// Frames larger than this link's datagrams (not sent; the publisher sizes frames).
    pub frames_too_large: u64,
    /// Credit datagrams sent to the node (window grants for what it sends us).
    pub credits_sent: u64,
    /// Credit datagrams received from the node.
    pub credits_received: u64,
    /// Times Data waited because the node's credit was used up.
    pub credit_stalls: u64,
    /// Datagrams sent beyond the window after waiting for credit.
    pub credit_probes_sent: u64,
}

/// One received message, borrowed from the receive buffer.
#[derive(Clone, Copy, Debug)]
pub struct Delivery<'a> {
    pub stream_part_key: StreamPartKey,
    pub publisher: [u8; 20],
    pub chain_id: u64,
    pub sequence: u64,
    pub timestamp_ms: u64,
    pub previous: Option<(u64, u64)>,
    pub content_type: ContentType,
    pub encryption: Encryption,
    pub group_key_id: &'a [u8],
    pub payload: &'a [u8],
    /// The frame that carried the message (its last piece, for a message spanning frames),
    /// byte for byte as the publisher signed it.
    pub frame: &'a [u8],
}

/// A [`Delivery`] that owns its bytes (one allocation: the record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedDelivery {
    pub stream_part_key: StreamPartKey,
    pub publisher: [u8; 20],
    pub chain_id: u64,
    pub sequence: u64,
    pub timestamp_ms: u64,
    pub previous: Option<(u64, u64)>,
    pub content_type: ContentType,
    pub encryption: Encryption,
    pub group_key_id: Vec<u8>,
    pub payload: Vec<u8>,
}

impl OwnedDelivery {
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

impl Delivery<'_> {
    pub fn to_owned(&self) -> OwnedDelivery {
        OwnedDelivery {
            stream_part_key: self.stream_part_key,
            publisher: self.publisher,
            chain_id: self.chain_id,
            sequence: self.sequence,
            timestamp_ms: self.timestamp_ms,
            previous: self.previous,
            content_type: self.content_type,
            encryption: self.encryption,
            group_key_id: self.group_key_id.to_vec(),
            payload: self.payload.to_vec(),
        }
    }
}

/// Why records or a subscription were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientError {
    /// The bytes given to `queue_frames` are not a sequence of valid frames (each at most a
    /// datagram body).
    MalformedFrames,
    /// More than [`SEND_QUEUE_BYTES_MAX`] bytes wait for `poll_transmit`: send them first.
    SendQueueFull,
    /// Already subscribed to [`SUBSCRIPTIONS_MAX`] stream parts.
    TooManySubscriptions,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::MalformedFrames => f.write_str("not a sequence of valid frames that fit this link's datagrams"),
            ClientError::SendQueueFull => write!(f, "{SEND_QUEUE_BYTES_MAX} bytes wait to be sent: drain poll_transmit first"),
            ClientError::TooManySubscriptions => write!(f, "at most {SUBSCRIPTIONS_MAX} subscriptions per client"),
        }
    }
}

impl std::error::Error for ClientError {}

/// Closed datagrams waiting to be sent, grouped into GSO-shaped [`Transmit`]s, each with the
/// node shard it goes to (whose link sequences number it when it leaves).
#[derive(Debug, Default)]
struct SendQueue {
    bytes: Vec<u8>,
    read: usize,
    transmits: VecDeque<(Transmit, u16)>,
}

impl SendQueue {
    fn pending_bytes(&self) -> usize {
        self.bytes.len() - self.read
    }

    /// The shard the next transmit goes to.
    fn front_shard(&self) -> Option<u16> {
        self.transmits.front().map(|(_, shard)| *shard)
    }

    /// Appends one datagram, extending the last transmit when the GSO shape allows.
    fn push(&mut self, shard: u16, destination: SocketAddr, datagram: &[u8]) {
        let length = datagram.len();
        self.bytes.extend_from_slice(datagram);
        if let Some((last, _)) = self.transmits.back_mut() {
            let all_full = last.length == last.segments * last.segment_size;
            if last.destination == destination
                && all_full
                && length <= last.segment_size
                && last.segments < GSO_SEGMENTS_MAX
                && last.length + length <= GSO_BYTES_MAX
            {
                last.segments += 1;
                last.length += length;
                return;
            }
        }
        self.transmits.push_back((Transmit { destination, segment_size: length, segments: 1, length }, shard));
    }

    /// Copies out at most `segments_max` (≥ 1) datagrams of the front transmit.
    fn pop(&mut self, buffer: &mut Vec<u8>, segments_max: usize) -> Option<(Transmit, u16)> {
        let (front, shard) = self.transmits.front_mut()?;
        let shard = *shard;
        let transmit = if front.segments > segments_max {
            // Only full-size segments precede the last one, so the split is exact.
            let taken = Transmit { segments: segments_max, length: segments_max * front.segment_size, ..*front };
            front.segments -= segments_max;
            front.length -= taken.length;
            taken
        } else {
            self.transmits.pop_front().expect("front exists").0
        };
        buffer.clear();
        buffer.extend_from_slice(&self.bytes[self.read..self.read + transmit.length]);
        self.read += transmit.length;
        if self.transmits.is_empty() {
            self.bytes.clear();
            self.read = 0;
        }
        Some((transmit, shard))
    }
}

#[derive(Clone, Copy, Debug)]
struct OpenDatagram {
    stream_part_key: StreamPartKey,
    publisher: [u8; 20],
    single_publisher: bool,
    /// 0 or FLAG_REPAIR.
    flags: u16,
}

#[derive(Clone, Copy, Debug)]
struct Subscription {
    stream_part_key: StreamPartKey,
    next_refresh_us: u64,
}

/// The pieces of messages that span frames, joined after ordered delivery (so they arrive
/// in order and nothing is held out of order here). Bounded by [`REASSEMBLIES_MAX`] messages
/// of at most [`PAYLOAD_LENGTH_MAX`] bytes.
#[derive(Debug, Default)]
struct Joiner {
    partials: Vec<Partial>,
}

/// One message being joined.
#[derive(Debug)]
struct Partial {
    chain: ChainKey,
    message_sequence: u64,
    /// The frame its next piece must come in: a piece in between that was given up leaves a
    /// hole that no later piece fills.
    next_frame_sequence: u64,
    /// None once a piece is missing: the rest of its pieces are consumed and the message is
    /// counted incomplete once.
    payload: Option<Vec<u8>>,
}

impl Joiner {
    /// Adds one piece, carried by frame `frame_sequence`; returns the whole payload when
    /// `message` is its last piece and no piece is missing.
    fn add(&mut self, counters: &mut ClientCounters, key: &ChainKey, frame_sequence: u64, message: &MessageView<'_>) -> Option<Vec<u8>> {
        let found = self.partials.iter().position(|p| p.chain == *key);
        if let Some(index) = found.filter(|&i| !(message.continuation && self.partials[i].message_sequence == message.sequence)) {
            // Another message of this chain was being joined: its last piece was given up.
            self.partials.swap_remove(index);
            counters.messages_incomplete += 1;
        }
        let index = match self.partials.iter().position(|p| p.chain == *key) {
            Some(index) => index,
            None => {
                if self.partials.len() >= REASSEMBLIES_MAX {
                    self.partials.remove(0);
                    counters.messages_incomplete += 1;
                }
                // A later piece whose start was given up (or never seen) starts out broken.
                let payload = (!message.continuation).then(Vec::new);
                self.partials.push(Partial {
                    chain: *key,
                    message_sequence: message.sequence,
                    next_frame_sequence: frame_sequence,
                    payload,
                });
                self.partials.len() - 1
            }
        };
        let partial = &mut self.partials[index];
        let too_long = partial.payload.as_ref().is_some_and(|p| p.len() + message.payload.len() > PAYLOAD_LENGTH_MAX);
        if partial.next_frame_sequence != frame_sequence || too_long {
            partial.payload = None;
        }
        partial.next_frame_sequence = frame_sequence.saturating_add(1);
        if let Some(payload) = &mut partial.payload {
            payload.extend_from_slice(message.payload);
        }
        if message.continues {
            return None;
        }
        let whole = self.partials.swap_remove(index).payload;
        if whole.is_none() {
            counters.messages_incomplete += 1;
        }
        whole
    }
}

/// Options of a [`ClientCore`].
#[derive(Clone, Copy, Debug)]
pub struct CoreOptions {
    /// Verify publisher signatures of received records (the node verifies too, unless it
    /// runs with `verify = "none"`).
    pub verify: bool,
    /// First link sequence sent to each shard.
    pub link_seq_start: u64,
}

impl Default for CoreOptions {
    fn default() -> Self {
        Self { verify: true, link_seq_start: 1 }
    }
}

/// The sans-I/O state of one client link.
#[derive(Debug)]
pub struct ClientCore {
    link: ClientLinkConfig,
    options: CoreOptions,
    verifier: Verifier,
    /// Next link sequence per destination shard (taken as datagrams leave).
    send_link_seq: Vec<u64>,
    /// What each node shard has granted us, and what we grant it (with the stream part its
    /// Credit names, so it reaches that shard), and which shards are due a grant decision.
    send_credit: Vec<SendCredit>,
    grant: Vec<GrantCredit>,
    grant_part: Vec<StreamPartKey>,
    grant_pending: Vec<bool>,
    /// The latest time the caller passed in.
    now_us: u64,
    builder: DatagramBuilder,
    control_builder: DatagramBuilder,
    nak_builder: DatagramBuilder,
    nak_ranges_max: usize,
    open: Option<OpenDatagram>,
    /// Data datagrams (they wait for credit) and control datagrams (they never do).
    send_queue: SendQueue,
    control_queue: SendQueue,
    subscriptions: Vec<Subscription>,
    /// Replay window per node shard.
    receive_windows: Vec<SequenceWindow>,
    chains: HashMap<ChainKey, InboundChain>,
    /// Chains with a pending timer (gap NAK or tail query), each once.
    timers: Vec<ChainKey>,
    /// Chains whose held records became deliverable in `handle_timeout`, each once.
    released: Vec<ChainKey>,
    /// Bytes of records held in all chains.
    held_bytes: usize,
    joiner: Joiner,
    repair_ring: RepairRing,
    /// Reused buffers: a record copied out of the ring, due probes, NAK ranges.
    repair_scratch: Vec<u8>,
    probe_scratch: Vec<ChainKey>,
    range_scratch: Vec<(u64, u64)>,
    counters: ClientCounters,
}

impl ClientCore {
    pub fn new(link: &ClientLinkConfig, options: CoreOptions) -> Self {
        let shards = link.node_shards as usize;
        // The link file guarantees room for at least one range (DATAGRAM_LENGTH_MIN).
        let nak_ranges_max = ((link.datagram_length_max - HEADER_LENGTH) / NAK_RANGE_LENGTH).clamp(1, NAK_RANGES_SENT_MAX);
        Self {
            link: link.clone(),
            options,
            verifier: Verifier::default(),
            send_link_seq: vec![options.link_seq_start; shards],
            send_credit: vec![SendCredit::new(options.link_seq_start, CREDIT_WINDOW_DATAGRAMS); shards],
            grant: vec![GrantCredit::default(); shards],
            grant_part: vec![StreamPartKey([0; 32]); shards],
            grant_pending: vec![false; shards],
            now_us: 0,
            builder: DatagramBuilder::new(link.datagram_length_max),
            control_builder: DatagramBuilder::new(HEADER_LENGTH + 1),
            nak_builder: DatagramBuilder::new(HEADER_LENGTH + NAK_RANGE_LENGTH * nak_ranges_max),
            nak_ranges_max,
            open: None,
            send_queue: SendQueue::default(),
            control_queue: SendQueue::default(),
            subscriptions: Vec::new(),
            receive_windows: vec![SequenceWindow::default(); shards],
            chains: HashMap::new(),
            timers: Vec::new(),
            released: Vec::new(),
            held_bytes: 0,
            joiner: Joiner::default(),
            repair_ring: RepairRing::new(REPAIR_RING_BYTES_MAX, REPAIR_AGE_MAX_US, TAIL_PROBE_US, TAIL_PROBES_MAX),
            repair_scratch: Vec::new(),
            probe_scratch: Vec::new(),
            range_scratch: Vec::new(),
            counters: ClientCounters::default(),
        }
    }

    pub fn link(&self) -> &ClientLinkConfig {
        &self.link
    }

    pub fn counters(&self) -> &ClientCounters {
        &self.counters
    }

    /// For the I/O wrapper, which counts send failures and GSO fallbacks.
    pub fn counters_mut(&mut self) -> &mut ClientCounters {
        &mut self.counters
    }

    /// Bytes of closed datagrams not yet handed out by `poll_transmit`.
    pub fn send_queue_bytes(&self) -> usize {
        self.send_queue.pending_bytes() + self.control_queue.pending_bytes()
    }

    /// Bytes of closed Data datagrams waiting (for the socket or for the node's credit): a
    /// publisher stops publishing while this is large.
    pub fn data_queue_bytes(&self) -> usize {
        self.send_queue.pending_bytes()
    }

    /// The node shard that owns `key`, and its address.
    fn destination(&self, key: &StreamPartKey) -> (u16, SocketAddr) {
        let shard = shard_of(key, self.link.node_shards);
        (shard, self.link.shard_address(shard))
    }

    /// Closes the open Data datagram; `pad` makes it a full GSO segment (more follows).
    fn close_open(&mut self, pad: bool) {
        let Some(open) = self.open.take() else { return };
        if pad {
            self.builder.pad_to(self.link.datagram_length_max);
        }
        let (shard, destination) = self.destination(&open.stream_part_key);
        let fields = HeaderFields {
            flags: open.flags | if open.single_publisher { FLAG_SINGLE_PUBLISHER } else { 0 },
            publisher: if open.single_publisher { open.publisher } else { [0; 20] },
            ..HeaderFields::new(Kind::Data, self.link.link_id, 0, open.stream_part_key.0)
        };
        if open.flags & FLAG_REPAIR != 0 {
            self.counters.datagrams_repair += 1;
        }
        self.send_queue.push(shard, destination, self.builder.finish_unstamped(fields));
        self.builder.reset();
    }

    /// Queues encoded frames (back to back, e.g. [`super::Publisher::frames`]) of one
    /// stream part, published at `now_us`; they are kept in the repair ring too. Nothing is
    /// queued if the bytes are not all valid frames that fit this link's datagrams.
    pub fn queue_frames(&mut self, now_us: u64, stream_part_key: &StreamPartKey, frames: &[u8]) -> Result<usize, ClientError> {
        self.now_us = self.now_us.max(now_us);
        if self.send_queue.pending_bytes() > SEND_QUEUE_BYTES_MAX {
            return Err(ClientError::SendQueueFull);
        }
        let body_max = self.link.datagram_length_max - HEADER_LENGTH;
        let mut at = 0;
        while at < frames.len() {
            let frame = Frame::parse(&frames[at..]).map_err(|_| ClientError::MalformedFrames)?;
            if frame.bytes.len() > body_max {
                self.counters.frames_too_large += 1;
                return Err(ClientError::MalformedFrames);
            }
            at += frame.bytes.len();
        }
        let mut count = 0;
        let mut rest = frames;
        while !rest.is_empty() {
            let frame = Frame::parse(rest).expect("validated above");
            rest = &rest[frame.bytes.len()..];
            let chain = (stream_part_key.0, frame.publisher(), frame.chain_id());
            self.repair_ring.insert(now_us, chain, frame.sequence(), frame.bytes, &mut self.counters.repair_ring_evictions);
            self.push_frame(stream_part_key, &frame, 0);
            count += 1;
        }
        self.counters.frames_queued += count as u64;
        Ok(count)
    }

    /// Appends a frame to the open datagram of (`stream_part_key`, `flags`), opening one.
    fn push_frame(&mut self, stream_part_key: &StreamPartKey, frame: &Frame<'_>, flags: u16) {
        let publisher = frame.publisher();
        if let Some(open) = self.open {
            if open.stream_part_key != *stream_part_key || open.flags != flags {
                let same_destination =
                    shard_of(&open.stream_part_key, self.link.node_shards) == shard_of(stream_part_key, self.link.node_shards);
                self.close_open(same_destination);
            }
        }
        if self.open.is_some() && !self.builder.try_push(frame.bytes) {
            self.close_open(true);
        }
        match &mut self.open {
            Some(open) => open.single_publisher &= open.publisher == publisher,
            None => {
                let pushed = self.builder.try_push(frame.bytes);
                assert!(pushed, "a frame that fits a datagram body fits an empty datagram");
                self.open = Some(OpenDatagram { stream_part_key: *stream_part_key, publisher, single_publisher: true, flags });
            }
        }
        if self.builder.remaining() < FRAME_LENGTH_MIN {
            self.close_open(true);
        }
    }

    /// Closes the open datagram (unpadded: it is the last of its run) so it can be sent.
    pub fn flush(&mut self) {
        self.close_open(false);
    }

    /// Writes the next send into `buffer` (cleared first): `segments` datagrams to one
    /// destination, all `segment_size` bytes except possibly the last. Control datagrams
    /// first; then Data as far as the destination shard's credit allows (None while the
    /// front Data waits for credit: `poll_timeout` says when a probe is due).
    pub fn poll_transmit(&mut self, buffer: &mut Vec<u8>) -> Option<Transmit> {
        if let Some((transmit, shard)) = self.control_queue.pop(buffer, usize::MAX) {
            self.stamp(buffer, &transmit, shard);
            self.counters.datagrams_sent += transmit.segments as u64;
            return Some(transmit);
        }
        let shard = self.send_queue.front_shard()?;
        let credit = &mut self.send_credit[shard as usize];
        let allowance = credit.allowance(self.send_link_seq[shard as usize]);
        if allowance == 0 {
            if credit.stall(self.now_us) {
                self.counters.credit_stalls += 1;
            }
            return None;
        }
        let (transmit, shard) = self.send_queue.pop(buffer, usize::try_from(allowance).unwrap_or(usize::MAX))?;
        self.stamp(buffer, &transmit, shard);
        self.send_credit[shard as usize].sent(self.send_link_seq[shard as usize]);
        self.counters.datagrams_sent += transmit.segments as u64;
        Some(transmit)
    }

    /// Numbers and tags each datagram of a transmit with its shard's next link sequences.
    fn stamp(&mut self, buffer: &mut [u8], transmit: &Transmit, shard: u16) {
        let sequence = &mut self.send_link_seq[shard as usize];
        for datagram in buffer[..transmit.length].chunks_mut(transmit.segment_size) {
            stamp(datagram, self.link.link_id, *sequence, &self.link.key);
            *sequence = sequence.wrapping_add(1);
        }
    }

    fn send_control(&mut self, kind: Kind, stream_part_key: &StreamPartKey) {
        let (shard, destination) = self.destination(stream_part_key);
        let fields = HeaderFields::new(kind, self.link.link_id, 0, stream_part_key.0);
        self.control_builder.reset();
        self.control_queue.push(shard, destination, self.control_builder.finish_unstamped(fields));
        if kind == Kind::Subscribe {
            self.counters.subscribes_sent += 1;
        }
    }

    /// Grants each shard that sent us something this call what is due (a Credit datagram).
    fn grant_credits(&mut self) {
        for shard in 0..self.grant_pending.len() {
            if !std::mem::take(&mut self.grant_pending[shard]) {
                continue;
            }
            let Some(granted) = self.grant[shard].due(self.now_us, CREDIT_WINDOW_DATAGRAMS) else { continue };
            let part = self.grant_part[shard];
            let fields = HeaderFields::new(Kind::Credit, self.link.link_id, 0, part.0);
            let mut builder = DatagramBuilder::from_buffer(std::mem::take(&mut self.repair_scratch), HEADER_LENGTH + CREDIT_BODY_LENGTH);
            builder.body_mut().extend_from_slice(&granted.to_le_bytes());
            self.control_queue.push(shard as u16, self.link.shard_address(shard as u16), builder.finish_unstamped(fields));
            self.repair_scratch = builder.into_buffer();
            self.counters.credits_sent += 1;
        }
    }

    /// Queues a Nak for `ranges` (inclusive) of one chain to the shard that owns its stream part.
    fn send_nak(&mut self, chain: &ChainKey, ranges: &[(u64, u64)]) {
        let stream_part_key = StreamPartKey(chain.0);
        let (shard, destination) = self.destination(&stream_part_key);
        self.nak_builder.reset();
        let count = ranges.len().min(self.nak_ranges_max);
        for &(first_sequence, last_sequence) in &ranges[..count] {
            let range = NakRange { publisher: chain.1, chain_id: chain.2, first_sequence, last_sequence };
            encode_nak_range(&range, self.nak_builder.body_mut());
        }
        self.nak_builder.set_count(count as u16);
        let fields = HeaderFields::new(Kind::Nak, self.link.link_id, 0, chain.0);
        self.control_queue.push(shard, destination, self.nak_builder.finish_unstamped(fields));
        self.counters.naks_sent += 1;
    }

    /// Subscribes to a stream part: a Subscribe now and one every second after.
    pub fn subscribe(&mut self, now_us: u64, stream_part_key: &StreamPartKey) -> Result<(), ClientError> {
        self.now_us = self.now_us.max(now_us);
        let next_refresh_us = now_us + SUBSCRIBE_REFRESH_US;
        match self.subscriptions.iter().position(|s| s.stream_part_key == *stream_part_key) {
            Some(index) => self.subscriptions[index].next_refresh_us = next_refresh_us,
            None if self.subscriptions.len() >= SUBSCRIPTIONS_MAX => return Err(ClientError::TooManySubscriptions),
            None => self.subscriptions.push(Subscription { stream_part_key: *stream_part_key, next_refresh_us }),
        }
        self.send_control(Kind::Subscribe, stream_part_key);
        Ok(())
    }

    /// Stops refreshing a subscription and tells the node at once.
    pub fn unsubscribe(&mut self, stream_part_key: &StreamPartKey) {
        self.subscriptions.retain(|s| s.stream_part_key != *stream_part_key);
        self.send_control(Kind::Unsubscribe, stream_part_key);
    }

    /// Whether the client holds any subscription (then only `handle_receive`'s caller may
    /// consume what the socket receives, since that carries messages).
    pub fn is_subscribed(&self) -> bool {
        !self.subscriptions.is_empty()
    }

    /// When [`ClientCore::handle_timeout`] must next be called (possibly a little early).
    pub fn poll_timeout(&self) -> Option<u64> {
        let refresh = self.subscriptions.iter().map(|s| s.next_refresh_us);
        let chains = self.timers.iter().filter_map(|key| self.chains.get(key).and_then(InboundChain::next_timer_us));
        let credit_probes = self.send_credit.iter().filter_map(SendCredit::probe_due_us);
        refresh.chain(chains).chain(self.repair_ring.next_probe_due_us()).chain(credit_probes).min()
    }

    /// Refreshes due subscriptions, sends due tail probes,
    /// NAKs and tail queries, and gives up holes whose retries ran out (what they released
    /// is handed out by [`ClientCore::deliver_released`]).
    pub fn handle_timeout(&mut self, now_us: u64) {
        self.now_us = self.now_us.max(now_us);
        for credit in &mut self.send_credit {
            if credit.take_probe(now_us) {
                self.counters.credit_probes_sent += 1;
            }
        }
        for index in 0..self.subscriptions.len() {
            let subscription = self.subscriptions[index];
            if subscription.next_refresh_us <= now_us {
                self.subscriptions[index].next_refresh_us = now_us + SUBSCRIBE_REFRESH_US;
                self.send_control(Kind::Subscribe, &subscription.stream_part_key);
            }
        }
        self.send_tail_probes(now_us);
        self.service_chains(now_us);
    }

    /// Resends the newest frame of each published chain that went idle.
    fn send_tail_probes(&mut self, now_us: u64) {
        self.repair_ring.evict_older(now_us, &mut self.counters.repair_ring_evictions);
        let mut due = std::mem::take(&mut self.probe_scratch);
        due.clear();
        self.repair_ring.take_due_probes(now_us, &mut due);
        for chain in &due {
            if let Some(sequence) = self.repair_ring.newest(chain).and_then(|r| Frame::parse(r).ok()).map(|r| r.sequence()) {
                if self.resend_stored(chain, sequence) {
                    self.counters.tail_probes_sent += 1;
                }
            }
        }
        if !due.is_empty() {
            self.close_open(false);
        }
        self.probe_scratch = due;
    }

    /// Queues the ring's frame of `chain` at `sequence` again, flagged repair; false if the
    /// ring does not hold it.
    fn resend_stored(&mut self, chain: &ChainKey, sequence: u64) -> bool {
        let Some(stored) = self.repair_ring.get(chain, sequence) else { return false };
        let mut scratch = std::mem::take(&mut self.repair_scratch);
        scratch.clear();
        scratch.extend_from_slice(stored);
        // The ring holds only frames validated by queue_frames.
        let resent = match Frame::parse(&scratch) {
            Ok(frame) => {
                self.push_frame(&StreamPartKey(chain.0), &frame, FLAG_REPAIR);
                true
            }
            Err(_) => false,
        };
        self.repair_scratch = scratch;
        resent
    }

    /// Answers a node's NAK from the repair ring.
    fn answer_nak(&mut self, now_us: u64, datagram: &Datagram<'_>) {
        self.counters.naks_received += 1;
        let Ok(ranges) = datagram.nak_ranges() else {
            self.counters.datagrams_malformed += 1;
            return;
        };
        self.repair_ring.evict_older(now_us, &mut self.counters.repair_ring_evictions);
        let part = datagram.stream_part_key();
        for range in ranges.take(NAK_RANGES_ANSWERED_MAX) {
            let chain = (part.0, range.publisher, range.chain_id.to_native());
            let first = range.first_sequence.to_native();
            let last = range.last_sequence.to_native().min(first.saturating_add(NAK_RANGE_SEQUENCES_MAX - 1));
            for sequence in first..=last {
                if self.send_queue_bytes() > SEND_QUEUE_BYTES_MAX {
                    self.counters.repairs_dropped += last - sequence + 1;
                    break;
                }
                if self.resend_stored(&chain, sequence) {
                    self.counters.repairs_sent += 1;
                } else {
                    self.counters.repair_misses += 1;
                }
            }
        }
        self.close_open(false);
    }

    /// Drives the receive chains' timers: NAKs for open gaps, giving up holes whose retries
    /// ran out, and tail queries of idle chains.
    fn service_chains(&mut self, now_us: u64) {
        let mut index = 0;
        while index < self.timers.len() {
            let key = self.timers[index];
            let Some(chain) = self.chains.get_mut(&key) else {
                self.timers.swap_remove(index);
                continue;
            };
            let mut nak = false;
            let mut tail_query = None;
            if chain.settling_until_us.is_some_and(|until| until <= now_us) {
                // Settled: `deliver_released` starts the chain at its lowest held record.
                chain.settling_until_us = None;
                chain.gap = Some(Gap { first_missing: chain.next_sequence(), naks_sent: 0, next_nak_us: now_us + NAK_DELAY_US });
                if !chain.release_listed {
                    chain.release_listed = true;
                    self.released.push(key);
                }
            }
            if let Some(mut gap) = chain.gap.filter(|g| g.next_nak_us <= now_us) {
                if !chain.has_held() {
                    chain.gap = None;
                } else {
                    if gap.first_missing != chain.next_sequence() {
                        // The hole asked for is filled (or given up): a new one, new retries.
                        gap = Gap { first_missing: chain.next_sequence(), naks_sent: 0, next_nak_us: now_us };
                    }
                    if gap.naks_sent < NAK_RETRIES_MAX {
                        gap.naks_sent += 1;
                        // Backing off (20, 40, 80, then 160 ms) rides out a node that is
                        // briefly starved of CPU instead of giving the hole up after 160 ms.
                        gap.next_nak_us = now_us + (NAK_INTERVAL_US << (gap.naks_sent - 1).min(3));
                        chain.missing_ranges(self.nak_ranges_max, &mut self.range_scratch);
                        nak = true;
                    } else {
                        self.counters.frames_lost += chain.skip_hole(u64::MAX);
                        // What follows the hole is released; a further hole gets fresh retries.
                        gap = Gap { first_missing: chain.next_sequence(), naks_sent: 0, next_nak_us: now_us + NAK_DELAY_US };
                        if !chain.release_listed {
                            chain.release_listed = true;
                            self.released.push(key);
                        }
                    }
                    chain.gap = Some(gap);
                }
            }
            if chain.tail_query_due_us.is_some_and(|due| due <= now_us) {
                if chain.gap.is_some() {
                    // The gap's NAKs are talking to the node; ask for the tail after it.
                    chain.tail_query_due_us = Some(now_us + TAIL_QUERY_US);
                } else {
                    chain.tail_queries_sent += 1;
                    chain.tail_query_due_us =
                        (chain.tail_queries_sent < TAIL_QUERIES_MAX).then(|| now_us + (TAIL_QUERY_US << chain.tail_queries_sent));
                    // Without a gap nothing is held: the next sequence follows the newest.
                    tail_query = Some((chain.next_sequence(), chain.next_sequence()));
                }
            }
            if chain.next_timer_us().is_none() {
                chain.timer_listed = false;
                self.timers.swap_remove(index);
            } else {
                index += 1;
            }
            if nak {
                let ranges = std::mem::take(&mut self.range_scratch);
                self.send_nak(&key, &ranges);
                self.range_scratch = ranges;
            }
            if let Some(range) = tail_query {
                self.send_nak(&key, &[range]);
                self.counters.tail_queries_sent += 1;
            }
        }
    }

    /// Hands out the records that `handle_timeout` released by giving up a hole, in chain
    /// order. `handle_receive` does this first, too.
    pub fn deliver_released(&mut self, on_delivery: &mut impl FnMut(Delivery<'_>)) {
        while let Some(key) = self.released.pop() {
            if let Some(chain) = self.chains.get_mut(&key) {
                chain.release_listed = false;
                self.release(&key, on_delivery);
            }
        }
    }

    /// Feeds one receive buffer (one datagram or several coalesced by GRO); calls
    /// `on_delivery` for each new, valid message, in chain order.
    pub fn handle_receive(&mut self, now_us: u64, buffer: &[u8], on_delivery: &mut impl FnMut(Delivery<'_>)) {
        self.now_us = self.now_us.max(now_us);
        if !self.released.is_empty() {
            self.deliver_released(on_delivery);
        }
        for item in split_datagrams(buffer) {
            self.counters.datagrams_received += 1;
            let datagram = match item {
                Ok(datagram) => datagram,
                Err(_) => {
                    self.counters.datagrams_malformed += 1;
                    continue;
                }
            };
            if datagram.link_id() != self.link.link_id {
                self.counters.datagrams_unknown_link += 1;
                continue;
            }
            if !datagram.tag_matches(&self.link.key) {
                self.counters.datagrams_bad_tag += 1;
                continue;
            }
            let stream_part_key = datagram.stream_part_key();
            let shard = shard_of(&stream_part_key, self.link.node_shards) as usize;
            if !self.receive_windows[shard].accept(datagram.link_seq()) {
                self.counters.datagrams_replayed += 1;
                continue;
            }
            self.grant[shard].received(datagram.link_seq());
            if datagram.kind != Kind::Credit {
                self.grant_part[shard] = stream_part_key;
                self.grant_pending[shard] = true;
            }
            match datagram.kind {
                Kind::Data => self.receive_data(now_us, &datagram, on_delivery),
                Kind::Nak => self.answer_nak(now_us, &datagram),
                Kind::Credit => match datagram.credit() {
                    Ok(granted) => {
                        self.counters.credits_received += 1;
                        self.send_credit[shard].grant(granted);
                    }
                    Err(_) => self.counters.datagrams_malformed += 1,
                },
                Kind::Subscribe | Kind::Unsubscribe | Kind::IHave | Kind::Prune => self.counters.datagrams_ignored += 1,
            }
        }
        self.grant_credits();
    }

    fn receive_data(&mut self, now_us: u64, datagram: &Datagram<'_>, on_delivery: &mut impl FnMut(Delivery<'_>)) {
        let stream_part_key = datagram.stream_part_key();
        let single_publisher = (datagram.flags() & FLAG_SINGLE_PUBLISHER != 0).then_some(datagram.header.publisher);
        let repair = datagram.flags() & FLAG_REPAIR != 0;
        for item in datagram.frames() {
            match item {
                Ok(frame) if single_publisher.is_none_or(|p| p == frame.header.publisher) => {
                    self.deliver(now_us, &stream_part_key, &frame, repair, on_delivery)
                }
                _ => {
                    // A frame that contradicts its header or does not parse ends the
                    // datagram: without a valid length there is no next frame.
                    self.counters.frames_malformed += 1;
                    return;
                }
            }
        }
    }

    /// Takes a new frame of a chain: delivers its messages if it is the next one (the fast
    /// path: no allocation), or holds it behind the gap it reveals.
    fn deliver(
        &mut self,
        now_us: u64,
        stream_part_key: &StreamPartKey,
        frame: &Frame<'_>,
        repair: bool,
        on_delivery: &mut impl FnMut(Delivery<'_>),
    ) {
        let key = (stream_part_key.0, frame.header.publisher, frame.chain_id());
        let sequence = frame.sequence();
        if sequence == u64::MAX {
            // No sequence follows it, so a chain cannot advance past it (the relay drops it
            // too); no real chain gets here.
            self.counters.frames_lost += 1;
            return;
        }
        // Check before verifying, record after: a forged frame must not mark its sequence.
        if self.chains.get(&key).is_some_and(|c| c.is_duplicate(sequence)) {
            self.counters.frames_duplicate += 1;
            return;
        }
        if self.options.verify && self.verifier.verify(stream_part_key, frame).is_err() {
            self.counters.frames_bad_signature += 1;
            return;
        }
        if repair {
            self.counters.frames_repaired += 1;
        }
        if !self.chains.contains_key(&key) {
            if self.chains.len() >= CHAINS_MAX {
                self.evict_idlest_chain(on_delivery);
            }
            let mut chain = InboundChain::new(sequence, now_us);
            if frame.previous().is_some() || frame.sequence() > 0 {
                // Joined mid-chain: let reordered predecessors arrive before fixing the start.
                chain.settling_until_us = Some(now_us + NAK_DELAY_US);
            }
            self.chains.insert(key, chain);
        }
        let chain = self.chains.get_mut(&key).expect("inserted above");
        chain.last_activity_us = now_us;
        // A repair while tail queries are out answers one: ask for the next record at once.
        let answers_tail_query = repair && chain.tail_queries_sent > 0;
        chain.tail_query_due_us = Some(if answers_tail_query { now_us } else { now_us + TAIL_QUERY_US });
        chain.tail_queries_sent = 0;
        if !chain.timer_listed {
            chain.timer_listed = true;
            self.timers.push(key);
        }
        if chain.settling_until_us.is_some() {
            if self.held_bytes + frame.bytes.len() <= REORDER_BYTES_MAX {
                chain.hold_settling(sequence, frame.bytes);
                self.held_bytes += frame.bytes.len();
                self.counters.frames_held += 1;
                return;
            }
            // No room to wait: start at what is held (or at this record).
            self.counters.reorder_overflows += 1;
            self.settle(&key, now_us, on_delivery);
        }
        let chain = self.chains.get_mut(&key).expect("present");
        if chain.is_duplicate(sequence) {
            // Below the start the chain just settled on.
            self.counters.frames_duplicate += 1;
            return;
        }
        let next = chain.next_sequence();
        if sequence != next {
            // Ahead: datagrams were lost on the node→client hop. Keep the bounds first.
            if sequence - next > REORDER_SEQUENCES_MAX {
                self.counters.reorder_overflows += 1;
                self.give_up_until(&key, sequence - REORDER_SEQUENCES_MAX, on_delivery);
            }
            if self.held_bytes + frame.bytes.len() > REORDER_BYTES_MAX {
                self.counters.reorder_overflows += 1;
                self.give_up_until(&key, sequence, on_delivery);
            }
        }
        let chain = self.chains.get_mut(&key).expect("present");
        if sequence == chain.next_sequence() {
            chain.advance();
            let release = chain.has_held();
            emit(&mut self.counters, &mut self.joiner, stream_part_key, frame, on_delivery);
            if release {
                self.release(&key, on_delivery);
            }
            return;
        }
        chain.hold(sequence, frame.bytes);
        self.held_bytes += frame.bytes.len();
        self.counters.frames_held += 1;
        if chain.gap.is_none() {
            chain.gap = Some(Gap { first_missing: chain.next_sequence(), naks_sent: 0, next_nak_us: now_us + NAK_DELAY_US });
        }
    }

    /// Ends a chain's settling: it starts at the lowest held record; what is in order is
    /// delivered, holes behind it get NAKs.
    fn settle(&mut self, key: &ChainKey, now_us: u64, on_delivery: &mut impl FnMut(Delivery<'_>)) {
        let Some(chain) = self.chains.get_mut(key) else { return };
        chain.settling_until_us = None;
        chain.gap = Some(Gap { first_missing: chain.next_sequence(), naks_sent: 0, next_nak_us: now_us + NAK_DELAY_US });
        self.release(key, on_delivery);
    }

    /// Delivers the held records of `key` that are next in order.
    fn release(&mut self, key: &ChainKey, on_delivery: &mut impl FnMut(Delivery<'_>)) {
        let stream_part_key = StreamPartKey(key.0);
        while let Some(bytes) = self.chains.get_mut(key).and_then(InboundChain::take_next) {
            self.held_bytes -= bytes.len();
            match Frame::parse(&bytes) {
                Ok(frame) => emit(&mut self.counters, &mut self.joiner, &stream_part_key, &frame, on_delivery),
                Err(_) => self.counters.frames_malformed += 1,
            }
        }
        if let Some(chain) = self.chains.get_mut(key) {
            if !chain.has_held() {
                chain.gap = None;
            }
        }
    }

    /// Gives up every hole of `key` below `target` (counted lost), delivering what was held
    /// below it in order.
    fn give_up_until(&mut self, key: &ChainKey, target: u64, on_delivery: &mut impl FnMut(Delivery<'_>)) {
        loop {
            self.release(key, on_delivery);
            let Some(chain) = self.chains.get_mut(key) else { return };
            if chain.next_sequence() >= target {
                return;
            }
            self.counters.frames_lost += chain.skip_hole(target);
        }
    }

    /// Makes room for a new chain: the least recently active one gives up its holes,
    /// delivers what it held, and is forgotten.
    fn evict_idlest_chain(&mut self, on_delivery: &mut impl FnMut(Delivery<'_>)) {
        let Some(key) = self.chains.iter().min_by_key(|(_, chain)| chain.last_activity_us).map(|(key, _)| *key) else {
            return;
        };
        if let Some((_, last)) = self.chains.get(&key).and_then(InboundChain::held_span) {
            self.give_up_until(&key, last + 1, on_delivery);
        }
        self.chains.remove(&key);
        self.timers.retain(|k| *k != key);
        self.released.retain(|k| *k != key);
        self.counters.chains_evicted += 1;
    }
}

/// Hands a frame's messages to the application in order, borrowed from wherever the frame
/// lies; the pieces of a message spanning frames are joined first.
fn emit(
    counters: &mut ClientCounters,
    joiner: &mut Joiner,
    stream_part_key: &StreamPartKey,
    frame: &Frame<'_>,
    on_delivery: &mut impl FnMut(Delivery<'_>),
) {
    let key = (stream_part_key.0, frame.publisher(), frame.chain_id());
    for message in frame.messages() {
        let joined;
        let payload = if message.continues || message.continuation {
            match joiner.add(counters, &key, frame.sequence(), &message) {
                Some(whole) => {
                    joined = whole;
                    &joined[..]
                }
                None => continue,
            }
        } else {
            message.payload
        };
        counters.messages_delivered += 1;
        on_delivery(Delivery {
            stream_part_key: *stream_part_key,
            publisher: frame.publisher(),
            chain_id: frame.chain_id(),
            sequence: message.sequence,
            timestamp_ms: message.timestamp_ms,
            previous: message.previous,
            content_type: message.content_type,
            encryption: message.encryption,
            group_key_id: message.group_key_id,
            payload,
            frame: frame.bytes,
        });
    }
}
