use rand::{Rng, SeedableRng};
use runnel_core::client::{
    ClientCore, ClientLinkConfig, CoreOptions, Outgoing, OwnedDelivery, Publisher, SigningMode, GSO_BYTES_MAX, GSO_SEGMENTS_MAX,
    NAK_DELAY_US, NAK_RETRIES_MAX, TAIL_PROBES_MAX, TAIL_PROBE_US, TAIL_QUERIES_MAX, TAIL_QUERY_US,
};
use runnel_core::counters::Counter;
use runnel_core::link::{LinkConfig, LinkRole, VerifyPolicy};
use runnel_core::relay::{Relay, RelayConfig, Transmit};
use runnel_proto::crypto::{PublisherKey, Verifier};
use runnel_proto::linktag::LinkKey;
use runnel_proto::stream::{StreamPart, StreamPartKey};
use runnel_proto::wire::{split_datagrams, Datagram, Kind, Record, FLAG_REPAIR, FLAG_SINGLE_PUBLISHER};
use std::collections::HashMap;
use std::net::SocketAddr;

fn seed() -> u64 {
    let seed = std::env::var("RUNNEL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("RUNNEL_SEED={seed}");
    seed
}

fn link(datagram_length_max: usize) -> ClientLinkConfig {
    ClientLinkConfig { node: "127.0.0.1:7000".parse().unwrap(), node_shards: 2, link_id: 100, key: LinkKey([7; 32]), datagram_length_max }
}

fn part() -> StreamPartKey {
    StreamPart::parse("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/client/test#0").unwrap().key()
}

/// Splits records laid back to back into their byte slices.
fn split_records(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    while !bytes.is_empty() {
        let record = Record::parse(bytes).unwrap();
        records.push(record.bytes.to_vec());
        bytes = &bytes[record.bytes.len()..];
    }
    records
}

// Goal: in both signing modes a publisher's records verify with crypto::Verifier, sequences
// are contiguous from 0 on one chain, each previous ref points at the message before, and
// batch mode signs when batch_size_max messages are pending or on flush.
#[test]
fn publisher_records_verify_and_chain() {
    let key = PublisherKey::generate();
    for mode in [SigningMode::PerMessage, SigningMode::Batch { batch_size_max: 8 }] {
        let mut publisher = Publisher::new(key.clone(), part(), mode);
        let mut records = Vec::new();
        for i in 0..21u64 {
            publisher.publish(&Outgoing::json(1_700_000_000_000 + i / 3, format!("{{\"i\":{i}}}").as_bytes())).unwrap();
            let expected_pending = match mode {
                SigningMode::PerMessage => 0,
                SigningMode::Batch { batch_size_max } => (i as usize + 1) % batch_size_max,
            };
            assert_eq!(publisher.pending_count(), expected_pending, "{mode:?} after message {i}");
            records.extend(split_records(publisher.records()));
            publisher.clear_records();
        }
        publisher.flush();
        records.extend(split_records(publisher.records()));
        assert_eq!(records.len(), 21);
        let mut verifier = Verifier::default();
        let mut previous = None;
        for (i, bytes) in records.iter().enumerate() {
            let record = Record::parse(bytes).unwrap();
            assert_eq!(verifier.verify(&part(), &record), Ok(record_cost(&mode, i)), "{mode:?} record {i}");
            assert_eq!(record.sequence(), i as u64);
            assert_eq!(record.chain_id(), publisher.chain_id());
            assert_eq!(record.publisher(), key.address());
            assert_eq!(record.previous(), previous);
            assert_eq!(record.payload, format!("{{\"i\":{i}}}").as_bytes());
            previous = Some((record.timestamp_ms(), record.sequence()));
        }
    }
}

fn record_cost(mode: &SigningMode, index: usize) -> runnel_proto::crypto::VerifyCost {
    use runnel_proto::crypto::VerifyCost;
    match mode {
        SigningMode::Batch { batch_size_max } if !index.is_multiple_of(*batch_size_max) => VerifyCost::CachedRoot,
        _ => VerifyCost::Ecdsa,
    }
}

/// Drains every transmit, checking its GSO shape; returns (transmit, bytes) pairs.
fn drain(core: &mut ClientCore, datagram_length_max: usize) -> Vec<(Transmit, Vec<u8>)> {
    let mut out = Vec::new();
    let mut buffer = Vec::new();
    while let Some(transmit) = core.poll_transmit(&mut buffer) {
        assert_eq!(buffer.len(), transmit.length);
        assert!(transmit.segment_size <= datagram_length_max);
        assert!(transmit.segments <= GSO_SEGMENTS_MAX && transmit.length <= GSO_BYTES_MAX);
        assert!(transmit.length > (transmit.segments - 1) * transmit.segment_size);
        assert!(transmit.length <= transmit.segments * transmit.segment_size);
        out.push((transmit, buffer.clone()));
    }
    out
}

// Goal: ClientCore packing: no datagram exceeds datagram_length_max; every record appears
// exactly once, in order, across the Transmits; all but the last datagram of each GSO run
// are padded to datagram_length_max; a 200 KiB message is cut into Fragment datagrams that
// reassemble to its record; link sequences increase per destination; and a second core with
// the same link key delivers everything in order with valid signatures.
#[test]
fn core_packs_fragments_and_delivers() {
    let seed = seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let datagram_length_max = 1472;
    let link = link(datagram_length_max);
    let key = PublisherKey::generate();
    let mut publisher = Publisher::new(key.clone(), part(), SigningMode::Batch { batch_size_max: 64 });
    let mut sender = ClientCore::new(&link, CoreOptions { verify: true, link_seq_start: 1000 });
    let mut expected = Vec::new();
    let mut transmits = Vec::new();
    for i in 0..600u64 {
        let length = match i {
            300 => 200 * 1024,
            _ if rng.random_ratio(1, 50) => rng.random_range(1500..5000),
            _ => rng.random_range(0..400),
        };
        let payload: Vec<u8> = (0..length).map(|_| rng.random()).collect();
        publisher.publish(&Outgoing::binary(1_700_000_000_000 + i, &payload)).unwrap();
        if i.is_multiple_of(97) {
            publisher.flush();
        }
        expected.extend(split_records(publisher.records()));
        sender.queue_records(0, &part(), publisher.records()).unwrap();
        publisher.clear_records();
        if rng.random_ratio(1, 40) {
            sender.flush();
            transmits.extend(drain(&mut sender, datagram_length_max));
        }
    }
    publisher.flush();
    expected.extend(split_records(publisher.records()));
    sender.queue_records(0, &part(), publisher.records()).unwrap();
    sender.flush();
    transmits.extend(drain(&mut sender, datagram_length_max));
    assert_eq!(expected.len(), 600);
    assert_eq!(sender.counters().records_queued, 600);

    // Walk every datagram: shape, padding, order, and a tiny reassembly for fragments.
    let destination = link.destination_of(&part());
    let mut seen = Vec::new();
    let mut last_link_seq = 999;
    let mut fragments: Vec<u8> = Vec::new();
    let mut datagram_count = 0;
    for (transmit, bytes) in &transmits {
        assert_eq!(transmit.destination, destination);
        let datagrams: Vec<Datagram> = split_datagrams(bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(datagrams.len(), transmit.segments);
        datagram_count += datagrams.len();
        for (index, datagram) in datagrams.iter().enumerate() {
            assert!(datagram.total_length() <= datagram_length_max);
            if index + 1 < datagrams.len() {
                // GSO cuts at segment_size: every segment but the last has exactly that size
                // (datagram_length_max when padded; a shorter closed datagram can lead a run).
                assert_eq!(datagram.total_length(), transmit.segment_size, "non-last GSO segment has the segment size");
            }
            assert!(datagram.tag_matches(&link.key));
            assert_eq!(datagram.link_id(), 100);
            assert_eq!(datagram.link_seq(), last_link_seq + 1);
            last_link_seq = datagram.link_seq();
            assert_eq!(datagram.flags(), FLAG_SINGLE_PUBLISHER);
            assert_eq!(datagram.header.publisher, key.address());
            match datagram.kind {
                Kind::Data => {
                    assert!(fragments.is_empty(), "a fragmented record is sent whole before the next");
                    for record in datagram.records() {
                        seen.push(record.unwrap().bytes.to_vec());
                    }
                }
                Kind::Fragment => {
                    let (header, slice) = datagram.fragment().unwrap();
                    assert_eq!(header.offset.to_native() as usize, fragments.len());
                    fragments.extend_from_slice(slice);
                    if fragments.len() == header.record_length.to_native() as usize {
                        let record = Record::parse(&fragments).unwrap();
                        assert_eq!(record.sequence(), header.sequence.to_native());
                        seen.push(std::mem::take(&mut fragments));
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert!(fragments.is_empty());
    assert_eq!(seen, expected, "every record exactly once, in order");
    assert!(transmits.iter().any(|(t, _)| t.segments > 20), "long GSO runs are built");
    assert_eq!(sender.counters().datagrams_sent, datagram_count as u64);

    // The receiving side: a core with the same link (tag check is symmetric).
    let mut receiver = ClientCore::new(&link, CoreOptions::default());
    let mut delivered: Vec<OwnedDelivery> = Vec::new();
    for (_, bytes) in &transmits {
        receiver.handle_receive(0, bytes, &mut |d| delivered.push(d.to_owned()));
    }
    assert_eq!(delivered.len(), 600);
    for (i, delivery) in delivered.iter().enumerate() {
        assert_eq!(delivery.sequence, i as u64);
        assert_eq!(delivery.record, expected[i]);
        assert_eq!(delivery.payload(), Record::parse(&expected[i]).unwrap().payload);
        assert_eq!(delivery.publisher, key.address());
        assert_eq!(delivery.stream_part_key, part());
    }
    let counters = receiver.counters();
    assert_eq!(counters.records_delivered, 600);
    assert_eq!(counters.reassemblies_completed, expected.iter().filter(|r| r.len() > 1472 - 88).count() as u64);
    assert_eq!(counters.records_bad_signature + counters.records_duplicate + counters.datagrams_bad_tag, 0);

    // Replays of everything are dropped and counted; nothing is delivered twice.
    for (_, bytes) in &transmits {
        receiver.handle_receive(0, bytes, &mut |_| panic!("replay delivered"));
    }
    assert_eq!(receiver.counters().datagrams_replayed, datagram_count as u64);

    // A wrong tag (flipped header byte) and a foreign link key are dropped and counted.
    let mut tampered = transmits[0].1[..transmits[0].0.segment_size].to_vec();
    tampered[9] ^= 1; // link sequence: covered by the tag
    let mut fresh = ClientCore::new(&link, CoreOptions::default());
    fresh.handle_receive(0, &tampered, &mut |_| panic!("bad tag delivered"));
    let foreign = ClientLinkConfig { key: LinkKey([8; 32]), ..link.clone() };
    let mut stranger = ClientCore::new(&foreign, CoreOptions::default());
    stranger.handle_receive(0, &transmits[0].1, &mut |_| panic!("foreign key delivered"));
    assert_eq!(fresh.counters().datagrams_bad_tag, 1);
    assert_eq!(stranger.counters().datagrams_bad_tag, transmits[0].0.segments as u64);
}

// Goal: a record with a bad signature is dropped and counted; a duplicate record arriving
// in a fresh datagram (new link sequence) is suppressed per (publisher, chain, sequence).
#[test]
fn bad_signatures_and_duplicates_are_counted() {
    let link = link(1472);
    let key = PublisherKey::generate();
    let mut publisher = Publisher::new(key, part(), SigningMode::PerMessage);
    publisher.publish(&Outgoing::json(1, b"{\"a\":1}")).unwrap();
    let good = publisher.records().to_vec();
    let mut forged = good.clone();
    let payload_at = runnel_proto::wire::MESSAGE_HEADER_LENGTH;
    forged[payload_at] ^= 1;
    let mut sender = ClientCore::new(&link, CoreOptions::default());
    let mut receiver = ClientCore::new(&link, CoreOptions::default());
    let mut delivered = 0;
    for records in [&forged, &good, &good] {
        sender.queue_records(0, &part(), records).unwrap();
        sender.flush();
        for (_, bytes) in drain(&mut sender, 1472) {
            receiver.handle_receive(0, &bytes, &mut |_| delivered += 1);
        }
    }
    assert_eq!(delivered, 1);
    let counters = receiver.counters();
    assert_eq!((counters.records_bad_signature, counters.records_duplicate, counters.records_delivered), (1, 1, 1));
    assert_eq!(counters.datagrams_replayed, 0);
}

// Goal: subscribe sends a Subscribe to the owning shard now and again each second,
// unsubscribe sends an Unsubscribe and stops the refresh; control datagrams are tagged.
#[test]
fn subscriptions_refresh_every_second() {
    let link = link(1472);
    let mut core = ClientCore::new(&link, CoreOptions::default());
    let owner = link.destination_of(&part());
    core.subscribe(5, &part()).unwrap();
    let mut kinds = HashMap::new();
    let mut note = |core: &mut ClientCore| {
        for (transmit, bytes) in drain(core, 1472) {
            assert_eq!(transmit.destination, owner);
            for datagram in split_datagrams(&bytes) {
                let datagram = datagram.unwrap();
                assert!(datagram.tag_matches(&link.key));
                assert_eq!(datagram.stream_part_key(), part());
                *kinds.entry(datagram.kind as u8).or_insert(0) += 1;
            }
        }
    };
    note(&mut core);
    assert_eq!(core.poll_timeout(), Some(1_000_005));
    core.handle_timeout(999_999);
    note(&mut core);
    core.handle_timeout(1_000_005);
    note(&mut core);
    core.handle_timeout(2_000_005);
    note(&mut core);
    core.unsubscribe(&part());
    note(&mut core);
    assert_eq!(core.poll_timeout(), None);
    assert_eq!(kinds.get(&(Kind::Subscribe as u8)), Some(&3));
    assert_eq!(kinds.get(&(Kind::Unsubscribe as u8)), Some(&1));
    assert_eq!(core.counters().subscribes_sent, 3);
}

/// One direction of an in-memory hop that drops every k-th datagram on average: the
/// distance to the next drop is drawn (seeded) from 2..=2k-2, so two datagrams in a row are
/// never lost, and the first one never is (a receiving client starts a chain at the first
/// record it sees, so a lost first datagram is outside what repair promises). A strictly
/// periodic drop resonates with NAK answers of a fixed shape and can hit the same repair
/// every time, which no real network does.
struct LossyHop {
    period: u64,
    next_drop: u64,
    count: u64,
    dropped: u64,
    rng: rand::rngs::StdRng,
}

impl LossyHop {
    /// `periods`: the range k is drawn from.
    fn new(rng: &mut rand::rngs::StdRng, periods: std::ops::RangeInclusive<u64>) -> Self {
        let period = rng.random_range(periods);
        let mut hop = Self { period, next_drop: 0, count: 0, dropped: 0, rng: rand::rngs::StdRng::seed_from_u64(rng.random()) };
        hop.next_drop = hop.rng.random_range(2..=2 * period - 2);
        hop
    }

    /// The datagrams of one transmit that get through.
    fn carry<'a>(&mut self, transmit: &Transmit, bytes: &'a [u8]) -> Vec<&'a [u8]> {
        let mut passed = Vec::new();
        for datagram in bytes.chunks(transmit.segment_size) {
            self.count += 1;
            if self.count == self.next_drop {
                self.dropped += 1;
                self.next_drop += self.rng.random_range(2..=2 * self.period - 2);
            } else {
                passed.push(datagram);
            }
        }
        passed
    }
}

/// Publishes a burst of 1..30 messages whose payloads start with their index; a few are
/// larger than a datagram (fragments), none among the first 30: a node sends a fragmented
/// record ahead of smaller ones packed before it, and if those are lost the subscriber
/// starts the chain after them. Returns the records.
fn publish_burst(rng: &mut rand::rngs::StdRng, publisher: &mut Publisher, published: &mut u64, count: u64) -> Vec<u8> {
    for _ in 0..rng.random_range(1..30) {
        if *published == count {
            break;
        }
        let length = if *published >= 30 && rng.random_ratio(1, 60) { rng.random_range(2000..6000) } else { rng.random_range(8..300) };
        let mut payload = vec![0u8; length];
        payload[..8].copy_from_slice(&published.to_le_bytes());
        publisher.publish(&Outgoing::binary(1_700_000_000_000 + *published, &payload)).unwrap();
        *published += 1;
    }
    publisher.flush();
    let records = publisher.records().to_vec();
    publisher.clear_records();
    records
}

/// Runs `core`'s timers if due and hands out what they released.
fn drive_timers(core: &mut ClientCore, now_us: u64, delivered: &mut Vec<OwnedDelivery>) {
    if core.poll_timeout().is_some_and(|due| due <= now_us) {
        core.handle_timeout(now_us);
    }
    core.deliver_released(&mut |d| delivered.push(d.to_owned()));
}

fn assert_exactly_once_in_order(delivered: &[OwnedDelivery], count: u64, seed: u64) {
    let sequences: Vec<u64> = delivered.iter().map(|d| d.sequence).collect();
    let first_wrong = sequences.iter().zip(0..).position(|(sequence, expected)| *sequence != expected);
    assert!(
        first_wrong.is_none() && sequences.len() as u64 == count,
        "every message exactly once, in order (seed {seed}): {} delivered, first out of place at index {first_wrong:?}",
        sequences.len()
    );
    for delivery in delivered {
        assert_eq!(delivery.payload()[..8], delivery.sequence.to_le_bytes(), "seed {seed}");
    }
}

// Goal: a publishing ClientCore and a receiving ClientCore as each other's peers, over a hop
// that drops every k-th datagram in each direction (seeded), deliver every message exactly
// once and in order: the receiver holds records behind gaps and NAKs them, the publisher
// answers from its repair ring (fragmented records too), lost tails of bursts come back
// through tail probes and tail queries, and nothing is given up.
#[test]
fn lossy_peers_repair_every_gap() {
    let seed = seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let link = link(1472);
    let mut publisher = Publisher::new(PublisherKey::generate(), part(), SigningMode::Batch { batch_size_max: 16 });
    let mut sender = ClientCore::new(&link, CoreOptions { verify: false, link_seq_start: 1 });
    let mut receiver = ClientCore::new(&link, CoreOptions { verify: true, link_seq_start: 1 });
    let (mut forward, mut back) = (LossyHop::new(&mut rng, 3..=8), LossyHop::new(&mut rng, 3..=8));
    let count = 3000u64;
    let mut published = 0;
    let mut delivered: Vec<OwnedDelivery> = Vec::new();
    let mut buffer = Vec::new();
    let mut now_us = 0;
    while (delivered.len() as u64) < count && now_us < 30_000_000 {
        now_us += 1000;
        // Bursts with idle ticks between them: each burst ends in a tail that may be lost.
        if published < count && rng.random_ratio(1, 3) {
            let records = publish_burst(&mut rng, &mut publisher, &mut published, count);
            sender.queue_records(now_us, &part(), &records).unwrap();
            sender.flush();
        }
        drive_timers(&mut sender, now_us, &mut Vec::new());
        drive_timers(&mut receiver, now_us, &mut delivered);
        while let Some(transmit) = sender.poll_transmit(&mut buffer) {
            for datagram in forward.carry(&transmit, &buffer) {
                receiver.handle_receive(now_us, datagram, &mut |d| delivered.push(d.to_owned()));
            }
        }
        while let Some(transmit) = receiver.poll_transmit(&mut buffer) {
            for datagram in back.carry(&transmit, &buffer) {
                sender.handle_receive(now_us, datagram, &mut |_| panic!("the publisher receives only NAKs"));
            }
        }
    }
    let (sent, received) = (sender.counters(), receiver.counters());
    println!("dropped {} of {} forward, {} of {} back", forward.dropped, forward.count, back.dropped, back.count);
    println!("sender {sent:?}\nreceiver {received:?}");
    assert_exactly_once_in_order(&delivered, count, seed);
    assert!(forward.dropped > 100 && back.dropped > 0, "the hop was lossy both ways");
    assert_eq!(received.records_lost, 0);
    assert_eq!(received.records_bad_signature + received.datagrams_bad_tag + received.datagrams_replayed, 0);
    assert!(received.naks_sent > 0 && received.records_held > 0 && received.records_repaired > 0);
    assert!(sent.naks_received > 0 && sent.repairs_sent > 0 && sent.datagrams_repair > 0);
    assert_eq!(sent.repair_ring_evictions + sent.repairs_dropped, 0);
}

const RELAY_ADDRESS: &str = "10.78.0.1:7000";
const PUBLISHER_ADDRESS: &str = "10.78.0.2:5000";
const SUBSCRIBER_ADDRESS: &str = "10.78.0.3:5000";

fn client_link(link_id: u32, key: u8) -> (ClientLinkConfig, LinkConfig) {
    let client = ClientLinkConfig {
        node: RELAY_ADDRESS.parse().unwrap(),
        node_shards: 1,
        link_id,
        key: LinkKey([key; 32]),
        datagram_length_max: 1472,
    };
    let node = LinkConfig {
        id: link_id,
        key: LinkKey([key; 32]),
        role: LinkRole::Client,
        peer: None,
        peer_shards: 1,
        rate_datagrams_per_s: 0,
        burst_datagrams: 1,
    };
    (client, node)
}

// Goal: publisher ClientCore → lossy hop → relay::Relay → lossy hop → subscriber ClientCore
// (every hop, both ways, drops every k-th datagram on average, seeded): every message reaches the
// subscriber exactly once and in order. The relay NAKs the publishing client for gaps in its
// chain and the client answers from its repair ring; the subscriber NAKs the relay for gaps
// on its own hop and the relay answers from its ring; nothing is counted lost anywhere.
#[test]
fn publisher_relay_subscriber_over_lossy_hops() {
    let seed = seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (publisher_link, publisher_node_link) = client_link(100, 5);
    let (subscriber_link, subscriber_node_link) = client_link(200, 6);
    let (relay_address, publisher_address, subscriber_address): (SocketAddr, SocketAddr, SocketAddr) =
        (RELAY_ADDRESS.parse().unwrap(), PUBLISHER_ADDRESS.parse().unwrap(), SUBSCRIBER_ADDRESS.parse().unwrap());
    let mut relay = Relay::new(RelayConfig::new(0, 1, 1472, VerifyPolicy::All));
    relay.add_link(&publisher_node_link);
    relay.add_link(&subscriber_node_link);
    let mut publisher = Publisher::new(PublisherKey::generate(), part(), SigningMode::Batch { batch_size_max: 16 });
    let mut sender = ClientCore::new(&publisher_link, CoreOptions { verify: false, link_seq_start: 1 });
    let mut subscriber = ClientCore::new(&subscriber_link, CoreOptions { verify: true, link_seq_start: 1 });
    // Subscribing is not what this test is about: its first Subscribe goes through unharmed.
    let mut buffer = Vec::new();
    subscriber.subscribe(0, &part()).unwrap();
    while let Some(transmit) = subscriber.poll_transmit(&mut buffer) {
        assert_eq!(transmit.destination, relay_address);
        relay.handle_receive(0, subscriber_address, &buffer);
    }
    // Hops: publisher→relay, relay→publisher, subscriber→relay, relay→subscriber. Each loses
    // 10-20%: with four lossy hops, heavier loss exceeds the relay's own NAK retry budget.
    let mut hops: Vec<LossyHop> = (0..4).map(|_| LossyHop::new(&mut rng, 5..=10)).collect();
    let count = 3000u64;
    let mut published = 0;
    let mut delivered: Vec<OwnedDelivery> = Vec::new();
    let mut relay_buffer = Vec::new();
    let mut now_us = 0;
    while (delivered.len() as u64) < count && now_us < 30_000_000 {
        now_us += 1000;
        if published < count && rng.random_ratio(1, 3) {
            let records = publish_burst(&mut rng, &mut publisher, &mut published, count);
            sender.queue_records(now_us, &part(), &records).unwrap();
            sender.flush();
        }
        drive_timers(&mut sender, now_us, &mut Vec::new());
        drive_timers(&mut subscriber, now_us, &mut delivered);
        if relay.poll_timeout().is_some_and(|due| due <= now_us) {
            relay.handle_timeout(now_us);
        }
        while let Some(transmit) = sender.poll_transmit(&mut buffer) {
            for datagram in hops[0].carry(&transmit, &buffer) {
                relay.handle_receive(now_us, publisher_address, datagram);
            }
        }
        while let Some(transmit) = subscriber.poll_transmit(&mut buffer) {
            for datagram in hops[2].carry(&transmit, &buffer) {
                relay.handle_receive(now_us, subscriber_address, datagram);
            }
        }
        relay.flush();
        while let Some(transmit) = relay.poll_transmit(&mut relay_buffer) {
            if transmit.destination == publisher_address {
                for datagram in hops[1].carry(&transmit, &relay_buffer) {
                    sender.handle_receive(now_us, datagram, &mut |_| panic!("the publisher did not subscribe"));
                }
            } else {
                assert_eq!(transmit.destination, subscriber_address);
                for datagram in hops[3].carry(&transmit, &relay_buffer) {
                    subscriber.handle_receive(now_us, datagram, &mut |d| delivered.push(d.to_owned()));
                }
            }
        }
    }
    let (sent, received, node) = (sender.counters(), subscriber.counters(), relay.counters());
    for (name, hop) in ["publisher→relay", "relay→publisher", "subscriber→relay", "relay→subscriber"].iter().zip(&hops) {
        println!("{name}: dropped {} of {} (every {})", hop.dropped, hop.count, hop.period);
    }
    println!("publisher {sent:?}\nsubscriber {received:?}");
    println!(
        "relay: naks sent {} received {}, repairs sent {} misses {}, records repaired {} lost {}",
        node.get(Counter::NaksSent),
        node.get(Counter::NaksReceived),
        node.get(Counter::RepairsSent),
        node.get(Counter::RepairMisses),
        node.get(Counter::RecordsRepaired),
        node.get(Counter::RecordsLost)
    );
    assert_exactly_once_in_order(&delivered, count, seed);
    assert!(hops[0].dropped > 100 && hops[3].dropped > 100, "the data hops were lossy");
    assert_eq!(received.records_lost + node.get(Counter::RecordsLost), 0);
    assert!(sent.naks_received > 0 && sent.repairs_sent > 0, "the relay NAKed the publisher, which answered");
    assert!(received.naks_sent > 0 && node.get(Counter::RepairsSent) > 0, "the subscriber NAKed the relay, which answered");
    assert!(node.get(Counter::RecordsRepaired) > 0 && received.records_repaired > 0);
}

/// A core that sent each of `records` (one per datagram) at time 0; returns each datagram.
fn one_datagram_each(link: &ClientLinkConfig, sender: &mut ClientCore, records: &[Vec<u8>]) -> Vec<Vec<u8>> {
    records
        .iter()
        .map(|record| {
            sender.queue_records(0, &part(), record).unwrap();
            sender.flush();
            let sent = drain(sender, link.datagram_length_max);
            assert_eq!(sent.len(), 1);
            sent.into_iter().next().unwrap().1
        })
        .collect()
}

/// The NAK ranges (first, last) of every Nak datagram in `transmits`.
fn nak_ranges(transmits: &[(Transmit, Vec<u8>)]) -> Vec<(u64, u64)> {
    let mut ranges = Vec::new();
    for (_, bytes) in transmits {
        for datagram in split_datagrams(bytes) {
            let datagram = datagram.unwrap();
            if datagram.kind == Kind::Nak {
                ranges.extend(datagram.nak_ranges().unwrap().map(|r| (r.first_sequence.to_native(), r.last_sequence.to_native())));
            }
        }
    }
    ranges
}

fn records_of(count: u64) -> Vec<Vec<u8>> {
    let mut publisher = Publisher::new(PublisherKey::generate(), part(), SigningMode::PerMessage);
    (0..count)
        .map(|i| {
            publisher.publish(&Outgoing::json(1_700_000_000_000 + i, format!("{{\"i\":{i}}}").as_bytes())).unwrap();
            let record = publisher.records().to_vec();
            publisher.clear_records();
            record
        })
        .collect()
}

// Goal: a publisher idle for TAIL_PROBE_US resends its newest record, flagged repair (and
// again at doubling intervals, TAIL_PROBES_MAX times);
// the receiver, which lost the tail, holds it, NAKs the hole after NAK_DELAY_US, gets the
// repair and delivers in order. A receiver idle for TAIL_QUERY_US asks for its next
// sequence, which the publisher answers from its ring; each answer is followed at once by a
// query for the one after; without an answer it asks again, TAIL_QUERIES_MAX times in all,
// at doubling intervals.
#[test]
fn tail_probe_and_tail_query_recover_lost_tails() {
    let link = link(1472);
    let records = records_of(3);
    let mut sender = ClientCore::new(&link, CoreOptions::default());
    let datagrams = one_datagram_each(&link, &mut sender, &records);
    let mut receiver = ClientCore::new(&link, CoreOptions::default());
    let mut delivered = Vec::new();
    receiver.handle_receive(0, &datagrams[0], &mut |d| delivered.push(d.sequence));
    // datagrams[1] and [2] are lost. The probe: once, at TAIL_PROBE_US, the newest record.
    assert_eq!(sender.poll_timeout(), Some(TAIL_PROBE_US));
    sender.handle_timeout(TAIL_PROBE_US - 1);
    assert!(drain(&mut sender, 1472).is_empty());
    sender.handle_timeout(TAIL_PROBE_US);
    let probe = drain(&mut sender, 1472);
    assert_eq!(probe.len(), 1);
    let datagram = Datagram::parse(&probe[0].1).unwrap();
    assert_eq!(datagram.flags(), FLAG_REPAIR | FLAG_SINGLE_PUBLISHER);
    assert_eq!(datagram.records().map(|r| r.unwrap().sequence()).collect::<Vec<_>>(), vec![2]);
    let mut probes_at = Vec::new();
    while let Some(due) = sender.poll_timeout() {
        sender.handle_timeout(due);
        for (_, again) in drain(&mut sender, 1472) {
            let records: Vec<u64> = Datagram::parse(&again).unwrap().records().map(|r| r.unwrap().sequence()).collect();
            assert_eq!(records, vec![2]);
            probes_at.push(due);
        }
    }
    // At 30 ms, then after 60 and 120 more.
    assert_eq!(probes_at, [3, 7].map(|n| n * TAIL_PROBE_US)[..TAIL_PROBES_MAX as usize - 1]);
    assert_eq!(sender.counters().tail_probes_sent, TAIL_PROBES_MAX as u64);

    let now_us = TAIL_PROBE_US;
    receiver.handle_receive(now_us, &probe[0].1, &mut |d| delivered.push(d.sequence));
    assert_eq!(delivered, vec![0], "2 waits for 1");
    receiver.handle_timeout(now_us + NAK_DELAY_US - 1);
    assert!(nak_ranges(&drain(&mut receiver, 1472)).is_empty());
    receiver.handle_timeout(now_us + NAK_DELAY_US);
    let nak = drain(&mut receiver, 1472);
    assert_eq!(nak_ranges(&nak), vec![(1, 1)]);
    sender.handle_receive(now_us + NAK_DELAY_US, &nak[0].1, &mut |_| panic!("NAKs carry no messages"));
    let repair = drain(&mut sender, 1472);
    assert_eq!(sender.counters().repairs_sent, 1);
    receiver.handle_receive(now_us + NAK_DELAY_US, &repair[0].1, &mut |d| delivered.push(d.sequence));
    assert_eq!(delivered, vec![0, 1, 2]);
    assert_eq!(receiver.counters().records_repaired, 2);

    // The tail query: a fresh receiver that got only record 0 asks for 1, then 2, then 3
    // (which never comes: asked TAIL_QUERIES_MAX times at doubling intervals).
    // (Its link sequences start past the first receiver's: the sender's replay window is per link.)
    let mut late = ClientCore::new(&link, CoreOptions { verify: true, link_seq_start: 1000 });
    late.handle_receive(0, &datagrams[0], &mut |_| {});
    assert_eq!(late.poll_timeout(), Some(TAIL_QUERY_US));
    let (mut queries, mut got) = (Vec::new(), Vec::new());
    while let Some(due) = late.poll_timeout() {
        late.handle_timeout(due);
        for (transmit, query) in drain(&mut late, 1472) {
            queries.push((due, nak_ranges(&[(transmit, query.clone())])));
            sender.handle_receive(due, &query, &mut |_| panic!("NAKs carry no messages"));
            for (_, answer) in drain(&mut sender, 1472) {
                late.handle_receive(due, &answer, &mut |d| got.push(d.sequence));
            }
        }
    }
    assert_eq!(got, vec![1, 2]);
    let t = TAIL_QUERY_US;
    let expected: Vec<(u64, Vec<(u64, u64)>)> =
        vec![(t, vec![(1, 1)]), (t, vec![(2, 2)]), (t, vec![(3, 3)]), (3 * t, vec![(3, 3)]), (7 * t, vec![(3, 3)])];
    assert_eq!(queries, expected);
    assert_eq!(late.counters().tail_queries_sent, 5);
    assert_eq!(sender.counters().repair_misses, TAIL_QUERIES_MAX as u64);
}

// Goal: a hole that is never repaired is NAKed NAK_RETRIES_MAX times, then given up: the
// held records behind it are released in order (deliver_released), the hole counts as lost,
// and the missing record arriving afterwards is dropped as a duplicate, never out of order.
#[test]
fn unrepaired_hole_is_given_up_after_retries() {
    let link = link(1472);
    let records = records_of(5);
    let mut sender = ClientCore::new(&link, CoreOptions::default());
    let datagrams = one_datagram_each(&link, &mut sender, &records);
    let mut receiver = ClientCore::new(&link, CoreOptions::default());
    let mut delivered = Vec::new();
    for index in [0, 3, 4] {
        receiver.handle_receive(0, &datagrams[index], &mut |d| delivered.push(d.sequence));
    }
    assert_eq!(delivered, vec![0]);
    let mut naks = Vec::new();
    let mut now_us = 0;
    while let Some(due) = receiver.poll_timeout().filter(|due| *due < 10_000_000) {
        now_us = due;
        receiver.handle_timeout(now_us);
        naks.extend(nak_ranges(&drain(&mut receiver, 1472)));
        receiver.deliver_released(&mut |d| delivered.push(d.sequence));
    }
    let retries = naks.iter().filter(|r| **r == (1, 2)).count();
    assert_eq!(retries, NAK_RETRIES_MAX as usize);
    assert_eq!(delivered, vec![0, 3, 4]);
    let counters = receiver.counters();
    let tail_queries = TAIL_QUERIES_MAX as usize;
    assert_eq!((counters.records_lost, counters.records_held), (2, 2));
    assert_eq!(counters.naks_sent as usize, retries + tail_queries);
    assert_eq!(naks[retries..], vec![(5, 5); tail_queries], "then the tail is queried");
    receiver.handle_receive(now_us, &datagrams[1], &mut |_| panic!("a given-up record is never delivered late"));
    assert_eq!(receiver.counters().records_duplicate, 1);
}
