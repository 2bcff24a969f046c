//! Fuzz target `relay`: one shard's relay core driven by arbitrary datagrams and clock steps.
//!
//! The relay has a neighbor link (id 7, key 00 01 … 1f, the key of the protocol test
//! vectors) and a client link (id 8, key 22 × 32), and has joined the test vectors' stream
//! part. The input is a script:
//!
//! ```text
//! byte 0      options: bit 0 = verify "none" (else "all"), bit 1 = rewrite link tags,
//!             bit 2 = slow-consumer policy skip (else cut)
//! then ops    op byte, by op % 4:
//!               0 receive from the neighbor's address: u16 LE length, that many bytes
//!               1 receive from a client address:        u16 LE length, that many bytes
//!               2 advance the clock: u16 LE milliseconds, then handle due timeouts
//!               3 flush and drain every transmit
//! ```
//!
//! With "rewrite link tags" the target recomputes the tag of every datagram in a receive
//! buffer (walking `total_length` like GRO splitting) with the key of the link it names, so
//! mutated inputs get past the tag check and reach dedup, ordering, NAK repair and
//! forwarding. With verify "none" mutated frames get past signature checks too.
//!
//! Oracles besides "never panics": every transmit is shaped like one UDP GSO send; every
//! datagram the relay emits parses, with `total_length` equal to its segment; every frame of
//! an emitted Data datagram parses (the relay forwards only frames it parsed, byte for byte),
//! exactly `message_count` of them; an emitted Nak's ranges parse, and so do an emitted
//! IHave's (at least one). The relay runs Plumtree (the default), so duplicates from the
//! neighbor prune it, its IHaves open gaps and its NAKs graft it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use runnel_core::relay::{Relay, RelayConfig};
use runnel_node::config::{LinkConfig, LinkRole, SlowConsumerPolicy, VerifyPolicy};
use runnel_proto::frame::Frame;
use runnel_proto::linktag::{link_tag, LinkKey};
use runnel_proto::stream::StreamPart;
use runnel_proto::wire::{Datagram, Kind, DATAGRAM_LENGTH_MAX, HEADER_LENGTH, TAGGED_HEADER_LENGTH};
use std::net::SocketAddr;

const NEIGHBOR_LINK_ID: u32 = 7;
const CLIENT_LINK_ID: u32 = 8;
/// Bound on transmits drained per flush, so a relay that never stops sending is a finding
/// (a timeout) rather than an endless loop.
const TRANSMITS_PER_DRAIN_MAX: usize = 4096;
/// Bound on timer rounds per clock step.
const TIMEOUTS_PER_STEP_MAX: usize = 64;

fn neighbor_key() -> LinkKey {
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = i as u8;
    }
    LinkKey(key)
}

fn client_key() -> LinkKey {
    LinkKey([0x22; 32])
}

/// Recomputes the link tag of every datagram in `buffer`, walking `total_length`.
fn rewrite_tags(buffer: &mut [u8]) {
    let mut at = 0;
    while buffer.len() - at >= HEADER_LENGTH {
        let header = &mut buffer[at..at + HEADER_LENGTH];
        let link_id = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let key = if link_id == CLIENT_LINK_ID { client_key() } else { neighbor_key() };
        let tag = link_tag(&key, &header[..TAGGED_HEADER_LENGTH]);
        header[80..88].copy_from_slice(&tag.to_le_bytes());
        let total_length = u16::from_le_bytes([header[52], header[53]]) as usize;
        if total_length < HEADER_LENGTH {
            break;
        }
        at += total_length;
        if at > buffer.len() {
            break;
        }
    }
}

fn drain(relay: &mut Relay, buffer: &mut Vec<u8>) {
    relay.flush();
    for _ in 0..TRANSMITS_PER_DRAIN_MAX {
        let Some(transmit) = relay.poll_transmit(buffer) else {
            break;
        };
        assert!(transmit.segments >= 1 && transmit.segment_size >= HEADER_LENGTH, "{transmit:?}");
        assert!(transmit.length <= buffer.len(), "{transmit:?} beyond the {} written bytes", buffer.len());
        assert!(transmit.length <= transmit.segment_size * transmit.segments, "{transmit:?}");
        assert!(transmit.length > transmit.segment_size * (transmit.segments - 1), "{transmit:?}");
        for segment in buffer[..transmit.length].chunks(transmit.segment_size) {
            let datagram = Datagram::parse(segment).unwrap_or_else(|e| panic!("relay emitted a bad datagram: {e}"));
            assert_eq!(datagram.total_length(), segment.len(), "total_length differs from the GSO segment");
            match datagram.kind {
                Kind::Data => {
                    let frames: Vec<Frame<'_>> =
                        datagram.frames().collect::<Result<_, _>>().unwrap_or_else(|e| panic!("relay emitted a bad frame: {e}"));
                    assert_eq!(frames.len(), datagram.message_count() as usize, "message_count differs from the frames sent");
                }
                Kind::Nak => assert!(datagram.nak_ranges().is_ok(), "relay emitted a bad NAK"),
                Kind::IHave => assert!(datagram.nak_ranges().is_ok_and(|r| r.count() > 0), "relay emitted a bad or empty IHave"),
                Kind::Credit => assert!(datagram.credit().is_ok(), "relay emitted a bad Credit"),
                Kind::Subscribe | Kind::Unsubscribe | Kind::Prune => {}
            }
        }
    }
    while relay.poll_event().is_some() {}
}

fn take_u16(input: &mut &[u8]) -> Option<u16> {
    let (bytes, rest) = input.split_first_chunk::<2>()?;
    *input = rest;
    Some(u16::from_le_bytes(*bytes))
}

fuzz_target!(|data: &[u8]| {
    let Some((&options, mut input)) = data.split_first() else {
        return;
    };
    let verify = if options & 1 != 0 { VerifyPolicy::None } else { VerifyPolicy::All };
    // Small bounds, so that short inputs reach the drop-and-count paths of every queue.
    let mut config = RelayConfig::new(0, 1, 1472, verify);
    config.link_queue_datagrams_max = 64;
    config.repair_ring_bytes_max = 1 << 20;
    config.reorder_frames_max = 64;
    config.chains_per_stream_part_max = 16;
    config.events_max = 16;
    // A small window and backlog, so that short inputs reach the stall, probe and hold paths.
    config.credit_window_datagrams = 4;
    config.backlog_datagrams = 4;
    config.slow_consumer = if options & 4 != 0 { SlowConsumerPolicy::Skip } else { SlowConsumerPolicy::Cut };
    let mut relay = Relay::new(config);
    let neighbor: SocketAddr = "127.0.0.1:7100".parse().expect("address");
    let client: SocketAddr = "127.0.0.1:40000".parse().expect("address");
    relay.add_link(&LinkConfig {
        id: NEIGHBOR_LINK_ID,
        peer_link_id: None,
        key: neighbor_key(),
        role: LinkRole::Neighbor,
        peer: Some(neighbor),
        peer_shards: 1,
        rate_datagrams_per_s: 0,
        burst_datagrams: 1,
    });
    relay.add_link(&LinkConfig {
        id: CLIENT_LINK_ID,
        peer_link_id: None,
        key: client_key(),
        role: LinkRole::Client,
        peer: None,
        peer_shards: 1,
        rate_datagrams_per_s: 0,
        burst_datagrams: 1,
    });
    let mut now_us = 1_000_000;
    let part = StreamPart::parse("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/sensors/temperature#0").expect("valid stream part");
    relay.join(now_us, part.key());

    let mut transmit_buffer = Vec::with_capacity(DATAGRAM_LENGTH_MAX);
    let mut receive_buffer = Vec::with_capacity(DATAGRAM_LENGTH_MAX);
    while let Some((&op, rest)) = input.split_first() {
        input = rest;
        match op % 4 {
            0 | 1 => {
                let Some(length) = take_u16(&mut input) else {
                    break;
                };
                let length = (length as usize).min(input.len());
                receive_buffer.clear();
                receive_buffer.extend_from_slice(&input[..length]);
                input = &input[length..];
                if options & 2 != 0 {
                    rewrite_tags(&mut receive_buffer);
                }
                let from = if op % 4 == 0 { neighbor } else { client };
                relay.handle_receive(now_us, from, &receive_buffer);
            }
            2 => {
                let Some(step_ms) = take_u16(&mut input) else {
                    break;
                };
                now_us += step_ms as u64 * 1000;
                for _ in 0..TIMEOUTS_PER_STEP_MAX {
                    match relay.poll_timeout() {
                        Some(due_us) if due_us <= now_us => relay.handle_timeout(now_us),
                        _ => break,
                    }
                }
                relay.handle_timeout(now_us);
            }
            _ => drain(&mut relay, &mut transmit_buffer),
        }
    }
    drain(&mut relay, &mut transmit_buffer);
    // Counters are plain numbers; reading them all must work after any input.
    let _ = relay.counters();
});
