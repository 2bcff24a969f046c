//! The sans-I/O client core: packs records into datagrams for a node and unpacks what the
//! node sends back. Time is an argument (`now_us`); the caller owns the socket.
//!
//! **Sending.** [`ClientCore::queue_records`] packs records of one stream part back to back
//! into a Data datagram of at most `datagram_length_max` bytes. A datagram that is full (the
//! next record does not fit, or fewer bytes than the smallest record are left) is padded to
//! `datagram_length_max` and closed; [`ClientCore::flush`] closes the last one unpadded. So a
//! run of datagrams to one node shard is N equal segments plus one shorter last one — one UDP
//! GSO send, described by a [`Transmit`] ([`ClientCore::poll_transmit`]). Records larger than
//! a datagram body are cut into Fragment datagrams. Every datagram carries the link id, a
//! link sequence that increases per destination shard (the node keeps a replay window per
//! link per shard), `FLAG_SINGLE_PUBLISHER` with the publisher when all its records are from
//! one publisher, and the link tag. Link sequences start at the caller's `link_seq_start`
//! (the UDP client uses Unix time in nanoseconds so that a restarted client is ahead of its
//! previous run in the node's replay window).
//!
//! **Subscribing.** [`ClientCore::subscribe`] sends a Subscribe datagram to the owning shard
//! now and every [`SUBSCRIBE_REFRESH_US`] ([`ClientCore::poll_timeout`] /
//! [`ClientCore::handle_timeout`]); the node expires interest that is not refreshed.
//!
//! **Receiving.** [`ClientCore::handle_receive`] splits a (possibly GRO-coalesced) buffer by
//! `total_length`, drops datagrams of another link, with a wrong tag or a replayed link
//! sequence (window per node shard, the shard being `shard_of(stream part key)`), reassembles
//! fragments, optionally verifies publisher signatures, drops duplicate
//! (stream part, publisher, chain, sequence) and calls back with each [`Delivery`], borrowed
//! from the buffer: no allocation per message. Everything is counted in [`ClientCounters`].
//!
//! Limits: one datagram is open at a time, so interleaving stream parts closes datagrams
//! early; deliveries are not reordered (the node orders per chain); bounds are
//! [`SEND_QUEUE_BYTES_MAX`], [`SUBSCRIPTIONS_MAX`], [`CHAINS_MAX`], [`REASSEMBLIES_MAX`].

use super::link::ClientLinkConfig;
use super::window::SequenceWindow;
use crate::config::shard_of;
use crate::crypto::Verifier;
use crate::relay::Transmit;
use crate::stream::StreamPartKey;
use crate::wire::{
    encode_fragment, split_datagrams, ContentType, Datagram, DatagramBuilder, Encryption, FragmentHeader, HeaderFields, Kind,
    Record, FLAG_SINGLE_PUBLISHER, FRAGMENT_HEADER_LENGTH, HEADER_LENGTH, MESSAGE_HEADER_LENGTH, SIGNATURE_LENGTH,
};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;

/// How often a subscription is refreshed at the node.
pub const SUBSCRIBE_REFRESH_US: u64 = 1_000_000;
/// Most stream parts one client subscribes to.
pub const SUBSCRIPTIONS_MAX: usize = 1024;
/// Bytes of closed datagrams waiting for `poll_transmit` beyond which `queue_records` refuses.
pub const SEND_QUEUE_BYTES_MAX: usize = 8 << 20;
/// Most (stream part, publisher, chain) duplicate windows kept; when full they are all
/// forgotten (duplicate suppression is defensive: the node already deduplicates).
pub const CHAINS_MAX: usize = 4096;
/// Most records reassembled at once; a new one evicts the oldest.
pub const REASSEMBLIES_MAX: usize = 16;
/// A reassembly that has not completed after this long is dropped.
pub const REASSEMBLY_TIMEOUT_US: u64 = 2_000_000;
/// Most disjoint byte ranges one reassembly tracks (fragments arrive mostly in order).
const REASSEMBLY_RANGES_MAX: usize = 256;
/// Largest UDP payload one GSO send may carry (IPv4: 65535 − 20 − 8).
pub const GSO_BYTES_MAX: usize = 65_507;
/// Most segments one GSO send may carry (the kernel's UDP_MAX_SEGMENTS).
pub const GSO_SEGMENTS_MAX: usize = 64;
/// Smallest possible record: fewer free bytes than this close a datagram as full.
const RECORD_LENGTH_MIN: usize = MESSAGE_HEADER_LENGTH + SIGNATURE_LENGTH;

/// What the client did, for status output and tests. Every field is incremented somewhere.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientCounters {
    pub records_queued: u64,
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
    /// Well-formed datagrams of a kind a client does not act on (Nak, Subscribe, ...).
    pub datagrams_ignored: u64,
    pub records_delivered: u64,
    pub records_malformed: u64,
    pub records_bad_signature: u64,
    pub records_duplicate: u64,
    pub fragments_received: u64,
    pub fragments_dropped: u64,
    pub reassemblies_completed: u64,
    /// Reassemblies dropped incomplete: timed out or evicted by a newer one.
    pub reassemblies_expired: u64,
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
    /// The whole signed record, as the publisher encoded it.
    pub record: &'a [u8],
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
    pub record: Vec<u8>,
    /// Where the payload sits in `record`.
    pub payload_range: Range<usize>,
}

impl OwnedDelivery {
    pub fn payload(&self) -> &[u8] {
        &self.record[self.payload_range.clone()]
    }
}

impl Delivery<'_> {
    pub fn to_owned(&self) -> OwnedDelivery {
        let start = self.payload.as_ptr() as usize - self.record.as_ptr() as usize;
        OwnedDelivery {
            stream_part_key: self.stream_part_key,
            publisher: self.publisher,
            chain_id: self.chain_id,
            sequence: self.sequence,
            timestamp_ms: self.timestamp_ms,
            previous: self.previous,
            content_type: self.content_type,
            encryption: self.encryption,
            record: self.record.to_vec(),
            payload_range: start..start + self.payload.len(),
        }
    }
}

/// Why records or a subscription were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientError {
    /// The bytes given to `queue_records` are not a sequence of valid records.
    MalformedRecords,
    /// More than [`SEND_QUEUE_BYTES_MAX`] bytes wait for `poll_transmit`: send them first.
    SendQueueFull,
    /// Already subscribed to [`SUBSCRIPTIONS_MAX`] stream parts.
    TooManySubscriptions,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::MalformedRecords => f.write_str("not a sequence of valid message records"),
            ClientError::SendQueueFull => write!(f, "{SEND_QUEUE_BYTES_MAX} bytes wait to be sent: drain poll_transmit first"),
            ClientError::TooManySubscriptions => write!(f, "at most {SUBSCRIPTIONS_MAX} subscriptions per client"),
        }
    }
}

impl std::error::Error for ClientError {}

/// Closed datagrams waiting to be sent, grouped into GSO-shaped [`Transmit`]s.
#[derive(Debug, Default)]
struct SendQueue {
    bytes: Vec<u8>,
    read: usize,
    transmits: VecDeque<Transmit>,
}

impl SendQueue {
    fn pending_bytes(&self) -> usize {
        self.bytes.len() - self.read
    }

    /// Appends one datagram, extending the last transmit when the GSO shape allows.
    fn push(&mut self, destination: SocketAddr, datagram: &[u8]) {
        let length = datagram.len();
        self.bytes.extend_from_slice(datagram);
        if let Some(last) = self.transmits.back_mut() {
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
        self.transmits.push_back(Transmit { destination, segment_size: length, segments: 1, length });
    }

    fn pop(&mut self, buffer: &mut Vec<u8>) -> Option<Transmit> {
        let transmit = self.transmits.pop_front()?;
        buffer.clear();
        buffer.extend_from_slice(&self.bytes[self.read..self.read + transmit.length]);
        self.read += transmit.length;
        if self.transmits.is_empty() {
            self.bytes.clear();
            self.read = 0;
        }
        Some(transmit)
    }
}

#[derive(Clone, Copy, Debug)]
struct OpenDatagram {
    stream_part_key: StreamPartKey,
    publisher: [u8; 20],
    single_publisher: bool,
}

#[derive(Clone, Copy, Debug)]
struct Subscription {
    stream_part_key: StreamPartKey,
    next_refresh_us: u64,
}

type ChainKey = ([u8; 32], [u8; 20], u64);

#[derive(Debug)]
struct Reassembly {
    stream_part_key: StreamPartKey,
    publisher: [u8; 20],
    chain_id: u64,
    sequence: u64,
    started_us: u64,
    record: Vec<u8>,
    /// Received byte ranges, sorted, merged, disjoint.
    ranges: Vec<(usize, usize)>,
}

impl Reassembly {
    /// Adds a range; returns false if the reassembly tracks too many ranges.
    fn add(&mut self, start: usize, end: usize) -> bool {
        let at = self.ranges.partition_point(|&(_, e)| e < start);
        let mut merged = (start, end);
        let mut until = at;
        while until < self.ranges.len() && self.ranges[until].0 <= merged.1 {
            merged = (merged.0.min(self.ranges[until].0), merged.1.max(self.ranges[until].1));
            until += 1;
        }
        self.ranges.splice(at..until, [merged]);
        self.ranges.len() <= REASSEMBLY_RANGES_MAX
    }

    fn is_complete(&self) -> bool {
        self.ranges.len() == 1 && self.ranges[0] == (0, self.record.len())
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
    /// Next link sequence per destination shard.
    send_link_seq: Vec<u64>,
    builder: DatagramBuilder,
    control_builder: DatagramBuilder,
    open: Option<OpenDatagram>,
    send_queue: SendQueue,
    subscriptions: Vec<Subscription>,
    /// Replay window per node shard.
    receive_windows: Vec<SequenceWindow>,
    chains: HashMap<ChainKey, SequenceWindow>,
    reassemblies: Vec<Reassembly>,
    counters: ClientCounters,
}

fn content_type_of(value: u8) -> ContentType {
    if value == ContentType::Binary as u8 {
        ContentType::Binary
    } else {
        ContentType::Json
    }
}

fn encryption_of(value: u8) -> Encryption {
    if value == Encryption::Aes256Gcm as u8 {
        Encryption::Aes256Gcm
    } else {
        Encryption::None
    }
}

impl ClientCore {
    pub fn new(link: &ClientLinkConfig, options: CoreOptions) -> Self {
        let shards = link.node_shards as usize;
        Self {
            link: link.clone(),
            options,
            verifier: Verifier::default(),
            send_link_seq: vec![options.link_seq_start; shards],
            builder: DatagramBuilder::new(link.datagram_length_max),
            control_builder: DatagramBuilder::new(HEADER_LENGTH + 1),
            open: None,
            send_queue: SendQueue::default(),
            subscriptions: Vec::new(),
            receive_windows: vec![SequenceWindow::default(); shards],
            chains: HashMap::new(),
            reassemblies: Vec::new(),
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
        self.send_queue.pending_bytes()
    }

    fn next_link_seq(&mut self, key: &StreamPartKey) -> (SocketAddr, u64) {
        let shard = shard_of(key, self.link.node_shards);
        let seq = self.send_link_seq[shard as usize];
        self.send_link_seq[shard as usize] = seq.wrapping_add(1);
        (self.link.shard_address(shard), seq)
    }

    /// Closes the open Data datagram; `pad` makes it a full GSO segment (more follows).
    fn close_open(&mut self, pad: bool) {
        let Some(open) = self.open.take() else { return };
        if pad {
            self.builder.pad_to(self.link.datagram_length_max);
        }
        let (destination, link_seq) = self.next_link_seq(&open.stream_part_key);
        let fields = HeaderFields {
            kind: Kind::Data,
            link_id: self.link.link_id,
            link_seq,
            stream_part_key: open.stream_part_key.0,
            flags: if open.single_publisher { FLAG_SINGLE_PUBLISHER } else { 0 },
            message_count: 0,
            total_length: 0,
            publisher: if open.single_publisher { open.publisher } else { [0; 20] },
        };
        self.send_queue.push(destination, self.builder.finish(fields, &self.link.key));
        self.builder.reset();
    }

    /// Queues encoded records (back to back, e.g. [`super::Publisher::records`]) of one
    /// stream part. Nothing is queued if the bytes are not all valid records.
    pub fn queue_records(&mut self, stream_part_key: &StreamPartKey, records: &[u8]) -> Result<usize, ClientError> {
        if self.send_queue.pending_bytes() > SEND_QUEUE_BYTES_MAX {
            return Err(ClientError::SendQueueFull);
        }
        let mut at = 0;
        while at < records.len() {
            let record = Record::parse(&records[at..]).map_err(|_| ClientError::MalformedRecords)?;
            at += record.bytes.len();
        }
        let mut count = 0;
        let mut rest = records;
        while !rest.is_empty() {
            let record = Record::parse(rest).expect("validated above");
            rest = &rest[record.bytes.len()..];
            self.push_record(stream_part_key, &record);
            count += 1;
        }
        self.counters.records_queued += count as u64;
        Ok(count)
    }

    fn push_record(&mut self, stream_part_key: &StreamPartKey, record: &Record<'_>) {
        let publisher = record.publisher();
        if let Some(open) = self.open {
            if open.stream_part_key != *stream_part_key {
                let same_destination =
                    shard_of(&open.stream_part_key, self.link.node_shards) == shard_of(stream_part_key, self.link.node_shards);
                self.close_open(same_destination);
            }
        }
        if record.bytes.len() > self.link.datagram_length_max - HEADER_LENGTH {
            self.close_open(true);
            self.push_fragments(stream_part_key, record);
            return;
        }
        if self.open.is_some() && !self.builder.try_push(record.bytes) {
            self.close_open(true);
        }
        match &mut self.open {
            Some(open) => open.single_publisher &= open.publisher == publisher,
            None => {
                let pushed = self.builder.try_push(record.bytes);
                assert!(pushed, "a record that fits a datagram body fits an empty datagram");
                self.open = Some(OpenDatagram { stream_part_key: *stream_part_key, publisher, single_publisher: true });
            }
        }
        if self.builder.remaining() < RECORD_LENGTH_MIN {
            self.close_open(true);
        }
    }

    fn push_fragments(&mut self, stream_part_key: &StreamPartKey, record: &Record<'_>) {
        let capacity = self.link.datagram_length_max - HEADER_LENGTH - FRAGMENT_HEADER_LENGTH;
        let publisher = record.publisher();
        let destination = self.link.destination_of(stream_part_key);
        for (index, slice) in record.bytes.chunks(capacity).enumerate() {
            let header = FragmentHeader {
                publisher,
                chain_id: record.chain_id(),
                sequence: record.sequence(),
                record_length: record.bytes.len() as u32,
                offset: (index * capacity) as u32,
                fragment_length: slice.len() as u16,
                reserved: 0,
            };
            self.builder.reset();
            encode_fragment(&header, slice, self.builder.body_mut());
            self.builder.set_count(1);
            let (_, link_seq) = self.next_link_seq(stream_part_key);
            let fields = HeaderFields {
                kind: Kind::Fragment,
                link_id: self.link.link_id,
                link_seq,
                stream_part_key: stream_part_key.0,
                flags: FLAG_SINGLE_PUBLISHER,
                message_count: 0,
                total_length: 0,
                publisher,
            };
            self.send_queue.push(destination, self.builder.finish(fields, &self.link.key));
        }
        self.builder.reset();
    }

    /// Closes the open datagram (unpadded: it is the last of its run) so it can be sent.
    pub fn flush(&mut self) {
        self.close_open(false);
    }

    /// Writes the next send into `buffer` (cleared first): `segments` datagrams to one
    /// destination, all `segment_size` bytes except possibly the last.
    pub fn poll_transmit(&mut self, buffer: &mut Vec<u8>) -> Option<Transmit> {
        let transmit = self.send_queue.pop(buffer)?;
        self.counters.datagrams_sent += transmit.segments as u64;
        Some(transmit)
    }

    fn send_control(&mut self, kind: Kind, stream_part_key: &StreamPartKey) {
        let (destination, link_seq) = self.next_link_seq(stream_part_key);
        let fields = HeaderFields {
            kind,
            link_id: self.link.link_id,
            link_seq,
            stream_part_key: stream_part_key.0,
            flags: 0,
            message_count: 0,
            total_length: 0,
            publisher: [0; 20],
        };
        self.control_builder.reset();
        self.send_queue.push(destination, self.control_builder.finish(fields, &self.link.key));
        if kind == Kind::Subscribe {
            self.counters.subscribes_sent += 1;
        }
    }

    /// Subscribes to a stream part: a Subscribe now and one every second after.
    pub fn subscribe(&mut self, now_us: u64, stream_part_key: &StreamPartKey) -> Result<(), ClientError> {
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

    /// When [`ClientCore::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<u64> {
        let refresh = self.subscriptions.iter().map(|s| s.next_refresh_us);
        let expiry = self.reassemblies.iter().map(|r| r.started_us + REASSEMBLY_TIMEOUT_US);
        refresh.chain(expiry).min()
    }

    /// Refreshes due subscriptions and drops timed-out reassemblies.
    pub fn handle_timeout(&mut self, now_us: u64) {
        for index in 0..self.subscriptions.len() {
            let subscription = self.subscriptions[index];
            if subscription.next_refresh_us <= now_us {
                self.subscriptions[index].next_refresh_us = now_us + SUBSCRIBE_REFRESH_US;
                self.send_control(Kind::Subscribe, &subscription.stream_part_key);
            }
        }
        let before = self.reassemblies.len();
        self.reassemblies.retain(|r| r.started_us + REASSEMBLY_TIMEOUT_US > now_us);
        self.counters.reassemblies_expired += (before - self.reassemblies.len()) as u64;
    }

    /// Feeds one receive buffer (one datagram or several coalesced by GRO); calls
    /// `on_delivery` for each new, valid message, in the order received.
    pub fn handle_receive(&mut self, now_us: u64, buffer: &[u8], on_delivery: &mut impl FnMut(Delivery<'_>)) {
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
            match datagram.kind {
                Kind::Data => self.receive_data(&datagram, on_delivery),
                Kind::Fragment => self.receive_fragment(now_us, &datagram, on_delivery),
                Kind::Nak | Kind::Subscribe | Kind::Unsubscribe => self.counters.datagrams_ignored += 1,
            }
        }
    }

    fn receive_data(&mut self, datagram: &Datagram<'_>, on_delivery: &mut impl FnMut(Delivery<'_>)) {
        let stream_part_key = datagram.stream_part_key();
        let single_publisher = (datagram.flags() & FLAG_SINGLE_PUBLISHER != 0).then_some(datagram.header.publisher);
        for item in datagram.records() {
            match item {
                Ok(record) if single_publisher.is_none_or(|p| p == record.header.publisher) => {
                    self.deliver(&stream_part_key, &record, on_delivery)
                }
                _ => {
                    // A record that contradicts its header or does not parse ends the
                    // datagram: without a valid length there is no next record.
                    self.counters.records_malformed += 1;
                    return;
                }
            }
        }
    }

    fn receive_fragment(&mut self, now_us: u64, datagram: &Datagram<'_>, on_delivery: &mut impl FnMut(Delivery<'_>)) {
        self.counters.fragments_received += 1;
        let Ok((header, slice)) = datagram.fragment() else {
            self.counters.fragments_dropped += 1;
            return;
        };
        let stream_part_key = datagram.stream_part_key();
        let (chain_id, sequence) = (header.chain_id.to_native(), header.sequence.to_native());
        let record_length = header.record_length.to_native() as usize;
        let offset = header.offset.to_native() as usize;
        let chain_key = (stream_part_key.0, header.publisher, chain_id);
        if self.chains.get(&chain_key).is_some_and(|w| w.rejects(sequence)) {
            self.counters.fragments_dropped += 1;
            return;
        }
        let found = self.reassemblies.iter().position(|r| {
            r.stream_part_key == stream_part_key
                && r.publisher == header.publisher
                && r.chain_id == chain_id
                && r.sequence == sequence
        });
        let index = match found {
            Some(index) if self.reassemblies[index].record.len() == record_length => index,
            Some(_) => {
                self.counters.fragments_dropped += 1;
                return;
            }
            None => {
                // `Datagram::fragment` bounds record_length by RECORD_LENGTH_MAX, so the
                // reassemblies hold at most REASSEMBLIES_MAX × RECORD_LENGTH_MAX bytes.
                if self.reassemblies.len() >= REASSEMBLIES_MAX {
                    self.reassemblies.remove(0);
                    self.counters.reassemblies_expired += 1;
                }
                self.reassemblies.push(Reassembly {
                    stream_part_key,
                    publisher: header.publisher,
                    chain_id,
                    sequence,
                    started_us: now_us,
                    record: vec![0; record_length],
                    ranges: Vec::new(),
                });
                self.reassemblies.len() - 1
            }
        };
        let reassembly = &mut self.reassemblies[index];
        reassembly.record[offset..offset + slice.len()].copy_from_slice(slice);
        if !reassembly.add(offset, offset + slice.len()) {
            self.reassemblies.remove(index);
            self.counters.fragments_dropped += 1;
            return;
        }
        if !reassembly.is_complete() {
            return;
        }
        let reassembly = self.reassemblies.remove(index);
        self.counters.reassemblies_completed += 1;
        match Record::parse(&reassembly.record) {
            Ok(record)
                if record.bytes.len() == record_length
                    && record.header.publisher == reassembly.publisher
                    && record.chain_id() == chain_id
                    && record.sequence() == sequence =>
            {
                self.deliver(&stream_part_key, &record, on_delivery)
            }
            _ => self.counters.records_malformed += 1,
        }
    }

    fn deliver(&mut self, stream_part_key: &StreamPartKey, record: &Record<'_>, on_delivery: &mut impl FnMut(Delivery<'_>)) {
        let chain_key = (stream_part_key.0, record.header.publisher, record.chain_id());
        let sequence = record.sequence();
        // Check before verifying, record after: a forged record must not mark its sequence.
        if self.chains.get(&chain_key).is_some_and(|w| w.rejects(sequence)) {
            self.counters.records_duplicate += 1;
            return;
        }
        if self.options.verify && self.verifier.verify(stream_part_key, record).is_err() {
            self.counters.records_bad_signature += 1;
            return;
        }
        if !self.chains.contains_key(&chain_key) && self.chains.len() >= CHAINS_MAX {
            self.chains.clear();
        }
        self.chains.entry(chain_key).or_default().accept(sequence);
        self.counters.records_delivered += 1;
        on_delivery(Delivery {
            stream_part_key: *stream_part_key,
            publisher: record.header.publisher,
            chain_id: record.chain_id(),
            sequence,
            timestamp_ms: record.timestamp_ms(),
            previous: record.previous(),
            content_type: content_type_of(record.header.content_type),
            encryption: encryption_of(record.header.encryption),
            group_key_id: record.group_key_id,
            payload: record.payload,
            record: record.bytes,
        });
    }
}
