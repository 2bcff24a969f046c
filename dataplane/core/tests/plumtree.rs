//! Plumtree's state transitions in one relay, driven through its public interface: what a
//! duplicate, a Prune, an IHave and a NAK do to a neighbor link (eager or lazy), seen in the
//! datagrams the relay sends and its counters; bad tree control input; and the
//! NeighborSilent event. The multi-relay behaviour is in relay_simulation.rs.

use runnel_core::client::{Outgoing, Publisher, SigningMode};
use runnel_core::counters::Counter;
use runnel_core::link::{LinkConfig, LinkRole, Propagation, VerifyPolicy};
use runnel_core::relay::{Event, Relay, RelayConfig};
use runnel_proto::crypto::PublisherKey;
use runnel_proto::linktag::LinkKey;
use runnel_proto::stream::{StreamPart, StreamPartKey};
use runnel_proto::wire::{self, encode_nak_range, DatagramBuilder, HeaderFields, Kind, NakRange, DATAGRAM_LENGTH_DEFAULT, FLAG_REPAIR};
use std::collections::HashMap;
use std::net::SocketAddr;

const A: u32 = 1;
const B: u32 = 2;
const C: u32 = 3;
/// A neighbor link that never subscribes.
const D: u32 = 4;
const CLIENT: u32 = 9;
const CHAIN: u64 = 1;

fn address(link_id: u32) -> SocketAddr {
    if link_id == CLIENT {
        "10.77.1.9:5000".parse().unwrap()
    } else {
        SocketAddr::from(([10, 77, 0, link_id as u8], 7000))
    }
}

fn key(link_id: u32) -> LinkKey {
    LinkKey([link_id as u8; 32])
}

fn part() -> StreamPartKey {
    StreamPart::parse("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/tree#0").unwrap().key()
}

/// What the relay sent, per datagram: to which link, which kind, and its frame sequences
/// (Data) or ranges (Nak, IHave) as (chain id, first, last).
#[derive(Debug, PartialEq, Eq)]
struct Sent {
    link_id: u32,
    kind: Kind,
    repair: bool,
    sequences: Vec<u64>,
    ranges: Vec<(u64, u64, u64)>,
}

struct Harness {
    relay: Relay,
    now_us: u64,
    link_seqs: HashMap<u32, u64>,
    /// Frames 0..n of chain `CHAIN` of one publisher, one message each.
    frames: Vec<Vec<u8>>,
    publisher: [u8; 20],
}

impl Harness {
    fn new(propagation: Propagation, configure: impl FnOnce(&mut RelayConfig)) -> Self {
        let mut config = RelayConfig::new(0, 1, DATAGRAM_LENGTH_DEFAULT, VerifyPolicy::None);
        config.propagation = propagation;
        configure(&mut config);
        let mut relay = Relay::new(config);
        for link_id in [A, B, C, D, CLIENT] {
            let role = if link_id == CLIENT { LinkRole::Client } else { LinkRole::Neighbor };
            relay.add_link(&LinkConfig {
                id: link_id,
                peer_link_id: None,
                key: key(link_id),
                role,
                peer: (role == LinkRole::Neighbor).then(|| address(link_id)),
                peer_shards: 1,
                rate_datagrams_per_s: 0,
                burst_datagrams: 1,
            });
        }
        let now_us = 1_000_000;
        relay.join(now_us, part());
        let signer = PublisherKey::generate();
        let publisher = signer.address();
        let mut chain = Publisher::with_chain_id(signer, part(), SigningMode::PerMessage, CHAIN);
        let frames = (0..8u64)
            .map(|s| {
                chain.publish(&Outgoing::binary(1_000 + s, &s.to_le_bytes())).unwrap();
                chain.flush();
                let frame = chain.frames().to_vec();
                chain.clear_frames();
                frame
            })
            .collect();
        let mut harness = Self { relay, now_us, link_seqs: HashMap::new(), frames, publisher };
        for link_id in [A, B, C, CLIENT] {
            harness.receive(link_id, Kind::Subscribe, 0, &[]);
        }
        harness.sent();
        harness
    }

    /// Feeds one datagram of `kind` from `link_id` with `body` (frames or ranges) and
    /// `count` (frames or ranges in it).
    fn receive_on(&mut self, link_id: u32, part: StreamPartKey, kind: Kind, flags: u16, count: u16, body: &[u8]) {
        let link_seq = self.link_seqs.entry(link_id).or_insert(0);
        *link_seq += 1;
        let mut builder = DatagramBuilder::new(wire::DATAGRAM_LENGTH_MAX);
        builder.body_mut().extend_from_slice(body);
        builder.set_count(count);
        let fields = HeaderFields { flags, ..HeaderFields::new(kind, link_id, *link_seq, part.0) };
        let bytes = builder.finish(fields, &key(link_id)).to_vec();
        self.relay.handle_receive(self.now_us, address(link_id), &bytes);
    }

    fn receive(&mut self, link_id: u32, kind: Kind, count: u16, body: &[u8]) {
        self.receive_on(link_id, part(), kind, 0, count, body);
    }

    fn frame(&mut self, link_id: u32, sequence: usize, flags: u16) {
        let frame = self.frames[sequence].clone();
        self.receive_on(link_id, part(), Kind::Data, flags, 1, &frame);
    }

    /// A Nak or IHave body naming `ranges` (first, last) of `chain_id`.
    fn ranges(&self, chain_id: u64, ranges: &[(u64, u64)]) -> Vec<u8> {
        let mut body = Vec::new();
        for &(first, last) in ranges {
            let range = NakRange { publisher: self.publisher, chain_id, first_sequence: first, last_sequence: last };
            encode_nak_range(&range, &mut body);
        }
        body
    }

    fn ihave(&mut self, link_id: u32, chain_id: u64, ranges: &[(u64, u64)]) {
        let body = self.ranges(chain_id, ranges);
        self.receive(link_id, Kind::IHave, ranges.len() as u16, &body);
    }

    fn advance_to(&mut self, now_us: u64) {
        self.now_us = now_us;
        self.relay.handle_timeout(now_us);
    }

    /// Flushes and returns what the relay sent to neighbors (Subscribe refreshes and
    /// Credit grants left out: they are not what these tests look at).
    fn sent(&mut self) -> Vec<Sent> {
        self.relay.flush();
        let links: HashMap<SocketAddr, u32> = [A, B, C, D].into_iter().map(|id| (address(id), id)).collect();
        let mut buffer = Vec::new();
        let mut sent = Vec::new();
        while let Some(transmit) = self.relay.poll_transmit(&mut buffer) {
            let Some(&link_id) = links.get(&transmit.destination) else { continue };
            for segment in buffer[..transmit.length].chunks(transmit.segment_size) {
                let datagram = wire::Datagram::parse(segment).unwrap();
                if matches!(datagram.kind, Kind::Subscribe | Kind::Credit) {
                    continue;
                }
                let sequences = if datagram.kind == Kind::Data {
                    datagram.frames().map(|frame| frame.unwrap().sequence()).collect()
                } else {
                    Vec::new()
                };
                let ranges = if matches!(datagram.kind, Kind::Nak | Kind::IHave) {
                    let ranges = datagram.nak_ranges().unwrap();
                    ranges.map(|r| (r.chain_id.to_native(), r.first_sequence.to_native(), r.last_sequence.to_native())).collect()
                } else {
                    Vec::new()
                };
                let repair = datagram.flags() & FLAG_REPAIR != 0;
                sent.push(Sent { link_id, kind: datagram.kind, repair, sequences, ranges });
            }
        }
        sent.sort_by_key(|s| (s.link_id, s.kind as u8));
        sent
    }

    fn count(&self, counter: Counter) -> u64 {
        self.relay.counters().get(counter)
    }
}

fn data(link_id: u32, sequences: &[u64]) -> Sent {
    Sent { link_id, kind: Kind::Data, repair: false, sequences: sequences.to_vec(), ranges: Vec::new() }
}

fn control(link_id: u32, kind: Kind, ranges: &[(u64, u64, u64)]) -> Sent {
    Sent { link_id, kind, repair: false, sequences: Vec::new(), ranges: ranges.to_vec() }
}

// Goal: a second full copy from an eager neighbor prunes it (a Prune, and from then on the
// frame's id in an IHave instead of the frame); a repair copy prunes nothing; a lazy neighbor
// still sending in full is pruned again, once per batch; a Prune received turns its sender
// lazy; a NAK from a lazy neighbor grafts it back to eager.
#[test]
fn duplicates_prune_prunes_turn_lazy_naks_graft() {
    let mut h = Harness::new(Propagation::Plumtree, |_| {});
    h.frame(A, 0, 0);
    assert_eq!(h.sent(), vec![data(B, &[0]), data(C, &[0])], "new neighbors start eager");
    h.frame(B, 0, 0);
    h.frame(C, 0, FLAG_REPAIR);
    assert_eq!(h.sent(), vec![control(B, Kind::Prune, &[])], "B's copy was a duplicate; C's a repair");
    h.frame(A, 1, 0);
    assert_eq!(h.sent(), vec![control(B, Kind::IHave, &[(CHAIN, 1, 1)]), data(C, &[1])]);
    h.frame(B, 1, 0);
    h.frame(B, 1, 0);
    assert_eq!(h.sent(), vec![control(B, Kind::Prune, &[])], "lazy B still sends in full: pruned again, once");
    assert_eq!((h.count(Counter::PrunesSent), h.count(Counter::IhavesSent), h.count(Counter::FramesAnnounced)), (2, 1, 1));

    h.receive(C, Kind::Prune, 0, &[]);
    h.frame(A, 2, 0);
    h.frame(A, 3, 0);
    let announced = vec![control(B, Kind::IHave, &[(CHAIN, 2, 3)]), control(C, Kind::IHave, &[(CHAIN, 2, 3)])];
    assert_eq!(h.sent(), announced, "one IHave per lazy neighbor per batch; consecutive ids share a range");
    assert_eq!(h.count(Counter::PrunesReceived), 1);

    let nak = h.ranges(CHAIN, &[(3, 3)]);
    h.receive(C, Kind::Nak, 1, &nak);
    let repaired = Sent { repair: true, ..data(C, &[3]) };
    assert_eq!(h.sent(), vec![repaired]);
    assert_eq!(h.count(Counter::GraftsReceived), 1);
    h.frame(A, 4, 0);
    assert_eq!(h.sent(), vec![control(B, Kind::IHave, &[(CHAIN, 4, 4)]), data(C, &[4])], "C is eager again");
}

// Goal: an IHave naming frames this relay lacks NAKs them from the announcer after the graft
// delay — not before — and that NAK grafts a lazy announcer; an eager copy arriving within
// the delay cancels the NAK; a chain only announced (its first frames lost) is NAKed too.
#[test]
fn ihave_of_missing_frames_grafts_after_the_delay() {
    let mut h = Harness::new(Propagation::Plumtree, |_| {});
    let delay_us = h.relay.config().graft_delay_us;
    h.frame(A, 0, 0);
    h.receive(B, Kind::Prune, 0, &[]);
    h.sent();
    h.ihave(B, CHAIN, &[(1, 3)]);
    let start_us = h.now_us;
    assert_eq!(h.sent(), vec![]);
    h.advance_to(start_us + delay_us - 1);
    assert_eq!(h.sent(), vec![], "the eager copy may still come");
    h.advance_to(start_us + delay_us);
    assert_eq!(h.sent(), vec![control(B, Kind::Nak, &[(CHAIN, 1, 3)])]);
    assert_eq!(h.count(Counter::GraftsSent), 1);
    for sequence in 1..=3 {
        h.frame(B, sequence, FLAG_REPAIR);
    }
    assert_eq!(h.sent(), vec![data(A, &[1, 2, 3]), data(C, &[1, 2, 3])], "repairs go on in full to the eager neighbors");
    h.frame(A, 4, 0);
    assert_eq!(h.sent(), vec![data(B, &[4]), data(C, &[4])], "B grafted: eager again");

    // The eager copy beats the delay: no NAK.
    h.ihave(C, CHAIN, &[(5, 5)]);
    h.frame(A, 5, 0);
    h.sent();
    let now_us = h.now_us;
    h.advance_to(now_us + 2 * delay_us);
    assert_eq!(h.sent(), vec![]);
    assert_eq!(h.count(Counter::NaksSent), 1);

    // A chain never seen, announced from its start.
    h.ihave(C, 77, &[(0, 1)]);
    let now_us = h.now_us;
    h.advance_to(now_us + delay_us);
    assert_eq!(h.sent(), vec![control(C, Kind::Nak, &[(77, 0, 1)])]);
    assert_eq!(h.count(Counter::GraftsSent), 1, "C was eager: a plain NAK, no graft");
}

// Goal: tree control a peer gets wrong is counted and changes nothing: IHave or Prune from a
// client link, a Prune from a neighbor not in the stream part, IHave bodies that do not
// parse, ranges beyond the dedup window, unknown chains beyond the chain bound, and either
// kind for a stream part not joined.
#[test]
fn bad_tree_control_is_counted() {
    let mut h = Harness::new(Propagation::Plumtree, |config| config.chains_per_stream_part_max = 2);
    h.frame(A, 0, 0);
    h.sent();
    h.ihave(CLIENT, CHAIN, &[(1, 2)]);
    h.receive(CLIENT, Kind::Prune, 0, &[]);
    h.receive(D, Kind::Prune, 0, &[]);
    assert_eq!(h.count(Counter::TreeControlRefused), 3);

    let one_range = h.ranges(CHAIN, &[(1, 2)]);
    h.receive(B, Kind::IHave, 2, &one_range);
    let inverted = h.ranges(CHAIN, &[(5, 4)]);
    h.receive(B, Kind::IHave, 1, &inverted);
    assert_eq!(h.count(Counter::DatagramsMalformed), 2);

    h.ihave(B, CHAIN, &[(1, 1 << 40)]);
    h.ihave(B, 100, &[(0, 0)]);
    h.ihave(B, 101, &[(0, 0)]);
    assert_eq!(h.count(Counter::TreeControlRefused), 5, "beyond the window; a third chain over the bound of 2");

    let elsewhere = StreamPart::parse("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/elsewhere#0").unwrap().key();
    h.receive_on(B, elsewhere, Kind::IHave, 0, 1, &one_range);
    h.receive_on(B, elsewhere, Kind::Prune, 0, 0, &[]);
    assert_eq!(h.count(Counter::DatagramsNotJoined), 2);

    let now_us = h.now_us;
    h.advance_to(now_us + 1_000_000);
    let naks: Vec<Sent> = h.sent().into_iter().filter(|s| s.kind == Kind::Nak).collect();
    assert_eq!(naks, vec![control(B, Kind::Nak, &[(100, 0, 0)])], "only the chain that fit is NAKed");
    h.frame(A, 1, 0);
    assert_eq!(h.sent(), vec![data(B, &[1]), data(C, &[1])], "no refused Prune turned a link lazy");
}

// Goal: flooding sends every frame to every neighbor whatever arrives: no prunes on
// duplicates, Prunes ignored, no IHaves.
#[test]
fn flooding_never_prunes() {
    let mut h = Harness::new(Propagation::Flood, |_| {});
    h.frame(A, 0, 0);
    h.frame(B, 0, 0);
    h.receive(C, Kind::Prune, 0, &[]);
    h.frame(A, 1, 0);
    assert_eq!(h.sent(), vec![data(B, &[0, 1]), data(C, &[0, 1])]);
    assert_eq!((h.count(Counter::PrunesSent), h.count(Counter::IhavesSent), h.count(Counter::PrunesReceived)), (0, 0, 1));
}

// Goal: a neighbor that stops refreshing its Subscribe is reported once, when its interest
// expires; a refreshing neighbor never is, and neither is a client that stops.
#[test]
fn neighbor_silent_once_after_the_timeout() {
    let mut h = Harness::new(Propagation::Plumtree, |_| {});
    let (timeout_us, interval_us) = (h.relay.config().interest_timeout_us, h.relay.config().subscribe_interval_us);
    let start_us = h.now_us;
    let mut events = Vec::new();
    let mut now_us = start_us;
    while now_us < start_us + 3 * timeout_us {
        now_us += interval_us / 2;
        h.advance_to(now_us);
        h.receive(A, Kind::Subscribe, 0, &[]);
        h.receive(C, Kind::Subscribe, 0, &[]);
        while let Some(event) = h.relay.poll_event() {
            events.push((h.now_us, event));
        }
    }
    let silent: Vec<_> = events.iter().filter(|(_, event)| matches!(event, Event::NeighborSilent { .. })).collect();
    assert_eq!(silent.len(), 1, "{events:?}");
    let (at_us, event) = silent[0];
    assert_eq!(*event, Event::NeighborSilent { link_id: B, part: part() });
    assert!(*at_us > start_us + timeout_us && *at_us <= start_us + timeout_us + interval_us, "at {at_us}");
    assert_eq!(h.count(Counter::NeighborsSilent), 1);
}
