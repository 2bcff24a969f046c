//! Per-link traffic counts (what settlement's traffic reports are made of): a relay counts
//! the Data datagrams and frames each link brought and each link was sent, in wire bytes.

use runnel_core::client::{Outgoing, Publisher, SigningMode};
use runnel_core::link::{LinkConfig, LinkRole, VerifyPolicy};
use runnel_core::relay::{LinkTraffic, Relay, RelayConfig};
use runnel_proto::crypto::PublisherKey;
use runnel_proto::frame::split_frames;
use runnel_proto::linktag::LinkKey;
use runnel_proto::stream::StreamPart;
use runnel_proto::wire::{DatagramBuilder, HeaderFields, Kind, DATAGRAM_LENGTH_DEFAULT, HEADER_LENGTH};
use std::collections::BTreeMap;
use std::net::SocketAddr;

const UPSTREAM: u32 = 1;
const DOWNSTREAM: u32 = 2;
const SUBSCRIBER: u32 = 3;

fn link(id: u32, role: LinkRole, peer: Option<SocketAddr>) -> LinkConfig {
    LinkConfig {
        id,
        peer_link_id: None,
        key: LinkKey([id as u8; 32]),
        role,
        peer,
        peer_shards: 1,
        rate_datagrams_per_s: 0,
        burst_datagrams: 1,
    }
}

// Goal: frames from the upstream neighbor are counted as received on its link (duplicates
// too: the bandwidth was used), each frame forwarded to the downstream neighbor and
// delivered to the subscriber is counted as sent on theirs, bytes are whole datagrams, and
// a removed link's count is gone with it.
#[test]
fn each_link_counts_the_data_it_carried() {
    let (upstream, downstream): (SocketAddr, SocketAddr) = ("10.77.0.2:7000".parse().unwrap(), "10.77.0.3:7000".parse().unwrap());
    let subscriber: SocketAddr = "10.77.0.4:5000".parse().unwrap();
    let part = StreamPart::parse("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/traffic#0").unwrap().key();
    let mut relay = Relay::new(RelayConfig::new(0, 1, DATAGRAM_LENGTH_DEFAULT, VerifyPolicy::All));
    relay.add_link(&link(UPSTREAM, LinkRole::Neighbor, Some(upstream)));
    relay.add_link(&link(DOWNSTREAM, LinkRole::Neighbor, Some(downstream)));
    relay.add_link(&link(SUBSCRIBER, LinkRole::Client, None));
    let now_us = 1_000_000;
    relay.join(now_us, part);
    let control = |kind, id: u32, seq| {
        let mut builder = DatagramBuilder::new(HEADER_LENGTH + 1);
        builder.finish(HeaderFields::new(kind, id, seq, part.0), &LinkKey([id as u8; 32])).to_vec()
    };
    relay.handle_receive(now_us, downstream, &control(Kind::Subscribe, DOWNSTREAM, 1));
    relay.handle_receive(now_us, subscriber, &control(Kind::Subscribe, SUBSCRIBER, 1));
    relay.handle_receive(now_us, upstream, &control(Kind::Subscribe, UPSTREAM, 1));

    // Ten messages, one frame each, one per datagram from upstream; the fifth arrives twice.
    let mut publisher = Publisher::with_chain_id(PublisherKey::generate(), part, SigningMode::PerMessage, 1);
    let mut received_bytes = 0u64;
    let mut seq = 1;
    for n in 0..10u64 {
        publisher.publish(&Outgoing::binary(1_000 + n, &n.to_le_bytes())).unwrap();
        publisher.flush();
        let frames: Vec<Vec<u8>> = split_frames(publisher.frames()).map(|f| f.unwrap().bytes.to_vec()).collect();
        publisher.clear_frames();
        let copies = if n == 4 { 2 } else { 1 };
        for _ in 0..copies {
            let mut builder = DatagramBuilder::new(DATAGRAM_LENGTH_DEFAULT);
            for frame in &frames {
                assert!(builder.try_push(frame));
            }
            seq += 1;
            let datagram = builder.finish(HeaderFields::new(Kind::Data, UPSTREAM, seq, part.0), &LinkKey([UPSTREAM as u8; 32])).to_vec();
            received_bytes += datagram.len() as u64;
            relay.handle_receive(now_us + n, upstream, &datagram);
        }
        relay.flush();
    }
    let mut buffer = Vec::new();
    let mut sent_bytes: BTreeMap<SocketAddr, u64> = BTreeMap::new();
    while let Some(transmit) = relay.poll_transmit(&mut buffer) {
        if buffer.get(3) == Some(&(Kind::Data as u8)) {
            *sent_bytes.entry(transmit.destination).or_default() += transmit.length as u64;
        }
    }
    let traffic: BTreeMap<u32, LinkTraffic> = relay.link_traffic().collect();
    assert_eq!(traffic[&UPSTREAM].frames_received, 11, "{traffic:?}");
    assert_eq!(traffic[&UPSTREAM].bytes_received, received_bytes, "{traffic:?}");
    assert_eq!(traffic[&UPSTREAM].frames_sent, 0, "nothing goes back to the source: {traffic:?}");
    for (link_id, address) in [(DOWNSTREAM, downstream), (SUBSCRIBER, subscriber)] {
        let t = traffic[&link_id];
        assert_eq!(t.frames_sent, 10, "link {link_id}: each frame once: {traffic:?}");
        assert_eq!(t.bytes_sent, sent_bytes[&address], "link {link_id}: the bytes that left: {traffic:?}");
        assert_eq!((t.frames_received, t.bytes_received), (0, 0), "link {link_id}: {traffic:?}");
    }
    relay.remove_link(DOWNSTREAM);
    assert!(relay.link_traffic().all(|(id, _)| id != DOWNSTREAM));
}
