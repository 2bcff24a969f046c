use rand::{Rng, SeedableRng};
use runnel_dataplane::client::{
    ClientCore, ClientLinkConfig, CoreOptions, Outgoing, OwnedDelivery, Publisher, SigningMode, GSO_BYTES_MAX, GSO_SEGMENTS_MAX,
};
use runnel_dataplane::crypto::{PublisherKey, Verifier};
use runnel_dataplane::linktag::LinkKey;
use runnel_dataplane::relay::Transmit;
use runnel_dataplane::stream::{StreamPart, StreamPartKey};
use runnel_dataplane::wire::{split_datagrams, Datagram, Kind, Record, FLAG_SINGLE_PUBLISHER};
use std::collections::HashMap;

fn seed() -> u64 {
    let seed = std::env::var("RUNNEL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("RUNNEL_SEED={seed}");
    seed
}

fn link(datagram_length_max: usize) -> ClientLinkConfig {
    ClientLinkConfig {
        node: "127.0.0.1:7000".parse().unwrap(),
        node_shards: 2,
        link_id: 100,
        key: LinkKey([7; 32]),
        datagram_length_max,
    }
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

fn record_cost(mode: &SigningMode, index: usize) -> runnel_dataplane::crypto::VerifyCost {
    use runnel_dataplane::crypto::VerifyCost;
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
        sender.queue_records(&part(), publisher.records()).unwrap();
        publisher.clear_records();
        if rng.random_ratio(1, 40) {
            sender.flush();
            transmits.extend(drain(&mut sender, datagram_length_max));
        }
    }
    publisher.flush();
    expected.extend(split_records(publisher.records()));
    sender.queue_records(&part(), publisher.records()).unwrap();
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
                assert_eq!(datagram.total_length(), datagram_length_max, "non-last GSO segment is full/padded");
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
    let payload_at = runnel_dataplane::wire::MESSAGE_HEADER_LENGTH;
    forged[payload_at] ^= 1;
    let mut sender = ClientCore::new(&link, CoreOptions::default());
    let mut receiver = ClientCore::new(&link, CoreOptions::default());
    let mut delivered = 0;
    for records in [&forged, &good, &good] {
        sender.queue_records(&part(), records).unwrap();
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
