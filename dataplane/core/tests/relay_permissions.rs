//! Publish permission in the relay, where the datagram-level filter cannot decide it: a
//! neighbor forwards datagrams that mix publishers (no single-publisher flag), so the relay
//! checks each frame's publisher against the stream part's permissions before verifying it.

use runnel_core::client::{Outgoing, Publisher, SigningMode};
use runnel_core::counters::Counter;
use runnel_core::filter::FilterUpdate;
use runnel_core::link::{LinkConfig, LinkRole, VerifyPolicy};
use runnel_core::relay::{Relay, RelayConfig};
use runnel_proto::crypto::PublisherKey;
use runnel_proto::linktag::LinkKey;
use runnel_proto::stream::{StreamPart, StreamPartKey};
use runnel_proto::wire::{DatagramBuilder, HeaderFields, Kind, DATAGRAM_LENGTH_DEFAULT};
use std::net::SocketAddr;

const NEIGHBOR: u32 = 1;

/// Frame `sequence` of `publisher`'s chain 1: one single-signed message.
fn record(publisher: &PublisherKey, part: &StreamPartKey, sequence: u64) -> Vec<u8> {
    let mut chain = Publisher::with_chain_id(publisher.clone(), *part, SigningMode::PerMessage, 1);
    let mut frame = Vec::new();
    for s in 0..=sequence {
        chain.publish(&Outgoing::binary(1_000 + s, &s.to_le_bytes())).unwrap();
        chain.flush();
        frame = chain.frames().to_vec();
        chain.clear_frames();
    }
    frame
}

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

// Goal: in a restricted stream part, a forwarded datagram holding one record of a permitted
// publisher and one of a stranger delivers the first and drops the second as
// `records_not_permitted`, before any signature work; a permission that has expired counts as
// none; a public stream part takes both.
#[test]
fn records_of_publishers_without_permission_are_dropped() {
    let neighbor_address: SocketAddr = "10.77.0.2:7000".parse().unwrap();
    let restricted = StreamPart::parse("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/restricted#0").unwrap().key();
    let public = StreamPart::parse("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/public#0").unwrap().key();
    let permitted = PublisherKey::generate();
    let stranger = PublisherKey::generate();
    let expired = PublisherKey::generate();

    let mut relay = Relay::new(RelayConfig::new(0, 1, DATAGRAM_LENGTH_DEFAULT, VerifyPolicy::All));
    relay.add_link(&link(NEIGHBOR, LinkRole::Neighbor, Some(neighbor_address)));
    let now_us = 1_000_000;
    for part in [restricted, public] {
        relay.join(now_us, part);
    }
    relay.apply_filter_update(&FilterUpdate::SetRestricted { part: restricted, restricted: true });
    relay.apply_filter_update(&FilterUpdate::Permit { part: restricted, publisher: permitted.address(), until_ns: u64::MAX });
    // Expired at 1 ns, long before `now_us`.
    relay.apply_filter_update(&FilterUpdate::Permit { part: restricted, publisher: expired.address(), until_ns: 1 });

    let mut link_seq = 0;
    let mut send = |relay: &mut Relay, part: StreamPartKey, records: &[Vec<u8>]| {
        let mut builder = DatagramBuilder::new(DATAGRAM_LENGTH_DEFAULT);
        for record in records {
            assert!(builder.try_push(record));
        }
        link_seq += 1;
        // Flags 0: a forwarded datagram, publishers mixed.
        let fields = HeaderFields::new(Kind::Data, NEIGHBOR, link_seq, part.0);
        let bytes = builder.finish(fields, &LinkKey([NEIGHBOR as u8; 32])).to_vec();
        relay.handle_receive(now_us, neighbor_address, &bytes);
    };

    send(
        &mut relay,
        restricted,
        &[record(&permitted, &restricted, 0), record(&stranger, &restricted, 0), record(&expired, &restricted, 0)],
    );
    let counters = relay.counters();
    assert_eq!(counters.get(Counter::DatagramsReceived), 1);
    assert_eq!(counters.get(Counter::FramesAccepted), 1, "only the permitted publisher's record");
    assert_eq!(counters.get(Counter::FramesNotPermitted), 2, "the stranger's and the expired one's");
    assert_eq!(counters.get(Counter::SignaturesEcdsa), 1, "no signature work for refused records");

    send(&mut relay, public, &[record(&permitted, &public, 0), record(&stranger, &public, 0)]);
    let counters = relay.counters();
    assert_eq!(counters.get(Counter::FramesAccepted), 3, "a public stream part takes every publisher");
    assert_eq!(counters.get(Counter::FramesNotPermitted), 2);

    // Revoking the permission refuses the permitted publisher's next record too.
    relay.apply_filter_update(&FilterUpdate::Revoke { part: restricted, publisher: permitted.address() });
    send(&mut relay, restricted, &[record(&permitted, &restricted, 1)]);
    assert_eq!(relay.counters().get(Counter::FramesNotPermitted), 3);
}
