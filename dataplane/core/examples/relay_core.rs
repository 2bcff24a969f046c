//! Measures the sans-I/O relay core alone: ns per message (and per frame) for a node that
//! verifies each frame and delivers it to one subscriber (and forwards it to one neighbor),
//! no sockets.
//!
//! `cargo run --release -p runnel-core --example relay_core -- [batch|single] [payload bytes]`
//! (env: `RUNNEL_MESSAGES` messages, `RUNNEL_FRAMES_PER_ROOT` for batch mode,
//! `RUNNEL_VERIFY=none`).

use runnel_core::client::{Outgoing, Publisher, SigningMode};
use runnel_core::counters::Counter;
use runnel_core::link::{LinkConfig, LinkRole, VerifyPolicy};
use runnel_core::relay::{Relay, RelayConfig};
use runnel_proto::crypto::PublisherKey;
use runnel_proto::frame::split_frames;
use runnel_proto::linktag::LinkKey;
use runnel_proto::stream::StreamPart;
use runnel_proto::wire::{self, DatagramBuilder, HeaderFields, Kind};
use std::net::SocketAddr;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let batch = args.get(1).is_none_or(|m| m == "batch");
    let payload_length: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let frames_per_root_max: usize = std::env::var("RUNNEL_FRAMES_PER_ROOT").ok().and_then(|s| s.parse().ok()).unwrap_or(64);
    let count: u64 = std::env::var("RUNNEL_MESSAGES").ok().and_then(|s| s.parse().ok()).unwrap_or(if batch { 1_000_000 } else { 20_000 });
    let part = StreamPart::parse("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/bench#0").unwrap().key();
    let key = PublisherKey::generate();
    let (publisher_link, subscriber_link, neighbor_link) = (LinkKey([1; 32]), LinkKey([2; 32]), LinkKey([3; 32]));
    let mut relay = Relay::new(RelayConfig::new(
        0,
        1,
        wire::DATAGRAM_LENGTH_DEFAULT,
        if std::env::var("RUNNEL_VERIFY").as_deref() == Ok("none") { VerifyPolicy::None } else { VerifyPolicy::All },
    ));
    relay.add_link(&LinkConfig {
        id: 1,
        peer_link_id: None,
        key: publisher_link,
        role: LinkRole::Client,
        peer: None,
        peer_shards: 1,
        rate_datagrams_per_s: 0,
        burst_datagrams: 1,
    });
    relay.add_link(&LinkConfig {
        id: 2,
        peer_link_id: None,
        key: subscriber_link,
        role: LinkRole::Client,
        peer: None,
        peer_shards: 1,
        rate_datagrams_per_s: 0,
        burst_datagrams: 1,
    });
    let neighbor: SocketAddr = "127.0.0.9:9".parse().unwrap();
    relay.add_link(&LinkConfig {
        id: 3,
        peer_link_id: None,
        key: neighbor_link,
        role: LinkRole::Neighbor,
        peer: Some(neighbor),
        peer_shards: 1,
        rate_datagrams_per_s: 0,
        burst_datagrams: 1,
    });
    let (publisher_from, subscriber_from): (SocketAddr, SocketAddr) = ("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap());
    let header = |kind, link_id, link_seq| HeaderFields::new(kind, link_id, link_seq, part.0);
    let mut subscribe = DatagramBuilder::new(wire::HEADER_LENGTH + 1);
    relay.handle_receive(0, subscriber_from, subscribe.finish(header(Kind::Subscribe, 2, 0), &subscriber_link));
    let mut subscribe = DatagramBuilder::new(wire::HEADER_LENGTH + 1);
    relay.handle_receive(0, neighbor, subscribe.finish(header(Kind::Subscribe, 3, 0), &neighbor_link));

    // Sign everything up front: the publisher's cost is not the relay's.
    let mode = if batch { SigningMode::Batch { frames_per_root_max } } else { SigningMode::PerMessage };
    let mut publisher = Publisher::with_chain_id(key, part, mode, 5);
    let payload = vec![7u8; payload_length];
    let mut frame_count = 0u64;
    let mut datagrams = Vec::new();
    let mut builder = DatagramBuilder::new(wire::DATAGRAM_LENGTH_DEFAULT);
    let mut link_seq = 1;
    let mut published = 0;
    while published < count {
        let step = (count - published).min(10_000);
        for _ in 0..step {
            publisher.publish(&Outgoing::binary(1, &payload)).unwrap();
        }
        publisher.flush();
        published += step;
        frame_count += publisher.frame_count() as u64;
        for frame in split_frames(publisher.frames()) {
            let frame = frame.expect("the publisher writes valid frames").bytes;
            if !builder.try_push(frame) {
                datagrams.push(builder.finish(header(Kind::Data, 1, link_seq), &publisher_link).to_vec());
                link_seq += 1;
                builder.reset();
                assert!(builder.try_push(frame));
            }
        }
        publisher.clear_frames();
    }
    datagrams.push(builder.finish(header(Kind::Data, 1, link_seq), &publisher_link).to_vec());

    let mut buffer = Vec::new();
    let started = Instant::now();
    let mut sent_bytes = 0usize;
    for (index, datagram) in datagrams.iter().enumerate() {
        relay.handle_receive(1 + index as u64, publisher_from, datagram);
        if index % 16 == 15 {
            relay.flush();
            while let Some(transmit) = relay.poll_transmit(&mut buffer) {
                sent_bytes += transmit.length;
            }
        }
    }
    relay.flush();
    while let Some(transmit) = relay.poll_transmit(&mut buffer) {
        sent_bytes += transmit.length;
    }
    let elapsed = started.elapsed();
    let counters = relay.counters();
    assert_eq!(counters.get(Counter::FramesAccepted), frame_count, "every frame accepted");
    println!(
        "{} signatures, {payload_length} B payload: {count} messages in {frame_count} frames in {:.3} s = {:.0} ns/message, {:.0} ns/frame ({:.2} M messages/s); {} datagrams in, {} ECDSA, {} frames delivered, {} forwarded, {} MB out",
        if batch { "batch" } else { "single" },
        elapsed.as_secs_f64(),
        elapsed.as_nanos() as f64 / count as f64,
        elapsed.as_nanos() as f64 / frame_count as f64,
        count as f64 / elapsed.as_secs_f64() / 1e6,
        datagrams.len(),
        counters.get(Counter::SignaturesEcdsa),
        counters.get(Counter::FramesDelivered),
        counters.get(Counter::FramesForwarded),
        sent_bytes / 1_000_000
    );
}
